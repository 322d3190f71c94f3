//! `gatehouse bench`: the MQTT load generator that measures Gatehouse against Mosquitto on
//! the same machine, in the same run, Gatehouse's trust gate against its static gate, and
//! Gatehouse's EST enrollment, trust enforcement, and detection's time to block.
//!
//! Each scenario starts a fresh broker per target (never two at once, so they do not share
//! the two cores), runs against it with the same load generator, stops it, and prints one
//! table with a row per broker and the Gatehouse/Mosquitto ratio (and, with `--target
//! gates`, the trust-gate/static-gate ratio). Every broker trusts one CA created for the
//! run, so every client certificate works against all of them. The enrollment, trust and
//! detect scenarios run on Gatehouse alone (Mosquitto has no EST server, no trust verdicts,
//! no detection) and are judged against absolute goals instead.

mod args;
mod broker;
mod flow;
mod machine;
mod pki;
mod report;
mod samples;
mod scenario;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use rustls_pki_types::ServerName;

pub use args::{BenchArgs, MqttVersion, ScenarioArg, TargetArg, parse_duration};
pub use broker::{MAX_INFLIGHT, MAX_QUEUED, MOSQUITTO_MAX_INFLIGHT};
pub use machine::{Machine, raise_nofile_limit};
pub use report::{Better, BrokerKind, Comparison, Figure, Report, Row, ScenarioReport, Target};

use broker::{Binaries, Broker};
use flow::Pace;
use pki::BenchPki;
use scenario::{Ctx, detect, enroll, idle, messages, storm, trust};

/// Runs the benchmark, prints its tables, and writes the JSON report if asked. Ctrl-C
/// stops it; the brokers it started are killed either way.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    tokio::select! {
        report = execute(args) => report.map(|_| ()),
        _ = tokio::signal::ctrl_c() => bail!("interrupted; the brokers under test were stopped"),
    }
}

