//! Mail submission (RFC 6409): what happens to a message an authenticated
//! user sends. The SMTP dialogue itself is the shared session in
//! `postoffice-smtp`; this module holds the submission policy:
//!
//! - a user may send only as their own address or configured aliases: the
//!   MAIL FROM address and every From:, Sender:, Resent-From: and
//!   Resent-Sender: address ([`crate::author`]); a message with two From:
//!   fields or an author field without an address is refused too
//!   (`553 5.7.1` for all of them);
//! - missing `Date` and `Message-ID` are added (RFC 6409 8.2, 8.3);
//! - the message is DKIM-signed when a key exists for the sender's domain;
//! - local recipients are delivered at once, others are spooled in the
//!   outbound queue; `250` only when every part is durable.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use postoffice_common::content::{Content, Piece, Pieces};
use postoffice_common::date::rfc5322;
use postoffice_smtp::{Envelope, Reply, Verdict, codes, sanitize, status};
use tracing::{info, warn};

use crate::App;
use crate::delivery::{Local, sysexits, temporary_failure};
use crate::inbound::HEADER_WINDOW;
use crate::trace::{Trace, find_header_end, trace_headers};

/// May `user` (authenticated) send as `address`?
pub fn sender_allowed(app: &App, user: &str, address: &str) -> bool {
    sender_allowed_cfg(app, user, address)
}

/// The reply to MAIL FROM on submission: `250` for an address the user may
/// send as, `553 5.7.1` otherwise.
pub fn sender_verdict(app: &App, user: &str, address: &str) -> Verdict {
    if sender_allowed(app, user, address) {
        Verdict::Accept
    } else {
        warn!(%user, sender = %sanitize(address), "submission: sender address not owned");
        app.metrics
            .smtp_rejections
            .inc(["submission", crate::metrics::reason::SENDER_NOT_OWNED]);
        Verdict::Reject(Reply::new(
            codes::MAILBOX_NAME_NOT_ALLOWED,
            status::NOT_AUTHORIZED,
            format!(
                "<{}>: Sender address not owned by user {user}",
                sanitize(address)
            ),
        ))
    }
}

fn sender_allowed_cfg(app: &App, user: &str, address: &str) -> bool {
    let config = &app.config;
    if user.is_empty() || address.is_empty() {
        // The null sender is for bounces from MTAs, not for users.
        return false;
    }
    let address = address.to_ascii_lowercase();
    if address == user {
        return true;
    }
    // The aliases that deliver to the user (unless sending is switched off
    // for one with `alias add --no-send-as`).
    if crate::addresses::may_send_as(&config.addresses, &app.directory.snapshot(), user, &address) {
        return true;
    }
    let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    config
        .submission
        .sender_aliases
        .get(user)
        .is_some_and(|aliases| {
            aliases.iter().any(|a| {
                let a = a.to_ascii_lowercase();
                a == address || a.strip_prefix('@').is_some_and(|d| d == domain)
            })
        })
}

/// Recipients on submission: local users must exist; anything else goes
/// to the outbound queue (the user is authenticated: this is not relaying).
pub fn recipient_verdict(app: &App, address: &str) -> Verdict {
    let local = app.local();
    let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    if domain.is_empty() {
        return Verdict::Reject(Reply::new(
            codes::PARAM_SYNTAX_ERROR,
            status::BAD_DEST_SYNTAX,
            format!("<{}>: Bad recipient address syntax", sanitize(address)),
        ));
    }
    if local.is_local_domain(domain) {
        return match local.check_targets(address) {
            Ok(r) if !r.external.is_empty() && app.outbound().is_none() => {
                Verdict::Reject(queue_unavailable())
            }
            Ok(_) => Verdict::Accept,
            Err(e) => Verdict::Reject(e.reply()),
        };
    }
    if app.outbound().is_none() {
        return Verdict::Reject(queue_unavailable());
    }
    Verdict::Accept
}

fn queue_unavailable() -> Reply {
    Reply::new(
        codes::LOCAL_ERROR,
        status::SYSTEM_OTHER,
        "Outbound queue unavailable, try again later",
    )
}

/// Why a submission was refused: the SMTP reply and the sysexits code.
#[derive(Debug)]
pub struct Refusal {
    /// The reply to the end of DATA.
    pub reply: Reply,
    /// The exit status of `postoffice sendmail`.
    pub exit_code: u8,
}

