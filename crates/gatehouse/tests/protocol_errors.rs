//! Protocol violations and policy refusals, with the reason codes on the wire: a second
//! CONNECT, wildcards in a topic name, subscribing to everything, publishing outside
//! the device's namespace, and a session taken over.

mod support;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5 as p5;
use support::clients::{V4, V5};
use support::{Gatehouse, LAB_POLICY, Options, WAIT, raw};

#[tokio::test]
async fn second_connect_is_a_protocol_error() -> Result<()> {
    let gh = Gatehouse::start_default().await?;
    let tls = gh.client_tls("twice")?;

    let mut s = raw::tls(gh.listeners.mqtts, tls.clone()).await?;
    raw::handshake_v5(&mut s, "twice").await?;
    raw::send(&mut s, &raw::connect_v5("twice")).await?;
    let frames = raw::read_until_closed(&mut s, WAIT).await?.frames()?;
    ensure!(
        frames.iter().any(|f| f.disconnect_reason() == Some(0x82)),
        "a second CONNECT (5.0) was answered with {frames:?}, expected DISCONNECT 0x82"
    );

    // 3.1.1 has no DISCONNECT from the server: the connection is closed.
    let mut s = raw::tls(gh.listeners.mqtts, tls).await?;
    raw::send(&mut s, &raw::connect_v311("twice", None, None)).await?;
    let ack = raw::read_frame(&mut s).await?;
    ensure!(ack.connack() == Some((false, 0)), "got {ack:?}");
    raw::send(&mut s, &raw::connect_v311("twice", None, None)).await?;
    let frames = raw::read_until_closed(&mut s, WAIT).await?.frames()?;
    ensure!(
        frames.is_empty(),
        "3.1.1 second CONNECT answered with {frames:?}"
    );
    Ok(())
}

#[tokio::test]
async fn publish_to_a_wildcard_topic_is_refused() -> Result<()> {
    let gh = Gatehouse::start(Options::extra(LAB_POLICY)).await?;
    let addr = gh.listeners.mqtts;
    let mut watcher = V5::connect_as(addr, gh.client_tls("watcher")?, "watcher").await?;
    watcher.subscribe("lab/#", Q5::AtLeastOnce).await?;
    for topic in ["lab/+/x", "lab/#", "lab/a#"] {
        let mut s = raw::tls(addr, gh.client_tls("wild")?).await?;
        raw::handshake_v5(&mut s, "wild").await?;
        raw::send(&mut s, &raw::publish_v5(topic, b"boo")).await?;
        let frames = raw::read_until_closed(&mut s, WAIT).await?.frames()?;
        ensure!(
            frames
                .iter()
                .any(|f| matches!(f.disconnect_reason(), Some(0x90 | 0x81))),
            "PUBLISH to {topic:?} was answered with {frames:?}, expected DISCONNECT 0x90"
        );
    }
    watcher.no_publish_for(Duration::from_millis(200)).await?;
    Ok(())
}

#[tokio::test]
async fn subscribing_to_everything_is_refused_under_the_default_policy() -> Result<()> {
    // Detection off: these probes are what the shipped playbooks quarantine a device for,
    // and a quarantine arriving mid-test would refuse the device's own namespace too (that
    // response is tested in detection.rs). Here only the static gate is under test.
    let gh = Gatehouse::start(Options::extra("[detect]\nenabled = false\n")).await?;
    let addr = gh.listeners.mqtts;

    let mut c = V5::connect_as(addr, gh.client_tls("nosy-5")?, "nosy-5").await?;
    for filter in [
        "#",
        "+/#",
        "devices/#",
        "devices/+/telemetry",
        "$SYS/#",
        "$gatehouse/#",
    ] {
        c.client.subscribe(filter, Q5::AtMostOnce).await?;
        let codes = c.suback().await?;
        ensure!(
            codes == [p5::SubscribeReasonCode::NotAuthorized],
            "5.0 SUBSCRIBE {filter:?} got {codes:?}, expected 0x87"
        );
    }
    // Its own namespace is fine, and the session survived the refusals.
    c.subscribe("devices/nosy-5/#", Q5::AtLeastOnce).await?;

    let mut c = V4::connect_as(addr, gh.client_tls("nosy-4")?, "nosy-4").await?;
    for filter in ["#", "devices/+/telemetry"] {
        c.client.subscribe(filter, rumqttc::QoS::AtMostOnce).await?;
        let codes = c.suback().await?;
        ensure!(
            codes == [rumqttc::SubscribeReasonCode::Failure],
            "3.1.1 SUBSCRIBE {filter:?} got {codes:?}, expected 0x80"
        );
    }
    c.subscribe("devices/nosy-4/#", rumqttc::QoS::AtLeastOnce)
        .await?;
    gh.wait_metric("gatehouse_gate_denials_total{action=\"subscribe\"}", 8.0)
        .await?;
    Ok(())
}

