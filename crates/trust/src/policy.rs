//! Cedar policies compiled into per-device verdicts.
//!
//! The one design decision: Cedar is evaluated when a verdict is *compiled*, never on the
//! hot path. The resources are the device's own topic patterns (its model profile's rules
//! and the platform's reserved topics, `{device}` and `{tenant}` bound), each evaluated
//! once for the action it is listed under. The result, a [`Verdict`], lists the patterns
//! allowed and refused; a PUBLISH is then matched against those patterns, and a SUBSCRIBE
//! filter must be covered by an allowed pattern and overlap no refused one. A verdict is
//! immutable and meant to live in an `Arc` swapped atomically: a score or policy change
//! compiles a new one, with a new epoch and an empty decision cache.
//!
//! Rates are not Cedar's job: a verdict scales the profile's rates by the tier
//! ([`rate_factor`]), and sessions enforce them with [`TokenBucket`]s.

mod bucket;
mod engine;
pub mod limits;
mod table;
mod topic;
mod verdict;

use std::collections::BTreeSet;

use gatehouse_types::{DeviceRef, Score, Tier};
use serde::{Deserialize, Serialize};

pub use bucket::TokenBucket;
pub use engine::{DEFAULT_POLICIES, PolicyEngine, PolicyError, PolicySchema, SCHEMA};
pub use limits::PolicyLimits;
pub use table::{DeviceVerdict, PublishCheck, VerdictTable};
pub use topic::{PatternError, bind, covers, intersects};
pub use verdict::{
    AllowedTopic, CLASS_CACHE_ENTRIES, CompileCache, RESERVED, ReservedTopic, Verdict, compile,
    compile_shared,
};

/// How much of a profile rate a tier keeps: all of it when trusted, half otherwise (and
/// nothing when blocked, which may not connect anyway).
pub fn rate_factor(tier: Tier) -> f64 {
    match tier {
        Tier::Trusted => 1.0,
        Tier::Restricted | Tier::Quarantined => 0.5,
        Tier::Blocked => 0.0,
    }
}

/// What the policies know about a device: the principal's attributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceAttrs {
    /// The device, within its tenant.
    pub device: DeviceRef,
    /// Its model, as named in its model profile.
    pub model: String,
    /// Its trust tier.
    pub tier: Tier,
    /// Its trust score.
    pub score: Score,
    /// Operator-assigned tags.
    pub tags: BTreeSet<String>,
    /// The firmware version it runs ("" when unknown).
    pub firmware: String,
    /// How its identity was established: "idevid", "token" or "password".
    pub assurance: String,
}

/// What a profile topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicKind {
    /// Measurements the device reports.
    Telemetry,
    /// Instructions to the device (or its answers to them).
    Command,
    /// Anything else the profile lists.
    Other,
    /// The platform's own `$gatehouse/{device}/...` topics; never from a profile.
    Reserved,
}

impl TopicKind {
    /// The kind as the policies name it (`resource.kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Telemetry => "telemetry",
            Self::Command => "command",
            Self::Other => "other",
            Self::Reserved => "reserved",
        }
    }
}

/// One topic rule of a model profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicRule {
    /// A topic filter with `{device}` and `{tenant}` placeholders, each a whole level.
    pub pattern: String,
    /// What the topic carries.
    pub kind: TopicKind,
    /// Messages per second allowed at full trust; `None` for no per-topic limit.
    pub rate_per_sec: Option<f64>,
    /// How many messages may come at once; defaults to the rate rounded up (at least 1).
    pub burst: Option<u32>,
}

/// A model profile's topics, as verdict compilation needs them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileTopics {
    /// Topics the device publishes to.
    pub publish: Vec<TopicRule>,
    /// Topics the device subscribes to.
    pub subscribe: Vec<TopicRule>,
}

/// The actions of the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Open a session.
    Connect,
    /// Send a PUBLISH.
    Publish,
    /// Hold a subscription.
    Subscribe,
}

impl Action {
    /// The action's id in the schema.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
        }
    }
}

impl From<&crate::profile::ModelProfile> for ProfileTopics {
    /// The topics of a validated model profile, as verdict compilation takes them: each
    /// rule under its direction, its kind, and its rate as messages per second with its
    /// burst.
    fn from(profile: &crate::profile::ModelProfile) -> Self {
        use crate::profile::{Direction, TopicKind as ProfileKind};
        let mut out = ProfileTopics::default();
        for rule in profile.topics() {
            let converted = TopicRule {
                pattern: rule.pattern.as_str().to_owned(),
                kind: match rule.kind {
                    ProfileKind::Telemetry => TopicKind::Telemetry,
                    ProfileKind::Command => TopicKind::Command,
                },
                rate_per_sec: rule.rate.as_ref().map(crate::profile::Rate::per_second),
                burst: rule.rate.as_ref().map(|r| r.burst),
            };
            match rule.direction {
                Direction::Publish => out.publish.push(converted),
                Direction::Subscribe => out.subscribe.push(converted),
            }
        }
        out
    }
}
