//! Trust enforcement under load, on Gatehouse with its trust gate: N devices enroll over EST
//! with one multi-use token, connect over MQTTS with the certificates they were issued, and
//! subscribe each to its own `bench/<device>/cmd`. With every session open:
//!
//! - **pin**: one registered device at a time is pinned to `quarantined` through the REST
//!   API and the request is timed to its answer, which Gatehouse sends only once the pin is
//!   enforced on the device's open sessions. Enforcement is then checked on the wire: a
//!   probe published (by another enrolled device) to the pinned device's topic must not
//!   arrive, while one to an unpinned device must; the same probe to the pinned device
//!   arrived just before the pin, so the silence is the pin's doing. The subscriptions the
//!   gate removed are read from `/metrics`. Then the pin is removed (timed too) and the
//!   device subscribes again. Every round takes a different device.
//! - **policy**: the policy set in force plus one policy that forbids every subscription
//!   is put in force, timed from the request to the answer (which comes after every open
//!   session was brought under it). `/metrics` must show one removed subscription per
//!   session, and probes to a sample of devices must not arrive. Then the original set is
//!   put back (timed), and every device subscribes again for the next round.
//!
//! The keys and CSRs are made, the devices enrolled and the sessions connected before any
//! clock that is reported starts; those phases are only described in notes.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use gatehouse_mqtt::{Packet, Properties, Publish, QoS};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::Ctx;
use super::enroll::{Server, TENANT, enroll_fleet, error_summary, mib};
use crate::bench::args::BenchArgs;
use crate::bench::broker::Broker;
use crate::bench::flow::now_ns;
use crate::bench::report::{Figure, Row};
use crate::bench::samples::{Samples, ms, percentile};
use crate::client::{Client, ClientError, granted};
use crate::est::HttpsConnection;

/// Keep-alive of the devices' sessions; they ping at three quarters of it.
const KEEP_ALIVE: u16 = 300;

/// Longest wait for a probe that should arrive.
const PROBE_WAIT: Duration = Duration::from_secs(5);

/// How long a probe that must not arrive is waited for once the probes that must arrive
/// did (or once its PUBACK came back, when none must).
const QUIET: Duration = Duration::from_millis(300);

/// Longest wait for the gate's removal notices to reach every 5.0 session.
const NOTICE_WAIT: Duration = Duration::from_secs(10);

/// Devices probed after each policy change.
const POLICY_SAMPLE: usize = 20;

/// Longest wait for one command (publish, subscribe) to be answered by the broker.
const COMMAND_WAIT: Duration = Duration::from_secs(15);

/// How long each pin holds (it is removed well before).
const PIN_FOR: &str = "1h";

/// The id of the policy that freezes subscriptions.
pub const FREEZE_ID: &str = "bench-freeze";

/// The counter of the gate's denials, split by action.
const DENIALS: &str = "gatehouse_gate_denials";

/// The device that publishes every probe; it is never pinned.
const PROBER: usize = 0;

/// What the scenario does, with its parameters, for the report.
pub fn describe(args: &BenchArgs) -> String {
    format!(
        "{} devices enroll over EST (one token, {} at a time), connect over MQTTS with their \
         certificates and subscribe each to bench/<device>/cmd; with all sessions open, {} \
         devices are pinned to quarantined one at a time (pin) and {} policy sets forbidding \
         every subscription are put in force (policy), each timed from the REST request to \
         its answer, which comes after enforcement, and checked on the wire. Gatehouse with \
         its trust gate only: the goal is absolute (a policy change across all sessions in \
         under 100 ms)",
        args.trust_devices, args.concurrency, args.trust_rounds, args.trust_policy_rounds
    )
}

