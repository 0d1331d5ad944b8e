//! Address resolution: which mailboxes receive mail for a recipient address,
//! and which external addresses it is forwarded to.
//!
//! For an address of a local domain, in this order:
//! 1. a domain alias is replaced by its domain (`x@example.org` is
//!    `x@example.test`);
//! 2. a user's address is its own mailbox;
//! 3. an alias expands to its targets, each resolved again (users, aliases,
//!    external addresses), cutting loops and refusing expansions deeper
//!    than `[addresses] max_alias_depth`;
//! 4. `alice+tag@` is resolved as `alice@` (sub-addressing, `[addresses]
//!    subaddress_separator`);
//! 5. `postmaster@` and `abuse@` of every local domain (RFC 5321 §4.5.1,
//!    RFC 2142), and a bare `postmaster`, go to `[addresses] postmaster`
//!    (or the domain's `[addresses.domain_postmaster]` override);
//! 6. the domain's catch-all alias (`@example.test`) takes the rest.
//!
//! Everything else is unknown. An address outside the local domains is
//! never resolved by itself: external addresses come only from the targets
//! of aliases an administrator stored, so resolution cannot make the server
//! an open relay.

use std::collections::HashSet;

use postoffice_config::Addresses;
use postoffice_directory::{Alias, DirectoryData, normalize_address};

/// Role local parts that every local domain has.
pub const ROLE_LOCAL_PARTS: [&str; 2] = ["postmaster", "abuse"];

/// Why an address resolves to no mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// Neither a user, an alias nor a role address with configured
    /// mailboxes (or an alias whose targets all lead nowhere).
    Unknown(String),
    /// Aliases pointing to aliases more than `max_alias_depth` levels deep.
    TooDeep {
        /// The recipient address.
        address: String,
        /// The configured limit.
        max: usize,
    },
}

/// One local mailbox of a [`Resolution`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The user's canonical address (the maildrop).
    pub address: String,
    /// The recipient address that led here, as normalised (with its
    /// sub-address tag): what `Delivered-To:` carries.
    pub recipient: String,
}

/// Where mail for one or more recipient addresses goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Local mailboxes, each once, in order of discovery.
    pub local: Vec<Mailbox>,
    /// External addresses (targets of local aliases), each once: handed to
    /// [`crate::alias_forward::forward_external`].
    pub external: Vec<String>,
    /// Alias loops cut on the way (the alias met again inside its own
    /// expansion); logged at delivery, refused by `alias add`.
    pub loops: Vec<String>,
    /// Local alias targets that lead nowhere (a removed user, say).
    pub dangling: Vec<String>,
    /// What `local` and `external` hold, for constant-time deduplication
    /// (a list may have thousands of targets).
    seen: HashSet<String>,
}

impl Resolution {
    /// The local mailboxes' addresses.
    pub fn mailboxes(&self) -> Vec<String> {
        self.local.iter().map(|m| m.address.clone()).collect()
    }

    /// Nothing at all: no mailbox, no external address.
    pub fn is_empty(&self) -> bool {
        self.local.is_empty() && self.external.is_empty()
    }

    /// Add the mailbox `address`, reached through `recipient`, unless it is
    /// there already.
    pub fn push_local(&mut self, address: &str, recipient: &str) {
        if self.seen.insert(address.to_string()) {
            self.local.push(Mailbox {
                address: address.to_string(),
                recipient: recipient.to_string(),
            });
        }
    }

    fn push_external(&mut self, address: &str) {
        if self.seen.insert(address.to_string()) {
            self.external.push(address.to_string());
        }
    }

    fn merge(&mut self, other: Resolution) {
        for m in other.local {
            self.push_local(&m.address, &m.recipient);
        }
        for e in other.external {
            self.push_external(&e);
        }
        self.loops.extend(other.loops);
        self.dangling.extend(other.dangling);
    }
}

/// Is `address` the bare `postmaster` (no domain) of RFC 5321 §4.5.1?
pub fn is_bare_postmaster(address: &str) -> bool {
    address.eq_ignore_ascii_case("postmaster")
}

