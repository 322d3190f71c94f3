//! Topic aliases from the broker to a 5.0 client (MQTT 5.0 §3.3.2.3.4): never more than
//! the client's Topic Alias Maximum, none for a client that set none, and every topic
//! still arrives whole for a client that resolves them (rumqttc).

mod support;

#[path = "../../gatehouse/tests/support/raw.rs"]
#[allow(dead_code)]
mod raw;

use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use bytes::BytesMut;
use gatehouse_broker::{AllowAll, BrokerConfig};
use gatehouse_mqtt::{Packet, ProtocolVersion, decode};
use prometheus_client::registry::Registry;
use rumqttc::v5::mqttbytes::QoS as Q5;
use support::clients::{V5, v5_options};
use support::{TestBroker, WAIT};
use tokio::io::AsyncReadExt;

const TOPICS: [&str; 3] = [
    "factory/hall-7/line-3/press-12/hydraulics/pressure",
    "factory/hall-7/line-3/press-12/hydraulics/temperature",
    "factory/hall-7/line-3/press-12/motor/current",
];

/// A 5.0 CONNECT for `client_id` with this Topic Alias Maximum (none when `None`).
fn connect(client_id: &str, alias_max: Option<u16>) -> Vec<u8> {
    let mut body = raw::string("MQTT");
    body.extend([5, 0x02, 0, 60]);
    let props: Vec<u8> = alias_max
        .map(|m| [&[0x22u8][..], &m.to_be_bytes()].concat())
        .unwrap_or_default();
    body.extend(raw::varint(props.len()));
    body.extend(props);
    body.extend(raw::string(client_id));
    raw::packet(0x10, &body)
}

/// Reads PUBLISH packets until `n` have come: (topic as sent, topic alias, payload).
async fn publishes<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    n: usize,
) -> Result<Vec<(String, Option<u16>, Vec<u8>)>> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while out.len() < n {
        match decode(&mut buf, ProtocolVersion::V5, u32::MAX)? {
            Some(Packet::Publish(p)) => {
                out.push((p.topic, p.properties.topic_alias, p.payload.to_vec()))
            }
            Some(other) => bail!("unexpected {other:?}"),
            None => {
                let read = tokio::time::timeout_at(deadline, s.read_buf(&mut buf))
                    .await
                    .context("no PUBLISH")??;
                ensure!(read > 0, "closed after {} publishes", out.len());
            }
        }
    }
    Ok(out)
}

fn saved(tb: &TestBroker) -> Result<f64> {
    let mut registry = Registry::default();
    tb.broker.metrics().register(&mut registry, tb.broker.tap());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("gatehouse_topic_alias_bytes_saved_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

/// Publishes three rounds over the three topics, payload "round/topic".
async fn three_rounds(publisher: &V5) -> Result<()> {
    for round in 0..3 {
        for (i, t) in TOPICS.iter().enumerate() {
            publisher
                .client
                .publish(*t, Q5::AtMostOnce, false, format!("{round}/{i}"))
                .await?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn topic_aliases_to_a_client_stay_within_its_maximum() -> Result<()> {
    let tb = TestBroker::start(BrokerConfig::default(), Arc::new(AllowAll)).await?;
    let mut sub = raw::tls(tb.addr, tb.client_tls("dashboard")?).await?;
    raw::send(&mut sub, &connect("dashboard", Some(2))).await?;
    ensure!(raw::read_frame(&mut sub).await?.connack() == Some((false, 0)));
    let mut body = vec![0, 1, 0];
    body.extend(raw::string("factory/#"));
    body.push(0);
    raw::send(&mut sub, &raw::packet(0x82, &body)).await?;
    ensure!(raw::read_frame(&mut sub).await?.kind() == 9);

    let publisher = V5::connect_as(tb.addr, tb.client_tls("press-12")?, "press-12").await?;
    three_rounds(&publisher).await?;
    let got = publishes(&mut sub, 9).await?;

    // The first two topics get aliases 1 and 2 with their first message and are sent
    // as the alias alone after; the third, past the maximum of 2, always in full.
    let mut expected = Vec::new();
    for round in 0..3 {
        for (i, t) in TOPICS.iter().enumerate() {
            let payload = format!("{round}/{i}").into_bytes();
            expected.push(match (i, round) {
                (0 | 1, 0) => (t.to_string(), Some(i as u16 + 1), payload),
                (0 | 1, _) => (String::new(), Some(i as u16 + 1), payload),
                _ => (t.to_string(), None, payload),
            });
        }
    }
    ensure!(got == expected, "got {got:#?}");
    let want: usize = TOPICS[..2].iter().map(|t| 2 * (t.len() - 3)).sum();
    ensure!(
        saved(&tb)? == want as f64,
        "saved {} bytes, expected {want}",
        saved(&tb)?
    );

    // A client that set no maximum gets no alias.
    let mut plain = raw::tls(tb.addr, tb.client_tls("plain")?).await?;
    raw::send(&mut plain, &connect("plain", None)).await?;
    ensure!(raw::read_frame(&mut plain).await?.connack() == Some((false, 0)));
    let mut body = vec![0, 1, 0];
    body.extend(raw::string("factory/#"));
    body.push(0);
    raw::send(&mut plain, &raw::packet(0x82, &body)).await?;
    ensure!(raw::read_frame(&mut plain).await?.kind() == 9);
    three_rounds(&publisher).await?;
    for (topic, alias, _) in publishes(&mut plain, 9).await? {
        ensure!(alias.is_none() && !topic.is_empty(), "{topic:?} {alias:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_real_client_receives_every_topic_through_its_aliases() -> Result<()> {
    let tb = TestBroker::start(BrokerConfig::default(), Arc::new(AllowAll)).await?;
    let mut options = v5_options(tb.addr, tb.client_tls("dashboard")?, "dashboard");
    options.set_topic_alias_max(Some(8));
    let (mut sub, _) = V5::connect(options).await?;
    sub.subscribe("factory/#", Q5::AtMostOnce).await?;
    let publisher = V5::connect_as(tb.addr, tb.client_tls("press-12")?, "press-12").await?;
    three_rounds(&publisher).await?;
    // rumqttc 0.25 hands the application the PUBLISH as received, alias and all: the
    // application keeps the alias table, as here.
    let mut table = std::collections::HashMap::new();
    for round in 0..3 {
        for (i, t) in TOPICS.iter().enumerate() {
            let p = sub.publish().await?;
            let alias = p.properties.as_ref().and_then(|p| p.topic_alias);
            let topic = match alias {
                Some(a) if p.topic.is_empty() => table.get(&a).cloned().context("unknown alias")?,
                Some(a) => {
                    table.insert(a, p.topic.clone());
                    p.topic.clone()
                }
                None => p.topic.clone(),
            };
            ensure!(
                topic.as_ref() == t.as_bytes()
                    && p.payload.as_ref() == format!("{round}/{i}").as_bytes(),
                "round {round}, topic {i}: {p:?}"
            );
        }
    }
    ensure!(table.len() == 3, "aliases used: {table:?}");
    ensure!(saved(&tb)? > 0.0, "no bytes saved");
    Ok(())
}
