//! Operator routes of the REST API: the dashboard session (log in, who am I, log out),
//! operators, and API tokens.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use gatehouse_store::{
    ApiToken, AuditEntry, NewApiToken, NewOperator, Operator, OperatorName, Permission, Role,
};
use gatehouse_types::TenantId;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::auth::{self, LoginRefusal, Principal, Via};
use crate::problem::ProblemBody;
use crate::rest::{JsonObject, blocking};
use crate::{ApiState, ConnInfo, Problem};
use gatehouse_pki::password::Shed;

type ApiResult<T> = Result<T, Problem>;

#[derive(OpenApi)]
#[openapi(
    paths(
        login,
        whoami,
        logout,
        list_operators,
        create_operator,
        disable_operator,
        enable_operator,
        list_api_tokens,
        create_api_token,
        revoke_api_token
    ),
    components(schemas(
        LoginDto,
        SessionDto,
        OperatorDto,
        NewOperatorDto,
        ApiTokenDto,
        NewApiTokenDto,
        CreatedApiTokenDto
    ))
)]
pub(crate) struct OperatorsDoc;

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/session/login", post(login))
        .route("/api/v1/session", get(whoami).delete(logout))
        .route(
            "/api/v1/operators",
            get(list_operators).post(create_operator),
        )
        .route("/api/v1/operators/{name}/disable", post(disable_operator))
        .route("/api/v1/operators/{name}/enable", post(enable_operator))
        .route(
            "/api/v1/api-tokens",
            get(list_api_tokens).post(create_api_token),
        )
        .route("/api/v1/api-tokens/{id}/revoke", post(revoke_api_token))
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn operator_name(s: &str) -> ApiResult<OperatorName> {
    OperatorName::new(s).map_err(|e| Problem::invalid(e.to_string()))
}

// ---------------------------------------------------------------- session

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoginDto {
    #[schema(max_length = 256)]
    name: String,
    #[schema(max_length = 1024)]
    password: String,
}

/// The operator behind a request.
#[derive(Serialize, ToSchema)]
pub(crate) struct SessionDto {
    operator: String,
    role: String,
    /// The one tenant the operator sees; absent for all.
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    permissions: Vec<String>,
    /// `session` or `token`.
    via: String,
    /// The session's CSRF token, to send as `X-CSRF-Token` with every change made with the
    /// session's cookie. Absent for token requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    csrf: Option<String>,
    /// Unix seconds; sessions only.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<i64>,
}

/// Log in to the dashboard: checks the name and password and sets the session cookie
/// (`Secure`, `HttpOnly`, `SameSite=Strict`). Failed logins are counted: too many in a row
/// lock the account for a while, and one address may try only so often a minute.
#[utoipa::path(post, path = "/api/v1/session/login", tag = "operators", request_body = LoginDto,
    security(()),
    responses((status = 200, body = SessionDto), (status = 401, body = ProblemBody),
        (status = 429, body = ProblemBody), (status = 503, body = ProblemBody)))]
async fn login(
    State(s): State<ApiState>,
    Extension(conn): Extension<ConnInfo>,
    JsonObject(body): JsonObject<LoginDto>,
) -> ApiResult<Response> {
    if body.password.chars().count() > 1024 || body.name.chars().count() > 256 {
        return Err(Problem::invalid("name or password too long"));
    }
    let auth = s.auth.clone();
    let peer = auth::peer(&conn);
    let outcome = match auth.admit_login(peer) {
        Ok(admission) => {
            blocking(move || auth.login(&body.name, &body.password, peer, admission)).await?
        }
        Err(refusal) => Err(refusal),
    };
    match outcome {
        Ok((key, session, op)) => {
            let dto = SessionDto {
                operator: op.name.to_string(),
                role: op.role.to_string(),
                tenant: op.tenant.as_ref().map(ToString::to_string),
                permissions: op
                    .role
                    .permissions()
                    .iter()
                    .map(|p| p.to_string())
                    .collect(),
                via: "session".into(),
                csrf: Some(session.csrf.clone()),
                expires_at: Some(session.expires_at.unix_timestamp()),
            };
            let cookie = auth::session_set_cookie(&key, s.auth.settings().session_ttl);
            Ok(([(header::SET_COOKIE, cookie)], Json(dto)).into_response())
        }
        Err(LoginRefusal::RateLimited) => Err(Problem::too_many_requests(
            "too many login attempts from this address; wait a minute",
        )),
        Err(LoginRefusal::Shed(Shed::Rate)) => Err(Problem::too_many_requests(
            "too many login attempts across the server; try again in a second",
        )),
        Err(LoginRefusal::Shed(_)) => Err(Problem::unavailable(
            "the server is busy checking passwords; try again shortly",
        )),
        Err(LoginRefusal::Refused) => Err(Problem::unauthorized(
            "wrong name or password, or the account is locked or disabled",
        )),
    }
}

