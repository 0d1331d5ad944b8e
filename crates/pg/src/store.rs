//! [`PgStore`]: the pool, the schema check, and [`MailStore`] on the
//! tables of [`crate::schema`].

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use postoffice_store::{
    Delivered, ExpireReport, Imported, Limit, MailStore, Maildrop, MessageInfo, StoreError, Uid,
    Usage, canonical_mailbox, check_state_key,
};
use tokio_postgres::types::Type;

use crate::conn::{Conn, DbError, Manager, Runtime};
use crate::deliver::{Kind, deliver};
use crate::error::{backend, is_read_only, pool as checkout};
use crate::lease::{self, PgDrop};
use crate::read::{ChunkReader, fetch_chunk};
use crate::schema::{SCHEMA_VERSION, require_current};
use crate::{PgError, PgOptions};

/// A pool of [`Conn`]s to one database, as [`pool`] builds it.
pub type Pool = r2d2::Pool<Manager>;

/// Builds the pool of connections to the database of `opts` (without
/// connecting yet: the first checkout connects): at most
/// `opts.pool_size` connections, a checkout waits at most
/// `opts.connect_timeout`, every answer at most the answer limit. The
/// pool owns the runtime that drives its connections.
pub fn pool(opts: &PgOptions) -> Result<Pool, PgError> {
    let target = opts.target()?;
    let runtime = Runtime::new().map_err(|e| PgError::Connect {
        target: opts.describe(),
        reason: format!("cannot start the database client's thread: {e}"),
    })?;
    let manager = Manager {
        target,
        rt: runtime.handle(),
        limit: opts.answer_limit(),
        _runtime: runtime,
    };
    Ok(r2d2::Pool::builder()
        .max_size(opts.pool_size.max(1))
        .min_idle(Some(opts.pool_size.clamp(1, 2)))
        .connection_timeout(opts.connect_timeout.max(Duration::from_millis(1)))
        // A validity query per checkout would double the round trips;
        // a connection found closed is replaced by `Shared::run`.
        .test_on_check_out(false)
        .build_unchecked(manager))
}

/// A connection from `pool` that was not found closed: one that closed
/// while pooled (the server restarted or failed over since it was last
/// used; every pooled connection may be such) is dropped, and the pool
/// discards it. Nothing has been sent on what this returns, so a caller
/// may use it for a statement that must not run twice.
pub fn take(pool: &Pool) -> Result<r2d2::PooledConnection<Manager>, r2d2::Error> {
    for _ in 0..pool.max_size() {
        let conn = pool.get()?;
        if !conn.is_closed() {
            return Ok(conn);
        }
        tracing::debug!("database connection closed while pooled; taking another");
    }
    pool.get()
}

/// Checks that the database of `pool` has the schema this build needs
/// ([`SCHEMA_VERSION`]); otherwise [`PgError::SchemaTooOld`] (naming
/// `postoffice db migrate`) or [`PgError::SchemaTooNew`]. For users of
/// [`pool`] other than [`PgStore`] (which checks by itself).
pub fn check_schema(pool: &Pool) -> Result<(), PgError> {
    let mut conn = pool.get().map_err(|e| PgError::Connect {
        target: "the database".into(),
        reason: e.to_string(),
    })?;
    require_current(&mut conn)
}

/// What the store, its sessions and its lease renewer share.
pub(crate) struct Shared {
    /// Owns the runtime that drives its connections.
    pub(crate) pool: Pool,
    /// `<node>/<random>`: this process's part of every lease owner.
    pub(crate) owner: String,
    /// The lease length in seconds (for `make_interval`).
    pub(crate) lease_secs: f64,
    pub(crate) lease: Duration,
    /// The leases this store holds: owner token → mailbox id.
    pub(crate) held: Mutex<HashMap<String, i64>>,
    /// Numbers the sessions' owner tokens.
    next_session: AtomicU64,
    /// Work for the background thread (see [`background`]).
    control: Mutex<Control>,
    wake: Condvar,
}

