//! A minimal blocking line client (POP3, and SMTP through [`crate::smtp_cmd`]).

use std::io::{self, Read, Write};

/// A minimal blocking client for line protocols, with its own read buffer
/// and POP3 helpers. Reads fail (and the helpers panic) when the stream's
/// timeout passes: use streams from [`crate::tcp_connect`].
#[derive(Debug)]
pub struct Client<S> {
    stream: S,
    buf: Vec<u8>,
    pos: usize,
}

impl<S: Read + Write> Client<S> {
    /// A client on `stream`; nothing is read yet.
    pub fn new(stream: S) -> Self {
        Client {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            pos: 0,
        }
    }

    /// The transport, asserting that nothing the server sent is left unread.
    #[track_caller]
    pub fn into_inner(self) -> S {
        assert_eq!(
            self.pos,
            self.buf.len(),
            "unread data from the server: {:?}",
            String::from_utf8_lossy(&self.buf[self.pos..])
        );
        self.stream
    }

    /// Bytes received but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next line including its line end; `Ok(None)` at end of stream.
    pub fn try_read_line_bytes(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut scanned = self.pos;
        loop {
            if let Some(i) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + i + 1;
                let line = self.buf[self.pos..end].to_vec();
                self.pos = end;
                return Ok(Some(line));
            }
            scanned = self.buf.len();
            let before = self.pos;
            if self.fill()? == 0 {
                if self.pos < self.buf.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "stream ended inside a line: {:?}",
                            String::from_utf8_lossy(self.buffered())
                        ),
                    ));
                }
                return Ok(None);
            }
            // fill() compacted the buffer: rebase the scan position.
            scanned -= before;
        }
    }

    /// The next line, which must end in CRLF, without its line end.
    #[track_caller]
    pub fn read_line(&mut self) -> String {
        match self.try_read_line_bytes() {
            Ok(Some(line)) => {
                let text = line.strip_suffix(b"\r\n").unwrap_or_else(|| {
                    panic!("line without CRLF: {:?}", String::from_utf8_lossy(&line))
                });
                String::from_utf8_lossy(text).into_owned()
            }
            Ok(None) => panic!("connection closed by the server while a reply was expected"),
            Err(e) => panic!("reading a reply: {e}"),
        }
    }

    /// The body of a multi-line response exactly as sent (still
    /// dot-stuffed, CRLF line ends), without the terminating ".\r\n".
    #[track_caller]
    pub fn read_multiline(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            match self.try_read_line_bytes() {
                Ok(Some(line)) if line == b".\r\n" => return body,
                Ok(Some(line)) => {
                    assert!(
                        line.ends_with(b"\r\n"),
                        "line without CRLF in a multi-line response"
                    );
                    body.extend_from_slice(&line);
                }
                Ok(None) => panic!("connection closed inside a multi-line response"),
                Err(e) => panic!("reading a multi-line response: {e}"),
            }
        }
    }

    /// Send raw bytes.
    #[track_caller]
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
        self.stream.flush().expect("flush");
    }

    /// Send one command line (CRLF added).
    #[track_caller]
    pub fn send(&mut self, command: &str) {
        self.send_raw(format!("{command}\r\n").as_bytes());
    }

    /// Send a command and read its one-line status reply.
    #[track_caller]
    pub fn cmd(&mut self, command: &str) -> String {
        self.send(command);
        self.read_line()
    }

    /// Send a command expecting a multi-line reply; returns the status line
    /// and (if it is +OK) the raw body.
    #[track_caller]
    pub fn cmd_multi(&mut self, command: &str) -> (String, Vec<u8>) {
        let status = self.cmd(command);
        if status.starts_with("+OK") {
            let body = self.read_multiline();
            (status, body)
        } else {
            (status, Vec::new())
        }
    }

    /// Like [`Client::cmd_multi`] but asserts +OK and returns the body lines.
    #[track_caller]
    pub fn multi_lines(&mut self, command: &str) -> Vec<String> {
        let (status, body) = self.cmd_multi(command);
        assert!(status.starts_with("+OK"), "{command}: {status:?}");
        crate::mail::lines_of(&body)
    }

    /// USER + PASS; returns the reply to PASS.
    #[track_caller]
    pub fn login(&mut self, user: &str, password: &str) -> String {
        let r = self.cmd(&format!("USER {user}"));
        assert_eq!(r, "+OK", "USER {user}");
        self.cmd(&format!("PASS {password}"))
    }

    /// `STAT` → (count, octets).
    #[track_caller]
    pub fn stat(&mut self) -> (usize, u64) {
        let r = self.cmd("STAT");
        let mut w = r.split(' ');
        assert_eq!(w.next(), Some("+OK"), "STAT: {r:?}");
        let n = w
            .next()
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("STAT: {r:?}"));
        let b = w
            .next()
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("STAT: {r:?}"));
        (n, b)
    }

    /// `UIDL` → the ids in message-number order.
    #[track_caller]
    pub fn uidl(&mut self) -> Vec<String> {
        self.multi_lines("UIDL")
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let (n, uid) = l
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("UIDL line {l:?}"));
                assert_eq!(n, (i + 1).to_string(), "UIDL numbering");
                uid.to_string()
            })
            .collect()
    }

    /// `RETR` of every message `STAT` counts, in message-number order,
    /// dot-unstuffed (each asserted +OK).
    #[track_caller]
    pub fn retr_all(&mut self) -> Vec<Vec<u8>> {
        let (n, _) = self.stat();
        (1..=n)
            .map(|i| {
                let (status, body) = self.cmd_multi(&format!("RETR {i}"));
                assert!(status.starts_with("+OK"), "RETR {i}: {status:?}");
                crate::mail::dot_unstuff(&body)
            })
            .collect()
    }

    /// `QUIT`, asserting +OK.
    #[track_caller]
    pub fn quit(&mut self) -> String {
        let r = self.cmd("QUIT");
        assert!(r.starts_with("+OK"), "QUIT: {r:?}");
        r
    }

    /// Read until the server closes the connection; returns the lines it
    /// sent before closing. A reset counts as closed (Linux resets when the
    /// server closes with our input unread). Fails if the server keeps the
    /// connection open past the stream's read timeout.
    #[track_caller]
    pub fn read_until_closed(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            match self.try_read_line_bytes() {
                Ok(Some(l)) => lines.push(
                    String::from_utf8_lossy(&l)
                        .trim_end_matches(['\r', '\n'])
                        .to_string(),
                ),
                Ok(None) => return lines,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    return lines;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("the server did not close the connection; got {lines:?}")
                }
                Err(e) => panic!("reading until close: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory stream: reads come from `input` in `chunk`-byte
    /// pieces, writes are kept.
    struct Script {
        input: Vec<u8>,
        at: usize,
        chunk: usize,
        written: Vec<u8>,
    }

    impl Read for Script {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.chunk.min(out.len()).min(self.input.len() - self.at);
            out[..n].copy_from_slice(&self.input[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    impl Write for Script {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn client(input: &[u8], chunk: usize) -> Client<Script> {
        Client::new(Script {
            input: input.to_vec(),
            at: 0,
            chunk,
            written: Vec::new(),
        })
    }

    #[test]
    fn lines_split_across_reads_and_multiline_bodies() {
        let wire = b"+OK 2 30\r\n+OK\r\nA: b\r\n\r\n..dot\r\n.\r\n+OK\r\nc\r\n.\r\n+OK bye\r\n";
        for chunk in [1, 3, 7, 1000] {
            let mut c = client(wire, chunk);
            assert_eq!(
                c.retr_all(),
                [b"A: b\r\n\r\n.dot\r\n".to_vec(), b"c\r\n".to_vec()]
            );
            assert_eq!(c.quit(), "+OK bye");
            assert_eq!(c.read_until_closed(), Vec::<String>::new());
            let s = c.into_inner();
            assert_eq!(s.written, b"STAT\r\nRETR 1\r\nRETR 2\r\nQUIT\r\n");
        }
    }

    #[test]
    fn a_stream_ending_inside_a_line_is_an_error() {
        let mut c = client(b"+OK\r\npartial", 4);
        assert_eq!(c.read_line(), "+OK");
        let e = c.try_read_line_bytes().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