/// Who the request is from.
#[utoipa::path(get, path = "/api/v1/session", tag = "operators",
    responses((status = 200, body = SessionDto), (status = 401, body = ProblemBody)))]
async fn whoami(Extension(who): Extension<Principal>) -> Json<SessionDto> {
    Json(SessionDto {
        operator: who.operator.to_string(),
        role: who.role.to_string(),
        tenant: who.tenant.as_ref().map(ToString::to_string),
        permissions: who.permissions.iter().map(|p| p.to_string()).collect(),
        via: match who.via {
            Via::Token(_) => "token".into(),
            Via::Session { .. } => "session".into(),
        },
        csrf: match &who.via {
            Via::Session { csrf } => Some(csrf.clone()),
            Via::Token(_) => None,
        },
        expires_at: None,
    })
}

/// Log out: ends the session and clears its cookie.
#[utoipa::path(delete, path = "/api/v1/session", tag = "operators",
    responses((status = 204), (status = 401, body = ProblemBody)))]
async fn logout(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    if let (Via::Session { .. }, Some(key)) = (&who.via, auth::session_cookie(&headers)) {
        let audit = AuditEntry::new(now(), who.actor(), "logout", who.operator.to_string());
        let store = s.auth.store().clone();
        blocking(move || {
            store.end_session(&gatehouse_store::SessionKey::from_client(key), &audit)?;
            Ok(())
        })
        .await?;
    }
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, auth::session_clear_cookie())],
    )
        .into_response())
}

// ---------------------------------------------------------------- operators

/// An operator account.
#[derive(Serialize, ToSchema)]
pub(crate) struct OperatorDto {
    name: String,
    role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    disabled: bool,
    locked: bool,
    has_password: bool,
    created_at: i64,
}

impl From<Operator> for OperatorDto {
    fn from(o: Operator) -> Self {
        Self {
            locked: o.is_locked(now()),
            name: o.name.to_string(),
            role: o.role.to_string(),
            tenant: o.tenant.map(|t| t.to_string()),
            disabled: o.disabled,
            has_password: o.has_password,
            created_at: o.created_at.unix_timestamp(),
        }
    }
}

/// List operators (an admin bound to a tenant sees that tenant's).
#[utoipa::path(get, path = "/api/v1/operators", tag = "operators",
    responses((status = 200, body = Vec<OperatorDto>), (status = 403, body = ProblemBody)))]
async fn list_operators(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
) -> ApiResult<Json<Vec<OperatorDto>>> {
    let store = s.auth.store().clone();
    blocking(move || {
        Ok(Json(
            store
                .list_operators(who.tenant.as_ref())?
                .into_iter()
                .map(Into::into)
                .collect(),
        ))
    })
    .await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewOperatorDto {
    #[schema(schema_with = crate::schema::operator_name)]
    name: String,
    #[schema(schema_with = crate::schema::role)]
    role: String,
    /// Bind the operator to one tenant. An admin bound to a tenant creates operators of
    /// that tenant only.
    #[serde(default)]
    #[schema(schema_with = crate::schema::tenant_id_or_null)]
    tenant: Option<String>,
    /// At least 12 characters. Without one, a password is generated and returned once.
    #[serde(default)]
    #[schema(min_length = 12)]
    password: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct CreatedOperatorDto {
    #[serde(flatten)]
    operator: OperatorDto,
    /// The generated password, shown this once.
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
}

/// Create an operator.
#[utoipa::path(post, path = "/api/v1/operators", tag = "operators", request_body = NewOperatorDto,
    responses((status = 201, body = OperatorDto), (status = 403, body = ProblemBody),
        (status = 404, body = ProblemBody, description = "No such tenant"),
        (status = 409, body = ProblemBody), (status = 422, body = ProblemBody)))]
