//! Message content: DATA (RFC 5321 4.1.1.4, decoded by
//! [`DataDecoder`]) and BDAT (CHUNKING, RFC 3030). Both end in
//! [`Action::Deliver`] or in a refusal of the whole transaction.

use super::{Action, Pending, ServerSession, State, replies};
use crate::data::{DataDecoder, DataEnd};
use crate::reply::{Reply, codes, status};

impl ServerSession {
    /// DATA: `354`, then content until `<CRLF>.<CRLF>`.
    pub(super) fn data(&mut self, out: &mut Vec<u8>) -> Action {
        if let Some(a) = self.check_can_send_content(out) {
            return a;
        }
        if self.env.chunking {
            self.error(out, replies::bad_sequence("DATA not allowed after BDAT"));
            return Action::NeedInput;
        }
        Reply::plain(codes::START_DATA, "End data with <CR><LF>.<CR><LF>").write_to(out);
        self.message = Vec::new();
        self.received = 0;
        self.state = State::Data(DataDecoder::new(self.cfg.max_message_size));
        Action::NeedInput
    }

    /// BDAT: a chunk of `chunk_size` octets follows the command line; it is
    /// read (and thrown away) even when the command fails (RFC 3030 2).
    pub(super) fn bdat(&mut self, chunk_size: usize, is_last: bool) -> Action {
        // RFC 3030: the chunk must be read even when the command fails.
        let failure = match self.state {
            State::Transaction if self.env.rcpt_to.is_empty() => {
                Some(replies::no_valid_recipients())
            }
            State::Transaction => None,
            _ => Some(replies::bad_sequence("Need MAIL and RCPT before BDAT")),
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
                let before = self.message.len();
                let (n, end) = dec.decode(input, &mut self.message);
                *input = &input[n..];
                self.watch_header(before);
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
                    if self.received + chunk.len() > self.cfg.max_message_size {
                        self.bdat_overflow = true;
                        self.message = Vec::new();
                    } else {
                        let before = self.message.len();
                        self.message.extend_from_slice(chunk);
                        self.watch_header(before);
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
    fn check_can_send_content(&mut self, out: &mut Vec<u8>) -> Option<Action> {
        match self.state {
            State::Transaction if !self.env.rcpt_to.is_empty() => None,
            State::Transaction => {
                self.error(out, replies::no_valid_recipients());
                Some(Action::NeedInput)
            }
            State::Connected => {
                self.error(out, replies::hello_first());
                Some(Action::NeedInput)
            }
            _ => {
                self.error(out, replies::bad_sequence("Need MAIL and RCPT before DATA"));
                Some(Action::NeedInput)
            }
        }
    }

    /// The DATA content ended: refuse it (too big, bare newlines) or hand
    /// it over.
    fn data_finished(&mut self, end: DataEnd, out: &mut Vec<u8>) -> Option<Action> {
        if let Some(excess) = self.header_excess() {
            self.reset_transaction();
            self.state = State::Ready;
            replies::header_too_large(excess).write_to(out);
            return None;
        }
        if end.too_big {
            self.reset_transaction();
            self.state = State::Ready;
            replies::message_too_big().write_to(out);
            return None;
        }
        if end.bare_newline {
            self.reset_transaction();
            self.state = State::Ready;
            Reply::new(
                codes::TRANSACTION_FAILED,
                status::MEDIA_OTHER,
                "Message contains bare LF or CR; lines must end with CRLF (RFC 5321 2.3.8)",
            )
            .write_to(out);
            return None;
        }
        self.state = State::Pending(Pending::Delivery);
        Some(Action::Deliver)
    }

    /// A BDAT chunk was read: report a failure, `250`, or hand the message
    /// over after LAST.
    fn bdat_chunk_done(&mut self, last: bool, out: &mut Vec<u8>) -> Option<Action> {
        if let Some(failure) = &self.bdat_failed {
            failure.write_to(out);
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
            if let Some(excess) = self.header_excess() {
                self.reset_transaction();
                self.state = State::Ready;
                replies::header_too_large(excess).write_to(out);
                return None;
            }
            if self.bdat_overflow {
                self.reset_transaction();
                self.state = State::Ready;
                replies::message_too_big().write_to(out);
                return None;
            }
            self.state = State::Pending(Pending::Delivery);
            return Some(Action::Deliver);
        }
        self.state = State::Transaction;
        let text = format!("{} octets received", self.received);
        Reply::new(codes::OK, status::OTHER, text).write_to(out);
        None
    }
}
