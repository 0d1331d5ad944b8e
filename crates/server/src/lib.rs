//! The postoffice network server: tokio listeners, TLS, connection limits
//! and the session drivers that connect sockets to the sans-IO protocol
//! sessions. It holds no protocol logic (that is `pop3-proto` and
//! `postoffice-smtp`) and no application logic (that is `postoffice-core`:
//! logins, delivery, submission policy).
//!
//! - [`listeners::Listeners::open`] takes the sockets systemd passed or
//!   binds the configured addresses (before the process gives up root);
//!   [`Server::start`] prepares everything else on them, [`Server::bind`]
//!   does both, and [`Server::run`] serves until shut down.
//! - [`pop3`] drives one POP3 connection, [`smtp`] one SMTP or submission
//!   connection, [`http`] hands one HTTP(S) connection to
//!   `postoffice-http` (the web interface, API, metrics, autoconfig).
//! - [`tls`] loads (or generates) the certificates, picks one per
//!   handshake by SNI, reloads them on SIGHUP or when the files change, and
//!   runs handshakes.
//! - [`limits`] caps connections in total and per client network.
//! - [`outbound`] runs the outbound queue's scheduler beside the listeners.
//! - [`shutdown`] broadcasts the stop signal.
#![forbid(unsafe_code)]

pub mod http;
pub mod limits;
pub mod listeners;
pub mod outbound;
pub mod pop3;
pub mod shutdown;
pub mod smtp;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use pop3_proto::server::Busy;
use postoffice_config::Config;
use postoffice_core::App;
use postoffice_smtp::{Reply, codes, status};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::limits::{ConnLimiter, Refused};
pub use crate::listeners::Listeners;
use crate::shutdown::{Shutdown, Trigger};

/// What kind of service a listener offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// POP3 on 110 (STLS offered).
    Pop3,
    /// POP3 over implicit TLS on 995.
    Pop3s,
    /// SMTP for incoming mail on 25.
    Smtp,
    /// Submission on 587 (STARTTLS).
    Submission,
    /// Submission over implicit TLS on 465.
    Submissions,
    /// The web interface, API, metrics and autoconfig over plain HTTP.
    Http,
    /// The same over HTTPS.
    Https,
}

