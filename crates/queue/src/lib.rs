//! The outbound mail queue of postoffice.
//!
//! * [`Queue`]: the durable spool under `<data_dir>/queue` (format and
//!   crash safety: the `spool` module), or in PostgreSQL shared by several
//!   nodes ([`Queue::open_pg`], the [`pg_spool`] module). [`Queue::enqueue`] returns only
//!   once the message and its envelope are fsynced, so the SMTP side may
//!   answer `250` after it. The `postoffice queue` commands use
//!   [`Queue::list`], [`Queue::show`], [`Queue::retry`], [`Queue::flush`],
//!   [`Queue::delete`] (and the [`cli`] formatting helpers); they work from
//!   another process while the server runs.
//! * [`run`]: the scheduler and delivery, configured by a
//!   [`DeliveryConfig`]: MX lookup, SMTP with opportunistic or required
//!   STARTTLS, relays with AUTH, retries with backoff, bounces and delay
//!   warnings as RFC 3464 DSNs. What it needs of the application is the
//!   [`LocalMail`] trait (local domains and delivery, for notices to local
//!   senders) and, optionally, a DKIM signer for notices to remote ones.
//!
//! Inside, one module per job, in the order a message meets them:
//!
//! | module | its job |
//! | --- | --- |
//! | `backend` | the seam: what the queue does with stored entries, claims |
//! | `spool` | the files: envelopes (TOML), messages, the lock, recovery |
//! | [`pg_spool`] | the same in PostgreSQL, shared by several nodes |
//! | `scheduler` | the scan loop, concurrency limits, writing results |
//! | `routing` | where a domain's mail goes: transport, relayhost or MX |
//! | `route` | that destination resolved to addresses (MX, A/AAAA) |
//! | `attempt` | one group of recipients to one destination; recording it |
//! | `transport` | one SMTP session over TCP and STARTTLS |
//! | `backoff` | when to try again, when to give up |
//! | `bounce` | telling the sender: bounces and delay warnings |
//! | `dsn` | the RFC 3464 format of those notices |
//! | [`cli`] | the text of `postoffice queue` |
//!
//! "Nothing lost, nothing sent twice": a recipient's result is written to
//! its envelope (atomically) right after its session, before anything else
//! happens; a recipient counts as delivered only after the remote's 2xx to
//! its RCPT and to the message data. A message can be sent twice only when
//! the connection died after the data went out but before the reply came
//! back (RFC 5321 section 6.1 accepts that duplicate).
#![forbid(unsafe_code)]

mod attempt;
mod backend;
mod backoff;
mod bounce;
pub mod cli;
mod dsn;
pub mod pg_spool;
#[cfg(test)]
mod pg_tests;
mod route;
mod routing;
mod scheduler;
mod spool;
mod transport;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::Notify;

pub use pg_spool::{PgPool, PgSpool};
pub use scheduler::{DeliveryConfig, run};
pub use spool::{EnvelopeError, RcptState};

use backend::SpoolBackend;
use spool::{ENVELOPE_VERSION, Rcpt, Spool, SpoolEnvelope, new_id, unix_now, valid_id};

/// The local side of bounces and delay warnings: which domains are ours,
/// and delivery into a local maildrop. Implemented for
/// [`postoffice_core::App`]; tests implement it for their own recorder.
pub trait LocalMail: Send + Sync {
    /// Whether `domain` (lower case, no final dot) is one we receive mail
    /// for: a notice to a sender there is delivered locally.
    fn is_local_domain(&self, domain: &str) -> bool;

    /// Deliver `message` to the local user `rcpt`. An error is taken as
    /// temporary: the notice is tried again later.
    fn deliver(
        &self,
        rcpt: &str,
        message: &[u8],
    ) -> Result<(), postoffice_core::delivery::DeliveryError>;

