//! Behavioural tests of the Maildir backend through the public traits.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Cursor, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::crlf::CHUNK;
use crate::index::INDEX_FILE;
use crate::maildir::LOCK_FILE;
use crate::{MailStore, Maildir, Maildrop, StoreError};

const BOX: &str = "alice@example.test";

fn store() -> (tempfile::TempDir, Maildir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Maildir::new(dir.path().join("mail"), "mx.example.test");
    (dir, store)
}

fn deliver(store: &Maildir, data: &[u8]) -> crate::Delivered {
    store.deliver(BOX, &mut Cursor::new(data)).unwrap()
}

fn open(store: &Maildir) -> Box<dyn Maildrop> {
    match store.open(BOX) {
        Ok(d) => d,
        Err(e) => panic!("open failed: {e}"),
    }
}

fn read_all(md: &dyn Maildrop, index: usize) -> Vec<u8> {
    let mut out = Vec::new();
    md.open_message(index)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn maildir(store: &Maildir) -> PathBuf {
    store.path_of(BOX).unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Writes a message file as another Maildir agent would.
fn put(store: &Maildir, sub: &str, name: &str, content: &[u8]) {
    let dir = maildir(store).join(sub);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), content).unwrap();
}

#[test]
fn deliver_and_read_back() {
    let (_tmp, store) = store();
    let d = deliver(&store, b"Subject: hi\n\nbody\r\nno final newline");
    let want = b"Subject: hi\r\n\r\nbody\r\nno final newline\r\n";
    assert_eq!(d.size, want.len() as u64);

    let md = open(&store);
    assert_eq!(md.messages().len(), 1);
    let info = &md.messages()[0];
    assert_eq!(info.uid, d.uid);
    assert_eq!(info.size, d.size);
    let got = read_all(&*md, 0);
    assert_eq!(got, want);
    assert_eq!(got.len() as u64, info.size);

    // The stored file itself is CRLF with S= and W= carrying the size.
    let new = files_in(&maildir(&store).join("new"));
    assert_eq!(new, [format!("{},S={},W={}", d.uid, d.size, d.size)]);
    assert_eq!(
        fs::read(maildir(&store).join("new").join(&new[0])).unwrap(),
        want
    );
    assert!(files_in(&maildir(&store).join("tmp")).is_empty());
}

#[test]
fn deliver_handles_cr_at_the_chunk_boundary() {
    let (_tmp, store) = store();
    let mut input = vec![b'x'; 3 * CHUNK + 10];
    for i in (80..input.len()).step_by(81) {
        input[i] = b'\n';
    }
    // CRLF split exactly across the first read boundary...
    input[CHUNK - 1] = b'\r';
    input[CHUNK] = b'\n';
    // ...and a lone CR at the second one.
    input[2 * CHUNK - 1] = b'\r';
    input[2 * CHUNK] = b'y';
    let last = input.len() - 1;
    input[last] = b'z';

    let mut want = Vec::new();
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\r' if input.get(i + 1) == Some(&b'\n') => {
                want.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\n' => want.extend_from_slice(b"\r\n"),
            b => want.push(b),
        }
        i += 1;
    }
    want.extend_from_slice(b"\r\n");

    let d = deliver(&store, &input);
    assert_eq!(d.size, want.len() as u64);
    let md = open(&store);
    assert_eq!(md.messages()[0].size, want.len() as u64);
    let got = read_all(&*md, 0);
    assert!(got == want, "content differs");
}

#[test]
fn final_crlf_is_added_once() {
    let (_tmp, store) = store();
    deliver(&store, b"a");
    deliver(&store, b"b\n");
    deliver(&store, b"c\r\n");
    deliver(&store, b"d\r");
    let md = open(&store);
    let bodies: Vec<Vec<u8>> = (0..4).map(|i| read_all(&*md, i)).collect();
    let mut sorted = bodies.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            b"a\r\n".to_vec(),
            b"b\r\n".to_vec(),
            b"c\r\n".to_vec(),
            b"d\r\r\n".to_vec()
        ]
    );
    for (i, body) in bodies.iter().enumerate() {
        assert_eq!(md.messages()[i].size, body.len() as u64);
    }
}

#[test]
fn empty_delivery_is_refused_and_leaves_nothing() {
    let (_tmp, store) = store();
    let err = store.deliver(BOX, &mut io::empty()).unwrap_err();
    assert!(matches!(err, StoreError::EmptyMessage), "{err}");
    assert!(files_in(&maildir(&store).join("tmp")).is_empty());
    assert!(files_in(&maildir(&store).join("new")).is_empty());
}

#[test]
fn failed_input_leaves_no_tmp_file() {
    struct Broken(usize);
    impl Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, "gone"));
            }
            self.0 -= 1;
            buf[0] = b'x';
            Ok(1)
        }
    }
    let (_tmp, store) = store();
    let err = store.deliver(BOX, &mut Broken(10)).unwrap_err();
    assert!(matches!(err, StoreError::MessageRead(_)), "{err}");
    assert!(files_in(&maildir(&store).join("tmp")).is_empty());
    assert!(files_in(&maildir(&store).join("new")).is_empty());
}

