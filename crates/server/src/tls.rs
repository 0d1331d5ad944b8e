//! TLS setup: rustls with the ring provider, from configured PEM files or a
//! self-signed certificate generated on first start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use postoffice_config::Config;
use postoffice_core::metrics::tls_version_label;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Where the certificate and key come from.
pub fn cert_paths(cfg: &Config) -> (PathBuf, PathBuf, bool) {
    match (&cfg.tls.cert, &cfg.tls.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone(), false),
        _ => {
            let dir = cfg.data_dir.join("tls");
            (dir.join("cert.pem"), dir.join("key.pem"), true)
        }
    }
}

/// Build the acceptor, generating a self-signed certificate for
/// `hostname` (plus localhost and the loopback addresses) when no
/// certificate is configured and none was generated before.
pub fn acceptor(cfg: &Config) -> Result<TlsAcceptor> {
    let (cert_path, key_path, generated) = cert_paths(cfg);
    if generated && !(cert_path.exists() && key_path.exists()) {
        generate_self_signed(&cfg.hostname, &cert_path, &key_path)?;
        tracing::info!(cert = %cert_path.display(), "generated a self-signed TLS certificate; set [tls] cert/key for a real one");
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("cannot read TLS certificate {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("invalid PEM in TLS certificate {}", cert_path.display()))?;
    if certs.is_empty() {
        bail!("no certificate found in {}", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("cannot read TLS private key {}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key do not match")?;
    resumption(&mut config)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Returning clients (a mail client polling every few minutes) resume
/// their TLS session instead of a full handshake: stateless tickets
/// (rotating keys, RFC 5077 / TLS 1.3 PSK) and a server-side cache for
/// clients that do not take tickets.
fn resumption(config: &mut ServerConfig) -> Result<()> {
    config.ticketer = rustls::crypto::ring::Ticketer::new().context("TLS session tickets")?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
    Ok(())
}

fn generate_self_signed(hostname: &str, cert_path: &Path, key_path: &Path) -> Result<()> {
    let dir = cert_path
        .parent()
        .context("certificate path has no directory")?;
    postoffice_common::durable::create_dir_all(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let mut names = vec![
        hostname.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    names.dedup();
    let mut params = rcgen::CertificateParams::new(names).context("certificate names")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "postoffice self-signed");
    let key = rcgen::KeyPair::generate().context("generating a TLS key")?;
    let cert = params
        .self_signed(&key)
        .context("generating a self-signed certificate")?;
    for (path, pem) in [(key_path, key.serialize_pem()), (cert_path, cert.pem())] {
        postoffice_common::durable::write(path, pem.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The TLS handshake on an accepted connection (POP3S, STLS, STARTTLS,
/// port 465), bounded by `timeout`. `None` when TLS is not configured, the
/// handshake fails or it takes too long; the caller then closes.
pub async fn accept(
    shared: &crate::Shared,
    tcp: tokio::net::TcpStream,
    timeout: std::time::Duration,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let acceptor = shared.tls.as_ref()?;
    let metrics = &shared.app.metrics;
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => {
            let version = s
                .get_ref()
                .1
                .protocol_version()
                .map_or("other", |v| tls_version_label(&format!("{v:?}")));
            metrics.tls_handshakes.inc([version]);
            Some(s)
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            metrics.tls_handshake_failures.inc(["error"]);
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            metrics.tls_handshake_failures.inc(["timeout"]);
            None
        }
    }
}
