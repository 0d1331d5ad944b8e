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
//! | [`Action::Deliver`] | verifies and stores [`ServerSession::message`] durably | [`ServerSession::delivered`] |
//! | [`Action::Close`] | flushes and closes | — |
//!
//! Relay protection lives with the caller (only it knows the local domains),
//! but the session guarantees that no message is ever handed over without at
//! least one recipient the caller accepted.

use smtp_proto::{MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_SMTPUTF8, Request};

use crate::data::{DataDecoder, DataEnd};
use crate::reply::{Reply, codes, status};

/// Fixed facts about one connection.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our name, for the greeting and EHLO.
    pub hostname: String,
    pub max_message_size: usize,
    pub max_recipients: usize,
    pub max_line_length: usize,
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
    pub body_8bit: bool,
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
    /// Decide on this reverse-path (`""` is the null sender).
    CheckSender { address: String },
    /// Decide on this recipient.
    CheckRecipient { address: String },
    /// Verify these credentials (AUTH PLAIN/LOGIN), then call
    /// [`ServerSession::auth_result`].
    Authenticate { user: String, password: Vec<u8> },
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
    pub messages: u64,
    pub rejected_rcpts: u64,
    pub errors: u32,
}

/// One SMTP server session. See the module docs.
#[derive(Debug)]
pub struct ServerSession {
    cfg: SessionConfig,
    state: State,
    env: Envelope,
    /// Message content (DATA decoded or BDAT chunks), without our headers.
    message: Vec<u8>,
    /// BDAT: the transaction failed; chunks are read and thrown away until LAST.
    bdat_failed: Option<String>,
    bdat_overflow: bool,
    /// Partial command line carried between `handle` calls.
    line: Vec<u8>,
    /// Discarding the rest of an overlong line.
    discarding: bool,
    /// A reverse-path/recipient under consideration while pending.
    pending_mail: Option<(String, bool, bool)>,
    stats: Stats,
}

const OK: &str = "250 2.0.0 OK\r\n";

impl ServerSession {
    pub fn new(cfg: SessionConfig) -> Self {
        ServerSession {
            cfg,
            state: State::Connected,
            env: Envelope::default(),
            message: Vec::new(),
            bdat_failed: None,
            bdat_overflow: false,
            line: Vec::new(),
            discarding: false,
            pending_mail: None,
            stats: Stats::default(),
        }
    }

    /// Write the `220` greeting.
    pub fn greeting(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("220 {} ESMTP postoffice\r\n", self.cfg.hostname).as_bytes());
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

    pub fn envelope(&self) -> &Envelope {
        &self.env
    }

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

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Receiving message content (the data timeout applies, not the
    /// command timeout).
    pub fn in_data(&self) -> bool {
        matches!(self.state, State::Data(_) | State::Bdat { .. })
    }

    /// The complete message and its envelope, after [`Action::Deliver`].
    pub fn message(&self) -> (&Envelope, &[u8]) {
        (&self.env, &self.message)
    }

    /// Consume `input` (advancing it) until an action is needed.
    pub fn handle(&mut self, input: &mut &[u8], out: &mut Vec<u8>) -> Action {
        loop {
            match &mut self.state {
                State::Pending(_) => return Action::NeedInput,
                State::Closed => return Action::Close,
                State::Data(dec) => {
                    let (n, end) = dec.decode(input, &mut self.message);
                    *input = &input[n..];
                    match end {
                        None => return Action::NeedInput,
                        Some(end) => {
                            if let Some(a) = self.data_finished(end, out) {
                                return a;
                            }
                        }
                    }
                }
                State::Bdat { remaining, last } => {
                    let take = (*remaining).min(input.len());
                    let chunk = &input[..take];
                    *input = &input[take..];
                    *remaining -= take;
                    let (remaining, last) = (*remaining, *last);
                    if self.bdat_failed.is_none() && !self.bdat_overflow {
                        if self.message.len() + chunk.len() > self.cfg.max_message_size {
                            self.bdat_overflow = true;
                            self.message = Vec::new();
                        } else {
                            self.message.extend_from_slice(chunk);
                        }
                    }
                    if remaining > 0 {
                        return Action::NeedInput;
                    }
                    if let Some(a) = self.bdat_chunk_done(last, out) {
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
                        self.error(out, "500 5.5.2 Line too long\r\n");
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
                            self.error(out, "500 5.5.2 Line too long\r\n");
                        }
                    }
                    *input = &[];
                    return None;
                }
            }
        }
    }

    fn error(&mut self, out: &mut Vec<u8>, reply: &str) {
        self.stats.errors += 1;
        out.extend_from_slice(reply.as_bytes());
    }

