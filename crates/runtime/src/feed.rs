//! Following the change feed: one reader, in order, for the whole running loop.
//!
//! The registry writes a typed [`ChangeRecord`] beside the audit record of every change the
//! loop must act on (see `gatehouse_store::change`). A [`Follower`] reads the feed forward
//! from where it stopped and hands each batch, in order, to its [`ChangeHandler`]s — the
//! revocation sync, the trust service, the detection service — then lets each do what time
//! alone changes ([`ChangeHandler::tick`]).
//!
//! The feed is behind [`ChangeFeed`] so that where it comes from can change without the
//! handlers knowing: today the registry's own table ([`RegistryFeed`], in-process, the
//! embedded default); in cluster mode a stream whose sequence numbers play the same part.
//! Delivery is at least once: a handler applying a change it has already applied (its
//! own, made before the write returned) must change nothing.

use std::sync::Arc;

use gatehouse_store::{ChangeRecord, Registry};
use parking_lot::Mutex;
use tracing::warn;

/// Where changes are read from.
pub trait ChangeFeed: Send + Sync {
    /// The last change's sequence number, 0 when there is none.
    fn head(&self) -> Result<u64, FeedError>;
    /// Changes after `after`, in order, at most `limit`.
    fn read_after(&self, after: u64, limit: usize) -> Result<Vec<ChangeRecord>, FeedError>;
}

/// The feed could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading the change feed: {0}")]
pub struct FeedError(pub String);

/// The registry's own change table.
#[derive(Clone)]
pub struct RegistryFeed(pub Arc<dyn Registry>);

impl std::fmt::Debug for RegistryFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryFeed").finish_non_exhaustive()
    }
}

impl ChangeFeed for RegistryFeed {
    fn head(&self) -> Result<u64, FeedError> {
        self.0.change_head().map_err(|e| FeedError(e.to_string()))
    }

    fn read_after(&self, after: u64, limit: usize) -> Result<Vec<ChangeRecord>, FeedError> {
        self.0
            .changes_after(after, limit)
            .map_err(|e| FeedError(e.to_string()))
    }
}

