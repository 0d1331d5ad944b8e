//! Hostile servers: endless listings, a message far larger than LIST said,
//! a server trickling one byte a second. The client must stop with an
//! error naming the server and the limit, in bounded memory and time,
//! having deleted nothing and recorded nothing it did not deliver.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postoffice_fetch::error::Limit;
use postoffice_fetch::state::State;
use postoffice_fetch::{Account, Destination, Error, FetchError, Secret, TlsMode, fetch_account};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::child::{FetchChild, write_config};
use crate::common::*;

/// What the hostile server answers to one command.
enum Answer {
    /// These bytes.
    Text(String),
    /// `head`, then `line` over and over for `bytes` bytes (rounded down
    /// to whole lines; forever if `None`), then `tail`.
    Stream {
        head: String,
        line: String,
        bytes: Option<u64>,
        tail: String,
    },
    /// `head`, then one byte every `every`, forever.
    Trickle { head: String, every: Duration },
}

fn text(s: &str) -> Answer {
    Answer::Text(s.to_string())
}

/// A POP3 server for one connection that answers as `answer` says; the
/// commands it received are in the returned list.
async fn hostile_server<F>(mut answer: F) -> (SocketAddr, Arc<Mutex<Vec<String>>>)
where
    F: FnMut(&str) -> Answer + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    tokio::spawn(async move {
        let Ok((sock, _)) = l.accept().await else {
            return;
        };
        let (r, mut w) = sock.into_split();
        let mut r = BufReader::new(r);
        if w.write_all(b"+OK hostile\r\n").await.is_err() {
            return;
        }
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let cmd = line.trim_end().to_string();
            seen2.lock().unwrap().push(cmd.clone());
            let ok = match answer(&cmd) {
                Answer::Text(t) => w.write_all(t.as_bytes()).await.is_ok(),
                Answer::Stream {
                    head,
                    line,
                    bytes,
                    tail,
                } => {
                    // Whole lines, about a quarter MiB per write.
                    let per_chunk = (256 * 1024 / line.len()).max(1) as u64;
                    let chunk = line.repeat(per_chunk as usize);
                    let mut lines = bytes.map_or(u64::MAX, |b| b / line.len() as u64);
                    let mut ok = w.write_all(head.as_bytes()).await.is_ok();
                    while ok && lines > 0 {
                        let n = per_chunk.min(lines);
                        let end = n as usize * line.len();
                        ok = w.write_all(&chunk.as_bytes()[..end]).await.is_ok();
                        lines -= n;
                    }
                    ok && w.write_all(tail.as_bytes()).await.is_ok()
                }
                Answer::Trickle { head, every } => {
                    let mut ok = w.write_all(head.as_bytes()).await.is_ok();
                    while ok {
                        ok = w.write_all(b"a").await.is_ok();
                        tokio::time::sleep(every).await;
                    }
                    false
                }
            };
            if !ok {
                return;
            }
        }
    });
    (addr, seen)
}

const CAPA: &str = "+OK\r\nUSER\r\nUIDL\r\nTOP\r\n.\r\n";

/// A normal server's answers, for the commands a test does not script.
fn usual(cmd: &str) -> Answer {
    match cmd {
        "CAPA" => text(CAPA),
        "LIST" => text("+OK\r\n1 100\r\n.\r\n"),
        "UIDL" => text("+OK\r\n1 uid-1\r\n.\r\n"),
        "QUIT" => text("+OK bye\r\n"),
        c if c.starts_with("USER") || c.starts_with("PASS") || c.starts_with("DELE") => {
            text("+OK\r\n")
        }
        _ => text("-ERR what\r\n"),
    }
}

fn account(dir: &std::path::Path, addr: SocketAddr) -> Account {
    let mut a = Account::new(
        "hostile",
        "127.0.0.1",
        "u",
        Secret::new("p"),
        Destination::Maildir(dir.join("md")),
        dir.join("hostile.state"),
    );
    a.tls = TlsMode::None;
    a.port = addr.port();
    a.timeout = Duration::from_secs(20);
    a
}

fn file_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Nothing delivered, nothing recorded, nothing deleted, no QUIT.
fn assert_nothing_happened(dir: &std::path::Path, seen: &[String]) {
    let md = dir.join("md");
    assert_eq!(file_count(&md.join("new")), 0, "nothing delivered");
    assert_eq!(file_count(&md.join("tmp")), 0, "no partial file left");
    let state = State::load(&dir.join("hostile.state")).unwrap();
    assert!(state.is_empty(), "nothing recorded");
    assert_eq!(state.pending("uid-1"), None, "no delivery begun");
    assert!(
        !seen.iter().any(|c| c.starts_with("DELE") || c == "QUIT"),
        "no DELE or QUIT: {seen:?}"
    );
}

/// Peak memory a run may add while refusing a hostile server.
const MAX_GROWTH_KB: u64 = 64 * 1024;
/// Beyond this the child is killed: the limit did not work.
const RUNAWAY_KB: u64 = 512 * 1024;

