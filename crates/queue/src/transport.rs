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
use std::sync::Arc;
use std::time::Duration;

use postoffice_smtp::EnhancedCode;
use postoffice_smtp::client::{
    Action, ClientConfig, ClientSession, Outcome, RcptResult, Status, TlsPolicy, Transaction,
    dot_stuff,
};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The two client TLS configurations.
#[derive(Clone)]
pub struct TlsClients {
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

#[derive(Debug)]
struct Verifier {
    /// `None` when there is no trust anchor at all: nothing verifies.
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    lenient: bool,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = match &self.webpki {
            Some(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Err(rustls::Error::General("no trust anchors".into())),
        };
        match result {
            Ok(v) => Ok(v),
            Err(e) if self.lenient => {
                tracing::info!(server = ?server_name, error = %e,
                    "TLS certificate not verified; encrypting anyway (opportunistic TLS)");
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl TlsClients {
    /// Trust anchors from `ca_file` (PEM) or the system.
    pub fn new(ca_file: Option<&Path>) -> Result<TlsClients, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("cannot read queue.ca_file {}: {e}", path.display()))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("invalid PEM in queue.ca_file {}: {e}", path.display()))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!(
                        "no usable certificate in queue.ca_file {}",
                        path.display()
                    ));
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                for e in &native.errors {
                    tracing::debug!(error = %e, "loading a system CA certificate");
                }
                roots.add_parsable_certificates(native.certs);
                if roots.is_empty() {
                    tracing::warn!(
                        "no system CA certificates found: TLS to MX hosts stays unverified \
                         and require_tls_domains cannot be served (set queue.ca_file)"
                    );
                }
            }
        }
        let webpki = if roots.is_empty() {
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| format!("TLS verifier: {e}"))?,
            )
        };
        let make = |lenient: bool| -> Result<TlsConnector, String> {
            let verifier = Arc::new(Verifier {
                webpki: webpki.clone(),
                provider: Arc::clone(&provider),
                lenient,
            });
            let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS protocol versions: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            Ok(TlsConnector::from(Arc::new(config)))
        };
        Ok(TlsClients {
            strict: make(false)?,
            lenient: make(true)?,
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
pub struct Attempt<'a> {
    pub host: &'a str,
    pub addr: SocketAddr,
    pub helo_name: &'a str,
    pub tls_mode: TlsPolicy,
    pub credentials: Option<(String, String)>,
    pub mail_from: &'a str,
    pub rcpts: &'a [String],
    pub message: &'a [u8],
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

/// Run one SMTP session to `attempt.addr`.
pub async fn deliver(attempt: &Attempt<'_>) -> Outcome {
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
            size: attempt.message.len() as u64,
            body_8bit: attempt.message.iter().any(|&b| b >= 0x80),
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
                let data = dot_stuff(attempt.message);
                match tokio::time::timeout(data_timeout, stream.write_all(&data)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        return session.connection_lost(&format!("sending data to {where_}: {e}"));
                    }
                    Err(_) => {
                        return session
                            .connection_lost(&format!("sending data to {where_}: timed out"));
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
