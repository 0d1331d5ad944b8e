//! TLS for every listener: rustls with the ring provider and one
//! certificate store that picks a certificate by the name the client asks
//! for (SNI) and reloads its files while the server runs.
//!
//! - [`CertStore::load`] reads every configured pair (`[tls] cert`/`key`
//!   and `certificates`), or generates a self-signed certificate in
//!   `data_dir/tls/` when none is configured. Each pair answers for the DNS
//!   names of its certificate (wildcards included); a client that names no
//!   host, or one no pair holds, gets the first pair.
//! - [`CertStore::reload`] reads changed files again (or all of them, on
//!   SIGHUP). A pair whose new files do not load keeps the certificate in
//!   use, and the failure is logged once per change of the files. Sessions
//!   already open are not touched: a handshake takes the certificate in use
//!   at that moment, and only new handshakes see a new one.
//! - [`watch`] runs beside the listeners: SIGHUP, a poll of the files'
//!   identity and times every `reload_check_secs` (certbot renewals swap
//!   symlinks, `install` replaces files), and a daily expiry check.
//! - [`inspect`] describes a pair (names, expiry) for `config check`.
//! - [`accept`] is the one handshake path of every listener (POP3S, STLS,
//!   STARTTLS, port 465).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use postoffice_config::{CertKey, Config};
use postoffice_core::metrics::tls_version_label;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tracing::{error, info, warn};

/// Why a certificate/key pair could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no PEM certificate.
    #[error("TLS certificate {path}: {message}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The key file could not be read or holds no PEM private key.
    #[error("TLS private key {path}: {message}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The key is not the certificate's.
    #[error("TLS certificate {cert} and key {key} do not belong together: {message}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' words.
        message: String,
    },
    /// The self-signed certificate could not be made.
    #[error("generating a self-signed certificate in {path}: {message}")]
    Generate {
        /// Where.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// rustls refused the server configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// DNS names (and IP addresses) of the subjectAltName extension; the
    /// subject's common name when there is none.
    pub names: Vec<String>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// SHA-256 of the certificate (DER), in hex: what a client pins.
    pub sha256: String,
}

impl CertInfo {
    /// Whole days from `now` until expiry (negative once expired).
    pub fn days_left(&self, now: SystemTime) -> i64 {
        match self.not_after.duration_since(now) {
            Ok(d) => (d.as_secs() / 86_400) as i64,
            Err(e) => -((e.duration().as_secs() / 86_400) as i64) - 1,
        }
    }

    /// Whether the certificate holds `name` (exactly, or by a wildcard
    /// covering one label). `name` is lower case.
    fn holds(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name) || self.names.iter().any(|n| wildcard(n, name))
    }
}

fn wildcard(pattern: &str, name: &str) -> bool {
    match (pattern.strip_prefix("*."), name.split_once('.')) {
        (Some(suffix), Some((label, rest))) => !label.is_empty() && rest == suffix,
        _ => false,
    }
}

/// The expiry of the certificate `info`, in words, with the date.
fn expiry_words(info: &CertInfo, now: SystemTime) -> String {
    let date = postoffice_common::date::rfc5322(info.not_after);
    match info.days_left(now) {
        d if d < 0 => format!("expired on {date}"),
        d => format!("expires on {date} (in {d} days)"),
    }
}

impl fmt::Display for CertInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}; {}",
            self.names.join(", "),
            expiry_words(self, SystemTime::now())
        )
    }
}

/// The identity of a pair's files as seen through any symlinks: device,
/// inode, size and times of both. A renewal changes at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<(u64, u64, u64, i64, i64, i64, i64)>);

fn stamp(pair: &CertKey) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let mut parts = Vec::new();
    for path in [&pair.cert, &pair.key] {
        let m = std::fs::metadata(path).ok()?;
        parts.push((
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        ));
    }
    Some(Stamp(parts))
}

