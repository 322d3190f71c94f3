//! Property tests of the codec through its public API: every valid packet survives
//! encode → decode in both protocol versions, `encoded_len` is exact, frames split at any
//! byte are waited for, and arbitrary or mutated bytes never panic the decoder and only
//! ever yield packets that re-encode to themselves.
//!
//! The property table used by the generators is written out again here, from the
//! specification's §2.2.2.2, independently of the codec's own.

use bytes::{Bytes, BytesMut};
use gatehouse_mqtt::{
    Ack, ConnAck, Connect, DecodeError, Disconnect, Packet, Properties, ProtocolVersion, Publish,
    QoS, ReasonCode, RetainHandling, SubAck, Subscribe, SubscribeFilter, SubscriptionOptions,
    UnsubAck, Unsubscribe, Will, decode, encode, encoded_len, peek_frame,
};
use gatehouse_types::TopicFilter;
use proptest::collection::vec;
use proptest::option::weighted;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use ProtocolVersion::{V5, V311};

const NO_LIMIT: u32 = u32::MAX;

// === generators ===

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(V311), Just(V5)]
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

/// Any UTF-8 string without U+0000, including multi-byte characters.
fn text() -> impl Strategy<Value = String> {
    "[^\\x00]{0,12}"
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn level() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9]{0,5}", "[$é ✓_-]{1,3}", Just("$SYS".to_owned())]
}

/// A valid topic name: levels without wildcards, not empty.
fn topic() -> impl Strategy<Value = String> {
    vec(level(), 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("topics are not empty", |t| !t.is_empty())
}

/// A valid topic filter, sometimes with wildcards, sometimes shared.
fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    let filter_level = prop_oneof![3 => level(), 1 => Just("+".to_owned())];
    (
        vec(filter_level, 1..5),
        any::<bool>(),
        weighted(0.2, "[a-z]{1,4}"),
    )
        .prop_filter_map("filter must be valid", |(levels, hash, share)| {
            let mut f = levels.join("/");
            if hash {
                f.push_str(if f.is_empty() { "#" } else { "/#" });
            }
            if let Some(group) = share {
                f = format!("$share/{group}/{f}");
            }
            TopicFilter::new(f).ok()
        })
}

fn flag() -> impl Strategy<Value = u8> {
    0u8..=1
}

fn some<T: std::fmt::Debug>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    weighted(0.3, s)
}

/// Every property set at random; [`restrict`] then keeps those a packet may carry.
fn any_properties() -> impl Strategy<Value = Properties> {
    let message = (
        some(flag()),
        some(any::<u32>()),
        some(text()),
        some(topic()),
        some(binary()),
        vec(1u32..=268_435_455, 0..3),
    );
    let connection = (
        some(any::<u32>()),
        some(text()),
        some(any::<u16>()),
        some(text()),
        some(binary()),
        some(flag()),
        some(any::<u32>()),
        some(flag()),
        some(text()),
        some(text()),
        some(text()),
    );
    let limits = (
        some(1u16..),
        some(any::<u16>()),
        some(1u16..),
        some(flag()),
        some(flag()),
        vec((text(), text()), 0..3),
        some(1u32..),
        some(flag()),
        some(flag()),
        some(flag()),
    );
    (message, connection, limits).prop_map(|(m, c, l)| Properties {
        payload_format_indicator: m.0,
        message_expiry_interval: m.1,
        content_type: m.2,
        response_topic: m.3,
        correlation_data: m.4,
        subscription_identifiers: m.5,
        session_expiry_interval: c.0,
        assigned_client_identifier: c.1,
        server_keep_alive: c.2,
        authentication_method: c.3,
        authentication_data: c.4,
        request_problem_information: c.5,
        will_delay_interval: c.6,
        request_response_information: c.7,
        response_information: c.8,
        server_reference: c.9,
        reason_string: c.10,
        receive_maximum: l.0,
        topic_alias_maximum: l.1,
        topic_alias: l.2,
        maximum_qos: l.3,
        retain_available: l.4,
        user_properties: l.5,
        maximum_packet_size: l.6,
        wildcard_subscription_available: l.7,
        subscription_identifier_available: l.8,
        shared_subscription_available: l.9,
    })
}

/// Where a property block sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Connect,
    ConnAck,
    Publish,
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
    Will,
}

