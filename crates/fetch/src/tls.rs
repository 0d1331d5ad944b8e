//! TLS for the client: rustls with the ring provider, verifying the server
//! against the system's CA certificates or a configured CA file.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Deserialize;

use crate::error::{Error, Result};

/// How the connection is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS from the first byte (POP3S, port 995; RFC 8314). The default.
    #[default]
    Implicit,
    /// Plain connection upgraded with STLS (RFC 2595), port 110. If the
    /// server does not offer STLS the client refuses to go on.
    Starttls,
    /// No encryption at all: passwords and mail cross the network in clear.
    None,
}

impl TlsMode {
    /// The conventional port: 995 for implicit TLS, 110 otherwise.
    pub fn default_port(self) -> u16 {
        match self {
            TlsMode::Implicit => 995,
            TlsMode::Starttls | TlsMode::None => 110,
        }
    }
}

/// Which certificates the client accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Trust {
    /// The system's CA certificates (`/etc/ssl/certs`, `SSL_CERT_FILE`, ...
    /// as found by `rustls-native-certs`).
    #[default]
    System,
    /// Only CAs from this PEM file (for private CAs and self-signed
    /// certificates: the certificate itself is its own CA).
    CaFile(PathBuf),
    /// **Dangerous**: accept any certificate for any name. The connection
    /// is encrypted but not authenticated, so anyone able to intercept it
    /// can impersonate the server and read the password. Only for tests
    /// and for servers reached over an otherwise trusted path.
    Insecure,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Build the rustls client configuration for `trust`.
pub fn client_config(trust: &Trust) -> Result<Arc<ClientConfig>> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::TlsConfig(e.to_string()))?;
    let config = match trust {
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth(),
        Trust::System => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                return Err(Error::TlsConfig(format!(
                    "no system CA certificates found{why}; install ca-certificates or set ca_file"
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::CaFile(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| {
                    Error::TlsConfig(format!("cannot read CA file {}: {e}", path.display()))
                })?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| {
                    Error::TlsConfig(format!("invalid PEM in CA file {}: {e}", path.display()))
                })?;
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(Error::TlsConfig(format!(
                    "no usable certificate in CA file {}",
                    path.display()
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

/// The name the server's certificate must carry.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_string())
        .map_err(|_| Error::TlsConfig(format!("{host:?} is not a valid server name")))
}

/// A certificate verifier that accepts every certificate.
///
/// # Danger
///
/// This disables server authentication: a man in the middle can present
/// any certificate and will be trusted. Handshake signatures are still
/// checked (so the session keys belong to whoever holds the presented
/// certificate), but nothing ties that certificate to the server you meant.
/// Used only for [`Trust::Insecure`], which must be chosen explicitly
/// (`insecure = true` or `--insecure`).
#[derive(Debug)]
pub struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Turn a failed handshake into a helpful error.
pub(crate) fn handshake_error(host: &str, e: std::io::Error) -> Error {
    let inner = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .cloned();
    match inner {
        Some(err @ rustls::Error::InvalidCertificate(_)) => Error::Certificate {
            host: host.to_string(),
            message: err.to_string(),
        },
        Some(other) => Error::Tls {
            host: host.to_string(),
            message: other.to_string(),
        },
        None => match e.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => Error::Io(e),
            _ => Error::Tls {
                host: host.to_string(),
                message: e.to_string(),
            },
        },
    }
}
