//! Names: mailbox validation, Maildir file names and POP3 unique IDs.
//!
//! New names are made by `postoffice_common::maildir_name` (shared with
//! `postoffice fetch`); this module reads names, ours and other agents'.
//!
//! Everything here is pure string work, kept apart from the filesystem code
//! so the security-relevant parts (what may become a path component) can be
//! read and tested in isolation.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::StoreError;

/// Longest accepted mailbox name (the RFC 5321 path limit minus the angle
/// brackets).
pub(crate) const MAX_MAILBOX_LEN: usize = 254;

/// Longest UID POP3 allows (RFC 1939 §7: 1 to 70 characters).
const MAX_UID_LEN: usize = 70;

/// A validated mailbox, split into the two path components it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MailboxName {
    /// The local part, as given (case is preserved: some sites use
    /// case-sensitive local parts, and the directory decides equivalence).
    pub(crate) local: String,
    /// The domain, lowercased because domains are case-insensitive and one
    /// domain must map to exactly one directory.
    pub(crate) domain: String,
}

/// Validates an untrusted mailbox name ("local@domain").
///
/// Both parts become directory names, so anything that could escape the
/// storage root or create hidden/special entries is refused outright rather
/// than escaped: a strict whitelist of shapes is far easier to audit.
pub(crate) fn parse_mailbox(mailbox: &str) -> Result<MailboxName, StoreError> {
    let invalid = |why: &str| {
        // Long names are not echoed back: they would only bloat the log.
        if mailbox.len() > MAX_MAILBOX_LEN {
            StoreError::InvalidMailbox(format!("({} bytes long) {why}", mailbox.len()))
        } else {
            StoreError::InvalidMailbox(format!("{mailbox:?} {why}"))
        }
    };
    if mailbox.is_empty() {
        return Err(invalid("is empty"));
    }
    if mailbox.len() > MAX_MAILBOX_LEN {
        return Err(invalid("is longer than 254 bytes"));
    }
    if mailbox.chars().any(char::is_control) {
        return Err(invalid("contains a control character"));
    }
    if mailbox.contains(['/', '\\']) {
        return Err(invalid("contains a path separator ('/' or '\\')"));
    }
    let Some((local, domain)) = mailbox.split_once('@') else {
        return Err(invalid("has no '@' between local part and domain"));
    };
    if domain.contains('@') {
        return Err(invalid("contains more than one '@'"));
    }
    for (part, what) in [(local, "local part"), (domain, "domain")] {
        if part.is_empty() {
            return Err(invalid(&format!("has an empty {what}")));
        }
        if part.starts_with('.') {
            // Covers "." and ".." (path traversal) and hidden directories.
            return Err(invalid(&format!("has a {what} starting with '.'")));
        }
    }
    Ok(MailboxName {
        local: local.to_owned(),
        domain: domain.to_lowercase(),
    })
}

/// Whether a file name says its content is already in CRLF form: it
/// carries `,S=n` and `,W=n` with the same n, as every file we deliver
/// does (physical size equals the CRLF size).
pub(crate) fn is_stored_crlf(name: &str) -> bool {
    let key = key_of(name);
    let field = |tag: &str| -> Option<&str> {
        key.split(',')
            .find_map(|f| f.strip_prefix(tag))
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
    };
    matches!((field("S="), field("W=")), (Some(s), Some(w)) if s == w)
}

/// The part of a file name that identifies the message's *content*: the name
/// without the `:2,<flags>` info suffix. It survives flag changes, so it keys
/// the size index.
pub(crate) fn key_of(name: &str) -> &str {
    name.split_once(':').map_or(name, |(key, _)| key)
}