/// Clears every property that §2.2.2.2 does not allow at `at`.
fn restrict(mut p: Properties, at: At) -> Properties {
    use At::*;
    if !matches!(at, Publish | Will) {
        p.payload_format_indicator = None;
        p.message_expiry_interval = None;
        p.content_type = None;
        p.response_topic = None;
        p.correlation_data = None;
    }
    match at {
        Publish => {}
        Subscribe => p.subscription_identifiers.truncate(1),
        _ => p.subscription_identifiers.clear(),
    }
    if !matches!(at, Connect | ConnAck | Disconnect) {
        p.session_expiry_interval = None;
    }
    if at != ConnAck {
        p.assigned_client_identifier = None;
        p.server_keep_alive = None;
        p.response_information = None;
        p.maximum_qos = None;
        p.retain_available = None;
        p.wildcard_subscription_available = None;
        p.subscription_identifier_available = None;
        p.shared_subscription_available = None;
    }
    if !matches!(at, Connect | ConnAck | Auth) {
        p.authentication_method = None;
        p.authentication_data = None;
    }
    if p.authentication_method.is_none() {
        p.authentication_data = None;
    }
    if at != Connect {
        p.request_problem_information = None;
        p.request_response_information = None;
    }
    if at != Will {
        p.will_delay_interval = None;
    }
    if !matches!(at, ConnAck | Disconnect) {
        p.server_reference = None;
    }
    if !matches!(at, ConnAck | Ack | SubAck | UnsubAck | Disconnect | Auth) {
        p.reason_string = None;
    }
    if !matches!(at, Connect | ConnAck) {
        p.receive_maximum = None;
        p.topic_alias_maximum = None;
        p.maximum_packet_size = None;
    }
    if at != Publish {
        p.topic_alias = None;
    }
    p
}

fn props(at: At) -> impl Strategy<Value = Properties> {
    any_properties().prop_map(move |p| restrict(p, at))
}

fn reason(codes: &'static [u8]) -> impl Strategy<Value = ReasonCode> {
    proptest::sample::select(codes).prop_map(ReasonCode)
}

const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_CODES: &[u8] = &[0x00, 0x92];
const SUBACK_CODES: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];

fn will() -> impl Strategy<Value = Will> {
    (topic(), binary(), qos(), any::<bool>(), props(At::Will)).prop_map(
        |(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        },
    )
}

fn connect() -> impl Strategy<Value = Packet> {
    (
        version(),
        any::<bool>(),
        any::<u16>(),
        text(),
        some(will()),
        some(text()),
        some(binary()),
        props(At::Connect),
    )
        .prop_map(
            |(protocol, clean_start, keep_alive, client_id, will, mut username, password, p)| {
                // 3.1.1 allows a password only with a user name.
                if protocol == V311 && password.is_some() && username.is_none() {
                    username = Some(String::new());
                }
                Packet::Connect(Box::new(Connect {
                    protocol,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties: p,
                }))
            },
        )
}

fn connack() -> impl Strategy<Value = Packet> {
    (any::<bool>(), reason(CONNACK_CODES), props(At::ConnAck)).prop_map(
        |(present, reason, properties)| {
            Packet::ConnAck(ConnAck {
                session_present: present && !reason.is_error(),
                reason,
                properties,
            })
        },
    )
}

fn publish(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic(),
        any::<bool>(),
        1u16..,
        vec(any::<u8>(), 0..64),
        props(At::Publish),
    )
        .prop_map(
            move |(qos, dup, retain, topic, use_alias, id, payload, properties)| {
                let at_most_once = qos == QoS::AtMostOnce;
                // An empty topic stands for an alias: 5.0 only.
                let aliased = use_alias && version == V5 && properties.topic_alias.is_some();
                Packet::Publish(Publish {
                    dup: dup && !at_most_once,
                    qos,
                    retain,
                    topic: if aliased { String::new() } else { topic },
                    packet_id: if at_most_once { 0 } else { id },
                    payload: Bytes::from(payload),
                    properties,
                })
            },
        )
}

