//! The device list and a device's page: identity, certificates, facts, score and factors,
//! verdict, the incidents, actions and audit records about it, and the release of a
//! quarantine.

use axum::extract::{Path, Query, State};
use axum::{Extension, Form};
use gatehouse_store::{
    ActionFilter, ActionState, AuditRecord, Certificate, Cursor, Device, DeviceFilter,
    DeviceStatus, Incident, IncidentFilter, ModelId, Permission, Registry, StoredAction,
};
use gatehouse_types::{DeviceRef, TenantId};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{self, Call};
use super::layout::{self, Nav};
use super::{PageError, PageResult, Who, blocking, enc, see_other};
use crate::rest::device_ref;
use crate::{ApiState, ConnInfo, Problem};
use gatehouse_runtime::TrustView;

/// Devices a page.
const PAGE: usize = 50;

/// Audit records scanned back from the head for a device's timeline.
const AUDIT_SCAN: u64 = 20_000;

/// Audit records shown on a device's timeline.
const AUDIT_SHOWN: usize = 100;

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    tenant: Option<String>,
    status: Option<String>,
    model: Option<String>,
    tier: Option<String>,
    cursor: Option<String>,
}

fn device_href(d: &DeviceRef) -> String {
    format!(
        "/ui/devices/{}/{}",
        enc(d.tenant.as_str()),
        enc(d.device.as_str())
    )
}

