//! The queue end to end: a private dnsmasq publishes MX records pointing at
//! fake SMTP servers on 127.0.0.1; the scheduler delivers, retries, bounces.
//!
//! Needs the Debian package `dnsmasq` for the DNS tests: without it they
//! fail.

mod common;

use std::sync::Arc;

use common::{Call, fake_smtp, start, test_config, text};
use postoffice_config::Transport;
use postoffice_core::dkim::{Algorithm, Signer};
use postoffice_queue::{Queue, RcptState};
use postoffice_testkit::{Dnsmasq, eventually, free_port};

const MESSAGE: &[u8] = b"From: Alice <alice@src.test>\r\nTo: bob@dest.test\r\nSubject: Test message\r\nMessage-ID: <t1@src.test>\r\n\r\nThe body stays private.\r\n.leading dot\r\n";

fn rcpts(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// (a) 4xx twice, then accepted: delivered on the third attempt, exactly
/// once, with dot-stuffing undone by the server and the message unchanged
/// (submitted mail is signed at submission, not again by the queue).
#[tokio::test]
async fn temporary_failures_are_retried_until_delivered() {
    let server = fake_smtp(
        |c: &Call<'_>| {
            (c.cmd == "RCPT" && c.conn <= 2).then(|| "450 4.2.0 greylisted, come back later".into())
        },
        None,
        None,
    )
    .await;
    let dns = Dnsmasq::start(&[
        "mx-host=dest.test,mx.dest.test,10",
        "host-record=mx.dest.test,127.0.0.1",
    ]);
    let h = start(test_config(server.addr.port()), Some(dns.addr), None);
    let id = h
        .queue
        .enqueue(
            "alice@src.test",
            &rcpts(&["bob@dest.test"]),
            &mut &MESSAGE[..],
        )
        .unwrap();
    // After the first attempt: pending, with the remote's reply recorded.
    assert!(eventually(10, || server.connections() >= 1).await);
    assert!(
        eventually(5, || h
            .queue
            .list()
            .unwrap()
            .first()
            .is_some_and(|e| e.rcpts[0].attempts >= 1))
        .await
    );
    let e = &h.queue.list().unwrap()[0];
    assert_eq!(e.id, id.as_str());
    assert_eq!(e.rcpts[0].state, RcptState::Pending);
    assert!(
        e.rcpts[0].last_error.contains("450 4.2.0 greylisted"),
        "{e:?}"
    );
    assert_eq!(e.rcpts[0].remote_mta, "mx.dest.test");
    assert!(
        eventually(10, || h.metrics.queue_entries.get([]) == 1
            && h.metrics.queue_recipients.get(["pending"]) == 1)
        .await
    );
    // Speed it up.
    h.queue.flush().unwrap();
    assert!(
        eventually(15, || !server.received().is_empty()
            && h.queue.list().unwrap().is_empty())
        .await,
        "not delivered: {:?}",
        h.queue.list()
    );
    assert_eq!(server.connections(), 3);
    let got = server.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mail_from, "alice@src.test");
    assert_eq!(got[0].rcpts, vec!["bob@dest.test"]);
    // The whole message, byte for byte: the dot-stuffed ".leading dot"
    // line unstuffed again, nothing added, dropped or changed.
    assert_eq!(text(&got[0].data), text(MESSAGE));
    assert!(h.local_mail().is_empty(), "no bounce");
    // The scheduler counted two deferrals and the delivery, and the queue
    // size it publishes went back to nothing.
    let m = &h.metrics;
    assert_eq!(m.queue_attempts.get(["deferred"]), 2);
    assert_eq!(m.queue_attempts.get(["delivered"]), 1);
    assert_eq!(m.delivery_seconds.count(["outbound"]), 3);
    assert!(eventually(10, || m.queue_entries.get([]) == 0).await);
    h.stop().await;
}

