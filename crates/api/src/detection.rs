//! The detection and response routes of the REST API: incidents and their timelines,
//! actions waiting for an operator, reversals, bans, and the detection rules.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use gatehouse_store::{
    ActionFilter, ActionId, AuditEntry, IncidentFilter, IncidentId, IncidentState,
};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::problem::ProblemBody;
use crate::rest::{JsonObject, blocking};
use crate::{ApiState, Principal, Problem};
use gatehouse_runtime::{ActionError, DetectionService};

type ApiResult<T> = Result<T, Problem>;

#[derive(OpenApi)]
#[openapi(
    paths(
        list_incidents,
        get_incident,
        acknowledge_incident,
        resolve_incident,
        list_actions,
        approve_action,
        reject_action,
        reverse_action,
        list_bans,
        delete_ban,
        list_rules
    ),
    components(schemas(NoteDto))
)]
pub(crate) struct DetectionDoc;

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/incidents", get(list_incidents))
        .route("/api/v1/incidents/{id}", get(get_incident))
        .route(
            "/api/v1/incidents/{id}/acknowledge",
            post(acknowledge_incident),
        )
        .route("/api/v1/incidents/{id}/resolve", post(resolve_incident))
        .route("/api/v1/actions", get(list_actions))
        .route("/api/v1/actions/{id}/approve", post(approve_action))
        .route("/api/v1/actions/{id}/reject", post(reject_action))
        .route("/api/v1/actions/{id}/reverse", post(reverse_action))
        .route("/api/v1/bans", get(list_bans))
        .route("/api/v1/bans/{addr}", delete(delete_ban))
        .route("/api/v1/detection/rules", get(list_rules))
}

impl From<ActionError> for Problem {
    fn from(e: ActionError) -> Self {
        match e {
            ActionError::NotFound(m) => Problem::not_found(m),
            ActionError::Invalid(m) => Problem::conflict(m),
            ActionError::Failed(m) => Problem::conflict(m),
            ActionError::Store(m) => Problem::internal(m),
        }
    }
}

fn service(s: &ApiState) -> ApiResult<Arc<DetectionService>> {
    s.detection
        .clone()
        .ok_or_else(|| Problem::conflict("detection is off here (detect.enabled = false)"))
}

fn json_of<T: serde::Serialize>(v: &T) -> ApiResult<Value> {
    serde_json::to_value(v).map_err(Problem::internal)
}

/// An optional query parameter, parsed; `what` names it in the error.
fn optional<T: std::str::FromStr>(text: Option<&str>, what: &str) -> ApiResult<Option<T>> {
    text.map(|t| {
        t.parse()
            .map_err(|_| Problem::invalid(format!("{t:?} is not {what}")))
    })
    .transpose()
}

/// The incident, if it exists and the operator may see its tenant (404 otherwise).
fn visible_incident(
    s: &ApiState,
    who: &Principal,
    id: IncidentId,
) -> ApiResult<gatehouse_store::IncidentDetail> {
    let missing = || Problem::not_found(format!("no incident {id}"));
    let detail = s.registry.get_incident(id)?.ok_or_else(missing)?;
    match &detail.incident.tenant {
        Some(t) if who.sees(t) => Ok(detail),
        None if who.tenant.is_none() => Ok(detail),
        _ => Err(missing()),
    }
}

/// The action, if it exists and the operator may see its device's tenant (404 otherwise).
fn visible_action(
    s: &ApiState,
    who: &Principal,
    id: ActionId,
) -> ApiResult<gatehouse_store::StoredAction> {
    let missing = || Problem::not_found(format!("no action {id}"));
    let action = s.registry.get_action(id)?.ok_or_else(missing)?;
    match &action.device {
        Some(d) if who.sees(&d.tenant) => Ok(action),
        None if who.tenant.is_none() => Ok(action),
        _ => Err(missing()),
    }
}

fn incident_id(text: &str) -> ApiResult<IncidentId> {
    text.parse()
        .map_err(|_| Problem::invalid(format!("{text:?} is not an incident id")))
}

fn action_id(text: &str) -> ApiResult<ActionId> {
    text.parse()
        .map_err(|_| Problem::invalid(format!("{text:?} is not an action id")))
}

/// Filters of the incident list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct IncidentQuery {
    #[param(schema_with = crate::schema::incident_state)]
    state: Option<String>,
    #[param(schema_with = crate::schema::device_ref)]
    device: Option<String>,
    #[param(schema_with = crate::schema::tenant_id)]
    tenant: Option<String>,
    /// At most this many: 1 to 1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Incidents, newest first.
#[utoipa::path(get, path = "/api/v1/incidents", tag = "incidents", params(IncidentQuery),
    responses((status = 200, body = Object), (status = 422, body = ProblemBody)))]
