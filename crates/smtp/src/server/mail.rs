//! MAIL FROM (RFC 5321 3.3, 4.1.1.2; SIZE RFC 1870, BODY RFC 6152,
//! SMTPUTF8 RFC 6531): the preconditions and the parameters. The sender
//! itself is the caller's to judge ([`Action::CheckSender`], answered with
//! [`ServerSession::sender_checked`]).

use std::borrow::Cow;

use smtp_proto::{MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_SMTPUTF8, MailFrom};

use super::{Action, Pending, ServerSession, State, replies};
use crate::reply::{Reply, codes, status};

impl ServerSession {
    /// MAIL FROM: a transaction may start; ask the caller about the sender.
    pub(super) fn mail(&mut self, from: MailFrom<Cow<'_, str>>, out: &mut Vec<u8>) -> Action {
        match self.state {
            State::Connected => {
                self.error(out, replies::hello_first());
                return Action::NeedInput;
            }
            State::Transaction => {
                self.error(out, replies::bad_sequence("Nested MAIL command"));
                return Action::NeedInput;
            }
            _ => {}
        }
        if self.cfg.submission && self.env.authenticated.is_none() {
            let reply = Reply::new(
                codes::AUTH_REQUIRED,
                status::SECURITY_OTHER,
                "Authentication required",
            );
            self.error(out, reply);
            return Action::NeedInput;
        }
        if from.flags & MAIL_BODY_BINARYMIME != 0 {
            let reply = Reply::new(
                codes::PARAMS_NOT_RECOGNIZED,
                status::INVALID_ARGUMENTS,
                "BODY=BINARYMIME not supported",
            );
            self.error(out, reply);
            return Action::NeedInput;
        }
        if from.size > self.cfg.max_message_size {
            self.error(out, replies::message_too_big());
            return Action::NeedInput;
        }
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        if !smtputf8 && !from.address.is_ascii() {
            let reply = Reply::new(
                codes::MAILBOX_NAME_NOT_ALLOWED,
                status::NON_ASCII_ADDRESS,
                "Non-ASCII address requires SMTPUTF8",
            );
            self.error(out, reply);
            return Action::NeedInput;
        }
        if from.address.bytes().any(|b| b.is_ascii_control()) {
            self.error(out, replies::bad_sender_syntax());
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
