//! Mail arriving on the MX port (SMTP, port 25): which recipients are
//! accepted, and what happens to a message once its DATA is complete.
//!
//! Only users of local domains are accepted, whatever an address looks
//! like (no relaying). A complete message goes through the verification
//! pipeline, gets its trace headers (`Return-Path`, `Received`, the
//! verdict headers; forged copies of ours are removed) and is stored for
//! every recipient, or for none. The reply says what happened: `250` only
//! once every copy is fsynced.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use postoffice_common::content::{Content, Piece, Pieces};
use postoffice_filter::{MessageAction, MessageContext, Stage};
use postoffice_smtp::{Reply, Verdict, codes, sanitize, status};
use tracing::{info, warn};

use crate::App;
use crate::delivery::{DeliveryError, temporary_failure};
use crate::metrics::reason;
use crate::trace::{Trace, find_header_end, strip_forged, trace_headers};

/// Why an accepted message was not stored or forwarded.
enum Stored {
    /// Local delivery failed.
    Delivery(DeliveryError),
    /// Refused before storing (a loop, an invalid SRS address, the queue).
    Refused(Reply),
}

/// What became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored in every recipient's maildrop.
    Delivered,
    /// Stored in every recipient's quarantine.
    Quarantined,
    /// Refused for good by the pipeline (5xx).
    Rejected,
    /// Refused for now by the pipeline (4xx).
    TempFailed,
    /// Accepted by the pipeline but not stored (4xx/5xx from delivery).
    Failed,
}

impl Outcome {
    /// The word used in the transaction log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Quarantined => "quarantined",
            Outcome::Rejected => "rejected",
            Outcome::TempFailed => "tempfail",
            Outcome::Failed => "failed",
        }
    }

    /// The `outcome` label of `postoffice_smtp_transactions_total`.
    pub fn as_label(self) -> &'static str {
        match self {
            Outcome::TempFailed => "tempfailed",
            other => other.as_str(),
        }
    }
}

/// A complete message and its transaction.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The transaction ID (logs, `Received:`, the reply).
    pub id: &'a str,
    /// The client's address.
    pub ip: IpAddr,
    /// What the client said in EHLO/HELO.
    pub helo: &'a str,
    /// EHLO (true) or HELO.
    pub esmtp: bool,
    /// The TLS version and cipher, when encrypted.
    pub tls: Option<&'a str>,
    /// The reverse-path ("" for the null sender).
    pub mail_from: &'a str,
    /// The accepted recipients.
    pub rcpt_to: &'a [String],
    /// What the connect-time checks found (see `postoffice-filter`).
    pub connect_tags: &'a [String],
    /// The content as received, without our headers: in memory or in the
    /// spool file.
    pub body: &'a Content,
}

/// How much of a message's start is read to find its header section (the
/// SMTP header limit keeps real headers far below it).
pub(crate) const HEADER_WINDOW: usize = 4 << 20;

/// Relay protection and the recipient check: only addresses of local
/// domains that reach a mailbox with room for a message (users, and the
/// role addresses of [`crate::addresses`]); everything else is refused.
pub fn recipient_verdict(app: &App, address: &str) -> Verdict {
    let local = app.local();
    let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    let rejected = |why: &'static str| app.metrics.smtp_rejections.inc([MX, why]);
    let bare_postmaster = crate::addresses::is_bare_postmaster(address);
    if !bare_postmaster && !local.is_local_domain(domain) {
        rejected(reason::RELAY);
        return Verdict::Reject(Reply::new(
            codes::TRANSACTION_FAILED,
            status::NOT_AUTHORIZED,
            format!("<{}>: Relay access denied", sanitize(address)),
        ));
    }
    if !bare_postmaster && crate::srs::is_srs_address(address) {
        return srs_verdict(app, address);
    }
    match local.check_targets(address) {
        Ok(r) if !r.external.is_empty() && app.outbound().is_none() => {
            rejected(reason::RECIPIENT_OTHER);
            Verdict::Reject(DeliveryError::ForwardUnavailable(address.to_string()).reply())
        }
        Ok(_) => Verdict::Accept,
        Err(DeliveryError::NoSuchUser(_)) => {
            rejected(reason::UNKNOWN_USER);
            Verdict::Reject(Reply::new(
                codes::MAILBOX_UNAVAILABLE,
                status::BAD_DEST_MAILBOX,
                format!(
                    "<{}>: Recipient address rejected: User unknown",
                    sanitize(address)
                ),
            ))
        }
        Err(e) => {
            rejected(delivery_reason(&e));
            Verdict::Reject(e.reply())
        }
    }
}

