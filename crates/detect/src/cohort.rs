//! Cohort baselines: robust statistics (median and MAD) over per-device summaries of one
//! model's fleet. The median moves little while fewer than half the devices lie, and the
//! MAD ignores the liars' distance, so a minority of compromised devices can neither hide
//! among the honest ones nor make the honest ones look odd.
//!
//! Robust statistics have a weakness of their own: when most of a fleet reports the same
//! value, the MAD is zero and any difference at all is "infinitely" far. The spread is
//! therefore the largest of the MAD, the interquartile range (which survives a majority
//! of identical values on one side), a fraction of the median, and a floor the caller
//! derives from what the profile declares (a fraction of a field's range).

use crate::features::FIELD_SLOTS;

/// Metrics with a baseline: message rate, byte rate, payload size, field means.
pub(crate) const METRICS: usize = 3 + FIELD_SLOTS;
pub(crate) const M_RATE: usize = 0;
pub(crate) const M_BYTES: usize = 1;
pub(crate) const M_SIZE: usize = 2;
pub(crate) const M_FIELD: usize = 3;

/// MAD to standard deviation for normal data.
const MAD_TO_SD: f64 = 1.4826;
/// Interquartile range to standard deviation for normal data.
const IQR_TO_SD: f64 = 1.0 / 1.349;
/// The least spread any baseline claims, whatever the data.
const ABS_FLOOR: f64 = 1e-3;

/// The centre and spread of one metric over a cohort.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Robust {
    /// The median of the devices' values.
    pub median: f64,
    /// The spread: the largest of 1.4826 × MAD, IQR / 1.349 and the floors.
    pub scale: f64,
    /// Devices that went into it.
    pub devices: u32,
}

impl Robust {
    /// Computes the baseline of `values` (reordered in place); `None` with fewer than
    /// `min_devices` values. The spread is at least `min_relative` × |median| and
    /// `min_scale`.
    pub(crate) fn of(
        values: &mut [f64],
        min_devices: usize,
        min_relative: f64,
        min_scale: f64,
    ) -> Option<Self> {
        if values.len() < min_devices.max(1) {
            return None;
        }
        let median = median_of(values)?;
        let iqr = quantile_of(values, 0.75)? - quantile_of(values, 0.25)?;
        for v in values.iter_mut() {
            *v = (*v - median).abs();
        }
        let mad = median_of(values)?;
        let scale = (MAD_TO_SD * mad)
            .max(IQR_TO_SD * iqr)
            .max(min_relative * median.abs())
            .max(if min_scale.is_finite() {
                min_scale
            } else {
                0.0
            })
            .max(ABS_FLOOR);
        Some(Self {
            median,
            scale,
            devices: u32::try_from(values.len()).unwrap_or(u32::MAX),
        })
    }

    /// How many spreads `x` lies from the median.
    pub fn z(&self, x: f64) -> f64 {
        (x - self.median).abs() / self.scale
    }

    /// How many spreads `x` lies above the median (0 below it).
    pub fn z_above(&self, x: f64) -> f64 {
        (x - self.median).max(0.0) / self.scale
    }
}

fn median_of(values: &mut [f64]) -> Option<f64> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mid = n / 2;
    let (lower, m, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    let m = *m;
    if n % 2 == 1 {
        Some(m)
    } else {
        let below = lower.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some((below + m) / 2.0)
    }
}

/// The `q` quantile of `values` (nearest rank, reordering them).
fn quantile_of(values: &mut [f64], q: f64) -> Option<f64> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let k = ((q.clamp(0.0, 1.0) * (n - 1) as f64).round() as usize).min(n - 1);
    let (_, v, _) = values.select_nth_unstable_by(k, f64::total_cmp);
    Some(*v)
}

/// One model's baselines.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Baseline {
    /// Per metric: message rate (60 s), byte rate (60 s), payload size, then the field
    /// slots in profile order.
    pub metrics: [Option<Robust>; METRICS],
}

/// The name of a metric, for evidence.
pub(crate) fn metric_name(m: usize, slots: &[Box<str>]) -> &str {
    match m {
        M_RATE => "message_rate",
        M_BYTES => "byte_rate",
        M_SIZE => "payload_size",
        _ => slots.get(m - M_FIELD).map_or("field", |s| s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_mad_of_small_sets() {
        let mut v = vec![1.0, 2.0, 3.0, 4.0, 100.0];
        let r = Robust::of(&mut v, 3, 0.0, 0.0).expect("baseline");
        assert_eq!(r.median, 3.0);
        assert!((r.scale - MAD_TO_SD).abs() < 1e-9);
        let mut v = vec![1.0, 2.0, 3.0, 4.0];
        assert_eq!(Robust::of(&mut v, 3, 0.0, 0.0).map(|r| r.median), Some(2.5));
        assert!(Robust::of(&mut [1.0, 2.0], 3, 0.0, 0.0).is_none());
    }

    #[test]
    fn a_poisoned_minority_barely_moves_the_baseline() {
        // 80 honest devices near 20, 20 poisoned ones at 60.
        let mut v: Vec<f64> = (0..80)
            .map(|i| 20.0 + f64::from(i % 9) * 0.25 - 1.0)
            .collect();
        v.extend(std::iter::repeat_n(60.0, 20));
        let r = Robust::of(&mut v, 5, 0.0, 0.0).expect("baseline");
        assert!((r.median - 20.0).abs() < 1.0, "{r:?}");
        assert!(r.z(60.0) > 20.0, "{r:?}");
        assert!(r.z(21.0) < 3.0, "{r:?}");
    }

    #[test]
    fn a_fleet_reporting_one_value_keeps_a_spread() {
        // 30 of 40 devices report exactly 0.1: the MAD is zero. The range floor holds.
        let mut v: Vec<f64> = std::iter::repeat_n(0.1, 30).collect();
        v.extend((0..10).map(|i| 0.2 + f64::from(i) * 0.05));
        let r = Robust::of(&mut v.clone(), 5, 0.0, 0.0).expect("baseline");
        assert!(
            r.z(0.4) > 100.0,
            "without a floor the spread collapses: {r:?}"
        );
        let r = Robust::of(&mut v, 5, 0.0, 0.02 * 5000.0).expect("baseline");
        assert!(r.z(0.4) < 0.01, "{r:?}");
        // A majority of identical values on one side: the IQR still sees the rest.
        let mut v: Vec<f64> = std::iter::repeat_n(0.0, 55).collect();
        v.extend((0..45).map(f64::from));
        let r = Robust::of(&mut v, 5, 0.0, 0.0).expect("baseline");
        assert!(r.scale > 10.0, "{r:?}");
    }

    #[test]
    fn nan_free_even_with_extremes() {
        let mut v = vec![f64::MAX, -f64::MAX, 0.0, 1.0, 2.0];
        let r = Robust::of(&mut v, 3, 0.1, 0.0).expect("baseline");
        assert!(r.median.is_finite());
    }
}
