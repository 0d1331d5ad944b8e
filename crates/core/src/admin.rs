//! What administrators do to domains, users, administrator accounts and
//! quarantines: one implementation for the CLI (`postoffice domain`,
//! `user`, `admin`, `quarantine`) and the web interface, so that a rule
//! (a new user's domain is added with it, a password is hashed with
//! argon2id, a policy value is a number, `never` or `inherit`) exists once.
//!
//! Every function takes the directory or the store it changes, not a
//! whole [`crate::App`]: the CLI runs them without a server.

use std::io::Read;
use std::time::SystemTime;

use postoffice_config::Config;
use postoffice_directory::{
    Directory, EffectivePolicy, PolicyOverrides, Retention, Vacation, hash_password,
    normalize_address, normalize_admin_name, normalize_domain,
};
use postoffice_store::{MailStore, StoreError, Usage};

/// Why an administrative operation failed. The messages are meant for the
/// administrator as they are.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The directory refused or failed (unknown user, bad name, I/O...).
    #[error(transparent)]
    Directory(#[from] postoffice_directory::Error),
    /// The store failed (unknown quarantined message, locked maildrop...).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A policy value that is not a number, `never` or `inherit`.
    #[error("{field} must be {expected}, not {value:?}")]
    InvalidValue {
        /// The field, as the CLI names it (`retention-days`...).
        field: &'static str,
        /// What it accepts.
        expected: &'static str,
        /// What was given (truncated).
        value: String,
    },
    /// A password that cannot be used.
    #[error("invalid password: {0}")]
    InvalidPassword(&'static str),
    /// `user info` or the web page of a user that does not exist.
    #[error("no such user: {0} (see `postoffice user list`)")]
    NoSuchUser(String),
}

/// One policy field of a change: leave it, make it inherit, or set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Change<T> {
    /// Leave the stored value as it is.
    #[default]
    Keep,
    /// Remove the override (inherit from the domain or the config).
    Inherit,
    /// Override with this value.
    Set(T),
}

impl<T: Copy> Change<T> {
    fn apply(self, field: &mut Option<T>) {
        match self {
            Change::Keep => {}
            Change::Inherit => *field = None,
            Change::Set(v) => *field = Some(v),
        }
    }
}

/// A change to a user's or a domain's policy overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyChange {
    /// Days to keep messages, or never.
    pub retention_days: Change<Retention>,
    /// Seconds between logins.
    pub login_delay_secs: Change<u32>,
    /// Mailbox size limit (0 = unlimited).
    pub quota_bytes: Change<u64>,
    /// Mailbox message limit (0 = unlimited).
    pub quota_messages: Change<u64>,
}

/// The text form of a policy change, as the CLI options and the web forms
/// give it: each field absent or empty (keep), `inherit`, a number, and
/// for the retention also `never`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyText<'a> {
    /// `--retention-days`.
    pub retention_days: Option<&'a str>,
    /// `--login-delay`.
    pub login_delay: Option<&'a str>,
    /// `--quota-bytes`.
    pub quota_bytes: Option<&'a str>,
    /// `--quota-messages`.
    pub quota_messages: Option<&'a str>,
}

fn shown(value: &str) -> String {
    postoffice_common::text::printable(value, 40)
}

fn parse_number<T: std::str::FromStr>(
    value: Option<&str>,
    field: &'static str,
) -> Result<Change<T>, AdminError> {
    match value.map(str::trim) {
        None | Some("") => Ok(Change::Keep),
        Some(v) if v.eq_ignore_ascii_case("inherit") => Ok(Change::Inherit),
        Some(v) => v
            .parse()
            .map(Change::Set)
            .map_err(|_| AdminError::InvalidValue {
                field,
                expected: "a number or \"inherit\"",
                value: shown(v),
            }),
    }
}

impl PolicyChange {
    /// Parse the text form (see [`PolicyText`]).
    pub fn parse(text: &PolicyText<'_>) -> Result<PolicyChange, AdminError> {
        let retention_days = match text.retention_days.map(str::trim) {
            None | Some("") => Change::Keep,
            Some(v) if v.eq_ignore_ascii_case("inherit") => Change::Inherit,
            Some(v) if v.eq_ignore_ascii_case("never") => Change::Set(Retention::Never),
            Some(v) => Change::Set(Retention::Days(v.parse().map_err(|_| {
                AdminError::InvalidValue {
                    field: "retention-days",
                    expected: "a number, \"never\" or \"inherit\"",
                    value: shown(v),
                }
            })?)),
        };
        Ok(PolicyChange {
            retention_days,
            login_delay_secs: parse_number(text.login_delay, "login-delay")?,
            quota_bytes: parse_number(text.quota_bytes, "quota-bytes")?,
            quota_messages: parse_number(text.quota_messages, "quota-messages")?,
        })
    }

