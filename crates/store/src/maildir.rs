//! The Maildir backend.
//!
//! Layout: `<root>/<domain>/<local>/{tmp,new,cur}` plus two files of ours in
//! the maildir directory: `postoffice.lock` (the session lock) and
//! `postoffice-index` (the size cache, see [`crate::index`]). Everything else
//! is plain Maildir, so Dovecot, mutt and friends can read and modify the same
//! mailboxes; this code tolerates them renaming (new/ → cur/, flag suffixes)
//! and deleting files underneath a session.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crate::crlf::{CHUNK, CrlfConverter, CrlfReader, crlf_len};
use crate::index;
use crate::name::{self, MailboxName};
use crate::uid::{Arena, Frozen, Span};
use crate::{
    CommitReport, Delivered, ExpireReport, MailStore, Maildrop, MessageInfo, StoreError, Usage,
};

/// Name of the lock file inside each maildir. `flock` on it marks a POP3
/// session (RFC 1939 requires exclusive access to the maildrop).
pub(crate) const LOCK_FILE: &str = "postoffice.lock";

/// How many fresh names `deliver` tries if a temporary name already exists
/// (which would need a pid reused within the same microsecond).
const NAME_ATTEMPTS: usize = 8;

/// A store of one standard Maildir per mailbox under a root directory.
///
/// Cheap to share: it holds only the root path and the host name, and every
/// operation works directly on the filesystem, so several `Maildir` values
/// (or processes) on the same root cooperate through the lock files.
#[derive(Debug, Clone)]
pub struct Maildir {
    root: PathBuf,
    hostname: String,
}

impl Maildir {
    /// `root` is e.g. `<data_dir>/mail`; mailbox `alice@example.test` lives
    /// at `<root>/example.test/alice/`, whose `tmp/ new/ cur/` are created
    /// on demand (with the parent directories fsynced, so a freshly created
    /// mailbox survives a crash together with its first message).
    ///
    /// `hostname` goes into every delivered file name, as Maildir requires;
    /// it is sanitised here (`/ : ,` escaped, non-printables dropped).
    pub fn new(root: impl Into<PathBuf>, hostname: &str) -> Self {
        Self {
            root: root.into(),
            hostname: name::sanitize_hostname(hostname),
        }
    }

    /// The storage root this store was created with.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The maildir directory of `mailbox`, after validating the name (see
    /// [`StoreError::InvalidMailbox`]). The result is always a direct
    /// grandchild of the root: neither component can contain a separator or
    /// start with '.'.
    pub fn path_of(&self, mailbox: &str) -> Result<PathBuf, StoreError> {
        let MailboxName { local, domain } = name::parse_mailbox(mailbox)?;
        Ok(self.root.join(domain).join(local))
    }