#[test]
fn uid_is_stable_across_reopen_and_moves() {
    let (_tmp, store) = store();
    let d1 = deliver(&store, b"one\n");
    let d2 = deliver(&store, b"two\n");
    let first: Vec<String> = open(&store)
        .messages()
        .iter()
        .map(|m| m.uid.to_string())
        .collect();
    let mut expected = vec![d1.uid.clone(), d2.uid.clone()];
    expected.sort();
    let mut sorted_first = first.clone();
    sorted_first.sort();
    assert_eq!(sorted_first, expected);

    // A mail client marks the first as seen: new/ -> cur/ with ":2,S".
    let dir = maildir(&store);
    let name = files_in(&dir.join("new"))
        .into_iter()
        .find(|n| n.starts_with(&d1.uid))
        .unwrap();
    fs::rename(
        dir.join("new").join(&name),
        dir.join("cur").join(format!("{name}:2,S")),
    )
    .unwrap();

    let md = open(&store);
    let again: Vec<String> = md.messages().iter().map(|m| m.uid.to_string()).collect();
    assert_eq!(again, first, "same UIDs in the same order");
    let i = again.iter().position(|u| *u == d1.uid).unwrap();
    assert_eq!(md.messages()[i].size, d1.size);
    assert_eq!(read_all(&*md, i), b"one\r\n");
}

#[test]
fn message_moved_during_session_is_still_found() {
    let (_tmp, store) = store();
    let d = deliver(&store, b"moving\n");
    let md = open(&store);
    let dir = maildir(&store);
    let name = files_in(&dir.join("new")).remove(0);
    fs::rename(
        dir.join("new").join(&name),
        dir.join("cur").join(format!("{name}:2,S")),
    )
    .unwrap();
    assert_eq!(read_all(&*md, 0), b"moving\r\n");

    // The client changes the flags again; commit must still find it.
    fs::rename(
        dir.join("cur").join(format!("{name}:2,S")),
        dir.join("cur").join(format!("{name}:2,RS")),
    )
    .unwrap();
    let report = md.commit(&[0]).unwrap();
    assert_eq!(report.deleted, 1);
    assert_eq!(report.bytes, d.size);
    assert!(files_in(&dir.join("cur")).is_empty());
}

#[test]
fn uids_are_unique() {
    let (_tmp, store) = store();
    let mut uids = HashSet::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..100)
                        .map(|_| deliver(&store, b"x\n").uid)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for uid in h.join().unwrap() {
                assert!(uid.len() <= 70);
                assert!(uids.insert(uid), "duplicate UID");
            }
        }
    });
    let md = open(&store);
    assert_eq!(md.messages().len(), 400);
    let listed: HashSet<String> = md.messages().iter().map(|m| m.uid.to_string()).collect();
    assert_eq!(listed, uids);
}

#[test]
fn lock_is_exclusive_and_released_on_drop() {
    let (_tmp, store) = store();
    deliver(&store, b"x\n");
    let first = open(&store);
    assert!(matches!(store.open(BOX), Err(StoreError::Locked)));
    // A second store value on the same root (as in another process) too.
    let other = Maildir::new(store.root(), "other");
    assert!(matches!(other.open(BOX), Err(StoreError::Locked)));
    assert!(matches!(
        store.expire(BOX, SystemTime::now(), true),
        Err(StoreError::Locked)
    ));
    assert!(matches!(store.remove_mailbox(BOX), Err(StoreError::Locked)));
    // usage and delivery don't need the lock.
    assert_eq!(store.usage(BOX).unwrap().messages, 1);
    deliver(&store, b"y\n");
    assert_eq!(first.messages().len(), 1, "snapshot is fixed");
    drop(first);
    let second = open(&store);
    assert_eq!(second.messages().len(), 2);
    assert!(maildir(&store).join(LOCK_FILE).exists());
}

#[test]
fn other_mailboxes_are_not_locked() {
    let (_tmp, store) = store();
    let _a = open(&store);
    assert!(store.open("bob@example.test").is_ok());
}

#[test]
fn open_of_a_new_mailbox_is_empty() {
    let (_tmp, store) = store();
    let md = open(&store);
    assert!(md.messages().is_empty());
    for sub in ["tmp", "new", "cur"] {
        assert!(maildir(&store).join(sub).is_dir());
    }
    assert!(matches!(
        md.open_message(0),
        Err(StoreError::NoSuchMessage(0))
    ));
}

#[test]
fn commit_deletes_durably() {
    let (_tmp, store) = store();
    let a = deliver(&store, b"a\n");
    let b = deliver(&store, b"bb\n");
    let c = deliver(&store, b"ccc\n");
    let md = open(&store);
    let uids: Vec<String> = md.messages().iter().map(|m| m.uid.to_string()).collect();
    let keep = uids[1].clone();

    // An out-of-range index fails the whole commit before deleting anything.
    assert!(matches!(
        md.commit(&[0, 3]),
        Err(StoreError::NoSuchMessage(3))
    ));
    assert_eq!(files_in(&maildir(&store).join("new")).len(), 3);

    let report = md.commit(&[2, 0, 0]).unwrap();
    assert_eq!(report.deleted, 2);
    let sizes: u64 = [&a, &b, &c]
        .iter()
        .filter(|d| d.uid != keep)
        .map(|d| d.size)
        .sum();
    assert_eq!(report.bytes, sizes);
    drop(md);

    let md = open(&store);
    assert_eq!(md.messages().len(), 1);
    assert_eq!(md.messages()[0].uid, keep);
}

