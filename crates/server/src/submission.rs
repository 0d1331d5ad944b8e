//! Mail submission (RFC 6409): what happens to a message an authenticated
//! user sends. The SMTP dialogue itself is the shared session in
//! `postoffice-smtp`; this module holds the submission policy:
//!
//! - a user may send only as their own address or configured aliases (MAIL
//!   FROM and every From: address; `553 5.7.1` otherwise);
//! - missing `Date` and `Message-ID` are added (RFC 6409 8.2, 8.3);
//! - the message is DKIM-signed when a key exists for the sender's domain;
//! - local recipients are delivered at once, others are spooled in the
//!   outbound queue; `250` only when every part is durable.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use postoffice_smtp::server::sanitize;
use postoffice_smtp::{Envelope, Verdict};
use tracing::{info, warn};

use crate::delivery::Local;
use crate::headers::{Trace, rfc5322_date, trace_headers};
use crate::state::Shared;

/// May `user` (authenticated) send as `address`?
pub fn sender_allowed(shared: &Shared, user: &str, address: &str) -> bool {
    sender_allowed_cfg(&shared.config, user, address)
}

fn sender_allowed_cfg(config: &postoffice_config::Config, user: &str, address: &str) -> bool {
    if user.is_empty() || address.is_empty() {
        // The null sender is for bounces from MTAs, not for users.
        return false;
    }
    let address = address.to_ascii_lowercase();
    if address == user {
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
pub fn recipient_verdict(shared: &Shared, address: &str) -> Verdict {
    let local = Local {
        config: &shared.config,
        directory: &shared.directory,
        store: &shared.store,
    };
    let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    if domain.is_empty() {
        return Verdict::Reject(format!(
            "501 5.1.3 <{}>: Bad recipient address syntax",
            sanitize(address)
        ));
    }
    if local.is_local_domain(domain) {
        return match local.check_recipient(address) {
            Ok(_) => Verdict::Accept,
            Err(e) => Verdict::Reject(e.smtp_reply()),
        };
    }
    if shared.outbound.read().map(|o| o.is_none()).unwrap_or(true) {
        return Verdict::Reject("451 4.3.0 Outbound queue unavailable, try again later".into());
    }
    Verdict::Accept
}

/// Header facts of a submitted message.
struct Header {
    from: Vec<String>,
    has_date: bool,
    has_message_id: bool,
}

fn parse_header(body: &[u8]) -> Header {
    let parsed = mail_parser::MessageParser::default().parse_headers(body);
    match parsed {
        Some(m) => Header {
            from: m
                .from()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.address().map(|s| s.to_ascii_lowercase()))
                        .collect()
                })
                .unwrap_or_default(),
            has_date: m.date().is_some(),
            has_message_id: m.message_id().is_some(),
        },
        None => Header {
            from: Vec::new(),
            has_date: false,
            has_message_id: false,
        },
    }
}

/// What submission needs, so `postoffice sendmail` can use it without a
/// running server.
pub struct Context<'a> {
    pub config: &'a postoffice_config::Config,
    pub directory: &'a postoffice_directory::Directory,
    pub store: &'a postoffice_store::Maildir,
    pub dkim: &'a crate::dkim::Signer,
    pub outbound: Option<Arc<dyn crate::state::Outbound>>,
}

/// Why a submission was refused: the SMTP reply and the sysexits code.
#[derive(Debug)]
pub struct Refusal {
    pub reply: String,
    pub exit_code: u8,
}

impl Refusal {
    fn new(reply: impl Into<String>, exit_code: u8) -> Self {
        Refusal {
            reply: reply.into(),
            exit_code,
        }
    }
}

/// Complete a message (From/Date/Message-ID when missing), check that its
/// From: addresses belong to `user` (when given), and DKIM-sign it.
/// `trace` is prepended above the signature (a `Received:` line or "").
pub fn prepare(
    ctx: &Context<'_>,
    user: Option<&str>,
    mail_from: &str,
    id: &str,
    trace: &str,
    body: &[u8],
) -> Result<(Vec<u8>, bool), Refusal> {
    let header = parse_header(body);
    if let Some(user) = user
        && let Some(bad) = header
            .from
            .iter()
            .find(|f| !sender_allowed_cfg(ctx.config, user, f))
    {
        warn!(%user, from = %sanitize(bad), "submission: From: address not owned");
        return Err(Refusal::new(
            format!(
                "553 5.7.1 From: address <{}> not owned by user {user}",
                sanitize(bad)
            ),
            77,
        ));
    }
    let mut added = String::new();
    if header.from.is_empty() {
        added.push_str(&format!("From: <{mail_from}>\r\n"));
    }
    if !header.has_date {
        added.push_str(&format!("Date: {}\r\n", rfc5322_date(SystemTime::now())));
    }
    if !header.has_message_id {
        added.push_str(&format!("Message-ID: <{id}@{}>\r\n", ctx.config.hostname));
    }
    let mut message = Vec::with_capacity(added.len() + body.len() + 1024);
    message.extend_from_slice(added.as_bytes());
    message.extend_from_slice(body);
    let sign_domain = header
        .from
        .first()
        .map(String::as_str)
        .unwrap_or(mail_from)
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .unwrap_or_default();
    let signature = if ctx.config.dkim.sign {
        ctx.dkim.sign(&sign_domain, &message)
    } else {
        None
    };
    let mut out = Vec::with_capacity(trace.len() + 512 + message.len());
    out.extend_from_slice(trace.as_bytes());
    if let Some(sig) = &signature {
        out.extend_from_slice(sig.as_bytes());
    }
    out.extend_from_slice(&message);
    Ok((out, signature.is_some()))
}

