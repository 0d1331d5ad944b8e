//! A minimal, fast POP3 client connection for load generation.
//!
//! Replies are framed here (one growable buffer, `memchr` for line ends) and
//! parsed with `pop3-proto`: [`parse_status`] for status lines and
//! [`BodyDecoder`] to undo dot-stuffing in multi-line replies. Every
//! failure is classified as a [`SessErr`] so the report can count them.

use std::net::SocketAddr;

use memchr::memchr;
use pop3_proto::body::{BodyDecoder, Decoded};
use pop3_proto::client::{RespCode, Status, parse_status};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::report::{ErrKind, SessErr};
use crate::tls::{Handshake, TlsClient};

/// Initial read buffer. Large reads keep the generator's CPU use down
/// during RETR; the buffer grows only for lines longer than this.
const READ_BUF: usize = 128 * 1024;
/// A reply line longer than this is a protocol error (RFC 1939 allows
/// 512 octets for status lines; message lines are at most 998 + CRLF).
const MAX_LINE: usize = 4 * 1024 * 1024;
/// The header carrying the SHA-256 of the body in seeded messages.
pub const HASH_HEADER: &[u8] = b"X-Bench-Body-SHA256:";

/// One POP3 client connection.
pub struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// The transport: plain TCP, or TLS over it (implicit TLS, POP3S).
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(data).await,
            Stream::Tls(s) => {
                // A TLS stream buffers records: flush so the command is
                // actually sent before we wait for its reply.
                s.write_all(data).await?;
                s.flush().await
            }
        }
    }
}

/// What a RETR delivered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Body {
    /// Octets after removing dot-stuffing, counting CRLF as 2: what LIST
    /// announced if the message ends with CRLF (stored mail always does).
    pub octets: u64,
    /// `Some(matches)` when hashing was asked for and the message carried
    /// an `X-Bench-Body-SHA256` header; `None` otherwise.
    pub hash_ok: Option<bool>,
}

fn io_err(e: std::io::Error) -> SessErr {
    SessErr::new(ErrKind::Io, e)
}

