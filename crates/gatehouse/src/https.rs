//! The binary's own HTTPS routes: `/healthz` and Prometheus `/metrics`. The listener and
//! the rest of the routes are `gatehouse-api`'s.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use gatehouse_broker::Broker;
use prometheus_client::registry::Registry;

#[derive(Clone)]
struct AppState {
    broker: Broker,
    registry: Arc<Registry>,
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "status": "ok",
        "connections": s.broker.connection_count(),
        "sessions": s.broker.session_count(),
    }))
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// `/healthz` and `/metrics`, to be merged with the API's router.
pub fn router(broker: Broker, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(AppState { broker, registry })
}
