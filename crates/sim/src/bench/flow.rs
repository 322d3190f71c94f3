//! Message flows: publishers that stamp their payloads, subscribers that count and time
//! them, and the end-to-end window that keeps both honest.
//!
//! A [`Flow`] is one publisher's stream and the subscribers that receive it. The publisher
//! may be at most `window` messages ahead of delivery (times the number of subscribers), and
//! at QoS 1 also at most `window` ahead of its PUBACKs, so what is measured is the broker
//! moving messages, not queues filling up in the broker or in the generator.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use gatehouse_mqtt::{Packet, Properties, ProtocolVersion, Publish, QoS};
use hdrhistogram::Histogram;
use tokio::sync::{Notify, watch};

use crate::client::{Client, ClientError};

/// Bytes at the front of every payload: send time (ns), stream number, sequence number.
pub const STAMP_LEN: usize = 16;

/// A publisher that has not seen any progress for this long counts what it is waiting
/// for as lost and goes on (QoS 0 may drop; a broker may drop on a full queue).
const STALL: Duration = Duration::from_millis(500);

/// Longest wait for the last PUBACKs once a publisher stops.
const ACK_WAIT: Duration = Duration::from_secs(5);

/// Most publishes written before one flush.
const BATCH: u64 = 32;

/// Longest latency the histograms hold, in nanoseconds (values above are clamped).
const MAX_LATENCY_NS: u64 = 60_000_000_000;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since a process-wide epoch: publishers and subscribers share the clock.
pub fn now_ns() -> u64 {
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A latency histogram in nanoseconds, 3 significant figures.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("constant histogram bounds are valid")
}

/// What a payload carries at its front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// When it was published, from [`now_ns`].
    pub sent_ns: u64,
    /// Which flow it belongs to.
    pub stream: u32,
    /// Its number within the flow.
    pub seq: u32,
}

// === impl Stamp ===

impl Stamp {
    fn write(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.sent_ns.to_le_bytes());
        out[8..12].copy_from_slice(&self.stream.to_le_bytes());
        out[12..16].copy_from_slice(&self.seq.to_le_bytes());
    }

    /// Reads the stamp at the front of a payload.
    pub fn read(payload: &[u8]) -> Option<Self> {
        let head: &[u8; STAMP_LEN] = payload.get(..STAMP_LEN)?.try_into().ok()?;
        let (ts, rest) = head.split_at(8);
        let (stream, seq) = rest.split_at(4);
        Some(Self {
            sent_ns: u64::from_le_bytes(ts.try_into().ok()?),
            stream: u32::from_le_bytes(stream.try_into().ok()?),
            seq: u32::from_le_bytes(seq.try_into().ok()?),
        })
    }
}

/// One PUBLISH encoded once by the codec; each message copies it and patches the packet
/// identifier and the stamp in place (their offsets are fixed by the MQTT wire format).
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    frame: Vec<u8>,
    id_at: Option<usize>,
    payload_at: usize,
}

// === impl PublishTemplate ===

