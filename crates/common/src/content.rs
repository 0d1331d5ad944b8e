//! Message content that may be too large to hold in memory.
//!
//! A message arriving over SMTP is written to a [`SpoolWriter`]: it stays
//! in memory while it is small (and while the process-wide [`Budget`] for
//! in-memory content allows), and moves to an anonymous file in the spool
//! directory as soon as it grows past that — a file that is unlinked the
//! moment it is created, so nothing is ever left behind, not even by a
//! crash. The finished [`Content`] can be read any number of times, from
//! any offset and by several readers at once (positional reads), which is
//! what verification (clamd, DKIM body hashes) and delivery to several
//! recipients need.
//!
//! [`Pieces`] is a message assembled without copying: header lines made
//! in memory, followed by (part of) a [`Content`].

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A process-wide cap on message octets held in memory by all transactions
/// together. Content that would pass it goes to the spool file instead.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: AtomicU64,
}

impl Budget {
    /// A budget of `limit` octets.
    pub fn new(limit: u64) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// Octets held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Take `n` octets if they fit.
    fn try_charge(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + n <= self.limit).then_some(u + n)
            })
            .is_ok()
    }

    fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Octets of [`Budget`] held by one piece of content; given back on drop.
#[derive(Debug)]
struct Charge {
    budget: Arc<Budget>,
    octets: u64,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.octets);
    }
}

/// Finished message content: in memory, or in an anonymous spool file.
#[derive(Debug)]
pub struct Content {
    data: Data,
    /// What the in-memory bytes cost the budget.
    _charge: Option<Charge>,
}

#[derive(Debug)]
enum Data {
    Memory(Vec<u8>),
    File { file: File, len: u64 },
}

impl Content {
    /// Content held in memory (not charged to any budget).
    pub fn from_vec(data: Vec<u8>) -> Content {
        Content {
            data: Data::Memory(data),
            _charge: None,
        }
    }

    /// Content read from an existing file (a queued message, say); its
    /// length is the file's length now.
    pub fn from_file(file: File) -> io::Result<Content> {
        let len = file.metadata()?.len();
        Ok(Content {
            data: Data::File { file, len },
            _charge: None,
        })
    }

    /// Length in octets.
    pub fn len(&self) -> u64 {
        match &self.data {
            Data::Memory(v) => v.len() as u64,
            Data::File { len, .. } => *len,
        }
    }

    /// No content at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole content, if it is in memory.
    pub fn as_slice(&self) -> Option<&[u8]> {
        match &self.data {
            Data::Memory(v) => Some(v),
            Data::File { .. } => None,
        }
    }

    /// The first `max` octets (fewer if the content is shorter): borrowed
    /// from memory, or read from the file.
    pub fn prefix(&self, max: usize) -> io::Result<Cow<'_, [u8]>> {
        match &self.data {
            Data::Memory(v) => Ok(Cow::Borrowed(&v[..v.len().min(max)])),
            Data::File { .. } => {
                let mut out = Vec::with_capacity(max.min(self.len() as usize));
                self.reader_at(0).take(max as u64).read_to_end(&mut out)?;
                Ok(Cow::Owned(out))
            }
        }
    }

    /// The start of the content up to and including the first empty line
    /// (`CRLF CRLF`: the end of a message's header section), or the first
    /// `max` octets if there is none: borrowed from memory, or read from the
    /// file a few KiB at a time (a large body is not read).
    pub fn head(&self, max: usize) -> io::Result<Cow<'_, [u8]>> {
        match &self.data {
            Data::Memory(v) => {
                let window = &v[..v.len().min(max)];
                let end = memchr::memmem::find(window, b"\r\n\r\n").map_or(window.len(), |p| p + 4);
                Ok(Cow::Borrowed(&window[..end]))
            }
            Data::File { .. } => read_head(&mut self.reader_at(0), max).map(Cow::Owned),
        }
    }

    /// A reader from `offset` to the end. Readers are independent: any
    /// number may be open at once.
    pub fn reader_at(&self, offset: u64) -> ContentReader<'_> {
        ContentReader {
            content: self,
            pos: offset.min(self.len()),
        }
    }
}

