//! Gatehouse's HTTPS surface.
//!
//! - EST (RFC 7030) under `/.well-known/est/`: `cacerts`, `csrattrs`, `simpleenroll`,
//!   `simplereenroll` ([`est`]).
//! - CRLs at `/pki/crl/<issuing CA>.crl`, the URL written into every device certificate.
//! - The REST API under `/api/v1` and its OpenAPI document at `/api/openapi.json` ([`rest`]).
//! - The operator dashboard.
//!
//! The loop these routes drive — trust, detection, actions, revocations — is
//! `gatehouse-runtime`'s; this crate only speaks HTTP to it.
//!
//! The listener asks TLS clients for a certificate without requiring one and accepts any at
//! the TLS layer ([`gatehouse_pki::ClientAuth::Deferred`]); the chain each connection sent is
//! handed to the handlers as [`ConnInfo`], and EST verifies it against the manufacturer CAs
//! (IDevID) or the local CA (renewal) on every request.
//!
//! Everything under `/api/v1` but the login needs an operator ([`auth`]): an API token or
//! a dashboard session, a role that allows the route, and a tenant that the operator may
//! see. Every change is audited as `operator:<name>`.

mod audit_scope;
pub mod auth;
mod dashboard;
mod detection;
pub mod est;
mod metrics;
mod operators;
mod problem;
pub mod rest;
mod revocation;
mod schema;
mod trust;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use gatehouse_pki::Enroller;
use gatehouse_runtime::fleet_history::FleetHistory;
use gatehouse_runtime::{DetectionService, RevocationSync, TrustService};
use gatehouse_store::Registry;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

pub use auth::{Auth, AuthSettings, Principal};
pub use metrics::{ApiMetrics, EstLabels};
pub use problem::Problem;

/// Limits of the HTTPS listener.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct HttpLimits {
    /// Largest request body accepted (413 beyond).
    pub max_body: usize,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed for a request's headers (slowloris).
    pub header_timeout: Duration,
    /// Connections open at once; one over it is closed as soon as it is accepted.
    pub max_connections: usize,
    /// TLS handshakes worked on at once; the others wait their turn (within
    /// `handshake_timeout`), so that a flood of handshakes queues here instead of in front
    /// of the broker's work on the runtime's few workers.
    pub concurrent_handshakes: usize,
}

impl Default for HttpLimits {
    /// 64 KiB bodies, 10 s for the handshake and for headers, 1,024 connections, 16
    /// handshakes at once.
    fn default() -> Self {
        Self {
            max_body: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
            concurrent_handshakes: 16,
        }
    }
}

impl HttpLimits {
    /// Limits with these values.
    pub fn new(max_body: usize, handshake_timeout: Duration, header_timeout: Duration) -> Self {
        Self {
            max_body,
            handshake_timeout,
            header_timeout,
            ..Self::default()
        }
    }

    /// These limits with at most `max_connections` open and `concurrent_handshakes`
    /// handshakes at once (each at least 1).
    pub fn with_connections(self, max_connections: usize, concurrent_handshakes: usize) -> Self {
        Self {
            max_connections: max_connections.max(1),
            concurrent_handshakes: concurrent_handshakes.max(1),
            ..self
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// Enrollment, renewal and CRL signing.
    pub enroller: Arc<Enroller>,
    /// The registry.
    pub registry: Arc<dyn Registry>,
    /// Applies revocations: CRLs, TLS verifiers, live sessions.
    pub revocations: Arc<RevocationSync>,
    /// Enrollment metrics.
    pub metrics: ApiMetrics,
    /// Scores, verdicts and their enforcement; `None` where the data plane is not gated
    /// by trust.
    pub trust: Option<Arc<TrustService>>,
    /// Detection and response; `None` where detection is off.
    pub detection: Option<Arc<DetectionService>>,
    /// Operators, sessions and API tokens.
    pub auth: Arc<Auth>,
    /// Message counters and mean scores over the last day, for the dashboard; `None`
    /// where nothing samples them.
    pub history: Option<Arc<FleetHistory>>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").finish_non_exhaustive()
    }
}

/// The TLS facts of one HTTPS connection, given to every request on it.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The certificate chain the client presented (leaf first), empty if none. Not verified
    /// by TLS: see the crate docs.
    pub client_chain: Arc<Vec<CertificateDer<'static>>>,
}

/// EST, CRLs and the REST API, with the body limit applied.
pub fn router(state: ApiState, limits: HttpLimits) -> Router {
    let operator_routes = Router::new()
        .merge(rest::routes())
        .merge(trust::routes())
        .merge(detection::routes())
        .merge(operators::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    Router::new()
        .merge(est::routes())
        .merge(revocation::routes())
        .merge(rest::public_routes())
        .merge(dashboard::routes())
        .merge(operator_routes)
        .fallback(no_such_route)
        .with_state(state)
        .layer(DefaultBodyLimit::max(limits.max_body))
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                reject_declared_oversize(req, next, limits.max_body)
            },
        ))
        // Outermost, so that every error under /api/ leaves in the one JSON shape.
        .layer(axum::middleware::from_fn(problem::json_errors))
}

/// Any path no route serves: 404, in the API's error shape under `/api/`.
async fn no_such_route(uri: axum::http::Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    if uri.path().starts_with("/api/") {
        Problem::not_found(format!("no route {}", uri.path())).into_response()
    } else {
        axum::http::StatusCode::NOT_FOUND.into_response()
    }
}

/// Answers 413 before reading a body whose declared length is over the limit, so a client
/// that sent `Expect: 100-continue` never uploads it. (Bodies without a length are cut off
/// by [`DefaultBodyLimit`] as they are read.)
async fn reject_declared_oversize(
    req: axum::extract::Request,
    next: axum::middleware::Next,
    max: usize,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return (
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over the {max}-byte limit\n"),
        )
            .into_response();
    }
    next.run(req).await
}

/// Serves `app` over TLS on `listener` until `stop` turns true. `tls` is read at each
/// handshake, so a swapped configuration applies to new connections. At most
/// `limits.max_connections` are open at once and `limits.concurrent_handshakes` in their
/// TLS handshake.
pub fn serve(
    listener: TcpListener,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    app: Router,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) {
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let handshakes = Arc::new(tokio::sync::Semaphore::new(limits.concurrent_handshakes));
    tokio::spawn(async move {
        loop {
            let (tcp, peer): (_, SocketAddr) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.changed() => return,
            };
            // Small responses must not wait for the peer's delayed ACK behind the TLS 1.3
            // session ticket (about 40 ms a request otherwise).
            let Ok(slot) = open.clone().try_acquire_owned() else {
                debug!(%peer, max = limits.max_connections, "HTTPS connection refused: too many open");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
            let app = app.clone();
            let handshakes = handshakes.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let handshake = tokio::time::timeout(limits.handshake_timeout, async {
                    // Never closed: a permit always comes, within the deadline or not.
                    let _turn = handshakes.acquire().await;
                    acceptor.accept(tcp).await
                })
                .await;
                let Ok(Ok(tls)) = handshake else {
                    debug!(%peer, "HTTPS handshake failed");
                    return;
                };
                let chain: Vec<CertificateDer<'static>> = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                    .unwrap_or_default();
                let info = ConnInfo {
                    peer,
                    client_chain: Arc::new(chain),
                };
                let app = app.layer(axum::Extension(info));
                let service = TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(limits.header_timeout)
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
}
