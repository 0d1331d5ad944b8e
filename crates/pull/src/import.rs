//! `postoffice import`: copy a user's maildrop from another POP3 server or
//! from a Dovecot Maildir, keeping every message's UIDL (see the crate
//! documentation for the guarantees).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postoffice_core::App;
use postoffice_fetch::{AuthMethod, Client, ConnectOptions};
use postoffice_store::{Imported, MailStore, Maildrop, StoreError};

use crate::dovecot::{self, DovecotError};

/// How much of a message's start is read for its delivery time.
const HEAD_BYTES: usize = 256 * 1024;

/// Why an import stopped. Everything imported until then stays (and is
/// skipped when the import is run again).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The user's maildrop is open in a POP3 session (or another import).
    #[error(
        "the maildrop of {0} is in use (a POP3 session or another import); try again when it is free"
    )]
    InUse(String),
    /// The local store failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// The other server or the network.
    #[error("POP3 server: {0}")]
    Pop3(#[from] postoffice_fetch::Error),
    /// The other server has no UIDL: there are no UIDs to keep.
    #[error(
        "the POP3 server does not support UIDL, so there are no unique IDs to keep; use `postoffice fetch` instead"
    )]
    NoUidl,
    /// The Dovecot Maildir could not be read.
    #[error(transparent)]
    Dovecot(#[from] DovecotError),
    /// A local file (the spool, a message of the Dovecot Maildir).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// Progress of an import (a progress bar on a terminal). All methods have
/// empty defaults.
pub trait ImportProgress: Send + Sync {
    /// This many messages of this many bytes are to be copied.
    fn start(&self, _messages: u64, _bytes: u64) {}
    /// One more message of `bytes` octets was stored.
    fn imported(&self, _bytes: u64) {}
    /// A line worth showing (skipped messages, notes).
    fn log(&self, _line: &str) {}
    /// The copy is over.
    fn finish(&self) {}
}

/// Progress that shows nothing.
impl ImportProgress for () {}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Messages at the source.
    pub source_messages: u64,
    /// Messages the maildrop already had (an earlier, interrupted run).
    pub already_present: u64,
    /// Messages copied now.
    pub imported: u64,
    /// Their size as stored (CRLF).
    pub bytes: u64,
    /// Messages that could not be copied (empty at the source).
    pub failed: u64,
    /// Messages deleted at the source (`--delete`).
    pub deleted_at_source: u64,
}

impl ImportReport {
    /// One line for the terminal.
    pub fn summary(&self, mailbox: &str) -> String {
        let mut s = format!(
            "{mailbox}: {} of {} messages imported ({} bytes), {} already there",
            self.imported, self.source_messages, self.bytes, self.already_present
        );
        if self.failed > 0 {
            s.push_str(&format!(", {} failed", self.failed));
        }
        if self.deleted_at_source > 0 {
            s.push_str(&format!(
                ", {} deleted at the source",
                self.deleted_at_source
            ));
        }
        s
    }
}

/// Where a POP3 import reads from.
#[derive(Debug, Clone)]
pub struct Pop3Source {
    /// Server, port, TLS and limits.
    pub connect: ConnectOptions,
    /// The login name there.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Delete the messages at the source once every one is stored here.
    pub delete: bool,
}

/// Keeps imported messages in the source's order: a time not after the
/// previous one becomes the previous one plus a nanosecond (listings order
/// by time, then name).
fn in_order(last: &mut SystemTime, t: SystemTime) -> SystemTime {
    let t = if t <= *last {
        *last + Duration::from_nanos(1)
    } else {
        t
    };
    *last = t;
    t
}

/// The time a message arrived at the source: the date of its topmost
/// `Received:` field, else its `Date:`, never in the future.
pub fn received_time(head: &[u8], now: SystemTime) -> SystemTime {
    let parse_date = |value: &str| -> Option<SystemTime> {
        let header = format!("Date: {}\r\n\r\n", value.trim());
        let msg = mail_parser::MessageParser::default().parse(header.as_bytes())?;
        let ts = msg.date()?.to_timestamp();
        UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(ts).ok()?))
    };
    let text = String::from_utf8_lossy(head);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split("\r\n").flat_map(|l| l.split('\n')) {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = fields.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            fields.push((k.trim().to_ascii_lowercase(), v.to_owned()));
        }
    }
    let received = fields
        .iter()
        .find(|(k, _)| k == "received")
        .and_then(|(_, v)| v.rsplit_once(';'))
        .and_then(|(_, d)| parse_date(d));
    let date = || {
        fields
            .iter()
            .find(|(k, _)| k == "date")
            .and_then(|(_, v)| parse_date(v))
    };
    received.or_else(date).map_or(now, |t| t.min(now))
}