impl Refusal {
    fn new(reply: Reply, exit_code: u8) -> Self {
        Refusal { reply, exit_code }
    }
}

/// Complete a message (From/Date/Message-ID when missing), check that its
/// author fields belong to `user` (when given), and DKIM-sign it. `trace`
/// is prepended above the signature (a `Received:` line or ""). The result
/// is assembled from pieces: the body is never copied into memory (the
/// signature is computed by reading it once).
pub fn prepare<'a>(
    app: &App,
    user: Option<&str>,
    mail_from: &str,
    id: &str,
    trace: &str,
    body: Pieces<'a>,
) -> Result<Prepared<'a>, Refusal> {
    let head = body.head(HEADER_WINDOW).map_err(|e| {
        warn!(error = %e, "submission: cannot read the spooled message");
        Refusal::new(temporary_failure(), sysexits::TEMPFAIL)
    })?;
    let header = &head[..find_header_end(&head)];
    let ids = crate::author::identities(header).map_err(|e| {
        warn!(user = user.unwrap_or("-"), error = %e, "submission: author fields refused");
        Refusal::new(
            Reply::new(
                codes::MAILBOX_NAME_NOT_ALLOWED,
                status::NOT_AUTHORIZED,
                format!("{e}"),
            ),
            sysexits::DATAERR,
        )
    })?;
    if let Some(user) = user
        && let Some(bad) = ids.all().find(|a| !sender_allowed_cfg(app, user, a))
    {
        warn!(%user, from = %sanitize(bad), "submission: author address not owned");
        return Err(Refusal::new(
            Reply::new(
                codes::MAILBOX_NAME_NOT_ALLOWED,
                status::NOT_AUTHORIZED,
                format!(
                    "Author address <{}> not owned by user {user}",
                    sanitize(bad)
                ),
            ),
            sysexits::NOPERM,
        ));
    }
    let (has_date, has_message_id) = mail_parser::MessageParser::default()
        .parse_headers(header)
        .map_or((false, false), |m| {
            (m.date().is_some(), m.message_id().is_some())
        });
    let mut added = String::new();
    if ids.from.is_empty() {
        added.push_str(&format!("From: <{mail_from}>\r\n"));
    }
    if !has_date {
        added.push_str(&format!("Date: {}\r\n", rfc5322(SystemTime::now())));
    }
    if !has_message_id {
        added.push_str(&format!("Message-ID: <{id}@{}>\r\n", app.config.hostname));
    }
    let sign_domain = ids
        .from
        .first()
        .map(String::as_str)
        .unwrap_or(mail_from)
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .unwrap_or_default();
    let mut signed = Pieces::new();
    signed.push(Piece::Owned(added.into_bytes())).extend(body);
    let signature = if app.config.dkim.sign {
        app.dkim.sign_reader(&sign_domain, &mut signed.reader())
    } else {
        None
    };
    let mut message = Pieces::new();
    message.push(Piece::Owned(trace.as_bytes().to_vec()));
    if let Some(sig) = &signature {
        message.push(Piece::Owned(sig.clone().into_bytes()));
    }
    message.extend(signed);
    Ok(Prepared {
        message,
        signed: signature.is_some(),
    })
}

/// A submitted message ready to store (see [`prepare`]).
#[derive(Debug)]
pub struct Prepared<'a> {
    /// Trace, signature, added headers, then the body as received.
    pub message: Pieces<'a>,
    /// Whether it carries our DKIM signature.
    pub signed: bool,
}

/// Deliver to local recipients and spool the rest, all or nothing.
/// Returns the queue ID when something was queued.
pub fn store(
    app: &App,
    mail_from: &str,
    rcpts: &[String],
    message: &Pieces<'_>,
) -> Result<Option<String>, Refusal> {
    store_or_hold(app, mail_from, rcpts, message, None)
}

