//! End-to-end POP3 sessions against the real binary: listing, retrieval,
//! deletion semantics, the maildrop lock and pipelining.

mod common;

use std::collections::HashSet;

use common::*;

const ALICE: &str = "alice@example.test";
const ALICE_PW: &str = "correct horse battery staple";

/// The server's first read of a message is 256 KiB + 1 bytes, later reads
/// 256 KiB (crates/server/src/pop3.rs); the big message puts awkward bytes
/// exactly on those boundaries.
const FIRST_READ: usize = 256 * 1024 + 1;
const NEXT_READ: usize = 256 * 1024;

/// Append CRLF-terminated filler lines (every 13th starting with ".") until
/// `m` is exactly `target` bytes long.
fn pad_to(m: &mut Vec<u8>, target: usize, counter: &mut usize) {
    assert!(m.len() <= target);
    while m.len() < target {
        let d = target - m.len();
        assert_ne!(d, 1, "cannot pad by a single byte");
        let len = if d <= 100 {
            d
        } else if d - 72 >= 2 {
            72
        } else {
            70
        };
        *counter += 1;
        let mut line: Vec<u8> = (0..len - 2)
            .map(|i| b'a' + ((i + *counter) % 26) as u8)
            .collect();
        if counter.is_multiple_of(13) && !line.is_empty() {
            line[0] = b'.';
        }
        m.extend_from_slice(&line);
        m.extend_from_slice(b"\r\n");
    }
}

/// A ~3 MB CRLF message with dot-lines and a CRLF split across the
/// server's read boundaries.
fn big_message() -> Vec<u8> {
    let mut n = 0;
    let mut m =
        b"From: big@example.net\r\nTo: alice@example.test\r\nSubject: big one\r\n\r\n".to_vec();
    // A dot-line starting exactly at the first boundary.
    pad_to(&mut m, FIRST_READ, &mut n);
    m.extend_from_slice(b".dot line at the first read boundary\r\n");
    // CR the last byte of the second read, its LF the first of the third,
    // then a dot-line.
    pad_to(&mut m, FIRST_READ + NEXT_READ - 10, &mut n);
    m.extend_from_slice(b"abcdefghi\r\n");
    assert_eq!(&m[FIRST_READ + NEXT_READ - 1..], b"\r\n");
    m.extend_from_slice(b".after a split CRLF\r\n");
    // A dot-line whose "." is the last byte of the third read.
    pad_to(&mut m, FIRST_READ + 2 * NEXT_READ - 1, &mut n);
    m.extend_from_slice(b".x\r\n");
    pad_to(&mut m, 3 * 1024 * 1024, &mut n);
    m.extend_from_slice(b"the end\r\n");
    m
}

/// Bare LF line ends, dot-lines (including a lone "." in the middle and a
/// final "." without a line end).
fn dotty_message() -> Vec<u8> {
    b"From: dots@example.net\nTo: alice@example.test\nSubject: dots\n\n.leading dot\n..two dots\n.\nmiddle\n...\n.".to_vec()
}

/// The header block of a CRLF message, including the blank line.
fn header_of(m: &[u8]) -> &[u8] {
    let end = m
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("message has a header")
        + 4;
    &m[..end]
}

fn setup(messages: &[Vec<u8>]) -> Env {
    let env = Env::new(BIN, "");
    env.add_user(ALICE, ALICE_PW);
    for m in messages {
        env.deliver(ALICE, m);
    }
    env
}

fn three_small() -> Vec<Vec<u8>> {
    (1..=3)
        .map(|i| simple_message(&format!("message {i}"), &format!("body {i}")))
        .collect()
}

