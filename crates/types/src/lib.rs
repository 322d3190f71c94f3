//! Shared vocabulary of Gatehouse: identifiers, validated MQTT topic newtypes, the
//! observation events that the broker emits for the detection stage, and the trust
//! [`Tier`] and [`Score`] that the trust stage hands to the rest of the loop.
//!
//! The one design decision that shapes this crate: anything that must be validated
//! (a device id, a topic, a topic filter) is a newtype that can only be built through
//! its validating constructor, so code that holds one never checks it again.

mod finding;
mod id;
mod observation;
mod pattern;
mod topic;
mod trust;

pub use finding::{Finding, Severity, SeverityError};
pub use id::{DeviceId, DeviceRef, IdError, Identity, IdentitySource, TenantId};
pub use observation::{
    AuthFailure, ConnectObservation, DisconnectCause, Observation, PublishObservation,
    SubscribeObservation, TlsFacts,
};
pub use pattern::{PatternBinding, PatternError, TopicPattern};
pub use topic::{Topic, TopicError, TopicFilter, matches};
pub use trust::{Score, ScoreError, Tier, TierError};
