//! The TLS client configuration (rustls with the ring provider): the one
//! certificate verifier for the outbound queue and for `postoffice fetch`.
//!
//! Trust comes from the system's CA certificates or a PEM file
//! ([`Trust`]); what a failed verification means is the caller's choice
//! ([`Verification`]): refuse, go on encrypted but unauthenticated
//! (opportunistic TLS between MTAs, RFC 3207 and RFC 7435), or — only when
//! explicitly configured — accept any certificate.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// Which certificate authorities are trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Trust {
    /// The system's CA certificates (`/etc/ssl/certs`, `SSL_CERT_FILE`, …
    /// as found by `rustls-native-certs`).
    #[default]
    System,
    /// Only the CAs in this PEM file (private CAs; a self-signed
    /// certificate is its own CA).
    CaFile(PathBuf),
}

/// What a certificate that does not verify means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// The handshake fails.
    Required,
    /// Logged, and the connection goes on encrypted (opportunistic TLS).
    Opportunistic,
    /// **Dangerous**: any certificate for any name is accepted without a
    /// word. Encrypted but not authenticated: whoever can intercept the
    /// connection can impersonate the server. Only when a user asked for
    /// it explicitly (`insecure = true`, `--insecure`).
    AcceptAny,
}

/// Why the trust anchors could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsClientError {
    /// The CA file could not be read.
    #[error("cannot read CA file {path}: {message}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The CA file holds no usable certificate.
    #[error("no usable certificate in CA file {0}")]
    NoUsableCertificate(PathBuf),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The loaded trust anchors; build client configurations from it.
#[derive(Debug, Clone)]
pub struct TrustAnchors {
    verifier: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    count: usize,
}

impl TrustAnchors {
    /// Load the CA certificates `trust` names. An empty system store is not
    /// an error here (see [`TrustAnchors::is_empty`]); an unusable CA file
    /// is.
    pub fn load(trust: &Trust) -> Result<TrustAnchors, TlsClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        match trust {
            Trust::CaFile(path) => {
                let err = |message: String| TlsClientError::CaFile {
                    path: path.clone(),
                    message,
                };
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .map_err(|e| err(e.to_string()))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| err(format!("invalid PEM: {e}")))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(TlsClientError::NoUsableCertificate(path.clone()));
                }
            }
            Trust::System => {
                let native = rustls_native_certs::load_native_certs();
                for e in &native.errors {
                    tracing::debug!(error = %e, "loading a system CA certificate");
                }
                roots.add_parsable_certificates(native.certs);
            }
        }
        let count = roots.len();
        let verifier = if roots.is_empty() {
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| TlsClientError::Config(e.to_string()))?,
            )
        };
        Ok(TrustAnchors {
            verifier,
            provider,
            count,
        })
    }

    /// No CA certificate was found: nothing can verify.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// A client configuration with this trust and `verification`.
    pub fn client_config(
        &self,
        verification: Verification,
    ) -> Result<Arc<ClientConfig>, TlsClientError> {
        let verifier = Arc::new(Verifier {
            webpki: self.verifier.clone(),
            provider: Arc::clone(&self.provider),
            verification,
        });
        let config = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsClientError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// WebPKI verification with the configured consequence of a failure.
/// Handshake signatures are always checked, whatever the mode.
#[derive(Debug)]
struct Verifier {
    /// `None` without trust anchors: nothing verifies.
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    verification: Verification,
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
        if self.verification == Verification::AcceptAny {
            return Ok(ServerCertVerified::assertion());
        }
        let result = match &self.webpki {
            Some(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Err(rustls::Error::General("no trusted CA certificates".into())),
        };
        match result {
            Ok(v) => Ok(v),
            Err(e) if self.verification == Verification::Opportunistic => {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = TrustAnchors::load(&Trust::CaFile(missing.clone())).unwrap_err();
        assert!(e.to_string().contains("nope.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = TrustAnchors::load(&Trust::CaFile(empty)).unwrap_err();
        assert!(matches!(e, TlsClientError::NoUsableCertificate(_)), "{e}");
    }
}
