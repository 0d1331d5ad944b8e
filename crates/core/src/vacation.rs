//! Vacation auto-replies (RFC 3834): `postoffice user set ADDR
//! --vacation-file FILE [--vacation-until DATE]`.
//!
//! After a message is delivered to a user with a vacation reply set (and
//! not expired), the sender gets the reply unless RFC 3834 says not to:
//!
//! - never to the null sender, nor to `owner-*`, `*-request` or
//!   `MAILER-DAEMON` senders (§2: list and system addresses);
//! - never to mailing-list mail (`List-Id:` or any `List-*:` field,
//!   `Precedence: bulk|list|junk`) nor to other automatic mail
//!   (`Auto-Submitted:` other than `no`);
//! - only when the user's address is in `To:` or `Cc:` (§2: not to Bcc or
//!   list copies);
//! - at most once per sender in `[addresses] vacation_interval_days`
//!   (the state is kept in `<data_dir>/vacation.txt`, written durably; with
//!   the PostgreSQL backend in the database, shared by every node).
//!
//! The reply has the null envelope sender (§3.3, so nothing ever answers
//! it), `Auto-Submitted: auto-replied`, `In-Reply-To:` and `References:`
//! (§3.1.5), is DKIM-signed when a key exists for the user's domain, and
//! goes through the outbound queue, or straight into the maildrop when
//! the sender is local. A failure to reply is logged; it never affects
//! the delivery of the message itself.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::SystemTime;

use postoffice_common::content::Pieces;
use postoffice_common::date::{iso_date, rfc5322};
use postoffice_common::ids::unique_id;
use postoffice_directory::Vacation;
use tracing::{info, warn};

use crate::App;

/// The file of who was answered when, in the data directory.
pub const STATE_FILE: &str = "vacation.txt";

/// Header fields of a header section, unfolded: (name, value).
pub fn header_fields(header: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(header);
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':')
            && !name.is_empty()
            && !name.contains([' ', '\t'])
        {
            out.push((name.to_string(), value.trim().to_string()));
        }
    }
    out
}

/// Addresses (`local@domain`, lower case) found in an address header value.
fn addresses_in(value: &str) -> Vec<String> {
    value
        .split(|c: char| c.is_whitespace() || "<>,;:\"()[]".contains(c))
        .filter(|t| t.contains('@') && !t.starts_with('@') && !t.ends_with('@'))
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Why no reply is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The null sender.
    NullSender,
    /// `owner-*`, `*-request`, `MAILER-DAEMON`...
    SystemSender,
    /// `List-Id:`/`List-*:` or `Precedence: bulk|list|junk`.
    MailingList,
    /// `Auto-Submitted:` other than `no`.
    AutoSubmitted,
    /// The user is in neither `To:` nor `Cc:`.
    NotAddressed,
    /// Answered within the interval.
    Recently,
    /// The vacation ended.
    Expired,
}

impl Skip {
    /// The word in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NullSender => "null sender",
            Skip::SystemSender => "system sender",
            Skip::MailingList => "mailing list",
            Skip::AutoSubmitted => "auto-submitted",
            Skip::NotAddressed => "not in To/Cc",
            Skip::Recently => "replied recently",
            Skip::Expired => "vacation ended",
        }
    }
}

/// The rules of RFC 3834 §2 on a message to the user known by
/// `addresses` (lower case: the user's own, and the recipient addresses
/// that led to it) from the envelope sender `mail_from` with header fields
/// `fields`.
pub fn check(addresses: &[&str], mail_from: &str, fields: &[(String, String)]) -> Result<(), Skip> {
    if mail_from.is_empty() {
        return Err(Skip::NullSender);
    }
    let local = mail_from
        .rsplit_once('@')
        .map_or(mail_from, |(l, _)| l)
        .to_ascii_lowercase();
    if local.starts_with("owner-")
        || local.ends_with("-request")
        || local == "mailer-daemon"
        || local.ends_with("-owner")
    {
        return Err(Skip::SystemSender);
    }
    let mut addressed = false;
    for (name, value) in fields {
        let n = name.to_ascii_lowercase();
        if n.starts_with("list-") {
            return Err(Skip::MailingList);
        }
        if n == "precedence"
            && ["bulk", "list", "junk"].contains(&value.trim().to_ascii_lowercase().as_str())
        {
            return Err(Skip::MailingList);
        }
        if n == "auto-submitted" {
            let v = value.split(';').next().unwrap_or("").trim();
            if !v.eq_ignore_ascii_case("no") {
                return Err(Skip::AutoSubmitted);
            }
        }
        if (n == "to" || n == "cc")
            && addresses_in(value)
                .iter()
                .any(|a| addresses.contains(&a.as_str()))
        {
            addressed = true;
        }
    }
    if !addressed {
        return Err(Skip::NotAddressed);
    }
    Ok(())
}

