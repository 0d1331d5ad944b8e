//! Where submitted mail for other domains goes: the outbound queue, seen
//! from the application through a trait so that the core does not depend on
//! the queue (the queue depends on the core, for local delivery of bounces
//! and for DKIM).

/// Why a message could not be queued.
#[derive(Debug, thiserror::Error)]
#[error("cannot queue the message: {0}")]
pub struct OutboundError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

/// The outbound queue.
pub trait Outbound: Send + Sync {
    /// Spool the message durably (fsynced) and return its queue ID.
    fn enqueue(
        &self,
        mail_from: &str,
        rcpts: &[String],
        message: &postoffice_common::content::Pieces<'_>,
    ) -> Result<String, OutboundError>;

    /// Spool the message like [`Outbound::enqueue`], but held: it is not
    /// sent until an administrator releases it (`postoffice queue
    /// release`). `reason` is shown with it.
    fn hold(
        &self,
        mail_from: &str,
        rcpts: &[String],
        message: &postoffice_common::content::Pieces<'_>,
        reason: &str,
    ) -> Result<String, OutboundError>;

    /// Take an entry back (a submission that failed after spooling).
    fn cancel(&self, id: &str);
}
