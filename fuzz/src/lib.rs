//! The fuzz targets, as plain functions so that both engines drive the same
//! code: libFuzzer (`fuzz_targets/*.rs`, through cargo-fuzz) and the stable
//! fallback runner (`src/bin/runner.rs`).
//!
//! Every target panics on a violated invariant, never on bad input.
#![forbid(unsafe_code)]

use std::sync::Arc;

use pop3_proto::body::{BodyDecoder, Decoded};
use pop3_proto::server::{Advertised, Expire, UserPolicy};
use pop3_proto::{Action, Frame, LineBuffer, Listing, ServerSession, SessionConfig};

/// A target: its name, the function, and seed inputs for the runner.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub seeds: &'static [&'static [u8]],
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "pop3_command",
        run: pop3_command,
        seeds: &[
            b"USER alice@example.test",
            b"PASS secret word",
            b"LIST 1",
            b"TOP 1 10",
            b"AUTH PLAIN AGFsaWNlAHNlY3JldA==",
            b"RETR 4294967296",
            b"UTF8",
        ],
    },
    Target {
        name: "pop3_session",
        run: pop3_session,
        seeds: &[
            b"\x03CAPA\r\nUSER alice\r\nPASS x\r\nSTAT\r\nLIST\r\nUIDL\r\nRETR 1\r\nTOP 2 0\r\nDELE 1\r\nRSET\r\nDELE 2\r\nQUIT\r\n",
            b"\x01AUTH PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\nLIST 3\r\nNOOP\r\nQUIT\r\n",
            b"\x02AUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\nUIDL 2\r\nTOP 1 1\r\nQUIT\r\n",
            b"\x00STLS\r\nUSER a\r\nAPOP a b\r\nUTF8\r\nUSER a\r\nPASS b\r\n",
        ],
    },
    Target {
        name: "smtp_session",
        run: smtp_session,
        seeds: &[
            b"\x00EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n",
            b"\x03EHLO x\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nMAIL FROM:<a@b> SIZE=10 BODY=8BITMIME\r\nRCPT TO:<c@d>\r\nBDAT 5 LAST\r\nhello\r\nRSET\r\nQUIT\r\n",
            b"\x02EHLO x\r\nAUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\nSTARTTLS\r\nEHLO y\r\nVRFY a\r\nEXPN b\r\nHELP\r\nNOOP\r\n",
            b"\x01HELO x\r\nMAIL FROM:<>\r\nRCPT TO:<\"a b\"@[127.0.0.1]>\r\nDATA\r\n.\r\n",
        ],
    },
    Target {
        name: "smtp_data",
        run: smtp_data,
        seeds: &[
            b"\x05Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n",
            b"\x01a\nb\r.\r\n\r\n.\r\n",
            b"\x00\r\n.\r\n",
        ],
    },
    Target {
        name: "sasl",
        run: sasl,
        seeds: &[
            b"AGFsaWNlAHNlY3JldA==",
            b"=",
            b"YWxpY2UAYWxpY2UAc2VjcmV0",
            b"a\x00b\x00c",
            b"====",
        ],
    },
    Target {
        name: "body_roundtrip",
        run: body_roundtrip,
        seeds: &[
            b"\x03Subject: x\r\n\r\n.hello\r\n..\r\n.\r\nend",
            b"\x01a\nb\r\nc\r\r\n\n.\n",
            b"\x00",
        ],
    },
    Target {
        name: "maildir_name",
        run: maildir_name,
        seeds: &[
            b"1700000000.M1P2Q3.host,S=100,W=102:2,S",
            b"alice@example.test",
            b"../../etc@passwd",
            b"1234.x:2,",
        ],
    },
    Target {
        name: "maildir_index",
        run: maildir_index,
        seeds: &[
            b"1700000000.M1P2Q3.host,S=100\t102\nbad line\n",
            b"x\t18446744073709551616\n",
        ],
    },
    Target {
        name: "config",
        run: config,
        seeds: &[
            b"data_dir = \"d\"\nhostname = \"h.example\"\n[pop3]\nlisten = [\"127.0.0.1:0\"]\n[auth]\nfree_failures = 3\n",
            b"[smtp]\nmax_recipients = 0\n",
            b"[limits]\nmax_connections = 1\nmax_connections_per_ip = 1\n",
            b"[queue]\nretry_schedule_secs = []\n",
        ],
    },
    Target {
        name: "pop3_client",
        run: pop3_client,
        seeds: &[
            b"+OK 2 320",
            b"-ERR [AUTH] Authentication failed.",
            b"-ERR [SYS/TEMP/X] y",
            b"1 120\nTOP\nSASL PLAIN LOGIN\nEXPIRE 30 USER\nLOGIN-DELAY 900",
            b"+OK POP3 ready <1896.697170952@dbc.mtview.ca.us>",
        ],
    },
];

