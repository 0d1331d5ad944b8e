//! The Sender Rewriting Scheme (SRS, Shevek's "Sender Rewriting Scheme"
//! paper, as implemented by libsrs2 and Postfix's postsrsd): how a message
//! forwarded to another domain keeps passing SPF there, and how the bounces
//! of such a message find their way back to the original sender.
//!
//! A forwarded message's envelope sender `user@orig.example` becomes
//! `SRS0=HHHH=TT=orig.example=user@<forwarding domain>`: `TT` is the day
//! (days since the epoch, modulo 1024, in two base32 characters) and `HHHH`
//! the first four base64 characters of an HMAC-SHA256, keyed with our
//! secret, over `TT`, the original domain and the original local part (lower
//! case). Only we can make such an address, so only bounces of mail we
//! really forwarded are accepted for it — and only for
//! [`DEFAULT_MAX_AGE_DAYS`] (`[addresses] srs_max_age_days`): an SRS address
//! is not a permanent open relay to its original sender.
//!
//! Forwarding an SRS0 address again (a second hop) gives
//! `SRS1=HHHH=<first forwarder>==HHHH=TT=orig.example=user@<us>`, whose
//! bounce goes to the first forwarder, not through every hop.
//!
//! The secret is 32 random bytes generated on first use and kept in
//! `<data_dir>/srs.key` (base64, mode 0600, written with
//! [`postoffice_common::durable`]), or with the PostgreSQL backend in the
//! database, shared by every node (see [`crate::keys`]).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::keys::KeyStore;

/// How many days an SRS address is accepted (libsrs2's default is 21).
pub const DEFAULT_MAX_AGE_DAYS: u32 = 21;

/// Base32 alphabet of the timestamp (RFC 4648).
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// The timestamp wraps around after 1024 days (two base32 characters).
const TIME_SLOTS: u32 = 1024;

/// Characters of the hash kept in an address.
const HASH_LEN: usize = 4;

/// The name of the key file in the data directory.
pub const KEY_FILE: &str = "srs.key";

/// The name of the secret in the [`KeyStore`] (`<data_dir>/srs.key`, or a
/// row of the database with the PostgreSQL backend).
pub const KEY_NAME: &str = "srs";

/// Why an SRS address is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrsError {
    /// Not an SRS0/SRS1 address, or not well-formed.
    #[error("not a valid SRS address")]
    Malformed,
    /// The hash does not match: we did not make this address.
    #[error("SRS address has an invalid hash (forged)")]
    BadHash,
    /// Older than the accepted age (or from the future).
    #[error("SRS address has expired")]
    Expired,
}

/// The SRS secret and the rules of encoding and decoding.
#[derive(Clone)]
pub struct Srs {
    secret: Vec<u8>,
    max_age_days: u32,
}

impl std::fmt::Debug for Srs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Srs")
            .field("secret", &"<redacted>")
            .field("max_age_days", &self.max_age_days)
            .finish()
    }
}

/// Today as an SRS day number (days since the epoch).
pub fn today() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}

/// Is the local part `local` in SRS form (SRS0/SRS1 with any of the
/// separators `=`, `+`, `-`)?
pub fn is_srs_local(local: &str) -> bool {
    let b = local.as_bytes();
    b.len() > 5
        && (b[..4].eq_ignore_ascii_case(b"SRS0") || b[..4].eq_ignore_ascii_case(b"SRS1"))
        && matches!(b[4], b'=' | b'+' | b'-')
}

/// Is `address` (`local@domain`) in SRS form?
pub fn is_srs_address(address: &str) -> bool {
    address
        .rsplit_once('@')
        .is_some_and(|(l, _)| is_srs_local(l))
}

impl Srs {
    /// An SRS with `secret` (tests, or a key read elsewhere).
    pub fn new(secret: Vec<u8>, max_age_days: u32) -> Srs {
        Srs {
            secret,
            max_age_days,
        }
    }

    /// The key file of `data_dir`.
    pub fn key_path(data_dir: &Path) -> PathBuf {
        data_dir.join(KEY_FILE)
    }

    /// Read the secret from `<data_dir>/srs.key`, creating it (32 random
    /// bytes, 0600, durably) when it does not exist yet.
    pub fn load_or_create(data_dir: &Path, max_age_days: u32) -> std::io::Result<Srs> {
        Self::load_or_create_in(&KeyStore::files(data_dir), max_age_days)
    }

