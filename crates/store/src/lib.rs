#![forbid(unsafe_code)]
//! Maildrop storage for postoffice.
//!
//! The POP3 server needs very little from storage, and this crate offers
//! exactly that through two traits, so that a second backend (a database)
//! can slot in later without touching the protocol code:
//!
//! - [`MailStore`]: per-mailbox operations — durable delivery (also of a
//!   message that keeps the UID it had on another server, for migration),
//!   opening a session, retention expiry, usage, removal, and a few small
//!   per-mailbox values of the application (which quota warnings were sent,
//!   which messages a retention notice listed).
//! - [`Maildrop`]: one exclusively locked snapshot, as RFC 1939 requires for
//!   a POP3 session — listing with sizes and unique IDs, streaming a message,
//!   committing deletions at `QUIT`, and when each message was first
//!   retrieved (retention counted from retrieval, RFC 2449 EXPIRE).
//!
//! Neither trait mentions paths. The one backend today is [`Maildir`]: a
//! standard Maildir per user (`tmp/ new/ cur/`), so Dovecot, mutt and other
//! tools can share the mailboxes. Messages are stored with CRLF line ends and
//! their CRLF size in the file name, which makes opening a 100,000-message
//! maildrop cost two `readdir`s and no per-message system calls — or, while
//! new/ and cur/ are unchanged, one sequential read of a cached listing.

mod crlf;
mod error;
mod index;
mod maildir;
mod name;
mod uid;

#[cfg(test)]
mod tests;

use std::io::Read;
use std::time::SystemTime;

pub use crlf::{CrlfConverter, normalize_stream};
pub use error::StoreError;
pub use maildir::Maildir;
pub use uid::Uid;

/// The one spelling under which every backend stores `mailbox`: the name
/// validated as [`MailStore`] requires ([`StoreError::InvalidMailbox`] for
/// anything malformed), with its domain lowercased (so `Alice@Example.TEST`
/// and `Alice@example.test` are one mailbox, as they are one Maildir
/// directory; the local part keeps its case).
pub fn canonical_mailbox(mailbox: &str) -> Result<String, StoreError> {
    let name::MailboxName { local, domain } = name::parse_mailbox(mailbox)?;
    Ok(format!("{local}@{domain}"))
}

/// Checks that `uid` can be a POP3 unique ID (1 to 70 characters 0x21 to
/// 0x7E), as [`MailStore::import`] requires: [`StoreError::InvalidUid`]
/// otherwise.
pub fn check_uid(uid: &str) -> Result<(), StoreError> {
    if name::valid_uid(uid) {
        Ok(())
    } else {
        Err(StoreError::InvalidUid(postoffice_common::text::printable(
            uid, 80,
        )))
    }
}

/// Checks a [`MailStore::state_get`] key: 1 to 64 characters of
/// `[A-Za-z0-9._-]`, not starting with '.' ([`StoreError::InvalidKey`]
/// otherwise).
pub fn check_state_key(key: &str) -> Result<(), StoreError> {
    let valid = (1..=64).contains(&key.len())
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidKey(postoffice_common::text::printable(
            key, 80,
        )))
    }
}

/// What a session knows about one message without opening it.
///
/// Kept small (no path, no flags, no allocation of its own: the UID points
/// into a buffer shared by the whole snapshot) because a snapshot holds one
/// per message for the whole session, and maildrops can have 100,000
/// messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    /// Size in octets with CRLF line ends: what POP3 `LIST`/`STAT` report
    /// and what [`Maildrop::open_message`] yields.
    pub size: u64,
    /// POP3 unique ID (`UIDL`): 1 to 70 printable ASCII characters, stable
    /// for the life of the message and never reused.
    pub uid: Uid,
    /// When the message was delivered; drives ordering and retention.
    pub received: SystemTime,
}

/// The result of a successful delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The new message's unique ID (as [`MessageInfo::uid`] will report it).
    pub uid: String,
    /// Stored size in octets, after CRLF normalisation.
    pub size: u64,
}

