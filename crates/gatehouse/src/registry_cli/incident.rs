//! `gatehouse incident …`: the incidents detection opened, their timelines, and the
//! operator's side of response — acknowledge, resolve, approve or reject a proposed
//! action, release (reverse) an action, lift a ban.
//!
//! Like every registry command this writes the registry directly, audited. What only the
//! running server can do (carry out an approved action, lift a ban or a throttle on the
//! live broker) it does when its registry poll reads the audit record written here.

use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use gatehouse_store::{
    ActionFilter, ActionId, ActionState, AuditLog, Change, IncidentDetail, IncidentFilter,
    IncidentId, IncidentState, Registry, StoredAction, TimelineEvent, WriteError,
};
use gatehouse_types::DeviceRef;
use serde_json::json;
use time::OffsetDateTime;

use super::{Ctx, fmt_opt_time, fmt_time, table};

/// Longest note, in bytes.
const MAX_NOTE: usize = 2048;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List incidents, most recently active first.
    List {
        /// Only incidents in this state: open, acknowledged or resolved.
        #[arg(long)]
        state: Option<IncidentState>,
        /// Only this device's incidents (`tenant/device`).
        #[arg(long)]
        device: Option<DeviceRef>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show an incident: what was seen, its evidence, and its timeline of findings,
    /// actions and state changes.
    Show {
        /// The incident id.
        id: IncidentId,
    },
    /// Acknowledge an incident: someone is on it.
    Ack {
        /// The incident id.
        id: IncidentId,
        /// Why, for the timeline and the audit log.
        #[arg(long)]
        note: Option<String>,
    },
    /// Resolve an incident; a later finding of the same kind opens a new one.
    Resolve {
        /// The incident id.
        id: IncidentId,
        /// Why, for the timeline and the audit log.
        #[arg(long)]
        note: Option<String>,
    },
    /// List response actions (carried out, failed, reversed, waiting for approval).
    Actions {
        /// Only actions in this state: pending_approval, done, failed, reversed, rejected.
        #[arg(long)]
        state: Option<ActionState>,
        /// Only this incident's actions.
        #[arg(long)]
        incident: Option<IncidentId>,
    },
    /// Approve an action a playbook proposed: the running server carries it out.
    Approve {
        /// The action id.
        action: ActionId,
    },
    /// Reject an action a playbook proposed: it is not carried out.
    Reject {
        /// The action id.
        action: ActionId,
        /// Why.
        #[arg(long)]
        note: Option<String>,
    },
    /// Reverse an action that was carried out: release from quarantine, lift a throttle
    /// or a ban, reinstate a revoked device (which must then enroll again).
    Release {
        /// The action id.
        action: ActionId,
        /// Why.
        #[arg(long)]
        note: Option<String>,
    },
    /// List the source addresses banned now.
    Bans,
    /// Lift the ban of a source address.
    Unban {
        /// The address.
        addr: IpAddr,
    },
}

pub(super) fn run(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::List {
            state,
            device,
            limit,
        } => list(ctx, state, device, limit),
        Command::Show { id } => show(ctx, id),
        Command::Ack { id, note } => transition(ctx, id, IncidentState::Acknowledged, note),
        Command::Resolve { id, note } => transition(ctx, id, IncidentState::Resolved, note),
        Command::Actions { state, incident } => actions(ctx, state, incident),
        Command::Approve { action } => approve(ctx, action),
        Command::Reject { action, note } => reject(ctx, action, note),
        Command::Release { action, note } => release(ctx, action, note),
        Command::Bans => bans(ctx),
        Command::Unban { addr } => unban(ctx, addr),
    }
}

fn check_note(note: Option<&String>) -> Result<()> {
    if let Some(n) = note {
        anyhow::ensure!(
            n.len() <= MAX_NOTE && !n.chars().any(|c| c.is_control() && c != '\n'),
            "--note must be at most {MAX_NOTE} bytes of printable text"
        );
    }
    Ok(())
}

fn subject(device: Option<&DeviceRef>, peer: Option<IpAddr>) -> String {
    match (device, peer) {
        (Some(d), _) => d.to_string(),
        (None, Some(p)) => format!("address {p}"),
        (None, None) => "-".to_owned(),
    }
}

