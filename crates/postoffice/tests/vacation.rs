//! Vacation auto-replies (RFC 3834, issue 12 item 6) end to end: set with
//! the CLI, mail in over SMTP, replies counted in the senders' maildrops
//! over POP3.

mod common;

use common::{BIN, Env, Server, smtp_cmd as cmd, smtp_connect, smtp_reply as reply};

const OFFLINE: &str = "[dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_secs = 1\n\
                       [filter]\nspf = \"off\"\ndkim = \"off\"\ndmarc = \"off\"\n";

fn send(server: &Server, from: &str, to: &str, message: &str) {
    let mut c = smtp_connect(server.smtp_addr());
    let (code, text) = cmd(&mut c, &format!("MAIL FROM:<{from}>"));
    assert_eq!(code, 250, "{text}");
    let (code, text) = cmd(&mut c, &format!("RCPT TO:<{to}>"));
    assert_eq!(code, 250, "{text}");
    let (code, text) = cmd(&mut c, "DATA");
    assert_eq!(code, 354, "{text}");
    c.send_raw(message.as_bytes());
    c.send_raw(b".\r\n");
    let (code, text) = reply(&mut c);
    assert_eq!(code, 250, "{text}");
    cmd(&mut c, "QUIT");
}

fn pop_all(server: &Server, user: &str) -> Vec<String> {
    let mut c = server.login_when_free(user, "pw");
    let all = c.retr_all();
    c.cmd("QUIT");
    all.iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect()
}

fn setup() -> (Env, Server) {
    let env = Env::new(BIN, OFFLINE);
    for u in [
        "alice@example.test",
        "s1@example.test",
        "s2@example.test",
        "s3@example.test",
        "list@example.test",
        "bcc@example.test",
    ] {
        env.add_user(u, "pw");
    }
    let file = env.path().join("away.txt");
    std::fs::write(
        &file,
        "Subject: Abwesend – back on Monday\n\nI am away until Monday.\nYour mail will be read then.\n",
    )
    .unwrap();
    env.cli(&[
        "user",
        "set",
        "alice@example.test",
        "--vacation-file",
        file.to_str().unwrap(),
        "--vacation-until",
        "2999-12-31",
    ])
    .ok();
    let server = env.start();
    (env, server)
}

fn message(from: &str, i: usize, extra: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: Alice <alice@example.test>\r\nSubject: note {i}\r\nMessage-ID: <m{i}.{from}>\r\n{extra}\r\nbody {i}\r\n"
    )
}

#[test]
fn twenty_messages_from_three_senders_get_three_replies() {
    let (env, server) = setup();
    let info = env.cli(&["user", "info", "alice@example.test"]).ok().stdout;
    assert!(
        info.contains("vacation:       on until 2999-12-31"),
        "{info}"
    );
    let senders = ["s1@example.test", "s2@example.test", "s3@example.test"];
    for i in 0..20 {
        let from = senders[i % 3];
        send(&server, from, "alice@example.test", &message(from, i, ""));
    }
    // Never to a mailing list, an auto-reply, a Bcc copy or the null sender.
    send(
        &server,
        "list@example.test",
        "alice@example.test",
        &message("list@example.test", 100, "List-Id: <news.example.test>\r\n"),
    );
    send(
        &server,
        "list@example.test",
        "alice@example.test",
        &message("list@example.test", 101, "Precedence: bulk\r\n"),
    );
    send(
        &server,
        "list@example.test",
        "alice@example.test",
        &message("list@example.test", 102, "Auto-Submitted: auto-replied\r\n"),
    );
    send(
        &server,
        "bcc@example.test",
        "alice@example.test",
        "From: <bcc@example.test>\r\nTo: <someone@else.test>\r\nSubject: bcc\r\n\r\nx\r\n",
    );
    send(
        &server,
        "",
        "alice@example.test",
        "From: <MAILER-DAEMON@else.test>\r\nTo: <alice@example.test>\r\nSubject: bounce\r\n\r\nx\r\n",
    );
    assert_eq!(pop_all(&server, "alice@example.test").len(), 25);

    // Replies are delivered (locally) before the 250: count them now.
    for (i, s) in senders.iter().enumerate() {
        let got = pop_all(&server, s);
        assert_eq!(got.len(), 1, "exactly one reply to {s}: {got:#?}");
        let r = &got[0];
        assert!(r.starts_with("Return-Path: <>\r\n"), "null sender: {r}");
        assert!(r.contains("\r\nAuto-Submitted: auto-replied\r\n"), "{r}");
        assert!(
            r.contains(&format!("\r\nIn-Reply-To: <m{i}.{s}>\r\n")),
            "answers the first message: {r}"
        );
        assert!(r.contains(&format!("\r\nTo: <{s}>\r\n")), "{r}");
        assert!(r.contains("\r\nFrom: <alice@example.test>\r\n"), "{r}");
        assert!(
            r.contains("\r\nSubject: =?utf-8?B?"),
            "encoded subject: {r}"
        );
        assert!(r.contains("I am away until Monday.\r\n"), "{r}");
    }
    assert!(pop_all(&server, "list@example.test").is_empty());
    assert!(pop_all(&server, "bcc@example.test").is_empty());
    assert!(
        env.queued_messages().is_empty(),
        "{:?}",
        env.queued_messages()
    );
    // The state is durable: in the data directory, or in the database
    // that every node shares.
    if let Some(url) = env.storage_url() {
        assert!(!env.data_dir().join("vacation.txt").exists());
        let rows = common::pg_query(
            &url,
            "SELECT count(*) FROM marks WHERE key LIKE 'vacation %'",
        );
        assert_eq!(rows, [["3"]], "three senders answered");
    } else {
        let state = std::fs::read_to_string(env.data_dir().join("vacation.txt")).unwrap();
        assert_eq!(state.lines().count(), 3, "{state}");
    }
    // And counted.
    let mut http = common::HttpClient::new(server.http_addr());
    let metrics = http.get("/metrics").text();
    assert!(
        metrics.contains("postoffice_address_actions_total{action=\"vacation_replied\"} 3\n"),
        "{metrics}"
    );
}