fn ack() -> impl Strategy<Value = Packet> {
    (0u8..4, 1u16.., any::<u16>(), props(At::Ack)).prop_map(|(which, id, pick, p)| {
        let codes = if which < 2 {
            PUBACK_CODES
        } else {
            PUBREL_CODES
        };
        let a = Ack {
            packet_id: id,
            reason: ReasonCode(codes[usize::from(pick) % codes.len()]),
            properties: p,
        };
        match which {
            0 => Packet::PubAck(a),
            1 => Packet::PubRec(a),
            2 => Packet::PubRel(a),
            _ => Packet::PubComp(a),
        }
    })
}

fn subscription() -> impl Strategy<Value = SubscribeFilter> {
    (topic_filter(), qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(
        |(filter, qos, no_local, rap, rh)| {
            let shared = filter.shared().is_some();
            SubscribeFilter {
                filter,
                options: SubscriptionOptions {
                    qos,
                    no_local: no_local && !shared,
                    retain_as_published: rap,
                    retain_handling: match rh {
                        0 => RetainHandling::SendAtSubscribe,
                        1 => RetainHandling::SendIfNew,
                        _ => RetainHandling::DoNotSend,
                    },
                },
            }
        },
    )
}

fn subscribe() -> impl Strategy<Value = Packet> {
    (1u16.., vec(subscription(), 1..4), props(At::Subscribe)).prop_map(
        |(packet_id, filters, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        },
    )
}

fn suback() -> impl Strategy<Value = Packet> {
    (1u16.., vec(reason(SUBACK_CODES), 1..5), props(At::SubAck)).prop_map(
        |(packet_id, reasons, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reasons,
                properties,
            })
        },
    )
}

fn unsubscribe() -> impl Strategy<Value = Packet> {
    (1u16.., vec(topic_filter(), 1..4), props(At::Unsubscribe)).prop_map(
        |(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        },
    )
}

fn unsuback() -> impl Strategy<Value = Packet> {
    (
        1u16..,
        vec(reason(UNSUBACK_CODES), 1..5),
        props(At::UnsubAck),
    )
        .prop_map(|(packet_id, reasons, properties)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reasons,
                properties,
            })
        })
}

fn disconnect() -> impl Strategy<Value = Packet> {
    (reason(DISCONNECT_CODES), props(At::Disconnect))
        .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }))
}

fn auth() -> impl Strategy<Value = Packet> {
    (reason(AUTH_CODES), props(At::Auth), text()).prop_map(|(reason, mut properties, method)| {
        // Anything beyond an empty success needs the method (§3.15.2.2.2).
        if reason != ReasonCode::SUCCESS || properties != Properties::default() {
            properties.authentication_method.get_or_insert(method);
        }
        Packet::Auth(Disconnect { reason, properties })
    })
}

/// Any packet valid for `version` to carry.
fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        connect(),
        connack(),
        publish(version),
        ack(),
        subscribe(),
        suback(),
        unsubscribe(),
        unsuback(),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(),
    ];
    if version == V5 {
        prop_oneof![10 => common, 1 => auth()].boxed()
    } else {
        common.boxed()
    }
}

fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|v| packet(v).prop_map(move |p| (v, p)))
}

// === helpers ===

fn encode_to_vec(packet: &Packet, version: ProtocolVersion) -> Result<Vec<u8>, TestCaseError> {
    let mut out = BytesMut::new();
    encode(packet, version, &mut out)
        .map_err(|e| TestCaseError::fail(format!("{e} for {packet:?}")))?;
    Ok(out.to_vec())
}

/// Decodes every whole frame at the front of `bytes`, stopping at the first error.
fn decode_all(bytes: &[u8], version: ProtocolVersion) -> (Vec<Packet>, Option<DecodeError>) {
    let mut buf = BytesMut::from(bytes);
    let mut packets = Vec::new();
    loop {
        match decode(&mut buf, version, NO_LIMIT) {
            Ok(Some(p)) => packets.push(p),
            Ok(None) => return (packets, None),
            Err(e) => return (packets, Some(e)),
        }
    }
}

/// Whatever decodes must encode again and decode to the same packet.
fn assert_reencodes(packet: &Packet, version: ProtocolVersion) -> Result<(), TestCaseError> {
    let bytes = encode_to_vec(packet, version)?;
    prop_assert_eq!(bytes.len(), encoded_len(packet, version));
    let mut buf = BytesMut::from(&bytes[..]);
    let again = decode(&mut buf, version, NO_LIMIT);
    prop_assert_eq!(again, Ok(Some(packet.clone())));
    prop_assert!(buf.is_empty());
    Ok(())
}