/// How much a mailbox holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Number of messages.
    pub messages: u64,
    /// Total size in octets (CRLF sizes, as POP3 reports them).
    pub bytes: u64,
}

/// A mailbox's quota for [`MailStore::deliver_within`]: what it may hold
/// once the new message is in (`None`: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limit {
    /// Most messages.
    pub messages: Option<u64>,
    /// Most octets (CRLF sizes).
    pub bytes: Option<u64>,
}

impl Limit {
    /// Whether `usage` is more than the limit allows.
    pub fn exceeded_by(&self, usage: Usage) -> bool {
        self.messages.is_some_and(|m| usage.messages > m)
            || self.bytes.is_some_and(|b| usage.bytes > b)
    }
}

/// What [`MailStore::expire`] removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpireReport {
    /// The messages removed, oldest first.
    pub expired: Vec<MessageInfo>,
    /// Their total size in octets.
    pub bytes: u64,
}

impl ExpireReport {
    /// The expiry every store does on a listing it holds: the messages of
    /// `messages` received before `cutoff` are passed to `delete` (unless
    /// `dry_run`), which removes them and returns the indices it removed;
    /// the report lists those.
    pub fn run(
        messages: &[MessageInfo],
        cutoff: SystemTime,
        dry_run: bool,
        delete: impl FnOnce(&[usize]) -> Result<Vec<usize>, StoreError>,
    ) -> Result<ExpireReport, StoreError> {
        let victims: Vec<usize> = messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m.received < cutoff)
            .map(|(i, _)| i)
            .collect();
        let removed = if dry_run { victims } else { delete(&victims)? };
        let expired: Vec<MessageInfo> = removed
            .into_iter()
            .filter_map(|i| messages.get(i).cloned())
            .collect();
        let bytes = expired.iter().map(|m| m.size).sum();
        Ok(ExpireReport { expired, bytes })
    }
}

/// What [`Maildrop::commit`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitReport {
    /// Number of messages this commit removed. Messages some other program
    /// had already deleted are not counted (there was nothing left to
    /// remove), and neither are duplicate indices.
    pub deleted: usize,
    /// Their total size in octets.
    pub bytes: u64,
}

/// A message copied from another server with the unique ID it had there
/// ([`MailStore::import`]).
#[derive(Debug, Clone, Copy)]
pub struct Imported<'a> {
    /// The UIDL the other server reported: 1 to 70 characters 0x21 to 0x7E.
    pub uid: &'a str,
    /// When it was delivered there: listings order by it and retention
    /// counts from it. Sub-second parts order messages of the same second.
    pub received: SystemTime,
}

/// Storage of all mailboxes, shared by every connection of the server.
///
/// Mailbox names are full addresses (`alice@example.test`) and are treated
/// as untrusted input: implementations validate them and return
/// [`StoreError::InvalidMailbox`] for anything malformed.
pub trait MailStore: Send + Sync {
    /// Durably store a message for `mailbox` (a full user address like "alice@example.test").
    /// Returns only after the data is on stable storage.
    ///
    /// The message is streamed (never held in memory whole), its line ends
    /// are normalised to CRLF, and a final CRLF is added if missing. An
    /// empty message is refused with [`StoreError::EmptyMessage`]. On any
    /// error nothing is left behind.
    fn deliver(&self, mailbox: &str, message: &mut dyn Read) -> Result<Delivered, StoreError>;

    /// [`MailStore::deliver`], refused with [`StoreError::OverQuota`] (and
    /// nothing stored) when the mailbox would then hold more than `limit`.
    ///
    /// The caller has already checked the quota before reading the message;
    /// this is the check that counts when several deliveries to one mailbox
    /// race. A backend shared by several processes (PostgreSQL) makes it in
    /// the same transaction as the insert, so two nodes delivering at once
    /// cannot overshoot together. The default delivers, then looks, and
    /// takes the message back when the mailbox is over the limit.
    fn deliver_within(
        &self,
        mailbox: &str,
        message: &mut dyn Read,
        limit: Limit,
    ) -> Result<Delivered, StoreError> {
        let delivered = self.deliver(mailbox, message)?;
        if limit == Limit::default() {
            return Ok(delivered);
        }
        let over = match self.usage(mailbox) {
            Ok(usage) => limit.exceeded_by(usage),
            Err(e) => {
                let _ = self.discard(mailbox, &delivered);
                return Err(e);
            }
        };
        if over {
            let _ = self.discard(mailbox, &delivered);
            return Err(StoreError::OverQuota(mailbox.to_string()));
        }
        Ok(delivered)
    }

