//! Hand-written byte vectors: one or more per packet type and version, and one per
//! refusal with the reason code it must carry.

use bytes::{Bytes, BytesMut};
use gatehouse_types::{TopicError, TopicFilter};

use super::*;
use crate::ProtocolVersion::{V5, V311};

const NO_LIMIT: u32 = u32::MAX;

/// Decodes one whole frame that must be accepted and must be consumed entirely.
fn ok(bytes: &[u8], version: ProtocolVersion) -> Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, version, NO_LIMIT)
        .expect("frame is valid")
        .expect("frame is complete");
    assert!(buf.is_empty(), "frame not consumed entirely");
    packet
}

/// Decodes a frame that must be refused, checking the buffer is left as it was.
fn err(bytes: &[u8], version: ProtocolVersion) -> DecodeError {
    let mut buf = BytesMut::from(bytes);
    let e = decode(&mut buf, version, NO_LIMIT).expect_err("frame must be refused");
    assert_eq!(&buf[..], bytes, "buffer changed by a refused frame");
    e
}

/// A frame from its first byte and body, with a one-byte Remaining Length.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut v = vec![first, body.len() as u8];
    v.extend_from_slice(body);
    v
}

/// A length-prefixed string.
fn s(text: &str) -> Vec<u8> {
    let mut v = (text.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(text.as_bytes());
    v
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn filter(f: &str) -> TopicFilter {
    TopicFilter::new(f).expect("valid filter")
}

fn publish(topic: &str, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic.to_owned(),
        packet_id: 0,
        payload: Bytes::from_static(payload),
        properties: Properties::default(),
    }
}

/// A 5.0 PUBLISH QoS 0 to "t" carrying the given property block contents.
fn publish_with_props(props: &[u8]) -> Vec<u8> {
    cat(&[
        &[0x30, (4 + props.len()) as u8],
        &s("t"),
        &[props.len() as u8],
        props,
    ])
}

/// A 5.0 CONNECT with client id "c" carrying the given property block contents.
fn connect_with_props(props: &[u8]) -> Vec<u8> {
    let body = cat(&[
        &s("MQTT"),
        &[5, 0x02, 0, 60, props.len() as u8],
        props,
        &s("c"),
    ]);
    frame(0x10, &body)
}

// === packets, MQTT 3.1.1 ===

#[test]
fn v311_connect_as_sent_by_mosquitto_pub() {
    // mosquitto_pub -V mqttv311 -i client1 -t ... : clean session, keep alive 60.
    let bytes = [
        0x10, 0x13, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x07, b'c',
        b'l', b'i', b'e', b'n', b't', b'1',
    ];
    let expected = Connect {
        protocol: V311,
        clean_start: true,
        keep_alive: 60,
        client_id: "client1".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    // The session version passed in does not matter for CONNECT.
    assert_eq!(ok(&bytes, V5), Packet::Connect(Box::new(expected.clone())));
    assert_eq!(ok(&bytes, V311), Packet::Connect(Box::new(expected)));
}

#[test]
fn v311_connect_with_will_user_and_password() {
    let bytes = [
        0x10, 0x1B, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xEE, 0x00, 0x0A, // header
        0x00, 0x01, b'c', // client id
        0x00, 0x01, b'w', // will topic
        0x00, 0x03, b'b', b'y', b'e', // will payload
        0x00, 0x01, b'u', // user name
        0x00, 0x01, b'p', // password
    ];
    let Packet::Connect(c) = ok(&bytes, V311) else {
        panic!("not a CONNECT")
    };
    assert_eq!(c.protocol, V311);
    assert!(c.clean_start);
    assert_eq!(c.keep_alive, 10);
    assert_eq!(
        c.will,
        Some(Will {
            topic: "w".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        })
    );
    assert_eq!(c.username.as_deref(), Some("u"));
    assert_eq!(c.password.as_deref(), Some(&b"p"[..]));
}

#[test]
fn v311_connack() {
    assert_eq!(
        ok(&[0x20, 0x02, 0x01, 0x00], V311),
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason: ReasonCode::SUCCESS,
            properties: Properties::default(),
        })
    );
    for (code, reason) in [
        (1, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION),
        (2, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID),
        (3, ReasonCode::SERVER_UNAVAILABLE),
        (4, ReasonCode::BAD_USER_NAME_OR_PASSWORD),
        (5, ReasonCode::NOT_AUTHORIZED),
    ] {
        let Packet::ConnAck(a) = ok(&[0x20, 0x02, 0x00, code], V311) else {
            panic!("not a CONNACK")
        };
        assert_eq!(a.reason, reason);
    }
}

#[test]
fn v311_publish() {
    assert_eq!(
        ok(
            &[0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'],
            V311
        ),
        Packet::Publish(publish("a/b", b"hi"))
    );
    // DUP, QoS 1, RETAIN, packet id 10.
    assert_eq!(
        ok(
            &[
                0x3B, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i'
            ],
            V311
        ),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: true,
            packet_id: 10,
            ..publish("a/b", b"hi")
        })
    );
    // An empty payload is valid (§3.3.3).
    assert_eq!(
        ok(&[0x30, 0x03, 0x00, 0x01, b'x'], V311),
        Packet::Publish(publish("x", b""))
    );
}

#[test]
fn v311_acknowledgements() {
    assert_eq!(
        ok(&[0x40, 0x02, 0x00, 0x0A], V311),
        Packet::PubAck(Ack::success(10))
    );
    assert_eq!(
        ok(&[0x50, 0x02, 0x00, 0x01], V311),
        Packet::PubRec(Ack::success(1))
    );
    assert_eq!(
        ok(&[0x62, 0x02, 0x00, 0x01], V311),
        Packet::PubRel(Ack::success(1))
    );
    assert_eq!(
        ok(&[0x70, 0x02, 0xFF, 0xFF], V311),
        Packet::PubComp(Ack::success(0xFFFF))
    );
}

