//! The per-account state file: which messages (by UIDL) were delivered,
//! when each was first seen, and which deliveries an interrupted run may
//! have finished without recording them.
//!
//! Format, one entry per line after a comment header:
//!
//! ```text
//! # postoffice fetch state v1: <first-seen unix time> <uidl>
//! # and "? <uidl> <receipt>": a delivery begun, maybe not finished
//! 1735689600 QhdPYR:00WBw1Ph7x7
//! ? QhdPYR:00WBw1Ph8a2 maildir 1735689700.M123456P42Q0R0a1b2c3d.host
//! ```
//!
//! A `?` line (an *intent*, [`State::intend`]) is written and fsynced
//! after the whole message was handed to the destination and before the
//! step that makes it count there (the rename into `new/`, the mbox's
//! final write, the command's end of input). Its receipt says how the
//! destination can tell, later, whether that step happened (see
//! [`crate::fetch`]). The delivered line for the same UIDL supersedes it.
//! Older versions skip `?` lines (they do not parse as entries).
//!
//! Durability: [`State::save`] replaces the file atomically with
//! `postoffice_common::durable::write` (a temporary file, fsynced, renamed
//! over the old one, and the directory fsynced), so a crash leaves either
//! the old or the new file. During a session, [`State::intend`] and
//! [`State::record`] append a line and fsync it; [`State::delivered`]
//! only remembers the line, which goes out with the next append,
//! [`State::flush`], [`State::save`] or when the state is dropped (a
//! delivery whose intent is on disk is safe without it). An append torn
//! by a crash leaves a last line without its newline, which
//! [`State::load`] ignores. The file is compacted with `save` at the start
//! (before the first append) and at the end of every session.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use postoffice_common::durable;

const HEADER: &str = "# postoffice fetch state v1: <first-seen unix time> <uidl>\n\
                      # and \"? <uidl> <receipt>\": a delivery begun, maybe not finished\n";

/// Whether `receipt` can be written on a state line: words of printable
/// ASCII separated by single spaces, at most 1000 bytes.
fn valid_receipt(receipt: &str) -> bool {
    !receipt.is_empty()
        && receipt.len() <= 1000
        && receipt
            .split(' ')
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_graphic()))
}

/// The UIDLs delivered for one account.
#[derive(Debug)]
pub struct State {
    path: PathBuf,
    entries: BTreeMap<String, u64>,
    /// Deliveries begun (intent written) and not recorded: uid, receipt.
    pending: BTreeMap<String, String>,
    /// Delivered entries not yet appended to the file.
    unwritten: Vec<(String, u64)>,
    journal: Option<File>,
}

fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

impl State {
    /// An empty state that will live at `path`.
    pub fn empty(path: impl Into<PathBuf>) -> Self {
        State {
            path: path.into(),
            entries: BTreeMap::new(),
            pending: BTreeMap::new(),
            unwritten: Vec::new(),
            journal: None,
        }
    }

