//! Delivery: stream a message into tmp/, fsync it, rename it into new/
//! under a name that carries its size, fsync new/.
//!
//! That is one file creation (`0600`, see [`durable::create_new`]), the
//! writes, one `fsync`, one `rename` and one directory `fsync` per message
//! ([`durable::publish`]); the final name is chosen only after writing,
//! because it carries the size.
//!
//! Only after the last step is the message acknowledged; on any failure
//! nothing is left behind (the temporary file is removed, and a message
//! whose rename could not be made durable is taken back).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postoffice_common::durable::{self, sync_dir};
use postoffice_common::ids::unique_id;
use postoffice_common::maildir_name::unique_name;

use super::scan::find_uid;
use super::{Maildir, ensure_maildir};
use crate::crlf::normalize_stream;
use crate::name;
use crate::{Delivered, Imported, StoreError};

/// How many fresh names `deliver` tries if a temporary name already exists
/// (which would need a pid reused within the same microsecond).
const NAME_ATTEMPTS: usize = 8;

impl Maildir {
    /// Deletes files in `tmp/` whose modification time is more than
    /// `max_age` ago: leftovers of deliveries interrupted by a crash (a live
    /// delivery keeps touching its file, so a generous `max_age` such as the
    /// Maildir-traditional 36 hours never hits one). Returns how many files
    /// were removed. A mailbox without storage has nothing to clean.
    pub fn cleanup_tmp(&self, mailbox: &str, max_age: Duration) -> Result<usize, StoreError> {
        let tmp = self.path_of(mailbox)?.join("tmp");
        let entries = match fs::read_dir(&tmp) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StoreError::io(format!("listing {}", tmp.display()))(e)),
        };
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(StoreError::io(format!("listing {}", tmp.display())))?;
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(StoreError::io(format!(
                        "checking the age of {}",
                        entry.path().display()
                    ))(e));
                }
            };
            if !meta.is_file() {
                continue;
            }
            let old = meta
                .modified()
                .ok()
                .and_then(|mtime| now.duration_since(mtime).ok())
                .is_some_and(|age| age > max_age);
            if !old {
                continue;
            }
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StoreError::io(format!(
                        "removing stale temporary file {}",
                        entry.path().display()
                    ))(e));
                }
            }
        }
        Ok(removed)
    }

    /// Durable delivery into the maildir at `dir` (tmp, fsync, rename into
    /// new/, fsync new/), creating the maildir on first use.
    pub(super) fn deliver_dir(
        &self,
        dir: &Path,
        message: &mut dyn Read,
    ) -> Result<Delivered, StoreError> {
        self.deliver_named(dir, message, None)
    }

    /// [`deliver_dir`](Self::deliver_dir), for an imported message: the
    /// name starts with its delivery time (the sub-second part as `I<ns>`
    /// keeps messages of one second in order), carries its UID in a `,U=`
    /// field, and the file's modification time is the delivery time (what
    /// Dovecot takes as the received date).
    pub(super) fn import_dir(
        &self,
        dir: &Path,
        imported: &Imported<'_>,
        message: &mut dyn Read,
    ) -> Result<Delivered, StoreError> {
        crate::check_uid(imported.uid)?;
        self.deliver_named(dir, message, Some(imported))
    }

    fn deliver_named(
        &self,
        dir: &Path,
        message: &mut dyn Read,
        imported: Option<&Imported<'_>>,
    ) -> Result<Delivered, StoreError> {
        let dir = dir.to_path_buf();
        let tmp_dir = dir.join("tmp");

        // Reserve a unique temporary name; create the maildir on first use.
        let mut created_dirs = false;
        let mut attempt = 0;
        let (base, tmp_path, mut file) = loop {
            let base = match imported {
                None => unique_name(&self.hostname),
                Some(i) => {
                    let t = i.received.duration_since(UNIX_EPOCH).unwrap_or_default();
                    format!(
                        "{}.I{:09}_{}.{}",
                        t.as_secs(),
                        t.subsec_nanos(),
                        unique_id(),
                        self.hostname
                    )
                }
            };
            let tmp_path = tmp_dir.join(&base);
            match durable::create_new(&tmp_path) {
                Ok(file) => break (base, tmp_path, file),
                Err(e) if e.kind() == io::ErrorKind::NotFound && !created_dirs => {
                    ensure_maildir(&dir)?;
                    created_dirs = true;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < NAME_ATTEMPTS => {
                    attempt += 1;
                }
                Err(e) => {
                    return Err(StoreError::io(format!("creating {}", tmp_path.display()))(
                        e,
                    ));
                }
            }
        };
        let mut guard = TmpGuard {
            path: &tmp_path,
            armed: true,
        };

        let size = copy_crlf(message, &mut file, &tmp_path)?;
        if let Some(i) = imported {
            // Only informative (the name carries the time): best effort.
            let _ = file.set_modified(i.received);
        }
        file.sync_all().map_err(StoreError::io(format!(
            "syncing {} to disk",
            tmp_path.display()
        )))?;
        drop(file);

        // S= (physical size) and W= (CRLF size) are equal because we store
        // CRLF; W= lets every later listing skip opening the file.
        let kept = imported.map_or_else(String::new, |i| format!(",U={}", name::escape_uid(i.uid)));
        let final_path = dir
            .join("new")
            .join(format!("{base},S={size},W={size}{kept}"));
        if let Err(e) = durable::publish(&tmp_path, &final_path) {
            // Either the rename failed (the file is still in tmp/) or the
            // fsync of new/ did (the message is not known to be durable):
            // report failure and take the message back, so nothing is left
            // behind and the sender's retry creates no duplicate.
            guard.armed = false;
            if fs::remove_file(&tmp_path).is_err_and(|e| e.kind() == io::ErrorKind::NotFound) {
                let _ = fs::remove_file(&final_path);
            }
            return Err(StoreError::io(format!(
                "moving {} to {} and syncing new/",
                tmp_path.display(),
                final_path.display()
            ))(e));
        }
        guard.armed = false;
        Ok(Delivered {
            // The kept UID; normally the base itself; hashed if a very long
            // host name pushed it past the 70-character UID limit.
            uid: imported.map_or_else(|| name::uid_of(&base), |i| i.uid.to_owned()),
            size,
        })
    }
}

/// Takes back the message `uid` delivered into the maildir at `dir`
/// ([`MailStore::discard`](crate::MailStore::discard)).
pub(super) fn discard(dir: &Path, uid: &str) -> Result<(), StoreError> {
    if let Some(path) = find_uid(dir, uid)? {
        fs::remove_file(&path).map_err(StoreError::io(format!("removing {}", path.display())))?;
        sync_dir(&dir.join("new")).map_err(StoreError::io(format!("syncing {}", dir.display())))?;
    }
    Ok(())
}

/// Removes the temporary file of a failed delivery when dropped.
struct TmpGuard<'a> {
    path: &'a Path,
    armed: bool,
}

impl Drop for TmpGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(self.path);
        }
    }
}

/// Streams `message` into `file`, normalising to CRLF, and returns the
/// number of bytes stored. Memory use is bounded by the chunk size whatever
/// the message size.
fn copy_crlf(message: &mut dyn Read, file: &mut File, path: &Path) -> Result<u64, StoreError> {
    normalize_stream(message, &mut |piece| {
        file.write_all(piece).map_err(StoreError::io(format!(
            "writing {} (is the disk full?)",
            path.display()
        )))
    })
}
