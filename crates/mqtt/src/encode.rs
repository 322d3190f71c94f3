//! Encoding: packets in, bytes out.
//!
//! Two passes over the packet. The measuring pass computes every length (the Remaining
//! Length and each property block's length) and checks the packet; the writing pass
//! reserves the exact size once and writes straight into the caller's buffer, with no
//! intermediate allocation. The encoder refuses what the decoder would refuse, so a peer
//! running this codec never sees a packet from us that it must reject.

use bytes::{BufMut, BytesMut};

use crate::property::{self, Kind, id};
use crate::wire::{MAX_STRING_LEN, MAX_VARIABLE_BYTE_INTEGER, put_prefixed, put_vbi, vbi_len};
use crate::{Ack, Packet, Properties, ProtocolVersion, QoS, ReasonCode};

/// Why a packet could not be encoded. Nothing is written to the output when encoding
/// fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The Remaining Length would exceed 268,435,455 bytes (§1.5.5, §2.1.4).
    #[error("remaining length {remaining_length} exceeds 268435455")]
    PacketTooLarge {
        /// The Remaining Length the packet would need.
        remaining_length: usize,
    },

    /// A UTF-8 string or binary field is longer than 65,535 bytes (§1.5.4, §1.5.6).
    #[error("{field} is {len} bytes long, more than 65535")]
    StringTooLong {
        /// The field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },

    /// Packet identifier 0 where a non-zero one is required (§2.2.1 [MQTT-2.2.1-3]).
    #[error("packet identifier 0 in {packet}")]
    ZeroPacketId {
        /// The packet type name.
        packet: &'static str,
    },

    /// A property set on a packet (or will) that may not carry it (§2.2.2.2).
    #[error("property {id:#04x} is not allowed in {packet}")]
    PropertyNotAllowed {
        /// The property identifier.
        id: u8,
        /// The packet type name, or "will properties".
        packet: &'static str,
    },

    /// A property value the specification forbids: 0 for Receive Maximum, Maximum
    /// Packet Size, Topic Alias or a Subscription Identifier, a Subscription Identifier
    /// above 268,435,455, or a flag other than 0 or 1.
    #[error("invalid value for property {id:#04x}")]
    InvalidPropertyValue {
        /// The property identifier.
        id: u8,
    },

    /// A reason code that the packet may not carry in this protocol version (the
    /// packet's reason code table; for 3.1.1, a success code other than 0 in CONNACK, or
    /// other than 0, 1, 2 in SUBACK).
    #[error("reason code {code:#04x} is not valid in {packet}")]
    InvalidReasonCode {
        /// The packet type name.
        packet: &'static str,
        /// The code.
        code: u8,
    },

    /// The packet type does not exist in the protocol version (AUTH in 3.1.1).
    #[error("{packet} does not exist in MQTT 3.1.1")]
    NotInVersion {
        /// The packet type name.
        packet: &'static str,
    },

    /// Any other field a receiver would refuse: a topic name that is empty or holds a
    /// wildcard, a string with U+0000, a packet identifier or DUP on QoS 0, an empty
    /// list of filters or reason codes, No Local on a shared subscription, a password
    /// without user name in 3.1.1, Session Present with a failure code, authentication
    /// data without method, several subscription identifiers outside PUBLISH.
    #[error("invalid {field}: {problem}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// Appends the encoding of `packet` for `version` to `out`.
///
/// For MQTT 3.1.1, properties and the other 5.0-only fields are dropped: CONNACK reason
/// codes become 3.1.1 return codes ([`ReasonCode::to_v311_connack`]), SUBACK failures
/// become 0x80, UNSUBACK carries no reason codes and DISCONNECT has no body. For 5.0,
/// reason codes and property lengths are left out wherever the specification allows
/// (PUBACK success without properties is a 2-byte body, DISCONNECT 0x00 without
/// properties an empty one). A CONNECT is always encoded at its own
/// [`Connect::protocol`](crate::Connect::protocol) level, whatever `version` says.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let mut check = Check::default();
    let sizes = measure(packet, version, &mut check);
    if let Some(e) = check.first {
        return Err(e);
    }
    if sizes.remaining > MAX_VARIABLE_BYTE_INTEGER {
        return Err(EncodeError::PacketTooLarge {
            remaining_length: sizes.remaining,
        });
    }
    out.reserve(1 + vbi_len(sizes.remaining) + sizes.remaining);
    write(packet, version, &sizes, out);
    Ok(())
}

