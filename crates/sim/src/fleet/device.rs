//! One simulated device: a real MQTT 5 client over mutual TLS that reports its posture,
//! publishes telemetry at its model's cadence, answers commands, reconnects when its
//! session is lost — and, when compromised, attacks on cue and notes the first enforcement
//! it feels.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gatehouse_agent::{CredentialState, Posture, PostureSigner};
use gatehouse_mqtt::{Connect, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, watch};

use super::models::{Kind, Sensor};
use super::report::Scenario;
use crate::client::{Client, ClientError, ConnectOptions, granted};

/// The firmware a device rolled back to reports: older than every supported release.
pub const VULNERABLE_FIRMWARE: &str = "0.9.7";

/// Topic names a scanner tries.
const SCAN_WORDS: [&str; 16] = [
    "admin",
    "config",
    "test",
    "cmd",
    "system/info",
    "firmware",
    "debug",
    "status",
    "sensors",
    "update",
    "control",
    "home",
    "plant/line1",
    "scada",
    "backup",
    "shell",
];

/// Commands a device may be sent (the last level of its command topic).
pub const COMMANDS: [&str; 4] = ["set", "status", "reboot", "sync"];

/// Counters every device task adds to.
#[derive(Debug, Default)]
pub struct Counters {
    pub telemetry: AtomicU64,
    pub replies: AtomicU64,
    pub sessions: AtomicU64,
    pub peak_sessions: AtomicU64,
    pub reconnects: AtomicU64,
    /// Benign devices that felt enforcement: subscriptions removed, session ended.
    pub benign_enforced: Mutex<Vec<String>>,
    /// The first error a benign device's session ended with, for the report.
    pub first_loss: Mutex<Option<String>>,
}

impl Counters {
    fn session_up(&self) {
        let now = self.sessions.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak_sessions.fetch_max(now, Ordering::AcqRel);
    }

    fn session_down(&self) {
        self.sessions.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What an attacker reports once: when its first malicious packet left, and the first
/// enforcement it felt (or none within the attack's time).
#[derive(Debug, Clone)]
pub struct AttackReport {
    pub device: String,
    pub scenario: Scenario,
    pub started: Option<Instant>,
    pub blocked: Option<(Instant, String)>,
    pub note: String,
}

/// An attacker's progress, shared with the helper tasks of its attack (the clone, the
/// password guesser).
#[derive(Debug)]
pub struct AttackState {
    device: String,
    scenario: Scenario,
    started: Option<Instant>,
    until: Option<Instant>,
    blocked: Option<(Instant, String)>,
    notes: Vec<String>,
    report: Option<mpsc::UnboundedSender<AttackReport>>,
}

impl AttackState {
    pub fn new(
        device: String,
        scenario: Scenario,
        report: mpsc::UnboundedSender<AttackReport>,
    ) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            device,
            scenario,
            started: None,
            until: None,
            blocked: None,
            notes: Vec::new(),
            report: Some(report),
        }))
    }

    fn start(&mut self, attack_for: Duration) {
        let now = Instant::now();
        self.started.get_or_insert(now);
        self.until.get_or_insert(now + attack_for);
    }

    /// Started, not blocked, and within its time.
    fn active(&self) -> bool {
        self.started.is_some()
            && self.blocked.is_none()
            && self.until.is_some_and(|u| Instant::now() < u)
    }

    fn is_blocked(&self) -> bool {
        self.blocked.is_some()
    }

    fn note(&mut self, note: impl Into<String>) {
        if self.notes.len() < 8 {
            self.notes.push(note.into());
        }
    }

    /// The first enforcement after the attack started; reported at once.
    fn block(&mut self, how: impl Into<String>) {
        if self.started.is_none() || self.blocked.is_some() {
            return;
        }
        self.blocked = Some((Instant::now(), how.into()));
        self.send();
    }

    /// Reports what there is (the attack ran its time without enforcement).
    fn give_up(&mut self) {
        self.send();
    }

    fn send(&mut self) {
        if let Some(tx) = self.report.take() {
            let _ = tx.send(AttackReport {
                device: self.device.clone(),
                scenario: self.scenario,
                started: self.started,
                blocked: self.blocked.clone(),
                note: self.notes.join("; "),
            });
        }
    }
}

