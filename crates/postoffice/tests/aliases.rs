//! Aliases, distribution lists, catch-alls, domain aliases, sub-addressing
//! and send-as through aliases, end to end: set up with the real CLI,
//! mail in over the MX port, read back over POP3, sent over submission.

mod common;

use common::*;

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";
const CAROL: &str = "carol@example.test";
const PW: &str = "secret pw";

fn setup(extra: &str) -> (Env, Server) {
    let env = Env::new(BIN, extra);
    for u in [ALICE, BOB, CAROL] {
        env.add_user(u, PW);
    }
    let cli = |args: &[&str]| {
        env.cli(args).ok();
    };
    cli(&["alias", "add", "sales@example.test", ALICE]);
    // A distribution list that reaches alice twice (directly and through
    // sales@) and bob once.
    cli(&[
        "alias",
        "add",
        "team@example.test",
        "sales@example.test",
        BOB,
        ALICE,
    ]);
    cli(&[
        "alias",
        "add",
        "noreply@example.test",
        ALICE,
        "--no-send-as",
    ]);
    cli(&["alias", "add", "@example.test", CAROL]);
    cli(&["domain", "alias", "example.org", "example.test"]);
    cli(&[
        "alias",
        "add",
        "fwd@example.test",
        "friend@other.example",
        BOB,
    ]);
    let server = env.start();
    (env, server)
}

/// One MX transaction; the final reply (or the first refusal).
fn mx_send(server: &Server, rcpts: &[&str], subject: &str) -> (u16, String) {
    let mut c = smtp_connect(server.smtp_addr());
    assert_eq!(smtp_cmd(&mut c, "MAIL FROM:<sender@remote.example>").0, 250);
    for r in rcpts {
        let (code, text) = smtp_cmd(&mut c, &format!("RCPT TO:<{r}>"));
        if code != 250 {
            smtp_cmd(&mut c, "QUIT");
            return (code, text);
        }
    }
    assert_eq!(smtp_cmd(&mut c, "DATA").0, 354);
    c.send_raw(
        format!("From: sender@remote.example\r\nSubject: {subject}\r\n\r\nhello\r\n.\r\n")
            .as_bytes(),
    );
    let r = smtp_reply(&mut c);
    smtp_cmd(&mut c, "QUIT");
    r
}

/// Every message in a maildrop (RETR over POP3), left in place.
fn messages(server: &Server, user: &str) -> Vec<String> {
    let mut c = server.login_when_free(user, PW);
    let out = c.retr_all();
    c.cmd("QUIT");
    out.iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect()
}

fn with_subject<'a>(all: &'a [String], subject: &str) -> Vec<&'a String> {
    let line = format!("Subject: {subject}\r\n");
    all.iter().filter(|m| m.contains(&line)).collect()
}

fn header<'a>(message: &'a str, name: &str) -> Vec<&'a str> {
    let head = message.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n")
        .filter_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(": ")))
        .collect()
}