/// Length in bytes of the encoding of `packet` for `version`, fixed header included:
/// exactly what [`encode`] appends. For a packet that `encode` refuses, the length it
/// would have had if the offending field were accepted as it is.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let sizes = measure(packet, version, &mut Check::default());
    1 + vbi_len(sizes.remaining) + sizes.remaining
}

/// Lengths computed by the measuring pass for the writing pass.
#[derive(Debug, Default)]
struct Sizes {
    /// Remaining Length.
    remaining: usize,
    /// Length of the packet's property block, without its own length prefix.
    props: usize,
    /// Length of the will property block of a CONNECT.
    will_props: usize,
}

/// The first problem the measuring pass found. Measuring carries on past it, so that
/// [`encoded_len`] has an answer for every packet.
#[derive(Debug, Default)]
struct Check {
    first: Option<EncodeError>,
}

// === impl Check ===

impl Check {
    fn fail(&mut self, e: EncodeError) {
        if self.first.is_none() {
            self.first = Some(e);
        }
    }

    fn invalid(&mut self, field: &'static str, problem: &'static str) {
        self.fail(EncodeError::InvalidField { field, problem });
    }

    /// Encoded length of a UTF-8 Encoded String (§1.5.4).
    fn string(&mut self, s: &str, field: &'static str) -> usize {
        if s.len() > MAX_STRING_LEN {
            self.fail(EncodeError::StringTooLong {
                field,
                len: s.len(),
            });
        } else if s.as_bytes().contains(&0) {
            self.invalid(field, "contains U+0000");
        }
        2 + s.len()
    }

    /// Encoded length of Binary Data (§1.5.6).
    fn binary(&mut self, b: &[u8], field: &'static str) -> usize {
        if b.len() > MAX_STRING_LEN {
            self.fail(EncodeError::StringTooLong {
                field,
                len: b.len(),
            });
        }
        2 + b.len()
    }

    /// Encoded length of a topic name: not empty, no wildcards (§3.3.2.1, §4.7.3).
    fn topic(&mut self, s: &str, field: &'static str) -> usize {
        if s.is_empty() {
            self.invalid(field, "is empty");
        } else if s.bytes().any(|b| b == b'+' || b == b'#') {
            self.invalid(field, "contains a wildcard");
        }
        self.string(s, field)
    }

    fn packet_id(&mut self, packet_id: u16, packet: &'static str) {
        if packet_id == 0 {
            self.fail(EncodeError::ZeroPacketId { packet });
        }
    }

    fn reason(&mut self, reason: ReasonCode, packet_type: u8, packet: &'static str) {
        if !reason.is_valid_for(packet_type) {
            self.fail(EncodeError::InvalidReasonCode {
                packet,
                code: reason.0,
            });
        }
    }
}

// === measuring ===

