//! The verified-credential cache: a repeated correct login costs a keyed
//! hash instead of an argon2id verification (19 MiB and a core for tens of
//! milliseconds), like Dovecot's `auth_cache`, without weakening the stored
//! hashes.
//!
//! After a successful full verification the cache remembers, per user,
//! HMAC-SHA256(k, user NUL password) under a key `k` drawn at random when
//! the process starts and never stored, together with a fingerprint of the
//! stored password hash it was checked against. A later login is served
//! from the cache only when all of these hold:
//!
//! - the entry is younger than `[auth] cache_ttl_secs`;
//! - the presented password gives the same HMAC (compared in constant
//!   time) — the cache never holds the password, and its contents are
//!   worthless outside this process;
//! - the user still exists, is not disabled, and still has the very stored
//!   hash the entry was made against. A password change, a disable or a
//!   delete — from the CLI, the web page or another node — changes what the
//!   directory snapshot says, so the entry is dead at once; nothing has to
//!   remember to invalidate it.
//!
//! Failures are never cached: a wrong password always takes the full path
//! (and the throttle counts it). The cache is bounded
//! (`[auth] cache_entries`); when full, the least recently used tenth goes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use postoffice_directory::DirectoryData;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// See the module documentation.
#[derive(Debug)]
pub struct AuthCache {
    key: [u8; 32],
    ttl: Duration,
    max_entries: usize,
    /// Keyed by [`AuthCache::slot`] of the address, not the address itself:
    /// a fixed-size key needs no allocation per user (a server that saw
    /// 10,000 logins kept ~1 MiB of small strings scattered over its heap).
    entries: Mutex<HashMap<Slot, Entry>>,
}

/// 128 bits of a keyed hash of the address. Two addresses sharing a slot
/// would only evict each other's entry: `mac` covers the address too, so
/// a login is never accepted from another user's entry.
type Slot = [u8; 16];

#[derive(Debug, Clone)]
struct Entry {
    mac: [u8; 32],
    /// SHA-256 of the stored password hash the password was verified against.
    stored: [u8; 32],
    verified_at: Instant,
    last_used: Instant,
}

impl AuthCache {
    /// A cache keeping entries for `ttl` (zero disables it) and at most
    /// `max_entries` users.
    pub fn new(ttl: Duration, max_entries: usize) -> AuthCache {
        let mut key = [0u8; 32];
        rand::Rng::fill(&mut rand::rngs::OsRng, &mut key);
        AuthCache {
            key,
            ttl,
            max_entries,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the cache is on.
    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.max_entries > 0
    }

    fn slot(&self, address: &str) -> Slot {
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.key).expect("any key length");
        m.update(b"slot\0");
        m.update(address.as_bytes());
        let full: [u8; 32] = m.finalize().into_bytes().into();
        let mut slot = [0u8; 16];
        slot.copy_from_slice(&full[..16]);
        slot
    }

    fn mac(&self, address: &str, password: &[u8]) -> [u8; 32] {
        let mut m = <HmacSha256 as Mac>::new_from_slice(&self.key).expect("any key length");
        m.update(address.as_bytes());
        m.update(&[0]);
        m.update(password);
        m.finalize().into_bytes().into()
    }

    /// Whether `address` (canonical) with `password` was verified recently
    /// against the stored hash `directory` still holds for an enabled user.
    pub fn check(&self, directory: &DirectoryData, address: &str, password: &[u8]) -> bool {
        if !self.enabled() {
            return false;
        }
        let Some(user) = directory.user(address).filter(|u| !u.disabled) else {
            // Deleted or disabled: the entry is dead even if the user comes
            // back.
            self.forget(address);
            return false;
        };
        let mac = self.mac(address, password);
        let stored = fingerprint(&user.password_hash);
        let slot = self.slot(address);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = entries.get_mut(&slot) else {
            return false;
        };
        let now = Instant::now();
        let live = now.duration_since(e.verified_at) < self.ttl && e.stored == stored;
        if !live {
            entries.remove(&slot);
            return false;
        }
        if !constant_time_eq(&e.mac, &mac) {
            return false;
        }
        e.last_used = now;
        true
    }

