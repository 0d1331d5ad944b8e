//! One SMTP (MX) connection: the glue between a socket, the sans-IO
//! [`ServerSession`], the verification pipeline and local delivery.
//!
//! Replies are batched: the session consumes everything the client has
//! pipelined and the output goes out when input runs dry (RFC 2920). A
//! message gets `250` only after it is fsynced into every recipient's
//! maildrop; anything else it gets is a 4xx/5xx and nothing is stored.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postoffice_filter::{ConnectVerdict, MessageAction, MessageContext, SenderVerdict};
use postoffice_smtp::{Action, ServerSession, SessionConfig, Verdict};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::delivery::{DeliveryError, Local};
use crate::headers::{Trace, trace_headers};
use crate::shutdown::Shutdown;
use crate::state::Shared;

const READ_BUF: usize = 16 * 1024;

/// A short, unique, sortable transaction ID for logs and `Received`.
pub fn queue_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:X}{:05X}{:X}",
        now.as_secs(),
        now.subsec_micros(),
        n & 0xFFFF
    )
}

/// Which service a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Port 25: mail for local users from anyone, verified by the pipeline.
    Mx,
    /// Ports 587 (STARTTLS) / 465 (implicit TLS): our users' outgoing mail,
    /// after AUTH.
    Submission { implicit_tls: bool },
}

struct Conn {
    mode: Mode,
    shared: Arc<Shared>,
    peer: SocketAddr,
    session: ServerSession,
    out: Vec<u8>,
    input: Vec<u8>,
    tls_version: Option<String>,
    connect_tags: Vec<String>,
}

enum Step<S> {
    Done(&'static str),
    StartTls(S),
}

/// Serve one accepted SMTP connection.
pub async fn serve_connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    mode: Mode,
    mut shutdown: Shutdown,
) {
    let started = Instant::now();
    let _ = tcp.set_nodelay(true);
    let cfg = &shared.config.smtp;
    let submission = matches!(mode, Mode::Submission { .. });
    let implicit_tls = matches!(mode, Mode::Submission { implicit_tls: true });
    let session = ServerSession::new(SessionConfig {
        hostname: shared.config.hostname.clone(),
        max_message_size: usize::try_from(cfg.max_message_size).unwrap_or(usize::MAX),
        max_recipients: cfg.max_recipients,
        max_line_length: cfg.max_line_length,
        max_errors: cfg.max_errors,
        starttls_available: shared.tls.is_some(),
        tls_active: implicit_tls,
        submission,
        plaintext_auth: submission
            && shared.config.submission.allow_plaintext_auth_loopback
            && peer.ip().is_loopback(),
    });
    let mut conn = Conn {
        mode,
        shared: Arc::clone(&shared),
        peer,
        session,
        out: Vec::with_capacity(512),
        input: Vec::new(),
        tls_version: None,
        connect_tags: Vec::new(),
    };
    let timeout = Duration::from_secs(shared.config.limits.tls_handshake_timeout_secs);
    let end = if implicit_tls {
        match crate::tls::accept(&shared, tcp, timeout).await {
            Some(tls) => {
                conn.tls_version = Some(tls_description(&tls));
                conn.session.greeting(&mut conn.out);
                match drive(tls, &mut conn, &mut shutdown).await {
                    Step::Done(e) => e,
                    Step::StartTls(_) => "error",
                }
            }
            None => "tls-failed",
        }
    } else {
        if submission {
            conn.session.greeting(&mut conn.out);
        } else {
            match shared.filters.check_connect(peer.ip()).await {
                ConnectVerdict::Accept { tags } => {
                    conn.connect_tags = tags;
                    conn.session.greeting(&mut conn.out);
                }
                ConnectVerdict::Reject { reply } => {
                    info!(ip = %peer.ip(), %reply, "smtp connection refused by policy");
                    crate::metrics::inc(&shared.counters.smtp_refused_connections);
                    conn.session.refuse(&reply, &mut conn.out);
                }
            }
        }
        match drive(tcp, &mut conn, &mut shutdown).await {
            Step::Done(e) => e,
            Step::StartTls(tcp) => match crate::tls::accept(&shared, tcp, timeout).await {
                Some(tls) => {
                    conn.tls_version = Some(tls_description(&tls));
                    conn.session.tls_started();
                    match drive(tls, &mut conn, &mut shutdown).await {
                        Step::Done(e) => e,
                        Step::StartTls(_) => "error",
                    }
                }
                None => "tls-failed",
            },
        }
    };
    let stats = conn.session.stats();
    if !submission {
        crate::metrics::inc(&shared.counters.smtp_sessions);
        crate::metrics::add(&shared.counters.smtp_rcpt_rejected, stats.rejected_rcpts);
    }
    info!(
        ip = %peer.ip(),
        submission,
        user = conn.session.envelope().authenticated.as_deref().unwrap_or("-"),
        helo = %conn.session.envelope().helo,
        tls = conn.session.tls_active(),
        end,
        messages = stats.messages,
        rejected_rcpts = stats.rejected_rcpts,
        errors = stats.errors,
        duration_ms = started.elapsed().as_millis() as u64,
        "smtp session"
    );
}

