//! RCPT TO (RFC 5321 3.3, 4.1.1.3): the preconditions, the recipient
//! limit and the address syntax. Whether the recipient is wanted is the
//! caller's to decide ([`Action::CheckRecipient`], answered with
//! [`ServerSession::recipient_checked`]).

use std::borrow::Cow;

use smtp_proto::RcptTo;

use super::{Action, Pending, ServerSession, State, replies};
use crate::reply::{Reply, codes, status};

impl ServerSession {
    /// RCPT TO: check what the session can check, then ask the caller.
    pub(super) fn rcpt(&mut self, to: RcptTo<Cow<'_, str>>, out: &mut Vec<u8>) -> Action {
        match self.state {
            State::Transaction => {}
            State::Connected => {
                self.error(out, replies::hello_first());
                return Action::NeedInput;
            }
            _ => {
                self.error(out, replies::bad_sequence("Need MAIL before RCPT"));
                return Action::NeedInput;
            }
        }
        if self.env.rcpt_to.len() >= self.cfg.max_recipients {
            // RFC 5321 4.5.3.1.10: 452 for too many recipients.
            self.stats.rejected_rcpts += 1;
            Reply::new(
                codes::INSUFFICIENT_STORAGE,
                status::TOO_MANY_RECIPIENTS,
                "Too many recipients",
            )
            .write_to(out);
            return Action::NeedInput;
        }
        if (!self.env.smtputf8 && !to.address.is_ascii())
            || to.address.bytes().any(|b| b.is_ascii_control())
        {
            self.error(
                out,
                replies::bad_recipient_syntax(codes::MAILBOX_NAME_NOT_ALLOWED),
            );
            return Action::NeedInput;
        }
        if to.address.is_empty() {
            self.error(
                out,
                replies::bad_recipient_syntax(codes::PARAM_SYNTAX_ERROR),
            );
            return Action::NeedInput;
        }
        self.state = State::Pending(Pending::Recipient);
        Action::CheckRecipient {
            address: to.address.into_owned(),
        }
    }
}
