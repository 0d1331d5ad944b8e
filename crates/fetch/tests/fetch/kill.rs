//! `postoffice fetch` killed (SIGKILL) after a message reached the
//! destination and before its UIDL was recorded: the next run must neither
//! lose it nor deliver it twice (for a command, which cannot be asked,
//! hand it over again marked as a possible repeat).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use postoffice_fetch::FetchConfig;
use postoffice_fetch::state::State;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::child::{FetchChild, write_config};
use crate::common::*;

/// A loopback forwarder to `target` that stops passing the client's
/// commands on at its second RETR (so the first message was delivered
/// whole, and the client waits for the second), and then notifies.
async fn stall_at_second_retr(target: SocketAddr) -> (SocketAddr, Arc<Notify>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let stalled = Arc::new(Notify::new());
    let notify = Arc::clone(&stalled);
    tokio::spawn(async move {
        let Ok((mut c, _)) = l.accept().await else {
            return;
        };
        let Ok(mut s) = TcpStream::connect(target).await else {
            return;
        };
        let mut cb = vec![0u8; 8192];
        let mut sb = vec![0u8; 65536];
        let mut pending: Vec<u8> = Vec::new();
        let mut retrs = 0;
        let mut stalling = false;
        loop {
            tokio::select! {
                r = c.read(&mut cb) => {
                    let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                    if stalling {
                        continue;
                    }
                    pending.extend_from_slice(&cb[..n]);
                    let mut forward = Vec::new();
                    while let Some(p) = pending.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=p).collect();
                        if line.to_ascii_uppercase().starts_with(b"RETR") {
                            retrs += 1;
                            if retrs == 2 {
                                stalling = true;
                                notify.notify_one();
                                break;
                            }
                        }
                        forward.extend_from_slice(&line);
                    }
                    if s.write_all(&forward).await.is_err() { return; }
                }
                r = s.read(&mut sb) => {
                    let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                    if c.write_all(&sb[..n]).await.is_err() { return; }
                }
            }
        }
    });
    (addr, stalled)
}

/// Run `postoffice fetch` for the account in `config` as a child, SIGKILL
/// it when `at` is notified.
async fn run_and_kill_at(config: &Path, dir: &Path, at: Arc<Notify>) {
    let mut child = FetchChild::spawn(config, dir);
    if tokio::time::timeout(Duration::from_secs(60), at.notified())
        .await
        .is_err()
    {
        let e = child.stderr_text();
        child.kill();
        panic!("the fetch child never got to the kill point:\n{e}");
    }
    let status = child.kill();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "killed by SIGKILL, not ended by itself:\n{}",
        child.stderr_text()
    );
}

/// The state file's intent lines (`? <uid> <receipt>`) and delivered
/// lines.
fn state_lines(path: &Path) -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap();
    let lines = text.lines().filter(|l| !l.starts_with('#'));
    let (intents, records): (Vec<&str>, Vec<&str>) = lines.partition(|l| l.starts_with("? "));
    (
        intents.into_iter().map(str::to_string).collect(),
        records.into_iter().map(str::to_string).collect(),
    )
}

/// The rerun: same accounts file, in this process, straight to the server.
async fn rerun(srv: &TestServer, config: &Path) -> postoffice_fetch::AccountReport {
    let text = std::fs::read_to_string(config).unwrap();
    let text = text.replace(
        &format!("port = {}", port_in(&text)),
        &format!("port = {}", srv.plain.port()),
    );
    std::fs::write(config, text).unwrap();
    let cfg = FetchConfig::load(config).unwrap();
    let r = fetch(&cfg.accounts[0], &opts()).await;
    assert!(r.is_ok(), "rerun: {:?} {}", r.error, r.summary());
    r
}

