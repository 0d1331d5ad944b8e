//! DKIM signing of mail our users submit (RFC 6376, RFC 8463).
//!
//! Keys (PKCS#8 PEM, ed25519 or RSA) are the [`KeyStore`]'s `dkim/<domain>`:
//! the file `<data_dir>/dkim/<domain>.key` with the Maildir backend, a row
//! of the database with PostgreSQL (every node signs with the same key).
//! `postoffice dkim generate DOMAIN` creates one and prints the DNS TXT
//! record to publish at `<selector>._domainkey.<domain>`.

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::keys::KeyStore;

/// Which key type to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Ed25519 (RFC 8463): short keys, not understood by every verifier.
    Ed25519,
    /// RSA, 2048 bits: understood everywhere.
    Rsa2048,
}

/// Why a key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// Refusing to overwrite a key that signs mail already.
    #[error("a DKIM key for {domain} already exists ({place}); delete it first to replace it")]
    Exists {
        /// The domain.
        domain: String,
        /// Where its key is (the file, or the database).
        place: String,
    },
    /// Key generation or encoding failed.
    #[error("generating the DKIM key: {0}")]
    Generate(String),
    /// The key could not be read or written.
    #[error("cannot store or read {place}: {source}")]
    Write {
        /// Where the key is (the file, or the database).
        place: String,
        /// Why.
        source: std::io::Error,
    },
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

/// Where the key of `domain` lives with the Maildir backend.
pub fn key_path(data_dir: &Path, domain: &str) -> PathBuf {
    KeyStore::file_path(data_dir, &key_name(domain))
}

/// The [`KeyStore`] name of `domain`'s key.
pub fn key_name(domain: &str) -> String {
    format!("dkim/{domain}")
}

/// Create a key for `domain` in `<data_dir>/dkim/` (refusing to overwrite
/// one) and return the TXT record value to publish.
pub fn generate(data_dir: &Path, domain: &str, algorithm: Algorithm) -> Result<String, DkimError> {
    generate_in(&KeyStore::files(data_dir), domain, algorithm)
}

/// Create a key for `domain` in `keys` (refusing to overwrite one, also
/// when another node stores one at the same moment) and return the TXT
/// record value to publish.
pub fn generate_in(
    keys: &KeyStore,
    domain: &str,
    algorithm: Algorithm,
) -> Result<String, DkimError> {
    let name = key_name(domain);
    let exists = || DkimError::Exists {
        domain: domain.to_string(),
        place: keys.describe(&name),
    };
    let write = |source| DkimError::Write {
        place: keys.describe(&name),
        source,
    };
    if keys.get(&name).map_err(write)?.is_some() {
        return Err(exists());
    }
    let generate = |e: &dyn std::fmt::Display| DkimError::Generate(e.to_string());
    let (pkcs8, record) = match algorithm {
        Algorithm::Ed25519 => {
            let der = Ed25519Key::generate_pkcs8().map_err(|e| generate(&e))?;
            let key = Ed25519Key::from_pkcs8_der(&der).map_err(|e| generate(&e))?;
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
            let key =
                rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).map_err(|e| generate(&e))?;
            let der = key
                .to_pkcs8_der()
                .map_err(|e| generate(&e))?
                .as_bytes()
                .to_vec();
            let public = rsa::RsaPublicKey::from(&key)
                .to_public_key_der()
                .map_err(|e| generate(&e))?;
            (
                der,
                format!("v=DKIM1; k=rsa; p={}", STANDARD.encode(public.as_bytes())),
            )
        }
    };
    let pem = pem_encode("PRIVATE KEY", &pkcs8);
    let (_, created) = keys
        .create_if_absent(&name, || Ok(pem.into_bytes()))
        .map_err(write)?;
    if !created {
        return Err(exists());
    }
    Ok(record)
}

