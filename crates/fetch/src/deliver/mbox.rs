//! The mbox destination (mboxrd): the message is appended under a dotlock
//! and an flock, and truncated away again if anything fails.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use postoffice_common::date::asctime;
use postoffice_common::durable;
use postoffice_common::maildir_name::local_hostname;

use super::transcode::{CrlfToLf, MboxrdQuoter};
use super::{BUF, Delivery};

write_through_writer!(MboxDelivery);

/// A `.lock` file created with O_EXCL next to the mbox; removed on drop.
/// It holds `<pid> <host>`, so that a lock left by a process that died
/// (`kill -9`) on this host is recognised as stale at once.
#[derive(Debug)]
struct DotLock {
    path: PathBuf,
}

/// Whether the dotlock at `path` was left by a process of this host that
/// no longer exists. Locks written by other programs (other contents) or
/// other hosts are never judged by this.
fn holder_is_gone(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let mut words = text.split_whitespace();
    let (Some(pid), Some(host), None) = (words.next(), words.next(), words.next()) else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    host == local_hostname()
        && Path::new("/proc/self").exists()
        && !Path::new(&format!("/proc/{pid}")).exists()
}

impl DotLock {
    fn acquire(mbox: &Path, wait: Duration) -> io::Result<DotLock> {
        let mut name = mbox.as_os_str().to_os_string();
        name.push(".lock");
        let path = PathBuf::from(name);
        let deadline = Instant::now() + wait;
        loop {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(mut f) => {
                    let _ = writeln!(f, "{} {}", std::process::id(), local_hostname());
                    return Ok(DotLock { path });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // A lock older than 10 minutes is stale (the convention
                    // of procmail and mutt is 5), and so is one whose
                    // process, here, is gone.
                    let stale = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > Duration::from_secs(600))
                        || holder_is_gone(&path);
                    if stale {
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                    if Instant::now() >= deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::WouldBlock,
                            format!("{} is held by another program", path.display()),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot create {}: {e}", path.display()),
                    ));
                }
            }
        }
    }
}

impl Drop for DotLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Delivery appended to an mbox file (mboxrd). Holds the dotlock and an
/// flock on the file while writing; on failure the file is truncated back
/// to its old length.
pub(crate) struct MboxDelivery {
    writer: Option<CrlfToLf<MboxrdQuoter<BufWriter<File>>>>,
    orig_len: u64,
    /// `mbox <dev> <inode> <offset of the message after its From_ line>`.
    receipt: String,
    _dotlock: DotLock,
}

impl MboxDelivery {
    /// Lock the mbox (creating it if needed) and write the From_ line.
    pub(crate) fn begin(path: &Path, received: SystemTime) -> io::Result<Self> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        durable::create_dir_all(dir)?;
        let dotlock = DotLock::acquire(path, Duration::from_secs(30))?;
        let existed = path.try_exists()?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        if !existed {
            // A new mbox's directory entry must be durable before a message
            // in it counts as delivered (the commit fsyncs only the file).
            durable::sync_dir(dir)?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!("{} is locked by another program", path.display()),
                    ));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
        }
        let orig_len = file.seek(SeekFrom::End(0))?;
        // The previous message must be followed by a blank line.
        let mut sep: &[u8] = b"";
        if orig_len > 0 {
            let back = orig_len.min(2);
            file.seek(SeekFrom::Start(orig_len - back))?;
            let mut tail = [0u8; 2];
            file.read_exact(&mut tail[..back as usize])?;
            let tail = &tail[..back as usize];
            sep = if tail == b"\n\n" || (orig_len == 1 && tail == b"\n") {
                b""
            } else if tail.ends_with(b"\n") {
                b"\n"
            } else {
                b"\n\n"
            };
            file.seek(SeekFrom::End(0))?;
        }
        let meta = file.metadata()?;
        let from_line = format!("From MAILER-DAEMON {}\n", asctime(received));
        let body_at = orig_len + (sep.len() + from_line.len()) as u64;
        let receipt = format!("mbox {} {} {body_at}", meta.dev(), meta.ino());
        let mut w = BufWriter::with_capacity(BUF, file);
        let r = (|| {
            w.write_all(sep)?;
            w.write_all(from_line.as_bytes())
        })();
        let mut d = MboxDelivery {
            writer: Some(CrlfToLf::new(MboxrdQuoter::new(w))),
            orig_len,
            receipt,
            _dotlock: dotlock,
        };
        if let Err(e) = r {
            d.rollback();
            return Err(e);
        }
        Ok(d)
    }

    fn rollback(&mut self) {
        if let Some(w) = self.writer.take() {
            let (file, _) = w.into_inner().into_inner().into_parts();
            let _ = file.set_len(self.orig_len);
            let _ = file.sync_all();
        }
    }
}

