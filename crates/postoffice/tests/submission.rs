//! Mail submission (ports 587/465) end to end.

mod common;

use std::io::{Read, Write};

use common::{BIN, Client, Env, Server, smtp_cmd as cmd, smtp_reply as reply, tcp_connect};

fn b64(s: &str) -> String {
    common::base64(s.as_bytes())
}

fn setup(extra: &str) -> (Env, Server) {
    let env = Env::new(BIN, extra);
    env.add_user("alice@example.test", "pw-alice");
    env.add_user("bob@example.test", "pw-bob");
    let server = env.start();
    (env, server)
}

fn connect(server: &Server) -> Client<std::net::TcpStream> {
    let mut c = Client::new(tcp_connect(server.submit_addr()));
    assert_eq!(reply(&mut c).0, 220);
    assert_eq!(cmd(&mut c, "EHLO client.test").0, 250);
    c
}

fn login<S: Read + Write>(c: &mut Client<S>, user: &str, pw: &str) -> (u16, String) {
    cmd(
        c,
        &format!("AUTH PLAIN {}", b64(&format!("\0{user}\0{pw}"))),
    )
}

fn send<S: Read + Write>(c: &mut Client<S>, from: &str, to: &str, body: &str) -> (u16, String) {
    let (code, text) = cmd(c, &format!("MAIL FROM:<{from}>"));
    if code != 250 {
        return (code, text);
    }
    let (code, text) = cmd(c, &format!("RCPT TO:<{to}>"));
    if code != 250 {
        return (code, text);
    }
    assert_eq!(cmd(c, "DATA").0, 354);
    c.send_raw(body.as_bytes());
    c.send_raw(b".\r\n");
    reply(c)
}

/// Every message in the maildrop, via POP3 (RETR, dot-unstuffed).
fn pop_all(server: &Server, user: &str, pw: &str) -> Vec<String> {
    let mut c = server.login_when_free(user, pw);
    let out = c.retr_all();
    c.cmd("QUIT");
    out.iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect()
}

#[test]
fn auth_is_required_and_checked() {
    let (_env, server) = setup("");
    let mut c = connect(&server);
    let (code, text) = cmd(&mut c, "MAIL FROM:<alice@example.test>");
    assert_eq!(code, 530, "{text}");
    assert_eq!(login(&mut c, "alice@example.test", "wrong").0, 535);
    assert!(cmd(&mut c, "AUTH PLAIN %%%notbase64").1.starts_with("501"));
    assert_eq!(login(&mut c, "alice@example.test", "pw-alice").0, 235);
    assert_eq!(cmd(&mut c, "MAIL FROM:<alice@example.test>").0, 250);
}

#[test]
fn auth_login_mechanism() {
    let (_env, server) = setup("");
    let mut c = connect(&server);
    assert_eq!(cmd(&mut c, "AUTH LOGIN").0, 334);
    assert_eq!(cmd(&mut c, &b64("alice@example.test")).0, 334);
    assert_eq!(cmd(&mut c, &b64("pw-alice")).0, 235);
}

#[test]
fn own_address_only() {
    let (_env, server) = setup("");
    let mut c = connect(&server);
    assert_eq!(login(&mut c, "alice@example.test", "pw-alice").0, 235);
    let (code, text) = cmd(&mut c, "MAIL FROM:<bob@example.test>");
    assert_eq!(code, 553, "{text}");
    assert!(text.starts_with("553 5.7.1"), "{text}");
    assert_eq!(cmd(&mut c, "MAIL FROM:<>").0, 553);
    // Envelope OK but the From: header claims someone else.
    let (code, text) = send(
        &mut c,
        "alice@example.test",
        "bob@example.test",
        "From: Bob <bob@example.test>\r\nSubject: forged\r\n\r\nx\r\n",
    );
    assert_eq!(code, 553, "{text}");
    assert!(pop_all(&server, "bob@example.test", "pw-bob").is_empty());
}