/// The connection drops after the data went out, before the reply: not
/// counted as delivered, so it is sent again (the one duplicate RFC 5321
/// 6.1 accepts).
#[tokio::test]
async fn lost_reply_after_data_means_retry() {
    let server = fake_smtp(
        |c: &Call<'_>| (c.cmd == "DATA" && c.conn == 1).then(|| "<close>".into()),
        None,
        None,
    )
    .await;
    let dns = Dnsmasq::start(&[
        "mx-host=dest.test,mx.dest.test,10",
        "host-record=mx.dest.test,127.0.0.1",
    ]);
    let h = start(test_config(server.addr.port()), Some(dns.addr), None);
    h.queue
        .enqueue(
            "alice@src.test",
            &rcpts(&["bob@dest.test"]),
            &mut &MESSAGE[..],
        )
        .unwrap();
    assert!(
        eventually(5, || h
            .queue
            .list()
            .unwrap()
            .first()
            .is_some_and(|e| e.rcpts[0].attempts == 1))
        .await
    );
    let e = &h.queue.list().unwrap()[0];
    assert_eq!(e.rcpts[0].state, RcptState::Pending);
    assert!(
        e.rcpts[0].last_error.contains("may have been delivered"),
        "{e:?}"
    );
    h.queue.flush().unwrap();
    assert!(
        eventually(10, || server.received().len() == 1
            && h.queue.list().unwrap().is_empty())
        .await
    );
    assert_eq!(server.connections(), 2);
    assert!(h.local_mail().is_empty());
    h.stop().await;
}

/// The implicit MX: no MX record, the domain's A record is used.
#[tokio::test]
async fn a_record_fallback() {
    let server = fake_smtp(|_: &Call<'_>| None, None, None).await;
    let dns = Dnsmasq::start(&["host-record=amx.test,127.0.0.1"]);
    let h = start(test_config(server.addr.port()), Some(dns.addr), None);
    h.queue
        .enqueue(
            "alice@src.test",
            &rcpts(&["bob@amx.test"]),
            &mut &MESSAGE[..],
        )
        .unwrap();
    assert!(eventually(10, || server.received().len() == 1).await);
    assert!(eventually(5, || h.queue.list().unwrap().is_empty()).await);
    h.stop().await;
}

/// (b) 5xx for one recipient, 250 for the other: the second is delivered,
/// the first bounced to the (local) sender with the original headers.
#[tokio::test]
async fn permanent_failure_bounces_to_the_local_sender() {
    let server = fake_smtp(
        |c: &Call<'_>| {
            (c.cmd == "RCPT" && c.arg.starts_with("bob@")).then(|| {
                "550 5.1.1 <bob@dest.test>: Recipient address rejected: User unknown".into()
            })
        },
        None,
        None,
    )
    .await;
    let dns = Dnsmasq::start(&[
        "mx-host=dest.test,mx.dest.test,10",
        "host-record=mx.dest.test,127.0.0.1",
    ]);
    let h = start(test_config(server.addr.port()), Some(dns.addr), None);
    let id = h
        .queue
        .enqueue(
            "alice@src.test",
            &rcpts(&["bob@dest.test", "carol@dest.test"]),
            &mut &MESSAGE[..],
        )
        .unwrap();
    assert!(eventually(10, || h.local_mail().len() == 1).await);
    assert!(eventually(5, || h.queue.list().unwrap().is_empty()).await);
    let got = server.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpts, vec!["carol@dest.test"]);

    let (to, bounce) = &h.local_mail()[0];
    assert_eq!(to, "alice@src.test");
    let b = text(bounce);
    assert!(b.starts_with("Return-Path: <>\r\n"), "{b}");
    assert!(b.contains("From: Mail Delivery System <MAILER-DAEMON@mail.src.test>"));
    assert!(b.contains("Content-Type: multipart/report; report-type=delivery-status;"));
    assert!(b.contains(&format!("X-Postoffice-Queue-ID: {id}")));
    assert!(b.contains("Final-Recipient: rfc822; bob@dest.test"));
    assert!(!b.contains("Final-Recipient: rfc822; carol@dest.test"));
    assert!(b.contains("Action: failed"));
    assert!(b.contains("Status: 5.1.1"));
    assert!(b.contains("Remote-MTA: dns; mx.dest.test"));
    assert!(b.contains("Diagnostic-Code: smtp; 550 5.1.1 <bob@dest.test>: Recipient"));
    assert!(b.contains("Content-Type: text/rfc822-headers"));
    assert!(b.contains("Subject: Test message\r\nMessage-ID: <t1@src.test>\r\n"));
    assert!(!b.contains("The body stays private"));
    h.stop().await;
}