/// [`store`], or with `hold` (the reason) keep the message from going
/// anywhere: the remote recipients' copy is held in the outbound queue
/// (sent only when released), the local recipients' copies go to their
/// quarantine. All or nothing like [`store`].
pub fn store_or_hold(
    app: &App,
    mail_from: &str,
    rcpts: &[String],
    message: &Pieces<'_>,
    hold: Option<&str>,
) -> Result<Option<String>, Refusal> {
    let local: Local<'_> = app.local();
    let outbound = app.outbound();
    let (local_rcpts, remote_rcpts): (Vec<String>, Vec<String>) =
        rcpts.iter().cloned().partition(|r| {
            let d = r.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            local.is_local_domain(d)
        });
    if !remote_rcpts.is_empty() && outbound.is_none() {
        return Err(Refusal::new(queue_unavailable(), sysexits::TEMPFAIL));
    }
    if let Some(reason) = hold {
        return hold_all(app, mail_from, &local_rcpts, &remote_rcpts, message, reason);
    }
    // Local copies first (they can be taken back), then the queue: once
    // spooled, the scheduler may start sending at once.
    let refused = |e: crate::delivery::DeliveryError| Refusal::new(e.reply(), e.exit_code());
    let mut delivered = Vec::new();
    // Local recipients: their own maildrops, and the forwarding of users
    // who forward (see crate::forward).
    let plan = if local_rcpts.is_empty() {
        crate::inbound::Plan::default()
    } else {
        crate::inbound::plan(app, &local_rcpts, false).map_err(|reply| {
            let code = if reply.is_permanent() {
                sysexits::NOUSER
            } else {
                sysexits::TEMPFAIL
            };
            Refusal::new(reply, code)
        })?
    };
    if !plan.forwards.is_empty() && outbound.is_none() {
        return Err(Refusal::new(queue_unavailable(), sysexits::TEMPFAIL));
    }
    if !plan.local.local.is_empty() {
        // Local copies carry the Return-Path of final delivery.
        let mut local_msg = Pieces::new();
        local_msg
            .push(Piece::Owned(
                format!("Return-Path: <{mail_from}>\r\n").into_bytes(),
            ))
            .extend(message.borrowed());
        delivered = local
            .deliver_resolved(&plan.local, &local_msg, None)
            .map_err(refused)?;
    }
    let forwarded =
        crate::forward::forward_each(app, mail_from, &plan.forwards, message, "submission")
            .map_err(|_| {
                local.undo_resolved(&plan.local, &delivered);
                Refusal::new(temporary_failure(), sysexits::TEMPFAIL)
            })?;
    let queued = match (&outbound, remote_rcpts.is_empty()) {
        (Some(q), false) => match q.enqueue(mail_from, &remote_rcpts, message) {
            Ok(id) => Some(id),
            Err(e) => {
                warn!(error = %e, "enqueue failed; taking back the local copies");
                for id in &forwarded {
                    q.cancel(id);
                }
                local.undo_resolved(&plan.local, &delivered);
                return Err(Refusal::new(temporary_failure(), sysexits::TEMPFAIL));
            }
        },
        _ => None,
    };
    // Mail only for external alias targets is known by its forwarded copy.
    let queued = queued.or_else(|| forwarded.first().cloned());
    if !plan.users.is_empty() {
        match message.head(crate::inbound::HEADER_WINDOW) {
            Ok(head) => {
                let header = &head[..find_header_end(&head)];
                for (user, via) in &plan.users {
                    crate::vacation::reply(app, user, via, mail_from, header);
                }
            }
            Err(e) => warn!(error = %e, "cannot read the message for vacation replies"),
        }
    }
    info!(
        from = %mail_from,
        local = %local_rcpts.join(","),
        remote = %remote_rcpts.join(","),
        queue_id = queued.as_deref().unwrap_or("-"),
        size = message.len(),
        "submitted"
    );
    Ok(queued)
}