/// Runs the benchmark and returns the report (also printed, and written with `--json`).
/// Fails after the report is out if any scenario failed on any broker.
pub async fn execute(args: BenchArgs) -> anyhow::Result<Report> {
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let nofile = machine::raise_nofile_limit();
    let machine = Machine::read(nofile);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    println!("gatehouse bench");
    println!("machine: {}", machine.summary());
    if machine.busy() {
        println!(
            "warning: other work is keeping the cores busy; the figures will be noisy and \
             both brokers are slowed"
        );
    }
    println!("command: {command}");

    let scenarios = args.scenarios();
    let targets: Vec<BrokerKind> = targets(args.target)
        .into_iter()
        .filter(|kind| scenarios.iter().any(|s| runs_on(*s, *kind)))
        .collect();
    if targets.is_empty() {
        bail!(
            "nothing to run: enrollment, trust and detection are measured on Gatehouse only \
             (--target gatehouse)"
        );
    }
    let bins = Binaries {
        gatehouse: match &args.gatehouse_bin {
            Some(path) => path.clone(),
            None => std::env::current_exe().context("finding the gatehouse binary")?,
        },
        mosquitto: args.mosquitto_bin.clone(),
    };
    let mut versions = Vec::new();
    for kind in &targets {
        let bin = match kind {
            BrokerKind::Gatehouse | BrokerKind::GatehouseStatic => &bins.gatehouse,
            BrokerKind::Mosquitto => &bins.mosquitto,
        };
        if !bin.exists() {
            bail!(
                "{} binary not found at {} (pass --{}-bin; Mosquitto comes with Debian's \
                 mosquitto package)",
                kind.name(),
                bin.display(),
                kind.name()
            );
        }
        let version = broker::version_of(*kind, bin).await;
        let gate = if kind.is_gatehouse() {
            format!(", trust.gate = {:?}", broker::trust_gate(*kind))
        } else {
            String::new()
        };
        println!("{}: {} ({version}{gate})", kind.name(), bin.display());
        versions.push((*kind, version));
    }
    let mqtt = scenarios.iter().any(|s| *s != ScenarioArg::Enroll);
    if mqtt {
        println!(
            "client: MQTT {}, mutual TLS without session resumption, {} loopback source \
             addresses",
            match args.mqtt_version {
                MqttVersion::V5 => "5.0",
                MqttVersion::V311 => "3.1.1",
            },
            args.source_addrs
        );
        println!(
            "brokers: max queued {MAX_QUEUED} per session; max inflight {MAX_INFLIGHT} \
             (gatehouse), {MOSQUITTO_MAX_INFLIGHT} = unlimited (mosquitto 2.0.11 strands queued \
             QoS 1 messages with a finite quota); generator window {}",
            args.window
        );
    }
    if scenarios.iter().any(|s| {
        matches!(
            s,
            ScenarioArg::Enroll | ScenarioArg::Trust | ScenarioArg::Detect
        )
    }) {
        println!(
            "enrollment client: EST over HTTP/1.1, a new TCP connection and full TLS handshake \
             per request (no session resumption); device keys made before timing"
        );
    }

    let run_dir = tempfile::Builder::new()
        .prefix("gatehouse-bench-")
        .tempdir()
        .context("creating the run's temporary directory")?;
    let mut pki = BenchPki::create(&run_dir.path().join("ca"), &args.server_name)?;
    let needed = scenarios
        .iter()
        .map(|s| identities_needed(*s, &args))
        .max()
        .unwrap_or(0);
    let issuing = Instant::now();
    pki.ensure_identities(needed).await?;
    if needed > 0 {
        println!(
            "issued {needed} client certificates in {:.1} s",
            issuing.elapsed().as_secs_f64()
        );
    }

    let ctx = Ctx {
        version: args.mqtt_version.into(),
        server_name: ServerName::try_from(args.server_name.clone())
            .context("--server-name is not a valid DNS name or IP address")?,
        args: Arc::new(args),
        pki: Arc::new(pki),
    };

    let mut reports = Vec::new();
    let mut failures = 0;
    for scenario in scenarios {
        let (report, failed) = run_scenario(&ctx, scenario, &targets, &bins).await;
        print!("{}", report.render());
        failures += failed;
        reports.push(report);
    }

    let targets = report::targets(&reports, ctx.args.idle_connections);
    print!("{}", report::render_targets(&targets));
    let report = Report {
        machine,
        command,
        started_unix,
        versions,
        scenarios: reports,
        targets,
    };
    if let Some(path) = &ctx.args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        println!("\nJSON report written to {}", path.display());
    }
    if failures > 0 {
        bail!("{failures} scenario run(s) failed; see the notes above");
    }
    Ok(report)
}

fn targets(target: TargetArg) -> Vec<BrokerKind> {
    match target {
        TargetArg::Both => vec![BrokerKind::Gatehouse, BrokerKind::Mosquitto],
        TargetArg::Gates => vec![
            BrokerKind::Gatehouse,
            BrokerKind::GatehouseStatic,
            BrokerKind::Mosquitto,
        ],
        TargetArg::Gatehouse => vec![BrokerKind::Gatehouse],
        TargetArg::Mosquitto => vec![BrokerKind::Mosquitto],
    }
}

/// Whether `scenario` runs on `kind`: every scenario does, but enrollment, trust and
/// detection run on Gatehouse with its trust gate alone (Mosquitto has no EST server, and
/// the static gate has no verdicts to change).
fn runs_on(scenario: ScenarioArg, kind: BrokerKind) -> bool {
    match scenario {
        ScenarioArg::Enroll | ScenarioArg::Trust | ScenarioArg::Detect => {
            kind == BrokerKind::Gatehouse
        }
        _ => true,
    }
}

