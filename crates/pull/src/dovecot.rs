//! Reading a Dovecot Maildir: its `dovecot-uidlist` (IMAP UIDs, the
//! UIDVALIDITY, saved POP3 UIDLs) and the UIDL Dovecot's POP3 server shows
//! for each message (`pop3_uidl_format`, default `%08Xu%08Xv`).
//!
//! `dovecot-uidlist` version 3 (Dovecot 1.1 and later):
//!
//! ```text
//! 3 V1700000000 N4 G3085f01b7f11094c501100008c4a11c1
//! 1 :1700000000.M1P2.host,S=123,W=130
//! 2 G6a1f... W130 :1700000001.M2P2.host,S=200,W=204
//! 3 P00000003abcdef :1700000002.M3P2.host
//! ```
//!
//! The header has the version, `V` UIDVALIDITY, `N` next UID; each record
//! a UID, extension fields (`G` GUID, `W` virtual size, `P` a POP3 UIDL
//! saved by `pop3_save_uidl` or an earlier migration, ...) and, after ':',
//! the file name without its `:2,` flags. Version 1 is `1 <uidvalidity>
//! <nextuid>` and `<uid> <file name>` records.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Dovecot's default `pop3_uidl_format`.
pub const DEFAULT_UIDL_FORMAT: &str = "%08Xu%08Xv";

/// Why a Dovecot Maildir could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DovecotError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `dovecot-uidlist` is not in a format this reader knows.
    #[error("{path}: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        why: String,
    },
    /// The UIDL format uses a variable this reader cannot compute.
    #[error(
        "pop3_uidl_format {0:?} is not supported (supported: %u, %v, %f, %g with optional 0, width and X/x, e.g. %08Xu%08Xv)"
    )]
    UidlFormat(String),
}

/// One record of `dovecot-uidlist`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The IMAP UID.
    pub uid: u32,
    /// Extension fields by key letter (`G`, `W`, `P`, ...).
    pub ext: HashMap<char, String>,
    /// The file name without flags.
    pub file: String,
}

/// A parsed `dovecot-uidlist`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UidList {
    /// The mailbox's UIDVALIDITY.
    pub uidvalidity: u32,
    /// The next UID Dovecot would assign.
    pub next_uid: u32,
    /// The records, in file order (ascending UIDs).
    pub records: Vec<Record>,
}

impl UidList {
    /// Reads `<maildir>/dovecot-uidlist`.
    pub fn load(maildir: &Path) -> Result<UidList, DovecotError> {
        let path = maildir.join("dovecot-uidlist");
        let text = fs::read_to_string(&path).map_err(|source| DovecotError::Io {
            path: path.clone(),
            source,
        })?;
        UidList::parse(&text).map_err(|why| DovecotError::Format { path, why })
    }

    /// Parses the text of a `dovecot-uidlist`.
    pub fn parse(text: &str) -> Result<UidList, String> {
        let mut lines = text.lines();
        let header = lines.next().ok_or("the file is empty")?;
        let mut words = header.split_ascii_whitespace();
        let version = words.next().ok_or("no version in the header")?;
        let mut list = UidList::default();
        let v3 = match version {
            "1" => {
                let num = |w: Option<&str>| w.and_then(|w| w.parse::<u32>().ok());
                list.uidvalidity = num(words.next()).ok_or("header: no UIDVALIDITY")?;
                list.next_uid = num(words.next()).ok_or("header: no next UID")?;
                false
            }
            "2" | "3" => {
                for w in words {
                    let (k, v) = w.split_at(1);
                    match k {
                        "V" => list.uidvalidity = v.parse().map_err(|_| "header: bad V")?,
                        "N" => list.next_uid = v.parse().map_err(|_| "header: bad N")?,
                        _ => {}
                    }
                }
                true
            }
            v => return Err(format!("unknown dovecot-uidlist version {v:?}")),
        };
        for (n, line) in lines.enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |why: &str| format!("line {}: {why}", n + 2);
            let (uid, rest) = line.split_once(' ').ok_or_else(|| bad("no file name"))?;
            let uid: u32 = uid.parse().map_err(|_| bad("bad UID"))?;
            let mut ext = HashMap::new();
            let file = if v3 {
                let (fields, file) = rest.split_once(':').ok_or_else(|| bad("no ':'"))?;
                for f in fields.split_ascii_whitespace() {
                    let mut chars = f.chars();
                    if let Some(k) = chars.next() {
                        ext.insert(k, chars.as_str().to_owned());
                    }
                }
                file
            } else {
                rest.trim()
            };
            if file.is_empty() || file.contains('/') {
                return Err(bad("bad file name"));
            }
            list.records.push(Record {
                uid,
                ext,
                file: file.to_owned(),
            });
        }
        list.records.sort_by_key(|r| r.uid);
        Ok(list)
    }
}

/// The UIDL Dovecot's POP3 server shows for a message: a saved `P` field,
/// else `format` expanded.
pub fn uidl(format: &str, list: &UidList, record: &Record) -> Result<String, DovecotError> {
    if let Some(p) = record.ext.get(&'P').filter(|p| !p.is_empty()) {
        return Ok(p.clone());
    }
    expand(format, list.uidvalidity, record)
}