    /// Deletes files in `tmp/` whose modification time is more than
    /// `max_age` ago: leftovers of deliveries interrupted by a crash (a live
    /// delivery keeps touching its file, so a generous `max_age` such as the
    /// Maildir-traditional 36 hours never hits one). Returns how many files
    /// were removed. A mailbox without storage has nothing to clean.
    pub fn cleanup_tmp(&self, mailbox: &str, max_age: Duration) -> Result<usize, StoreError> {
        let tmp = self.path_of(mailbox)?.join("tmp");
        let entries = match fs::read_dir(&tmp) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StoreError::io(format!("listing {}", tmp.display()))(e)),
        };
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(StoreError::io(format!("listing {}", tmp.display())))?;
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(StoreError::io(format!(
                        "checking the age of {}",
                        entry.path().display()
                    ))(e));
                }
            };
            if !meta.is_file() {
                continue;
            }
            let old = meta
                .modified()
                .ok()
                .and_then(|mtime| now.duration_since(mtime).ok())
                .is_some_and(|age| age > max_age);
            if !old {
                continue;
            }
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StoreError::io(format!(
                        "removing stale temporary file {}",
                        entry.path().display()
                    ))(e));
                }
            }
        }
        Ok(removed)
    }

    /// Lists the mailboxes that have storage (`local@domain`, sorted).
    /// Directories whose names could not have been produced by
    /// [`path_of`](Self::path_of) are skipped, so every returned name can be
    /// passed back to the other methods.
    pub fn mailboxes(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let domains = match fs::read_dir(&self.root) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => {
                return Err(StoreError::io(format!("listing {}", self.root.display()))(
                    e,
                ));
            }
        };
        for domain in domains {
            let domain =
                domain.map_err(StoreError::io(format!("listing {}", self.root.display())))?;
            let Ok(domain_name) = domain.file_name().into_string() else {
                continue;
            };
            if !is_dir_entry(&domain) {
                continue;
            }
            let users = match fs::read_dir(domain.path()) {
                Ok(u) => u,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(StoreError::io(format!(
                        "listing {}",
                        domain.path().display()
                    ))(e));
                }
            };
            for user in users {
                let user = user.map_err(StoreError::io(format!(
                    "listing {}",
                    domain.path().display()
                )))?;
                let Ok(local) = user.file_name().into_string() else {
                    continue;
                };
                if !is_dir_entry(&user) {
                    continue;
                }
                let mailbox = format!("{local}@{domain_name}");
                // Round-trip check: only names that map back to this very
                // directory (e.g. not an upper-case domain directory).
                match name::parse_mailbox(&mailbox) {
                    Ok(parsed) if parsed.domain == domain_name && parsed.local == local => {}
                    _ => continue,
                }
                let path = user.path();
                if path.join("cur").is_dir() || path.join("new").is_dir() {
                    out.push(mailbox);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Opens (creating if needed) the lock file of the maildir at `dir` and
    /// takes the exclusive lock without waiting.
    ///
    /// `flock` semantics make this right in every case that matters: locks
    /// belong to the open file description, so a second `open` in the same
    /// process conflicts just like one from another process, and the kernel
    /// drops the lock when the process dies — no stale lock files.
    fn lock(&self, dir: &Path) -> Result<File, StoreError> {
        let path = dir.join(LOCK_FILE);
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
        };
        let file = match open() {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                ensure_maildir(dir)?;
                open().map_err(StoreError::io(format!("creating {}", path.display())))?
            }
            Err(e) => return Err(StoreError::io(format!("opening {}", path.display()))(e)),
        };
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(TryLockError::WouldBlock) => Err(StoreError::Locked),
            Err(TryLockError::Error(e)) => {
                Err(StoreError::io(format!("locking {}", path.display()))(e))
            }
        }
    }

    /// Locks and lists the maildir at `dir`.
    fn open_dir(&self, dir: PathBuf) -> Result<MaildirDrop, StoreError> {
        let lock = self.lock(&dir)?;
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
}

/// Whether a directory entry is a real directory (symlinks are not
/// followed: a link planted under the root must not redirect storage).
fn is_dir_entry(entry: &fs::DirEntry) -> bool {
    entry.file_type().is_ok_and(|t| t.is_dir())
}

/// fsyncs a directory, making renames, creations and unlinks in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `path` and any missing parents, fsyncing each parent after a
/// creation so the new directory entry itself is durable (otherwise a crash
/// could lose a mailbox whose first message had been acknowledged).
fn ensure_dir(path: &Path) -> Result<(), StoreError> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(StoreError::Io {
                context: format!("{} exists but is not a directory", path.display()),
                source: io::Error::from(io::ErrorKind::NotADirectory),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io(format!("checking {}", path.display()))(e)),
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        ensure_dir(parent)?;
    }
    match fs::create_dir(path) {
        // Someone else may have won the race; fsync the parent anyway so we
        // never rely on their not-yet-done fsync.
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            return Err(StoreError::io(format!(
                "creating directory {} (check permissions of the data directory)",
                path.display()
            ))(e));
        }
        _ => {}
    }
    if let Some(parent) = parent {
        sync_dir(parent).map_err(StoreError::io(format!("syncing {}", parent.display())))?;
    }
    Ok(())
}

