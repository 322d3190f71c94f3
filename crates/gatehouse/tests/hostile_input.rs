//! Hostile input over the mutual-TLS listener: garbage, truncated packets, absurd
//! lengths, CONNECT floods and idle connections. Each must cost the attacker its own
//! connection and nothing else.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5 as p5;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use support::clients::V5;
use support::{Gatehouse, LAB_POLICY, Options, WAIT, raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A subscriber and a publisher that prove the broker still serves others.
struct Steady {
    sub: V5,
    publisher: V5,
    n: usize,
}

impl Steady {
    async fn connect(gh: &Gatehouse) -> Result<Self> {
        let addr = gh.listeners.mqtts;
        let mut sub = V5::connect_as(addr, gh.client_tls("steady-sub")?, "steady-sub").await?;
        sub.subscribe("lab/steady", Q5::AtLeastOnce).await?;
        let publisher = V5::connect_as(addr, gh.client_tls("steady-pub")?, "steady-pub").await?;
        Ok(Self {
            sub,
            publisher,
            n: 0,
        })
    }

    /// One round trip through the broker.
    async fn round_trip(&mut self) -> Result<()> {
        self.n += 1;
        let payload = format!("ping-{}", self.n);
        self.publisher
            .client
            .publish("lab/steady", Q5::AtLeastOnce, false, payload.clone())
            .await?;
        let p = self.sub.publish().await.context("steady round trip")?;
        ensure!(p.payload.as_ref() == payload.as_bytes(), "got {p:?}");
        Ok(())
    }
}

/// A pseudo-random byte string (xorshift), the same on every run.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

#[tokio::test]
async fn garbage_input_closes_only_that_connection() -> Result<()> {
    let gh = Gatehouse::start(Options::extra(LAB_POLICY)).await?;
    let addr = gh.listeners.mqtts;
    let mut steady = Steady::connect(&gh).await?;
    let tls = gh.client_tls("vandal")?;

    // Not TLS at all.
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: gatehouse\r\n\r\n")
        .await?;
    raw::read_until_closed(&mut tcp, WAIT).await?;
    steady.round_trip().await?;

    // HTTP inside TLS.
    let mut s = raw::tls(addr, tls.clone()).await?;
    raw::send(&mut s, b"GET / HTTP/1.1\r\nHost: gatehouse\r\n\r\n").await?;
    let closed = raw::read_until_closed(&mut s, WAIT).await?;
    ensure!(
        closed.bytes.is_empty(),
        "answered HTTP with {:?}",
        closed.bytes
    );
    steady.round_trip().await?;

    // Noise after a good CONNECT.
    for seed in [1, 2, 3, 0x9e37_79b9_7f4a_7c15] {
        let mut s = raw::tls(addr, tls.clone()).await?;
        raw::handshake_v5(&mut s, "vandal").await?;
        // Ignore write errors: the server may close while we are still writing.
        let _ = raw::send(&mut s, &noise(8192, seed)).await;
        raw::read_until_closed(&mut s, WAIT).await?;
        steady.round_trip().await?;
    }

    // A CONNECT cut short, then the end of the stream.
    let connect = raw::connect_v5("vandal");
    let mut s = raw::tls(addr, tls.clone()).await?;
    raw::send(&mut s, &connect[..connect.len() / 2]).await?;
    s.shutdown().await?;
    raw::read_until_closed(&mut s, WAIT).await?;

    // A PUBLISH cut short after a good CONNECT, then the end of the stream.
    let publish = raw::publish_v5("lab/steady", &[0u8; 100]);
    let mut s = raw::tls(addr, tls.clone()).await?;
    raw::handshake_v5(&mut s, "vandal").await?;
    raw::send(&mut s, &publish[..20]).await?;
    s.shutdown().await?;
    raw::read_until_closed(&mut s, WAIT).await?;

    // A reserved packet type (0) and a PUBLISH with QoS 3.
    for bad in [&[0x00u8, 0x00][..], &[0x36, 0x03, 0x00, 0x01, b'a'][..]] {
        let mut s = raw::tls(addr, tls.clone()).await?;
        raw::handshake_v5(&mut s, "vandal").await?;
        raw::send(&mut s, bad).await?;
        let closed = raw::read_until_closed(&mut s, WAIT).await?;
        let frames = closed.frames()?;
        ensure!(
            frames.iter().any(|f| f.disconnect_reason() == Some(0x81)),
            "{bad:?} was answered with {frames:?}, expected DISCONNECT 0x81"
        );
    }

    steady.round_trip().await?;
    // Nothing from the vandal reached the subscriber.
    steady
        .sub
        .no_publish_for(Duration::from_millis(200))
        .await?;
    Ok(())
}

#[tokio::test]
async fn oversized_remaining_length_is_refused_without_buffering() -> Result<()> {
    let gh = Gatehouse::start(Options::extra(&format!(
        "{LAB_POLICY}\n[limits]\nmax_packet_size = \"64KiB\"\n"
    )))
    .await?;
    let addr = gh.listeners.mqtts;
    let mut steady = Steady::connect(&gh).await?;
    let tls = gh.client_tls("giant")?;
    // Remaining length 268,435,455: the largest MQTT allows (256 MiB).
    let huge = [0xff, 0xff, 0xff, 0x7f];

    // As the first packet: the connection is closed at once, not after 256 MiB.
    let mut s = raw::tls(addr, tls.clone()).await?;
    let mut first = vec![0x10];
    first.extend(huge);
    raw::send(&mut s, &first).await?;
    raw::read_until_closed(&mut s, WAIT).await?;

    // After CONNECT: DISCONNECT 0x95 (packet too large), then close.
    let mut s = raw::tls(addr, tls.clone()).await?;
    raw::handshake_v5(&mut s, "giant").await?;
    let mut publish = vec![0x30];
    publish.extend(huge);
    publish.extend(raw::string("lab/steady"));
    raw::send(&mut s, &publish).await?;
    let closed = raw::read_until_closed(&mut s, WAIT).await?;
    let frames = closed.frames()?;
    ensure!(
        frames.iter().any(|f| f.disconnect_reason() == Some(0x95)),
        "a 256 MiB PUBLISH header was answered with {frames:?}"
    );
    steady.round_trip().await?;

    // A whole PUBLISH above the configured limit (64 KiB), sent while we read.
    let mut s = raw::tls(addr, tls.clone()).await?;
    raw::handshake_v5(&mut s, "giant").await?;
    let (mut reader, mut writer) = tokio::io::split(s);
    let big = raw::publish_v5("lab/steady", &vec![b'x'; 100 * 1024]);
    let write = tokio::spawn(async move {
        let _ = writer.write_all(&big).await;
        let _ = writer.flush().await;
        writer
    });
    let closed = raw::read_until_closed(&mut reader, WAIT).await?;
    let _ = write.await;
    let frames = closed.frames()?;
    ensure!(
        frames.iter().any(|f| f.disconnect_reason() == Some(0x95)),
        "a 100 KiB PUBLISH over a 64 KiB limit was answered with {frames:?}"
    );

    steady.round_trip().await?;
    steady
        .sub
        .no_publish_for(Duration::from_millis(200))
        .await?;
    gh.wait_metric("gatehouse_protocol_errors_total{reason=\"0x95\"}", 2.0)
        .await?;
    Ok(())
}

/// One connection attempt from `source`: whether the TLS handshake completed.
async fn attempt(
    addr: SocketAddr,
    source: IpAddr,
    tls: Arc<ClientConfig>,
) -> Result<Option<tokio_rustls::client::TlsStream<TcpStream>>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(tls);
    let name = ServerName::IpAddress(addr.ip().into());
    match tokio::time::timeout(WAIT, connector.connect(name, tcp)).await {
        Ok(Ok(mut s)) => {
            // TLS 1.3 finishes on the client first: make sure the server kept it.
            let mut probe = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(200), s.read(&mut probe)).await {
                Ok(Ok(0)) | Ok(Err(_)) => Ok(None),
                _ => Ok(Some(s)),
            }
        }
        Ok(Err(_)) => Ok(None),
        Err(_) => anyhow::bail!("a flood handshake hung for {WAIT:?}"),
    }
}

