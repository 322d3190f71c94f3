//! The REST API, `/api/v1`, and its OpenAPI 3.1 document at `/api/openapi.json`, generated
//! from these handlers and types.
//!
//! Every error is a [`Problem`] body. Lists of devices are paged with an opaque `cursor`.
//! Every change is written with its audit record in one transaction; the actor is the
//! operator of the request's token or session (`operator:<name>`), and every handler checks
//! that the operator may see the tenant of what it reads or changes ([`crate::auth`]).

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use gatehouse_pki::ModelRule;
use gatehouse_store::{
    AuditEntry, BatchScope, Cursor, DeviceFilter, DeviceStatus, ManufacturerId, ModelId, NewClaim,
    NewManufacturer, NewModel, NewToken, RevocationReason, TokenId,
};
use gatehouse_types::{DeviceId, DeviceRef, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::problem::ProblemBody;
use crate::{ApiState, Principal, Problem};

type ApiResult<T> = Result<T, Problem>;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Gatehouse API",
        description = "Registry, enrollment tokens, revocation and audit. EST (RFC 7030) is served under /.well-known/est/ and CRLs under /pki/crl/.",
        version = "1"
    ),
    paths(
        list_tenants,
        create_tenant,
        list_manufacturers,
        create_manufacturer,
        list_models,
        create_model,
        add_profile,
        add_claims,
        list_devices,
        get_device,
        revoke_device,
        reinstate_device,
        revoke_batch,
        create_token,
        list_tokens,
        revoke_token,
        audit_records,
        audit_verify
    ),
    components(schemas(ProblemBody)),
    modifiers(&SecuritySchemes),
    security(("bearer" = []), ("session" = []))
)]
struct ApiDoc;

/// The two ways to authenticate: an API token, or the dashboard's session cookie (with
/// its CSRF token in `X-CSRF-Token` on changes).
struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API token, gha_<id>_<secret>"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::auth::SESSION_COOKIE,
                "The dashboard session, from POST /api/v1/session/login",
            ))),
        );
    }
}

/// The OpenAPI document, JSON, as served with the default settings.
pub fn openapi_json() -> String {
    openapi_json_with(&crate::AuthSettings::default())
}

/// The OpenAPI document, JSON, for a server with these operator settings: the longest API
/// token lifetime it documents is the one the server allows.
pub fn openapi_json_with(settings: &crate::AuthSettings) -> String {
    let mut doc = ApiDoc::openapi();
    doc.merge(<crate::trust::TrustDoc as OpenApi>::openapi());
    doc.merge(<crate::detection::DetectionDoc as OpenApi>::openapi());
    doc.merge(<crate::operators::OperatorsDoc as OpenApi>::openapi());
    document_common_errors(&mut doc);
    let mut json = serde_json::to_value(&doc).unwrap_or_default();
    if let Some(batch) = json.pointer_mut("/components/schemas/BatchDto")
        && let Some(batch) = batch.as_object_mut()
    {
        batch.insert("anyOf".to_owned(), batch_scope_rule());
    }
    if let Some(max) =
        json.pointer_mut("/components/schemas/NewApiTokenDto/properties/expires_in/maximum")
    {
        *max = json!(settings.max_token_ttl.as_secs());
    }
    serde_json::to_string_pretty(&json).unwrap_or_else(|_| "{}".to_owned())
}

/// Adds to every operation the errors any route can answer whatever it does, each with
/// the one JSON error body: 400 (a malformed path, query or body), 401 and 403 where an
/// operator is needed, 404 and 422 where the path names something (nothing by that name,
/// or not a valid name), 422 for query values out of range, and 413, 415 and 422 where a
/// JSON body is read (too large, not JSON, JSON of the wrong shape). Marks every path
/// parameter required.
fn document_common_errors(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::{Operation, ParameterIn};
    use utoipa::openapi::security::SecurityRequirement;
    use utoipa::openapi::{ContentBuilder, Ref, Required, ResponseBuilder};

    let problem = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ProblemBody")))
                    .build(),
            )
            .build()
    };
    let add = |op: &mut Operation, status: &str, description: &str| {
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| problem(description).into());
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let named = path.contains('{');
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            // OpenAPI requires it, and the derive leaves it out of a parameter whose schema
            // comes from `schema_with`.
            for p in op.parameters.iter_mut().flatten() {
                if p.parameter_in == ParameterIn::Path {
                    p.required = Required::True;
                }
            }
            add(op, "400", "The path, query or body is malformed");
            let public = op
                .security
                .as_ref()
                .is_some_and(|s| s.iter().all(|r| *r == SecurityRequirement::default()));
            if !public {
                add(
                    op,
                    "401",
                    "No operator credentials, or they were not accepted",
                );
                add(op, "403", "The operator may not do this");
            }
            if named {
                add(op, "404", "Nothing by that name (or in another tenant)");
                add(op, "422", "A name in the path is not a valid id");
            }
            if op.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
                add(
                    op,
                    "422",
                    "A query or path value is out of range or not valid",
                );
            }
            if op.request_body.is_some() {
                add(op, "413", "The body is over the size limit");
                add(op, "415", "The body is not application/json");
                add(op, "422", "The body's values are invalid");
            }
        }
    }
}

