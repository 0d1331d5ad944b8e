//! Forwarding with SRS between two real postoffice instances (issue 12
//! item 5): `a.test` on 127.0.0.1 forwards to `b.test` on 127.0.0.2 through
//! its queue, with DNS (MX, SPF) from a private dnsmasq; the receiving
//! instance checks SPF. Bounces find their way back through the SRS
//! address; forged SRS addresses are refused.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{
    BIN, Dnsmasq, Env, Server, free_port, smtp_cmd as cmd, smtp_connect, smtp_reply as reply,
    wait_for,
};

const LIMIT: Duration = Duration::from_secs(60);

/// An instance for `domain` whose MX listener is `ip:port` (the queue of
/// both instances delivers to that port), resolving through `dns`, with
/// SPF checked (`tag`: recorded, never refused).
fn instance(ip: &str, port: u16, domain: &str, dns: SocketAddr) -> Env {
    let extra = format!(
        "[dns]\nnameservers = [\"{dns}\"]\ntimeout_secs = 2\n\
         [filter]\nspf = \"tag\"\ndkim = \"off\"\ndmarc = \"off\"\n\
         [queue]\nremote_port = {port}\nretry_schedule_secs = [1]\n"
    );
    let env = Env::new(BIN, &extra);
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(
            "hostname = \"test.local\"",
            &format!("hostname = \"mx.{domain}\""),
        )
        .replace(
            "smtp.listen = [\"127.0.0.1:0\"]",
            &format!("smtp.listen = [\"{ip}:{port}\"]"),
        );
    assert!(text.contains(&format!("{ip}:{port}")));
    std::fs::write(&env.config, text).unwrap();
    env
}

struct Pair {
    _dns: Dnsmasq,
    a: Env,
    b: Env,
    sa: Server,
    sb: Server,
}

/// a.test (forwarder: alice keeps no copy and forwards to dest@b.test,
/// carol forwards to nobody@b.test, who does not exist) and b.test
/// (sender, dest). b.test publishes `-all`: without SRS, forwarded mail
/// would fail SPF there.
fn pair() -> Pair {
    let port = free_port();
    let dns = Dnsmasq::start(&[
        "mx-host=a.test,mx.a.test,10",
        "host-record=mx.a.test,127.0.0.1",
        "mx-host=b.test,mx.b.test,10",
        "host-record=mx.b.test,127.0.0.2",
        "txt-record=a.test,\"v=spf1 ip4:127.0.0.1 -all\"",
        "txt-record=b.test,\"v=spf1 -all\"",
    ]);
    let a = instance("127.0.0.1", port, "a.test", dns.addr);
    let b = instance("127.0.0.2", port, "b.test", dns.addr);
    a.add_user("alice@a.test", "pw-alice");
    a.add_user("carol@a.test", "pw-carol");
    b.add_user("sender@b.test", "pw-sender");
    b.add_user("dest@b.test", "pw-dest");
    a.cli(&[
        "user",
        "set",
        "alice@a.test",
        "--forward",
        "dest@b.test",
        "--keep-copy",
        "false",
    ])
    .ok();
    a.cli(&["user", "set", "carol@a.test", "--forward", "nobody@b.test"])
        .ok();
    let sa = a.start();
    let sb = b.start();
    Pair {
        _dns: dns,
        a,
        b,
        sa,
        sb,
    }
}

fn send(server: &Server, from: &str, to: &str, message: &str) -> (u16, String) {
    let mut c = smtp_connect(server.smtp_addr());
    let (code, text) = cmd(&mut c, &format!("MAIL FROM:<{from}>"));
    assert_eq!(code, 250, "{text}");
    let (code, text) = cmd(&mut c, &format!("RCPT TO:<{to}>"));
    if code != 250 {
        return (code, text);
    }
    let (code, text) = cmd(&mut c, "DATA");
    assert_eq!(code, 354, "{text}");
    c.send_raw(message.as_bytes());
    c.send_raw(b".\r\n");
    let r = reply(&mut c);
    cmd(&mut c, "QUIT");
    r
}

/// How many messages `user` has stored (either backend).
fn stored(env: &Env, user: &str) -> usize {
    env.stored_messages().iter().filter(|m| *m == user).count()
}

/// Wait until `user`'s maildrop holds `n` messages, then read them all
/// over POP3.
fn wait_mail(env: &Env, server: &Server, user: &str, pw: &str, n: usize) -> Vec<String> {
    wait_for(LIMIT, &format!("{n} message(s) for {user}"), || {
        (stored(env, user) >= n).then_some(())
    });
    let mut c = server.login_when_free(user, pw);
    let all = c.retr_all();
    c.cmd("QUIT");
    all.iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect()
}

fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    let head = message.split("\r\n\r\n").next()?;
    head.split("\r\n")
        .find(|l| {
            l.len() > name.len()
                && l[..name.len()].eq_ignore_ascii_case(name)
                && l.as_bytes()[name.len()] == b':'
        })
        .map(|l| l[name.len() + 1..].trim())
}

#[test]
fn forwarded_mail_passes_spf_and_bounces_come_back_through_srs() {
    let p = pair();
    let info = p.a.cli(&["user", "info", "alice@a.test"]).ok().stdout;
    assert!(
        info.contains("forward:        dest@b.test (no copy kept)"),
        "{info}"
    );

    // 1. sender@b.test -> alice@a.test, forwarded to dest@b.test.
    let msg = "From: <sender@b.test>\r\nTo: <alice@a.test>\r\nSubject: forward me\r\nMessage-ID: <fwd1@b.test>\r\n\r\nhello via a.test\r\n";
    let (code, text) = send(&p.sa, "sender@b.test", "alice@a.test", msg);
    assert_eq!(code, 250, "{text}");
    let got = wait_mail(&p.b, &p.sb, "dest@b.test", "pw-dest", 1);
    let m = &got[0];
    let return_path = header(m, "Return-Path").expect("Return-Path").to_string();
    let srs = return_path.trim_matches(['<', '>']).to_string();
    assert!(
        srs.starts_with("SRS0=") && srs.ends_with("=b.test=sender@a.test"),
        "envelope sender rewritten with SRS for a.test: {return_path}"
    );
    assert!(
        m.contains("Authentication-Results: mx.b.test;")
            && m.contains(&format!("spf=pass smtp.mailfrom=\"{srs}\"")),
        "SPF passes at the receiving instance for the SRS envelope: {m}"
    );
    assert_eq!(header(m, "Delivered-To"), Some("alice@a.test"), "{m}");
    assert!(m.contains("hello via a.test"), "{m}");
    // No copy kept at a.test.
    assert_eq!(stored(&p.a, "alice@a.test"), 0);

    // 2. A bounce from the far side (a DSN to the SRS address) reaches
    // the original sender, through a.test's queue.
    let dsn = format!(
        "From: MAILER-DAEMON@far.test\r\nTo: <{srs}>\r\nSubject: far-side bounce\r\nAuto-Submitted: auto-replied\r\n\r\nyour message could not be delivered\r\n"
    );
    let (code, text) = send(&p.sa, "", &srs, &dsn);
    assert_eq!(code, 250, "{text}");
    let got = wait_mail(&p.b, &p.sb, "sender@b.test", "pw-sender", 1);
    assert!(got[0].contains("Subject: far-side bounce"), "{}", got[0]);
    assert_eq!(header(&got[0], "Return-Path"), Some("<>"), "{}", got[0]);

    // 3. Forwarding to an address the far side refuses: a.test's bounce
    // to the SRS sender goes back to sender@b.test.
    let msg = "From: <sender@b.test>\r\nTo: <carol@a.test>\r\nSubject: to nobody\r\n\r\nlost\r\n";
    let (code, text) = send(&p.sa, "sender@b.test", "carol@a.test", msg);
    assert_eq!(code, 250, "{text}");
    let got = wait_mail(&p.b, &p.sb, "sender@b.test", "pw-sender", 2);
    let bounce = got
        .iter()
        .find(|m| !m.contains("far-side bounce"))
        .expect("the DSN");
    assert!(bounce.contains("nobody@b.test"), "{bounce}");
    assert!(
        bounce.contains("Content-Type: multipart/report"),
        "a DSN: {bounce}"
    );
    // carol kept her copy (the default).
    assert_eq!(stored(&p.a, "carol@a.test"), 1);
    let metrics = common::HttpClient::new(p.sa.http_addr())
        .get("/metrics")
        .text();
    for line in [
        "postoffice_address_actions_total{action=\"forwarded\"} 2\n",
        "postoffice_address_actions_total{action=\"srs_returned\"} 1\n",
    ] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }
}

