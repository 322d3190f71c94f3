//! Hostile input over the mutual-TLS listener: garbage, truncated packets, absurd
//! lengths, CONNECT floods and idle connections. Each must cost the attacker its own
//! connection and nothing else.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use rumqttc::v5::mqttbytes::QoS as Q5;
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
