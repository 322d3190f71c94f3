//! Time to block, on Gatehouse with detection and response as shipped (the default rules,
//! thresholds and playbooks): N devices of one model enroll over EST, their model carrying
//! a profile with publish rates; each connects over MQTTS with its new certificate,
//! subscribes to its command and configuration topics and publishes telemetry at a low
//! rate. With every session open and publishing, one device at a time turns attacker on
//! its own open session:
//!
//! - **flood** (even rounds): QoS 0 publishes to its telemetry topic at `--detect-flood-rate`;
//! - **scan** (odd rounds): SUBSCRIBEs to other devices' topics, one filter each, a window
//!   of them in flight.
//!
//! Interleaved with the attack, the attacker publishes QoS 1 probes on a topic of its
//! profile that the attack does not touch (its own token bucket, with room for every
//! probe, so a refusal is the verdict's and not the rate's). Time to block runs from the
//! moment the first malicious packet is handed to the socket to the first enforcement the
//! attacker sees on that session: a probe answered with 0x87, the gate's
//! subscriptions-removed notice on `$gatehouse/<device>/notice`, or the server closing the
//! session. The attack goes on until the session is blocked outright — a probe refused,
//! every subscription removed (the configuration topic stays open until the device is
//! quarantined), or the session ended — or [`ATTACK_FOR`] passed.
//!
//! The keys, enrollments and sessions are made before any reported clock starts; those
//! phases are only described in notes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use gatehouse_mqtt::{Packet, Properties, Publish, QoS};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::Ctx;
use super::enroll::{MANUFACTURER, MODEL, Server, TENANT, enroll_fleet, error_summary, mib};
use super::trust::counter_value;
use crate::bench::args::BenchArgs;
use crate::bench::broker::Broker;
use crate::bench::pki::device_name;
use crate::bench::report::{Figure, Row};
use crate::bench::samples::{Samples, ms, percentile};
use crate::client::{Client, ClientError, ConnectOptions};
use crate::est::HttpsConnection;

/// Keep-alive of the devices' sessions; they ping at three quarters of it.
const KEEP_ALIVE: u16 = 300;

/// Longest an attack goes on without the session being blocked outright.
pub const ATTACK_FOR: Duration = Duration::from_secs(5);

/// Normal telemetry before the first attack.
const WARMUP: Duration = Duration::from_secs(3);

/// Pause after each round, before the next attacker starts.
const SETTLE: Duration = Duration::from_secs(1);

/// Time between one probe's answer and the next probe.
const PROBE_EVERY: Duration = Duration::from_millis(5);

/// Probes sent under one verdict: below the restricted tier's burst of the probe topic
/// (half of [`PROBE_BURST`]), so that a probe is never refused for its rate. A new
/// verdict (announced by a notice) starts with a full bucket.
const PROBES_PER_VERDICT: u32 = 28;

/// The probe topic's burst in the profile (its rate is one a minute).
const PROBE_BURST: u32 = 60;

/// Scan SUBSCRIBEs in flight at once.
const SCAN_WINDOW: usize = 16;

/// Flood batches per second (the rate is spread over them).
const FLOOD_BATCHES_PER_SEC: u32 = 500;

/// Longest wait for an attacker's task to report, beyond [`ATTACK_FOR`].
const REPORT_WAIT: Duration = Duration::from_secs(20);

/// A normal telemetry message: a reading within the profile's range.
const TELEMETRY: &[u8] = br#"{"temp":21.5}"#;

/// The counters read from `/metrics`, by family (as registered, without `_total`).
const OBSERVATIONS: &str = "gatehouse_detect_observations";
const FINDINGS: &str = "gatehouse_detect_findings";
const FINDINGS_DROPPED: &str = "gatehouse_detect_findings_dropped";
const ACTIONS: &str = "gatehouse_respond_actions";
/// The tap's drop counter: its documented name first, then the broker's.
const TAP_DROPPED: [&str; 2] = ["gatehouse_tap_dropped", "gatehouse_observations_dropped"];

/// What the scenario does, with its parameters, for the report.
pub fn describe(args: &BenchArgs) -> String {
    format!(
        "{} devices enroll over EST (one token, {} at a time; their model's profile: telemetry \
         1/s burst 5, events 1/min burst {PROBE_BURST}), connect over MQTTS, subscribe to their \
         command and configuration topics and publish telemetry every {:?}; {} devices, one \
         at a time, attack on their open session (even rounds: a QoS 0 flood of {} msg/s on \
         their telemetry topic; odd rounds: SUBSCRIBEs to other devices' topics, {SCAN_WINDOW} \
         in flight) with QoS 1 probes on their events topic every {PROBE_EVERY:?}; ms = first \
         malicious packet to the first enforcement seen on that session (probe refused 0x87, \
         subscriptions-removed notice, or the session ended). Gatehouse with detection and \
         the default playbooks only: the goal is absolute (p99 < 250 ms with 10,000 devices)",
        args.detect_devices,
        args.concurrency,
        args.detect_interval,
        args.detect_rounds,
        args.detect_flood_rate,
    )
}

