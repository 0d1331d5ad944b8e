//! Mail for local aliases with external targets: the one place it leaves
//! for the outbound queue.
//!
//! [`crate::addresses`] returns external targets only from aliases an
//! administrator stored (an address outside the local domains never
//! resolves by itself), so nothing here can relay mail for strangers.
//! [`forward_external`] hands the message to the queue with its envelope
//! sender unchanged; Sender Rewriting (SRS) for forwarded mail belongs here
//! when it comes, in this one function.

use postoffice_common::content::Pieces;
use tracing::{info, warn};

use crate::App;
use crate::delivery::DeliveryError;

/// Queue `message` for the external alias targets `targets` (from a
/// [`crate::addresses::Resolution`]), envelope sender `mail_from`.
/// Returns the queue ID (`None` when there was nothing to forward). Fails
/// temporarily without a queue, or when spooling fails.
pub fn forward_external(
    app: &App,
    mail_from: &str,
    targets: &[String],
    message: &Pieces<'_>,
) -> Result<Option<String>, DeliveryError> {
    if targets.is_empty() {
        return Ok(None);
    }
    let unavailable = || DeliveryError::ForwardUnavailable(targets.join(","));
    let Some(queue) = app.outbound() else {
        warn!(targets = %targets.join(","), "alias forwarding: no outbound queue");
        return Err(unavailable());
    };
    match queue.enqueue(mail_from, targets, message) {
        Ok(id) => {
            info!(from = %mail_from, targets = %targets.join(","), queue_id = %id, "forwarded to external alias targets");
            Ok(Some(id))
        }
        Err(e) => {
            warn!(error = %e, "alias forwarding: enqueue failed");
            Err(unavailable())
        }
    }
}

/// Deliver to the local mailboxes of `resolution` and forward to its
/// external targets, all or nothing: if forwarding fails, the local copies
/// are taken back (the sender retries, no duplicates).
pub fn deliver_and_forward(
    app: &App,
    mail_from: &str,
    resolution: &crate::addresses::Resolution,
    message: &Pieces<'_>,
    uid: Option<&str>,
) -> Result<Option<String>, DeliveryError> {
    let local = app.local();
    let delivered = if resolution.local.is_empty() {
        Vec::new()
    } else {
        local.deliver_resolved(resolution, message, uid)?
    };
    match forward_external(app, mail_from, &resolution.external, message) {
        Ok(id) => Ok(id),
        Err(e) => {
            local.undo_resolved(resolution, &delivered);
            Err(e)
        }
    }
}
