//! MQTT packet captures → observations, one scored unit per TCP flow.
//!
//! Frames are read down to TCP ([`frame`]), each direction of each connection is put
//! back in order ([`tcp`]), and the client's byte stream is decoded with the broker's own
//! decoder (`gatehouse-mqtt`), so a replayed packet is judged exactly as a live one. The
//! broker's first answer, CONNACK, tells whether a CONNECT was accepted (`Connect`) or
//! refused (`AuthFailure`); what the client sent meanwhile waits for that answer.

pub mod file;
pub mod frame;
pub mod tcp;

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use gatehouse_mqtt::{Packet, ProtocolVersion, ReasonCode, decode};
use gatehouse_types::{
    AuthFailure, ConnectObservation, DeviceId, DeviceRef, DisconnectCause, Identity,
    IdentitySource, Observation, PublishObservation, SubscribeObservation, TenantId, TlsFacts,
};

pub use file::{CaptureError, read_capture};

use crate::trace::{Event, Trace, Unit};
use frame::{Parsed, TcpFlags, TcpSegment, parse_frame};
use tcp::{Chunk, Reassembler};

/// How a capture is read.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// The class of every flow in the capture.
    pub label: String,
    /// Tenant of the identities taken from CONNECT packets.
    pub tenant: TenantId,
    /// Ports a broker listens on: tells client from server when no SYN was captured.
    pub broker_ports: Vec<u16>,
    /// How many payload bytes a `Publish` observation carries (the broker tap's limit).
    pub payload_bytes: usize,
    /// Largest MQTT packet accepted, as the broker's `max_packet_size`.
    pub max_packet_size: u32,
    /// Out-of-order bytes held per direction of a flow before a gap is declared.
    pub reassembly_limit: usize,
}

impl CaptureOptions {
    /// Defaults for a capture of class `label`.
    pub fn new(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            tenant: TenantId::new("replay").unwrap_or_default(),
            broker_ports: vec![1883, 8883],
            payload_bytes: 1024,
            max_packet_size: 1 << 20,
            reassembly_limit: 1 << 20,
        }
    }
}

/// Observations held back from a client until the broker's CONNACK: at most this many.
const MAX_QUEUED: usize = 4096;
/// Topic aliases remembered per flow.
const MAX_ALIASES: usize = 1024;

/// Reads a whole capture into a trace.
pub fn capture_trace<R: Read + Send>(
    input: R,
    opts: &CaptureOptions,
) -> Result<Trace, CaptureError> {
    let mut input = input;
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match input.read(&mut head[got..]) {
            Ok(0) => return Err(CaptureError::NotACapture),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(CaptureError::Io),
        }
    }
    let mut x = Extractor::new(opts);
    x.trace.extraction.format = if is_pcapng(&head) { "pcapng" } else { "pcap" }.into();
    let input = std::io::Cursor::new(head).chain(input);
    let frames = read_capture(input, |f| x.frame(f))?;
    x.finish();
    let mut trace = x.trace;
    trace.extraction.frames = frames;
    Ok(trace)
}

/// Whether `bytes` start like a pcapng file (a Section Header Block).
pub fn is_pcapng(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x0A, 0x0D, 0x0D, 0x0A])
}

#[derive(Debug)]
enum Phase {
    /// Nothing decoded from the client yet.
    AwaitConnect,
    /// CONNECT decoded; waiting for the broker's CONNACK.
    Pending {
        connect: PendingConnect,
        queued: Vec<Observation>,
    },
    /// A session: observations go out as they are decoded.
    Session,
    /// Refused, ended or undecodable: nothing more is observed.
    Over,
}

#[derive(Debug)]
struct PendingConnect {
    client_id: String,
    protocol_level: u8,
    clean_start: bool,
    keep_alive: u16,
}

