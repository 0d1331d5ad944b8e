//! Local delivery: Maildir, mbox (mboxrd) and a command.
//!
//! Every destination receives the message as a stream of chunks (never the
//! whole message), with CRLF line ends turned into LF (the Unix convention
//! of all three). [`Delivery::commit`] returns only once the message is
//! durable: fsynced and renamed into `new/` (Maildir), fsynced in the mbox,
//! or accepted by the command with exit status 0. Until then nothing may be
//! deleted on the server, and [`Delivery::abort`] (or dropping the
//! delivery) leaves no trace of it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Destination;
use crate::state::sync_dir;

const BUF: usize = 64 * 1024;

/// One message being delivered.
pub trait Delivery: Write + Send {
    /// Finish the message and make it durable. Only after `Ok` may the
    /// message be deleted from the server.
    fn commit(self: Box<Self>) -> io::Result<()>;
    /// Give up: remove every trace of the partial message.
    fn abort(self: Box<Self>);
}

impl Destination {
    /// Start delivering one message.
    pub fn begin(&self) -> io::Result<Box<dyn Delivery>> {
        Ok(match self {
            Destination::Maildir(root) => Box::new(MaildirDelivery::begin(root)?),
            Destination::Mbox(path) => Box::new(MboxDelivery::begin(path, SystemTime::now())?),
            Destination::Command(cmd) => Box::new(CommandDelivery::begin(cmd)?),
        })
    }

    /// Short description for messages.
    pub fn describe(&self) -> String {
        match self {
            Destination::Maildir(p) => format!("maildir {}", p.display()),
            Destination::Mbox(p) => format!("mbox {}", p.display()),
            Destination::Command(c) => format!("command {c:?}"),
        }
    }
}

/// Converts CRLF line ends to LF across chunk boundaries; a CR not followed
/// by LF is kept.
#[derive(Debug)]
pub struct CrlfToLf<W: Write> {
    inner: W,
    pending_cr: bool,
}

impl<W: Write> CrlfToLf<W> {
    /// Wrap `inner`.
    pub fn new(inner: W) -> Self {
        CrlfToLf {
            inner,
            pending_cr: false,
        }
    }

    /// Write out a trailing lone CR and return the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.end()?;
        Ok(self.inner)
    }

    /// Write out a trailing lone CR (in place).
    pub fn end(&mut self) -> io::Result<()> {
        if self.pending_cr {
            self.inner.write_all(b"\r")?;
            self.pending_cr = false;
        }
        Ok(())
    }

    /// The inner writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The inner writer, dropping any pending CR.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for CrlfToLf<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        if self.pending_cr && !rest.is_empty() {
            self.pending_cr = false;
            if rest[0] == b'\n' {
                self.inner.write_all(b"\n")?;
                rest = &rest[1..];
            } else {
                self.inner.write_all(b"\r")?;
            }
        }
        while let Some(p) = memchr::memchr(b'\r', rest) {
            self.inner.write_all(&rest[..p])?;
            match rest.get(p + 1) {
                Some(b'\n') => {
                    self.inner.write_all(b"\n")?;
                    rest = &rest[p + 2..];
                }
                Some(_) => {
                    self.inner.write_all(b"\r")?;
                    rest = &rest[p + 1..];
                }
                None => {
                    self.pending_cr = true;
                    rest = &[];
                }
            }
        }
        self.inner.write_all(rest)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QState {
    /// At the start of a line, having seen `gt` '>' characters.
    Start,
    /// Matched this many bytes of "From " after the '>'s.
    Matching(usize),
    Mid,
}

/// mboxrd quoting (LF line ends): a line matching `^>*From ` gets one
/// more `>`. Works across chunk boundaries, buffering at most a counter
/// and five bytes.
#[derive(Debug)]
pub struct MboxrdQuoter<W: Write> {
    inner: W,
    state: QState,
    gt: u64,
    /// Whether the last byte written was a LF (or nothing was written).
    ends_with_lf: bool,
}

const FROM_: &[u8] = b"From ";

impl<W: Write> MboxrdQuoter<W> {
    /// Wrap `inner`.
    pub fn new(inner: W) -> Self {
        MboxrdQuoter {
            inner,
            state: QState::Start,
            gt: 0,
            ends_with_lf: true,
        }
    }