    /// Whether the change changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == PolicyChange::default()
    }

    /// Apply the change to stored overrides.
    pub fn apply(&self, p: &mut PolicyOverrides) {
        self.retention_days.apply(&mut p.retention_days);
        self.login_delay_secs.apply(&mut p.login_delay_secs);
        self.quota_bytes.apply(&mut p.quota_bytes);
        self.quota_messages.apply(&mut p.quota_messages);
    }
}

/// Longest password accepted, in octets.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// A password a client can type: not empty, at most
/// [`MAX_PASSWORD_LEN`] octets, no CR, LF or NUL (POP3 and SMTP could not
/// carry them).
pub fn check_password(password: &str) -> Result<(), AdminError> {
    if password.is_empty() {
        return Err(AdminError::InvalidPassword("it is empty"));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(AdminError::InvalidPassword(
            "it is longer than 1024 characters",
        ));
    }
    if password.contains(['\r', '\n', '\0']) {
        return Err(AdminError::InvalidPassword(
            "it contains a line break or NUL",
        ));
    }
    Ok(())
}

/// A random password of 20 letters and digits.
pub fn generate_password() -> String {
    use rand::Rng;
    use rand::distributions::Alphanumeric;
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(20)
        .map(char::from)
        .collect()
}

fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

/// What [`add_user`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    /// The canonical address.
    pub address: String,
    /// The domain, when it was added with the user.
    pub domain_added: Option<String>,
}

/// Add a user with `password` (hashed with argon2id); its domain is added
/// too when it is new.
pub fn add_user(dir: &Directory, address: &str, password: &str) -> Result<NewUser, AdminError> {
    let address = normalize_address(address)?;
    check_password(password)?;
    let hash = hash_password(password.as_bytes())?;
    let domain = domain_of(&address).to_string();
    let domain_added = if dir.snapshot().domain(&domain).is_none() {
        Some(dir.add_domain(&domain)?)
    } else {
        None
    };
    let address = dir.add_user(&address, &hash)?;
    Ok(NewUser {
        address,
        domain_added,
    })
}

/// Change a user's password; returns the canonical address.
pub fn set_password(dir: &Directory, address: &str, password: &str) -> Result<String, AdminError> {
    let address = normalize_address(address)?;
    check_password(password)?;
    dir.set_password(&address, &hash_password(password.as_bytes())?)?;
    Ok(address)
}

/// What [`remove_user`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedUser {
    /// The canonical address.
    pub address: String,
    /// Where the mail was kept (`None`: it was deleted).
    pub kept: Option<String>,
}

/// Remove a user; with `purge`, its stored mail too.
pub fn remove_user(
    dir: &Directory,
    store: &dyn MailStore,
    address: &str,
    purge: bool,
) -> Result<RemovedUser, AdminError> {
    let address = normalize_address(address)?;
    dir.remove_user(&address)?;
    let kept = if purge {
        store.remove_mailbox(&address)?;
        None
    } else {
        Some(store.location(&address)?)
    };
    Ok(RemovedUser { address, kept })
}

/// Change a user's policy and, when `disabled` is given, whether it may
/// log in. Returns the canonical address.
pub fn set_user(
    dir: &Directory,
    address: &str,
    change: &PolicyChange,
    disabled: Option<bool>,
) -> Result<String, AdminError> {
    let address = normalize_address(address)?;
    if !change.is_empty() || disabled.is_none() {
        dir.update_user_policy(&address, |p| change.apply(p))?;
    }
    if let Some(d) = disabled {
        dir.set_user_disabled(&address, d)?;
    }
    Ok(address)
}

/// A change to a user's own sending limits (`user set
/// --max-messages-per-hour`, `--max-recipients-per-day`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendLimitChange {
    /// Messages per hour (0 = no limit for this user).
    pub max_messages_per_hour: Change<u32>,
    /// Recipients per 24 hours (0 = no limit for this user).
    pub max_recipients_per_day: Change<u32>,
}

impl SendLimitChange {
    /// Parse the text form: absent or empty (keep), `inherit`, a number.
    pub fn parse(
        messages_per_hour: Option<&str>,
        recipients_per_day: Option<&str>,
    ) -> Result<SendLimitChange, AdminError> {
        Ok(SendLimitChange {
            max_messages_per_hour: parse_number(messages_per_hour, "max-messages-per-hour")?,
            max_recipients_per_day: parse_number(recipients_per_day, "max-recipients-per-day")?,
        })
    }

    /// Whether the change changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == SendLimitChange::default()
    }
}

/// Change a user's own sending limits; returns the canonical address.
pub fn set_user_send_limits(
    dir: &Directory,
    address: &str,
    change: &SendLimitChange,
) -> Result<String, AdminError> {
    let address = normalize_address(address)?;
    dir.update_user_send_limits(&address, |l| {
        change
            .max_messages_per_hour
            .apply(&mut l.max_messages_per_hour);
        change
            .max_recipients_per_day
            .apply(&mut l.max_recipients_per_day);
    })?;
    Ok(address)
}

/// Add a domain; returns its canonical name.
pub fn add_domain(dir: &Directory, name: &str) -> Result<String, AdminError> {
    Ok(dir.add_domain(name)?)
}

