//! The cached listing: the sorted result of the last listing of new/ and
//! cur/, validated by the two directories' identities and modification
//! times, so that opening a big maildrop reads one file front to back
//! instead of two directories.
//!
//! Why: on ext4 a directory of 100,000 entries is an htree whose blocks
//! `readdir` returns in hash order. After a restart (page cache cold) those
//! reads are scattered over the disk, and a listing cost more than Dovecot's
//! whole session, which reads its own index files sequentially. Warm, the
//! `readdir` system calls were still half of a login's time.
//!
//! The file, `postoffice-listing` in the maildir, is only a cache:
//!
//! ```text
//! postoffice-listing 1
//! <new ino> <new mtime s> <new mtime ns> <cur ino> <cur mtime s> <cur mtime ns> <count>
//! <n|c> <received s>[.<ns>] <size> <file name>      (count lines, listing order)
//! end
//! ```
//!
//! It is used only when both directories still have the recorded inode and
//! modification time, that is when no file was added, removed or renamed in
//! them since (by us or by any other Maildir agent: a foreign delivery or a
//! flag change shows up as a changed time, and the next listing reads the
//! directories again and writes a new cache). Anything unexpected — a
//! missing or truncated file, a line that does not parse, a count that does
//! not match — means "no cache": the directories are read as before.
//!
//! Directory times have the kernel's tick as resolution, so a change in
//! the same tick as the recorded time could keep the time unchanged. A cache
//! is therefore only written when both times are at least [`SETTLE`] older
//! than the moment the directories were read; until then every listing reads
//! the directories (a busy maildrop simply never gets a stale cache).
//!
//! It is written like the size index, atomically (temporary file, rename)
//! and private (`0600`); it is not fsynced, because losing it costs one
//! directory listing and the validation above rejects a torn file.

use std::fs::{self, Metadata};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postoffice_common::durable;

use super::scan::{DirListing, Location, Sub};
use crate::MessageInfo;
use crate::name;
use crate::uid::Arena;

/// File name of the cache, inside the maildir directory.
pub(crate) const CACHE_FILE: &str = "postoffice-listing";

const MAGIC: &str = "postoffice-listing 1\n";

/// How much older than the listing both directory times must be for the
/// cache to be trusted later (many times the coarsest kernel tick).
pub(super) const SETTLE: Duration = Duration::from_secs(2);

/// The identity and modification time of one directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirStamp {
    ino: u64,
    secs: i64,
    nsecs: i64,
}

impl DirStamp {
    fn of(meta: &Metadata) -> DirStamp {
        DirStamp {
            ino: meta.ino(),
            secs: meta.mtime(),
            nsecs: meta.mtime_nsec(),
        }
    }

    fn time(self) -> Option<SystemTime> {
        let secs = u64::try_from(self.secs).ok()?;
        let nsecs = u32::try_from(self.nsecs).ok()?;
        UNIX_EPOCH.checked_add(Duration::new(secs, nsecs))
    }
}

/// new/ and cur/ as they are before a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    new: DirStamp,
    cur: DirStamp,
}

impl Stamp {
    /// Stats new/ and cur/ of `dir`; `None` if either is missing or
    /// cannot be read (no cache is used or written then).
    pub(super) fn of(dir: &Path) -> Option<Stamp> {
        let new = fs::metadata(dir.join(Sub::New.dir())).ok()?;
        let cur = fs::metadata(dir.join(Sub::Cur.dir())).ok()?;
        Some(Stamp {
            new: DirStamp::of(&new),
            cur: DirStamp::of(&cur),
        })
    }

    /// Whether both times lie at least [`SETTLE`] before `now`, so that
    /// any later change will show as a different time.
    pub(super) fn settled(&self, now: SystemTime) -> bool {
        [self.new, self.cur].iter().all(|d| {
            d.time()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= SETTLE)
        })
    }
}

/// The cached listing of `dir`, if there is one for exactly `stamp`.
pub(super) fn load(dir: &Path, stamp: &Stamp) -> Option<DirListing> {
    let text = fs::read_to_string(dir.join(CACHE_FILE)).ok()?;
    parse(text, stamp)
}

