//! Forwarding accepted mail to external addresses (`postoffice user set
//! ADDR --forward TARGET`) and routing bounces to our SRS addresses back to
//! the original sender, both through the outbound queue.
//!
//! Rules, each enforced here or in [`crate::inbound`]:
//!
//! - Only mail accepted for a local user (or for one of our SRS addresses,
//!   whose hash and age [`crate::srs`] checked) is ever forwarded: nothing
//!   a client names on the MX port can make us relay elsewhere.
//! - The envelope sender is rewritten with SRS for the forwarding user's
//!   domain, so SPF at the destination checks *our* domain; the null sender
//!   stays null.
//! - A message with more trace fields (`Received:`, `Delivered-To:`) than
//!   `[addresses] forward_max_hops`, or already delivered to the
//!   forwarding address (its `Delivered-To:`), is a loop: refused, never
//!   forwarded again.
//! - Mail the verification pipeline quarantined, or marked as spam or
//!   virus, is never forwarded (it stays in the local maildrop).
//! - The message is streamed from its pieces into the queue's spool file:
//!   never assembled in memory.

use postoffice_common::content::{Piece, Pieces};

use tracing::{info, warn};

use crate::App;
use crate::vacation::header_fields;

/// Why a message was not forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No outbound queue is attached (the CLI, a test without a queue).
    #[error("no outbound queue to forward through")]
    NoQueue,
    /// The SRS key is unavailable.
    #[error("the SRS key is unavailable")]
    NoSrsKey,
    /// The queue refused it.
    #[error(transparent)]
    Queue(#[from] crate::OutboundError),
}

/// A message to forward.
pub struct Forwarding<'a> {
    /// The original envelope sender ("" for the null sender).
    pub mail_from: &'a str,
    /// The local address the message was accepted for: its domain is the
    /// SRS domain, and it goes into the `Delivered-To:` field.
    pub forwarder: &'a str,
    /// Where to send it (external addresses).
    pub targets: &'a [String],
    /// The message as it would be stored locally (trace and verdict
    /// headers first), without `Return-Path:`.
    pub message: &'a Pieces<'a>,
}

/// The envelope sender a message from `mail_from` gets when `forwarder`
/// forwards it (SRS; null stays null). `None` when the SRS key is missing.
pub fn rewritten_sender(app: &App, mail_from: &str, forwarder: &str) -> Option<String> {
    if mail_from.is_empty() {
        return Some(String::new());
    }
    let domain = forwarder.rsplit_once('@').map_or("", |(_, d)| d);
    let srs = app.srs()?;
    Some(srs.forward(mail_from, domain, crate::srs::today()))
}

/// Rewrite the envelope sender and spool the message for `targets`.
/// Returns the queue ID.
pub fn forward(app: &App, f: &Forwarding<'_>) -> Result<String, ForwardError> {
    let outbound = app.outbound().ok_or(ForwardError::NoQueue)?;
    let sender = rewritten_sender(app, f.mail_from, f.forwarder).ok_or(ForwardError::NoSrsKey)?;
    let mut message = Pieces::new();
    message.push(Piece::Owned(
        format!("Delivered-To: {}\r\n", f.forwarder).into_bytes(),
    ));
    message.extend(f.message.borrowed());
    Ok(outbound.enqueue(&sender, f.targets, &message)?)
}

/// [`forward`] each (forwarding address, targets) of `forwards`; on the
/// first failure the entries already queued are taken back. Returns the
/// queue IDs. `id` names the transaction in the log.
pub fn forward_each(
    app: &App,
    mail_from: &str,
    forwards: &[(String, Vec<String>)],
    message: &Pieces<'_>,
    id: &str,
) -> Result<Vec<String>, ForwardError> {
    let mut queued: Vec<String> = Vec::new();
    for (forwarder, targets) in forwards {
        let f = Forwarding {
            mail_from,
            forwarder,
            targets,
            message,
        };
        match forward(app, &f) {
            Ok(qid) => {
                let action = if crate::srs::is_srs_address(forwarder) {
                    "srs_returned"
                } else {
                    "forwarded"
                };
                app.metrics.address_actions.inc([action]);
                info!(id, forwarder = %forwarder, to = %targets.join(","), queue_id = %qid, action, "forwarded");
                queued.push(qid);
            }
            Err(e) => {
                warn!(error = %e, id, forwarder = %forwarder, "forwarding failed");
                if let Some(q) = app.outbound() {
                    for qid in &queued {
                        q.cancel(qid);
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(queued)
}

/// How many trace fields (`Received:`, `Delivered-To:`) `header` has.
pub fn hop_count(header: &[u8]) -> usize {
    header_fields(header)
        .iter()
        .filter(|(n, _)| {
            n.eq_ignore_ascii_case("received") || n.eq_ignore_ascii_case("delivered-to")
        })
        .count()
}

/// Was the message already delivered to `address` (a `Delivered-To:`
/// naming it): it came back, a loop.
pub fn delivered_to(header: &[u8], address: &str) -> bool {
    header_fields(header).iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("delivered-to") && v.trim().eq_ignore_ascii_case(address)
    })
}

/// Did the verification pipeline mark the message as spam or as carrying
/// a virus (`headers` are the verdict headers it added, `summary` its
/// per-stage results)?
pub fn marked_bad(headers: &str, summary: &str) -> bool {
    let spam = headers.lines().any(|l| {
        let l = l.trim_start();
        l.len() > 14
            && l[..14].eq_ignore_ascii_case("X-Spam-Status:")
            && l[14..].trim_start().to_ascii_lowercase().starts_with("yes")
    });
    spam || summary.contains("virus=found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_hops_and_finds_loops() {
        let h = b"Received: from a\r\n\tby b; x\r\nDelivered-To: Alice@Example.test\r\nreceived: from c\r\nSubject: Received: no\r\n\r\n";
        assert_eq!(hop_count(h), 3);
        assert!(delivered_to(h, "alice@example.test"));
        assert!(!delivered_to(h, "bob@example.test"));
    }

    #[test]
    fn spam_and_virus_marks() {
        assert!(marked_bad(
            "X-Spam-Status: Yes, score=9\r\n",
            "spf=pass virus=clean"
        ));
        assert!(!marked_bad(
            "X-Spam-Status: No, score=1\r\n",
            "spf=pass virus=clean"
        ));
        assert!(marked_bad("", "dnsbl=none virus=found:Eicar-Test"));
        assert!(!marked_bad("", "dnsbl=none virus=off"));
    }
}