    /// Read the secret (key [`KEY_NAME`]) from `keys`, creating it (32
    /// random bytes, base64) when it does not exist yet. Of two nodes
    /// creating it at once on a shared database, both get the one stored.
    pub fn load_or_create_in(keys: &KeyStore, max_age_days: u32) -> std::io::Result<Srs> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let (text, _) = keys.create_if_absent(KEY_NAME, || {
            use rand::RngCore;
            let mut secret = vec![0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut secret);
            Ok(format!("{}\n", b64.encode(&secret)).into_bytes())
        })?;
        let invalid = |why: String| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {why}", keys.describe(KEY_NAME)),
            )
        };
        let text = String::from_utf8(text).map_err(|_| invalid("not base64".into()))?;
        let secret = b64
            .decode(text.trim())
            .map_err(|e| invalid(format!("not base64: {e}")))?;
        if secret.len() < 16 {
            return Err(invalid("the SRS secret is too short".into()));
        }
        Ok(Srs::new(secret, max_age_days))
    }

    fn hash(&self, parts: &[&str]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key");
        for p in parts {
            mac.update(p.to_ascii_lowercase().as_bytes());
            // A separator, so that ("ab","c") and ("a","bc") differ.
            mac.update(&[0]);
        }
        let out = mac.finalize().into_bytes();
        let mut s = base64::engine::general_purpose::STANDARD.encode(out);
        s.truncate(HASH_LEN);
        s
    }

    fn hash_ok(&self, given: &str, parts: &[&str]) -> bool {
        let want = self.hash(parts);
        // Some MTAs lower-case local parts: compare without case, as
        // libsrs2 does (the hash keeps ~20 bits either way).
        given.len() == HASH_LEN && given.eq_ignore_ascii_case(&want)
    }

    /// The envelope sender for forwarding mail from `sender` through our
    /// domain `domain` on day `day` ([`today`]). The null sender stays
    /// null; an address of ours already in SRS form is kept as is; an SRS
    /// address of another forwarder becomes SRS1.
    pub fn forward(&self, sender: &str, domain: &str, day: u64) -> String {
        if sender.is_empty() {
            return String::new();
        }
        let Some((local, orig_domain)) = sender.rsplit_once('@') else {
            return sender.to_string();
        };
        if orig_domain.eq_ignore_ascii_case(domain) && is_srs_local(local) {
            return sender.to_string();
        }
        if is_srs_local(local) {
            if local[..4].eq_ignore_ascii_case("SRS1") {
                // SRS1=HHHH=first==rest: keep pointing at the first forwarder.
                let rest = &local[5..];
                if let Some((_old_hash, tail)) = rest.split_once('=')
                    && let Some((first, srs0_rest)) = tail.split_once('=')
                {
                    let h = self.hash(&[first, srs0_rest]);
                    return format!("SRS1={h}={first}={srs0_rest}@{domain}");
                }
                return sender.to_string();
            }
            // SRS0 of another forwarder: "=HHHH=TT=d=l" after "SRS0".
            let srs0_rest = &local[4..];
            let h = self.hash(&[orig_domain, srs0_rest]);
            return format!("SRS1={h}={orig_domain}={srs0_rest}@{domain}");
        }
        let tt = timestamp(day);
        let h = self.hash(&[&tt, orig_domain, local]);
        format!("SRS0={h}={tt}={orig_domain}={local}@{domain}")
    }

    /// Where a bounce to the SRS address `address` goes: the original
    /// sender (SRS0), or the first forwarder's SRS0 address (SRS1). Checks
    /// the hash and, for SRS0, the age on day `day`.
    pub fn reverse(&self, address: &str, day: u64) -> Result<String, SrsError> {
        let (local, _domain) = address.rsplit_once('@').ok_or(SrsError::Malformed)?;
        if !is_srs_local(local) {
            return Err(SrsError::Malformed);
        }
        // After the first separator (any of =+-), the fields are split by '='.
        let rest = &local[5..];
        if local[..4].eq_ignore_ascii_case("SRS1") {
            let (hash, tail) = rest.split_once('=').ok_or(SrsError::Malformed)?;
            let (first, srs0_rest) = tail.split_once('=').ok_or(SrsError::Malformed)?;
            if first.is_empty() || srs0_rest.is_empty() {
                return Err(SrsError::Malformed);
            }
            if !self.hash_ok(hash, &[first, srs0_rest]) {
                return Err(SrsError::BadHash);
            }
            return Ok(format!("SRS0{srs0_rest}@{first}"));
        }
        // SRS0=HHHH=TT=domain=local (the local part may contain '=').
        let mut it = rest.splitn(4, '=');
        let (Some(hash), Some(tt), Some(orig_domain), Some(orig_local)) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(SrsError::Malformed);
        };
        if orig_domain.is_empty() || orig_local.is_empty() || tt.len() != 2 {
            return Err(SrsError::Malformed);
        }
        if !self.hash_ok(hash, &[tt, orig_domain, orig_local]) {
            return Err(SrsError::BadHash);
        }
        let then = parse_timestamp(tt).ok_or(SrsError::Malformed)?;
        let now = (day % u64::from(TIME_SLOTS)) as u32;
        let age = (now + TIME_SLOTS - then) % TIME_SLOTS;
        if age > self.max_age_days {
            return Err(SrsError::Expired);
        }
        Ok(format!("{orig_local}@{orig_domain}"))
    }
}

/// Day `day` as two base32 characters (modulo 1024).
fn timestamp(day: u64) -> String {
    let t = (day % u64::from(TIME_SLOTS)) as usize;
    let mut s = String::with_capacity(2);
    s.push(BASE32[t >> 5] as char);
    s.push(BASE32[t & 31] as char);
    s
}