#[test]
fn vanished_files_are_tolerated() {
    let (_tmp, store) = store();
    deliver(&store, b"a\n");
    let b = deliver(&store, b"b\n");
    let md = open(&store);
    let dir = maildir(&store);
    // Another program deletes the first message behind the session's back.
    let victim = md.messages()[0].uid.clone();
    let name = files_in(&dir.join("new"))
        .into_iter()
        .find(|n| n.starts_with(victim.as_str()))
        .unwrap();
    fs::remove_file(dir.join("new").join(name)).unwrap();

    assert!(matches!(
        md.open_message(0),
        Err(StoreError::Vanished { index: 0, .. })
    ));
    let report = md.commit(&[0, 1]).unwrap();
    assert_eq!(report.deleted, 1, "only the file we removed counts");
    assert_eq!(report.bytes, b.size);
    // Committing again is harmless.
    assert_eq!(md.commit(&[0, 1]).unwrap().deleted, 0);
    drop(md);
    assert!(open(&store).messages().is_empty());
}

#[test]
fn duplicate_in_new_and_cur_is_listed_once() {
    let (_tmp, store) = store();
    put(
        &store,
        "new",
        "1700000000.M1P1Q1R00000000.h,S=3,W=3",
        b"x\r\n",
    );
    put(
        &store,
        "cur",
        "1700000000.M1P1Q1R00000000.h,S=3,W=3:2,S",
        b"x\r\n",
    );
    let md = open(&store);
    assert_eq!(md.messages().len(), 1);
    assert_eq!(md.messages()[0].uid, "1700000000.M1P1Q1R00000000.h");
}

#[test]
fn foreign_files_get_crlf_sizes_and_an_index() {
    let (_tmp, store) = store();
    let dir = maildir(&store);
    // LF-only, no size fields, one without a trailing newline.
    put(&store, "cur", "1600000000.foreign1.other:2,S", b"a\nb\n");
    put(&store, "new", "1600000001.foreign2.other", b"a\nb");
    // Dovecot style: LF on disk, W= is the CRLF size.
    put(&store, "cur", "1600000002.dove.other,S=4,W=6:2,", b"c\nd\n");

    let check = |md: &dyn Maildrop| {
        let m = md.messages();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].uid, "1600000000.foreign1.other");
        assert_eq!(m[1].uid, "1600000001.foreign2.other");
        assert_eq!(m[2].uid, "1600000002.dove.other");
        assert_eq!(
            m[0].received,
            UNIX_EPOCH + Duration::from_secs(1_600_000_000)
        );
        let want: [&[u8]; 3] = [b"a\r\nb\r\n", b"a\r\nb\r\n", b"c\r\nd\r\n"];
        for (i, want) in want.iter().enumerate() {
            assert_eq!(read_all(md, i), *want);
            assert_eq!(m[i].size, want.len() as u64);
        }
    };

    check(&*open(&store));
    let index = fs::read_to_string(dir.join(INDEX_FILE)).unwrap();
    assert_eq!(
        index, "1600000000.foreign1.other\t6\n1600000001.foreign2.other\t6\n",
        "only foreign files without W= are indexed, keyed without flags"
    );

    // Deleted index: rebuilt identically.
    fs::remove_file(dir.join(INDEX_FILE)).unwrap();
    check(&*open(&store));
    assert_eq!(fs::read_to_string(dir.join(INDEX_FILE)).unwrap(), index);

    // Corrupt index: tolerated, and cleaned up.
    fs::write(
        dir.join(INDEX_FILE),
        b"\xff\xff\n1600000000.foreign1.other\tsix\nrandom junk\n\t\t\n",
    )
    .unwrap();
    check(&*open(&store));
    assert_eq!(fs::read_to_string(dir.join(INDEX_FILE)).unwrap(), index);

    // Entries of vanished files are dropped.
    fs::remove_file(dir.join("new").join("1600000001.foreign2.other")).unwrap();
    assert_eq!(open(&store).messages().len(), 2);
    assert_eq!(
        fs::read_to_string(dir.join(INDEX_FILE)).unwrap(),
        "1600000000.foreign1.other\t6\n"
    );

    // Deleting the last indexed message removes its entry (and the file).
    let md = open(&store);
    assert_eq!(md.messages()[0].uid, "1600000000.foreign1.other");
    assert_eq!(md.commit(&[0]).unwrap().bytes, 6);
    assert!(!dir.join(INDEX_FILE).exists());
}

#[test]
fn index_is_used_instead_of_reading_files() {
    let (_tmp, store) = store();
    let dir = maildir(&store);
    put(&store, "cur", "1600000000.foreign.other:2,S", b"a\nb\n");
    drop(open(&store));
    // Proof the cache is trusted: a planted size is reported as is.
    fs::write(dir.join(INDEX_FILE), "1600000000.foreign.other\t999\n").unwrap();
    assert_eq!(open(&store).messages()[0].size, 999);
    assert_eq!(store.usage(BOX).unwrap().bytes, 999);
}