impl MboxDelivery {
    fn finish_and_sync(&mut self) -> io::Result<()> {
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| io::Error::other("delivery already finished"))?;
        w.end()?;
        w.get_mut().end()?;
        let bw = w.get_mut().get_mut();
        bw.flush()?;
        bw.get_ref().sync_all()
    }
}

impl Delivery for MboxDelivery {
    /// Nothing more to hand over: the last part of the message (up to
    /// 64 KiB) and its end stay in the buffer until the commit, so the
    /// mbox holds no complete copy before the receipt is written down.
    fn prepare(&mut self) -> io::Result<Option<String>> {
        Ok(Some(self.receipt.clone()))
    }

    fn commit(mut self: Box<Self>) -> io::Result<()> {
        match self.finish_and_sync() {
            Ok(()) => {
                // Closing the file releases the flock; then the dotlock goes.
                self.writer.take();
                Ok(())
            }
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    fn abort(mut self: Box<Self>) {
        self.rollback();
    }
}

impl Drop for MboxDelivery {
    fn drop(&mut self) {
        self.rollback();
    }
}

/// Compares what is written into it with an mbox from a given offset.
struct Compare {
    file: BufReader<File>,
    same: bool,
    scratch: Vec<u8>,
}

impl Write for Compare {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.same {
            self.scratch.resize(buf.len(), 0);
            self.same = self.file.read_exact(&mut self.scratch).is_ok() && self.scratch == buf;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether an mbox holds a given message at a given offset: the message,
/// written into the check, goes through the same transcoding as a
/// delivery and is compared with the file (see [`MboxCheck::matches`]).
pub(crate) struct MboxCheck {
    writer: CrlfToLf<MboxrdQuoter<Compare>>,
}

impl MboxCheck {
    /// A check against `path` at `offset`, if `path` is still the file
    /// (device `dev`, inode `ino`) and reaches that far.
    pub(crate) fn open(path: &Path, dev: u64, ino: u64, offset: u64) -> Option<MboxCheck> {
        let mut file = File::open(path).ok()?;
        let meta = file.metadata().ok()?;
        if meta.dev() != dev || meta.ino() != ino || meta.len() <= offset {
            return None;
        }
        file.seek(SeekFrom::Start(offset)).ok()?;
        Some(MboxCheck {
            writer: CrlfToLf::new(MboxrdQuoter::new(Compare {
                file: BufReader::with_capacity(BUF, file),
                same: true,
                scratch: Vec::new(),
            })),
        })
    }

    /// Whether everything written, ended as a delivery ends it, is what the
    /// mbox holds at the offset.
    pub(crate) fn matches(mut self) -> bool {
        let ended = self.writer.end().is_ok() && self.writer.get_mut().end().is_ok();
        ended && self.writer.get_mut().get_mut().same
    }
}

impl Write for MboxCheck {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// The From_ line date (now from postoffice-common) keeps its form.
    #[test]
    fn asctime_format() {
        assert_eq!(asctime(UNIX_EPOCH), "Thu Jan  1 00:00:00 1970");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // 2024-02-29 12:34:56
        assert_eq!(asctime(t), "Thu Feb 29 12:34:56 2024");
    }

    #[test]
    fn mbox_appends_quotes_and_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let mbox = dir.path().join("inbox.mbox");
        let mut d = Box::new(MboxDelivery::begin(&mbox, UNIX_EPOCH).unwrap());
        d.write_all(b"Subject: 1\r\n\r\nFrom here\r\nno newline")
            .unwrap();
        assert!(dir.path().join("inbox.mbox.lock").exists());
        d.commit().unwrap();
        assert!(!dir.path().join("inbox.mbox.lock").exists());
        let mut d = Box::new(MboxDelivery::begin(&mbox, UNIX_EPOCH).unwrap());
        d.write_all(b"Subject: 2\r\n\r\nbody\r\n").unwrap();
        d.abort();
        let mut d = Box::new(MboxDelivery::begin(&mbox, UNIX_EPOCH).unwrap());
        d.write_all(b"Subject: 3\r\n\r\nbody\r\n").unwrap();
        d.commit().unwrap();
        let text = std::fs::read_to_string(&mbox).unwrap();
        assert_eq!(
            text,
            "From MAILER-DAEMON Thu Jan  1 00:00:00 1970\nSubject: 1\n\n>From here\nno newline\n\n\
             From MAILER-DAEMON Thu Jan  1 00:00:00 1970\nSubject: 3\n\nbody\n\n"
        );
    }

    #[test]
    fn mbox_check_recognises_exactly_the_delivered_message() {
        let dir = tempfile::tempdir().unwrap();
        let mbox = dir.path().join("inbox.mbox");
        let first: &[u8] = b"Subject: 1\r\n\r\nFrom here\r\n";
        let second: &[u8] = b"Subject: 2\r\n\r\nbody\r\n>From there";
        let mut receipts = Vec::new();
        for m in [first, second] {
            let mut d = Box::new(MboxDelivery::begin(&mbox, UNIX_EPOCH).unwrap());
            // Written in odd chunks: the check must not depend on them.
            for c in m.chunks(3) {
                d.write_all(c).unwrap();
            }
            receipts.push(d.prepare().unwrap().unwrap());
            d.commit().unwrap();
        }
        let check = |receipt: &str, message: &[u8]| {
            let w: Vec<&str> = receipt.split(' ').collect();
            assert_eq!(w[0], "mbox");
            let (dev, ino, at) = (
                w[1].parse().unwrap(),
                w[2].parse().unwrap(),
                w[3].parse().unwrap(),
            );
            match MboxCheck::open(&mbox, dev, ino, at) {
                Some(mut c) => {
                    c.write_all(message).unwrap();
                    c.matches()
                }
                None => false,
            }
        };
        assert!(check(&receipts[0], first));
        assert!(check(&receipts[1], second));
        assert!(!check(&receipts[0], second));
        assert!(!check(&receipts[1], first));
        assert!(
            !check(&receipts[1], b"Subject: 2\r\n\r\nbody\r\n"),
            "a prefix is not the message"
        );
        // A partial message (the run died during the append) is not it.
        let text = std::fs::read(&mbox).unwrap();
        std::fs::write(&mbox, &text[..text.len() - 4]).unwrap();
        assert!(!check(&receipts[1], second));
        // Another file under the same name is not the mbox of the receipt.
        std::fs::remove_file(&mbox).unwrap();
        std::fs::write(&mbox, &text).unwrap();
        assert!(!check(&receipts[1], second));
    }

    #[test]
    fn mbox_dotlock_blocks_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let mbox = dir.path().join("m");
        let held = DotLock::acquire(&mbox, Duration::from_secs(1)).unwrap();
        let e = DotLock::acquire(&mbox, Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(held);
        DotLock::acquire(&mbox, Duration::from_millis(200)).unwrap();
    }

    #[test]
    fn a_dotlock_whose_process_is_gone_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let mbox = dir.path().join("m");
        let lock = dir.path().join("m.lock");
        // A finished child's pid: no such process any more (barring reuse
        // within the test, which would only make the lock look held).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        std::fs::write(&lock, format!("{dead} {}\n", local_hostname())).unwrap();
        let held = DotLock::acquire(&mbox, Duration::from_secs(5)).unwrap();
        drop(held);
        // Alive, another host's, or another program's lock: respected.
        for text in [
            format!("{} {}\n", std::process::id(), local_hostname()),
            format!("{dead} some.other.host\n"),
            format!("{dead}\n"),
            String::new(),
        ] {
            std::fs::write(&lock, &text).unwrap();
            let e = DotLock::acquire(&mbox, Duration::from_millis(200)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{text:?}");
        }
    }
}
