//! The on-disk spool: `<data_dir>/queue/`.
//!
//! Each entry is a pair of files named by its queue ID:
//!
//! * `<id>.msg`: the message, exactly as received (CRLF line ends).
//! * `<id>.env`: the envelope, TOML ([`SpoolEnvelope`]): sender, arrival time,
//!   and per recipient its state (`pending`, `delivered`, `failed`),
//!   attempts, next attempt (unix seconds) and last error.
//!
//! Every write goes through [`postoffice_common::durable`], so each file
//! gets all four steps: a temporary file, fsync, rename, fsync of the
//! directory. The temporary files are `.<id>.msg.tmp.<pid>.<n>` and
//! `.<id>.env.tmp.<pid>.<n>` (older versions wrote `<id>.msg.tmp` and
//! `<id>.env.tmp`; recovery knows both).
//!
//! Writing a new entry: the message goes to its temporary file and is
//! fsynced (outside the lock: it may be big); then, holding the spool lock
//! (`.lock`, flock), the envelope goes to its temporary file, the message
//! is renamed to `<id>.msg` (directory fsynced), the envelope to `<id>.env`
//! (last; fsync, rename, directory fsynced). An entry exists once
//! `<id>.env` does.
//!
//! Updating an envelope: under the lock, write a temporary file, fsync,
//! rename over `<id>.env`, fsync the directory. A reader never sees a torn
//! envelope. Removing an entry: under the lock, `<id>.env` first, then
//! `<id>.msg`.
//!
//! Recovery (at open, under the lock): a `<id>.msg` without `<id>.env` is a
//! half-written entry (the writer died between the renames, before it
//! answered `250`) and is removed; so is every envelope temporary file
//! (envelope writes happen only under the lock, so one found there is
//! torn). A message temporary file is removed once it is an hour old
//! (another process may be writing it right now). An envelope that does
//! not parse is renamed to `<id>.corrupt` and logged; an envelope without
//! its message is removed.
//!
//! The lock serialises the server's scheduler and the `postoffice queue`
//! commands of other processes; it is held only for these short steps.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postoffice_common::content::Content;
use postoffice_common::durable::{self, AtomicFile};

use serde::{Deserialize, Serialize};

use crate::QueueError;
use crate::backend::{Due, Modified, QueueSizes, SpoolBackend};

/// The envelope format version written by this code.
pub(crate) const ENVELOPE_VERSION: u32 = 1;

/// Age after which a leftover `*.msg.tmp` is removed.
const STALE_TMP: Duration = Duration::from_secs(3600);

/// A recipient's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptState {
    /// Still to be delivered (maybe after a temporary failure).
    Pending,
    /// The remote server accepted it (250 to RCPT and to the data).
    Delivered,
    /// Given up: a permanent failure or expiry. See `notified`.
    Failed,
}

impl std::fmt::Display for RcptState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RcptState::Pending => "pending",
            RcptState::Delivered => "delivered",
            RcptState::Failed => "failed",
        })
    }
}

/// One recipient of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rcpt {
    pub address: String,
    pub state: RcptState,
    /// Delivery attempts made.
    pub attempts: u32,
    /// Unix seconds of the next attempt (pending), or of the next try to
    /// send the bounce (failed, not yet notified).
    pub next_attempt: u64,
    /// What happened last, for humans: a remote reply or a local error.
    #[serde(default)]
    pub last_error: String,
    /// RFC 3463 status of the last attempt ("4.2.0").
    #[serde(default)]
    pub status: String,
    /// The host that gave the last reply, if one did.
    #[serde(default)]
    pub remote_mta: String,
    /// The remote reply on one line (the DSN's Diagnostic-Code), if any.
    #[serde(default)]
    pub diagnostic: String,
    /// Failed: the sender has been sent the bounce (or there was no one to
    /// tell: the null sender).
    #[serde(default)]
    pub notified: bool,
    /// Unix seconds of the last delivery attempt, 0 if none.
    #[serde(default)]
    pub last_attempt: u64,
}