fn tls_description(tls: &tokio_rustls::server::TlsStream<TcpStream>) -> String {
    let (_, c) = tls.get_ref();
    format!(
        "{} {}",
        c.protocol_version()
            .map_or("TLS".into(), |v| format!("{v:?}")),
        c.negotiated_cipher_suite()
            .map_or(String::new(), |s| format!("{:?}", s.suite()))
    )
}

async fn flush<S: AsyncWrite + Unpin>(io: &mut S, out: &mut Vec<u8>) -> std::io::Result<()> {
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    io.flush().await
}

async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    conn: &mut Conn,
    shutdown: &mut Shutdown,
) -> Step<S> {
    let cmd_timeout = Duration::from_secs(conn.shared.config.smtp.command_timeout_secs);
    let data_timeout = Duration::from_secs(conn.shared.config.smtp.data_timeout_secs);
    let mut buf = vec![0u8; READ_BUF];
    loop {
        // Process everything buffered. The buffer is moved out of `conn`
        // so the session can consume it while `conn` is borrowed mutably.
        let owned = std::mem::take(&mut conn.input);
        let mut slice: &[u8] = &owned;
        loop {
            let action = conn.session.handle(&mut slice, &mut conn.out);
            match action {
                Action::NeedInput => break,
                Action::Close => {
                    let _ = flush(&mut io, &mut conn.out).await;
                    let _ = io.shutdown().await;
                    return Step::Done("quit");
                }
                Action::StartTls => {
                    if flush(&mut io, &mut conn.out).await.is_err() {
                        return Step::Done("disconnected");
                    }
                    // Input pipelined behind STARTTLS was sent in plaintext:
                    // it must not be executed inside TLS (RFC 3207 6): it is
                    // dropped with `owned`.
                    return Step::StartTls(io);
                }
                Action::CheckSender { address } => {
                    let v = match conn.mode {
                        Mode::Mx => match conn.shared.filters.check_sender(&address) {
                            SenderVerdict::Accept => Verdict::Accept,
                            SenderVerdict::Reject { reply } => Verdict::Reject(reply),
                        },
                        Mode::Submission { .. } => {
                            let user = conn
                                .session
                                .envelope()
                                .authenticated
                                .clone()
                                .unwrap_or_default();
                            if crate::submission::sender_allowed(&conn.shared, &user, &address) {
                                Verdict::Accept
                            } else {
                                warn!(user = %user, sender = %postoffice_smtp::server::sanitize(&address), "submission: sender address not owned");
                                Verdict::Reject(format!(
                                    "553 5.7.1 <{}>: Sender address not owned by user {user}",
                                    postoffice_smtp::server::sanitize(&address)
                                ))
                            }
                        }
                    };
                    conn.session.sender_checked(v, &mut conn.out);
                }
                Action::CheckRecipient { address } => {
                    let v = match conn.mode {
                        Mode::Mx => recipient_verdict(&conn.shared, &address),
                        Mode::Submission { .. } => {
                            crate::submission::recipient_verdict(&conn.shared, &address)
                        }
                    };
                    conn.session.recipient_checked(address, v, &mut conn.out);
                }
                Action::Authenticate { user, password } => {
                    if flush(&mut io, &mut conn.out).await.is_err() {
                        return Step::Done("disconnected");
                    }
                    let result = conn
                        .shared
                        .authenticate(&user, password, conn.peer.ip())
                        .await
                        .ok();
                    if result.is_none() {
                        crate::metrics::inc(&conn.shared.counters.submission_auth_failures);
                    }
                    conn.session.auth_result(result, &mut conn.out);
                }
                Action::Deliver => {
                    // Let the client see the earlier replies while we work.
                    if flush(&mut io, &mut conn.out).await.is_err() {
                        return Step::Done("disconnected");
                    }
                    let reply = match conn.mode {
                        Mode::Mx => deliver(conn).await,
                        Mode::Submission { .. } => {
                            let id = queue_id();
                            let (env, body) = conn.session.message();
                            let env = env.clone();
                            crate::submission::submit(
                                &conn.shared,
                                conn.peer.ip(),
                                conn.tls_version.as_deref(),
                                &env,
                                &id,
                                body,
                            )
                            .await
                        }
                    };
                    conn.session.delivered(&reply, &mut conn.out);
                }
            }
        }
        conn.input = slice.to_vec();
        if flush(&mut io, &mut conn.out).await.is_err() {
            return Step::Done("disconnected");
        }
        let timeout = if conn.session.in_data() {
            data_timeout
        } else {
            cmd_timeout
        };
        let n = tokio::select! {
            r = tokio::time::timeout(timeout, io.read(&mut buf)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) => return Step::Done("disconnected"),
                Ok(Ok(n)) => n,
                Err(_) => {
                    conn.out.extend_from_slice(b"421 4.4.2 Timeout, closing connection\r\n");
                    let _ = flush(&mut io, &mut conn.out).await;
                    return Step::Done("timeout");
                }
            },
            _ = shutdown.recv() => {
                // Between commands or mid-data: nothing was accepted yet, so
                // the client will retry the message elsewhere or later.
                conn.out.extend_from_slice(b"421 4.3.2 Server shutting down\r\n");
                let _ = flush(&mut io, &mut conn.out).await;
                return Step::Done("shutdown");
            }
        };
        conn.input.extend_from_slice(&buf[..n]);
    }
}

