//! The in-memory directory: domains, users, lookups and authentication,
//! plus conversion to and from `directory.toml`.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::address::{lookup_key, normalize_address, normalize_admin_name, normalize_domain};
use crate::alias::Alias;
use crate::error::{Error, Result};
use crate::password::{dummy_verify, validate_hash, verify_password};
use crate::policy::{
    DomainPolicy, EffectivePolicy, ExpireSummary, LoginDelaySummary, PolicyDefaults,
    PolicyOverrides, Retention, SendLimitOverrides, UserPolicy,
};

/// A mail domain served by this server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// Canonical (lower-case) domain name.
    pub name: String,
    /// Domain-wide overrides of the server defaults.
    pub policy: DomainPolicy,
}

/// A mailbox owner.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// Canonical (lower-case) `local@domain` address; also the login name.
    pub address: String,
    /// Password hash as stored (see [`crate::verify_password`] for formats).
    pub password_hash: String,
    /// Per-user overrides of the domain and server defaults.
    pub policy: UserPolicy,
    /// Disabled users keep their mail but cannot log in.
    pub disabled: bool,
    /// The user's own outbound sending limits.
    pub send_limits: SendLimitOverrides,
    /// External addresses this user's mail is forwarded to (with SRS);
    /// empty: no forwarding.
    pub forward: Vec<String>,
    /// With forwarding: keep a copy in the user's own maildrop too.
    pub forward_keep_copy: bool,
    /// The vacation auto-reply, when one is set.
    pub vacation: Option<Vacation>,
}

/// A user's vacation auto-reply (RFC 3834).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vacation {
    /// The reply's subject; `None`: "Auto: <original subject>".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The reply's text (UTF-8).
    pub body: String,
    /// The last day (`YYYY-MM-DD`, UTC) replies are sent; `None`: until
    /// turned off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

impl User {
    /// The part after `@`.
    pub fn domain(&self) -> &str {
        self.address.rsplit_once('@').map_or("", |(_, d)| d)
    }

    /// The part before `@`.
    pub fn local_part(&self) -> &str {
        self.address.rsplit_once('@').map_or("", |(l, _)| l)
    }
}

/// Hand-written so that hashes never end up in logs or panic messages.
impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("address", &self.address)
            .field("password_hash", &"<redacted>")
            .field("policy", &self.policy)
            .field("disabled", &self.disabled)
            .field("send_limits", &self.send_limits)
            .field("forward", &self.forward)
            .field("forward_keep_copy", &self.forward_keep_copy)
            .field("vacation", &self.vacation)
            .finish()
    }
}

/// An administrator of the web interface: a name (never a mail address)
/// and a password hash like a user's. Administrators have no mailbox.
#[derive(Clone, PartialEq, Eq)]
pub struct Admin {
    /// Canonical (lower-case) name; the sign-in name.
    pub name: String,
    /// Password hash as stored (same formats as a user's).
    pub password_hash: String,
}

/// Hand-written so that hashes never end up in logs or panic messages.
impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("name", &self.name)
            .field("password_hash", &"<redacted>")
            .finish()
    }
}

/// Result of [`DirectoryData::authenticate_admin`]; like [`AuthOutcome`],
/// one failure for every reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAuthOutcome {
    /// The password matched; the canonical name.
    Ok(String),
    /// Unknown name or wrong password.
    Failed,
}

/// A successfully authenticated user, detached from the snapshot so it can
/// outlive it (sessions keep it across directory reloads).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserRef {
    /// Canonical address; use this, not what the client typed, to find the
    /// mailbox.
    pub address: String,
}

