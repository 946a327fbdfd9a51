//! A stop signal shared by the devices of a process: one trigger, any number of cheap clones.
//!
//! Dropping every [`ShutdownTrigger`] without triggering means "never stop".

use tokio::sync::watch;

/// Stops the devices that hold a [`Shutdown`] from the same pair.
#[derive(Debug, Clone)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// Tells a device or fleet when to stop. Clone it for each task.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// A new trigger and the signal it controls.
pub fn shutdown_pair() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    /// Asks every holder of the signal to stop. Idempotent.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Another signal controlled by this trigger.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown { rx: self.tx.subscribe() }
    }
}

impl Shutdown {
    /// A signal that never fires.
    pub fn never() -> Self {
        shutdown_pair().1
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes once the trigger fired (at once if it already has); never if every trigger was
    /// dropped without firing. Cancel-safe.
    pub async fn wait(&mut self) {
        loop {
            if *self.rx.borrow_and_update() {
                return;
            }
            if self.rx.changed().await.is_err() {
                // No trigger left: nobody can stop us any more.
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn fires_for_every_clone_and_never_without_trigger() {
        let (trigger, shutdown) = shutdown_pair();
        let mut a = shutdown.clone();
        let mut b = trigger.subscribe();
        assert!(!a.is_triggered());
        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(1), a.wait()).await.expect("a fires");
        tokio::time::timeout(Duration::from_secs(1), b.wait()).await.expect("b fires");
        assert!(shutdown.is_triggered());

        let mut never = Shutdown::never();
        assert!(tokio::time::timeout(Duration::from_millis(20), never.wait()).await.is_err());
    }
}
