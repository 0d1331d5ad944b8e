//! Graceful shutdown, after tokio's mini-redis: one broadcast of "stop" that
//! every listener and connection task watches.

use tokio::sync::watch;

/// The sending half, held by the server.
#[derive(Debug, Clone)]
pub struct Trigger(watch::Sender<bool>);

/// A receiver held by each task.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new stop signal and its first receiver.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Tell every receiver to stop.
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
    /// Another receiver.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// Resolves once shutdown has been requested (immediately if it was).
    pub async fn recv(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether stopping was requested.
    pub fn is_shutdown(&self) -> bool {
        *self.0.borrow()
    }
}
