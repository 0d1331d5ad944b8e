//! Every command, reply code and limit of the SMTP session, without a socket.

use super::*;
use crate::reply::status;

fn session() -> ServerSession {
    ServerSession::new(SessionConfig {
        hostname: "mx.test".into(),
        max_message_size: 1000,
        max_recipients: 3,
        max_line_length: 600,
        max_errors: 5,
        starttls_available: true,
        tls_active: false,
        submission: false,
        plaintext_auth: false,
        ..SessionConfig::default()
    })
}

/// Feed input; answer every check with accept; return (output, last action, unconsumed).
fn run(s: &mut ServerSession, input: &str) -> (String, Action) {
    let mut out = Vec::new();
    let mut inp = input.as_bytes();
    loop {
        let a = s.handle(&mut inp, &mut out);
        match a {
            Action::CheckSender { .. } => s.sender_checked(Verdict::Accept, &mut out),
            Action::Authenticate { .. } => s.auth_result(None, &mut out),
            Action::CheckRecipient { address } => {
                if address.starts_with("unknown") {
                    s.recipient_checked(
                        address,
                        Verdict::Reject(Reply::new(550, status::BAD_DEST_MAILBOX, "No such user")),
                        &mut out,
                    )
                } else {
                    s.recipient_checked(address, Verdict::Accept, &mut out)
                }
            }
            Action::NeedInput if inp.is_empty() => return (String::from_utf8(out).unwrap(), a),
            Action::NeedInput => {}
            other => return (String::from_utf8(out).unwrap(), other),
        }
    }
}

fn ready() -> ServerSession {
    let mut s = session();
    run(&mut s, "EHLO client.test\r\n");
    s
}

#[test]
fn greeting_and_ehlo_capabilities() {
    let mut s = session();
    let mut out = Vec::new();
    s.greeting(&mut out);
    assert_eq!(out, b"220 mx.test ESMTP postoffice\r\n");
    let (r, _) = run(&mut s, "EHLO client.test\r\n");
    let lines: Vec<&str> = r.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines[0], "250-mx.test greets client.test");
    for cap in [
        "PIPELINING",
        "SIZE 1000",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
        "SMTPUTF8",
        "CHUNKING",
    ] {
        assert!(lines.iter().any(|l| &l[4..] == cap), "{cap} missing: {r}");
    }
    assert!(lines.last().unwrap().starts_with("250 "));
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .all(|l| l.starts_with("250-"))
    );
}

#[test]
fn helo_is_plain() {
    let mut s = session();
    assert_eq!(run(&mut s, "HELO client.test\r\n").0, "250 mx.test\r\n");
}

#[test]
fn full_transaction_with_data() {
    let mut s = ready();
    let (r, a) = run(
        &mut s,
        "MAIL FROM:<a@example.net>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\nbody\r\n.\r\n",
    );
    assert_eq!(a, Action::Deliver);
    assert_eq!(
        r,
        "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    let (env, msg) = s.message();
    assert_eq!(env.mail_from, "a@example.net");
    assert_eq!(env.rcpt_to, vec!["b@mx.test".to_string()]);
    assert_eq!(env.helo, "client.test");
    assert_eq!(msg, b"Subject: x\r\n\r\n.dot\r\nbody\r\n");
    let mut out = Vec::new();
    s.delivered(&Reply::new(250, status::OTHER, "OK queued as X"), &mut out);
    assert_eq!(out, b"250 2.0.0 OK queued as X\r\n");
    // A second transaction on the same connection works.
    let (_, a) = run(
        &mut s,
        "MAIL FROM:<>\r\nRCPT TO:<c@mx.test>\r\nDATA\r\nx\r\n.\r\n",
    );
    assert_eq!(a, Action::Deliver);
    assert_eq!(s.message().0.mail_from, "");
    assert_eq!(s.message().0.rcpt_to, vec!["c@mx.test".to_string()]);
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let mut s = session();
    let (r, a) = run(
        &mut s,
        "EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@mx.test>\r\nRCPT TO:<unknown@mx.test>\r\nRCPT TO:<c@mx.test>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n",
    );
    assert_eq!(a, Action::Deliver);
    let codes: Vec<&str> = r
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| &l[..4])
        .collect();
    assert_eq!(codes.last().unwrap(), &"354 ");
    assert!(r.contains("550 5.1.1 No such user\r\n250 2.1.5"));
    assert_eq!(s.message().0.rcpt_to.len(), 2);
    let mut out = Vec::new();
    s.delivered(&Reply::new(250, status::OTHER, "OK"), &mut out);
    // QUIT was pipelined behind the data and is still there to be read.
    let (r, a) = run(&mut s, "QUIT\r\n");
    assert_eq!(r, "221 2.0.0 Bye\r\n");
    assert_eq!(a, Action::Close);
}

