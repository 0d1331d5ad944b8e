//! The quarantine: a Maildir++ style sub-folder of the user's maildir
//! (`.Quarantine`), so POP3 (which lists only new/ and cur/ of the top
//! level) never shows it, while IMAP-era tools would see a "Quarantine"
//! folder.
//!
//! Messages get into it by an ordinary delivery into that folder, keep
//! their name (and so their UID) when released into the maildrop, and are
//! found by UID, which the administrator reads from the listing.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::scan::{find_uid, list};
use postoffice_common::durable::sync_dir;

use super::{Maildir, ensure_maildir, exists};
use crate::{MessageInfo, StoreError};

/// The quarantine folder's name inside a user's maildir.
const QUARANTINE: &str = ".Quarantine";

impl Maildir {
    /// The quarantine folder of `mailbox` (after validating the name).
    pub(super) fn quarantine_dir(&self, mailbox: &str) -> Result<PathBuf, StoreError> {
        Ok(self.path_of(mailbox)?.join(QUARANTINE))
    }
}

/// The messages of the quarantine at `qdir`, oldest first.
pub(super) fn messages(qdir: &Path) -> Result<Vec<MessageInfo>, StoreError> {
    if !exists(qdir)? {
        return Ok(Vec::new());
    }
    Ok(list(qdir, false)?.messages)
}

/// The file of quarantined message `uid`, or [`StoreError::NoSuchUid`].
fn file_of(qdir: &Path, uid: &str) -> Result<PathBuf, StoreError> {
    find_uid(qdir, uid)?.ok_or_else(|| StoreError::NoSuchUid(uid.to_string()))
}

/// Opens quarantined message `uid` as stored.
pub(super) fn read(qdir: &Path, uid: &str) -> Result<Box<dyn Read + Send>, StoreError> {
    let path = file_of(qdir, uid)?;
    let f = File::open(&path).map_err(StoreError::io(format!("opening {}", path.display())))?;
    Ok(Box::new(f))
}

/// Moves quarantined message `uid` into new/ of the maildir at `dir`.
pub(super) fn release(qdir: &Path, dir: &Path, uid: &str) -> Result<(), StoreError> {
    let path = file_of(qdir, uid)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    ensure_maildir(dir)?;
    let target = dir.join("new").join(&file_name);
    // Same file system: a rename keeps the name, so the UID stays.
    fs::rename(&path, &target).map_err(StoreError::io(format!(
        "moving {} to {}",
        path.display(),
        target.display()
    )))?;
    sync_dir(&dir.join("new")).map_err(StoreError::io(format!("syncing {}", dir.display())))?;
    if let Some(parent) = path.parent() {
        let _ = sync_dir(parent);
    }
    Ok(())
}

/// Deletes quarantined message `uid`.
pub(super) fn delete(qdir: &Path, uid: &str) -> Result<(), StoreError> {
    let path = file_of(qdir, uid)?;
    fs::remove_file(&path).map_err(StoreError::io(format!("removing {}", path.display())))?;
    if let Some(parent) = path.parent() {
        let _ = sync_dir(parent);
    }
    Ok(())
}