/// The held path of [`store_or_hold`]: the queue entry first (it can be
/// taken back), then the local quarantine copies.
fn hold_all(
    app: &App,
    mail_from: &str,
    local_rcpts: &[String],
    remote_rcpts: &[String],
    message: &Pieces<'_>,
    reason: &str,
) -> Result<Option<String>, Refusal> {
    let local = app.local();
    // Local aliases: their mailboxes hold a copy in the quarantine, their
    // external targets are held in the queue with the remote recipients.
    let resolution = if local_rcpts.is_empty() {
        crate::addresses::Resolution::default()
    } else {
        local
            .resolution(local_rcpts)
            .map_err(|e| Refusal::new(e.reply(), e.exit_code()))?
    };
    let mut held_remote = remote_rcpts.to_vec();
    held_remote.extend(resolution.external.iter().cloned());
    let remote_rcpts = held_remote.as_slice();
    let local_rcpts = resolution.mailboxes();
    let queued = match app.outbound() {
        Some(q) if !remote_rcpts.is_empty() => {
            match q.hold(mail_from, remote_rcpts, message, reason) {
                Ok(id) => Some(id),
                Err(e) => {
                    warn!(error = %e, "cannot hold the message in the queue");
                    return Err(Refusal::new(temporary_failure(), sysexits::TEMPFAIL));
                }
            }
        }
        _ => None,
    };
    if !local_rcpts.is_empty() {
        let mut local_msg = Pieces::new();
        local_msg
            .push(Piece::Owned(
                format!("Return-Path: <{mail_from}>\r\nX-Postoffice-Held: {reason}\r\n")
                    .into_bytes(),
            ))
            .extend(message.borrowed());
        if let Err(e) = local.quarantine(&local_rcpts, &local_msg) {
            if let (Some(q), Some(id)) = (app.outbound(), &queued) {
                q.cancel(id);
            }
            return Err(Refusal::new(e.reply(), e.exit_code()));
        }
    }
    warn!(
        from = %mail_from,
        local = %local_rcpts.join(","),
        remote = %remote_rcpts.join(","),
        queue_id = queued.as_deref().unwrap_or("-"),
        %reason,
        "submission held, not sent"
    );
    Ok(queued)
}

/// The sending limits of `user` (messages per hour, recipients per day):
/// their own (`user set --max-messages-per-hour`...), else
/// `[submission]`'s; `None` when the account is disabled or gone.
fn send_limits_of(app: &App, user: &str) -> Option<(u32, u32)> {
    let cfg = &app.config.submission;
    app.directory
        .snapshot()
        .user(user)
        .filter(|u| !u.disabled)
        .map(|u| {
            u.send_limits
                .resolve(cfg.max_messages_per_hour, cfg.max_recipients_per_day)
        })
}

/// A user passed a sending limit once more: with `disable_after_limit_hits`
/// reached within a day, disable the account (the directory's disable, so
/// logins and the credential cache refuse it at once). Whether it was
/// disabled now.
fn count_limit_hit(app: &App, user: &str) -> bool {
    let hits = app.send_limits.record_hit(user);
    let max = app.config.submission.disable_after_limit_hits;
    if max == 0 || hits < max {
        return false;
    }
    match crate::inbound::blocking(|| app.directory.set_user_disabled(user, true)) {
        Ok(()) => {
            tracing::error!(
                %user,
                hits,
                "ACCOUNT DISABLED: it hit its sending limits {hits} times within 24 hours \
                 (disable_after_limit_hits = {max}); its password may be stolen. \
                 Enable it again with `postoffice user set {user} --disabled false`"
            );
            app.metrics.accounts_auto_disabled.inc([]);
            true
        }
        Err(e) => {
            tracing::error!(%user, error = %e, "cannot disable the account after too many limit hits");
            false
        }
    }
}