/// A bounce (or reply) to one of our SRS addresses: accepted when we made
/// the address (hash) recently enough (age), and there is a way on.
fn srs_verdict(app: &App, address: &str) -> Verdict {
    let Some(srs) = app.srs() else {
        return Verdict::Reject(temporary_failure());
    };
    match srs.reverse(address, crate::srs::today()) {
        Ok(_) if app.outbound().is_some() => Verdict::Accept,
        Ok(_) => Verdict::Reject(temporary_failure()),
        Err(e) => {
            app.metrics.smtp_rejections.inc([MX, reason::UNKNOWN_USER]);
            let why = match e {
                crate::srs::SrsError::Malformed => "malformed SRS address",
                crate::srs::SrsError::BadHash => {
                    "SRS address with an invalid hash (not made by us)"
                }
                crate::srs::SrsError::Expired => "SRS address has expired",
            };
            Verdict::Reject(Reply::new(
                codes::MAILBOX_UNAVAILABLE,
                status::BAD_DEST_MAILBOX,
                format!("<{}>: Recipient address rejected: {why}", sanitize(address)),
            ))
        }
    }
}

/// Where an accepted message goes: local mailboxes, and forwards.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Mailboxes that get a local copy, each with the recipient address
    /// that led to it (its `Delivered-To:` when that is another address).
    pub(crate) local: crate::addresses::Resolution,
    /// (forwarding address, external targets): users who forward, external
    /// targets of local aliases, SRS bounces.
    pub(crate) forwards: Vec<(String, Vec<String>)>,
    /// Users whose vacation reply may answer, each with the recipient
    /// addresses that led to it (normalised; the user's own among them
    /// when it was named).
    pub(crate) users: Vec<(String, Vec<String>)>,
}

/// Split the recipients: SRS addresses are forwarded to the address they
/// decode to; users with forwarding have theirs forwarded (and keep a copy
/// if they chose to); all others are delivered locally. `bad` (spam,
/// virus, quarantine): nothing of a user is forwarded.
pub(crate) fn plan(app: &App, rcpts: &[String], bad: bool) -> Result<Plan, Reply> {
    let dir = app.directory.snapshot();
    let local = app.local();
    let mut p = Plan::default();
    let not_forwarded = || {
        Reply::new(
            codes::TRANSACTION_FAILED,
            status::NOT_AUTHORIZED,
            "Message not forwarded: marked as spam or virus",
        )
    };
    for rcpt in rcpts {
        if crate::srs::is_srs_address(rcpt) && !crate::addresses::is_bare_postmaster(rcpt) {
            let srs = app.srs().ok_or_else(temporary_failure)?;
            let to = srs.reverse(rcpt, crate::srs::today()).map_err(|e| {
                Reply::new(
                    codes::MAILBOX_UNAVAILABLE,
                    status::BAD_DEST_MAILBOX,
                    format!("<{}>: {e}", sanitize(rcpt)),
                )
            })?;
            if bad {
                return Err(not_forwarded());
            }
            p.forwards.push((rcpt.clone(), vec![to]));
            continue;
        }
        let resolution = local
            .resolution(std::slice::from_ref(rcpt))
            .map_err(|e| e.reply())?;
        let via_rcpt =
            postoffice_directory::normalize_address(rcpt).unwrap_or_else(|_| rcpt.clone());
        // External targets of a local alias: forwarded (SRS) under the
        // recipient address, never when the message is bad.
        if !resolution.external.is_empty() {
            if bad {
                if resolution.local.is_empty() {
                    return Err(not_forwarded());
                }
            } else {
                p.forwards
                    .push((via_rcpt.clone(), resolution.external.clone()));
            }
        }
        for m in &resolution.local {
            let mailbox = m.address.clone();
            let user = dir.user(&mailbox);
            let forward = user.map(|u| u.forward.clone()).unwrap_or_default();
            let keep = user.is_none_or(|u| u.forward_keep_copy);
            let via = via_rcpt.clone();
            // Mail to postmaster@/abuse@ that reaches a user is not theirs
            // to auto-answer (and must not reveal who reads it).
            let role = via != mailbox
                && (crate::addresses::is_bare_postmaster(rcpt)
                    || crate::addresses::ROLE_LOCAL_PARTS
                        .iter()
                        .any(|r| via.rsplit_once('@').is_some_and(|(l, _)| l == *r)));
            match p.users.iter_mut().find(|(u, _)| *u == mailbox) {
                _ if role => {}
                Some((_, v)) => {
                    if !v.contains(&via) {
                        v.push(via);
                    }
                }
                None => p.users.push((mailbox.clone(), vec![via])),
            }
            if forward.is_empty() || bad {
                p.local.push_local(&mailbox, &m.recipient);
                continue;
            }
            if keep {
                p.local.push_local(&mailbox, &m.recipient);
            }
            let (here, away): (Vec<String>, Vec<String>) = forward
                .into_iter()
                .partition(|t| local.is_local_domain(t.rsplit_once('@').map_or("", |(_, d)| d)));
            let mut reached = keep || !away.is_empty();
            for t in here {
                // One level only: a local target's own forwarding is not
                // followed (no loops between local users).
                if let Ok(r) = crate::addresses::resolve(&app.config.addresses, &dir, &t) {
                    for m2 in &r.local {
                        p.local.push_local(&m2.address, &m2.recipient);
                        reached = true;
                    }
                }
            }
            if !reached {
                // Every target is a local address that no longer exists:
                // the user's own maildrop rather than nowhere.
                p.local.push_local(&mailbox, &m.recipient);
            }
            if !away.is_empty() {
                p.forwards.push((mailbox, away));
            }
        }
    }
    Ok(p)
}