fn list(
    ctx: &Ctx,
    state: Option<IncidentState>,
    device: Option<DeviceRef>,
    limit: usize,
) -> Result<()> {
    let incidents = ctx.store.list_incidents(&IncidentFilter {
        tenant: None,
        device,
        state,
        limit: limit.clamp(1, 1000),
    })?;
    ctx.list(&incidents, "no incidents", || {
        let rows: Vec<Vec<String>> = incidents
            .iter()
            .map(|i| {
                vec![
                    i.id.to_string(),
                    i.state.as_str().to_owned(),
                    i.max_severity.as_str().to_owned(),
                    i.kind.clone(),
                    subject(i.device.as_ref(), i.peer),
                    i.finding_count.to_string(),
                    fmt_time(i.last_seen),
                ]
            })
            .collect();
        table(
            &[
                "ID",
                "STATE",
                "SEVERITY",
                "KIND",
                "SUBJECT",
                "FINDINGS",
                "LAST SEEN",
            ],
            &rows,
        )
    })
}

fn detail(ctx: &Ctx, id: IncidentId) -> Result<IncidentDetail> {
    ctx.store
        .get_incident(id)?
        .with_context(|| format!("incident {id} not found (see `gatehouse incident list`)"))
}

fn show(ctx: &Ctx, id: IncidentId) -> Result<()> {
    let d = detail(ctx, id)?;
    ctx.print(&d, || {
        let i = &d.incident;
        let mut t = String::new();
        let _ = writeln!(t, "incident {}: {} ({})", i.id, i.kind, i.state.as_str());
        let _ = writeln!(t, "subject:   {}", subject(i.device.as_ref(), i.peer));
        let _ = writeln!(t, "severity:  {}", i.max_severity.as_str());
        if let Some(tech) = &i.technique {
            let _ = writeln!(t, "technique: {tech} (MITRE ATT&CK for ICS)");
        }
        let _ = writeln!(
            t,
            "findings:  {} ({} stored), first {} last {}",
            i.finding_count,
            i.stored_findings,
            fmt_time(i.first_seen),
            fmt_time(i.last_seen)
        );
        let _ = writeln!(t, "resolved:  {}", fmt_opt_time(i.resolved_at));
        let _ = writeln!(t, "summary:   {}", i.summary);
        if let Some(last) = d.findings.last() {
            t.push_str("evidence (latest finding):\n");
            for (k, v) in &last.finding.evidence {
                let _ = writeln!(t, "  {k}: {v}");
            }
        }
        t.push_str("timeline:\n");
        for e in &d.timeline {
            let line = match &e.event {
                TimelineEvent::Finding {
                    kind,
                    severity,
                    summary,
                    ..
                } => format!("finding {kind} ({}): {summary}", severity.as_str()),
                TimelineEvent::State { from, to, by, note } => format!(
                    "{} -> {} by {by}{}",
                    from.map_or("-", IncidentState::as_str),
                    to.as_str(),
                    note.as_ref().map(|n| format!(": {n}")).unwrap_or_default()
                ),
                TimelineEvent::Action {
                    action,
                    kind,
                    state,
                    by,
                    note,
                } => format!(
                    "action {action} {kind}: {} by {by}{}",
                    state.as_str(),
                    note.as_ref().map(|n| format!(": {n}")).unwrap_or_default()
                ),
            };
            let _ = writeln!(t, "  {}  {line}", fmt_time(e.at));
        }
        t
    })
}

fn transition(ctx: &Ctx, id: IncidentId, to: IncidentState, note: Option<String>) -> Result<()> {
    check_note(note.as_ref())?;
    let verb = match to {
        IncidentState::Acknowledged => "acknowledge_incident",
        IncidentState::Resolved => "resolve_incident",
        _ => "reopen_incident",
    };
    let mut audit = ctx.entry(verb, format!("incident:{id}"));
    if let Some(n) = &note {
        audit = audit.reason(n.clone());
    }
    let incident = ctx
        .store
        .set_incident_state(id, to, &ctx.actor, note.as_deref(), &audit)
        .map_err(|e| match e {
            WriteError::NotFound { .. } => anyhow::anyhow!("incident {id} not found"),
            e => e.into(),
        })?;
    ctx.print(&incident, || {
        format!("incident {id} is {}", incident.state.as_str())
    })
}

fn actions(ctx: &Ctx, state: Option<ActionState>, incident: Option<IncidentId>) -> Result<()> {
    let list = ctx.store.list_actions(&ActionFilter {
        incident,
        state,
        ..ActionFilter::default()
    })?;
    ctx.list(&list, "no actions", || {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|a| {
                vec![
                    a.id.to_string(),
                    a.kind.clone(),
                    a.state.as_str().to_owned(),
                    subject(a.device.as_ref(), a.peer),
                    a.incident.map_or_else(|| "-".to_owned(), |i| i.to_string()),
                    a.playbook.clone().unwrap_or_else(|| "-".to_owned()),
                    fmt_time(a.updated_at),
                ]
            })
            .collect();
        table(
            &[
                "ID", "KIND", "STATE", "SUBJECT", "INCIDENT", "PLAYBOOK", "UPDATED",
            ],
            &rows,
        )
    })
}

