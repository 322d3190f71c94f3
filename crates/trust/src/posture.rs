//! Posture reports: what a device says about itself on `$gatehouse/{device}/posture`.
//!
//! A report travels signed, in an envelope:
//!
//! ```json
//! {"report": "<base64 of the report's JSON bytes>", "signature": "<base64>"}
//! ```
//!
//! The signature is made with the key of the device's operational certificate over the
//! report bytes exactly as sent (the base64-decoded `report`), so nothing is
//! re-serialised before it is checked; the algorithm follows from the certificate's key
//! (ECDSA with SHA-256 for P-256, SHA-384 for P-384, Ed25519, RSA PKCS#1 v1.5 with
//! SHA-256). Checking it is the caller's job, with the certificate it holds for the
//! device; this module only parses (untrusted bytes, bounded) and applies a checked report
//! to the device's [`Facts`].
//!
//! The report itself:
//!
//! ```json
//! {"firmware": "2.4.1", "services": ["ssh"], "default_credentials": "changed",
//!  "time": 1764856800}
//! ```
//!
//! Every field is optional; unknown fields are refused. `time` is the device's clock, in
//! Unix seconds, from which the clock skew is taken.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::profile::ModelProfile;
use crate::score::{DefaultCredentials, Facts, FirmwareFact};

/// Largest envelope accepted, in bytes.
pub const MAX_ENVELOPE: usize = 16 * 1024;
/// Most services a report may list.
pub const MAX_SERVICES: usize = 64;
/// Longest firmware version or service name, in bytes.
pub const MAX_NAME: usize = 64;

/// Why a posture message was refused. Each says what is wrong, for the device's log and
/// the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PostureError {
    /// Larger than [`MAX_ENVELOPE`].
    #[error("posture message is {0} bytes, more than the {MAX_ENVELOPE} allowed")]
    TooLarge(usize),
    /// Not the JSON envelope, or its fields are not base64.
    #[error("posture envelope refused: {0}")]
    Envelope(String),
    /// The report is not valid JSON of the expected shape.
    #[error("posture report refused: {0}")]
    Report(String),
}

/// A parsed envelope: the report bytes and the signature over them, not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPosture {
    /// The report's bytes, as signed.
    pub report: Vec<u8>,
    /// The signature.
    pub signature: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvelope {
    report: String,
    signature: String,
}

/// What a device reports about its default credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialState {
    /// Still the model's defaults.
    Unchanged,
    /// Changed from the defaults.
    Changed,
    /// The device has no default credentials.
    NotApplicable,
}

/// A posture report, parsed and bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostureReport {
    /// The firmware version the device runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// Network services the device has open (`telnet`, `ssh`, `http`, ...); `None` when
    /// the report does not say (an empty list says none are open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<BTreeSet<String>>,
    /// Its default credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_credentials: Option<CredentialState>,
    /// The device's clock when it made the report, in Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<i64>,
}

// === impl SignedPosture ===

impl SignedPosture {
    /// Parses an envelope from untrusted bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, PostureError> {
        if bytes.len() > MAX_ENVELOPE {
            return Err(PostureError::TooLarge(bytes.len()));
        }
        let raw: RawEnvelope =
            serde_json::from_slice(bytes).map_err(|e| PostureError::Envelope(e.to_string()))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let report = b64
            .decode(raw.report.as_bytes())
            .map_err(|e| PostureError::Envelope(format!("`report` is not base64: {e}")))?;
        let signature = b64
            .decode(raw.signature.as_bytes())
            .map_err(|e| PostureError::Envelope(format!("`signature` is not base64: {e}")))?;
        if signature.is_empty() {
            return Err(PostureError::Envelope("`signature` is empty".into()));
        }
        Ok(Self { report, signature })
    }

    /// The envelope for `report` signed as `signature`: what a device sends.
    pub fn encode(report: &[u8], signature: &[u8]) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD;
        serde_json::json!({
            "report": b64.encode(report),
            "signature": b64.encode(signature),
        })
        .to_string()
        .into_bytes()
    }
}

// === impl PostureReport ===

