//! The node secrets in PostgreSQL: the SRS secret and the DKIM private
//! keys, rows of `node_keys` (name, value), so every node signs with the
//! same DKIM key and accepts the SRS addresses another node made.
//!
//! A key is made at most once: [`PgKeys::create_if_absent`] inserts with
//! `ON CONFLICT DO NOTHING` and then reads the row, so two nodes making the
//! SRS secret at the same moment both end up with the one that was
//! inserted first. Keys are read rarely (the caller caches them), so one
//! connection of its own, made on first use and replaced when it breaks,
//! as [`crate::PgDirectory`] does; never the mail pool.

use tokio_postgres::types::Type;

use crate::schema::{Lazy, One, query};
use crate::{PgError, PgOptions};

/// The `node_keys` table. `Send + Sync`.
pub struct PgKeys {
    place: String,
    conn: Lazy,
}

impl std::fmt::Debug for PgKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgKeys")
            .field("place", &self.place)
            .finish_non_exhaustive()
    }
}

impl PgKeys {
    /// The keys of the database `options` names. Connects at the first
    /// call, not here.
    pub fn new(options: &PgOptions) -> PgKeys {
        PgKeys {
            place: options.describe(),
            conn: Lazy::new(options, None),
        }
    }

    /// Where the keys are (for messages; no password).
    pub fn place(&self) -> &str {
        &self.place
    }

    /// Runs `f` on the connection (made again if there is none); a
    /// connection that fails is dropped, so the next call reconnects.
    fn with<T>(&self, f: impl FnOnce(&mut One) -> Result<T, PgError>) -> Result<T, PgError> {
        self.conn.with(|e| e, f)
    }

    /// The value of key `name`, or `None` when there is none.
    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>, PgError> {
        self.with(|c| {
            let row = c
                .query_typed_opt(
                    "SELECT value FROM node_keys WHERE name = $1",
                    &[(&name, Type::TEXT)],
                )
                .map_err(query("reading a node key"))?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    /// Stores `value` as key `name` unless the key exists, and returns the
    /// value the key has now: `value`, or the one another node stored
    /// first (then `value` is discarded).
    pub fn create_if_absent(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, PgError> {
        self.with(|c| {
            c.execute_typed(
                "INSERT INTO node_keys (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO NOTHING",
                &[(&name, Type::TEXT), (&value, Type::BYTEA)],
            )
            .map_err(query("storing a node key"))?;
            let row = c
                .query_typed_one(
                    "SELECT value FROM node_keys WHERE name = $1",
                    &[(&name, Type::TEXT)],
                )
                .map_err(query("reading a node key"))?;
            Ok(row.get(0))
        })
    }

    /// The names of the keys starting with `prefix`, sorted.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, PgError> {
        self.with(|c| {
            let rows = c
                .query_typed(
                    "SELECT name FROM node_keys WHERE starts_with(name, $1) ORDER BY name",
                    &[(&prefix, Type::TEXT)],
                )
                .map_err(query("listing node keys"))?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }
}
