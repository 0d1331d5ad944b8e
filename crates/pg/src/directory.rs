//! The directory of domains, users and aliases in PostgreSQL: the same
//! TOML document as `directory.toml`, kept in one row with a version that
//! every update increases. Every node asks for the version once a second
//! (`postoffice_directory::Directory::open_shared` runs a watcher thread),
//! so a change made on one node or by the CLI takes effect everywhere
//! within seconds; an update locks the row (`SELECT ... FOR UPDATE`), so
//! concurrent writers never lose each other's change.
//!
//! One connection of its own, not the mail pool: a query a second and the
//! administrators' writes need no more, and the mail's connections never
//! wait behind them. A connection that broke (a database restart or a
//! failover) is replaced at the next call.

use postoffice_directory::{Error as DirError, SharedDocument};
use tokio_postgres::types::Type;

use crate::conn::DbError;
use crate::schema::{Lazy, One, connect_one, require_current};
use crate::{PgError, PgOptions};

/// The directory document in the database. `Send + Sync`.
pub struct PgDirectory {
    place: String,
    conn: Lazy,
}

impl std::fmt::Debug for PgDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDirectory")
            .field("place", &self.place)
            .finish_non_exhaustive()
    }
}

impl PgDirectory {
    /// Connects and checks that the schema is this build's (older:
    /// [`PgError::SchemaTooOld`], naming `postoffice db migrate`).
    pub fn connect(options: &PgOptions) -> Result<PgDirectory, PgError> {
        let mut client = connect_one(options, options.answer_limit())?;
        require_current(&mut client)?;
        Ok(PgDirectory {
            place: options.describe(),
            conn: Lazy::new(options, Some(client)),
        })
    }

    fn error(&self, action: &'static str, e: impl std::fmt::Display) -> DirError {
        DirError::Shared {
            action,
            place: self.place.clone(),
            message: e.to_string(),
        }
    }

    /// Runs `f` on the connection (made again if there is none); a
    /// connection that fails is dropped, so the next call reconnects.
    fn with<T>(
        &self,
        action: &'static str,
        f: impl FnOnce(&mut One) -> Result<T, DirError>,
    ) -> Result<T, DirError> {
        self.conn.with(|e| self.error(action, e), f)
    }
}

impl SharedDocument for PgDirectory {
    fn place(&self) -> String {
        self.place.clone()
    }

    fn version(&self) -> Result<i64, DirError> {
        self.with("read", |c| {
            let row = c
                .query_typed_opt("SELECT version FROM directory_document WHERE id = 1", &[])
                .map_err(|e| self.error("read", e))?;
            Ok(row.map_or(0, |r| r.get(0)))
        })
    }

    fn load(&self) -> Result<(Option<String>, i64), DirError> {
        self.with("read", |c| {
            let row = c
                .query_typed_opt(
                    "SELECT body, version FROM directory_document WHERE id = 1",
                    &[],
                )
                .map_err(|e| self.error("read", e))?;
            Ok(match row {
                Some(r) if r.get::<_, i64>(1) > 0 => (Some(r.get(0)), r.get(1)),
                _ => (None, 0),
            })
        })
    }

    fn update(
        &self,
        change: &mut dyn FnMut(Option<&str>) -> Result<String, DirError>,
    ) -> Result<i64, DirError> {
        self.with("update", |c| {
            let err = |e: DbError| self.error("update", e);
            // Any failure drops the connection (see `with`), which rolls
            // the transaction back: nothing half-written.
            c.batch_execute(
                "BEGIN; INSERT INTO directory_document (id, version, body) VALUES (1, 0, '') \
                 ON CONFLICT (id) DO NOTHING",
            )
            .map_err(err)?;
            let row = c
                .query_typed_one(
                    "SELECT body, version FROM directory_document WHERE id = 1 FOR UPDATE",
                    &[],
                )
                .map_err(err)?;
            let (body, version): (String, i64) = (row.get(0), row.get(1));
            let new = change((version > 0).then_some(body.as_str()))?;
            let row = c
                .query_typed_one(
                    "UPDATE directory_document SET body = $1, version = version + 1 \
                     WHERE id = 1 RETURNING version",
                    &[(&new, Type::TEXT)],
                )
                .map_err(err)?;
            c.batch_execute("COMMIT").map_err(err)?;
            Ok(row.get(0))
        })
    }
}