/// Remove a domain (refused while it has users); returns its canonical
/// name.
pub fn remove_domain(dir: &Directory, name: &str) -> Result<String, AdminError> {
    let name = normalize_domain(name)?;
    dir.remove_domain(&name)?;
    Ok(name)
}

/// Change a domain's policy; returns its canonical name.
pub fn set_domain(
    dir: &Directory,
    name: &str,
    change: &PolicyChange,
) -> Result<String, AdminError> {
    let name = normalize_domain(name)?;
    dir.update_domain_policy(&name, |p| change.apply(p))?;
    Ok(name)
}

/// A domain as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSummary {
    /// The canonical name.
    pub name: String,
    /// How many users it has.
    pub users: usize,
    /// Its overrides of the config's `[policy]`.
    pub policy: PolicyOverrides,
}

/// Every domain with its number of users.
pub fn domains(dir: &Directory) -> Vec<DomainSummary> {
    let snap = dir.snapshot();
    snap.domains()
        .map(|d| DomainSummary {
            name: d.name.clone(),
            users: snap.users_in_domain(&d.name).count(),
            policy: d.policy,
        })
        .collect()
}

/// One user in full: what `postoffice user info` prints and the web page
/// of a user shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// The canonical address.
    pub address: String,
    /// Logins refused.
    pub disabled: bool,
    /// Where the mailbox is stored (for people: a path, a database row).
    pub mailbox: String,
    /// What the maildrop holds.
    pub usage: Usage,
    /// The policy in force (user, else domain, else config).
    pub policy: EffectivePolicy,
    /// The user's own overrides.
    pub overrides: PolicyOverrides,
    /// Quarantined messages.
    pub quarantined: usize,
    /// The address rules that deliver to this mailbox, one line each
    /// (aliases with their send-as right, catch-alls, domain aliases,
    /// sub-addressing, role addresses).
    pub address_rules: Vec<String>,
    /// The user's own sending limits (`None`: the configuration's).
    pub send_limit_overrides: postoffice_directory::SendLimitOverrides,
    /// The sending limits in force: messages per hour, recipients per day
    /// (0 = no limit).
    pub send_limits: (u32, u32),
    /// External addresses the user's mail is forwarded to.
    pub forward: Vec<String>,
    /// With forwarding: a copy stays in the maildrop.
    pub forward_keep_copy: bool,
    /// The vacation auto-reply, when set.
    pub vacation: Option<Vacation>,
}

/// Everything about one user.
pub fn user_info(
    config: &Config,
    dir: &Directory,
    store: &dyn MailStore,
    address: &str,
) -> Result<UserInfo, AdminError> {
    let address = normalize_address(address)?;
    let snap = dir.snapshot();
    let Some(u) = snap.user(&address) else {
        return Err(AdminError::NoSuchUser(address));
    };
    let policy = snap.effective(&address, &crate::policy_defaults(config));
    Ok(UserInfo {
        address: u.address.clone(),
        disabled: u.disabled,
        mailbox: store.location(&address)?,
        usage: store.usage(&address)?,
        policy,
        overrides: u.policy,
        quarantined: store.quarantine_list(&address)?.len(),
        address_rules: address_rules(config, &snap, &address),
        send_limit_overrides: u.send_limits,
        send_limits: u.send_limits.resolve(
            config.submission.max_messages_per_hour,
            config.submission.max_recipients_per_day,
        ),
        forward: u.forward.clone(),
        forward_keep_copy: u.forward_keep_copy,
        vacation: u.vacation.clone(),
    })
}

/// Change where a user's mail is forwarded: `targets` replace the stored
/// ones (`["off"]` or `["none"]` ends forwarding; empty keeps them), and
/// `keep_copy`, when given, says whether a copy stays in the maildrop.
/// Returns the canonical address.
pub fn set_forward(
    dir: &Directory,
    address: &str,
    targets: &[String],
    keep_copy: Option<bool>,
) -> Result<String, AdminError> {
    let address = normalize_address(address)?;
    let snap = dir.snapshot();
    let Some(u) = snap.user(&address) else {
        return Err(AdminError::NoSuchUser(address));
    };
    let off =
        matches!(targets, [t] if t.eq_ignore_ascii_case("off") || t.eq_ignore_ascii_case("none"));
    let new_targets: Vec<String> = if off {
        Vec::new()
    } else if targets.is_empty() {
        u.forward.clone()
    } else {
        let mut out = Vec::new();
        for t in targets {
            let n = normalize_address(t).map_err(|_| AdminError::InvalidValue {
                field: "forward",
                expected: "an address (local@domain) or \"off\"",
                value: shown(t),
            })?;
            if n == address {
                return Err(AdminError::InvalidValue {
                    field: "forward",
                    expected: "another address than the user's own",
                    value: shown(t),
                });
            }
            if crate::srs::is_srs_address(&n) {
                return Err(AdminError::InvalidValue {
                    field: "forward",
                    expected: "an ordinary address, not an SRS address",
                    value: shown(t),
                });
            }
            out.push(n);
        }
        out
    };
    let keep = keep_copy.unwrap_or(u.forward_keep_copy);
    dir.set_user_forward(&address, &new_targets, keep)?;
    Ok(address)
}