    fn too_many_errors(&mut self, out: &mut Vec<u8>) -> bool {
        if self.stats.errors >= self.cfg.max_errors && !matches!(self.state, State::Closed) {
            out.extend_from_slice(b"421 4.7.0 Too many errors, closing connection\r\n");
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
        self.bdat_failed = None;
        self.bdat_overflow = false;
    }

    fn ehlo(&mut self, host: &str, esmtp: bool, out: &mut Vec<u8>) {
        self.reset_transaction();
        self.env.helo = sanitize(host);
        self.env.esmtp = esmtp;
        self.state = State::Ready;
        let name = &self.cfg.hostname;
        if !esmtp {
            out.extend_from_slice(format!("250 {name}\r\n").as_bytes());
            return;
        }
        let mut caps = vec![
            format!("{name} greets {}", self.env.helo),
            "PIPELINING".into(),
            format!("SIZE {}", self.cfg.max_message_size),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if self.cfg.starttls_available && !self.cfg.tls_active {
            caps.push("STARTTLS".into());
        }
        if self.auth_offered() {
            caps.push("AUTH PLAIN LOGIN".into());
        }
        caps.extend(["SMTPUTF8".into(), "CHUNKING".into(), "HELP".into()]);
        let last = caps.len() - 1;
        for (i, c) in caps.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            out.extend_from_slice(format!("250{sep}{c}\r\n").as_bytes());
        }
    }

    fn command(&mut self, line: &[u8], out: &mut Vec<u8>) -> Action {
        let mut with_crlf = Vec::with_capacity(line.len() + 2);
        with_crlf.extend_from_slice(line);
        with_crlf.extend_from_slice(b"\r\n");
        let parsed = Request::parse(&mut with_crlf.iter());
        if matches!(self.state, State::Refused) {
            return match parsed {
                Ok(Request::Quit) => self.quit(out),
                _ => {
                    self.error(out, "503 5.7.1 Service refused; send QUIT\r\n");
                    Action::NeedInput
                }
            };
        }
        let req = match parsed {
            Ok(r) => r,
            Err(e) => {
                let reply = match e {
                    smtp_proto::Error::UnknownCommand => {
                        "500 5.5.1 Command unrecognized\r\n".to_string()
                    }
                    smtp_proto::Error::InvalidSenderAddress => {
                        "501 5.1.7 Bad sender address syntax\r\n".to_string()
                    }
                    smtp_proto::Error::InvalidRecipientAddress => {
                        "501 5.1.3 Bad recipient address syntax\r\n".to_string()
                    }
                    smtp_proto::Error::SyntaxError { syntax } => {
                        format!("501 5.5.4 Syntax: {syntax}\r\n")
                    }
                    smtp_proto::Error::InvalidParameter { param } => {
                        format!("501 5.5.4 Invalid parameter {param}\r\n")
                    }
                    smtp_proto::Error::UnsupportedParameter { param } => {
                        format!("555 5.5.4 Unsupported parameter {}\r\n", sanitize(&param))
                    }
                    _ => "500 5.5.2 Syntax error\r\n".to_string(),
                };
                self.error(out, &reply);
                return Action::NeedInput;
            }
        };
        match req {
            Request::Ehlo { host } => {
                self.ehlo(&host, true, out);
                Action::NeedInput
            }
            Request::Helo { host } => {
                self.ehlo(&host, false, out);
                Action::NeedInput
            }
            Request::Lhlo { .. } => {
                self.error(out, "500 5.5.1 This is not an LMTP server\r\n");
                Action::NeedInput
            }
            Request::Quit => self.quit(out),
            Request::Noop { .. } => {
                out.extend_from_slice(OK.as_bytes());
                Action::NeedInput
            }
            Request::Rset => {
                if !matches!(self.state, State::Connected) {
                    self.reset_transaction();
                    self.state = State::Ready;
                }
                out.extend_from_slice(OK.as_bytes());
                Action::NeedInput
            }
            Request::Vrfy { .. } => {
                // RFC 5321 3.5.3: 252 reveals nothing about which users exist.
                out.extend_from_slice(
                    b"252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery\r\n",
                );
                Action::NeedInput
            }
            Request::Expn { .. } => {
                self.error(out, "502 5.5.1 EXPN not available\r\n");
                Action::NeedInput
            }
            Request::Help { .. } => {
                out.extend_from_slice(
                    b"214-2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY STARTTLS\r\n214 2.0.0 See RFC 5321\r\n",
                );
                Action::NeedInput
            }
            Request::StartTls => {
                if self.cfg.tls_active {
                    self.error(out, "503 5.5.1 TLS already active\r\n");
                    return Action::NeedInput;
                }
                if !self.cfg.starttls_available {
                    self.error(out, "502 5.5.1 STARTTLS not available\r\n");
                    return Action::NeedInput;
                }
                if matches!(self.state, State::Transaction) {
                    self.error(
                        out,
                        "503 5.5.1 STARTTLS not allowed during a mail transaction\r\n",
                    );
                    return Action::NeedInput;
                }
                out.extend_from_slice(b"220 2.0.0 Ready to start TLS\r\n");
                self.state = State::Pending(Pending::Tls);
                Action::StartTls
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, &initial_response, out),
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                self.error(out, "502 5.5.1 Command not implemented\r\n");
                Action::NeedInput
            }
            Request::Mail { from } => {
                match self.state {
                    State::Connected => {
                        self.error(out, "503 5.5.1 Send EHLO/HELO first\r\n");
                        return Action::NeedInput;
                    }
                    State::Transaction => {
                        self.error(out, "503 5.5.1 Nested MAIL command\r\n");
                        return Action::NeedInput;
                    }
                    _ => {}
                }
                if self.cfg.submission && self.env.authenticated.is_none() {
                    self.error(out, "530 5.7.0 Authentication required\r\n");
                    return Action::NeedInput;
                }
                if from.flags & MAIL_BODY_BINARYMIME != 0 {
                    self.error(out, "555 5.5.4 BODY=BINARYMIME not supported\r\n");
                    return Action::NeedInput;
                }
                if from.size > self.cfg.max_message_size {
                    self.error(
                        out,
                        "552 5.3.4 Message size exceeds fixed maximum message size\r\n",
                    );
                    return Action::NeedInput;
                }
                let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
                if !smtputf8 && !from.address.is_ascii() {
                    self.error(out, "553 5.6.7 Non-ASCII address requires SMTPUTF8\r\n");
                    return Action::NeedInput;
                }
                if from.address.bytes().any(|b| b.is_ascii_control()) {
                    self.error(out, "501 5.1.7 Bad sender address syntax\r\n");
                    return Action::NeedInput;
                }
                let address = from.address.into_owned();
                self.pending_mail = Some((
                    address.clone(),
                    from.flags & MAIL_BODY_8BITMIME != 0,
                    smtputf8,
                ));
                self.state = State::Pending(Pending::Sender);
                Action::CheckSender { address }
            }
            Request::Rcpt { to } => {
                match self.state {
                    State::Transaction => {}
                    State::Connected => {
                        self.error(out, "503 5.5.1 Send EHLO/HELO first\r\n");
                        return Action::NeedInput;
                    }
                    _ => {
                        self.error(out, "503 5.5.1 Need MAIL before RCPT\r\n");
                        return Action::NeedInput;
                    }
                }
                if self.env.rcpt_to.len() >= self.cfg.max_recipients {
                    // RFC 5321 4.5.3.1.10: 452 for too many recipients.
                    self.stats.rejected_rcpts += 1;
                    out.extend_from_slice(b"452 4.5.3 Too many recipients\r\n");
                    return Action::NeedInput;
                }
                if (!self.env.smtputf8 && !to.address.is_ascii())
                    || to.address.bytes().any(|b| b.is_ascii_control())
                {
                    self.error(out, "553 5.1.3 Bad recipient address syntax\r\n");
                    return Action::NeedInput;
                }
                if to.address.is_empty() {
                    self.error(out, "501 5.1.3 Bad recipient address syntax\r\n");
                    return Action::NeedInput;
                }
                self.state = State::Pending(Pending::Recipient);
                Action::CheckRecipient {
                    address: to.address.into_owned(),
                }
            }
            Request::Data => {
                if let Some(a) = self.check_can_send_content(out, false) {
                    return a;
                }
                if self.env.chunking {
                    self.error(out, "503 5.5.1 DATA not allowed after BDAT\r\n");
                    return Action::NeedInput;
                }
                out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                self.message = Vec::new();
                self.state = State::Data(DataDecoder::new(self.cfg.max_message_size));
                Action::NeedInput
            }
            Request::Bdat {
                chunk_size,
                is_last,
            } => {
                // RFC 3030: the chunk must be read even when the command fails.
                let failure = match self.state {
                    State::Transaction if self.env.rcpt_to.is_empty() => {
                        Some("554 5.5.1 No valid recipients\r\n".to_string())
                    }
                    State::Transaction => None,
                    _ => Some("503 5.5.1 Need MAIL and RCPT before BDAT\r\n".to_string()),
                };
                if failure.is_none() {
                    self.env.chunking = true;
                }
                if let Some(f) = failure
                    && self.bdat_failed.is_none()
                {
                    self.bdat_failed = Some(f);
                }
                self.state = State::Bdat {
                    remaining: chunk_size,
                    last: is_last,
                };
                Action::NeedInput
            }
        }
    }

