//! The SMTP (MX) listener end to end: real binary, real sockets, mail read
//! back over POP3.

mod common;

use std::net::TcpStream;

use common::{BIN, Client, Env, Server, smtp_cmd as cmd, smtp_connect, smtp_reply as reply};

/// An MX connection after `EHLO client.example.net`.
fn connect(server: &Server) -> Client<TcpStream> {
    smtp_connect(server.smtp_addr())
}

fn env_with_users() -> (Env, Server) {
    let env = Env::new(BIN, "");
    env.add_user("alice@example.test", "pw-alice");
    env.add_user("bob@example.test", "pw-bob");
    let server = env.start();
    (env, server)
}

/// Every message in the maildrop, via POP3 (RETR, dot-unstuffed).
fn pop_all(server: &Server, user: &str, pw: &str) -> Vec<Vec<u8>> {
    let mut c = server.login_when_free(user, pw);
    let out = c.retr_all();
    c.cmd("QUIT");
    out
}

fn send_message<S: std::io::Read + std::io::Write>(
    c: &mut Client<S>,
    from: &str,
    to: &[&str],
    body: &str,
) -> (u16, String) {
    let (code, text) = cmd(c, &format!("MAIL FROM:<{from}>"));
    assert_eq!(code, 250, "{text}");
    for r in to {
        let (code, text) = cmd(c, &format!("RCPT TO:<{r}>"));
        assert_eq!(code, 250, "{text}");
    }
    let (code, text) = cmd(c, "DATA");
    assert_eq!(code, 354, "{text}");
    c.send_raw(body.as_bytes());
    c.send_raw(b".\r\n");
    reply(c)
}

const BODY: &str = "From: Bob <bob@example.net>\r\nTo: alice@example.test\r\nSubject: hello\r\n\r\nHi Alice,\r\n..a line that starts with a dot\r\nbye\r\n";

#[test]
fn message_is_stored_byte_identical_with_trace_headers() {
    let (_env, server) = env_with_users();
    let mut c = connect(&server);
    let (code, text) = send_message(&mut c, "bob@example.net", &["alice@example.test"], BODY);
    assert_eq!(code, 250, "{text}");
    assert!(text.starts_with("250 2.0.0"), "{text}");
    assert_eq!(cmd(&mut c, "QUIT").0, 221);

    let msgs = pop_all(&server, "alice@example.test", "pw-alice");
    assert_eq!(msgs.len(), 1);
    let m = String::from_utf8(msgs[0].clone()).unwrap();
    // The whole stored message: the trace and verification fields the
    // server prepends, then what the client sent, dot-unstuffed, byte for
    // byte. Only the date is taken from the message; the queue id is the
    // one the 250 named. (The test server runs without the DNS-based
    // stages, so no Authentication-Results is added.)
    let id = text
        .trim_end()
        .rsplit_once("id=")
        .map(|(_, id)| id)
        .unwrap_or_else(|| panic!("no queue id in {text:?}"));
    let date = field(&m, "Received")
        .rsplit_once(";\r\n\t")
        .map(|(_, date)| date.trim_end())
        .unwrap_or_else(|| panic!("no date in the Received field of\n{m}"));
    assert!(!m.contains("Authentication-Results:"), "{m}");
    let sent = BODY.replace("\r\n..", "\r\n.");
    let expected = format!(
        "Return-Path: <bob@example.net>\r\n\
         Received: from client.example.net ([127.0.0.1])\r\n\
         \tby test.local (postoffice) with ESMTP id {id}\r\n\
         \tfor <alice@example.test>;\r\n\
         \t{date}\r\n\
         X-Postoffice-Verdict: clean; dnsbl=off spf=off dkim=off dmarc=off virus=off\r\n\
         {sent}"
    );
    assert_eq!(m, expected);
}

/// The header field `name` of message `m` (the first one), with its
/// folded lines and final CRLF.
#[track_caller]
fn field<'a>(m: &'a str, name: &str) -> &'a str {
    let start = if m.starts_with(&format!("{name}:")) {
        0
    } else {
        m.find(&format!("\r\n{name}:"))
            .unwrap_or_else(|| panic!("no {name} field in\n{m}"))
            + 2
    };
    let mut end = start;
    loop {
        let eol = m[end..].find("\r\n").expect("field ends in CRLF") + end + 2;
        end = eol;
        if !m[end..].starts_with([' ', '\t']) {
            return &m[start..end];
        }
    }
}

#[test]
fn multiple_recipients_and_pipelining() {
    let (_env, server) = env_with_users();
    let mut c = connect(&server);
    // Two whole transactions in one write.
    let batch = format!(
        "MAIL FROM:<x@example.net>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n{BODY}.\r\n\
         MAIL FROM:<>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: second\r\n\r\nx\r\n.\r\nQUIT\r\n"
    );
    c.send_raw(batch.as_bytes());
    let codes: Vec<u16> = (0..10).map(|_| reply(&mut c).0).collect();
    assert_eq!(codes, [250, 250, 250, 354, 250, 250, 250, 354, 250, 221]);
    assert_eq!(pop_all(&server, "alice@example.test", "pw-alice").len(), 1);
    let bob = pop_all(&server, "bob@example.test", "pw-bob");
    assert_eq!(bob.len(), 2);
    assert!(String::from_utf8_lossy(&bob[1]).starts_with("Return-Path: <>\r\n"));
}

