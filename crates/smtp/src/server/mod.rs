//! The SMTP server session state machine (RFC 5321, with PIPELINING RFC 2920,
//! SIZE RFC 1870, 8BITMIME RFC 6152, ENHANCEDSTATUSCODES RFC 2034/3463,
//! STARTTLS RFC 3207, SMTPUTF8 RFC 6531 and CHUNKING RFC 3030).
//!
//! Like the POP3 session it never touches a socket. The caller hands it the
//! bytes it has read with [`ServerSession::handle`]; the session consumes as
//! much as it can, appends replies to the output buffer and returns an
//! [`Action`] when it needs a decision from outside:
//!
//! | action | the caller | then calls |
//! | --- | --- | --- |
//! | [`Action::NeedInput`] | flushes the output, reads more | `handle` again |
//! | [`Action::CheckSender`] | applies sender policy | [`ServerSession::sender_checked`] |
//! | [`Action::CheckRecipient`] | local user? relay? quota? | [`ServerSession::recipient_checked`] |
//! | [`Action::StartTls`] | sends the 220, drops buffered input, handshakes | [`ServerSession::tls_started`] |
//! | [`Action::Deliver`] | verifies and stores the message durably: what it took from [`ServerSession::pending_content`] plus [`ServerSession::message`]'s rest | [`ServerSession::delivered`] |
//! | [`Action::Close`] | flushes and closes | — |
//!
//! Relay protection lives with the caller (only it knows the local domains),
//! but the session guarantees that no message is ever handed over without at
//! least one recipient the caller accepted.
//!
//! This file holds the states, [`ServerSession::handle`] with the line
//! framing, and the methods the caller answers with. Each verb has its own
//! handler, called from `command` once `smtp-proto` has parsed the line:
//!
//! | file | verbs |
//! | --- | --- |
//! | `ehlo.rs` | EHLO, HELO (and LHLO, refused) |
//! | `mail.rs` | MAIL |
//! | `rcpt.rs` | RCPT |
//! | `data.rs` | DATA, BDAT, and reading the content that follows them |
//! | `auth.rs` | AUTH PLAIN/LOGIN and the SASL continuation lines |
//! | `starttls.rs` | STARTTLS |
//! | `simple.rs` | NOOP, RSET, VRFY, EXPN, HELP, QUIT; ETRN, ATRN, BURL (not implemented) |
//!
//! Replies are [`Reply`] values built from [`codes`] and [`status`];
//! `replies.rs` has the ones several handlers send.

use smtp_proto::Request;

use crate::data::{DataDecoder, HeaderExcess, HeaderLimits, HeaderScan};
use crate::reply::{Reply, codes, status};

mod auth;
mod data;
mod ehlo;
mod mail;
mod rcpt;
mod replies;
mod simple;
mod starttls;

/// Fixed facts about one connection.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our name, for the greeting and EHLO.
    pub hostname: String,
    /// The largest message accepted, in octets (announced as `SIZE`).
    pub max_message_size: usize,
    /// Recipients per transaction; more get `452`.
    pub max_recipients: usize,
    /// The longest command line, without CRLF; longer ones get `500`.
    pub max_line_length: usize,
    /// Refused commands before the session is closed with `421`.
    pub max_errors: u32,
    /// TLS is configured (STARTTLS can be offered).
    pub starttls_available: bool,
    /// Already encrypted.
    pub tls_active: bool,
    /// Submission mode (RFC 6409): AUTH is required before MAIL.
    pub submission: bool,
    /// AUTH may be offered on this connection before TLS (loopback
    /// clients, when configured). After TLS it is always offered in
    /// submission mode.
    pub plaintext_auth: bool,
    /// Limits on a message's header section (fields, octets); a message
    /// past them is refused with `552 5.3.4` once its content is read.
    pub header_limits: HeaderLimits,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            hostname: "localhost".into(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_line_length: 1000,
            max_errors: 10,
            starttls_available: false,
            tls_active: false,
            submission: false,
            plaintext_auth: false,
            header_limits: HeaderLimits {
                max_fields: 1000,
                max_bytes: 256 * 1024,
            },
        }
    }
}

/// The envelope of the message being received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// What the client said in EHLO/HELO.
    pub helo: String,
    /// True after EHLO, false after HELO.
    pub esmtp: bool,
    /// The reverse-path; empty for the null sender `<>`.
    pub mail_from: String,
    /// Accepted recipients, in order.
    pub rcpt_to: Vec<String>,
    /// MAIL said `BODY=8BITMIME`.
    pub body_8bit: bool,
    /// MAIL said `SMTPUTF8`.
    pub smtputf8: bool,
    /// Received with BDAT rather than DATA.
    pub chunking: bool,
    /// The authenticated user (submission), if any.
    pub authenticated: Option<String>,
}