// === properties ===

/// 512 cases each; failures are kept in `proptest-regressions/roundtrip.txt` (relative to
/// the crate, where cargo runs integration tests) and replayed first on every run.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/roundtrip.txt",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// encode → decode gives the packet back (for 3.1.1, without its 5.0-only parts),
    /// and `encoded_len` is exactly the number of bytes written.
    #[test]
    fn encode_then_decode_round_trips((version, packet) in versioned_packet()) {
        let bytes = encode_to_vec(&packet, version)?;
        prop_assert_eq!(bytes.len(), encoded_len(&packet, version));
        prop_assert_eq!(peek_frame(&bytes, NO_LIMIT), Ok(Some(bytes.len())));
        let mut buf = BytesMut::from(&bytes[..]);
        let decoded = decode(&mut buf, version, NO_LIMIT);
        prop_assert_eq!(decoded, Ok(Some(packet.normalized_for(version))));
        prop_assert!(buf.is_empty());
    }

    /// What a 3.1.1 peer reads back is a fixed point: it round-trips exactly.
    #[test]
    fn normalized_packets_round_trip_exactly((version, packet) in versioned_packet()) {
        assert_reencodes(&packet.normalized_for(version), version)?;
    }

    /// A frame cut at any byte is waited for, then decoded once complete; the limit on
    /// packet size counts the whole frame.
    #[test]
    fn split_frames_wait_for_the_rest((version, packet) in versioned_packet()) {
        let bytes = encode_to_vec(&packet, version)?;
        let mut buf = BytesMut::new();
        for (i, byte) in bytes.iter().enumerate() {
            prop_assert_eq!(decode(&mut buf, version, NO_LIMIT), Ok(None), "cut at {}", i);
            prop_assert_eq!(buf.len(), i);
            buf.extend_from_slice(&[*byte]);
        }
        let len = u32::try_from(bytes.len()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let refused = decode(&mut buf, version, len - 1);
        let too_large = matches!(refused, Err(DecodeError::PacketTooLarge { .. }));
        prop_assert!(too_large, "{:?}", refused);
        prop_assert_eq!(buf.len(), bytes.len());
        prop_assert_eq!(decode(&mut buf, version, len), Ok(Some(packet.normalized_for(version))));
    }

    /// Several packets in one buffer come out one at a time, in order.
    #[test]
    fn back_to_back_frames_decode_in_order(
        version in version(),
        packets in vec(packet(V311), 1..4),
    ) {
        let mut bytes = Vec::new();
        for p in &packets {
            bytes.extend(encode_to_vec(p, version)?);
        }
        let (decoded, error) = decode_all(&bytes, version);
        prop_assert_eq!(error, None);
        let expected: Vec<Packet> = packets.iter().map(|p| p.normalized_for(version)).collect();
        prop_assert_eq!(decoded, expected);
    }

    /// Arbitrary bytes never panic the decoder; anything it accepts re-encodes to itself.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        for version in [V311, V5] {
            let _ = peek_frame(&bytes, 1024);
            let (packets, _) = decode_all(&bytes, version);
            for p in &packets {
                assert_reencodes(p, version)?;
            }
        }
    }

    /// Valid frames with a few bytes changed, cut or added: the decoder refuses or
    /// accepts, never panics, and what it accepts re-encodes to itself.
    #[test]
    fn mutated_frames_never_panic(
        (version, packet) in versioned_packet(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..4),
    ) {
        let mut bytes = encode_to_vec(&packet, version)?;
        for (at, byte, how) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] = byte,
                1 => bytes[i] ^= 1 << (byte % 8),
                2 => bytes.truncate(i),
                _ => bytes.insert(i, byte),
            }
        }
        for v in [version, if version == V5 { V311 } else { V5 }] {
            let (packets, _) = decode_all(&bytes, v);
            for p in &packets {
                assert_reencodes(p, v)?;
            }
        }
    }

    /// Refused frames leave the buffer as it was.
    #[test]
    fn refusals_leave_the_buffer_untouched(bytes in vec(any::<u8>(), 0..64), version in version()) {
        let mut buf = BytesMut::from(&bytes[..]);
        if decode(&mut buf, version, NO_LIMIT).is_err() {
            prop_assert_eq!(&buf[..], &bytes[..]);
        }
    }
}
