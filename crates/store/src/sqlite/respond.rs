//! The respond stage's tables: incidents, findings, actions, their events, bans. Each
//! function runs inside the caller's transaction (writes) or on its connection (reads).

use std::net::IpAddr;
use std::time::SystemTime;

use gatehouse_types::{DeviceId, DeviceRef, Finding, Severity, TenantId};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use time::OffsetDateTime;

use super::{
    BadValue, append_change_tx, append_tx, conv, json, parse, parse_opt, read_err, secs, trunc, ts,
    ts_opt, u32_col, with_detail, write_err,
};
use crate::audit::AuditEntry;
use crate::error::{ReadError, WriteError};
use crate::incident::*;

/// Longest finding kind or action kind accepted, in bytes.
const MAX_KIND: usize = 128;

fn id_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(idx)?;
    u64::try_from(v).map_err(|e| conv(idx, e))
}

fn id_opt(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<u64>> {
    let v: Option<i64> = row.get(idx)?;
    v.map(|v| u64::try_from(v).map_err(|e| conv(idx, e)))
        .transpose()
}

fn sql_id(id: u64) -> Result<i64, WriteError> {
    i64::try_from(id).map_err(|_| WriteError::Invalid {
        what: format!("id {id} (out of range)"),
    })
}

fn device_opt(row: &Row<'_>, t: usize, d: usize) -> rusqlite::Result<Option<DeviceRef>> {
    let tenant: Option<TenantId> = parse_opt(row, t)?;
    let device: Option<DeviceId> = parse_opt(row, d)?;
    match (tenant, device) {
        (Some(t), Some(d)) => Ok(Some(DeviceRef::new(t, d))),
        (None, None) => Ok(None),
        _ => Err(conv(d, BadValue("a tenant without a device".to_owned()))),
    }
}

/// A finding's time as unix seconds; `None` outside what a timestamp can hold.
fn system_secs(t: SystemTime) -> Option<i64> {
    let s = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).ok()?,
        Err(e) => {
            let d = e.duration();
            // Round towards the past, like a timestamp does.
            let whole = i64::try_from(d.as_secs()).ok()?;
            if d.subsec_nanos() > 0 {
                -whole - 1
            } else {
                -whole
            }
        }
    };
    OffsetDateTime::from_unix_timestamp(s).ok().map(|_| s)
}

const INCIDENT_COLS: &str = "id, tenant, device, peer, kind, group_key, state, max_severity, \
     finding_count, stored_findings, first_seen, last_seen, opened_at, updated_at, \
     resolved_at, summary, technique";
fn incident_row(r: &Row<'_>) -> rusqlite::Result<Incident> {
    let device = device_opt(r, 1, 2)?;
    Ok(Incident {
        id: IncidentId(id_col(r, 0)?),
        tenant: device.as_ref().map(|d| d.tenant.clone()),
        device,
        peer: parse_opt(r, 3)?,
        kind: r.get(4)?,
        group_key: r.get(5)?,
        state: parse(r, 6)?,
        max_severity: parse(r, 7)?,
        finding_count: u32_col(r, 8)?,
        stored_findings: u32_col(r, 9)?,
        first_seen: ts(r, 10)?,
        last_seen: ts(r, 11)?,
        opened_at: ts(r, 12)?,
        updated_at: ts(r, 13)?,
        resolved_at: ts_opt(r, 14)?,
        summary: r.get(15)?,
        technique: r.get(16)?,
    })
}

const ACTION_COLS: &str = "id, incident, tenant, device, peer, kind, params, state, playbook, \
     created_by, created_at, updated_by, updated_at, note, expires_at";
fn action_row(r: &Row<'_>) -> rusqlite::Result<StoredAction> {
    Ok(StoredAction {
        id: ActionId(id_col(r, 0)?),
        incident: id_opt(r, 1)?.map(IncidentId),
        device: device_opt(r, 2, 3)?,
        peer: parse_opt(r, 4)?,
        kind: r.get(5)?,
        params: json(r, 6)?,
        state: parse(r, 7)?,
        playbook: r.get(8)?,
        created_by: r.get(9)?,
        created_at: ts(r, 10)?,
        updated_by: r.get(11)?,
        updated_at: ts(r, 12)?,
        note: r.get(13)?,
        expires_at: ts_opt(r, 14)?,
    })
}

