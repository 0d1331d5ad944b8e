//! One POP3 connection: the glue between a socket and the sans-IO session.
//!
//! The loop is: read what the client sent, frame it into lines, feed every
//! complete line to the [`ServerSession`] in order (that is all PIPELINING
//! needs), and write the replies in one go once no complete line is left.
//! The session asks for the outside world through [`Action`]s, which are
//! carried out here: logins (directory, throttle, maildrop lock), STLS,
//! streaming RETR/TOP from the store, and the UPDATE state after QUIT.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pop3_proto::server::{Advertised, AuthFailure, Expire, Stats, UserPolicy};
use pop3_proto::{Action, BodyEncoder, LineBuffer, Listing, ServerSession, SessionConfig};
use postoffice_store::{Maildrop, MessageInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::shutdown::Shutdown;
use crate::state::{LoginError, Shared};

/// Read buffer per connection. Commands are short; 4 KiB keeps an idle
/// session small while still taking a pipelined burst in one read.
const READ_BUF: usize = 4096;
/// Messages up to this size are read in one go; larger ones stream in
/// chunks of this size, so a large RETR costs at most ~2x this in memory.
const CHUNK: usize = 256 * 1024;
/// Flush the reply buffer once it grows past this (long LIST/UIDL).
const FLUSH_AT: usize = 64 * 1024;

/// The store's snapshot as the protocol sees it.
struct View(Arc<dyn Maildrop>);

impl Listing for View {
    fn count(&self) -> usize {
        self.0.messages().len()
    }
    fn size(&self, index: usize) -> u64 {
        self.0
            .messages()
            .get(index)
            .map_or(0, |m: &MessageInfo| m.size)
    }
    fn uid(&self, index: usize) -> &str {
        self.0.messages().get(index).map_or("", |m| m.uid.as_str())
    }
}

/// How a session ended, for the summary line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Quit,
    Disconnected,
    Timeout,
    Shutdown,
    Error,
}

/// Connection state that survives an STLS upgrade.
struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    session: ServerSession,
    lines: LineBuffer,
    out: Vec<u8>,
    maildrop: Option<Arc<dyn Maildrop>>,
    bytes_in: u64,
    bytes_out: u64,
    auth_failures: u32,
}

enum Step<S> {
    Done(End),
    StartTls(S),
}

/// Serve one accepted POP3 connection until it ends.
pub async fn serve_connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
    mut shutdown: Shutdown,
) {
    let started = Instant::now();
    let _ = tcp.set_nodelay(true);
    let plaintext_auth = shared.config.pop3.allow_plaintext_auth || peer.ip().is_loopback();
    let (expire, delay) = shared.capa_summary();
    let cfg = SessionConfig {
        greeting: shared.config.pop3.greeting.clone(),
        implementation: "postoffice".into(),
        tls_active: implicit_tls,
        stls_available: shared.tls.is_some(),
        plaintext_auth,
        expire: Advertised {
            value: expire.min_days.map_or(Expire::Never, Expire::Days),
            per_user: expire.varies,
        },
        login_delay: Advertised {
            value: delay.min_secs,
            per_user: delay.varies,
        },
        max_bad_commands: shared.config.pop3.max_bad_commands,
    };
    let mut conn = Conn {
        lines: LineBuffer::new(shared.config.pop3.max_line_length),
        session: ServerSession::new(cfg),
        shared,
        peer,
        out: Vec::with_capacity(512),
        maildrop: None,
        bytes_in: 0,
        bytes_out: 0,
        auth_failures: 0,
    };
    let handshake = Duration::from_secs(conn.shared.config.limits.tls_handshake_timeout_secs);
    let end = if implicit_tls {
        match crate::tls::accept(&conn.shared, tcp, handshake).await {
            Some(tls) => {
                conn.session.greeting(&mut conn.out);
                match drive(tls, &mut conn, &mut shutdown).await {
                    Step::Done(e) => e,
                    Step::StartTls(_) => End::Error,
                }
            }
            None => End::Error,
        }
    } else {
        conn.session.greeting(&mut conn.out);
        match drive(tcp, &mut conn, &mut shutdown).await {
            Step::Done(e) => e,
            Step::StartTls(tcp) => match crate::tls::accept(&conn.shared, tcp, handshake).await {
                Some(tls) => {
                    conn.session.tls_started();
                    match drive(tls, &mut conn, &mut shutdown).await {
                        Step::Done(e) => e,
                        Step::StartTls(_) => End::Error,
                    }
                }
                None => End::Error,
            },
        }
    };
    let Stats {
        retr,
        retr_bytes,
        top,
        dele,
        dele_bytes,
        bad_commands,
    } = conn.session.stats();
    let c = &conn.shared.counters;
    crate::metrics::inc(&c.pop3_sessions);
    crate::metrics::add(&c.pop3_retr, retr);
    crate::metrics::add(&c.pop3_deleted, dele);
    // One summary line per session, as Dovecot logs it.
    info!(
        user = conn.session.user().unwrap_or("-"),
        ip = %conn.peer.ip(),
        tls = conn.session.tls_active(),
        end = ?end,
        retr, retr_bytes, top, dele, dele_bytes, bad_commands,
        auth_failures = conn.auth_failures,
        bytes_in = conn.bytes_in,
        bytes_out = conn.bytes_out,
        duration_ms = started.elapsed().as_millis() as u64,
        "pop3 session"
    );
}