/// Creates the maildir at `dir` with its three subdirectories.
fn ensure_maildir(dir: &Path) -> Result<(), StoreError> {
    ensure_dir(dir)?;
    for sub in ["tmp", "new", "cur"] {
        ensure_dir(&dir.join(sub))?;
    }
    Ok(())
}

/// Whether something exists at `path` (without following a final symlink).
fn exists(path: &Path) -> Result<bool, StoreError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io(format!("checking {}", path.display()))(e)),
    }
}

/// The two Maildir directories holding messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Sub {
    New,
    Cur,
}

impl Sub {
    /// new/ is read before cur/: a message moved from new/ to cur/ between
    /// the two reads is then seen twice (and de-duplicated) rather than not
    /// at all.
    const ALL: [Sub; 2] = [Sub::New, Sub::Cur];

    fn dir(self) -> &'static str {
        match self {
            Sub::New => "new",
            Sub::Cur => "cur",
        }
    }
}

/// Where a listed message's file was when the snapshot was taken.
#[derive(Debug, Clone, Copy)]
struct Location {
    sub: Sub,
    /// The file name, in the snapshot's [`Frozen`] name buffer.
    name: Span,
}

/// A directory entry that looks like a message, before sizing. Its strings
/// live in the listing's [`Arena`]; the record itself stays small and
/// self-contained, so sorting 100,000 of them rarely leaves it.
struct Found {
    received: SystemTime,
    /// From a `,W=` field in the name.
    w_size: Option<u64>,
    name: Span,
    /// The name's sort key (without flags): a prefix of `name`.
    key: Span,
    /// Normally also a prefix of `name`; a hash stored separately if the
    /// name's base is not a valid UID.
    uid: Span,
    sub: Sub,
}

/// The entries of new/ and cur/, with their names in one buffer.
#[derive(Default)]
struct Scan {
    arena: Arena,
    found: Vec<Found>,
}

/// The result of listing a maildir.
struct Listing {
    messages: Vec<MessageInfo>,
    locations: Vec<Location>,
    /// The file names `locations` point into (the messages' UIDs have a
    /// buffer of their own).
    names: Frozen,
    /// Sizes of the listed foreign messages (what the index should contain).
    index: HashMap<String, u64>,
}

/// A fast, unkeyed hasher (FxHash) for de-duplicating UIDs: they are file
/// names chosen by delivery agents, not by remote parties, so there is no
/// flooding to defend against, and SipHash was a visible cost.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    fn write_u8(&mut self, b: u8) {
        self.write_u64(u64::from(b));
    }
    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Lists new/ and cur/ of the maildir at `dir`.