/// What the session needs from the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// All input consumed: send the output, read more.
    NeedInput,
    /// Decide on this reverse-path, then call
    /// [`ServerSession::sender_checked`].
    CheckSender {
        /// The reverse-path (`""` is the null sender).
        address: String,
    },
    /// Decide on this recipient, then call
    /// [`ServerSession::recipient_checked`].
    CheckRecipient {
        /// The forward-path as the client sent it.
        address: String,
    },
    /// Verify these credentials (AUTH PLAIN/LOGIN), then call
    /// [`ServerSession::auth_result`].
    Authenticate {
        /// The user name (PLAIN's authcid, or LOGIN's first answer).
        user: String,
        /// The password, as sent.
        password: Vec<u8>,
    },
    /// The `220` is in the output: send it, discard any input buffered
    /// behind STARTTLS, run the handshake, call [`ServerSession::tls_started`].
    StartTls,
    /// A complete message is ready: [`ServerSession::message`].
    Deliver,
    /// Send the output and close the connection.
    Close,
}

/// The caller's decision on a sender or recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accept it (`250`).
    Accept,
    /// Refuse it with this reply (4xx or 5xx).
    Reject(Reply),
}

#[derive(Debug)]
enum State {
    /// Greeted; waiting for EHLO/HELO.
    Connected,
    /// After EHLO/HELO, no transaction.
    Ready,
    /// MAIL accepted (maybe recipients too).
    Transaction,
    /// Receiving DATA content.
    Data(DataDecoder),
    /// Receiving a BDAT chunk: bytes still to read, and whether it is LAST.
    Bdat {
        remaining: usize,
        last: bool,
    },
    /// Waiting for the caller.
    Pending(Pending),
    /// The connection was refused at connect: only QUIT is accepted.
    Refused,
    /// AUTH PLAIN waiting for the client's response.
    AuthPlain,
    /// AUTH LOGIN waiting for the user name.
    AuthLoginUser,
    /// AUTH LOGIN waiting for the password.
    AuthLoginPass(String),
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Sender,
    Recipient,
    Tls,
    Delivery,
    Auth,
}

/// Counters for the transaction log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages accepted (a 2xx from [`ServerSession::delivered`]).
    pub messages: u64,
    /// Recipients refused (by the caller, or over the limit).
    pub rejected_rcpts: u64,
    /// Refused commands (towards [`SessionConfig::max_errors`]).
    pub errors: u32,
}

/// One SMTP server session. See the module docs.
#[derive(Debug)]
pub struct ServerSession {
    cfg: SessionConfig,
    state: State,
    env: Envelope,
    /// Message content (DATA decoded or BDAT chunks) not yet taken by the
    /// caller ([`ServerSession::content_taken`]), without our headers.
    message: Vec<u8>,
    /// Octets of content received in this transaction, taken or not.
    received: usize,
    /// BDAT: the transaction failed; chunks are read and thrown away until LAST.
    bdat_failed: Option<Reply>,
    bdat_overflow: bool,
    /// The header section of the message being received, watched for
    /// its limits.
    header_scan: HeaderScan,
    /// Partial command line carried between `handle` calls.
    line: Vec<u8>,
    /// Discarding the rest of an overlong line.
    discarding: bool,
    /// A reverse-path/recipient under consideration while pending.
    pending_mail: Option<(String, bool, bool)>,
    stats: Stats,
}

impl ServerSession {
    /// A session for one connection; send [`ServerSession::greeting`]
    /// (or [`ServerSession::refuse`]) first.
    pub fn new(cfg: SessionConfig) -> Self {
        let header_scan = HeaderScan::new(cfg.header_limits);
        ServerSession {
            cfg,
            state: State::Connected,
            env: Envelope::default(),
            message: Vec::new(),
            received: 0,
            bdat_failed: None,
            bdat_overflow: false,
            header_scan,
            line: Vec::new(),
            discarding: false,
            pending_mail: None,
            stats: Stats::default(),
        }
    }

    /// Write the `220` greeting.
    pub fn greeting(&self, out: &mut Vec<u8>) {
        Reply::plain(
            codes::READY,
            format!("{} ESMTP postoffice", self.cfg.hostname),
        )
        .write_to(out);
    }

    /// Refuse service at connect (RFC 5321 3.1): write `reply` (a 554)
    /// instead of the greeting; afterwards every command but QUIT gets 503.
    pub fn refuse(&mut self, reply: &Reply, out: &mut Vec<u8>) {
        reply.write_to(out);
        self.state = State::Refused;
    }

