//! Small expiring marks every node sees (table `marks`: a key and when it
//! was set): greylisting's triplets and client networks, and the vacation
//! replies sent, so that with several nodes a retrying sender is not
//! greylisted once per node and a sender is not answered once per node.
//!
//! Every operation is one statement, atomic across nodes (an upsert whose
//! conflict arm decides under the row's lock). A mark older than the
//! lifetime its caller gives counts as absent; [`PgMarks::purge`] removes
//! such rows.

use std::time::Duration;

use tokio_postgres::types::Type;

use crate::schema::{Lazy, query};
use crate::{PgError, PgOptions};

/// What [`PgMarks::first_seen`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Set by this call (it was absent, or older than the lifetime).
    pub fresh: bool,
    /// Seconds since it was set (0 when fresh).
    pub age_secs: u64,
}

/// The `marks` table. `Send + Sync`.
pub struct PgMarks {
    place: String,
    conn: Lazy,
}

impl std::fmt::Debug for PgMarks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgMarks")
            .field("place", &self.place)
            .finish_non_exhaustive()
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl PgMarks {
    /// The marks in the database `options` names. Connects at the first
    /// call, not here.
    pub fn new(options: &PgOptions) -> PgMarks {
        PgMarks {
            place: options.describe(),
            conn: Lazy::new(options, None),
        }
    }

    /// Where the marks are (for messages; no password).
    pub fn place(&self) -> &str {
        &self.place
    }

    /// Sets `key` unless it was set within `lifetime`: whether this call
    /// set it (of several nodes asking at once, exactly one gets `true`).
    pub fn set_unless_recent(&self, key: &str, lifetime: Duration) -> Result<bool, PgError> {
        let lifetime = secs(lifetime);
        self.conn.with(
            |e| e,
            |c| {
                Ok(c.query_typed_opt(
                    "INSERT INTO marks (key, at) VALUES ($1, now()) \
                     ON CONFLICT (key) DO UPDATE SET at = now() \
                     WHERE marks.at <= now() - make_interval(secs => $2) \
                     RETURNING 1",
                    &[(&key, Type::TEXT), (&lifetime, Type::FLOAT8)],
                )
                .map_err(query("setting a mark"))?
                .is_some())
            },
        )
    }

    /// When `key` was first set within `lifetime`: sets it now when it is
    /// absent or older (then [`Mark::fresh`]).
    pub fn first_seen(&self, key: &str, lifetime: Duration) -> Result<Mark, PgError> {
        let lifetime = secs(lifetime);
        self.conn.with(
            |e| e,
            |c| {
                let row = c
                    .query_typed_one(
                        "INSERT INTO marks AS m (key, at) VALUES ($1, now()) \
                         ON CONFLICT (key) DO UPDATE SET at = CASE \
                             WHEN m.at <= now() - make_interval(secs => $2) THEN now() \
                             ELSE m.at END \
                         RETURNING m.at = now(), \
                             greatest(0, extract(epoch FROM now() - m.at))::int8",
                        &[(&key, Type::TEXT), (&lifetime, Type::FLOAT8)],
                    )
                    .map_err(query("reading a mark"))?;
                Ok(Mark {
                    fresh: row.get(0),
                    age_secs: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
                })
            },
        )
    }

    /// Whether `key` was set within `lifetime`.
    pub fn is_recent(&self, key: &str, lifetime: Duration) -> Result<bool, PgError> {
        let lifetime = secs(lifetime);
        self.conn.with(
            |e| e,
            |c| {
                Ok(c.query_typed_opt(
                    "SELECT 1 FROM marks WHERE key = $1 \
                     AND at > now() - make_interval(secs => $2)",
                    &[(&key, Type::TEXT), (&lifetime, Type::FLOAT8)],
                )
                .map_err(query("reading a mark"))?
                .is_some())
            },
        )
    }

    /// Sets `key` to now, and removes `remove` (one statement each, in one
    /// transaction).
    pub fn replace(&self, set: &str, remove: &str) -> Result<(), PgError> {
        self.conn.with(
            |e| e,
            |c| {
                c.batch_execute("BEGIN").map_err(query("setting a mark"))?;
                c.execute_typed(
                    "INSERT INTO marks (key, at) VALUES ($1, now()) \
                     ON CONFLICT (key) DO UPDATE SET at = now()",
                    &[(&set, Type::TEXT)],
                )
                .map_err(query("setting a mark"))?;
                c.execute_typed("DELETE FROM marks WHERE key = $1", &[(&remove, Type::TEXT)])
                    .map_err(query("removing a mark"))?;
                c.batch_execute("COMMIT").map_err(query("setting a mark"))?;
                Ok(())
            },
        )
    }

    /// Removes the marks whose key starts with `prefix` that are older
    /// than `lifetime`; how many.
    pub fn purge(&self, prefix: &str, lifetime: Duration) -> Result<u64, PgError> {
        let lifetime = secs(lifetime);
        self.conn.with(
            |e| e,
            |c| {
                c.execute_typed(
                    "DELETE FROM marks WHERE at <= now() - make_interval(secs => $2) \
                     AND starts_with(key, $1)",
                    &[(&prefix, Type::TEXT), (&lifetime, Type::FLOAT8)],
                )
                .map_err(query("removing old marks"))
            },
        )
    }
}