/// The longest vacation text accepted.
pub const MAX_VACATION_BYTES: usize = 64 * 1024;

/// Parse a vacation file: UTF-8 text; a first line `Subject: ...` (then
/// an optional blank line) sets the reply's subject, otherwise it is
/// "Auto: <original subject>".
pub fn parse_vacation(text: &[u8], until: Option<&str>) -> Result<Vacation, AdminError> {
    if text.len() > MAX_VACATION_BYTES {
        return Err(AdminError::InvalidValue {
            field: "vacation-file",
            expected: "at most 64 KiB of text",
            value: format!("{} octets", text.len()),
        });
    }
    let text = std::str::from_utf8(text).map_err(|e| AdminError::InvalidValue {
        field: "vacation-file",
        expected: "UTF-8 text",
        value: format!("invalid UTF-8 at octet {}", e.valid_up_to()),
    })?;
    if let Some(c) = text
        .chars()
        .find(|&c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(AdminError::InvalidValue {
            field: "vacation-file",
            expected: "text without control characters",
            value: format!("{:?}", c),
        });
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (subject, body) = match text.split_once('\n') {
        Some((first, rest)) if first.len() >= 8 && first[..8].eq_ignore_ascii_case("subject:") => {
            let rest = rest
                .strip_prefix("\r\n")
                .or_else(|| rest.strip_prefix('\n'))
                .unwrap_or(rest);
            (Some(first[8..].trim().to_string()), rest)
        }
        _ => (None, text),
    };
    if body.trim().is_empty() {
        return Err(AdminError::InvalidValue {
            field: "vacation-file",
            expected: "a non-empty reply text",
            value: String::new(),
        });
    }
    Ok(Vacation {
        subject: subject.filter(|s| !s.is_empty()),
        body: body.replace("\r\n", "\n"),
        until: until.map(parse_date).transpose()?,
    })
}

/// A `YYYY-MM-DD` date, checked.
fn parse_date(value: &str) -> Result<String, AdminError> {
    let v = value.trim();
    let bad = || AdminError::InvalidValue {
        field: "vacation-until",
        expected: "a date YYYY-MM-DD",
        value: shown(value),
    };
    let parts: Vec<&str> = v.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return Err(bad());
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return Err(bad());
    }
    let (Ok(_y), Ok(m), Ok(d)) = (y.parse::<u32>(), m.parse::<u32>(), d.parse::<u32>()) else {
        return Err(bad());
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    Ok(v.to_string())
}

/// Set a user's vacation reply from the text of a vacation file (see
/// [`parse_vacation`]), or with `text` `None` change only the end date of
/// the one set. Returns the canonical address.
pub fn set_vacation(
    dir: &Directory,
    address: &str,
    text: Option<&[u8]>,
    until: Option<&str>,
) -> Result<String, AdminError> {
    let address = normalize_address(address)?;
    let snap = dir.snapshot();
    let Some(u) = snap.user(&address) else {
        return Err(AdminError::NoSuchUser(address));
    };
    let v = match text {
        Some(t) => parse_vacation(t, until)?,
        None => {
            let Some(mut v) = u.vacation.clone() else {
                return Err(AdminError::InvalidValue {
                    field: "vacation-until",
                    expected: "a vacation set first (--vacation-file FILE)",
                    value: shown(until.unwrap_or("")),
                });
            };
            v.until = until.map(parse_date).transpose()?;
            v
        }
    };
    dir.set_user_vacation(&address, Some(v))?;
    Ok(address)
}

/// Turn a user's vacation reply off. Returns the canonical address.
pub fn vacation_off(dir: &Directory, address: &str) -> Result<String, AdminError> {
    let address = normalize_address(address)?;
    dir.set_user_vacation(&address, None)?;
    Ok(address)
}

/// The address rules that lead to `user`'s mailbox, in words.
fn address_rules(
    config: &Config,
    snap: &postoffice_directory::DirectoryData,
    user: &str,
) -> Vec<String> {
    let a = &config.addresses;
    let mut out = Vec::new();
    for (alias, send_as) in crate::addresses::aliases_of(a, snap, user) {
        if alias.starts_with('@') {
            out.push(format!(
                "catch-all {alias} (every other address of the domain)"
            ));
        } else if send_as {
            out.push(format!("alias {alias} (may send as it)"));
        } else {
            out.push(format!("alias {alias} (receive only: --no-send-as)"));
        }
    }
    let (local, domain) = user.rsplit_once('@').unwrap_or((user, ""));
    for (alias_domain, real) in snap.domain_aliases() {
        if real == domain {
            out.push(format!(
                "domain alias {local}@{alias_domain} (may send as it)"
            ));
        }
    }
    if let Some(sep) = a.subaddress_separator.chars().next() {
        out.push(format!(
            "sub-addresses {local}{sep}TAG@{domain} (Delivered-To: keeps the tag; may send as them)"
        ));
    }
    for d in snap.domains() {
        let targets = a.postmaster_of(&d.name);
        if targets
            .iter()
            .any(|t| normalize_address(t).is_ok_and(|t| t == user))
        {
            out.push(format!("role addresses postmaster@{0}, abuse@{0}", d.name));
        }
    }
    if let Some(extra) = config.submission.sender_aliases.get(user) {
        for x in extra {
            out.push(format!(
                "may also send as {x} ([submission.sender_aliases], sending only)"
            ));
        }
    }
    out
}

/// An alias as `postoffice alias list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasSummary {
    /// `local@domain`, or `@domain` for a catch-all.
    pub address: String,
    /// Its targets as stored.
    pub targets: Vec<String>,
    /// Whether the users it delivers to may send as it.
    pub send_as: bool,
    /// The local mailboxes it reaches in the end.
    pub mailboxes: Vec<String>,
    /// The external addresses it forwards to in the end.
    pub external: Vec<String>,
    /// What is wrong with it (a loop, a target leading nowhere...).
    pub problems: Vec<String>,
}

