//! Detection configuration: every threshold and every rule's `enabled` flag, with defaults
//! that are safe and work out of the box.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a [`DetectConfig`] was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A number that must be positive and finite is not.
    #[error("{field} must be a positive, finite number (got {value})")]
    NotPositive {
        /// The key, as a path (`publish_flood.profile_factor`).
        field: &'static str,
        /// The refused value.
        value: f64,
    },
    /// A duration that must be longer than zero is zero.
    #[error("{field} must be longer than zero")]
    ZeroDuration {
        /// The key, as a path (`cooldown`).
        field: &'static str,
    },
    /// A count or capacity is outside what the engine allows.
    #[error("{field} is {value}; it must lie between {min} and {max}")]
    OutOfBounds {
        /// The key, as a path (`max_sources`).
        field: &'static str,
        /// The refused value.
        value: u64,
        /// The least allowed.
        min: u64,
        /// The greatest allowed.
        max: u64,
    },
    /// A fraction that must lie in 0..=1 does not.
    #[error("{field} must lie between 0 and 1 (got {value})")]
    NotFraction {
        /// The key, as a path.
        field: &'static str,
        /// The refused value.
        value: f64,
    },
}

/// The detection stage's configuration (`[detect]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// How long the same finding (same subject, same rule) stays quiet after it fired,
    /// unless it comes back more severe.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// Most source addresses with state at once; the least recently seen is evicted.
    pub max_sources: usize,
    /// Most devices with state at once; the least recently seen is evicted.
    pub max_devices: usize,
    /// Cohort baselines.
    pub cohort: CohortConfig,
    /// Rule `credential_brute_force`.
    pub credential_brute_force: BruteForceConfig,
    /// Rule `connect_flood`.
    pub connect_flood: ConnectFloodConfig,
    /// Rule `publish_flood`.
    pub publish_flood: PublishFloodConfig,
    /// Rule `slow_connection_dos`.
    pub slow_connection_dos: SlowConnectionConfig,
    /// Rule `malformed_packets`.
    pub malformed_packets: MalformedConfig,
    /// Rule `topic_scanning`.
    pub topic_scanning: TopicScanningConfig,
    /// Rule `wildcard_harvesting`.
    pub wildcard_harvesting: WildcardConfig,
    /// Rule `retained_poisoning`.
    pub retained_poisoning: Toggle,
    /// Rule `command_injection`.
    pub command_injection: Toggle,
    /// Rule `exfiltration_broad_subscribe`.
    pub exfiltration_broad_subscribe: Toggle,
    /// Rule `beaconing`.
    pub beaconing: BeaconingConfig,
    /// Rule `cloned_identity`.
    pub cloned_identity: ClonedIdentityConfig,
    /// Rule `out_of_range_reading`.
    pub out_of_range_reading: Toggle,
    /// Rule `reading_jump`.
    pub reading_jump: ReadingJumpConfig,
    /// Rule `stuck_reading`.
    pub stuck_reading: Toggle,
    /// Detector `cohort_deviation`.
    pub cohort_deviation: CohortDeviationConfig,
    /// Detector `burst`.
    pub burst: BurstConfig,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            cooldown: Duration::from_secs(300),
            max_sources: 65_536,
            max_devices: 262_144,
            cohort: CohortConfig::default(),
            credential_brute_force: BruteForceConfig::default(),
            connect_flood: ConnectFloodConfig::default(),
            publish_flood: PublishFloodConfig::default(),
            slow_connection_dos: SlowConnectionConfig::default(),
            malformed_packets: MalformedConfig::default(),
            topic_scanning: TopicScanningConfig::default(),
            wildcard_harvesting: WildcardConfig::default(),
            retained_poisoning: Toggle::default(),
            command_injection: Toggle::default(),
            exfiltration_broad_subscribe: Toggle::default(),
            beaconing: BeaconingConfig::default(),
            cloned_identity: ClonedIdentityConfig::default(),
            out_of_range_reading: Toggle::default(),
            reading_jump: ReadingJumpConfig::default(),
            stuck_reading: Toggle::default(),
            cohort_deviation: CohortDeviationConfig::default(),
            burst: BurstConfig::default(),
        }
    }
}

/// A rule with no threshold of its own: it fires on the first occurrence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Toggle {
    /// Whether the rule runs.
    pub enabled: bool,
}

