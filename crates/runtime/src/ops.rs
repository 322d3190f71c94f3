//! Operations: what an operator, a playbook or the command line does to a device, with one
//! implementation each and one audit record shape each.
//!
//! An operation has a registry side, written here, and a live side, which the running
//! server applies: at once when it is the caller (the REST API, the dashboard, a playbook,
//! through [`crate::TrustService`]), or from the change feed when the caller is another
//! process (the command line), since the registry write carries its typed change.
//!
//! Pins, lifting bans, revoking and reinstating devices, rejecting actions and storing
//! policy sets so far; the other operations are still carried out where they were (see
//! `docs/architecture.md`).

use std::net::IpAddr;
use std::time::SystemTime;

use gatehouse_store::{
    ActionId, ActionState, AuditEntry, Ban, Certificate, Change, Device, DeviceStatus, DeviceTrust,
    PolicySetRecord, Registry, RevocationReason, StoredAction, WriteError,
};

use crate::ActionError;
use gatehouse_trust::score::Pin;
use gatehouse_types::DeviceRef;
use time::OffsetDateTime;

/// The audit record of pinning `d` (`Some`) or lifting its pin (`None`), by `actor`:
/// action `pin` with the pin's reason and the pin as detail, or `unpin` with `reason`.
/// It carries the change, so another process's pin reaches a running server.
pub fn pin_record(
    d: &DeviceRef,
    pin: Option<&Pin>,
    actor: &str,
    reason: Option<&str>,
) -> Result<AuditEntry, serde_json::Error> {
    let at = OffsetDateTime::now_utc();
    let change = Change::DevicePin {
        device: d.clone(),
        pinned: pin.is_some(),
    };
    Ok(match pin {
        Some(p) => AuditEntry::new(at, actor, "pin", d.to_string())
            .reason(reason.unwrap_or(&p.reason))
            .detail(serde_json::json!({ "pin": serde_json::to_value(p)? }))
            .change(change),
        None => {
            let e = AuditEntry::new(at, actor, "unpin", d.to_string()).change(change);
            match reason {
                Some(r) => e.reason(r),
                None => e,
            }
        }
    })
}

/// A pin of `tier` for `duration` from now, by `actor`.
pub fn new_pin(
    tier: gatehouse_types::Tier,
    duration: std::time::Duration,
    reason: impl Into<String>,
    actor: &str,
) -> Pin {
    Pin {
        tier,
        expires_at: SystemTime::now() + duration,
        reason: reason.into(),
        by: actor.to_owned(),
    }
}

/// The registry side of a pin or unpin of a registered device: the pin stored with its
/// audit record and change ([`pin_record`]). `NotFound` if the device is not registered.
pub fn write_pin(
    registry: &dyn Registry,
    d: &DeviceRef,
    pin: Option<&Pin>,
    actor: &str,
    reason: Option<&str>,
) -> Result<DeviceTrust, WriteError> {
    let record = pin_record(d, pin, actor, reason).map_err(|e| WriteError::Invalid {
        what: format!("pin ({e})"),
    })?;
    write_pin_record(registry, d, pin, &record)
}

/// [`write_pin`] with the record already made (the caller needs it again when the device
/// is not registered).
pub fn write_pin_record(
    registry: &dyn Registry,
    d: &DeviceRef,
    pin: Option<&Pin>,
    record: &AuditEntry,
) -> Result<DeviceTrust, WriteError> {
    let value = pin
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| WriteError::Invalid {
            what: format!("pin ({e})"),
        })?;
    registry.set_device_pin(d, value.as_ref(), record)
}

/// The registry side of lifting the ban on `addr`: the ban removed, audited as `unban` of
/// the address by `actor` with `reason`; the registry writes the `BanLifted` change, which
/// a running server that did not make it applies to its broker. `NotFound` if there was
/// no ban.
pub fn write_unban(
    registry: &dyn Registry,
    addr: IpAddr,
    actor: &str,
    reason: &str,
) -> Result<Ban, WriteError> {
    let record =
        AuditEntry::new(OffsetDateTime::now_utc(), actor, "unban", addr.to_string()).reason(reason);
    registry.remove_ban(addr, &record)
}

