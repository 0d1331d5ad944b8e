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
use pop3_proto::{
    Action, BodyEncoder, CrlfStuffer, LineBuffer, Listing, ServerSession, SessionConfig,
};
use postoffice_store::{Maildrop, MessageInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use postoffice_core::sessions::SessionHandle;
use postoffice_core::{LoginError, metrics};

use crate::Shared;
use crate::shutdown::Shutdown;

/// Read buffer per connection. Commands are short; 4 KiB keeps an idle
/// session small while still taking a pipelined burst in one read.
const READ_BUF: usize = 4096;
/// Messages up to this size are read in one go; larger ones stream in
/// chunks of this size, so a large RETR costs at most ~2x this in memory.
const CHUNK: usize = 128 * 1024;
/// Flush the reply buffer once it grows past this (long LIST/UIDL).
const FLUSH_AT: usize = 64 * 1024;
/// RETR chunks at least this big that need no dot-stuffing are written to
/// the socket from the read buffer instead of being copied into the reply
/// buffer (smaller messages go out with the replies around them).
const DIRECT_WRITE_MIN: usize = 32 * 1024;

/// A connection's byte stream, read without holding a buffer while idle.
///
/// An idle POP3 session spends its life waiting for the next command; a
/// read buffer kept across that wait would be most of its memory. Plain
/// TCP waits for readiness and then reads into a buffer on the stack that
/// is never part of the session's future; TLS keeps a buffer across the
/// wait (rustls may already hold decrypted bytes, so socket readiness is
/// not the whole story) and lives in its own boxed future.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {
    /// Read what is available into `lines`; `Ok(0)` at end of stream.
    fn read_lines(
        &mut self,
        lines: &mut LineBuffer,
    ) -> impl std::future::Future<Output = std::io::Result<usize>> + Send;
}