async fn create_operator(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    JsonObject(body): JsonObject<NewOperatorDto>,
) -> ApiResult<(StatusCode, Json<CreatedOperatorDto>)> {
    let name = operator_name(&body.name)?;
    let role: Role = body
        .role
        .parse()
        .map_err(|e: gatehouse_store::UnknownName| Problem::invalid(e.to_string()))?;
    let tenant = body
        .tenant
        .as_deref()
        .map(|t| TenantId::new(t).map_err(|e| Problem::invalid(format!("tenant {t:?}: {e}"))))
        .transpose()?;
    let tenant = match (&who.tenant, tenant) {
        (None, t) => t,
        (Some(own), None) => Some(own.clone()),
        (Some(own), Some(t)) if *own == t => Some(t),
        (Some(_), Some(t)) => return Err(Problem::not_found(format!("tenant {t} not found"))),
    };
    let (password, generated) = match body.password {
        Some(p) if p.chars().count() < auth::MIN_PASSWORD_LEN => {
            return Err(Problem::invalid(format!(
                "the password must have at least {} characters",
                auth::MIN_PASSWORD_LEN
            )));
        }
        Some(p) => (p, false),
        None => (auth::random_password()?, true),
    };
    let audit = AuditEntry::new(now(), who.actor(), "create_operator", name.to_string()).detail(
        serde_json::json!({ "role": role.as_str(), "tenant": tenant.as_ref().map(ToString::to_string) }),
    );
    let store = s.auth.store().clone();
    blocking(move || {
        let hash = auth::hash_password(&password)?;
        let op = store.create_operator(
            &NewOperator {
                name,
                role,
                tenant,
                password_hash: Some(hash),
            },
            &audit,
        )?;
        Ok((
            StatusCode::CREATED,
            Json(CreatedOperatorDto {
                operator: op.into(),
                password: generated.then_some(password),
            }),
        ))
    })
    .await
}

async fn set_disabled(
    s: ApiState,
    who: Principal,
    name: String,
    disabled: bool,
) -> ApiResult<Json<OperatorDto>> {
    let name = operator_name(&name)?;
    if disabled && name == who.operator {
        return Err(Problem::conflict("an operator cannot disable itself"));
    }
    let store = s.auth.store().clone();
    let action = if disabled {
        "disable_operator"
    } else {
        "enable_operator"
    };
    let audit = AuditEntry::new(now(), who.actor(), action, name.to_string());
    blocking(move || {
        let op = store
            .get_operator(&name)?
            .ok_or_else(|| Problem::not_found(format!("operator {name} not found")))?;
        if let Some(t) = &op.tenant {
            who.check_tenant(t, || format!("operator {name}"))?;
        } else {
            who.check_unscoped(|| format!("operator {name}"))?;
        }
        Ok(Json(
            store.set_operator_disabled(&name, disabled, &audit)?.into(),
        ))
    })
    .await
}

/// An operator named in the path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct OperatorPath {
    #[param(schema_with = crate::schema::operator_name)]
    name: String,
}

/// Disable an operator: its sessions end and its tokens stop working. An operator cannot
/// disable itself (409).
#[utoipa::path(post, path = "/api/v1/operators/{name}/disable", tag = "operators",
    params(OperatorPath),
    responses((status = 200, body = OperatorDto), (status = 404, body = ProblemBody),
        (status = 409, body = ProblemBody)))]
async fn disable_operator(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(OperatorPath { name }): Path<OperatorPath>,
) -> ApiResult<Json<OperatorDto>> {
    set_disabled(s, who, name, true).await
}

/// Enable a disabled operator.
#[utoipa::path(post, path = "/api/v1/operators/{name}/enable", tag = "operators",
    params(OperatorPath),
    responses((status = 200, body = OperatorDto), (status = 404, body = ProblemBody)))]
async fn enable_operator(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(OperatorPath { name }): Path<OperatorPath>,
) -> ApiResult<Json<OperatorDto>> {
    set_disabled(s, who, name, false).await
}

// ---------------------------------------------------------------- API tokens

/// An API token, without its secret.
#[derive(Serialize, ToSchema)]
pub(crate) struct ApiTokenDto {
    id: String,
    operator: String,
    label: String,
    permissions: Vec<String>,
    created_at: i64,
    expires_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<i64>,
}