#[derive(Debug)]
struct Flow {
    unit: usize,
    session: u64,
    client: SocketAddr,
    client_isn: Option<u32>,
    c2s: Reassembler,
    s2c: Reassembler,
    c2s_buf: BytesMut,
    s2c_buf: BytesMut,
    version: ProtocolVersion,
    phase: Phase,
    identity: Option<Arc<Identity>>,
    /// The broker's CONNACK, once read: `Some(None)` when its stream could not be read.
    connack: Option<Option<(ReasonCode, bool)>>,
    /// After a gap: skip client bytes until a packet decodes again.
    desync: bool,
    /// The client stream is no longer decoded (after DISCONNECT, an error or a refusal).
    client_done: bool,
    /// The connection has ended (RST, or FIN from the broker).
    ended: bool,
    /// The client sent FIN.
    client_fin: bool,
    aliases: HashMap<u16, Arc<str>>,
}

struct Extractor<'o> {
    opts: &'o CaptureOptions,
    flows: Vec<Flow>,
    index: HashMap<(SocketAddr, SocketAddr), usize>,
    trace: Trace,
    chunks: Vec<Chunk>,
}

impl<'o> Extractor<'o> {
    fn new(opts: &'o CaptureOptions) -> Self {
        Self {
            opts,
            flows: Vec::new(),
            index: HashMap::new(),
            trace: Trace::default(),
            chunks: Vec::new(),
        }
    }

    fn frame(&mut self, f: file::Frame<'_>) {
        let Some(link) = f.link else {
            self.trace.extraction.skipped_frames += 1;
            return;
        };
        match parse_frame(link, f.data) {
            Ok(Parsed::Tcp(seg)) => {
                self.trace.extraction.tcp_segments += 1;
                self.segment(f.at, &seg);
            }
            Ok(Parsed::Skipped(_)) => self.trace.extraction.skipped_frames += 1,
            Err(e) => {
                let x = &mut self.trace.extraction;
                x.bad_frames += 1;
                if x.first_bad_frame.is_none() {
                    x.first_bad_frame =
                        Some(format!("frame {}: {e}", x.tcp_segments + x.bad_frames));
                }
            }
        }
    }

    /// Which flow a segment belongs to, and whether the client sent it.
    fn flow_of(&mut self, at: SystemTime, seg: &TcpSegment<'_>) -> (usize, bool) {
        let syn_only = seg.flags.has(TcpFlags::SYN) && !seg.flags.has(TcpFlags::ACK);
        let existing = self
            .index
            .get(&(seg.src, seg.dst))
            .map(|&i| (i, true))
            .or_else(|| self.index.get(&(seg.dst, seg.src)).map(|&i| (i, false)));
        if let Some((i, from_client)) = existing {
            let f = &self.flows[i];
            // A new SYN on an ended connection, or with another initial sequence number,
            // opens a new connection on the same ports.
            let reused = syn_only
                && from_client
                && (f.ended || f.client_isn.is_some_and(|isn| isn != seg.seq));
            if !reused {
                return (i, from_client);
            }
        }
        let from_client = if seg.flags.has(TcpFlags::SYN) {
            !seg.flags.has(TcpFlags::ACK)
        } else if self.opts.broker_ports.contains(&seg.dst.port()) {
            true
        } else if self.opts.broker_ports.contains(&seg.src.port()) {
            false
        } else {
            seg.dst.port() <= seg.src.port()
        };
        let (client, server) = if from_client {
            (seg.src, seg.dst)
        } else {
            (seg.dst, seg.src)
        };
        let unit = self.trace.units.len();
        self.trace.units.push(Unit {
            label: self.opts.label.clone(),
            subject: format!("ip:{}", client.ip()),
            peer: Some(client.ip()),
            devices: Vec::new(),
            first: at,
            last: at,
            open: false,
        });
        self.trace.extraction.flows += 1;
        let i = self.flows.len();
        self.flows.push(Flow {
            unit,
            session: i as u64 + 1,
            client,
            client_isn: None,
            c2s: Reassembler::new(self.opts.reassembly_limit),
            s2c: Reassembler::new(self.opts.reassembly_limit),
            c2s_buf: BytesMut::new(),
            s2c_buf: BytesMut::new(),
            version: ProtocolVersion::V311,
            phase: Phase::AwaitConnect,
            identity: None,
            connack: None,
            desync: false,
            client_done: false,
            ended: false,
            client_fin: false,
            aliases: HashMap::new(),
        });
        self.index.insert((client, server), i);
        (i, from_client)
    }