/// (c) The destination is down: retried, a delay warning, then a bounce
/// once max_age_secs has passed.
#[tokio::test]
async fn unreachable_destination_is_retried_then_bounced() {
    let dns = Dnsmasq::start(&[
        "mx-host=down.test,mx.down.test,10",
        "host-record=mx.down.test,127.0.0.1",
    ]);
    let closed_port = free_port();
    let mut cfg = test_config(closed_port);
    cfg.max_age_secs = 3;
    cfg.delay_warning_secs = 1;
    let h = start(cfg, Some(dns.addr), None);
    h.queue
        .enqueue(
            "alice@src.test",
            &rcpts(&["bob@down.test"]),
            &mut &MESSAGE[..],
        )
        .unwrap();
    assert!(
        eventually(15, || h.local_mail().len() == 2).await,
        "{:?}",
        h.queue.list()
    );
    assert!(eventually(5, || h.queue.list().unwrap().is_empty()).await);
    let mail = h.local_mail();
    let warning = text(&mail[0].1);
    assert!(
        warning.contains("Subject: Delayed Mail (still being retried)"),
        "{warning}"
    );
    assert!(warning.contains("Action: delayed"));
    assert!(warning.contains("Will-Retry-Until:"));
    let bounce = text(&mail[1].1).replace("\r\n\t", " ");
    assert!(
        bounce.contains("Subject: Undelivered Mail Returned to Sender"),
        "{bounce}"
    );
    assert!(bounce.contains("Action: failed"));
    assert!(bounce.contains("Status: 4.4.1"));
    assert!(bounce.contains("Diagnostic-Code: X-Postoffice; delivery time expired"));
    assert!(bounce.contains("Connection refused"), "{bounce}");
    assert!(!bounce.contains("Remote-MTA"));
    assert!(bounce.contains("Subject: Test message"));
    h.stop().await;
}

/// (e) A null MX bounces at once (5.1.10), as does a domain that does not
/// exist (5.1.2); one DSN names both.
#[tokio::test]
async fn null_mx_and_nxdomain_bounce_immediately() {
    let dns = Dnsmasq::start(&["mx-host=nullmx.test,.,0"]);
    let h = start(test_config(free_port()), Some(dns.addr), None);
    h.queue
        .enqueue(
            "alice@src.test",
            &rcpts(&["bob@nullmx.test", "carol@nowhere.test"]),
            &mut &MESSAGE[..],
        )
        .unwrap();
    assert!(eventually(10, || !h.local_mail().is_empty()).await);
    assert!(eventually(5, || h.queue.list().unwrap().is_empty()).await);
    let mail = h.local_mail();
    assert_eq!(mail.len(), 1, "one DSN for both");
    let b = text(&mail[0].1);
    let b = b.replace("\r\n\t", " ");
    assert!(
        b.contains("Final-Recipient: rfc822; bob@nullmx.test\r\nAction: failed\r\nStatus: 5.1.10"),
        "{b}"
    );
    assert!(b.contains("null MX"), "{b}");
    assert!(
        b.contains(
            "Final-Recipient: rfc822; carol@nowhere.test\r\nAction: failed\r\nStatus: 5.1.2"
        ),
        "{b}"
    );
    h.stop().await;
}

