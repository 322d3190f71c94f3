//! The fleet simulator (`gatehouse sim`, and the fleet behind `gatehouse demo`): a fleet of
//! virtual devices of five models, each a real MQTT 5 client over mutual TLS that enrolled
//! over EST — with an IDevID from a simulated manufacturer's CA, or an enrollment token —
//! reports its signed posture, publishes telemetry at its model's cadence and answers the
//! operations console's commands. A share of the fleet is compromised and, after a warm-up,
//! attacks (see [`Scenario`]). The run ends with a [`FleetReport`]: for each attack whether
//! the server detected it, what it did and how fast the attacker felt it; whether any
//! benign device was hit; and the fleet's load figures.
//!
//! The simulator knows nothing of the server's internals: it registers what a fleet
//! operator would (a manufacturer and its CA, the models with their profiles, claims for
//! the serials, tokens) through the REST API, and reads the outcome back from it.

pub mod cli;
pub mod device;
pub mod models;
pub mod progress;
pub mod report;
pub mod server;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use gatehouse_agent::{
    DeviceCredentials, Enrollment, EnrollmentToken, EstClient, Idevid, PostureSigner,
};
use gatehouse_mqtt::{ProtocolVersion, QoS};
use gatehouse_pki::{IdevidParams, ManufacturerCa};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::client::{Client, ConnectOptions};
pub use device::{AttackReport, Counters};
use device::{AttackState, Device, Shared};
pub use models::{FIELD, Kind, kind_of};
pub use progress::Narrator;
pub use report::{FleetReport, Latency, Load, Scenario, ScenarioResult};
pub use server::{Api, Target};

/// The prefix of the SAN URI naming a simulated device's model in its IDevID.
const MODEL_URI: &str = "urn:simworks:model:";

/// Keep-alive of the devices' sessions.
const KEEP_ALIVE: u16 = 120;

/// Read buffer of an idle device connection.
const READ_CHUNK: usize = 512;

/// Trust assessments read back for the benign distribution, at most.
const TRUST_SAMPLE: usize = 2000;

/// What a fleet run does.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Field devices (the console comes on top).
    pub devices: usize,
    /// Share of the field devices that is compromised (at least one per scenario).
    pub compromised: f64,
    /// The attacks to run.
    pub scenarios: Vec<Scenario>,
    /// The tenant the fleet is claimed by.
    pub tenant: String,
    /// Suffix of the run's manufacturer, model and device names, so that runs against one
    /// server do not collide; empty on a fresh server.
    pub run_id: String,
    /// Normal traffic before the attacks.
    pub warmup: Duration,
    /// Longest an attack goes on without enforcement.
    pub attack_for: Duration,
    /// Mixed traffic after the attacks (the load generator's steady phase).
    pub duration: Duration,
    /// Longest wait for the server's incidents after the attacks.
    pub detect_wait: Duration,
    /// Enrollments and connections in flight at once.
    pub concurrency: usize,
    /// New MQTT connections a second, at most, per source address.
    pub connect_rate_per_source: u32,
    /// Local addresses benign devices connect from (round robin); empty: the kernel's
    /// choice.
    pub source_addrs: Vec<IpAddr>,
    /// Local addresses attackers connect from, one per attacker; empty: the kernel's
    /// choice (then a ban of an attacker's address bans the benign devices beside it).
    pub attacker_addrs: Vec<IpAddr>,
    /// Commands the console sends a second.
    pub commands_per_sec: f64,
    /// A `username,password` CSV of the credentials a brute force tries.
    pub credentials: Option<PathBuf>,
    /// Enroll the fleet and stop there (the enrollment storm of a load run).
    pub enroll_only: bool,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            devices: 1000,
            compromised: 0.02,
            scenarios: report::ALL.to_vec(),
            tenant: "sim".into(),
            run_id: String::new(),
            warmup: Duration::from_secs(6),
            attack_for: Duration::from_secs(20),
            duration: Duration::ZERO,
            detect_wait: Duration::from_secs(15),
            concurrency: 32,
            connect_rate_per_source: 40,
            source_addrs: Vec::new(),
            attacker_addrs: Vec::new(),
            commands_per_sec: 5.0,
            credentials: None,
            enroll_only: false,
        }
    }
}

/// Loopback addresses `127.0.<third>.1 ..= 127.0.<third>.<n>`.
pub fn loopback_range(third: u8, n: usize) -> Vec<IpAddr> {
    (1..=n.clamp(1, 254))
        .map(|i| IpAddr::from([127, 0, third, i as u8]))
        .collect()
}

/// Which model an attack is staged on.
fn stage(s: Scenario) -> Kind {
    match s {
        Scenario::BruteForce | Scenario::WildcardHarvesting | Scenario::VulnerableFirmware => {
            Kind::Camera
        }
        Scenario::PublishFlood => Kind::PlcGateway,
        Scenario::TopicScanning | Scenario::ClonedCertificate => Kind::Lock,
        Scenario::Exfiltration => Kind::Thermostat,
        Scenario::SpoofedReadings => Kind::InfusionPump,
    }
}

fn scoped(name: &str, run: &str) -> String {
    if run.is_empty() {
        name.to_owned()
    } else {
        format!("{name}.{run}")
    }
}

/// Device ids: the model's prefix, the run, the index.
pub fn device_id(kind: Kind, i: usize, run: &str) -> String {
    if run.is_empty() {
        format!("{}-{i:06}", kind.prefix())
    } else {
        format!("{}-{run}-{i:06}", kind.prefix())
    }
}

/// The fleet laid out: models, ids, and who attacks with what.
#[derive(Debug, Clone)]
pub struct Plan {
    pub kinds: Vec<Kind>,
    pub ids: Vec<String>,
    /// Device index → scenario, for the compromised ones.
    pub attackers: BTreeMap<usize, Scenario>,
}

/// Lays out a fleet of `n` field devices with `compromised` of them attacking, one
/// scenario after another, each on its model (the last devices of the model's block).
pub fn plan(n: usize, compromised: f64, scenarios: &[Scenario], run: &str) -> Plan {
    let n = n.max(FIELD.len());
    let kinds: Vec<Kind> = (0..n).map(|i| kind_of(i, n)).collect();
    let ids = kinds
        .iter()
        .enumerate()
        .map(|(i, k)| device_id(*k, i, run))
        .collect();
    let mut attackers = BTreeMap::new();
    if !scenarios.is_empty() {
        let wanted = ((n as f64 * compromised.clamp(0.0, 0.5)).round() as usize)
            .max(scenarios.len())
            .min(n / 2);
        for k in 0..wanted {
            let s = scenarios[k % scenarios.len()];
            let pick = (0..n)
                .rev()
                .find(|i| kinds[*i] == stage(s) && !attackers.contains_key(i))
                .or_else(|| (0..n).rev().find(|i| !attackers.contains_key(i)));
            if let Some(i) = pick {
                attackers.insert(i, s);
            }
        }
    }
    Plan {
        kinds,
        ids,
        attackers,
    }
}

/// One device's enrolled identity.
struct Enrolled {
    creds: DeviceCredentials,
}

