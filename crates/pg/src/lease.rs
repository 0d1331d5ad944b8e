//! The session lease and the locked snapshot a POP3 session works on
//! ([`PgDrop`]).
//!
//! A session owns its maildrop while the mailbox row names its owner token
//! (`lock_owner`) and `lock_until` lies in the future (by the database's
//! clock, the one clock all nodes share). Taking the lease and listing the
//! maildrop are one statement; the store's renewer extends every lease it
//! holds every lease/3; the session's drop clears it. A session whose
//! lease was taken over (after it had expired) can no longer delete:
//! [`Maildrop::commit`] checks the owner under the row lock first and
//! fails with [`StoreError::Locked`], deleting nothing.
//!
//! One edge remains: a listing reflects the database as of the start of
//! the statement that took the lease. When that statement waited for an
//! expired holder's commit, the new session may list messages that commit
//! just deleted; reading them then fails with [`StoreError::Vanished`], as
//! on Maildir when another program deletes a file.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, PoisonError};
use std::time::SystemTime;

use postoffice_store::{CommitReport, ExpireReport, Maildrop, MessageInfo, StoreError};
use tokio_postgres::types::Type;

use crate::store::{Shared, open_listed};

/// Take (or create the mailbox and take) the lease, and list. LATERAL makes
/// the listing an index range scan of the one mailbox (a plain join from
/// the CTE was planned as a scan of every message). The listing comes as
/// one row of arrays (UIDs joined by spaces, which no UID contains):
/// decoding 100,000 rows one by one cost several times more. It is in
/// index order, and [`PgDrop::open`] sorts it anyway (cheap on sorted
/// input, and SQL promises no order to an aggregate fed by a subquery).
const OPEN: &str = "\
WITH lk AS ( \
    INSERT INTO mailboxes AS b (name, lock_owner, lock_until) \
    VALUES ($1, $2, now() + make_interval(secs => $3)) \
    ON CONFLICT (name) DO UPDATE \
        SET lock_owner = EXCLUDED.lock_owner, lock_until = EXCLUDED.lock_until \
        WHERE b.lock_owner IS NULL OR b.lock_until < now() OR b.lock_owner = EXCLUDED.lock_owner \
    RETURNING b.id) \
SELECT lk.id, m.ids, m.uids, m.sizes, m.received FROM lk LEFT JOIN LATERAL ( \
    SELECT array_agg(id) AS ids, string_agg(uid, ' ') AS uids, \
        array_agg(size) AS sizes, array_agg(received) AS received \
    FROM (SELECT id, uid, size, received FROM messages \
        WHERE mailbox_id = lk.id AND NOT quarantined ORDER BY received, id) s) m ON true";

/// Take the lease of an existing mailbox, and list (expiry: a mailbox
/// without a row is not created).
const OPEN_EXISTING: &str = "\
WITH lk AS ( \
    UPDATE mailboxes b SET lock_owner = $2, lock_until = now() + make_interval(secs => $3) \
    WHERE b.name = $1 \
        AND (b.lock_owner IS NULL OR b.lock_until < now() OR b.lock_owner = $2) \
    RETURNING b.id) \
SELECT lk.id, m.ids, m.uids, m.sizes, m.received FROM lk LEFT JOIN LATERAL ( \
    SELECT array_agg(id) AS ids, string_agg(uid, ' ') AS uids, \
        array_agg(size) AS sizes, array_agg(received) AS received \
    FROM (SELECT id, uid, size, received FROM messages \
        WHERE mailbox_id = lk.id AND NOT quarantined ORDER BY received, id) s) m ON true";

/// Delete listed messages if the lease is still ours, and count them off.
const COMMIT: &str = "\
WITH lease AS ( \
    SELECT id FROM mailboxes WHERE id = $1 AND lock_owner = $2 FOR UPDATE), \
del AS ( \
    DELETE FROM messages m USING lease \
    WHERE m.mailbox_id = lease.id AND m.id = ANY($3) AND NOT m.quarantined \
    RETURNING m.id, m.size), \
upd AS ( \
    UPDATE mailboxes b \
    SET messages = b.messages - (SELECT count(*) FROM del), \
        bytes = b.bytes - (SELECT coalesce(sum(size), 0) FROM del) \
    FROM lease WHERE b.id = lease.id) \
SELECT (SELECT count(*) FROM lease), ARRAY(SELECT id FROM del)";

/// Extend the leases this store holds.
const RENEW: &str = "\
UPDATE mailboxes b SET lock_until = now() + make_interval(secs => $3) \
FROM unnest($1::int8[], $2::text[]) AS h(id, owner) \
WHERE b.id = h.id AND b.lock_owner = h.owner \
RETURNING h.owner";

