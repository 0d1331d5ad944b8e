//! Messages postoffice itself delivers into a maildrop, so that a POP3 user
//! sees the provider's policy where they read mail: the quota warning, the
//! retention notice and the quarantine digest (which, unlike the other
//! two, goes through [`crate::delivery::Local`] and its quotas; see
//! [`crate::quarantine_digest`]).
//!
//! A notice is a plain RFC 5322 message (UTF-8 text, `Auto-Submitted:
//! auto-generated`, `X-Postoffice-Notice: <kind>`) from the postmaster of
//! the user's domain. Its text comes from a template file
//! (`[notices]`, per domain in `[notices.domains."DOMAIN"]`) or the built-in
//! English text: an optional first line `Subject: ...`, then the body, with
//! `{placeholders}` replaced. Notices are stored with
//! [`MailStore::deliver`] directly: they bypass the quota (a warning about a
//! full mailbox must arrive) and are small.

use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use postoffice_common::date::rfc5322;
use postoffice_common::ids::unique_id;
use postoffice_config::Config;
use postoffice_store::{Delivered, MailStore, StoreError};

/// The header marking our own notices (retention notices do not list them).
pub const NOTICE_HEADER: &str = "X-Postoffice-Notice";

const QUOTA_WARNING: &str = "\
Subject: Your mailbox is {percent}% full
Your mailbox {address} holds {used_bytes} of {quota_bytes} bytes and {used_messages} of {quota_messages} messages: it has passed {level}% of its quota.

{over_quota}

Download your mail with \"delete from server\" (or delete messages you no longer need) to make room.
";

const RETENTION_NOTICE: &str = "\
Subject: {count} messages will be deleted from the server
The mail server deletes old mail after a fixed time. These {count} messages in {address} will be deleted within {days} days:

{messages}

If your mail program leaves mail on the server, it already has a copy of each message it downloaded. Messages nobody downloaded yet are listed too: download them before the date shown if you want to keep them.
";

const QUARANTINE_DIGEST: &str = "\
Subject: {count} held in quarantine
The mail server held {count} to {address} in quarantine instead of putting them in your mailbox: they looked like spam, carried a virus or failed a check of the sender. Your mail program does not see them; they stay in the quarantine until they are released or deleted.

{messages}

{release}
";

/// One message a quarantine digest lists (values already one line).
#[derive(Debug, Clone)]
pub struct Held {
    /// When it arrived.
    pub received: SystemTime,
    /// Its `From:`.
    pub from: String,
    /// Its `Subject:` (decoded).
    pub subject: String,
    /// Why it was held.
    pub reason: String,
    /// Its UID in the quarantine (what the release takes).
    pub uid: String,
}

/// The quarantine digest for `address` listing `held` (`older`: messages
/// listed by earlier digests and still held; `web`: the user's web page,
/// when the web interface runs). Kind `quarantine-digest`.
pub fn quarantine_digest(
    config: &Config,
    address: &str,
    held: &[Held],
    older: usize,
    web: Option<&str>,
) -> Vec<u8> {
    let mut lines = String::new();
    for (n, m) in held.iter().enumerate() {
        let _ = write!(
            lines,
            "{}. {}\n   From:    {}\n   Subject: {}\n   Reason:  {}\n   Release: postoffice quarantine release {address} {}\n\n",
            n + 1,
            rfc5322(m.received),
            one_line(&m.from, 200),
            one_line(&m.subject, 200),
            one_line(&m.reason, 200),
            m.uid,
        );
    }
    let mut release = match web {
        Some(url) => format!(
            "To get a message you want after all, release it: sign in at {url} and choose \"Release\" beside it, or ask your mail administrator to run its \"Release:\" command above. It then arrives in your mailbox as it was sent."
        ),
        None => "To get a message you want after all, ask your mail administrator to run its \"Release:\" command above. It then arrives in your mailbox as it was sent.".to_owned(),
    };
    if older > 0 {
        let _ = write!(
            release,
            "\n\n{older} more messages, listed in earlier digests, are still held."
        );
    }
    let text = render(
        QUARANTINE_DIGEST,
        &[
            ("address", address.to_owned()),
            (
                "count",
                match held.len() {
                    1 => "1 new message".to_owned(),
                    n => format!("{n} new messages"),
                },
            ),
            ("messages", lines.trim_end().to_owned()),
            ("release", release),
        ],
    );
    message(config, address, DIGEST_KIND, &text)
}

/// The `X-Postoffice-Notice:` kind of the quarantine digest.
pub const DIGEST_KIND: &str = "quarantine-digest";