fn measure(packet: &Packet, version: ProtocolVersion, c: &mut Check) -> Sizes {
    let v5 = version == ProtocolVersion::V5;
    let mut s = Sizes::default();
    s.remaining = match packet {
        Packet::Connect(p) => {
            let v5 = p.protocol == ProtocolVersion::V5;
            // Protocol name (6), level, flags, keep alive.
            let mut n = 10;
            if v5 {
                s.props = properties_len(&p.properties, Kind::Connect, c);
                n += vbi_len(s.props) + s.props;
            }
            n += c.string(&p.client_id, "client identifier");
            if let Some(w) = &p.will {
                if v5 {
                    s.will_props = properties_len(&w.properties, Kind::Will, c);
                    n += vbi_len(s.will_props) + s.will_props;
                }
                n += c.topic(&w.topic, "will topic");
                n += c.binary(&w.payload, "will payload");
            }
            if let Some(u) = &p.username {
                n += c.string(u, "user name");
            }
            if let Some(pw) = &p.password {
                if !v5 && p.username.is_none() {
                    c.invalid("password", "MQTT 3.1.1 allows it only with a user name");
                }
                n += c.binary(pw, "password");
            }
            n
        }
        Packet::ConnAck(p) => {
            if p.session_present && p.reason.is_error() {
                c.invalid("session present", "set with a failure reason code");
            }
            if v5 {
                c.reason(p.reason, 2, "CONNACK");
                s.props = properties_len(&p.properties, Kind::ConnAck, c);
                2 + vbi_len(s.props) + s.props
            } else {
                if p.reason.to_v311_connack().is_none() {
                    c.fail(EncodeError::InvalidReasonCode {
                        packet: "CONNACK",
                        code: p.reason.0,
                    });
                }
                2
            }
        }
        Packet::Publish(p) => {
            let mut n = if p.qos == QoS::AtMostOnce {
                if p.packet_id != 0 {
                    c.invalid("packet identifier", "must be absent (0) at QoS 0");
                }
                if p.dup {
                    c.invalid("DUP flag", "must be 0 at QoS 0");
                }
                0
            } else {
                c.packet_id(p.packet_id, "PUBLISH");
                2
            };
            n += if p.topic.is_empty() && v5 && p.properties.topic_alias.is_some() {
                2
            } else {
                c.topic(&p.topic, "topic name")
            };
            if v5 {
                s.props = properties_len(&p.properties, Kind::Publish, c);
                n += vbi_len(s.props) + s.props;
            }
            n + p.payload.len()
        }
        Packet::PubAck(a) => ack_len(a, Kind::PubAck, 4, v5, c, &mut s),
        Packet::PubRec(a) => ack_len(a, Kind::PubRec, 5, v5, c, &mut s),
        Packet::PubRel(a) => ack_len(a, Kind::PubRel, 6, v5, c, &mut s),
        Packet::PubComp(a) => ack_len(a, Kind::PubComp, 7, v5, c, &mut s),
        Packet::Subscribe(p) => {
            c.packet_id(p.packet_id, "SUBSCRIBE");
            if p.filters.is_empty() {
                c.invalid("topic filters", "SUBSCRIBE needs at least one");
            }
            let mut n = 2;
            if v5 {
                s.props = properties_len(&p.properties, Kind::Subscribe, c);
                n += vbi_len(s.props) + s.props;
            }
            for f in &p.filters {
                if v5 && f.options.no_local && f.filter.shared().is_some() {
                    c.invalid("no local", "not allowed on a shared subscription");
                }
                n += c.string(f.filter.as_str(), "topic filter") + 1;
            }
            n
        }
        Packet::SubAck(p) => {
            c.packet_id(p.packet_id, "SUBACK");
            if p.reasons.is_empty() {
                c.invalid("reason codes", "SUBACK needs at least one");
            }
            for r in &p.reasons {
                if v5 {
                    c.reason(*r, 9, "SUBACK");
                } else if r.to_v311_suback().is_none() {
                    c.fail(EncodeError::InvalidReasonCode {
                        packet: "SUBACK",
                        code: r.0,
                    });
                }
            }
            let mut n = 2 + p.reasons.len();
            if v5 {
                s.props = properties_len(&p.properties, Kind::SubAck, c);
                n += vbi_len(s.props) + s.props;
            }
            n
        }
        Packet::Unsubscribe(p) => {
            c.packet_id(p.packet_id, "UNSUBSCRIBE");
            if p.filters.is_empty() {
                c.invalid("topic filters", "UNSUBSCRIBE needs at least one");
            }
            let mut n = 2;
            if v5 {
                s.props = properties_len(&p.properties, Kind::Unsubscribe, c);
                n += vbi_len(s.props) + s.props;
            }
            for f in &p.filters {
                n += c.string(f.as_str(), "topic filter");
            }
            n
        }
        Packet::UnsubAck(p) => {
            c.packet_id(p.packet_id, "UNSUBACK");
            if v5 {
                if p.reasons.is_empty() {
                    c.invalid("reason codes", "UNSUBACK needs at least one");
                }
                for r in &p.reasons {
                    c.reason(*r, 11, "UNSUBACK");
                }
                s.props = properties_len(&p.properties, Kind::UnsubAck, c);
                2 + vbi_len(s.props) + s.props + p.reasons.len()
            } else {
                2
            }
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => {
            if v5 {
                c.reason(d.reason, 14, "DISCONNECT");
                s.props = properties_len(&d.properties, Kind::Disconnect, c);
                // A reason code is always followed by a property length, even a zero one:
                // §3.14.2.2.1 allows leaving it out, but common client libraries cannot
                // read that short form.
                match (d.reason, s.props) {
                    (ReasonCode::NORMAL_DISCONNECTION, 0) => 0,
                    (_, props) => 1 + vbi_len(props) + props,
                }
            } else {
                0
            }
        }
        Packet::Auth(d) => {
            if !v5 {
                c.fail(EncodeError::NotInVersion { packet: "AUTH" });
            }
            c.reason(d.reason, 15, "AUTH");
            s.props = properties_len(&d.properties, Kind::Auth, c);
            if d.reason == ReasonCode::SUCCESS && s.props == 0 {
                0
            } else {
                if d.properties.authentication_method.is_none() {
                    c.invalid("authentication method", "AUTH must carry one");
                }
                1 + vbi_len(s.props) + s.props
            }
        }
    };
    s
}

fn ack_len(a: &Ack, kind: Kind, packet_type: u8, v5: bool, c: &mut Check, s: &mut Sizes) -> usize {
    c.packet_id(a.packet_id, kind.name());
    if !v5 {
        return 2;
    }
    c.reason(a.reason, packet_type, kind.name());
    s.props = properties_len(&a.properties, kind, c);
    // As for DISCONNECT: a reason code always comes with a property length.
    match (a.reason, s.props) {
        (ReasonCode::SUCCESS, 0) => 2,
        (_, props) => 3 + vbi_len(props) + props,
    }
}

/// Measures a property block, checking each property against the table of §2.2.2.2.
/// Returns 0 exactly when no property is set.
fn properties_len(p: &Properties, kind: Kind, c: &mut Check) -> usize {
    let mut m = Measure { kind, c, n: 0 };
    m.flag(id::PAYLOAD_FORMAT_INDICATOR, p.payload_format_indicator);
    m.fixed(id::MESSAGE_EXPIRY_INTERVAL, p.message_expiry_interval, 4);
    m.string(id::CONTENT_TYPE, &p.content_type, "content type");
    if let Some(topic) = &p.response_topic {
        m.allow(id::RESPONSE_TOPIC);
        m.n += 1 + m.c.topic(topic, "response topic");
    }
    m.binary(
        id::CORRELATION_DATA,
        &p.correlation_data,
        "correlation data",
    );
    for &sid in &p.subscription_identifiers {
        m.allow(id::SUBSCRIPTION_IDENTIFIER);
        if sid == 0 || sid as usize > MAX_VARIABLE_BYTE_INTEGER {
            m.c.fail(EncodeError::InvalidPropertyValue {
                id: id::SUBSCRIPTION_IDENTIFIER,
            });
        }
        m.n += 1 + vbi_len(sid as usize);
    }
    if p.subscription_identifiers.len() > 1 && kind != Kind::Publish {
        m.c.invalid(
            "subscription identifier",
            "only PUBLISH may carry more than one",
        );
    }
    m.fixed(id::SESSION_EXPIRY_INTERVAL, p.session_expiry_interval, 4);
    m.string(
        id::ASSIGNED_CLIENT_IDENTIFIER,
        &p.assigned_client_identifier,
        "assigned client identifier",
    );
    m.fixed(id::SERVER_KEEP_ALIVE, p.server_keep_alive, 2);
    m.string(
        id::AUTHENTICATION_METHOD,
        &p.authentication_method,
        "authentication method",
    );
    m.binary(
        id::AUTHENTICATION_DATA,
        &p.authentication_data,
        "authentication data",
    );
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        m.c.invalid("authentication data", "requires an authentication method");
    }
    m.flag(
        id::REQUEST_PROBLEM_INFORMATION,
        p.request_problem_information,
    );
    m.fixed(id::WILL_DELAY_INTERVAL, p.will_delay_interval, 4);
    m.flag(
        id::REQUEST_RESPONSE_INFORMATION,
        p.request_response_information,
    );
    m.string(
        id::RESPONSE_INFORMATION,
        &p.response_information,
        "response information",
    );
    m.string(
        id::SERVER_REFERENCE,
        &p.server_reference,
        "server reference",
    );
    m.string(id::REASON_STRING, &p.reason_string, "reason string");
    m.non_zero(id::RECEIVE_MAXIMUM, p.receive_maximum.map(u32::from), 2);
    m.fixed(id::TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum, 2);
    m.non_zero(id::TOPIC_ALIAS, p.topic_alias.map(u32::from), 2);
    m.flag(id::MAXIMUM_QOS, p.maximum_qos);
    m.flag(id::RETAIN_AVAILABLE, p.retain_available);
    for (name, value) in &p.user_properties {
        m.allow(id::USER_PROPERTY);
        m.n +=
            1 + m.c.string(name, "user property name") + m.c.string(value, "user property value");
    }
    m.non_zero(id::MAXIMUM_PACKET_SIZE, p.maximum_packet_size, 4);
    m.flag(
        id::WILDCARD_SUBSCRIPTION_AVAILABLE,
        p.wildcard_subscription_available,
    );
    m.flag(
        id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        p.subscription_identifier_available,
    );
    m.flag(
        id::SHARED_SUBSCRIPTION_AVAILABLE,
        p.shared_subscription_available,
    );
    m.n
}

