//! The on-disk spool: `<data_dir>/queue/`.
//!
//! Each entry is a pair of files named by its queue ID:
//!
//! * `<id>.msg`: the message, exactly as received (CRLF line ends).
//! * `<id>.env`: the envelope, TOML ([`Envelope`]): sender, arrival time,
//!   and per recipient its state (`pending`, `delivered`, `failed`),
//!   attempts, next attempt (unix seconds) and last error.
//!
//! Writing a new entry: the message goes to `<id>.msg.tmp` and is fsynced
//! (outside the lock: it may be big); then, holding the spool lock
//! (`.lock`, flock), the envelope goes to `<id>.env.tmp` and is fsynced, the
//! message is renamed to `<id>.msg`, the envelope to `<id>.env` (last), and
//! the directory is fsynced. An entry exists once `<id>.env` does.
//!
//! Updating an envelope: under the lock, write `<id>.env.tmp`, fsync,
//! rename over `<id>.env`, fsync the directory. A reader never sees a torn
//! envelope. Removing an entry: under the lock, `<id>.env` first, then
//! `<id>.msg`.
//!
//! Recovery (at open, under the lock): a `<id>.msg` without `<id>.env` is a
//! half-written entry (the writer died between the renames, before it
//! answered `250`) and is removed; so is every `*.env.tmp` (envelope
//! writes happen only under the lock, so one found there is torn). A
//! `*.msg.tmp` is removed once it is an hour old (another process may be
//! writing it right now). An envelope that does not parse is renamed to
//! `<id>.corrupt` and logged; an envelope without its message is removed.
//!
//! The lock serialises the server's scheduler and the `postoffice queue`
//! commands of other processes; it is held only for these short steps.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postoffice_common::durable;
use serde::{Deserialize, Serialize};

use crate::QueueError;

/// The envelope format version written by this code.
pub const ENVELOPE_VERSION: u32 = 1;

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
pub struct Rcpt {
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
pub struct Envelope {
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
    #[serde(rename = "rcpt")]
    pub rcpts: Vec<Rcpt>,
}

impl Envelope {
    /// Every recipient is delivered, or failed with the sender told.
    pub fn is_complete(&self) -> bool {
        self.rcpts.iter().all(|r| match r.state {
            RcptState::Pending => false,
            RcptState::Delivered => true,
            RcptState::Failed => r.notified,
        })
    }

    /// When this entry next needs the scheduler: a pending recipient's next
    /// attempt, a bounce still to send, the delay warning; `Some(0)` when it
    /// is complete (to be removed); `None` never.
    pub fn next_due(&self, delay_warning_secs: u64) -> Option<u64> {
        if self.is_complete() {
            return Some(0);
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

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    pub fn from_toml(text: &str) -> Result<Envelope, String> {
        let env: Envelope = toml::from_str(text).map_err(|e| e.to_string())?;
        if env.version != ENVELOPE_VERSION {
            return Err(format!("unsupported envelope version {}", env.version));
        }
        if !valid_id(&env.id) {
            return Err(format!("invalid queue ID {:?}", env.id));
        }
        Ok(env)
    }
}

/// Queue IDs are 1 to 64 ASCII letters and digits (they name files).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A new queue ID: unique across processes (time, PID, counter), sortable by
/// arrival within a process.
pub fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:09X}{:05X}{:05X}{:04X}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id() & 0xF_FFFF,
        n & 0xFFFF
    )
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What recovery did, for the log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
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
pub struct Spool {
    dir: PathBuf,
}

/// Holds the spool lock until dropped (closing the file releases it).
pub struct LockGuard {
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
    pub fn new(dir: PathBuf) -> Result<Spool, QueueError> {
        durable::create_dir_all(&dir)
            .map_err(io_err(format!("cannot create {}", dir.display())))?;
        Ok(Spool { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn msg_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.msg"))
    }

    pub fn env_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.env"))
    }

    /// Take the spool lock (blocks).
    pub fn lock(&self) -> Result<LockGuard, QueueError> {
        let path = self.dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(format!("cannot open {}", path.display())))?;
        file.lock()
            .map_err(io_err(format!("cannot lock {}", path.display())))?;
        Ok(LockGuard { _file: file })
    }

