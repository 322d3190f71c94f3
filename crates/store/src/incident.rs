//! The respond stage's records: incidents (findings grouped by subject and kind), the
//! findings in them, the actions taken on them, and banned source addresses.
//!
//! The lifecycle rules live here, as pure functions, because the store enforces them in
//! the same transaction as the change: [`IncidentState::transition`] and
//! [`ActionState::transition`]. The respond crate re-exports them.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use gatehouse_types::{DeviceRef, Finding, Severity, TenantId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

macro_rules! row_id {
    ($(#[$m:meta])* $name:ident, $prefix:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The number.
            pub fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            /// `inc-42`, `act-7`, `fnd-3`: the id as people and audit subjects see it.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "-{}"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = RespondParseError;
            /// Accepts `42` and `inc-42` (with this type's prefix).
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let digits = s.strip_prefix(concat!($prefix, "-")).unwrap_or(s);
                digits
                    .parse::<u64>()
                    .map(Self)
                    .map_err(|_| RespondParseError {
                        what: stringify!($name),
                        value: s.to_owned(),
                    })
            }
        }
    };
}

row_id!(
    /// An incident's id, assigned by the store (1, 2, 3, ...).
    IncidentId,
    "inc"
);
row_id!(
    /// A recorded action's id, assigned by the store.
    ActionId,
    "act"
);
row_id!(
    /// A stored finding's id, assigned by the store.
    FindingId,
    "fnd"
);

/// A name or id that does not parse as the respond record it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {what}")]
pub struct RespondParseError {
    /// What was expected (`IncidentState`, `IncidentId`, ...).
    pub what: &'static str,
    /// The text offered.
    pub value: String,
}

/// Where an incident is in its lifecycle: `open → acknowledged → resolved`, or
/// `open → resolved` directly. A resolved incident stays resolved: a new finding of the
/// same group opens a new incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    /// New findings are grouped into it; nobody has looked yet.
    Open,
    /// An operator is on it; new findings are still grouped into it.
    Acknowledged,
    /// Closed. New findings of its group open a new incident.
    Resolved,
}

/// A change of state that the lifecycle does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{what} cannot go from {from} to {to}")]
pub struct IllegalTransition {
    /// `incident` or `action`.
    pub what: &'static str,
    /// The state it is in.
    pub from: &'static str,
    /// The state asked for.
    pub to: &'static str,
}

/// `Display` and `FromStr` for a state enum through its `as_str` and `ALL`.
macro_rules! text_enum {
    ($t:ident) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $t {
            type Err = RespondParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| RespondParseError {
                        what: stringify!($t),
                        value: s.to_owned(),
                    })
            }
        }
    };
}

// === impl IncidentState ===

impl IncidentState {
    /// Every state, in lifecycle order.
    pub const ALL: [Self; 3] = [Self::Open, Self::Acknowledged, Self::Resolved];

    /// The name used in storage, the API and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Acknowledged => "acknowledged",
            Self::Resolved => "resolved",
        }
    }

    /// Whether new findings of the incident's group are still grouped into it.
    pub fn is_active(self) -> bool {
        !matches!(self, Self::Resolved)
    }

    /// The lifecycle rule: `open → acknowledged`, `open → resolved`,
    /// `acknowledged → resolved`. Everything else (staying put, going back, leaving
    /// `resolved`) is refused.
    pub fn transition(self, to: Self) -> Result<Self, IllegalTransition> {
        use IncidentState::*;
        match (self, to) {
            (Open, Acknowledged) | (Open, Resolved) | (Acknowledged, Resolved) => Ok(to),
            _ => Err(IllegalTransition {
                what: "incident",
                from: self.as_str(),
                to: to.as_str(),
            }),
        }
    }
}

text_enum!(IncidentState);

/// Where a response action is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionState {
    /// Planned by an `approve` playbook; waits for an operator.
    PendingApproval,
    /// Carried out.
    Done,
    /// Carrying it out failed (the note says why).
    Failed,
    /// Carried out, then undone (released, unthrottled, unbanned, reinstated).
    Reversed,
    /// An operator refused a pending action.
    Rejected,
}

// === impl ActionState ===

impl ActionState {
    /// Every state.
    pub const ALL: [Self; 5] = [
        Self::PendingApproval,
        Self::Done,
        Self::Failed,
        Self::Reversed,
        Self::Rejected,
    ];

    /// The name used in storage and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingApproval => "pending_approval",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Reversed => "reversed",
            Self::Rejected => "rejected",
        }
    }

    /// Whether an action may be recorded in this state: `pending_approval`, `done` or
    /// `failed` (an action is reversed or rejected only after it was recorded).
    pub fn is_initial(self) -> bool {
        matches!(self, Self::PendingApproval | Self::Done | Self::Failed)
    }

    /// The rule: `pending_approval → done | failed | rejected`, `done → reversed`,
    /// `failed → done` (a retry that worked) or `failed → rejected` (given up).
    /// `reversed` and `rejected` are final.
    pub fn transition(self, to: Self) -> Result<Self, IllegalTransition> {
        use ActionState::*;
        match (self, to) {
            (PendingApproval, Done | Failed | Rejected)
            | (Done, Reversed)
            | (Failed, Done | Rejected) => Ok(to),
            _ => Err(IllegalTransition {
                what: "action",
                from: self.as_str(),
                to: to.as_str(),
            }),
        }
    }
}

