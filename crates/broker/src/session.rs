//! Sessions: the state MQTT keeps for a client id, across its connections.
//!
//! A session outlives its connection when the client asked for it (session expiry, or a
//! 3.1.1 persistent session). The router pushes deliveries straight into the session's
//! queue under a short lock and wakes its connection; no routing step ever waits on a
//! socket.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_mqtt::{Properties, ProtocolVersion, QoS, ReasonCode, SubscriptionOptions};
use gatehouse_types::{DisconnectCause, Identity, TopicFilter};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::budget::MemoryBudget;

/// A message as the router carries it: shared by every delivery of it.
#[derive(Debug)]
pub(crate) struct Message {
    /// The tenant whose topic space the message lives in.
    pub tenant: Arc<str>,
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// The properties forwarded to subscribers (payload format, content type, response
    /// topic, correlation data, user properties). Message expiry is kept in `expires_at`.
    pub properties: Properties,
    pub expires_at: Option<Instant>,
    /// The session uid of the publisher, for No Local.
    pub origin: u64,
}

/// What the broker charges for a message beyond its variable-length parts: the
/// allocations around it and their bookkeeping.
const MESSAGE_OVERHEAD: usize = 160;
/// What a delivery (one message on its way to one session) costs beyond its message.
pub(crate) const DELIVERY_OVERHEAD: usize = 64;

impl Message {
    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// The bytes this message holds: payload, topic, forwarded properties and overhead.
    pub fn size(&self) -> usize {
        let p = &self.properties;
        let strings = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let user: usize = p
            .user_properties
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2 * std::mem::size_of::<String>())
            .sum();
        MESSAGE_OVERHEAD
            + self.payload.len()
            + self.topic.len()
            + self.tenant.len()
            + strings(&p.content_type)
            + strings(&p.response_topic)
            + p.correlation_data.as_ref().map_or(0, bytes::Bytes::len)
            + user
    }
}

// === impl Delivery ===

impl Delivery {
    /// The bytes holding this delivery costs its session and the broker's budget.
    pub fn cost(&self) -> usize {
        self.msg.size() + DELIVERY_OVERHEAD + 4 * self.sub_ids.len()
    }
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub msg: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub sub_ids: Vec<u32>,
}

/// An outgoing QoS 1/2 message awaiting the client's acknowledgement.
#[derive(Debug, Clone)]
pub(crate) struct Inflight {
    pub packet_id: u16,
    pub delivery: Delivery,
    /// QoS 2: PUBREC received, PUBREL sent, awaiting PUBCOMP.
    pub released: bool,
}

/// A subscription held by a session.
#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    pub filter: TopicFilter,
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
}

/// What the broker tells a live connection to do.
#[derive(Debug, Clone)]
pub(crate) enum Control {
    /// End the connection, telling a 5.0 client why.
    Disconnect {
        reason: ReasonCode,
        cause: DisconnectCause,
        reason_string: Option<String>,
    },
}

/// A one-slot mailbox from the broker to one connection. A connection ends at its first
/// control message, so the first one wins and later ones are dropped; it costs no
/// allocation beyond itself, which matters with tens of thousands of idle connections.
#[derive(Debug, Default)]
pub(crate) struct ControlSlot {
    slot: Mutex<Option<Control>>,
    notify: Notify,
}

impl ControlSlot {
    /// Posts a control message (kept only if none is waiting) and wakes the connection.
    pub fn send(&self, c: Control) {
        let mut slot = self.slot.lock();
        if slot.is_none() {
            *slot = Some(c);
        }
        drop(slot);
        self.notify.notify_one();
    }

    /// Waits for a control message. Cancel-safe: a message is only taken when returned.
    pub async fn recv(&self) -> Control {
        loop {
            if let Some(c) = self.slot.lock().take() {
                return c;
            }
            self.notify.notified().await;
        }
    }
}

/// The connection currently attached to a session.
#[derive(Debug)]
pub(crate) struct LiveConn {
    pub conn_id: u64,
    /// The connection's source address (bans end live sessions by it).
    pub peer: std::net::IpAddr,
    pub control: Arc<ControlSlot>,
}

/// How much one session may hold, from the broker's limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    /// Deliveries queued beyond the inflight window.
    pub messages: usize,
    /// Bytes queued and inflight together.
    pub bytes: usize,
}

/// A session's queued and inflight deliveries. Every delivery it holds is charged at its
/// [`Delivery::cost`] to the session (limited by [`QueueLimits::bytes`]) and to the
/// broker's [`MemoryBudget`]; it is released when the delivery leaves, or when the queue
/// is dropped with its session.
#[derive(Debug)]
pub(crate) struct Queue {
    pending: VecDeque<Delivery>,
    inflight: VecDeque<Inflight>,
    bytes: usize,
    budget: Arc<MemoryBudget>,
}

