//! The SMTP client session state machine: one mail transaction to one server
//! (RFC 5321, with PIPELINING RFC 2920, SIZE RFC 1870, 8BITMIME RFC 6152,
//! ENHANCEDSTATUSCODES RFC 2034/3463, STARTTLS RFC 3207, AUTH PLAIN
//! RFC 4954/4616 and SMTPUTF8 RFC 6531).
//!
//! Like [`crate::server::ServerSession`] it never touches a socket. The
//! caller feeds it the bytes it read with [`ClientSession::handle`], sends
//! whatever [`ClientSession::take_output`] returns, and acts on the
//! [`Action`]:
//!
//! | action | the caller | then calls |
//! | --- | --- | --- |
//! | [`Action::NeedInput`] | sends the output, reads more (EOF: [`ClientSession::connection_lost`]) | `handle` |
//! | [`Action::StartTls`] | runs the TLS handshake on the connection | [`ClientSession::tls_started`] or [`ClientSession::tls_failed`] |
//! | [`Action::SendData`] | sends [`dot_stuff`] of the message | `handle(&[])` |
//! | [`Action::Done`] | sends the output (`QUIT`), closes | [`ClientSession::outcome`] |
//!
//! The result is per recipient ([`Outcome::rcpts`]): a recipient is
//! [`Status::Delivered`] only after the server's 2xx to its RCPT *and* to the
//! end of the DATA content. If the connection is lost after the content was
//! sent but before the final reply, the recipients stay temporary failures
//! (the message may then be sent twice: RFC 5321 section 6.1 accepts that).
//!
//! Host-level failures (a refused greeting, EHLO and HELO both refused, a
//! failed STARTTLS that was required, failed AUTH, a 4xx to MAIL, a
//! connection lost before any recipient was answered) set
//! [`Outcome::try_next_host`]: another MX host of the destination may do
//! better.
//!
//! The session sends `QUIT` when it is done but does not wait for the `221`.

use std::collections::VecDeque;

use base64::Engine;

use crate::reply::{EnhancedCode, Reply, ReplyParser};

/// What the server announced in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// EHLO was accepted (false after the HELO fallback).
    pub esmtp: bool,
    pub pipelining: bool,
    /// `SIZE` was announced; `Some(0)` means no fixed limit.
    pub size: Option<u64>,
    pub starttls: bool,
    /// SASL mechanisms, upper case.
    pub auth: Vec<String>,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    pub enhanced_status_codes: bool,
    pub chunking: bool,
}

impl Capabilities {
    /// From a 250 reply to EHLO (the first line is the server's name).
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities {
            esmtp: true,
            ..Capabilities::default()
        };
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            // Some old servers announce "AUTH=PLAIN LOGIN".
            let (keyword, first_param) = match keyword.split_once('=') {
                Some((k, p)) => (k.to_ascii_uppercase(), Some(p)),
                None => (keyword.to_ascii_uppercase(), None),
            };
            let params: Vec<&str> = first_param.into_iter().chain(words).collect();
            match keyword.as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => {
                    caps.size = Some(params.first().and_then(|p| p.parse().ok()).unwrap_or(0));
                }
                "STARTTLS" => caps.starttls = true,
                "AUTH" => {
                    for p in params {
                        let m = p.to_ascii_uppercase();
                        if !caps.auth.contains(&m) {
                            caps.auth.push(m);
                        }
                    }
                }
                "8BITMIME" => caps.eightbitmime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "CHUNKING" => caps.chunking = true,
                _ => {}
            }
        }
        caps
    }
}

/// Whether and how to use STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Never (the caller cannot do TLS).
    Off,
    /// Use it when the server offers it; go on in plaintext otherwise.
    Opportunistic,
    /// Without TLS the session fails (temporarily).
    Required,
}

/// How the client presents itself.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The EHLO/HELO argument: our host name.
    pub helo_name: String,
    pub tls: TlsMode,
    /// AUTH PLAIN credentials (user, password). They are sent only inside
    /// TLS; without TLS the session fails temporarily instead. A server that
    /// does not offer AUTH PLAIN gets the mail without authentication.
    pub credentials: Option<(String, String)>,
}

/// The one mail transaction of a session.
#[derive(Debug, Clone, Default)]
pub struct Transaction {
    /// The reverse-path; empty for the null sender.
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// Size of the message in octets (for `SIZE=`).
    pub size: u64,
    /// The message has octets above 127 (`BODY=8BITMIME` when offered).
    pub body_8bit: bool,
}

/// What the caller must do next. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    NeedInput,
    StartTls,
    SendData,
    Done,
}

/// A recipient's fate in this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Delivered,
    /// Try again later.
    Temporary,
    /// Give up (bounce).
    Permanent,
}

/// The result for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptResult {
    pub status: Status,
    /// The server reply that decided it, if a reply did.
    pub reply: Option<Reply>,
    /// The reply on one line, or a description of a local failure.
    pub reason: String,
    /// The reply's enhanced code, or one fitting the local failure.
    pub enhanced: EnhancedCode,
}

impl RcptResult {
    fn from_reply(reply: &Reply, context: &str) -> RcptResult {
        let status = if reply.is_positive() {
            Status::Delivered
        } else if reply.is_permanent() {
            Status::Permanent
        } else {
            Status::Temporary
        };
        let reason = if context.is_empty() {
            reply.one_line()
        } else {
            format!("{context}: {}", reply.one_line())
        };
        RcptResult {
            status,
            reply: Some(reply.clone()),
            reason,
            enhanced: reply.status(),
        }
    }

