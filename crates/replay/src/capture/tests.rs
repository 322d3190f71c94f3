//! Captures built packet by packet, read back into observations.

use bytes::BytesMut;
use gatehouse_mqtt::{
    ConnAck, Connect, Disconnect, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode,
    Subscribe, SubscribeFilter, SubscriptionOptions, encode,
};
use gatehouse_types::{DisconnectCause, Observation, TopicFilter};

use super::file::tests::pcap_file;
use super::frame::tests::ipv4_tcp;
use super::*;

const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;
const FIN_ACK: u8 = 0x11;
const RST: u8 = 0x04;

fn bytes(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(p, v, &mut out).expect("test packets encode");
    out.to_vec()
}

fn connect(client_id: &str, username: Option<&str>) -> Vec<u8> {
    bytes(
        &Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V311,
            clean_start: true,
            keep_alive: 60,
            client_id: client_id.into(),
            will: None,
            username: username.map(Into::into),
            password: username.map(|_| bytes::Bytes::from_static(b"secret")),
            properties: Properties::default(),
        })),
        ProtocolVersion::V311,
    )
}

fn connack(reason: ReasonCode) -> Vec<u8> {
    bytes(
        &Packet::ConnAck(ConnAck {
            session_present: false,
            reason,
            properties: Properties::default(),
        }),
        ProtocolVersion::V311,
    )
}

fn publish(topic: &str, payload: &'static [u8]) -> Vec<u8> {
    bytes(
        &Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: true,
            topic: topic.into(),
            packet_id: 0,
            payload: bytes::Bytes::from_static(payload),
            properties: Properties::default(),
        }),
        ProtocolVersion::V311,
    )
}

fn subscribe(filters: &[&str]) -> Vec<u8> {
    bytes(
        &Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: filters
                .iter()
                .map(|f| SubscribeFilter {
                    filter: TopicFilter::new(*f).expect("valid filter"),
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..Default::default()
                    },
                })
                .collect(),
            properties: Properties::default(),
        }),
        ProtocolVersion::V311,
    )
}

fn disconnect() -> Vec<u8> {
    bytes(
        &Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION)),
        ProtocolVersion::V311,
    )
}

/// One TCP connection, written frame by frame with correct sequence numbers.
struct Conn {
    client: ([u8; 4], u16),
    server: ([u8; 4], u16),
    cseq: u32,
    sseq: u32,
}

impl Conn {
    fn new(client_last: u8, port: u16) -> Self {
        Self {
            client: ([192, 0, 2, client_last], port),
            server: ([198, 51, 100, 1], 1883),
            cseq: 1000,
            sseq: 5000,
        }
    }

    fn handshake(&mut self, frames: &mut Vec<(u32, u32, Vec<u8>)>, t: u32) {
        frames.push((t, 0, self.c_raw(self.cseq, SYN, b"")));
        self.cseq += 1;
        frames.push((t, 0, self.s_raw(self.sseq, SYN_ACK, b"")));
        self.sseq += 1;
        frames.push((t, 0, self.c_raw(self.cseq, ACK, b"")));
    }

    fn c_raw(&self, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        ipv4_tcp(
            self.client.0,
            self.server.0,
            (self.client.1, self.server.1),
            seq,
            flags,
            payload,
        )
    }

    fn s_raw(&self, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        ipv4_tcp(
            self.server.0,
            self.client.0,
            (self.server.1, self.client.1),
            seq,
            flags,
            payload,
        )
    }

    fn c(&mut self, frames: &mut Vec<(u32, u32, Vec<u8>)>, t: u32, flags: u8, payload: &[u8]) {
        frames.push((t, 0, self.c_raw(self.cseq, flags, payload)));
        self.cseq += payload.len() as u32 + u32::from(flags & 1);
    }

    fn s(&mut self, frames: &mut Vec<(u32, u32, Vec<u8>)>, t: u32, flags: u8, payload: &[u8]) {
        frames.push((t, 0, self.s_raw(self.sseq, flags, payload)));
        self.sseq += payload.len() as u32 + u32::from(flags & 1);
    }
}

fn trace_of(frames: &[(u32, u32, Vec<u8>)]) -> Trace {
    let refs: Vec<(u32, u32, &[u8])> = frames.iter().map(|(s, u, d)| (*s, *u, &d[..])).collect();
    let file = pcap_file(101, &refs);
    capture_trace(&file[..], &CaptureOptions::new("test")).expect("capture reads")
}

fn kinds(trace: &Trace) -> Vec<String> {
    trace
        .events
        .iter()
        .map(|e| match &e.obs {
            Observation::Connect(c) => format!("connect {}", c.identity.device),
            Observation::AuthFailure(a) => format!("auth_failure {}", a.reason),
            Observation::Subscribe(s) => format!("subscribe {}", s.filter),
            Observation::Publish(p) => format!("publish {} {}", p.topic, p.size),
            Observation::Disconnect { cause, .. } => format!("disconnect {cause:?}"),
            _ => "other".into(),
        })
        .collect()
}

