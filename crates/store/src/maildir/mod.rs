//! The Maildir backend.
//!
//! Layout: `<root>/<domain>/<local>/{tmp,new,cur}` plus files of ours in
//! the maildir directory: `postoffice.lock` (the session lock),
//! `postoffice-index` (the size cache, see [`crate::index`]),
//! `postoffice-listing` (the listing cache), `postoffice-retrieved` (first
//! retrievals) and `postoffice-state/` (application values). Everything else
//! is plain Maildir, so Dovecot, mutt and friends can read and modify the same
//! mailboxes; this code tolerates them renaming (new/ → cur/, flag suffixes)
//! and deleting files underneath a session.
//!
//! Mail is private to the server's user: every directory the backend
//! creates is `0700` and every file `0600`, whatever the umask (the modes
//! of `postoffice_common::durable`, through which all of them are made).
//!
//! One module per job; this one holds the [`Maildir`] type, maps mailbox
//! names to directories, and implements [`MailStore`] by dispatching:
//!
//! - [`lock`]: the session lock.
//! - [`scan`]: listing new/ and cur/ (sizes from the names or the index),
//!   and finding a message again after another agent moved it.
//! - [`deliver`]: durable delivery through tmp/ into new/, and cleaning
//!   up tmp/.
//! - [`quarantine`]: the `.Quarantine` folder POP3 never sees.
//! - [`snapshot`]: the locked snapshot of a session ([`Maildrop`]): reading
//!   messages, committing deletions, expiry, the first-retrieval log
//!   (`postoffice-retrieved`).
//! - [`cache`]: the cached sorted listing (`postoffice-listing`) that spares
//!   a login the two `readdir`s while new/ and cur/ are unchanged.
//! - [`state`]: small per-mailbox values of the application
//!   (`postoffice-state/`).

mod cache;
mod deliver;
mod lock;
mod quarantine;
mod scan;
mod snapshot;
mod state;

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use postoffice_common::durable::{self, sync_dir};
use postoffice_common::maildir_name;

use crate::name::{self, MailboxName};
use crate::{
    Delivered, ExpireReport, Imported, MailStore, Maildrop, MessageInfo, StoreError, Usage,
};

#[cfg(test)]
pub(crate) use lock::LOCK_FILE;
use snapshot::MaildirDrop;

/// A store of one standard Maildir per mailbox under a root directory.
///
/// Cheap to share: it holds only the root path and the host name, and every
/// operation works directly on the filesystem, so several `Maildir` values
/// (or processes) on the same root cooperate through the lock files.
#[derive(Debug, Clone)]
pub struct Maildir {
    root: PathBuf,
    hostname: String,
}

impl Maildir {
    /// `root` is e.g. `<data_dir>/mail`; mailbox `alice@example.test` lives
    /// at `<root>/example.test/alice/`, whose `tmp/ new/ cur/` are created
    /// on demand (with the parent directories fsynced, so a freshly created
    /// mailbox survives a crash together with its first message).
    ///
    /// `hostname` goes into every delivered file name, as Maildir requires;
    /// it is sanitised here (`/ : ,` escaped, non-printables dropped).
    pub fn new(root: impl Into<PathBuf>, hostname: &str) -> Self {
        Self {
            root: root.into(),
            hostname: maildir_name::sanitize_hostname(hostname),
        }
    }

    /// The storage root this store was created with.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The maildir directory of `mailbox`, after validating the name (see
    /// [`StoreError::InvalidMailbox`]). The result is always a direct
    /// grandchild of the root: neither component can contain a separator or
    /// start with '.'.
    pub fn path_of(&self, mailbox: &str) -> Result<PathBuf, StoreError> {
        let MailboxName { local, domain } = name::parse_mailbox(mailbox)?;
        Ok(self.root.join(domain).join(local))
    }