const BAN_COLS: &str = "addr, until, reason, created_at";
fn ban_row(r: &Row<'_>) -> rusqlite::Result<Ban> {
    Ok(Ban {
        addr: parse(r, 0)?,
        until: ts(r, 1)?,
        reason: r.get(2)?,
        created_at: ts(r, 3)?,
    })
}

pub(super) fn get_incident_row(
    c: &Connection,
    id: IncidentId,
) -> rusqlite::Result<Option<Incident>> {
    let Ok(sql_id) = i64::try_from(id.0) else {
        return Ok(None);
    };
    c.query_row(
        &format!("SELECT {INCIDENT_COLS} FROM incidents WHERE id = ?1"),
        [sql_id],
        incident_row,
    )
    .optional()
}

pub(super) fn get_action_row(
    c: &Connection,
    id: ActionId,
) -> rusqlite::Result<Option<StoredAction>> {
    let Ok(sql_id) = i64::try_from(id.0) else {
        return Ok(None);
    };
    c.query_row(
        &format!("SELECT {ACTION_COLS} FROM actions WHERE id = ?1"),
        [sql_id],
        action_row,
    )
    .optional()
}

fn check_kind(what: &str, kind: &str) -> Result<(), WriteError> {
    if kind.is_empty() || kind.len() > MAX_KIND {
        return Err(WriteError::Invalid {
            what: format!("{what} kind {kind:?} (1 to {MAX_KIND} bytes)"),
        });
    }
    Ok(())
}

struct Active {
    id: i64,
    count: u32,
    stored: u32,
    max_severity: Severity,
    first_seen: i64,
    last_seen: i64,
    technique: Option<String>,
}

pub(super) fn record_findings_tx(
    tx: &Transaction<'_>,
    findings: &[Finding],
    at: OffsetDateTime,
    max_stored: u32,
) -> Result<Vec<RecordedFinding>, WriteError> {
    let now = secs(at);
    let mut out = Vec::with_capacity(findings.len());
    for (i, f) in findings.iter().enumerate() {
        check_kind("finding", &f.kind)?;
        if f.device.is_none() && f.peer.is_none() {
            return Err(WriteError::Invalid {
                what: format!("finding {i} (it names neither a device nor an address)"),
            });
        }
        let seen = system_secs(f.at).ok_or_else(|| WriteError::Invalid {
            what: format!("finding {i} time (out of range)"),
        })?;
        let body = serde_json::to_string(f).map_err(|_| WriteError::Invalid {
            what: format!("finding {i} (not serializable as JSON)"),
        })?;
        if body.len() > StoredFinding::MAX_BYTES {
            return Err(WriteError::Invalid {
                what: format!(
                    "finding {i} ({} bytes of JSON; at most {} are allowed)",
                    body.len(),
                    StoredFinding::MAX_BYTES
                ),
            });
        }
        let key = f.group_key();
        let found = tx
            .query_row(
                "SELECT id, finding_count, stored_findings, max_severity, first_seen, \
                 last_seen, technique FROM incidents WHERE group_key = ?1 AND state != 'resolved'",
                [&key],
                |r| {
                    Ok(Active {
                        id: r.get(0)?,
                        count: u32_col(r, 1)?,
                        stored: u32_col(r, 2)?,
                        max_severity: parse(r, 3)?,
                        first_seen: r.get(4)?,
                        last_seen: r.get(5)?,
                        technique: r.get(6)?,
                    })
                },
            )
            .optional()
            .map_err(write_err("incident"))?;
        let new_incident = found.is_none();
        let mut inc = match found {
            Some(a) => a,
            None => open_incident_tx(tx, f, &key, seen, now, at)?,
        };
        inc.count = inc.count.saturating_add(1);
        inc.max_severity = inc.max_severity.max(f.severity);
        inc.first_seen = inc.first_seen.min(seen);
        inc.last_seen = inc.last_seen.max(seen);
        if inc.technique.is_none() {
            inc.technique.clone_from(&f.technique);
        }
        let finding_id = if inc.stored < max_stored {
            tx.execute(
                "INSERT INTO findings (incident, at, body) VALUES (?1, ?2, ?3)",
                params![inc.id, seen, body],
            )
            .map_err(write_err("finding"))?;
            let fid = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO incident_events (incident, at, event, finding) \
                 VALUES (?1, ?2, 'finding', ?3)",
                params![inc.id, seen, fid],
            )
            .map_err(write_err("incident event"))?;
            inc.stored += 1;
            Some(FindingId(u64::try_from(fid).map_err(|_| {
                WriteError::Corrupt {
                    what: "finding id".to_owned(),
                }
            })?))
        } else {
            None
        };
        tx.execute(
            "UPDATE incidents SET finding_count = ?2, stored_findings = ?3, max_severity = ?4, \
             first_seen = ?5, last_seen = ?6, technique = ?7, updated_at = ?8 WHERE id = ?1",
            params![
                inc.id,
                i64::from(inc.count),
                i64::from(inc.stored),
                inc.max_severity.as_str(),
                inc.first_seen,
                inc.last_seen,
                inc.technique,
                now
            ],
        )
        .map_err(write_err("incident"))?;
        out.push(RecordedFinding {
            finding_id,
            incident_id: IncidentId(u64::try_from(inc.id).map_err(|_| WriteError::Corrupt {
                what: "incident id".to_owned(),
            })?),
            new_incident,
            findings_in_incident: inc.count,
        });
    }
    Ok(out)
}