/// The model profile the devices enroll under: telemetry at one message a second (a burst
/// of five), events at one a minute with a burst that holds a round's probes, a command
/// topic and a configuration topic.
pub fn profile_toml() -> String {
    format!(
        r#"# Written by gatehouse bench.
manufacturer = "{MANUFACTURER}"
model = "{MODEL}"

[firmware]
current = "1.0.0"
supported = ["1.0.0"]

[[topics]]
pattern = "bench/{{device}}/telemetry"
direction = "publish"
kind = "telemetry"
rate = "1/s"
burst = 5
payload = "json"

[[topics.fields]]
name = "temp"
min = -40.0
max = 85.0

[[topics]]
pattern = "bench/{{device}}/events"
direction = "publish"
kind = "telemetry"
rate = "1/min"
burst = {PROBE_BURST}
payload = "json"

[[topics]]
pattern = "bench/{{device}}/config"
direction = "subscribe"
kind = "telemetry"

[[topics]]
pattern = "bench/{{device}}/cmd"
direction = "subscribe"
kind = "command"
"#
    )
}

/// The device's telemetry topic (normal traffic, and the flood).
pub fn telemetry_topic(device: &str) -> String {
    format!("bench/{device}/telemetry")
}

/// The device's events topic (the probes).
pub fn events_topic(device: &str) -> String {
    format!("bench/{device}/events")
}

/// The device's configuration topic: kept by the restricted tier, removed by quarantine.
pub fn config_topic(device: &str) -> String {
    format!("bench/{device}/config")
}

/// The device's command topic: removed by the restricted tier and by quarantine.
pub fn cmd_topic(device: &str) -> String {
    format!("bench/{device}/cmd")
}

/// How an attacker misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// QoS 0 publishes to its own telemetry topic, far above the profile's rate.
    Flood,
    /// SUBSCRIBEs to other devices' topics.
    Scan,
}

impl Mode {
    /// The variant name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flood => "flood",
            Self::Scan => "scan",
        }
    }
}

/// The attack of round `round`: floods and scans alternate, a flood first.
pub fn mode(round: usize) -> Mode {
    if round.is_multiple_of(2) {
        Mode::Flood
    } else {
        Mode::Scan
    }
}

/// The attacker of round `round` of `rounds` among `n` devices: spread over the fleet, all
/// different (`rounds <= n`).
pub fn attacker(round: usize, rounds: usize, n: usize) -> usize {
    debug_assert!(rounds >= 1 && rounds <= n && round < rounds);
    ((2 * round + 1) * n / (2 * rounds)).min(n - 1)
}

/// The `k`-th foreign filter an attacker `me` of `n` devices (at least two) subscribes to:
/// other devices' command and telemetry topics in turn, never its own.
pub fn scan_filter(me: usize, k: usize, n: usize) -> String {
    let others = n.saturating_sub(1).max(1);
    let other = device_name((me + 1 + (k / 2) % others) % n);
    if k.is_multiple_of(2) {
        cmd_topic(&other)
    } else {
        telemetry_topic(&other)
    }
}

/// The filters named by a subscriptions-removed notice, if the payload is one.
pub fn removed_filters(payload: &[u8]) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    if v["event"] != "subscriptions_removed" {
        return None;
    }
    Some(
        v["filters"]
            .as_array()?
            .iter()
            .filter_map(|f| f.as_str().map(str::to_owned))
            .collect(),
    )
}

/// Runs the detect scenario against Gatehouse; returns its rows: `flood`, `scan` and
/// `all`.
pub async fn run(ctx: &Ctx, broker: &mut Broker) -> anyhow::Result<Vec<Row>> {
    let args = &ctx.args;
    let n = args.detect_devices as usize;
    let concurrency = (args.concurrency as usize).max(1);
    let server = Server::new(ctx, broker)?;
    let mut setup = Vec::new();

    let auth = server
        .create_registry(n)
        .await
        .context("creating the manufacturer, model and enrollment token over the REST API")?;
    upload_profile(&server)
        .await
        .context("uploading the model profile")?;
    let issuing = server.issuing_chain().await?;
    let (enrolled, csrs) =
        enroll_fleet(ctx, broker, &server, &auth, n, concurrency, &mut setup).await?;
    let certs = enrolled.certs;
    ensure!(
        certs.len() >= 2,
        "only {} devices enrolled (an attacker and a bystander are needed); errors: {}",
        certs.len(),
        error_summary(&enrolled.errors)
    );

    let mut devices = Vec::with_capacity(certs.len());
    for (i, cert) in &certs {
        let tls = server.device_tls(cert, &issuing, &csrs[*i].key_pkcs8, false)?;
        let mut opts = server.mqtt_options(ctx, *i, tls);
        opts.keep_alive = KEEP_ALIVE;
        devices.push((*i, opts));
    }
    drop(csrs);
    drop(certs);
    let rss_before = broker.rss().ok();
    let connecting = Instant::now();
    let (mut fleet, connect_failures) =
        Fleet::connect(devices, concurrency, args.detect_interval, n).await;
    let connect_secs = connecting.elapsed().as_secs_f64();
    broker.check_alive()?;
    let sessions = fleet.len();
    let rss_sessions = broker.rss().ok();
    setup.push(format!(
        "setup: {sessions} enrolled devices connected over MQTTS (mutual TLS, MQTT {}) and \
         subscribed to bench/<device>/cmd and bench/<device>/config in {connect_secs:.1} s{}; \
         broker resident set {} before the sessions, {} with them",
        if ctx.version == gatehouse_mqtt::ProtocolVersion::V5 {
            "5.0"
        } else {
            "3.1.1"
        },
        connect_failures
            .as_ref()
            .map(|(count, first)| format!("; {count} failed (first: {first})"))
            .unwrap_or_default(),
        fmt_mib(rss_before),
        fmt_mib(rss_sessions),
    ));
    ensure!(
        sessions >= 2,
        "only {sessions} sessions connected; first failure: {}",
        connect_failures.map_or("none".to_owned(), |(_, first)| first)
    );

    let result = rounds(ctx, &server, broker, &mut fleet, setup).await;
    fleet.close().await;
    result
}