    /// Take the exclusive lock on the maildrop and list it. Err(StoreError::Locked) if another session (any process) holds it.
    ///
    /// The lock is released when the returned box is dropped, and also if
    /// the process dies. A mailbox that has never received mail opens as an
    /// empty maildrop.
    fn open(&self, mailbox: &str) -> Result<Box<dyn Maildrop>, StoreError>;

    /// Delete messages received before `cutoff`; skips (Err(Locked)) a maildrop locked by a session. dry_run lists without deleting.
    ///
    /// Taking the session lock keeps expiry from pulling messages out from
    /// under a POP3 client that has already been told they exist.
    fn expire(
        &self,
        mailbox: &str,
        cutoff: SystemTime,
        dry_run: bool,
    ) -> Result<ExpireReport, StoreError>;

    /// Number of messages and total octets, without reading the messages
    /// (the Maildir backend reads them from the file names and its size
    /// index).
    ///
    /// Does not take the lock, so it works (and never disturbs) while a
    /// session is open.
    fn usage(&self, mailbox: &str) -> Result<Usage, StoreError>;

    /// Take back a message this store just delivered (used to roll back a
    /// multi-recipient delivery that failed part-way, so the sender's retry
    /// creates no duplicate). Missing messages are not an error.
    fn discard(&self, mailbox: &str, delivered: &Delivered) -> Result<(), StoreError>;

    /// Durably store a message in the mailbox's quarantine, which POP3
    /// sessions never see.
    fn deliver_quarantine(
        &self,
        mailbox: &str,
        message: &mut dyn Read,
    ) -> Result<Delivered, StoreError>;

    /// The quarantined messages, oldest first.
    fn quarantine_list(&self, mailbox: &str) -> Result<Vec<MessageInfo>, StoreError>;

    /// Read a quarantined message as stored.
    fn quarantine_read(&self, mailbox: &str, uid: &str)
    -> Result<Box<dyn Read + Send>, StoreError>;

    /// Move a quarantined message into the maildrop (same UID).
    fn quarantine_release(&self, mailbox: &str, uid: &str) -> Result<(), StoreError>;

    /// Delete a quarantined message.
    fn quarantine_delete(&self, mailbox: &str, uid: &str) -> Result<(), StoreError>;

    /// Every mailbox that has storage (`local@domain`, sorted), for
    /// maintenance over all of them (retention, cleanup).
    fn mailboxes(&self) -> Result<Vec<String>, StoreError>;

    /// Remove what interrupted deliveries left in `mailbox` and is older
    /// than `max_age`; returns how many items were removed.
    fn cleanup(&self, mailbox: &str, max_age: std::time::Duration) -> Result<usize, StoreError>;

    /// Where `mailbox` is stored, for people (a path, a database row).
    fn location(&self, mailbox: &str) -> Result<String, StoreError>;

    /// Durably store a message that keeps the unique ID and delivery time
    /// it had on another server (migration: a client that left mail on the
    /// old server then recognises every message and downloads nothing
    /// again). Like [`MailStore::deliver`] otherwise: streamed, CRLF
    /// line ends, durable when this returns, nothing left behind on error.
    ///
    /// Fails with [`StoreError::InvalidUid`] for a UID POP3 cannot carry.
    /// The caller makes sure the UID is not in the maildrop yet
    /// ([`MailStore::contains`], or the snapshot of a maildrop it holds
    /// locked); a backend with a unique index may also refuse a duplicate
    /// with [`StoreError::DuplicateUid`].
    fn import(
        &self,
        mailbox: &str,
        imported: &Imported<'_>,
        message: &mut dyn Read,
    ) -> Result<Delivered, StoreError> {
        let _ = (mailbox, imported, message);
        Err(StoreError::Unsupported("import"))
    }

