//! Gatehouse's detection stage: turns the broker's [`Observation`]s into [`Finding`]s.
//!
//! Each device has a [`Features`] record (rates over 1 s, 10 s and 60 s, payload size
//! moments, a topic sketch, counters of authentication failures, churn, wildcard probing,
//! out-of-profile and out-of-range traffic); each source address has a smaller record for
//! what happens before there is an identity. Named rules, each mapped to a MITRE ATT&CK for
//! ICS technique ([`Engine::rules`]), and statistical detectors (robust z-scores against
//! the model's cohort, bursts) read them and emit findings, deduplicated per subject and
//! rule within a cooldown.
//!
//! The design decision that shapes the crate: **per-device state is fixed-size and time
//! comes only from the observations.** A device costs the same few hundred bytes whatever
//! it does — rates are exponentially weighted averages, topic history is a Bloom sketch,
//! windows are decaying counters, and the address and device tables have a capacity with
//! least-recently-seen eviction — so an attacker cannot grow the engine's memory, and the
//! hot path does not allocate. The engine never reads a clock: every window and cooldown
//! is measured between the `at` of observations and ticks, so replaying a recorded trace
//! gives the same findings as the live run did.
//!
//! [`Observation`]: gatehouse_types::Observation
//! [`Finding`]: gatehouse_types::Finding

mod cohort;
mod config;
mod engine;
mod features;
mod payload;
mod profile;
mod rules;
mod table;

pub use cohort::{Baseline, Robust};
pub use config::{
    BeaconingConfig, BruteForceConfig, BurstConfig, ClonedIdentityConfig, CohortConfig,
    CohortDeviationConfig, ConfigError, ConnectFloodConfig, DetectConfig, MalformedConfig,
    PublishFloodConfig, ReadingJumpConfig, SlowConnectionConfig, Toggle, TopicScanningConfig,
    WildcardConfig,
};
pub use engine::{Engine, Grants};
pub use features::{
    Decay, FIELD_SLOTS, Features, FieldStat, Intervals, Moments, RATE_WINDOWS, Rates, TopicSketch,
    W1, W10, W60,
};
pub use profile::{FieldSpec, ProfileView};
pub use rules::{RULES, RuleInfo};