#[derive(Debug)]
pub(crate) struct SessionState {
    pub protocol: ProtocolVersion,
    pub subscriptions: HashMap<String, Subscription>,
    pub queue: Queue,
    pub next_packet_id: u16,
    pub incoming_qos2: HashSet<u16>,
    pub conn: Option<LiveConn>,
    pub expiry: Duration,
    pub offline_since: Option<Instant>,
    /// Client's Receive Maximum (outgoing inflight window).
    pub receive_max: u16,
    /// Client's Maximum Packet Size.
    pub max_packet: u32,
    /// Set once the session has been removed from the registry.
    pub ended: bool,
}

/// A session.
#[derive(Debug)]
pub(crate) struct Session {
    /// Unique for the broker's life; identifies the session in the router.
    pub uid: u64,
    pub client_id: Arc<str>,
    pub identity: Arc<Identity>,
    pub state: Mutex<SessionState>,
    pub notify: Notify,
}

/// Why a delivery was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// The session holds `max_queued_messages` already.
    QueueFull,
    /// The session holds `max_queued_bytes` already.
    QueueBytes,
    /// The broker's message memory budget is spent (for QoS 0: its QoS 0 share).
    MemoryBudget,
    /// QoS 0 is not kept for offline sessions.
    OfflineQos0,
}

// === impl Dropped ===

impl Dropped {
    /// The `reason` label of `gatehouse_messages_dropped`; `None` when not counted.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Self::QueueFull => Some("queue_full"),
            Self::QueueBytes => Some("session_queue_bytes"),
            Self::MemoryBudget => Some("memory_budget"),
            Self::OfflineQos0 => None,
        }
    }
}

// === impl Queue ===

impl Queue {
    pub fn new(budget: Arc<MemoryBudget>) -> Self {
        Self {
            pending: VecDeque::new(),
            inflight: VecDeque::new(),
            bytes: 0,
            budget,
        }
    }

    /// Deliveries waiting to be sent.
    pub fn pending(&self) -> &VecDeque<Delivery> {
        &self.pending
    }

    /// Deliveries sent and awaiting their acknowledgement.
    pub fn inflight(&self) -> &VecDeque<Inflight> {
        &self.inflight
    }

    /// Bytes held, queued and inflight.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes a delivery in if the session's limits and the broker's budget allow. A
    /// session holding nothing always takes one delivery within the session limit, so a
    /// message as large as the largest packet can still reach it.
    pub fn push(&mut self, d: Delivery, limits: QueueLimits) -> Result<(), Dropped> {
        if self.pending.len() >= limits.messages {
            return Err(Dropped::QueueFull);
        }
        let cost = d.cost();
        if self.bytes > 0 && self.bytes.saturating_add(cost) > limits.bytes {
            return Err(Dropped::QueueBytes);
        }
        if !self.budget.try_charge(cost, d.qos) {
            return Err(Dropped::MemoryBudget);
        }
        self.bytes += cost;
        self.pending.push_back(d);
        Ok(())
    }

    /// Puts back a delivery restored from saved state, whatever the limits.
    pub fn restore(&mut self, d: Delivery) {
        let cost = d.cost();
        self.budget.charge(cost);
        self.bytes += cost;
        self.pending.push_back(d);
    }

    /// Takes the next delivery out of the queue.
    pub fn pop_pending(&mut self) -> Option<Delivery> {
        let d = self.pending.pop_front()?;
        self.give_back(d.cost());
        Some(d)
    }

    /// Holds a delivery that was just sent until it is acknowledged. It was admitted when
    /// it was queued, so it is charged whatever the limits now.
    pub fn push_inflight(&mut self, i: Inflight) {
        let cost = i.delivery.cost();
        self.budget.charge(cost);
        self.bytes += cost;
        self.inflight.push_back(i);
    }

    pub fn inflight_mut(&mut self, pos: usize) -> Option<&mut Inflight> {
        self.inflight.get_mut(pos)
    }

    pub fn remove_inflight(&mut self, pos: usize) -> Option<Inflight> {
        let i = self.inflight.remove(pos)?;
        self.give_back(i.delivery.cost());
        Some(i)
    }

    /// Keeps only the queued deliveries `keep` approves.
    pub fn retain_pending(&mut self, mut keep: impl FnMut(&Delivery) -> bool) {
        let mut freed = 0;
        self.pending.retain(|d| {
            let k = keep(d);
            if !k {
                freed += d.cost();
            }
            k
        });
        self.give_back(freed);
    }

    /// Drops everything held.
    pub fn clear(&mut self) {
        self.pending.clear();
        self.inflight.clear();
        let held = std::mem::take(&mut self.bytes);
        self.budget.release(held);
    }