    fn segment(&mut self, at: SystemTime, seg: &TcpSegment<'_>) {
        let (i, from_client) = self.flow_of(at, seg);
        let unit = self.flows[i].unit;
        let u = &mut self.trace.units[unit];
        u.last = u.last.max(at);
        let mut chunks = std::mem::take(&mut self.chunks);
        chunks.clear();
        let flow = &mut self.flows[i];
        if from_client {
            if seg.flags.has(TcpFlags::SYN) {
                if flow.client_isn.is_none() {
                    self.trace.extraction.flows_with_syn += 1;
                }
                flow.client_isn = Some(seg.seq);
                flow.c2s.syn(seg.seq);
            }
            if !flow.client_done {
                let seq = if seg.flags.has(TcpFlags::SYN) {
                    seg.seq.wrapping_add(1)
                } else {
                    seg.seq
                };
                flow.c2s.segment(seq, seg.payload, &mut chunks);
                if seg.flags.has(TcpFlags::FIN) || seg.flags.has(TcpFlags::RST) {
                    flow.c2s.finish(&mut chunks);
                }
                self.client_chunks(i, at, &chunks);
            }
        } else {
            if seg.flags.has(TcpFlags::SYN) {
                flow.s2c.syn(seg.seq);
            }
            if flow.connack.is_none() {
                let seq = if seg.flags.has(TcpFlags::SYN) {
                    seg.seq.wrapping_add(1)
                } else {
                    seg.seq
                };
                flow.s2c.segment(seq, seg.payload, &mut chunks);
                self.server_chunks(i, at, &chunks);
            }
        }
        self.chunks = chunks;
        if seg.flags.has(TcpFlags::RST) || (!from_client && seg.flags.has(TcpFlags::FIN)) {
            self.end(i, at);
        } else if seg.flags.has(TcpFlags::FIN) {
            self.client_fin(i, at);
        }
    }

    fn client_chunks(&mut self, i: usize, at: SystemTime, chunks: &[Chunk]) {
        for chunk in chunks {
            let flow = &mut self.flows[i];
            if flow.client_done {
                return;
            }
            match chunk {
                Chunk::Gap(_) => {
                    flow.c2s_buf.clear();
                    flow.desync = true;
                }
                Chunk::Data(d) => {
                    flow.c2s_buf.extend_from_slice(d);
                    self.decode_client(i, at);
                }
            }
        }
    }

    fn decode_client(&mut self, i: usize, at: SystemTime) {
        loop {
            let flow = &mut self.flows[i];
            if flow.client_done {
                flow.c2s_buf.clear();
                return;
            }
            match decode(&mut flow.c2s_buf, flow.version, self.opts.max_packet_size) {
                Ok(Some(packet)) => {
                    flow.desync = false;
                    self.trace.extraction.mqtt_packets += 1;
                    self.client_packet(i, at, packet);
                }
                Ok(None) => return,
                Err(e) => {
                    if flow.desync {
                        // Not a packet boundary after a gap: wait for the next bytes.
                        flow.c2s_buf.clear();
                        return;
                    }
                    let is_connect = flow.c2s_buf.first().is_some_and(|b| b >> 4 == 1);
                    flow.c2s_buf.clear();
                    flow.client_done = true;
                    if matches!(flow.phase, Phase::AwaitConnect) && is_connect {
                        self.refuse(i, at, None, format!("malformed_connect: {e}"));
                    } else {
                        self.client_error(i, at);
                    }
                    return;
                }
            }
        }
    }