/// A part of the loop that acts on changes.
pub trait ChangeHandler: Send + Sync {
    /// For logs.
    fn name(&self) -> &'static str;
    /// Acts on a batch of changes, in order.
    fn apply(&self, changes: &[ChangeRecord]) -> Result<(), String>;
    /// Acts on what time alone changes (expiries, decay, re-signing); called after every
    /// read of the feed, batch or not.
    fn tick(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Reads the feed forward and hands it to the handlers; see the module docs.
pub struct Follower {
    feed: Arc<dyn ChangeFeed>,
    handlers: Vec<Arc<dyn ChangeHandler>>,
    /// The last change handed to the handlers.
    position: Mutex<u64>,
    batch: usize,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("position", &*self.position.lock())
            .field(
                "handlers",
                &self.handlers.iter().map(|h| h.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Follower {
    /// Most changes read at once.
    pub const BATCH: usize = 1000;

    /// A follower that starts after the feed's current head: what was written before is
    /// in the state the services loaded when they started. Take it *before* they load, so
    /// that a change made while they do is applied (again) rather than lost.
    pub fn from_head(feed: Arc<dyn ChangeFeed>) -> Result<Self, FeedError> {
        let head = feed.head()?;
        Ok(Self {
            feed,
            handlers: Vec::new(),
            position: Mutex::new(head),
            batch: Self::BATCH,
        })
    }

    /// Adds a handler; handlers see each batch in the order they were added.
    pub fn with(mut self, handler: Arc<dyn ChangeHandler>) -> Self {
        self.handlers.push(handler);
        self
    }

    /// The last change handed to the handlers.
    pub fn position(&self) -> u64 {
        *self.position.lock()
    }

    /// Reads what is new (one batch), hands it to every handler, moves on, then ticks
    /// every handler. A handler's failure is logged and does not hold the others or the
    /// feed back: the change is not read twice. Returns how many changes were read.
    /// Blocking (the registry).
    pub fn step(&self) -> Result<usize, FeedError> {
        let mut position = self.position.lock();
        let changes = self.feed.read_after(*position, self.batch)?;
        if let Some(last) = changes.last() {
            for h in &self.handlers {
                if let Err(e) = h.apply(&changes) {
                    warn!(handler = h.name(), error = %e, "applying changes failed");
                }
            }
            *position = last.seq;
        }
        drop(position);
        for h in &self.handlers {
            if let Err(e) = h.tick() {
                warn!(handler = h.name(), error = %e, "timed work failed");
            }
        }
        Ok(changes.len())
    }
}

// === the loop's handlers ===

impl ChangeHandler for crate::TrustService {
    fn name(&self) -> &'static str {
        "trust"
    }

    fn apply(&self, changes: &[ChangeRecord]) -> Result<(), String> {
        self.apply_changes(changes).map_err(|e| e.to_string())
    }

    fn tick(&self) -> Result<(), String> {
        crate::TrustService::tick(self).map_err(|e| e.to_string())
    }
}

/// The detection service as a handler (its actions need the service's `Arc`).
#[derive(Debug, Clone)]
pub struct DetectionHandler(pub Arc<crate::DetectionService>);

impl ChangeHandler for DetectionHandler {
    fn name(&self) -> &'static str {
        "detection"
    }

    fn apply(&self, changes: &[ChangeRecord]) -> Result<(), String> {
        self.0.apply_changes(changes);
        Ok(())
    }

    fn tick(&self) -> Result<(), String> {
        self.0.tick().map_err(|e| e.to_string())
    }
}

/// The revocation sync as a handler, re-signing the CRLs when they are `resign_after` old.
#[derive(Debug, Clone)]
pub struct RevocationHandler {
    /// The sync.
    pub sync: Arc<crate::RevocationSync>,
    /// Age at which the CRLs are signed again.
    pub resign_after: std::time::Duration,
}

impl ChangeHandler for RevocationHandler {
    fn name(&self) -> &'static str {
        "revocation"
    }

    fn apply(&self, changes: &[ChangeRecord]) -> Result<(), String> {
        self.sync
            .apply_changes(changes)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn tick(&self) -> Result<(), String> {
        self.sync
            .resign_if_stale(self.resign_after)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_store::Change;

    /// A feed in memory.
    struct Memory(Mutex<Vec<ChangeRecord>>);

    impl ChangeFeed for Memory {
        fn head(&self) -> Result<u64, FeedError> {
            Ok(self.0.lock().last().map_or(0, |c| c.seq))
        }
        fn read_after(&self, after: u64, limit: usize) -> Result<Vec<ChangeRecord>, FeedError> {
            Ok(self
                .0
                .lock()
                .iter()
                .filter(|c| c.seq > after)
                .take(limit)
                .cloned()
                .collect())
        }
    }

    #[derive(Default)]
    struct Seen {
        applied: Mutex<Vec<u64>>,
        ticks: Mutex<usize>,
        fail: bool,
    }

    impl ChangeHandler for Seen {
        fn name(&self) -> &'static str {
            "seen"
        }
        fn apply(&self, changes: &[ChangeRecord]) -> Result<(), String> {
            self.applied.lock().extend(changes.iter().map(|c| c.seq));
            if self.fail { Err("no".into()) } else { Ok(()) }
        }
        fn tick(&self) -> Result<(), String> {
            *self.ticks.lock() += 1;
            Ok(())
        }
    }

    fn record(seq: u64) -> ChangeRecord {
        ChangeRecord {
            seq,
            audit_seq: seq * 10,
            at: 0,
            actor: "operator:test".into(),
            change: Change::PolicySet,
        }
    }

    #[test]
    fn follower_starts_at_the_head_and_hands_every_later_change_once_in_order() {
        let feed = Arc::new(Memory(Mutex::new(vec![record(1), record(2)])));
        let failing = Arc::new(Seen {
            fail: true,
            ..Seen::default()
        });
        let seen = Arc::new(Seen::default());
        let follower = Follower::from_head(feed.clone())
            .expect("head")
            .with(failing.clone())
            .with(seen.clone());
        assert_eq!(follower.position(), 2);
        assert_eq!(follower.step().expect("step"), 0);
        assert!(
            seen.applied.lock().is_empty(),
            "changes before the start are not replayed"
        );
        assert_eq!(*seen.ticks.lock(), 1, "a step with nothing new still ticks");
        feed.0.lock().extend([record(3), record(4), record(7)]);
        assert_eq!(follower.step().expect("step"), 3);
        assert_eq!(follower.step().expect("step"), 0);
        assert_eq!(*seen.applied.lock(), [3, 4, 7]);
        assert_eq!(
            *failing.applied.lock(),
            [3, 4, 7],
            "a failing handler is not handed the same changes again"
        );
        assert_eq!(follower.position(), 7);
    }

    #[test]
    fn follower_reads_in_batches() {
        let feed = Arc::new(Memory(Mutex::new(Vec::new())));
        let seen = Arc::new(Seen::default());
        let mut follower = Follower::from_head(feed.clone())
            .expect("head")
            .with(seen.clone());
        follower.batch = 2;
        feed.0.lock().extend((1..=5).map(record));
        let read: Vec<usize> = (0..4).map(|_| follower.step().expect("step")).collect();
        assert_eq!(read, [2, 2, 1, 0]);
        assert_eq!(*seen.applied.lock(), [1, 2, 3, 4, 5]);
    }
}
