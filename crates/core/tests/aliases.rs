//! Aliases through the application, on a real Maildir store, with a
//! recording outbound queue: external targets go to the one forwarding call
//! site, all or nothing with the local copies; held (quarantined) mail is
//! never forwarded and never silently dropped.

use std::sync::{Arc, Mutex};

use postoffice_common::content::Pieces;
use postoffice_config::Config;
use postoffice_core::delivery::DeliveryError;
use postoffice_core::{App, Outbound, OutboundError};

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";

/// One queued message: sender, recipients, content.
type Queued = (String, Vec<String>, Vec<u8>);

/// Records what is queued; fails every enqueue while `fail` is set.
#[derive(Default)]
struct Recorder {
    queued: Mutex<Vec<Queued>>,
    held: Mutex<Vec<Vec<String>>>,
    fail: Mutex<bool>,
}

impl Outbound for Recorder {
    fn enqueue(
        &self,
        mail_from: &str,
        rcpts: &[String],
        message: &Pieces<'_>,
    ) -> Result<String, OutboundError> {
        if *self.fail.lock().unwrap() {
            return Err(OutboundError("spool full".into()));
        }
        let mut q = self.queued.lock().unwrap();
        q.push((mail_from.into(), rcpts.to_vec(), message.to_vec().unwrap()));
        Ok(format!("Q{}", q.len()))
    }

    fn hold(
        &self,
        _mail_from: &str,
        rcpts: &[String],
        _message: &Pieces<'_>,
        _reason: &str,
    ) -> Result<String, OutboundError> {
        let mut h = self.held.lock().unwrap();
        h.push(rcpts.to_vec());
        Ok(format!("H{}", h.len()))
    }

    fn cancel(&self, _id: &str) {}
}

fn app() -> (tempfile::TempDir, App, Arc<Recorder>) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        hostname: "mx.example.test".into(),
        ..Config::default()
    };
    let app = App::without_filters(config).unwrap();
    app.directory.add_domain("example.test").unwrap();
    let hash = postoffice_directory::hash_password(b"pw").unwrap();
    app.directory.add_user(ALICE, &hash).unwrap();
    app.directory.add_user(BOB, &hash).unwrap();
    let targets = vec![ALICE.to_string(), "friend@remote.example".to_string()];
    postoffice_core::admin::add_alias(
        &app.config,
        &app.directory,
        "fwd@example.test",
        &targets,
        None,
    )
    .unwrap();
    let ext = vec!["far@remote.example".to_string()];
    postoffice_core::admin::add_alias(&app.config, &app.directory, "away@example.test", &ext, None)
        .unwrap();
    let rec = Arc::new(Recorder::default());
    app.set_outbound(rec.clone());
    (dir, app, rec)
}

fn count(app: &App, user: &str) -> usize {
    app.store.open(user).unwrap().messages().len()
}

#[test]
fn external_targets_are_queued_with_the_local_copies_all_or_nothing() {
    let (_d, app, rec) = app();
    let msg = b"Subject: hi\r\n\r\nbody\r\n";
    let rcpts = vec!["fwd@example.test".to_string(), BOB.to_string()];
    let r = app.local().resolution(&rcpts).unwrap();
    assert_eq!(r.mailboxes(), [ALICE, BOB]);
    assert_eq!(r.external, ["friend@remote.example"]);
    // The queue fails: nothing is kept locally either (the sender retries).
    *rec.fail.lock().unwrap() = true;
    let e = postoffice_core::alias_forward::deliver_and_forward(
        &app,
        "sender@remote.example",
        &r,
        &Pieces::of_slice(msg),
        None,
    )
    .unwrap_err();
    assert!(matches!(e, DeliveryError::ForwardUnavailable(_)), "{e}");
    assert_eq!(e.reply().code, 451);
    assert_eq!((count(&app, ALICE), count(&app, BOB)), (0, 0));
    assert!(rec.queued.lock().unwrap().is_empty());
    // It works: each mailbox once, the external target queued once, with
    // the envelope sender and the message unchanged.
    *rec.fail.lock().unwrap() = false;
    let id = postoffice_core::alias_forward::deliver_and_forward(
        &app,
        "sender@remote.example",
        &r,
        &Pieces::of_slice(msg),
        None,
    )
    .unwrap();
    assert_eq!(id.as_deref(), Some("Q1"));
    assert_eq!((count(&app, ALICE), count(&app, BOB)), (1, 1));
    let q = rec.queued.lock().unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].0, "sender@remote.example");
    assert_eq!(q[0].1, ["friend@remote.example"]);
    assert_eq!(q[0].2, msg);
}

#[test]
fn held_mail_is_never_forwarded_nor_dropped() {
    let (_d, app, rec) = app();
    let msg = Pieces::of_slice(b"Subject: spam\r\n\r\nbody\r\n");
    // Only external targets: refused, so the sender knows.
    let e = app
        .local()
        .quarantine(&["away@example.test".to_string()], &msg)
        .unwrap_err();
    assert!(matches!(e, DeliveryError::HeldNotForwarded(_)), "{e}");
    assert_eq!(e.reply().code, 554);
    // Local and external: held for the local mailbox only.
    app.local()
        .quarantine(&["fwd@example.test".to_string()], &msg)
        .unwrap();
    assert_eq!(app.store.quarantine_list(ALICE).unwrap().len(), 1);
    assert!(rec.queued.lock().unwrap().is_empty());
}

#[test]
fn an_external_only_alias_needs_a_queue() {
    let (_d, app, _rec) = app();
    let r = app.local().check_targets("away@example.test").unwrap();
    assert!(r.local.is_empty());
    assert_eq!(r.external, ["far@remote.example"]);
    // Without a queue attached, the RCPT is refused temporarily.
    let dir = tempfile::tempdir().unwrap();
    let bare = App::without_filters(Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    })
    .unwrap();
    bare.directory.add_domain("example.test").unwrap();
    let ext = vec!["far@remote.example".to_string()];
    postoffice_core::admin::add_alias(
        &bare.config,
        &bare.directory,
        "away@example.test",
        &ext,
        None,
    )
    .unwrap();
    match postoffice_core::inbound::recipient_verdict(&bare, "away@example.test") {
        postoffice_smtp::Verdict::Reject(r) => assert_eq!(r.code, 451, "{r}"),
        v => panic!("{v:?}"),
    }
}

#[test]
fn a_held_submission_holds_the_external_targets_of_local_aliases_too() {
    let (_d, app, rec) = app();
    let rcpts = vec![
        "fwd@example.test".to_string(),
        "x@remote.example".to_string(),
    ];
    let id = postoffice_core::submission::store_or_hold(
        &app,
        BOB,
        &rcpts,
        &Pieces::of_slice(b"Subject: held\r\n\r\nbody\r\n"),
        Some("spam"),
    )
    .unwrap();
    assert_eq!(id.as_deref(), Some("H1"));
    let held = rec.held.lock().unwrap();
    assert_eq!(
        held[0],
        [
            "x@remote.example".to_string(),
            "friend@remote.example".to_string()
        ]
    );
    assert!(rec.queued.lock().unwrap().is_empty());
    assert_eq!(count(&app, ALICE), 0);
    assert_eq!(app.store.quarantine_list(ALICE).unwrap().len(), 1);
}
