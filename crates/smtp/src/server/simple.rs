//! The verbs with one fixed answer: NOOP, RSET, VRFY, EXPN, HELP, QUIT, and
//! the ones we do not implement (ETRN, ATRN, BURL).

use super::{Action, OK, ServerSession, State};

impl ServerSession {
    /// NOOP (RFC 5321 4.1.1.9).
    pub(super) fn noop(&mut self, out: &mut Vec<u8>) -> Action {
        out.extend_from_slice(OK.as_bytes());
        Action::NeedInput
    }

    /// RSET (RFC 5321 4.1.1.5): abort the transaction, keep the greeting.
    pub(super) fn rset(&mut self, out: &mut Vec<u8>) -> Action {
        if !matches!(self.state, State::Connected) {
            self.reset_transaction();
            self.state = State::Ready;
        }
        out.extend_from_slice(OK.as_bytes());
        Action::NeedInput
    }

    /// VRFY (RFC 5321 3.5.3): 252 reveals nothing about which users exist.
    pub(super) fn vrfy(&mut self, out: &mut Vec<u8>) -> Action {
        out.extend_from_slice(
            b"252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery\r\n",
        );
        Action::NeedInput
    }

    /// EXPN (RFC 5321 3.5.3): mailing lists stay private.
    pub(super) fn expn(&mut self, out: &mut Vec<u8>) -> Action {
        self.error(out, "502 5.5.1 EXPN not available\r\n");
        Action::NeedInput
    }

    /// HELP (RFC 5321 4.1.1.8).
    pub(super) fn help(&mut self, out: &mut Vec<u8>) -> Action {
        out.extend_from_slice(
            b"214-2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY STARTTLS\r\n214 2.0.0 See RFC 5321\r\n",
        );
        Action::NeedInput
    }

    /// QUIT (RFC 5321 4.1.1.10): `221` and close.
    pub(super) fn quit(&mut self, out: &mut Vec<u8>) -> Action {
        out.extend_from_slice(b"221 2.0.0 Bye\r\n");
        self.state = State::Closed;
        Action::Close
    }

    /// ETRN, ATRN, BURL: recognized, not implemented.
    pub(super) fn not_implemented(&mut self, out: &mut Vec<u8>) -> Action {
        self.error(out, "502 5.5.1 Command not implemented\r\n");
        Action::NeedInput
    }
}
