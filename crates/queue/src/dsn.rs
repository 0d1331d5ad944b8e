//! Delivery status notifications (RFC 3464): bounces and delay warnings.
//!
//! A DSN is a `multipart/report; report-type=delivery-status` message
//! (RFC 6522) from `MAILER-DAEMON@<hostname>`, sent with the null
//! reverse-path, with three parts:
//!
//! 1. `text/plain`: what happened, for humans;
//! 2. `message/delivery-status`: `Reporting-MTA`, `Arrival-Date`, and per
//!    recipient `Final-Recipient`, `Action` (`failed` or `delayed`),
//!    `Status`, `Remote-MTA` and `Diagnostic-Code: smtp; <reply>` when a
//!    remote server answered (`X-Postoffice; <reason>` for a local reason
//!    such as a refused connection), `Last-Attempt-Date`, and for delays
//!    `Will-Retry-Until`;
//! 3. `text/rfc822-headers`: the original message's header section (not
//!    the body: the sender has it, and it may be big or private).

use postoffice_common::date::rfc5322_unix;

/// Failed (bounce) or delayed (warning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DsnAction {
    Failed,
    Delayed,
}

impl DsnAction {
    fn word(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
        }
    }
}

/// One recipient in a DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DsnRecipient {
    pub address: String,
    /// RFC 3463 code, e.g. "5.1.1".
    pub status: String,
    /// The host that answered, if any.
    pub remote_mta: String,
    /// The remote reply on one line, if a server answered.
    pub diagnostic: String,
    /// A local description (used when there is no remote reply).
    pub reason: String,
    /// Unix seconds of the last attempt, 0 if none.
    pub last_attempt: u64,
}

/// Everything a DSN says.
#[derive(Debug, Clone)]
pub(crate) struct Dsn<'a> {
    /// Our host name: Reporting-MTA and MAILER-DAEMON's domain.
    pub hostname: &'a str,
    pub queue_id: &'a str,
    /// The original sender: the DSN's recipient.
    pub to: &'a str,
    pub action: DsnAction,
    /// Unix seconds the original message arrived.
    pub arrival: u64,
    /// Unix seconds now (the DSN's Date).
    pub now: u64,
    /// Delayed: when the queue gives up.
    pub retry_until: u64,
    pub recipients: &'a [DsnRecipient],
    /// The original message (only its header section is included).
    pub original: &'a [u8],
}

/// Most octets of the original header section a notice includes.
pub(crate) const MAX_ORIGINAL_HEADERS: usize = 64 * 1024;

