//! A lean MQTT client over TCP and TLS, built on gatehouse-mqtt's sans-I/O codec.
//!
//! It is meant to be held many thousands of times at once, so a [`Client`] is the socket,
//! the TLS state and two byte buffers that start small and grow only while traffic needs
//! them; there is no background task and no channel. The owner drives it: [`Client::recv`]
//! is cancel-safe (decoded bytes stay buffered if the future is dropped), so it can sit in a
//! `select!` beside timers and stop signals, and writes are queued with [`Client::queue`]
//! and sent with one [`Client::flush`].

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use gatehouse_mqtt::{
    Ack, ConnAck, Connect, DecodeError, Disconnect, EncodeError, Packet, Properties,
    ProtocolVersion, QoS, ReasonCode, SubAck, Subscribe, SubscribeFilter, SubscriptionOptions,
};
use gatehouse_types::{TopicError, TopicFilter};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Largest packet the client accepts from the server.
const MAX_PACKET_SIZE: u32 = 1024 * 1024;

/// How long [`Client::disconnect`] waits for the server to close its side.
const LINGER: Duration = Duration::from_secs(2);

/// A write buffer that grew past this is released after a flush.
const WRITE_BUFFER_KEEP: usize = 64 * 1024;

/// How to reach the broker and who to be.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Broker address.
    pub addr: SocketAddr,
    /// Local address to bind before connecting (spreads ephemeral ports over several
    /// loopback addresses); `None` lets the kernel choose.
    pub bind: Option<IpAddr>,
    /// TLS client configuration (roots and, for mutual TLS, the client certificate).
    pub tls: Arc<rustls::ClientConfig>,
    /// Name the server certificate must carry.
    pub server_name: ServerName<'static>,
    /// Protocol version to speak.
    pub version: ProtocolVersion,
    /// Client identifier.
    pub client_id: String,
    /// Keep-alive in seconds (0 disables it).
    pub keep_alive: u16,
    /// Receive Maximum announced to a 5.0 server (`None`: the protocol default, 65,535).
    pub receive_maximum: Option<u16>,
    /// Bytes the read buffer reserves at a time: small for idle connections, larger for
    /// busy ones.
    pub read_chunk: usize,
    /// Deadline for TCP, TLS and CONNACK together.
    pub timeout: Duration,
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// A step did not finish in time.
    #[error("timed out during {0}")]
    Timeout(&'static str),
    /// The server sent bytes that do not decode.
    #[error("undecodable packet from server: {0}")]
    Decode(#[from] DecodeError),
    /// A packet could not be encoded.
    #[error("cannot encode packet: {0}")]
    Encode(#[from] EncodeError),
    /// A topic or filter is invalid.
    #[error("invalid topic: {0}")]
    Topic(#[from] TopicError),
    /// The server refused CONNECT or SUBSCRIBE, or disconnected us, with this reason code.
    #[error("refused by server with reason code {}", .0.explained())]
    Refused(ReasonCode),
    /// The server closed the connection.
    #[error("connection closed by server")]
    Closed,
    /// The server sent a packet that makes no sense here.
    #[error("unexpected {0} from server")]
    Unexpected(&'static str),
}

/// What the server announced in CONNACK that shapes how we may talk to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Receive Maximum: unacknowledged QoS 1/2 publishes the server accepts from us.
    pub receive_maximum: u16,
    /// Server Keep Alive, when it overrides ours.
    pub keep_alive: Option<u16>,
}

/// One MQTT connection over TLS.
#[derive(Debug)]
pub struct Client {
    stream: TlsStream<TcpStream>,
    version: ProtocolVersion,
    rbuf: BytesMut,
    wbuf: BytesMut,
    read_chunk: usize,
    next_id: u16,
    limits: ServerLimits,
}

// === impl Client ===

impl Client {
    /// Opens TCP, completes the TLS handshake, sends CONNECT and waits for a successful
    /// CONNACK, all within `opts.timeout`.
    pub async fn connect(opts: &ConnectOptions) -> Result<(Self, ConnAck), ClientError> {
        let deadline = tokio::time::Instant::now() + opts.timeout;
        let tcp = tokio::time::timeout_at(deadline, tcp_connect(opts.addr, opts.bind))
            .await
            .map_err(|_| ClientError::Timeout("TCP connect"))??;
        tcp.set_nodelay(true)?;
        let connector = TlsConnector::from(opts.tls.clone());
        let stream =
            tokio::time::timeout_at(deadline, connector.connect(opts.server_name.clone(), tcp))
                .await
                .map_err(|_| ClientError::Timeout("TLS handshake"))??;
        let mut client = Self {
            stream,
            version: opts.version,
            rbuf: BytesMut::with_capacity(opts.read_chunk),
            wbuf: BytesMut::new(),
            read_chunk: opts.read_chunk.max(64),
            next_id: 0,
            limits: ServerLimits {
                receive_maximum: u16::MAX,
                keep_alive: None,
            },
        };
        let connect = Connect {
            protocol: opts.version,
            clean_start: true,
            keep_alive: opts.keep_alive,
            client_id: opts.client_id.clone(),
            will: None,
            username: None,
            password: None,
            properties: Properties {
                receive_maximum: opts.receive_maximum,
                ..Properties::default()
            },
        };
        client.queue(&Packet::Connect(Box::new(connect)))?;
        let connack = tokio::time::timeout_at(deadline, async {
            client.flush().await?;
            match client.recv().await? {
                Packet::ConnAck(ack) => Ok(ack),
                Packet::Disconnect(d) => Err(ClientError::Refused(d.reason)),
                _ => Err(ClientError::Unexpected("packet before CONNACK")),
            }
        })
        .await
        .map_err(|_| ClientError::Timeout("CONNACK"))??;
        if connack.reason.is_error() {
            return Err(ClientError::Refused(connack.reason));
        }
        client.limits = ServerLimits {
            receive_maximum: connack.properties.receive_maximum.unwrap_or(u16::MAX),
            keep_alive: connack.properties.server_keep_alive,
        };
        // The handshake may have grown the buffers; an idle connection keeps only a little.
        client.rbuf = BytesMut::new();
        client.wbuf = BytesMut::new();
        Ok((client, connack))
    }

    /// The protocol version this connection speaks.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// What the server announced in CONNACK.
    pub fn server_limits(&self) -> ServerLimits {
        self.limits
    }

    /// Sets how many bytes the read buffer reserves at a time from now on.
    pub fn set_read_chunk(&mut self, bytes: usize) {
        self.read_chunk = bytes.max(64);
    }

    /// A fresh non-zero packet identifier.
    pub fn next_packet_id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1);
        if self.next_id == 0 {
            self.next_id = 1;
        }
        self.next_id
    }

    /// Encodes `packet` into the write buffer; nothing is sent until [`Client::flush`].
    pub fn queue(&mut self, packet: &Packet) -> Result<(), ClientError> {
        gatehouse_mqtt::encode(packet, self.version, &mut self.wbuf)?;
        Ok(())
    }

    /// Appends an already encoded frame to the write buffer.
    pub fn queue_frame(&mut self, frame: &[u8]) {
        self.wbuf.extend_from_slice(frame);
    }

    /// The write buffer, for callers that encode frames in place.
    pub fn write_buffer(&mut self) -> &mut BytesMut {
        &mut self.wbuf
    }

    /// Bytes queued and not yet flushed.
    pub fn queued_bytes(&self) -> usize {
        self.wbuf.len()
    }

    /// Sends everything queued. Not cancel-safe: do not race it in a `select!`.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
            if self.wbuf.capacity() > WRITE_BUFFER_KEEP {
                self.wbuf = BytesMut::new();
            }
        }
        self.stream.flush().await?;
        Ok(())
    }

    /// Queues `packet` and flushes.
    pub async fn send(&mut self, packet: &Packet) -> Result<(), ClientError> {
        self.queue(packet)?;
        self.flush().await
    }

    /// Decodes one packet from what has already been read, without touching the socket.
    pub fn try_decode(&mut self) -> Result<Option<Packet>, ClientError> {
        if self.rbuf.is_empty() {
            return Ok(None);
        }
        Ok(gatehouse_mqtt::decode(
            &mut self.rbuf,
            self.version,
            MAX_PACKET_SIZE,
        )?)
    }

    /// Waits for the next packet. Cancel-safe: bytes read before cancellation stay
    /// buffered for the next call.
    pub async fn recv(&mut self) -> Result<Packet, ClientError> {
        loop {
            if let Some(packet) = self.try_decode()? {
                return Ok(packet);
            }
            if self.rbuf.capacity() - self.rbuf.len() < self.read_chunk / 2 {
                self.rbuf.reserve(self.read_chunk);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }

    /// Subscribes to one filter and waits for its SUBACK. Packets that arrive before the
    /// SUBACK are dropped: call this before anything is published to the filter.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<QoS, ClientError> {
        let packet_id = self.queue_subscribe(filter, qos)?;
        self.flush().await?;
        loop {
            match self.recv().await? {
                Packet::SubAck(ack) if ack.packet_id == packet_id => {
                    return granted(&ack);
                }
                Packet::Disconnect(d) => return Err(ClientError::Refused(d.reason)),
                Packet::PingResp | Packet::Publish(_) | Packet::PubAck(_) => {}
                _ => return Err(ClientError::Unexpected("packet while subscribing")),
            }
        }
    }

    /// Queues a SUBSCRIBE to one filter and returns its packet identifier; the caller
    /// flushes and reads the SUBACK (see [`granted`]).
    pub fn queue_subscribe(&mut self, filter: &str, qos: QoS) -> Result<u16, ClientError> {
        let packet_id = self.next_packet_id();
        let subscribe = Subscribe {
            packet_id,
            filters: vec![SubscribeFilter {
                filter: TopicFilter::new(filter)?,
                options: SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            }],
            properties: Properties::default(),
        };
        self.queue(&Packet::Subscribe(subscribe))?;
        Ok(packet_id)
    }

    /// Queues the acknowledgement of a QoS 1 publish.
    pub fn queue_puback(&mut self, packet_id: u16) -> Result<(), ClientError> {
        self.queue(&Packet::PubAck(Ack::success(packet_id)))
    }

    /// Sends PINGREQ.
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.send(&Packet::PingReq).await
    }

    /// Sends DISCONNECT (normal disconnection), closes TLS and our half of the socket, then
    /// reads until the server closes its half. Errors are ignored: the connection is going
    /// away either way.
    ///
    /// Reading to the end matters: a socket closed with unread bytes in its receive buffer
    /// is reset rather than closed, and a reset makes the server drop whatever it had not
    /// read yet, publishes included.
    pub async fn disconnect(mut self) {
        let packet = Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION));
        if self.queue(&packet).is_ok() {
            let _ = self.flush().await;
        }
        let _ = self.stream.shutdown().await;
        let _ = tokio::time::timeout(LINGER, async {
            let mut sink = [0u8; 512];
            while let Ok(n) = self.stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }
}

/// The QoS a SUBACK for one filter granted, or the refusal it carries.
pub fn granted(ack: &SubAck) -> Result<QoS, ClientError> {
    let reason = ack
        .reasons
        .first()
        .copied()
        .ok_or(ClientError::Unexpected("SUBACK without reason codes"))?;
    if reason.is_error() {
        return Err(ClientError::Refused(reason));
    }
    QoS::from_u8(reason.0).ok_or(ClientError::Unexpected("granted QoS"))
}

async fn tcp_connect(addr: SocketAddr, bind: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = bind {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}