    fn local(status: Status, enhanced: EnhancedCode, reason: impl Into<String>) -> RcptResult {
        RcptResult {
            status,
            reply: None,
            reason: reason.into(),
            enhanced,
        }
    }
}

/// The result of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// One per recipient of the [`Transaction`], in its order.
    pub rcpts: Vec<RcptResult>,
    /// The session failed at the host level: another host may do better.
    pub try_next_host: bool,
    /// The TLS handshake failed (an opportunistic caller may retry in
    /// plaintext).
    pub tls_failed: bool,
    /// The session ran inside TLS.
    pub tls: bool,
    /// The message content was handed to the server (its final reply may
    /// still have been lost).
    pub data_sent: bool,
    /// The server's capabilities (after TLS, if any).
    pub capabilities: Capabilities,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Mail,
    Rcpt(usize),
    Data,
    /// The end of the content (or of an empty content nobody wanted).
    DataEnd {
        ignored: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    TlsHandshake,
    Auth,
    Transaction,
    Done,
}

/// One SMTP client session. See the module docs.
#[derive(Debug)]
pub struct ClientSession {
    cfg: ClientConfig,
    tx: Transaction,
    state: State,
    parser: ReplyParser,
    out: Vec<u8>,
    caps: Capabilities,
    tls_active: bool,
    /// STARTTLS was refused by the server: do not ask again.
    tls_refused: bool,
    /// Commands sent whose replies are awaited, in order.
    expect: VecDeque<Cmd>,
    /// Commands not sent yet (no PIPELINING).
    unsent: VecDeque<Cmd>,
    mail_ok: bool,
    mail_failed: bool,
    accepted: Vec<bool>,
    results: Vec<Option<RcptResult>>,
    /// A reply from the server that decided any recipient's fate, or the
    /// transaction was started: failing after that is not host-level.
    committed: bool,
    try_next_host: bool,
    tls_failed: bool,
    data_sent: bool,
}

impl ClientSession {
    pub fn new(cfg: ClientConfig, tx: Transaction) -> Self {
        let n = tx.rcpt_to.len();
        ClientSession {
            cfg,
            tx,
            state: State::Greeting,
            parser: ReplyParser::new(),
            out: Vec::new(),
            caps: Capabilities::default(),
            tls_active: false,
            tls_refused: false,
            expect: VecDeque::new(),
            unsent: VecDeque::new(),
            mail_ok: false,
            mail_failed: false,
            accepted: vec![false; n],
            results: vec![None; n],
            committed: false,
            try_next_host: false,
            tls_failed: false,
            data_sent: false,
        }
    }

    /// Bytes to send to the server now.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Waiting for the final reply to the message content (the data timeout
    /// applies rather than the command timeout).
    pub fn awaiting_data_reply(&self) -> bool {
        matches!(self.expect.front(), Some(Cmd::DataEnd { ignored: false }))
    }

    /// Consume bytes read from the server (`&[]` to go on with what is
    /// buffered) until an action is needed.
    pub fn handle(&mut self, input: &[u8]) -> Action {
        if self.state == State::Done {
            return Action::Done;
        }
        if self.state == State::TlsHandshake {
            return Action::StartTls;
        }
        self.parser.push(input);
        loop {
            let reply = match self.parser.next_reply() {
                Ok(Some(r)) => r,
                Ok(None) => return Action::NeedInput,
                Err(e) => {
                    let reason = format!("{e} from server");
                    return self.fail_unresolved(None, &reason, EnhancedCode(4, 5, 0));
                }
            };
            let action = self.on_reply(reply);
            if action != Action::NeedInput {
                return action;
            }
        }
    }

    /// The TLS handshake succeeded: everything buffered is discarded and
    /// EHLO is sent again (RFC 3207 4.2).
    pub fn tls_started(&mut self) -> Action {
        self.tls_active = true;
        self.parser.clear();
        self.caps = Capabilities::default();
        self.send_line(&format!("EHLO {}", self.cfg.helo_name));
        self.state = State::Ehlo;
        Action::NeedInput
    }

    /// The TLS handshake failed; the connection is unusable.
    pub fn tls_failed(&mut self, reason: &str) -> Outcome {
        self.tls_failed = true;
        self.try_next_host = true;
        self.state = State::Done;
        self.resolve_rest(
            None,
            &format!("TLS handshake failed: {reason}"),
            EnhancedCode(4, 7, 5),
        );
        self.outcome()
    }

    /// The connection closed or failed (read/write error, timeout).
    pub fn connection_lost(&mut self, reason: &str) -> Outcome {
        if self.state != State::Done {
            let reason = if self.data_sent && self.awaiting_data_reply() {
                format!(
                    "{reason} after the end of data (the message may have been delivered; it will be sent again)"
                )
            } else {
                reason.to_string()
            };
            if !self.committed {
                self.try_next_host = true;
            }
            self.state = State::Done;
            self.resolve_rest(None, &reason, EnhancedCode(4, 4, 2));
        }
        self.outcome()
    }

