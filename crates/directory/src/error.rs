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