    /// [`MailStore::import`] into the mailbox's quarantine (copying a
    /// store to another backend keeps the quarantine's UIDs too, so a
    /// digest's or an administrator's reference still names the message).
    fn import_quarantine(
        &self,
        mailbox: &str,
        imported: &Imported<'_>,
        message: &mut dyn Read,
    ) -> Result<Delivered, StoreError> {
        let _ = (mailbox, imported, message);
        Err(StoreError::Unsupported("import_quarantine"))
    }

    /// The UIDs of the messages in the maildrop (not the quarantine), for
    /// a copy that skips what is there. The default takes the session lock
    /// for the listing and gives it back at once; a backend whose lock
    /// outlives a killed process (a lease) lists without it.
    fn uids(&self, mailbox: &str) -> Result<Vec<Uid>, StoreError> {
        Ok(self
            .open(mailbox)?
            .messages()
            .iter()
            .map(|m| m.uid.clone())
            .collect())
    }

    /// The keys of the mailbox's small values ([`MailStore::state_get`]),
    /// sorted: empty for a mailbox without storage.
    fn state_keys(&self, mailbox: &str) -> Result<Vec<String>, StoreError> {
        let _ = mailbox;
        Err(StoreError::Unsupported("state_keys"))
    }

    /// Whether the maildrop holds a message with this unique ID, without
    /// taking the lock (used to recognise a delivery that an interrupted
    /// run made but did not record). A mailbox without storage holds none.
    fn contains(&self, mailbox: &str, uid: &str) -> Result<bool, StoreError> {
        let _ = (mailbox, uid);
        Err(StoreError::Unsupported("contains"))
    }

    /// A small value the application keeps with a mailbox (which quota
    /// warnings were sent, which messages a retention notice listed), or
    /// `None` if `key` was never set. Keys are 1 to 64 characters of
    /// `[A-Za-z0-9._-]`, not starting with '.' ([`StoreError::InvalidKey`]).
    fn state_get(&self, mailbox: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let _ = (mailbox, key);
        Err(StoreError::Unsupported("state_get"))
    }

    /// Set (`Some`) or remove (`None`) a mailbox's value under `key`,
    /// durably and atomically (readers see the old or the new value).
    fn state_put(&self, mailbox: &str, key: &str, value: Option<&[u8]>) -> Result<(), StoreError> {
        let _ = (mailbox, key, value);
        Err(StoreError::Unsupported("state_put"))
    }

    /// Set `key` to an empty value if it is not set, atomically, and say
    /// whether this call set it: of several processes claiming the same key
    /// at once exactly one gets `true` (a quota warning is sent once).
    fn state_claim(&self, mailbox: &str, key: &str) -> Result<bool, StoreError> {
        let _ = (mailbox, key);
        Err(StoreError::Unsupported("state_claim"))
    }

    /// Remove the mailbox's storage entirely (used when a user is deleted with --purge).
    ///
    /// Refused with [`StoreError::Locked`] while a session is open; removing
    /// a mailbox without storage succeeds.
    fn remove_mailbox(&self, mailbox: &str) -> Result<(), StoreError>;
}

/// One POP3 session's exclusive, fixed view of a maildrop.
///
/// Messages delivered after the snapshot was taken are not part of it (they
/// show up in the next session), which gives POP3 its stable message
/// numbering. Dropping the value releases the lock.
pub trait Maildrop: Send + Sync {
    /// Messages in a stable order (oldest first), fixed for the lifetime of the snapshot. POP3 message number n = index n-1.
    fn messages(&self) -> &[MessageInfo];