#[test]
fn an_accepted_session_yields_connect_subscribe_publish_disconnect() {
    let mut f = Vec::new();
    let mut c = Conn::new(10, 40000);
    c.handshake(&mut f, 100);
    c.c(&mut f, 100, PSH_ACK, &connect("sensor-1", None));
    c.s(&mut f, 101, PSH_ACK, &connack(ReasonCode::SUCCESS));
    let mut two = subscribe(&["a/+", "b/#"]);
    two.extend(publish("devices/sensor-1/t", b"{\"t\":20}"));
    c.c(&mut f, 102, PSH_ACK, &two);
    c.c(&mut f, 103, PSH_ACK, &disconnect());
    c.c(&mut f, 103, FIN_ACK, b"");
    let t = trace_of(&f);
    assert_eq!(
        kinds(&t),
        [
            "connect sensor-1",
            "subscribe a/+",
            "subscribe b/#",
            "publish devices/sensor-1/t 8",
            "disconnect ClientDisconnect"
        ]
    );
    let Observation::Connect(co) = &t.events[0].obs else {
        panic!("not a connect");
    };
    // The session starts when the broker accepts it.
    assert_eq!(
        co.at,
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(101)
    );
    assert_eq!(co.peer, "192.0.2.10:40000".parse().unwrap());
    assert_eq!(co.identity.tenant.as_str(), "replay");
    let Observation::Publish(p) = &t.events[3].obs else {
        panic!("not a publish");
    };
    assert_eq!(&p.payload[..], b"{\"t\":20}");
    assert!(p.retain);
    assert_eq!(t.units.len(), 1);
    assert_eq!(t.units[0].label, "test");
    assert_eq!(t.extraction.flows_with_syn, 1);
    assert_eq!(t.extraction.mqtt_packets, 4);
}

#[test]
fn a_refused_connect_is_an_auth_failure_and_what_followed_is_dropped() {
    let mut f = Vec::new();
    let mut c = Conn::new(11, 40001);
    c.handshake(&mut f, 1);
    let mut data = connect("", Some("admin"));
    data.extend(publish("x", b"y"));
    c.c(&mut f, 1, PSH_ACK, &data);
    c.s(
        &mut f,
        2,
        PSH_ACK,
        &connack(ReasonCode::BAD_USER_NAME_OR_PASSWORD),
    );
    c.s(&mut f, 2, FIN_ACK, b"");
    let t = trace_of(&f);
    assert_eq!(kinds(&t), ["auth_failure bad_user_name_or_password"]);
    let Observation::AuthFailure(a) = &t.events[0].obs else {
        panic!("not an auth failure");
    };
    assert_eq!(a.peer.ip(), "192.0.2.11".parse::<IpAddr>().unwrap());
    // No client id: the identity is the user name.
    assert_eq!(
        a.identity.as_ref().map(|i| i.device.as_str()),
        Some("admin")
    );
}

#[test]
fn client_fin_before_the_connack_still_waits_for_it() {
    let mut f = Vec::new();
    let mut c = Conn::new(12, 40002);
    c.handshake(&mut f, 1);
    let mut data = connect("c", None);
    data.extend(publish("topic", b"test"));
    c.c(&mut f, 1, PSH_ACK | 1, &data);
    c.s(&mut f, 2, PSH_ACK, &connack(ReasonCode::SUCCESS));
    c.s(&mut f, 2, FIN_ACK, b"");
    let t = trace_of(&f);
    assert_eq!(
        kinds(&t),
        ["connect c", "publish topic 4", "disconnect ConnectionLost"]
    );
}

#[test]
fn bytes_the_decoder_refuses_end_the_session_with_a_protocol_error() {
    let mut f = Vec::new();
    let mut c = Conn::new(13, 40003);
    c.handshake(&mut f, 1);
    c.c(&mut f, 1, PSH_ACK, &connect("d", None));
    c.s(&mut f, 1, PSH_ACK, &connack(ReasonCode::SUCCESS));
    // Packet type 0 is reserved; what follows is not read.
    let mut bad = vec![0x00, 0x00];
    bad.extend(publish("after", b"x"));
    c.c(&mut f, 2, PSH_ACK, &bad);
    c.c(&mut f, 3, RST, b"");
    let t = trace_of(&f);
    assert_eq!(kinds(&t), ["connect d", "disconnect ProtocolError"]);
}

#[test]
fn a_malformed_connect_is_an_auth_failure() {
    let mut f = Vec::new();
    let mut c = Conn::new(14, 40004);
    c.handshake(&mut f, 1);
    let mut bad = connect("e", None);
    bad[8] = 9; // protocol level 9
    c.c(&mut f, 1, PSH_ACK, &bad);
    let t = trace_of(&f);
    let k = kinds(&t);
    assert_eq!(k.len(), 1);
    assert!(k[0].starts_with("auth_failure malformed_connect"), "{k:?}");
}