/// Routes anyone may call: the OpenAPI document.
pub(crate) fn public_routes() -> Router<ApiState> {
    Router::new().route("/api/openapi.json", get(openapi))
}

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/tenants", get(list_tenants).post(create_tenant))
        .route(
            "/api/v1/manufacturers",
            get(list_manufacturers).post(create_manufacturer),
        )
        .route("/api/v1/models", get(list_models).post(create_model))
        .route("/api/v1/models/{model}/profiles", post(add_profile))
        .route("/api/v1/tenants/{tenant}/claims", post(add_claims))
        .route("/api/v1/devices", get(list_devices))
        .route("/api/v1/devices/{tenant}/{device}", get(get_device))
        .route(
            "/api/v1/devices/{tenant}/{device}/revoke",
            post(revoke_device),
        )
        .route(
            "/api/v1/devices/{tenant}/{device}/reinstate",
            post(reinstate_device),
        )
        .route("/api/v1/revocations/batch", post(revoke_batch))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}/revoke", post(revoke_token))
        .route("/api/v1/audit", get(audit_records))
        .route("/api/v1/audit/verify", get(audit_verify))
}

async fn openapi(State(s): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi_json_with(s.auth.settings()),
    )
        .into_response()
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A JSON request body that must be an object. serde reads a struct from a JSON array
/// too (its fields in order), so `Json<T>` alone would take `[]` for a body whose fields
/// all have defaults, and `["acme"]` for `{"id": "acme"}`; the document says object, and
/// so does the server. Otherwise as `Json`: 415 without a JSON content type, 400 for text
/// that is not JSON, 422 for JSON of the wrong shape.
pub(crate) struct JsonObject<T>(pub(crate) T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S>
    for JsonObject<T>
{
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Response> {
        let Json(value) =
            <Json<serde_json::Value> as axum::extract::FromRequest<S>>::from_request(req, state)
                .await
                .map_err(IntoResponse::into_response)?;
        json_object(value)
            .map(JsonObject)
            .map_err(IntoResponse::into_response)
    }
}

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::OptionalFromRequest<S>
    for JsonObject<T>
{
    type Rejection = Response;

    async fn from_request(
        req: axum::extract::Request,
        state: &S,
    ) -> Result<Option<Self>, Response> {
        let value =
            <Json<serde_json::Value> as axum::extract::OptionalFromRequest<S>>::from_request(
                req, state,
            )
            .await
            .map_err(IntoResponse::into_response)?;
        value
            .map(|Json(v)| json_object(v).map(JsonObject))
            .transpose()
            .map_err(IntoResponse::into_response)
    }
}

fn json_object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> ApiResult<T> {
    if !value.is_object() {
        return Err(Problem::invalid("the body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| {
        Problem::invalid(format!(
            "Failed to deserialize the JSON body into the target type: {e}"
        ))
    })
}

/// Runs blocking registry work off the async threads.
pub(crate) async fn blocking<T, F>(f: F) -> ApiResult<T>
where
    F: FnOnce() -> ApiResult<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}

fn parse<T, E: std::fmt::Display>(
    what: &str,
    v: &str,
    f: impl FnOnce(String) -> Result<T, E>,
) -> ApiResult<T> {
    f(v.to_owned()).map_err(|e| Problem::invalid(format!("{what} {v:?}: {e}")))
}

/// An optional whole number of a JSON body. JSON has one number type: `240.0` is the
/// integer 240 to JSON Schema, and is read as one here; a fraction, a negative number or
/// one out of `T`'s range is refused.
pub(crate) fn whole_number<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(f))
                // Whole and in range: the cast is exact.
                .map(|f| f as u64)
        })
        .and_then(|w| T::try_from(w).ok())
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("{n} is not a whole number in range")))
}

fn ts(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

// ---------------------------------------------------------------- tenants

/// A tenant: an organisation owning a fleet, with its own topic space.
#[derive(Serialize, ToSchema)]
struct TenantDto {
    id: String,
    display_name: String,
    /// Unix seconds.
    created_at: i64,
}

impl From<gatehouse_store::Tenant> for TenantDto {
    fn from(t: gatehouse_store::Tenant) -> Self {
        Self {
            id: t.id.to_string(),
            display_name: t.display_name,
            created_at: ts(t.created_at),
        }
    }
}

#[derive(Deserialize, ToSchema)]
struct NewTenantDto {
    #[schema(schema_with = crate::schema::tenant_id)]
    id: String,
    #[serde(default)]
    display_name: String,
}

/// List tenants.
#[utoipa::path(get, path = "/api/v1/tenants", tag = "registry",
    responses((status = 200, body = Vec<TenantDto>)))]
async fn list_tenants(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<TenantDto>>> {
    blocking(move || {
        Ok(Json(
            s.registry
                .list_tenants()?
                .into_iter()
                .filter(|t| who.sees(&t.id))
                .map(Into::into)
                .collect(),
        ))
    })
    .await
}

/// Create a tenant.
#[utoipa::path(post, path = "/api/v1/tenants", tag = "registry", request_body = NewTenantDto,
    responses((status = 201, body = TenantDto), (status = 409, body = ProblemBody),
        (status = 422, body = ProblemBody)))]
