//! The Maildir destination: written to `tmp/`, fsynced, renamed into
//! `new/`, and `new/` fsynced.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use postoffice_common::durable;
use postoffice_common::maildir_name::{local_hostname, sanitize_hostname, unique_name};

use super::transcode::CrlfToLf;
use super::{BUF, Delivery};

write_through_writer!(MaildirDelivery);

/// Delivery into a Maildir: written to `tmp/` (mode 0600), fsynced,
/// renamed into `new/`, and `new/` fsynced ([`durable`]).
pub struct MaildirDelivery {
    writer: Option<CrlfToLf<BufWriter<File>>>,
    name: String,
    tmp: PathBuf,
    new: PathBuf,
}

/// Whether the Maildir at `root` holds the message file `name`: in `new/`,
/// or in `cur/` (where a mail reader moves it, adding `:2,<flags>`).
pub(crate) fn holds(root: &Path, name: &str) -> bool {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', ':']) {
        return false;
    }
    if root.join("new").join(name).exists() || root.join("cur").join(name).exists() {
        return true;
    }
    let prefix = format!("{name}:");
    std::fs::read_dir(root.join("cur")).is_ok_and(|rd| {
        rd.filter_map(|e| e.ok()).any(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
    })
}

impl MaildirDelivery {
    /// Create the Maildir if needed and open a new file in `tmp/`, named
    /// after this machine's host name.
    pub fn begin(root: &Path) -> io::Result<Self> {
        Self::begin_on_host(root, &local_hostname())
    }

    /// [`MaildirDelivery::begin`] with the file named after `host`, which
    /// is sanitised here (`/`, `:` and `,` escaped, as the store expects).
    pub(crate) fn begin_on_host(root: &Path, host: &str) -> io::Result<Self> {
        for sub in ["tmp", "new", "cur"] {
            durable::create_dir_all(&root.join(sub)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("creating maildir {}: {e}", root.display()),
                )
            })?;
        }
        let name = unique_name(&sanitize_hostname(host));
        let tmp = root.join("tmp").join(&name);
        let file = durable::create_new(&tmp)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", tmp.display())))?;
        Ok(MaildirDelivery {
            writer: Some(CrlfToLf::new(BufWriter::with_capacity(BUF, file))),
            tmp,
            new: root.join("new").join(&name),
            name,
        })
    }
}

impl Delivery for MaildirDelivery {
    /// Nothing to hand over (the file in `tmp/` does not count until it is
    /// renamed); the receipt is the file's name: `maildir <name>`.
    fn prepare(&mut self) -> io::Result<Option<String>> {
        Ok(Some(format!("maildir {}", self.name)))
    }

    fn commit(mut self: Box<Self>) -> io::Result<()> {
        let w = self
            .writer
            .take()
            .ok_or_else(|| io::Error::other("finished"))?;
        let r = (|| {
            let file = w.finish()?.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            drop(file);
            durable::publish(&self.tmp, &self.new)
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

    #[test]
    fn host_name_separators_are_escaped_in_the_file_name() {
        // The store splits Maildir names on ',' (",S=<size>") and ':'
        // (":2,<flags>"); a host name carrying them must not reach the name.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("Mail");
        let mut d = Box::new(MaildirDelivery::begin_on_host(&root, "a,b:c/d").unwrap());
        d.write_all(b"A: b\r\n\r\nhi\r\n").unwrap();
        d.commit().unwrap();
        let names: Vec<String> = std::fs::read_dir(root.join("new"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 1);
        let name = &names[0];
        assert!(name.ends_with(".a\\054b\\072c\\057d"), "{name}");
        assert!(!name.contains([',', ':', '/']), "{name}");
    }

    #[test]
    fn files_and_directories_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("Mail");
        let mut d = Box::new(MaildirDelivery::begin(&root).unwrap());
        d.write_all(b"x\r\n").unwrap();
        d.commit().unwrap();
        for sub in ["", "tmp", "new", "cur"] {
            assert_eq!(mode(&root.join(sub)), 0o700, "{sub}");
        }
        let file = std::fs::read_dir(root.join("new"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(mode(&file.path()), 0o600);
    }
}
