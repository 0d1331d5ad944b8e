//! The client session against scripted server replies, without a socket.

use super::*;

fn cfg(tls: TlsPolicy) -> ClientConfig {
    ClientConfig {
        helo_name: "client.test".into(),
        tls,
        credentials: None,
    }
}

fn tx(rcpts: &[&str]) -> Transaction {
    Transaction {
        mail_from: "alice@src.test".into(),
        rcpt_to: rcpts.iter().map(|s| s.to_string()).collect(),
        size: 100,
        body_8bit: false,
    }
}

/// Feed a server line block; return (client output, action).
fn step(s: &mut ClientSession, input: &str) -> (String, Action) {
    let a = s.handle(input.as_bytes());
    (String::from_utf8(s.take_output()).unwrap(), a)
}

const EHLO_PIPE: &str =
    "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n";

#[test]
fn ehlo_capabilities() {
    let mut p = ReplyParser::new();
    p.push(b"250-mx.test greets you\r\n250-PIPELINING\r\n250-SIZE 35882577\r\n250-STARTTLS\r\n250-AUTH PLAIN login\r\n250-AUTH=PLAIN LOGIN CRAM-MD5\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n");
    let caps = Capabilities::from_ehlo(&p.next_reply().unwrap().unwrap());
    assert!(caps.esmtp && caps.pipelining && caps.starttls && caps.eightbitmime);
    assert!(caps.smtputf8 && caps.chunking && caps.enhanced_status_codes);
    assert_eq!(caps.size, Some(35_882_577));
    assert_eq!(caps.auth, vec!["PLAIN", "LOGIN", "CRAM-MD5"]);
    p.push(b"250-mx\r\n250 SIZE\r\n");
    let caps = Capabilities::from_ehlo(&p.next_reply().unwrap().unwrap());
    assert_eq!(caps.size, Some(0));
    assert!(!caps.pipelining && !caps.starttls);
}

#[test]
fn pipelined_transaction_with_per_recipient_results() {
    let mut s = ClientSession::new(
        cfg(TlsPolicy::Opportunistic),
        tx(&["a@dest.test", "b@dest.test", "c@dest.test"]),
    );
    let (out, a) = step(&mut s, "220 mx.test ESMTP\r\n");
    assert_eq!(
        (out.as_str(), a),
        ("EHLO client.test\r\n", Action::NeedInput)
    );
    let (out, a) = step(&mut s, EHLO_PIPE);
    assert_eq!(a, Action::NeedInput);
    // One batch: MAIL, all RCPTs, DATA.
    assert_eq!(
        out,
        "MAIL FROM:<alice@src.test> SIZE=100\r\nRCPT TO:<a@dest.test>\r\nRCPT TO:<b@dest.test>\r\nRCPT TO:<c@dest.test>\r\nDATA\r\n"
    );
    // Replies arrive in pieces.
    let (out, a) = step(&mut s, "250 2.1.0 ok\r\n250 2.1.5 ok\r\n45");
    assert_eq!((out.as_str(), a), ("", Action::NeedInput));
    let (_, a) = step(
        &mut s,
        "0 4.2.0 greylisted\r\n550 5.1.1 no such user\r\n354 go ahead\r\n",
    );
    assert_eq!(a, Action::SendData);
    assert!(s.awaiting_data_reply());
    let (out, a) = step(&mut s, "");
    assert_eq!((out.as_str(), a), ("", Action::NeedInput));
    let (out, a) = step(&mut s, "250 2.0.0 queued as X\r\n");
    assert_eq!((out.as_str(), a), ("QUIT\r\n", Action::Done));
    let o = s.outcome();
    assert!(!o.try_next_host && o.data_sent && !o.tls);
    assert_eq!(o.rcpts[0].status, Status::Delivered);
    assert_eq!(o.rcpts[0].reason, "250 2.0.0 queued as X");
    assert_eq!(o.rcpts[1].status, Status::Temporary);
    assert_eq!(o.rcpts[1].enhanced, EnhancedCode(4, 2, 0));
    assert_eq!(o.rcpts[2].status, Status::Permanent);
    assert_eq!(o.rcpts[2].reason, "550 5.1.1 no such user");
}

