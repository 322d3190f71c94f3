//! Incidents: the list (by state) and an incident's page with its findings and their
//! evidence, its timeline and its actions; acknowledge, resolve, approve, reject, reverse.

use axum::extract::{Path, Query, State};
use axum::{Extension, Form};
use gatehouse_store::{
    ActionFilter, ActionId, ActionState, IncidentDetail, IncidentFilter, IncidentId, IncidentState,
    Permission, StoredAction, TimelineEvent,
};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::json;

use super::api::{self, Call};
use super::layout::{self, Nav};
use super::{PageError, PageResult, Who, blocking, enc, see_other};
use crate::{ApiState, ConnInfo, Problem};

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    state: Option<String>,
}

/// `GET /ui/incidents`: newest activity first, optionally of one state.
pub(crate) async fn list(
    State(s): State<ApiState>,
    who: Who,
    Query(q): Query<ListQuery>,
) -> PageResult {
    let state = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(t) => Some(t.parse::<IncidentState>().map_err(|_| {
            Problem::invalid(format!(
                "{t:?} is not an incident state (open, acknowledged, resolved)"
            ))
        })?),
    };
    let filter = IncidentFilter {
        tenant: who.p.narrow(None)?,
        state,
        limit: 200,
        ..IncidentFilter::default()
    };
    let registry = s.registry.clone();
    let list = blocking(move || Ok(registry.list_incidents(&filter)?)).await?;
    let current = state.map_or("", IncidentState::as_str);
    let body = html! {
        form.filters method="get" action="/ui/incidents" {
            div {
                label for="f-state" { "State" }
                select #f-state name="state" {
                    @for (v, l) in [("", "any"), ("open", "open"), ("acknowledged", "acknowledged"), ("resolved", "resolved")] {
                        option value=(v) selected[current == v] { (l) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        @if list.is_empty() {
            p.muted { "No incident." }
        } @else {
            p.muted { (list.len()) " shown (at most 200, newest activity first)." }
            (super::overview::incident_table(&list))
        }
    };
    Ok(layout::ok(layout::page(
        &who,
        Nav::Incidents,
        "Incidents",
        body,
    )))
}

/// The incident, if it exists and the operator may see its tenant: the REST API's rule
/// (an address-only incident is seen by operators of every tenant only).
fn visible(s: &ApiState, who: &Who, id: IncidentId) -> Result<IncidentDetail, Problem> {
    let missing = || Problem::not_found(format!("no incident {id}"));
    let detail = s.registry.get_incident(id)?.ok_or_else(missing)?;
    match &detail.incident.tenant {
        Some(t) if who.p.sees(t) => Ok(detail),
        None if who.p.tenant.is_none() => Ok(detail),
        _ => Err(missing()),
    }
}

fn incident_id(text: &str) -> Result<IncidentId, Problem> {
    text.parse()
        .map_err(|_| Problem::not_found(format!("no incident {text:?}")))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ShowQuery {
    done: Option<String>,
}

/// `GET /ui/incidents/{id}`.
pub(crate) async fn show(
    State(s): State<ApiState>,
    who: Who,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> PageResult {
    let id = incident_id(&id)?;
    let st = s.clone();
    let w = who.clone();
    let (detail, actions) = blocking(move || {
        let detail = visible(&st, &w, id)?;
        let actions = st.registry.list_actions(&ActionFilter {
            incident: Some(id),
            tenant: w.p.tenant.clone(),
            limit: IncidentFilter::MAX_LIMIT,
            ..ActionFilter::default()
        })?;
        Ok((detail, actions))
    })
    .await?;
    let title = format!("Incident {}", detail.incident.id);
    let body = render(&who, &detail, &actions, q.done.as_deref());
    Ok(layout::ok(layout::page(&who, Nav::Incidents, &title, body)))
}

fn render(who: &Who, x: &IncidentDetail, actions: &[StoredAction], done: Option<&str>) -> Markup {
    let i = &x.incident;
    let base = format!("/ui/incidents/{}", i.id.get());
    html! {
        (layout::notice(done))
        dl.facts {
            dt { "Kind" } dd { (i.kind) }
            dt { "State" } dd { (layout::badge(i.state.as_str())) }
            dt { "Severity" } dd { (layout::badge(&i.max_severity.to_string())) }
            @if let Some(t) = &i.technique { dt { "Technique" } dd { (t) } }
            dt { "Subject" } dd {
                @if let Some(d) = &i.device {
                    a href={ "/ui/devices/" (enc(d.tenant.as_str())) "/" (enc(d.device.as_str())) } { (d) }
                }
                @if let Some(p) = &i.peer { " address " (p) }
            }
            dt { "Findings" } dd { (i.finding_count) " (" (i.stored_findings) " stored)" }
            dt { "First seen" } dd { (layout::when(i.first_seen)) }
            dt { "Last seen" } dd { (layout::when(i.last_seen)) }
            @if let Some(t) = i.resolved_at { dt { "Resolved" } dd { (layout::when(t)) } }
            dt { "Summary" } dd { (i.summary) }
        }
        div.buttons {
            @if i.state == IncidentState::Open && who.can(Permission::Acknowledge) {
                (layout::button(who, &format!("{base}/acknowledge"), "Acknowledge", "", Some("ack-note")))
            }
            @if i.state != IncidentState::Resolved && who.can(Permission::Act) {
                (layout::button(who, &format!("{base}/resolve"), "Resolve", "primary", Some("resolve-note")))
            }
        }
        section aria-labelledby="act-h" {
            h2 #act-h { "Actions" }
            @if actions.is_empty() {
                p.muted { "No action was taken." }
            } @else {
                div.table-wrap {
                    table.responsive {
                        thead { tr {
                            th scope="col" { "Action" }
                            th scope="col" { "Kind" }
                            th scope="col" { "State" }
                            th scope="col" { "By" }
                            th scope="col" { "Updated" }
                            th scope="col" { "Operator" }
                        } }
                        tbody {
                            @for a in actions {
                                tr {
                                    td data-label="Action" { (a.id) }
                                    td data-label="Kind" {
                                        (a.kind)
                                        @if let Some(p) = &a.playbook { " (" (p) ")" }
                                    }
                                    td data-label="State" {
                                        (layout::badge(a.state.as_str()))
                                        @if let Some(n) = &a.note { " " span.muted { (n) } }
                                    }
                                    td data-label="By" { (a.updated_by) }
                                    td data-label="Updated" { (layout::when(a.updated_at)) }
                                    td data-label="Operator" { (action_buttons(who, a)) }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="find-h" {
            h2 #find-h { "Findings" }
            @if x.findings.is_empty() { p.muted { "No finding stored." } }
            @for f in &x.findings {
                article.finding {
                    h3 { (f.id) " " (f.finding.kind) " " (layout::badge(&f.finding.severity.to_string())) }
                    p { (f.finding.summary) }
                    p.muted {
                        (layout::when_system(f.finding.at))
                        " · confidence " (format!("{:.0}%", f.finding.confidence * 100.0))
                        @if let Some(t) = &f.finding.technique { " · " (t) }
                    }
                    @if !f.finding.evidence.is_empty() {
                        table.evidence {
                            caption { "Evidence" }
                            tbody {
                                @for (k, v) in &f.finding.evidence {
                                    tr { th scope="row" { (k) } td { (v) } }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="tl-h" {
            h2 #tl-h { "Timeline" }
            ol.timeline {
                @for e in &x.timeline {
                    li {
                        (layout::when(e.at)) " "
                        @match &e.event {
                            TimelineEvent::Finding { finding, kind, severity, summary } => {
                                span.kind { "finding" } " " (finding) " " strong { (kind) }
                                " (" (severity.to_string()) "): " (summary)
                            }
                            TimelineEvent::State { from, to, by, note } => {
                                span.kind { "state" } " "
                                @match from { Some(f) => { (f.as_str()) " → " }, None => "opened as " }
                                strong { (to.as_str()) } " by " (by)
                                @if let Some(n) = note { ": " (n) }
                            }
                            TimelineEvent::Action { action, kind, state, by, note } => {
                                span.kind { "action" } " " (action) " " strong { (kind) } " "
                                (layout::badge(state.as_str())) " by " (by)
                                @if let Some(n) = note { ": " (n) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The buttons an operator may use on an action.
fn action_buttons(who: &Who, a: &StoredAction) -> Markup {
    if !who.can(Permission::Act) {
        return html! {};
    }
    let base = format!("/ui/actions/{}", a.id.get());
    let reversible = matches!(
        a.kind.as_str(),
        "quarantine" | "throttle" | "ban" | "revoke"
    );
    let id = a.id.get();
    html! {
        @if a.state == ActionState::PendingApproval {
            (layout::button(who, &format!("{base}/approve"), "Approve", "primary", None))
            (layout::button(who, &format!("{base}/reject"), "Reject", "", Some(&format!("reject-note-{id}"))))
        }
        @if a.state == ActionState::Done && reversible {
            (layout::button(who, &format!("{base}/reverse"),
                if a.kind == "quarantine" { "Release" } else { "Reverse" }, "",
                Some(&format!("reverse-note-{id}"))))
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct NoteForm {
    csrf: Option<String>,
    note: Option<String>,
}

fn note_body(note: Option<String>) -> serde_json::Value {
    json!({ "note": note.filter(|n| !n.trim().is_empty()) })
}

/// `POST /ui/incidents/{id}/{acknowledge|resolve}`: the REST API's
/// `POST /api/v1/incidents/{id}/...`.
pub(crate) async fn transition(
    State(s): State<ApiState>,
    who: Who,
    conn: Option<Extension<ConnInfo>>,
    Path((id, op)): Path<(String, String)>,
    Form(f): Form<NoteForm>,
) -> PageResult {
    who.check_csrf(f.csrf.as_deref())?;
    let (template, done) = match op.as_str() {
        "acknowledge" => ("/api/v1/incidents/{id}/acknowledge", "acknowledged"),
        "resolve" => ("/api/v1/incidents/{id}/resolve", "resolved"),
        _ => return Err(PageError(Problem::not_found("there is no such page"))),
    };
    let id = incident_id(&id)?;
    let outcome = api::call(
        &s,
        &who,
        conn.map(|Extension(c)| c),
        Call::post_json(
            template,
            format!("/api/v1/incidents/{}/{op}", id.get()),
            &note_body(f.note),
        ),
    )
    .await?;
    outcome.map_err(PageError)?;
    Ok(see_other(&format!(
        "/ui/incidents/{}?done={done}",
        id.get()
    )))
}

/// `POST /ui/actions/{id}/{approve|reject|reverse}`: the REST API's
/// `POST /api/v1/actions/{id}/...`; back to the action's incident (or device).
pub(crate) async fn act(
    State(s): State<ApiState>,
    who: Who,
    conn: Option<Extension<ConnInfo>>,
    Path((id, op)): Path<(String, String)>,
    Form(f): Form<NoteForm>,
) -> PageResult {
    who.check_csrf(f.csrf.as_deref())?;
    let (template, done) = match op.as_str() {
        "approve" => ("/api/v1/actions/{id}/approve", "approved"),
        "reject" => ("/api/v1/actions/{id}/reject", "rejected"),
        "reverse" => ("/api/v1/actions/{id}/reverse", "reversed"),
        _ => return Err(PageError(Problem::not_found("there is no such page"))),
    };
    let id: ActionId = id
        .parse()
        .map_err(|_| Problem::not_found(format!("no action {id:?}")))?;
    // approve takes no body.
    let call = if op == "approve" {
        Call {
            method: axum::http::Method::POST,
            template,
            path: format!("/api/v1/actions/{}/approve", id.get()),
            body: None,
        }
    } else {
        Call::post_json(
            template,
            format!("/api/v1/actions/{}/{op}", id.get()),
            &note_body(f.note),
        )
    };
    let outcome = api::call(&s, &who, conn.map(|Extension(c)| c), call).await?;
    let action = outcome.map_err(PageError)?;
    let device = &action["device"];
    let back = match (
        action["incident"].as_u64(),
        device["tenant"].as_str(),
        device["device"].as_str(),
    ) {
        (Some(i), _, _) => format!("/ui/incidents/{i}?done={done}"),
        (None, Some(t), Some(d)) => format!("/ui/devices/{}/{}?done={done}", enc(t), enc(d)),
        _ => "/ui/incidents".to_owned(),
    };
    Ok(see_other(&back))
}
