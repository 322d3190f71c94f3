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

/// Without `--once` the demo keeps its fleet running after the report, so that the
/// dashboard it advertises shows live sessions: they stay open after the scripted
/// attacks, an occasional attack is launched and reported, and Ctrl-C stops it cleanly.
#[test]
fn demo_keeps_the_fleet_running_until_interrupted() -> Result<()> {
    use std::io::BufRead as _;
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir()?;
    let mut child = Command::new(support::binary())
        .args([
            "demo",
            "--devices",
            "20",
            "--scenario",
            "publish-flood",
            "--warmup",
            "1s",
            "--attack-for",
            "5s",
            "--attack-every",
            "2s",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting gatehouse demo")?;
    let pid = child.id();
    // Kill the demo whatever happens below.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = child.stderr.take().context("stderr")?;
    let mut child = Reap(child);
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let mut wait_for = |what: &str, within: Duration| -> Result<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                    if line.contains(what) {
                        return Ok(line);
                    }
                }
                Err(_) => anyhow::bail!("no line with {what:?} on standard error: {seen}"),
            }
        }
    };
    let line = wait_for("Dashboard: https://localhost:", Duration::from_secs(240))?;
    let port: u16 = line
        .split("https://localhost:")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no port in {line:?}"))?;
    let ca = dir.path().join("data").join("ca").join("ca.crt");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let open = || -> Result<f64> {
        let text = rt.block_on(https_get(port, &ca, "/metrics"))?;
        Ok(support::metric_value(&text, "gatehouse_connections_open"))
    };
    // The 19 benign devices and the console, at least most of them, stay connected...
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sessions = open()?;
    while sessions < 15.0 {
        ensure!(
            Instant::now() < deadline,
            "only {sessions} connections open after the report: {seen}"
        );
        std::thread::sleep(Duration::from_millis(200));
        sessions = open()?;
    }
    // ...through an occasional attack, launched and reported on standard error...
    wait_for("attack: publish_flood by a new", Duration::from_secs(60))?;
    let outcome = wait_for("attack outcome: publish_flood by ", Duration::from_secs(90))?;
    ensure!(
        outcome.contains(": detected") && outcome.contains("Gatehouse:"),
        "{outcome}"
    );
    let later = open()?;
    ensure!(
        later >= 15.0,
        "{later} connections open after the occasional attack: {seen}"
    );
    // ...until Ctrl-C, after which the demo stops cleanly.
    let status = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -INT failed");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.0.try_wait()? {
            break s;
        }
        ensure!(
            Instant::now() < deadline,
            "the demo did not exit after SIGINT: {seen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        seen.push_str(&line);
        seen.push('\n');
    }
    ensure!(status.success(), "the demo exited with {status}: {seen}");
    ensure!(seen.contains("stopping"), "{seen}");
    Ok(())
}

/// `GET path` on the demo's HTTPS listener, trusting its CA.
async fn https_get(port: u16, ca: &std::path::Path, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let pem = std::fs::read_to_string(ca).with_context(|| format!("reading {}", ca.display()))?;
    let anchors = gatehouse_pki::load_certs_pem(&pem)?;
    let config = gatehouse_pki::client_config(&anchors, None)?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut response = Vec::new();
    if let Err(e) = tls.read_to_end(&mut response).await
        && response.is_empty()
    {
        return Err(e.into());
    }
    let (status, body) = support::http_status_and_body(&response)?;
    ensure!(status == 200, "{path} answered {status}: {body}");
    Ok(body)
}