#[tokio::test]
async fn publish_outside_policy_is_refused_and_not_delivered() -> Result<()> {
    let gh = Gatehouse::start_default().await?;
    let addr = gh.listeners.mqtts;
    let mut valve = V5::connect_as(addr, gh.client_tls("valve-1")?, "valve-1").await?;
    valve
        .subscribe("devices/valve-1/#", Q5::ExactlyOnce)
        .await?;

    // A 5.0 device commands another device's valve: PUBACK / PUBREC 0x87.
    let mut rogue = V5::connect_as(addr, gh.client_tls("sensor-9")?, "sensor-9").await?;
    rogue
        .client
        .publish("devices/valve-1/cmd", Q5::AtLeastOnce, false, "open")
        .await?;
    let ack = rogue.puback().await?;
    ensure!(
        ack.reason == p5::PubAckReason::NotAuthorized,
        "PUBACK {ack:?}, expected 0x87"
    );
    rogue
        .client
        .publish("devices/valve-1/cmd", Q5::ExactlyOnce, false, "open-2")
        .await?;
    let rec = rogue
        .wait("PUBREC", |p| match p {
            p5::Packet::PubRec(r) => Some(r.clone()),
            _ => None,
        })
        .await?;
    ensure!(
        rec.reason == p5::PubRecReason::NotAuthorized,
        "PUBREC {rec:?}, expected 0x87"
    );
    rogue
        .client
        .publish("devices/valve-1/cmd", Q5::AtMostOnce, false, "open-0")
        .await?;

    // A 3.1.1 device gets a plain PUBACK (3.1.1 has no reason codes) but no delivery.
    let mut old = V4::connect_as(addr, gh.client_tls("sensor-8")?, "sensor-8").await?;
    old.client
        .publish(
            "devices/valve-1/cmd",
            rumqttc::QoS::AtLeastOnce,
            false,
            "open-4",
        )
        .await?;
    old.wait("PUBACK", |p| {
        matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
    })
    .await?;

    // The valve's own message arrives, and nothing before it.
    valve
        .client
        .publish("devices/valve-1/state", Q5::AtLeastOnce, false, "closed")
        .await?;
    let before = valve.publishes_until(b"closed").await?;
    ensure!(
        before.is_empty(),
        "foreign commands were delivered: {:?}",
        before.iter().map(|p| &p.payload).collect::<Vec<_>>()
    );
    // The refusals did not end the rogue's session.
    rogue
        .client
        .publish("devices/sensor-9/t", Q5::AtLeastOnce, false, "21.5")
        .await?;
    let ack = rogue.puback().await?;
    ensure!(ack.reason == p5::PubAckReason::Success, "{ack:?}");
    gh.wait_metric("gatehouse_gate_denials_total{action=\"publish\"}", 4.0)
        .await?;
    Ok(())
}