#[test]
fn forged_or_malformed_srs_addresses_are_refused() {
    let p = pair();
    // Make a real one first, so the key exists and the shape is right.
    let msg = "From: <sender@b.test>\r\nTo: <alice@a.test>\r\nSubject: x\r\n\r\nx\r\n";
    assert_eq!(send(&p.sa, "sender@b.test", "alice@a.test", msg).0, 250);
    let got = wait_mail(&p.b, &p.sb, "dest@b.test", "pw-dest", 1);
    let srs = header(&got[0], "Return-Path")
        .unwrap()
        .trim_matches(['<', '>'])
        .to_string();
    // Same day stamp, other original sender: the hash does not match.
    let forged = srs.replace("=sender@a.test", "=victim@a.test");
    let mut c = smtp_connect(p.sa.smtp_addr());
    assert_eq!(cmd(&mut c, "MAIL FROM:<>").0, 250);
    let (code, text) = cmd(&mut c, &format!("RCPT TO:<{forged}>"));
    assert_eq!(code, 550, "{text}");
    assert!(
        text.contains("5.1.1") && text.contains("invalid hash"),
        "{text}"
    );
    let (code, text) = cmd(&mut c, "RCPT TO:<SRS0=zz@a.test>");
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("malformed SRS address"), "{text}");
    // An SRS address of a domain that is not ours is a relay attempt.
    let (code, text) = cmd(
        &mut c,
        &format!("RCPT TO:<{}>", srs.replace("@a.test", "@c.test")),
    );
    assert_eq!(code, 554, "{text}");
    // The real one is still accepted.
    assert_eq!(cmd(&mut c, &format!("RCPT TO:<{srs}>")).0, 250);
    // One made with a.test's own key 22 days ago has expired
    // (srs_max_age_days = 21).
    // The key is a.test's srs.key, or its row in PostgreSQL (copied into
    // a key file here to load it the same way).
    let key_dir = match p.a.storage_url() {
        Some(url) => {
            let rows = common::pg_query(
                &url,
                "SELECT convert_from(value, 'UTF8') FROM node_keys WHERE name = 'srs'",
            );
            let dir = p.a.path().join("srs-copy");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                postoffice_core::srs::Srs::key_path(&dir),
                format!("{}\n", rows.concat().concat()),
            )
            .unwrap();
            dir
        }
        None => p.a.data_dir(),
    };
    let key = postoffice_core::srs::Srs::load_or_create(&key_dir, 21).unwrap();
    let today = postoffice_core::srs::today();
    let old = key.forward("sender@b.test", "a.test", today - 22);
    let (code, text) = cmd(&mut c, &format!("RCPT TO:<{old}>"));
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("expired"), "{text}");
    let recent = key.forward("sender@b.test", "a.test", today - 20);
    assert_eq!(cmd(&mut c, &format!("RCPT TO:<{recent}>")).0, 250);
    cmd(&mut c, "QUIT");
}

/// A vacation reply to a sender of another domain goes through the queue
/// with the null sender, and arrives there.
#[test]
fn vacation_reply_to_a_remote_sender_goes_through_the_queue() {
    let p = pair();
    let away = p.b.path().join("away.txt");
    std::fs::write(&away, "I am away.\n").unwrap();
    p.b.cli(&[
        "user",
        "set",
        "dest@b.test",
        "--vacation-file",
        away.to_str().unwrap(),
    ])
    .ok();
    p.b.wait_for_directory(&p.sb);
    let msg = "From: <carol@a.test>\r\nTo: <dest@b.test>\r\nSubject: are you there\r\nMessage-ID: <q1@a.test>\r\n\r\nhi\r\n";
    for _ in 0..2 {
        let (code, text) = send(&p.sb, "carol@a.test", "dest@b.test", msg);
        assert_eq!(code, 250, "{text}");
    }
    // carol forwards to nobody@b.test but keeps a copy: the reply is in
    // her maildrop (and its forward bounced, the null sender is not).
    let got = wait_mail(&p.a, &p.sa, "carol@a.test", "pw-carol", 1);
    assert_eq!(got.len(), 1, "one reply for two messages: {got:#?}");
    let r = &got[0];
    assert!(r.starts_with("Return-Path: <>\r\n"), "{r}");
    assert!(r.contains("Subject: Auto: are you there\r\n"), "{r}");
    assert!(r.contains("In-Reply-To: <q1@a.test>\r\n"), "{r}");
    assert!(r.contains("Auto-Submitted: auto-replied\r\n"), "{r}");
}

#[test]
fn forwarding_loops_are_cut() {
    let p = pair();
    // 31 Received fields: past forward_max_hops (30).
    let mut msg = String::new();
    for i in 0..31 {
        msg.push_str(&format!(
            "Received: from hop{i}.test by x; Sat, 5 Dec 2026 07:00:00 +0000\r\n"
        ));
    }
    msg.push_str("From: <sender@b.test>\r\nTo: <alice@a.test>\r\nSubject: loop\r\n\r\nx\r\n");
    let (code, text) = send(&p.sa, "sender@b.test", "alice@a.test", &msg);
    assert_eq!(code, 554, "{text}");
    assert!(text.contains("5.4.6"), "{text}");
    // Already delivered to alice once: a loop, however few hops.
    let msg = "Delivered-To: alice@a.test\r\nFrom: <sender@b.test>\r\nTo: <alice@a.test>\r\nSubject: loop\r\n\r\nx\r\n";
    let (code, text) = send(&p.sa, "sender@b.test", "alice@a.test", msg);
    assert_eq!(code, 554, "{text}");
    assert!(
        p.a.queued_messages().is_empty(),
        "{:?}",
        p.a.queued_messages()
    );
    let _ = &p.b;
}
