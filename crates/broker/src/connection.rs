//! One client connection: TLS handshake and identity, CONNECT, then the session loop.
//!
//! Each connection is one task. The loop waits on four things at once: bytes from the
//! client, room to write to it, deliveries queued by the router, and control messages
//! from the broker (a gate change, a revocation, a takeover, shutdown). Nothing here
//! holds a lock across an await.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use gatehouse_mqtt::{
    Ack, ConnAck, Connect, DecodeError, DecodeLimits, Disconnect, Packet, Properties,
    ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, UnsubAck,
    Unsubscribe, connect_protocol_level, decode_with, encode, encoded_len,
};
use gatehouse_types::{
    AuthFailure, ConnectObservation, DeviceRef, DisconnectCause, Identity, Observation,
    PublishObservation, SubscribeObservation, TlsFacts, Topic,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::broker::{AuthError, Inner, forwarded_properties};
use crate::config::ClientIdPolicy;
use crate::gate::{Decision, PublishContext};
use crate::metrics::Metrics;
use crate::router::SubRef;
use crate::session::{
    Control, ControlSlot, DELIVERY_OVERHEAD, Delivery, Dropped, Inflight, LiveConn, Message,
    Session, Subscription,
};

/// Stop filling the write buffer past this; the rest waits in the session queue.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Read the first packets in chunks of this size.
const READ_CHUNK: usize = 4096;
/// A session's reads start at this size and double, up to [`MAX_READ_CHUNK`], whenever a
/// read fills the buffer.
const IDLE_READ_CHUNK: usize = 512;
const MAX_READ_CHUNK: usize = 64 * 1024;

/// How a session's connection ends.
#[derive(Debug)]
struct Close {
    cause: DisconnectCause,
    /// DISCONNECT reason code to send a 5.0 client, if any.
    reason: Option<ReasonCode>,
    reason_string: Option<String>,
    /// Whether the will message is published.
    will: bool,
}

impl Close {
    fn protocol(reason: ReasonCode, why: &str) -> Self {
        Self {
            cause: DisconnectCause::ProtocolError,
            reason: Some(reason),
            reason_string: Some(why.to_owned()),
            will: true,
        }
    }
}

fn tls_failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    let Some(err) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof_during_handshake",
            std::io::ErrorKind::InvalidData => "not_tls",
            _ => "io_error",
        };
    };
    match err {
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate_expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate_not_yet_valid"
            }
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::Revoked => "certificate_revoked",
            CertificateError::BadSignature => "bad_signature",
            _ => "invalid_certificate",
        },
        Error::AlertReceived(_) => "alert_received",
        Error::PeerIncompatible(_) => "peer_incompatible",
        Error::InvalidMessage(_) => "invalid_tls_message",
        _ => "handshake_error",
    }
}

fn auth_failure(
    inner: &Inner,
    peer: SocketAddr,
    identity: Option<Arc<Identity>>,
    client_id: Option<&str>,
    reason: &str,
) {
    if inner.tap.is_active() {
        inner.tap.emit(Observation::AuthFailure(AuthFailure {
            at: SystemTime::now(),
            peer,
            identity,
            client_id: client_id.map(str::to_owned),
            reason: reason.to_owned(),
        }));
    }
}

/// Serves one mutual-TLS connection.
pub(crate) async fn serve_tls(
    inner: Arc<Inner>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let limit = inner.config.limits.tls_handshake_timeout;
    let stream = match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = tls_failure_reason(&e);
            debug!(%peer, reason, "TLS handshake failed");
            Metrics::reason(&inner.metrics.tls_failures, reason);
            auth_failure(&inner, peer, None, None, reason);
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            Metrics::reason(&inner.metrics.tls_failures, "handshake_timeout");
            auth_failure(&inner, peer, None, None, "handshake_timeout");
            return;
        }
    };
    let who = inner.auth.identify_tls(stream.get_ref().1);
    serve(inner, stream, peer, Who::Tls(who)).await;
}

/// Serves one plain connection (user name and password).
pub(crate) async fn serve_plain(inner: Arc<Inner>, tcp: TcpStream, peer: SocketAddr) {
    serve(inner, tcp, peer, Who::Password).await;
}

enum Who {
    Tls(Result<(Identity, TlsFacts), AuthError>),
    Password,
}

async fn write_and_close<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(bytes).await;
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn refuse_connect<S: AsyncWrite + Unpin>(
    stream: &mut S,
    version: ProtocolVersion,
    reason: ReasonCode,
) {
    refuse_connect_because(stream, version, reason, None).await;
}

/// Refuses a CONNECT, telling a 5.0 client why in the CONNACK's reason string.
async fn refuse_connect_because<S: AsyncWrite + Unpin>(
    stream: &mut S,
    version: ProtocolVersion,
    reason: ReasonCode,
    why: impl Into<Option<String>>,
) {
    let mut out = BytesMut::new();
    let ack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason,
        properties: Properties {
            reason_string: why.into(),
            ..Properties::default()
        },
    });
    if encode(&ack, version, &mut out).is_ok() {
        write_and_close(stream, &out).await;
    }
}