impl Service {
    /// The `protocol` label of the service's metrics.
    pub fn protocol(self) -> &'static str {
        use postoffice_core::metrics::protocol;
        match self {
            Service::Pop3 => protocol::POP3,
            Service::Pop3s => protocol::POP3S,
            Service::Smtp => protocol::SMTP,
            Service::Submission => protocol::SUBMISSION,
            Service::Submissions => protocol::SUBMISSIONS,
            Service::Http => protocol::HTTP,
            Service::Https => protocol::HTTPS,
        }
    }

    /// Every service, in the order of the config file.
    pub const ALL: [Service; 7] = [
        Service::Pop3,
        Service::Pop3s,
        Service::Smtp,
        Service::Submission,
        Service::Submissions,
        Service::Http,
        Service::Https,
    ];

    /// Its name in systemd's `FileDescriptorName=` (and RFC 6186's SRV
    /// labels): pop3, pop3s, smtp, submission, submissions, http, https.
    pub fn name(self) -> &'static str {
        match self {
            Service::Pop3 => "pop3",
            Service::Pop3s => "pop3s",
            Service::Smtp => "smtp",
            Service::Submission => "submission",
            Service::Submissions => "submissions",
            Service::Http => "http",
            Service::Https => "https",
        }
    }

    /// The service called `name` (see [`Service::name`]).
    pub fn from_name(name: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What every connection of the server shares: the application, the TLS
/// acceptor and the connection limits.
pub struct Shared {
    /// The application core.
    pub app: Arc<App>,
    /// The HTTP service (`None` only in tests that build a `Shared` by
    /// hand).
    pub http: Option<postoffice_http::HttpService>,
    /// The TLS acceptor (`None` only in tests).
    pub tls: Option<TlsAcceptor>,
    /// Connection limits.
    pub limiter: Arc<ConnLimiter>,
}

impl Shared {
    /// The server side of `app` with `tls`.
    pub fn new(app: Arc<App>, tls: Option<TlsAcceptor>) -> Shared {
        let limits = &app.config.limits;
        let limiter = ConnLimiter::new(limits.max_connections, limits.max_connections_per_ip);
        Shared {
            app,
            http: None,
            tls,
            limiter,
        }
    }
}

/// A bound, not yet running server.
pub struct Server {
    shared: Arc<Shared>,
    queue: Arc<postoffice_queue::Queue>,
    listeners: Vec<(Service, TcpListener)>,
    certs: Arc<tls::CertStore>,
    hangup: tokio::signal::unix::Signal,
}

impl Server {
    /// Bind every configured listener, then [`Server::start`].
    pub async fn bind(config: Config) -> Result<Server> {
        let listeners = Listeners::bind(&config)?;
        Server::start(config, listeners).await
    }

    /// Prepare TLS, open the directory, the queue and the application, on
    /// `listeners` (from [`Listeners::open`]). Must run inside the tokio
    /// runtime.
    pub async fn start(config: Config, listeners: Listeners) -> Result<Server> {
        postoffice_common::durable::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
        warn_if_shared(&config.data_dir);
        // SIGHUP reloads the certificates; its handler is in place before
        // the first connection, as the default action would end the process.
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        let certs = tls::CertStore::load(&config)?;
        let tls = certs.acceptor()?;
        let mut bound = Vec::new();
        for (service, socket) in listeners.sockets {
            let addr = socket.local_addr().ok();
            let l = TcpListener::from_std(socket)
                .with_context(|| format!("cannot use the {} socket {addr:?}", service.name()))?;
            bound.push((service, l));
        }
        // On a blocking thread: a queue shared through PostgreSQL connects
        // and reads the database.
        let queue = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || postoffice_queue::open_configured(&config))
                .await
                .context("opening the outbound queue")?
                .context("opening the outbound queue")?
        };
        let queue = Arc::new(queue);
        let app = Arc::new(App::new(config).context("setting up the server")?);
        app.set_outbound(Arc::clone(&queue) as Arc<dyn postoffice_core::Outbound>);
        let port = |want: Service| {
            bound
                .iter()
                .find(|(s, _)| *s == want)
                .and_then(|(_, l)| l.local_addr().ok())
                .map(|a| a.port())
        };
        let ports = postoffice_http::autoconfig::Ports {
            pop3s: port(Service::Pop3s),
            pop3: port(Service::Pop3),
            submissions: port(Service::Submissions),
            submission: port(Service::Submission),
        };
        let http = postoffice_http::HttpService::new(Arc::clone(&app), Arc::clone(&queue), ports)
            .context("setting up the web interface")?;
        let mut shared = Shared::new(app, Some(tls));
        shared.http = Some(http);
        let shared = Arc::new(shared);
        // Compute the dummy hash now so the first failed login for an
        // unknown user costs the same as any other.
        let _ = tokio::task::spawn_blocking(postoffice_directory::prepare_dummy_hash).await;
        Ok(Server {
            shared,
            queue,
            listeners: bound,
            certs,
            hangup,
        })
    }

    /// The certificates the server presents.
    pub fn certificates(&self) -> &Arc<tls::CertStore> {
        &self.certs
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<(Service, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(s, l)| l.local_addr().ok().map(|a| (*s, a)))
            .collect()
    }

    /// The application the server runs.
    pub fn app(&self) -> &Arc<App> {
        &self.shared.app
    }

    /// Serve until `stop` resolves, then drain: stop accepting, give
    /// sessions `shutdown_timeout_secs` to end, and abort the rest (which
    /// deletes nothing: only a completed QUIT deletes).
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) -> Result<()> {
        let (trigger, shutdown) = shutdown::channel();
        let mut tasks = JoinSet::new();
        for (service, listener) in self.listeners {
            let shared = Arc::clone(&self.shared);
            let sd = shutdown.clone();
            let trig = trigger.clone();
            tasks.spawn(accept_loop(shared, service, listener, sd, trig));
        }
        tasks.spawn(sweeper_loop(Arc::clone(&self.shared), shutdown.clone()));
        if let Some(schedule) =
            postoffice_core::quarantine_digest::Schedule::from_config(&self.shared.app.config)
        {
            tasks.spawn(digest_loop(
                Arc::clone(&self.shared),
                schedule,
                shutdown.clone(),
            ));
        }
        if let Some(http) = self.shared.http.clone() {
            let mut sd = shutdown.clone();
            tasks.spawn(async move { http.run_sampler(async move { sd.recv().await }).await });
        }
        tasks.spawn(tls::watch(
            Arc::clone(&self.certs),
            self.hangup,
            Duration::from_secs(self.shared.app.config.tls.reload_check_secs),
            shutdown.clone(),
        ));
        if self.shared.app.config.fetch_jobs.enabled {
            tasks.spawn(fetch_jobs_loop(Arc::clone(&self.shared), shutdown.clone()));
        }
        tasks.spawn(outbound::run(
            Arc::clone(&self.shared),
            self.queue,
            shutdown.clone(),
        ));
        stop.await;
        info!("shutting down: no new connections; waiting for sessions to finish");
        trigger.fire();
        let deadline = Duration::from_secs(self.shared.app.config.shutdown_timeout_secs);
        if tokio::time::timeout(deadline, async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            warn!("shutdown deadline reached; closing remaining sessions");
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        if let Err(e) = self.shared.app.send_limits.save() {
            warn!(error = %e, "cannot save the sending-limit counts");
        }
        info!(counters = %self.shared.app.metrics.summary(), "stopped");
        Ok(())
    }
}

