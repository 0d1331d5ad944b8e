//! Streaming line-end normalisation to CRLF.
//!
//! POP3 sizes (`LIST`, `STAT`) are octet counts of the message *as sent on
//! the wire*, i.e. with CRLF line ends. Storing messages already normalised
//! lets a session report sizes straight from file names and send files
//! without rewriting them. Foreign files (written by other Maildir agents,
//! which usually store bare LF) are converted on the fly by the same code, so
//! the size we compute for them always matches the bytes we stream.
//!
//! The rules, applied identically everywhere:
//! - bare LF becomes CRLF;
//! - an existing CRLF is left alone;
//! - a CR not followed by LF is passed through unchanged;
//! - the output always ends with CRLF (one is appended if missing, which also
//!   makes an empty input produce exactly `"\r\n"`).
//!
//! A CR that ends one input chunk is held back until the next chunk shows
//! whether an LF follows, so chunk boundaries never change the result.

use std::io::{self, Read};

use crate::StoreError;

/// Size of the read buffers used for streaming. Big enough to amortise
/// syscalls, small enough that a 100 MB message never sits in memory.
pub(crate) const CHUNK: usize = 64 * 1024;

/// Incremental CRLF normaliser. Feed it chunks with [`push`](Self::push),
/// then call [`finish`](Self::finish) once.
///
/// Every backend stores messages in the form this produces, so that sizes
/// agree whatever the backend (see [`normalize_stream`] for the whole
/// delivery loop).
#[derive(Debug, Default)]
pub struct CrlfConverter {
    /// The previous chunk ended in a CR whose fate depends on the next byte.
    pending_cr: bool,
    /// The last two bytes emitted so far (0 = nothing emitted there yet);
    /// used to decide whether a final CRLF must be appended.
    tail: [u8; 2],
}

impl CrlfConverter {
    /// A converter at the start of a message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Converts `input`, appending the result to `out`. At most
    /// `2 * input.len() + 1` bytes are appended.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if input.is_empty() {
            return;
        }
        let start = out.len();
        let mut rest = input;
        if self.pending_cr {
            self.pending_cr = false;
            if let Some((&b'\n', after)) = rest.split_first() {
                out.extend_from_slice(b"\r\n");
                rest = after;
            } else {
                out.push(b'\r');
            }
        }
        while let Some(i) = memchr::memchr2(b'\r', b'\n', rest) {
            let (run, at) = rest.split_at(i);
            out.extend_from_slice(run);
            match at {
                [b'\n', after @ ..] | [b'\r', b'\n', after @ ..] => {
                    out.extend_from_slice(b"\r\n");
                    rest = after;
                }
                [b'\r'] => {
                    // Can't tell yet whether this CR starts a CRLF.
                    self.pending_cr = true;
                    rest = &[];
                }
                [_, after @ ..] => {
                    // A lone CR: left as is.
                    out.push(b'\r');
                    rest = after;
                }
                [] => rest = &[],
            }
        }
        out.extend_from_slice(rest);
        self.note_emitted(&out[start..]);
    }

    /// Flushes a held-back CR and appends the final CRLF if the output does
    /// not already end with one.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let start = out.len();
        if self.pending_cr {
            self.pending_cr = false;
            out.push(b'\r');
        }
        self.note_emitted(&out[start..]);
        if self.tail != *b"\r\n" {
            out.extend_from_slice(b"\r\n");
            self.tail = *b"\r\n";
        }
    }

    fn note_emitted(&mut self, emitted: &[u8]) {
        match emitted {
            [] => {}
            [only] => self.tail = [self.tail[1], *only],
            [.., a, b] => self.tail = [*a, *b],
        }
    }
}

/// Streams `message` through a [`CrlfConverter`], handing the normalised
/// bytes to `sink` piece by piece (each at most `2 * 64 KiB + 2` bytes), and
/// returns the total size: the delivery loop of every backend.
///
/// Memory use is bounded whatever the message size. Zero input bytes fail
/// with [`StoreError::EmptyMessage`] before `sink` is called; a read error
/// is [`StoreError::MessageRead`]; an error of `sink` is returned as is.
pub fn normalize_stream(
    message: &mut dyn Read,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    let mut conv = CrlfConverter::new();
    let mut inbuf = vec![0u8; CHUNK];
    let mut out = Vec::with_capacity(2 * CHUNK + 2);
    let mut seen_input = false;
    let mut size = 0u64;
    loop {
        let n = match message.read(&mut inbuf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StoreError::MessageRead(e)),
        };
        seen_input = true;
        conv.push(&inbuf[..n], &mut out);
        if !out.is_empty() {
            sink(&out)?;
        }
        size += out.len() as u64;
        out.clear();
    }
    if !seen_input {
        return Err(StoreError::EmptyMessage);
    }
    conv.finish(&mut out);
    if !out.is_empty() {
        sink(&out)?;
    }
    Ok(size + out.len() as u64)
}

