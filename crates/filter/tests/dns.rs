//! DNSBL, SPF, DKIM and DMARC against a real DNS server: a private dnsmasq
//! on a free loopback port, serving the records each test needs.
//!
//! Needs the Debian package `dnsmasq`: without it the tests fail.

use std::net::IpAddr;

use base64::Engine;
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use postoffice_common::content::Content;
use postoffice_config::{Dns, Filter, StageMode};
use postoffice_filter::{
    ConnectVerdict, Filters, MessageAction, MessageContext, MessageVerdict, TAG_IP_ALLOW,
};
use postoffice_smtp::Reply;
use postoffice_testkit::Dnsmasq;

const RECEIVER: &str = "mx.postoffice.test";

/// A dnsmasq.conf `txt-record` line with the text split into quoted strings of at most 255
/// octets (one DNS character-string each), as long DKIM keys need.
fn txt_record(name: &str, text: &str) -> String {
    assert!(!text.contains(['"', '\\']), "unquotable TXT text");
    let chunks: Vec<String> = text
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", std::str::from_utf8(c).unwrap()))
        .collect();
    format!("txt-record={name},{}", chunks.join(","))
}

struct TestDns {
    dnsmasq: Dnsmasq,
    /// PKCS#8 of the ed25519 key published at sel._domainkey.good.test.
    dkim_key: Vec<u8>,
}

/// Starts dnsmasq with the test zone (a test fails when dnsmasq is not
/// installed).
fn start_dns() -> TestDns {
    let dkim_key = Ed25519Key::generate_pkcs8().unwrap();
    let public = Ed25519Key::from_pkcs8_der(&dkim_key).unwrap().public_key();
    // The n= note makes the record longer than one 255-octet string, so the
    // split into several character-strings and their reassembly is tested.
    let dkim_record = format!(
        "v=DKIM1; k=ed25519; n={}; p={}",
        "postoffice-test-key-".repeat(15),
        base64::engine::general_purpose::STANDARD.encode(public)
    );
    assert!(dkim_record.len() > 255);

    let records = [
        txt_record("good.test", "v=spf1 ip4:127.0.0.1 -all"),
        txt_record("bad.test", "v=spf1 ip4:192.0.2.1 -all"),
        txt_record("_dmarc.good.test", "v=DMARC1; p=reject"),
        txt_record("_dmarc.bad.test", "v=DMARC1; p=reject"),
        txt_record("sel._domainkey.good.test", &dkim_record),
        // DNSBL (RFC 5782 2.2 test entries): 127.0.0.2 and 2001:db8::2.
        "host-record=2.0.0.127.dnsbl.test,127.0.0.2".to_string(),
        txt_record("2.0.0.127.dnsbl.test", "Listed for testing, see http://dnsbl.test/"),
        "host-record=2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.dnsbl.test,127.0.0.4"
            .to_string(),
    ];
    TestDns {
        dnsmasq: Dnsmasq::start(&records),
        dkim_key,
    }
}

fn filters(dns: &TestDns, f: Filter) -> Filters {
    Filters::new(
        &f,
        &Dns {
            nameservers: vec![dns.dnsmasq.addr],
            timeout_secs: 2,
        },
    )
    .unwrap()
}

fn base_filter() -> Filter {
    Filter {
        dnsbl_zones: vec!["dnsbl.test".into()],
        dnsbl: StageMode::Reject,
        spf: StageMode::Tag,
        dkim: StageMode::Tag,
        dmarc: StageMode::Tag,
        virus: StageMode::Off,
        ..Filter::default()
    }
}

fn message(from: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Alice <{from}>\r\n\
         To: bob@postoffice.test\r\n\
         Subject: verification test\r\n\
         Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <test-{body_len}@sender>\r\n\
         \r\n\
         {body}\r\n",
        body_len = body.len()
    )
    .into_bytes()
}

fn sign_good_test(dns: &TestDns, message: &[u8]) -> Vec<u8> {
    let key = Ed25519Key::from_pkcs8_der(&dns.dkim_key).unwrap();
    let signature = DkimSigner::from_key(key)
        .domain("good.test")
        .selector("sel")
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .sign(message)
        .unwrap();
    let mut signed = signature.to_header().into_bytes();
    signed.extend_from_slice(message);
    signed
}