    fn client_packet(&mut self, i: usize, at: SystemTime, packet: Packet) {
        let flow = &mut self.flows[i];
        match (&flow.phase, packet) {
            (Phase::AwaitConnect, Packet::Connect(c)) => {
                flow.version = c.protocol;
                let device = device_id(&c.client_id, c.username.as_deref(), flow.client.ip());
                let identity = Arc::new(Identity {
                    tenant: self.opts.tenant.clone(),
                    device,
                    source: IdentitySource::Password,
                });
                let unit = &mut self.trace.units[flow.unit];
                let dref = DeviceRef::from(&*identity);
                if !unit.devices.contains(&dref) {
                    unit.devices.push(dref);
                }
                flow.identity = Some(identity);
                flow.phase = Phase::Pending {
                    connect: PendingConnect {
                        client_id: c.client_id.clone(),
                        protocol_level: c.protocol.level(),
                        clean_start: c.clean_start,
                        keep_alive: c.keep_alive,
                    },
                    queued: Vec::new(),
                };
                if let Some(answer) = flow.connack {
                    self.answer(i, at, answer);
                }
            }
            (Phase::AwaitConnect, _) if flow.client_isn.is_some() => {
                // The connection's start was captured and its first packet is not a
                // CONNECT: the broker closes it.
                flow.client_done = true;
                self.refuse(i, at, None, "first_packet_not_connect".into());
            }
            (Phase::AwaitConnect, other) => {
                // The capture starts inside the connection: its CONNECT was not captured.
                let device = device_id("", None, flow.client.ip());
                let identity = Arc::new(Identity {
                    tenant: self.opts.tenant.clone(),
                    device,
                    source: IdentitySource::Password,
                });
                let unit = &mut self.trace.units[flow.unit];
                let dref = DeviceRef::from(&*identity);
                if !unit.devices.contains(&dref) {
                    unit.devices.push(dref);
                }
                flow.identity = Some(identity);
                flow.phase = Phase::Session;
                self.client_packet(i, at, other);
            }
            (Phase::Over, _) => {}
            (_, Packet::Connect(_)) => {
                // A second CONNECT is a protocol error.
                self.client_error(i, at);
            }
            (_, Packet::Publish(p)) => {
                let topic: Arc<str> = if p.topic.is_empty() {
                    match p.properties.topic_alias.and_then(|a| flow.aliases.get(&a)) {
                        Some(t) => t.clone(),
                        None => {
                            self.client_error(i, at);
                            return;
                        }
                    }
                } else {
                    let t: Arc<str> = Arc::from(p.topic.as_str());
                    if let Some(a) = p.properties.topic_alias
                        && (flow.aliases.len() < MAX_ALIASES || flow.aliases.contains_key(&a))
                    {
                        flow.aliases.insert(a, t.clone());
                    }
                    t
                };
                let Some(identity) = flow.identity.clone() else {
                    return;
                };
                let keep = p.payload.len().min(self.opts.payload_bytes);
                let obs = Observation::Publish(PublishObservation {
                    at,
                    session: flow.session,
                    identity,
                    topic,
                    size: u32::try_from(p.payload.len()).unwrap_or(u32::MAX),
                    payload: Bytes::copy_from_slice(&p.payload[..keep]),
                    qos: p.qos as u8,
                    retain: p.retain,
                    allowed: true,
                });
                self.emit(i, obs);
            }
            (_, Packet::Subscribe(s)) => {
                let Some(identity) = flow.identity.clone() else {
                    return;
                };
                let session = flow.session;
                for f in s.filters {
                    let obs = Observation::Subscribe(SubscribeObservation {
                        at,
                        session,
                        identity: identity.clone(),
                        filter: f.filter.as_str().to_owned(),
                        qos: f.options.qos as u8,
                        allowed: true,
                    });
                    self.emit(i, obs);
                }
            }
            (_, Packet::Disconnect(_)) => {
                flow.client_done = true;
                self.disconnect(i, at, DisconnectCause::ClientDisconnect);
            }
            // Acknowledgements, pings, UNSUBSCRIBE, AUTH: nothing the detectors watch.
            _ => {}
        }
    }

