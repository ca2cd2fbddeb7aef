//! A cloneable shutdown signal.
//!
//! [`channel`] returns a [`ShutdownTrigger`] (kept by whoever decides to stop, e.g. `run`) and a
//! [`Shutdown`] that every long-lived task clones and selects on. Triggering is one-way and
//! idempotent; dropping the trigger counts as triggering, so a task can never wait forever on
//! a signal nobody can send.

use std::future::Future;

use tokio::sync::watch;

/// Fires the shutdown signal.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Observes the shutdown signal. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new, untriggered signal.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    /// Signals every [`Shutdown`]. Calling it again does nothing.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Drop for ShutdownTrigger {
    fn drop(&mut self) {
        self.trigger();
    }
}

impl Shutdown {
    /// Whether shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once shutdown has begun (at once if it already has). Owns its state, so it
    /// can be stored or moved into a task and used in `select!` repeatedly via a fresh call.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            // An error means the trigger was dropped, which also means shutdown.
            let _ = rx.wait_for(|triggered| *triggered).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_completes_after_trigger() {
        let (trigger, shutdown) = channel();
        let waiting = tokio::spawn(shutdown.clone().wait());
        assert!(!shutdown.is_triggered());
        trigger.trigger();
        waiting.await.unwrap();
        assert!(shutdown.is_triggered());
        // Already triggered: completes at once, and again.
        shutdown.wait().await;
        trigger.trigger();
        shutdown.wait().await;
    }

    #[tokio::test]
    async fn dropping_the_trigger_shuts_down() {
        let (trigger, shutdown) = channel();
        let waiting = tokio::spawn(shutdown.wait());
        drop(trigger);
        waiting.await.unwrap();
        assert!(shutdown.is_triggered());
    }
}