/// Expands Dovecot's `%[0][width][X|x]<var>` for u (UID), v (UIDVALIDITY),
/// f (file name), g (GUID: the `G` field, else the file name's base).
pub fn expand(format: &str, uidvalidity: u32, record: &Record) -> Result<String, DovecotError> {
    let unsupported = || DovecotError::UidlFormat(format.to_owned());
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut zero = false;
        let mut width = 0usize;
        let mut hex = None;
        if chars.peek() == Some(&'%') {
            chars.next();
            out.push('%');
            continue;
        }
        if chars.peek() == Some(&'0') {
            zero = true;
            chars.next();
        }
        while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
            width = width * 10 + d as usize;
            chars.next();
        }
        if let Some(&m @ ('X' | 'x')) = chars.peek() {
            hex = Some(m);
            chars.next();
        }
        let var = chars.next().ok_or_else(unsupported)?;
        let value = match (var, hex) {
            ('u', None) => record.uid.to_string(),
            ('v', None) => uidvalidity.to_string(),
            // Dovecot's %X is lower-case hexadecimal.
            ('u', Some(_)) => format!("{:x}", record.uid),
            ('v', Some(_)) => format!("{uidvalidity:x}"),
            ('f', None) => record.file.clone(),
            ('g', None) => record.ext.get(&'G').cloned().unwrap_or_else(|| {
                record
                    .file
                    .split([',', ':'])
                    .next()
                    .unwrap_or("")
                    .to_owned()
            }),
            _ => return Err(unsupported()),
        };
        if value.len() < width {
            let pad = if zero { '0' } else { ' ' };
            for _ in value.len()..width {
                out.push(pad);
            }
        }
        let _ = write!(out, "{value}");
    }
    Ok(out)
}

/// One message of a Dovecot Maildir, as Dovecot's POP3 server lists it.
#[derive(Debug, Clone)]
pub struct Message {
    /// The IMAP UID (the POP3 order).
    pub uid: u32,
    /// The UIDL.
    pub uidl: String,
    /// The file.
    pub path: PathBuf,
    /// Its modification time: Dovecot's received date.
    pub received: SystemTime,
}

/// The messages of the Dovecot Maildir at `maildir` in Dovecot's POP3
/// order, with their UIDLs, and notes for the operator (files the uidlist
/// does not know yet get the UIDs Dovecot would give them, in file-name
/// order; records without a file are skipped).
pub fn messages(maildir: &Path, format: &str) -> Result<(Vec<Message>, Vec<String>), DovecotError> {
    let list = UidList::load(maildir)?;
    let mut files: HashMap<String, PathBuf> = HashMap::new();
    for sub in ["cur", "new"] {
        let dir = maildir.join(sub);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(DovecotError::Io { path: dir, source }),
        };
        for entry in entries {
            let entry = entry.map_err(|source| DovecotError::Io {
                path: dir.clone(),
                source,
            })?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            files.insert(base(&name).to_owned(), entry.path());
        }
    }
    let mut notes = Vec::new();
    let mut out = Vec::with_capacity(list.records.len());
    let push = |record: &Record, path: PathBuf, out: &mut Vec<Message>| {
        let received = fs::metadata(&path)
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| SystemTime::now());
        out.push(Message {
            uid: record.uid,
            uidl: uidl(format, &list, record)?,
            path,
            received,
        });
        Ok::<_, DovecotError>(())
    };
    for record in &list.records {
        match files.remove(base(&record.file)) {
            Some(path) => push(record, path, &mut out)?,
            None => notes.push(format!(
                "UID {} ({}) is in dovecot-uidlist but its file is gone; skipped",
                record.uid, record.file
            )),
        }
    }
    let mut unknown: Vec<(String, PathBuf)> = files.into_iter().collect();
    unknown.sort();
    let first = list
        .next_uid
        .max(list.records.last().map_or(1, |r| r.uid + 1));
    for (next, (name, path)) in (first..).zip(unknown) {
        notes.push(format!(
            "{name} is not in dovecot-uidlist yet; it gets UID {next}, as Dovecot would give it"
        ));
        let record = Record {
            uid: next,
            ext: HashMap::new(),
            file: name,
        };
        push(&record, path, &mut out)?;
    }
    Ok((out, notes))
}

/// A Maildir file name's base: up to the first ',' (fields) or ':' (flags).
fn base(name: &str) -> &str {
    name.split([',', ':']).next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_version_3_and_expands_uidls() {
        let text = "3 V1700000000 N5 G3085f01b\n1 :1700000000.M1P2.host,S=12,W=13\n2 G6a1f W130 :1700000001.M2.host\n4 P0000abcd :1700000002.M3.host\n";
        let list = UidList::parse(text).unwrap();
        assert_eq!(list.uidvalidity, 1_700_000_000);
        assert_eq!(list.next_uid, 5);
        assert_eq!(list.records.len(), 3);
        let r = &list.records[0];
        assert_eq!(r.file, "1700000000.M1P2.host,S=12,W=13");
        assert_eq!(
            uidl(DEFAULT_UIDL_FORMAT, &list, r).unwrap(),
            "000000016553f100"
        );
        assert_eq!(
            uidl(DEFAULT_UIDL_FORMAT, &list, &list.records[2]).unwrap(),
            "0000abcd"
        );
        assert_eq!(expand("%g", 1, &list.records[1]).unwrap(), "6a1f");
        assert_eq!(
            expand("%g", 1, &list.records[0]).unwrap(),
            "1700000000.M1P2.host"
        );
        assert_eq!(expand("%u.%v%%", 7, &list.records[0]).unwrap(), "1.7%");
        assert!(expand("%m", 7, &list.records[0]).is_err());
    }

    #[test]
    fn parses_version_1() {
        let list = UidList::parse("1 42 3\n1 a.b.c\n2 d.e.f:2,S\n").unwrap();
        assert_eq!(list.uidvalidity, 42);
        assert_eq!(list.records[1].file, "d.e.f:2,S");
        assert!(UidList::parse("9 x").is_err());
        assert!(UidList::parse("3 V1 N2\nx :y\n").is_err());
    }
}
