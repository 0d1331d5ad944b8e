//! The message as the client sends it after DATA (RFC 5321 4.5.2).

/// The message as DATA content: lines starting with `.` get another `.`
/// (RFC 5321 4.5.2), bare CR and bare LF become CRLF, a missing final CRLF
/// is added, and the terminating `.<CRLF>` is appended.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 8);
    let mut s = DotStuffer::new();
    s.stuff(message, &mut out);
    s.finish(&mut out);
    out
}

/// [`dot_stuff`] a piece at a time, for a message streamed from disk: the
/// output of all the pieces and [`DotStuffer::finish`] is what
/// `dot_stuff` gives for the whole message, however it is cut.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    line_start: bool,
    /// The previous piece ended in CR: an LF starting this one belongs to it.
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer::new()
    }
}

impl DotStuffer {
    /// At the start of a message.
    pub fn new() -> Self {
        DotStuffer {
            line_start: true,
            pending_cr: false,
        }
    }

    /// Append the DATA form of the next piece of the message to `out`.
    pub fn stuff(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        out.reserve(piece.len() + piece.len() / 64 + 4);
        let mut i = 0;
        if self.pending_cr {
            self.pending_cr = false;
            if piece.first() == Some(&b'\n') {
                i = 1;
            }
        }
        while i < piece.len() {
            let b = piece[i];
            match b {
                b'\r' => {
                    out.extend_from_slice(b"\r\n");
                    match piece.get(i + 1) {
                        Some(b'\n') => i += 1,
                        None => self.pending_cr = true,
                        Some(_) => {}
                    }
                    self.line_start = true;
                }
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    self.line_start = true;
                }
                b'.' if self.line_start => {
                    out.extend_from_slice(b"..");
                    self.line_start = false;
                }
                _ => {
                    // Copy the rest of the line in one go.
                    let end = piece[i..]
                        .iter()
                        .position(|&c| c == b'\r' || c == b'\n')
                        .map_or(piece.len(), |p| i + p);
                    out.extend_from_slice(&piece[i..end]);
                    self.line_start = false;
                    i = end;
                    continue;
                }
            }
            i += 1;
        }
    }

    /// The end: a final CRLF if the message lacked one, and `.<CRLF>`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        *self = DotStuffer::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_cut_gives_the_same_result() {
        let messages: [&[u8]; 5] = [
            b"Subject: x\r\n\r\n.hidden\r\n..two\r\nlast line no crlf",
            b"bare\rcr and\nbare lf\r\n.\r\n",
            b"",
            b"ends in cr\r",
            b".\r\n.\n.\r.x",
        ];
        for m in messages {
            let whole = dot_stuff(m);
            for cut in 1..=m.len().max(1) {
                let mut s = DotStuffer::new();
                let mut out = Vec::new();
                for piece in m.chunks(cut) {
                    s.stuff(piece, &mut out);
                }
                s.finish(&mut out);
                assert_eq!(out, whole, "{m:?} cut every {cut}");
            }
        }
        assert_eq!(dot_stuff(b"a\r\n.b\r\n"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(dot_stuff(b"ends in cr\r"), b"ends in cr\r\n.\r\n");
    }
}
