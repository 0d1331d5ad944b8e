//! The four policies against the real server.

use std::time::{SystemTime, UNIX_EPOCH};

use postoffice_fetch::state::State;
use postoffice_fetch::{Client, Destination, Policy, TlsMode};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_fetches_everything_and_empties_the_server() {
    let srv = TestServer::start().await;
    for i in 1..=3 {
        srv.deliver(&message(i));
    }
    let acct = srv.account("del", Policy::Delete);
    let r = fetch(&acct, &opts()).await;
    assert!(r.is_ok(), "{:?}", r.error);
    assert_eq!((r.fetched, r.deleted, r.kept, r.failed), (3, 3, 0, 0));
    assert!(
        r.summary().starts_with("del: 3 messages ("),
        "{}",
        r.summary()
    );
    assert!(
        r.summary().ends_with("fetched, 3 deleted, 0 kept"),
        "{}",
        r.summary()
    );
    assert_eq!(srv.count(), 0);
    let Destination::Maildir(root) = &acct.destination else {
        unreachable!()
    };
    let got = maildir_messages(root);
    let mut want: Vec<Vec<u8>> = (1..=3).map(message_lf).collect();
    want.sort();
    assert_eq!(got, want);
    // Deleted messages are pruned from the state file.
    assert!(State::load(&acct.state_file).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_twice_downloads_only_new_messages_and_prunes() {
    let srv = TestServer::start().await;
    srv.deliver(&message(1));
    srv.deliver(&message(2));
    let acct = srv.account("keep", Policy::Keep);
    let Destination::Maildir(root) = acct.destination.clone() else {
        unreachable!()
    };

    let r = fetch(&acct, &opts()).await;
    assert!(r.is_ok(), "{:?}", r.error);
    assert_eq!((r.fetched, r.deleted, r.kept), (2, 0, 2));
    assert_eq!(srv.count(), 2);

    srv.deliver(&message(3));
    let r = fetch(&acct, &opts()).await;
    assert!(r.is_ok(), "{:?}", r.error);
    assert_eq!(
        (r.fetched, r.deleted, r.kept, r.already_delivered),
        (1, 0, 3, 2)
    );
    assert_eq!(
        subjects(&maildir_messages(&root)),
        [1, 2, 3],
        "no duplicates"
    );
    assert_eq!(srv.count(), 3);
    assert_eq!(State::load(&acct.state_file).unwrap().len(), 3);

    // Another client deletes message 1; the next run forgets its UIDL.
    let mut o = acct.connect_options(false);
    o.tls = TlsMode::None;
    let mut c = Client::connect(&o).await.unwrap();
    c.login(USER, PW, postoffice_fetch::AuthMethod::User)
        .await
        .unwrap();
    c.dele(1).await.unwrap();
    c.quit().await.unwrap();
    let r = fetch(&acct, &opts()).await;
    assert!(r.is_ok(), "{:?}", r.error);
    assert_eq!((r.fetched, r.kept), (0, 2));
    assert_eq!(State::load(&acct.state_file).unwrap().len(), 2, "pruned");
    assert_eq!(subjects(&maildir_messages(&root)), [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_after_days_deletes_only_old_ones() {
    let srv = TestServer::start().await;
    for i in 1..=3 {
        srv.deliver(&message(i));
    }
    let acct = srv.account("days", Policy::DeleteAfterDays(7));
    let r = fetch(&acct, &opts()).await;
    assert!(r.is_ok(), "{:?}", r.error);
    assert_eq!((r.fetched, r.deleted, r.kept), (3, 0, 3));

    // Backdate two of the three first-seen times by 8 days.
    let mut state = State::load(&acct.state_file).unwrap();
    let uids: Vec<String> = state.entries().map(|(u, _)| u.to_string()).collect();
    assert_eq!(uids.len(), 3);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for u in &uids[..2] {
        state.set_first_seen(u, now - 8 * 86_400);
    }
    state.set_first_seen(&uids[2], now - 6 * 86_400);
    state.save().unwrap();

    let r = fetch(&acct, &opts()).await;
    assert!(r.is_ok(), "{:?}", r.error);
    assert_eq!((r.fetched, r.deleted, r.kept), (0, 2, 1));
    assert_eq!(srv.count(), 1);
    let state = State::load(&acct.state_file).unwrap();
    assert_eq!(state.len(), 1);
    assert!(state.contains(&uids[2]));
    let Destination::Maildir(root) = &acct.destination else {
        unreachable!()
    };
    assert_eq!(maildir_messages(root).len(), 3);
}

/// The subjects of the messages on the server, in server order.
async fn server_order(acct: &postoffice_fetch::Account) -> Vec<usize> {
    let mut c = Client::connect(&acct.connect_options(false)).await.unwrap();
    c.login(USER, PW, postoffice_fetch::AuthMethod::Auto)
        .await
        .unwrap();
    let (count, _) = c.stat().await.unwrap();
    let mut order = Vec::new();
    for n in 1..=count as u32 {
        let mut buf = Vec::new();
        c.top(n, 0, &mut buf).await.unwrap();
        order.push(subjects(&[buf])[0]);
    }
    c.quit().await.unwrap();
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_newest_leaves_the_newest_n() {
    let srv = TestServer::start().await;
    for i in 1..=5 {
        srv.deliver(&message(i));
    }
    let acct = srv.account("newest", Policy::KeepNewest(2));
    let order = server_order(&acct).await;
    assert_eq!(order.len(), 5);
    let r = fetch(&acct, &opts()).await;
    assert!(r.is_ok(), "{:?}", r.error);
    assert_eq!((r.fetched, r.deleted, r.kept), (5, 3, 2));
    assert_eq!(server_order(&acct).await, order[3..], "the newest two stay");

    srv.deliver(&message(6));
    let order = server_order(&acct).await;
    assert_eq!(order.len(), 3);
    let r = fetch(&acct, &opts()).await;
    assert!(r.is_ok(), "{:?}", r.error);
    assert_eq!(
        (r.fetched, r.deleted, r.kept),
        (1, 1, 2),
        "only the new one is fetched"
    );
    assert_eq!(srv.count(), 2);
    let Destination::Maildir(root) = &acct.destination else {
        unreachable!()
    };
    assert_eq!(subjects(&maildir_messages(root)), [1, 2, 3, 4, 5, 6]);
    assert_eq!(State::load(&acct.state_file).unwrap().len(), 2);
    assert_eq!(server_order(&acct).await, order[1..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_changes_nothing() {
    let srv = TestServer::start().await;
    srv.deliver(&message(1));
    srv.deliver(&message(2));
    let acct = srv.account("dry", Policy::Delete);
    let mut o = opts();
    o.dry_run = true;
    let r = fetch(&acct, &o).await;
    assert!(r.is_ok(), "{:?}", r.error);
    assert_eq!(
        (r.would_fetch.len(), r.would_delete.len(), r.fetched),
        (2, 2, 0)
    );
    assert!(
        r.summary().contains("would fetch 2 messages"),
        "{}",
        r.summary()
    );
    assert_eq!(srv.count(), 2);
    assert!(!acct.state_file.exists());
    let Destination::Maildir(root) = &acct.destination else {
        unreachable!()
    };
    assert!(!root.exists());
}
