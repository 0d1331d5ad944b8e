//! EHLO and HELO (RFC 5321 4.1.1.1): a fresh start, and the list of
//! extensions we offer; LHLO is refused (this is not an LMTP server).

use super::{Action, ServerSession, State, sanitize};
use crate::reply::{Reply, codes, status};

impl ServerSession {
    /// EHLO (`esmtp`) or HELO: reset, remember the client's name, answer
    /// with our name (and, after EHLO, our extensions).
    pub(super) fn ehlo(&mut self, host: &str, esmtp: bool, out: &mut Vec<u8>) -> Action {
        self.reset_transaction();
        self.env.helo = sanitize(host);
        self.env.esmtp = esmtp;
        self.state = State::Ready;
        let name = &self.cfg.hostname;
        if !esmtp {
            Reply::plain(codes::OK, name.as_str()).write_to(out);
            return Action::NeedInput;
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
        Reply {
            code: codes::OK,
            enhanced: None,
            lines: caps,
        }
        .write_to(out);
        Action::NeedInput
    }

    /// LHLO: we speak SMTP, not LMTP (RFC 2033).
    pub(super) fn lhlo(&mut self, out: &mut Vec<u8>) -> Action {
        let reply = Reply::new(
            codes::SYNTAX_ERROR,
            status::INVALID_COMMAND,
            "This is not an LMTP server",
        );
        self.error(out, reply);
        Action::NeedInput
    }
}
