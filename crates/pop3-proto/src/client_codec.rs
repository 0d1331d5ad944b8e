//! Client side, beyond status lines: the contents of multi-line responses
//! (CAPA, LIST, UIDL), the STAT reply, the APOP timestamp of a greeting, and
//! a streaming decoder for RETR/TOP bodies.
//!
//! [`StreamDecoder`] works on bytes rather than lines: it undoes
//! dot-stuffing and finds the terminating `.` line across arbitrary chunk
//! boundaries without ever buffering a line, so a message with a
//! 50-megabyte line costs no more memory than any other. (The line-based
//! [`crate::body::BodyDecoder`] suits the short multi-line responses whose
//! lines the caller frames with a length limit anyway.)

use memchr::memchr;

use crate::client::BadResponse;

/// `EXPIRE` as advertised in CAPA (RFC 2449 section 6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expire {
    /// `EXPIRE NEVER`: the server never deletes on its own.
    Never,
    /// `EXPIRE n`: retrieved messages may be deleted after `n` days (0 =
    /// deleted once the session that retrieved them ends).
    Days(u32),
}

/// The capabilities a server listed in its CAPA response (RFC 2449).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// TOP is supported.
    pub top: bool,
    /// USER/PASS is offered.
    pub user: bool,
    /// UIDL is supported.
    pub uidl: bool,
    /// Commands may be pipelined (RFC 2449).
    pub pipelining: bool,
    /// Response codes are sent (RFC 2449 RESP-CODES).
    pub resp_codes: bool,
    /// The AUTH response code is sent (RFC 3206).
    pub auth_resp_code: bool,
    /// STLS is offered (RFC 2595).
    pub stls: bool,
    /// UTF8 is offered (RFC 6856).
    pub utf8: bool,
    /// SASL mechanisms, upper-cased.
    pub sasl: Vec<String>,
    /// The EXPIRE policy, if announced.
    pub expire: Option<Expire>,
    /// The `USER` suffix of EXPIRE: the value varies per user.
    pub expire_per_user: bool,
    /// `LOGIN-DELAY n`, in seconds.
    pub login_delay: Option<u64>,
    /// The `USER` suffix of LOGIN-DELAY: the value varies per user.
    pub login_delay_per_user: bool,
    /// The IMPLEMENTATION string, if announced.
    pub implementation: Option<String>,
    /// Capabilities this parser does not know, verbatim.
    pub other: Vec<String>,
}

impl Capabilities {
    /// Add one line of a CAPA response (without CRLF, dot-stuffing removed).
    /// Unknown or malformed lines are kept in [`Capabilities::other`].
    pub fn add_line(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let mut words = text.split_ascii_whitespace();
        let Some(name) = words.next() else { return };
        let args: Vec<&str> = words.collect();
        let per_user = |args: &[&str]| args.get(1).is_some_and(|a| a.eq_ignore_ascii_case("USER"));
        match name.to_ascii_uppercase().as_str() {
            "TOP" => self.top = true,
            "USER" => self.user = true,
            "UIDL" => self.uidl = true,
            "PIPELINING" => self.pipelining = true,
            "RESP-CODES" => self.resp_codes = true,
            "AUTH-RESP-CODE" => self.auth_resp_code = true,
            "STLS" => self.stls = true,
            "UTF8" => self.utf8 = true,
            "SASL" => self
                .sasl
                .extend(args.iter().map(|m| m.to_ascii_uppercase())),
            "IMPLEMENTATION" => self.implementation = Some(args.join(" ")),
            "EXPIRE" => match args.first() {
                Some(v) if v.eq_ignore_ascii_case("NEVER") => self.expire = Some(Expire::Never),
                Some(v) => match v.parse() {
                    Ok(d) => {
                        self.expire = Some(Expire::Days(d));
                        self.expire_per_user = per_user(&args);
                    }
                    Err(_) => self.other.push(text.to_string()),
                },
                None => self.other.push(text.to_string()),
            },
            "LOGIN-DELAY" => match args.first().and_then(|v| v.parse().ok()) {
                Some(secs) => {
                    self.login_delay = Some(secs);
                    self.login_delay_per_user = per_user(&args);
                }
                None => self.other.push(text.to_string()),
            },
            _ => self.other.push(text.to_string()),
        }
    }

    /// Parse a whole CAPA body given as lines.
    pub fn from_lines<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut caps = Capabilities::default();
        for l in lines {
            caps.add_line(l);
        }
        caps
    }

    /// Whether SASL mechanism `mech` (any case) is listed.
    pub fn has_sasl(&self, mech: &str) -> bool {
        self.sasl.iter().any(|m| m.eq_ignore_ascii_case(mech))
    }
}

fn bad(what: &str, line: &[u8]) -> BadResponse {
    let text = String::from_utf8_lossy(line);
    BadResponse(format!(
        "{what}: {}",
        text.chars().take(80).collect::<String>()
    ))
}