/// Locks `mailbox` (creating its storage if needed) and lists its UIDs.
async fn lock(
    store: &Arc<dyn MailStore>,
    mailbox: &str,
) -> Result<(Box<dyn Maildrop>, HashSet<String>), ImportError> {
    let (store, mb) = (Arc::clone(store), mailbox.to_owned());
    let opened = tokio::task::spawn_blocking(move || store.open(&mb))
        .await
        .map_err(|e| ImportError::Io {
            context: "opening the maildrop".into(),
            source: std::io::Error::other(e),
        })?;
    let maildrop = match opened {
        Ok(m) => m,
        Err(StoreError::Locked) => return Err(ImportError::InUse(mailbox.to_owned())),
        Err(e) => return Err(e.into()),
    };
    let present = maildrop
        .messages()
        .iter()
        .map(|m| m.uid.to_string())
        .collect();
    Ok((maildrop, present))
}

/// Import `mailbox`'s messages from a POP3 server (see the crate docs).
pub async fn import_pop3(
    app: &App,
    mailbox: &str,
    source: &Pop3Source,
    progress: &dyn ImportProgress,
) -> Result<ImportReport, ImportError> {
    let (maildrop, mut present) = lock(&app.store, mailbox).await?;
    let mut client = Client::connect(&source.connect).await?;
    client
        .login(&source.user, &source.password, AuthMethod::Auto)
        .await?;
    let listing = client.list_and_uidl().await?;
    if !listing.uidl || listing.messages.iter().any(|m| m.uid.is_none()) {
        let _ = client.quit().await;
        return Err(ImportError::NoUidl);
    }
    let mut report = ImportReport {
        source_messages: listing.messages.len() as u64,
        ..ImportReport::default()
    };
    let todo: Vec<_> = listing
        .messages
        .iter()
        .filter(|m| m.uid.as_deref().is_some_and(|u| !present.contains(u)))
        .cloned()
        .collect();
    report.already_present = report.source_messages - todo.len() as u64;
    progress.start(todo.len() as u64, todo.iter().map(|m| m.size).sum());
    let mut last = UNIX_EPOCH;
    let mut stored: HashSet<u32> = listing
        .messages
        .iter()
        .filter(|m| m.uid.as_deref().is_some_and(|u| present.contains(u)))
        .map(|m| m.number)
        .collect();
    for m in &todo {
        let Some(uid) = m.uid.clone() else { continue };
        let mut spool = app.spool_writer().map_err(|source| ImportError::Io {
            context: "creating a spool file".into(),
            source,
        })?;
        client.retr_listed(m.number, m.size, &mut spool).await?;
        let content = spool.finish();
        if content.is_empty() {
            report.failed += 1;
            progress.log(&format!(
                "message {} (UIDL {uid}) is empty at the source; not imported",
                m.number
            ));
            continue;
        }
        let head = content.head(HEAD_BYTES).map_err(|source| ImportError::Io {
            context: "reading the spool file".into(),
            source,
        })?;
        let received = in_order(&mut last, received_time(&head, SystemTime::now()));
        drop(head);
        let store = Arc::clone(&app.store);
        let mb = mailbox.to_owned();
        let u = uid.clone();
        let delivered = tokio::task::spawn_blocking(move || {
            store.import(
                &mb,
                &Imported { uid: &u, received },
                &mut content.reader_at(0),
            )
        })
        .await
        .map_err(|e| ImportError::Io {
            context: "storing a message".into(),
            source: std::io::Error::other(e),
        })??;
        report.imported += 1;
        report.bytes += delivered.size;
        progress.imported(delivered.size);
        present.insert(uid);
        stored.insert(m.number);
    }
    progress.finish();
    if source.delete {
        let numbers: Vec<u32> = listing
            .messages
            .iter()
            .filter(|m| stored.contains(&m.number))
            .map(|m| m.number)
            .collect();
        let answers = client.dele_many(&numbers).await?;
        let marked = answers.iter().filter(|r| r.is_ok()).count() as u64;
        client.quit().await?;
        report.deleted_at_source = marked;
    } else {
        client.quit().await?;
    }
    drop(maildrop);
    Ok(report)
}

