//! Gatehouse's running loop, apart from any HTTP surface.
//!
//! - [`trust`]: the registry's facts become scores, the scores verdicts, and the verdicts
//!   the broker's gate ([`TrustGate`]), kept in force on open sessions by [`TrustService`].
//! - [`detection`]: the broker's tap feeds the detection engine; findings lower trust and
//!   run the playbooks, whose actions (quarantine, throttle, ban, disconnect, revoke,
//!   notify) act on the data plane ([`DetectionService`]).
//! - [`revocation`]: revocations made durable in the registry are made to bite — CRLs
//!   signed, the MQTTS verifier rebuilt, live sessions ended ([`RevocationSync`]).
//! - [`fleet_history`]: message counters and mean scores over the last day.
//! - [`ops`]: what an operator, a playbook or the command line does to a device, one
//!   implementation and one audit record shape each.
//! - [`feed`]: one follower of the registry's typed change feed hands what other
//!   processes changed (the CLI writes the database directly) to the services above.
//!
//! The HTTP crate (`gatehouse-api`) calls into these services; nothing here depends on an
//! HTTP framework, so the loop can be driven by the API, the CLI or a change feed alike.

pub mod detection;
pub mod feed;
pub mod fleet_history;
pub mod ops;
pub mod revocation;
pub mod trust;

pub use detection::{
    ActionError, AddrRange, DetectionMetrics, DetectionService, DetectionSettings,
    SeverityPenalties,
};
pub use feed::{ChangeFeed, ChangeHandler, Follower, RegistryFeed};
pub use revocation::{RevocationMetrics, RevocationSync, SessionControl};
pub use trust::{
    TrustError, TrustGate, TrustMetrics, TrustService, TrustSettings, TrustView, view_offline,
};
