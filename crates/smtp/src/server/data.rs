//! Message content: DATA (RFC 5321 4.1.1.4, decoded by
//! [`DataDecoder`]) and BDAT (CHUNKING, RFC 3030). Both end in
//! [`Action::Deliver`] or in a refusal of the whole transaction.

use super::{Action, Pending, ServerSession, State};
use crate::data::{DataDecoder, DataEnd};

impl ServerSession {
    /// DATA: `354`, then content until `<CRLF>.<CRLF>`.
    pub(super) fn data(&mut self, out: &mut Vec<u8>) -> Action {
        if let Some(a) = self.check_can_send_content(out, false) {
            return a;
        }
        if self.env.chunking {
            self.error(out, "503 5.5.1 DATA not allowed after BDAT\r\n");
            return Action::NeedInput;
        }
        out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
        self.message = Vec::new();
        self.state = State::Data(DataDecoder::new(self.cfg.max_message_size));
        Action::NeedInput
    }

    /// BDAT: a chunk of `chunk_size` octets follows the command line; it is
    /// read (and thrown away) even when the command fails (RFC 3030 2).
    pub(super) fn bdat(&mut self, chunk_size: usize, is_last: bool) -> Action {
        // RFC 3030: the chunk must be read even when the command fails.
        let failure = match self.state {
            State::Transaction if self.env.rcpt_to.is_empty() => {
                Some("554 5.5.1 No valid recipients\r\n".to_string())
            }
            State::Transaction => None,
            _ => Some("503 5.5.1 Need MAIL and RCPT before BDAT\r\n".to_string()),
        };
        if failure.is_none() {
            self.env.chunking = true;
        }
        if let Some(f) = failure
            && self.bdat_failed.is_none()
        {
            self.bdat_failed = Some(f);
        }
        self.state = State::Bdat {
            remaining: chunk_size,
            last: is_last,
        };
        Action::NeedInput
    }

    /// Consume message content from `input` (state `Data` or `Bdat`).
    /// `Some` ends [`ServerSession::handle`] with that action; `None` goes
    /// on with commands.
    pub(super) fn content(&mut self, input: &mut &[u8], out: &mut Vec<u8>) -> Option<Action> {
        match &mut self.state {
            State::Data(dec) => {
                let (n, end) = dec.decode(input, &mut self.message);
                *input = &input[n..];
                match end {
                    None => Some(Action::NeedInput),
                    Some(end) => self.data_finished(end, out),
                }
            }
            State::Bdat { remaining, last } => {
                let take = (*remaining).min(input.len());
                let chunk = &input[..take];
                *input = &input[take..];
                *remaining -= take;
                let (remaining, last) = (*remaining, *last);
                if self.bdat_failed.is_none() && !self.bdat_overflow {
                    if self.message.len() + chunk.len() > self.cfg.max_message_size {
                        self.bdat_overflow = true;
                        self.message = Vec::new();
                    } else {
                        self.message.extend_from_slice(chunk);
                    }
                }
                if remaining > 0 {
                    return Some(Action::NeedInput);
                }
                self.bdat_chunk_done(last, out)
            }
            _ => None,
        }
    }

    /// DATA/BDAT preconditions; `Some` when refused.
    fn check_can_send_content(&mut self, out: &mut Vec<u8>, _bdat: bool) -> Option<Action> {
        match self.state {
            State::Transaction if !self.env.rcpt_to.is_empty() => None,
            State::Transaction => {
                self.error(out, "554 5.5.1 No valid recipients\r\n");
                Some(Action::NeedInput)
            }
            State::Connected => {
                self.error(out, "503 5.5.1 Send EHLO/HELO first\r\n");
                Some(Action::NeedInput)
            }
            _ => {
                self.error(out, "503 5.5.1 Need MAIL and RCPT before DATA\r\n");
                Some(Action::NeedInput)
            }
        }
    }

    fn data_finished(&mut self, end: DataEnd, out: &mut Vec<u8>) -> Option<Action> {
        if end.too_big {
            self.reset_transaction();
            self.state = State::Ready;
            out.extend_from_slice(b"552 5.3.4 Message size exceeds fixed maximum message size\r\n");
            return None;
        }
        if end.bare_newline {
            self.reset_transaction();
            self.state = State::Ready;
            out.extend_from_slice(
                b"554 5.6.0 Message contains bare LF or CR; lines must end with CRLF (RFC 5321 2.3.8)\r\n",
            );
            return None;
        }
        self.state = State::Pending(Pending::Delivery);
        Some(Action::Deliver)
    }

    fn bdat_chunk_done(&mut self, last: bool, out: &mut Vec<u8>) -> Option<Action> {
        if let Some(f) = self.bdat_failed.clone() {
            out.extend_from_slice(f.as_bytes());
            self.stats.errors += 1;
            if last {
                self.bdat_failed = None;
                if matches!(self.state, State::Bdat { .. }) {
                    self.reset_transaction();
                    self.state = if self.env.helo.is_empty() {
                        State::Connected
                    } else {
                        State::Ready
                    };
                }
            } else {
                self.state = State::Transaction;
                if self.env.helo.is_empty() {
                    self.state = State::Connected;
                }
            }
            return None;
        }
        if last {
            if self.bdat_overflow {
                self.reset_transaction();
                self.state = State::Ready;
                out.extend_from_slice(
                    b"552 5.3.4 Message size exceeds fixed maximum message size\r\n",
                );
                return None;
            }
            self.state = State::Pending(Pending::Delivery);
            return Some(Action::Deliver);
        }
        self.state = State::Transaction;
        out.extend_from_slice(
            format!("250 2.0.0 {} octets received\r\n", self.message.len()).as_bytes(),
        );
        None
    }
}