    fn quit(&mut self, out: &mut Vec<u8>) -> Action {
        out.extend_from_slice(b"221 2.0.0 Bye\r\n");
        self.state = State::Closed;
        Action::Close
    }

    /// DATA/BDAT preconditions; `Some` when refused.
    fn check_can_send_content(&mut self, out: &mut Vec<u8>, _bdat: bool) -> Option<Action> {
        match self.state {
            State::Transaction if !self.env.rcpt_to.is_empty() => None,
            State::Transaction => {
                self.error(out, "554 5.5.1 No valid recipients\r\n");
                Some(Action::NeedInput)
            }
            State::Connected => {
                self.error(out, "503 5.5.1 Send EHLO/HELO first\r\n");
                Some(Action::NeedInput)
            }
            _ => {
                self.error(out, "503 5.5.1 Need MAIL and RCPT before DATA\r\n");
                Some(Action::NeedInput)
            }
        }
    }

    fn data_finished(&mut self, end: DataEnd, out: &mut Vec<u8>) -> Option<Action> {
        if end.too_big {
            self.reset_transaction();
            self.state = State::Ready;
            out.extend_from_slice(b"552 5.3.4 Message size exceeds fixed maximum message size\r\n");
            return None;
        }
        if end.bare_newline {
            self.reset_transaction();
            self.state = State::Ready;
            out.extend_from_slice(
                b"554 5.6.0 Message contains bare LF or CR; lines must end with CRLF (RFC 5321 2.3.8)\r\n",
            );
            return None;
        }
        self.state = State::Pending(Pending::Delivery);
        Some(Action::Deliver)
    }

