//! RCPT TO (RFC 5321 3.3, 4.1.1.3): the preconditions, the recipient
//! limit and the address syntax. Whether the recipient is wanted is the
//! caller's to decide ([`Action::CheckRecipient`], answered with
//! [`ServerSession::recipient_checked`]).

use std::borrow::Cow;

use smtp_proto::RcptTo;

use super::{Action, Pending, ServerSession, State};

impl ServerSession {
    /// RCPT TO: check what the session can check, then ask the caller.
    pub(super) fn rcpt(&mut self, to: RcptTo<Cow<'_, str>>, out: &mut Vec<u8>) -> Action {
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
}