#[test]
fn commands_out_of_order() {
    let mut s = session();
    assert!(
        run(&mut s, "MAIL FROM:<a@b.test>\r\n")
            .0
            .starts_with("503 5.5.1")
    );
    assert!(
        run(&mut s, "RCPT TO:<a@b.test>\r\n")
            .0
            .starts_with("503 5.5.1")
    );
    assert!(run(&mut s, "DATA\r\n").0.starts_with("503 5.5.1"));
    let mut s = ready();
    assert!(
        run(&mut s, "RCPT TO:<a@b.test>\r\n")
            .0
            .starts_with("503 5.5.1")
    );
    assert!(run(&mut s, "DATA\r\n").0.starts_with("503 5.5.1"));
    run(&mut s, "MAIL FROM:<a@b.test>\r\n");
    assert!(
        run(&mut s, "MAIL FROM:<a@b.test>\r\n")
            .0
            .starts_with("503 5.5.1 Nested")
    );
    // DATA with no accepted recipient.
    run(&mut s, "RCPT TO:<unknown@mx.test>\r\n");
    assert!(run(&mut s, "DATA\r\n").0.starts_with("554 5.5.1"));
}

#[test]
fn rset_clears_the_transaction() {
    let mut s = ready();
    run(&mut s, "MAIL FROM:<a@b.test>\r\nRCPT TO:<b@mx.test>\r\n");
    assert_eq!(run(&mut s, "RSET\r\n").0, "250 2.0.0 OK\r\n");
    assert!(run(&mut s, "DATA\r\n").0.starts_with("503"));
    assert_eq!(run(&mut s, "NOOP\r\n").0, "250 2.0.0 OK\r\n");
}

#[test]
fn vrfy_expn_help_reveal_nothing() {
    let mut s = ready();
    let vrfy_known = run(&mut s, "VRFY b@mx.test\r\n").0;
    let vrfy_unknown = run(&mut s, "VRFY nobody@mx.test\r\n").0;
    assert!(vrfy_known.starts_with("252 "));
    assert_eq!(vrfy_known, vrfy_unknown);
    assert!(run(&mut s, "EXPN staff\r\n").0.starts_with("502 "));
    assert!(run(&mut s, "HELP\r\n").0.starts_with("214"));
}

#[test]
fn size_limits() {
    let mut s = ready();
    assert!(
        run(&mut s, "MAIL FROM:<a@b.test> SIZE=1001\r\n")
            .0
            .starts_with("552 5.3.4")
    );
    run(
        &mut s,
        "MAIL FROM:<a@b.test> SIZE=10\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n",
    );
    let big = format!("{}\r\n.\r\n", "x".repeat(2000));
    let (r, a) = run(&mut s, &big);
    assert_eq!(
        a,
        Action::NeedInput,
        "an oversized message must not be delivered"
    );
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // The session goes on.
    assert_eq!(run(&mut s, "NOOP\r\n").0, "250 2.0.0 OK\r\n");
}

#[test]
fn too_many_recipients() {
    let mut s = ready();
    let (r, _) = run(
        &mut s,
        "MAIL FROM:<a@b.test>\r\nRCPT TO:<r1@mx.test>\r\nRCPT TO:<r2@mx.test>\r\nRCPT TO:<r3@mx.test>\r\nRCPT TO:<r4@mx.test>\r\n",
    );
    assert!(r.ends_with("452 4.5.3 Too many recipients\r\n"), "{r}");
    assert_eq!(s.envelope().rcpt_to.len(), 3);
}

#[test]
fn bare_lf_in_data_is_refused_and_not_delivered() {
    let mut s = ready();
    run(
        &mut s,
        "MAIL FROM:<a@b.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n",
    );
    let (r, a) = run(&mut s, "line one\nline two\r\n.\r\n");
    assert_eq!(a, Action::NeedInput);
    assert!(r.starts_with("554 5.6.0"), "{r}");
}