/// Is the vacation in force on `today` (`YYYY-MM-DD`)?
pub fn active(v: &Vacation, today: &str) -> bool {
    v.until.as_deref().is_none_or(|u| u >= today)
}

fn state_path(app: &App) -> PathBuf {
    app.config.data_dir.join(STATE_FILE)
}

/// Record that `user` answers `sender` on day `day`, unless it did within
/// `interval` days: then `false`. Entries older than the interval are
/// dropped. The file is replaced durably before the reply is sent, so a
/// crash may lose a reply but never sends one twice.
fn record(app: &App, user: &str, sender: &str, day: u64, interval: u64) -> std::io::Result<bool> {
    if let Some(marks) = &app.marks {
        // Every node's replies in one place: one reply per sender and
        // interval whichever node delivers.
        let lifetime = std::time::Duration::from_secs(interval.saturating_mul(86_400));
        let key = format!("vacation {user} {}", sender.to_ascii_lowercase());
        return crate::inbound::blocking(|| {
            let set = marks.set_unless_recent(&key, lifetime)?;
            if set {
                marks.purge("vacation ", lifetime)?;
            }
            Ok::<_, postoffice_pg::PgError>(set)
        })
        .map_err(|e| std::io::Error::other(e.to_string()));
    }
    let _guard = app.vacation_state.lock().unwrap_or_else(|p| p.into_inner());
    let path = state_path(app);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let sender = sender.to_ascii_lowercase();
    let mut kept = String::with_capacity(text.len() + 64);
    let mut recent = false;
    for line in text.lines() {
        let mut w = line.split('\t');
        let (Some(u), Some(s), Some(d)) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        let Ok(d) = d.parse::<u64>() else { continue };
        if d + interval <= day {
            continue;
        }
        if u == user && s == sender {
            recent = true;
        }
        kept.push_str(line);
        kept.push('\n');
    }
    if recent {
        return Ok(false);
    }
    let _ = writeln!(kept, "{user}\t{sender}\t{day}");
    postoffice_common::durable::write(&path, kept.as_bytes())?;
    Ok(true)
}

/// The value of the first field `name` of `fields`.
fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The reply of `user` to `to`, answering a message with header `fields`.
pub fn build_reply(
    user: &str,
    to: &str,
    v: &Vacation,
    fields: &[(String, String)],
    hostname: &str,
) -> Vec<u8> {
    let subject = match &v.subject {
        Some(s) => s.clone(),
        None => {
            let orig = field(fields, "subject").unwrap_or("");
            // An encoded original subject stays as it was (ASCII).
            format!("Auto: {}", crate::notices::one_line(orig, 200))
        }
    };
    let subject = crate::notices::encode_word(&crate::notices::one_line(&subject, 250));
    let mut m = String::with_capacity(v.body.len() + 512);
    let _ = write!(
        m,
        "From: <{user}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nDate: {}\r\nMessage-ID: <{}.vacation@{hostname}>\r\n",
        rfc5322(SystemTime::now()),
        unique_id(),
    );
    if let Some(id) = field(fields, "message-id").map(str::trim)
        && id.starts_with('<')
        && id.len() < 1000
        && id.is_ascii()
    {
        let refs = field(fields, "references")
            .filter(|r| r.len() < 4000 && r.is_ascii())
            .map(|r| format!("{r} {id}"))
            .unwrap_or_else(|| id.to_string());
        let _ = write!(m, "In-Reply-To: {id}\r\nReferences: {refs}\r\n");
    }
    m.push_str(
        "Auto-Submitted: auto-replied\r\nPrecedence: bulk\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
    );
    for line in v.body.lines() {
        // No bare CR (or a lone "." issue: the queue dot-stuffs).
        m.push_str(line.trim_end_matches('\r'));
        m.push_str("\r\n");
    }
    m.into_bytes()
}

