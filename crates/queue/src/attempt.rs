//! One delivery attempt: the due recipients of one entry in one domain, to
//! the destination their [`Route`] names (a relay or the MX hosts), one
//! SMTP transaction per host tried until a host decides; and [`apply`],
//! which writes the results into the envelope.
//!
//! * Credentials go only over verified TLS, and so does mail for a domain
//!   in `require_tls_domains`; everything else uses opportunistic TLS and,
//!   when the handshake itself fails, tries again in plaintext.
//! * A recipient's result is what the last host tried said about it.
//! * Delivered: done; 5xx: failed; 4xx or no connection: retried after the
//!   next step of `retry_schedule_secs` ([`crate::backoff`]), until
//!   `max_age_secs`, then failed.
//! * What the remote said is recorded as one line of printable ASCII of at
//!   most [`MAX_REMOTE_TEXT`] characters: a reply may be 256 lines of 4 KiB
//!   with terminal escapes in them, and it ends up in the envelope, on the
//!   terminal of `postoffice queue`, and in the DSN.

use std::time::Duration;

use hickory_resolver::TokioResolver;
use postoffice_smtp::EnhancedCode;
use postoffice_smtp::client::{RcptResult, Status, TlsPolicy};
use tracing::info;

use crate::backoff;
use crate::route::{self, Target};
use crate::routing::Route;
use crate::spool::{RcptState, SpoolEnvelope};
use crate::transport::{self, Attempt, OutMessage, TlsClients};
use crate::{MAX_REMOTE_TEXT, one_line};

/// What it takes to reach remote servers.
#[derive(Debug)]
pub(crate) struct Remote {
    /// Our name: the EHLO argument.
    pub hostname: String,
    /// Ports, timeouts, TLS requirements.
    pub queue: postoffice_config::Queue,
    /// `None` when none could be built: MX and relay-name lookups fail
    /// temporarily.
    pub resolver: Option<TokioResolver>,
    /// `None` when the trust anchors could not be loaded: no TLS.
    pub tls: Option<TlsClients>,
    /// How long one DNS lookup may take, retries included.
    pub dns_timeout: Duration,
}

/// The outcome of one recipient in one attempt.
#[derive(Debug, Clone)]
pub(crate) struct RcptOutcome {
    /// The recipient.
    pub address: String,
    /// What happened.
    pub result: RcptResult,
    /// The host whose reply decided it, "" when no server answered.
    pub remote_mta: String,
}

impl RcptOutcome {
    /// Every recipient with the same local failure (no server answered).
    pub(crate) fn all_local(
        rcpts: &[String],
        status: Status,
        enhanced: EnhancedCode,
        reason: &str,
    ) -> Vec<RcptOutcome> {
        rcpts
            .iter()
            .map(|a| RcptOutcome {
                address: a.clone(),
                result: RcptResult {
                    status,
                    reply: None,
                    reason: reason.to_string(),
                    enhanced,
                },
                remote_mta: String::new(),
            })
            .collect()
    }
}

/// What an attempt did with a recipient, as logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Accepted by the remote server.
    Sent,
    /// To be tried again.
    Deferred,
    /// Failed for good.
    Bounced,
}

impl From<Status> for Disposition {
    fn from(status: Status) -> Disposition {
        match status {
            Status::Delivered => Disposition::Sent,
            Status::Temporary => Disposition::Deferred,
            Status::Permanent => Disposition::Bounced,
        }
    }
}

impl std::fmt::Display for Disposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Disposition::Sent => "sent",
            Disposition::Deferred => "deferred",
            Disposition::Bounced => "bounced",
        })
    }
}

/// A seed for the order of equal-preference MX hosts.
fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64 ^ d.as_secs())
}