/// Reads a [`Content`] from some offset (see [`Content::reader_at`]).
#[derive(Debug)]
pub struct ContentReader<'a> {
    content: &'a Content,
    pos: u64,
}

impl Read for ContentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &self.content.data {
            Data::Memory(v) => {
                let rest = &v[self.pos as usize..];
                let n = rest.len().min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                n
            }
            Data::File { file, len } => {
                let want = buf.len().min((len - self.pos) as usize);
                if want == 0 {
                    return Ok(0);
                }
                file.read_at(&mut buf[..want], self.pos)?
            }
        };
        self.pos += n as u64;
        Ok(n)
    }
}

/// Collects content as it arrives: in memory up to `spill_at` octets (and
/// as long as the budget allows), then in an anonymous file in the spool
/// directory.
#[derive(Debug)]
pub struct SpoolWriter {
    dir: PathBuf,
    spill_at: usize,
    budget: Option<Arc<Budget>>,
    mem: Vec<u8>,
    charge: Option<Charge>,
    file: Option<File>,
    len: u64,
}

impl SpoolWriter {
    /// A writer spilling into `dir` (which must exist) past `spill_at`
    /// octets, charging what it holds in memory to `budget`.
    pub fn new(dir: &Path, spill_at: usize, budget: Option<Arc<Budget>>) -> SpoolWriter {
        SpoolWriter {
            dir: dir.to_path_buf(),
            spill_at,
            budget,
            mem: Vec::new(),
            charge: None,
            file: None,
            len: 0,
        }
    }

    /// Octets written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Nothing written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the content went to a file.
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// Append `data`.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.len += data.len() as u64;
        if let Some(file) = &mut self.file {
            return file.write_all(data);
        }
        if self.mem.len() + data.len() <= self.spill_at && self.charge_more(data.len() as u64) {
            self.mem.extend_from_slice(data);
            return Ok(());
        }
        let mut file = anonymous_file(&self.dir)?;
        file.write_all(&self.mem)?;
        file.write_all(data)?;
        self.mem = Vec::new();
        self.charge = None;
        self.file = Some(file);
        Ok(())
    }

    fn charge_more(&mut self, n: u64) -> bool {
        let Some(budget) = &self.budget else {
            return true;
        };
        if !budget.try_charge(n) {
            return false;
        }
        match &mut self.charge {
            Some(c) => c.octets += n,
            None => {
                self.charge = Some(Charge {
                    budget: Arc::clone(budget),
                    octets: n,
                })
            }
        }
        true
    }

    /// The finished content. A file is not fsynced: it is scratch space,
    /// and what is acknowledged is the copy delivered from it.
    pub fn finish(self) -> Content {
        match self.file {
            Some(file) => Content {
                data: Data::File {
                    file,
                    len: self.len,
                },
                _charge: None,
            },
            None => Content {
                data: Data::Memory(self.mem),
                _charge: self.charge,
            },
        }
    }
}