    /// The client was silent for too long: `421` and the session is over.
    pub fn timed_out(&mut self, out: &mut Vec<u8>) {
        Reply::new(
            codes::SERVICE_UNAVAILABLE,
            status::BAD_CONNECTION,
            "Timeout, closing connection",
        )
        .write_to(out);
        self.state = State::Closed;
    }

    /// The server is stopping: `421` and the session is over. Nothing was
    /// accepted in the unfinished transaction, so the client retries it.
    pub fn shutting_down(&mut self, out: &mut Vec<u8>) {
        Reply::new(
            codes::SERVICE_UNAVAILABLE,
            status::SYSTEM_NOT_ACCEPTING,
            "Server shutting down",
        )
        .write_to(out);
        self.state = State::Closed;
    }

    /// Counters for the session's log line.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The envelope so far (HELO name, authenticated user, transaction).
    pub fn envelope(&self) -> &Envelope {
        &self.env
    }

    /// The connection is encrypted (from the start, or after STARTTLS).
    pub fn tls_active(&self) -> bool {
        self.cfg.tls_active
    }

    /// What the session is waiting for from the caller, if anything.
    pub fn waiting_for(&self) -> Option<&'static str> {
        match self.state {
            State::Pending(Pending::Sender) => Some("sender check"),
            State::Pending(Pending::Recipient) => Some("recipient check"),
            State::Pending(Pending::Tls) => Some("TLS handshake"),
            State::Pending(Pending::Delivery) => Some("delivery"),
            State::Pending(Pending::Auth) => Some("authentication"),
            _ => None,
        }
    }

    /// The session is over: send the output and close.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Receiving message content (the data timeout applies, not the
    /// command timeout).
    pub fn in_data(&self) -> bool {
        matches!(self.state, State::Data(_) | State::Bdat { .. })
    }

    /// The envelope and the content not taken yet: after
    /// [`Action::Deliver`], the message is what the caller took (see
    /// [`ServerSession::content_taken`]) followed by this.
    pub fn message(&self) -> (&Envelope, &[u8]) {
        (&self.env, &self.message)
    }

    /// Content received and not taken yet (during DATA or BDAT, and at
    /// [`Action::Deliver`]).
    pub fn pending_content(&self) -> &[u8] {
        &self.message
    }

    /// The caller has taken [`ServerSession::pending_content`] (to stream
    /// a large message to disk as it arrives instead of holding it in
    /// memory): forget it. Size and header limits still count the whole
    /// message.
    pub fn content_taken(&mut self) {
        self.message.clear();
    }

    /// Octets of content received in the current transaction.
    pub fn content_received(&self) -> usize {
        self.received
    }

    /// Consume `input` (advancing it) until an action is needed.
    pub fn handle(&mut self, input: &mut &[u8], out: &mut Vec<u8>) -> Action {
        loop {
            match &mut self.state {
                State::Pending(_) => return Action::NeedInput,
                State::Closed => return Action::Close,
                State::Data(_) | State::Bdat { .. } => {
                    if let Some(a) = self.content(input, out) {
                        return a;
                    }
                }
                State::AuthPlain | State::AuthLoginUser | State::AuthLoginPass(_) => {
                    let Some(line) = self.next_line(input, out) else {
                        return Action::NeedInput;
                    };
                    let action = self.sasl_response(&line, out);
                    if !matches!(action, Action::NeedInput) {
                        return action;
                    }
                    if self.too_many_errors(out) {
                        return Action::Close;
                    }
                }
                _ => {
                    let Some(line) = self.next_line(input, out) else {
                        return Action::NeedInput;
                    };
                    let action = self.command(&line, out);
                    if !matches!(action, Action::NeedInput) {
                        return action;
                    }
                    if self.too_many_errors(out) {
                        return Action::Close;
                    }
                }
            }
        }
    }

    /// Take the next complete command line out of `input`, handling the
    /// length limit. Returns `None` when more input is needed.
    fn next_line(&mut self, input: &mut &[u8], out: &mut Vec<u8>) -> Option<Vec<u8>> {
        loop {
            match memchr::memchr(b'\n', input) {
                Some(p) => {
                    let chunk = &input[..p];
                    *input = &input[p + 1..];
                    if self.discarding {
                        self.discarding = false;
                        self.line.clear();
                        continue;
                    }
                    let mut line = std::mem::take(&mut self.line);
                    line.extend_from_slice(chunk);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if line.len() > self.cfg.max_line_length {
                        self.error(out, replies::line_too_long());
                        continue;
                    }
                    return Some(line);
                }
                None => {
                    if !self.discarding {
                        self.line.extend_from_slice(input);
                        if self.line.len() > self.cfg.max_line_length {
                            self.line = Vec::new();
                            self.discarding = true;
                            self.error(out, replies::line_too_long());
                        }
                    }
                    *input = &[];
                    return None;
                }
            }
        }
    }

    /// Write a refusal that counts towards `max_errors`.
    fn error(&mut self, out: &mut Vec<u8>, reply: Reply) {
        self.stats.errors += 1;
        reply.write_to(out);
    }

    fn too_many_errors(&mut self, out: &mut Vec<u8>) -> bool {
        if self.stats.errors >= self.cfg.max_errors && !matches!(self.state, State::Closed) {
            Reply::new(
                codes::SERVICE_UNAVAILABLE,
                status::SECURITY_OTHER,
                "Too many errors, closing connection",
            )
            .write_to(out);
            self.state = State::Closed;
            return true;
        }
        false
    }

    fn reset_transaction(&mut self) {
        let helo = std::mem::take(&mut self.env.helo);
        let esmtp = self.env.esmtp;
        let authenticated = self.env.authenticated.take();
        self.env = Envelope {
            helo,
            esmtp,
            authenticated,
            ..Envelope::default()
        };
        self.message = Vec::new();
        self.received = 0;
        self.bdat_failed = None;
        self.bdat_overflow = false;
        self.header_scan = HeaderScan::new(self.cfg.header_limits);
    }

    /// Watch content just appended to `message` (from `from` on); once the
    /// header is too large nothing more is kept.
    fn watch_header(&mut self, from: usize) {
        self.received += self.message.len().saturating_sub(from);
        if self.header_scan.excess().is_none() {
            self.header_scan
                .feed(&self.message[from.min(self.message.len())..]);
        }
        if self.header_scan.excess().is_some() {
            self.message.clear();
        }
    }

    /// The header limit the current message passed, if any.
    fn header_excess(&self) -> Option<HeaderExcess> {
        self.header_scan.excess()
    }

    /// One command line: parse it, then hand it to its verb's handler.
    fn command(&mut self, line: &[u8], out: &mut Vec<u8>) -> Action {
        let mut with_crlf = Vec::with_capacity(line.len() + 2);
        with_crlf.extend_from_slice(line);
        with_crlf.extend_from_slice(b"\r\n");
        let parsed = Request::parse(&mut with_crlf.iter());
        if matches!(self.state, State::Refused) {
            return match parsed {
                Ok(Request::Quit) => self.quit(out),
                _ => {
                    let reply = Reply::new(
                        codes::BAD_SEQUENCE,
                        status::NOT_AUTHORIZED,
                        "Service refused; send QUIT",
                    );
                    self.error(out, reply);
                    Action::NeedInput
                }
            };
        }
        let req = match parsed {
            Ok(r) => r,
            Err(e) => {
                self.error(out, parse_error_reply(e));
                return Action::NeedInput;
            }
        };
        match req {
            Request::Ehlo { host } => self.ehlo(&host, true, out),
            Request::Helo { host } => self.ehlo(&host, false, out),
            Request::Lhlo { .. } => self.lhlo(out),
            Request::Mail { from } => self.mail(from, out),
            // RFC 5321 4.1.1.3: `RCPT TO:<Postmaster>` without a domain
            // must be accepted; smtp-proto parses it as the empty path.
            Request::Rcpt { mut to } if to.address.is_empty() && is_bare_postmaster(line) => {
                to.address = "postmaster".into();
                self.rcpt(to, out)
            }
            Request::Rcpt { to } => self.rcpt(to, out),
            Request::Data => self.data(out),
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, &initial_response, out),
            Request::StartTls => self.starttls(out),
            Request::Noop { .. } => self.noop(out),
            Request::Rset => self.rset(out),
            Request::Vrfy { .. } => self.vrfy(out),
            Request::Expn { .. } => self.expn(out),
            Request::Help { .. } => self.help(out),
            Request::Quit => self.quit(out),
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                self.not_implemented(out)
            }
        }
    }

    /// The caller's decision on the sender of [`Action::CheckSender`].
    pub fn sender_checked(&mut self, verdict: Verdict, out: &mut Vec<u8>) {
        let pending = self.pending_mail.take();
        match (verdict, pending) {
            (Verdict::Accept, Some((address, eight_bit, smtputf8))) => {
                self.reset_transaction();
                self.env.mail_from = address;
                self.env.body_8bit = eight_bit;
                self.env.smtputf8 = smtputf8;
                self.state = State::Transaction;
                Reply::new(codes::OK, status::ADDRESS_OTHER, "Sender OK").write_to(out);
            }
            (Verdict::Reject(reply), _) => {
                self.state = State::Ready;
                self.stats.errors += 1;
                reply.write_to(out);
            }
            (Verdict::Accept, None) => {
                self.state = State::Ready;
                Reply::new(codes::LOCAL_ERROR, status::SYSTEM_OTHER, "Internal error")
                    .write_to(out);
            }
        }
    }

    /// The caller's decision on the recipient of [`Action::CheckRecipient`].
    pub fn recipient_checked(&mut self, address: String, verdict: Verdict, out: &mut Vec<u8>) {
        self.state = State::Transaction;
        match verdict {
            Verdict::Accept => {
                if !self.env.rcpt_to.contains(&address) {
                    self.env.rcpt_to.push(address);
                }
                Reply::new(codes::OK, status::DEST_VALID, "Recipient OK").write_to(out);
            }
            Verdict::Reject(reply) => {
                self.stats.rejected_rcpts += 1;
                self.stats.errors += 1;
                reply.write_to(out);
            }
        }
    }

    /// The TLS handshake after STARTTLS completed: back to the start
    /// (RFC 3207 4.2: forget everything, the client must EHLO again).
    pub fn tls_started(&mut self) {
        self.cfg.tls_active = true;
        self.reset_transaction();
        self.env.helo.clear();
        self.env.authenticated = None;
        self.state = State::Connected;
        self.line.clear();
        self.discarding = false;
    }

    /// The caller stored (or refused) the message of [`Action::Deliver`];
    /// `reply` is the final reply (2xx only when the message is durable).
    pub fn delivered(&mut self, reply: &Reply, out: &mut Vec<u8>) {
        if reply.is_positive() {
            self.stats.messages += 1;
        }
        reply.write_to(out);
        self.reset_transaction();
        self.state = State::Ready;
    }

    /// The caller's verdict on [`Action::Authenticate`]: the canonical
    /// address on success.
    pub fn auth_result(&mut self, user: Option<String>, out: &mut Vec<u8>) {
        self.state = State::Ready;
        match user {
            Some(u) => {
                self.env.authenticated = Some(u);
                Reply::new(
                    codes::AUTH_OK,
                    status::SECURITY_OTHER,
                    "Authentication successful",
                )
                .write_to(out);
            }
            None => self.error(out, replies::auth_invalid()),
        }
    }
}