/// Add an alias, or targets to an existing one (`postoffice alias add`).
/// `address` is `local@domain` or `@domain` (the domain's catch-all);
/// targets are users, other aliases or external addresses. Refused: a
/// user's address, a domain that is not local, invalid targets, more than
/// `[addresses] max_alias_targets`, loops, expansions deeper than
/// `max_alias_depth`, local targets that lead nowhere.
pub fn add_alias(
    config: &Config,
    dir: &Directory,
    address: &str,
    targets: &[String],
    send_as: Option<bool>,
) -> Result<AliasSummary, AdminError> {
    let a = &config.addresses;
    let change = postoffice_directory::AliasChange {
        address,
        targets,
        send_as,
        max_targets: a.max_alias_targets,
    };
    let alias = dir.add_alias(&change, |data, alias| {
        crate::addresses::check_alias(a, data, alias).map_err(|reason| {
            postoffice_directory::Error::InvalidAlias {
                alias: alias.address.clone(),
                reason,
            }
        })
    })?;
    Ok(summarize(config, &dir.snapshot(), &alias))
}

/// Remove one target of an alias, or the whole alias; returns the
/// canonical address and what is left.
pub fn remove_alias(
    config: &Config,
    dir: &Directory,
    address: &str,
    target: Option<&str>,
) -> Result<(String, Option<AliasSummary>), AdminError> {
    let canonical = postoffice_directory::normalize_alias_address(address)?;
    let left = dir.remove_alias(&canonical, target)?;
    let snap = dir.snapshot();
    Ok((canonical, left.map(|a| summarize(config, &snap, &a))))
}

/// Every alias, or those of one domain (`postoffice alias list [DOMAIN]`).
pub fn aliases(
    config: &Config,
    dir: &Directory,
    domain: Option<&str>,
) -> Result<Vec<AliasSummary>, AdminError> {
    let domain = domain.map(normalize_domain).transpose()?;
    let snap = dir.snapshot();
    Ok(snap
        .aliases()
        .filter(|a| domain.as_deref().is_none_or(|d| a.domain() == d))
        .map(|a| summarize(config, &snap, a))
        .collect())
}

fn summarize(
    config: &Config,
    snap: &postoffice_directory::DirectoryData,
    alias: &postoffice_directory::Alias,
) -> AliasSummary {
    let a = &config.addresses;
    let mut problems = Vec::new();
    if let Err(p) = crate::addresses::check_alias(a, snap, alias) {
        problems.push(p);
    }
    let (mailboxes, external) = match crate::addresses::resolve_alias(a, snap, alias) {
        Ok(r) => (r.mailboxes(), r.external),
        Err(_) => (Vec::new(), Vec::new()),
    };
    AliasSummary {
        address: alias.address.clone(),
        targets: alias.targets.clone(),
        send_as: alias.send_as && !alias.is_catch_all(),
        mailboxes,
        external,
        problems,
    }
}

/// Make `name` a domain alias of the local domain `target`
/// (`postoffice domain alias`); returns both canonical names.
pub fn add_domain_alias(
    dir: &Directory,
    name: &str,
    target: &str,
) -> Result<(String, String), AdminError> {
    Ok(dir.add_domain_alias(name, target)?)
}

/// Remove a domain alias; returns its canonical name.
pub fn remove_domain_alias(dir: &Directory, name: &str) -> Result<String, AdminError> {
    Ok(dir.remove_domain_alias(name)?)
}

/// Add an administrator of the web interface; returns the canonical name.
pub fn add_admin(dir: &Directory, name: &str, password: &str) -> Result<String, AdminError> {
    let name = normalize_admin_name(name)?;
    check_password(password)?;
    Ok(dir.add_admin(&name, &hash_password(password.as_bytes())?)?)
}

