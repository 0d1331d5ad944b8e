use super::*;
use crate::auth::{DkimCheck, DmarcCheck, SpfCheck};
use crate::clamd::tests::{Fake, closed_port, fake_clamd};
use postoffice_common::content::Content;

fn all_off() -> Filter {
    Filter {
        dnsbl: StageMode::Off,
        spf: StageMode::Off,
        dkim: StageMode::Off,
        dmarc: StageMode::Off,
        virus: StageMode::Off,
        ..Filter::default()
    }
}

fn ctx<'a>(tags: &'a [String]) -> MessageContext<'a> {
    MessageContext {
        rcpt_to: &[],
        auth_user: None,
        ip: "192.0.2.1".parse().unwrap(),
        helo: "mx.sender.test",
        mail_from: "alice@sender.test",
        receiver_hostname: "mx.postoffice.test",
        connect_tags: tags,
    }
}

fn reject(r: &str) -> MessageAction {
    MessageAction::Reject {
        reply: Reply::parse(r).unwrap(),
    }
}
fn tempfail(r: &str) -> MessageAction {
    MessageAction::TempFail {
        reply: Reply::parse(r).unwrap(),
    }
}
fn quarantine(r: &str) -> MessageAction {
    MessageAction::Quarantine { reason: r.into() }
}

#[test]
fn strongest_action_wins() {
    use MessageAction::Accept;
    assert_eq!(combine_actions([]), Accept);
    assert_eq!(combine_actions([Accept, Accept]), Accept);
    assert_eq!(combine_actions([Accept, quarantine("q")]), quarantine("q"));
    assert_eq!(
        combine_actions([quarantine("q"), tempfail("451 t"), Accept]),
        tempfail("451 t")
    );
    assert_eq!(
        combine_actions([tempfail("451 t"), reject("550 r"), quarantine("q")]),
        reject("550 r")
    );
    assert_eq!(
        combine_actions([reject("550 first"), reject("550 second")]),
        reject("550 first")
    );
    assert_eq!(
        combine_actions([reject("550 r"), tempfail("451 t")]),
        reject("550 r")
    );
    assert_eq!(
        combine_actions([quarantine("a"), quarantine("b")]),
        quarantine("a; b")
    );
}

#[test]
fn filters_are_send_sync_and_futures_are_send() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let filters = Filters::new(&all_off(), &Dns::default()).unwrap();
    send_sync(&filters);
    let tags = Vec::new();
    let c = ctx(&tags);
    let empty = Content::from_vec(Vec::new());
    let f = filters.check_message(&c, &empty);
    send(&f);
    let g = filters.check_connect("127.0.0.1".parse().unwrap());
    send(&g);
}

/// The resolver is built without a tokio runtime (at startup, before the
/// server's runtime exists) and without touching the network.
#[test]
fn resolver_builds_outside_a_runtime() {
    let dns = Dns {
        nameservers: vec![
            "127.0.0.1:53".parse().unwrap(),
            "[::1]:5353".parse().unwrap(),
        ],
        timeout_secs: 0,
    };
    let f = Filters::new(&Filter::default(), &dns).unwrap();
    assert!(f.authenticator.is_some());
    let (config, opts) = postoffice_common::resolver::config(&dns, 256).unwrap();
    let servers = config.name_servers();
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[1].ip, "::1".parse::<IpAddr>().unwrap());
    assert!(servers[1].connections.len() == 2);
    assert!(servers[1].connections.iter().all(|c| c.port == 5353));
    assert_eq!(opts.timeout, Duration::from_secs(1));
}

#[test]
fn config_errors_are_reported() {
    let dns = Dns::default();
    let bad = |f: Filter| Filters::new(&f, &dns).unwrap_err().to_string();
    assert!(
        bad(Filter {
            ip_block: vec!["10.0.0.0/99".into()],
            ..all_off()
        })
        .contains("ip_block")
    );
    assert!(
        bad(Filter {
            sender_block: vec!["nobody".into()],
            ..all_off()
        })
        .contains("sender_block")
    );
    assert!(
        bad(Filter {
            clamd: "localhost".into(),
            ..all_off()
        })
        .contains("clamd")
    );
    assert!(
        bad(Filter {
            dnsbl: StageMode::Quarantine,
            ..all_off()
        })
        .contains("dnsbl")
    );
    assert!(
        bad(Filter {
            dnsbl: StageMode::Reject,
            dnsbl_zones: vec!["not a zone".into()],
            ..all_off()
        })
        .contains("dnsbl_zones")
    );
}

