//! The verdicts in force, one per device, as the gate reads them on every packet.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Instant;

use gatehouse_types::DeviceRef;
use parking_lot::{Mutex, RwLock};

use super::{AllowedTopic, TokenBucket, Verdict};

/// Shards of the table: a write (a new verdict) blocks the readers of one shard only.
const SHARDS: usize = 64;

/// One device's verdict in force, with the token buckets that enforce its rates.
#[derive(Debug)]
pub struct DeviceVerdict {
    verdict: Arc<Verdict>,
    /// One bucket per allowed publish pattern (by [`AllowedTopic::index`]), made on first use.
    buckets: Mutex<Vec<Option<TokenBucket>>>,
}

/// What [`DeviceVerdict::check_publish`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishCheck {
    /// Allowed, under the pattern at this index of [`Verdict::publish`].
    Allowed(usize),
    /// No allowed pattern matches, or a refused one does.
    Refused,
    /// Allowed, but over the pattern's rate: dropped.
    RateExceeded(usize),
}

// === impl DeviceVerdict ===

impl DeviceVerdict {
    /// A verdict with full buckets.
    pub fn new(verdict: Arc<Verdict>) -> Self {
        let buckets = vec![None; verdict.publish().len()];
        Self {
            verdict,
            buckets: Mutex::new(buckets),
        }
    }

    /// The verdict.
    pub fn verdict(&self) -> &Arc<Verdict> {
        &self.verdict
    }

    /// Checks a PUBLISH to `topic` at `now`: the verdict's (cached) decision, then the
    /// matched pattern's token bucket, which this takes a token from.
    pub fn check_publish(&self, topic: &str, now: Instant) -> PublishCheck {
        let Some(allowed) = self.verdict.may_publish(topic) else {
            return PublishCheck::Refused;
        };
        if allowed.rate_per_sec.is_none() {
            return PublishCheck::Allowed(allowed.index);
        }
        let mut buckets = self.buckets.lock();
        let Some(slot) = buckets.get_mut(allowed.index) else {
            return PublishCheck::Allowed(allowed.index);
        };
        let bucket = slot.get_or_insert_with(|| rate_bucket(allowed, now));
        if bucket.try_take(now) {
            PublishCheck::Allowed(allowed.index)
        } else {
            PublishCheck::RateExceeded(allowed.index)
        }
    }
}

fn rate_bucket(allowed: &AllowedTopic, now: Instant) -> TokenBucket {
    allowed
        .bucket(now)
        .unwrap_or_else(|| TokenBucket::new(f64::INFINITY, u32::MAX, now))
}

// === impl VerdictTable ===

type Shard = HashMap<Box<str>, Vec<(Box<str>, Arc<DeviceVerdict>)>>;

/// The verdicts in force, by device. Reads take a shared lock on one shard for a hash
/// lookup; a new verdict replaces the old one whole (its decision cache and buckets with
/// it), so a session sees either the old verdict or the new one, never a mix.
#[derive(Debug)]
pub struct VerdictTable {
    shards: Box<[RwLock<Shard>]>,
    hasher: RandomState,
}

impl Default for VerdictTable {
    fn default() -> Self {
        Self::new()
    }
}

impl VerdictTable {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, device: &str) -> &RwLock<Shard> {
        let i = (self.hasher.hash_one(device) as usize) % self.shards.len();
        &self.shards[i]
    }

    /// The verdict in force for a device of a tenant, if it has one.
    pub fn get(&self, tenant: &str, device: &str) -> Option<Arc<DeviceVerdict>> {
        let shard = self.shard(device).read();
        shard
            .get(device)?
            .iter()
            .find(|(t, _)| &**t == tenant)
            .map(|(_, v)| Arc::clone(v))
    }

    /// Puts `verdict` in force for its device (with fresh buckets) and returns the one it
    /// replaces. A verdict whose epoch is lower than the one in force is refused (a late
    /// compilation must not undo a newer one): then the one in force is returned as `Err`.
    pub fn install(
        &self,
        verdict: Arc<Verdict>,
    ) -> Result<Option<Arc<DeviceVerdict>>, Arc<DeviceVerdict>> {
        let d: &DeviceRef = verdict.device();
        let tenant = d.tenant.as_str();
        let device = d.device.as_str();
        let mut shard = self.shard(device).write();
        let tenants = shard.entry(device.into()).or_default();
        let entry = Arc::new(DeviceVerdict::new(Arc::clone(&verdict)));
        match tenants.iter_mut().find(|(t, _)| &**t == tenant) {
            Some((_, current)) if current.verdict.epoch() > verdict.epoch() => {
                Err(Arc::clone(current))
            }
            Some((_, current)) => Ok(Some(std::mem::replace(current, entry))),
            None => {
                tenants.push((tenant.into(), entry));
                Ok(None)
            }
        }
    }

    /// Removes a device's verdict (the device was deleted); returns it.
    pub fn remove(&self, d: &DeviceRef) -> Option<Arc<DeviceVerdict>> {
        let device = d.device.as_str();
        let mut shard = self.shard(device).write();
        let tenants = shard.get_mut(device)?;
        let i = tenants
            .iter()
            .position(|(t, _)| &**t == d.tenant.as_str())?;
        let (_, removed) = tenants.swap_remove(i);
        if tenants.is_empty() {
            shard.remove(device);
        }
        Some(removed)
    }

    /// Removes every verdict `drop` selects (say, the provisional verdicts of unregistered
    /// devices after a policy change, which the gate then compiles again on their next
    /// packet); returns how many.
    pub fn remove_where(&self, mut drop: impl FnMut(&Verdict) -> bool) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            shard.retain(|_, tenants| {
                let before = tenants.len();
                tenants.retain(|(_, v)| !drop(v.verdict()));
                removed += before - tenants.len();
                !tenants.is_empty()
            });
        }
        removed
    }

    /// How many devices have a verdict.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().values().map(Vec::len).sum::<usize>())
            .sum()
    }

    /// Whether no device has a verdict.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