/// Change an administrator's password; returns the canonical name.
pub fn set_admin_password(
    dir: &Directory,
    name: &str,
    password: &str,
) -> Result<String, AdminError> {
    let name = normalize_admin_name(name)?;
    check_password(password)?;
    dir.set_admin_password(&name, &hash_password(password.as_bytes())?)?;
    Ok(name)
}

/// Remove an administrator; returns the canonical name.
pub fn remove_admin(dir: &Directory, name: &str) -> Result<String, AdminError> {
    let name = normalize_admin_name(name)?;
    dir.remove_admin(&name)?;
    Ok(name)
}

/// A quarantined message as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The user it was for.
    pub address: String,
    /// Its UID (what release and delete take).
    pub uid: String,
    /// Size in octets.
    pub size: u64,
    /// When it arrived.
    pub received: SystemTime,
    /// Its Subject: (one printable line, at most 200 characters).
    pub subject: String,
    /// Its From: (likewise).
    pub from: String,
    /// Why it was quarantined: the verdict of its `X-Postoffice-Verdict:`.
    pub verdict: String,
    /// Why, for people: the stages that failed, read from our own verdict
    /// headers (`virus Eicar found`, `spam score 15.00`, `DMARC failed`...).
    pub reason: String,
}

/// How much of a message's head is read for the listing.
const LIST_HEAD: u64 = 16 * 1024;
/// How much of the header section [`quarantine_headers`] shows.
const MAX_HEADERS: u64 = 256 * 1024;

/// The header fields of a header section (unfolded), each name and value
/// as it was (lossy UTF-8). Stops at the first empty line.
pub fn header_fields(head: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(head);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = fields.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            fields.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    fields
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map_or("", |(_, v)| v.as_str())
}

/// A user's quarantined messages, oldest first.
pub fn quarantine_list(
    store: &dyn MailStore,
    address: &str,
) -> Result<Vec<Quarantined>, AdminError> {
    let address = normalize_address(address)?;
    let mut out = Vec::new();
    for m in store.quarantine_list(&address)? {
        let mut head = Vec::new();
        match store.quarantine_read(&address, &m.uid) {
            Ok(r) => {
                r.take(LIST_HEAD)
                    .read_to_end(&mut head)
                    .map_err(|e| StoreError::Io {
                        context: format!("reading quarantined message {}", m.uid),
                        source: e,
                    })?;
            }
            // Released or deleted meanwhile.
            Err(StoreError::NoSuchUid(_)) => continue,
            Err(e) => return Err(e.into()),
        }
        let fields = header_fields(&head);
        let line = |s: &str| postoffice_common::text::printable(s, 200);
        let verdict = field(&fields, postoffice_filter::VERDICT_HEADER);
        let reason = line(&quarantine_reason(verdict, field(&fields, "x-spam-score")));
        out.push(Quarantined {
            address: address.clone(),
            uid: m.uid.as_str().to_string(),
            size: m.size,
            received: m.received,
            subject: line(field(&fields, "subject")),
            from: line(field(&fields, "from")),
            verdict: line(verdict.split(';').next().unwrap_or("")),
            reason,
        });
    }
    Ok(out)
}

/// Why a message was quarantined, in words, from the value of our
/// `X-Postoffice-Verdict:` (`quarantine; dnsbl=.. spf=fail .. virus=found:X
/// spam=quarantine`) and `X-Spam-Score:`. Both are ours: the delivery
/// prepends them and removes forged copies. Unknown forms give the
/// verdict's stage results as they are.
pub fn quarantine_reason(verdict: &str, spam_score: &str) -> String {
    let results = verdict.split_once(';').map_or("", |(_, r)| r);
    let mut reasons = Vec::new();
    for token in results.split_whitespace() {
        let Some((stage, result)) = token.split_once('=') else {
            continue;
        };
        match (stage, result) {
            ("virus", r) if r.starts_with("found:") => {
                reasons.push(format!("virus {} found", &r["found:".len()..]));
            }
            ("spam", "quarantine") if !spam_score.trim().is_empty() => {
                reasons.push(format!("spam score {}", spam_score.trim()));
            }
            ("spam", "quarantine") => reasons.push("spam".to_string()),
            ("dmarc", "fail") => reasons.push("DMARC check failed".to_string()),
            ("spf", "fail") => reasons.push("SPF check failed".to_string()),
            ("dkim", "fail") => reasons.push("no valid DKIM signature".to_string()),
            ("dnsbl", r) if r.starts_with("listed:") => {
                reasons.push(format!("sender's IP listed in {}", &r["listed:".len()..]));
            }
            _ => {}
        }
    }
    if reasons.is_empty() {
        let rest = results.trim();
        return if rest.is_empty() {
            "held by the verification checks".to_string()
        } else {
            format!("verification checks: {rest}")
        };
    }
    reasons.join("; ")
}

