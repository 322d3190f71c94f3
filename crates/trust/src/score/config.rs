//! The scorer's configuration: weights, tier thresholds, behaviour half-life. Read as a
//! [`RawScoreConfig`] (every field optional, unknown fields refused), then validated into
//! a [`ScoreConfig`].

use std::collections::BTreeMap;
use std::time::Duration;

use gatehouse_types::{Score, Tier};
use serde::{Deserialize, Serialize};

/// Penalties, in points, of each factor; all non-negative.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    /// Enrolled with a manufacturer certificate (IDevID).
    pub identity_idevid: f64,
    /// Enrolled with a token.
    pub identity_token: f64,
    /// Username and password on a legacy listener.
    pub identity_legacy_password: f64,
    /// Firmware one supported release behind the current one…
    pub firmware_behind: f64,
    /// …plus this for each further release behind…
    pub firmware_behind_per_release: f64,
    /// …up to this much.
    pub firmware_behind_max: f64,
    /// Firmware older than current and no longer supported.
    pub firmware_unsupported: f64,
    /// Firmware the profile does not know, or posture without a version.
    pub firmware_unknown: f64,
    /// The device never reported its posture.
    pub posture_never_reported: f64,
    /// Default credentials unchanged.
    pub default_credentials_unchanged: f64,
    /// Posture reported without saying whether default credentials were changed.
    pub default_credentials_unknown: f64,
    /// Per open service, by lower-case name.
    pub services: BTreeMap<String, f64>,
    /// Per open service not named in `services`.
    pub service_other: f64,
    /// Certificate key below the minimum size.
    pub weak_key: f64,
    /// Clock skew beyond the tolerance.
    pub clock_skew: f64,
    /// Multiplier of behaviour penalties (before decay).
    pub behaviour: f64,
    /// Multiplier of external factors' penalties.
    pub external: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            identity_idevid: 0.0,
            identity_token: 10.0,
            identity_legacy_password: 30.0,
            firmware_behind: 25.0,
            firmware_behind_per_release: 5.0,
            firmware_behind_max: 40.0,
            firmware_unsupported: 45.0,
            firmware_unknown: 30.0,
            posture_never_reported: 10.0,
            default_credentials_unchanged: 30.0,
            default_credentials_unknown: 5.0,
            services: [
                ("telnet", 25.0),
                ("ftp", 15.0),
                ("tftp", 15.0),
                ("upnp", 10.0),
                ("http", 5.0),
                ("ssh", 5.0),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            service_other: 5.0,
            weak_key: 30.0,
            clock_skew: 5.0,
            behaviour: 1.0,
            external: 1.0,
        }
    }
}

/// The lowest score of each tier above blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Scores at or above this are trusted.
    pub trusted: u8,
    /// Scores at or above this (and below trusted) are restricted.
    pub restricted: u8,
    /// Scores at or above this (and below restricted) are quarantined; below, blocked.
    pub quarantined: u8,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            trusted: 80,
            restricted: 50,
            quarantined: 20,
        }
    }
}

impl Thresholds {
    /// The tier a score gives.
    pub fn tier(&self, score: Score) -> Tier {
        let s = score.get();
        if s >= self.trusted {
            Tier::Trusted
        } else if s >= self.restricted {
            Tier::Restricted
        } else if s >= self.quarantined {
            Tier::Quarantined
        } else {
            Tier::Blocked
        }
    }
}

/// The configuration as written: every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawScoreConfig {
    /// Factor penalties.
    pub weights: Weights,
    /// Tier thresholds.
    pub thresholds: Thresholds,
    /// Time for a behaviour penalty to halve (`24h`).
    #[serde(with = "humantime_serde")]
    pub half_life: Duration,
    /// Clock skew tolerated without a penalty (`5m`).
    #[serde(with = "humantime_serde")]
    pub clock_skew_tolerance: Duration,
    /// Smallest RSA key without a penalty, in bits.
    pub min_rsa_bits: u32,
    /// Smallest ECDSA key without a penalty, in bits.
    pub min_ec_bits: u32,
}

impl Default for RawScoreConfig {
    fn default() -> Self {
        Self {
            weights: Weights::default(),
            thresholds: Thresholds::default(),
            half_life: Duration::from_secs(24 * 3600),
            clock_skew_tolerance: Duration::from_secs(300),
            min_rsa_bits: 2048,
            min_ec_bits: 256,
        }
    }
}

/// Why a score configuration was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ScoreConfigError {
    /// A weight is negative, infinite or not a number.
    #[error("weights.{name} is {value}; weights must be finite and not negative")]
    BadWeight {
        /// The weight (`services.telnet` for a service).
        name: String,
        /// Its value.
        value: f64,
    },
    /// A service weight's name is empty or not in lower case.
    #[error("weights.services has {0:?}; service names are lower case and not empty")]
    BadServiceName(String),
    /// The thresholds are not trusted > restricted > quarantined, with trusted at most 100.
    #[error(
        "thresholds must be 100 >= trusted > restricted > quarantined; \
         got trusted {trusted}, restricted {restricted}, quarantined {quarantined}"
    )]
    Thresholds {
        /// The trusted threshold given.
        trusted: u8,
        /// The restricted threshold given.
        restricted: u8,
        /// The quarantined threshold given.
        quarantined: u8,
    },
    /// The half-life is zero.
    #[error("half_life must be longer than zero")]
    ZeroHalfLife,
}

