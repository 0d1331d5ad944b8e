//! The on-wire form of a message for RETR and TOP (RFC 1939 section 3).
//!
//! [`BodyEncoder`] is fed the stored message in chunks of any size and
//! appends the multi-line response body: every line end becomes CRLF (a bare
//! LF in stored mail is sent as CRLF), a line starting with `.` gets a second
//! `.`, `TOP n` stops after the header, the blank line and `n` body lines, and
//! [`BodyEncoder::finish`] adds the terminating `.` line (after a CRLF if the
//! message did not end with one). It never holds more than the chunk it is
//! given, so a 100 MB message streams through in constant memory.
//!
//! [`CrlfStuffer`] is the fast path for `RETR` of a message that is already
//! in CRLF form (what the store yields): it only finds where a `.` must be
//! inserted (one SIMD search for `\n.` per chunk), so the server can send
//! the stored bytes as they are, without copying them line by line.
//!
//! [`BodyDecoder`] is the reverse for clients: it undoes dot-stuffing and
//! recognises the terminating line.

use memchr::memchr;
use memchr::memmem;

/// Streaming RETR/TOP encoder. See the module docs.
#[derive(Debug, Clone)]
pub struct BodyEncoder {
    top: Option<u64>,
    at_line_start: bool,
    /// The last byte passed through was a CR (only meaningful mid-line).
    last_cr: bool,
    /// Bytes of the current line seen so far (excluding its line end).
    line_len: u64,
    in_headers: bool,
    body_lines: u64,
    done: bool,
}

impl BodyEncoder {
    /// An encoder for `RETR`.
    pub fn retr() -> Self {
        Self::new(None)
    }

    /// An encoder for `TOP msg lines`.
    pub fn top(lines: u64) -> Self {
        Self::new(Some(lines))
    }

    fn new(top: Option<u64>) -> Self {
        BodyEncoder {
            top,
            at_line_start: true,
            last_cr: false,
            line_len: 0,
            in_headers: true,
            body_lines: 0,
            done: false,
        }
    }

    /// True once `TOP` has emitted all it should; further input is ignored
    /// and the caller can stop reading the message.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Encode the next chunk of the stored message, appending to `out`.
    pub fn encode(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 64 + 8);
        while !input.is_empty() && !self.done {
            if self.at_line_start {
                if input[0] == b'.' {
                    out.push(b'.');
                }
                self.at_line_start = false;
            }
            match memchr(b'\n', input) {
                None => {
                    out.extend_from_slice(input);
                    self.line_len += input.len() as u64;
                    self.last_cr = input.last() == Some(&b'\r');
                    input = &[];
                }
                Some(pos) => {
                    let seg = &input[..pos];
                    out.extend_from_slice(seg);
                    let (len, cr) = if pos > 0 {
                        (self.line_len + pos as u64, seg[pos - 1] == b'\r')
                    } else {
                        (self.line_len, self.last_cr)
                    };
                    if !cr {
                        out.push(b'\r');
                    }
                    out.push(b'\n');
                    self.end_line(len == 0 || (len == 1 && cr));
                    input = &input[pos + 1..];
                }
            }
        }
    }

    fn end_line(&mut self, empty: bool) {
        self.at_line_start = true;
        self.line_len = 0;
        self.last_cr = false;
        if let Some(n) = self.top {
            if self.in_headers {
                if empty {
                    self.in_headers = false;
                    if n == 0 {
                        self.done = true;
                    }
                }
            } else {
                self.body_lines += 1;
                if self.body_lines >= n {
                    self.done = true;
                }
            }
        }
    }

    /// End the response: a CRLF if the last line was unterminated, then `.`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
            self.at_line_start = true;
        }
        out.extend_from_slice(b".\r\n");
        self.done = true;
    }
}

/// Dot-stuffing for `RETR` of a message already in CRLF form. See the
/// module docs.
///
/// It does not repair line ends: a bare LF in the input is sent as it is
/// (still followed by a stuffed `.` where one starts a line, so the
/// response can never be ended early). For input that is CRLF throughout,
/// the output equals [`BodyEncoder::retr`]'s.
#[derive(Debug, Clone)]
pub struct CrlfStuffer {
    at_line_start: bool,
}