///
/// The cost is one `readdir` per directory plus, only for files that don't
/// carry `,W=` in their name, an index lookup (or a one-time read); names
/// that don't start with a timestamp cost one `stat`. `persist_index`
/// decides whether an updated size cache is written back, which is only safe
/// while holding the lock.
fn list(dir: &Path, persist_index: bool) -> Result<Listing, StoreError> {
    let mut scan = Scan::default();
    for sub in Sub::ALL {
        read_sub(dir, sub, &mut scan)?;
    }
    let Scan { arena, mut found } = scan;
    // Oldest first; ties broken by name (without flags, so the order does
    // not depend on what a mail client did to the flags). The names are
    // only looked at for ties, which are rare: comparing them eagerly made
    // every comparison chase two pointers.
    found.sort_unstable_by(|a, b| {
        a.received
            .cmp(&b.received)
            .then_with(|| arena.get(a.key).cmp(arena.get(b.key)))
            .then(a.sub.cmp(&b.sub))
    });
    // The same message seen in both new/ and cur/ (moved during listing)
    // must be listed once: duplicate UIDs would break POP3 clients.
    // Only possible when both directories had entries.
    if found
        .first()
        .is_some_and(|first| found.iter().any(|f| f.sub != first.sub))
    {
        let mut seen: HashSet<&str, BuildHasherDefault<FxHasher>> =
            HashSet::with_capacity_and_hasher(found.len(), Default::default());
        found.retain(|f| seen.insert(arena.get(f.uid)));
    }

    // The UIDs again, in listing order: UIDL then reads one buffer front to
    // back instead of jumping around the names (in directory-hash order),
    // which cost a cache miss per message.
    let mut uids = Arena::with_capacity(found.iter().map(|f| f.uid.len()).sum());
    for f in &mut found {
        f.uid = uids
            .push(arena.get(f.uid))
            .ok_or_else(|| too_many_names(dir))?;
    }
    let uids = uids.freeze();
    let names = arena.freeze();
    let old = index::load(dir);
    let mut fresh = HashMap::new();
    let mut changed = !old.clean;
    let mut messages = Vec::with_capacity(found.len());
    let mut locations = Vec::with_capacity(found.len());
    for f in found {
        let size = match f.w_size {
            Some(size) => size,
            None => {
                let key = names.get(f.key);
                match old.sizes.get(key) {
                    Some(&size) => {
                        fresh.insert(key.to_owned(), size);
                        size
                    }
                    None => {
                        let path = dir.join(f.sub.dir()).join(names.get(f.name));
                        match File::open(&path).and_then(crlf_len) {
                            Ok(size) => {
                                fresh.insert(key.to_owned(), size);
                                changed = true;
                                size
                            }
                            // Deleted by another agent while we listed.
                            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                            Err(e) => {
                                return Err(StoreError::io(format!(
                                    "reading {} to compute its size",
                                    path.display()
                                ))(e));
                            }
                        }
                    }
                }
            }
        };
        messages.push(MessageInfo {
            size,
            uid: uids.uid(f.uid),
            received: f.received,
        });
        locations.push(Location {
            sub: f.sub,
            name: f.name,
        });
    }
    // Entries only ever get dropped or added, so equal counts and no
    // additions mean the index is unchanged.
    changed |= fresh.len() != old.sizes.len();
    if persist_index && changed {
        // Only a cache: failing to write it (disk full, permissions) must
        // not stop the user from reading mail. It is retried next time.
        let _ = index::store(dir, &fresh);
    }
    Ok(Listing {
        messages,
        locations,
        names,
        index: fresh,
    })
}

/// Appends the message-like entries of `dir/<sub>` to `scan`.
fn read_sub(dir: &Path, sub: Sub, scan: &mut Scan) -> Result<(), StoreError> {
    let path = dir.join(sub.dir());
    let entries = match fs::read_dir(&path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(format!("listing {}", path.display()))(e)),
    };
    let too_many = || too_many_names(&path);
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::Io {
            context: format!("listing {}", path.display()),
            source: e,
        })?;
        // Non-UTF-8 names can't be indexed or turned into a UID reliably;
        // no Maildir agent produces them.
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !name::looks_like_message(&name) {
            continue;
        }
        // Free on Linux (d_type); only symlinks and oddities are skipped.
        match entry.file_type() {
            Ok(t) if t.is_file() => {}
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(StoreError::Io {
                    context: format!("checking {}", entry.path().display()),
                    source: e,
                });
            }
        }
        let info = name::parse(&name);
        let received = match info.received {
            Some(t) => t,
            None => match entry.metadata().and_then(|m| m.modified()) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(StoreError::Io {
                        context: format!("reading the time of {}", entry.path().display()),
                        source: e,
                    });
                }
            },
        };
        let span = scan.arena.push(&name).ok_or_else(too_many)?;
        let uid = match info.uid_len {
            Some(len) => span.prefix(len),
            None => scan.arena.push(&name::uid_of(&name)).ok_or_else(too_many)?,
        };
        scan.found.push(Found {
            received,
            w_size: info.w_size,
            name: span,
            key: span.prefix(info.key_len),
            uid,
            sub,
        });
    }
    Ok(())
}

