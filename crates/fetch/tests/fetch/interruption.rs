//! Connections cut at the worst moments: a rerun must deliver every
//! message exactly once and leave the server empty.

use postoffice_fetch::state::State;
use postoffice_fetch::{Destination, Error, FetchError, Policy};

use crate::common::*;

const N: usize = 4;

async fn setup(name: &str) -> (TestServer, std::path::PathBuf) {
    let srv = TestServer::start().await;
    for i in 1..=N {
        srv.deliver(&message(i));
    }
    let root = srv.path().join(format!("{name}-maildir"));
    (srv, root)
}

/// Rerun without a cut and check the end state.
async fn rerun_and_check(srv: &TestServer, name: &str, root: &std::path::Path) {
    let acct = srv.account_to(
        name,
        Policy::Delete,
        Destination::Maildir(root.to_path_buf()),
        srv.plain,
    );
    let r = fetch(&acct, &opts()).await;
    assert!(r.is_ok(), "rerun failed: {:?}", r.error);
    assert_eq!(
        subjects(&maildir_messages(root)),
        (1..=N).collect::<Vec<_>>(),
        "every message exactly once"
    );
    assert_eq!(srv.count(), 0, "server empty");
    assert!(
        State::load(&acct.state_file).unwrap().is_empty(),
        "state pruned"
    );
}

fn assert_cut(r: &postoffice_fetch::AccountReport) {
    match &r.error {
        Some(FetchError::Pop3(e)) => assert!(e.is_temporary(), "{e:?}"),
        other => panic!("expected a connection error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_right_after_the_first_retr() {
    let (srv, root) = setup("retr").await;
    let via = proxy(srv.plain, Cut::AfterFirstRetr).await;
    let acct = srv.account_to(
        "retr",
        Policy::Delete,
        Destination::Maildir(root.clone()),
        via.addr,
    );
    let r = fetch(&acct, &opts()).await;
    assert_eq!(via.cuts(), 1, "the proxy cut the session");
    assert_cut(&r);
    assert_eq!(r.fetched, 1);
    assert_eq!(srv.count(), N as u64, "nothing deleted without QUIT");
    assert_eq!(
        State::load(&acct.state_file).unwrap().len(),
        1,
        "delivery recorded"
    );
    rerun_and_check(&srv, "retr", &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_never_reaches_the_server() {
    let (srv, root) = setup("qd").await;
    let via = proxy(srv.plain, Cut::QuitDropped).await;
    let acct = srv.account_to(
        "qd",
        Policy::Delete,
        Destination::Maildir(root.clone()),
        via.addr,
    );
    let r = fetch(&acct, &opts()).await;
    assert_eq!(via.cuts(), 1, "the proxy cut the session");
    assert_cut(&r);
    assert_eq!(r.deleted, 0, "deletions are not counted before QUIT's +OK");
    assert_eq!(srv.count(), N as u64);
    assert_eq!(maildir_messages(&root).len(), N);
    // The rerun recognises all of them and only deletes.
    let acct = srv.account_to(
        "qd",
        Policy::Delete,
        Destination::Maildir(root.clone()),
        srv.plain,
    );
    let r = fetch(&acct, &opts()).await;
    assert!(r.is_ok(), "{:?}", r.error);
    assert_eq!(
        (r.fetched, r.already_delivered, r.deleted),
        (0, N as u64, N as u64)
    );
    rerun_and_check(&srv, "qd", &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_reply_lost_after_the_server_committed() {
    let (srv, root) = setup("qf").await;
    let via = proxy(srv.plain, Cut::QuitForwarded).await;
    let acct = srv.account_to(
        "qf",
        Policy::Delete,
        Destination::Maildir(root.clone()),
        via.addr,
    );
    let r = fetch(&acct, &opts()).await;
    assert_eq!(via.cuts(), 1, "the proxy cut the session");
    assert!(
        matches!(
            r.error,
            Some(FetchError::Pop3(Error::Closed | Error::Io(_)))
        ),
        "{:?}",
        r.error
    );
    assert_eq!(srv.count(), 0, "the server did commit");
    assert_eq!(
        State::load(&acct.state_file).unwrap().len(),
        N,
        "client could not know"
    );
    rerun_and_check(&srv, "qf", &root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_after_n_bytes_at_several_points() {
    let (srv, root) = setup("bytes").await;
    // Greeting and CAPA, the login, mid-listing, inside the first
    // message, inside the third; with the messages fetched before each
    // cut (none of them is deleted: no QUIT gets through).
    let msg = message(1).len();
    let cuts = [
        (40, 0),
        (400, 0),
        (700, 0),
        (900 + msg / 2, 0),
        (900 + 2 * msg + msg / 2, 2),
    ];
    let mut fetched_before = 0;
    for (limit, fetched) in cuts {
        let via = proxy(srv.plain, Cut::AfterServerBytes(limit)).await;
        let acct = srv.account_to(
            "bytes",
            Policy::Delete,
            Destination::Maildir(root.clone()),
            via.addr,
        );
        let r = fetch(&acct, &opts()).await;
        eprintln!("cut at {limit}: fetched {} error {:?}", r.fetched, r.error);
        // Every limit lies inside the session: a session that ended by
        // itself would test nothing.
        assert_eq!(via.cuts(), 1, "no cut at {limit}");
        assert_cut(&r);
        assert_eq!(
            r.fetched, fetched,
            "messages fetched before the cut at {limit}"
        );
        fetched_before += r.fetched;
        let have = subjects(&maildir_messages(&root));
        let mut dedup = have.clone();
        dedup.dedup();
        assert_eq!(have, dedup, "no duplicates after a cut at {limit}");
    }
    assert!(
        fetched_before >= 1,
        "some cut should have happened mid-transfer"
    );
    rerun_and_check(&srv, "bytes", &root).await;
}