    /// Where a notice to `rcpt` really goes: when `rcpt` is one of our SRS
    /// addresses (a forwarded message's sender), the address it decodes
    /// to, or `None` when it no longer decodes (expired: the notice is
    /// dropped, as nobody could receive it); otherwise `rcpt` itself.
    fn notice_recipient(&self, rcpt: &str) -> Option<String> {
        Some(rcpt.to_string())
    }
}

impl LocalMail for postoffice_core::App {
    fn is_local_domain(&self, domain: &str) -> bool {
        self.local().is_local_domain(domain)
    }

    fn deliver(
        &self,
        rcpt: &str,
        message: &[u8],
    ) -> Result<(), postoffice_core::delivery::DeliveryError> {
        // Aliases apply to notices too: local mailboxes get their copy,
        // external targets of a local alias get it through the queue (with
        // the null sender, as a notice is sent).
        let resolution = self.local().resolution(&[rcpt.to_string()])?;
        postoffice_core::alias_forward::deliver_and_forward(
            self,
            "",
            &resolution,
            &postoffice_common::content::Pieces::of_slice(message),
            None,
        )
        .map(|_| ())
    }

    fn notice_recipient(&self, rcpt: &str) -> Option<String> {
        let domain = domain_of(rcpt);
        if !postoffice_core::srs::is_srs_address(rcpt) || !self.local().is_local_domain(&domain) {
            return Some(rcpt.to_string());
        }
        // Without the key (an I/O problem) keep the address: the notice
        // fails locally and is tried again later.
        let Some(srs) = self.srs() else {
            return Some(rcpt.to_string());
        };
        match srs.reverse(rcpt, postoffice_core::srs::today()) {
            Ok(to) => Some(to),
            Err(e) => {
                tracing::warn!(to = rcpt, error = %e, "notice to an SRS address dropped");
                None
            }
        }
    }
}

/// The domain of an address: lower case, without a final dot; "" when
/// there is none.
pub(crate) fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default()
}

/// Most characters of remote text (replies, host names) kept in an
/// envelope or shown by `postoffice queue`.
pub(crate) const MAX_REMOTE_TEXT: usize = 512;

/// Untrusted text (a remote server's reply, a name from DNS) as one line
/// of printable ASCII, at most `max` characters (and `...`): control
/// characters (CR, LF, ESC, ...) become spaces, runs of white space one
/// space, anything else unprintable is dropped. Terminal escapes and
/// line breaks cannot get through, and the length stays bounded.
pub(crate) fn one_line(s: &str, max: usize) -> String {
    // Collapse white space and drop what printable() would drop, keeping
    // one character more than fits so that printable() marks the cut.
    let mut spaced = String::with_capacity(s.len().min(max + 2));
    let mut space = false;
    for c in s.chars() {
        if c.is_control() || c.is_whitespace() {
            space = !spaced.is_empty();
            continue;
        }
        if !c.is_ascii_graphic() {
            continue;
        }
        if space {
            spaced.push(' ');
            space = false;
        }
        spaced.push(c);
        if spaced.len() > max {
            break;
        }
    }
    postoffice_common::text::printable(&spaced, max)
}

