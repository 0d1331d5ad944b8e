//! The HTTP side of postoffice: what an operator and a user do in a
//! browser, what Prometheus scrapes and what mail clients ask to configure
//! themselves.
//!
//! | path | what | who |
//! | --- | --- | --- |
//! | `/metrics` | the Prometheus text format ([`metrics`]) | anyone reaching it, or bearer `metrics_token` |
//! | `/.well-known/autoconfig/mail/config-v1.1.xml`, `/mail/config-v1.1.xml` | Thunderbird autoconfig ([`autoconfig`]) | anyone |
//! | `/autodiscover/autodiscover.xml` | Outlook autodiscover (POX) | anyone |
//! | `/login`, `/logout` | sign-in for administrators (a name) and users (an address) | anyone |
//! | `/admin/...` | domains, users, queue, quarantine, live sessions, statistics | administrators |
//! | `/me/...` | usage, policy, own quarantine, password | users |
//! | `/api/...` | the same as JSON ([`api`]) | as the pages |
//!
//! This crate holds no socket and no TLS: the server crate accepts the
//! connections (with its limits and its certificate) and hands each one to
//! [`HttpService::serve_connection`], which runs HTTP/1.1 on it with hyper
//! and routes requests with axum. Every handler calls the application
//! core (`postoffice_core::admin`, [`postoffice_core::App`]) or the
//! outbound queue; nothing here decides about mail.
//!
//! Security (see [`auth`] for the sessions):
//!
//! - sessions are signed cookies bound to the account's password hash,
//!   `HttpOnly`, `SameSite=Strict`, `Secure` on HTTPS, with an expiry;
//! - [`guard`] checks a CSRF token on every state-changing request before
//!   any handler runs, refuses cross-site `Origin`s, bounds bodies and
//!   time, and adds the security headers (a strict CSP: no script at all);
//! - sign-in goes through [`postoffice_core::App::authenticate`] (users)
//!   and `authenticate_admin`, the same throttle as POP3 and SMTP;
//! - a page or API answer for an anonymous visitor never depends on
//!   whether an address exists: routes check the session before looking
//!   anything up, and a failed sign-in has one text.
#![forbid(unsafe_code)]

mod api;
mod auth;
pub mod autoconfig;
mod error;
mod guard;
mod metrics;
mod pages;
mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use postoffice_core::App;
use postoffice_queue::Queue;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt;

pub use auth::KeyError;
pub use error::WebError;
pub use guard::CSRF_HEADER;
pub use metrics::CONTENT_TYPE as METRICS_CONTENT_TYPE;

/// Who is on the other end of a connection, as the server accepted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The client's address (the throttle's key).
    pub peer: SocketAddr,
    /// Whether the connection is HTTPS (cookies get `Secure`).
    pub secure: bool,
}

/// The shared state of every request.
#[derive(Clone, Debug)]
pub(crate) struct Web {
    inner: Arc<Inner>,
}

struct Inner {
    app: Arc<App>,
    queue: Arc<Queue>,
    keys: auth::Keys,
    stats: stats::History,
    offer: autoconfig::Offer,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web").finish_non_exhaustive()
    }
}

impl Web {
    pub(crate) fn app(&self) -> &Arc<App> {
        &self.inner.app
    }

    pub(crate) fn queue(&self) -> &Arc<Queue> {
        &self.inner.queue
    }

    pub(crate) fn keys(&self) -> &auth::Keys {
        &self.inner.keys
    }

    pub(crate) fn stats(&self) -> &stats::History {
        &self.inner.stats
    }

    pub(crate) fn offer(&self) -> &autoconfig::Offer {
        &self.inner.offer
    }
}

/// The HTTP service: routes and state, ready to serve connections.
#[derive(Clone, Debug)]
pub struct HttpService {
    web: Web,
    router: Router,
}

/// How long a client may take to send a request's header (and how long
/// an idle keep-alive connection waits for the next one).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

impl HttpService {
    /// The service for `app` and its outbound `queue`; autoconfig
    /// advertises `ports` (the mail listeners as bound). Loads (or
    /// creates) the cookie signing key in `<data_dir>/http/`.
    pub fn new(
        app: Arc<App>,
        queue: Arc<Queue>,
        ports: autoconfig::Ports,
    ) -> Result<HttpService, KeyError> {
        let keys = auth::Keys::load(&app.config.data_dir)?;
        let offer = autoconfig::Offer::new(&app.config.hostname, ports);
        let web = Web {
            inner: Arc::new(Inner {
                app,
                queue,
                keys,
                stats: stats::History::default(),
                offer,
            }),
        };
        let router = router(web.clone());
        Ok(HttpService { web, router })
    }

    /// Serve HTTP/1.1 on one accepted connection (plain or TLS) until the
    /// client is done or `shutdown` resolves; then finish the request in
    /// progress and close.
    pub async fn serve_connection<I>(
        &self,
        io: I,
        client: Client,
        shutdown: impl Future<Output = ()>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let router = self.router.clone();
        let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(client);
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(64 * 1024)
            .serve_connection(TokioIo::new(io), service);
        let mut conn = std::pin::pin!(conn);
        let mut shutdown = std::pin::pin!(shutdown);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %client.peer, error = %e, "http connection ended");
                }
            }
            _ = &mut shutdown => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
            }
        }
    }

    /// Take a sample of the statistics for the charts every
    /// [`stats::INTERVAL`] until `shutdown` resolves.
    pub async fn run_sampler(&self, shutdown: impl Future<Output = ()>) {
        stats::run(&self.web, shutdown).await;
    }
}

