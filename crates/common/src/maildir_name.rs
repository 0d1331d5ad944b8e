//! Unique Maildir file names (the one generator, for the store and for
//! `postoffice fetch` alike).
//!
//! A name is `<secs>.M<micros>P<pid>Q<counter>R<random>.<host>`: time, pid
//! and a per-process counter make it unique on one host; the random part
//! guards against a pid reused across a clock step backwards and against
//! two hosts sharing one volume under the same configured name. The host
//! part is escaped as the Maildir convention asks, so that `/`, `:` and `,`
//! (which the store parses as field separators) never appear in it.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Make a host name safe inside Maildir file names: `/`, `:` and `,` become
/// octal escapes, anything non-printable or non-ASCII is dropped, and an
/// empty result becomes `localhost`.
pub fn sanitize_hostname(hostname: &str) -> String {
    let mut out = String::with_capacity(hostname.len());
    for c in hostname.chars() {
        match c {
            '/' => out.push_str("\\057"),
            ':' => out.push_str("\\072"),
            ',' => out.push_str("\\054"),
            '\x21'..='\x7e' => out.push(c),
            _ => {}
        }
    }
    if out.is_empty() {
        // An empty host part would still be unique, but it confuses tools
        // that split the name on '.'.
        out.push_str("localhost");
    }
    out
}

/// This machine's host name as the kernel reports it, sanitised.
pub fn local_hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    sanitize_hostname(name.trim())
}

/// Per-process counter: two names made in the same microsecond differ.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh unique base name; `host` must already be sanitised
/// ([`sanitize_hostname`]).
pub fn unique_name(host: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let pid = std::process::id();
    let q = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Randomly keyed SipHash: plenty for collision avoidance.
    let mut h = RandomState::new().build_hasher();
    h.write_u128(now.as_nanos());
    h.write_u32(pid);
    h.write_u64(q);
    let random = h.finish() as u32;
    format!(
        "{}.M{:06}P{}Q{}R{:08x}.{}",
        now.as_secs(),
        now.subsec_micros(),
        pid,
        q,
        random,
        host
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_is_sanitised() {
        assert_eq!(sanitize_hostname("mx1.example.test"), "mx1.example.test");
        assert_eq!(sanitize_hostname("a/b:c,d"), "a\\057b\\072c\\054d");
        assert_eq!(sanitize_hostname("a b\tc\u{e9}"), "abc");
        assert_eq!(sanitize_hostname(" \n"), "localhost");
        assert!(!local_hostname().contains([',', ':', '/']));
    }

    #[test]
    fn names_are_unique_and_well_formed() {
        let a = unique_name("host");
        let b = unique_name("host");
        assert_ne!(a, b);
        let (secs, rest) = a.split_once(".M").unwrap();
        assert!(secs.bytes().all(|b| b.is_ascii_digit()));
        let r = rest.split_once('R').unwrap().1;
        let (hex, host) = r.split_once('.').unwrap();
        assert_eq!(hex.len(), 8);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(host, "host");
        assert!(!a.contains([',', ':', '/']));
    }
}