async fn check(f: &Filters, ip: &str, mail_from: &str, message: &[u8]) -> (MessageVerdict, String) {
    let ip: IpAddr = ip.parse().unwrap();
    let tags = Vec::new();
    let ctx = MessageContext {
        rcpt_to: &[],
        auth_user: None,
        ip,
        helo: "mail.sender.test",
        mail_from,
        receiver_hostname: RECEIVER,
        connect_tags: &tags,
    };
    let verdict = f
        .check_message(&ctx, &Content::from_vec(message.to_vec()))
        .await;
    // The same message spooled to disk (as a large one would be): the
    // header section parsed alone and the DKIM body hashes streamed from
    // the file must give exactly the same verdict.
    let spool = tempfile::tempdir().unwrap();
    let mut w = postoffice_common::content::SpoolWriter::new(spool.path(), 0, None);
    w.write(message).unwrap();
    let spooled = w.finish();
    assert!(spooled.as_slice().is_none() || message.is_empty());
    assert_eq!(
        f.check_message(&ctx, &spooled).await,
        verdict,
        "spooled and in-memory verdicts differ"
    );
    for line in verdict.headers.trim_end_matches("\r\n").split("\r\n") {
        assert!(line.len() <= 78 && !line.contains('\n'), "{line:?}");
    }
    let unfolded = verdict.headers.replace("\r\n\t", " ");
    eprintln!(
        "{ip} {mail_from:?} -> {:?}\n{}",
        verdict.action, verdict.headers
    );
    (verdict, unfolded)
}

#[tokio::test]
async fn dnsbl_lists_127_0_0_2_and_not_127_0_0_1() {
    let dns = start_dns();
    let f = filters(&dns, base_filter());

    match f.check_connect("127.0.0.2".parse().unwrap()).await {
        ConnectVerdict::Reject { reply, stage } => {
            assert_eq!(
                reply.to_string(),
                "554 5.7.1 Service unavailable; client [127.0.0.2] blocked using dnsbl.test; \
                 Listed for testing, see http://dnsbl.test/"
            );
            assert_eq!(stage, postoffice_filter::Stage::Dnsbl);
        }
        other => panic!("127.0.0.2 must be listed: {other:?}"),
    }
    assert_eq!(
        f.check_connect("127.0.0.1".parse().unwrap()).await,
        ConnectVerdict::Accept { tags: vec![] }
    );
    // IPv6, nibble format.
    match f.check_connect("2001:db8::2".parse().unwrap()).await {
        ConnectVerdict::Reject { reply, .. } => {
            assert!(
                reply.to_string().starts_with(
                    "554 5.7.1 Service unavailable; client [2001:db8::2] blocked using dnsbl.test"
                ),
                "{reply}"
            );
        }
        other => panic!("2001:db8::2 must be listed: {other:?}"),
    }
    assert_eq!(
        f.check_connect("2001:db8::3".parse().unwrap()).await,
        ConnectVerdict::Accept { tags: vec![] }
    );

    // Tag mode: accepted, with a tag that check_message reports.
    let f = filters(
        &dns,
        Filter {
            dnsbl: StageMode::Tag,
            ..base_filter()
        },
    );
    let tags = match f.check_connect("127.0.0.2".parse().unwrap()).await {
        ConnectVerdict::Accept { tags } => tags,
        other => panic!("{other:?}"),
    };
    assert_eq!(tags, vec!["dnsbl:dnsbl.test".to_string()]);
    let ctx = MessageContext {
        rcpt_to: &[],
        auth_user: None,
        ip: "127.0.0.2".parse().unwrap(),
        helo: "x.test",
        mail_from: "",
        receiver_hostname: RECEIVER,
        connect_tags: &tags,
    };
    let v = f
        .check_message(&ctx, &Content::from_vec(message("a@x.test", "hi")))
        .await;
    assert!(
        v.summary.starts_with("dnsbl=listed:dnsbl.test "),
        "{}",
        v.summary
    );

    // ip_allow skips the DNSBL.
    let f = filters(
        &dns,
        Filter {
            ip_allow: vec!["127.0.0.0/29".into()],
            ..base_filter()
        },
    );
    assert_eq!(
        f.check_connect("127.0.0.2".parse().unwrap()).await,
        ConnectVerdict::Accept {
            tags: vec![TAG_IP_ALLOW.to_string()]
        }
    );
}

