//! The locked snapshot a POP3 session works on ([`MaildirDrop`]): the
//! listing taken under the session lock, reading messages from it, and
//! deleting them at `QUIT` (or for expiry).
//!
//! Other Maildir agents may move a listed file (new/ → cur/, new flags)
//! or delete it during the session; reads and deletions then look the
//! message up again by UID ([`locate_all`]) instead of failing.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use postoffice_common::durable::sync_dir;

use super::ensure_maildir;
use super::lock::lock;
use super::scan::{Location, Sub, list, locate_all};
use crate::crlf::CrlfReader;
use crate::index;
use crate::name;
use crate::uid::Frozen;
use crate::{CommitReport, ExpireReport, Maildrop, MessageInfo, StoreError};

/// A locked snapshot of one maildir (see [`Maildrop`]).
pub(super) struct MaildirDrop {
    /// Holding the open, `flock`ed file *is* the lock; dropping it unlocks.
    _lock: File,
    dir: PathBuf,
    messages: Vec<MessageInfo>,
    /// Parallel to `messages`.
    locations: Vec<Location>,
    /// The file names `locations` point into.
    names: Frozen,
    /// The size cache as of the snapshot, kept so deletions can prune it.
    index: Mutex<HashMap<String, u64>>,
}

impl fmt::Debug for MaildirDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaildirDrop")
            .field("dir", &self.dir)
            .field("messages", &self.messages.len())
            .finish_non_exhaustive()
    }
}

impl MaildirDrop {
    /// Locks and lists the maildir at `dir` (creating it if needed).
    pub(super) fn open(dir: PathBuf) -> Result<MaildirDrop, StoreError> {
        let lock = lock(&dir)?;
        ensure_maildir(&dir)?;
        let listing = list(&dir, true)?;
        Ok(MaildirDrop {
            _lock: lock,
            dir,
            messages: listing.messages,
            locations: listing.locations,
            names: listing.names,
            index: Mutex::new(listing.index),
        })
    }

    /// Removes (or, in a dry run, only lists) the messages received before
    /// `cutoff` ([`MailStore::expire`](crate::MailStore::expire)).
    pub(super) fn expire(
        &self,
        cutoff: SystemTime,
        dry_run: bool,
    ) -> Result<ExpireReport, StoreError> {
        ExpireReport::run(&self.messages, cutoff, dry_run, |v| self.delete(v))
    }

    fn path_of(&self, index: usize) -> Option<PathBuf> {
        let loc = self.locations.get(index)?;
        Some(self.dir.join(loc.sub.dir()).join(self.names.get(loc.name)))
    }

    /// Deletes the given messages and returns the indices whose files this
    /// call actually removed (already-vanished ones are not included).
    ///
    /// All indices are validated before anything is deleted. A failure on one
    /// file doesn't stop the others; the first error is returned after the
    /// directories have been synced.
    fn delete(&self, indices: &[usize]) -> Result<Vec<usize>, StoreError> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.messages.len()) {
            return Err(StoreError::NoSuchMessage(bad));
        }
        let mut todo = indices.to_vec();
        todo.sort_unstable();
        todo.dedup();

        let mut removed = Vec::with_capacity(todo.len());
        let mut first_error = None;
        let mut relocated: Option<HashMap<String, PathBuf>> = None;
        for i in todo {
            let (Some(path), Some(info)) = (self.path_of(i), self.messages.get(i)) else {
                continue;
            };
            let result = match fs::remove_file(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Moved by another agent? One rescan serves all misses.
                    if relocated.is_none() {
                        match locate_all(&self.dir) {
                            Ok(map) => relocated = Some(map),
                            Err(e) => {
                                first_error.get_or_insert(e);
                                relocated = Some(HashMap::new());
                            }
                        }
                    }
                    match relocated.as_ref().and_then(|m| m.get(info.uid.as_str())) {
                        Some(moved) => fs::remove_file(moved).map(|()| true),
                        None => Ok(false),
                    }
                }
                other => other.map(|()| true),
            };
            match result {
                Ok(true) => removed.push(i),
                Ok(false) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_error.get_or_insert_with(|| {
                        StoreError::io(format!("deleting {}", path.display()))(e)
                    });
                }
            }
        }

        // Unlinks are only durable once the directories are synced.
        for sub in Sub::ALL {
            let d = self.dir.join(sub.dir());
            match sync_dir(&d) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    first_error.get_or_insert_with(|| {
                        StoreError::io(format!("syncing {}", d.display()))(e)
                    });
                }
                _ => {}
            }
        }

        self.prune_index(&removed);
        match first_error {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    /// Drops index entries of deleted foreign messages (best effort: stale
    /// entries are harmless and pruned by the next listing anyway).
    fn prune_index(&self, removed: &[usize]) {
        let mut index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
        let mut changed = false;
        for &i in removed {
            if let Some(loc) = self.locations.get(i) {
                changed |= index
                    .remove(name::key_of(self.names.get(loc.name)))
                    .is_some();
            }
        }
        if changed {
            let _ = index::store(&self.dir, &index);
        }
    }
}