#[tokio::test]
async fn connect_flood_does_not_starve_clients() -> Result<()> {
    const FLOOD: usize = 400;
    const AT_ONCE: usize = 50;
    const STEADY: usize = 100;
    let gh = Gatehouse::start(Options::extra(LAB_POLICY)).await?;
    let addr = gh.listeners.mqtts;

    // A well-behaved pair, connected before the flood, publishing throughout it.
    let mut sub = V5::connect_as(addr, gh.client_tls("steady-sub")?, "steady-sub").await?;
    sub.subscribe("lab/steady", Q5::AtLeastOnce).await?;
    let publisher = V5::connect_as(addr, gh.client_tls("steady-pub")?, "steady-pub").await?;
    let sender = tokio::spawn(async move {
        for i in 0..STEADY {
            publisher
                .client
                .publish("lab/steady", Q5::AtLeastOnce, false, i.to_string())
                .await?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::Ok(publisher)
    });

    // The flood comes from another loopback address, as one attacking host would.
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let tls = gh.client_tls("flooder")?;
    let gate = Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..FLOOD {
        let permit = gate.clone().acquire_owned().await?;
        let tls = tls.clone();
        tasks.spawn(async move {
            let r = attempt(addr, source, tls).await;
            drop(permit);
            r
        });
    }
    let mut admitted = Vec::new();
    let mut refused = 0usize;
    while let Some(r) = tasks.join_next().await {
        match r?? {
            Some(s) => admitted.push(s),
            None => refused += 1,
        }
    }
    eprintln!("flood: {} admitted, {refused} refused", admitted.len());
    ensure!(
        refused > 0,
        "all {FLOOD} connections from one source were admitted"
    );
    ensure!(!admitted.is_empty(), "the burst allowance admitted nobody");

    // The pair kept its throughput: every message, in order.
    for i in 0..STEADY {
        let p = sub
            .publish()
            .await
            .with_context(|| format!("message {i}"))?;
        ensure!(
            p.payload.as_ref() == i.to_string().as_bytes(),
            "expected {i}, got {p:?}"
        );
    }
    let _publisher = sender.await??;

    // Another source is not held back by the flooder's limit.
    let (_late, ack) = V5::connect(support::clients::v5_options(
        addr,
        gh.client_tls("late")?,
        "late",
    ))
    .await?;
    ensure!(!ack.session_present);
    let counted = gh
        .wait_metric(
            "gatehouse_connections_refused_total{reason=\"connect_rate_exceeded\"}",
            1.0,
        )
        .await?;
    ensure!(
        counted as usize >= refused,
        "{refused} refused by the client's count, {counted} in the metrics"
    );
    drop(admitted);
    Ok(())
}

#[tokio::test]
async fn idle_connection_without_connect_is_closed() -> Result<()> {
    let gh = Gatehouse::start(Options::extra(
        "[limits]\nconnect_timeout = \"1s\"\ntls_handshake_timeout = \"1s\"\n",
    ))
    .await?;
    let addr = gh.listeners.mqtts;
    let tls = gh.client_tls("idler")?;

    // TCP only: no ClientHello.
    let mut tcp = TcpStream::connect(addr).await?;
    // TLS up, but no CONNECT.
    let mut quiet = raw::tls(addr, tls.clone()).await?;
    // Half a CONNECT, then silence (slowloris).
    let mut slow = raw::tls(addr, tls.clone()).await?;
    let connect = raw::connect_v5("idler");
    raw::send(&mut slow, &connect[..5]).await?;

    let (a, b, c) = tokio::join!(
        raw::read_until_closed(&mut tcp, WAIT),
        raw::read_until_closed(&mut quiet, WAIT),
        raw::read_until_closed(&mut slow, WAIT),
    );
    ensure!(a?.bytes.is_empty());
    ensure!(b?.bytes.is_empty(), "answered a silent client");
    ensure!(c?.bytes.is_empty(), "answered half a CONNECT");

    gh.wait_metric(
        "gatehouse_tls_failures_total{reason=\"handshake_timeout\"}",
        1.0,
    )
    .await?;
    gh.wait_metric(
        "gatehouse_connections_refused_total{reason=\"connect_timeout\"}",
        2.0,
    )
    .await?;
    // And the listener still serves a normal client.
    let _ok = V5::connect_as(addr, tls, "idler").await?;
    Ok(())
}

#[tokio::test]
async fn connection_limit_refuses_extra_connections_and_frees_up() -> Result<()> {
    let gh = Gatehouse::start(Options::extra("[limits]\nmax_connections = 2\n")).await?;
    let addr = gh.listeners.mqtts;
    let a = V5::connect_as(addr, gh.client_tls("a")?, "a").await?;
    let _b = V5::connect_as(addr, gh.client_tls("b")?, "b").await?;
    let mut c = V5::spawn(support::clients::v5_options(addr, gh.client_tls("c")?, "c"));
    c.refused().await?;
    gh.wait_metric(
        "gatehouse_connections_refused_total{reason=\"max_connections\"}",
        1.0,
    )
    .await?;
    // When one leaves, its place is free again.
    a.disconnect().await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (mut c, ack) =
            match V5::connect(support::clients::v5_options(addr, gh.client_tls("c")?, "c")).await {
                Ok(x) => x,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    // The closed connection may not be counted out yet.
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
        ensure!(!ack.session_present);
        c.subscribe("devices/c/#", Q5::AtMostOnce).await?;
        return Ok(());
    }
}

/// A 5.0 property block (length first) of `n` user properties, each `name` = "".
fn user_properties(n: usize, name: &str) -> Vec<u8> {
    let mut props = Vec::with_capacity(n * (5 + name.len()));
    for _ in 0..n {
        props.push(0x26);
        props.extend(raw::string(name));
        props.extend(raw::string(""));
    }
    let mut block = raw::varint(props.len());
    block.extend(props);
    block
}

/// A 5.0 CONNECT carrying `n` user properties, and a will with `will` of them if given.
fn stuffed_connect(client_id: &str, n: usize, will: Option<usize>) -> Vec<u8> {
    let mut body = raw::string("MQTT");
    body.push(5);
    body.push(if will.is_some() { 0x06 } else { 0x02 });
    body.extend(60u16.to_be_bytes());
    body.extend(user_properties(n, ""));
    body.extend(raw::string(client_id));
    if let Some(w) = will {
        body.extend(user_properties(w, ""));
        body.extend(raw::string("lab/will"));
        body.extend(raw::string("gone"));
    }
    raw::packet(0x10, &body)
}

/// Sends `bytes` while reading, and returns what the server sent until it closed.
async fn send_and_read_until_closed(
    s: tokio_rustls::client::TlsStream<TcpStream>,
    bytes: Vec<u8>,
) -> Result<Vec<raw::Frame>> {
    let (mut reader, mut writer) = tokio::io::split(s);
    let write = tokio::spawn(async move {
        let _ = writer.write_all(&bytes).await;
        let _ = writer.flush().await;
        writer
    });
    let closed = raw::read_until_closed(&mut reader, WAIT).await?;
    let _ = write.await;
    closed.frames()
}

/// The server's resident set, in bytes.
fn rss(gh: &Gatehouse) -> Result<u64> {
    let pid = gh.pid().context("the server is not running")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kib * 1024)
}

