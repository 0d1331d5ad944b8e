//! Listing a maildir: the entries of new/ and cur/, sized from their names
//! or the size index ([`crate::index`]), oldest first, each message once.
//!
//! This is the hot path of a POP3 login: opening a 100,000-message maildrop
//! must cost two `readdir`s and no per-file system call for the files we
//! delivered ourselves (they carry their time and CRLF size in the name).
//! Files of other agents cost an index lookup, or one read the first time.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::cache;
use crate::crlf::crlf_len;
use crate::index;
use crate::name::{self, NameInfo};
use crate::uid::{Arena, Frozen, Span};
use crate::{MessageInfo, StoreError};

/// The two Maildir directories holding messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Sub {
    New,
    Cur,
}

impl Sub {
    /// new/ is read before cur/: a message moved from new/ to cur/ between
    /// the two reads is then seen twice (and de-duplicated) rather than not
    /// at all.
    pub(super) const ALL: [Sub; 2] = [Sub::New, Sub::Cur];

    pub(super) fn dir(self) -> &'static str {
        match self {
            Sub::New => "new",
            Sub::Cur => "cur",
        }
    }
}

/// Where a listed message's file was when the snapshot was taken.
#[derive(Debug, Clone, Copy)]
pub(super) struct Location {
    pub(super) sub: Sub,
    /// The file name, in the snapshot's [`Frozen`] name buffer.
    pub(super) name: Span,
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
pub(super) struct DirListing {
    /// The messages, oldest first.
    pub(super) messages: Vec<MessageInfo>,
    /// Where each message's file is; parallel to `messages`.
    pub(super) locations: Vec<Location>,
    /// The file names `locations` point into (the messages' UIDs have a
    /// buffer of their own).
    pub(super) names: Frozen,
    /// Sizes of the listed foreign messages (what the index should contain).
    pub(super) index: HashMap<String, u64>,
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
///
/// A valid cached listing ([`cache`]) replaces all of that by one
/// sequential read; a listing made under the lock (`persist_index`) writes
/// the cache when the directories have settled.
pub(super) fn list(dir: &Path, persist_index: bool) -> Result<DirListing, StoreError> {
    let now = SystemTime::now();
    let stamp = cache::Stamp::of(dir);
    if let Some(stamp) = &stamp
        && let Some(listing) = cache::load(dir, stamp)
    {
        return Ok(listing);
    }
    let listing = scan_dirs(dir, persist_index)?;
    if persist_index
        && let Some(stamp) = stamp
        && stamp.settled(now)
    {
        cache::store(dir, &stamp, &listing);
    }
    Ok(listing)
}

/// [`list`] without the cache: both directories read.
fn scan_dirs(dir: &Path, persist_index: bool) -> Result<DirListing, StoreError> {
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
    Ok(DirListing {
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
        let uid = uid_span(&mut scan.arena, span, &name, &info).ok_or_else(too_many)?;
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

/// The UID of the file `name` (at `span` of `arena`): a part of the name
/// when it can be, else pushed into the arena (a decoded kept UID, a hash).
/// `None` if the arena outgrows its 32-bit offsets.
fn uid_span(arena: &mut Arena, span: Span, name: &str, info: &NameInfo) -> Option<Span> {
    if let Some(kept) = info.kept {
        if !kept.escaped {
            return span.sub(kept.start, kept.len);
        }
        if let Some(uid) = name::kept_uid(name, info) {
            return arena.push(&uid);
        }
    }
    match info.uid_len {
        Some(len) => Some(span.prefix(len)),
        None => arena.push(&name::uid_of(name)),
    }
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
pub(super) fn locate_all(dir: &Path) -> Result<HashMap<String, PathBuf>, StoreError> {
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

/// Finds the file of message `uid` in new/ or cur/ of `dir`.
pub(super) fn find_uid(dir: &Path, uid: &str) -> Result<Option<PathBuf>, StoreError> {
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
