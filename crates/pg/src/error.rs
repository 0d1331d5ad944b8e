//! The errors of setting the backend up, and how database failures become
//! [`StoreError`]s.

use postoffice_store::StoreError;
use tokio_postgres::error::SqlState;

use crate::conn::DbError;

/// What can go wrong connecting to the database or migrating it. Every
/// message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The `[storage] url` does not parse.
    #[error(
        "invalid PostgreSQL url in [storage] url: {0}; use postgres://user@host:5432/database or key=value pairs"
    )]
    Url(String),

    /// The TLS settings cannot be used (an unreadable `ca_file`).
    #[error("TLS to the database: {0}; check [storage] ca_file")]
    Tls(String),

    /// No connection could be made (or taken from the pool) in time.
    #[error(
        "cannot connect to {target}: {reason}; check [storage] url and that the database is running and reachable"
    )]
    Connect {
        /// The database (hosts and name; never the password).
        target: String,
        /// The driver's or the pool's explanation.
        reason: String,
    },

    /// A statement failed.
    #[error("{context}: {source}")]
    Query {
        /// What was being done.
        context: String,
        /// The driver's error (with the server's message and SQLSTATE), or
        /// a timeout.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The database has no schema, or an older one than this program
    /// needs.
    #[error(
        "the database schema is version {found}, this postoffice needs version {expected}: run `postoffice db migrate`"
    )]
    SchemaTooOld {
        /// The version in the database (0: no schema at all).
        found: i32,
        /// [`SCHEMA_VERSION`](crate::SCHEMA_VERSION).
        expected: i32,
    },

    /// The database was migrated by a newer postoffice.
    #[error(
        "the database schema is version {found}, newer than this postoffice understands (version {expected}); upgrade postoffice on this node to the version that migrated it"
    )]
    SchemaTooNew {
        /// The version in the database.
        found: i32,
        /// [`SCHEMA_VERSION`](crate::SCHEMA_VERSION).
        expected: i32,
    },
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> StoreError {
        StoreError::Backend {
            context: "setting up the PostgreSQL store".into(),
            source: Box::new(e),
        }
    }
}

/// A closure for `map_err` that turns a driver error into
/// [`StoreError::Backend`] with `context`.
pub(crate) fn backend(context: impl Into<String>) -> impl FnOnce(DbError) -> StoreError {
    let context = context.into();
    move |source| StoreError::Backend {
        context,
        source: Box::new(source),
    }
}

/// A pool checkout that failed (timed out: the database is unreachable or
/// every connection is busy).
pub(crate) fn pool(context: impl Into<String>) -> impl FnOnce(r2d2::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Backend {
        context,
        source: Box::new(source),
    }
}

/// The SQLSTATE of a unique violation (`23505`).
pub(crate) fn is_unique_violation(e: &DbError) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

/// Whether the server refused a write because it is read-only (`25006`):
/// a standby, or a primary demoted by a failover.
pub(crate) fn is_read_only(e: &DbError) -> bool {
    e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION)
}