async fn create_tenant(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    JsonObject(body): JsonObject<NewTenantDto>,
) -> ApiResult<(StatusCode, Json<TenantDto>)> {
    who.require_unscoped()?;
    let id = parse("tenant", &body.id, TenantId::new)?;
    let name = if body.display_name.is_empty() {
        body.id.clone()
    } else {
        body.display_name
    };
    let audit = AuditEntry::new(now(), who.actor(), "create_tenant", id.to_string());
    blocking(move || {
        let t = s.registry.create_tenant(&id, &name, &audit)?;
        Ok((StatusCode::CREATED, Json(t.into())))
    })
    .await
}

// ---------------------------------------------------------------- manufacturers

/// A manufacturer and the CAs of its device certificates (IDevIDs).
#[derive(Serialize, ToSchema)]
struct ManufacturerDto {
    id: String,
    display_name: String,
    /// PEM certificates of the IDevID CAs.
    idevid_ca_pems: Vec<String>,
    /// Where the model is read in an IDevID: `san-uri-prefix:<prefix>`, `extension:<oid>`,
    /// `subject:<oid>`, first match wins.
    model_rules: Vec<String>,
    created_at: i64,
}

impl From<gatehouse_store::Manufacturer> for ManufacturerDto {
    fn from(m: gatehouse_store::Manufacturer) -> Self {
        Self {
            id: m.id.to_string(),
            display_name: m.display_name,
            idevid_ca_pems: m.idevid_ca_pems,
            model_rules: m
                .model_mapping
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            created_at: ts(m.created_at),
        }
    }
}

#[derive(Deserialize, ToSchema)]
struct NewManufacturerDto {
    #[schema(schema_with = crate::schema::manufacturer_id)]
    id: String,
    #[serde(default)]
    display_name: String,
    /// PEM certificates of the IDevID CAs: at least one, each a CA certificate.
    #[schema(min_items = 1)]
    idevid_ca_pems: Vec<String>,
    /// Where the model is read in an IDevID: `san-uri-prefix:<prefix>`, `extension:<oid>`,
    /// `subject:<oid>`, first match wins.
    #[serde(default)]
    model_rules: Vec<String>,
}

/// List manufacturers.
#[utoipa::path(get, path = "/api/v1/manufacturers", tag = "registry",
    responses((status = 200, body = Vec<ManufacturerDto>)))]
async fn list_manufacturers(State(s): State<ApiState>) -> ApiResult<Json<Vec<ManufacturerDto>>> {
    blocking(move || {
        Ok(Json(
            s.registry
                .list_manufacturers()?
                .into_iter()
                .map(Into::into)
                .collect(),
        ))
    })
    .await
}

/// Register a manufacturer with its IDevID CA certificates.
#[utoipa::path(post, path = "/api/v1/manufacturers", tag = "registry",
    request_body = NewManufacturerDto,
    responses((status = 201, body = ManufacturerDto), (status = 409, body = ProblemBody),
        (status = 422, body = ProblemBody)))]
async fn create_manufacturer(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    JsonObject(body): JsonObject<NewManufacturerDto>,
) -> ApiResult<(StatusCode, Json<ManufacturerDto>)> {
    who.require_unscoped()?;
    let id = parse("manufacturer", &body.id, ManufacturerId::new)?;
    if body.idevid_ca_pems.is_empty() {
        return Err(Problem::invalid(
            "idevid_ca_pems: give at least one CA certificate",
        ));
    }
    for (i, pem) in body.idevid_ca_pems.iter().enumerate() {
        check_ca_pem(pem).map_err(|e| Problem::invalid(format!("idevid_ca_pems[{i}]: {e}")))?;
    }
    let rules = ModelRule::parse_list(&body.model_rules.join("\n")).map_err(Problem::invalid)?;
    let m = NewManufacturer {
        id: id.clone(),
        display_name: if body.display_name.is_empty() {
            body.id.clone()
        } else {
            body.display_name
        },
        idevid_ca_pems: body.idevid_ca_pems,
        model_mapping: ModelRule::format_list(&rules),
    };
    let audit = AuditEntry::new(now(), who.actor(), "add_manufacturer", id.to_string());
    blocking(move || {
        let m = s.registry.add_manufacturer(&m, &audit)?;
        Ok((StatusCode::CREATED, Json(m.into())))
    })
    .await
}

/// Every certificate in `pem` must be a CA certificate usable as a trust anchor.
fn check_ca_pem(pem: &str) -> Result<(), String> {
    gatehouse_pki::inspect_ca_pem(pem.as_bytes()).map(|_| ())
}

// ---------------------------------------------------------------- models

/// A device model.
#[derive(Serialize, ToSchema)]
struct ModelDto {
    id: String,
    manufacturer: String,
    display_name: String,
    created_at: i64,
}