#[test]
fn full_session_list_retr_top_uidl_dele() {
    let msgs = vec![
        simple_message("plain", "Hello, Alice."),
        dotty_message(),
        big_message(),
    ];
    let norm: Vec<Vec<u8>> = msgs.iter().map(|m| crlf_normalize(m)).collect();
    assert_eq!(norm[2], msgs[2], "the big message is CRLF already");
    let total: u64 = norm.iter().map(|m| m.len() as u64).sum();
    let env = setup(&msgs);
    let server = env.start();
    let mut c = server.login(ALICE, ALICE_PW);

    assert_eq!(c.stat(), (3, total));
    let sizes: Vec<u64> = c
        .multi_lines("LIST")
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let (n, size) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("LIST line {l:?}"));
            assert_eq!(n, (i + 1).to_string());
            size.parse().unwrap_or_else(|_| panic!("LIST line {l:?}"))
        })
        .collect();
    assert_eq!(sizes.len(), 3);

    // Which delivered message is message number n (order is the store's).
    let mut order = Vec::new();
    for n in 1..=3 {
        let size = sizes[n - 1];
        assert_eq!(c.cmd(&format!("LIST {n}")), format!("+OK {n} {size}"));
        assert_eq!(c.cmd(&format!("RETR {n}")), format!("+OK {size} octets"));
        let wire = c.read_multiline();
        let content = dot_unstuff(&wire);
        let k = norm.iter().position(|m| *m == content).unwrap_or_else(|| {
            panic!(
                "RETR {n} returned none of the delivered messages ({} bytes)",
                content.len()
            )
        });
        assert_eq!(
            wire,
            dot_stuff(&norm[k]),
            "RETR {n}: wire form must be the dot-stuffed message"
        );
        assert_eq!(size, norm[k].len() as u64, "LIST {n} size is the CRLF size");
        order.push(k);
    }
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![0, 1, 2], "each message listed once");
    // The dotty message really is stuffed on the wire.
    let dotty_wire = dot_stuff(&norm[1]);
    assert!(dotty_wire.windows(6).any(|w| w == b"\r\n..\r\n"));

    for n in 1..=3 {
        let (status, body) = c.cmd_multi(&format!("TOP {n} 0"));
        assert!(status.starts_with("+OK"), "TOP {n} 0: {status:?}");
        let header = header_of(&norm[order[n - 1]]);
        assert_eq!(
            body,
            dot_stuff(header),
            "TOP {n} 0 is the header and the blank line"
        );
    }

    let uids = c.uidl();
    assert_eq!(uids.len(), 3);
    assert_eq!(
        uids.iter().collect::<HashSet<_>>().len(),
        3,
        "distinct UIDs: {uids:?}"
    );
    for (i, uid) in uids.iter().enumerate() {
        assert_eq!(
            c.cmd(&format!("UIDL {}", i + 1)),
            format!("+OK {} {uid}", i + 1)
        );
        assert!(uid.bytes().all(|b| (0x21..=0x7e).contains(&b)) && (1..=70).contains(&uid.len()));
    }

    assert!(c.cmd("DELE 1").starts_with("+OK"));
    assert!(
        c.cmd("RETR 1").starts_with("-ERR"),
        "a deleted message is gone for the session"
    );
    assert_eq!(c.stat(), (2, total - norm[order[0]].len() as u64));
    assert_eq!(c.cmd("QUIT"), "+OK Logging out, messages deleted.");
    drop(c);

    let mut c = server.login(ALICE, ALICE_PW);
    assert_eq!(c.stat(), (2, total - norm[order[0]].len() as u64));
    assert_eq!(
        c.uidl(),
        uids[1..].to_vec(),
        "the remaining messages keep their UIDs"
    );
    for n in 1..=2 {
        let (status, body) = c.cmd_multi(&format!("RETR {n}"));
        assert!(status.starts_with("+OK"));
        assert_eq!(dot_unstuff(&body), norm[order[n]]);
    }
    c.quit();
}

#[test]
fn dropped_connection_deletes_nothing() {
    let msgs = three_small();
    let total: u64 = msgs.iter().map(|m| m.len() as u64).sum();
    let env = setup(&msgs);
    let server = env.start();
    let mut c = server.login(ALICE, ALICE_PW);
    assert_eq!(c.stat(), (3, total));
    let uids = c.uidl();
    for n in 1..=3 {
        assert_eq!(
            c.cmd(&format!("DELE {n}")),
            format!("+OK Message {n} deleted.")
        );
    }
    assert_eq!(c.stat(), (0, 0));
    drop(c); // no QUIT

    // Succeeds only once the server has ended the dropped session.
    let mut c = server.login_when_free(ALICE, ALICE_PW);
    assert_eq!(c.stat(), (3, total));
    assert_eq!(c.uidl(), uids);
    c.quit();
}

