//! The POP3 server session state machine (RFC 1939 with the extensions of
//! RFC 2449, 2595, 3206, 5034 and 6856).
//!
//! The session is fed framed input with [`ServerSession::handle`] and writes
//! replies into the caller's buffer. When it needs the outside world it
//! returns an [`Action`]; the caller does the work and reports back:
//!
//! | action | caller does | then calls |
//! | --- | --- | --- |
//! | [`Action::Authenticate`] | checks credentials, policy, locks the maildrop | [`ServerSession::login_succeeded`] / [`ServerSession::login_failed`] |
//! | [`Action::StartTls`] | sends the buffered `+OK`, runs the TLS handshake | [`ServerSession::tls_started`] |
//! | [`Action::Retrieve`] | opens the message | [`ServerSession::retrieve_started`] (writes the `+OK`), then streams it through a [`crate::BodyEncoder`]; or [`ServerSession::retrieve_failed`] |
//! | [`Action::Update`] | deletes the messages durably | [`ServerSession::update_finished`] |
//! | [`Action::Close`] | sends the buffer and closes | nothing |
//!
//! Deletions are only ever requested by [`Action::Update`], which only a
//! `QUIT` in the TRANSACTION state produces: a dropped or timed-out
//! connection deletes nothing (RFC 1939 section 6).

use std::fmt::Write as _;
use std::sync::Arc;

use crate::command::{self, Command, ParseError};
use crate::line::Frame;
use crate::sasl;

/// The messages of a locked maildrop, as the session sees them.
/// Message number `n` is index `n - 1`.
pub trait Listing: Send + Sync {
    /// Number of messages.
    fn count(&self) -> usize;
    /// Size in octets as RETR sends it before dot-stuffing (CRLF line ends).
    fn size(&self, index: usize) -> u64;
    /// The unique-id (RFC 1939 UIDL: 1 to 70 characters 0x21 to 0x7E).
    fn uid(&self, index: usize) -> &str;
}

/// How long the server keeps messages (RFC 2449 EXPIRE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expire {
    /// Mail is kept until the user deletes it.
    Never,
    /// Mail is deleted this many days after delivery.
    Days(u32),
}

/// A policy value as advertised before login: the value and whether it
/// varies per user (the `USER` suffix of RFC 2449).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advertised<T> {
    /// The value (before login: the lowest over all users).
    pub value: T,
    /// It varies per user (advertised with `USER`).
    pub per_user: bool,
}

/// Fixed facts about one connection, chosen by the server.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Text of the greeting after `+OK `.
    pub greeting: String,
    /// For the IMPLEMENTATION capability.
    pub implementation: String,
    /// The connection is already encrypted (POP3S, or after STLS).
    pub tls_active: bool,
    /// TLS is configured, so STLS can be offered on a plain connection.
    pub stls_available: bool,
    /// USER/PASS/AUTH are allowed without TLS on this connection
    /// (loopback, or explicitly configured).
    pub plaintext_auth: bool,
    /// EXPIRE as advertised before login.
    pub expire: Advertised<Expire>,
    /// LOGIN-DELAY (seconds) as advertised before login.
    pub login_delay: Advertised<u32>,
    /// Invalid commands tolerated before the connection is closed.
    pub max_bad_commands: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            greeting: "POP3 server ready.".into(),
            implementation: "postoffice".into(),
            tls_active: false,
            stls_available: false,
            plaintext_auth: true,
            expire: Advertised {
                value: Expire::Never,
                per_user: false,
            },
            login_delay: Advertised {
                value: 0,
                per_user: false,
            },
            max_bad_commands: 20,
        }
    }
}

/// Per-user facts the server reports on successful login.
#[derive(Debug, Clone, Copy)]
pub struct UserPolicy {
    /// The user's retention.
    pub expire: Expire,
    /// The user's minimum seconds between logins.
    pub login_delay: u32,
}

