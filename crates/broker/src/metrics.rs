//! Prometheus metrics of the data plane, registered where the broker is built.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label for counters split by a short reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Machine-readable reason.
    pub reason: String,
}

/// Label for denials.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    /// `connect`, `subscribe` or `publish`.
    pub action: &'static str,
}

/// The broker's metrics. Hot-path counters are plain atomics resolved once.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Connections accepted at TCP level.
    pub connections_accepted: Counter,
    /// Sessions established (CONNACK success).
    pub sessions_established: Counter,
    /// Currently open connections.
    pub connections_open: Gauge,
    /// PUBLISH packets received from clients.
    pub messages_in: Counter,
    /// PUBLISH packets sent to clients.
    pub messages_out: Counter,
    /// Bytes read from clients.
    pub bytes_in: Counter,
    /// Bytes written to clients.
    pub bytes_out: Counter,
    /// Gate denials by action.
    pub denials: Family<ActionLabel, Counter>,
    /// TLS handshake failures by reason.
    pub tls_failures: Family<ReasonLabel, Counter>,
    /// Connections refused before a session existed, by reason.
    pub refused: Family<ReasonLabel, Counter>,
    /// Sessions ended for a protocol violation, by reason code.
    pub protocol_errors: Family<ReasonLabel, Counter>,
    /// Messages dropped for a full queue, an exceeded packet size or expiry.
    pub messages_dropped: Family<ReasonLabel, Counter>,
    /// Retained messages held.
    pub retained: Gauge,
    /// Sessions held (online and offline).
    pub sessions: Gauge,
}

impl Metrics {
    /// Registers every metric under `gatehouse_` names.
    pub fn register(&self, registry: &mut Registry, tap: &crate::Tap) {
        let r = registry;
        r.register(
            "gatehouse_connections_accepted",
            "TCP connections accepted",
            self.connections_accepted.clone(),
        );
        r.register(
            "gatehouse_sessions_established",
            "MQTT sessions established",
            self.sessions_established.clone(),
        );
        r.register(
            "gatehouse_connections_open",
            "Open client connections",
            self.connections_open.clone(),
        );
        r.register(
            "gatehouse_messages_in",
            "PUBLISH packets received",
            self.messages_in.clone(),
        );
        r.register(
            "gatehouse_messages_out",
            "PUBLISH packets sent",
            self.messages_out.clone(),
        );
        r.register(
            "gatehouse_bytes_in",
            "Bytes received",
            self.bytes_in.clone(),
        );
        r.register("gatehouse_bytes_out", "Bytes sent", self.bytes_out.clone());
        r.register(
            "gatehouse_gate_denials",
            "Actions denied by the gate",
            self.denials.clone(),
        );
        r.register(
            "gatehouse_tls_failures",
            "TLS handshake failures by reason",
            self.tls_failures.clone(),
        );
        r.register(
            "gatehouse_connections_refused",
            "Connections refused before a session existed, by reason",
            self.refused.clone(),
        );
        r.register(
            "gatehouse_protocol_errors",
            "Sessions ended for a protocol violation",
            self.protocol_errors.clone(),
        );
        r.register(
            "gatehouse_messages_dropped",
            "Messages dropped, by reason",
            self.messages_dropped.clone(),
        );
        r.register(
            "gatehouse_retained_messages",
            "Retained messages held",
            self.retained.clone(),
        );
        r.register(
            "gatehouse_sessions",
            "Sessions held, online and offline",
            self.sessions.clone(),
        );
        let (emitted, dropped) = tap.counters();
        r.register(
            "gatehouse_observations_emitted",
            "Observations delivered to tap subscribers",
            emitted,
        );
        r.register(
            "gatehouse_observations_dropped",
            "Observations dropped because a tap subscriber was slow",
            dropped,
        );
    }

    pub(crate) fn deny(&self, action: &'static str) {
        self.denials.get_or_create(&ActionLabel { action }).inc();
    }

    pub(crate) fn reason(family: &Family<ReasonLabel, Counter>, reason: &str) {
        family
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }
}