#[test]
fn every_address_rule_delivers_over_smtp_and_pop3() {
    let (env, server) = setup("addresses.postmaster = [\"alice@example.test\"]");

    // alias -> user, with Delivered-To: naming the alias.
    assert_eq!(mx_send(&server, &["sales@example.test"], "to sales").0, 250);
    // alias -> alias + users (a list): each mailbox once, even when the
    // transaction names the list, the alias and the user together.
    assert_eq!(mx_send(&server, &["team@example.test"], "to team").0, 250);
    assert_eq!(
        mx_send(
            &server,
            &["team@example.test", "sales@example.test", ALICE],
            "all at once"
        )
        .0,
        250
    );
    // Catch-all: an address that is neither a user nor an alias.
    assert_eq!(
        mx_send(&server, &["whoever@example.test"], "to anyone").0,
        250
    );
    // Domain alias: x@example.org is x@example.test (aliases included).
    assert_eq!(mx_send(&server, &["Alice@Example.ORG"], "via org").0, 250);
    assert_eq!(
        mx_send(&server, &["sales@example.org"], "sales via org").0,
        250
    );
    // Sub-address: the tag is kept in Delivered-To:.
    assert_eq!(
        mx_send(&server, &["alice+News@example.test"], "tagged").0,
        250
    );
    assert_eq!(
        mx_send(&server, &["sales+q3@example.test"], "tagged alias").0,
        250
    );

    let alice = messages(&server, ALICE);
    let bob = messages(&server, BOB);
    let carol = messages(&server, CAROL);
    let one = |all: &[String], s: &str| {
        let m = with_subject(all, s);
        assert_eq!(m.len(), 1, "{s}: {} copies", m.len());
        m[0].clone()
    };
    let m = one(&alice, "to sales");
    assert_eq!(header(&m, "Delivered-To"), ["sales@example.test"], "{m}");
    one(&alice, "to team");
    one(&bob, "to team");
    one(&alice, "all at once");
    one(&bob, "all at once");
    assert!(with_subject(&carol, "to team").is_empty());
    let m = one(&carol, "to anyone");
    assert_eq!(header(&m, "Delivered-To"), ["whoever@example.test"], "{m}");
    assert!(with_subject(&alice, "to anyone").is_empty());
    let m = one(&alice, "via org");
    assert_eq!(header(&m, "Delivered-To"), ["alice@example.org"], "{m}");
    one(&alice, "sales via org");
    let m = one(&alice, "tagged");
    assert_eq!(
        header(&m, "Delivered-To"),
        ["alice+news@example.test"],
        "{m}"
    );
    let m = one(&alice, "tagged alias");
    assert_eq!(header(&m, "Delivered-To"), ["sales+q3@example.test"], "{m}");
    // Mail straight to the user carries no Delivered-To: of ours.
    let m = one(&alice, "all at once");
    assert!(header(&m, "Delivered-To").len() <= 1, "{m}");

    // Tags with control characters, and foreign domains behind the
    // rules, are refused and nothing is stored for them.
    for bad in ["alice+\u{1}x@example.test", "alice+\tx@example.test"] {
        let (code, text) = mx_send(&server, &[bad], "bad tag");
        assert!(code >= 500, "{bad:?}: {code} {text}");
    }
    let (code, _) = mx_send(&server, &["alice@example.org.other.example"], "foreign");
    assert_eq!(code, 554);
    assert!(with_subject(&messages(&server, ALICE), "bad tag").is_empty());

    // An alias with an external target: the local copy is stored, the
    // external one queued (unchanged, for the forwarding code), nothing
    // else.
    assert!(env.queued_messages().is_empty());
    assert_eq!(mx_send(&server, &["fwd@example.test"], "forwarded").0, 250);
    one(&messages(&server, BOB), "forwarded");
    let q = env.cli(&["queue", "list"]).ok().stdout;
    assert!(q.contains("friend@other.example"), "{q}");
    assert!(!q.contains("bob@example.test"), "{q}");
    let spooled = env.queued_messages();
    assert!(
        spooled.iter().any(|s| s.contains("Subject: forwarded")),
        "{spooled:?}"
    );
}

