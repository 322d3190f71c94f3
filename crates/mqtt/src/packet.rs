//! The packet model: one Rust type per MQTT control packet, shared by 3.1.1 and 5.0.
//!
//! Fields that exist only in 5.0 (properties, reason codes) are ignored when a packet is
//! encoded for 3.1.1 and left at their defaults when one is decoded from 3.1.1.

use bytes::Bytes;
use gatehouse_types::TopicFilter;

use crate::ReasonCode;

/// Protocol level from CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte.
    pub fn level(self) -> u8 {
        match self {
            Self::V311 => 4,
            Self::V5 => 5,
        }
    }
}

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// At most once.
    #[default]
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// From the two wire bits; 3 is invalid.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

/// MQTT 5.0 retain handling subscription option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// Send retained messages only if the subscription did not already exist.
    SendIfNew = 1,
    /// Do not send retained messages.
    DoNotSend = 2,
}

/// MQTT 5.0 properties (§2.2.2). One struct for every packet; the decoder refuses a
/// property that the packet type does not allow and any duplicate of a single-valued one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01
    pub payload_format_indicator: Option<u8>,
    /// 0x02, seconds
    pub message_expiry_interval: Option<u32>,
    /// 0x03
    pub content_type: Option<String>,
    /// 0x08
    pub response_topic: Option<String>,
    /// 0x09
    pub correlation_data: Option<Bytes>,
    /// 0x0B, variable byte integers 1..=268,435,455; several allowed in PUBLISH
    pub subscription_identifiers: Vec<u32>,
    /// 0x11, seconds
    pub session_expiry_interval: Option<u32>,
    /// 0x12
    pub assigned_client_identifier: Option<String>,
    /// 0x13, seconds
    pub server_keep_alive: Option<u16>,
    /// 0x15
    pub authentication_method: Option<String>,
    /// 0x16
    pub authentication_data: Option<Bytes>,
    /// 0x17
    pub request_problem_information: Option<u8>,
    /// 0x18, seconds
    pub will_delay_interval: Option<u32>,
    /// 0x19
    pub request_response_information: Option<u8>,
    /// 0x1A
    pub response_information: Option<String>,
    /// 0x1C
    pub server_reference: Option<String>,
    /// 0x1F
    pub reason_string: Option<String>,
    /// 0x21, non-zero
    pub receive_maximum: Option<u16>,
    /// 0x22
    pub topic_alias_maximum: Option<u16>,
    /// 0x23, non-zero
    pub topic_alias: Option<u16>,
    /// 0x24, 0 or 1
    pub maximum_qos: Option<u8>,
    /// 0x25, 0 or 1
    pub retain_available: Option<u8>,
    /// 0x26, in order, repeats allowed
    pub user_properties: Vec<(String, String)>,
    /// 0x27, non-zero
    pub maximum_packet_size: Option<u32>,
    /// 0x28, 0 or 1
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29, 0 or 1
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A, 0 or 1
    pub shared_subscription_available: Option<u8>,
}

impl Properties {
    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A will message, carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Will topic (validated: no wildcards, no U+0000).
    pub topic: String,
    /// Will payload.
    pub payload: Bytes,
    /// Will QoS.
    pub qos: QoS,
    /// Will retain flag.
    pub retain: bool,
    /// Will properties (5.0).
    pub properties: Properties,
}

/// CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol level; read from the packet itself.
    pub protocol: ProtocolVersion,
    /// Clean start (5.0) / clean session (3.1.1).
    pub clean_start: bool,
    /// Keep-alive in seconds; 0 disables it.
    pub keep_alive: u16,
    /// Client identifier; may be empty.
    pub client_id: String,
    /// Will message.
    pub will: Option<Will>,
    /// User name.
    pub username: Option<String>,
    /// Password (binary data).
    pub password: Option<Bytes>,
    /// CONNECT properties (5.0).
    pub properties: Properties,
}

/// CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Session present flag.
    pub session_present: bool,
    /// Reason code; mapped to a 3.1.1 return code when encoded for 3.1.1.
    pub reason: ReasonCode,
    /// CONNACK properties (5.0).
    pub properties: Properties,
}

/// PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag.
    pub dup: bool,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name; may be empty in 5.0 when a topic alias is given.
    pub topic: String,
    /// Packet identifier; `0` (absent) for QoS 0, non-zero otherwise.
    pub packet_id: u16,
    /// Application payload (a slice of the received frame: no copy).
    pub payload: Bytes,
    /// PUBLISH properties (5.0).
    pub properties: Properties,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Packet identifier.
    pub packet_id: u16,
    /// Reason code (5.0); `SUCCESS` when absent.
    pub reason: ReasonCode,
    /// Properties (5.0).
    pub properties: Properties,
}