    /// Read the state file; a missing file is an empty state. Malformed
    /// lines and an unterminated last line (a torn append) are skipped.
    /// An intent counts only until a delivered line for its UIDL; of two
    /// intents for one UIDL the later one counts.
    pub fn load(path: &Path) -> io::Result<State> {
        let mut state = State::empty(path);
        let mut text = String::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_string(&mut text).map_err(|e| {
                    io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))
                })?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(state),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("reading {}: {e}", path.display()),
                ));
            }
        }
        let complete = match text.rfind('\n') {
            Some(p) => &text[..=p],
            None => "",
        };
        for line in complete.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("? ") {
                if let Some((uid, receipt)) = rest.split_once(' ')
                    && pop3_proto::client_codec::valid_uid(uid)
                    && valid_receipt(receipt)
                    && !state.entries.contains_key(uid)
                {
                    state.pending.insert(uid.to_string(), receipt.to_string());
                }
                continue;
            }
            let mut parts = line.splitn(2, ' ');
            let (Some(ts), Some(uid)) = (parts.next(), parts.next()) else {
                continue;
            };
            let (Ok(ts), true) = (ts.parse::<u64>(), pop3_proto::client_codec::valid_uid(uid))
            else {
                continue;
            };
            // The first record of a UIDL keeps its first-seen time.
            state.entries.entry(uid.to_string()).or_insert(ts);
            state.pending.remove(uid);
        }
        Ok(state)
    }

    /// Where the state lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `uid` was delivered.
    pub fn contains(&self, uid: &str) -> bool {
        self.entries.contains_key(uid)
    }

    /// The receipt of a delivery of `uid` that was begun (its intent
    /// written) but never recorded as finished: an interrupted run.
    pub fn pending(&self, uid: &str) -> Option<&str> {
        self.pending.get(uid).map(String::as_str)
    }

    /// When `uid` was first seen (delivered), in Unix seconds.
    pub fn first_seen(&self, uid: &str) -> Option<u64> {
        self.entries.get(uid).copied()
    }

    /// Change a first-seen time in memory (tests and tools).
    pub fn set_first_seen(&mut self, uid: &str, ts: u64) {
        self.entries.insert(uid.to_string(), ts);
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All entries (uid, first seen).
    pub fn entries(&self) -> impl Iterator<Item = (&str, u64)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Record `uid` as delivered at `ts` and make that durable before
    /// returning (append + fsync, with any lines [`State::delivered`]
    /// left). Recording a known UIDL changes nothing.
    pub fn record(&mut self, uid: &str, ts: u64) -> io::Result<()> {
        self.delivered(uid, ts)?;
        self.flush()
    }

    /// Record `uid` as delivered at `ts` in memory; the line reaches the
    /// file with the next append ([`State::intend`], [`State::record`]),
    /// [`State::flush`], [`State::save`], or when the state is dropped. For
    /// deliveries whose intent is on disk and whose destination can answer
    /// for itself: a crash before the line is written is caught up by
    /// asking the destination.
    pub fn delivered(&mut self, uid: &str, ts: u64) -> io::Result<()> {
        if !pop3_proto::client_codec::valid_uid(uid) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "invalid UIDL"));
        }
        self.pending.remove(uid);
        if self.entries.contains_key(uid) {
            return Ok(());
        }
        self.entries.insert(uid.to_string(), ts);
        self.unwritten.push((uid.to_string(), ts));
        Ok(())
    }

    /// Write down, durably, that the delivery of `uid` is about to be
    /// finished, and how the destination will recognise it (`receipt`:
    /// words of printable ASCII). Lines [`State::delivered`] left go out
    /// in the same write.
    pub fn intend(&mut self, uid: &str, receipt: &str) -> io::Result<()> {
        if !pop3_proto::client_codec::valid_uid(uid) || !valid_receipt(receipt) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid UIDL or receipt",
            ));
        }
        if self.entries.contains_key(uid) {
            return Ok(());
        }
        self.append(Some((uid, receipt)))?;
        self.pending.insert(uid.to_string(), receipt.to_string());
        Ok(())
    }

    /// Forget the intent for `uid` (the destination said the delivery
    /// failed). In memory: the next [`State::save`] drops it from the
    /// file; until then a crash leaves it, which only makes the next run
    /// ask the destination again.
    pub fn withdraw(&mut self, uid: &str) {
        self.pending.remove(uid);
    }

    /// Append and fsync what [`State::delivered`] left, if anything.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.unwritten.is_empty() {
            return Ok(());
        }
        self.append(None)
    }

    fn append(&mut self, intent: Option<(&str, &str)>) -> io::Result<()> {
        if self.journal.is_none() {
            // Rewrite first: the file then ends with a newline, so the
            // append cannot join a torn line (and what `delivered` left is
            // in it).
            self.save()?;
        }
        let mut text = String::new();
        for (uid, ts) in &self.unwritten {
            text.push_str(&format!("{ts} {uid}\n"));
        }
        if let Some((uid, receipt)) = intent {
            text.push_str(&format!("? {uid} {receipt}\n"));
        }
        let journal = self
            .journal
            .as_mut()
            .ok_or_else(|| io::Error::other("state file not open"))?;
        journal.write_all(text.as_bytes())?;
        journal.sync_data()?;
        self.unwritten.clear();
        Ok(())
    }

    /// Keep only the entries for which `keep` is true, and the pending
    /// deliveries for which it is true with a first-seen time of 0 (in
    /// memory; call [`State::save`] to persist).
    pub fn retain(&mut self, mut keep: impl FnMut(&str, u64) -> bool) {
        self.entries.retain(|k, v| keep(k, *v));
        self.pending.retain(|k, _| keep(k, 0));
        let entries = &self.entries;
        self.unwritten.retain(|(k, _)| entries.contains_key(k));
    }

    /// Atomically replace the file with the current entries
    /// ([`durable::write`]: temporary file, fsync, rename, fsync of the
    /// directory), then reopen it for appending.
    pub fn save(&mut self) -> io::Result<()> {
        let context = |e: io::Error| {
            io::Error::new(e.kind(), format!("writing {}: {e}", self.path.display()))
        };
        durable::create_dir_all(parent_of(&self.path)).map_err(context)?;
        let mut text = String::with_capacity(HEADER.len() + self.entries.len() * 40);
        text.push_str(HEADER);
        for (uid, ts) in &self.entries {
            text.push_str(&format!("{ts} {uid}\n"));
        }
        for (uid, receipt) in &self.pending {
            text.push_str(&format!("? {uid} {receipt}\n"));
        }
        durable::write(&self.path, text.as_bytes()).map_err(context)?;
        self.unwritten.clear();
        self.journal = Some(OpenOptions::new().append(true).open(&self.path)?);
        Ok(())
    }
}

