//! What the postoffice test suites share, written once.
//!
//! Every crate's integration tests used to carry their own copy of the
//! same few helpers: finding dnsmasq in `/usr/sbin`, a free loopback port,
//! a child process killed on drop, a poll loop with a deadline, a blocking
//! POP3 client. This crate is their one home, a dev-dependency of the
//! crates that test with them. It depends on no postoffice crate, so any of
//! them can use it without a dependency cycle.
//!
//! The rules the helpers enforce:
//!
//! - **A missing program fails the test.** A test that needs dnsmasq,
//!   clamd, openssl, ... gets it from [`program`], which panics with the
//!   Debian package to install when the program is missing, on every
//!   machine. (A test that returned early printed "SKIPPED" to stderr,
//!   which `cargo test` hides: it counted as a pass.) A test that can
//!   honestly run without a program uses [`optional_program`] and says in
//!   a comment why skipping it is acceptable.
//! - **No fixed sleeps for synchronisation.** Waits are polls with a
//!   deadline ([`wait_for`], [`poll_until`], [`eventually`],
//!   [`wait_for_port`], [`Daemon::wait_until`]): fast when the awaited
//!   thing is fast, a clear failure when it never happens.
//! - **No hanging test.** Every socket [`tcp_connect`] opens has read and
//!   write timeouts ([`IO_TIMEOUT`]), so a server that stops answering
//!   fails the test instead of hanging it.
//! - **Loopback only.** Servers and daemons listen on 127.0.0.1.
//!
//! The parts:
//!
//! - programs: [`find_program`], [`program`], [`optional_program`];
//! - processes: [`Daemon`] (a child process killed on drop, with its
//!   output file), [`peak_rss_kib`];
//! - private daemons: [`Dnsmasq`], a DNS server for the records a test
//!   needs; [`Postgres`], a PostgreSQL server of its own (killed,
//!   restarted and stopped by the test);
//! - network: [`free_port`], [`tcp_connect`], [`wait_for_port`];
//! - waiting: [`wait_for`], [`poll_until`], [`eventually`];
//! - clients: [`Client`], a blocking line client with POP3 helpers, and
//!   the SMTP helpers [`smtp_reply`], [`smtp_cmd`], [`smtp_connect`];
//!   [`HttpClient`], an HTTP/1.1 client with a cookie jar, and
//!   [`http_raw`] for requests written byte by byte;
//!   [`tls_client`] for TLS to a server with a self-signed certificate;
//! - mail: [`crlf_normalize`], [`dot_stuff`], [`dot_unstuff`],
//!   [`lines_of`], [`simple_message`], [`base64`], [`all_files`];
//! - the real binary: [`Env`] (a temporary directory with a config file),
//!   [`Server`] (a running `postoffice serve`), [`Output`] (one CLI run);
//!   what is stored, on either backend (Maildir files or the PostgreSQL
//!   tables): [`Env::stored_messages`], [`Env::queued_messages`],
//!   [`Env::directory_document`] and [`Env::edit_directory`], and
//!   [`Env::wait_for_directory`] for a CLI change to reach a running server.
#![forbid(unsafe_code)]

mod client;
mod daemon;
mod dnsmasq;
mod http;
mod mail;
mod net;
mod postgres;
mod postoffice;
mod program;
mod smtp;
mod tls;
mod wait;

pub use client::Client;
pub use daemon::{Daemon, peak_rss_kib, read_log};
pub use dnsmasq::Dnsmasq;
pub use http::{HttpClient, HttpResponse, form_encode, http_raw, parse_response};
pub use mail::{
    all_files, base64, crlf_normalize, dot_stuff, dot_unstuff, lines_of, simple_message,
};
pub use net::{IO_TIMEOUT, free_port, tcp_connect, wait_for_port};
pub use postgres::{Postgres, STANDBY_NAME, create_database, query as pg_query};
pub use postoffice::{Env, Output, START_TIMEOUT, Server, cli_with_config};
pub use program::{find_program, optional_program, program};
pub use smtp::{smtp_cmd, smtp_connect, smtp_reply};
pub use tls::{TlsStream, tls_client, tls_client_config, tls_client_with};
pub use wait::{POLL_INTERVAL, eventually, poll_until, wait_for};