async fn list_incidents(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<IncidentQuery>,
) -> ApiResult<Json<Value>> {
    let state = optional(
        q.state.as_deref(),
        "an incident state (open, acknowledged, resolved)",
    )?;
    let device = optional(q.device.as_deref(), "tenant/device")?;
    let tenant = who.narrow(optional(q.tenant.as_deref(), "a tenant id")?)?;
    if let Some(d) = &device {
        let d: &gatehouse_types::DeviceRef = d;
        who.check_tenant(&d.tenant, || format!("device {d}"))?;
    }
    let filter = IncidentFilter {
        tenant,
        device,
        state,
        limit: crate::rest::page_limit(q.limit)?,
    };
    blocking(move || {
        let list = s.registry.list_incidents(&filter)?;
        Ok(Json(json!({ "incidents": json_of(&list)? })))
    })
    .await
}

/// An incident with its findings and its timeline of findings, actions and state
/// changes.
#[utoipa::path(get, path = "/api/v1/incidents/{id}", tag = "incidents",
    params(IncidentPath),
    responses((status = 200, body = Object), (status = 404, body = ProblemBody)))]
async fn get_incident(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(IncidentPath { id }): Path<IncidentPath>,
) -> ApiResult<Json<Value>> {
    let id = incident_id(&id)?;
    blocking(move || {
        let detail = visible_incident(&s, &who, id)?;
        Ok(Json(json_of(&detail)?))
    })
    .await
}

/// A note for the audit log and the incident's timeline.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoteDto {
    /// Why: at most 2048 characters.
    #[serde(default)]
    #[schema(max_length = 2048)]
    note: Option<String>,
}

async fn transition(
    s: ApiState,
    who: Principal,
    id: String,
    to: IncidentState,
    body: Option<JsonObject<NoteDto>>,
) -> ApiResult<Json<Value>> {
    let id = incident_id(&id)?;
    let note = body.and_then(|JsonObject(b)| b.note);
    if note.as_ref().is_some_and(|n| n.chars().count() > 2048) {
        return Err(Problem::invalid("the note is longer than 2048 characters"));
    }
    let by = who.actor();
    blocking(move || {
        visible_incident(&s, &who, id)?;
        let mut audit = AuditEntry::new(
            time::OffsetDateTime::now_utc(),
            &by,
            match to {
                IncidentState::Acknowledged => "acknowledge_incident",
                IncidentState::Resolved => "resolve_incident",
                _ => "reopen_incident",
            },
            format!("incident:{id}"),
        );
        if let Some(n) = &note {
            audit = audit.reason(n.clone());
        }
        let incident = s
            .registry
            .set_incident_state(id, to, &by, note.as_deref(), &audit)
            .map_err(|e| match e {
                gatehouse_store::WriteError::NotFound { .. } => {
                    Problem::not_found(format!("no incident {id}"))
                }
                e => Problem::from(e),
            })?;
        Ok(Json(json_of(&incident)?))
    })
    .await
}

/// Acknowledge an incident: someone is on it.
#[utoipa::path(post, path = "/api/v1/incidents/{id}/acknowledge", tag = "incidents",
    params(IncidentPath), request_body = NoteDto,
    responses((status = 200, body = Object), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody)))]
async fn acknowledge_incident(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(IncidentPath { id }): Path<IncidentPath>,
    body: Option<JsonObject<NoteDto>>,
) -> ApiResult<Json<Value>> {
    transition(s, who, id, IncidentState::Acknowledged, body).await
}

/// Resolve an incident. A later finding of the same kind on the same subject opens a new
/// one.
#[utoipa::path(post, path = "/api/v1/incidents/{id}/resolve", tag = "incidents",
    params(IncidentPath), request_body = NoteDto,
    responses((status = 200, body = Object), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody)))]
async fn resolve_incident(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(IncidentPath { id }): Path<IncidentPath>,
    body: Option<JsonObject<NoteDto>>,
) -> ApiResult<Json<Value>> {
    transition(s, who, id, IncidentState::Resolved, body).await
}

/// Filters of the action list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ActionQuery {
    #[param(schema_with = crate::schema::action_state)]
    state: Option<String>,
    #[param(schema_with = crate::schema::incident_id)]
    incident: Option<String>,
    #[param(schema_with = crate::schema::device_ref)]
    device: Option<String>,
}

/// An incident named in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct IncidentPath {
    #[param(schema_with = crate::schema::incident_id)]
    id: String,
}

/// An action named in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct ActionPath {
    #[param(schema_with = crate::schema::action_id)]
    id: String,
}

/// A banned address named in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct BanPath {
    #[param(schema_with = crate::schema::ip_addr)]
    addr: String,
}

/// Response actions: carried out, failed, reversed, or waiting for an operator.
#[utoipa::path(get, path = "/api/v1/actions", tag = "incidents", params(ActionQuery),
    responses((status = 200, body = Object), (status = 422, body = ProblemBody)))]
