//! Per-device features: fixed-size, updated in place from observations, with time taken
//! from the observations themselves (milliseconds since the Unix epoch).

use std::net::IpAddr;

/// The rate windows, in seconds: 1 s, 10 s and 60 s.
pub const RATE_WINDOWS: [f64; 3] = [1.0, 10.0, 60.0];
/// Index of the 1 s window in [`Rates`].
pub const W1: usize = 0;
/// Index of the 10 s window in [`Rates`].
pub const W10: usize = 1;
/// Index of the 60 s window in [`Rates`].
pub const W60: usize = 2;
/// Payload fields of a model whose per-device mean is kept (the first ones of the profile).
pub const FIELD_SLOTS: usize = 8;

/// Weight of a new sample in the exponentially weighted payload-size moments.
const SIZE_ALPHA: f64 = 0.05;
/// Weight of a new reading in a field's exponentially weighted mean.
const FIELD_ALPHA: f32 = 0.1;

fn secs_between(from: u64, to: u64) -> f64 {
    // Milliseconds to seconds; out-of-order times count as no time passing.
    to.saturating_sub(from) as f64 / 1000.0
}

/// Message and byte rates over the [`RATE_WINDOWS`], as exponentially weighted moving
/// averages of events per second, as of `at`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    /// Time of the last update, ms since the Unix epoch.
    pub at: u64,
    /// Messages per second, per window.
    pub msgs: [f64; 3],
    /// Bytes per second, per window.
    pub bytes: [f64; 3],
}

impl Rates {
    /// Counts one message of `size` bytes at `now`.
    pub fn add(&mut self, now: u64, size: u32) {
        let dt = secs_between(self.at, now);
        let size = f64::from(size);
        for (i, tau) in RATE_WINDOWS.iter().enumerate() {
            let keep = (-dt / tau).exp();
            self.msgs[i] = self.msgs[i] * keep + 1.0 / tau;
            self.bytes[i] = self.bytes[i] * keep + size / tau;
        }
        self.at = self.at.max(now);
    }

    /// The message rate of window `w` as of `now` (decayed since the last update).
    pub fn msgs_at(&self, w: usize, now: u64) -> f64 {
        let tau = RATE_WINDOWS[w.min(2)];
        self.msgs[w.min(2)] * (-secs_between(self.at, now) / tau).exp()
    }

    /// The byte rate of window `w` as of `now`.
    pub fn bytes_at(&self, w: usize, now: u64) -> f64 {
        let tau = RATE_WINDOWS[w.min(2)];
        self.bytes[w.min(2)] * (-secs_between(self.at, now) / tau).exp()
    }
}

/// A count of events that decays exponentially with its window: about the number of
/// events in the last window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Decay {
    /// Time of the last update, ms since the Unix epoch.
    pub at: u64,
    /// The weighted count as of `at`.
    pub value: f32,
}

impl Decay {
    /// The count as of `now`, for a window of `window_secs`.
    pub fn get(&self, now: u64, window_secs: f64) -> f64 {
        let w = window_secs.max(1e-3);
        f64::from(self.value) * (-secs_between(self.at, now) / w).exp()
    }

    /// Adds `n` events at `now` and returns the new count.
    pub fn add(&mut self, now: u64, window_secs: f64, n: f64) -> f64 {
        let v = (self.get(now, window_secs) + n).clamp(0.0, 1e12);
        // Kept as f32: enough precision for a threshold, half the size.
        self.value = v as f32;
        self.at = self.at.max(now);
        v
    }
}

/// Mean and variance of a sample, exponentially weighted (Welford's update with a
/// constant weight), so old behaviour fades.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    /// Samples seen (saturating).
    pub n: u32,
    /// Weighted mean.
    pub mean: f32,
    /// Weighted variance.
    pub var: f32,
}

impl Moments {
    /// Adds a sample.
    pub fn add(&mut self, x: f64, alpha: f64) {
        if !x.is_finite() {
            return;
        }
        if self.n == 0 {
            self.mean = x.clamp(-f64::from(f32::MAX), f64::from(f32::MAX)) as f32;
            self.var = 0.0;
        } else {
            let mean = f64::from(self.mean);
            let diff = x - mean;
            let incr = alpha * diff;
            let var = (1.0 - alpha) * (f64::from(self.var) + diff * incr);
            let lim = f64::from(f32::MAX);
            self.mean = (mean + incr).clamp(-lim, lim) as f32;
            self.var = var.clamp(0.0, f64::from(f32::MAX)) as f32;
        }
        self.n = self.n.saturating_add(1);
    }

    /// The standard deviation.
    pub fn std(&self) -> f64 {
        f64::from(self.var).sqrt()
    }
}

