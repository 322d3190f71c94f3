//! The broker: the session registry, routing, wills, expiry, live gate changes and
//! shutdown. Connections (see `connection.rs`) call into it; operators and later stages
//! (trust, respond) act on live sessions through its public methods.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use gatehouse_mqtt::{Properties, ProtocolVersion, QoS, ReasonCode};
use gatehouse_types::{
    DeviceRef, DisconnectCause, Identity, Observation, SubscribeObservation, TlsFacts, TopicFilter,
};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use crate::budget::MemoryBudget;
use crate::config::BrokerConfig;
use crate::gate::{Decision, Gate, PublishContext};
use crate::metrics::Metrics;
use crate::persist;
use crate::router::{Router, SubRef};
use crate::session::{Control, Delivery, Dropped, LiveConn, Message, Session};
use crate::tap::Tap;

/// Why an identity could not be established. The reason is short and machine-readable
/// (`no_gatehouse_identity`, `bad_password`); it goes to logs, metrics and the tap, never
/// to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed: {0}")]
pub struct AuthError(pub Cow<'static, str>);

/// Turns what a client presented into an identity. The binary wires the PKI's certificate
/// parsing and the legacy password store in here; the broker knows neither.
pub trait Authenticator: Send + Sync + 'static {
    /// Identity and TLS facts from a completed mutual-TLS handshake (the chain has already
    /// been verified by rustls).
    fn identify_tls(
        &self,
        conn: &rustls::ServerConnection,
    ) -> Result<(Identity, TlsFacts), AuthError>;

    /// Starts checking a user name and password from a plain listener. This part must not
    /// block: it decides at once whether the check may run (a budget of expensive checks
    /// sheds the excess here, before any work) and returns the check itself, which the
    /// broker runs on a blocking thread so that hashing never stalls the async workers.
    fn password_check(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<PasswordCheck, AuthError>;
}

/// The blocking half of a password check: the identity, or why not.
pub type PasswordCheck = Box<dyn FnOnce() -> Result<Identity, AuthError> + Send + 'static>;

/// The [`AuthError`] reason of a password check shed by the budget, before any work.
pub const PASSWORD_CHECK_SHED: &str = "password_check_shed";

/// A will waiting for its delay to pass.
#[derive(Debug)]
struct PendingWill {
    key: String,
    due: Instant,
    identity: Arc<Identity>,
    msg: Arc<Message>,
}

struct RateBucket {
    tokens: f64,
    last: Instant,
}

pub(crate) struct Inner {
    pub config: BrokerConfig,
    gate: ArcSwap<Arc<dyn Gate>>,
    pub auth: Arc<dyn Authenticator>,
    pub router: Router,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    wills: Mutex<Vec<PendingWill>>,
    takeovers: Mutex<HashMap<DeviceRef, (Instant, u32)>>,
    sources: Mutex<HashMap<IpAddr, RateBucket>>,
    pub sanctions: crate::sanctions::Sanctions,
    /// Bytes of messages held by every session together.
    pub budget: Arc<MemoryBudget>,
    pub tap: Tap,
    pub metrics: Metrics,
    next_uid: AtomicU64,
    pub open_connections: AtomicUsize,
    pub connections_closed: Notify,
    pub shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("sessions", &self.sessions.lock().len())
            .field(
                "open_connections",
                &self.open_connections.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

/// The MQTT broker. Cheap to clone; every clone is the same broker.
#[derive(Debug, Clone)]
pub struct Broker {
    pub(crate) inner: Arc<Inner>,
}

/// Outcome of attaching a connection to a session.
pub(crate) struct Attached {
    pub session: Arc<Session>,
    pub present: bool,
}

/// The reserved topic on which a 5.0 session is told that the gate removed subscriptions:
/// `$gatehouse/{device}/notice`, delivered whether or not the client subscribed to it.
pub const NOTICE_TOPIC_SUFFIX: &str = "/notice";

fn removal_notice(s: &Session, removed: &[TopicFilter]) -> Delivery {
    let body = serde_json::json!({
        "event": "subscriptions_removed",
        "filters": removed.iter().map(TopicFilter::as_str).collect::<Vec<_>>(),
        "reason": "no longer allowed by the device's verdict",
    });
    let properties = gatehouse_mqtt::Properties {
        content_type: Some("application/json".to_owned()),
        payload_format_indicator: Some(1),
        user_properties: vec![(
            "gatehouse-notice".to_owned(),
            "subscriptions-removed".to_owned(),
        )],
        ..Default::default()
    };
    let msg = Message {
        tenant: Arc::from(s.identity.tenant.as_str()),
        topic: Arc::from(format!(
            "$gatehouse/{}{NOTICE_TOPIC_SUFFIX}",
            s.identity.device
        )),
        payload: bytes::Bytes::from(body.to_string()),
        qos: QoS::AtMostOnce,
        retain: false,
        properties,
        expires_at: None,
        origin: 0,
    };
    Delivery {
        msg: Arc::new(msg),
        qos: QoS::AtMostOnce,
        retain: false,
        sub_ids: Vec::new(),
    }
}

fn key(identity: &Identity, client_id: &str) -> String {
    format!("{}\u{0}{}", identity.tenant, client_id)
}

// === impl Broker ===

impl Broker {
    /// A broker with this configuration, gate and authenticator. Loads the saved state
    /// (persistent sessions and retained messages) when the configuration names a file.
    pub fn new(
        config: BrokerConfig,
        gate: Arc<dyn Gate>,
        auth: Arc<dyn Authenticator>,
    ) -> Result<Self, persist::PersistError> {
        let (shutdown, _) = watch::channel(false);
        let metrics = Metrics::default();
        metrics.show_limits(&config.limits);
        let budget = Arc::new(MemoryBudget::new(
            config.limits.message_memory_budget,
            metrics.message_memory_used.clone(),
        ));
        let inner = Arc::new(Inner {
            config,
            gate: ArcSwap::from_pointee(gate),
            auth,
            router: Router::default(),
            sessions: Mutex::new(HashMap::new()),
            wills: Mutex::new(Vec::new()),
            takeovers: Mutex::new(HashMap::new()),
            sources: Mutex::new(HashMap::new()),
            sanctions: crate::sanctions::Sanctions::default(),
            budget,
            tap: Tap::new(),
            metrics,
            next_uid: AtomicU64::new(1),
            open_connections: AtomicUsize::new(0),
            connections_closed: Notify::new(),
            shutdown,
        });
        let broker = Self { inner };
        if let Some(path) = broker.inner.config.state_file.clone() {
            persist::load(&broker.inner, &path)?;
        }
        Ok(broker)
    }

    /// Starts the background housekeeping (session expiry, delayed wills, periodic saves).
    /// Call once, inside a Tokio runtime.
    pub fn start(&self) {
        let inner = self.inner.clone();
        let mut stop = self.inner.shutdown.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut last_save = Instant::now();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                let now = Instant::now();
                inner.housekeeping(now);
                if let (Some(every), Some(path)) =
                    (inner.config.save_interval, inner.config.state_file.clone())
                    && now.duration_since(last_save) >= every
                {
                    last_save = now;
                    let snapshot = persist::snapshot(&inner);
                    if let Err(e) =
                        tokio::task::spawn_blocking(move || persist::write(&path, &snapshot)).await
                    {
                        warn!(error = %e, "state save task failed");
                    }
                }
            }
        });
    }

    /// Serves mutual-TLS MQTT on `listener`. The TLS configuration is read for every new
    /// connection, so swapping it (new CRL, new server certificate) takes effect at once.
    pub fn serve_tls(&self, listener: TcpListener, tls: Arc<ArcSwap<rustls::ServerConfig>>) {
        let inner = self.inner.clone();
        tokio::spawn(crate::listener::accept_loop(
            inner,
            listener,
            crate::listener::Kind::Tls(tls),
        ));
    }

    /// Serves plain MQTT (user name and password) on `listener`. Only when configured.
    pub fn serve_plain(&self, listener: TcpListener) {
        let inner = self.inner.clone();
        tokio::spawn(crate::listener::accept_loop(
            inner,
            listener,
            crate::listener::Kind::Plain,
        ));
    }

    /// The observation tap.
    pub fn tap(&self) -> &Tap {
        &self.inner.tap
    }

    /// The metrics (register them with [`Metrics::register`]).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.inner.open_connections.load(Ordering::Relaxed)
    }

    /// Sessions held, online and offline.
    pub fn session_count(&self) -> usize {
        self.inner.sessions.lock().len()
    }

    /// Swaps the gate atomically and applies it to every session at once: subscriptions
    /// it no longer allows are removed, sessions it no longer admits are disconnected.
    pub fn set_gate(&self, gate: Arc<dyn Gate>) {
        self.inner.gate.store(Arc::new(gate));
        self.reevaluate(None);
    }

    /// Re-applies the current gate to the sessions of one device (or all, with `None`):
    /// for when the gate's own state changed (a new verdict). Returns the number of
    /// subscriptions removed.
    pub fn reevaluate(&self, device: Option<&DeviceRef>) -> usize {
        let sessions: Vec<Arc<Session>> = match device {
            Some(d) => self.inner.device_sessions(d),
            None => self.inner.sessions.lock().values().cloned().collect(),
        };
        let gate = self.inner.gate.load_full();
        let mut removed = 0;
        for s in sessions {
            match gate.connect(&s.identity) {
                Decision::Allow => {}
                Decision::Deny(why) | Decision::Disconnect(why) => {
                    self.inner.metrics.deny("connect");
                    self.inner.send_control(
                        &s,
                        Control::Disconnect {
                            reason: ReasonCode::NOT_AUTHORIZED,
                            cause: DisconnectCause::Gate,
                            reason_string: Some(why.into_owned()),
                        },
                    );
                }
            }
            removed += self.inner.recheck_subscriptions(&s, &**gate);
        }
        removed
    }

    /// Ends every live session of a device (e.g. its certificate was revoked). Returns the
    /// number of sessions told to disconnect.
    pub fn disconnect_device(&self, device: &DeviceRef, reason: &str) -> usize {
        let sessions = self.inner.device_sessions(device);
        let mut n = 0;
        for s in sessions {
            if self.inner.send_control(
                &s,
                Control::Disconnect {
                    reason: ReasonCode::ADMINISTRATIVE_ACTION,
                    cause: DisconnectCause::Gate,
                    reason_string: Some(reason.to_owned()),
                },
            ) {
                n += 1;
            }
        }
        n
    }

    /// Bans a source address for `duration`: new connections from it are refused at
    /// accept, and its live sessions are ended now. Returns the sessions ended.
    pub fn ban(&self, addr: IpAddr, duration: Duration, reason: &str) -> usize {
        let now = Instant::now();
        self.inner.sanctions.ban(addr, now + duration);
        let sessions: Vec<Arc<Session>> = self.inner.sessions.lock().values().cloned().collect();
        let mut n = 0;
        for s in sessions {
            let st = s.state.lock();
            if let Some(conn) = st.conn.as_ref().filter(|c| c.peer == addr) {
                conn.control.send(Control::Disconnect {
                    reason: ReasonCode::ADMINISTRATIVE_ACTION,
                    cause: DisconnectCause::Gate,
                    reason_string: Some(reason.to_owned()),
                });
                n += 1;
            }
        }
        n
    }

    /// Lifts a ban; false when the address was not banned.
    pub fn unban(&self, addr: IpAddr) -> bool {
        self.inner.sanctions.unban(addr)
    }

    /// The bans in force.
    pub fn bans(&self) -> Vec<crate::BanInfo> {
        self.inner.sanctions.bans(Instant::now())
    }

    /// Throttles a device to `rate` publishes a second for `duration`: publishes beyond it
    /// are refused (MQTT 5: 0x97 quota exceeded) on every session of the device.
    pub fn throttle(&self, device: &DeviceRef, rate: f64, duration: Duration) {
        let now = Instant::now();
        self.inner
            .sanctions
            .throttle(device.clone(), rate, now + duration, now);
    }

    /// Lifts a throttle; false when the device was not throttled.
    pub fn unthrottle(&self, device: &DeviceRef) -> bool {
        self.inner.sanctions.unthrottle(device)
    }

    /// The throttles in force.
    pub fn throttles(&self) -> Vec<crate::ThrottleInfo> {
        self.inner.sanctions.throttles(Instant::now())
    }

    /// Graceful shutdown: stop accepting, send DISCONNECT 0x8B to 5.0 clients, wait up to
    /// `grace` for connections to close, then save persistent state.
    pub async fn shutdown(&self, grace: Duration) -> Result<(), persist::PersistError> {
        let _ = self.inner.shutdown.send(true);
        let sessions: Vec<Arc<Session>> = self.inner.sessions.lock().values().cloned().collect();
        for s in &sessions {
            self.inner.send_control(
                s,
                Control::Disconnect {
                    reason: ReasonCode::SERVER_SHUTTING_DOWN,
                    cause: DisconnectCause::ServerShutdown,
                    reason_string: None,
                },
            );
        }
        let deadline = Instant::now() + grace;
        while self.inner.open_connections.load(Ordering::Acquire) > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                warn!(
                    open = self.inner.open_connections.load(Ordering::Relaxed),
                    "connections still open at the end of the shutdown grace period"
                );
                break;
            }
            let _ = tokio::time::timeout(
                left.min(Duration::from_millis(50)),
                self.inner.connections_closed.notified(),
            )
            .await;
        }
        if let Some(path) = self.inner.config.state_file.clone() {
            let snapshot = persist::snapshot(&self.inner);
            persist::write(&path, &snapshot)?;
            info!(path = %path.display(), "broker state saved");
        }
        Ok(())
    }
}

