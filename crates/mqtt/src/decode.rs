//! Decoding: bytes in, packets out. Every refusal is a [`DecodeError`] that names the
//! MQTT 5.0 reason code the receiver answers with.
//!
//! The decoder is strict: whatever the specification calls a Malformed Packet or a
//! Protocol Error that can be seen in the packet alone is refused here, so the broker
//! never handles a packet that a conforming peer could not have sent. Checks that need
//! session state (topic alias ranges, receive maximum, a second CONNECT, the direction
//! a packet travels) are the broker's.

use std::cell::Cell;

use bytes::{Bytes, BytesMut};
use gatehouse_types::{Topic, TopicError, TopicFilter};

use crate::property::{self, Kind, id};
use crate::{
    Ack, ConnAck, Connect, Disconnect, Packet, Properties, ProtocolVersion, Publish, QoS,
    ReasonCode, RetainHandling, SubAck, Subscribe, SubscribeFilter, SubscriptionOptions, UnsubAck,
    Unsubscribe, Will,
};

/// Why bytes could not be decoded into a packet.
///
/// Section numbers refer to the OASIS MQTT 5.0 specification unless marked 3.1.1.
/// [`DecodeError::reason_code`] gives the MQTT 5.0 reason code to answer with (in a
/// DISCONNECT, or a CONNACK for an error in CONNECT). An MQTT 3.1.1 peer has no reason
/// codes: the connection is closed, except for the protocol version errors, which a
/// 3.1.1 CONNACK can report (see [`DecodeError::UnsupportedProtocolLevel`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The Remaining Length is longer than four bytes, has the continuation bit on its
    /// fourth byte, or does not use the fewest bytes possible (§1.5.5 [MQTT-1.5.5-1],
    /// §2.1.4). Malformed Packet, 0x81.
    #[error("malformed remaining length")]
    MalformedRemainingLength,

    /// The frame is longer than the maximum packet size the receiver accepts
    /// (§3.1.2.11.4, §3.2.2.3.6, §4.13). Packet too large, 0x95. It is reported as soon as
    /// the Remaining Length shows it, before the rest of the frame arrives.
    #[error("packet of at least {len} bytes exceeds the maximum packet size of {max}")]
    PacketTooLarge {
        /// Frame length announced by the fixed header (a lower bound when the Remaining
        /// Length itself was still incomplete).
        len: usize,
        /// The maximum that was exceeded.
        max: u32,
    },

    /// Packet type 0, or type 15 (AUTH) in MQTT 3.1.1, where it is reserved (§2.1.2;
    /// 3.1.1 §2.2.1). Malformed Packet, 0x81.
    #[error("reserved packet type {packet_type}")]
    InvalidPacketType {
        /// The control packet type (high nibble of the first byte).
        packet_type: u8,
    },

    /// The flag bits of the fixed header are not the ones its packet type requires, for
    /// example SUBSCRIBE, UNSUBSCRIBE and PUBREL without `0b0010` (§2.1.3
    /// [MQTT-2.1.3-1]). Malformed Packet, 0x81.
    #[error("invalid fixed header flags {flags:#06b} for packet type {packet_type}")]
    InvalidFixedHeaderFlags {
        /// The control packet type.
        packet_type: u8,
        /// The low nibble of the first byte.
        flags: u8,
    },

    /// QoS 3 in the PUBLISH fixed header (§3.3.1.2 [MQTT-3.3.1-4]) or in the Will QoS
    /// bits of CONNECT (§3.1.2.6). Malformed Packet, 0x81.
    #[error("QoS 3 in {field}")]
    InvalidQoS {
        /// Where the QoS was read.
        field: &'static str,
    },

    /// DUP set on a QoS 0 PUBLISH (§3.3.1.1 [MQTT-3.3.1-2]); an invalid flag of the fixed
    /// header (§2.1.3). Malformed Packet, 0x81.
    #[error("DUP flag set on a QoS 0 PUBLISH")]
    DupOnQoS0,

    /// A field runs past the end of the packet, or past the end of the property block
    /// it is in (§2.1.4, §2.2.2.1). Malformed Packet, 0x81.
    #[error("packet ends inside {field}")]
    UnexpectedEnd {
        /// The field being read.
        field: &'static str,
    },

    /// Bytes are left over after the last field of the packet (§2.1.4: the Remaining
    /// Length is the length of the variable header and payload). Malformed Packet, 0x81.
    #[error("{packet} has bytes after its last field")]
    TrailingBytes {
        /// The packet type name.
        packet: &'static str,
    },

    /// A Variable Byte Integer other than the Remaining Length (property length,
    /// property identifier, subscription identifier) is longer than four bytes or not
    /// minimal (§1.5.5 [MQTT-1.5.5-1]). Malformed Packet, 0x81.
    #[error("malformed variable byte integer in {field}")]
    MalformedVariableByteInteger {
        /// The field being read.
        field: &'static str,
    },

    /// A string is not well-formed UTF-8, including encoded surrogates U+D800..U+DFFF
    /// and overlong forms (§1.5.4 [MQTT-1.5.4-1]). Malformed Packet, 0x81.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field being read.
        field: &'static str,
    },

    /// A string contains U+0000 (§1.5.4 [MQTT-1.5.4-2]). Malformed Packet, 0x81.
    #[error("{field} contains U+0000")]
    NullCharacter {
        /// The field being read.
        field: &'static str,
    },

    /// A reserved bit is set: bit 0 of the CONNECT flags (§3.1.2.3 [MQTT-3.1.2-3]), bits
    /// 7-1 of the CONNACK acknowledge flags (§3.2.2.1), bits 7-6 of the MQTT 5.0
    /// subscription options (§3.8.3.1 [MQTT-3.8.3-5]) or bits 7-2 of the 3.1.1 requested
    /// QoS byte (3.1.1 §3.8.3.1 [MQTT-3-8.3-4]). Malformed Packet, 0x81.
    #[error("reserved bits set in {field}")]
    ReservedBits {
        /// The field whose reserved bits are set.
        field: &'static str,
    },

    /// Will QoS or Will Retain set while the Will Flag is 0 (§3.1.2.6 [MQTT-3.1.2-11],
    /// §3.1.2.7 [MQTT-3.1.2-13]). The specification names no code; these are bits of the
    /// connect flags byte, treated like its reserved bit: Malformed Packet, 0x81.
    #[error("will QoS or will retain set without the will flag")]
    WillFlagsWithoutWill,

    /// MQTT 3.1.1 only: Password Flag set while the User Name Flag is 0 (3.1.1 §3.1.2.9
    /// [MQTT-3.1.2-22]; 5.0 allows it). Malformed Packet, 0x81 (a 3.1.1 server just
    /// closes the connection).
    #[error("password flag set without the user name flag")]
    PasswordWithoutUsername,

    /// The CONNECT protocol name is not `MQTT` (§3.1.2.1), which also covers MQTT 3.1's
    /// `MQIsdp`. Unsupported Protocol Version, 0x84.
    #[error("protocol name is not MQTT")]
    InvalidProtocolName,

    /// The CONNECT protocol level is neither 4 (3.1.1) nor 5 (5.0) (§3.1.2.2).
    /// Unsupported Protocol Version, 0x84. The broker answers a level below 5 with a
    /// 3.1.1-format CONNACK, return code 0x01, which every pre-5.0 client reads.
    #[error("unsupported protocol level {level}")]
    UnsupportedProtocolLevel {
        /// The protocol level byte received.
        level: u8,
    },

    /// A Packet Identifier is 0 where a non-zero one is required: PUBLISH with QoS > 0,
    /// SUBSCRIBE, UNSUBSCRIBE and the acknowledgements carrying theirs (§2.2.1
    /// [MQTT-2.2.1-3]). Protocol Error, 0x82.
    #[error("packet identifier 0 in {packet}")]
    ZeroPacketId {
        /// The packet type name.
        packet: &'static str,
    },

    /// SUBSCRIBE or UNSUBSCRIBE without a topic filter (§3.8.3 [MQTT-3.8.3-2], §3.10.3
    /// [MQTT-3.10.3-2]), or SUBACK or MQTT 5.0 UNSUBACK without a reason code (§3.9.3,
    /// §3.11.3: one per filter, and there is at least one). Protocol Error, 0x82.
    #[error("{packet} has no entries")]
    NoEntries {
        /// The packet type name.
        packet: &'static str,
    },

    /// Maximum QoS 3 in SUBSCRIBE options (§3.8.3.1). Protocol Error, 0x82 (a Malformed
    /// Packet in 3.1.1, 3.1.1 §3.8.3.1 [MQTT-3-8.3-4], where the connection just closes).
    #[error("subscription requests QoS 3")]
    InvalidSubscriptionQoS,

    /// Retain Handling 3 in SUBSCRIBE options (§3.8.3.1). Protocol Error, 0x82.
    #[error("retain handling 3 in subscription options")]
    InvalidRetainHandling,

    /// No Local set on a shared subscription (§3.8.3.1 [MQTT-3.8.3-4]). Protocol Error,
    /// 0x82.
    #[error("no local set on a shared subscription")]
    NoLocalOnSharedSubscription,

    /// A topic name (PUBLISH topic, will topic, response topic) contains a wildcard
    /// (§3.3.2.1 [MQTT-3.3.2-2], §3.3.2.3.5 [MQTT-3.3.2-14]) or is empty where a topic is
    /// required (§4.7.3 [MQTT-4.7.3-1]). Topic Name invalid, 0x90.
    #[error("invalid topic name in {field}")]
    TopicNameInvalid {
        /// The field holding the topic.
        field: &'static str,
    },

    /// An MQTT 5.0 PUBLISH with an empty topic name and no Topic Alias (§3.3.2.1).
    /// Protocol Error, 0x82.
    #[error("PUBLISH has an empty topic and no topic alias")]
    EmptyTopicWithoutAlias,

    /// A SUBSCRIBE or UNSUBSCRIBE topic filter is invalid: empty, a misplaced wildcard or
    /// a bad `$share/<group>/<filter>` (§4.7.1, §4.7.3, §4.8.2), as judged by
    /// [`TopicFilter::new`]. Topic Filter invalid, 0x8F.
    #[error("invalid topic filter: {0}")]
    TopicFilterInvalid(TopicError),

    /// A property identifier that MQTT 5.0 does not define (§2.2.2.2). Malformed Packet,
    /// 0x81.
    #[error("unknown property identifier {id:#x}")]
    UnknownProperty {
        /// The identifier received.
        id: u32,
    },

    /// A property that the packet (or the will) may not carry. §2.2.2.2: "A Control
    /// Packet which contains an Identifier which is not valid for its packet type ... is
    /// a Malformed Packet": 0x81.
    #[error("property {id:#04x} is not allowed in {packet}")]
    PropertyNotAllowed {
        /// The property identifier.
        id: u8,
        /// The packet type name, or "will properties".
        packet: &'static str,
    },

    /// A single-valued property appears twice; only User Property, and Subscription
    /// Identifier in PUBLISH, may repeat (each property's section, e.g. §3.3.2.3.4 "It
    /// is a Protocol Error to include the Topic Alias value more than once"). Protocol
    /// Error, 0x82.
    #[error("property {id:#04x} appears more than once")]
    DuplicateProperty {
        /// The property identifier.
        id: u8,
    },

    /// A property value that the specification forbids: Receive Maximum 0 (§3.1.2.11.3,
    /// §3.2.2.3.3), Maximum Packet Size 0 (§3.1.2.11.4, §3.2.2.3.6), Subscription
    /// Identifier 0 (§3.3.2.3.8, §3.8.2.1.2), or a byte-valued flag other than 0 or 1
    /// (Payload Format Indicator, Request Problem/Response Information, Maximum QoS,
    /// Retain/Wildcard/Subscription Identifier/Shared Subscription Available). Protocol
    /// Error, 0x82.
    #[error("invalid value for property {id:#04x}")]
    InvalidPropertyValue {
        /// The property identifier.
        id: u8,
    },

    /// Topic Alias 0 (§3.3.2.3.4 [MQTT-3.3.2-8]; §3.3.4: "A Topic Alias value of 0 or
    /// greater than the Maximum Topic Alias is a Protocol Error, the receiver uses
    /// DISCONNECT with Reason Code of 0x94"). Topic Alias invalid, 0x94.
    #[error("topic alias 0")]
    TopicAliasZero,

    /// Authentication Data without Authentication Method (§3.1.2.11.10). Protocol Error,
    /// 0x82.
    #[error("authentication data without an authentication method")]
    AuthenticationDataWithoutMethod,

    /// An AUTH packet with a reason code or properties but no Authentication Method
    /// (§3.15.2.2.2: "It is a Protocol Error to omit the Authentication Method").
    /// Protocol Error, 0x82.
    #[error("AUTH without an authentication method")]
    MissingAuthenticationMethod,

    /// A reason code that the packet type may not carry (the reason code table of each
    /// packet, e.g. §3.4.2.1 [MQTT-3.4.2-1]); for 3.1.1, a CONNACK return code above 5 or
    /// a SUBACK return code other than 0, 1, 2 or 0x80 (3.1.1 §3.2.2.3, §3.9.3). Protocol
    /// Error, 0x82.
    #[error("reason code {code:#04x} is not valid in {packet}")]
    InvalidReasonCode {
        /// The packet type name.
        packet: &'static str,
        /// The code received.
        code: u8,
    },

    /// More User Properties in one packet (the CONNECT and its will counted together) than
    /// the receiver accepts ([`DecodeLimits::max_user_properties`]). MQTT 5.0 sets no
    /// such limit, so the packet is not malformed; it is too large for this receiver, as
    /// with its Maximum Packet Size (§3.1.2.11.4, §4.13): Packet too large, 0x95. Refused
    /// when the first property over the limit is read, before it is stored.
    #[error("more than {max} user properties in one packet")]
    TooManyUserProperties {
        /// The limit that was exceeded.
        max: usize,
    },

    /// The names and values of the User Properties of one packet (the CONNECT and its will
    /// counted together) add up to more bytes than the receiver accepts
    /// ([`DecodeLimits::max_user_property_bytes`]). Packet too large, 0x95, for the reason
    /// given at [`DecodeError::TooManyUserProperties`].
    #[error("user properties larger than {max} bytes in one packet")]
    UserPropertiesTooLarge {
        /// The limit that was exceeded, in bytes.
        max: usize,
    },

    /// A CONNACK with Session Present set and a failure reason code (§3.2.2.1.1
    /// [MQTT-3.2.2-6]; 3.1.1 [MQTT-3.2.2-4]). Protocol Error, 0x82.
    #[error("CONNACK sets session present with a failure reason code")]
    SessionPresentWithError,
}