/// Intervals between events: when the last one came and the moments of the gaps.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Intervals {
    /// Time of the last event, ms since the Unix epoch (0: none yet).
    pub last: u64,
    /// Moments of the gaps, in seconds.
    pub gaps: Moments,
}

impl Intervals {
    /// Records an event at `now`.
    pub fn add(&mut self, now: u64) {
        if self.last != 0 && now >= self.last {
            self.gaps.add(secs_between(self.last, now), 0.2);
        }
        self.last = self.last.max(now);
    }

    /// Forgets the gaps (the regularity was broken).
    pub fn reset(&mut self, now: u64) {
        self.gaps = Moments::default();
        self.last = now;
    }

    /// The gaps' coefficient of variation (standard deviation over mean).
    pub fn variation(&self) -> f64 {
        let mean = f64::from(self.gaps.mean);
        if mean > 0.0 {
            self.gaps.std() / mean
        } else {
            f64::INFINITY
        }
    }
}

/// A fixed-size Bloom filter of topic hashes (512 bits, two probes): the topics a device
/// has used, without an unbounded set. Once about a hundred topics are in, most new
/// topics read as known: a device that has sprayed that many is already a finding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicSketch(pub [u64; 8]);

impl TopicSketch {
    fn probes(hash: u64) -> [(usize, u64); 2] {
        let a = (hash & 511) as usize;
        let b = ((hash >> 32) & 511) as usize;
        [(a / 64, 1 << (a % 64)), (b / 64, 1 << (b % 64))]
    }

    /// Whether the topic hash may have been inserted (false positives possible).
    pub fn contains(&self, hash: u64) -> bool {
        Self::probes(hash)
            .iter()
            .all(|(w, bit)| self.0[*w] & bit != 0)
    }

    /// Inserts a topic hash; returns whether it was new.
    pub fn insert(&mut self, hash: u64) -> bool {
        let new = !self.contains(hash);
        for (w, bit) in Self::probes(hash) {
            self.0[w] |= bit;
        }
        new
    }

    /// Bits set (a measure of how many topics are in).
    pub fn fill(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }
}

/// Exponentially weighted mean of one payload field's readings.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FieldStat {
    /// Readings seen (saturating).
    pub n: u32,
    /// Weighted mean.
    pub mean: f32,
}

impl FieldStat {
    /// Adds a reading.
    pub fn add(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        // In f64, then clamped: readings at both ends of the f32 range must not overflow
        // the difference.
        let lim = f64::from(f32::MAX);
        let x = x.clamp(-lim, lim);
        let mean = if self.n == 0 {
            x
        } else {
            let m = f64::from(self.mean);
            m + f64::from(FIELD_ALPHA) * (x - m)
        };
        self.mean = mean.clamp(-lim, lim) as f32;
        self.n = self.n.saturating_add(1);
    }
}

/// What detection knows about one device: fixed size, no heap.
/// Laid out in order (`repr(C)`), what every publish touches first, so the hot path
/// reads few cache lines.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(C)]
pub struct Features {
    /// First observation, ms since the Unix epoch.
    pub first_seen: u64,
    /// Latest observation, ms since the Unix epoch.
    pub last_seen: u64,
    /// Publish message and byte rates.
    pub rates: Rates,
    /// Payload size moments.
    pub size: Moments,
    /// Publishes seen (saturating).
    pub publishes: u32,
    /// Payload readings outside the profile's ranges (saturating).
    pub out_of_range: u32,
    /// Publishes to topics outside the profile (saturating).
    pub out_of_profile: u32,
    /// Publishes and subscriptions the gate refused (saturating).
    pub refused: u32,
    /// Keep-alive of the last session, in seconds.
    pub keep_alive: u16,
    /// Whether the current session has published within the profile.
    pub session_active: bool,
    /// Means of the model's first [`FIELD_SLOTS`] payload fields.
    pub fields: [FieldStat; FIELD_SLOTS],
    /// Topics published to (a Bloom sketch of their hashes).
    pub topics: TopicSketch,
    /// Topics new to the device (per the sketch) seen (saturating).
    pub distinct_topics: u32,
    /// New out-of-profile topics and refused operations, over the scanning window.
    pub scan: Decay,
    /// Gaps between publishes to topics outside the profile.
    pub odd_publishes: Intervals,
    /// Sessions established (saturating).
    pub connects: u32,
    /// When the current (or last) session started, ms since the Unix epoch.
    pub session_at: u64,
    /// Source address of the current (or last) session.
    pub peer: Option<IpAddr>,
    /// Source address of the session before, when it was different.
    pub previous_peer: Option<IpAddr>,
    /// Sessions over the connect-flood window (connection churn).
    pub churn: Decay,
    /// Changes of source address over the cloned-identity window.
    pub address_switches: Decay,
    /// Gaps between sessions that published nothing within the profile.
    pub empty_sessions: Intervals,
    /// Sessions asking for no keep-alive or a very long one (saturating).
    pub long_keep_alives: u32,
    /// Sessions ended by a protocol error (saturating).
    pub protocol_errors: u32,
    /// Sessions ended by keep-alive timeout (saturating).
    pub keep_alive_timeouts: u32,
    /// Protocol-error disconnects over the malformed-packets window.
    pub recent_protocol_errors: Decay,
    /// Subscriptions to `#` (saturating).
    pub hash_subscriptions: u32,
    /// Subscriptions to `$SYS` (saturating).
    pub sys_subscriptions: u32,
    /// Subscriptions with broad wildcards outside the profile (saturating).
    pub broad_subscriptions: u32,
    /// Authentication failures naming this device (saturating).
    pub auth_failures: u32,
    /// Authentication failures naming this device, over the brute-force window.
    pub recent_auth_failures: Decay,
}