#[tokio::test]
async fn property_stuffed_connect_is_refused() -> Result<()> {
    let gh = Gatehouse::start(Options::extra(LAB_POLICY)).await?;
    let addr = gh.listeners.mqtts;
    let mut steady = Steady::connect(&gh).await?;
    let tls = gh.client_tls("stuffer")?;

    // 156,000 empty user properties: a 780 KB CONNECT, inside the 1 MiB packet limit,
    // that would cost some 7 MiB decoded. Refused with CONNACK 0x95 (packet too large).
    let stuffed = stuffed_connect("stuffer", 156_000, None);
    ensure!(stuffed.len() > 780_000 && stuffed.len() < 1024 * 1024);
    let before = rss(&gh)?;
    for _ in 0..20 {
        let s = raw::tls(addr, tls.clone()).await?;
        let frames = send_and_read_until_closed(s, stuffed.clone()).await?;
        ensure!(
            frames.iter().map(raw::Frame::connack).collect::<Vec<_>>() == [Some((false, 0x95))],
            "a stuffed CONNECT was answered with {frames:?}"
        );
    }
    // Twenty of them leave nothing behind (each used to keep ~6.6 MiB).
    let after = rss(&gh)?;
    ensure!(
        after < before + 64 * 1024 * 1024,
        "RSS grew from {before} to {after} bytes"
    );
    steady.round_trip().await?;

    // The will's properties count with the CONNECT's: 20 + 13 is over 32.
    let s = raw::tls(addr, tls.clone()).await?;
    let frames = send_and_read_until_closed(s, stuffed_connect("stuffer", 20, Some(13))).await?;
    ensure!(
        frames.iter().any(|f| f.connack() == Some((false, 0x95))),
        "a CONNECT with a stuffed will was answered with {frames:?}"
    );
    // So do their bytes: 16 names of 600 bytes are over 8 KiB.
    let mut body = raw::string("MQTT");
    body.extend([5, 0x02, 0, 60]);
    body.extend(user_properties(16, &"n".repeat(600)));
    body.extend(raw::string("stuffer"));
    let s = raw::tls(addr, tls.clone()).await?;
    let frames = send_and_read_until_closed(s, raw::packet(0x10, &body)).await?;
    ensure!(
        frames.iter().any(|f| f.connack() == Some((false, 0x95))),
        "a CONNECT with 9.6 KB of user properties was answered with {frames:?}"
    );

    // After CONNECT: a stuffed PUBLISH or SUBSCRIBE ends the session with 0x95.
    let mut publish = raw::string("lab/steady");
    publish.extend(user_properties(33, ""));
    publish.extend(b"stuffed");
    let mut subscribe = vec![0, 1];
    subscribe.extend(user_properties(33, ""));
    subscribe.extend(raw::string("lab/#"));
    subscribe.push(0);
    for packet in [raw::packet(0x30, &publish), raw::packet(0x82, &subscribe)] {
        let mut s = raw::tls(addr, tls.clone()).await?;
        raw::handshake_v5(&mut s, "stuffer").await?;
        let frames = send_and_read_until_closed(s, packet).await?;
        ensure!(
            frames.iter().any(|f| f.disconnect_reason() == Some(0x95)),
            "a stuffed packet was answered with {frames:?}"
        );
    }

    // 32 user properties are within the limit, and reach the subscriber whole.
    let mut publish = raw::string("lab/steady");
    publish.extend(user_properties(32, "k"));
    publish.extend(b"thirty-two");
    let mut s = raw::tls(addr, tls.clone()).await?;
    raw::handshake_v5(&mut s, "stuffer").await?;
    raw::send(&mut s, &raw::packet(0x30, &publish)).await?;
    let p = steady.sub.publish().await?;
    ensure!(p.payload.as_ref() == b"thirty-two", "got {p:?}");
    let props = p.properties.context("no properties")?;
    ensure!(props.user_properties.len() == 32, "{props:?}");

    steady.round_trip().await?;
    gh.wait_metric(
        "gatehouse_connections_refused_total{reason=\"connect_user_properties_over_limit\"}",
        22.0,
    )
    .await?;
    gh.wait_metric("gatehouse_protocol_errors_total{reason=\"0x95\"}", 2.0)
        .await?;
    ensure!(
        gh.metric("gatehouse_limit{limit=\"max_user_properties\"}")
            .await?
            == 32.0
    );
    Ok(())
}

