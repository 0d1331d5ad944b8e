//! A clamd client speaking the INSTREAM command (clamd(8)).

use std::path::PathBuf;
use std::time::Duration;

use postoffice_common::content::Content;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::header::{MAX_VALUE, sanitize};

/// Largest INSTREAM chunk sent. clamd accepts any chunk up to its
/// StreamMaxLength; 64 KiB keeps memory flat on both sides.
pub(crate) const CHUNK: usize = 64 * 1024;

/// Longest reply read from clamd.
const MAX_REPLY: usize = 4096;

/// Where clamd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClamdAddr {
    /// "host:port", connected with TCP (the host may be a name).
    Tcp(String),
    /// A unix socket path.
    Unix(PathBuf),
}

impl ClamdAddr {
    /// Parses the `filter.clamd` setting: empty means no scanning; a value
    /// containing `/` is a unix socket path; anything else must be
    /// "host:port" (or "[v6]:port").
    pub(crate) fn parse(text: &str) -> Result<Option<ClamdAddr>, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        if text.contains('/') {
            return Ok(Some(ClamdAddr::Unix(PathBuf::from(text))));
        }
        match text.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty() && !port.is_empty() && port.parse::<u16>().is_ok() =>
            {
                Ok(Some(ClamdAddr::Tcp(text.to_string())))
            }
            _ => Err(format!(
                "filter.clamd {text:?} is neither \"host:port\" nor a unix socket path"
            )),
        }
    }
}

impl std::fmt::Display for ClamdAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClamdAddr::Tcp(a) => f.write_str(a),
            ClamdAddr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The result of one scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanOutcome {
    /// `stream: OK`
    Clean,
    /// `stream: <signature> FOUND`; the signature name, sanitised.
    Infected(String),
    /// Anything else: connect error, timeout, size limit, garbage. The text
    /// says what happened (sanitised, one line).
    Failed(String),
}

/// Interprets a clamd reply to `zINSTREAM` (the NUL terminator and trailing
/// white space are ignored).
pub(crate) fn parse_reply(raw: &[u8]) -> ScanOutcome {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let text = String::from_utf8_lossy(&raw[..end]);
    let text = text.trim();
    let Some(body) = text.strip_prefix("stream:").map(str::trim) else {
        return ScanOutcome::Failed(if text.is_empty() {
            "empty reply from clamd".into()
        } else {
            format!("unexpected reply from clamd: {}", sanitize(text, MAX_VALUE))
        });
    };
    if body == "OK" {
        return ScanOutcome::Clean;
    }
    if let Some(signature) = body.strip_suffix(" FOUND") {
        let signature = sanitize(signature, MAX_VALUE);
        if !signature.is_empty() {
            return ScanOutcome::Infected(signature);
        }
    }
    ScanOutcome::Failed(format!("clamd: {}", sanitize(body, MAX_VALUE)))
}

/// Sends `data` to clamd with INSTREAM and returns its verdict. The whole
/// exchange, connect included, is bounded by `timeout`.
pub(crate) async fn scan(addr: &ClamdAddr, data: &Content, timeout: Duration) -> ScanOutcome {
    match tokio::time::timeout(timeout, scan_inner(addr, data)).await {
        Ok(outcome) => outcome,
        Err(_) => ScanOutcome::Failed(format!(
            "clamd at {addr} did not answer within {} s",
            timeout.as_secs_f32()
        )),
    }
}

async fn scan_inner(addr: &ClamdAddr, data: &Content) -> ScanOutcome {
    match addr {
        ClamdAddr::Tcp(a) => match tokio::net::TcpStream::connect(a.as_str()).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                instream(stream, data).await
            }
            Err(e) => ScanOutcome::Failed(format!("cannot connect to clamd at {a}: {e}")),
        },
        #[cfg(unix)]
        ClamdAddr::Unix(path) => match tokio::net::UnixStream::connect(path).await {
            Ok(stream) => instream(stream, data).await,
            Err(e) => ScanOutcome::Failed(format!(
                "cannot connect to clamd at {}: {e}",
                path.display()
            )),
        },
        #[cfg(not(unix))]
        ClamdAddr::Unix(path) => ScanOutcome::Failed(format!(
            "unix sockets are not supported here: {}",
            path.display()
        )),
    }
}

/// The INSTREAM exchange on a connected stream.
pub(crate) async fn instream<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    data: &Content,
) -> ScanOutcome {
    let sent = send(&mut stream, data).await;
    // Read the reply even when sending failed: clamd closes the connection
    // early when the stream exceeds its StreamMaxLength, after saying so.
    let mut reply = Vec::with_capacity(64);
    let read = read_reply(&mut stream, &mut reply).await;
    if !reply.is_empty() {
        return parse_reply(&reply);
    }
    match (sent, read) {
        (Err(e), _) => ScanOutcome::Failed(format!("sending to clamd failed: {e}")),
        (Ok(()), Err(e)) => ScanOutcome::Failed(format!("reading the clamd reply failed: {e}")),
        (Ok(()), Ok(())) => {
            ScanOutcome::Failed("clamd closed the connection without a reply".into())
        }
    }
}