// === impl Features ===

impl Features {
    /// Counts a publish of `size` bytes at `now`.
    pub fn add_publish(&mut self, now: u64, size: u32) {
        self.rates.add(now, size);
        self.size.add(f64::from(size), SIZE_ALPHA);
        self.publishes = self.publishes.saturating_add(1);
    }

    /// Marks an observation at `now`.
    pub fn touch(&mut self, now: u64) {
        if self.first_seen == 0 {
            self.first_seen = now;
        }
        self.last_seen = self.last_seen.max(now);
    }

    /// Whether every floating-point feature is finite.
    pub fn is_finite(&self) -> bool {
        self.rates.msgs.iter().all(|v| v.is_finite())
            && self.rates.bytes.iter().all(|v| v.is_finite())
            && self.size.mean.is_finite()
            && self.size.var.is_finite()
            && [
                self.scan,
                self.recent_auth_failures,
                self.churn,
                self.recent_protocol_errors,
                self.address_switches,
            ]
            .iter()
            .all(|d| d.value.is_finite())
            && [self.empty_sessions, self.odd_publishes]
                .iter()
                .all(|i| i.gaps.mean.is_finite() && i.gaps.var.is_finite())
            && self.fields.iter().all(|f| f.mean.is_finite())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_fixed_and_small() {
        let size = std::mem::size_of::<Features>();
        assert!(size <= 512, "Features is {size} bytes");
    }

    #[test]
    fn rates_converge_to_the_true_rate() {
        let mut r = Rates::default();
        let mut t = 1_000_000;
        for _ in 0..600 {
            t += 500;
            r.add(t, 100);
        }
        // Two messages a second of 100 bytes.
        assert!((r.msgs_at(W60, t) - 2.0).abs() < 0.1, "{:?}", r);
        assert!((r.bytes_at(W10, t) - 200.0).abs() < 15.0, "{:?}", r);
        // Decays when nothing comes.
        assert!(r.msgs_at(W1, t + 10_000) < 0.01);
    }

    #[test]
    fn decay_counts_recent_events() {
        let mut d = Decay::default();
        for i in 0..10 {
            d.add(1000 + i * 100, 60.0, 1.0);
        }
        assert!((d.get(2000, 60.0) - 10.0).abs() < 0.5);
        assert!(d.get(2000 + 600_000, 60.0) < 0.01);
    }

    #[test]
    fn moments_track_mean_and_variance() {
        let mut m = Moments::default();
        for i in 0..2000 {
            m.add(if i % 2 == 0 { 90.0 } else { 110.0 }, 0.05);
        }
        assert!((f64::from(m.mean) - 100.0).abs() < 1.0);
        assert!((m.std() - 10.0).abs() < 1.0, "{}", m.std());
    }

    #[test]
    fn sketch_remembers_topics() {
        let mut s = TopicSketch::default();
        assert!(s.insert(0x1234_5678_9abc_def0));
        assert!(!s.insert(0x1234_5678_9abc_def0));
        assert!(s.contains(0x1234_5678_9abc_def0));
        assert!(!s.contains(0x0fed_cba9_8765_4321));
    }

    #[test]
    fn extreme_readings_keep_means_finite() {
        let mut f = FieldStat::default();
        let mut m = Moments::default();
        for i in 0..100 {
            let x = if i % 2 == 0 { 1e300 } else { -1e300 };
            f.add(x);
            m.add(x, 0.05);
            assert!(f.mean.is_finite() && m.mean.is_finite() && m.var.is_finite());
        }
    }

    #[test]
    fn periodic_intervals_have_low_variation() {
        let mut i = Intervals::default();
        for k in 1..20u64 {
            i.add(k * 60_000 + (k % 3) * 100);
        }
        assert!(i.variation() < 0.05, "{}", i.variation());
    }
}