#[test]
fn smuggled_message_stays_inside_the_first() {
    let mut s = ready();
    run(
        &mut s,
        "MAIL FROM:<a@b.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n",
    );
    let (_, a) = run(
        &mut s,
        "Subject: one\r\n\r\nx\n.\r\nMAIL FROM:<admin@mx.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\nevil\r\n.\r\n",
    );
    // The whole thing is one message (and it has a bare LF, so it is refused).
    assert_eq!(a, Action::NeedInput);
    assert!(s.envelope().rcpt_to.is_empty());
}

#[test]
fn overlong_command_line() {
    let mut s = ready();
    let long = format!("NOOP {}\r\nNOOP\r\n", "x".repeat(100_000));
    let (r, _) = run(&mut s, &long);
    assert_eq!(r, "500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n");
}

#[test]
fn junk_and_error_limit() {
    let mut s = ready();
    let (r, _) = run(&mut s, "\0\u{1}\u{7f}garbage\r\n");
    assert!(r.starts_with("500 5.5.1"), "{r}");
    let (r, a) = run(&mut s, "FOO\r\nBAR\r\nBAZ\r\nQUX\r\nQUUX\r\n");
    assert_eq!(a, Action::Close);
    assert!(
        r.ends_with("421 4.7.0 Too many errors, closing connection\r\n"),
        "{r}"
    );
}

#[test]
fn starttls_rules() {
    let mut s = ready();
    let (r, a) = run(&mut s, "STARTTLS\r\n");
    assert_eq!(r, "220 2.0.0 Ready to start TLS\r\n");
    assert_eq!(a, Action::StartTls);
    s.tls_started();
    // After TLS the client must EHLO again, and STARTTLS is gone.
    assert!(run(&mut s, "MAIL FROM:<a@b.test>\r\n").0.starts_with("503"));
    let (r, _) = run(&mut s, "EHLO again\r\n");
    assert!(!r.contains("STARTTLS"));
    assert!(
        run(&mut s, "STARTTLS\r\n")
            .0
            .starts_with("503 5.5.1 TLS already active")
    );

    let mut s = ServerSession::new(SessionConfig::default());
    run(&mut s, "EHLO x\r\n");
    assert!(run(&mut s, "STARTTLS\r\n").0.starts_with("502"));
}

#[test]
fn smtputf8_required_for_utf8_addresses() {
    let mut s = ready();
    assert!(
        run(&mut s, "MAIL FROM:<jösé@b.test>\r\n")
            .0
            .starts_with("553 5.6.7")
    );
    let (r, _) = run(
        &mut s,
        "MAIL FROM:<jösé@b.test> SMTPUTF8\r\nRCPT TO:<ü@mx.test>\r\n",
    );
    assert_eq!(r, "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n");
    assert!(s.envelope().smtputf8);
}

#[test]
fn eight_bit_mime_param() {
    let mut s = ready();
    run(&mut s, "MAIL FROM:<a@b.test> BODY=8BITMIME\r\n");
    assert!(s.envelope().body_8bit);
}

#[test]
fn bdat_chunks() {
    let mut s = ready();
    run(&mut s, "MAIL FROM:<a@b.test>\r\nRCPT TO:<b@mx.test>\r\n");
    let (r, a) = run(&mut s, "BDAT 5\r\nhello");
    assert_eq!(r, "250 2.0.0 5 octets received\r\n");
    assert_eq!(a, Action::NeedInput);
    let (_, a) = run(&mut s, "BDAT 8 LAST\r\n\r\n.world");
    assert_eq!(a, Action::Deliver);
    assert_eq!(
        s.message().1,
        b"hello\r\n.world",
        "BDAT content is not unstuffed"
    );
    assert!(s.message().0.chunking);
    let mut out = Vec::new();
    s.delivered(&Reply::new(250, status::OTHER, "OK"), &mut out);
    // DATA after BDAT in one transaction is refused.
    run(
        &mut s,
        "MAIL FROM:<a@b.test>\r\nRCPT TO:<b@mx.test>\r\nBDAT 1\r\nx",
    );
    assert!(run(&mut s, "DATA\r\n").0.starts_with("503"));
}

#[test]
fn bdat_without_recipients_consumes_the_chunk() {
    let mut s = ready();
    run(&mut s, "MAIL FROM:<a@b.test>\r\n");
    let (r, a) = run(&mut s, "BDAT 10 LAST\r\nMAIL FROM:NOOP\r\n");
    assert_eq!(a, Action::NeedInput);
    assert!(r.starts_with("554 5.5.1"), "{r}");
    // The 10 octets were content, not commands: what follows is "NOOP".
    assert_eq!(run(&mut s, "NOOP\r\n").0, "250 2.0.0 OK\r\n");
}