    fn write_gts(&mut self, mut n: u64) -> io::Result<()> {
        const GTS: [u8; 256] = [b'>'; 256];
        while n > 0 {
            let k = n.min(256) as usize;
            self.inner.write_all(&GTS[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Emit a pending prefix unchanged (it turned out not to be `>*From `).
    fn flush_prefix(&mut self) -> io::Result<()> {
        let gt = std::mem::take(&mut self.gt);
        if gt > 0 {
            self.write_gts(gt)?;
            self.ends_with_lf = false;
        }
        if let QState::Matching(k) = self.state
            && k > 0
        {
            self.inner.write_all(&FROM_[..k])?;
            self.ends_with_lf = false;
        }
        self.state = QState::Mid;
        Ok(())
    }

    /// End the message: flush any pending prefix, make sure it ends with a
    /// newline, and add the blank separator line. Returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.end()?;
        Ok(self.inner)
    }

    /// [`MboxrdQuoter::finish`] in place.
    pub fn end(&mut self) -> io::Result<()> {
        if self.state != QState::Mid || self.gt > 0 {
            self.flush_prefix()?;
        }
        if !self.ends_with_lf {
            self.inner.write_all(b"\n")?;
        }
        self.inner.write_all(b"\n")?;
        self.ends_with_lf = true;
        self.state = QState::Start;
        Ok(())
    }

    /// The inner writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The inner writer, as it is.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for MboxrdQuoter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut i = 0;
        while i < buf.len() {
            match self.state {
                QState::Start => {
                    if buf[i] == b'>' {
                        self.gt += 1;
                        i += 1;
                    } else if buf[i] == b'F' {
                        self.state = QState::Matching(1);
                        i += 1;
                    } else {
                        self.flush_prefix()?;
                    }
                }
                QState::Matching(k) => {
                    if buf[i] == FROM_[k] {
                        i += 1;
                        if k + 1 == FROM_.len() {
                            let gt = std::mem::take(&mut self.gt);
                            self.write_gts(gt + 1)?;
                            self.inner.write_all(FROM_)?;
                            self.ends_with_lf = false;
                            self.state = QState::Mid;
                        } else {
                            self.state = QState::Matching(k + 1);
                        }
                    } else {
                        self.flush_prefix()?;
                    }
                }
                QState::Mid => match memchr::memchr(b'\n', &buf[i..]) {
                    Some(p) => {
                        self.inner.write_all(&buf[i..i + p + 1])?;
                        self.ends_with_lf = true;
                        i += p + 1;
                        self.state = QState::Start;
                    }
                    None => {
                        self.inner.write_all(&buf[i..])?;
                        self.ends_with_lf = false;
                        i = buf.len();
                    }
                },
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The asctime()-style date of an mbox From_ line, in UTC:
/// `Thu Jan  1 00:00:00 1970`.
pub fn asctime(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        WD[(days.rem_euclid(7)) as usize],
        MON[(m - 1) as usize],
        d,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        y
    )
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
        .replace('/', "\\057")
        .replace(':', "\\072")
}

fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        hostname()
    )
}

/// `Write` for a delivery that streams into `self.writer` until it is
/// committed or rolled back (then `None`: writing is an error).
macro_rules! write_through_writer {
    ($($t:ty),+) => {$(
        impl Write for $t {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                match &mut self.writer {
                    Some(w) => w.write(buf),
                    None => Err(io::Error::other("delivery already finished")),
                }
            }
            fn flush(&mut self) -> io::Result<()> {
                match &mut self.writer {
                    Some(w) => w.flush(),
                    None => Ok(()),
                }
            }
        }
    )+};
}

write_through_writer!(MaildirDelivery, MboxDelivery, CommandDelivery);

/// Delivery into a Maildir: written to `tmp/`, fsynced, renamed into
/// `new/`, and `new/` fsynced.
pub struct MaildirDelivery {
    writer: Option<CrlfToLf<BufWriter<File>>>,
    tmp: PathBuf,
    new: PathBuf,
    new_dir: PathBuf,
}

impl MaildirDelivery {
    /// Create the Maildir if needed and open a new file in `tmp/`.
    pub fn begin(root: &Path) -> io::Result<Self> {
        for sub in ["tmp", "new", "cur"] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root.join(sub))
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("creating maildir {}: {e}", root.display()),
                    )
                })?;
        }
        let name = unique_name();
        let tmp = root.join("tmp").join(&name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", tmp.display())))?;
        Ok(MaildirDelivery {
            writer: Some(CrlfToLf::new(BufWriter::with_capacity(BUF, file))),
            tmp,
            new: root.join("new").join(&name),
            new_dir: root.join("new"),
        })
    }
}