impl From<gatehouse_store::Model> for ModelDto {
    fn from(m: gatehouse_store::Model) -> Self {
        Self {
            id: m.id.to_string(),
            manufacturer: m.manufacturer.to_string(),
            display_name: m.display_name,
            created_at: ts(m.created_at),
        }
    }
}

#[derive(Deserialize, ToSchema)]
struct NewModelDto {
    #[schema(schema_with = crate::schema::model_id)]
    id: String,
    #[schema(schema_with = crate::schema::manufacturer_id)]
    manufacturer: String,
    #[serde(default)]
    display_name: String,
}

/// List models.
#[utoipa::path(get, path = "/api/v1/models", tag = "registry",
    responses((status = 200, body = Vec<ModelDto>)))]
async fn list_models(State(s): State<ApiState>) -> ApiResult<Json<Vec<ModelDto>>> {
    blocking(move || {
        Ok(Json(
            s.registry
                .list_models()?
                .into_iter()
                .map(Into::into)
                .collect(),
        ))
    })
    .await
}

/// Register a device model of a manufacturer.
#[utoipa::path(post, path = "/api/v1/models", tag = "registry", request_body = NewModelDto,
    responses((status = 201, body = ModelDto), (status = 404, body = ProblemBody),
        (status = 409, body = ProblemBody)))]
async fn create_model(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    JsonObject(body): JsonObject<NewModelDto>,
) -> ApiResult<(StatusCode, Json<ModelDto>)> {
    who.require_unscoped()?;
    let m = NewModel {
        id: parse("model", &body.id, ModelId::new)?,
        manufacturer: parse("manufacturer", &body.manufacturer, ManufacturerId::new)?,
        display_name: if body.display_name.is_empty() {
            body.id.clone()
        } else {
            body.display_name
        },
    };
    let audit = AuditEntry::new(now(), who.actor(), "add_model", m.id.to_string());
    blocking(move || {
        let m = s.registry.add_model(&m, &audit)?;
        Ok((StatusCode::CREATED, Json(m.into())))
    })
    .await
}

#[derive(Serialize, ToSchema)]
struct ProfileVersionDto {
    model: String,
    version: u32,
}

/// Upload a new version of a model's profile (TOML body), validated first: it must parse,
/// be consistent and name this model and its manufacturer.
#[utoipa::path(post, path = "/api/v1/models/{model}/profiles", tag = "registry",
    params(ModelPath), request_body(content = String, content_type = "application/toml"),
    responses((status = 201, body = ProfileVersionDto), (status = 404, body = ProblemBody),
        (status = 422, body = ProblemBody)))]
async fn add_profile(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(ModelPath { model }): Path<ModelPath>,
    body: String,
) -> ApiResult<(StatusCode, Json<ProfileVersionDto>)> {
    who.require_unscoped()?;
    let model = parse("model", &model, ModelId::new)?;
    let profile = gatehouse_trust::profile::ModelProfile::parse(&body)
        .map_err(|e| Problem::invalid(format!("invalid profile: {e}")))?;
    if profile.model() != model.as_str() {
        return Err(Problem::invalid(format!(
            "the profile describes model {:?}, not {model}",
            profile.model()
        )));
    }
    let audit = AuditEntry::new(now(), who.actor(), "add_model_profile", model.to_string());
    blocking(move || {
        let registered = s
            .registry
            .get_model(&model)?
            .ok_or_else(|| Problem::not_found(format!("model {model} not found")))?;
        if profile.manufacturer() != registered.manufacturer.as_str() {
            return Err(Problem::invalid(format!(
                "the profile names manufacturer {:?}, but model {model} is made by {}",
                profile.manufacturer(),
                registered.manufacturer
            )));
        }
        let p = s.registry.add_model_profile(&model, &body, &audit)?;
        Ok((
            StatusCode::CREATED,
            Json(ProfileVersionDto {
                model: p.model.to_string(),
                version: p.version,
            }),
        ))
    })
    .await
}

/// A model named in the path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct ModelPath {
    #[param(schema_with = crate::schema::model_id)]
    model: String,
}

// ---------------------------------------------------------------- claims

#[derive(Deserialize, ToSchema)]
struct ClaimDto {
    #[schema(schema_with = crate::schema::serial)]
    serial: String,
    #[serde(default)]
    #[schema(schema_with = crate::schema::model_id_or_null)]
    expected_model: Option<String>,
}

#[derive(Deserialize, ToSchema)]
struct NewClaimsDto {
    #[schema(schema_with = crate::schema::manufacturer_id)]
    manufacturer: String,
    serials: Vec<ClaimDto>,
}

#[derive(Serialize, ToSchema)]
struct ClaimsAddedDto {
    /// Serials newly claimed (ones the tenant already had are skipped).
    added: usize,
}

/// Claim manufacturer serials for a tenant: only claimed devices enroll with an IDevID.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/claims", tag = "registry",
    params(TenantPath), request_body = NewClaimsDto,
    responses((status = 200, body = ClaimsAddedDto), (status = 409, body = ProblemBody)))]
