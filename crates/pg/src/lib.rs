#![forbid(unsafe_code)]
//! The PostgreSQL storage backend: the mail of several `postoffice serve`
//! nodes in one database.
//!
//! [`PgStore`] implements [`postoffice_store::MailStore`] (and its
//! sessions [`postoffice_store::Maildrop`]) on the schema that [`migrate`]
//! creates. What POP3 needs from storage maps onto PostgreSQL like this:
//!
//! - **Mailboxes** are rows of `mailboxes`, which also carry the message
//!   and octet counters (kept in the same transaction as every insert and
//!   delete, so [`MailStore::usage`](postoffice_store::MailStore::usage)
//!   is one row read) and the session lease.
//! - **Messages** are rows of `messages` (UID, CRLF size, delivery time,
//!   first retrieval, quarantine flag); their bodies are rows of
//!   `message_chunks`, 256 KiB each, written and read one at a time, so
//!   neither a delivery nor a `RETR` ever holds a whole large message.
//! - **Delivery** is one transaction, durable when COMMIT returns. A
//!   message that fits one chunk (nearly all mail) is stored by a single
//!   statement: one round trip.
//! - **The session lock** is a lease: `lock_owner`/`lock_until` of the
//!   mailbox row, taken by the statement that also lists the maildrop (one
//!   round trip), renewed in the background by the store that holds it
//!   (every lease/3, one statement for all its leases), released when the
//!   session ends. A node that dies (even by SIGKILL) holds nothing beyond
//!   the lease time. Not an advisory lock: a pooled connection would leak it.
//! - **New UIDs** are `<prefix>.<message id>`: the id comes from the
//!   database-wide sequence and the prefix is drawn once per database by
//!   [`migrate`], so they are unique across nodes forever; the unique index
//!   on (mailbox, UID) catches the improbable clash with an imported UID,
//!   and the delivery is retried under the next id.
//!
//! The client offers blocking calls, since every caller (tokio's blocking
//! pool, the CLI's threads) runs blocking code anyway: tokio-postgres
//! connections in an `r2d2` pool, driven by a one-thread runtime of the
//! store's own, with a time limit on every answer (`src/conn.rs`: the
//! synchronous `postgres` crate has none, so a stopped server hung its
//! callers). No call may run on an async worker thread (it would panic);
//! only dropping a session is safe anywhere. Connections are plain TCP or
//! Unix sockets, with TLS (rustls) as `sslmode` in the url asks:
//! `prefer` (the default) encrypts when the server offers TLS, without
//! verifying, as libpq does; `require` insists on TLS and verifies the
//! certificate and host name against `ca_file` or the system's CAs (libpq's
//! `verify-full`); `disable` never encrypts.
//!
//! Failures of the database (unreachable, timeouts — every connection runs
//! with `statement_timeout` — broken connections, aborted transactions)
//! become [`postoffice_store::StoreError::Backend`], which callers treat as
//! temporary.

mod conn;
mod deliver;
mod directory;
mod error;
mod keys;
mod lease;
mod marks;
mod read;
mod schema;
mod send_log;
mod store;

use std::time::Duration;

pub use conn::{Conn, DbError, Manager};
pub use directory::PgDirectory;
pub use error::PgError;
pub use keys::PgKeys;
pub use marks::{Mark, PgMarks};
pub use schema::{Migrated, SCHEMA_VERSION, migrate, schema_version};
pub use send_log::{PgSendLog, SendCheck};
pub use store::{PgStore, Pool, check_schema, pool, take};

/// How to reach the database and how the backend behaves.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// libpq-style URL (`postgres://user@host:5432/db`) or `key=value`
    /// string; several hosts and `target_session_attrs=read-write` are
    /// allowed (a node then follows a failover by itself).
    pub url: String,
    /// The password, when it is not in `url` (`[storage] password_file`).
    pub password: Option<String>,
    /// Most connections the pool opens.
    pub pool_size: u32,
    /// How long a maildrop lease lasts without renewal: how long the
    /// maildrops of a node that died stay locked.
    pub lease: Duration,
    /// How long taking a connection from the pool (and so connecting) may
    /// take before the operation fails as temporary.
    pub connect_timeout: Duration,
    /// `statement_timeout` of every connection, so a database that stalls
    /// gives errors rather than hung sessions.
    pub statement_timeout: Duration,
    /// The CAs (PEM) a server certificate must chain to under
    /// `sslmode=require`; the system's CAs when `None`.
    pub ca_file: Option<std::path::PathBuf>,
}

impl PgOptions {
    /// Options for `url` with the defaults: 16 connections, a 60 s lease,
    /// 10 s to connect, 30 s per statement.
    pub fn new(url: impl Into<String>) -> PgOptions {
        PgOptions {
            url: url.into(),
            password: None,
            pool_size: 16,
            lease: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
            ca_file: None,
        }
    }

    /// The driver's configuration: the URL with the timeouts applied.
    fn config(&self) -> Result<tokio_postgres::Config, PgError> {
        let mut config: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| PgError::Url(e.to_string()))?;
        config.connect_timeout(self.connect_timeout);
        if let Some(password) = &self.password {
            config.password(password);
        }
        // A peer that vanished (host down, network cut) is noticed by TCP
        // within about a minute instead of the kernel's two hours. (A
        // server process that is alive but stopped still has its kernel
        // answer, so only the statement timeout covers slow statements.)
        if !self.url.contains("keepalives_idle") {
            config.keepalives_idle(Duration::from_secs(15));
        }
        if !self.url.contains("tcp_user_timeout") {
            config.tcp_user_timeout(self.statement_timeout + Duration::from_secs(30));
        }
        if config.get_application_name().is_none() {
            config.application_name("postoffice");
        }
        // A startup option costs no round trip (unlike a SET after
        // connecting) and is kept by every connection of the pool.
        let timeout = format!(
            "-c statement_timeout={}",
            self.statement_timeout.as_millis().max(1)
        );
        let options = match config.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} {timeout}"),
            _ => timeout,
        };
        config.options(&options);
        Ok(config)
    }

    /// The configuration and the TLS connector its `sslmode` asks for
    /// (see `conn::Target`).
    fn target(&self) -> Result<conn::Target, PgError> {
        conn::Target::new(self.config()?, self.ca_file.as_deref()).map_err(PgError::Tls)
    }

    /// How long the client waits for any one answer: a little longer than
    /// the server's own statement timeout, which normally ends a slow
    /// statement first (see `src/conn.rs`).
    pub(crate) fn answer_limit(&self) -> Duration {
        self.statement_timeout + Duration::from_secs(5)
    }

    /// Where the database is, for messages and `location` (no password).
    pub(crate) fn describe(&self) -> String {
        match self.url.parse::<tokio_postgres::Config>() {
            Ok(c) => describe(&c),
            Err(_) => "PostgreSQL (unparsable url)".into(),
        }
    }
}

/// `PostgreSQL host:port[,host:port] database db`, for people.
fn describe(c: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            let port = c
                .get_ports()
                .get(i)
                .or_else(|| c.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_owned()
    } else {
        hosts.join(",")
    };
    format!(
        "PostgreSQL {hosts} database {}",
        c.get_dbname().or(c.get_user()).unwrap_or("postgres")
    )
}