/// One configured pair and what was last loaded from it.
struct Slot {
    pair: CertKey,
    key: Arc<CertifiedKey>,
    info: CertInfo,
    /// The files as last seen (loaded or not), so a broken file is
    /// reported once, not at every poll.
    seen: Option<Stamp>,
    /// Changed files as seen at the previous poll: they are read once they
    /// stay the same for one poll, so a certificate copied a moment before
    /// its key is not taken for a mismatched pair.
    pending: Option<Option<Stamp>>,
}

/// Every certificate the server presents, chosen per handshake by SNI.
pub struct CertStore {
    slots: RwLock<Vec<Slot>>,
    provider: Arc<CryptoProvider>,
    warning_days: u64,
    generated: bool,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("pairs", &self.pairs())
            .finish()
    }
}

/// What one reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Pairs that now present a newly read certificate.
    pub replaced: Vec<PathBuf>,
    /// Pairs whose new files did not load (the old certificate stays).
    pub failed: Vec<PathBuf>,
}

/// The pairs of `cfg`, or the generated self-signed pair (and `true`).
pub fn configured_pairs(cfg: &Config) -> (Vec<CertKey>, bool) {
    let pairs = cfg.tls.pairs();
    if !pairs.is_empty() {
        return (pairs, false);
    }
    let dir = cfg.data_dir.join("tls");
    (
        vec![CertKey {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }],
        true,
    )
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read one pair: the chain, the key, whether they match, and the leaf's
/// names and validity.
fn load_pair(
    pair: &CertKey,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, CertInfo), TlsError> {
    let cert_err = |message: String| TlsError::Cert {
        path: pair.cert.clone(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.cert)
        .map_err(|e| cert_err(format!("cannot read it: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(format!("invalid PEM: {e}")))?;
    let Some(leaf) = certs.first() else {
        return Err(cert_err("no PEM certificate in it".into()));
    };
    let info = describe(leaf.as_ref()).map_err(cert_err)?;
    let key = PrivateKeyDer::from_pem_file(&pair.key).map_err(|e| TlsError::Key {
        path: pair.key.clone(),
        message: format!("cannot read a PEM private key from it: {e}"),
    })?;
    let certified =
        CertifiedKey::from_der(certs, key, provider).map_err(|e| TlsError::Mismatch {
            cert: pair.cert.clone(),
            key: pair.key.clone(),
            message: e.to_string(),
        })?;
    Ok((certified, info))
}

/// Names, validity and fingerprint of a DER certificate.
fn describe(der: &[u8]) -> Result<CertInfo, String> {
    use x509_cert::der::{Decode, Encode};
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let tbs = &cert.tbs_certificate;
    let mut names = Vec::new();
    for ext in tbs.extensions.iter().flatten() {
        if ext.extn_id != const_oid_san() {
            continue;
        }
        let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
            .map_err(|e| format!("unreadable subjectAltName: {e}"))?;
        for name in san.0 {
            match name {
                GeneralName::DnsName(dns) => names.push(dns.as_str().to_ascii_lowercase()),
                GeneralName::IpAddress(ip) => match ip.as_bytes().len() {
                    4 => {
                        let b: [u8; 4] = ip.as_bytes().try_into().unwrap_or_default();
                        names.push(std::net::Ipv4Addr::from(b).to_string());
                    }
                    16 => {
                        let b: [u8; 16] = ip.as_bytes().try_into().unwrap_or_default();
                        names.push(std::net::Ipv6Addr::from(b).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    if names.is_empty() {
        // No subjectAltName: the subject's common name, as old clients did.
        for rdn in tbs.subject.0.iter() {
            for atv in rdn.0.iter() {
                if atv.oid == const_oid_cn()
                    && let Ok(s) = atv.value.decode_as::<String>()
                {
                    names.push(s.to_ascii_lowercase());
                }
            }
        }
    }
    let validity = &tbs.validity;
    let sha256 = {
        use sha2::Digest;
        let bytes = cert.to_der().unwrap_or_else(|_| der.to_vec());
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    Ok(CertInfo {
        names,
        not_before: validity.not_before.to_system_time(),
        not_after: validity.not_after.to_system_time(),
        sha256,
    })
}

fn const_oid_san() -> x509_cert::der::asn1::ObjectIdentifier {
    x509_cert::der::asn1::ObjectIdentifier::new_unwrap("2.5.29.17")
}

fn const_oid_cn() -> x509_cert::der::asn1::ObjectIdentifier {
    x509_cert::der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3")
}

/// Read `pair` and describe its certificate (for `config check`): fails as
/// loading it in the server would.
pub fn inspect(pair: &CertKey) -> Result<CertInfo, TlsError> {
    load_pair(pair, &provider()).map(|(_, info)| info)
}

impl CertStore {
    /// Load every pair of `cfg` (generating the self-signed one first when
    /// no pair is configured and none was generated before). Any pair that
    /// does not load is an error: a server does not start half-configured.
    pub fn load(cfg: &Config) -> Result<Arc<CertStore>, TlsError> {
        let (pairs, generated) = configured_pairs(cfg);
        if generated {
            let pair = &pairs[0];
            if !(pair.cert.exists() && pair.key.exists()) {
                generate_self_signed(&cfg.hostname, &pair.cert, &pair.key)?;
                info!(cert = %pair.cert.display(), "generated a self-signed TLS certificate; set [tls] cert/key for a real one");
            }
        }
        let provider = provider();
        let mut slots = Vec::new();
        for pair in pairs {
            let seen = stamp(&pair);
            let (key, info) = load_pair(&pair, &provider)?;
            slots.push(Slot {
                pair,
                key: Arc::new(key),
                info,
                seen,
                pending: None,
            });
        }
        let store = CertStore {
            slots: RwLock::new(slots),
            provider,
            warning_days: cfg.tls.expiry_warning_days,
            generated,
        };
        for (pair, info) in store.certificates() {
            info!(cert = %pair.cert.display(), names = %info.names.join(","), not_after = %postoffice_common::date::rfc5322(info.not_after), sha256 = %info.sha256, "TLS certificate loaded");
        }
        store.warn_expiring(SystemTime::now());
        Ok(Arc::new(store))
    }

    /// Whether the certificate is the generated self-signed one.
    pub fn generated(&self) -> bool {
        self.generated
    }

    /// The configured pairs, in order (the first is the default).
    pub fn pairs(&self) -> Vec<CertKey> {
        self.read().iter().map(|s| s.pair.clone()).collect()
    }

    /// Each pair with what its certificate in use says.
    pub fn certificates(&self) -> Vec<(CertKey, CertInfo)> {
        self.read()
            .iter()
            .map(|s| (s.pair.clone(), s.info.clone()))
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Slot>> {
        self.slots.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Read again the pairs whose files changed since last seen and then
    /// stayed the same since the previous call (a poll), or every pair when
    /// `force` (SIGHUP). A pair that fails keeps its certificate and is
    /// logged as an error.
    pub fn reload(&self, force: bool) -> Reloaded {
        let candidates: Vec<(usize, CertKey, Option<Stamp>)> = {
            let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
            slots
                .iter_mut()
                .enumerate()
                .filter_map(|(i, s)| {
                    let now = stamp(&s.pair);
                    if force || (now != s.seen && s.pending.as_ref() == Some(&now)) {
                        s.pending = None;
                        Some((i, s.pair.clone(), now))
                    } else {
                        s.pending = (now != s.seen).then_some(now);
                        None
                    }
                })
                .collect()
        };
        let mut done = Reloaded::default();
        for (i, pair, seen) in candidates {
            let result = load_pair(&pair, &self.provider);
            let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
            let Some(slot) = slots.get_mut(i) else {
                continue;
            };
            slot.seen = seen;
            match result {
                Ok((key, info)) => {
                    let changed = info != slot.info;
                    slot.key = Arc::new(key);
                    slot.info = info;
                    if changed {
                        info!(cert = %pair.cert.display(), names = %slot.info.names.join(","), not_after = %postoffice_common::date::rfc5322(slot.info.not_after), sha256 = %slot.info.sha256, "TLS certificate reloaded");
                    }
                    done.replaced.push(pair.cert.clone());
                }
                Err(e) => {
                    error!(cert = %pair.cert.display(), error = %e, "TLS certificate not reloaded; still serving the previous one (sha256 {})", slot.info.sha256);
                    done.failed.push(pair.cert.clone());
                }
            }
        }
        if !done.replaced.is_empty() {
            self.warn_expiring(SystemTime::now());
        }
        done
    }

    /// Log a warning for every certificate expiring within
    /// `expiry_warning_days` of `now` (an error for an expired one).
    pub fn warn_expiring(&self, now: SystemTime) -> usize {
        let mut n = 0;
        for (pair, info) in self.certificates() {
            let days = info.days_left(now);
            if days < 0 {
                error!(cert = %pair.cert.display(), names = %info.names.join(","), "TLS certificate {}; clients will refuse it", expiry_words(&info, now));
                n += 1;
            } else if (days as u64) < self.warning_days {
                warn!(cert = %pair.cert.display(), names = %info.names.join(","), days_left = days, "TLS certificate {}: renew it", expiry_words(&info, now));
                n += 1;
            }
        }
        n
    }

    /// The certificate for a client that asks for `sni`.
    fn choose(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let slots = self.read();
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(s) = slots.iter().find(|s| s.info.names.contains(&name)) {
                return Some(Arc::clone(&s.key));
            }
            if let Some(s) = slots.iter().find(|s| s.info.holds(&name)) {
                return Some(Arc::clone(&s.key));
            }
        }
        slots.first().map(|s| Arc::clone(&s.key))
    }

    /// The acceptor every listener uses; it asks this store for the
    /// certificate at each handshake.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        resumption(&mut config)?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(hello.server_name())
    }
}

/// Reload on SIGHUP and on file changes, and warn of expiry once a day,
/// until `shutdown`. `hangup` is the SIGHUP stream, installed before the
/// server started accepting (SIGHUP would otherwise end the process).
pub async fn watch(
    store: Arc<CertStore>,
    mut hangup: tokio::signal::unix::Signal,
    check_every: Duration,
    mut shutdown: crate::shutdown::Shutdown,
) {
    let poll = !check_every.is_zero();
    let mut files = tokio::time::interval(if poll {
        check_every
    } else {
        Duration::from_secs(3600)
    });
    files.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let day = Duration::from_secs(86_400);
    let mut daily = tokio::time::interval_at(tokio::time::Instant::now() + day, day);
    loop {
        let force = tokio::select! {
            _ = shutdown.recv() => return,
            Some(()) = hangup.recv() => true,
            _ = files.tick(), if poll => false,
            _ = daily.tick() => {
                store.warn_expiring(SystemTime::now());
                continue;
            }
        };
        if force {
            info!("SIGHUP: reading the TLS certificates again");
        }
        let s = Arc::clone(&store);
        let _ = tokio::task::spawn_blocking(move || s.reload(force)).await;
    }
}

/// Returning clients (a mail client polling every few minutes) resume
/// their TLS session instead of a full handshake: stateless tickets
/// (rotating keys, RFC 5077 / TLS 1.3 PSK) and a server-side cache for
/// clients that do not take tickets.
fn resumption(config: &mut ServerConfig) -> Result<(), TlsError> {
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| TlsError::Config(format!("session tickets: {e}")))?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
    Ok(())
}

fn generate_self_signed(hostname: &str, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    let fail = |message: String| TlsError::Generate {
        path: cert_path.to_path_buf(),
        message,
    };
    let dir = cert_path
        .parent()
        .ok_or_else(|| fail("the certificate path has no directory".into()))?;
    postoffice_common::durable::create_dir_all(dir)
        .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    let mut names = vec![
        hostname.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    names.dedup();
    let mut params = rcgen::CertificateParams::new(names)
        .map_err(|e| fail(format!("certificate names: {e}")))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "postoffice self-signed");
    let key = rcgen::KeyPair::generate().map_err(|e| fail(format!("key: {e}")))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| fail(format!("certificate: {e}")))?;
    for (path, pem) in [(key_path, key.serialize_pem()), (cert_path, cert.pem())] {
        postoffice_common::durable::write(path, pem.as_bytes())
            .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))?;
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

#[cfg(test)]
mod tests;
