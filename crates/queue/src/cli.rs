//! Text for `postoffice queue list|show|retry|delete|flush`.
//!
//! ```text
//! ID                        SIZE  AGE      SENDER
//! 6553F2C10A1B2000130001    1234  2h05m    <alice@example.org>
//!     bob@example.net  pending  attempts=3  next in 14m  450 4.2.0 greylisted
//! -- 1 entry, 1234 octets, 1 recipient pending
//! ```
//!
//! Everything shown from an envelope or a message is cleaned on the way
//! out (one line of printable ASCII, bounded), whichever version wrote it:
//! remote replies and headers must not reach a terminal as escape
//! sequences.

use crate::spool::unix_now;
use crate::{EntryDetail, EntrySummary, MAX_REMOTE_TEXT, Queue, QueueError, RcptState, one_line};

/// Longest header line shown by `queue show` (RFC 5322's line limit).
const MAX_HEADER_LINE: usize = 998;

/// A field from an envelope, safe to print.
fn shown(s: &str) -> String {
    one_line(s, MAX_REMOTE_TEXT)
}

/// "2d03h", "1h05m", "4m10s", "12s".
pub(crate) fn human_age(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

fn sender(s: &str) -> String {
    format!("<{}>", shown(s))
}

fn rcpt_line(r: &crate::RcptSummary, now: u64) -> String {
    let mut line = format!("    {}  {}", shown(&r.address), r.state);
    if r.attempts > 0 {
        line.push_str(&format!("  attempts={}", r.attempts));
    }
    match r.state {
        RcptState::Pending => {
            if r.next_attempt <= now {
                line.push_str("  next now");
            } else {
                line.push_str(&format!("  next in {}", human_age(r.next_attempt - now)));
            }
        }
        RcptState::Failed if !r.notified => line.push_str("  (bounce not sent yet)"),
        _ => {}
    }
    if !r.last_error.is_empty() {
        line.push_str("  ");
        line.push_str(&shown(&r.last_error));
    }
    line
}

/// The `queue list` table.
pub fn format_list(entries: &[EntrySummary], now: u64) -> String {
    if entries.is_empty() {
        return "Mail queue is empty\n".into();
    }
    let mut out = format!("{:<24}  {:>9}  {:<7}  SENDER\n", "ID", "SIZE", "AGE");
    let mut bytes = 0;
    let mut pending = 0;
    for e in entries {
        bytes += e.size;
        out.push_str(&format!(
            "{:<24}  {:>9}  {:<7}  {}\n",
            shown(&e.id),
            e.size,
            human_age(now.saturating_sub(e.created_at)),
            sender(&e.mail_from)
        ));
        if let Some(reason) = &e.held {
            out.push_str(&format!(
                "    HELD: {} (postoffice queue release {})\n",
                shown(reason),
                shown(&e.id)
            ));
        }
        for r in &e.rcpts {
            if r.state == RcptState::Pending {
                pending += 1;
            }
            out.push_str(&rcpt_line(r, now));
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "-- {} {}, {} octets, {} recipient{} pending\n",
        entries.len(),
        if entries.len() == 1 {
            "entry"
        } else {
            "entries"
        },
        bytes,
        pending,
        if pending == 1 { "" } else { "s" }
    ));
    out
}

/// The `queue show ID` text.
pub fn format_detail(d: &EntryDetail, now: u64) -> String {
    let e = &d.summary;
    let mut out = format!(
        "ID: {}\nSender: {}\nSize: {} octets\nArrived: {} ({} ago)\nDelay warning sent: {}\nRecipients:\n",
        shown(&e.id),
        sender(&e.mail_from),
        e.size,
        postoffice_common::date::rfc5322_unix(e.created_at),
        human_age(now.saturating_sub(e.created_at)),
        if e.delay_warned { "yes" } else { "no" },
    );
    if let Some(reason) = &e.held {
        out.push_str(&format!(
            "Held: {} (not sent until released)\n",
            shown(reason)
        ));
    }
    for r in &e.rcpts {
        out.push_str(&rcpt_line(r, now));
        out.push('\n');
        if !r.remote_mta.is_empty() {
            out.push_str(&format!("        remote: {}\n", shown(&r.remote_mta)));
        }
    }
    out.push_str("Headers:\n");
    for line in d.headers.lines() {
        out.push_str("    ");
        out.push_str(&postoffice_common::text::printable(
            &line.replace('\t', " "),
            MAX_HEADER_LINE,
        ));
        out.push('\n');
    }
    out
}

/// `postoffice queue list`.
pub fn cli_list(queue: &Queue) -> Result<String, QueueError> {
    Ok(format_list(&queue.list()?, unix_now()))
}

/// `postoffice queue show ID`.
pub fn cli_show(queue: &Queue, id: &str) -> Result<String, QueueError> {
    Ok(format_detail(&queue.show(id)?, unix_now()))
}

/// `postoffice queue retry ID`.
pub fn cli_retry(queue: &Queue, id: &str) -> Result<String, QueueError> {
    queue.retry(id)?;
    Ok(format!(
        "{id}: scheduled for delivery now (a running server picks it up within {} seconds)\n",
        crate::scheduler::RESCAN.as_secs()
    ))
}

/// `postoffice queue delete ID`.
pub fn cli_delete(queue: &Queue, id: &str) -> Result<String, QueueError> {
    queue.delete(id)?;
    Ok(format!("{id}: deleted (no bounce sent)\n"))
}

/// `postoffice queue release ID`.
pub fn cli_release(queue: &Queue, id: &str) -> Result<String, QueueError> {
    queue.release(id)?;
    Ok(format!(
        "{id}: released, scheduled for delivery now (a running server picks it up within {} seconds)\n",
        crate::scheduler::RESCAN.as_secs()
    ))
}

/// `postoffice queue flush`.
pub fn cli_flush(queue: &Queue) -> Result<String, QueueError> {
    let n = queue.flush()?;
    Ok(format!(
        "{n} {} scheduled for delivery now\n",
        if n == 1 { "entry" } else { "entries" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(human_age(0), "0s");
        assert_eq!(human_age(250), "4m10s");
        assert_eq!(human_age(3900), "1h05m");
        assert_eq!(human_age(2 * 86_400 + 3 * 3600), "2d03h");
    }

    /// An envelope written by an older version, which kept remote
    /// replies as they came: what list and show print is still clean.
    #[test]
    fn list_and_show_print_only_clean_bounded_text() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), &postoffice_config::Queue::default()).unwrap();
        let id = q
            .enqueue(
                "alice@src.test",
                &["bob@dest.test".into()],
                &mut &b"Subject: \x1b]0;owned\x07hi\r\nX-Long: \x1b[2J\r\n\tfolded\r\n\r\nbody\r\n"
                    [..],
            )
            .unwrap();
        let hostile = format!(
            "550-5.1.1 \x1b[31mred\x1b[0m\r\n550-{}\r\n550 5.1.1 \x1b]0;title\x07end",
            "A\x1b[1m".repeat(20_000)
        );
        q.spool()
            .update(&id, |env| {
                let r = &mut env.rcpts[0];
                r.last_error = hostile.clone();
                r.diagnostic = hostile.clone();
                r.remote_mta = "mx.\x1b[5mdest.test\r\nX".into();
                r.attempts = 1;
                env.mail_from = "alice\x1b[8m@src.test".into();
            })
            .unwrap();
        let now = unix_now();
        let list = format_list(&q.list().unwrap(), now);
        let detail = format_detail(&q.show(&id).unwrap(), now);
        for text in [&list, &detail] {
            assert!(
                !text.chars().any(|c| c.is_control() && c != '\n'),
                "{text:?}"
            );
            assert!(text.len() < 4096, "{}", text.len());
        }
        assert!(list.contains("550-5.1.1 [31mred [0m 550-A [1mA"), "{list}");
        assert!(detail.contains("remote: mx. [5mdest.test X\n"), "{detail}");
        assert!(detail.contains("Sender: <alice [8m@src.test>"), "{detail}");
        assert!(detail.contains("    Subject: ]0;ownedhi\n"), "{detail}");
        assert!(
            detail.contains("    X-Long: [2J\n     folded\n"),
            "{detail}"
        );
    }

    #[test]
    fn list_and_show_text() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), &postoffice_config::Queue::default()).unwrap();
        assert_eq!(cli_list(&q).unwrap(), "Mail queue is empty\n");
        let id = q
            .enqueue(
                "",
                &["bob@dest.test".into()],
                &mut &b"Subject: s\r\n\r\nb\r\n"[..],
            )
            .unwrap();
        let text = cli_list(&q).unwrap();
        assert!(text.contains(id.as_str()), "{text}");
        assert!(text.contains("<>"), "{text}");
        assert!(text.contains("bob@dest.test  pending  next now"), "{text}");
        assert!(text.contains("-- 1 entry, "), "{text}");
        let text = cli_show(&q, &id).unwrap();
        assert!(text.contains("    Subject: s\n"), "{text}");
        assert!(cli_flush(&q).unwrap().starts_with("1 entry"));
        assert!(cli_retry(&q, &id).unwrap().contains("now"));
        assert!(cli_delete(&q, &id).unwrap().contains("deleted"));
        assert!(cli_show(&q, &id).is_err());
    }
}