async fn add_claims(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(TenantPath { tenant }): Path<TenantPath>,
    JsonObject(body): JsonObject<NewClaimsDto>,
) -> ApiResult<Json<ClaimsAddedDto>> {
    let tenant = parse("tenant", &tenant, TenantId::new)?;
    who.check_tenant(&tenant, || format!("tenant {tenant}"))?;
    let manufacturer = parse("manufacturer", &body.manufacturer, ManufacturerId::new)?;
    let mut claims = Vec::with_capacity(body.serials.len());
    for c in body.serials {
        let serial = c.serial.trim().to_owned();
        if serial.is_empty() {
            return Err(Problem::invalid("empty serial"));
        }
        let expected_model = match c.expected_model {
            Some(m) => Some(parse("model", &m, ModelId::new)?),
            None => None,
        };
        claims.push(NewClaim {
            serial,
            expected_model,
        });
    }
    let audit = AuditEntry::new(now(), who.actor(), "add_claims", tenant.to_string())
        .detail(json!({ "manufacturer": manufacturer.as_str(), "count": claims.len() }));
    blocking(move || {
        let added = s
            .registry
            .add_claims(&tenant, &manufacturer, &claims, &audit)?;
        Ok(Json(ClaimsAddedDto { added }))
    })
    .await
}

/// A tenant named in the path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct TenantPath {
    #[param(schema_with = crate::schema::tenant_id)]
    tenant: String,
}

// ---------------------------------------------------------------- devices

/// A device named in the path: its tenant and its id.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct DevicePath {
    #[param(schema_with = crate::schema::tenant_id)]
    pub(crate) tenant: String,
    #[param(schema_with = crate::schema::device_id)]
    pub(crate) device: String,
}

/// A device.
#[derive(Serialize, ToSchema)]
struct DeviceDto {
    tenant: String,
    id: String,
    model: String,
    manufacturer: Option<String>,
    serial: Option<String>,
    /// `idevid` (manufacturer certificate) or `token` (weaker).
    assurance: String,
    /// `active`, `revoked` or `blocked`.
    status: String,
    created_at: i64,
    last_enrolled_at: Option<i64>,
    tags: Vec<String>,
}

fn enum_text<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl From<gatehouse_store::Device> for DeviceDto {
    fn from(d: gatehouse_store::Device) -> Self {
        Self {
            tenant: d.device.tenant.to_string(),
            id: d.device.device.to_string(),
            model: d.model.to_string(),
            manufacturer: d.manufacturer.map(|m| m.to_string()),
            serial: d.serial,
            assurance: enum_text(&d.assurance),
            status: enum_text(&d.status),
            created_at: ts(d.created_at),
            last_enrolled_at: d.last_enrolled_at.map(ts),
            tags: d.tags,
        }
    }
}

/// A device certificate.
#[derive(Serialize, ToSchema)]
struct CertificateDto {
    serial: String,
    issuer: String,
    not_before: i64,
    not_after: i64,
    /// `valid` or `revoked`.
    status: String,
    revoked_at: Option<i64>,
    revocation_reason: Option<String>,
    pem: String,
}

impl From<gatehouse_store::Certificate> for CertificateDto {
    fn from(c: gatehouse_store::Certificate) -> Self {
        Self {
            serial: c.serial.to_string(),
            issuer: c.issuer,
            not_before: ts(c.not_before),
            not_after: ts(c.not_after),
            status: enum_text(&c.status),
            revoked_at: c.revoked_at.map(ts),
            revocation_reason: c.revocation_reason.map(|r| enum_text(&r)),
            pem: c.pem,
        }
    }
}

#[derive(Serialize, ToSchema)]
struct DevicePageDto {
    items: Vec<DeviceDto>,
    /// Pass as `cursor` for the next page; absent on the last.
    next: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct DeviceDetailDto {
    device: DeviceDto,
    certificates: Vec<CertificateDto>,
}

#[derive(Deserialize, IntoParams)]
struct DeviceQuery {
    #[param(schema_with = crate::schema::tenant_id)]
    tenant: Option<String>,
    #[param(schema_with = crate::schema::device_status)]
    status: Option<String>,
    #[param(schema_with = crate::schema::model_id)]
    model: Option<String>,
    /// 1 to 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The `next` of the page before.
    #[param(schema_with = crate::schema::cursor)]
    cursor: Option<String>,
}

/// List devices, filtered and paged.
#[utoipa::path(get, path = "/api/v1/devices", tag = "devices", params(DeviceQuery),
    responses((status = 200, body = DevicePageDto), (status = 400, body = ProblemBody)))]
async fn list_devices(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<DeviceQuery>,
) -> ApiResult<Json<DevicePageDto>> {
    let filter =
        DeviceFilter {
            tenant: who.narrow(match q.tenant {
                Some(t) => Some(parse("tenant", &t, TenantId::new)?),
                None => None,
            })?,
            status: match q.status.as_deref() {
                None => None,
                Some(st) => Some(serde_json::from_value::<DeviceStatus>(json!(st)).map_err(
                    |_| Problem::invalid(format!("status {st:?}: active, revoked or blocked")),
                )?),
            },
            model: match q.model {
                Some(m) => Some(parse("model", &m, ModelId::new)?),
                None => None,
            },
        };
    let limit = page_limit(q.limit)?;
    let cursor = q.cursor.map(Cursor::from_client);
    blocking(move || {
        let page = s.registry.list_devices(&filter, limit, cursor.as_ref())?;
        Ok(Json(DevicePageDto {
            items: page.items.into_iter().map(Into::into).collect(),
            next: page.next.map(|c| c.as_str().to_owned()),
        }))
    })
    .await
}

