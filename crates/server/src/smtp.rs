//! One SMTP connection (MX or submission): the glue between a socket and
//! the sans-IO [`ServerSession`]. What to accept and what to do with a
//! message is decided by the core ([`postoffice_core::inbound`],
//! [`postoffice_core::submission`]).
//!
//! Replies are batched: the session consumes everything the client has
//! pipelined and the output goes out when input runs dry (RFC 2920). A
//! message gets `250` only after it is fsynced into every recipient's
//! maildrop (or the spool); anything else it gets is a 4xx/5xx and nothing
//! is stored.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postoffice_common::content::{Content, SpoolWriter};
use postoffice_core::sessions::SessionHandle;
use postoffice_core::{App, inbound, metrics, submission};
use postoffice_filter::{ConnectVerdict, SenderVerdict};
use postoffice_smtp::{Action, ServerSession, SessionConfig, Verdict};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::Shared;
use crate::shutdown::Shutdown;

const READ_BUF: usize = 16 * 1024;

/// Which service a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Port 25: mail for local users from anyone, verified by the pipeline.
    Mx,
    /// Ports 587 (STARTTLS) / 465 (implicit TLS): our users' outgoing mail,
    /// after AUTH.
    Submission {
        /// Port 465: TLS from the first byte.
        implicit_tls: bool,
    },
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
    /// The content of the transaction in progress, taken from the session
    /// as it arrives (memory while small, else the spool file).
    content: Option<SpoolWriter>,
    /// Spooling the content failed (disk full): the transaction gets 452.
    content_failed: bool,
    /// This session in the live list (dropping it removes it).
    handle: SessionHandle,
}

/// Content is taken from the session once this much is buffered (and at
/// the end): the session never holds more than about this plus one read.
const TAKE_CONTENT_AT: usize = 64 * 1024;

