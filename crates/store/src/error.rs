//! The one error type of the crate.
//!
//! Every message says what went wrong *and* what the operator (or the POP3
//! layer) can do about it, because these strings end up in logs that are read
//! by people who did not write this code.

use std::io;

/// Everything that can go wrong in a [`MailStore`](crate::MailStore) or a
/// [`Maildrop`](crate::Maildrop).
///
/// The enum is `#[non_exhaustive]` so that a second backend (a database) can
/// add its own failure modes without breaking callers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another session (in this or any other process) holds the maildrop's
    /// exclusive lock. RFC 1939 expects the server to refuse the login with
    /// `-ERR [IN-USE]`.
    #[error(
        "the maildrop is locked by another session; wait for that session to end and try again"
    )]
    Locked,

    /// The mailbox name is unsafe or malformed. The payload describes why,
    /// with the offending name escaped so it is safe to log.
    #[error("invalid mailbox name {0}; use a plain address such as user@example.test")]
    InvalidMailbox(String),

    /// A filesystem operation failed. `context` names the operation and the
    /// path, so the operator knows which permission, mount or disk to check.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, including the path involved.
        context: String,
        /// The underlying operating-system error.
        #[source]
        source: io::Error,
    },

    /// No quarantined message has this unique ID (the payload).
    #[error("no message with unique ID {0:?}; list them with `postoffice quarantine list`")]
    NoSuchUid(String),

    /// A message index outside the snapshot was requested (indices are
    /// 0-based; POP3 message number `n` is index `n - 1`).
    #[error(
        "no message with index {0} in this maildrop; indices are 0-based and must be below the message count"
    )]
    NoSuchMessage(usize),

    /// The message was in the snapshot but another program (a mail client via
    /// IMAP, an administrator) removed it since the session started.
    #[error(
        "message {uid} (index {index}) was removed by another program after the maildrop was opened; it can no longer be read"
    )]
    Vanished {
        /// 0-based index in the snapshot.
        index: usize,
        /// The message's unique ID.
        uid: String,
    },

    /// `deliver` was handed zero bytes. An empty message is almost certainly
    /// a bug upstream, and storing one would create a mail nobody can use.
    #[error("refusing to deliver an empty message; the sender supplied no data")]
    EmptyMessage,

    /// Reading the message to deliver failed (e.g. the network connection
    /// feeding it broke). Nothing was stored, so the sender may retry.
    #[error(
        "reading the message to deliver failed, nothing was stored (the sender may retry): {0}"
    )]
    MessageRead(#[source] io::Error),

    /// A UID to keep on import is not a POP3 unique ID (1 to 70 characters
    /// 0x21 to 0x7E); the payload is the UID, escaped for logs.
    #[error("{0} is not a POP3 unique ID (1 to 70 printable ASCII characters)")]
    InvalidUid(String),

    /// The maildrop already holds a message with this UID (payload).
    #[error("the maildrop already holds a message with unique ID {0:?}")]
    DuplicateUid(String),

    /// A mailbox state key is malformed (payload, escaped).
    #[error(
        "invalid state key {0}; keys are 1 to 64 characters of [A-Za-z0-9._-], not starting with '.'"
    )]
    InvalidKey(String),

    /// [`crate::MailStore::deliver_within`]: the mailbox (payload) would be
    /// over its quota; nothing was stored.
    #[error(
        "the mailbox of {0} is full (over its quota); it takes mail again once messages are deleted"
    )]
    OverQuota(String),

    /// A database backend failed in a way that is usually temporary: the
    /// database is unreachable, a statement timed out, the connection broke
    /// or a transaction was aborted by a conflict. Callers treat it like
    /// [`StoreError::Io`]: a temporary failure (SMTP 451 4.3.0, POP3
    /// `-ERR [SYS/TEMP]`, `deliver` exit 75), and the operation can be
    /// retried once the database answers again.
    #[error(
        "{context}: the mail database is unavailable ({source}); the operation can be retried when it answers again"
    )]
    Backend {
        /// What was being done (which operation, which mailbox).
        context: String,
        /// The database driver's or the connection pool's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// This backend does not implement the operation (payload: its name).
    #[error("the storage backend does not support {0}")]
    Unsupported(&'static str),
}

impl StoreError {
    /// Builds a closure for `map_err` that wraps an `io::Error` with context.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Io { context, source }
    }
}
