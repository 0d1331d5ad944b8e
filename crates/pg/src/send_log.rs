//! The sending limits' counts in PostgreSQL (table `send_log`), so that a
//! user's `max_messages_per_hour` and `max_recipients_per_day` hold for
//! the user across every node, not once per node.
//!
//! A check and its record are one transaction that first takes a
//! transaction-level advisory lock on the address (released at COMMIT or
//! when the connection goes, never leaked into a pool): two nodes taking a
//! message of the same user at once are counted one after the other, so
//! neither lets the user past the limit. Rows older than a day are removed
//! by the next check of the same user.

use tokio_postgres::types::Type;

use crate::schema::{Lazy, One, query};
use crate::{PgError, PgOptions};

/// What [`PgSendLog::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendCheck {
    /// Within both limits: recorded.
    Admitted,
    /// The user sent `max_per_hour` messages in the last hour already.
    OverHour,
    /// The recipients would pass `max_rcpts_per_day` in the last day.
    OverDay,
}

/// The `send_log` table. `Send + Sync`.
pub struct PgSendLog {
    place: String,
    conn: Lazy,
}

impl std::fmt::Debug for PgSendLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSendLog")
            .field("place", &self.place)
            .finish_non_exhaustive()
    }
}

/// BEGIN, the user's lock and the removal of their rows older than a day.
fn begin_for(c: &mut One, address: &str) -> Result<(), PgError> {
    c.batch_execute("BEGIN")
        .map_err(query("starting a sending-limit check"))?;
    c.query_typed(
        "SELECT pg_advisory_xact_lock(hashtextextended('send_log ' || $1, 0))",
        &[(&address, Type::TEXT)],
    )
    .map_err(query("locking a user's sending counts"))?;
    c.execute_typed(
        "DELETE FROM send_log WHERE address = $1 AND at < now() - interval '1 day'",
        &[(&address, Type::TEXT)],
    )
    .map_err(query("removing old sending counts"))?;
    Ok(())
}

impl PgSendLog {
    /// The counts in the database `options` names. Connects at the first
    /// call, not here.
    pub fn new(options: &PgOptions) -> PgSendLog {
        PgSendLog {
            place: options.describe(),
            conn: Lazy::new(options, None),
        }
    }

    /// Where the counts are (for messages; no password).
    pub fn place(&self) -> &str {
        &self.place
    }

    /// Records a message of `address` (lower case) to `rcpts` recipients
    /// if it stays within both limits (0: no limit); otherwise records
    /// nothing and says which limit it would pass.
    pub fn admit(
        &self,
        address: &str,
        rcpts: u32,
        max_per_hour: u32,
        max_rcpts_per_day: u32,
    ) -> Result<SendCheck, PgError> {
        let rcpts = i32::try_from(rcpts).unwrap_or(i32::MAX);
        self.conn.with(
            |e| e,
            |c| {
                begin_for(c, address)?;
                let row = c
                    .query_typed_one(
                        "SELECT count(*) FILTER (WHERE at > now() - interval '1 hour'), \
                         coalesce(sum(rcpts), 0)::int8 \
                         FROM send_log WHERE address = $1 AND rcpts IS NOT NULL",
                        &[(&address, Type::TEXT)],
                    )
                    .map_err(query("reading a user's sending counts"))?;
                let (last_hour, last_day): (i64, i64) = (row.get(0), row.get(1));
                let check = if max_per_hour > 0 && last_hour >= i64::from(max_per_hour) {
                    SendCheck::OverHour
                } else if max_rcpts_per_day > 0
                    && last_day + i64::from(rcpts) > i64::from(max_rcpts_per_day)
                {
                    SendCheck::OverDay
                } else {
                    c.execute_typed(
                        "INSERT INTO send_log (address, rcpts) VALUES ($1, $2)",
                        &[(&address, Type::TEXT), (&rcpts, Type::INT4)],
                    )
                    .map_err(query("recording a message sent"))?;
                    SendCheck::Admitted
                };
                c.batch_execute("COMMIT")
                    .map_err(query("committing a sending-limit check"))?;
                Ok(check)
            },
        )
    }

    /// Records that `address` was refused for a limit; returns how often
    /// that happened within the last day (this time included).
    pub fn record_hit(&self, address: &str) -> Result<u32, PgError> {
        self.conn.with(
            |e| e,
            |c| {
                begin_for(c, address)?;
                c.execute_typed(
                    "INSERT INTO send_log (address, rcpts) VALUES ($1, NULL)",
                    &[(&address, Type::TEXT)],
                )
                .map_err(query("recording a sending-limit hit"))?;
                let hits: i64 = c
                    .query_typed_one(
                        "SELECT count(*) FROM send_log WHERE address = $1 AND rcpts IS NULL",
                        &[(&address, Type::TEXT)],
                    )
                    .map_err(query("counting sending-limit hits"))?
                    .get(0);
                c.batch_execute("COMMIT")
                    .map_err(query("committing a sending-limit hit"))?;
                Ok(u32::try_from(hits).unwrap_or(u32::MAX))
            },
        )
    }
}
