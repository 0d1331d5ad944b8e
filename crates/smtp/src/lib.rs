//! Sans-IO SMTP for postoffice (RFC 5321 with ESMTP extensions).
//!
//! - [`server::ServerSession`]: the receiving side's state machine.
//! - [`client::ClientSession`]: the sending side's state machine (one
//!   transaction to one server), with [`client::dot_stuff`].
//! - [`data::DataDecoder`]: DATA content (dot-unstuffing, the exact
//!   `<CRLF>.<CRLF>` terminator, size limit, bare-newline detection).
//!
//! Command parsing is `smtp-proto`'s; the states, replies and limits are ours.
#![forbid(unsafe_code)]

pub mod client;
pub mod data;
pub mod server;

pub use server::{Action, Envelope, ServerSession, SessionConfig, Verdict};