impl Shared {
    /// Runs `f` on a pooled connection (every answer within the answer
    /// limit), replacing connections that cannot serve: one found closed
    /// before `f` is sent on it (the server restarted or failed over since
    /// it was last used: every pooled connection may be such), one that
    /// closes while `f` runs, and one to a server that has become read-only
    /// (a demoted primary: the connection is ended so that the pool
    /// reconnects, and with `target_session_attrs=read-write` finds the new
    /// primary). `f` is then tried again on another connection, so `f` must
    /// be a statement whose repetition does no harm; a statement that must
    /// not run twice uses [`Shared::run_unrepeated`].
    pub(crate) fn run<T>(
        &self,
        context: impl Fn() -> String,
        f: impl FnMut(&mut Conn) -> Result<T, DbError>,
    ) -> Result<T, StoreError> {
        self.run_with(context, true, f)
    }

    /// [`Shared::run`] for a statement that must not be repeated once it
    /// may have reached the server (a delivery: if the server commits it and
    /// dies before answering, a second try would store a second copy). It is
    /// tried again only where it surely did nothing: on a connection found
    /// closed before sending, or refused by a read-only server. A connection
    /// that closes while it runs gives an error (SMTP answers 4xx, and the
    /// sender's retry is the usual at-least-once of SMTP).
    pub(crate) fn run_unrepeated<T>(
        &self,
        context: impl Fn() -> String,
        f: impl FnMut(&mut Conn) -> Result<T, DbError>,
    ) -> Result<T, StoreError> {
        self.run_with(context, false, f)
    }

    fn run_with<T>(
        &self,
        context: impl Fn() -> String,
        repeatable: bool,
        mut f: impl FnMut(&mut Conn) -> Result<T, DbError>,
    ) -> Result<T, StoreError> {
        let attempts = self.pool.max_size() + 1;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut conn = take(&self.pool).map_err(checkout(context()))?;
            match f(&mut conn) {
                // Not after a timeout: the next connection would most
                // likely wait just as long.
                Err(e)
                    if attempt < attempts
                        && !matches!(e, DbError::Timeout(_))
                        && ((repeatable && conn.is_closed()) || is_read_only(&e)) =>
                {
                    tracing::debug!(error = %e, "database connection unusable; retrying on another");
                    if !conn.is_closed() {
                        // Ends this session on the server: the pool then
                        // drops the connection instead of handing it out.
                        let _ = conn.batch_execute("SELECT pg_terminate_backend(pg_backend_pid())");
                    }
                }
                other => return other.map_err(backend(context())),
            }
        }
    }

    /// A fresh owner token for one session's lease.
    pub(crate) fn token(&self) -> String {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        format!("{}#{n}", self.owner)
    }

    pub(crate) fn hold(&self, token: &str, mailbox_id: i64) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.to_owned(), mailbox_id);
    }

    pub(crate) fn unhold(&self, token: &str) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(token);
    }
}