/// Reads until a whole first packet is there, within the CONNECT deadline.
async fn read_connect<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &Inner,
    stream: &mut S,
    rbuf: &mut BytesMut,
    peer: SocketAddr,
) -> Option<Box<Connect>> {
    let deadline = Instant::now() + inner.config.limits.connect_timeout;
    let limits = inner.config.limits.decode();
    loop {
        match decode_with(rbuf, ProtocolVersion::V5, &limits) {
            Ok(Some(Packet::Connect(c))) => return Some(c),
            Ok(Some(other)) => {
                debug!(%peer, packet = other.packet_type(), "first packet is not CONNECT");
                Metrics::reason(&inner.metrics.refused, "first_packet_not_connect");
                auth_failure(inner, peer, None, None, "first_packet_not_connect");
                return None;
            }
            Ok(None) => {}
            Err(e) => {
                let code = e.reason_code();
                debug!(%peer, error = %e, "bad CONNECT");
                let reason = match e {
                    DecodeError::TooManyUserProperties { .. }
                    | DecodeError::UserPropertiesTooLarge { .. } => {
                        "connect_user_properties_over_limit"
                    }
                    DecodeError::PacketTooLarge { .. } => "connect_too_large",
                    _ => "malformed_connect",
                };
                Metrics::reason(&inner.metrics.refused, reason);
                auth_failure(inner, peer, None, None, reason);
                if code == ReasonCode::UNSUPPORTED_PROTOCOL_VERSION {
                    // 3.1.1-shaped CONNACK, return code 1: what any client can read.
                    write_and_close(stream, &[0x20, 0x02, 0x00, 0x01]).await;
                } else if connect_protocol_level(rbuf) == Some(5) {
                    // A 5.0 client is told why (§3.1.4); a 3.1.1 client is just closed.
                    refuse_connect(stream, ProtocolVersion::V5, code).await;
                }
                return None;
            }
        }
        rbuf.reserve(READ_CHUNK);
        match tokio::time::timeout_at(deadline, stream.read_buf(rbuf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => {
                inner.metrics.bytes_in.inc_by(n as u64);
            }
            Err(_) => {
                debug!(%peer, "no CONNECT before the deadline");
                Metrics::reason(&inner.metrics.refused, "connect_timeout");
                auth_failure(inner, peer, None, None, "connect_timeout");
                return None;
            }
        }
    }
}

async fn serve<S>(inner: Arc<Inner>, mut stream: S, peer: SocketAddr, who: Who)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut rbuf = BytesMut::new();
    let Some(connect) = read_connect(&inner, &mut stream, &mut rbuf, peer).await else {
        return;
    };
    let version = connect.protocol;

    // A 3.1.1 session without a client id cannot be resumed: it must be a clean one
    // (3.1.1 §3.1.3 [MQTT-3.1.3-8]). Refused before any credential is checked.
    if version == ProtocolVersion::V311 && connect.client_id.is_empty() && !connect.clean_start {
        debug!(%peer, "empty client id without clean session");
        Metrics::reason(
            &inner.metrics.refused,
            "empty_client_id_without_clean_session",
        );
        auth_failure(
            &inner,
            peer,
            None,
            None,
            "empty_client_id_without_clean_session",
        );
        refuse_connect(
            &mut stream,
            version,
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        )
        .await;
        return;
    }
    // The credential whose device id the client id must be, for the refusal's words.
    let credential = match &who {
        Who::Tls(_) => "the certificate",
        Who::Password => "the user name",
    };

    // Who is this?
    let (identity, tls) = match who {
        Who::Tls(Ok((id, facts))) => (id, facts),
        Who::Tls(Err(AuthError(reason))) => {
            info!(%peer, %reason, "certificate carries no usable device identity");
            Metrics::reason(&inner.metrics.refused, &reason);
            auth_failure(&inner, peer, None, Some(&connect.client_id), &reason);
            refuse_connect(&mut stream, version, ReasonCode::NOT_AUTHORIZED).await;
            return;
        }
        Who::Password => {
            let checked = match inner
                .auth
                .password_check(connect.username.as_deref(), connect.password.as_deref())
            {
                // Hashing runs on a blocking thread, never on the async workers.
                Ok(check) => tokio::task::spawn_blocking(check)
                    .await
                    .unwrap_or(Err(AuthError(Cow::Borrowed("password_check_failed")))),
                Err(refused) => Err(refused),
            };
            match checked {
                Ok(id) => (id, TlsFacts::default()),
                Err(AuthError(reason)) => {
                    info!(%peer, %reason, "password authentication failed");
                    Metrics::reason(&inner.metrics.refused, &reason);
                    auth_failure(&inner, peer, None, Some(&connect.client_id), &reason);
                    let code = if reason == crate::broker::PASSWORD_CHECK_SHED {
                        ReasonCode::SERVER_BUSY
                    } else {
                        ReasonCode::BAD_USER_NAME_OR_PASSWORD
                    };
                    refuse_connect(&mut stream, version, code).await;
                    return;
                }
            }
        }
    };
    let identity = Arc::new(identity);

    // The client id is the device id.
    let device = identity.device.as_str();
    let mut assigned = None;
    let client_id: Arc<str> = if connect.client_id.is_empty() {
        assigned = Some(device.to_owned());
        device.into()
    } else if connect.client_id == device {
        device.into()
    } else {
        match inner.config.client_id {
            ClientIdPolicy::RequireDeviceId => {
                info!(%peer, device, client_id = %connect.client_id, "client id differs from the device id of {credential}");
                Metrics::reason(&inner.metrics.refused, "client_id_mismatch");
                auth_failure(
                    &inner,
                    peer,
                    Some(identity.clone()),
                    Some(&connect.client_id),
                    "client_id_mismatch",
                );
                refuse_connect_because(
                    &mut stream,
                    version,
                    ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                    format!("the client id must be empty or the device id of {credential}"),
                )
                .await;
                return;
            }
            ClientIdPolicy::AssignDeviceId => {
                assigned = Some(device.to_owned());
                device.into()
            }
        }
    };

    // May it connect at all?
    let gate = inner.gate();
    if let Decision::Deny(why) | Decision::Disconnect(why) = gate.connect(&identity) {
        info!(%peer, device, reason = %why, "connection denied by the gate");
        inner.metrics.deny("connect");
        auth_failure(
            &inner,
            peer,
            Some(identity.clone()),
            Some(&client_id),
            "gate_denied",
        );
        refuse_connect(&mut stream, version, ReasonCode::NOT_AUTHORIZED).await;
        return;
    }
    drop(gate);

    if inner.is_live(&identity, &client_id)
        && !inner.admit_takeover(&identity, std::time::Instant::now())
    {
        warn!(%peer, device, "session taken over too often: refusing (cloned identity?)");
        Metrics::reason(&inner.metrics.refused, "takeover_rate_exceeded");
        auth_failure(
            &inner,
            peer,
            Some(identity.clone()),
            Some(&client_id),
            "takeover_rate_exceeded",
        );
        refuse_connect(&mut stream, version, ReasonCode::CONNECTION_RATE_EXCEEDED).await;
        return;
    }

    // Will: validated by the codec; limits applied here.
    let limits = &inner.config.limits;
    let will = match &connect.will {
        Some(w) => {
            if Topic::new(w.topic.as_str()).is_err()
                || w.topic.len() > limits.max_topic_length
                || w.topic.split('/').count() > limits.max_topic_levels
            {
                refuse_connect(&mut stream, version, ReasonCode::TOPIC_NAME_INVALID).await;
                return;
            }
            let msg = Message {
                tenant: identity.tenant.as_str().into(),
                topic: w.topic.as_str().into(),
                // Its own allocation: a slice would pin the whole CONNECT frame (and the
                // read buffer around it) for as long as the will is kept.
                payload: bytes::Bytes::copy_from_slice(&w.payload),
                qos: w.qos,
                retain: w.retain,
                properties: forwarded_properties(&w.properties),
                expires_at: w
                    .properties
                    .message_expiry_interval
                    .map(|s| std::time::Instant::now() + Duration::from_secs(u64::from(s))),
                origin: 0,
            };
            Some((Arc::new(msg), w.properties.will_delay_interval.unwrap_or(0)))
        }
        None => None,
    };

    // Session expiry: 5.0 asks; 3.1.1 persistent sessions get the maximum.
    let max_expiry = limits.max_session_expiry;
    let asked = match version {
        ProtocolVersion::V5 => Duration::from_secs(u64::from(
            connect.properties.session_expiry_interval.unwrap_or(0),
        )),
        ProtocolVersion::V311 if connect.clean_start => Duration::ZERO,
        ProtocolVersion::V311 => max_expiry,
    };
    let expiry = if connect.properties.session_expiry_interval == Some(u32::MAX) {
        max_expiry
    } else {
        asked.min(max_expiry)
    };

    // Keep-alive: 0 or more than allowed becomes the maximum.
    let max_ka = limits.max_keep_alive;
    let keep_alive = if connect.keep_alive == 0 || connect.keep_alive > max_ka {
        max_ka
    } else {
        connect.keep_alive
    };

    let conn_id = inner.new_uid();
    let control = Arc::new(ControlSlot::default());
    let attached = inner.attach(
        identity.clone(),
        client_id.clone(),
        &connect,
        expiry,
        LiveConn {
            conn_id,
            peer: peer.ip(),
            control: control.clone(),
        },
    );

    let mut props = Properties {
        receive_maximum: Some(limits.max_inflight),
        maximum_packet_size: Some(limits.max_packet_size),
        topic_alias_maximum: Some(limits.topic_alias_maximum),
        retain_available: Some(1),
        wildcard_subscription_available: Some(1),
        subscription_identifier_available: Some(1),
        shared_subscription_available: Some(1),
        assigned_client_identifier: assigned,
        ..Properties::default()
    };
    if keep_alive != connect.keep_alive {
        props.server_keep_alive = Some(keep_alive);
    }
    if version == ProtocolVersion::V5
        && connect
            .properties
            .session_expiry_interval
            .is_some_and(|s| u64::from(s) > expiry.as_secs())
    {
        props.session_expiry_interval = Some(u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX));
    }
    let mut wbuf = BytesMut::new();
    let ack = Packet::ConnAck(ConnAck {
        session_present: attached.present,
        reason: ReasonCode::SUCCESS,
        properties: props,
    });
    if encode(&ack, version, &mut wbuf).is_err() {
        return;
    }

    inner.metrics.sessions_established.inc();
    if inner.tap.is_active() {
        inner.tap.emit(Observation::Connect(ConnectObservation {
            at: SystemTime::now(),
            session: attached.session.uid,
            peer,
            identity: identity.clone(),
            client_id: client_id.to_string(),
            protocol_level: version.level(),
            clean_start: connect.clean_start,
            keep_alive: connect.keep_alive,
            session_present: attached.present,
            tls,
        }));
    }

    let span = info_span!("conn", %peer, tenant = %identity.tenant, device = %identity.device);
    let mut conn = Conn {
        tenant: identity.tenant.as_str().into(),
        device: DeviceRef::from(&*identity),
        decode_limits: limits.decode(),
        alias_max: limits.topic_alias_maximum,
        inner: inner.clone(),
        conn_id,
        identity,
        session: attached.session,
        version,
        wbuf,
        aliases: HashMap::new(),
        out_aliases: OutAliases {
            max: match version {
                ProtocolVersion::V5 => connect.properties.topic_alias_maximum.unwrap_or(0),
                ProtocolVersion::V311 => 0,
            },
            by_topic: HashMap::new(),
        },
        will,
        route_buf: Vec::new(),
    };
    if attached.present {
        conn.resend_inflight();
    }
    // Nothing of the CONNECT is needed any more: free it (and the frame its password
    // slices) now rather than when the connection ends.
    drop(connect);
    async move {
        debug!(
            session_present = attached.present,
            keep_alive, "session open"
        );
        let close = conn
            .run(
                &mut stream,
                rbuf,
                &control,
                Duration::from_secs(u64::from(keep_alive)),
            )
            .await;
        conn.finish(stream, close).await;
    }
    .instrument(span)
    .await;
}