#[test]
fn without_pipelining_commands_go_one_by_one() {
    let mut s = ClientSession::new(cfg(TlsPolicy::Off), tx(&["a@d.test", "b@d.test"]));
    step(&mut s, "220 hi\r\n");
    let (out, _) = step(&mut s, "250-mx\r\n250 8BITMIME\r\n");
    assert_eq!(out, "MAIL FROM:<alice@src.test>\r\n");
    let (out, _) = step(&mut s, "250 ok\r\n");
    assert_eq!(out, "RCPT TO:<a@d.test>\r\n");
    let (out, _) = step(&mut s, "550 no\r\n");
    assert_eq!(out, "RCPT TO:<b@d.test>\r\n");
    let (out, _) = step(&mut s, "250 ok\r\n");
    assert_eq!(out, "DATA\r\n");
    let (_, a) = step(&mut s, "354 go\r\n");
    assert_eq!(a, Action::SendData);
    let (out, a) = step(&mut s, "554 5.7.1 spam\r\n");
    assert_eq!((out.as_str(), a), ("QUIT\r\n", Action::Done));
    let o = s.outcome();
    assert_eq!(o.rcpts[0].status, Status::Permanent);
    assert_eq!(o.rcpts[0].enhanced, EnhancedCode(5, 0, 0));
    assert_eq!(o.rcpts[1].status, Status::Permanent);
    assert_eq!(o.rcpts[1].reason, "554 5.7.1 spam");
}

#[test]
fn no_data_when_every_recipient_is_refused() {
    let mut s = ClientSession::new(cfg(TlsPolicy::Off), tx(&["a@d.test"]));
    step(&mut s, "220 hi\r\n");
    step(&mut s, "250 mx\r\n");
    step(&mut s, "250 ok\r\n");
    let (out, a) = step(&mut s, "450 4.2.1 later\r\n");
    assert_eq!((out.as_str(), a), ("QUIT\r\n", Action::Done));
    assert_eq!(s.outcome().rcpts[0].status, Status::Temporary);
    assert!(!s.outcome().data_sent);

    // Pipelined: the server says 354 anyway; an empty content is sent.
    let mut s = ClientSession::new(cfg(TlsPolicy::Off), tx(&["a@d.test"]));
    step(&mut s, "220 hi\r\n");
    step(&mut s, EHLO_PIPE);
    let (out, a) = step(&mut s, "250 ok\r\n550 no\r\n354 go\r\n");
    assert_eq!((out.as_str(), a), (".\r\n", Action::NeedInput));
    let (out, a) = step(&mut s, "554 no valid recipients\r\n");
    assert_eq!((out.as_str(), a), ("QUIT\r\n", Action::Done));
    let o = s.outcome();
    assert_eq!(o.rcpts[0].status, Status::Permanent);
    assert_eq!(o.rcpts[0].reason, "550 no");
}

#[test]
fn mail_from_refused() {
    let mut s = ClientSession::new(cfg(TlsPolicy::Off), tx(&["a@d.test", "b@d.test"]));
    step(&mut s, "220 hi\r\n");
    step(&mut s, EHLO_PIPE);
    let (out, a) = step(
        &mut s,
        "553 5.7.1 sender refused\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n",
    );
    assert_eq!((out.as_str(), a), ("QUIT\r\n", Action::Done));
    let o = s.outcome();
    assert!(!o.try_next_host);
    for r in &o.rcpts {
        assert_eq!(r.status, Status::Permanent);
        assert_eq!(r.reason, "MAIL FROM: 553 5.7.1 sender refused");
    }
    // 4xx to MAIL: temporary, and another host may do better.
    let mut s = ClientSession::new(cfg(TlsPolicy::Off), tx(&["a@d.test"]));
    step(&mut s, "220 hi\r\n");
    step(&mut s, "250 mx\r\n");
    let (_, a) = step(&mut s, "451 4.3.0 local problem\r\n");
    assert_eq!(a, Action::Done);
    let o = s.outcome();
    assert!(o.try_next_host);
    assert_eq!(o.rcpts[0].status, Status::Temporary);
}

