//! CRLs served over HTTPS at the URL written into every device certificate; signing them
//! and making revocations bite is [`gatehouse_runtime::RevocationSync`]'s work.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::ApiState;

pub(crate) fn routes() -> Router<ApiState> {
    Router::new().route("/pki/crl/{name}", get(crl))
}

/// A CRL, DER (`application/pkix-crl`), by issuing CA name: `/pki/crl/issuing-1.crl`.
async fn crl(State(s): State<ApiState>, Path(name): Path<String>) -> Response {
    let Some(stem) = name.strip_suffix(".crl") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let crls = s.revocations.crls();
    match crls.iter().find(|c| c.issuer_name == stem) {
        Some(c) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/pkix-crl"),
                (header::CACHE_CONTROL, "max-age=60"),
            ],
            c.crl.der.to_vec(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