/// A reader that yields the CRLF-normalised form of another reader.
///
/// Used for every message a session streams: for our own (already CRLF)
/// files it is a cheap pass-through, for foreign LF files it does the
/// conversion whose size was computed by [`crlf_len`].
pub(crate) struct CrlfReader<R> {
    inner: R,
    conv: CrlfConverter,
    inbuf: Box<[u8]>,
    out: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<R: Read> CrlfReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            conv: CrlfConverter::new(),
            inbuf: vec![0; CHUNK].into_boxed_slice(),
            out: Vec::with_capacity(2 * CHUNK + 2),
            pos: 0,
            done: false,
        }
    }
}

impl<R: Read> Read for CrlfReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(avail) = self.out.get(self.pos..).filter(|a| !a.is_empty()) {
                let n = avail.len().min(buf.len());
                buf[..n].copy_from_slice(&avail[..n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            self.out.clear();
            self.pos = 0;
            let n = match self.inner.read(&mut self.inbuf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                self.conv.finish(&mut self.out);
                self.done = true;
            } else {
                self.conv.push(&self.inbuf[..n], &mut self.out);
            }
        }
    }
}

/// The number of bytes [`CrlfReader`] would yield for `input`, computed by
/// running the very same converter (so the two can never disagree).
pub(crate) fn crlf_len(mut input: impl Read) -> io::Result<u64> {
    let mut conv = CrlfConverter::new();
    let mut inbuf = vec![0; CHUNK];
    let mut out = Vec::with_capacity(2 * CHUNK + 2);
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut inbuf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        conv.push(&inbuf[..n], &mut out);
        total += out.len() as u64;
        out.clear();
    }
    conv.finish(&mut out);
    Ok(total + out.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Obviously-correct reference implementation on a whole buffer.
    fn reference(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < input.len() {
            match input[i] {
                b'\r' if input.get(i + 1) == Some(&b'\n') => {
                    out.extend_from_slice(b"\r\n");
                    i += 2;
                    continue;
                }
                b'\n' => out.extend_from_slice(b"\r\n"),
                b => out.push(b),
            }
            i += 1;
        }
        if !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    fn convert_in_chunks(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut conv = CrlfConverter::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            conv.push(piece, &mut out);
        }
        conv.finish(&mut out);
        out
    }

    /// A reader that hands out at most `n` bytes per call, to exercise
    /// chunk boundaries at every position.
    struct Trickle<'a> {
        data: &'a [u8],
        n: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.n.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn simple_cases() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b"\r\n"),
            (b"a", b"a\r\n"),
            (b"a\n", b"a\r\n"),
            (b"a\r\n", b"a\r\n"),
            (b"a\nb", b"a\r\nb\r\n"),
            (b"a\rb\n", b"a\rb\r\n"),
            (b"a\r", b"a\r\r\n"),
            (b"\r\r\n\n", b"\r\r\n\r\n"),
            (b"\n\n", b"\r\n\r\n"),
        ];
        for (input, want) in cases {
            for chunk in 1..4 {
                assert_eq!(
                    convert_in_chunks(input, chunk),
                    *want,
                    "input {input:?} chunk {chunk}"
                );
            }
        }
    }

    #[test]
    fn matches_reference_at_every_chunk_size() {
        // Deterministic pseudo-random mix heavy in CR and LF.
        let mut x: u32 = 0x1234_5678;
        let alphabet = [b'\r', b'\n', b'a', b'\r', b'\n', b'.', b'x'];
        for len in [0usize, 1, 2, 3, 17, 100, 1000] {
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    alphabet[(x as usize) % alphabet.len()]
                })
                .collect();
            let want = reference(&input);
            for chunk in [1, 2, 3, 5, 64] {
                assert_eq!(
                    convert_in_chunks(&input, chunk),
                    want,
                    "len {len} chunk {chunk}"
                );
                let mut got = Vec::new();
                CrlfReader::new(Trickle {
                    data: &input,
                    n: chunk,
                })
                .read_to_end(&mut got)
                .unwrap();
                assert_eq!(got, want);
                assert_eq!(
                    crlf_len(Trickle {
                        data: &input,
                        n: chunk
                    })
                    .unwrap(),
                    want.len() as u64
                );
            }
        }
    }

    #[test]
    fn cr_at_the_real_chunk_boundary() {
        let mut input = vec![b'a'; 3 * CHUNK];
        input[CHUNK - 1] = b'\r';
        input[CHUNK] = b'\n';
        input[2 * CHUNK - 1] = b'\r';
        input[2 * CHUNK] = b'z';
        let want = reference(&input);
        let mut got = Vec::new();
        CrlfReader::new(&input[..]).read_to_end(&mut got).unwrap();
        assert_eq!(got, want);
        assert_eq!(got.len(), 3 * CHUNK + 2);
        assert_eq!(crlf_len(&input[..]).unwrap(), want.len() as u64);
    }

    #[test]
    fn reader_serves_tiny_reads() {
        let input = b"line one\nline two\r\nend";
        let mut r = CrlfReader::new(&input[..]);
        let mut got = Vec::new();
        let mut one = [0u8; 1];
        while r.read(&mut one).unwrap() == 1 {
            got.push(one[0]);
        }
        assert_eq!(got, b"line one\r\nline two\r\nend\r\n");
    }
}
