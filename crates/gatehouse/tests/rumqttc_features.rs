//! MQTT features seen through rumqttc (3.1.1 and 5.0), a client we did not write, against
//! the real binary over mutual TLS: QoS 1 and 2, wills, persistent sessions, shared
//! subscriptions, subscription identifiers, no-local, retain handling, topic aliases,
//! flow control and packet size limits.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5 as p5;
use support::clients::{V4, V5, v4_options, v5_options};
use support::{Gatehouse, LAB_POLICY, Options};

async fn lab() -> Result<Gatehouse> {
    Gatehouse::start(Options::extra(LAB_POLICY)).await
}

fn payloads(ps: &[p5::Publish]) -> Vec<String> {
    ps.iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}

#[tokio::test]
async fn qos1_and_qos2_are_delivered_over_v311() -> Result<()> {
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let mut sub = V4::connect_as(addr, gh.client_tls("sub-4")?, "sub-4").await?;
    sub.subscribe("lab/q4/#", rumqttc::QoS::ExactlyOnce).await?;
    let publisher = V4::connect_as(addr, gh.client_tls("pub-4")?, "pub-4").await?;
    for (topic, qos) in [
        ("lab/q4/one", rumqttc::QoS::AtLeastOnce),
        ("lab/q4/two", rumqttc::QoS::ExactlyOnce),
    ] {
        publisher
            .client
            .publish(topic, qos, false, topic.as_bytes().to_vec())
            .await?;
        let got = sub.publish().await?;
        ensure!(got.topic == topic, "got {got:?}");
        ensure!(got.payload.as_ref() == topic.as_bytes(), "got {got:?}");
        ensure!(
            got.qos == qos,
            "delivered at {:?}, published at {qos:?}",
            got.qos
        );
        ensure!(!got.retain, "a live message arrived with retain set");
    }
    // A subscription at QoS 0 downgrades the delivery (the lower of the two).
    let mut low = V4::connect_as(addr, gh.client_tls("low-4")?, "low-4").await?;
    low.subscribe("lab/q4/#", rumqttc::QoS::AtMostOnce).await?;
    publisher
        .client
        .publish("lab/q4/three", rumqttc::QoS::ExactlyOnce, false, "x")
        .await?;
    let got = low.publish().await?;
    ensure!(got.qos == rumqttc::QoS::AtMostOnce, "got {got:?}");
    Ok(())
}