impl PublishTemplate {
    /// Encodes a PUBLISH of `payload_len` bytes to `topic` and checks, by decoding a
    /// patched copy, that the offsets are right.
    pub fn new(
        topic: &str,
        qos: QoS,
        payload_len: usize,
        version: ProtocolVersion,
    ) -> anyhow::Result<Self> {
        if payload_len < STAMP_LEN {
            bail!("payload must be at least {STAMP_LEN} bytes");
        }
        let publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.to_owned(),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
            payload: Bytes::from(vec![0u8; payload_len]),
            properties: Properties::default(),
        };
        let mut frame = BytesMut::new();
        gatehouse_mqtt::encode(&Packet::Publish(publish), version, &mut frame)
            .context("encoding the PUBLISH template")?;
        // Fixed header: type byte, then a variable byte integer (continuation bit 0x80).
        let remaining_len_bytes = frame
            .iter()
            .skip(1)
            .position(|b| b & 0x80 == 0)
            .context("PUBLISH template has no remaining length")?
            + 1;
        let header_len = 1 + remaining_len_bytes;
        let id_at = (qos != QoS::AtMostOnce).then_some(header_len + 2 + topic.len());
        let template = Self {
            payload_at: frame.len() - payload_len,
            frame: frame.to_vec(),
            id_at,
        };
        template.check(topic, qos, payload_len, version)?;
        Ok(template)
    }

    fn check(
        &self,
        topic: &str,
        qos: QoS,
        payload_len: usize,
        version: ProtocolVersion,
    ) -> anyhow::Result<()> {
        let stamp = Stamp {
            sent_ns: 0x0102_0304_0506_0708,
            stream: 0x0A0B_0C0D,
            seq: 0x1122_3344,
        };
        let packet_id = if qos == QoS::AtMostOnce { 0 } else { 0xBEEF };
        let mut buf = BytesMut::new();
        self.write(&mut buf, packet_id, stamp);
        let decoded = gatehouse_mqtt::decode(&mut buf, version, u32::MAX)
            .context("decoding the PUBLISH template")?;
        match decoded {
            Some(Packet::Publish(p))
                if p.topic == topic
                    && p.qos == qos
                    && p.packet_id == packet_id
                    && p.payload.len() == payload_len
                    && Stamp::read(&p.payload) == Some(stamp)
                    && buf.is_empty() =>
            {
                Ok(())
            }
            other => bail!("patched PUBLISH template decodes as {other:?}"),
        }
    }

    /// Appends one message to `out`.
    pub fn write(&self, out: &mut BytesMut, packet_id: u16, stamp: Stamp) {
        let start = out.len();
        out.extend_from_slice(&self.frame);
        let frame = &mut out[start..];
        if let Some(at) = self.id_at {
            frame[at..at + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        stamp.write(&mut frame[self.payload_at..self.payload_at + STAMP_LEN]);
    }
}

/// One publisher's stream and its delivery count across all its subscribers.
#[derive(Debug)]
pub struct Flow {
    sent: AtomicU64,
    delivered: AtomicU64,
    fanout: u64,
    progress: Notify,
}

// === impl Flow ===

impl Flow {
    /// A flow whose every message is expected by `fanout` subscribers.
    pub fn new(fanout: u64) -> Self {
        Self {
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            fanout: fanout.max(1),
            progress: Notify::new(),
        }
    }

    /// Messages published.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }

    /// Deliveries counted at the subscribers (a message to `fanout` subscribers counts
    /// `fanout` times).
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Acquire)
    }

    /// Deliveries expected from what has been published.
    pub fn expected(&self) -> u64 {
        self.sent() * self.fanout
    }

    fn on_delivery(&self) {
        self.delivered.fetch_add(1, Ordering::AcqRel);
        self.progress.notify_one();
    }
}

/// How a publisher paces itself.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as the window allows.
    Window(u32),
    /// A fixed rate in messages per second (the window still bounds QoS 1 acknowledgements).
    Rate {
        /// Messages per second.
        per_second: f64,
        /// Unacknowledged QoS 1 publishes allowed.
        window: u32,
    },
}

/// One publisher's job.
#[derive(Debug)]
pub struct Publisher {
    /// Its connection.
    pub client: Client,
    /// The message it sends.
    pub template: PublishTemplate,
    /// QoS of the message.
    pub qos: QoS,
    /// Its flow number (carried in every stamp).
    pub stream: u32,
    /// Its flow.
    pub flow: Arc<Flow>,
    /// Pacing.
    pub pace: Pace,
    /// Stop after this many messages.
    pub max_messages: Option<u64>,
    /// Stops it when it turns true.
    pub stop: watch::Receiver<bool>,
}

/// What a publisher did.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublisherStats {
    /// Messages published.
    pub sent: u64,
    /// PUBACKs received.
    pub acked: u64,
    /// Deliveries given up on after a stall.
    pub given_up: u64,
}

// === impl Publisher ===

impl Publisher {
    /// Publishes until stopped or `max_messages` are out, then disconnects.
    pub async fn run(mut self) -> Result<PublisherStats, ClientError> {
        let mut stats = PublisherStats::default();
        let mut result = match self.pace {
            Pace::Window(window) => self.run_window(window, &mut stats).await,
            Pace::Rate { per_second, window } => {
                self.run_rate(per_second, window, &mut stats).await
            }
        };
        if result.is_ok() {
            result = self.await_acks(&mut stats).await;
        }
        self.client.disconnect().await;
        result.map(|()| stats)
    }

