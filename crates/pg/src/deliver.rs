//! Delivery: the message is CRLF-normalised as it is read (the store
//! crate's [`normalize_stream`], as on Maildir) and stored in chunks of
//! [`CHUNK`] octets, in one transaction.
//!
//! - A message shorter than one chunk (nearly all mail) is stored by one
//!   statement: mailbox row (created if missing, counters increased),
//!   message row, chunk. One round trip, durable when it returns.
//! - A longer one: the mailbox row is made sure of first (outside the
//!   transaction, so the row is not locked while the body streams in),
//!   then BEGIN, the message row, one INSERT per chunk as the chunks fill,
//!   the size and the counters, COMMIT: `chunks + 5` round trips, and at
//!   most about one chunk in memory.
//!
//! New UIDs are `<prefix>.<message id>` (see the crate documentation). If
//! one ever equals a UID imported earlier, the unique index refuses the row
//! and the delivery takes the next id.

use std::io::Read;
use std::time::SystemTime;

use tokio_postgres::types::Type;

use crate::conn::{Conn, DbError, Manager};
use postoffice_store::{Delivered, Imported, Limit, StoreError, normalize_stream};

use crate::error::{backend, is_unique_violation, pool};
use crate::store::PgStore;

/// Octets per `message_chunks` row.
pub(crate) const CHUNK: usize = 256 * 1024;

/// How often a generated UID may clash with an imported one before the
/// delivery gives up (each clash needs a crafted import; one retry is
/// already paranoia).
const UID_ATTEMPTS: usize = 3;

/// Where a delivery goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind<'a> {
    /// The maildrop, under a new UID, if the mailbox then holds no more
    /// than the limit (checked under the mailbox row's lock, in the
    /// delivery's own statement or transaction: concurrent deliveries on
    /// several nodes cannot overshoot together).
    Maildrop(Limit),
    /// The quarantine, under a new UID (not counted in the usage).
    Quarantine,
    /// The maildrop, keeping the UID and time it had elsewhere.
    Imported(&'a Imported<'a>),
    /// The quarantine, keeping the UID and time it had elsewhere.
    ImportedQuarantine(&'a Imported<'a>),
}

impl Kind<'_> {
    fn quarantined(self) -> bool {
        matches!(self, Kind::Quarantine | Kind::ImportedQuarantine(_))
    }

    /// 1 when the message counts in the mailbox's usage.
    fn counted(self) -> i64 {
        i64::from(!self.quarantined())
    }

    fn kept_uid(&self) -> Option<&str> {
        match self {
            Kind::Imported(i) | Kind::ImportedQuarantine(i) => Some(i.uid),
            _ => None,
        }
    }

    /// The quota as SQL parameters (NULL: none).
    fn limits(&self) -> (Option<i64>, Option<i64>) {
        let as_i64 = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        match self {
            Kind::Maildrop(l) => (as_i64(l.messages), as_i64(l.bytes)),
            _ => (None, None),
        }
    }

    fn received(&self) -> Option<SystemTime> {
        match self {
            Kind::Imported(i) | Kind::ImportedQuarantine(i) => Some(i.received),
            _ => None,
        }
    }
}

/// The single statement of a one-chunk delivery. With a quota ($9 most
/// messages, $10 most octets; NULL: none) the mailbox row is updated only
/// when the message fits, under the row's lock; otherwise nothing is
/// inserted and no row comes back.
const DELIVER_ONE: &str = "\
WITH mb AS ( \
    INSERT INTO mailboxes AS b (name, messages, bytes) \
    SELECT $1, $2, $2 * $3 \
    WHERE ($9::int8 IS NULL OR $2 <= $9) AND ($10::int8 IS NULL OR $2 * $3 <= $10) \
    ON CONFLICT (name) DO UPDATE \
        SET messages = b.messages + EXCLUDED.messages, bytes = b.bytes + EXCLUDED.bytes \
        WHERE ($9::int8 IS NULL OR b.messages + EXCLUDED.messages <= $9) \
          AND ($10::int8 IS NULL OR b.bytes + EXCLUDED.bytes <= $10) \
    RETURNING b.id), \
msg AS ( \
    INSERT INTO messages (id, mailbox_id, uid, size, received, quarantined) \
    SELECT n.id, mb.id, COALESCE($4, $5 || '.' || n.id), $3, COALESCE($6, now()), $7 \
    FROM mb, (SELECT nextval('messages_id_seq') AS id) n \
    RETURNING id, uid), \
chunk AS ( \
    INSERT INTO message_chunks (message_id, seq, data) SELECT id, 0, $8 FROM msg) \
SELECT uid FROM msg";