/// Posts the profile of [`profile_toml`] for the bench's model.
async fn upload_profile(server: &Server) -> anyhow::Result<()> {
    let mut conn = HttpsConnection::connect(&server.api_target()).await?;
    let path = format!("/api/v1/models/{MODEL}/profiles");
    let response = conn
        .post(&path, "application/toml", None, profile_toml().into_bytes())
        .await?;
    ensure!(
        response.status == 201,
        "POST {path}: {} {}",
        response.status,
        String::from_utf8_lossy(&response.body).trim()
    );
    Ok(())
}

/// What one round measured.
#[derive(Debug, Clone)]
struct Round {
    mode: Mode,
    device: String,
    seen: Seen,
    tier: Option<String>,
    pinned: bool,
    kinds: Vec<String>,
}

/// The counters of `/metrics` the scenario reports, at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct DetectCounters {
    observations: Option<f64>,
    tap_dropped: Option<f64>,
    findings: Option<f64>,
    findings_dropped: Option<f64>,
    quarantines: Option<f64>,
}

/// Runs every round with the fleet publishing; returns the rows.
async fn rounds(
    ctx: &Ctx,
    server: &Server,
    broker: &mut Broker,
    fleet: &mut Fleet,
    setup: Vec<String>,
) -> anyhow::Result<Vec<Row>> {
    let args = &ctx.args;
    let n = fleet.len();
    let rounds = (args.detect_rounds as usize).min(n);
    tokio::time::sleep(WARMUP).await;
    broker.check_alive()?;

    let before = detect_counters(server).await?;
    let telemetry_before = fleet.counters.telemetry.load(Ordering::Acquire);
    let bystander_notices_before = fleet.counters.notices.load(Ordering::Acquire);
    let started = Instant::now();
    let mut done = Vec::with_capacity(rounds);
    let mut notes = setup;
    for round in 0..rounds {
        let slot = attacker(round, rounds, n);
        let mode = mode(round);
        let device = fleet.sessions[slot].device.clone();
        let seen = fleet
            .attack(slot, mode, args.detect_flood_rate)
            .await
            .with_context(|| format!("round {round}: {device}'s {} attack", mode.name()))?;
        tokio::time::sleep(SETTLE).await;
        broker.check_alive()?;
        let (tier, pinned) = trust_of(server, &device).await.unwrap_or((None, false));
        let kinds = incident_kinds(server, &device).await.unwrap_or_default();
        let round = Round {
            mode,
            device,
            seen,
            tier,
            pinned,
            kinds,
        };
        notes.push(round_note(done.len(), &round));
        done.push(round);
    }
    let elapsed = started.elapsed();
    let after = detect_counters(server).await?;
    let telemetry = fleet.counters.telemetry.load(Ordering::Acquire) - telemetry_before;
    let bystander_notices =
        fleet.counters.notices.load(Ordering::Acquire) - bystander_notices_before;
    let rss = broker.rss().ok();

    let delta = |f: fn(&DetectCounters) -> Option<f64>| match (f(&before), f(&after)) {
        (Some(b), Some(a)) => Some(a - b),
        (None, Some(a)) => Some(a),
        _ => None,
    };
    let globals = Globals {
        devices: n,
        telemetry_rate: telemetry as f64 / elapsed.as_secs_f64().max(1e-9),
        bystander_notices,
        observations: delta(|c| c.observations),
        tap_dropped: after.tap_dropped,
        findings: delta(|c| c.findings),
        rss,
    };
    let mut rows = Vec::new();
    for mode in [Mode::Flood, Mode::Scan] {
        let of: Vec<&Round> = done.iter().filter(|r| r.mode == mode).collect();
        if !of.is_empty() {
            rows.push(row(broker, mode.name(), &of, None, Vec::new()));
        }
    }
    let all: Vec<&Round> = done.iter().collect();
    notes.push(format!(
        "ms = from the first malicious packet handed to the socket to the first enforcement \
         the attacker saw on its own session (a QoS 1 probe on bench/<device>/events answered \
         0x87, the gate's subscriptions-removed notice, or the session ended), over the \
         enforced rounds; blocked = rounds where the session was then blocked outright (a \
         probe refused, the configuration subscription removed too, which only quarantine \
         does, or the session ended) within {ATTACK_FOR:?}; probes every {PROBE_EVERY:?} \
         after the previous answer, at most {PROBES_PER_VERDICT} per verdict (each verdict's \
         bucket holds {} of them, the restricted tier's half burst), so a refusal is the \
         verdict's, not the rate's",
        PROBE_BURST / 2
    ));
    notes.push(format!(
        "during the {} rounds ({:.1} s): {:.0} telemetry msg/s from the fleet; /metrics: {} \
         observations processed, {} findings ({} dropped), {} quarantines done; tap drops {} \
         since start; {bystander_notices} removal notices reached devices that were not \
         attacking",
        done.len(),
        elapsed.as_secs_f64(),
        globals.telemetry_rate,
        fmt_count(globals.observations),
        fmt_count(globals.findings),
        fmt_count(delta(|c| c.findings_dropped)),
        fmt_count(delta(|c| c.quarantines)),
        fmt_count(after.tap_dropped),
    ));
    fleet_notes(fleet, &mut notes);
    rows.push(row(broker, "all", &all, Some(&globals), notes));
    Ok(rows)
}

