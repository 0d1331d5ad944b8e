//! Provider policy a user can see: quota warnings, over_quota =
//! "make_room", retention from delivery or first retrieval and its notice,
//! through the application (`Local`, `retention::sweep_at`) on a real
//! Maildir store, with the clock passed in.

use std::io::Read;
use std::time::{Duration, SystemTime};

use postoffice_common::content::Pieces;
use postoffice_config::{Config, OverQuota, RetentionFrom};
use postoffice_core::App;
use postoffice_core::retention::sweep_at;

const USER: &str = "alice@example.test";
const DAY: Duration = Duration::from_secs(86_400);

fn app(edit: impl FnOnce(&mut Config)) -> (tempfile::TempDir, App) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        hostname: "mx.example.test".into(),
        ..Config::default()
    };
    edit(&mut config);
    let app = App::without_filters(config).unwrap();
    app.directory.add_domain("example.test").unwrap();
    let hash = postoffice_directory::hash_password(b"pw").unwrap();
    app.directory.add_user(USER, &hash).unwrap();
    (dir, app)
}

fn message(subject: &str, body_len: usize) -> Vec<u8> {
    format!(
        "From: Bob <bob@example.net>\r\nDate: Mon, 1 Jun 2026 10:00:00 +0000\r\nSubject: {subject}\r\n\r\n{}\r\n",
        "x".repeat(body_len)
    )
    .into_bytes()
}

fn deliver(app: &App, subject: &str, body_len: usize) -> Result<(), String> {
    let m = message(subject, body_len);
    app.local()
        .deliver(&[USER.to_string()], &Pieces::of_slice(&m))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// (subject, notice kind) of every message in the maildrop, in order.
fn contents(app: &App) -> Vec<(String, Option<String>)> {
    let md = app.store.open(USER).unwrap();
    (0..md.messages().len())
        .map(|i| {
            let mut text = String::new();
            md.open_message(i)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            let head = text.split("\r\n\r\n").next().unwrap().to_string();
            let field = |name: &str| {
                head.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
            };
            (
                field("Subject:").unwrap_or_default(),
                field("X-Postoffice-Notice:"),
            )
        })
        .collect()
}

fn notices(app: &App, kind: &str) -> Vec<String> {
    contents(app)
        .into_iter()
        .filter(|(_, k)| k.as_deref() == Some(kind))
        .map(|(s, _)| s)
        .collect()
}

fn set_quota(app: &App, bytes: Option<u64>, messages: Option<u64>) {
    app.directory
        .update_user_policy(USER, |p| {
            p.quota_bytes = bytes;
            p.quota_messages = messages;
        })
        .unwrap();
}

/// One warning per level crossed, none on further deliveries, and again
/// once usage went below the level and crossed it anew.
#[test]
fn quota_warnings_once_per_crossing() {
    let (_d, app) = app(|_| {});
    set_quota(&app, Some(100_000), None);
    for i in 0..7 {
        deliver(&app, &format!("m{i}"), 10_000).unwrap();
    }
    assert!(
        notices(&app, "quota-warning").is_empty(),
        "70 % is below 80 %"
    );
    deliver(&app, "m7", 10_000).unwrap(); // ~80 %
    let w = notices(&app, "quota-warning");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("% full"), "{w:?}");
    deliver(&app, "m8", 5_000).unwrap(); // ~87 %: no new level
    assert_eq!(notices(&app, "quota-warning").len(), 1);
    deliver(&app, "m9", 9_000).unwrap(); // ~96 %
    assert_eq!(notices(&app, "quota-warning").len(), 2);
    assert!(
        deliver(&app, "too much", 10_000).is_err(),
        "over quota: refused"
    );
    assert_eq!(notices(&app, "quota-warning").len(), 2, "no duplicates");

    // Empty the maildrop (as a POP3 client deleting everything would),
    // then cross 80 % again: a new warning.
    let md = app.store.open(USER).unwrap();
    let all: Vec<usize> = (0..md.messages().len()).collect();
    md.commit(&all).unwrap();
    drop(md);
    for i in 0..8 {
        deliver(&app, &format!("again{i}"), 10_000).unwrap();
    }
    assert_eq!(notices(&app, "quota-warning").len(), 1, "warned anew");
}

/// A message-count quota warns too, and the warning text carries the
/// numbers.
#[test]
fn message_quota_warning_text() {
    let (_d, app) = app(|c| c.policy.quota_warning_percent = vec![50]);
    set_quota(&app, None, Some(10));
    for i in 0..5 {
        deliver(&app, &format!("m{i}"), 10).unwrap();
    }
    let md = app.store.open(USER).unwrap();
    let last = md.messages().len() - 1;
    let mut text = String::new();
    md.open_message(last)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert!(
        text.contains("X-Postoffice-Notice: quota-warning"),
        "{text}"
    );
    assert!(text.contains("5 of 10 messages"), "{text}");
    assert!(text.contains("passed 50%"), "{text}");
    assert!(text.contains("Auto-Submitted: auto-generated"));
}