    /// The result. Recipients without a result yet are temporary failures.
    pub fn outcome(&self) -> Outcome {
        let rcpts = self
            .results
            .iter()
            .map(|r| {
                r.clone().unwrap_or_else(|| {
                    RcptResult::local(
                        Status::Temporary,
                        EnhancedCode(4, 4, 0),
                        "session ended before this recipient was handled",
                    )
                })
            })
            .collect();
        Outcome {
            rcpts,
            try_next_host: self.try_next_host,
            tls_failed: self.tls_failed,
            tls: self.tls_active,
            data_sent: self.data_sent,
            capabilities: self.caps.clone(),
        }
    }

    fn send_line(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn on_reply(&mut self, reply: Reply) -> Action {
        match self.state {
            State::Greeting => {
                if reply.code == 220 {
                    self.send_line(&format!("EHLO {}", self.cfg.helo_name));
                    self.state = State::Ehlo;
                    Action::NeedInput
                } else {
                    self.host_failure(&reply, "refused to talk to us")
                }
            }
            State::Ehlo => {
                if reply.is_positive() {
                    self.caps = Capabilities::from_ehlo(&reply);
                    self.after_hello()
                } else if reply.is_permanent() && !self.tls_active {
                    // RFC 5321 3.2: fall back to HELO.
                    self.send_line(&format!("HELO {}", self.cfg.helo_name));
                    self.state = State::Helo;
                    Action::NeedInput
                } else {
                    self.host_failure(&reply, "EHLO refused")
                }
            }
            State::Helo => {
                if reply.is_positive() {
                    self.caps = Capabilities::default();
                    self.after_hello()
                } else {
                    self.host_failure(&reply, "HELO refused")
                }
            }
            State::StartTls => {
                if reply.code == 220 {
                    self.state = State::TlsHandshake;
                    Action::StartTls
                } else if self.cfg.tls == TlsMode::Required {
                    self.host_failure(&reply, "STARTTLS refused, but TLS is required")
                } else if reply.code == 421 {
                    self.host_failure(&reply, "STARTTLS")
                } else {
                    self.tls_refused = true;
                    self.after_hello()
                }
            }
            State::TlsHandshake => Action::StartTls,
            State::Auth => {
                if reply.code == 235 {
                    self.begin_transaction()
                } else {
                    self.host_failure(&reply, "authentication failed")
                }
            }
            State::Transaction => self.transaction_reply(reply),
            State::Done => Action::Done,
        }
    }

    fn after_hello(&mut self) -> Action {
        if !self.tls_active && !self.tls_refused && self.cfg.tls != TlsMode::Off {
            if self.caps.starttls {
                self.send_line("STARTTLS");
                self.state = State::StartTls;
                return Action::NeedInput;
            }
            if self.cfg.tls == TlsMode::Required {
                return self.local_host_failure(
                    "TLS is required, but the server does not offer STARTTLS",
                    EnhancedCode(4, 7, 4),
                );
            }
        }
        if let Some((user, password)) = self.cfg.credentials.clone() {
            if !self.tls_active {
                return self.local_host_failure(
                    "not sending AUTH credentials without TLS",
                    EnhancedCode(4, 7, 4),
                );
            }
            if self.caps.auth.iter().any(|m| m == "PLAIN") {
                let mut token = Vec::with_capacity(user.len() + password.len() + 2);
                token.push(0);
                token.extend_from_slice(user.as_bytes());
                token.push(0);
                token.extend_from_slice(password.as_bytes());
                let token = base64::engine::general_purpose::STANDARD.encode(&token);
                self.send_line(&format!("AUTH PLAIN {token}"));
                self.state = State::Auth;
                return Action::NeedInput;
            }
        }
        self.begin_transaction()
    }

    fn needs_smtputf8(&self) -> bool {
        !self.tx.mail_from.is_ascii() || self.tx.rcpt_to.iter().any(|r| !r.is_ascii())
    }

    fn begin_transaction(&mut self) -> Action {
        self.state = State::Transaction;
        self.committed = true;
        if self.tx.rcpt_to.is_empty() {
            return self.finish();
        }
        let utf8 = self.needs_smtputf8();
        if utf8 && !self.caps.smtputf8 {
            self.resolve_rest(
                None,
                "the server does not support SMTPUTF8, which the addresses need",
                EnhancedCode(5, 6, 7),
            );
            return self.finish();
        }
        if let Some(max) = self.caps.size
            && max > 0
            && self.tx.size > max
        {
            let reason = format!(
                "message size {} exceeds the server's limit of {max} octets",
                self.tx.size
            );
            self.resolve_rest(None, &reason, EnhancedCode(5, 3, 4));
            return self.finish();
        }
        let mut cmds = vec![Cmd::Mail];
        cmds.extend((0..self.tx.rcpt_to.len()).map(Cmd::Rcpt));
        cmds.push(Cmd::Data);
        if self.caps.pipelining {
            for c in cmds {
                self.send_cmd(c);
            }
        } else {
            self.unsent = cmds.into();
            if let Some(c) = self.unsent.pop_front() {
                self.send_cmd(c);
            }
        }
        Action::NeedInput
    }

    fn send_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Mail => {
                let mut line = format!("MAIL FROM:<{}>", self.tx.mail_from);
                if self.caps.size.is_some() {
                    line.push_str(&format!(" SIZE={}", self.tx.size));
                }
                if self.tx.body_8bit && self.caps.eightbitmime {
                    line.push_str(" BODY=8BITMIME");
                }
                if self.needs_smtputf8() && self.caps.smtputf8 {
                    line.push_str(" SMTPUTF8");
                }
                self.send_line(&line);
            }
            Cmd::Rcpt(i) => {
                let line = format!("RCPT TO:<{}>", self.tx.rcpt_to[i]);
                self.send_line(&line);
            }
            Cmd::Data => self.send_line("DATA"),
            Cmd::DataEnd { .. } => self.send_line("."),
        }
        if !matches!(cmd, Cmd::DataEnd { ignored: false }) {
            self.expect.push_back(cmd);
        }
    }

    fn any_accepted(&self) -> bool {
        self.accepted.iter().any(|&a| a)
    }

    fn transaction_reply(&mut self, reply: Reply) -> Action {
        let Some(cmd) = self.expect.pop_front() else {
            return self.fail_unresolved(
                Some(&reply),
                "unexpected reply from server",
                EnhancedCode(4, 5, 0),
            );
        };
        if reply.code == 421 {
            // The server is closing the connection.
            if cmd == Cmd::Mail {
                self.try_next_host = true;
            }
            self.resolve_rest(Some(&reply), "", reply.status());
            return self.finish();
        }
        match cmd {
            Cmd::Mail => {
                if reply.is_positive() {
                    self.mail_ok = true;
                } else {
                    self.mail_failed = true;
                    if reply.is_transient() {
                        self.try_next_host = true;
                    }
                    let r = RcptResult::from_reply(&reply, "MAIL FROM");
                    let r = if r.status == Status::Delivered {
                        RcptResult {
                            status: Status::Temporary,
                            ..r
                        }
                    } else {
                        r
                    };
                    for slot in self.results.iter_mut().filter(|s| s.is_none()) {
                        *slot = Some(r.clone());
                    }
                }
            }
            Cmd::Rcpt(i) => {
                if !self.mail_failed {
                    if reply.is_positive() {
                        self.accepted[i] = true;
                    } else {
                        self.results[i] = Some(RcptResult::from_reply(&reply, ""));
                    }
                }
            }
            Cmd::Data => {
                if reply.code == 354 {
                    if self.mail_ok && self.any_accepted() {
                        self.expect.push_back(Cmd::DataEnd { ignored: false });
                        self.data_sent = true;
                        return Action::SendData;
                    }
                    // RFC 2920 3.1: no valid recipient but 354 anyway: send
                    // an empty content.
                    self.send_cmd(Cmd::DataEnd { ignored: true });
                    return Action::NeedInput;
                }
                if self.mail_ok && self.any_accepted() {
                    let mut r = RcptResult::from_reply(&reply, "DATA");
                    if r.status == Status::Delivered {
                        r.status = Status::Temporary;
                    }
                    self.resolve_accepted(&r);
                }
            }
            Cmd::DataEnd { ignored } => {
                if !ignored {
                    let mut r = RcptResult::from_reply(&reply, "");
                    if !reply.is_positive() && r.status == Status::Delivered {
                        r.status = Status::Temporary;
                    }
                    self.resolve_accepted(&r);
                }
                return self.finish();
            }
        }
        if !self.expect.is_empty() {
            return Action::NeedInput;
        }
        // No PIPELINING: decide on the next command.
        match self.unsent.pop_front() {
            None => self.finish(),
            Some(_) if self.mail_failed => self.finish(),
            Some(Cmd::Data) if !self.any_accepted() => self.finish(),
            Some(c) => {
                self.send_cmd(c);
                Action::NeedInput
            }
        }
    }

    /// Set the result of every accepted recipient without one.
    fn resolve_accepted(&mut self, r: &RcptResult) {
        for (i, slot) in self.results.iter_mut().enumerate() {
            if slot.is_none() && self.accepted[i] {
                *slot = Some(r.clone());
            }
        }
    }

    /// Set the result of every recipient without one, from a reply (its
    /// class decides; a 2xx here counts as temporary) or a local reason.
    fn resolve_rest(&mut self, reply: Option<&Reply>, reason: &str, enhanced: EnhancedCode) {
        let r = match reply {
            Some(reply) => {
                let mut r = RcptResult::from_reply(reply, reason);
                if r.status == Status::Delivered {
                    r.status = Status::Temporary;
                }
                r
            }
            None => {
                let status = if enhanced.0 == 5 {
                    Status::Permanent
                } else {
                    Status::Temporary
                };
                RcptResult::local(status, enhanced, reason)
            }
        };
        for slot in self.results.iter_mut().filter(|s| s.is_none()) {
            *slot = Some(r.clone());
        }
    }

    /// A failure before the transaction: every recipient is a temporary
    /// failure (RFC 5321 allows a later retry; a 5xx greeting is skipped,
    /// like Postfix's smtp_skip_5xx_greeting), try the next host.
    fn host_failure(&mut self, reply: &Reply, context: &str) -> Action {
        self.try_next_host = true;
        let mut r = RcptResult::from_reply(reply, context);
        r.status = Status::Temporary;
        if r.enhanced.0 != 4 {
            r.enhanced = EnhancedCode(4, r.enhanced.1, r.enhanced.2);
        }
        for slot in self.results.iter_mut().filter(|s| s.is_none()) {
            *slot = Some(r.clone());
        }
        self.finish()
    }

    fn local_host_failure(&mut self, reason: &str, enhanced: EnhancedCode) -> Action {
        self.try_next_host = true;
        self.resolve_rest(None, reason, enhanced);
        self.finish()
    }

    /// A protocol error: every open recipient fails temporarily.
    fn fail_unresolved(
        &mut self,
        reply: Option<&Reply>,
        reason: &str,
        enhanced: EnhancedCode,
    ) -> Action {
        if !self.committed {
            self.try_next_host = true;
        }
        match reply {
            Some(r) => {
                let text = format!("{reason}: {}", r.one_line());
                self.resolve_rest(None, &text, enhanced);
            }
            None => self.resolve_rest(None, reason, enhanced),
        }
        self.finish()
    }

    fn finish(&mut self) -> Action {
        if self.state != State::Done {
            self.send_line("QUIT");
            self.state = State::Done;
        }
        Action::Done
    }
}

