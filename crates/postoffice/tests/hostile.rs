//! Hostile input against every listener of the real binary: overlong
//! lines, binary junk, wrong-state commands, pipelined floods, recipient
//! floods, unterminated DATA, slow clients, connection floods, TLS junk,
//! path-like user names, and a brute-force run against the throttle.
//!
//! No timing assertions: waits are bounded polls. The server's peak RSS is
//! printed and checked against a generous bound.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::*;

const ALICE: &str = "alice@example.test";
const ALICE_PW: &str = "alice secret";
/// Generous bound on the server's peak RSS, in KiB.
const MAX_RSS_KIB: u64 = 200 * 1024;
fn check_rss(server: &Server, what: &str) {
    let kib = peak_rss_kib(server.pid());
    println!("{what}: server peak RSS (VmHWM) = {kib} kB");
    assert!(kib < MAX_RSS_KIB, "{what}: peak RSS {kib} kB");
}

/// Send `payload` from a writer thread while reading up to `n` reply lines
/// (fewer if the server closes the connection). Returns the lines (without
/// CRLF) and the connection.
fn flood(c: Client<TcpStream>, payload: Vec<u8>, n: usize) -> (Vec<String>, Client<TcpStream>) {
    let stream = c.into_inner();
    let mut writer = stream.try_clone().expect("clone socket");
    let t = std::thread::spawn(move || {
        let _ = writer.write_all(&payload);
        let _ = writer.flush();
    });
    let mut reader = Client::new(stream);
    let mut lines = Vec::with_capacity(n);
    while lines.len() < n {
        match reader.try_read_line_bytes() {
            Ok(Some(l)) => {
                assert!(l.ends_with(b"\r\n"), "line without CRLF: {l:?}");
                lines.push(String::from_utf8_lossy(&l[..l.len() - 2]).into_owned());
            }
            Ok(None) => break,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading flood replies after {} lines: {e}", lines.len()),
        }
    }
    t.join().expect("writer thread");
    (lines, reader)
}

/// Read raw bytes until the peer closes (EOF or reset). Panics on timeout.
fn drain_until_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                return;
            }
            Err(e) => panic!("server did not close the connection: {e}"),
        }
    }
}

// ---------------------------------------------------------------- POP3

#[test]
fn pop3_wrong_state_bad_base64_and_flood() {
    let env = Env::new(BIN, "");
    env.add_user(ALICE, ALICE_PW);
    env.deliver(ALICE, &simple_message("one", "body"));
    let server = env.start();

    // Transaction commands before login.
    let mut c = server.connect();
    for cmd in [
        "STAT", "LIST", "UIDL", "RETR 1", "DELE 1", "TOP 1 0", "RSET", "PASS x",
    ] {
        let r = c.cmd(cmd);
        assert!(r.starts_with("-ERR"), "{cmd} before login: {r:?}");
    }
    // Bad base64 in AUTH, initial response and continuation.
    let r = c.cmd("AUTH PLAIN !!!not*base64");
    assert!(r.starts_with("-ERR"), "{r:?}");
    let r = c.cmd("AUTH PLAIN");
    assert!(r.starts_with('+'), "{r:?}");
    let r = c.cmd("%%%%");
    assert!(r.starts_with("-ERR"), "{r:?}");
    let r = c.cmd("AUTH LOGIN");
    assert!(r.starts_with('+'), "{r:?}");
    let r = c.cmd("YWxpY2U"); // unpadded
    assert!(r.starts_with("-ERR"), "{r:?}");
    assert_eq!(c.cmd("NOOP"), "+OK");
    c.cmd("QUIT");

    // Authorization commands after login.
    let mut c = server.login(ALICE, ALICE_PW);
    for cmd in ["USER alice", "PASS x", "AUTH PLAIN", "STLS", "APOP a b"] {
        let r = c.cmd(cmd);
        assert!(r.starts_with("-ERR"), "{cmd} after login: {r:?}");
    }
    assert_eq!(c.stat().0, 1);

    // 10,000 pipelined commands: all answered, in order.
    let (n, size) = c.stat();
    let payload = "NOOP\r\nSTAT\r\n".repeat(5_000).into_bytes();
    let (lines, mut c) = flood(c, payload, 10_000);
    assert_eq!(lines.len(), 10_000, "replies to a 10,000-command flood");
    let stat = format!("+OK {n} {size}");
    for (i, l) in lines.iter().enumerate() {
        let want = if i % 2 == 0 { "+OK" } else { stat.as_str() };
        assert_eq!(l, want, "reply {i} of the flood");
    }
    c.quit();

    // A pre-login flood of junk ends in a clean close after
    // max_bad_commands, and nothing else.
    let c = server.connect();
    let (lines, _c) = flood(c, "XYZZY\r\n".repeat(10_000).into_bytes(), 10_000);
    assert!(lines.len() <= 21, "{} replies", lines.len());
    assert_eq!(
        lines.last().map(String::as_str),
        Some("-ERR Too many invalid commands, closing connection.")
    );
    // The server is fine.
    let mut c = server.login_when_free(ALICE, ALICE_PW);
    assert_eq!(c.stat().0, 1);
    c.quit();
    check_rss(&server, "pop3 flood");
}