impl UserRef {
    /// The part after `@`.
    pub fn domain(&self) -> &str {
        self.address.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

/// Result of [`DirectoryData::authenticate`].
///
/// Deliberately has a single failure variant: the protocol layer must not
/// be able to tell clients (or logs shown to clients) *why* a login failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The password matched an enabled user.
    Ok(UserRef),
    /// Unknown user, disabled user or wrong password.
    Failed,
}

/// An immutable, consistent view of the directory.
///
/// Obtained from [`crate::Directory::snapshot`]; cheap to share via `Arc`.
/// Maps are ordered so that listings and the written file are stable.
#[derive(Default)]
pub struct DirectoryData {
    pub(crate) domains: BTreeMap<String, Domain>,
    pub(crate) users: BTreeMap<String, User>,
    pub(crate) admins: BTreeMap<String, Admin>,
    /// Aliases (and catch-alls, `@domain`) by canonical address.
    pub(crate) aliases: BTreeMap<String, Alias>,
    /// Domain aliases: alias domain -> real domain.
    pub(crate) domain_aliases: BTreeMap<String, String>,
    /// Pre-login capability values are computed once per snapshot, not per
    /// connection, because they need a pass over every user.
    summaries: OnceLock<(PolicyDefaults, ExpireSummary, LoginDelaySummary)>,
}

impl fmt::Debug for DirectoryData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectoryData")
            .field("domains", &self.domains.len())
            .field("users", &self.users.len())
            .field("admins", &self.admins.len())
            .field("aliases", &self.aliases.len())
            .field("domain_aliases", &self.domain_aliases.len())
            .finish()
    }
}

impl DirectoryData {
    /// Looks a user up by address (case-insensitively).
    pub fn user(&self, address: &str) -> Option<&User> {
        self.users.get(lookup_key(address).as_ref())
    }