/// The `service` label of the MX port.
const MX: &str = "mx";

/// The rejection reason of a delivery error.
pub(crate) fn delivery_reason(e: &DeliveryError) -> &'static str {
    match e {
        DeliveryError::NoSuchUser(_) => reason::UNKNOWN_USER,
        DeliveryError::OverQuota(_) | DeliveryError::TooBigForQuota { .. } => reason::QUOTA,
        DeliveryError::HeldNotForwarded(_)
        | DeliveryError::AliasTooDeep(_)
        | DeliveryError::ForwardUnavailable(_)
        | DeliveryError::Empty
        | DeliveryError::Store(_) => reason::RECIPIENT_OTHER,
    }
}

/// The rejection reason of the verification stage that refused a
/// message (`tempfail`: the refusal was temporary).
fn stage_reason(stage: Option<Stage>, tempfail: bool) -> &'static str {
    match stage {
        Some(Stage::Virus) if tempfail => reason::SCANNER_UNAVAILABLE,
        Some(Stage::Virus) => reason::VIRUS,
        Some(Stage::Spam) if tempfail => reason::SCANNER_UNAVAILABLE,
        Some(Stage::Spam) => reason::SPAM,
        Some(Stage::Spf) => reason::SPF,
        Some(Stage::Dkim) => reason::DKIM,
        Some(Stage::Dmarc) => reason::DMARC,
        Some(Stage::Dnsbl) => reason::DNSBL,
        Some(Stage::IpBlock) => reason::IP_BLOCK,
        Some(Stage::SenderBlock) => reason::SENDER_BLOCK,
        None => reason::OTHER,
    }
}

/// Run blocking work (file I/O) without stalling the runtime's other tasks
/// on this thread: `block_in_place` on the multi-threaded runtime the
/// server runs; directly elsewhere (tests, the CLI).
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Verify and store a complete message; returns the final reply and what
/// happened (the metrics are updated here).
pub async fn deliver(app: &Arc<App>, m: Message<'_>) -> (Reply, Outcome) {
    deliver_as(app, m, None).await
}