#[test]
fn v311_subscribe_and_suback() {
    assert_eq!(
        ok(
            &[0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'b', 0x01],
            V311
        ),
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![SubscribeFilter {
                filter: filter("a/b"),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..SubscriptionOptions::default()
                },
            }],
            properties: Properties::default(),
        })
    );
    let Packet::Subscribe(sub) = ok(
        &[
            0x82, 0x0E, 0x00, 0x02, 0x00, 0x03, b'a', b'/', b'#', 0x00, 0x00, 0x03, b'c', b'/',
            b'+', 0x02,
        ],
        V311,
    ) else {
        panic!("not a SUBSCRIBE")
    };
    assert_eq!(sub.filters.len(), 2);
    assert_eq!(sub.filters[1].filter, filter("c/+"));
    assert_eq!(sub.filters[1].options.qos, QoS::ExactlyOnce);

    assert_eq!(
        ok(&[0x90, 0x05, 0x00, 0x01, 0x00, 0x02, 0x80], V311),
        Packet::SubAck(SubAck {
            packet_id: 1,
            reasons: vec![ReasonCode(0), ReasonCode(2), ReasonCode(0x80)],
            properties: Properties::default(),
        })
    );
}

#[test]
fn v311_unsubscribe_and_unsuback() {
    assert_eq!(
        ok(
            &[0xA2, 0x07, 0x00, 0x02, 0x00, 0x03, b'a', b'/', b'b'],
            V311
        ),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            filters: vec![filter("a/b")],
            properties: Properties::default(),
        })
    );
    assert_eq!(
        ok(&[0xB0, 0x02, 0x00, 0x02], V311),
        Packet::UnsubAck(UnsubAck {
            packet_id: 2,
            reasons: Vec::new(),
            properties: Properties::default(),
        })
    );
}

#[test]
fn v311_ping_and_disconnect() {
    assert_eq!(ok(&[0xC0, 0x00], V311), Packet::PingReq);
    assert_eq!(ok(&[0xD0, 0x00], V311), Packet::PingResp);
    assert_eq!(
        ok(&[0xE0, 0x00], V311),
        Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION))
    );
}

// === packets, MQTT 5.0 ===

#[test]
fn v5_connect_with_properties() {
    let bytes = [
        0x10, 0x18, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, // header
        0x08, 0x11, 0x00, 0x00, 0x00, 0x78, 0x21, 0x00, 0x14, // expiry 120, rx max 20
        0x00, 0x03, b'd', b'e', b'v',
    ];
    let expected = Connect {
        protocol: V5,
        clean_start: true,
        keep_alive: 60,
        client_id: "dev".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties {
            session_expiry_interval: Some(120),
            receive_maximum: Some(20),
            ..Properties::default()
        },
    };
    assert_eq!(ok(&bytes, V311), Packet::Connect(Box::new(expected)));
}

#[test]
fn v5_connect_with_will_properties_and_empty_client_id() {
    let bytes = [
        0x10, 0x18, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x06, 0x00, 0x00,
        0x00, // no props
        0x00, 0x00, // client id ""
        0x05, 0x18, 0x00, 0x00, 0x00, 0x05, // will delay 5
        0x00, 0x01, b't', // will topic
        0x00, 0x00, // will payload
    ];
    let Packet::Connect(c) = ok(&bytes, V5) else {
        panic!("not a CONNECT")
    };
    assert_eq!(c.client_id, "");
    let will = c.will.expect("will");
    assert_eq!(will.topic, "t");
    assert_eq!(will.qos, QoS::AtMostOnce);
    assert_eq!(will.properties.will_delay_interval, Some(5));
}

#[test]
fn v5_connect_allows_password_without_user_name() {
    let body = cat(&[&s("MQTT"), &[5, 0x42, 0, 0, 0], &s("c"), &s("pw")]);
    let Packet::Connect(c) = ok(&frame(0x10, &body), V5) else {
        panic!("not a CONNECT")
    };
    assert_eq!(c.username, None);
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
}

#[test]
fn v5_connack() {
    assert_eq!(
        ok(&[0x20, 0x03, 0x00, 0x00, 0x00], V5),
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::SUCCESS,
            properties: Properties::default(),
        })
    );
    let bytes = [
        0x20, 0x0A, 0x00, 0x00, 0x07, 0x24, 0x01, 0x25, 0x00, 0x22, 0x00, 0x0A,
    ];
    let Packet::ConnAck(a) = ok(&bytes, V5) else {
        panic!("not a CONNACK")
    };
    assert_eq!(a.properties.maximum_qos, Some(1));
    assert_eq!(a.properties.retain_available, Some(0));
    assert_eq!(a.properties.topic_alias_maximum, Some(10));
    let Packet::ConnAck(a) = ok(&[0x20, 0x03, 0x00, 0x87, 0x00], V5) else {
        panic!("not a CONNACK")
    };
    assert_eq!(a.reason, ReasonCode::NOT_AUTHORIZED);
}

#[test]
fn v5_publish() {
    assert_eq!(
        ok(
            &[0x30, 0x08, 0x00, 0x03, b'a', b'/', b'b', 0x00, b'h', b'i'],
            V5
        ),
        Packet::Publish(publish("a/b", b"hi"))
    );
    let bytes = [
        0x34, 0x15, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0B, // QoS 2, id 11
        0x0C, 0x01, 0x01, 0x23, 0x00, 0x03, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', b'x',
    ];
    assert_eq!(
        ok(&bytes, V5),
        Packet::Publish(Publish {
            qos: QoS::ExactlyOnce,
            packet_id: 11,
            properties: Properties {
                payload_format_indicator: Some(1),
                topic_alias: Some(3),
                user_properties: vec![("k".into(), "v".into())],
                ..Properties::default()
            },
            ..publish("a/b", b"x")
        })
    );
}

#[test]
fn v5_publish_with_topic_alias_and_empty_topic() {
    let bytes = [0x30, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x01, b'z'];
    let Packet::Publish(p) = ok(&bytes, V5) else {
        panic!("not a PUBLISH")
    };
    assert_eq!(p.topic, "");
    assert_eq!(p.properties.topic_alias, Some(1));
}

#[test]
fn v5_publish_may_carry_several_subscription_identifiers() {
    let Packet::Publish(p) = ok(&publish_with_props(&[0x0B, 0x01, 0x0B, 0x80, 0x01]), V5) else {
        panic!("not a PUBLISH")
    };
    assert_eq!(p.properties.subscription_identifiers, vec![1, 128]);
}