/// Running length of a property block being measured.
struct Measure<'a> {
    kind: Kind,
    c: &'a mut Check,
    n: usize,
}

// === impl Measure ===

impl Measure<'_> {
    fn allow(&mut self, pid: u8) {
        if property::allowed_in(pid) & self.kind.bit() == 0 {
            self.c.fail(EncodeError::PropertyNotAllowed {
                id: pid,
                packet: self.kind.name(),
            });
        }
    }

    fn fixed<T>(&mut self, pid: u8, value: Option<T>, size: usize) {
        if value.is_some() {
            self.allow(pid);
            self.n += 1 + size;
        }
    }

    fn non_zero(&mut self, pid: u8, value: Option<u32>, size: usize) {
        if value == Some(0) {
            self.c.fail(EncodeError::InvalidPropertyValue { id: pid });
        }
        self.fixed(pid, value, size);
    }

    fn flag(&mut self, pid: u8, value: Option<u8>) {
        if value.is_some_and(|v| v > 1) {
            self.c.fail(EncodeError::InvalidPropertyValue { id: pid });
        }
        self.fixed(pid, value, 1);
    }

    fn string(&mut self, pid: u8, value: &Option<String>, field: &'static str) {
        if let Some(s) = value {
            self.allow(pid);
            self.n += 1 + self.c.string(s, field);
        }
    }

    fn binary(&mut self, pid: u8, value: &Option<bytes::Bytes>, field: &'static str) {
        if let Some(b) = value {
            self.allow(pid);
            self.n += 1 + self.c.binary(b, field);
        }
    }
}