/// Every `\n` is preceded by `\r`, and output ends with CRLF if non-empty.
#[track_caller]
fn assert_crlf_lines(out: &[u8], what: &str) {
    if out.is_empty() {
        return;
    }
    assert!(
        out.ends_with(b"\r\n"),
        "{what}: output does not end with CRLF: {:?}",
        String::from_utf8_lossy(out)
    );
    for (i, &b) in out.iter().enumerate() {
        if b == b'\n' {
            assert!(
                i > 0 && out[i - 1] == b'\r',
                "{what}: bare LF in output: {:?}",
                String::from_utf8_lossy(out)
            );
        }
    }
}

/// POP3 command parser: never panics; arguments of a parsed command come
/// from the line.
pub fn pop3_command(data: &[u8]) {
    let _ = pop3_proto::command::parse(data);
    // And line framing over the same bytes, split at an arbitrary point.
    let mut lb = LineBuffer::new(64);
    let mid = data.len() / 2;
    let mut frames = 0usize;
    for part in [&data[..mid], &data[mid..]] {
        lb.extend(part);
        while let Some(f) = lb.next_frame() {
            if let Frame::Line(l) = f {
                assert!(l.len() <= 64, "line longer than the limit");
                assert!(!l.contains(&b'\n'), "frame contains LF");
                let _ = pop3_proto::command::parse(l);
            }
            frames += 1;
        }
        assert!(lb.pending() <= 64 + part.len(), "line buffer grows");
    }
    assert!(frames <= data.len(), "more frames than bytes");
}

struct FakeListing {
    sizes: Vec<u64>,
    uids: Vec<String>,
}

impl Listing for FakeListing {
    fn count(&self) -> usize {
        self.sizes.len()
    }
    fn size(&self, index: usize) -> u64 {
        self.sizes[index]
    }
    fn uid(&self, index: usize) -> &str {
        &self.uids[index]
    }
}

const MESSAGE: &[u8] = b"Subject: fuzz\r\nFrom: a@b\r\n\r\n.line one\r\nline two\n\r\n..\r\nlast";

