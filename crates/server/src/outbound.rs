//! The outbound queue beside the listeners: `postoffice-queue` wired to the
//! application (local delivery of bounces, the local-domain test, DKIM) and
//! to the server's shutdown.

use std::sync::Arc;

use postoffice_queue::{DeliveryConfig, Queue};

use crate::Shared;
use crate::shutdown::Shutdown;

/// Run the delivery scheduler until shutdown.
pub async fn run(shared: Arc<Shared>, queue: Arc<Queue>, mut shutdown: Shutdown) {
    let app = Arc::clone(&shared.app);
    let a1 = Arc::clone(&app);
    let local_domains: Arc<dyn Fn(&str) -> bool + Send + Sync> =
        Arc::new(move |d: &str| a1.local().is_local_domain(d));
    let a2 = Arc::clone(&app);
    let local: postoffice_queue::LocalDeliver = Arc::new(move |rcpt: &str, msg: &[u8]| {
        a2.local()
            .deliver(&[rcpt.to_string()], msg)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let cfg = DeliveryConfig {
        hostname: app.config.hostname.clone(),
        queue: app.config.queue.clone(),
        dns: app.config.dns.clone(),
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
