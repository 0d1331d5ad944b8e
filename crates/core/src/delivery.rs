//! Local delivery: the one path by which mail reaches a maildrop, shared by
//! the SMTP listener and `postoffice deliver`.
//!
//! It checks that each recipient exists and has room (quotas), stores the
//! message durably for every recipient (each copy fsynced before this
//! returns), and if any copy fails, takes back the copies already made so
//! that the sender's retry does not produce duplicates.

use std::io::Read;

use postoffice_common::content::Pieces;

use postoffice_config::Config;
use postoffice_directory::{Directory, normalize_address};
use postoffice_smtp::{Reply, codes, sanitize, status};
use postoffice_store::{Delivered, MailStore, StoreError};

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
        let addr = normalize_address(address)
            .map_err(|_| DeliveryError::NoSuchUser(address.to_string()))?;
        let dir = self.directory.snapshot();
        if dir.user(&addr).is_none() {
            return Err(DeliveryError::NoSuchUser(addr));
        }
        self.check_quota(&addr, 0)?;
        Ok(addr)
    }

    /// Is this a domain we receive mail for?
    pub fn is_local_domain(&self, domain: &str) -> bool {
        let d = domain.to_ascii_lowercase();
        self.directory.snapshot().domain(&d).is_some()
    }

    fn check_quota(&self, addr: &str, size: u64) -> Result<(), DeliveryError> {
        let p = self
            .directory
            .snapshot()
            .effective(addr, &policy_defaults(self.config));
        if p.quota_bytes.is_none() && p.quota_messages.is_none() {
            return Ok(());
        }
        let usage = self.store.usage(addr)?;
        if let Some(q) = p.quota_bytes {
            if size > q {
                return Err(DeliveryError::TooBigForQuota {
                    user: addr.to_string(),
                    size,
                    quota: q,
                });
            }
            if usage.bytes + size > q {
                return Err(DeliveryError::OverQuota(addr.to_string()));
            }
        }
        if let Some(q) = p.quota_messages
            && usage.messages + 1 > q
        {
            return Err(DeliveryError::OverQuota(addr.to_string()));
        }
        Ok(())
    }

    /// Store `message` for every recipient, durably, or for none. The
    /// message is streamed into each maildrop from its pieces (memory or the
    /// spool file): never assembled in memory.
    pub fn deliver(
        &self,
        recipients: &[String],
        message: &Pieces<'_>,
    ) -> Result<Vec<Delivered>, DeliveryError> {
        if message.is_empty() {
            return Err(DeliveryError::Empty);
        }
        let size = message.len();
        let mut checked = Vec::with_capacity(recipients.len());
        for r in recipients {
            let addr = self.check_recipient(r)?;
            self.check_quota(&addr, size)?;
            checked.push(addr);
        }
        let mut done: Vec<(String, Delivered)> = Vec::with_capacity(checked.len());
        for addr in &checked {
            match self.store.deliver(addr, &mut message.reader()) {
                Ok(d) => done.push((addr.clone(), d)),
                Err(e) => {
                    for (a, d) in &done {
                        let _ = self.store.discard(a, d);
                    }
                    return Err(store_error(e));
                }
            }
        }
        Ok(done.into_iter().map(|(_, d)| d).collect())
    }

    /// Take back what [`Local::deliver`] stored for `recipients`.
    pub fn undo(&self, recipients: &[String], delivered: &[Delivered]) {
        for (r, d) in recipients.iter().zip(delivered) {
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
        for r in recipients {
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
        if let Err(e) = self.check_quota_after(&addr, d.size) {
            let _ = self.store.discard(&addr, &d);
            return Err(e);
        }
        Ok(d)
    }

    fn check_quota_after(&self, addr: &str, size: u64) -> Result<(), DeliveryError> {
        let p = self
            .directory
            .snapshot()
            .effective(addr, &policy_defaults(self.config));
        let Some(q) = p.quota_bytes else {
            return Ok(());
        };
        if size > q {
            return Err(DeliveryError::TooBigForQuota {
                user: addr.to_string(),
                size,
                quota: q,
            });
        }
        let usage = self.store.usage(addr)?;
        if usage.bytes > q {
            return Err(DeliveryError::OverQuota(addr.to_string()));
        }
        Ok(())
    }
}

fn store_error(e: StoreError) -> DeliveryError {
    match e {
        StoreError::EmptyMessage => DeliveryError::Empty,
        e => DeliveryError::Store(e),
    }
}