#[test]
fn pop3_overlong_line_binary_junk_and_hostile_user_names() {
    let env = Env::new(
        BIN,
        "pop3.max_line_length = 20000\n[auth]\nfree_failures = 1000\nlockout_after = 1000\n",
    );
    env.add_user(ALICE, ALICE_PW);
    let server = env.start();
    let before_outside: Vec<_> = all_files(env.path())
        .into_iter()
        .filter(|p| !p.starts_with(env.data_dir()))
        .collect();

    // 1 MB without a newline, then the session goes on.
    let mut c = server.connect();
    c.send_raw(&vec![b'x'; 1024 * 1024]);
    assert_eq!(c.read_line(), "-ERR Line too long.");
    c.send_raw(b"\r\nNOOP\r\n");
    assert_eq!(c.read_line(), "+OK");
    for junk in [&b"\0\r\n"[..], b"\x80\x81\xfe\xff\r\n", b"US\0R x\r\n"] {
        c.send_raw(junk);
        let r = c.read_line();
        assert!(r.starts_with("-ERR"), "{junk:?}: {r:?}");
    }
    assert_eq!(c.cmd("NOOP"), "+OK");
    c.cmd("QUIT");

    let long = format!("{}@example.test", "a".repeat(10 * 1024));
    let names: Vec<String> = vec![
        "../../../../etc/passwd".into(),
        "../alice@example.test".into(),
        "alice/../../x@example.test".into(),
        "..@example.test".into(),
        "alice@../../example.test".into(),
        "alice%example.test@example.test".into(),
        "%2e%2e%2f%2e%2e@example.test".into(),
        "alice\0@example.test".into(),
        "\0".into(),
        long,
    ];
    for name in &names {
        // USER/PASS (a NUL cannot be sent on a command line: the line
        // itself is refused).
        if !name.contains('\0') {
            let mut c = server.connect();
            let r = c.cmd(&format!("USER {name}"));
            assert_eq!(r, "+OK", "USER {:.40}", name);
            assert_eq!(c.cmd("PASS whatever"), AUTH_FAILED, "PASS for {:.40}", name);
            c.cmd("QUIT");
        }
        // AUTH LOGIN carries any bytes.
        let mut c = server.connect();
        assert!(c.cmd("AUTH LOGIN").starts_with('+'));
        assert!(c.cmd(&base64(name.as_bytes())).starts_with('+'));
        assert_eq!(
            c.cmd(&base64(b"whatever")),
            AUTH_FAILED,
            "AUTH LOGIN {:.40}",
            name
        );
        // AUTH PLAIN (NUL inside the name splits it: still refused).
        let plain = format!("\0{name}\0whatever");
        let r = c.cmd(&format!("AUTH PLAIN {}", base64(plain.as_bytes())));
        assert!(r.starts_with("-ERR"), "{r:?}");
        c.cmd("QUIT");
    }
    // Nothing was created outside data_dir, and no maildrop but alice's.
    let after_outside: Vec<_> = all_files(env.path())
        .into_iter()
        .filter(|p| !p.starts_with(env.data_dir()))
        .collect();
    assert_eq!(before_outside, after_outside);
    let mail = env.data_dir().join("mail");
    for f in all_files(&env.data_dir()) {
        if let Ok(rest) = f.strip_prefix(&mail) {
            assert!(
                rest.starts_with("example.test/alice"),
                "unexpected file {}",
                f.display()
            );
        }
    }
    let mut c = server.login(ALICE, ALICE_PW);
    c.quit();
    check_rss(&server, "pop3 junk");
}