#[test]
fn v5_user_properties_repeat_in_order() {
    let props = cat(&[&[0x26], &s("a"), &s("1"), &[0x26], &s("a"), &s("2")]);
    let Packet::Publish(p) = ok(&publish_with_props(&props), V5) else {
        panic!("not a PUBLISH")
    };
    assert_eq!(
        p.properties.user_properties,
        vec![("a".into(), "1".into()), ("a".into(), "2".into())]
    );
}

#[test]
fn v5_acknowledgements_in_their_short_and_long_forms() {
    assert_eq!(
        ok(&[0x40, 0x02, 0x00, 0x0A], V5),
        Packet::PubAck(Ack::success(10))
    );
    let no_subscribers = Ack {
        reason: ReasonCode::NO_MATCHING_SUBSCRIBERS,
        ..Ack::success(10)
    };
    assert_eq!(
        ok(&[0x40, 0x03, 0x00, 0x0A, 0x10], V5),
        Packet::PubAck(no_subscribers.clone())
    );
    assert_eq!(
        ok(&[0x40, 0x04, 0x00, 0x0A, 0x10, 0x00], V5),
        Packet::PubAck(no_subscribers)
    );
    assert_eq!(
        ok(
            &[0x50, 0x08, 0x00, 0x0A, 0x87, 0x04, 0x1F, 0x00, 0x01, b'x'],
            V5
        ),
        Packet::PubRec(Ack {
            packet_id: 10,
            reason: ReasonCode::NOT_AUTHORIZED,
            properties: Properties {
                reason_string: Some("x".into()),
                ..Properties::default()
            },
        })
    );
    assert_eq!(
        ok(&[0x62, 0x03, 0x00, 0x01, 0x92], V5),
        Packet::PubRel(Ack {
            reason: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
            ..Ack::success(1)
        })
    );
    assert_eq!(
        ok(&[0x70, 0x02, 0x00, 0x01], V5),
        Packet::PubComp(Ack::success(1))
    );
}

#[test]
fn v5_subscribe_with_options_and_identifier() {
    let bytes = [
        0x82, 0x0B, 0x00, 0x01, 0x02, 0x0B, 0x05, 0x00, 0x03, b'a', b'/', b'b', 0x2D,
    ];
    assert_eq!(
        ok(&bytes, V5),
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![SubscribeFilter {
                filter: filter("a/b"),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            }],
            properties: Properties {
                subscription_identifiers: vec![5],
                ..Properties::default()
            },
        })
    );
}

#[test]
fn v5_shared_subscription_without_no_local() {
    let body = cat(&[&[0, 1, 0], &s("$share/g/a/#"), &[0x01]]);
    let Packet::Subscribe(sub) = ok(&frame(0x82, &body), V5) else {
        panic!("not a SUBSCRIBE")
    };
    assert_eq!(sub.filters[0].filter.shared(), Some(("g", "a/#")));
}

#[test]
fn v5_suback_unsubscribe_unsuback() {
    assert_eq!(
        ok(&[0x90, 0x06, 0x00, 0x01, 0x00, 0x00, 0x02, 0x87], V5),
        Packet::SubAck(SubAck {
            packet_id: 1,
            reasons: vec![
                ReasonCode::GRANTED_QOS_0,
                ReasonCode::GRANTED_QOS_2,
                ReasonCode::NOT_AUTHORIZED,
            ],
            properties: Properties::default(),
        })
    );
    assert_eq!(
        ok(
            &[0xA2, 0x08, 0x00, 0x02, 0x00, 0x00, 0x03, b'a', b'/', b'b'],
            V5
        ),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            filters: vec![filter("a/b")],
            properties: Properties::default(),
        })
    );
    assert_eq!(
        ok(&[0xB0, 0x05, 0x00, 0x02, 0x00, 0x00, 0x11], V5),
        Packet::UnsubAck(UnsubAck {
            packet_id: 2,
            reasons: vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
            properties: Properties::default(),
        })
    );
}

#[test]
fn v5_disconnect_forms() {
    assert_eq!(
        ok(&[0xE0, 0x00], V5),
        Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION))
    );
    assert_eq!(
        ok(&[0xE0, 0x01, 0x04], V5),
        Packet::Disconnect(Disconnect::new(ReasonCode::DISCONNECT_WITH_WILL))
    );
    assert_eq!(
        ok(&[0xE0, 0x02, 0x8E, 0x00], V5),
        Packet::Disconnect(Disconnect::new(ReasonCode::SESSION_TAKEN_OVER))
    );
    assert_eq!(
        ok(&[0xE0, 0x07, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x00], V5),
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::NORMAL_DISCONNECTION,
            properties: Properties {
                session_expiry_interval: Some(0),
                ..Properties::default()
            },
        })
    );
}

#[test]
fn v5_auth() {
    assert_eq!(
        ok(&[0xF0, 0x00], V5),
        Packet::Auth(Disconnect::new(ReasonCode::SUCCESS))
    );
    let bytes = [
        0xF0, 0x0A, 0x18, 0x08, 0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M',
    ];
    assert_eq!(
        ok(&bytes, V5),
        Packet::Auth(Disconnect {
            reason: ReasonCode::CONTINUE_AUTHENTICATION,
            properties: Properties {
                authentication_method: Some("SCRAM".into()),
                ..Properties::default()
            },
        })
    );
}

// === framing ===

#[test]
fn incomplete_frames_leave_the_buffer_untouched() {
    let bytes = [0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'];
    for cut in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..cut]);
        assert_eq!(decode(&mut buf, V311, NO_LIMIT), Ok(None), "cut at {cut}");
        assert_eq!(&buf[..], &bytes[..cut]);
    }
}

#[test]
fn frames_are_taken_one_at_a_time() {
    let mut buf = BytesMut::from(&[0xC0, 0x00, 0xD0, 0x00, 0xE0][..]);
    assert_eq!(decode(&mut buf, V5, NO_LIMIT), Ok(Some(Packet::PingReq)));
    assert_eq!(decode(&mut buf, V5, NO_LIMIT), Ok(Some(Packet::PingResp)));
    assert_eq!(decode(&mut buf, V5, NO_LIMIT), Ok(None));
    assert_eq!(&buf[..], &[0xE0]);
}

