//! Relay attempts against the real binary: the MX port must deliver only to
//! local users, whatever the address tricks, and submission only for an
//! authenticated user sending as themselves. Each attempt is checked for
//! its reply code, for an empty outbound queue, and for no mail stored
//! anywhere it should not be.

mod common;

use std::net::TcpStream;

use common::*;

const ALICE: &str = "alice@example.test";
const ALICE_PW: &str = "alice secret";
const BOB: &str = "bob@example.test";

fn setup() -> (Env, Server) {
    // postmaster@/abuse@ of the local domains reach alice: the role
    // addresses must not open a relay either.
    let env = Env::new(BIN, "addresses.postmaster = [\"alice@example.test\"]");
    env.add_user(ALICE, ALICE_PW);
    env.add_user(BOB, "bob secret");
    let server = env.start();
    (env, server)
}

#[track_caller]
fn assert_nothing_queued(env: &Env) {
    let queued = env.queued_messages();
    assert!(queued.is_empty(), "queued: {queued:?}");
    let out = env.cli(&["queue", "list"]).ok();
    assert!(
        !out.stdout.contains("example") && !out.stdout.contains('@'),
        "queue list: {}",
        out.stdout
    );
}

/// MAIL, RCPT on a fresh MX connection; returns the RCPT reply code, and
/// checks that DATA is then refused (no valid recipient).
fn mx_attempt(server: &Server, from: &str, rcpt: &str) -> (u16, String) {
    let mut c = smtp_connect(server.smtp_addr());
    let (code, text) = smtp_cmd(&mut c, &format!("MAIL FROM:<{from}>"));
    assert_eq!(code, 250, "MAIL FROM:<{from}>: {text}");
    let r = smtp_cmd(&mut c, &format!("RCPT TO:{rcpt}"));
    if r.0 != 250 {
        let (code, text) = smtp_cmd(&mut c, "DATA");
        assert!(
            code == 503 || code == 554,
            "DATA after a refused RCPT: {text}"
        );
    }
    smtp_cmd(&mut c, "QUIT");
    r
}

#[test]
fn mx_port_refuses_every_relay_trick() {
    let (env, server) = setup();
    let remote = "sender@remote.example";
    let cases: &[(&str, &str, u16)] = &[
        // (MAIL FROM, RCPT TO argument, expected code)
        (remote, "<alice%other.example@example.test>", 550),
        (remote, "<@a.example,@b.example:alice@other.example>", 554),
        (remote, "<\"alice@other.example\"@example.test>", 550),
        (remote, "<other.example!alice@example.test>", 550),
        (remote, "<postmaster@[127.0.0.1]>", 501),
        (remote, "<alice@other.example>", 554),
        (remote, "<alice@example.test.other.example>", 554),
        (remote, "<alice@other.example.>", 554),
        // Role addresses (accepted for local domains) with the same tricks.
        (remote, "<postmaster%other.example@example.test>", 550),
        (remote, "<abuse%other.example@example.test>", 550),
        (remote, "<@example.test:postmaster@other.example>", 554),
        (remote, "<other.example!postmaster@example.test>", 550),
        (remote, "<postmaster@other.example>", 554),
        (remote, "<abuse@other.example>", 554),
        (remote, "<postmaster@example.test.other.example>", 554),
        (ALICE, "<friend@other.example>", 554),
        ("", "<friend@other.example>", 554),
    ];
    for &(from, rcpt, want) in cases {
        let (code, text) = mx_attempt(&server, from, rcpt);
        assert_eq!(code, want, "MAIL FROM:<{from}> RCPT TO:{rcpt}: {text}");
        assert_nothing_queued(&env);
        let stored = env.stored_messages();
        assert!(stored.is_empty(), "stored: {stored:?}");
    }

    // A failed AUTH attempt on the MX port grants nothing.
    let mut c = smtp_connect(server.smtp_addr());
    let wrong = base64(format!("\0{ALICE}\0wrong").as_bytes());
    let (code, text) = smtp_cmd(&mut c, &format!("AUTH PLAIN {wrong}"));
    assert!((500..600).contains(&code), "AUTH on MX: {text}");
    let right = base64(format!("\0{ALICE}\0{ALICE_PW}").as_bytes());
    let (code, text) = smtp_cmd(&mut c, &format!("AUTH PLAIN {right}"));
    assert!((500..600).contains(&code), "AUTH on MX: {text}");
    assert_eq!(smtp_cmd(&mut c, &format!("MAIL FROM:<{ALICE}>")).0, 250);
    let (code, text) = smtp_cmd(&mut c, "RCPT TO:<friend@other.example>");
    assert_eq!(code, 554, "{text}");
    assert!(matches!(smtp_cmd(&mut c, "DATA").0, 503 | 554));
    smtp_cmd(&mut c, "QUIT");
    assert_nothing_queued(&env);
    assert!(env.stored_messages().is_empty());

    // Mixed: a local and a remote recipient: only the local copy.
    let mut c = smtp_connect(server.smtp_addr());
    assert_eq!(smtp_cmd(&mut c, &format!("MAIL FROM:<{remote}>")).0, 250);
    assert_eq!(smtp_cmd(&mut c, "RCPT TO:<friend@other.example>").0, 554);
    assert_eq!(smtp_cmd(&mut c, &format!("RCPT TO:<{ALICE}>")).0, 250);
    assert_eq!(smtp_cmd(&mut c, "DATA").0, 354);
    c.send_raw(b"Subject: local only\r\n\r\nhi\r\n.\r\n");
    assert_eq!(smtp_reply(&mut c).0, 250);
    smtp_cmd(&mut c, "QUIT");
    assert_nothing_queued(&env);
    assert_eq!(env.stored_messages(), [ALICE]);
}