// ---------------------------------------------------------------- SMTP

#[test]
fn smtp_hostile_battery() {
    let env = Env::new(BIN, "smtp.max_recipients = 3\n");
    for u in ["alice", "bob", "carol", "dave"] {
        env.add_user(&format!("{u}@example.test"), "pw");
    }
    let server = env.start();
    let addr = server.smtp_addr();

    // 1 MB line, NUL and high-bit bytes: errors, and the session goes on.
    let mut c = smtp_connect(addr);
    c.send_raw(&vec![b'A'; 1024 * 1024]);
    let (code, text) = smtp_reply(&mut c);
    assert_eq!(code, 500, "{text}");
    c.send_raw(b"\r\nNOOP\r\n");
    assert_eq!(smtp_reply(&mut c).0, 250);
    for junk in [
        &b"\0\0\r\n"[..],
        b"\xff\xfe\x80\r\n",
        b"NO\0OP\r\n",
        b"MAIL FROM:<a\0b@x>\r\n",
    ] {
        c.send_raw(junk);
        let (code, text) = smtp_reply(&mut c);
        assert!((500..600).contains(&code), "{junk:?}: {text}");
    }
    assert_eq!(smtp_cmd(&mut c, "NOOP").0, 250);

    // Wrong-state commands.
    let mut c = smtp_connect(addr);
    for (cmd, want) in [("RCPT TO:<alice@example.test>", 503), ("DATA", 503)] {
        let (code, text) = smtp_cmd(&mut c, cmd);
        assert_eq!(code, want, "{cmd}: {text}");
    }
    assert_eq!(smtp_cmd(&mut c, "MAIL FROM:<>").0, 250);
    let (code, text) = smtp_cmd(&mut c, "MAIL FROM:<>");
    assert_eq!(code, 503, "nested MAIL: {text}");
    let (code, text) = smtp_cmd(&mut c, "DATA");
    assert!(code == 503 || code == 554, "DATA without RCPT: {text}");
    let (code, _) = smtp_cmd(&mut c, "AUTH PLAIN !!!!");
    assert!((500..600).contains(&code), "AUTH on the MX port: {code}");
    assert_eq!(smtp_cmd(&mut c, "RSET").0, 250);
    assert_eq!(smtp_cmd(&mut c, "NOOP").0, 250);

    // 10,000 pipelined commands, answered in order.
    let c = smtp_connect(addr);
    let (lines, mut c) = flood(
        c,
        "NOOP\r\nVRFY someone\r\n".repeat(5_000).into_bytes(),
        10_000,
    );
    assert_eq!(lines.len(), 10_000);
    for (i, l) in lines.iter().enumerate() {
        let want = if i % 2 == 0 { "250" } else { "252" };
        assert!(l.starts_with(want), "reply {i}: {l:?}");
    }
    assert_eq!(smtp_cmd(&mut c, "NOOP").0, 250);

    // 5,000 RCPT TO: the first 3 distinct recipients are taken, every
    // other one gets 452, and the transaction still completes.
    let mut c = smtp_connect(addr);
    assert_eq!(smtp_cmd(&mut c, "MAIL FROM:<sender@remote.example>").0, 250);
    let users = ["alice", "bob", "carol", "dave"];
    let payload: String = (0..5_000)
        .map(|i| format!("RCPT TO:<{}@example.test>\r\n", users[i % 4]))
        .collect();
    let (lines, mut c) = flood(c, payload.into_bytes(), 5_000);
    assert_eq!(lines.len(), 5_000);
    for (i, l) in lines.iter().enumerate() {
        if i < 3 {
            assert!(l.starts_with("250"), "RCPT {i}: {l:?}");
        } else {
            assert!(l.starts_with("452"), "RCPT {i}: {l:?}");
        }
    }
    assert_eq!(smtp_cmd(&mut c, "DATA").0, 354);
    c.send_raw(b"Subject: many\r\n\r\nhello\r\n.\r\n");
    let (code, text) = smtp_reply(&mut c);
    assert_eq!(code, 250, "{text}");
    smtp_cmd(&mut c, "QUIT");
    assert_eq!(
        env.stored_messages(),
        [
            "alice@example.test",
            "bob@example.test",
            "carol@example.test"
        ],
        "one copy each for the first three, none for dave"
    );

    // Unterminated DATA, then the client goes away: nothing stored.
    let mut c = smtp_connect(addr);
    assert_eq!(smtp_cmd(&mut c, "MAIL FROM:<sender@remote.example>").0, 250);
    assert_eq!(smtp_cmd(&mut c, "RCPT TO:<alice@example.test>").0, 250);
    assert_eq!(smtp_cmd(&mut c, "DATA").0, 354);
    c.send_raw(b"Subject: cut\r\n\r\nthis message never ends\r\n.");
    drop(c);
    // A complete delivery after it, to bob, as a synchronisation point.
    let mut c = smtp_connect(addr);
    assert_eq!(smtp_cmd(&mut c, "MAIL FROM:<sender@remote.example>").0, 250);
    assert_eq!(smtp_cmd(&mut c, "RCPT TO:<bob@example.test>").0, 250);
    assert_eq!(smtp_cmd(&mut c, "DATA").0, 354);
    c.send_raw(b"Subject: fine\r\n\r\nok\r\n.\r\n");
    assert_eq!(smtp_reply(&mut c).0, 250);
    smtp_cmd(&mut c, "QUIT");
    // Nothing half-stored either (on Maildir a file left in tmp/ would
    // be listed too).
    assert_eq!(
        env.stored_messages(),
        [
            "alice@example.test",
            "bob@example.test",
            "bob@example.test",
            "carol@example.test"
        ],
        "the cut message was stored"
    );
    assert!(
        env.queued_messages().is_empty(),
        "{:?}",
        env.queued_messages()
    );
    check_rss(&server, "smtp battery");
}

