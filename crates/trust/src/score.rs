//! Posture facts → an explainable score from 0 to 100 and a tier.
//!
//! The score is 100 less the sum of the penalties of the factors that apply, clamped to
//! 0–100. Scoring is a pure function of the facts, the configuration and `now`: the same
//! inputs give the same score, with the factors in the same order (by family, then name,
//! then evidence), whatever order the facts were gathered in. Behaviour penalties decay
//! with a half-life; other sources (vulnerability matches, OTA state, …) add
//! [`ExternalFactor`]s without any change to the scorer or its callers.

mod config;

use std::collections::BTreeSet;
use std::fmt;
use std::time::{Duration, SystemTime};

use gatehouse_types::{Score, Tier};
use serde::{Deserialize, Serialize};

use crate::profile::FirmwareStatus;

pub use config::{RawScoreConfig, ScoreConfig, ScoreConfigError, Thresholds, Weights};

/// The family a factor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Family {
    /// How the device proved who it is.
    Identity,
    /// Its firmware against the model profile.
    Software,
    /// Advisories matched against its software.
    Vulnerabilities,
    /// How it is set up: credentials, services, keys, clock, posture reporting.
    Configuration,
    /// What it has been seen doing (detection findings).
    Behaviour,
    /// Where it comes from: its manufacturer and their CA.
    Provenance,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Identity => "identity",
            Self::Software => "software",
            Self::Vulnerabilities => "vulnerabilities",
            Self::Configuration => "configuration",
            Self::Behaviour => "behaviour",
            Self::Provenance => "provenance",
        })
    }
}

/// How strongly the device's identity is established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityAssurance {
    /// Enrolled with a hardware-backed manufacturer certificate (IEEE 802.1AR IDevID).
    Idevid,
    /// Enrolled with an enrollment token.
    Token,
    /// Connects with a username and password on a legacy listener.
    LegacyPassword,
}

/// Whether the device still uses its model's default credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultCredentials {
    /// The default credentials still work.
    Unchanged,
    /// They have been changed.
    Changed,
    /// Not known.
    #[default]
    Unknown,
    /// The model has no default credentials.
    NotApplicable,
}

/// The kind and size of the key in the device's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CertificateKey {
    /// Ed25519.
    Ed25519,
    /// ECDSA on a curve of `bits` bits.
    Ecdsa {
        /// Curve size.
        bits: u32,
    },
    /// RSA with a modulus of `bits` bits.
    Rsa {
        /// Modulus size.
        bits: u32,
    },
}

impl fmt::Display for CertificateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ed25519 => f.write_str("Ed25519"),
            Self::Ecdsa { bits } => write!(f, "ECDSA {bits}-bit"),
            Self::Rsa { bits } => write!(f, "RSA {bits}-bit"),
        }
    }
}

/// The firmware the device runs, and where it stands against its model's profile
/// ([`crate::profile::ModelProfile::firmware_status`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareFact {
    /// The version reported.
    pub version: String,
    /// Its status against the profile.
    pub status: FirmwareStatus,
}

/// A penalty from a detection finding, decaying with the configured half-life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BehaviourPenalty {
    /// What was detected (the finding's kind).
    pub name: String,
    /// The penalty when new.
    pub penalty: f64,
    /// When it was detected.
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
    /// Why: the finding's evidence.
    pub evidence: String,
}

impl BehaviourPenalty {
    /// The share of the penalty left at `now`: it halves every `half_life` (taken as at
    /// least a second), and a penalty from the future has not decayed yet.
    pub fn remaining(&self, half_life: Duration, now: SystemTime) -> f64 {
        let age = now.duration_since(self.at).unwrap_or(Duration::ZERO);
        0.5f64.powf(age.as_secs_f64() / half_life.as_secs_f64().max(1.0))
    }
}

/// A factor from any other source (vulnerability matches, OTA state, provenance), with
/// its penalty already weighed by that source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalFactor {
    /// Its family.
    pub family: Family,
    /// Its name (`CVE-2024-1234`, `update failed`).
    pub name: String,
    /// Its penalty.
    pub penalty: f64,
    /// Why it applies.
    pub evidence: String,
}

/// What is known about a device. Unknown facts are `None` or empty; a device that never
/// reported posture is scored on what is known, and a factor says so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Facts {
    /// How its identity was established.
    pub identity: IdentityAssurance,
    /// Whether it has ever reported its posture.
    pub posture_reported: bool,
    /// Its firmware, if reported (in posture or at enrollment).
    pub firmware: Option<FirmwareFact>,
    /// Network services it reports open (`telnet`, `ssh`, `http`), in lower case.
    pub open_services: BTreeSet<String>,
    /// Its default-credential state.
    pub default_credentials: DefaultCredentials,
    /// The key in its certificate, if it has one.
    pub certificate_key: Option<CertificateKey>,
    /// Its clock minus the platform's, in seconds, when measured.
    pub clock_skew_secs: Option<i64>,
    /// Penalties from detection findings.
    pub behaviour: Vec<BehaviourPenalty>,
    /// Factors from other sources.
    pub external: Vec<ExternalFactor>,
}

