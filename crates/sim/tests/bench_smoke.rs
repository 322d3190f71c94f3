//! Smoke runs of every bench scenario with tiny parameters, against Debian's Mosquitto
//! and, once it is built, the `gatehouse` binary. No timing is asserted: only that each
//! scenario ran, delivered its messages, held its connections, enrolled its devices,
//! enforced its pins and policies or blocked its attackers, and produced numbers.

use std::path::PathBuf;

use clap::Parser;
use gatehouse_sim::BenchArgs;
use gatehouse_sim::bench::{BrokerKind, Comparison, Report, ScenarioReport, execute};

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn mosquitto() -> Option<PathBuf> {
    let path = std::env::var_os("MOSQUITTO_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/mosquitto"));
    if path.exists() {
        Some(path)
    } else {
        gatehouse_testkit::skip(format!(
            "mosquitto not found at {} (install Debian's mosquitto package or set \
             MOSQUITTO_BIN)",
            path.display()
        ));
        None
    }
}

/// The gatehouse binary, if one is built that has a `serve` command: `GATEHOUSE_BIN`, or
/// `target/<profile>/gatehouse` beside this test's own directory.
fn gatehouse() -> Option<PathBuf> {
    let path = std::env::var_os("GATEHOUSE_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.join("gatehouse"))
        })?;
    let serves = path.exists()
        && std::process::Command::new(&path)
            .args(["serve", "--help"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !serves {
        gatehouse_testkit::skip(format!(
            "no gatehouse binary with a serve command at {} (build it with \
             `cargo build -p gatehouse` or set GATEHOUSE_BIN)",
            path.display()
        ));
        return None;
    }
    Some(path)
}

fn tiny_args(target: &str, scenario: &str, extra: &[&str]) -> BenchArgs {
    let mut argv = vec![
        "bench",
        "--target",
        target,
        "--scenario",
        scenario,
        "--duration",
        "400ms",
        "--warmup",
        "100ms",
        "--pairs",
        "2",
        "--rate",
        "400",
        "--fanin-publishers",
        "4",
        "--fanout-subscribers",
        "4",
        "--storm-connections",
        "30",
        "--concurrency",
        "4",
        "--idle-connections",
        "40",
        "--idle-hold",
        "100ms",
        "--source-addrs",
        "4",
        "--devices",
        "12",
        "--renewals",
        "4",
        "--revocations",
        "2",
        "--trust-devices",
        "6",
        "--trust-rounds",
        "3",
        "--trust-policy-rounds",
        "2",
        "--detect-devices",
        "8",
        "--detect-rounds",
        "2",
        "--detect-interval",
        "1s",
    ];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).expect("arguments parse").bench
}

fn scenario<'a>(report: &'a Report, name: &str) -> &'a ScenarioReport {
    let s = report
        .scenarios
        .iter()
        .find(|s| s.scenario == name)
        .expect("scenario in report");
    assert!(s.failures.is_empty(), "{name} failed: {:?}", s.failures);
    s
}

fn figure(s: &ScenarioReport, broker: BrokerKind, variant: &str, name: &str) -> f64 {
    s.figure(broker, variant, name)
        .unwrap_or_else(|| panic!("{} {variant} has no {name}: {s:#?}", s.scenario))
}