    fn bdat_chunk_done(&mut self, last: bool, out: &mut Vec<u8>) -> Option<Action> {
        if let Some(f) = self.bdat_failed.clone() {
            out.extend_from_slice(f.as_bytes());
            self.stats.errors += 1;
            if last {
                self.bdat_failed = None;
                if matches!(self.state, State::Bdat { .. }) {
                    self.reset_transaction();
                    self.state = if self.env.helo.is_empty() {
                        State::Connected
                    } else {
                        State::Ready
                    };
                }
            } else {
                self.state = State::Transaction;
                if self.env.helo.is_empty() {
                    self.state = State::Connected;
                }
            }
            return None;
        }
        if last {
            if self.bdat_overflow {
                self.reset_transaction();
                self.state = State::Ready;
                out.extend_from_slice(
                    b"552 5.3.4 Message size exceeds fixed maximum message size\r\n",
                );
                return None;
            }
            self.state = State::Pending(Pending::Delivery);
            return Some(Action::Deliver);
        }
        self.state = State::Transaction;
        out.extend_from_slice(
            format!("250 2.0.0 {} octets received\r\n", self.message.len()).as_bytes(),
        );
        None
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
                out.extend_from_slice(b"250 2.1.0 Sender OK\r\n");
            }
            (Verdict::Reject(reply), _) => {
                self.state = State::Ready;
                self.stats.errors += 1;
                reply.write_to(out);
            }
            (Verdict::Accept, None) => {
                self.state = State::Ready;
                out.extend_from_slice(b"451 4.3.0 Internal error\r\n");
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
                out.extend_from_slice(b"250 2.1.5 Recipient OK\r\n");
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
}

impl ServerSession {
    /// AUTH is advertised and accepted on this connection now.
    fn auth_offered(&self) -> bool {
        self.cfg.submission
            && self.env.authenticated.is_none()
            && (self.cfg.tls_active || self.cfg.plaintext_auth)
    }

