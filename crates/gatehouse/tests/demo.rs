//! `gatehouse demo --once --json` as the README runs it, on a small fleet: the real binary
//! starts its own server, the simulated fleet enrolls over EST and connects over MQTTS,
//! every attack scenario runs, and the report must show each detected and no benign
//! device restricted, quarantined or with a finding above low. The fleet's REST calls authenticate with the API token of the
//! operator `demo`, which the demo creates before the server's first start.

mod support;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use gatehouse_store::{OperatorName, OperatorStore as _, Role, SqliteStore};
use serde_json::Value;

const SCENARIOS: [&str; 8] = [
    "brute_force",
    "publish_flood",
    "topic_scanning",
    "wildcard_harvesting",
    "exfiltration",
    "spoofed_readings",
    "vulnerable_firmware",
    "cloned_certificate",
];

#[test]
fn demo_detects_every_attack_scenario_and_restricts_no_benign_device() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new(support::binary());
    cmd.args(["demo", "--once", "--json", "--devices", "60"])
        .arg("--data-dir")
        .arg(dir.path());
    let mirai = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/credentials/mirai-default-credentials.csv");
    if mirai.exists() {
        cmd.arg("--credentials").arg(&mirai);
    } else {
        // Not a skip: the demo runs, its brute force with the built-in list.
        gatehouse_testkit::skip(format!(
            "{} is absent; the brute force used the built-in list",
            mirai.display()
        ));
    }
    let out = cmd.output().context("running gatehouse demo")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_str(&stdout)
        .with_context(|| format!("the report is not JSON: {stdout}\n{stderr}"))?;

    let scenarios = report["scenarios"].as_array().context("scenarios")?;
    for name in SCENARIOS {
        let s = scenarios
            .iter()
            .find(|s| s["scenario"] == name)
            .with_context(|| format!("scenario {name} did not run: {stderr}"))?;
        ensure!(
            s["detected"] == true,
            "scenario {name} was not detected: {s:#}\n{stderr}"
        );
    }
    ensure!(
        report["benign_quarantined"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "benign devices were quarantined: {}",
        report["benign_quarantined"]
    );
    // For an inline gate a false positive is a working device cut off: not one benign
    // device restricted, and none with a finding above low.
    ensure!(
        report["benign_restricted"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "benign devices were restricted: {}; worst {:#}",
        report["benign_restricted"],
        report["worst_benign"]
    );
    ensure!(
        report["benign_above_low"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "benign devices had findings above low: {}; worst {:#}",
        report["benign_above_low"],
        report["worst_benign"]
    );
    ensure!(
        report["benign"].as_u64() == Some(52) && report["compromised"].as_u64() == Some(8),
        "the fleet is not the one asked for: {report:#}"
    );
    ensure!(
        report["load"]["enrollment"]["count"].as_u64() == Some(61),
        "every device and the console enroll: {}",
        report["load"]["enrollment"]
    );
    ensure!(report["passed"] == true, "{}", report["failures"]);
    ensure!(out.status.success(), "the demo exited with {}", out.status);
    // The narration went to standard error, the report alone to standard output.
    ensure!(stderr.contains("enrolling"), "no narration: {stderr}");
    // The demo's operator existed before the server started: no `admin` with a password.
    ensure!(
        !stderr.contains("First start: created the operator"),
        "the server created a first admin: {stderr}"
    );
    let store = SqliteStore::open(dir.path().join("data").join("gatehouse.db"))?;
    let demo = store
        .get_operator(&OperatorName::new("demo")?)?
        .context("no operator demo in the registry")?;
    ensure!(
        demo.role == Role::Admin && !demo.has_password && !demo.disabled,
        "{demo:?}"
    );
    ensure!(
        store.count_operators()? == 1,
        "{:?}",
        store.list_operators(None)?
    );
    let tokens = store.list_api_tokens(Some(&demo.name))?;
    ensure!(
        tokens.len() == 1 && tokens[0].revoked_at.is_none(),
        "{tokens:?}"
    );
    Ok(())
}