impl PostureReport {
    /// Parses the report bytes of a checked envelope.
    pub fn parse(bytes: &[u8]) -> Result<Self, PostureError> {
        let report: Self =
            serde_json::from_slice(bytes).map_err(|e| PostureError::Report(e.to_string()))?;
        if let Some(fw) = &report.firmware
            && !valid_name(fw)
        {
            return Err(PostureError::Report(format!(
                "`firmware` must be 1 to {MAX_NAME} printable characters"
            )));
        }
        let services = report.services.as_ref().map_or(0, BTreeSet::len);
        if services > MAX_SERVICES {
            return Err(PostureError::Report(format!(
                "{services} services listed, at most {MAX_SERVICES} allowed"
            )));
        }
        if let Some(bad) = report.services.iter().flatten().find(|s| !valid_name(s)) {
            return Err(PostureError::Report(format!(
                "service {bad:?}: names are 1 to {MAX_NAME} printable characters"
            )));
        }
        Ok(report)
    }

    /// The report as the bytes a device signs.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Applies the report to `facts`, judging the firmware against `profile` (a device
    /// without a profile has its firmware recorded as unknown) and the clock against
    /// `now`. Everything the report says replaces what an earlier report said; what it
    /// does not say is left as it was.
    pub fn apply(&self, facts: &mut Facts, profile: Option<&ModelProfile>, now: SystemTime) {
        facts.posture_reported = true;
        if let Some(version) = &self.firmware {
            let status = profile.map_or(crate::profile::FirmwareStatus::Unknown, |p| {
                p.firmware_status(version)
            });
            facts.firmware = Some(FirmwareFact {
                version: version.clone(),
                status,
            });
        }
        if let Some(services) = &self.services {
            facts.open_services = services.iter().map(|s| s.to_ascii_lowercase()).collect();
        }
        if let Some(state) = self.default_credentials {
            facts.default_credentials = match state {
                CredentialState::Unchanged => DefaultCredentials::Unchanged,
                CredentialState::Changed => DefaultCredentials::Changed,
                CredentialState::NotApplicable => DefaultCredentials::NotApplicable,
            };
        }
        if let Some(t) = self.time {
            let now_secs = now
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_secs();
            let now_secs = i64::try_from(now_secs).unwrap_or(i64::MAX);
            facts.clock_skew_secs = Some(t.saturating_sub(now_secs));
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME && s.chars().all(|c| !c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::IdentityAssurance;

    #[test]
    fn envelope_round_trips() {
        let report = PostureReport {
            firmware: Some("2.4.1".into()),
            services: Some(["ssh".to_owned()].into()),
            default_credentials: Some(CredentialState::Changed),
            time: Some(1_764_856_800),
        };
        let bytes = report.to_bytes();
        let env = SignedPosture::encode(&bytes, b"sig");
        let parsed = SignedPosture::parse(&env).unwrap();
        assert_eq!(parsed.report, bytes);
        assert_eq!(parsed.signature, b"sig");
        assert_eq!(PostureReport::parse(&parsed.report).unwrap(), report);
    }

    #[test]
    fn bad_envelopes_and_reports_are_refused() {
        assert!(matches!(
            SignedPosture::parse(&vec![b' '; MAX_ENVELOPE + 1]),
            Err(PostureError::TooLarge(_))
        ));
        assert!(SignedPosture::parse(b"{}").is_err());
        assert!(SignedPosture::parse(br#"{"report":"!!","signature":"AA=="}"#).is_err());
        assert!(SignedPosture::parse(br#"{"report":"e30=","signature":""}"#).is_err());
        assert!(PostureReport::parse(br#"{"firmware":""}"#).is_err());
        assert!(PostureReport::parse(br#"{"extra":1}"#).is_err());
        assert!(PostureReport::parse(br#"{"services":["a\u0000"]}"#).is_err());
    }

    #[test]
    fn a_report_sets_the_facts_it_speaks_of() {
        let mut facts = Facts::new(IdentityAssurance::Token);
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        PostureReport {
            firmware: Some("9.9".into()),
            services: Some(["Telnet".to_owned()].into()),
            default_credentials: None,
            time: Some(999_400),
        }
        .apply(&mut facts, None, now);
        assert!(facts.posture_reported);
        assert_eq!(
            facts.firmware.as_ref().map(|f| f.status),
            Some(crate::profile::FirmwareStatus::Unknown)
        );
        assert!(facts.open_services.contains("telnet"));
        assert_eq!(facts.clock_skew_secs, Some(-600));
        assert_eq!(facts.default_credentials, DefaultCredentials::Unknown);
    }
}
