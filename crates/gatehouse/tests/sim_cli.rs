//! `gatehouse sim` pointed at the wrong place: it checks the server's listeners before the
//! run and stops at once, naming the address it tried and why it failed, with a non-zero
//! exit — instead of enrolling nothing, connecting nothing and reporting every attack
//! missed.

mod support;

use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use support::Gatehouse;
use tokio::process::Command;

/// Longest the simulator may take to give up; a run that did not check would take the
/// warm-up, the attacks and the verification (about 47 s) before failing.
const GIVE_UP: Duration = Duration::from_secs(30);

/// A loopback port nothing listens on.
fn closed_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

async fn sim(gh: &Gatehouse, args: &[String]) -> Result<Output> {
    let mut cmd = Command::new(support::binary());
    cmd.arg("sim")
        .args(args)
        .arg("--ca")
        .arg(&gh.listeners.ca)
        .args(["--devices", "10", "--warmup", "1s"])
        .env("GATEHOUSE_TOKEN", &gh.token)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(GIVE_UP, cmd.output())
        .await
        .with_context(|| format!("gatehouse sim {args:?} still running after {GIVE_UP:?}"))?
        .context("running gatehouse sim")
}

#[tokio::test]
async fn sim_against_a_closed_port_fails_at_once_naming_the_address_and_the_cause() -> Result<()> {
    let gh = Gatehouse::start_default().await?;

    // The HTTPS port is wrong.
    let port = closed_port()?;
    let out = sim(&gh, &[format!("--server=https://localhost:{port}")]).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "exited {}: {stderr}", out.status);
    ensure!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("HTTPS"),
        "the error does not name the HTTPS address: {stderr}"
    );
    ensure!(
        stderr.to_lowercase().contains("connection refused"),
        "the error does not say why: {stderr}"
    );
    ensure!(
        !stderr.contains("enrolling") && out.stdout.is_empty(),
        "the run went on: {stderr}"
    );

    // HTTPS is right, MQTTS (by default the server's host, port 8883) is not.
    let port = closed_port()?;
    let out = sim(
        &gh,
        &[
            format!("--server=https://localhost:{}", gh.listeners.https.port()),
            format!("--mqtt=localhost:{port}"),
        ],
    )
    .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "exited {}: {stderr}", out.status);
    ensure!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("MQTTS"),
        "the error does not name the MQTTS address: {stderr}"
    );
    ensure!(
        stderr.to_lowercase().contains("connection refused"),
        "the error does not say why: {stderr}"
    );
    ensure!(
        !stderr.contains("enrolling") && out.stdout.is_empty(),
        "the run went on: {stderr}"
    );

    // A refused token is named as such, before the run.
    let out = {
        let mut cmd = Command::new(support::binary());
        cmd.arg("sim")
            .arg(format!(
                "--server=https://localhost:{}",
                gh.listeners.https.port()
            ))
            .arg("--ca")
            .arg(&gh.listeners.ca)
            .env("GATEHOUSE_TOKEN", "gha_nobody_wrong")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        tokio::time::timeout(GIVE_UP, cmd.output())
            .await
            .context("gatehouse sim with a wrong token still running")??
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "exited {}: {stderr}", out.status);
    ensure!(
        stderr.contains("401") && !stderr.contains("enrolling"),
        "{stderr}"
    );
    Ok(())
}

/// Against a server without a plain MQTT listener the brute force cannot run: it is
/// reported as skipped with the reason, neither detected nor missed, beside a scenario
/// that ran and was detected. A run where every scenario was skipped does not pass.
#[tokio::test]
async fn scenarios_that_cannot_run_are_reported_skipped_not_missed() -> Result<()> {
    let gh = Gatehouse::start_default().await?;
    ensure!(
        gh.listeners.mqtt.is_none(),
        "the server has a plain listener"
    );
    let target = [
        format!("--server=https://localhost:{}", gh.listeners.https.port()),
        format!("--mqtt=localhost:{}", gh.listeners.mqtts.port()),
        "--json".to_owned(),
        "--scenario=brute-force".to_owned(),
    ];

    let mut args = target.to_vec();
    args.push("--scenario=publish-flood".to_owned());
    let out = sim(&gh, &args).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).with_context(|| format!("no JSON report: {stderr}"))?;
    let scenarios = report["scenarios"].as_array().context("scenarios")?;
    let brute = scenarios
        .iter()
        .find(|s| s["scenario"] == "brute_force")
        .with_context(|| format!("brute_force not in the report: {report:#}"))?;
    ensure!(
        brute["outcome"] == "skipped"
            && brute["detected"] == false
            && brute["skipped"]
                .as_str()
                .is_some_and(|r| r.contains("--legacy")),
        "{brute:#}"
    );
    let flood = scenarios
        .iter()
        .find(|s| s["scenario"] == "publish_flood")
        .with_context(|| format!("publish_flood not in the report: {report:#}"))?;
    ensure!(
        flood["outcome"] == "detected" && flood["skipped"].is_null(),
        "{flood:#}\n{stderr}"
    );
    ensure!(
        report["passed"] == true && out.status.success(),
        "{}\n{stderr}",
        report["failures"]
    );
    ensure!(stderr.contains("skipping brute_force"), "{stderr}");

    // Only the brute force: nothing ran, so no PASS.
    let out = sim(&gh, &target).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).with_context(|| format!("no JSON report: {stderr}"))?;
    ensure!(!out.status.success(), "exited {}: {stderr}", out.status);
    ensure!(report["passed"] == false, "{report:#}");
    ensure!(
        report["failures"][0]
            .as_str()
            .is_some_and(|f| f.starts_with("no attack scenario ran")),
        "{}",
        report["failures"]
    );
    ensure!(
        report["scenarios"][0]["outcome"] == "skipped",
        "{}",
        report["scenarios"]
    );
    Ok(())
}
