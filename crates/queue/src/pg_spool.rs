//! The outbound queue in PostgreSQL, shared by several nodes.
//!
//! Two tables (migration 3 of [`postoffice_pg::migrate`], that is
//! `postoffice db migrate`):
//!
//! * `queue_entries`: one row per entry. `envelope` is the same TOML text
//!   the file spool writes to `<id>.env` (one format for both); the other
//!   columns are derived from it on every write, for the queries:
//!   `next_attempt` (when the scheduler next has something to do; NULL:
//!   never, as for a held entry), `held`, `created_at`, `size` and the
//!   recipient counts of the metrics. `claimed_by` and `claim_until` are
//!   the claim: which node's scheduler is delivering the entry, and until
//!   when unless it renews.
//! * `queue_bodies`: the message in chunks of at most [`CHUNK`] octets
//!   (`seq` from 0), written and read a chunk at a time: a message is
//!   never whole in memory.
//!
//! Creating an entry is one transaction (the row, every chunk, the final
//! envelope), committed before `create` returns (and [`crate::Queue::enqueue`]), so
//! submission answers `250` only after COMMIT.
//!
//! Claiming: `UPDATE .. SET claimed_by = me, claim_until = now() + lease
//! WHERE id IN (SELECT .. WHERE next_attempt <= now AND NOT held AND
//! (claimed_by IS NULL OR claim_until < now()) .. FOR UPDATE SKIP
//! LOCKED)`: concurrent schedulers skip each other's rows instead of
//! waiting, and each due entry goes to one of them. The holder renews its
//! claims while it delivers; when it dies they lapse and another node takes
//! the entries over. The scheduler's writes (results of an attempt, removal
//! after the remote's `250`) lock the row and go through only while
//! `claimed_by` is still this node's claim: once another node has taken
//! the entry over, [`QueueError::ClaimLost`]. (A claim that lapsed without
//! anyone taking it is still ours: nobody else can have attempted the
//! entry.)
//!
//! `me` is the node name given to [`PgSpool::new`] plus a unique suffix,
//! so two processes (or a restarted one) never mistake each other's claims
//! for their own.
//!
//! Times: `next_attempt` and `created_at` come from the envelope (the
//! nodes' clocks, unix seconds, as in the file spool); leases use the
//! database's `now()`, one clock for every node.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use postoffice_common::content::{Content, SpoolWriter};
use postoffice_pg::{Conn, DbError};
use tokio_postgres::types::Type;

use crate::QueueError;
use crate::backend::{Due, Modified, QueueSizes, SpoolBackend};
use crate::spool::{RcptState, Recovery, SpoolEnvelope, valid_id};

/// A pool of connections to the database: [`postoffice_pg::pool`] builds
/// it from the `[storage]` options (the same pool type as the mail
/// store's).
pub type PgPool = postoffice_pg::Pool;

/// A pooled connection.
type Pooled = r2d2::PooledConnection<postoffice_pg::Manager>;

/// Largest chunk of a message in `queue_bodies` (256 KiB).
pub const CHUNK: usize = 256 * 1024;

/// A transaction on a pooled connection: `BEGIN` when made, `COMMIT` by
/// [`Tx::commit`], `ROLLBACK` when dropped uncommitted (as the mail
/// store's long delivery does). If the ROLLBACK fails too the connection
/// is broken, and the server rolls back by itself.
struct Tx {
    conn: Pooled,
    open: bool,
}

impl Tx {
    fn begin(mut conn: Pooled, begin: &str) -> Result<Tx, DbError> {
        conn.batch_execute(begin)?;
        Ok(Tx { conn, open: true })
    }

    fn commit(mut self) -> Result<(), DbError> {
        self.open = false;
        self.conn.batch_execute("COMMIT")
    }
}

impl std::ops::Deref for Tx {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if self.open {
            let _ = self.conn.batch_execute("ROLLBACK");
        }
    }
}