#[test]
fn bdat_over_size_limit() {
    let mut s = ready();
    run(&mut s, "MAIL FROM:<a@b.test>\r\nRCPT TO:<b@mx.test>\r\n");
    let chunk = "y".repeat(1500);
    let (r, a) = run(&mut s, &format!("BDAT 1500 LAST\r\n{chunk}"));
    assert_eq!(a, Action::NeedInput);
    assert!(r.starts_with("552 5.3.4"), "{r}");
}

#[test]
fn sender_rejected_by_caller() {
    let mut s = ready();
    let mut out = Vec::new();
    let mut inp: &[u8] = b"MAIL FROM:<spam@bad.test>\r\n";
    assert_eq!(
        s.handle(&mut inp, &mut out),
        Action::CheckSender {
            address: "spam@bad.test".into()
        }
    );
    s.sender_checked(
        Verdict::Reject(Reply::new(550, status::NOT_AUTHORIZED, "Sender blocked")),
        &mut out,
    );
    assert_eq!(out, b"550 5.7.1 Sender blocked\r\n");
    assert!(run(&mut s, "RCPT TO:<b@mx.test>\r\n").0.starts_with("503"));
}

#[test]
fn refused_connection_only_accepts_quit() {
    let mut s = session();
    let mut out = Vec::new();
    s.refuse(
        &Reply::new(554, status::NOT_AUTHORIZED, "Client listed by dnsbl.test"),
        &mut out,
    );
    assert_eq!(out, b"554 5.7.1 Client listed by dnsbl.test\r\n");
    assert!(run(&mut s, "EHLO x\r\n").0.starts_with("503"));
    assert!(run(&mut s, "MAIL FROM:<a@b.test>\r\n").0.starts_with("503"));
    assert_eq!(
        run(&mut s, "QUIT\r\n"),
        ("221 2.0.0 Bye\r\n".into(), Action::Close)
    );
}