impl Drop for State {
    /// What [`State::delivered`] left is written out (best effort): an
    /// early return on an error still records every delivery.
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// An exclusive lock (flock) on `<state file>.lock`, so two `fetch`
/// processes never work on one account at the same time. Released on drop.
#[derive(Debug)]
pub(crate) struct StateLock {
    _file: File,
}

impl StateLock {
    /// Take the lock, or fail at once if another process holds it.
    pub(crate) fn acquire(state_file: &Path) -> io::Result<StateLock> {
        let mut name = state_file.as_os_str().to_os_string();
        name.push(".lock");
        let path = PathBuf::from(name);
        durable::create_dir_all(parent_of(&path))?;
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(StateLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "another postoffice fetch is working on this account ({} is locked)",
                    path.display()
                ),
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_first_seen_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/acct.state");
        let mut s = State::load(&p).unwrap();
        assert!(s.is_empty());
        s.record("uid-1", 100).unwrap();
        s.record("uid-2", 200).unwrap();
        s.record("uid-1", 999).unwrap();
        let s2 = State::load(&p).unwrap();
        assert_eq!(s2.first_seen("uid-1"), Some(100));
        assert_eq!(s2.first_seen("uid-2"), Some(200));
        assert!(s.record("bad uid", 1).is_err());
        s.retain(|u, _| u != "uid-1");
        s.save().unwrap();
        let s3 = State::load(&p).unwrap();
        assert!(!s3.contains("uid-1") && s3.contains("uid-2"));
    }