fn action(ctx: &Ctx, id: ActionId) -> Result<StoredAction> {
    ctx.store
        .get_action(id)?
        .with_context(|| format!("action {id} not found (see `gatehouse incident actions`)"))
}

fn approve(ctx: &Ctx, id: ActionId) -> Result<()> {
    let a = action(ctx, id)?;
    if a.state != ActionState::PendingApproval {
        bail!(
            "action {id} is {}, not waiting for approval",
            a.state.as_str()
        );
    }
    // The running server carries it out when it reads the change from its feed.
    let audit = ctx
        .entry("request_approval", format!("action:{id}"))
        .reason(format!("{} approved from the command line", a.kind))
        .change(Change::ActionApproved { action: id });
    ctx.store.append(&audit)?;
    ctx.print(&json!({ "action": id, "requested": true }), || {
        format!(
            "action {id} ({}) approved: the running server carries it out within its registry \
             poll interval (see `gatehouse incident actions --incident {}`)",
            a.kind,
            a.incident.map_or_else(|| "-".to_owned(), |i| i.to_string())
        )
    })
}

fn reject(ctx: &Ctx, id: ActionId, note: Option<String>) -> Result<()> {
    check_note(note.as_ref())?;
    let a = action(ctx, id)?;
    let updated =
        gatehouse_runtime::ops::write_reject(&ctx.store, id, &ctx.actor, note.as_deref())?;
    ctx.print(&updated, || format!("action {id} ({}) rejected", a.kind))
}

fn release(ctx: &Ctx, id: ActionId, note: Option<String>) -> Result<()> {
    check_note(note.as_ref())?;
    let a = action(ctx, id)?;
    if a.state != ActionState::Done {
        bail!(
            "action {id} is {}: only an action carried out can be released",
            a.state.as_str()
        );
    }
    let device = || {
        a.device
            .clone()
            .with_context(|| format!("{} action {id} names no device", a.kind))
    };
    // The registry side here; the live side (broker bans and throttles) when the running
    // server reads the reversal from its change feed.
    match a.kind.as_str() {
        "quarantine" => {
            let d = device()?;
            let why = format!("released from quarantine (action {id})");
            let audit = gatehouse_runtime::ops::pin_record(&d, None, &ctx.actor, Some(&why))?;
            match gatehouse_runtime::ops::write_pin_record(&ctx.store, &d, None, &audit) {
                Ok(_) => {}
                // Outside the registry (a certificate issued by hand): its pin lives in
                // the running server, which lifts it when it reads the change.
                Err(WriteError::NotFound { .. }) => {
                    ctx.store.append(&audit)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        "ban" => {
            let addr = a
                .peer
                .with_context(|| format!("ban action {id} names no address"))?;
            let why = format!("the ban action {id} released");
            match gatehouse_runtime::ops::write_unban(&ctx.store, addr, &ctx.actor, &why) {
                Ok(_) | Err(WriteError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        "revoke" => {
            let d = device()?;
            let why = format!("revocation by a playbook reversed (action {id})");
            gatehouse_runtime::ops::write_reinstate(&ctx.store, &d, &ctx.actor, &why)?;
        }
        "throttle" => {}
        other => bail!("a {other} action cannot be reversed"),
    }
    let audit = ctx
        .entry("reverse_action", format!("action:{id}"))
        .reason(
            note.clone()
                .unwrap_or_else(|| "released by an operator".into()),
        )
        .detail(json!({ "kind": a.kind }))
        .change(Change::ActionReversed { action: id });
    let updated = ctx.store.set_action_state(
        id,
        ActionState::Reversed,
        &ctx.actor,
        note.as_deref(),
        &audit,
    )?;
    ctx.print(&updated, || {
        format!(
            "action {id} ({}) reversed; a running server applies it within its registry poll \
             interval",
            a.kind
        )
    })
}

fn bans(ctx: &Ctx) -> Result<()> {
    let list = ctx.store.list_bans(OffsetDateTime::now_utc())?;
    ctx.list(&list, "no bans", || {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|b| vec![b.addr.to_string(), fmt_time(b.until), b.reason.clone()])
            .collect();
        table(&["ADDRESS", "UNTIL", "REASON"], &rows)
    })
}

fn unban(ctx: &Ctx, addr: IpAddr) -> Result<()> {
    let why = "lifted from the command line";
    let ban = gatehouse_runtime::ops::write_unban(&ctx.store, addr, &ctx.actor, why).map_err(
        |e| match e {
            WriteError::NotFound { .. } => anyhow::anyhow!("{addr} is not banned"),
            e => e.into(),
        },
    )?;
    ctx.print(&ban, || {
        format!(
            "ban of {addr} lifted; a running server applies it within its registry poll interval"
        )
    })
}
