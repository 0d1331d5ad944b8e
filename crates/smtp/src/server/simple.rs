//! The verbs with one fixed answer: NOOP, RSET, VRFY, EXPN, HELP, QUIT, and
//! the ones we do not implement (ETRN, ATRN, BURL).

use super::{Action, ServerSession, State, replies};
use crate::reply::{Reply, codes, status};

impl ServerSession {
    /// NOOP (RFC 5321 4.1.1.9).
    pub(super) fn noop(&mut self, out: &mut Vec<u8>) -> Action {
        replies::ok().write_to(out);
        Action::NeedInput
    }

    /// RSET (RFC 5321 4.1.1.5): abort the transaction, keep the greeting.
    pub(super) fn rset(&mut self, out: &mut Vec<u8>) -> Action {
        if !matches!(self.state, State::Connected) {
            self.reset_transaction();
            self.state = State::Ready;
        }
        replies::ok().write_to(out);
        Action::NeedInput
    }

    /// VRFY (RFC 5321 3.5.3): 252 reveals nothing about which users exist.
    pub(super) fn vrfy(&mut self, out: &mut Vec<u8>) -> Action {
        Reply::new(
            codes::CANNOT_VRFY,
            status::CANNOT_VRFY,
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
        .write_to(out);
        Action::NeedInput
    }

    /// EXPN (RFC 5321 3.5.3): mailing lists stay private.
    pub(super) fn expn(&mut self, out: &mut Vec<u8>) -> Action {
        self.error(out, replies::not_implemented("EXPN not available"));
        Action::NeedInput
    }

    /// HELP (RFC 5321 4.1.1.8).
    pub(super) fn help(&mut self, out: &mut Vec<u8>) -> Action {
        Reply::new(
            codes::HELP,
            status::OTHER,
            "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY STARTTLS\n\
             See RFC 5321",
        )
        .write_to(out);
        Action::NeedInput
    }

    /// QUIT (RFC 5321 4.1.1.10): `221` and close.
    pub(super) fn quit(&mut self, out: &mut Vec<u8>) -> Action {
        Reply::new(codes::CLOSING, status::OTHER, "Bye").write_to(out);
        self.state = State::Closed;
        Action::Close
    }

    /// ETRN, ATRN, BURL: recognized, not implemented.
    pub(super) fn not_implemented(&mut self, out: &mut Vec<u8>) -> Action {
        self.error(out, replies::not_implemented("Command not implemented"));
        Action::NeedInput
    }
}