/// Figures of the whole run, on the `all` row.
struct Globals {
    devices: usize,
    telemetry_rate: f64,
    bystander_notices: u64,
    observations: Option<f64>,
    tap_dropped: Option<f64>,
    findings: Option<f64>,
    rss: Option<u64>,
}

fn row(
    broker: &Broker,
    variant: &str,
    rounds: &[&Round],
    globals: Option<&Globals>,
    notes: Vec<String>,
) -> Row {
    let mut first = Samples::default();
    let mut blocked = Samples::default();
    for r in rounds {
        if let Some((at, _)) = r.seen.first() {
            first.push(at);
        }
        if let Some(at) = r.seen.blocked() {
            blocked.push(at);
        }
    }
    let first = first.sorted();
    let blocked = blocked.sorted();
    Row {
        broker: broker.kind(),
        variant: variant.to_owned(),
        figures: vec![
            Figure::info("rounds", rounds.len() as f64, 0),
            Figure::higher("enforced", first.len() as f64, 0),
            Figure::lower("p50 ms", ms(percentile(&first, 0.50)), 2),
            Figure::lower("p99 ms", ms(percentile(&first, 0.99)), 2),
            Figure::lower("max ms", ms(percentile(&first, 1.0)), 2),
            Figure::info("blocked", blocked.len() as f64, 0),
            Figure::info("blocked p50 ms", ms(percentile(&blocked, 0.50)), 2),
            Figure::info("blocked max ms", ms(percentile(&blocked, 1.0)), 2),
            Figure::info("devices", globals.map(|g| g.devices as f64), 0),
            Figure::info("telemetry msg/s", globals.map(|g| g.telemetry_rate), 0),
            Figure::lower(
                "bystanders told",
                globals.map(|g| g.bystander_notices as f64),
                0,
            ),
            Figure::info("observations", globals.and_then(|g| g.observations), 0),
            Figure::lower("tap dropped", globals.and_then(|g| g.tap_dropped), 0),
            Figure::info("findings", globals.and_then(|g| g.findings), 0),
            Figure::info(
                "broker RSS MiB",
                globals
                    .and_then(|g| g.rss)
                    .or_else(|| broker.rss().ok())
                    .map(mib),
                1,
            ),
        ],
        notes,
    }
}

fn round_note(round: usize, r: &Round) -> String {
    let s = &r.seen;
    let at = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.2} ms", ms_of(d)));
    let first = match s.first() {
        Some((d, what)) => format!("first enforcement {what} at {:.2} ms", ms_of(d)),
        None => format!("NOT ENFORCED within {ATTACK_FOR:?}"),
    };
    let notices = s
        .notices
        .iter()
        .map(|(d, filters)| format!("{:.2} ms [{}]", ms_of(*d), filters.join(", ")))
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "round {round} ({}, {}): {first}; blocked at {}; probe refused (0x87, not authorized) at {}; notices: \
         {}; session ended: {}; sent {} malicious packets{} and {} probes ({} accepted, {} \
         refused, {} other); verdict after: {}{}; incidents: {}",
        r.mode.name(),
        r.device,
        at(s.blocked()),
        at(s.probe_refused),
        if notices.is_empty() {
            "none".to_owned()
        } else {
            notices
        },
        s.ended.as_ref().map_or("no".to_owned(), |(d, how)| format!(
            "{how} at {:.2} ms",
            ms_of(*d)
        )),
        s.sent,
        if r.mode == Mode::Scan {
            format!(
                " ({} refused in SUBACK, {} granted)",
                s.scan_refused, s.scan_granted
            )
        } else {
            String::new()
        },
        s.probes,
        s.probes_ok,
        s.probes_refused,
        s.probes_other,
        r.tier.as_deref().unwrap_or("?"),
        if r.pinned { ", pinned" } else { "" },
        if r.kinds.is_empty() {
            "none".to_owned()
        } else {
            r.kinds.join(", ")
        },
    )
}