/// The first-retrieval log, inside the maildir directory: one
/// `<uid>\t<unix seconds>\n` line per retrieval, appended under the session
/// lock; the earliest line of a UID counts. Compacted (rewritten with one
/// line per listed message) when it has grown well past that.
pub(crate) const RETRIEVED_FILE: &str = "postoffice-retrieved";

impl MaildirDrop {
    fn retrieved_log(&self) -> Result<HashMap<String, u64>, StoreError> {
        let path = self.dir.join(RETRIEVED_FILE);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
            Err(e) => return Err(StoreError::io(format!("reading {}", path.display()))(e)),
        };
        let mut times: HashMap<String, u64> = HashMap::new();
        let mut lines = 0usize;
        for line in data.split(|&b| b == b'\n') {
            let Some((uid, secs)) = std::str::from_utf8(line)
                .ok()
                .and_then(|l| l.split_once('\t'))
                .and_then(|(u, s)| Some((u, s.parse::<u64>().ok()?)))
            else {
                continue;
            };
            lines += 1;
            times
                .entry(uid.to_owned())
                .and_modify(|t| *t = (*t).min(secs))
                .or_insert(secs);
        }
        // Keep only messages still listed; rewrite when the log carries
        // much more than that (repeated retrievals, deleted messages).
        let listed: std::collections::HashSet<&str> =
            self.messages.iter().map(|m| m.uid.as_str()).collect();
        times.retain(|uid, _| listed.contains(uid.as_str()));
        if lines > 2 * times.len() + 64 {
            let mut out = String::with_capacity(times.len() * 40);
            for m in &self.messages {
                if let Some(t) = times.get(m.uid.as_str()) {
                    out.push_str(&format!("{}\t{t}\n", m.uid));
                }
            }
            // Only a compaction: the old file stays if this fails.
            let _ = postoffice_common::durable::write(&path, out.as_bytes());
        }
        Ok(times)
    }
}

impl Maildrop for MaildirDrop {
    fn mark_retrieved(&self, indices: &[usize]) -> Result<(), StoreError> {
        let secs = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut out = String::new();
        for &i in indices {
            if let Some(m) = self.messages.get(i) {
                out.push_str(&format!("{}\t{secs}\n", m.uid));
            }
        }
        if out.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(RETRIEVED_FILE);
        let io_err = StoreError::io(format!("appending to {}", path.display()));
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let created = !path.exists();
        let mut file = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(postoffice_common::durable::FILE_MODE)
            .open(&path)
            .map_err(StoreError::io(format!("opening {}", path.display())))?;
        file.write_all(out.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(io_err)?;
        if created {
            sync_dir(&self.dir)
                .map_err(StoreError::io(format!("syncing {}", self.dir.display())))?;
        }
        Ok(())
    }

    fn retrieved(&self) -> Result<Vec<Option<SystemTime>>, StoreError> {
        let times = self.retrieved_log()?;
        Ok(self
            .messages
            .iter()
            .map(|m| {
                times.get(m.uid.as_str()).and_then(|&s| {
                    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(s))
                })
            })
            .collect())
    }

    fn messages(&self) -> &[MessageInfo] {
        &self.messages
    }

    fn open_message(&self, index: usize) -> Result<Box<dyn Read + Send>, StoreError> {
        let (Some(info), Some(path)) = (self.messages.get(index), self.path_of(index)) else {
            return Err(StoreError::NoSuchMessage(index));
        };
        let vanished = || StoreError::Vanished {
            index,
            uid: info.uid.to_string(),
        };
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let moved = locate_all(&self.dir)?
                    .remove(info.uid.as_str())
                    .ok_or_else(vanished)?;
                match File::open(&moved) {
                    Ok(file) => file,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(vanished()),
                    Err(e) => {
                        return Err(StoreError::io(format!("opening {}", moved.display()))(e));
                    }
                }
            }
            Err(e) => return Err(StoreError::io(format!("opening {}", path.display()))(e)),
        };
        // Our own files are stored CRLF with a final CRLF, so their physical
        // size (S=) equals the listed size (W=): they are streamed as they
        // are. Foreign LF files go through the converter, which yields
        // exactly the size listed for them.
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name::is_stored_crlf(name) {
            return Ok(Box::new(file));
        }
        Ok(Box::new(CrlfReader::new(file)))
    }

    fn commit(&self, deleted: &[usize]) -> Result<CommitReport, StoreError> {
        let removed = self.delete(deleted)?;
        Ok(CommitReport {
            deleted: removed.len(),
            bytes: removed
                .iter()
                .filter_map(|&i| self.messages.get(i))
                .map(|m| m.size)
                .sum(),
        })
    }

    fn local_reads(&self) -> bool {
        true
    }
}