impl Default for Toggle {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// How cohort baselines are learned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CohortConfig {
    /// How often baselines are recomputed (in `tick`).
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// Fewest devices with enough samples before a model has a baseline.
    pub min_devices: usize,
    /// Fewest publishes a device must have made to count in (and be judged against) a
    /// rate or size baseline.
    pub min_samples: u32,
    /// A device not seen for this long leaves the baseline.
    #[serde(with = "humantime_serde")]
    pub active_window: Duration,
    /// The smallest spread, as a fraction of the median, a baseline may claim: keeps a
    /// fleet of identical devices from making every small difference an outlier.
    pub min_relative_spread: f64,
    /// The same floor for message and byte rates, wider: devices of one model are often
    /// set to report at different intervals.
    pub min_relative_spread_rates: f64,
    /// The smallest spread of a payload field's baseline, as a fraction of the width of
    /// the range the profile declares for the field: when most of a fleet reports the same
    /// value the MAD collapses to nothing, and without this floor a reading one step away
    /// would be a huge outlier.
    pub min_range_spread: f64,
    /// The smallest spread of the payload size baseline, bytes (and of the byte rate,
    /// times the cohort's message rate): the same readings written with more digits are
    /// tens of bytes longer, and that is not a deviation.
    pub min_size_spread: f64,
}

impl Default for CohortConfig {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(30),
            min_devices: 5,
            min_samples: 30,
            active_window: Duration::from_secs(600),
            min_relative_spread: 0.1,
            min_relative_spread_rates: 0.25,
            min_range_spread: 0.02,
            min_size_spread: 32.0,
        }
    }
}

/// `credential_brute_force`: authentication failures from one address or for one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BruteForceConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Failures (exponentially weighted over `window`) that fire it.
    pub failures: f64,
    /// The window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for BruteForceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            failures: 10.0,
            window: Duration::from_secs(60),
        }
    }
}

/// `connect_flood`: connection attempts from one address, or sessions of one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectFloodConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Connection attempts from one address (sessions and refusals) over `window`.
    pub per_source: f64,
    /// Sessions of one device over `window`.
    pub per_device: f64,
    /// The window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for ConnectFloodConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            per_source: 50.0,
            per_device: 20.0,
            window: Duration::from_secs(10),
        }
    }
}

/// `publish_flood`: a sustained publish rate well above what the profile states.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishFloodConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Fires when the 10 s rate exceeds the profile's total rate times this.
    pub profile_factor: f64,
    /// Fires when the 10 s rate exceeds this, for a device without a profile rate.
    pub max_rate: f64,
    /// Never fires below this rate (messages per second), whatever the profile says.
    pub min_rate: f64,
    /// Fires for a source address when the devices behind it that each publish above
    /// their own allowance (the profile's rate, at least `min_rate`) together exceed this
    /// 10 s rate: a flood spread over many connections, each under the per-device limit.
    pub per_source_rate: f64,
    /// Fewest such devices behind the address, within the window, for the per-address
    /// rule (one device alone is the per-device rule's business).
    pub per_source_devices: u32,
}

impl Default for PublishFloodConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            profile_factor: 5.0,
            max_rate: 200.0,
            min_rate: 5.0,
            per_source_rate: 100.0,
            per_source_devices: 3,
        }
    }
}

/// `slow_connection_dos`: many sessions with huge keep-alives that send nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlowConnectionConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// A keep-alive at least this long (or 0, none) makes a session suspect.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Suspect sessions from one address that have sent nothing, over `window`.
    pub sessions: f64,
    /// The window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for SlowConnectionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            keep_alive: Duration::from_secs(1800),
            sessions: 20.0,
            window: Duration::from_secs(300),
        }
    }
}

/// `malformed_packets`: protocol-error disconnects and malformed-packet refusals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MalformedConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Malformed streams over `window` that fire it.
    pub count: f64,
    /// The window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for MalformedConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            count: 5.0,
            window: Duration::from_secs(60),
        }
    }
}

/// `topic_scanning`: many new topics outside the profile, or many refused operations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicScanningConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// New out-of-profile topics and refused publishes or subscriptions over `window`.
    pub topics: f64,
    /// The window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for TopicScanningConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            topics: 10.0,
            window: Duration::from_secs(60),
        }
    }
}

/// `wildcard_harvesting`: subscriptions to `#`, `$SYS` or broad wildcards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WildcardConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// A filter with a wildcard in one of its first this many levels, not covered by the
    /// profile, is broad.
    pub broad_levels: usize,
}

impl Default for WildcardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            broad_levels: 2,
        }
    }
}

/// `beaconing`: periodic, low-variance empty sessions or publishes to odd topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BeaconingConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Fewest intervals before the period is judged.
    pub min_intervals: u32,
    /// Fires when the intervals' coefficient of variation is at most this.
    pub max_variation: f64,
    /// Intervals shorter than this are not beacons (floods are other rules' business).
    #[serde(with = "humantime_serde")]
    pub min_period: Duration,
}