async fn run_mosquitto(scenario: &str, extra: &[&str]) -> Option<Report> {
    let bin = mosquitto()?;
    let bin = bin.to_str().expect("utf-8 path").to_owned();
    let mut extra = extra.to_vec();
    extra.extend_from_slice(&["--mosquitto-bin", &bin]);
    Some(
        execute(tiny_args("mosquitto", scenario, &extra))
            .await
            .expect("bench runs"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_pairs_deliver_at_qos_0_and_1_on_mosquitto() {
    let Some(report) = run_mosquitto("throughput", &[]).await else {
        return;
    };
    let s = scenario(&report, "throughput");
    for variant in ["qos0", "qos1"] {
        assert!(figure(s, BrokerKind::Mosquitto, variant, "delivered msg/s") > 0.0);
        assert!(figure(s, BrokerKind::Mosquitto, variant, "published msg/s") > 0.0);
    }
    assert_eq!(figure(s, BrokerKind::Mosquitto, "qos1", "lost"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_count_mode_delivers_every_message_on_mosquitto() {
    let Some(report) = run_mosquitto("throughput", &["--messages", "200", "--qos", "1"]).await
    else {
        return;
    };
    let s = scenario(&report, "throughput");
    assert!(figure(s, BrokerKind::Mosquitto, "qos1", "delivered msg/s") > 0.0);
    assert_eq!(figure(s, BrokerKind::Mosquitto, "qos1", "lost"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_percentiles_are_reported_on_mosquitto() {
    let Some(report) = run_mosquitto("latency", &["--mqtt-version", "3.1.1"]).await else {
        return;
    };
    let s = scenario(&report, "latency");
    for variant in ["qos0", "qos1"] {
        let p50 = figure(s, BrokerKind::Mosquitto, variant, "p50 µs");
        let p99 = figure(s, BrokerKind::Mosquitto, variant, "p99 µs");
        let p999 = figure(s, BrokerKind::Mosquitto, variant, "p99.9 µs");
        assert!(p50 > 0.0 && p50 <= p99 && p99 <= p999, "{p50} {p99} {p999}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanin_and_fanout_deliver_on_mosquitto() {
    let Some(report) = run_mosquitto("fanin,fanout", &["--qos", "1"]).await else {
        return;
    };
    for name in ["fanin", "fanout"] {
        let s = scenario(&report, name);
        assert!(figure(s, BrokerKind::Mosquitto, "qos1", "delivered msg/s") > 0.0);
        assert_eq!(figure(s, BrokerKind::Mosquitto, "qos1", "lost"), 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_connects_every_client_on_mosquitto() {
    let Some(report) = run_mosquitto("storm", &[]).await else {
        return;
    };
    let s = scenario(&report, "storm");
    assert_eq!(figure(s, BrokerKind::Mosquitto, "-", "connections"), 30.0);
    assert_eq!(figure(s, BrokerKind::Mosquitto, "-", "failed"), 0.0);
    assert!(figure(s, BrokerKind::Mosquitto, "-", "conn/s") > 0.0);
    assert!(figure(s, BrokerKind::Mosquitto, "-", "p99 setup ms") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_held_and_weighed_on_mosquitto() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let json_arg = json.to_str().expect("utf-8 path").to_owned();
    let Some(report) = run_mosquitto("idle", &["--json", &json_arg]).await else {
        return;
    };
    let s = scenario(&report, "idle");
    assert_eq!(figure(s, BrokerKind::Mosquitto, "-", "held"), 40.0);
    assert!(figure(s, BrokerKind::Mosquitto, "-", "broker RSS MiB") > 0.0);
    s.figure(BrokerKind::Mosquitto, "-", "broker B/conn")
        .expect("per-connection memory measured");
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    assert_eq!(written["scenarios"][0]["scenario"], "idle");
    assert!(written["machine"]["cores"].as_u64().is_some_and(|c| c >= 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_on_both_brokers_when_gatehouse_is_built() {
    let (Some(mosquitto), Some(gatehouse)) = (mosquitto(), gatehouse()) else {
        return;
    };
    let args = tiny_args(
        "both",
        "all",
        &[
            "--mosquitto-bin",
            mosquitto.to_str().expect("utf-8 path"),
            "--gatehouse-bin",
            gatehouse.to_str().expect("utf-8 path"),
        ],
    );
    let report = execute(args).await.expect("bench runs on both brokers");
    let s = scenario(&report, "throughput");
    assert!(figure(s, BrokerKind::Gatehouse, "qos1", "delivered msg/s") > 0.0);
    assert!(!s.ratios.is_empty());
    let s = scenario(&report, "idle");
    assert_eq!(figure(s, BrokerKind::Gatehouse, "-", "held"), 40.0);
    let s = scenario(&report, "enroll");
    assert_eq!(figure(s, BrokerKind::Gatehouse, "enroll", "done"), 12.0);
    assert!(
        s.rows.iter().all(|r| r.broker == BrokerKind::Gatehouse),
        "enrollment runs on Gatehouse only"
    );
    let s = scenario(&report, "trust");
    assert_eq!(figure(s, BrokerKind::Gatehouse, "policy", "enforced"), 6.0);
    assert!(
        s.rows.iter().all(|r| r.broker == BrokerKind::Gatehouse),
        "trust runs on Gatehouse only"
    );
    let s = scenario(&report, "detect");
    assert_eq!(figure(s, BrokerKind::Gatehouse, "all", "rounds"), 2.0);
    assert!(
        s.rows.iter().all(|r| r.broker == BrokerKind::Gatehouse),
        "detection runs on Gatehouse only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_measure_the_trust_gate_against_the_static_gate_and_mosquitto() {
    let (Some(mosquitto), Some(gatehouse)) = (mosquitto(), gatehouse()) else {
        return;
    };
    let args = tiny_args(
        "gates",
        "throughput",
        &[
            "--qos",
            "1",
            "--mosquitto-bin",
            mosquitto.to_str().expect("utf-8 path"),
            "--gatehouse-bin",
            gatehouse.to_str().expect("utf-8 path"),
        ],
    );
    let report = execute(args)
        .await
        .expect("bench runs on the three targets");
    let s = scenario(&report, "throughput");
    for broker in [
        BrokerKind::Gatehouse,
        BrokerKind::GatehouseStatic,
        BrokerKind::Mosquitto,
    ] {
        assert!(
            figure(s, broker, "qos1", "delivered msg/s") > 0.0,
            "{broker:?}"
        );
        assert_eq!(figure(s, broker, "qos1", "lost"), 0.0, "{broker:?}");
    }
    let of: Vec<Comparison> = s.ratios.iter().map(|r| r.of).collect();
    assert_eq!(
        of,
        vec![
            Comparison::GatehouseOverMosquitto,
            Comparison::TrustOverStatic
        ]
    );
    assert!(s.ratios[1].ratios[0].ratio.is_some_and(|r| r > 0.0));
    let target = report
        .targets
        .iter()
        .find(|t| t.target.starts_with("QoS 1 throughput, trust gate"))
        .expect("trust gate target");
    assert!(target.met.is_some(), "the trust gate's cost is judged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_and_policy_changes_are_enforced_on_enrolled_sessions_on_gatehouse() {
    let Some(gatehouse) = gatehouse() else {
        return;
    };
    let args = tiny_args(
        "gatehouse",
        "trust",
        &["--gatehouse-bin", gatehouse.to_str().expect("utf-8 path")],
    );
    let report = execute(args).await.expect("trust bench runs");
    let s = scenario(&report, "trust");
    let g = BrokerKind::Gatehouse;
    assert_eq!(figure(s, g, "pin", "rounds"), 3.0);
    assert_eq!(figure(s, g, "pin", "sessions"), 6.0);
    // Every pin was seen on the wire: the pinned device's probe stopped arriving, the
    // unpinned device's did not.
    assert_eq!(figure(s, g, "pin", "enforced"), 3.0);
    assert_eq!(figure(s, g, "pin", "failed"), 0.0);
    assert!(figure(s, g, "pin", "max ms") >= figure(s, g, "pin", "p50 ms"));
    assert!(figure(s, g, "pin", "notified p50 ms") > 0.0);
    // Every policy change removed one subscription per session.
    assert_eq!(figure(s, g, "policy", "rounds"), 2.0);
    assert_eq!(figure(s, g, "policy", "enforced"), 6.0);
    assert_eq!(figure(s, g, "policy", "failed"), 0.0);
    assert!(figure(s, g, "policy", "undo p50 ms") > 0.0);
    assert!(figure(s, g, "policy", "broker RSS MiB") > 0.0);
    let target = report
        .targets
        .iter()
        .find(|t| t.target.starts_with("policy change"))
        .expect("policy change target");
    assert!(target.met.is_some(), "the policy change goal is judged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_enroll_renew_and_are_disconnected_when_revoked_on_gatehouse() {
    let Some(gatehouse) = gatehouse() else {
        return;
    };
    let args = tiny_args(
        "gatehouse",
        "enroll",
        &["--gatehouse-bin", gatehouse.to_str().expect("utf-8 path")],
    );
    let report = execute(args).await.expect("enrollment bench runs");
    let s = scenario(&report, "enroll");
    let g = BrokerKind::Gatehouse;
    assert_eq!(figure(s, g, "enroll", "done"), 12.0);
    assert_eq!(figure(s, g, "enroll", "failed"), 0.0);
    assert!(figure(s, g, "enroll", "ops/s") > 0.0);
    assert!(figure(s, g, "enroll", "p99 ms") >= figure(s, g, "enroll", "p50 ms"));
    assert!(figure(s, g, "enroll", "broker RSS MiB") > 0.0);
    assert_eq!(figure(s, g, "renew", "done"), 4.0);
    assert_eq!(figure(s, g, "renew", "failed"), 0.0);
    // Both revoked sessions were seen to end, and the revoked certificate could not
    // reconnect.
    assert_eq!(figure(s, g, "revoke", "done"), 2.0);
    assert_eq!(figure(s, g, "revoke", "failed"), 0.0);
    assert!(figure(s, g, "revoke", "max ms") >= figure(s, g, "revoke", "p50 ms"));
    let target = report
        .targets
        .iter()
        .find(|t| t.target.starts_with("EST enrollments/s"))
        .expect("enrollment target");
    assert!(target.met.is_some(), "the enrollment goal is judged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_and_scanning_devices_see_enforcement_on_their_sessions_on_gatehouse() {
    let Some(gatehouse) = gatehouse() else {
        return;
    };
    let args = tiny_args(
        "gatehouse",
        "detect",
        &["--gatehouse-bin", gatehouse.to_str().expect("utf-8 path")],
    );
    let report = execute(args).await.expect("detect bench runs");
    let s = scenario(&report, "detect");
    let g = BrokerKind::Gatehouse;
    assert_eq!(figure(s, g, "all", "rounds"), 2.0);
    assert_eq!(figure(s, g, "all", "devices"), 8.0);
    // One flood and one scan, each seen enforced on the attacker's own session: a probe
    // refused, the gate's removal notice, or the session ended. No time is judged.
    for variant in ["flood", "scan"] {
        assert_eq!(figure(s, g, variant, "rounds"), 1.0, "{variant}");
        assert_eq!(figure(s, g, variant, "enforced"), 1.0, "{variant}: {s:#?}");
        assert!(figure(s, g, variant, "max ms") >= figure(s, g, variant, "p50 ms"));
    }
    // The flood is blocked outright: the publish path closes or the session ends.
    assert_eq!(figure(s, g, "flood", "blocked"), 1.0, "{s:#?}");
    assert!(figure(s, g, "all", "observations") > 0.0);
    assert!(figure(s, g, "all", "findings") > 0.0);
    assert!(figure(s, g, "all", "broker RSS MiB") > 0.0);
    let target = report
        .targets
        .iter()
        .find(|t| t.target.starts_with("time to block"))
        .expect("time-to-block target");
    assert_eq!(target.met, None, "judged at 10,000 devices only");
}
