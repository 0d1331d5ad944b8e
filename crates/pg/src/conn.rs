//! Blocking database connections with a time limit on every call.
//!
//! tokio-postgres connections driven by a small runtime of the store's
//! own; the calling thread (tokio's blocking pool, a CLI thread) blocks on
//! each statement with [`tokio::time::timeout`]. The server-side
//! `statement_timeout` ends slow statements cleanly; this limit, a few
//! seconds longer, is for a server that does not answer at all (a stopped
//! process, whose kernel keeps the TCP connection alive): the statement
//! fails, and the connection, whose state is then unknown, is dropped.
//! (The synchronous `postgres` crate has no such limit: a stopped server
//! hung the calling thread.)
//!
//! Like every blocking call, these must not run on an async worker thread.

use std::future::Future;
use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Config, NoTls, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

/// A database error or a timeout.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The driver's error (with the server's message and SQLSTATE), and
    /// its causes (the driver's own message can be as bare as "error
    /// performing TLS handshake").
    #[error("{}", with_causes(.0))]
    Pg(#[from] tokio_postgres::Error),
    /// No answer in time.
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
}

/// `e`, then each cause not already in its message.
fn with_causes(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

impl DbError {
    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            DbError::Pg(e) => e.code(),
            DbError::Timeout(_) => None,
        }
    }
}

/// The runtime that drives the connections, shut down without blocking
/// when dropped (a drop may happen on an async thread).
#[derive(Debug)]
pub(crate) struct Runtime(Option<tokio::runtime::Runtime>);

impl Runtime {
    pub(crate) fn new() -> std::io::Result<Runtime> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pg-io")
            .enable_all()
            .build()
            .map(|rt| Runtime(Some(rt)))
    }

    pub(crate) fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle().clone(),
            None => unreachable!("the runtime lives until dropped"),
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Blocks on `fut` for at most `limit`.
///
/// Called on an async worker thread of the server's runtime (a quota check
/// at RCPT, say), the wait is announced with `block_in_place`, so the
/// runtime moves its other tasks elsewhere instead of panicking; on a
/// current-thread runtime (which cannot do that) it runs on a thread of
/// its own.
fn block<T: Send>(
    rt: &tokio::runtime::Handle,
    limit: Duration,
    fut: impl Future<Output = Result<T, tokio_postgres::Error>> + Send,
) -> Result<T, DbError> {
    let run = move || match rt.block_on(async { tokio::time::timeout(limit, fut).await }) {
        Ok(result) => result.map_err(DbError::Pg),
        Err(_) => Err(DbError::Timeout(limit)),
    };
    match tokio::runtime::Handle::try_current() {
        Err(_) => run(),
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(run)
        }
        Ok(_) => std::thread::scope(|s| match s.spawn(run).join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
    }
}

/// Where and how to connect: the driver's configuration and the TLS
/// connector its `sslmode` asks for.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) config: Config,
    /// `None` with `sslmode=disable`.
    tls: Option<MakeRustlsConnect>,
}

impl Target {
    /// `sslmode` as libpq reads it, with rustls:
    ///
    /// - `disable`: plain connections.
    /// - `prefer` (the default): TLS when the server offers it, plain when
    ///   it does not, and the certificate is not verified — libpq's
    ///   `prefer` exactly (encrypted, not authenticated).
    /// - `require`: TLS or no connection, and the certificate must chain to
    ///   `ca_file` (or the system's CAs) and name the host — what libpq
    ///   calls `verify-full`, which the driver's URL parser does not know.
    ///
    /// Unix-socket hosts never use TLS.
    pub(crate) fn new(config: Config, ca_file: Option<&std::path::Path>) -> Result<Target, String> {
        use postoffice_common::tls_client::{Trust, TrustAnchors, Verification};
        let verification = match config.get_ssl_mode() {
            SslMode::Disable => return Ok(Target { config, tls: None }),
            SslMode::Require => Verification::Required,
            _ => Verification::Opportunistic,
        };
        let trust = match ca_file {
            Some(path) => Trust::CaFile(path.to_path_buf()),
            None => Trust::System,
        };
        let anchors = TrustAnchors::load(&trust).map_err(|e| e.to_string())?;
        if verification == Verification::Required && anchors.is_empty() {
            return Err(
                "sslmode=require needs a CA to verify the server: no system CA certificates were found; set [storage] ca_file"
                    .into(),
            );
        }
        let client = anchors
            .client_config(verification)
            .map_err(|e| e.to_string())?;
        Ok(Target {
            config,
            tls: Some(MakeRustlsConnect::new((*client).clone())),
        })
    }
}

