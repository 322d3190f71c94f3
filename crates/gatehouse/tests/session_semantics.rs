//! Session and delivery rules of MQTT that a broker can quietly get wrong: exactly-once
//! for QoS 2 retransmissions, redelivery of unacknowledged messages on resumption,
//! message and session expiry, keep-alive, unsubscribe, retained deletion, `$` topics,
//! topic alias limits and the subscription quota.

mod support;

use std::time::Duration;

use anyhow::{Result, ensure};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5 as p5;
use support::clients::{V4, V5, v5_options};
use support::{Gatehouse, LAB_POLICY, Options, WAIT, raw};

async fn lab() -> Result<Gatehouse> {
    Gatehouse::start(Options::extra(LAB_POLICY)).await
}

#[tokio::test]
async fn qos2_retransmission_is_delivered_exactly_once() -> Result<()> {
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let mut sub = V5::connect_as(addr, gh.client_tls("sub")?, "sub").await?;
    sub.subscribe("lab/once", Q5::ExactlyOnce).await?;

    let mut s = raw::tls(addr, gh.client_tls("pub")?).await?;
    raw::handshake_v5(&mut s, "pub").await?;
    let mut body = raw::string("lab/once");
    body.extend(7u16.to_be_bytes());
    body.push(0); // properties
    body.extend_from_slice(b"exactly-once");
    // PUBLISH QoS 2, then the same packet again with DUP set (as after a lost PUBREC).
    for first in [0x34, 0x3c] {
        raw::send(&mut s, &raw::packet(first, &body)).await?;
        let rec = raw::read_frame(&mut s).await?;
        ensure!(
            rec.kind() == 5 && rec.body.starts_with(&[0, 7]),
            "expected PUBREC 7, got {rec:?}"
        );
    }
    raw::send(&mut s, &raw::packet(0x62, &[0, 7])).await?;
    let comp = raw::read_frame(&mut s).await?;
    ensure!(
        comp.kind() == 7 && comp.body.starts_with(&[0, 7]),
        "expected PUBCOMP 7, got {comp:?}"
    );
    raw::send(&mut s, &raw::publish_v5("lab/once", b"marker")).await?;
    let before = sub.publishes_until(b"marker").await?;
    ensure!(
        before.len() == 1 && before[0].payload.as_ref() == b"exactly-once",
        "a retransmitted QoS 2 message was delivered {} times",
        before.len()
    );
    Ok(())
}

#[tokio::test]
async fn unacknowledged_message_is_redelivered_with_dup_on_resumption() -> Result<()> {
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let tls = gh.client_tls("forgetful")?;
    let options = |clean, manual| {
        let mut o = v5_options(addr, tls.clone(), "forgetful");
        o.set_clean_start(clean);
        o.set_session_expiry_interval(Some(300));
        o.set_manual_acks(manual);
        o
    };
    let (mut c, _) = V5::connect(options(true, true)).await?;
    c.subscribe("lab/redeliver", Q5::AtLeastOnce).await?;
    let publisher = V5::connect_as(addr, gh.client_tls("pub")?, "pub").await?;
    publisher
        .client
        .publish("lab/redeliver", Q5::AtLeastOnce, false, "important")
        .await?;
    let first = c.publish().await?;
    ensure!(first.payload.as_ref() == b"important" && !first.dup);
    // Gone without PUBACK; reconnect once the server has seen the connection close.
    let open = gh.metric("gatehouse_connections_open").await?;
    drop(c);
    gh.wait_metric_at_most("gatehouse_connections_open", open - 1.0)
        .await?;
    let (mut c, ack) = V5::connect(options(false, false)).await?;
    ensure!(ack.session_present, "session not resumed: {ack:?}");
    let again = c.publish().await?;
    ensure!(
        again.payload.as_ref() == b"important",
        "redelivered {again:?}"
    );
    ensure!(
        again.dup,
        "a redelivered PUBLISH must have DUP set: {again:?}"
    );
    Ok(())
}

#[tokio::test]
async fn expired_messages_are_not_delivered() -> Result<()> {
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let tls = gh.client_tls("late")?;
    let options = |clean| {
        let mut o = v5_options(addr, tls.clone(), "late");
        o.set_clean_start(clean);
        o.set_session_expiry_interval(Some(300));
        o
    };
    let (mut c, _) = V5::connect(options(true)).await?;
    c.subscribe("lab/expiry/#", Q5::AtLeastOnce).await?;
    c.disconnect().await?;

    let mut publisher = V5::connect_as(addr, gh.client_tls("pub")?, "pub").await?;
    let expiring = |secs| p5::PublishProperties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    };
    for (topic, payload, secs, retain) in [
        ("lab/expiry/queued", "stale", 1, false),
        ("lab/expiry/queued", "fresh", 300, false),
        ("lab/expiry/retained", "stale-retained", 1, true),
    ] {
        publisher
            .client
            .publish_with_properties(topic, Q5::AtLeastOnce, retain, payload, expiring(secs))
            .await?;
        publisher.puback().await?;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let (mut c, ack) = V5::connect(options(false)).await?;
    ensure!(ack.session_present);
    let p = c.publish().await?;
    ensure!(
        p.payload.as_ref() == b"fresh",
        "got {p:?} (the stale one expired)"
    );
    let left = p
        .properties
        .as_ref()
        .and_then(|pp| pp.message_expiry_interval);
    ensure!(
        left.is_some_and(|s| s > 0 && s < 300),
        "message expiry must be forwarded, reduced by the time waited: {left:?}"
    );
    let mut late = V5::connect_as(addr, gh.client_tls("later")?, "later").await?;
    late.subscribe("lab/expiry/retained", Q5::AtLeastOnce)
        .await?;
    late.no_publish_for(Duration::from_millis(300)).await?;
    c.no_publish_for(Duration::from_millis(100)).await?;
    Ok(())
}