#[test]
fn vacation_off_and_bad_files() {
    let (env, server) = setup();
    // Not UTF-8: a clear error, nothing changed.
    let bad = env.path().join("latin1.txt");
    std::fs::write(&bad, b"Abwesend bis M\xe4rz\n").unwrap();
    let out = env.cli(&[
        "user",
        "set",
        "alice@example.test",
        "--vacation-file",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("UTF-8"), "{}", out.stderr);
    let out = env.cli(&[
        "user",
        "set",
        "alice@example.test",
        "--vacation-until",
        "next week",
    ]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("YYYY-MM-DD"), "{}", out.stderr);

    // Forward targets are checked too.
    for (bad, why) in [
        ("not an address", "forward must be an address"),
        ("alice@example.test", "another address than the user's own"),
    ] {
        let out = env.cli(&["user", "set", "alice@example.test", "--forward", bad]);
        assert!(!out.status.success());
        assert!(out.stderr.contains(why), "{bad}: {}", out.stderr);
    }
    let out = env.cli(&["user", "set", "alice@example.test", "--vacation", "on"]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("--vacation-file"), "{}", out.stderr);

    env.cli(&["user", "set", "alice@example.test", "--vacation", "off"])
        .ok();
    let info = env.cli(&["user", "info", "alice@example.test"]).ok().stdout;
    assert!(info.contains("vacation:       off"), "{info}");
    env.wait_for_directory(&server);
    send(
        &server,
        "s1@example.test",
        "alice@example.test",
        &message("s1@example.test", 1, ""),
    );
    assert_eq!(env.stored_messages(), ["alice@example.test"]);
    assert!(pop_all(&server, "s1@example.test").is_empty());
}

/// A local user submitting (587, AUTH) to a user on vacation gets the
/// reply too: the rules live in the core, not in the MX listener.
#[test]
fn submitted_mail_is_answered_once() {
    let (_env, server) = setup();
    for i in 0..3 {
        let mut c = common::Client::new(common::tcp_connect(server.submit_addr()));
        assert_eq!(reply(&mut c).0, 220);
        assert_eq!(cmd(&mut c, "EHLO client.test").0, 250);
        let token = common::base64(b"\0s2@example.test\0pw");
        assert_eq!(cmd(&mut c, &format!("AUTH PLAIN {token}")).0, 235);
        assert_eq!(cmd(&mut c, "MAIL FROM:<s2@example.test>").0, 250);
        assert_eq!(cmd(&mut c, "RCPT TO:<alice@example.test>").0, 250);
        assert_eq!(cmd(&mut c, "DATA").0, 354);
        c.send_raw(message("s2@example.test", i, "").as_bytes());
        c.send_raw(b".\r\n");
        let (code, text) = reply(&mut c);
        assert_eq!(code, 250, "{text}");
        cmd(&mut c, "QUIT");
    }
    let got = pop_all(&server, "s2@example.test");
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(got[0].contains("Auto-Submitted: auto-replied"));
}
