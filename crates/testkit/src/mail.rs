//! Messages and what the protocols do to them.

use std::path::{Path, PathBuf};

use base64::Engine;

/// A small RFC 5322 message (CRLF line ends).
pub fn simple_message(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: sender@example.net\r\nTo: someone@example.test\r\nSubject: {subject}\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

/// The CRLF-separated lines of a multi-line body.
pub fn lines_of(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split_terminator("\r\n")
        .map(str::to_string)
        .collect()
}

/// What the store keeps and RETR sends (before dot-stuffing): bare LF
/// becomes CRLF, CRLF stays, and a final CRLF is added when missing.
pub fn crlf_normalize(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + msg.len() / 32 + 2);
    for (i, &b) in msg.iter().enumerate() {
        if b == b'\n' && (i == 0 || msg[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// RFC 1939 / RFC 5321 byte-stuffing of a CRLF message: lines starting
/// with "." get another ".".
pub fn dot_stuff(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 64);
    let mut at_start = true;
    for &b in msg {
        if at_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_start = b == b'\n';
    }
    out
}

/// Undoes byte-stuffing of a received body: the first "." of a line that
/// starts with one is dropped.
pub fn dot_unstuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut at_start = true;
    for &b in body {
        if !(at_start && b == b'.') {
            out.push(b);
        }
        at_start = b == b'\n';
    }
    out
}

/// Standard base64 with padding (for SASL).
pub fn base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Every file (not directory) below `dir`, recursively, sorted; none when
/// `dir` does not exist.
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_and_stuffing() {
        assert_eq!(crlf_normalize(b"a\nb\r\nc"), b"a\r\nb\r\nc\r\n");
        assert_eq!(crlf_normalize(b"\n"), b"\r\n");
        let m = b".a\r\nb\r\n..c\r\n.\r\n";
        let stuffed = dot_stuff(m);
        assert_eq!(stuffed, b"..a\r\nb\r\n...c\r\n..\r\n");
        assert_eq!(dot_unstuff(&stuffed), m);
        assert_eq!(lines_of(b"a\r\nb\r\n"), ["a", "b"]);
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"\0u\0p"), "AHUAcA==");
        assert_eq!(base64(b"abc"), "YWJj");
    }

    #[test]
    fn all_files_recurses_and_sorts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("x/y")).unwrap();
        std::fs::write(dir.path().join("x/y/b"), "").unwrap();
        std::fs::write(dir.path().join("a"), "").unwrap();
        assert_eq!(
            all_files(dir.path()),
            [dir.path().join("a"), dir.path().join("x/y/b")]
        );
        assert!(all_files(&dir.path().join("none")).is_empty());
    }
}