impl Default for CrlfStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl CrlfStuffer {
    /// A fresh instance, at the start of a message.
    pub fn new() -> Self {
        CrlfStuffer {
            at_line_start: true,
        }
    }

    /// Append to `points` the offsets in `input` (the next chunk of the
    /// message) before which a `.` must be sent, in increasing order.
    pub fn scan(&mut self, input: &[u8], points: &mut Vec<usize>) {
        let Some(&last) = input.last() else {
            return;
        };
        if self.at_line_start && input[0] == b'.' {
            points.push(0);
        }
        points.extend(memmem::find_iter(input, b"\n.").map(|p| p + 1));
        self.at_line_start = last == b'\n';
    }

    /// Append `input` to `out` with the dots `points` (from [`scan`] on the
    /// same input) inserted.
    ///
    /// [`scan`]: CrlfStuffer::scan
    pub fn write_stuffed(input: &[u8], points: &[usize], out: &mut Vec<u8>) {
        out.reserve(input.len() + points.len());
        let mut from = 0;
        for &p in points {
            out.extend_from_slice(&input[from..p]);
            out.push(b'.');
            from = p;
        }
        out.extend_from_slice(&input[from..]);
    }

    /// Scan and append in one step.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut points = Vec::new();
        self.scan(input, &mut points);
        Self::write_stuffed(input, &points, out);
    }

    /// End the response: a CRLF if the message did not end with a line
    /// end, then `.`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
            self.at_line_start = true;
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// Client side: undo dot-stuffing of a multi-line response, line by line.
#[derive(Debug, Default, Clone)]
pub struct BodyDecoder {
    finished: bool,
}

/// What [`BodyDecoder::line`] made of one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A content line (without its CRLF), dot-stuffing removed.
    Line(&'a [u8]),
    /// The terminating `.` line.
    End,
}

