//! Carrying out playbook actions, approving them, and reversing them: every step audited,
//! every action once per incident and playbook.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_respond::{Action, Mode, PlannedAction, Webhook};
use gatehouse_store::{
    ActionFilter, ActionId, ActionRecord, ActionState, AuditEntry, Change, ChangeRecord,
    IncidentId, RevocationReason, StoredAction,
};
use gatehouse_types::{DeviceRef, Finding, Tier};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::DetectionService;

/// Why an action could not be carried out, approved or reversed.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The registry failed.
    #[error("registry: {0}")]
    Store(String),
    /// No such action, incident or device.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request does not apply (wrong state, nothing to reverse).
    #[error("{0}")]
    Invalid(String),
    /// The action was tried and failed.
    #[error("action failed: {0}")]
    Failed(String),
}

fn store(e: impl std::fmt::Display) -> ActionError {
    ActionError::Store(e.to_string())
}

/// Quarantine without an expiry in the playbook lasts this long (an operator releases it
/// sooner).
const DEFAULT_QUARANTINE: Duration = Duration::from_secs(24 * 3600);

/// Sends webhook notifications, off the responder's path.
#[derive(Debug, Default)]
pub(crate) struct Notifier;

/// The action a stored record describes.
fn action_from(kind: &str, params: &Value) -> Result<Action, ActionError> {
    let secs = |k: &str| -> Result<Duration, ActionError> {
        params
            .get(k)
            .and_then(Value::as_u64)
            .map(Duration::from_secs)
            .ok_or_else(|| ActionError::Invalid(format!("stored {kind} action lacks {k}")))
    };
    Ok(match kind {
        "throttle" => Action::Throttle {
            rate: params
                .get("rate")
                .and_then(Value::as_f64)
                .ok_or_else(|| ActionError::Invalid("stored throttle lacks rate".into()))?,
            for_: secs("for_secs")?,
        },
        "quarantine" => Action::Quarantine {
            for_: params
                .get("for_secs")
                .and_then(Value::as_u64)
                .map(Duration::from_secs),
        },
        "revoke" => Action::Revoke {
            reason: params
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("unspecified")
                .to_owned(),
        },
        "disconnect" => Action::Disconnect,
        "ban" => Action::Ban {
            for_: secs("for_secs")?,
        },
        "notify" => Action::Notify {
            webhook: params
                .get("webhook")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        },
        other => {
            return Err(ActionError::Invalid(format!(
                "unknown action kind {other:?}"
            )));
        }
    })
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

// === impl DetectionService ===

impl DetectionService {
    /// Runs one planned action for a finding, once per incident and playbook: carried out
    /// (auto), recorded for an operator (approve), or only notified (notify).
    pub(crate) fn carry_out(
        self: &Arc<Self>,
        f: &Finding,
        incident: IncidentId,
        plan: &PlannedAction,
    ) {
        let kind = plan.action.kind();
        let mode = plan.mode;
        if mode == Mode::Notify && !matches!(plan.action, Action::Notify { .. }) {
            // A notify-only playbook does not act; its notify actions still run.
            return;
        }
        match self.registry.list_actions(&ActionFilter {
            incident: Some(incident),
            ..ActionFilter::default()
        }) {
            Ok(existing) => {
                if existing.iter().any(|a| {
                    a.playbook.as_deref() == Some(plan.playbook.as_str())
                        && a.kind == kind
                        && matches!(a.state, ActionState::Done | ActionState::PendingApproval)
                }) {
                    self.metrics.action(kind, "skipped");
                    return;
                }
            }
            Err(e) => {
                warn!(error = %e, "reading the incident's actions failed: action not taken");
                return;
            }
        }
        // A device already under the same sanction (from another incident: a scan that is
        // also a wildcard harvest) is not sanctioned twice.
        if let (Some(d), true) = (
            &f.device,
            matches!(kind, "quarantine" | "throttle" | "revoke"),
        ) {
            match self.registry.list_actions(&ActionFilter {
                device: Some(d.clone()),
                state: Some(ActionState::Done),
                limit: usize::MAX,
                ..ActionFilter::default()
            }) {
                Ok(existing) => {
                    let now = now();
                    if existing
                        .iter()
                        .any(|a| a.kind == kind && a.expires_at.is_none_or(|t| t > now))
                    {
                        self.metrics.action(kind, "skipped");
                        return;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "reading the device's actions failed: action not taken");
                    return;
                }
            }
        }
        let actor = format!("playbook:{}", plan.playbook);
        let expires_at = plan.action.duration().map(|d| {
            now() + time::Duration::seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4))
        });
        let record = |state: ActionState| ActionRecord {
            incident: Some(incident),
            device: f.device.clone(),
            peer: f.peer,
            kind: kind.to_owned(),
            params: plan.action.params(),
            state,
            playbook: Some(plan.playbook.clone()),
            by: actor.clone(),
            expires_at: if state == ActionState::Done {
                expires_at
            } else {
                None
            },
        };
        if mode == Mode::Approve {
            let audit = AuditEntry::new(now(), &actor, "propose_action", subject_of(f))
                .reason(format!("{} on {}: waits for an operator", kind, f.kind))
                .detail(
                    json!({ "incident": incident.to_string(), "params": plan.action.params() }),
                );
            match self
                .registry
                .record_action(&record(ActionState::PendingApproval), &audit)
            {
                Ok(id) => {
                    self.metrics.action(kind, "pending_approval");
                    info!(action = %id, %kind, playbook = %plan.playbook, "action waits for approval");
                }
                Err(e) => warn!(error = %e, "recording a proposed action failed"),
            }
            return;
        }
        let outcome = self.execute(
            &plan.action,
            f.device.as_ref(),
            f.peer,
            &actor,
            Some(f),
            Some(incident),
        );
        let (state, note) = match &outcome {
            Ok(()) => (ActionState::Done, None),
            Err(e) => (ActionState::Failed, Some(e.to_string())),
        };
        let audit = AuditEntry::new(now(), &actor, format!("respond_{kind}"), subject_of(f))
            .outcome(if note.is_some() { "failed" } else { "ok" })
            .reason(
                note.clone()
                    .unwrap_or_else(|| format!("{} on finding {}", kind, f.kind)),
            )
            .detail(json!({ "incident": incident.to_string(), "params": plan.action.params() }));
        match self.registry.record_action(&record(state), &audit) {
            Ok(id) => {
                self.metrics
                    .action(kind, if note.is_some() { "failed" } else { "done" });
                info!(action = %id, %kind, playbook = %plan.playbook, error = ?note, "response action");
            }
            Err(e) => warn!(error = %e, "recording an action failed"),
        }
    }

    /// Carries out an action on the data plane, the trust gate or the PKI.
    fn execute(
        self: &Arc<Self>,
        action: &Action,
        device: Option<&DeviceRef>,
        peer: Option<IpAddr>,
        actor: &str,
        finding: Option<&Finding>,
        incident: Option<IncidentId>,
    ) -> Result<(), ActionError> {
        let need_device = || {
            device.ok_or_else(|| ActionError::Invalid(format!("{} needs a device", action.kind())))
        };
        let why = finding.map_or_else(
            || "approved by an operator".to_owned(),
            |f| format!("{}: {}", f.kind, f.summary),
        );
        match action {
            Action::Quarantine { for_ } => {
                let d = need_device()?;
                let trust = self.trust.as_ref().ok_or_else(|| {
                    ActionError::Failed("the trust gate is off: nothing to quarantine with".into())
                })?;
                let pin = crate::ops::new_pin(
                    Tier::Quarantined,
                    for_.unwrap_or(DEFAULT_QUARANTINE),
                    why,
                    actor,
                );
                trust
                    .pin(d, Some(&pin), actor)
                    .map_err(|e| ActionError::Failed(e.to_string()))?;
                Ok(())
            }
            Action::Throttle { rate, for_ } => {
                let d = need_device()?;
                self.broker.throttle(d, *rate, *for_);
                Ok(())
            }
            Action::Disconnect => {
                let d = need_device()?;
                self.broker
                    .disconnect_device(d, "disconnected by a response playbook");
                Ok(())
            }
            Action::Revoke { reason } => {
                let d = need_device()?;
                let reason = serde_json::from_value(Value::String(reason.clone()))
                    .unwrap_or(RevocationReason::Unspecified);
                let certs = crate::ops::write_revoke(&*self.registry, d, reason, actor, &why)
                    .map_err(store)?;
                self.revocations
                    .sync_revoked(&certs)
                    .map_err(|e| ActionError::Failed(e.to_string()))?;
                Ok(())
            }
            Action::Ban { for_ } => {
                let addr = peer
                    .ok_or_else(|| ActionError::Invalid("ban needs the source address".into()))?;
                if let Some(r) = self.settings.never_ban.iter().find(|r| r.contains(addr)) {
                    return Err(ActionError::Invalid(format!(
                        "{addr} is never banned (respond.never_ban has {r})"
                    )));
                }
                let until = now()
                    + time::Duration::seconds(
                        i64::try_from(for_.as_secs()).unwrap_or(i64::MAX / 2),
                    );
                let audit =
                    AuditEntry::new(now(), actor, "ban", addr.to_string()).reason(why.clone());
                self.registry
                    .put_ban(addr, until, &why, &audit)
                    .map_err(store)?;
                self.broker.ban(addr, *for_, "source address banned");
                Ok(())
            }
            Action::Notify { webhook } => {
                let hook = self
                    .settings
                    .playbooks
                    .webhook(webhook)
                    .cloned()
                    .ok_or_else(|| ActionError::Invalid(format!("no webhook named {webhook:?}")))?;
                let Some(f) = finding else {
                    return Err(ActionError::Invalid("notify needs a finding".into()));
                };
                let body = gatehouse_respond::ocsf_detection_finding(
                    f,
                    incident,
                    env!("CARGO_PKG_VERSION"),
                );
                self.http.send(Arc::clone(self), hook, body);
                Ok(())
            }
        }
    }

    /// Approves an action waiting for an operator: carries it out now, audited.
    pub fn approve(self: &Arc<Self>, id: ActionId, by: &str) -> Result<StoredAction, ActionError> {
        let stored = self
            .registry
            .get_action(id)
            .map_err(store)?
            .ok_or_else(|| ActionError::NotFound(format!("action {id}")))?;
        if stored.state != ActionState::PendingApproval {
            return Err(ActionError::Invalid(format!(
                "action {id} is {}, not waiting for approval",
                stored.state.as_str()
            )));
        }
        let action = action_from(&stored.kind, &stored.params)?;
        let result = self.execute(
            &action,
            stored.device.as_ref(),
            stored.peer,
            by,
            None,
            stored.incident,
        );
        let (state, note) = match &result {
            Ok(()) => (ActionState::Done, "approved and carried out".to_owned()),
            Err(e) => (ActionState::Failed, format!("approved; failed: {e}")),
        };
        let audit = AuditEntry::new(now(), by, "approve_action", format!("action:{id}"))
            .outcome(if result.is_ok() { "ok" } else { "failed" })
            .reason(note.clone());
        let updated = self
            .registry
            .set_action_state(id, state, by, Some(&note), &audit)
            .map_err(store)?;
        self.metrics
            .action(&stored.kind, if result.is_ok() { "done" } else { "failed" });
        result.map(|()| updated)
    }

    /// Reverses an action that was carried out (release from quarantine, lift a throttle
    /// or a ban, reinstate a revoked device), audited.
    pub fn reverse(
        self: &Arc<Self>,
        id: ActionId,
        by: &str,
        note: Option<&str>,
    ) -> Result<StoredAction, ActionError> {
        let stored = self
            .registry
            .get_action(id)
            .map_err(store)?
            .ok_or_else(|| ActionError::NotFound(format!("action {id}")))?;
        if stored.state != ActionState::Done {
            return Err(ActionError::Invalid(format!(
                "action {id} is {}: only an action carried out can be reversed",
                stored.state.as_str()
            )));
        }
        self.undo(&stored, by, true)?;
        let audit = AuditEntry::new(now(), by, "reverse_action", format!("action:{id}"))
            .reason(note.unwrap_or("reversed by an operator"))
            .detail(json!({ "kind": stored.kind }));
        self.registry
            .set_action_state(id, ActionState::Reversed, by, note, &audit)
            .map_err(store)
    }

    /// Undoes an action's effect. `registry`: also the registry side (not when another
    /// process, the command line, already did it).
    fn undo(&self, stored: &StoredAction, by: &str, registry: bool) -> Result<(), ActionError> {
        let r = stored;
        let device = || {
            r.device
                .clone()
                .ok_or_else(|| ActionError::Invalid(format!("{} action without a device", r.kind)))
        };
        match r.kind.as_str() {
            "quarantine" => {
                if registry {
                    let d = device()?;
                    match &self.trust {
                        Some(t) => {
                            t.pin(&d, None, by)
                                .map_err(|e| ActionError::Failed(e.to_string()))?;
                        }
                        None => {
                            crate::ops::write_pin(&*self.registry, &d, None, by, None)
                                .map_err(store)?;
                        }
                    }
                }
                Ok(())
            }
            "throttle" => {
                self.broker.unthrottle(&device()?);
                Ok(())
            }
            "ban" => {
                let addr = r
                    .peer
                    .ok_or_else(|| ActionError::Invalid("ban action without an address".into()))?;
                if registry {
                    self.lift_ban(addr, by, "the ban action reversed")
                        .map_err(store)?;
                } else {
                    self.broker.unban(addr);
                }
                Ok(())
            }
            "revoke" => {
                if registry {
                    let d = device()?;
                    crate::ops::write_reinstate(
                        &*self.registry,
                        &d,
                        by,
                        "revocation by a playbook reversed: may enroll again",
                    )
                    .map_err(store)?;
                }
                Ok(())
            }
            other => Err(ActionError::Invalid(format!(
                "a {other} action cannot be reversed"
            ))),
        }
    }

    /// Lifts the ban on `addr` ([`crate::ops::write_unban`]), then the broker's sanction.
    /// Returns the ban lifted; the registry's error if there was none.
    pub fn lift_ban(
        &self,
        addr: IpAddr,
        actor: &str,
        reason: &str,
    ) -> Result<gatehouse_store::Ban, gatehouse_store::WriteError> {
        let removed = crate::ops::write_unban(&*self.registry, addr, actor, reason)?;
        self.broker.unban(addr);
        Ok(removed)
    }

    /// Applies changes from the feed that only the running server can carry out: an
    /// action approved from the command line is carried out, the data-plane side of a
    /// reversal or a lifted ban (the broker's ban or throttle) is undone, and a changed
    /// model profile is read again.
    pub fn apply_changes(self: &Arc<Self>, changes: &[ChangeRecord]) {
        for c in changes {
            match &c.change {
                Change::ModelProfile { .. } => {
                    self.profiles_stale
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                // Lifted by the command line (or the API: unbanning twice is harmless).
                Change::BanLifted { addr } => {
                    self.broker.unban(*addr);
                }
                Change::ActionApproved { action } => {
                    if let Err(e) = self.approve(*action, &c.actor) {
                        warn!(action = %action, error = %e, "approving an action failed");
                    }
                }
                Change::ActionReversed { action } => match self.registry.get_action(*action) {
                    Ok(Some(stored)) => {
                        if let Err(e) = self.undo(&stored, &c.actor, false) {
                            warn!(action = %action, error = %e, "reversing an action failed");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => warn!(action = %action, error = %e, "reading an action failed"),
                },
                _ => {}
            }
        }
    }

    /// What time alone changes: timed actions whose time is up are marked as ended.
    pub fn tick(&self) -> Result<(), ActionError> {
        self.expire_actions()
    }

    /// Marks the timed actions whose time is up as reversed by `system` (their effect has
    /// already ended by itself: the pin expired, the broker dropped the ban or throttle),
    /// audited, so the record says what is still in force.
    fn expire_actions(&self) -> Result<(), ActionError> {
        {
            let mut last = self.expiry_checked.lock();
            if last.elapsed() < Duration::from_secs(1) {
                return Ok(());
            }
            *last = std::time::Instant::now();
        }
        let due = self
            .registry
            .list_actions(&ActionFilter {
                state: Some(ActionState::Done),
                expires_by: Some(now()),
                ..ActionFilter::default()
            })
            .map_err(store)?;
        for a in due {
            let audit =
                AuditEntry::new(now(), "system", "expire_action", format!("action:{}", a.id))
                    .reason(format!("{} ended: its time was up", a.kind));
            if let Err(e) = self.registry.set_action_state(
                a.id,
                ActionState::Reversed,
                "system",
                Some("expired"),
                &audit,
            ) {
                warn!(action = %a.id, error = %e, "marking an expired action failed");
            }
        }
        Ok(())
    }
}

fn subject_of(f: &Finding) -> String {
    match (&f.device, &f.peer) {
        (Some(d), _) => d.to_string(),
        (None, Some(p)) => p.to_string(),
        (None, None) => "-".to_owned(),
    }
}

// === impl Notifier ===

impl Notifier {
    /// Delivers in the background; a failure is logged and counted.
    pub(crate) fn send(&self, service: Arc<DetectionService>, hook: Webhook, body: Value) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            warn!("no runtime to deliver a webhook on");
            return;
        };
        handle.spawn(async move {
            let bytes = body.to_string().into_bytes();
            match gatehouse_respond::deliver(&hook, &bytes).await {
                Ok(_) => info!(webhook = %hook.name, "finding notified"),
                Err(e) => {
                    service.metrics.webhook_failures.inc();
                    warn!(webhook = %hook.name, error = %e, "webhook delivery failed");
                }
            }
        });
    }
}