// === writing ===

/// Writes a packet the measuring pass accepted, with the lengths it computed.
fn write(packet: &Packet, version: ProtocolVersion, s: &Sizes, out: &mut BytesMut) {
    let v5 = version == ProtocolVersion::V5;
    let props = |p: &Properties, out: &mut BytesMut| {
        put_vbi(out, s.props);
        write_properties(p, out);
    };
    match packet {
        Packet::Connect(p) => {
            let v5 = p.protocol == ProtocolVersion::V5;
            header(out, 0x10, s.remaining);
            put_prefixed(out, b"MQTT");
            out.put_u8(p.protocol.level());
            let mut flags = 0u8;
            if p.clean_start {
                flags |= 0x02;
            }
            if let Some(w) = &p.will {
                flags |= 0x04 | (w.qos as u8) << 3;
                if w.retain {
                    flags |= 0x20;
                }
            }
            if p.password.is_some() {
                flags |= 0x40;
            }
            if p.username.is_some() {
                flags |= 0x80;
            }
            out.put_u8(flags);
            out.put_u16(p.keep_alive);
            if v5 {
                props(&p.properties, out);
            }
            put_prefixed(out, p.client_id.as_bytes());
            if let Some(w) = &p.will {
                if v5 {
                    put_vbi(out, s.will_props);
                    write_properties(&w.properties, out);
                }
                put_prefixed(out, w.topic.as_bytes());
                put_prefixed(out, &w.payload);
            }
            if let Some(u) = &p.username {
                put_prefixed(out, u.as_bytes());
            }
            if let Some(pw) = &p.password {
                put_prefixed(out, pw);
            }
        }
        Packet::ConnAck(p) => {
            header(out, 0x20, s.remaining);
            out.put_u8(u8::from(p.session_present));
            if v5 {
                out.put_u8(p.reason.0);
                props(&p.properties, out);
            } else {
                out.put_u8(p.reason.to_v311_connack().unwrap_or(5));
            }
        }
        Packet::Publish(p) => {
            let flags = u8::from(p.dup) << 3 | (p.qos as u8) << 1 | u8::from(p.retain);
            header(out, 0x30 | flags, s.remaining);
            put_prefixed(out, p.topic.as_bytes());
            if p.qos != QoS::AtMostOnce {
                out.put_u16(p.packet_id);
            }
            if v5 {
                props(&p.properties, out);
            }
            out.put_slice(&p.payload);
        }
        Packet::PubAck(a) => write_ack(out, 0x40, a, v5, s),
        Packet::PubRec(a) => write_ack(out, 0x50, a, v5, s),
        Packet::PubRel(a) => write_ack(out, 0x62, a, v5, s),
        Packet::PubComp(a) => write_ack(out, 0x70, a, v5, s),
        Packet::Subscribe(p) => {
            header(out, 0x82, s.remaining);
            out.put_u16(p.packet_id);
            if v5 {
                props(&p.properties, out);
            }
            for f in &p.filters {
                put_prefixed(out, f.filter.as_str().as_bytes());
                let o = &f.options;
                let mut byte = o.qos as u8;
                if v5 {
                    if o.no_local {
                        byte |= 0x04;
                    }
                    if o.retain_as_published {
                        byte |= 0x08;
                    }
                    byte |= (o.retain_handling as u8) << 4;
                }
                out.put_u8(byte);
            }
        }
        Packet::SubAck(p) => {
            header(out, 0x90, s.remaining);
            out.put_u16(p.packet_id);
            if v5 {
                props(&p.properties, out);
                for r in &p.reasons {
                    out.put_u8(r.0);
                }
            } else {
                for r in &p.reasons {
                    out.put_u8(r.to_v311_suback().unwrap_or(0x80));
                }
            }
        }
        Packet::Unsubscribe(p) => {
            header(out, 0xA2, s.remaining);
            out.put_u16(p.packet_id);
            if v5 {
                props(&p.properties, out);
            }
            for f in &p.filters {
                put_prefixed(out, f.as_str().as_bytes());
            }
        }
        Packet::UnsubAck(p) => {
            header(out, 0xB0, s.remaining);
            out.put_u16(p.packet_id);
            if v5 {
                props(&p.properties, out);
                for r in &p.reasons {
                    out.put_u8(r.0);
                }
            }
        }
        Packet::PingReq => header(out, 0xC0, 0),
        Packet::PingResp => header(out, 0xD0, 0),
        Packet::Disconnect(d) | Packet::Auth(d) => {
            let first = if matches!(packet, Packet::Auth(_)) {
                0xF0
            } else {
                0xE0
            };
            header(out, first, s.remaining);
            if s.remaining > 0 {
                out.put_u8(d.reason.0);
            }
            if s.remaining > 1 {
                props(&d.properties, out);
            }
        }
    }
}

