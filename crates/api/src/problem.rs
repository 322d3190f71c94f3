//! The one error body of the REST API: `{"error": {"status", "code", "message"}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An API error: an HTTP status, a stable machine-readable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Problem {
    /// The HTTP status.
    pub status: u16,
    /// Stable code, e.g. `not_found`, `invalid`, `conflict`.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ProblemBody {
    error: ProblemDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ProblemDetail {
    /// The HTTP status.
    status: u16,
    /// Stable code: `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `invalid`, `too_many_requests`, `unavailable`, `method_not_allowed`,
    /// `payload_too_large`, `unsupported_media_type`, `internal`.
    code: String,
    /// What went wrong.
    message: String,
}

impl Problem {
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "bad_request", message)
    }

    /// 401: no credentials, or credentials not accepted.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, "unauthorized", message)
    }

    /// 403: authenticated, but not allowed.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "forbidden", message)
    }

    /// 429.
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(429, "too_many_requests", message)
    }

    /// 503: the server sheds this request for now (a budget is spent); try again.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "unavailable", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "conflict", message)
    }

    /// 422: well-formed but invalid values.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(422, "invalid", message)
    }

    /// 500. The message is logged; clients get a generic one.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        tracing::error!(error = %message, "API request failed");
        Self::new(500, "internal", "internal error; see the server log")
    }

    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ProblemBody {
            error: ProblemDetail {
                status: self.status,
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut res = (status, Json(body)).into_response();
        if matches!(self.status, 429 | 503) {
            // Both are "try again": say when.
            res.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        res
    }
}

impl From<gatehouse_store::ReadError> for Problem {
    fn from(e: gatehouse_store::ReadError) -> Self {
        match e {
            gatehouse_store::ReadError::BadCursor => Problem::bad_request("invalid cursor"),
            other => Problem::internal(other),
        }
    }
}

impl From<gatehouse_store::WriteError> for Problem {
    fn from(e: gatehouse_store::WriteError) -> Self {
        use gatehouse_store::WriteError as W;
        match e {
            W::NotFound { what } => Problem::not_found(format!("{what} not found")),
            W::AlreadyExists { what } => Problem::conflict(format!("{what} already exists")),
            W::Invalid { what } => Problem::invalid(format!("invalid {what}")),
            W::DeviceNotActive { device } => {
                Problem::conflict(format!("device {device} is not active"))
            }
            W::AlreadyRevoked { serial } => {
                Problem::conflict(format!("certificate {serial} is already revoked"))
            }
            W::IllegalTransition(t) => Problem::conflict(t.to_string()),
            other => Problem::internal(other),
        }
    }
}

impl From<tokio::task::JoinError> for Problem {
    fn from(e: tokio::task::JoinError) -> Self {
        Problem::internal(e)
    }
}

/// Gives every error under `/api/` the one JSON error body: the rejections of axum's
/// extractors (a malformed JSON body, a missing content type, a bad path or query value,
/// an unknown route or method) answer `text/plain` or nothing, which clients of the
/// documented API cannot parse. Their text is kept as the message.
pub(crate) async fn json_errors(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let api = req.uri().path().starts_with("/api/");
    let res = next.run(req).await;
    let status = res.status();
    if !api || !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_json = res
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let text = text.trim();
    let (code, fallback) = match status.as_u16() {
        400 => ("bad_request", "the request is malformed"),
        401 => ("unauthorized", "credentials are needed"),
        403 => ("forbidden", "not allowed"),
        404 => ("not_found", "no such resource"),
        405 => ("method_not_allowed", "this method is not allowed here"),
        409 => ("conflict", "conflict"),
        413 => ("payload_too_large", "the request body is too large"),
        415 => (
            "unsupported_media_type",
            "send the body as application/json",
        ),
        422 => ("invalid", "the request's values are invalid"),
        429 => ("too_many_requests", "too many requests"),
        503 => ("unavailable", "try again shortly"),
        _ if status.is_server_error() => ("internal", "internal error; see the server log"),
        _ => ("bad_request", "the request was refused"),
    };
    let message = if text.is_empty() || status.is_server_error() {
        fallback.to_owned()
    } else {
        text.chars().take(500).collect()
    };
    let mut out = Problem::new(status.as_u16(), code, message).into_response();
    // Keep what the original said beside its body (Allow on a 405, say).
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}