/// Bytes a Topic Alias property adds to a PUBLISH: its identifier and a two-byte value.
const ALIAS_COST: usize = 3;

/// Topic aliases from the broker to one client (MQTT 5.0 §3.3.2.3.4): topics are given
/// the numbers 1, 2, … in the order they are first sent, up to the client's Topic Alias
/// Maximum, and kept for the connection's life; later topics go in full. A topic is sent
/// alone as its alias once the client has seen the two together.
#[derive(Debug)]
struct OutAliases {
    /// The client's Topic Alias Maximum (0: none, the default and all of 3.1.1).
    max: u16,
    by_topic: HashMap<Arc<str>, u16>,
}

// === impl OutAliases ===

impl OutAliases {
    /// The alias to send with `topic`, and whether the client knows it already (the
    /// topic may then be left out). None for a topic too short to gain from one.
    fn pick(&self, topic: &Arc<str>) -> Option<(u16, bool)> {
        if self.max == 0 || topic.len() <= ALIAS_COST {
            return None;
        }
        if let Some(&a) = self.by_topic.get(topic) {
            return Some((a, true));
        }
        let next = u16::try_from(self.by_topic.len() + 1).ok()?;
        (next <= self.max).then_some((next, false))
    }

    /// Records that the client was sent `alias` with `topic`.
    fn learn(&mut self, topic: &Arc<str>, alias: u16) {
        self.by_topic.insert(topic.clone(), alias);
    }
}

