//! The async side of an SMTP client session: a TCP connection (with
//! timeouts), STARTTLS through tokio-rustls (ring provider), and the sans-IO
//! [`ClientSession`] of postoffice-smtp.
//!
//! # Certificate checks
//!
//! Certificates are checked against `queue.ca_file` when set, otherwise the
//! system's roots (rustls-native-certs), for the MX host name (or the relay
//! host name).
//!
//! * TLS **required** (the domain is in `require_tls_domains`, or a relay
//!   with credentials): an invalid certificate fails the handshake, which is
//!   a temporary failure; the mail waits.
//! * **Opportunistic** TLS (everything else): like Postfix's
//!   `smtp_tls_security_level = may`, the certificate is checked but a
//!   failure is only logged and the mail goes out over the encrypted
//!   connection anyway: most MX certificates do not match their MX names,
//!   and unverified encryption is still better than plaintext, which is the
//!   alternative. (The handshake signature itself is always verified.) If
//!   the handshake fails for another reason, the message is sent again over
//!   a new plaintext connection.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use postoffice_common::content::Content;
use postoffice_common::tls_client::{TlsClientError, Trust, TrustAnchors, Verification};
use postoffice_smtp::EnhancedCode;
use postoffice_smtp::client::{
    Action, ClientConfig, ClientSession, DotStuffer, Outcome, RcptResult, Status, TlsPolicy,
    Transaction,
};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The two client TLS configurations.
#[derive(Clone)]
pub(crate) struct TlsClients {
    /// Certificates must verify.
    strict: TlsConnector,
    /// Certificate failures are logged and ignored (opportunistic TLS).
    lenient: TlsConnector,
}

impl std::fmt::Debug for TlsClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsClients")
    }
}

impl TlsClients {
    /// Trust anchors from `ca_file` (PEM) or the system.
    pub(crate) fn new(ca_file: Option<&Path>) -> Result<TlsClients, TlsClientError> {
        let trust = match ca_file {
            Some(path) => Trust::CaFile(path.to_path_buf()),
            None => Trust::System,
        };
        let anchors = TrustAnchors::load(&trust)?;
        if anchors.is_empty() {
            tracing::warn!(
                "no system CA certificates found: TLS to MX hosts stays unverified \
                 and require_tls_domains cannot be served (set queue.ca_file)"
            );
        }
        Ok(TlsClients {
            strict: TlsConnector::from(anchors.client_config(Verification::Required)?),
            lenient: TlsConnector::from(anchors.client_config(Verification::Opportunistic)?),
        })
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Gone,
}

impl Stream {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
            Stream::Gone => Ok(0),
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(data).await,
            Stream::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Stream::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    async fn shutdown(&mut self) {
        let _ = match self {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
            Stream::Gone => Ok(()),
        };
    }
}

/// One connection attempt.
pub(crate) struct Attempt<'a> {
    pub host: &'a str,
    pub addr: SocketAddr,
    pub helo_name: &'a str,
    pub tls_mode: TlsPolicy,
    pub credentials: Option<(String, String)>,
    pub mail_from: &'a str,
    pub rcpts: &'a [String],
    pub message: &'a OutMessage,
    pub tls: Option<&'a TlsClients>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
}

/// Every recipient with the same local failure.
fn all_failed(attempt: &Attempt<'_>, reason: String, enhanced: EnhancedCode) -> Outcome {
    Outcome {
        rcpts: attempt
            .rcpts
            .iter()
            .map(|_| RcptResult {
                status: Status::Temporary,
                reply: None,
                reason: reason.clone(),
                enhanced,
            })
            .collect(),
        try_next_host: true,
        tls_failed: false,
        tls: false,
        data_sent: false,
        capabilities: Default::default(),
    }
}

/// A queued message as it is sent: read from its spool file.
pub(crate) struct OutMessage {
    /// The message file.
    pub content: Content,
    /// It has octets above 127 (BODY=8BITMIME).
    pub eight_bit: bool,
}

impl OutMessage {
    /// `eight_bit` as the envelope recorded it, or found by reading the
    /// file (entries spooled by older versions).
    pub(crate) fn new(content: Content, eight_bit: Option<bool>) -> OutMessage {
        let eight_bit = eight_bit.unwrap_or_else(|| {
            let mut reader = content.reader_at(0);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match std::io::Read::read(&mut reader, &mut buf) {
                    Ok(0) | Err(_) => return false,
                    Ok(n) if buf[..n].iter().any(|&b| b >= 0x80) => return true,
                    Ok(_) => {}
                }
            }
        });
        OutMessage { content, eight_bit }
    }
}