    fn sync_dir(&self) -> Result<(), QueueError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(format!("cannot sync {}", self.dir.display())))
    }

    /// Durably store a new entry (see the module docs for the order).
    pub fn create(&self, env: &Envelope, message: &[u8]) -> Result<(), QueueError> {
        let id = &env.id;
        let msg_tmp = self.dir.join(format!("{id}.msg.tmp"));
        write_synced(&msg_tmp, message)
            .map_err(io_err(format!("cannot write {}", msg_tmp.display())))?;
        let result = (|| {
            let _lock = self.lock()?;
            let env_tmp = self.dir.join(format!("{id}.env.tmp"));
            write_synced(&env_tmp, env.to_toml().as_bytes())
                .map_err(io_err(format!("cannot write {}", env_tmp.display())))?;
            fs::rename(&msg_tmp, self.msg_path(id))
                .map_err(io_err(format!("cannot rename {}", msg_tmp.display())))?;
            fs::rename(&env_tmp, self.env_path(id))
                .map_err(io_err(format!("cannot rename {}", env_tmp.display())))?;
            self.sync_dir()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&msg_tmp);
            let _ = fs::remove_file(self.dir.join(format!("{id}.env.tmp")));
        }
        result
    }

    /// The envelope of `id`, `None` if there is no such entry.
    pub fn read_env(&self, id: &str) -> Result<Option<Envelope>, QueueError> {
        let path = self.env_path(id);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(format!("cannot read {}", path.display()))(e)),
        };
        Envelope::from_toml(&text)
            .map(Some)
            .map_err(|message| QueueError::Corrupt {
                id: id.to_string(),
                message,
            })
    }

    pub fn read_message(&self, id: &str) -> Result<Vec<u8>, QueueError> {
        let path = self.msg_path(id);
        fs::read(&path).map_err(io_err(format!("cannot read {}", path.display())))
    }

    /// Write an envelope over the existing one. The caller holds the lock.
    fn write_env_locked(&self, env: &Envelope) -> Result<(), QueueError> {
        let tmp = self.dir.join(format!("{}.env.tmp", env.id));
        write_synced(&tmp, env.to_toml().as_bytes())
            .map_err(io_err(format!("cannot write {}", tmp.display())))?;
        fs::rename(&tmp, self.env_path(&env.id))
            .map_err(io_err(format!("cannot rename {}", tmp.display())))?;
        self.sync_dir()
    }

    /// Read-modify-write an envelope atomically under the lock. `Ok(None)`:
    /// the entry is gone (deleted meanwhile). The envelope is written only
    /// when `f` changed it.
    pub fn update<R>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Envelope) -> R,
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
    pub fn update_or_finish(
        &self,
        id: &str,
        f: impl FnOnce(&mut Envelope),
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
    pub fn remove(&self, id: &str) -> Result<bool, QueueError> {
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
    pub fn remove_if_complete(&self, id: &str) -> Result<bool, QueueError> {
        let _lock = self.lock()?;
        match self.read_env(id)? {
            Some(env) if env.is_complete() => self.remove_locked(id),
            _ => Ok(false),
        }
    }

    /// IDs of the entries (those with an envelope), sorted.
    pub fn ids(&self) -> Result<Vec<String>, QueueError> {
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
    pub fn recover(&self) -> Result<Recovery, QueueError> {
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
            if name.ends_with(".env.tmp") {
                if fs::remove_file(&path).is_ok() {
                    report.removed_tmp += 1;
                    changed = true;
                }
            } else if name.ends_with(".msg.tmp") {
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

fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(id: &str) -> Envelope {
        Envelope {
            version: ENVELOPE_VERSION,
            id: id.into(),
            mail_from: "alice@src.test".into(),
            created_at: 1_700_000_000,
            size: 5,
            delay_warned: false,
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
        assert_eq!(Envelope::from_toml(&text).unwrap(), e);
        // Torn text does not parse.
        assert!(Envelope::from_toml(&text[..text.len() / 2]).is_err());
        assert!(Envelope::from_toml("").is_err());
        // Wrong version, bad ID.
        let bad = text.replace("version = 1", "version = 9");
        assert!(Envelope::from_toml(&bad).is_err());
        let bad = text.replace("id = \"ABC123\"", "id = \"../x\"");
        assert!(Envelope::from_toml(&bad).is_err());
    }

    #[test]
    fn next_due_and_completion() {
        let mut e = env("A1");
        assert_eq!(e.next_due(0), Some(1_700_000_900));
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
        let e = env("ID1");
        spool.create(&e, b"hello").unwrap();
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
        spool.create(&env("ID2"), b"body").unwrap();
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
        spool.create(&e, b"body").unwrap();
        let r = spool
            .update_or_finish("ID3", |e| e.rcpts[0].state = RcptState::Delivered)
            .unwrap();
        assert_eq!(r, Some(false));
        assert!(spool.read_env("ID3").unwrap().is_some());
    }

    #[test]
    fn recovery_removes_half_written_entries() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().join("queue")).unwrap();
        spool.create(&env("GOOD"), b"kept").unwrap();
        // The writer died between the two renames: message, no envelope,
        // and its envelope tmp (maybe torn).
        fs::write(spool.msg_path("HALF"), b"lost").unwrap();
        let torn = env("HALF").to_toml();
        fs::write(spool.dir().join("HALF.env.tmp"), &torn[..torn.len() / 2]).unwrap();
        // An update died after writing a torn tmp: the entry itself is fine.
        fs::write(spool.dir().join("GOOD.env.tmp"), b"version = ").unwrap();
        // A message still being written by another process (fresh tmp).
        fs::write(spool.dir().join("BUSY.msg.tmp"), b"partial").unwrap();
        // A torn tmp is never taken for an entry, even before recovery.
        assert_eq!(spool.ids().unwrap(), vec!["GOOD"]);

        let r = spool.recover().unwrap();
        assert_eq!(r.entries, 1);
        assert_eq!(r.removed_partial, vec!["HALF"]);
        assert_eq!(r.removed_tmp, 2);
        assert!(!spool.msg_path("HALF").exists());
        assert!(!spool.dir().join("HALF.env.tmp").exists());
        assert!(spool.dir().join("BUSY.msg.tmp").exists());
        assert_eq!(spool.read_message("GOOD").unwrap(), b"kept");
        assert_eq!(spool.read_env("GOOD").unwrap().unwrap(), env("GOOD"));

        // A corrupt complete envelope is moved aside.
        fs::write(spool.msg_path("BAD"), b"x").unwrap();
        fs::write(spool.env_path("BAD"), b"not toml [").unwrap();
        let r = spool.recover().unwrap();
        assert_eq!(r.corrupt, vec!["BAD"]);
        assert!(spool.dir().join("BAD.corrupt").exists());
        assert_eq!(spool.ids().unwrap(), vec!["GOOD"]);
    }
}
