//! Tenants share one broker: a device id is unique only within its tenant, so nothing
//! may let one tenant's device reach, or be acted on as, another tenant's device of the
//! same id.

mod support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, ensure};
use gatehouse_broker::{BrokerConfig, StaticPolicy};
use rumqttc::v5::mqttbytes::QoS as Q5;
use support::clients::V5;
use support::{TestBroker, device_in};

#[tokio::test]
async fn disconnecting_a_device_spares_the_same_id_in_another_tenant() -> Result<()> {
    let tb = TestBroker::start(
        BrokerConfig::default(),
        Arc::new(StaticPolicy::default_policy()),
    )
    .await?;
    let acme = tb.tls_for(&tb.issue_in("acme", "pump-1")?)?;
    let globex = tb.tls_for(&tb.issue_in("globex", "pump-1")?)?;
    let mut revoked = V5::connect_as(tb.addr, acme, "pump-1").await?;
    let mut innocent = V5::connect_as(tb.addr, globex, "pump-1").await?;
    innocent
        .subscribe("devices/pump-1/#", Q5::AtLeastOnce)
        .await?;

    // The operator revokes acme's pump-1.
    tb.broker
        .disconnect_device(&device_in("acme", "pump-1")?, "certificate revoked");
    revoked.server_disconnect().await?;
    innocent
        .no_publish_for(Duration::from_millis(500))
        .await
        .map_err(|e| anyhow::anyhow!("globex/pump-1 was disconnected too: {e}"))?;
    Ok(())
}

#[tokio::test]
async fn same_device_id_in_two_tenants_does_not_share_topics() -> Result<()> {
    let tb = TestBroker::start(
        BrokerConfig::default(),
        Arc::new(StaticPolicy::default_policy()),
    )
    .await?;
    let acme = tb.tls_for(&tb.issue_in("acme", "pump-1")?)?;
    let globex = tb.tls_for(&tb.issue_in("globex", "pump-1")?)?;
    let mut eavesdropper = V5::connect_as(tb.addr, globex, "pump-1").await?;
    eavesdropper
        .subscribe("devices/pump-1/#", Q5::AtLeastOnce)
        .await?;
    // acme's pump-1 subscribes to its own namespace, so it must get its message back: a
    // broker that delivered nothing would not pass.
    let mut victim = V5::connect_as(tb.addr, acme, "pump-1").await?;
    victim
        .subscribe("devices/pump-1/#", Q5::AtLeastOnce)
        .await?;
    victim
        .client
        .publish("devices/pump-1/secret", Q5::AtLeastOnce, false, "acme data")
        .await?;
    let ack = victim.puback().await?;
    ensure!(
        ack.reason == rumqttc::v5::mqttbytes::v5::PubAckReason::Success,
        "{ack:?}"
    );
    let got = victim.publish().await?;
    ensure!(got.payload.as_ref() == b"acme data", "{got:?}");

    // After acme's message was routed, globex's pump-1 publishes in its own namespace:
    // that is the first (and only) message its subscription may see.
    eavesdropper
        .client
        .publish("devices/pump-1/own", Q5::AtLeastOnce, false, "globex data")
        .await?;
    let first = eavesdropper.publish().await?;
    ensure!(
        first.payload.as_ref() == b"globex data",
        "another tenant's device received acme's message: {first:?}"
    );
    eavesdropper
        .no_publish_for(Duration::from_millis(200))
        .await
        .map_err(|e| anyhow::anyhow!("another tenant's device received more: {e}"))?;
    Ok(())
}
