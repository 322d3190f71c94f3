//! Decision latency of compiled verdicts: warm (cached) and uncached checks on the hot
//! path, beside cold Cedar evaluation (one request, and a whole verdict compilation).
//! Prints figures; asserts nothing.
//!
//! `cargo run --release -p gatehouse-trust --example policy_latency`

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::Instant;

use gatehouse_trust::policy::{
    CompileCache, DeviceAttrs, PolicyEngine, ProfileTopics, TopicKind, TopicRule, compile,
    compile_shared,
};
use gatehouse_types::{Score, Tier, TopicFilter};

const BATCH: usize = 1_000;
const BATCHES: usize = 2_000;

fn rule(pattern: &str, kind: TopicKind) -> TopicRule {
    TopicRule {
        pattern: pattern.to_owned(),
        kind,
        rate_per_sec: Some(2.0),
        burst: Some(10),
    }
}

fn thermostat() -> ProfileTopics {
    ProfileTopics {
        publish: vec![
            rule(
                "devices/{device}/telemetry/temperature",
                TopicKind::Telemetry,
            ),
            rule("devices/{device}/telemetry/humidity", TopicKind::Telemetry),
            rule("devices/{device}/telemetry/battery", TopicKind::Telemetry),
            rule("devices/{device}/state", TopicKind::Other),
            rule("devices/{device}/cmd/response", TopicKind::Command),
        ],
        subscribe: vec![
            rule("devices/{device}/cmd/#", TopicKind::Command),
            rule("devices/{device}/config", TopicKind::Other),
            rule("tenants/{tenant}/weather/+", TopicKind::Telemetry),
        ],
    }
}

/// Per-operation nanoseconds: p50 and p99 over batches of `BATCH` calls.
fn measure(name: &str, mut op: impl FnMut(usize)) {
    let mut per_op = Vec::with_capacity(BATCHES);
    for b in 0..BATCHES {
        let start = Instant::now();
        for i in 0..BATCH {
            op(b * BATCH + i);
        }
        per_op.push(start.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    per_op.sort_by(f64::total_cmp);
    let at = |q: f64| per_op[((per_op.len() - 1) as f64 * q) as usize];
    println!(
        "{name:<44} p50 {:>9.1} ns   p99 {:>9.1} ns",
        at(0.50),
        at(0.99)
    );
}

/// Per-call microseconds for slower operations, p50 and p99 over single calls; returns p50.
fn measure_slow(name: &str, n: usize, mut op: impl FnMut()) -> f64 {
    let mut us = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        op();
        us.push(start.elapsed().as_nanos() as f64 / 1_000.0);
    }
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() - 1) as f64 * q) as usize];
    println!(
        "{name:<44} p50 {:>9.2} µs   p99 {:>9.2} µs",
        at(0.50),
        at(0.99)
    );
    at(0.50)
}

fn main() {
    let engine = PolicyEngine::with_defaults();
    let topics = thermostat();
    let device = DeviceAttrs {
        device: "acme/thermo-0001".parse().expect("device ref"),
        model: "acme-thermo-2".to_owned(),
        tier: Tier::Restricted,
        score: Score::new(63).expect("score"),
        tags: BTreeSet::from(["field".to_owned()]),
        firmware: "2.4.1".to_owned(),
        assurance: "idevid".to_owned(),
    };
    let verdict = compile(&device, &topics, &engine, 1);
    let resources = topics.publish.len() + topics.subscribe.len() + 4;
    println!(
        "verdict: tier {}, {} resources evaluated, {} publish and {} subscribe patterns allowed",
        verdict.tier(),
        resources,
        verdict.publish().len(),
        verdict.subscribe().len()
    );

    let publish = [
        "devices/thermo-0001/telemetry/temperature",
        "devices/thermo-0001/telemetry/battery",
        "devices/thermo-0001/cmd/response",
        "devices/thermo-0002/telemetry/temperature",
    ];
    let filters: Vec<TopicFilter> = [
        "tenants/acme/weather/outdoor",
        "devices/thermo-0001/cmd/#",
        "$gatehouse/thermo-0001/ota/#",
        "#",
    ]
    .into_iter()
    .map(|f| TopicFilter::new(f).expect("filter"))
    .collect();

    println!("\nhot path (per decision):");
    measure("may_publish, warm cache", |i| {
        black_box(verdict.may_publish(black_box(publish[i % publish.len()])));
    });
    measure("may_publish, no cache (linear match)", |i| {
        black_box(verdict.may_publish_uncached(black_box(publish[i % publish.len()])));
    });
    measure("may_subscribe, warm cache", |i| {
        black_box(verdict.may_subscribe(black_box(&filters[i % filters.len()])));
    });
    measure("may_subscribe, no cache (coverage check)", |i| {
        black_box(verdict.may_subscribe_uncached(black_box(&filters[i % filters.len()])));
    });

    println!("\ncold (Cedar):");
    let one_topic = ProfileTopics {
        publish: vec![rule(
            "devices/{device}/telemetry/temperature",
            TopicKind::Telemetry,
        )],
        subscribe: Vec::new(),
    };
    for _ in 0..200 {
        black_box(compile(&device, &topics, &engine, 1));
    }
    let whole = measure_slow(
        &format!("compile, whole verdict ({resources} resources + connect)"),
        5_000,
        || {
            black_box(compile(&device, &topics, &engine, 1));
        },
    );
    measure_slow("compile, one profile topic (+ 4 reserved)", 5_000, || {
        black_box(compile(&device, &one_topic, &engine, 1));
    });
    let nothing = ProfileTopics::default();
    let base = measure_slow("compile, connect + 4 reserved topics", 5_000, || {
        black_box(compile(&device, &nothing, &engine, 1));
    });
    let profile_rules = (resources - 4) as f64;
    println!(
        "{:<44} p50 {:>9.2} µs",
        "cold decision, per extra topic (slope)",
        (whole - base) / profile_rules
    );

    println!("\nfleet (a policy or score change that touches every device):");
    let cache = CompileCache::new();
    let fleet: Vec<DeviceAttrs> = (0..10_000)
        .map(|i| DeviceAttrs {
            device: format!("acme/thermo-{i:05}").parse().expect("device ref"),
            ..device.clone()
        })
        .collect();
    let started = Instant::now();
    for d in &fleet {
        black_box(compile_shared(d, &topics, "thermo@1", &engine, 2, &cache));
    }
    let shared = started.elapsed();
    let started = Instant::now();
    for d in fleet.iter().take(1_000) {
        black_box(compile(d, &topics, &engine, 2));
    }
    let alone = started.elapsed() * 10;
    println!(
        "{:<44} {:>9.1} ms  ({:.1} µs a device; {} class)",
        "compile 10,000 verdicts, shared",
        shared.as_secs_f64() * 1e3,
        shared.as_secs_f64() * 1e6 / fleet.len() as f64,
        cache.len()
    );
    println!(
        "{:<44} {:>9.1} ms  (from 1,000)",
        "compile 10,000 verdicts, each alone",
        alone.as_secs_f64() * 1e3
    );
}