/// Runs the trust scenario against Gatehouse; returns its rows: `pin` and `policy`.
pub async fn run(ctx: &Ctx, broker: &mut Broker) -> anyhow::Result<Vec<Row>> {
    let args = &ctx.args;
    let n = args.trust_devices as usize;
    let concurrency = (args.concurrency as usize).max(1);
    let server = Server::new(ctx, broker)?;
    let mut setup = Vec::new();

    // Enrollment, with the enroll scenario's machinery.
    let auth = server
        .create_registry(n)
        .await
        .context("creating the manufacturer, model and enrollment token over the REST API")?;
    let issuing = server.issuing_chain().await?;
    let (enrolled, csrs) =
        enroll_fleet(ctx, broker, &server, &auth, n, concurrency, &mut setup).await?;
    let certs = enrolled.certs;
    ensure!(
        certs.len() >= 3,
        "only {} devices enrolled (a prober, a pinned and an unpinned device are needed); \
         errors: {}",
        certs.len(),
        error_summary(&enrolled.errors)
    );

    // Sessions: every enrolled device connects with its new certificate and subscribes.
    let mut devices = Vec::with_capacity(certs.len());
    for (i, cert) in &certs {
        let tls = server.device_tls(cert, &issuing, &csrs[*i].key_pkcs8, false)?;
        let mut opts = server.mqtt_options(ctx, *i, tls);
        opts.keep_alive = KEEP_ALIVE;
        devices.push(opts);
    }
    drop(csrs);
    let rss_before = broker.rss().ok();
    let connecting = Instant::now();
    let (mut fleet, connect_failures) = Fleet::connect(devices, concurrency).await;
    let connect_secs = connecting.elapsed().as_secs_f64();
    broker.check_alive()?;
    let sessions = fleet.len();
    setup.push(format!(
        "setup: {sessions} of {} enrolled devices connected over MQTTS (mutual TLS, MQTT {}) \
         and subscribed to bench/<device>/cmd in {connect_secs:.1} s{}; broker resident set \
         {} before the sessions, {} with them",
        certs.len(),
        if ctx.version == gatehouse_mqtt::ProtocolVersion::V5 {
            "5.0"
        } else {
            "3.1.1"
        },
        connect_failures
            .as_ref()
            .map(|(count, first)| format!("; {count} failed (first: {first})"))
            .unwrap_or_default(),
        rss_before.map_or("?".to_owned(), |b| format!("{:.1} MiB", mib(b))),
        broker
            .rss()
            .ok()
            .map_or("?".to_owned(), |b| format!("{:.1} MiB", mib(b))),
    ));
    drop(certs);
    ensure!(
        sessions >= 3,
        "only {sessions} sessions connected; first failure: {}",
        connect_failures.map_or("none".to_owned(), |(_, first)| first)
    );

    let result = async {
        let pin = pin_rounds(ctx, &server, broker, &mut fleet).await?;
        let policy = policy_rounds(ctx, &server, broker, &mut fleet).await?;
        anyhow::Ok((pin, policy))
    }
    .await;
    fleet.close().await;
    let (mut pin, policy) = result?;
    let mut notes = setup;
    notes.append(&mut pin.notes);
    pin.notes = notes;
    Ok(vec![pin, policy])
}

/// The pinned device and the unpinned control device of pin round `round` of `rounds`,
/// among `n` sessions: pinned devices are spread over the fleet, all different, never the
/// prober; the control is a neighbour of the pinned device.
pub fn pin_pair(round: usize, rounds: usize, n: usize) -> (usize, usize) {
    debug_assert!(n >= 3 && rounds >= 1 && rounds < n);
    let pinned = 1 + round * (n - 1) / rounds;
    let control = if pinned + 1 < n {
        pinned + 1
    } else {
        pinned - 1
    };
    (pinned, control)
}

/// Up to `k` devices spread over `1..n` (the prober left out), for the policy probes.
pub fn sample(n: usize, k: usize) -> Vec<usize> {
    let pool = n.saturating_sub(1);
    let k = k.min(pool);
    (0..k).map(|j| 1 + j * pool / k).collect()
}

/// The policy set in force, plus a policy that forbids every subscription of every device.
pub fn freeze_policy(in_force: &str) -> String {
    format!(
        "{}\n\n// Added by gatehouse bench: no device may subscribe to anything.\n@id(\"{FREEZE_ID}\")\n\
         forbid (principal, action == Action::\"subscribe\", resource);\n",
        in_force.trim_end()
    )
}

/// The sum of the samples of counter family `family` (as registered, without `_total`)
/// whose labels include every pair of `labels`, in a Prometheus or OpenMetrics text
/// exposition; 0 when the family is declared and has no such sample yet. `None` when the
/// family is not in the text at all.
pub fn counter_value(text: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let declared = text.lines().any(|l| {
        l.strip_prefix("# TYPE ")
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|name| name == family || name == format!("{family}_total"))
    });
    let sample_name = format!("{family}_total");
    let mut sum = 0.0;
    let mut found = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        // `name{labels} value [timestamp]` or `name value [timestamp]`.
        let (name, label_text, rest) = match line.split_once('{') {
            Some((name, after)) => match after.rsplit_once('}') {
                Some((labels, rest)) => (name, labels, rest),
                None => continue,
            },
            None => match line.split_once(' ') {
                Some((name, rest)) => (name, "", rest),
                None => continue,
            },
        };
        if name != sample_name && name != family {
            continue;
        }
        let Some(value) = rest.split_whitespace().next() else {
            continue;
        };
        let pairs: Vec<(&str, &str)> = label_text
            .split(',')
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                Some((k.trim(), v.trim().trim_matches('"')))
            })
            .collect();
        if labels.iter().all(|want| pairs.contains(want))
            && let Ok(v) = value.parse::<f64>()
        {
            sum += v;
            found = true;
        }
    }
    (declared || found).then_some(sum)
}