/// Held in memory (then spilled to a scratch file) while a message is
/// copied out of the database for sending.
const SPILL_AT: usize = CHUNK;

/// Chunks fetched per round trip when a message is read.
const ROWS_PER_FETCH: i64 = 2;

/// The queue's entries in PostgreSQL. See the module docs.
pub struct PgSpool {
    pool: PgPool,
    /// This instance's claims: `<node>#<unique id>`.
    me: String,
    lease: Duration,
    /// Where a message being sent is copied (anonymous files).
    scratch: PathBuf,
    /// `delay_warning_secs`, for `next_attempt`.
    warn_after: u64,
}

impl std::fmt::Debug for PgSpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSpool")
            .field("me", &self.me)
            .field("lease", &self.lease)
            .field("scratch", &self.scratch)
            .finish_non_exhaustive()
    }
}

/// A database error (or timeout), with what was being done.
fn db(context: &str) -> impl FnOnce(DbError) -> QueueError + '_ {
    move |e| {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        QueueError::Database {
            context: context.to_string(),
            message,
        }
    }
}

fn corrupt(id: &str) -> impl FnOnce(crate::EnvelopeError) -> QueueError + '_ {
    move |source| QueueError::Corrupt {
        id: id.to_string(),
        source,
    }
}

/// Unix seconds as the `int8` the SQL turns into a timestamp.
fn secs(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// The derived columns of an envelope.
struct Columns {
    next_attempt: Option<i64>,
    held: bool,
    created_at: i64,
    size: i64,
    pending: i32,
    delivered: i32,
    failed: i32,
}

impl Columns {
    fn of(env: &SpoolEnvelope, warn_after: u64) -> Columns {
        let count = |s: RcptState| {
            i32::try_from(env.rcpts.iter().filter(|r| r.state == s).count()).unwrap_or(i32::MAX)
        };
        Columns {
            // Far future times stay representable (timestamptz ends in
            // the year 294276).
            next_attempt: env
                .next_due(warn_after)
                .map(|t| secs(t.min(100 * 365 * 86_400 + crate::unix_now()))),
            held: env.held.is_some(),
            created_at: secs(env.created_at),
            size: secs(env.size),
            pending: count(RcptState::Pending),
            delivered: count(RcptState::Delivered),
            failed: count(RcptState::Failed),
        }
    }
}

/// Read until `buf` is full or the input ends; how much was read.
fn fill(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl PgSpool {
    /// The queue's entries in the database of `pool` (whose tables
    /// [`postoffice_pg::migrate`] created), for the node named `node` (its host
    /// name, say: it shows in `claimed_by`). Claims last `lease` unless
    /// renewed: a node that dies holds its entries that long.
    pub fn new(pool: PgPool, node: &str, lease: Duration) -> PgSpool {
        PgSpool {
            pool,
            me: format!("{node}#{}", postoffice_common::ids::unique_id()),
            lease: lease.max(Duration::from_secs(1)),
            scratch: std::env::temp_dir().join("postoffice-queue"),
            warn_after: 0,
        }
    }

    /// Copy messages being sent into anonymous files in `dir` (created if
    /// needed) instead of the system's temporary directory: use the data
    /// directory's.
    pub fn with_scratch_dir(mut self, dir: &Path) -> PgSpool {
        self.scratch = dir.to_path_buf();
        self
    }

    /// The scratch directory (see [`PgSpool::with_scratch_dir`]).
    pub fn scratch_dir(&self) -> &Path {
        &self.scratch
    }

    /// This instance's name in `claimed_by`.
    pub fn claimant(&self) -> &str {
        &self.me
    }

    /// `delay_warning_secs` of the queue, which `next_attempt` accounts
    /// for (set by [`crate::Queue::open_pg`]).
    pub(crate) fn with_delay_warning(mut self, secs: u64) -> PgSpool {
        self.warn_after = secs;
        self
    }

    fn conn(&self) -> Result<Pooled, QueueError> {
        postoffice_pg::take(&self.pool).map_err(|e| QueueError::Database {
            context: "no connection to the queue's database".into(),
            message: e.to_string(),
        })
    }

    /// The lease as seconds for `make_interval`.
    fn lease_secs(&self) -> f64 {
        self.lease.as_secs_f64()
    }

    /// Stream the chunks of `id` into `out` (only the first `limit`
    /// octets, if given); the octets written. `None`: no such entry. One
    /// read-only snapshot: the whole body matches the envelope's size, or
    /// this fails.
    fn copy_body(
        &self,
        id: &str,
        out: &mut dyn io::Write,
        limit: Option<usize>,
    ) -> Result<Option<u64>, QueueError> {
        let ctx = "cannot read a queued message";
        let mut tx = Tx::begin(
            self.conn()?,
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        )
        .map_err(db(ctx))?;
        let Some(row) = tx
            .query_typed_opt(
                "SELECT size FROM queue_entries WHERE id = $1",
                &[(&id, Type::TEXT)],
            )
            .map_err(db(ctx))?
        else {
            return Ok(None);
        };
        let size: i64 = row.get(0);
        let limit = limit.map_or(u64::MAX, |l| l as u64);
        let mut copied: u64 = 0;
        let mut next_seq: i32 = 0;
        // A few chunks per round trip, all from the snapshot of BEGIN.
        while copied < limit {
            let rows = tx
                .query_typed(
                    "SELECT seq, chunk FROM queue_bodies WHERE id = $1 AND seq >= $2 \
                     ORDER BY seq LIMIT $3",
                    &[
                        (&id, Type::TEXT),
                        (&next_seq, Type::INT4),
                        (&ROWS_PER_FETCH, Type::INT8),
                    ],
                )
                .map_err(db(ctx))?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                let seq: i32 = row.get(0);
                next_seq = seq + 1;
                let chunk: &[u8] = row.get(1);
                let take = chunk
                    .len()
                    .min((limit - copied).try_into().unwrap_or(usize::MAX));
                out.write_all(&chunk[..take])
                    .map_err(|source| QueueError::Io {
                        context: format!("cannot copy queued message {id}"),
                        source,
                    })?;
                copied += take as u64;
                if copied >= limit {
                    break;
                }
            }
        }
        tx.commit().map_err(db(ctx))?;
        if copied != (size as u64).min(limit) {
            return Err(QueueError::Io {
                context: format!("queued message {id}"),
                source: io::Error::other(format!("{copied} octets stored, {size} expected")),
            });
        }
        Ok(Some(copied))
    }

    /// Lock the row of `id`; its envelope and whether this instance holds
    /// the claim. `None`: no such entry.
    fn lock_row(
        tx: &mut Tx,
        id: &str,
        me: &str,
        ctx: &str,
    ) -> Result<Option<(SpoolEnvelope, bool)>, QueueError> {
        let Some(row) = tx
            .query_typed_opt(
                "SELECT envelope, claimed_by FROM queue_entries WHERE id = $1 FOR UPDATE",
                &[(&id, Type::TEXT)],
            )
            .map_err(db(ctx))?
        else {
            return Ok(None);
        };
        let text: &str = row.get(0);
        let claimed_by: Option<&str> = row.get(1);
        let env = SpoolEnvelope::from_toml(text).map_err(corrupt(id))?;
        Ok(Some((env, claimed_by == Some(me))))
    }

    fn write_env(&self, tx: &mut Tx, env: &SpoolEnvelope, ctx: &str) -> Result<(), QueueError> {
        let c = Columns::of(env, self.warn_after);
        let toml = env.to_toml();
        tx.execute_typed(
            "UPDATE queue_entries SET envelope = $2, next_attempt = to_timestamp($3::int8), \
             held = $4, created_at = to_timestamp($5::int8), size = $6, rcpts_pending = $7, \
             rcpts_delivered = $8, rcpts_failed = $9 WHERE id = $1",
            &[
                (&env.id, Type::TEXT),
                (&toml, Type::TEXT),
                (&c.next_attempt, Type::INT8),
                (&c.held, Type::BOOL),
                (&c.created_at, Type::INT8),
                (&c.size, Type::INT8),
                (&c.pending, Type::INT4),
                (&c.delivered, Type::INT4),
                (&c.failed, Type::INT4),
            ],
        )
        .map_err(db(ctx))?;
        Ok(())
    }
}

impl SpoolBackend for PgSpool {
    fn location(&self) -> String {
        format!("postgresql (node {})", self.me)
    }

    fn recover(&self) -> Result<Recovery, QueueError> {
        // Nothing is ever half-written (one transaction per entry); claims
        // of dead nodes lapse by themselves.
        let mut conn = self.conn()?;
        let row = conn
            .query_typed_one("SELECT count(*) FROM queue_entries", &[])
            .map_err(db("cannot read the queue"))?;
        let entries: i64 = row.get(0);
        Ok(Recovery {
            entries: usize::try_from(entries).unwrap_or(0),
            ..Recovery::default()
        })
    }

    fn create(&self, env: &mut SpoolEnvelope, message: &mut dyn Read) -> Result<(), QueueError> {
        let ctx = "cannot queue a message";
        if !valid_id(&env.id) {
            return Err(QueueError::InvalidId(env.id.clone()));
        }
        let mut tx = Tx::begin(self.conn()?, "BEGIN").map_err(db(ctx))?;
        // Invisible to everyone else until COMMIT.
        let created = secs(env.created_at);
        tx.execute_typed(
            "INSERT INTO queue_entries (id, envelope, created_at) \
             VALUES ($1, '', to_timestamp($2::int8))",
            &[(&env.id, Type::TEXT), (&created, Type::INT8)],
        )
        .map_err(db(ctx))?;
        let mut buf = vec![0u8; CHUNK];
        let mut seq: i32 = 0;
        let mut size: u64 = 0;
        let mut eight_bit = false;
        loop {
            let n = fill(message, &mut buf).map_err(|source| QueueError::Io {
                context: "cannot read the message to queue".into(),
                source,
            })?;
            if n == 0 {
                break;
            }
            let chunk = &buf[..n];
            eight_bit = eight_bit || chunk.iter().any(|&b| b >= 0x80);
            tx.execute_typed(
                "INSERT INTO queue_bodies (id, seq, chunk) VALUES ($1, $2, $3)",
                &[
                    (&env.id, Type::TEXT),
                    (&seq, Type::INT4),
                    (&chunk, Type::BYTEA),
                ],
            )
            .map_err(db(ctx))?;
            seq += 1;
            size += n as u64;
            if n < CHUNK {
                break;
            }
        }
        env.size = size;
        env.eight_bit = Some(eight_bit);
        self.write_env(&mut tx, env, ctx)?;
        tx.commit().map_err(db(ctx))
    }

    fn ids(&self) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn()?;
        let rows = conn
            .query_typed("SELECT id FROM queue_entries ORDER BY id", &[])
            .map_err(db("cannot list the queue"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn read_env(&self, id: &str) -> Result<Option<SpoolEnvelope>, QueueError> {
        let mut conn = self.conn()?;
        let Some(row) = conn
            .query_typed_opt(
                "SELECT envelope FROM queue_entries WHERE id = $1",
                &[(&id, Type::TEXT)],
            )
            .map_err(db("cannot read a queue entry"))?
        else {
            return Ok(None);
        };
        SpoolEnvelope::from_toml(row.get(0))
            .map(Some)
            .map_err(corrupt(id))
    }

    fn envelopes(&self) -> Result<Vec<SpoolEnvelope>, QueueError> {
        let mut conn = self.conn()?;
        let rows = conn
            .query_typed("SELECT id, envelope FROM queue_entries ORDER BY id", &[])
            .map_err(db("cannot list the queue"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: &str = row.get(0);
            match SpoolEnvelope::from_toml(row.get(1)) {
                Ok(env) => out.push(env),
                Err(e) => tracing::warn!(id, error = %e, "skipping an unreadable queue entry"),
            }
        }
        Ok(out)
    }

    fn read_head(&self, id: &str, max: usize) -> Result<Vec<u8>, QueueError> {
        let mut out = Vec::new();
        match self.copy_body(id, &mut out, Some(max))? {
            Some(_) => Ok(out),
            None => Err(QueueError::NotFound(id.to_string())),
        }
    }

    fn open_message(&self, id: &str) -> Result<Content, QueueError> {
        postoffice_common::durable::create_dir_all(&self.scratch).map_err(|source| {
            QueueError::Io {
                context: format!("cannot create {}", self.scratch.display()),
                source,
            }
        })?;
        let mut out = SpoolWriter::new(&self.scratch, SPILL_AT, None);
        match self.copy_body(id, &mut out, None)? {
            Some(_) => Ok(out.finish()),
            None => Err(QueueError::NotFound(id.to_string())),
        }
    }

    fn modify(
        &self,
        id: &str,
        claimed: bool,
        finish: bool,
        f: &mut dyn FnMut(&mut SpoolEnvelope),
    ) -> Result<Modified, QueueError> {
        let ctx = "cannot update a queue entry";
        let mut tx = Tx::begin(self.conn()?, "BEGIN").map_err(db(ctx))?;
        let Some((mut env, ours)) = Self::lock_row(&mut tx, id, &self.me, ctx)? else {
            return Ok(Modified::Gone);
        };
        if claimed && !ours {
            return Err(QueueError::ClaimLost(id.to_string()));
        }
        let before = env.clone();
        f(&mut env);
        let done = if finish && env.is_complete() {
            tx.execute_typed(
                "DELETE FROM queue_entries WHERE id = $1",
                &[(&id, Type::TEXT)],
            )
            .map_err(db(ctx))?;
            Modified::Finished
        } else {
            if env != before {
                self.write_env(&mut tx, &env, ctx)?;
            }
            Modified::Kept
        };
        tx.commit().map_err(db(ctx))?;
        Ok(done)
    }

    fn remove(&self, id: &str) -> Result<bool, QueueError> {
        let mut conn = self.conn()?;
        let n = conn
            .execute_typed(
                "DELETE FROM queue_entries WHERE id = $1",
                &[(&id, Type::TEXT)],
            )
            .map_err(db("cannot remove a queue entry"))?;
        Ok(n > 0)
    }

    fn remove_if_complete(&self, id: &str) -> Result<bool, QueueError> {
        let ctx = "cannot remove a queue entry";
        let mut tx = Tx::begin(self.conn()?, "BEGIN").map_err(db(ctx))?;
        let Some((env, ours)) = Self::lock_row(&mut tx, id, &self.me, ctx)? else {
            return Ok(false);
        };
        if !ours {
            return Err(QueueError::ClaimLost(id.to_string()));
        }
        if !env.is_complete() {
            return Ok(false);
        }
        tx.execute_typed(
            "DELETE FROM queue_entries WHERE id = $1",
            &[(&id, Type::TEXT)],
        )
        .map_err(db(ctx))?;
        tx.commit().map_err(db(ctx))?;
        Ok(true)
    }

    fn claim_due(&self, now: u64, max: usize, _warn_after: u64) -> Result<Due, QueueError> {
        let ctx = "cannot claim due queue entries";
        let mut conn = self.conn()?;
        let now = secs(now);
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let mut claimed: Vec<(i64, String)> = Vec::new();
        if max > 0 {
            let rows = conn
                .query_typed(
                    "UPDATE queue_entries SET claimed_by = $1, \
                     claim_until = now() + make_interval(secs => $2::float8) \
                     WHERE id IN (SELECT id FROM queue_entries \
                         WHERE NOT held AND next_attempt <= to_timestamp($3::int8) \
                         AND (claimed_by IS NULL OR claim_until < now()) \
                         ORDER BY next_attempt LIMIT $4 FOR UPDATE SKIP LOCKED) \
                     RETURNING id, extract(epoch FROM next_attempt)::int8",
                    &[
                        (&self.me, Type::TEXT),
                        (&self.lease_secs(), Type::FLOAT8),
                        (&now, Type::INT8),
                        (&limit, Type::INT8),
                    ],
                )
                .map_err(db(ctx))?;
            claimed = rows.iter().map(|r| (r.get(1), r.get(0))).collect();
            claimed.sort();
        }
        let row = conn
            .query_typed_one(
                "SELECT count(*), \
                 coalesce(sum(rcpts_pending) FILTER (WHERE NOT held), 0)::int8, \
                 coalesce(sum(rcpts_pending) FILTER (WHERE held), 0)::int8, \
                 coalesce(sum(rcpts_delivered), 0)::int8, \
                 coalesce(sum(rcpts_failed), 0)::int8, \
                 extract(epoch FROM min(created_at))::int8, \
                 extract(epoch FROM min(next_attempt) FILTER (WHERE NOT held \
                     AND next_attempt > to_timestamp($1::int8) \
                     AND (claimed_by IS NULL OR claim_until < now())))::int8 \
                 FROM queue_entries",
                &[(&now, Type::INT8)],
            )
            .map_err(db(ctx))?;
        let sizes = QueueSizes {
            entries: row.get(0),
            pending: row.get(1),
            held: row.get(2),
            delivered: row.get(3),
            failed: row.get(4),
            oldest: row.get::<_, Option<i64>>(5).map(|t| t.max(0) as u64),
        };
        let next = row.get::<_, Option<i64>>(6).map(|t| t.max(0) as u64);
        Ok(Due {
            more: max == 0 || claimed.len() == max,
            ids: claimed.into_iter().map(|(_, id)| id).collect(),
            next,
            sizes,
        })
    }

    fn lease(&self) -> Option<Duration> {
        Some(self.lease)
    }

    fn renew(&self, ids: &[String]) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn()?;
        let rows = conn
            .query_typed(
                "UPDATE queue_entries SET claim_until = now() + make_interval(secs => $2::float8) \
                 WHERE claimed_by = $1 AND id = ANY($3) RETURNING id",
                &[
                    (&self.me, Type::TEXT),
                    (&self.lease_secs(), Type::FLOAT8),
                    (&ids, Type::TEXT_ARRAY),
                ],
            )
            .map_err(db("cannot renew claims of queue entries"))?;
        let kept: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok(ids
            .iter()
            .filter(|id| !kept.contains(*id))
            .cloned()
            .collect())
    }

    fn release_claim(&self, id: &str, hold_secs: u64) -> Result<(), QueueError> {
        let mut conn = self.conn()?;
        let ctx = "cannot release the claim of a queue entry";
        if hold_secs > 0 {
            // Still claimed (by us) until then: nobody takes it before.
            conn.execute_typed(
                "UPDATE queue_entries SET claim_until = now() + make_interval(secs => $3::float8) \
                 WHERE id = $1 AND claimed_by = $2",
                &[
                    (&id, Type::TEXT),
                    (&self.me, Type::TEXT),
                    (&(hold_secs as f64), Type::FLOAT8),
                ],
            )
            .map_err(db(ctx))?;
        } else {
            conn.execute_typed(
                "UPDATE queue_entries SET claimed_by = NULL, claim_until = NULL \
                 WHERE id = $1 AND claimed_by = $2",
                &[(&id, Type::TEXT), (&self.me, Type::TEXT)],
            )
            .map_err(db(ctx))?;
        }
        Ok(())
    }
}