/// Why a notice could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    /// The template file could not be read.
    #[error("cannot read the notice template {path}: {source}")]
    Template {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The store refused it.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a quota warning reports.
#[derive(Debug, Clone)]
pub struct QuotaWarning<'a> {
    /// The user.
    pub address: &'a str,
    /// The level crossed (percent).
    pub level: u8,
    /// Usage after the delivery that crossed it.
    pub used_bytes: u64,
    /// Messages after it.
    pub used_messages: u64,
    /// The byte quota, if any.
    pub quota_bytes: Option<u64>,
    /// The message quota, if any.
    pub quota_messages: Option<u64>,
    /// Whether the mailbox makes room (`over_quota = "make_room"`).
    pub make_room: bool,
}

impl QuotaWarning<'_> {
    /// The highest share of either quota in use, in percent.
    pub fn percent(&self) -> u64 {
        let share = |used: u64, quota: Option<u64>| {
            quota
                .filter(|q| *q > 0)
                .map_or(0, |q| used.saturating_mul(100) / q)
        };
        share(self.used_bytes, self.quota_bytes).max(share(self.used_messages, self.quota_messages))
    }
}

/// One message a retention notice lists.
#[derive(Debug, Clone)]
pub struct Listed {
    /// When retention will delete it.
    pub deletion: SystemTime,
    /// Its `Date:` (as written), or the delivery time.
    pub date: String,
    /// Its `From:`.
    pub from: String,
    /// Its `Subject:`.
    pub subject: String,
}

fn unlimited(q: Option<u64>) -> String {
    q.map_or_else(|| "unlimited".to_owned(), |q| q.to_string())
}

/// Deliver a quota warning into `w.address`'s maildrop.
pub fn deliver_quota_warning(
    config: &Config,
    store: &dyn MailStore,
    w: &QuotaWarning<'_>,
) -> Result<Delivered, NoticeError> {
    let template = load(
        config.notices.quota_warning(domain_of(w.address)),
        QUOTA_WARNING,
    )?;
    let over = if w.make_room {
        "When it is full, the oldest messages your mail program has already downloaded are deleted to make room for new ones; messages nobody downloaded are never deleted for this, and new mail is refused if there is no other way."
    } else {
        "When it is full, new mail to you is refused: senders get an error or a delayed-delivery notice, until there is room again."
    };
    let text = render(
        &template,
        &[
            ("address", w.address.to_owned()),
            ("percent", w.percent().to_string()),
            ("level", w.level.to_string()),
            ("used_bytes", w.used_bytes.to_string()),
            ("quota_bytes", unlimited(w.quota_bytes)),
            ("used_messages", w.used_messages.to_string()),
            ("quota_messages", unlimited(w.quota_messages)),
            ("over_quota", over.to_owned()),
        ],
    );
    deliver(config, store, w.address, "quota-warning", &text)
}

/// Deliver a retention notice listing `listed` into `address`'s maildrop.
pub fn deliver_retention_notice(
    config: &Config,
    store: &dyn MailStore,
    address: &str,
    days: u32,
    listed: &[Listed],
) -> Result<Delivered, NoticeError> {
    let template = load(
        config.notices.retention_notice(domain_of(address)),
        RETENTION_NOTICE,
    )?;
    let mut lines = String::new();
    for m in listed {
        let _ = writeln!(
            lines,
            "- deleted on {}: {} | from {} | {}",
            postoffice_common::date::rfc5322(m.deletion),
            m.date,
            m.from,
            m.subject
        );
    }
    let text = render(
        &template,
        &[
            ("address", address.to_owned()),
            ("count", listed.len().to_string()),
            ("days", days.to_string()),
            ("messages", lines.trim_end().to_owned()),
        ],
    );
    deliver(config, store, address, "retention", &text)
}

fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

fn load(path: Option<&Path>, builtin: &str) -> Result<String, NoticeError> {
    match path {
        None => Ok(builtin.to_owned()),
        Some(p) => std::fs::read_to_string(p).map_err(|source| NoticeError::Template {
            path: p.display().to_string(),
            source,
        }),
    }
}