/// A command for one session's task.
enum Cmd {
    /// Subscribe to the device's topic again; answered with the SUBACK's outcome.
    Subscribe(oneshot::Sender<Result<(), String>>),
    /// Publish at QoS 1; answered when the PUBACK comes back.
    Publish {
        topic: String,
        payload: Bytes,
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// A message a device received on its own topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Delivery {
    session: usize,
    payload: Bytes,
}

/// What every session task adds to.
#[derive(Debug, Default)]
struct Counters {
    /// Removal notices received on `$gatehouse/<device>/notice`.
    notices: AtomicU64,
    /// When the last notice arrived ([`now_ns`]).
    last_notice_ns: AtomicU64,
    /// Sessions the broker closed, or whose connection failed.
    dropped: AtomicU64,
    /// Messages on topics the bench did not expect.
    foreign: AtomicU64,
}

/// One device's session, held by a task of its own.
struct Session {
    device: String,
    topic: String,
    cmds: mpsc::Sender<Cmd>,
}

/// Every device's session, and what they receive.
struct Fleet {
    sessions: Vec<Session>,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    seen: HashSet<Delivery>,
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    first_drop: Arc<std::sync::Mutex<Option<String>>>,
}

impl Fleet {
    /// Connects every device and subscribes it to its topic, `concurrency` at a time; the
    /// sessions that failed are left out (their count and the first error come back).
    async fn connect(
        devices: Vec<crate::client::ConnectOptions>,
        concurrency: usize,
    ) -> (Self, Option<(usize, String)>) {
        let permits = Arc::new(Semaphore::new(concurrency));
        let mut connecting = JoinSet::new();
        for (slot, opts) in devices.into_iter().enumerate() {
            let permits = permits.clone();
            connecting.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let topic = format!("bench/{}/cmd", opts.client_id);
                let result = async {
                    let (mut client, _) = Client::connect(&opts).await?;
                    client.subscribe(&topic, QoS::AtMostOnce).await?;
                    Ok::<_, ClientError>(client)
                }
                .await;
                (slot, opts.client_id, topic, result)
            });
        }
        let mut connected = Vec::new();
        let mut failed = 0;
        let mut first_error = None;
        while let Some(joined) = connecting.join_next().await {
            match joined {
                Ok((slot, device, topic, Ok(client))) => {
                    connected.push((slot, device, topic, client));
                }
                Ok((_, device, _, Err(e))) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| format!("{device}: {e}"));
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| format!("connect task: {e}"));
                }
            }
        }
        connected.sort_by_key(|(slot, ..)| *slot);

        let (deliveries_tx, deliveries) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let first_drop = Arc::new(std::sync::Mutex::new(None));
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut sessions = Vec::with_capacity(connected.len());
        for (index, (_, device, topic, client)) in connected.into_iter().enumerate() {
            let (cmds, cmd_rx) = mpsc::channel(4);
            tasks.spawn(
                SessionTask {
                    client,
                    index,
                    topic: topic.clone(),
                    cmds: cmd_rx,
                    deliveries: deliveries_tx.clone(),
                    counters: counters.clone(),
                    first_drop: first_drop.clone(),
                    stop: stop_rx.clone(),
                }
                .run(),
            );
            sessions.push(Session {
                device,
                topic,
                cmds,
            });
        }
        let fleet = Self {
            sessions,
            deliveries,
            seen: HashSet::new(),
            counters,
            stop,
            tasks,
            first_drop,
        };
        let failures = (failed > 0).then(|| (failed, first_error.unwrap_or_default()));
        (fleet, failures)
    }

    fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Sessions still open.
    fn live(&self) -> usize {
        self.len()
            .saturating_sub(self.counters.dropped.load(Ordering::Acquire) as usize)
    }

    async fn command(
        &self,
        who: usize,
        make: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Cmd,
    ) -> anyhow::Result<()> {
        let session = &self.sessions[who];
        let (done, answer) = oneshot::channel();
        session
            .cmds
            .send(make(done))
            .await
            .map_err(|_| anyhow::anyhow!("{}'s session has ended", session.device))?;
        match tokio::time::timeout(COMMAND_WAIT, answer).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => bail!("{}: {e}", session.device),
            Ok(Err(_)) => bail!("{}'s session ended before the answer", session.device),
            Err(_) => bail!("{}: no answer within {COMMAND_WAIT:?}", session.device),
        }
    }

    /// Publishes `payload` at QoS 1 from device `from` to device `to`'s topic and waits
    /// for the PUBACK.
    async fn probe(&self, from: usize, to: usize, payload: &Bytes) -> anyhow::Result<()> {
        let topic = self.sessions[to].topic.clone();
        let payload = payload.clone();
        self.command(from, |done| Cmd::Publish {
            topic,
            payload,
            done,
        })
        .await
        .with_context(|| format!("publishing a probe to {}", self.sessions[to].topic))
    }

    /// Subscribes device `who` to its topic again.
    async fn subscribe(&self, who: usize) -> anyhow::Result<()> {
        self.command(who, Cmd::Subscribe).await
    }

    /// Subscribes every device again, all at once; returns how many succeeded and the
    /// first failure.
    async fn subscribe_all(&self) -> (usize, Option<String>) {
        let mut first_failure = None::<String>;
        let mut ok = 0;
        let mut pending = Vec::with_capacity(self.len());
        for session in &self.sessions {
            let (done, answer) = oneshot::channel();
            if session.cmds.send(Cmd::Subscribe(done)).await.is_ok() {
                pending.push((session, answer));
            }
        }
        for (session, answer) in pending {
            match tokio::time::timeout(COMMAND_WAIT, answer).await {
                Ok(Ok(Ok(()))) => ok += 1,
                other => {
                    let why = match other {
                        Ok(Ok(Err(e))) => e,
                        Ok(Err(_)) => "session ended".to_owned(),
                        _ => format!("no SUBACK within {COMMAND_WAIT:?}"),
                    };
                    first_failure.get_or_insert(format!("{}: {why}", session.device));
                }
            }
        }
        (ok, first_failure)
    }

    /// Forgets the deliveries seen so far.
    fn forget(&mut self) {
        while self.deliveries.try_recv().is_ok() {}
        self.seen.clear();
    }

    fn collect(&mut self) {
        while let Ok(d) = self.deliveries.try_recv() {
            self.seen.insert(d);
        }
    }

    /// Whether `session` received `payload`.
    fn saw(&mut self, session: usize, payload: &Bytes) -> bool {
        self.collect();
        self.seen.contains(&Delivery {
            session,
            payload: payload.clone(),
        })
    }

    /// Waits until `session` received `payload`, at most `wait`.
    async fn wait_for(&mut self, session: usize, payload: &Bytes, wait: Duration) -> bool {
        let want = Delivery {
            session,
            payload: payload.clone(),
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.collect();
            if self.seen.contains(&want) {
                return true;
            }
            match tokio::time::timeout_at(deadline, self.deliveries.recv()).await {
                Ok(Some(d)) => {
                    self.seen.insert(d);
                }
                Ok(None) | Err(_) => return false,
            }
        }
    }

    /// Waits until `count` notices arrived since `before` (or [`NOTICE_WAIT`] passed);
    /// returns how many did.
    async fn wait_notices(&self, before: u64, count: u64) -> u64 {
        let deadline = Instant::now() + NOTICE_WAIT;
        loop {
            let got = self.counters.notices.load(Ordering::Acquire) - before;
            if got >= count || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn first_drop(&self) -> Option<String> {
        self.first_drop.lock().ok().and_then(|s| s.clone())
    }

    /// Disconnects every session.
    async fn close(mut self) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, self.tasks.join_next()).await {}
        self.tasks.abort_all();
    }
}