#[tokio::test]
async fn spf_pass_and_fail() {
    let dns = start_dns();
    let f = filters(&dns, base_filter());

    let (v, headers) = check(
        &f,
        "127.0.0.1",
        "alice@good.test",
        &message("alice@good.test", "hello"),
    )
    .await;
    assert!(
        headers.starts_with(&format!(
            "Authentication-Results: {RECEIVER}; spf=pass smtp.mailfrom=alice@good.test; \
             dkim=none; dmarc=pass header.from=good.test\r\n"
        )),
        "{headers}"
    );
    assert_eq!(v.action, MessageAction::Accept);
    assert!(
        headers.contains(
            "X-Postoffice-Verdict: clean; dnsbl=none spf=pass dkim=none dmarc=pass virus=off\r\n"
        ),
        "{headers}"
    );

    // bad.test only allows 192.0.2.1.
    let (v, headers) = check(
        &f,
        "127.0.0.1",
        "bob@bad.test",
        &message("bob@good.test", "hello"),
    )
    .await;
    assert!(
        headers.contains("spf=fail smtp.mailfrom=bob@bad.test"),
        "{headers}"
    );
    assert_eq!(v.action, MessageAction::Accept, "spf = tag only tags");
    assert!(v.summary.contains("spf=fail"));
    let (_, headers) = check(
        &f,
        "192.0.2.1",
        "bob@bad.test",
        &message("bob@bad.test", "hello"),
    )
    .await;
    assert!(
        headers.contains("spf=pass smtp.mailfrom=bob@bad.test"),
        "{headers}"
    );

    // Null sender: the HELO identity; mail.sender.test has no record.
    let (_, headers) = check(&f, "127.0.0.1", "", &message("bob@good.test", "hi")).await;
    assert!(
        headers.contains("spf=none smtp.helo=mail.sender.test"),
        "{headers}"
    );

    // spf = reject acts on fail.
    let f = filters(
        &dns,
        Filter {
            spf: StageMode::Reject,
            dmarc: StageMode::Off,
            ..base_filter()
        },
    );
    let (v, _) = check(
        &f,
        "127.0.0.1",
        "bob@bad.test",
        &message("bob@good.test", "hello"),
    )
    .await;
    match v.action {
        MessageAction::Reject { reply } => {
            assert!(
                reply
                    .to_string()
                    .starts_with("550 5.7.23 SPF validation failed: bad.test"),
                "{reply}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn dkim_signed_message_verifies_and_tampered_one_fails() {
    let dns = start_dns();
    let f = filters(&dns, base_filter());
    let signed = sign_good_test(&dns, &message("alice@good.test", "Signed body."));

    // The envelope sender's SPF fails (bad.test does not allow 127.0.0.1),
    // so DMARC can only pass through the aligned DKIM signature.
    let (v, headers) = check(&f, "127.0.0.1", "bounce@bad.test", &signed).await;
    assert!(
        headers.contains("dkim=pass header.d=good.test header.s=sel"),
        "{headers}"
    );
    assert!(
        headers.contains("dmarc=pass header.from=good.test"),
        "{headers}"
    );
    assert!(
        headers.contains("spf=fail smtp.mailfrom=bounce@bad.test"),
        "{headers}"
    );
    assert_eq!(v.action, MessageAction::Accept);
    assert_eq!(
        v.summary,
        "dnsbl=none spf=fail dkim=pass dmarc=pass virus=off"
    );

    // The same with every stage at reject: still accepted.
    let strict = Filter {
        spf: StageMode::Tag,
        dkim: StageMode::Reject,
        dmarc: StageMode::Reject,
        ..base_filter()
    };
    let (v, _) = check(
        &filters(&dns, strict.clone()),
        "127.0.0.1",
        "bounce@bad.test",
        &signed,
    )
    .await;
    assert_eq!(v.action, MessageAction::Accept);

    // Tampered body: the signature no longer verifies, DMARC fails.
    let tampered = String::from_utf8(signed.clone())
        .unwrap()
        .replace("Signed body.", "Signed body, changed.")
        .into_bytes();
    let (v, headers) = check(&f, "127.0.0.1", "bounce@bad.test", &tampered).await;
    assert!(!headers.contains("dkim=pass"), "{headers}");
    assert!(
        headers.contains("dkim=fail header.d=good.test header.s=sel"),
        "{headers}"
    );
    assert!(
        headers.contains("dmarc=fail (p=reject) header.from=good.test"),
        "{headers}"
    );
    assert_eq!(v.action, MessageAction::Accept, "all stages tag only");

    // dkim = reject: no valid signature.
    let (v, _) = check(
        &filters(
            &dns,
            Filter {
                dkim: StageMode::Reject,
                ..base_filter()
            },
        ),
        "127.0.0.1",
        "bounce@bad.test",
        &tampered,
    )
    .await;
    assert_eq!(
        v.action,
        MessageAction::Reject {
            reply: Reply::parse("550 5.7.20 No valid DKIM signature found").unwrap()
        }
    );
    // dkim = quarantine.
    let (v, _) = check(
        &filters(
            &dns,
            Filter {
                dkim: StageMode::Quarantine,
                ..base_filter()
            },
        ),
        "127.0.0.1",
        "bounce@bad.test",
        &tampered,
    )
    .await;
    assert!(
        matches!(v.action, MessageAction::Quarantine { .. }),
        "{v:?}"
    );
    // dmarc = reject: good.test publishes p=reject.
    let (v, _) = check(
        &filters(&dns, strict),
        "127.0.0.1",
        "bounce@bad.test",
        &tampered,
    )
    .await;
    assert_eq!(
        v.action,
        MessageAction::Reject {
            reply: Reply::parse("550 5.7.1 DMARC policy of good.test says reject").unwrap()
        }
    );
}

#[tokio::test]
async fn unsigned_spf_failing_message_is_rejected_by_dmarc() {
    let dns = start_dns();
    let msg = message("mallory@bad.test", "Pay this invoice.");

    let reject = Filter {
        dmarc: StageMode::Reject,
        ..base_filter()
    };
    let (v, headers) = check(
        &filters(&dns, reject),
        "127.0.0.1",
        "mallory@bad.test",
        &msg,
    )
    .await;
    assert_eq!(
        v.action,
        MessageAction::Reject {
            reply: Reply::parse("550 5.7.1 DMARC policy of bad.test says reject").unwrap()
        }
    );
    assert!(
        headers.contains("spf=fail smtp.mailfrom=mallory@bad.test"),
        "{headers}"
    );
    assert!(headers.contains("dkim=none"), "{headers}");
    assert!(
        headers.contains("dmarc=fail (p=reject) header.from=bad.test"),
        "{headers}"
    );
    assert!(
        headers.contains("X-Postoffice-Verdict: reject;"),
        "{headers}"
    );

    let quarantine = Filter {
        dmarc: StageMode::Quarantine,
        ..base_filter()
    };
    let (v, _) = check(
        &filters(&dns, quarantine),
        "127.0.0.1",
        "mallory@bad.test",
        &msg,
    )
    .await;
    assert!(
        matches!(&v.action, MessageAction::Quarantine { reason } if reason.contains("bad.test")),
        "{v:?}"
    );

    let (v, headers) = check(
        &filters(&dns, base_filter()),
        "127.0.0.1",
        "mallory@bad.test",
        &msg,
    )
    .await;
    assert_eq!(v.action, MessageAction::Accept);
    assert!(
        headers.contains("X-Postoffice-Verdict: suspect;"),
        "{headers}"
    );

    // The same message from the address bad.test allows: SPF and DMARC pass.
    let reject = Filter {
        dmarc: StageMode::Reject,
        ..base_filter()
    };
    let (v, headers) = check(
        &filters(&dns, reject),
        "192.0.2.1",
        "mallory@bad.test",
        &msg,
    )
    .await;
    assert_eq!(v.action, MessageAction::Accept);
    assert!(
        headers.contains("dmarc=pass header.from=bad.test"),
        "{headers}"
    );
}