// === impl DecodeError ===

impl DecodeError {
    /// The MQTT 5.0 reason code the receiver answers with: in a DISCONNECT, or in a
    /// CONNACK when the failing packet is the CONNECT. Each variant documents its code and
    /// the section of the specification that names it.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Self::MalformedRemainingLength
            | Self::InvalidPacketType { .. }
            | Self::InvalidFixedHeaderFlags { .. }
            | Self::InvalidQoS { .. }
            | Self::DupOnQoS0
            | Self::UnexpectedEnd { .. }
            | Self::TrailingBytes { .. }
            | Self::MalformedVariableByteInteger { .. }
            | Self::InvalidUtf8 { .. }
            | Self::NullCharacter { .. }
            | Self::ReservedBits { .. }
            | Self::WillFlagsWithoutWill
            | Self::PasswordWithoutUsername
            | Self::UnknownProperty { .. }
            | Self::PropertyNotAllowed { .. } => ReasonCode::MALFORMED_PACKET,
            Self::ZeroPacketId { .. }
            | Self::NoEntries { .. }
            | Self::InvalidSubscriptionQoS
            | Self::InvalidRetainHandling
            | Self::NoLocalOnSharedSubscription
            | Self::EmptyTopicWithoutAlias
            | Self::DuplicateProperty { .. }
            | Self::InvalidPropertyValue { .. }
            | Self::AuthenticationDataWithoutMethod
            | Self::MissingAuthenticationMethod
            | Self::InvalidReasonCode { .. }
            | Self::SessionPresentWithError => ReasonCode::PROTOCOL_ERROR,
            Self::PacketTooLarge { .. }
            | Self::TooManyUserProperties { .. }
            | Self::UserPropertiesTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            Self::InvalidProtocolName | Self::UnsupportedProtocolLevel { .. } => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            Self::TopicNameInvalid { .. } => ReasonCode::TOPIC_NAME_INVALID,
            Self::TopicFilterInvalid(_) => ReasonCode::TOPIC_FILTER_INVALID,
            Self::TopicAliasZero => ReasonCode::TOPIC_ALIAS_INVALID,
        }
    }
}