/// The quarantined messages of every user, oldest first, at most `limit`
/// (the newest are dropped first), with the total count.
pub fn quarantine_all(
    dir: &Directory,
    store: &dyn MailStore,
    limit: usize,
) -> Result<(Vec<Quarantined>, usize), AdminError> {
    let mut all = Vec::new();
    for u in dir.snapshot().users() {
        all.extend(quarantine_list(store, &u.address)?);
    }
    all.sort_by(|a, b| (a.received, &a.address).cmp(&(b.received, &b.address)));
    let total = all.len();
    all.truncate(limit);
    Ok((all, total))
}

/// A quarantined message's header section (at most 256 KiB, lossy
/// UTF-8), for an administrator or its user to judge it by.
pub fn quarantine_headers(
    store: &dyn MailStore,
    address: &str,
    uid: &str,
) -> Result<String, AdminError> {
    let address = normalize_address(address)?;
    let mut head = Vec::new();
    store
        .quarantine_read(&address, uid)?
        .take(MAX_HEADERS)
        .read_to_end(&mut head)
        .map_err(|e| StoreError::Io {
            context: format!("reading quarantined message {uid}"),
            source: e,
        })?;
    let text = String::from_utf8_lossy(&head);
    let end = text
        .find("\r\n\r\n")
        .or_else(|| text.find("\n\n"))
        .unwrap_or(text.len());
    Ok(text[..end].to_string())
}

/// Move a quarantined message into the user's maildrop.
pub fn quarantine_release(
    store: &dyn MailStore,
    address: &str,
    uid: &str,
) -> Result<String, AdminError> {
    let address = normalize_address(address)?;
    store.quarantine_release(&address, uid)?;
    Ok(address)
}

