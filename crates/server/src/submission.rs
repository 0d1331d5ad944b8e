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

use crate::delivery::{DeliveryError, Local};
use crate::headers::{Trace, rfc5322_date, trace_headers};
use crate::state::Shared;

/// May `user` (authenticated) send as `address`?
pub fn sender_allowed(shared: &Shared, user: &str, address: &str) -> bool {
    if user.is_empty() || address.is_empty() {
        // The null sender is for bounces from MTAs, not for users.
        return false;
    }
    let address = address.to_ascii_lowercase();
    if address == user {
        return true;
    }
    let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    shared
        .config
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
    let header = parse_header(body);
    if let Some(bad) = header
        .from
        .iter()
        .find(|f| !sender_allowed(shared, &user, f))
    {
        warn!(%user, from = %sanitize(bad), "submission: From: address not owned");
        return format!(
            "553 5.7.1 From: address <{}> not owned by user {user}",
            sanitize(bad)
        );
    }
    let mut added = String::new();
    if header.from.is_empty() {
        added.push_str(&format!("From: <{}>\r\n", env.mail_from));
    }
    if !header.has_date {
        added.push_str(&format!("Date: {}\r\n", rfc5322_date(SystemTime::now())));
    }
    if !header.has_message_id {
        added.push_str(&format!(
            "Message-ID: <{id}@{}>\r\n",
            shared.config.hostname
        ));
    }
    let mut message = Vec::with_capacity(added.len() + body.len() + 1024);
    message.extend_from_slice(added.as_bytes());
    message.extend_from_slice(body);
    let sign_domain = header
        .from
        .first()
        .map(String::as_str)
        .unwrap_or(&env.mail_from)
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .unwrap_or_default();
    let signature = if shared.config.dkim.sign {
        shared.dkim.sign(&sign_domain, &message)
    } else {
        None
    };
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
    let mut out = Vec::with_capacity(received.len() + 512 + message.len());
    out.extend_from_slice(received.as_bytes());
    if let Some(sig) = &signature {
        out.extend_from_slice(sig.as_bytes());
    }
    out.extend_from_slice(&message);

    let local = Local {
        config: &shared.config,
        directory: &shared.directory,
        store: &shared.store,
    };
    let (local_rcpts, remote_rcpts): (Vec<String>, Vec<String>) =
        env.rcpt_to.iter().cloned().partition(|r| {
            let d = r.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            local.is_local_domain(d)
        });
    let outbound = shared.outbound.read().ok().and_then(|o| o.clone());
    let queued = if remote_rcpts.is_empty() {
        None
    } else {
        let Some(q) = outbound.clone() else {
            return "451 4.3.0 Outbound queue unavailable, try again later".into();
        };
        let (from, rcpts, msg) = (env.mail_from.clone(), remote_rcpts.clone(), out.clone());
        match tokio::task::spawn_blocking(move || q.enqueue(&from, &rcpts, &msg)).await {
            Ok(Ok(qid)) => Some(qid),
            Ok(Err(e)) => {
                warn!(error = %e, "enqueue failed");
                return "451 4.3.0 Temporary local problem, try again later".into();
            }
            Err(_) => return "451 4.3.0 Temporary local problem, try again later".into(),
        }
    };
    if !local_rcpts.is_empty() {
        // Local copies carry the Return-Path of final delivery.
        let mut local_msg = format!("Return-Path: <{}>\r\n", env.mail_from).into_bytes();
        local_msg.extend_from_slice(&out);
        let s = Arc::clone(shared);
        let rcpts = local_rcpts.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let local = Local {
                config: &s.config,
                directory: &s.directory,
                store: &s.store,
            };
            local.deliver(&rcpts, &local_msg).map(|_| ())
        })
        .await
        .unwrap_or_else(|e| Err(DeliveryError::Temporary(e.to_string())));
        if let Err(e) = stored {
            // All or nothing: take back the queued copy.
            if let (Some(q), Some(qid)) = (outbound, &queued) {
                q.cancel(qid);
            }
            warn!(error = %e, id, "submission: local delivery failed");
            return e.smtp_reply();
        }
    }
    info!(
        id,
        user = %user,
        from = %env.mail_from,
        local = %local_rcpts.join(","),
        remote = %remote_rcpts.join(","),
        queue_id = queued.as_deref().unwrap_or("-"),
        dkim = signature.is_some(),
        size = out.len(),
        "submission"
    );
    match queued {
        Some(q) => format!("250 2.0.0 OK id={id} queued as {q}"),
        None => format!("250 2.0.0 OK id={id}"),
    }
}