/// Give a lease back.
const RELEASE: &str = "\
UPDATE mailboxes SET lock_owner = NULL, lock_until = NULL \
WHERE name = $1 AND lock_owner = $2";

/// One session's leased, fixed view of a maildrop.
pub(crate) struct PgDrop {
    shared: Arc<Shared>,
    mailbox: String,
    mailbox_id: i64,
    token: String,
    messages: Vec<MessageInfo>,
    /// Message ids, parallel to `messages`.
    ids: Vec<i64>,
}

impl std::fmt::Debug for PgDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDrop")
            .field("mailbox", &self.mailbox)
            .field("token", &self.token)
            .field("messages", &self.messages.len())
            .finish_non_exhaustive()
    }
}

impl PgDrop {
    /// Takes the lease on `mailbox` (canonical) and lists it: one
    /// statement. `None` when another session holds it (or, with `create`
    /// false, when the mailbox has no row).
    pub(crate) fn open(
        shared: &Arc<Shared>,
        mailbox: &str,
        create: bool,
    ) -> Result<Option<PgDrop>, StoreError> {
        let token = shared.token();
        let sql = if create { OPEN } else { OPEN_EXISTING };
        let rows = shared
            .run(
                || format!("opening the maildrop of {mailbox}"),
                |c| {
                    c.query_typed(
                        sql,
                        &[
                            (&mailbox, Type::TEXT),
                            (&token, Type::TEXT),
                            (&shared.lease_secs, Type::FLOAT8),
                        ],
                    )
                },
            )
            .inspect_err(|_| {
                // Unanswered, the statement may still take the lease when
                // the server resumes: give it back then.
                shared.queue_release(mailbox.to_owned(), token.clone());
            })?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let mailbox_id: i64 = first.get(0);
        shared.hold(&token, mailbox_id);
        let ids: Vec<i64> = first.get::<_, Option<Vec<i64>>>(1).unwrap_or_default();
        let uids: Option<&str> = first.get(2);
        let sizes: Vec<i64> = first.get::<_, Option<Vec<i64>>>(3).unwrap_or_default();
        let received: Vec<SystemTime> = first
            .get::<_, Option<Vec<SystemTime>>>(4)
            .unwrap_or_default();
        let uids: Vec<&str> = uids.map_or_else(Vec::new, |u| u.split(' ').collect());
        if [uids.len(), sizes.len(), received.len()] != [ids.len(); 3] {
            return Err(StoreError::Backend {
                context: format!("opening the maildrop of {mailbox}"),
                source: "the listing's columns differ in length".into(),
            });
        }
        let mut listed: Vec<(i64, MessageInfo)> = ids
            .iter()
            .zip(uids)
            .zip(sizes.iter().zip(received))
            .map(|((&id, uid), (&size, received))| {
                (
                    id,
                    MessageInfo {
                        uid: uid.into(),
                        size: size.max(0) as u64,
                        received,
                    },
                )
            })
            .collect();
        drop(rows);
        // Oldest first; ids (the delivery order) break ties.
        listed.sort_by_key(|(id, m)| (m.received, *id));
        let (ids, messages): (Vec<i64>, Vec<MessageInfo>) = listed.into_iter().unzip();
        Ok(Some(PgDrop {
            shared: Arc::clone(shared),
            mailbox: mailbox.to_owned(),
            mailbox_id,
            token,
            messages,
            ids,
        }))
    }

    /// Removes (or lists, in a dry run) the messages received before
    /// `cutoff`, under this session's lease.
    pub(crate) fn expire(
        &self,
        cutoff: SystemTime,
        dry_run: bool,
    ) -> Result<ExpireReport, StoreError> {
        ExpireReport::run(&self.messages, cutoff, dry_run, |v| self.delete(v))
    }

    /// Deletes the messages at `indices` in one statement if the lease is
    /// still ours; returns the indices whose rows it removed.
    fn delete(&self, indices: &[usize]) -> Result<Vec<usize>, StoreError> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.messages.len()) {
            return Err(StoreError::NoSuchMessage(bad));
        }
        if indices.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = indices.iter().map(|&i| self.ids[i]).collect();
        let row = self.shared.run(
            || format!("deleting messages of {}", self.mailbox),
            |c| {
                c.query_typed_one(
                    COMMIT,
                    &[
                        (&self.mailbox_id, Type::INT8),
                        (&self.token, Type::TEXT),
                        (&ids, Type::INT8_ARRAY),
                    ],
                )
            },
        )?;
        let held: i64 = row.get(0);
        if held == 0 {
            // The lease expired and another session took the maildrop
            // over: it may have listed these messages, so nothing was
            // deleted.
            tracing::warn!(mailbox = %self.mailbox, "maildrop lease lost before QUIT; nothing deleted");
            return Err(StoreError::Locked);
        }
        let deleted: Vec<i64> = row.get(1);
        let by_id: HashMap<i64, usize> = indices.iter().map(|&i| (self.ids[i], i)).collect();
        let mut removed: Vec<usize> = deleted
            .iter()
            .filter_map(|id| by_id.get(id))
            .copied()
            .collect();
        removed.sort_unstable();
        Ok(removed)
    }
}