/// [`deliver`], storing the message under the unique ID `uid` in the
/// maildrop (one recipient; see [`crate::delivery::Local::deliver_as`]):
/// how a server-run fetch job recognises a delivery after a crash.
pub async fn deliver_as(app: &Arc<App>, m: Message<'_>, uid: Option<&str>) -> (Reply, Outcome) {
    let started = Instant::now();
    let size = m.body.len();
    let head = match m.body.head(HEADER_WINDOW) {
        Ok(h) => h,
        Err(e) => {
            warn!(error = %e, id = m.id, "cannot read the spooled message");
            return (temporary_failure(), Outcome::Failed);
        }
    };
    let header_end = find_header_end(&head);
    let ctx = MessageContext {
        ip: m.ip,
        helo: m.helo,
        mail_from: m.mail_from,
        rcpt_to: m.rcpt_to,
        auth_user: None,
        receiver_hostname: &app.config.hostname,
        connect_tags: m.connect_tags,
    };
    let verdict = app.filters.check_message(&ctx, m.body).await;
    app.metrics.record_filter_summary(&verdict.summary);
    let trace = trace_headers(&Trace {
        helo: m.helo,
        ip: m.ip,
        hostname: &app.config.hostname,
        esmtp: m.esmtp,
        tls: m.tls,
        authenticated: false,
        id: m.id,
        mail_from: m.mail_from,
        rcpt_to: m.rcpt_to,
        time: SystemTime::now(),
    });
    // Forged copies of our verdict headers are removed from the header
    // section; the rest of the message is not touched (or copied).
    let header = strip_forged(&head[..header_end], &app.config.hostname);
    let (reply, outcome) = match verdict.action {
        MessageAction::Reject { reply } => (reply, Outcome::Rejected),
        MessageAction::TempFail { reply } => (reply, Outcome::TempFailed),
        action => {
            let quarantine = matches!(action, MessageAction::Quarantine { .. });
            let bad = quarantine || crate::forward::marked_bad(&verdict.headers, &verdict.summary);
            let mut message = Pieces::new();
            message
                .push(Piece::Borrowed(trace.as_bytes()))
                .push(Piece::Borrowed(verdict.headers.as_bytes()))
                .push(Piece::Borrowed(&header))
                .push(Piece::Content(m.body, header_end as u64));
            // The forwarded copy: our trace, without Return-Path (the
            // final delivery adds its own).
            let received = trace
                .split_once("\r\n")
                .filter(|(first, _)| first.starts_with("Return-Path:"))
                .map_or(trace.as_str(), |(_, rest)| rest);
            let mut onward = Pieces::new();
            onward
                .push(Piece::Borrowed(received.as_bytes()))
                .push(Piece::Borrowed(verdict.headers.as_bytes()))
                .push(Piece::Borrowed(&header))
                .push(Piece::Content(m.body, header_end as u64));
            let rcpts = m.rcpt_to;
            let stored = blocking(|| {
                let local = app.local();
                if quarantine {
                    return local.quarantine(rcpts, &message).map_err(Stored::Delivery);
                }
                let p = plan(app, rcpts, bad).map_err(Stored::Refused)?;
                if !p.forwards.is_empty() {
                    let hops = crate::forward::hop_count(&header) + 1;
                    let looped = p
                        .forwards
                        .iter()
                        .any(|(f, _)| crate::forward::delivered_to(&header, f));
                    if looped || hops > app.config.addresses.forward_max_hops as usize {
                        return Err(Stored::Refused(Reply::new(
                            codes::TRANSACTION_FAILED,
                            status::ROUTING_LOOP,
                            format!("Mail loop detected ({hops} hops); not forwarded"),
                        )));
                    }
                }
                let delivered = if p.local.local.is_empty() {
                    Vec::new()
                } else {
                    local
                        .deliver_resolved(&p.local, &message, uid)
                        .map_err(Stored::Delivery)?
                };
                if crate::forward::forward_each(app, m.mail_from, &p.forwards, &onward, m.id)
                    .is_err()
                {
                    local.undo_resolved(&p.local, &delivered);
                    return Err(Stored::Refused(temporary_failure()));
                }
                if !bad {
                    for (user, via) in &p.users {
                        crate::vacation::reply(app, user, via, m.mail_from, &header);
                    }
                }
                Ok(())
            });
            let ok = |text: String| Reply::new(codes::OK, status::OTHER, text);
            match stored {
                Ok(()) if quarantine => (
                    ok(format!("OK id={} (quarantined)", m.id)),
                    Outcome::Quarantined,
                ),
                Ok(()) => (ok(format!("OK id={}", m.id)), Outcome::Delivered),
                Err(Stored::Delivery(e)) => {
                    warn!(error = %e, id = m.id, "delivery failed");
                    app.metrics.smtp_rejections.inc([MX, delivery_reason(&e)]);
                    (e.reply(), Outcome::Failed)
                }
                Err(Stored::Refused(reply)) => {
                    warn!(id = m.id, reply = %reply, "not delivered");
                    app.metrics
                        .smtp_rejections
                        .inc([MX, reason::RECIPIENT_OTHER]);
                    (reply, Outcome::Failed)
                }
            }
        }
    };
    let metrics = &app.metrics;
    metrics.smtp_transactions.inc([MX, outcome.as_label()]);
    match outcome {
        Outcome::Rejected => metrics
            .smtp_rejections
            .inc([MX, stage_reason(verdict.stage, false)]),
        Outcome::TempFailed => metrics
            .smtp_rejections
            .inc([MX, stage_reason(verdict.stage, true)]),
        _ => {}
    }
    metrics
        .delivery_seconds
        .observe(["inbound"], started.elapsed());
    info!(
        id = m.id,
        ip = %m.ip,
        helo = %m.helo,
        from = %m.mail_from,
        rcpts = %m.rcpt_to.join(","),
        size,
        tls = m.tls.is_some(),
        connect = %m.connect_tags.join(","),
        verdict = %verdict.summary,
        result = outcome.as_str(),
        reply = %reply,
        "smtp transaction"
    );
    (reply, outcome)
}

#[cfg(test)]
mod plan_tests {
    use super::*;