/// Runs a fleet against `target` and reports.
pub async fn run(
    target: Target,
    opts: FleetOptions,
    narrator: &Narrator,
) -> anyhow::Result<FleetReport> {
    Ok(run_inner(target, opts, narrator, false).await?.0)
}

/// Runs a fleet against `target` and reports, then leaves the benign fleet and the
/// console running: see [`Running`]. `None` for an enrollment-only run, which leaves no
/// sessions.
pub async fn run_and_keep(
    target: Target,
    opts: FleetOptions,
    narrator: &Narrator,
) -> anyhow::Result<(FleetReport, Option<Running>)> {
    run_inner(target, opts, narrator, true).await
}

async fn run_inner(
    target: Target,
    opts: FleetOptions,
    narrator: &Narrator,
    keep: bool,
) -> anyhow::Result<(FleetReport, Option<Running>)> {
    let started = Instant::now();
    let (nofile, _) = crate::bench::raise_nofile_limit();
    let needed = opts.devices as u64 + 256;
    if !opts.enroll_only && nofile > 0 && nofile < needed {
        bail!(
            "{} devices need {} open connections in this process, but it may open only \
             {nofile} files (its hard limit; raising it needs CAP_SYS_RESOURCE or a higher \
             `ulimit -Hn`). Run fewer devices per process, or --enroll-only for an \
             enrollment storm",
            opts.devices,
            opts.devices + 1
        );
    }
    let api = Api::new(&target)?;
    let run_id = opts.run_id.clone();
    // Scenarios this server cannot host are skipped, not staged: their devices stay benign.
    let skipped: Vec<(Scenario, String)> = opts
        .scenarios
        .iter()
        .filter_map(|s| cannot_run(*s, &target).map(|why| (*s, why)))
        .collect();
    let runnable: Vec<Scenario> = opts
        .scenarios
        .iter()
        .copied()
        .filter(|s| !skipped.iter().any(|(k, _)| k == s))
        .collect();
    let plan = plan(opts.devices, opts.compromised, &runnable, &run_id);
    let n = plan.ids.len();
    let manufacturer = scoped(models::MANUFACTURER, &run_id);
    let model_id = |k: Kind| scoped(k.model(), &run_id);
    let console_id = scoped("console-1", &run_id);

    let mut report = FleetReport {
        devices: n,
        compromised: plan.attackers.len(),
        benign: n - plan.attackers.len(),
        ..FleetReport::default()
    };
    for k in &plan.kinds {
        *report.models.entry(k.model().to_owned()).or_default() += 1;
    }
    narrator.say(format!(
        "fleet: {n} devices ({}), {} compromised ({}), plus the operations console",
        report
            .models
            .iter()
            .map(|(m, c)| format!("{c} {m}"))
            .collect::<Vec<_>>()
            .join(", "),
        plan.attackers.len(),
        runnable
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for (s, why) in &skipped {
        narrator.say(format!("skipping {}: {why}", s.name()));
    }

    // The registry: what a fleet operator registers before devices arrive.
    let phase = narrator.phase("registering", 0);
    let maker = {
        let name = manufacturer.clone();
        tokio::task::spawn_blocking(move || ManufacturerCa::new(&name)).await??
    };
    api.post_json(
        "/api/v1/tenants",
        &json!({ "id": opts.tenant, "display_name": "Simulated fleet" }),
        &[201, 409],
    )
    .await?;
    api.post_json(
        "/api/v1/manufacturers",
        &json!({
            "id": manufacturer,
            "display_name": "Simworks (simulated manufacturer)",
            "idevid_ca_pems": [maker.cert_pem()],
            "model_rules": [format!("san-uri-prefix:{MODEL_URI}")],
        }),
        &[201],
    )
    .await
    .context("registering the simulated manufacturer (a fleet with this --run-id exists already? pick another)")?;
    for kind in FIELD.iter().chain([&Kind::Console]) {
        let id = model_id(*kind);
        api.post_json(
            "/api/v1/models",
            &json!({ "id": id, "manufacturer": manufacturer, "display_name": kind.name() }),
            &[201],
        )
        .await?;
        api.post(
            &format!("/api/v1/models/{id}/profiles"),
            "application/toml",
            kind.profile_for(&manufacturer, &id).into_bytes(),
            &[201],
        )
        .await?;
    }
    let idevid_devices: Vec<usize> = (0..n)
        .filter(|i| plan.kinds[*i].enroll_via() == models::EnrollVia::Idevid)
        .collect();
    // The API takes bodies of at most 64 KiB: 500 claims a request.
    for chunk in idevid_devices.chunks(500) {
        let serials: Vec<Value> = chunk
            .iter()
            .map(|i| json!({ "serial": plan.ids[*i], "expected_model": model_id(plan.kinds[*i]) }))
            .collect();
        api.post_json(
            &format!("/api/v1/tenants/{}/claims", opts.tenant),
            &json!({ "manufacturer": manufacturer, "serials": serials }),
            &[200, 201],
        )
        .await?;
    }
    let mut tokens = HashMap::new();
    for kind in [Kind::Thermostat, Kind::Console] {
        let uses = if kind == Kind::Console {
            1
        } else {
            plan.kinds.iter().filter(|k| **k == kind).count()
        };
        if uses == 0 {
            continue;
        }
        let t = api
            .post_json(
                "/api/v1/tokens",
                &json!({
                    "tenant": opts.tenant,
                    "model": model_id(kind),
                    "max_uses": uses,
                    "expires_in": 86_400,
                }),
                &[201],
            )
            .await?;
        let id = t["token"]["id"].as_str().context("token id")?.to_owned();
        let secret = t["secret"].as_str().context("token secret")?.to_owned();
        tokens.insert(kind, EnrollmentToken::new(id, secret)?);
    }
    phase.finish(format!(
        "manufacturer {manufacturer} with its IDevID CA, {} models with their profiles, {} serials claimed, tokens for thermostats and the console",
        FIELD.len() + 1,
        idevid_devices.len()
    ));

    // Manufacturer identities, made "at the factory".
    let phase = narrator.phase("factory", idevid_devices.len() as u64);
    let maker = Arc::new(maker);
    let mut idevids: HashMap<usize, Idevid> = HashMap::new();
    for chunk in idevid_devices.chunks(256) {
        let maker = maker.clone();
        let jobs: Vec<(usize, String, Kind)> = chunk
            .iter()
            .map(|i| (*i, plan.ids[*i].clone(), plan.kinds[*i]))
            .collect();
        let uri = |k: Kind| format!("{MODEL_URI}{}", model_id(k));
        let jobs: Vec<(usize, String, Kind, String)> = jobs
            .into_iter()
            .map(|(i, id, k)| (i, id, k, uri(k)))
            .collect();
        let made = tokio::task::spawn_blocking(move || {
            jobs.into_iter()
                .map(|(i, id, k, uri)| {
                    let cert = maker.issue_idevid(
                        &IdevidParams::new(id.clone(), format!("{} {id}", k.name()))
                            .with_model_uri(uri),
                    )?;
                    let idevid = Idevid::from_pem(&cert.cert_pem, cert.key_pem.expose())?;
                    Ok::<_, anyhow::Error>((i, idevid))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await??;
        phase.inc(made.len() as u64);
        idevids.extend(made);
    }
    phase.finish(format!(
        "{} IDevIDs issued by the simulated manufacturer",
        idevids.len()
    ));

    // Enrollment over EST, as the agent does it.
    let est = EstClient::new(&target.https_url(), target.anchors.clone())?;
    let phase = narrator.phase("enrolling", (n + 1) as u64);
    let enroll_started = Instant::now();
    let gate = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let mut jobs: Vec<(usize, Enrollment)> = Vec::with_capacity(n + 1);
    for i in 0..n {
        let how = match plan.kinds[i].enroll_via() {
            models::EnrollVia::Idevid => match idevids.remove(&i) {
                Some(id) => Enrollment::Idevid(id),
                None => continue,
            },
            models::EnrollVia::Token => match tokens.get(&plan.kinds[i]) {
                Some(t) => Enrollment::Token(
                    t.clone()
                        .for_device(plan.ids[i].parse().context("device id")?)
                        .in_tenant(opts.tenant.parse().context("tenant id")?),
                ),
                None => continue,
            },
        };
        jobs.push((i, how));
    }
    if let Some(t) = tokens.get(&Kind::Console) {
        jobs.push((
            usize::MAX,
            Enrollment::Token(
                t.clone()
                    .for_device(console_id.parse().context("console id")?)
                    .in_tenant(opts.tenant.parse().context("tenant id")?),
            ),
        ));
    }
    for (i, how) in jobs {
        let est = est.clone();
        let gate = gate.clone();
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let t0 = Instant::now();
            let r = gatehouse_agent::enroll(&est, &how).await;
            (i, t0.elapsed(), r)
        });
    }
    let mut enrolled: HashMap<usize, Enrolled> = HashMap::new();
    let mut enroll_lat = hist();
    let mut enroll_errors: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let (i, took, r) = done.context("an enrollment task failed")?;
        phase.inc(1);
        match r {
            Ok(e) => {
                record(&mut enroll_lat, took);
                enrolled.insert(
                    i,
                    Enrolled {
                        creds: e.credentials,
                    },
                );
            }
            Err(e) => *enroll_errors.entry(e.to_string()).or_default() += 1,
        }
    }
    let enroll_secs = enroll_started.elapsed().as_secs_f64();
    report.load.enrollment = latency(
        &enroll_lat,
        enroll_errors.values().sum::<usize>() as u64,
        enroll_secs,
    );
    phase.finish(format!(
        "{} of {} enrolled over EST in {enroll_secs:.1} s ({:.0}/s){}",
        enrolled.len(),
        n + 1,
        enrolled.len() as f64 / enroll_secs.max(1e-6),
        first_error(&enroll_errors)
    ));
    if enrolled.is_empty() {
        report.judge();
        bail!(
            "no device enrolled over EST at {} ({}){}",
            target.https_url(),
            target.https,
            first_error(&enroll_errors)
        );
    }
    let enrolled_ids: HashSet<usize> = enrolled.keys().copied().collect();
    if opts.enroll_only {
        report.compromised = 0;
        report.benign = n;
        report.load.process_rss_mib = process_rss_mib();
        report.elapsed_secs = started.elapsed().as_secs_f64();
        report.judge();
        return Ok((report, None));
    }

    // Sessions. The attackers stop on their own signal, after the scripted attacks.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (attackers_stop_tx, attackers_stop_rx) = watch::channel(false);
    let (go_tx, go_rx) = watch::channel(false);
    let (report_tx, mut report_rx) = mpsc::unbounded_channel::<AttackReport>();
    let counters = Arc::new(Counters::default());
    let benign_ids: Arc<Vec<String>> = Arc::new(
        (0..n)
            .filter(|i| !plan.attackers.contains_key(i) && enrolled.contains_key(i))
            .map(|i| plan.ids[i].clone())
            .collect(),
    );
    let (credentials, credentials_from) = device::load_credentials(opts.credentials.as_deref());
    let credentials = Arc::new(credentials);
    let mut attacker_addr: HashMap<usize, Option<IpAddr>> = HashMap::new();
    for (k, i) in plan.attackers.keys().enumerate() {
        let addr = (!opts.attacker_addrs.is_empty())
            .then(|| opts.attacker_addrs[k % opts.attacker_addrs.len()]);
        attacker_addr.insert(*i, addr);
    }
    let mqtt_opts = |i: usize, id: &str, creds: &DeviceCredentials, bind: Option<IpAddr>| {
        target
            .client_tls(
                Some((creds.chain().to_vec(), creds.key().clone_key())),
                false,
            )
            .map(|tls| ConnectOptions {
                addr: target.mqtts,
                bind,
                tls,
                server_name: target.server_name.clone(),
                version: ProtocolVersion::V5,
                client_id: id.to_owned(),
                keep_alive: KEEP_ALIVE,
                receive_maximum: None,
                read_chunk: READ_CHUNK,
                timeout: Duration::from_secs(20),
            })
            .map(|o| (i, o))
    };

    // The console first, so that it hears every reply.
    let rtt = Arc::new(Mutex::new(hist()));
    let mut console_task = None;
    if let Some(e) = enrolled.remove(&usize::MAX) {
        let (_, opts_c) = mqtt_opts(
            usize::MAX,
            &console_id,
            &e.creds,
            opts.source_addrs.first().copied(),
        )?;
        let signer = PostureSigner::new(&e.creds).ok().map(Arc::new);
        let console = Console {
            opts: opts_c,
            signer,
            targets: benign_ids.clone(),
            per_sec: opts.commands_per_sec,
            rtt: rtt.clone(),
            stop: stop_rx.clone(),
            id: console_id.clone(),
        };
        console_task = Some(tokio::spawn(console.run()));
    }

    let phase = narrator.phase("connecting", enrolled.len() as u64);
    let connect_started = Instant::now();
    let sources = opts.source_addrs.len().max(1) as f64;
    let rate = f64::from(opts.connect_rate_per_source.max(1)) * sources;
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut connects = JoinSet::new();
    let mut order: Vec<usize> = enrolled.keys().copied().collect();
    order.sort_unstable();
    let mut states: HashMap<usize, Arc<Mutex<AttackState>>> = HashMap::new();
    for i in order {
        let Some(e) = enrolled.remove(&i) else {
            continue;
        };
        let attack = plan.attackers.get(&i).copied();
        let bind = match attack {
            // The clone comes from the attacker's address; the device itself stays home.
            Some(Scenario::ClonedCertificate) | None => (!opts.source_addrs.is_empty())
                .then(|| opts.source_addrs[i % opts.source_addrs.len()]),
            Some(_) => attacker_addr.get(&i).copied().flatten(),
        };
        let (_, o) = mqtt_opts(i, &plan.ids[i], &e.creds, bind)?;
        let signer = PostureSigner::new(&e.creds).ok().map(Arc::new);
        let state = attack.map(|s| {
            let st = AttackState::new(plan.ids[i].clone(), s, report_tx.clone());
            states.insert(i, st.clone());
            st
        });
        let dev = Device {
            index: i,
            id: plan.ids[i].clone(),
            kind: plan.kinds[i],
            attack,
            opts: o,
            signer,
            sensor: models::Sensor::new(plan.kinds[i], i as u64),
        };
        let shared = Shared {
            counters: counters.clone(),
            stop: if attack.is_some() {
                attackers_stop_rx.clone()
            } else {
                stop_rx.clone()
            },
            go: go_rx.clone(),
            attack_for: opts.attack_for,
            benign_ids: benign_ids.clone(),
            legacy: target.legacy,
            attacker_addr: attacker_addr.get(&i).copied().flatten(),
            credentials: credentials.clone(),
        };
        pace.tick().await;
        let gate = gate.clone();
        connects.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let t0 = Instant::now();
            match Client::connect(&dev.opts).await {
                Ok((client, _)) => {
                    let took = t0.elapsed();
                    let index = dev.index;
                    let handle = tokio::spawn(dev.run(client, shared, state));
                    Ok((index, took, handle))
                }
                Err(e) => Err(format!("{}: {e}", dev.id)),
            }
        });
    }
    let mut connect_lat = hist();
    let mut connect_errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut device_tasks = Vec::new();
    let mut connected: HashSet<usize> = HashSet::new();
    while let Some(done) = connects.join_next().await {
        phase.inc(1);
        match done {
            Ok(Ok((index, took, handle))) => {
                record(&mut connect_lat, took);
                connected.insert(index);
                device_tasks.push(handle);
            }
            Ok(Err(e)) => {
                let kind = e.split_once(": ").map_or(e.clone(), |(_, k)| k.to_owned());
                *connect_errors.entry(kind).or_default() += 1;
            }
            Err(e) => *connect_errors.entry(e.to_string()).or_default() += 1,
        }
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    report.load.connect = latency(
        &connect_lat,
        connect_errors.values().sum::<usize>() as u64,
        connect_secs,
    );
    phase.finish(format!(
        "{} sessions over MQTTS in {connect_secs:.1} s{}",
        device_tasks.len(),
        first_error(&connect_errors)
    ));
    if device_tasks.is_empty() {
        let _ = stop_tx.send(true);
        let _ = attackers_stop_tx.send(true);
        bail!(
            "no device could connect to the server's MQTTS listener at {}{}",
            target.mqtts,
            first_error(&connect_errors)
        );
    }

    // Normal traffic.
    let phase = narrator.phase("warming up", 0);
    let warm_started = Instant::now();
    let t0 = counters.telemetry.load(Ordering::Relaxed);
    while warm_started.elapsed() < opts.warmup {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let sent = counters.telemetry.load(Ordering::Relaxed) - t0;
        phase.set_message(format!(
            "{} sessions, {sent} telemetry messages ({:.0}/s), {} commands answered",
            counters.sessions.load(Ordering::Relaxed),
            sent as f64 / warm_started.elapsed().as_secs_f64().max(1e-3),
            counters.replies.load(Ordering::Relaxed)
        ));
    }
    let warm_secs = warm_started.elapsed().as_secs_f64();
    let warm_sent = counters.telemetry.load(Ordering::Relaxed) - t0;
    phase.finish(format!(
        "{warm_sent} telemetry messages in {warm_secs:.0} s ({:.0}/s), {} commands answered; using {credentials_from} for the brute force",
        warm_sent as f64 / warm_secs.max(1e-3),
        counters.replies.load(Ordering::Relaxed)
    ));

    // Attacks, all at once, each from its own address.
    let attackers: Vec<usize> = states.keys().copied().collect();
    let phase = narrator.phase("attacking", attackers.len() as u64);
    let attack_started = Instant::now();
    let _ = go_tx.send(true);
    let detect_seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let poller = {
        let api = api.clone();
        let tenant = opts.tenant.clone();
        let watch_for: Vec<(String, Option<IpAddr>, Scenario)> = attackers
            .iter()
            .map(|i| {
                (
                    plan.ids[*i].clone(),
                    attacker_addr.get(i).copied().flatten(),
                    plan.attackers[i],
                )
            })
            .collect();
        let stop = stop_rx.clone();
        tokio::spawn(poll_detections(
            api,
            tenant,
            watch_for,
            detect_seen.clone(),
            stop,
        ))
    };
    let mut reports: HashMap<String, AttackReport> = HashMap::new();
    let deadline = tokio::time::Instant::now() + opts.attack_for + Duration::from_secs(5);
    while reports.len() < attackers.len() {
        tokio::select! {
            r = report_rx.recv() => {
                let Some(r) = r else { break };
                phase.inc(1);
                let line = match (&r.started, &r.blocked) {
                    (Some(s), Some((at, how))) => format!(
                        "  {} {:<20} {} enforced on the wire after {:.0} ms: {how}",
                        "+", r.scenario.name(), r.device, at.duration_since(*s).as_secs_f64() * 1000.0
                    ),
                    _ => format!("  {} {:<20} {} no enforcement on the wire{}", "-", r.scenario.name(), r.device,
                        if r.note.is_empty() { String::new() } else { format!(" ({})", r.note) }),
                };
                narrator.say(line);
                reports.insert(r.device.clone(), r);
            }
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    phase.finish(format!(
        "{} attacks ran; {} felt enforcement on the wire",
        attackers.len(),
        reports.values().filter(|r| r.blocked.is_some()).count()
    ));

    // The steady phase of a load run: mixed traffic goes on.
    if !opts.duration.is_zero() {
        let phase = narrator.phase("steady", 0);
        let s0 = Instant::now();
        while s0.elapsed() < opts.duration {
            tokio::time::sleep(Duration::from_millis(500)).await;
            phase.set_message(format!(
                "{} sessions, {} telemetry messages, {} commands answered",
                counters.sessions.load(Ordering::Relaxed),
                counters.telemetry.load(Ordering::Relaxed),
                counters.replies.load(Ordering::Relaxed)
            ));
        }
        phase.finish(format!(
            "{:.0} s of mixed traffic",
            s0.elapsed().as_secs_f64()
        ));
    }

    // What the server made of it.
    let phase = narrator.phase("verifying", 0);
    let detect_deadline = Instant::now() + opts.detect_wait;
    let mut results;
    loop {
        results = verify(&api, &opts.tenant, &plan, &attacker_addr, &reports).await?;
        if results.iter().all(|r| r.detected) || Instant::now() >= detect_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    poller.abort();
    let detect_times = detect_seen.lock().clone();
    for r in &mut results {
        if let (Some(at), Some(rep)) = (detect_times.get(&r.device), reports.get(&r.device))
            && let Some(s) = rep.started
        {
            r.time_to_detect_ms = Some(at.saturating_duration_since(s).as_secs_f64() * 1000.0);
        }
    }
    let _ = attack_started;
    // An attacker that never enrolled or connected did not attack: its scenario is skipped.
    for r in &mut results {
        let Some(i) = plan.ids.iter().position(|id| *id == r.device) else {
            continue;
        };
        if !enrolled_ids.contains(&i) {
            r.skip(format!("its device {} did not enroll", r.device));
        } else if !connected.contains(&i) {
            r.skip(format!("its device {} did not connect", r.device));
        }
    }
    for (s, why) in &skipped {
        results.push(ScenarioResult::skipped(*s, why.clone()));
    }
    results.sort_by_key(|r| r.scenario);
    report.scenarios = results;
    let benign: Vec<usize> = (0..n).filter(|i| !plan.attackers.contains_key(i)).collect();
    benign_outcome(
        &api,
        &opts.tenant,
        &plan,
        &benign,
        &opts.source_addrs,
        &attacker_addr,
        &mut report,
    )
    .await?;
    report.benign_enforced = {
        let mut v = counters.benign_enforced.lock().clone();
        v.sort();
        v.dedup();
        v
    };
    let ran = report.scenarios.iter().filter(|s| s.ran()).count();
    phase.finish(format!(
        "{} of {ran} scenarios that ran detected{}; {} benign devices restricted or worse, {} with a finding above low",
        report.scenarios.iter().filter(|s| s.detected).count(),
        if ran == report.scenarios.len() {
            String::new()
        } else {
            format!(" ({} skipped)", report.scenarios.len() - ran)
        },
        report.benign_restricted.len(),
        report.benign_above_low.len()
    ));

    // Load figures, then stop.
    let since_connected = (Instant::now() - connect_started).as_secs_f64() - connect_secs;
    report.load.telemetry_sent = counters.telemetry.load(Ordering::Relaxed);
    report.load.traffic_secs = since_connected.max(1e-3);
    report.load.telemetry_per_sec = report.load.telemetry_sent as f64 / report.load.traffic_secs;
    report.load.sessions_at_peak = counters.peak_sessions.load(Ordering::Relaxed);
    report.load.command_round_trip = latency(&rtt.lock(), 0, report.load.traffic_secs);
    report.load.process_rss_mib = process_rss_mib();
    // The scripted attackers are done: they leave.
    let _ = attackers_stop_tx.send(true);
    report.elapsed_secs = started.elapsed().as_secs_f64();
    report.judge();
    let running = Running {
        ctx: Arc::new(AttackContext {
            api,
            target,
            tenant: opts.tenant.clone(),
            run_id,
            counters,
            benign_ids,
            credentials,
            source_addrs: opts.source_addrs.clone(),
            attacker_addrs: opts.attacker_addrs.clone(),
            first_address: plan.attackers.len(),
            first_index: n + 1,
            attack_for: opts.attack_for,
            detect_wait: opts.detect_wait,
        }),
        scenarios: runnable,
        launched: 0,
        stop_tx,
        device_tasks,
        console_task,
    };
    if keep {
        return Ok((report, Some(running)));
    }
    running.stop().await;
    Ok((report, None))
}

/// What an occasional attack needs of the fleet it joins.
#[derive(Debug)]
struct AttackContext {
    api: Api,
    target: Target,
    tenant: String,
    run_id: String,
    counters: Arc<Counters>,
    benign_ids: Arc<Vec<String>>,
    credentials: Arc<Vec<(String, String)>>,
    source_addrs: Vec<IpAddr>,
    attacker_addrs: Vec<IpAddr>,
    /// The first attacker address the scripted attacks left unused.
    first_address: usize,
    /// The first device index the scripted fleet left unused.
    first_index: usize,
    attack_for: Duration,
    detect_wait: Duration,
}

/// A fleet left running after its report (`gatehouse demo` without `--once`): the benign
/// devices go on with their telemetry at their cadence and the console with its
/// commands, and [`Running::keep_on`] launches an occasional attack, each by a new
/// device enrolled for it, and says what the server did about it.
#[derive(Debug)]
pub struct Running {
    ctx: Arc<AttackContext>,
    scenarios: Vec<Scenario>,
    launched: usize,
    stop_tx: watch::Sender<bool>,
    device_tasks: Vec<tokio::task::JoinHandle<()>>,
    console_task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Sessions of the fleet open now.
    pub fn sessions(&self) -> u64 {
        self.ctx.counters.sessions.load(Ordering::Relaxed)
    }

    /// Keeps the fleet running until `until` completes, launching one attack (the
    /// scenarios in turn) every `every`, then stops it.
    pub async fn keep_on(
        mut self,
        until: impl std::future::Future<Output = ()>,
        every: Duration,
        narrator: &Narrator,
    ) {
        tokio::pin!(until);
        loop {
            tokio::select! {
                () = &mut until => break,
                () = tokio::time::sleep(every) => {}
            }
            let Some(scenario) = (!self.scenarios.is_empty())
                .then(|| self.scenarios[self.launched % self.scenarios.len()])
            else {
                continue;
            };
            let seq = self.launched;
            self.launched += 1;
            let ctx = self.ctx.clone();
            tokio::select! {
                () = &mut until => break,
                r = attack_once(ctx, scenario, seq, narrator) => match r {
                    Ok(line) => narrator.say(line),
                    Err(e) => narrator.say(format!("attack {}: could not run: {e:#}", scenario.name())),
                },
            }
        }
        self.stop().await;
    }

    /// Stops every device and the console, and waits for them to disconnect.
    pub async fn stop(self) {
        let _ = self.stop_tx.send(true);
        let all = async {
            for t in self.device_tasks {
                let _ = t.await;
            }
            if let Some(t) = self.console_task {
                let _ = t.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), all).await;
    }
}

/// One occasional attack: a new device of the scenario's model enrolls with a one-use
/// token, connects, behaves for a moment, attacks; then what the server detected and did
/// is read back, the device leaves, and the outcome is returned as a line.
async fn attack_once(
    ctx: Arc<AttackContext>,
    scenario: Scenario,
    seq: usize,
    narrator: &Narrator,
) -> anyhow::Result<String> {
    let kind = stage(scenario);
    let index = ctx.first_index + seq;
    let id = device_id(kind, index, &ctx.run_id);
    let addr = (!ctx.attacker_addrs.is_empty())
        .then(|| ctx.attacker_addrs[(ctx.first_address + seq) % ctx.attacker_addrs.len()]);
    narrator.say(format!(
        "attack: {} by a new {} {id}{}: {}",
        scenario.name(),
        kind.name(),
        addr.map_or(String::new(), |a| format!(" from {a}")),
        scenario.describe()
    ));
    let t = ctx
        .api
        .post_json(
            "/api/v1/tokens",
            &json!({
                "tenant": ctx.tenant,
                "model": scoped(kind.model(), &ctx.run_id),
                "max_uses": 1,
                "expires_in": 600,
            }),
            &[201],
        )
        .await?;
    let token = EnrollmentToken::new(
        t["token"]["id"].as_str().context("token id")?,
        t["secret"].as_str().context("token secret")?,
    )?
    .for_device(id.parse().context("device id")?)
    .in_tenant(ctx.tenant.parse().context("tenant id")?);
    let est = EstClient::new(&ctx.target.https_url(), ctx.target.anchors.clone())?;
    let creds = gatehouse_agent::enroll(&est, &Enrollment::Token(token))
        .await
        .context("enrolling over EST")?
        .credentials;
    let bind = match scenario {
        Scenario::ClonedCertificate => {
            (!ctx.source_addrs.is_empty()).then(|| ctx.source_addrs[index % ctx.source_addrs.len()])
        }
        _ => addr,
    };
    let opts = ConnectOptions {
        addr: ctx.target.mqtts,
        bind,
        tls: ctx.target.client_tls(
            Some((creds.chain().to_vec(), creds.key().clone_key())),
            false,
        )?,
        server_name: ctx.target.server_name.clone(),
        version: ProtocolVersion::V5,
        client_id: id.clone(),
        keep_alive: KEEP_ALIVE,
        receive_maximum: None,
        read_chunk: READ_CHUNK,
        timeout: Duration::from_secs(20),
    };
    let (client, _) = Client::connect(&opts)
        .await
        .with_context(|| format!("connecting to MQTTS {}", ctx.target.mqtts))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (go_tx, go_rx) = watch::channel(false);
    let (report_tx, mut report_rx) = mpsc::unbounded_channel::<AttackReport>();
    let state = AttackState::new(id.clone(), scenario, report_tx);
    let dev = Device {
        index,
        id: id.clone(),
        kind,
        attack: Some(scenario),
        opts,
        signer: PostureSigner::new(&creds).ok().map(Arc::new),
        sensor: models::Sensor::new(kind, index as u64),
    };
    let shared = Shared {
        counters: ctx.counters.clone(),
        stop: stop_rx,
        go: go_rx,
        attack_for: ctx.attack_for,
        benign_ids: ctx.benign_ids.clone(),
        legacy: ctx.target.legacy,
        attacker_addr: addr,
        credentials: ctx.credentials.clone(),
    };
    let task = tokio::spawn(dev.run(client, shared, Some(state)));
    // A moment of normal behaviour (its posture in), then the attack.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = go_tx.send(true);
    let mut reports = HashMap::new();
    if let Ok(Some(r)) =
        tokio::time::timeout(ctx.attack_for + Duration::from_secs(5), report_rx.recv()).await
    {
        reports.insert(r.device.clone(), r);
    }
    let plan = Plan {
        kinds: vec![kind],
        ids: vec![id.clone()],
        attackers: BTreeMap::from([(0, scenario)]),
    };
    let addrs = HashMap::from([(0, addr)]);
    let deadline = Instant::now() + ctx.detect_wait;
    let result = loop {
        let mut results = verify(&ctx.api, &ctx.tenant, &plan, &addrs, &reports).await?;
        let r = results.pop().context("no result")?;
        if r.detected || Instant::now() >= deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    let mut line = format!(
        "attack outcome: {} by {id}: {}",
        scenario.name(),
        if result.detected {
            "detected"
        } else {
            "NOT detected"
        }
    );
    if let Some(ms) = result.time_to_block_ms {
        let _ = write!(line, ", enforced on the wire after {ms:.0} ms");
    }
    if !result.findings.is_empty() {
        let _ = write!(line, "; incidents: {}", result.findings.join(", "));
    }
    let mut response = result.response.clone();
    if let Some(t) = &result.tier {
        response.push(format!("tier {t}"));
    }
    if !response.is_empty() {
        let _ = write!(line, "; Gatehouse: {}", response.join(", "));
    }
    if !result.note.is_empty() {
        let _ = write!(line, " ({})", result.note);
    }
    Ok(line)
}

/// Why `scenario` cannot run against `target`, if it cannot.
fn cannot_run(scenario: Scenario, target: &Target) -> Option<String> {
    match scenario {
        Scenario::BruteForce if target.legacy.is_none() => Some(
            "the server has no plain MQTT listener for legacy devices to guess passwords on \
             (give it with --legacy host:port)"
                .into(),
        ),
        _ => None,
    }
}

/// Resident memory of this process, from `/proc/self/status`.
pub fn process_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn hist() -> Histogram<u64> {
    #[allow(clippy::unwrap_used)] // fixed, valid bounds
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap()
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record((d.as_micros() as u64).max(1));
}

fn latency(h: &Histogram<u64>, failed: u64, secs: f64) -> Latency {
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        count: h.len(),
        failed,
        per_sec: h.len() as f64 / secs.max(1e-6),
        p50_ms: if h.is_empty() {
            0.0
        } else {
            ms(h.value_at_quantile(0.5))
        },
        p99_ms: if h.is_empty() {
            0.0
        } else {
            ms(h.value_at_quantile(0.99))
        },
        max_ms: if h.is_empty() { 0.0 } else { ms(h.max()) },
    }
}

fn first_error(errors: &BTreeMap<String, usize>) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let total: usize = errors.values().sum();
    let most = errors
        .iter()
        .max_by_key(|(_, c)| **c)
        .map_or("", |(e, _)| e.as_str());
    format!("; {total} failed (most: {most})")
}

/// The operations console: sends commands to benign devices and times their replies.
struct Console {
    id: String,
    opts: ConnectOptions,
    signer: Option<Arc<PostureSigner>>,
    targets: Arc<Vec<String>>,
    per_sec: f64,
    rtt: Arc<Mutex<Histogram<u64>>>,
    stop: watch::Receiver<bool>,
}

impl Console {
    async fn run(mut self) {
        let mut rng = models::Rng::new(0xc0);
        while !*self.stop.borrow() {
            let Ok((mut client, _)) = Client::connect(&self.opts).await else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            if let Err(e) = self.serve(&mut client, &mut rng).await {
                tracing::debug!(error = %e, "console session ended");
                tokio::time::sleep(Duration::from_millis(500)).await;
            } else {
                client.disconnect().await;
                return;
            }
        }
    }

    async fn serve(
        &mut self,
        client: &mut Client,
        rng: &mut models::Rng,
    ) -> Result<(), crate::client::ClientError> {
        use gatehouse_mqtt::{Packet, Properties, Publish};
        client.queue_subscribe("devices/+/replies", QoS::AtMostOnce)?;
        if let Some(signer) = &self.signer
            && let Ok(p) =
                gatehouse_agent::Posture::new().with_firmware(Kind::Console.current_firmware())
            && let Ok(signed) = signer.sign(&p.report_now())
        {
            let id = client.next_packet_id();
            client.queue(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: format!("$gatehouse/{}/posture", self.id),
                packet_id: id,
                payload: signed.to_envelope().into(),
                properties: Properties::default(),
            }))?;
        }
        client.flush().await?;
        let every = Duration::from_secs_f64(1.0 / self.per_sec.max(0.01));
        let mut next = tokio::time::Instant::now() + Duration::from_secs(1);
        let mut next_ping = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut pending: HashMap<u64, Instant> = HashMap::new();
        let mut seq = 0u64;
        loop {
            tokio::select! {
                changed = self.stop.changed() => {
                    if changed.is_err() || *self.stop.borrow() {
                        return Ok(());
                    }
                }
                packet = client.recv() => {
                    if let Packet::Publish(p) = packet? {
                        if p.qos != QoS::AtMostOnce {
                            client.queue_puback(p.packet_id)?;
                            client.flush().await?;
                        }
                        let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        if let Some(at) = v["request"]["seq"].as_u64().and_then(|s| pending.remove(&s)) {
                            record(&mut self.rtt.lock(), at.elapsed());
                        }
                    }
                }
                () = tokio::time::sleep_until(next), if !self.targets.is_empty() => {
                    next += every;
                    seq += 1;
                    let target = &self.targets[(rng.next_u64() % self.targets.len() as u64) as usize];
                    let verb = device::COMMANDS[(seq % device::COMMANDS.len() as u64) as usize];
                    let id = client.next_packet_id();
                    client.queue(&Packet::Publish(Publish {
                        dup: false,
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        topic: format!("devices/{target}/commands/{verb}"),
                        packet_id: id,
                        payload: json!({ "seq": seq }).to_string().into_bytes().into(),
                        properties: Properties::default(),
                    }))?;
                    client.flush().await?;
                    pending.insert(seq, Instant::now());
                    if pending.len() > 10_000 {
                        pending.retain(|_, at| at.elapsed() < Duration::from_secs(30));
                    }
                }
                () = tokio::time::sleep_until(next_ping) => {
                    client.ping().await?;
                    next_ping += Duration::from_secs(60);
                }
            }
        }
    }
}

fn device_of(v: &Value) -> Option<String> {
    match &v["device"] {
        Value::String(s) => Some(s.rsplit('/').next().unwrap_or(s).to_owned()),
        Value::Object(o) => o.get("device").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// Polls the incident list and notes when each attacker's (or its address's) expected
/// incident first shows, until aborted.
async fn poll_detections(
    api: Api,
    tenant: String,
    watch_for: Vec<(String, Option<IpAddr>, Scenario)>,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    stop: watch::Receiver<bool>,
) {
    let _ = tenant;
    while !*stop.borrow() {
        if let Ok(v) = api.get("/api/v1/incidents?limit=1000").await {
            let now = Instant::now();
            let list = v["incidents"].as_array().cloned().unwrap_or_default();
            let mut s = seen.lock();
            for (device, addr, scenario) in &watch_for {
                if s.contains_key(device) {
                    continue;
                }
                let hit = list.iter().any(|i| {
                    let kind = i["kind"].as_str().unwrap_or("");
                    let ours = device_of(i).as_deref() == Some(device.as_str())
                        || addr.is_some_and(|a| i["peer"].as_str() == Some(a.to_string().as_str()));
                    ours && scenario.expected_kinds().contains(&kind)
                });
                if hit {
                    s.insert(device.clone(), now);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads back, per attacker, the incidents, actions and trust the server recorded.
async fn verify(
    api: &Api,
    tenant: &str,
    plan: &Plan,
    attacker_addr: &HashMap<usize, Option<IpAddr>>,
    reports: &HashMap<String, AttackReport>,
) -> anyhow::Result<Vec<ScenarioResult>> {
    let all_incidents = api.get("/api/v1/incidents?limit=1000").await?;
    let all_incidents = all_incidents["incidents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let all_actions = api.get("/api/v1/actions").await?;
    let all_actions = all_actions["actions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for (i, scenario) in &plan.attackers {
        let id = &plan.ids[*i];
        let addr = attacker_addr.get(i).copied().flatten();
        let mine = api
            .get(&format!(
                "/api/v1/incidents?device={tenant}/{id}&limit=1000"
            ))
            .await
            .map(|v| v["incidents"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default();
        let by_peer = all_incidents.iter().filter(|inc| {
            addr.is_some_and(|a| inc["peer"].as_str() == Some(a.to_string().as_str()))
                && device_of(inc).is_none()
        });
        let mut kinds: Vec<String> = Vec::new();
        let mut detected = false;
        for inc in mine.iter().chain(by_peer) {
            let kind = inc["kind"].as_str().unwrap_or("?");
            detected |= scenario.expected_kinds().contains(&kind);
            kinds.push(format!(
                "{kind} ({})",
                inc["max_severity"].as_str().unwrap_or("?")
            ));
        }
        kinds.sort();
        kinds.dedup();
        let actions = api
            .get(&format!("/api/v1/actions?device={tenant}/{id}"))
            .await
            .map(|v| v["actions"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default();
        let mut response: Vec<String> = actions
            .iter()
            .chain(all_actions.iter().filter(|a| {
                addr.is_some_and(|ad| a["peer"].as_str() == Some(ad.to_string().as_str()))
                    && device_of(a).is_none()
            }))
            .map(|a| {
                let target = a["peer"].as_str().filter(|_| device_of(a).is_none());
                format!(
                    "{}{} ({})",
                    a["kind"].as_str().unwrap_or("?"),
                    target.map_or(String::new(), |p| format!(" {p}")),
                    a["state"].as_str().unwrap_or("?")
                )
            })
            .collect();
        response.sort();
        response.dedup();
        let trust = api
            .get(&format!("/api/v1/devices/{tenant}/{id}/trust"))
            .await
            .ok();
        let tier = trust.as_ref().and_then(|t| {
            t["assessment"]["tier"]
                .as_str()
                .or_else(|| t["verdict"]["tier"].as_str())
                .map(str::to_owned)
        });
        let mut note = String::new();
        if *scenario == Scenario::VulnerableFirmware {
            let software: Vec<String> = trust
                .as_ref()
                .and_then(|t| t["assessment"]["factors"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter(|f| matches!(f["family"].as_str(), Some("software" | "vulnerabilities")))
                .map(|f| {
                    format!(
                        "{}: {}",
                        f["name"].as_str().unwrap_or("?"),
                        f["evidence"].as_str().unwrap_or("")
                    )
                })
                .collect();
            detected = !software.is_empty() && tier.as_deref().is_some_and(|t| t != "trusted");
            note = if software.is_empty() {
                "the trust assessment names no firmware factor".into()
            } else {
                software.join("; ")
            };
        }
        let rep = reports.get(id);
        let time_to_block_ms = rep.and_then(|r| {
            let s = r.started?;
            let (at, _) = r.blocked.as_ref()?;
            Some(at.saturating_duration_since(s).as_secs_f64() * 1000.0)
        });
        if let Some(r) = rep {
            if let Some((_, how)) = &r.blocked {
                if note.is_empty() {
                    note = how.clone();
                } else {
                    note = format!("{note}; {how}");
                }
            } else if !r.note.is_empty() {
                note = if note.is_empty() {
                    r.note.clone()
                } else {
                    format!("{note}; {}", r.note)
                };
            }
        } else {
            note = if note.is_empty() {
                "the attacker never reported".into()
            } else {
                note
            };
        }
        if !detected && scenario.expected_kinds().is_empty() {
            // judged by trust above
        } else if !detected {
            note = format!(
                "no {} incident; {note}",
                scenario.expected_kinds().join(" or ")
            );
        }
        out.push(ScenarioResult {
            scenario: *scenario,
            outcome: if detected {
                report::Outcome::Detected
            } else {
                report::Outcome::Missed
            },
            skipped: None,
            device: id.clone(),
            model: plan.kinds[*i].model().to_owned(),
            source: match (scenario, addr) {
                (_, Some(a)) => a.to_string(),
                (_, None) => "the host's address".into(),
            },
            detected,
            findings: kinds,
            response,
            tier,
            time_to_block_ms,
            time_to_detect_ms: None,
            note,
        });
    }
    Ok(out)
}

/// What happened to the benign devices: tiers and scores (all of them, or a sample),
/// and any response action or incident that names one.
async fn benign_outcome(
    api: &Api,
    tenant: &str,
    plan: &Plan,
    benign: &[usize],
    source_addrs: &[IpAddr],
    attacker_addr: &HashMap<usize, Option<IpAddr>>,
    report: &mut FleetReport,
) -> anyhow::Result<()> {
    let benign_ids: HashSet<&str> = benign.iter().map(|i| plan.ids[*i].as_str()).collect();
    let attacker_ips: HashSet<IpAddr> = attacker_addr.values().flatten().copied().collect();
    let benign_ips: HashSet<String> = source_addrs
        .iter()
        .filter(|a| !attacker_ips.contains(a))
        .map(ToString::to_string)
        .collect();
    let mut quarantined: HashSet<String> = HashSet::new();
    let actions = api.get("/api/v1/actions").await?;
    for a in actions["actions"].as_array().cloned().unwrap_or_default() {
        let kind = a["kind"].as_str().unwrap_or("");
        let state = a["state"].as_str().unwrap_or("");
        if !matches!(kind, "quarantine" | "revoke" | "ban" | "block") || state != "done" {
            continue;
        }
        if let Some(d) = device_of(&a)
            && benign_ids.contains(d.as_str())
        {
            quarantined.insert(d);
        }
        if let Some(p) = a["peer"].as_str()
            && benign_ips.contains(p)
        {
            quarantined.insert(format!("every device behind {p} (banned)"));
        }
    }
    let incidents = api.get("/api/v1/incidents?limit=1000").await?;
    let mut with_findings: HashSet<String> = HashSet::new();
    let mut above_low: HashSet<String> = HashSet::new();
    // Per benign device, its incidents (`kind severity: summary`), worst first.
    let mut incidents_of: HashMap<String, Vec<(u8, String)>> = HashMap::new();
    for inc in incidents["incidents"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        if let Some(d) = device_of(&inc)
            && benign_ids.contains(d.as_str())
        {
            let kind = inc["kind"].as_str().unwrap_or("?");
            let severity = inc["max_severity"].as_str().unwrap_or("?");
            with_findings.insert(format!("{d} ({kind})"));
            let rank = severity_rank(severity);
            if rank > severity_rank("low") {
                above_low.insert(format!("{d} ({kind} {severity})"));
            }
            incidents_of.entry(d).or_default().push((
                rank,
                format!(
                    "{kind} {severity}: {}",
                    inc["summary"].as_str().unwrap_or("")
                ),
            ));
        }
    }
    // Trust of every benign device, or an even sample.
    let step = (benign.len() / TRUST_SAMPLE).max(1);
    let sample: Vec<String> = benign
        .iter()
        .step_by(step)
        .map(|i| plan.ids[*i].clone())
        .collect();
    let gate = Arc::new(Semaphore::new(16));
    let mut tasks = JoinSet::new();
    for id in sample {
        let api = api.clone();
        let gate = gate.clone();
        let path = format!("/api/v1/devices/{tenant}/{id}/trust");
        tasks.spawn(async move {
            let _p = gate.acquire_owned().await;
            (id, api.get(&path).await)
        });
    }
    let mut restricted: HashSet<String> = HashSet::new();
    let mut worst: Option<report::WorstBenign> = None;
    while let Some(done) = tasks.join_next().await {
        let Ok((id, r)) = done else { continue };
        let Ok(t) = r else {
            *report.benign_tiers.entry("unknown".into()).or_default() += 1;
            continue;
        };
        let tier = t["assessment"]["tier"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned();
        if matches!(tier.as_str(), "quarantined" | "blocked") {
            quarantined.insert(id.clone());
        }
        if matches!(tier.as_str(), "restricted" | "quarantined" | "blocked") {
            restricted.insert(id.clone());
        }
        let score = t["assessment"]["score"].as_f64().unwrap_or(100.0);
        if worst
            .as_ref()
            .is_none_or(|w| score < w.score || (score == w.score && id < w.device))
        {
            worst = Some(report::WorstBenign {
                device: id.clone(),
                tier: tier.clone(),
                score,
                why: why_of(&t, incidents_of.get(&id)),
            });
        }
        *report.benign_tiers.entry(tier).or_default() += 1;
        if let Some(score) = t["assessment"]["score"].as_f64() {
            let lo = ((score as u32) / 10 * 10).min(90);
            *report
                .benign_scores
                .entry(format!("{lo:02}-{}", lo + 10))
                .or_default() += 1;
        }
    }
    // Whatever an action quarantined, revoked or banned is cut off too.
    restricted.extend(quarantined.iter().cloned());
    let mut r: Vec<String> = restricted.into_iter().collect();
    r.sort();
    report.benign_restricted = r;
    let mut q: Vec<String> = quarantined.into_iter().collect();
    q.sort();
    report.benign_quarantined = q;
    let mut a: Vec<String> = above_low.into_iter().collect();
    a.sort();
    report.benign_above_low = a;
    // A worst device at full trust and without incidents is not worth naming.
    report.worst_benign = worst.filter(|w| w.score < 100.0 || !w.why.is_empty());
    let mut f: Vec<String> = with_findings.into_iter().collect();
    f.sort();
    report.benign_with_findings = f;
    Ok(())
}

/// Order of incident severities, for "above low".
fn severity_rank(s: &str) -> u8 {
    match s {
        "info" => 1,
        "low" => 2,
        "medium" => 3,
        "high" => 4,
        "critical" => 5,
        _ => 0,
    }
}

/// Why a device's trust is what it is: its largest penalties (from its assessment), then
/// its incidents, worst first.
fn why_of(trust: &Value, incidents: Option<&Vec<(u8, String)>>) -> Vec<String> {
    let mut factors: Vec<(f64, String)> = trust["assessment"]["factors"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|f| {
                    let penalty = f["penalty"].as_f64()?;
                    (penalty > 0.0).then(|| {
                        (
                            penalty,
                            format!(
                                "{} −{penalty:.0}: {}",
                                f["name"].as_str().unwrap_or("?"),
                                f["evidence"].as_str().unwrap_or("")
                            ),
                        )
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    factors.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut why: Vec<String> = factors.into_iter().map(|(_, s)| s).collect();
    if let Some(list) = incidents {
        let mut list = list.clone();
        list.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        why.extend(list.into_iter().map(|(_, s)| format!("incident {s}")));
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_puts_every_scenario_on_its_model_and_leaves_most_devices_benign() {
        let p = plan(200, 0.02, &report::ALL, "");
        assert_eq!(p.attackers.len(), report::ALL.len());
        for (i, s) in &p.attackers {
            assert_eq!(p.kinds[*i], stage(*s), "{s:?} on device {i}");
        }
        let p = plan(1000, 0.05, &report::ALL, "r1");
        assert_eq!(p.attackers.len(), 50);
        assert!(p.ids.iter().all(|id| id.contains("-r1-")));
        let unique: HashSet<&String> = p.ids.iter().collect();
        assert_eq!(unique.len(), p.ids.len());
        let p = plan(10, 0.9, &report::ALL, "");
        assert!(p.attackers.len() <= 5, "at most half the fleet attacks");
    }
}