#[test]
fn submission_hostile_battery() {
    let env = Env::new(
        BIN,
        "smtp.max_line_length = 20000\n[auth]\nfree_failures = 1000\nlockout_after = 1000\n",
    );
    env.add_user(ALICE, ALICE_PW);
    let server = env.start();
    let addr = server.submit_addr();
    let before_outside: Vec<_> = all_files(env.path())
        .into_iter()
        .filter(|p| !p.starts_with(env.data_dir()))
        .collect();

    let mut c = smtp_connect(addr);
    // Wrong state: MAIL before AUTH.
    let (code, text) = smtp_cmd(&mut c, "MAIL FROM:<alice@example.test>");
    assert_eq!(code, 530, "{text}");
    // Bad base64.
    let (code, text) = smtp_cmd(&mut c, "AUTH PLAIN !!!!");
    assert_eq!(code, 501, "{text}");
    let (code, _) = smtp_cmd(&mut c, "AUTH LOGIN");
    assert_eq!(code, 334);
    let (code, text) = smtp_cmd(&mut c, "%%%");
    assert_eq!(code, 501, "{text}");
    assert_eq!(smtp_cmd(&mut c, "NOOP").0, 250);
    // 1 MB line (over the 20,000 limit of this test).
    c.send_raw(&vec![b'B'; 1024 * 1024]);
    assert_eq!(smtp_reply(&mut c).0, 500);
    c.send_raw(b"\r\nNOOP\r\n");
    assert_eq!(smtp_reply(&mut c).0, 250);

    // Flood.
    let c = smtp_connect(addr);
    let (lines, _c) = flood(c, "NOOP\r\nRSET\r\n".repeat(5_000).into_bytes(), 10_000);
    assert_eq!(lines.len(), 10_000);
    assert!(lines.iter().all(|l| l.starts_with("250")), "flood replies");

    // Hostile user names: all 535, nothing created.
    let long = format!("{}@example.test", "a".repeat(10 * 1024));
    for name in [
        "../../../../etc/passwd",
        "../alice@example.test",
        "alice@../example.test",
        "alice%example.test@example.test",
        "alice\0@example.test",
        long.as_str(),
    ] {
        let mut c = smtp_connect(addr);
        assert_eq!(smtp_cmd(&mut c, "AUTH LOGIN").0, 334);
        assert_eq!(smtp_cmd(&mut c, &base64(name.as_bytes())).0, 334);
        let (code, text) = smtp_cmd(&mut c, &base64(b"whatever"));
        assert_eq!(code, 535, "{:.40}: {text}", name);
        if !name.contains('\0') {
            let plain = format!("\0{name}\0whatever");
            let (code, text) =
                smtp_cmd(&mut c, &format!("AUTH PLAIN {}", base64(plain.as_bytes())));
            assert_eq!(code, 535, "{:.40}: {text}", name);
        }
    }

    // Unterminated DATA after AUTH, then close: nothing stored or queued.
    let mut c = smtp_connect(addr);
    let plain = format!("\0{ALICE}\0{ALICE_PW}");
    assert_eq!(
        smtp_cmd(&mut c, &format!("AUTH PLAIN {}", base64(plain.as_bytes()))).0,
        235
    );
    assert_eq!(smtp_cmd(&mut c, "MAIL FROM:<alice@example.test>").0, 250);
    assert_eq!(smtp_cmd(&mut c, "RCPT TO:<alice@example.test>").0, 250);
    assert_eq!(smtp_cmd(&mut c, "RCPT TO:<friend@remote.example>").0, 250);
    assert_eq!(smtp_cmd(&mut c, "DATA").0, 354);
    c.send_raw(b"From: alice@example.test\r\nSubject: cut\r\n\r\nno end");
    drop(c);
    // Synchronise with a complete session.
    let mut c = smtp_connect(addr);
    assert_eq!(
        smtp_cmd(&mut c, &format!("AUTH PLAIN {}", base64(plain.as_bytes()))).0,
        235
    );
    smtp_cmd(&mut c, "QUIT");
    assert!(
        env.stored_messages().is_empty(),
        "{:?}",
        env.stored_messages()
    );
    assert!(
        env.queued_messages().is_empty(),
        "{:?}",
        env.queued_messages()
    );
    let after_outside: Vec<_> = all_files(env.path())
        .into_iter()
        .filter(|p| !p.starts_with(env.data_dir()))
        .collect();
    assert_eq!(before_outside, after_outside);
    check_rss(&server, "submission battery");
}

