//! Graceful shutdown on SIGTERM: 5.0 clients are told why (DISCONNECT 0x8B), and
//! persistent sessions, their queued messages and retained messages survive a restart.

mod support;

use anyhow::{Result, ensure};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5 as p5;
use support::clients::{V4, V5, v4_options, v5_options};
use support::{Gatehouse, LAB_POLICY, Options, WAIT, raw};

#[tokio::test]
async fn sigterm_disconnects_with_0x8b_and_a_restart_keeps_sessions_and_retained() -> Result<()> {
    let mut gh = Gatehouse::start(Options::extra(LAB_POLICY)).await?;
    let addr = gh.listeners.mqtts;
    let keeper_tls = gh.client_tls("keeper")?;
    let keeper4_tls = gh.client_tls("keeper-4")?;
    let keeper_options = |addr, clean| {
        let mut o = v5_options(addr, keeper_tls.clone(), "keeper");
        o.set_clean_start(clean);
        o.set_session_expiry_interval(Some(3600));
        o
    };
    let keeper4_options = |addr| {
        let mut o = v4_options(addr, keeper4_tls.clone(), "keeper-4");
        o.set_clean_session(false);
        o
    };

    // Persistent sessions (5.0 and 3.1.1) that go offline.
    let (mut keeper, _) = V5::connect(keeper_options(addr, true)).await?;
    keeper.subscribe("lab/persist/#", Q5::AtLeastOnce).await?;
    keeper.disconnect().await?;
    let (mut keeper4, _) = V4::connect(keeper4_options(addr)).await?;
    keeper4
        .subscribe("lab/persist/#", rumqttc::QoS::AtLeastOnce)
        .await?;
    keeper4.disconnect().await?;

    // A message queued for them, and a retained message.
    let mut publisher = V5::connect_as(addr, gh.client_tls("pub")?, "pub").await?;
    for (topic, payload, retain) in [
        ("lab/persist/a", "queued-while-offline", false),
        ("lab/retained", "last-known-value", true),
    ] {
        publisher
            .client
            .publish(topic, Q5::AtLeastOnce, retain, payload)
            .await?;
        let ack = publisher.puback().await?;
        ensure!(ack.reason == p5::PubAckReason::Success, "{ack:?}");
    }
    drop(publisher);

    // A 5.0 client online at shutdown, read byte for byte.
    let mut online = raw::tls(addr, gh.client_tls("online")?).await?;
    raw::handshake_v5(&mut online, "online").await?;

    let status = gh.terminate().await?;
    ensure!(
        status.success(),
        "gatehouse exited with {status} on SIGTERM"
    );
    let frames = raw::read_until_closed(&mut online, WAIT).await?.frames()?;
    ensure!(
        frames.iter().any(|f| f.disconnect_reason() == Some(0x8b)),
        "an online 5.0 client got {frames:?} at shutdown, expected DISCONNECT 0x8B"
    );
    ensure!(
        gh.data_dir().join("broker").join("state.bin").is_file(),
        "no saved state after shutdown"
    );

    // Same data directory, new process, new ports; the same CA, so old certificates work.
    let gh = gh.restart().await?;
    let addr = gh.listeners.mqtts;
    let (mut keeper, ack) = V5::connect(keeper_options(addr, false)).await?;
    ensure!(
        ack.session_present,
        "5.0 session lost in the restart: {ack:?}"
    );
    let p = keeper.publish().await?;
    ensure!(p.payload.as_ref() == b"queued-while-offline", "got {p:?}");
    let (mut keeper4, ack) = V4::connect(keeper4_options(addr)).await?;
    ensure!(
        ack.session_present,
        "3.1.1 session lost in the restart: {ack:?}"
    );
    let p = keeper4.publish().await?;
    ensure!(p.payload.as_ref() == b"queued-while-offline", "got {p:?}");

    // Their subscriptions came back too.
    let mut publisher = V5::connect_as(addr, gh.client_tls("pub")?, "pub").await?;
    publisher
        .client
        .publish("lab/persist/b", Q5::AtLeastOnce, false, "after-restart")
        .await?;
    ensure!(keeper.publish().await?.payload.as_ref() == b"after-restart");
    ensure!(keeper4.publish().await?.payload.as_ref() == b"after-restart");

    // And the retained message.
    let mut late = V5::connect_as(addr, gh.client_tls("late")?, "late").await?;
    late.subscribe("lab/retained", Q5::AtLeastOnce).await?;
    let p = late.publish().await?;
    ensure!(
        p.payload.as_ref() == b"last-known-value" && p.retain,
        "got {p:?}"
    );
    publisher.puback().await?;
    Ok(())
}

#[tokio::test]
async fn a_client_library_sees_the_shutdown_reason() -> Result<()> {
    let mut gh = Gatehouse::start_default().await?;
    let mut c = V5::connect_as(gh.listeners.mqtts, gh.client_tls("listener")?, "listener").await?;
    gh.terminate().await?;
    let reason = c.server_disconnect().await?;
    ensure!(
        reason == Some(p5::DisconnectReasonCode::ServerShuttingDown),
        "rumqttc saw {reason:?} at shutdown, expected DISCONNECT 0x8B"
    );
    Ok(())
}

#[tokio::test]
async fn state_saved_periodically_survives_a_crash() -> Result<()> {
    let mut gh = Gatehouse::start(Options::extra(&format!(
        "{LAB_POLICY}\n[persistence]\nsave_interval = \"1s\"\n"
    )))
    .await?;
    let addr = gh.listeners.mqtts;
    let mut publisher = V5::connect_as(addr, gh.client_tls("pub")?, "pub").await?;
    publisher
        .client
        .publish("lab/durable", Q5::AtLeastOnce, true, "saved")
        .await?;
    publisher.puback().await?;
    // Wait for a periodic save that includes it.
    let state = gh.data_dir().join("broker").join("state.bin");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let saved = std::fs::read(&state).unwrap_or_default();
        if saved
            .windows(b"lab/durable".len())
            .any(|w| w == b"lab/durable")
        {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the retained message was not saved within {WAIT:?} with save_interval 1s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    gh.crash().await?;
    let gh = gh.restart().await?;
    let mut late = V5::connect_as(gh.listeners.mqtts, gh.client_tls("late")?, "late").await?;
    late.subscribe("lab/durable", Q5::AtLeastOnce).await?;
    let p = late.publish().await?;
    ensure!(p.payload.as_ref() == b"saved" && p.retain, "got {p:?}");
    Ok(())
}