fn two_numbers(line: &[u8], what: &str) -> Result<(u64, u64), BadResponse> {
    let text = std::str::from_utf8(line).map_err(|_| bad(what, line))?;
    let mut words = text.split_ascii_whitespace();
    let a = words.next().and_then(|w| w.parse().ok());
    let b = words.next().and_then(|w| w.parse().ok());
    match (a, b) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(bad(what, line)),
    }
}

/// The text of a `+OK` reply to STAT: (message count, total octets).
/// Anything after the two numbers is ignored (RFC 1939 allows it).
pub fn parse_stat(text: &[u8]) -> Result<(u64, u64), BadResponse> {
    two_numbers(text, "STAT reply")
}

/// One LIST scan listing (a line of the multi-line reply, or the text of
/// the single-line `LIST n` reply): (message number, octets).
pub fn parse_list_line(line: &[u8]) -> Result<(u32, u64), BadResponse> {
    let (n, size) = two_numbers(line, "LIST line")?;
    let n = u32::try_from(n)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| bad("LIST line", line))?;
    Ok((n, size))
}

/// One UIDL listing: (message number, unique-id). The unique-id must be 1
/// to 70 characters in 0x21..=0x7E (RFC 1939 section 7); anything else is
/// refused, so a hostile server cannot smuggle spaces or newlines into
/// state files.
pub fn parse_uidl_line(line: &[u8]) -> Result<(u32, String), BadResponse> {
    let text = std::str::from_utf8(line).map_err(|_| bad("UIDL line", line))?;
    let mut words = text.split_ascii_whitespace();
    let n = words
        .next()
        .and_then(|w| w.parse::<u32>().ok())
        .filter(|&n| n > 0);
    let uid = words.next();
    match (n, uid) {
        (Some(n), Some(uid)) if valid_uid(uid) => Ok((n, uid.to_string())),
        _ => Err(bad("UIDL line", line)),
    }
}

