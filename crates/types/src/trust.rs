use std::fmt;

use serde::{Deserialize, Serialize};

/// What a device's trust allows, from least to most: the derived order is the order of
/// trust, so `Tier::Blocked < Tier::Quarantined < Tier::Restricted < Tier::Trusted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// May not connect.
    Blocked,
    /// May reach only its update and health topics.
    Quarantined,
    /// May publish its telemetry, at reduced rates; no command topics.
    Restricted,
    /// May do what its model profile says.
    Trusted,
}

impl Tier {
    /// Every tier, from least to most trusted.
    pub const ALL: [Tier; 4] = [
        Tier::Blocked,
        Tier::Quarantined,
        Tier::Restricted,
        Tier::Trusted,
    ];

    /// The tier's name as written in configuration and policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Blocked => "blocked",
            Tier::Quarantined => "quarantined",
            Tier::Restricted => "restricted",
            Tier::Trusted => "trusted",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a tier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tier {0:?}; tiers are trusted, restricted, quarantined and blocked")]
pub struct TierError(pub String);

impl std::str::FromStr for Tier {
    type Err = TierError;
    fn from_str(s: &str) -> Result<Self, TierError> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| TierError(s.to_owned()))
    }
}

/// A trust score, 0 (no trust) to 100 (full trust).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Score(u8);

/// A number outside 0–100 offered as a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("score {0} is out of range; scores are 0 to 100")]
pub struct ScoreError(pub u8);

impl Score {
    /// The lowest score.
    pub const MIN: Score = Score(0);
    /// The highest score.
    pub const MAX: Score = Score(100);

    /// Validates a score.
    pub fn new(value: u8) -> Result<Self, ScoreError> {
        if value <= 100 {
            Ok(Self(value))
        } else {
            Err(ScoreError(value))
        }
    }

    /// The score, clamped to 0–100 and rounded to the nearest integer; NaN gives 0.
    pub fn saturating_from_f64(value: f64) -> Self {
        if value.is_nan() {
            return Self::MIN;
        }
        // The clamp keeps the cast in range.
        Self(value.clamp(0.0, 100.0).round() as u8)
    }

    /// The score as a number.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for Score {
    type Error = ScoreError;
    fn try_from(v: u8) -> Result<Self, ScoreError> {
        Self::new(v)
    }
}

impl From<Score> for u8 {
    fn from(s: Score) -> u8 {
        s.0
    }
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_ordered_by_trust() {
        assert!(Tier::Blocked < Tier::Quarantined);
        assert!(Tier::Quarantined < Tier::Restricted);
        assert!(Tier::Restricted < Tier::Trusted);
        let mut sorted = Tier::ALL;
        sorted.sort();
        assert_eq!(sorted, Tier::ALL);
    }

    #[test]
    fn tiers_round_trip_as_snake_case() {
        for t in Tier::ALL {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{t}\""));
            assert_eq!(serde_json::from_str::<Tier>(&json).unwrap(), t);
            assert_eq!(t.as_str().parse::<Tier>().unwrap(), t);
        }
        assert!("Trusted".parse::<Tier>().is_err());
    }

    #[test]
    fn scores_are_validated() {
        assert_eq!(Score::new(0).unwrap(), Score::MIN);
        assert_eq!(Score::new(100).unwrap(), Score::MAX);
        assert_eq!(Score::new(101), Err(ScoreError(101)));
        assert!(serde_json::from_str::<Score>("101").is_err());
        assert_eq!(serde_json::from_str::<Score>("42").unwrap().get(), 42);
        assert_eq!(serde_json::to_string(&Score::MAX).unwrap(), "100");
    }

    #[test]
    fn scores_from_floats_saturate() {
        assert_eq!(Score::saturating_from_f64(-3.0), Score::MIN);
        assert_eq!(Score::saturating_from_f64(250.0), Score::MAX);
        assert_eq!(Score::saturating_from_f64(f64::NAN), Score::MIN);
        assert_eq!(Score::saturating_from_f64(79.5).get(), 80);
        assert_eq!(Score::saturating_from_f64(79.49).get(), 79);
    }
}