/// The TXT record value for the key that signs `domain`'s mail now
/// (`v=DKIM1; k=...; p=...`), or `None` when the domain has no key.
pub fn public_record(keys: &KeyStore, domain: &str) -> Result<Option<String>, DkimError> {
    let name = key_name(domain);
    let pem = keys.get(&name).map_err(|source| DkimError::Write {
        place: keys.describe(&name),
        source,
    })?;
    let Some(pem) = pem else {
        return Ok(None);
    };
    let bad =
        |e: &dyn std::fmt::Display| DkimError::Generate(format!("{}: {e}", keys.describe(&name)));
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| bad(&e))?;
    let PrivateKeyDer::Pkcs8(p8) = &key else {
        return Err(bad(&"not a PKCS#8 key"));
    };
    if let Ok(k) = Ed25519Key::from_pkcs8_der(p8.secret_pkcs8_der()) {
        return Ok(Some(format!(
            "v=DKIM1; k=ed25519; p={}",
            STANDARD.encode(k.public_key())
        )));
    }
    use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
    let rsa = rsa::RsaPrivateKey::from_pkcs8_der(p8.secret_pkcs8_der()).map_err(|e| bad(&e))?;
    let public = rsa::RsaPublicKey::from(&rsa)
        .to_public_key_der()
        .map_err(|e| bad(&e))?;
    Ok(Some(format!(
        "v=DKIM1; k=rsa; p={}",
        STANDARD.encode(public.as_bytes())
    )))
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

/// Signs with whatever key exists for the sender's domain. Cloning is
/// cheap and shares the database cache.
#[derive(Debug, Clone)]
pub struct Signer {
    keys: KeyStore,
    selector: String,
}

impl Signer {
    /// Keys from `<data_dir>/dkim/`, published under `selector`.
    pub fn new(data_dir: &Path, selector: &str) -> Self {
        Self::with_keys(KeyStore::files(data_dir), selector)
    }

    /// Keys from `keys`, published under `selector`.
    pub fn with_keys(keys: KeyStore, selector: &str) -> Self {
        Signer {
            keys,
            selector: selector.to_string(),
        }
    }

    /// A `DKIM-Signature:` header (with CRLF) for `message`, or `None` when
    /// the domain has no key (or signing failed: logged).
    pub fn sign(&self, domain: &str, message: &[u8]) -> Option<String> {
        self.sign_reader(domain, &mut &message[..])
    }

    /// [`Signer::sign`] for a message read once from `message` (a large
    /// message is hashed as it is read, never held whole).
    pub fn sign_reader(&self, domain: &str, message: &mut dyn Read) -> Option<String> {
        let domain = domain.to_ascii_lowercase();
        if domain.is_empty() || domain.contains(['/', '\\']) || domain.starts_with('.') {
            return None;
        }
        let pem = match self.keys.get_cached(&key_name(&domain)) {
            Ok(Some(pem)) => pem,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(%domain, error = %e, "cannot read the DKIM key; sending unsigned");
                return None;
            }
        };
        let key = match PrivateKeyDer::from_pem_slice(&pem) {
            Ok(k) => k,
            Err(_) => return None,
        };
        // PKCS#8 holds either key type: try ed25519 first, then RSA.
        let ed25519 = match &key {
            PrivateKeyDer::Pkcs8(p8) => Ed25519Key::from_pkcs8_der(p8.secret_pkcs8_der()).ok(),
            _ => None,
        };
        let result = match ed25519 {
            Some(k) => sign_with(k, &domain, &self.selector, message),
            None => RsaKey::<Sha256>::from_key_der(key.clone_key())
                .and_then(|k| sign_with(k, &domain, &self.selector, message)),
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

fn sign_with<K: SigningKey>(
    key: K,
    domain: &str,
    selector: &str,
    message: &mut dyn Read,
) -> mail_auth::Result<String> {
    let signer = DkimSigner::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(SIGNED_HEADERS);
    let mut stream = signer.sign_streaming();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match message.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(mail_auth::Error::Io(e.to_string())),
        };
        stream.write(&buf[..n]);
    }
    stream.finish().map(|s| s.to_header())
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

    /// The record printed by `generate` is the one derived again from the
    /// stored key (what `postoffice dns` prints and checks).
    #[test]
    fn public_record_matches_the_generated_one() {
        let dir = tempfile::tempdir().unwrap();
        for (domain, algo) in [
            ("ed.test", Algorithm::Ed25519),
            ("rsa.test", Algorithm::Rsa2048),
        ] {
            let record = generate(dir.path(), domain, algo).unwrap();
            assert_eq!(
                public_record(&KeyStore::files(dir.path()), domain)
                    .unwrap()
                    .as_deref(),
                Some(record.as_str())
            );
        }
        assert_eq!(
            public_record(&KeyStore::files(dir.path()), "none.test").unwrap(),
            None
        );
    }
}