#[test]
fn sender_block_matching() {
    let filter = Filter {
        sender_block: vec![
            "spam@Example.NET".into(),
            "@junk.test".into(),
            "<bulk@promo.test.>".into(),
        ],
        ..all_off()
    };
    let f = Filters::new(&filter, &Dns::default()).unwrap();
    let blocked = |s: &str| matches!(f.check_sender(s), SenderVerdict::Reject { .. });
    assert!(blocked("spam@example.net"));
    assert!(blocked("spam@EXAMPLE.net"));
    assert!(blocked("<spam@example.net>"));
    assert!(blocked("SPAM@example.net"));
    assert!(blocked("anyone@junk.test"));
    assert!(blocked("Someone@JUNK.TEST"));
    assert!(blocked("x@junk.test."));
    assert!(blocked("bulk@promo.test"));
    assert!(!blocked("spam2@example.net"));
    assert!(!blocked("ham@example.net"));
    assert!(!blocked("anyone@sub.junk.test"));
    assert!(!blocked("anyone@notjunk.test"));
    assert!(!blocked("junk.test@elsewhere.test"));
    assert!(!blocked(""));
    assert!(!blocked("<>"));
    match f.check_sender("anyone@junk.test") {
        SenderVerdict::Reject { reply } => {
            assert!(
                reply
                    .to_string()
                    .starts_with("550 5.7.1 Sender address rejected: "),
                "{reply}"
            );
            assert!(reply.to_string().contains("anyone@junk.test"), "{reply}");
        }
        other => panic!("{other:?}"),
    }
    // Nothing from the client can break the reply line.
    match f.check_sender("x\r\n250 ok@junk.test") {
        SenderVerdict::Reject { reply } => {
            assert_eq!(reply.lines.len(), 1, "{reply:?}");
            assert!(!reply.lines[0].contains(['\r', '\n']), "{reply:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn ip_allow_and_block() {
    let filter = Filter {
        ip_allow: vec!["192.0.2.0/24".into()],
        ip_block: vec!["192.0.2.0/16".into(), "2001:db8::/32".into()],
        ..all_off()
    };
    let f = Filters::new(&filter, &Dns::default()).unwrap();
    assert_eq!(
        f.check_connect("192.0.2.9".parse().unwrap()).await,
        ConnectVerdict::Accept {
            tags: vec![TAG_IP_ALLOW.into()]
        }
    );
    assert_eq!(
        f.check_connect("::ffff:192.0.2.9".parse().unwrap()).await,
        ConnectVerdict::Accept {
            tags: vec![TAG_IP_ALLOW.into()]
        }
    );
    match f.check_connect("192.0.3.9".parse().unwrap()).await {
        ConnectVerdict::Reject { reply, stage } => {
            assert_eq!(
                reply.to_string(),
                "554 5.7.1 Service unavailable; client [192.0.3.9] blocked by local policy"
            );
            assert_eq!(stage, Stage::IpBlock);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        f.check_connect("2001:db8::5".parse().unwrap()).await,
        ConnectVerdict::Reject { .. }
    ));
    assert_eq!(
        f.check_connect("198.51.100.1".parse().unwrap()).await,
        ConnectVerdict::Accept { tags: vec![] }
    );
}

/// A DNSBL whose name server is unreachable fails open, with a tag.
#[tokio::test]
async fn dnsbl_unreachable_fails_open() {
    let port = closed_port().await.port();
    let dns = Dns {
        nameservers: vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))],
        timeout_secs: 1,
    };
    let filter = Filter {
        dnsbl: StageMode::Reject,
        dnsbl_zones: vec!["dnsbl.test".into()],
        ..all_off()
    };
    let f = Filters::new(&filter, &dns).unwrap();
    let started = std::time::Instant::now();
    let verdict = f.check_connect("127.0.0.2".parse().unwrap()).await;
    assert_eq!(
        verdict,
        ConnectVerdict::Accept {
            tags: vec!["dnsbl_error:dnsbl.test".into()]
        }
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

fn spf(result: AuthResult) -> Option<SpfCheck> {
    Some(SpfCheck {
        result,
        property: "smtp.mailfrom",
        identity: "alice@sender.test".into(),
        domain: "sender.test".into(),
    })
}

fn dkim(results: &[AuthResult]) -> Option<Vec<DkimCheck>> {
    Some(
        results
            .iter()
            .map(|&result| DkimCheck {
                result,
                domain: "sender.test".into(),
                selector: "sel".into(),
            })
            .collect(),
    )
}

fn dmarc(result: AuthResult, policy: DmarcPolicy) -> Option<DmarcCheck> {
    Some(DmarcCheck {
        result,
        policy,
        domain: "sender.test".into(),
    })
}

fn filters(spf: StageMode, dkim: StageMode, dmarc: StageMode) -> Filters {
    // Built with DNS off, then switched on: verdict() needs no resolver.
    let mut f = Filters::new(&all_off(), &Dns::default()).unwrap();
    f.spf = spf;
    f.dkim = dkim;
    f.dmarc = dmarc;
    f
}

fn verdict_of(f: &Filters, outcome: &AuthOutcome, scan: Option<&ScanOutcome>) -> MessageVerdict {
    let tags = Vec::new();
    let c = ctx(&tags);
    let ids = Identities::new(c.ip, c.helo, c.mail_from, c.receiver_hostname);
    f.verdict(&c, &ids, outcome, scan, None)
}

#[test]
fn all_pass_is_clean_with_rfc8601_header() {
    use AuthResult::Pass;
    let f = filters(StageMode::Reject, StageMode::Reject, StageMode::Reject);
    let outcome = AuthOutcome {
        spf: spf(Pass),
        dkim: dkim(&[Pass]),
        dmarc: dmarc(Pass, DmarcPolicy::Reject),
    };
    let v = verdict_of(&f, &outcome, Some(&ScanOutcome::Clean));
    assert_eq!(v.action, MessageAction::Accept);
    assert_eq!(
        v.summary,
        "dnsbl=off spf=pass dkim=pass dmarc=pass virus=clean"
    );
    let unfolded = v.headers.replace("\r\n\t", " ");
    assert_eq!(
        unfolded,
        "Authentication-Results: mx.postoffice.test; spf=pass smtp.mailfrom=alice@sender.test; \
         dkim=pass header.d=sender.test header.s=sel; dmarc=pass header.from=sender.test\r\n\
         X-Postoffice-Verdict: clean; dnsbl=off spf=pass dkim=pass dmarc=pass virus=clean\r\n"
    );
    assert!(
        v.headers.starts_with(
            "Authentication-Results: mx.postoffice.test;\r\n\
             \tspf=pass smtp.mailfrom=alice@sender.test;\r\n\
             \tdkim=pass header.d=sender.test header.s=sel;\r\n\
             \tdmarc=pass header.from=sender.test\r\n"
        ),
        "{}",
        v.headers
    );
    for line in v.headers.split("\r\n") {
        assert!(line.len() <= 78, "{line:?}");
    }
}

#[test]
fn spf_acts_on_fail_only() {
    let outcome = |r| AuthOutcome {
        spf: spf(r),
        ..AuthOutcome::default()
    };
    let f = filters(StageMode::Reject, StageMode::Off, StageMode::Off);
    match verdict_of(&f, &outcome(AuthResult::Fail), None).action {
        MessageAction::Reject { reply } => {
            let reply = reply.to_string();
            assert!(reply.starts_with("550 5.7.23 "), "{reply}");
            assert!(reply.contains("sender.test") && reply.contains("[192.0.2.1]"));
        }
        other => panic!("{other:?}"),
    }
    for r in [
        AuthResult::SoftFail,
        AuthResult::Neutral,
        AuthResult::None,
        AuthResult::TempError,
        AuthResult::PermError,
    ] {
        let v = verdict_of(&f, &outcome(r), None);
        assert_eq!(v.action, MessageAction::Accept, "{r:?}");
    }
    let v = verdict_of(&f, &outcome(AuthResult::SoftFail), None);
    assert!(
        unfold(&v.headers).contains("X-Postoffice-Verdict: suspect;"),
        "{}",
        v.headers
    );
    let f = filters(StageMode::Quarantine, StageMode::Off, StageMode::Off);
    assert!(matches!(
        verdict_of(&f, &outcome(AuthResult::Fail), None).action,
        MessageAction::Quarantine { .. }
    ));
    let f = filters(StageMode::Tag, StageMode::Off, StageMode::Off);
    let v = verdict_of(&f, &outcome(AuthResult::Fail), None);
    assert_eq!(v.action, MessageAction::Accept);
    assert!(unfold(&v.headers).contains("spf=fail smtp.mailfrom=alice@sender.test"));
}

#[test]
fn dkim_acts_when_signatures_exist_and_none_verifies() {
    use AuthResult::{Fail, Neutral, Pass, PermError, TempError};
    let f = filters(StageMode::Off, StageMode::Reject, StageMode::Off);
    let act = |r: &[AuthResult]| {
        verdict_of(
            &f,
            &AuthOutcome {
                dkim: dkim(r),
                ..AuthOutcome::default()
            },
            None,
        )
        .action
    };
    assert_eq!(act(&[]), MessageAction::Accept);
    assert_eq!(act(&[Pass]), MessageAction::Accept);
    assert_eq!(act(&[Fail, Pass]), MessageAction::Accept);
    assert_eq!(act(&[TempError]), MessageAction::Accept);
    assert_eq!(
        act(&[Fail]),
        reject("550 5.7.20 No valid DKIM signature found")
    );
    assert_eq!(
        act(&[Neutral, PermError]),
        reject("550 5.7.20 No valid DKIM signature found")
    );
    let f = filters(StageMode::Off, StageMode::Quarantine, StageMode::Off);
    let v = verdict_of(
        &f,
        &AuthOutcome {
            dkim: dkim(&[Fail]),
            ..AuthOutcome::default()
        },
        None,
    );
    assert!(matches!(v.action, MessageAction::Quarantine { .. }));
    assert!(unfold(&v.headers).contains("dkim=fail header.d=sender.test"));
    assert!(v.summary.contains("dkim=fail"));
    let v = verdict_of(
        &f,
        &AuthOutcome {
            dkim: dkim(&[]),
            ..AuthOutcome::default()
        },
        None,
    );
    assert!(
        unfold(&v.headers).contains("; dkim=none\r\n"),
        "{}",
        v.headers
    );
}

#[test]
fn dmarc_reject_mode_honours_the_published_policy() {
    use AuthResult::{Fail, Pass, TempError};
    let f = filters(StageMode::Off, StageMode::Off, StageMode::Reject);
    let act = |r, p| {
        verdict_of(
            &f,
            &AuthOutcome {
                dmarc: dmarc(r, p),
                ..AuthOutcome::default()
            },
            None,
        )
    };
    assert_eq!(
        act(Fail, DmarcPolicy::Reject).action,
        reject("550 5.7.1 DMARC policy of sender.test says reject")
    );
    assert_eq!(
        act(Fail, DmarcPolicy::Quarantine).action,
        quarantine("DMARC policy of sender.test says quarantine")
    );
    let v = act(Fail, DmarcPolicy::None);
    assert_eq!(v.action, MessageAction::Accept);
    assert!(unfold(&v.headers).contains("dmarc=fail (p=none) header.from=sender.test"));
    assert!(unfold(&v.headers).contains("X-Postoffice-Verdict: suspect;"));
    assert_eq!(act(Pass, DmarcPolicy::Reject).action, MessageAction::Accept);
    assert_eq!(
        act(TempError, DmarcPolicy::Reject).action,
        MessageAction::Accept
    );

    let f = filters(StageMode::Off, StageMode::Off, StageMode::Quarantine);
    let v = verdict_of(
        &f,
        &AuthOutcome {
            dmarc: dmarc(Fail, DmarcPolicy::None),
            ..AuthOutcome::default()
        },
        None,
    );
    assert!(matches!(v.action, MessageAction::Quarantine { .. }));
    assert!(unfold(&v.headers).contains("X-Postoffice-Verdict: quarantine;"));

    let f = filters(StageMode::Off, StageMode::Off, StageMode::Tag);
    let v = verdict_of(
        &f,
        &AuthOutcome {
            dmarc: dmarc(Fail, DmarcPolicy::Reject),
            ..AuthOutcome::default()
        },
        None,
    );
    assert_eq!(v.action, MessageAction::Accept);
}

#[test]
fn virus_results_and_failure_modes() {
    let mut f = filters(StageMode::Off, StageMode::Off, StageMode::Off);
    let none = AuthOutcome::default();
    let found = ScanOutcome::Infected("Eicar-Test-Signature".into());
    let failed = ScanOutcome::Failed("cannot connect to clamd at 127.0.0.1:1: refused".into());

    f.virus = StageMode::Reject;
    let v = verdict_of(&f, &none, Some(&found));
    assert_eq!(
        v.action,
        reject("554 5.7.1 Message rejected: virus Eicar-Test-Signature found")
    );
    assert!(v.summary.contains("virus=found:Eicar-Test-Signature"));

    f.virus = StageMode::Quarantine;
    let v = verdict_of(&f, &none, Some(&found));
    assert_eq!(v.action, quarantine("virus Eicar-Test-Signature found"));

    f.virus = StageMode::Tag;
    let v = verdict_of(&f, &none, Some(&found));
    assert_eq!(v.action, MessageAction::Accept);
    assert!(unfold(&v.headers).contains("X-Postoffice-Verdict: suspect;"));

    f.clamd_failure = FailMode::Closed;
    let v = verdict_of(&f, &none, Some(&failed));
    assert_eq!(
        v.action,
        tempfail("451 4.7.1 Virus scanner unavailable, try again later")
    );
    assert!(!unfold(&v.headers).contains("X-Virus-Scan"));

    f.clamd_failure = FailMode::Open;
    let v = verdict_of(&f, &none, Some(&failed));
    assert_eq!(v.action, MessageAction::Accept);
    assert!(v.summary.contains("virus=skipped"));
    assert!(
        unfold(&v.headers).contains(
            "X-Virus-Scan: skipped (cannot connect to clamd at 127.0.0.1:1: refused)\r\n"
        ),
        "{}",
        v.headers
    );
}

#[test]
fn combined_stage_actions() {
    // DMARC says quarantine, the scanner is down (closed): TempFail wins.
    let mut f = filters(StageMode::Tag, StageMode::Tag, StageMode::Reject);
    f.virus = StageMode::Reject;
    let outcome = AuthOutcome {
        spf: spf(AuthResult::Fail),
        dkim: dkim(&[]),
        dmarc: dmarc(AuthResult::Fail, DmarcPolicy::Quarantine),
    };
    let v = verdict_of(&f, &outcome, Some(&ScanOutcome::Failed("x".into())));
    assert!(matches!(v.action, MessageAction::TempFail { .. }));
    assert_eq!(v.stage, Some(Stage::Virus));
    // A virus beats everything.
    let v = verdict_of(&f, &outcome, Some(&ScanOutcome::Infected("V".into())));
    assert_eq!(
        v.action,
        reject("554 5.7.1 Message rejected: virus V found")
    );
    assert_eq!(v.stage, Some(Stage::Virus));
    // Clean: the DMARC quarantine stands, and says it was DMARC.
    let v = verdict_of(&f, &outcome, Some(&ScanOutcome::Clean));
    assert!(matches!(v.action, MessageAction::Quarantine { .. }));
    assert_eq!(v.stage, Some(Stage::Dmarc));
    // SPF rejects: the stage is SPF, not the DMARC quarantine before it.
    let f = filters(StageMode::Reject, StageMode::Tag, StageMode::Reject);
    let v = verdict_of(&f, &outcome, None);
    assert!(matches!(v.action, MessageAction::Reject { .. }));
    assert_eq!(v.stage, Some(Stage::Spf));
    let clean = AuthOutcome {
        spf: spf(AuthResult::Pass),
        dkim: dkim(&[]),
        dmarc: dmarc(AuthResult::Pass, DmarcPolicy::Reject),
    };
    assert_eq!(verdict_of(&f, &clean, None).stage, None);
}

#[test]
fn hostile_values_are_sanitised_in_headers() {
    let f = filters(StageMode::Tag, StageMode::Tag, StageMode::Tag);
    let outcome = AuthOutcome {
        spf: Some(SpfCheck {
            result: AuthResult::Fail,
            property: "smtp.mailfrom",
            identity: "a\r\nX-Evil: 1@x.test".into(),
            domain: "x.test".into(),
        }),
        dkim: Some(vec![DkimCheck {
            result: AuthResult::Fail,
            domain: "d.test\r\nBcc: v@x".into(),
            selector: "s;1".into(),
        }]),
        dmarc: Some(DmarcCheck {
            result: AuthResult::Fail,
            policy: DmarcPolicy::Reject,
            domain: "x.test\n".into(),
        }),
    };
    let mut f2 = filters(StageMode::Tag, StageMode::Tag, StageMode::Tag);
    f2.clamd_failure = FailMode::Open;
    for v in [
        verdict_of(
            &f,
            &outcome,
            Some(&ScanOutcome::Infected("Sig\r\nX: y".into())),
        ),
        verdict_of(
            &f2,
            &outcome,
            Some(&ScanOutcome::Failed("(a)\r\nX: y".into())),
        ),
    ] {
        assert!(v.headers.ends_with("\r\n"));
        for line in v.headers.trim_end_matches("\r\n").split("\r\n") {
            assert!(
                line.starts_with('\t')
                    || line.starts_with("Authentication-Results: ")
                    || line.starts_with("X-Postoffice-Verdict: ")
                    || line.starts_with("X-Virus-Scan: "),
                "injected line {line:?} in {:?}",
                v.headers
            );
            assert!(!line.contains('\r') && !line.contains('\n'));
        }
        assert!(!v.summary.contains(['\r', '\n']));
        assert!(unfold(&v.headers).contains("smtp.mailfrom=\"a X-Evil: 1@x.test\""));
    }
}

#[test]
fn dnsbl_tags_are_reported() {
    let f = filters(StageMode::Off, StageMode::Off, StageMode::Off);
    let outcome = AuthOutcome::default();
    let report = |tags: Vec<String>| {
        let c = ctx(&tags);
        let ids = Identities::new(c.ip, c.helo, c.mail_from, c.receiver_hostname);
        f.verdict(&c, &ids, &outcome, None, None)
    };
    let v = report(vec!["dnsbl:a.test".into(), "dnsbl:b.test".into()]);
    assert!(
        v.summary.starts_with("dnsbl=listed:a.test,b.test "),
        "{}",
        v.summary
    );
    assert!(v.headers.starts_with("X-Postoffice-Verdict: suspect;"));
    assert_eq!(v.action, MessageAction::Accept);
    let v = report(vec![TAG_IP_ALLOW.into()]);
    assert!(v.summary.starts_with("dnsbl=skipped "));
    let v = report(vec!["dnsbl_error:a.test".into()]);
    assert!(v.summary.starts_with("dnsbl=error "));
    // No stage ran: no Authentication-Results, only the verdict.
    let v = report(vec![]);
    assert_eq!(
        v.headers,
        "X-Postoffice-Verdict: clean; dnsbl=off spf=off dkim=off dmarc=off virus=off\r\n"
    );
}

fn clamd_filter(addr: &str, virus: StageMode, failure: FailMode) -> Filters {
    Filters::new(
        &Filter {
            clamd: addr.into(),
            virus,
            clamd_failure: failure,
            clamd_timeout_secs: 1,
            ..all_off()
        },
        &Dns::default(),
    )
    .unwrap()
}

const MESSAGE: &[u8] = b"From: a@sender.test\r\nSubject: hi\r\n\r\nhello\r\n";

#[tokio::test]
async fn fake_clamd_through_filters() {
    let tags = Vec::new();
    let c = ctx(&tags);

    let (addr, server) = fake_clamd(Fake::Reply(b"stream: OK\0"), 1).await;
    let f = clamd_filter(&addr.to_string(), StageMode::Reject, FailMode::Closed);
    let v = f
        .check_message(&c, &Content::from_vec(MESSAGE.to_vec()))
        .await;
    assert_eq!(v.action, MessageAction::Accept);
    assert!(v.summary.ends_with("virus=clean"), "{}", v.summary);
    assert_eq!(server.await.unwrap(), vec![MESSAGE.to_vec()]);

    let (addr, _server) = fake_clamd(Fake::Reply(b"stream: Eicar-Test-Signature FOUND\0"), 2).await;
    let f = clamd_filter(&addr.to_string(), StageMode::Reject, FailMode::Closed);
    assert_eq!(
        f.check_message(&c, &Content::from_vec(MESSAGE.to_vec()))
            .await
            .action,
        reject("554 5.7.1 Message rejected: virus Eicar-Test-Signature found")
    );
    let f = clamd_filter(&addr.to_string(), StageMode::Quarantine, FailMode::Closed);
    assert_eq!(
        f.check_message(&c, &Content::from_vec(MESSAGE.to_vec()))
            .await
            .action,
        quarantine("virus Eicar-Test-Signature found")
    );
}

#[tokio::test]
async fn fake_clamd_failures_fail_closed_or_open() {
    let tags = Vec::new();
    let c = ctx(&tags);
    let closed = closed_port().await.to_string();
    let (garbage, _g) = fake_clamd(Fake::Reply(b"PONG\0"), 2).await;
    let (slow, _s) = fake_clamd(Fake::Silent, 2).await;
    for addr in [closed, garbage.to_string(), slow.to_string()] {
        let f = clamd_filter(&addr, StageMode::Reject, FailMode::Closed);
        let v = f
            .check_message(&c, &Content::from_vec(MESSAGE.to_vec()))
            .await;
        assert_eq!(
            v.action,
            tempfail("451 4.7.1 Virus scanner unavailable, try again later"),
            "{addr}"
        );
        assert!(v.summary.ends_with("virus=error"), "{}", v.summary);

        let f = clamd_filter(&addr, StageMode::Reject, FailMode::Open);
        let v = f
            .check_message(&c, &Content::from_vec(MESSAGE.to_vec()))
            .await;
        assert_eq!(v.action, MessageAction::Accept, "{addr}");
        assert!(
            unfold(&v.headers).contains("\r\nX-Virus-Scan: skipped ("),
            "{}",
            v.headers
        );
        assert!(v.summary.ends_with("virus=skipped"), "{}", v.summary);
    }
}

#[tokio::test]
async fn virus_off_or_no_clamd_does_not_scan() {
    let tags = Vec::new();
    let c = ctx(&tags);
    let closed = closed_port().await.to_string();
    // virus = off: the dead address is never contacted.
    let f = clamd_filter(&closed, StageMode::Off, FailMode::Closed);
    let v = f
        .check_message(&c, &Content::from_vec(MESSAGE.to_vec()))
        .await;
    assert_eq!(v.action, MessageAction::Accept);
    assert!(v.summary.ends_with("virus=off"));
    // No clamd address.
    let f = clamd_filter("", StageMode::Reject, FailMode::Closed);
    assert_eq!(
        f.check_message(&c, &Content::from_vec(MESSAGE.to_vec()))
            .await
            .action,
        MessageAction::Accept
    );
}

/// Undoes header folding.
fn unfold(headers: &str) -> String {
    headers.replace("\r\n\t", " ")
}

fn spam_verdict(score: f64, failure: FailMode, outcome: Option<SpamOutcome>) -> MessageVerdict {
    let mut f = Filters::new(&all_off(), &Dns::default()).unwrap();
    f.rspamd = Some("127.0.0.1:11333".into());
    f.rspamd_failure = failure;
    let outcome = outcome.unwrap_or(SpamOutcome::Scored {
        score,
        symbols: vec![("GTUBE".into(), score), ("MIME_GOOD".into(), -0.1)],
    });
    let tags = Vec::new();
    let c = ctx(&tags);
    let ids = Identities::new(c.ip, c.helo, c.mail_from, c.receiver_hostname);
    f.verdict(&c, &ids, &AuthOutcome::default(), None, Some(&outcome))
}

#[test]
fn spam_score_thresholds_choose_the_action() {
    let ham = spam_verdict(1.0, FailMode::Closed, None);
    assert_eq!(ham.action, MessageAction::Accept);
    assert!(
        ham.headers.contains("X-Spam-Score: 1.00\r\n"),
        "{}",
        ham.headers
    );
    assert!(
        ham.headers.contains("X-Spam-Status: No, score=1.00"),
        "{}",
        ham.headers
    );
    assert!(
        ham.headers
            .contains("X-Spam-Symbols: GTUBE(1.00), MIME_GOOD(-0.10)")
    );
    assert!(ham.summary.ends_with("spam=ham"), "{}", ham.summary);

    let tagged = spam_verdict(6.0, FailMode::Closed, None);
    assert_eq!(tagged.action, MessageAction::Accept);
    assert!(tagged.headers.contains("X-Spam-Status: Yes, score=6.00"));
    assert!(tagged.summary.ends_with("spam=tag"));

    let held = spam_verdict(12.0, FailMode::Closed, None);
    assert!(matches!(held.action, MessageAction::Quarantine { .. }));
    assert_eq!(held.stage, Some(Stage::Spam));

    let refused = spam_verdict(15.0, FailMode::Closed, None);
    match &refused.action {
        MessageAction::Reject { reply } => assert_eq!(reply.code, 550),
        other => panic!("{other:?}"),
    }
    assert_eq!(refused.stage, Some(Stage::Spam));
}

#[test]
fn rspamd_failure_is_451_closed_and_a_header_open() {
    let failed = || Some(SpamOutcome::Failed("cannot connect to rspamd".into()));
    let closed = spam_verdict(0.0, FailMode::Closed, failed());
    match &closed.action {
        MessageAction::TempFail { reply } => assert_eq!(reply.code, 451),
        other => panic!("{other:?}"),
    }
    assert!(closed.summary.ends_with("spam=error"));
    let open = spam_verdict(0.0, FailMode::Open, failed());
    assert_eq!(open.action, MessageAction::Accept);
    assert!(
        open.headers
            .contains("X-Spam-Status: Unknown (cannot connect to rspamd)"),
        "{}",
        open.headers
    );
}

#[test]
fn outbound_spam_verdicts_follow_the_thresholds_and_failure_mode() {
    let mut f = Filters::new(&all_off(), &Dns::default()).unwrap();
    assert!(!f.has_rspamd());
    let scored = |score: f64| SpamOutcome::Scored {
        score,
        symbols: vec![("GTUBE".into(), score)],
    };
    assert_eq!(
        f.outbound_verdict(&scored(1.0)).action,
        MessageAction::Accept
    );
    let held = f.outbound_verdict(&scored(12.0));
    assert_eq!(
        held.action,
        MessageAction::Quarantine {
            reason: "spam score 12.00".into()
        }
    );
    assert_eq!(held.score, Some(12.0));
    assert!(held.summary.contains("GTUBE"), "{}", held.summary);
    match f.outbound_verdict(&scored(15.0)).action {
        MessageAction::Reject { reply } => {
            assert!(
                reply.to_string().starts_with(
                    "550 5.7.1 Message not sent: it was classified as spam (score 15.00"
                ),
                "{reply}"
            );
        }
        other => panic!("{other:?}"),
    }
    let failed = SpamOutcome::Failed("cannot connect".into());
    assert!(matches!(
        f.outbound_verdict(&failed).action,
        MessageAction::TempFail { .. }
    ));
    f.rspamd_failure = FailMode::Open;
    assert_eq!(f.outbound_verdict(&failed).action, MessageAction::Accept);
    assert_eq!(
        f.outbound_verdict(&SpamOutcome::Skipped("too large".into()))
            .action,
        MessageAction::Accept
    );
}
