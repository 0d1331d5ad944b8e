//! MAIL FROM (RFC 5321 3.3, 4.1.1.2; SIZE RFC 1870, BODY RFC 6152,
//! SMTPUTF8 RFC 6531): the preconditions and the parameters. The sender
//! itself is the caller's to judge ([`Action::CheckSender`], answered with
//! [`ServerSession::sender_checked`]).

use std::borrow::Cow;

use smtp_proto::{MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_SMTPUTF8, MailFrom};

use super::{Action, Pending, ServerSession, State};

impl ServerSession {
    /// MAIL FROM: a transaction may start; ask the caller about the sender.
    pub(super) fn mail(&mut self, from: MailFrom<Cow<'_, str>>, out: &mut Vec<u8>) -> Action {
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
}