#[test]
fn foreign_name_without_timestamp_uses_mtime() {
    let (_tmp, store) = store();
    put(&store, "cur", "weird-name:2,S", b"old\n");
    put(&store, "new", "also_weird", b"new\n");
    let old = SystemTime::now() - Duration::from_secs(3600);
    let f = fs::File::options()
        .write(true)
        .open(maildir(&store).join("cur").join("weird-name:2,S"))
        .unwrap();
    f.set_modified(old).unwrap();
    drop(f);

    let md = open(&store);
    let m = md.messages();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].uid, "weird-name");
    let diff = m[0]
        .received
        .duration_since(old)
        .unwrap_or_else(|e| e.duration());
    assert!(diff < Duration::from_secs(2));
    assert_eq!(m[1].uid, "also_weird");
}

#[test]
fn odd_entries_are_ignored() {
    let (_tmp, store) = store();
    let dir = maildir(&store);
    put(&store, "new", ".hidden", b"x\n");
    put(&store, "cur", ".1600000000.x,W=3", b"x\n");
    fs::create_dir_all(dir.join("cur").join("1600000000.subdir")).unwrap();
    put(&store, "new", "1600000000.real.h,S=3,W=3", b"x\r\n");
    let md = open(&store);
    assert_eq!(md.messages().len(), 1);
    assert_eq!(md.messages()[0].uid, "1600000000.real.h");
}

#[test]
fn invalid_mailbox_names_are_rejected_everywhere() {
    let (_tmp, store) = store();
    for bad in [
        "",
        "alice",
        "../alice@example.test",
        "alice@../x",
        "alice@..",
        "..@example.test",
        "a/b@example.test",
        "alice@ex/ample.test",
        "a\0b@example.test",
        "a\nb@example.test",
        "@example.test",
        "alice@",
        ".alice@example.test",
    ] {
        let invalid = |r: Result<(), StoreError>| matches!(r, Err(StoreError::InvalidMailbox(_)));
        assert!(invalid(store.path_of(bad).map(|_| ())), "{bad:?}");
        assert!(
            invalid(store.deliver(bad, &mut Cursor::new(b"x")).map(|_| ())),
            "{bad:?}"
        );
        assert!(invalid(store.open(bad).map(|_| ())), "{bad:?}");
        assert!(invalid(store.usage(bad).map(|_| ())), "{bad:?}");
        assert!(
            invalid(store.expire(bad, SystemTime::now(), true).map(|_| ())),
            "{bad:?}"
        );
        assert!(invalid(store.remove_mailbox(bad)), "{bad:?}");
        assert!(
            invalid(store.cleanup_tmp(bad, Duration::ZERO).map(|_| ())),
            "{bad:?}"
        );
    }
    // Nothing was created anywhere.
    assert!(!store.root().exists());
}

#[test]
fn path_of_lowercases_the_domain_and_stays_inside_the_root() {
    let (_tmp, store) = store();
    let p = store.path_of("Alice@Example.TEST").unwrap();
    assert_eq!(p, store.root().join("example.test").join("Alice"));
}

#[test]
fn expire_with_cutoff_and_dry_run() {
    let (_tmp, store) = store();
    put(&store, "cur", "1000000000.old1.h,S=3,W=3:2,S", b"1\r\n");
    put(&store, "new", "1000000100.old2.h,S=4,W=4", b"22\r\n");
    let fresh = deliver(&store, b"fresh\n");
    let cutoff = UNIX_EPOCH + Duration::from_secs(1_500_000_000);

    let report = store.expire(BOX, cutoff, true).unwrap();
    let uids: Vec<&str> = report.expired.iter().map(|m| m.uid.as_str()).collect();
    assert_eq!(uids, ["1000000000.old1.h", "1000000100.old2.h"]);
    assert_eq!(report.bytes, 7);
    assert_eq!(
        store.usage(BOX).unwrap().messages,
        3,
        "dry run deletes nothing"
    );

    // Refused while a session holds the lock.
    {
        let _session = open(&store);
        assert!(matches!(
            store.expire(BOX, cutoff, false),
            Err(StoreError::Locked)
        ));
    }

    let report = store.expire(BOX, cutoff, false).unwrap();
    assert_eq!(report.expired.len(), 2);
    assert_eq!(report.bytes, 7);
    let md = open(&store);
    assert_eq!(md.messages().len(), 1);
    assert_eq!(md.messages()[0].uid, fresh.uid);
    drop(md);

    // Nothing left to expire; a mailbox without storage is empty too.
    assert!(store.expire(BOX, cutoff, false).unwrap().expired.is_empty());
    let none = store.expire("nobody@example.test", cutoff, false).unwrap();
    assert!(none.expired.is_empty());
    assert!(!store.path_of("nobody@example.test").unwrap().exists());
}

#[test]
fn cleanup_tmp_removes_only_old_files() {
    let (_tmp, store) = store();
    assert_eq!(store.cleanup_tmp(BOX, Duration::ZERO).unwrap(), 0);
    deliver(&store, b"x\n");
    let tmp = maildir(&store).join("tmp");
    for name in ["stale1", "stale2", "fresh"] {
        fs::write(tmp.join(name), b"partial").unwrap();
    }
    let old = SystemTime::now() - Duration::from_secs(48 * 3600);
    for name in ["stale1", "stale2"] {
        let f = fs::File::options()
            .write(true)
            .open(tmp.join(name))
            .unwrap();
        f.set_modified(old).unwrap();
    }
    let removed = store
        .cleanup_tmp(BOX, Duration::from_secs(36 * 3600))
        .unwrap();
    assert_eq!(removed, 2);
    assert_eq!(files_in(&tmp), ["fresh"]);
    assert_eq!(store.usage(BOX).unwrap().messages, 1, "messages untouched");
}

