//! The outbound queue behind submission: `postoffice-queue` wired to the
//! server (local delivery of bounces, local-domain test, shutdown).

use std::sync::Arc;

use postoffice_queue::{DeliveryConfig, Queue};

use crate::delivery::Local;
use crate::shutdown::Shutdown;
use crate::state::{Outbound, Shared};

/// [`Outbound`] over the spool.
pub struct QueueOutbound(pub Arc<Queue>);

impl Outbound for QueueOutbound {
    fn enqueue(&self, mail_from: &str, rcpts: &[String], message: &[u8]) -> Result<String, String> {
        self.0
            .enqueue(mail_from, rcpts, message)
            .map(|id| id.to_string())
            .map_err(|e| e.to_string())
    }

    fn cancel(&self, id: &str) {
        if let Err(e) = self.0.delete(id) {
            tracing::warn!(id, error = %e, "could not take back a queued message");
        }
    }
}

/// Run the delivery scheduler until shutdown.
pub async fn run(shared: Arc<Shared>, queue: Arc<Queue>, mut shutdown: Shutdown) {
    let s1 = Arc::clone(&shared);
    let local_domains: Arc<dyn Fn(&str) -> bool + Send + Sync> = Arc::new(move |d: &str| {
        s1.directory
            .snapshot()
            .domain(&d.to_ascii_lowercase())
            .is_some()
    });
    let s2 = Arc::clone(&shared);
    let local: postoffice_queue::LocalDeliver = Arc::new(move |rcpt: &str, msg: &[u8]| {
        let local = Local {
            config: &s2.config,
            directory: &s2.directory,
            store: &s2.store,
        };
        local
            .deliver(&[rcpt.to_string()], msg)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let cfg = DeliveryConfig {
        hostname: shared.config.hostname.clone(),
        queue: shared.config.queue.clone(),
        dns: shared.config.dns.clone(),
        local_domains,
    };
    postoffice_queue::run(
        queue,
        cfg,
        local,
        None,
        async move { shutdown.recv().await },
    )
    .await;
}