impl Maildrop for PgDrop {
    fn messages(&self) -> &[MessageInfo] {
        &self.messages
    }

    fn open_message(&self, index: usize) -> Result<Box<dyn Read + Send>, StoreError> {
        let (Some(info), Some(&id)) = (self.messages.get(index), self.ids.get(index)) else {
            return Err(StoreError::NoSuchMessage(index));
        };
        open_listed(&self.shared, index, id, info)
    }

    fn commit(&self, deleted: &[usize]) -> Result<CommitReport, StoreError> {
        let removed = self.delete(deleted)?;
        Ok(CommitReport {
            deleted: removed.len(),
            bytes: removed.iter().map(|&i| self.messages[i].size).sum(),
        })
    }

    fn mark_retrieved(&self, indices: &[usize]) -> Result<(), StoreError> {
        let ids: Vec<i64> = indices
            .iter()
            .filter_map(|&i| self.ids.get(i))
            .copied()
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        self.shared.run(
            || format!("recording retrievals in {}", self.mailbox),
            |c| {
                c.execute_typed(
                    "UPDATE messages SET retrieved = now() \
                     WHERE id = ANY($1) AND retrieved IS NULL",
                    &[(&ids, Type::INT8_ARRAY)],
                )
            },
        )?;
        Ok(())
    }

    fn retrieved(&self) -> Result<Vec<Option<SystemTime>>, StoreError> {
        if self.ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self.shared.run(
            || format!("reading retrievals in {}", self.mailbox),
            |c| {
                c.query_typed(
                    "SELECT id, retrieved FROM messages \
                     WHERE id = ANY($1) AND retrieved IS NOT NULL",
                    &[(&self.ids, Type::INT8_ARRAY)],
                )
            },
        )?;
        let times: HashMap<i64, SystemTime> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        Ok(self.ids.iter().map(|id| times.get(id).copied()).collect())
    }
}

impl Drop for PgDrop {
    fn drop(&mut self) {
        self.shared.unhold(&self.token);
        if tokio::runtime::Handle::try_current().is_ok() {
            // Maybe an async task (the server drops a session's maildrop
            // there): blocking on the database would stall or panic the
            // runtime, so the store's background thread releases it.
            self.shared.queue_release(
                std::mem::take(&mut self.mailbox),
                std::mem::take(&mut self.token),
            );
        } else if !release(&self.shared, &self.mailbox, &self.token) {
            self.shared.queue_release(
                std::mem::take(&mut self.mailbox),
                std::mem::take(&mut self.token),
            );
        }
    }
}

/// Gives the lease `token` on `mailbox` back; whether the database
/// answered (an unreleased lease expires by itself).
pub(crate) fn release(shared: &Shared, mailbox: &str, token: &str) -> bool {
    let released = shared.run(
        || format!("releasing the maildrop of {mailbox}"),
        |c| c.execute_typed(RELEASE, &[(&mailbox, Type::TEXT), (&token, Type::TEXT)]),
    );
    match released {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(%mailbox, error = %e, "could not release the maildrop lease yet");
            false
        }
    }
}

/// Extends every lease `shared` holds (one statement); logs the ones that
/// were lost.
pub(crate) fn renew(shared: &Shared) {
    let (ids, owners): (Vec<i64>, Vec<String>) = {
        let held = shared.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.is_empty() {
            return;
        }
        held.iter().map(|(t, &id)| (id, t.clone())).unzip()
    };
    let renewed = shared.run(
        || format!("renewing {} maildrop leases", ids.len()),
        |c| {
            c.query_typed(
                RENEW,
                &[
                    (&ids, Type::INT8_ARRAY),
                    (&owners, Type::TEXT_ARRAY),
                    (&shared.lease_secs, Type::FLOAT8),
                ],
            )
        },
    );
    match renewed {
        Ok(rows) if rows.len() < owners.len() => {
            let kept: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
            let held = shared.held.lock().unwrap_or_else(PoisonError::into_inner);
            for owner in owners.iter().filter(|o| !kept.contains(*o)) {
                if held.contains_key(owner) {
                    tracing::warn!(%owner, "a maildrop lease was lost (expired and taken over); its session can no longer delete");
                }
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot renew maildrop leases"),
    }
}