/// One session's task: answers commands, acknowledges, counts and forwards what arrives,
/// and keeps the connection alive.
struct SessionTask {
    client: Client,
    index: usize,
    topic: String,
    cmds: mpsc::Receiver<Cmd>,
    deliveries: mpsc::UnboundedSender<Delivery>,
    counters: Arc<Counters>,
    first_drop: Arc<std::sync::Mutex<Option<String>>>,
    stop: watch::Receiver<bool>,
}

impl SessionTask {
    async fn run(mut self) {
        let outcome = self.serve().await;
        match outcome {
            Ok(()) => self.client.disconnect().await,
            Err(e) => {
                self.counters.dropped.fetch_add(1, Ordering::AcqRel);
                if let Ok(mut first) = self.first_drop.lock() {
                    first.get_or_insert_with(|| format!("{}: {e}", self.topic));
                }
            }
        }
    }

    async fn serve(&mut self) -> Result<(), ClientError> {
        let keep_alive = self.client.server_limits().keep_alive.unwrap_or(KEEP_ALIVE);
        let interval = Duration::from_secs(u64::from(keep_alive.max(1))) * 3 / 4;
        let mut next_ping = tokio::time::Instant::now() + interval;
        let mut subscribing: Vec<(u16, oneshot::Sender<Result<(), String>>)> = Vec::new();
        let mut publishing: Vec<(u16, oneshot::Sender<Result<(), String>>)> = Vec::new();
        loop {
            tokio::select! {
                biased;
                changed = self.stop.changed() => {
                    if changed.is_err() || *self.stop.borrow() {
                        return Ok(());
                    }
                }
                cmd = self.cmds.recv() => match cmd {
                    None => return Ok(()),
                    Some(Cmd::Subscribe(done)) => {
                        let id = self.client.queue_subscribe(&self.topic, QoS::AtMostOnce)?;
                        subscribing.push((id, done));
                        self.client.flush().await?;
                    }
                    Some(Cmd::Publish { topic, payload, done }) => {
                        let packet_id = self.client.next_packet_id();
                        self.client.queue(&Packet::Publish(Publish {
                            dup: false,
                            qos: QoS::AtLeastOnce,
                            retain: false,
                            topic,
                            packet_id,
                            payload,
                            properties: Properties::default(),
                        }))?;
                        publishing.push((packet_id, done));
                        self.client.flush().await?;
                    }
                },
                packet = self.client.recv() => match packet? {
                    Packet::Publish(p) => {
                        if p.qos != QoS::AtMostOnce {
                            self.client.queue_puback(p.packet_id)?;
                            self.client.flush().await?;
                        }
                        if p.topic == self.topic {
                            let _ = self.deliveries.send(Delivery {
                                session: self.index,
                                payload: p.payload,
                            });
                        } else if p.topic.starts_with("$gatehouse/") && p.topic.ends_with("/notice") {
                            self.counters.notices.fetch_add(1, Ordering::AcqRel);
                            self.counters.last_notice_ns.fetch_max(now_ns(), Ordering::AcqRel);
                        } else {
                            self.counters.foreign.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                    Packet::SubAck(ack) => {
                        if let Some(at) = subscribing.iter().position(|(id, _)| *id == ack.packet_id) {
                            let (_, done) = subscribing.swap_remove(at);
                            let _ = done.send(granted(&ack).map(|_| ()).map_err(|e| e.to_string()));
                        }
                    }
                    Packet::PubAck(ack) => {
                        if let Some(at) = publishing.iter().position(|(id, _)| *id == ack.packet_id) {
                            let (_, done) = publishing.swap_remove(at);
                            let _ = done.send(if ack.reason.is_error() {
                                Err(format!("PUBACK reason {}", ack.reason.explained()))
                            } else {
                                Ok(())
                            });
                        }
                    }
                    Packet::Disconnect(d) => return Err(ClientError::Refused(d.reason)),
                    _ => {}
                },
                () = tokio::time::sleep_until(next_ping) => {
                    self.client.ping().await?;
                    next_ping += interval;
                }
            }
        }
    }
}

/// A REST call's answer, and when it was asked.
struct Timed {
    /// When the request started, from [`now_ns`].
    sent_ns: u64,
    /// From writing the request to reading the whole answer.
    took: Duration,
    /// The answer's JSON.
    answer: serde_json::Value,
}

/// A REST call over a connection opened for it; only the request and its response are
/// timed, not the TCP connection and TLS handshake before them. Fails unless the status is
/// 200.
async fn timed(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<Timed> {
    let mut conn = HttpsConnection::connect(&server.api_target()).await?;
    let body = body.map(|b| serde_json::to_vec(&b)).transpose()?;
    let sent_ns = now_ns();
    let started = Instant::now();
    let response = match (method, body) {
        ("PUT", Some(body)) => conn.put(path, "application/json", body).await?,
        ("DELETE", None) => conn.delete(path).await?,
        ("GET", None) => conn.get(path).await?,
        _ => bail!("{method} {path}: not a call the bench makes"),
    };
    let took = started.elapsed();
    ensure!(
        response.status == 200,
        "{method} {path}: {} {}",
        response.status,
        String::from_utf8_lossy(&response.body).trim()
    );
    let answer = if response.body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&response.body)
            .with_context(|| format!("{method} {path}: the answer is not JSON"))?
    };
    Ok(Timed {
        sent_ns,
        took,
        answer,
    })
}

/// Subscriptions the gate has removed or refused so far, from `/metrics`: 0 before the
/// first, as a counter family with no sample yet is left out of the exposition.
async fn subscribe_denials(server: &Server) -> anyhow::Result<u64> {
    let mut conn = HttpsConnection::connect(&server.plain_target()).await?;
    let response = conn.get("/metrics").await?;
    ensure!(response.status == 200, "GET /metrics: {}", response.status);
    let text = String::from_utf8_lossy(&response.body);
    let value = counter_value(&text, DENIALS, &[("action", "subscribe")]).unwrap_or(0.0);
    Ok(value as u64)
}

fn pin_path(device: &str) -> String {
    format!("/api/v1/devices/{TENANT}/{device}/pin")
}

/// One figure row of the trust scenario.
struct Measured {
    variant: &'static str,
    times: Samples,
    undo: Samples,
    /// From the request to the last removal notice reaching its client (MQTT 5.0).
    notified: Samples,
    sessions: usize,
    enforced: Option<f64>,
    failed: u64,
    notes: Vec<String>,
}

impl Measured {
    fn row(self, broker: &Broker) -> Row {
        let times = self.times.sorted();
        let rounds = times.len();
        let undo = self.undo.sorted();
        let notified = self.notified.sorted();
        Row {
            broker: broker.kind(),
            variant: self.variant.to_owned(),
            figures: vec![
                Figure::info("rounds", rounds as f64, 0),
                Figure::lower("p50 ms", ms(percentile(&times, 0.50)), 2),
                Figure::lower("p99 ms", ms(percentile(&times, 0.99)), 2),
                Figure::lower("max ms", ms(percentile(&times, 1.0)), 2),
                Figure::info("undo p50 ms", ms(percentile(&undo, 0.50)), 2),
                Figure::info("notified p50 ms", ms(percentile(&notified, 0.50)), 2),
                Figure::info("sessions", self.sessions as f64, 0),
                Figure::higher("enforced", self.enforced, 0),
                Figure::lower("failed", self.failed as f64, 0),
                Figure::info("broker RSS MiB", broker.rss().ok().map(mib), 1),
            ],
            notes: self.notes,
        }
    }
}

/// Pins one device at a time to `quarantined`, checks it on the wire, and unpins it.
async fn pin_rounds(
    ctx: &Ctx,
    server: &Server,
    broker: &mut Broker,
    fleet: &mut Fleet,
) -> anyhow::Result<Row> {
    let n = fleet.len();
    let rounds = (ctx.args.trust_rounds as usize).min(n - 1);
    let v5 = ctx.version == gatehouse_mqtt::ProtocolVersion::V5;
    let mut m = Measured {
        variant: "pin",
        times: Samples::default(),
        undo: Samples::default(),
        notified: Samples::default(),
        sessions: fleet.live(),
        enforced: None,
        failed: 0,
        notes: Vec::new(),
    };
    let mut confirmed = 0u64;
    let mut removed_total = 0u64;
    for round in 0..rounds {
        let (pinned, control) = pin_pair(round, rounds, n);
        let device = fleet.sessions[pinned].device.clone();
        fleet.forget();
        let tag = |what: &str| Bytes::from(format!("pin {round} {what}"));
        let (before, to_pinned, to_control) = (tag("before"), tag("pinned"), tag("control"));

        // The pinned device's subscription works before the pin.
        fleet.probe(PROBER, pinned, &before).await?;
        let reached_before = fleet.wait_for(pinned, &before, PROBE_WAIT).await;

        let denials_before = subscribe_denials(server).await?;
        let notices_before = fleet.counters.notices.load(Ordering::Acquire);
        let sessions = fleet.live();
        let pin = timed(
            server,
            "PUT",
            &pin_path(&device),
            Some(json!({ "tier": "quarantined", "for": PIN_FOR, "reason": "gatehouse bench" })),
        )
        .await
        .with_context(|| format!("pinning {device}"))?;
        m.times.push(pin.took);
        let removed = subscribe_denials(server).await? - denials_before;
        removed_total += removed;

        fleet.probe(PROBER, pinned, &to_pinned).await?;
        fleet.probe(PROBER, control, &to_control).await?;
        let reached_control = fleet.wait_for(control, &to_control, PROBE_WAIT).await;
        tokio::time::sleep(QUIET).await;
        let leaked = fleet.saw(pinned, &to_pinned);
        if v5 && fleet.wait_notices(notices_before, 1).await >= 1 {
            let last = fleet.counters.last_notice_ns.load(Ordering::Acquire);
            m.notified
                .push(Duration::from_nanos(last.saturating_sub(pin.sent_ns)));
        }

        let unpin = timed(server, "DELETE", &pin_path(&device), None)
            .await
            .with_context(|| format!("unpinning {device}"))?;
        m.undo.push(unpin.took);
        let resubscribed = fleet.subscribe(pinned).await;

        let mut wrong = Vec::new();
        if !reached_before {
            wrong.push("its probe before the pin did not arrive".to_owned());
        }
        if !reached_control {
            wrong.push(format!(
                "the probe to the unpinned {} did not arrive",
                fleet.sessions[control].device
            ));
        }
        if leaked {
            wrong.push("the probe to it arrived after the pin's answer".to_owned());
        }
        if removed != 1 {
            wrong.push(format!(
                "/metrics counted {removed} subscriptions removed ({DENIALS}_total{{action=\"subscribe\"}}), not 1"
            ));
        }
        if let Err(e) = resubscribed {
            wrong.push(format!("subscribing again after the unpin failed: {e:#}"));
        }
        if wrong.is_empty() {
            confirmed += 1;
        } else {
            m.failed += 1;
            m.notes.push(format!(
                "round {round}, {device} pinned with {sessions} sessions open: {}",
                wrong.join("; ")
            ));
        }
        broker.check_alive()?;
    }
    m.enforced = Some(confirmed as f64);
    m.sessions = fleet.live();
    m.notes.push(format!(
        "pin: {rounds} rounds, each pinning a different enrolled device to quarantined (PUT \
         {}) with all {} sessions open; ms = request written to answer read (the answer \
         comes after enforcement; a connection is opened before the clock starts); undo = \
         DELETE of the pin; enforced = rounds where, after the answer, a probe published at \
         QoS 1 by {} to the pinned device's topic did not arrive within {QUIET:?} of one to \
         an unpinned device arriving, the same probe had arrived just before the pin, and \
         /metrics counted its one subscription removed ({removed_total} in all){}",
        pin_path("<id>"),
        n,
        fleet.sessions[PROBER].device,
        if v5 {
            "; notified = request to the pinned device's client receiving the gate's \
             removal notice on $gatehouse/<device>/notice"
        } else {
            ""
        }
    ));
    fleet_notes(fleet, &mut m.notes);
    Ok(m.row(broker))
}

/// Puts a set that forbids every subscription in force, checks it, and puts the original
/// set back; every device then subscribes again.
async fn policy_rounds(
    ctx: &Ctx,
    server: &Server,
    broker: &mut Broker,
    fleet: &mut Fleet,
) -> anyhow::Result<Row> {
    let rounds = ctx.args.trust_policy_rounds as usize;
    let in_force = timed(server, "GET", "/api/v1/policies", None).await?;
    let original = in_force.answer["text"]
        .as_str()
        .context("GET /api/v1/policies has no text")?
        .to_owned();
    let frozen = freeze_policy(&original);
    let probed = sample(fleet.len(), POLICY_SAMPLE);
    let v5 = ctx.version == gatehouse_mqtt::ProtocolVersion::V5;
    let mut m = Measured {
        variant: "policy",
        times: Samples::default(),
        undo: Samples::default(),
        notified: Samples::default(),
        sessions: fleet.live(),
        enforced: None,
        failed: 0,
        notes: Vec::new(),
    };
    let mut least_removed: Option<u64> = None;
    let mut resubscribe_times = Samples::default();
    for round in 0..rounds {
        fleet.forget();
        let sessions = fleet.live() as u64;
        let denials_before = subscribe_denials(server).await?;
        let notices_before = fleet.counters.notices.load(Ordering::Acquire);
        let freeze = timed(
            server,
            "PUT",
            "/api/v1/policies",
            Some(json!({ "text": frozen })),
        )
        .await
        .context("putting the freezing policy set in force")?;
        m.times.push(freeze.took);
        let removed = subscribe_denials(server).await? - denials_before;
        least_removed = Some(least_removed.map_or(removed, |l| l.min(removed)));
        let listed = freeze.answer["policies"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|id| id == FREEZE_ID));

        let tag = |k: usize| Bytes::from(format!("policy {round} {k}"));
        for &k in &probed {
            fleet.probe(PROBER, k, &tag(k)).await?;
        }
        tokio::time::sleep(QUIET).await;
        let leaked = probed.iter().filter(|&&k| fleet.saw(k, &tag(k))).count();
        let notices = if v5 {
            let got = fleet.wait_notices(notices_before, sessions).await;
            if got >= sessions {
                let last = fleet.counters.last_notice_ns.load(Ordering::Acquire);
                m.notified
                    .push(Duration::from_nanos(last.saturating_sub(freeze.sent_ns)));
            }
            Some(got)
        } else {
            None
        };

        let rss_frozen = broker.rss().ok();
        let restore = timed(
            server,
            "PUT",
            "/api/v1/policies",
            Some(json!({ "text": original })),
        )
        .await
        .context("putting the original policy set back")?;
        m.undo.push(restore.took);
        let resubscribing = Instant::now();
        let (resubscribed, first_failure) = fleet.subscribe_all().await;
        resubscribe_times.push(resubscribing.elapsed());

        let mut wrong = Vec::new();
        if !listed {
            wrong.push(format!("the answer does not list {FREEZE_ID}"));
        }
        if removed != sessions {
            wrong.push(format!(
                "/metrics counted {removed} subscriptions removed ({DENIALS}_total{{action=\"subscribe\"}}) for {sessions} sessions"
            ));
        }
        if leaked > 0 {
            wrong.push(format!(
                "{leaked} of {} probes arrived after the answer",
                probed.len()
            ));
        }
        if resubscribed < fleet.live() {
            wrong.push(format!(
                "{resubscribed} of {} sessions subscribed again (first failure: {})",
                fleet.live(),
                first_failure.unwrap_or_default()
            ));
        }
        let rss = |r: Option<u64>| r.map_or("?".to_owned(), |b| format!("{:.1} MiB", mib(b)));
        let mut note = format!(
            "round {round}: answered in {}, put back in {}; {removed} subscriptions removed \
             for {sessions} sessions{}; broker resident set {} frozen, {} once all subscribed \
             again",
            format_ms(freeze.took),
            format_ms(restore.took),
            notices.map_or(String::new(), |got| format!("; {got} removal notices")),
            rss(rss_frozen),
            rss(broker.rss().ok()),
        );
        if !wrong.is_empty() {
            m.failed += 1;
            note.push_str(&format!("; NOT CONFIRMED: {}", wrong.join("; ")));
        }
        m.notes.push(note);
        broker.check_alive()?;
    }
    m.enforced = least_removed.map(|r| r as f64);
    m.sessions = fleet.live();
    let resubscribe_times = resubscribe_times.sorted();
    m.notes.push(format!(
        "policy: {rounds} rounds; each PUTs /api/v1/policies with the set in force plus \
         @id(\"{FREEZE_ID}\") forbid (principal, action == Action::\"subscribe\", resource); \
         ms = request written to answer read (the answer comes after every registered \
         device's verdict is compiled again and every open session is brought under it); \
         enforced = subscriptions /metrics counted removed by one change (the least of the \
         rounds; one per session is all of them); probes to {} sampled devices, published \
         at QoS 1 after the answer, must not arrive within {QUIET:?}; undo = PUT of the \
         original set, after which every device subscribes again (p50 {})",
        probed.len(),
        percentile(&resubscribe_times, 0.5).map_or("-".to_owned(), format_ms),
    ));
    if v5 {
        m.notes.push(format!(
            "policy: notified = request to the last of the {} sessions receiving the gate's \
             removal notice on $gatehouse/<device>/notice (over the rounds where every \
             notice arrived within {NOTICE_WAIT:?})",
            m.sessions,
        ));
    }
    fleet_notes(fleet, &mut m.notes);
    Ok(m.row(broker))
}