#[tokio::test]
async fn session_takeover_tells_the_old_connection_0x8e() -> Result<()> {
    let gh = Gatehouse::start_default().await?;
    let tls = gh.client_tls("twin")?;
    for resume in [false, true] {
        let connect = raw::connect_v5_with("twin", !resume, resume.then_some(60));
        let mut first = raw::tls(gh.listeners.mqtts, tls.clone()).await?;
        raw::send(&mut first, &connect).await?;
        ensure!(raw::read_frame(&mut first).await?.connack().is_some());
        let mut second = raw::tls(gh.listeners.mqtts, tls.clone()).await?;
        raw::send(&mut second, &connect).await?;
        let ack = raw::read_frame(&mut second).await?;
        ensure!(
            matches!(ack.connack(), Some((_, 0))),
            "the second connection got {ack:?}"
        );
        let frames = raw::read_until_closed(&mut first, WAIT).await?.frames()?;
        ensure!(
            frames.iter().any(|f| f.disconnect_reason() == Some(0x8e)),
            "the first connection (resume: {resume}) got {frames:?}, expected DISCONNECT 0x8E"
        );
    }
    Ok(())
}

#[tokio::test]
async fn will_outside_policy_is_not_published() -> Result<()> {
    // A will is a deferred PUBLISH: it must not smuggle a message past the gate.
    let gh = Gatehouse::start_default().await?;
    let addr = gh.listeners.mqtts;
    let mut valve = V5::connect_as(addr, gh.client_tls("valve-2")?, "valve-2").await?;
    valve
        .subscribe("devices/valve-2/#", Q5::AtLeastOnce)
        .await?;
    let mut o = support::clients::v5_options(addr, gh.client_tls("sensor-3")?, "sensor-3");
    o.set_last_will(p5::LastWill::new(
        "devices/valve-2/cmd",
        "open",
        Q5::AtLeastOnce,
        false,
        None,
    ));
    let (sneaky, _) = V5::connect(o).await?;
    drop(sneaky);
    // The gate's refusal of the will is counted once the broker has handled it.
    gh.wait_metric("gatehouse_gate_denials_total{action=\"publish\"}", 1.0)
        .await?;
    valve
        .client
        .publish("devices/valve-2/state", Q5::AtLeastOnce, false, "closed")
        .await?;
    let before = valve.publishes_until(b"closed").await?;
    ensure!(
        before.is_empty(),
        "a will outside the device's policy was delivered: {before:?}"
    );
    Ok(())
}

#[tokio::test]
async fn too_many_unreleased_qos2_messages_exceed_the_receive_maximum() -> Result<()> {
    // The broker advertises Receive Maximum 64; a client that leaves more QoS 2 messages
    // unreleased is cut off with 0x93 instead of growing the broker's state.
    let gh = Gatehouse::start(Options::extra(LAB_POLICY)).await?;
    let mut s = raw::tls(gh.listeners.mqtts, gh.client_tls("hoarder")?).await?;
    raw::handshake_v5(&mut s, "hoarder").await?;
    let mut burst = Vec::new();
    for id in 1..=65u16 {
        let mut body = raw::string("lab/hoard");
        body.extend(id.to_be_bytes());
        body.push(0);
        body.push(b'x');
        burst.extend(raw::packet(0x34, &body));
    }
    raw::send(&mut s, &burst).await?;
    let frames = raw::read_until_closed(&mut s, WAIT).await?.frames()?;
    let recs = frames.iter().filter(|f| f.kind() == 5).count();
    ensure!(recs == 64, "{recs} PUBRECs before the limit");
    ensure!(
        frames.last().and_then(|f| f.disconnect_reason()) == Some(0x93),
        "the 65th unreleased QoS 2 message was answered with {:?}",
        frames.last()
    );
    Ok(())
}

/// The reason string (property 0x1F) of a 5.0 CONNACK body, if it has one.
fn connack_reason_string(body: &[u8]) -> Option<String> {
    // Flags, reason code, then the property length (a one-byte varint here).
    let len = usize::from(*body.get(2)?);
    let mut props = body.get(3..3 + len)?;
    while let Some((&id, rest)) = props.split_first() {
        let n = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
        let value = rest.get(2..2 + n)?;
        if id == 0x1F {
            return String::from_utf8(value.to_vec()).ok();
        }
        props = rest.get(2 + n..)?;
    }
    None
}

