//! The hooks revocation and trust build on: a gate change reaches sessions that are
//! already open, and an operator can end a device's live sessions. Clients are rumqttc.

mod support;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, ensure};
use gatehouse_broker::{
    AllowAll, BrokerConfig, Decision, Gate, PublishContext, StaticPolicy, TopicPattern,
};
use gatehouse_types::{Identity, TopicFilter};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5 as p5;
use support::clients::{V4, V5};
use support::{TestBroker, device};

fn patterns(list: &[&str]) -> Result<Vec<TopicPattern>> {
    Ok(list
        .iter()
        .map(|p| TopicPattern::new(*p))
        .collect::<Result<_, _>>()?)
}

/// Everyone may publish anywhere below `devices/` and `lab/`; subscriptions as given.
fn policy(subscribe: &[&str]) -> Result<StaticPolicy> {
    Ok(StaticPolicy {
        publish: patterns(&["devices/#", "lab/#"])?,
        subscribe: patterns(subscribe)?,
        ..StaticPolicy::default()
    })
}

#[tokio::test]
async fn gate_change_removes_subscriptions_on_open_sessions() -> Result<()> {
    let tb = TestBroker::start(
        BrokerConfig::default(),
        Arc::new(policy(&["devices/{device}/#", "lab/#"])?),
    )
    .await?;
    let mut sub5 = V5::connect_as(tb.addr, tb.client_tls("sub5")?, "sub5").await?;
    sub5.subscribe("lab/news", Q5::AtLeastOnce).await?;
    sub5.subscribe("devices/sub5/inbox", Q5::AtLeastOnce)
        .await?;
    let mut sub4 = V4::connect_as(tb.addr, tb.client_tls("sub4")?, "sub4").await?;
    sub4.subscribe("lab/news", rumqttc::QoS::AtLeastOnce)
        .await?;
    sub4.subscribe("devices/sub4/inbox", rumqttc::QoS::AtLeastOnce)
        .await?;
    let mut publisher = V5::connect_as(tb.addr, tb.client_tls("pub")?, "pub").await?;
    let mut publish = async |topic: &str, payload: &str| -> Result<()> {
        publisher
            .client
            .publish(topic, Q5::AtLeastOnce, false, payload.to_owned())
            .await?;
        let ack = publisher.puback().await?;
        ensure!(
            ack.reason == p5::PubAckReason::Success,
            "publish to {topic} refused: {ack:?}"
        );
        Ok(())
    };

    publish("lab/news", "before").await?;
    ensure!(sub5.publish().await?.payload.as_ref() == b"before");
    ensure!(sub4.publish().await?.payload.as_ref() == b"before");

    // The new gate no longer allows subscriptions to lab/ (publishing there still is).
    tb.broker
        .set_gate(Arc::new(policy(&["devices/{device}/#"])?));
    publish("lab/news", "after").await?;
    publish("devices/sub5/inbox", "marker5").await?;
    publish("devices/sub4/inbox", "marker4").await?;
    // A 5.0 session is told on its notice topic; nothing else reaches it.
    let before = sub5.publishes_until(b"marker5").await?;
    ensure!(
        before.len() == 1 && before[0].topic.ends_with(b"/notice"),
        "an open 5.0 session still received {before:?} after the gate removed its subscription"
    );
    let before = sub4.publishes_until(b"marker4").await?;
    ensure!(
        before.is_empty(),
        "an open 3.1.1 session still received {before:?} after the gate removed its subscription"
    );

    // And the session may not take it back.
    sub5.client.subscribe("lab/news", Q5::AtLeastOnce).await?;
    let codes = sub5.suback().await?;
    ensure!(
        codes == [p5::SubscribeReasonCode::NotAuthorized],
        "re-subscribing got {codes:?}"
    );
    Ok(())
}

/// A gate whose verdict on one device can be flipped, for `reevaluate`.
#[derive(Debug, Default)]
struct Switch {
    lab_closed_for_a: AtomicBool,
}

impl Gate for Switch {
    fn connect(&self, _: &Identity) -> Decision {
        Decision::Allow
    }
    fn subscribe(&self, id: &Identity, filter: &TopicFilter) -> Decision {
        if id.device.as_str() == "a"
            && filter.match_filter().starts_with("lab/")
            && self.lab_closed_for_a.load(Ordering::SeqCst)
        {
            Decision::Deny(Cow::Borrowed("closed"))
        } else {
            Decision::Allow
        }
    }
    fn publish(&self, _: &Identity, _: &PublishContext<'_>) -> Decision {
        Decision::Allow
    }
}

