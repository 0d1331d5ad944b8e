//! The schema and its migrations.
//!
//! `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`; the
//! version lives in `postoffice_schema`. [`migrate`] applies what is
//! missing in one transaction that first takes an advisory transaction
//! lock, so two processes migrating at once run one after the other (the
//! second finds nothing to do), and a migration that fails leaves the old
//! schema untouched.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use tokio_postgres::types::Type;

use crate::conn::{Conn, DbError, Runtime};

use crate::{PgError, PgOptions};

/// The schema version this build works with.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The key of the advisory lock migrations take ("postoff" in ASCII).
const MIGRATION_LOCK: i64 = 0x0070_6f73_746f_6666;

/// One SQL script per version step.
const MIGRATIONS: [&str; 6] = [
    // 1: mail storage.
    r#"
CREATE TABLE postoffice_schema (
    version integer NOT NULL,
    -- New UIDs are <uid_prefix>.<message id>: drawn once per database, so
    -- the UIDs of two databases (before and after a migration) differ.
    uid_prefix text NOT NULL
);
INSERT INTO postoffice_schema (version, uid_prefix)
    VALUES (0, 'p' || substr(md5(random()::text || clock_timestamp()::text), 1, 8));

CREATE TABLE mailboxes (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    -- The session lease: who holds the maildrop, and until when.
    lock_owner text,
    lock_until timestamptz,
    -- The maildrop (not the quarantine), kept by every insert and delete.
    messages bigint NOT NULL DEFAULT 0,
    bytes bigint NOT NULL DEFAULT 0
);

CREATE TABLE messages (
    id bigserial PRIMARY KEY,
    mailbox_id bigint NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    uid text NOT NULL,
    -- Octets with CRLF line ends: what POP3 reports and RETR sends.
    size bigint NOT NULL,
    received timestamptz NOT NULL,
    retrieved timestamptz,
    quarantined boolean NOT NULL DEFAULT false,
    UNIQUE (mailbox_id, uid)
);
-- A login's listing, in order, from the index alone.
CREATE INDEX messages_listing ON messages (mailbox_id, quarantined, received, id)
    INCLUDE (uid, size);

CREATE TABLE message_chunks (
    message_id bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (message_id, seq)
);

CREATE TABLE mailbox_state (
    mailbox_id bigint NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    key text NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (mailbox_id, key)
);
"#,
    // 2: the directory of domains, users and aliases, shared by every node
    // (the TOML document of directory.toml, one row, versioned).
    r#"
CREATE TABLE directory_document (
    id integer PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL,
    body text NOT NULL
);
"#,
    // 3: the outbound queue shared by every node (postoffice-queue's
    // pg_spool module): an entry's envelope (the file spool's TOML) with
    // columns derived from it for the scheduler's queries, its claim, and
    // its body in chunks.
    r#"
CREATE TABLE queue_entries (
    id text PRIMARY KEY,
    envelope text NOT NULL,
    next_attempt timestamptz,
    held boolean NOT NULL DEFAULT false,
    claimed_by text,
    claim_until timestamptz,
    created_at timestamptz NOT NULL,
    size bigint NOT NULL DEFAULT 0,
    rcpts_pending integer NOT NULL DEFAULT 0,
    rcpts_delivered integer NOT NULL DEFAULT 0,
    rcpts_failed integer NOT NULL DEFAULT 0
);
CREATE INDEX queue_entries_due ON queue_entries (next_attempt) WHERE NOT held;
CREATE TABLE queue_bodies (
    id text NOT NULL REFERENCES queue_entries (id) ON DELETE CASCADE,
    seq integer NOT NULL,
    chunk bytea NOT NULL,
    PRIMARY KEY (id, seq)
);
"#,
    // 4: the node secrets every node must share (the SRS secret, the DKIM
    // private keys), so no node keeps a copy of its own.
    r#"
CREATE TABLE node_keys (
    name text PRIMARY KEY,
    value bytea NOT NULL,
    created timestamptz NOT NULL DEFAULT now()
);
"#,
    // 5: what each user submitted and when they hit a sending limit, over
    // the last day, counted across every node (a user's limits are theirs,
    // not each node's).
    r#"
CREATE TABLE send_log (
    address text NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    -- Recipients of a message; NULL for a refusal (a limit hit).
    rcpts integer
);
CREATE INDEX send_log_address ON send_log (address, at);
"#,
    // 6: small expiring marks every node must see: greylisting's triplets
    // and client networks, the vacation replies sent (who was answered
    // when).
    r#"
CREATE TABLE marks (
    key text PRIMARY KEY,
    at timestamptz NOT NULL
);
CREATE INDEX marks_at ON marks (at);
"#,
];

/// What [`migrate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    /// The version before (0: there was no schema).
    pub from: i32,
    /// The version now ([`SCHEMA_VERSION`]).
    pub to: i32,
}

/// One connection outside the pool (migrations and version checks), with
/// the runtime that drives it.
pub(crate) struct One {
    conn: Conn,
    _runtime: Runtime,
}

