//! The tap: what the broker reports to the detection stage, and that a slow consumer of
//! it never slows the data plane.

mod support;

use std::sync::Arc;

use anyhow::{Result, ensure};
use gatehouse_broker::{BrokerConfig, Limits, StaticPolicy, TopicPattern};
use gatehouse_types::{DisconnectCause, Observation};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5 as p5;
use support::clients::{V4, V5, v4_options, v5_options};
use support::{TestBroker, observe};

fn lab_policy() -> Result<Arc<StaticPolicy>> {
    let mut p = StaticPolicy::default_policy();
    p.publish.push(TopicPattern::new("lab/#")?);
    p.subscribe.push(TopicPattern::new("lab/#")?);
    Ok(Arc::new(p))
}

#[tokio::test]
async fn tap_reports_connect_with_tls_facts() -> Result<()> {
    let tb = TestBroker::start(BrokerConfig::default(), lab_policy()?).await?;
    let mut tap = tb.broker.tap().subscribe(1000);
    let cert = tb.issue("sensor-1")?;
    let _c = V5::connect_as(tb.addr, tb.tls_for(&cert)?, "sensor-1").await?;
    let c = observe(&mut tap, "connect", |o| match o {
        Observation::Connect(c) => Some(c.clone()),
        _ => None,
    })
    .await?;
    ensure!(c.identity.device.as_str() == "sensor-1", "{c:?}");
    ensure!(c.identity.tenant.as_str() == "default", "{c:?}");
    ensure!(c.client_id == "sensor-1", "{c:?}");
    ensure!(c.protocol_level == 5, "{c:?}");
    ensure!(c.peer.ip().is_loopback(), "{c:?}");
    ensure!(
        c.tls.version.starts_with("TLSv1_"),
        "TLS version {:?}",
        c.tls.version
    );
    ensure!(!c.tls.cipher.is_empty(), "{c:?}");
    ensure!(
        c.tls.cert_serial == cert.serial_hex,
        "serial {:?}, issued {:?}",
        c.tls.cert_serial,
        cert.serial_hex
    );
    ensure!(
        c.tls.cert_not_after == cert.not_after.unix_timestamp(),
        "{c:?}"
    );

    // A 3.1.1 client is reported with its protocol level.
    let _c4 = V4::connect_as(tb.addr, tb.client_tls("sensor-2")?, "sensor-2").await?;
    let c4 = observe(&mut tap, "connect", |o| match o {
        Observation::Connect(c) if c.client_id == "sensor-2" => Some(c.clone()),
        _ => None,
    })
    .await?;
    ensure!(c4.protocol_level == 4, "{c4:?}");
    Ok(())
}

#[tokio::test]
async fn tap_reports_authentication_failures_with_their_reason() -> Result<()> {
    let tb = TestBroker::start(BrokerConfig::default(), lab_policy()?).await?;
    let mut tap = tb.broker.tap().subscribe(1000);

    // No client certificate: refused in the handshake.
    let mut anon = V5::spawn(v5_options(tb.addr, tb.anonymous_tls()?, "anon"));
    anon.refused().await?;
    let f = observe(&mut tap, "auth failure", |o| match o {
        Observation::AuthFailure(f) => Some(f.clone()),
        _ => None,
    })
    .await?;
    ensure!(f.reason == "no_client_certificate", "{f:?}");
    ensure!(f.identity.is_none(), "{f:?}");

    // A client id that is not the certificate's device id.
    let mut wrong = V4::spawn(v4_options(tb.addr, tb.client_tls("meter-7")?, "meter-8"));
    wrong.refused().await?;
    let f = observe(&mut tap, "auth failure", |o| match o {
        Observation::AuthFailure(f) => Some(f.clone()),
        _ => None,
    })
    .await?;
    ensure!(f.reason == "client_id_mismatch", "{f:?}");
    ensure!(f.client_id.as_deref() == Some("meter-8"), "{f:?}");
    ensure!(
        f.identity
            .as_ref()
            .is_some_and(|i| i.device.as_str() == "meter-7"),
        "{f:?}"
    );
    Ok(())
}