fn parse_timestamp(tt: &str) -> Option<u32> {
    let mut v = 0u32;
    for c in tt.bytes() {
        let c = c.to_ascii_uppercase();
        let i = BASE32.iter().position(|&b| b == c)?;
        v = (v << 5) | i as u32;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srs() -> Srs {
        Srs::new(b"0123456789abcdef0123456789abcdef".to_vec(), 21)
    }

    #[test]
    fn srs0_round_trip() {
        let s = srs();
        let day = 20_000;
        let a = s.forward("Alice@Orig.example", "fwd.test", day);
        assert!(a.starts_with("SRS0="), "{a}");
        assert!(a.ends_with("=Orig.example=Alice@fwd.test"), "{a}");
        assert_eq!(s.reverse(&a, day).unwrap(), "Alice@Orig.example");
        // Lower-cased by some relay on the way: still ours.
        assert_eq!(
            s.reverse(&a.to_ascii_lowercase(), day).unwrap(),
            "alice@orig.example"
        );
        // A local part holding '=' survives.
        let b = s.forward("a=b@x.example", "fwd.test", day);
        assert_eq!(s.reverse(&b, day).unwrap(), "a=b@x.example");
    }

    #[test]
    fn null_sender_stays_null_and_own_srs_is_kept() {
        let s = srs();
        assert_eq!(s.forward("", "fwd.test", 1), "");
        let a = s.forward("u@o.example", "fwd.test", 1);
        assert_eq!(s.forward(&a, "fwd.test", 1), a);
    }

    #[test]
    fn forged_hash_is_refused() {
        let s = srs();
        let day = 20_000;
        let a = s.forward("alice@orig.example", "fwd.test", day);
        // Same shape, other original sender: the hash no longer matches.
        let forged = a.replace("=alice@", "=mallory@");
        assert_eq!(s.reverse(&forged, day), Err(SrsError::BadHash));
        let tt = timestamp(day);
        let made_up = format!("SRS0=AAAA={tt}=orig.example=alice@fwd.test");
        assert_eq!(s.reverse(&made_up, day), Err(SrsError::BadHash));
        // Another secret made it.
        let other = Srs::new(b"another secret, 32 bytes long!!!".to_vec(), 21);
        assert_eq!(other.reverse(&a, day), Err(SrsError::BadHash));
        for bad in [
            "SRS0=x@fwd.test",
            "SRS0==@fwd.test",
            "alice@fwd.test",
            "SRS0",
        ] {
            assert_eq!(s.reverse(bad, day), Err(SrsError::Malformed), "{bad}");
        }
    }

    #[test]
    fn age_is_checked_across_the_wrap() {
        let s = srs();
        let day = 1023; // the last slot before the timestamp wraps
        let a = s.forward("alice@orig.example", "fwd.test", day);
        assert!(s.reverse(&a, day).is_ok());
        assert!(s.reverse(&a, day + 21).is_ok(), "21 days old (wrapped)");
        assert_eq!(s.reverse(&a, day + 22), Err(SrsError::Expired));
        assert_eq!(s.reverse(&a, day - 1), Err(SrsError::Expired), "future");
    }

    #[test]
    fn srs1_points_at_the_first_forwarder() {
        let first = Srs::new(b"first forwarder's secret........".to_vec(), 21);
        let second = srs();
        let day = 500;
        let a = first.forward("alice@orig.example", "one.test", day);
        let b = second.forward(&a, "two.test", day);
        assert!(b.starts_with("SRS1="), "{b}");
        assert!(b.ends_with("@two.test"), "{b}");
        // Its bounce goes to the first forwarder's SRS0 address...
        let back = second.reverse(&b, day).unwrap();
        assert_eq!(back, a);
        // ...which the first forwarder decodes.
        assert_eq!(first.reverse(&back, day).unwrap(), "alice@orig.example");
        // A third hop keeps pointing at the first forwarder.
        let c = second.forward(&b, "three.test", day);
        assert_eq!(second.reverse(&c, day).unwrap(), a);
        // Forged SRS1.
        let forged = b.replacen("SRS1=", "SRS1=Q", 1);
        assert!(second.reverse(&forged, day).is_err());
    }

    #[test]
    fn key_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Srs::load_or_create(dir.path(), 21).unwrap();
        let mode = std::fs::metadata(Srs::key_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Srs::load_or_create(dir.path(), 21).unwrap();
        assert_eq!(a.secret, b.secret);
        assert_eq!(a.secret.len(), 32);
    }

    #[test]
    fn recognises_srs_addresses() {
        assert!(is_srs_address("SRS0=abcd=AB=x.example=u@fwd.test"));
        assert!(is_srs_address("srs1+x@fwd.test"));
        assert!(!is_srs_address("srs0@fwd.test"));
        assert!(!is_srs_address("alice@fwd.test"));
    }
}