struct Conn {
    inner: Arc<Inner>,
    /// The identity's tenant: the topic space this connection publishes into.
    tenant: Arc<str>,
    /// The identity as a registry key (throttles are per device).
    device: DeviceRef,
    conn_id: u64,
    identity: Arc<Identity>,
    session: Arc<Session>,
    version: ProtocolVersion,
    wbuf: BytesMut,
    aliases: HashMap<u16, Arc<str>>,
    /// The aliases this connection gave its client for topics it sends.
    out_aliases: OutAliases,
    will: Option<(Arc<Message>, u32)>,
    route_buf: Vec<SubRef>,
    decode_limits: DecodeLimits,
    alias_max: u16,
}

// === impl Conn ===

impl Conn {
    async fn run<S>(
        &mut self,
        stream: &mut S,
        mut rbuf: BytesMut,
        control: &ControlSlot,
        keep_alive: Duration,
    ) -> Close
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let grace = keep_alive + keep_alive / 2;
        let mut last_rx = Instant::now();
        let sleep = tokio::time::sleep(grace);
        tokio::pin!(sleep);
        let mut needs_flush = false;
        let session = self.session.clone();
        // Anything that arrived with CONNECT.
        if let Err(close) = self.process(&mut rbuf) {
            return close;
        }
        // Idle connections are the common case: start small, grow when busy.
        if rbuf.is_empty() {
            rbuf = BytesMut::new();
        }
        let mut read_size = IDLE_READ_CHUNK;
        loop {
            if self.wbuf.len() < WRITE_HIGH_WATER {
                self.drain();
            }
            tokio::select! {
                biased;
                Control::Disconnect { reason, cause, reason_string } = control.recv() => {
                    return Close { cause, reason: Some(reason), reason_string, will: cause != DisconnectCause::ServerShutdown };
                },
                r = async {
                    if self.wbuf.is_empty() {
                        writer.flush().await.map(|()| None)
                    } else {
                        writer.write_buf(&mut self.wbuf).await.map(Some)
                    }
                }, if !self.wbuf.is_empty() || needs_flush => match r {
                    Ok(Some(0)) | Err(_) => return Close { cause: DisconnectCause::ConnectionLost, reason: None, reason_string: None, will: true },
                    Ok(Some(n)) => {
                        self.inner.metrics.bytes_out.inc_by(n as u64);
                        needs_flush = true;
                        if self.wbuf.is_empty() && self.wbuf.capacity() > 4 * WRITE_HIGH_WATER {
                            self.wbuf = BytesMut::new();
                        }
                    }
                    Ok(None) => needs_flush = false,
                },
                r = async {
                    if rbuf.capacity() - rbuf.len() < 128 {
                        rbuf.reserve(read_size);
                    }
                    let spare = rbuf.capacity() - rbuf.len();
                    reader.read_buf(&mut rbuf).await.map(|n| (n, spare))
                } => match r {
                    Ok((0, _)) | Err(_) => return Close { cause: DisconnectCause::ConnectionLost, reason: None, reason_string: None, will: true },
                    Ok((n, spare)) => {
                        if n == spare {
                            // The buffer was too small for what was waiting: grow the next one.
                            read_size = (read_size * 2).min(MAX_READ_CHUNK);
                        }
                        self.inner.metrics.bytes_in.inc_by(n as u64);
                        last_rx = Instant::now();
                        if let Err(close) = self.process(&mut rbuf) {
                            return close;
                        }
                        if rbuf.is_empty() && rbuf.capacity() > MAX_READ_CHUNK {
                            rbuf = BytesMut::new();
                        }
                    }
                },
                () = session.notify.notified() => {},
                () = &mut sleep => {
                    let due = last_rx + grace;
                    if Instant::now() >= due {
                        return Close { cause: DisconnectCause::KeepAliveTimeout, reason: Some(ReasonCode::KEEP_ALIVE_TIMEOUT), reason_string: None, will: true };
                    }
                    sleep.as_mut().reset(due);
                },
            }
        }
    }

    /// Sends any last words, closes the stream and detaches from the session.
    async fn finish<S: AsyncWrite + Unpin>(&mut self, mut stream: S, close: Close) {
        let m = &self.inner.metrics;
        if close.cause == DisconnectCause::ProtocolError
            && let Some(r) = close.reason
        {
            Metrics::reason(&m.protocol_errors, &r.to_string());
        }
        if self.version == ProtocolVersion::V5
            && let Some(reason) = close.reason
        {
            let mut d = Disconnect::new(reason);
            d.properties.reason_string = close.reason_string.clone();
            let _ = encode(&Packet::Disconnect(d), self.version, &mut self.wbuf);
        }
        let pending = std::mem::take(&mut self.wbuf);
        write_and_close(&mut stream, &pending).await;
        debug!(cause = ?close.cause, reason = ?close.reason_string, "session closed");
        let will = if close.will { self.will.take() } else { None };
        self.inner.detach(&self.session, self.conn_id, will);
        if self.inner.tap.is_active() {
            self.inner.tap.emit(Observation::Disconnect {
                at: SystemTime::now(),
                session: self.session.uid,
                identity: self.identity.clone(),
                cause: close.cause,
            });
        }
    }

    /// Decodes and handles every whole packet in the read buffer.
    fn process(&mut self, rbuf: &mut BytesMut) -> Result<(), Close> {
        loop {
            match decode_with(rbuf, self.version, &self.decode_limits) {
                Ok(Some(p)) => self.handle(p)?,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.decode_error(&e)),
            }
        }
    }

    fn decode_error(&self, e: &DecodeError) -> Close {
        debug!(error = %e, "malformed packet");
        Close::protocol(e.reason_code(), "malformed packet")
    }

    fn send(&mut self, p: &Packet) {
        // Our own packets are always encodable; an error here would be a bug, and the
        // packet is then dropped rather than the process.
        if let Err(e) = encode(p, self.version, &mut self.wbuf) {
            warn!(error = %e, "could not encode an outgoing packet");
        }
    }

    fn handle(&mut self, p: Packet) -> Result<(), Close> {
        match p {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(a) => {
                let mut st = self.session.state.lock();
                if let Some(pos) = st.queue.inflight().iter().position(|i| {
                    i.packet_id == a.packet_id && !i.released && i.delivery.qos == QoS::AtLeastOnce
                }) {
                    st.queue.remove_inflight(pos);
                }
                Ok(())
            }
            Packet::PubRec(a) => {
                let found = {
                    let mut st = self.session.state.lock();
                    match st
                        .queue
                        .inflight()
                        .iter()
                        .position(|i| i.packet_id == a.packet_id)
                    {
                        Some(pos) if a.reason.is_error() => {
                            st.queue.remove_inflight(pos);
                            None
                        }
                        Some(pos) => {
                            if let Some(i) = st.queue.inflight_mut(pos) {
                                i.released = true;
                            }
                            Some(true)
                        }
                        None => Some(false),
                    }
                };
                if let Some(found) = found {
                    let mut rel = Ack::success(a.packet_id);
                    if !found {
                        rel.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                    }
                    self.send(&Packet::PubRel(rel));
                }
                Ok(())
            }
            Packet::PubComp(a) => {
                let mut st = self.session.state.lock();
                if let Some(pos) = st
                    .queue
                    .inflight()
                    .iter()
                    .position(|i| i.packet_id == a.packet_id && i.released)
                {
                    st.queue.remove_inflight(pos);
                }
                Ok(())
            }
            Packet::PubRel(a) => {
                let known = self.session.state.lock().incoming_qos2.remove(&a.packet_id);
                let mut comp = Ack::success(a.packet_id);
                if !known {
                    comp.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                }
                self.send(&Packet::PubComp(comp));
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => {
                self.on_unsubscribe(u);
                Ok(())
            }
            Packet::PingReq => {
                self.send(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => {
                if let Some(exp) = d.properties.session_expiry_interval {
                    let mut st = self.session.state.lock();
                    if st.expiry.is_zero() && exp != 0 {
                        drop(st);
                        return Err(Close::protocol(
                            ReasonCode::PROTOCOL_ERROR,
                            "session expiry changed from zero",
                        ));
                    }
                    st.expiry = Duration::from_secs(u64::from(exp))
                        .min(self.inner.config.limits.max_session_expiry);
                }
                Err(Close {
                    cause: DisconnectCause::ClientDisconnect,
                    reason: None,
                    reason_string: None,
                    will: d.reason == ReasonCode::DISCONNECT_WITH_WILL,
                })
            }
            Packet::Auth(_) => Err(Close::protocol(
                ReasonCode::PROTOCOL_ERROR,
                "no authentication method was negotiated",
            )),
            Packet::Connect(_) => Err(Close::protocol(
                ReasonCode::PROTOCOL_ERROR,
                "second CONNECT",
            )),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(Close::protocol(
                    ReasonCode::PROTOCOL_ERROR,
                    "server-to-client packet from a client",
                ))
            }
        }
    }

    fn topic_within_limits(&self, topic: &str) -> bool {
        let l = &self.inner.config.limits;
        topic.len() <= l.max_topic_length && topic.split('/').count() <= l.max_topic_levels
    }

    fn on_publish(&mut self, p: Publish) -> Result<(), Close> {
        let inner = self.inner.clone();
        inner.metrics.messages_in.inc();

        if !p.properties.subscription_identifiers.is_empty() {
            // §3.3.4 [MQTT-3.3.4-6]: only the server sends subscription identifiers.
            return Err(Close::protocol(
                ReasonCode::PROTOCOL_ERROR,
                "subscription identifier in a client PUBLISH",
            ));
        }

        // Topic alias (5.0 §3.3.2.3.4).
        let topic: Arc<str> = match p.properties.topic_alias {
            Some(a) if a == 0 || a > self.alias_max => {
                return Err(Close::protocol(
                    ReasonCode::TOPIC_ALIAS_INVALID,
                    "topic alias out of range",
                ));
            }
            Some(a) if p.topic.is_empty() => match self.aliases.get(&a) {
                Some(t) => t.clone(),
                None => {
                    return Err(Close::protocol(
                        ReasonCode::PROTOCOL_ERROR,
                        "unknown topic alias",
                    ));
                }
            },
            Some(a) => {
                let t: Arc<str> = p.topic.as_str().into();
                self.aliases.insert(a, t.clone());
                t
            }
            None if p.topic.is_empty() => {
                return Err(Close::protocol(
                    ReasonCode::PROTOCOL_ERROR,
                    "empty topic without alias",
                ));
            }
            None => p.topic.as_str().into(),
        };

        // A QoS 2 retransmission of a message we already have: acknowledge again only.
        if p.qos == QoS::ExactlyOnce {
            let mut st = self.session.state.lock();
            if st.incoming_qos2.contains(&p.packet_id) {
                drop(st);
                self.send(&Packet::PubRec(Ack::success(p.packet_id)));
                return Ok(());
            }
            if st.incoming_qos2.len() >= usize::from(inner.config.limits.max_inflight) {
                return Err(Close::protocol(
                    ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                    "too many unreleased QoS 2 messages",
                ));
            }
            st.incoming_qos2.insert(p.packet_id);
        }

        let throttled = !inner
            .sanctions
            .admit_publish(&self.device, std::time::Instant::now());
        let decision = if throttled {
            Decision::Deny("throttled: the device is limited to a lower publish rate".into())
        } else if self.topic_within_limits(&topic) {
            let ctx = PublishContext {
                topic: &topic,
                payload: &p.payload,
                qos: p.qos,
                retain: p.retain,
            };
            inner.gate().publish(&self.identity, &ctx)
        } else {
            Decision::Deny("topic exceeds the configured length or level limits".into())
        };
        let allowed = decision.is_allow();
        if inner.tap.is_active() {
            inner.tap.emit(Observation::Publish(PublishObservation {
                at: SystemTime::now(),
                session: self.session.uid,
                identity: self.identity.clone(),
                topic: topic.clone(),
                size: u32::try_from(p.payload.len()).unwrap_or(u32::MAX),
                payload: bytes::Bytes::copy_from_slice(
                    &p.payload[..p.payload.len().min(inner.config.limits.tap_payload_bytes)],
                ),
                qos: p.qos as u8,
                retain: p.retain,
                allowed,
            }));
        }
        match decision {
            Decision::Allow => {
                // A retained payload is kept for long: copy it out of the read buffer so
                // it does not pin that whole allocation.
                let payload = if p.retain {
                    bytes::Bytes::copy_from_slice(&p.payload)
                } else {
                    p.payload
                };
                let msg = Arc::new(Message {
                    tenant: self.tenant.clone(),
                    topic,
                    payload,
                    qos: p.qos,
                    retain: p.retain,
                    properties: forwarded_properties(&p.properties),
                    expires_at: p
                        .properties
                        .message_expiry_interval
                        .map(|s| std::time::Instant::now() + Duration::from_secs(u64::from(s))),
                    origin: self.session.uid,
                });
                // The broker's message memory is spent: a 5.0 client is told to come back
                // later rather than have its message dropped on the way (3.1.1 has no way
                // to refuse a PUBLISH; its deliveries that do not fit are dropped).
                if p.qos != QoS::AtMostOnce
                    && self.version == ProtocolVersion::V5
                    && !inner.budget.admits_publish(msg.size() + DELIVERY_OVERHEAD)
                {
                    Metrics::reason(&inner.metrics.publishes_refused, "memory_budget");
                    debug!(topic = %msg.topic, "publish refused: the message memory budget is spent");
                    self.refuse_publish(p.qos, p.packet_id, ReasonCode::QUOTA_EXCEEDED);
                    return Ok(());
                }
                if msg.retain {
                    inner.retain(msg.clone());
                }
                inner.route(&msg, &mut self.route_buf);
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => self.send(&Packet::PubAck(Ack::success(p.packet_id))),
                    QoS::ExactlyOnce => self.send(&Packet::PubRec(Ack::success(p.packet_id))),
                }
                Ok(())
            }
            Decision::Deny(why) => {
                inner.metrics.deny("publish");
                debug!(topic = %topic, reason = %why, "publish denied");
                let reason = if throttled {
                    ReasonCode::QUOTA_EXCEEDED
                } else {
                    ReasonCode::NOT_AUTHORIZED
                };
                self.refuse_publish(p.qos, p.packet_id, reason);
                Ok(())
            }
            Decision::Disconnect(why) => {
                inner.metrics.deny("publish");
                Err(Close {
                    cause: DisconnectCause::Gate,
                    reason: Some(ReasonCode::NOT_AUTHORIZED),
                    reason_string: Some(why.into_owned()),
                    will: true,
                })
            }
        }
    }

    /// Answers a QoS 1 or 2 PUBLISH that was not taken (a QoS 0 one gets no answer).
    /// `reason` reaches 5.0 clients only: a 3.1.1 acknowledgement has no reason code.
    fn refuse_publish(&mut self, qos: QoS, packet_id: u16, reason: ReasonCode) {
        let mut ack = Ack::success(packet_id);
        ack.reason = reason;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(ack)),
            QoS::ExactlyOnce => {
                if self.version == ProtocolVersion::V5 {
                    // An error PUBREC ends the exchange: no PUBREL follows.
                    self.session.state.lock().incoming_qos2.remove(&packet_id);
                }
                self.send(&Packet::PubRec(ack));
            }
        }
    }

    fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Close> {
        let inner = self.inner.clone();
        let limits = &inner.config.limits;
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let v5 = self.version == ProtocolVersion::V5;
        let gate = inner.gate();
        let mut reasons = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        let now = std::time::Instant::now();
        for entry in s.filters {
            let filter = entry.filter;
            let text = filter.as_str();
            let exists = self.session.state.lock().subscriptions.contains_key(text);
            let failure = if !self.topic_within_limits(filter.match_filter()) {
                Some(ReasonCode::TOPIC_FILTER_INVALID)
            } else if !exists
                && self.session.state.lock().subscriptions.len()
                    >= limits.max_subscriptions_per_session
            {
                Some(ReasonCode::QUOTA_EXCEEDED)
            } else {
                match gate.subscribe(&self.identity, &filter) {
                    Decision::Allow => None,
                    Decision::Deny(why) => {
                        debug!(filter = %filter, reason = %why, "subscription denied");
                        Some(ReasonCode::NOT_AUTHORIZED)
                    }
                    Decision::Disconnect(why) => {
                        inner.metrics.deny("subscribe");
                        return Err(Close {
                            cause: DisconnectCause::Gate,
                            reason: Some(ReasonCode::NOT_AUTHORIZED),
                            reason_string: Some(why.into_owned()),
                            will: true,
                        });
                    }
                }
            };
            if inner.tap.is_active() {
                inner.tap.emit(Observation::Subscribe(SubscribeObservation {
                    at: SystemTime::now(),
                    session: self.session.uid,
                    identity: self.identity.clone(),
                    filter: text.to_owned(),
                    qos: entry.options.qos as u8,
                    allowed: failure.is_none(),
                }));
            }
            if let Some(code) = failure {
                if code == ReasonCode::NOT_AUTHORIZED {
                    inner.metrics.deny("subscribe");
                }
                reasons.push(if v5 {
                    code
                } else {
                    ReasonCode::UNSPECIFIED_ERROR
                });
                continue;
            }
            let options = entry.options;
            let is_new = inner.router.subscribe(
                &filter,
                SubRef {
                    session: self.session.clone(),
                    options,
                    id: sub_id,
                },
            );
            self.session.state.lock().subscriptions.insert(
                text.to_owned(),
                Subscription {
                    filter: filter.clone(),
                    options,
                    id: sub_id,
                },
            );
            reasons.push(ReasonCode(options.qos as u8));
            let send_retained = filter.shared().is_none()
                && match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => is_new,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                for msg in inner
                    .router
                    .retained_matching(&self.tenant, filter.match_filter(), now)
                {
                    retained.push(Delivery {
                        qos: msg.qos.min(options.qos),
                        retain: true,
                        sub_ids: sub_id.into_iter().collect(),
                        msg,
                    });
                }
            }
        }
        drop(gate);
        self.send(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reasons,
            properties: Properties::default(),
        }));
        for d in retained {
            if let Err(reason) = self
                .session
                .enqueue(d, limits.queue())
                .map_err(Dropped::reason)
                && let Some(reason) = reason
            {
                Metrics::reason(&inner.metrics.messages_dropped, reason);
            }
        }
        Ok(())
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let mut reasons = Vec::with_capacity(u.filters.len());
        for f in &u.filters {
            let had = self
                .session
                .state
                .lock()
                .subscriptions
                .remove(f.as_str())
                .is_some();
            if had {
                self.inner
                    .router
                    .unsubscribe(&self.tenant, f, self.session.uid);
            }
            reasons.push(if had {
                ReasonCode::SUCCESS
            } else {
                ReasonCode::NO_SUBSCRIPTION_EXISTED
            });
        }
        self.send(&Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            reasons,
            properties: Properties::default(),
        }));
    }

    fn publish_packet(d: &Delivery, packet_id: u16, dup: bool, now: std::time::Instant) -> Packet {
        let mut properties = d.msg.properties.clone();
        if let Some(t) = d.msg.expires_at {
            let left = t.saturating_duration_since(now).as_secs().max(1);
            properties.message_expiry_interval = Some(u32::try_from(left).unwrap_or(u32::MAX));
        }
        properties.subscription_identifiers.clone_from(&d.sub_ids);
        Packet::Publish(Publish {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic: d.msg.topic.to_string(),
            packet_id,
            payload: d.msg.payload.clone(),
            properties,
        })
    }

    /// After a resumed session: resend what was in flight, with DUP set (MQTT §4.4).
    fn resend_inflight(&mut self) {
        let now = std::time::Instant::now();
        let packets: Vec<Packet> = {
            let st = self.session.state.lock();
            st.queue
                .inflight()
                .iter()
                .map(|i| {
                    if i.released {
                        Packet::PubRel(Ack::success(i.packet_id))
                    } else {
                        Self::publish_packet(&i.delivery, i.packet_id, true, now)
                    }
                })
                .collect()
        };
        for p in &packets {
            self.send(p);
        }
    }

    /// Moves queued deliveries into the write buffer, within the client's receive
    /// maximum and maximum packet size.
    fn drain(&mut self) {
        let now = std::time::Instant::now();
        let v5 = self.version == ProtocolVersion::V5;
        let window = usize::from(self.inner.config.limits.max_inflight);
        let m = &self.inner.metrics;
        let mut st = self.session.state.lock();
        let window = window.min(usize::from(st.receive_max));
        while self.wbuf.len() < WRITE_HIGH_WATER {
            let Some(front) = st.queue.pending().front() else {
                break;
            };
            if front.qos != QoS::AtMostOnce && st.queue.inflight().len() >= window {
                break;
            }
            let Some(d) = st.queue.pop_pending() else {
                break;
            };
            if d.msg.expired(now) {
                Metrics::reason(&m.messages_dropped, "expired");
                continue;
            }
            let packet_id = if d.qos == QoS::AtMostOnce {
                0
            } else {
                st.alloc_packet_id()
            };
            let mut packet = Self::publish_packet(&d, packet_id, false, now);
            let alias = self.out_aliases.pick(&d.msg.topic);
            if let (Some((a, known)), Packet::Publish(p)) = (alias, &mut packet) {
                p.properties.topic_alias = Some(a);
                if known {
                    p.topic.clear();
                }
            }
            if v5 && encoded_len(&packet, self.version) > st.max_packet as usize {
                Metrics::reason(&m.messages_dropped, "exceeds_client_maximum_packet_size");
                continue;
            }
            if let Err(e) = encode(&packet, self.version, &mut self.wbuf) {
                warn!(error = %e, "could not encode a delivery");
                continue;
            }
            // Only an alias the client has now seen with its topic may be used alone.
            match alias {
                Some((a, false)) => self.out_aliases.learn(&d.msg.topic, a),
                Some((_, true)) => {
                    m.topic_alias_bytes_saved
                        .inc_by((d.msg.topic.len() - ALIAS_COST) as u64);
                }
                None => {}
            }
            m.messages_out.inc();
            if d.qos != QoS::AtMostOnce {
                st.queue.push_inflight(Inflight {
                    packet_id,
                    delivery: d,
                    released: false,
                });
            }
        }
    }
}