#[test]
fn rset_then_quit_deletes_nothing() {
    let msgs = three_small();
    let total: u64 = msgs.iter().map(|m| m.len() as u64).sum();
    let env = setup(&msgs);
    let server = env.start();
    let mut c = server.login(ALICE, ALICE_PW);
    let uids = c.uidl();
    for n in 1..=3 {
        assert!(c.cmd(&format!("DELE {n}")).starts_with("+OK"));
    }
    assert!(
        c.cmd("DELE 2").starts_with("-ERR"),
        "deleting twice is an error"
    );
    assert_eq!(
        c.cmd("RSET"),
        format!("+OK Maildrop has 3 messages ({total} octets).")
    );
    assert_eq!(c.stat(), (3, total));
    c.quit();
    drop(c);

    let mut c = server.login(ALICE, ALICE_PW);
    assert_eq!(c.stat(), (3, total));
    assert_eq!(c.uidl(), uids);
    c.quit();
}

#[test]
fn maildrop_lock_is_exclusive() {
    let env = setup(&three_small());
    let server = env.start();
    let mut a = server.login(ALICE, ALICE_PW);
    let mut b = server.connect();
    let reply = b.login(ALICE, ALICE_PW);
    assert!(
        reply.starts_with("-ERR [IN-USE]"),
        "second session: {reply:?}"
    );
    // A is undisturbed.
    assert_eq!(a.stat().0, 3);
    a.quit();
    // The lock is released before the QUIT reply is sent.
    let reply = b.login(ALICE, ALICE_PW);
    assert!(reply.starts_with("+OK"), "after A quit: {reply:?}");
    assert_eq!(b.stat().0, 3);
    b.quit();
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let msgs = vec![simple_message("one", "first"), dotty_message()];
    let env = setup(&msgs);
    let server = env.start();
    let mut c = server.login(ALICE, ALICE_PW);

    // Reference answers, one command at a time.
    let queries = [
        "NOOP", "STAT", "LIST 1", "UIDL 1", "LIST 2", "UIDL 2", "LIST", "UIDL", "TOP 2 0",
        "RETR 2", "CAPA",
    ];
    let multi = |q: &str| {
        matches!(q, "LIST" | "UIDL" | "CAPA") || q.starts_with("TOP") || q.starts_with("RETR")
    };
    let mut expected: Vec<(String, Vec<u8>)> = Vec::new();
    for q in queries {
        if multi(q) {
            let (status, body) = c.cmd_multi(q);
            assert!(status.starts_with("+OK"), "{q}: {status:?}");
            expected.push((status, body));
        } else {
            let status = c.cmd(q);
            assert!(status.starts_with("+OK"), "{q}: {status:?}");
            expected.push((status, Vec::new()));
        }
    }
    // Single-line replies must differ, so a reordering cannot go unnoticed.
    let singles: HashSet<_> = expected
        .iter()
        .filter(|(_, b)| b.is_empty())
        .map(|(s, _)| s)
        .collect();
    assert_eq!(singles.len(), queries.iter().filter(|q| !multi(q)).count());

    // 200 commands in one write.
    let plan: Vec<usize> = (0..200).map(|i| (i * 7 + i / 11) % queries.len()).collect();
    let mut burst = String::new();
    for &k in &plan {
        burst.push_str(queries[k]);
        burst.push_str("\r\n");
    }
    c.send_raw(burst.as_bytes());
    for (i, &k) in plan.iter().enumerate() {
        let status = c.read_line();
        assert_eq!(status, expected[k].0, "reply {i} (to {})", queries[k]);
        if multi(queries[k]) {
            assert_eq!(
                c.read_multiline(),
                expected[k].1,
                "reply {i} (to {})",
                queries[k]
            );
        }
    }

    // 1,000 in one write, all answered.
    let list1 = &expected[2].0;
    c.send_raw("LIST 1\r\n".repeat(1000).as_bytes());
    for i in 0..1000 {
        assert_eq!(&c.read_line(), list1, "reply {i} of 1000");
    }
    assert_eq!(c.cmd("NOOP"), "+OK", "nothing extra was sent");
    assert!(c.buffered().is_empty());
    c.quit();
}
