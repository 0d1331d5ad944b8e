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

use crate::reply::{EnhancedCode, Reply, ReplyParser, codes, status};

mod capabilities;
mod content;

pub use capabilities::Capabilities;
pub use content::{DotStuffer, dot_stuff};

/// Whether and how to use STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
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
    /// Whether STARTTLS is used, and whether it is required.
    pub tls: TlsPolicy,
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
    /// The forward-paths, one RCPT each, in order.
    pub rcpt_to: Vec<String>,
    /// Size of the message in octets (for `SIZE=`).
    pub size: u64,
    /// The message has octets above 127 (`BODY=8BITMIME` when offered).
    pub body_8bit: bool,
}

/// What the caller must do next. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the output, read more from the server.
    NeedInput,
    /// Run the TLS handshake (the server said `220` to STARTTLS).
    StartTls,
    /// Send the [`dot_stuff`]ed message (the server said `354`).
    SendData,
    /// Send the output (`QUIT`) and close: the [`Outcome`] is final.
    Done,
}

/// A recipient's fate in this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The server took responsibility for it (2xx to RCPT and to the data).
    Delivered,
    /// Try again later.
    Temporary,
    /// Give up (bounce).
    Permanent,
}

/// The result for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptResult {
    /// Delivered, or a temporary or permanent failure.
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
    /// A session for one transaction; it starts by waiting for the
    /// server's greeting.
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

    /// What the server announced (after TLS: what it announced inside).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// The session runs inside TLS.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// The session is over ([`Action::Done`] was returned).
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
                    return self.fail_unresolved(None, &reason, status::PROTOCOL_OTHER.transient());
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
            status::CRYPTO_FAILURE.transient(),
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
            self.resolve_rest(None, &reason, status::BAD_CONNECTION.transient());
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
                        status::NETWORK_OTHER.transient(),
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
                if reply.code == codes::READY {
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
                if reply.code == codes::READY {
                    self.state = State::TlsHandshake;
                    Action::StartTls
                } else if self.cfg.tls == TlsPolicy::Required {
                    self.host_failure(&reply, "STARTTLS refused, but TLS is required")
                } else if reply.code == codes::SERVICE_UNAVAILABLE {
                    self.host_failure(&reply, "STARTTLS")
                } else {
                    self.tls_refused = true;
                    self.after_hello()
                }
            }
            State::TlsHandshake => Action::StartTls,
            State::Auth => {
                if reply.code == codes::AUTH_OK {
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
        if !self.tls_active && !self.tls_refused && self.cfg.tls != TlsPolicy::Off {
            if self.caps.starttls {
                self.send_line("STARTTLS");
                self.state = State::StartTls;
                return Action::NeedInput;
            }
            if self.cfg.tls == TlsPolicy::Required {
                return self.local_host_failure(
                    "TLS is required, but the server does not offer STARTTLS",
                    status::SECURITY_NOT_SUPPORTED.transient(),
                );
            }
        }
        if let Some((user, password)) = self.cfg.credentials.clone() {
            if !self.tls_active {
                return self.local_host_failure(
                    "not sending AUTH credentials without TLS",
                    status::SECURITY_NOT_SUPPORTED.transient(),
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
                status::NON_ASCII_ADDRESS.permanent(),
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
            self.resolve_rest(None, &reason, status::MESSAGE_TOO_BIG.permanent());
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
                status::PROTOCOL_OTHER.transient(),
            );
        };
        if reply.code == codes::SERVICE_UNAVAILABLE {
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
                if reply.code == codes::START_DATA {
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
            r.enhanced = r.enhanced.with_class(4);
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

#[cfg(test)]
mod tests;
