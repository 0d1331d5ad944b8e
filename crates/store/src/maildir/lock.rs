//! The session lock: `flock` on `postoffice.lock` in the maildir.
//!
//! RFC 1939 gives a POP3 session exclusive access to its maildrop. Expiry
//! and mailbox removal take the same lock, so they never pull messages out
//! from under a client that has been told they exist. Delivery and usage
//! don't need it.
//!
//! The lock file is created `0600` like every other file of the store.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::Path;

use postoffice_common::durable;

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
    let file = match open_or_create(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            ensure_maildir(dir)?;
            open_or_create(&path).map_err(StoreError::io(format!("creating {}", path.display())))?
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

/// Opens the lock file at `path`, creating it if it is missing. An existing
/// file costs one `open`; a new one is made by
/// [`durable::create_new`], which gives it `0600` whatever the umask (an
/// `open` with `O_CREAT` would leave the mode to the umask).
fn open_or_create(path: &Path) -> io::Result<File> {
    let open = || OpenOptions::new().read(true).write(true).open(path);
    match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => match durable::create_new(path) {
            // Another session (or expiry) created it meanwhile.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => open(),
            created => created,
        },
        opened => opened,
    }
}