/// Delivers `message` to `mailbox` (canonical).
pub(crate) fn deliver(
    store: &PgStore,
    mailbox: &str,
    kind: Kind<'_>,
    message: &mut dyn Read,
) -> Result<Delivered, StoreError> {
    let mut pending: Vec<u8> = Vec::with_capacity(CHUNK);
    let mut long: Option<LongDelivery> = None;
    let size = normalize_stream(message, &mut |piece| {
        pending.extend_from_slice(piece);
        while pending.len() >= CHUNK {
            let delivery = match &mut long {
                Some(d) => d,
                None => long.insert(LongDelivery::begin(store, mailbox, kind)?),
            };
            delivery.chunk(&pending[..CHUNK])?;
            pending.drain(..CHUNK);
        }
        Ok(())
    })?;
    match long {
        None => deliver_one(store, mailbox, kind, &pending, size),
        Some(mut delivery) => {
            if !pending.is_empty() {
                delivery.chunk(&pending)?;
            }
            delivery.finish(size)
        }
    }
}

/// The one-statement delivery of a message that fits one chunk.
fn deliver_one(
    store: &PgStore,
    mailbox: &str,
    kind: Kind<'_>,
    data: &[u8],
    size: u64,
) -> Result<Delivered, StoreError> {
    let size_i = size as i64;
    let counted = kind.counted();
    let kept = kind.kept_uid();
    let received = kind.received();
    let quarantined = kind.quarantined();
    let (max_messages, max_bytes) = kind.limits();
    let prefix = store.uid_prefix();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = store.shared().run_unrepeated(
            || format!("storing a message for {mailbox}"),
            |c| {
                c.query_typed_opt(
                    DELIVER_ONE,
                    &[
                        (&mailbox, Type::TEXT),
                        (&counted, Type::INT8),
                        (&size_i, Type::INT8),
                        (&kept, Type::TEXT),
                        (&prefix, Type::TEXT),
                        (&received, Type::TIMESTAMPTZ),
                        (&quarantined, Type::BOOL),
                        (&data, Type::BYTEA),
                        (&max_messages, Type::INT8),
                        (&max_bytes, Type::INT8),
                    ],
                )
            },
        );
        match result {
            Ok(None) => return Err(StoreError::OverQuota(mailbox.to_owned())),
            Ok(Some(row)) => {
                return Ok(Delivered {
                    uid: row.get(0),
                    size,
                });
            }
            Err(StoreError::Backend { source, .. })
                if source
                    .downcast_ref::<DbError>()
                    .is_some_and(is_unique_violation) =>
            {
                if let Some(uid) = kept {
                    return Err(StoreError::DuplicateUid(uid.to_owned()));
                }
                if attempt >= UID_ATTEMPTS {
                    return Err(StoreError::Backend {
                        context: format!("storing a message for {mailbox}"),
                        source,
                    });
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// A delivery of more than one chunk: an open transaction on one pooled
/// connection, rolled back when dropped unfinished.
struct LongDelivery {
    conn: r2d2::PooledConnection<Manager>,
    mailbox: String,
    mailbox_id: i64,
    message_id: i64,
    uid: String,
    counted: i64,
    limits: (Option<i64>, Option<i64>),
    next_seq: i32,
    open: bool,
}

impl LongDelivery {
    fn begin(store: &PgStore, mailbox: &str, kind: Kind<'_>) -> Result<LongDelivery, StoreError> {
        let context = || format!("storing a message for {mailbox}");
        let mut conn = crate::store::take(&store.shared().pool).map_err(pool(context()))?;
        let mailbox_id = ensure_mailbox(&mut conn, mailbox).map_err(backend(context()))?;
        conn.batch_execute("BEGIN").map_err(backend(context()))?;
        let mut delivery = LongDelivery {
            conn,
            mailbox: mailbox.to_owned(),
            mailbox_id,
            message_id: 0,
            uid: String::new(),
            counted: kind.counted(),
            limits: kind.limits(),
            next_seq: 0,
            open: true,
        };
        let kept = kind.kept_uid();
        let received = kind.received();
        let quarantined = kind.quarantined();
        let prefix = store.uid_prefix();
        for _ in 0..UID_ATTEMPTS {
            // ON CONFLICT DO NOTHING: a clash must not abort the transaction.
            let row = delivery
                .conn
                .query_typed_opt(
                    "INSERT INTO messages (id, mailbox_id, uid, size, received, quarantined) \
                     SELECT n.id, $1, COALESCE($2, $3 || '.' || n.id), 0, COALESCE($4, now()), $5 \
                     FROM (SELECT nextval('messages_id_seq') AS id) n \
                     ON CONFLICT (mailbox_id, uid) DO NOTHING RETURNING id, uid",
                    &[
                        (&mailbox_id, Type::INT8),
                        (&kept, Type::TEXT),
                        (&prefix, Type::TEXT),
                        (&received, Type::TIMESTAMPTZ),
                        (&quarantined, Type::BOOL),
                    ],
                )
                .map_err(backend(context()))?;
            match row {
                Some(row) => {
                    delivery.message_id = row.get(0);
                    delivery.uid = row.get(1);
                    return Ok(delivery);
                }
                None => {
                    if let Some(uid) = kept {
                        return Err(StoreError::DuplicateUid(uid.to_owned()));
                    }
                }
            }
        }
        Err(StoreError::Backend {
            context: context(),
            source: "no free unique ID after several attempts".into(),
        })
    }

    fn chunk(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let seq = self.next_seq;
        self.conn
            .execute_typed(
                "INSERT INTO message_chunks (message_id, seq, data) VALUES ($1, $2, $3)",
                &[
                    (&self.message_id, Type::INT8),
                    (&seq, Type::INT4),
                    (&data, Type::BYTEA),
                ],
            )
            .map_err(backend(format!("storing a message for {}", self.mailbox)))?;
        self.next_seq += 1;
        Ok(())
    }

    fn finish(mut self, size: u64) -> Result<Delivered, StoreError> {
        let context = format!("storing a message for {}", self.mailbox);
        let size_i = size as i64;
        let (max_messages, max_bytes) = self.limits;
        // The counters under the row's lock, only if the message fits the
        // quota; otherwise the transaction is rolled back (on drop).
        let fits = self
            .conn
            .execute_typed(
                "WITH m AS (UPDATE messages SET size = $2 WHERE id = $1) \
                 UPDATE mailboxes SET messages = messages + $4, bytes = bytes + $2 * $4 \
                 WHERE id = $3 \
                   AND ($5::int8 IS NULL OR messages + $4 <= $5) \
                   AND ($6::int8 IS NULL OR bytes + $2 * $4 <= $6)",
                &[
                    (&self.message_id, Type::INT8),
                    (&size_i, Type::INT8),
                    (&self.mailbox_id, Type::INT8),
                    (&self.counted, Type::INT8),
                    (&max_messages, Type::INT8),
                    (&max_bytes, Type::INT8),
                ],
            )
            .map_err(backend(context.clone()))?;
        if fits == 0 {
            return Err(StoreError::OverQuota(self.mailbox.clone()));
        }
        // Durable when COMMIT returns (synchronous_commit as configured on
        // the server; the default waits for the WAL flush).
        self.open = false;
        self.conn
            .batch_execute("COMMIT")
            .map_err(backend(context))?;
        Ok(Delivered {
            uid: std::mem::take(&mut self.uid),
            size,
        })
    }
}

impl Drop for LongDelivery {
    fn drop(&mut self) {
        if self.open {
            // Nothing of the failed delivery stays. If this fails too the
            // connection is broken, and the server rolls back by itself.
            let _ = self.conn.batch_execute("ROLLBACK");
        }
    }
}

/// The id of `mailbox`, creating its row if needed, as its own statement
/// (autocommit): the row is then not locked during a long delivery.
fn ensure_mailbox(c: &mut Conn, mailbox: &str) -> Result<i64, DbError> {
    for _ in 0..3 {
        // When another transaction creates the row concurrently, the
        // INSERT waits for it and inserts nothing, and the SELECT's
        // snapshot predates it: no row, so look again.
        let row = c.query_typed_opt(
            "WITH ins AS ( \
                 INSERT INTO mailboxes (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id) \
             SELECT id FROM ins UNION ALL SELECT id FROM mailboxes WHERE name = $1 LIMIT 1",
            &[(&mailbox, Type::TEXT)],
        )?;
        if let Some(row) = row {
            return Ok(row.get(0));
        }
    }
    // The row exists now (or the error says why not).
    Ok(c.query_typed_one(
        "SELECT id FROM mailboxes WHERE name = $1",
        &[(&mailbox, Type::TEXT)],
    )?
    .get(0))
}