#[test]
fn code_421_mid_session() {
    let mut s = ClientSession::new(cfg(TlsPolicy::Off), tx(&["a@d.test", "b@d.test"]));
    step(&mut s, "220 hi\r\n");
    step(&mut s, EHLO_PIPE);
    let (out, a) = step(
        &mut s,
        "250 ok\r\n550 5.1.1 unknown\r\n421 4.3.2 shutting down\r\n",
    );
    assert_eq!((out.as_str(), a), ("QUIT\r\n", Action::Done));
    let o = s.outcome();
    assert_eq!(o.rcpts[0].status, Status::Permanent);
    assert_eq!(o.rcpts[1].status, Status::Temporary);
    assert_eq!(o.rcpts[1].reason, "421 4.3.2 shutting down");
    assert!(!o.try_next_host);
    // Further input is ignored.
    assert_eq!(s.handle(b"250 late\r\n"), Action::Done);

    // 421 as the greeting: a host-level failure.
    let mut s = ClientSession::new(cfg(TlsPolicy::Off), tx(&["a@d.test"]));
    let (out, a) = step(&mut s, "421 4.7.0 too busy\r\n");
    assert_eq!((out.as_str(), a), ("QUIT\r\n", Action::Done));
    let o = s.outcome();
    assert!(o.try_next_host);
    assert_eq!(o.rcpts[0].status, Status::Temporary);
    // A 5xx greeting too is only temporary (try the next MX).
    let mut s = ClientSession::new(cfg(TlsPolicy::Off), tx(&["a@d.test"]));
    step(&mut s, "554 5.7.1 go away\r\n");
    let o = s.outcome();
    assert!(o.try_next_host);
    assert_eq!(o.rcpts[0].status, Status::Temporary);
    assert_eq!(o.rcpts[0].enhanced, EnhancedCode(4, 7, 1));
}

#[test]
fn ehlo_refused_falls_back_to_helo() {
    let mut s = ClientSession::new(cfg(TlsPolicy::Opportunistic), tx(&["a@d.test"]));
    step(&mut s, "220 old server\r\n");
    let (out, _) = step(&mut s, "502 5.5.2 command not recognized\r\n");
    assert_eq!(out, "HELO client.test\r\n");
    let (out, _) = step(&mut s, "250 hello\r\n");
    assert_eq!(out, "MAIL FROM:<alice@src.test>\r\n");
    assert!(!s.capabilities().esmtp);
    step(&mut s, "250 ok\r\n");
    step(&mut s, "250 ok\r\n");
    step(&mut s, "354 go\r\n");
    let (_, a) = step(&mut s, "250 ok\r\n");
    assert_eq!(a, Action::Done);
    assert_eq!(s.outcome().rcpts[0].status, Status::Delivered);

    // HELO refused as well: host failure.
    let mut s = ClientSession::new(cfg(TlsPolicy::Off), tx(&["a@d.test"]));
    step(&mut s, "220 x\r\n");
    step(&mut s, "500 what\r\n");
    let (_, a) = step(&mut s, "550 no\r\n");
    assert_eq!(a, Action::Done);
    assert!(s.outcome().try_next_host);
}

#[test]
fn starttls_then_ehlo_again_and_buffered_input_dropped() {
    let mut s = ClientSession::new(cfg(TlsPolicy::Opportunistic), tx(&["a@d.test"]));
    step(&mut s, "220 x\r\n");
    let (out, _) = step(&mut s, "250-mx\r\n250-STARTTLS\r\n250 PIPELINING\r\n");
    assert_eq!(out, "STARTTLS\r\n");
    // A reply injected behind the 220 must not survive the handshake.
    let (_, a) = step(&mut s, "220 ready\r\n250 injected\r\n");
    assert_eq!(a, Action::StartTls);
    assert_eq!(s.tls_started(), Action::NeedInput);
    assert_eq!(
        String::from_utf8(s.take_output()).unwrap(),
        "EHLO client.test\r\n"
    );
    let (out, _) = step(&mut s, "250-mx\r\n250 PIPELINING\r\n");
    assert!(
        out.starts_with("MAIL FROM:<alice@src.test>\r\nRCPT"),
        "{out}"
    );
    assert!(s.tls_active());
}