/// The gate's notice on `$gatehouse/{device}/notice`, in words: which subscriptions
/// were removed and why (the raw text when it is not the notice's JSON).
pub(crate) fn describe_notice(payload: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return format!("a notice: {}", String::from_utf8_lossy(payload));
    };
    let filters: Vec<&str> = v["filters"]
        .as_array()
        .map(|f| f.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default();
    match (v["event"].as_str(), filters.as_slice()) {
        (Some("subscriptions_removed"), []) => "its subscriptions were removed".to_owned(),
        (Some("subscriptions_removed"), f) => format!(
            "its subscription{} to {} {} removed{}",
            if f.len() == 1 { "" } else { "s" },
            f.join(", "),
            if f.len() == 1 { "was" } else { "were" },
            v["reason"]
                .as_str()
                .map_or(String::new(), |r| format!(" ({r})"))
        ),
        _ => format!("a notice: {v}"),
    }
}

/// What a device is and does.
#[derive(Debug)]
pub struct Device {
    pub index: usize,
    pub id: String,
    pub kind: Kind,
    pub attack: Option<Scenario>,
    pub opts: ConnectOptions,
    pub signer: Option<Arc<PostureSigner>>,
    pub sensor: Sensor,
}

/// What all devices share.
#[derive(Debug, Clone)]
pub struct Shared {
    pub counters: Arc<Counters>,
    pub stop: watch::Receiver<bool>,
    /// Set when the attack phase begins.
    pub go: watch::Receiver<bool>,
    /// How long an attack goes on without enforcement.
    pub attack_for: Duration,
    /// Benign device ids (what scans and floods name).
    pub benign_ids: Arc<Vec<String>>,
    /// The legacy listener, for the password guesser.
    pub legacy: Option<SocketAddr>,
    /// Where the clone and the password guesser come from.
    pub attacker_addr: Option<IpAddr>,
    /// Username and password pairs to guess.
    pub credentials: Arc<Vec<(String, String)>>,
}

/// How a session ended.
enum End {
    Stopped,
    TakenOver,
    /// The server ended it (DISCONNECT with a reason, or closed the connection).
    Ended(String),
    Lost(ClientError),
}

fn notice_topic(id: &str) -> String {
    format!("$gatehouse/{id}/notice")
}

fn publish(topic: String, qos: QoS, packet_id: u16, payload: Vec<u8>) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic,
        packet_id,
        payload: Bytes::from(payload),
        properties: Properties::default(),
    })
}