/// The tier and score of a stored assessment.
fn stored_tier(a: Option<&Value>) -> (Option<String>, Option<u64>) {
    (
        a.and_then(|a| a.get("tier"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        a.and_then(|a| a.get("score")).and_then(Value::as_u64),
    )
}

fn empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// `GET /ui/devices`: the devices the operator sees, a page at a time.
pub(crate) async fn list(
    State(s): State<ApiState>,
    who: Who,
    Query(q): Query<ListQuery>,
) -> PageResult {
    let asked = match empty(&q.tenant) {
        Some(t) => {
            Some(TenantId::new(t).map_err(|e| Problem::invalid(format!("tenant {t:?}: {e}")))?)
        }
        None => None,
    };
    let status = match empty(&q.status) {
        None => None,
        Some(st) => Some(
            serde_json::from_value::<DeviceStatus>(json!(st)).map_err(|_| {
                Problem::invalid(format!("status {st:?}: active, revoked or blocked"))
            })?,
        ),
    };
    let model = match empty(&q.model) {
        Some(m) => {
            Some(ModelId::new(m).map_err(|e| Problem::invalid(format!("model {m:?}: {e}")))?)
        }
        None => None,
    };
    let filter = DeviceFilter {
        tenant: who.p.narrow(asked)?,
        status,
        model,
    };
    let tier = empty(&q.tier).map(str::to_owned);
    let cursor = empty(&q.cursor).map(Cursor::from_client);
    let registry = s.registry.clone();
    let tier_filter = tier.clone();
    let (rows, next) = blocking(move || {
        let mut rows = Vec::new();
        let mut cursor = cursor;
        // With a tier filter, pages are filled from as many registry pages as it takes
        // (bounded).
        for _ in 0..20 {
            let page = registry.list_devices(&filter, PAGE, cursor.as_ref())?;
            for d in page.items {
                let trust = registry.get_device_trust(&d.device)?;
                let (t, score) = stored_tier(trust.as_ref().and_then(|t| t.assessment.as_ref()));
                if tier_filter.is_none() || tier_filter == t {
                    rows.push((d, t, score));
                }
            }
            cursor = page.next;
            if rows.len() >= PAGE || cursor.is_none() || tier_filter.is_none() {
                break;
            }
        }
        Ok((rows, cursor))
    })
    .await?;
    let keep = |k: &str, v: &Option<String>| {
        empty(v)
            .map(|v| format!("&{k}={}", enc(v)))
            .unwrap_or_default()
    };
    let filters = format!(
        "{}{}{}{}",
        keep("tenant", &q.tenant),
        keep("status", &q.status),
        keep("model", &q.model),
        keep("tier", &q.tier)
    );
    let body = html! {
        form.filters method="get" action="/ui/devices" {
            @if who.p.tenant.is_none() {
                div {
                    label for="f-tenant" { "Tenant" }
                    input #f-tenant name="tenant" type="text" value=(q.tenant.clone().unwrap_or_default());
                }
            }
            div {
                label for="f-status" { "Status" }
                select #f-status name="status" {
                    @for (v, l) in [("", "any"), ("active", "active"), ("revoked", "revoked"), ("blocked", "blocked")] {
                        option value=(v) selected[q.status.as_deref().unwrap_or("") == v] { (l) }
                    }
                }
            }
            div {
                label for="f-tier" { "Tier" }
                select #f-tier name="tier" {
                    @for (v, l) in [("", "any"), ("trusted", "trusted"), ("restricted", "restricted"), ("quarantined", "quarantined"), ("blocked", "blocked")] {
                        option value=(v) selected[q.tier.as_deref().unwrap_or("") == v] { (l) }
                    }
                }
            }
            div {
                label for="f-model" { "Model" }
                input #f-model name="model" type="text" value=(q.model.clone().unwrap_or_default());
            }
            button type="submit" { "Filter" }
        }
        @if rows.is_empty() {
            p.muted { "No device matches." }
        } @else {
            div.table-wrap {
                table.responsive {
                    caption.visually-hidden { "Devices" }
                    thead { tr {
                        th scope="col" { "Device" }
                        th scope="col" { "Model" }
                        th scope="col" { "Status" }
                        th scope="col" { "Tier" }
                        th scope="col" { "Score" }
                        th scope="col" { "Last enrolled" }
                    } }
                    tbody {
                        @for (d, t, score) in &rows {
                            tr {
                                td data-label="Device" { a href=(device_href(&d.device)) { (d.device) } }
                                td data-label="Model" { (d.model) }
                                td data-label="Status" { (layout::badge(&enum_text(&d.status))) }
                                td data-label="Tier" {
                                    @match t { Some(t) => (layout::tier_badge(t)), None => span.muted { "not assessed" } }
                                }
                                td data-label="Score" {
                                    @match score { Some(s) => (s), None => "—" }
                                }
                                td data-label="Last enrolled" {
                                    @match d.last_enrolled_at { Some(t) => (layout::when(t)), None => "never" }
                                }
                            }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if q.cursor.is_some() {
                a href={ "/ui/devices?" (filters.trim_start_matches('&')) } { "First page" }
            }
            @if let Some(c) = &next {
                a href={ "/ui/devices?cursor=" (enc(c.as_str())) (filters) } { "Next page" }
            }
        }
    };
    Ok(layout::ok(layout::page(
        &who,
        Nav::Devices,
        "Devices",
        body,
    )))
}

/// What a device's page shows.
struct Detail {
    device: Device,
    certificates: Vec<Certificate>,
    view: Option<TrustView>,
    trust_error: Option<String>,
    incidents: Vec<Incident>,
    actions: Vec<StoredAction>,
    audit: Option<Vec<AuditRecord>>,
}

/// The latest records whose subject is `subject`, among the last [`AUDIT_SCAN`].
fn audit_about(registry: &dyn Registry, subject: &str) -> Result<Vec<AuditRecord>, Problem> {
    let head = registry
        .audit_head()
        .map_err(Problem::internal)?
        .map_or(0, |(seq, _)| seq);
    let mut next = head.saturating_sub(AUDIT_SCAN).max(1);
    let mut out = Vec::new();
    while next <= head {
        let page = registry
            .audit_records(next, 1000)
            .map_err(Problem::internal)?;
        let Some(last) = page.last() else { break };
        next = last.seq.saturating_add(1);
        out.extend(page.into_iter().filter(|r| r.subject == subject));
    }
    let skip = out.len().saturating_sub(AUDIT_SHOWN);
    Ok(out.split_off(skip))
}

/// The done quarantine actions on the device, newest first.
fn quarantines(actions: &[StoredAction]) -> Vec<&StoredAction> {
    let mut q: Vec<&StoredAction> = actions
        .iter()
        .filter(|a| a.kind == "quarantine" && a.state == ActionState::Done)
        .collect();
    q.sort_by_key(|a| std::cmp::Reverse(a.created_at));
    q
}

#[derive(Debug, Deserialize)]
pub(crate) struct ShowQuery {
    done: Option<String>,
}

/// `GET /ui/devices/{tenant}/{device}`.
pub(crate) async fn show(
    State(s): State<ApiState>,
    who: Who,
    Path((tenant, device)): Path<(String, String)>,
    Query(q): Query<ShowQuery>,
) -> PageResult {
    let d = device_ref(&tenant, &device)?;
    who.p.check_tenant(&d.tenant, || format!("device {d}"))?;
    let registry = s.registry.clone();
    let trust = s.trust.clone();
    let read_audit = who.can(Permission::ReadAudit);
    let scope = who.p.tenant.clone();
    let dd = d.clone();
    let detail = blocking(move || {
        let d = dd;
        let device = registry
            .get_device(&d)?
            .ok_or_else(|| Problem::not_found(format!("device {d} not found")))?;
        let certificates = registry.list_certificates(&d)?;
        let (view, trust_error) = match &trust {
            Some(t) => match t.view(&d) {
                Ok(v) => (Some(v), None),
                Err(e) => (None, Some(Problem::from(e).message)),
            },
            None => (
                None,
                Some("the data plane is not gated by trust here".to_owned()),
            ),
        };
        let incidents = registry.list_incidents(&IncidentFilter {
            device: Some(d.clone()),
            limit: IncidentFilter::MAX_LIMIT,
            ..IncidentFilter::default()
        })?;
        let actions = registry.list_actions(&ActionFilter {
            device: Some(d.clone()),
            tenant: scope,
            limit: IncidentFilter::MAX_LIMIT,
            ..ActionFilter::default()
        })?;
        let audit = if read_audit {
            Some(audit_about(&*registry, &d.to_string())?)
        } else {
            None
        };
        Ok(Detail {
            device,
            certificates,
            view,
            trust_error,
            incidents,
            actions,
            audit,
        })
    })
    .await?;
    let title = format!("Device {d}");
    let body = render(&who, &d, &detail, q.done.as_deref());
    Ok(layout::ok(layout::page(&who, Nav::Devices, &title, body)))
}

fn render(who: &Who, d: &DeviceRef, x: &Detail, done: Option<&str>) -> Markup {
    let dev = &x.device;
    let tier = x
        .view
        .as_ref()
        .map(|v| v.assessment.tier.as_str().to_owned());
    let quarantined = tier.as_deref() == Some("quarantined");
    let held = quarantines(&x.actions);
    let incident_of = |id: Option<gatehouse_store::IncidentId>| {
        id.and_then(|id| x.incidents.iter().find(|i| i.id == id))
    };
    html! {
        (layout::notice(done))
        @if quarantined {
            section.callout aria-labelledby="why-h" {
                h2 #why-h { "Quarantined" }
                @if held.is_empty() {
                    p { "This device is held in quarantine." }
                }
                @for a in &held {
                    p {
                        "Quarantined by action " (a.id)
                        @if let Some(p) = &a.playbook { " (playbook " (p) ")" }
                        " on " (layout::when(a.created_at))
                        @if let Some(i) = incident_of(a.incident) {
                            " for incident "
                            a href={ "/ui/incidents/" (i.id.get()) } { (i.id) }
                            ": " strong { (i.kind) } " — " (i.summary)
                        } @else if let Some(i) = a.incident {
                            " for incident " a href={ "/ui/incidents/" (i.get()) } { (i) }
                        }
                    }
                }
                @if let Some(p) = x.view.as_ref().and_then(|v| v.assessment.pin.as_ref()) {
                    p { "Pinned by " (p.by) " until " (layout::when_system(p.expires_at)) ": " (p.reason) }
                }
                @if let Some(a) = held.first() {
                    @if who.can(Permission::Act) {
                        form.inline method="post" action={ (device_href(d)) "/release" } {
                            (layout::csrf_field(who))
                            input type="hidden" name="action" value=(a.id.get());
                            label for="release-note" { "Note (optional)" }
                            input #release-note name="note" type="text" maxlength="2048";
                            button.primary type="submit" { "Release" }
                        }
                    }
                }
            }
        }
        section aria-labelledby="id-h" {
            h2 #id-h { "Identity" }
            dl.facts {
                dt { "Tenant" } dd { (d.tenant) }
                dt { "Device" } dd { (d.device) }
                dt { "Model" } dd { (dev.model) }
                dt { "Manufacturer" } dd { @match &dev.manufacturer { Some(m) => (m), None => "—" } }
                dt { "Serial" } dd { @match &dev.serial { Some(s) => (s), None => "—" } }
                dt { "Assurance" } dd { (enum_text(&dev.assurance)) }
                dt { "Status" } dd { (layout::badge(&enum_text(&dev.status))) }
                dt { "Registered" } dd { (layout::when(dev.created_at)) }
                dt { "Last enrolled" } dd { @match dev.last_enrolled_at { Some(t) => (layout::when(t)), None => "never" } }
                @if !dev.tags.is_empty() {
                    dt { "Tags" } dd { (dev.tags.join(", ")) }
                }
            }
            h3 { "Certificates" }
            @if x.certificates.is_empty() {
                p.muted { "No certificate issued." }
            } @else {
                div.table-wrap {
                    table.responsive {
                        thead { tr {
                            th scope="col" { "Serial" }
                            th scope="col" { "Issuer" }
                            th scope="col" { "Valid from" }
                            th scope="col" { "Valid until" }
                            th scope="col" { "Status" }
                        } }
                        tbody {
                            @for c in &x.certificates {
                                tr {
                                    td data-label="Serial" { code { (c.serial) } }
                                    td data-label="Issuer" { (c.issuer) }
                                    td data-label="Valid from" { (layout::when(c.not_before)) }
                                    td data-label="Valid until" { (layout::when(c.not_after)) }
                                    td data-label="Status" {
                                        (layout::badge(&enum_text(&c.status)))
                                        @if let Some(t) = c.revoked_at { " " (layout::when(t)) }
                                        @if let Some(r) = &c.revocation_reason { " (" (enum_text(r)) ")" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="trust-h" {
            h2 #trust-h { "Trust" }
            @if let Some(e) = &x.trust_error { p.muted { (e) } }
            @if let Some(v) = &x.view {
                (trust(v))
            }
        }
        section aria-labelledby="tl-h" {
            h2 #tl-h { "Timeline" }
            (timeline(x))
        }
    }
}

fn enum_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn fact_text(v: &Value) -> String {
    match v {
        Value::Null => "unknown".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "none".to_owned(),
        Value::Array(a) => a.iter().map(fact_text).collect::<Vec<_>>().join(", "),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| format!("{k}: {}", fact_text(v)))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

/// `open_services` as `Open services`.
fn sentence(key: &str) -> String {
    let text = key.replace('_', " ");
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => text,
    }
}

fn trust(v: &TrustView) -> Markup {
    let a = &v.assessment;
    let facts = serde_json::to_value(&v.facts).unwrap_or(Value::Null);
    html! {
        dl.facts {
            dt { "Score" } dd { span.big { (a.score) } " / 100" }
            dt { "Tier" } dd { (layout::tier_badge(a.tier.as_str())) }
            dt { "Tier by score alone" } dd { (layout::tier_badge(a.scored_tier.as_str())) }
            @if let Some(p) = &a.pin {
                dt { "Pin" }
                dd { (layout::tier_badge(p.tier.as_str())) " by " (p.by) " until " (layout::when_system(p.expires_at)) ": " (p.reason) }
            }
        }
        h3 { "Factors" }
        @if a.factors.is_empty() {
            p.muted { "No factor takes points off the score." }
        } @else {
            div.table-wrap {
                table.responsive {
                    thead { tr {
                        th scope="col" { "Family" }
                        th scope="col" { "Factor" }
                        th scope="col" { "Penalty" }
                        th scope="col" { "Why" }
                    } }
                    tbody {
                        @for f in &a.factors {
                            tr {
                                td data-label="Family" { (enum_text(&f.family)) }
                                td data-label="Factor" { (f.name) }
                                td data-label="Penalty" { "−" (format!("{:.1}", f.penalty)) }
                                td data-label="Why" { (f.evidence) }
                            }
                        }
                    }
                }
            }
        }
        h3 { "Verdict in force" }
        @match &v.verdict {
            None => p.muted { "No verdict is in force (the device has not connected since the server started)." },
            Some(verdict) => {
                dl.facts {
                    dt { "Tier" } dd { (layout::tier_badge(verdict.tier().as_str())) }
                    dt { "May connect" } dd { (if verdict.may_connect() { "yes" } else { "no" }) }
                    dt { "May publish" } dd {
                        @if verdict.publish().is_empty() { "nothing" }
                        @for t in verdict.publish() { code { (t.pattern) } " " }
                    }
                    dt { "May subscribe" } dd {
                        @if verdict.subscribe().is_empty() { "nothing" }
                        @for t in verdict.subscribe() { code { (t.pattern) } " " }
                    }
                }
                @if !verdict.explanation().is_empty() {
                    h4 { "Why" }
                    ul { @for line in verdict.explanation() { li { (line) } } }
                }
            }
        }
        h3 { "Facts" }
        @if let Value::Object(o) = &facts {
            dl.facts {
                @for (k, val) in o {
                    dt { (sentence(k)) } dd { (fact_text(val)) }
                }
            }
        }
    }
}

/// One line of a device's timeline.
struct Line {
    at: time::OffsetDateTime,
    what: &'static str,
    text: Markup,
}

fn timeline(x: &Detail) -> Markup {
    let mut lines = Vec::new();
    for i in &x.incidents {
        lines.push(Line {
            at: i.opened_at,
            what: "incident",
            text: html! {
                a href={ "/ui/incidents/" (i.id.get()) } { (i.id) } " " strong { (i.kind) }
                " (" (i.max_severity.to_string()) ", " (i.state.as_str()) "): " (i.summary)
            },
        });
    }
    for a in &x.actions {
        lines.push(Line {
            at: a.updated_at,
            what: "action",
            text: html! {
                (a.id) " " strong { (a.kind) } " " (layout::badge(a.state.as_str()))
                " by " (a.updated_by)
                @if let Some(i) = a.incident { " for " a href={ "/ui/incidents/" (i.get()) } { (i) } }
                @if let Some(n) = &a.note { ": " (n) }
            },
        });
    }
    if let Some(records) = &x.audit {
        for r in records {
            lines.push(Line {
                at: time::OffsetDateTime::from_unix_timestamp(r.at)
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
                what: "audit",
                text: html! {
                    "#" (r.seq) " " strong { (r.action) } " by " (r.actor)
                    @if r.outcome != "ok" && !r.outcome.is_empty() { " (" (r.outcome) ")" }
                    @if !r.reason.is_empty() { ": " (r.reason) }
                },
            });
        }
    }
    lines.sort_by_key(|l| std::cmp::Reverse(l.at));
    html! {
        @if x.audit.is_none() {
            p.muted { "Audit records are shown to operators with the read_audit permission." }
        }
        @if lines.is_empty() {
            p.muted { "Nothing yet." }
        } @else {
            ol.timeline {
                @for l in &lines {
                    li {
                        (layout::when(l.at)) " "
                        span class={ "kind kind-" (l.what) } { (l.what) } " "
                        (l.text)
                    }
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ReleaseForm {
    csrf: Option<String>,
    action: Option<String>,
    note: Option<String>,
}

/// `POST /ui/devices/{tenant}/{device}/release`: reverses the device's quarantine action
/// (the REST API's `POST /api/v1/actions/{id}/reverse`).
pub(crate) async fn release(
    State(s): State<ApiState>,
    who: Who,
    conn: Option<Extension<ConnInfo>>,
    Path((tenant, device)): Path<(String, String)>,
    Form(f): Form<ReleaseForm>,
) -> PageResult {
    who.check_csrf(f.csrf.as_deref())?;
    who.require(Permission::Act)?;
    let d = device_ref(&tenant, &device)?;
    who.p.check_tenant(&d.tenant, || format!("device {d}"))?;
    let registry = s.registry.clone();
    let dd = d.clone();
    let scope = who.p.tenant.clone();
    let actions = blocking(move || {
        Ok(registry.list_actions(&ActionFilter {
            device: Some(dd),
            tenant: scope,
            state: Some(ActionState::Done),
            limit: IncidentFilter::MAX_LIMIT,
            ..ActionFilter::default()
        })?)
    })
    .await?;
    let held = quarantines(&actions);
    let chosen = match f.action.as_deref().filter(|a| !a.is_empty()) {
        Some(id) => held
            .iter()
            .find(|a| a.id.get().to_string() == id || a.id.to_string() == id)
            .copied(),
        None => held.first().copied(),
    };
    let Some(action) = chosen else {
        return Err(PageError(Problem::conflict(format!(
            "device {d} is not held by a quarantine action that can be released"
        ))));
    };
    let body = json!({ "note": f.note.filter(|n| !n.trim().is_empty()) });
    let outcome = api::call(
        &s,
        &who,
        conn.map(|Extension(c)| c),
        Call::post_json(
            "/api/v1/actions/{id}/reverse",
            format!("/api/v1/actions/{}/reverse", action.id.get()),
            &body,
        ),
    )
    .await?;
    outcome.map_err(PageError)?;
    Ok(see_other(&format!("{}?done=released", device_href(&d))))
}