    /// Lists the mailboxes that have storage (`local@domain`, sorted).
    /// Directories whose names could not have been produced by
    /// [`path_of`](Self::path_of) are skipped, so every returned name can be
    /// passed back to the other methods.
    pub fn mailboxes(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let domains = match fs::read_dir(&self.root) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => {
                return Err(StoreError::io(format!("listing {}", self.root.display()))(
                    e,
                ));
            }
        };
        for domain in domains {
            let domain =
                domain.map_err(StoreError::io(format!("listing {}", self.root.display())))?;
            let Ok(domain_name) = domain.file_name().into_string() else {
                continue;
            };
            if !is_dir_entry(&domain) {
                continue;
            }
            let users = match fs::read_dir(domain.path()) {
                Ok(u) => u,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(StoreError::io(format!(
                        "listing {}",
                        domain.path().display()
                    ))(e));
                }
            };
            for user in users {
                let user = user.map_err(StoreError::io(format!(
                    "listing {}",
                    domain.path().display()
                )))?;
                let Ok(local) = user.file_name().into_string() else {
                    continue;
                };
                if !is_dir_entry(&user) {
                    continue;
                }
                let mailbox = format!("{local}@{domain_name}");
                // Round-trip check: only names that map back to this very
                // directory (e.g. not an upper-case domain directory).
                match name::parse_mailbox(&mailbox) {
                    Ok(parsed) if parsed.domain == domain_name && parsed.local == local => {}
                    _ => continue,
                }
                let path = user.path();
                if path.join("cur").is_dir() || path.join("new").is_dir() {
                    out.push(mailbox);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Whether a directory entry is a real directory (symlinks are not
/// followed: a link planted under the root must not redirect storage).
fn is_dir_entry(entry: &fs::DirEntry) -> bool {
    entry.file_type().is_ok_and(|t| t.is_dir())
}

/// Creates the maildir at `dir` with its three subdirectories, and any
/// missing parents (the domain directory, the root): private
/// ([`durable::DIR_MODE`]), and with every parent fsynced after a creation,
/// so a new mailbox survives a crash together with its first message.
fn ensure_maildir(dir: &Path) -> Result<(), StoreError> {
    for path in [dir, &dir.join("tmp"), &dir.join("new"), &dir.join("cur")] {
        durable::create_dir_all(path).map_err(StoreError::io(format!(
            "creating directory {} (check permissions of the data directory)",
            path.display()
        )))?;
    }
    Ok(())
}

/// Whether something exists at `path` (without following a final symlink).
fn exists(path: &Path) -> Result<bool, StoreError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io(format!("checking {}", path.display()))(e)),
    }
}

impl MailStore for Maildir {
    fn mailboxes(&self) -> Result<Vec<String>, StoreError> {
        Maildir::mailboxes(self)
    }

    fn cleanup(&self, mailbox: &str, max_age: std::time::Duration) -> Result<usize, StoreError> {
        self.cleanup_tmp(mailbox, max_age)
    }

    fn location(&self, mailbox: &str) -> Result<String, StoreError> {
        Ok(self.path_of(mailbox)?.display().to_string())
    }

    fn deliver(&self, mailbox: &str, message: &mut dyn Read) -> Result<Delivered, StoreError> {
        let dir = self.path_of(mailbox)?;
        self.deliver_dir(&dir, message)
    }

    /// No check of its own: one server owns a Maildir, and the caller's
    /// quota checks (before delivery when the size is known, after it when
    /// streaming) are what applies; a second look at the directory for
    /// every message would cost more than the race it closes.
    fn deliver_within(
        &self,
        mailbox: &str,
        message: &mut dyn Read,
        _limit: crate::Limit,
    ) -> Result<Delivered, StoreError> {
        self.deliver(mailbox, message)
    }

    fn discard(&self, mailbox: &str, delivered: &Delivered) -> Result<(), StoreError> {
        deliver::discard(&self.path_of(mailbox)?, &delivered.uid)
    }

    fn deliver_quarantine(
        &self,
        mailbox: &str,
        message: &mut dyn Read,
    ) -> Result<Delivered, StoreError> {
        let dir = self.quarantine_dir(mailbox)?;
        self.deliver_dir(&dir, message)
    }

    fn quarantine_list(&self, mailbox: &str) -> Result<Vec<MessageInfo>, StoreError> {
        quarantine::messages(&self.quarantine_dir(mailbox)?)
    }