impl Device {
    /// Runs the device on its first session (already connected) until told to stop,
    /// reconnecting when the session is lost.
    pub async fn run(
        mut self,
        client: Client,
        sh: Shared,
        attack: Option<Arc<Mutex<AttackState>>>,
    ) {
        let mut client = Some(client);
        let mut backoff = Duration::from_millis(500);
        let mut stop = sh.stop.clone();
        loop {
            let c = match client.take() {
                Some(c) => c,
                None => match Client::connect(&self.opts).await {
                    Ok((c, _)) => {
                        sh.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                        backoff = Duration::from_millis(500);
                        c
                    }
                    Err(e) => {
                        if let Some(a) = &attack {
                            a.lock().block(format!("reconnect refused: {e}"));
                        }
                        tokio::select! {
                            _ = stop.changed() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                },
            };
            sh.counters.session_up();
            let end = self.session(c, &sh, attack.as_ref()).await;
            sh.counters.session_down();
            let pause = match end {
                End::Stopped => return,
                End::TakenOver => Duration::from_millis(400),
                End::Ended(why) => {
                    match &attack {
                        Some(a) => a.lock().block(format!("session ended: {why}")),
                        None => sh.counters.benign_enforced.lock().push(self.id.clone()),
                    }
                    Duration::from_secs(2)
                }
                End::Lost(e) => {
                    if attack.is_none() {
                        sh.counters
                            .first_loss
                            .lock()
                            .get_or_insert_with(|| format!("{}: {e}", self.id));
                    }
                    backoff
                }
            };
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    fn commands_filter(&self) -> String {
        format!("devices/{}/commands/+", self.id)
    }

    fn posture(&self, vulnerable: bool) -> Option<Vec<u8>> {
        let signer = self.signer.as_ref()?;
        let mut p = Posture::new();
        p = p
            .with_firmware(if vulnerable {
                VULNERABLE_FIRMWARE
            } else {
                self.kind.current_firmware()
            })
            .ok()?;
        if vulnerable {
            p = p.with_service("telnet").ok()?;
        }
        if self.kind.has_default_credentials() {
            p = p.with_default_credentials(if vulnerable {
                CredentialState::Unchanged
            } else {
                CredentialState::Changed
            });
        } else {
            p = p.with_default_credentials(CredentialState::NotApplicable);
        }
        signer
            .sign(&p.report_now())
            .ok()
            .map(|signed| signed.to_envelope())
    }

    async fn session(
        &mut self,
        mut client: Client,
        sh: &Shared,
        attack: Option<&Arc<Mutex<AttackState>>>,
    ) -> End {
        match self.serve(&mut client, sh, attack).await {
            Ok(End::Stopped) => {
                client.disconnect().await;
                End::Stopped
            }
            Ok(end) => end,
            Err(ClientError::Closed) => End::Ended("connection closed by the server".into()),
            Err(ClientError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                End::Ended("connection reset by the server".into())
            }
            Err(e) => End::Lost(e),
        }
    }

    async fn serve(
        &mut self,
        client: &mut Client,
        sh: &Shared,
        attack: Option<&Arc<Mutex<AttackState>>>,
    ) -> Result<End, ClientError> {
        let scenario = self.attack;
        let attacking =
            |a: Option<&Arc<Mutex<AttackState>>>| a.is_some_and(|a| a.lock().started.is_some());
        client.queue_subscribe(&self.commands_filter(), QoS::AtLeastOnce)?;
        // A device reports its posture as it connects; one whose firmware was rolled back
        // reports the old release once the attack has begun.
        let vulnerable = scenario == Some(Scenario::VulnerableFirmware) && attacking(attack);
        if let Some(env) = self.posture(vulnerable) {
            let id = client.next_packet_id();
            client.queue(&publish(
                format!("$gatehouse/{}/posture", self.id),
                QoS::AtLeastOnce,
                id,
                env,
            ))?;
        }
        client.flush().await?;

        let keep_alive = client
            .server_limits()
            .keep_alive
            .unwrap_or(self.opts.keep_alive);
        let ping_every = Duration::from_secs(u64::from(keep_alive.max(2))) * 3 / 4;
        let cadence = self.kind.cadence();
        let phase = cadence.mul_f64((self.index % 97) as f64 / 97.0);
        let mut next_telemetry = tokio::time::Instant::now() + phase;
        let mut next_ping = tokio::time::Instant::now() + ping_every;
        let mut next_attack = tokio::time::Instant::now();
        let mut scanned = 0usize;
        let telemetry = format!("devices/{}/telemetry", self.id);
        let notice = notice_topic(&self.id);
        let mut stop = sh.stop.clone();
        let mut go = sh.go.clone();

        loop {
            let active = attack.is_some_and(|a| a.lock().active());
            let waiting = attack.is_some() && !attacking(attack);
            tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return Ok(End::Stopped);
                    }
                }
                changed = go.changed(), if waiting => {
                    if changed.is_err() || !*go.borrow() {
                        continue;
                    }
                    if let (Some(a), Some(s)) = (attack, scenario) {
                        self.begin(client, s, a, sh).await?;
                    }
                }
                packet = client.recv() => match packet? {
                    Packet::Publish(p) => {
                        if p.qos != QoS::AtMostOnce {
                            client.queue_puback(p.packet_id)?;
                        }
                        if p.topic == notice {
                            match attack {
                                Some(a) => a.lock().block(describe_notice(&p.payload)),
                                None => sh.counters.benign_enforced.lock().push(self.id.clone()),
                            }
                        } else if p.topic.starts_with(&format!("devices/{}/commands/", self.id)) {
                            let reply = serde_json::json!({
                                "command": p.topic.rsplit('/').next().unwrap_or(""),
                                "ok": true,
                                "request": serde_json::from_slice::<serde_json::Value>(&p.payload)
                                    .unwrap_or(serde_json::Value::Null),
                            });
                            client.queue(&publish(
                                format!("devices/{}/replies", self.id),
                                QoS::AtMostOnce,
                                0,
                                reply.to_string().into_bytes(),
                            ))?;
                            sh.counters.replies.fetch_add(1, Ordering::Relaxed);
                        }
                        client.flush().await?;
                    }
                    Packet::Disconnect(d) if d.reason == ReasonCode::SESSION_TAKEN_OVER => {
                        return Ok(End::TakenOver);
                    }
                    Packet::Disconnect(d) => {
                        return Ok(End::Ended(format!("DISCONNECT {}", d.reason.explained())));
                    }
                    Packet::SubAck(ack) => {
                        if let (Some(a), Err(e)) = (attack, granted(&ack)) {
                            a.lock().note(format!("subscription refused ({e})"));
                        }
                    }
                    _ => {}
                },
                () = tokio::time::sleep_until(next_telemetry) => {
                    let spoof = scenario == Some(Scenario::SpoofedReadings) && active;
                    let payload = if spoof { self.sensor.spoofed() } else { self.sensor.reading() };
                    client.queue(&publish(telemetry.clone(), QoS::AtMostOnce, 0, payload))?;
                    client.flush().await?;
                    sh.counters.telemetry.fetch_add(1, Ordering::Relaxed);
                    next_telemetry += if spoof { Duration::from_secs(1) } else { cadence };
                }
                () = tokio::time::sleep_until(next_attack), if active => {
                    next_attack = tokio::time::Instant::now() + self.attack_step(client, &telemetry, &mut scanned, sh)?;
                    client.flush().await?;
                }
                () = tokio::time::sleep_until(next_ping) => {
                    client.ping().await?;
                    next_ping += ping_every;
                }
            }
        }
    }

    /// The first malicious act of the scenario; the clock starts as it leaves.
    async fn begin(
        &mut self,
        client: &mut Client,
        scenario: Scenario,
        attack: &Arc<Mutex<AttackState>>,
        sh: &Shared,
    ) -> Result<(), ClientError> {
        match scenario {
            Scenario::WildcardHarvesting => {
                client.queue_subscribe("#", QoS::AtMostOnce)?;
            }
            Scenario::Exfiltration => {
                client.queue_subscribe("devices/+/telemetry", QoS::AtMostOnce)?;
            }
            Scenario::VulnerableFirmware => {
                if let Some(env) = self.posture(true) {
                    let id = client.next_packet_id();
                    client.queue(&publish(
                        format!("$gatehouse/{}/posture", self.id),
                        QoS::AtLeastOnce,
                        id,
                        env,
                    ))?;
                } else {
                    attack.lock().note("no key to sign a posture report with");
                }
            }
            Scenario::SpoofedReadings => {
                client.queue(&publish(
                    format!("devices/{}/telemetry", self.id),
                    QoS::AtMostOnce,
                    0,
                    self.sensor.spoofed(),
                ))?;
            }
            Scenario::BruteForce => match (sh.legacy, sh.attacker_addr) {
                (Some(legacy), bind) => {
                    tokio::spawn(guess_passwords(
                        legacy,
                        bind,
                        sh.credentials.clone(),
                        attack.clone(),
                        sh.attack_for,
                        sh.stop.clone(),
                    ));
                }
                (None, _) => attack
                    .lock()
                    .note("the server has no legacy listener to guess passwords on"),
            },
            Scenario::ClonedCertificate => {
                let mut opts = self.opts.clone();
                opts.bind = sh.attacker_addr;
                tokio::spawn(run_clone(
                    opts,
                    notice_topic(&self.id),
                    attack.clone(),
                    sh.attack_for,
                    sh.stop.clone(),
                ));
            }
            Scenario::PublishFlood | Scenario::TopicScanning => {}
        }
        attack.lock().start(sh.attack_for);
        let timer = attack.clone();
        let attack_for = sh.attack_for;
        tokio::spawn(async move {
            tokio::time::sleep(attack_for).await;
            timer.lock().give_up();
        });
        client.flush().await
    }

    /// One step of an ongoing attack; returns the time to the next.
    fn attack_step(
        &mut self,
        client: &mut Client,
        telemetry: &str,
        scanned: &mut usize,
        sh: &Shared,
    ) -> Result<Duration, ClientError> {
        match self.attack {
            Some(Scenario::PublishFlood) => {
                // 500 messages a second, in batches of five.
                for _ in 0..5 {
                    client.queue(&publish(
                        telemetry.to_owned(),
                        QoS::AtMostOnce,
                        0,
                        self.sensor.reading(),
                    ))?;
                }
                Ok(Duration::from_millis(10))
            }
            Some(Scenario::TopicScanning) => {
                // Enumerates topic names a scanner's word list holds: one subscription
                // and one publish to each, neither of them another device's topic.
                let word = SCAN_WORDS[*scanned % SCAN_WORDS.len()];
                let topic = if *scanned < SCAN_WORDS.len() {
                    word.to_owned()
                } else {
                    format!("{word}/{}", *scanned / SCAN_WORDS.len())
                };
                client.queue_subscribe(&topic, QoS::AtMostOnce)?;
                let id = client.next_packet_id();
                client.queue(&publish(topic, QoS::AtLeastOnce, id, b"?".to_vec()))?;
                *scanned += 1;
                let _ = &sh.benign_ids;
                Ok(Duration::from_millis(50))
            }
            _ => Ok(Duration::from_secs(3600)),
        }
    }
}

/// The clone: the same certificate and key from a second address, taking the session
/// over whenever it has lost it, until enforcement or the attack's time is up.
async fn run_clone(
    opts: ConnectOptions,
    notice: String,
    attack: Arc<Mutex<AttackState>>,
    attack_for: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let until = tokio::time::Instant::now() + attack_for;
    while tokio::time::Instant::now() < until && !attack.lock().is_blocked() {
        match Client::connect(&opts).await {
            Ok((mut client, _)) => loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep_until(until) => {
                        client.disconnect().await;
                        return;
                    }
                    packet = client.recv() => match packet {
                        Ok(Packet::Publish(p)) if p.topic == notice => {
                            attack.lock().block("the clone's subscriptions were removed");
                        }
                        Ok(Packet::Publish(p)) => {
                            if p.qos != QoS::AtMostOnce {
                                let _ = client.queue_puback(p.packet_id);
                                let _ = client.flush().await;
                            }
                        }
                        Ok(Packet::Disconnect(d)) if d.reason == ReasonCode::SESSION_TAKEN_OVER => break,
                        Ok(Packet::Disconnect(d)) => {
                            attack.lock().block(format!("the clone was disconnected ({})", d.reason.explained()));
                            return;
                        }
                        Ok(_) => {}
                        Err(_) => {
                            attack.lock().block("the clone's connection was closed by the server");
                            return;
                        }
                    }
                }
            },
            Err(e) => {
                attack.lock().block(format!("the clone was refused: {e}"));
                return;
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// How one password guess went.
#[derive(Debug, PartialEq, Eq)]
enum Guess {
    Refused(u8),
    Accepted,
    /// The server closed the connection before any CONNACK: the address is banned.
    Dropped,
}

/// Mirai's loop: one connection per guess, the next pair, until the server stops talking
/// to this address or the attack's time is up.
async fn guess_passwords(
    addr: SocketAddr,
    bind: Option<IpAddr>,
    credentials: Arc<Vec<(String, String)>>,
    attack: Arc<Mutex<AttackState>>,
    attack_for: Duration,
    stop: watch::Receiver<bool>,
) {
    let until = Instant::now() + attack_for;
    let mut refused = 0usize;
    for (n, (user, pass)) in credentials.iter().cycle().enumerate() {
        if Instant::now() >= until || *stop.borrow() || attack.lock().is_blocked() {
            break;
        }
        match guess(addr, bind, &format!("mirai-{n}"), user, pass).await {
            Ok(Guess::Refused(_)) => refused += 1,
            Ok(Guess::Accepted) => attack
                .lock()
                .note(format!("the legacy listener accepted {user}:{pass}")),
            Ok(Guess::Dropped) => {
                attack.lock().block(format!(
                    "the legacy listener stopped answering this address after {refused} refused guesses"
                ));
                break;
            }
            Err(e) => {
                attack.lock().block(format!(
                    "the legacy listener refused the connection after {refused} refused guesses ({e})"
                ));
                break;
            }
        }
    }
}

async fn guess(
    addr: SocketAddr,
    bind: Option<IpAddr>,
    client_id: &str,
    user: &str,
    pass: &str,
) -> std::io::Result<Guess> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(ip) = bind {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let mut stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let connect = Connect {
        protocol: ProtocolVersion::V311,
        clean_start: true,
        keep_alive: 30,
        client_id: client_id.to_owned(),
        will: None,
        username: Some(user.to_owned()),
        password: Some(Bytes::copy_from_slice(pass.as_bytes())),
        properties: Properties::default(),
    };
    let mut buf = BytesMut::new();
    gatehouse_mqtt::encode(
        &Packet::Connect(Box::new(connect)),
        ProtocolVersion::V311,
        &mut buf,
    )
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    if stream.write_all(&buf).await.is_err() {
        return Ok(Guess::Dropped);
    }
    let mut rbuf = BytesMut::with_capacity(64);
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Some(packet)) = gatehouse_mqtt::decode(&mut rbuf, ProtocolVersion::V311, 1024)
            {
                return Ok::<_, std::io::Error>(Some(packet));
            }
            match stream.read_buf(&mut rbuf).await {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no CONNACK"))??;
    Ok(match read {
        Some(Packet::ConnAck(ack)) if ack.reason.is_error() => Guess::Refused(ack.reason.0),
        Some(Packet::ConnAck(_)) => {
            let _ = stream.shutdown().await;
            Guess::Accepted
        }
        _ => Guess::Dropped,
    })
}

/// Username and password pairs from a `username,password[,weight]` CSV (the Mirai list in
/// the shared data), or the built-in list when there is none.
pub fn load_credentials(path: Option<&std::path::Path>) -> (Vec<(String, String)>, String) {
    if let Some(path) = path
        && let Ok(text) = std::fs::read_to_string(path)
    {
        let pairs: Vec<(String, String)> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter(|l| !l.starts_with("username,"))
            .filter_map(|l| {
                let mut f = l.split(',');
                let user = f.next()?.trim().to_owned();
                let pass = f.next().unwrap_or("").trim().to_owned();
                (!user.is_empty()).then_some((user, pass))
            })
            .collect();
        if !pairs.is_empty() {
            let from = format!("{} pairs from {}", pairs.len(), path.display());
            return (pairs, from);
        }
    }
    let builtin: Vec<(String, String)> = [
        ("root", "root"),
        ("admin", "admin"),
        ("root", "12345"),
        ("admin", "password"),
        ("root", "default"),
        ("user", "user"),
        ("support", "support"),
        ("root", "pass"),
        ("admin", "1234"),
        ("guest", "guest"),
        ("root", "admin"),
        ("ubnt", "ubnt"),
        ("root", "888888"),
        ("admin", ""),
        ("root", ""),
        ("service", "service"),
    ]
    .into_iter()
    .map(|(u, p)| (u.to_owned(), p.to_owned()))
    .collect();
    let from = format!("{} built-in pairs", builtin.len());
    (builtin, from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gates_notice_is_told_in_words() {
        let notice = br#"{"event":"subscriptions_removed","filters":["devices/+/telemetry/#"],"reason":"no longer allowed by the device's verdict"}"#;
        assert_eq!(
            describe_notice(notice),
            "its subscription to devices/+/telemetry/# was removed (no longer allowed by the \
             device's verdict)"
        );
        let two = br#"{"event":"subscriptions_removed","filters":["a/#","b/+"]}"#;
        assert_eq!(
            describe_notice(two),
            "its subscriptions to a/#, b/+ were removed"
        );
        assert_eq!(describe_notice(b"\xff"), "a notice: \u{fffd}");
    }

    #[test]
    fn credentials_come_from_the_csv_or_the_builtin_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("creds.csv");
        std::fs::write(
            &path,
            "username,password,weight\nroot,xc3511,10\n\nadmin,,3\n",
        )
        .expect("write");
        let (pairs, from) = load_credentials(Some(&path));
        assert_eq!(
            pairs,
            vec![
                ("root".to_owned(), "xc3511".to_owned()),
                ("admin".to_owned(), String::new())
            ]
        );
        assert!(from.contains("2 pairs"));
        let (builtin, from) = load_credentials(Some(&dir.path().join("missing.csv")));
        assert!(builtin.len() > 10);
        assert!(from.contains("built-in"));
    }
}