    #[test]
    fn torn_append_is_ignored_and_not_glued() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("acct.state");
        std::fs::write(&p, format!("{HEADER}1 good\n2 torn-line-with-no-newl")).unwrap();
        let mut s = State::load(&p).unwrap();
        assert!(s.contains("good"));
        assert!(!s.contains("torn-line-with-no-newl"));
        // The first append rewrites the file first, so the new record is
        // on its own line.
        s.record("next", 3).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.ends_with("1 good\n3 next\n"), "{text:?}");
        assert_eq!(State::load(&p).unwrap().len(), 2);
    }

    #[test]
    fn intents_survive_until_their_record_supersedes_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("acct.state");
        let mut s = State::load(&p).unwrap();
        s.intend("u1", "maildir 1.M2P3Q4R5.host").unwrap();
        s.intend("u2", "command").unwrap();
        assert!(s.intend("u3", "two  spaces").is_err());
        assert!(s.intend("u3", "").is_err());
        // Intents are durable at once; the later one for a UIDL counts.
        s.intend("u2", "mbox 1 2 3").unwrap();
        let l = State::load(&p).unwrap();
        assert_eq!(l.pending("u1"), Some("maildir 1.M2P3Q4R5.host"));
        assert_eq!(l.pending("u2"), Some("mbox 1 2 3"));
        assert!(l.is_empty(), "an intent is not a delivery");
        // `delivered` waits for the next write, which it joins.
        s.delivered("u1", 10).unwrap();
        assert!(s.contains("u1") && s.pending("u1").is_none());
        assert_eq!(
            State::load(&p).unwrap().pending("u1"),
            Some("maildir 1.M2P3Q4R5.host")
        );
        s.intend("u4", "command").unwrap();
        let l = State::load(&p).unwrap();
        assert_eq!((l.first_seen("u1"), l.pending("u1")), (Some(10), None));
        // Compaction keeps pending intents and drops superseded ones.
        s.save().unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            text.lines().filter(|l| l.starts_with("? ")).count(),
            2,
            "{text}"
        );
        let l = State::load(&p).unwrap();
        assert_eq!(l.pending("u2"), Some("mbox 1 2 3"));
        assert_eq!(l.pending("u4"), Some("command"));
        // retain prunes intents of messages gone from the server.
        s.retain(|u, _| u != "u4");
        s.save().unwrap();
        assert_eq!(State::load(&p).unwrap().pending("u4"), None);
        // An intent for a UIDL already delivered is moot.
        s.intend("u1", "command").unwrap();
        assert_eq!(State::load(&p).unwrap().pending("u1"), None);
        // A withdrawn intent is gone with the next save.
        s.withdraw("u2");
        assert_eq!(s.pending("u2"), None);
        s.save().unwrap();
        assert_eq!(State::load(&p).unwrap().pending("u2"), None);
    }

    #[test]
    fn delivered_lines_are_written_by_flush_and_by_drop() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("acct.state");
        let mut s = State::load(&p).unwrap();
        s.delivered("a", 1).unwrap();
        assert!(!State::load(&p).unwrap().contains("a"));
        s.flush().unwrap();
        assert!(State::load(&p).unwrap().contains("a"));
        s.delivered("b", 2).unwrap();
        drop(s);
        let l = State::load(&p).unwrap();
        assert_eq!((l.first_seen("a"), l.first_seen("b")), (Some(1), Some(2)));
        // A record written after retain does not bring removed entries back.
        let mut s = State::load(&p).unwrap();
        s.delivered("c", 3).unwrap();
        s.retain(|u, _| u != "c");
        s.record("d", 4).unwrap();
        let l = State::load(&p).unwrap();
        assert!(!l.contains("c") && l.contains("d"));
    }

    #[test]
    fn save_is_atomic_rename() {
        // The old file stays intact until the rename: simulate a crash by
        // leaving a half-written temporary file next to it.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("acct.state");
        let mut s = State::empty(&p);
        s.set_first_seen("a", 1);
        s.save().unwrap();
        let ino_before = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap());
        std::fs::write(dir.path().join("acct.state.tmp99999"), "1 half").unwrap();
        assert!(State::load(&p).unwrap().contains("a"));
        s.set_first_seen("b", 2);
        s.save().unwrap();
        let ino_after = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap());
        assert_ne!(
            ino_before, ino_after,
            "save must replace the file by rename"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "acct.state" && n != "acct.state.tmp99999")
            .collect();
        assert!(names.is_empty(), "temporary file left behind: {names:?}");
        let loaded = State::load(&p).unwrap();
        assert!(loaded.contains("a") && loaded.contains("b"));
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("acct.state");
        let l = StateLock::acquire(&p).unwrap();
        let e = StateLock::acquire(&p).unwrap_err();
        assert!(e.to_string().contains("another postoffice fetch"), "{e}");
        drop(l);
        StateLock::acquire(&p).unwrap();
    }
}