/// The envelope file of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SpoolEnvelope {
    pub version: u32,
    pub id: String,
    /// The reverse-path; "" is the null sender (a bounce: never bounced).
    pub mail_from: String,
    /// Unix seconds of arrival.
    pub created_at: u64,
    /// Size of the message file.
    pub size: u64,
    /// The delay warning was sent.
    #[serde(default)]
    pub delay_warned: bool,
    /// The message has octets above 127 (sent with BODY=8BITMIME); found
    /// while it was spooled. `None` in entries written by older versions:
    /// the file is scanned when it is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eight_bit: Option<bool>,
    /// Held: not sent until released (`postoffice queue release`); why
    /// (e.g. the spam score of `filter.scan_outbound`). A held entry is
    /// never due, so it neither expires nor bounces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    #[serde(rename = "rcpt")]
    pub rcpts: Vec<Rcpt>,
}

impl SpoolEnvelope {
    /// Every recipient is delivered, or failed with the sender told.
    pub(crate) fn is_complete(&self) -> bool {
        self.rcpts.iter().all(|r| match r.state {
            RcptState::Pending => false,
            RcptState::Delivered => true,
            RcptState::Failed => r.notified,
        })
    }

    /// When this entry next needs the scheduler: a pending recipient's next
    /// attempt, a bounce still to send, the delay warning; `Some(0)` when it
    /// is complete (to be removed); `None` never.
    pub(crate) fn next_due(&self, delay_warning_secs: u64) -> Option<u64> {
        if self.is_complete() {
            return Some(0);
        }
        if self.held.is_some() {
            return None;
        }
        let mut due: Option<u64> = None;
        let mut pending = false;
        for r in &self.rcpts {
            let t = match r.state {
                RcptState::Pending => {
                    pending = true;
                    r.next_attempt
                }
                RcptState::Failed if !r.notified => r.next_attempt,
                _ => continue,
            };
            due = Some(due.map_or(t, |d| d.min(t)));
        }
        if pending && delay_warning_secs > 0 && !self.delay_warned && !self.mail_from.is_empty() {
            let t = self.created_at.saturating_add(delay_warning_secs);
            due = Some(due.map_or(t, |d| d.min(t)));
        }
        due
    }

    pub(crate) fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    pub(crate) fn from_toml(text: &str) -> Result<SpoolEnvelope, EnvelopeError> {
        let env: SpoolEnvelope = toml::from_str(text).map_err(EnvelopeError::Parse)?;
        if env.version != ENVELOPE_VERSION {
            return Err(EnvelopeError::Version(env.version));
        }
        if !valid_id(&env.id) {
            return Err(EnvelopeError::InvalidId(env.id));
        }
        Ok(env)
    }
}

/// Why an envelope file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// It is not TOML, or not an envelope (torn, edited by hand).
    #[error("{0}")]
    Parse(toml::de::Error),
    /// Written by a version of postoffice with another format.
    #[error("unsupported envelope version {0}")]
    Version(u32),
    /// Its ID could not name a file.
    #[error("invalid queue ID {0:?}")]
    InvalidId(String),
}

/// A reader that notes whether any octet above 127 went by.
struct EightBit<'a> {
    inner: &'a mut dyn io::Read,
    seen: bool,
}

impl io::Read for EightBit<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if !self.seen {
            self.seen = buf[..n].iter().any(|&b| b >= 0x80);
        }
        Ok(n)
    }
}