fn submit_connect(server: &Server) -> Client<TcpStream> {
    smtp_connect(server.submit_addr())
}

fn auth(c: &mut Client<TcpStream>, user: &str, pw: &str) -> u16 {
    let b = base64(format!("\0{user}\0{pw}").as_bytes());
    smtp_cmd(c, &format!("AUTH PLAIN {b}")).0
}

#[test]
fn submission_requires_auth_and_own_address() {
    let (env, server) = setup();

    // Unauthenticated: MAIL refused with 530, so RCPT has no transaction.
    let mut c = submit_connect(&server);
    let (code, text) = smtp_cmd(&mut c, &format!("MAIL FROM:<{ALICE}>"));
    assert_eq!(code, 530, "{text}");
    let (code, text) = smtp_cmd(&mut c, "RCPT TO:<friend@other.example>");
    assert_eq!(code, 503, "{text}");
    assert!(matches!(smtp_cmd(&mut c, "DATA").0, 503 | 554));
    // A failed AUTH does not help.
    assert_eq!(auth(&mut c, ALICE, "wrong"), 535);
    assert_eq!(smtp_cmd(&mut c, &format!("MAIL FROM:<{ALICE}>")).0, 530);
    smtp_cmd(&mut c, "QUIT");
    assert_nothing_queued(&env);

    // Authenticated as alice, MAIL FROM bob: 553.
    let mut c = submit_connect(&server);
    assert_eq!(auth(&mut c, ALICE, ALICE_PW), 235);
    for from in [
        BOB,
        "alice@other.example",
        "ALICE@example.test.evil.example",
    ] {
        let (code, text) = smtp_cmd(&mut c, &format!("MAIL FROM:<{from}>"));
        assert_eq!(code, 553, "MAIL FROM:<{from}>: {text}");
    }
    // Authenticated as alice, From: bob in the header: 553 at the end of DATA.
    for from_header in [
        BOB.to_string(),
        format!("Bob <{BOB}>"),
        format!("{ALICE}, {BOB}"),
    ] {
        assert_eq!(smtp_cmd(&mut c, &format!("MAIL FROM:<{ALICE}>")).0, 250);
        assert_eq!(smtp_cmd(&mut c, "RCPT TO:<friend@other.example>").0, 250);
        assert_eq!(smtp_cmd(&mut c, &format!("RCPT TO:<{BOB}>")).0, 250);
        assert_eq!(smtp_cmd(&mut c, "DATA").0, 354);
        c.send_raw(format!("From: {from_header}\r\nSubject: forged\r\n\r\nhi\r\n.\r\n").as_bytes());
        let (code, text) = smtp_reply(&mut c);
        assert_eq!(code, 553, "From: {from_header}: {text}");
        assert_nothing_queued(&env);
        assert!(
            env.stored_messages().is_empty(),
            "{:?}",
            env.stored_messages()
        );
    }
    smtp_cmd(&mut c, "QUIT");
    assert_nothing_queued(&env);
    assert!(
        env.stored_messages().is_empty(),
        "{:?}",
        env.stored_messages()
    );
}

