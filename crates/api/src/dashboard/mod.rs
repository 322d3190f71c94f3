//! The operator dashboard: server-rendered HTML under `/ui/`, on the HTTPS listener.
//!
//! Every page needs a dashboard session (the `__Host-gh_session` cookie from the login
//! form); without one, pages answer 303 to `/ui/login`. API tokens are not accepted here:
//! the dashboard is for people, and a session is what carries the CSRF token.
//!
//! Every change is a POST form carrying the session's CSRF token in a hidden `csrf` field
//! (403 without it or with another). The change itself goes through the REST route that
//! makes it ([`api::call`]), with the same permission check, tenant check and audit record
//! as when it is called with an API token. Buttons the operator's role does not allow are
//! not shown, and refused (403) if posted anyway. Objects of a tenant the operator may
//! not see are 404 pages, as in the API.
//!
//! Pages are rendered with `maud`, which escapes every value. The one stylesheet and the
//! one script (the overview's live figures) are embedded in the binary. Every response
//! carries a strict Content-Security-Policy (no inline scripts or styles), denies
//! framing, and pages are not cached.

mod api;
mod audit;
mod devices;
mod incidents;
mod layout;
mod login;
mod models;
mod overview;
mod policies;

use axum::Router;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use gatehouse_store::Permission;

use crate::auth::{Principal, Via, csrf_matches};
use crate::{ApiState, Problem};

/// The Content-Security-Policy of every dashboard response.
pub(crate) const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
                              script-src 'self'; frame-ancestors 'none'; form-action 'self'";

const STYLE: &str = include_str!("static/style.css");
const SCRIPT: &str = include_str!("static/app.js");

/// The dashboard's routes: `/` and `/ui` redirect to `/ui/`.
pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(to_overview))
        .route("/ui", get(to_overview))
        .route("/ui/", get(overview::page))
        .route("/ui/live.json", get(overview::live))
        .route("/ui/login", get(login::form).post(login::submit))
        .route("/ui/logout", post(login::logout))
        .route("/ui/static/style.css", get(style))
        .route("/ui/static/app.js", get(script))
        .route("/ui/devices", get(devices::list))
        .route("/ui/devices/{tenant}/{device}", get(devices::show))
        .route(
            "/ui/devices/{tenant}/{device}/release",
            post(devices::release),
        )
        .route("/ui/incidents", get(incidents::list))
        .route("/ui/incidents/{id}", get(incidents::show))
        .route("/ui/incidents/{id}/{op}", post(incidents::transition))
        .route("/ui/actions/{id}/{op}", post(incidents::act))
        .route("/ui/models", get(models::page).post(models::upload))
        .route("/ui/policies", get(policies::page).post(policies::submit))
        .route("/ui/audit", get(audit::page))
        .route("/ui/{*rest}", get(not_found).post(not_found))
        .layer(axum::middleware::from_fn(security_headers))
}

async fn to_overview() -> Redirect {
    Redirect::to("/ui/")
}

async fn not_found() -> PageError {
    PageError(Problem::not_found("there is no such page"))
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLE,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
        .into_response()
}

/// Adds the security headers to every dashboard response; `Cache-Control: no-store`
/// unless the handler set a cache policy (the static files).
async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// The operator of a dashboard request, logged in with a session.
#[derive(Debug, Clone)]
pub(crate) struct Who {
    /// The principal, as the REST API sees it.
    pub(crate) p: Principal,
    /// The session's CSRF token, for the forms of the page.
    pub(crate) csrf: String,
}

impl Who {
    /// Whether the operator may do `perm`.
    pub(crate) fn can(&self, perm: Permission) -> bool {
        self.p.can(perm)
    }

    /// 403 unless the form carried the session's CSRF token.
    pub(crate) fn check_csrf(&self, given: Option<&str>) -> Result<(), PageError> {
        if csrf_matches(&self.csrf, given.unwrap_or("")) {
            Ok(())
        } else {
            Err(PageError(Problem::forbidden(
                "this form was not sent from the dashboard (its CSRF token is missing or \
                 wrong); reload the page and try again",
            )))
        }
    }

    /// 403 unless the operator may do `perm`.
    pub(crate) fn require(&self, perm: Permission) -> Result<(), PageError> {
        self.p.require(perm).map_err(PageError)
    }
}

/// The session of a request, if it has a live one. API tokens are ignored.
pub(crate) async fn session(
    state: &ApiState,
    headers: &axum::http::HeaderMap,
) -> Result<Option<Who>, Problem> {
    let mut headers = headers.clone();
    headers.remove(header::AUTHORIZATION);
    let auth = state.auth.clone();
    let found = tokio::task::spawn_blocking(move || auth.principal(&headers)).await??;
    Ok(found.and_then(|p| match &p.via {
        Via::Session { csrf } => Some(Who {
            csrf: csrf.clone(),
            p,
        }),
        Via::Token(_) => None,
    }))
}

impl FromRequestParts<ApiState> for Who {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Response> {
        match session(state, &parts.headers).await {
            Ok(Some(who)) => Ok(who),
            Ok(None) => Err(Redirect::to("/ui/login").into_response()),
            Err(p) => Err(PageError(p).into_response()),
        }
    }
}

/// An error shown as a page: its status, and its message.
#[derive(Debug)]
pub(crate) struct PageError(pub(crate) Problem);

impl From<Problem> for PageError {
    fn from(p: Problem) -> Self {
        Self(p)
    }
}

impl From<gatehouse_store::ReadError> for PageError {
    fn from(e: gatehouse_store::ReadError) -> Self {
        Self(e.into())
    }
}

impl From<tokio::task::JoinError> for PageError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        layout::html(status, layout::error_page(status, &self.0.message))
    }
}

/// What a page handler returns.
pub(crate) type PageResult = Result<Response, PageError>;

/// Runs blocking registry work off the async threads.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, PageError>
where
    F: FnOnce() -> Result<T, Problem> + Send + 'static,
    T: Send + 'static,
{
    Ok(tokio::task::spawn_blocking(f).await??)
}

/// 303 to `to` after a change.
pub(crate) fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// Percent-encodes one path segment or query value.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_build_without_conflicts() {
        let _ = routes();
    }

    #[test]
    fn encoding() {
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
        assert_eq!(enc("dev-1_x.y"), "dev-1_x.y");
    }
}