/// Deliver to local recipients and spool the rest, all or nothing.
/// Returns the queue ID when something was queued.
pub fn store(
    ctx: &Context<'_>,
    mail_from: &str,
    rcpts: &[String],
    message: &[u8],
) -> Result<Option<String>, Refusal> {
    let local = Local {
        config: ctx.config,
        directory: ctx.directory,
        store: ctx.store,
    };
    let (local_rcpts, remote_rcpts): (Vec<String>, Vec<String>) =
        rcpts.iter().cloned().partition(|r| {
            let d = r.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            local.is_local_domain(d)
        });
    if !remote_rcpts.is_empty() && ctx.outbound.is_none() {
        return Err(Refusal::new(
            "451 4.3.0 Outbound queue unavailable, try again later",
            75,
        ));
    }
    // Local copies first (they can be taken back), then the queue: once
    // spooled, the scheduler may start sending at once.
    let mut delivered = Vec::new();
    if !local_rcpts.is_empty() {
        // Local copies carry the Return-Path of final delivery.
        let mut local_msg = format!("Return-Path: <{mail_from}>\r\n").into_bytes();
        local_msg.extend_from_slice(message);
        delivered = local
            .deliver(&local_rcpts, &local_msg)
            .map_err(|e| Refusal::new(e.smtp_reply(), e.exit_code()))?;
    }
    let queued = match (&ctx.outbound, remote_rcpts.is_empty()) {
        (Some(q), false) => match q.enqueue(mail_from, &remote_rcpts, message) {
            Ok(id) => Some(id),
            Err(e) => {
                warn!(error = %e, "enqueue failed; taking back the local copies");
                local.undo(&local_rcpts, &delivered);
                return Err(Refusal::new(
                    "451 4.3.0 Temporary local problem, try again later",
                    75,
                ));
            }
        },
        _ => None,
    };
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

/// Verify, complete, sign and store a submitted message; returns the reply.
pub async fn submit(
    shared: &Arc<Shared>,
    ip: IpAddr,
    tls: Option<&str>,
    env: &Envelope,
    id: &str,
    body: &[u8],
) -> String {
    let user = env.authenticated.clone().unwrap_or_default();
    let trace = trace_headers(&Trace {
        helo: &env.helo,
        ip,
        hostname: &shared.config.hostname,
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
    let shared2 = Arc::clone(shared);
    let (env2, id2, body2) = (env.clone(), id.to_string(), body.to_vec());
    let result = tokio::task::spawn_blocking(move || {
        let outbound = shared2.outbound.read().ok().and_then(|o| o.clone());
        let ctx = Context {
            config: &shared2.config,
            directory: &shared2.directory,
            store: &shared2.store,
            dkim: &shared2.dkim,
            outbound,
        };
        let (message, signed) =
            prepare(&ctx, Some(&user), &env2.mail_from, &id2, &received, &body2)?;
        let queued = store(&ctx, &env2.mail_from, &env2.rcpt_to, &message)?;
        Ok::<_, Refusal>((queued, signed))
    })
    .await;
    if matches!(result, Ok(Ok(_))) {
        crate::metrics::inc(&shared.counters.submission_accepted);
    }
    match result {
        Ok(Ok((Some(q), signed))) => {
            info!(id, queue_id = %q, dkim = signed, "submission accepted");
            format!("250 2.0.0 OK id={id} queued as {q}")
        }
        Ok(Ok((None, signed))) => {
            info!(id, dkim = signed, "submission delivered");
            format!("250 2.0.0 OK id={id}")
        }
        Ok(Err(r)) => r.reply,
        Err(e) => {
            warn!(error = %e, id, "submission task failed");
            "451 4.3.0 Temporary local problem, try again later".into()
        }
    }
}