/// Aliases must not open a relay either: an alias pointing outside
/// forwards only mail for itself, and a catch-all takes only addresses of
/// its own domain, whatever the percent hacks and source routes.
#[test]
fn alias_tricks_do_not_relay() {
    let env = Env::new(BIN, "");
    env.add_user(ALICE, ALICE_PW);
    env.cli(&["alias", "add", "fwd@example.test", "friend@other.example"])
        .ok();
    env.cli(&["alias", "add", "@example.test", ALICE]).ok();
    env.cli(&["domain", "alias", "example.org", "example.test"])
        .ok();
    // A percent hack cannot be stored as a target either.
    assert!(
        !env.cli(&[
            "alias",
            "add",
            "x@example.test",
            "friend%other.example@example.test"
        ])
        .status
        .success()
    );
    let server = env.start();
    let remote = "sender@remote.example";
    let refused: &[(&str, u16)] = &[
        // The external target itself, and tricks around the alias.
        ("<friend@other.example>", 554),
        ("<fwd%other.example@example.test>", 550),
        ("<friend%other.example@example.test>", 550),
        ("<friend%other.example@example.org>", 550),
        ("<fwd@example.test.other.example>", 554),
        ("<fwd@other.example>", 554),
        // A catch-all with source routes: the route is dropped, the
        // domain that counts is the mailbox's.
        ("<@example.test:friend@other.example>", 554),
        ("<@example.test,@example.org:friend@other.example>", 554),
        ("<@example.org:anyone@other.example>", 554),
    ];
    for &(rcpt, want) in refused {
        let (code, text) = mx_attempt(&server, remote, rcpt);
        assert_eq!(code, want, "RCPT TO:{rcpt}: {text}");
        assert_nothing_queued(&env);
        let stored = env.stored_messages();
        assert!(stored.is_empty(), "stored: {stored:?}");
    }
    // A source route to a local address, a bang path or a quoted local
    // part in a local domain: the catch-all takes them, locally (or they
    // are refused); nothing is ever queued.
    let mut local = 0;
    for rcpt in [
        "<@other.example:anyone@example.test>",
        "<other.example!friend@example.test>",
        "<\"friend@other.example\"@example.test>",
    ] {
        let mut c = smtp_connect(server.smtp_addr());
        assert_eq!(smtp_cmd(&mut c, &format!("MAIL FROM:<{remote}>")).0, 250);
        let (code, text) = smtp_cmd(&mut c, &format!("RCPT TO:{rcpt}"));
        if code == 250 {
            assert_eq!(smtp_cmd(&mut c, "DATA").0, 354);
            c.send_raw(b"Subject: routed\r\n\r\nhi\r\n.\r\n");
            assert_eq!(smtp_reply(&mut c).0, 250);
            local += 1;
        } else {
            assert_eq!(code, 550, "{rcpt}: {text}");
        }
        smtp_cmd(&mut c, "QUIT");
        assert_nothing_queued(&env);
        assert_eq!(env.stored_messages(), vec![ALICE; local], "{rcpt}");
    }
    assert!(
        local >= 1,
        "the source-routed local address reaches the catch-all"
    );
    // Only the alias's own mail goes out, to its one target.
    let mut c = smtp_connect(server.smtp_addr());
    assert_eq!(smtp_cmd(&mut c, &format!("MAIL FROM:<{remote}>")).0, 250);
    assert_eq!(smtp_cmd(&mut c, "RCPT TO:<fwd@example.test>").0, 250);
    assert_eq!(smtp_cmd(&mut c, "RCPT TO:<victim@third.example>").0, 554);
    assert_eq!(smtp_cmd(&mut c, "DATA").0, 354);
    c.send_raw(b"Subject: forwarded\r\n\r\nhi\r\n.\r\n");
    assert_eq!(smtp_reply(&mut c).0, 250);
    smtp_cmd(&mut c, "QUIT");
    let q = env.cli(&["queue", "list"]).ok().stdout;
    assert!(q.contains("friend@other.example"), "{q}");
    assert!(!q.contains("victim") && !q.contains("anyone"), "{q}");
}
