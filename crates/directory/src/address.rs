//! Validation and canonicalisation of mail addresses and domain names.
//!
//! Addresses are used as keys in the directory *and* end up as path
//! components of mailbox directories in the store, so the rules here are
//! deliberately much stricter than RFC 5321/5322: anything that could walk
//! out of a directory, confuse a shell script, or make two visually identical
//! names map to different mailboxes is refused with a message naming the
//! problem.

use crate::error::{Error, Result};

/// Longest address accepted, in bytes (RFC 5321 path limit minus the angle
/// brackets).
pub const MAX_ADDRESS_LEN: usize = 254;
/// Longest local part accepted, in bytes (RFC 5321 section 4.5.3.1.1).
pub const MAX_LOCAL_LEN: usize = 64;
/// Longest domain name accepted, in bytes (RFC 1035, without trailing dot).
pub const MAX_DOMAIN_LEN: usize = 253;
/// Longest domain label accepted, in bytes (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// Validates `address` and returns its canonical (lower-case) form.
///
/// Rules, each reported by name when broken:
/// - no surrounding or embedded whitespace and no control characters
///   (including NUL): we never trim, because silently accepting
///   `" alice@x"` would make a typo in a config file invisible;
/// - at most 254 bytes, local part at most 64;
/// - exactly one `@`, with a non-empty local part and domain;
/// - no `/` or `\` (the address becomes a directory name);
/// - no `..` anywhere, no leading `.`, no local part ending in `.`
///   (rules out `.` and `..` path components too);
/// - no `%`: RFC 5322 allows it, but `user%host@relay` is the classic
///   "percent hack" used to trick servers into relaying, and no legitimate
///   mailbox here needs it;
/// - local part limited to ASCII letters, digits and
///   ``!#$&'*+-=?^_`{|}~.`` (RFC 5322 atext minus the above): non-ASCII
///   would allow distinct, identical-looking mailboxes;
/// - the domain must satisfy [`normalize_domain`].
///
/// The whole address is lower-cased: mail systems treat local parts
/// case-insensitively in practice and users type them every which way.
pub fn normalize_address(address: &str) -> Result<String> {
    let bad = |reason: &str| Error::InvalidAddress {
        address: address.to_owned(),
        reason: reason.to_owned(),
    };
    if address.is_empty() {
        return Err(bad("it is empty"));
    }
    // Length first, so that a 10 KB name is refused before any per-character
    // work and the message names the real problem.
    if address.len() > MAX_ADDRESS_LEN {
        return Err(bad("it is longer than 254 characters"));
    }
    if address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(
            "it contains whitespace or control characters (remove surrounding spaces too)",
        ));
    }
    if address.contains(['/', '\\']) {
        return Err(bad(
            "it contains '/' or '\\', which are not allowed because addresses become file names",
        ));
    }
    if address.contains('%') {
        return Err(bad(
            "it contains '%', which is refused because user%host@relay addresses are a relaying trick",
        ));
    }
    if address.contains("..") {
        return Err(bad("it contains '..'"));
    }
    let mut parts = address.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("it must contain exactly one '@'"));
    };
    if local.is_empty() {
        return Err(bad("the part before '@' is empty"));
    }
    if domain.is_empty() {
        return Err(bad("the domain after '@' is empty"));
    }
    if local.len() > MAX_LOCAL_LEN {
        return Err(bad("the part before '@' is longer than 64 characters"));
    }
    if local.starts_with('.') {
        return Err(bad("the part before '@' starts with '.'"));
    }
    if local.ends_with('.') {
        return Err(bad("the part before '@' ends with '.'"));
    }
    if let Some(c) = local.chars().find(|&c| !is_local_char(c)) {
        return Err(bad(&format!(
            "the part before '@' contains {c:?}; only ASCII letters, digits and \
             !#$&'*+-=?^_`{{|}}~. are allowed"
        )));
    }
    let domain = normalize_domain(domain).map_err(|e| match e {
        Error::InvalidDomain { reason, .. } => bad(&format!("the domain is invalid: {reason}")),
        other => other,
    })?;
    let mut out = local.to_ascii_lowercase();
    out.push('@');
    out.push_str(&domain);
    Ok(out)
}

/// Validates a domain name and returns it lower-cased.
///
/// It must look like a host name: dot-separated labels of ASCII letters,
/// digits and `-`, each 1–63 bytes, not starting or ending with `-`, 253
/// bytes at most in total. Single-label names such as `localhost` are
/// allowed because test and intranet setups use them. Internationalised
/// names must be given in their `xn--` form so that one domain has exactly
/// one spelling.
pub fn normalize_domain(name: &str) -> Result<String> {
    let bad = |reason: &str| Error::InvalidDomain {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > MAX_DOMAIN_LEN {
        return Err(bad("it is longer than 253 characters"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(
            "it contains whitespace or control characters (remove surrounding spaces too)",
        ));
    }
    if name.starts_with('.') {
        return Err(bad("it starts with '.'"));
    }
    if name.ends_with('.') {
        return Err(bad("it ends with '.'; leave out the trailing dot"));
    }
    if name.contains("..") {
        return Err(bad("it contains '..'"));
    }
    for label in name.split('.') {
        if label.len() > MAX_LABEL_LEN {
            return Err(bad("a label between dots is longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(bad(&format!(
                "it contains {c:?}; only ASCII letters, digits, '-' and '.' are allowed \
                 (write international names in their xn-- form)"
            )));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label starts or ends with '-'"));
        }
    }
    Ok(name.to_ascii_lowercase())
}

/// Characters allowed in a local part: RFC 5322 `atext` minus `/` and `%`
/// (see [`normalize_address`]), plus `.` whose placement is checked
/// separately.
fn is_local_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$&'*+-=?^_`{|}~.".contains(c)
}