    /// Stream message `index` (0-based). The bytes are exactly `messages()[index].size` octets once line ends are normalised to CRLF.
    ///
    /// The stream already is CRLF-normalised; the caller only adds POP3
    /// dot-stuffing. Fails with [`StoreError::NoSuchMessage`] for an index
    /// outside the snapshot and [`StoreError::Vanished`] if another program
    /// deleted the message meanwhile.
    fn open_message(&self, index: usize) -> Result<Box<dyn Read + Send>, StoreError>;

    /// Permanently remove these messages (0-based indices), durably: the removal is on stable storage when this returns. Messages another program already removed are not an error.
    ///
    /// All indices are checked first: one out of range fails the whole call
    /// with [`StoreError::NoSuchMessage`] before anything is deleted.
    fn commit(&self, deleted: &[usize]) -> Result<CommitReport, StoreError>;

    /// Record that these messages (0-based indices) were retrieved now,
    /// for retention counted from the first retrieval (RFC 2449 EXPIRE).
    /// A message retrieved before keeps its earlier time. Durable when
    /// this returns; indices outside the snapshot are ignored.
    fn mark_retrieved(&self, indices: &[usize]) -> Result<(), StoreError> {
        let _ = indices;
        Err(StoreError::Unsupported("mark_retrieved"))
    }

    /// When each message of the snapshot was first retrieved (`None`:
    /// never), parallel to [`Maildrop::messages`].
    fn retrieved(&self) -> Result<Vec<Option<SystemTime>>, StoreError> {
        Err(StoreError::Unsupported("retrieved"))
    }

    /// Whether [`Maildrop::open_message`] and the first read are local file
    /// operations, cheap enough to run on an async worker thread (true for
    /// a Maildrop, whose files are usually in the page cache). A backend
    /// that waits on the network keeps the default, `false`, and its reads
    /// go to the blocking pool.
    fn local_reads(&self) -> bool {
        false
    }
}

/// Entry points for the fuzz targets in `fuzz/` (not a stable API).
#[doc(hidden)]
pub mod fuzzing {
    use std::collections::HashMap;
    use std::path::Path;
    use std::time::SystemTime;

    use crate::StoreError;

    /// `parse_mailbox`: `Ok((local, domain))` for an accepted `local@domain`.
    pub fn parse_mailbox(mailbox: &str) -> Result<(String, String), StoreError> {
        crate::name::parse_mailbox(mailbox).map(|m| (m.local, m.domain))
    }
    /// `uid_of`: the POP3 unique ID of a message file name.
    pub fn uid_of(name: &str) -> String {
        crate::name::uid_of(name)
    }
    /// `key_of`: the file name without its `:2,` flags suffix.
    pub fn key_of(name: &str) -> &str {
        crate::name::key_of(name)
    }
    /// `w_size`: the CRLF size from a `,W=` field.
    pub fn w_size(name: &str) -> Option<u64> {
        crate::name::w_size(name)
    }
    /// `received_of`: the delivery time at the start of a Maildir name.
    pub fn received_of(name: &str) -> Option<SystemTime> {
        crate::name::received_of(name)
    }
    /// `looks_like_message`: whether a directory entry is considered at all.
    pub fn looks_like_message(name: &str) -> bool {
        crate::name::looks_like_message(name)
    }
    /// The host name escaping of delivered file names (now
    /// `postoffice_common::maildir_name::sanitize_hostname`).
    pub fn sanitize_hostname(hostname: &str) -> String {
        postoffice_common::maildir_name::sanitize_hostname(hostname)
    }
    /// One line of `postoffice-index`.
    pub fn index_line(line: &[u8]) -> Option<(&str, u64)> {
        crate::index::parse_line(line)
    }
    /// Load the index file of `dir`: (entries, clean).
    pub fn index_load(dir: &Path) -> (HashMap<String, u64>, bool) {
        let i = crate::index::load(dir);
        (i.sizes, i.clean)
    }
    /// Write the index of `dir` atomically.
    pub fn index_store(dir: &Path, sizes: &HashMap<String, u64>) -> std::io::Result<()> {
        crate::index::store(dir, sizes)
    }
}