// === impl Inner ===

impl Inner {
    pub fn gate(&self) -> arc_swap::Guard<Arc<Arc<dyn Gate>>> {
        self.gate.load()
    }

    pub fn new_uid(&self) -> u64 {
        self.next_uid.fetch_add(1, Ordering::Relaxed)
    }

    /// Per-source new-connection rate limit (token bucket). Returns false to refuse.
    pub fn admit_source(&self, ip: IpAddr, now: Instant) -> bool {
        let rate = self.config.limits.connect_rate_per_source;
        if rate == 0 {
            return true;
        }
        let rate = f64::from(rate);
        let burst = rate * 2.0;
        let mut sources = self.sources.lock();
        let b = sources.entry(ip).or_insert(RateBucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Counts a takeover of a device's live session; false when it happens too often.
    pub fn admit_takeover(&self, identity: &Identity, now: Instant) -> bool {
        let max = self.config.limits.takeovers_per_device_per_minute;
        if max == 0 {
            return true;
        }
        let mut t = self.takeovers.lock();
        let e = t.entry(DeviceRef::from(identity)).or_insert((now, 0));
        if now.duration_since(e.0) >= Duration::from_secs(60) {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1 <= max
    }

    /// The session of a device: one at most, because its client id is its device id (both
    /// client-id policies make it so), so the lookup is one hash probe, not a scan.
    fn device_sessions(&self, device: &DeviceRef) -> Vec<Arc<Session>> {
        let k = format!("{}\u{0}{}", device.tenant, device.device);
        self.sessions
            .lock()
            .get(&k)
            .filter(|s| device.is(&s.identity))
            .cloned()
            .into_iter()
            .collect()
    }

    /// Whether the device currently has a live session under this client id.
    pub fn is_live(&self, identity: &Identity, client_id: &str) -> bool {
        self.sessions
            .lock()
            .get(&key(identity, client_id))
            .is_some_and(|s| s.is_online())
    }

    /// Attaches a connection to its session, creating, resuming or taking it over.
    pub fn attach(
        &self,
        identity: Arc<Identity>,
        client_id: Arc<str>,
        connect: &gatehouse_mqtt::Connect,
        expiry: Duration,
        conn: LiveConn,
    ) -> Attached {
        let k = key(&identity, &client_id);
        self.wills.lock().retain(|w| w.key != k);
        let mut sessions = self.sessions.lock();
        let existing = sessions.get(&k).cloned();
        let mut present = false;
        let session = match existing {
            Some(old) if !connect.clean_start && old.identity == identity => {
                present = true;
                old
            }
            Some(old) => {
                sessions.remove(&k);
                drop(sessions);
                let prev = old.state.lock().conn.take();
                if let Some(prev) = prev {
                    prev.control.send(Control::Disconnect {
                        reason: ReasonCode::SESSION_TAKEN_OVER,
                        cause: DisconnectCause::SessionTakenOver,
                        reason_string: None,
                    });
                }
                self.end_session(&old);
                sessions = self.sessions.lock();
                let s = Arc::new(Session::new(
                    self.new_uid(),
                    client_id.clone(),
                    identity.clone(),
                    connect.protocol,
                    self.budget.clone(),
                ));
                sessions.insert(k.clone(), s.clone());
                s
            }
            None => {
                let s = Arc::new(Session::new(
                    self.new_uid(),
                    client_id.clone(),
                    identity.clone(),
                    connect.protocol,
                    self.budget.clone(),
                ));
                sessions.insert(k.clone(), s.clone());
                s
            }
        };
        self.metrics.sessions.set(sessions.len() as i64);
        drop(sessions);
        let previous = {
            let mut st = session.state.lock();
            st.protocol = connect.protocol;
            st.expiry = expiry;
            st.offline_since = None;
            st.receive_max = connect.properties.receive_maximum.unwrap_or(u16::MAX);
            st.max_packet = connect.properties.maximum_packet_size.unwrap_or(u32::MAX);
            st.conn.replace(conn)
        };
        if let Some(prev) = previous {
            prev.control.send(Control::Disconnect {
                reason: ReasonCode::SESSION_TAKEN_OVER,
                cause: DisconnectCause::SessionTakenOver,
                reason_string: None,
            });
        }
        Attached { session, present }
    }

    /// Detaches a connection that ended. `will` is published (now or after its delay)
    /// unless the client disconnected normally.
    pub fn detach(&self, session: &Arc<Session>, conn_id: u64, will: Option<(Arc<Message>, u32)>) {
        let now = Instant::now();
        let (still_ours, expiry) = {
            let mut st = session.state.lock();
            let ours = st.conn.as_ref().is_some_and(|c| c.conn_id == conn_id);
            if ours {
                st.conn = None;
                st.offline_since = Some(now);
                st.queue.retain_pending(|d| d.qos != QoS::AtMostOnce);
            }
            (ours, st.expiry)
        };
        // Taken over by a connection that resumed the session: that new connection came
        // within any will delay, so a delayed will is not published (MQTT 5.0 §3.1.2.5).
        let resumed_by_another = !still_ours && !session.state.lock().ended;
        let will = will.filter(|(_, delay)| !(resumed_by_another && *delay > 0));
        if let Some((msg, delay)) = will {
            let delay = Duration::from_secs(u64::from(delay));
            // A will is published when the delay passes or the session ends, whichever first.
            let wait = if still_ours {
                delay.min(expiry)
            } else {
                Duration::ZERO
            };
            if wait.is_zero() {
                self.publish_will(&session.identity, msg);
            } else {
                self.wills.lock().push(PendingWill {
                    key: key(&session.identity, &session.client_id),
                    due: now + wait,
                    identity: session.identity.clone(),
                    msg,
                });
            }
        }
        if still_ours && expiry.is_zero() {
            self.remove_session(session);
        }
    }

    fn remove_session(&self, session: &Arc<Session>) {
        let k = key(&session.identity, &session.client_id);
        let mut sessions = self.sessions.lock();
        if sessions.get(&k).is_some_and(|s| s.uid == session.uid) {
            sessions.remove(&k);
        }
        self.metrics.sessions.set(sessions.len() as i64);
        drop(sessions);
        self.end_session(session);
    }

    /// Removes a session's subscriptions from the router and marks it ended.
    fn end_session(&self, session: &Arc<Session>) {
        let subs: Vec<_> = {
            let mut st = session.state.lock();
            st.ended = true;
            st.queue.clear();
            st.subscriptions.drain().map(|(_, s)| s.filter).collect()
        };
        for f in subs {
            self.router
                .unsubscribe(session.identity.tenant.as_str(), &f, session.uid);
        }
    }

    fn publish_will(&self, identity: &Arc<Identity>, msg: Arc<Message>) {
        let gate = self.gate();
        let ctx = PublishContext {
            topic: &msg.topic,
            payload: &msg.payload,
            qos: msg.qos,
            retain: msg.retain,
        };
        if !gate.publish(identity, &ctx).is_allow() {
            self.metrics.deny("publish");
            debug!(device = %identity.device, topic = %msg.topic, "will denied by the gate");
            return;
        }
        if msg.retain {
            self.retain(msg.clone());
        }
        let mut buf = Vec::new();
        self.route(&msg, &mut buf);
    }

    pub fn retain(&self, msg: Arc<Message>) {
        if !self.router.retain(
            msg,
            self.config.limits.max_retained_messages,
            self.config.limits.max_retained_bytes,
        ) {
            Metrics::reason(&self.metrics.messages_dropped, "retained_store_full");
        }
        self.set_retained_gauges();
    }

    /// The retained store's size on `/metrics`.
    fn set_retained_gauges(&self) {
        self.metrics
            .retained
            .set(self.router.retained_count() as i64);
        self.metrics
            .retained_bytes
            .set(i64::try_from(self.router.retained_bytes()).unwrap_or(i64::MAX));
    }

    /// Routes a message to every matching subscription. `buf` is scratch space reused
    /// by the caller across messages.
    pub fn route(&self, msg: &Arc<Message>, buf: &mut Vec<SubRef>) {
        buf.clear();
        self.router.targets(&msg.tenant, &msg.topic, buf);
        if buf.is_empty() {
            return;
        }
        // Several subscriptions of one session matching the same message make one delivery
        // with the highest QoS and every subscription identifier (MQTT 5.0 §3.3.4).
        buf.sort_unstable_by_key(|s| s.session.uid);
        let limits = self.config.limits.queue();
        let mut i = 0;
        while i < buf.len() {
            let uid = buf[i].session.uid;
            let mut delivery: Option<Delivery> = None;
            while i < buf.len() && buf[i].session.uid == uid {
                let s = &buf[i];
                i += 1;
                if s.options.no_local && uid == msg.origin {
                    continue;
                }
                let qos = msg.qos.min(s.options.qos);
                let retain = s.options.retain_as_published && msg.retain;
                match &mut delivery {
                    None => {
                        delivery = Some(Delivery {
                            msg: msg.clone(),
                            qos,
                            retain,
                            sub_ids: s.id.into_iter().collect(),
                        })
                    }
                    Some(d) => {
                        d.qos = d.qos.max(qos);
                        d.retain |= retain;
                        d.sub_ids.extend(s.id);
                    }
                }
            }
            if let Some(d) = delivery {
                let session = &buf[i - 1].session;
                if let Err(reason) = session.enqueue(d, limits).map_err(Dropped::reason)
                    && let Some(reason) = reason
                {
                    Metrics::reason(&self.metrics.messages_dropped, reason);
                }
            }
        }
        buf.clear();
    }

    /// Sends a control message to the session's live connection, if any.
    fn send_control(&self, session: &Session, c: Control) -> bool {
        let st = session.state.lock();
        match &st.conn {
            Some(conn) => {
                conn.control.send(c);
                true
            }
            None => false,
        }
    }

    /// Removes the subscriptions the gate no longer allows, and the queued messages that
    /// only they would have delivered.
    fn recheck_subscriptions(&self, s: &Arc<Session>, gate: &dyn Gate) -> usize {
        // Decide and remove under one lock, so that two re-checks of the same session
        // (a verdict change racing a policy change) remove, count and tell each filter once.
        let (denied, tell) = {
            let mut st = s.state.lock();
            let denied: Vec<TopicFilter> = st
                .subscriptions
                .values()
                .filter(|sub| !gate.subscribe(&s.identity, &sub.filter).is_allow())
                .map(|sub| sub.filter.clone())
                .collect();
            if denied.is_empty() {
                return 0;
            }
            for f in &denied {
                st.subscriptions.remove(f.as_str());
                // Out of the router before the queue is filtered, so nothing routed in
                // between slips through (lock order: session state, then router).
                self.router
                    .unsubscribe(s.identity.tenant.as_str(), f, s.uid);
            }
            let remaining: Vec<_> = st
                .subscriptions
                .values()
                .map(|sub| sub.filter.match_filter().to_owned())
                .collect();
            st.queue.retain_pending(|d| {
                remaining
                    .iter()
                    .any(|f| gatehouse_mqtt::topic_matches(f, &d.msg.topic))
            });
            let tell = st.protocol == ProtocolVersion::V5 && st.conn.is_some();
            (denied, tell)
        };
        for f in &denied {
            self.metrics.deny("subscribe");
            if self.tap.is_active() {
                self.tap.emit(Observation::Subscribe(SubscribeObservation {
                    at: SystemTime::now(),
                    session: s.uid,
                    identity: s.identity.clone(),
                    filter: f.as_str().to_owned(),
                    qos: 0,
                    allowed: false,
                }));
            }
        }
        if tell {
            // MQTT 5 has no server-initiated UNSUBACK: a 5.0 client is told on its reserved
            // notice topic, which it receives without subscribing.
            let _ = s.enqueue(removal_notice(s, &denied), self.config.limits.queue());
        }
        info!(device = %s.identity.device, removed = denied.len(), "gate removed subscriptions");
        denied.len()
    }

    fn housekeeping(&self, now: Instant) {
        self.sanctions.expire(now);
        // Offline sessions past their expiry.
        let expired: Vec<Arc<Session>> = self
            .sessions
            .lock()
            .values()
            .filter(|s| {
                let st = s.state.lock();
                st.conn.is_none()
                    && st
                        .offline_since
                        .is_some_and(|t| now.duration_since(t) >= st.expiry)
            })
            .cloned()
            .collect();
        for s in expired {
            debug!(client_id = %s.client_id, "session expired");
            self.remove_session(&s);
        }
        // Delayed wills that are due.
        let due: Vec<PendingWill> = {
            let mut w = self.wills.lock();
            let (due, keep) = w.drain(..).partition(|w| w.due <= now);
            *w = keep;
            due
        };
        for w in due {
            self.publish_will(&w.identity, w.msg);
        }
        self.router.expire_retained(now);
        self.set_retained_gauges();
        self.sources
            .lock()
            .retain(|_, b| now.duration_since(b.last) < Duration::from_secs(60));
        self.takeovers
            .lock()
            .retain(|_, (t, _)| now.duration_since(*t) < Duration::from_secs(60));
    }

    pub(crate) fn sessions_snapshot(&self) -> Vec<Arc<Session>> {
        self.sessions.lock().values().cloned().collect()
    }

    pub(crate) fn restore_session(&self, s: Arc<Session>) {
        let mut sessions = self.sessions.lock();
        sessions.insert(key(&s.identity, &s.client_id), s);
        self.metrics.sessions.set(sessions.len() as i64);
    }
}

/// The properties a subscriber receives with a message.
pub(crate) fn forwarded_properties(p: &Properties) -> Properties {
    Properties {
        payload_format_indicator: p.payload_format_indicator,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        // Its own allocation: a slice would pin the received frame while the message is
        // queued or retained.
        correlation_data: p
            .correlation_data
            .as_deref()
            .map(bytes::Bytes::copy_from_slice),
        user_properties: p.user_properties.clone(),
        ..Properties::default()
    }
}
