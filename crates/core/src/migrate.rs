//! Copying what one storage backend holds into the other
//! (`postoffice migrate --to postgres|maildir`): the directory (domains,
//! users, aliases, administrators), every mailbox's messages with the UID
//! and delivery time they have (a POP3 client that leaves mail on the
//! server recognises every message and downloads nothing twice), the
//! quarantines (UIDs kept too), the small per-mailbox values (quota
//! warnings sent, retention notices) and the node secrets (SRS, DKIM). The
//! outbound queue is the queue crate's part (`postoffice_queue::copy_entries`).
//!
//! Both ends come from one configuration: `from` is it as it is, `to` the
//! same with the other `[storage] backend` (the Maildir under `data_dir`,
//! or the database at `[storage] url`), so each end is opened exactly as a
//! server on it would open it ([`crate::app::store`], [`crate::app::directory`],
//! [`crate::app::keys`]).
//!
//! A copy, never a move: the source is left as it was, so going back is
//! switching the configuration back. Every message is stored on the target
//! durably and all at once ([`MailStore::import`]) and one the target
//! already holds (same UID) is skipped, so a run interrupted at any point
//! is completed by running it again, and a run after a complete one copies
//! nothing. The directory and the keys are compared as wholes: the
//! directory is made the source's; a key the target already has with
//! another value is kept and reported (the DNS publishes one DKIM key).
//!
//! A source maildrop is read under its session lock, so nothing changes
//! under the copy; one a POP3 session holds is skipped and reported (run
//! again). Run it with every server stopped, or once while they run and
//! again after stopping them: the second run copies what arrived meanwhile.

use std::collections::HashSet;

use postoffice_config::Config;
use postoffice_store::{Imported, MailStore, StoreError, Uid};

use crate::app::{self, AppError};

/// What one run copied, and what it found already there.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Domains in the directory copied.
    pub domains: usize,
    /// Users in the directory copied.
    pub users: usize,
    /// Whether the target's directory changed (it was not the source's yet).
    pub directory_changed: bool,
    /// Mailboxes gone through.
    pub mailboxes: usize,
    /// Messages copied, and their octets.
    pub messages_copied: usize,
    /// Octets of the messages copied.
    pub bytes_copied: u64,
    /// Messages the target held already (an earlier run copied them).
    pub messages_present: usize,
    /// Quarantined messages copied.
    pub quarantined_copied: usize,
    /// Quarantined messages the target held already.
    pub quarantined_present: usize,
    /// Per-mailbox values written (ones that differed or were missing).
    pub values_copied: usize,
    /// Keys (SRS secret, DKIM keys) copied.
    pub keys_copied: usize,
    /// Keys the target had with the same value.
    pub keys_present: usize,
    /// What was left out, one line each (a mailbox a session held, a key
    /// that differs): the run is incomplete when this is not empty.
    pub skipped: Vec<String>,
}

/// What [`copy`] is doing, for a progress display.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    /// The directory and the keys are being copied.
    Directory,
    /// Mailbox `name`, the `index`th of `total`.
    Mailbox {
        /// Its address.
        name: &'a str,
        /// 0-based.
        index: usize,
        /// How many mailboxes there are.
        total: usize,
    },
}

/// `config` with the other storage backend: where [`copy`] writes.
pub fn target(config: &Config, to: postoffice_config::Backend) -> Result<Config, AppError> {
    if config.storage.backend == to {
        let name = match to {
            postoffice_config::Backend::Maildir => "maildir",
            postoffice_config::Backend::Postgres => "postgres",
        };
        return Err(AppError::Storage(format!(
            "[storage] backend is already \"{name}\": migrate copies from the backend in use to the \
             other one; run it before switching backend in the configuration"
        )));
    }
    if to == postoffice_config::Backend::Postgres && config.storage.url.trim().is_empty() {
        return Err(AppError::Storage(
            "[storage] url is empty: set it to the database to copy into (backend stays \
             \"maildir\" until the copy is done)"
                .into(),
        ));
    }
    let mut target = config.clone();
    target.storage.backend = to;
    Ok(target)
}

