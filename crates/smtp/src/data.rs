//! Receiving message content after `DATA` (RFC 5321 4.1.4, 4.5.2).
//!
//! [`DataDecoder`] removes dot-stuffing and finds the end of the data, which
//! is exactly `<CRLF>.<CRLF>` and nothing else: treating `<LF>.<LF>` or
//! `<LF>.<CRLF>` as the end is what makes "SMTP smuggling" possible, where a
//! second message hidden inside the first one is accepted as if a trusted
//! relay had sent it. A bare LF or bare CR anywhere in the content is
//! recorded, and the message refused at the end (Postfix's
//! `smtpd_forbid_bare_newline` does the same).
//!
//! Content beyond the size limit is consumed and thrown away, so a client
//! that ignores SIZE costs at most the limit in memory and still gets a
//! proper `552` reply once it has finished sending.

/// Streaming decoder for DATA content.
#[derive(Debug, Clone)]
pub struct DataDecoder {
    state: State,
    limit: usize,
    overflow: bool,
    bare_newline: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CRLF; also the very start).
    LineStart,
    /// In the middle of a line.
    Middle,
    /// Saw CR in the middle of a line.
    Cr,
    /// Saw "." at the start of a line.
    Dot,
    /// Saw ".CR" at the start of a line.
    DotCr,
    Done,
}

/// The outcome of a finished DATA transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataEnd {
    /// More than `limit` octets were sent; the excess was discarded.
    pub too_big: bool,
    /// A bare LF or CR was seen.
    pub bare_newline: bool,
}

impl DataDecoder {
    /// `limit` is the largest message accepted, in octets.
    pub fn new(limit: usize) -> Self {
        DataDecoder {
            state: State::LineStart,
            limit,
            overflow: false,
            bare_newline: false,
        }
    }

    /// Consume input, appending decoded content to `out`. Returns the number
    /// of bytes consumed and, once `<CRLF>.<CRLF>` was seen, how it ended.
    /// Bytes after the terminator are not consumed (they are pipelined
    /// commands).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Option<DataEnd>) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            i += 1;
            match self.state {
                State::Done => {
                    i -= 1;
                    break;
                }
                State::LineStart => match b {
                    b'.' => self.state = State::Dot,
                    _ => {
                        self.state = State::Middle;
                        i -= 1;
                    }
                },
                State::Dot => match b {
                    b'\r' => self.state = State::DotCr,
                    _ => {
                        // Dot-stuffed line: the leading dot is dropped.
                        self.state = State::Middle;
                        i -= 1;
                    }
                },
                State::DotCr => {
                    if b == b'\n' {
                        self.state = State::Done;
                        return (i, Some(self.end()));
                    }
                    // ".\r" followed by something else: a bare CR.
                    self.bare_newline = true;
                    self.push(out, b'\r');
                    self.state = State::Middle;
                    i -= 1;
                }
                State::Middle => {
                    // Fast path: copy up to the next CR or LF in one go.
                    let rest = &input[i - 1..];
                    let stop = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
                    self.push_slice(out, &rest[..stop]);
                    i += stop;
                    if stop < rest.len() {
                        match rest[stop] {
                            b'\r' => self.state = State::Cr,
                            _ => {
                                // Bare LF: kept (as CRLF) but flagged. It does
                                // NOT start a new line: "<LF>.<CRLF>" must not
                                // end the data.
                                self.bare_newline = true;
                                self.push_slice(out, b"\r\n");
                                self.state = State::Middle;
                            }
                        }
                    } else {
                        // Consumed the whole remainder.
                        return (input.len(), None);
                    }
                }
                State::Cr => {
                    if b == b'\n' {
                        self.push_slice(out, b"\r\n");
                        self.state = State::LineStart;
                    } else {
                        self.bare_newline = true;
                        self.push(out, b'\r');
                        self.state = State::Middle;
                        i -= 1;
                    }
                }
            }
        }
        (i, None)
    }

    fn end(&self) -> DataEnd {
        DataEnd {
            too_big: self.overflow,
            bare_newline: self.bare_newline,
        }
    }

    fn push(&mut self, out: &mut Vec<u8>, b: u8) {
        self.push_slice(out, &[b]);
    }

    fn push_slice(&mut self, out: &mut Vec<u8>, data: &[u8]) {
        if self.overflow {
            return;
        }
        if out.len() + data.len() > self.limit {
            // The message will be refused: free what was kept.
            self.overflow = true;
            *out = Vec::new();
            return;
        }
        out.extend_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8], chunk: usize, limit: usize) -> (Vec<u8>, Option<DataEnd>, usize) {
        let mut d = DataDecoder::new(limit);
        let mut out = Vec::new();
        let mut consumed = 0;
        for c in input.chunks(chunk) {
            let (n, end) = d.decode(c, &mut out);
            consumed += n;
            if end.is_some() {
                return (out, end, consumed);
            }
            assert_eq!(n, c.len());
        }
        (out, None, consumed)
    }

    fn all_chunkings(input: &[u8], limit: usize) -> (Vec<u8>, Option<DataEnd>, usize) {
        let whole = run(input, input.len().max(1), limit);
        for c in 1..9 {
            assert_eq!(run(input, c, limit), whole, "chunk size {c}");
        }
        whole
    }

    #[test]
    fn plain_message_and_terminator() {
        let (out, end, n) = all_chunkings(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n", 1000);
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(
            end,
            Some(DataEnd {
                too_big: false,
                bare_newline: false
            })
        );
        assert_eq!(n, 24, "QUIT must be left for the command parser");
    }

    #[test]
    fn dot_unstuffing() {
        let (out, end, _) = all_chunkings(b"..\r\n...x\r\n.y\r\na.b\r\n.\r\n", 1000);
        assert_eq!(out, b".\r\n..x\r\ny\r\na.b\r\n");
        assert!(end.is_some());
    }

    #[test]
    fn empty_message() {
        let (out, end, n) = all_chunkings(b".\r\n", 1000);
        assert_eq!(out, b"");
        assert!(end.is_some());
        assert_eq!(n, 3);
    }

    #[test]
    fn smuggling_terminators_are_not_the_end() {
        for evil in [
            &b"a\r\n\n.\n\r\nMAIL FROM:<x>\r\n"[..],
            b"a\n.\r\nMAIL FROM:<x>\r\n",
            b"a\r\n.\nMAIL FROM:<x>\r\n",
            b"a\r.\r\nMAIL FROM:<x>\r\n",
        ] {
            let (out, end, _) = all_chunkings(evil, 1000);
            assert_eq!(
                end,
                None,
                "{:?} ended the data",
                String::from_utf8_lossy(evil)
            );
            let _ = out;
        }
        // The real terminator after it ends the data, flagged as bare newline.
        let (_, end, _) = all_chunkings(b"a\n.\nb\r\n.\r\n", 1000);
        assert_eq!(
            end,
            Some(DataEnd {
                too_big: false,
                bare_newline: true
            })
        );
    }

    #[test]
    fn bare_cr_is_flagged() {
        let (out, end, _) = all_chunkings(b"a\rb\r\n.\r\n", 1000);
        assert_eq!(out, b"a\rb\r\n");
        assert!(end.unwrap().bare_newline);
    }

    #[test]
    fn over_limit_is_discarded_but_consumed() {
        let mut msg = vec![b'x'; 5000];
        msg.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
        let (out, end, n) = all_chunkings(&msg, 100);
        assert!(out.len() <= 100);
        assert!(end.unwrap().too_big);
        assert_eq!(n, msg.len() - 6);
    }
}