#[tokio::test]
async fn tap_reports_subscribe_publish_and_disconnect() -> Result<()> {
    let tb = TestBroker::start(BrokerConfig::default(), lab_policy()?).await?;
    let mut tap = tb.broker.tap().subscribe(1000);
    let mut c = V5::connect_as(tb.addr, tb.client_tls("dev")?, "dev").await?;

    c.client.subscribe("lab/#", Q5::AtLeastOnce).await?;
    c.suback().await?;
    c.client.subscribe("#", Q5::AtMostOnce).await?;
    ensure!(c.suback().await? == [p5::SubscribeReasonCode::NotAuthorized]);
    let allowed = observe(&mut tap, "subscribe", |o| match o {
        Observation::Subscribe(s) => Some(s.clone()),
        _ => None,
    })
    .await?;
    ensure!(
        allowed.filter == "lab/#" && allowed.allowed && allowed.qos == 1,
        "{allowed:?}"
    );
    let denied = observe(&mut tap, "subscribe", |o| match o {
        Observation::Subscribe(s) => Some(s.clone()),
        _ => None,
    })
    .await?;
    ensure!(denied.filter == "#" && !denied.allowed, "{denied:?}");

    c.client
        .publish("lab/t", Q5::AtLeastOnce, true, vec![7u8; 42])
        .await?;
    c.puback().await?;
    c.client
        .publish("devices/other/t", Q5::AtMostOnce, false, "x")
        .await?;
    let p = observe(&mut tap, "publish", |o| match o {
        Observation::Publish(p) => Some(p.clone()),
        _ => None,
    })
    .await?;
    ensure!(&*p.topic == "lab/t", "{p:?}");
    ensure!(p.size == 42 && p.qos == 1 && p.retain && p.allowed, "{p:?}");
    let p = observe(&mut tap, "publish", |o| match o {
        Observation::Publish(p) => Some(p.clone()),
        _ => None,
    })
    .await?;
    ensure!(&*p.topic == "devices/other/t", "{p:?}");
    ensure!(
        p.size == 1 && p.qos == 0 && !p.retain && !p.allowed,
        "{p:?}"
    );

    c.disconnect().await?;
    let cause = observe(&mut tap, "disconnect", |o| match o {
        Observation::Disconnect { cause, .. } => Some(*cause),
        _ => None,
    })
    .await?;
    ensure!(cause == DisconnectCause::ClientDisconnect, "{cause:?}");

    // Dropping the connection without DISCONNECT.
    let c = V4::connect_as(tb.addr, tb.client_tls("dev")?, "dev").await?;
    drop(c);
    let cause = observe(&mut tap, "disconnect", |o| match o {
        Observation::Disconnect { cause, .. } => Some(*cause),
        _ => None,
    })
    .await?;
    ensure!(cause == DisconnectCause::ConnectionLost, "{cause:?}");
    Ok(())
}

#[tokio::test]
async fn slow_tap_consumer_never_slows_the_broker() -> Result<()> {
    const N: usize = 3000;
    let config = BrokerConfig {
        // Room for every message: this test is about the tap, not queue limits.
        limits: Limits {
            max_queued_messages: 2 * N,
            ..Limits::default()
        },
        ..BrokerConfig::default()
    };
    let tb = TestBroker::start(config, lab_policy()?).await?;
    // A subscriber that holds one observation and never reads.
    let _stuck = tb.broker.tap().subscribe(1);

    let mut sub = V5::connect_as(tb.addr, tb.client_tls("sink")?, "sink").await?;
    sub.subscribe("lab/firehose", Q5::AtLeastOnce).await?;
    let publisher = V5::connect_as(tb.addr, tb.client_tls("source")?, "source").await?;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            publisher
                .client
                .publish("lab/firehose", Q5::AtLeastOnce, false, i.to_string())
                .await?;
        }
        anyhow::Ok(publisher)
    });
    for i in 0..N {
        let p = sub.publish().await?;
        ensure!(
            p.payload.as_ref() == i.to_string().as_bytes(),
            "message {i} missing: got {p:?}"
        );
    }
    let _publisher = sender.await??;
    let dropped = tb.broker.tap().dropped();
    ensure!(
        dropped as usize >= N,
        "only {dropped} observations dropped for a stuck tap subscriber"
    );
    Ok(())
}