// ---------------------------------------------------------------- all

/// Slow clients hold a connection on every listener, each with a command
/// half sent, while other clients are served completely: each round below
/// runs while all three are connected mid-command (a server that served
/// one client at a time per listener would never greet the round's
/// clients, and their reads would time out). The slow clients then finish
/// their commands and are answered: they were connected throughout.
#[test]
fn slowloris_does_not_block_other_clients() {
    let env = Env::new(BIN, "");
    env.add_user(ALICE, ALICE_PW);
    env.deliver(ALICE, &simple_message("one", "body"));
    let server = env.start();

    let mut slow: Vec<Client<TcpStream>> = [
        (server.pop3_addr(), "+OK"),
        (server.smtp_addr(), "220"),
        (server.submit_addr(), "220"),
    ]
    .into_iter()
    .map(|(addr, greeting)| {
        let mut c = Client::new(tcp_connect(addr));
        let line = c.read_line();
        assert!(line.starts_with(greeting), "{line}");
        c
    })
    .collect();

    // "NOOP\r\n" a piece at a time, one round of other clients between
    // pieces.
    let pieces: [&[u8]; 4] = [b"N", b"O", b"OP", b"\r\n"];
    for (round, piece) in pieces.iter().enumerate() {
        for c in &mut slow {
            c.send_raw(piece);
        }
        if round == pieces.len() - 1 {
            break;
        }
        let mut c = server.login_when_free(ALICE, ALICE_PW);
        let (status, _) = c.cmd_multi("RETR 1");
        assert!(status.starts_with("+OK"), "{status}");
        c.quit();
        let mut s = smtp_connect(server.smtp_addr());
        assert_eq!(smtp_cmd(&mut s, "MAIL FROM:<x@remote.example>").0, 250);
        assert_eq!(smtp_cmd(&mut s, "RCPT TO:<alice@example.test>").0, 250);
        assert_eq!(smtp_cmd(&mut s, "DATA").0, 354);
        s.send_raw(b"Subject: meanwhile\r\n\r\nhi\r\n.\r\n");
        assert_eq!(smtp_reply(&mut s).0, 250);
        assert_eq!(smtp_cmd(&mut s, "QUIT").0, 221);
        let mut s = smtp_connect(server.submit_addr());
        assert_eq!(smtp_cmd(&mut s, "QUIT").0, 221);
    }
    let [pop3, smtp, submit] = &mut slow[..] else {
        unreachable!("three slow clients")
    };
    assert_eq!(pop3.read_line(), "+OK");
    assert!(smtp_reply(smtp).1.starts_with("250"));
    assert!(smtp_reply(submit).1.starts_with("250"));
    assert_eq!(
        env.stored_messages(),
        [ALICE; 4],
        "the three messages sent meanwhile were stored"
    );
    check_rss(&server, "slowloris");
}

