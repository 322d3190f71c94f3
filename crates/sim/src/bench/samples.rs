//! Exact percentiles of a set of durations, for scenarios that keep every sample (an
//! enrollment's latency, a revocation's time to disconnect) rather than a histogram.

use std::time::Duration;

/// Every duration measured, in the order measured.
#[derive(Debug, Clone, Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    /// Adds one.
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    /// Adds every sample of `other`.
    pub fn append(&mut self, other: &mut Samples) {
        self.0.append(&mut other.0);
    }

    /// The samples sorted, for [`percentile`].
    pub fn sorted(mut self) -> Vec<Duration> {
        self.0.sort_unstable();
        self.0
    }
}

/// The nearest-rank percentile of `sorted` (ascending): the smallest sample with at least
/// `q` of all samples at or below it. `q` is a fraction (0.99 for p99); 0 gives the
/// smallest sample, 1 the largest. `None` when there are no samples.
pub fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = (q.clamp(0.0, 1.0) * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// Milliseconds, for figures.
pub fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(range: impl Iterator<Item = u64>) -> Vec<Duration> {
        range.map(Duration::from_millis).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let hundred = millis(1..=100);
        assert_eq!(percentile(&hundred, 0.50), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&hundred, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(
            percentile(&hundred, 0.999),
            Some(Duration::from_millis(100))
        );
        assert_eq!(percentile(&hundred, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&hundred, 0.0), Some(Duration::from_millis(1)));
        let twenty = millis(1..=20);
        assert_eq!(percentile(&twenty, 0.5), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&twenty, 0.99), Some(Duration::from_millis(20)));
        assert_eq!(
            percentile(&[Duration::from_millis(7)], 0.5),
            Some(Duration::from_millis(7))
        );
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn samples_sort_and_merge() {
        let mut a = Samples::default();
        a.push(Duration::from_millis(3));
        a.push(Duration::from_millis(1));
        let mut b = Samples::default();
        b.push(Duration::from_millis(2));
        a.append(&mut b);
        assert!(b.sorted().is_empty());
        assert_eq!(a.sorted(), millis(1..=3));
        assert_eq!(ms(Some(Duration::from_micros(1500))), Some(1.5));
        assert_eq!(ms(None), None);
    }
}