async fn flush<S: AsyncWrite + Unpin>(io: &mut S, conn: &mut Conn) -> std::io::Result<()> {
    if !conn.out.is_empty() {
        io.write_all(&conn.out).await?;
        conn.bytes_out += conn.out.len() as u64;
        conn.out.clear();
        if conn.out.capacity() > FLUSH_AT * 2 {
            conn.out.shrink_to(4096);
        }
    }
    io.flush().await
}

/// Run the session over one transport until it ends or asks for STLS.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    conn: &mut Conn,
    shutdown: &mut Shutdown,
) -> Step<S> {
    let autologout = Duration::from_secs(conn.shared.config.pop3.autologout_secs);
    let mut buf = [0u8; READ_BUF];
    loop {
        // Answer every complete line we have, in order.
        loop {
            let mark = conn.out.len();
            let action = match conn.lines.next_frame() {
                Some(frame) => conn.session.handle(frame, &mut conn.out),
                None => break,
            };
            match action {
                Action::None => {}
                Action::Close => {
                    let _ = flush(&mut io, conn).await;
                    let _ = io.shutdown().await;
                    return Step::Done(End::Quit);
                }
                Action::StartTls => {
                    if flush(&mut io, conn).await.is_err() {
                        return Step::Done(End::Disconnected);
                    }
                    // Anything pipelined behind STLS arrived in plaintext and
                    // must not be executed inside TLS.
                    conn.lines.clear();
                    return Step::StartTls(io);
                }
                Action::Authenticate {
                    user,
                    password,
                    mechanism,
                } => {
                    // Send what is queued before the (possibly slow) check.
                    if flush(&mut io, conn).await.is_err() {
                        return Step::Done(End::Disconnected);
                    }
                    if login(conn, user, password, mechanism).await == Action::Close {
                        // Too many failures on this connection.
                        let _ = flush(&mut io, conn).await;
                        let _ = io.shutdown().await;
                        return Step::Done(End::Error);
                    }
                }
                Action::Retrieve { index, top } => {
                    if let Err(e) = retrieve(&mut io, conn, index, top, mark).await {
                        debug!(error = %e, "connection lost during RETR");
                        return Step::Done(End::Disconnected);
                    }
                }
                Action::Update { deleted } => {
                    let result = update(conn, deleted).await;
                    conn.session.update_finished(result, &mut conn.out);
                    conn.maildrop = None;
                    let _ = flush(&mut io, conn).await;
                    let _ = io.shutdown().await;
                    return Step::Done(End::Quit);
                }
            }
            if conn.out.len() >= FLUSH_AT && flush(&mut io, conn).await.is_err() {
                return Step::Done(End::Disconnected);
            }
        }
        if flush(&mut io, conn).await.is_err() {
            return Step::Done(End::Disconnected);
        }
        let n = tokio::select! {
            r = tokio::time::timeout(autologout, io.read(&mut buf)) => match r {
                Ok(Ok(0)) => return Step::Done(End::Disconnected),
                Ok(Ok(n)) => n,
                Ok(Err(_)) => return Step::Done(End::Disconnected),
                Err(_) => {
                    conn.out.extend_from_slice(b"-ERR Autologout; idle for too long.\r\n");
                    let _ = flush(&mut io, conn).await;
                    return Step::Done(End::Timeout);
                }
            },
            _ = shutdown.recv() => {
                // Idle between commands: nothing is half done. Say goodbye;
                // deletions are not applied (no QUIT was received).
                conn.out.extend_from_slice(b"-ERR [SYS/TEMP] Server shutting down.\r\n");
                let _ = flush(&mut io, conn).await;
                return Step::Done(End::Shutdown);
            }
        };
        conn.bytes_in += n as u64;
        conn.lines.extend(&buf[..n]);
    }
}