#[tokio::test]
async fn qos1_and_qos2_are_delivered_over_v5() -> Result<()> {
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let mut sub = V5::connect_as(addr, gh.client_tls("sub-5")?, "sub-5").await?;
    sub.subscribe("lab/q5/#", Q5::ExactlyOnce).await?;
    let mut publisher = V5::connect_as(addr, gh.client_tls("pub-5")?, "pub-5").await?;
    for (topic, qos) in [
        ("lab/q5/one", Q5::AtLeastOnce),
        ("lab/q5/two", Q5::ExactlyOnce),
    ] {
        publisher
            .client
            .publish(topic, qos, false, topic.as_bytes().to_vec())
            .await?;
        let got = sub.publish().await?;
        ensure!(got.topic.as_ref() == topic.as_bytes(), "got {got:?}");
        ensure!(
            got.qos == qos,
            "delivered at {:?}, published at {qos:?}",
            got.qos
        );
    }
    // The QoS 2 exchange completes: PUBREC then PUBCOMP for the publisher.
    publisher
        .wait("PUBCOMP", |p| {
            matches!(p, p5::Packet::PubComp(_)).then_some(())
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn will_is_published_when_a_client_vanishes_but_not_after_disconnect() -> Result<()> {
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let mut watcher = V5::connect_as(addr, gh.client_tls("watcher")?, "watcher").await?;
    watcher.subscribe("lab/will/#", Q5::AtLeastOnce).await?;

    // 3.1.1: the TCP connection is dropped without DISCONNECT.
    let mut o = v4_options(addr, gh.client_tls("dev-4")?, "dev-4");
    o.set_last_will(rumqttc::LastWill::new(
        "lab/will/dev-4",
        "dev-4 vanished",
        rumqttc::QoS::AtLeastOnce,
        false,
    ));
    let (vanishing, _) = V4::connect(o).await?;
    drop(vanishing);
    let will = watcher.publish().await?;
    ensure!(will.payload.as_ref() == b"dev-4 vanished", "got {will:?}");
    ensure!(will.topic.as_ref() == b"lab/will/dev-4", "got {will:?}");

    // 5.0, same.
    let mut o = v5_options(addr, gh.client_tls("dev-5")?, "dev-5");
    o.set_last_will(p5::LastWill::new(
        "lab/will/dev-5",
        "dev-5 vanished",
        Q5::AtLeastOnce,
        false,
        None,
    ));
    let (vanishing, _) = V5::connect(o).await?;
    drop(vanishing);
    let will = watcher.publish().await?;
    ensure!(will.payload.as_ref() == b"dev-5 vanished", "got {will:?}");

    // A normal DISCONNECT discards the will.
    let mut o = v5_options(addr, gh.client_tls("polite")?, "polite");
    o.set_last_will(p5::LastWill::new(
        "lab/will/polite",
        "polite will",
        Q5::AtLeastOnce,
        false,
        None,
    ));
    let (polite, _) = V5::connect(o).await?;
    polite.disconnect().await?;
    let marker = V5::connect_as(addr, gh.client_tls("marker")?, "marker").await?;
    marker
        .client
        .publish("lab/will/marker", Q5::AtLeastOnce, false, "marker")
        .await?;
    let before = watcher.publishes_until(b"marker").await?;
    ensure!(
        before.is_empty(),
        "will published after a normal DISCONNECT: {:?}",
        payloads(&before)
    );
    Ok(())
}

fn delayed_will(device: &str, delay: u32) -> p5::LastWill {
    p5::LastWill::new(
        format!("lab/will/{device}"),
        format!("{device} gone"),
        Q5::AtLeastOnce,
        false,
        Some(p5::LastWillProperties {
            delay_interval: Some(delay),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }),
    )
}

#[tokio::test]
async fn will_delay_holds_the_will_until_it_passes() -> Result<()> {
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let mut watcher = V5::connect_as(addr, gh.client_tls("watcher")?, "watcher").await?;
    watcher.subscribe("lab/will/#", Q5::AtLeastOnce).await?;

    let mut o = v5_options(addr, gh.client_tls("late")?, "late");
    o.set_session_expiry_interval(Some(60));
    o.set_last_will(delayed_will("late", 3));
    let (late, _) = V5::connect(o).await?;
    drop(late);
    // Not before the delay (3 s) has passed: nothing in the first second.
    watcher.no_publish_for(Duration::from_secs(1)).await?;
    let will = watcher.publish().await?;
    ensure!(will.payload.as_ref() == b"late gone", "got {will:?}");
    Ok(())
}

#[tokio::test]
async fn reconnecting_within_the_will_delay_cancels_the_will() -> Result<()> {
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let mut watcher = V5::connect_as(addr, gh.client_tls("watcher")?, "watcher").await?;
    watcher.subscribe("lab/will/#", Q5::AtLeastOnce).await?;
    let tls = gh.client_tls("flaky")?;
    let options = || {
        let mut o = v5_options(addr, tls.clone(), "flaky");
        o.set_session_expiry_interval(Some(60));
        o.set_clean_start(false);
        o.set_last_will(delayed_will("flaky", 2));
        o
    };
    let (first, _) = V5::connect(options()).await?;
    // Reconnect once the server has seen the first connection close.
    let open = gh.metric("gatehouse_connections_open").await?;
    drop(first);
    gh.wait_metric_at_most("gatehouse_connections_open", open - 1.0)
        .await?;
    let (second, ack) = V5::connect(options()).await?;
    ensure!(ack.session_present, "the session was not resumed");
    watcher.no_publish_for(Duration::from_secs(3)).await?;
    drop(second);
    Ok(())
}

#[tokio::test]
async fn session_takeover_within_the_will_delay_does_not_publish_the_will() -> Result<()> {
    // MQTT 5.0 §3.1.2.5: the will is not published when a new network connection for the
    // client id is opened before the will delay has passed; a takeover that resumes the
    // session is such a connection.
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let mut watcher = V5::connect_as(addr, gh.client_tls("watcher")?, "watcher").await?;
    watcher.subscribe("lab/will/#", Q5::AtLeastOnce).await?;
    let tls = gh.client_tls("twin")?;
    let options = || {
        let mut o = v5_options(addr, tls.clone(), "twin");
        o.set_session_expiry_interval(Some(60));
        o.set_clean_start(false);
        o.set_last_will(delayed_will("twin", 30));
        o
    };
    let (mut first, _) = V5::connect(options()).await?;
    let (second, ack) = V5::connect(options()).await?;
    ensure!(ack.session_present, "the session was not resumed");
    // The first connection is closed (its DISCONNECT 0x8E is checked byte for byte in
    // protocol_errors.rs: rumqttc 0.25 cannot parse a DISCONNECT without properties).
    first.server_disconnect().await?;
    watcher.no_publish_for(Duration::from_secs(2)).await?;
    drop(second);
    Ok(())
}

#[tokio::test]
async fn persistent_session_v311_gets_messages_published_while_offline() -> Result<()> {
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let tls = gh.client_tls("sleepy-4")?;
    let options = || {
        let mut o = v4_options(addr, tls.clone(), "sleepy-4");
        o.set_clean_session(false);
        o
    };
    let (mut c, _) = V4::connect(options()).await?;
    c.subscribe("lab/offline4/#", rumqttc::QoS::AtLeastOnce)
        .await?;
    c.disconnect().await?;

    let publisher = V5::connect_as(addr, gh.client_tls("pub")?, "pub").await?;
    for i in 0..3 {
        publisher
            .client
            .publish("lab/offline4/x", Q5::AtLeastOnce, false, format!("m{i}"))
            .await?;
    }
    publisher
        .client
        .publish("lab/offline4/x", Q5::AtMostOnce, false, "qos0")
        .await?;
    // Wait until the broker has acknowledged them all.
    let mut publisher = publisher;
    for _ in 0..3 {
        publisher.puback().await?;
    }

    let (mut c, ack) = V4::connect(options()).await?;
    ensure!(ack.session_present, "session not present: {ack:?}");
    for i in 0..3 {
        let p = c.publish().await?;
        ensure!(
            p.payload.as_ref() == format!("m{i}").as_bytes(),
            "got {p:?}"
        );
    }
    // And the subscription is still there for new messages.
    publisher
        .client
        .publish("lab/offline4/x", Q5::AtLeastOnce, false, "live")
        .await?;
    let before = c.publishes_until(b"live").await?;
    ensure!(
        before.is_empty(),
        "QoS 0 messages are not kept for offline sessions, got {before:?}"
    );
    Ok(())
}

#[tokio::test]
async fn persistent_session_v5_gets_messages_published_while_offline() -> Result<()> {
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let tls = gh.client_tls("sleepy-5")?;
    let options = |clean| {
        let mut o = v5_options(addr, tls.clone(), "sleepy-5");
        o.set_clean_start(clean);
        o.set_session_expiry_interval(Some(300));
        o
    };
    let (mut c, ack) = V5::connect(options(true)).await?;
    ensure!(!ack.session_present);
    c.subscribe("lab/offline5/#", Q5::ExactlyOnce).await?;
    c.disconnect().await?;

    let mut publisher = V5::connect_as(addr, gh.client_tls("pub")?, "pub").await?;
    publisher
        .client
        .publish("lab/offline5/a", Q5::AtLeastOnce, false, "one")
        .await?;
    publisher.puback().await?;
    publisher
        .client
        .publish("lab/offline5/b", Q5::ExactlyOnce, false, "two")
        .await?;
    publisher
        .wait("PUBCOMP", |p| {
            matches!(p, p5::Packet::PubComp(_)).then_some(())
        })
        .await?;

    let (mut c, ack) = V5::connect(options(false)).await?;
    ensure!(ack.session_present, "session not present: {ack:?}");
    let a = c.publish().await?;
    let b = c.publish().await?;
    ensure!(
        payloads(&[a.clone(), b.clone()]) == ["one", "two"],
        "got {a:?} and {b:?}"
    );
    ensure!(b.qos == Q5::ExactlyOnce, "got {b:?}");
    Ok(())
}

#[tokio::test]
async fn shared_subscription_splits_messages_between_members() -> Result<()> {
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let mut a = V5::connect_as(addr, gh.client_tls("worker-a")?, "worker-a").await?;
    let mut b = V5::connect_as(addr, gh.client_tls("worker-b")?, "worker-b").await?;
    a.subscribe("$share/workers/lab/jobs/#", Q5::AtLeastOnce)
        .await?;
    b.subscribe("$share/workers/lab/jobs/#", Q5::AtLeastOnce)
        .await?;
    let mut publisher = V5::connect_as(addr, gh.client_tls("boss")?, "boss").await?;
    const N: usize = 20;
    for i in 0..N {
        publisher
            .client
            .publish("lab/jobs/x", Q5::AtLeastOnce, false, format!("job-{i}"))
            .await?;
        publisher.puback().await?;
    }
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    while got_a.len() + got_b.len() < N {
        tokio::select! {
            p = a.publish() => got_a.push(p?),
            p = b.publish() => got_b.push(p?),
        }
    }
    let (got_a, got_b) = (payloads(&got_a), payloads(&got_b));
    ensure!(
        !got_a.is_empty() && !got_b.is_empty(),
        "one member got everything: a={got_a:?} b={got_b:?}"
    );
    let all: BTreeSet<_> = got_a.iter().chain(&got_b).cloned().collect();
    ensure!(
        all.len() == N,
        "duplicates or losses: a={got_a:?} b={got_b:?}"
    );
    // Nothing more is on the way: each message went to exactly one member.
    a.no_publish_for(Duration::from_millis(300)).await?;
    b.no_publish_for(Duration::from_millis(300)).await?;
    Ok(())
}

#[tokio::test]
async fn subscription_identifiers_come_back_with_matching_messages() -> Result<()> {
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let mut c = V5::connect_as(addr, gh.client_tls("sid")?, "sid").await?;
    let props = |id| p5::SubscribeProperties {
        id: Some(id),
        user_properties: Vec::new(),
    };
    c.subscribe_filter(
        p5::Filter::new("lab/sid/#", Q5::AtLeastOnce),
        Some(props(7)),
    )
    .await?;
    c.subscribe_filter(
        p5::Filter::new("lab/sid/x", Q5::AtLeastOnce),
        Some(props(9)),
    )
    .await?;
    let publisher = V5::connect_as(addr, gh.client_tls("pub")?, "pub").await?;
    publisher
        .client
        .publish("lab/sid/x", Q5::AtLeastOnce, false, "both")
        .await?;
    publisher
        .client
        .publish("lab/sid/y", Q5::AtLeastOnce, false, "one")
        .await?;
    let ids = |p: &p5::Publish| -> BTreeSet<usize> {
        p.properties
            .as_ref()
            .map(|pp| pp.subscription_identifiers.iter().copied().collect())
            .unwrap_or_default()
    };
    let both = c.publish().await?;
    ensure!(both.payload.as_ref() == b"both", "got {both:?}");
    ensure!(ids(&both) == BTreeSet::from([7, 9]), "got {both:?}");
    let one = c.publish().await?;
    ensure!(one.payload.as_ref() == b"one", "got {one:?}");
    ensure!(ids(&one) == BTreeSet::from([7]), "got {one:?}");
    Ok(())
}

#[tokio::test]
async fn no_local_subscription_does_not_echo_own_messages() -> Result<()> {
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let mut me = V5::connect_as(addr, gh.client_tls("me")?, "me").await?;
    let mut filter = p5::Filter::new("lab/chat", Q5::AtLeastOnce);
    filter.nolocal = true;
    me.subscribe_filter(filter, None).await?;
    me.client
        .publish("lab/chat", Q5::AtLeastOnce, false, "own")
        .await?;
    me.puback().await?;
    let other = V5::connect_as(addr, gh.client_tls("other")?, "other").await?;
    other
        .client
        .publish("lab/chat", Q5::AtLeastOnce, false, "theirs")
        .await?;
    let before = me.publishes_until(b"theirs").await?;
    ensure!(
        before.is_empty(),
        "own message echoed: {:?}",
        payloads(&before)
    );
    Ok(())
}

#[tokio::test]
async fn retain_handling_and_retain_as_published_are_honoured() -> Result<()> {
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let mut publisher = V5::connect_as(addr, gh.client_tls("pub")?, "pub").await?;
    publisher
        .client
        .publish("lab/rh/t", Q5::AtLeastOnce, true, "retained-1")
        .await?;
    publisher.puback().await?;
    let mut marker_n = 0;
    let mut marker = async |publisher: &mut V5| -> Result<String> {
        marker_n += 1;
        let m = format!("marker-{marker_n}");
        publisher
            .client
            .publish("lab/rh/t", Q5::AtLeastOnce, false, m.clone())
            .await?;
        publisher.puback().await?;
        Ok(m)
    };
    let filter = |rule, rap| {
        let mut f = p5::Filter::new("lab/rh/t", Q5::AtLeastOnce);
        f.retain_forward_rule = rule;
        f.preserve_retain = rap;
        f
    };
    use p5::RetainForwardRule::{Never, OnEverySubscribe, OnNewSubscribe};

    // Retain handling 2: no retained message at subscribe.
    let mut s = V5::connect_as(addr, gh.client_tls("s")?, "s").await?;
    s.subscribe_filter(filter(Never, false), None).await?;
    let m = marker(&mut publisher).await?;
    let before = s.publishes_until(m.as_bytes()).await?;
    ensure!(
        before.is_empty(),
        "retain handling 2 sent {:?}",
        payloads(&before)
    );

    // Retain handling 1 on an existing subscription: still nothing.
    s.subscribe_filter(filter(OnNewSubscribe, false), None)
        .await?;
    let m = marker(&mut publisher).await?;
    let before = s.publishes_until(m.as_bytes()).await?;
    ensure!(
        before.is_empty(),
        "retain handling 1 sent {:?} for an existing subscription",
        payloads(&before)
    );

    // Retain handling 0 on an existing subscription: sent again, with retain set.
    s.subscribe_filter(filter(OnEverySubscribe, false), None)
        .await?;
    let m = marker(&mut publisher).await?;
    let before = s.publishes_until(m.as_bytes()).await?;
    ensure!(
        payloads(&before) == ["retained-1"],
        "got {:?}",
        payloads(&before)
    );
    ensure!(
        before[0].retain,
        "a retained message at subscribe must have retain set"
    );

    // Retain handling 1 on a new subscription: sent.
    let mut n = V5::connect_as(addr, gh.client_tls("n")?, "n").await?;
    n.subscribe_filter(filter(OnNewSubscribe, true), None)
        .await?;
    let first = n.publish().await?;
    ensure!(
        first.payload.as_ref() == b"retained-1" && first.retain,
        "got {first:?}"
    );

    // A live retained publish: retain kept only for the retain-as-published subscriber.
    publisher
        .client
        .publish("lab/rh/t", Q5::AtLeastOnce, true, "retained-2")
        .await?;
    publisher.puback().await?;
    let live_n = n.publish().await?;
    ensure!(live_n.payload.as_ref() == b"retained-2", "got {live_n:?}");
    ensure!(live_n.retain, "retain-as-published subscriber got retain=0");
    let live_s = s.publish().await?;
    ensure!(live_s.payload.as_ref() == b"retained-2", "got {live_s:?}");
    ensure!(
        !live_s.retain,
        "subscriber without retain-as-published got retain=1"
    );
    Ok(())
}

#[tokio::test]
async fn topic_alias_from_the_client_is_resolved() -> Result<()> {
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let mut sub = V5::connect_as(addr, gh.client_tls("sub")?, "sub").await?;
    sub.subscribe("lab/alias/#", Q5::AtLeastOnce).await?;
    let (publisher, ack) = V5::connect(v5_options(addr, gh.client_tls("pub")?, "pub")).await?;
    let max = ack.properties.as_ref().and_then(|p| p.topic_alias_max);
    ensure!(max.unwrap_or(0) >= 1, "no topic aliases offered: {ack:?}");
    let alias = |a| p5::PublishProperties {
        topic_alias: Some(a),
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties(
            "lab/alias/long/topic",
            Q5::AtLeastOnce,
            false,
            "first",
            alias(1),
        )
        .await?;
    publisher
        .client
        .publish_with_properties("", Q5::AtLeastOnce, false, "second", alias(1))
        .await?;
    for payload in ["first", "second"] {
        let p = sub.publish().await?;
        ensure!(p.payload.as_ref() == payload.as_bytes(), "got {p:?}");
        ensure!(p.topic.as_ref() == b"lab/alias/long/topic", "got {p:?}");
    }
    Ok(())
}

#[tokio::test]
async fn receive_maximum_bounds_inflight_and_every_message_arrives_in_order() -> Result<()> {
    const WINDOW: usize = 5;
    const N: usize = 300;
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let mut o = v5_options(addr, gh.client_tls("slow")?, "slow");
    o.set_receive_maximum(Some(WINDOW as u16));
    o.set_manual_acks(true);
    let (mut slow, _) = V5::connect(o).await?;
    slow.subscribe("lab/flow/#", Q5::AtLeastOnce).await?;

    let publisher = V5::connect_as(addr, gh.client_tls("fast")?, "fast").await?;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            publisher
                .client
                .publish("lab/flow/x", Q5::AtLeastOnce, false, format!("{i}"))
                .await?;
        }
        anyhow::Ok(publisher)
    });

    let mut next = 0usize;
    let mut windows = 0;
    let mut unacked = Vec::new();
    while next < N {
        let p = slow.publish().await?;
        let seq: usize = std::str::from_utf8(&p.payload)?.parse()?;
        ensure!(seq == next, "expected message {next}, got {seq}");
        next += 1;
        unacked.push(p);
        ensure!(
            unacked.len() <= WINDOW,
            "{} unacknowledged messages outstanding with receive maximum {WINDOW}",
            unacked.len()
        );
        if unacked.len() == WINDOW || next == N {
            // Be slow for the first windows: nothing more may arrive until we acknowledge.
            if windows < 3 {
                slow.no_publish_for(Duration::from_millis(300)).await?;
            }
            windows += 1;
            for p in unacked.drain(..) {
                slow.client.ack(&p).await?;
            }
        }
    }
    let _publisher = sender.await??;
    slow.no_publish_for(Duration::from_millis(200)).await?;
    Ok(())
}

#[tokio::test]
async fn client_maximum_packet_size_is_never_exceeded() -> Result<()> {
    let gh = lab().await?;
    let addr = gh.listeners.mqtts;
    let mut o = v5_options(addr, gh.client_tls("tiny")?, "tiny");
    o.set_max_packet_size(Some(1024));
    let (mut tiny, _) = V5::connect(o).await?;
    tiny.subscribe("lab/size/#", Q5::AtLeastOnce).await?;
    let mut publisher = V5::connect_as(addr, gh.client_tls("big")?, "big").await?;
    publisher
        .client
        .publish(
            "lab/size/x",
            Q5::AtLeastOnce,
            false,
            Bytes::from(vec![b'x'; 4000]),
        )
        .await?;
    publisher.puback().await?;
    publisher
        .client
        .publish("lab/size/x", Q5::AtLeastOnce, false, "small")
        .await?;
    let before = tiny.publishes_until(b"small").await?;
    ensure!(
        before.is_empty(),
        "a {}-byte message reached a client whose maximum packet size is 1024",
        before[0].payload.len()
    );
    Ok(())
}

#[tokio::test]
async fn connack_advertises_the_limits_and_caps_what_the_client_asks() -> Result<()> {
    let gh = Gatehouse::start(Options::extra(
        "[limits]\nmax_keep_alive = \"2m\"\nmax_session_expiry = \"1h\"\n",
    ))
    .await?;
    let mut o = v5_options(gh.listeners.mqtts, gh.client_tls("greedy")?, "greedy");
    o.set_keep_alive(Duration::from_secs(3600));
    o.set_session_expiry_interval(Some(u32::MAX));
    let (_c, ack) = V5::connect(o).await?;
    let p = ack
        .properties
        .clone()
        .context("CONNACK without properties")?;
    ensure!(
        p.server_keep_alive == Some(120),
        "server keep alive: {ack:?}"
    );
    ensure!(
        p.session_expiry_interval == Some(3600),
        "granted session expiry: {ack:?}"
    );
    ensure!(p.receive_max == Some(64), "{ack:?}");
    ensure!(p.max_packet_size == Some(1024 * 1024), "{ack:?}");
    ensure!(p.topic_alias_max == Some(32), "{ack:?}");
    for (what, v) in [
        ("retain", p.retain_available),
        ("wildcard subscriptions", p.wildcard_subscription_available),
        (
            "subscription identifiers",
            p.subscription_identifiers_available,
        ),
        ("shared subscriptions", p.shared_subscription_available),
    ] {
        ensure!(v != Some(0), "{what} advertised as unavailable: {ack:?}");
    }
    Ok(())
}