impl Delivery for MaildirDelivery {
    fn commit(mut self: Box<Self>) -> io::Result<()> {
        let w = self
            .writer
            .take()
            .ok_or_else(|| io::Error::other("finished"))?;
        let r = (|| {
            let file = w.finish()?.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&self.tmp, &self.new)?;
            sync_dir(&self.new_dir)
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        r
    }

    fn abort(self: Box<Self>) {
        // Drop does it.
    }
}

impl Drop for MaildirDelivery {
    fn drop(&mut self) {
        if let Some(w) = self.writer.take() {
            // Not committed: discard without flushing, remove the file.
            let (_file, _) = w.into_inner().into_parts();
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A `.lock` file created with O_EXCL next to the mbox; removed on drop.
#[derive(Debug)]
struct DotLock {
    path: PathBuf,
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
                    let _ = writeln!(f, "{}", std::process::id());
                    return Ok(DotLock { path });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // A lock older than 10 minutes is stale (the convention
                    // of procmail and mutt is 5).
                    let stale = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > Duration::from_secs(600));
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
pub struct MboxDelivery {
    writer: Option<CrlfToLf<MboxrdQuoter<BufWriter<File>>>>,
    orig_len: u64,
    _dotlock: DotLock,
}

impl MboxDelivery {
    /// Lock the mbox (creating it if needed) and write the From_ line.
    pub fn begin(path: &Path, received: SystemTime) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let dotlock = DotLock::acquire(path, Duration::from_secs(30))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
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
        let mut w = BufWriter::with_capacity(BUF, file);
        let r = (|| {
            w.write_all(sep)?;
            w.write_all(format!("From MAILER-DAEMON {}\n", asctime(received)).as_bytes())
        })();
        let mut d = MboxDelivery {
            writer: Some(CrlfToLf::new(MboxrdQuoter::new(w))),
            orig_len,
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

/// Delivery to a command's standard input; exit status 0 means delivered.
pub struct CommandDelivery {
    child: Option<Child>,
    writer: Option<CrlfToLf<BufWriter<ChildStdin>>>,
    command: String,
}

impl CommandDelivery {
    /// Start `/bin/sh -c command`. Its standard output goes to our
    /// standard error, so that standard output stays for summaries.
    pub fn begin(command: &str) -> io::Result<Self> {
        let stdout = match io::stderr().as_fd_clone() {
            Some(fd) => Stdio::from(fd),
            None => Stdio::null(),
        };
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run {command:?}: {e}")))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("no stdin pipe"))?;
        Ok(CommandDelivery {
            child: Some(child),
            writer: Some(CrlfToLf::new(BufWriter::with_capacity(BUF, stdin))),
            command: command.to_string(),
        })
    }

    fn reap(&mut self, kill: bool) -> io::Result<std::process::ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| io::Error::other("already reaped"))?;
        if kill {
            let _ = child.kill();
        }
        child.wait()
    }
}

trait AsFdClone {
    fn as_fd_clone(&self) -> Option<std::os::fd::OwnedFd>;
}

impl AsFdClone for io::Stderr {
    fn as_fd_clone(&self) -> Option<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.as_fd().try_clone_to_owned().ok()
    }
}

impl Delivery for CommandDelivery {
    fn commit(mut self: Box<Self>) -> io::Result<()> {
        let w = self
            .writer
            .take()
            .ok_or_else(|| io::Error::other("finished"))?;
        let written = w
            .finish()
            .and_then(|bw| bw.into_inner().map_err(|e| e.into_error()));
        // Closing stdin (dropping it) lets the command see end of input.
        let write_error = written.err();
        let status = self.reap(false)?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "{:?} failed ({status})",
                self.command
            )));
        }
        match write_error {
            // The command succeeded without reading everything: not a
            // complete delivery.
            Some(e) => Err(io::Error::new(
                e.kind(),
                format!("{:?} did not read the whole message: {e}", self.command),
            )),
            None => Ok(()),
        }
    }

    fn abort(mut self: Box<Self>) {
        self.writer.take();
        let _ = self.reap(true);
    }
}