#[test]
fn usage_counts_messages_and_octets() {
    let (_tmp, store) = store();
    assert_eq!(store.usage(BOX).unwrap(), crate::Usage::default());
    let a = deliver(&store, b"hello\n");
    let b = deliver(&store, b"world, longer\n");
    put(&store, "cur", "1600000000.foreign:2,S", b"x\ny\n");
    let u = store.usage(BOX).unwrap();
    assert_eq!(u.messages, 3);
    assert_eq!(u.bytes, a.size + b.size + 6);
    // usage must not write the index (it holds no lock).
    assert!(!maildir(&store).join(INDEX_FILE).exists());
}

#[test]
fn mailboxes_and_remove_mailbox() {
    let (_tmp, store) = store();
    assert!(store.mailboxes().unwrap().is_empty());
    deliver(&store, b"x\n");
    store
        .deliver("bob@Other.Test", &mut Cursor::new(b"y"))
        .unwrap();
    // Junk that must not be reported.
    fs::create_dir_all(store.root().join("UPPER.test").join("carol").join("cur")).unwrap();
    fs::create_dir_all(store.root().join("example.test").join("notamaildir")).unwrap();
    assert_eq!(
        store.mailboxes().unwrap(),
        ["alice@example.test", "bob@other.test"]
    );

    store.remove_mailbox("bob@other.test").unwrap();
    assert!(
        !store.root().join("other.test").exists(),
        "empty domain removed"
    );
    store.remove_mailbox("bob@other.test").unwrap();
    assert_eq!(store.mailboxes().unwrap(), ["alice@example.test"]);
}

#[test]
fn ten_thousand_messages() {
    let (_tmp, store) = store();
    let dir = maildir(&store);
    fs::create_dir_all(dir.join("new")).unwrap();
    fs::create_dir_all(dir.join("cur")).unwrap();
    let mut total = 0u64;
    for i in 0..10_000u64 {
        let body = format!("message {i}\r\n");
        let size = body.len() as u64;
        total += size;
        // Timestamps in reverse of creation order, to prove sorting.
        let name = format!(
            "{}.M{i}P1Q{i}R00000000.h,S={size},W={size}",
            1_600_000_000 - i
        );
        if i % 2 == 0 {
            fs::write(dir.join("new").join(name), body).unwrap();
        } else {
            fs::write(dir.join("cur").join(format!("{name}:2,S")), body).unwrap();
        }
    }
    let md = open(&store);
    let m = md.messages();
    assert_eq!(m.len(), 10_000);
    assert_eq!(m.iter().map(|m| m.size).sum::<u64>(), total);
    assert!(m.windows(2).all(|w| w[0].received <= w[1].received));
    let uids: HashSet<&str> = m.iter().map(|m| m.uid.as_str()).collect();
    assert_eq!(uids.len(), 10_000);
    assert_eq!(read_all(&*md, 0), b"message 9999\r\n");
    assert_eq!(read_all(&*md, 9_999), b"message 0\r\n");
    assert!(!dir.join(INDEX_FILE).exists(), "no foreign files, no index");
    assert_eq!(
        store.usage(BOX).unwrap(),
        crate::Usage {
            messages: 10_000,
            bytes: total
        }
    );
}

#[test]
fn hostname_is_sanitised_in_file_names() {
    let dir = tempfile::tempdir().unwrap();
    let store = Maildir::new(dir.path(), "bad/host:name,x y");
    let d = store.deliver(BOX, &mut Cursor::new(b"hi\n")).unwrap();
    let new = files_in(&store.path_of(BOX).unwrap().join("new"));
    assert_eq!(new.len(), 1);
    let base = new[0].split(',').next().unwrap();
    assert!(base.ends_with(".bad\\057host\\072name\\054xy"), "{base}");
    assert_eq!(d.uid, crate::name::uid_of(&new[0]));
    assert_eq!(new[0].matches(',').count(), 2, "only S= and W= separators");
    assert!(!new[0].contains(':'));
}

#[test]
fn quarantine_is_invisible_to_pop3_until_released() {
    let (_t, store) = store();
    deliver(&store, b"Subject: normal\r\n\r\nx\r\n");
    let q = store
        .deliver_quarantine(
            BOX,
            &mut Cursor::new(b"Subject: bad\r\n\r\nvirus\r\n".to_vec()),
        )
        .unwrap();
    // POP3's view: only the normal message.
    assert_eq!(open(&store).messages().len(), 1);
    assert_eq!(store.usage(BOX).unwrap().messages, 1);
    let listed = store.quarantine_list(BOX).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].uid, q.uid);
    let mut body = Vec::new();
    store
        .quarantine_read(BOX, &q.uid)
        .unwrap()
        .read_to_end(&mut body)
        .unwrap();
    assert_eq!(body, b"Subject: bad\r\n\r\nvirus\r\n");
    // Release: now POP3 sees it, with the same UID.
    store.quarantine_release(BOX, &q.uid).unwrap();
    let md = open(&store);
    assert_eq!(md.messages().len(), 2);
    assert!(md.messages().iter().any(|m| m.uid == q.uid));
    drop(md);
    assert!(store.quarantine_list(BOX).unwrap().is_empty());
    assert!(matches!(
        store.quarantine_release(BOX, &q.uid),
        Err(StoreError::NoSuchUid(_))
    ));
    // Delete.
    let q2 = store
        .deliver_quarantine(BOX, &mut Cursor::new(b"x\r\n".to_vec()))
        .unwrap();
    store.quarantine_delete(BOX, &q2.uid).unwrap();
    assert!(store.quarantine_list(BOX).unwrap().is_empty());
}