text_enum!(ActionState);

/// Findings of one subject (a device, else a source address) and one kind, grouped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Its id.
    pub id: IncidentId,
    /// The device's tenant; `None` for an incident about a source address only.
    pub tenant: Option<TenantId>,
    /// The device it is about, if any.
    pub device: Option<DeviceRef>,
    /// The source address of its first finding, if known.
    pub peer: Option<IpAddr>,
    /// The findings' kind (`credential_brute_force`).
    pub kind: String,
    /// [`Finding::group_key`] of its findings.
    pub group_key: String,
    /// Where it is in its lifecycle.
    pub state: IncidentState,
    /// The worst severity among its findings.
    pub max_severity: Severity,
    /// How many findings were grouped into it (stored or not).
    pub finding_count: u32,
    /// How many of them are stored (at most the bound given to `record_findings`).
    pub stored_findings: u32,
    /// The earliest finding's time.
    #[serde(with = "time::serde::timestamp")]
    pub first_seen: OffsetDateTime,
    /// The latest finding's time.
    #[serde(with = "time::serde::timestamp")]
    pub last_seen: OffsetDateTime,
    /// When it was opened (the time given to `record_findings`).
    #[serde(with = "time::serde::timestamp")]
    pub opened_at: OffsetDateTime,
    /// When it last changed (a finding, a state change).
    #[serde(with = "time::serde::timestamp")]
    pub updated_at: OffsetDateTime,
    /// When it was resolved.
    #[serde(with = "time::serde::timestamp::option")]
    pub resolved_at: Option<OffsetDateTime>,
    /// The first finding's summary.
    pub summary: String,
    /// The first MITRE ATT&CK technique among its findings.
    pub technique: Option<String>,
}

/// What `record_findings` did with one finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedFinding {
    /// The stored finding's id; `None` when the incident already held its bound of
    /// findings (the finding was counted, not stored).
    pub finding_id: Option<FindingId>,
    /// The incident it was grouped into.
    pub incident_id: IncidentId,
    /// Whether that incident was opened by this finding.
    pub new_incident: bool,
    /// How many findings the incident holds now, this one included.
    pub findings_in_incident: u32,
}

/// A finding as stored in an incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredFinding {
    /// Its id.
    pub id: FindingId,
    /// The incident it belongs to.
    pub incident: IncidentId,
    /// The finding, exactly as recorded.
    pub finding: Finding,
}

impl StoredFinding {
    /// Largest finding stored, in bytes of JSON.
    pub const MAX_BYTES: usize = 64 * 1024;
}

/// Which incidents `list_incidents` returns, newest activity first. Empty fields match
/// everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncidentFilter {
    /// Only incidents about this tenant's devices (address-only incidents have no
    /// tenant and are left out).
    pub tenant: Option<TenantId>,
    /// Only incidents about this device.
    pub device: Option<DeviceRef>,
    /// Only incidents in this state.
    pub state: Option<IncidentState>,
    /// At most this many (0 means [`IncidentFilter::DEFAULT_LIMIT`]; capped at
    /// [`IncidentFilter::MAX_LIMIT`]).
    pub limit: usize,
}

impl IncidentFilter {
    /// The number returned when `limit` is 0.
    pub const DEFAULT_LIMIT: usize = 100;
    /// The most returned by one call.
    pub const MAX_LIMIT: usize = 1000;
}

/// An incident with its stored findings and its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentDetail {
    /// The incident.
    pub incident: Incident,
    /// Its stored findings, oldest first.
    pub findings: Vec<StoredFinding>,
    /// Its findings, actions and state changes in time order (ties in the order they
    /// were recorded).
    pub timeline: Vec<TimelineEntry>,
}

/// One line of an incident's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// When (a finding's own time; the recording time for the rest).
    #[serde(with = "time::serde::timestamp")]
    pub at: OffsetDateTime,
    /// What happened.
    pub event: TimelineEvent,
}

/// What happened to an incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TimelineEvent {
    /// A stored finding was grouped into it.
    Finding {
        /// The finding.
        finding: FindingId,
        /// Its kind.
        kind: String,
        /// Its severity.
        severity: Severity,
        /// Its summary.
        summary: String,
    },
    /// Its state changed (`from` is `None` when it was opened).
    State {
        /// The state before.
        from: Option<IncidentState>,
        /// The state after.
        to: IncidentState,
        /// Who: `system`, `operator:alice`.
        by: String,
        /// Why, if given.
        note: Option<String>,
    },
    /// An action was recorded, or its state changed.
    Action {
        /// The action.
        action: ActionId,
        /// Its kind (`quarantine`, `release`, ...).
        kind: String,
        /// The state it entered.
        state: ActionState,
        /// Who.
        by: String,
        /// Why, if given.
        note: Option<String>,
    },
}