    /// Waits (boundedly) for the PUBACKs of everything published, so that nothing is in
    /// flight when the connection closes.
    async fn await_acks(&mut self, stats: &mut PublisherStats) -> Result<(), ClientError> {
        if self.qos == QoS::AtMostOnce {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + ACK_WAIT;
        while stats.acked < stats.sent {
            let packet = tokio::time::timeout_at(deadline, self.client.recv())
                .await
                .map_err(|_| ClientError::Timeout("final PUBACKs"))??;
            Self::handle(packet, stats)?;
        }
        Ok(())
    }

    fn ack_window(&self, window: u32) -> u64 {
        if self.qos == QoS::AtMostOnce {
            u64::MAX
        } else {
            u64::from(window.min(u32::from(self.client.server_limits().receive_maximum)))
        }
    }

    fn remaining(&self, stats: &PublisherStats) -> u64 {
        self.max_messages
            .map_or(u64::MAX, |m| m - stats.sent.min(m))
    }

    fn handle(packet: Packet, stats: &mut PublisherStats) -> Result<(), ClientError> {
        match packet {
            Packet::PubAck(ack) => {
                if ack.reason.is_error() {
                    return Err(ClientError::Refused(ack.reason));
                }
                stats.acked += 1;
                Ok(())
            }
            Packet::Disconnect(d) => Err(ClientError::Refused(d.reason)),
            _ => Ok(()),
        }
    }

    fn drain(&mut self, stats: &mut PublisherStats) -> Result<(), ClientError> {
        while let Some(packet) = self.client.try_decode()? {
            Self::handle(packet, stats)?;
        }
        Ok(())
    }

    fn write_batch(&mut self, n: u64, stats: &mut PublisherStats) {
        let sent_ns = now_ns();
        for _ in 0..n {
            let packet_id = if self.qos == QoS::AtMostOnce {
                0
            } else {
                self.client.next_packet_id()
            };
            let stamp = Stamp {
                sent_ns,
                stream: self.stream,
                seq: stats.sent as u32,
            };
            self.template
                .write(self.client.write_buffer(), packet_id, stamp);
            stats.sent += 1;
        }
        self.flow.sent.fetch_add(n, Ordering::AcqRel);
    }

    async fn run_window(
        &mut self,
        window: u32,
        stats: &mut PublisherStats,
    ) -> Result<(), ClientError> {
        let ack_window = self.ack_window(window);
        let fanout = self.flow.fanout;
        let e2e_window = u64::from(window) * fanout;
        while !*self.stop.borrow() && self.remaining(stats) > 0 {
            self.drain(stats)?;
            let outstanding = (stats.sent * fanout)
                .saturating_sub(self.flow.delivered() + stats.given_up * fanout);
            let room_e2e = e2e_window.saturating_sub(outstanding) / fanout;
            let room_ack = ack_window.saturating_sub(stats.sent - stats.acked);
            let n = room_e2e.min(room_ack).min(BATCH).min(self.remaining(stats));
            // Wait for a quarter of the window to free up before sending again, so that
            // a full pipeline moves in batches rather than one record per delivery.
            let low_water = (u64::from(window) / 4)
                .clamp(1, BATCH)
                .min(self.remaining(stats));
            if n >= low_water || (n > 0 && outstanding == 0) {
                self.write_batch(n, stats);
                self.client.flush().await?;
                continue;
            }
            let flow = self.flow.clone();
            let notified = flow.progress.notified();
            tokio::select! {
                biased;
                changed = self.stop.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                packet = self.client.recv() => Self::handle(packet?, stats)?,
                () = notified => {}
                () = tokio::time::sleep(STALL) => {
                    // Nothing moved: what is still outstanding is not coming.
                    stats.given_up += outstanding.div_ceil(fanout);
                    if self.qos != QoS::AtMostOnce && stats.sent - stats.acked >= ack_window {
                        // The broker has not acknowledged a full window: give up on the
                        // connection rather than wait forever.
                        return Err(ClientError::Timeout("PUBACK"));
                    }
                }
            }
        }
        Ok(())
    }

    async fn run_rate(
        &mut self,
        per_second: f64,
        window: u32,
        stats: &mut PublisherStats,
    ) -> Result<(), ClientError> {
        let ack_window = self.ack_window(window);
        let start = tokio::time::Instant::now();
        let period = Duration::from_secs_f64(1.0 / per_second.max(0.001));
        while !*self.stop.borrow() && self.remaining(stats) > 0 {
            self.drain(stats)?;
            let due_total = (start.elapsed().as_secs_f64() * per_second) as u64 + 1;
            let room_ack = ack_window.saturating_sub(stats.sent - stats.acked);
            let n = due_total
                .saturating_sub(stats.sent)
                .min(room_ack)
                .min(BATCH)
                .min(self.remaining(stats));
            if n > 0 {
                self.write_batch(n, stats);
                self.client.flush().await?;
                continue;
            }
            let next = start + period.mul_f64(stats.sent as f64);
            tokio::select! {
                biased;
                changed = self.stop.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                packet = self.client.recv() => Self::handle(packet?, stats)?,
                () = tokio::time::sleep_until(next.max(tokio::time::Instant::now())) => {}
            }
        }
        Ok(())
    }
}

/// One subscriber's job.
#[derive(Debug)]
pub struct Subscriber {
    /// Its connection, already subscribed.
    pub client: Client,
    /// Flows by stream number.
    pub flows: Arc<[Arc<Flow>]>,
    /// When set, latencies are recorded while this flag is true.
    pub record: Option<Arc<AtomicBool>>,
    /// Stops it when it turns true.
    pub stop: watch::Receiver<bool>,
}

/// What a subscriber saw.
#[derive(Debug)]
pub struct SubscriberStats {
    /// Messages received.
    pub received: u64,
    /// Messages whose payload carried no stamp of ours.
    pub foreign: u64,
    /// Publish-to-deliver latencies (ns) while recording.
    pub latency: Option<Histogram<u64>>,
}

// === impl Subscriber ===

impl Subscriber {
    /// Receives, acknowledges and counts until stopped, then disconnects.
    pub async fn run(mut self) -> Result<SubscriberStats, ClientError> {
        let mut stats = SubscriberStats {
            received: 0,
            foreign: 0,
            latency: self.record.as_ref().map(|_| latency_histogram()),
        };
        let result = self.receive(&mut stats).await;
        self.client.disconnect().await;
        result.map(|()| stats)
    }