/// Run blocking work (directory writes, password hashes, store and spool
/// I/O) on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static, E: Into<WebError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, WebError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(WebError::Internal(e.to_string())),
    }
}

fn router(web: Web) -> Router {
    use axum::middleware::from_fn_with_state;
    let api = Router::new()
        .route("/api/login", post(api::login))
        .route("/api/logout", post(api::logout))
        .route("/api/session", get(api::session))
        .route("/api/admin/stats", get(api::stats))
        .route("/api/admin/sessions", get(api::sessions))
        .route(
            "/api/admin/domains",
            get(api::domains).post(api::add_domain),
        )
        .route(
            "/api/admin/domains/{name}",
            axum::routing::delete(api::remove_domain),
        )
        .route("/api/admin/domains/{name}/policy", post(api::domain_policy))
        .route("/api/admin/users", get(api::users).post(api::add_user))
        .route(
            "/api/admin/users/{address}",
            get(api::user).delete(api::remove_user),
        )
        .route(
            "/api/admin/users/{address}/password",
            post(api::user_password),
        )
        .route("/api/admin/users/{address}/policy", post(api::user_policy))
        .route("/api/admin/queue", get(api::queue))
        .route("/api/admin/queue/flush", post(api::queue_flush))
        .route(
            "/api/admin/queue/{id}",
            get(api::queue_entry).delete(api::queue_delete),
        )
        .route("/api/admin/queue/{id}/retry", post(api::queue_retry))
        .route("/api/admin/queue/{id}/release", post(api::queue_release))
        .route("/api/admin/quarantine", get(api::quarantine))
        .route(
            "/api/admin/quarantine/{address}/{uid}",
            get(api::quarantine_message).delete(api::quarantine_delete),
        )
        .route(
            "/api/admin/quarantine/{address}/{uid}/release",
            post(api::quarantine_release),
        )
        .route("/api/me", get(api::me))
        .route("/api/me/password", post(api::my_password))
        .route("/api/me/quarantine", get(api::my_quarantine))
        .route(
            "/api/me/quarantine/{uid}",
            get(api::my_quarantine_message).delete(api::my_quarantine_delete),
        )
        .route(
            "/api/me/quarantine/{uid}/release",
            post(api::my_quarantine_release),
        );
    Router::new()
        .route("/", get(pages::index))
        .route(
            "/login",
            get(pages::signin::form).post(pages::signin::submit),
        )
        .route("/logout", post(pages::signin::logout))
        .route("/static/app.css", get(pages::layout::css))
        .route("/metrics", get(metrics::scrape))
        .route(
            "/.well-known/autoconfig/mail/config-v1.1.xml",
            get(autoconfig::thunderbird),
        )
        .route("/mail/config-v1.1.xml", get(autoconfig::thunderbird))
        .route(
            "/autodiscover/autodiscover.xml",
            get(autoconfig::outlook).post(autoconfig::outlook),
        )
        .route(
            "/Autodiscover/Autodiscover.xml",
            get(autoconfig::outlook).post(autoconfig::outlook),
        )
        .route("/admin", get(pages::admin::dashboard))
        .route("/admin/sessions", get(pages::admin::sessions))
        .route(
            "/admin/domains",
            get(pages::admin::domains).post(pages::admin::add_domain),
        )
        .route(
            "/admin/domains/{name}/delete",
            post(pages::admin::remove_domain),
        )
        .route(
            "/admin/domains/{name}/policy",
            post(pages::admin::domain_policy),
        )
        .route(
            "/admin/users",
            get(pages::admin::users).post(pages::admin::add_user),
        )
        .route("/admin/users/{address}", get(pages::admin::user))
        .route(
            "/admin/users/{address}/password",
            post(pages::admin::user_password),
        )
        .route(
            "/admin/users/{address}/policy",
            post(pages::admin::user_policy),
        )
        .route(
            "/admin/users/{address}/delete",
            post(pages::admin::remove_user),
        )
        .route("/admin/queue", get(pages::admin::queue))
        .route("/admin/queue/flush", post(pages::admin::queue_flush))
        .route("/admin/queue/{id}", get(pages::admin::queue_entry))
        .route("/admin/queue/{id}/retry", post(pages::admin::queue_retry))
        .route(
            "/admin/queue/{id}/release",
            post(pages::admin::queue_release),
        )
        .route("/admin/queue/{id}/delete", post(pages::admin::queue_delete))
        .route("/admin/quarantine", get(pages::admin::quarantine))
        .route(
            "/admin/quarantine/{address}/{uid}",
            get(pages::admin::quarantine_message),
        )
        .route(
            "/admin/quarantine/{address}/{uid}/release",
            post(pages::admin::quarantine_release),
        )
        .route(
            "/admin/quarantine/{address}/{uid}/delete",
            post(pages::admin::quarantine_delete),
        )
        .route("/me", get(pages::user::home))
        .route("/me/password", post(pages::user::password))
        .route("/me/quarantine/{uid}", get(pages::user::quarantine_message))
        .route(
            "/me/quarantine/{uid}/release",
            post(pages::user::quarantine_release),
        )
        .route(
            "/me/quarantine/{uid}/delete",
            post(pages::user::quarantine_delete),
        )
        .merge(api)
        .fallback(pages::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(
            web.app().config.http.max_body_bytes,
        ))
        .layer(from_fn_with_state(web.clone(), guard::csrf))
        .layer(from_fn_with_state(web.clone(), guard::outer))
        .with_state(web)
}