/// Longest administrator name accepted, in bytes.
pub const MAX_ADMIN_NAME_LEN: usize = 64;

/// Validates an administrator account name and returns its canonical
/// (lower-case) form: 1 to 64 ASCII letters, digits, `.`, `_` or `-`,
/// starting with a letter or digit. No `@`: a name with one is a mail
/// address, which is how a sign-in form tells users and administrators
/// apart.
pub fn normalize_admin_name(name: &str) -> Result<String> {
    let bad = |reason: &str| Error::InvalidAdminName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > MAX_ADMIN_NAME_LEN {
        return Err(bad("it is longer than 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad(
            "only ASCII letters, digits, '.', '_' and '-' are allowed (an '@' makes it a mail address)",
        ));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(bad("it must start with a letter or digit"));
    }
    Ok(name.to_ascii_lowercase())
}

/// Lower-cases a lookup key only when needed; lookups accept the user's
/// spelling without re-running the full validation.
pub(crate) fn lookup_key(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(s.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_addresses_are_lowercased() {
        for (input, want) in [
            ("alice@example.test", "alice@example.test"),
            ("Alice@Example.TEST", "alice@example.test"),
            ("a.b+tag@mail.example.test", "a.b+tag@mail.example.test"),
            ("root@localhost", "root@localhost"),
            ("x_y-z@a-b.c0", "x_y-z@a-b.c0"),
            ("o'neil@example.test", "o'neil@example.test"),
            ("user@xn--bcher-kva.example", "user@xn--bcher-kva.example"),
        ] {
            assert_eq!(normalize_address(input).unwrap(), want, "{input}");
        }
        let max_local = format!("{}@example.test", "a".repeat(64));
        assert!(normalize_address(&max_local).is_ok());
    }

    #[test]
    fn bad_addresses_are_rejected_with_a_reason() {
        let long_local = format!("{}@example.test", "a".repeat(65));
        let huge = format!("{}@example.test", "a".repeat(10 * 1024));
        let long_total = format!("a@{}.test", vec!["b".repeat(60); 5].join("."));
        let cases: Vec<(&str, &str)> = vec![
            ("", "empty"),
            ("../x@y", ".."),
            ("x/..@y", "'/'"),
            ("a/b@c", "'/'"),
            ("a\\b@c", "'\\'"),
            ("a\0b@c", "control"),
            ("a\u{7}@c", "control"),
            (" alice@example.test", "whitespace"),
            ("alice@example.test ", "whitespace"),
            ("al ice@example.test", "whitespace"),
            ("alice@example.test\n", "whitespace"),
            ("alice", "exactly one '@'"),
            ("a@b@c", "exactly one '@'"),
            ("@example.test", "before '@' is empty"),
            ("alice@", "domain after '@' is empty"),
            (".alice@example.test", "starts with '.'"),
            (".@example.test", "starts with '.'"),
            ("..@example.test", "'..'"),
            ("alice.@example.test", "ends with '.'"),
            ("a..b@example.test", "'..'"),
            ("alice@example..test", "'..'"),
            ("alice@.example.test", "starts with '.'"),
            ("alice@example.test.", "ends with '.'"),
            ("alice@-example.test", "'-'"),
            ("alice@example-.test", "'-'"),
            ("alice@exa_mple.test", "'_'"),
            ("alice@[127.0.0.1]", "'['"),
            ("bob%evil.test@example.test", "'%'"),
            ("bob:x@example.test", "':'"),
            ("jörg@example.test", "'ö'"),
            ("alice@bücher.test", "xn--"),
            (&long_local, "longer than 64"),
            (&huge, "longer than 254"),
            (&long_total, "longer than 254"),
        ];
        for (input, needle) in cases {
            let err = normalize_address(input).expect_err(input).to_string();
            assert!(err.contains(needle), "{input:?}: {err}");
        }
    }

    #[test]
    fn domain_rules() {
        assert_eq!(normalize_domain("Example.TEST").unwrap(), "example.test");
        assert_eq!(normalize_domain("localhost").unwrap(), "localhost");
        assert_eq!(normalize_domain("a-1.b2").unwrap(), "a-1.b2");
        let label63 = format!("{}.test", "a".repeat(63));
        assert!(normalize_domain(&label63).is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a..b",
            "-a.test",
            "a-.test",
            "a b.test",
            "a/b",
            "a\\b",
            "a\0b",
            " example.test",
            "example.test.",
            "ex@mple.test",
            &format!("{}.test", "a".repeat(64)),
            &"a.".repeat(200),
        ] {
            assert!(
                matches!(normalize_domain(bad), Err(Error::InvalidDomain { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn admin_names() {
        assert_eq!(normalize_admin_name("Root").unwrap(), "root");
        assert_eq!(
            normalize_admin_name("ops-2.team_a").unwrap(),
            "ops-2.team_a"
        );
        for bad in [
            "",
            "a@b.test",
            "-x",
            ".x",
            "a b",
            "a/b",
            "\0",
            &"a".repeat(65),
        ] {
            assert!(normalize_admin_name(bad).is_err(), "{bad:?}");
        }
    }
}