impl Write for SpoolWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        SpoolWriter::write(self, buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Name prefix of the (short-lived) spool files; anything with it found in
/// the spool directory at start-up is a leftover and may be removed.
pub const SPOOL_PREFIX: &str = ".incoming.";

/// A file in `dir` that no name points to: created private, then unlinked
/// at once, so it disappears when closed (or when the process dies).
fn anonymous_file(dir: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(format!("{SPOOL_PREFIX}{}", crate::ids::unique_id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(crate::durable::FILE_MODE)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

/// Remove spool files a crash left behind (between create and unlink).
pub fn clean_spool(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(SPOOL_PREFIX)
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// One part of a [`Pieces`] message.
#[derive(Debug)]
pub enum Piece<'a> {
    /// Bytes made for this message (header lines).
    Owned(Vec<u8>),
    /// Bytes borrowed from elsewhere.
    Borrowed(&'a [u8]),
    /// A content from an offset to its end.
    Content(&'a Content, u64),
}

impl Piece<'_> {
    fn len(&self) -> u64 {
        match self {
            Piece::Owned(v) => v.len() as u64,
            Piece::Borrowed(b) => b.len() as u64,
            Piece::Content(c, offset) => c.len() - (*offset).min(c.len()),
        }
    }
}

/// A message made of pieces, read as one stream as many times as needed,
/// without ever being assembled in memory.
#[derive(Debug, Default)]
pub struct Pieces<'a> {
    pieces: Vec<Piece<'a>>,
}

impl<'a> Pieces<'a> {
    /// No pieces yet.
    pub fn new() -> Self {
        Pieces { pieces: Vec::new() }
    }

    /// A message of one borrowed slice.
    pub fn of_slice(bytes: &'a [u8]) -> Self {
        Pieces {
            pieces: vec![Piece::Borrowed(bytes)],
        }
    }

    /// Append a piece.
    pub fn push(&mut self, piece: Piece<'a>) -> &mut Self {
        self.pieces.push(piece);
        self
    }

    /// Append every piece of `other`.
    pub fn extend(&mut self, other: Pieces<'a>) -> &mut Self {
        self.pieces.extend(other.pieces);
        self
    }

    /// The same message, borrowing this one's pieces.
    pub fn borrowed(&self) -> Pieces<'_> {
        Pieces {
            pieces: self
                .pieces
                .iter()
                .map(|p| match p {
                    Piece::Owned(v) => Piece::Borrowed(v),
                    Piece::Borrowed(b) => Piece::Borrowed(b),
                    Piece::Content(c, offset) => Piece::Content(c, *offset),
                })
                .collect(),
        }
    }

    /// Total length in octets.
    pub fn len(&self) -> u64 {
        self.pieces.iter().map(Piece::len).sum()
    }

    /// No octets at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The start of the message up to and including the first empty line,
    /// or the first `max` octets if there is none (see [`Content::head`]).
    pub fn head(&self, max: usize) -> io::Result<Vec<u8>> {
        read_head(&mut self.reader(), max)
    }

    /// A reader over the whole message, from the start.
    pub fn reader(&self) -> PiecesReader<'_, 'a> {
        PiecesReader {
            pieces: &self.pieces,
            index: 0,
            current: None,
            pos: 0,
        }
    }

    /// The whole message in memory (for callers that need one slice and a
    /// bounded size; tests).
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.len() as usize);
        self.reader().read_to_end(&mut out)?;
        Ok(out)
    }
}

/// Reads a [`Pieces`] message (see [`Pieces::reader`]).
#[derive(Debug)]
pub struct PiecesReader<'p, 'a> {
    pieces: &'p [Piece<'a>],
    index: usize,
    current: Option<ContentReader<'a>>,
    pos: usize,
}

impl Read for PiecesReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.index < self.pieces.len() {
            let n = match &self.pieces[self.index] {
                Piece::Owned(v) => copy_from(&v[self.pos..], buf),
                Piece::Borrowed(b) => copy_from(&b[self.pos..], buf),
                Piece::Content(c, offset) => {
                    let reader = self.current.get_or_insert_with(|| c.reader_at(*offset));
                    reader.read(buf)?
                }
            };
            if n > 0 {
                self.pos += n;
                return Ok(n);
            }
            self.index += 1;
            self.pos = 0;
            self.current = None;
        }
        Ok(0)
    }
}

/// Read until `CRLF CRLF` has been read, EOF, or `max` octets.
fn read_head(reader: &mut impl Read, max: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let want = buf.len().min(max - out.len());
        if want == 0 {
            return Ok(out);
        }
        let n = match reader.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(out);
        }
        let from = out.len().saturating_sub(3);
        out.extend_from_slice(&buf[..n]);
        if let Some(p) = memchr::memmem::find(&out[from..], b"\r\n\r\n") {
            out.truncate(from + p + 4);
            return Ok(out);
        }
    }
}