/// The POP3 unique ID of a message file.
///
/// It is the base name up to the first ',' or ':', which other Maildir agents
/// never change: they only append `,S=`/`,W=` fields or the `:2,` flags, and
/// move the file from new/ to cur/. If that base is not a valid POP3 UID
/// (1..=70 printable ASCII characters), a hash of it is used instead so the
/// UID is still stable.
pub(crate) fn uid_of(name: &str) -> String {
    if let Some(kept) = kept_uid(name, &parse(name)) {
        return kept.into_owned();
    }
    let base = name.split([',', ':']).next().unwrap_or(name);
    let valid =
        (1..=MAX_UID_LEN).contains(&base.len()) && base.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if valid {
        return base.to_owned();
    }
    // An empty base would hash identically for every such file; fall back to
    // the whole content key then, which is still stable and distinct.
    let input = if base.is_empty() { key_of(name) } else { base };
    let digest = Sha256::digest(input.as_bytes());
    let mut hex = String::with_capacity(32);
    for b in &digest[..16] {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// The UID a message keeps from another server (`,U=<escaped uid>`, written
/// by [`MailStore::import`](crate::MailStore::import)): `None` when the name
/// has no such field, or its value does not decode to a valid UID (the name
/// then gets its UID by the usual rule).
pub(crate) fn kept_uid<'a>(name: &'a str, info: &NameInfo) -> Option<std::borrow::Cow<'a, str>> {
    let kept = info.kept?;
    let value = name.get(kept.start..kept.start + kept.len)?;
    if !kept.escaped {
        return Some(std::borrow::Cow::Borrowed(value));
    }
    let uid = unescape_uid(value)?;
    valid_uid(&uid).then_some(std::borrow::Cow::Owned(uid))
}

/// Whether `uid` is a POP3 unique ID: 1 to 70 characters 0x21 to 0x7E
/// (RFC 1939 section 7).
pub(crate) fn valid_uid(uid: &str) -> bool {
    (1..=MAX_UID_LEN).contains(&uid.len()) && uid.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// The bytes a UID may contain that a Maildir file name field may not: the
/// path separator, the field and info separators, and the escape itself.
fn needs_escape(b: u8) -> bool {
    matches!(b, b'%' | b',' | b':' | b'/')
}

/// `uid` as the value of a `,U=` field: `%XX` for the bytes of
/// [`needs_escape`].
pub(crate) fn escape_uid(uid: &str) -> String {
    let mut out = String::with_capacity(uid.len());
    for b in uid.bytes() {
        if needs_escape(b) {
            let _ = write!(out, "%{b:02X}");
        } else {
            out.push(char::from(b));
        }
    }
    out
}

/// The inverse of [`escape_uid`]; `None` for a malformed escape.
fn unescape_uid(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            let decoded = u8::from_str_radix(hex, 16).ok()?;
            if !needs_escape(decoded) {
                return None;
            }
            out.push(decoded);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The CRLF size recorded in a `,W=<n>` field (Dovecot's "virtual size",
/// which is exactly the CRLF size; we write it for our own deliveries too).
pub(crate) fn w_size(name: &str) -> Option<u64> {
    parse(name).w_size
}

/// The delivery time encoded in a standard Maildir name (leading decimal
/// seconds followed by '.'), so listing needs no `stat`.
pub(crate) fn received_of(name: &str) -> Option<SystemTime> {
    parse(name).received
}

/// Whether a directory entry in new/ or cur/ is worth considering as a
/// message: not a dot-file (editors' and tools' temporaries), no control
/// characters (they would corrupt the tab/newline-separated index).
pub(crate) fn looks_like_message(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.first().is_none_or(|&b| b == b'.') {
        return false;
    }
    // No early exit, so that the loop vectorises: ASCII controls, and
    // whether there is anything beyond ASCII (C1 controls are checked only
    // then).
    let (ascii_control, non_ascii) = bytes.iter().fold((false, false), |(c, n), &b| {
        (c | (b < 0x20) | (b == 0x7f), n | (b >= 0x80))
    });
    !(ascii_control || (non_ascii && name.chars().any(char::is_control)))
}

/// What a listing needs to know from a message file name, found by one pass
/// over its bytes (listing a 100,000-message maildrop does this 100,000
/// times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NameInfo {
    /// Length of the name's content key ([`key_of`]).
    pub(crate) key_len: usize,
    /// Length of the base (up to the first ',' or ':') when it is a valid
    /// UID as it stands, which makes [`uid_of`] the name's prefix of this
    /// length; `None` when [`uid_of`] has to hash.
    pub(crate) uid_len: Option<usize>,
    /// [`w_size`].
    pub(crate) w_size: Option<u64>,
    /// [`received_of`].
    pub(crate) received: Option<SystemTime>,
    /// The first `,U=` field, if its value could be a kept UID
    /// ([`kept_uid`] decides).
    pub(crate) kept: Option<Kept>,
}

/// Where a `,U=` field's value lies in a file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kept {
    /// Byte offset of the value.
    pub(crate) start: usize,
    /// Its length.
    pub(crate) len: usize,
    /// It contains `%` escapes (decoding needed).
    pub(crate) escaped: bool,
}

/// Parses a file name for [`NameInfo`].
pub(crate) fn parse(name: &str) -> NameInfo {
    let bytes = name.as_bytes();
    // Leading decimal seconds followed by '.'.
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    let received = ((1..=19).contains(&digits) && bytes.get(digits) == Some(&b'.'))
        .then(|| parse_decimal(&bytes[..digits]))
        .flatten()
        .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)));
    // The base, up to the first ',' or ':'.
    let mut end = 0;
    let mut printable = true;
    while let Some(&b) = bytes.get(end) {
        if b == b',' || b == b':' {
            break;
        }
        printable &= (0x21..=0x7e).contains(&b);
        end += 1;
    }
    let uid_len = (printable && (1..=MAX_UID_LEN).contains(&end)).then_some(end);
    // Then ",S=<n>", ",W=<n>", ... up to the first ':'. The first W= field
    // decides, even if it is malformed.
    let mut w_size = None;
    let mut w_seen = false;
    let mut kept = None;
    let mut u_seen = false;
    while bytes.get(end) == Some(&b',') {
        let start = end + 1;
        end = start;
        while bytes.get(end).is_some_and(|&b| b != b',' && b != b':') {
            end += 1;
        }
        let field = &bytes[start..end];
        if !w_seen && let Some(value) = field.strip_prefix(b"W=") {
            w_size = parse_decimal(value);
            w_seen = true;
        } else if !u_seen && let Some(value) = field.strip_prefix(b"U=") {
            u_seen = true;
            let escaped = value.contains(&b'%');
            let printable = value.iter().all(|b| (0x21..=0x7e).contains(b));
            if printable && !value.is_empty() && (escaped || value.len() <= MAX_UID_LEN) {
                kept = Some(Kept {
                    start: start + 2,
                    len: value.len(),
                    escaped,
                });
            }
        }
    }
    NameInfo {
        key_len: end,
        uid_len,
        w_size,
        received,
        kept,
    }
}

