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
    /// Octets decoded so far (the caller may take them out of `out`
    /// between calls; the limit applies to the whole message).
    total: usize,
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
            total: 0,
            overflow: false,
            bare_newline: false,
        }
    }

    /// Consume input, appending decoded content to `out`. Returns the number
    /// of bytes consumed and, once `<CRLF>.<CRLF>` was seen, how it ended.
    /// Bytes after the terminator are not consumed (they are pipelined
    /// commands). The caller may empty `out` between calls (to stream the
    /// content elsewhere): the size limit counts everything decoded.
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
        if self.total + data.len() > self.limit {
            // The message will be refused: free what was kept.
            self.overflow = true;
            *out = Vec::new();
            return;
        }
        self.total += data.len();
        out.extend_from_slice(data);
    }
}

/// Limits on a message's header section: the number of fields and its
/// size in octets. A header of four million tiny fields costs far more to
/// parse and hold (every verification stage parses it) than its bytes
/// suggest, so both are bounded before anything parses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLimits {
    /// Most header fields (continuation lines belong to their field).
    pub max_fields: usize,
    /// Most octets before the empty line that ends the header.
    pub max_bytes: usize,
}

/// Which header limit a message passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderExcess {
    /// More than `max_fields` fields.
    Fields(usize),
    /// More than `max_bytes` octets.
    Bytes(usize),
}

/// Watches decoded message content go by and finds where the header
/// section ends, counting its fields and octets; it stops looking once the
/// header is over, so the body costs nothing.
#[derive(Debug, Clone)]
pub struct HeaderScan {
    limits: HeaderLimits,
    fields: usize,
    bytes: usize,
    /// The previous byte was LF (or nothing has been seen yet).
    at_line_start: bool,
    /// The current line so far is only a CR (the empty line CRLF).
    line_is_cr: bool,
    done: bool,
    excess: Option<HeaderExcess>,
}

impl HeaderScan {
    /// A scan of a new message.
    pub fn new(limits: HeaderLimits) -> Self {
        HeaderScan {
            limits,
            fields: 0,
            bytes: 0,
            at_line_start: true,
            line_is_cr: false,
            done: false,
            excess: None,
        }
    }

    /// Feed the next decoded content.
    pub fn feed(&mut self, data: &[u8]) {
        for &b in data {
            if self.done || self.excess.is_some() {
                return;
            }
            if self.at_line_start {
                match b {
                    b'\n' => {
                        self.done = true;
                        return;
                    }
                    b'\r' => self.line_is_cr = true,
                    b' ' | b'\t' => {}
                    _ => self.fields += 1,
                }
            } else if self.line_is_cr {
                if b == b'\n' {
                    // An empty line (CRLF): the header is over.
                    self.done = true;
                    return;
                }
                self.line_is_cr = false;
                self.fields += 1;
            }
            self.bytes += 1;
            self.at_line_start = b == b'\n';
            if self.at_line_start {
                self.line_is_cr = false;
            }
            if self.fields > self.limits.max_fields {
                self.excess = Some(HeaderExcess::Fields(self.limits.max_fields));
            } else if self.bytes > self.limits.max_bytes {
                self.excess = Some(HeaderExcess::Bytes(self.limits.max_bytes));
            }
        }
    }

    /// A limit was passed.
    pub fn excess(&self) -> Option<HeaderExcess> {
        self.excess
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_scan_counts_fields_until_the_empty_line() {
        let limits = HeaderLimits {
            max_fields: 3,
            max_bytes: 1000,
        };
        let msg = b"A: 1\r\nB: 2\r\n folded\r\nC: 3\r\n\r\nD: body\r\nE: body\r\n";
        for chunk in 1..msg.len() {
            let mut s = HeaderScan::new(limits);
            for c in msg.chunks(chunk) {
                s.feed(c);
            }
            assert_eq!(s.excess(), None, "chunk {chunk}");
            assert_eq!(s.fields, 3);
        }
        let mut s = HeaderScan::new(limits);
        s.feed(b"A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n");
        assert_eq!(s.excess(), Some(HeaderExcess::Fields(3)));
        let mut s = HeaderScan::new(HeaderLimits {
            max_fields: 100,
            max_bytes: 10,
        });
        s.feed(b"Subject: a long one\r\n\r\n");
        assert_eq!(s.excess(), Some(HeaderExcess::Bytes(10)));
        // No header at all: the body starts at once.
        let mut s = HeaderScan::new(limits);
        s.feed(b"\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n");
        assert_eq!(s.excess(), None);
    }

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
