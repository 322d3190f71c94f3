//! Findings: what the detection stage concluded from observations.
//!
//! A finding names its subject (a device, a source address, or both), what was detected
//! (`kind`, a rule or detector name such as `credential_brute_force`), how bad and how
//! sure, the evidence it rests on and the MITRE ATT&CK for ICS technique it maps to. The
//! trust stage turns findings into behaviour penalties; the respond stage matches them
//! against playbooks.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::DeviceRef;

/// How bad a finding is, lowest first (so `>=` compares badness).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth recording; no action expected.
    Info,
    /// Unusual; look when convenient.
    Low,
    /// Likely hostile or broken; act.
    Medium,
    /// Hostile; act now.
    High,
    /// Hostile and damaging; act now, automatically.
    Critical,
}

impl Severity {
    /// Every severity, lowest first.
    pub const ALL: [Self; 5] = [
        Self::Info,
        Self::Low,
        Self::Medium,
        Self::High,
        Self::Critical,
    ];

    /// The name used in configuration and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }

    /// The OCSF `severity_id` (1 informational … 5 critical).
    pub fn ocsf_id(self) -> u8 {
        match self {
            Self::Info => 1,
            Self::Low => 2,
            Self::Medium => 3,
            Self::High => 4,
            Self::Critical => 5,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A severity name that is not one of `info`, `low`, `medium`, `high`, `critical`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown severity {0:?}: expected info, low, medium, high or critical")]
pub struct SeverityError(pub String);

impl FromStr for Severity {
    type Err = SeverityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| SeverityError(s.to_owned()))
    }
}

/// One conclusion of the detection stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// When the detector fired (the time of the observation that tipped it).
    pub at: SystemTime,
    /// The device it is about, when the traffic carried an identity.
    pub device: Option<DeviceRef>,
    /// The source address it is about, when known (brute force before any identity).
    pub peer: Option<IpAddr>,
    /// What was detected: the rule or detector name, `snake_case`
    /// (`credential_brute_force`, `cohort_deviation`).
    pub kind: String,
    /// How bad.
    pub severity: Severity,
    /// How sure, 0.0 to 1.0.
    pub confidence: f32,
    /// The MITRE ATT&CK for ICS technique id (`T0806`), when the finding maps to one.
    pub technique: Option<String>,
    /// One line for people: what was seen.
    pub summary: String,
    /// The measurements the finding rests on (`failures`: `42`, `window`: `10s`).
    pub evidence: BTreeMap<String, String>,
}

impl Finding {
    /// The key under which repeats of this finding are grouped: same subject, same kind.
    pub fn group_key(&self) -> String {
        let subject = match (&self.device, &self.peer) {
            (Some(d), _) => d.to_string(),
            (None, Some(p)) => format!("addr:{p}"),
            (None, None) => "-".to_owned(),
        };
        format!("{subject}|{}", self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_order_and_round_trip() {
        assert!(Severity::Critical > Severity::High);
        assert!(Severity::Info < Severity::Low);
        for s in Severity::ALL {
            assert_eq!(s.as_str().parse::<Severity>(), Ok(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert!("severe".parse::<Severity>().is_err());
    }

    #[test]
    fn group_key_prefers_the_device() {
        let f = Finding {
            at: SystemTime::UNIX_EPOCH,
            device: Some(DeviceRef::new(
                "acme".parse().unwrap(),
                "cam-1".parse().unwrap(),
            )),
            peer: Some("10.0.0.1".parse().unwrap()),
            kind: "publish_flood".into(),
            severity: Severity::High,
            confidence: 0.9,
            technique: Some("T0814".into()),
            summary: String::new(),
            evidence: BTreeMap::new(),
        };
        assert_eq!(f.group_key(), "acme/cam-1|publish_flood");
        let anon = Finding { device: None, ..f };
        assert_eq!(anon.group_key(), "addr:10.0.0.1|publish_flood");
    }
}