/// (f) A bounce for a remote sender is queued with the null sender; when
/// that fails too, it is dropped: a bounce is never bounced.
#[tokio::test]
async fn bounces_are_never_bounced() {
    let server = fake_smtp(
        |c: &Call<'_>| (c.cmd == "RCPT").then(|| "550 5.7.1 go away".into()),
        None,
        None,
    )
    .await;
    let dns = Dnsmasq::start(&[
        "mx-host=dest.test,mx.dest.test,10",
        "mx-host=remote.test,mx.dest.test,10",
        "host-record=mx.dest.test,127.0.0.1",
    ]);
    let mut h = start(test_config(server.addr.port()), Some(dns.addr), None);
    h.queue
        .enqueue(
            "someone@remote.test",
            &rcpts(&["bob@dest.test"]),
            &mut &MESSAGE[..],
        )
        .unwrap();
    // The original, then its bounce (null sender) to someone@remote.test.
    assert!(
        eventually(15, || server.mail_froms().len() >= 2
            && h.queue.list().unwrap().is_empty())
        .await,
        "{:?} {:?}",
        server.mail_froms(),
        h.queue.list()
    );
    // Stop the scheduler (it finishes what it is doing): a wrongly
    // generated third message has then been sent or is still queued.
    h.stop_scheduler().await;
    assert_eq!(server.mail_froms(), vec!["someone@remote.test", ""]);
    assert!(h.queue.list().unwrap().is_empty());
    assert!(h.local_mail().is_empty());
    assert!(server.received().is_empty());
}

/// A bounce queued for a remote sender is DKIM-signed for the domain of
/// its From: (MAILER-DAEMON@mail.src.test, our host name) when a key for
/// that domain exists, and goes out unsigned when none does. Address
/// literals route without DNS.
#[tokio::test]
async fn bounces_to_remote_senders_are_dkim_signed_when_a_key_exists() {
    for with_key in [true, false] {
        let server = fake_smtp(
            |c: &Call<'_>| {
                (c.cmd == "RCPT" && c.arg == "bob@[127.0.0.1]")
                    .then(|| "550 5.1.1 no such user".into())
            },
            None,
            None,
        )
        .await;
        let keys = tempfile::tempdir().unwrap();
        if with_key {
            postoffice_core::dkim::generate(keys.path(), "mail.src.test", Algorithm::Ed25519)
                .unwrap();
        }
        let signer = Arc::new(Signer::new(keys.path(), "sel"));
        let h = start(test_config(server.addr.port()), None, Some(signer));
        h.queue
            .enqueue(
                "someone@[127.0.0.1]",
                &rcpts(&["bob@[127.0.0.1]"]),
                &mut &MESSAGE[..],
            )
            .unwrap();
        // The original is refused; its bounce (null sender) is queued for
        // someone@[127.0.0.1] and accepted by the same server.
        assert!(
            eventually(15, || server.received().len() == 1
                && h.queue.list().unwrap().is_empty())
            .await,
            "{:?} {:?}",
            server.mail_froms(),
            h.queue.list()
        );
        let got = server.received();
        assert_eq!(got[0].mail_from, "");
        assert_eq!(got[0].rcpts, vec!["someone@[127.0.0.1]"]);
        let data = text(&got[0].data);
        let (headers, _) = data.split_once("\r\n\r\n").unwrap();
        let headers = headers.replace("\r\n\t", " ").replace("\r\n ", " ");
        assert!(
            headers.contains("From: Mail Delivery System <MAILER-DAEMON@mail.src.test>"),
            "{headers}"
        );
        if with_key {
            let sig = headers
                .split("\r\n")
                .find(|l| l.starts_with("DKIM-Signature:"))
                .unwrap_or_else(|| panic!("no DKIM-Signature: {headers}"));
            assert!(sig.contains("d=mail.src.test;"), "{sig}");
            assert!(sig.contains("s=sel;"), "{sig}");
            assert!(sig.contains("a=ed25519-sha256;"), "{sig}");
            assert!(sig.to_ascii_lowercase().contains("from"), "{sig}");
        } else {
            assert!(!data.contains("DKIM-Signature"), "{headers}");
        }
        assert!(h.local_mail().is_empty());
        h.stop().await;
    }
}

