//! Storage for Gatehouse: the registry (tenants, manufacturers, models, claims, devices,
//! certificates, enrollment tokens, devices' trust state, policy sets), the respond
//! stage's incidents, actions and bans, and the append-only, hash-chained audit log.
//!
//! The trust engine's documents (a device's facts, pin and assessment) are stored as
//! JSON values whose shape the store does not know, so this crate does not depend on the
//! trust crate.
//!
//! The one design decision that shapes this crate: **a change and its audit record are
//! one commit.** Every mutating [`Registry`] method takes the [`AuditEntry`] that
//! describes it and writes both in one durable transaction, so "durable before it is
//! acknowledged, and audited" (invariant 4) is a single `Ok`. Events that change nothing
//! else (a refused enrollment) go through [`AuditLog::append`].
//!
//! The API is the [`Registry`] and [`AuditLog`] traits; [`SqliteStore`] is the embedded
//! backend (one SQLite file, WAL, `synchronous = FULL`). Every method **blocks**: async
//! code calls it inside `tokio::task::spawn_blocking`. Backends prove themselves with the
//! suites in [`conformance`]. Timestamps are stored as whole unix seconds; the audit
//! entry's `at` is the time of the change it records. The audit chain format, enough to
//! verify an export with another tool, is in `docs/store.md`.

pub mod audit;
pub mod change;
#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
mod hex;
mod incident;
mod model;
mod operator;
pub mod sqlite;
mod traits;

pub use audit::{AuditEntry, AuditRecord, Tamper, VerifyError, VerifyReport};
pub use change::{Change, ChangeRecord};
pub use error::{
    AuditError, BackendError, OpenError, ReadError, TokenEnrollError, TokenError, WriteError,
};
pub use incident::*;
pub use model::*;
pub use operator::*;
pub use sqlite::SqliteStore;
pub use traits::{AuditLog, OperatorStore, Registry};