/// A validated score configuration. The default is [`RawScoreConfig::default`], which is valid.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ScoreConfig(RawScoreConfig);

impl ScoreConfig {
    /// Validates a configuration.
    pub fn new(raw: RawScoreConfig) -> Result<Self, ScoreConfigError> {
        let w = &raw.weights;
        let named = [
            ("identity_idevid", w.identity_idevid),
            ("identity_token", w.identity_token),
            ("identity_legacy_password", w.identity_legacy_password),
            ("firmware_behind", w.firmware_behind),
            ("firmware_behind_per_release", w.firmware_behind_per_release),
            ("firmware_behind_max", w.firmware_behind_max),
            ("firmware_unsupported", w.firmware_unsupported),
            ("firmware_unknown", w.firmware_unknown),
            ("posture_never_reported", w.posture_never_reported),
            (
                "default_credentials_unchanged",
                w.default_credentials_unchanged,
            ),
            ("default_credentials_unknown", w.default_credentials_unknown),
            ("service_other", w.service_other),
            ("weak_key", w.weak_key),
            ("clock_skew", w.clock_skew),
            ("behaviour", w.behaviour),
            ("external", w.external),
        ];
        let services = w
            .services
            .iter()
            .map(|(k, v)| (format!("services.{k}"), *v));
        for (name, value) in named
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .chain(services)
        {
            if !value.is_finite() || value < 0.0 {
                return Err(ScoreConfigError::BadWeight { name, value });
            }
        }
        if let Some(bad) = w
            .services
            .keys()
            .find(|k| k.is_empty() || **k != k.to_ascii_lowercase())
        {
            return Err(ScoreConfigError::BadServiceName(bad.clone()));
        }
        let t = raw.thresholds;
        if !(t.trusted <= 100 && t.trusted > t.restricted && t.restricted > t.quarantined) {
            return Err(ScoreConfigError::Thresholds {
                trusted: t.trusted,
                restricted: t.restricted,
                quarantined: t.quarantined,
            });
        }
        if raw.half_life.is_zero() {
            return Err(ScoreConfigError::ZeroHalfLife);
        }
        Ok(Self(raw))
    }

    /// The factor penalties.
    pub fn weights(&self) -> &Weights {
        &self.0.weights
    }

    /// The tier thresholds.
    pub fn thresholds(&self) -> &Thresholds {
        &self.0.thresholds
    }

    /// The time for a behaviour penalty to halve.
    pub fn half_life(&self) -> Duration {
        self.0.half_life
    }

    /// The clock skew tolerated without a penalty.
    pub fn clock_skew_tolerance(&self) -> Duration {
        self.0.clock_skew_tolerance
    }

    /// The smallest RSA key without a penalty, in bits.
    pub fn min_rsa_bits(&self) -> u32 {
        self.0.min_rsa_bits
    }

    /// The smallest ECDSA key without a penalty, in bits.
    pub fn min_ec_bits(&self) -> u32 {
        self.0.min_ec_bits
    }
}

impl TryFrom<RawScoreConfig> for ScoreConfig {
    type Error = ScoreConfigError;
    fn try_from(raw: RawScoreConfig) -> Result<Self, ScoreConfigError> {
        Self::new(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(ScoreConfig::new(RawScoreConfig::default()).is_ok());
    }

    #[test]
    fn thresholds_must_be_ordered() {
        let mut raw = RawScoreConfig::default();
        raw.thresholds.restricted = 80;
        assert!(matches!(
            ScoreConfig::new(raw.clone()),
            Err(ScoreConfigError::Thresholds { .. })
        ));
        raw.thresholds = Thresholds {
            trusted: 101,
            restricted: 50,
            quarantined: 20,
        };
        assert!(ScoreConfig::new(raw).is_err());
    }

    #[test]
    fn weights_must_not_be_negative() {
        let mut raw = RawScoreConfig::default();
        raw.weights.services.insert("telnet".into(), -1.0);
        let e = ScoreConfig::new(raw).unwrap_err();
        assert_eq!(
            e.to_string(),
            "weights.services.telnet is -1; weights must be finite and not negative"
        );
        let mut raw = RawScoreConfig::default();
        raw.weights.clock_skew = f64::NAN;
        assert!(ScoreConfig::new(raw).is_err());
        let mut raw = RawScoreConfig::default();
        raw.weights.services.insert("Telnet".into(), 1.0);
        assert_eq!(
            ScoreConfig::new(raw),
            Err(ScoreConfigError::BadServiceName("Telnet".into()))
        );
    }

    #[test]
    fn half_life_must_be_positive() {
        let raw = RawScoreConfig {
            half_life: Duration::ZERO,
            ..RawScoreConfig::default()
        };
        assert_eq!(ScoreConfig::new(raw), Err(ScoreConfigError::ZeroHalfLife));
    }

    #[test]
    fn tiers_follow_thresholds() {
        let t = Thresholds::default();
        let tier = |s| t.tier(Score::new(s).unwrap());
        assert_eq!(tier(100), Tier::Trusted);
        assert_eq!(tier(80), Tier::Trusted);
        assert_eq!(tier(79), Tier::Restricted);
        assert_eq!(tier(50), Tier::Restricted);
        assert_eq!(tier(49), Tier::Quarantined);
        assert_eq!(tier(20), Tier::Quarantined);
        assert_eq!(tier(19), Tier::Blocked);
        assert_eq!(tier(0), Tier::Blocked);
    }
}