/// A 3.1.1 CONNECT with no client id and the clean session flag as given.
fn connect_v311_without_client_id(clean_session: bool) -> Vec<u8> {
    let mut body = raw::string("MQTT");
    body.push(4);
    body.push(if clean_session { 0x02 } else { 0x00 });
    body.extend(60u16.to_be_bytes());
    body.extend(raw::string(""));
    raw::packet(0x10, &body)
}

#[tokio::test]
async fn v311_empty_client_id_without_clean_session_is_identifier_rejected() -> Result<()> {
    let gh = Gatehouse::start_default().await?;
    let tls = gh.client_tls("nameless")?;

    // MQTT-3.1.3-8: CONNACK return code 2 (identifier rejected), then the close.
    let mut s = raw::tls(gh.listeners.mqtts, tls.clone()).await?;
    raw::send(&mut s, &connect_v311_without_client_id(false)).await?;
    let closed = raw::read_until_closed(&mut s, WAIT).await?;
    let frames = closed.frames()?;
    ensure!(
        frames.iter().map(raw::Frame::connack).collect::<Vec<_>>() == [Some((false, 2))],
        "answered with {frames:?}"
    );

    // With a clean session the empty id is fine: the device id is assigned.
    let mut s = raw::tls(gh.listeners.mqtts, tls).await?;
    raw::send(&mut s, &connect_v311_without_client_id(true)).await?;
    let ack = raw::read_frame(&mut s).await?;
    ensure!(ack.connack() == Some((false, 0)), "answered with {ack:?}");
    gh.wait_metric(
        "gatehouse_connections_refused_total{reason=\"empty_client_id_without_clean_session\"}",
        1.0,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn client_id_refusal_names_the_credential_used() -> Result<()> {
    let hash = {
        let mut child = tokio::process::Command::new(support::binary())
            .arg("passwd")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        tokio::io::AsyncWriteExt::write_all(&mut stdin, b"s3cret-meter\n").await?;
        drop(stdin);
        let out = child.wait_with_output().await?;
        ensure!(out.status.success(), "gatehouse passwd failed");
        String::from_utf8(out.stdout)?.trim().to_owned()
    };
    let gh = Gatehouse::start(Options {
        plain: true,
        extra: format!("[[legacy.users]]\nusername = \"legacy-1\"\npassword_hash = '{hash}'\n"),
        no_operator: false,
    })
    .await?;

    // A certificate for "meter-1", a client id of someone else.
    let mut s = raw::tls(gh.listeners.mqtts, gh.client_tls("meter-1")?).await?;
    raw::send(&mut s, &raw::connect_v5("meter-2")).await?;
    let ack = raw::read_frame(&mut s).await?;
    ensure!(ack.connack().map(|a| a.1) == Some(0x85), "{ack:?}");
    let why = connack_reason_string(&ack.body).context("no reason string")?;
    ensure!(why.contains("the certificate"), "{why:?}");

    // The right password for "legacy-1", a client id of someone else: the refusal
    // names the user name, not a certificate there is none of.
    let plain = gh.listeners.mqtt.context("no plain listener")?;
    let mut s = tokio::net::TcpStream::connect(plain).await?;
    raw::send(
        &mut s,
        &raw::connect_v5_password("meter-2", "legacy-1", "s3cret-meter"),
    )
    .await?;
    let ack = raw::read_frame(&mut s).await?;
    ensure!(ack.connack().map(|a| a.1) == Some(0x85), "{ack:?}");
    let why = connack_reason_string(&ack.body).context("no reason string")?;
    ensure!(
        why.contains("the user name") && !why.contains("certificate"),
        "{why:?}"
    );
    Ok(())
}
