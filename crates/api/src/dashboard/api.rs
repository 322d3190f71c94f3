//! Changes made from the dashboard go through the REST API's own routes, in process: the
//! same handler, tenant check and audit record (`operator:<name>`) as a call with an API
//! token, and the same permission the API requires for the route.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, header};
use serde_json::Value;
use tower::Service;

use crate::auth::required_permission;
use crate::{ApiState, ConnInfo, Problem};

use super::{PageError, Who};

/// Largest answer read back from a route.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// A REST route to call: its method, its route template (for the permission it needs) and
/// the path with its values.
pub(crate) struct Call {
    pub(crate) method: Method,
    pub(crate) template: &'static str,
    pub(crate) path: String,
    /// Content type and body.
    pub(crate) body: Option<(&'static str, String)>,
}

impl Call {
    /// A POST with a JSON body.
    pub(crate) fn post_json(template: &'static str, path: String, body: &Value) -> Self {
        Self {
            method: Method::POST,
            template,
            path,
            body: Some(("application/json", body.to_string())),
        }
    }
}

/// How a call ended: refused or failed (a [`Problem`], with the API's status and message),
/// or done (the JSON answer).
pub(crate) type Outcome = Result<Value, Problem>;

/// Calls a REST route as `who`. The route's permission is checked first, as the API's
/// authentication layer does (403 page); the route's own answer is returned either way.
pub(crate) async fn call(
    state: &ApiState,
    who: &Who,
    conn: Option<ConnInfo>,
    c: Call,
) -> Result<Outcome, PageError> {
    if let Some(p) = required_permission(&c.method, c.template) {
        who.require(p)?;
    }
    let router: Router = Router::new()
        .merge(crate::rest::routes())
        .merge(crate::trust::routes())
        .merge(crate::detection::routes())
        .with_state(state.clone());
    let mut req = Request::builder().method(c.method).uri(c.path);
    if let Some((ct, _)) = &c.body {
        req = req.header(header::CONTENT_TYPE, *ct);
    }
    let mut req = req
        .body(c.body.map_or_else(Body::empty, |(_, b)| Body::from(b)))
        .map_err(|e| PageError(Problem::internal(e)))?;
    req.extensions_mut().insert(who.p.clone());
    if let Some(conn) = conn {
        req.extensions_mut().insert(conn);
    }
    let mut svc = router;
    std::future::poll_fn(|cx| <Router as Service<Request<Body>>>::poll_ready(&mut svc, cx))
        .await
        .map_err(|e| PageError(Problem::internal(e)))?;
    let res = svc
        .call(req)
        .await
        .map_err(|e| PageError(Problem::internal(e)))?;
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), MAX_ANSWER)
        .await
        .map_err(|e| PageError(Problem::internal(e)))?;
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(Ok(value));
    }
    let message = value["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned());
    Ok(Err(problem(status.as_u16(), message)))
}

/// The problem an API answer describes.
fn problem(status: u16, message: String) -> Problem {
    let code = match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        413 => "too_large",
        415 => "unsupported_media_type",
        422 => "invalid",
        429 => "too_many_requests",
        500..=599 => "internal",
        _ => "error",
    };
    Problem {
        status,
        code,
        message,
    }
}