/// Verify, complete, sign and store a submitted message; returns the reply.
pub async fn submit(
    app: &Arc<App>,
    ip: IpAddr,
    tls: Option<&str>,
    env: &Envelope,
    id: &str,
    body: &Content,
) -> Reply {
    let started = std::time::Instant::now();
    let user = env.authenticated.clone().unwrap_or_default();
    let Some((per_hour, rcpts_per_day)) = send_limits_of(app, &user) else {
        // Disabled (or removed) while this session was open.
        warn!(id, %user, "submission from a disabled or removed account refused");
        app.metrics
            .smtp_transactions
            .inc(["submission", "rejected"]);
        app.metrics
            .smtp_rejections
            .inc(["submission", crate::metrics::reason::ACCOUNT_DISABLED]);
        return Reply::new(
            codes::MAILBOX_UNAVAILABLE,
            status::NOT_AUTHORIZED,
            format!("Account {user} is disabled; contact your administrator"),
        );
    };
    if let Err(exceeded) = app
        .send_limits
        .admit(&user, env.rcpt_to.len(), per_hour, rcpts_per_day)
    {
        let what = match exceeded {
            crate::send_limits::Exceeded::MessagesPerHour(n) => {
                format!("more than {n} messages in an hour")
            }
            crate::send_limits::Exceeded::RecipientsPerDay(n) => {
                format!("more than {n} recipients in a day")
            }
        };
        tracing::warn!(id, user = %user, limit = %what, "submission over the sending limit");
        app.metrics.smtp_transactions.inc(["submission", "failed"]);
        app.metrics
            .smtp_rejections
            .inc(["submission", crate::metrics::reason::SEND_LIMIT]);
        let disabled = count_limit_hit(app, &user);
        return Reply::new(
            codes::LOCAL_ERROR,
            status::SECURITY_OTHER,
            if disabled {
                format!(
                    "Sending limit reached ({what}) too often: account disabled, contact your administrator"
                )
            } else {
                format!("Sending limit reached ({what}), try again later")
            },
        );
    }
    let mut hold: Option<String> = None;
    if app.config.filter.scan_outbound {
        let ctx = postoffice_filter::MessageContext {
            ip,
            helo: &env.helo,
            mail_from: &env.mail_from,
            rcpt_to: &env.rcpt_to,
            auth_user: Some(&user),
            receiver_hostname: &app.config.hostname,
            connect_tags: &[],
        };
        if let Some(v) = app.filters.check_outbound(&ctx, body).await {
            use postoffice_filter::MessageAction;
            match v.action {
                MessageAction::Accept => {
                    info!(id, %user, spam = %v.summary, "submission scanned");
                }
                MessageAction::Quarantine { reason } => {
                    warn!(id, %user, spam = %v.summary, "submission scored as spam: holding it");
                    hold = Some(reason);
                }
                MessageAction::Reject { reply } => {
                    warn!(id, %user, spam = %v.summary, "submission scored as spam: refused, not sent");
                    app.metrics
                        .smtp_transactions
                        .inc(["submission", "rejected"]);
                    app.metrics
                        .smtp_rejections
                        .inc(["submission", crate::metrics::reason::OUTBOUND_SPAM]);
                    return reply;
                }
                MessageAction::TempFail { reply } => {
                    app.metrics.smtp_transactions.inc(["submission", "failed"]);
                    app.metrics
                        .smtp_rejections
                        .inc(["submission", crate::metrics::reason::SCANNER_UNAVAILABLE]);
                    return reply;
                }
            }
        }
    }
    let trace = trace_headers(&Trace {
        helo: &env.helo,
        ip,
        hostname: &app.config.hostname,
        esmtp: env.esmtp,
        tls,
        authenticated: true,
        id,
        mail_from: &env.mail_from,
        rcpt_to: &env.rcpt_to,
        time: SystemTime::now(),
    });
    // Return-Path is for the final delivery; drop it from what we send on.
    let received = trace
        .split_once("Received:")
        .map(|(_, r)| format!("Received:{r}"))
        .unwrap_or_default();
    let result = crate::inbound::blocking(|| {
        let mut message = Pieces::new();
        message.push(Piece::Content(body, 0));
        let prepared = prepare(app, Some(&user), &env.mail_from, id, &received, message)?;
        let queued = store_or_hold(
            app,
            &env.mail_from,
            &env.rcpt_to,
            &prepared.message,
            hold.as_deref(),
        )?;
        Ok::<_, Refusal>((queued, prepared.signed))
    });
    let outcome = match &result {
        Ok(_) if hold.is_some() => "held",
        Ok(_) => "accepted",
        Err(r) if r.reply.code >= 500 => "rejected",
        Err(_) => "failed",
    };
    app.metrics.smtp_transactions.inc(["submission", outcome]);
    if let Err(r) = &result
        && r.reply.code == codes::MAILBOX_NAME_NOT_ALLOWED
    {
        app.metrics
            .smtp_rejections
            .inc(["submission", crate::metrics::reason::SENDER_NOT_OWNED]);
    }
    app.metrics
        .delivery_seconds
        .observe(["submission"], started.elapsed());
    match result {
        // Held: the client gets the usual reply; the hold is the
        // administrator's business (the sender may be a thief, who should
        // learn nothing).
        Ok((Some(q), _)) if hold.is_some() => Reply::new(
            codes::OK,
            status::OTHER,
            format!("OK id={id} queued as {q}"),
        ),
        Ok((None, _)) if hold.is_some() => {
            Reply::new(codes::OK, status::OTHER, format!("OK id={id}"))
        }
        Ok((Some(q), signed)) => {
            info!(id, queue_id = %q, dkim = signed, "submission accepted");
            Reply::new(
                codes::OK,
                status::OTHER,
                format!("OK id={id} queued as {q}"),
            )
        }
        Ok((None, signed)) => {
            info!(id, dkim = signed, "submission delivered");
            Reply::new(codes::OK, status::OTHER, format!("OK id={id}"))
        }
        Err(r) => r.reply,
    }
}