impl BodyDecoder {
    /// A fresh instance, at the start of a message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decode one line of the response (without its line end).
    pub fn line<'a>(&mut self, line: &'a [u8]) -> Decoded<'a> {
        if line == b"." {
            self.finished = true;
            return Decoded::End;
        }
        match line {
            [b'.', rest @ ..] => Decoded::Line(rest),
            _ => Decoded::Line(line),
        }
    }

    /// The terminating `.` line was seen.
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_chunks(mut enc: BodyEncoder, msg: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in msg.chunks(chunk.max(1)) {
            enc.encode(c, &mut out);
        }
        enc.finish(&mut out);
        out
    }

    fn all_chunkings(enc: BodyEncoder, msg: &[u8]) -> Vec<u8> {
        let whole = encode_chunks(enc.clone(), msg, msg.len().max(1));
        for c in 1..8 {
            assert_eq!(encode_chunks(enc.clone(), msg, c), whole, "chunk size {c}");
        }
        whole
    }

    #[test]
    fn crlf_message_passes_through() {
        let msg = b"Subject: hi\r\n\r\nbody\r\n";
        assert_eq!(
            all_chunkings(BodyEncoder::retr(), msg),
            b"Subject: hi\r\n\r\nbody\r\n.\r\n"
        );
    }

    #[test]
    fn dot_stuffing() {
        let msg = b"A: b\r\n\r\n.\r\n..x\r\n.hidden\r\nx.y\r\n";
        assert_eq!(
            all_chunkings(BodyEncoder::retr(), msg),
            b"A: b\r\n\r\n..\r\n...x\r\n..hidden\r\nx.y\r\n.\r\n"
        );
        // A dot at the very start of the message too.
        assert_eq!(all_chunkings(BodyEncoder::retr(), b".\r\n"), b"..\r\n.\r\n");
    }

    #[test]
    fn bare_lf_becomes_crlf_and_lone_cr_is_kept() {
        assert_eq!(
            all_chunkings(BodyEncoder::retr(), b"A: b\n\nline\nx\ry\n"),
            b"A: b\r\n\r\nline\r\nx\ry\r\n.\r\n"
        );
    }

    #[test]
    fn unterminated_last_line_gets_crlf() {
        assert_eq!(
            all_chunkings(BodyEncoder::retr(), b"A: b\r\n\r\nno end"),
            b"A: b\r\n\r\nno end\r\n.\r\n"
        );
        assert_eq!(all_chunkings(BodyEncoder::retr(), b""), b".\r\n");
    }

    #[test]
    fn top_limits_body_lines() {
        let msg = b"A: 1\r\nB: 2\r\n\r\nl1\r\n.l2\r\nl3\r\n";
        assert_eq!(
            all_chunkings(BodyEncoder::top(0), msg),
            b"A: 1\r\nB: 2\r\n\r\n.\r\n"
        );
        assert_eq!(
            all_chunkings(BodyEncoder::top(2), msg),
            b"A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\n.\r\n"
        );
        assert_eq!(all_chunkings(BodyEncoder::top(99), msg), {
            let mut v = msg.to_vec();
            v.splice(18..18, *b".");
            v.extend_from_slice(b".\r\n");
            v
        });
        // Headers only, no blank line: everything is header.
        assert_eq!(
            all_chunkings(BodyEncoder::top(0), b"A: 1\nB: 2\n"),
            b"A: 1\r\nB: 2\r\n.\r\n"
        );
        // LF-only blank line ends the header too.
        assert_eq!(
            all_chunkings(BodyEncoder::top(1), b"A: 1\n\nx\ny\n"),
            b"A: 1\r\n\r\nx\r\n.\r\n"
        );
    }

    fn stuffer_chunks(msg: &[u8], chunk: usize) -> Vec<u8> {
        let mut st = CrlfStuffer::new();
        let mut out = Vec::new();
        for c in msg.chunks(chunk.max(1)) {
            st.encode(c, &mut out);
        }
        st.finish(&mut out);
        out
    }

    #[test]
    fn crlf_stuffer_matches_the_encoder_on_crlf_input() {
        let msgs: [&[u8]; 7] = [
            b"Subject: hi\r\n\r\nbody\r\n",
            b"A: b\r\n\r\n.\r\n..x\r\n.hidden\r\nx.y\r\n",
            b".\r\n",
            b"..\r\n.\r\n.",
            b"",
            b"A: b\r\n\r\nno end",
            b"\r\n.\r\n\r\n..\r\n",
        ];
        for msg in msgs {
            let want = all_chunkings(BodyEncoder::retr(), msg);
            for c in 1..9 {
                assert_eq!(stuffer_chunks(msg, c), want, "{msg:?} chunk {c}");
            }
            assert_eq!(stuffer_chunks(msg, msg.len()), want, "{msg:?}");
        }
    }

    #[test]
    fn crlf_stuffer_points() {
        let mut st = CrlfStuffer::new();
        let mut p = Vec::new();
        st.scan(b".a\r\n.b\r\nc.\r\n", &mut p);
        assert_eq!(p, [0, 4]);
        // The next chunk starts a line: its leading dot is stuffed too.
        p.clear();
        st.scan(b".x\r\n", &mut p);
        assert_eq!(p, [0]);
        // Mid-line chunk boundary: no stuffing.
        p.clear();
        st.scan(b"ab", &mut p);
        st.scan(b".c\r\n", &mut p);
        assert!(p.is_empty());
        // A bare LF is passed through, but a dot after it is still stuffed,
        // so the response cannot be cut short.
        let mut out = Vec::new();
        let mut st = CrlfStuffer::new();
        st.encode(b"a\n.\r\n", &mut out);
        st.finish(&mut out);
        assert_eq!(out, b"a\n..\r\n.\r\n");
    }

    #[test]
    fn decoder_reverses_encoder() {
        let msg = b"A: b\r\n\r\n.\r\n..x\r\nplain\r\n";
        let wire = all_chunkings(BodyEncoder::retr(), msg);
        let mut dec = BodyDecoder::new();
        let mut back = Vec::new();
        for line in wire.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() && dec.is_finished() {
                continue;
            }
            match dec.line(line) {
                Decoded::Line(l) => {
                    back.extend_from_slice(l);
                    back.extend_from_slice(b"\r\n");
                }
                Decoded::End => {}
            }
        }
        assert!(dec.is_finished());
        assert_eq!(back, msg);
    }
}
