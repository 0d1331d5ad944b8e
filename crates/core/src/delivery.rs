//! Local delivery: the one path by which mail reaches a maildrop, shared by
//! the SMTP listener and `postoffice deliver`.
//!
//! It checks that each recipient exists and has room (quotas), stores the
//! message durably for every recipient (each copy fsynced before this
//! returns), and if any copy fails, takes back the copies already made so
//! that the sender's retry does not produce duplicates.

use std::io::Read;

use postoffice_common::content::{Piece, Pieces};

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
    /// Aliases pointing to aliases deeper than `[addresses] max_alias_depth`.
    #[error("alias expansion of {0} is too deep")]
    AliasTooDeep(String),
    /// External alias targets but no outbound queue to forward through
    /// (temporary).
    #[error("cannot forward mail for {0}: no outbound queue")]
    ForwardUnavailable(String),
    /// The content filters held the message for review, and its recipients
    /// have no local mailbox to hold it in (only external alias targets,
    /// which never get held mail).
    #[error("held message for {0} not forwarded")]
    HeldNotForwarded(String),
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
            DeliveryError::AliasTooDeep(a) => Reply::new(
                codes::MAILBOX_UNAVAILABLE,
                status::ROUTING_LOOP,
                format!("<{}>: Alias expansion too deep (a loop?)", sanitize(a)),
            ),
            DeliveryError::HeldNotForwarded(_) => Reply::new(
                codes::TRANSACTION_FAILED,
                status::NOT_AUTHORIZED,
                "Message refused by the content filters",
            ),
            DeliveryError::ForwardUnavailable(_) | DeliveryError::Store(_) => temporary_failure(),
        }
    }

    /// The exit status for `postoffice deliver` (sysexits.h).
    pub fn exit_code(&self) -> u8 {
        match self {
            DeliveryError::NoSuchUser(_) | DeliveryError::AliasTooDeep(_) => sysexits::NOUSER,
            DeliveryError::Empty => sysexits::DATAERR,
            DeliveryError::HeldNotForwarded(_) => sysexits::NOPERM,
            // Quota: temporary, the MTA keeps the message and retries.
            DeliveryError::OverQuota(_)
            | DeliveryError::TooBigForQuota { .. }
            | DeliveryError::ForwardUnavailable(_)
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
    /// The first local mailbox `address` leads to (for callers that need
    /// one mailbox: `postoffice deliver`); an address that is only
    /// forwarded elsewhere is no local user.
    pub fn check_recipient(&self, address: &str) -> Result<String, DeliveryError> {
        let r = self.check_targets(address)?;
        r.local
            .into_iter()
            .next()
            .map(|m| m.address)
            .ok_or_else(|| DeliveryError::NoSuchUser(address.to_string()))
    }

    /// Where mail for `address` goes (see [`crate::addresses`]), each
    /// local mailbox checked for room for one more message; never empty.
    pub fn check_targets(
        &self,
        address: &str,
    ) -> Result<crate::addresses::Resolution, DeliveryError> {
        let r = self.resolution(std::slice::from_ref(&address.to_string()))?;
        for m in &r.local {
            match self.check_quota(&m.address, 0) {
                // Room may be made when the message arrives.
                Err(DeliveryError::OverQuota(_)) if self.make_room_mode() => {}
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
        Ok(r)
    }

    /// Where mail for `recipients` goes: the distinct mailboxes and
    /// external addresses.
    pub fn resolution(
        &self,
        recipients: &[String],
    ) -> Result<crate::addresses::Resolution, DeliveryError> {
        use crate::addresses::Unresolved;
        let dir = self.directory.snapshot();
        let r = crate::addresses::expand(&self.config.addresses, &dir, recipients).map_err(
            |e| match e {
                Unresolved::Unknown(a) => {
                    DeliveryError::NoSuchUser(normalize_address(&a).unwrap_or(a))
                }
                Unresolved::TooDeep { address, .. } => DeliveryError::AliasTooDeep(address),
            },
        )?;
        if !r.loops.is_empty() || !r.dangling.is_empty() {
            warn!(
                loops = %r.loops.join(","),
                dangling = %r.dangling.join(","),
                "alias expansion: loops cut, targets that lead nowhere skipped"
            );
        }
        Ok(r)
    }

    /// The distinct mailboxes that receive mail for `recipients`.
    fn resolve(&self, recipients: &[String]) -> Result<Vec<String>, DeliveryError> {
        Ok(self.resolution(recipients)?.mailboxes())
    }

    /// Is this a domain we receive mail for (a domain or a domain alias)?
    pub fn is_local_domain(&self, domain: &str) -> bool {
        let d = domain.to_ascii_lowercase();
        self.directory.snapshot().is_local_domain(&d)
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
    ///
    /// Only local mailboxes are delivered to here: external alias targets
    /// are the caller's (see [`Local::deliver_resolved`]); here they are
    /// logged and dropped.
    pub fn deliver_as(
        &self,
        recipients: &[String],
        message: &Pieces<'_>,
        uid: Option<&str>,
    ) -> Result<Vec<Delivered>, DeliveryError> {
        if message.is_empty() {
            return Err(DeliveryError::Empty);
        }
        let resolution = self.resolution(recipients)?;
        if !resolution.external.is_empty() {
            warn!(external = %resolution.external.join(","), "local delivery: external alias targets not forwarded on this path");
        }
        self.deliver_resolved(&resolution, message, uid)
    }

    /// Store `message` in every local mailbox of `resolution`, durably, or
    /// in none. A copy for a mailbox reached through another address (an
    /// alias, a sub-address, a domain alias, a role address) starts with
    /// `Delivered-To:` naming that address.
    pub fn deliver_resolved(
        &self,
        resolution: &crate::addresses::Resolution,
        message: &Pieces<'_>,
        uid: Option<&str>,
    ) -> Result<Vec<Delivered>, DeliveryError> {
        if message.is_empty() {
            return Err(DeliveryError::Empty);
        }
        let mut checked = Vec::with_capacity(resolution.local.len());
        let mut full = Vec::new();
        for m in &resolution.local {
            let addr = normalize_address(&m.address)
                .map_err(|_| DeliveryError::NoSuchUser(m.address.clone()))?;
            if self.directory.snapshot().user(&addr).is_none() {
                return Err(DeliveryError::NoSuchUser(addr));
            }
            let header = if m.recipient != addr {
                format!("Delivered-To: {}\r\n", m.recipient)
            } else {
                String::new()
            };
            let size = message.len() + header.len() as u64;
            match self.check_quota(&addr, size) {
                Ok(room) => checked.push((addr, room, header)),
                Err(DeliveryError::OverQuota(_)) if self.make_room_mode() => {
                    full.push((addr, header))
                }
                Err(e) => return Err(e),
            }
        }
        // Only once every recipient passed the other checks.
        for (addr, header) in full {
            let size = message.len() + header.len() as u64;
            self.make_room(&addr, size)?;
            let room = self.check_quota(&addr, size)?;
            checked.push((addr, room, header));
        }
        let mut done: Vec<(String, Delivered)> = Vec::with_capacity(checked.len());
        for (addr, room, header) in &checked {
            let mut copy = Pieces::new();
            copy.push(Piece::Borrowed(header.as_bytes()))
                .extend(message.borrowed());
            let limit = room.as_ref().map(Room::limit).unwrap_or_default();
            let stored = match uid {
                None => self.store.deliver_within(addr, &mut copy.reader(), limit),
                Some(uid) => self.store.import(
                    addr,
                    &postoffice_store::Imported {
                        uid,
                        received: std::time::SystemTime::now(),
                    },
                    &mut copy.reader(),
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
        for (addr, room, header) in &checked {
            if let Some(room) = room {
                self.quota_warnings(addr, room, message.len() + header.len() as u64);
            }
        }
        Ok(done.into_iter().map(|(_, d)| d).collect())
    }

    /// Take back what [`Local::deliver`] stored for `recipients`.
    pub fn undo(&self, recipients: &[String], delivered: &[Delivered]) {
        // The same expansion as at delivery: one stored copy per mailbox.
        let mailboxes = self.resolve(recipients).unwrap_or_default();
        self.undo_mailboxes(&mailboxes, delivered);
    }

    /// Take back what [`Local::deliver_resolved`] stored for `resolution`.
    pub fn undo_resolved(
        &self,
        resolution: &crate::addresses::Resolution,
        delivered: &[Delivered],
    ) {
        self.undo_mailboxes(&resolution.mailboxes(), delivered);
    }

    fn undo_mailboxes(&self, mailboxes: &[String], delivered: &[Delivered]) {
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
        // Held mail is never forwarded: with no local mailbox to hold it
        // in, it is refused (the sender hears of it) rather than dropped.
        let mailboxes = self.resolve(recipients)?;
        if mailboxes.is_empty() {
            return Err(DeliveryError::HeldNotForwarded(recipients.join(",")));
        }
        for r in &mailboxes {
            let addr = self.check_recipient(r)?;
            self.store
                .deliver_quarantine(&addr, &mut message.reader())
                .map_err(store_error)?;
        }
        Ok(())
    }

    /// Stream one message to one recipient (`postoffice deliver`).
    ///
    /// An address that leads to several mailboxes (a list) is read into
    /// memory (up to `[smtp] max_message_size`) and stored in each, all or
    /// nothing; one with external targets is refused as a temporary failure
    /// (this path has no queue: deliver it over SMTP). The first copy's
    /// details are returned.
    pub fn deliver_stream(
        &self,
        recipient: &str,
        message: &mut dyn Read,
    ) -> Result<Delivered, DeliveryError> {
        let resolution = self.check_targets(recipient)?;
        if !resolution.external.is_empty() {
            return Err(DeliveryError::ForwardUnavailable(recipient.to_string()));
        }
        if resolution.local.len() > 1 {
            let limit = self.config.smtp.max_message_size;
            let mut data = Vec::new();
            message
                .take(limit.saturating_add(1))
                .read_to_end(&mut data)
                .map_err(|source| {
                    DeliveryError::Store(StoreError::Io {
                        context: "read the message".into(),
                        source,
                    })
                })?;
            if data.len() as u64 > limit {
                return Err(DeliveryError::TooBigForQuota {
                    user: recipient.to_string(),
                    size: data.len() as u64,
                    quota: limit,
                });
            }
            let delivered = self.deliver_resolved(&resolution, &Pieces::of_slice(&data), None)?;
            return delivered
                .into_iter()
                .next()
                .ok_or_else(|| DeliveryError::NoSuchUser(recipient.to_string()));
        }
        let Some(mailbox) = resolution.local.first() else {
            return Err(DeliveryError::NoSuchUser(recipient.to_string()));
        };
        let addr = mailbox.address.clone();
        let header = if mailbox.recipient != addr {
            format!("Delivered-To: {}\r\n", mailbox.recipient)
        } else {
            String::new()
        };
        let mut message = std::io::Cursor::new(header.into_bytes()).chain(message);
        let limit = self
            .room(&addr)?
            .as_ref()
            .map(Room::limit)
            .unwrap_or_default();
        let d = self
            .store
            .deliver_within(&addr, &mut message, limit)
            .map_err(store_error)?;
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
    /// The quotas as the store checks them at delivery.
    fn limit(&self) -> postoffice_store::Limit {
        postoffice_store::Limit {
            messages: self.quota_messages,
            bytes: self.quota_bytes,
        }
    }
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
        StoreError::OverQuota(user) => DeliveryError::OverQuota(user),
        e => DeliveryError::Store(e),
    }
}