/// A hostile reply: `code` with the enhanced code `enhanced`, 26 lines of
/// about 4 KB (100 KiB in all) full of terminal escapes, bells and bare
/// CRs.
fn hostile_reply(code: &str, enhanced: &str) -> String {
    let mut lines: Vec<String> = (0..26)
        .map(|i| {
            format!(
                "{code}-{enhanced} \x1b[31mline {i}\x1b]0;pwned\x07 \r{}",
                "\x1b[2JA".repeat(800)
            )
        })
        .collect();
    lines.push(format!("{code} {enhanced} \x1b[0mend\rof reply"));
    lines.join("\r\n")
}

/// A remote's reply is recorded as one bounded line of printable ASCII:
/// a multi-line 550 (for bob) and 450 (for carol) of 100 KiB each, with
/// escape sequences and CRs, leave an envelope without control characters
/// whose fields stay short, and `queue list` / `queue show` print it clean.
#[tokio::test]
async fn remote_replies_are_recorded_sanitised_and_bounded() {
    let reply_550 = hostile_reply("550", "5.1.1");
    let reply_450 = hostile_reply("450", "4.2.0");
    assert!(reply_550.len() > 100 * 1024);
    let server = fake_smtp(
        move |c: &Call<'_>| match (c.cmd, c.arg) {
            ("RCPT", "bob@[127.0.0.1]") => Some(reply_550.clone()),
            ("RCPT", "carol@[127.0.0.1]") => Some(reply_450.clone()),
            _ => None,
        },
        None,
        None,
    )
    .await;
    let h = start(test_config(server.addr.port()), None, None);
    let id = h
        .queue
        .enqueue(
            "alice@src.test",
            &rcpts(&["bob@[127.0.0.1]", "carol@[127.0.0.1]"]),
            &mut &MESSAGE[..],
        )
        .unwrap();
    // bob fails (and is bounced), carol waits.
    assert!(
        eventually(10, || h.local_mail().len() == 1
            && h.queue
                .list()
                .unwrap()
                .first()
                .is_some_and(|e| e.rcpts[0].notified))
        .await,
        "{:?}",
        h.queue.list()
    );
    let list = h.queue.list().unwrap();
    let e = &list[0];
    assert_eq!(e.rcpts[0].state, RcptState::Failed);
    assert_eq!(e.rcpts[1].state, RcptState::Pending);
    for r in &e.rcpts {
        for field in [&r.last_error, &r.status, &r.remote_mta] {
            assert!(!field.chars().any(|c| c.is_control()), "{field:?}");
            assert!(field.len() <= 600, "{}", field.len());
        }
        assert!(r.last_error.contains("[31mline 0 ]0;pwned"), "{r:?}");
    }
    assert!(
        e.rcpts[0]
            .last_error
            .starts_with("550 5.1.1 [31mline 0 ]0;pwned [2JA"),
        "{:?}",
        e.rcpts[0]
    );
    assert!(
        e.rcpts[1]
            .last_error
            .starts_with("450 4.2.0 [31mline 0 ]0;pwned [2JA"),
        "{:?}",
        e.rcpts[1]
    );
    // The envelope file itself stays small and escape-free (TOML would
    // write controls as \u escapes, which a later version reads back).
    let env_file = h.dir.path().join("queue").join(format!("{id}.env"));
    let raw = std::fs::read_to_string(&env_file).unwrap();
    assert!(raw.len() < 8 * 1024, "{}", raw.len());
    assert!(!raw.contains("\\u001"), "{raw}");
    assert!(!raw.chars().any(|c| c.is_control() && c != '\n'), "{raw}");
    // What the CLI prints.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let listed = postoffice_queue::cli::format_list(&list, now);
    let shown = postoffice_queue::cli::format_detail(&h.queue.show(&id).unwrap(), now);
    for text in [&listed, &shown] {
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(text.len() < 8 * 1024, "{}", text.len());
    }
    // The bounce quotes the same clean text.
    let bounce = text(&h.local_mail()[0].1);
    assert!(!bounce.contains('\x1b'));
    assert!(bounce.len() < 16 * 1024, "{}", bounce.len());
    h.stop().await;
}