    fn quarantine_read(
        &self,
        mailbox: &str,
        uid: &str,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        quarantine::read(&self.quarantine_dir(mailbox)?, uid)
    }

    fn quarantine_release(&self, mailbox: &str, uid: &str) -> Result<(), StoreError> {
        quarantine::release(&self.quarantine_dir(mailbox)?, &self.path_of(mailbox)?, uid)
    }

    fn quarantine_delete(&self, mailbox: &str, uid: &str) -> Result<(), StoreError> {
        quarantine::delete(&self.quarantine_dir(mailbox)?, uid)
    }

    fn open(&self, mailbox: &str) -> Result<Box<dyn Maildrop>, StoreError> {
        let dir = self.path_of(mailbox)?;
        Ok(Box::new(MaildirDrop::open(dir)?))
    }

    fn expire(
        &self,
        mailbox: &str,
        cutoff: SystemTime,
        dry_run: bool,
    ) -> Result<ExpireReport, StoreError> {
        let dir = self.path_of(mailbox)?;
        if !exists(&dir)? {
            return Ok(ExpireReport::default());
        }
        MaildirDrop::open(dir)?.expire(cutoff, dry_run)
    }

    fn usage(&self, mailbox: &str) -> Result<Usage, StoreError> {
        let dir = self.path_of(mailbox)?;
        if !exists(&dir)? {
            return Ok(Usage::default());
        }
        // Deliberately lock-free: taking the lock, even briefly, could make a
        // concurrent POP3 login fail with "in use". Without the lock we must
        // not write the index, so unindexed foreign files are read each time
        // (until the next session caches them).
        let listing = scan::list(&dir, false)?;
        Ok(Usage {
            messages: listing.messages.len() as u64,
            bytes: listing.messages.iter().map(|m| m.size).sum(),
        })
    }

    fn import(
        &self,
        mailbox: &str,
        imported: &Imported<'_>,
        message: &mut dyn Read,
    ) -> Result<Delivered, StoreError> {
        let dir = self.path_of(mailbox)?;
        self.import_dir(&dir, imported, message)
    }

    fn import_quarantine(
        &self,
        mailbox: &str,
        imported: &Imported<'_>,
        message: &mut dyn Read,
    ) -> Result<Delivered, StoreError> {
        let dir = self.quarantine_dir(mailbox)?;
        self.import_dir(&dir, imported, message)
    }

    fn state_keys(&self, mailbox: &str) -> Result<Vec<String>, StoreError> {
        state::keys(&self.path_of(mailbox)?)
    }

    fn contains(&self, mailbox: &str, uid: &str) -> Result<bool, StoreError> {
        let dir = self.path_of(mailbox)?;
        Ok(scan::find_uid(&dir, uid)?.is_some())
    }

    fn state_get(&self, mailbox: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        state::get(&self.path_of(mailbox)?, key)
    }

    fn state_put(&self, mailbox: &str, key: &str, value: Option<&[u8]>) -> Result<(), StoreError> {
        state::put(&self.path_of(mailbox)?, key, value)
    }

    fn state_claim(&self, mailbox: &str, key: &str) -> Result<bool, StoreError> {
        state::claim(&self.path_of(mailbox)?, key)
    }

    fn remove_mailbox(&self, mailbox: &str) -> Result<(), StoreError> {
        let dir = self.path_of(mailbox)?;
        if !exists(&dir)? {
            return Ok(());
        }
        // Refuse while a session is reading it; the lock is held until the
        // directory (including the lock file) is gone.
        let lock = lock::lock(&dir)?;
        fs::remove_dir_all(&dir).map_err(StoreError::io(format!("removing {}", dir.display())))?;
        drop(lock);
        if let Some(domain_dir) = dir.parent() {
            sync_dir(domain_dir)
                .map_err(StoreError::io(format!("syncing {}", domain_dir.display())))?;
            // Drop the domain directory once its last mailbox is gone; fails
            // harmlessly if it is not empty.
            if fs::remove_dir(domain_dir).is_ok() {
                let _ = sync_dir(&self.root);
            }
        }
        Ok(())
    }
}