    fn server_chunks(&mut self, i: usize, at: SystemTime, chunks: &[Chunk]) {
        for chunk in chunks {
            let flow = &mut self.flows[i];
            if flow.connack.is_some() {
                return;
            }
            let answer = match chunk {
                Chunk::Gap(_) => Some(None),
                Chunk::Data(d) => {
                    flow.s2c_buf.extend_from_slice(d);
                    match decode(&mut flow.s2c_buf, flow.version, self.opts.max_packet_size) {
                        Ok(Some(Packet::ConnAck(ca))) => {
                            Some(Some((ca.reason, ca.session_present)))
                        }
                        Ok(Some(_)) | Err(_) => Some(None),
                        Ok(None) => None,
                    }
                }
            };
            if let Some(answer) = answer {
                flow.connack = Some(answer);
                flow.s2c_buf = BytesMut::new();
                if matches!(flow.phase, Phase::Pending { .. }) {
                    self.answer(i, at, answer);
                }
            }
        }
    }

    /// The broker answered a pending CONNECT (`None`: its answer could not be read, and
    /// the session is taken as accepted since the connection went on).
    fn answer(&mut self, i: usize, at: SystemTime, answer: Option<(ReasonCode, bool)>) {
        let flow = &mut self.flows[i];
        let refused = answer.is_some_and(|(code, _)| code.is_error());
        if refused {
            let code = answer.map_or(ReasonCode::UNSPECIFIED_ERROR, |(c, _)| c);
            flow.client_done = true;
            self.refuse(i, at, Some(code), refusal_name(code));
            return;
        }
        let Phase::Pending { connect, queued } = std::mem::replace(&mut flow.phase, Phase::Session)
        else {
            return;
        };
        let Some(identity) = flow.identity.clone() else {
            return;
        };
        let obs = Observation::Connect(ConnectObservation {
            at,
            session: flow.session,
            peer: flow.client,
            identity,
            client_id: connect.client_id,
            protocol_level: connect.protocol_level,
            clean_start: connect.clean_start,
            keep_alive: connect.keep_alive,
            session_present: answer.is_some_and(|(_, sp)| sp),
            tls: TlsFacts::default(),
        });
        self.push(i, obs);
        for mut obs in queued {
            set_time(&mut obs, at);
            if matches!(obs, Observation::Disconnect { .. }) {
                self.flows[i].phase = Phase::Over;
            }
            self.push(i, obs);
        }
    }

    /// The connection attempt failed before a session existed.
    fn refuse(&mut self, i: usize, at: SystemTime, _code: Option<ReasonCode>, reason: String) {
        let flow = &mut self.flows[i];
        let client_id = match &flow.phase {
            Phase::Pending { connect, .. } => Some(connect.client_id.clone()),
            _ => None,
        };
        flow.phase = Phase::Over;
        let obs = Observation::AuthFailure(AuthFailure {
            at,
            peer: flow.client,
            identity: flow.identity.clone(),
            client_id,
            reason,
        });
        self.push(i, obs);
    }

    fn client_error(&mut self, i: usize, at: SystemTime) {
        let flow = &mut self.flows[i];
        flow.client_done = true;
        flow.c2s_buf.clear();
        self.disconnect(i, at, DisconnectCause::ProtocolError);
    }

    fn disconnect(&mut self, i: usize, at: SystemTime, cause: DisconnectCause) {
        let flow = &mut self.flows[i];
        let Some(identity) = flow.identity.clone() else {
            flow.phase = Phase::Over;
            return;
        };
        let obs = Observation::Disconnect {
            at,
            session: flow.session,
            identity,
            cause,
        };
        match &mut flow.phase {
            // The session's outcome still waits for the CONNACK; its end is queued even
            // when the queue is full.
            Phase::Pending { queued, .. } => queued.push(obs),
            Phase::Session => {
                flow.phase = Phase::Over;
                self.push(i, obs);
            }
            _ => {}
        }
    }

    fn emit(&mut self, i: usize, obs: Observation) {
        match &mut self.flows[i].phase {
            Phase::Pending { queued, .. } if queued.len() < MAX_QUEUED => queued.push(obs),
            Phase::Session => self.push(i, obs),
            _ => {}
        }
    }

    fn push(&mut self, i: usize, obs: Observation) {
        self.trace.extraction.count(&obs);
        self.trace.events.push(Event {
            obs,
            unit: self.flows[i].unit,
        });
    }

