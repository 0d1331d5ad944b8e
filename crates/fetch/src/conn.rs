//! The byte stream under the client: TCP or TLS, a read buffer, a line
//! length limit, a timeout on every read and write, and a deadline for the
//! whole session.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pop3_proto::client_codec::StreamDecoder;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::error::{Error, Limit, Result};

/// The end of a session: every network wait (connect, TLS handshake, read,
/// write) is cut short there, whatever its own timeout. Without it a
/// server trickling one byte just inside every read timeout could hold
/// the client forever.
#[derive(Debug, Clone)]
pub(crate) struct Deadline {
    at: Option<tokio::time::Instant>,
    total: Duration,
    server: String,
}

impl Deadline {
    /// A deadline `total` from now (`None`: no deadline) for a session with
    /// `server` (named in the error).
    pub(crate) fn new(server: &str, total: Option<Duration>) -> Self {
        Deadline {
            at: total.and_then(|t| tokio::time::Instant::now().checked_add(t)),
            total: total.unwrap_or(Duration::MAX),
            server: server.to_string(),
        }
    }

    fn error(&self) -> Error {
        Error::LimitExceeded {
            server: self.server.clone(),
            limit: Limit::SessionDeadline(self.total),
        }
    }

    /// Run `fut` for at most `limit` and never past the deadline:
    /// [`Error::Timeout`] when `limit` runs out first,
    /// [`Error::LimitExceeded`] when the deadline does.
    pub(crate) async fn within<T>(
        &self,
        limit: Duration,
        fut: impl Future<Output = T>,
    ) -> Result<T> {
        let left = match self.at {
            Some(at) => at.saturating_duration_since(tokio::time::Instant::now()),
            None => Duration::MAX,
        };
        if left.is_zero() {
            return Err(self.error());
        }
        if left < limit {
            tokio::time::timeout(left, fut)
                .await
                .map_err(|_| self.error())
        } else {
            tokio::time::timeout(limit, fut)
                .await
                .map_err(|_| Error::Timeout(limit))
        }
    }
}

/// Size of the read buffer, and so the largest chunk ever handed to a
/// message sink.
pub(crate) const READ_BUF: usize = 64 * 1024;

pub(crate) enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A buffered connection. Every read and write is bounded by `timeout`
/// and by the session's `deadline`; lines are bounded by `max_line`.
pub(crate) struct Conn {
    io: Option<Transport>,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    timeout: Duration,
    deadline: Deadline,
    max_line: usize,
}

impl Conn {
    pub(crate) fn new(
        io: Transport,
        timeout: Duration,
        deadline: Deadline,
        max_line: usize,
    ) -> Self {
        Conn {
            io: Some(io),
            buf: vec![0; READ_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            timeout,
            deadline,
            // A line must fit in the buffer with its CRLF.
            max_line: max_line.clamp(64, READ_BUF - 2),
        }
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self.io, Some(Transport::Tls(_)))
    }

    /// Bytes received but not consumed yet.
    pub(crate) fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Take the plain TCP stream out for a TLS upgrade.
    pub(crate) fn take_plain(&mut self) -> Option<TcpStream> {
        match self.io.take() {
            Some(Transport::Plain(s)) => Some(s),
            other => {
                self.io = other;
                None
            }
        }
    }

    pub(crate) fn set_transport(&mut self, io: Transport) {
        self.io = Some(io);
        self.start = 0;
        self.end = 0;
    }

    /// Drop the transport: later operations fail with [`Error::Poisoned`].
    pub(crate) fn poison(&mut self) {
        self.io = None;
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.io.is_none()
    }

    async fn fill(&mut self) -> Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let io = self.io.as_mut().ok_or(Error::Poisoned)?;
        let n = self
            .deadline
            .within(self.timeout, io.read(&mut self.buf[self.end..]))
            .await?
            .map_err(Error::Io)?;
        if n == 0 {
            return Err(Error::Closed);
        }
        self.end += n;
        Ok(())
    }

    /// The next line, without its line end (CRLF or bare LF).
    pub(crate) async fn read_line(&mut self) -> Result<Vec<u8>> {
        let mut scanned = 0;
        loop {
            let pending = &self.buf[self.start..self.end];
            if let Some(p) = memchr::memchr(b'\n', &pending[scanned..]) {
                let p = scanned + p;
                let mut line = &pending[..p];
                if let [rest @ .., b'\r'] = line {
                    line = rest;
                }
                let line = line.to_vec();
                self.start += p + 1;
                return Ok(line);
            }
            scanned = pending.len();
            if pending.len() > self.max_line + 1 {
                return Err(Error::LineTooLong(self.max_line));
            }
            self.fill().await?;
        }
    }

    /// Stream a multi-line response body into `sink`, dot-stuffing
    /// removed, in chunks of at most [`READ_BUF`] (+1) bytes. Fails with
    /// `too_large()` as soon as the body passes `limit` bytes (the rest is
    /// left unread: the caller must drop the connection). A failing sink
    /// does not stop the reading: the body is drained so the session stays
    /// usable, and the sink's error is returned as [`Error::Sink`] at the
    /// end.
    pub(crate) async fn read_body<W: Write + ?Sized>(
        &mut self,
        sink: &mut W,
        limit: u64,
        too_large: impl FnOnce() -> Error,
    ) -> Result<u64> {
        let mut dec = StreamDecoder::new();
        let mut out = Vec::with_capacity(READ_BUF + 1);
        let mut total: u64 = 0;
        let mut sink_error = None;
        loop {
            if self.start == self.end {
                self.fill().await?;
            }
            out.clear();
            let used = dec.decode(&self.buf[self.start..self.end], &mut out);
            self.start += used;
            total += out.len() as u64;
            if total > limit {
                return Err(too_large());
            }
            if sink_error.is_none()
                && !out.is_empty()
                && let Err(e) = sink.write_all(&out)
            {
                sink_error = Some(e);
            }
            if dec.is_finished() {
                break;
            }
        }
        if sink_error.is_none()
            && let Err(e) = sink.flush()
        {
            sink_error = Some(e);
        }
        match sink_error {
            Some(e) => Err(Error::Sink(e)),
            None => Ok(total),
        }
    }

    pub(crate) async fn send(&mut self, data: &[u8]) -> Result<()> {
        let io = self.io.as_mut().ok_or(Error::Poisoned)?;
        self.deadline
            .within(self.timeout, async {
                io.write_all(data).await?;
                io.flush().await
            })
            .await?
            .map_err(Error::Io)
    }

    /// Close the write side politely (TLS close_notify), best effort.
    pub(crate) async fn shutdown(&mut self) {
        if let Some(io) = self.io.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(2), io.shutdown()).await;
        }
    }
}
