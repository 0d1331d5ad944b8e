//! Framing a byte stream into POP3 command lines.
//!
//! RFC 1939 lines end in CRLF; we also accept a bare LF (many clients and
//! test tools send one) and strip the CR. A line longer than the limit is
//! reported once as [`Frame::TooLong`] as soon as the limit is crossed and the
//! rest of it is thrown away as it arrives, so a client that sends a megabyte
//! without a newline costs us at most `max_line` bytes of memory.

use memchr::memchr;

/// One framed unit of input.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete line without its line end.
    Line(&'a [u8]),
    /// A line exceeded the limit; its bytes were discarded.
    TooLong,
}

/// Accumulates input and hands out complete lines.
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    /// Start of the first unconsumed byte.
    start: usize,
    /// Bytes from `start` up to here are known to contain no LF.
    scanned: usize,
    max_line: usize,
    /// Inside an overlong line whose remainder must be dropped up to its LF.
    discarding: bool,
}

impl LineBuffer {
    /// `max_line` is the longest line accepted, excluding the line end.
    pub fn new(max_line: usize) -> Self {
        LineBuffer {
            // Allocated on the first input, sized by what arrives: an idle
            // session should cost as little as possible.
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            max_line,
            discarding: false,
        }
    }

    /// Append freshly read bytes.
    pub fn extend(&mut self, data: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        if self.discarding {
            // Drop everything up to and including the next LF.
            if let Some(p) = memchr(b'\n', data) {
                self.discarding = false;
                self.buf.extend_from_slice(&data[p + 1..]);
            }
        } else {
            self.buf.extend_from_slice(data);
        }
    }

    /// Bytes received but not yet returned as lines.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Forget all buffered input. Used after STLS: anything the client
    /// pipelined behind it was sent in plaintext and must not be executed
    /// inside the TLS session (the CVE-2011-0411 class of injection).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.scanned = 0;
        self.discarding = false;
    }

    /// The next complete line, if there is one.
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        match memchr(b'\n', &self.buf[self.scanned..]) {
            Some(p) => {
                let end = self.scanned + p;
                let begin = self.start;
                self.start = end + 1;
                self.scanned = self.start;
                let mut line = &self.buf[begin..end];
                if let [rest @ .., b'\r'] = line {
                    line = rest;
                }
                if line.len() > self.max_line {
                    return Some(Frame::TooLong);
                }
                Some(Frame::Line(line))
            }
            None => {
                self.scanned = self.buf.len();
                if self.buf.len() - self.start > self.max_line + 1 {
                    // Over the limit without a line end: report now, drop the
                    // bytes, and keep dropping until the LF.
                    self.buf.truncate(self.start);
                    self.scanned = self.start;
                    self.discarding = true;
                    return Some(Frame::TooLong);
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(lb: &mut LineBuffer) -> Vec<Result<Vec<u8>, ()>> {
        let mut v = Vec::new();
        while let Some(f) = lb.next_frame() {
            v.push(match f {
                Frame::Line(l) => Ok(l.to_vec()),
                Frame::TooLong => Err(()),
            });
        }
        v
    }

    #[test]
    fn splits_crlf_and_lf_and_keeps_partial() {
        let mut lb = LineBuffer::new(255);
        lb.extend(b"STAT\r\nLIST\nRE");
        assert_eq!(
            frames(&mut lb),
            vec![Ok(b"STAT".to_vec()), Ok(b"LIST".to_vec())]
        );
        lb.extend(b"TR 1\r\n");
        assert_eq!(frames(&mut lb), vec![Ok(b"RETR 1".to_vec())]);
        assert_eq!(lb.pending(), 0);
    }

    #[test]
    fn overlong_line_reported_once_and_discarded() {
        let mut lb = LineBuffer::new(16);
        lb.extend(&[b'A'; 100]);
        assert_eq!(frames(&mut lb), vec![Err(())]);
        lb.extend(&[b'B'; 100_000]);
        assert_eq!(frames(&mut lb), vec![]);
        assert!(lb.pending() < 32, "overlong input must not be buffered");
        lb.extend(b"BBB\r\nNOOP\r\n");
        assert_eq!(frames(&mut lb), vec![Ok(b"NOOP".to_vec())]);
    }

    #[test]
    fn overlong_complete_line_is_too_long() {
        let mut lb = LineBuffer::new(4);
        lb.extend(b"ABCDEFG\r\nQUIT\r\n");
        assert_eq!(frames(&mut lb), vec![Err(()), Ok(b"QUIT".to_vec())]);
    }

    #[test]
    fn exactly_max_is_accepted() {
        let mut lb = LineBuffer::new(4);
        lb.extend(b"ABCD\r\n");
        assert_eq!(frames(&mut lb), vec![Ok(b"ABCD".to_vec())]);
    }

    #[test]
    fn clear_drops_pipelined_input() {
        let mut lb = LineBuffer::new(255);
        lb.extend(b"STLS\r\nUSER evil\r\n");
        assert_eq!(lb.next_frame(), Some(Frame::Line(b"STLS")));
        lb.clear();
        assert_eq!(lb.next_frame(), None);
    }
}
