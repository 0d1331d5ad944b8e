//! Per-user and per-domain policy values and how they combine.
//!
//! Each setting is looked up user first, then domain, then the server-wide
//! defaults from the configuration file, so an administrator can set a
//! domain-wide rule and make exceptions for single users.

use serde::{Deserialize, Serialize};

/// How long messages may stay on the server after they were first seen.
///
/// A separate "never" value exists (rather than just `Option<u32>`) so that
/// a user override can say "keep forever" even when the domain sets a limit.
/// In `directory.toml` it is written as a number of days or `"never"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RetentionRepr", into = "RetentionRepr")]
pub enum Retention {
    /// Delete messages this many days after they were first retrieved.
    /// `0` means "delete right after retrieval" (POP3 `EXPIRE 0`).
    Days(u32),
    /// Never expire messages.
    Never,
}

impl Retention {
    /// The value as the effective-policy representation: `None` = never.
    pub fn days(self) -> Option<u32> {
        match self {
            Retention::Days(d) => Some(d),
            Retention::Never => None,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RetentionRepr {
    Days(u32),
    Word(String),
}

impl TryFrom<RetentionRepr> for Retention {
    type Error = String;

    fn try_from(r: RetentionRepr) -> Result<Self, String> {
        match r {
            RetentionRepr::Days(d) => Ok(Retention::Days(d)),
            RetentionRepr::Word(w) if w.eq_ignore_ascii_case("never") => Ok(Retention::Never),
            RetentionRepr::Word(w) => Err(format!(
                "retention_days must be a number of days or \"never\", not {w:?}"
            )),
        }
    }
}

impl From<Retention> for RetentionRepr {
    fn from(r: Retention) -> Self {
        match r {
            Retention::Days(d) => RetentionRepr::Days(d),
            Retention::Never => RetentionRepr::Word("never".into()),
        }
    }
}

/// Optional overrides stored on a user or a domain. `None` means "inherit".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyOverrides {
    /// Message retention.
    pub retention_days: Option<Retention>,
    /// Minimum seconds between logins (POP3 `LOGIN-DELAY`); 0 = none.
    pub login_delay_secs: Option<u32>,
    /// Mailbox size limit in bytes; `Some(0)` = explicitly unlimited.
    pub quota_bytes: Option<u64>,
    /// Mailbox message-count limit; `Some(0)` = explicitly unlimited.
    pub quota_messages: Option<u64>,
}

/// Overrides for one user.
pub type UserPolicy = PolicyOverrides;

/// A user's own outbound sending limits, overriding `[submission]
/// max_messages_per_hour` and `max_recipients_per_day`. `None` inherits
/// the configuration; `Some(0)` means no limit for this user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendLimitOverrides {
    /// Messages per hour.
    pub max_messages_per_hour: Option<u32>,
    /// Recipients per 24 hours.
    pub max_recipients_per_day: Option<u32>,
}

impl SendLimitOverrides {
    /// The limits in force: the override, else the configuration's value.
    pub fn resolve(&self, config_per_hour: u32, config_rcpts_per_day: u32) -> (u32, u32) {
        (
            self.max_messages_per_hour.unwrap_or(config_per_hour),
            self.max_recipients_per_day.unwrap_or(config_rcpts_per_day),
        )
    }
}
/// Overrides for one domain.
pub type DomainPolicy = PolicyOverrides;

impl PolicyOverrides {
    /// Refuses values that the TOML file cannot hold (TOML integers are
    /// signed 64-bit), so that a mutation fails before anything is written.
    pub(crate) fn validate(&self) -> crate::Result<()> {
        for (name, v) in [
            ("quota_bytes", self.quota_bytes),
            ("quota_messages", self.quota_messages),
        ] {
            if v.is_some_and(|v| i64::try_from(v).is_err()) {
                return Err(crate::Error::InvalidPolicy(format!(
                    "{name} is larger than {}; use 0 for unlimited",
                    i64::MAX
                )));
            }
        }
        Ok(())
    }
}

/// Server-wide defaults, from the server configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyDefaults {
    /// Retention in days; `None` = never expire.
    pub retention_days: Option<u32>,
    /// Minimum seconds between logins; 0 = none.
    pub login_delay_secs: u32,
    /// Size quota in bytes; `None` = unlimited.
    pub quota_bytes: Option<u64>,
    /// Message-count quota; `None` = unlimited.
    pub quota_messages: Option<u64>,
}

/// The policy that applies to one user after inheritance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EffectivePolicy {
    /// Retention in days; `None` = never expire.
    pub retention_days: Option<u32>,
    /// Minimum seconds between logins; 0 = none.
    pub login_delay_secs: u32,
    /// Size quota in bytes; `None` = unlimited.
    pub quota_bytes: Option<u64>,
    /// Message-count quota; `None` = unlimited.
    pub quota_messages: Option<u64>,
}

impl EffectivePolicy {
    /// Combines user overrides, domain overrides and defaults, in that order
    /// of precedence. A quota of 0 at any level means unlimited.
    pub fn resolve(
        user: &PolicyOverrides,
        domain: &PolicyOverrides,
        defaults: &PolicyDefaults,
    ) -> Self {
        let nonzero = |v: u64| (v != 0).then_some(v);
        EffectivePolicy {
            retention_days: match user.retention_days.or(domain.retention_days) {
                Some(r) => r.days(),
                None => defaults.retention_days,
            },
            login_delay_secs: user
                .login_delay_secs
                .or(domain.login_delay_secs)
                .unwrap_or(defaults.login_delay_secs),
            quota_bytes: match user.quota_bytes.or(domain.quota_bytes) {
                Some(q) => nonzero(q),
                None => defaults.quota_bytes.and_then(nonzero),
            },
            quota_messages: match user.quota_messages.or(domain.quota_messages) {
                Some(q) => nonzero(q),
                None => defaults.quota_messages.and_then(nonzero),
            },
        }
    }
}

/// What to advertise in the pre-login POP3 `EXPIRE` capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpireSummary {
    /// Shortest retention of any user; `None` = every user is `NEVER`.
    pub min_days: Option<u32>,
    /// Whether users differ, i.e. whether to append `USER`.
    pub varies: bool,
}

/// What to advertise in the pre-login POP3 `LOGIN-DELAY` capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginDelaySummary {
    /// Shortest login delay of any user.
    pub min_secs: u32,
    /// Whether users differ, i.e. whether to append `USER`.
    pub varies: bool,
}