fn identities_needed(scenario: ScenarioArg, args: &BenchArgs) -> usize {
    match scenario {
        ScenarioArg::All | ScenarioArg::Enroll | ScenarioArg::Trust | ScenarioArg::Detect => 0,
        ScenarioArg::Throughput | ScenarioArg::Latency => 2 * args.pairs as usize,
        ScenarioArg::Fanin => args.fanin_publishers as usize + 1,
        ScenarioArg::Fanout => args.fanout_subscribers as usize + 1,
        ScenarioArg::Storm => args.storm_connections as usize,
        ScenarioArg::Idle => args.idle_connections as usize,
    }
}

fn measured(args: &BenchArgs) -> String {
    match args.messages {
        Some(m) => format!("{m} messages per publisher"),
        None => format!(
            "{:?} measured after {:?} warm-up",
            args.duration, args.warmup
        ),
    }
}

fn describe(scenario: ScenarioArg, args: &BenchArgs) -> (&'static str, String) {
    match scenario {
        ScenarioArg::All => ("all", String::new()),
        ScenarioArg::Throughput => (
            "throughput",
            format!(
                "{} publisher/subscriber pairs, a topic each, {} B payload, window {} per \
                 publisher, {}",
                args.pairs,
                args.payload,
                args.window,
                measured(args)
            ),
        ),
        ScenarioArg::Latency => (
            "latency",
            format!(
                "publish-to-deliver, {} msg/s in all over {} pairs, {} B payload, {:?} \
                 measured after {:?} warm-up",
                args.rate, args.pairs, args.payload, args.duration, args.warmup
            ),
        ),
        ScenarioArg::Fanin => (
            "fanin",
            format!(
                "{} publishers -> 1 subscriber of bench/fanin/+, {} B payload, window {} per \
                 publisher (at most {MAX_QUEUED} in all: one session's queue), {}",
                args.fanin_publishers,
                args.payload,
                messages::fanin_window(args.fanin_publishers, args.window),
                measured(args)
            ),
        ),
        ScenarioArg::Fanout => (
            "fanout",
            format!(
                "1 publisher -> {} subscribers of bench/fanout, {} B payload, window {} \
                 messages, {}",
                args.fanout_subscribers,
                args.payload,
                args.window,
                measured(args)
            ),
        ),
        ScenarioArg::Storm => (
            "storm",
            format!(
                "{} new mTLS connections, {} at a time: TCP, full TLS handshake, \
                 CONNECT/CONNACK, DISCONNECT",
                args.storm_connections, args.concurrency
            ),
        ),
        ScenarioArg::Idle => (
            "idle",
            format!(
                "{} idle mTLS connections, keep-alive {} s, opened {} at a time, held {:?}; \
                 B/conn = resident memory growth / connections held (the generator is \
                 weighed on the first broker only)",
                args.idle_connections, args.keep_alive, args.concurrency, args.idle_hold
            ),
        ),
        ScenarioArg::Enroll => (
            "enroll",
            format!(
                "{} devices enroll over EST (simpleenroll, one token in HTTP Basic), {} at a \
                 time, each over a new TCP connection and full TLS handshake (no resumption); \
                 {} renew with their new certificate (simplereenroll, mutual TLS); {} MQTTS \
                 sessions are revoked one at a time over the REST API, timed to their \
                 disconnection. Gatehouse only: Mosquitto has no EST server, so the goal is \
                 absolute (1,000 enrollments/s)",
                args.devices,
                args.concurrency,
                args.renewals.min(args.devices),
                args.revocations.min(args.devices)
            ),
        ),
        ScenarioArg::Trust => ("trust", trust::describe(args)),
        ScenarioArg::Detect => ("detect", detect::describe(args)),
    }
}

/// Runs one scenario on every target; returns its report and the number of failed runs.
async fn run_scenario(
    ctx: &Ctx,
    scenario: ScenarioArg,
    targets: &[BrokerKind],
    bins: &Binaries,
) -> (ScenarioReport, usize) {
    let (name, description) = describe(scenario, &ctx.args);
    println!("\nrunning {name} ...");
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for kind in targets.iter().filter(|k| runs_on(scenario, **k)) {
        if let Err(e) = run_on(ctx, scenario, *kind, bins, &mut rows).await {
            eprintln!("{name} on {}: {e:#}", kind.name());
            notes.push(format!("{}: {e:#}", kind.name()));
        }
    }
    let failed = notes.len();
    let mut report = ScenarioReport::new(name, description, rows);
    report.failures = notes;
    (report, failed)
}