/// Looks at the fixed header at the front of `buf`.
///
/// Returns `Ok(None)` while too few bytes have arrived to know the frame length, and
/// `Ok(Some(len))` with the length of the whole frame (fixed header included) once they
/// have, whether or not the rest of the frame is there yet. A frame longer than
/// `max_packet_size` is refused as soon as the Remaining Length shows it, even before
/// its last byte arrives: a client announcing 256 MB is refused after at most five bytes.
pub fn peek_frame(buf: &[u8], max_packet_size: u32) -> Result<Option<usize>, DecodeError> {
    Ok(frame_header(buf, max_packet_size)?.map(|(_, total)| total))
}

/// What one packet may cost the receiver beyond its wire size.
///
/// A User Property is five bytes on the wire at least and some fifty in memory (two
/// strings and their place in a list), so a packet within the Maximum Packet Size can
/// still ask for ten times its size: these limits refuse it while it is read, before
/// anything is stored. Build with [`DecodeLimits::new`] and set the fields to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecodeLimits {
    /// Largest frame accepted, fixed header included ([`DecodeError::PacketTooLarge`]).
    pub max_packet_size: u32,
    /// Most User Properties in one packet, the CONNECT and its will counted together
    /// ([`DecodeError::TooManyUserProperties`]).
    pub max_user_properties: usize,
    /// Most bytes of User Property names and values in one packet, the CONNECT and its
    /// will counted together ([`DecodeError::UserPropertiesTooLarge`]).
    pub max_user_property_bytes: usize,
}