impl Conn {
    /// Move the content the session has buffered into the transaction's
    /// spool writer (`at_end`: all of it; otherwise once enough is
    /// buffered). A session back to no content (a new transaction, or a
    /// refused one) drops the writer.
    fn take_content(&mut self, app: &App, at_end: bool) {
        if self.session.content_received() == 0 {
            self.content = None;
            self.content_failed = false;
            return;
        }
        let pending = self.session.pending_content();
        if pending.is_empty() || (!at_end && pending.len() < TAKE_CONTENT_AT) {
            return;
        }
        if !self.content_failed {
            let result = match &mut self.content {
                Some(w) => w.write(pending),
                None => app.spool_writer().and_then(|mut w| {
                    w.write(pending)?;
                    self.content = Some(w);
                    Ok(())
                }),
            };
            if let Err(e) = result {
                warn!(error = %e, "cannot spool the message; it will get 452");
                self.content = None;
                self.content_failed = true;
            }
        }
        self.session.content_taken();
    }
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
    let config = &shared.app.config;
    let cfg = &config.smtp;
    let submission = matches!(mode, Mode::Submission { .. });
    let implicit_tls = matches!(mode, Mode::Submission { implicit_tls: true });
    let session = ServerSession::new(SessionConfig {
        hostname: config.hostname.clone(),
        max_message_size: usize::try_from(cfg.max_message_size).unwrap_or(usize::MAX),
        max_recipients: cfg.max_recipients,
        max_line_length: cfg.max_line_length,
        max_errors: cfg.max_errors,
        starttls_available: shared.tls.is_some(),
        tls_active: implicit_tls,
        submission,
        plaintext_auth: submission
            && config.submission.allow_plaintext_auth_loopback
            && peer.ip().is_loopback(),
        header_limits: postoffice_smtp::data::HeaderLimits {
            max_fields: cfg.max_header_fields,
            max_bytes: cfg.max_header_bytes,
        },
    });
    let protocol = match mode {
        Mode::Mx => metrics::protocol::SMTP,
        Mode::Submission { implicit_tls: true } => metrics::protocol::SUBMISSIONS,
        Mode::Submission { .. } => metrics::protocol::SUBMISSION,
    };
    let handle = shared.app.sessions.open(protocol, peer, implicit_tls);
    let mut conn = Conn {
        handle,
        mode,
        shared: Arc::clone(&shared),
        peer,
        session,
        out: Vec::with_capacity(512),
        input: Vec::new(),
        tls_version: None,
        connect_tags: Vec::new(),
        content: None,
        content_failed: false,
    };
    let timeout = Duration::from_secs(config.limits.tls_handshake_timeout_secs);
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
        } else if let Err(reply) = shared.app.rate_limits.connection(peer.ip()) {
            // 421: the reply instead of the greeting, then close (RFC 5321
            // 3.8); the client retries later.
            let m = &shared.app.metrics;
            m.connections_refused
                .inc([metrics::protocol::SMTP, metrics::reason::RATE_LIMIT]);
            m.smtp_rejections.inc(["mx", metrics::reason::RATE_LIMIT]);
            info!(ip = %peer.ip(), %reply, "smtp connection refused: rate limit");
            let mut tcp = tcp;
            reply.write_to(&mut conn.out);
            let _ = tokio::time::timeout(timeout, flush(&mut tcp, &mut conn.out)).await;
            let _ = tcp.shutdown().await;
            return;
        } else {
            match shared.app.filters.check_connect(peer.ip()).await {
                ConnectVerdict::Accept { tags } => {
                    conn.connect_tags = tags;
                    conn.session.greeting(&mut conn.out);
                }
                ConnectVerdict::Reject { reply, stage } => {
                    info!(ip = %peer.ip(), %reply, "smtp connection refused by policy");
                    let m = &shared.app.metrics;
                    m.connections_refused
                        .inc([metrics::protocol::SMTP, stage.as_str()]);
                    let reason = match stage {
                        postoffice_filter::Stage::Dnsbl => metrics::reason::DNSBL,
                        _ => metrics::reason::IP_BLOCK,
                    };
                    m.smtp_rejections.inc(["mx", reason]);
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
                    conn.handle.set_tls();
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
    let app = Arc::clone(&conn.shared.app);
    let cmd_timeout = Duration::from_secs(app.config.smtp.command_timeout_secs);
    let data_timeout = Duration::from_secs(app.config.smtp.data_timeout_secs);
    let mut buf = vec![0u8; READ_BUF];
    loop {
        // Process everything buffered. The buffer is moved out of `conn`
        // so the session can consume it while `conn` is borrowed mutably.
        let owned = std::mem::take(&mut conn.input);
        let mut slice: &[u8] = &owned;
        loop {
            let action = conn.session.handle(&mut slice, &mut conn.out);
            conn.take_content(&app, action == Action::Deliver);
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
                        Mode::Mx => match app
                            .rate_limits
                            .message(conn.peer.ip())
                            .map(|()| app.filters.check_sender(&address))
                        {
                            Err(reply) => {
                                app.metrics
                                    .smtp_rejections
                                    .inc(["mx", metrics::reason::RATE_LIMIT]);
                                Verdict::Reject(reply)
                            }
                            Ok(SenderVerdict::Accept) => Verdict::Accept,
                            Ok(SenderVerdict::Reject { reply }) => {
                                app.metrics
                                    .smtp_rejections
                                    .inc(["mx", metrics::reason::SENDER_BLOCK]);
                                Verdict::Reject(reply)
                            }
                        },
                        Mode::Submission { .. } => {
                            let user = conn.session.envelope().authenticated.as_deref();
                            submission::sender_verdict(&app, user.unwrap_or(""), &address)
                        }
                    };
                    conn.session.sender_checked(v, &mut conn.out);
                }
                Action::CheckRecipient { address } => {
                    let v = match conn.mode {
                        Mode::Mx => match inbound::recipient_verdict(&app, &address) {
                            Verdict::Accept => match &app.greylist {
                                Some(g) => match g.check(
                                    conn.peer.ip(),
                                    &conn.session.envelope().mail_from,
                                    &address,
                                ) {
                                    Ok(()) => Verdict::Accept,
                                    Err(reply) => {
                                        app.metrics
                                            .smtp_rejections
                                            .inc(["mx", metrics::reason::GREYLIST]);
                                        Verdict::Reject(reply)
                                    }
                                },
                                None => Verdict::Accept,
                            },
                            other => other,
                        },
                        Mode::Submission { .. } => submission::recipient_verdict(&app, &address),
                    };
                    conn.session.recipient_checked(address, v, &mut conn.out);
                }
                Action::Authenticate { user, password } => {
                    if flush(&mut io, &mut conn.out).await.is_err() {
                        return Step::Done("disconnected");
                    }
                    let result = app.authenticate(&user, password, conn.peer.ip()).await.ok();
                    let outcome = if result.is_some() { "ok" } else { "failed" };
                    app.metrics
                        .logins
                        .inc([metrics::protocol::SUBMISSION, outcome]);
                    if let Some(user) = &result {
                        conn.handle.set_user(user);
                    }
                    conn.session.auth_result(result, &mut conn.out);
                }
                Action::Deliver => {
                    // Let the client see the earlier replies while we work.
                    if flush(&mut io, &mut conn.out).await.is_err() {
                        return Step::Done("disconnected");
                    }
                    let id = postoffice_common::ids::unique_id();
                    let failed = std::mem::take(&mut conn.content_failed);
                    let body = conn
                        .content
                        .take()
                        .map_or_else(|| Content::from_vec(Vec::new()), SpoolWriter::finish);
                    let env = conn.session.envelope();
                    let body = &body;
                    let reply = match conn.mode {
                        _ if failed => insufficient_storage(),
                        Mode::Mx => {
                            let message = inbound::Message {
                                id: &id,
                                ip: conn.peer.ip(),
                                helo: &env.helo,
                                esmtp: env.esmtp,
                                tls: conn.tls_version.as_deref(),
                                mail_from: &env.mail_from,
                                rcpt_to: &env.rcpt_to,
                                connect_tags: &conn.connect_tags,
                                body,
                            };
                            inbound::deliver(&app, message).await.0
                        }
                        Mode::Submission { .. } => {
                            submission::submit(
                                &app,
                                conn.peer.ip(),
                                conn.tls_version.as_deref(),
                                env,
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
                    conn.session.timed_out(&mut conn.out);
                    let _ = flush(&mut io, &mut conn.out).await;
                    return Step::Done("timeout");
                }
            },
            _ = shutdown.recv() => {
                // Between commands or mid-data: nothing was accepted yet, so
                // the client will retry the message elsewhere or later.
                conn.session.shutting_down(&mut conn.out);
                let _ = flush(&mut io, &mut conn.out).await;
                return Step::Done("shutdown");
            }
        };
        conn.input.extend_from_slice(&buf[..n]);
    }
}

/// `452 4.3.1`: the message could not be spooled (the disk is full); the
/// client keeps it and tries again later.
fn insufficient_storage() -> postoffice_smtp::Reply {
    postoffice_smtp::Reply::new(
        postoffice_smtp::codes::INSUFFICIENT_STORAGE,
        postoffice_smtp::status::SYSTEM_FULL,
        "Insufficient system storage, try again later",
    )
}