    fn give_back(&mut self, cost: usize) {
        let cost = cost.min(self.bytes);
        self.bytes -= cost;
        self.budget.release(cost);
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

// === impl Session ===

impl Session {
    pub fn new(
        uid: u64,
        client_id: Arc<str>,
        identity: Arc<Identity>,
        protocol: ProtocolVersion,
        budget: Arc<MemoryBudget>,
    ) -> Self {
        Self {
            uid,
            client_id,
            identity,
            state: Mutex::new(SessionState {
                protocol,
                subscriptions: HashMap::new(),
                queue: Queue::new(budget),
                next_packet_id: 1,
                incoming_qos2: HashSet::new(),
                conn: None,
                expiry: Duration::ZERO,
                offline_since: None,
                receive_max: u16::MAX,
                max_packet: u32::MAX,
                ended: false,
            }),
            notify: Notify::new(),
        }
    }

    /// Queues a delivery and wakes the connection. QoS 0 messages are not kept for
    /// offline sessions.
    pub fn enqueue(&self, delivery: Delivery, limits: QueueLimits) -> Result<(), Dropped> {
        let mut st = self.state.lock();
        if st.ended {
            return Ok(());
        }
        let online = st.conn.is_some();
        if !online && delivery.qos == QoS::AtMostOnce {
            return Err(Dropped::OfflineQos0);
        }
        st.queue.push(delivery, limits)?;
        drop(st);
        if online {
            self.notify.notify_one();
        }
        Ok(())
    }

    pub fn is_online(&self) -> bool {
        self.state.lock().conn.is_some()
    }
}

// === impl SessionState ===

impl SessionState {
    /// Allocates a packet id not in use by an outgoing inflight message.
    pub fn alloc_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.queue.inflight().iter().any(|i| i.packet_id == id) {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::gauge::Gauge;

    use super::*;

    fn delivery(payload: usize, qos: QoS) -> Delivery {
        let msg = Message {
            tenant: "t".into(),
            topic: "a/b".into(),
            payload: bytes::Bytes::from(vec![0u8; payload]),
            qos,
            retain: false,
            properties: Properties::default(),
            expires_at: None,
            origin: 0,
        };
        Delivery {
            msg: Arc::new(msg),
            qos,
            retain: false,
            sub_ids: Vec::new(),
        }
    }

    fn budget(limit: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget::new(limit, Gauge::default()))
    }

    const ROOMY: QueueLimits = QueueLimits {
        messages: 1000,
        bytes: usize::MAX,
    };

    #[test]
    fn a_session_queue_is_bounded_in_bytes_as_well_as_messages() {
        let b = budget(usize::MAX / 2);
        let mut q = Queue::new(b.clone());
        let limits = QueueLimits {
            messages: 1000,
            bytes: 10_000,
        };
        let one = delivery(3000, QoS::AtLeastOnce).cost();
        let mut taken = 0;
        while q.push(delivery(3000, QoS::AtLeastOnce), limits).is_ok() {
            taken += 1;
        }
        assert_eq!(taken, 10_000 / one);
        assert_eq!(
            q.push(delivery(3000, QoS::AtLeastOnce), limits),
            Err(Dropped::QueueBytes)
        );
        assert!(q.bytes() <= limits.bytes);
        assert_eq!(b.used(), q.bytes());

        // An empty queue takes one message even larger than its limit.
        let mut q = Queue::new(b.clone());
        assert_eq!(q.push(delivery(50_000, QoS::AtLeastOnce), limits), Ok(()));
        assert_eq!(
            q.push(delivery(1, QoS::AtLeastOnce), limits),
            Err(Dropped::QueueBytes)
        );
    }

    #[test]
    fn bytes_follow_a_delivery_from_queue_to_inflight_to_acknowledgement() {
        let b = budget(usize::MAX / 2);
        let mut q = Queue::new(b.clone());
        let d = delivery(500, QoS::AtLeastOnce);
        let cost = d.cost();
        q.push(d, ROOMY).unwrap();
        let d = q.pop_pending().unwrap();
        q.push_inflight(Inflight {
            packet_id: 1,
            delivery: d,
            released: false,
        });
        assert_eq!((q.bytes(), b.used()), (cost, cost));
        q.push(delivery(100, QoS::AtMostOnce), ROOMY).unwrap();
        q.retain_pending(|d| d.qos != QoS::AtMostOnce);
        assert_eq!(b.used(), cost);
        q.remove_inflight(0).unwrap();
        assert_eq!((q.bytes(), b.used()), (0, 0));

        // Whatever a dropped queue held is given back.
        q.push(delivery(100, QoS::AtLeastOnce), ROOMY).unwrap();
        q.restore(delivery(100, QoS::AtLeastOnce));
        assert!(b.used() > 0);
        drop(q);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn the_broker_budget_drops_qos0_first() {
        let one = delivery(1000, QoS::AtMostOnce).cost();
        let b = budget(4 * one);
        let mut q = Queue::new(b.clone());
        for _ in 0..3 {
            q.push(delivery(1000, QoS::AtMostOnce), ROOMY).unwrap();
        }
        assert_eq!(
            q.push(delivery(1000, QoS::AtMostOnce), ROOMY),
            Err(Dropped::MemoryBudget),
            "QoS 0 stops at three quarters"
        );
        q.push(delivery(1000, QoS::AtLeastOnce), ROOMY).unwrap();
        assert_eq!(
            q.push(delivery(1000, QoS::ExactlyOnce), ROOMY),
            Err(Dropped::MemoryBudget)
        );
        assert!(b.used() <= 4 * one);
        q.clear();
        assert_eq!(b.used(), 0);
    }
}