/// POP3 server session fed arbitrary lines, answering every action. The
/// first byte chooses the session facts and how logins turn out.
pub fn pop3_session(data: &[u8]) {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let cfg = SessionConfig {
        tls_active: flags & 1 != 0,
        stls_available: flags & 2 != 0,
        plaintext_auth: flags & 4 == 0,
        expire: Advertised {
            value: if flags & 8 != 0 {
                Expire::Days(u32::from(flags))
            } else {
                Expire::Never
            },
            per_user: flags & 16 != 0,
        },
        login_delay: Advertised {
            value: u32::from(flags >> 5),
            per_user: flags & 32 != 0,
        },
        max_bad_commands: 5 + u32::from(flags & 7),
        ..SessionConfig::default()
    };
    let mut s = ServerSession::new(cfg);
    let mut out = Vec::new();
    s.greeting(&mut out);
    assert_crlf_lines(&out, "greeting");
    let listing: Arc<dyn Listing> = Arc::new(FakeListing {
        sizes: vec![MESSAGE.len() as u64, 1, 0],
        uids: vec!["uid-1".into(), "u2".into(), "x".repeat(70)],
    });
    let mut lb = LineBuffer::new(255);
    let mut logins = 0u32;
    // Feed in chunks of varying size to exercise framing.
    let mut rest = input;
    let mut step = 1 + usize::from(flags % 7);
    while !rest.is_empty() {
        let n = step.min(rest.len());
        lb.extend(&rest[..n]);
        rest = &rest[n..];
        step = step * 3 % 17 + 1;
        while let Some(frame) = lb.next_frame() {
            out.clear();
            let mut action = s.handle(frame, &mut out);
            loop {
                action = match action {
                    Action::None => break,
                    Action::Authenticate { user, .. } => {
                        logins += 1;
                        // Vary the outcome: mostly success.
                        match (logins + u32::from(flags)) % 6 {
                            0 => s.login_failed(pop3_proto::AuthFailure::Credentials, &mut out),
                            1 => s.login_failed(pop3_proto::AuthFailure::InUse, &mut out),
                            2 => s.login_failed(pop3_proto::AuthFailure::LoginDelay, &mut out),
                            3 => s.login_failed(pop3_proto::AuthFailure::TempFail, &mut out),
                            _ => {
                                s.login_succeeded(
                                    user,
                                    listing.clone(),
                                    UserPolicy {
                                        expire: Expire::Never,
                                        login_delay: 0,
                                    },
                                    &mut out,
                                );
                                Action::None
                            }
                        }
                    }
                    Action::StartTls => {
                        assert_crlf_lines(&out, "before STLS");
                        s.tls_started();
                        lb.clear();
                        break;
                    }
                    Action::Retrieve { index, top } => {
                        assert!(index < listing.count(), "retrieve of a bad index");
                        assert!(out.is_empty(), "output queued before the message opened");
                        if flags % 7 == 0 {
                            // The message vanished: one -ERR, the session goes on.
                            s.retrieve_failed(&mut out);
                            assert!(out.starts_with(b"-ERR"), "retrieve_failed");
                            break;
                        }
                        s.retrieve_started(index, top, &mut out);
                        assert!(out.starts_with(b"+OK"), "retrieve_started");
                        let mut enc = match top {
                            Some(n) => pop3_proto::BodyEncoder::top(n),
                            None => pop3_proto::BodyEncoder::retr(),
                        };
                        let msg = if index == 0 { MESSAGE } else { &b"x"[..] };
                        enc.encode(msg, &mut out);
                        enc.finish(&mut out);
                        break;
                    }
                    Action::Update { deleted } => {
                        for &i in &deleted {
                            assert!(i < listing.count(), "update of a bad index");
                        }
                        let mut sorted = deleted.clone();
                        sorted.sort_unstable();
                        sorted.dedup();
                        assert_eq!(sorted.len(), deleted.len(), "duplicate deletion");
                        s.update_finished(Ok(()), &mut out)
                    }
                    Action::Close => {
                        assert_crlf_lines(&out, "before close");
                        return;
                    }
                };
            }
            assert_crlf_lines(&out, "pop3 reply");
            assert!(out.len() < 64 * 1024, "reply too large");
            if s.is_closed() {
                return;
            }
        }
    }
}

