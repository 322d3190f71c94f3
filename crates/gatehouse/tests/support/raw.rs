//! Hand-written MQTT bytes over a raw (TLS or TCP) stream: for the packets no well-behaved
//! client library will send (garbage, truncated frames, absurd lengths, a second CONNECT,
//! wildcards in topic names) and for reading exactly what the server answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::WAIT;

/// Opens a mutual-TLS connection to `addr`.
pub async fn tls(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    Ok(tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .context("TLS handshake timed out")??)
}

/// MQTT variable byte integer.
pub fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return out;
        }
    }
}

/// MQTT UTF-8 string (two-byte length prefix).
pub fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

/// A whole packet: first byte, remaining length, body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(body.len()));
    out.extend_from_slice(body);
    out
}

/// CONNECT, MQTT 5.0, clean start, no properties.
pub fn connect_v5(client_id: &str) -> Vec<u8> {
    connect_v5_with(client_id, true, None)
}

/// CONNECT, MQTT 5.0, with the clean start flag and session expiry given.
pub fn connect_v5_with(client_id: &str, clean_start: bool, session_expiry: Option<u32>) -> Vec<u8> {
    connect_v5_keep_alive(client_id, clean_start, session_expiry, 60)
}

/// CONNECT, MQTT 5.0, with the clean start flag, session expiry and keep-alive given.
pub fn connect_v5_keep_alive(
    client_id: &str,
    clean_start: bool,
    session_expiry: Option<u32>,
    keep_alive: u16,
) -> Vec<u8> {
    let mut body = string("MQTT");
    body.push(5);
    body.push(if clean_start { 0x02 } else { 0x00 });
    body.extend(keep_alive.to_be_bytes());
    let mut props = Vec::new();
    if let Some(e) = session_expiry {
        props.push(0x11);
        props.extend(e.to_be_bytes());
    }
    body.extend(varint(props.len()));
    body.extend(props);
    body.extend(string(client_id));
    packet(0x10, &body)
}

/// CONNECT, MQTT 3.1.1, clean session, with optional user name and password.
pub fn connect_v311(client_id: &str, user: Option<&str>, password: Option<&str>) -> Vec<u8> {
    let mut flags = 0x02;
    if user.is_some() {
        flags |= 0x80;
    }
    if password.is_some() {
        flags |= 0x40;
    }
    let mut body = string("MQTT");
    body.push(4);
    body.push(flags);
    body.extend(60u16.to_be_bytes());
    body.extend(string(client_id));
    if let Some(u) = user {
        body.extend(string(u));
    }
    if let Some(p) = password {
        body.extend(string(p));
    }
    packet(0x10, &body)
}

/// CONNECT, MQTT 5.0, with user name and password.
pub fn connect_v5_password(client_id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = string("MQTT");
    body.push(5);
    body.push(0x02 | 0x80 | 0x40);
    body.extend(60u16.to_be_bytes());
    body.push(0);
    body.extend(string(client_id));
    body.extend(string(user));
    body.extend(string(password));
    packet(0x10, &body)
}

/// PUBLISH QoS 0, MQTT 5.0 (empty properties).
pub fn publish_v5(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = string(topic);
    body.push(0);
    body.extend_from_slice(payload);
    packet(0x30, &body)
}

/// One packet as read back: the first byte and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub first: u8,
    pub body: Vec<u8>,
}

impl Frame {
    /// Packet type (upper four bits of the first byte).
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }

    /// For CONNACK: (session present, reason/return code).
    pub fn connack(&self) -> Option<(bool, u8)> {
        (self.kind() == 2 && self.body.len() >= 2).then(|| (self.body[0] & 1 == 1, self.body[1]))
    }

    /// For a 5.0 DISCONNECT: the reason code (0 when the body is empty).
    pub fn disconnect_reason(&self) -> Option<u8> {
        (self.kind() == 14).then(|| self.body.first().copied().unwrap_or(0))
    }
}

/// Splits bytes into packets; a trailing partial packet is an error.
pub fn frames(mut bytes: &[u8]) -> Result<Vec<Frame>> {
    let mut out = Vec::new();
    while let Some((&first, rest)) = bytes.split_first() {
        let mut len = 0usize;
        let mut shift = 0;
        let mut i = 0;
        loop {
            let b = *rest.get(i).context("truncated remaining length")?;
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            if i == 4 {
                bail!("remaining length longer than four bytes");
            }
        }
        let body = rest
            .get(i..i + len)
            .with_context(|| format!("truncated packet 0x{first:02x} of {len} bytes"))?;
        out.push(Frame {
            first,
            body: body.to_vec(),
        });
        bytes = &rest[i + len..];
    }
    Ok(out)
}

/// What a connection showed until the server closed it.
#[derive(Debug)]
pub struct Closed {
    /// Every byte the server sent.
    pub bytes: Vec<u8>,
    /// Whether it ended with an error rather than a clean end of stream.
    pub error: Option<std::io::Error>,
}

impl Closed {
    /// The packets the server sent before closing.
    pub fn frames(&self) -> Result<Vec<Frame>> {
        frames(&self.bytes)
    }
}

/// Reads until the server closes the connection; fails if it is still open after
/// `within`.
pub async fn read_until_closed<S: AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> Result<Closed> {
    let mut bytes = Vec::new();
    let work = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return None,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(e) => return Some(e),
            }
        }
    };
    match tokio::time::timeout(within, work).await {
        Ok(error) => Ok(Closed { bytes, error }),
        Err(_) => bail!(
            "the server kept the connection open for {within:?} (received {} bytes)",
            bytes.len()
        ),
    }
}

/// Reads exactly one packet.
pub async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Frame> {
    let work = async {
        let first = stream.read_u8().await?;
        let mut len = 0usize;
        let mut shift = 0;
        for _ in 0..4 {
            let b = stream.read_u8().await?;
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                let mut body = vec![0; len];
                stream.read_exact(&mut body).await?;
                return Ok(Frame { first, body });
            }
        }
        Err(std::io::Error::other("bad remaining length"))
    };
    Ok(tokio::time::timeout(WAIT, work)
        .await
        .context("timed out reading a packet")??)
}

/// Writes all bytes and flushes.
pub async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await?;
    Ok(())
}

/// Sends CONNECT (5.0) and checks the CONNACK is a success.
pub async fn handshake_v5<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    client_id: &str,
) -> Result<()> {
    send(stream, &connect_v5(client_id)).await?;
    let ack = read_frame(stream).await?;
    match ack.connack() {
        Some((_, 0)) => Ok(()),
        _ => bail!("expected a successful CONNACK, got {ack:?}"),
    }
}