impl Transport for TcpStream {
    async fn read_lines(&mut self, lines: &mut LineBuffer) -> std::io::Result<usize> {
        loop {
            self.readable().await?;
            let mut buf = [0u8; READ_BUF];
            match self.try_read(&mut buf) {
                Ok(n) => {
                    lines.extend(&buf[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    async fn read_lines(&mut self, lines: &mut LineBuffer) -> std::io::Result<usize> {
        let mut buf = [0u8; READ_BUF];
        let n = self.read(&mut buf).await?;
        lines.extend(&buf[..n]);
        Ok(n)
    }
}

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
    /// Messages retrieved in full (RETR), recorded at the end of the
    /// session when the policy needs it ([`postoffice_core::App::tracks_retrieval`]).
    retrieved: Vec<usize>,
    bytes_in: u64,
    bytes_out: u64,
    auth_failures: u32,
    /// This session in the live list (dropping it removes it).
    handle: SessionHandle,
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
    let config = &shared.app.config;
    let plaintext_auth = config.pop3.allow_plaintext_auth || peer.ip().is_loopback();
    let (expire, delay) = shared.app.capa_summary();
    let cfg = SessionConfig {
        greeting: config.pop3.greeting.clone(),
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
        max_bad_commands: config.pop3.max_bad_commands,
    };
    let protocol = if implicit_tls {
        metrics::protocol::POP3S
    } else {
        metrics::protocol::POP3
    };
    let handle = shared.app.sessions.open(protocol, peer, implicit_tls);
    let mut conn = Conn {
        handle,
        lines: LineBuffer::new(config.pop3.max_line_length),
        session: ServerSession::new(cfg),
        shared,
        peer,
        out: Vec::new(),
        maildrop: None,
        retrieved: Vec::new(),
        bytes_in: 0,
        bytes_out: 0,
        auth_failures: 0,
    };
    let handshake = Duration::from_secs(conn.shared.app.config.limits.tls_handshake_timeout_secs);
    // The TLS parts are boxed: a plain session's future (what an idle
    // connection costs) then holds only a pointer for them.
    let end = if implicit_tls {
        Box::pin(async {
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
        })
        .await
    } else {
        conn.session.greeting(&mut conn.out);
        match drive(tcp, &mut conn, &mut shutdown).await {
            Step::Done(e) => e,
            Step::StartTls(tcp) => {
                Box::pin(async {
                    match crate::tls::accept(&conn.shared, tcp, handshake).await {
                        Some(tls) => {
                            conn.session.tls_started();
                            conn.handle.set_tls();
                            match drive(tls, &mut conn, &mut shutdown).await {
                                Step::Done(e) => e,
                                Step::StartTls(_) => End::Error,
                            }
                        }
                        None => End::Error,
                    }
                })
                .await
            }
        }
    };
    // A session that ended without QUIT: what it retrieved counts too.
    if let Some(maildrop) = conn.maildrop.take() {
        let retrieved = std::mem::take(&mut conn.retrieved);
        conn.shared.app.record_retrievals(maildrop, retrieved).await;
    }
    let Stats {
        retr,
        retr_bytes,
        top,
        dele,
        dele_bytes,
        bad_commands,
    } = conn.session.stats();
    let m = &conn.shared.app.metrics;
    m.pop3_retrieved.add([], retr as i64);
    m.pop3_retrieved_bytes.add([], retr_bytes as i64);
    m.pop3_deleted.add([], dele as i64);
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
async fn drive<S: Transport>(mut io: S, conn: &mut Conn, shutdown: &mut Shutdown) -> Step<S> {
    let autologout = Duration::from_secs(conn.shared.app.config.pop3.autologout_secs);
    loop {
        // Answer every complete line we have, in order.
        while let Some(frame) = conn.lines.next_frame() {
            let action = conn.session.handle(frame, &mut conn.out);
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
                    if Box::pin(login(conn, user, password, mechanism)).await == Action::Close {
                        // Too many failures on this connection.
                        let _ = flush(&mut io, conn).await;
                        let _ = io.shutdown().await;
                        return Step::Done(End::Error);
                    }
                }
                Action::Retrieve { index, top } => {
                    // Boxed (like the login below): their state would
                    // otherwise be part of every idle session's future.
                    if let Err(e) = Box::pin(retrieve(&mut io, conn, index, top)).await {
                        debug!(error = %e, "connection lost during RETR");
                        return Step::Done(End::Disconnected);
                    }
                }
                Action::Update { deleted } => {
                    if let Some(maildrop) = conn.maildrop.clone() {
                        let mut retrieved = std::mem::take(&mut conn.retrieved);
                        let gone: std::collections::HashSet<usize> =
                            deleted.iter().copied().collect();
                        retrieved.retain(|i| !gone.contains(i));
                        conn.shared.app.record_retrievals(maildrop, retrieved).await;
                    }
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
            r = tokio::time::timeout(autologout, io.read_lines(&mut conn.lines)) => match r {
                Ok(Ok(0)) => return Step::Done(End::Disconnected),
                Ok(Ok(n)) => n,
                Ok(Err(_)) => return Step::Done(End::Disconnected),
                Err(_) => {
                    conn.session.timed_out(&mut conn.out);
                    let _ = flush(&mut io, conn).await;
                    return Step::Done(End::Timeout);
                }
            },
            _ = shutdown.recv() => {
                // Idle between commands: nothing is half done. Say goodbye;
                // deletions are not applied (no QUIT was received).
                conn.session.shutting_down(&mut conn.out);
                let _ = flush(&mut io, conn).await;
                return Step::Done(End::Shutdown);
            }
        };
        conn.bytes_in += n as u64;
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
    let app = Arc::clone(&conn.shared.app);
    match app.login(&user, password, conn.peer.ip()).await {
        Ok(ok) => {
            debug!(user = %ok.address, mechanism, "login");
            app.metrics.logins.inc([metrics::protocol::POP3, "ok"]);
            conn.handle.set_user(&ok.address);
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
            app.metrics.logins.inc([metrics::protocol::POP3, "failed"]);
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

/// Open one message and stream it after the session's `+OK`.
async fn retrieve<S: AsyncWrite + Unpin>(
    io: &mut S,
    conn: &mut Conn,
    index: usize,
    top: Option<u64>,
) -> std::io::Result<()> {
    let Some(maildrop) = conn.maildrop.clone() else {
        conn.session.retrieve_failed(&mut conn.out);
        return Ok(());
    };
    let size = maildrop.messages().get(index).map_or(0, |m| m.size) as usize;
    let first = size.min(CHUNK);
    let local = maildrop.local_reads();
    // Open and read the first chunk. For a Maildrop this happens right
    // here, as nginx reads files in its event loop: the files are small and
    // usually in the page cache, and handing each RETR to the blocking pool
    // cost two thread switches per message, the largest item in the
    // RETR-all profile. A store that waits on the network uses the pool.
    // Later chunks of a big message are read on the blocking pool while
    // the previous one is being written.
    let open = move || -> anyhow::Result<_> {
        let mut reader = maildrop.open_message(index)?;
        let mut buf = Vec::new();
        read_chunk(&mut reader, &mut buf, first + 1)?;
        Ok((reader, buf))
    };
    let opened = if local {
        open()
    } else {
        tokio::task::spawn_blocking(open)
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("message read task failed: {e}")))
    };
    let (mut reader, mut chunk) = match opened {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, index, "message unavailable");
            conn.session.retrieve_failed(&mut conn.out);
            return Ok(());
        }
    };
    conn.session.retrieve_started(index, top, &mut conn.out);
    // A short read means end of file: small messages need one read only.
    let eof = chunk.len() <= first;
    if let Some(n) = top {
        let mut enc = BodyEncoder::top(n);
        let mut eof = eof;
        loop {
            enc.encode(&chunk, &mut conn.out);
            if eof || enc.is_done() {
                break;
            }
            if conn.out.len() >= FLUSH_AT {
                flush(io, conn).await?;
            }
            (reader, chunk) = read_next(reader, chunk).await?;
            eof = chunk.len() < CHUNK;
        }
        enc.finish(&mut conn.out);
        return Ok(());
    }
    // RETR: the store yields the message in CRLF form, so only the dots
    // need inserting. Big chunks without a line starting with '.' (nearly
    // all) go to the socket straight from the read buffer, and the next
    // chunk is read on the blocking pool while this one is being written.
    // At most two chunk buffers (+ the reply buffer when stuffing) per
    // session: memory stays well under 1 MB per large RETR.
    let mut stuffer = CrlfStuffer::new();
    let mut points = Vec::new();
    let mut spare = Vec::new();
    let mut eof = eof;
    loop {
        let next = (!eof).then(|| {
            let spare = std::mem::take(&mut spare);
            let mut r = reader_slot(&mut reader);
            tokio::task::spawn_blocking(move || {
                let mut c = spare;
                let res = read_chunk(&mut r, &mut c, CHUNK);
                (r, c, res)
            })
        });
        points.clear();
        stuffer.scan(&chunk, &mut points);
        if points.is_empty() && chunk.len() >= DIRECT_WRITE_MIN {
            write_out(io, conn).await?;
            io.write_all(&chunk).await?;
            conn.bytes_out += chunk.len() as u64;
        } else {
            CrlfStuffer::write_stuffed(&chunk, &points, &mut conn.out);
            if conn.out.len() >= FLUSH_AT {
                write_out(io, conn).await?;
            }
        }
        let Some(next) = next else { break };
        let (r, c, res) = next.await.map_err(std::io::Error::other)?;
        res?;
        reader = r;
        spare = std::mem::replace(&mut chunk, c);
        eof = chunk.len() < CHUNK;
    }
    stuffer.finish(&mut conn.out);
    if conn.shared.app.tracks_retrieval() {
        conn.retrieved.push(index);
    }
    // Keep no chunk-sized reply buffer in an idle session.
    if conn.out.capacity() > FLUSH_AT * 2 {
        conn.out.shrink_to(4096);
    }
    Ok(())
}

/// Take the reader out for a read on the blocking pool; a placeholder
/// stays behind until it comes back.
fn reader_slot(reader: &mut Box<dyn Read + Send>) -> Box<dyn Read + Send> {
    std::mem::replace(reader, Box::new(std::io::empty()))
}

/// Read the next chunk on the blocking pool (TOP).
async fn read_next(
    reader: Box<dyn Read + Send>,
    chunk: Vec<u8>,
) -> std::io::Result<(Box<dyn Read + Send>, Vec<u8>)> {
    let (r, c, res) = tokio::task::spawn_blocking(move || {
        let mut r = reader;
        let mut c = chunk;
        let res = read_chunk(&mut r, &mut c, CHUNK);
        (r, c, res)
    })
    .await
    .map_err(std::io::Error::other)?;
    res.map(|()| (r, c))
}

/// Write the reply buffer without flushing the transport (more follows).
async fn write_out<S: AsyncWrite + Unpin>(io: &mut S, conn: &mut Conn) -> std::io::Result<()> {
    if !conn.out.is_empty() {
        io.write_all(&conn.out).await?;
        conn.bytes_out += conn.out.len() as u64;
        conn.out.clear();
    }
    Ok(())
}

/// Fill `buf` (cleared first) with up to `max` bytes; empty means EOF.
fn read_chunk(
    reader: &mut Box<dyn Read + Send>,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<()> {
    buf.clear();
    buf.reserve_exact(max);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle session costs is mostly its task, whose size is this
    /// future's: no read buffer, no TLS state and no RETR or login state
    /// may be kept in it (those are boxed or on the stack).
    #[tokio::test]
    async fn a_plain_session_future_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let config = postoffice_config::Config {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let app = Arc::new(postoffice_core::App::new(config).unwrap());
        let shared = Arc::new(Shared::new(app, None));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let peer = tcp.local_addr().unwrap();
        let (_trigger, shutdown) = crate::shutdown::channel();
        let fut = serve_connection(shared, tcp, peer, false, shutdown);
        let size = std::mem::size_of_val(&fut);
        eprintln!("serve_connection future: {size} bytes");
        assert!(
            size <= 2048,
            "an idle POP3 session's future is {size} bytes"
        );
    }
}