/// Is `line` `RCPT TO:<postmaster>` (any case, parameters allowed)?
fn is_bare_postmaster(line: &[u8]) -> bool {
    let Ok(line) = std::str::from_utf8(line) else {
        return false;
    };
    let line = line.trim_end();
    let Some((verb, path)) = line.split_once(':') else {
        return false;
    };
    let verb: Vec<&str> = verb.split_ascii_whitespace().collect();
    verb.len() == 2
        && verb[0].eq_ignore_ascii_case("RCPT")
        && verb[1].eq_ignore_ascii_case("TO")
        && path
            .trim_start()
            .get(..12)
            .is_some_and(|p| p.eq_ignore_ascii_case("<postmaster>"))
}

/// The reply to a line `smtp-proto` could not parse.
fn parse_error_reply(e: smtp_proto::Error) -> Reply {
    use smtp_proto::Error;
    match e {
        Error::UnknownCommand => Reply::new(
            codes::SYNTAX_ERROR,
            status::INVALID_COMMAND,
            "Command unrecognized",
        ),
        Error::InvalidSenderAddress => replies::bad_sender_syntax(),
        Error::InvalidRecipientAddress => replies::bad_recipient_syntax(codes::PARAM_SYNTAX_ERROR),
        Error::SyntaxError { syntax } => Reply::new(
            codes::PARAM_SYNTAX_ERROR,
            status::INVALID_ARGUMENTS,
            format!("Syntax: {syntax}"),
        ),
        Error::InvalidParameter { param } => Reply::new(
            codes::PARAM_SYNTAX_ERROR,
            status::INVALID_ARGUMENTS,
            format!("Invalid parameter {param}"),
        ),
        Error::UnsupportedParameter { param } => Reply::new(
            codes::PARAMS_NOT_RECOGNIZED,
            status::INVALID_ARGUMENTS,
            format!("Unsupported parameter {}", sanitize(&param)),
        ),
        _ => Reply::new(codes::SYNTAX_ERROR, status::SYNTAX_ERROR, "Syntax error"),
    }
}

/// Make client-supplied text safe to echo and log: printable ASCII only,
/// at most 255 characters.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(255)
        .collect()
}

#[cfg(test)]
mod tests;