/// The (theoretical) failure of an [`Arena`] outgrowing its 32-bit offsets.
fn too_many_names(dir: &Path) -> StoreError {
    StoreError::Io {
        context: format!("listing {}", dir.display()),
        source: io::Error::other("the file names of one maildrop exceed 4 GiB"),
    }
}

/// Finds the current file of every message in the maildir, by UID. Used when
/// a file is not where the snapshot saw it because another agent moved it
/// (new/ → cur/) or changed its flags (new `:2,` suffix).
fn locate_all(dir: &Path) -> Result<HashMap<String, PathBuf>, StoreError> {
    let mut scan = Scan::default();
    for sub in Sub::ALL {
        read_sub(dir, sub, &mut scan)?;
    }
    let Scan { arena, found } = scan;
    Ok(found
        .into_iter()
        .map(|f| {
            let path = dir.join(f.sub.dir()).join(arena.get(f.name));
            (arena.get(f.uid).to_owned(), path)
        })
        .collect())
}

/// Removes the temporary file of a failed delivery when dropped.
struct TmpGuard<'a> {
    path: &'a Path,
    armed: bool,
}

impl Drop for TmpGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(self.path);
        }
    }
}

/// Streams `message` into `file`, normalising to CRLF, and returns the
/// number of bytes stored. Memory use is bounded by the chunk size whatever
/// the message size.
fn copy_crlf(message: &mut dyn Read, file: &mut File, path: &Path) -> Result<u64, StoreError> {
    let mut conv = CrlfConverter::new();
    let mut inbuf = vec![0u8; CHUNK];
    let mut out = Vec::with_capacity(2 * CHUNK + 2);
    let mut seen_input = false;
    let mut size = 0u64;
    let write_err = || format!("writing {} (is the disk full?)", path.display());
    loop {
        let n = match message.read(&mut inbuf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StoreError::MessageRead(e)),
        };
        seen_input = true;
        conv.push(&inbuf[..n], &mut out);
        file.write_all(&out).map_err(StoreError::io(write_err()))?;
        size += out.len() as u64;
        out.clear();
    }
    if !seen_input {
        return Err(StoreError::EmptyMessage);
    }
    conv.finish(&mut out);
    file.write_all(&out).map_err(StoreError::io(write_err()))?;
    Ok(size + out.len() as u64)
}

/// The quarantine folder inside a user's maildir: a Maildir++ style
/// sub-folder, so POP3 (which lists only new/ and cur/ of the top level)
/// never shows it, while IMAP-era tools would see a "Quarantine" folder.
const QUARANTINE: &str = ".Quarantine";

impl Maildir {
    /// Durable delivery into the maildir at `dir` (tmp, fsync, rename into
    /// new/, fsync new/).
    fn deliver_dir(&self, dir: &Path, message: &mut dyn Read) -> Result<Delivered, StoreError> {
        let dir = dir.to_path_buf();
        let tmp_dir = dir.join("tmp");

        // Reserve a unique temporary name; create the maildir on first use.
        let mut created_dirs = false;
        let mut attempt = 0;
        let (base, tmp_path, mut file) = loop {
            let base = name::unique_name(&self.hostname);
            let tmp_path = tmp_dir.join(&base);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp_path)
            {
                Ok(file) => break (base, tmp_path, file),
                Err(e) if e.kind() == io::ErrorKind::NotFound && !created_dirs => {
                    ensure_maildir(&dir)?;
                    created_dirs = true;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < NAME_ATTEMPTS => {
                    attempt += 1;
                }
                Err(e) => {
                    return Err(StoreError::io(format!("creating {}", tmp_path.display()))(
                        e,
                    ));
                }
            }
        };
        let mut guard = TmpGuard {
            path: &tmp_path,
            armed: true,
        };

        let size = copy_crlf(message, &mut file, &tmp_path)?;
        file.sync_all().map_err(StoreError::io(format!(
            "syncing {} to disk",
            tmp_path.display()
        )))?;
        drop(file);

        // S= (physical size) and W= (CRLF size) are equal because we store
        // CRLF; W= lets every later listing skip opening the file.
        let final_name = format!("{base},S={size},W={size}");
        let new_dir = dir.join("new");
        let final_path = new_dir.join(&final_name);
        fs::rename(&tmp_path, &final_path).map_err(StoreError::io(format!(
            "moving {} to {}",
            tmp_path.display(),
            final_path.display()
        )))?;
        guard.armed = false;
        if let Err(e) = sync_dir(&new_dir) {
            // Not known to be durable: report failure, and take the message
            // back so the sender's retry doesn't create a duplicate.
            let _ = fs::remove_file(&final_path);
            return Err(StoreError::io(format!("syncing {}", new_dir.display()))(e));
        }
        Ok(Delivered {
            // Normally the base itself; hashed if a very long host name
            // pushed it past the 70-character UID limit.
            uid: name::uid_of(&base),
            size,
        })
    }

