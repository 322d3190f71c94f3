//! Observations: what the broker saw, emitted on its tap for the detection stage.
//!
//! They are facts, not judgements: the broker reports what happened and whether its gate
//! allowed it; deciding whether it was an attack is the detection stage's job.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::Identity;

/// One thing the broker saw.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Observation {
    /// A session was established (after TLS, identity and the gate's connect check).
    Connect(ConnectObservation),
    /// A connection attempt was refused before a session existed.
    AuthFailure(AuthFailure),
    /// A SUBSCRIBE filter was checked.
    Subscribe(SubscribeObservation),
    /// A PUBLISH from a device was checked (metadata only).
    Publish(PublishObservation),
    /// A session's connection ended.
    Disconnect {
        /// When.
        at: SystemTime,
        /// Broker-local session number.
        session: u64,
        /// Who.
        identity: Arc<Identity>,
        /// Why.
        cause: DisconnectCause,
    },
}

/// Facts about the TLS session and the client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFacts {
    /// Negotiated protocol version, e.g. `TLSv1_3`; empty on a plain listener.
    pub version: String,
    /// Negotiated cipher suite.
    pub cipher: String,
    /// Client certificate serial number, hex.
    pub cert_serial: String,
    /// Client certificate issuer, as an RFC 4514 string.
    pub cert_issuer: String,
    /// Client certificate expiry, seconds since the Unix epoch.
    pub cert_not_after: i64,
    /// Client certificate public key algorithm and size, e.g. `ecdsa-p256`.
    pub cert_key: String,
}

/// A session was established.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectObservation {
    /// When.
    pub at: SystemTime,
    /// Broker-local session number.
    pub session: u64,
    /// Source address.
    pub peer: SocketAddr,
    /// The device identity bound to the session.
    pub identity: Arc<Identity>,
    /// The MQTT client id after any assignment.
    pub client_id: String,
    /// MQTT protocol level: 4 (3.1.1) or 5.
    pub protocol_level: u8,
    /// Clean start / clean session flag.
    pub clean_start: bool,
    /// Keep-alive the client asked for, in seconds.
    pub keep_alive: u16,
    /// Whether a stored session was resumed.
    pub session_present: bool,
    /// TLS facts (empty on a plain listener).
    pub tls: TlsFacts,
}

/// A connection attempt refused before a session existed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthFailure {
    /// When.
    pub at: SystemTime,
    /// Source address.
    pub peer: SocketAddr,
    /// The identity, when it was known at the time of the failure.
    pub identity: Option<Arc<Identity>>,
    /// The MQTT client id the client sent, when it got that far.
    pub client_id: Option<String>,
    /// Short machine-readable reason, e.g. `tls_unknown_ca`, `client_id_mismatch`.
    pub reason: String,
}

/// A SUBSCRIBE filter was checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscribeObservation {
    /// When.
    pub at: SystemTime,
    /// Broker-local session number.
    pub session: u64,
    /// Who.
    pub identity: Arc<Identity>,
    /// The filter, including any `$share/<group>/` prefix.
    pub filter: String,
    /// Requested maximum QoS.
    pub qos: u8,
    /// Whether the gate allowed it.
    pub allowed: bool,
}

/// A PUBLISH from a device was checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishObservation {
    /// When.
    pub at: SystemTime,
    /// Broker-local session number.
    pub session: u64,
    /// Who.
    pub identity: Arc<Identity>,
    /// Topic name (after topic-alias resolution).
    pub topic: Arc<str>,
    /// Payload size in bytes.
    pub size: u32,
    /// The payload's first bytes, up to the broker's `tap_payload_bytes` limit (empty when
    /// the limit is 0). Copied, so it pins no read buffer; not serialized.
    #[serde(skip)]
    pub payload: bytes::Bytes,
    /// QoS level.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// Whether the gate allowed it.
    pub allowed: bool,
}

/// Why a session's connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DisconnectCause {
    /// The client sent DISCONNECT.
    ClientDisconnect,
    /// The connection closed without DISCONNECT.
    ConnectionLost,
    /// Nothing arrived within 1.5 × keep-alive.
    KeepAliveTimeout,
    /// The client sent a malformed or protocol-violating packet.
    ProtocolError,
    /// The client exceeded a configured limit.
    LimitExceeded,
    /// The gate (policy, trust verdict or revocation) ended the session.
    Gate,
    /// Another connection with the same client id took the session over.
    SessionTakenOver,
    /// The broker is shutting down.
    ServerShutdown,
}