/// Waits until the broker holds no message bytes for any session.
async fn wait_until_nothing_is_held(gh: &Gatehouse) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let held = gh.metric("gatehouse_message_memory_used_bytes").await?;
        if held == 0.0 {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the broker still holds {held} bytes of messages"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A raw 5.0 subscriber to `filter` at QoS 1 that never reads after its SUBACK.
async fn stalled_subscriber(
    gh: &Gatehouse,
    device: &str,
    filter: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut s = raw::tls(gh.listeners.mqtts, gh.client_tls(device)?).await?;
    raw::handshake_v5(&mut s, device).await?;
    let mut body = vec![0, 1, 0];
    body.extend(raw::string(filter));
    body.push(1);
    raw::send(&mut s, &raw::packet(0x82, &body)).await?;
    let ack = raw::read_frame(&mut s).await?;
    ensure!(ack.kind() == 9 && ack.body.last() == Some(&1), "{ack:?}");
    Ok(s)
}

#[tokio::test]
async fn slow_consumer_cannot_grow_broker_memory_past_its_budget() -> Result<()> {
    const BUDGET: f64 = 1024.0 * 1024.0;
    let gh = Gatehouse::start(Options::extra(&format!(
        "{LAB_POLICY}\n[limits]\nmax_packet_size = \"64KiB\"\nmax_queued_bytes = \"256KiB\"\n\
         message_memory_budget = \"1MiB\"\n"
    )))
    .await?;
    ensure!(
        gh.metric("gatehouse_limit{limit=\"message_memory_budget\"}")
            .await?
            == BUDGET
    );
    // Eight subscribers that stop reading could hold 2 MiB between them.
    let mut stalled = Vec::new();
    for i in 0..8 {
        stalled.push(stalled_subscriber(&gh, &format!("stalled-{i}"), "lab/flood").await?);
    }
    let mut publisher =
        V5::connect_as(gh.listeners.mqtts, gh.client_tls("flooder")?, "flooder").await?;

    // 32 KiB at QoS 1 until the broker answers 0x97 (quota exceeded).
    let mut refused = false;
    for n in 0..300 {
        publisher
            .client
            .publish("lab/flood", Q5::AtLeastOnce, false, vec![b'x'; 32 * 1024])
            .await?;
        let ack = publisher.puback().await?;
        match ack.reason {
            p5::PubAckReason::Success => {}
            p5::PubAckReason::QuotaExceeded => {
                refused = n > 0;
                break;
            }
            other => anyhow::bail!("message {n}: {other:?}"),
        }
    }
    ensure!(refused, "no publish was refused with 0x97");
    let held = gh.metric("gatehouse_message_memory_used_bytes").await?;
    ensure!(
        held > 0.0 && held <= BUDGET,
        "the broker holds {held} bytes of messages, budget {BUDGET}"
    );
    gh.wait_metric(
        "gatehouse_publishes_refused_total{reason=\"memory_budget\"}",
        1.0,
    )
    .await?;
    // Deliveries that did not fit were dropped and counted, not queued.
    gh.wait_metric(
        "gatehouse_messages_dropped_total{reason=\"memory_budget\"}",
        1.0,
    )
    .await?;

    // The stalled subscribers go: what they held comes back, and the broker serves.
    drop(stalled);
    wait_until_nothing_is_held(&gh).await?;
    let mut steady = Steady::connect(&gh).await?;
    steady.round_trip().await?;
    publisher
        .client
        .publish("lab/flood", Q5::AtLeastOnce, false, "after")
        .await?;
    ensure!(publisher.puback().await?.reason == p5::PubAckReason::Success);
    Ok(())
}

/// The server's RSS, sampled every 5 ms until dropped; `max()` is the peak seen.
struct RssSampler {
    peak: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(gh: &Gatehouse) -> Result<Self> {
        let pid = gh.pid().context("the server is not running")?;
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    && let Some(kib) = status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    p.fetch_max(kib * 1024, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Ok(Self { peak, task })
    }

    fn max(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Prints the server's RSS before, during and after a property flood and two slow
/// consumer floods, with the default limits. A measurement for BENCHMARKS.md, not a
/// test: `cargo test --release -p gatehouse --test hostile_input -- --ignored
/// --nocapture under_attack_memory`.
#[tokio::test]
#[ignore = "a measurement: prints figures"]
async fn under_attack_memory() -> Result<()> {
    // Default limits, but no per-source connection rate: the floods come from one host.
    let gh = Gatehouse::start(Options::extra(&format!(
        "{LAB_POLICY}\n[limits]\nconnect_rate_per_source = 0\n"
    )))
    .await?;
    let addr = gh.listeners.mqtts;
    let mut steady = Steady::connect(&gh).await?;
    steady.round_trip().await?;

    // 1. 50 connections at once, each a 780 KB CONNECT of user properties, five times.
    let before = rss(&gh)?;
    let sampler = RssSampler::start(&gh)?;
    let stuffed = Arc::new(stuffed_connect("stuffer", 156_000, None));
    let tls = gh.client_tls("stuffer")?;
    for _ in 0..5 {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let (tls, stuffed) = (tls.clone(), stuffed.clone());
            tasks.spawn(async move {
                let s = raw::tls(addr, tls).await?;
                send_and_read_until_closed(s, stuffed.to_vec()).await
            });
        }
        while let Some(r) = tasks.join_next().await {
            let frames = r??;
            ensure!(frames.iter().any(|f| f.connack() == Some((false, 0x95))));
        }
    }
    let during = sampler.max();
    drop(sampler);
    steady.round_trip().await?;
    let after = rss(&gh)?;
    println!(
        "property flood (250 × 780 KB CONNECT, 50 at a time): RSS before {:.1} MiB, peak {:.1} MiB, after {:.1} MiB",
        mib(before),
        mib(during),
        mib(after)
    );

    // 2. One subscriber stops reading; 400 × 1 MiB at QoS 1 are published to it.
    let mut publisher = V5::connect({
        let mut o = support::clients::v5_options(addr, gh.client_tls("flooder")?, "flooder");
        o.set_max_packet_size(Some(2 * 1024 * 1024));
        o
    })
    .await?
    .0;
    let payload = vec![b'x'; 1024 * 1024 - 1024];
    let before = rss(&gh)?;
    let sampler = RssSampler::start(&gh)?;
    let stalled = stalled_subscriber(&gh, "stalled-0", "lab/stall/0").await?;
    let mut refused = 0;
    for _ in 0..400 {
        publisher
            .client
            .publish("lab/stall/0", Q5::AtLeastOnce, false, payload.clone())
            .await?;
        if publisher.puback().await?.reason != p5::PubAckReason::Success {
            refused += 1;
        }
    }
    let held = gh.metric("gatehouse_message_memory_used_bytes").await?;
    let during = sampler.max();
    drop(stalled);
    drop(sampler);
    wait_until_nothing_is_held(&gh).await?;
    steady.round_trip().await?;
    let after = rss(&gh)?;
    println!(
        "slow consumer (1 stalled subscriber, 400 × 1 MiB QoS 1): RSS before {:.1} MiB, peak {:.1} MiB, after {:.1} MiB; held {:.1} MiB; refused {refused}",
        mib(before),
        mib(during),
        mib(after),
        held / (1024.0 * 1024.0)
    );

    // 3. Forty subscribers stop reading, each on its own topic: 40 × 8 MiB would pass
    //    the 256 MiB budget.
    let before = rss(&gh)?;
    let sampler = RssSampler::start(&gh)?;
    let mut stalled = Vec::new();
    for i in 0..40 {
        stalled.push(
            stalled_subscriber(&gh, &format!("stalled-{i}"), &format!("lab/stall/{i}")).await?,
        );
    }
    let (mut refused, mut sent) = (0, 0);
    'flood: for _ in 0..20 {
        for i in 0..40 {
            publisher
                .client
                .publish(
                    format!("lab/stall/{i}"),
                    Q5::AtLeastOnce,
                    false,
                    payload.clone(),
                )
                .await?;
            sent += 1;
            if publisher.puback().await?.reason == p5::PubAckReason::QuotaExceeded {
                refused += 1;
                if refused >= 40 {
                    break 'flood;
                }
            }
        }
    }
    let held = gh.metric("gatehouse_message_memory_used_bytes").await?;
    let during = sampler.max();
    drop(stalled);
    drop(sampler);
    wait_until_nothing_is_held(&gh).await?;
    steady.round_trip().await?;
    let after = rss(&gh)?;
    println!(
        "slow consumers (40 stalled subscribers, {sent} × 1 MiB QoS 1): RSS before {:.1} MiB, peak {:.1} MiB, after {:.1} MiB; held {:.1} MiB; refused with 0x97: {refused}",
        mib(before),
        mib(during),
        mib(after),
        held / (1024.0 * 1024.0)
    );
    Ok(())
}
