//! POP3 client library and the `postoffice fetch` mail retriever.
//!
//! Two layers:
//!
//! - [`Client`]: an asynchronous (tokio) POP3 client. CAPA, STLS and
//!   implicit TLS (rustls, verified against the system CA certificates or a
//!   CA file; [`Trust::Insecure`] only when asked for), USER/PASS, AUTH
//!   PLAIN and LOGIN, APOP, STAT, LIST, UIDL, TOP, RETR, DELE, RSET, NOOP,
//!   QUIT, PIPELINING (LIST+UIDL and batches of DELE), and the RFC 2449 /
//!   RFC 3206 response codes as [`Error`] variants. Every read and write
//!   has a timeout, the session a deadline, response lines a length limit,
//!   listing replies (CAPA, LIST, UIDL) a byte budget, and messages a size
//!   budget derived from what LIST announced; RETR streams the message into
//!   a [`std::io::Write`] sink in chunks of at most 64 KiB, so a 100 MB
//!   message never sits in memory. A hostile server therefore costs a
//!   bounded amount of memory and time ([`Error::LimitExceeded`]).
//! - [`fetch_account`] and the command line ([`FetchArgs`], [`run`]): fetch
//!   an account from its [`config`] into a Maildir, an mbox or a command,
//!   apply a [`Policy`], and remember what was delivered in a
//!   [`state`] file, in an order that never loses a message, even when the
//!   process is killed, and never delivers one twice to a Maildir or an
//!   mbox; a command, which cannot be asked what it did, is told when a
//!   message may be a repeat (see [`fetch`]).
//!
//! The protocol parsing itself is sans-IO, in `pop3-proto`
//! (`client`, `client_codec`, `body`, `sasl`). The mechanisms fetch shares
//! with the server come from `postoffice-common`: durable writes (the
//! Maildir delivery, the state file), Maildir file names, the mbox `From `
//! date and the TLS certificate verifier.
//!
//! # Example
//!
//! ```no_run
//! use postoffice_fetch::{AuthMethod, Client, ConnectOptions, TlsMode};
//!
//! # async fn example() -> Result<(), postoffice_fetch::Error> {
//! let opts = ConnectOptions::new("pop.example.test", TlsMode::Implicit);
//! let mut client = Client::connect(&opts).await?;
//! client.login("alice@example.test", "secret", AuthMethod::Auto).await?;
//! let listing = client.list_and_uidl().await?;
//! for m in &listing.messages {
//!     let mut file = std::fs::File::create(format!("msg-{}.eml", m.number))
//!         .map_err(postoffice_fetch::Error::Sink)?;
//!     let bytes = client.retr(m.number, &mut file).await?;
//!     println!("message {} ({bytes} bytes), uid {:?}", m.number, m.uid);
//! }
//! client.quit().await?; // nothing was marked deleted, so nothing is
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod config;
mod conn;
pub mod deliver;
pub mod error;
pub mod fetch;
mod progress;
pub mod state;
pub mod tls;

pub use cli::{EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_TEMPFAIL, FetchArgs, run};
pub use client::{AuthMethod, Client, ConnectOptions, Listing, MessageEntry, Trace};
pub use config::{Account, Destination, FetchConfig, PasswordSource, Policy, Secret};
pub use deliver::{CustomDestination, Delivery, Sink};
pub use error::{Error, Result};
pub use fetch::{AccountReport, FetchError, Progress, RunOptions, fetch_account};
pub use pop3_proto::client_codec::{Capabilities, Expire};
pub use tls::{TlsMode, Trust};