/// A non-empty run of ASCII digits as a number (`None` on overflow).
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn stored_crlf_names() {
        use super::is_stored_crlf;
        assert!(is_stored_crlf("1.M1P1.h,S=10,W=10"));
        assert!(is_stored_crlf("1.M1P1.h,S=10,W=10:2,S"));
        assert!(!is_stored_crlf("1.M1P1.h,S=10,W=12:2,S"));
        assert!(!is_stored_crlf("1.M1P1.h,W=10"));
        assert!(!is_stored_crlf("1.M1P1.h"));
    }

    use super::*;

    #[test]
    fn valid_mailboxes() {
        let m = parse_mailbox("Alice@Example.TEST").unwrap();
        assert_eq!(m.local, "Alice");
        assert_eq!(m.domain, "example.test");
        assert!(parse_mailbox("a.b+tag@x").is_ok());
        assert!(parse_mailbox(&format!("{}@x.y", "a".repeat(250))).is_ok());
    }

    #[test]
    fn invalid_mailboxes() {
        for bad in [
            "",
            "alice",
            "@example.test",
            "alice@",
            "alice@@example.test",
            "a@b@c",
            "../x@example.test",
            "alice@../etc",
            "alice@..",
            "..@example.test",
            ".@example.test",
            "alice@.",
            ".hidden@example.test",
            "alice@.example.test",
            "al/ice@example.test",
            "alice@exa/mple.test",
            "al\\ice@example.test",
            "al\0ice@example.test",
            "alice@example.test\0",
            "al\nice@example.test",
            "al\tice@example.test",
            "al\x7fice@example.test",
            "al\u{85}ice@example.test",
        ] {
            assert!(
                matches!(parse_mailbox(bad), Err(StoreError::InvalidMailbox(_))),
                "{bad:?} was accepted"
            );
        }
        let long = format!("{}@x.y", "a".repeat(251));
        assert_eq!(long.len(), 255);
        assert!(matches!(
            parse_mailbox(&long),
            Err(StoreError::InvalidMailbox(_))
        ));
    }

    /// The names common's generator makes are read back as this module
    /// expects: their own UID, with a delivery time (the generator's own
    /// shape and the host name escaping are tested in postoffice-common).
    #[test]
    fn unique_name_shape() {
        let n = postoffice_common::maildir_name::unique_name("host");
        let uid = uid_of(&n);
        assert_eq!(uid, n, "our own names are their own UID");
        assert!(received_of(&n).is_some());
        let (_, rest) = n.split_once(".M").unwrap();
        assert!(rest.contains('P') && rest.contains('Q') && rest.contains('R'));
        let r = rest.split_once('R').unwrap().1;
        let (hex, host) = r.split_once('.').unwrap();
        assert_eq!(hex.len(), 8);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(host, "host");
    }

    #[test]
    fn uid_rules() {
        assert_eq!(uid_of("123.abc,S=10,W=12:2,S"), "123.abc");
        assert_eq!(uid_of("123.abc:2,S"), "123.abc");
        assert_eq!(uid_of("123.abc"), "123.abc");
        let long = "x".repeat(71);
        let h = uid_of(&long);
        assert_eq!(h.len(), 32);
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            h,
            uid_of(&format!("{long},S=5:2,")),
            "stable under suffixes"
        );
        assert_eq!(uid_of(&"x".repeat(70)), "x".repeat(70));
        let non_ascii = uid_of("caf\u{e9}.1");
        assert_eq!(non_ascii.len(), 32);
        assert_ne!(uid_of(",a"), uid_of(",b"));
    }

    /// A UID kept from another server survives any byte POP3 allows,
    /// flags, a move to cur/ and other fields; a broken field falls back
    /// to the usual rule.
    #[test]
    fn kept_uids() {
        for uid in [
            "00000001506c4b5a",
            "a,b:c/d%e",
            "%",
            "x".repeat(70).as_str(),
            "!~",
        ] {
            let name = format!("1700000000.I000000001_X.h,S=5,W=5,U={}", escape_uid(uid));
            assert_eq!(uid_of(&name), uid, "{name}");
            assert_eq!(uid_of(&format!("{name}:2,S")), uid);
            assert!(!escape_uid(uid).contains([',', ':', '/']));
            assert_eq!(parse(&name).w_size, Some(5));
            assert_eq!(key_of(&format!("{name}:2,S")), name);
        }
        assert_eq!(uid_of("1.x,U=%2"), "1.x", "truncated escape");
        assert_eq!(uid_of("1.x,U=%41"), "1.x", "needless escape");
        assert_eq!(uid_of("1.x,U="), "1.x", "empty");
        assert_eq!(
            uid_of(&format!("1.x,U={}", "y".repeat(71))),
            "1.x",
            "too long"
        );
        assert_eq!(uid_of("1.x,U=a,U=b"), "a", "the first field decides");
        assert!(valid_uid("a") && !valid_uid("") && !valid_uid("a b"));
    }

    #[test]
    fn size_and_time_fields() {
        assert_eq!(w_size("1.x,S=10,W=12"), Some(12));
        assert_eq!(w_size("1.x,S=10,W=12:2,S"), Some(12));
        assert_eq!(w_size("1.x,S=10"), None);
        assert_eq!(w_size("1.x:2,W=12"), None, "flags are not fields");
        assert_eq!(w_size("1.x,W=+12"), None);
        assert_eq!(w_size("1.x,W="), None);
        assert_eq!(
            received_of("1700000000.M1P2.host"),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(received_of("abc.def"), None);
        assert_eq!(received_of("12345"), None);
        assert_eq!(received_of(".123"), None);
    }

    /// The string-based definitions `parse` must agree with.
    mod reference {
        use super::*;

        pub(super) fn w_size(name: &str) -> Option<u64> {
            key_of(name)
                .split(',')
                .skip(1)
                .find_map(|field| field.strip_prefix("W="))
                .and_then(|v| {
                    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
                        v.parse().ok()
                    } else {
                        None
                    }
                })
        }

        pub(super) fn received_of(name: &str) -> Option<SystemTime> {
            let (secs, _) = name.split_once('.')?;
            if secs.is_empty() || secs.len() > 19 || !secs.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            UNIX_EPOCH.checked_add(Duration::from_secs(secs.parse().ok()?))
        }

        /// Whether `uid_of` uses the base as it stands (no hashing).
        pub(super) fn base_is_uid(name: &str) -> bool {
            let base = name.split([',', ':']).next().unwrap_or(name);
            (1..=MAX_UID_LEN).contains(&base.len())
                && base.bytes().all(|b| (0x21..=0x7e).contains(&b))
        }

        pub(super) fn looks_like_message(name: &str) -> bool {
            !name.is_empty() && !name.starts_with('.') && !name.chars().any(char::is_control)
        }
    }

    #[test]
    fn parse_agrees_with_the_string_definitions() {
        let long_base = "7".repeat(70);
        let too_long = "7".repeat(71);
        let mut names: Vec<String> = [
            "1700000000.M1P1Q1R00000000.h,S=3,W=3",
            "1700000000.M1P1Q1R00000000.h,S=3,W=3:2,S",
            "1700000000.M1P1.h,W=12,W=13",
            "1700000000.M1P1.h,W=x,W=13",
            "1700000000.M1P1.h,W=,W=13",
            "1700000000.M1P1.h,W=+1",
            "1700000000.M1P1.h,W=18446744073709551615",
            "1700000000.M1P1.h,W=18446744073709551616",
            "1700000000.M1P1.h:2,W=12",
            "1.x,,W=5",
            "1.x,S=10",
            "1.x,SW=10,W=9",
            "W=5,W=6",
            ",W=7",
            ",",
            ":",
            ":2,S",
            "a",
            "abc.def",
            "12345",
            ".123",
            "0.x",
            "9999999999999999999.x",
            "10000000000000000000.x",
            "99999999999999999999.x",
            "123.456.789",
            "1700000000:2,S.x",
            "1700000000,S=1.x",
            "caf\u{e9}.1,W=4",
            "1700000000.caf\u{e9},W=4:2,",
            "has space.1,W=4",
            "tab\there,W=1",
            "del\u{7f}.1",
            "c1\u{85}.1",
            "nbsp\u{a0}.1",
            "\u{1f4e7}.1",
            "",
            ".hidden",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        names.push(format!("{long_base},W=1"));
        names.push(format!("{too_long},W=1"));
        names.push(format!("{long_base}:2,"));
        for name in &names {
            let info = parse(name);
            let ctx = format!("{name:?}");
            assert_eq!(info.key_len, key_of(name).len(), "key_len of {ctx}");
            assert_eq!(info.w_size, reference::w_size(name), "w_size of {ctx}");
            assert_eq!(w_size(name), reference::w_size(name), "w_size of {ctx}");
            assert_eq!(
                info.received,
                reference::received_of(name),
                "received of {ctx}"
            );
            assert_eq!(
                looks_like_message(name),
                reference::looks_like_message(name),
                "looks_like_message of {ctx}"
            );
            let uid = uid_of(name);
            if let Some(kept) = kept_uid(name, &info) {
                assert_eq!(uid, kept, "kept uid of {ctx}");
                continue;
            }
            match info.uid_len {
                Some(n) => assert_eq!(uid, name[..n], "uid of {ctx}"),
                None => assert!(
                    uid.len() == 32 && !reference::base_is_uid(name),
                    "uid of {ctx}: {uid}"
                ),
            }
        }
    }

    #[test]
    fn parse_agrees_on_random_names() {
        // Names built from the characters the rules care about, with a
        // fixed xorshift generator so a failure reproduces.
        const ALPHABET: &[&str] = &[
            "1",
            "7",
            "0",
            "9",
            ".",
            ",",
            ":",
            "W",
            "=",
            "S",
            "2",
            "x",
            "\u{e9}",
            "\u{85}",
            " ",
            "\t",
            "\u{7f}",
            "W=",
            ",W=",
            ":2,",
            "1700000000.",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..50_000 {
            let len = next() % 24;
            let name: String = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect();
            let info = parse(&name);
            assert_eq!(info.key_len, key_of(&name).len(), "{name:?}");
            assert_eq!(info.w_size, reference::w_size(&name), "{name:?}");
            assert_eq!(info.received, reference::received_of(&name), "{name:?}");
            assert_eq!(
                looks_like_message(&name),
                reference::looks_like_message(&name),
                "{name:?}"
            );
            let uid = uid_of(&name);
            match info.uid_len {
                Some(n) => assert_eq!(uid, name[..n], "{name:?}"),
                None => assert!(
                    uid.len() == 32 && !reference::base_is_uid(&name),
                    "{name:?}"
                ),
            }
        }
    }
}