/// `local@domain` with a domain alias replaced by its real domain.
pub fn canonical(dir: &DirectoryData, address: &str) -> String {
    match address.rsplit_once('@') {
        Some((l, d)) => match dir.domain_alias(d) {
            Some(real) => format!("{l}@{real}"),
            None => address.to_string(),
        },
        None => address.to_string(),
    }
}

/// The base address of a sub-address (`alice+tag@d` -> `alice@d`), or
/// `None` when the local part has no separator or nothing before it.
pub fn base_address(config: &Addresses, address: &str) -> Option<String> {
    if config.subaddress_separator.is_empty() {
        return None;
    }
    let (local, domain) = address.rsplit_once('@')?;
    let cut = local.find(|c| config.subaddress_separator.contains(c))?;
    if cut == 0 {
        return None;
    }
    Some(format!("{}@{domain}", &local[..cut]))
}

struct Resolver<'a> {
    config: &'a Addresses,
    dir: &'a DirectoryData,
    /// The recipient being resolved (for Delivered-To:).
    recipient: String,
    out: Resolution,
    /// Aliases being expanded (the current path), for loop detection.
    path: Vec<String>,
    /// Aliases fully expanded already (a diamond is expanded once).
    done: HashSet<String>,
}

impl Resolver<'_> {
    /// Resolve a canonical address of a local domain; `Ok(false)` when it
    /// leads to nothing.
    fn local(&mut self, address: &str, depth: usize) -> Result<bool, Unresolved> {
        let address = canonical(self.dir, address);
        if self.dir.user(&address).is_some() {
            let recipient = self.recipient.clone();
            self.out.push_local(&address, &recipient);
            return Ok(true);
        }
        if let Some(alias) = self.dir.alias(&address) {
            return self.alias(alias, depth);
        }
        if let Some(base) = base_address(self.config, &address) {
            if self.dir.user(&base).is_some() {
                let recipient = self.recipient.clone();
                self.out.push_local(&base, &recipient);
                return Ok(true);
            }
            if let Some(alias) = self.dir.alias(&base) {
                return self.alias(alias, depth);
            }
        }
        let (local, domain) = address.rsplit_once('@').unwrap_or((&address, ""));
        if ROLE_LOCAL_PARTS.contains(&local) && self.role(self.config.postmaster_of(domain)) {
            return Ok(true);
        }
        if let Some(alias) = self.dir.catch_all(domain) {
            return self.alias(alias, depth);
        }
        Ok(false)
    }

    /// The configured role mailboxes that are users.
    fn role(&mut self, targets: &[String]) -> bool {
        let mut any = false;
        for t in targets {
            let Ok(t) = normalize_address(t) else {
                continue;
            };
            if self.dir.user(&t).is_some() {
                let recipient = self.recipient.clone();
                self.out.push_local(&t, &recipient);
                any = true;
            }
        }
        any
    }

    fn alias(&mut self, alias: &Alias, depth: usize) -> Result<bool, Unresolved> {
        if self.path.contains(&alias.address) {
            self.out.loops.push(alias.address.clone());
            return Ok(false);
        }
        if self.done.contains(&alias.address) {
            return Ok(true);
        }
        if depth >= self.config.max_alias_depth {
            return Err(Unresolved::TooDeep {
                address: self.recipient.clone(),
                max: self.config.max_alias_depth,
            });
        }
        self.path.push(alias.address.clone());
        let mut any = false;
        for t in &alias.targets {
            any |= self.target(t, depth + 1)?;
        }
        self.path.pop();
        self.done.insert(alias.address.clone());
        Ok(any)
    }

    /// An alias target: local (resolved again) or external (kept).
    fn target(&mut self, target: &str, depth: usize) -> Result<bool, Unresolved> {
        let domain = target.rsplit_once('@').map_or("", |(_, d)| d);
        if !self.dir.is_local_domain(domain) {
            self.out.push_external(target);
            return Ok(true);
        }
        let found = self.local(target, depth)?;
        if !found {
            self.out.dangling.push(target.to_string());
        }
        Ok(found)
    }
}

