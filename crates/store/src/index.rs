//! The size cache for foreign message files.
//!
//! Our own deliveries carry their CRLF size in the name (`,W=<n>`), so a
//! listing needs no per-file I/O. Files written by other agents may lack it;
//! computing their size means reading them once, and this cache makes that
//! "once" true across sessions.
//!
//! Format: one `<key>\t<size>\n` line per foreign message, where `<key>` is
//! the file name without the `:2,` flags suffix (so flag changes by a mail
//! client don't invalidate it). The file is only a cache: anything unparsable
//! is ignored and recomputed, entries for vanished messages are dropped, and
//! losing it costs nothing but time. It is written like every other file
//! ([`durable`](postoffice_common::durable): temporary file, fsync, rename,
//! fsync of the directory, mode `0600`), so a crash never leaves a
//! half-written index.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use postoffice_common::durable::AtomicFile;

/// File name of the index, inside the maildir directory (next to new/ cur/).
pub(crate) const INDEX_FILE: &str = "postoffice-index";

/// The parsed index.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub(crate) sizes: HashMap<String, u64>,
    /// False if some line could not be parsed: rewriting the file then
    /// cleans it up even if no entry changed.
    pub(crate) clean: bool,
}

/// Reads the index from `dir`. Never fails: a missing or unreadable index is
/// just an empty cache.
pub(crate) fn load(dir: &Path) -> Index {
    let data = match fs::read(dir.join(INDEX_FILE)) {
        Ok(data) => data,
        Err(e) => {
            return Index {
                sizes: HashMap::new(),
                // A missing file is clean; an unreadable one should be
                // replaced.
                clean: e.kind() == io::ErrorKind::NotFound,
            };
        }
    };
    let mut index = Index {
        sizes: HashMap::new(),
        clean: true,
    };
    for line in data.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        match parse_line(line) {
            Some((key, size)) => {
                index.sizes.insert(key.to_owned(), size);
            }
            None => index.clean = false,
        }
    }
    index
}

pub(crate) fn parse_line(line: &[u8]) -> Option<(&str, u64)> {
    let line = std::str::from_utf8(line).ok()?;
    let (key, size) = line.split_once('\t')?;
    if !crate::name::looks_like_message(key)
        || key.contains(':')
        || size.is_empty()
        || !size.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((key, size.parse().ok()?))
}

/// Atomically replaces the index in `dir` with `sizes` (or removes it when
/// empty). The caller must hold the maildrop lock: two writers could not
/// corrupt the file (each has a temporary file of its own), but the last
/// one would win with what may be the older view.
pub(crate) fn store(dir: &Path, sizes: &HashMap<String, u64>) -> io::Result<()> {
    let path = dir.join(INDEX_FILE);
    if sizes.is_empty() {
        return match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let mut entries: Vec<_> = sizes.iter().collect();
    entries.sort_unstable();
    // Dropped on error before the commit, the temporary file is removed.
    let mut w = BufWriter::new(AtomicFile::create(&path)?);
    for (key, size) in entries {
        writeln!(w, "{key}\t{size}")?;
    }
    w.into_inner()
        .map_err(io::IntoInnerError::into_error)?
        .commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).sizes.is_empty());
        assert!(load(dir.path()).clean);

        let mut sizes = HashMap::new();
        sizes.insert("1.a.host".to_owned(), 12);
        sizes.insert("foreign".to_owned(), 7);
        store(dir.path(), &sizes).unwrap();
        let loaded = load(dir.path());
        assert!(loaded.clean);
        assert_eq!(loaded.sizes, sizes);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [INDEX_FILE]);

        fs::write(
            dir.path().join(INDEX_FILE),
            b"foreign\t7\ngarbage\n\xff\xfe\t3\nx\t-1\ny\t\n.dot\t4\nz:2,S\t5\nok\t9\n",
        )
        .unwrap();
        let loaded = load(dir.path());
        assert!(!loaded.clean);
        assert_eq!(loaded.sizes.len(), 2);
        assert_eq!(loaded.sizes["foreign"], 7);
        assert_eq!(loaded.sizes["ok"], 9);

        store(dir.path(), &HashMap::new()).unwrap();
        assert!(!dir.path().join(INDEX_FILE).exists());
    }
}