/// Mail and keys live under the data directory: it should be private to
/// the server's user. New ones are created 0700; an older one that others
/// can enter is reported (not changed: it may be shared on purpose).
fn warn_if_shared(data_dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(data_dir) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warn!(
                data_dir = %data_dir.display(),
                "the data directory is open to other users (mode {mode:04o}); run `chmod 700 {}`",
                data_dir.display()
            );
        }
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    service: Service,
    listener: TcpListener,
    mut shutdown: Shutdown,
    trigger: Trigger,
) {
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.recv() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (mut tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let guard = match shared.limiter.acquire(peer.ip()) {
            Ok(g) => g,
            Err(why) => {
                warn!(ip = %peer.ip(), ?why, "connection refused: limit reached");
                shared.app.metrics.connections_refused.inc([
                    service.protocol(),
                    match why {
                        Refused::PerIp => "limit_per_ip",
                        Refused::Total => "limit_total",
                    },
                ]);
                let msg: Vec<u8> = match service {
                    Service::Smtp | Service::Submission | Service::Submissions => Reply::new(
                        codes::SERVICE_UNAVAILABLE,
                        status::SECURITY_OTHER,
                        "Too many connections, try again later",
                    )
                    .to_bytes(),
                    Service::Pop3 | Service::Pop3s => match why {
                        Refused::PerIp => Busy::TooManyFromClient.reply().to_vec(),
                        Refused::Total => Busy::ServerFull.reply().to_vec(),
                    },
                    Service::Http => {
                        b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                            .to_vec()
                    }
                    Service::Https => Vec::new(),
                };
                if !matches!(
                    service,
                    Service::Pop3s | Service::Submissions | Service::Https
                ) {
                    // Best effort, never blocking the accept loop.
                    let _ =
                        tokio::time::timeout(Duration::from_millis(200), tcp.write_all(&msg)).await;
                }
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        let sd = trigger.subscribe();
        let span = match service {
            Service::Smtp => tracing::info_span!("smtp", peer = %peer),
            Service::Submission | Service::Submissions => {
                tracing::info_span!("submission", peer = %peer)
            }
            Service::Pop3 | Service::Pop3s => {
                tracing::info_span!("pop3", peer = %peer, tls = service == Service::Pop3s)
            }
            Service::Http | Service::Https => {
                tracing::info_span!("http", peer = %peer, tls = service == Service::Https)
            }
        };
        // One task type per protocol: a task's allocation is the size of
        // its future, and an idle POP3 session must not pay for the
        // larger SMTP one.
        use tracing::Instrument;
        match service {
            Service::Smtp => conns.spawn(
                async move {
                    let _guard = guard;
                    smtp::serve_connection(shared, tcp, peer, smtp::Mode::Mx, sd).await
                }
                .instrument(span),
            ),
            Service::Submission | Service::Submissions => {
                let mode = smtp::Mode::Submission {
                    implicit_tls: service == Service::Submissions,
                };
                conns.spawn(
                    async move {
                        let _guard = guard;
                        smtp::serve_connection(shared, tcp, peer, mode, sd).await
                    }
                    .instrument(span),
                )
            }
            Service::Pop3 | Service::Pop3s => conns.spawn(
                async move {
                    let _guard = guard;
                    pop3::serve_connection(shared, tcp, peer, service == Service::Pop3s, sd).await
                }
                .instrument(span),
            ),
            Service::Http | Service::Https => conns.spawn(
                async move {
                    let _guard = guard;
                    http::serve_connection(shared, tcp, peer, service == Service::Https, sd).await
                }
                .instrument(span),
            ),
        };
    }
    drop(listener);
    // Sessions were told to stop via the same signal; wait for them here so
    // the server's deadline covers them.
    while conns.join_next().await.is_some() {}
}

/// Users' fetch jobs (`postoffice_pull::jobs`): due jobs are run every
/// few seconds; the jobs file is re-read each time, so `postoffice user
/// fetch add` needs no restart.
async fn fetch_jobs_loop(shared: Arc<Shared>, mut shutdown: Shutdown) {
    let every = Duration::from_secs(shared.app.config.fetch_jobs.interval_secs.min(5));
    let scheduler = postoffice_pull::jobs::Scheduler::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.recv() => return,
        }
        tokio::select! {
            _ = scheduler.run_due(&shared.app) => {}
            _ = shutdown.recv() => return,
        }
    }
}

