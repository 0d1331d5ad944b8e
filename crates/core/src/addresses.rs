//! Address resolution: which mailboxes receive mail for a recipient address.
//!
//! A user's address is its own mailbox. `postmaster@` and `abuse@` of every
//! local domain (RFC 5321 §4.5.1, RFC 2142), and a bare `postmaster`, that are
//! not users themselves go to `[addresses] postmaster` (or the domain's
//! `[addresses.domain_postmaster]` override). Everything else is unknown.

use postoffice_config::Addresses;
use postoffice_directory::{DirectoryData, normalize_address};

/// Role local parts that every local domain has.
pub const ROLE_LOCAL_PARTS: [&str; 2] = ["postmaster", "abuse"];

/// Why an address resolves to no mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// Neither a user nor a role address with configured mailboxes.
    Unknown(String),
}

/// Is `address` the bare `postmaster` (no domain) of RFC 5321 §4.5.1?
pub fn is_bare_postmaster(address: &str) -> bool {
    address.eq_ignore_ascii_case("postmaster")
}

/// The final mailboxes (normalised user addresses, no duplicates, in order)
/// that receive mail for `address`.
pub fn resolve(
    config: &Addresses,
    dir: &DirectoryData,
    address: &str,
) -> Result<Vec<String>, Unresolved> {
    let unknown = || Unresolved::Unknown(address.to_string());
    let (local, domain, addr) = if is_bare_postmaster(address) {
        ("postmaster".to_string(), None, None)
    } else {
        let addr = normalize_address(address).map_err(|_| unknown())?;
        let (l, d) = addr.rsplit_once('@').ok_or_else(unknown)?;
        (
            l.to_ascii_lowercase(),
            Some(d.to_string()),
            Some(addr.clone()),
        )
    };
    if let Some(addr) = &addr
        && dir.user(addr).is_some()
    {
        return Ok(vec![addr.clone()]);
    }
    if !ROLE_LOCAL_PARTS.contains(&local.as_str()) {
        return Err(unknown());
    }
    if let Some(d) = &domain
        && dir.domain(d).is_none()
    {
        return Err(unknown());
    }
    let targets = match &domain {
        Some(d) => config.postmaster_of(d),
        None => config.postmaster.as_slice(),
    };
    let mut out: Vec<String> = Vec::new();
    for t in targets {
        let Ok(t) = normalize_address(t) else {
            continue;
        };
        if dir.user(&t).is_some() && !out.contains(&t) {
            out.push(t);
        }
    }
    if out.is_empty() {
        return Err(unknown());
    }
    Ok(out)
}

/// Resolve every address of `recipients` and merge the mailboxes, each once.
pub fn expand(
    config: &Addresses,
    dir: &DirectoryData,
    recipients: &[String],
) -> Result<Vec<String>, Unresolved> {
    let mut out: Vec<String> = Vec::new();
    for r in recipients {
        for m in resolve(config, dir, r)? {
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    Ok(out)
}

/// The configuration problem `serve` and `config check` warn about: role
/// addresses of local domains that no mailbox receives.
pub fn postmaster_warnings(config: &Addresses, dir: &DirectoryData) -> Vec<String> {
    let mut out = Vec::new();
    for d in dir.domains() {
        let name = &d.name;
        for role in ROLE_LOCAL_PARTS {
            let a = format!("{role}@{name}");
            if resolve(config, dir, &a).is_err() {
                out.push(format!(
                    "{a} reaches no mailbox: set [addresses] postmaster = [\"you@{name}\"] \
                     (RFC 5321 requires postmaster@ of every domain to be accepted)"
                ));
            }
        }
    }
    for t in config
        .postmaster
        .iter()
        .chain(config.domain_postmaster.values().flatten())
    {
        if normalize_address(t).map_or(true, |t| dir.user(&t).is_none()) {
            out.push(format!(
                "[addresses] postmaster target {t} is not a local user"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use postoffice_directory::Directory;

    fn setup() -> (tempfile::TempDir, Directory) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Directory::open(tmp.path()).unwrap();
        dir.add_domain("example.test").unwrap();
        dir.add_domain("example.org").unwrap();
        let hash = postoffice_directory::hash_password(b"pw").unwrap();
        for u in [
            "admin@example.test",
            "abuse@example.org",
            "host@example.org",
        ] {
            dir.add_user(u, &hash).unwrap();
        }
        (tmp, dir)
    }

    fn config() -> Addresses {
        let mut c = Addresses {
            postmaster: vec!["admin@example.test".into(), "Admin@Example.test".into()],
            ..Addresses::default()
        };
        c.domain_postmaster
            .insert("Example.ORG".into(), vec!["host@example.org".into()]);
        c
    }

    #[test]
    fn role_addresses_reach_the_configured_mailboxes_once() {
        let (_t, dir) = setup();
        let d = dir.snapshot();
        let c = config();
        let admin = vec!["admin@example.test".to_string()];
        assert_eq!(resolve(&c, &d, "postmaster@example.test").unwrap(), admin);
        assert_eq!(resolve(&c, &d, "ABUSE@example.test").unwrap(), admin);
        assert_eq!(resolve(&c, &d, "postmaster").unwrap(), admin);
        // The per-domain override, and a user that is itself a role address.
        let host = vec!["host@example.org".to_string()];
        assert_eq!(resolve(&c, &d, "postmaster@example.org").unwrap(), host);
        assert_eq!(
            resolve(&c, &d, "abuse@example.org").unwrap(),
            vec!["abuse@example.org".to_string()]
        );
        let all = [
            "postmaster@example.test",
            "abuse@example.test",
            "admin@example.test",
        ]
        .map(String::from);
        assert_eq!(expand(&c, &d, &all).unwrap(), admin);
    }

    #[test]
    fn unknown_and_foreign_addresses_do_not_resolve() {
        let (_t, dir) = setup();
        let d = dir.snapshot();
        let c = config();
        for a in [
            "nobody@example.test",
            "postmaster@remote.test",
            "postmaster%remote.test@example.test",
            "hostmaster@example.test",
        ] {
            assert!(resolve(&c, &d, a).is_err(), "{a}");
        }
        // Nothing configured: the role addresses reach no mailbox, and say so.
        let none = Addresses::default();
        assert!(resolve(&none, &d, "postmaster@example.test").is_err());
        let w = postmaster_warnings(&none, &d);
        assert!(
            w.iter().any(|w| w.starts_with("postmaster@example.test")),
            "{w:?}"
        );
        assert!(postmaster_warnings(&c, &d).is_empty());
        // A target that is not a user is named.
        let bad = Addresses {
            postmaster: vec!["ghost@example.test".into()],
            ..Addresses::default()
        };
        assert!(
            postmaster_warnings(&bad, &d)
                .iter()
                .any(|w| w.contains("ghost@example.test"))
        );
    }
}