fn fleet_notes(fleet: &Fleet, notes: &mut Vec<String>) {
    let dropped = fleet.counters.dropped.load(Ordering::Acquire);
    if dropped > 0 {
        notes.push(format!(
            "{dropped} sessions ended during the rounds (first: {})",
            fleet.first_drop().unwrap_or_default()
        ));
    }
    let foreign = fleet.counters.foreign.load(Ordering::Acquire);
    if foreign > 0 {
        notes.push(format!("{foreign} messages arrived on unexpected topics"));
    }
}

fn format_ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_devices_are_all_different_and_never_the_prober() {
        for (rounds, n) in [(20, 10_000), (20, 21), (5, 6), (1, 3), (2, 3), (7, 50)] {
            let pairs: Vec<(usize, usize)> = (0..rounds).map(|r| pin_pair(r, rounds, n)).collect();
            let pinned: HashSet<usize> = pairs.iter().map(|(p, _)| *p).collect();
            assert_eq!(pinned.len(), rounds, "{rounds} rounds over {n}: {pairs:?}");
            for (p, c) in pairs {
                assert!(p != PROBER && c != PROBER && p != c, "{p} {c}");
                assert!(p < n && c < n, "{p} {c} of {n}");
            }
        }
        assert_eq!(pin_pair(0, 20, 10_000), (1, 2));
        assert_eq!(pin_pair(19, 20, 10_000), (9_500, 9_501));
        assert_eq!(pin_pair(1, 2, 3), (2, 1));
    }

    #[test]
    fn samples_spread_over_the_fleet_without_the_prober() {
        assert_eq!(sample(10_000, 4), vec![1, 2_500, 5_000, 7_500]);
        assert_eq!(sample(4, 20), vec![1, 2, 3]);
        assert_eq!(sample(1, 20), Vec::<usize>::new());
        let s = sample(10_000, POLICY_SAMPLE);
        assert_eq!(s.len(), POLICY_SAMPLE);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn the_freeze_keeps_the_set_in_force_and_adds_one_forbid() {
        let in_force =
            "@id(\"connect\")\npermit (principal, action == Action::\"connect\", resource);\n\n";
        let frozen = freeze_policy(in_force);
        assert!(frozen.starts_with(in_force.trim_end()));
        assert!(frozen.ends_with(
            "@id(\"bench-freeze\")\nforbid (principal, action == Action::\"subscribe\", resource);\n"
        ));
        assert_eq!(frozen.matches("@id(").count(), 2);
    }

    #[test]
    fn denials_are_read_from_the_exposition() {
        let text = "\
# HELP gatehouse_gate_denials Actions denied by the gate.
# TYPE gatehouse_gate_denials counter
gatehouse_gate_denials_total{action=\"publish\"} 4
gatehouse_gate_denials_total{action=\"subscribe\"} 10012
gatehouse_gate_denials_created{action=\"subscribe\"} 1700000000.0
# TYPE gatehouse_connections_open gauge
gatehouse_connections_open 10000
# EOF
";
        assert_eq!(
            counter_value(text, DENIALS, &[("action", "subscribe")]),
            Some(10_012.0)
        );
        assert_eq!(counter_value(text, DENIALS, &[]), Some(10_016.0));
        assert_eq!(
            counter_value(text, DENIALS, &[("action", "connect")]),
            Some(0.0),
            "declared, nothing counted yet"
        );
        assert_eq!(counter_value(text, "gatehouse_missing", &[]), None);
        let stamped = "gatehouse_gate_denials_total{action=\"subscribe\"} 7 1700000000\n";
        assert_eq!(
            counter_value(stamped, DENIALS, &[("action", "subscribe")]),
            Some(7.0)
        );
        let declared_only =
            "# TYPE gatehouse_gate_denials counter\n# HELP gatehouse_gate_denials x\n";
        assert_eq!(
            counter_value(declared_only, DENIALS, &[("action", "subscribe")]),
            Some(0.0)
        );
    }
}
