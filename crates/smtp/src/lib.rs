//! Sans-IO SMTP for postoffice (RFC 5321 with ESMTP extensions).
//!
//! - [`server::ServerSession`]: the receiving side's state machine.
//! - [`data::DataDecoder`]: DATA content (dot-unstuffing, the exact
//!   `<CRLF>.<CRLF>` terminator, size limit, bare-newline detection).
//!
//! Command parsing is `smtp-proto`'s; the states, replies and limits are ours.
#![forbid(unsafe_code)]

pub mod data;
pub mod server;

pub use server::{Action, Envelope, ServerSession, SessionConfig, Verdict};