/// What the session needs done.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing: the reply (if any) is in the output buffer.
    None,
    /// Verify these credentials and lock the maildrop.
    Authenticate {
        /// The user name as the client sent it.
        user: String,
        /// The password.
        password: Vec<u8>,
        /// How it was sent (`USER`, `PLAIN`, `LOGIN`).
        mechanism: &'static str,
    },
    /// Send the buffered `+OK`, discard any buffered input, run the TLS
    /// handshake, then call [`ServerSession::tls_started`].
    StartTls,
    /// Open message `index`; then call [`ServerSession::retrieve_started`]
    /// and stream it (all of it, or its header and `top` body lines), or
    /// call [`ServerSession::retrieve_failed`]. Nothing is in the buffer
    /// for this command yet.
    Retrieve {
        /// The message (0-based).
        index: usize,
        /// TOP's line count; `None` for RETR.
        top: Option<u64>,
    },
    /// Enter the UPDATE state: delete these messages (indices), then call
    /// [`ServerSession::update_finished`].
    Update {
        /// The messages to delete (0-based indices).
        deleted: Vec<usize>,
    },
    /// Send the buffer and close the connection.
    Close,
}

/// Why a connection is refused before any session starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// This client's network holds too many connections already.
    TooManyFromClient,
    /// The server holds its maximum of connections.
    ServerFull,
}

impl Busy {
    /// The one line sent before closing (instead of the greeting).
    pub fn reply(self) -> &'static [u8] {
        match self {
            Busy::TooManyFromClient => {
                b"-ERR [SYS/TEMP] Too many connections from your address.\r\n"
            }
            Busy::ServerFull => b"-ERR [SYS/TEMP] Server is busy; try again later.\r\n",
        }
    }
}

/// Why a login attempt failed, as reported by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// Wrong user or password, disabled account, or throttled: all look the
    /// same to the client (`[AUTH]`), so nothing reveals whether a user exists.
    Credentials,
    /// The maildrop is locked by another session (`[IN-USE]`).
    InUse,
    /// The user logged in too recently (`[LOGIN-DELAY]`).
    LoginDelay,
    /// A temporary server problem (`[SYS/TEMP]`).
    TempFail,
    /// A permanent server problem (`[SYS/PERM]`).
    PermFail,
}

#[derive(Debug)]
enum State {
    Authorization { user: Option<String> },
    SaslPlain,
    SaslLoginUser,
    SaslLoginPass { user: String },
    AuthPending,
    StlsPending,
    Transaction(Box<Transaction>),
    UpdatePending,
    Closed,
}

struct Transaction {
    listing: Arc<dyn Listing>,
    deleted: Vec<bool>,
    deleted_count: usize,
    deleted_bytes: u64,
    total_bytes: u64,
    policy: UserPolicy,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("messages", &self.listing.count())
            .field("deleted", &self.deleted_count)
            .finish()
    }
}

impl Transaction {
    fn live_count(&self) -> usize {
        self.listing.count() - self.deleted_count
    }
    fn live_bytes(&self) -> u64 {
        self.total_bytes - self.deleted_bytes
    }
    /// Index of a live message, or the error text.
    fn lookup(&self, n: u32) -> Result<usize, &'static str> {
        let i = (n as usize).wrapping_sub(1);
        if i >= self.listing.count() {
            Err("-ERR No such message\r\n")
        } else if self.deleted[i] {
            Err("-ERR Message is deleted\r\n")
        } else {
            Ok(i)
        }
    }
}

/// Counters for the per-session summary log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Messages sent by RETR.
    pub retr: u64,
    /// Their octets.
    pub retr_bytes: u64,
    /// TOP commands answered.
    pub top: u64,
    /// Messages deleted at QUIT.
    pub dele: u64,
    /// Their octets.
    pub dele_bytes: u64,
    /// Invalid commands (towards `max_bad_commands`).
    pub bad_commands: u32,
}

/// One POP3 server session. See the module docs.
#[derive(Debug)]
pub struct ServerSession {
    cfg: SessionConfig,
    state: State,
    user: Option<String>,
    stats: Stats,
    utf8: bool,
}

