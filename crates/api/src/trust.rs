//! The trust routes of the REST API: a device's score and why, pins, the policy set.

use std::time::{Duration, SystemTime};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use gatehouse_trust::policy::{PolicyEngine, PolicyError, PolicyLimits};
use gatehouse_trust::score::Pin;
use gatehouse_types::Tier;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::problem::ProblemBody;
use crate::rest::{DevicePath, JsonObject, blocking, device_ref};
use crate::{ApiState, Principal, Problem};
use gatehouse_runtime::{TrustError, TrustService};

type ApiResult<T> = Result<T, Problem>;

#[derive(OpenApi)]
#[openapi(
    paths(
        get_trust,
        put_pin,
        delete_pin,
        get_policies,
        put_policies,
        validate_policies
    ),
    components(schemas(PinDto, PolicySetDto, PolicyTextDto))
)]
pub(crate) struct TrustDoc;

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/devices/{tenant}/{device}/trust", get(get_trust))
        .route(
            "/api/v1/devices/{tenant}/{device}/pin",
            put(put_pin).delete(delete_pin),
        )
        .route("/api/v1/policies", get(get_policies).put(put_policies))
        .route("/api/v1/policies/validate", post(validate_policies))
}

impl From<TrustError> for Problem {
    fn from(e: TrustError) -> Self {
        match e {
            TrustError::NoDevice(d) => Problem::not_found(format!("no device {d}")),
            TrustError::Policy(p) => policy_problem(p),
            TrustError::Posture(p) => Problem::invalid(p),
            TrustError::Store(s) => Problem::internal(s),
        }
    }
}

fn service(s: &ApiState) -> ApiResult<std::sync::Arc<TrustService>> {
    s.trust.clone().ok_or_else(|| {
        Problem::conflict(
            "the data plane is not gated by trust here (trust.gate = \"static-policy-only\")",
        )
    })
}

/// A device's trust: score, tier, each factor with its evidence, the pin, the facts they
/// come from, and the verdict in force with its explanation.
#[utoipa::path(get, path = "/api/v1/devices/{tenant}/{device}/trust", tag = "trust",
    params(DevicePath),
    responses((status = 200, body = Object), (status = 404, body = ProblemBody)))]
async fn get_trust(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(DevicePath { tenant, device }): Path<DevicePath>,
) -> ApiResult<Json<serde_json::Value>> {
    let d = device_ref(&tenant, &device)?;
    who.check_tenant(&d.tenant, || format!("device {d}"))?;
    let svc = service(&s)?;
    blocking(move || {
        let view = svc.view(&d)?;
        serde_json::to_value(view)
            .map(Json)
            .map_err(Problem::internal)
    })
    .await
}

/// A pin: the tier a device is held at, whatever its score, until it expires.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PinDto {
    #[schema(schema_with = crate::schema::tier)]
    tier: String,
    #[serde(rename = "for")]
    #[schema(schema_with = crate::schema::pin_duration)]
    duration: String,
    #[schema(schema_with = crate::schema::pin_reason)]
    reason: String,
}

/// Longest reason of a pin, in characters.
pub(crate) const MAX_PIN_REASON: usize = 1024;

/// Longest pin.
const MAX_PIN: Duration = Duration::from_secs(366 * 24 * 3600);

fn pin_from(dto: &PinDto, by: &str) -> ApiResult<Pin> {
    let tier: Tier = serde_json::from_value(serde_json::Value::String(dto.tier.clone()))
        .map_err(|_| Problem::invalid(format!("unknown tier {:?}", dto.tier)))?;
    let duration = humantime_duration(&dto.duration)?;
    if dto.reason.trim().is_empty() {
        return Err(Problem::invalid("a pin needs a reason"));
    }
    if dto.reason.chars().count() > MAX_PIN_REASON {
        return Err(Problem::invalid(format!(
            "the reason is longer than {MAX_PIN_REASON} characters"
        )));
    }
    Ok(Pin {
        tier,
        expires_at: SystemTime::now() + duration,
        reason: dto.reason.clone(),
        by: by.to_owned(),
    })
}

fn humantime_duration(text: &str) -> ApiResult<Duration> {
    let d = humantime_serde::re::humantime::parse_duration(text)
        .map_err(|e| Problem::invalid(format!("duration {text:?}: {e}")))?;
    if d.is_zero() || d > MAX_PIN {
        return Err(Problem::invalid(format!(
            "duration {text:?}: a pin lasts more than nothing and at most a year"
        )));
    }
    Ok(d)
}

/// Pin a device's tier until the pin expires; applied to its open sessions before the
/// answer.
#[utoipa::path(put, path = "/api/v1/devices/{tenant}/{device}/pin", tag = "trust",
    params(DevicePath), request_body = PinDto,
    responses((status = 200, body = Object), (status = 404, body = ProblemBody),
        (status = 422, body = ProblemBody)))]
