//! A simulated network blip: every connection of the devices holding a [`Blip`] drops at once,
//! and each device redials at once (no back-off for that first redial).
//!
//! A real blip sends nothing: the gateway would find out only when its keepalives go unanswered.
//! Here the devices close their sockets without DISCONNECT or TLS close_notify (the gateway sees
//! the TCP connection end), so that the redial storm starts at one known moment. Connections
//! being set up when the blip fires are not affected. What it does not do: drop packets.

use tokio::sync::watch;

/// Fires the blip for every [`Blip`] subscribed to it.
#[derive(Debug, Clone)]
pub struct BlipTrigger {
    tx: watch::Sender<u64>,
}

/// What a device holds to learn of a blip. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Blip {
    rx: watch::Receiver<u64>,
}

/// A new trigger and the signal it controls.
pub fn blip_pair() -> (BlipTrigger, Blip) {
    let (tx, rx) = watch::channel(0);
    (BlipTrigger { tx }, Blip { rx })
}

impl BlipTrigger {
    /// Drops every connection that is up now.
    pub fn fire(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// How many blips fired so far.
    pub fn fired(&self) -> u64 {
        *self.tx.borrow()
    }
}

impl Blip {
    /// Forgets the blips before now: [`Blip::wait`] waits for the next one. A connection calls
    /// it when it starts.
    pub fn arm(&mut self) {
        self.rx.borrow_and_update();
    }

    /// Completes at the next blip since [`Blip::arm`]; never once every trigger is gone.
    /// Cancel-safe.
    pub async fn wait(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_blip_fires_once_for_each_armed_holder() {
        let (trigger, blip) = blip_pair();
        let mut a = blip.clone();
        a.arm();
        trigger.fire();
        let mut b = blip.clone();
        b.arm();
        tokio::time::timeout(Duration::from_secs(1), a.wait()).await.expect("a saw the blip");
        assert!(tokio::time::timeout(Duration::from_millis(20), b.wait()).await.is_err(), "armed after it");
        assert!(tokio::time::timeout(Duration::from_millis(20), a.wait()).await.is_err(), "only once");
        trigger.fire();
        tokio::time::timeout(Duration::from_secs(1), b.wait()).await.expect("b saw the second");
        assert_eq!(trigger.fired(), 2);
    }
}
