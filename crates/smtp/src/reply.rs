//! SMTP replies as values: the reply code (RFC 5321 4.2), the enhanced
//! status code (RFC 3463, RFC 2034) and the text.
//!
//! One type serves both sides. The server builds its replies from typed
//! parts — `Reply::new(codes::MAILBOX_UNAVAILABLE, status::BAD_DEST_MAILBOX,
//! "User unknown")` — and never from a string with the numbers in it; the
//! client parses what a remote server sent into the same type (with the
//! crate's `ReplyParser`, or [`Reply::parse`] for one reply). Enhanced
//! codes are written class-less ([`Status`]): the class (2, 4 or 5) always
//! follows the reply code, so a `4xx` reply can never carry a `5.x.x`
//! status by mistake.

use std::fmt;

/// Longest reply line accepted from a server (RFC 5321 4.5.3.1.5 says 512;
/// be lenient).
pub(crate) const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one multi-line reply accepted from a server.
pub(crate) const MAX_REPLY_LINES: usize = 256;

/// Reply codes (RFC 5321 4.2.3), named after their meaning.
pub mod codes {
    /// 214 Help message.
    pub const HELP: u16 = 214;
    /// 220 Service ready.
    pub const READY: u16 = 220;
    /// 221 Service closing transmission channel.
    pub const CLOSING: u16 = 221;
    /// 235 Authentication succeeded (RFC 4954).
    pub const AUTH_OK: u16 = 235;
    /// 250 Requested mail action okay, completed.
    pub const OK: u16 = 250;
    /// 252 Cannot VRFY user, but will accept message.
    pub const CANNOT_VRFY: u16 = 252;
    /// 334 Server challenge (RFC 4954).
    pub const AUTH_CHALLENGE: u16 = 334;
    /// 354 Start mail input.
    pub const START_DATA: u16 = 354;
    /// 421 Service not available, closing transmission channel.
    pub const SERVICE_UNAVAILABLE: u16 = 421;
    /// 450 Mailbox unavailable (busy, or blocked by policy for now).
    pub const MAILBOX_BUSY: u16 = 450;
    /// 451 Local error in processing.
    pub const LOCAL_ERROR: u16 = 451;
    /// 452 Insufficient system storage (also: too many recipients).
    pub const INSUFFICIENT_STORAGE: u16 = 452;
    /// 500 Syntax error, command unrecognized.
    pub const SYNTAX_ERROR: u16 = 500;
    /// 501 Syntax error in parameters or arguments.
    pub const PARAM_SYNTAX_ERROR: u16 = 501;
    /// 502 Command not implemented.
    pub const NOT_IMPLEMENTED: u16 = 502;
    /// 503 Bad sequence of commands.
    pub const BAD_SEQUENCE: u16 = 503;
    /// 504 Command parameter not implemented.
    pub const PARAM_NOT_IMPLEMENTED: u16 = 504;
    /// 530 Authentication required (RFC 4954).
    pub const AUTH_REQUIRED: u16 = 530;
    /// 535 Authentication credentials invalid (RFC 4954).
    pub const AUTH_INVALID: u16 = 535;
    /// 538 Encryption required for requested authentication mechanism.
    pub const ENCRYPTION_REQUIRED: u16 = 538;
    /// 550 Mailbox unavailable (not found, no access, policy).
    pub const MAILBOX_UNAVAILABLE: u16 = 550;
    /// 552 Exceeded storage allocation.
    pub const EXCEEDED_STORAGE: u16 = 552;
    /// 553 Mailbox name not allowed.
    pub const MAILBOX_NAME_NOT_ALLOWED: u16 = 553;
    /// 554 Transaction failed (or: no SMTP service here).
    pub const TRANSACTION_FAILED: u16 = 554;
    /// 555 MAIL FROM/RCPT TO parameters not recognized.
    pub const PARAMS_NOT_RECOGNIZED: u16 = 555;
}

/// The subject and detail of an RFC 3463 enhanced status code; the class
/// comes from the reply code it is used with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u16, pub u16);