/// The quarantine digest (`[filter] quarantine_digest_hours`): every ten
/// minutes (or the period, if shorter) the users whose last digest is at
/// least a period old and who have unlisted messages get one; the period
/// itself is kept per user in the store, so a restart does not resend.
async fn digest_loop(
    shared: Arc<Shared>,
    schedule: postoffice_core::quarantine_digest::Schedule,
    shutdown: Shutdown,
) {
    let every = match schedule {
        postoffice_core::quarantine_digest::Schedule::Every(p) => p.min(Duration::from_secs(600)),
        postoffice_core::quarantine_digest::Schedule::Now => Duration::from_secs(600),
    };
    periodic_blocking(every, shutdown, move || {
        let app = &shared.app;
        if let Err(e) = postoffice_core::quarantine_digest::run(
            &app.config,
            &app.directory,
            &*app.store,
            None,
            schedule,
        ) {
            tracing::warn!(error = %e, "quarantine digest run failed");
        }
    })
    .await;
}

/// The retention sweep, every `[policy] expire_interval_secs`.
async fn sweeper_loop(shared: Arc<Shared>, shutdown: Shutdown) {
    let every = Duration::from_secs(shared.app.config.policy.expire_interval_secs);
    periodic_blocking(every, shutdown, move || {
        let app = &shared.app;
        let _ = postoffice_core::retention::sweep(&app.config, &app.directory, &*app.store, false);
    })
    .await;
}

/// Run `job` on the blocking pool every `every` (the first time at once),
/// one run at a time, until shutdown.
async fn periodic_blocking<F>(every: Duration, mut shutdown: Shutdown, job: F)
where
    F: Fn() + Send + Sync + 'static,
{
    let job = Arc::new(job);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.recv() => return,
        }
        let job = Arc::clone(&job);
        let _ = tokio::task::spawn_blocking(move || job()).await;
    }
}