#[test]
fn publish_payload_is_a_slice_of_the_received_buffer() {
    let mut buf = BytesMut::with_capacity(64);
    buf.extend_from_slice(&[0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i']);
    let start = buf.as_ptr() as usize;
    let Some(Packet::Publish(p)) = decode(&mut buf, V311, NO_LIMIT).expect("valid") else {
        panic!("not a PUBLISH")
    };
    assert_eq!(p.payload.as_ptr() as usize, start + 7, "payload was copied");
}

#[test]
fn peek_frame_reports_the_whole_frame_length() {
    assert_eq!(peek_frame(&[], NO_LIMIT), Ok(None));
    assert_eq!(peek_frame(&[0x30], NO_LIMIT), Ok(None));
    assert_eq!(peek_frame(&[0x30, 0x07], NO_LIMIT), Ok(Some(9)));
    assert_eq!(peek_frame(&[0x30, 0x80], NO_LIMIT), Ok(None));
    assert_eq!(peek_frame(&[0x30, 0x80, 0x01], NO_LIMIT), Ok(Some(131)));
    assert_eq!(
        peek_frame(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], NO_LIMIT),
        Ok(Some(268_435_460))
    );
}

#[test]
fn oversized_frame_is_refused_from_its_header() {
    // 256 MB announced: refused after 5 bytes, before any payload.
    let e = peek_frame(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], 1 << 20).expect_err("too large");
    assert_eq!(
        e,
        DecodeError::PacketTooLarge {
            len: 268_435_460,
            max: 1 << 20
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::PACKET_TOO_LARGE);
    // And sooner when the first length bytes already prove it.
    assert!(matches!(
        peek_frame(&[0x30, 0xFF], 200),
        Err(DecodeError::PacketTooLarge { len: 258, .. })
    ));
    assert_eq!(peek_frame(&[0x30, 0xFF], 300), Ok(None));
    // The limit counts the whole frame, fixed header included.
    let bytes = [0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'];
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(matches!(
        decode(&mut buf, V311, 8),
        Err(DecodeError::PacketTooLarge { len: 9, max: 8 })
    ));
    assert!(matches!(decode(&mut buf, V311, 9), Ok(Some(_))));
}

#[test]
fn connect_protocol_level_reads_the_level_byte() {
    let v311 = [
        0x10, 0x13, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C,
    ];
    assert_eq!(connect_protocol_level(&v311), Some(4));
    let mqisdp = cat(&[&[0x10, 0x20], &s("MQIsdp"), &[3]]);
    assert_eq!(connect_protocol_level(&mqisdp), Some(3));
    assert_eq!(
        connect_protocol_level(&[0x10, 0x13, 0x00, 0x04, b'M']),
        None
    );
    assert_eq!(connect_protocol_level(&[0x30, 0x00]), None);
}

// === refusals and their reason codes ===

fn assert_refused(bytes: &[u8], version: ProtocolVersion, expected: DecodeError, code: u8) {
    let e = err(bytes, version);
    assert_eq!(e, expected, "{bytes:02X?}");
    assert_eq!(e.reason_code(), ReasonCode(code), "{e}");
}

#[test]
fn malformed_remaining_length() {
    let e = DecodeError::MalformedRemainingLength;
    // Continuation bit on the fourth byte.
    assert_refused(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], V5, e.clone(), 0x81);
    assert_eq!(
        peek_frame(&[0x30, 0x80, 0x80, 0x80, 0x80], NO_LIMIT),
        Err(e.clone())
    );
    // Not the minimum number of bytes (§1.5.5 [MQTT-1.5.5-1]).
    assert_refused(&[0xC0, 0x80, 0x00], V5, e, 0x81);
}

#[test]
fn reserved_packet_types() {
    assert_refused(
        &[0x00, 0x00],
        V5,
        DecodeError::InvalidPacketType { packet_type: 0 },
        0x81,
    );
    // AUTH does not exist in 3.1.1.
    assert_refused(
        &[0xF0, 0x00],
        V311,
        DecodeError::InvalidPacketType { packet_type: 15 },
        0x81,
    );
}

#[test]
fn fixed_header_flags() {
    for (bytes, packet_type, flags) in [
        (&[0x80, 0x08, 0, 1, 0, 3, b'a', b'/', b'b', 0][..], 8, 0),
        (&[0xA0, 0x07, 0, 1, 0, 3, b'a', b'/', b'b'][..], 10, 0),
        (&[0x60, 0x02, 0x00, 0x01][..], 6, 0),
        (&[0x63, 0x02, 0x00, 0x01][..], 6, 3),
        (&[0x42, 0x02, 0x00, 0x01][..], 4, 2),
        (&[0xC1, 0x00][..], 12, 1),
        (&[0x11, 0x00][..], 1, 1),
        (&[0xE8, 0x00][..], 14, 8),
    ] {
        assert_refused(
            bytes,
            V5,
            DecodeError::InvalidFixedHeaderFlags { packet_type, flags },
            0x81,
        );
    }
}

#[test]
fn refused_at_the_first_byte() {
    // A bad first byte is refused before the rest of the frame arrives.
    let mut buf = BytesMut::from(&[0x36][..]);
    assert!(decode(&mut buf, V5, NO_LIMIT).is_err());
}

#[test]
fn publish_qos_3_and_dup_on_qos_0() {
    assert_refused(
        &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
        V311,
        DecodeError::InvalidQoS {
            field: "PUBLISH fixed header",
        },
        0x81,
    );
    assert_refused(
        &[0x38, 0x03, 0x00, 0x01, b'a'],
        V311,
        DecodeError::DupOnQoS0,
        0x81,
    );
}

#[test]
fn truncated_fields() {
    // Topic length 10 with 3 bytes left.
    assert_refused(
        &[0x30, 0x05, 0x00, 0x0A, b'a', b'/', b'b'],
        V311,
        DecodeError::UnexpectedEnd {
            field: "topic name",
        },
        0x81,
    );
    // QoS 1 without room for the packet identifier.
    assert_refused(
        &[0x32, 0x04, 0x00, 0x02, b'a', b'b'],
        V311,
        DecodeError::UnexpectedEnd {
            field: "packet identifier",
        },
        0x81,
    );
    // Property length beyond the packet.
    assert_refused(
        &[0x30, 0x05, 0x00, 0x01, b'a', 0x05, 0x01],
        V5,
        DecodeError::UnexpectedEnd {
            field: "properties",
        },
        0x81,
    );
    // A property value beyond its block: the block says 2 bytes, the value needs 4.
    assert_refused(
        &publish_with_props(&[0x02, 0x00]),
        V5,
        DecodeError::UnexpectedEnd {
            field: "message expiry interval",
        },
        0x81,
    );
    // CONNECT cut after its flags.
    assert_refused(
        &frame(0x10, &cat(&[&s("MQTT"), &[4, 0x02]])),
        V311,
        DecodeError::UnexpectedEnd {
            field: "keep alive",
        },
        0x81,
    );
    // A 5.0 CONNACK always has a property length.
    assert_refused(
        &[0x20, 0x02, 0x00, 0x00],
        V5,
        DecodeError::UnexpectedEnd {
            field: "property length",
        },
        0x81,
    );
    // AUTH has no form with a reason code and no property length.
    assert_refused(
        &[0xF0, 0x01, 0x18],
        V5,
        DecodeError::UnexpectedEnd {
            field: "property length",
        },
        0x81,
    );
}

#[test]
fn trailing_bytes() {
    for (bytes, version, packet) in [
        (&[0xC0, 0x01, 0x00][..], V5, "PINGREQ"),
        (&[0xD0, 0x01, 0x00][..], V311, "PINGRESP"),
        (&[0x40, 0x03, 0x00, 0x0A, 0x00][..], V311, "PUBACK"),
        (&[0xE0, 0x01, 0x00][..], V311, "DISCONNECT"),
        (&[0xB0, 0x03, 0x00, 0x01, 0x00][..], V311, "UNSUBACK"),
        (&[0x20, 0x03, 0x00, 0x00, 0x00][..], V311, "CONNACK"),
        (&[0x20, 0x04, 0x00, 0x00, 0x00, 0x00][..], V5, "CONNACK"),
    ] {
        assert_refused(bytes, version, DecodeError::TrailingBytes { packet }, 0x81);
    }
    // After the last field of a CONNECT.
    let body = cat(&[&s("MQTT"), &[4, 0x02, 0, 0], &s("c"), &[0xAA]]);
    assert_refused(
        &frame(0x10, &body),
        V311,
        DecodeError::TrailingBytes { packet: "CONNECT" },
        0x81,
    );
}

#[test]
fn malformed_variable_byte_integers_in_properties() {
    // Property length 0 written in two bytes.
    assert_refused(
        &[0x30, 0x05, 0x00, 0x01, b'a', 0x80, 0x00],
        V5,
        DecodeError::MalformedVariableByteInteger {
            field: "property length",
        },
        0x81,
    );
    // Subscription identifier longer than four bytes.
    assert_refused(
        &publish_with_props(&[0x0B, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
        V5,
        DecodeError::MalformedVariableByteInteger {
            field: "subscription identifier",
        },
        0x81,
    );
}

#[test]
fn invalid_utf8_and_surrogates() {
    let field = "topic name";
    // A lone continuation byte.
    assert_refused(
        &[0x30, 0x04, 0x00, 0x02, 0xC3, 0x28],
        V311,
        DecodeError::InvalidUtf8 { field },
        0x81,
    );
    // U+D800 encoded as UTF-8 (§1.5.4 [MQTT-1.5.4-1]).
    assert_refused(
        &[0x30, 0x05, 0x00, 0x03, 0xED, 0xA0, 0x80],
        V311,
        DecodeError::InvalidUtf8 { field },
        0x81,
    );
    // Overlong encoding of '/'.
    assert_refused(
        &[0x30, 0x04, 0x00, 0x02, 0xC0, 0xAF],
        V311,
        DecodeError::InvalidUtf8 { field },
        0x81,
    );
}

#[test]
fn null_character_in_any_string() {
    assert_refused(
        &[0x30, 0x05, 0x00, 0x03, b'a', 0x00, b'b'],
        V311,
        DecodeError::NullCharacter {
            field: "topic name",
        },
        0x81,
    );
    let body = cat(&[&s("MQTT"), &[4, 0x02, 0, 0], &s("a\0")]);
    assert_refused(
        &frame(0x10, &body),
        V311,
        DecodeError::NullCharacter {
            field: "client identifier",
        },
        0x81,
    );
    let props = cat(&[&[0x26], &s("k"), &s("v\0")]);
    assert_refused(
        &publish_with_props(&props),
        V5,
        DecodeError::NullCharacter {
            field: "user property value",
        },
        0x81,
    );
    let body = cat(&[&[0, 1], &s("a/\0"), &[0]]);
    assert_refused(
        &frame(0x82, &body),
        V311,
        DecodeError::NullCharacter {
            field: "topic filter",
        },
        0x81,
    );
}

#[test]
fn reserved_bits() {
    // CONNECT flags bit 0 (§3.1.2.3 [MQTT-3.1.2-3]).
    let body = cat(&[&s("MQTT"), &[4, 0x03, 0, 0], &s("c")]);
    assert_refused(
        &frame(0x10, &body),
        V311,
        DecodeError::ReservedBits {
            field: "connect flags",
        },
        0x81,
    );
    // CONNACK acknowledge flags 7-1.
    assert_refused(
        &[0x20, 0x02, 0x02, 0x00],
        V311,
        DecodeError::ReservedBits {
            field: "connect acknowledge flags",
        },
        0x81,
    );
    // 5.0 subscription options bits 7-6 (§3.8.3.1 [MQTT-3.8.3-5]).
    let body = cat(&[&[0, 1, 0], &s("a"), &[0x40]]);
    assert_refused(
        &frame(0x82, &body),
        V5,
        DecodeError::ReservedBits {
            field: "subscription options",
        },
        0x81,
    );
    // 3.1.1 requested QoS byte bits 7-2: the 5.0 options are reserved there.
    let body = cat(&[&[0, 1], &s("a"), &[0x04]]);
    assert_refused(
        &frame(0x82, &body),
        V311,
        DecodeError::ReservedBits {
            field: "requested QoS",
        },
        0x81,
    );
}

#[test]
fn will_flags_without_will() {
    for flags in [0x0A, 0x12, 0x22] {
        let body = cat(&[&s("MQTT"), &[4, flags, 0, 0], &s("c")]);
        assert_refused(
            &frame(0x10, &body),
            V311,
            DecodeError::WillFlagsWithoutWill,
            0x81,
        );
    }
    // Will QoS 3 with the will flag.
    let body = cat(&[&s("MQTT"), &[4, 0x1C, 0, 0], &s("c"), &s("w"), &s("")]);
    assert_refused(
        &frame(0x10, &body),
        V311,
        DecodeError::InvalidQoS { field: "will QoS" },
        0x81,
    );
}

#[test]
fn v311_password_without_user_name() {
    let body = cat(&[&s("MQTT"), &[4, 0x42, 0, 0], &s("c"), &s("pw")]);
    assert_refused(
        &frame(0x10, &body),
        V311,
        DecodeError::PasswordWithoutUsername,
        0x81,
    );
}

#[test]
fn protocol_name_and_level() {
    // MQTT 3.1.
    let body = cat(&[&s("MQIsdp"), &[3, 0x02, 0, 0], &s("c")]);
    assert_refused(
        &frame(0x10, &body),
        V311,
        DecodeError::InvalidProtocolName,
        0x84,
    );
    for level in [0, 3, 6, 0xFF] {
        let body = cat(&[&s("MQTT"), &[level, 0x02, 0, 0], &s("c")]);
        assert_refused(
            &frame(0x10, &body),
            V5,
            DecodeError::UnsupportedProtocolLevel { level },
            0x84,
        );
    }
}

#[test]
fn packet_identifier_zero() {
    for (bytes, version, packet) in [
        (
            &[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00][..],
            V311,
            "PUBLISH",
        ),
        (&[0x40, 0x02, 0x00, 0x00][..], V5, "PUBACK"),
        (&[0x62, 0x02, 0x00, 0x00][..], V311, "PUBREL"),
        (
            &[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00][..],
            V311,
            "SUBSCRIBE",
        ),
        (
            &[0xA2, 0x05, 0x00, 0x00, 0x00, 0x01, b'a'][..],
            V311,
            "UNSUBSCRIBE",
        ),
        (&[0x90, 0x03, 0x00, 0x00, 0x00][..], V311, "SUBACK"),
        (&[0xB0, 0x02, 0x00, 0x00][..], V311, "UNSUBACK"),
    ] {
        assert_refused(bytes, version, DecodeError::ZeroPacketId { packet }, 0x82);
    }
}

#[test]
fn empty_subscribe_unsubscribe_and_acks() {
    for (bytes, version, packet) in [
        (&[0x82, 0x02, 0x00, 0x01][..], V311, "SUBSCRIBE"),
        (&[0x82, 0x03, 0x00, 0x01, 0x00][..], V5, "SUBSCRIBE"),
        (&[0xA2, 0x02, 0x00, 0x01][..], V311, "UNSUBSCRIBE"),
        (&[0xA2, 0x03, 0x00, 0x01, 0x00][..], V5, "UNSUBSCRIBE"),
        (&[0x90, 0x02, 0x00, 0x01][..], V311, "SUBACK"),
        (&[0xB0, 0x03, 0x00, 0x01, 0x00][..], V5, "UNSUBACK"),
    ] {
        assert_refused(bytes, version, DecodeError::NoEntries { packet }, 0x82);
    }
}

#[test]
fn subscription_options() {
    let sub = |f: &str, options: u8| frame(0x82, &cat(&[&[0, 1, 0], &s(f), &[options]]));
    assert_refused(
        &sub("a", 0x03),
        V5,
        DecodeError::InvalidSubscriptionQoS,
        0x82,
    );
    assert_refused(
        &frame(0x82, &cat(&[&[0, 1], &s("a"), &[0x03]])),
        V311,
        DecodeError::InvalidSubscriptionQoS,
        0x82,
    );
    assert_refused(
        &sub("a", 0x30),
        V5,
        DecodeError::InvalidRetainHandling,
        0x82,
    );
    assert_refused(
        &sub("$share/g/a", 0x04),
        V5,
        DecodeError::NoLocalOnSharedSubscription,
        0x82,
    );
}

#[test]
fn topic_names_with_wildcards_or_empty() {
    let field = "topic name";
    assert_refused(
        &[0x30, 0x05, 0x00, 0x03, b'a', b'/', b'+'],
        V311,
        DecodeError::TopicNameInvalid { field },
        0x90,
    );
    assert_refused(
        &[0x30, 0x04, 0x00, 0x01, b'#', 0x00],
        V5,
        DecodeError::TopicNameInvalid { field },
        0x90,
    );
    // 3.1.1 has no topic alias: an empty topic is invalid.
    assert_refused(
        &[0x30, 0x02, 0x00, 0x00],
        V311,
        DecodeError::TopicNameInvalid { field },
        0x90,
    );
    // Will topic.
    let body = cat(&[&s("MQTT"), &[4, 0x06, 0, 0], &s("c"), &s("w/#"), &s("")]);
    assert_refused(
        &frame(0x10, &body),
        V311,
        DecodeError::TopicNameInvalid {
            field: "will topic",
        },
        0x90,
    );
    // Response topic (§3.3.2.3.5 [MQTT-3.3.2-14]).
    let props = cat(&[&[0x08], &s("reply/+")]);
    assert_refused(
        &publish_with_props(&props),
        V5,
        DecodeError::TopicNameInvalid {
            field: "response topic",
        },
        0x90,
    );
}

#[test]
fn v5_empty_topic_needs_an_alias() {
    assert_refused(
        &[0x30, 0x03, 0x00, 0x00, 0x00],
        V5,
        DecodeError::EmptyTopicWithoutAlias,
        0x82,
    );
}

#[test]
fn invalid_topic_filters() {
    for (f, cause) in [
        ("a/#/b", TopicError::BadWildcard),
        ("a+", TopicError::BadWildcard),
        ("", TopicError::Empty),
        ("$share/g", TopicError::BadShare),
        ("$share//a", TopicError::BadShare),
    ] {
        let body = cat(&[&[0, 1], &s(f), &[0]]);
        assert_refused(
            &frame(0x82, &body),
            V311,
            DecodeError::TopicFilterInvalid(cause),
            0x8F,
        );
        let body = cat(&[&[0, 1, 0], &s(f)]);
        assert_refused(
            &frame(0xA2, &body),
            V5,
            DecodeError::TopicFilterInvalid(cause),
            0x8F,
        );
    }
}

#[test]
fn unknown_properties() {
    assert_refused(
        &publish_with_props(&[0x04, 0x00]),
        V5,
        DecodeError::UnknownProperty { id: 0x04 },
        0x81,
    );
    // An identifier written as a multi-byte Variable Byte Integer.
    assert_refused(
        &publish_with_props(&[0x80, 0x01, 0x00]),
        V5,
        DecodeError::UnknownProperty { id: 128 },
        0x81,
    );
}

#[test]
fn properties_not_allowed_in_the_packet() {
    assert_refused(
        &publish_with_props(&[0x11, 0, 0, 0, 1]),
        V5,
        DecodeError::PropertyNotAllowed {
            id: 0x11,
            packet: "PUBLISH",
        },
        0x81,
    );
    assert_refused(
        &connect_with_props(&[0x23, 0x00, 0x01]),
        V5,
        DecodeError::PropertyNotAllowed {
            id: 0x23,
            packet: "CONNECT",
        },
        0x81,
    );
    // Topic alias in the will.
    let body = cat(&[
        &s("MQTT"),
        &[5, 0x06, 0, 0, 0],
        &s("c"),
        &[3, 0x23, 0, 1],
        &s("w"),
        &s(""),
    ]);
    assert_refused(
        &frame(0x10, &body),
        V5,
        DecodeError::PropertyNotAllowed {
            id: 0x23,
            packet: "will properties",
        },
        0x81,
    );
    // Subscription identifier in UNSUBSCRIBE.
    let body = cat(&[&[0, 1, 2, 0x0B, 1], &s("a")]);
    assert_refused(
        &frame(0xA2, &body),
        V5,
        DecodeError::PropertyNotAllowed {
            id: 0x0B,
            packet: "UNSUBSCRIBE",
        },
        0x81,
    );
    // Reason string in DISCONNECT is fine, in CONNECT it is not.
    assert_refused(
        &connect_with_props(&cat(&[&[0x1F], &s("x")])),
        V5,
        DecodeError::PropertyNotAllowed {
            id: 0x1F,
            packet: "CONNECT",
        },
        0x81,
    );
}

#[test]
fn duplicate_properties() {
    assert_refused(
        &publish_with_props(&cat(&[&[0x03], &s("a"), &[0x03], &s("b")])),
        V5,
        DecodeError::DuplicateProperty { id: 0x03 },
        0x82,
    );
    assert_refused(
        &publish_with_props(&[0x23, 0, 1, 0x23, 0, 2]),
        V5,
        DecodeError::DuplicateProperty { id: 0x23 },
        0x82,
    );
    // Only one subscription identifier in SUBSCRIBE.
    let body = cat(&[&[0, 1, 4, 0x0B, 1, 0x0B, 2], &s("a"), &[0]]);
    assert_refused(
        &frame(0x82, &body),
        V5,
        DecodeError::DuplicateProperty { id: 0x0B },
        0x82,
    );
}

#[test]
fn invalid_property_values() {
    for (props, pid) in [
        (&[0x21, 0x00, 0x00][..], 0x21),             // receive maximum 0
        (&[0x27, 0x00, 0x00, 0x00, 0x00][..], 0x27), // maximum packet size 0
        (&[0x17, 0x02][..], 0x17),                   // request problem information 2
        (&[0x19, 0x05][..], 0x19),                   // request response information 5
    ] {
        assert_refused(
            &connect_with_props(props),
            V5,
            DecodeError::InvalidPropertyValue { id: pid },
            0x82,
        );
    }
    assert_refused(
        &publish_with_props(&[0x0B, 0x00]),
        V5,
        DecodeError::InvalidPropertyValue { id: 0x0B },
        0x82,
    );
    assert_refused(
        &publish_with_props(&[0x01, 0x02]),
        V5,
        DecodeError::InvalidPropertyValue { id: 0x01 },
        0x82,
    );
    for pid in [0x24, 0x25, 0x28, 0x29, 0x2A] {
        assert_refused(
            &[0x20, 0x05, 0x00, 0x00, 0x02, pid, 0x02],
            V5,
            DecodeError::InvalidPropertyValue { id: pid },
            0x82,
        );
    }
}

#[test]
fn topic_alias_zero() {
    assert_refused(
        &publish_with_props(&[0x23, 0x00, 0x00]),
        V5,
        DecodeError::TopicAliasZero,
        0x94,
    );
}

#[test]
fn authentication_properties() {
    assert_refused(
        &connect_with_props(&[0x16, 0x00, 0x01, 0xAA]),
        V5,
        DecodeError::AuthenticationDataWithoutMethod,
        0x82,
    );
    assert_refused(
        &[0xF0, 0x02, 0x18, 0x00],
        V5,
        DecodeError::MissingAuthenticationMethod,
        0x82,
    );
}

#[test]
fn reason_codes_outside_the_packet_table() {
    for (bytes, version, packet, code) in [
        (&[0x40, 0x03, 0x00, 0x01, 0x92][..], V5, "PUBACK", 0x92),
        (&[0x62, 0x03, 0x00, 0x01, 0x10][..], V5, "PUBREL", 0x10),
        (&[0x20, 0x03, 0x00, 0x8B, 0x00][..], V5, "CONNACK", 0x8B),
        (&[0x20, 0x02, 0x00, 0x06][..], V311, "CONNACK", 0x06),
        (&[0x90, 0x03, 0x00, 0x01, 0x87][..], V311, "SUBACK", 0x87),
        (
            &[0x90, 0x04, 0x00, 0x01, 0x00, 0x03][..],
            V5,
            "SUBACK",
            0x03,
        ),
        (
            &[0xB0, 0x04, 0x00, 0x01, 0x00, 0x04][..],
            V5,
            "UNSUBACK",
            0x04,
        ),
        (&[0xE0, 0x01, 0x84][..], V5, "DISCONNECT", 0x84),
        (&[0xF0, 0x02, 0x01, 0x00][..], V5, "AUTH", 0x01),
    ] {
        assert_refused(
            bytes,
            version,
            DecodeError::InvalidReasonCode { packet, code },
            0x82,
        );
    }
}

#[test]
fn session_present_with_a_failure() {
    assert_refused(
        &[0x20, 0x02, 0x01, 0x05],
        V311,
        DecodeError::SessionPresentWithError,
        0x82,
    );
    assert_refused(
        &[0x20, 0x03, 0x01, 0x87, 0x00],
        V5,
        DecodeError::SessionPresentWithError,
        0x82,
    );
}

#[test]
fn every_error_message_is_readable() {
    // Display is derived by thiserror; make sure the formats render without panicking.
    let e = DecodeError::InvalidFixedHeaderFlags {
        packet_type: 8,
        flags: 0,
    };
    assert_eq!(
        e.to_string(),
        "invalid fixed header flags 0b0000 for packet type 8"
    );
    assert_eq!(
        DecodeError::PropertyNotAllowed {
            id: 0x23,
            packet: "CONNECT"
        }
        .to_string(),
        "property 0x23 is not allowed in CONNECT"
    );
}

// === user property limits ===

/// A 5.0 frame from its first byte and body, with a Remaining Length of any size.
fn big_frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    let mut len = BytesMut::new();
    crate::wire::put_vbi(&mut len, body.len());
    v.extend_from_slice(&len);
    v.extend_from_slice(body);
    v
}

/// A property block (length included) of `n` user properties `k` = `v`.
fn user_properties(n: usize, k: &str, v: &str) -> Vec<u8> {
    let mut props = Vec::new();
    for _ in 0..n {
        props.push(0x26);
        props.extend(s(k));
        props.extend(s(v));
    }
    let mut block = BytesMut::new();
    crate::wire::put_vbi(&mut block, props.len());
    block.extend_from_slice(&props);
    block.to_vec()
}

fn limited(count: usize, bytes: usize) -> DecodeLimits {
    let mut l = DecodeLimits::new(NO_LIMIT);
    l.max_user_properties = count;
    l.max_user_property_bytes = bytes;
    l
}

fn decode_limited(bytes: &[u8], limits: &DecodeLimits) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    decode_with(&mut buf, V5, limits)
}

#[test]
fn user_properties_up_to_the_limits_are_accepted() {
    // 4 properties of 2 bytes each: exactly at both limits.
    let body = cat(&[&s("t"), &user_properties(4, "k", "v")]);
    let packet = decode_limited(&big_frame(0x30, &body), &limited(4, 8))
        .expect("within the limits")
        .expect("complete");
    let Packet::Publish(p) = packet else {
        panic!("not a PUBLISH")
    };
    assert_eq!(p.properties.user_properties.len(), 4);
}

#[test]
fn too_many_user_properties_are_packet_too_large() {
    let body = cat(&[&s("t"), &user_properties(5, "", "")]);
    let e = decode_limited(&big_frame(0x30, &body), &limited(4, 1000)).expect_err("refused");
    assert_eq!(e, DecodeError::TooManyUserProperties { max: 4 });
    assert_eq!(e.reason_code().0, 0x95);
}

#[test]
fn user_properties_over_the_byte_limit_are_packet_too_large() {
    let body = cat(&[&s("t"), &user_properties(2, "name", "value")]);
    let e = decode_limited(&big_frame(0x30, &body), &limited(100, 17)).expect_err("refused");
    assert_eq!(e, DecodeError::UserPropertiesTooLarge { max: 17 });
    assert_eq!(e.reason_code().0, 0x95);
}

#[test]
fn connect_and_will_user_properties_count_together() {
    // Three in the CONNECT and three in the will: six in one packet.
    let connect = |will_props: usize| {
        big_frame(
            0x10,
            &cat(&[
                &s("MQTT"),
                &[5, 0x06, 0, 60],
                &user_properties(3, "k", "v"),
                &s("c"),
                &user_properties(will_props, "k", "v"),
                &s("will/topic"),
                &s("bye"),
            ]),
        )
    };
    let limits = limited(5, 1000);
    assert!(matches!(decode_limited(&connect(2), &limits), Ok(Some(_))));
    let e = decode_limited(&connect(3), &limits).expect_err("six is over five");
    assert_eq!(e, DecodeError::TooManyUserProperties { max: 5 });
}

#[test]
fn the_default_limits_refuse_a_connect_stuffed_with_user_properties() {
    // ~780 KB of empty user properties: 156,000 of them, each 5 bytes on the wire and
    // some 50 in memory. Refused at the 33rd.
    let body = cat(&[
        &s("MQTT"),
        &[5, 0x02, 0, 60],
        &user_properties(156_000, "", ""),
        &s("c"),
    ]);
    let e =
        decode_limited(&big_frame(0x10, &body), &DecodeLimits::new(NO_LIMIT)).expect_err("refused");
    assert_eq!(
        e,
        DecodeError::TooManyUserProperties {
            max: DecodeLimits::DEFAULT_MAX_USER_PROPERTIES
        }
    );
    // Every packet type that carries properties is limited the same way.
    for (first, body) in [
        (
            0x82u8,
            cat(&[&[0, 1], &user_properties(33, "", ""), &s("t"), &[0]]),
        ),
        (0xA2, cat(&[&[0, 1], &user_properties(33, "", ""), &s("t")])),
        (0x40, cat(&[&[0, 1, 0x10], &user_properties(33, "", "")])),
        (0xE0, cat(&[&[0x00], &user_properties(33, "", "")])),
    ] {
        let e = decode_limited(&big_frame(first, &body), &DecodeLimits::new(NO_LIMIT))
            .expect_err("refused");
        assert_eq!(e.reason_code().0, 0x95, "{first:#x}: {e}");
    }
}