    /// Looks a domain up by name (case-insensitively).
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.get(lookup_key(name).as_ref())
    }

    /// All users, ordered by address.
    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    /// All domains, ordered by name.
    pub fn domains(&self) -> impl Iterator<Item = &Domain> {
        self.domains.values()
    }

    /// Looks an administrator up by name (case-insensitively).
    pub fn admin(&self, name: &str) -> Option<&Admin> {
        self.admins.get(lookup_key(name).as_ref())
    }

    /// All administrators, ordered by name.
    pub fn admins(&self) -> impl Iterator<Item = &Admin> {
        self.admins.values()
    }

    /// Checks an administrator's sign-in with exactly one hash
    /// verification whatever the outcome (a dummy one for unknown or
    /// malformed names), as [`DirectoryData::authenticate`] does for users.
    pub fn authenticate_admin(&self, name: &str, password: &[u8]) -> AdminAuthOutcome {
        let admin = normalize_admin_name(name)
            .ok()
            .and_then(|n| self.admins.get(&n));
        let Some(admin) = admin else {
            dummy_verify(password);
            return AdminAuthOutcome::Failed;
        };
        if verify_password(&admin.password_hash, password) {
            AdminAuthOutcome::Ok(admin.name.clone())
        } else {
            AdminAuthOutcome::Failed
        }
    }

    /// Users whose address is in `domain`.
    pub fn users_in_domain<'a>(&'a self, domain: &'a str) -> impl Iterator<Item = &'a User> {
        let domain = lookup_key(domain).into_owned();
        self.users.values().filter(move |u| u.domain() == domain)
    }

    /// Checks a login.
    ///
    /// Exactly one password-hash verification is done whatever the outcome
    /// (a dummy one for unknown or malformed names), so response timing does
    /// not reveal which addresses exist. Disabled users are verified too and
    /// then refused, for the same reason.
    pub fn authenticate(&self, address: &str, password: &[u8]) -> AuthOutcome {
        let user = normalize_address(address)
            .ok()
            .and_then(|a| self.users.get(&a));
        let Some(user) = user else {
            dummy_verify(password);
            return AuthOutcome::Failed;
        };
        if verify_password(&user.password_hash, password) && !user.disabled {
            AuthOutcome::Ok(UserRef {
                address: user.address.clone(),
            })
        } else {
            AuthOutcome::Failed
        }
    }

    /// The policy for `address`: user override, else domain override, else
    /// `defaults`. Unknown users get their domain's policy if the domain
    /// exists, else the defaults.
    pub fn effective(&self, address: &str, defaults: &PolicyDefaults) -> EffectivePolicy {
        let key = lookup_key(address);
        let user_policy = self.users.get(key.as_ref()).map(|u| u.policy);
        let domain_policy = key
            .rsplit_once('@')
            .and_then(|(_, d)| self.domains.get(d))
            .map(|d| d.policy);
        EffectivePolicy::resolve(
            &user_policy.unwrap_or_default(),
            &domain_policy.unwrap_or_default(),
            defaults,
        )
    }

    /// Shortest retention among enabled users and whether it varies, for
    /// the pre-login `EXPIRE` capability (RFC 2449 section 6.7).
    pub fn expire_summary(&self, defaults: &PolicyDefaults) -> ExpireSummary {
        self.summaries(defaults).0
    }

    /// Shortest login delay among enabled users and whether it varies, for
    /// the pre-login `LOGIN-DELAY` capability (RFC 2449 section 6.6).
    pub fn login_delay_summary(&self, defaults: &PolicyDefaults) -> LoginDelaySummary {
        self.summaries(defaults).1
    }

    fn summaries(&self, defaults: &PolicyDefaults) -> (ExpireSummary, LoginDelaySummary) {
        if let Some((d, e, l)) = self.summaries.get()
            && d == defaults
        {
            return (*e, *l);
        }
        let computed = self.compute_summaries(defaults);
        // Only the first set of defaults is cached; the server uses one.
        let _ = self.summaries.set((*defaults, computed.0, computed.1));
        computed
    }

    fn compute_summaries(&self, defaults: &PolicyDefaults) -> (ExpireSummary, LoginDelaySummary) {
        // `None` (never) sorts after every number of days.
        let rank = |r: Option<u32>| r.map_or(u64::MAX, u64::from);
        let mut expire: Option<ExpireSummary> = None;
        let mut delay: Option<LoginDelaySummary> = None;
        for user in self.users.values().filter(|u| !u.disabled) {
            let p = self.effective(&user.address, defaults);
            expire = Some(match expire {
                None => ExpireSummary {
                    min_days: p.retention_days,
                    varies: false,
                },
                Some(e) => ExpireSummary {
                    min_days: if rank(p.retention_days) < rank(e.min_days) {
                        p.retention_days
                    } else {
                        e.min_days
                    },
                    varies: e.varies || e.min_days != p.retention_days,
                },
            });
            delay = Some(match delay {
                None => LoginDelaySummary {
                    min_secs: p.login_delay_secs,
                    varies: false,
                },
                Some(d) => LoginDelaySummary {
                    min_secs: d.min_secs.min(p.login_delay_secs),
                    varies: d.varies || d.min_secs != p.login_delay_secs,
                },
            });
        }
        (
            expire.unwrap_or(ExpireSummary {
                min_days: defaults.retention_days,
                varies: false,
            }),
            delay.unwrap_or(LoginDelaySummary {
                min_secs: defaults.login_delay_secs,
                varies: false,
            }),
        )
    }

    // ----- mutation helpers, used by `Directory` under the file lock -----

    pub(crate) fn clear_cache(&mut self) {
        self.summaries = OnceLock::new();
    }

    pub(crate) fn add_domain(&mut self, name: &str) -> Result<String> {
        let name = normalize_domain(name)?;
        if self.domain_aliases.contains_key(&name) {
            return Err(Error::DomainIsAlias(name));
        }
        match self.domains.entry(name.clone()) {
            Entry::Occupied(_) => Err(Error::DomainExists(name)),
            Entry::Vacant(v) => {
                v.insert(Domain {
                    name: name.clone(),
                    policy: PolicyOverrides::default(),
                });
                Ok(name)
            }
        }
    }

    pub(crate) fn remove_domain(&mut self, name: &str) -> Result<()> {
        let name = normalize_domain(name)?;
        if self.domain_aliases.contains_key(&name) {
            return Err(Error::DomainIsAlias(name));
        }
        if !self.domains.contains_key(&name) {
            return Err(Error::DomainNotFound(name));
        }
        let count = self.users_in_domain(&name).count();
        if count > 0 {
            return Err(Error::DomainHasUsers { name, count });
        }
        let count = self.aliases_using_domain(&name);
        if count > 0 {
            return Err(Error::DomainHasAliases { name, count });
        }
        self.domains.remove(&name);
        Ok(())
    }

    pub(crate) fn add_user(&mut self, address: &str, password_hash: &str) -> Result<String> {
        let address = normalize_address(address)?;
        validate_hash(password_hash)?;
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
        if !self.domains.contains_key(domain) {
            return Err(Error::DomainNotFound(domain.to_owned()));
        }
        if self.aliases.contains_key(&address) {
            return Err(Error::AddressIsAlias(address));
        }
        match self.users.entry(address.clone()) {
            Entry::Occupied(_) => Err(Error::UserExists(address)),
            Entry::Vacant(v) => {
                v.insert(User {
                    address: address.clone(),
                    password_hash: password_hash.to_owned(),
                    policy: PolicyOverrides::default(),
                    disabled: false,
                    send_limits: SendLimitOverrides::default(),
                    forward: Vec::new(),
                    forward_keep_copy: true,
                    vacation: None,
                });
                Ok(address)
            }
        }
    }

    pub(crate) fn add_admin(&mut self, name: &str, password_hash: &str) -> Result<String> {
        let name = normalize_admin_name(name)?;
        validate_hash(password_hash)?;
        match self.admins.entry(name.clone()) {
            Entry::Occupied(_) => Err(Error::AdminExists(name)),
            Entry::Vacant(v) => {
                v.insert(Admin {
                    name: name.clone(),
                    password_hash: password_hash.to_owned(),
                });
                Ok(name)
            }
        }
    }

    pub(crate) fn admin_mut(&mut self, name: &str) -> Result<&mut Admin> {
        let name = normalize_admin_name(name)?;
        match self.admins.get_mut(&name) {
            Some(a) => Ok(a),
            None => Err(Error::AdminNotFound(name)),
        }
    }

    pub(crate) fn remove_admin(&mut self, name: &str) -> Result<()> {
        let name = normalize_admin_name(name)?;
        match self.admins.remove(&name) {
            Some(_) => Ok(()),
            None => Err(Error::AdminNotFound(name)),
        }
    }

    pub(crate) fn user_mut(&mut self, address: &str) -> Result<&mut User> {
        let address = normalize_address(address)?;
        match self.users.get_mut(&address) {
            Some(u) => Ok(u),
            None => Err(Error::UserNotFound(address)),
        }
    }

    pub(crate) fn domain_mut(&mut self, name: &str) -> Result<&mut Domain> {
        let name = normalize_domain(name)?;
        match self.domains.get_mut(&name) {
            Some(d) => Ok(d),
            None => Err(Error::DomainNotFound(name)),
        }
    }

    pub(crate) fn remove_user(&mut self, address: &str) -> Result<()> {
        let address = normalize_address(address)?;
        match self.users.remove(&address) {
            Some(_) => Ok(()),
            None => Err(Error::UserNotFound(address)),
        }
    }

    // ----- file format -----

    /// Parses and validates the contents of `directory.toml`. `path` is
    /// only used in error messages.
    pub(crate) fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let bad = |message: String| Error::Parse {
            path: path.to_owned(),
            message,
        };
        let file: FileRepr = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut data = DirectoryData::default();
        for d in file.domains {
            let name = normalize_domain(&d.name).map_err(|e| bad(e.to_string()))?;
            let policy = d.policy();
            policy.validate().map_err(|e| bad(e.to_string()))?;
            if data
                .domains
                .insert(
                    name.clone(),
                    Domain {
                        name: name.clone(),
                        policy,
                    },
                )
                .is_some()
            {
                return Err(bad(format!("domain {name} is listed more than once")));
            }
        }
        for u in file.users {
            let address = normalize_address(&u.address).map_err(|e| bad(e.to_string()))?;
            let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
            if !data.domains.contains_key(domain) {
                return Err(bad(format!(
                    "user {address} belongs to domain {domain}, which has no [[domain]] entry"
                )));
            }
            validate_hash(&u.password).map_err(|e| bad(format!("user {address}: {e}")))?;
            let policy = u.policy();
            policy.validate().map_err(|e| bad(e.to_string()))?;
            let mut forward = Vec::with_capacity(u.forward.len());
            for t in &u.forward {
                forward.push(
                    normalize_address(t)
                        .map_err(|e| bad(format!("user {address}: forward target: {e}")))?,
                );
            }
            let user = User {
                address: address.clone(),
                password_hash: u.password,
                policy,
                disabled: u.disabled,
                send_limits: SendLimitOverrides {
                    max_messages_per_hour: u.max_messages_per_hour,
                    max_recipients_per_day: u.max_recipients_per_day,
                },
                forward,
                forward_keep_copy: u.forward_keep_copy,
                vacation: u.vacation,
            };
            if data.users.insert(address.clone(), user).is_some() {
                return Err(bad(format!("user {address} is listed more than once")));
            }
        }
        for a in file.admins {
            let name = normalize_admin_name(&a.name).map_err(|e| bad(e.to_string()))?;
            validate_hash(&a.password).map_err(|e| bad(format!("admin {name}: {e}")))?;
            let admin = Admin {
                name: name.clone(),
                password_hash: a.password,
            };
            if data.admins.insert(name.clone(), admin).is_some() {
                return Err(bad(format!("admin {name} is listed more than once")));
            }
        }
        for d in file.domain_aliases {
            let name = normalize_domain(&d.name).map_err(|e| bad(e.to_string()))?;
            let target = normalize_domain(&d.target).map_err(|e| bad(e.to_string()))?;
            if data.domains.contains_key(&name) {
                return Err(bad(format!(
                    "{name} is both a [[domain]] and a [[domain_alias]]"
                )));
            }
            if !data.domains.contains_key(&target) {
                return Err(bad(format!(
                    "domain alias {name} points to {target}, which has no [[domain]] entry"
                )));
            }
            if data.domain_aliases.insert(name.clone(), target).is_some() {
                return Err(bad(format!("domain alias {name} is listed more than once")));
            }
        }
        for a in file.aliases {
            let address = crate::alias::normalize_alias_address(&a.address)
                .map_err(|e| bad(e.to_string()))?;
            let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
            if !data.domains.contains_key(domain) {
                return Err(bad(format!(
                    "alias {address} belongs to domain {domain}, which has no [[domain]] entry"
                )));
            }
            if data.users.contains_key(&address) {
                return Err(bad(format!("{address} is both a user and an alias")));
            }
            let mut targets = Vec::with_capacity(a.targets.len());
            let mut seen = std::collections::HashSet::new();
            for t in &a.targets {
                let t = normalize_address(t).map_err(|e| bad(format!("alias {address}: {e}")))?;
                if seen.insert(t.clone()) {
                    targets.push(t);
                }
            }
            if targets.is_empty() {
                return Err(bad(format!("alias {address} has no targets")));
            }
            let alias = Alias {
                address: address.clone(),
                targets,
                send_as: a.send_as,
            };
            if data.aliases.insert(address.clone(), alias).is_some() {
                return Err(bad(format!("alias {address} is listed more than once")));
            }
        }
        Ok(data)
    }

    /// Serialises to the `directory.toml` format.
    pub(crate) fn to_toml(&self) -> Result<String> {
        let file = FileRepr {
            domains: self
                .domains
                .values()
                .map(|d| DomainRepr {
                    name: d.name.clone(),
                    retention_days: d.policy.retention_days,
                    login_delay_secs: d.policy.login_delay_secs,
                    quota_bytes: d.policy.quota_bytes,
                    quota_messages: d.policy.quota_messages,
                })
                .collect(),
            users: self
                .users
                .values()
                .map(|u| UserRepr {
                    address: u.address.clone(),
                    password: u.password_hash.clone(),
                    retention_days: u.policy.retention_days,
                    login_delay_secs: u.policy.login_delay_secs,
                    quota_bytes: u.policy.quota_bytes,
                    quota_messages: u.policy.quota_messages,
                    max_messages_per_hour: u.send_limits.max_messages_per_hour,
                    max_recipients_per_day: u.send_limits.max_recipients_per_day,
                    disabled: u.disabled,
                    forward: u.forward.clone(),
                    forward_keep_copy: u.forward_keep_copy,
                    vacation: u.vacation.clone(),
                })
                .collect(),
            admins: self
                .admins
                .values()
                .map(|a| AdminRepr {
                    name: a.name.clone(),
                    password: a.password_hash.clone(),
                })
                .collect(),
            domain_aliases: self
                .domain_aliases
                .iter()
                .map(|(name, target)| DomainAliasRepr {
                    name: name.clone(),
                    target: target.clone(),
                })
                .collect(),
            aliases: self
                .aliases
                .values()
                .map(|a| AliasRepr {
                    address: a.address.clone(),
                    targets: a.targets.clone(),
                    send_as: a.send_as,
                })
                .collect(),
        };
        let body = toml::to_string_pretty(&file)?;
        Ok(format!("{FILE_HEADER}{body}"))
    }
}