// === impl DecodeLimits ===

impl DecodeLimits {
    /// User Properties allowed in one packet by default.
    pub const DEFAULT_MAX_USER_PROPERTIES: usize = 32;
    /// Bytes of User Property names and values allowed in one packet by default.
    pub const DEFAULT_MAX_USER_PROPERTY_BYTES: usize = 8 * 1024;

    /// These limits with `max_packet_size` and the default User Property limits.
    pub const fn new(max_packet_size: u32) -> Self {
        Self {
            max_packet_size,
            max_user_properties: Self::DEFAULT_MAX_USER_PROPERTIES,
            max_user_property_bytes: Self::DEFAULT_MAX_USER_PROPERTY_BYTES,
        }
    }
}

/// Decodes one packet from the front of `buf`, refusing frames longer than
/// `max_packet_size` and User Properties beyond the defaults of [`DecodeLimits::new`].
/// See [`decode_with`].
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    decode_with(buf, version, &DecodeLimits::new(max_packet_size))
}

/// Decodes one packet from the front of `buf`, within `limits`.
///
/// Returns `Ok(None)`, leaving `buf` untouched, until a whole frame is there; then
/// removes that frame from `buf` and returns its packet. `version` is the session's
/// protocol; a CONNECT is decoded at the protocol level it names itself, whatever
/// `version` says. The payloads and binary fields of the packet are zero-copy slices of
/// the frame.
///
/// On error `buf` is left as it was, so the caller can still look at the offending frame
/// (for instance with [`connect_protocol_level`]); the connection must then be closed.
pub fn decode_with(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    check_fixed_header(first, version)?;
    let Some((header_len, total)) = frame_header(buf, limits.max_packet_size)? else {
        return Ok(None);
    };
    if buf.len() < total {
        return Ok(None);
    }
    let frame = buf.split_to(total).freeze();
    let result = decode_frame(&frame, header_len, version, limits);
    match result {
        Ok(packet) => Ok(Some(packet)),
        Err(e) => {
            put_back(buf, frame);
            Err(e)
        }
    }
}

/// The protocol level byte of the CONNECT frame at the front of `buf`, if `buf` starts
/// with a CONNECT whose protocol name has arrived (whatever that name is).
///
/// For the broker, after [`decode`] refused a first packet: a level of 5 means the client
/// reads an MQTT 5.0 CONNACK with the error's reason code, anything else a 3.1.1 one.
pub fn connect_protocol_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let (header_len, _) = frame_header(buf, u32::MAX).ok()??;
    let body = buf.get(header_len..)?;
    let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    body.get(2 + name_len).copied()
}

/// Restores a frame that failed to decode to the front of `buf`. This runs only for a
/// refused frame, just before the connection closes, so a copy is acceptable: the frame
/// still shares its allocation with `buf` and usually cannot be reclaimed in place.
fn put_back(buf: &mut BytesMut, frame: Bytes) {
    let mut head = frame
        .try_into_mut()
        .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
    head.unsplit(std::mem::take(buf));
    *buf = head;
}

/// Reads the Remaining Length: `(fixed header length, whole frame length)`.
fn frame_header(buf: &[u8], max: u32) -> Result<Option<(usize, usize)>, DecodeError> {
    let too_large = |len: usize| {
        if len > max as usize {
            Err(DecodeError::PacketTooLarge { len, max })
        } else {
            Ok(())
        }
    };
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            if i > 0 {
                // At least one more length byte is coming, worth at least 128^i.
                too_large(1 + (i + 1) + value + (1 << (7 * i)))?;
            }
            return Ok(None);
        };
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Err(DecodeError::MalformedRemainingLength);
            }
            let header_len = 2 + i;
            too_large(header_len + value)?;
            return Ok(Some((header_len, header_len + value)));
        }
    }
    Err(DecodeError::MalformedRemainingLength)
}

