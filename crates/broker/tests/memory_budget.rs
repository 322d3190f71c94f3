//! Subscribers that stop reading cannot make the broker hold more than its limits: each
//! session's queue is bounded in bytes, all sessions together by the message memory
//! budget, and when the budget is spent QoS 0 goes first and a 5.0 publisher is told
//! 0x97 (quota exceeded) instead of having its message dropped on the way. The broker
//! gives everything back when the slow sessions go, and serves on.
//!
//! Slow consumers are rumqttc clients whose event loop is polled until their SUBACK and
//! never again: they stop reading, as a stalled device does.

mod support;

use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use gatehouse_broker::{AllowAll, BrokerConfig, Limits};
use prometheus_client::registry::Registry;
use rumqttc::v5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5 as p5;
use support::clients::{V5, v5_options};
use support::{TestBroker, WAIT};

const KIB: usize = 1024;
/// The payload of every flood message.
const PAYLOAD: usize = 4 * KIB;

async fn broker(max_queued_bytes: usize, message_memory_budget: usize) -> Result<TestBroker> {
    let config = BrokerConfig {
        limits: Limits {
            max_packet_size: 16 * KIB as u32,
            max_queued_bytes,
            message_memory_budget,
            ..Limits::default()
        },
        ..BrokerConfig::default()
    };
    TestBroker::start(config, Arc::new(AllowAll)).await
}

/// The broker's metrics as `/metrics` shows them.
fn metrics(tb: &TestBroker) -> Result<String> {
    let mut registry = Registry::default();
    tb.broker.metrics().register(&mut registry, tb.broker.tap());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text)
}

/// One sample's value (0 when absent).
fn metric(tb: &TestBroker, sample: &str) -> Result<f64> {
    let text = metrics(tb)?;
    Ok(text
        .lines()
        .find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0))
}

/// Bytes of messages the broker holds for all sessions.
fn held(tb: &TestBroker) -> Result<usize> {
    Ok(metric(tb, "gatehouse_message_memory_used_bytes")? as usize)
}

/// Waits until the broker holds no message bytes at all.
async fn wait_until_nothing_is_held(tb: &TestBroker) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if held(tb)? == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the broker still holds {} bytes", held(tb)?);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A subscriber to `filter` that reads until its SUBACK and then never again. Dropping
/// both halves closes its connection.
async fn slow_consumer(
    tb: &TestBroker,
    device: &str,
    filter: &str,
) -> Result<(v5::AsyncClient, v5::EventLoop)> {
    let (client, mut eventloop) =
        v5::AsyncClient::new(v5_options(tb.addr, tb.client_tls(device)?, device), 10);
    client.subscribe(filter, Q5::AtLeastOnce).await?;
    tokio::time::timeout(WAIT, async {
        loop {
            if let v5::Event::Incoming(p5::Packet::SubAck(a)) = eventloop.poll().await? {
                ensure!(
                    a.return_codes == [p5::SubscribeReasonCode::Success(Q5::AtLeastOnce)],
                    "{a:?}"
                );
                return Ok(());
            }
        }
    })
    .await
    .context("no SUBACK")??;
    Ok((client, eventloop))
}

/// Publishes one QoS 1 flood message and returns its PUBACK reason.
async fn publish_qos1(publisher: &mut V5, topic: &str, n: usize) -> Result<p5::PubAckReason> {
    let mut payload = vec![b'x'; PAYLOAD];
    payload[..8].copy_from_slice(&(n as u64).to_be_bytes());
    publisher
        .client
        .publish(topic, Q5::AtLeastOnce, false, payload)
        .await?;
    Ok(publisher.puback().await?.reason)
}