async fn run_on(
    ctx: &Ctx,
    scenario: ScenarioArg,
    kind: BrokerKind,
    bins: &Binaries,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let args = &ctx.args;
    // The load generators publish and connect far faster than any device of a fleet
    // would: outside the detect scenario, the flood thresholds are lifted so the detection
    // engine still runs (and costs what it costs) without quarantining the load.
    let detection = if scenario == ScenarioArg::Detect {
        broker::Detection::Defaults
    } else {
        broker::Detection::LoadGenerator
    };
    let mut broker = Broker::start(kind, bins, &ctx.pki, detection).await?;
    let result = async {
        match scenario {
            ScenarioArg::All => {}
            ScenarioArg::Throughput
            | ScenarioArg::Latency
            | ScenarioArg::Fanin
            | ScenarioArg::Fanout => {
                for qos in args.qos_levels() {
                    let plan = match scenario {
                        ScenarioArg::Throughput => messages::pairs_plan(
                            args.pairs,
                            qos,
                            Pace::Window(args.window),
                            false,
                            args.messages,
                        ),
                        ScenarioArg::Latency => messages::pairs_plan(
                            args.pairs,
                            qos,
                            Pace::Rate {
                                per_second: f64::from(args.rate) / f64::from(args.pairs),
                                window: args.window,
                            },
                            true,
                            None,
                        ),
                        ScenarioArg::Fanin => messages::fanin_plan(
                            args.fanin_publishers,
                            qos,
                            args.window,
                            args.messages,
                        ),
                        _ => messages::fanout_plan(
                            args.fanout_subscribers,
                            qos,
                            args.window,
                            args.messages,
                        ),
                    };
                    let outcome = messages::run(ctx, &mut broker, &plan)
                        .await
                        .with_context(|| messages::variant(qos))?;
                    let figures = if scenario == ScenarioArg::Latency {
                        messages::latency_row(&outcome)
                    } else {
                        messages::throughput_row(&outcome, args.payload)
                    };
                    rows.push(messages::row(
                        &broker,
                        messages::variant(qos),
                        figures,
                        &outcome,
                    ));
                }
            }
            ScenarioArg::Storm => rows.push(storm::run(ctx, &mut broker).await?),
            ScenarioArg::Idle => rows.push(idle::run(ctx, &mut broker).await?),
            ScenarioArg::Enroll => rows.extend(enroll::run(ctx, &mut broker).await?),
            ScenarioArg::Trust => rows.extend(trust::run(ctx, &mut broker).await?),
            ScenarioArg::Detect => rows.extend(detect::run(ctx, &mut broker).await?),
        }
        anyhow::Ok(())
    }
    .await;
    broker.stop().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_run_gatehouse_with_each_gate_then_mosquitto() {
        assert_eq!(
            targets(TargetArg::Gates),
            vec![
                BrokerKind::Gatehouse,
                BrokerKind::GatehouseStatic,
                BrokerKind::Mosquitto
            ]
        );
        assert_eq!(targets(TargetArg::Both).len(), 2);
        for scenario in [
            ScenarioArg::Throughput,
            ScenarioArg::Latency,
            ScenarioArg::Idle,
        ] {
            assert!(runs_on(scenario, BrokerKind::GatehouseStatic));
            assert!(runs_on(scenario, BrokerKind::Mosquitto));
        }
        for scenario in [ScenarioArg::Enroll, ScenarioArg::Trust, ScenarioArg::Detect] {
            assert!(runs_on(scenario, BrokerKind::Gatehouse));
            assert!(!runs_on(scenario, BrokerKind::GatehouseStatic));
            assert!(!runs_on(scenario, BrokerKind::Mosquitto));
        }
    }
}
