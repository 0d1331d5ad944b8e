//! The session lock: `flock` on `postoffice.lock` in the maildir.
//!
//! RFC 1939 gives a POP3 session exclusive access to its maildrop. Expiry
//! and mailbox removal take the same lock, so they never pull messages out
//! from under a client that has been told they exist. Delivery and usage
//! don't need it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::Path;

use super::ensure_maildir;
use crate::StoreError;

/// Name of the lock file inside each maildir. `flock` on it marks a POP3
/// session (RFC 1939 requires exclusive access to the maildrop).
pub(crate) const LOCK_FILE: &str = "postoffice.lock";

/// Opens (creating if needed) the lock file of the maildir at `dir` and
/// takes the exclusive lock without waiting.
///
/// `flock` semantics make this right in every case that matters: locks
/// belong to the open file description, so a second `open` in the same
/// process conflicts just like one from another process, and the kernel
/// drops the lock when the process dies — no stale lock files.
pub(super) fn lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
    };
    let file = match open() {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            ensure_maildir(dir)?;
            open().map_err(StoreError::io(format!("creating {}", path.display())))?
        }
        Err(e) => return Err(StoreError::io(format!("opening {}", path.display()))(e)),
    };
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked),
        Err(TryLockError::Error(e)) => {
            Err(StoreError::io(format!("locking {}", path.display()))(e))
        }
    }
}