pub(crate) fn device_ref(tenant: &str, device: &str) -> ApiResult<DeviceRef> {
    Ok(DeviceRef::new(
        parse("tenant", tenant, TenantId::new)?,
        parse("device", device, DeviceId::new)?,
    ))
}

/// A device and its certificates.
#[utoipa::path(get, path = "/api/v1/devices/{tenant}/{device}", tag = "devices",
    params(DevicePath),
    responses((status = 200, body = DeviceDetailDto), (status = 404, body = ProblemBody)))]
async fn get_device(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(DevicePath { tenant, device }): Path<DevicePath>,
) -> ApiResult<Json<DeviceDetailDto>> {
    let d = device_ref(&tenant, &device)?;
    who.check_tenant(&d.tenant, || format!("device {d}"))?;
    blocking(move || {
        let device = s
            .registry
            .get_device(&d)?
            .ok_or_else(|| Problem::not_found(format!("device {d} not found")))?;
        let certificates = s.registry.list_certificates(&d)?;
        Ok(Json(DeviceDetailDto {
            device: device.into(),
            certificates: certificates.into_iter().map(Into::into).collect(),
        }))
    })
    .await
}

#[derive(Deserialize, ToSchema, Default)]
struct RevokeDto {
    /// RFC 5280 reason: `unspecified`, `key_compromise`, `affiliation_changed`,
    /// `superseded`, `cessation_of_operation`, `privilege_withdrawn`, ... Default
    /// `unspecified`.
    #[serde(default)]
    #[schema(schema_with = crate::schema::revocation_reason_or_null)]
    reason: Option<String>,
    /// Why, for the audit log.
    #[serde(default)]
    comment: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct RevokedDto {
    /// Devices now revoked.
    devices: Vec<String>,
    /// Certificates revoked by this call.
    certificates: Vec<String>,
    /// Devices whose live sessions were ended.
    disconnected: Vec<String>,
}

fn reason(r: Option<&str>) -> ApiResult<RevocationReason> {
    match r {
        None => Ok(RevocationReason::Unspecified),
        Some(r) => serde_json::from_value(json!(r))
            .map_err(|_| Problem::invalid(format!("unknown revocation reason {r:?}"))),
    }
}

/// Revoke a device: durable first, then its CRL entry, then its live sessions end.
#[utoipa::path(post, path = "/api/v1/devices/{tenant}/{device}/revoke", tag = "devices",
    params(DevicePath), request_body = RevokeDto,
    responses((status = 200, body = RevokedDto), (status = 404, body = ProblemBody)))]
async fn revoke_device(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(DevicePath { tenant, device }): Path<DevicePath>,
    body: Option<JsonObject<RevokeDto>>,
) -> ApiResult<Json<RevokedDto>> {
    let d = device_ref(&tenant, &device)?;
    who.check_tenant(&d.tenant, || format!("device {d}"))?;
    let body = body.map(|JsonObject(b)| b).unwrap_or_default();
    let why = reason(body.reason.as_deref())?;
    let comment = body
        .comment
        .unwrap_or_else(|| "revoked through the API".to_owned());
    let by = who.actor();
    blocking(move || {
        let certs = gatehouse_runtime::ops::write_revoke(&*s.registry, &d, why, &by, &comment)?;
        let disconnected = s
            .revocations
            .sync_revoked(&certs)
            .map_err(Problem::internal)?;
        Ok(Json(RevokedDto {
            devices: vec![d.to_string()],
            certificates: certs.into_iter().map(|c| c.serial.to_string()).collect(),
            disconnected: disconnected.iter().map(ToString::to_string).collect(),
        }))
    })
    .await
}

/// Reinstate a revoked or blocked device (re-claim): it may enroll again.
#[utoipa::path(post, path = "/api/v1/devices/{tenant}/{device}/reinstate", tag = "devices",
    params(DevicePath),
    responses((status = 200, body = DeviceDto), (status = 404, body = ProblemBody)))]
async fn reinstate_device(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(DevicePath { tenant, device }): Path<DevicePath>,
) -> ApiResult<Json<DeviceDto>> {
    let d = device_ref(&tenant, &device)?;
    who.check_tenant(&d.tenant, || format!("device {d}"))?;
    let by = who.actor();
    blocking(move || {
        let dev = gatehouse_runtime::ops::write_reinstate(
            &*s.registry,
            &d,
            &by,
            "reinstated through the API: may enroll again",
        )?;
        Ok(Json(dev.into()))
    })
    .await
}

