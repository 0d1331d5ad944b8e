//! TLS to a test server whose certificate nobody else trusts.

use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

/// A blocking TLS client stream over TCP.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS client over `tcp` that trusts only the certificates in the PEM
/// file `ca_pem` and expects the server to be `server_name`. The handshake
/// happens on the first read or write.
#[track_caller]
pub fn tls_client(ca_pem: &Path, server_name: &str, tcp: TcpStream) -> TlsStream {
    tls_client_with(tls_client_config(ca_pem), server_name, tcp)
}

/// A client configuration trusting only `ca_pem`. Connections made with
/// one configuration share its session cache, as a returning mail client
/// would: the second one can resume.
#[track_caller]
pub fn tls_client_config(ca_pem: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_pem)
        .unwrap_or_else(|e| panic!("read {}: {e}", ca_pem.display()));
    for cert in certs {
        roots
            .add(cert.expect("parse certificate"))
            .expect("add root");
    }
    assert!(!roots.is_empty(), "no certificate in {}", ca_pem.display());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A TLS client over `tcp` with a given configuration (see
/// [`tls_client_config`]).
pub fn tls_client_with(
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
    tcp: TcpStream,
) -> TlsStream {
    let name = ServerName::try_from(server_name.to_string()).expect("server name");
    let conn = rustls::ClientConnection::new(config, name).expect("client connection");
    rustls::StreamOwned::new(conn, tcp)
}