fn parse(text: String, stamp: &Stamp) -> Option<DirListing> {
    let body = text.strip_prefix(MAGIC)?;
    let (header, _) = body.split_once('\n')?;
    let mut fields = header.split(' ').map(str::parse::<i64>);
    let mut next = || fields.next()?.ok();
    let recorded = Stamp {
        new: DirStamp {
            ino: u64::try_from(next()?).ok()?,
            secs: next()?,
            nsecs: next()?,
        },
        cur: DirStamp {
            ino: u64::try_from(next()?).ok()?,
            secs: next()?,
            nsecs: next()?,
        },
    };
    let count = usize::try_from(next()?).ok()?;
    if recorded != *stamp {
        return None;
    }
    let mut pos = MAGIC.len() + header.len() + 1;
    let mut arena = Arena::from_string(text);
    let mut messages = Vec::with_capacity(count);
    let mut locations = Vec::with_capacity(count);
    let mut index = std::collections::HashMap::new();
    let mut uids = Vec::with_capacity(count);
    for _ in 0..count {
        let (line_end, sub, received, size, direct, computed) = {
            let text = arena.text();
            let rest = text.get(pos..)?;
            let line_end = pos + memchr::memchr(b'\n', rest.as_bytes())?;
            let line = &text[pos..line_end];
            let (sub, line) = match line.get(..2)? {
                "n " => (Sub::New, &line[2..]),
                "c " => (Sub::Cur, &line[2..]),
                _ => return None,
            };
            let (received, line) = line.split_once(' ')?;
            let (size, name) = line.split_once(' ')?;
            if name.is_empty() {
                return None;
            }
            let received = parse_time(received)?;
            let size: u64 = parse_u64(size)?;
            let span = arena.span_of(line_end - name.len()..line_end)?;
            let info = name::parse(name);
            if info.w_size.is_none() {
                index.insert(name::key_of(name).to_owned(), size);
            }
            // The UID is normally a part of the name; only decoded or
            // hashed UIDs need text of their own.
            let direct = match (info.kept, info.uid_len) {
                (Some(k), _) if !k.escaped => Some(span.sub(k.start, k.len)?),
                (Some(_), _) => None,
                (None, Some(len)) => Some(span.prefix(len)),
                (None, None) => None,
            };
            let computed = match direct {
                Some(_) => None,
                None => Some(name::uid_of(name)),
            };
            (
                line_end,
                sub,
                received,
                size,
                direct.map(|d| (d, span)),
                computed.map(|c| (c, span)),
            )
        };
        let (uid, span) = match (direct, computed) {
            (Some(d), _) => d,
            (None, Some((c, span))) => (arena.push(&c)?, span),
            (None, None) => return None,
        };
        uids.push(uid);
        messages.push((size, received));
        locations.push(Location { sub, name: span });
        pos = line_end + 1;
    }
    if arena.text().get(pos..)? != "end\n" {
        return None;
    }
    let frozen = arena.freeze();
    let messages = messages
        .into_iter()
        .zip(uids)
        .map(|((size, received), uid)| MessageInfo {
            size,
            uid: frozen.uid(uid),
            received,
        })
        .collect();
    Some(DirListing {
        messages,
        locations,
        names: frozen,
        index,
    })
}

fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_time(s: &str) -> Option<SystemTime> {
    let (secs, nanos) = match s.split_once('.') {
        Some((s, n)) => (parse_u64(s)?, u32::try_from(parse_u64(n)?).ok()?),
        None => (parse_u64(s)?, 0),
    };
    if nanos >= 1_000_000_000 {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Writes the cache of `dir` for `listing`, taken when the directories
/// looked like `stamp`. Best effort: a cache that cannot be written is
/// simply not there next time.
pub(super) fn store(dir: &Path, stamp: &Stamp, listing: &DirListing) {
    let _ = write(dir, stamp, listing);
}

fn write(dir: &Path, stamp: &Stamp, listing: &DirListing) -> io::Result<()> {
    let mut out = String::with_capacity(MAGIC.len() + 64 + listing.messages.len() * 96);
    out.push_str(MAGIC);
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "{} {} {} {} {} {} {}",
        stamp.new.ino,
        stamp.new.secs,
        stamp.new.nsecs,
        stamp.cur.ino,
        stamp.cur.secs,
        stamp.cur.nsecs,
        listing.messages.len()
    );
    for (m, loc) in listing.messages.iter().zip(&listing.locations) {
        let sub = match loc.sub {
            Sub::New => 'n',
            Sub::Cur => 'c',
        };
        let t = m.received.duration_since(UNIX_EPOCH).unwrap_or_default();
        let name = listing.names.get(loc.name);
        if name.contains('\n') {
            return Ok(());
        }
        let _ = if t.subsec_nanos() == 0 {
            writeln!(out, "{sub} {} {} {name}", t.as_secs(), m.size)
        } else {
            writeln!(
                out,
                "{sub} {}.{} {} {name}",
                t.as_secs(),
                t.subsec_nanos(),
                m.size
            )
        };
    }
    out.push_str("end\n");
    let target = dir.join(CACHE_FILE);
    let tmp = dir.join(format!(
        "{CACHE_FILE}.tmp.{}",
        postoffice_common::ids::unique_id()
    ));
    let result = (|| {
        let mut file = durable::create_new(&tmp)?;
        file.write_all(out.as_bytes())?;
        drop(file);
        fs::rename(&tmp, &target)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        assert_eq!(parse_time("5"), Some(UNIX_EPOCH + Duration::from_secs(5)));
        assert_eq!(parse_time("5.7"), Some(UNIX_EPOCH + Duration::new(5, 7)));
        assert_eq!(parse_time("5.1000000000"), None);
        assert_eq!(parse_time("-1"), None);
        assert_eq!(parse_time(""), None);
    }
}