impl Status {
    /// This status in class 4: `4.x.y`, a transient failure.
    pub fn transient(self) -> EnhancedCode {
        EnhancedCode(4, self.0, self.1)
    }

    /// This status in class 5: `5.x.y`, a permanent failure.
    pub fn permanent(self) -> EnhancedCode {
        EnhancedCode(5, self.0, self.1)
    }
}

/// Enhanced status codes (RFC 3463 and its registry), class-less.
pub mod status {
    use super::Status;

    /// X.0.0 Other undefined status.
    pub const OTHER: Status = Status(0, 0);
    /// X.1.0 Other address status (2.1.0: sender OK).
    pub const ADDRESS_OTHER: Status = Status(1, 0);
    /// X.1.1 Bad destination mailbox address.
    pub const BAD_DEST_MAILBOX: Status = Status(1, 1);
    /// X.1.3 Bad destination mailbox address syntax.
    pub const BAD_DEST_SYNTAX: Status = Status(1, 3);
    /// X.1.5 Destination mailbox address valid.
    pub const DEST_VALID: Status = Status(1, 5);
    /// X.1.7 Bad sender's mailbox address syntax.
    pub const BAD_SENDER_SYNTAX: Status = Status(1, 7);
    /// X.1.8 Bad sender's system address.
    pub const BAD_SENDER_SYSTEM: Status = Status(1, 8);
    /// X.2.0 Other or undefined mailbox status.
    pub const MAILBOX_OTHER: Status = Status(2, 0);
    /// X.2.2 Mailbox full.
    pub const MAILBOX_FULL: Status = Status(2, 2);
    /// X.2.3 Message length exceeds administrative limit.
    pub const MESSAGE_LENGTH_EXCEEDED: Status = Status(2, 3);
    /// X.3.0 Other or undefined mail system status.
    pub const SYSTEM_OTHER: Status = Status(3, 0);
    /// X.3.1 Mail system full.
    pub const SYSTEM_FULL: Status = Status(3, 1);
    /// X.3.2 System not accepting network messages.
    pub const SYSTEM_NOT_ACCEPTING: Status = Status(3, 2);
    /// X.3.4 Message too big for system.
    pub const MESSAGE_TOO_BIG: Status = Status(3, 4);
    /// X.4.0 Other or undefined network or routing status.
    pub const NETWORK_OTHER: Status = Status(4, 0);
    /// X.4.2 Bad connection.
    pub const BAD_CONNECTION: Status = Status(4, 2);
    /// X.4.6 Routing loop detected (a forwarding loop, an alias expansion too deep).
    pub const ROUTING_LOOP: Status = Status(4, 6);
    /// X.5.0 Other or undefined protocol status.
    pub const PROTOCOL_OTHER: Status = Status(5, 0);
    /// X.5.1 Invalid command.
    pub const INVALID_COMMAND: Status = Status(5, 1);
    /// X.5.2 Syntax error.
    pub const SYNTAX_ERROR: Status = Status(5, 2);
    /// X.5.2 with `252` to VRFY, as sendmail sends it: the registry calls
    /// X.5.2 "Syntax error" (the same numbers as [`SYNTAX_ERROR`]), but
    /// this is what our `252` has always carried.
    pub const CANNOT_VRFY: Status = Status(5, 2);
    /// X.5.3 Too many recipients.
    pub const TOO_MANY_RECIPIENTS: Status = Status(5, 3);
    /// X.5.4 Invalid command arguments.
    pub const INVALID_ARGUMENTS: Status = Status(5, 4);
    /// X.6.0 Other or undefined media error.
    pub const MEDIA_OTHER: Status = Status(6, 0);
    /// X.6.7 Non-ASCII addresses not permitted for that sender/recipient
    /// (RFC 6531).
    pub const NON_ASCII_ADDRESS: Status = Status(6, 7);
    /// X.7.0 Other or undefined security status (2.7.0: authenticated).
    pub const SECURITY_OTHER: Status = Status(7, 0);
    /// X.7.1 Delivery not authorized, message refused.
    pub const NOT_AUTHORIZED: Status = Status(7, 1);
    /// X.7.4 Security features not supported.
    pub const SECURITY_NOT_SUPPORTED: Status = Status(7, 4);
    /// X.7.5 Cryptographic failure.
    pub const CRYPTO_FAILURE: Status = Status(7, 5);
    /// X.7.8 Authentication credentials invalid (RFC 4954).
    pub const AUTH_CREDENTIALS_INVALID: Status = Status(7, 8);
    /// X.7.11 Encryption required for requested authentication mechanism.
    pub const ENCRYPTION_REQUIRED: Status = Status(7, 11);
    /// X.7.20 No passing DKIM signature found (RFC 7372).
    pub const NO_PASSING_DKIM: Status = Status(7, 20);
    /// X.7.23 SPF validation failed (RFC 7372).
    pub const SPF_FAILED: Status = Status(7, 23);
}

