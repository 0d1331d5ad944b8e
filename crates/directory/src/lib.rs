//! Domains, users, aliases and domain aliases, web administrators, password
//! hashes, per-user/per-domain policy and login-failure accounting for the
//! postoffice mail server.
//!
//! The directory lives in one human-readable file,
//! `<data_dir>/directory.toml`, so that it can be inspected, backed up and
//! (carefully) edited by hand. The server holds a [`Directory`] and calls
//! [`Directory::snapshot`] per login; the CLI mutates the same file through
//! its own `Directory`, and the server notices the change on its next
//! snapshot without a restart.
//!
//! Passwords are hashed with argon2id; SHA-crypt and Argon2 hashes imported
//! from Dovecot are verified as they are, so a migration needs no password
//! resets. The [`throttle`] module slows down and locks out password
//! guessing.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod address;
mod alias;
mod data;
mod directory;
mod error;
mod import;
mod password;
mod policy;
pub mod throttle;

pub use address::{
    MAX_ADDRESS_LEN, MAX_ADMIN_NAME_LEN, MAX_DOMAIN_LEN, MAX_LABEL_LEN, MAX_LOCAL_LEN,
    normalize_address, normalize_admin_name, normalize_domain,
};
pub use alias::{Alias, AliasChange, normalize_alias_address};
pub use data::{
    Admin, AdminAuthOutcome, AuthOutcome, DirectoryData, Domain, User, UserRef, Vacation,
};
pub use directory::{DIRECTORY_FILE, Directory, LOCK_FILE, SharedDocument};
pub use error::{Error, Result};
pub use import::{ImportOptions, ImportReport};
pub use password::{
    MAX_ARGON2_M_COST, MAX_ARGON2_P_COST, MAX_ARGON2_T_COST, MAX_SHA_CRYPT_ROUNDS, dummy_verify,
    hash_password, prepare_dummy_hash, validate_hash, verify_password,
};
pub use policy::{
    DomainPolicy, EffectivePolicy, ExpireSummary, LoginDelaySummary, PolicyDefaults,
    PolicyOverrides, Retention, SendLimitOverrides, UserPolicy,
};
pub use throttle::{FailureState, LoginThrottle, ThrottleConfig, Verdict, net_key};

#[cfg(test)]
mod tests;