const NOT_AUTH: &str = "-ERR [AUTH] Plaintext authentication disallowed on non-secure connections; use STLS or the POP3S port.\r\n";
const AUTH_FAILED: &str = "-ERR [AUTH] Authentication failed.\r\n";

impl ServerSession {
    /// A session for one connection; send the greeting first.
    pub fn new(cfg: SessionConfig) -> Self {
        ServerSession {
            cfg,
            state: State::Authorization { user: None },
            user: None,
            stats: Stats::default(),
            utf8: false,
        }
    }

    /// Write the greeting.
    pub fn greeting(&self, out: &mut Vec<u8>) {
        let _ = write_str(out, format_args!("+OK {}\r\n", self.cfg.greeting));
    }

    /// The logged-in user, once authenticated.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The session's counters, for its log line.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The session is over (QUIT, too many errors, timeout).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// In the TRANSACTION state (for idle-timeout and shutdown decisions).
    pub fn in_transaction(&self) -> bool {
        matches!(self.state, State::Transaction(_))
    }

    /// The connection is encrypted.
    pub fn tls_active(&self) -> bool {
        self.cfg.tls_active
    }

    fn auth_allowed(&self) -> bool {
        self.cfg.tls_active || self.cfg.plaintext_auth
    }

    /// Handle one framed input unit.
    pub fn handle(&mut self, frame: Frame<'_>, out: &mut Vec<u8>) -> Action {
        match frame {
            Frame::Line(line) => self.handle_line(line, out),
            Frame::TooLong => {
                if matches!(
                    self.state,
                    State::SaslPlain | State::SaslLoginUser | State::SaslLoginPass { .. }
                ) {
                    self.state = State::Authorization { user: None };
                    return self.bad(out, "-ERR Authentication line too long.\r\n");
                }
                self.bad(out, "-ERR Line too long.\r\n")
            }
        }
    }

    fn bad(&mut self, out: &mut Vec<u8>, reply: &str) -> Action {
        self.stats.bad_commands += 1;
        out.extend_from_slice(reply.as_bytes());
        if self.stats.bad_commands >= self.cfg.max_bad_commands {
            out.extend_from_slice(b"-ERR Too many invalid commands, closing connection.\r\n");
            self.state = State::Closed;
            return Action::Close;
        }
        Action::None
    }