impl Ack {
    /// A successful acknowledgement with no properties.
    pub fn success(packet_id: u16) -> Self {
        Self {
            packet_id,
            reason: ReasonCode::SUCCESS,
            properties: Properties::default(),
        }
    }
}

/// Subscription options of one SUBSCRIBE entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS.
    pub qos: QoS,
    /// 5.0: do not send my own publishes back to me.
    pub no_local: bool,
    /// 5.0: keep the RETAIN flag as published.
    pub retain_as_published: bool,
    /// 5.0: when to send retained messages.
    pub retain_handling: RetainHandling,
}

/// One SUBSCRIBE entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeFilter {
    /// The filter (validated, may be `$share/<group>/<filter>`).
    pub filter: TopicFilter,
    /// Its options.
    pub options: SubscriptionOptions,
}

/// SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier (non-zero).
    pub packet_id: u16,
    /// At least one entry.
    pub filters: Vec<SubscribeFilter>,
    /// Properties (5.0): subscription identifier, user properties.
    pub properties: Properties,
}

/// SUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier.
    pub packet_id: u16,
    /// One reason code per SUBSCRIBE entry (granted QoS or failure).
    pub reasons: Vec<ReasonCode>,
    /// Properties (5.0).
    pub properties: Properties,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier (non-zero).
    pub packet_id: u16,
    /// At least one filter.
    pub filters: Vec<TopicFilter>,
    /// Properties (5.0).
    pub properties: Properties,
}

/// UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Packet identifier.
    pub packet_id: u16,
    /// One reason code per filter (5.0 only; empty for 3.1.1).
    pub reasons: Vec<ReasonCode>,
    /// Properties (5.0).
    pub properties: Properties,
}

/// DISCONNECT (and AUTH share this shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// Reason code (5.0).
    pub reason: ReasonCode,
    /// Properties (5.0).
    pub properties: Properties,
}

impl Disconnect {
    /// A DISCONNECT with a reason code and no properties.
    pub fn new(reason: ReasonCode) -> Self {
        Self {
            reason,
            properties: Properties::default(),
        }
    }
}

/// An MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (1)
    Connect(Box<Connect>),
    /// CONNACK (2)
    ConnAck(ConnAck),
    /// PUBLISH (3)
    Publish(Publish),
    /// PUBACK (4)
    PubAck(Ack),
    /// PUBREC (5)
    PubRec(Ack),
    /// PUBREL (6)
    PubRel(Ack),
    /// PUBCOMP (7)
    PubComp(Ack),
    /// SUBSCRIBE (8)
    Subscribe(Subscribe),
    /// SUBACK (9)
    SubAck(SubAck),
    /// UNSUBSCRIBE (10)
    Unsubscribe(Unsubscribe),
    /// UNSUBACK (11)
    UnsubAck(UnsubAck),
    /// PINGREQ (12)
    PingReq,
    /// PINGRESP (13)
    PingResp,
    /// DISCONNECT (14)
    Disconnect(Disconnect),
    /// AUTH (15, 5.0 only)
    Auth(Disconnect),
}

