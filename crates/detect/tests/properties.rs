//! Properties of the engine on arbitrary input: it never panics, its features stay finite,
//! and its memory stays bounded.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use gatehouse_detect::{DetectConfig, Engine, Features};
use gatehouse_types::{
    AuthFailure, ConnectObservation, DisconnectCause, Identity, IdentitySource, Observation,
    PublishObservation, SubscribeObservation, TlsFacts,
};
use proptest::prelude::*;

fn time() -> impl Strategy<Value = SystemTime> {
    prop_oneof![
        // Mostly a realistic day, in milliseconds.
        8 => (0u64..86_400_000).prop_map(|ms| at(0.0) + Duration::from_millis(ms)),
        1 => any::<u64>().prop_map(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms >> 20)).unwrap_or(UNIX_EPOCH)),
        1 => (0u64..1_000_000).prop_map(|s| UNIX_EPOCH.checked_sub(Duration::from_secs(s)).unwrap_or(UNIX_EPOCH)),
    ]
}

fn identity() -> impl Strategy<Value = Arc<Identity>> {
    let random = ("[a-z]{1,3}", "[a-zA-Z0-9._:-]{1,12}").prop_map(|(t, d)| {
        Arc::new(Identity {
            tenant: t.parse().unwrap(),
            device: d.parse().unwrap(),
            source: IdentitySource::Password,
        })
    });
    // Mostly a few devices, so their features see many observations.
    let pool = prop::sample::select(vec!["s0", "s1", "s2", "s3"]).prop_map(ident);
    prop_oneof![3 => pool, 1 => random]
}

fn addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        (0u8..4).prop_map(|b| ip(9, b)),
    ]
}

fn topic() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        "devices/[a-z0-9]{1,3}/(telemetry|status|cmd|config/x)",
        "(\\$SYS|\\$gatehouse|#|\\+|devices)(/[a-z+#$]{0,4}){0,5}",
        "\\$share/[a-z]{0,3}/[a-z+#/]{0,10}",
    ]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        (any::<f64>(), any::<i64>(), "\\PC{0,8}").prop_map(|(a, b, s)| {
            format!(r#"{{"temp":{a},"env":{{"hum":{b},"x":[{b},{{"temp":1}}]}},"s":{s:?}}}"#)
                .into_bytes()
        }),
        "[{}\\[\\]\":,0-9a-z.eE+-]{0,80}".prop_map(String::into_bytes),
        // Readings at the ends of the number line, for the same few devices.
        prop::sample::select(vec!["1e308", "-1e308", "3.4e38", "-3.4e38", "1e-320", "0"])
            .prop_map(|v| format!(r#"{{"temp":{v},"env":{{"hum":{v}}}}}"#).into_bytes()),
    ]
}

fn cause() -> impl Strategy<Value = DisconnectCause> {
    prop_oneof![
        Just(DisconnectCause::ClientDisconnect),
        Just(DisconnectCause::ConnectionLost),
        Just(DisconnectCause::KeepAliveTimeout),
        Just(DisconnectCause::ProtocolError),
        Just(DisconnectCause::LimitExceeded),
        Just(DisconnectCause::Gate),
        Just(DisconnectCause::SessionTakenOver),
        Just(DisconnectCause::ServerShutdown),
    ]
}

fn observation() -> impl Strategy<Value = Observation> {
    prop_oneof![
        (
            time(),
            identity(),
            (topic(), any::<bool>()),
            any::<u32>(),
            payload(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(
                |(at, identity, (random_topic, own), size, payload, retain, allowed)| {
                    // Often the device's own telemetry topic, whose payload fields are read.
                    let topic = if own {
                        format!("devices/{}/telemetry", identity.device)
                    } else {
                        random_topic
                    };
                    Observation::Publish(PublishObservation {
                        at,
                        session: 1,
                        identity,
                        topic: Arc::from(topic.as_str()),
                        size,
                        payload: bytes::Bytes::from(payload),
                        qos: 0,
                        retain,
                        allowed,
                    })
                }
            ),
        (time(), identity(), topic(), any::<bool>()).prop_map(|(at, identity, filter, allowed)| {
            Observation::Subscribe(SubscribeObservation {
                at,
                session: 2,
                identity,
                filter,
                qos: 1,
                allowed,
            })
        }),
        (time(), identity(), addr(), any::<u16>()).prop_map(|(at, identity, a, keep_alive)| {
            Observation::Connect(ConnectObservation {
                at,
                session: 3,
                peer: SocketAddr::new(a, 1),
                client_id: identity.device.to_string(),
                identity,
                protocol_level: 4,
                clean_start: false,
                keep_alive,
                session_present: true,
                tls: TlsFacts::default(),
            })
        }),
        (
            time(),
            proptest::option::of(identity()),
            addr(),
            "\\PC{0,20}"
        )
            .prop_map(|(at, identity, a, reason)| {
                Observation::AuthFailure(AuthFailure {
                    at,
                    peer: SocketAddr::new(a, 2),
                    identity,
                    client_id: None,
                    reason,
                })
            }),
        (time(), identity(), cause()).prop_map(|(at, identity, cause)| Observation::Disconnect {
            at,
            session: 4,
            identity,
            cause,
        }),
    ]
}

fn small_config() -> DetectConfig {
    DetectConfig {
        max_sources: 16,
        max_devices: 16,
        ..DetectConfig::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn observe_never_panics_and_features_stay_finite(
        obs in proptest::collection::vec(observation(), 1..120),
        tick_every in 1usize..20,
    ) {
        let mut e = Engine::new(small_config());
        e.set_profile(profile());
        let mut out = Vec::new();
        for (i, o) in obs.iter().enumerate() {
            if let Observation::Publish(p) = o {
                e.set_model(&(&*p.identity).into(), Some(MODEL));
            }
            e.observe(o, &mut out);
            if i % tick_every == 0 {
                e.tick(at(i as f64), &mut out);
            }
            prop_assert!(e.device_count() <= 16);
            prop_assert!(e.source_count() <= 16);
        }
        for o in &obs {
            let id = match o {
                Observation::Publish(p) => &p.identity,
                Observation::Subscribe(s) => &s.identity,
                Observation::Connect(c) => &c.identity,
                _ => continue,
            };
            if let Some(f) = e.features(&(&**id).into()) {
                prop_assert!(f.is_finite(), "{f:?}");
            }
        }
        for f in &out {
            prop_assert!(f.confidence.is_finite() && (0.0..=1.0).contains(&f.confidence));
            prop_assert!(f.technique.is_some());
        }
    }
}

#[test]
fn memory_stays_bounded_under_an_address_and_identity_spray() {
    let mut e = Engine::new(small_config());
    let mut out = Vec::new();
    for i in 0..20_000u32 {
        let a = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        e.observe(
            &auth_failure(f64::from(i) * 0.01, a, "bad_password", None),
            &mut out,
        );
        let name = format!("spray{i}");
        e.observe(&connect(f64::from(i) * 0.01, &name, a, 60), &mut out);
        for k in 0..3 {
            e.observe(
                &publish(f64::from(i) * 0.01, &name, &format!("t/{i}/{k}"), "{}"),
                &mut out,
            );
        }
        assert!(e.source_count() <= 16);
        assert!(e.device_count() <= 16);
    }
    // A device that is still active survives the spray's evictions of idle entries only
    // approximately; what matters is the bound, and that recent devices are found.
    assert!(e.features(&dev("spray19999")).is_some());
    assert!(std::mem::size_of::<Features>() <= 512);
}