/// Replaces `{name}` by its value; unknown names stay as they are.
fn render(template: &str, values: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}').and_then(|close| {
            let name = &after[..close];
            values
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (v, close))
        }) {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A header value made safe: one line, no control characters, bounded.
pub(crate) fn one_line(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// The message of a rendered template (`Subject:` line, body) for `to`.
fn message(config: &Config, to: &str, kind: &str, text: &str) -> Vec<u8> {
    let (subject, body) = match text.split_once('\n') {
        Some((first, body)) if first.starts_with("Subject:") => {
            (first["Subject:".len()..].trim().to_owned(), body)
        }
        _ => ("Message from your mail server".to_owned(), text),
    };
    let domain = match domain_of(to) {
        "" => config.hostname.as_str(),
        d => d,
    };
    let subject = encode_word(&one_line(&subject, 200));
    let mut m = String::with_capacity(body.len() + 512);
    let _ = write!(
        m,
        "From: Mail System <postmaster@{domain}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nDate: {}\r\nMessage-ID: <{}.notice@{}>\r\nAuto-Submitted: auto-generated\r\n{NOTICE_HEADER}: {kind}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
        rfc5322(SystemTime::now()),
        unique_id(),
        config.hostname
    );
    for line in body.lines() {
        m.push_str(line);
        m.push_str("\r\n");
    }
    m.into_bytes()
}

/// RFC 2047 for a header value that is not plain ASCII (subjects of the
/// messages postoffice writes itself: notices, vacation replies).
pub(crate) fn encode_word(s: &str) -> String {
    if s.is_ascii() {
        return s.to_owned();
    }
    use base64::Engine as _;
    format!(
        "=?utf-8?B?{}?=",
        base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
    )
}

fn deliver(
    config: &Config,
    store: &dyn MailStore,
    to: &str,
    kind: &str,
    text: &str,
) -> Result<Delivered, NoticeError> {
    let bytes = message(config, to, kind, text);
    Ok(store.deliver(to, &mut bytes.as_slice())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        assert_eq!(
            render("a {x} b {y} {z} {", &[("x", "1".into()), ("y", "2".into())]),
            "a 1 b 2 {z} {"
        );
        assert_eq!(one_line("a\r\nb\tc", 100), "a b c");
        assert_eq!(one_line("abcdef", 3), "abc…");
    }

    #[test]
    fn digest_lists_each_message_with_its_release() {
        let config = Config::default();
        let held = [Held {
            received: SystemTime::UNIX_EPOCH,
            from: "Eve <eve@spam.test>\r\nBcc: x".into(),
            subject: "buy\tnow".into(),
            reason: "spam score 15.00".into(),
            uid: "1700000000.M1P2.host".into(),
        }];
        let m = String::from_utf8(quarantine_digest(
            &config,
            "a@example.test",
            &held,
            2,
            Some("https://mx.test/me"),
        ))
        .unwrap();
        assert!(
            m.contains("\r\nSubject: 1 new message held in quarantine\r\n"),
            "{m}"
        );
        assert!(m.contains("\r\nX-Postoffice-Notice: quarantine-digest\r\n"));
        assert!(
            m.contains("\r\n   From:    Eve <eve@spam.test> Bcc: x\r\n"),
            "{m}"
        );
        assert!(m.contains("\r\n   Subject: buy now\r\n"), "{m}");
        assert!(m.contains("\r\n   Reason:  spam score 15.00\r\n"), "{m}");
        assert!(m.contains(
            "\r\n   Release: postoffice quarantine release a@example.test 1700000000.M1P2.host\r\n"
        ));
        assert!(m.contains("sign in at https://mx.test/me"), "{m}");
        assert!(
            m.contains("2 more messages, listed in earlier digests"),
            "{m}"
        );
        assert!(!m.contains("\n\n") && !m.contains("\r\r"), "CRLF only");
    }

    #[test]
    fn builtin_warning_message() {
        let config = Config::default();
        let w = QuotaWarning {
            address: "a@example.test",
            level: 80,
            used_bytes: 850,
            used_messages: 3,
            quota_bytes: Some(1000),
            quota_messages: None,
            make_room: false,
        };
        assert_eq!(w.percent(), 85);
        let text = render(
            QUOTA_WARNING,
            &[("percent", w.percent().to_string()), ("level", "80".into())],
        );
        let m = String::from_utf8(message(&config, w.address, "quota-warning", &text)).unwrap();
        assert!(
            m.contains("\r\nSubject: Your mailbox is 85% full\r\n"),
            "{m}"
        );
        assert!(m.contains("\r\nX-Postoffice-Notice: quota-warning\r\n"));
        assert!(m.contains("From: Mail System <postmaster@example.test>"));
        assert!(m.contains("passed 80% of its quota"));
        assert!(!m.contains("\n\n"), "CRLF only");
    }
}
