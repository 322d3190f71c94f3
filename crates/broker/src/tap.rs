//! The tap: a non-blocking stream of observations for the detection stage.
//!
//! Each subscriber gets a bounded channel. The broker only ever `try_send`s: when a
//! subscriber is slow its channel fills, further observations for it are dropped and
//! counted, and the broker never waits.

use std::sync::Arc;

use gatehouse_types::Observation;
use parking_lot::RwLock;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

/// Fan-out of observations to bounded subscriber channels.
#[derive(Debug, Clone, Default)]
pub struct Tap {
    inner: Arc<TapInner>,
}

#[derive(Debug, Default)]
struct TapInner {
    subscribers: RwLock<Vec<mpsc::Sender<Observation>>>,
    emitted: Counter,
    dropped: Counter,
}

impl Tap {
    /// A new tap with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a subscriber whose channel holds at most `capacity` observations.
    pub fn subscribe(&self, capacity: usize) -> mpsc::Receiver<Observation> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.inner.subscribers.write().push(tx);
        rx
    }

    /// Whether anyone listens (lets callers skip building an observation).
    pub fn is_active(&self) -> bool {
        !self.inner.subscribers.read().is_empty()
    }

    /// Offers an observation to every subscriber without waiting.
    pub fn emit(&self, obs: Observation) {
        let subs = self.inner.subscribers.read();
        let Some((last, rest)) = subs.split_last() else {
            return;
        };
        let mut closed = false;
        for tx in rest {
            closed |= self.offer(tx, obs.clone());
        }
        closed |= self.offer(last, obs);
        drop(subs);
        if closed {
            self.inner.subscribers.write().retain(|tx| !tx.is_closed());
        }
    }

    /// Returns whether the subscriber has gone.
    fn offer(&self, tx: &mpsc::Sender<Observation>, obs: Observation) -> bool {
        match tx.try_send(obs) {
            Ok(()) => {
                self.inner.emitted.inc();
                false
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.inner.dropped.inc();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => true,
        }
    }

    /// Observations dropped because a subscriber was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.get()
    }

    pub(crate) fn counters(&self) -> (Counter, Counter) {
        (self.inner.emitted.clone(), self.inner.dropped.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use gatehouse_types::{DisconnectCause, Identity, IdentitySource};

    use super::*;

    fn obs() -> Observation {
        Observation::Disconnect {
            at: SystemTime::now(),
            session: 1,
            identity: Arc::new(Identity {
                tenant: "t".parse().unwrap(),
                device: "d".parse().unwrap(),
                source: IdentitySource::CertificateSanUri,
            }),
            cause: DisconnectCause::ClientDisconnect,
        }
    }

    #[test]
    fn slow_subscriber_drops_and_counts() {
        let tap = Tap::new();
        let mut rx = tap.subscribe(2);
        for _ in 0..5 {
            tap.emit(obs());
        }
        assert_eq!(tap.dropped(), 3);
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn closed_subscribers_are_forgotten() {
        let tap = Tap::new();
        let rx = tap.subscribe(2);
        let mut rx2 = tap.subscribe(2);
        drop(rx);
        tap.emit(obs());
        assert!(rx2.try_recv().is_ok());
        assert_eq!(tap.inner.subscribers.read().len(), 1);
    }
}
