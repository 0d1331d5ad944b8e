//! The transcoding writers every destination streams through: CRLF line
//! ends to LF ([`CrlfToLf`]) and mboxrd `From ` quoting ([`MboxrdQuoter`]).
//! Both work across chunk boundaries and buffer at most a few bytes.

use std::io::{self, Write};

/// Converts CRLF line ends to LF across chunk boundaries; a CR not followed
/// by LF is kept.
#[derive(Debug)]
pub(crate) struct CrlfToLf<W: Write> {
    inner: W,
    pending_cr: bool,
}

impl<W: Write> CrlfToLf<W> {
    /// Wrap `inner`.
    pub(crate) fn new(inner: W) -> Self {
        CrlfToLf {
            inner,
            pending_cr: false,
        }
    }

    /// Write out a trailing lone CR and return the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.end()?;
        Ok(self.inner)
    }

    /// Write out a trailing lone CR (in place).
    pub(crate) fn end(&mut self) -> io::Result<()> {
        if self.pending_cr {
            self.inner.write_all(b"\r")?;
            self.pending_cr = false;
        }
        Ok(())
    }

    /// The inner writer.
    pub(crate) fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The inner writer, dropping any pending CR.
    pub(crate) fn into_inner(self) -> W {
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
pub(crate) struct MboxrdQuoter<W: Write> {
    inner: W,
    state: QState,
    gt: u64,
    /// Whether the last byte written was a LF (or nothing was written).
    ends_with_lf: bool,
}

const FROM_: &[u8] = b"From ";

impl<W: Write> MboxrdQuoter<W> {
    /// Wrap `inner`.
    pub(crate) fn new(inner: W) -> Self {
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

    /// [`MboxrdQuoter::end`], returning the inner writer (the mbox
    /// delivery ends in place; the tests use this).
    #[cfg(test)]
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.end()?;
        Ok(self.inner)
    }

    /// End the message: flush any pending prefix, make sure it ends with a
    /// newline, and add the blank separator line.
    pub(crate) fn end(&mut self) -> io::Result<()> {
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
    pub(crate) fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The inner writer, as it is.
    pub(crate) fn into_inner(self) -> W {
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
}