#[test]
fn discard_takes_back_a_delivery() {
    let (_t, store) = store();
    let keep = deliver(&store, b"keep\r\n");
    let gone = deliver(&store, b"gone\r\n");
    store.discard(BOX, &gone).unwrap();
    let md = open(&store);
    let uids: Vec<&str> = md.messages().iter().map(|m| m.uid.as_str()).collect();
    assert_eq!(uids, vec![keep.uid.as_str()]);
    drop(md);
    // Discarding something already gone is fine.
    store.discard(BOX, &gone).unwrap();
}

/// The listing against a straightforward model of its rules: oldest first,
/// ties by the name without flags, then new/ before cur/; UIDs by
/// `uid_of` (hashed for bases that are too long or not ASCII); a message
/// in both new/ and cur/ listed once; every listed message readable.
#[test]
fn listing_matches_a_model_of_its_rules() {
    use crate::name::{key_of, uid_of};

    let (_tmp, store) = store();
    // (sub rank, name, body)
    let mut files: Vec<(u8, String, String)> = Vec::new();
    for i in 0..300usize {
        // Few distinct seconds: many ties for the name to break.
        let secs = 1_600_000_000 + i % 7;
        let base = match i % 5 {
            0 => format!("{secs}.M{i}P1.h"),
            1 => format!("{secs}.{i}{}", "x".repeat(55 + i % 20)),
            2 => format!("{secs}.caf\u{e9}{i}"),
            3 => format!("{secs}.z{i}"),
            _ => format!("{secs}.a{i}"),
        };
        let body = format!("message {i}\r\n");
        let n = body.len();
        let name = match i % 4 {
            0 => format!("{base},S={n},W={n}"),
            1 => format!("{base},S={n},W={n}:2,S"),
            2 => format!("{base}:2,"),
            _ => base,
        };
        files.push((u8::from(i % 3 != 0), name, body));
    }
    // Seen in both directories (moved while listing): listed once, from
    // new/ (the contents differ only to tell which file was kept).
    files.push((0, "1600000003.dup,W=6".into(), "new/\r\n".into()));
    files.push((1, "1600000003.dup,W=6:2,S".into(), "cur/\r\n".into()));
    files.push((
        1,
        format!("1600000004.{}:2,", "y".repeat(80)),
        "cur/\r\n".into(),
    ));
    files.push((
        0,
        format!("1600000004.{}", "y".repeat(80)),
        "new/\r\n".into(),
    ));
    for (sub, name, body) in &files {
        put(
            &store,
            ["new", "cur"][usize::from(*sub)],
            name,
            body.as_bytes(),
        );
    }

    let mut model: Vec<&(u8, String, String)> = files.iter().collect();
    model.sort_by(|a, b| {
        let secs = |n: &str| n.split_once('.').unwrap().0.parse::<u64>().unwrap();
        (secs(&a.1), key_of(&a.1), a.0).cmp(&(secs(&b.1), key_of(&b.1), b.0))
    });
    let mut seen = HashSet::new();
    model.retain(|f| seen.insert(uid_of(&f.1)));
    assert_eq!(model.len(), files.len() - 2);

    let md = open(&store);
    let listed = md.messages();
    assert_eq!(listed.len(), model.len());
    for (i, (m, (_, name, body))) in listed.iter().zip(&model).enumerate() {
        assert_eq!(m.uid, uid_of(name), "UID of message {i} ({name})");
        assert_eq!(m.size, body.len() as u64, "size of {name}");
        let secs = name.split_once('.').unwrap().0.parse().unwrap();
        assert_eq!(m.received, UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(read_all(&*md, i), body.as_bytes(), "content of {name}");
    }
    let hashed = listed.iter().filter(|m| m.uid.len() == 32).count();
    assert!(hashed > 100, "the long and non-ASCII names ({hashed})");
}

/// Runs the test named `test` again in a child process whose umask is 022,
/// and checks that it ran and passed there. Returns false in the child,
/// which then does the actual work.
fn rerun_under_umask_022(test: &str) -> bool {
    const CHILD: &str = "POSTOFFICE_STORE_TEST_UNDER_UMASK_022";
    if std::env::var_os(CHILD).is_some() {
        return false;
    }
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", r#"umask 022 && exec "$0" "$@""#])
        .arg(std::env::current_exe().unwrap())
        .args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} under umask 022: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// Checks the permission bits of `path` (not following a final symlink).
#[track_caller]
fn assert_mode(path: &Path, want: u32) {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(
        format!("{mode:o}"),
        format!("{want:o}"),
        "{}",
        path.display()
    );
}

/// Mail is readable by its owner only: every directory the store creates
/// is 0700 and every file 0600, although the umask (022, set by
/// [`rerun_under_umask_022`]) would let group and others read them.
#[test]
fn files_and_directories_are_private() {
    if rerun_under_umask_022("tests::files_and_directories_are_private") {
        return;
    }
    // The umask really lets group and others read, so a file or directory
    // created without an explicit mode would show it.
    let probe = tempfile::tempdir().unwrap();
    fs::write(probe.path().join("f"), b"").unwrap();
    assert_mode(&probe.path().join("f"), 0o644);

    let (_tmp, store) = store();
    let root = store.root().to_path_buf();
    let dir = maildir(&store);
    deliver(&store, b"Subject: secret\r\n\r\nx\r\n");
    // A foreign file without W= makes the session write the index.
    fs::write(dir.join("new").join("1600000000.foreign.other"), b"a\n").unwrap();
    let md = open(&store);
    assert_eq!(md.messages().len(), 2);

    let dirs = [
        root.clone(),
        root.join("example.test"),
        dir.clone(),
        dir.join("tmp"),
        dir.join("new"),
        dir.join("cur"),
    ];
    for d in &dirs {
        assert_mode(d, 0o700);
    }
    let new = files_in(&dir.join("new"));
    let ours: Vec<&String> = new.iter().filter(|n| n.contains(",W=")).collect();
    assert_eq!(ours.len(), 1, "{new:?}");
    for f in [
        dir.join("new").join(ours[0]),
        dir.join(LOCK_FILE),
        dir.join(INDEX_FILE),
    ] {
        assert_mode(&f, 0o600);
    }
    drop(md);

    // The quarantine folder and its messages, and a released message.
    let q = store
        .deliver_quarantine(BOX, &mut Cursor::new(b"virus\r\n".to_vec()))
        .unwrap();
    let qdir = dir.join(".Quarantine");
    for d in [
        qdir.clone(),
        qdir.join("tmp"),
        qdir.join("new"),
        qdir.join("cur"),
    ] {
        assert_mode(&d, 0o700);
    }
    let quarantined = files_in(&qdir.join("new"));
    assert_eq!(quarantined.len(), 1);
    assert_mode(&qdir.join("new").join(&quarantined[0]), 0o600);
    store.quarantine_release(BOX, &q.uid).unwrap();
    assert_mode(&dir.join("new").join(&quarantined[0]), 0o600);

    // A second mailbox in a new domain, created by opening it (the lock
    // file comes first there).
    drop(store.open("bob@other.test").unwrap());
    let bob = root.join("other.test").join("bob");
    for d in [root.join("other.test"), bob.clone(), bob.join("new")] {
        assert_mode(&d, 0o700);
    }
    assert_mode(&bob.join(LOCK_FILE), 0o600);
}

/// Sets the modification time of new/ and cur/ `ago` in the past, as if
/// the maildrop had not changed for that long.
fn age_dirs(store: &Maildir, ago: Duration) {
    let t = SystemTime::now() - ago;
    for sub in ["new", "cur"] {
        let dir = maildir(store).join(sub);
        fs::create_dir_all(&dir).unwrap();
        fs::File::open(&dir).unwrap().set_modified(t).unwrap();
    }
}

fn listing(md: &dyn Maildrop) -> Vec<(String, u64, SystemTime)> {
    md.messages()
        .iter()
        .map(|m| (m.uid.to_string(), m.size, m.received))
        .collect()
}

/// A settled maildrop gets a listing cache, which the next open uses as
/// it stands (a doctored size shows it was read); a change to the
/// directories by another agent makes it stale: the directories are read
/// again, the foreign file appears, and the cache is rebuilt.
#[test]
fn listing_cache_is_used_while_valid_and_rebuilt_when_stale() {
    let (_tmp, store) = store();
    for i in 0..5 {
        deliver(
            &store,
            format!("Subject: {i}\r\n\r\nbody {i}\r\n").as_bytes(),
        );
    }
    put(
        &store,
        "cur",
        "1600000000.foreign.host:2,S",
        b"Subject: f\n\nlf body\n",
    );
    age_dirs(&store, Duration::from_secs(60));
    let first = listing(&*open(&store));
    assert_eq!(first.len(), 6);
    let cache = maildir(&store).join("postoffice-listing");
    assert!(cache.exists(), "a settled maildrop gets a cache");
    assert_eq!(listing(&*open(&store)), first, "the cache lists the same");

    // Doctor one size in the cache: the next open shows it.
    let text = fs::read_to_string(&cache).unwrap();
    let size = first[1].1;
    let doctored = text.replacen(&format!(" {size} "), " 999999 ", 1);
    assert_ne!(doctored, text);
    fs::write(&cache, &doctored).unwrap();
    let from_cache = listing(&*open(&store));
    assert!(
        from_cache.iter().any(|m| m.1 == 999_999),
        "read from the cache"
    );

    // A foreign delivery changes new/: the cache is stale.
    put(
        &store,
        "new",
        "1700000001.other.host",
        b"Subject: n\n\nnew\n",
    );
    let fresh = listing(&*open(&store));
    assert_eq!(fresh.len(), 7, "the foreign file appears");
    assert!(fresh.iter().all(|m| m.1 != 999_999), "stale cache not used");
    assert!(fresh.iter().any(|m| m.0 == "1700000001.other.host"));

    // A torn cache is ignored.
    age_dirs(&store, Duration::from_secs(60));
    let settled = listing(&*open(&store));
    let text = fs::read_to_string(&cache).unwrap();
    assert!(text.ends_with("end\n"));
    fs::write(&cache, &text[..text.len() / 2]).unwrap();
    assert_eq!(listing(&*open(&store)), settled);
    // Messages are still read and deleted through a cached listing.
    let md = open(&store);
    assert!(read_all(&*md, 0).starts_with(b"Subject: f"));
    md.commit(&[0]).unwrap();
    drop(md);
    assert_eq!(listing(&*open(&store)).len(), 6);
}

/// No cache is written while a directory changed within the last moment:
/// a change in the same clock tick could otherwise go unnoticed.
#[test]
fn listing_cache_waits_for_the_directories_to_settle() {
    let (_tmp, store) = store();
    deliver(&store, b"Subject: x\r\n\r\nx\r\n");
    drop(open(&store));
    assert!(!maildir(&store).join("postoffice-listing").exists());
}

/// An imported message keeps the UID it had on the other server, any
/// byte POP3 allows included, and its delivery time; it is found by
/// `contains` and read back as stored.
#[test]
fn import_keeps_uid_and_time() {
    let (_tmp, store) = store();
    let native = deliver(&store, b"Subject: native\r\n\r\nn\r\n");
    let t0 = UNIX_EPOCH + Duration::new(1_500_000_000, 5);
    let uids = ["00000001506c4b5a", "a,b:c/d%e~"];
    for (i, uid) in uids.iter().enumerate() {
        let d = store
            .import(
                BOX,
                &crate::Imported {
                    uid,
                    received: t0 + Duration::from_nanos(i as u64),
                },
                &mut Cursor::new(format!("Subject: {i}\n\nimported\n")),
            )
            .unwrap();
        assert_eq!(d.uid, *uid);
        assert!(store.contains(BOX, uid).unwrap());
    }
    assert!(store.contains(BOX, &native.uid).unwrap());
    assert!(!store.contains(BOX, "nope").unwrap());
    let md = open(&store);
    let got: Vec<String> = md.messages().iter().map(|m| m.uid.to_string()).collect();
    assert_eq!(got, [uids[0], uids[1], native.uid.as_str()], "oldest first");
    assert_eq!(
        md.messages()[0].received,
        UNIX_EPOCH + Duration::from_secs(1_500_000_000)
    );
    assert_eq!(read_all(&*md, 1), b"Subject: 1\r\n\r\nimported\r\n");
    drop(md);
    for bad in ["", "has space", &"x".repeat(71)] {
        let r = store.import(
            BOX,
            &crate::Imported {
                uid: bad,
                received: t0,
            },
            &mut Cursor::new(b"x\n"),
        );
        assert!(matches!(r, Err(StoreError::InvalidUid(_))), "{bad:?}");
    }
}

/// Mailbox state: a claim succeeds once until the key is removed; values
/// round-trip; keys are checked.
#[test]
fn state_values_and_claims() {
    let (_tmp, store) = store();
    assert!(store.state_claim(BOX, "quota-80").unwrap());
    assert!(!store.state_claim(BOX, "quota-80").unwrap());
    store.state_put(BOX, "quota-80", None).unwrap();
    assert!(store.state_claim(BOX, "quota-80").unwrap());
    assert_eq!(store.state_get(BOX, "notice").unwrap(), None);
    store.state_put(BOX, "notice", Some(b"a\nb")).unwrap();
    assert_eq!(store.state_get(BOX, "notice").unwrap().unwrap(), b"a\nb");
    for bad in ["", ".x", "a/b", "../x", &"k".repeat(65)] {
        assert!(matches!(
            store.state_get(BOX, bad),
            Err(StoreError::InvalidKey(_))
        ));
    }
    // Not a message: listings do not see it.
    assert_eq!(open(&store).messages().len(), 0);
}

/// First retrievals survive the session, keep the earliest time, and
/// belong to the message (not its position).
#[test]
fn first_retrieval_is_recorded() {
    let (_tmp, store) = store();
    let a = deliver(&store, b"Subject: a\r\n\r\na\r\n");
    let b = deliver(&store, b"Subject: b\r\n\r\nb\r\n");
    let md = open(&store);
    assert_eq!(md.retrieved().unwrap(), vec![None, None]);
    md.mark_retrieved(&[1, 7]).unwrap();
    drop(md);
    let md = open(&store);
    let first = md.retrieved().unwrap();
    assert!(first[0].is_none() && first[1].is_some());
    md.mark_retrieved(&[1]).unwrap();
    assert_eq!(
        md.retrieved().unwrap()[1],
        first[1],
        "the first time counts"
    );
    md.commit(&[0]).unwrap();
    drop(md);
    let md = open(&store);
    assert_eq!(md.messages()[0].uid.as_str(), b.uid);
    assert!(md.retrieved().unwrap()[0].is_some());
    let _ = a;
}
