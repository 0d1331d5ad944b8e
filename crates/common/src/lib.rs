//! The mechanisms every postoffice crate shares, each written once.
//!
//! The design notes give the application core (`postoffice-core`) these
//! mechanisms; they live one layer below it so that the crates the core is
//! built on (the store) and the ones beside it (the queue, the fetch
//! client) can use them without a dependency cycle. Nothing here knows
//! about mail protocols or users:
//!
//! - [`durable`]: write a file so that a crash leaves the old version or the
//!   new one (temporary file, fsync, rename, fsync of the directory), with
//!   private modes whatever the umask.
//! - [`content`]: message content in memory or in an anonymous spool file,
//!   readable many times, and messages assembled from pieces without copying.
//! - [`date`]: RFC 5322 and mbox dates.
//! - [`maildir_name`]: unique Maildir file names.
//! - [`ids`]: unique IDs for transactions and queue entries.
//! - [`resolver`] (feature `dns`): the hickory resolver from `[dns]`.
//! - [`tls_client`] (feature `tls`): the rustls client configuration and
//!   certificate verifier.
//! - [`text`]: making untrusted text safe for a log line or a terminal.
//! - [`unix`]: the real user running the process.
//! - [`privileges`] (feature `privileges`): giving up root for a system
//!   user, and the data directory that user must own.
#![forbid(unsafe_code)]

pub mod content;
pub mod date;
pub mod durable;
pub mod ids;
pub mod maildir_name;
#[cfg(feature = "privileges")]
pub mod privileges;
#[cfg(feature = "dns")]
pub mod resolver;
pub mod text;
#[cfg(feature = "tls")]
pub mod tls_client;
pub mod unix;