#[test]
fn segments_are_reordered_and_retransmits_ignored() {
    let mut f = Vec::new();
    let mut c = Conn::new(15, 40005);
    c.handshake(&mut f, 1);
    c.c(&mut f, 1, PSH_ACK, &connect("f", None));
    c.s(&mut f, 1, PSH_ACK, &connack(ReasonCode::SUCCESS));
    let p = publish("split/topic", b"0123456789");
    let base = c.cseq;
    // Second half first, then the first half twice.
    f.push((2, 0, c.c_raw(base + 5, PSH_ACK, &p[5..])));
    f.push((2, 0, c.c_raw(base, PSH_ACK, &p[..5])));
    f.push((2, 0, c.c_raw(base, PSH_ACK, &p[..5])));
    c.cseq += p.len() as u32;
    c.c(&mut f, 3, FIN_ACK, b"");
    let t = trace_of(&f);
    assert_eq!(
        kinds(&t),
        [
            "connect f",
            "publish split/topic 10",
            "disconnect ConnectionLost"
        ]
    );
    assert_eq!(t.extraction.reassembly.duplicate, 5);
    assert_eq!(t.extraction.reassembly.gaps, 0);
}

#[test]
fn a_connection_caught_midway_is_read_from_its_first_packet() {
    let mut f = Vec::new();
    let mut c = Conn::new(16, 40006);
    // No handshake, no CONNECT: the capture starts inside the session.
    c.c(&mut f, 1, PSH_ACK, &publish("late", b"z"));
    let t = trace_of(&f);
    assert_eq!(kinds(&t), ["publish late 1"]);
    let Observation::Publish(p) = &t.events[0].obs else {
        panic!("not a publish");
    };
    assert_eq!(p.identity.device.as_str(), "anon-192.0.2.16");
    assert_eq!(t.extraction.flows_with_syn, 0);
}

#[test]
fn port_reuse_after_close_is_a_new_flow() {
    let mut f = Vec::new();
    for round in 0..3u32 {
        let mut c = Conn::new(17, 40007);
        c.cseq += round * 7919;
        c.handshake(&mut f, round);
        c.c(&mut f, round, PSH_ACK, &connect("g", None));
        c.s(&mut f, round, PSH_ACK, &connack(ReasonCode::NOT_AUTHORIZED));
        c.s(&mut f, round, FIN_ACK, b"");
        c.c(&mut f, round, FIN_ACK, b"");
    }
    let t = trace_of(&f);
    assert_eq!(t.extraction.flows, 3);
    assert_eq!(t.extraction.auth_failures, 3);
    assert_eq!(t.units.len(), 3);
}

#[test]
fn invalid_client_ids_become_distinct_valid_device_ids() {
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    assert_eq!(device_id("pump-7", None, ip).as_str(), "pump-7");
    assert_eq!(device_id("", Some("bob"), ip).as_str(), "bob");
    assert_eq!(device_id("", None, ip).as_str(), "anon-10.0.0.1");
    let a = device_id("a/b", None, ip);
    let b = device_id("a+b", None, ip);
    assert!(a.as_str().starts_with("a_b-"));
    assert_ne!(a, b);
    let long = device_id(&"x".repeat(300), None, ip);
    assert!(long.as_str().len() <= DeviceId::MAX_LEN);
    let unicode = device_id("capteur-é", None, ip);
    assert!(unicode.as_str().starts_with("capteur-_-"));
}

proptest::proptest! {
    #[test]
    fn arbitrary_capture_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        let _ = capture_trace(&data[..], &CaptureOptions::new("x"));
    }

    #[test]
    fn arbitrary_tcp_payloads_in_a_valid_capture_never_panic(
        payloads in proptest::collection::vec(
            (proptest::prelude::any::<bool>(), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)), 0..12),
    ) {
        let mut f = Vec::new();
        let mut c = Conn::new(20, 41000);
        c.handshake(&mut f, 0);
        c.c(&mut f, 0, PSH_ACK, &connect("p", None));
        c.s(&mut f, 0, PSH_ACK, &connack(ReasonCode::SUCCESS));
        for (from_client, p) in &payloads {
            if *from_client {
                c.c(&mut f, 1, PSH_ACK, p);
            } else {
                c.s(&mut f, 1, PSH_ACK, p);
            }
        }
        let t = trace_of(&f);
        proptest::prop_assert_eq!(t.units.len(), 1);
        proptest::prop_assert!(matches!(t.events.first().map(|e| &e.obs), Some(Observation::Connect(_))));
    }
}

#[test]
fn disconnect_causes_are_counted_by_name() {
    let mut f = Vec::new();
    let mut c = Conn::new(21, 40010);
    c.handshake(&mut f, 1);
    c.c(&mut f, 1, PSH_ACK, &connect("h", None));
    c.s(&mut f, 1, PSH_ACK, &connack(ReasonCode::SUCCESS));
    c.c(&mut f, 2, RST, b"");
    let t = trace_of(&f);
    assert_eq!(t.extraction.disconnects.get("connection_lost"), Some(&1));
    assert!(matches!(
        t.events.last().map(|e| &e.obs),
        Some(Observation::Disconnect {
            cause: DisconnectCause::ConnectionLost,
            ..
        })
    ));
}