impl Conn {
    /// Connect (TCP_NODELAY, like every mail client) without reading.
    pub async fn connect(addr: SocketAddr) -> Result<Conn, SessErr> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| SessErr::new(ErrKind::Connect, e))?;
        let _ = stream.set_nodelay(true);
        Ok(Conn::over(Stream::Plain(stream)))
    }

    fn over(stream: Stream) -> Conn {
        Conn {
            stream,
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
        }
    }

    /// Connect and complete a TLS handshake (implicit TLS, as on port
    /// 995) with `tls`'s client configuration, without reading. Returns
    /// whether the handshake was full or resumed.
    pub async fn connect_tls(
        addr: SocketAddr,
        tls: &TlsClient,
    ) -> Result<(Conn, Handshake), SessErr> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| SessErr::new(ErrKind::Connect, e))?;
        let _ = tcp.set_nodelay(true);
        let stream = tls
            .connector()
            .connect(tls.server_name(), tcp)
            .await
            .map_err(|e| SessErr::new(ErrKind::Tls, e))?;
        let kind = Handshake::of(stream.get_ref().1);
        Ok((Conn::over(Stream::Tls(Box::new(stream))), kind))
    }

    /// Connect and read the `+OK` greeting.
    pub async fn open(addr: SocketAddr) -> Result<Conn, SessErr> {
        let c = Conn::connect(addr).await?;
        c.greeted().await
    }

    /// Connect over TLS (see [`Conn::connect_tls`]) and read the greeting.
    pub async fn open_tls(addr: SocketAddr, tls: &TlsClient) -> Result<(Conn, Handshake), SessErr> {
        let (c, kind) = Conn::connect_tls(addr, tls).await?;
        Ok((c.greeted().await?, kind))
    }

    /// Read the `+OK` greeting.
    async fn greeted(mut self) -> Result<Conn, SessErr> {
        match self.status().await {
            Ok(Status::Ok(_)) => Ok(self),
            Ok(other) => Err(SessErr::new(ErrKind::Greeting, format!("{other:?}"))),
            Err(e) if e.kind == ErrKind::Protocol => Err(SessErr::new(ErrKind::Greeting, e)),
            Err(e) => Err(e),
        }
    }

    /// The next line, without its line end.
    pub async fn line(&mut self) -> Result<&[u8], SessErr> {
        loop {
            if let Some(pos) = memchr(b'\n', &self.buf[self.start..self.end]) {
                let begin = self.start;
                let mut stop = begin + pos;
                self.start = stop + 1;
                if stop > begin && self.buf[stop - 1] == b'\r' {
                    stop -= 1;
                }
                return Ok(&self.buf[begin..stop]);
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                if self.buf.len() >= MAX_LINE {
                    return Err(SessErr::new(
                        ErrKind::Protocol,
                        format!("reply line longer than {MAX_LINE} octets"),
                    ));
                }
                let len = self.buf.len();
                self.buf.resize(len * 2, 0);
            }
            let n = self
                .stream
                .read(&mut self.buf[self.end..])
                .await
                .map_err(io_err)?;
            if n == 0 {
                return Err(SessErr::new(ErrKind::Io, "server closed the connection"));
            }
            self.end += n;
        }
    }

    /// Send raw bytes (one or more complete command lines).
    pub async fn send(&mut self, data: &[u8]) -> Result<(), SessErr> {
        self.stream.write_all(data).await.map_err(io_err)
    }

    /// Read and parse one status line.
    pub async fn status(&mut self) -> Result<Status, SessErr> {
        let line = self.line().await?;
        parse_status(line).map_err(|e| SessErr::new(ErrKind::Protocol, e))
    }

    /// Expect `+OK`; classify anything else.
    pub async fn ok(&mut self, what: &str) -> Result<String, SessErr> {
        match self.status().await? {
            Status::Ok(text) => Ok(text),
            Status::Err { code, text } => Err(refusal(what, code, &text)),
            Status::Continue(_) => Err(SessErr::new(
                ErrKind::Protocol,
                format!("{what}: unexpected continuation"),
            )),
        }
    }

    /// Send one command and expect `+OK`.
    pub async fn command(&mut self, cmd: &str) -> Result<String, SessErr> {
        let mut line = Vec::with_capacity(cmd.len() + 2);
        line.extend_from_slice(cmd.as_bytes());
        line.extend_from_slice(b"\r\n");
        self.send(&line).await?;
        let what = cmd.split(' ').next().unwrap_or(cmd);
        self.ok(what).await
    }

    /// USER + PASS, sent one after the other as a plain client does.
    /// A refused PASS is `Auth`, or `InUse` for `-ERR [IN-USE]`.
    pub async fn login(&mut self, user: &str, password: &str) -> Result<String, SessErr> {
        self.command(&format!("USER {user}"))
            .await
            .map_err(as_auth)?;
        self.command(&format!("PASS {password}"))
            .await
            .map_err(as_auth)
    }

    /// Read the lines of a multi-line reply (after its `+OK`), dot-stuffing
    /// removed, up to the terminating `.`.
    pub async fn multiline(&mut self, mut each: impl FnMut(&[u8])) -> Result<(), SessErr> {
        let mut dec = BodyDecoder::new();
        loop {
            let line = self.line().await?;
            match dec.line(line) {
                Decoded::Line(l) => each(l),
                Decoded::End => return Ok(()),
            }
        }
    }

    /// Read a RETR body (after its `+OK`): count octets and, if asked,
    /// check the body against the seeded `X-Bench-Body-SHA256` header.
    pub async fn retr_body(&mut self, verify_hash: bool) -> Result<Body, SessErr> {
        let mut octets = 0u64;
        let mut hasher = verify_hash.then(Sha256::new);
        let mut in_header = true;
        let mut expected: Option<Vec<u8>> = None;
        self.multiline(|l| {
            octets += l.len() as u64 + 2;
            if let Some(h) = hasher.as_mut() {
                if in_header {
                    if l.is_empty() {
                        in_header = false;
                    } else if l.len() > HASH_HEADER.len()
                        && l[..HASH_HEADER.len()].eq_ignore_ascii_case(HASH_HEADER)
                    {
                        expected = Some(l[HASH_HEADER.len()..].trim_ascii().to_ascii_lowercase());
                    }
                } else {
                    h.update(l);
                    h.update(b"\r\n");
                }
            }
        })
        .await?;
        let hash_ok = match (hasher, expected) {
            (Some(h), Some(exp)) => Some(hex(&h.finalize()).as_bytes() == exp.as_slice()),
            _ => None,
        };
        Ok(Body { octets, hash_ok })
    }

    /// Send QUIT and expect `+OK`.
    pub async fn quit(&mut self) -> Result<(), SessErr> {
        self.command("QUIT").await.map(|_| ())
    }

    /// The plain TCP stream, to split it for a concurrent writer and
    /// reader (pipelining); `None` on a TLS connection.
    pub fn tcp_mut(&mut self) -> Option<&mut TcpStream> {
        match &mut self.stream {
            Stream::Plain(s) => Some(s),
            Stream::Tls(_) => None,
        }
    }
}

fn as_auth(e: SessErr) -> SessErr {
    if e.kind == ErrKind::Protocol && e.detail.starts_with("refused") {
        SessErr::new(ErrKind::Auth, e.detail)
    } else {
        e
    }
}

fn refusal(what: &str, code: Option<RespCode>, text: &str) -> SessErr {
    let kind = match code {
        Some(RespCode::InUse) => ErrKind::InUse,
        Some(RespCode::Auth) => ErrKind::Auth,
        _ => ErrKind::Protocol,
    };
    SessErr::new(kind, format!("refused {what}: -ERR {code:?} {text}"))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// The first number of a `+OK n m` reply (STAT's count, LIST n's number).
pub fn nums(text: &str) -> Option<(u64, u64)> {
    let mut it = text.split_ascii_whitespace();
    let a = it.next()?.parse().ok()?;
    let b = it.next()?.parse().ok()?;
    Some((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
        assert_eq!(nums("2 320"), Some((2, 320)));
        assert_eq!(nums("2 320 extra"), Some((2, 320)));
        assert_eq!(nums("x"), None);
    }
}
