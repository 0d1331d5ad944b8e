//! The Maildir destination: written to `tmp/`, fsynced, renamed into
//! `new/`, and `new/` fsynced.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::transcode::CrlfToLf;
use super::{BUF, Delivery};
use crate::state::sync_dir;

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
        .replace('/', "\\057")
        .replace(':', "\\072")
}

fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        hostname()
    )
}

write_through_writer!(MaildirDelivery);

/// Delivery into a Maildir: written to `tmp/`, fsynced, renamed into
/// `new/`, and `new/` fsynced.
pub struct MaildirDelivery {
    writer: Option<CrlfToLf<BufWriter<File>>>,
    tmp: PathBuf,
    new: PathBuf,
    new_dir: PathBuf,
}

impl MaildirDelivery {
    /// Create the Maildir if needed and open a new file in `tmp/`.
    pub fn begin(root: &Path) -> io::Result<Self> {
        for sub in ["tmp", "new", "cur"] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root.join(sub))
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("creating maildir {}: {e}", root.display()),
                    )
                })?;
        }
        let name = unique_name();
        let tmp = root.join("tmp").join(&name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", tmp.display())))?;
        Ok(MaildirDelivery {
            writer: Some(CrlfToLf::new(BufWriter::with_capacity(BUF, file))),
            tmp,
            new: root.join("new").join(&name),
            new_dir: root.join("new"),
        })
    }
}

impl Delivery for MaildirDelivery {
    fn commit(mut self: Box<Self>) -> io::Result<()> {
        let w = self
            .writer
            .take()
            .ok_or_else(|| io::Error::other("finished"))?;
        let r = (|| {
            let file = w.finish()?.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&self.tmp, &self.new)?;
            sync_dir(&self.new_dir)
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        r
    }

    fn abort(self: Box<Self>) {
        // Drop does it.
    }
}

impl Drop for MaildirDelivery {
    fn drop(&mut self) {
        if let Some(w) = self.writer.take() {
            // Not committed: discard without flushing, remove the file.
            let (_file, _) = w.into_inner().into_parts();
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn maildir_commit_and_abort() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("Mail");
        let mut d = Box::new(MaildirDelivery::begin(&root).unwrap());
        d.write_all(b"A: b\r\n\r\nhi\r\n").unwrap();
        d.commit().unwrap();
        let mut d = Box::new(MaildirDelivery::begin(&root).unwrap());
        d.write_all(b"partial").unwrap();
        d.abort();
        let new: Vec<_> = std::fs::read_dir(root.join("new")).unwrap().collect();
        assert_eq!(new.len(), 1);
        let body = std::fs::read(new[0].as_ref().unwrap().path()).unwrap();
        assert_eq!(body, b"A: b\n\nhi\n");
        assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    }
}
