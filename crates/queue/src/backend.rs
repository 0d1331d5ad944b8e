//! The seam between the queue and where its entries live.
//!
//! [`SpoolBackend`] is everything [`crate::Queue`], the scheduler, the
//! notices and the `postoffice queue` commands do with stored entries.
//! Two implementations:
//!
//! * [`crate::spool::Spool`], the files under `<data_dir>/queue`: one
//!   server per data directory, so its claims live in that process's
//!   memory (they only keep the scheduler from starting an entry twice);
//! * [`crate::pg_spool::PgSpool`], tables in PostgreSQL shared by several
//!   nodes: claims are rows (`claimed_by`, `claim_until`) taken with
//!   `FOR UPDATE SKIP LOCKED` and kept alive by [`SpoolBackend::renew`]; a
//!   node that dies leaves its claims to the others when the lease ends.
//!
//! Writes come in two kinds. What the scheduler writes about an entry it
//! claimed (results of an attempt, bounces sent, removal once finished)
//! goes through the `claimed` methods, which refuse with
//! [`QueueError::ClaimLost`] when another node has taken the entry over.
//! What an administrator asks for (`queue retry|flush|release|delete`) is
//! written whoever holds the claim.

use std::io;

use postoffice_common::content::Content;

use crate::QueueError;
use crate::spool::{RcptState, Recovery, SpoolEnvelope};

/// The sizes the scheduler publishes as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct QueueSizes {
    /// Entries.
    pub entries: i64,
    /// Pending recipients of entries that are not held.
    pub pending: i64,
    /// Pending recipients of held entries.
    pub held: i64,
    /// Delivered recipients (of entries not finished yet).
    pub delivered: i64,
    /// Failed recipients (of entries not finished yet).
    pub failed: i64,
    /// Unix seconds of the oldest entry's arrival.
    pub oldest: Option<u64>,
}

impl QueueSizes {
    /// Count one envelope in.
    pub(crate) fn add(&mut self, env: &SpoolEnvelope) {
        self.entries += 1;
        self.oldest = Some(
            self.oldest
                .map_or(env.created_at, |o| o.min(env.created_at)),
        );
        for r in &env.rcpts {
            match r.state {
                RcptState::Pending if env.held.is_some() => self.held += 1,
                RcptState::Pending => self.pending += 1,
                RcptState::Delivered => self.delivered += 1,
                RcptState::Failed => self.failed += 1,
            }
        }
    }
}

/// What one [`SpoolBackend::claim_due`] found.
#[derive(Debug, Default)]
pub(crate) struct Due {
    /// Entries claimed for this process, most overdue first.
    pub ids: Vec<String>,
    /// Due entries were left unclaimed because of `max`.
    pub more: bool,
    /// Unix seconds when the next entry not claimed now becomes due, if
    /// known.
    pub next: Option<u64>,
    /// The queue's size, for the metrics.
    pub sizes: QueueSizes,
}

/// What [`SpoolBackend::modify`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Modified {
    /// There is no such entry (removed meanwhile).
    Gone,
    /// The envelope was read, changed by the function and written (if it
    /// changed).
    Kept,
    /// `finish` was asked and the entry was complete afterwards: removed.
    Finished,
}

/// Where queue entries live. Sync (called on the blocking pool through
/// `spool_io`), object-safe, shared between threads.
pub(crate) trait SpoolBackend: Send + Sync + std::fmt::Debug {
    /// Where the entries are, for the log ("/var/lib/postoffice/queue",
    /// "postgresql").
    fn location(&self) -> String;

    /// Clean up after a crash, at open.
    fn recover(&self) -> Result<Recovery, QueueError>;

    /// Durably store a new entry: its envelope and the message, copied
    /// from `message` as it is read (never whole in memory). Sets
    /// `env.size` and `env.eight_bit`. Once this returns the entry
    /// survives a crash (the caller may answer `250`); on an error nothing
    /// is left behind.
    fn create(&self, env: &mut SpoolEnvelope, message: &mut dyn io::Read)
    -> Result<(), QueueError>;

    /// IDs of the entries, sorted.
    fn ids(&self) -> Result<Vec<String>, QueueError>;

    /// The envelope of `id`, `None` if there is no such entry.
    fn read_env(&self, id: &str) -> Result<Option<SpoolEnvelope>, QueueError>;

