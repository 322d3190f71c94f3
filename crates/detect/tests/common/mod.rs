//! Helpers for the detection tests: observation constructors, a model profile, and a
//! realistic benign fleet of that model to run attacks against.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatehouse_detect::{DetectConfig, Engine, FieldSpec, ProfileView};
use gatehouse_types::{
    AuthFailure, ConnectObservation, DeviceRef, DisconnectCause, Finding, Identity, IdentitySource,
    Observation, PublishObservation, SubscribeObservation, TlsFacts, TopicPattern,
};

pub const MODEL: &str = "thermo-x";

/// `secs` seconds into the test's day.
pub fn at(secs: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_780_000_000) + Duration::from_secs_f64(secs.max(0.0))
}

pub fn dev(name: &str) -> DeviceRef {
    format!("acme/{name}").parse().unwrap()
}

pub fn ident(name: &str) -> Arc<Identity> {
    Arc::new(Identity {
        tenant: "acme".parse().unwrap(),
        device: name.parse().unwrap(),
        source: IdentitySource::CertificateSanUri,
    })
}

pub fn ip(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, a, b))
}

pub fn publish(t: f64, device: &str, topic: &str, payload: &str) -> Observation {
    publish_full(t, device, topic, payload, false, true)
}

pub fn publish_full(
    t: f64,
    device: &str,
    topic: &str,
    payload: &str,
    retain: bool,
    allowed: bool,
) -> Observation {
    Observation::Publish(PublishObservation {
        at: at(t),
        session: 1,
        identity: ident(device),
        topic: Arc::from(topic),
        size: u32::try_from(payload.len()).unwrap(),
        payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        qos: 1,
        retain,
        allowed,
    })
}

pub fn connect(t: f64, device: &str, addr: IpAddr, keep_alive: u16) -> Observation {
    Observation::Connect(ConnectObservation {
        at: at(t),
        session: 1,
        peer: SocketAddr::new(addr, 40_000),
        identity: ident(device),
        client_id: device.to_owned(),
        protocol_level: 5,
        clean_start: true,
        keep_alive,
        session_present: false,
        tls: TlsFacts::default(),
    })
}

pub fn subscribe(t: f64, device: &str, filter: &str, allowed: bool) -> Observation {
    Observation::Subscribe(SubscribeObservation {
        at: at(t),
        session: 1,
        identity: ident(device),
        filter: filter.to_owned(),
        qos: 1,
        allowed,
    })
}

pub fn auth_failure(t: f64, addr: IpAddr, reason: &str, device: Option<&str>) -> Observation {
    Observation::AuthFailure(AuthFailure {
        at: at(t),
        peer: SocketAddr::new(addr, 40_001),
        identity: device.map(ident),
        client_id: device.map(ToOwned::to_owned),
        reason: reason.to_owned(),
    })
}

pub fn disconnect(t: f64, device: &str, cause: DisconnectCause) -> Observation {
    Observation::Disconnect {
        at: at(t),
        session: 1,
        identity: ident(device),
        cause,
    }
}

fn pat(s: &str) -> TopicPattern {
    TopicPattern::new(s).unwrap()
}

/// A temperature and humidity sensor: telemetry every second, status every minute,
/// commands and configuration pushed to it.
pub fn profile() -> ProfileView {
    ProfileView {
        model: MODEL.to_owned(),
        publish: vec![
            pat("devices/{device}/telemetry"),
            pat("devices/{device}/status"),
        ],
        subscribe: vec![
            pat("devices/{device}/cmd"),
            pat("devices/{device}/config/#"),
        ],
        commands: vec![pat("devices/{device}/cmd")],
        fields: vec![
            FieldSpec {
                topic: pat("devices/{device}/telemetry"),
                name: "temp".to_owned(),
                min: Some(-40.0),
                max: Some(85.0),
                max_step: None,
                max_repeats: None,
            },
            FieldSpec {
                topic: pat("devices/{device}/telemetry"),
                name: "env.hum".to_owned(),
                min: Some(0.0),
                max: Some(100.0),
                max_step: None,
                max_repeats: None,
            },
        ],
        max_rate_per_sec: Some(2.0),
    }
}

/// A small deterministic pseudo-random generator (for jitter).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }
}

/// Timed observations, sorted before they are run.
#[derive(Debug, Default)]
pub struct Trace {
    pub events: Vec<(f64, Observation)>,
}

impl Trace {
    pub fn push(&mut self, obs: Observation) {
        let t = match &obs {
            Observation::Publish(p) => p.at,
            Observation::Subscribe(s) => s.at,
            Observation::Connect(c) => c.at,
            Observation::AuthFailure(a) => a.at,
            Observation::Disconnect { at, .. } => *at,
            _ => at(0.0),
        };
        let secs = t.duration_since(at(0.0)).map_or(0.0, |d| d.as_secs_f64());
        self.events.push((secs, obs));
    }
}

