//! `postoffice sendmail`: a message from a local program (cron, a script,
//! PHP's `mail()`), prepared the way sendmail(1) users expect and then
//! handed to the submission path ([`crate::submission`]).
//!
//! Preparation: line ends become CRLF (scripts write LF), with `-t` the
//! recipients are taken from To:, Cc: and Bcc: and Bcc: is removed, with
//! `-F` a From: is added when there is none, and a `Received:` line records
//! the local user.
//!
//! The sender rule is submission's: a local user who is not trusted
//! (`[submission] sendmail_trusted_users`, root always) may send only as
//! `<login>@<hostname>` (and its sender aliases) — the envelope (`-f`) and
//! every author field — and nobody may send a message with two From:
//! fields or an author field without an address.

use std::time::SystemTime;

use std::io::Read;

use postoffice_common::content::{Content, Piece, Pieces};
use postoffice_common::date::rfc5322;
use postoffice_smtp::{Reply, codes, sanitize, status};

use crate::App;
use crate::delivery::{sysexits, temporary_failure};
use crate::inbound::HEADER_WINDOW;
use crate::submission::{self, Refusal};
use crate::trace::find_header_end;

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Request {
    /// Recipients given as arguments.
    pub recipients: Vec<String>,
    /// `-t`: also take recipients from To:, Cc: and Bcc:.
    pub from_headers: bool,
    /// `-f`: the envelope sender (default `<login>@<hostname>`).
    pub sender: Option<String>,
    /// `-F`: the full name for a From: header added when there is none.
    pub full_name: Option<String>,
    /// The local (Unix) user running the command, from the kernel.
    pub user: postoffice_common::unix::User,
}

/// What happened to the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Delivered to local users only.
    Delivered,
    /// Queued for remote recipients (the queue ID).
    Queued(String),
}

/// Why nothing was sent.
#[derive(Debug, thiserror::Error)]
pub enum SendmailError {
    /// No recipient in the arguments (nor, with `-t`, in the headers).
    #[error("no recipients (give them as arguments, or use -t)")]
    NoRecipients,
    /// The submission path refused the message.
    #[error("{}", .0.reply)]
    Refused(Refusal),
}

impl SendmailError {
    /// The exit status (sysexits.h): 64 for usage errors, else the refusal's.
    pub fn exit_code(&self) -> u8 {
        match self {
            SendmailError::NoRecipients => 64,
            SendmailError::Refused(r) => r.exit_code,
        }
    }

    /// The SMTP reply behind a refusal.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            SendmailError::Refused(r) => Some(&r.reply),
            SendmailError::NoRecipients => None,
        }
    }
}