    /// Find the file of message `uid` in new/ or cur/ of `dir`.
    fn find_uid(dir: &Path, uid: &str) -> Result<Option<PathBuf>, StoreError> {
        for sub in Sub::ALL {
            let path = dir.join(sub.dir());
            let entries = match fs::read_dir(&path) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io(format!("listing {}", path.display()))(e)),
            };
            for entry in entries.flatten() {
                let file_name = entry.file_name();
                let Some(n) = file_name.to_str() else {
                    continue;
                };
                if name::uid_of(name::key_of(n)) == uid {
                    return Ok(Some(entry.path()));
                }
            }
        }
        Ok(None)
    }

    fn quarantine_dir(&self, mailbox: &str) -> Result<PathBuf, StoreError> {
        Ok(self.path_of(mailbox)?.join(QUARANTINE))
    }
}

impl MailStore for Maildir {
    fn deliver(&self, mailbox: &str, message: &mut dyn Read) -> Result<Delivered, StoreError> {
        let dir = self.path_of(mailbox)?;
        self.deliver_dir(&dir, message)
    }

    fn discard(&self, mailbox: &str, delivered: &Delivered) -> Result<(), StoreError> {
        let dir = self.path_of(mailbox)?;
        if let Some(path) = Self::find_uid(&dir, &delivered.uid)? {
            fs::remove_file(&path)
                .map_err(StoreError::io(format!("removing {}", path.display())))?;
            sync_dir(&dir.join("new"))
                .map_err(StoreError::io(format!("syncing {}", dir.display())))?;
        }
        Ok(())
    }

    fn deliver_quarantine(
        &self,
        mailbox: &str,
        message: &mut dyn Read,
    ) -> Result<Delivered, StoreError> {
        let dir = self.quarantine_dir(mailbox)?;
        self.deliver_dir(&dir, message)
    }

    fn quarantine_list(&self, mailbox: &str) -> Result<Vec<MessageInfo>, StoreError> {
        let dir = self.quarantine_dir(mailbox)?;
        if !exists(&dir)? {
            return Ok(Vec::new());
        }
        Ok(list(&dir, false)?.messages)
    }

    fn quarantine_read(
        &self,
        mailbox: &str,
        uid: &str,
    ) -> Result<Box<dyn Read + Send>, StoreError> {
        let dir = self.quarantine_dir(mailbox)?;
        let path =
            Self::find_uid(&dir, uid)?.ok_or_else(|| StoreError::NoSuchUid(uid.to_string()))?;
        let f = File::open(&path).map_err(StoreError::io(format!("opening {}", path.display())))?;
        Ok(Box::new(f))
    }