#[derive(Deserialize, ToSchema)]
struct BatchDto {
    #[schema(schema_with = crate::schema::manufacturer_id)]
    manufacturer: String,
    /// First serial of the range, inclusive (with `serial_to`); none for every device.
    #[serde(default)]
    serial_from: Option<String>,
    #[serde(default)]
    serial_to: Option<String>,
    #[serde(default)]
    #[schema(schema_with = crate::schema::revocation_reason_or_null)]
    reason: Option<String>,
    #[serde(default)]
    comment: Option<String>,
}

/// What [`BatchDto`]'s derived schema cannot say: `serial_from` and `serial_to` come
/// together (a range) or not at all (every device); null is absent.
fn batch_scope_rule() -> serde_json::Value {
    json!([
        {
            "required": ["serial_from", "serial_to"],
            "properties": {
                "serial_from": { "type": "string" },
                "serial_to": { "type": "string" }
            }
        },
        {
            "properties": {
                "serial_from": { "type": "null" },
                "serial_to": { "type": "null" }
            }
        }
    ])
}

/// Revoke a manufacturer's devices, all or a serial range (a compromised batch).
#[utoipa::path(post, path = "/api/v1/revocations/batch", tag = "devices", request_body = BatchDto,
    responses((status = 200, body = RevokedDto),
        (status = 404, body = ProblemBody, description = "No such manufacturer"),
        (status = 422, body = ProblemBody)))]
async fn revoke_batch(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    JsonObject(body): JsonObject<BatchDto>,
) -> ApiResult<Json<RevokedDto>> {
    who.require_unscoped()?;
    let manufacturer = parse("manufacturer", &body.manufacturer, ManufacturerId::new)?;
    let scope = match (body.serial_from, body.serial_to) {
        (None, None) => BatchScope::Manufacturer(manufacturer.clone()),
        (Some(first), Some(last)) => BatchScope::SerialRange {
            manufacturer: manufacturer.clone(),
            first,
            last,
        },
        _ => {
            return Err(Problem::invalid(
                "give both serial_from and serial_to, or neither",
            ));
        }
    };
    let why = reason(body.reason.as_deref())?;
    let audit = AuditEntry::new(now(), who.actor(), "revoke_batch", manufacturer.to_string())
        .reason(
            body.comment
                .unwrap_or_else(|| "batch revoked through the API".to_owned()),
        )
        .detail(json!({ "scope": format!("{scope:?}"), "reason": body.reason }));
    blocking(move || {
        let done = s.registry.revoke_batch(&scope, why, now(), &audit)?;
        let disconnected = s
            .revocations
            .sync_revoked(&done.certificates)
            .map_err(Problem::internal)?;
        Ok(Json(RevokedDto {
            devices: done.devices.iter().map(ToString::to_string).collect(),
            certificates: done
                .certificates
                .into_iter()
                .map(|c| c.serial.to_string())
                .collect(),
            disconnected: disconnected.iter().map(ToString::to_string).collect(),
        }))
    })
    .await
}

// ---------------------------------------------------------------- tokens

/// An enrollment token, without its secret.
#[derive(Serialize, ToSchema)]
struct TokenDto {
    id: String,
    tenant: String,
    model: String,
    max_uses: u32,
    uses: u32,
    expires_at: i64,
    created_by: String,
    created_at: i64,
    revoked: bool,
}

impl From<gatehouse_store::TokenRecord> for TokenDto {
    fn from(t: gatehouse_store::TokenRecord) -> Self {
        Self {
            id: t.id.to_string(),
            tenant: t.tenant.to_string(),
            model: t.model.to_string(),
            max_uses: t.max_uses,
            uses: t.uses,
            expires_at: ts(t.expires_at),
            created_by: t.created_by,
            created_at: ts(t.created_at),
            revoked: t.revoked,
        }
    }
}

#[derive(Serialize, ToSchema)]
struct NewTokenSecretDto {
    token: TokenDto,
    /// The secret: shown here once, never again. EST clients send the token id and this
    /// secret with HTTP Basic.
    secret: String,
}

#[derive(Deserialize, ToSchema)]
struct NewTokenDto {
    #[schema(schema_with = crate::schema::tenant_id)]
    tenant: String,
    #[schema(schema_with = crate::schema::model_id)]
    model: String,
    /// Enrollments allowed; default 1.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 4_294_967_295_i64)]
    max_uses: Option<u32>,
    /// Lifetime in seconds, at most 366 days; default 86400.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 31_622_400)]
    expires_in: Option<u64>,
}

/// Create an enrollment token; its secret is in this response only.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = NewTokenDto,
    responses((status = 201, body = NewTokenSecretDto), (status = 404, body = ProblemBody),
        (status = 422, body = ProblemBody)))]