/// Mail storage in PostgreSQL (see the crate documentation).
///
/// Many threads share one `PgStore`; each operation takes a connection
/// from the pool for its statements only. A background thread renews the
/// leases of the maildrops this store's sessions hold; it stops when the
/// store is dropped.
pub struct PgStore {
    shared: Arc<Shared>,
    uid_prefix: String,
    location: String,
    renewer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.location)
            .field("owner", &self.shared.owner)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Builds the pool, checks the schema version equals
    /// [`SCHEMA_VERSION`] (older or absent: [`PgError::SchemaTooOld`],
    /// naming `postoffice db migrate`; newer: [`PgError::SchemaTooNew`]),
    /// and starts the lease renewer. `node` names this node in lease
    /// owners (e.g. the host name); a random suffix is added per process.
    pub fn connect(opts: &PgOptions, node: &str) -> Result<PgStore, PgError> {
        let target = opts.describe();
        let pool = pool(opts)?;
        let uid_prefix = {
            let mut conn = pool.get().map_err(|e| PgError::Connect {
                target: target.clone(),
                reason: e.to_string(),
            })?;
            require_current(&mut conn)?;
            let prefix: String = conn
                .query_typed_one("SELECT uid_prefix FROM postoffice_schema", &[])
                .map_err(|source| PgError::Query {
                    context: "reading the UID prefix".into(),
                    source: Box::new(source),
                })?
                .get(0);
            prefix
        };
        let node: String = node
            .chars()
            .filter(|c| c.is_ascii_graphic() && *c != '#')
            .take(64)
            .collect();
        let shared = Arc::new(Shared {
            pool,
            owner: format!("{node}/{:08x}", rand::random::<u32>()),
            lease_secs: opts.lease.as_secs_f64().max(0.001),
            lease: opts.lease,
            held: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(0),
            control: Mutex::new(Control::default()),
            wake: Condvar::new(),
        });
        let renewer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("pg-leases".into())
                .spawn(move || background(&shared))
                .map_err(|e| PgError::Connect {
                    target: target.clone(),
                    reason: format!("cannot start the lease renewer thread: {e}"),
                })?
        };
        tracing::debug!(%target, version = SCHEMA_VERSION, owner = %shared.owner, "PostgreSQL store ready");
        Ok(PgStore {
            shared,
            uid_prefix,
            location: target,
            renewer: Some(renewer),
        })
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn uid_prefix(&self) -> &str {
        &self.uid_prefix
    }

    /// The id of `mailbox` (canonical), `None` when it has no row.
    fn mailbox_id(&self, mailbox: &str) -> Result<Option<i64>, StoreError> {
        self.shared.run(
            || format!("looking up mailbox {mailbox}"),
            |c| {
                Ok(c.query_typed_opt(
                    "SELECT id FROM mailboxes WHERE name = $1",
                    &[(&mailbox, Type::TEXT)],
                )?
                .map(|r| r.get(0)))
            },
        )
    }

    /// A quarantined message's id, size and first chunk.
    fn quarantined(&self, mailbox: &str, uid: &str) -> Result<(i64, u64, Vec<u8>), StoreError> {
        let mailbox = canonical_mailbox(mailbox)?;
        let row = self.shared.run(
            || format!("reading quarantined message {uid:?} of {mailbox}"),
            |c| {
                c.query_typed_opt(
                    "SELECT m.id, m.size, c.data FROM messages m \
                     JOIN mailboxes b ON b.id = m.mailbox_id \
                     LEFT JOIN message_chunks c ON c.message_id = m.id AND c.seq = 0 \
                     WHERE b.name = $1 AND m.uid = $2 AND m.quarantined",
                    &[(&mailbox, Type::TEXT), (&uid, Type::TEXT)],
                )
            },
        )?;
        let row = row.ok_or_else(|| StoreError::NoSuchUid(uid.to_owned()))?;
        let data: Option<Vec<u8>> = row.get(2);
        let size: i64 = row.get(1);
        Ok((row.get(0), size.max(0) as u64, data.unwrap_or_default()))
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.shared
            .control
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
    }
}

/// What the background thread is asked to do besides renewing.
#[derive(Debug, Default)]
pub(crate) struct Control {
    /// The store was dropped: release what is queued, then end.
    stop: bool,
    /// Leases to give back.
    releases: Vec<Release>,
}

/// A lease to give back.
#[derive(Debug)]
pub(crate) struct Release {
    pub(crate) mailbox: String,
    pub(crate) token: String,
    /// After this the lease has expired anyway: stop trying.
    pub(crate) until: Instant,
}