#[test]
fn starttls_policies() {
    // Required but not offered.
    let mut s = ClientSession::new(cfg(TlsPolicy::Required), tx(&["a@d.test"]));
    step(&mut s, "220 x\r\n");
    let (out, a) = step(&mut s, "250-mx\r\n250 PIPELINING\r\n");
    assert_eq!((out.as_str(), a), ("QUIT\r\n", Action::Done));
    let o = s.outcome();
    assert_eq!(o.rcpts[0].status, Status::Temporary);
    assert_eq!(o.rcpts[0].enhanced, EnhancedCode(4, 7, 4));
    // Offered but refused: opportunistic goes on in plaintext.
    let mut s = ClientSession::new(cfg(TlsPolicy::Opportunistic), tx(&["a@d.test"]));
    step(&mut s, "220 x\r\n");
    step(&mut s, "250-mx\r\n250 STARTTLS\r\n");
    let (out, _) = step(&mut s, "454 4.7.0 TLS not available\r\n");
    assert_eq!(out, "MAIL FROM:<alice@src.test>\r\n");
    // ...required does not.
    let mut s = ClientSession::new(cfg(TlsPolicy::Required), tx(&["a@d.test"]));
    step(&mut s, "220 x\r\n");
    step(&mut s, "250-mx\r\n250 STARTTLS\r\n");
    let (_, a) = step(&mut s, "454 4.7.0 TLS not available\r\n");
    assert_eq!(a, Action::Done);
    assert!(s.outcome().try_next_host);
    // Handshake failure.
    let mut s = ClientSession::new(cfg(TlsPolicy::Required), tx(&["a@d.test"]));
    step(&mut s, "220 x\r\n");
    step(&mut s, "250-mx\r\n250 STARTTLS\r\n");
    assert_eq!(step(&mut s, "220 go\r\n").1, Action::StartTls);
    let o = s.tls_failed("invalid certificate");
    assert!(o.tls_failed && o.try_next_host);
    assert_eq!(o.rcpts[0].status, Status::Temporary);
    // TlsPolicy::Off never asks.
    let mut s = ClientSession::new(cfg(TlsPolicy::Off), tx(&["a@d.test"]));
    step(&mut s, "220 x\r\n");
    let (out, _) = step(&mut s, "250-mx\r\n250 STARTTLS\r\n");
    assert!(out.starts_with("MAIL"));
}

#[test]
fn auth_plain_only_inside_tls() {
    let mut c = cfg(TlsPolicy::Opportunistic);
    c.credentials = Some(("user".into(), "pass".into()));
    // No TLS offered: the credentials are not sent.
    let mut s = ClientSession::new(c.clone(), tx(&["a@d.test"]));
    step(&mut s, "220 x\r\n");
    let (out, a) = step(&mut s, "250-mx\r\n250 AUTH PLAIN\r\n");
    assert_eq!((out.as_str(), a), ("QUIT\r\n", Action::Done));
    assert_eq!(s.outcome().rcpts[0].status, Status::Temporary);
    // With TLS.
    let mut s = ClientSession::new(c, tx(&["a@d.test"]));
    step(&mut s, "220 x\r\n");
    step(&mut s, "250-mx\r\n250 STARTTLS\r\n");
    step(&mut s, "220 go\r\n");
    s.tls_started();
    s.take_output();
    let (out, _) = step(&mut s, "250-mx\r\n250 AUTH PLAIN LOGIN\r\n");
    assert_eq!(out, "AUTH PLAIN AHVzZXIAcGFzcw==\r\n");
    let (out, _) = step(&mut s, "235 2.7.0 ok\r\n");
    assert_eq!(out, "MAIL FROM:<alice@src.test>\r\n");
    // Failed authentication: temporary.
    let mut c = cfg(TlsPolicy::Required);
    c.credentials = Some(("user".into(), "bad".into()));
    let mut s = ClientSession::new(c, tx(&["a@d.test"]));
    step(&mut s, "220 x\r\n");
    step(&mut s, "250-mx\r\n250 STARTTLS\r\n");
    step(&mut s, "220 go\r\n");
    s.tls_started();
    step(&mut s, "250-mx\r\n250 AUTH PLAIN\r\n");
    let (_, a) = step(&mut s, "535 5.7.8 bad credentials\r\n");
    assert_eq!(a, Action::Done);
    let o = s.outcome();
    assert_eq!(o.rcpts[0].status, Status::Temporary);
    assert!(
        o.rcpts[0].reason.contains("535 5.7.8"),
        "{}",
        o.rcpts[0].reason
    );
}