#[test]
fn no_relaying_and_unknown_users() {
    let (env, server) = env_with_users();
    let mut c = connect(&server);
    assert_eq!(cmd(&mut c, "MAIL FROM:<alice@example.test>").0, 250);
    for (rcpt, want) in [
        ("<someone@elsewhere.example>", "554 5.7.1"),
        ("<nobody@example.test>", "550 5.1.1"),
        ("<alice%elsewhere.example@example.test>", "550 5.1.1"),
        ("<@example.test:someone@elsewhere.example>", "554 5.7.1"),
        ("<\"someone@elsewhere.example\"@example.test>", "5"),
        ("<elsewhere.example!someone@example.test>", "550 5.1.1"),
        ("<postmaster@[127.0.0.1]>", "5"),
        ("<alice@example.test.>", "5"),
        ("<ALICE@EXAMPLE.TEST>", "250"),
    ] {
        let (_, text) = cmd(&mut c, &format!("RCPT TO:{rcpt}"));
        assert!(text.starts_with(want), "RCPT TO:{rcpt} -> {text}");
    }
    // Only the one real local recipient was accepted.
    c.send_raw(b"DATA\r\n");
    assert_eq!(reply(&mut c).0, 354);
    c.send_raw(b"Subject: relay test\r\n\r\nx\r\n.\r\n");
    assert_eq!(reply(&mut c).0, 250);
    // Nothing was stored anywhere but alice's maildrop.
    assert_eq!(env.stored_messages(), ["alice@example.test"]);
    assert_eq!(pop_all(&server, "alice@example.test", "pw-alice").len(), 1);
}

#[test]
fn vrfy_and_expn_reveal_nothing() {
    let (_env, server) = env_with_users();
    let mut c = connect(&server);
    let known = cmd(&mut c, "VRFY alice@example.test");
    let unknown = cmd(&mut c, "VRFY nobody@example.test");
    assert_eq!(known.0, 252);
    assert_eq!(known, unknown);
    assert_eq!(cmd(&mut c, "EXPN all").0, 502);
}

#[test]
fn size_limits_and_nothing_half_stored() {
    let env = Env::new(BIN, "smtp.max_message_size = 4096\n");
    env.add_user("alice@example.test", "pw-alice");
    let server = env.start();
    let mut c = connect(&server);
    let (_, ehlo) = cmd(&mut c, "EHLO again");
    assert!(ehlo.contains("250-SIZE 4096"), "{ehlo}");
    assert!(
        cmd(&mut c, "MAIL FROM:<a@example.net> SIZE=5000")
            .1
            .starts_with("552 5.3.4")
    );
    // Announced small, sent big.
    assert_eq!(cmd(&mut c, "MAIL FROM:<a@example.net> SIZE=100").0, 250);
    assert_eq!(cmd(&mut c, "RCPT TO:<alice@example.test>").0, 250);
    assert_eq!(cmd(&mut c, "DATA").0, 354);
    let big = "x".repeat(70);
    for _ in 0..200 {
        c.send_raw(format!("{big}\r\n").as_bytes());
    }
    c.send_raw(b".\r\n");
    assert!(reply(&mut c).1.starts_with("552 5.3.4"));
    // Bare LF: refused, nothing stored.
    assert_eq!(cmd(&mut c, "MAIL FROM:<a@example.net>").0, 250);
    assert_eq!(cmd(&mut c, "RCPT TO:<alice@example.test>").0, 250);
    assert_eq!(cmd(&mut c, "DATA").0, 354);
    c.send_raw(b"Subject: bare\n\nlf only\n\r\n.\r\n");
    assert!(reply(&mut c).1.starts_with("554 5.6.0"));
    // The connection still works, and the maildrop is empty.
    assert_eq!(cmd(&mut c, "NOOP").0, 250);
    assert!(pop_all(&server, "alice@example.test", "pw-alice").is_empty());
    let tmp = env.maildir("alice@example.test").join("tmp");
    if tmp.exists() {
        assert_eq!(
            std::fs::read_dir(tmp).unwrap().count(),
            0,
            "half-stored file in tmp/"
        );
    }
}