#[test]
fn addresses_reach_the_caller_as_parsed() {
    // The caller decides about relaying; make sure it sees the real target
    // of source routes and odd local parts.
    for (line, expect) in [
        ("RCPT TO:<@relay.test:user@mx.test>", Some("user@mx.test")),
        (
            "RCPT TO:<user%other.test@mx.test>",
            Some("user%other.test@mx.test"),
        ),
        ("RCPT TO:<\"user@other.test\"@mx.test>", None),
        (
            "RCPT TO:<other.test!user@mx.test>",
            Some("other.test!user@mx.test"),
        ),
        ("RCPT TO:<postmaster@[127.0.0.1]>", None),
        // RFC 5321 4.1.1.3: the bare postmaster, any case.
        ("RCPT TO:<Postmaster>", Some("postmaster")),
        ("rcpt to: <POSTMASTER>", Some("postmaster")),
    ] {
        let must_pass = line.to_ascii_lowercase().ends_with("<postmaster>");
        let mut s = ready();
        run(&mut s, "MAIL FROM:<a@b.test>\r\n");
        let mut out = Vec::new();
        let input = format!("{line}\r\n");
        let mut inp = input.as_bytes();
        let a = s.handle(&mut inp, &mut out);
        match (a, expect) {
            (Action::CheckRecipient { address }, Some(e)) => assert_eq!(address, e, "{line}"),
            (Action::CheckRecipient { address }, None) => {
                // Any parse is fine as long as the caller gets it to judge.
                assert!(!address.is_empty(), "{line}");
            }
            (other, _) => assert!(
                !must_pass && String::from_utf8_lossy(&out).starts_with('5'),
                "{line}: {other:?} {}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

fn submission(tls: bool, plaintext_auth: bool) -> ServerSession {
    let mut s = ServerSession::new(SessionConfig {
        hostname: "mx.test".into(),
        starttls_available: true,
        tls_active: tls,
        submission: true,
        plaintext_auth,
        ..SessionConfig::default()
    });
    let mut out = Vec::new();
    let mut inp: &[u8] = b"EHLO c\r\n";
    s.handle(&mut inp, &mut out);
    s
}

fn b64(s: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn submission_requires_auth_before_mail() {
    let mut s = submission(true, false);
    assert!(
        run(&mut s, "MAIL FROM:<a@mx.test>\r\n")
            .0
            .starts_with("530 5.7.0")
    );
}

#[test]
fn auth_offered_only_after_tls_unless_allowed() {
    let mut s = submission(false, false);
    let (ehlo, _) = run(&mut s, "EHLO c\r\n");
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert!(
        run(
            &mut s,
            &format!("AUTH PLAIN {}\r\n", b64(b"\0a@mx.test\0pw"))
        )
        .0
        .starts_with("538 5.7.11")
    );
    let mut s = submission(true, false);
    assert!(run(&mut s, "EHLO c\r\n").0.contains("AUTH PLAIN LOGIN"));
    let mut s = submission(false, true);
    assert!(run(&mut s, "EHLO c\r\n").0.contains("AUTH PLAIN LOGIN"));
}

#[test]
fn auth_plain_and_login_flows() {
    let mut s = submission(true, false);
    let mut out = Vec::new();
    let line = format!("AUTH PLAIN {}\r\n", b64(b"\0alice@mx.test\0secret"));
    let mut inp = line.as_bytes();
    assert_eq!(
        s.handle(&mut inp, &mut out),
        Action::Authenticate {
            user: "alice@mx.test".into(),
            password: b"secret".to_vec()
        }
    );
    s.auth_result(Some("alice@mx.test".into()), &mut out);
    assert!(String::from_utf8_lossy(&out).ends_with("235 2.7.0 Authentication successful\r\n"));
    assert_eq!(s.envelope().authenticated.as_deref(), Some("alice@mx.test"));
    assert!(run(&mut s, "AUTH PLAIN\r\n").0.starts_with("503"));
    // The authentication survives transactions.
    assert_eq!(
        run(&mut s, "MAIL FROM:<alice@mx.test>\r\n").0,
        "250 2.1.0 Sender OK\r\n"
    );
    run(&mut s, "RSET\r\n");
    assert_eq!(s.envelope().authenticated.as_deref(), Some("alice@mx.test"));

    let mut s = submission(true, false);
    assert_eq!(run(&mut s, "AUTH LOGIN\r\n").0, "334 VXNlcm5hbWU6\r\n");
    assert_eq!(
        run(&mut s, &format!("{}\r\n", b64(b"bob@mx.test"))).0,
        "334 UGFzc3dvcmQ6\r\n"
    );
    let mut out = Vec::new();
    let l = format!("{}\r\n", b64(b"pw"));
    let mut inp = l.as_bytes();
    assert_eq!(
        s.handle(&mut inp, &mut out),
        Action::Authenticate {
            user: "bob@mx.test".into(),
            password: b"pw".to_vec()
        }
    );
    s.auth_result(None, &mut out);
    assert!(String::from_utf8_lossy(&out).starts_with("535 5.7.8"));
    assert!(s.envelope().authenticated.is_none());
}

#[test]
fn auth_bad_input() {
    let mut s = submission(true, false);
    assert!(
        run(&mut s, "AUTH PLAIN !!!notbase64\r\n")
            .0
            .starts_with("501 5.5.2")
    );
    assert_eq!(run(&mut s, "AUTH PLAIN\r\n").0, "334 \r\n");
    assert!(run(&mut s, "*\r\n").0.starts_with("501 5.0.0"));
    assert!(
        run(&mut s, &format!("AUTH PLAIN {}\r\n", b64(b"no-nuls")))
            .0
            .starts_with("501")
    );
    assert!(
        run(
            &mut s,
            &format!("AUTH PLAIN {}\r\n", b64(b"bob\0alice\0pw"))
        )
        .0
        .starts_with("535")
    );
    assert!(run(&mut s, "AUTH CRAM-MD5\r\n").0.starts_with("504"));
    // AUTH on the MX port is refused.
    let mut s = ready();
    assert!(run(&mut s, "AUTH PLAIN\r\n").0.starts_with("503"));
}

#[test]
fn starttls_forgets_authentication() {
    let mut s = submission(false, true);
    let mut out = Vec::new();
    let line = format!("AUTH PLAIN {}\r\n", b64(b"\0a@mx.test\0pw"));
    let mut inp = line.as_bytes();
    s.handle(&mut inp, &mut out);
    s.auth_result(Some("a@mx.test".into()), &mut out);
    run(&mut s, "STARTTLS\r\n");
    s.tls_started();
    assert!(s.envelope().authenticated.is_none());
}

/// A header section past its limits is refused once the content is read,
/// over DATA and over BDAT alike, and nothing of it is kept meanwhile.
#[test]
fn oversized_headers_are_refused_with_552() {
    let limits = crate::data::HeaderLimits {
        max_fields: 3,
        max_bytes: 200,
    };
    let mut s = ServerSession::new(SessionConfig {
        header_limits: limits,
        max_message_size: 100_000,
        ..SessionConfig::default()
    });
    run(&mut s, "EHLO c\r\n");
    let (out, _) = run(
        &mut s,
        "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\nbody\r\n.\r\n",
    );
    assert!(
        out.ends_with("552 5.3.4 Message header too large: more than 3 header fields\r\n"),
        "{out}"
    );
    assert!(s.message.is_empty());
    // Many tiny fields past the byte limit, and the session goes on.
    let fields: String = (0..100).map(|i| format!("X{i}: y\r\n")).collect();
    let mut s = ServerSession::new(SessionConfig {
        header_limits: crate::data::HeaderLimits {
            max_fields: 10_000,
            max_bytes: 200,
        },
        max_message_size: 100_000,
        ..SessionConfig::default()
    });
    run(&mut s, "EHLO c\r\n");
    let (out, _) = run(
        &mut s,
        &format!(
            "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n{fields}\r\nbody\r\n.\r\nNOOP\r\n"
        ),
    );
    assert!(
        out.contains("552 5.3.4 Message header too large: more than 200 octets\r\n250 2.0.0 OK"),
        "{out}"
    );
    // BDAT.
    let msg = format!("{fields}\r\nbody\r\n");
    let (out, _) = run(
        &mut s,
        &format!(
            "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT {} LAST\r\n{msg}",
            msg.len()
        ),
    );
    assert!(
        out.ends_with("552 5.3.4 Message header too large: more than 200 octets\r\n"),
        "{out}"
    );
    // A header within the limits is delivered.
    let (_, a) = run(
        &mut s,
        "MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nA: 1\r\n\r\nbody\r\n.\r\n",
    );
    assert_eq!(a, Action::Deliver);
}

/// A caller that takes the content as it arrives (to stream it to disk)
/// gets the same message, and the size limit still counts all of it.
#[test]
fn content_can_be_taken_while_it_arrives() {
    let body: String = (0..200)
        .map(|i| format!("line {i} of the message\r\n"))
        .collect();
    for bdat in [false, true] {
        let mut s = ServerSession::new(SessionConfig {
            max_message_size: 100_000,
            ..SessionConfig::default()
        });
        let mut out = Vec::new();
        let mut taken = Vec::new();
        let head = if bdat {
            format!(
                "EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT {} LAST\r\n",
                body.len()
            )
        } else {
            "EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n".to_string()
        };
        let wire = if bdat {
            format!("{head}{body}")
        } else {
            format!("{head}{body}.\r\n")
        };
        let mut action = Action::NeedInput;
        for chunk in wire.as_bytes().chunks(97) {
            let mut input = chunk;
            loop {
                action = s.handle(&mut input, &mut out);
                match action {
                    Action::CheckSender { .. } => s.sender_checked(Verdict::Accept, &mut out),
                    Action::CheckRecipient { ref address } => {
                        s.recipient_checked(address.clone(), Verdict::Accept, &mut out)
                    }
                    _ => break,
                }
            }
            taken.extend_from_slice(s.pending_content());
            s.content_taken();
            if action == Action::Deliver {
                break;
            }
        }
        assert_eq!(action, Action::Deliver, "bdat={bdat}");
        taken.extend_from_slice(s.message().1);
        assert_eq!(String::from_utf8(taken).unwrap(), body, "bdat={bdat}");
        assert_eq!(s.content_received(), body.len());
    }
    // Taking content does not reset the size limit.
    let mut s = ServerSession::new(SessionConfig {
        max_message_size: 1000,
        ..SessionConfig::default()
    });
    run(
        &mut s,
        "EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n",
    );
    let mut out = Vec::new();
    for _ in 0..30 {
        let line = b"0123456789012345678901234567890123456789012345678\r\n";
        let mut input = &line[..];
        assert_eq!(s.handle(&mut input, &mut out), Action::NeedInput);
        s.content_taken();
    }
    let mut input = &b".\r\n"[..];
    s.handle(&mut input, &mut out);
    assert!(String::from_utf8(out).unwrap().contains("552 5.3.4"));
}