    fn handle_line(&mut self, line: &[u8], out: &mut Vec<u8>) -> Action {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::SaslPlain => {
                self.state = State::Authorization { user: None };
                self.sasl_plain(line, out)
            }
            State::SaslLoginUser => {
                self.state = State::Authorization { user: None };
                if line == b"*" {
                    out.extend_from_slice(b"-ERR Authentication cancelled.\r\n");
                    return Action::None;
                }
                match sasl::decode(line) {
                    Ok(u) => match String::from_utf8(u) {
                        Ok(u) if !u.is_empty() => {
                            self.state = State::SaslLoginPass { user: u };
                            out.extend_from_slice(b"+ UGFzc3dvcmQ6\r\n");
                            Action::None
                        }
                        _ => self.bad(out, AUTH_FAILED),
                    },
                    Err(_) => self.bad(out, "-ERR Invalid base64 data.\r\n"),
                }
            }
            State::SaslLoginPass { user } => {
                self.state = State::Authorization { user: None };
                if line == b"*" {
                    out.extend_from_slice(b"-ERR Authentication cancelled.\r\n");
                    return Action::None;
                }
                match sasl::decode(line) {
                    Ok(password) => self.authenticate(user, password, "LOGIN"),
                    Err(_) => self.bad(out, "-ERR Invalid base64 data.\r\n"),
                }
            }
            state @ (State::AuthPending | State::StlsPending | State::UpdatePending) => {
                // The caller must not feed input while an action is pending;
                // if it does, refuse rather than corrupt the state.
                self.state = state;
                out.extend_from_slice(b"-ERR [SYS/TEMP] Busy.\r\n");
                Action::None
            }
            State::Closed => Action::Close,
            State::Authorization { user } => {
                self.state = State::Authorization { user };
                match command::parse(line) {
                    Ok(cmd) => self.authorization(cmd, out),
                    Err(e) => self.parse_error(e, out),
                }
            }
            State::Transaction(t) => {
                self.state = State::Transaction(t);
                match command::parse(line) {
                    Ok(cmd) => self.transaction(cmd, out),
                    Err(e) => self.parse_error(e, out),
                }
            }
        }
    }

    fn parse_error(&mut self, e: ParseError, out: &mut Vec<u8>) -> Action {
        match e {
            ParseError::Empty | ParseError::Unknown => self.bad(out, "-ERR Unknown command.\r\n"),
            ParseError::BadArgs(why) => {
                let reply = format!("-ERR Invalid arguments: {why}.\r\n");
                self.bad(out, &reply)
            }
        }
    }

    /// RFC 2449 section 5: "Capabilities available in the AUTHORIZATION
    /// state MUST be announced in both states." So USER, SASL, STLS and UTF8
    /// (RFC 6856) are listed after login too, as long as they are available
    /// before login on this connection; only EXPIRE and LOGIN-DELAY change
    /// (to the user's own values, without the USER suffix, as section 6.7
    /// and 6.8 allow).
    fn capa(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"+OK Capability list follows\r\n");
        if self.auth_allowed() {
            out.extend_from_slice(b"USER\r\nSASL PLAIN LOGIN\r\n");
        }
        out.extend_from_slice(b"TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n");
        let (expire, delay) = match &self.state {
            State::Transaction(t) => (
                Advertised {
                    value: t.policy.expire,
                    per_user: false,
                },
                Advertised {
                    value: t.policy.login_delay,
                    per_user: false,
                },
            ),
            _ => (self.cfg.expire, self.cfg.login_delay),
        };
        // RFC 2449 6.7: `EXPIRE NEVER` takes no USER suffix; when the value
        // varies per user the lowest applies before login, with USER.
        let _ = match expire.value {
            Expire::Never => write_str(out, format_args!("EXPIRE NEVER\r\n")),
            Expire::Days(d) if expire.per_user => {
                write_str(out, format_args!("EXPIRE {d} USER\r\n"))
            }
            Expire::Days(d) => write_str(out, format_args!("EXPIRE {d}\r\n")),
        };
        let _ = if delay.per_user {
            write_str(out, format_args!("LOGIN-DELAY {} USER\r\n", delay.value))
        } else {
            write_str(out, format_args!("LOGIN-DELAY {}\r\n", delay.value))
        };
        let _ = write_str(
            out,
            format_args!("IMPLEMENTATION {}\r\n", self.cfg.implementation),
        );
        if self.cfg.stls_available && !self.cfg.tls_active {
            out.extend_from_slice(b"STLS\r\n");
        }
        out.extend_from_slice(b"UTF8 USER\r\n");
        out.extend_from_slice(b".\r\n");
    }

    fn authorization(&mut self, cmd: Command<'_>, out: &mut Vec<u8>) -> Action {
        match cmd {
            Command::Capa => {
                self.capa(out);
                Action::None
            }
            Command::Noop => {
                // RFC 1939 lists NOOP for TRANSACTION only; answering it is
                // harmless and what Dovecot does.
                out.extend_from_slice(b"+OK\r\n");
                Action::None
            }
            Command::Quit => {
                out.extend_from_slice(b"+OK Logging out.\r\n");
                self.state = State::Closed;
                Action::Close
            }
            Command::Stls => {
                if self.cfg.tls_active {
                    return self.bad(out, "-ERR TLS is already active.\r\n");
                }
                if !self.cfg.stls_available {
                    return self.bad(out, "-ERR STLS is not available.\r\n");
                }
                out.extend_from_slice(b"+OK Begin TLS negotiation now.\r\n");
                self.state = State::StlsPending;
                Action::StartTls
            }
            Command::Utf8 => {
                self.utf8 = true;
                out.extend_from_slice(b"+OK UTF8 enabled.\r\n");
                Action::None
            }
            Command::User(name) => {
                if !self.auth_allowed() {
                    return self.bad(out, NOT_AUTH);
                }
                match std::str::from_utf8(name) {
                    Ok(name) => {
                        self.state = State::Authorization {
                            user: Some(name.to_string()),
                        };
                        // Always +OK: the answer must not reveal whether the
                        // user exists (RFC 1939 section 13).
                        out.extend_from_slice(b"+OK\r\n");
                        Action::None
                    }
                    Err(_) => self.bad(out, "-ERR Invalid user name.\r\n"),
                }
            }
            Command::Pass(password) => {
                if !self.auth_allowed() {
                    return self.bad(out, NOT_AUTH);
                }
                let user = match &mut self.state {
                    State::Authorization { user } => user.take(),
                    _ => None,
                };
                match user {
                    Some(user) => self.authenticate(user, password.to_vec(), "USER"),
                    None => self.bad(out, "-ERR No user name given; send USER first.\r\n"),
                }
            }
            Command::Apop => self.bad(
                out,
                "-ERR APOP is not supported; use USER/PASS or AUTH over TLS.\r\n",
            ),
            Command::Auth { mechanism, initial } => {
                let Some(mechanism) = mechanism else {
                    out.extend_from_slice(b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n");
                    return Action::None;
                };
                if !self.auth_allowed() {
                    return self.bad(out, NOT_AUTH);
                }
                self.state = State::Authorization { user: None };
                if mechanism.eq_ignore_ascii_case(b"PLAIN") {
                    match initial {
                        Some(init) => self.sasl_plain(init, out),
                        None => {
                            self.state = State::SaslPlain;
                            out.extend_from_slice(b"+ \r\n");
                            Action::None
                        }
                    }
                } else if mechanism.eq_ignore_ascii_case(b"LOGIN") {
                    match initial {
                        Some(init) => match sasl::decode(init).map(String::from_utf8) {
                            Ok(Ok(u)) if !u.is_empty() => {
                                self.state = State::SaslLoginPass { user: u };
                                out.extend_from_slice(b"+ UGFzc3dvcmQ6\r\n");
                                Action::None
                            }
                            Err(_) => self.bad(out, "-ERR Invalid base64 data.\r\n"),
                            _ => self.bad(out, AUTH_FAILED),
                        },
                        None => {
                            self.state = State::SaslLoginUser;
                            out.extend_from_slice(b"+ VXNlcm5hbWU6\r\n");
                            Action::None
                        }
                    }
                } else {
                    self.bad(out, "-ERR Unsupported authentication mechanism.\r\n")
                }
            }
            Command::Stat
            | Command::List(_)
            | Command::Retr(_)
            | Command::Dele(_)
            | Command::Rset
            | Command::Top(..)
            | Command::Uidl(_) => self.bad(out, "-ERR Not logged in.\r\n"),
        }
    }

    fn sasl_plain(&mut self, data: &[u8], out: &mut Vec<u8>) -> Action {
        if data == b"*" {
            out.extend_from_slice(b"-ERR Authentication cancelled.\r\n");
            return Action::None;
        }
        let decoded = match sasl::decode(data) {
            Ok(d) => d,
            Err(_) => return self.bad(out, "-ERR Invalid base64 data.\r\n"),
        };
        match sasl::parse_plain(&decoded) {
            Ok((user, password)) => match String::from_utf8(user) {
                Ok(user) => self.authenticate(user, password, "PLAIN"),
                Err(_) => self.bad(out, AUTH_FAILED),
            },
            Err(_) => self.bad(out, AUTH_FAILED),
        }
    }

    fn authenticate(&mut self, user: String, password: Vec<u8>, mechanism: &'static str) -> Action {
        self.state = State::AuthPending;
        Action::Authenticate {
            user,
            password,
            mechanism,
        }
    }

    /// The caller verified the credentials and locked the maildrop.
    pub fn login_succeeded(
        &mut self,
        user: String,
        listing: Arc<dyn Listing>,
        policy: UserPolicy,
        out: &mut Vec<u8>,
    ) {
        let count = listing.count();
        let total_bytes = (0..count).map(|i| listing.size(i)).sum();
        let t = Transaction {
            deleted: vec![false; count],
            listing,
            deleted_count: 0,
            deleted_bytes: 0,
            total_bytes,
            policy,
        };
        let _ = write_str(
            out,
            format_args!(
                "+OK Maildrop locked and ready, {count} messages ({total_bytes} octets).\r\n"
            ),
        );
        self.user = Some(user);
        self.state = State::Transaction(Box::new(t));
    }

    /// The caller refused the login.
    pub fn login_failed(&mut self, why: AuthFailure, out: &mut Vec<u8>) -> Action {
        self.state = State::Authorization { user: None };
        match why {
            AuthFailure::Credentials => self.bad(out, AUTH_FAILED),
            AuthFailure::InUse => {
                out.extend_from_slice(b"-ERR [IN-USE] Maildrop is locked by another session.\r\n");
                Action::None
            }
            AuthFailure::LoginDelay => {
                out.extend_from_slice(
                    b"-ERR [LOGIN-DELAY] Logged in too recently; try again later.\r\n",
                );
                Action::None
            }
            AuthFailure::TempFail => {
                out.extend_from_slice(
                    b"-ERR [SYS/TEMP] Temporary server failure; try again later.\r\n",
                );
                Action::None
            }
            AuthFailure::PermFail => {
                out.extend_from_slice(b"-ERR [SYS/PERM] Maildrop is not available.\r\n");
                Action::None
            }
        }
    }

    /// The TLS handshake after STLS completed.
    pub fn tls_started(&mut self) {
        self.cfg.tls_active = true;
        // RFC 2595 4: forget everything learned before TLS.
        self.state = State::Authorization { user: None };
    }

    fn transaction(&mut self, cmd: Command<'_>, out: &mut Vec<u8>) -> Action {
        let State::Transaction(t) = &mut self.state else {
            return Action::Close;
        };
        match cmd {
            Command::Stat => {
                let _ = write_str(
                    out,
                    format_args!("+OK {} {}\r\n", t.live_count(), t.live_bytes()),
                );
            }
            Command::List(None) => {
                let _ = write_str(
                    out,
                    format_args!(
                        "+OK {} messages ({} octets)\r\n",
                        t.live_count(),
                        t.live_bytes()
                    ),
                );
                write_listing(out, t, |out, t, i| {
                    write_num(out, i as u64 + 1);
                    out.push(b' ');
                    write_num(out, t.listing.size(i));
                });
                out.extend_from_slice(b".\r\n");
            }
            Command::List(Some(n)) => match t.lookup(n) {
                Ok(i) => {
                    let _ = write_str(out, format_args!("+OK {n} {}\r\n", t.listing.size(i)));
                }
                Err(e) => return self.bad(out, e),
            },
            Command::Uidl(None) => {
                out.extend_from_slice(b"+OK Unique-ID listing follows\r\n");
                write_listing(out, t, |out, t, i| {
                    write_num(out, i as u64 + 1);
                    out.push(b' ');
                    out.extend_from_slice(t.listing.uid(i).as_bytes());
                });
                out.extend_from_slice(b".\r\n");
            }
            Command::Uidl(Some(n)) => match t.lookup(n) {
                Ok(i) => {
                    let _ = write_str(out, format_args!("+OK {n} {}\r\n", t.listing.uid(i)));
                }
                Err(e) => return self.bad(out, e),
            },
            Command::Retr(n) => match t.lookup(n) {
                Ok(i) => {
                    return Action::Retrieve {
                        index: i,
                        top: None,
                    };
                }
                Err(e) => return self.bad(out, e),
            },
            Command::Top(n, lines) => match t.lookup(n) {
                Ok(i) => {
                    return Action::Retrieve {
                        index: i,
                        top: Some(lines),
                    };
                }
                Err(e) => return self.bad(out, e),
            },
            Command::Dele(n) => match t.lookup(n) {
                Ok(i) => {
                    t.deleted[i] = true;
                    t.deleted_count += 1;
                    t.deleted_bytes += t.listing.size(i);
                    let _ = write_str(out, format_args!("+OK Message {n} deleted.\r\n"));
                }
                Err(e) => return self.bad(out, e),
            },
            Command::Rset => {
                t.deleted.iter_mut().for_each(|d| *d = false);
                t.deleted_count = 0;
                t.deleted_bytes = 0;
                let _ = write_str(
                    out,
                    format_args!(
                        "+OK Maildrop has {} messages ({} octets).\r\n",
                        t.live_count(),
                        t.live_bytes()
                    ),
                );
            }
            Command::Noop => out.extend_from_slice(b"+OK\r\n"),
            Command::Capa => self.capa(out),
            Command::Quit => {
                let deleted: Vec<usize> = t
                    .deleted
                    .iter()
                    .enumerate()
                    .filter_map(|(i, d)| d.then_some(i))
                    .collect();
                self.stats.dele = deleted.len() as u64;
                self.stats.dele_bytes = t.deleted_bytes;
                self.state = State::UpdatePending;
                return Action::Update { deleted };
            }
            Command::User(_)
            | Command::Pass(_)
            | Command::Apop
            | Command::Auth { .. }
            | Command::Stls
            | Command::Utf8 => return self.bad(out, "-ERR Already logged in.\r\n"),
        }
        Action::None
    }

    /// The message of [`Action::Retrieve`] is open: write the `+OK` line
    /// (the caller streams the message after it).
    pub fn retrieve_started(&mut self, index: usize, top: Option<u64>, out: &mut Vec<u8>) {
        match top {
            None => {
                let size = match &self.state {
                    State::Transaction(t) if index < t.listing.count() => t.listing.size(index),
                    _ => 0,
                };
                let _ = write_str(out, format_args!("+OK {size} octets\r\n"));
                self.stats.retr += 1;
                self.stats.retr_bytes += size;
            }
            Some(_) => {
                out.extend_from_slice(b"+OK Top of message follows\r\n");
                self.stats.top += 1;
            }
        }
    }

    /// The message of [`Action::Retrieve`] could not be opened (another
    /// program deleted it, a disk error): a `-ERR [SYS/TEMP]`, and the
    /// session goes on.
    pub fn retrieve_failed(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"-ERR [SYS/TEMP] Message is unavailable; try again later.\r\n");
    }

    /// The client was idle longer than the autologout timer (RFC 1939
    /// section 3): say so and close. Nothing is deleted.
    pub fn timed_out(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"-ERR Autologout; idle for too long.\r\n");
        self.state = State::Closed;
    }

    /// The server is stopping: say so and close. Deletions are not applied
    /// (no QUIT was received).
    pub fn shutting_down(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"-ERR [SYS/TEMP] Server shutting down.\r\n");
        self.state = State::Closed;
    }

    /// The UPDATE state finished: `Ok` if every deletion was applied.
    pub fn update_finished(&mut self, result: Result<(), ()>, out: &mut Vec<u8>) -> Action {
        self.state = State::Closed;
        match result {
            Ok(()) => out.extend_from_slice(b"+OK Logging out, messages deleted.\r\n"),
            Err(()) => out.extend_from_slice(
                b"-ERR [SYS/TEMP] Some deleted messages were not removed; they will appear again.\r\n",
            ),
        }
        Action::Close
    }
}

fn write_listing(
    out: &mut Vec<u8>,
    t: &Transaction,
    mut line: impl FnMut(&mut Vec<u8>, &Transaction, usize),
) {
    out.reserve(t.live_count() * 16);
    for i in 0..t.listing.count() {
        if !t.deleted[i] {
            line(out, t, i);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Append a decimal number without going through `fmt` (LIST of 100,000
/// messages is on the hot path of a big maildrop).
fn write_num(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn write_str(out: &mut Vec<u8>, args: std::fmt::Arguments<'_>) -> std::fmt::Result {
    let mut s = String::new();
    s.write_fmt(args)?;
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests;