impl Drop for CommandDelivery {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.writer.take();
            let _ = self.reap(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through<F, W>(make: F, input: &[u8], chunk: usize) -> Vec<u8>
    where
        F: Fn(Vec<u8>) -> W,
        W: Write + Finish,
    {
        let mut w = make(Vec::new());
        for c in input.chunks(chunk) {
            w.write_all(c).unwrap();
        }
        w.done()
    }

    trait Finish {
        fn done(self) -> Vec<u8>;
    }
    impl Finish for CrlfToLf<Vec<u8>> {
        fn done(self) -> Vec<u8> {
            self.finish().unwrap()
        }
    }
    impl Finish for CrlfToLf<MboxrdQuoter<Vec<u8>>> {
        fn done(self) -> Vec<u8> {
            self.finish().unwrap().finish().unwrap()
        }
    }

    #[test]
    fn crlf_to_lf_any_chunking() {
        let input = b"a\r\nb\rc\r\n\r\nend\r";
        for chunk in 1..=input.len() {
            assert_eq!(
                through(CrlfToLf::new, input, chunk),
                b"a\nb\rc\n\nend\r",
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn mboxrd_quoting_any_chunking() {
        let input: &[u8] = b"From: a@b\r\nSubject: x\r\n\r\nFrom here\r\n>From there\r\n>>From x\r\nFromage\r\n>From\r\n Fro\r\nFrom";
        let want: &[u8] = b"From: a@b\nSubject: x\n\n>From here\n>>From there\n>>>From x\nFromage\n>From\n Fro\nFrom\n\n";
        for chunk in 1..=input.len() {
            let got = through(|v| CrlfToLf::new(MboxrdQuoter::new(v)), input, chunk);
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(want),
                "chunk {chunk}"
            );
        }
        // "From " as the very first line of a message is quoted too.
        let got = through(|v| CrlfToLf::new(MboxrdQuoter::new(v)), b"From x\r\n", 3);
        assert_eq!(got, b">From x\n\n");
        // A long run of '>' is not buffered as bytes.
        let mut long = vec![b'>'; 100_000];
        long.extend_from_slice(b"From y\n");
        let got = through(|v| CrlfToLf::new(MboxrdQuoter::new(v)), &long, 4096);
        assert_eq!(got.len(), long.len() + 2);
        assert!(got.starts_with(&[b'>'; 100_001]));
    }

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
    fn maildir_commit_and_abort() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("Mail");
        let mut d = Box::new(MaildirDelivery::begin(&root).unwrap());
        d.write_all(b"A: b\r\n\r\nhi\r\n").unwrap();
        d.commit().unwrap();
        let mut d = Box::new(MaildirDelivery::begin(&root).unwrap());
        d.write_all(b"partial").unwrap();
        d.abort();
        let new: Vec<_> = std::fs::read_dir(root.join("new")).unwrap().collect();
        assert_eq!(new.len(), 1);
        let body = std::fs::read(new[0].as_ref().unwrap().path()).unwrap();
        assert_eq!(body, b"A: b\n\nhi\n");
        assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn command_exit_status_decides() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut d =
            Box::new(CommandDelivery::begin(&format!("cat > '{}'", out.display())).unwrap());
        d.write_all(b"x\r\ny\r\n").unwrap();
        d.commit().unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"x\ny\n");
        let mut d = Box::new(CommandDelivery::begin("cat >/dev/null; exit 3").unwrap());
        d.write_all(b"x\r\n").unwrap();
        assert!(
            d.commit()
                .unwrap_err()
                .to_string()
                .contains("exit status: 3")
        );
    }
}