/// Checks the packet type and the flags of the first byte (§2.1.2, §2.1.3) before the
/// frame is complete, so that garbage is refused at its first byte.
fn check_fixed_header(first: u8, version: ProtocolVersion) -> Result<(), DecodeError> {
    let packet_type = first >> 4;
    let flags = first & 0x0F;
    match packet_type {
        0 => Err(DecodeError::InvalidPacketType { packet_type }),
        15 if version == ProtocolVersion::V311 => {
            Err(DecodeError::InvalidPacketType { packet_type })
        }
        3 => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                Err(DecodeError::InvalidQoS {
                    field: "PUBLISH fixed header",
                })
            } else if qos == 0 && flags & 0b1000 != 0 {
                Err(DecodeError::DupOnQoS0)
            } else {
                Ok(())
            }
        }
        6 | 8 | 10 if flags != 0b0010 => {
            Err(DecodeError::InvalidFixedHeaderFlags { packet_type, flags })
        }
        6 | 8 | 10 => Ok(()),
        _ if flags != 0 => Err(DecodeError::InvalidFixedHeaderFlags { packet_type, flags }),
        _ => Ok(()),
    }
}

fn decode_frame(
    frame: &Bytes,
    header_len: usize,
    version: ProtocolVersion,
    limits: &DecodeLimits,
) -> Result<Packet, DecodeError> {
    let first = frame.first().copied().unwrap_or_default();
    let budget = UserPropertyBudget {
        count: Cell::new(limits.max_user_properties),
        bytes: Cell::new(limits.max_user_property_bytes),
        limits,
    };
    let mut r = Reader {
        frame,
        pos: header_len,
        end: frame.len(),
        budget: &budget,
    };
    let v5 = version == ProtocolVersion::V5;
    let packet = match first >> 4 {
        1 => Packet::Connect(Box::new(connect(&mut r)?)),
        2 => Packet::ConnAck(connack(&mut r, v5)?),
        3 => Packet::Publish(publish(&mut r, first, v5)?),
        4 => Packet::PubAck(ack(&mut r, Kind::PubAck, 4, v5)?),
        5 => Packet::PubRec(ack(&mut r, Kind::PubRec, 5, v5)?),
        6 => Packet::PubRel(ack(&mut r, Kind::PubRel, 6, v5)?),
        7 => Packet::PubComp(ack(&mut r, Kind::PubComp, 7, v5)?),
        8 => Packet::Subscribe(subscribe(&mut r, v5)?),
        9 => Packet::SubAck(suback(&mut r, v5)?),
        10 => Packet::Unsubscribe(unsubscribe(&mut r, v5)?),
        11 => Packet::UnsubAck(unsuback(&mut r, v5)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect(disconnect(&mut r, v5)?),
        15 => Packet::Auth(auth(&mut r)?),
        packet_type => return Err(DecodeError::InvalidPacketType { packet_type }),
    };
    r.finish(packet_name(first >> 4))?;
    Ok(packet)
}

fn packet_name(packet_type: u8) -> &'static str {
    match packet_type {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => "PUBLISH",
        4 => "PUBACK",
        5 => "PUBREC",
        6 => "PUBREL",
        7 => "PUBCOMP",
        8 => "SUBSCRIBE",
        9 => "SUBACK",
        10 => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        15 => "AUTH",
        _ => "reserved packet",
    }
}

// === packets ===

fn connect(r: &mut Reader<'_>) -> Result<Connect, DecodeError> {
    let name_len = usize::from(r.u16("protocol name")?);
    if r.take(name_len, "protocol name")? != b"MQTT" {
        return Err(DecodeError::InvalidProtocolName);
    }
    let protocol = match r.u8("protocol level")? {
        4 => ProtocolVersion::V311,
        5 => ProtocolVersion::V5,
        level => return Err(DecodeError::UnsupportedProtocolLevel { level }),
    };
    let v5 = protocol == ProtocolVersion::V5;
    let flags = r.u8("connect flags")?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ReservedBits {
            field: "connect flags",
        });
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::WillFlagsWithoutWill);
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidQoS { field: "will QoS" })?;
    if !v5 && password_flag && !username_flag {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16("keep alive")?;
    let properties = if v5 {
        read_properties(r, Kind::Connect)?
    } else {
        Properties::default()
    };
    let client_id = r.string("client identifier")?;
    let will = if will_flag {
        let properties = if v5 {
            read_properties(r, Kind::Will)?
        } else {
            Properties::default()
        };
        let topic = topic_name(r.str("will topic")?, "will topic")?;
        let payload = r.binary("will payload")?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary("password")?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn connack(r: &mut Reader<'_>, v5: bool) -> Result<ConnAck, DecodeError> {
    let flags = r.u8("connect acknowledge flags")?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::ReservedBits {
            field: "connect acknowledge flags",
        });
    }
    let session_present = flags & 0x01 != 0;
    let code = r.u8("connect reason code")?;
    let invalid = DecodeError::InvalidReasonCode {
        packet: "CONNACK",
        code,
    };
    let (reason, properties) = if v5 {
        let reason = ReasonCode(code);
        if !reason.is_valid_for(2) {
            return Err(invalid);
        }
        (reason, read_properties(r, Kind::ConnAck)?)
    } else {
        let reason = ReasonCode::from_v311_connack(code).ok_or(invalid)?;
        (reason, Properties::default())
    };
    if session_present && reason.is_error() {
        return Err(DecodeError::SessionPresentWithError);
    }
    Ok(ConnAck {
        session_present,
        reason,
        properties,
    })
}

