//! Throughput of one detection engine on one thread.
//!
//! Feeds synthetic observations of a 10,000-device fleet (publishes with JSON telemetry,
//! status publishes, subscriptions, connects, disconnects, refusals, and a little hostile
//! traffic: a brute force, command injection, impossible readings) through
//! one `Engine`, ticking once per simulated second, and prints observations per second,
//! nanoseconds per observation at p50 and p99 (over batches), findings, and peak RSS.
//!
//! `cargo run --release -p gatehouse-detect --example detect_throughput -- [observations] [devices]`

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gatehouse_detect::{DetectConfig, Engine, FieldSpec, ProfileView};
use gatehouse_types::{
    AuthFailure, ConnectObservation, DeviceRef, DisconnectCause, Identity, IdentitySource,
    Observation, PublishObservation, SubscribeObservation, TlsFacts, TopicPattern,
};

const BATCH: usize = 5_000;
const MODELS: usize = 4;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Device {
    identity: Arc<Identity>,
    telemetry: Arc<str>,
    status: Arc<str>,
    cmd: String,
    addr: IpAddr,
}

fn profile(model: usize) -> ProfileView {
    let p = |s: &str| TopicPattern::new(s).unwrap();
    ProfileView {
        model: format!("model-{model}"),
        publish: vec![p("fleet/{device}/telemetry"), p("fleet/{device}/status")],
        subscribe: vec![p("fleet/{device}/cmd"), p("fleet/{device}/config/#")],
        commands: vec![p("fleet/{device}/cmd")],
        fields: vec![
            FieldSpec {
                topic: p("fleet/{device}/telemetry"),
                name: "temp".into(),
                min: Some(-40.0),
                max: Some(85.0),
                max_step: None,
                max_repeats: None,
            },
            FieldSpec {
                topic: p("fleet/{device}/telemetry"),
                name: "env.hum".into(),
                min: Some(0.0),
                max: Some(100.0),
                max_step: None,
                max_repeats: None,
            },
            FieldSpec {
                topic: p("fleet/{device}/telemetry"),
                name: "battery".into(),
                min: Some(0.0),
                max: Some(100.0),
                max_step: None,
                max_repeats: None,
            },
        ],
        max_rate_per_sec: Some(2.0),
    }
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Nanoseconds this thread has run on a CPU (`/proc/thread-self/schedstat`): the engine's
/// cost without the time other processes on the machine took from it.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let total: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(5_000_000);
    let n_devices: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);

    let mut engine = Engine::new(DetectConfig::default());
    for m in 0..MODELS {
        engine.set_profile(profile(m));
    }
    let devices: Vec<Device> = (0..n_devices)
        .map(|i| {
            let name = format!("dev-{i:05}");
            let identity = Arc::new(Identity {
                tenant: "acme".parse().unwrap(),
                device: name.parse().unwrap(),
                source: IdentitySource::CertificateSanUri,
            });
            let r = DeviceRef::from(&*identity);
            engine.set_model(&r, Some(&format!("model-{}", i % MODELS)));
            Device {
                telemetry: Arc::from(format!("fleet/{name}/telemetry").as_str()),
                status: Arc::from(format!("fleet/{name}/status").as_str()),
                cmd: format!("fleet/{name}/cmd"),
                addr: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + u32::try_from(i).unwrap())),
                identity,
            }
        })
        .collect();

    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    // A pool of realistic telemetry payloads, shared (cloning `Bytes` is a reference count).
    let payloads: Vec<bytes::Bytes> = (0..4096)
        .map(|i| {
            let temp = 18.0 + rng.unit() * 8.0;
            let hum = 35.0 + rng.unit() * 20.0;
            let battery = 60.0 + rng.unit() * 40.0;
            bytes::Bytes::from(format!(
                r#"{{"ts":{},"temp":{temp:.2},"env":{{"hum":{hum:.1},"pressure":1013.2}},"battery":{battery:.0},"fw":"2.3.1","seq":{i}}}"#,
                1_780_000_000 + i
            ))
        })
        .collect();
    let status = bytes::Bytes::from_static(br#"{"fw":"2.3.1","uptime":86400,"rssi":-63}"#);

    let start = UNIX_EPOCH + Duration::from_secs(1_780_000_000);
    // About one observation per device per simulated second.
    let step_ns = 1_000_000_000u64 / n_devices.max(1) as u64;
    let mut sim_ns: u64 = 0;
    let mut next_tick: u64 = 1_000_000_000;

    let mut batch: Vec<Observation> = Vec::with_capacity(BATCH);
    let mut out = Vec::new();
    let mut findings = 0usize;
    let mut by_kind = std::collections::BTreeMap::new();
    let mut per_obs_ns: Vec<f64> = Vec::with_capacity(total / BATCH + 1);
    let mut busy = Duration::ZERO;
    let mut cpu_ns: u64 = 0;
    let mut cpu_known = true;
    let mut done = 0usize;
    let mut kinds = [0usize; 7];

    while done < total {
        batch.clear();
        let n = BATCH.min(total - done);
        for _ in 0..n {
            sim_ns += step_ns;
            let at: SystemTime = start + Duration::from_nanos(sim_ns);
            let d = &devices[rng.below(n_devices as u64) as usize];
            let roll = rng.below(1000);
            let obs = if roll < 850 {
                kinds[0] += 1;
                Observation::Publish(PublishObservation {
                    at,
                    session: 1,
                    identity: d.identity.clone(),
                    topic: d.telemetry.clone(),
                    size: 110,
                    payload: payloads[rng.below(payloads.len() as u64) as usize].clone(),
                    qos: 1,
                    retain: false,
                    allowed: true,
                })
            } else if roll < 900 {
                kinds[1] += 1;
                Observation::Publish(PublishObservation {
                    at,
                    session: 1,
                    identity: d.identity.clone(),
                    topic: d.status.clone(),
                    size: 42,
                    payload: status.clone(),
                    qos: 1,
                    retain: true,
                    allowed: true,
                })
            } else if roll < 950 {
                kinds[2] += 1;
                Observation::Subscribe(SubscribeObservation {
                    at,
                    session: 1,
                    identity: d.identity.clone(),
                    filter: d.cmd.clone(),
                    qos: 1,
                    allowed: true,
                })
            } else if roll < 972 {
                kinds[3] += 1;
                Observation::Connect(ConnectObservation {
                    at,
                    session: 1,
                    peer: SocketAddr::new(d.addr, 40_000),
                    identity: d.identity.clone(),
                    client_id: String::new(),
                    protocol_level: 5,
                    clean_start: true,
                    keep_alive: 60,
                    session_present: false,
                    tls: TlsFacts::default(),
                })
            } else if roll < 995 {
                kinds[4] += 1;
                Observation::Disconnect {
                    at,
                    session: 1,
                    identity: d.identity.clone(),
                    cause: DisconnectCause::ConnectionLost,
                }
            } else if roll < 999 {
                kinds[5] += 1;
                // Stray refusals from many addresses, and a brute force from one.
                let addr = if roll == 998 {
                    0xc000_0242
                } else {
                    0xc0a8_0000 + rng.below(4096) as u32
                };
                Observation::AuthFailure(AuthFailure {
                    at,
                    peer: SocketAddr::new(IpAddr::V4(Ipv4Addr::from(addr)), 50_000),
                    identity: None,
                    client_id: None,
                    reason: "tls_unknown_ca".into(),
                })
            } else {
                // A few compromised devices: commands to a neighbour, impossible readings.
                kinds[6] += 1;
                let bad = &devices[rng.below(8) as usize];
                let victim = &devices[8 + rng.below(8) as usize];
                if rng.below(2) == 0 {
                    Observation::Publish(PublishObservation {
                        at,
                        session: 1,
                        identity: bad.identity.clone(),
                        topic: Arc::from(victim.cmd.as_str()),
                        size: 17,
                        payload: bytes::Bytes::from_static(br#"{"relay":"open"}"#),
                        qos: 1,
                        retain: false,
                        allowed: true,
                    })
                } else {
                    Observation::Publish(PublishObservation {
                        at,
                        session: 1,
                        identity: bad.identity.clone(),
                        topic: bad.telemetry.clone(),
                        size: 40,
                        payload: bytes::Bytes::from_static(br#"{"temp":412.5,"env":{"hum":45}}"#),
                        qos: 1,
                        retain: false,
                        allowed: true,
                    })
                }
            };
            batch.push(obs);
        }

        let c0 = thread_cpu_ns();
        let t0 = Instant::now();
        for obs in &batch {
            engine.observe(obs, &mut out);
        }
        if sim_ns >= next_tick {
            engine.tick(start + Duration::from_nanos(sim_ns), &mut out);
            next_tick += 1_000_000_000;
        }
        let dt = t0.elapsed();
        match (c0, thread_cpu_ns()) {
            (Some(a), Some(b)) => cpu_ns += b.saturating_sub(a),
            _ => cpu_known = false,
        }
        busy += dt;
        per_obs_ns.push(dt.as_nanos() as f64 / n as f64);
        findings += out.len();
        for f in out.drain(..) {
            *by_kind.entry(f.kind).or_insert(0usize) += 1;
        }
        done += n;
    }

    per_obs_ns.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        let i = ((per_obs_ns.len() as f64 - 1.0) * p).round() as usize;
        per_obs_ns.get(i).copied().unwrap_or(0.0)
    };
    let secs = busy.as_secs_f64();
    println!("detect_throughput: one Engine, one thread");
    println!("  devices            {n_devices} ({MODELS} models)");
    println!(
        "  observations       {done} (publish telemetry {}, publish status {}, subscribe {}, connect {}, disconnect {}, auth failure {}, hostile publish {})",
        kinds[0], kinds[1], kinds[2], kinds[3], kinds[4], kinds[5], kinds[6]
    );
    println!("  simulated time     {:.0} s", sim_ns as f64 / 1e9);
    println!("  engine time        {secs:.3} s");
    println!(
        "  throughput         {:.0} observations/s (wall clock)",
        done as f64 / secs
    );
    if cpu_known && cpu_ns > 0 {
        let cpu = cpu_ns as f64 / 1e9;
        println!(
            "  on-CPU             {cpu:.3} s: {:.0} observations/s per busy core ({:.0}% of the wall time on a CPU)",
            done as f64 / cpu,
            100.0 * cpu / secs
        );
    }
    println!(
        "  ns/observation     p50 {:.0}  p99 {:.0}  (over {} batches of {BATCH})",
        pct(0.5),
        pct(0.99),
        per_obs_ns.len()
    );
    println!("  findings           {findings} {by_kind:?}");
    println!(
        "  state              {} devices, {} source addresses; Features is {} bytes a device",
        engine.device_count(),
        engine.source_count(),
        std::mem::size_of::<gatehouse_detect::Features>()
    );
    match peak_rss_kib() {
        Some(kib) => println!(
            "  peak RSS           {:.1} MiB (VmHWM)",
            kib as f64 / 1024.0
        ),
        None => println!("  peak RSS           unavailable (no /proc/self/status)"),
    }
}
