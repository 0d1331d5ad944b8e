//! Local delivery: the one path by which mail reaches a maildrop, shared by
//! the SMTP listener and `postoffice deliver`.
//!
//! It checks that each recipient exists and has room (quotas), stores the
//! message durably for every recipient (each copy fsynced before this
//! returns), and if any copy fails, takes back the copies already made so
//! that the sender's retry does not produce duplicates.

use std::io::Read;

use postoffice_common::content::Pieces;

use postoffice_config::{Config, OverQuota};
use postoffice_directory::{Directory, normalize_address};
use postoffice_smtp::{Reply, codes, sanitize, status};
use postoffice_store::{Delivered, MailStore, StoreError, Usage};
use tracing::{info, warn};

use crate::app::policy_defaults;

/// sysexits.h codes, as mail programs expect them from a delivery agent.
pub mod sysexits {
    /// The input data was incorrect.
    pub const DATAERR: u8 = 65;
    /// The recipient does not exist.
    pub const NOUSER: u8 = 67;
    /// Temporary failure: try again later.
    pub const TEMPFAIL: u8 = 75;
    /// Not allowed.
    pub const NOPERM: u8 = 77;
    /// Configuration error.
    pub const CONFIG: u8 = 78;
}

/// Why a delivery did not happen. Each maps to an SMTP reply and a
/// sysexits code.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The recipient is not a user here.
    #[error("no such user: {0}")]
    NoSuchUser(String),
    /// The mailbox is full (temporary: it may empty).
    #[error("mailbox of {0} is over quota")]
    OverQuota(String),
    /// The message alone is larger than the mailbox's quota.
    #[error("message of {size} octets exceeds the quota of {user} ({quota} octets)")]
    TooBigForQuota {
        /// The recipient.
        user: String,
        /// The message's size.
        size: u64,
        /// The quota in octets.
        quota: u64,
    },
    /// An empty message.
    #[error("empty message")]
    Empty,
    /// The store failed (disk full, permissions); try again later.
    #[error("storage failure: {0}")]
    Store(#[from] StoreError),
}

impl DeliveryError {
    /// The SMTP reply (RFC 3463 enhanced codes).
    pub fn reply(&self) -> Reply {
        match self {
            DeliveryError::NoSuchUser(u) => Reply::new(
                codes::MAILBOX_UNAVAILABLE,
                status::BAD_DEST_MAILBOX,
                format!(
                    "<{}>: Recipient address rejected: User unknown",
                    sanitize(u)
                ),
            ),
            DeliveryError::OverQuota(u) => Reply::new(
                codes::INSUFFICIENT_STORAGE,
                status::MAILBOX_FULL,
                format!("<{u}>: Mailbox full, try again later"),
            ),
            DeliveryError::TooBigForQuota { user, .. } => Reply::new(
                codes::EXCEEDED_STORAGE,
                status::MAILBOX_FULL,
                format!("<{user}>: Message larger than the mailbox quota"),
            ),
            DeliveryError::Empty => Reply::new(
                codes::TRANSACTION_FAILED,
                status::MEDIA_OTHER,
                "Empty message",
            ),
            DeliveryError::Store(_) => temporary_failure(),
        }
    }

    /// The exit status for `postoffice deliver` (sysexits.h).
    pub fn exit_code(&self) -> u8 {
        match self {
            DeliveryError::NoSuchUser(_) => sysexits::NOUSER,
            DeliveryError::Empty => sysexits::DATAERR,
            // Quota: temporary, the MTA keeps the message and retries.
            DeliveryError::OverQuota(_)
            | DeliveryError::TooBigForQuota { .. }
            | DeliveryError::Store(_) => sysexits::TEMPFAIL,
        }
    }
}

/// `451 4.3.0 Temporary local problem, try again later`: what a client
/// hears when something on our side failed and it should retry.
pub fn temporary_failure() -> Reply {
    Reply::new(
        codes::LOCAL_ERROR,
        status::SYSTEM_OTHER,
        "Temporary local problem, try again later",
    )
}