#[tokio::test]
async fn expired_session_is_gone() -> Result<()> {
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let tls = gh.client_tls("brief")?;
    let options = |clean| {
        let mut o = v5_options(addr, tls.clone(), "brief");
        o.set_clean_start(clean);
        o.set_session_expiry_interval(Some(1));
        o
    };
    let (mut c, _) = V5::connect(options(true)).await?;
    c.subscribe("lab/brief", Q5::AtLeastOnce).await?;
    c.disconnect().await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let publisher = V5::connect_as(addr, gh.client_tls("pub")?, "pub").await?;
    publisher
        .client
        .publish("lab/brief", Q5::AtLeastOnce, false, "too late")
        .await?;
    let (mut c, ack) = V5::connect(options(false)).await?;
    ensure!(!ack.session_present, "an expired session was resumed");
    c.no_publish_for(Duration::from_millis(300)).await?;
    Ok(())
}

#[tokio::test]
async fn silent_client_is_dropped_after_keep_alive_and_its_will_published() -> Result<()> {
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let mut watcher = V5::connect_as(addr, gh.client_tls("watcher")?, "watcher").await?;
    watcher.subscribe("lab/will/#", Q5::AtLeastOnce).await?;

    // CONNECT 5.0, keep-alive 1 s, with a will; then silence.
    let mut body = raw::string("MQTT");
    body.push(5);
    body.push(0x02 | 0x04 | 0x08); // clean start, will, will QoS 1
    body.extend(1u16.to_be_bytes());
    body.push(0); // properties
    body.extend(raw::string("silent"));
    body.push(0); // will properties
    body.extend(raw::string("lab/will/silent"));
    body.extend(raw::string("silent went quiet"));
    let mut s = raw::tls(addr, gh.client_tls("silent")?).await?;
    raw::send(&mut s, &raw::packet(0x10, &body)).await?;
    let ack = raw::read_frame(&mut s).await?;
    ensure!(ack.connack() == Some((false, 0)), "got {ack:?}");
    let frames = raw::read_until_closed(&mut s, WAIT).await?.frames()?;
    ensure!(
        frames.iter().any(|f| f.disconnect_reason() == Some(0x8d)),
        "a silent client got {frames:?}, expected DISCONNECT 0x8D"
    );
    let will = watcher.publish().await?;
    ensure!(
        will.payload.as_ref() == b"silent went quiet",
        "got {will:?}"
    );

    // A client that pings within its keep-alive stays, for twice the grace period.
    let mut s = raw::tls(addr, gh.client_tls("chatty")?).await?;
    // (Keep-alive 2 s, so 3 s of grace, against a ping every 500 ms: a loaded machine's
    // late wake-up does not end the session.)
    raw::send(&mut s, &raw::connect_v5_keep_alive("chatty", true, None, 2)).await?;
    ensure!(raw::read_frame(&mut s).await?.connack() == Some((false, 0)));
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        raw::send(&mut s, &[0xc0, 0x00]).await?;
        let pong = raw::read_frame(&mut s).await?;
        ensure!(pong.kind() == 13, "expected PINGRESP, got {pong:?}");
    }
    Ok(())
}

#[tokio::test]
async fn unsubscribed_filter_receives_nothing_more() -> Result<()> {
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let mut c = V5::connect_as(addr, gh.client_tls("fickle")?, "fickle").await?;
    c.subscribe("lab/a", Q5::AtLeastOnce).await?;
    c.subscribe("lab/b", Q5::AtLeastOnce).await?;
    c.client.unsubscribe("lab/a").await?;
    let codes = c
        .wait("UNSUBACK", |p| match p {
            p5::Packet::UnsubAck(u) => Some(u.reasons.clone()),
            _ => None,
        })
        .await?;
    ensure!(codes == [p5::UnsubAckReason::Success], "UNSUBACK {codes:?}");
    c.client.unsubscribe("lab/never").await?;
    let codes = c
        .wait("UNSUBACK", |p| match p {
            p5::Packet::UnsubAck(u) => Some(u.reasons.clone()),
            _ => None,
        })
        .await?;
    ensure!(
        codes == [p5::UnsubAckReason::NoSubscriptionExisted],
        "UNSUBACK {codes:?}"
    );
    let publisher = V5::connect_as(addr, gh.client_tls("pub")?, "pub").await?;
    publisher
        .client
        .publish("lab/a", Q5::AtLeastOnce, false, "unwanted")
        .await?;
    publisher
        .client
        .publish("lab/b", Q5::AtLeastOnce, false, "marker")
        .await?;
    let before = c.publishes_until(b"marker").await?;
    ensure!(before.is_empty(), "delivered after UNSUBSCRIBE: {before:?}");
    Ok(())
}