/// A message from the null sender that fails permanently: no bounce at all.
#[tokio::test]
async fn null_sender_failure_is_dropped() {
    let server = fake_smtp(
        |c: &Call<'_>| (c.cmd == "DATA").then(|| "554 5.6.0 rejected".into()),
        None,
        None,
    )
    .await;
    let dns = Dnsmasq::start(&[
        "mx-host=dest.test,mx.dest.test,10",
        "host-record=mx.dest.test,127.0.0.1",
    ]);
    let mut h = start(test_config(server.addr.port()), Some(dns.addr), None);
    h.queue
        .enqueue("", &rcpts(&["bob@dest.test"]), &mut &MESSAGE[..])
        .unwrap();
    assert!(
        eventually(10, || server.connections() == 1
            && h.queue.list().unwrap().is_empty())
        .await
    );
    // Stop the scheduler (it finishes what it is doing): a wrongly
    // generated bounce has then been delivered, sent or is still queued.
    h.stop_scheduler().await;
    assert!(h.local_mail().is_empty());
    assert!(h.queue.list().unwrap().is_empty());
    assert_eq!(server.connections(), 1);
}

/// (d) Kill-safety: what enqueue returned survives dropping the queue and
/// reopening it; a half-written entry is removed on open; the scheduler
/// delivers the survivor.
#[tokio::test]
async fn queue_survives_restart_and_drops_half_written_entries() {
    let server = fake_smtp(|_: &Call<'_>| None, None, None).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(server.addr.port());
    let id = {
        let q = Queue::open(dir.path(), &cfg).unwrap();
        q.enqueue(
            "alice@src.test",
            &rcpts(&["bob@[127.0.0.1]"]),
            &mut &MESSAGE[..],
        )
        .unwrap()
        // Dropped without running: the "crash".
    };
    let qdir = dir.path().join("queue");
    std::fs::write(qdir.join("0000000000HALF.msg"), b"Subject: half\r\n\r\n").unwrap();
    std::fs::write(
        qdir.join("0000000000HALF.env.tmp"),
        b"version = 1\nid = \"00",
    )
    .unwrap();

    let queue = Arc::new(Queue::open(dir.path(), &cfg).unwrap());
    let list = queue.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, id.as_str());
    assert!(!qdir.join("0000000000HALF.msg").exists());
    assert!(!qdir.join("0000000000HALF.env.tmp").exists());

    // Deliver it now (an address literal needs no DNS).
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(postoffice_queue::run(
        Arc::clone(&queue),
        postoffice_queue::DeliveryConfig {
            hostname: "mail.src.test".into(),
            queue: cfg,
            dns: postoffice_config::Dns::default(),
            local: Arc::new(common::Recorder(Default::default())),
            signer: None,
            metrics: None,
        },
        async move {
            let _ = rx.await;
        },
    ));
    assert!(
        eventually(10, || server.received().len() == 1
            && queue.list().unwrap().is_empty())
        .await
    );
    assert_eq!(server.received()[0].rcpts, vec!["bob@[127.0.0.1]"]);
    let _ = tx.send(());
    task.await.unwrap();
}