impl Deref for One {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl DerefMut for One {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

/// Connects outside the pool; every answer may take up to `limit`.
pub(crate) fn connect_one(opts: &PgOptions, limit: Duration) -> Result<One, PgError> {
    let connect_error = |reason: String| PgError::Connect {
        target: opts.describe(),
        reason,
    };
    let runtime = Runtime::new()
        .map_err(|e| connect_error(format!("cannot start the database client's thread: {e}")))?;
    let conn = Conn::connect(&opts.target()?, &runtime.handle(), limit)
        .map_err(|e| connect_error(e.to_string()))?;
    Ok(One {
        conn,
        _runtime: runtime,
    })
}

/// One connection outside the pool, made at first use and made again after
/// a failure (the keys, the directory and the sending counts each keep one:
/// small, rare queries that should not wait behind mail in the pool).
pub(crate) struct Lazy {
    options: PgOptions,
    conn: std::sync::Mutex<Option<One>>,
}

impl Lazy {
    /// Connects at the first [`Lazy::with`], or now with `first`.
    pub(crate) fn new(options: &PgOptions, first: Option<One>) -> Lazy {
        Lazy {
            options: options.clone(),
            conn: std::sync::Mutex::new(first),
        }
    }

    /// Runs `f` on the connection (made again if there is none, a failure
    /// to connect mapped by `connect_error`); a connection that fails is
    /// dropped, so the next call reconnects (and nothing of a transaction
    /// `f` left open survives it).
    pub(crate) fn with<T, E>(
        &self,
        connect_error: impl FnOnce(PgError) -> E,
        f: impl FnOnce(&mut One) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut slot = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let client = match slot.take() {
            Some(c) if !c.is_closed() => slot.insert(c),
            _ => slot.insert(
                connect_one(&self.options, self.options.answer_limit()).map_err(connect_error)?,
            ),
        };
        let result = f(client);
        if result.is_err() {
            *slot = None;
        }
        result
    }
}

/// Maps a failed statement to [`PgError::Query`] with what it was doing.
pub(crate) fn query(context: &str) -> impl FnOnce(DbError) -> PgError + '_ {
    move |source| PgError::Query {
        context: context.to_owned(),
        source: Box::new(source),
    }
}

/// The schema version of the database `client` is connected to (0: none).
pub(crate) fn version_of(client: &mut Conn) -> Result<i32, PgError> {
    // to_regclass follows search_path, as every unqualified name here does.
    let row = client
        .query_typed_one("SELECT to_regclass('postoffice_schema') IS NOT NULL", &[])
        .map_err(query("looking for the postoffice schema"))?;
    if !row.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = client
        .query_typed_opt("SELECT version FROM postoffice_schema", &[])
        .map_err(query("reading the schema version"))?;
    Ok(row.map_or(0, |r| r.get(0)))
}

/// Checks that the database `client` is connected to has this build's
/// schema: older (or none) is [`PgError::SchemaTooOld`], naming `postoffice
/// db migrate`; newer is [`PgError::SchemaTooNew`].
pub(crate) fn require_current(client: &mut Conn) -> Result<(), PgError> {
    let found = version_of(client)?;
    if found < SCHEMA_VERSION {
        return Err(PgError::SchemaTooOld {
            found,
            expected: SCHEMA_VERSION,
        });
    }
    if found > SCHEMA_VERSION {
        return Err(PgError::SchemaTooNew {
            found,
            expected: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// The schema version of the database (0 when it has no schema).
pub fn schema_version(opts: &PgOptions) -> Result<i32, PgError> {
    version_of(&mut *connect_one(opts, opts.answer_limit())?)
}

/// Creates the schema or upgrades it to [`SCHEMA_VERSION`]. Idempotent,
/// and safe when several processes run it at once. Refuses (changing
/// nothing) a schema newer than this build knows.
pub fn migrate(opts: &PgOptions) -> Result<Migrated, PgError> {
    // A migration may wait for another one, and may outlast the
    // statement timeout of normal work.
    let mut tx = connect_one(opts, Duration::from_secs(3600))?;
    tx.batch_execute("SET statement_timeout = 0; BEGIN")
        .map_err(query("starting the migration"))?;
    // Returning early drops the connection, which rolls the transaction
    // back.
    tx.query_typed(
        "SELECT pg_advisory_xact_lock($1)",
        &[(&MIGRATION_LOCK, Type::INT8)],
    )
    .map_err(query("waiting for other migrations to finish"))?;
    let exists: bool = tx
        .query_typed_one("SELECT to_regclass('postoffice_schema') IS NOT NULL", &[])
        .map_err(query("looking for the postoffice schema"))?
        .get(0);
    let from: i32 = if exists {
        tx.query_typed_opt("SELECT version FROM postoffice_schema", &[])
            .map_err(query("reading the schema version"))?
            .map_or(0, |r| r.get(0))
    } else {
        0
    };
    if from > SCHEMA_VERSION {
        return Err(PgError::SchemaTooNew {
            found: from,
            expected: SCHEMA_VERSION,
        });
    }
    for (step, script) in MIGRATIONS.iter().enumerate().skip(from.max(0) as usize) {
        let to = step as i32 + 1;
        tx.batch_execute(script).map_err(|source| PgError::Query {
            context: format!("migrating the schema to version {to}"),
            source: Box::new(source),
        })?;
        tx.query_typed(
            "UPDATE postoffice_schema SET version = $1",
            &[(&to, Type::INT4)],
        )
        .map_err(query("recording the schema version"))?;
        tracing::info!(version = to, "database schema migrated");
    }
    tx.batch_execute("COMMIT")
        .map_err(query("committing the migration"))?;
    Ok(Migrated {
        from,
        to: SCHEMA_VERSION,
    })
}