/// Where mail for `address` goes: local mailboxes (each once, in order) and
/// external addresses. Never empty when `Ok`.
pub fn resolve(
    config: &Addresses,
    dir: &DirectoryData,
    address: &str,
) -> Result<Resolution, Unresolved> {
    let unknown = || Unresolved::Unknown(address.to_string());
    let mut r = Resolver {
        config,
        dir,
        recipient: String::new(),
        out: Resolution::default(),
        path: Vec::new(),
        done: HashSet::new(),
    };
    if is_bare_postmaster(address) {
        r.recipient = "postmaster".into();
        r.role(config.postmaster.as_slice());
    } else {
        let addr = normalize_address(address).map_err(|_| unknown())?;
        let domain = addr.rsplit_once('@').map_or("", |(_, d)| d);
        // Only local domains resolve: a foreign address is never turned
        // into an external target by itself.
        if !dir.is_local_domain(domain) {
            return Err(unknown());
        }
        r.recipient = addr.clone();
        r.local(&addr, 0)?;
    }
    if r.out.is_empty() {
        return Err(unknown());
    }
    Ok(r.out)
}

/// Resolve every address of `recipients` and merge the results, each
/// mailbox and external address once.
pub fn expand(
    config: &Addresses,
    dir: &DirectoryData,
    recipients: &[String],
) -> Result<Resolution, Unresolved> {
    let mut out = Resolution::default();
    for r in recipients {
        out.merge(resolve(config, dir, r)?);
    }
    Ok(out)
}

/// Where mail for `alias` (also a catch-all) goes in the end.
pub fn resolve_alias(
    config: &Addresses,
    dir: &DirectoryData,
    alias: &Alias,
) -> Result<Resolution, Unresolved> {
    let mut r = Resolver {
        config,
        dir,
        recipient: alias.address.clone(),
        out: Resolution::default(),
        path: Vec::new(),
        done: HashSet::new(),
    };
    r.alias(alias, 0)?;
    Ok(r.out)
}

/// The check `postoffice alias add` runs on the directory as it would be:
/// the alias must expand without loops, within the depth limit, and its
/// local targets must lead somewhere. The message says what to fix.
pub fn check_alias(config: &Addresses, dir: &DirectoryData, alias: &Alias) -> Result<(), String> {
    let mut r = Resolver {
        config,
        dir,
        recipient: alias.address.clone(),
        out: Resolution::default(),
        path: Vec::new(),
        done: HashSet::new(),
    };
    match r.alias(alias, 0) {
        Err(Unresolved::TooDeep { max, .. }) => {
            return Err(format!(
                "its expansion goes more than {max} aliases deep; point it at the final \
                 addresses or raise [addresses] max_alias_depth"
            ));
        }
        Err(Unresolved::Unknown(_)) | Ok(_) => {}
    }
    if let Some(l) = r.out.loops.first() {
        return Err(format!(
            "it would create a loop: {l} leads back to itself; remove one of the targets that \
             point back"
        ));
    }
    if let Some(t) = alias.targets.iter().find(|t| r.out.dangling.contains(t)) {
        return Err(format!(
            "target {t} is in a local domain but is neither a user nor an alias; add it first"
        ));
    }
    Ok(())
}

/// May `user` send as `address` because of an alias: `address` (with a
/// domain alias replaced, without a sub-address tag) is the user's own, or
/// an alias with `send_as` that delivers to the user. Catch-alls do not
/// count.
pub fn may_send_as(config: &Addresses, dir: &DirectoryData, user: &str, address: &str) -> bool {
    let Ok(addr) = normalize_address(address) else {
        return false;
    };
    let addr = canonical(dir, &addr);
    let base = base_address(config, &addr);
    for a in std::iter::once(&addr).chain(base.as_ref()) {
        if a == user {
            return true;
        }
        // Users and aliases share one namespace: another user's address
        // ends the search, and so does an alias, whatever it says.
        if let Some(alias) = dir.alias(a) {
            return alias.send_as
                && resolve_alias(config, dir, alias)
                    .is_ok_and(|r| r.local.iter().any(|m| m.address == user));
        }
        if dir.user(a).is_some() {
            return false;
        }
    }
    false
}