#[test]
fn connection_flood_is_refused_then_recovers() {
    let env = Env::new(BIN, "[limits]\nmax_connections_per_ip = 5\n");
    env.add_user(ALICE, ALICE_PW);
    let server = env.start();
    let held: Vec<_> = (0..5).map(|_| server.connect()).collect();
    for _ in 0..20 {
        let mut c = server.connect_raw();
        let lines = c.read_until_closed();
        assert!(
            lines.is_empty()
                || lines == ["-ERR [SYS/TEMP] Too many connections from your address."],
            "{lines:?}"
        );
    }
    for addr in [server.smtp_addr(), server.submit_addr()] {
        let mut c = Client::new(tcp_connect(addr));
        let lines = c.read_until_closed();
        assert!(
            lines.is_empty() || lines == ["421 4.7.0 Too many connections, try again later"],
            "{lines:?}"
        );
    }
    drop(held);
    let mut c = wait_for(Duration::from_secs(60), "a free connection slot", || {
        let mut c = server.connect_raw();
        let first = c.try_read_line_bytes().ok().flatten()?;
        first.starts_with(b"+OK").then_some(c)
    });
    assert_eq!(c.login(ALICE, ALICE_PW).get(..3), Some("+OK"));
    c.quit();
    let mut s = wait_for(Duration::from_secs(60), "an SMTP slot", || {
        let mut c = Client::new(tcp_connect(server.smtp_addr()));
        let first = c.try_read_line_bytes().ok().flatten()?;
        first.starts_with(b"220").then_some(c)
    });
    assert_eq!(smtp_cmd(&mut s, "EHLO x").0, 250);
    check_rss(&server, "connection flood");
}

