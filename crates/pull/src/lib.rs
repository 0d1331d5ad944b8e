//! Mail from other POP3 servers into postoffice maildrops.
//!
//! Two jobs, both built on the POP3 client of `postoffice-fetch` and the
//! storage traits of `postoffice-store`:
//!
//! - [`import`]: **migration keeping UIDLs** (`postoffice import`). Every
//!   message of a user's maildrop on another server (over POP3, or read
//!   straight from a Dovecot Maildir with its `dovecot-uidlist`, see
//!   [`dovecot`]) is copied into the user's postoffice maildrop with the
//!   unique ID that server reported for it
//!   ([`MailStore::import`](postoffice_store::MailStore::import)). A client
//!   that left mail on the old server then sees the same UIDLs here and
//!   downloads nothing again. The import holds the maildrop's session lock
//!   (users get `[IN-USE]` meanwhile, and two imports cannot race), skips
//!   every UID the maildrop already has, and stores each message durably
//!   before the next: an interrupted import is resumed by running it again,
//!   and running it twice changes nothing. Messages arrive byte for byte as
//!   the old server sent them (CRLF line ends, as POP3 carries them).
//! - [`jobs`]: **server-run fetch jobs** (`postoffice user fetch add`): a
//!   user's accounts elsewhere, pulled periodically by the server into
//!   their maildrop through the same verification pipeline as SMTP mail,
//!   with `postoffice fetch`'s state file and its never-lost/never-twice
//!   order of events.
#![forbid(unsafe_code)]

pub mod dovecot;
pub mod import;
pub mod jobs;

pub use import::{ImportError, ImportProgress, ImportReport, Pop3Source};
