//! The postoffice application: what the server *does* with mail and users,
//! independent of sockets, TLS and the command line.
//!
//! The protocol crates (`pop3-proto`, `postoffice-smtp`) know how to talk;
//! the store, the directory and the filters know how to keep and judge;
//! this crate decides. Everything a listener, the CLI or the outbound queue
//! does to mail goes through one function here, so each rule exists once:
//!
//! - [`App`] is the shared application state: configuration, store,
//!   directory, verification pipeline, DKIM signer, metrics, live sessions and the
//!   outbound queue behind the [`Outbound`] trait. [`App::authenticate`]
//!   and [`App::login`] are *the* login procedure (throttling, one hash
//!   check per failure whatever the user, LOGIN-DELAY, the maildrop lock).
//! - [`delivery`]: the one path into a maildrop — recipient checks, quotas,
//!   all-or-nothing delivery to several recipients, quarantine.
//! - [`inbound`]: a message arriving on the MX port — relay protection,
//!   the verification pipeline, trace headers, delivery; returns the reply.
//! - [`auth_cache`]: recently verified credentials, so that a repeated
//!   correct login costs a keyed hash, not argon2id.
//! - [`author`]: every identity a message claims (From:, Sender:,
//!   Resent-*), read field by field.
//! - [`submission`]: a message our user sends — sender ownership of the
//!   envelope and of every From:/Sender:/Resent-From: address, Date and
//!   Message-ID, DKIM, local delivery and the queue, all or nothing.
//! - [`sendmail`]: the message preparation of `postoffice sendmail`.
//! - [`dkim`]: signing keys and signatures.
//! - [`dns`]: the DNS records a domain needs (`postoffice dns`), and
//!   checking what is published (`postoffice dns check`).
//! - [`trace`]: `Return-Path`, `Received`, and removing forged verdicts.
//! - [`retention`]: the retention sweep (from delivery or from first
//!   retrieval) and the notices that announce it.
//! - [`notices`]: the messages postoffice delivers into a maildrop itself
//!   (quota warnings, retention notices, the quarantine digest), from
//!   templates.
//! - [`quarantine_digest`]: once per period, one message per user listing
//!   what the quarantine newly holds and how to release it.
//! - [`metrics`]: what the server counts, in the Prometheus text format.
//! - [`sessions`]: the live sessions (for the administrators' page).
//! - [`forward`]: forwarding to external addresses through the queue,
//!   with the envelope sender rewritten by [`srs`] (and bounces to SRS
//!   addresses routed back); [`vacation`]: RFC 3834 auto-replies.
//! - [`addresses`]: where a recipient address leads (users, aliases,
//!   catch-alls, domain aliases, sub-addresses, role addresses);
//!   [`alias_forward`] sends external alias targets to the queue.
//! - [`admin`]: what administrators do to domains, users, admin accounts
//!   and quarantines, shared by the CLI and the web interface.
//!
//! Blocking work (file I/O, password hashes) is done with plain blocking
//! calls in this crate; the async entry points ([`App::login`],
//! [`inbound::deliver`], [`submission::submit`]) move it to tokio's blocking
//! pool so that no listener thread waits on a disk or a hash.
#![forbid(unsafe_code)]

pub mod addresses;
pub mod admin;
pub mod alias_forward;
pub mod app;
pub mod auth_cache;
pub mod author;
pub mod delivery;
pub mod dkim;
pub mod dns;
pub mod forward;
pub mod greylist;
pub mod inbound;
pub mod keys;
pub mod metrics;
pub mod migrate;
pub mod notices;
pub mod outbound;
pub mod quarantine_digest;
pub mod rate_limit;
pub mod retention;
pub mod send_limits;
pub mod sendmail;
pub mod sessions;
pub mod srs;
pub mod submission;
pub mod trace;
pub mod vacation;

pub use app::{App, LoginError, LoginOk, policy_defaults};
pub use outbound::{Outbound, OutboundError};
