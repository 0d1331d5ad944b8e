//! Telling the sender: bounces for failed recipients and the one delay
//! warning per entry, as DSNs built by [`crate::dsn`]; then removal of a
//! finished entry.
//!
//! * Failed recipients are reported in one DSN, delivered through
//!   [`LocalMail`] when the sender's domain is ours, otherwise queued as a
//!   new entry with the null sender. A notice queued for a remote sender
//!   is DKIM-signed for the domain of its `From:` (`MAILER-DAEMON@<our
//!   host name>`) when a key exists for it.
//! * A message from the null sender is never bounced (logged and dropped).
//! * A bounce that cannot be sent is tried again later, for up to twice
//!   the queue lifetime; a delay warning is tried once.
//! * The entry is removed when every recipient is delivered or failed and
//!   reported.

use std::sync::Arc;

use postoffice_core::delivery::DeliveryError;
use postoffice_core::dkim::Signer;
use tracing::{error, info, warn};

use crate::dsn::{self, Dsn, DsnAction, DsnRecipient};
use crate::spool::{Rcpt, RcptState, unix_now};
use crate::{LocalMail, Queue, QueueError, QueueId, backoff, domain_of, spool_io};

/// What sending notices needs.
pub(crate) struct Notifier {
    /// Where notices to remote senders are queued.
    pub queue: Arc<Queue>,
    /// Our name: Reporting-MTA, MAILER-DAEMON's domain, the DKIM domain.
    pub hostname: String,
    /// Lifetimes and retry schedule.
    pub config: postoffice_config::Queue,
    /// Local senders' notices are delivered here.
    pub local: Arc<dyn LocalMail>,
    /// Signs notices to remote senders, when configured.
    pub signer: Option<Arc<Signer>>,
}

/// How a notice went out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NoticeSent {
    /// Into the local sender's maildrop.
    DeliveredLocally,
    /// Into the queue, for a remote sender.
    Queued(QueueId),
    /// Not sent: the sender is an SRS address of ours that no longer
    /// decodes (expired), so nobody could receive it.
    Dropped,
}

impl std::fmt::Display for NoticeSent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoticeSent::DeliveredLocally => f.write_str("delivered locally"),
            NoticeSent::Queued(id) => write!(f, "queued as {id}"),
            NoticeSent::Dropped => f.write_str("dropped (invalid or expired SRS address)"),
        }
    }
}