/// Carry out a login; returns the session's follow-up action (`Close` when
/// the failure was one too many).
async fn login(
    conn: &mut Conn,
    user: String,
    password: Vec<u8>,
    mechanism: &'static str,
) -> Action {
    let shared = Arc::clone(&conn.shared);
    match shared.login(&user, password, conn.peer.ip()).await {
        Ok(ok) => {
            debug!(user = %ok.address, mechanism, "login");
            crate::metrics::inc(&conn.shared.counters.pop3_logins);
            let listing: Arc<dyn Listing> = Arc::new(View(Arc::clone(&ok.maildrop)));
            conn.maildrop = Some(ok.maildrop);
            conn.session.login_succeeded(
                ok.address,
                listing,
                UserPolicy {
                    expire: ok.retention_days.map_or(Expire::Never, Expire::Days),
                    login_delay: ok.login_delay_secs,
                },
                &mut conn.out,
            );
            Action::None
        }
        Err(e) => {
            crate::metrics::inc(&conn.shared.counters.pop3_login_failures);
            let why = match e {
                LoginError::Credentials => {
                    conn.auth_failures += 1;
                    AuthFailure::Credentials
                }
                LoginError::InUse => AuthFailure::InUse,
                LoginError::LoginDelay => AuthFailure::LoginDelay,
                LoginError::Temp => AuthFailure::TempFail,
                LoginError::Perm => AuthFailure::PermFail,
            };
            conn.session.login_failed(why, &mut conn.out)
        }
    }
}

/// Stream one message after the `+OK` the session queued at `mark`.
async fn retrieve<S: AsyncWrite + Unpin>(
    io: &mut S,
    conn: &mut Conn,
    index: usize,
    top: Option<u64>,
    mark: usize,
) -> std::io::Result<()> {
    let Some(maildrop) = conn.maildrop.clone() else {
        conn.out.truncate(mark);
        conn.out
            .extend_from_slice(b"-ERR [SYS/TEMP] Maildrop not open.\r\n");
        return Ok(());
    };
    let size = maildrop.messages().get(index).map_or(0, |m| m.size) as usize;
    let first = size.min(CHUNK);
    // Open and read the first chunk off the async threads.
    let opened = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut reader = maildrop.open_message(index)?;
        let mut buf = Vec::new();
        read_chunk(&mut reader, &mut buf, first + 1)?;
        Ok((reader, buf))
    })
    .await;
    let (mut reader, mut chunk) = match opened {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            // Nothing of the reply has been sent yet: replace the +OK.
            warn!(error = %e, index, "message unavailable");
            conn.out.truncate(mark);
            conn.out
                .extend_from_slice(b"-ERR [SYS/TEMP] Message is unavailable; try again later.\r\n");
            return Ok(());
        }
        Err(_) => {
            conn.out.truncate(mark);
            conn.out
                .extend_from_slice(b"-ERR [SYS/TEMP] Internal error.\r\n");
            return Ok(());
        }
    };
    let mut enc = match top {
        Some(n) => BodyEncoder::top(n),
        None => BodyEncoder::retr(),
    };
    // A short read means end of file: small messages need one read only.
    let mut requested = first + 1;
    loop {
        let eof = chunk.len() < requested;
        enc.encode(&chunk, &mut conn.out);
        if eof || enc.is_done() {
            break;
        }
        if conn.out.len() >= FLUSH_AT {
            flush(io, conn).await?;
        }
        let (r, c) = tokio::task::spawn_blocking(move || {
            let mut c = chunk;
            let res = read_chunk(&mut reader, &mut c, CHUNK);
            (reader, c, res)
        })
        .await
        .map(|(r, c, res)| res.map(|_| (r, c)))
        .map_err(std::io::Error::other)??;
        reader = r;
        chunk = c;
        requested = CHUNK;
    }
    enc.finish(&mut conn.out);
    Ok(())
}

/// Fill `buf` (cleared first) with up to `max` bytes; empty means EOF.
fn read_chunk(
    reader: &mut Box<dyn Read + Send>,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<()> {
    buf.clear();
    reader.by_ref().take(max as u64).read_to_end(buf)?;
    Ok(())
}

/// The UPDATE state: apply deletions durably.
async fn update(conn: &mut Conn, deleted: Vec<usize>) -> Result<(), ()> {
    let Some(maildrop) = conn.maildrop.clone() else {
        return if deleted.is_empty() { Ok(()) } else { Err(()) };
    };
    if deleted.is_empty() {
        return Ok(());
    }
    // spawn_blocking work runs to completion even if this task is aborted
    // at the shutdown deadline, so an UPDATE is never half-applied by us.
    match tokio::task::spawn_blocking(move || maildrop.commit(&deleted)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            warn!(error = %e, "UPDATE failed");
            Err(())
        }
        Err(_) => Err(()),
    }
}