/// SMTP server session fed arbitrary bytes, answering every action.
pub fn smtp_session(data: &[u8]) {
    use postoffice_smtp::{Action as A, Reply, SessionConfig as C, Verdict, codes, status};
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let cfg = C {
        hostname: "mx.example".into(),
        max_message_size: 1000,
        max_recipients: 3,
        max_line_length: 200,
        max_errors: 8,
        starttls_available: flags & 1 != 0,
        tls_active: flags & 4 != 0,
        submission: flags & 2 != 0,
        plaintext_auth: flags & 8 == 0,
        // Small, so that the inputs reach both limits.
        header_limits: postoffice_smtp::data::HeaderLimits {
            max_fields: 6,
            max_bytes: 300,
        },
    };
    let mut s = postoffice_smtp::ServerSession::new(cfg);
    let mut out = Vec::new();
    s.greeting(&mut out);
    assert_crlf_lines(&out, "greeting");
    let mut decisions = u32::from(flags);
    let mut rest = input;
    let mut step = 1 + usize::from(flags % 13);
    while !rest.is_empty() {
        let n = step.min(rest.len());
        step = step * 5 % 31 + 1;
        let mut chunk = &rest[..n];
        rest = &rest[n..];
        loop {
            out.clear();
            let before = chunk.len();
            let action = s.handle(&mut chunk, &mut out);
            assert!(chunk.len() <= before, "input grew");
            decisions = decisions.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let accept = (decisions >> 16) % 4 != 0;
            let verdict = || {
                if accept {
                    Verdict::Accept
                } else {
                    Verdict::Reject(Reply::new(
                        codes::MAILBOX_UNAVAILABLE,
                        status::BAD_DEST_MAILBOX,
                        "No",
                    ))
                }
            };
            match action {
                A::NeedInput => {
                    assert_crlf_lines(&out, "smtp reply");
                    if chunk.is_empty() {
                        break;
                    }
                    // A pending state with input left: the session waits
                    // for a decision it did not ask for. Not allowed.
                    panic!("NeedInput with {} bytes unconsumed", chunk.len());
                }
                A::CheckSender { address } => {
                    assert!(!address.contains(['\r', '\n']), "CR/LF in sender");
                    s.sender_checked(verdict(), &mut out);
                }
                A::CheckRecipient { address } => {
                    assert!(!address.contains(['\r', '\n']), "CR/LF in recipient");
                    assert!(s.envelope().rcpt_to.len() <= 3, "too many recipients");
                    s.recipient_checked(address, verdict(), &mut out);
                }
                A::Authenticate { user, .. } => {
                    s.auth_result(accept.then_some(user), &mut out);
                }
                A::StartTls => {
                    assert_crlf_lines(&out, "before STARTTLS");
                    s.tls_started();
                    chunk = &[];
                }
                A::Deliver => {
                    let (env, msg) = s.message();
                    assert!(msg.len() <= 1000, "message over the size limit");
                    assert!(!env.rcpt_to.is_empty(), "delivery without recipients");
                    assert!(env.rcpt_to.len() <= 3, "too many recipients");
                    if !env.chunking {
                        // DATA content never contains a bare LF (refused).
                        for (i, &b) in msg.iter().enumerate() {
                            if b == b'\n' {
                                assert!(i > 0 && msg[i - 1] == b'\r', "bare LF delivered");
                            }
                        }
                    }
                    let reply = if accept {
                        Reply::new(codes::OK, status::OTHER, "Stored")
                    } else {
                        Reply::new(codes::LOCAL_ERROR, status::SYSTEM_OTHER, "Try later")
                    };
                    s.delivered(&reply, &mut out);
                }
                A::Close => {
                    assert_crlf_lines(&out, "before close");
                    return;
                }
            }
            assert_crlf_lines(&out, "smtp reply");
            if s.is_closed() {
                return;
            }
        }
    }
}

/// SMTP DATA decoder: chunking does not matter; content never exceeds the
/// limit; only `<CRLF>.<CRLF>` ends; dot-stuffed content round-trips.
pub fn smtp_data(data: &[u8]) {
    use postoffice_smtp::data::DataDecoder;
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let limit = 64 + usize::from(split) * 4;
    // Whole.
    let mut d1 = DataDecoder::new(limit);
    let mut o1 = Vec::new();
    let (n1, e1) = d1.decode(input, &mut o1);
    assert!(n1 <= input.len());
    if e1.is_none() {
        assert_eq!(n1, input.len(), "unfinished but input left");
    } else {
        assert!(input[..n1].ends_with(b"\r\n.\r\n") || &input[..n1] == b".\r\n");
    }
    assert!(o1.len() <= limit, "content over the limit");
    // In chunks of `split` bytes.
    let step = usize::from(split % 16) + 1;
    let mut d2 = DataDecoder::new(limit);
    let mut o2 = Vec::new();
    let mut consumed = 0;
    let mut e2 = None;
    while consumed < input.len() && e2.is_none() {
        let end = (consumed + step).min(input.len());
        let (n, e) = d2.decode(&input[consumed..end], &mut o2);
        consumed += n;
        e2 = e;
        if e2.is_none() {
            assert_eq!(consumed, end, "unfinished chunk not fully consumed");
        }
    }
    assert_eq!(e1, e2, "chunking changed the outcome");
    assert_eq!(n1, consumed, "chunking changed the length");
    assert_eq!(o1, o2, "chunking changed the content");

    // Round trip of CRLF content through the client's dot-stuffing.
    let msg: Vec<u8> = {
        let mut m = Vec::new();
        for &b in input {
            if b == b'\n' {
                if m.last() != Some(&b'\r') {
                    m.push(b'\r');
                }
                m.push(b'\n');
            } else if b == b'\r' {
                // Keep only CRs that start a CRLF.
            } else {
                m.push(b);
            }
            if m.ends_with(b"\r") {
                m.pop();
            }
        }
        if !m.is_empty() && !m.ends_with(b"\r\n") {
            m.extend_from_slice(b"\r\n");
        }
        m
    };
    // dot_stuff also appends the terminating ".CRLF".
    let wire = postoffice_smtp::client::dot_stuff(&msg);
    let mut d3 = DataDecoder::new(1 << 20);
    let mut o3 = Vec::new();
    let (n3, e3) = d3.decode(&wire, &mut o3);
    let e3 = e3.expect("a dot-stuffed message with terminator must end");
    assert_eq!(n3, wire.len());
    assert!(
        !e3.too_big && !e3.bare_newline,
        "clean message flagged: {e3:?}"
    );
    assert_eq!(o3, msg, "DATA round trip");
}