/// Why a notice did not go out.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NoticeError {
    /// Local delivery refused or failed.
    #[error("local delivery failed: {0}")]
    Local(#[from] DeliveryError),
    /// It could not be queued.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The blocking task died.
    #[error("notice task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

fn dsn_recipient(r: &Rcpt) -> DsnRecipient {
    DsnRecipient {
        address: r.address.clone(),
        status: r.status.clone(),
        remote_mta: r.remote_mta.clone(),
        diagnostic: r.diagnostic.clone(),
        reason: r.last_error.clone(),
        last_attempt: r.last_attempt,
    }
}

impl Notifier {
    /// `message` with a DKIM signature for our host name prepended, when
    /// there is a signer and a key.
    fn sign(&self, message: Vec<u8>) -> Vec<u8> {
        let Some(signer) = &self.signer else {
            return message;
        };
        match signer.sign(&self.hostname, &message) {
            Some(header) => {
                let mut signed = header.into_bytes();
                signed.extend_from_slice(&message);
                signed
            }
            None => message,
        }
    }

    /// Send `message` to the original sender: locally when the domain is
    /// ours, otherwise (signed) through the queue with the null sender.
    async fn send_notice(&self, to: &str, message: Vec<u8>) -> Result<NoticeSent, NoticeError> {
        // A bounce of forwarded mail goes back to the original sender.
        let Some(to) = self.local.notice_recipient(to) else {
            return Ok(NoticeSent::Dropped);
        };
        let to = to.as_str();
        let domain = domain_of(to);
        if self.local.is_local_domain(&domain) {
            let local = Arc::clone(&self.local);
            let to = to.to_string();
            let mut full = b"Return-Path: <>\r\n".to_vec();
            full.extend_from_slice(&message);
            tokio::task::spawn_blocking(move || local.deliver(&to, &full)).await??;
            Ok(NoticeSent::DeliveredLocally)
        } else {
            let message = self.sign(message);
            let queue = Arc::clone(&self.queue);
            let to = to.to_string();
            let id =
                tokio::task::spawn_blocking(move || queue.enqueue("", &[to], &mut &message[..]))
                    .await??;
            Ok(NoticeSent::Queued(id))
        }
    }

    /// Bounces, the delay warning, and removal of a finished entry.
    pub(crate) async fn notify_and_cleanup(&self, id: &str) -> Result<(), QueueError> {
        let id_owned = id.to_string();
        let Some(env) = spool_io(&self.queue, move |s| s.read_env(&id_owned)).await? else {
            return Ok(());
        };
        let now = unix_now();
        let qcfg = &self.config;
        let to_bounce: Vec<&Rcpt> = env
            .rcpts
            .iter()
            .filter(|r| r.state == RcptState::Failed && !r.notified && r.next_attempt <= now)
            .collect();
        let want_warning = qcfg.delay_warning_secs > 0
            && !env.delay_warned
            && !env.mail_from.is_empty()
            && now >= env.created_at.saturating_add(qcfg.delay_warning_secs)
            && env.rcpts.iter().any(|r| r.state == RcptState::Pending);
        let original = if (!to_bounce.is_empty() && !env.mail_from.is_empty()) || want_warning {
            let id_owned = id.to_string();
            // Only the header section goes into the notice.
            spool_io(&self.queue, move |s| {
                s.read_head(&id_owned, dsn::MAX_ORIGINAL_HEADERS + 2)
            })
            .await
            .unwrap_or_default()
        } else {
            Vec::new()
        };

        if !to_bounce.is_empty() {
            let addresses: Vec<String> = to_bounce.iter().map(|r| r.address.clone()).collect();
            let mut retry_at = None;
            if env.mail_from.is_empty() {
                for r in &to_bounce {
                    info!(id, to = %r.address, reason = %r.last_error,
                        "undeliverable message from the null sender: dropped, not bounced");
                }
            } else {
                let recipients: Vec<DsnRecipient> =
                    to_bounce.iter().copied().map(dsn_recipient).collect();
                let message = dsn::build(&Dsn {
                    hostname: &self.hostname,
                    queue_id: id,
                    to: &env.mail_from,
                    action: DsnAction::Failed,
                    arrival: env.created_at,
                    now,
                    retry_until: 0,
                    recipients: &recipients,
                    original: &original,
                });
                match self.send_notice(&env.mail_from, message).await {
                    Ok(how) => info!(id, to = %env.mail_from, nrcpt = recipients.len(), how = %how,
                        "bounce sent"),
                    Err(e) => {
                        // Give up on telling the sender after twice the
                        // queue lifetime.
                        let give_up = env
                            .created_at
                            .saturating_add(qcfg.max_age_secs.saturating_mul(2));
                        if now >= give_up {
                            error!(id, to = %env.mail_from, error = %e, "cannot deliver the bounce; giving up");
                        } else {
                            warn!(id, to = %env.mail_from, error = %e, "cannot deliver the bounce; will retry");
                            retry_at =
                                Some(now + backoff::retry_delay(&qcfg.retry_schedule_secs, 1));
                        }
                    }
                }
            }
            let id_owned = id.to_string();
            spool_io(&self.queue, move |s| {
                s.update_claimed(&id_owned, |env| {
                    for r in env
                        .rcpts
                        .iter_mut()
                        .filter(|r| addresses.contains(&r.address))
                    {
                        match retry_at {
                            Some(t) => r.next_attempt = t,
                            None => r.notified = true,
                        }
                    }
                })
            })
            .await?;
        }

        if want_warning {
            let pending: Vec<DsnRecipient> = env
                .rcpts
                .iter()
                .filter(|r| r.state == RcptState::Pending)
                .map(dsn_recipient)
                .collect();
            let message = dsn::build(&Dsn {
                hostname: &self.hostname,
                queue_id: id,
                to: &env.mail_from,
                action: DsnAction::Delayed,
                arrival: env.created_at,
                now,
                retry_until: backoff::expires_at(qcfg, env.created_at),
                recipients: &pending,
                original: &original,
            });
            // Sent once; a failure to send a mere warning is only logged.
            match self.send_notice(&env.mail_from, message).await {
                Ok(how) => info!(id, to = %env.mail_from, how = %how, "delay warning sent"),
                Err(e) => {
                    warn!(id, to = %env.mail_from, error = %e, "cannot deliver the delay warning")
                }
            }
            let id_owned = id.to_string();
            spool_io(&self.queue, move |s| {
                s.update_claimed(&id_owned, |env| env.delay_warned = true)
            })
            .await?;
        }

        let id_owned = id.to_string();
        if spool_io(&self.queue, move |s| s.remove_if_complete(&id_owned)).await? {
            info!(id, "removed (done)");
        }
        Ok(())
    }
}