    fn auth(&mut self, mechanism: u64, initial: &str, out: &mut Vec<u8>) -> Action {
        if !self.cfg.submission {
            self.error(out, "503 5.5.1 AUTH not available on this port\r\n");
            return Action::NeedInput;
        }
        if self.env.authenticated.is_some() {
            self.error(out, "503 5.5.1 Already authenticated\r\n");
            return Action::NeedInput;
        }
        match self.state {
            State::Connected => {
                self.error(out, "503 5.5.1 Send EHLO first\r\n");
                return Action::NeedInput;
            }
            State::Transaction => {
                self.error(
                    out,
                    "503 5.5.1 AUTH not allowed during a mail transaction\r\n",
                );
                return Action::NeedInput;
            }
            _ => {}
        }
        if !self.cfg.tls_active && !self.cfg.plaintext_auth {
            // RFC 4954 6.
            self.error(
                out,
                "538 5.7.11 Encryption required for requested authentication mechanism\r\n",
            );
            return Action::NeedInput;
        }
        let initial = (!initial.is_empty()).then_some(initial);
        match mechanism {
            smtp_proto::AUTH_PLAIN => match initial {
                Some(data) => self.sasl_plain(data.as_bytes(), out),
                None => {
                    self.state = State::AuthPlain;
                    out.extend_from_slice(b"334 \r\n");
                    Action::NeedInput
                }
            },
            smtp_proto::AUTH_LOGIN => match initial {
                Some(data) => match decode_b64(data.as_bytes()) {
                    Some(u) => {
                        self.state = State::AuthLoginPass(String::from_utf8_lossy(&u).into_owned());
                        out.extend_from_slice(b"334 UGFzc3dvcmQ6\r\n");
                        Action::NeedInput
                    }
                    None => {
                        self.error(out, "501 5.5.2 Invalid base64 data\r\n");
                        Action::NeedInput
                    }
                },
                None => {
                    self.state = State::AuthLoginUser;
                    out.extend_from_slice(b"334 VXNlcm5hbWU6\r\n");
                    Action::NeedInput
                }
            },
            _ => {
                self.error(out, "504 5.5.4 Unrecognized authentication type\r\n");
                Action::NeedInput
            }
        }
    }

    fn sasl_response(&mut self, line: &[u8], out: &mut Vec<u8>) -> Action {
        let state = std::mem::replace(&mut self.state, State::Ready);
        if line == b"*" {
            self.error(out, "501 5.0.0 Authentication cancelled\r\n");
            return Action::NeedInput;
        }
        match state {
            State::AuthPlain => self.sasl_plain(line, out),
            State::AuthLoginUser => match decode_b64(line) {
                Some(u) => {
                    self.state = State::AuthLoginPass(String::from_utf8_lossy(&u).into_owned());
                    out.extend_from_slice(b"334 UGFzc3dvcmQ6\r\n");
                    Action::NeedInput
                }
                None => {
                    self.error(out, "501 5.5.2 Invalid base64 data\r\n");
                    Action::NeedInput
                }
            },
            State::AuthLoginPass(user) => match decode_b64(line) {
                Some(password) => {
                    self.state = State::Pending(Pending::Auth);
                    Action::Authenticate { user, password }
                }
                None => {
                    self.error(out, "501 5.5.2 Invalid base64 data\r\n");
                    Action::NeedInput
                }
            },
            other => {
                self.state = other;
                Action::NeedInput
            }
        }
    }

    fn sasl_plain(&mut self, data: &[u8], out: &mut Vec<u8>) -> Action {
        let Some(raw) = decode_b64(data) else {
            self.state = State::Ready;
            self.error(out, "501 5.5.2 Invalid base64 data\r\n");
            return Action::NeedInput;
        };
        // authzid NUL authcid NUL passwd; acting as someone else is not
        // supported, so a non-empty authzid must equal the authcid.
        let mut parts = raw.splitn(3, |&b| b == 0);
        let (Some(authz), Some(user), Some(password)) = (parts.next(), parts.next(), parts.next())
        else {
            self.state = State::Ready;
            self.error(out, "501 5.5.2 Malformed PLAIN response\r\n");
            return Action::NeedInput;
        };
        if user.is_empty() || (!authz.is_empty() && authz != user) {
            self.state = State::Ready;
            self.error(out, "535 5.7.8 Authentication credentials invalid\r\n");
            return Action::NeedInput;
        }
        self.state = State::Pending(Pending::Auth);
        Action::Authenticate {
            user: String::from_utf8_lossy(user).into_owned(),
            password: password.to_vec(),
        }
    }

    /// The caller's verdict on [`Action::Authenticate`]: the canonical
    /// address on success.
    pub fn auth_result(&mut self, user: Option<String>, out: &mut Vec<u8>) {
        self.state = State::Ready;
        match user {
            Some(u) => {
                self.env.authenticated = Some(u);
                out.extend_from_slice(b"235 2.7.0 Authentication successful\r\n");
            }
            None => self.error(out, "535 5.7.8 Authentication credentials invalid\r\n"),
        }
    }
}

fn decode_b64(data: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    if data == b"=" {
        return Some(Vec::new());
    }
    base64::engine::general_purpose::STANDARD.decode(data).ok()
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