    fn app(dir: &std::path::Path) -> App {
        let config = postoffice_config::Config {
            data_dir: dir.to_path_buf(),
            hostname: "mx.example.test".into(),
            ..Default::default()
        };
        let app = App::without_filters(config).unwrap();
        app.directory.add_domain("example.test").unwrap();
        let hash = postoffice_directory::hash_password(b"x").unwrap();
        for u in [
            "alice@example.test",
            "bob@example.test",
            "carol@example.test",
        ] {
            app.directory.add_user(u, &hash).unwrap();
        }
        app
    }

    fn rcpts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn forwarding_users_keep_a_copy_or_not_and_bad_mail_stays_home() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        let d = &app.directory;
        d.set_user_forward("alice@example.test", &rcpts(&["a@far.test"]), false)
            .unwrap();
        d.set_user_forward("bob@example.test", &rcpts(&["b@far.test"]), true)
            .unwrap();
        let all = rcpts(&[
            "alice@example.test",
            "bob@example.test",
            "carol@example.test",
        ]);
        let p = plan(&app, &all, false).unwrap();
        assert_eq!(
            p.local.mailboxes(),
            ["bob@example.test", "carol@example.test"]
        );
        assert_eq!(
            p.forwards,
            [
                ("alice@example.test".to_string(), rcpts(&["a@far.test"])),
                ("bob@example.test".to_string(), rcpts(&["b@far.test"])),
            ]
        );
        assert_eq!(p.users.len(), 3);
        // Spam, virus, quarantine: nothing forwarded, everyone keeps it.
        let p = plan(&app, &all, true).unwrap();
        assert!(p.forwards.is_empty());
        assert_eq!(p.local.local.len(), 3);
    }

    #[test]
    fn local_targets_are_delivered_once_and_missing_ones_fall_back() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        let d = &app.directory;
        // alice -> bob (local), bob -> alice: one level only, no loop.
        d.set_user_forward("alice@example.test", &rcpts(&["bob@example.test"]), false)
            .unwrap();
        d.set_user_forward("bob@example.test", &rcpts(&["alice@example.test"]), false)
            .unwrap();
        let p = plan(&app, &rcpts(&["alice@example.test"]), false).unwrap();
        assert_eq!(p.local.mailboxes(), ["bob@example.test"]);
        assert!(p.forwards.is_empty());
        // A local target that no longer exists: the user's own maildrop.
        d.set_user_forward("carol@example.test", &rcpts(&["gone@example.test"]), false)
            .unwrap();
        let p = plan(&app, &rcpts(&["carol@example.test"]), false).unwrap();
        assert_eq!(p.local.mailboxes(), ["carol@example.test"]);
    }

    #[test]
    fn role_addresses_do_not_trigger_vacation_replies() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = postoffice_config::Config {
            data_dir: dir.path().to_path_buf(),
            hostname: "mx.example.test".into(),
            ..Default::default()
        };
        config.addresses.postmaster = vec!["alice@example.test".into()];
        let app = App::without_filters(config).unwrap();
        app.directory.add_domain("example.test").unwrap();
        let hash = postoffice_directory::hash_password(b"x").unwrap();
        app.directory.add_user("alice@example.test", &hash).unwrap();
        let p = plan(
            &app,
            &rcpts(&["postmaster@example.test", "abuse@example.test"]),
            false,
        )
        .unwrap();
        assert_eq!(p.local.mailboxes(), ["alice@example.test"]);
        assert!(p.users.is_empty(), "{:?}", p.users);
        let p = plan(
            &app,
            &rcpts(&["postmaster@example.test", "Alice@example.test"]),
            false,
        )
        .unwrap();
        assert_eq!(
            p.users,
            [(
                "alice@example.test".to_string(),
                rcpts(&["alice@example.test"])
            )]
        );
    }

    #[test]
    fn srs_recipients_decode_and_forged_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        let srs = app.srs().unwrap();
        let addr = srs.forward("x@orig.test", "example.test", crate::srs::today());
        let p = plan(&app, std::slice::from_ref(&addr), false).unwrap();
        assert_eq!(p.forwards, [(addr.clone(), rcpts(&["x@orig.test"]))]);
        assert!(p.local.is_empty());
        let forged = addr.replace("=x@", "=y@");
        let r = plan(&app, &[forged], false).unwrap_err();
        assert_eq!(r.code, codes::MAILBOX_UNAVAILABLE);
        // Spam to an SRS address is refused, not forwarded.
        let r = plan(&app, &[addr], true).unwrap_err();
        assert_eq!(r.code, codes::TRANSACTION_FAILED);
    }
}