    fn quarantine_release(&self, mailbox: &str, uid: &str) -> Result<(), StoreError> {
        let qdir = self.quarantine_dir(mailbox)?;
        let path =
            Self::find_uid(&qdir, uid)?.ok_or_else(|| StoreError::NoSuchUid(uid.to_string()))?;
        let file_name = path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        let dir = self.path_of(mailbox)?;
        ensure_maildir(&dir)?;
        let target = dir.join("new").join(&file_name);
        // Same file system: a rename keeps the name, so the UID stays.
        fs::rename(&path, &target).map_err(StoreError::io(format!(
            "moving {} to {}",
            path.display(),
            target.display()
        )))?;
        sync_dir(&dir.join("new")).map_err(StoreError::io(format!("syncing {}", dir.display())))?;
        if let Some(parent) = path.parent() {
            let _ = sync_dir(parent);
        }
        Ok(())
    }

    fn quarantine_delete(&self, mailbox: &str, uid: &str) -> Result<(), StoreError> {
        let qdir = self.quarantine_dir(mailbox)?;
        let path =
            Self::find_uid(&qdir, uid)?.ok_or_else(|| StoreError::NoSuchUid(uid.to_string()))?;
        fs::remove_file(&path).map_err(StoreError::io(format!("removing {}", path.display())))?;
        if let Some(parent) = path.parent() {
            let _ = sync_dir(parent);
        }
        Ok(())
    }

    fn open(&self, mailbox: &str) -> Result<Box<dyn Maildrop>, StoreError> {
        let dir = self.path_of(mailbox)?;
        Ok(Box::new(self.open_dir(dir)?))
    }

    fn expire(
        &self,
        mailbox: &str,
        cutoff: SystemTime,
        dry_run: bool,
    ) -> Result<ExpireReport, StoreError> {
        let dir = self.path_of(mailbox)?;
        if !exists(&dir)? {
            return Ok(ExpireReport::default());
        }
        let snapshot = self.open_dir(dir)?;
        let victims: Vec<usize> = snapshot
            .messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m.received < cutoff)
            .map(|(i, _)| i)
            .collect();
        let removed = if dry_run {
            victims
        } else {
            snapshot.delete(&victims)?
        };
        let expired: Vec<MessageInfo> = removed
            .into_iter()
            .filter_map(|i| snapshot.messages.get(i).cloned())
            .collect();
        let bytes = expired.iter().map(|m| m.size).sum();
        Ok(ExpireReport { expired, bytes })
    }

    fn usage(&self, mailbox: &str) -> Result<Usage, StoreError> {
        let dir = self.path_of(mailbox)?;
        if !exists(&dir)? {
            return Ok(Usage::default());
        }
        // Deliberately lock-free: taking the lock, even briefly, could make a
        // concurrent POP3 login fail with "in use". Without the lock we must
        // not write the index, so unindexed foreign files are read each time
        // (until the next session caches them).
        let listing = list(&dir, false)?;
        Ok(Usage {
            messages: listing.messages.len() as u64,
            bytes: listing.messages.iter().map(|m| m.size).sum(),
        })
    }

    fn remove_mailbox(&self, mailbox: &str) -> Result<(), StoreError> {
        let dir = self.path_of(mailbox)?;
        if !exists(&dir)? {
            return Ok(());
        }
        // Refuse while a session is reading it; the lock is held until the
        // directory (including the lock file) is gone.
        let lock = self.lock(&dir)?;
        fs::remove_dir_all(&dir).map_err(StoreError::io(format!("removing {}", dir.display())))?;
        drop(lock);
        if let Some(domain_dir) = dir.parent() {
            sync_dir(domain_dir)
                .map_err(StoreError::io(format!("syncing {}", domain_dir.display())))?;
            // Drop the domain directory once its last mailbox is gone; fails
            // harmlessly if it is not empty.
            if fs::remove_dir(domain_dir).is_ok() {
                let _ = sync_dir(&self.root);
            }
        }
        Ok(())
    }
}

/// A locked snapshot of one maildir (see [`Maildrop`]).
struct MaildirDrop {
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

impl Maildrop for MaildirDrop {
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
}