/// Where local delivery gets its facts.
pub struct Local<'a> {
    /// The configuration (policy defaults).
    pub config: &'a Config,
    /// Users, domains and their policies.
    pub directory: &'a Directory,
    /// The maildrops.
    pub store: &'a dyn MailStore,
}

impl Local<'_> {
    /// Check a recipient before accepting it: it must be a known user of a
    /// local domain with room for at least one more message.
    pub fn check_recipient(&self, address: &str) -> Result<String, DeliveryError> {
        let mut targets = self.check_targets(address)?;
        Ok(targets.swap_remove(0))
    }

    /// The mailboxes that receive mail for `address` (see
    /// [`crate::addresses`]), each checked like [`Local::check_recipient`];
    /// never empty.
    pub fn check_targets(&self, address: &str) -> Result<Vec<String>, DeliveryError> {
        let targets = self.resolve(std::slice::from_ref(&address.to_string()))?;
        for addr in &targets {
            match self.check_quota(addr, 0) {
                // Room may be made when the message arrives.
                Err(DeliveryError::OverQuota(_)) if self.make_room_mode() => {}
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
        Ok(targets)
    }

    /// The distinct mailboxes that receive mail for `recipients`.
    fn resolve(&self, recipients: &[String]) -> Result<Vec<String>, DeliveryError> {
        let dir = self.directory.snapshot();
        crate::addresses::expand(&self.config.addresses, &dir, recipients).map_err(|e| match e {
            crate::addresses::Unresolved::Unknown(a) => {
                DeliveryError::NoSuchUser(normalize_address(&a).unwrap_or(a))
            }
        })
    }

    /// Is this a domain we receive mail for?
    pub fn is_local_domain(&self, domain: &str) -> bool {
        let d = domain.to_ascii_lowercase();
        self.directory.snapshot().domain(&d).is_some()
    }

    fn make_room_mode(&self) -> bool {
        self.config.policy.over_quota == OverQuota::MakeRoom
    }

    /// The user's quotas and usage now; `None` without quotas.
    fn room(&self, addr: &str) -> Result<Option<Room>, DeliveryError> {
        let p = self
            .directory
            .snapshot()
            .effective(addr, &policy_defaults(self.config));
        if p.quota_bytes.is_none() && p.quota_messages.is_none() {
            return Ok(None);
        }
        Ok(Some(Room {
            quota_bytes: p.quota_bytes,
            quota_messages: p.quota_messages,
            usage: self.store.usage(addr)?,
        }))
    }

    /// Whether a message of `size` octets fits (`size` 0: the RCPT-time
    /// check for one more message). Returns the quotas and usage checked.
    fn check_quota(&self, addr: &str, size: u64) -> Result<Option<Room>, DeliveryError> {
        let Some(room) = self.room(addr)? else {
            return Ok(None);
        };
        if let Some(q) = room.quota_bytes
            && size > q
        {
            return Err(DeliveryError::TooBigForQuota {
                user: addr.to_string(),
                size,
                quota: q,
            });
        }
        if room.excess(size) != Usage::default() {
            return Err(DeliveryError::OverQuota(addr.to_string()));
        }
        Ok(Some(room))
    }

    /// `over_quota = "make_room"`: delete the oldest messages a client has
    /// already retrieved until a message of `size` octets fits. Never
    /// touches a message nobody retrieved; needs the maildrop lock (a user
    /// in a session keeps their mail, and the delivery is refused for now).
    fn make_room(&self, addr: &str, size: u64) -> Result<(), DeliveryError> {
        let full = || DeliveryError::OverQuota(addr.to_string());
        let maildrop = match self.store.open(addr) {
            Ok(m) => m,
            Err(StoreError::Locked) => return Err(full()),
            Err(e) => return Err(store_error(e)),
        };
        let Some(room) = self.room(addr)? else {
            return Ok(());
        };
        let need = room.excess(size);
        let retrieved = maildrop.retrieved()?;
        let mut freed = Usage::default();
        let mut victims = Vec::new();
        for (i, (m, r)) in maildrop.messages().iter().zip(&retrieved).enumerate() {
            if freed.bytes >= need.bytes && freed.messages >= need.messages {
                break;
            }
            if r.is_some() {
                victims.push(i);
                freed.bytes += m.size;
                freed.messages += 1;
            }
        }
        if freed.bytes < need.bytes || freed.messages < need.messages {
            return Err(full());
        }
        let report = maildrop.commit(&victims)?;
        info!(user = %addr, deleted = report.deleted, bytes = report.bytes, "over quota: deleted the oldest retrieved messages to make room");
        Ok(())
    }

    /// Quota warnings after a delivery of `size` octets that found `room`
    /// (see [`crate::notices`]): a level reached now and not yet warned
    /// about gets one warning (the highest such level); a level usage was
    /// below before the delivery is armed again. Best effort.
    fn quota_warnings(&self, addr: &str, room: &Room, size: u64) {
        let levels = &self.config.policy.quota_warning_percent;
        if levels.is_empty() {
            return;
        }
        let before = room.usage;
        let after = Usage {
            bytes: before.bytes + size,
            messages: before.messages + 1,
        };
        let mut send = None;
        for &level in levels {
            let key = format!("quota-warning-{level}");
            if !room.reached(before, level)
                && let Err(e) = self.store.state_put(addr, &key, None)
            {
                warn!(user = %addr, error = %e, "quota warning state");
            }
            if room.reached(after, level) {
                match self.store.state_claim(addr, &key) {
                    Ok(true) => send = send.max(Some(level)),
                    Ok(false) => {}
                    Err(e) => warn!(user = %addr, error = %e, "quota warning state"),
                }
            }
        }
        let Some(level) = send else { return };
        let warning = crate::notices::QuotaWarning {
            address: addr,
            level,
            used_bytes: after.bytes,
            used_messages: after.messages,
            quota_bytes: room.quota_bytes,
            quota_messages: room.quota_messages,
            make_room: self.make_room_mode(),
        };
        match crate::notices::deliver_quota_warning(self.config, self.store, &warning) {
            Ok(_) => info!(user = %addr, level, "quota warning delivered"),
            Err(e) => warn!(user = %addr, level, error = %e, "quota warning not delivered"),
        }
    }

    /// Store `message` for every recipient, durably, or for none. The
    /// message is streamed into each maildrop from its pieces (memory or the
    /// spool file): never assembled in memory.
    pub fn deliver(
        &self,
        recipients: &[String],
        message: &Pieces<'_>,
    ) -> Result<Vec<Delivered>, DeliveryError> {
        self.deliver_as(recipients, message, None)
    }

    /// [`Local::deliver`], storing the message under the unique ID `uid`
    /// (chosen by the caller, e.g. so that a fetch job can recognise it
    /// after a crash; see [`MailStore::import`]) when one is given.
    pub fn deliver_as(
        &self,
        recipients: &[String],
        message: &Pieces<'_>,
        uid: Option<&str>,
    ) -> Result<Vec<Delivered>, DeliveryError> {
        if message.is_empty() {
            return Err(DeliveryError::Empty);
        }
        let size = message.len();
        // Each mailbox once, however many recipients lead to it.
        let mailboxes = self.resolve(recipients)?;
        let mut checked = Vec::with_capacity(mailboxes.len());
        let mut full = Vec::new();
        for r in &mailboxes {
            let addr = self.check_recipient(r)?;
            match self.check_quota(&addr, size) {
                Ok(room) => checked.push((addr, room)),
                Err(DeliveryError::OverQuota(_)) if self.make_room_mode() => full.push(addr),
                Err(e) => return Err(e),
            }
        }
        // Only once every recipient passed the other checks.
        for addr in full {
            self.make_room(&addr, size)?;
            let room = self.check_quota(&addr, size)?;
            checked.push((addr, room));
        }
        let mut done: Vec<(String, Delivered)> = Vec::with_capacity(checked.len());
        for (addr, _) in &checked {
            let stored = match uid {
                None => self.store.deliver(addr, &mut message.reader()),
                Some(uid) => self.store.import(
                    addr,
                    &postoffice_store::Imported {
                        uid,
                        received: std::time::SystemTime::now(),
                    },
                    &mut message.reader(),
                ),
            };
            match stored {
                Ok(d) => done.push((addr.clone(), d)),
                Err(e) => {
                    for (a, d) in &done {
                        let _ = self.store.discard(a, d);
                    }
                    return Err(store_error(e));
                }
            }
        }
        for (addr, room) in &checked {
            if let Some(room) = room {
                self.quota_warnings(addr, room, size);
            }
        }
        Ok(done.into_iter().map(|(_, d)| d).collect())
    }

    /// Take back what [`Local::deliver`] stored for `recipients`.
    pub fn undo(&self, recipients: &[String], delivered: &[Delivered]) {
        // The same expansion as at delivery: one stored copy per mailbox.
        let mailboxes = self.resolve(recipients).unwrap_or_default();
        for (r, d) in mailboxes.iter().zip(delivered) {
            if let Ok(addr) = normalize_address(r) {
                let _ = self.store.discard(&addr, d);
            }
        }
    }

    /// Store into each recipient's quarantine folder.
    pub fn quarantine(
        &self,
        recipients: &[String],
        message: &Pieces<'_>,
    ) -> Result<(), DeliveryError> {
        for r in &self.resolve(recipients)? {
            let addr = self.check_recipient(r)?;
            self.store
                .deliver_quarantine(&addr, &mut message.reader())
                .map_err(store_error)?;
        }
        Ok(())
    }

    /// Stream one message to one recipient (`postoffice deliver`).
    pub fn deliver_stream(
        &self,
        recipient: &str,
        message: &mut dyn Read,
    ) -> Result<Delivered, DeliveryError> {
        let addr = self.check_recipient(recipient)?;
        let d = self.store.deliver(&addr, message).map_err(store_error)?;
        // The size is known only now: enforce the byte quota after the fact
        // by taking the message back.
        match self.check_quota_after(&addr, d.size) {
            Err(e) => {
                let _ = self.store.discard(&addr, &d);
                Err(e)
            }
            Ok(room) => {
                if let Some(mut room) = room {
                    // What the delivery found: usage without this message.
                    room.usage.bytes = room.usage.bytes.saturating_sub(d.size);
                    room.usage.messages = room.usage.messages.saturating_sub(1);
                    self.quota_warnings(&addr, &room, d.size);
                }
                Ok(d)
            }
        }
    }

    fn check_quota_after(&self, addr: &str, size: u64) -> Result<Option<Room>, DeliveryError> {
        let Some(room) = self.room(addr)? else {
            return Ok(None);
        };
        let Some(q) = room.quota_bytes else {
            return Ok(Some(room));
        };
        if size > q {
            return Err(DeliveryError::TooBigForQuota {
                user: addr.to_string(),
                size,
                quota: q,
            });
        }
        if room.usage.bytes > q {
            return Err(DeliveryError::OverQuota(addr.to_string()));
        }
        Ok(Some(room))
    }
}

/// A user's quotas and what the mailbox held when they were checked.
#[derive(Debug, Clone, Copy)]
struct Room {
    quota_bytes: Option<u64>,
    quota_messages: Option<u64>,
    usage: Usage,
}

impl Room {
    /// How much must go for one more message of `size` octets to fit.
    fn excess(&self, size: u64) -> Usage {
        Usage {
            bytes: self
                .quota_bytes
                .map_or(0, |q| (self.usage.bytes + size).saturating_sub(q)),
            messages: self
                .quota_messages
                .map_or(0, |q| (self.usage.messages + 1).saturating_sub(q)),
        }
    }

    /// Whether `usage` is at `level` percent of either quota or beyond.
    fn reached(&self, usage: Usage, level: u8) -> bool {
        let at = |used: u64, quota: Option<u64>| {
            quota.is_some_and(|q| u128::from(used) * 100 >= u128::from(q) * u128::from(level))
        };
        at(usage.bytes, self.quota_bytes) || at(usage.messages, self.quota_messages)
    }
}

fn store_error(e: StoreError) -> DeliveryError {
    match e {
        StoreError::EmptyMessage => DeliveryError::Empty,
        e => DeliveryError::Store(e),
    }
}