/// Answer a message just delivered to `user` (when its vacation is on and
/// the rules allow); `via` are the recipient addresses that led to the
/// user (an alias, a sub-address), which count like the user's own in
/// `To:`/`Cc:`. `header` is the message's header section as received.
pub fn reply(app: &App, user: &str, via: &[String], mail_from: &str, header: &[u8]) {
    let dir = app.directory.snapshot();
    let Some(v) = dir.user(user).and_then(|u| u.vacation.clone()) else {
        return;
    };
    let today = iso_date(SystemTime::now());
    let skip = |why: Skip| {
        info!(
            user,
            from = mail_from,
            why = why.as_str(),
            "no vacation reply"
        )
    };
    if !active(&v, &today) {
        return skip(Skip::Expired);
    }
    let fields = header_fields(header);
    let lower: Vec<String> = std::iter::once(user)
        .chain(via.iter().map(String::as_str))
        .map(str::to_ascii_lowercase)
        .collect();
    let addresses: Vec<&str> = lower.iter().map(String::as_str).collect();
    if let Err(why) = check(&addresses, mail_from, &fields) {
        return skip(why);
    }
    let interval = u64::from(app.config.addresses.vacation_interval_days.max(1));
    match record(app, user, mail_from, crate::srs::today(), interval) {
        Ok(true) => {}
        Ok(false) => return skip(Skip::Recently),
        Err(e) => {
            warn!(user, error = %e, "cannot update the vacation state; no reply sent");
            return;
        }
    }
    let message = build_reply(user, mail_from, &v, &fields, &app.config.hostname);
    let domain = user.rsplit_once('@').map_or("", |(_, d)| d);
    let message = match app.dkim.sign(domain, &message) {
        Some(sig) => {
            let mut signed = sig.into_bytes();
            signed.extend_from_slice(&message);
            signed
        }
        None => message,
    };
    let local = app.local();
    let to_domain = mail_from.rsplit_once('@').map_or("", |(_, d)| d);
    let result = if local.is_local_domain(to_domain) {
        let mut full = b"Return-Path: <>\r\n".to_vec();
        full.extend_from_slice(&message);
        local
            .deliver(&[mail_from.to_string()], &Pieces::of_slice(&full))
            .map(|_| "delivered locally".to_string())
            .map_err(|e| e.to_string())
    } else {
        match app.outbound() {
            Some(q) => q
                .enqueue("", &[mail_from.to_string()], &Pieces::of_slice(&message))
                .map(|id| format!("queued as {id}"))
                .map_err(|e| e.to_string()),
            None => Err("no outbound queue".to_string()),
        }
    };
    match result {
        Ok(how) => {
            app.metrics.address_actions.inc(["vacation_replied"]);
            info!(user, to = mail_from, how, "vacation reply sent");
        }
        Err(e) => warn!(user, to = mail_from, error = %e, "vacation reply not sent"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(h: &str) -> Vec<(String, String)> {
        header_fields(h.as_bytes())
    }

    const USER: &str = "alice@example.test";

    #[test]
    fn replies_to_a_personal_message() {
        let f = fields(
            "From: Bob <bob@other.test>\r\nTo: \"Alice, A.\" <Alice@Example.test>\r\nSubject: hi\r\n\r\n",
        );
        assert_eq!(check(&[USER], "bob@other.test", &f), Ok(()));
        let f = fields("To: x@y.test,\r\n alice@example.test\r\n\r\n");
        assert_eq!(check(&[USER], "bob@other.test", &f), Ok(()));
        let f = fields("To: x@y.test\r\nCc: alice@example.test\r\n\r\n");
        assert_eq!(check(&[USER], "bob@other.test", &f), Ok(()));
        let f = fields("To: x@y.test\r\nAuto-Submitted: no\r\nCc: alice@example.test\r\n\r\n");
        assert_eq!(check(&[USER], "bob@other.test", &f), Ok(()));
    }

    #[test]
    fn rfc3834_exclusions() {
        let to = "To: alice@example.test\r\n";
        let f = fields(&format!("{to}\r\n"));
        assert_eq!(check(&[USER], "", &f), Err(Skip::NullSender));
        for s in [
            "owner-list@x.test",
            "list-request@x.test",
            "MAILER-DAEMON@x.test",
        ] {
            assert_eq!(check(&[USER], s, &f), Err(Skip::SystemSender), "{s}");
        }
        for h in [
            "List-Id: <l.x.test>\r\n",
            "List-Unsubscribe: <mailto:u@x.test>\r\n",
            "Precedence: bulk\r\n",
            "Precedence: List\r\n",
            "Precedence: junk\r\n",
        ] {
            let f = fields(&format!("{to}{h}\r\n"));
            assert_eq!(
                check(&[USER], "bob@x.test", &f),
                Err(Skip::MailingList),
                "{h}"
            );
        }
        for h in [
            "Auto-Submitted: auto-replied\r\n",
            "Auto-Submitted: auto-generated\r\n",
        ] {
            let f = fields(&format!("{to}{h}\r\n"));
            assert_eq!(check(&[USER], "bob@x.test", &f), Err(Skip::AutoSubmitted));
        }
        let f = fields("To: someone@example.test\r\nCc: alice@example.test.evil\r\n\r\n");
        assert_eq!(check(&[USER], "bob@x.test", &f), Err(Skip::NotAddressed));
        // A field in the body does not count.
        let f = fields("To: someone@example.test\r\n\r\nTo: alice@example.test\r\n");
        assert_eq!(check(&[USER], "bob@x.test", &f), Err(Skip::NotAddressed));
    }

    #[test]
    fn an_address_that_led_to_the_user_counts() {
        let f = fields("To: <alice+news@example.test>\r\n\r\n");
        assert_eq!(check(&[USER], "bob@x.test", &f), Err(Skip::NotAddressed));
        assert_eq!(
            check(&[USER, "alice+news@example.test"], "bob@x.test", &f),
            Ok(())
        );
    }

    #[test]
    fn until_is_inclusive() {
        let v = Vacation {
            subject: None,
            body: "away".into(),
            until: Some("2026-12-24".into()),
        };
        assert!(active(&v, "2026-12-24"));
        assert!(!active(&v, "2026-12-25"));
        assert!(active(
            &Vacation {
                until: None,
                ..v.clone()
            },
            "2099-01-01"
        ));
    }

    #[test]
    fn reply_has_the_rfc3834_fields() {
        let f =
            fields("Subject: lunch?\r\nMessage-ID: <m1@x.test>\r\nReferences: <m0@x.test>\r\n\r\n");
        let v = Vacation {
            subject: None,
            body: "I am away.\nBack soon — à bientôt.".into(),
            until: None,
        };
        let r = String::from_utf8(build_reply(USER, "bob@x.test", &v, &f, "mx.test")).unwrap();
        assert!(r.contains("Subject: Auto: lunch?\r\n"), "{r}");
        assert!(r.contains("Auto-Submitted: auto-replied\r\n"));
        assert!(r.contains("In-Reply-To: <m1@x.test>\r\n"));
        assert!(r.contains("References: <m0@x.test> <m1@x.test>\r\n"));
        assert!(r.contains("To: <bob@x.test>\r\n"));
        assert!(r.contains("From: <alice@example.test>\r\n"));
        assert!(r.ends_with("Back soon — à bientôt.\r\n"));
        let v = Vacation {
            subject: Some("Abwesend – zurück am 3.".into()),
            ..v
        };
        let r = String::from_utf8(build_reply(USER, "bob@x.test", &v, &f, "mx.test")).unwrap();
        assert!(r.contains("Subject: =?utf-8?B?"), "{r}");
    }
}