    /// Every readable envelope (unreadable ones are logged and skipped).
    fn envelopes(&self) -> Result<Vec<SpoolEnvelope>, QueueError> {
        let mut out = Vec::new();
        for id in self.ids()? {
            match self.read_env(&id) {
                Ok(Some(env)) => out.push(env),
                Ok(None) => {}
                Err(e) => tracing::warn!(id, error = %e, "skipping an unreadable queue entry"),
            }
        }
        Ok(out)
    }

    /// The first `max` octets of the message (fewer if it is shorter):
    /// enough for its header section (`queue show`, a notice's copy of
    /// the original headers) without reading a large body into memory.
    fn read_head(&self, id: &str, max: usize) -> Result<Vec<u8>, QueueError>;

    /// The message, to be read as it is sent (a large one is not held in
    /// memory).
    fn open_message(&self, id: &str) -> Result<Content, QueueError>;

    /// Read-modify-write the envelope of `id` atomically: `f` is called at
    /// most once, with the current envelope. `claimed`: only while this
    /// process holds the entry's claim ([`QueueError::ClaimLost`]
    /// otherwise). `finish`: an entry that `f` leaves complete is removed
    /// instead of rewritten.
    fn modify(
        &self,
        id: &str,
        claimed: bool,
        finish: bool,
        f: &mut dyn FnMut(&mut SpoolEnvelope),
    ) -> Result<Modified, QueueError>;

    /// Remove an entry (an administrator's `delete`, or taking back what
    /// submission just queued). `Ok(false)`: there was none.
    fn remove(&self, id: &str) -> Result<bool, QueueError>;

    /// Remove the claimed entry if it is complete (checked atomically).
    fn remove_if_complete(&self, id: &str) -> Result<bool, QueueError>;

    /// Claim up to `max` entries due at `now` (unix seconds) that nobody
    /// else holds, for delivery by this process. `warn_after` is the
    /// delay warning's age (`delay_warning_secs`).
    fn claim_due(&self, now: u64, max: usize, warn_after: u64) -> Result<Due, QueueError>;

    /// How long a claim lasts unless renewed; `None`: claims do not expire
    /// (one process per spool).
    fn lease(&self) -> Option<std::time::Duration>;

    /// Extend the claims on `ids`; returns those that are no longer ours
    /// (taken over by another node, or the entry is gone).
    fn renew(&self, ids: &[String]) -> Result<Vec<String>, QueueError>;

    /// Give up the claim on `id`. `hold_secs` > 0: nobody (this process
    /// included) claims it again for that long (after an error).
    fn release_claim(&self, id: &str, hold_secs: u64) -> Result<(), QueueError>;
}

impl dyn SpoolBackend + '_ {
    fn modify_with<R>(
        &self,
        id: &str,
        claimed: bool,
        finish: bool,
        f: impl FnOnce(&mut SpoolEnvelope) -> R,
    ) -> Result<(Modified, Option<R>), QueueError> {
        let mut f = Some(f);
        let mut out = None;
        let done = self.modify(id, claimed, finish, &mut |env| {
            if let Some(f) = f.take() {
                out = Some(f(env));
            }
        })?;
        Ok((done, out))
    }

    /// An administrator's read-modify-write (whoever holds the claim).
    /// `Ok(None)`: no such entry.
    pub(crate) fn update<R>(
        &self,
        id: &str,
        f: impl FnOnce(&mut SpoolEnvelope) -> R,
    ) -> Result<Option<R>, QueueError> {
        Ok(self.modify_with(id, false, false, f)?.1)
    }

    /// The scheduler's read-modify-write of an entry it claimed.
    /// `Ok(None)`: no such entry.
    pub(crate) fn update_claimed<R>(
        &self,
        id: &str,
        f: impl FnOnce(&mut SpoolEnvelope) -> R,
    ) -> Result<Option<R>, QueueError> {
        Ok(self.modify_with(id, true, false, f)?.1)
    }

    /// Like [`Self::update_claimed`], but an entry that `f` leaves
    /// complete is removed at once. `Ok(None)`: no such entry;
    /// `Ok(Some(true))`: removed.
    pub(crate) fn update_or_finish(
        &self,
        id: &str,
        f: impl FnOnce(&mut SpoolEnvelope),
    ) -> Result<Option<bool>, QueueError> {
        Ok(match self.modify_with(id, true, true, f)?.0 {
            Modified::Gone => None,
            Modified::Kept => Some(false),
            Modified::Finished => Some(true),
        })
    }
}