    async fn receive(&mut self, stats: &mut SubscriberStats) -> Result<(), ClientError> {
        loop {
            let packet = tokio::select! {
                biased;
                changed = self.stop.changed() => {
                    if changed.is_err() || *self.stop.borrow() {
                        return Ok(());
                    }
                    continue;
                }
                packet = self.client.recv() => packet?,
            };
            self.handle(packet, stats)?;
            while let Some(packet) = self.client.try_decode()? {
                self.handle(packet, stats)?;
            }
            if self.client.queued_bytes() > 0 {
                self.client.flush().await?;
            }
        }
    }

    fn handle(&mut self, packet: Packet, stats: &mut SubscriberStats) -> Result<(), ClientError> {
        match packet {
            Packet::Publish(publish) => {
                stats.received += 1;
                if publish.qos == QoS::AtLeastOnce {
                    self.client.queue_puback(publish.packet_id)?;
                }
                let Some(stamp) = Stamp::read(&publish.payload) else {
                    stats.foreign += 1;
                    return Ok(());
                };
                let Some(flow) = self.flows.get(stamp.stream as usize) else {
                    stats.foreign += 1;
                    return Ok(());
                };
                flow.on_delivery();
                if let (Some(hist), Some(record)) = (stats.latency.as_mut(), &self.record)
                    && record.load(Ordering::Relaxed)
                {
                    hist.saturating_record(now_ns().saturating_sub(stamp.sent_ns).max(1));
                }
                Ok(())
            }
            Packet::Disconnect(d) => Err(ClientError::Refused(d.reason)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let stamp = Stamp {
            sent_ns: 42,
            stream: 7,
            seq: 9,
        };
        let mut buf = [0u8; 20];
        stamp.write(&mut buf);
        assert_eq!(Stamp::read(&buf), Some(stamp));
        assert_eq!(Stamp::read(&buf[..15]), None);
    }

    #[test]
    fn clock_moves_forward() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
    }

    #[test]
    fn flows_count_expected_deliveries() {
        let flow = Flow::new(3);
        flow.sent.fetch_add(2, Ordering::AcqRel);
        flow.on_delivery();
        assert_eq!(flow.expected(), 6);
        assert_eq!(flow.delivered(), 1);
    }
}
