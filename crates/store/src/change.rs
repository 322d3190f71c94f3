//! The change feed: typed records of what changed in the registry that the running loop
//! must act on, written in the same transaction as the audit record that explains them.
//!
//! The audit log is evidence; it is not read to find out what to do. A server follows the
//! feed instead (`gatehouse-runtime`'s follower): a change written by another process — the
//! command line writes the database directly — reaches the live data plane through it.
//!
//! Two kinds of writer: the registry's own write methods attach the change that their
//! write is (a pin, a revocation, a new policy set), and a caller that asks the running
//! server to do something only it can (carry out an approved action, lift a ban in the
//! broker) attaches one to its audit entry with [`AuditEntry::change`](crate::AuditEntry::change).

use std::net::IpAddr;

use gatehouse_types::DeviceRef;
use serde::{Deserialize, Serialize};

use crate::{ActionId, DeviceStatus, ModelId};

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A new policy set is in force.
    PolicySet,
    /// A model was added or its profile changed.
    ModelProfile {
        /// The model.
        model: ModelId,
    },
    /// A device's status changed (revoked, reinstated, blocked, ...).
    DeviceStatus {
        /// The device.
        device: DeviceRef,
        /// Its new status.
        status: DeviceStatus,
    },
    /// A device was pinned to a tier, or its pin was lifted.
    DevicePin {
        /// The device.
        device: DeviceRef,
        /// Whether a pin is now set.
        pinned: bool,
    },
    /// Certificates were revoked: the CRLs must be re-signed and these devices' sessions
    /// ended.
    CertificatesRevoked {
        /// The devices whose certificates were revoked.
        devices: Vec<DeviceRef>,
    },
    /// A ban on an address was lifted.
    BanLifted {
        /// The address.
        addr: IpAddr,
    },
    /// An operator approved an action waiting for approval: the running server carries it
    /// out.
    ActionApproved {
        /// The action.
        action: ActionId,
    },
    /// An operator reversed an action whose registry side is already undone: the running
    /// server undoes its data-plane side (lifts the broker's ban or throttle).
    ActionReversed {
        /// The action.
        action: ActionId,
    },
}

/// A change as the feed holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// Position in the feed, from 1, increasing.
    pub seq: u64,
    /// The audit record written with it.
    pub audit_seq: u64,
    /// Unix seconds.
    pub at: i64,
    /// Who made it (the audit record's actor).
    pub actor: String,
    /// What changed.
    pub change: Change,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_as_tagged_json() {
        let d: DeviceRef = "acme/pump-1".parse().expect("device ref");
        let all = [
            Change::PolicySet,
            Change::ModelProfile {
                model: ModelId::new("thermo-2").expect("model id"),
            },
            Change::DeviceStatus {
                device: d.clone(),
                status: DeviceStatus::Revoked,
            },
            Change::DevicePin {
                device: d.clone(),
                pinned: true,
            },
            Change::CertificatesRevoked {
                devices: vec![d.clone()],
            },
            Change::BanLifted {
                addr: "192.0.2.7".parse().expect("address"),
            },
            Change::ActionApproved {
                action: ActionId(3),
            },
            Change::ActionReversed {
                action: ActionId(4),
            },
        ];
        for c in all {
            let text = serde_json::to_string(&c).expect("encode");
            assert!(text.starts_with("{\"kind\":"), "{text}");
            let back: Change = serde_json::from_str(&text).expect("decode");
            assert_eq!(back, c);
        }
    }
}