/// The registry side of revoking device `d`: every valid certificate revoked for
/// `reason`, audited as `revoke` of the device by `actor` with `why` and the reason (name
/// and RFC 5280 code) as detail; the registry writes the `CertificatesRevoked` change.
/// The caller that runs the data plane then makes it bite at once
/// ([`crate::RevocationSync::sync_revoked`]); another process's revocation reaches a
/// running server through the change feed. Returns the certificates revoked.
pub fn write_revoke(
    registry: &dyn Registry,
    d: &DeviceRef,
    reason: RevocationReason,
    actor: &str,
    why: &str,
) -> Result<Vec<Certificate>, WriteError> {
    let at = OffsetDateTime::now_utc();
    let record = AuditEntry::new(at, actor, "revoke", d.to_string())
        .reason(why)
        .detail(serde_json::json!({ "reason": reason, "code": reason.code() }));
    registry.revoke_device(d, reason, at, &record)
}

/// The registry side of reinstating device `d` (revoked or blocked): active again, so it
/// may enroll, audited as `reinstate` by `actor` with `why`.
pub fn write_reinstate(
    registry: &dyn Registry,
    d: &DeviceRef,
    actor: &str,
    why: &str,
) -> Result<Device, WriteError> {
    let record =
        AuditEntry::new(OffsetDateTime::now_utc(), actor, "reinstate", d.to_string()).reason(why);
    registry.set_device_status(d, DeviceStatus::Active, &record)
}

/// Rejects action `id`, which must be waiting for approval: it is never carried out.
/// Audited as `reject_action` by `actor` with `note` (or a default reason).
pub fn write_reject(
    registry: &dyn Registry,
    id: ActionId,
    actor: &str,
    note: Option<&str>,
) -> Result<StoredAction, ActionError> {
    let stored = registry
        .get_action(id)
        .map_err(|e| ActionError::Store(e.to_string()))?
        .ok_or_else(|| ActionError::NotFound(format!("action {id}")))?;
    if stored.state != ActionState::PendingApproval {
        return Err(ActionError::Invalid(format!(
            "action {id} is {}, not waiting for approval",
            stored.state.as_str()
        )));
    }
    let record = AuditEntry::new(
        OffsetDateTime::now_utc(),
        actor,
        "reject_action",
        format!("action:{id}"),
    )
    .reason(note.unwrap_or("rejected by an operator"));
    registry
        .set_action_state(id, ActionState::Rejected, actor, note, &record)
        .map_err(|e| ActionError::Store(e.to_string()))
}

/// The registry side of a new policy set: `text` (already validated by the caller, whose
/// policies are `ids`) stored as the next version, audited as `set_policy` by `actor` with
/// `reason`; the registry writes the `PolicySet` change, so a running server that did not
/// store it loads it from the feed.
pub fn write_policy_set(
    registry: &dyn Registry,
    text: &str,
    ids: &[String],
    actor: &str,
    reason: &str,
) -> Result<PolicySetRecord, WriteError> {
    let record = AuditEntry::new(OffsetDateTime::now_utc(), actor, "set_policy", "policy-set")
        .reason(reason)
        .detail(serde_json::json!({ "policies": ids }));
    registry.put_policy_set(text, actor, &record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_types::Tier;
    use std::time::Duration;

    #[test]
    fn a_pin_and_an_unpin_have_one_record_shape_each() {
        let d: DeviceRef = "acme/pump-1".parse().expect("device");
        let pin = new_pin(
            Tier::Quarantined,
            Duration::from_secs(600),
            "held",
            "operator:ann",
        );
        let r = pin_record(&d, Some(&pin), "operator:ann", None).expect("record");
        assert_eq!(
            (r.action.as_str(), r.subject.as_str()),
            ("pin", "acme/pump-1")
        );
        assert_eq!(r.reason, "held");
        assert_eq!(r.detail["pin"]["tier"], "quarantined");
        assert_eq!(
            r.change,
            Some(Change::DevicePin {
                device: d.clone(),
                pinned: true
            })
        );
        let r = pin_record(&d, None, "operator:ann", Some("cleared")).expect("record");
        assert_eq!((r.action.as_str(), r.reason.as_str()), ("unpin", "cleared"));
        assert!(r.detail.is_null());
        assert_eq!(
            r.change,
            Some(Change::DevicePin {
                device: d,
                pinned: false
            })
        );
    }
}