/// Relay protection and recipient checks: only known users of local
/// domains; everything else is refused, whatever the address looks like.
fn recipient_verdict(shared: &Shared, address: &str) -> Verdict {
    let local = Local {
        config: &shared.config,
        directory: &shared.directory,
        store: &shared.store,
    };
    let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    if !local.is_local_domain(domain) {
        return Verdict::Reject(format!(
            "554 5.7.1 <{}>: Relay access denied",
            postoffice_smtp::server::sanitize(address)
        ));
    }
    match local.check_recipient(address) {
        Ok(_) => Verdict::Accept,
        Err(DeliveryError::NoSuchUser(_)) => Verdict::Reject(format!(
            "550 5.1.1 <{}>: Recipient address rejected: User unknown",
            postoffice_smtp::server::sanitize(address)
        )),
        Err(e) => Verdict::Reject(e.smtp_reply()),
    }
}

/// Verify and store the message the session holds; returns the reply.
async fn deliver(conn: &mut Conn) -> String {
    let id = queue_id();
    let (env, body) = conn.session.message();
    let env = env.clone();
    let size = body.len();
    let ctx = MessageContext {
        ip: conn.peer.ip(),
        helo: &env.helo,
        mail_from: &env.mail_from,
        receiver_hostname: &conn.shared.config.hostname,
        connect_tags: &conn.connect_tags,
    };
    let verdict = conn.shared.filters.check_message(&ctx, body).await;
    let trace = trace_headers(&Trace {
        helo: &env.helo,
        ip: conn.peer.ip(),
        hostname: &conn.shared.config.hostname,
        esmtp: env.esmtp,
        tls: conn.tls_version.as_deref(),
        authenticated: false,
        id: &id,
        mail_from: &env.mail_from,
        rcpt_to: &env.rcpt_to,
        time: SystemTime::now(),
    });
    let body = crate::headers::strip_forged(body, &conn.shared.config.hostname);
    let mut message = Vec::with_capacity(trace.len() + verdict.headers.len() + size);
    message.extend_from_slice(trace.as_bytes());
    message.extend_from_slice(verdict.headers.as_bytes());
    message.extend_from_slice(&body);
    let rcpts = env.rcpt_to.clone();
    let (reply, result) = match verdict.action {
        MessageAction::Reject { reply } => (reply, "rejected"),
        MessageAction::TempFail { reply } => (reply, "tempfail"),
        action => {
            let quarantine = matches!(action, MessageAction::Quarantine { .. });
            let shared = Arc::clone(&conn.shared);
            let stored = tokio::task::spawn_blocking(move || {
                let local = Local {
                    config: &shared.config,
                    directory: &shared.directory,
                    store: &shared.store,
                };
                if quarantine {
                    local.quarantine(&rcpts, &message).map(|_| ())
                } else {
                    local.deliver(&rcpts, &message).map(|_| ())
                }
            })
            .await;
            match stored {
                Ok(Ok(())) if quarantine => {
                    (format!("250 2.0.0 OK id={id} (quarantined)"), "quarantined")
                }
                Ok(Ok(())) => (format!("250 2.0.0 OK id={id}"), "delivered"),
                Ok(Err(e)) => {
                    warn!(error = %e, id, "delivery failed");
                    (e.smtp_reply(), "failed")
                }
                Err(e) => {
                    warn!(error = %e, id, "delivery task failed");
                    (
                        "451 4.3.0 Temporary local problem, try again later".to_string(),
                        "failed",
                    )
                }
            }
        }
    };
    let c = &conn.shared.counters;
    crate::metrics::inc(match result {
        "delivered" => &c.smtp_delivered,
        "quarantined" => &c.smtp_quarantined,
        "rejected" => &c.smtp_rejected,
        _ => &c.smtp_tempfailed,
    });
    info!(
        id,
        ip = %conn.peer.ip(),
        helo = %env.helo,
        from = %env.mail_from,
        rcpts = %env.rcpt_to.join(","),
        size,
        tls = conn.tls_version.is_some(),
        connect = %conn.connect_tags.join(","),
        verdict = %verdict.summary,
        result,
        %reply,
        "smtp transaction"
    );
    debug!(id, "reply sent");
    reply
}
