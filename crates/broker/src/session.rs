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

impl Message {
    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
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

#[derive(Debug)]
pub(crate) struct SessionState {
    pub protocol: ProtocolVersion,
    pub subscriptions: HashMap<String, Subscription>,
    pub pending: VecDeque<Delivery>,
    pub inflight: VecDeque<Inflight>,
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
    QueueFull,
    OfflineQos0,
}

// === impl Session ===

impl Session {
    pub fn new(
        uid: u64,
        client_id: Arc<str>,
        identity: Arc<Identity>,
        protocol: ProtocolVersion,
    ) -> Self {
        Self {
            uid,
            client_id,
            identity,
            state: Mutex::new(SessionState {
                protocol,
                subscriptions: HashMap::new(),
                pending: VecDeque::new(),
                inflight: VecDeque::new(),
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
    pub fn enqueue(&self, delivery: Delivery, max_queued: usize) -> Result<(), Dropped> {
        let mut st = self.state.lock();
        if st.ended {
            return Ok(());
        }
        let online = st.conn.is_some();
        if !online && delivery.qos == QoS::AtMostOnce {
            return Err(Dropped::OfflineQos0);
        }
        if st.pending.len() >= max_queued {
            return Err(Dropped::QueueFull);
        }
        st.pending.push_back(delivery);
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
            if !self.inflight.iter().any(|i| i.packet_id == id) {
                return id;
            }
        }
    }
}