async fn put_pin(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(DevicePath { tenant, device }): Path<DevicePath>,
    JsonObject(dto): JsonObject<PinDto>,
) -> ApiResult<Json<serde_json::Value>> {
    let d = device_ref(&tenant, &device)?;
    who.check_tenant(&d.tenant, || format!("device {d}"))?;
    let svc = service(&s)?;
    let by = who.actor();
    let pin = pin_from(&dto, &by)?;
    blocking(move || {
        svc.pin(&d, Some(&pin), &by)?;
        serde_json::to_value(svc.view(&d)?)
            .map(Json)
            .map_err(Problem::internal)
    })
    .await
}

/// Remove a device's pin: its tier follows its score again.
#[utoipa::path(delete, path = "/api/v1/devices/{tenant}/{device}/pin", tag = "trust",
    params(DevicePath),
    responses((status = 200, body = Object), (status = 404, body = ProblemBody)))]
async fn delete_pin(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(DevicePath { tenant, device }): Path<DevicePath>,
) -> ApiResult<Json<serde_json::Value>> {
    let d = device_ref(&tenant, &device)?;
    who.check_tenant(&d.tenant, || format!("device {d}"))?;
    let svc = service(&s)?;
    let by = who.actor();
    blocking(move || {
        svc.pin(&d, None, &by)?;
        serde_json::to_value(svc.view(&d)?)
            .map(Json)
            .map_err(Problem::internal)
    })
    .await
}

/// The policy set in force.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PolicySetDto {
    /// Its version in the registry; 0 for the shipped default set.
    version: u32,
    /// The ids of its policies, sorted.
    policies: Vec<String>,
    /// Its text (Cedar).
    text: String,
}

/// A policy set to validate or put in force: the whole set, in Cedar.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyTextDto {
    /// The policies, Cedar syntax, each with an `@id`.
    text: String,
}

fn sorted_ids(engine: &PolicyEngine) -> Vec<String> {
    let mut ids = engine.policy_ids();
    ids.sort();
    ids
}

/// The policy set in force.
#[utoipa::path(get, path = "/api/v1/policies", tag = "trust",
    responses((status = 200, body = PolicySetDto)))]
async fn get_policies(State(s): State<ApiState>) -> ApiResult<Json<PolicySetDto>> {
    let svc = service(&s)?;
    let registry = s.registry.clone();
    blocking(move || {
        let engine = svc.engine();
        let version = registry
            .current_policy_set()?
            .filter(|p| p.text == engine.source())
            .map_or(0, |p| p.version);
        Ok(Json(PolicySetDto {
            version,
            policies: sorted_ids(&engine),
            text: engine.source().to_owned(),
        }))
    })
    .await
}

/// Replace the policy set. It is validated against the schema first; a set that does not
/// validate is refused (422, every problem listed) and the set in force stays. A valid one
/// is stored, audited and applied to every device's verdict before the answer.
#[utoipa::path(put, path = "/api/v1/policies", tag = "trust", request_body = PolicyTextDto,
    responses((status = 200, body = PolicySetDto), (status = 422, body = ProblemBody)))]
async fn put_policies(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    JsonObject(dto): JsonObject<PolicyTextDto>,
) -> ApiResult<(StatusCode, Json<PolicySetDto>)> {
    who.require_unscoped()?;
    let svc = service(&s)?;
    let by = who.actor();
    blocking(move || {
        let version = svc.set_policies(&dto.text, &by)?;
        let engine = svc.engine();
        Ok((
            StatusCode::OK,
            Json(PolicySetDto {
                version,
                policies: sorted_ids(&engine),
                text: engine.source().to_owned(),
            }),
        ))
    })
    .await
}

/// Validate a policy set against the schema without putting it in force.
#[utoipa::path(post, path = "/api/v1/policies/validate", tag = "trust", request_body = PolicyTextDto,
    responses((status = 200, body = PolicySetDto), (status = 422, body = ProblemBody),
        (status = 503, body = ProblemBody)))]
async fn validate_policies(
    State(s): State<ApiState>,
    JsonObject(dto): JsonObject<PolicyTextDto>,
) -> ApiResult<Json<PolicySetDto>> {
    let limits = match &s.trust {
        Some(svc) => svc.engine().limits(),
        None => PolicyLimits::default(),
    };
    // Parsing blocks (on the policy checker's thread): not on an async worker.
    blocking(move || {
        let mut engine = PolicyEngine::with_defaults().with_limits(limits);
        engine.load(&dto.text).map_err(policy_problem)?;
        Ok(Json(PolicySetDto {
            version: 0,
            policies: sorted_ids(&engine),
            text: dto.text,
        }))
    })
    .await
}

/// A refused policy text: 503 when the checker is busy, else 422 with the reasons.
fn policy_problem(e: PolicyError) -> Problem {
    match e {
        PolicyError::Busy => Problem::unavailable(e.to_string()),
        other => Problem::invalid(other.to_string()),
    }
}