impl Default for BeaconingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_intervals: 8,
            max_variation: 0.1,
            min_period: Duration::from_secs(5),
        }
    }
}

/// `cloned_identity`: one device connecting from addresses that keep changing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClonedIdentityConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Changes of source address (each within `window` of the previous session from the
    /// other address) that fire it. One change is a device that moved; two or more in a
    /// short time are two devices with one identity taking the session from each other.
    pub switches: f64,
    /// The window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for ClonedIdentityConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            switches: 2.0,
            window: Duration::from_secs(300),
        }
    }
}

/// `reading_jump`: a reading that changed by more than the profile's `max_step` for its
/// field since the device's previous reading of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadingJumpConfig {
    /// Whether the rule runs.
    pub enabled: bool,
    /// Readings further apart than this are not compared: a device that was away may
    /// come back somewhere else (a tracker moved while it was off).
    #[serde(with = "humantime_serde")]
    pub max_gap: Duration,
}

impl Default for ReadingJumpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_gap: Duration::from_secs(300),
        }
    }
}

/// `cohort_deviation`: robust z-scores against the model's cohort.
///
/// A value inside the range the profile declares for it (a field's `min`/`max`, the
/// profile's rate for message rates) is the manufacturer's statement of normal: however
/// odd it looks beside the cohort, its finding is `info` and costs no trust. Outside the
/// range, severity comes from how far outside; without a range, from the z-score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CohortDeviationConfig {
    /// Whether the detector runs.
    pub enabled: bool,
    /// Robust z-score of a device's rate, size or mean value that fires it.
    pub z: f64,
    /// Robust z-score of a single reading that fires it (from the first message).
    pub reading_z: f64,
    /// Consecutive deviating readings of one field (or message sizes) before a finding:
    /// one odd reading is noise.
    pub readings: u32,
    /// Consecutive baseline refreshes at which a device's summary deviates before a
    /// finding.
    pub refreshes: u32,
}

impl Default for CohortDeviationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            z: 8.0,
            reading_z: 12.0,
            readings: 3,
            refreshes: 2,
        }
    }
}

/// `burst`: the 1 s rate far above the device's own cadence — its 60 s rate, the peaks it
/// usually reaches, and the profile's rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BurstConfig {
    /// Whether the detector runs.
    pub enabled: bool,
    /// Fires when the 1 s rate exceeds the device's usual rate times this.
    pub factor: f64,
    /// Never fires below this 1 s rate (messages per second).
    pub min_rate: f64,
    /// How long a device without a profile is watched before its own cadence (the peaks
    /// it reaches) is known and bursts are judged against it.
    #[serde(with = "humantime_serde")]
    pub learn: Duration,
    /// Half-life of the device's remembered peak 1 s rate.
    #[serde(with = "humantime_serde")]
    pub memory: Duration,
}

impl Default for BurstConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            factor: 8.0,
            min_rate: 20.0,
            learn: Duration::from_secs(600),
            memory: Duration::from_secs(24 * 3600),
        }
    }
}

// === impl DetectConfig ===

fn positive(field: &'static str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(ConfigError::NotPositive { field, value })
    }
}

fn nonzero(field: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        Err(ConfigError::ZeroDuration { field })
    } else {
        Ok(())
    }
}

fn bounded(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfBounds {
            field,
            value,
            min,
            max,
        })
    }
}

fn usize_u64(v: usize) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

