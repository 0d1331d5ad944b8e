//! EHLO and HELO (RFC 5321 4.1.1.1): a fresh start, and the list of
//! extensions we offer; LHLO is refused (this is not an LMTP server).

use super::{Action, ServerSession, State, sanitize};

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
            out.extend_from_slice(format!("250 {name}\r\n").as_bytes());
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
        let last = caps.len() - 1;
        for (i, c) in caps.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            out.extend_from_slice(format!("250{sep}{c}\r\n").as_bytes());
        }
        Action::NeedInput
    }

    /// LHLO: we speak SMTP, not LMTP (RFC 2033).
    pub(super) fn lhlo(&mut self, out: &mut Vec<u8>) -> Action {
        self.error(out, "500 5.5.1 This is not an LMTP server\r\n");
        Action::NeedInput
    }
}
