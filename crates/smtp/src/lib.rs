//! Sans-IO SMTP for postoffice (RFC 5321 with ESMTP extensions).
//!
//! - [`reply`]: SMTP replies as values — code, enhanced status code, text —
//!   built from typed parts on the server side and parsed on the client
//!   side. Every reply postoffice sends is a [`Reply`].
//! - [`server::ServerSession`]: the receiving side's state machine. Its
//!   module keeps the states, the line framing and the caller's side; each
//!   SMTP verb has its own handler in its own file (`server/mail.rs`,
//!   `server/data.rs`, ...), in the manner of mini-redis's `cmd/`, and
//!   every reply it writes is a [`Reply`] built from [`codes`] and
//!   [`status`].
//! - [`client::ClientSession`]: the sending side's state machine (one
//!   transaction to one server), with [`client::Capabilities`] (the EHLO
//!   reply) and [`client::dot_stuff`].
//! - [`data::DataDecoder`]: DATA content (dot-unstuffing, the exact
//!   `<CRLF>.<CRLF>` terminator, size limit, bare-newline detection).
//!
//! Command parsing is `smtp-proto`'s; the states, replies and limits are ours.
#![forbid(unsafe_code)]

pub mod client;
pub mod data;
pub mod reply;
pub mod server;

pub use reply::{EnhancedCode, Reply, Status, codes, status};
pub use server::{Action, Envelope, ServerSession, SessionConfig, Verdict, sanitize};