impl Packet {
    /// The packet as a peer speaking `version` reads it back after
    /// [`encode`](crate::encode) with that `version`.
    ///
    /// For MQTT 5.0 this is the packet itself. For 3.1.1 the 5.0-only parts are gone:
    /// properties (the will's too), acknowledgement and DISCONNECT reason codes, UNSUBACK
    /// reason codes and the 5.0 subscription options; CONNACK and SUBACK reason codes are
    /// narrowed to what a 3.1.1 return code can say. A CONNECT is encoded at its own
    /// level whatever `version` says, so it is stripped exactly when its `protocol` is
    /// 3.1.1. AUTH, which 3.1.1 cannot carry, is returned unchanged.
    pub fn normalized_for(&self, version: ProtocolVersion) -> Packet {
        let none = Properties::default;
        match self {
            Self::Connect(c) if c.protocol == ProtocolVersion::V311 => {
                let mut c = c.clone();
                c.properties = none();
                if let Some(w) = &mut c.will {
                    w.properties = none();
                }
                return Self::Connect(c);
            }
            _ if version == ProtocolVersion::V5 => return self.clone(),
            _ => {}
        }
        match self {
            Self::ConnAck(a) => Self::ConnAck(ConnAck {
                session_present: a.session_present,
                reason: a
                    .reason
                    .to_v311_connack()
                    .and_then(ReasonCode::from_v311_connack)
                    .unwrap_or(a.reason),
                properties: none(),
            }),
            Self::Publish(p) => Self::Publish(Publish {
                properties: none(),
                ..p.clone()
            }),
            Self::PubAck(a) => Self::PubAck(Ack::success(a.packet_id)),
            Self::PubRec(a) => Self::PubRec(Ack::success(a.packet_id)),
            Self::PubRel(a) => Self::PubRel(Ack::success(a.packet_id)),
            Self::PubComp(a) => Self::PubComp(Ack::success(a.packet_id)),
            Self::Subscribe(s) => Self::Subscribe(Subscribe {
                packet_id: s.packet_id,
                filters: s
                    .filters
                    .iter()
                    .map(|f| SubscribeFilter {
                        filter: f.filter.clone(),
                        options: SubscriptionOptions {
                            qos: f.options.qos,
                            ..SubscriptionOptions::default()
                        },
                    })
                    .collect(),
                properties: none(),
            }),
            Self::SubAck(s) => Self::SubAck(SubAck {
                packet_id: s.packet_id,
                reasons: s
                    .reasons
                    .iter()
                    .map(|r| r.to_v311_suback().map_or(*r, ReasonCode))
                    .collect(),
                properties: none(),
            }),
            Self::Unsubscribe(u) => Self::Unsubscribe(Unsubscribe {
                properties: none(),
                ..u.clone()
            }),
            Self::UnsubAck(u) => Self::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                reasons: Vec::new(),
                properties: none(),
            }),
            Self::Disconnect(_) => Self::Disconnect(Disconnect::new(ReasonCode::SUCCESS)),
            other => other.clone(),
        }
    }

    /// The control packet type number (1..=15).
    pub fn packet_type(&self) -> u8 {
        match self {
            Self::Connect(_) => 1,
            Self::ConnAck(_) => 2,
            Self::Publish(_) => 3,
            Self::PubAck(_) => 4,
            Self::PubRec(_) => 5,
            Self::PubRel(_) => 6,
            Self::PubComp(_) => 7,
            Self::Subscribe(_) => 8,
            Self::SubAck(_) => 9,
            Self::Unsubscribe(_) => 10,
            Self::UnsubAck(_) => 11,
            Self::PingReq => 12,
            Self::PingResp => 13,
            Self::Disconnect(_) => 14,
            Self::Auth(_) => 15,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(protocol: ProtocolVersion) -> Packet {
        Packet::Connect(Box::new(Connect {
            protocol,
            clean_start: true,
            keep_alive: 0,
            client_id: String::new(),
            will: None,
            username: None,
            password: None,
            properties: Properties {
                user_properties: vec![(String::new(), String::new())],
                ..Properties::default()
            },
        }))
    }

    #[test]
    fn a_v311_connect_loses_its_properties_whatever_the_session_version() {
        // CONNECT is encoded at its own level, so even "for 5.0" a 3.1.1 CONNECT comes
        // back without properties (found by the round-trip property test).
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let Packet::Connect(c) = connect(ProtocolVersion::V311).normalized_for(version) else {
                panic!("not a CONNECT")
            };
            assert!(c.properties.is_empty());
        }
        let v5 = connect(ProtocolVersion::V5);
        assert_eq!(v5.normalized_for(ProtocolVersion::V311), v5);
    }

    #[test]
    fn v311_narrows_reason_codes() {
        let connack = Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::BANNED,
            properties: Properties::default(),
        });
        let Packet::ConnAck(a) = connack.normalized_for(ProtocolVersion::V311) else {
            panic!("not a CONNACK")
        };
        assert_eq!(a.reason, ReasonCode::NOT_AUTHORIZED);
        let suback = Packet::SubAck(SubAck {
            packet_id: 1,
            reasons: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::QUOTA_EXCEEDED],
            properties: Properties::default(),
        });
        let Packet::SubAck(s) = suback.normalized_for(ProtocolVersion::V311) else {
            panic!("not a SUBACK")
        };
        assert_eq!(
            s.reasons,
            vec![ReasonCode::GRANTED_QOS_1, ReasonCode::UNSPECIFIED_ERROR]
        );
    }
}