/// Delete a quarantined message.
pub fn quarantine_delete(
    store: &dyn MailStore,
    address: &str,
    uid: &str,
) -> Result<String, AdminError> {
    let address = normalize_address(address)?;
    store.quarantine_delete(&address, uid)?;
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vacation_files() {
        let v = parse_vacation(
            b"Subject: Away\n\nBack Monday.\r\nBye\n",
            Some("2027-01-02"),
        )
        .unwrap();
        assert_eq!(v.subject.as_deref(), Some("Away"));
        assert_eq!(v.body, "Back Monday.\nBye\n");
        assert_eq!(v.until.as_deref(), Some("2027-01-02"));
        let v = parse_vacation("Bin weg – à bientôt\n".as_bytes(), None).unwrap();
        assert_eq!(v.subject, None);
        let e = parse_vacation(b"Abwesend bis M\xe4rz\n", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("UTF-8") && e.contains("octet 14"), "{e}");
        let e = parse_vacation(b"Subject: x\n\n  \n", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("non-empty"), "{e}");
        let e = parse_vacation(b"bell \x07\n", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("control"), "{e}");
        for bad in ["2027-13-01", "27-01-01", "tomorrow", "2027-01-1"] {
            let e = parse_vacation(b"x", Some(bad)).unwrap_err().to_string();
            assert!(e.contains("YYYY-MM-DD"), "{bad}: {e}");
        }
        assert!(parse_vacation(&vec![b'a'; MAX_VACATION_BYTES + 1], None).is_err());
    }

    #[test]
    fn forward_targets() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Directory::open(tmp.path()).unwrap();
        dir.add_domain("example.test").unwrap();
        dir.add_user("alice@example.test", &hash_password(b"x").unwrap())
            .unwrap();
        let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (bad, why) in [
            ("not an address", "an address"),
            ("Alice@Example.test", "another address"),
            ("SRS0=abcd=AB=x.test=y@example.test", "not an SRS"),
        ] {
            let e = set_forward(&dir, "alice@example.test", &t(&[bad]), None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        set_forward(&dir, "alice@example.test", &t(&["a@far.test"]), Some(false)).unwrap();
        // --keep-copy alone keeps the targets.
        set_forward(&dir, "alice@example.test", &[], Some(true)).unwrap();
        let s = dir.snapshot();
        let u = s.user("alice@example.test").unwrap();
        assert_eq!(u.forward, ["a@far.test"]);
        assert!(u.forward_keep_copy);
        set_forward(&dir, "alice@example.test", &t(&["off"]), None).unwrap();
        assert!(
            dir.snapshot()
                .user("alice@example.test")
                .unwrap()
                .forward
                .is_empty()
        );
        assert!(matches!(
            set_forward(&dir, "nobody@example.test", &t(&["a@far.test"]), None),
            Err(AdminError::NoSuchUser(_))
        ));
    }

    #[test]
    fn policy_text_forms() {
        let c = PolicyChange::parse(&PolicyText {
            retention_days: Some("never"),
            login_delay: Some("inherit"),
            quota_bytes: Some(" 1000 "),
            quota_messages: Some(""),
        })
        .unwrap();
        assert_eq!(c.retention_days, Change::Set(Retention::Never));
        assert_eq!(c.login_delay_secs, Change::Inherit);
        assert_eq!(c.quota_bytes, Change::Set(1000));
        assert_eq!(c.quota_messages, Change::Keep);
        let mut p = PolicyOverrides {
            login_delay_secs: Some(60),
            quota_messages: Some(5),
            ..PolicyOverrides::default()
        };
        c.apply(&mut p);
        assert_eq!(p.retention_days, Some(Retention::Never));
        assert_eq!(p.login_delay_secs, None);
        assert_eq!(p.quota_bytes, Some(1000));
        assert_eq!(p.quota_messages, Some(5));
        assert!(
            PolicyChange::parse(&PolicyText::default())
                .unwrap()
                .is_empty()
        );
        for bad in [
            PolicyText {
                retention_days: Some("forever"),
                ..PolicyText::default()
            },
            PolicyText {
                quota_bytes: Some("-1"),
                ..PolicyText::default()
            },
            PolicyText {
                login_delay: Some("1e3"),
                ..PolicyText::default()
            },
        ] {
            let e = PolicyChange::parse(&bad).unwrap_err().to_string();
            assert!(e.contains("must be"), "{e}");
        }
    }

    #[test]
    fn quarantine_reasons() {
        let v = "quarantine; dnsbl=none spf=pass dkim=none dmarc=pass virus=found:Eicar-Test-Signature spam=quarantine";
        assert_eq!(
            quarantine_reason(v, " 15.00 "),
            "virus Eicar-Test-Signature found; spam score 15.00"
        );
        assert_eq!(
            quarantine_reason(
                "quarantine; dnsbl=off spf=fail dkim=fail dmarc=fail virus=off",
                ""
            ),
            "SPF check failed; no valid DKIM signature; DMARC check failed"
        );
        assert_eq!(quarantine_reason("", ""), "held by the verification checks");
    }

    #[test]
    fn passwords() {
        assert!(check_password("secret").is_ok());
        assert!(check_password("").is_err());
        assert!(check_password("a\nb").is_err());
        assert!(check_password(&"x".repeat(2000)).is_err());
        let g = generate_password();
        assert_eq!(g.len(), 20);
        assert!(g.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn users_domains_and_quarantine() {
        let tmp = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: tmp.path().to_path_buf(),
            hostname: "mx.test".into(),
            ..Config::default()
        };
        let dir = Directory::open(tmp.path()).unwrap();
        let store = crate::app::maildir(&config);
        let added = add_user(&dir, "Alice@Example.test", "pw").unwrap();
        assert_eq!(added.address, "alice@example.test");
        assert_eq!(added.domain_added.as_deref(), Some("example.test"));
        let again = add_user(&dir, "bob@example.test", "pw").unwrap();
        assert_eq!(again.domain_added, None);
        assert!(add_user(&dir, "bob@example.test", "pw").is_err());
        let change = PolicyChange::parse(&PolicyText {
            quota_bytes: Some("5000"),
            ..PolicyText::default()
        })
        .unwrap();
        set_user(&dir, "alice@example.test", &change, Some(true)).unwrap();
        let info = user_info(&config, &dir, &store, "alice@example.test").unwrap();
        assert!(info.disabled);
        assert_eq!(info.policy.quota_bytes, Some(5000));
        assert_eq!(info.usage, Usage::default());
        assert!(matches!(
            user_info(&config, &dir, &store, "nobody@example.test"),
            Err(AdminError::NoSuchUser(_))
        ));
        let d = domains(&dir);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].users, 2);
        assert!(remove_domain(&dir, "example.test").is_err());

        let msg = b"From: x@y.test\r\nSubject: held\r\n  folded\r\nX-Postoffice-Verdict: quarantine; spf=fail\r\n\r\nbody\r\n";
        store
            .deliver_quarantine("alice@example.test", &mut &msg[..])
            .unwrap();
        let list = quarantine_list(&store, "alice@example.test").unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].subject, "held folded");
        assert_eq!(list[0].from, "x@y.test");
        assert_eq!(list[0].verdict, "quarantine");
        assert_eq!(list[0].reason, "SPF check failed");
        let (all, total) = quarantine_all(&dir, &store, 10).unwrap();
        assert_eq!((all.len(), total), (1, 1));
        let headers = quarantine_headers(&store, "alice@example.test", &list[0].uid).unwrap();
        assert!(headers.starts_with("From: x@y.test\r\n"), "{headers}");
        assert!(!headers.contains("body"), "{headers}");
        quarantine_release(&store, "alice@example.test", &list[0].uid).unwrap();
        assert_eq!(store.usage("alice@example.test").unwrap().messages, 1);
        assert!(
            quarantine_list(&store, "alice@example.test")
                .unwrap()
                .is_empty()
        );

        let removed = remove_user(&dir, &store, "alice@example.test", true).unwrap();
        assert_eq!(removed.kept, None);
        let removed = remove_user(&dir, &store, "bob@example.test", false).unwrap();
        assert!(removed.kept.is_some());
        assert_eq!(remove_domain(&dir, "EXAMPLE.test").unwrap(), "example.test");

        assert_eq!(add_admin(&dir, "Root", "pw").unwrap(), "root");
        assert!(add_admin(&dir, "a@b.test", "pw").is_err());
        set_admin_password(&dir, "root", "pw2").unwrap();
        remove_admin(&dir, "root").unwrap();
    }
}