/// A response action to record.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRecord {
    /// The incident it answers, if any (an operator's ban may answer none).
    pub incident: Option<IncidentId>,
    /// The device it acts on, if any.
    pub device: Option<DeviceRef>,
    /// The source address it acts on, if any.
    pub peer: Option<IpAddr>,
    /// What: `throttle`, `quarantine`, `revoke`, `disconnect`, `ban`, `notify`, or a
    /// reversal (`release`, `unthrottle`, `unban`, `reinstate`).
    pub kind: String,
    /// Its parameters (rate, duration, reason, webhook), as JSON.
    pub params: serde_json::Value,
    /// The state it starts in ([`ActionState::is_initial`]).
    pub state: ActionState,
    /// The playbook that planned it; `None` for an operator's own action.
    pub playbook: Option<String>,
    /// Who recorded it: `system`, `operator:alice`.
    pub by: String,
    /// When its effect ends by itself (a timed quarantine, throttle or ban), if it does.
    pub expires_at: Option<OffsetDateTime>,
}

/// A recorded action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredAction {
    /// Its id.
    pub id: ActionId,
    /// The incident it answers, if any.
    pub incident: Option<IncidentId>,
    /// The device it acts on, if any.
    pub device: Option<DeviceRef>,
    /// The source address it acts on, if any.
    pub peer: Option<IpAddr>,
    /// What.
    pub kind: String,
    /// Its parameters.
    pub params: serde_json::Value,
    /// Where it is.
    pub state: ActionState,
    /// The playbook that planned it.
    pub playbook: Option<String>,
    /// Who recorded it.
    pub created_by: String,
    /// When it was recorded.
    #[serde(with = "time::serde::timestamp")]
    pub created_at: OffsetDateTime,
    /// Who last changed its state (the creator until then).
    pub updated_by: String,
    /// When its state last changed.
    #[serde(with = "time::serde::timestamp")]
    pub updated_at: OffsetDateTime,
    /// The note of the last state change, if any.
    pub note: Option<String>,
    /// When its effect ends by itself, if it does.
    #[serde(with = "time::serde::timestamp::option")]
    pub expires_at: Option<OffsetDateTime>,
}

impl StoredAction {
    /// Largest `params` document stored, in bytes of JSON.
    pub const MAX_PARAMS_BYTES: usize = 16 * 1024;
}

/// Which actions `list_actions` returns, oldest first. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionFilter {
    /// Only this incident's actions.
    pub incident: Option<IncidentId>,
    /// Only actions in this state.
    pub state: Option<ActionState>,
    /// Only actions on this device.
    pub device: Option<DeviceRef>,
    /// Only actions on this tenant's devices.
    pub tenant: Option<TenantId>,
    /// Only actions whose `expires_at` is at or before this time (the timed actions due
    /// for reversal, with `state: Some(Done)`).
    pub expires_by: Option<OffsetDateTime>,
    /// Only actions whose `expires_at` is after this time (timed actions still in force,
    /// with `state: Some(Done)`: what a restart must put back).
    pub expires_after: Option<OffsetDateTime>,
    /// Only actions of this kind (`throttle`, `ban`...).
    pub kind: Option<String>,
    /// At most this many (0 means [`IncidentFilter::DEFAULT_LIMIT`]; capped at
    /// [`IncidentFilter::MAX_LIMIT`]).
    pub limit: usize,
}

/// A banned source address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    /// The address.
    pub addr: IpAddr,
    /// When the ban ends.
    #[serde(with = "time::serde::timestamp")]
    pub until: OffsetDateTime,
    /// Why.
    pub reason: String,
    /// When it was put (or last extended).
    #[serde(with = "time::serde::timestamp")]
    pub created_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_display_with_their_prefix_and_parse_both_ways() {
        assert_eq!(IncidentId(42).to_string(), "inc-42");
        assert_eq!("inc-42".parse::<IncidentId>(), Ok(IncidentId(42)));
        assert_eq!("42".parse::<IncidentId>(), Ok(IncidentId(42)));
        assert!("act-42".parse::<IncidentId>().is_err());
        assert_eq!("act-7".parse::<ActionId>(), Ok(ActionId(7)));
        assert!("".parse::<FindingId>().is_err());
    }

    #[test]
    fn states_round_trip_by_name() {
        for s in IncidentState::ALL {
            assert_eq!(s.as_str().parse::<IncidentState>(), Ok(s));
        }
        for s in ActionState::ALL {
            assert_eq!(s.as_str().parse::<ActionState>(), Ok(s));
        }
        assert!("closed".parse::<IncidentState>().is_err());
    }

    #[test]
    fn action_transitions() {
        use ActionState::*;
        let allowed = [
            (PendingApproval, Done),
            (PendingApproval, Failed),
            (PendingApproval, Rejected),
            (Done, Reversed),
            (Failed, Done),
            (Failed, Rejected),
        ];
        for from in ActionState::ALL {
            for to in ActionState::ALL {
                let ok = allowed.contains(&(from, to));
                assert_eq!(from.transition(to).is_ok(), ok, "{from} -> {to}");
            }
        }
    }
}
