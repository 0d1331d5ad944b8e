//! Sans-IO POP3: everything about the protocol and nothing about sockets.
//!
//! The server side is a state machine ([`server::ServerSession`]) that is fed
//! complete command lines and writes its replies into a caller-owned buffer.
//! Whenever it needs the outside world — checking a password, upgrading to
//! TLS, streaming a message, committing deletions — it returns an
//! [`server::Action`] and the caller reports the outcome back. That keeps every
//! edge case of RFC 1939, 2449, 2595, 3206, 5034 and 6856 testable without a
//! socket, in the style of `quinn-proto`.
//!
//! The pieces:
//! - [`line::LineBuffer`] frames a byte stream into command lines with a hard
//!   length limit (overlong lines are reported and discarded, never buffered).
//! - [`command`] parses one line into a [`command::Command`].
//! - [`body::BodyEncoder`] turns stored message bytes into the on-wire form
//!   (CRLF line ends, dot-stuffing, `TOP` truncation, the terminating `.`),
//!   streaming, chunk by chunk.
//! - [`sasl`] decodes SASL PLAIN and LOGIN exchanges (RFC 4616, RFC 5034).
//! - [`server`] is the server session state machine.
//! - [`client`] parses server replies for POP3 clients, and
//!   [`client_codec`] the contents of multi-line replies (CAPA, LIST, UIDL)
//!   plus a streaming RETR/TOP body decoder.
#![forbid(unsafe_code)]

pub mod body;
pub mod client;
pub mod client_codec;
pub mod command;
pub mod line;
pub mod sasl;
pub mod server;

pub use body::{BodyEncoder, CrlfStuffer};
pub use command::{Command, ParseError};
pub use line::{Frame, LineBuffer};
pub use server::{Action, AuthFailure, Listing, ServerSession, SessionConfig};
