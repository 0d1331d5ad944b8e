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
//! losing it costs nothing but time. It is written atomically (temporary
//! file, fsync, rename) so a crash never leaves a half-written index.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// File name of the index, inside the maildir directory (next to new/ cur/).
pub(crate) const INDEX_FILE: &str = "postoffice-index";
/// Temporary file the index is written to before being renamed into place.
const INDEX_TMP: &str = "postoffice-index.tmp";

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
/// empty). The caller must hold the maildrop lock, which is what makes the
/// fixed temporary name safe.
pub(crate) fn store(dir: &Path, sizes: &HashMap<String, u64>) -> io::Result<()> {
    let path = dir.join(INDEX_FILE);
    if sizes.is_empty() {
        return match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let tmp = dir.join(INDEX_TMP);
    let result = write_then_rename(&tmp, &path, sizes);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    crate::maildir::sync_dir(dir)
}

fn write_then_rename(tmp: &Path, path: &Path, sizes: &HashMap<String, u64>) -> io::Result<()> {
    let mut entries: Vec<_> = sizes.iter().collect();
    entries.sort_unstable();
    let mut w = BufWriter::new(File::create(tmp)?);
    for (key, size) in entries {
        writeln!(w, "{key}\t{size}")?;
    }
    let file = w.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    drop(file);
    fs::rename(tmp, path)
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
        assert!(!dir.path().join(INDEX_TMP).exists());

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