/// One connection, whose every call blocks the calling thread for at
/// most the pool's answer limit (see the module docs). Safe to call on a
/// worker of a multi-thread tokio runtime (the wait is announced with
/// `block_in_place`).
pub struct Conn {
    client: tokio_postgres::Client,
    task: tokio::task::JoinHandle<()>,
    rt: tokio::runtime::Handle,
    limit: Duration,
    /// A call timed out: responses may still be on their way.
    broken: bool,
}

impl Conn {
    /// Connects (each host within the config's connect timeout).
    pub(crate) fn connect(
        target: &Target,
        rt: &tokio::runtime::Handle,
        limit: Duration,
    ) -> Result<Conn, DbError> {
        let config = &target.config;
        let hosts = u32::try_from(config.get_hosts().len().max(1)).unwrap_or(u32::MAX);
        let connect_limit = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(limit)
            .saturating_mul(hosts)
            + Duration::from_secs(1);
        let (client, task) = match &target.tls {
            None => {
                let (client, connection) = block(rt, connect_limit, config.connect(NoTls))?;
                let task = rt.spawn(async move {
                    let _ = connection.await;
                });
                (client, task)
            }
            Some(tls) => {
                let (client, connection) = block(rt, connect_limit, config.connect(tls.clone()))?;
                let task = rt.spawn(async move {
                    let _ = connection.await;
                });
                (client, task)
            }
        };
        Ok(Conn {
            client,
            task,
            rt: rt.clone(),
            limit,
            broken: false,
        })
    }

    /// Refuses at once on a connection whose state is unknown (a call on
    /// it timed out): waiting again would only take as long.
    fn usable(&self) -> Result<(), DbError> {
        if self.broken {
            Err(DbError::Timeout(self.limit))
        } else {
            Ok(())
        }
    }

    fn note<T>(&mut self, result: Result<T, DbError>) -> Result<T, DbError> {
        if matches!(result, Err(DbError::Timeout(_))) {
            self.broken = true;
        }
        result
    }

    /// Whether the connection can no longer serve (closed, or a call on
    /// it timed out).
    pub fn is_closed(&self) -> bool {
        self.broken || self.client.is_closed()
    }

    /// One statement, its rows (one round trip: the parameter types are
    /// given, so nothing is prepared).
    pub fn query_typed(
        &mut self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, DbError> {
        self.usable()?;
        let r = block(&self.rt, self.limit, self.client.query_typed(query, params));
        self.note(r)
    }

    /// [`Conn::query_typed`] for at most one row.
    pub fn query_typed_opt(
        &mut self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Option<Row>, DbError> {
        self.usable()?;
        let r = block(
            &self.rt,
            self.limit,
            self.client.query_typed_opt(query, params),
        );
        self.note(r)
    }

    /// [`Conn::query_typed`] for exactly one row.
    pub fn query_typed_one(
        &mut self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Row, DbError> {
        self.usable()?;
        let r = block(
            &self.rt,
            self.limit,
            self.client.query_typed_one(query, params),
        );
        self.note(r)
    }

    /// One statement, the number of rows it changed.
    pub fn execute_typed(
        &mut self,
        query: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<u64, DbError> {
        self.usable()?;
        let r = block(
            &self.rt,
            self.limit,
            self.client.execute_typed(query, params),
        );
        self.note(r)
    }

    /// Statements without parameters (simple protocol).
    pub fn batch_execute(&mut self, query: &str) -> Result<(), DbError> {
        self.usable()?;
        let r = block(&self.rt, self.limit, self.client.batch_execute(query));
        self.note(r)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Ends the connection even if the server never answers again.
        self.task.abort();
    }
}

/// Makes the pool's connections; owns the runtime that drives them, so
/// the runtime lives as long as the pool.
pub struct Manager {
    pub(crate) target: Target,
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) limit: Duration,
    pub(crate) _runtime: Runtime,
}

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = DbError;

    fn connect(&self) -> Result<Conn, DbError> {
        Conn::connect(&self.target, &self.rt, self.limit)
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), DbError> {
        conn.batch_execute("")
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.is_closed()
    }
}
