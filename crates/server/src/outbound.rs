//! The outbound queue beside the listeners: `postoffice-queue` wired to the
//! application (local delivery of bounces, the local-domain test, DKIM) and
//! to the server's shutdown.

use std::sync::Arc;

use postoffice_core::dkim::Signer;
use postoffice_queue::{DeliveryConfig, Queue};

use crate::Shared;
use crate::shutdown::Shutdown;

/// Run the delivery scheduler until shutdown.
pub async fn run(shared: Arc<Shared>, queue: Arc<Queue>, mut shutdown: Shutdown) {
    let app = Arc::clone(&shared.app);
    let config = &app.config;
    // Bounces and delay warnings to remote senders are signed like
    // submitted mail: when dkim.sign is on and the host name has a key.
    let signer = config.dkim.sign.then(|| Arc::new(Signer::clone(&app.dkim)));
    let cfg = DeliveryConfig {
        hostname: config.hostname.clone(),
        queue: config.queue.clone(),
        dns: config.dns.clone(),
        local: Arc::clone(&app) as Arc<dyn postoffice_queue::LocalMail>,
        signer,
        metrics: Some(Arc::clone(&app.metrics)),
    };
    postoffice_queue::run(queue, cfg, async move { shutdown.recv().await }).await;
}