fn port_in(config: &str) -> u16 {
    config
        .lines()
        .find_map(|l| l.strip_prefix("port = "))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_a_maildir_delivery_the_next_run_finds_it() {
    let srv = TestServer::start().await;
    srv.deliver(&message(1));
    srv.deliver(&message(2));
    let (via, stalled) = stall_at_second_retr(srv.plain).await;
    let config = write_config(
        srv.path(),
        "kill-md",
        via.port(),
        USER,
        PW,
        "delete",
        "maildir = \"kill-md-maildir\"",
    );
    let root = srv.path().join("kill-md-maildir");
    run_and_kill_at(&config, srv.path(), stalled).await;

    // Where the kill landed: message 1 is in the Maildir, and the state
    // file announces that delivery (naming the very file) but does not
    // record it.
    let new: Vec<String> = std::fs::read_dir(root.join("new"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(new.len(), 1);
    assert_eq!(subjects(&maildir_messages(&root)), [1]);
    let state_file = srv.path().join("kill-md.state");
    let (intents, records) = state_lines(&state_file);
    assert!(records.is_empty(), "{records:?}");
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert!(
        intents[0].ends_with(&format!(" maildir {}", new[0])),
        "{intents:?} vs {new:?}"
    );
    assert_eq!(srv.count(), 2, "nothing deleted");

    let r = rerun(&srv, &config).await;
    assert_eq!(
        (r.recovered, r.fetched, r.already_delivered, r.deleted),
        (1, 1, 0, 2),
        "{}",
        r.summary()
    );
    assert_eq!(
        subjects(&maildir_messages(&root)),
        [1, 2],
        "each message exactly once"
    );
    assert_eq!(srv.count(), 0);
    let state = State::load(&state_file).unwrap();
    assert!(state.is_empty(), "pruned after the deletions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_an_mbox_delivery_the_next_run_finds_it() {
    let srv = TestServer::start().await;
    srv.deliver(&message(1));
    srv.deliver(&message(2));
    let (via, stalled) = stall_at_second_retr(srv.plain).await;
    let config = write_config(
        srv.path(),
        "kill-mb",
        via.port(),
        USER,
        PW,
        "keep",
        "mbox = \"inbox.mbox\"",
    );
    let mbox = srv.path().join("inbox.mbox");
    run_and_kill_at(&config, srv.path(), stalled).await;

    let from_lines = |text: &str| text.lines().filter(|l| l.starts_with("From ")).count();
    let text = std::fs::read_to_string(&mbox).unwrap();
    assert_eq!(from_lines(&text), 1, "{text}");
    assert!(text.contains("Subject: test 1\n"));
    let (intents, records) = state_lines(&srv.path().join("kill-mb.state"));
    assert!(records.is_empty(), "{records:?}");
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert!(intents[0].contains(" mbox "), "{intents:?}");

    // The killed run held the mbox's dotlock (it had begun message 2): a
    // lock whose process is gone does not block the rerun.
    let r = rerun(&srv, &config).await;
    assert_eq!(
        (r.recovered, r.fetched, r.deleted),
        (1, 1, 0),
        "{}",
        r.summary()
    );
    let text = std::fs::read_to_string(&mbox).unwrap();
    assert_eq!(from_lines(&text), 2, "each message exactly once:\n{text}");
    assert!(text.contains("Subject: test 1\n") && text.contains("Subject: test 2\n"));
    assert!(!srv.path().join("inbox.mbox.lock").exists());
    // keep: a third run fetches nothing.
    let r = rerun(&srv, &config).await;
    assert_eq!((r.fetched, r.already_delivered), (0, 2));
    assert_eq!(srv.count(), 2);
}

/// The MDA of the command test: stores each message in `out/msgs/`, logs
/// `<uidl> <repeat>` per call in `out/log`, skips a message marked as a
/// repeat whose UIDL it stored before, and, while `out/block-once` exists,
/// blocks after storing (writing its pid to `out/blocked`).
const MDA: &str = r#"#!/bin/sh
out=$1
uid=${POSTOFFICE_FETCH_UIDL:-none}
repeat=${POSTOFFICE_FETCH_REPEAT:-0}
echo "$uid $repeat" >> "$out/log"
if [ "$repeat" = 1 ] && grep -qxF "$uid" "$out/stored" 2>/dev/null; then
    cat > /dev/null
    exit 0
fi
cat > "$out/tmp.$$" || exit 75
mv "$out/tmp.$$" "$out/msgs/$$"
echo "$uid" >> "$out/stored"
if [ -e "$out/block-once" ]; then
    rm "$out/block-once"
    echo $$ > "$out/blocked.tmp" && mv "$out/blocked.tmp" "$out/blocked"
    exec sleep 600
fi
exit 0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_the_command_holds_a_delivered_message_it_is_told_of_the_repeat() {
    let srv = TestServer::start().await;
    srv.deliver(&message(1));
    srv.deliver(&message(2));
    let out = srv.path().join("mda");
    std::fs::create_dir_all(out.join("msgs")).unwrap();
    std::fs::write(out.join("block-once"), "").unwrap();
    let script = srv.path().join("mda.sh");
    std::fs::write(&script, MDA).unwrap();
    let config = write_config(
        srv.path(),
        "kill-cmd",
        srv.plain.port(),
        USER,
        PW,
        "delete",
        &format!(
            "command = \"sh '{}' '{}'\"",
            script.display(),
            out.display()
        ),
    );
    // The MDA has stored message 1 and blocks before exiting: fetch waits
    // for its exit status and has not recorded the UIDL. Kill it there.
    let mut child = FetchChild::spawn(&config, srv.path());
    let blocked = out.join("blocked");
    for _ in 0..3000 {
        if blocked.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        blocked.exists(),
        "the MDA never blocked:\n{}",
        child.stderr_text()
    );
    let status = child.kill();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    let mda_pid = std::fs::read_to_string(&blocked).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", mda_pid.trim()])
        .status();
    let stored = |out: &Path| std::fs::read_dir(out.join("msgs")).unwrap().count();
    assert_eq!(stored(&out), 1);
    let (_, records) = state_lines(&srv.path().join("kill-cmd.state"));
    assert!(records.is_empty(), "killed before the record: {records:?}");
    let first_uid = std::fs::read_to_string(out.join("log")).unwrap();
    let first_uid = first_uid.split_whitespace().next().unwrap().to_string();
    assert_ne!(first_uid, "none", "the command gets the UIDL");

    let r = rerun(&srv, &config).await;
    assert_eq!((r.fetched, r.deleted), (2, 2), "{}", r.summary());
    let log = std::fs::read_to_string(out.join("log")).unwrap();
    let calls: Vec<&str> = log.lines().collect();
    assert_eq!(calls.len(), 3, "{log}");
    assert_eq!(calls[0], format!("{first_uid} 0"));
    assert_eq!(
        calls[1],
        format!("{first_uid} 1"),
        "the interrupted message comes again, marked as a possible repeat"
    );
    assert!(
        calls[2].ends_with(" 0") && !calls[2].starts_with(&first_uid),
        "{log}"
    );
    // So an MDA that keeps track stores each message exactly once.
    let mut msgs: Vec<Vec<u8>> = std::fs::read_dir(out.join("msgs"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    msgs.sort();
    assert_eq!(subjects(&msgs), [1, 2], "each message exactly once");
    assert_eq!(srv.count(), 0);
    assert!(
        State::load(&srv.path().join("kill-cmd.state"))
            .unwrap()
            .is_empty()
    );
}