#[test]
fn hostile_commands() {
    let (_env, server) = env_with_users();
    let mut c = connect(&server);
    // A 1 MB line without newline, then a newline: one 500, session goes on.
    c.send_raw(&vec![b'A'; 1024 * 1024]);
    c.send_raw(b"\r\n");
    assert!(reply(&mut c).1.starts_with("500 5.5.2"));
    assert_eq!(cmd(&mut c, "NOOP").0, 250);
    // NUL and high-bit junk.
    c.send_raw(b"\0\xff\xfe\x01junk\r\n");
    assert_eq!(reply(&mut c).0 / 100, 5);
    // Out of order.
    assert_eq!(cmd(&mut c, "DATA").0, 503);
    assert_eq!(cmd(&mut c, "RCPT TO:<alice@example.test>").0, 503);
    // Another client is served meanwhile.
    let mut other = connect(&server);
    assert_eq!(cmd(&mut other, "NOOP").0, 250);
    // Errors up to the limit close the connection with 421.
    let mut last = (0, String::new());
    for _ in 0..20 {
        last = cmd(&mut c, "BOGUS");
        if last.0 == 421 {
            break;
        }
    }
    assert_eq!(last.0, 421, "{}", last.1);
}

#[test]
fn starttls_then_mail_and_no_injection() {
    let (env, server) = env_with_users();
    let mut c = connect(&server);
    // STARTTLS with a command pipelined behind it: the injected command must
    // not be executed inside TLS.
    c.send_raw(b"STARTTLS\r\nMAIL FROM:<evil@example.net>\r\n");
    let (code, _) = reply(&mut c);
    assert_eq!(code, 220);
    let tcp = c.into_inner();
    let mut t = Client::new(env.tls_wrap(tcp));
    // If MAIL had been executed, RCPT would be accepted; it must say "send EHLO first".
    let (code, text) = cmd(&mut t, "RCPT TO:<alice@example.test>");
    assert_eq!(code, 503, "{text}");
    let (code, ehlo) = cmd(&mut t, "EHLO tls.client");
    assert_eq!(code, 250);
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert_eq!(cmd(&mut t, "STARTTLS").0, 503);
    let (code, text) = send_message(&mut t, "bob@example.net", &["alice@example.test"], BODY);
    assert_eq!(code, 250, "{text}");
    let m =
        String::from_utf8(pop_all(&server, "alice@example.test", "pw-alice").remove(0)).unwrap();
    assert!(m.contains("with ESMTPS id"), "{m}");
    assert!(m.contains("(using TLS"), "{m}");
}

#[test]
fn quotas() {
    let (env, server) = env_with_users();
    // A byte quota smaller than the message below.
    env.cli(&["user", "set", "bob@example.test", "--quota-bytes", "100"])
        .ok();
    env.cli(&["user", "set", "alice@example.test", "--quota-messages", "1"])
        .ok();
    env.wait_for_directory(&server);
    let mut c = connect(&server);
    let (code, text) = send_message(
        &mut c,
        "x@example.net",
        &["alice@example.test"],
        "Subject: 1\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250, "{text}");
    assert_eq!(cmd(&mut c, "MAIL FROM:<x@example.net>").0, 250);
    let (_, text) = cmd(&mut c, "RCPT TO:<alice@example.test>");
    assert!(text.starts_with("452 4.2.2"), "{text}");
    assert_eq!(cmd(&mut c, "RSET").0, 250);
    // `deliver` applies the same quota: temporary failure, exit 75.
    let out = env.cli_stdin(
        &["deliver", "alice@example.test"],
        b"Subject: 2\r\n\r\ny\r\n",
    );
    assert_eq!(out.status.code(), Some(75), "{}", out.stderr);
    let long = format!("Subject: big\r\n\r\n{}\r\n", "z".repeat(500));
    assert_eq!(cmd(&mut c, "MAIL FROM:<x@example.net>").0, 250);
    assert_eq!(cmd(&mut c, "RCPT TO:<bob@example.test>").0, 250);
    assert_eq!(cmd(&mut c, "DATA").0, 354);
    c.send_raw(long.as_bytes());
    c.send_raw(b".\r\n");
    let (_, text) = reply(&mut c);
    assert!(text.starts_with("552 5.2.2"), "{text}");
    assert!(pop_all(&server, "bob@example.test", "pw-bob").is_empty());
    let info = env.cli(&["user", "info", "alice@example.test"]).ok().stdout;
    assert!(info.contains("quota messages: 1"), "{info}");
}

#[test]
fn bdat_chunking() {
    let (_env, server) = env_with_users();
    let mut c = connect(&server);
    assert_eq!(cmd(&mut c, "MAIL FROM:<x@example.net>").0, 250);
    assert_eq!(cmd(&mut c, "RCPT TO:<alice@example.test>").0, 250);
    let part1 = "Subject: chunks\r\n\r\n";
    let part2 = ".starts with a dot, not stuffed in BDAT\r\n";
    c.send_raw(format!("BDAT {}\r\n{part1}", part1.len()).as_bytes());
    assert_eq!(reply(&mut c).0, 250);
    c.send_raw(format!("BDAT {} LAST\r\n{part2}", part2.len()).as_bytes());
    assert_eq!(reply(&mut c).0, 250);
    let m =
        String::from_utf8(pop_all(&server, "alice@example.test", "pw-alice").remove(0)).unwrap();
    assert!(m.ends_with(&format!("{part1}{part2}")), "{m}");
}