impl DetectConfig {
    /// Checks every value; the engine relies on them being checked.
    pub fn validate(&self) -> Result<(), ConfigError> {
        nonzero("cooldown", self.cooldown)?;
        bounded("max_sources", usize_u64(self.max_sources), 16, 1 << 24)?;
        bounded("max_devices", usize_u64(self.max_devices), 16, 1 << 24)?;
        let c = &self.cohort;
        nonzero("cohort.refresh", c.refresh)?;
        nonzero("cohort.active_window", c.active_window)?;
        bounded("cohort.min_devices", usize_u64(c.min_devices), 3, 1 << 20)?;
        bounded("cohort.min_samples", u64::from(c.min_samples), 1, 1 << 20)?;
        for (field, value) in [
            ("cohort.min_range_spread", c.min_range_spread),
            ("cohort.min_relative_spread", c.min_relative_spread),
            (
                "cohort.min_relative_spread_rates",
                c.min_relative_spread_rates,
            ),
        ] {
            if !(value.is_finite() && (0.0..=1.0).contains(&value)) {
                return Err(ConfigError::NotFraction { field, value });
            }
        }
        if !(c.min_size_spread.is_finite() && c.min_size_spread >= 0.0) {
            return Err(ConfigError::NotPositive {
                field: "cohort.min_size_spread",
                value: c.min_size_spread,
            });
        }
        positive(
            "credential_brute_force.failures",
            self.credential_brute_force.failures,
        )?;
        nonzero(
            "credential_brute_force.window",
            self.credential_brute_force.window,
        )?;
        positive("connect_flood.per_source", self.connect_flood.per_source)?;
        positive("connect_flood.per_device", self.connect_flood.per_device)?;
        nonzero("connect_flood.window", self.connect_flood.window)?;
        positive(
            "publish_flood.profile_factor",
            self.publish_flood.profile_factor,
        )?;
        positive("publish_flood.max_rate", self.publish_flood.max_rate)?;
        positive("publish_flood.min_rate", self.publish_flood.min_rate)?;
        positive(
            "publish_flood.per_source_rate",
            self.publish_flood.per_source_rate,
        )?;
        bounded(
            "publish_flood.per_source_devices",
            u64::from(self.publish_flood.per_source_devices),
            2,
            u64::try_from(crate::engine::SOURCE_DEVICES).unwrap_or(u64::MAX),
        )?;
        nonzero(
            "slow_connection_dos.keep_alive",
            self.slow_connection_dos.keep_alive,
        )?;
        positive(
            "slow_connection_dos.sessions",
            self.slow_connection_dos.sessions,
        )?;
        nonzero(
            "slow_connection_dos.window",
            self.slow_connection_dos.window,
        )?;
        positive("malformed_packets.count", self.malformed_packets.count)?;
        nonzero("malformed_packets.window", self.malformed_packets.window)?;
        positive("topic_scanning.topics", self.topic_scanning.topics)?;
        nonzero("topic_scanning.window", self.topic_scanning.window)?;
        bounded(
            "wildcard_harvesting.broad_levels",
            usize_u64(self.wildcard_harvesting.broad_levels),
            1,
            16,
        )?;
        bounded(
            "beaconing.min_intervals",
            u64::from(self.beaconing.min_intervals),
            3,
            10_000,
        )?;
        positive("beaconing.max_variation", self.beaconing.max_variation)?;
        nonzero("beaconing.min_period", self.beaconing.min_period)?;
        positive("cloned_identity.switches", self.cloned_identity.switches)?;
        nonzero("cloned_identity.window", self.cloned_identity.window)?;
        nonzero("reading_jump.max_gap", self.reading_jump.max_gap)?;
        positive("cohort_deviation.z", self.cohort_deviation.z)?;
        positive(
            "cohort_deviation.reading_z",
            self.cohort_deviation.reading_z,
        )?;
        bounded(
            "cohort_deviation.readings",
            u64::from(self.cohort_deviation.readings),
            1,
            255,
        )?;
        bounded(
            "cohort_deviation.refreshes",
            u64::from(self.cohort_deviation.refreshes),
            1,
            255,
        )?;
        positive("burst.factor", self.burst.factor)?;
        positive("burst.min_rate", self.burst.min_rate)?;
        nonzero("burst.memory", self.burst.memory)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(DetectConfig::default().validate(), Ok(()));
    }

    #[test]
    fn config_reads_from_json_with_humantime_durations() {
        let c: DetectConfig = serde_json::from_str(
            r#"{"cooldown": "1m", "publish_flood": {"enabled": false}, "beaconing": {"min_period": "30s"}}"#,
        )
        .expect("config");
        assert_eq!(c.cooldown, Duration::from_secs(60));
        assert!(!c.publish_flood.enabled);
        assert_eq!(c.publish_flood.max_rate, 200.0);
        assert_eq!(c.beaconing.min_period, Duration::from_secs(30));
        assert!(serde_json::from_str::<DetectConfig>(r#"{"cooldwn": "1m"}"#).is_err());
        // What is written reads back the same.
        let text = serde_json::to_string(&c).expect("serialize");
        assert_eq!(
            serde_json::from_str::<DetectConfig>(&text).expect("config"),
            c
        );
    }

    #[test]
    fn bad_values_are_refused() {
        let mut c = DetectConfig::default();
        c.burst.factor = f64::NAN;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::NotPositive {
                field: "burst.factor",
                ..
            })
        ));
        let c = DetectConfig {
            cooldown: Duration::ZERO,
            ..DetectConfig::default()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::ZeroDuration { field: "cooldown" })
        );
        let c = DetectConfig {
            max_sources: 0,
            ..DetectConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::OutOfBounds {
                field: "max_sources",
                ..
            })
        ));
    }
}