impl Facts {
    /// What is known of a device that has only enrolled: its identity assurance.
    pub fn new(identity: IdentityAssurance) -> Self {
        Self {
            identity,
            posture_reported: false,
            firmware: None,
            open_services: BTreeSet::new(),
            default_credentials: DefaultCredentials::Unknown,
            certificate_key: None,
            clock_skew_secs: None,
            behaviour: Vec::new(),
            external: Vec::new(),
        }
    }
}

/// One reason the score is lower than 100.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Factor {
    /// Its family.
    pub family: Family,
    /// Its name.
    pub name: String,
    /// Points taken off the score.
    pub penalty: f64,
    /// The facts that made it apply.
    pub evidence: String,
}

/// An operator's override of a device's tier, until it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The tier the device is held at.
    pub tier: Tier,
    /// When the pin stops applying.
    #[serde(with = "humantime_serde")]
    pub expires_at: SystemTime,
    /// Why.
    pub reason: String,
    /// Who pinned it.
    pub by: String,
}

impl Pin {
    /// Whether the pin applies at `now`.
    pub fn is_active(&self, now: SystemTime) -> bool {
        now < self.expires_at
    }
}

/// A device's score, its tier and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assessment {
    /// The score.
    pub score: Score,
    /// The tier in force: the pinned one if a pin applies, else the one the score gives.
    pub tier: Tier,
    /// The tier the score alone gives.
    pub scored_tier: Tier,
    /// Every factor with a penalty, ordered by family, name and evidence.
    pub factors: Vec<Factor>,
    /// The pin that set the tier, if one applies.
    pub pin: Option<Pin>,
}

// === scoring ===

/// A penalty made safe to add: NaN counts as nothing, and one factor takes at most 100.
fn clean(p: f64) -> f64 {
    if p.is_nan() { 0.0 } else { p.clamp(0.0, 100.0) }
}

