//! Hand-written expected encodings, the 3.1.1 mappings, the 5.0 short forms, and every
//! refusal.

use bytes::{Bytes, BytesMut};
use gatehouse_types::TopicFilter;

use super::*;
use crate::ProtocolVersion::{V5, V311};
use crate::{
    ConnAck, Connect, Disconnect, Publish, RetainHandling, SubAck, Subscribe, SubscribeFilter,
    SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};

/// Encodes `packet`, checking that `encoded_len` announced exactly what was written.
fn enc(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, version, &mut out).expect("packet is valid");
    assert_eq!(encoded_len(packet, version), out.len(), "encoded_len");
    out.to_vec()
}

/// Encoding must fail and write nothing.
fn refused(packet: &Packet, version: ProtocolVersion) -> EncodeError {
    let mut out = BytesMut::from(&b"prefix"[..]);
    let e = encode(packet, version, &mut out).expect_err("packet must be refused");
    assert_eq!(&out[..], b"prefix", "bytes written by a refused packet");
    e
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

fn connect(protocol: ProtocolVersion) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: "client1".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

// === MQTT 3.1.1 ===

#[test]
fn v311_connect_matches_mosquitto_pub() {
    assert_eq!(
        enc(&Packet::Connect(Box::new(connect(V311))), V311),
        [
            0x10, 0x13, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x07,
            b'c', b'l', b'i', b'e', b'n', b't', b'1',
        ]
    );
}

#[test]
fn v311_connect_with_will_user_and_password() {
    let c = Connect {
        keep_alive: 10,
        client_id: "c".into(),
        will: Some(Will {
            topic: "w".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
        ..connect(V311)
    };
    assert_eq!(
        enc(&Packet::Connect(Box::new(c)), V311),
        [
            0x10, 0x1B, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xEE, 0x00, 0x0A, 0x00, 0x01,
            b'c', 0x00, 0x01, b'w', 0x00, 0x03, b'b', b'y', b'e', 0x00, 0x01, b'u', 0x00, 0x01,
            b'p',
        ]
    );
}

#[test]
fn connect_is_encoded_at_its_own_level() {
    let c = Packet::Connect(Box::new(connect(V5)));
    assert_eq!(enc(&c, V311), enc(&c, V5));
    assert_eq!(enc(&c, V311)[8], 5);
}

#[test]
fn v311_connack_return_codes() {
    for (reason, code) in [
        (ReasonCode::SUCCESS, 0),
        (ReasonCode::UNSUPPORTED_PROTOCOL_VERSION, 1),
        (ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, 2),
        (ReasonCode::SERVER_UNAVAILABLE, 3),
        (ReasonCode::SERVER_BUSY, 3),
        (ReasonCode::BAD_USER_NAME_OR_PASSWORD, 4),
        (ReasonCode::NOT_AUTHORIZED, 5),
        (ReasonCode::BANNED, 5),
        (ReasonCode::UNSPECIFIED_ERROR, 5),
        (ReasonCode::MALFORMED_PACKET, 5),
    ] {
        let a = Packet::ConnAck(ConnAck {
            session_present: false,
            reason,
            properties: Properties {
                reason_string: Some("dropped in 3.1.1".into()),
                ..Properties::default()
            },
        });
        assert_eq!(enc(&a, V311), [0x20, 0x02, 0x00, code], "{reason}");
    }
}

#[test]
fn v311_publish_drops_properties() {
    let p = Publish {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: true,
        packet_id: 10,
        properties: Properties {
            content_type: Some("text/plain".into()),
            ..Properties::default()
        },
        ..publish("a/b", b"hi")
    };
    assert_eq!(
        enc(&Packet::Publish(p), V311),
        [
            0x3B, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i'
        ]
    );
    assert_eq!(
        enc(&Packet::Publish(publish("a/b", b"hi")), V311),
        [0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i']
    );
}

#[test]
fn v311_acknowledgements_drop_reason_codes() {
    let failed = Ack {
        reason: ReasonCode::NOT_AUTHORIZED,
        ..Ack::success(10)
    };
    assert_eq!(enc(&Packet::PubAck(failed), V311), [0x40, 0x02, 0x00, 0x0A]);
    assert_eq!(
        enc(&Packet::PubRec(Ack::success(1)), V311),
        [0x50, 0x02, 0x00, 0x01]
    );
    assert_eq!(
        enc(&Packet::PubRel(Ack::success(1)), V311),
        [0x62, 0x02, 0x00, 0x01]
    );
    assert_eq!(
        enc(&Packet::PubComp(Ack::success(1)), V311),
        [0x70, 0x02, 0x00, 0x01]
    );
}

#[test]
fn v311_subscribe_keeps_only_the_qos() {
    let s = Subscribe {
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
            subscription_identifiers: vec![7],
            ..Properties::default()
        },
    };
    assert_eq!(
        enc(&Packet::Subscribe(s), V311),
        [0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'b', 0x01]
    );
}

#[test]
fn v311_suback_failures_become_0x80() {
    let s = SubAck {
        packet_id: 1,
        reasons: vec![
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::GRANTED_QOS_2,
            ReasonCode::NOT_AUTHORIZED,
            ReasonCode::TOPIC_FILTER_INVALID,
        ],
        properties: Properties::default(),
    };
    assert_eq!(
        enc(&Packet::SubAck(s), V311),
        [0x90, 0x06, 0x00, 0x01, 0x00, 0x02, 0x80, 0x80]
    );
}

#[test]
fn v311_unsubscribe_unsuback_ping_disconnect() {
    let u = Unsubscribe {
        packet_id: 2,
        filters: vec![filter("a/b")],
        properties: Properties::default(),
    };
    assert_eq!(
        enc(&Packet::Unsubscribe(u), V311),
        [0xA2, 0x07, 0x00, 0x02, 0x00, 0x03, b'a', b'/', b'b']
    );
    let ua = UnsubAck {
        packet_id: 2,
        reasons: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
        properties: Properties::default(),
    };
    assert_eq!(enc(&Packet::UnsubAck(ua), V311), [0xB0, 0x02, 0x00, 0x02]);
    assert_eq!(enc(&Packet::PingReq, V311), [0xC0, 0x00]);
    assert_eq!(enc(&Packet::PingResp, V311), [0xD0, 0x00]);
    let d = Disconnect::new(ReasonCode::SERVER_SHUTTING_DOWN);
    assert_eq!(enc(&Packet::Disconnect(d), V311), [0xE0, 0x00]);
}

// === MQTT 5.0 ===

#[test]
fn v5_connect_with_properties() {
    let c = Connect {
        client_id: "dev".into(),
        properties: Properties {
            session_expiry_interval: Some(120),
            receive_maximum: Some(20),
            ..Properties::default()
        },
        ..connect(V5)
    };
    assert_eq!(
        enc(&Packet::Connect(Box::new(c)), V5),
        [
            0x10, 0x18, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x08, 0x11,
            0x00, 0x00, 0x00, 0x78, 0x21, 0x00, 0x14, 0x00, 0x03, b'd', b'e', b'v',
        ]
    );
}

#[test]
fn v5_connect_with_will_properties() {
    let c = Connect {
        keep_alive: 0,
        client_id: String::new(),
        will: Some(Will {
            topic: "t".into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties {
                will_delay_interval: Some(5),
                ..Properties::default()
            },
        }),
        ..connect(V5)
    };
    assert_eq!(
        enc(&Packet::Connect(Box::new(c)), V5),
        [
            0x10, 0x18, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x06, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x05, 0x18, 0x00, 0x00, 0x00, 0x05, 0x00, 0x01, b't', 0x00, 0x00,
        ]
    );
}

#[test]
fn v5_connack() {
    let a = ConnAck {
        session_present: false,
        reason: ReasonCode::SUCCESS,
        properties: Properties {
            maximum_qos: Some(1),
            retain_available: Some(0),
            topic_alias_maximum: Some(10),
            ..Properties::default()
        },
    };
    // Properties are written in identifier order: 0x22, 0x24, 0x25.
    assert_eq!(
        enc(&Packet::ConnAck(a), V5),
        [
            0x20, 0x0A, 0x00, 0x00, 0x07, 0x22, 0x00, 0x0A, 0x24, 0x01, 0x25, 0x00
        ]
    );
    let refused = ConnAck {
        session_present: false,
        reason: ReasonCode::NOT_AUTHORIZED,
        properties: Properties::default(),
    };
    assert_eq!(
        enc(&Packet::ConnAck(refused), V5),
        [0x20, 0x03, 0x00, 0x87, 0x00]
    );
}

#[test]
fn v5_publish() {
    assert_eq!(
        enc(&Packet::Publish(publish("a/b", b"hi")), V5),
        [0x30, 0x08, 0x00, 0x03, b'a', b'/', b'b', 0x00, b'h', b'i']
    );
    let p = Publish {
        qos: QoS::ExactlyOnce,
        packet_id: 11,
        properties: Properties {
            payload_format_indicator: Some(1),
            topic_alias: Some(3),
            user_properties: vec![("k".into(), "v".into())],
            ..Properties::default()
        },
        ..publish("a/b", b"x")
    };
    assert_eq!(
        enc(&Packet::Publish(p), V5),
        [
            0x34, 0x15, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0B, 0x0C, 0x01, 0x01, 0x23, 0x00,
            0x03, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', b'x',
        ]
    );
    let aliased = Publish {
        properties: Properties {
            topic_alias: Some(1),
            ..Properties::default()
        },
        ..publish("", b"z")
    };
    assert_eq!(
        enc(&Packet::Publish(aliased), V5),
        [0x30, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x01, b'z']
    );
}

#[test]
fn v5_acknowledgements_carry_a_property_length_with_a_reason_code() {
    assert_eq!(
        enc(&Packet::PubAck(Ack::success(10)), V5),
        [0x40, 0x02, 0x00, 0x0A]
    );
    let no_subscribers = Ack {
        reason: ReasonCode::NO_MATCHING_SUBSCRIBERS,
        ..Ack::success(10)
    };
    assert_eq!(
        enc(&Packet::PubAck(no_subscribers), V5),
        [0x40, 0x04, 0x00, 0x0A, 0x10, 0x00]
    );
    let with_reason_string = Ack {
        packet_id: 10,
        reason: ReasonCode::NOT_AUTHORIZED,
        properties: Properties {
            reason_string: Some("x".into()),
            ..Properties::default()
        },
    };
    assert_eq!(
        enc(&Packet::PubRec(with_reason_string), V5),
        [0x50, 0x08, 0x00, 0x0A, 0x87, 0x04, 0x1F, 0x00, 0x01, b'x']
    );
    // Success with properties needs the reason code byte too.
    let success_with_props = Ack {
        properties: Properties {
            user_properties: vec![("a".into(), "b".into())],
            ..Properties::default()
        },
        ..Ack::success(1)
    };
    assert_eq!(
        enc(&Packet::PubComp(success_with_props), V5),
        [
            0x70, 0x0B, 0x00, 0x01, 0x00, 0x07, 0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'b'
        ]
    );
    let not_found = Ack {
        reason: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
        ..Ack::success(1)
    };
    assert_eq!(
        enc(&Packet::PubRel(not_found), V5),
        [0x62, 0x04, 0x00, 0x01, 0x92, 0x00]
    );
}

#[test]
fn v5_subscribe_suback_unsubscribe_unsuback() {
    let s = Subscribe {
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
    };
    assert_eq!(
        enc(&Packet::Subscribe(s), V5),
        [
            0x82, 0x0B, 0x00, 0x01, 0x02, 0x0B, 0x05, 0x00, 0x03, b'a', b'/', b'b', 0x2D
        ]
    );
    let sa = SubAck {
        packet_id: 1,
        reasons: vec![
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::GRANTED_QOS_2,
            ReasonCode::NOT_AUTHORIZED,
        ],
        properties: Properties::default(),
    };
    assert_eq!(
        enc(&Packet::SubAck(sa), V5),
        [0x90, 0x06, 0x00, 0x01, 0x00, 0x00, 0x02, 0x87]
    );
    let u = Unsubscribe {
        packet_id: 2,
        filters: vec![filter("a/b")],
        properties: Properties::default(),
    };
    assert_eq!(
        enc(&Packet::Unsubscribe(u), V5),
        [0xA2, 0x08, 0x00, 0x02, 0x00, 0x00, 0x03, b'a', b'/', b'b']
    );
    let ua = UnsubAck {
        packet_id: 2,
        reasons: vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
        properties: Properties::default(),
    };
    assert_eq!(
        enc(&Packet::UnsubAck(ua), V5),
        [0xB0, 0x05, 0x00, 0x02, 0x00, 0x00, 0x11]
    );
}

#[test]
fn v5_disconnect_and_auth_forms() {
    let d = |reason| Packet::Disconnect(Disconnect::new(reason));
    assert_eq!(enc(&d(ReasonCode::NORMAL_DISCONNECTION), V5), [0xE0, 0x00]);
    assert_eq!(
        enc(&d(ReasonCode::DISCONNECT_WITH_WILL), V5),
        [0xE0, 0x02, 0x04, 0x00]
    );
    let with_expiry = Disconnect {
        reason: ReasonCode::NORMAL_DISCONNECTION,
        properties: Properties {
            session_expiry_interval: Some(0),
            ..Properties::default()
        },
    };
    assert_eq!(
        enc(&Packet::Disconnect(with_expiry), V5),
        [0xE0, 0x07, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x00]
    );
    assert_eq!(
        enc(&Packet::Auth(Disconnect::new(ReasonCode::SUCCESS)), V5),
        [0xF0, 0x00]
    );
    let scram = Disconnect {
        reason: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: Properties {
            authentication_method: Some("SCRAM".into()),
            ..Properties::default()
        },
    };
    assert_eq!(
        enc(&Packet::Auth(scram), V5),
        [
            0xF0, 0x0A, 0x18, 0x08, 0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M'
        ]
    );
}

#[test]
fn large_remaining_lengths_use_more_bytes() {
    static PAYLOAD: [u8; 200] = [7; 200];
    let out = enc(&Packet::Publish(publish("t", &PAYLOAD)), V311);
    assert_eq!(&out[..3], &[0x30, 0xCB, 0x01]); // 3 + 200 = 203
    assert_eq!(out.len(), 3 + 203);
}

#[test]
fn encode_appends() {
    let mut out = BytesMut::from(&b"xy"[..]);
    encode(&Packet::PingReq, V5, &mut out).expect("valid");
    encode(&Packet::PingResp, V5, &mut out).expect("valid");
    assert_eq!(&out[..], b"xy\xC0\x00\xD0\x00");
}

// === refusals ===

#[test]
fn packet_over_the_remaining_length_limit() {
    // A zeroed allocation: its pages are never touched, since nothing is written.
    let payload = Bytes::from(vec![0u8; 268_435_455]);
    let p = Packet::Publish(Publish {
        payload,
        ..publish("t", b"")
    });
    assert_eq!(
        refused(&p, V311),
        EncodeError::PacketTooLarge {
            remaining_length: 268_435_458
        }
    );
    assert_eq!(encoded_len(&p, V311), 1 + 4 + 268_435_458);
}

#[test]
fn strings_over_65535_bytes() {
    let long = "a".repeat(65_536);
    assert_eq!(
        refused(&Packet::Publish(publish(&long, b"")), V311),
        EncodeError::StringTooLong {
            field: "topic name",
            len: 65_536
        }
    );
    let c = Connect {
        password: Some(Bytes::from(vec![0; 65_536])),
        username: Some("u".into()),
        ..connect(V311)
    };
    assert_eq!(
        refused(&Packet::Connect(Box::new(c)), V311),
        EncodeError::StringTooLong {
            field: "password",
            len: 65_536
        }
    );
    // 65,535 is still fine.
    let max = "a".repeat(65_535);
    assert!(
        encode(
            &Packet::Publish(publish(&max, b"")),
            V311,
            &mut BytesMut::new()
        )
        .is_ok()
    );
}

#[test]
fn packet_identifier_zero() {
    let p = Publish {
        qos: QoS::AtLeastOnce,
        ..publish("t", b"")
    };
    assert_eq!(
        refused(&Packet::Publish(p), V5),
        EncodeError::ZeroPacketId { packet: "PUBLISH" }
    );
    assert_eq!(
        refused(&Packet::PubAck(Ack::success(0)), V311),
        EncodeError::ZeroPacketId { packet: "PUBACK" }
    );
    let s = Subscribe {
        packet_id: 0,
        filters: vec![SubscribeFilter {
            filter: filter("a"),
            options: SubscriptionOptions::default(),
        }],
        properties: Properties::default(),
    };
    assert_eq!(
        refused(&Packet::Subscribe(s), V311),
        EncodeError::ZeroPacketId {
            packet: "SUBSCRIBE"
        }
    );
}

#[test]
fn qos_0_publish_has_no_packet_identifier_and_no_dup() {
    let with_id = Publish {
        packet_id: 3,
        ..publish("t", b"")
    };
    assert!(matches!(
        refused(&Packet::Publish(with_id), V5),
        EncodeError::InvalidField {
            field: "packet identifier",
            ..
        }
    ));
    let dup = Publish {
        dup: true,
        ..publish("t", b"")
    };
    assert!(matches!(
        refused(&Packet::Publish(dup), V5),
        EncodeError::InvalidField {
            field: "DUP flag",
            ..
        }
    ));
}

#[test]
fn topic_names_must_be_valid() {
    for topic in ["a/+", "#", ""] {
        assert!(
            matches!(
                refused(&Packet::Publish(publish(topic, b"")), V5),
                EncodeError::InvalidField {
                    field: "topic name",
                    ..
                }
            ),
            "{topic:?}"
        );
    }
    // An empty topic with an alias is 5.0 only.
    let aliased = Publish {
        properties: Properties {
            topic_alias: Some(1),
            ..Properties::default()
        },
        ..publish("", b"")
    };
    assert!(encode(&Packet::Publish(aliased.clone()), V5, &mut BytesMut::new()).is_ok());
    assert!(matches!(
        refused(&Packet::Publish(aliased), V311),
        EncodeError::InvalidField {
            field: "topic name",
            ..
        }
    ));
    assert!(matches!(
        refused(&Packet::Publish(publish("a\0", b"")), V5),
        EncodeError::InvalidField {
            field: "topic name",
            problem: "contains U+0000"
        }
    ));
}

#[test]
fn properties_outside_the_table() {
    let p = Publish {
        properties: Properties {
            session_expiry_interval: Some(1),
            ..Properties::default()
        },
        ..publish("t", b"")
    };
    assert_eq!(
        refused(&Packet::Publish(p.clone()), V5),
        EncodeError::PropertyNotAllowed {
            id: 0x11,
            packet: "PUBLISH"
        }
    );
    // 3.1.1 drops properties, so nothing is refused there.
    assert!(encode(&Packet::Publish(p), V311, &mut BytesMut::new()).is_ok());
    let will = Will {
        topic: "w".into(),
        payload: Bytes::new(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties {
            topic_alias: Some(1),
            ..Properties::default()
        },
    };
    let c = Connect {
        will: Some(will),
        ..connect(V5)
    };
    assert_eq!(
        refused(&Packet::Connect(Box::new(c)), V5),
        EncodeError::PropertyNotAllowed {
            id: 0x23,
            packet: "will properties"
        }
    );
}

#[test]
fn invalid_property_values() {
    let with = |properties| {
        Packet::Connect(Box::new(Connect {
            properties,
            ..connect(V5)
        }))
    };
    for (props, pid) in [
        (
            Properties {
                receive_maximum: Some(0),
                ..Properties::default()
            },
            0x21,
        ),
        (
            Properties {
                maximum_packet_size: Some(0),
                ..Properties::default()
            },
            0x27,
        ),
        (
            Properties {
                request_problem_information: Some(2),
                ..Properties::default()
            },
            0x17,
        ),
    ] {
        assert_eq!(
            refused(&with(props), V5),
            EncodeError::InvalidPropertyValue { id: pid }
        );
    }
    for sid in [0, 268_435_456] {
        let p = Publish {
            properties: Properties {
                subscription_identifiers: vec![sid],
                ..Properties::default()
            },
            ..publish("t", b"")
        };
        assert_eq!(
            refused(&Packet::Publish(p), V5),
            EncodeError::InvalidPropertyValue { id: 0x0B }
        );
    }
    let alias_zero = Publish {
        properties: Properties {
            topic_alias: Some(0),
            ..Properties::default()
        },
        ..publish("t", b"")
    };
    assert_eq!(
        refused(&Packet::Publish(alias_zero), V5),
        EncodeError::InvalidPropertyValue { id: 0x23 }
    );
}

#[test]
fn reason_codes_outside_the_packet_table() {
    let ack = Ack {
        reason: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
        ..Ack::success(1)
    };
    assert_eq!(
        refused(&Packet::PubAck(ack), V5),
        EncodeError::InvalidReasonCode {
            packet: "PUBACK",
            code: 0x92
        }
    );
    let connack = ConnAck {
        session_present: false,
        reason: ReasonCode::GRANTED_QOS_1,
        properties: Properties::default(),
    };
    assert_eq!(
        refused(&Packet::ConnAck(connack), V311),
        EncodeError::InvalidReasonCode {
            packet: "CONNACK",
            code: 0x01
        }
    );
    let suback = SubAck {
        packet_id: 1,
        reasons: vec![ReasonCode::NO_MATCHING_SUBSCRIBERS],
        properties: Properties::default(),
    };
    assert_eq!(
        refused(&Packet::SubAck(suback), V311),
        EncodeError::InvalidReasonCode {
            packet: "SUBACK",
            code: 0x10
        }
    );
}

#[test]
fn auth_does_not_exist_in_v311() {
    assert_eq!(
        refused(&Packet::Auth(Disconnect::new(ReasonCode::SUCCESS)), V311),
        EncodeError::NotInVersion { packet: "AUTH" }
    );
    assert!(matches!(
        refused(
            &Packet::Auth(Disconnect::new(ReasonCode::CONTINUE_AUTHENTICATION)),
            V5
        ),
        EncodeError::InvalidField {
            field: "authentication method",
            ..
        }
    ));
}

#[test]
fn other_invalid_fields() {
    let empty_sub = Subscribe {
        packet_id: 1,
        filters: Vec::new(),
        properties: Properties::default(),
    };
    assert!(matches!(
        refused(&Packet::Subscribe(empty_sub), V5),
        EncodeError::InvalidField {
            field: "topic filters",
            ..
        }
    ));
    let shared_no_local = Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: filter("$share/g/a"),
            options: SubscriptionOptions {
                no_local: true,
                ..SubscriptionOptions::default()
            },
        }],
        properties: Properties::default(),
    };
    assert!(matches!(
        refused(&Packet::Subscribe(shared_no_local), V5),
        EncodeError::InvalidField {
            field: "no local",
            ..
        }
    ));
    let password_only = Connect {
        password: Some(Bytes::from_static(b"pw")),
        ..connect(V311)
    };
    assert!(matches!(
        refused(&Packet::Connect(Box::new(password_only)), V311),
        EncodeError::InvalidField {
            field: "password",
            ..
        }
    ));
    let present_but_refused = ConnAck {
        session_present: true,
        reason: ReasonCode::NOT_AUTHORIZED,
        properties: Properties::default(),
    };
    assert!(matches!(
        refused(&Packet::ConnAck(present_but_refused), V5),
        EncodeError::InvalidField {
            field: "session present",
            ..
        }
    ));
    let empty_unsuback = UnsubAck {
        packet_id: 1,
        reasons: Vec::new(),
        properties: Properties::default(),
    };
    assert!(matches!(
        refused(&Packet::UnsubAck(empty_unsuback.clone()), V5),
        EncodeError::InvalidField {
            field: "reason codes",
            ..
        }
    ));
    // 3.1.1 UNSUBACK has no reason codes at all.
    assert!(
        encode(
            &Packet::UnsubAck(empty_unsuback),
            V311,
            &mut BytesMut::new()
        )
        .is_ok()
    );
}
