//! The crate's error type.
//!
//! Every message is meant to be shown to an administrator as-is (the CLI
//! prints it verbatim), so each one says what went wrong *and* what to do
//! about it.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while managing the directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A mail address failed validation.
    #[error("invalid address {}: {reason}; use a plain address like alice@example.org", Shown(.address))]
    InvalidAddress {
        /// The rejected input (possibly very long; shown truncated).
        address: String,
        /// Which rule it broke.
        reason: String,
    },

    /// A domain name failed validation.
    #[error("invalid domain name {}: {reason}; use a plain host name like example.org", Shown(.name))]
    InvalidDomain {
        /// The rejected input (possibly very long; shown truncated).
        name: String,
        /// Which rule it broke.
        reason: String,
    },

    /// An administrator name failed validation.
    #[error("invalid administrator name {}: {reason}", Shown(.name))]
    InvalidAdminName {
        /// The rejected input (possibly very long; shown truncated).
        name: String,
        /// Which rule it broke.
        reason: String,
    },

    /// `add_admin` for a name that is already taken.
    #[error("administrator {0} already exists; change its password instead of adding it again")]
    AdminExists(String),

    /// An operation named an administrator that is not in the directory.
    #[error("administrator {0} does not exist; check the spelling or add it first")]
    AdminNotFound(String),

    /// `add_domain` for a domain that is already listed.
    #[error("domain {0} already exists; nothing to do")]
    DomainExists(String),

    /// An operation named a domain that is not in the directory.
    #[error("domain {0} does not exist; check the spelling or add the domain first")]
    DomainNotFound(String),

    /// `remove_domain` while users still belong to the domain.
    #[error("domain {name} still has {count} user(s); remove them first")]
    DomainHasUsers {
        /// The domain that was to be removed.
        name: String,
        /// How many users still live in it.
        count: usize,
    },

    /// `add_user` for an address that already exists.
    #[error("user {0} already exists; change its password instead of adding it again")]
    UserExists(String),

    /// An operation named a user that is not in the directory.
    #[error("user {0} does not exist; check the spelling or add the user first")]
    UserNotFound(String),

    /// An alias was to be added with a user's address, or a user with an
    /// alias's: users and aliases share one namespace.
    #[error(
        "{0} is a user; an alias cannot have a user's address (remove the user first, or pick another address)"
    )]
    AddressIsUser(String),

    /// `add_user` for an address that is an alias.
    #[error(
        "{0} is an alias; remove it with `postoffice alias del {0}` before adding a user with that address"
    )]
    AddressIsAlias(String),

    /// An operation named an alias that does not exist.
    #[error("alias {0} does not exist; see `postoffice alias list`")]
    AliasNotFound(String),

    /// `alias del ADDR TARGET` with a target the alias does not have.
    #[error("alias {alias} has no target {target}; see `postoffice alias list`")]
    AliasTargetNotFound {
        /// The alias.
        alias: String,
        /// The target that was to be removed.
        target: String,
    },

    /// An alias with more targets than `[addresses] max_alias_targets`.
    #[error(
        "alias {alias} would have {count} targets, more than the limit of {max}; raise [addresses] max_alias_targets or split the list into nested aliases"
    )]
    TooManyTargets {
        /// The alias.
        alias: String,
        /// How many targets it would have.
        count: usize,
        /// The configured limit.
        max: usize,
    },

    /// An alias that cannot be stored for another reason (a loop, an
    /// expansion that is too deep...), said in full.
    #[error("alias {alias}: {reason}")]
    InvalidAlias {
        /// The alias.
        alias: String,
        /// What is wrong, and what to do.
        reason: String,
    },

    /// A domain alias named like a real domain, or a real domain named like
    /// a domain alias.
    #[error("{0} is already a domain alias; remove it with `postoffice domain unalias {0}` first")]
    DomainIsAlias(String),

    /// An operation named a domain alias that does not exist.
    #[error("{0} is not a domain alias; see `postoffice domain list`")]
    DomainAliasNotFound(String),

    /// `remove_domain` while aliases or domain aliases still use the domain.
    #[error("domain {name} still has {count} alias(es) or domain alias(es); remove them first")]
    DomainHasAliases {
        /// The domain that was to be removed.
        name: String,
        /// How many aliases and domain aliases use it.
        count: usize,
    },

    /// A stored or supplied password hash is in a format this server cannot
    /// verify.
    #[error(
        "unsupported password hash ({reason}); supply an argon2id PHC string, \
         {{SHA512-CRYPT}}$6$... or {{SHA256-CRYPT}}$5$..., or set a new password"
    )]
    UnsupportedHash {
        /// Why the hash was rejected.
        reason: String,
    },

    /// Hashing a new password failed (practically only on RNG failure).
    #[error(
        "could not hash the password: {0}; check that the system random number generator works"
    )]
    Hash(String),

    /// A policy value cannot be stored.
    #[error("invalid policy: {0}")]
    InvalidPolicy(String),

    /// A file-system operation failed.
    #[error("could not {action} {}: {source}; check that the path exists and is writable by this user", .path.display())]
    Io {
        /// What we were doing, as a verb phrase ("read", "rename ... over").
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// `directory.toml` exists but is not a valid directory file.
    #[error(
        "{} is not a valid directory file: {message}; fix it by hand \
         (a running server keeps using the last version it could read)",
        .path.display()
    )]
    Parse {
        /// The file that failed to parse.
        path: PathBuf,
        /// What is wrong with it, including line and column when known.
        message: String,
    },

    /// Serialising the directory failed (should not happen: values are
    /// validated before they are stored).
    #[error("could not serialise the directory: {0}; this is a bug, please report it")]
    Serialize(#[from] toml::ser::Error),

    /// The shared directory (in the database of `[storage]`) could not be
    /// read or written. Temporary: the server keeps the last version it
    /// read; a CLI command can be run again.
    #[error(
        "could not {action} the directory in {place}: {message}; check that the database is running and reachable, then try again"
    )]
    Shared {
        /// What we were doing ("read", "update").
        action: &'static str,
        /// Where the directory is (the database, its password hidden).
        place: String,
        /// The database's error.
        message: String,
    },

    /// The shared directory holds a document that does not parse.
    #[error(
        "the directory in {place} is not valid: {message}; this is a bug or a hand edit, restore it from a backup"
    )]
    SharedParse {
        /// Where the directory is.
        place: String,
        /// What is wrong with it.
        message: String,
    },

    /// A passwd file given to the importer could not be read.
    #[error("could not read the passwd file: {0}; check the path and permissions")]
    ImportRead(#[source] io::Error),
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Displays user input quoted, escaped and truncated so that a 10 KB or
/// control-character-laden name cannot flood or corrupt a log line.
struct Shown<'a>(&'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 80;
        let mut end = self.0.len().min(MAX);
        while !self.0.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "\"{}", self.0[..end].escape_debug())?;
        if end < self.0.len() {
            write!(f, "...\" ({} bytes)", self.0.len())
        } else {
            f.write_str("\"")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_and_hostile_input_is_truncated_and_escaped_in_messages() {
        let e = Error::InvalidAddress {
            address: format!("\0{}", "a".repeat(10_000)),
            reason: "x".into(),
        };
        let msg = e.to_string();
        assert!(msg.len() < 300, "{msg}");
        assert!(msg.contains("\\0"), "{msg}");
        assert!(msg.contains("10001 bytes"), "{msg}");
    }
}