/// make_room deletes the oldest retrieved messages to fit a new one, never
/// an unretrieved one, and refuses when not enough can go.
#[test]
fn make_room_deletes_only_retrieved_mail() {
    let (_d, app) = app(|c| {
        c.policy.over_quota = OverQuota::MakeRoom;
        c.policy.quota_warning_percent = vec![];
    });
    set_quota(&app, None, Some(3));
    for s in ["a", "b", "c"] {
        deliver(&app, s, 10).unwrap();
    }
    // RCPT-time check lets the message in: room may be made at delivery.
    assert!(app.local().check_recipient(USER).is_ok());
    let e = deliver(&app, "d", 10).unwrap_err();
    assert!(e.contains("over quota"), "nothing retrieved: {e}");
    let md = app.store.open(USER).unwrap();
    md.mark_retrieved(&[0, 2]).unwrap();
    drop(md);
    deliver(&app, "d", 10).unwrap();
    let subjects: Vec<String> = contents(&app).into_iter().map(|(s, _)| s).collect();
    assert_eq!(subjects, ["b", "c", "d"], "the oldest retrieved went");
    deliver(&app, "e", 10).unwrap();
    let subjects: Vec<String> = contents(&app).into_iter().map(|(s, _)| s).collect();
    assert_eq!(subjects, ["b", "d", "e"]);
    assert!(
        deliver(&app, "f", 10).is_err(),
        "b, d, e were never retrieved"
    );

    // With over_quota = "refuse" the same mailbox refuses at once.
    let (_d2, refusing) = app_with_refuse();
    set_quota(&refusing, None, Some(1));
    deliver(&refusing, "a", 10).unwrap();
    assert!(refusing.local().check_recipient(USER).is_err());
}

fn app_with_refuse() -> (tempfile::TempDir, App) {
    app(|c| c.policy.quota_warning_percent = vec![])
}

/// Retention from first retrieval: one notice N days before, listing date,
/// sender and subject; deletion when due; mail nobody retrieved follows
/// its own limit.
#[test]
fn retention_from_retrieval_with_notice() {
    let (_d, app) = app(|c| {
        c.policy.retention_days = 10;
        c.policy.retention_from = RetentionFrom::Retrieval;
        c.policy.retention_unretrieved_days = 30;
        c.policy.retention_notice_days = 3;
    });
    deliver(&app, "read me", 10).unwrap();
    deliver(&app, "never read", 10).unwrap();
    let md = app.store.open(USER).unwrap();
    md.mark_retrieved(&[0]).unwrap();
    drop(md);
    let t0 = SystemTime::now();
    let sweep = |at: SystemTime| sweep_at(&app.config, &app.directory, &*app.store, false, at);

    let r = sweep(t0 + 6 * DAY);
    assert!(r.expired.is_empty() && r.notices.is_empty(), "{r:?}");
    let r = sweep(t0 + 8 * DAY);
    assert_eq!(r.notices, [(USER.to_string(), 1)], "{r:?}");
    let text = notice_text(&app);
    assert!(
        text.contains("read me") && text.contains("bob@example.net"),
        "{text}"
    );
    assert!(text.contains("Mon, 1 Jun 2026"), "{text}");
    assert!(!text.contains("never read"), "{text}");
    let r = sweep(t0 + 9 * DAY);
    assert!(r.notices.is_empty(), "listed once: {r:?}");
    let r = sweep(t0 + 10 * DAY + Duration::from_secs(5));
    assert_eq!(r.expired.len(), 1, "{r:?}");
    let subjects: Vec<String> = contents(&app).into_iter().map(|(s, _)| s).collect();
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    assert!(subjects.contains(&"never read".to_string()));
    // The unretrieved limit (30 days from delivery): noticed, then gone;
    // the notices themselves are never listed.
    let r = sweep(t0 + 28 * DAY);
    assert_eq!(r.notices, [(USER.to_string(), 1)], "{r:?}");
    // The notices follow the same rule (nobody retrieved them either):
    // the message and both notices go, and no notice announces a notice.
    let r = sweep(t0 + 31 * DAY);
    assert_eq!(r.expired[0].1, 3, "{r:?}");
    assert!(r.notices.is_empty(), "{r:?}");
    assert!(contents(&app).is_empty());
}

fn notice_text(app: &App) -> String {
    let md = app.store.open(USER).unwrap();
    for i in (0..md.messages().len()).rev() {
        let mut text = String::new();
        md.open_message(i)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        if text.contains("X-Postoffice-Notice: retention") {
            return text;
        }
    }
    panic!("no retention notice")
}

/// Retention from delivery (the default) with a per-domain template.
#[test]
fn retention_from_delivery_with_domain_template() {
    let tmpl = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        tmpl.path(),
        "Subject: Bientôt supprimés : {count}\nCes messages de {address} :\n{messages}\n",
    )
    .unwrap();
    let path = tmpl.path().display().to_string();
    let (_d, app) = app(move |c| {
        c.policy.retention_days = 5;
        c.policy.retention_notice_days = 2;
        c.notices.domains.insert(
            "example.test".into(),
            postoffice_config::NoticeTemplates {
                retention_notice_template: path,
                ..Default::default()
            },
        );
    });
    deliver(&app, "old", 10).unwrap();
    let t0 = SystemTime::now();
    let r = sweep_at(&app.config, &app.directory, &*app.store, true, t0 + 4 * DAY);
    assert_eq!(r.notices.len(), 1, "a dry run reports it");
    assert!(
        notices(&app, "retention").is_empty(),
        "but delivers nothing"
    );
    sweep_at(
        &app.config,
        &app.directory,
        &*app.store,
        false,
        t0 + 4 * DAY,
    );
    let text = notice_text(&app);
    assert!(text.contains("Subject: =?utf-8?B?"), "{text}");
    assert!(
        text.contains("Ces messages de alice@example.test"),
        "{text}"
    );
    assert!(text.contains("| old"), "{text}");
    let r = sweep_at(
        &app.config,
        &app.directory,
        &*app.store,
        false,
        t0 + 6 * DAY,
    );
    assert_eq!(r.expired.len(), 1);
}