#[tokio::test]
async fn reevaluate_applies_a_changed_verdict_to_one_device_only() -> Result<()> {
    let gate = Arc::new(Switch::default());
    let tb = TestBroker::start(BrokerConfig::default(), gate.clone()).await?;
    let mut a = V5::connect_as(tb.addr, tb.client_tls("a")?, "a").await?;
    let mut b = V5::connect_as(tb.addr, tb.client_tls("b")?, "b").await?;
    a.subscribe("lab/x", Q5::AtLeastOnce).await?;
    a.subscribe("devices/a/in", Q5::AtLeastOnce).await?;
    b.subscribe("lab/x", Q5::AtLeastOnce).await?;
    let publisher = V5::connect_as(tb.addr, tb.client_tls("p")?, "p").await?;

    gate.lab_closed_for_a.store(true, Ordering::SeqCst);
    let removed = tb.broker.reevaluate(Some(&device("a")?));
    ensure!(removed == 1, "reevaluate removed {removed} subscriptions");

    publisher
        .client
        .publish("lab/x", Q5::AtLeastOnce, false, "news")
        .await?;
    publisher
        .client
        .publish("devices/a/in", Q5::AtLeastOnce, false, "marker")
        .await?;
    ensure!(b.publish().await?.payload.as_ref() == b"news");
    let before = a.publishes_until(b"marker").await?;
    ensure!(
        before.len() == 1 && before[0].topic.as_ref() == b"$gatehouse/a/notice",
        "device a still received {before:?}"
    );
    Ok(())
}

#[tokio::test]
async fn disconnect_device_ends_its_live_session_only() -> Result<()> {
    let tb = TestBroker::start(BrokerConfig::default(), Arc::new(AllowAll)).await?;
    let mut victim = V5::connect_as(tb.addr, tb.client_tls("victim")?, "victim").await?;
    let mut bystander = V5::connect_as(tb.addr, tb.client_tls("bystander")?, "bystander").await?;
    bystander.subscribe("lab/#", Q5::AtLeastOnce).await?;

    let n = tb
        .broker
        .disconnect_device(&device("victim")?, "certificate revoked");
    ensure!(n == 1, "disconnect_device reached {n} sessions");
    let reason = victim.server_disconnect().await?;
    ensure!(
        reason == Some(p5::DisconnectReasonCode::AdministrativeAction),
        "the session ended with {reason:?}, expected DISCONNECT 0x98"
    );

    let publisher = V5::connect_as(tb.addr, tb.client_tls("p")?, "p").await?;
    publisher
        .client
        .publish("lab/still-up", Q5::AtLeastOnce, false, "hello")
        .await?;
    ensure!(bystander.publish().await?.payload.as_ref() == b"hello");
    Ok(())
}

#[tokio::test]
async fn gate_that_no_longer_admits_a_device_disconnects_it_and_refuses_it() -> Result<()> {
    let tb = TestBroker::start(BrokerConfig::default(), Arc::new(policy(&["lab/#"])?)).await?;
    let mut doomed = V5::connect_as(tb.addr, tb.client_tls("doomed")?, "doomed").await?;
    let mut fine = V5::connect_as(tb.addr, tb.client_tls("fine")?, "fine").await?;
    fine.subscribe("lab/#", Q5::AtLeastOnce).await?;

    let mut blocked = policy(&["lab/#"])?;
    blocked.blocked = vec![device("doomed")?];
    tb.broker.set_gate(Arc::new(blocked));
    let reason = doomed.server_disconnect().await?;
    ensure!(
        reason == Some(p5::DisconnectReasonCode::NotAuthorized),
        "the blocked session ended with {reason:?}, expected DISCONNECT 0x87"
    );

    let mut again = V5::spawn(support::clients::v5_options(
        tb.addr,
        tb.client_tls("doomed")?,
        "doomed",
    ));
    let err = again.refused().await?;
    ensure!(
        matches!(
            err,
            rumqttc::v5::ConnectionError::ConnectionRefused(p5::ConnectReturnCode::NotAuthorized)
        ),
        "reconnecting got {err:?}"
    );

    let publisher = V5::connect_as(tb.addr, tb.client_tls("p")?, "p").await?;
    publisher
        .client
        .publish("lab/ok", Q5::AtLeastOnce, false, "still served")
        .await?;
    ensure!(fine.publish().await?.payload.as_ref() == b"still served");
    fine.no_publish_for(Duration::from_millis(100)).await?;
    Ok(())
}
