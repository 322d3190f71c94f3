//! The broker's validated configuration. The binary parses and checks the TOML file and
//! builds this; every field has a safe default.

use std::path::PathBuf;
use std::time::Duration;

/// How the MQTT client id relates to the certificate's device id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientIdPolicy {
    /// The client id must equal the device id (an empty one is assigned the device id);
    /// anything else is refused with 0x85 (3.1.1: return code 2).
    #[default]
    RequireDeviceId,
    /// Whatever the client sends, the session's client id is the device id (5.0 clients
    /// are told with Assigned Client Identifier).
    AssignDeviceId,
}

/// Every size, count, rate and deadline the broker enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest packet accepted or sent, in bytes (also advertised to 5.0 clients).
    pub max_packet_size: u32,
    /// Longest topic name or filter, in bytes.
    pub max_topic_length: usize,
    /// Most levels in a topic name or filter.
    pub max_topic_levels: usize,
    /// Most subscriptions one session may hold.
    pub max_subscriptions_per_session: usize,
    /// Unacknowledged QoS 1/2 messages in each direction (receive maximum).
    pub max_inflight: u16,
    /// Messages queued for a session (online or offline) beyond the inflight window.
    pub max_queued_messages: usize,
    /// Bytes of messages one session may hold, queued and inflight together; beyond it
    /// deliveries to that session are dropped and counted. A session holding nothing
    /// still takes one message, so this is at least `max_packet_size` in practice.
    pub max_queued_bytes: usize,
    /// Bytes of messages all sessions may hold together, queued and inflight: the
    /// broker's message memory budget. QoS 0 deliveries stop at three quarters of it,
    /// QoS 1 and 2 deliveries at all of it, and a QoS 1 or 2 PUBLISH that does not fit
    /// is refused (MQTT 5: 0x97, quota exceeded).
    pub message_memory_budget: usize,
    /// Most User Properties in one packet, a CONNECT and its will together; more is
    /// refused with 0x95 (packet too large) before any is stored.
    pub max_user_properties: usize,
    /// Most bytes of User Property names and values in one packet, a CONNECT and its
    /// will together; more is refused with 0x95 before any is stored.
    pub max_user_property_bytes: usize,
    /// Open connections in all (0: no limit).
    pub max_connections: usize,
    /// New connections per second from one source address (0: no limit). Bursts of
    /// twice this are allowed.
    pub connect_rate_per_source: u32,
    /// Times one device may take its session over from another live connection in a
    /// minute (a cloned certificate used from two places ping-pongs); beyond it new
    /// connections are refused with 0x9F.
    pub takeovers_per_device_per_minute: u32,
    /// Time allowed for the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Time allowed for CONNECT to arrive once the connection is up.
    pub connect_timeout: Duration,
    /// Largest keep-alive granted; clients asking for more or for none get this
    /// (5.0 clients are told with Server Keep Alive).
    pub max_keep_alive: u16,
    /// Longest session expiry granted (3.1.1 persistent sessions get this).
    pub max_session_expiry: Duration,
    /// Most retained messages held.
    pub max_retained_messages: usize,
    /// Most bytes of retained messages held; a retained message beyond it is not kept
    /// (it is still delivered) and is counted.
    pub max_retained_bytes: usize,
    /// Topic aliases a 5.0 client may use towards the broker.
    pub topic_alias_maximum: u16,
    /// Bytes of each publish payload copied onto the observation tap for the detection
    /// stage (payload range checks); 0 carries none. Larger payloads are cut.
    pub tap_payload_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_packet_size: 1024 * 1024,
            max_topic_length: 512,
            max_topic_levels: 16,
            max_subscriptions_per_session: 100,
            max_inflight: 64,
            max_queued_messages: 1000,
            max_queued_bytes: 8 * 1024 * 1024,
            message_memory_budget: 256 * 1024 * 1024,
            max_user_properties: gatehouse_mqtt::DecodeLimits::DEFAULT_MAX_USER_PROPERTIES,
            max_user_property_bytes: gatehouse_mqtt::DecodeLimits::DEFAULT_MAX_USER_PROPERTY_BYTES,
            max_connections: 100_000,
            connect_rate_per_source: 50,
            takeovers_per_device_per_minute: 10,
            tls_handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_keep_alive: 600,
            max_session_expiry: Duration::from_secs(7 * 24 * 3600),
            max_retained_messages: 100_000,
            max_retained_bytes: 128 * 1024 * 1024,
            topic_alias_maximum: 32,
            tap_payload_bytes: 1024,
        }
    }
}

// === impl Limits ===

impl Limits {
    /// What one session may hold.
    pub(crate) fn queue(&self) -> crate::session::QueueLimits {
        crate::session::QueueLimits {
            messages: self.max_queued_messages,
            bytes: self.max_queued_bytes,
        }
    }

    /// What one packet from a client may be.
    pub(crate) fn decode(&self) -> gatehouse_mqtt::DecodeLimits {
        let mut d = gatehouse_mqtt::DecodeLimits::new(self.max_packet_size);
        d.max_user_properties = self.max_user_properties;
        d.max_user_property_bytes = self.max_user_property_bytes;
        d
    }
}

/// The broker's configuration.
#[derive(Debug, Clone, Default)]
pub struct BrokerConfig {
    /// Limits.
    pub limits: Limits,
    /// Client id policy.
    pub client_id: ClientIdPolicy,
    /// Where persistent sessions and retained messages are saved (none: kept in memory).
    pub state_file: Option<PathBuf>,
    /// How often dirty state is saved (also saved at shutdown).
    pub save_interval: Option<Duration>,
}