fn ago(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s ago"),
        120..7200 => format!("{}min ago", s / 60),
        7200..172_800 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// Scores `facts` under `config` at `now`, ignoring pins.
pub fn score(facts: &Facts, config: &ScoreConfig, now: SystemTime) -> Assessment {
    let w = config.weights();
    let mut factors = Vec::new();
    let mut add = |family, name: &str, penalty: f64, evidence: String| {
        let penalty = clean(penalty);
        if penalty > 0.0 {
            factors.push(Factor {
                family,
                name: name.to_owned(),
                penalty,
                evidence,
            });
        }
    };

    // Identity.
    match facts.identity {
        IdentityAssurance::Idevid => add(
            Family::Identity,
            "manufacturer certificate",
            w.identity_idevid,
            "enrolled with a hardware-backed manufacturer certificate (IDevID)".into(),
        ),
        IdentityAssurance::Token => add(
            Family::Identity,
            "enrollment token",
            w.identity_token,
            "enrolled with a token, not a manufacturer certificate".into(),
        ),
        IdentityAssurance::LegacyPassword => add(
            Family::Identity,
            "legacy password",
            w.identity_legacy_password,
            "connects with a username and password, not a certificate".into(),
        ),
    }

    // Software.
    match &facts.firmware {
        Some(fw) => match fw.status {
            FirmwareStatus::Current => {}
            FirmwareStatus::Behind { releases } => add(
                Family::Software,
                "firmware behind",
                (w.firmware_behind
                    + w.firmware_behind_per_release * f64::from(releases.saturating_sub(1)))
                .min(w.firmware_behind_max),
                format!(
                    "firmware {} is {releases} supported release{} behind the current one",
                    fw.version,
                    if releases == 1 { "" } else { "s" }
                ),
            ),
            FirmwareStatus::Unsupported => add(
                Family::Software,
                "firmware unsupported",
                w.firmware_unsupported,
                format!(
                    "firmware {} is older than the current release and no longer supported",
                    fw.version
                ),
            ),
            FirmwareStatus::Unknown => add(
                Family::Software,
                "firmware unknown",
                w.firmware_unknown,
                format!(
                    "firmware {:?} is not a release the model profile knows",
                    fw.version
                ),
            ),
        },
        None if facts.posture_reported => add(
            Family::Software,
            "firmware unknown",
            w.firmware_unknown,
            "posture reported without a firmware version".into(),
        ),
        // Covered by the "posture never reported" factor.
        None => {}
    }

    // Configuration.
    if !facts.posture_reported {
        add(
            Family::Configuration,
            "posture never reported",
            w.posture_never_reported,
            "the device has never reported its posture; scored on what is known".into(),
        );
    }
    match facts.default_credentials {
        DefaultCredentials::Unchanged => add(
            Family::Configuration,
            "default credentials",
            w.default_credentials_unchanged,
            "the model's default credentials still work".into(),
        ),
        DefaultCredentials::Unknown if facts.posture_reported => add(
            Family::Configuration,
            "default credentials unknown",
            w.default_credentials_unknown,
            "posture does not say whether the default credentials were changed".into(),
        ),
        _ => {}
    }
    for service in &facts.open_services {
        let key = service.to_ascii_lowercase();
        let penalty = w.services.get(&key).copied().unwrap_or(w.service_other);
        add(
            Family::Configuration,
            "open service",
            penalty,
            format!("reports {key} open"),
        );
    }
    if let Some(key) = facts.certificate_key {
        let weak = match key {
            CertificateKey::Ed25519 => false,
            CertificateKey::Ecdsa { bits } => bits < config.min_ec_bits(),
            CertificateKey::Rsa { bits } => bits < config.min_rsa_bits(),
        };
        if weak {
            add(
                Family::Configuration,
                "weak certificate key",
                w.weak_key,
                format!(
                    "certificate key is {key}; at least RSA {} or ECDSA {} bits expected",
                    config.min_rsa_bits(),
                    config.min_ec_bits()
                ),
            );
        }
    }
    if let Some(skew) = facts.clock_skew_secs
        && skew.unsigned_abs() > config.clock_skew_tolerance().as_secs()
    {
        add(
            Family::Configuration,
            "clock skew",
            w.clock_skew,
            format!(
                "clock is {}s {} the platform's (tolerance {}s)",
                skew.unsigned_abs(),
                if skew > 0 { "ahead of" } else { "behind" },
                config.clock_skew_tolerance().as_secs()
            ),
        );
    }

    // Behaviour, decayed.
    for b in &facts.behaviour {
        let age = now.duration_since(b.at).unwrap_or(Duration::ZERO);
        let base = clean(b.penalty) * w.behaviour;
        let decayed = base * b.remaining(config.half_life(), now);
        add(
            Family::Behaviour,
            &b.name,
            decayed,
            format!(
                "{} ({}; {:.1} decayed to {:.1})",
                b.evidence,
                ago(age),
                clean(base),
                clean(decayed)
            ),
        );
    }

    // Everything else.
    for x in &facts.external {
        add(
            x.family,
            &x.name,
            clean(x.penalty) * w.external,
            x.evidence.clone(),
        );
    }

    factors.sort_by(|a, b| {
        (a.family, &a.name, &a.evidence)
            .cmp(&(b.family, &b.name, &b.evidence))
            .then(a.penalty.total_cmp(&b.penalty))
    });
    let total: f64 = factors.iter().map(|f| f.penalty).sum();
    let score = Score::saturating_from_f64(100.0 - total);
    let tier = config.thresholds().tier(score);
    Assessment {
        score,
        tier,
        scored_tier: tier,
        factors,
        pin: None,
    }
}

/// Scores `facts`, then applies `pin` if it is still active at `now`: the tier becomes the
/// pinned one, the score stays what the facts give, and the assessment names the pin.
pub fn assess(
    facts: &Facts,
    config: &ScoreConfig,
    pin: Option<&Pin>,
    now: SystemTime,
) -> Assessment {
    let mut a = score(facts, config, now);
    if let Some(pin) = pin.filter(|p| p.is_active(now)) {
        a.tier = pin.tier;
        a.pin = Some(pin.clone());
    }
    a
}

// === impl Display for Assessment ===

impl fmt::Display for Assessment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "score {}/100, tier {}", self.score, self.tier)?;
        if let Some(pin) = &self.pin {
            writeln!(
                f,
                "pinned to {} by {} until {}: {} (the score alone gives {})",
                pin.tier,
                pin.by,
                humantime_serde::re::humantime::format_rfc3339_seconds(pin.expires_at),
                pin.reason,
                self.scored_tier
            )?;
        }
        if self.factors.is_empty() {
            return writeln!(f, "no penalties");
        }
        for x in &self.factors {
            writeln!(
                f,
                "  {:>6}  {}: {}: {}",
                format!("-{:.1}", x.penalty),
                x.family,
                x.name,
                x.evidence
            )?;
        }
        Ok(())
    }
}
