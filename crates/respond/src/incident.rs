//! Incidents: findings of one subject and kind, grouped, and their lifecycle.
//!
//! ```text
//!   open ──▶ acknowledged ──▶ resolved
//!     └───────────────────────▲
//! ```
//!
//! A finding joins the open or acknowledged incident with the same
//! [`Finding::group_key`](gatehouse_types::Finding::group_key) (its device, else its source
//! address, and its kind). A resolved incident is never reopened: a finding of its group
//! that arrives after resolution opens a **new** incident, so a resolution stays a fact
//! of the record and the new activity gets its own count, timeline and response.
//!
//! The rules are pure functions here; the store applies the same ones in the transaction
//! that changes the state ([`gatehouse_store::Registry::set_incident_state`]).

pub use gatehouse_store::{
    ActionFilter, ActionId, ActionRecord, ActionState, Ban, FindingId, IllegalTransition, Incident,
    IncidentDetail, IncidentFilter, IncidentId, IncidentState, RecordedFinding, StoredAction,
    StoredFinding, TimelineEntry, TimelineEvent,
};

/// The incident lifecycle: `open → acknowledged`, `open → resolved`,
/// `acknowledged → resolved`. Anything else is refused, including staying in the same
/// state and leaving `resolved`.
pub fn transition(
    from: IncidentState,
    to: IncidentState,
) -> Result<IncidentState, IllegalTransition> {
    from.transition(to)
}

/// The action lifecycle: `pending_approval → done | failed | rejected`,
/// `done → reversed`, `failed → done | rejected`.
pub fn action_transition(
    from: ActionState,
    to: ActionState,
) -> Result<ActionState, IllegalTransition> {
    from.transition(to)
}

/// Whether a new finding of an incident's group joins it (`true`) or opens a new
/// incident (`false`).
pub fn joins(state: IncidentState) -> bool {
    state.is_active()
}

#[cfg(test)]
mod tests {
    use super::*;
    use IncidentState::*;

    #[test]
    fn every_incident_transition_is_allowed_or_refused_as_documented() {
        let cases = [
            (Open, Open, false),
            (Open, Acknowledged, true),
            (Open, Resolved, true),
            (Acknowledged, Open, false),
            (Acknowledged, Acknowledged, false),
            (Acknowledged, Resolved, true),
            (Resolved, Open, false),
            (Resolved, Acknowledged, false),
            (Resolved, Resolved, false),
        ];
        assert_eq!(
            cases.len(),
            IncidentState::ALL.len() * IncidentState::ALL.len()
        );
        for (from, to, allowed) in cases {
            match transition(from, to) {
                Ok(s) => {
                    assert!(allowed, "{from} -> {to} must be refused");
                    assert_eq!(s, to);
                }
                Err(e) => {
                    assert!(!allowed, "{from} -> {to} must be allowed");
                    assert_eq!((e.from, e.to), (from.as_str(), to.as_str()));
                    assert_eq!(
                        e.to_string(),
                        format!("incident cannot go from {from} to {to}")
                    );
                }
            }
        }
    }

    #[test]
    fn a_resolved_incident_takes_no_new_findings() {
        assert!(joins(Open));
        assert!(joins(Acknowledged));
        assert!(!joins(Resolved));
    }

    #[test]
    fn every_action_transition_is_allowed_or_refused_as_documented() {
        use ActionState::*;
        let allowed = [
            (PendingApproval, Done),
            (PendingApproval, Failed),
            (PendingApproval, Rejected),
            (Done, Reversed),
            (Failed, Done),
            (Failed, Rejected),
        ];
        let mut n = 0;
        for from in ActionState::ALL {
            for to in ActionState::ALL {
                let ok = allowed.contains(&(from, to));
                assert_eq!(action_transition(from, to).is_ok(), ok, "{from} -> {to}");
                n += usize::from(ok);
            }
        }
        assert_eq!(n, allowed.len());
        for s in [Reversed, Rejected] {
            assert!(
                ActionState::ALL
                    .iter()
                    .all(|to| action_transition(s, *to).is_err()),
                "{s} is final"
            );
        }
    }
}