impl From<ApiToken> for ApiTokenDto {
    fn from(t: ApiToken) -> Self {
        Self {
            id: t.id,
            operator: t.operator.to_string(),
            label: t.label,
            permissions: t.permissions.iter().map(|p| p.to_string()).collect(),
            created_at: t.created_at.unix_timestamp(),
            expires_at: t.expires_at.unix_timestamp(),
            revoked_at: t.revoked_at.map(OffsetDateTime::unix_timestamp),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenListQuery {
    /// Every operator's tokens (admins; those of the admin's tenant for a tenant admin).
    #[serde(default)]
    all: bool,
}

/// List the caller's API tokens, or with `all=true` (admins) everyone's.
#[utoipa::path(get, path = "/api/v1/api-tokens", tag = "operators", params(TokenListQuery),
    responses((status = 200, body = Vec<ApiTokenDto>)))]
async fn list_api_tokens(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<TokenListQuery>,
) -> ApiResult<Json<Vec<ApiTokenDto>>> {
    if q.all {
        who.require(Permission::Administer)?;
    }
    let store = s.auth.store().clone();
    blocking(move || {
        let tokens = if q.all {
            let visible: Vec<OperatorName> = store
                .list_operators(who.tenant.as_ref())?
                .into_iter()
                .map(|o| o.name)
                .collect();
            store
                .list_api_tokens(None)?
                .into_iter()
                .filter(|t| visible.contains(&t.operator))
                .collect()
        } else {
            store.list_api_tokens(Some(&who.operator))?
        };
        Ok(Json(tokens.into_iter().map(Into::into).collect()))
    })
    .await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewApiTokenDto {
    /// What the token is for: at most 200 characters, none of them a control character.
    #[serde(default)]
    #[schema(max_length = 200, pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$")]
    label: String,
    #[serde(default)]
    #[schema(schema_with = crate::schema::permissions_or_null)]
    permissions: Option<Vec<String>>,
    /// Lifetime in seconds (default 30 days; at most `api.max_token_ttl`, the maximum
    /// here).
    #[serde(default, deserialize_with = "crate::rest::whole_number")]
    #[schema(minimum = 1, maximum = 31_536_000)]
    expires_in: Option<u64>,
}

/// A new API token: its text is shown here and never again.
#[derive(Serialize, ToSchema)]
pub(crate) struct CreatedApiTokenDto {
    /// Send as `Authorization: Bearer <token>`.
    token: String,
    #[serde(flatten)]
    record: ApiTokenDto,
}

/// Create an API token for the caller, scoped to some or all of the caller's permissions.
#[utoipa::path(post, path = "/api/v1/api-tokens", tag = "operators", request_body = NewApiTokenDto,
    responses((status = 201, body = CreatedApiTokenDto), (status = 422, body = ProblemBody)))]
async fn create_api_token(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    JsonObject(body): JsonObject<NewApiTokenDto>,
) -> ApiResult<(StatusCode, Json<CreatedApiTokenDto>)> {
    let permissions: Vec<Permission> = match body.permissions {
        None => who.permissions.clone(),
        Some(names) => names
            .iter()
            .map(|n| {
                n.parse::<Permission>()
                    .map_err(|e| Problem::invalid(e.to_string()))
            })
            .collect::<ApiResult<_>>()?,
    };
    if let Some(p) = permissions.iter().find(|p| !who.can(**p)) {
        return Err(Problem::invalid(format!(
            "scope: {p} is beyond what this request may do"
        )));
    }
    let max = s.auth.settings().max_token_ttl;
    let ttl = Duration::from_secs(body.expires_in.unwrap_or(30 * 24 * 3600));
    if ttl.is_zero() || ttl > max {
        return Err(Problem::invalid(format!(
            "expires_in must be between 1 and {} seconds",
            max.as_secs()
        )));
    }
    let at = now();
    let expires_at = at + ttl;
    let audit = AuditEntry::new(
        at,
        who.actor(),
        "create_api_token",
        who.operator.to_string(),
    )
    .detail(serde_json::json!({
        "permissions": permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "expires_at": expires_at.unix_timestamp(),
    }));
    let new = NewApiToken {
        operator: who.operator.clone(),
        label: body.label,
        permissions,
        expires_at,
    };
    let store = s.auth.store().clone();
    blocking(move || {
        let (record, text) = store.create_api_token(&new, &audit)?;
        Ok((
            StatusCode::CREATED,
            Json(CreatedApiTokenDto {
                token: text.expose().to_owned(),
                record: record.into(),
            }),
        ))
    })
    .await
}

/// Revoke an API token: the caller's own, or (admins) any they can see.
#[utoipa::path(post, path = "/api/v1/api-tokens/{id}/revoke", tag = "operators",
    params(("id" = String, Path)),
    responses((status = 200, body = ApiTokenDto), (status = 404, body = ProblemBody)))]
async fn revoke_api_token(
    State(s): State<ApiState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<ApiTokenDto>> {
    let store = s.auth.store().clone();
    let audit = AuditEntry::new(now(), who.actor(), "revoke_api_token", id.clone());
    blocking(move || {
        let missing = || Problem::not_found(format!("API token {id} not found"));
        let token = store.get_api_token(&id)?.ok_or_else(missing)?;
        if token.operator != who.operator {
            if !who.can(Permission::Administer) {
                return Err(missing());
            }
            let owner = store.get_operator(&token.operator)?.ok_or_else(missing)?;
            match &owner.tenant {
                Some(t) if !who.sees(t) => return Err(missing()),
                None if who.tenant.is_some() => return Err(missing()),
                _ => {}
            }
        }
        Ok(Json(store.revoke_api_token(&id, &audit)?.into()))
    })
    .await
}