/// An endless listing reply, in a `postoffice fetch` child: it must stop
/// at max_listing_bytes with an error naming the server, in bounded
/// memory (before the budget the client kept up to ten million lines of
/// up to 4 KiB).
async fn endless_listing(command: &'static str, line: &'static str) -> (String, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let (addr, seen) = hostile_server(move |cmd| {
        if cmd == command {
            Answer::Stream {
                head: "+OK here it comes\r\n".into(),
                line: line.into(),
                bytes: None,
                tail: String::new(),
            }
        } else {
            usual(cmd)
        }
    })
    .await;
    let config = write_config(
        dir.path(),
        "hostile",
        addr.port(),
        "u",
        "p",
        "delete",
        "maildir = \"md\"",
    );
    let mut child = FetchChild::spawn(&config, dir.path());
    let end = child.wait(Duration::from_secs(120), RUNAWAY_KB).await;
    assert_eq!(end.status.code(), Some(1), "{}", end.stderr);
    let want = format!(
        "127.0.0.1: its reply to {command} is larger than 16777216 bytes (max_listing_bytes)"
    );
    assert!(
        end.stderr.contains(&want),
        "{want:?} not in:\n{}",
        end.stderr
    );
    let growth = end.hwm_growth_kb.expect("the child reports its memory");
    assert!(
        growth < MAX_GROWTH_KB,
        "peak memory grew by {growth} kB refusing an endless {command}"
    );
    let seen = seen.lock().unwrap().clone();
    assert_nothing_happened(dir.path(), &seen);
    (end.stderr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_uidl_stops_at_the_listing_budget_in_bounded_memory() {
    // Valid UIDL lines, 70-character unique-ids.
    let line = "1 UUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUUU\r\n";
    let (_, seen) = endless_listing("UIDL", line).await;
    assert!(!seen.iter().any(|c| c.starts_with("RETR")), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_capa_stops_at_the_listing_budget_in_bounded_memory() {
    // Capabilities the client does not know, which it keeps.
    let line = "X-HOSTILE-CAPABILITY-THAT-NOBODY-KNOWS-ABOUT-AND-IT-NEVER-ENDS\r\n";
    let (_, seen) = endless_listing("CAPA", line).await;
    assert_eq!(seen, ["CAPA"], "stopped before logging in");
}

#[tokio::test]
async fn a_message_far_larger_than_listed_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    // LIST says 100 bytes; RETR sends 16 MiB (then ends properly).
    let (addr, seen) = hostile_server(|cmd| match cmd {
        "RETR 1" => Answer::Stream {
            head: "+OK\r\nSubject: big\r\n\r\n".into(),
            line: "a line of a message that is much larger than LIST said\r\n".into(),
            bytes: Some(16 << 20),
            tail: ".\r\n".into(),
        },
        c => usual(c),
    })
    .await;
    let r = fetch_account(&account(dir.path(), addr), &opts()).await;
    let Some(FetchError::Pop3(e)) = &r.error else {
        panic!("{:?}", r.error)
    };
    match e {
        Error::LimitExceeded {
            server,
            limit:
                Limit::MessageBytes {
                    number: 1,
                    listed: Some(100),
                    limit,
                    absolute: false,
                },
        } => {
            assert_eq!(server, "127.0.0.1");
            assert_eq!(*limit, 4 * 100 + (1 << 20));
        }
        other => panic!("{other:?}"),
    }
    let shown = e.to_string();
    for needle in [
        "127.0.0.1",
        "message 1",
        "LIST announced 100",
        "listed_size_factor",
    ] {
        assert!(shown.contains(needle), "{needle:?} not in {shown:?}");
    }
    assert!(!e.is_temporary());
    assert_eq!((r.fetched, r.deleted), (0, 0));
    assert_nothing_happened(dir.path(), &seen.lock().unwrap());
}

#[tokio::test]
async fn a_message_somewhat_larger_than_listed_is_fine() {
    // Servers that count bare LF line ends announce up to half the size.
    let dir = tempfile::tempdir().unwrap();
    let (addr, _) = hostile_server(|cmd| match cmd {
        "LIST" => text("+OK\r\n1 20\r\n.\r\n"),
        "RETR 1" => Answer::Stream {
            head: "+OK\r\n".into(),
            line: "\r\n".into(),
            bytes: Some(40),
            tail: ".\r\n".into(),
        },
        c => usual(c),
    })
    .await;
    let r = fetch_account(&account(dir.path(), addr), &opts()).await;
    assert!(r.is_ok(), "{:?}", r.error);
    assert_eq!((r.fetched, r.fetched_bytes, r.deleted), (1, 40, 1));
}

#[tokio::test]
async fn a_trickling_server_hits_the_session_deadline() {
    let dir = tempfile::tempdir().unwrap();
    // One byte a second, each well within the 20 s read timeout.
    let (addr, seen) = hostile_server(|cmd| match cmd {
        "RETR 1" => Answer::Trickle {
            head: "+OK\r\n".into(),
            every: Duration::from_secs(1),
        },
        c => usual(c),
    })
    .await;
    let mut acct = account(dir.path(), addr);
    acct.session_timeout = Duration::from_secs(2);
    let r = tokio::time::timeout(Duration::from_secs(60), fetch_account(&acct, &opts()))
        .await
        .expect("the session deadline did not end the run");
    let Some(FetchError::Pop3(e)) = &r.error else {
        panic!("{:?}", r.error)
    };
    assert!(
        matches!(
            e,
            Error::LimitExceeded {
                limit: Limit::SessionDeadline(d),
                ..
            } if *d == Duration::from_secs(2)
        ),
        "{e:?}"
    );
    let shown = e.to_string();
    for needle in ["127.0.0.1", "2 s", "session_timeout_secs"] {
        assert!(shown.contains(needle), "{needle:?} not in {shown:?}");
    }
    assert!(e.is_temporary(), "a slow link may do better next time");
    assert_eq!(r.fetched, 0);
    assert_nothing_happened(dir.path(), &seen.lock().unwrap());
}
