//! TLS for the client: rustls with the ring provider, verifying the server
//! against the system's CA certificates or a configured CA file. The
//! verifier itself is `postoffice_common::tls_client` (shared with the
//! outbound queue); what stays here is fetch's own choice of [`Trust`],
//! the server name and the mapping of handshake failures to [`Error`].

use std::path::PathBuf;
use std::sync::Arc;

use postoffice_common::tls_client::{self as common, TlsClientError, TrustAnchors, Verification};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
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

/// Build the rustls client configuration for `trust` with
/// `postoffice_common::tls_client`: [`Trust::System`] and
/// [`Trust::CaFile`] verify (and an empty system store is an error rather
/// than a client that can verify nothing); [`Trust::Insecure`] accepts any
/// certificate ([`Verification::AcceptAny`]; handshake signatures are still
/// checked).
pub(crate) fn client_config(trust: &Trust) -> Result<Arc<ClientConfig>> {
    let config_error = |e: TlsClientError| Error::TlsConfig(e.to_string());
    let (anchors, verification) = match trust {
        // No anchor is consulted; the system store is as good as any.
        Trust::Insecure => (
            TrustAnchors::load(&common::Trust::System).map_err(config_error)?,
            Verification::AcceptAny,
        ),
        Trust::System => {
            let anchors = TrustAnchors::load(&common::Trust::System).map_err(config_error)?;
            if anchors.is_empty() {
                return Err(Error::TlsConfig(
                    "no system CA certificates found; install ca-certificates or set ca_file"
                        .into(),
                ));
            }
            (anchors, Verification::Required)
        }
        Trust::CaFile(path) => (
            TrustAnchors::load(&common::Trust::CaFile(path.clone())).map_err(config_error)?,
            Verification::Required,
        ),
    };
    anchors.client_config(verification).map_err(config_error)
}

/// The name the server's certificate must carry.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_string())
        .map_err(|_| Error::TlsConfig(format!("{host:?} is not a valid server name")))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_problems_are_configuration_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        match client_config(&Trust::CaFile(missing)) {
            Err(Error::TlsConfig(m)) => assert!(m.contains("nope.pem"), "{m}"),
            other => panic!("{other:?}"),
        }
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        match client_config(&Trust::CaFile(junk)) {
            Err(Error::TlsConfig(m)) => assert!(m.contains("no usable certificate"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn insecure_needs_no_trust_anchors() {
        client_config(&Trust::Insecure).unwrap();
    }
}