/// INSTREAM: the content in chunks, each with its length, then a zero
/// length. A spooled message is read a chunk at a time (positional reads of
/// a file just written, so from the page cache): a scan never holds more
/// than one chunk of it.
async fn send<S: AsyncWrite + Unpin>(stream: &mut S, data: &Content) -> std::io::Result<()> {
    stream.write_all(b"zINSTREAM\0").await?;
    let chunk_of = |chunk: &[u8]| {
        let mut framed = Vec::with_capacity(4 + chunk.len());
        framed.extend_from_slice(&u32::try_from(chunk.len()).unwrap_or(u32::MAX).to_be_bytes());
        framed.extend_from_slice(chunk);
        framed
    };
    match data.as_slice() {
        Some(all) => {
            for chunk in all.chunks(CHUNK) {
                stream.write_all(&chunk_of(chunk)).await?;
            }
        }
        None => {
            let mut reader = data.reader_at(0);
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = read_full(&mut reader, &mut buf)?;
                if n == 0 {
                    break;
                }
                stream.write_all(&chunk_of(&buf[..n])).await?;
            }
        }
    }
    stream.write_all(&0u32.to_be_bytes()).await?;
    stream.flush().await
}

/// Fill `buf` as far as the reader goes.
fn read_full(reader: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads until the NUL that ends a `z` command reply, EOF, or MAX_REPLY bytes.
async fn read_reply<S: AsyncRead + Unpin>(
    stream: &mut S,
    reply: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut buf = [0u8; 512];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        reply.extend_from_slice(&buf[..n]);
        if reply.contains(&0) || reply.len() >= MAX_REPLY {
            return Ok(());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::net::TcpListener;

    #[test]
    fn replies_are_parsed() {
        assert_eq!(parse_reply(b"stream: OK\0"), ScanOutcome::Clean);
        assert_eq!(parse_reply(b"stream: OK\n"), ScanOutcome::Clean);
        assert_eq!(
            parse_reply(b"stream: Eicar-Test-Signature FOUND\0"),
            ScanOutcome::Infected("Eicar-Test-Signature".into())
        );
        assert_eq!(
            parse_reply(b"stream: Win.Test.EICAR_HDB-1 FOUND\0garbage"),
            ScanOutcome::Infected("Win.Test.EICAR_HDB-1".into())
        );
        assert!(matches!(
            parse_reply(b"INSTREAM size limit exceeded. ERROR\0"),
            ScanOutcome::Failed(m) if m.contains("size limit")
        ));
        assert!(matches!(
            parse_reply(b"stream: Can't allocate memory ERROR\0"),
            ScanOutcome::Failed(m) if m.contains("ERROR")
        ));
        assert!(matches!(parse_reply(b""), ScanOutcome::Failed(_)));
        assert!(matches!(parse_reply(b"OK\0"), ScanOutcome::Failed(_)));
        assert!(matches!(
            parse_reply(b"stream: FOUND\0"),
            ScanOutcome::Failed(_)
        ));
        assert!(matches!(
            parse_reply(b"stream: OKAY\0"),
            ScanOutcome::Failed(_)
        ));
        // A hostile signature name cannot inject header lines.
        assert_eq!(
            parse_reply(b"stream: Bad\r\nX-Evil: 1 FOUND\0"),
            ScanOutcome::Infected("Bad X-Evil: 1".into())
        );
    }

    #[test]
    fn addresses_are_parsed() {
        assert_eq!(ClamdAddr::parse(""), Ok(None));
        assert_eq!(ClamdAddr::parse("  "), Ok(None));
        assert_eq!(
            ClamdAddr::parse("127.0.0.1:3310"),
            Ok(Some(ClamdAddr::Tcp("127.0.0.1:3310".into())))
        );
        assert_eq!(
            ClamdAddr::parse("localhost:3310"),
            Ok(Some(ClamdAddr::Tcp("localhost:3310".into())))
        );
        assert_eq!(
            ClamdAddr::parse("[::1]:3310"),
            Ok(Some(ClamdAddr::Tcp("[::1]:3310".into())))
        );
        assert_eq!(
            ClamdAddr::parse("/run/clamav/clamd.ctl"),
            Ok(Some(ClamdAddr::Unix("/run/clamav/clamd.ctl".into())))
        );
        assert!(ClamdAddr::parse("localhost").is_err());
        assert!(ClamdAddr::parse("host:notaport").is_err());
        assert!(ClamdAddr::parse(":3310").is_err());
    }

    /// How the fake clamd behaves after reading the stream.
    #[derive(Clone, Copy)]
    pub(crate) enum Fake {
        Reply(&'static [u8]),
        /// Never answers.
        Silent,
        /// Closes without a word.
        Hangup,
    }

    /// A fake clamd on loopback: checks the INSTREAM framing, records the
    /// reassembled stream, then behaves as told. Serves `conns` connections.
    pub(crate) async fn fake_clamd(
        behaviour: Fake,
        conns: usize,
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = tokio::spawn(async move {
            let mut streams = Vec::new();
            for _ in 0..conns {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut cmd = [0u8; 10];
                sock.read_exact(&mut cmd).await.unwrap();
                assert_eq!(&cmd, b"zINSTREAM\0");
                let mut data = Vec::new();
                loop {
                    let mut len = [0u8; 4];
                    sock.read_exact(&mut len).await.unwrap();
                    let len = u32::from_be_bytes(len) as usize;
                    if len == 0 {
                        break;
                    }
                    assert!(len <= CHUNK, "chunk of {len} bytes");
                    let start = data.len();
                    data.resize(start + len, 0);
                    sock.read_exact(&mut data[start..]).await.unwrap();
                }
                streams.push(data);
                match behaviour {
                    Fake::Reply(r) => {
                        sock.write_all(r).await.unwrap();
                    }
                    Fake::Silent => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    Fake::Hangup => {}
                }
            }
            streams
        });
        (addr, handle)
    }

    fn tcp(addr: SocketAddr) -> ClamdAddr {
        ClamdAddr::Tcp(addr.to_string())
    }

    #[tokio::test]
    async fn fake_clamd_ok_receives_the_whole_message_in_chunks() {
        let (addr, server) = fake_clamd(Fake::Reply(b"stream: OK\0"), 1).await;
        // Larger than two chunks, not a multiple of the chunk size.
        let message: Vec<u8> = (0..(2 * CHUNK + 1234)).map(|i| (i % 251) as u8).collect();
        let outcome = scan(
            &tcp(addr),
            &Content::from_vec(message.clone()),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(outcome, ScanOutcome::Clean);
        let streams = server.await.unwrap();
        assert_eq!(streams, vec![message]);
    }

    /// A message spooled to disk is scanned a chunk at a time, whole.
    #[tokio::test]
    async fn fake_clamd_receives_a_spooled_message_whole() {
        let (addr, server) = fake_clamd(Fake::Reply(b"stream: OK\0"), 1).await;
        let message: Vec<u8> = (0..(3 * CHUNK + 77)).map(|i| (i % 253) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let mut w = postoffice_common::content::SpoolWriter::new(dir.path(), 16, None);
        w.write(&message).unwrap();
        assert!(w.spilled());
        let content = w.finish();
        let outcome = scan(&tcp(addr), &content, Duration::from_secs(5)).await;
        assert_eq!(outcome, ScanOutcome::Clean);
        assert_eq!(server.await.unwrap(), vec![message]);
    }

    #[tokio::test]
    async fn fake_clamd_found() {
        let (addr, _server) =
            fake_clamd(Fake::Reply(b"stream: Eicar-Test-Signature FOUND\0"), 1).await;
        let outcome = scan(
            &tcp(addr),
            &Content::from_vec(b"Subject: x\r\n\r\nbody\r\n".to_vec()),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(
            outcome,
            ScanOutcome::Infected("Eicar-Test-Signature".into())
        );
    }

    #[tokio::test]
    async fn fake_clamd_garbage_is_a_failure() {
        let (addr, _server) = fake_clamd(Fake::Reply(b"HELLO THERE\0"), 1).await;
        let outcome = scan(
            &tcp(addr),
            &Content::from_vec(b"x".to_vec()),
            Duration::from_secs(5),
        )
        .await;
        assert!(
            matches!(&outcome, ScanOutcome::Failed(m) if m.contains("unexpected reply")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn fake_clamd_hangup_is_a_failure() {
        let (addr, _server) = fake_clamd(Fake::Hangup, 1).await;
        let outcome = scan(
            &tcp(addr),
            &Content::from_vec(b"x".to_vec()),
            Duration::from_secs(5),
        )
        .await;
        assert!(matches!(outcome, ScanOutcome::Failed(_)), "{outcome:?}");
    }

    #[tokio::test]
    async fn slow_clamd_times_out() {
        let (addr, _server) = fake_clamd(Fake::Silent, 1).await;
        let started = std::time::Instant::now();
        let outcome = scan(
            &tcp(addr),
            &Content::from_vec(b"x".to_vec()),
            Duration::from_millis(300),
        )
        .await;
        assert!(
            matches!(&outcome, ScanOutcome::Failed(m) if m.contains("did not answer")),
            "{outcome:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn closed_port_is_a_failure() {
        let addr = closed_port().await;
        let outcome = scan(
            &tcp(addr),
            &Content::from_vec(b"x".to_vec()),
            Duration::from_secs(5),
        )
        .await;
        assert!(
            matches!(&outcome, ScanOutcome::Failed(m) if m.contains("cannot connect")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn missing_unix_socket_is_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let addr = ClamdAddr::Unix(dir.path().join("nope.sock"));
        let outcome = scan(
            &addr,
            &Content::from_vec(b"x".to_vec()),
            Duration::from_secs(5),
        )
        .await;
        assert!(matches!(outcome, ScanOutcome::Failed(_)), "{outcome:?}");
    }

    /// A loopback port with nothing listening.
    pub(crate) async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        addr
    }
}