#[test]
fn size_8bitmime_and_smtputf8() {
    let mut t = tx(&["a@d.test"]);
    t.size = 5000;
    let mut s = ClientSession::new(cfg(TlsPolicy::Off), t);
    step(&mut s, "220 x\r\n");
    let (out, a) = step(&mut s, EHLO_PIPE);
    assert_eq!((out.as_str(), a), ("QUIT\r\n", Action::Done));
    let o = s.outcome();
    assert_eq!(o.rcpts[0].status, Status::Permanent);
    assert_eq!(o.rcpts[0].enhanced, EnhancedCode(5, 3, 4));

    let mut t = tx(&["a@d.test"]);
    t.body_8bit = true;
    let mut s = ClientSession::new(cfg(TlsPolicy::Off), t);
    step(&mut s, "220 x\r\n");
    let (out, _) = step(&mut s, EHLO_PIPE);
    assert!(
        out.starts_with("MAIL FROM:<alice@src.test> SIZE=100 BODY=8BITMIME\r\n"),
        "{out}"
    );

    let mut t = tx(&["jörg@d.test"]);
    t.mail_from = String::new();
    let mut s = ClientSession::new(cfg(TlsPolicy::Off), t.clone());
    step(&mut s, "220 x\r\n");
    step(&mut s, EHLO_PIPE);
    assert_eq!(s.outcome().rcpts[0].enhanced, EnhancedCode(5, 6, 7));
    let mut s = ClientSession::new(cfg(TlsPolicy::Off), t);
    step(&mut s, "220 x\r\n");
    let (out, _) = step(&mut s, "250-mx\r\n250 SMTPUTF8\r\n");
    assert_eq!(out, "MAIL FROM:<> SMTPUTF8\r\n");
}

#[test]
fn connection_lost() {
    // Before anything: host-level.
    let mut s = ClientSession::new(cfg(TlsPolicy::Off), tx(&["a@d.test"]));
    step(&mut s, "220 x\r\n");
    let o = s.connection_lost("connection reset");
    assert!(o.try_next_host);
    assert_eq!(o.rcpts[0].status, Status::Temporary);
    // After the content was sent, before the final reply: NOT delivered.
    let mut s = ClientSession::new(cfg(TlsPolicy::Off), tx(&["a@d.test"]));
    step(&mut s, "220 x\r\n");
    step(&mut s, EHLO_PIPE);
    assert_eq!(
        step(&mut s, "250 ok\r\n250 ok\r\n354 go\r\n").1,
        Action::SendData
    );
    let o = s.connection_lost("connection closed");
    assert!(!o.try_next_host && o.data_sent);
    assert_eq!(o.rcpts[0].status, Status::Temporary);
    assert!(o.rcpts[0].reason.contains("may have been delivered"));
    // Garbage from the server.
    let mut s = ClientSession::new(cfg(TlsPolicy::Off), tx(&["a@d.test"]));
    assert_eq!(step(&mut s, "HTTP/1.1 400 Bad\r\n").1, Action::Done);
    assert!(s.outcome().try_next_host);
}

#[test]
fn dot_stuffing() {
    assert_eq!(dot_stuff(b""), b".\r\n");
    assert_eq!(dot_stuff(b"a\r\n"), b"a\r\n.\r\n");
    assert_eq!(dot_stuff(b"a"), b"a\r\n.\r\n");
    assert_eq!(
        dot_stuff(b".x\r\n..\r\n.\r\nmid.dle\r\n"),
        b"..x\r\n...\r\n..\r\nmid.dle\r\n.\r\n"
    );
    // Bare LF and bare CR become CRLF (no smuggled terminators).
    assert_eq!(dot_stuff(b"a\n.\nb\rc"), b"a\r\n..\r\nb\r\nc\r\n.\r\n");
    assert_eq!(dot_stuff(b"a\r\n\r\n.\r\n"), b"a\r\n\r\n..\r\n.\r\n");
}