/// Copies the directory, the keys and every mailbox from the backend of
/// `from` to the backend of `to` (see the module documentation). Stops at
/// the first error the target or the source gives (the database went
/// away, a disk is full): what was copied stays, and running again goes on
/// from there.
pub fn copy(
    from: &Config,
    to: &Config,
    progress: &mut dyn FnMut(Step<'_>),
) -> Result<Report, AppError> {
    let mut report = Report::default();
    progress(Step::Directory);
    copy_directory(from, to, &mut report)?;
    copy_keys(from, to, &mut report)?;
    let source = app::store(from)?;
    let target = app::store(to)?;
    let mailboxes = source.mailboxes().map_err(storage)?;
    for (index, name) in mailboxes.iter().enumerate() {
        progress(Step::Mailbox {
            name,
            index,
            total: mailboxes.len(),
        });
        report.mailboxes += 1;
        match copy_mailbox(&*source, &*target, name, &mut report) {
            Ok(()) => {}
            Err(StoreError::Locked) => report.skipped.push(format!(
                "{name}: a POP3 session holds the maildrop; its mail was not copied (run again once it ended)"
            )),
            Err(e) => return Err(AppError::Storage(format!("{name}: {e}"))),
        }
    }
    Ok(report)
}

fn storage(e: StoreError) -> AppError {
    AppError::Storage(e.to_string())
}

fn copy_directory(from: &Config, to: &Config, report: &mut Report) -> Result<(), AppError> {
    let source = app::directory(from)?;
    let data = source.snapshot();
    report.domains = data.domains().count();
    report.users = data.users().count();
    let text = source.export()?;
    report.directory_changed = app::directory(to)?.replace(&text)?;
    Ok(())
}

fn copy_keys(from: &Config, to: &Config, report: &mut Report) -> Result<(), AppError> {
    let key_error = |e: std::io::Error| AppError::Storage(format!("keys: {e}"));
    let source = app::keys(from)?;
    let target = app::keys(to)?;
    for name in source.names().map_err(key_error)? {
        let Some(value) = source.get(&name).map_err(key_error)? else {
            continue;
        };
        let (stored, created) = target
            .create_if_absent(&name, || Ok(value.clone()))
            .map_err(key_error)?;
        if created {
            report.keys_copied += 1;
        } else if stored == value {
            report.keys_present += 1;
        } else {
            report.skipped.push(format!(
                "key {name}: the target already has a different one and keeps it ({}); \
                 remove it there and run again to copy this one",
                target.describe(&name)
            ));
        }
    }
    Ok(())
}

/// One mailbox: its messages (under the source's lock), its quarantine,
/// its values.
fn copy_mailbox(
    source: &dyn MailStore,
    target: &dyn MailStore,
    mailbox: &str,
    report: &mut Report,
) -> Result<(), StoreError> {
    let drop = source.open(mailbox)?;
    // What the target holds, listed once (not a lookup per message).
    let present: HashSet<Uid> = target.uids(mailbox)?.into_iter().collect();
    for (index, message) in drop.messages().iter().enumerate() {
        if present.contains(&message.uid) {
            report.messages_present += 1;
            continue;
        }
        let imported = Imported {
            uid: &message.uid,
            received: message.received,
        };
        let mut body = drop.open_message(index)?;
        match target.import(mailbox, &imported, &mut body) {
            Ok(_) => {
                report.messages_copied += 1;
                report.bytes_copied += message.size;
            }
            Err(StoreError::DuplicateUid(uid)) => report.skipped.push(format!(
                "{mailbox}: message {uid} is in the target's quarantine (released on the source \
                 since the last run?); left there"
            )),
            Err(e) => return Err(e),
        }
    }
    let present: HashSet<String> = target
        .quarantine_list(mailbox)?
        .into_iter()
        .map(|m| m.uid.to_string())
        .collect();
    for message in source.quarantine_list(mailbox)? {
        if present.contains(&*message.uid) {
            report.quarantined_present += 1;
            continue;
        }
        let imported = Imported {
            uid: &message.uid,
            received: message.received,
        };
        let mut body = source.quarantine_read(mailbox, &message.uid)?;
        match target.import_quarantine(mailbox, &imported, &mut body) {
            Ok(_) => report.quarantined_copied += 1,
            Err(StoreError::DuplicateUid(uid)) => report.skipped.push(format!(
                "{mailbox}: quarantined message {uid} is in the target's maildrop; left there"
            )),
            Err(e) => return Err(e),
        }
    }
    for key in source.state_keys(mailbox)? {
        let Some(value) = source.state_get(mailbox, &key)? else {
            continue;
        };
        if target.state_get(mailbox, &key)?.as_deref() != Some(&value[..]) {
            target.state_put(mailbox, &key, Some(&value))?;
            report.values_copied += 1;
        }
    }
    Ok(())
}