fn publish(r: &mut Reader<'_>, first: u8, v5: bool) -> Result<Publish, DecodeError> {
    let qos = QoS::from_u8((first >> 1) & 0b11).ok_or(DecodeError::InvalidQoS {
        field: "PUBLISH fixed header",
    })?;
    let topic = r.str("topic name")?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        packet_id(r, "PUBLISH")?
    };
    let properties = if v5 {
        read_properties(r, Kind::Publish)?
    } else {
        Properties::default()
    };
    let topic = if topic.is_empty() && v5 {
        if properties.topic_alias.is_none() {
            return Err(DecodeError::EmptyTopicWithoutAlias);
        }
        String::new()
    } else {
        topic_name(topic, "topic name")?
    };
    Ok(Publish {
        dup: first & 0b1000 != 0,
        qos,
        retain: first & 0b0001 != 0,
        topic,
        packet_id,
        payload: r.rest(),
        properties,
    })
}

fn ack(r: &mut Reader<'_>, kind: Kind, packet_type: u8, v5: bool) -> Result<Ack, DecodeError> {
    let packet_id = packet_id(r, kind.name())?;
    if !v5 || r.is_empty() {
        // §3.4.2.1: a Remaining Length of 2 means Success and no properties.
        return Ok(Ack::success(packet_id));
    }
    let reason = reason_code(r, packet_type, kind.name())?;
    let properties = if r.is_empty() {
        // §3.4.2.2.1: below 4 bytes there is no Property Length.
        Properties::default()
    } else {
        read_properties(r, kind)?
    };
    Ok(Ack {
        packet_id,
        reason,
        properties,
    })
}

fn subscribe(r: &mut Reader<'_>, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r, "SUBSCRIBE")?;
    let properties = if v5 {
        read_properties(r, Kind::Subscribe)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = topic_filter(r)?;
        let byte = r.u8("subscription options")?;
        let options = if v5 {
            subscription_options_v5(byte, &filter)?
        } else {
            if byte & 0xFC != 0 {
                return Err(DecodeError::ReservedBits {
                    field: "requested QoS",
                });
            }
            SubscriptionOptions {
                qos: QoS::from_u8(byte).ok_or(DecodeError::InvalidSubscriptionQoS)?,
                ..SubscriptionOptions::default()
            }
        };
        filters.push(SubscribeFilter { filter, options });
    }
    if filters.is_empty() {
        return Err(DecodeError::NoEntries {
            packet: "SUBSCRIBE",
        });
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

/// §3.8.3.1: bits 0-1 maximum QoS, 2 No Local, 3 Retain As Published, 4-5 Retain
/// Handling, 6-7 reserved.
fn subscription_options_v5(
    byte: u8,
    filter: &TopicFilter,
) -> Result<SubscriptionOptions, DecodeError> {
    if byte & 0xC0 != 0 {
        return Err(DecodeError::ReservedBits {
            field: "subscription options",
        });
    }
    let qos = QoS::from_u8(byte & 0b11).ok_or(DecodeError::InvalidSubscriptionQoS)?;
    let no_local = byte & 0x04 != 0;
    let retain_handling = match (byte >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::InvalidRetainHandling),
    };
    if no_local && filter.shared().is_some() {
        return Err(DecodeError::NoLocalOnSharedSubscription);
    }
    Ok(SubscriptionOptions {
        qos,
        no_local,
        retain_as_published: byte & 0x08 != 0,
        retain_handling,
    })
}

fn suback(r: &mut Reader<'_>, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r, "SUBACK")?;
    let properties = if v5 {
        read_properties(r, Kind::SubAck)?
    } else {
        Properties::default()
    };
    let mut reasons = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        let code = r.u8("SUBACK reason code")?;
        let valid = if v5 {
            ReasonCode(code).is_valid_for(9)
        } else {
            matches!(code, 0 | 1 | 2 | 0x80)
        };
        if !valid {
            return Err(DecodeError::InvalidReasonCode {
                packet: "SUBACK",
                code,
            });
        }
        reasons.push(ReasonCode(code));
    }
    if reasons.is_empty() {
        return Err(DecodeError::NoEntries { packet: "SUBACK" });
    }
    Ok(SubAck {
        packet_id,
        reasons,
        properties,
    })
}

fn unsubscribe(r: &mut Reader<'_>, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r, "UNSUBSCRIBE")?;
    let properties = if v5 {
        read_properties(r, Kind::Unsubscribe)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(topic_filter(r)?);
    }
    if filters.is_empty() {
        return Err(DecodeError::NoEntries {
            packet: "UNSUBSCRIBE",
        });
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn unsuback(r: &mut Reader<'_>, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r, "UNSUBACK")?;
    if !v5 {
        return Ok(UnsubAck {
            packet_id,
            reasons: Vec::new(),
            properties: Properties::default(),
        });
    }
    let properties = read_properties(r, Kind::UnsubAck)?;
    let mut reasons = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        reasons.push(reason_code(r, 11, "UNSUBACK")?);
    }
    if reasons.is_empty() {
        return Err(DecodeError::NoEntries { packet: "UNSUBACK" });
    }
    Ok(UnsubAck {
        packet_id,
        reasons,
        properties,
    })
}

fn disconnect(r: &mut Reader<'_>, v5: bool) -> Result<Disconnect, DecodeError> {
    if !v5 || r.is_empty() {
        // 3.1.1 DISCONNECT has no body; in 5.0 an empty one is a normal disconnection
        // (§3.14.2.1). Trailing bytes of a 3.1.1 one are refused by `finish`.
        return Ok(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION));
    }
    let reason = reason_code(r, 14, "DISCONNECT")?;
    let properties = if r.is_empty() {
        // §3.14.2.2.1: "If the Remaining Length is less than 2, a value of 0 is used."
        Properties::default()
    } else {
        read_properties(r, Kind::Disconnect)?
    };
    Ok(Disconnect { reason, properties })
}