const FILE_HEADER: &str = "\
# postoffice directory: domains, users, web administrators and password hashes.
# Written by the postoffice CLI; hand edits are fine, and a running server
# picks changes up automatically (it keeps the old data if this file fails
# to parse).

";

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileRepr {
    #[serde(default, rename = "domain", skip_serializing_if = "Vec::is_empty")]
    domains: Vec<DomainRepr>,
    #[serde(default, rename = "user", skip_serializing_if = "Vec::is_empty")]
    users: Vec<UserRepr>,
    #[serde(default, rename = "admin", skip_serializing_if = "Vec::is_empty")]
    admins: Vec<AdminRepr>,
    #[serde(
        default,
        rename = "domain_alias",
        skip_serializing_if = "Vec::is_empty"
    )]
    domain_aliases: Vec<DomainAliasRepr>,
    #[serde(default, rename = "alias", skip_serializing_if = "Vec::is_empty")]
    aliases: Vec<AliasRepr>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainAliasRepr {
    name: String,
    target: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasRepr {
    address: String,
    targets: Vec<String>,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    send_as: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminRepr {
    name: String,
    password: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainRepr {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retention_days: Option<Retention>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    login_delay_secs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quota_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quota_messages: Option<u64>,
}

impl DomainRepr {
    fn policy(&self) -> PolicyOverrides {
        PolicyOverrides {
            retention_days: self.retention_days,
            login_delay_secs: self.login_delay_secs,
            quota_bytes: self.quota_bytes,
            quota_messages: self.quota_messages,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserRepr {
    address: String,
    password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retention_days: Option<Retention>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    login_delay_secs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quota_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quota_messages: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_messages_per_hour: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_recipients_per_day: Option<u32>,
    #[serde(default, skip_serializing_if = "is_false")]
    disabled: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    forward: Vec<String>,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    forward_keep_copy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vacation: Option<Vacation>,
}

impl UserRepr {
    fn policy(&self) -> PolicyOverrides {
        PolicyOverrides {
            retention_days: self.retention_days,
            login_delay_secs: self.login_delay_secs,
            quota_bytes: self.quota_bytes,
            quota_messages: self.quota_messages,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}