fn copy_from(src: &[u8], buf: &mut [u8]) -> usize {
    let n = src.len().min(buf.len());
    buf[..n].copy_from_slice(&src[..n]);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(mut r: impl Read) -> Vec<u8> {
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn small_content_stays_in_memory_large_content_spills() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter::new(dir.path(), 10, None);
        w.write(b"hello").unwrap();
        assert!(!w.spilled());
        let c = w.finish();
        assert_eq!(c.as_slice(), Some(&b"hello"[..]));

        let mut w = SpoolWriter::new(dir.path(), 10, None);
        w.write(b"hello").unwrap();
        w.write(b" world, this is long").unwrap();
        assert!(w.spilled());
        let c = w.finish();
        assert_eq!(c.len(), 25);
        assert_eq!(c.as_slice(), None);
        assert_eq!(read_all(c.reader_at(0)), b"hello world, this is long");
        assert_eq!(read_all(c.reader_at(6)), b"world, this is long");
        assert_eq!(&*c.prefix(5).unwrap(), b"hello");
        assert_eq!(
            &*c.head(100).unwrap(),
            b"hello world, this is long",
            "no blank line"
        );
        assert_eq!(&*c.head(7).unwrap(), b"hello w");
        // Two readers at once do not disturb each other.
        let (mut a, mut b) = (c.reader_at(0), c.reader_at(19));
        let mut x = [0u8; 3];
        a.read_exact(&mut x).unwrap();
        assert_eq!(read_all(&mut b), b"s long");
        a.read_exact(&mut x).unwrap();
        assert_eq!(&x, b"lo ");
        // The spool file has no name: the directory is empty.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_budget_sends_content_to_disk_and_is_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let budget = Budget::new(100);
        let mut a = SpoolWriter::new(dir.path(), 1000, Some(Arc::clone(&budget)));
        a.write(&[1; 80]).unwrap();
        assert_eq!(budget.used(), 80);
        let mut b = SpoolWriter::new(dir.path(), 1000, Some(Arc::clone(&budget)));
        b.write(&[2; 30]).unwrap();
        assert!(b.spilled(), "past the budget: to disk");
        assert_eq!(budget.used(), 80);
        let a = a.finish();
        assert_eq!(budget.used(), 80, "held by the finished content");
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn pieces_read_as_one_stream() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SpoolWriter::new(dir.path(), 4, None);
        w.write(b"Subject: x\r\n\r\nbody\r\n").unwrap();
        let c = w.finish();
        let mut p = Pieces::new();
        p.push(Piece::Owned(b"Received: y\r\n".to_vec()))
            .push(Piece::Borrowed(b"X-A: 1\r\n"))
            .push(Piece::Content(&c, 12));
        assert_eq!(p.len(), 13 + 8 + 8);
        let whole = p.to_vec().unwrap();
        assert_eq!(whole, b"Received: y\r\nX-A: 1\r\n\r\nbody\r\n");
        assert_eq!(p.head(1000).unwrap(), b"Received: y\r\nX-A: 1\r\n\r\n");
        assert_eq!(&*c.head(1000).unwrap(), b"Subject: x\r\n\r\n");
        // Read in tiny steps too.
        let mut r = p.reader();
        let mut out = Vec::new();
        let mut one = [0u8; 1];
        while r.read(&mut one).unwrap() == 1 {
            out.push(one[0]);
        }
        assert_eq!(out, whole);
    }

    #[test]
    fn leftovers_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(format!("{SPOOL_PREFIX}1")), b"x").unwrap();
        std::fs::write(dir.path().join("other"), b"x").unwrap();
        assert_eq!(clean_spool(dir.path()).unwrap(), 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