/// Queue IDs are 1 to 64 ASCII letters and digits (they name files).
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A new queue ID: unique across processes, sortable by arrival within a
/// process.
pub(crate) fn new_id() -> String {
    postoffice_common::ids::unique_id()
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What recovery did, for the log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Recovery {
    /// Complete entries kept.
    pub entries: usize,
    /// Half-written entries removed (IDs).
    pub removed_partial: Vec<String>,
    /// Torn or stale temporary files removed.
    pub removed_tmp: usize,
    /// Envelopes that do not parse, moved aside to `<id>.corrupt`.
    pub corrupt: Vec<String>,
}

/// The spool directory.
#[derive(Debug)]
pub(crate) struct Spool {
    dir: PathBuf,
    /// This process's claims (one server per data directory): entry ID ->
    /// [`IN_PROGRESS`], or unix seconds until which it is left alone
    /// after an error.
    claims: Mutex<HashMap<String, u64>>,
    /// Envelopes read by the last [`SpoolBackend::claim_due`].
    cache: Mutex<ScanCache>,
}

/// A claim of an entry being delivered (as opposed to one held after an
/// error until some time).
const IN_PROGRESS: u64 = u64::MAX;

/// Envelopes read by the last scan, with the file's modification time,
/// inode and length: unchanged files are not parsed again (every rewrite
/// is a new file renamed into place).
type ScanCache = HashMap<String, ((SystemTime, u64, u64), SpoolEnvelope)>;

/// Holds the spool lock until dropped (closing the file releases it).
pub(crate) struct LockGuard {
    _file: File,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> QueueError {
    let context = context.into();
    move |source| QueueError::Io { context, source }
}

impl Spool {
    /// Create the directory if needed. No recovery (see [`Spool::recover`]).
    ///
    /// A new directory is private (`0700`) and its parent is fsynced: the
    /// fsync of the spool directory after each entry makes the entry
    /// durable only if the directory's own name in `data_dir` is.
    pub(crate) fn new(dir: PathBuf) -> Result<Spool, QueueError> {
        durable::create_dir_all(&dir)
            .map_err(io_err(format!("cannot create {}", dir.display())))?;
        Ok(Spool {
            dir,
            claims: Mutex::new(HashMap::new()),
            cache: Mutex::new(ScanCache::new()),
        })
    }

    #[cfg(test)]
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn msg_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.msg"))
    }

    pub(crate) fn env_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.env"))
    }

    /// Take the spool lock (blocks).
    pub(crate) fn lock(&self) -> Result<LockGuard, QueueError> {
        let path = self.dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(durable::FILE_MODE)
            .open(&path)
            .map_err(io_err(format!("cannot open {}", path.display())))?;
        file.lock()
            .map_err(io_err(format!("cannot lock {}", path.display())))?;
        Ok(LockGuard { _file: file })
    }

    fn sync_dir(&self) -> Result<(), QueueError> {
        durable::sync_dir(&self.dir).map_err(io_err(format!("cannot sync {}", self.dir.display())))
    }

    /// Durably store a new entry (see the module docs for the order). A
    /// failure leaves nothing behind: temporary files are removed, and so
    /// is the message when its envelope could not be written.
    /// The message is copied from `message` as it is read (a large one is
    /// never held in memory); `env.size` is set to its length.
    pub(crate) fn create(
        &self,
        env: &mut SpoolEnvelope,
        message: &mut dyn io::Read,
    ) -> Result<(), QueueError> {
        let id = env.id.clone();
        let msg_path = self.msg_path(&id);
        let env_path = self.env_path(&id);
        let write_err = |path: &Path| io_err(format!("cannot write {}", path.display()));
        // The message may be big: written and fsynced before taking the
        // lock. Dropped on an error, the temporary file is removed.
        let mut msg = AtomicFile::create(&msg_path).map_err(write_err(&msg_path))?;
        let mut scan = EightBit {
            inner: message,
            seen: false,
        };
        env.size = io::copy(&mut scan, &mut msg)
            .and_then(|n| msg.file().sync_all().map(|()| n))
            .map_err(write_err(&msg_path))?;
        env.eight_bit = Some(scan.seen);
        let _lock = self.lock()?;
        let mut envelope = AtomicFile::create(&env_path).map_err(write_err(&env_path))?;
        envelope
            .write_all(env.to_toml().as_bytes())
            .map_err(write_err(&env_path))?;
        msg.commit().map_err(write_err(&msg_path))?;
        if let Err(e) = envelope.commit() {
            // Not an entry without its envelope: take the message back.
            let _ = fs::remove_file(&msg_path);
            return Err(write_err(&env_path)(e));
        }
        Ok(())
    }

    /// The envelope of `id`, `None` if there is no such entry.
    pub(crate) fn read_env(&self, id: &str) -> Result<Option<SpoolEnvelope>, QueueError> {
        let path = self.env_path(id);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(format!("cannot read {}", path.display()))(e)),
        };
        SpoolEnvelope::from_toml(&text)
            .map(Some)
            .map_err(|source| QueueError::Corrupt {
                id: id.to_string(),
                source,
            })
    }

    /// The whole message in memory.
    #[cfg(test)]
    pub(crate) fn read_message(&self, id: &str) -> Result<Vec<u8>, QueueError> {
        let path = self.msg_path(id);
        fs::read(&path).map_err(io_err(format!("cannot read {}", path.display())))
    }

    /// The message, to be read from its file as it is sent.
    pub(crate) fn open_message(&self, id: &str) -> Result<Content, QueueError> {
        let path = self.msg_path(id);
        File::open(&path)
            .and_then(Content::from_file)
            .map_err(io_err(format!("cannot read {}", path.display())))
    }

    /// Write an envelope over the existing one. The caller holds the lock.
    fn write_env_locked(&self, env: &SpoolEnvelope) -> Result<(), QueueError> {
        let path = self.env_path(&env.id);
        durable::write(&path, env.to_toml().as_bytes())
            .map_err(io_err(format!("cannot write {}", path.display())))
    }

    /// Read-modify-write an envelope atomically under the lock. `Ok(None)`:
    /// the entry is gone (deleted meanwhile). The envelope is written only
    /// when `f` changed it.
    pub(crate) fn update<R>(
        &self,
        id: &str,
        f: impl FnOnce(&mut SpoolEnvelope) -> R,
    ) -> Result<Option<R>, QueueError> {
        let _lock = self.lock()?;
        let Some(mut env) = self.read_env(id)? else {
            return Ok(None);
        };
        let before = env.clone();
        let r = f(&mut env);
        if env != before {
            self.write_env_locked(&env)?;
        }
        Ok(Some(r))
    }

    /// Like [`Spool::update`], but an entry that `f` leaves complete (every
    /// recipient delivered, or failed and notified) is removed at once
    /// instead of being rewritten: after a remote `250` this is the only
    /// disk work before the entry is gone, which keeps the window in which
    /// a crash makes the message go out twice as short as it can be.
    /// `Ok(None)`: no such entry; `Ok(Some(true))`: removed.
    pub(crate) fn update_or_finish(
        &self,
        id: &str,
        f: impl FnOnce(&mut SpoolEnvelope),
    ) -> Result<Option<bool>, QueueError> {
        let _lock = self.lock()?;
        let Some(mut env) = self.read_env(id)? else {
            return Ok(None);
        };
        let before = env.clone();
        f(&mut env);
        if env.is_complete() {
            self.remove_locked(id)?;
            return Ok(Some(true));
        }
        if env != before {
            self.write_env_locked(&env)?;
        }
        Ok(Some(false))
    }

    /// Remove an entry (envelope first). `Ok(false)`: there was none.
    pub(crate) fn remove(&self, id: &str) -> Result<bool, QueueError> {
        let _lock = self.lock()?;
        self.remove_locked(id)
    }

    fn remove_locked(&self, id: &str) -> Result<bool, QueueError> {
        let env = self.env_path(id);
        let existed = match fs::remove_file(&env) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_err(format!("cannot remove {}", env.display()))(e)),
        };
        let msg = self.msg_path(id);
        match fs::remove_file(&msg) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("cannot remove {}", msg.display()))(e)),
        }
        self.sync_dir()?;
        Ok(existed)
    }

    /// Remove the entry if it is complete (checked under the lock).
    pub(crate) fn remove_if_complete(&self, id: &str) -> Result<bool, QueueError> {
        let _lock = self.lock()?;
        match self.read_env(id)? {
            Some(env) if env.is_complete() => self.remove_locked(id),
            _ => Ok(false),
        }
    }

    /// IDs of the entries (those with an envelope), sorted.
    pub(crate) fn ids(&self) -> Result<Vec<String>, QueueError> {
        let mut ids = Vec::new();
        let rd = fs::read_dir(&self.dir)
            .map_err(io_err(format!("cannot list {}", self.dir.display())))?;
        for e in rd {
            let e = e.map_err(io_err(format!("cannot list {}", self.dir.display())))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name.strip_suffix(".env")
                && valid_id(id)
            {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Clean up after a crash. See the module docs.
    pub(crate) fn recover(&self) -> Result<Recovery, QueueError> {
        let _lock = self.lock()?;
        let mut report = Recovery::default();
        let mut names = Vec::new();
        let rd = fs::read_dir(&self.dir)
            .map_err(io_err(format!("cannot list {}", self.dir.display())))?;
        for e in rd {
            let e = e.map_err(io_err(format!("cannot list {}", self.dir.display())))?;
            if let Some(name) = e.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        let has = |n: &str| names.iter().any(|x| x == n);
        let mut changed = false;
        for name in &names {
            let path = self.dir.join(name);
            if is_tmp(name, "env") {
                if fs::remove_file(&path).is_ok() {
                    report.removed_tmp += 1;
                    changed = true;
                }
            } else if is_tmp(name, "msg") {
                let stale = fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_none_or(|age| age >= STALE_TMP);
                if stale && fs::remove_file(&path).is_ok() {
                    report.removed_tmp += 1;
                    changed = true;
                }
            } else if let Some(id) = name.strip_suffix(".msg") {
                if valid_id(id) && !has(&format!("{id}.env")) {
                    tracing::warn!(
                        id,
                        "removing a half-written queue entry (message without envelope)"
                    );
                    if fs::remove_file(&path).is_ok() {
                        report.removed_partial.push(id.to_string());
                        changed = true;
                    }
                }
            } else if let Some(id) = name.strip_suffix(".env") {
                if !valid_id(id) {
                    continue;
                }
                if !has(&format!("{id}.msg")) {
                    tracing::error!(id, "queue entry without its message file: removed");
                    let _ = fs::remove_file(&path);
                    report.removed_partial.push(id.to_string());
                    changed = true;
                    continue;
                }
                match self.read_env(id) {
                    Ok(Some(_)) => report.entries += 1,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(id, error = %e, "unreadable queue envelope moved aside to {id}.corrupt");
                        let _ = fs::rename(&path, self.dir.join(format!("{id}.corrupt")));
                        report.corrupt.push(id.to_string());
                        changed = true;
                    }
                }
            }
        }
        if changed {
            self.sync_dir()?;
        }
        report.removed_partial.sort();
        Ok(report)
    }
}

impl Spool {
    /// Read every envelope into the scan cache (re-parsing only changed
    /// files).
    fn scan(&self, cache: &mut ScanCache) -> Result<(), QueueError> {
        let ids = self.ids()?;
        let live: HashSet<&String> = ids.iter().collect();
        cache.retain(|id, _| live.contains(id));
        for id in &ids {
            let Ok(meta) = fs::metadata(self.env_path(id)) else {
                cache.remove(id);
                continue;
            };
            let stamp = (
                meta.modified().unwrap_or(UNIX_EPOCH),
                std::os::unix::fs::MetadataExt::ino(&meta),
                meta.len(),
            );
            if cache.get(id).is_some_and(|(s, _)| *s == stamp) {
                continue;
            }
            match self.read_env(id) {
                Ok(Some(env)) => {
                    cache.insert(id.clone(), (stamp, env));
                }
                Ok(None) => {
                    cache.remove(id);
                }
                Err(e) => {
                    cache.remove(id);
                    tracing::warn!(id, error = %e, "skipping an unreadable queue entry");
                }
            }
        }
        Ok(())
    }
}

/// The files: claims are this process's (see [`Spool`]'s `claims`).
impl SpoolBackend for Spool {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn recover(&self) -> Result<Recovery, QueueError> {
        Spool::recover(self)
    }

    fn create(
        &self,
        env: &mut SpoolEnvelope,
        message: &mut dyn io::Read,
    ) -> Result<(), QueueError> {
        Spool::create(self, env, message)
    }

    fn ids(&self) -> Result<Vec<String>, QueueError> {
        Spool::ids(self)
    }

    fn read_env(&self, id: &str) -> Result<Option<SpoolEnvelope>, QueueError> {
        Spool::read_env(self, id)
    }

    fn read_head(&self, id: &str, max: usize) -> Result<Vec<u8>, QueueError> {
        let path = self.msg_path(id);
        let mut out = Vec::new();
        File::open(&path)
            .and_then(|f| io::Read::read_to_end(&mut io::Read::take(f, max as u64), &mut out))
            .map_err(io_err(format!("cannot read {}", path.display())))?;
        Ok(out)
    }

    fn open_message(&self, id: &str) -> Result<Content, QueueError> {
        Spool::open_message(self, id)
    }

    fn modify(
        &self,
        id: &str,
        _claimed: bool,
        finish: bool,
        f: &mut dyn FnMut(&mut SpoolEnvelope),
    ) -> Result<Modified, QueueError> {
        if finish {
            Ok(match self.update_or_finish(id, f)? {
                None => Modified::Gone,
                Some(false) => Modified::Kept,
                Some(true) => Modified::Finished,
            })
        } else {
            Ok(match self.update(id, f)? {
                None => Modified::Gone,
                Some(()) => Modified::Kept,
            })
        }
    }

    fn remove(&self, id: &str) -> Result<bool, QueueError> {
        Spool::remove(self, id)
    }

    fn remove_if_complete(&self, id: &str) -> Result<bool, QueueError> {
        Spool::remove_if_complete(self, id)
    }

    fn claim_due(&self, now: u64, max: usize, warn_after: u64) -> Result<Due, QueueError> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = self.scan(&mut cache) {
            cache.clear();
            return Err(e);
        }
        let mut sizes = QueueSizes::default();
        for (_, env) in cache.values() {
            sizes.add(env);
        }
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        claims.retain(|_, until| *until > now);
        let mut due: Vec<(u64, &String)> = Vec::new();
        let mut next: Option<u64> = None;
        for (id, (_, env)) in cache.iter() {
            let hold = match claims.get(id) {
                Some(&IN_PROGRESS) => continue,
                Some(&until) => until,
                None => 0,
            };
            let Some(t) = env.next_due(warn_after) else {
                continue;
            };
            let due_at = t.max(hold);
            if due_at <= now {
                due.push((due_at, id));
            } else {
                next = Some(next.map_or(due_at, |n| n.min(due_at)));
            }
        }
        due.sort();
        let more = due.len() > max;
        let ids: Vec<String> = due
            .into_iter()
            .take(max)
            .map(|(_, id)| id.clone())
            .collect();
        for id in &ids {
            claims.insert(id.clone(), IN_PROGRESS);
        }
        Ok(Due {
            ids,
            more,
            next,
            sizes,
        })
    }

    fn lease(&self) -> Option<Duration> {
        None
    }

    fn renew(&self, _ids: &[String]) -> Result<Vec<String>, QueueError> {
        Ok(Vec::new())
    }

    fn release_claim(&self, id: &str, hold_secs: u64) -> Result<(), QueueError> {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        if hold_secs > 0 {
            claims.insert(id.to_string(), unix_now().saturating_add(hold_secs));
        } else {
            claims.remove(id);
        }
        Ok(())
    }
}

/// A temporary file of kind `kind` ("msg" or "env"): `.<id>.<kind>.tmp.*`
/// as [`AtomicFile`] names them, or `<id>.<kind>.tmp` as older versions did.
fn is_tmp(name: &str, kind: &str) -> bool {
    let legacy = format!(".{kind}.tmp");
    let current = format!(".{kind}.tmp.");
    name.ends_with(&legacy) || (name.starts_with('.') && name.contains(&current))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(id: &str) -> SpoolEnvelope {
        SpoolEnvelope {
            version: ENVELOPE_VERSION,
            id: id.into(),
            mail_from: "alice@src.test".into(),
            created_at: 1_700_000_000,
            size: 5,
            delay_warned: false,
            eight_bit: None,
            held: None,
            rcpts: vec![
                Rcpt {
                    address: "bob@dest.test".into(),
                    state: RcptState::Pending,
                    attempts: 2,
                    next_attempt: 1_700_000_900,
                    last_error: "450 4.2.0 \"greylisted\"\nsecond line".into(),
                    status: "4.2.0".into(),
                    remote_mta: "mx.dest.test".into(),
                    diagnostic: "450 4.2.0 greylisted".into(),
                    notified: false,
                    last_attempt: 1_700_000_300,
                },
                Rcpt {
                    address: "carol@other.test".into(),
                    state: RcptState::Failed,
                    attempts: 1,
                    next_attempt: 1_700_000_000,
                    last_error: String::new(),
                    status: "5.1.1".into(),
                    remote_mta: String::new(),
                    diagnostic: String::new(),
                    notified: true,
                    last_attempt: 0,
                },
            ],
        }
    }

    #[test]
    fn envelope_round_trip_and_format() {
        let e = env("ABC123");
        let text = e.to_toml();
        assert!(text.contains("mail_from = \"alice@src.test\""), "{text}");
        assert!(text.contains("[[rcpt]]"), "{text}");
        assert!(text.contains("state = \"pending\""), "{text}");
        assert_eq!(SpoolEnvelope::from_toml(&text).unwrap(), e);
        // Torn text does not parse.
        assert!(SpoolEnvelope::from_toml(&text[..text.len() / 2]).is_err());
        assert!(SpoolEnvelope::from_toml("").is_err());
        // Wrong version, bad ID.
        let bad = text.replace("version = 1", "version = 9");
        assert!(SpoolEnvelope::from_toml(&bad).is_err());
        let bad = text.replace("id = \"ABC123\"", "id = \"../x\"");
        assert!(SpoolEnvelope::from_toml(&bad).is_err());
    }

    #[test]
    fn next_due_and_completion() {
        let mut e = env("A1");
        assert_eq!(e.next_due(0), Some(1_700_000_900));
        e.held = Some("spam score 15.00".into());
        assert_eq!(e.next_due(0), None, "a held entry is never due");
        assert_eq!(SpoolEnvelope::from_toml(&e.to_toml()).unwrap(), e);
        e.held = None;
        // The delay warning comes earlier.
        assert_eq!(e.next_due(600), Some(1_700_000_600));
        e.delay_warned = true;
        assert_eq!(e.next_due(600), Some(1_700_000_900));
        e.rcpts[0].state = RcptState::Delivered;
        assert!(e.is_complete());
        assert_eq!(e.next_due(600), Some(0));
        e.rcpts[1].notified = false;
        assert!(!e.is_complete());
        assert_eq!(e.next_due(600), Some(1_700_000_000));
    }

    #[test]
    fn ids() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(valid_id(&a), "{a}");
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id("a.env"));
        assert!(!valid_id(&"A".repeat(65)));
    }

    #[test]
    fn a_new_spool_directory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().join("data/queue")).unwrap();
        for d in [dir.path().join("data"), spool.dir().to_path_buf()] {
            let mode = fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
    }

    #[test]
    fn create_update_remove() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().join("queue")).unwrap();
        let mut e = env("ID1");
        spool.create(&mut e, &mut &b"hello"[..]).unwrap();
        assert_eq!((e.size, e.eight_bit), (5, Some(false)));
        assert_eq!(spool.ids().unwrap(), vec!["ID1"]);
        assert_eq!(spool.read_message("ID1").unwrap(), b"hello");
        assert_eq!(spool.read_env("ID1").unwrap().unwrap(), e);
        // No temporary files are left behind.
        let names: Vec<String> = fs::read_dir(spool.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with('.'))
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        for name in &names {
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &fs::metadata(spool.dir().join(name)).unwrap().permissions(),
            );
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let r = spool
            .update("ID1", |env| {
                env.rcpts[0].attempts += 1;
                env.rcpts[0].attempts
            })
            .unwrap();
        assert_eq!(r, Some(3));
        assert_eq!(spool.read_env("ID1").unwrap().unwrap().rcpts[0].attempts, 3);
        assert_eq!(spool.update("NOPE", |_| ()).unwrap(), None);
        assert!(!spool.remove_if_complete("ID1").unwrap());
        assert!(spool.remove("ID1").unwrap());
        assert!(!spool.remove("ID1").unwrap());
        assert!(spool.ids().unwrap().is_empty());
        assert!(!spool.msg_path("ID1").exists());
    }

    #[test]
    fn update_or_finish_removes_a_completed_entry_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().join("queue")).unwrap();
        spool.create(&mut env("ID2"), &mut &b"body"[..]).unwrap();
        // Still pending afterwards: rewritten, kept.
        let r = spool
            .update_or_finish("ID2", |e| e.rcpts[0].attempts = 7)
            .unwrap();
        assert_eq!(r, Some(false));
        assert_eq!(spool.read_env("ID2").unwrap().unwrap().rcpts[0].attempts, 7);
        // The last pending recipient delivered: gone, message file too.
        let r = spool
            .update_or_finish("ID2", |e| e.rcpts[0].state = RcptState::Delivered)
            .unwrap();
        assert_eq!(r, Some(true));
        assert!(spool.ids().unwrap().is_empty());
        assert!(!spool.msg_path("ID2").exists());
        assert_eq!(spool.update_or_finish("ID2", |_| ()).unwrap(), None);
        // A failure still to be bounced keeps the entry.
        let mut e = env("ID3");
        e.rcpts[1].notified = false;
        spool.create(&mut e.clone(), &mut &b"body"[..]).unwrap();
        let r = spool
            .update_or_finish("ID3", |e| e.rcpts[0].state = RcptState::Delivered)
            .unwrap();
        assert_eq!(r, Some(false));
        assert!(spool.read_env("ID3").unwrap().is_some());
    }

    /// The file spool's claims are this process's: an entry is handed
    /// out once until released, and a release with a hold keeps it back.
    #[test]
    fn claims_hand_out_each_due_entry_once_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().join("queue")).unwrap();
        for id in ["C1", "C2"] {
            spool.create(&mut env(id), &mut &b"body"[..]).unwrap();
        }
        let now = 1_700_001_000;
        let first = spool.claim_due(now, 1, 0).unwrap();
        assert_eq!((first.ids.len(), first.more), (1, true));
        assert_eq!(first.sizes.entries, 2);
        assert_eq!(first.sizes.pending, 2);
        let second = spool.claim_due(now, 10, 0).unwrap();
        assert_eq!(second.ids.len(), 1);
        assert_ne!(first.ids, second.ids);
        assert!(spool.claim_due(now, 10, 0).unwrap().ids.is_empty());
        // Released: due again. Released with a hold: not before it ends.
        spool.release_claim(&first.ids[0], 0).unwrap();
        assert_eq!(spool.claim_due(now, 10, 0).unwrap().ids, first.ids);
        spool.release_claim(&first.ids[0], 3600).unwrap();
        let held = spool.claim_due(now, 10, 0).unwrap();
        assert!(held.ids.is_empty());
        assert!(held.next.is_some_and(|t| t > now), "{:?}", held.next);
        // Not due yet: not handed out; `next` says when.
        spool.release_claim(&second.ids[0], 0).unwrap();
        let early = spool.claim_due(1_700_000_000, 10, 0).unwrap();
        assert!(early.ids.is_empty());
        assert_eq!(early.next, Some(1_700_000_900));
        assert_eq!(spool.lease(), None);
        assert!(spool.renew(&second.ids).unwrap().is_empty());
    }

    #[test]
    fn recovery_removes_half_written_entries() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().join("queue")).unwrap();
        let mut good = env("GOOD");
        spool.create(&mut good, &mut &b"kept"[..]).unwrap();
        // The writer died between the two renames: message, no envelope,
        // and its envelope tmp (maybe torn).
        fs::write(spool.msg_path("HALF"), b"lost").unwrap();
        let torn = env("HALF").to_toml();
        fs::write(spool.dir().join("HALF.env.tmp"), &torn[..torn.len() / 2]).unwrap();
        // An update died after writing a torn tmp: the entry itself is fine.
        fs::write(spool.dir().join("GOOD.env.tmp"), b"version = ").unwrap();
        // A message still being written by another process (fresh tmp).
        fs::write(spool.dir().join("BUSY.msg.tmp"), b"partial").unwrap();
        // The same with today's temporary names (durable::AtomicFile).
        fs::write(spool.dir().join(".GOOD.env.tmp.42.7"), b"version = ").unwrap();
        fs::write(spool.dir().join(".BUSY2.msg.tmp.42.8"), b"partial").unwrap();
        // A torn tmp is never taken for an entry, even before recovery.
        assert_eq!(spool.ids().unwrap(), vec!["GOOD"]);

        let r = spool.recover().unwrap();
        assert_eq!(r.entries, 1);
        assert_eq!(r.removed_partial, vec!["HALF"]);
        assert_eq!(r.removed_tmp, 3);
        assert!(!spool.msg_path("HALF").exists());
        assert!(!spool.dir().join("HALF.env.tmp").exists());
        assert!(!spool.dir().join(".GOOD.env.tmp.42.7").exists());
        assert!(spool.dir().join("BUSY.msg.tmp").exists());
        assert!(spool.dir().join(".BUSY2.msg.tmp.42.8").exists());
        assert_eq!(spool.read_message("GOOD").unwrap(), b"kept");
        assert_eq!(spool.read_env("GOOD").unwrap().unwrap(), good);

        // A corrupt complete envelope is moved aside.
        fs::write(spool.msg_path("BAD"), b"x").unwrap();
        fs::write(spool.env_path("BAD"), b"not toml [").unwrap();
        let r = spool.recover().unwrap();
        assert_eq!(r.corrupt, vec!["BAD"]);
        assert!(spool.dir().join("BAD.corrupt").exists());
        assert_eq!(spool.ids().unwrap(), vec!["GOOD"]);
    }
}