/// Send the message as DATA content, a chunk at a time from its file,
/// dot-stuffed as it goes (a large message costs two chunk buffers). Each
/// chunk must leave within `timeout`.
async fn send_content(
    stream: &mut Stream,
    message: &Content,
    timeout: Duration,
) -> std::io::Result<()> {
    const CHUNK: usize = 64 * 1024;
    let mut reader = message.reader_at(0);
    let mut buf = vec![0u8; CHUNK];
    let mut stuffer = DotStuffer::new();
    let mut out = Vec::with_capacity(CHUNK + CHUNK / 8);
    loop {
        let n = std::io::Read::read(&mut reader, &mut buf)?;
        out.clear();
        if n == 0 {
            stuffer.finish(&mut out);
        } else {
            stuffer.stuff(&buf[..n], &mut out);
        }
        tokio::time::timeout(timeout, stream.write_all(&out))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))??;
        if n == 0 {
            return Ok(());
        }
    }
}

/// Run one SMTP session to `attempt.addr`.
pub(crate) async fn deliver(attempt: &Attempt<'_>) -> Outcome {
    let where_ = format!(
        "{}[{}]:{}",
        attempt.host,
        attempt.addr.ip(),
        attempt.addr.port()
    );
    let tcp = match tokio::time::timeout(attempt.connect_timeout, TcpStream::connect(attempt.addr))
        .await
    {
        Err(_) => {
            return all_failed(
                attempt,
                format!("connect to {where_}: timed out"),
                EnhancedCode(4, 4, 1),
            );
        }
        Ok(Err(e)) => {
            return all_failed(
                attempt,
                format!("connect to {where_}: {e}"),
                EnhancedCode(4, 4, 1),
            );
        }
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);
    let tls_mode = if attempt.tls.is_none() && attempt.tls_mode == TlsPolicy::Opportunistic {
        TlsPolicy::Off
    } else {
        attempt.tls_mode
    };
    let mut session = ClientSession::new(
        ClientConfig {
            helo_name: attempt.helo_name.to_string(),
            tls: tls_mode,
            credentials: attempt.credentials.clone(),
        },
        Transaction {
            mail_from: attempt.mail_from.to_string(),
            rcpt_to: attempt.rcpts.to_vec(),
            size: attempt.message.content.len(),
            body_8bit: attempt.message.eight_bit,
        },
    );
    let mut stream = Stream::Plain(tcp);
    let mut action = Action::NeedInput;
    let mut buf = vec![0u8; 16 * 1024];
    let data_timeout = attempt.command_timeout.max(Duration::from_secs(60)) * 2;
    loop {
        let out = session.take_output();
        if !out.is_empty() {
            match tokio::time::timeout(attempt.command_timeout, stream.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return session.connection_lost(&format!("write to {where_}: {e}")),
                Err(_) => return session.connection_lost(&format!("write to {where_}: timed out")),
            }
        }
        match action {
            Action::Done => {
                stream.shutdown().await;
                return session.outcome();
            }
            Action::NeedInput => {
                let wait = if session.awaiting_data_reply() {
                    data_timeout
                } else {
                    attempt.command_timeout
                };
                let n = match tokio::time::timeout(wait, stream.read(&mut buf)).await {
                    Err(_) => {
                        return session.connection_lost(&format!(
                            "timeout waiting for a reply from {where_}"
                        ));
                    }
                    Ok(Err(e)) => {
                        return session.connection_lost(&format!("read from {where_}: {e}"));
                    }
                    Ok(Ok(0)) => {
                        return session.connection_lost(&format!("connection closed by {where_}"));
                    }
                    Ok(Ok(n)) => n,
                };
                action = session.handle(&buf[..n]);
            }
            Action::SendData => {
                match send_content(&mut stream, &attempt.message.content, data_timeout).await {
                    Ok(()) => {}
                    Err(e) => {
                        return session.connection_lost(&format!("sending data to {where_}: {e}"));
                    }
                }
                action = session.handle(&[]);
            }
            Action::StartTls => {
                let Some(tls) = attempt.tls else {
                    return session.tls_failed("TLS is not available");
                };
                let tcp = match std::mem::replace(&mut stream, Stream::Gone) {
                    Stream::Plain(tcp) => tcp,
                    _ => return session.tls_failed("STARTTLS inside TLS"),
                };
                let connector = if tls_mode == TlsPolicy::Required {
                    &tls.strict
                } else {
                    &tls.lenient
                };
                let name = match ServerName::try_from(attempt.host.to_string()) {
                    Ok(n) => n,
                    Err(_) => ServerName::IpAddress(attempt.addr.ip().into()),
                };
                match tokio::time::timeout(attempt.command_timeout, connector.connect(name, tcp))
                    .await
                {
                    Ok(Ok(s)) => {
                        let (_, conn) = s.get_ref();
                        tracing::debug!(host = %where_, version = ?conn.protocol_version(),
                            cipher = ?conn.negotiated_cipher_suite().map(|c| c.suite()), "TLS started");
                        stream = Stream::Tls(Box::new(s));
                        action = session.tls_started();
                    }
                    Ok(Err(e)) => return session.tls_failed(&format!("{where_}: {e}")),
                    Err(_) => return session.tls_failed(&format!("{where_}: timed out")),
                }
            }
        }
    }
}