#[test]
fn cli_refuses_bad_aliases_and_shows_every_rule() {
    let (env, server) = setup(
        "addresses.max_alias_targets = 3\n[submission.sender_aliases]\n\"alice@example.test\" = [\"@example.net\"]",
    );
    // A loop is refused at add time and nothing changes.
    env.cli(&["alias", "add", "a@example.test", ALICE]).ok();
    env.cli(&["alias", "add", "b@example.test", "a@example.test"])
        .ok();
    let r = env.cli(&["alias", "add", "a@example.test", "b@example.test"]);
    assert!(!r.status.success());
    assert!(r.stderr.contains("loop"), "{}", r.stderr);
    // Too many targets names the key; invalid targets name the problem.
    let r = env.cli(&[
        "alias",
        "add",
        "big@example.test",
        "x1@r.example",
        "x2@r.example",
        "x3@r.example",
        "x4@r.example",
    ]);
    assert!(!r.status.success());
    assert!(r.stderr.contains("max_alias_targets"), "{}", r.stderr);
    for t in [
        "x%other.example@example.test",
        "not an address",
        "@example.test",
    ] {
        let r = env.cli(&["alias", "add", "c@example.test", t]);
        assert!(!r.status.success(), "{t}: {}", r.stdout);
    }
    // One namespace with users, both ways.
    let r = env.cli(&["alias", "add", ALICE, BOB]);
    assert!(
        !r.status.success() && r.stderr.contains("is a user"),
        "{}",
        r.stderr
    );
    let r = env.cli_stdin(
        &["user", "add", "sales@example.test", "--password-stdin"],
        b"pw\n",
    );
    assert!(
        !r.status.success() && r.stderr.contains("is an alias"),
        "{}",
        r.stderr
    );
    // Aliases of domains we do not serve.
    assert!(
        !env.cli(&["alias", "add", "x@other.example", ALICE])
            .status
            .success()
    );

    // Mail for the surviving chain still arrives, once.
    assert_eq!(mx_send(&server, &["b@example.test"], "chain").0, 250);
    assert_eq!(with_subject(&messages(&server, ALICE), "chain").len(), 1);
    // A loop written into the directory by hand (directory.toml, or its
    // row in PostgreSQL; the running server reloads it): delivery cuts
    // it, each mailbox gets one copy, and `config check` names it.
    env.edit_directory(|text| {
        let looped = text.replacen(
            "address = \"a@example.test\"\ntargets = [\"alice@example.test\"]",
            "address = \"a@example.test\"\ntargets = [\"alice@example.test\", \"b@example.test\"]",
            1,
        );
        assert_ne!(looped, text, "{text}");
        looped
    });
    let check = env.cli(&["config", "check"]);
    assert!(
        check.stderr.contains("alias a@example.test") && check.stderr.contains("loop"),
        "{}",
        check.stderr
    );
    wait_for(
        std::time::Duration::from_secs(60),
        "the server to see the loop",
        || {
            (mx_send(&server, &["b@example.test"], "probe").0 == 250
                && env.log_contents().contains("loops cut"))
            .then_some(())
        },
    );
    assert_eq!(mx_send(&server, &["a@example.test"], "looped").0, 250);
    assert_eq!(with_subject(&messages(&server, ALICE), "looped").len(), 1);

    // alias list: targets, final mailboxes, external addresses, domain
    // aliases, the send-as flag.
    let list = env.cli(&["alias", "list"]).ok().stdout;
    for want in [
        "team@example.test\t-> sales@example.test, bob@example.test, alice@example.test",
        "delivers to: alice@example.test, bob@example.test",
        "forwards to: friend@other.example",
        "noreply@example.test\t-> alice@example.test\t(no send-as)",
        "@example.test\t-> carol@example.test",
        "@example.org\t-> @example.test\t(domain alias)",
        "sub-addressing",
    ] {
        assert!(list.contains(want), "missing {want:?} in\n{list}");
    }
    let org = env.cli(&["alias", "list", "example.org"]).ok().stdout;
    assert!(
        !org.contains("team@") && org.contains("(domain alias)"),
        "{org}"
    );
    // user info: every rule that reaches the mailbox.
    let info = env.cli(&["user", "info", ALICE]).ok().stdout;
    for want in [
        "alias sales@example.test (may send as it)",
        "alias team@example.test (may send as it)",
        "alias noreply@example.test (receive only",
        "domain alias alice@example.org",
        "sub-addresses alice+TAG@example.test",
        "may also send as @example.net ([submission.sender_aliases]",
    ] {
        assert!(info.contains(want), "missing {want:?} in\n{info}");
    }
    let info = env.cli(&["user", "info", CAROL]).ok().stdout;
    assert!(info.contains("catch-all @example.test"), "{info}");
    // `postoffice deliver` to a list stores one copy per mailbox; to an
    // alias that forwards outside it refuses (75, try again) and stores
    // nothing.
    env.cli_stdin(
        &["deliver", "team@example.test"],
        b"Subject: lda list\r\n\r\nhi\r\n",
    )
    .ok();
    env.cli_stdin(
        &["deliver", "alice+lda@example.test"],
        b"Subject: lda tag\r\n\r\nhi\r\n",
    )
    .ok();
    let r = env.cli_stdin(
        &["deliver", "fwd@example.test"],
        b"Subject: lda fwd\r\n\r\nhi\r\n",
    );
    assert_eq!(r.status.code(), Some(75), "{}", r.stderr);
    let alice = messages(&server, ALICE);
    assert_eq!(with_subject(&alice, "lda list").len(), 1);
    let tagged = with_subject(&alice, "lda tag");
    assert_eq!(tagged.len(), 1);
    assert_eq!(
        header(tagged[0], "Delivered-To"),
        ["alice+lda@example.test"]
    );
    let bob = messages(&server, BOB);
    assert_eq!(with_subject(&bob, "lda list").len(), 1);
    assert!(with_subject(&bob, "lda fwd").is_empty());
    // Removing a target, then the alias.
    env.cli(&["alias", "del", "team@example.test", BOB]).ok();
    env.wait_for_directory(&server);
    assert_eq!(
        mx_send(&server, &["team@example.test"], "smaller team").0,
        250
    );
    assert!(with_subject(&messages(&server, BOB), "smaller team").is_empty());
    env.cli(&["alias", "del", "b@example.test"]).ok();
    env.wait_for_directory(&server);
    // Without it, the catch-all takes the address.
    assert_eq!(mx_send(&server, &["b@example.test"], "after del").0, 250);
    assert_eq!(
        with_subject(&messages(&server, CAROL), "after del").len(),
        1
    );
    // Removing a user that aliases point at names them (without the
    // catch-all, which would take the address otherwise).
    env.cli(&["alias", "del", "@example.test"]).ok();
    let r = env.cli(&["user", "del", BOB]).ok();
    assert!(
        r.stderr.contains("warning: alias fwd@example.test") && r.stderr.contains(BOB),
        "{}",
        r.stderr
    );
    // --help documents the commands.
    let help = env.cli(&["alias", "add", "--help"]).ok().stdout;
    assert!(
        help.contains("catch-all") && help.contains("--no-send-as"),
        "{help}"
    );
}