/// An RFC 3463 enhanced status code with its class, e.g. `5.1.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode(pub u8, pub u16, pub u16);

impl EnhancedCode {
    /// Parse `x.y.z` (class 2, 4 or 5; subject and detail up to 3 digits).
    pub fn parse(s: &str) -> Option<EnhancedCode> {
        let mut it = s.split('.');
        let (a, b, c) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() {
            return None;
        }
        let digits = |p: &str, max: usize| {
            !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
        };
        if !(digits(a, 1) && digits(b, 3) && digits(c, 3)) {
            return None;
        }
        let class: u8 = a.parse().ok()?;
        if !matches!(class, 2 | 4 | 5) {
            return None;
        }
        Some(EnhancedCode(class, b.parse().ok()?, c.parse().ok()?))
    }

    /// `status` in the class of reply `code`.
    pub fn of(code: u16, status: Status) -> EnhancedCode {
        EnhancedCode((code / 100) as u8, status.0, status.1)
    }

    /// The same subject and detail in another class (a permanent failure
    /// turned temporary, say).
    pub fn with_class(self, class: u8) -> EnhancedCode {
        EnhancedCode(class, self.1, self.2)
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One (possibly multi-line) SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code, when the reply carries one (of the same
    /// class as `code`).
    pub enhanced: Option<EnhancedCode>,
    /// The text of each line, after the code and the enhanced status code.
    pub lines: Vec<String>,
}

impl Reply {
    /// `451 4.7.1` for a greylisted recipient (RFC 6647): the text says
    /// after how many seconds a retry is accepted.
    pub fn greylisted(retry_after_secs: u64) -> Reply {
        Reply::new(
            codes::LOCAL_ERROR,
            status::NOT_AUTHORIZED,
            format!("Greylisted, please try again in {retry_after_secs} seconds"),
        )
    }

    /// A reply with an enhanced status code, its class taken from `code`.
    /// Line breaks in `text` make a multi-line reply; other control
    /// characters are the caller's to keep out (see [`crate::sanitize`]).
    pub fn new(code: u16, status: Status, text: impl Into<String>) -> Reply {
        Reply::with(code, Some(EnhancedCode::of(code, status)), text.into())
    }

    /// A reply without an enhanced status code (the greeting, EHLO, 334).
    pub fn plain(code: u16, text: impl Into<String>) -> Reply {
        Reply::with(code, None, text.into())
    }

    fn with(code: u16, enhanced: Option<EnhancedCode>, text: String) -> Reply {
        let lines = if text.contains('\n') {
            text.lines()
                .map(|l| l.trim_end_matches('\r').to_string())
                .collect()
        } else {
            vec![text]
        };
        Reply {
            code,
            enhanced,
            lines,
        }
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The enhanced code, or `x.0.0` of the reply's class.
    pub fn status(&self) -> EnhancedCode {
        self.enhanced
            .unwrap_or(EnhancedCode((self.code / 100) as u8, 0, 0))
    }

    /// The text of every line, joined with a space.
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The whole reply on one line: `550 5.1.1 No such user`.
    pub fn one_line(&self) -> String {
        let mut s = self.code.to_string();
        if let Some(e) = self.enhanced {
            s.push(' ');
            s.push_str(&e.to_string());
        }
        let text = self.text();
        if !text.is_empty() {
            s.push(' ');
            s.push_str(&text);
        }
        s
    }

    /// Append the reply as it goes on the wire: every line with the code,
    /// `-` or space, the enhanced code and CRLF.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let code = self.code.to_string();
        let enhanced = self.enhanced.map(|e| e.to_string());
        let empty = [String::new()];
        let lines: &[String] = if self.lines.is_empty() {
            &empty
        } else {
            &self.lines
        };
        for (i, line) in lines.iter().enumerate() {
            out.extend_from_slice(code.as_bytes());
            out.push(if i + 1 == lines.len() { b' ' } else { b'-' });
            if let Some(e) = &enhanced {
                out.extend_from_slice(e.as_bytes());
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Parse one complete reply (e.g. `550 5.1.1 No such user`, with or
    /// without the final CRLF) the way a client would.
    pub fn parse(wire: &str) -> Result<Reply, ProtocolError> {
        let mut p = ReplyParser::new();
        p.push(wire.as_bytes());
        if !wire.ends_with('\n') {
            p.push(b"\r\n");
        }
        let reply = p
            .next_reply()?
            .ok_or_else(|| ProtocolError("incomplete reply".into()))?;
        if p.has_buffered() {
            return Err(ProtocolError("more than one reply".into()));
        }
        Ok(reply)
    }

    /// The wire form as a vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

/// A reply the client could not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol error: {0}")]
pub struct ProtocolError(pub String);

/// Splits a server's byte stream into [`Reply`]s.
#[derive(Debug, Default)]
pub(crate) struct ReplyParser {
    buf: Vec<u8>,
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyParser {
    /// An empty parser.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append bytes read from the server.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Forget everything buffered (after STARTTLS: nothing received in
    /// plaintext may be taken as a reply inside TLS).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.code = None;
        self.lines.clear();
    }

    /// Whether unparsed bytes are buffered.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty() || !self.lines.is_empty()
    }

    /// The next complete reply, `None` if more input is needed.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ProtocolError> {
        loop {
            let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_REPLY_LINE {
                    return Err(ProtocolError("reply line too long".into()));
                }
                return Ok(None);
            };
            let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() > MAX_REPLY_LINE {
                return Err(ProtocolError("reply line too long".into()));
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            let bytes = line.as_bytes();
            if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
                return Err(ProtocolError(format!(
                    "malformed reply line {:?}",
                    truncate(&line, 80)
                )));
            }
            let code: u16 = line[..3].parse().unwrap_or(0);
            if !(200..600).contains(&code) {
                return Err(ProtocolError(format!("unexpected reply code {code}")));
            }
            let (last, text) = match bytes.get(3) {
                None => (true, ""),
                Some(b' ') => (true, &line[4..]),
                Some(b'-') => (false, &line[4..]),
                Some(_) => {
                    return Err(ProtocolError(format!(
                        "malformed reply line {:?}",
                        truncate(&line, 80)
                    )));
                }
            };
            if let Some(c) = self.code
                && c != code
            {
                return Err(ProtocolError(format!(
                    "multi-line reply changes its code from {c} to {code}"
                )));
            }
            self.code = Some(code);
            self.lines.push(text.to_string());
            if self.lines.len() > MAX_REPLY_LINES {
                return Err(ProtocolError("reply has too many lines".into()));
            }
            if last {
                let mut lines = std::mem::take(&mut self.lines);
                self.code = None;
                let enhanced = lines
                    .first()
                    .and_then(|l| l.split_whitespace().next())
                    .and_then(EnhancedCode::parse)
                    .filter(|e| u16::from(e.0) == code / 100);
                // The enhanced code is a field of the reply, not text: take
                // it off every line that repeats it (RFC 2034 puts it on
                // each line of a multi-line reply).
                if let Some(e) = enhanced {
                    let prefix = e.to_string();
                    for l in &mut lines {
                        if let Some(rest) = l.strip_prefix(&prefix)
                            && (rest.is_empty() || rest.starts_with(' '))
                        {
                            *l = rest.trim_start_matches(' ').to_string();
                        }
                    }
                }
                return Ok(Some(Reply {
                    code,
                    enhanced,
                    lines,
                }));
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_replies_carry_the_class_of_their_code() {
        let r = Reply::new(
            codes::MAILBOX_UNAVAILABLE,
            status::BAD_DEST_MAILBOX,
            "No such user",
        );
        assert_eq!(r.to_bytes(), b"550 5.1.1 No such user\r\n");
        let r = Reply::new(codes::LOCAL_ERROR, status::SYSTEM_OTHER, "Try again");
        assert_eq!(r.one_line(), "451 4.3.0 Try again");
        assert!(r.is_transient());
        let r = Reply::plain(codes::OK, "mx.test greets you\nPIPELINING\nSIZE 10");
        assert_eq!(
            r.to_bytes(),
            b"250-mx.test greets you\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
        let r = Reply::plain(codes::AUTH_CHALLENGE, "");
        assert_eq!(r.to_bytes(), b"334 \r\n");
    }

    #[test]
    fn parsing_multiline_and_enhanced() {
        let mut p = ReplyParser::new();
        p.push(b"250-first line\r\n250-SIZE 10\r");
        assert_eq!(p.next_reply().unwrap(), None);
        p.push(b"\n250 last\r\n550 5.1.1 <x@y>: no such user\r\n");
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.lines, vec!["first line", "SIZE 10", "last"]);
        assert_eq!(r.enhanced, None);
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!(r.code, 550);
        assert_eq!(r.enhanced, Some(EnhancedCode(5, 1, 1)));
        assert_eq!(r.lines, vec!["<x@y>: no such user"]);
        assert_eq!(r.one_line(), "550 5.1.1 <x@y>: no such user");
        assert_eq!(r.to_bytes(), b"550 5.1.1 <x@y>: no such user\r\n");
        assert!(r.is_permanent());
        assert_eq!(p.next_reply().unwrap(), None);
        // A bare code, LF only.
        p.push(b"354\n");
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!((r.code, r.lines.len()), (354, 1));
        // Class mismatch: no enhanced code, the text stays as it was.
        p.push(b"450 5.1.1 odd\r\n");
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!(r.enhanced, None);
        assert_eq!(r.one_line(), "450 5.1.1 odd");
        // Every line of a multi-line reply loses the repeated code.
        p.push(b"452-4.2.2 full\r\n452 4.2.2 try later\r\n");
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!(r.lines, vec!["full", "try later"]);
        assert_eq!(r.to_bytes(), b"452-4.2.2 full\r\n452 4.2.2 try later\r\n");
        assert_eq!(EnhancedCode::parse("4.7.1000"), None);
        assert_eq!(EnhancedCode::parse("4.7.10"), Some(EnhancedCode(4, 7, 10)));
    }

    #[test]
    fn statuses_take_the_class_they_are_given() {
        assert_eq!(status::BAD_CONNECTION.transient(), EnhancedCode(4, 4, 2));
        assert_eq!(status::MESSAGE_TOO_BIG.permanent(), EnhancedCode(5, 3, 4));
        assert_eq!(status::CRYPTO_FAILURE.transient().to_string(), "4.7.5");
    }

    #[test]
    fn parsing_errors() {
        let mut p = ReplyParser::new();
        p.push(b"hello\r\n");
        assert!(p.next_reply().is_err());
        let mut p = ReplyParser::new();
        p.push(b"250-a\r\n251 b\r\n");
        assert!(p.next_reply().is_err());
        let mut p = ReplyParser::new();
        p.push(&vec![b'2'; MAX_REPLY_LINE + 10]);
        assert!(p.next_reply().is_err());
        let mut p = ReplyParser::new();
        p.push(b"250x\r\n");
        assert!(p.next_reply().is_err());
    }
}