async fn list_actions(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<ActionQuery>,
) -> ApiResult<Json<Value>> {
    let state = optional(
        q.state.as_deref(),
        "an action state (pending_approval, done, failed, reversed, rejected)",
    )?;
    let incident = q.incident.as_deref().map(incident_id).transpose()?;
    let device = optional(q.device.as_deref(), "tenant/device")?;
    if let Some(d) = &device {
        let d: &gatehouse_types::DeviceRef = d;
        who.check_tenant(&d.tenant, || format!("device {d}"))?;
    }
    let filter = ActionFilter {
        incident,
        state,
        device,
        tenant: who.tenant.clone(),
        ..ActionFilter::default()
    };
    blocking(move || {
        let list = s.registry.list_actions(&filter)?;
        Ok(Json(json!({ "actions": json_of(&list)? })))
    })
    .await
}

/// Approve an action a playbook in `approve` mode proposed: it is carried out now.
#[utoipa::path(post, path = "/api/v1/actions/{id}/approve", tag = "incidents",
    params(ActionPath),
    responses((status = 200, body = Object), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody)))]
async fn approve_action(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(ActionPath { id }): Path<ActionPath>,
) -> ApiResult<Json<Value>> {
    let id = action_id(&id)?;
    let svc = service(&s)?;
    let by = who.actor();
    blocking(move || {
        visible_action(&s, &who, id)?;
        Ok(Json(json_of(&svc.approve(id, &by)?)?))
    })
    .await
}

/// Reject an action waiting for approval: it is not carried out.
#[utoipa::path(post, path = "/api/v1/actions/{id}/reject", tag = "incidents",
    params(ActionPath), request_body = NoteDto,
    responses((status = 200, body = Object), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody)))]
async fn reject_action(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(ActionPath { id }): Path<ActionPath>,
    body: Option<JsonObject<NoteDto>>,
) -> ApiResult<Json<Value>> {
    let id = action_id(&id)?;
    let note = body.and_then(|JsonObject(b)| b.note);
    let by = who.actor();
    blocking(move || {
        visible_action(&s, &who, id)?;
        let updated = gatehouse_runtime::ops::write_reject(&*s.registry, id, &by, note.as_deref())?;
        Ok(Json(json_of(&updated)?))
    })
    .await
}

/// Reverse an action that was carried out: release from quarantine, lift a throttle or a
/// ban, reinstate a revoked device (which must then enroll again).
#[utoipa::path(post, path = "/api/v1/actions/{id}/reverse", tag = "incidents",
    params(ActionPath), request_body = NoteDto,
    responses((status = 200, body = Object), (status = 404, body = ProblemBody), (status = 409, body = ProblemBody)))]
async fn reverse_action(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(ActionPath { id }): Path<ActionPath>,
    body: Option<JsonObject<NoteDto>>,
) -> ApiResult<Json<Value>> {
    let id = action_id(&id)?;
    let svc = service(&s)?;
    let note = body.and_then(|JsonObject(b)| b.note);
    let by = who.actor();
    blocking(move || {
        visible_action(&s, &who, id)?;
        Ok(Json(json_of(&svc.reverse(id, &by, note.as_deref())?)?))
    })
    .await
}

/// Source addresses banned now.
#[utoipa::path(get, path = "/api/v1/bans", tag = "incidents",
    responses((status = 200, body = Object)))]
async fn list_bans(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Value>> {
    who.check_unscoped(|| "bans".to_owned())?;
    blocking(move || {
        let bans = s.registry.list_bans(time::OffsetDateTime::now_utc())?;
        Ok(Json(json!({ "bans": json_of(&bans)? })))
    })
    .await
}

/// Lift a ban.
#[utoipa::path(delete, path = "/api/v1/bans/{addr}", tag = "incidents",
    params(BanPath),
    responses((status = 200, body = Object), (status = 404, body = ProblemBody)))]
async fn delete_ban(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(BanPath { addr }): Path<BanPath>,
) -> ApiResult<Json<Value>> {
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| Problem::invalid(format!("{addr:?} is not an IP address")))?;
    who.check_unscoped(|| format!("ban of {addr}"))?;
    let by = who.actor();
    blocking(move || {
        let why = "lifted by an operator";
        let removed = match &s.detection {
            Some(d) => d.lift_ban(addr, &by, why)?,
            None => gatehouse_runtime::ops::write_unban(&*s.registry, addr, &by, why)?,
        };
        Ok(Json(json!({ "addr": addr.to_string(), "lifted": removed })))
    })
    .await
}

/// The detection rules this build has: name, MITRE ATT&CK for ICS technique, what fires
/// it.
#[utoipa::path(get, path = "/api/v1/detection/rules", tag = "incidents",
    responses((status = 200, body = Object)))]
async fn list_rules() -> ApiResult<Json<Value>> {
    let rules: Vec<Value> = gatehouse_detect::Engine::rules()
        .iter()
        .map(|r| json!({ "name": r.name, "technique": r.technique, "description": r.description }))
        .collect();
    Ok(Json(json!({ "rules": rules })))
}