fn submit(server: &Server, user: &str, from: &str, subject: &str) -> (u16, String) {
    let mut c = smtp_connect(server.submit_addr());
    let b = base64(format!("\0{user}\0{PW}").as_bytes());
    assert_eq!(smtp_cmd(&mut c, &format!("AUTH PLAIN {b}")).0, 235);
    let (code, text) = smtp_cmd(&mut c, &format!("MAIL FROM:<{from}>"));
    if code != 250 {
        return (code, text);
    }
    assert_eq!(smtp_cmd(&mut c, &format!("RCPT TO:<{CAROL}>")).0, 250);
    assert_eq!(smtp_cmd(&mut c, "DATA").0, 354);
    c.send_raw(format!("From: {from}\r\nSubject: {subject}\r\n\r\nhi\r\n.\r\n").as_bytes());
    let r = smtp_reply(&mut c);
    smtp_cmd(&mut c, "QUIT");
    r
}

#[test]
fn users_send_as_the_aliases_that_deliver_to_them() {
    let (_env, server) = setup("");
    for from in [
        "sales@example.test",
        "team@example.test",
        "alice@example.org",
        "sales@example.org",
        "alice+lists@example.test",
    ] {
        let (code, text) = submit(&server, ALICE, from, &format!("as {from}"));
        assert_eq!(code, 250, "alice as {from}: {text}");
    }
    // Opted out, a catch-all, someone else's address or alias: 553.
    for from in [
        "noreply@example.test",
        "whoever@example.test",
        BOB,
        "fwd@example.test",
        "sales@other.example",
    ] {
        let (code, text) = submit(&server, ALICE, from, "refused");
        assert_eq!(code, 553, "alice as {from}: {text}");
    }
    // bob is on team@ too; not on sales@.
    assert_eq!(submit(&server, BOB, "team@example.test", "bob team").0, 250);
    assert_eq!(submit(&server, BOB, "sales@example.test", "refused").0, 553);
    let carol = messages(&server, CAROL);
    assert_eq!(with_subject(&carol, "as sales@example.test").len(), 1);
    assert!(with_subject(&carol, "refused").is_empty());
}

#[test]
fn too_deep_an_expansion_is_refused_not_half_delivered() {
    let env = Env::new(BIN, "addresses.max_alias_depth = 2");
    env.add_user(ALICE, PW);
    env.cli(&["alias", "add", "l1@example.test", ALICE]).ok();
    env.cli(&["alias", "add", "l2@example.test", "l1@example.test"])
        .ok();
    // One level more is refused by the CLI, naming the key...
    let r = env.cli(&["alias", "add", "l3@example.test", "l2@example.test"]);
    assert!(
        !r.status.success() && r.stderr.contains("max_alias_depth"),
        "{}",
        r.stderr
    );
    // ...and when written by hand (directory.toml, or its row in
    // PostgreSQL), mail for it gets 550 5.4.6 at RCPT.
    env.edit_directory(|text| {
        text + "\n[[alias]]\naddress = \"l3@example.test\"\ntargets = [\"l2@example.test\"]\n"
    });
    let server = env.start();
    let (code, text) = mx_send(&server, &["l3@example.test"], "deep");
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("5.4.6"), "{text}");
    assert_eq!(mx_send(&server, &["l2@example.test"], "ok depth").0, 250);
    let alice = messages(&server, ALICE);
    assert!(with_subject(&alice, "deep").is_empty());
    assert_eq!(with_subject(&alice, "ok depth").len(), 1);
}

#[test]
fn submission_to_a_forwarding_alias_queues_its_external_target() {
    let (env, server) = setup("");
    let mut c = smtp_connect(server.submit_addr());
    let b = base64(format!("\0{ALICE}\0{PW}").as_bytes());
    assert_eq!(smtp_cmd(&mut c, &format!("AUTH PLAIN {b}")).0, 235);
    assert_eq!(smtp_cmd(&mut c, &format!("MAIL FROM:<{ALICE}>")).0, 250);
    assert_eq!(smtp_cmd(&mut c, "RCPT TO:<fwd@example.test>").0, 250);
    assert_eq!(smtp_cmd(&mut c, "DATA").0, 354);
    c.send_raw(format!("From: {ALICE}\r\nSubject: via list\r\n\r\nhi\r\n.\r\n").as_bytes());
    let (code, text) = smtp_reply(&mut c);
    assert_eq!(code, 250, "{text}");
    smtp_cmd(&mut c, "QUIT");
    assert_eq!(with_subject(&messages(&server, BOB), "via list").len(), 1);
    let q = env.cli(&["queue", "list"]).ok().stdout;
    assert!(q.contains("friend@other.example"), "{q}");
}