/// Deliver `message` from `mail_from` to `rcpts` (all in `domain`) along
/// `route`: one outcome per recipient, in order.
pub(crate) async fn deliver(
    remote: &Remote,
    id: &str,
    domain: &str,
    route: &Route,
    mail_from: &str,
    rcpts: &[String],
    message: &OutMessage,
) -> Vec<RcptOutcome> {
    let qcfg = &remote.queue;
    let require_tls = qcfg
        .require_tls_domains
        .iter()
        .any(|d| d.trim_end_matches('.').eq_ignore_ascii_case(domain));
    let (targets, credentials) = match route {
        Route::Relay { relay, credentials } => (
            route::relay_targets(remote.resolver.as_ref(), relay, remote.dns_timeout).await,
            credentials
                .as_ref()
                .map(|c| (c.user.clone(), c.password.clone())),
        ),
        Route::Mx => (
            route::mx_targets(
                remote.resolver.as_ref(),
                domain,
                qcfg.remote_port,
                seed(),
                remote.dns_timeout,
            )
            .await,
            None,
        ),
    };
    let targets: Vec<Target> = match targets {
        Ok(t) => t,
        Err(e) => {
            let status = if e.permanent {
                Status::Permanent
            } else {
                Status::Temporary
            };
            for r in rcpts {
                info!(id, to = %r, status = %Disposition::from(status),
                    reason = %one_line(&e.reason, MAX_REMOTE_TEXT), "delivery");
            }
            return RcptOutcome::all_local(rcpts, status, e.status, &e.reason);
        }
    };
    // Credentials go only over verified TLS.
    let tls_mode = if require_tls || credentials.is_some() {
        TlsPolicy::Required
    } else {
        TlsPolicy::Opportunistic
    };
    let mut last = None;
    for target in &targets {
        let mut attempt = Attempt {
            host: &target.host,
            addr: target.addr,
            helo_name: &remote.hostname,
            tls_mode,
            credentials: credentials.clone(),
            mail_from,
            rcpts,
            message,
            tls: remote.tls.as_ref(),
            connect_timeout: Duration::from_secs(qcfg.connect_timeout_secs.max(1)),
            command_timeout: Duration::from_secs(qcfg.command_timeout_secs.max(1)),
        };
        let mut outcome = transport::deliver(&attempt).await;
        if outcome.tls_failed && tls_mode == TlsPolicy::Opportunistic {
            let reason = outcome.rcpts.first().map_or("", |r| r.reason.as_str());
            info!(id, host = %target.host, reason = %one_line(reason, MAX_REMOTE_TEXT),
                "TLS handshake failed; trying again without TLS");
            attempt.tls_mode = TlsPolicy::Off;
            outcome = transport::deliver(&attempt).await;
        }
        let relay = format!(
            "{}[{}]:{}",
            target.host,
            target.addr.ip(),
            target.addr.port()
        );
        for (addr, r) in rcpts.iter().zip(&outcome.rcpts) {
            info!(id, to = %addr, relay = %relay, tls = outcome.tls,
                status = %Disposition::from(r.status),
                reason = %one_line(&r.reason, MAX_REMOTE_TEXT), "delivery");
        }
        let done = !outcome.try_next_host;
        last = Some((outcome, target.host.clone()));
        if done {
            break;
        }
    }
    let Some((outcome, host)) = last else {
        return RcptOutcome::all_local(
            rcpts,
            Status::Temporary,
            EnhancedCode(4, 4, 3),
            "no destination address",
        );
    };
    rcpts
        .iter()
        .zip(outcome.rcpts)
        .map(|(a, result)| RcptOutcome {
            address: a.clone(),
            remote_mta: if result.reply.is_some() {
                host.clone()
            } else {
                String::new()
            },
            result,
        })
        .collect()
}

/// Write one attempt's results into the envelope at `now`: attempts, the
/// last error, status and remote reply, and the recipient's new state and
/// next attempt.
pub(crate) fn apply(
    env: &mut SpoolEnvelope,
    results: &[RcptOutcome],
    cfg: &postoffice_config::Queue,
    now: u64,
) {
    let created = env.created_at;
    for out in results {
        let Some(r) = env
            .rcpts
            .iter_mut()
            .find(|r| r.address == out.address && r.state == RcptState::Pending)
        else {
            continue;
        };
        r.attempts = r.attempts.saturating_add(1);
        r.last_attempt = now;
        // What a remote server said is untrusted: one bounded printable
        // line, whatever it sent (it is shown by `postoffice queue` and
        // goes into DSNs).
        r.last_error = one_line(&out.result.reason, MAX_REMOTE_TEXT);
        r.status = one_line(&out.result.enhanced.to_string(), MAX_REMOTE_TEXT);
        r.remote_mta = one_line(&out.remote_mta, MAX_REMOTE_TEXT);
        r.diagnostic = out
            .result
            .reply
            .as_ref()
            .map(|rep| one_line(&rep.one_line(), MAX_REMOTE_TEXT))
            .unwrap_or_default();
        match out.result.status {
            Status::Delivered => {
                r.state = RcptState::Delivered;
                r.last_error = String::new();
            }
            Status::Permanent => {
                r.state = RcptState::Failed;
                r.next_attempt = now;
            }
            Status::Temporary => match backoff::next_attempt(cfg, created, r.attempts, now) {
                Some(t) => r.next_attempt = t,
                None => {
                    r.state = RcptState::Failed;
                    r.next_attempt = now;
                    r.last_error = one_line(
                        &format!("delivery time expired; last error: {}", r.last_error),
                        MAX_REMOTE_TEXT,
                    );
                    info!(id = %env.id, to = %r.address, "giving up: delivery time expired");
                }
            },
        }
    }
}
