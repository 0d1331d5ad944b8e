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
            let mut message = Pieces::new();
            message
                .push(Piece::Owned(trace.into_bytes()))
                .push(Piece::Owned(verdict.headers.clone().into_bytes()))
                .push(Piece::Borrowed(&header))
                .push(Piece::Content(m.body, header_end as u64));
            let rcpts = m.rcpt_to;
            let stored = blocking(|| {
                let local = app.local();
                if quarantine {
                    // Held mail is never forwarded.
                    local.quarantine(rcpts, &message)
                } else {
                    let resolution = local.resolution(rcpts)?;
                    crate::alias_forward::deliver_and_forward(
                        app,
                        m.mail_from,
                        &resolution,
                        &message,
                        uid,
                    )
                    .map(|_| ())
                }
            });
            let ok = |text: String| Reply::new(codes::OK, status::OTHER, text);
            match stored {
                Ok(()) if quarantine => (
                    ok(format!("OK id={} (quarantined)", m.id)),
                    Outcome::Quarantined,
                ),
                Ok(()) => (ok(format!("OK id={}", m.id)), Outcome::Delivered),
                Err(e) => {
                    warn!(error = %e, id = m.id, "delivery failed");
                    app.metrics.smtp_rejections.inc([MX, delivery_reason(&e)]);
                    (e.reply(), Outcome::Failed)
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