#[test]
fn tls_handshake_junk_does_not_hurt_the_server() {
    let env = Env::new(BIN, "[limits]\ntls_handshake_timeout_secs = 5\n");
    env.add_user(ALICE, ALICE_PW);
    env.deliver(ALICE, &simple_message("one", "body"));
    let server = env.start();
    let junks: Vec<Vec<u8>> = vec![
        vec![0u8; 4096],
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
        b"\x16\x03\x01\xff\xff".to_vec(),
        b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00".to_vec(),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ];
    let send_junk = |mut s: TcpStream, junk: &[u8]| {
        let _ = s.write_all(junk);
        let _ = s.shutdown(Shutdown::Write);
        drain_until_closed(&mut s);
    };
    for junk in &junks {
        // Implicit TLS.
        send_junk(tcp_connect(server.pop3s_addr()), junk);
        send_junk(tcp_connect(server.submits_addr()), junk);
        // After STLS.
        let mut c = server.connect();
        assert!(c.cmd("STLS").starts_with("+OK"));
        send_junk(c.into_inner(), junk);
        // After STARTTLS, on both SMTP ports.
        for addr in [server.smtp_addr(), server.submit_addr()] {
            let mut c = smtp_connect(addr);
            assert_eq!(smtp_cmd(&mut c, "STARTTLS").0, 220);
            send_junk(c.into_inner(), junk);
        }
    }
    // Still up, TLS and plain.
    let mut t = server.connect_tls();
    assert!(t.read_line().starts_with("+OK"));
    assert_eq!(t.login(ALICE, ALICE_PW).get(..3), Some("+OK"));
    assert_eq!(t.stat().0, 1);
    t.quit();
    let mut s = smtp_connect(server.smtp_addr());
    assert_eq!(smtp_cmd(&mut s, "NOOP").0, 250);
    check_rss(&server, "tls junk");
}

// ---------------------------------------------------------------- brute force

#[test]
fn brute_force_thousand_passwords() {
    let env = Env::new(
        BIN,
        "[auth]\nfree_failures = 3\nbase_delay_ms = 20\nmax_delay_ms = 200\nlockout_after = 50\nlockout_secs = 2\n",
    );
    env.add_user(ALICE, ALICE_PW);
    let server = env.start();

    // 1,000 wrong passwords, pipelined 10 USER/PASS pairs at a time; the
    // server closes a connection after max_bad_commands (20) failures.
    let mut sent = 0usize;
    let mut failed = 0usize;
    let mut c = server.connect();
    let mut on_this = 0;
    while sent < 1_000 {
        if on_this >= 20 {
            let lines = c.read_until_closed();
            assert_eq!(
                lines,
                ["-ERR Too many invalid commands, closing connection."],
                "after 20 failures"
            );
            c = server.connect();
            on_this = 0;
        }
        let batch = 10.min(1_000 - sent);
        let mut payload = String::new();
        for i in 0..batch {
            payload.push_str(&format!("USER {ALICE}\r\nPASS wrong {}\r\n", sent + i));
        }
        c.send_raw(payload.as_bytes());
        for _ in 0..batch {
            assert_eq!(c.read_line(), "+OK");
            assert_eq!(c.read_line(), AUTH_FAILED);
            failed += 1;
        }
        sent += batch;
        on_this += batch;
    }
    assert_eq!(failed, 1_000);
    // (a) Locked: one more wrong guess (re-locks if the lock just ran
    // out), then the right password is refused too.
    let mut c = server.connect();
    assert_eq!(c.login(ALICE, "wrong again"), AUTH_FAILED);
    assert_eq!(c.login(ALICE, ALICE_PW), AUTH_FAILED);
    c.cmd("QUIT");
    // (b) The log has both kinds of line, with the IP.
    let log = wait_for(Duration::from_secs(30), "the lockout in the log", || {
        let log = env.log_contents();
        (log.contains("login failed") && log.contains("locked out")).then_some(log)
    });
    assert!(
        log.lines()
            .any(|l| l.contains("login failed") && l.contains("127.0.0.1")),
        "no 'login failed' line with the IP"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("locked out") && l.contains("127.0.0.1")),
        "no 'locked out' line with the IP"
    );
    // (c) Once lockout_secs has passed, the owner gets in (bounded poll;
    // refused attempts while locked do not extend the lock).
    let mut c = wait_for(Duration::from_secs(60), "the lockout to expire", || {
        let mut c = server.connect();
        let r = c.login(ALICE, ALICE_PW);
        if r.starts_with("+OK") {
            Some(c)
        } else {
            assert_eq!(r, AUTH_FAILED);
            c.cmd("QUIT");
            std::thread::sleep(Duration::from_millis(200));
            None
        }
    });
    c.quit();
    check_rss(&server, "brute force");
}

/// Regression test for a memory problem found by the brute-force test:
/// every failed login runs one argon2 verification, which allocates a
/// 19 MiB block (m = 19456 KiB) and frees it. With glibc malloc (its mmap
/// threshold rises after the first free) those blocks stayed in the heap:
/// the RSS grew by about 19 MiB per failure, to 400-650 MB, so a
/// password-guessing client could pin hundreds of MB. Fixed by mimalloc,
/// or by glibc's `MALLOC_MMAP_THRESHOLD_` (peak ~45-60 MB either way).
#[test]
fn argon2_failures_do_not_balloon_rss() {
    let env = Env::new(
        BIN,
        "[auth]\nfree_failures = 1000\nlockout_after = 100000\n",
    );
    env.add_user(ALICE, ALICE_PW);
    let server = env.start();
    for _ in 0..3 {
        let mut c = server.connect();
        for i in 0..10 {
            assert_eq!(c.login(ALICE, &format!("wrong {i}")), AUTH_FAILED);
        }
        drop(c);
    }
    check_rss(&server, "30 failed logins");
}