#[tokio::test]
async fn slow_consumer_queue_is_bounded_in_bytes() -> Result<()> {
    let session_limit = 64 * KIB;
    let tb = broker(session_limit, 64 * session_limit).await?;
    let slow = slow_consumer(&tb, "stalled", "lab/slow").await?;
    let mut publisher = V5::connect_as(tb.addr, tb.client_tls("sensor")?, "sensor").await?;

    // 60 × 4 KiB for a subscriber that reads nothing: far more than its 64 KiB.
    for n in 0..60 {
        let reason = publish_qos1(&mut publisher, "lab/slow", n).await?;
        ensure!(
            reason == p5::PubAckReason::Success,
            "message {n}: {reason:?}"
        );
    }
    // Every PUBACK came after its message was routed: the queue is as full as it gets.
    let held_now = held(&tb)?;
    ensure!(held_now > 0, "the stalled session holds nothing");
    ensure!(
        held_now <= session_limit,
        "the stalled session holds {held_now} bytes, over its {session_limit}"
    );
    let dropped = metric(
        &tb,
        "gatehouse_messages_dropped_total{reason=\"session_queue_bytes\"}",
    )?;
    ensure!(dropped >= 40.0, "only {dropped} deliveries were dropped");

    // The session goes, and with it everything it held.
    drop(slow);
    wait_until_nothing_is_held(&tb).await?;
    Ok(())
}

#[tokio::test]
async fn slow_consumers_cannot_grow_broker_memory_past_its_budget() -> Result<()> {
    let session_limit = 64 * KIB;
    let budget = 256 * KIB;
    let tb = broker(session_limit, budget).await?;
    // Six stalled subscribers could hold 384 KiB between them; the budget is 256 KiB.
    let mut stalled = Vec::new();
    for i in 0..6 {
        stalled.push(slow_consumer(&tb, &format!("stalled-{i}"), "lab/flood").await?);
    }
    let mut healthy = V5::connect_as(tb.addr, tb.client_tls("healthy")?, "healthy").await?;
    healthy.subscribe("lab/flood", Q5::AtMostOnce).await?;
    let mut publisher = V5::connect_as(tb.addr, tb.client_tls("sensor")?, "sensor").await?;

    // QoS 1 until the broker says its quota is exceeded.
    let mut refused_at = None;
    for n in 0..200 {
        match publish_qos1(&mut publisher, "lab/flood", n).await? {
            p5::PubAckReason::Success => {}
            p5::PubAckReason::QuotaExceeded => {
                refused_at = Some(n);
                break;
            }
            other => bail!("message {n}: {other:?}"),
        }
        let now = held(&tb)?;
        ensure!(
            now <= budget,
            "after message {n} the broker holds {now} bytes"
        );
    }
    let refused_at = refused_at.context("no publish was refused with 0x97")?;
    ensure!(refused_at >= 5, "refused after only {refused_at} messages");
    let now = held(&tb)?;
    ensure!(
        now <= budget,
        "the broker holds {now} bytes, budget {budget}"
    );
    ensure!(
        metric(
            &tb,
            "gatehouse_publishes_refused_total{reason=\"memory_budget\"}"
        )? >= 1.0
    );

    // With the budget nearly spent, QoS 0 goes first: a QoS 0 message reaches no one,
    // not even the subscriber that reads (the QoS 1 PUBACK after it shows it was routed).
    let before = metric(
        &tb,
        "gatehouse_messages_dropped_total{reason=\"memory_budget\"}",
    )?;
    publisher
        .client
        .publish("lab/flood", Q5::AtMostOnce, false, vec![b'0'; PAYLOAD])
        .await?;
    publish_qos1(&mut publisher, "lab/flood", 10_000).await?;
    let after = metric(
        &tb,
        "gatehouse_messages_dropped_total{reason=\"memory_budget\"}",
    )?;
    ensure!(
        after > before,
        "the QoS 0 message was not dropped for the budget ({before} → {after})"
    );

    // The stalled sessions go: the memory comes back and the broker serves as before.
    stalled.clear();
    wait_until_nothing_is_held(&tb).await?;
    publisher
        .client
        .publish("lab/flood", Q5::AtLeastOnce, false, "after the flood")
        .await?;
    let ack = publisher.puback().await?;
    ensure!(ack.reason == p5::PubAckReason::Success, "{ack:?}");
    healthy.publishes_until(b"after the flood").await?;
    Ok(())
}