/// Whether `uid` is a well-formed unique-id (1 to 70 characters 0x21..=0x7E).
pub fn valid_uid(uid: &str) -> bool {
    (1..=70).contains(&uid.len()) && uid.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// The APOP timestamp (`<...>` including the angle brackets) in a greeting's
/// text, if the server offered one (RFC 1939 section 7). Only a msg-id-like
/// token containing `@` counts.
pub fn apop_timestamp(greeting: &str) -> Option<&str> {
    let start = greeting.find('<')?;
    let len = greeting[start..].find('>')?;
    let ts = &greeting[start..=start + len];
    (ts.contains('@') && ts.len() > 3 && !ts[1..].contains('<') && !ts.contains(' ')).then_some(ts)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecState {
    LineStart,
    /// A `.` at the start of a line was read (and dropped).
    Dot,
    /// `.` CR at the start of a line.
    DotCr,
    Mid,
    Done,
}

/// Streaming decoder for a multi-line response body (RETR, TOP): removes
/// dot-stuffing and stops right after the terminating `.` CRLF. Line ends
/// are passed through unchanged. A bare-LF terminator (`.` LF) is accepted
/// too, since some servers send one.
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    state: DecState,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamDecoder {
    /// A decoder positioned at the start of the body (right after the
    /// `+OK` status line).
    pub fn new() -> Self {
        StreamDecoder {
            state: DecState::LineStart,
        }
    }

    /// True once the terminating line has been consumed.
    pub fn is_finished(&self) -> bool {
        self.state == DecState::Done
    }

    /// Decode from `input`, appending message bytes to `out`. Returns how
    /// many bytes of `input` were consumed: all of them, unless the
    /// terminator was reached, in which case the bytes after it (the next
    /// response, when pipelining) are left unconsumed.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                DecState::Done => return i,
                DecState::LineStart => {
                    if input[i] == b'.' {
                        self.state = DecState::Dot;
                        i += 1;
                    } else {
                        self.state = DecState::Mid;
                    }
                }
                DecState::Dot => match input[i] {
                    b'\r' => {
                        self.state = DecState::DotCr;
                        i += 1;
                    }
                    b'\n' => {
                        self.state = DecState::Done;
                        i += 1;
                    }
                    _ => self.state = DecState::Mid,
                },
                DecState::DotCr => {
                    if input[i] == b'\n' {
                        self.state = DecState::Done;
                        i += 1;
                    } else {
                        // ".\r" followed by something else: a stuffed line
                        // whose content starts with a CR.
                        out.push(b'\r');
                        self.state = DecState::Mid;
                    }
                }
                DecState::Mid => match memchr(b'\n', &input[i..]) {
                    Some(p) => {
                        out.extend_from_slice(&input[i..i + p + 1]);
                        i += p + 1;
                        self.state = DecState::LineStart;
                    }
                    None => {
                        out.extend_from_slice(&input[i..]);
                        i = input.len();
                    }
                },
            }
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::BodyEncoder;

    #[test]
    fn capabilities() {
        let caps = Capabilities::from_lines([
            &b"TOP"[..],
            b"user",
            b"SASL PLAIN login",
            b"UIDL",
            b"PIPELINING",
            b"RESP-CODES",
            b"EXPIRE 0",
            b"LOGIN-DELAY 900 USER",
            b"IMPLEMENTATION x y",
            b"STLS",
            b"X-FOO bar",
            b"EXPIRE soon",
        ]);
        assert!(caps.top && caps.user && caps.uidl && caps.pipelining && caps.stls);
        assert!(caps.has_sasl("plain") && caps.has_sasl("LOGIN") && !caps.has_sasl("CRAM-MD5"));
        assert_eq!(caps.expire, Some(Expire::Days(0)));
        assert_eq!(caps.login_delay, Some(900));
        assert!(caps.login_delay_per_user && !caps.expire_per_user);
        assert_eq!(caps.implementation.as_deref(), Some("x y"));
        assert_eq!(caps.other, vec!["X-FOO bar", "EXPIRE soon"]);
        let never = Capabilities::from_lines([&b"EXPIRE NEVER"[..]]);
        assert_eq!(never.expire, Some(Expire::Never));
        assert!(!never.stls);
    }

    #[test]
    fn stat_list_uidl() {
        assert_eq!(parse_stat(b"2 320"), Ok((2, 320)));
        assert_eq!(parse_stat(b"0 0 extra"), Ok((0, 0)));
        assert!(parse_stat(b"two 320").is_err());
        assert!(parse_stat(b"").is_err());
        assert_eq!(parse_list_line(b"1 120"), Ok((1, 120)));
        assert!(parse_list_line(b"0 120").is_err());
        assert!(parse_list_line(b"1").is_err());
        assert!(parse_list_line(b"99999999999 1").is_err());
        assert_eq!(
            parse_uidl_line(b"3 QhdPYR:00WBw1Ph7x7"),
            Ok((3, "QhdPYR:00WBw1Ph7x7".into()))
        );
        assert!(parse_uidl_line(b"3").is_err());
        assert!(parse_uidl_line(b"x abc").is_err());
        assert!(parse_uidl_line(&[b'1', b' ', b'a', 0xff]).is_err());
        assert!(parse_uidl_line(format!("1 {}", "a".repeat(71)).as_bytes()).is_err());
        assert!(parse_uidl_line(format!("1 {}", "a".repeat(70)).as_bytes()).is_ok());
    }

    #[test]
    fn apop_timestamps() {
        assert_eq!(
            apop_timestamp("POP3 server ready <1896.697170952@dbc.mtview.ca.us>"),
            Some("<1896.697170952@dbc.mtview.ca.us>")
        );
        assert_eq!(apop_timestamp("postoffice POP3 server ready."), None);
        assert_eq!(apop_timestamp("hi <no-at-sign>"), None);
        assert_eq!(apop_timestamp("hi <a@b"), None);
        assert_eq!(apop_timestamp("hi <a b@c>"), None);
    }

    fn decode_chunks(wire: &[u8], chunk: usize) -> (Vec<u8>, usize) {
        let mut dec = StreamDecoder::new();
        let mut out = Vec::new();
        let mut used = 0;
        for c in wire.chunks(chunk) {
            let n = dec.decode(c, &mut out);
            used += n;
            if dec.is_finished() {
                break;
            }
            assert_eq!(n, c.len());
        }
        assert!(dec.is_finished(), "terminator not found");
        (out, used)
    }

    #[test]
    fn stream_decoder_reverses_encoder_at_any_chunking() {
        let msg = b"A: b\r\n\r\n.\r\n..x\r\n.hidden\r\nplain . line\r\n.\rodd\r\nend\r\n";
        let mut wire = Vec::new();
        let mut enc = BodyEncoder::retr();
        enc.encode(msg, &mut wire);
        enc.finish(&mut wire);
        let body_len = wire.len();
        wire.extend_from_slice(b"+OK next response\r\n");
        for chunk in 1..=wire.len() {
            let (out, used) = decode_chunks(&wire, chunk);
            assert_eq!(out, msg, "chunk size {chunk}");
            assert_eq!(used, body_len, "chunk size {chunk}");
        }
    }

    #[test]
    fn stream_decoder_edge_cases() {
        // Empty body.
        assert_eq!(decode_chunks(b".\r\n", 1), (vec![], 3));
        // Bare-LF terminator.
        assert_eq!(decode_chunks(b"x\n.\n", 2), (b"x\n".to_vec(), 4));
        // A huge line passes through without being buffered as a line.
        let mut wire = vec![b'a'; 100_000];
        wire.extend_from_slice(b"\r\n.\r\n");
        let (out, _) = decode_chunks(&wire, 4096);
        assert_eq!(out.len(), 100_002);
        // A line that is only "." inside text must have been stuffed; an
        // unfinished body is not finished.
        let mut dec = StreamDecoder::new();
        let mut out = Vec::new();
        dec.decode(b"abc\r\n..\r\n", &mut out);
        assert!(!dec.is_finished());
        assert_eq!(out, b"abc\r\n.\r\n");
    }
}