/// The header section of a message (up to, not including, the empty line),
/// with CRLF line ends and at most `max` octets (cut at a line end).
pub(crate) fn header_section(message: &[u8], max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if out.len() + line.len() + 2 > max {
            break;
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One line of printable text: controls become spaces, at most `max` chars.
fn clean(s: &str, max: usize) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

/// `Name: value` folded at whitespace so lines stay under 78 characters
/// where possible (RFC 5322 2.2.3).
fn field(name: &str, value: &str) -> String {
    let mut out = String::new();
    let mut line = format!("{name}:");
    for word in value.split(' ').filter(|w| !w.is_empty()) {
        if line.len() + 1 + word.len() > 78 && line.len() > name.len() + 1 {
            out.push_str(&line);
            out.push_str("\r\n");
            line = String::from("\t");
            line.push_str(word);
        } else {
            line.push(' ');
            line.push_str(word);
        }
    }
    out.push_str(&line);
    out.push_str("\r\n");
    out
}

fn human_duration(secs: u64) -> String {
    if secs >= 2 * 86_400 {
        format!("{} days", secs / 86_400)
    } else if secs >= 2 * 3600 {
        format!("{} hours", secs / 3600)
    } else if secs >= 120 {
        format!("{} minutes", secs / 60)
    } else {
        format!("{secs} seconds")
    }
}

/// Build the DSN message (CRLF line ends), ready for local delivery or the
/// queue with the null sender.
pub(crate) fn build(d: &Dsn<'_>) -> Vec<u8> {
    let boundary = format!("{}.{}/{}", d.queue_id, d.now, d.hostname);
    let subject = match d.action {
        DsnAction::Failed => "Undelivered Mail Returned to Sender",
        DsnAction::Delayed => "Delayed Mail (still being retried)",
    };
    let kind = match d.action {
        DsnAction::Failed => "bounce",
        DsnAction::Delayed => "delay",
    };
    let mut m = String::new();
    m.push_str(&format!("Date: {}\r\n", rfc5322_unix(d.now)));
    m.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{}>\r\n",
        d.hostname
    ));
    m.push_str(&format!("To: <{}>\r\n", clean(d.to, 300)));
    m.push_str(&format!("Subject: {subject}\r\n"));
    m.push_str(&format!(
        "Message-ID: <{}.{}.{kind}@{}>\r\n",
        d.queue_id, d.now, d.hostname
    ));
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n"
    ));
    m.push_str("\r\nThis is a MIME-encapsulated message.\r\n\r\n");

    // 1. For humans.
    let mut text = format!("This is the mail system at host {}.\r\n\r\n", d.hostname);
    match d.action {
        DsnAction::Failed => text.push_str(
            "I'm sorry to have to inform you that your message could not\r\n\
             be delivered to one or more recipients. The reasons are below.\r\n\
             The original message's headers are attached.\r\n",
        ),
        DsnAction::Delayed => {
            text.push_str(
                "####################################################################\r\n\
                 # THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r\n\
                 ####################################################################\r\n\r\n",
            );
            text.push_str(&format!(
                "Your message could not be delivered for {} yet.\r\n\
                 It will be retried until it is {} old.\r\n",
                human_duration(d.now.saturating_sub(d.arrival)),
                human_duration(d.retry_until.saturating_sub(d.arrival)),
            ));
        }
    }
    text.push_str("\r\n");
    for r in d.recipients {
        let why = if r.diagnostic.is_empty() {
            clean(&r.reason, 500)
        } else if r.remote_mta.is_empty() {
            clean(&r.diagnostic, 500)
        } else {
            format!(
                "host {} said: {}",
                clean(&r.remote_mta, 255),
                clean(&r.diagnostic, 500)
            )
        };
        text.push_str(&format!("<{}>: {}\r\n", clean(&r.address, 300), why));
    }
    let ascii = text.is_ascii();
    m.push_str(&format!("--{boundary}\r\n"));
    m.push_str("Content-Description: Notification\r\n");
    m.push_str(&format!(
        "Content-Type: text/plain; charset={}\r\n",
        if ascii { "us-ascii" } else { "utf-8" }
    ));
    if !ascii {
        m.push_str("Content-Transfer-Encoding: 8bit\r\n");
    }
    m.push_str("\r\n");
    m.push_str(&text);
    m.push_str("\r\n");

    // 2. For machines.
    m.push_str(&format!("--{boundary}\r\n"));
    m.push_str("Content-Description: Delivery report\r\n");
    m.push_str("Content-Type: message/delivery-status\r\n\r\n");
    m.push_str(&format!("Reporting-MTA: dns; {}\r\n", d.hostname));
    m.push_str(&format!("X-Postoffice-Queue-ID: {}\r\n", d.queue_id));
    m.push_str(&format!("Arrival-Date: {}\r\n", rfc5322_unix(d.arrival)));
    for r in d.recipients {
        m.push_str("\r\n");
        m.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\n",
            clean(&r.address, 300)
        ));
        m.push_str(&format!("Action: {}\r\n", d.action.word()));
        let status = if postoffice_smtp::EnhancedCode::parse(&r.status).is_some() {
            r.status.clone()
        } else {
            match d.action {
                DsnAction::Failed => "5.0.0".to_string(),
                DsnAction::Delayed => "4.0.0".to_string(),
            }
        };
        m.push_str(&format!("Status: {status}\r\n"));
        if !r.remote_mta.is_empty() {
            m.push_str(&format!(
                "Remote-MTA: dns; {}\r\n",
                clean(&r.remote_mta, 255)
            ));
        }
        if !r.diagnostic.is_empty() {
            m.push_str(&field(
                "Diagnostic-Code",
                &format!("smtp; {}", clean(&r.diagnostic, 900)),
            ));
        } else if !r.reason.is_empty() {
            m.push_str(&field(
                "Diagnostic-Code",
                &format!("X-Postoffice; {}", clean(&r.reason, 900)),
            ));
        }
        if r.last_attempt > 0 {
            m.push_str(&format!(
                "Last-Attempt-Date: {}\r\n",
                rfc5322_unix(r.last_attempt)
            ));
        }
        if d.action == DsnAction::Delayed {
            m.push_str(&format!(
                "Will-Retry-Until: {}\r\n",
                rfc5322_unix(d.retry_until)
            ));
        }
    }
    m.push_str("\r\n");

    // 3. The original headers.
    m.push_str(&format!("--{boundary}\r\n"));
    m.push_str("Content-Description: Undelivered Message Headers\r\n");
    m.push_str("Content-Type: text/rfc822-headers\r\n\r\n");
    let mut out = m.into_bytes();
    out.extend_from_slice(&header_section(d.original, MAX_ORIGINAL_HEADERS));
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINAL: &[u8] = b"From: Alice <alice@src.test>\r\nTo: bob@dest.test\r\nSubject: Hello\r\n\tfolded\r\nMessage-ID: <m1@src.test>\r\n\r\nSecret body text\r\n";

    /// A minimal MIME reader: the top-level headers and the parts
    /// (headers, body) of a multipart message.
    pub(crate) fn parse(msg: &[u8]) -> (String, Vec<(String, String)>) {
        let text = String::from_utf8(msg.to_vec()).unwrap();
        assert!(!text.replace("\r\n", "").contains('\n'), "bare LF");
        let (headers, body) = text.split_once("\r\n\r\n").unwrap();
        let unfolded = headers.replace("\r\n\t", " ").replace("\r\n ", " ");
        let b = unfolded.split("boundary=\"").nth(1).unwrap();
        let boundary = &b[..b.find('"').unwrap()];
        let close = format!("--{boundary}--");
        assert!(body.contains(&close));
        let body = body.split(&close).next().unwrap();
        let parts = body
            .split(&format!("--{boundary}\r\n"))
            .skip(1)
            .map(|p| {
                let (h, b) = p.split_once("\r\n\r\n").unwrap();
                (h.to_string(), b.to_string())
            })
            .collect();
        (unfolded, parts)
    }

    fn rcpts() -> Vec<DsnRecipient> {
        vec![
            DsnRecipient {
                address: "bob@dest.test".into(),
                status: "5.1.1".into(),
                remote_mta: "mx.dest.test".into(),
                diagnostic: "550 5.1.1 <bob@dest.test>: no such user".into(),
                reason: "550 5.1.1 <bob@dest.test>: no such user".into(),
                last_attempt: 1_700_000_100,
            },
            DsnRecipient {
                address: "carol@down.test".into(),
                status: "4.4.1".into(),
                remote_mta: String::new(),
                diagnostic: String::new(),
                reason: "connect to mx.down.test[192.0.2.1]:25: Connection refused".into(),
                last_attempt: 1_700_000_100,
            },
        ]
    }

    #[test]
    fn bounce_is_a_multipart_report_with_the_original_headers() {
        let rs = rcpts();
        let msg = build(&Dsn {
            hostname: "mail.src.test",
            queue_id: "Q1",
            to: "alice@src.test",
            action: DsnAction::Failed,
            arrival: 1_700_000_000,
            now: 1_700_000_200,
            retry_until: 0,
            recipients: &rs,
            original: ORIGINAL,
        });
        let (headers, parts) = parse(&msg);
        assert!(headers.contains("From: Mail Delivery System <MAILER-DAEMON@mail.src.test>"));
        assert!(headers.contains("To: <alice@src.test>"));
        assert!(headers.contains("Subject: Undelivered Mail Returned to Sender"));
        assert!(headers.contains("Auto-Submitted: auto-replied"));
        assert!(
            headers.contains("Date: Tue, 14 Nov 2023 22:16:40 +0000"),
            "{headers}"
        );
        assert!(
            headers
                .contains("Content-Type: multipart/report; report-type=delivery-status; boundary=")
        );
        assert_eq!(parts.len(), 3);

        let (h, body) = &parts[0];
        assert!(h.contains("Content-Type: text/plain; charset=us-ascii"));
        assert!(body.contains("<bob@dest.test>: host mx.dest.test said: 550 5.1.1"));
        assert!(body.contains("<carol@down.test>: connect to mx.down.test"));

        let (h, status) = &parts[1];
        assert!(h.contains("Content-Type: message/delivery-status"));
        let unfolded = status.replace("\r\n\t", " ");
        let groups: Vec<&str> = unfolded.trim_end().split("\r\n\r\n").collect();
        assert_eq!(groups.len(), 3, "{unfolded}");
        assert!(groups[0].contains("Reporting-MTA: dns; mail.src.test"));
        assert!(groups[0].contains("Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000"));
        assert!(groups[1].contains("Final-Recipient: rfc822; bob@dest.test"));
        assert!(groups[1].contains("Action: failed"));
        assert!(groups[1].contains("Status: 5.1.1"));
        assert!(groups[1].contains("Remote-MTA: dns; mx.dest.test"));
        assert!(
            groups[1].contains("Diagnostic-Code: smtp; 550 5.1.1 <bob@dest.test>: no such user")
        );
        assert!(groups[2].contains("Final-Recipient: rfc822; carol@down.test"));
        assert!(groups[2].contains("Status: 4.4.1"));
        assert!(!groups[2].contains("Remote-MTA"));
        assert!(groups[2].contains("Diagnostic-Code: X-Postoffice; connect to"));

        let (h, orig) = &parts[2];
        assert!(h.contains("Content-Type: text/rfc822-headers"));
        assert!(orig.starts_with("From: Alice <alice@src.test>\r\nTo: bob@dest.test\r\nSubject: Hello\r\n\tfolded\r\nMessage-ID: <m1@src.test>\r\n"));
        // Headers only.
        assert!(!String::from_utf8_lossy(&msg).contains("Secret body text"));
        // Every line within the RFC 5322 limit.
        for line in String::from_utf8_lossy(&msg).split("\r\n") {
            assert!(line.len() <= 998);
        }
    }

    #[test]
    fn delay_warning() {
        let rs = rcpts();
        let msg = build(&Dsn {
            hostname: "mail.src.test",
            queue_id: "Q2",
            to: "alice@src.test",
            action: DsnAction::Delayed,
            arrival: 1_700_000_000,
            now: 1_700_000_000 + 4 * 3600,
            retry_until: 1_700_000_000 + 5 * 86_400,
            recipients: &rs[1..],
            original: ORIGINAL,
        });
        let (headers, parts) = parse(&msg);
        assert!(headers.contains("Subject: Delayed Mail (still being retried)"));
        assert!(parts[0].1.contains("THIS IS A WARNING ONLY"));
        assert!(parts[0].1.contains("for 4 hours yet"));
        assert!(parts[0].1.contains("until it is 5 days old"));
        assert!(parts[1].1.contains("Action: delayed"));
        assert!(parts[1].1.contains("Will-Retry-Until: "));
    }

    #[test]
    fn hostile_values_cannot_inject_lines() {
        let rs = vec![DsnRecipient {
            address: "x@y.test\r\nBcc: evil@z.test".into(),
            status: "bogus".into(),
            remote_mta: "mx\r\n".into(),
            diagnostic: format!("550 {}\r\nX-Injected: 1", "long ".repeat(400)),
            reason: String::new(),
            last_attempt: 0,
        }];
        let msg = build(&Dsn {
            hostname: "h.test",
            queue_id: "Q3",
            to: "a@b.test\r\nX-Evil: 1",
            action: DsnAction::Failed,
            arrival: 0,
            now: 0,
            retry_until: 0,
            recipients: &rs,
            original: b"Subject: no body, no blank line",
        });
        let text = String::from_utf8(msg).unwrap();
        assert!(!text.contains("\r\nX-Injected"));
        assert!(!text.contains("\r\nBcc"));
        assert!(!text.contains("\r\nX-Evil"));
        assert!(text.contains("Status: 5.0.0"));
        assert!(text.contains("Subject: no body, no blank line\r\n"));
        for line in text.split("\r\n") {
            assert!(line.len() <= 998, "{}", line.len());
        }
    }

    #[test]
    fn header_section_stops_at_the_blank_line() {
        assert_eq!(
            header_section(b"A: 1\nB: 2\n\nbody", 100),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(header_section(b"A: 1\r\nB: 2\r\n", 8), b"A: 1\r\n");
        assert_eq!(header_section(b"\r\nbody", 100), b"");
    }
}
