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

/// Label for the configured limits.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    /// The option's name in `[limits]`.
    pub limit: &'static str,
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
    /// Bytes of the retained messages held.
    pub retained_bytes: Gauge,
    /// Sessions held (online and offline).
    pub sessions: Gauge,
    /// Bytes of messages held by all sessions, queued and inflight (charged against
    /// `limits.message_memory_budget`).
    pub message_memory_used: Gauge,
    /// Bytes not sent because a PUBLISH went out with a topic alias instead of its topic.
    pub topic_alias_bytes_saved: Counter,
    /// QoS 1 and 2 PUBLISH packets refused before routing, by reason.
    pub publishes_refused: Family<ReasonLabel, Counter>,
    /// The configured `[limits]` that are sizes and counts, by option name.
    pub limits: Family<LimitLabel, Gauge>,
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
            "gatehouse_retained_bytes",
            "Bytes of the retained messages held",
            self.retained_bytes.clone(),
        );
        r.register(
            "gatehouse_sessions",
            "Sessions held, online and offline",
            self.sessions.clone(),
        );
        r.register(
            "gatehouse_message_memory_used_bytes",
            "Bytes of messages held by all sessions, queued and inflight",
            self.message_memory_used.clone(),
        );
        r.register(
            "gatehouse_topic_alias_bytes_saved",
            "Bytes not sent because a PUBLISH carried a topic alias instead of its topic",
            self.topic_alias_bytes_saved.clone(),
        );
        r.register(
            "gatehouse_publishes_refused",
            "QoS 1 and 2 PUBLISH packets refused before routing, by reason",
            self.publishes_refused.clone(),
        );
        r.register(
            "gatehouse_limit",
            "The configured limits on sizes and counts, by option name",
            self.limits.clone(),
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

    /// Shows the configured limits on `gatehouse_limit`.
    pub(crate) fn show_limits(&self, l: &crate::Limits) {
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        for (limit, value) in [
            ("max_packet_size", as_i64(l.max_packet_size as usize)),
            ("max_topic_length", as_i64(l.max_topic_length)),
            ("max_topic_levels", as_i64(l.max_topic_levels)),
            (
                "max_subscriptions_per_session",
                as_i64(l.max_subscriptions_per_session),
            ),
            ("max_inflight", i64::from(l.max_inflight)),
            ("max_queued_messages", as_i64(l.max_queued_messages)),
            ("max_queued_bytes", as_i64(l.max_queued_bytes)),
            ("message_memory_budget", as_i64(l.message_memory_budget)),
            ("max_user_properties", as_i64(l.max_user_properties)),
            ("max_user_property_bytes", as_i64(l.max_user_property_bytes)),
            ("max_connections", as_i64(l.max_connections)),
            ("max_retained_messages", as_i64(l.max_retained_messages)),
            ("max_retained_bytes", as_i64(l.max_retained_bytes)),
            ("topic_alias_maximum", i64::from(l.topic_alias_maximum)),
        ] {
            self.limits.get_or_create(&LimitLabel { limit }).set(value);
        }
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