/// Opens an incident for `f` (no findings counted yet) with its `open_incident` audit record.
fn open_incident_tx(
    tx: &Transaction<'_>,
    f: &Finding,
    key: &str,
    seen: i64,
    now: i64,
    at: OffsetDateTime,
) -> Result<Active, WriteError> {
    tx.execute(
        "INSERT INTO incidents (tenant, device, peer, kind, group_key, state, max_severity, \
         finding_count, stored_findings, first_seen, last_seen, opened_at, updated_at, \
         summary, technique) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'open', ?6, 0, 0, ?7, ?7, ?8, ?8, ?9, ?10)",
        params![
            f.device.as_ref().map(|d| d.tenant.as_str()),
            f.device.as_ref().map(|d| d.device.as_str()),
            f.peer.map(|p| p.to_string()),
            f.kind,
            key,
            f.severity.as_str(),
            seen,
            now,
            f.summary,
            f.technique
        ],
    )
    .map_err(write_err("incident"))?;
    let id = tx.last_insert_rowid();
    tx.execute(
        "INSERT INTO incident_events (incident, at, event, to_state, actor) \
         VALUES (?1, ?2, 'state', 'open', 'system')",
        params![id, now],
    )
    .map_err(write_err("incident event"))?;
    let public = IncidentId(u64::try_from(id).map_err(|_| WriteError::Corrupt {
        what: "incident id".to_owned(),
    })?);
    let entry = AuditEntry::new(at, "system", "open_incident", public.to_string())
        .reason(f.summary.clone())
        .detail(serde_json::json!({
            "incident": public.0,
            "group_key": key,
            "kind": f.kind,
            "severity": f.severity,
            "device": f.device.as_ref().map(|d| d.to_string()),
            "peer": f.peer.map(|p| p.to_string()),
        }));
    append_tx(tx, &entry)?;
    Ok(Active {
        id,
        count: 0,
        stored: 0,
        max_severity: f.severity,
        first_seen: seen,
        last_seen: seen,
        technique: None,
    })
}

pub(super) fn list_incidents(
    c: &Connection,
    filter: &IncidentFilter,
) -> rusqlite::Result<Vec<Incident>> {
    let limit = limit(filter.limit);
    let mut st = c.prepare(&format!(
        "SELECT {INCIDENT_COLS} FROM incidents \
         WHERE (?1 IS NULL OR tenant = ?1) \
         AND (?2 IS NULL OR (tenant = ?2 AND device = ?3)) \
         AND (?4 IS NULL OR state = ?4) \
         ORDER BY last_seen DESC, id DESC LIMIT ?5"
    ))?;
    let rows = st.query_map(
        params![
            filter.tenant.as_ref().map(|t| t.as_str()),
            filter.device.as_ref().map(|d| d.tenant.as_str()),
            filter.device.as_ref().map(|d| d.device.as_str()),
            filter.state.map(IncidentState::as_str),
            limit
        ],
        incident_row,
    )?;
    rows.collect()
}