/// SASL: base64 decode never panics and round-trips; PLAIN parsing is sane.
pub fn sasl(data: &[u8]) {
    use pop3_proto::sasl;
    if let Ok(raw) = sasl::decode(data) {
        if data != b"=" {
            assert_eq!(sasl::encode(&raw).as_bytes(), data, "base64 not canonical");
        }
        if let Ok((user, pass)) = sasl::parse_plain(&raw) {
            assert!(!user.is_empty());
            assert!(!pass.contains(&0));
        }
    }
    let enc = sasl::encode(data);
    assert_eq!(sasl::decode(enc.as_bytes()).expect("own encoding"), data);
    if let Ok((user, pass)) = sasl::parse_plain(data) {
        assert!(!user.is_empty() && !user.contains(&0));
        assert!(!pass.contains(&0));
    }
}

/// What the store keeps and RETR sends before dot-stuffing: bare LF becomes
/// CRLF and a final CRLF is added to a non-empty message that lacks one.
fn crlf_normalise(x: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() + 8);
    for (i, &b) in x.iter().enumerate() {
        if b == b'\n' && (i == 0 || x[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// decode(encode(x)) == CRLF-normalised x, for any chunking; both client
/// decoders agree; TOP output is a prefix of RETR output.
pub fn body_roundtrip(data: &[u8]) {
    let Some((&chunk, msg)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk % 32) + 1;
    let mut enc = pop3_proto::BodyEncoder::retr();
    let mut wire = Vec::new();
    for c in msg.chunks(chunk) {
        enc.encode(c, &mut wire);
    }
    enc.finish(&mut wire);
    assert_crlf_lines(&wire, "RETR body");
    assert!(wire.ends_with(b".\r\n"));
    let expected = crlf_normalise(msg);

    // Line decoder.
    let mut dec = BodyDecoder::new();
    let mut got = Vec::new();
    let mut rest = &wire[..];
    let mut ended = false;
    while let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
        let line = &rest[..p];
        rest = &rest[p + 2..];
        match dec.line(line) {
            Decoded::Line(l) => {
                got.extend_from_slice(l);
                got.extend_from_slice(b"\r\n");
            }
            Decoded::End => {
                ended = true;
                break;
            }
        }
    }
    assert!(ended, "no terminator");
    assert!(rest.is_empty(), "bytes after the terminator");
    assert_eq!(got, expected, "BodyDecoder round trip");

    // Streaming decoder, fed in other chunks, with a pipelined reply behind.
    let mut wire2 = wire.clone();
    wire2.extend_from_slice(b"+OK next\r\n");
    let mut sd = pop3_proto::client_codec::StreamDecoder::new();
    let mut got2 = Vec::new();
    let mut pos = 0;
    for c in wire2.chunks(chunk * 2 + 1) {
        let n = sd.decode(c, &mut got2);
        pos += n;
        if sd.is_finished() {
            break;
        }
        assert_eq!(n, c.len());
    }
    assert!(sd.is_finished(), "stream decoder did not finish");
    assert_eq!(pos, wire.len(), "stream decoder consumed the next reply");
    assert_eq!(got2, expected, "StreamDecoder round trip");

    // The RETR fast path: on CRLF input (what the store yields) the
    // stuffer must produce exactly the encoder's bytes, in any chunking;
    // on any input, every line start after an LF that is a '.' is stuffed.
    let mut st = pop3_proto::CrlfStuffer::new();
    let mut fast = Vec::new();
    for c in expected.chunks(chunk + 3) {
        st.encode(c, &mut fast);
    }
    st.finish(&mut fast);
    assert_eq!(fast, wire, "CrlfStuffer differs from BodyEncoder on CRLF input");
    let mut st = pop3_proto::CrlfStuffer::new();
    let mut raw = Vec::new();
    for c in msg.chunks(chunk) {
        st.encode(c, &mut raw);
    }
    st.finish(&mut raw);
    assert!(raw.ends_with(b".\r\n"));
    let body = &raw[..raw.len() - 3];
    assert!(
        !body.starts_with(b".\r") && !body.windows(3).any(|w| w == b"\n.\r") || body.is_empty(),
        "an unstuffed '.' line would end the response early"
    );

    // TOP n: a prefix of the RETR body (up to the terminator).
    let n = u64::from(data[0] % 4);
    let mut top = pop3_proto::BodyEncoder::top(n);
    let mut t = Vec::new();
    for c in msg.chunks(chunk) {
        top.encode(c, &mut t);
    }
    top.finish(&mut t);
    assert_crlf_lines(&t, "TOP body");
    let body = &t[..t.len() - 3];
    assert!(wire.starts_with(body), "TOP is not a prefix of RETR");
}

/// Maildir names: UIDs are valid POP3 UIDs; parsers never panic; mailbox
/// names that are accepted cannot escape the storage root.
pub fn maildir_name(data: &[u8]) {
    use postoffice_store::fuzzing as f;
    let s = String::from_utf8_lossy(data);
    let uid = f::uid_of(&s);
    assert!(
        pop3_proto::client_codec::valid_uid(&uid),
        "invalid UID {uid:?} from {s:?}"
    );
    let key = f::key_of(&s);
    assert!(!key.contains(':'));
    assert_eq!(f::uid_of(key), uid, "flags changed the UID");
    let _ = f::w_size(&s);
    let _ = f::received_of(&s);
    let _ = f::looks_like_message(&s);
    let host = f::sanitize_hostname(&s);
    assert!(!host.contains(['/', ':', '\n', '\0']), "hostname {host:?}");
    if let Ok((local, domain)) = f::parse_mailbox(&s) {
        for part in [&local, &domain] {
            assert!(!part.is_empty());
            assert!(part != "." && part != "..", "dot component from {s:?}");
            assert!(!part.contains(['/', '\\', '\0']), "separator from {s:?}");
            assert!(!part.starts_with('.'), "hidden component from {s:?}");
        }
    }
}

/// The size index: parsing a line never panics; a parsed key is a valid
/// message key; a store/load round trip gives back the entries.
pub fn maildir_index(data: &[u8]) {
    use postoffice_store::fuzzing as f;
    for line in data.split(|&b| b == b'\n') {
        if let Some((key, _size)) = f::index_line(line) {
            assert!(f::looks_like_message(key));
            assert!(!key.contains(['\t', '\n', ':']));
        }
    }
    // Round trip through the file, for small inputs (disk I/O is slow).
    if data.len() < 256 && data.first() == Some(&b'!') {
        let dir =
            std::env::temp_dir().join(format!("postoffice-fuzz-index-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("postoffice-index"), data);
        let (sizes, _clean) = f::index_load(&dir);
        f::index_store(&dir, &sizes).expect("store index");
        let (again, clean) = f::index_load(&dir);
        assert_eq!(sizes, again, "index round trip");
        assert!(clean, "an index we wrote is not clean");
    }
}

/// The config loader: never panics; anything it accepts validates.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(cfg) = postoffice_config::Config::from_toml(&text, std::path::Path::new("fuzz.toml"))
    {
        cfg.validate().expect("a loaded config validates");
    }
}

/// The POP3 client's response parsers never panic, and what they accept
/// is well-formed.
pub fn pop3_client(data: &[u8]) {
    use pop3_proto::client_codec as cc;
    let _ = pop3_proto::client::parse_status(data);
    let _ = cc::parse_stat(data);
    if let Ok((n, _)) = cc::parse_list_line(data) {
        assert!(n > 0);
    }
    if let Ok((n, uid)) = cc::parse_uidl_line(data) {
        assert!(n > 0);
        assert!(cc::valid_uid(&uid), "invalid uid accepted: {uid:?}");
    }
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let _caps = cc::Capabilities::from_lines(lines.iter().copied());
    if let Ok(s) = std::str::from_utf8(data)
        && let Some(ts) = cc::apop_timestamp(s)
    {
        assert!(ts.starts_with('<') && ts.ends_with('>'));
    }
}
