//! Cohort baselines: robust statistics (median and MAD) over per-device summaries of one
//! model's fleet. The median moves little while fewer than half the devices lie, and the
//! MAD ignores the liars' distance, so a minority of compromised devices can neither hide
//! among the honest ones nor make the honest ones look odd.

use crate::features::FIELD_SLOTS;

/// Metrics with a baseline: message rate, byte rate, payload size, field means.
pub(crate) const METRICS: usize = 3 + FIELD_SLOTS;
pub(crate) const M_RATE: usize = 0;
pub(crate) const M_BYTES: usize = 1;
pub(crate) const M_SIZE: usize = 2;
pub(crate) const M_FIELD: usize = 3;

/// MAD to standard deviation for normal data.
const MAD_TO_SD: f64 = 1.4826;
/// The least spread any baseline claims, whatever the data.
const ABS_FLOOR: f64 = 1e-3;

/// The centre and spread of one metric over a cohort.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Robust {
    /// The median of the devices' values.
    pub median: f64,
    /// The spread: 1.4826 × MAD, floored.
    pub scale: f64,
    /// Devices that went into it.
    pub devices: u32,
}

impl Robust {
    /// Computes the baseline of `values` (reordered in place); `None` with fewer than
    /// `min_devices` values.
    pub(crate) fn of(values: &mut [f64], min_devices: usize, min_relative: f64) -> Option<Self> {
        if values.len() < min_devices.max(1) {
            return None;
        }
        let median = median_of(values)?;
        for v in values.iter_mut() {
            *v = (*v - median).abs();
        }
        let mad = median_of(values)?;
        let scale = (MAD_TO_SD * mad)
            .max(min_relative * median.abs())
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
        let r = Robust::of(&mut v, 3, 0.0).expect("baseline");
        assert_eq!(r.median, 3.0);
        assert!((r.scale - MAD_TO_SD).abs() < 1e-9);
        let mut v = vec![1.0, 2.0, 3.0, 4.0];
        assert_eq!(Robust::of(&mut v, 3, 0.0).map(|r| r.median), Some(2.5));
        assert!(Robust::of(&mut [1.0, 2.0], 3, 0.0).is_none());
    }

    #[test]
    fn a_poisoned_minority_barely_moves_the_baseline() {
        // 80 honest devices near 20, 20 poisoned ones at 60.
        let mut v: Vec<f64> = (0..80)
            .map(|i| 20.0 + f64::from(i % 9) * 0.25 - 1.0)
            .collect();
        v.extend(std::iter::repeat_n(60.0, 20));
        let r = Robust::of(&mut v, 5, 0.0).expect("baseline");
        assert!((r.median - 20.0).abs() < 1.0, "{r:?}");
        assert!(r.z(60.0) > 20.0, "{r:?}");
        assert!(r.z(21.0) < 3.0, "{r:?}");
    }

    #[test]
    fn nan_free_even_with_extremes() {
        let mut v = vec![f64::MAX, -f64::MAX, 0.0, 1.0, 2.0];
        let r = Robust::of(&mut v, 3, 0.1).expect("baseline");
        assert!(r.median.is_finite());
    }
}