fn limit(asked: usize) -> i64 {
    let n = match asked {
        0 => IncidentFilter::DEFAULT_LIMIT,
        n => n.min(IncidentFilter::MAX_LIMIT),
    };
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn get_incident(
    c: &Connection,
    id: IncidentId,
) -> Result<Option<IncidentDetail>, ReadError> {
    let Some(incident) = get_incident_row(c, id).map_err(read_err)? else {
        return Ok(None);
    };
    let sql_id = i64::try_from(id.0).map_err(|_| ReadError::Corrupt {
        what: "incident id".to_owned(),
    })?;
    let corrupt = |what: &str| {
        let what = format!("{what} of incident {id}");
        move |e: rusqlite::Error| match read_err(e) {
            ReadError::Corrupt { .. } => ReadError::Corrupt { what: what.clone() },
            other => other,
        }
    };
    let findings: Vec<StoredFinding> = {
        let mut st = c
            .prepare("SELECT id, body FROM findings WHERE incident = ?1 ORDER BY id")
            .map_err(read_err)?;
        st.query_map([sql_id], |r| {
            Ok(StoredFinding {
                id: FindingId(id_col(r, 0)?),
                incident: id,
                finding: json(r, 1)?,
            })
        })
        .map_err(read_err)?
        .collect::<rusqlite::Result<_>>()
        .map_err(corrupt("findings"))?
    };
    let timeline: Vec<TimelineEntry> = {
        let mut st = c
            .prepare(
                "SELECT e.at, e.event, e.finding, e.action, e.from_state, e.to_state, e.actor, \
                 e.note, f.body, a.kind \
                 FROM incident_events e \
                 LEFT JOIN findings f ON f.id = e.finding \
                 LEFT JOIN actions a ON a.id = e.action \
                 WHERE e.incident = ?1 ORDER BY e.at, e.id",
            )
            .map_err(read_err)?;
        st.query_map([sql_id], timeline_row)
            .map_err(read_err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(corrupt("timeline"))?
    };
    Ok(Some(IncidentDetail {
        incident,
        findings,
        timeline,
    }))
}

fn timeline_row(r: &Row<'_>) -> rusqlite::Result<TimelineEntry> {
    let at = ts(r, 0)?;
    let event: String = r.get(1)?;
    let event = match event.as_str() {
        "finding" => {
            let id = id_opt(r, 2)?.ok_or_else(|| conv(2, BadValue("no finding".to_owned())))?;
            let body: Option<String> = r.get(8)?;
            let body = body.ok_or_else(|| conv(8, BadValue("no finding".to_owned())))?;
            let f: Finding = serde_json::from_str(&body).map_err(|e| conv(8, e))?;
            TimelineEvent::Finding {
                finding: FindingId(id),
                kind: f.kind,
                severity: f.severity,
                summary: f.summary,
            }
        }
        "state" => TimelineEvent::State {
            from: parse_opt(r, 4)?,
            to: parse(r, 5)?,
            by: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
            note: r.get(7)?,
        },
        "action" => {
            let id = id_opt(r, 3)?.ok_or_else(|| conv(3, BadValue("no action".to_owned())))?;
            let kind: Option<String> = r.get(9)?;
            TimelineEvent::Action {
                action: ActionId(id),
                kind: kind.ok_or_else(|| conv(9, BadValue("no action".to_owned())))?,
                state: parse(r, 5)?,
                by: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
                note: r.get(7)?,
            }
        }
        _ => return Err(conv(1, BadValue(event))),
    };
    Ok(TimelineEntry { at, event })
}

pub(super) fn set_incident_state_tx(
    tx: &Transaction<'_>,
    id: IncidentId,
    to: IncidentState,
    by: &str,
    note: Option<&str>,
    audit: &AuditEntry,
) -> Result<Incident, WriteError> {
    let inc = get_incident_row(tx, id)
        .map_err(write_err("incident"))?
        .ok_or_else(|| WriteError::NotFound {
            what: format!("incident {id}"),
        })?;
    inc.state.transition(to)?;
    let at = secs(audit.at);
    let resolved_at = (to == IncidentState::Resolved).then_some(at);
    let sql_id = sql_id(id.0)?;
    tx.execute(
        "UPDATE incidents SET state = ?2, updated_at = ?3, resolved_at = ?4 WHERE id = ?1",
        params![sql_id, to.as_str(), at, resolved_at],
    )
    .map_err(write_err(&format!("incident {id}")))?;
    tx.execute(
        "INSERT INTO incident_events (incident, at, event, from_state, to_state, actor, note) \
         VALUES (?1, ?2, 'state', ?3, ?4, ?5, ?6)",
        params![sql_id, at, inc.state.as_str(), to.as_str(), by, note],
    )
    .map_err(write_err("incident event"))?;
    append_tx(tx, audit)?;
    get_incident_row(tx, id)
        .map_err(write_err("incident"))?
        .ok_or_else(|| WriteError::NotFound {
            what: format!("incident {id}"),
        })
}

pub(super) fn record_action_tx(
    tx: &Transaction<'_>,
    a: &ActionRecord,
    audit: &AuditEntry,
) -> Result<ActionId, WriteError> {
    check_kind("action", &a.kind)?;
    if !a.state.is_initial() {
        return Err(WriteError::Invalid {
            what: format!(
                "action state {} (an action is recorded as pending_approval, done or failed)",
                a.state
            ),
        });
    }
    let params_text = serde_json::to_string(&a.params).map_err(|_| WriteError::Invalid {
        what: "action params (not serializable as JSON)".to_owned(),
    })?;
    if params_text.len() > StoredAction::MAX_PARAMS_BYTES {
        return Err(WriteError::Invalid {
            what: format!(
                "action params ({} bytes of JSON; at most {} are allowed)",
                params_text.len(),
                StoredAction::MAX_PARAMS_BYTES
            ),
        });
    }
    let incident = match a.incident {
        Some(i) => {
            if get_incident_row(tx, i)
                .map_err(write_err("incident"))?
                .is_none()
            {
                return Err(WriteError::NotFound {
                    what: format!("incident {i}"),
                });
            }
            Some(sql_id(i.0)?)
        }
        None => None,
    };
    let at = secs(audit.at);
    tx.execute(
        "INSERT INTO actions (incident, tenant, device, peer, kind, params, state, playbook, \
         created_by, created_at, updated_by, updated_at, note, expires_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?9, ?10, NULL, ?11)",
        params![
            incident,
            a.device.as_ref().map(|d| d.tenant.as_str()),
            a.device.as_ref().map(|d| d.device.as_str()),
            a.peer.map(|p| p.to_string()),
            a.kind,
            params_text,
            a.state.as_str(),
            a.playbook,
            a.by,
            at,
            a.expires_at.map(secs)
        ],
    )
    .map_err(write_err("action"))?;
    let raw = tx.last_insert_rowid();
    let id = ActionId(u64::try_from(raw).map_err(|_| WriteError::Corrupt {
        what: "action id".to_owned(),
    })?);
    if let Some(inc) = incident {
        tx.execute(
            "INSERT INTO incident_events (incident, at, event, action, to_state, actor) \
             VALUES (?1, ?2, 'action', ?3, ?4, ?5)",
            params![inc, at, raw, a.state.as_str(), a.by],
        )
        .map_err(write_err("incident event"))?;
        touch_incident(tx, inc, at)?;
    }
    append_tx(
        tx,
        &with_detail(audit, "action", serde_json::Value::from(id.0)),
    )?;
    Ok(id)
}

fn touch_incident(tx: &Transaction<'_>, incident: i64, at: i64) -> Result<(), WriteError> {
    tx.execute(
        "UPDATE incidents SET updated_at = MAX(updated_at, ?2) WHERE id = ?1",
        params![incident, at],
    )
    .map_err(write_err("incident"))?;
    Ok(())
}

pub(super) fn set_action_state_tx(
    tx: &Transaction<'_>,
    id: ActionId,
    state: ActionState,
    by: &str,
    note: Option<&str>,
    audit: &AuditEntry,
) -> Result<StoredAction, WriteError> {
    let a = get_action_row(tx, id)
        .map_err(write_err("action"))?
        .ok_or_else(|| WriteError::NotFound {
            what: format!("action {id}"),
        })?;
    a.state.transition(state)?;
    let at = secs(audit.at);
    let raw = sql_id(id.0)?;
    tx.execute(
        "UPDATE actions SET state = ?2, updated_by = ?3, updated_at = ?4, note = ?5 \
         WHERE id = ?1",
        params![raw, state.as_str(), by, at, note],
    )
    .map_err(write_err(&format!("action {id}")))?;
    if let Some(inc) = a.incident {
        let inc = sql_id(inc.0)?;
        tx.execute(
            "INSERT INTO incident_events (incident, at, event, action, from_state, to_state, \
             actor, note) VALUES (?1, ?2, 'action', ?3, ?4, ?5, ?6, ?7)",
            params![inc, at, raw, a.state.as_str(), state.as_str(), by, note],
        )
        .map_err(write_err("incident event"))?;
        touch_incident(tx, inc, at)?;
    }
    append_tx(tx, audit)?;
    get_action_row(tx, id)
        .map_err(write_err("action"))?
        .ok_or_else(|| WriteError::NotFound {
            what: format!("action {id}"),
        })
}

pub(super) fn list_actions(
    c: &Connection,
    filter: &ActionFilter,
) -> rusqlite::Result<Vec<StoredAction>> {
    let incident = filter.incident.and_then(|i| i64::try_from(i.0).ok());
    if filter.incident.is_some() && incident.is_none() {
        return Ok(Vec::new());
    }
    let mut st = c.prepare(&format!(
        "SELECT {ACTION_COLS} FROM actions \
         WHERE (?1 IS NULL OR incident = ?1) \
         AND (?2 IS NULL OR state = ?2) \
         AND (?3 IS NULL OR (tenant = ?3 AND device = ?4)) \
         AND (?5 IS NULL OR (expires_at IS NOT NULL AND expires_at <= ?5)) \
         AND (?7 IS NULL OR tenant = ?7) \
         AND (?8 IS NULL OR (expires_at IS NOT NULL AND expires_at > ?8)) \
         AND (?9 IS NULL OR kind = ?9) \
         ORDER BY id LIMIT ?6"
    ))?;
    let rows = st.query_map(
        params![
            incident,
            filter.state.map(ActionState::as_str),
            filter.device.as_ref().map(|d| d.tenant.as_str()),
            filter.device.as_ref().map(|d| d.device.as_str()),
            filter.expires_by.map(secs),
            limit(filter.limit),
            filter.tenant.as_ref().map(TenantId::as_str),
            filter.expires_after.map(secs),
            filter.kind.as_deref()
        ],
        action_row,
    )?;
    rows.collect()
}

pub(super) fn put_ban_tx(
    tx: &Transaction<'_>,
    addr: IpAddr,
    until: OffsetDateTime,
    reason: &str,
    audit: &AuditEntry,
) -> Result<Ban, WriteError> {
    if until <= audit.at {
        return Err(WriteError::Invalid {
            what: format!("ban of {addr} (it would end before it starts)"),
        });
    }
    tx.execute(
        "INSERT INTO bans (addr, until, reason, created_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (addr) DO UPDATE SET until = excluded.until, reason = excluded.reason, \
         created_at = excluded.created_at",
        params![addr.to_string(), secs(until), reason, secs(audit.at)],
    )
    .map_err(write_err(&format!("ban of {addr}")))?;
    append_tx(tx, audit)?;
    Ok(Ban {
        addr,
        until: trunc(until)?,
        reason: reason.to_owned(),
        created_at: trunc(audit.at)?,
    })
}

pub(super) fn remove_ban_tx(
    tx: &Transaction<'_>,
    addr: IpAddr,
    audit: &AuditEntry,
) -> Result<Ban, WriteError> {
    let ban = tx
        .query_row(
            &format!("SELECT {BAN_COLS} FROM bans WHERE addr = ?1"),
            [addr.to_string()],
            ban_row,
        )
        .optional()
        .map_err(write_err("ban"))?
        .ok_or_else(|| WriteError::NotFound {
            what: format!("ban of {addr}"),
        })?;
    tx.execute("DELETE FROM bans WHERE addr = ?1", [addr.to_string()])
        .map_err(write_err("ban"))?;
    append_change_tx(tx, audit, crate::Change::BanLifted { addr })?;
    Ok(ban)
}

pub(super) fn list_bans(c: &Connection, now: OffsetDateTime) -> rusqlite::Result<Vec<Ban>> {
    let mut st = c.prepare(&format!(
        "SELECT {BAN_COLS} FROM bans WHERE until > ?1 ORDER BY addr"
    ))?;
    let rows = st.query_map([secs(now)], ban_row)?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn finding_times_round_towards_the_past() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1500);
        assert_eq!(system_secs(t), Some(1));
        let before = SystemTime::UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(system_secs(before), Some(-2));
        assert_eq!(system_secs(SystemTime::UNIX_EPOCH), Some(0));
    }
}