fn header(out: &mut BytesMut, first: u8, remaining: usize) {
    out.put_u8(first);
    put_vbi(out, remaining);
}

fn write_ack(out: &mut BytesMut, first: u8, a: &Ack, v5: bool, s: &Sizes) {
    header(out, first, s.remaining);
    out.put_u16(a.packet_id);
    if v5 && s.remaining > 2 {
        out.put_u8(a.reason.0);
        if s.remaining > 3 {
            put_vbi(out, s.props);
            write_properties(&a.properties, out);
        }
    }
}

/// Writes every property that is set, in identifier order; user properties and
/// subscription identifiers keep their order.
fn write_properties(p: &Properties, out: &mut BytesMut) {
    fn string(out: &mut BytesMut, pid: u8, value: &Option<String>) {
        if let Some(s) = value {
            out.put_u8(pid);
            put_prefixed(out, s.as_bytes());
        }
    }
    fn byte(out: &mut BytesMut, pid: u8, value: Option<u8>) {
        if let Some(v) = value {
            out.put_u8(pid);
            out.put_u8(v);
        }
    }
    fn two(out: &mut BytesMut, pid: u8, value: Option<u16>) {
        if let Some(v) = value {
            out.put_u8(pid);
            out.put_u16(v);
        }
    }
    fn four(out: &mut BytesMut, pid: u8, value: Option<u32>) {
        if let Some(v) = value {
            out.put_u8(pid);
            out.put_u32(v);
        }
    }
    fn binary(out: &mut BytesMut, pid: u8, value: &Option<bytes::Bytes>) {
        if let Some(b) = value {
            out.put_u8(pid);
            put_prefixed(out, b);
        }
    }

    byte(
        out,
        id::PAYLOAD_FORMAT_INDICATOR,
        p.payload_format_indicator,
    );
    four(out, id::MESSAGE_EXPIRY_INTERVAL, p.message_expiry_interval);
    string(out, id::CONTENT_TYPE, &p.content_type);
    string(out, id::RESPONSE_TOPIC, &p.response_topic);
    binary(out, id::CORRELATION_DATA, &p.correlation_data);
    for &sid in &p.subscription_identifiers {
        out.put_u8(id::SUBSCRIPTION_IDENTIFIER);
        put_vbi(out, sid as usize);
    }
    four(out, id::SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
    string(
        out,
        id::ASSIGNED_CLIENT_IDENTIFIER,
        &p.assigned_client_identifier,
    );
    two(out, id::SERVER_KEEP_ALIVE, p.server_keep_alive);
    string(out, id::AUTHENTICATION_METHOD, &p.authentication_method);
    binary(out, id::AUTHENTICATION_DATA, &p.authentication_data);
    byte(
        out,
        id::REQUEST_PROBLEM_INFORMATION,
        p.request_problem_information,
    );
    four(out, id::WILL_DELAY_INTERVAL, p.will_delay_interval);
    byte(
        out,
        id::REQUEST_RESPONSE_INFORMATION,
        p.request_response_information,
    );
    string(out, id::RESPONSE_INFORMATION, &p.response_information);
    string(out, id::SERVER_REFERENCE, &p.server_reference);
    string(out, id::REASON_STRING, &p.reason_string);
    two(out, id::RECEIVE_MAXIMUM, p.receive_maximum);
    two(out, id::TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
    two(out, id::TOPIC_ALIAS, p.topic_alias);
    byte(out, id::MAXIMUM_QOS, p.maximum_qos);
    byte(out, id::RETAIN_AVAILABLE, p.retain_available);
    for (name, value) in &p.user_properties {
        out.put_u8(id::USER_PROPERTY);
        put_prefixed(out, name.as_bytes());
        put_prefixed(out, value.as_bytes());
    }
    four(out, id::MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
    byte(
        out,
        id::WILDCARD_SUBSCRIPTION_AVAILABLE,
        p.wildcard_subscription_available,
    );
    byte(
        out,
        id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        p.subscription_identifier_available,
    );
    byte(
        out,
        id::SHARED_SUBSCRIPTION_AVAILABLE,
        p.shared_subscription_available,
    );
}

#[cfg(test)]
mod tests;