fn auth(r: &mut Reader<'_>) -> Result<Disconnect, DecodeError> {
    if r.is_empty() {
        // §3.15.2.1: Remaining Length 0 is Success with no properties. Unlike DISCONNECT,
        // AUTH has no form with a reason code and no Property Length.
        return Ok(Disconnect::new(ReasonCode::SUCCESS));
    }
    let reason = reason_code(r, 15, "AUTH")?;
    let properties = read_properties(r, Kind::Auth)?;
    if properties.authentication_method.is_none() {
        return Err(DecodeError::MissingAuthenticationMethod);
    }
    Ok(Disconnect { reason, properties })
}

// === fields ===

fn packet_id(r: &mut Reader<'_>, packet: &'static str) -> Result<u16, DecodeError> {
    match r.u16("packet identifier")? {
        0 => Err(DecodeError::ZeroPacketId { packet }),
        id => Ok(id),
    }
}

fn reason_code(
    r: &mut Reader<'_>,
    packet_type: u8,
    packet: &'static str,
) -> Result<ReasonCode, DecodeError> {
    let code = r.u8("reason code")?;
    let reason = ReasonCode(code);
    if reason.is_valid_for(packet_type) {
        Ok(reason)
    } else {
        Err(DecodeError::InvalidReasonCode { packet, code })
    }
}

/// A topic name: no wildcards, not empty (§3.3.2.1, §4.7.3).
fn topic_name(s: &str, field: &'static str) -> Result<String, DecodeError> {
    match Topic::new(s) {
        Ok(topic) => Ok(topic.into()),
        Err(TopicError::Nul) => Err(DecodeError::NullCharacter { field }),
        Err(_) => Err(DecodeError::TopicNameInvalid { field }),
    }
}

fn topic_filter(r: &mut Reader<'_>) -> Result<TopicFilter, DecodeError> {
    TopicFilter::new(r.str("topic filter")?).map_err(DecodeError::TopicFilterInvalid)
}

/// Reads a property block (§2.2.2) for a packet of `kind`.
fn read_properties(r: &mut Reader<'_>, kind: Kind) -> Result<Properties, DecodeError> {
    let len = r.vbi("property length")? as usize;
    let mut p = r.sub(len, "properties")?;
    let mut props = Properties::default();
    let mut seen = 0u64;
    while !p.is_empty() {
        let raw = p.vbi("property identifier")?;
        let pid = u8::try_from(raw)
            .ok()
            .filter(|pid| property::allowed_in(*pid) != 0)
            .ok_or(DecodeError::UnknownProperty { id: raw })?;
        if property::allowed_in(pid) & kind.bit() == 0 {
            return Err(DecodeError::PropertyNotAllowed {
                id: pid,
                packet: kind.name(),
            });
        }
        if !property::repeatable(pid, kind) {
            let bit = 1u64 << pid;
            if seen & bit != 0 {
                return Err(DecodeError::DuplicateProperty { id: pid });
            }
            seen |= bit;
        }
        let invalid = DecodeError::InvalidPropertyValue { id: pid };
        match pid {
            id::PAYLOAD_FORMAT_INDICATOR => {
                props.payload_format_indicator = Some(p.flag(pid)?);
            }
            id::MESSAGE_EXPIRY_INTERVAL => {
                props.message_expiry_interval = Some(p.u32("message expiry interval")?);
            }
            id::CONTENT_TYPE => props.content_type = Some(p.string("content type")?),
            id::RESPONSE_TOPIC => {
                props.response_topic =
                    Some(topic_name(p.str("response topic")?, "response topic")?);
            }
            id::CORRELATION_DATA => {
                props.correlation_data = Some(p.binary("correlation data")?);
            }
            id::SUBSCRIPTION_IDENTIFIER => match p.vbi("subscription identifier")? {
                0 => return Err(invalid),
                v => props.subscription_identifiers.push(v),
            },
            id::SESSION_EXPIRY_INTERVAL => {
                props.session_expiry_interval = Some(p.u32("session expiry interval")?);
            }
            id::ASSIGNED_CLIENT_IDENTIFIER => {
                props.assigned_client_identifier = Some(p.string("assigned client identifier")?);
            }
            id::SERVER_KEEP_ALIVE => props.server_keep_alive = Some(p.u16("server keep alive")?),
            id::AUTHENTICATION_METHOD => {
                props.authentication_method = Some(p.string("authentication method")?);
            }
            id::AUTHENTICATION_DATA => {
                props.authentication_data = Some(p.binary("authentication data")?);
            }
            id::REQUEST_PROBLEM_INFORMATION => {
                props.request_problem_information = Some(p.flag(pid)?);
            }
            id::WILL_DELAY_INTERVAL => {
                props.will_delay_interval = Some(p.u32("will delay interval")?);
            }
            id::REQUEST_RESPONSE_INFORMATION => {
                props.request_response_information = Some(p.flag(pid)?);
            }
            id::RESPONSE_INFORMATION => {
                props.response_information = Some(p.string("response information")?);
            }
            id::SERVER_REFERENCE => props.server_reference = Some(p.string("server reference")?),
            id::REASON_STRING => props.reason_string = Some(p.string("reason string")?),
            id::RECEIVE_MAXIMUM => match p.u16("receive maximum")? {
                0 => return Err(invalid),
                v => props.receive_maximum = Some(v),
            },
            id::TOPIC_ALIAS_MAXIMUM => {
                props.topic_alias_maximum = Some(p.u16("topic alias maximum")?);
            }
            id::TOPIC_ALIAS => match p.u16("topic alias")? {
                0 => return Err(DecodeError::TopicAliasZero),
                v => props.topic_alias = Some(v),
            },
            id::MAXIMUM_QOS => props.maximum_qos = Some(p.flag(pid)?),
            id::RETAIN_AVAILABLE => props.retain_available = Some(p.flag(pid)?),
            id::USER_PROPERTY => {
                let name = p.str("user property name")?;
                let value = p.str("user property value")?;
                // Counted before anything is allocated for it.
                p.budget.spend(name.len() + value.len())?;
                props
                    .user_properties
                    .push((name.to_owned(), value.to_owned()));
            }
            id::MAXIMUM_PACKET_SIZE => match p.u32("maximum packet size")? {
                0 => return Err(invalid),
                v => props.maximum_packet_size = Some(v),
            },
            id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                props.wildcard_subscription_available = Some(p.flag(pid)?);
            }
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                props.subscription_identifier_available = Some(p.flag(pid)?);
            }
            id::SHARED_SUBSCRIPTION_AVAILABLE => {
                props.shared_subscription_available = Some(p.flag(pid)?);
            }
            _ => return Err(DecodeError::UnknownProperty { id: raw }),
        }
    }
    if props.authentication_data.is_some() && props.authentication_method.is_none() {
        return Err(DecodeError::AuthenticationDataWithoutMethod);
    }
    Ok(props)
}

