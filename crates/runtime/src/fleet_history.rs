//! The fleet's recent history, for the dashboard: the broker's message counters and each
//! tenant's mean trust score, sampled at a fixed interval and kept in memory for a day.
//! Nothing here is durable: after a restart the trend starts again.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_store::Registry;
use gatehouse_types::TenantId;
use parking_lot::Mutex;
use tokio::sync::watch;

/// One sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Unix seconds.
    pub at: i64,
    /// PUBLISH packets received from clients so far.
    pub messages_in: u64,
    /// PUBLISH packets sent to clients so far.
    pub messages_out: u64,
    /// Per tenant: the sum of its assessed devices' scores and how many there are.
    pub scores: BTreeMap<TenantId, (u64, u64)>,
}

impl Sample {
    /// The mean score of `tenant`'s devices, or of every device for `None`.
    pub fn mean_score(&self, tenant: Option<&TenantId>) -> Option<f64> {
        let (sum, n) = match tenant {
            Some(t) => self.scores.get(t).copied().unwrap_or((0, 0)),
            None => self
                .scores
                .values()
                .fold((0, 0), |(s, n), (s2, n2)| (s + s2, n + n2)),
        };
        (n > 0).then(|| sum as f64 / n as f64)
    }
}

/// Samples, oldest first, at most a day's.
#[derive(Debug)]
pub struct FleetHistory {
    every: Duration,
    capacity: usize,
    samples: Mutex<VecDeque<Sample>>,
}

impl FleetHistory {
    /// A history sampled every `every`, keeping 24 hours.
    pub fn new(every: Duration) -> Self {
        let every = every.max(Duration::from_secs(1));
        let capacity = usize::try_from(86_400 / every.as_secs().max(1))
            .unwrap_or(86_400)
            .max(2);
        Self {
            every,
            capacity,
            samples: Mutex::new(VecDeque::with_capacity(capacity.min(8192))),
        }
    }

    /// The sampling interval.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// Adds a sample, dropping the oldest beyond a day.
    pub fn record(&self, s: Sample) {
        let mut q = self.samples.lock();
        if q.len() >= self.capacity {
            q.pop_front();
        }
        q.push_back(s);
    }

    /// Messages a second in and out between the last two samples.
    pub fn message_rate(&self) -> Option<(f64, f64)> {
        let q = self.samples.lock();
        let n = q.len();
        if n < 2 {
            return None;
        }
        let (a, b) = (&q[n - 2], &q[n - 1]);
        let dt = (b.at - a.at) as f64;
        (dt > 0.0).then(|| {
            (
                b.messages_in.saturating_sub(a.messages_in) as f64 / dt,
                b.messages_out.saturating_sub(a.messages_out) as f64 / dt,
            )
        })
    }

    /// The mean score over time of `tenant`'s devices (every device for `None`), oldest
    /// first: (unix seconds, mean score).
    pub fn score_trend(&self, tenant: Option<&TenantId>) -> Vec<(i64, f64)> {
        self.samples
            .lock()
            .iter()
            .filter_map(|s| s.mean_score(tenant).map(|m| (s.at, m)))
            .collect()
    }
}

/// Reads every device's stored assessment and sums the scores per tenant.
pub fn score_sums(registry: &dyn Registry) -> BTreeMap<TenantId, (u64, u64)> {
    let mut out: BTreeMap<TenantId, (u64, u64)> = BTreeMap::new();
    let Ok(all) = registry.list_device_trust(None) else {
        return out;
    };
    for t in all {
        if let Some(score) = t
            .assessment
            .as_ref()
            .and_then(|a| a.get("score"))
            .and_then(serde_json::Value::as_u64)
        {
            let e = out.entry(t.device.tenant.clone()).or_default();
            e.0 += score;
            e.1 += 1;
        }
    }
    out
}

/// Samples into `history` every interval until `stop` turns true: `counters` gives the
/// broker's (messages in, messages out) so far; scores come from the registry.
pub fn spawn_sampler(
    history: Arc<FleetHistory>,
    registry: Arc<dyn Registry>,
    counters: Arc<dyn Fn() -> (u64, u64) + Send + Sync>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(history.every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let registry = registry.clone();
            let scores = tokio::task::spawn_blocking(move || score_sums(&*registry))
                .await
                .unwrap_or_default();
            let (messages_in, messages_out) = counters();
            history.record(Sample {
                at: time::OffsetDateTime::now_utc().unix_timestamp(),
                messages_in,
                messages_out,
                scores,
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    fn sample(at: i64, msgs: u64, red: (u64, u64), blue: (u64, u64)) -> Sample {
        Sample {
            at,
            messages_in: msgs,
            messages_out: msgs * 2,
            scores: [(t("red"), red), (t("blue"), blue)].into_iter().collect(),
        }
    }

    #[test]
    fn rate_comes_from_the_last_two_samples() {
        let h = FleetHistory::new(Duration::from_secs(10));
        assert_eq!(h.message_rate(), None);
        h.record(sample(100, 1000, (0, 0), (0, 0)));
        h.record(sample(110, 1500, (0, 0), (0, 0)));
        assert_eq!(h.message_rate(), Some((50.0, 100.0)));
    }

    #[test]
    fn trend_is_per_tenant_or_fleet_wide() {
        let h = FleetHistory::new(Duration::from_secs(10));
        h.record(sample(100, 0, (180, 2), (50, 1)));
        h.record(sample(110, 0, (100, 2), (0, 0)));
        assert_eq!(
            h.score_trend(Some(&t("red"))),
            vec![(100, 90.0), (110, 50.0)]
        );
        assert_eq!(h.score_trend(Some(&t("blue"))), vec![(100, 50.0)]);
        assert_eq!(h.score_trend(None), vec![(100, 230.0 / 3.0), (110, 50.0)]);
    }

    #[test]
    fn keeps_a_day() {
        let h = FleetHistory::new(Duration::from_secs(3600));
        for i in 0..30 {
            h.record(sample(i * 3600, i as u64, (1, 1), (0, 0)));
        }
        let trend = h.score_trend(None);
        assert_eq!(trend.len(), 24);
        assert_eq!(trend[0].0, 6 * 3600);
    }
}
