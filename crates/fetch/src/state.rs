//! The per-account state file: which messages (by UIDL) were delivered,
//! and when each was first seen.
//!
//! Format, one entry per line after a comment header:
//!
//! ```text
//! # postoffice fetch state v1: <first-seen unix time> <uidl>
//! 1735689600 QhdPYR:00WBw1Ph7x7
//! ```
//!
//! Durability: [`State::save`] replaces the file atomically with
//! `postoffice_common::durable::write` (a temporary file, fsynced, renamed
//! over the old one, and the directory fsynced), so a crash leaves either
//! the old or the new file. During a session, [`State::record`] appends
//! one line and fsyncs it right after each delivery, before any DELE or
//! QUIT is sent; an append torn by a crash leaves a last line without its
//! newline, which [`State::load`] ignores (that message was not recorded,
//! and is fetched again: the only duplicate window left is between the
//! destination's fsync and this one). The file is compacted with `save` at
//! the start (before the first append) and at the end of every session.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use postoffice_common::durable;

const HEADER: &str = "# postoffice fetch state v1: <first-seen unix time> <uidl>\n";

/// The UIDLs delivered for one account.
#[derive(Debug)]
pub struct State {
    path: PathBuf,
    entries: BTreeMap<String, u64>,
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
            journal: None,
        }
    }

    /// Read the state file; a missing file is an empty state. Malformed
    /// lines and an unterminated last line (a torn append) are skipped.
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
    /// returning (append + fsync). Recording a known UIDL changes nothing.
    pub fn record(&mut self, uid: &str, ts: u64) -> io::Result<()> {
        if !pop3_proto::client_codec::valid_uid(uid) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "invalid UIDL"));
        }
        if self.entries.contains_key(uid) {
            return Ok(());
        }
        if self.journal.is_none() {
            // Rewrite first: the file then ends with a newline, so the
            // append cannot join a torn line.
            self.save()?;
        }
        let journal = self
            .journal
            .as_mut()
            .ok_or_else(|| io::Error::other("state file not open"))?;
        journal.write_all(format!("{ts} {uid}\n").as_bytes())?;
        journal.sync_data()?;
        self.entries.insert(uid.to_string(), ts);
        Ok(())
    }

    /// Keep only the entries for which `keep` is true (in memory; call
    /// [`State::save`] to persist).
    pub fn retain(&mut self, mut keep: impl FnMut(&str, u64) -> bool) {
        self.entries.retain(|k, v| keep(k, *v));
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
        durable::write(&self.path, text.as_bytes()).map_err(context)?;
        self.journal = Some(OpenOptions::new().append(true).open(&self.path)?);
        Ok(())
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
