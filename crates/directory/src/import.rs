//! Import of Dovecot `passwd-file` databases, so that a site can move to
//! postoffice without resetting every password.
//!
//! Lines look like `user@domain:{SCHEME}hash[:uid:gid:gecos:home:shell:extra]`.
//! Only the first two fields are used. Hashes we can verify (SHA512-CRYPT,
//! SHA256-CRYPT, `{CRYPT}` holding `$6$`/`$5$`, ARGON2ID/ARGON2I, and bare
//! `$6$`/`$5$`/`$argon2…` strings) are stored as they are; any other line is
//! skipped with its line number and a reason, and the rest still imported.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use crate::address::normalize_address;
use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::password::validate_hash;

/// How to treat entries that do not fit the existing directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportOptions {
    /// Add domains that are not in the directory yet (default `true`);
    /// when `false`, users of unknown domains are skipped.
    pub create_missing_domains: bool,
    /// Replace the password of users that already exist (default `true`);
    /// when `false`, they are skipped.
    pub update_existing: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            create_missing_domains: true,
            update_existing: true,
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Users newly added.
    pub added: usize,
    /// Existing users whose password hash was replaced.
    pub updated: usize,
    /// Domains that were created for imported users.
    pub domains_created: Vec<String>,
    /// Lines not imported: 1-based line number and the reason, in line
    /// order. Blank lines and `#` comments are not listed.
    pub skipped: Vec<(usize, String)>,
}

/// A skipped input line: 1-based line number and the reason.
type Skipped = (usize, String);

struct Entry {
    line: usize,
    address: String,
    hash: String,
}

impl Directory {
    /// Imports a Dovecot passwd-file from `path`; see
    /// [`Directory::import_dovecot_passwd`].
    pub fn import_dovecot_passwd_file(
        &self,
        path: &Path,
        options: ImportOptions,
    ) -> Result<ImportReport> {
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        self.import_dovecot_passwd(BufReader::new(file), options)
    }

    /// Imports Dovecot passwd-file lines from `reader`.
    ///
    /// The whole input is validated first and then applied in a single
    /// locked write, so the import is all-or-nothing with respect to I/O
    /// errors and concurrent CLI runs; bad lines only skip themselves.
    pub fn import_dovecot_passwd(
        &self,
        reader: impl BufRead,
        options: ImportOptions,
    ) -> Result<ImportReport> {
        let (entries, mut skipped) = parse_lines(reader)?;
        let mut report = self.mutate(|data| {
            let mut report = ImportReport::default();
            for e in entries {
                let domain = e.address.rsplit_once('@').map_or("", |(_, d)| d);
                if data.alias(&e.address).is_some() || data.domain_alias(domain).is_some() {
                    report.skipped.push((
                        e.line,
                        format!(
                            "{} is an alias or in a domain alias; remove the alias first",
                            e.address
                        ),
                    ));
                    continue;
                }
                if data.domain(domain).is_none() {
                    if !options.create_missing_domains {
                        report.skipped.push((
                            e.line,
                            format!(
                                "domain {domain} does not exist; add it first or allow \
                                 creating missing domains"
                            ),
                        ));
                        continue;
                    }
                    let name = data.add_domain(domain)?;
                    report.domains_created.push(name);
                }
                if data.user(&e.address).is_some() {
                    if !options.update_existing {
                        report.skipped.push((
                            e.line,
                            format!(
                                "user {} already exists and updating existing users was not requested",
                                e.address
                            ),
                        ));
                        continue;
                    }
                    data.user_mut(&e.address)?.password_hash = e.hash;
                    report.updated += 1;
                } else {
                    data.add_user(&e.address, &e.hash)?;
                    report.added += 1;
                }
            }
            Ok(report)
        })?;
        report.skipped.append(&mut skipped);
        report.skipped.sort_by_key(|(line, _)| *line);
        Ok(report)
    }
}

/// Splits the input into importable entries and skipped lines.
fn parse_lines(mut reader: impl BufRead) -> Result<(Vec<Entry>, Vec<Skipped>)> {
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    loop {
        buf.clear();
        // Bytes, not `lines()`, so one non-UTF-8 line is skipped instead of
        // aborting the whole import.
        if reader
            .read_until(b'\n', &mut buf)
            .map_err(Error::ImportRead)?
            == 0
        {
            break;
        }
        line_no += 1;
        let raw = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(line) = std::str::from_utf8(raw) else {
            skipped.push((line_no, "line is not valid UTF-8".to_owned()));
            continue;
        };
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok((address, hash)) => {
                if let Some(first) = seen.get(&address) {
                    skipped.push((
                        line_no,
                        format!("{address} already appeared on line {first}"),
                    ));
                    continue;
                }
                seen.insert(address.clone(), line_no);
                entries.push(Entry {
                    line: line_no,
                    address,
                    hash,
                });
            }
            Err(reason) => skipped.push((line_no, reason)),
        }
    }
    Ok((entries, skipped))
}

/// Parses one non-blank, non-comment line into (canonical address, hash).
fn parse_line(line: &str) -> std::result::Result<(String, String), String> {
    let mut fields = line.split(':');
    let user = fields.next().unwrap_or("");
    let Some(password) = fields.next() else {
        return Err("no ':' after the user name; expected user@domain:{SCHEME}hash".to_owned());
    };
    if !user.contains('@') && !user.is_empty() {
        return Err(format!(
            "user name {user:?} has no @domain part; postoffice logins are full addresses"
        ));
    }
    let address = normalize_address(user).map_err(|e| e.to_string())?;
    if password.is_empty() {
        return Err(format!("{address} has an empty password field"));
    }
    validate_hash(password).map_err(|e| match e {
        Error::UnsupportedHash { reason } => {
            format!("{address}: {reason}; the user needs a new password")
        }
        other => other.to_string(),
    })?;
    Ok((address, password.to_owned()))
}