/// What is left of one packet's User Property allowance.
struct UserPropertyBudget<'l> {
    count: Cell<usize>,
    bytes: Cell<usize>,
    limits: &'l DecodeLimits,
}

// === impl UserPropertyBudget ===

impl UserPropertyBudget<'_> {
    /// Takes one User Property of `len` bytes (name and value) from the allowance.
    fn spend(&self, len: usize) -> Result<(), DecodeError> {
        let count = self
            .count
            .get()
            .checked_sub(1)
            .ok_or(DecodeError::TooManyUserProperties {
                max: self.limits.max_user_properties,
            })?;
        let bytes =
            self.bytes
                .get()
                .checked_sub(len)
                .ok_or(DecodeError::UserPropertiesTooLarge {
                    max: self.limits.max_user_property_bytes,
                })?;
        self.count.set(count);
        self.bytes.set(bytes);
        Ok(())
    }
}

// === impl Reader ===

/// A cursor over part of a frame: the body of the packet, or one property block.
struct Reader<'a> {
    frame: &'a Bytes,
    pos: usize,
    end: usize,
    /// Shared by every reader of one frame.
    budget: &'a UserPropertyBudget<'a>,
}

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.pos >= self.end
    }

    fn remaining(&self) -> usize {
        self.end.saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let bytes: &'a [u8] = self.frame;
        let taken = self
            .pos
            .checked_add(n)
            .filter(|stop| *stop <= self.end)
            .and_then(|stop| bytes.get(self.pos..stop))
            .ok_or(DecodeError::UnexpectedEnd { field })?;
        self.pos += n;
        Ok(taken)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        match self.take(1, field)? {
            [b] => Ok(*b),
            _ => Err(DecodeError::UnexpectedEnd { field }),
        }
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        match self.take(2, field)? {
            [a, b] => Ok(u16::from_be_bytes([*a, *b])),
            _ => Err(DecodeError::UnexpectedEnd { field }),
        }
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        match self.take(4, field)? {
            [a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
            _ => Err(DecodeError::UnexpectedEnd { field }),
        }
    }

    /// A byte-valued property that must be 0 or 1.
    fn flag(&mut self, pid: u8) -> Result<u8, DecodeError> {
        match self.u8("property value")? {
            v @ (0 | 1) => Ok(v),
            _ => Err(DecodeError::InvalidPropertyValue { id: pid }),
        }
    }

    /// A Variable Byte Integer (§1.5.5): at most four bytes, minimally encoded.
    fn vbi(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for i in 0..4 {
            let byte = self.u8(field)?;
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                if i > 0 && byte == 0 {
                    return Err(DecodeError::MalformedVariableByteInteger { field });
                }
                return Ok(value);
            }
        }
        Err(DecodeError::MalformedVariableByteInteger { field })
    }

    /// A UTF-8 Encoded String (§1.5.4): well-formed, without U+0000.
    fn str(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let len = usize::from(self.u16(field)?);
        let raw = self.take(len, field)?;
        let s = std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8 { field })?;
        if raw.contains(&0) {
            return Err(DecodeError::NullCharacter { field });
        }
        Ok(s)
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        self.str(field).map(str::to_owned)
    }

    /// Binary Data (§1.5.6), as a zero-copy slice of the frame.
    fn binary(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16(field)?);
        let start = self.pos;
        self.take(len, field)?;
        Ok(self.frame.slice(start..start + len))
    }

    /// Everything left, as a zero-copy slice of the frame.
    fn rest(&mut self) -> Bytes {
        let start = self.pos.min(self.end);
        self.pos = self.end;
        self.frame.slice(start..self.end)
    }

    /// The next `len` bytes as a reader of their own.
    fn sub(&mut self, len: usize, field: &'static str) -> Result<Reader<'a>, DecodeError> {
        let start = self.pos;
        self.take(len, field)?;
        Ok(Reader {
            frame: self.frame,
            pos: start,
            end: start + len,
            budget: self.budget,
        })
    }

    fn finish(&self, packet: &'static str) -> Result<(), DecodeError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes { packet })
        }
    }
}

#[cfg(test)]
mod tests;