fn ms_of(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

fn fmt_mib(bytes: Option<u64>) -> String {
    bytes.map_or("?".to_owned(), |b| format!("{:.1} MiB", mib(b)))
}

fn fmt_count(v: Option<f64>) -> String {
    v.map_or("?".to_owned(), |v| format!("{v:.0}"))
}

/// Reads `/metrics`.
async fn metrics_text(server: &Server) -> anyhow::Result<String> {
    let mut conn = HttpsConnection::connect(&server.plain_target()).await?;
    let response = conn.get("/metrics").await?;
    ensure!(response.status == 200, "GET /metrics: {}", response.status);
    Ok(String::from_utf8_lossy(&response.body).into_owned())
}

async fn detect_counters(server: &Server) -> anyhow::Result<DetectCounters> {
    let text = metrics_text(server).await?;
    Ok(DetectCounters {
        observations: counter_value(&text, OBSERVATIONS, &[]),
        tap_dropped: TAP_DROPPED
            .iter()
            .find_map(|family| counter_value(&text, family, &[])),
        findings: counter_value(&text, FINDINGS, &[]),
        findings_dropped: counter_value(&text, FINDINGS_DROPPED, &[]),
        quarantines: counter_value(
            &text,
            ACTIONS,
            &[("action", "quarantine"), ("outcome", "done")],
        ),
    })
}

/// The device's tier in force and whether it is pinned, from the trust API.
async fn trust_of(server: &Server, device: &str) -> anyhow::Result<(Option<String>, bool)> {
    let mut conn = HttpsConnection::connect(&server.api_target()).await?;
    let response = conn
        .get(&format!("/api/v1/devices/{TENANT}/{device}/trust"))
        .await?;
    ensure!(response.status == 200, "trust: {}", response.status);
    let v: serde_json::Value = serde_json::from_slice(&response.body)?;
    let tier = v["verdict"]["tier"]
        .as_str()
        .or_else(|| v["assessment"]["tier"].as_str())
        .map(str::to_owned);
    let pinned = v["assessment"]["pin"].is_object();
    Ok((tier, pinned))
}

/// The kinds of the incidents recorded about the device.
async fn incident_kinds(server: &Server, device: &str) -> anyhow::Result<Vec<String>> {
    let mut conn = HttpsConnection::connect(&server.api_target()).await?;
    let response = conn
        .get(&format!("/api/v1/incidents?device={TENANT}/{device}"))
        .await?;
    ensure!(response.status == 200, "incidents: {}", response.status);
    let v: serde_json::Value = serde_json::from_slice(&response.body)?;
    let mut kinds: Vec<String> = v["incidents"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| {
                    let kind = i["kind"].as_str()?;
                    Some(match i["max_severity"].as_str() {
                        Some(sev) => format!("{kind} ({sev})"),
                        None => kind.to_owned(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    kinds.sort();
    kinds.dedup();
    Ok(kinds)
}

fn fleet_notes(fleet: &Fleet, notes: &mut Vec<String>) {
    let dropped = fleet.counters.dropped.load(Ordering::Acquire);
    if dropped > 0 {
        notes.push(format!(
            "{dropped} sessions of devices that were not attacking ended during the rounds \
             (first: {})",
            fleet
                .first_drop
                .lock()
                .ok()
                .and_then(|s| s.clone())
                .unwrap_or_default()
        ));
    }
}

/// What the attacker saw, each time from its first malicious packet.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Malicious packets sent (publishes or SUBSCRIBEs).
    pub sent: u64,
    /// Probes sent, and their answers.
    pub probes: u64,
    /// Probes answered 0x00.
    pub probes_ok: u64,
    /// Probes answered 0x87.
    pub probes_refused: u64,
    /// Probes answered with another code.
    pub probes_other: u64,
    /// Scan filters refused in their SUBACK (the gate's usual answer, not enforcement).
    pub scan_refused: u64,
    /// Scan filters granted.
    pub scan_granted: u64,
    /// The first probe answered 0x87.
    pub probe_refused: Option<Duration>,
    /// Subscriptions-removed notices, with the filters each named.
    pub notices: Vec<(Duration, Vec<String>)>,
    /// The notice that removed the configuration subscription (quarantine or worse).
    pub config_removed: Option<Duration>,
    /// The session ended: how, and when.
    pub ended: Option<(Duration, String)>,
}

impl Seen {
    /// The first enforcement seen, and what it was.
    pub fn first(&self) -> Option<(Duration, &'static str)> {
        let notice = self.notices.first().map(|(d, _)| (*d, "notice"));
        let probe = self
            .probe_refused
            .map(|d| (d, "probe refused: 0x87 (not authorized)"));
        let ended = self.ended.as_ref().map(|(d, _)| (*d, "session ended"));
        [notice, probe, ended]
            .into_iter()
            .flatten()
            .min_by_key(|(d, _)| *d)
    }

    /// When the session was blocked outright: a probe refused, the configuration
    /// subscription removed, or the session ended.
    pub fn blocked(&self) -> Option<Duration> {
        [
            self.probe_refused,
            self.config_removed,
            self.ended.as_ref().map(|(d, _)| *d),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// Counters every session task adds to.
#[derive(Debug, Default)]
struct Counters {
    /// Normal telemetry messages published.
    telemetry: AtomicU64,
    /// Removal notices received by devices that were not attacking.
    notices: AtomicU64,
    /// Sessions of devices that were not attacking that ended.
    dropped: AtomicU64,
}

/// An attack order for one session's task.
struct Attack {
    mode: Mode,
    flood_rate: u32,
    done: oneshot::Sender<Result<Seen, String>>,
}

/// One device's session, held by a task of its own.
struct Session {
    device: String,
    attacks: mpsc::Sender<Attack>,
}

/// Every device's session.
struct Fleet {
    sessions: Vec<Session>,
    counters: Arc<Counters>,
    first_drop: Arc<std::sync::Mutex<Option<String>>>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Fleet {
    /// Connects every device and subscribes it to its command and configuration topics,
    /// `concurrency` at a time, then starts its task; sessions that failed are left out
    /// (their count and the first error come back).
    async fn connect(
        devices: Vec<(usize, ConnectOptions)>,
        concurrency: usize,
        interval: Duration,
        n: usize,
    ) -> (Self, Option<(usize, String)>) {
        let permits = Arc::new(Semaphore::new(concurrency));
        let mut connecting = JoinSet::new();
        for (index, opts) in devices {
            let permits = permits.clone();
            connecting.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let result = async {
                    let (mut client, _) = Client::connect(&opts).await?;
                    client
                        .subscribe(&cmd_topic(&opts.client_id), QoS::AtMostOnce)
                        .await?;
                    client
                        .subscribe(&config_topic(&opts.client_id), QoS::AtMostOnce)
                        .await?;
                    Ok::<_, ClientError>(client)
                }
                .await;
                (index, opts.client_id, result)
            });
        }
        let mut connected = Vec::new();
        let mut failed = 0;
        let mut first_error = None;
        while let Some(joined) = connecting.join_next().await {
            match joined {
                Ok((index, device, Ok(client))) => connected.push((index, device, client)),
                Ok((_, device, Err(e))) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| format!("{device}: {e}"));
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| format!("connect task: {e}"));
                }
            }
        }
        connected.sort_by_key(|(index, ..)| *index);

        let counters = Arc::new(Counters::default());
        let first_drop = Arc::new(std::sync::Mutex::new(None));
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut sessions = Vec::with_capacity(connected.len());
        let count = connected.len().max(1);
        for (slot, (index, device, client)) in connected.into_iter().enumerate() {
            let (attacks, attack_rx) = mpsc::channel(1);
            // Spread the fleet's telemetry evenly over one interval.
            let phase = interval.mul_f64(slot as f64 / count as f64);
            tasks.spawn(
                DeviceTask {
                    client,
                    index,
                    n,
                    device: device.clone(),
                    interval,
                    phase,
                    attacks: attack_rx,
                    counters: counters.clone(),
                    first_drop: first_drop.clone(),
                    stop: stop_rx.clone(),
                }
                .run(),
            );
            sessions.push(Session { device, attacks });
        }
        let fleet = Self {
            sessions,
            counters,
            first_drop,
            stop,
            tasks,
        };
        let failures = (failed > 0).then(|| (failed, first_error.unwrap_or_default()));
        (fleet, failures)
    }

    fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Orders session `slot` to attack and waits for what it saw.
    async fn attack(&self, slot: usize, mode: Mode, flood_rate: u32) -> anyhow::Result<Seen> {
        let session = &self.sessions[slot];
        let (done, answer) = oneshot::channel();
        session
            .attacks
            .send(Attack {
                mode,
                flood_rate,
                done,
            })
            .await
            .map_err(|_| anyhow::anyhow!("{}'s session ended before the attack", session.device))?;
        match tokio::time::timeout(ATTACK_FOR + REPORT_WAIT, answer).await {
            Ok(Ok(Ok(seen))) => Ok(seen),
            Ok(Ok(Err(e))) => anyhow::bail!("{e}"),
            Ok(Err(_)) => anyhow::bail!("{}'s task ended without a report", session.device),
            Err(_) => anyhow::bail!(
                "{}: no report within {:?}",
                session.device,
                ATTACK_FOR + REPORT_WAIT
            ),
        }
    }

    /// Disconnects every session.
    async fn close(mut self) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, self.tasks.join_next()).await {}
        self.tasks.abort_all();
    }
}

/// One device: publishes telemetry, answers the server, keeps the session alive, and
/// attacks when told to.
struct DeviceTask {
    client: Client,
    index: usize,
    n: usize,
    device: String,
    interval: Duration,
    phase: Duration,
    attacks: mpsc::Receiver<Attack>,
    counters: Arc<Counters>,
    first_drop: Arc<std::sync::Mutex<Option<String>>>,
    stop: watch::Receiver<bool>,
}

/// How a device's task ended.
enum End {
    /// Told to stop.
    Stopped,
    /// It attacked, and its session ended during or after the attack.
    Attacked,
}

impl DeviceTask {
    async fn run(mut self) {
        match self.serve().await {
            Ok(End::Stopped) => self.client.disconnect().await,
            Ok(End::Attacked) => {}
            Err(e) => {
                self.counters.dropped.fetch_add(1, Ordering::AcqRel);
                if let Ok(mut first) = self.first_drop.lock() {
                    first.get_or_insert_with(|| format!("{}: {e}", self.device));
                }
            }
        }
    }

    async fn serve(&mut self) -> Result<End, ClientError> {
        let keep_alive = self.client.server_limits().keep_alive.unwrap_or(KEEP_ALIVE);
        let ping_every = Duration::from_secs(u64::from(keep_alive.max(1))) * 3 / 4;
        let mut next_ping = tokio::time::Instant::now() + ping_every;
        let mut next_telemetry = tokio::time::Instant::now() + self.phase;
        let telemetry = telemetry_topic(&self.device);
        let notice = format!("$gatehouse/{}/notice", self.device);
        let mut attacked = false;
        loop {
            tokio::select! {
                biased;
                changed = self.stop.changed() => {
                    if changed.is_err() || *self.stop.borrow() {
                        return Ok(End::Stopped);
                    }
                }
                order = self.attacks.recv() => {
                    let Some(order) = order else { return Ok(End::Stopped) };
                    attacked = true;
                    let seen = self.attack(order.mode, order.flood_rate).await;
                    let ended = seen.ended.is_some();
                    let _ = order.done.send(Ok(seen));
                    if ended {
                        return Ok(End::Attacked);
                    }
                }
                packet = self.client.recv() => match packet {
                    Ok(Packet::Publish(p)) => {
                        if p.qos != QoS::AtMostOnce {
                            self.client.queue_puback(p.packet_id)?;
                            self.client.flush().await?;
                        }
                        if !attacked && p.topic == notice {
                            self.counters.notices.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                    Ok(Packet::Disconnect(_)) if attacked => return Ok(End::Attacked),
                    Ok(Packet::Disconnect(d)) => return Err(ClientError::Refused(d.reason)),
                    Ok(_) => {}
                    Err(_) if attacked => return Ok(End::Attacked),
                    Err(e) => return Err(e),
                },
                () = tokio::time::sleep_until(next_telemetry), if !attacked => {
                    self.client.queue(&Packet::Publish(Publish {
                        dup: false,
                        qos: QoS::AtMostOnce,
                        retain: false,
                        topic: telemetry.clone(),
                        packet_id: 0,
                        payload: Bytes::from_static(TELEMETRY),
                        properties: Properties::default(),
                    }))?;
                    self.client.flush().await?;
                    self.counters.telemetry.fetch_add(1, Ordering::Relaxed);
                    next_telemetry += self.interval;
                }
                () = tokio::time::sleep_until(next_ping) => {
                    self.client.ping().await?;
                    next_ping += ping_every;
                }
            }
        }
    }

    /// Attacks on this session until it is blocked outright, it ends, or [`ATTACK_FOR`]
    /// passes; returns what was seen.
    async fn attack(&mut self, mode: Mode, flood_rate: u32) -> Seen {
        let mut seen = Seen::default();
        let telemetry = telemetry_topic(&self.device);
        let events = events_topic(&self.device);
        let notice = format!("$gatehouse/{}/notice", self.device);
        let config = config_topic(&self.device);
        let batch = (flood_rate / FLOOD_BATCHES_PER_SEC).max(1);
        let batch_every = Duration::from_secs_f64(f64::from(batch) / f64::from(flood_rate));

        // The first malicious packet: the clock starts as it is handed to the socket.
        let start = Instant::now();
        let first = match mode {
            Mode::Flood => self.queue_flood(&telemetry, batch),
            Mode::Scan => self
                .client
                .queue_subscribe(&scan_filter(self.index, 0, self.n), QoS::AtMostOnce)
                .map(|_| ()),
        };
        let mut scan_next = 1usize;
        let mut scan_in_flight = usize::from(mode == Mode::Scan);
        let flushed = match first {
            Ok(()) => self.client.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = flushed {
            seen.ended = Some((start.elapsed(), format!("write failed: {e}")));
            return seen;
        }
        seen.sent = if mode == Mode::Flood {
            u64::from(batch)
        } else {
            1
        };

        let t0 = tokio::time::Instant::from_std(start);
        let deadline = t0 + ATTACK_FOR;
        let mut next_batch = t0 + batch_every;
        let mut next_probe = tokio::time::Instant::now();
        let mut probe: Option<u16> = None;
        let mut probes_left = PROBES_PER_VERDICT;
        loop {
            if seen.blocked().is_some() {
                break;
            }
            let step: Result<(), ClientError> = tokio::select! {
                biased;
                packet = self.client.recv() => match packet {
                    Ok(Packet::Publish(p)) => {
                        let at = start.elapsed();
                        if p.topic == notice
                            && let Some(filters) = removed_filters(&p.payload)
                        {
                            if filters.contains(&config) {
                                seen.config_removed.get_or_insert(at);
                            }
                            seen.notices.push((at, filters));
                            // A new verdict: its buckets start full.
                            probes_left = PROBES_PER_VERDICT;
                        }
                        if p.qos != QoS::AtMostOnce {
                            self.client.queue_puback(p.packet_id)
                        } else {
                            Ok(())
                        }
                    }
                    Ok(Packet::PubAck(ack)) => {
                        if probe == Some(ack.packet_id) {
                            probe = None;
                            next_probe = tokio::time::Instant::now() + PROBE_EVERY;
                            match ack.reason.0 {
                                0x00 => seen.probes_ok += 1,
                                0x87 => {
                                    seen.probes_refused += 1;
                                    seen.probe_refused.get_or_insert(start.elapsed());
                                }
                                _ => seen.probes_other += 1,
                            }
                        }
                        Ok(())
                    }
                    Ok(Packet::SubAck(ack)) => {
                        scan_in_flight = scan_in_flight.saturating_sub(1);
                        for reason in &ack.reasons {
                            if reason.is_error() {
                                seen.scan_refused += 1;
                            } else {
                                seen.scan_granted += 1;
                            }
                        }
                        Ok(())
                    }
                    Ok(Packet::Disconnect(d)) => {
                        seen.ended = Some((start.elapsed(), format!("DISCONNECT {}", d.reason.explained())));
                        Ok(())
                    }
                    Ok(_) => Ok(()),
                    Err(e) => {
                        seen.ended = Some((start.elapsed(), format!("connection ended: {e}")));
                        Ok(())
                    }
                },
                () = tokio::time::sleep_until(next_probe), if probe.is_none() && probes_left > 0 => {
                    let packet_id = self.client.next_packet_id();
                    probes_left -= 1;
                    seen.probes += 1;
                    probe = Some(packet_id);
                    self.client.queue(&Packet::Publish(Publish {
                        dup: false,
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        topic: events.clone(),
                        packet_id,
                        payload: Bytes::from(format!("{{\"probe\":{}}}", seen.probes)),
                        properties: Properties::default(),
                    }))
                }
                () = tokio::time::sleep_until(next_batch), if mode == Mode::Flood => {
                    // Catch up at most one batch: a late flood does not burst.
                    let now = tokio::time::Instant::now();
                    next_batch = (next_batch + batch_every).max(now);
                    seen.sent += u64::from(batch);
                    self.queue_flood(&telemetry, batch)
                }
                () = std::future::ready(()), if mode == Mode::Scan && scan_in_flight < SCAN_WINDOW => {
                    let filter = scan_filter(self.index, scan_next, self.n);
                    scan_next += 1;
                    scan_in_flight += 1;
                    seen.sent += 1;
                    self.client.queue_subscribe(&filter, QoS::AtMostOnce).map(|_| ())
                }
                () = tokio::time::sleep_until(deadline) => break,
            };
            if seen.ended.is_some() {
                break;
            }
            let sent = match step {
                Ok(()) if self.client.queued_bytes() > 0 => self.client.flush().await,
                other => other,
            };
            if let Err(e) = sent {
                seen.ended = Some((start.elapsed(), format!("write failed: {e}")));
                break;
            }
        }
        seen
    }

    fn queue_flood(&mut self, topic: &str, batch: u32) -> Result<(), ClientError> {
        for _ in 0..batch {
            self.client.queue(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: topic.to_owned(),
                packet_id: 0,
                payload: Bytes::from_static(TELEMETRY),
                properties: Properties::default(),
            }))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn attackers_are_all_different_and_spread_over_the_fleet() {
        for (rounds, n) in [(20, 10_000), (2, 2), (2, 8), (7, 7), (5, 50), (1, 3)] {
            let picked: Vec<usize> = (0..rounds).map(|r| attacker(r, rounds, n)).collect();
            let distinct: HashSet<usize> = picked.iter().copied().collect();
            assert_eq!(
                distinct.len(),
                rounds,
                "{rounds} rounds over {n}: {picked:?}"
            );
            assert!(picked.iter().all(|&a| a < n), "{picked:?}");
        }
        assert_eq!(attacker(0, 20, 10_000), 250);
        assert_eq!(attacker(19, 20, 10_000), 9_750);
    }

    #[test]
    fn floods_and_scans_alternate() {
        assert_eq!(mode(0), Mode::Flood);
        assert_eq!(mode(1), Mode::Scan);
        assert_eq!(mode(18), Mode::Flood);
    }

    #[test]
    fn scans_target_other_devices_topics() {
        let filters: Vec<String> = (0..6).map(|k| scan_filter(3, k, 5)).collect();
        assert_eq!(
            filters,
            vec![
                "bench/bench-000004/cmd",
                "bench/bench-000004/telemetry",
                "bench/bench-000000/cmd",
                "bench/bench-000000/telemetry",
                "bench/bench-000001/cmd",
                "bench/bench-000001/telemetry",
            ]
        );
        for (me, n) in [(7, 100), (1, 2), (4, 5)] {
            for k in 0..1_000 {
                let own = device_name(me);
                assert!(!scan_filter(me, k, n).contains(&own), "{me} {k} {n}");
            }
        }
    }

    #[test]
    fn notices_are_read_for_their_filters() {
        assert_eq!(
            removed_filters(
                br#"{"event":"subscriptions_removed","filters":["bench/a/cmd","bench/a/config"]}"#
            ),
            Some(vec!["bench/a/cmd".to_owned(), "bench/a/config".to_owned()])
        );
        assert_eq!(removed_filters(br#"{"event":"other","filters":[]}"#), None);
        assert_eq!(removed_filters(b"not json"), None);
    }

    #[test]
    fn the_first_enforcement_and_the_block_are_told_apart() {
        let mut seen = Seen::default();
        assert_eq!(seen.first(), None);
        assert_eq!(seen.blocked(), None);
        seen.notices
            .push((Duration::from_millis(12), vec!["bench/a/cmd".to_owned()]));
        assert_eq!(seen.first(), Some((Duration::from_millis(12), "notice")));
        assert_eq!(
            seen.blocked(),
            None,
            "the restricted tier keeps the session open"
        );
        seen.probe_refused = Some(Duration::from_millis(30));
        seen.config_removed = Some(Duration::from_millis(31));
        assert_eq!(seen.blocked(), Some(Duration::from_millis(30)));
        assert_eq!(seen.first(), Some((Duration::from_millis(12), "notice")));
    }

    #[test]
    fn the_profile_states_the_rates_the_probes_rely_on() {
        let text = profile_toml();
        assert!(text.contains("rate = \"1/s\""));
        assert!(text.contains(&format!("burst = {PROBE_BURST}")));
        assert!(text.contains("pattern = \"bench/{device}/events\""));
        assert!(text.contains(&format!("manufacturer = \"{MANUFACTURER}\"")));
        const { assert!(PROBES_PER_VERDICT < PROBE_BURST / 2) };
    }
}