/// Opportunistic STARTTLS with a certificate nobody trusts: encrypted and
/// delivered anyway. For a domain in require_tls_domains: not delivered.
#[tokio::test]
async fn opportunistic_and_required_tls() {
    let (acceptor, _pem) = common::tls_acceptor(&["mx.dest.test"]);
    let server = fake_smtp(|_: &Call<'_>| None, Some(acceptor), None).await;
    let dns = Dnsmasq::start(&[
        "mx-host=dest.test,mx.dest.test,10",
        "mx-host=strict.test,mx.dest.test,10",
        "host-record=mx.dest.test,127.0.0.1",
    ]);
    let mut cfg = test_config(server.addr.port());
    cfg.require_tls_domains = vec!["strict.test".into()];
    let h = start(cfg, Some(dns.addr), None);
    h.queue
        .enqueue(
            "alice@src.test",
            &rcpts(&["bob@dest.test"]),
            &mut &MESSAGE[..],
        )
        .unwrap();
    let strict = h
        .queue
        .enqueue(
            "alice@src.test",
            &rcpts(&["eve@strict.test"]),
            &mut &MESSAGE[..],
        )
        .unwrap();
    assert!(eventually(10, || server.received().len() == 1).await);
    let got = server.received();
    assert!(got[0].tls, "delivered over TLS");
    assert_eq!(got[0].rcpts, vec!["bob@dest.test"]);
    // The strict one waits, with a TLS error recorded; the delivered one
    // leaves the queue (the fake server records the message before our
    // client has read its 250, so wait for both rather than assume an order).
    assert!(
        eventually(10, || {
            let list = h.queue.list().unwrap();
            list.len() == 1
                && list
                    .iter()
                    .any(|e| e.id == strict.as_str() && e.rcpts[0].attempts >= 1)
        })
        .await,
        "{:?}",
        h.queue.list().unwrap()
    );
    let list = h.queue.list().unwrap();
    assert_eq!(list.len(), 1);
    let r = &list[0].rcpts[0];
    assert_eq!(r.state, RcptState::Pending);
    assert!(r.last_error.contains("TLS handshake failed"), "{r:?}");
    assert_eq!(server.received().len(), 1);
    h.stop().await;
}

/// The relayhost with AUTH PLAIN, only after STARTTLS with a verified
/// certificate (queue.ca_file).
#[tokio::test]
async fn relayhost_with_auth_over_verified_tls() {
    let (acceptor, pem) = common::tls_acceptor(&["127.0.0.1"]);
    let server = fake_smtp(
        |_: &Call<'_>| None,
        Some(acceptor),
        Some(("relayuser".into(), "s3cret".into())),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let mut cfg = test_config(free_port());
    cfg.relayhost = format!("127.0.0.1:{}", server.addr.port());
    cfg.relay_user = "relayuser".into();
    cfg.relay_password = "s3cret".into();
    cfg.ca_file = Some(ca);
    let h = start(cfg, None, None);
    h.queue
        .enqueue(
            "alice@src.test",
            &rcpts(&["bob@anywhere.test", "carol@elsewhere.test"]),
            &mut &MESSAGE[..],
        )
        .unwrap();
    assert!(
        eventually(10, || server.received().len() == 2
            && h.queue.list().unwrap().is_empty())
        .await,
        "{:?}",
        h.queue.list()
    );
    for r in server.received() {
        assert!(r.tls);
        assert_eq!(r.auth_user.as_deref(), Some("relayuser"));
    }
    h.stop().await;
}

/// The global relay credentials are for the relayhost alone: a transport
/// without credentials of its own is never sent AUTH, even over verified
/// TLS to a relay that would accept the global ones; a transport with its
/// own (password from a file) gets exactly those.
///
/// "Never sent AUTH" as the fake relay shows it: the session reaches MAIL
/// FROM (a failed AUTH would have ended it before), no AUTH succeeded in
/// it (the global credentials would have), and MAIL FROM is refused with
/// 530.
#[tokio::test]
async fn transports_get_only_their_own_credentials() {
    let (acceptor, pem) = common::tls_acceptor(&["127.0.0.1"]);
    let third = fake_smtp(
        |_: &Call<'_>| None,
        Some(acceptor.clone()),
        Some(("globaluser".into(), "globalpass".into())),
    )
    .await;
    let partner = fake_smtp(
        |_: &Call<'_>| None,
        Some(acceptor),
        Some(("partneruser".into(), "partnerpass".into())),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let password_file = dir.path().join("partner.password");
    std::fs::write(&password_file, "partnerpass\n").unwrap();
    let mut cfg = test_config(free_port());
    cfg.relay_user = "globaluser".into();
    cfg.relay_password = "globalpass".into();
    cfg.ca_file = Some(ca);
    cfg.transports.insert(
        "third.test".into(),
        format!("127.0.0.1:{}", third.addr.port()).into(),
    );
    cfg.transports.insert(
        "partner.test".into(),
        Transport {
            relay: format!("127.0.0.1:{}", partner.addr.port()),
            user: "partneruser".into(),
            password: String::new(),
            password_file: Some(password_file),
        },
    );
    let h = start(cfg, None, None);
    h.queue
        .enqueue(
            "alice@src.test",
            &rcpts(&["bob@third.test", "carol@partner.test"]),
            &mut &MESSAGE[..],
        )
        .unwrap();
    assert!(
        eventually(15, || h.local_mail().len() == 1
            && h.queue.list().unwrap().is_empty())
        .await,
        "{:?}",
        h.queue.list()
    );
    // The partner's relay: its own credentials, over TLS.
    let got = partner.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpts, vec!["carol@partner.test"]);
    assert!(got[0].tls);
    assert_eq!(got[0].auth_user.as_deref(), Some("partneruser"));
    // The third party's relay: no AUTH at all, so MAIL FROM was refused
    // and the message never went out. (The fake relay records the empty
    // content a pipelining client sends after a refused MAIL FROM.)
    assert_eq!(third.mail_froms(), vec!["alice@src.test"]);
    for r in third.received() {
        assert_eq!(r.auth_user, None, "{r:?}");
        assert!(r.data.is_empty(), "{r:?}");
    }
    let bounce = text(&h.local_mail()[0].1).replace("\r\n\t", " ");
    assert!(
        bounce.contains("Final-Recipient: rfc822; bob@third.test"),
        "{bounce}"
    );
    assert!(
        bounce.contains("530 5.7.0 Authentication required"),
        "{bounce}"
    );
    h.stop().await;
}

/// A relay whose certificate is not trusted gets no credentials.
#[tokio::test]
async fn relay_credentials_need_a_verified_certificate() {
    let (acceptor, _pem) = common::tls_acceptor(&["127.0.0.1"]);
    let server = fake_smtp(
        |_: &Call<'_>| None,
        Some(acceptor),
        Some(("relayuser".into(), "s3cret".into())),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Some other CA.
    let (_, other_pem) = common::tls_acceptor(&["127.0.0.1"]);
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, other_pem).unwrap();
    let mut cfg = test_config(free_port());
    cfg.transports.insert(
        "anywhere.test".into(),
        Transport {
            relay: format!("127.0.0.1:{}", server.addr.port()),
            user: "relayuser".into(),
            password: "s3cret".into(),
            password_file: None,
        },
    );
    cfg.ca_file = Some(ca);
    let h = start(cfg, None, None);
    h.queue
        .enqueue(
            "alice@src.test",
            &rcpts(&["bob@anywhere.test"]),
            &mut &MESSAGE[..],
        )
        .unwrap();
    assert!(
        eventually(10, || h
            .queue
            .list()
            .unwrap()
            .first()
            .is_some_and(|e| e.rcpts[0].attempts >= 1))
        .await
    );
    let e = &h.queue.list().unwrap()[0];
    assert_eq!(e.rcpts[0].state, RcptState::Pending);
    assert!(
        e.rcpts[0].last_error.contains("TLS handshake failed"),
        "{e:?}"
    );
    assert!(server.mail_froms().is_empty());
    h.stop().await;
}