#[tokio::test]
async fn empty_retained_message_clears_the_retained_value() -> Result<()> {
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let mut publisher = V5::connect_as(addr, gh.client_tls("pub")?, "pub").await?;
    for payload in ["value", ""] {
        publisher
            .client
            .publish("lab/cleared", Q5::AtLeastOnce, true, payload)
            .await?;
        publisher.puback().await?;
    }
    let mut c = V5::connect_as(addr, gh.client_tls("reader")?, "reader").await?;
    c.subscribe("lab/cleared", Q5::AtLeastOnce).await?;
    publisher
        .client
        .publish("lab/cleared", Q5::AtLeastOnce, false, "marker")
        .await?;
    let before = c.publishes_until(b"marker").await?;
    ensure!(
        before.is_empty(),
        "a cleared retained message was delivered: {before:?}"
    );
    Ok(())
}

#[tokio::test]
async fn wildcard_subscription_does_not_match_dollar_topics() -> Result<()> {
    // MQTT §4.7.2: `#` and `+` at the first level do not match topics starting with `$`.
    let gh = Gatehouse::start(Options::extra(
        "[[policy.device]]\nid = \"spy\"\nsubscribe = [\"#\", \"+/#\"]\n",
    ))
    .await?;
    let addr = gh.listeners.mqtts;
    let mut spy = V5::connect_as(addr, gh.client_tls("spy")?, "spy").await?;
    spy.subscribe("#", Q5::AtLeastOnce).await?;
    spy.subscribe("+/#", Q5::AtLeastOnce).await?;
    let mut dev = V5::connect_as(addr, gh.client_tls("dev")?, "dev").await?;
    dev.client
        .publish("$gatehouse/dev/posture", Q5::AtLeastOnce, false, "private")
        .await?;
    let ack = dev.puback().await?;
    ensure!(ack.reason == p5::PubAckReason::Success, "{ack:?}");
    dev.client
        .publish("devices/dev/t", Q5::AtLeastOnce, false, "marker")
        .await?;
    let before = spy.publishes_until(b"marker").await?;
    ensure!(
        before.is_empty(),
        "a wildcard subscription received $ topics: {:?}",
        before.iter().map(|p| &p.topic).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test]
async fn topic_alias_outside_the_allowed_range_is_refused() -> Result<()> {
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let publish_with_alias = |topic: &str, alias: u16| {
        let mut body = raw::string(topic);
        body.extend([3, 0x23]);
        body.extend(alias.to_be_bytes());
        body.extend_from_slice(b"x");
        raw::packet(0x30, &body)
    };
    for (topic, alias, code) in [("lab/t", 0, 0x94), ("lab/t", 33, 0x94), ("", 5, 0x82)] {
        let mut s = raw::tls(addr, gh.client_tls("aliaser")?).await?;
        raw::handshake_v5(&mut s, "aliaser").await?;
        raw::send(&mut s, &publish_with_alias(topic, alias)).await?;
        let frames = raw::read_until_closed(&mut s, WAIT).await?.frames()?;
        ensure!(
            frames.iter().any(|f| f.disconnect_reason() == Some(code)),
            "alias {alias} on {topic:?} was answered with {frames:?}, expected {code:#04x}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn subscription_quota_is_enforced() -> Result<()> {
    let gh = Gatehouse::start(Options::extra(&format!(
        "{LAB_POLICY}\n[limits]\nmax_subscriptions_per_session = 3\n"
    )))
    .await?;
    let addr = gh.listeners.mqtts;
    let mut c = V5::connect_as(addr, gh.client_tls("greedy")?, "greedy").await?;
    for f in ["lab/1", "lab/2", "lab/3"] {
        c.subscribe(f, Q5::AtMostOnce).await?;
    }
    c.client.subscribe("lab/4", Q5::AtMostOnce).await?;
    let codes = c.suback().await?;
    ensure!(
        codes == [p5::SubscribeReasonCode::QuotaExceeded],
        "fourth subscription got {codes:?}"
    );
    // Replacing an existing subscription is not a new one.
    c.subscribe("lab/3", Q5::AtLeastOnce).await?;
    let mut c4 = V4::connect_as(addr, gh.client_tls("greedy-4")?, "greedy-4").await?;
    for f in ["lab/1", "lab/2", "lab/3"] {
        c4.subscribe(f, rumqttc::QoS::AtMostOnce).await?;
    }
    c4.client
        .subscribe("lab/4", rumqttc::QoS::AtMostOnce)
        .await?;
    let codes = c4.suback().await?;
    ensure!(
        codes == [rumqttc::SubscribeReasonCode::Failure],
        "fourth 3.1.1 subscription got {codes:?}"
    );
    Ok(())
}