/// One benign device: connects, subscribes to its commands and configuration, publishes
/// JSON telemetry every second with jitter and its status every minute, loses its
/// connection now and then and comes back a few seconds later.
pub fn benign_device(
    trace: &mut Trace,
    name: &str,
    addr: IpAddr,
    start: f64,
    end: f64,
    rng: &mut Rng,
) {
    let mut t = start;
    let base_temp = rng.range(19.0, 23.0);
    let base_hum = rng.range(40.0, 50.0);
    let mut next_drop = t + rng.range(200.0, 900.0);
    let mut next_status = t + rng.range(0.0, 60.0);
    trace.push(connect(t, name, addr, 60));
    trace.push(subscribe(
        t + 0.05,
        name,
        &format!("devices/{name}/cmd"),
        true,
    ));
    trace.push(subscribe(
        t + 0.06,
        name,
        &format!("devices/{name}/config/#"),
        true,
    ));
    while t < end {
        t += rng.range(0.9, 1.1);
        let temp = base_temp + rng.range(-1.5, 1.5);
        let hum = base_hum + rng.range(-4.0, 4.0);
        trace.push(publish(
            t,
            name,
            &format!("devices/{name}/telemetry"),
            &format!(
                r#"{{"temp":{temp:.2},"env":{{"hum":{hum:.1}}},"seq":{}}}"#,
                (t as u64)
            ),
        ));
        if t >= next_status {
            next_status += 60.0;
            trace.push(publish_full(
                t + 0.01,
                name,
                &format!("devices/{name}/status"),
                r#"{"fw":"1.4.2","uptime":1234,"rssi":-61}"#,
                true,
                true,
            ));
        }
        if t >= next_drop {
            trace.push(disconnect(t + 0.5, name, DisconnectCause::ConnectionLost));
            t += rng.range(2.0, 20.0);
            trace.push(connect(t, name, addr, 60));
            trace.push(subscribe(
                t + 0.05,
                name,
                &format!("devices/{name}/cmd"),
                true,
            ));
            next_drop = t + rng.range(200.0, 900.0);
        }
    }
}

/// A fleet of `n` benign devices `s0`…, each from its own address.
pub fn benign_fleet(trace: &mut Trace, n: usize, end: f64, seed: u64) {
    let mut rng = Rng::new(seed);
    for i in 0..n {
        let name = format!("s{i}");
        let start = rng.range(0.0, 5.0);
        benign_device(
            trace,
            &name,
            ip(1, u8::try_from(i % 250).unwrap()),
            start,
            end,
            &mut rng,
        );
    }
}

/// An engine with the model's profile and the fleet's devices (`s0`… and `extra`) in its
/// cohort.
pub fn engine_for(config: DetectConfig, n: usize, extra: &[&str]) -> Engine {
    let mut e = Engine::new(config);
    e.set_profile(profile());
    for i in 0..n {
        e.set_model(&dev(&format!("s{i}")), Some(MODEL));
    }
    for x in extra {
        e.set_model(&dev(x), Some(MODEL));
    }
    e
}

/// Runs the trace in time order with a tick every second; returns every finding.
pub fn run(engine: &mut Engine, mut trace: Trace) -> Vec<Finding> {
    trace.events.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out = Vec::new();
    let mut next_tick = 1.0;
    let end = trace.events.last().map_or(0.0, |e| e.0) + 2.0;
    for (t, obs) in &trace.events {
        while next_tick <= *t {
            engine.tick(at(next_tick), &mut out);
            next_tick += 1.0;
        }
        engine.observe(obs, &mut out);
    }
    while next_tick <= end {
        engine.tick(at(next_tick), &mut out);
        next_tick += 1.0;
    }
    out
}

/// The findings of one kind.
pub fn of_kind<'a>(findings: &'a [Finding], kind: &str) -> Vec<&'a Finding> {
    findings.iter().filter(|f| f.kind == kind).collect()
}

/// Whether a finding of `kind` names `device`.
pub fn fired_for(findings: &[Finding], kind: &str, device: &str) -> bool {
    findings.iter().any(|f| {
        f.kind == kind
            && f.device
                .as_ref()
                .is_some_and(|d| d.device.as_str() == device)
    })
}

/// Whether a finding of `kind` names the address `addr`, with no device.
pub fn fired_for_addr(findings: &[Finding], kind: &str, addr: IpAddr) -> bool {
    findings
        .iter()
        .any(|f| f.kind == kind && f.peer == Some(addr))
}

/// A readable list of findings for assertion messages.
pub fn show(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| {
            format!(
                "{} {:?} {}: {}",
                f.kind,
                f.severity,
                f.group_key(),
                f.summary
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