/// The message as DATA content: lines starting with `.` get another `.`
/// (RFC 5321 4.5.2), bare CR and bare LF become CRLF, a missing final CRLF
/// is added, and the terminating `.<CRLF>` is appended.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 8);
    let mut line_start = true;
    let mut i = 0;
    while i < message.len() {
        let b = message[i];
        match b {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if message.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                line_start = true;
            }
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                line_start = true;
            }
            b'.' if line_start => {
                out.extend_from_slice(b"..");
                line_start = false;
            }
            _ => {
                out.push(b);
                line_start = false;
            }
        }
        i += 1;
    }
    if !line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(tls: TlsMode) -> ClientConfig {
        ClientConfig {
            helo_name: "client.test".into(),
            tls,
            credentials: None,
        }
    }

    fn tx(rcpts: &[&str]) -> Transaction {
        Transaction {
            mail_from: "alice@src.test".into(),
            rcpt_to: rcpts.iter().map(|s| s.to_string()).collect(),
            size: 100,
            body_8bit: false,
        }
    }

    /// Feed a server line block; return (client output, action).
    fn step(s: &mut ClientSession, input: &str) -> (String, Action) {
        let a = s.handle(input.as_bytes());
        (String::from_utf8(s.take_output()).unwrap(), a)
    }

    const EHLO_PIPE: &str = "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n";

    #[test]
    fn ehlo_capabilities() {
        let mut p = ReplyParser::new();
        p.push(b"250-mx.test greets you\r\n250-PIPELINING\r\n250-SIZE 35882577\r\n250-STARTTLS\r\n250-AUTH PLAIN login\r\n250-AUTH=PLAIN LOGIN CRAM-MD5\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n");
        let caps = Capabilities::from_ehlo(&p.next_reply().unwrap().unwrap());
        assert!(caps.esmtp && caps.pipelining && caps.starttls && caps.eightbitmime);
        assert!(caps.smtputf8 && caps.chunking && caps.enhanced_status_codes);
        assert_eq!(caps.size, Some(35_882_577));
        assert_eq!(caps.auth, vec!["PLAIN", "LOGIN", "CRAM-MD5"]);
        p.push(b"250-mx\r\n250 SIZE\r\n");
        let caps = Capabilities::from_ehlo(&p.next_reply().unwrap().unwrap());
        assert_eq!(caps.size, Some(0));
        assert!(!caps.pipelining && !caps.starttls);
    }

    #[test]
    fn pipelined_transaction_with_per_recipient_results() {
        let mut s = ClientSession::new(
            cfg(TlsMode::Opportunistic),
            tx(&["a@dest.test", "b@dest.test", "c@dest.test"]),
        );
        let (out, a) = step(&mut s, "220 mx.test ESMTP\r\n");
        assert_eq!(
            (out.as_str(), a),
            ("EHLO client.test\r\n", Action::NeedInput)
        );
        let (out, a) = step(&mut s, EHLO_PIPE);
        assert_eq!(a, Action::NeedInput);
        // One batch: MAIL, all RCPTs, DATA.
        assert_eq!(
            out,
            "MAIL FROM:<alice@src.test> SIZE=100\r\nRCPT TO:<a@dest.test>\r\nRCPT TO:<b@dest.test>\r\nRCPT TO:<c@dest.test>\r\nDATA\r\n"
        );
        // Replies arrive in pieces.
        let (out, a) = step(&mut s, "250 2.1.0 ok\r\n250 2.1.5 ok\r\n45");
        assert_eq!((out.as_str(), a), ("", Action::NeedInput));
        let (_, a) = step(
            &mut s,
            "0 4.2.0 greylisted\r\n550 5.1.1 no such user\r\n354 go ahead\r\n",
        );
        assert_eq!(a, Action::SendData);
        assert!(s.awaiting_data_reply());
        let (out, a) = step(&mut s, "");
        assert_eq!((out.as_str(), a), ("", Action::NeedInput));
        let (out, a) = step(&mut s, "250 2.0.0 queued as X\r\n");
        assert_eq!((out.as_str(), a), ("QUIT\r\n", Action::Done));
        let o = s.outcome();
        assert!(!o.try_next_host && o.data_sent && !o.tls);
        assert_eq!(o.rcpts[0].status, Status::Delivered);
        assert_eq!(o.rcpts[0].reason, "250 2.0.0 queued as X");
        assert_eq!(o.rcpts[1].status, Status::Temporary);
        assert_eq!(o.rcpts[1].enhanced, EnhancedCode(4, 2, 0));
        assert_eq!(o.rcpts[2].status, Status::Permanent);
        assert_eq!(o.rcpts[2].reason, "550 5.1.1 no such user");
    }

    #[test]
    fn without_pipelining_commands_go_one_by_one() {
        let mut s = ClientSession::new(cfg(TlsMode::Off), tx(&["a@d.test", "b@d.test"]));
        step(&mut s, "220 hi\r\n");
        let (out, _) = step(&mut s, "250-mx\r\n250 8BITMIME\r\n");
        assert_eq!(out, "MAIL FROM:<alice@src.test>\r\n");
        let (out, _) = step(&mut s, "250 ok\r\n");
        assert_eq!(out, "RCPT TO:<a@d.test>\r\n");
        let (out, _) = step(&mut s, "550 no\r\n");
        assert_eq!(out, "RCPT TO:<b@d.test>\r\n");
        let (out, _) = step(&mut s, "250 ok\r\n");
        assert_eq!(out, "DATA\r\n");
        let (_, a) = step(&mut s, "354 go\r\n");
        assert_eq!(a, Action::SendData);
        let (out, a) = step(&mut s, "554 5.7.1 spam\r\n");
        assert_eq!((out.as_str(), a), ("QUIT\r\n", Action::Done));
        let o = s.outcome();
        assert_eq!(o.rcpts[0].status, Status::Permanent);
        assert_eq!(o.rcpts[0].enhanced, EnhancedCode(5, 0, 0));
        assert_eq!(o.rcpts[1].status, Status::Permanent);
        assert_eq!(o.rcpts[1].reason, "554 5.7.1 spam");
    }

    #[test]
    fn no_data_when_every_recipient_is_refused() {
        let mut s = ClientSession::new(cfg(TlsMode::Off), tx(&["a@d.test"]));
        step(&mut s, "220 hi\r\n");
        step(&mut s, "250 mx\r\n");
        step(&mut s, "250 ok\r\n");
        let (out, a) = step(&mut s, "450 4.2.1 later\r\n");
        assert_eq!((out.as_str(), a), ("QUIT\r\n", Action::Done));
        assert_eq!(s.outcome().rcpts[0].status, Status::Temporary);
        assert!(!s.outcome().data_sent);

        // Pipelined: the server says 354 anyway; an empty content is sent.
        let mut s = ClientSession::new(cfg(TlsMode::Off), tx(&["a@d.test"]));
        step(&mut s, "220 hi\r\n");
        step(&mut s, EHLO_PIPE);
        let (out, a) = step(&mut s, "250 ok\r\n550 no\r\n354 go\r\n");
        assert_eq!((out.as_str(), a), (".\r\n", Action::NeedInput));
        let (out, a) = step(&mut s, "554 no valid recipients\r\n");
        assert_eq!((out.as_str(), a), ("QUIT\r\n", Action::Done));
        let o = s.outcome();
        assert_eq!(o.rcpts[0].status, Status::Permanent);
        assert_eq!(o.rcpts[0].reason, "550 no");
    }

    #[test]
    fn mail_from_refused() {
        let mut s = ClientSession::new(cfg(TlsMode::Off), tx(&["a@d.test", "b@d.test"]));
        step(&mut s, "220 hi\r\n");
        step(&mut s, EHLO_PIPE);
        let (out, a) = step(
            &mut s,
            "553 5.7.1 sender refused\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n",
        );
        assert_eq!((out.as_str(), a), ("QUIT\r\n", Action::Done));
        let o = s.outcome();
        assert!(!o.try_next_host);
        for r in &o.rcpts {
            assert_eq!(r.status, Status::Permanent);
            assert_eq!(r.reason, "MAIL FROM: 553 5.7.1 sender refused");
        }
        // 4xx to MAIL: temporary, and another host may do better.
        let mut s = ClientSession::new(cfg(TlsMode::Off), tx(&["a@d.test"]));
        step(&mut s, "220 hi\r\n");
        step(&mut s, "250 mx\r\n");
        let (_, a) = step(&mut s, "451 4.3.0 local problem\r\n");
        assert_eq!(a, Action::Done);
        let o = s.outcome();
        assert!(o.try_next_host);
        assert_eq!(o.rcpts[0].status, Status::Temporary);
    }

    #[test]
    fn code_421_mid_session() {
        let mut s = ClientSession::new(cfg(TlsMode::Off), tx(&["a@d.test", "b@d.test"]));
        step(&mut s, "220 hi\r\n");
        step(&mut s, EHLO_PIPE);
        let (out, a) = step(
            &mut s,
            "250 ok\r\n550 5.1.1 unknown\r\n421 4.3.2 shutting down\r\n",
        );
        assert_eq!((out.as_str(), a), ("QUIT\r\n", Action::Done));
        let o = s.outcome();
        assert_eq!(o.rcpts[0].status, Status::Permanent);
        assert_eq!(o.rcpts[1].status, Status::Temporary);
        assert_eq!(o.rcpts[1].reason, "421 4.3.2 shutting down");
        assert!(!o.try_next_host);
        // Further input is ignored.
        assert_eq!(s.handle(b"250 late\r\n"), Action::Done);

        // 421 as the greeting: a host-level failure.
        let mut s = ClientSession::new(cfg(TlsMode::Off), tx(&["a@d.test"]));
        let (out, a) = step(&mut s, "421 4.7.0 too busy\r\n");
        assert_eq!((out.as_str(), a), ("QUIT\r\n", Action::Done));
        let o = s.outcome();
        assert!(o.try_next_host);
        assert_eq!(o.rcpts[0].status, Status::Temporary);
        // A 5xx greeting too is only temporary (try the next MX).
        let mut s = ClientSession::new(cfg(TlsMode::Off), tx(&["a@d.test"]));
        step(&mut s, "554 5.7.1 go away\r\n");
        let o = s.outcome();
        assert!(o.try_next_host);
        assert_eq!(o.rcpts[0].status, Status::Temporary);
        assert_eq!(o.rcpts[0].enhanced, EnhancedCode(4, 7, 1));
    }

    #[test]
    fn ehlo_refused_falls_back_to_helo() {
        let mut s = ClientSession::new(cfg(TlsMode::Opportunistic), tx(&["a@d.test"]));
        step(&mut s, "220 old server\r\n");
        let (out, _) = step(&mut s, "502 5.5.2 command not recognized\r\n");
        assert_eq!(out, "HELO client.test\r\n");
        let (out, _) = step(&mut s, "250 hello\r\n");
        assert_eq!(out, "MAIL FROM:<alice@src.test>\r\n");
        assert!(!s.capabilities().esmtp);
        step(&mut s, "250 ok\r\n");
        step(&mut s, "250 ok\r\n");
        step(&mut s, "354 go\r\n");
        let (_, a) = step(&mut s, "250 ok\r\n");
        assert_eq!(a, Action::Done);
        assert_eq!(s.outcome().rcpts[0].status, Status::Delivered);

        // HELO refused as well: host failure.
        let mut s = ClientSession::new(cfg(TlsMode::Off), tx(&["a@d.test"]));
        step(&mut s, "220 x\r\n");
        step(&mut s, "500 what\r\n");
        let (_, a) = step(&mut s, "550 no\r\n");
        assert_eq!(a, Action::Done);
        assert!(s.outcome().try_next_host);
    }

    #[test]
    fn starttls_then_ehlo_again_and_buffered_input_dropped() {
        let mut s = ClientSession::new(cfg(TlsMode::Opportunistic), tx(&["a@d.test"]));
        step(&mut s, "220 x\r\n");
        let (out, _) = step(&mut s, "250-mx\r\n250-STARTTLS\r\n250 PIPELINING\r\n");
        assert_eq!(out, "STARTTLS\r\n");
        // A reply injected behind the 220 must not survive the handshake.
        let (_, a) = step(&mut s, "220 ready\r\n250 injected\r\n");
        assert_eq!(a, Action::StartTls);
        assert_eq!(s.tls_started(), Action::NeedInput);
        assert_eq!(
            String::from_utf8(s.take_output()).unwrap(),
            "EHLO client.test\r\n"
        );
        let (out, _) = step(&mut s, "250-mx\r\n250 PIPELINING\r\n");
        assert!(
            out.starts_with("MAIL FROM:<alice@src.test>\r\nRCPT"),
            "{out}"
        );
        assert!(s.tls_active());
    }

    #[test]
    fn starttls_policies() {
        // Required but not offered.
        let mut s = ClientSession::new(cfg(TlsMode::Required), tx(&["a@d.test"]));
        step(&mut s, "220 x\r\n");
        let (out, a) = step(&mut s, "250-mx\r\n250 PIPELINING\r\n");
        assert_eq!((out.as_str(), a), ("QUIT\r\n", Action::Done));
        let o = s.outcome();
        assert_eq!(o.rcpts[0].status, Status::Temporary);
        assert_eq!(o.rcpts[0].enhanced, EnhancedCode(4, 7, 4));
        // Offered but refused: opportunistic goes on in plaintext.
        let mut s = ClientSession::new(cfg(TlsMode::Opportunistic), tx(&["a@d.test"]));
        step(&mut s, "220 x\r\n");
        step(&mut s, "250-mx\r\n250 STARTTLS\r\n");
        let (out, _) = step(&mut s, "454 4.7.0 TLS not available\r\n");
        assert_eq!(out, "MAIL FROM:<alice@src.test>\r\n");
        // ...required does not.
        let mut s = ClientSession::new(cfg(TlsMode::Required), tx(&["a@d.test"]));
        step(&mut s, "220 x\r\n");
        step(&mut s, "250-mx\r\n250 STARTTLS\r\n");
        let (_, a) = step(&mut s, "454 4.7.0 TLS not available\r\n");
        assert_eq!(a, Action::Done);
        assert!(s.outcome().try_next_host);
        // Handshake failure.
        let mut s = ClientSession::new(cfg(TlsMode::Required), tx(&["a@d.test"]));
        step(&mut s, "220 x\r\n");
        step(&mut s, "250-mx\r\n250 STARTTLS\r\n");
        assert_eq!(step(&mut s, "220 go\r\n").1, Action::StartTls);
        let o = s.tls_failed("invalid certificate");
        assert!(o.tls_failed && o.try_next_host);
        assert_eq!(o.rcpts[0].status, Status::Temporary);
        // TlsMode::Off never asks.
        let mut s = ClientSession::new(cfg(TlsMode::Off), tx(&["a@d.test"]));
        step(&mut s, "220 x\r\n");
        let (out, _) = step(&mut s, "250-mx\r\n250 STARTTLS\r\n");
        assert!(out.starts_with("MAIL"));
    }

    #[test]
    fn auth_plain_only_inside_tls() {
        let mut c = cfg(TlsMode::Opportunistic);
        c.credentials = Some(("user".into(), "pass".into()));
        // No TLS offered: the credentials are not sent.
        let mut s = ClientSession::new(c.clone(), tx(&["a@d.test"]));
        step(&mut s, "220 x\r\n");
        let (out, a) = step(&mut s, "250-mx\r\n250 AUTH PLAIN\r\n");
        assert_eq!((out.as_str(), a), ("QUIT\r\n", Action::Done));
        assert_eq!(s.outcome().rcpts[0].status, Status::Temporary);
        // With TLS.
        let mut s = ClientSession::new(c, tx(&["a@d.test"]));
        step(&mut s, "220 x\r\n");
        step(&mut s, "250-mx\r\n250 STARTTLS\r\n");
        step(&mut s, "220 go\r\n");
        s.tls_started();
        s.take_output();
        let (out, _) = step(&mut s, "250-mx\r\n250 AUTH PLAIN LOGIN\r\n");
        assert_eq!(out, "AUTH PLAIN AHVzZXIAcGFzcw==\r\n");
        let (out, _) = step(&mut s, "235 2.7.0 ok\r\n");
        assert_eq!(out, "MAIL FROM:<alice@src.test>\r\n");
        // Failed authentication: temporary.
        let mut c = cfg(TlsMode::Required);
        c.credentials = Some(("user".into(), "bad".into()));
        let mut s = ClientSession::new(c, tx(&["a@d.test"]));
        step(&mut s, "220 x\r\n");
        step(&mut s, "250-mx\r\n250 STARTTLS\r\n");
        step(&mut s, "220 go\r\n");
        s.tls_started();
        step(&mut s, "250-mx\r\n250 AUTH PLAIN\r\n");
        let (_, a) = step(&mut s, "535 5.7.8 bad credentials\r\n");
        assert_eq!(a, Action::Done);
        let o = s.outcome();
        assert_eq!(o.rcpts[0].status, Status::Temporary);
        assert!(
            o.rcpts[0].reason.contains("535 5.7.8"),
            "{}",
            o.rcpts[0].reason
        );
    }

    #[test]
    fn size_8bitmime_and_smtputf8() {
        let mut t = tx(&["a@d.test"]);
        t.size = 5000;
        let mut s = ClientSession::new(cfg(TlsMode::Off), t);
        step(&mut s, "220 x\r\n");
        let (out, a) = step(&mut s, EHLO_PIPE);
        assert_eq!((out.as_str(), a), ("QUIT\r\n", Action::Done));
        let o = s.outcome();
        assert_eq!(o.rcpts[0].status, Status::Permanent);
        assert_eq!(o.rcpts[0].enhanced, EnhancedCode(5, 3, 4));

        let mut t = tx(&["a@d.test"]);
        t.body_8bit = true;
        let mut s = ClientSession::new(cfg(TlsMode::Off), t);
        step(&mut s, "220 x\r\n");
        let (out, _) = step(&mut s, EHLO_PIPE);
        assert!(
            out.starts_with("MAIL FROM:<alice@src.test> SIZE=100 BODY=8BITMIME\r\n"),
            "{out}"
        );

        let mut t = tx(&["jörg@d.test"]);
        t.mail_from = String::new();
        let mut s = ClientSession::new(cfg(TlsMode::Off), t.clone());
        step(&mut s, "220 x\r\n");
        step(&mut s, EHLO_PIPE);
        assert_eq!(s.outcome().rcpts[0].enhanced, EnhancedCode(5, 6, 7));
        let mut s = ClientSession::new(cfg(TlsMode::Off), t);
        step(&mut s, "220 x\r\n");
        let (out, _) = step(&mut s, "250-mx\r\n250 SMTPUTF8\r\n");
        assert_eq!(out, "MAIL FROM:<> SMTPUTF8\r\n");
    }

    #[test]
    fn connection_lost() {
        // Before anything: host-level.
        let mut s = ClientSession::new(cfg(TlsMode::Off), tx(&["a@d.test"]));
        step(&mut s, "220 x\r\n");
        let o = s.connection_lost("connection reset");
        assert!(o.try_next_host);
        assert_eq!(o.rcpts[0].status, Status::Temporary);
        // After the content was sent, before the final reply: NOT delivered.
        let mut s = ClientSession::new(cfg(TlsMode::Off), tx(&["a@d.test"]));
        step(&mut s, "220 x\r\n");
        step(&mut s, EHLO_PIPE);
        assert_eq!(
            step(&mut s, "250 ok\r\n250 ok\r\n354 go\r\n").1,
            Action::SendData
        );
        let o = s.connection_lost("connection closed");
        assert!(!o.try_next_host && o.data_sent);
        assert_eq!(o.rcpts[0].status, Status::Temporary);
        assert!(o.rcpts[0].reason.contains("may have been delivered"));
        // Garbage from the server.
        let mut s = ClientSession::new(cfg(TlsMode::Off), tx(&["a@d.test"]));
        assert_eq!(step(&mut s, "HTTP/1.1 400 Bad\r\n").1, Action::Done);
        assert!(s.outcome().try_next_host);
    }

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b"a\r\n"), b"a\r\n.\r\n");
        assert_eq!(dot_stuff(b"a"), b"a\r\n.\r\n");
        assert_eq!(
            dot_stuff(b".x\r\n..\r\n.\r\nmid.dle\r\n"),
            b"..x\r\n...\r\n..\r\nmid.dle\r\n.\r\n"
        );
        // Bare LF and bare CR become CRLF (no smuggled terminators).
        assert_eq!(dot_stuff(b"a\n.\nb\rc"), b"a\r\n..\r\nb\r\nc\r\n.\r\n");
        assert_eq!(dot_stuff(b"a\r\n\r\n.\r\n"), b"a\r\n\r\n..\r\n.\r\n");
    }
}