/// Run spool I/O on the blocking pool.
pub(crate) async fn spool_io<T: Send + 'static>(
    queue: &Arc<Queue>,
    f: impl FnOnce(&dyn SpoolBackend) -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    let queue = Arc::clone(queue);
    match tokio::task::spawn_blocking(move || f(queue.spool())).await {
        Ok(r) => r,
        Err(e) => Err(QueueError::Io {
            context: "queue I/O task".into(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

/// Errors of the queue.
#[derive(Debug, Error)]
pub enum QueueError {
    /// Reading or writing the spool failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// No entry with this ID.
    #[error("no queue entry {0}")]
    NotFound(String),
    /// The text cannot be a queue ID (letters and digits only).
    #[error("invalid queue ID {0:?}")]
    InvalidId(String),
    /// The entry's envelope file cannot be used.
    #[error("queue entry {id} is unreadable: {source}")]
    Corrupt {
        /// The entry.
        id: String,
        /// What is wrong with its envelope.
        source: EnvelopeError,
    },
    /// A sender or recipient address the queue does not take (controls,
    /// spaces, angle brackets, too long).
    #[error("invalid address {0:?}")]
    InvalidAddress(String),
    /// `enqueue` without recipients.
    #[error("a message needs at least one recipient")]
    NoRecipients,
    /// `release` of an entry that is not held.
    #[error("queue entry {0} is not held")]
    NotHeld(String),
    /// The scheduler's write about an entry it was delivering was refused:
    /// its claim lapsed and another node took the entry over (shared
    /// queue in PostgreSQL only).
    #[error("queue entry {0} is no longer claimed by this node")]
    ClaimLost(String),
    /// The database of a shared queue failed or cannot be reached.
    #[error("{context}: {message}")]
    Database {
        /// What was being done.
        context: String,
        /// The database's (or the connection pool's) error.
        message: String,
    },
}

/// Submission hands mail for other domains to the queue through the
/// core's [`postoffice_core::Outbound`].
impl postoffice_core::Outbound for Queue {
    fn enqueue(
        &self,
        mail_from: &str,
        rcpts: &[String],
        message: &postoffice_common::content::Pieces<'_>,
    ) -> Result<String, postoffice_core::OutboundError> {
        Queue::enqueue(self, mail_from, rcpts, &mut message.reader())
            .map(|id| id.to_string())
            .map_err(|e| postoffice_core::OutboundError(Box::new(e)))
    }

    fn hold(
        &self,
        mail_from: &str,
        rcpts: &[String],
        message: &postoffice_common::content::Pieces<'_>,
        reason: &str,
    ) -> Result<String, postoffice_core::OutboundError> {
        Queue::enqueue_held(self, mail_from, rcpts, &mut message.reader(), reason)
            .map(|id| id.to_string())
            .map_err(|e| postoffice_core::OutboundError(Box::new(e)))
    }

    fn cancel(&self, id: &str) {
        if let Err(e) = self.delete(id) {
            tracing::warn!(id, error = %e, "could not take back a queued message");
        }
    }
}

/// A queue ID (letters and digits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(String);

impl QueueId {
    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for QueueId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for QueueId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// A recipient as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptSummary {
    /// The recipient address.
    pub address: String,
    /// Pending, delivered or failed.
    pub state: RcptState,
    /// Delivery attempts made.
    pub attempts: u32,
    /// Unix seconds (pending: next delivery attempt).
    pub next_attempt: u64,
    /// What happened last, for humans: a remote reply or a local error.
    pub last_error: String,
    /// RFC 3463 status of the last attempt.
    pub status: String,
    /// The host that gave the last reply, "" if none did.
    pub remote_mta: String,
    /// Failed: the bounce went out (or the null sender needs none).
    pub notified: bool,
    /// Unix seconds of the last attempt, 0 if none.
    pub last_attempt: u64,
}

/// One entry as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrySummary {
    /// The queue ID.
    pub id: String,
    /// "" is the null sender.
    pub mail_from: String,
    /// The message's size in octets.
    pub size: u64,
    /// Unix seconds of arrival.
    pub created_at: u64,
    /// Seconds since arrival, when listed.
    pub age_secs: u64,
    /// The earliest next attempt of a pending recipient.
    pub next_attempt: Option<u64>,
    /// The last error of a pending recipient (or of any, if none pending).
    pub last_error: Option<String>,
    /// The delay warning was sent.
    pub delay_warned: bool,
    /// Held until released, and why (see [`Queue::release`]).
    pub held: Option<String>,
    /// Every recipient, in the order given at enqueue.
    pub rcpts: Vec<RcptSummary>,
}

/// One entry in detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryDetail {
    /// What the list shows.
    pub summary: EntrySummary,
    /// The message's header section (CRLF line ends).
    pub headers: String,
}

fn summarize(env: &SpoolEnvelope, now: u64) -> EntrySummary {
    let pending = env.rcpts.iter().filter(|r| r.state == RcptState::Pending);
    let next_attempt = pending.clone().map(|r| r.next_attempt).min();
    let last_error = pending
        .clone()
        .chain(env.rcpts.iter())
        .map(|r| r.last_error.clone())
        .find(|e| !e.is_empty());
    EntrySummary {
        id: env.id.clone(),
        mail_from: env.mail_from.clone(),
        size: env.size,
        created_at: env.created_at,
        age_secs: now.saturating_sub(env.created_at),
        next_attempt,
        last_error,
        delay_warned: env.delay_warned,
        held: env.held.clone(),
        rcpts: env
            .rcpts
            .iter()
            .map(|r| RcptSummary {
                address: r.address.clone(),
                state: r.state,
                attempts: r.attempts,
                next_attempt: r.next_attempt,
                last_error: r.last_error.clone(),
                status: r.status.clone(),
                remote_mta: r.remote_mta.clone(),
                notified: r.notified,
                last_attempt: r.last_attempt,
            })
            .collect(),
    }
}

/// An envelope address is usable: no controls, spaces, angle brackets;
/// bounded length. `""` only for the sender (null sender).
fn valid_address(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= 512
        && !a
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>'))
}

/// What [`Queue::copy_missing_into`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// Entries copied.
    pub copied: usize,
    /// Entries the target held already.
    pub present: usize,
}

/// The outbound queue. `Send + Sync`: share it with an `Arc`.
#[derive(Debug)]
pub struct Queue {
    spool: Box<dyn SpoolBackend>,
    /// The spool directory (files), or scratch space (PostgreSQL).
    dir: PathBuf,
    cfg: postoffice_config::Queue,
    notify: Notify,
}

/// Opens the queue `config` asks for: with `[storage] backend =
/// "postgres"` the queue shared by every node in that database
/// ([`Queue::open_pg`]: node name `hostname`, claims lasting
/// `storage.lease_secs`, messages being sent copied under
/// `data_dir/queue-tmp`, a pool of its own of at least
/// 2 × `queue.max_concurrency` + 4 connections, since every delivery
/// holds one while the scheduler claims and renews); otherwise the file
/// spool in `data_dir` ([`Queue::open`]).
///
/// Blocks on the database: call it on a blocking thread
/// (`spawn_blocking`) from async code.
pub fn open_configured(config: &postoffice_config::Config) -> Result<Queue, QueueError> {
    if config.storage.backend != postoffice_config::Backend::Postgres {
        return Queue::open(&config.data_dir, &config.queue);
    }
    let database = |context: &str, message: String| QueueError::Database {
        context: context.to_string(),
        message,
    };
    let mut opts = postoffice_core::app::pg_options(config)
        .map_err(|e| database("cannot reach the shared queue's database", e.to_string()))?;
    let wanted = u32::try_from(
        config
            .queue
            .max_concurrency
            .saturating_mul(2)
            .saturating_add(4),
    )
    .unwrap_or(u32::MAX);
    opts.pool_size = opts.pool_size.max(wanted);
    let pool = postoffice_pg::pool(&opts)
        .map_err(|e| database("cannot reach the shared queue's database", e.to_string()))?;
    // Before any query: says `postoffice db migrate` when the tables are
    // missing.
    postoffice_pg::check_schema(&pool)
        .map_err(|e| database("cannot use the shared queue's database", e.to_string()))?;
    let spool = PgSpool::new(
        pool,
        &config.hostname,
        std::time::Duration::from_secs(config.storage.lease_secs),
    )
    .with_scratch_dir(&config.data_dir.join("queue-tmp"));
    Queue::open_pg(spool, &config.queue)
}

impl Queue {
    /// Open (create) the spool at `<data_dir>/queue` and recover from a
    /// crash: half-written entries are removed, complete ones kept.
    pub fn open(data_dir: &Path, cfg: &postoffice_config::Queue) -> Result<Queue, QueueError> {
        let dir = data_dir.join("queue");
        let spool = Spool::new(dir.clone())?;
        let report = spool.recover()?;
        if !report.removed_partial.is_empty() || report.removed_tmp > 0 {
            tracing::info!(
                entries = report.entries,
                removed_partial = report.removed_partial.len(),
                removed_tmp = report.removed_tmp,
                "queue recovered"
            );
        }
        Ok(Queue {
            spool: Box::new(spool),
            dir,
            cfg: cfg.clone(),
            notify: Notify::new(),
        })
    }

    /// A queue shared by several nodes through PostgreSQL (the tables of
    /// migration 3 of `postoffice db migrate`, which must exist): see
    /// [`PgSpool`]. Each node's
    /// scheduler ([`run`]) claims due entries, so every entry is attempted
    /// by one node at a time, and a node that dies leaves its entries to
    /// the others after the lease. The `postoffice queue` commands open it
    /// the same way (they claim nothing).
    ///
    /// Like every method of a queue on PostgreSQL, this blocks on the
    /// database client ([`postoffice_pg::Conn`]): on an async task it
    /// stalls the worker thread (announced with `block_in_place`, so a
    /// multi-thread runtime moves its other tasks away), so prefer
    /// `spawn_blocking` or `block_in_place`, as the scheduler, the web
    /// pages and core's submission path already do.
    pub fn open_pg(spool: PgSpool, cfg: &postoffice_config::Queue) -> Result<Queue, QueueError> {
        let spool = spool.with_delay_warning(cfg.delay_warning_secs);
        let dir = spool.scratch_dir().to_path_buf();
        durable_dir(&dir)?;
        let report = SpoolBackend::recover(&spool)?;
        tracing::debug!(entries = report.entries, "shared queue opened");
        Ok(Queue {
            spool: Box::new(spool),
            dir,
            cfg: cfg.clone(),
            notify: Notify::new(),
        })
    }

    /// The configuration the queue was opened with.
    pub fn config(&self) -> &postoffice_config::Queue {
        &self.cfg
    }

    /// The spool directory (with PostgreSQL: the scratch directory where
    /// a message being sent is copied).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn spool(&self) -> &dyn SpoolBackend {
        self.spool.as_ref()
    }

    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// Wake the scheduler (if it runs in this process).
    pub(crate) fn wake(&self) {
        self.notify.notify_one();
    }

    /// Durably spool one message for these recipients. Returns once the
    /// message file, the envelope and the directory are fsynced. `mail_from`
    /// "" is the null sender. Duplicate recipients (ignoring case) are
    /// merged. Wakes the scheduler.
    pub fn enqueue(
        &self,
        mail_from: &str,
        rcpts: &[String],
        message: &mut dyn std::io::Read,
    ) -> Result<QueueId, QueueError> {
        self.enqueue_with(mail_from, rcpts, message, None)
    }

    /// Like [`Queue::enqueue`], but the entry is held: listed, never sent
    /// (nor expired or bounced) until [`Queue::release`]. `reason` says why
    /// (shown by `queue list` and `queue show`).
    pub fn enqueue_held(
        &self,
        mail_from: &str,
        rcpts: &[String],
        message: &mut dyn std::io::Read,
        reason: &str,
    ) -> Result<QueueId, QueueError> {
        let reason = postoffice_common::text::printable(reason, 200);
        self.enqueue_with(mail_from, rcpts, message, Some(reason))
    }

    fn enqueue_with(
        &self,
        mail_from: &str,
        rcpts: &[String],
        message: &mut dyn std::io::Read,
        held: Option<String>,
    ) -> Result<QueueId, QueueError> {
        if !mail_from.is_empty() && !valid_address(mail_from) {
            return Err(QueueError::InvalidAddress(mail_from.to_string()));
        }
        let mut list: Vec<String> = Vec::with_capacity(rcpts.len());
        for r in rcpts {
            if !valid_address(r) {
                return Err(QueueError::InvalidAddress(r.clone()));
            }
            if !list.iter().any(|x| x.eq_ignore_ascii_case(r)) {
                list.push(r.clone());
            }
        }
        if list.is_empty() {
            return Err(QueueError::NoRecipients);
        }
        let now = unix_now();
        let id = new_id();
        let mut env = SpoolEnvelope {
            version: ENVELOPE_VERSION,
            id: id.clone(),
            mail_from: mail_from.to_string(),
            created_at: now,
            size: 0,
            delay_warned: false,
            eight_bit: None,
            held: held.clone(),
            rcpts: list
                .into_iter()
                .map(|address| Rcpt {
                    address,
                    state: RcptState::Pending,
                    attempts: 0,
                    next_attempt: now,
                    last_error: String::new(),
                    status: String::new(),
                    remote_mta: String::new(),
                    diagnostic: String::new(),
                    notified: false,
                    last_attempt: 0,
                })
                .collect(),
        };
        self.spool.create(&mut env, message)?;
        match &held {
            None => tracing::info!(id, from = %format!("<{mail_from}>"), nrcpt = env.rcpts.len(),
                size = env.size, "queued"),
            Some(reason) => tracing::warn!(id, from = %format!("<{mail_from}>"),
                nrcpt = env.rcpts.len(), size = env.size, %reason,
                "queued and held (release with `postoffice queue release`)"),
        }
        self.wake();
        Ok(QueueId(id))
    }

    /// Every entry, oldest first. Entries whose envelope cannot be read are
    /// skipped (and logged).
    pub fn list(&self) -> Result<Vec<EntrySummary>, QueueError> {
        let now = unix_now();
        let mut out: Vec<EntrySummary> = self
            .spool
            .envelopes()?
            .iter()
            .map(|env| summarize(env, now))
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    /// Copies every entry of this queue that `target` does not hold (by
    /// ID) into it: the envelope as it is (each recipient's state and
    /// attempts, the next attempt, a hold) and the message, streamed
    /// (`postoffice migrate`). Each entry is created whole or not at all,
    /// so a run interrupted at any point is completed by running it again,
    /// and a second run copies nothing. Entries are copied as they are
    /// now: with a server still sending from this queue, an entry it
    /// finishes afterwards would be sent again from the target, so stop the
    /// servers first.
    pub fn copy_missing_into(&self, target: &Queue) -> Result<Copied, QueueError> {
        let mut out = Copied::default();
        for id in self.spool.ids()? {
            if target.spool.read_env(&id)?.is_some() {
                out.present += 1;
                continue;
            }
            let Some(mut env) = self.spool.read_env(&id)? else {
                continue;
            };
            let message = self.spool.open_message(&id)?;
            target.spool.create(&mut env, &mut message.reader_at(0))?;
            out.copied += 1;
        }
        Ok(out)
    }

    fn checked(id: &str) -> Result<&str, QueueError> {
        if valid_id(id) {
            Ok(id)
        } else {
            Err(QueueError::InvalidId(id.to_string()))
        }
    }

    /// One entry with its message's headers.
    pub fn show(&self, id: &str) -> Result<EntryDetail, QueueError> {
        let id = Self::checked(id)?;
        let env = self
            .spool
            .read_env(id)?
            .ok_or_else(|| QueueError::NotFound(id.to_string()))?;
        const MAX_HEADERS: usize = 1 << 20;
        let head = self.spool.read_head(id, MAX_HEADERS + 2)?;
        let headers =
            String::from_utf8_lossy(&dsn::header_section(&head, MAX_HEADERS)).into_owned();
        Ok(EntryDetail {
            summary: summarize(&env, unix_now()),
            headers,
        })
    }

    /// Make `id` due now (its pending recipients, and a bounce not yet sent).
    pub fn retry(&self, id: &str) -> Result<(), QueueError> {
        let id = Self::checked(id)?;
        let now = unix_now();
        self.spool()
            .update(id, |env| make_due(env, now))?
            .ok_or_else(|| QueueError::NotFound(id.to_string()))?;
        self.wake();
        Ok(())
    }

    /// Make every entry due now. Returns how many entries had something to
    /// do.
    pub fn flush(&self) -> Result<usize, QueueError> {
        let now = unix_now();
        let mut n = 0;
        for id in self.spool.ids()? {
            if let Ok(Some(true)) = self.spool().update(&id, |env| make_due(env, now)) {
                n += 1;
            }
        }
        self.wake();
        Ok(n)
    }

    /// Release a held entry: it is sent now. Its age starts again, so a
    /// long hold does not make it expire at once. Releasing an entry that
    /// is not held is an error ([`QueueError::NotHeld`]).
    pub fn release(&self, id: &str) -> Result<(), QueueError> {
        let id = Self::checked(id)?;
        let now = unix_now();
        let was_held = self
            .spool()
            .update(id, |env| {
                let held = env.held.take();
                if held.is_some() {
                    env.created_at = now;
                    make_due(env, now);
                }
                held
            })?
            .ok_or_else(|| QueueError::NotFound(id.to_string()))?;
        match was_held {
            Some(reason) => {
                tracing::info!(id, %reason, "held queue entry released by request");
                self.wake();
                Ok(())
            }
            None => Err(QueueError::NotHeld(id.to_string())),
        }
    }

    /// Remove an entry without bouncing it.
    pub fn delete(&self, id: &str) -> Result<(), QueueError> {
        let id = Self::checked(id)?;
        if self.spool.remove(id)? {
            tracing::info!(id, "removed from the queue by request");
            Ok(())
        } else {
            Err(QueueError::NotFound(id.to_string()))
        }
    }
}

/// Create `dir` (private) if needed.
fn durable_dir(dir: &Path) -> Result<(), QueueError> {
    postoffice_common::durable::create_dir_all(dir).map_err(|source| QueueError::Io {
        context: format!("cannot create {}", dir.display()),
        source,
    })
}

/// Set the next attempt of everything still to do to `now`; whether there
/// was anything.
fn make_due(env: &mut SpoolEnvelope, now: u64) -> bool {
    let mut any = false;
    for r in &mut env.rcpts {
        let open = match r.state {
            RcptState::Pending => true,
            RcptState::Failed => !r.notified,
            RcptState::Delivered => false,
        };
        if open {
            any = true;
            r.next_attempt = r.next_attempt.min(now);
        }
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> postoffice_config::Queue {
        postoffice_config::Queue::default()
    }

    #[test]
    fn enqueue_list_show_retry_delete() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), &cfg()).unwrap();
        let msg = b"From: a@src.test\r\nSubject: hi\r\n\r\nbody\r\n";
        let id = q
            .enqueue(
                "a@src.test",
                &[
                    "b@dest.test".into(),
                    "B@dest.test".into(),
                    "c@x.test".into(),
                ],
                &mut &msg[..],
            )
            .unwrap();
        let list = q.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].id, id.as_str());
        assert_eq!(list[0].size, msg.len() as u64);
        assert_eq!(list[0].rcpts.len(), 2, "duplicates merged");
        assert_eq!(list[0].rcpts[0].state, RcptState::Pending);
        let d = q.show(&id).unwrap();
        assert_eq!(d.headers, "From: a@src.test\r\nSubject: hi\r\n");
        // Push the next attempt into the future, then retry.
        q.spool()
            .update(&id, |e| e.rcpts[0].next_attempt = u64::MAX / 2)
            .unwrap();
        q.retry(&id).unwrap();
        assert!(q.list().unwrap()[0].rcpts[0].next_attempt <= unix_now());
        assert_eq!(q.flush().unwrap(), 1);
        assert!(matches!(q.retry("NOPE"), Err(QueueError::NotFound(_))));
        assert!(matches!(q.show("../etc"), Err(QueueError::InvalidId(_))));
        q.delete(&id).unwrap();
        assert!(matches!(q.delete(&id), Err(QueueError::NotFound(_))));
        assert!(q.list().unwrap().is_empty());
    }

    #[test]
    fn a_held_entry_is_listed_never_due_and_sent_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), &cfg()).unwrap();
        let msg = b"From: a@src.test\r\nSubject: buy\r\n\r\nbody\r\n";
        let id = q
            .enqueue_held(
                "a@src.test",
                &["b@dest.test".into()],
                &mut &msg[..],
                "spam score 15.00\r\n",
            )
            .unwrap();
        let e = &q.list().unwrap()[0];
        assert_eq!(e.held.as_deref(), Some("spam score 15.00"));
        let env = q.spool().read_env(&id).unwrap().unwrap();
        assert_eq!(env.next_due(0), None, "never due while held");
        let listed = crate::cli::format_list(&q.list().unwrap(), unix_now());
        assert!(
            listed.contains(&format!(
                "HELD: spam score 15.00 (postoffice queue release {id})"
            )),
            "{listed}"
        );
        // flush does not send it.
        q.flush().unwrap();
        assert_eq!(q.spool().read_env(&id).unwrap().unwrap().next_due(0), None);
        q.release(&id).unwrap();
        let env = q.spool().read_env(&id).unwrap().unwrap();
        assert!(env.held.is_none());
        assert!(env.next_due(0).is_some_and(|t| t <= unix_now()));
        assert!(matches!(q.release(&id), Err(QueueError::NotHeld(_))));
        assert!(matches!(q.release("NOPE"), Err(QueueError::NotFound(_))));
    }

    #[test]
    fn remote_text_is_one_bounded_printable_line() {
        assert_eq!(
            one_line(
                "550-5.1.1 \x1b[31mred\x1b[0m\r\n550 5.1.1  no\tsuch\ruser\u{7}",
                100
            ),
            "550-5.1.1 [31mred [0m 550 5.1.1 no such user"
        );
        assert_eq!(one_line("caf\u{e9} ok", 100), "caf ok");
        let long = one_line(&"x\x1b".repeat(100_000), 512);
        assert_eq!(long.len(), 512 + 3);
        assert!(long.ends_with("..."));
        assert_eq!(one_line("", 10), "");
    }

    #[test]
    fn domains() {
        assert_eq!(domain_of("Bob@Dest.Test."), "dest.test");
        assert_eq!(domain_of("a@b@c.test"), "c.test");
        assert_eq!(domain_of("postmaster"), "");
    }

    #[test]
    fn enqueue_validates() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), &cfg()).unwrap();
        assert!(matches!(
            q.enqueue("a@b", &[], &mut &b"x"[..]),
            Err(QueueError::NoRecipients)
        ));
        assert!(matches!(
            q.enqueue("a@b", &["x y@z".into()], &mut &b"x"[..]),
            Err(QueueError::InvalidAddress(_))
        ));
        assert!(matches!(
            q.enqueue("a\r\n@b", &["x@z".into()], &mut &b"x"[..]),
            Err(QueueError::InvalidAddress(_))
        ));
        // The null sender is fine.
        q.enqueue("", &["x@z".into()], &mut &b"x"[..]).unwrap();
    }

    /// Kill-safety at the API level: what enqueue returned survives a
    /// "crash" (dropping the Queue) and a reopen; half-written entries do
    /// not.
    #[test]
    fn reopen_keeps_complete_entries_and_drops_half_written_ones() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let q = Queue::open(dir.path(), &cfg()).unwrap();
            q.enqueue(
                "a@src.test",
                &["b@dest.test".into()],
                &mut &b"Subject: x\r\n\r\ny\r\n"[..],
            )
            .unwrap()
        };
        let qdir = dir.path().join("queue");
        std::fs::write(qdir.join("DEADBEEF.msg"), b"half").unwrap();
        std::fs::write(qdir.join("DEADBEEF.env.tmp"), b"version = 1\nid = \"DEA").unwrap();
        let q = Queue::open(dir.path(), &cfg()).unwrap();
        let list = q.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].id, id.as_str());
        assert!(!qdir.join("DEADBEEF.msg").exists());
        assert!(!qdir.join("DEADBEEF.env.tmp").exists());
    }
}
