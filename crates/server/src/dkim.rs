//! DKIM signing of mail our users submit (RFC 6376, RFC 8463).
//!
//! Keys live in `<data_dir>/dkim/<domain>.key` (PKCS#8 PEM, ed25519 or
//! RSA). `postoffice dkim generate DOMAIN` creates one and prints the DNS
//! TXT record to publish at `<selector>._domainkey.<domain>`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// Which key type to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Ed25519,
    Rsa2048,
}

/// Headers signed (those present are signed; RFC 6376 5.4.1).
const SIGNED_HEADERS: [&str; 9] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Reply-To",
];

pub fn key_path(data_dir: &Path, domain: &str) -> PathBuf {
    data_dir.join("dkim").join(format!("{domain}.key"))
}

/// Create a key for `domain` (refusing to overwrite one) and return the
/// TXT record value to publish.
pub fn generate(data_dir: &Path, domain: &str, algorithm: Algorithm) -> Result<String> {
    let path = key_path(data_dir, domain);
    if path.exists() {
        bail!(
            "a DKIM key for {domain} already exists at {}; delete it first to replace it",
            path.display()
        );
    }
    let (pkcs8, record) = match algorithm {
        Algorithm::Ed25519 => {
            let der = Ed25519Key::generate_pkcs8()
                .map_err(|e| anyhow::anyhow!("generating an ed25519 key: {e}"))?;
            let key = Ed25519Key::from_pkcs8_der(&der).map_err(|e| anyhow::anyhow!("{e}"))?;
            (
                der,
                format!(
                    "v=DKIM1; k=ed25519; p={}",
                    STANDARD.encode(key.public_key())
                ),
            )
        }
        Algorithm::Rsa2048 => {
            use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
            let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
                .context("generating an RSA key")?;
            let der = key
                .to_pkcs8_der()
                .context("encoding the RSA key")?
                .as_bytes()
                .to_vec();
            let public = rsa::RsaPublicKey::from(&key)
                .to_public_key_der()
                .context("encoding the RSA public key")?;
            (
                der,
                format!("v=DKIM1; k=rsa; p={}", STANDARD.encode(public.as_bytes())),
            )
        }
    };
    let pem = pem_encode("PRIVATE KEY", &pkcs8);
    let dir = path.parent().context("key path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_private(&path, pem.as_bytes())?;
    Ok(record)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Signs with whatever key exists for the sender's domain.
pub struct Signer {
    data_dir: PathBuf,
    selector: String,
}

impl Signer {
    pub fn new(data_dir: &Path, selector: &str) -> Self {
        Signer {
            data_dir: data_dir.to_path_buf(),
            selector: selector.to_string(),
        }
    }

    /// A `DKIM-Signature:` header (with CRLF) for `message`, or `None` when
    /// the domain has no key (or signing failed: logged).
    pub fn sign(&self, domain: &str, message: &[u8]) -> Option<String> {
        let domain = domain.to_ascii_lowercase();
        if domain.is_empty() || domain.contains(['/', '\\']) || domain.starts_with('.') {
            return None;
        }
        let path = key_path(&self.data_dir, &domain);
        let key = match PrivateKeyDer::from_pem_file(&path) {
            Ok(k) => k,
            Err(_) => return None,
        };
        let result = match &key {
            PrivateKeyDer::Pkcs8(p8) => match Ed25519Key::from_pkcs8_der(p8.secret_pkcs8_der()) {
                Ok(k) => DkimSigner::from_key(k)
                    .domain(domain.clone())
                    .selector(self.selector.clone())
                    .headers(SIGNED_HEADERS)
                    .sign(message)
                    .map(|s| s.to_header()),
                Err(_) => match RsaKey::<Sha256>::from_key_der(key.clone_key()) {
                    Ok(k) => DkimSigner::from_key(k)
                        .domain(domain.clone())
                        .selector(self.selector.clone())
                        .headers(SIGNED_HEADERS)
                        .sign(message)
                        .map(|s| s.to_header()),
                    Err(e) => Err(e),
                },
            },
            _ => match RsaKey::<Sha256>::from_key_der(key.clone_key()) {
                Ok(k) => DkimSigner::from_key(k)
                    .domain(domain.clone())
                    .selector(self.selector.clone())
                    .headers(SIGNED_HEADERS)
                    .sign(message)
                    .map(|s| s.to_header()),
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(%domain, error = %e, "DKIM signing failed; sending unsigned");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_and_sign_ed25519() {
        let dir = tempfile::tempdir().unwrap();
        let record = generate(dir.path(), "example.test", Algorithm::Ed25519).unwrap();
        assert!(record.starts_with("v=DKIM1; k=ed25519; p="), "{record}");
        assert!(
            generate(dir.path(), "example.test", Algorithm::Ed25519).is_err(),
            "no overwrite"
        );
        let signer = Signer::new(dir.path(), "sel");
        let msg = b"From: a@example.test\r\nTo: b@example.net\r\nSubject: x\r\n\r\nbody\r\n";
        let h = signer.sign("example.test", msg).expect("signed");
        assert!(h.starts_with("DKIM-Signature: "), "{h}");
        assert!(
            h.contains("d=example.test") && h.contains("s=sel") && h.contains("a=ed25519-sha256"),
            "{h}"
        );
        assert!(
            signer.sign("other.test", msg).is_none(),
            "no key, no signature"
        );
        assert!(signer.sign("../etc", msg).is_none());
    }
}