#[test]
fn sender_aliases_from_config() {
    let (_env, server) =
        setup("[submission.sender_aliases]\n\"alice@example.test\" = [\"sales@example.test\"]\n");
    let mut c = connect(&server);
    assert_eq!(login(&mut c, "alice@example.test", "pw-alice").0, 235);
    let (code, text) = send(
        &mut c,
        "sales@example.test",
        "bob@example.test",
        "From: Sales <sales@example.test>\r\nSubject: alias\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250, "{text}");
}

#[test]
fn local_delivery_adds_date_message_id_and_trace() {
    let (_env, server) = setup("");
    let mut c = connect(&server);
    assert_eq!(login(&mut c, "alice@example.test", "pw-alice").0, 235);
    let (code, text) = send(
        &mut c,
        "alice@example.test",
        "bob@example.test",
        "From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nhello bob\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let msgs = pop_all(&server, "bob@example.test", "pw-bob");
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert!(
        m.starts_with("Return-Path: <alice@example.test>\r\nReceived: from client.test"),
        "{m}"
    );
    assert!(m.contains("with ESMTPA id "), "{m}");
    assert!(m.contains("\r\nDate: "), "{m}");
    assert!(m.contains("\r\nMessage-ID: <"), "{m}");
    assert!(m.ends_with("Subject: hi\r\n\r\nhello bob\r\n"), "{m}");
}

#[test]
fn plaintext_auth_needs_tls_when_configured_and_implicit_tls_port() {
    let (env, server) = setup("submission.allow_plaintext_auth_loopback = false\n");
    let mut c = Client::new(tcp_connect(server.submit_addr()));
    assert_eq!(reply(&mut c).0, 220);
    let (_, ehlo) = cmd(&mut c, "EHLO client.test");
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(
        login(&mut c, "alice@example.test", "pw-alice")
            .1
            .starts_with("538 5.7.11")
    );
    assert_eq!(cmd(&mut c, "STARTTLS").0, 220);
    let mut t = Client::new(env.tls_wrap(c.into_inner()));
    let (_, ehlo) = cmd(&mut t, "EHLO client.test");
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert_eq!(login(&mut t, "alice@example.test", "pw-alice").0, 235);
    let (code, text) = send(
        &mut t,
        "alice@example.test",
        "bob@example.test",
        "Subject: tls\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let m = &pop_all(&server, "bob@example.test", "pw-bob")[0];
    assert!(m.contains("with ESMTPSA id"), "{m}");

    // Port 465: TLS from the first byte.
    let tcp = tcp_connect(server.submits_addr());
    let mut s = Client::new(env.tls_wrap(tcp));
    assert_eq!(reply(&mut s).0, 220);
    let (_, ehlo) = cmd(&mut s, "EHLO client.test");
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert_eq!(login(&mut s, "bob@example.test", "pw-bob").0, 235);
}

#[test]
fn dkim_signature_on_submitted_mail() {
    let (env, server) = setup("");
    let out = env
        .cli(&["dkim", "generate", "example.test", "--algorithm", "ed25519"])
        .ok();
    assert!(
        out.stdout.contains("postoffice._domainkey.example.test"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("v=DKIM1; k=ed25519; p="),
        "{}",
        out.stdout
    );
    let mut c = connect(&server);
    assert_eq!(login(&mut c, "alice@example.test", "pw-alice").0, 235);
    let (code, text) = send(
        &mut c,
        "alice@example.test",
        "bob@example.test",
        "From: alice@example.test\r\nTo: bob@example.test\r\nSubject: signed\r\n\r\nbody\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let m = &pop_all(&server, "bob@example.test", "pw-bob")[0];
    assert!(m.contains("DKIM-Signature: "), "{m}");
    assert!(m.contains("d=example.test"), "{m}");
    assert!(m.contains("s=postoffice"), "{m}");
}

/// The sender-forgery battery (security issue): every way of claiming
/// someone else's address in the author fields gets `553 5.7.1`, and
/// nothing is delivered locally or queued for a remote recipient.
#[test]
fn forged_author_fields_are_refused_and_nothing_is_stored() {
    let (env, server) = setup("");
    let forgeries = [
        // Two From: fields; a parser that keeps the last one sees alice.
        "From: Bob <bob@example.test>\r\nFrom: alice@example.test\r\n",
        "From: alice@example.test\r\nFrom: Bob <bob@example.test>\r\n",
        "From: alice@example.test\r\nfrom : bob@example.test\r\n",
        // A From: without an address (an encoded word, a bare name).
        "From: =?utf-8?q?Alice?=\r\n",
        "From: Alice\r\n",
        // Sender:, Resent-From:, Resent-Sender: are author fields too.
        "From: alice@example.test\r\nSender: bob@example.test\r\n",
        "From: alice@example.test\r\nResent-From: Bob <bob@example.test>\r\n",
        "From: alice@example.test\r\nResent-Sender: bob@example.test\r\n",
        // Display-name and group tricks are parsed, not pattern-matched.
        "From: \"alice@example.test\" <bob@example.test>\r\n",
        "From: friends: alice@example.test, bob@example.test;\r\n",
    ];
    for (i, author) in forgeries.iter().enumerate() {
        for to in ["bob@example.test", "carol@remote.test"] {
            let mut c = connect(&server);
            assert_eq!(login(&mut c, "alice@example.test", "pw-alice").0, 235);
            let body = format!("{author}To: {to}\r\nSubject: forgery {i}\r\n\r\nx\r\n");
            let (code, text) = send(&mut c, "alice@example.test", to, &body);
            assert_eq!(code, 553, "{author:?} to {to}: {text}");
            assert!(text.starts_with("553 5.7.1"), "{author:?}: {text}");
        }
    }
    assert!(pop_all(&server, "bob@example.test", "pw-bob").is_empty());
    let queued = env.queued_messages();
    assert!(queued.is_empty(), "queued: {queued:?}");
    // The control: alice's own address, with a comment, goes through.
    let mut c = connect(&server);
    assert_eq!(login(&mut c, "alice@example.test", "pw-alice").0, 235);
    let (code, text) = send(
        &mut c,
        "alice@example.test",
        "bob@example.test",
        "From: Alice <alice@example.test> (the real one)\r\nSubject: ok\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250, "{text}");
    assert_eq!(pop_all(&server, "bob@example.test", "pw-bob").len(), 1);
}

/// A large submitted message (well past the spill threshold, so it is
/// spooled to disk as it arrives) is DKIM-signed from the file and stored
/// byte for byte both in the local maildrop and in the outbound queue.
#[test]
fn large_message_is_signed_and_stored_from_the_spool() {
    let (env, server) = setup("[queue]\nretry_schedule_secs = [3600]\n");
    env.cli(&["dkim", "generate", "example.test", "--algorithm", "ed25519"])
        .ok();
    let mut body =
        String::from("From: alice@example.test\r\nTo: bob@example.test\r\nSubject: big\r\n\r\n");
    let mut i = 0;
    while body.len() < 3 << 20 {
        body.push_str(&format!(
            "line {i} of a large message, some of it long enough\r\n"
        ));
        i += 1;
    }
    let mut c = connect(&server);
    assert_eq!(login(&mut c, "alice@example.test", "pw-alice").0, 235);
    assert_eq!(cmd(&mut c, "MAIL FROM:<alice@example.test>").0, 250);
    assert_eq!(cmd(&mut c, "RCPT TO:<bob@example.test>").0, 250);
    assert_eq!(cmd(&mut c, "RCPT TO:<carol@remote.test>").0, 250);
    assert_eq!(cmd(&mut c, "DATA").0, 354);
    c.send_raw(body.as_bytes());
    c.send_raw(b".\r\n");
    let (code, text) = reply(&mut c);
    assert_eq!(code, 250, "{text}");
    // Local copy: Return-Path, Received, the signature, then the message.
    let m = &pop_all(&server, "bob@example.test", "pw-bob")[0];
    assert!(
        m.starts_with("Return-Path: <alice@example.test>\r\nReceived: "),
        "{}",
        &m[..200]
    );
    assert!(m.contains("DKIM-Signature: ") && m.contains("d=example.test"));
    assert!(
        m.ends_with(&body),
        "the stored message differs from the one sent"
    );
    // Queued copy: the same, without Return-Path.
    let queued = env.queued_messages();
    assert_eq!(queued.len(), 1, "{queued:?}");
    let queued = &queued[0];
    assert!(queued.starts_with("Received: "), "{}", &queued[..200]);
    assert!(queued.contains("DKIM-Signature: "));
    assert!(queued.ends_with(&body));
}

/// `max_messages_per_hour = 2`: alice's third message is refused with
/// 451 4.7.0; bob, another user, still sends.
#[test]
fn sending_limit_refuses_the_next_message_of_that_user_only() {
    let (_env, server) = setup("submission.max_messages_per_hour = 2\n");
    let body = "From: alice@example.test\r\nTo: bob@example.test\r\nSubject: n\r\n\r\nhi\r\n";
    let mut c = connect(&server);
    assert_eq!(login(&mut c, "alice@example.test", "pw-alice").0, 235);
    for _ in 0..2 {
        let (code, text) = send(&mut c, "alice@example.test", "bob@example.test", body);
        assert_eq!(code, 250, "{text}");
    }
    let (code, text) = send(&mut c, "alice@example.test", "bob@example.test", body);
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("451 4.7.0"), "{text}");

    let mut b = connect(&server);
    assert_eq!(login(&mut b, "bob@example.test", "pw-bob").0, 235);
    let body = "From: bob@example.test\r\nTo: alice@example.test\r\nSubject: n\r\n\r\nhi\r\n";
    let (code, text) = send(&mut b, "bob@example.test", "alice@example.test", body);
    assert_eq!(code, 250, "{text}");
    assert_eq!(pop_all(&server, "bob@example.test", "pw-bob").len(), 2);
}

/// `user set --max-messages-per-hour 1` overrides the config's limit for
/// alice only: her second message in the hour gets 451 4.7.0 while bob,
/// under the config's 5, sends on; `user info` shows both. With
/// `disable_after_limit_hits = 2` her second refusal disables the account
/// (the directory's disable): her next login is refused, and so is a
/// further message in the session that was still open.
#[test]
fn per_user_limit_and_automatic_disable_after_repeated_hits() {
    let env = common::Env::new(
        BIN,
        "submission.max_messages_per_hour = 5\nsubmission.disable_after_limit_hits = 2\n",
    );
    env.add_user("alice@example.test", "pw-alice");
    env.add_user("bob@example.test", "pw-bob");
    env.cli(&[
        "user",
        "set",
        "alice@example.test",
        "--max-messages-per-hour",
        "1",
    ])
    .ok();
    let info = env.cli(&["user", "info", "alice@example.test"]).ok().stdout;
    assert!(info.contains("messages/hour:  1 (user setting)"), "{info}");
    assert!(info.contains("recipients/day: unlimited"), "{info}");
    let info = env.cli(&["user", "info", "bob@example.test"]).ok().stdout;
    assert!(info.contains("messages/hour:  5\n"), "{info}");
    let server = env.start();

    let to_bob = "From: alice@example.test\r\nTo: bob@example.test\r\nSubject: n\r\n\r\nhi\r\n";
    let mut c = connect(&server);
    assert_eq!(login(&mut c, "alice@example.test", "pw-alice").0, 235);
    let (code, text) = send(&mut c, "alice@example.test", "bob@example.test", to_bob);
    assert_eq!(code, 250, "{text}");
    let (code, text) = send(&mut c, "alice@example.test", "bob@example.test", to_bob);
    assert_eq!(code, 451, "{text}");
    assert!(
        text.starts_with("451 4.7.0 Sending limit reached"),
        "{text}"
    );
    assert!(!text.contains("disabled"), "first hit: {text}");

    // Bob is not limited by alice's setting.
    let mut b = connect(&server);
    assert_eq!(login(&mut b, "bob@example.test", "pw-bob").0, 235);
    let to_alice = "From: bob@example.test\r\nTo: alice@example.test\r\nSubject: n\r\n\r\nhi\r\n";
    for _ in 0..2 {
        let (code, text) = send(&mut b, "bob@example.test", "alice@example.test", to_alice);
        assert_eq!(code, 250, "{text}");
    }

    // The second hit disables alice.
    let (code, text) = send(&mut c, "alice@example.test", "bob@example.test", to_bob);
    assert_eq!(code, 451, "{text}");
    assert!(text.contains("account disabled"), "{text}");
    let (code, text) = send(&mut c, "alice@example.test", "bob@example.test", to_bob);
    assert!(
        text.starts_with("550 5.7.1 Account alice@example.test is disabled"),
        "{code} {text}"
    );
    let mut again = connect(&server);
    let (code, text) = login(&mut again, "alice@example.test", "pw-alice");
    assert_eq!(code, 535, "{text}");
    let info = env.cli(&["user", "info", "alice@example.test"]).ok().stdout;
    assert!(info.contains("disabled:       true"), "{info}");
    assert!(
        env.log_contents().contains("ACCOUNT DISABLED"),
        "logged loudly"
    );
    // Bob still sends.
    let (code, text) = send(&mut b, "bob@example.test", "alice@example.test", to_alice);
    assert_eq!(code, 250, "{text}");
    assert_eq!(pop_all(&server, "bob@example.test", "pw-bob").len(), 1);
}

/// The counts survive a restart (saved at shutdown): after one message
/// and a restart, alice's second message in the hour is still refused.
#[test]
fn sending_limit_counts_survive_a_restart() {
    let (env, mut server) = setup("submission.max_messages_per_hour = 1\n");
    let body = "From: alice@example.test\r\nTo: bob@example.test\r\nSubject: n\r\n\r\nhi\r\n";
    let mut c = connect(&server);
    assert_eq!(login(&mut c, "alice@example.test", "pw-alice").0, 235);
    let (code, text) = send(&mut c, "alice@example.test", "bob@example.test", body);
    assert_eq!(code, 250, "{text}");
    drop(c);
    assert!(server.terminate().success());
    // Saved in data_dir; on PostgreSQL the counts are in the database.
    assert_eq!(
        env.data_dir().join("send_limits.txt").exists(),
        !env.on_postgres()
    );

    let server = env.start();
    let mut c = connect(&server);
    assert_eq!(login(&mut c, "alice@example.test", "pw-alice").0, 235);
    let (code, text) = send(&mut c, "alice@example.test", "bob@example.test", body);
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("451 4.7.0"), "{text}");
}