impl Shared {
    /// Has the background thread give the lease `token` on `mailbox` back:
    /// for a session that ends on a thread that must not block (an async
    /// task), and for a lease whose taking failed in a way that may have
    /// taken it after all (no answer: the statement may still run). Tried
    /// again every second while the database does not answer.
    pub(crate) fn queue_release(&self, mailbox: String, token: String) {
        self.control
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .releases
            .push(Release {
                mailbox,
                token,
                until: Instant::now() + self.lease,
            });
        self.wake.notify_all();
    }
}

/// How often failed releases are tried again.
const RELEASE_RETRY: Duration = Duration::from_secs(1);

/// The store's background thread: gives back the leases queued by
/// [`Shared::queue_release`] as soon as they come (retrying those that
/// fail), and renews every lease in `shared.held` every lease/3 with one
/// statement, until the store is dropped.
fn background(shared: &Shared) {
    let period = (shared.lease / 3).max(Duration::from_millis(50));
    let mut next_renew = Instant::now() + period;
    let mut failed: Vec<Release> = Vec::new();
    let mut next_retry = Instant::now();
    let mut control = shared
        .control
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    loop {
        let mut releases = std::mem::take(&mut control.releases);
        let stop = control.stop;
        let now = Instant::now();
        let retry_due = !failed.is_empty() && now >= next_retry;
        if releases.is_empty() && !stop && !retry_due && now < next_renew {
            let wake_at = if failed.is_empty() {
                next_renew
            } else {
                next_renew.min(next_retry)
            };
            control = shared
                .wake
                .wait_timeout(control, wake_at - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        drop(control);
        if retry_due || stop {
            releases.append(&mut failed);
        }
        for r in releases {
            if !lease::release(shared, &r.mailbox, &r.token) && !stop && Instant::now() < r.until {
                failed.push(r);
            }
        }
        next_retry = Instant::now() + RELEASE_RETRY;
        if stop {
            return;
        }
        if Instant::now() >= next_renew {
            lease::renew(shared);
            next_renew = Instant::now() + period;
        }
        control = shared
            .control
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
    }
}

/// Converts a database timestamp count to `u64` (sizes and counters are
/// never negative).
fn unsigned(v: i64) -> u64 {
    v.max(0) as u64
}

impl MailStore for PgStore {
    fn deliver(&self, mailbox: &str, message: &mut dyn Read) -> Result<Delivered, StoreError> {
        self.deliver_within(mailbox, message, Limit::default())
    }

    /// The quota is checked in the delivery's own statement (or, for a
    /// message of several chunks, its transaction) under the mailbox row's
    /// lock: two nodes delivering at once cannot overshoot it.
    fn deliver_within(
        &self,
        mailbox: &str,
        message: &mut dyn Read,
        limit: Limit,
    ) -> Result<Delivered, StoreError> {
        deliver(
            self,
            &canonical_mailbox(mailbox)?,
            Kind::Maildrop(limit),
            message,
        )
    }

    fn deliver_quarantine(
        &self,
        mailbox: &str,
        message: &mut dyn Read,
    ) -> Result<Delivered, StoreError> {
        deliver(
            self,
            &canonical_mailbox(mailbox)?,
            Kind::Quarantine,
            message,
        )
    }

    fn import(
        &self,
        mailbox: &str,
        imported: &Imported<'_>,
        message: &mut dyn Read,
    ) -> Result<Delivered, StoreError> {
        postoffice_store::check_uid(imported.uid)?;
        deliver(
            self,
            &canonical_mailbox(mailbox)?,
            Kind::Imported(imported),
            message,
        )
    }

    fn import_quarantine(
        &self,
        mailbox: &str,
        imported: &Imported<'_>,
        message: &mut dyn Read,
    ) -> Result<Delivered, StoreError> {
        postoffice_store::check_uid(imported.uid)?;
        deliver(
            self,
            &canonical_mailbox(mailbox)?,
            Kind::ImportedQuarantine(imported),
            message,
        )
    }

    fn uids(&self, mailbox: &str) -> Result<Vec<Uid>, StoreError> {
        let mailbox = canonical_mailbox(mailbox)?;
        let rows = self.shared.run(
            || format!("listing the UIDs of {mailbox}"),
            |c| {
                c.query_typed(
                    "SELECT m.uid FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id \
                     WHERE b.name = $1 AND NOT m.quarantined",
                    &[(&mailbox, Type::TEXT)],
                )
            },
        )?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0).into()).collect())
    }

    fn state_keys(&self, mailbox: &str) -> Result<Vec<String>, StoreError> {
        let mailbox = canonical_mailbox(mailbox)?;
        let rows = self.shared.run(
            || format!("listing the state of {mailbox}"),
            |c| {
                c.query_typed(
                    "SELECT s.key FROM mailbox_state s JOIN mailboxes b ON b.id = s.mailbox_id \
                     WHERE b.name = $1 ORDER BY s.key",
                    &[(&mailbox, Type::TEXT)],
                )
            },
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn open(&self, mailbox: &str) -> Result<Box<dyn Maildrop>, StoreError> {
        let mailbox = canonical_mailbox(mailbox)?;
        match PgDrop::open(&self.shared, &mailbox, true)? {
            Some(drop) => Ok(Box::new(drop)),
            None => Err(StoreError::Locked),
        }
    }

    fn expire(
        &self,
        mailbox: &str,
        cutoff: SystemTime,
        dry_run: bool,
    ) -> Result<ExpireReport, StoreError> {
        let mailbox = canonical_mailbox(mailbox)?;
        let Some(drop) = PgDrop::open(&self.shared, &mailbox, false)? else {
            return match self.mailbox_id(&mailbox)? {
                Some(_) => Err(StoreError::Locked),
                None => Ok(ExpireReport::default()),
            };
        };
        drop.expire(cutoff, dry_run)
    }

    fn usage(&self, mailbox: &str) -> Result<Usage, StoreError> {
        let mailbox = canonical_mailbox(mailbox)?;
        let row = self.shared.run(
            || format!("reading the usage of {mailbox}"),
            |c| {
                c.query_typed_opt(
                    "SELECT messages, bytes FROM mailboxes WHERE name = $1",
                    &[(&mailbox, Type::TEXT)],
                )
            },
        )?;
        Ok(row.map_or_else(Usage::default, |r| Usage {
            messages: unsigned(r.get(0)),
            bytes: unsigned(r.get(1)),
        }))
    }

    fn discard(&self, mailbox: &str, delivered: &Delivered) -> Result<(), StoreError> {
        let mailbox = canonical_mailbox(mailbox)?;
        let uid = delivered.uid.as_str();
        self.shared.run(
            || format!("taking back message {uid:?} of {mailbox}"),
            |c| {
                c.execute_typed(
                    "WITH del AS ( \
                         DELETE FROM messages m USING mailboxes b \
                         WHERE b.name = $1 AND m.mailbox_id = b.id AND m.uid = $2 \
                         RETURNING m.mailbox_id, m.size, m.quarantined) \
                     UPDATE mailboxes b SET messages = b.messages - 1, bytes = b.bytes - del.size \
                     FROM del WHERE b.id = del.mailbox_id AND NOT del.quarantined",
                    &[(&mailbox, Type::TEXT), (&uid, Type::TEXT)],
                )
            },
        )?;
        Ok(())
    }

    fn quarantine_list(&self, mailbox: &str) -> Result<Vec<MessageInfo>, StoreError> {
        let mailbox = canonical_mailbox(mailbox)?;
        let rows = self.shared.run(
            || format!("listing the quarantine of {mailbox}"),
            |c| {
                c.query_typed(
                    "SELECT m.uid, m.size, m.received FROM messages m \
                     JOIN mailboxes b ON b.id = m.mailbox_id \
                     WHERE b.name = $1 AND m.quarantined ORDER BY m.received, m.id",
                    &[(&mailbox, Type::TEXT)],
                )
            },
        )?;
        Ok(rows
            .iter()
            .map(|r| MessageInfo {
                uid: r.get::<_, String>(0).into(),
                size: unsigned(r.get(1)),
                received: r.get(2),
            })
            .collect())
    }

    fn quarantine_read(
        &self,
        mailbox: &str,
        uid: &str,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        let (id, size, first) = self.quarantined(mailbox, uid)?;
        Ok(Box::new(ChunkReader::new(
            Arc::clone(&self.shared),
            id,
            size,
            first,
        )))
    }

    fn quarantine_release(&self, mailbox: &str, uid: &str) -> Result<(), StoreError> {
        let mailbox = canonical_mailbox(mailbox)?;
        let released = self.shared.run(
            || format!("releasing quarantined message {uid:?} of {mailbox}"),
            |c| {
                c.execute_typed(
                    "WITH r AS ( \
                         UPDATE messages m SET quarantined = false FROM mailboxes b \
                         WHERE b.name = $1 AND m.mailbox_id = b.id AND m.uid = $2 AND m.quarantined \
                         RETURNING m.mailbox_id, m.size) \
                     UPDATE mailboxes b SET messages = b.messages + 1, bytes = b.bytes + r.size \
                     FROM r WHERE b.id = r.mailbox_id",
                    &[(&mailbox, Type::TEXT), (&uid, Type::TEXT)],
                )
            },
        )?;
        if released == 0 {
            return Err(StoreError::NoSuchUid(uid.to_owned()));
        }
        Ok(())
    }

    fn quarantine_delete(&self, mailbox: &str, uid: &str) -> Result<(), StoreError> {
        let mailbox = canonical_mailbox(mailbox)?;
        let deleted = self.shared.run(
            || format!("deleting quarantined message {uid:?} of {mailbox}"),
            |c| {
                c.execute_typed(
                    "DELETE FROM messages m USING mailboxes b \
                     WHERE b.name = $1 AND m.mailbox_id = b.id AND m.uid = $2 AND m.quarantined",
                    &[(&mailbox, Type::TEXT), (&uid, Type::TEXT)],
                )
            },
        )?;
        if deleted == 0 {
            return Err(StoreError::NoSuchUid(uid.to_owned()));
        }
        Ok(())
    }

    fn mailboxes(&self) -> Result<Vec<String>, StoreError> {
        let rows = self.shared.run(
            || "listing the mailboxes".to_owned(),
            |c| {
                c.query_typed(
                    "SELECT name FROM mailboxes ORDER BY name COLLATE \"C\"",
                    &[],
                )
            },
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn cleanup(&self, mailbox: &str, _max_age: Duration) -> Result<usize, StoreError> {
        // A delivery is one transaction: an interrupted one leaves nothing.
        canonical_mailbox(mailbox)?;
        Ok(0)
    }

    fn location(&self, mailbox: &str) -> Result<String, StoreError> {
        let mailbox = canonical_mailbox(mailbox)?;
        Ok(format!("{}, mailbox {mailbox}", self.location))
    }

    fn contains(&self, mailbox: &str, uid: &str) -> Result<bool, StoreError> {
        let mailbox = canonical_mailbox(mailbox)?;
        self.shared.run(
            || format!("looking for message {uid:?} in {mailbox}"),
            |c| {
                Ok(c.query_typed_opt(
                    "SELECT 1 FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id \
                     WHERE b.name = $1 AND m.uid = $2 AND NOT m.quarantined",
                    &[(&mailbox, Type::TEXT), (&uid, Type::TEXT)],
                )?
                .is_some())
            },
        )
    }

    fn state_get(&self, mailbox: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mailbox = canonical_mailbox(mailbox)?;
        check_state_key(key)?;
        self.shared.run(
            || format!("reading state {key} of {mailbox}"),
            |c| {
                Ok(c.query_typed_opt(
                    "SELECT s.value FROM mailbox_state s JOIN mailboxes b ON b.id = s.mailbox_id \
                     WHERE b.name = $1 AND s.key = $2",
                    &[(&mailbox, Type::TEXT), (&key, Type::TEXT)],
                )?
                .map(|r| r.get(0)))
            },
        )
    }

    fn state_put(&self, mailbox: &str, key: &str, value: Option<&[u8]>) -> Result<(), StoreError> {
        let mailbox = canonical_mailbox(mailbox)?;
        check_state_key(key)?;
        self.shared.run(
            || format!("writing state {key} of {mailbox}"),
            |c| match value {
                Some(value) => c.execute_typed(
                    "WITH mb AS ( \
                         INSERT INTO mailboxes AS b (name) VALUES ($1) \
                         ON CONFLICT (name) DO UPDATE SET name = b.name RETURNING b.id) \
                     INSERT INTO mailbox_state (mailbox_id, key, value) SELECT id, $2, $3 FROM mb \
                     ON CONFLICT (mailbox_id, key) DO UPDATE SET value = EXCLUDED.value",
                    &[
                        (&mailbox, Type::TEXT),
                        (&key, Type::TEXT),
                        (&value, Type::BYTEA),
                    ],
                ),
                None => c.execute_typed(
                    "DELETE FROM mailbox_state s USING mailboxes b \
                     WHERE b.name = $1 AND s.mailbox_id = b.id AND s.key = $2",
                    &[(&mailbox, Type::TEXT), (&key, Type::TEXT)],
                ),
            },
        )?;
        Ok(())
    }

    fn state_claim(&self, mailbox: &str, key: &str) -> Result<bool, StoreError> {
        let mailbox = canonical_mailbox(mailbox)?;
        check_state_key(key)?;
        let claimed = self.shared.run(
            || format!("claiming state {key} of {mailbox}"),
            |c| {
                c.execute_typed(
                    "WITH mb AS ( \
                         INSERT INTO mailboxes AS b (name) VALUES ($1) \
                         ON CONFLICT (name) DO UPDATE SET name = b.name RETURNING b.id) \
                     INSERT INTO mailbox_state (mailbox_id, key, value) SELECT id, $2, '' FROM mb \
                     ON CONFLICT (mailbox_id, key) DO NOTHING",
                    &[(&mailbox, Type::TEXT), (&key, Type::TEXT)],
                )
            },
        )?;
        Ok(claimed == 1)
    }

    fn remove_mailbox(&self, mailbox: &str) -> Result<(), StoreError> {
        let mailbox = canonical_mailbox(mailbox)?;
        // Messages, chunks and state go with the row (ON DELETE CASCADE).
        let removed = self.shared.run(
            || format!("removing mailbox {mailbox}"),
            |c| {
                c.execute_typed(
                    "DELETE FROM mailboxes WHERE name = $1 \
                     AND (lock_owner IS NULL OR lock_until < now())",
                    &[(&mailbox, Type::TEXT)],
                )
            },
        )?;
        if removed == 0 && self.mailbox_id(&mailbox)?.is_some() {
            return Err(StoreError::Locked);
        }
        Ok(())
    }
}

/// Reads the first chunk of a listed message for [`PgDrop`]:
/// [`StoreError::Vanished`] when it is gone.
pub(crate) fn open_listed(
    shared: &Arc<Shared>,
    index: usize,
    id: i64,
    info: &MessageInfo,
) -> Result<Box<dyn Read + Send>, StoreError> {
    let first = fetch_chunk(shared, id, 0)?.ok_or_else(|| StoreError::Vanished {
        index,
        uid: info.uid.to_string(),
    })?;
    Ok(Box::new(ChunkReader::new(
        Arc::clone(shared),
        id,
        info.size,
        first,
    )))
}