/// The aliases (catch-alls included) that deliver to `user`, with whether
/// the user may send as each (never as a catch-all): what `postoffice user
/// info` lists.
pub fn aliases_of(config: &Addresses, dir: &DirectoryData, user: &str) -> Vec<(String, bool)> {
    dir.aliases()
        .filter(|a| {
            resolve_alias(config, dir, a).is_ok_and(|r| r.local.iter().any(|m| m.address == user))
        })
        .map(|a| (a.address.clone(), a.send_as && !a.is_catch_all()))
        .collect()
}

/// The configuration problems `serve` and `config check` warn about: role
/// addresses of local domains that no mailbox receives, and aliases that
/// loop, go too deep or have targets leading nowhere (hand edits, users
/// removed since).
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
    for a in dir.aliases() {
        if let Err(e) = check_alias(config, dir, a) {
            out.push(format!("alias {}: {e}", a.address));
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
        assert_eq!(
            resolve(&c, &d, "postmaster@example.test")
                .unwrap()
                .mailboxes(),
            admin
        );
        assert_eq!(
            resolve(&c, &d, "ABUSE@example.test").unwrap().mailboxes(),
            admin
        );
        assert_eq!(resolve(&c, &d, "postmaster").unwrap().mailboxes(), admin);
        // The per-domain override, and a user that is itself a role address.
        let host = vec!["host@example.org".to_string()];
        assert_eq!(
            resolve(&c, &d, "postmaster@example.org")
                .unwrap()
                .mailboxes(),
            host
        );
        assert_eq!(
            resolve(&c, &d, "abuse@example.org").unwrap().mailboxes(),
            vec!["abuse@example.org".to_string()]
        );
        let all = [
            "postmaster@example.test",
            "abuse@example.test",
            "admin@example.test",
        ]
        .map(String::from);
        assert_eq!(expand(&c, &d, &all).unwrap().mailboxes(), admin);
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

    fn alias(
        dir: &Directory,
        c: &Addresses,
        address: &str,
        targets: &[&str],
    ) -> Result<Alias, String> {
        let targets: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
        let change = postoffice_directory::AliasChange {
            address,
            targets: &targets,
            send_as: None,
            max_targets: c.max_alias_targets,
        };
        dir.add_alias(&change, |d, a| {
            check_alias(c, d, a).map_err(|reason| postoffice_directory::Error::InvalidAlias {
                alias: a.address.clone(),
                reason,
            })
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn aliases_lists_catch_all_domain_alias_and_sub_addresses() {
        let (_t, dir) = setup();
        let c = config();
        alias(
            &dir,
            &c,
            "sales@example.test",
            &["admin@example.test", "host@example.org"],
        )
        .unwrap();
        alias(
            &dir,
            &c,
            "team@example.test",
            &[
                "sales@example.test",
                "admin@example.test",
                "friend@remote.test",
            ],
        )
        .unwrap();
        alias(&dir, &c, "@example.org", &["host@example.org"]).unwrap();
        dir.add_domain_alias("example.net", "example.test").unwrap();
        let d = dir.snapshot();
        // A distribution list reaching one mailbox twice stores it once.
        let r = resolve(&c, &d, "team@example.test").unwrap();
        assert_eq!(r.mailboxes(), ["admin@example.test", "host@example.org"]);
        assert_eq!(r.external, ["friend@remote.test"]);
        assert!(r.local.iter().all(|m| m.recipient == "team@example.test"));
        // Domain alias and sub-address, combined; the tag is kept.
        let r = resolve(&c, &d, "Sales+Q3@example.net").unwrap();
        assert_eq!(r.mailboxes(), ["admin@example.test", "host@example.org"]);
        assert_eq!(r.local[0].recipient, "sales+q3@example.net");
        let r = resolve(&c, &d, "admin+x@example.test").unwrap();
        assert_eq!(r.mailboxes(), ["admin@example.test"]);
        // The catch-all takes what nobody else has, not the users.
        assert_eq!(
            resolve(&c, &d, "whoever@example.org").unwrap().mailboxes(),
            ["host@example.org"]
        );
        assert_eq!(
            resolve(&c, &d, "abuse@example.org").unwrap().mailboxes(),
            ["abuse@example.org"]
        );
        // No catch-all in example.test; foreign domains never resolve, and
        // an external target is reached only through a local alias.
        for a in [
            "whoever@example.test",
            "friend@remote.test",
            "x@example.org.evil.test",
            "postmaster@remote.test",
        ] {
            assert!(resolve(&c, &d, a).is_err(), "{a}");
        }
        // Sub-addressing off.
        let off = Addresses {
            subaddress_separator: String::new(),
            ..config()
        };
        assert!(resolve(&off, &d, "admin+x@example.test").is_err());
        // Another separator; the first one in the local part cuts.
        let dash = Addresses {
            subaddress_separator: "-+".into(),
            ..config()
        };
        assert_eq!(
            resolve(&dash, &d, "admin-a+b@example.test")
                .unwrap()
                .mailboxes(),
            ["admin@example.test"]
        );
        // Control characters in a tag: refused (never a mailbox).
        assert!(resolve(&c, &d, "admin+\u{1}x@example.test").is_err());
        assert!(resolve(&c, &d, "admin+\tx@example.test").is_err());
    }

    #[test]
    fn loops_are_refused_at_add_time_and_cut_at_delivery() {
        let (_t, dir) = setup();
        let c = config();
        alias(&dir, &c, "a@example.test", &["admin@example.test"]).unwrap();
        alias(&dir, &c, "b@example.test", &["a@example.test"]).unwrap();
        let e = alias(&dir, &c, "a@example.test", &["b@example.test"]).unwrap_err();
        assert!(e.contains("loop"), "{e}");
        // Nothing was written.
        assert_eq!(
            dir.snapshot().alias("a@example.test").unwrap().targets,
            ["admin@example.test"]
        );
        // Self-reference and a dangling local target are refused too.
        assert!(alias(&dir, &c, "a@example.test", &["a@example.test"]).is_err());
        let e = alias(&dir, &c, "c@example.test", &["ghost@example.test"]).unwrap_err();
        assert!(e.contains("neither a user nor an alias"), "{e}");
        // A loop written by hand: delivery cuts it and reaches each mailbox once.
        let text = std::fs::read_to_string(dir.path()).unwrap();
        let text = text.replace(
            "targets = [\"admin@example.test\"]",
            "targets = [\"admin@example.test\", \"b@example.test\"]",
        );
        std::fs::write(dir.path(), text).unwrap();
        let d = dir.snapshot();
        assert_eq!(d.alias("a@example.test").unwrap().targets.len(), 2);
        let r = resolve(&c, &d, "b@example.test").unwrap();
        assert_eq!(r.mailboxes(), ["admin@example.test"]);
        assert_eq!(r.loops, ["b@example.test"]);
        let w = postmaster_warnings(&c, &d);
        assert!(
            w.iter()
                .any(|w| w.starts_with("alias a@example.test") && w.contains("loop")),
            "{w:?}"
        );
        // A catch-all pointing into its own domain at nobody loops back.
        let e = alias(&dir, &c, "@example.test", &["nobody@example.test"]).unwrap_err();
        assert!(e.contains("loop") || e.contains("neither"), "{e}");
    }

    #[test]
    fn depth_limit() {
        let (_t, dir) = setup();
        let c = Addresses {
            max_alias_depth: 3,
            ..config()
        };
        alias(&dir, &c, "l1@example.test", &["admin@example.test"]).unwrap();
        alias(&dir, &c, "l2@example.test", &["l1@example.test"]).unwrap();
        alias(&dir, &c, "l3@example.test", &["l2@example.test"]).unwrap();
        let e = alias(&dir, &c, "l4@example.test", &["l3@example.test"]).unwrap_err();
        assert!(e.contains("max_alias_depth"), "{e}");
        let d = dir.snapshot();
        assert_eq!(
            resolve(&c, &d, "l3@example.test").unwrap().mailboxes(),
            ["admin@example.test"]
        );
        // Deeper than the limit at delivery (the limit lowered later).
        let c2 = Addresses {
            max_alias_depth: 2,
            ..config()
        };
        assert!(matches!(
            resolve(&c2, &d, "l3@example.test"),
            Err(Unresolved::TooDeep { max: 2, .. })
        ));
    }

    #[test]
    fn target_limit_and_namespace() {
        let (_t, dir) = setup();
        let c = config();
        let many: Vec<String> = (0..10_000).map(|i| format!("u{i}@remote.test")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let e = alias(&dir, &c, "big@example.test", &many).unwrap_err();
        assert!(
            e.contains("10000 targets") && e.contains("max_alias_targets"),
            "{e}"
        );
        assert!(dir.snapshot().alias("big@example.test").is_none());
        let c_big = Addresses {
            max_alias_targets: 10_000,
            ..config()
        };
        alias(&dir, &c_big, "big@example.test", &many).unwrap();
        // Adding one more to a full list is refused too.
        let e = alias(&dir, &c_big, "big@example.test", &["one.more@remote.test"]).unwrap_err();
        assert!(e.contains("10001"), "{e}");
        // Users and aliases share one namespace.
        let e = alias(&dir, &c, "admin@example.test", &["host@example.org"]).unwrap_err();
        assert!(e.contains("is a user"), "{e}");
        let hash = postoffice_directory::hash_password(b"pw").unwrap();
        let e = dir
            .add_user("big@example.test", &hash)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is an alias"), "{e}");
        // Invalid targets and non-local alias domains.
        for (a, t) in [
            ("x@example.test", "not an address"),
            ("x@example.test", "y%remote.test@example.test"),
            ("x@example.test", "@example.test"),
            ("x@remote.test", "admin@example.test"),
        ] {
            assert!(alias(&dir, &c, a, &[t]).is_err(), "{a} -> {t}");
        }
    }

    #[test]
    fn send_as_follows_the_aliases_that_deliver_to_the_user() {
        let (_t, dir) = setup();
        let c = config();
        alias(&dir, &c, "sales@example.test", &["admin@example.test"]).unwrap();
        alias(&dir, &c, "other@example.test", &["host@example.org"]).unwrap();
        alias(&dir, &c, "@example.test", &["admin@example.test"]).unwrap();
        let targets = vec!["admin@example.test".to_string()];
        dir.add_alias(
            &postoffice_directory::AliasChange {
                address: "noreply@example.test",
                targets: &targets,
                send_as: Some(false),
                max_targets: 10,
            },
            |_, _| Ok(()),
        )
        .unwrap();
        dir.add_domain_alias("example.net", "example.test").unwrap();
        let d = dir.snapshot();
        let u = "admin@example.test";
        for ok in [
            "admin@example.test",
            "sales@example.test",
            "SALES@example.net",
            "sales+x@example.test",
            "admin+y@example.test",
        ] {
            assert!(may_send_as(&c, &d, u, ok), "{ok}");
        }
        for no in [
            "noreply@example.test",
            "other@example.test",
            "random@example.test",
            "host@example.org",
            "sales@remote.test",
        ] {
            assert!(!may_send_as(&c, &d, u, no), "{no}");
        }
        let listed = aliases_of(&c, &d, u);
        assert!(listed.contains(&("sales@example.test".to_string(), true)));
        assert!(listed.contains(&("noreply@example.test".to_string(), false)));
        assert!(listed.contains(&("@example.test".to_string(), false)));
    }
}