/// Prepare `input` as [`Request`] says and submit it: local recipients
/// are delivered at once, others queued; all or nothing.
pub fn send(app: &App, req: &Request, input: &mut dyn Read) -> Result<Sent, SendmailError> {
    let io_failure = |e: std::io::Error| {
        tracing::warn!(error = %e, "sendmail: cannot read or spool the message");
        SendmailError::Refused(Refusal {
            reply: temporary_failure(),
            exit_code: sysexits::TEMPFAIL,
        })
    };
    // Read the input once, as it comes, into the spool (memory while it is
    // small): a large message is never held whole.
    let content = spool_crlf(app, input).map_err(io_failure)?;
    let head = content.head(HEADER_WINDOW).map_err(io_failure)?;
    let header_end = find_header_end(&head);
    let mut header = head[..header_end].to_vec();
    let mut rcpts = req.recipients.clone();
    if req.from_headers {
        let (found, stripped) = header_recipients(&header);
        rcpts.extend(found);
        header = stripped;
    }
    if rcpts.is_empty() {
        return Err(SendmailError::NoRecipients);
    }
    let login = &req.user.name;
    let own = format!("{login}@{}", app.config.hostname).to_ascii_lowercase();
    let trusted = req.user.uid == 0
        || app
            .config
            .submission
            .sendmail_trusted_users
            .iter()
            .any(|t| t == login);
    let sender = req.sender.clone().unwrap_or_else(|| own.clone());
    if !trusted && !submission::sender_allowed(app, &own, &sender) {
        return Err(SendmailError::Refused(Refusal {
            reply: Reply::new(
                codes::MAILBOX_NAME_NOT_ALLOWED,
                status::NOT_AUTHORIZED,
                format!(
                    "<{}>: Sender address not owned by local user {login}",
                    sanitize(&sender)
                ),
            ),
            exit_code: sysexits::NOPERM,
        }));
    }
    let mut message = Pieces::new();
    if let Some(name) = &req.full_name {
        let has_from = mail_parser::MessageParser::default()
            .parse_headers(&header)
            .is_some_and(|m| m.from().is_some());
        if !has_from {
            message.push(Piece::Owned(
                format!(
                    "From: {} <{sender}>\r\n",
                    name.replace(['\r', '\n', '<', '>'], "")
                )
                .into_bytes(),
            ));
        }
    }
    message
        .push(Piece::Owned(header))
        .push(Piece::Content(&content, header_end as u64));
    let id = postoffice_common::ids::unique_id();
    let received = format!(
        "Received: by {} (postoffice sendmail, uid {}) id {id};\r\n\t{}\r\n",
        app.config.hostname,
        req.user.uid,
        rfc5322(SystemTime::now())
    );
    let owner = (!trusted).then_some(own.as_str());
    let prepared = submission::prepare(app, owner, &sender, &id, &received, message)
        .map_err(SendmailError::Refused)?;
    match submission::store(app, &sender, &rcpts, &prepared.message) {
        Ok(Some(q)) => Ok(Sent::Queued(q)),
        Ok(None) => Ok(Sent::Delivered),
        Err(r) => Err(SendmailError::Refused(r)),
    }
}

/// Read `input` into the spool with its line ends made CRLF (a final CRLF
/// added if missing).
fn spool_crlf(app: &App, input: &mut dyn Read) -> std::io::Result<Content> {
    let mut out = app.spool_writer()?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut converted = Vec::with_capacity(buf.len() * 2);
    let mut prev = 0u8;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        converted.clear();
        for &b in &buf[..n] {
            if b == b'\n' && prev != b'\r' {
                converted.push(b'\r');
            }
            converted.push(b);
            prev = b;
        }
        out.write(&converted)?;
    }
    if prev != b'\n' || out.is_empty() {
        out.write(if prev == b'\r' { b"\n" } else { b"\r\n" })?;
    }
    Ok(out.finish())
}

/// LF line ends become CRLF (lone CR is left alone); a final CRLF is
/// added if missing.
pub fn to_crlf(input: &[u8]) -> Vec<u8> {
    let mut crlf = Vec::with_capacity(input.len() + input.len() / 32 + 2);
    let mut prev = 0u8;
    for &b in input {
        if b == b'\n' && prev != b'\r' {
            crlf.push(b'\r');
        }
        crlf.push(b);
        prev = b;
    }
    if !crlf.ends_with(b"\r\n") {
        crlf.extend_from_slice(b"\r\n");
    }
    crlf
}