    /// Remember a successful full verification of `address` with
    /// `password` against `stored_hash`.
    pub fn remember(&self, address: &str, password: &[u8], stored_hash: &str) {
        if !self.enabled() {
            return;
        }
        let now = Instant::now();
        let entry = Entry {
            mac: self.mac(address, password),
            stored: fingerprint(stored_hash),
            verified_at: now,
            last_used: now,
        };
        let slot = self.slot(address);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.max_entries && !entries.contains_key(&slot) {
            evict(&mut entries, self.max_entries);
        }
        entries.insert(slot, entry);
    }

    /// Forget `address` (this process's own change of its password).
    pub fn forget(&self, address: &str) {
        let slot = self.slot(address);
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&slot);
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn fingerprint(stored_hash: &str) -> [u8; 32] {
    Sha256::digest(stored_hash.as_bytes()).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Drop the least recently used tenth (at least one entry).
fn evict(entries: &mut HashMap<Slot, Entry>, max: usize) {
    let mut by_use: Vec<(Instant, Slot)> = entries.iter().map(|(k, e)| (e.last_used, *k)).collect();
    let n = (max / 10).max(1).min(by_use.len());
    by_use.select_nth_unstable_by(n - 1, |a, b| a.0.cmp(&b.0));
    for (_, k) in by_use.into_iter().take(n) {
        entries.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postoffice_directory::{Directory, hash_password};

    fn directory() -> (tempfile::TempDir, Directory) {
        let dir = tempfile::tempdir().unwrap();
        let d = Directory::open(dir.path()).unwrap();
        d.add_domain("example.test").unwrap();
        for (u, pw) in [("alice@example.test", "pw-a"), ("bob@example.test", "pw-b")] {
            d.add_user(u, &hash_password(pw.as_bytes()).unwrap())
                .unwrap();
        }
        (dir, d)
    }

    fn stored(d: &Directory, u: &str) -> String {
        d.snapshot().user(u).unwrap().password_hash.clone()
    }

    #[test]
    fn a_verified_password_is_served_until_it_changes() {
        let (_t, d) = directory();
        let c = AuthCache::new(Duration::from_secs(3600), 100);
        let a = "alice@example.test";
        assert!(!c.check(&d.snapshot(), a, b"pw-a"), "nothing cached yet");
        c.remember(a, b"pw-a", &stored(&d, a));
        assert!(c.check(&d.snapshot(), a, b"pw-a"));
        assert!(
            !c.check(&d.snapshot(), a, b"wrong"),
            "another password is not served"
        );
        assert!(!c.check(&d.snapshot(), "bob@example.test", b"pw-a"));
        // A password change (here, or by another process) kills the entry.
        d.set_password(a, &hash_password(b"new").unwrap()).unwrap();
        assert!(!c.check(&d.snapshot(), a, b"pw-a"));
        assert!(c.is_empty(), "the dead entry is dropped");
    }

    #[test]
    fn disable_and_delete_kill_entries() {
        let (_t, d) = directory();
        let c = AuthCache::new(Duration::from_secs(3600), 100);
        let (a, b) = ("alice@example.test", "bob@example.test");
        c.remember(a, b"pw-a", &stored(&d, a));
        c.remember(b, b"pw-b", &stored(&d, b));
        d.set_user_disabled(a, true).unwrap();
        assert!(!c.check(&d.snapshot(), a, b"pw-a"));
        d.set_user_disabled(a, false).unwrap();
        // Re-enabled: the disable cost the entry; a full verification must
        // come first.
        assert!(!c.check(&d.snapshot(), a, b"pw-a"));
        d.remove_user(b).unwrap();
        assert!(!c.check(&d.snapshot(), b, b"pw-b"));
    }

    #[test]
    fn entries_expire_and_the_cache_stays_bounded() {
        let (_t, d) = directory();
        let c = AuthCache::new(Duration::from_millis(1), 100);
        let a = "alice@example.test";
        c.remember(a, b"pw-a", &stored(&d, a));
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(5) {
            std::hint::spin_loop();
        }
        assert!(!c.check(&d.snapshot(), a, b"pw-a"), "expired");
        let c = AuthCache::new(Duration::from_secs(60), 20);
        for i in 0..100 {
            c.remember(&format!("u{i}@example.test"), b"x", "h");
        }
        assert!(c.len() <= 20, "{}", c.len());
        let off = AuthCache::new(Duration::ZERO, 100);
        off.remember(a, b"pw-a", &stored(&d, a));
        assert!(!off.check(&d.snapshot(), a, b"pw-a"), "ttl 0 disables it");
    }
}