async fn create_token(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    JsonObject(body): JsonObject<NewTokenDto>,
) -> ApiResult<(StatusCode, Json<NewTokenSecretDto>)> {
    let lifetime = body.expires_in.unwrap_or(86_400);
    if lifetime == 0 || lifetime > 366 * 86_400 {
        return Err(Problem::invalid(
            "expires_in must be between 1 s and 366 days",
        ));
    }
    let t = NewToken {
        tenant: parse("tenant", &body.tenant, TenantId::new)?,
        model: parse("model", &body.model, ModelId::new)?,
        max_uses: body.max_uses.unwrap_or(1),
        expires_at: now() + time::Duration::seconds(i64::try_from(lifetime).unwrap_or(86_400)),
        created_by: who.actor(),
    };
    who.check_tenant(&t.tenant, || format!("tenant {}", t.tenant))?;
    let audit = AuditEntry::new(now(), who.actor(), "create_token", t.tenant.to_string())
        .detail(json!({ "model": t.model.as_str(), "max_uses": t.max_uses }));
    blocking(move || {
        let (record, secret) = s.registry.create_token(&t, &audit)?;
        Ok((
            StatusCode::CREATED,
            Json(NewTokenSecretDto {
                token: record.into(),
                secret: secret.expose().to_owned(),
            }),
        ))
    })
    .await
}

#[derive(Deserialize)]
struct TokenQuery {
    tenant: String,
}

/// By hand: the derive drops `required` from a parameter whose schema is `schema_with`.
impl IntoParams for TokenQuery {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::Required;
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        vec![
            ParameterBuilder::new()
                .name("tenant")
                .parameter_in(ParameterIn::Query)
                .required(Required::True)
                .schema(Some(crate::schema::tenant_id()))
                .build(),
        ]
    }
}

/// An enrollment token named in the path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct TokenPath {
    #[param(schema_with = crate::schema::token_id)]
    id: String,
}

/// A tenant's tokens, newest first (never their secrets).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", params(TokenQuery),
    responses((status = 200, body = Vec<TokenDto>)))]
async fn list_tokens(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<TokenQuery>,
) -> ApiResult<Json<Vec<TokenDto>>> {
    let tenant = parse("tenant", &q.tenant, TenantId::new)?;
    who.check_tenant(&tenant, || format!("tenant {tenant}"))?;
    blocking(move || {
        Ok(Json(
            s.registry
                .list_tokens(&tenant)?
                .into_iter()
                .map(Into::into)
                .collect(),
        ))
    })
    .await
}

/// Revoke a token.
#[utoipa::path(post, path = "/api/v1/tokens/{id}/revoke", tag = "tokens",
    params(TokenPath),
    responses((status = 200, body = TokenDto), (status = 404, body = ProblemBody)))]
async fn revoke_token(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(TokenPath { id }): Path<TokenPath>,
) -> ApiResult<Json<TokenDto>> {
    let id = parse("token", &id, TokenId::new)?;
    let audit = AuditEntry::new(now(), who.actor(), "revoke_token", id.to_string());
    blocking(move || {
        let token = s
            .registry
            .get_token(&id)?
            .ok_or_else(|| Problem::not_found(format!("token {id} not found")))?;
        who.check_tenant(&token.tenant, || format!("token {id}"))?;
        Ok(Json(s.registry.revoke_token(&id, &audit)?.into()))
    })
    .await
}

// ---------------------------------------------------------------- audit

#[derive(Deserialize, IntoParams)]
struct AuditQuery {
    /// First sequence number; default 1.
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    from: Option<u64>,
    /// 1 to 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Audit records in order. An operator bound to a tenant gets the records about that
/// tenant's devices, tokens, claims, incidents, actions and operators only.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = Vec<Object>)))]
async fn audit_records(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<serde_json::Value>>> {
    let from = q.from.unwrap_or(1);
    if i64::try_from(from).is_err() {
        return Err(Problem::invalid(format!(
            "from {from} is out of range: sequence numbers are below 2^63"
        )));
    }
    let limit = page_limit(q.limit)?;
    blocking(move || {
        let records = match &who.tenant {
            None => s
                .registry
                .audit_records(from, limit)
                .map_err(Problem::internal)?,
            Some(own) => crate::audit_scope::records_of_tenant(&*s.registry, own, from, limit)?,
        };
        Ok(Json(
            records
                .iter()
                .map(|r| serde_json::to_value(r).unwrap_or_default())
                .collect(),
        ))
    })
    .await
}

#[derive(Serialize, ToSchema)]
struct AuditVerifyDto {
    ok: bool,
    /// Records checked.
    records: u64,
    /// The first bad record and what is wrong with it.
    problem: Option<String>,
}

/// Verify the audit log's hash chain.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit",
    responses((status = 200, body = AuditVerifyDto)))]
async fn audit_verify(State(s): State<ApiState>) -> ApiResult<Json<AuditVerifyDto>> {
    blocking(move || {
        Ok(Json(match s.registry.verify() {
            Ok(report) => AuditVerifyDto {
                ok: true,
                records: report.records,
                problem: None,
            },
            Err(e) => AuditVerifyDto {
                ok: false,
                records: 0,
                problem: Some(e.to_string()),
            },
        }))
    })
    .await
}

/// A page size from a query: 100 when absent, 1 to 1000 when given; anything else is
/// refused (422) rather than silently changed.
pub(crate) fn page_limit(limit: Option<usize>) -> Result<usize, Problem> {
    match limit {
        None => Ok(100),
        Some(n @ 1..=1000) => Ok(n),
        Some(n) => Err(Problem::invalid(format!(
            "limit {n} is out of range: give 1 to 1000"
        ))),
    }
}