/// Addresses in the To/Cc/Bcc headers, and the message with Bcc removed.
pub fn header_recipients(message: &[u8]) -> (Vec<String>, Vec<u8>) {
    let mut rcpts = Vec::new();
    if let Some(m) = mail_parser::MessageParser::default().parse_headers(message) {
        for list in [m.to(), m.cc(), m.bcc()].into_iter().flatten() {
            rcpts.extend(list.iter().filter_map(|a| a.address().map(str::to_string)));
        }
    }
    // Drop Bcc: (and its continuation lines) from the header section.
    let mut out = Vec::with_capacity(message.len());
    let mut in_header = true;
    let mut skipping = false;
    for line in message.split_inclusive(|&b| b == b'\n') {
        if in_header {
            if line == b"\r\n" || line == b"\n" {
                in_header = false;
            } else if skipping && matches!(line.first(), Some(b' ' | b'\t')) {
                continue;
            } else {
                skipping = line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"bcc:");
                if skipping {
                    continue;
                }
            }
        }
        out.extend_from_slice(line);
    }
    (rcpts, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lf_becomes_crlf_once() {
        assert_eq!(to_crlf(b"a\nb\r\nc"), b"a\r\nb\r\nc\r\n");
        assert_eq!(to_crlf(b""), b"\r\n");
        assert_eq!(to_crlf(b"x\r\n"), b"x\r\n");
    }

    #[test]
    fn bcc_is_read_and_removed() {
        let m =
            b"To: a@x.test\r\nBcc: b@y.test,\r\n c@z.test\r\nSubject: s\r\n\r\nBcc: body stays\r\n";
        let (rcpts, out) = header_recipients(m);
        assert_eq!(rcpts, vec!["a@x.test", "b@y.test", "c@z.test"]);
        assert_eq!(
            out,
            b"To: a@x.test\r\nSubject: s\r\n\r\nBcc: body stays\r\n".to_vec()
        );
    }
}

#[cfg(test)]
mod rule_tests {
    use super::*;
    use postoffice_common::unix::User;

    fn app(dir: &std::path::Path, trusted: &[&str]) -> App {
        let mut config = postoffice_config::Config {
            data_dir: dir.to_path_buf(),
            hostname: "mx.example.test".into(),
            ..Default::default()
        };
        config.submission.sendmail_trusted_users = trusted.iter().map(|s| s.to_string()).collect();
        let app = App::without_filters(config).unwrap();
        app.directory.add_domain("example.test").unwrap();
        app.directory
            .add_user(
                "alice@example.test",
                &postoffice_directory::hash_password(b"x").unwrap(),
            )
            .unwrap();
        app
    }

    fn request(uid: u32, name: &str, sender: Option<&str>) -> Request {
        Request {
            recipients: vec!["alice@example.test".into()],
            from_headers: false,
            sender: sender.map(str::to_string),
            full_name: None,
            user: User {
                uid,
                name: name.into(),
            },
        }
    }

    #[test]
    fn local_users_send_only_as_themselves_unless_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path(), &["cron"]);
        let own = b"From: eve@mx.example.test\nSubject: hi\n\nx\n";
        assert_eq!(
            send(&app, &request(1000, "eve", None), &mut &own[..]).unwrap(),
            Sent::Delivered
        );
        // Another envelope sender, or another author, is refused.
        for (sender, msg) in [
            (Some("alice@example.test"), &own[..]),
            (None, &b"From: alice@example.test\nSubject: hi\n\nx\n"[..]),
            (
                None,
                &b"From: eve@mx.example.test\nSender: alice@example.test\n\nx\n"[..],
            ),
        ] {
            let e = send(&app, &request(1000, "eve", sender), &mut &msg[..]).unwrap_err();
            assert_eq!(e.exit_code(), crate::delivery::sysexits::NOPERM, "{e}");
            assert_eq!(e.reply().unwrap().code, 553);
        }
        // Trusted users (and root) may send as anyone...
        let other = b"From: alice@example.test\nSubject: hi\n\nx\n";
        assert!(
            send(
                &app,
                &request(1001, "cron", Some("alice@example.test")),
                &mut &other[..]
            )
            .is_ok()
        );
        assert!(
            send(
                &app,
                &request(0, "root", Some("alice@example.test")),
                &mut &other[..]
            )
            .is_ok()
        );
        // ...but nobody may send two From: fields.
        let two = b"From: alice@example.test\nFrom: bob@example.test\n\nx\n";
        let e = send(&app, &request(0, "root", None), &mut &two[..]).unwrap_err();
        assert_eq!(e.reply().unwrap().code, 553, "{e}");
    }
}
