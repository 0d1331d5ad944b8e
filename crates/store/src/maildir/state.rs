//! Small per-mailbox values of the application
//! ([`MailStore::state_get`](crate::MailStore::state_get) and friends): one
//! file per key in `postoffice-state/` of the maildir (a name no Maildir
//! agent treats as a folder), written durably through
//! `postoffice_common::durable`.
//!
//! Claiming a key is creating its file with `O_EXCL`, which the kernel
//! decides for exactly one of several processes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use postoffice_common::durable::{self, sync_dir};

use crate::StoreError;

/// The directory of the values, inside the maildir directory.
pub(crate) const STATE_DIR: &str = "postoffice-state";

/// The file of `key` under the maildir `dir`, after checking the key.
fn path_of(dir: &Path, key: &str) -> Result<PathBuf, StoreError> {
    crate::check_state_key(key)?;
    Ok(dir.join(STATE_DIR).join(key))
}

pub(super) fn get(dir: &Path, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let path = path_of(dir, key)?;
    match fs::read(&path) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(format!("reading {}", path.display()))(e)),
    }
}

/// The keys set under the maildir `dir` (durable's temporary files, which
/// start with '.', are not keys), sorted.
pub(super) fn keys(dir: &Path) -> Result<Vec<String>, StoreError> {
    let state = dir.join(STATE_DIR);
    let entries = match fs::read_dir(&state) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(format!("listing {}", state.display()))(e)),
    };
    let mut keys = Vec::new();
    for entry in entries {
        let entry = entry.map_err(StoreError::io(format!("listing {}", state.display())))?;
        if let Some(name) = entry.file_name().to_str()
            && crate::check_state_key(name).is_ok()
        {
            keys.push(name.to_owned());
        }
    }
    keys.sort();
    Ok(keys)
}

pub(super) fn put(dir: &Path, key: &str, value: Option<&[u8]>) -> Result<(), StoreError> {
    let path = path_of(dir, key)?;
    match value {
        Some(value) => {
            ensure(dir)?;
            durable::write(&path, value)
                .map_err(StoreError::io(format!("writing {}", path.display())))
        }
        None => match fs::remove_file(&path) {
            Ok(()) => sync_dir(&dir.join(STATE_DIR))
                .map_err(StoreError::io(format!("syncing {}", dir.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(format!("removing {}", path.display()))(e)),
        },
    }
}

pub(super) fn claim(dir: &Path, key: &str) -> Result<bool, StoreError> {
    let path = path_of(dir, key)?;
    ensure(dir)?;
    match durable::create_new(&path) {
        Ok(file) => {
            file.sync_all()
                .map_err(StoreError::io(format!("syncing {}", path.display())))?;
            sync_dir(&dir.join(STATE_DIR))
                .map_err(StoreError::io(format!("syncing {}", dir.display())))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(StoreError::io(format!("creating {}", path.display()))(e)),
    }
}

fn ensure(dir: &Path) -> Result<(), StoreError> {
    super::ensure_maildir(dir)?;
    let state = dir.join(STATE_DIR);
    durable::create_dir_all(&state).map_err(StoreError::io(format!(
        "creating directory {}",
        state.display()
    )))
}
