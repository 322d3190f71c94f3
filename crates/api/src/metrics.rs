//! Prometheus metrics of enrollment.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of an EST request's outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EstLabels {
    /// `enroll_token`, `enroll_idevid` or `renew`.
    pub operation: &'static str,
    /// The HTTP status answered (200, 400, 401, 403, 500).
    pub status: u16,
}

/// Enrollment metrics; clones share the same counters.
#[derive(Debug, Clone)]
pub struct ApiMetrics {
    /// EST requests by operation and status: refusals (unclaimed serials, unknown
    /// manufacturers, used tokens) show here as 4xx.
    pub est_requests: Family<EstLabels, Counter>,
    /// Time to decide and sign, seconds (TLS excluded).
    pub est_seconds: Histogram,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self {
            est_requests: Family::default(),
            est_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
        }
    }
}

impl ApiMetrics {
    /// Registers every metric under `gatehouse_` names.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "gatehouse_est_requests",
            "EST enrollment and renewal requests by operation and HTTP status",
            self.est_requests.clone(),
        );
        registry.register(
            "gatehouse_est_duration_seconds",
            "Time to check an EST request and sign its certificate",
            self.est_seconds.clone(),
        );
    }
}
