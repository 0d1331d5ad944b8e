//! Maildir, mbox and command destinations.

use postoffice_fetch::{Destination, Policy};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maildir_gets_exact_content_with_lf_line_ends() {
    let srv = TestServer::start().await;
    srv.deliver(&message(1));
    srv.deliver(&message(2));
    let root = srv.path().join("deep/er/Maildir");
    let acct = srv.account_to(
        "md",
        Policy::Delete,
        Destination::Maildir(root.clone()),
        srv.plain,
    );
    let r = fetch(&acct, &opts()).await;
    assert!(r.is_ok(), "{:?}", r.error);
    let got = maildir_messages(&root);
    assert_eq!(got.len(), 2);
    let mut want = vec![message_lf(1), message_lf(2)];
    want.sort();
    assert_eq!(got, want, "dot-unstuffed, CRLF -> LF, byte for byte");
    assert!(root.join("cur").is_dir());
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    assert_eq!(srv.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mbox_is_mboxrd_with_from_lines_and_no_crlf() {
    let srv = TestServer::start().await;
    for i in 1..=3 {
        srv.deliver(&message(i));
    }
    let mbox = srv.path().join("mail/inbox.mbox");
    let acct = srv.account_to(
        "mb",
        Policy::Delete,
        Destination::Mbox(mbox.clone()),
        srv.plain,
    );
    let r = fetch(&acct, &opts()).await;
    assert!(r.is_ok(), "{:?}", r.error);
    assert_eq!(srv.count(), 0);
    let text = std::fs::read_to_string(&mbox).unwrap();
    assert!(!text.contains('\r'), "no CR may remain");
    let from_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("From ")).collect();
    assert_eq!(from_lines.len(), 3, "one From_ line per message:\n{text}");
    for l in &from_lines {
        assert!(l.starts_with("From MAILER-DAEMON "), "{l}");
        // asctime: "Thu Jan  1 00:00:00 1970" is 24 characters.
        assert_eq!(l.len(), "From MAILER-DAEMON ".len() + 24, "{l}");
    }
    assert_eq!(text.lines().filter(|l| *l == ">From here").count(), 3);
    assert!(text.starts_with("From MAILER-DAEMON "));
    // Each message is followed by a blank line, so every From_ line but
    // the first comes right after an empty line.
    assert_eq!(text.matches("\n\nFrom MAILER-DAEMON ").count(), 2);
    assert!(text.ends_with("end\n\n"));
    assert!(text.contains("\n.leading dot\n..two dots\n"));
    assert!(
        !mbox.with_extension("mbox.lock").exists(),
        "dotlock removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_destination_delivers_on_exit_zero() {
    let srv = TestServer::start().await;
    srv.deliver(&message(1));
    srv.deliver(&message(2));
    let out = srv.path().join("cmd-out");
    std::fs::create_dir_all(&out).unwrap();
    let cmd = format!("sh -c 'cat > \"{}/$(date +%s%N)\"'", out.display());
    let acct = srv.account_to("cmd", Policy::Delete, Destination::Command(cmd), srv.plain);
    let r = fetch(&acct, &opts()).await;
    assert!(r.is_ok(), "{:?}", r.error);
    assert_eq!((r.fetched, r.deleted), (2, 2));
    let mut got: Vec<Vec<u8>> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    got.sort();
    let mut want = vec![message_lf(1), message_lf(2)];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(srv.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_command_deletes_nothing() {
    let srv = TestServer::start().await;
    srv.deliver(&message(1));
    srv.deliver(&message(2));
    let acct = srv.account_to(
        "fail",
        Policy::Delete,
        Destination::Command("false".into()),
        srv.plain,
    );
    let r = fetch(&acct, &opts()).await;
    assert!(r.error.is_none(), "{:?}", r.error);
    assert!(!r.is_ok());
    assert_eq!((r.fetched, r.failed, r.deleted, r.kept), (0, 2, 0, 2));
    assert!(r.summary().contains("2 failed"), "{}", r.summary());
    assert_eq!(srv.count(), 2, "nothing may be deleted");
    assert_eq!(postoffice_fetch::cli::exit_status(&[r]), 1);
    // The command said no: the next run must not hand the messages over
    // as possible repeats.
    let state = std::fs::read_to_string(&acct.state_file).unwrap();
    assert!(
        !state.lines().any(|l| l.starts_with("? ")),
        "no delivery left pending:\n{state}"
    );
}