/// Import `mailbox`'s messages from the Dovecot Maildir at `path` (its
/// INBOX: `cur/`, `new/`, `dovecot-uidlist`), with the UIDLs Dovecot's POP3
/// server shows under `uidl_format` ([`dovecot::DEFAULT_UIDL_FORMAT`]
/// unless Dovecot's `pop3_uidl_format` was changed). Blocking.
pub fn import_dovecot_maildir(
    store: &Arc<dyn MailStore>,
    mailbox: &str,
    path: &Path,
    uidl_format: &str,
    progress: &dyn ImportProgress,
) -> Result<ImportReport, ImportError> {
    let maildrop = match store.open(mailbox) {
        Ok(m) => m,
        Err(StoreError::Locked) => return Err(ImportError::InUse(mailbox.to_owned())),
        Err(e) => return Err(e.into()),
    };
    let mut present: HashSet<String> = maildrop
        .messages()
        .iter()
        .map(|m| m.uid.to_string())
        .collect();
    let (messages, notes) = dovecot::messages(path, uidl_format)?;
    for n in &notes {
        progress.log(n);
    }
    let mut report = ImportReport {
        source_messages: messages.len() as u64,
        ..ImportReport::default()
    };
    let todo: Vec<_> = messages
        .iter()
        .filter(|m| !present.contains(&m.uidl))
        .collect();
    report.already_present = report.source_messages - todo.len() as u64;
    let sizes: u64 = todo
        .iter()
        .filter_map(|m| std::fs::metadata(&m.path).ok())
        .map(|m| m.len())
        .sum();
    progress.start(todo.len() as u64, sizes);
    let mut last = UNIX_EPOCH;
    for m in todo {
        let received = in_order(&mut last, m.received);
        let mut file = match std::fs::File::open(&m.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                report.failed += 1;
                progress.log(&format!(
                    "{} vanished (deleted by Dovecot meanwhile?); not imported",
                    m.path.display()
                ));
                continue;
            }
            Err(source) => {
                return Err(ImportError::Io {
                    context: format!("opening {}", m.path.display()),
                    source,
                });
            }
        };
        match store.import(
            mailbox,
            &Imported {
                uid: &m.uidl,
                received,
            },
            &mut file,
        ) {
            Ok(d) => {
                report.imported += 1;
                report.bytes += d.size;
                progress.imported(d.size);
                present.insert(m.uidl.clone());
            }
            Err(StoreError::EmptyMessage) => {
                report.failed += 1;
                progress.log(&format!("{} is empty; not imported", m.path.display()));
            }
            Err(e) => return Err(e.into()),
        }
    }
    progress.finish();
    drop(maildrop);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrival_times() {
        let now = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let head = b"Received: from a by b; Tue, 14 Nov 2023 22:13:20 +0000\r\nReceived: from c by d; Mon, 1 Jan 2001 00:00:00 +0000\r\nDate: Wed, 1 Jan 2020 00:00:00 +0000\r\n\r\nbody";
        assert_eq!(
            received_time(head, now),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        let head = b"Date: Wed, 1 Jan 2020 00:00:00 +0000\nSubject: x\n\n";
        assert_eq!(
            received_time(head, now),
            UNIX_EPOCH + Duration::from_secs(1_577_836_800)
        );
        assert_eq!(received_time(b"Subject: x\r\n\r\n", now), now);
        let future = b"Date: Wed, 1 Jan 2100 00:00:00 +0000\r\n\r\n";
        assert_eq!(received_time(future, now), now, "never in the future");
        let mut last = UNIX_EPOCH;
        let a = in_order(&mut last, now);
        let b = in_order(&mut last, now - Duration::from_secs(5));
        assert!(b > a);
    }
}