    /// The client sent FIN: it will send nothing more, but the broker still reads what
    /// came before and may still answer a pending CONNECT; the session ends (connection
    /// lost) once that answer is known.
    fn client_fin(&mut self, i: usize, at: SystemTime) {
        let flow = &mut self.flows[i];
        flow.client_fin = true;
        if flow.client_done || flow.ended {
            flow.client_done = true;
            return;
        }
        flow.client_done = true;
        self.disconnect(i, at, DisconnectCause::ConnectionLost);
    }

    /// RST from either side, or FIN from the broker: the connection is over.
    fn end(&mut self, i: usize, at: SystemTime) {
        let flow = &mut self.flows[i];
        if flow.ended {
            return;
        }
        flow.ended = true;
        flow.client_done = true;
        match flow.phase {
            Phase::Pending { .. } => {
                // The connection closed before the broker answered the CONNECT.
                self.refuse(i, at, None, "closed_before_connack".into());
            }
            Phase::Session => self.disconnect(i, at, DisconnectCause::ConnectionLost),
            _ => flow.phase = Phase::Over,
        }
    }

    /// The capture is over: bytes still waiting out of order are decoded. Connections
    /// still open stay open (the capture ended, not them); a CONNECT still waiting for
    /// its CONNACK produces nothing.
    fn finish(&mut self) {
        let mut chunks = Vec::new();
        for i in 0..self.flows.len() {
            chunks.clear();
            let flow = &mut self.flows[i];
            if !flow.client_done && !flow.ended {
                flow.c2s.finish(&mut chunks);
                let last = self.trace.units[flow.unit].last;
                self.client_chunks(i, last, &chunks);
            }
            let flow = &self.flows[i];
            if !flow.ended && !flow.client_fin {
                self.trace.units[flow.unit].open = true;
            }
            let r = flow.c2s.stats();
            let t = &mut self.trace.extraction.reassembly;
            t.delivered += r.delivered;
            t.duplicate += r.duplicate;
            t.missing += r.missing;
            t.gaps += r.gaps;
        }
    }
}

fn set_time(obs: &mut Observation, t: SystemTime) {
    match obs {
        Observation::Connect(c) => c.at = t,
        Observation::AuthFailure(a) => a.at = t,
        Observation::Subscribe(s) => s.at = t,
        Observation::Publish(p) => p.at = t,
        Observation::Disconnect { at, .. } => *at = t,
        _ => {}
    }
}

fn refusal_name(code: ReasonCode) -> String {
    match code {
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION => "unsupported_protocol_version".into(),
        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID => "client_identifier_not_valid".into(),
        ReasonCode::BAD_USER_NAME_OR_PASSWORD => "bad_user_name_or_password".into(),
        ReasonCode::NOT_AUTHORIZED => "not_authorized".into(),
        ReasonCode::SERVER_UNAVAILABLE => "server_unavailable".into(),
        ReasonCode::SERVER_BUSY => "server_busy".into(),
        ReasonCode::BANNED => "banned".into(),
        ReasonCode::BAD_AUTHENTICATION_METHOD => "bad_authentication_method".into(),
        ReasonCode(c) => format!("connack_{c:#04x}"),
    }
}

/// The device id a CONNECT stands for: its client id, else its user name, else
/// `anon-<client address>`; anything that is not a valid [`DeviceId`] is made one by
/// replacing the characters it may not hold with `_` and adding a hash of the original,
/// so that two different client ids never meet.
pub fn device_id(client_id: &str, username: Option<&str>, peer: IpAddr) -> DeviceId {
    let raw = if !client_id.is_empty() {
        client_id.to_owned()
    } else if let Some(u) = username.filter(|u| !u.is_empty()) {
        u.to_owned()
    } else {
        format!("anon-{peer}")
    };
    if let Ok(id) = DeviceId::new(raw.as_str()) {
        return id;
    }
    let mut clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    clean.push('-');
    clean.push_str(&format!("{:016x}", fnv1a(raw.as_bytes())));
    DeviceId::new(clean).expect("at most 117 characters, all of them allowed")
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests;
