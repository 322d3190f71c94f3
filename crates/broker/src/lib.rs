//! Gatehouse's MQTT data plane: listeners, mutual TLS, sessions, the router, QoS 0/1/2,
//! retained and will messages, and the two hooks the rest of Gatehouse hangs on:
//! the [`Gate`] consulted on every CONNECT, SUBSCRIBE and PUBLISH, and the [`Tap`] that
//! reports what happened.
//!
//! The design decision that shapes it: the gate is an immutable snapshot swapped
//! atomically, never a lock on the hot path, and a change to it is pushed to sessions
//! that are already open — a revoked or quarantined device loses what it may do at once,
//! not at its next reconnect. See `docs/broker.md` for the moving parts.

mod broker;
mod budget;
mod config;
mod connection;
mod gate;
mod listener;
mod metrics;
mod persist;
mod router;
mod sanctions;
mod session;
mod tap;

pub use broker::{AuthError, Authenticator, Broker, PASSWORD_CHECK_SHED, PasswordCheck};
pub use config::{BrokerConfig, ClientIdPolicy, Limits};
pub use gate::{
    AllowAll, Decision, DevicePolicy, Gate, PatternError, PublishContext, StaticPolicy,
    TopicPattern,
};
pub use metrics::Metrics;
pub use persist::PersistError;
pub use sanctions::{BanInfo, ThrottleInfo};
pub use tap::Tap;
