//! Clients and tools we did not write, against the real binary: OpenSSL checks the
//! certificates `gatehouse ca issue` writes and completes a mutual-TLS handshake;
//! mosquitto_pub/mosquitto_sub (3.1.1 and 5.0, QoS 0/1/2, retained messages) and
//! paho-mqtt (Python) exchange messages over mutual TLS.
//!
//! Each test is skipped with a message when its tool is missing, except in CI (`CI`
//! set), which installs them: see `have_program`.

mod support;

use std::path::Path;
use std::process::{Output, Stdio};

use anyhow::{Context, Result, ensure};
use support::{DeviceFiles, Gatehouse, LAB_POLICY, Options, WAIT, have_program};
use tokio::process::Command;

async fn run(program: &str, args: &[&str]) -> Result<Output> {
    tokio::time::timeout(
        WAIT,
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("{program} {args:?} hung"))?
    .with_context(|| format!("running {program}"))
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 temporary path")
}

#[tokio::test]
async fn issued_certificates_verify_with_openssl() -> Result<()> {
    if !have_program("openssl", &["version"]) {
        return Ok(());
    }
    let gh = Gatehouse::start_default().await?;
    let dev = gh.issue_files("meter-1").await?;

    let out = run(
        "openssl",
        &[
            "verify",
            "-CAfile",
            path(&dev.ca)?,
            "-purpose",
            "sslclient",
            path(&dev.cert)?,
        ],
    )
    .await?;
    ensure!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout)
                .trim_end()
                .ends_with("OK"),
        "openssl verify refused the device certificate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run(
        "openssl",
        &[
            "x509",
            "-in",
            path(&dev.cert)?,
            "-noout",
            "-ext",
            "subjectAltName,extendedKeyUsage",
        ],
    )
    .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("URI:gatehouse://default/device/meter-1"),
        "SAN: {text}"
    );
    ensure!(
        text.contains("TLS Web Client Authentication"),
        "EKU: {text}"
    );

    // The private key is readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dev.key)?.permissions().mode();
    ensure!(mode & 0o077 == 0, "device key has mode {mode:o}");

    // The CA that `ca issue` wrote is the one the server uses.
    ensure!(
        std::fs::read(&dev.ca)? == std::fs::read(&gh.listeners.ca)?,
        "ca issue wrote a different CA from the server's"
    );
    Ok(())
}

#[tokio::test]
async fn openssl_s_client_completes_mutual_tls_and_is_refused_without_a_certificate() -> Result<()>
{
    if !have_program("openssl", &["version"]) {
        return Ok(());
    }
    let gh = Gatehouse::start_default().await?;
    let dev = gh.issue_files("probe").await?;
    let connect = gh.listeners.mqtts.to_string();
    let base = [
        "s_client",
        "-connect",
        &connect,
        "-CAfile",
        path(&dev.ca)?,
        "-verify_return_error",
        "-verify_ip",
        "127.0.0.1",
        "-brief",
    ];
    let mut with_cert: Vec<&str> = base.to_vec();
    with_cert.extend(["-cert", path(&dev.cert)?, "-key", path(&dev.key)?]);
    let out = run("openssl", &with_cert).await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && err.contains("Verification: OK"),
        "mutual TLS with openssl failed: {err}"
    );

    // Keep reading after our end of input, until the server's alert arrives.
    let mut without: Vec<&str> = base.to_vec();
    without.push("-ign_eof");
    let out = run("openssl", &without).await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("certificate required"),
        "openssl without a client certificate was not refused: {err}"
    );
    gh.wait_metric(
        "gatehouse_tls_failures_total{reason=\"no_client_certificate\"}",
        1.0,
    )
    .await?;
    Ok(())
}

/// mosquitto's TLS options for a device.
fn tls_args(dev: &DeviceFiles) -> Result<Vec<String>> {
    Ok(vec![
        "--cafile".into(),
        path(&dev.ca)?.into(),
        "--cert".into(),
        path(&dev.cert)?.into(),
        "--key".into(),
        path(&dev.key)?.into(),
        "-i".into(),
        dev.device.clone(),
    ])
}

/// Starts mosquitto_sub for one message, then runs mosquitto_pub until the subscriber has
/// it (mosquitto_sub buffers its output in a pipe, so it cannot tell us when its SUBACK
/// came). Returns what the subscriber printed.
async fn pub_sub(
    gh: &Gatehouse,
    sub: &DeviceFiles,
    publisher: &DeviceFiles,
    version: &str,
    qos: u8,
    topic: &str,
    payload: &str,
) -> Result<String> {
    let port = gh.listeners.mqtts.port().to_string();
    let qos = qos.to_string();
    let common = ["-h", "localhost", "-p", &port, "-V", version, "-q", &qos];
    let mut child = Command::new("mosquitto_sub")
        .args(common)
        .args(tls_args(sub)?)
        .args(["-t", topic, "-C", "1", "-W", "15", "-F", "MSG %q %r %t %p"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut args: Vec<String> = common.iter().map(|s| (*s).to_owned()).collect();
    args.extend(tls_args(publisher)?);
    args.extend(["-t".into(), topic.into(), "-m".into(), payload.into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "mosquitto_sub ({version}, QoS {qos}) got nothing"
        );
        let out = run("mosquitto_pub", &args).await?;
        ensure!(
            out.status.success(),
            "mosquitto_pub ({version}, QoS {qos}) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let out = tokio::time::timeout(WAIT, child.wait_with_output()).await??;
    ensure!(
        out.status.success(),
        "mosquitto_sub exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}

#[tokio::test]
async fn mosquitto_clients_exchange_messages_over_mutual_tls() -> Result<()> {
    if !have_program("mosquitto_sub", &["--help"]) || !have_program("mosquitto_pub", &["--help"]) {
        return Ok(());
    }
    let gh = Gatehouse::start(Options::extra(LAB_POLICY)).await?;
    let sub = gh.issue_files("mq-sub").await?;
    let publisher = gh.issue_files("mq-pub").await?;
    for version in ["mqttv311", "mqttv5"] {
        for qos in 0..=2u8 {
            let topic = format!("lab/mosquitto/{version}/q{qos}");
            let payload = format!("hello-{version}-{qos}");
            let line = pub_sub(&gh, &sub, &publisher, version, qos, &topic, &payload).await?;
            ensure!(
                line == format!("MSG {qos} 0 {topic} {payload}"),
                "{version} QoS {qos}: the subscriber printed {line:?}"
            );
        }
    }

    // A retained message reaches a subscriber that comes later, flagged as retained.
    let port = gh.listeners.mqtts.port().to_string();
    for version in ["mqttv311", "mqttv5"] {
        let topic = format!("lab/mosquitto/{version}/retained");
        let mut args = vec![
            "-h".to_owned(),
            "localhost".into(),
            "-p".into(),
            port.clone(),
            "-V".into(),
            version.into(),
            "-q".into(),
            "1".into(),
        ];
        let mut publish = args.clone();
        publish.extend(tls_args(&publisher)?);
        publish.extend([
            "-r".into(),
            "-t".into(),
            topic.clone(),
            "-m".into(),
            "last-value".into(),
        ]);
        let publish: Vec<&str> = publish.iter().map(String::as_str).collect();
        let out = run("mosquitto_pub", &publish).await?;
        ensure!(out.status.success(), "retained publish failed: {out:?}");

        args.extend(tls_args(&sub)?);
        args.extend([
            "-t".into(),
            topic.clone(),
            "-C".into(),
            "1".into(),
            "-W".into(),
            "10".into(),
            "-F".into(),
            "%r %t %p".into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run("mosquitto_sub", &args).await?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && text.trim_end() == format!("1 {topic} last-value"),
            "{version}: a later subscriber got {text:?} ({})",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[tokio::test]
async fn mosquitto_without_a_client_certificate_is_refused() -> Result<()> {
    if !have_program("mosquitto_pub", &["--help"]) {
        return Ok(());
    }
    let gh = Gatehouse::start_default().await?;
    let dev = gh.issue_files("anon").await?;
    let port = gh.listeners.mqtts.port().to_string();
    let out = run(
        "mosquitto_pub",
        &[
            "-h",
            "localhost",
            "-p",
            &port,
            "--cafile",
            path(&dev.ca)?,
            "-i",
            "anon",
            "-t",
            "devices/anon/x",
            "-m",
            "hi",
        ],
    )
    .await?;
    ensure!(
        !out.status.success(),
        "mosquitto_pub without a certificate succeeded"
    );
    // And with a certificate whose device is not the client id.
    let other = gh.issue_files("someone-else").await?;
    let mut args = vec!["-h", "localhost", "-p", &port, "-V", "mqttv5"];
    let tls = [
        "--cafile",
        path(&other.ca)?,
        "--cert",
        path(&other.cert)?,
        "--key",
        path(&other.key)?,
    ];
    args.extend(tls);
    args.extend(["-i", "anon", "-t", "devices/anon/x", "-m", "hi"]);
    let out = run("mosquitto_pub", &args).await?;
    ensure!(
        !out.status.success(),
        "mosquitto_pub with another device's certificate succeeded"
    );
    Ok(())
}

#[tokio::test]
async fn paho_round_trip_carries_v5_properties() -> Result<()> {
    if !have_program("python3", &["--version"]) {
        return Ok(());
    }
    let probe = run("python3", &["-c", "import paho.mqtt.client"]).await?;
    if !probe.status.success() {
        gatehouse_testkit::skip("paho-mqtt is not installed (pip install paho-mqtt)");
        return Ok(());
    }
    let gh = Gatehouse::start(Options::extra(LAB_POLICY)).await?;
    let sub = gh.issue_files("paho-sub").await?;
    let publisher = gh.issue_files("paho-pub").await?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/paho_round_trip.py");
    let port = gh.listeners.mqtts.port().to_string();
    for protocol in ["5", "311"] {
        let topic = format!("lab/paho/v{protocol}");
        let out = run(
            "python3",
            &[
                path(&script)?,
                "--host",
                "localhost",
                "--port",
                &port,
                "--ca",
                path(&sub.ca)?,
                "--sub-id",
                "paho-sub",
                "--sub-cert",
                path(&sub.cert)?,
                "--sub-key",
                path(&sub.key)?,
                "--pub-id",
                "paho-pub",
                "--pub-cert",
                path(&publisher.cert)?,
                "--pub-key",
                path(&publisher.key)?,
                "--topic",
                &topic,
                "--protocol",
                protocol,
            ],
        )
        .await?;
        ensure!(
            out.status.success(),
            "paho (MQTT {protocol}) failed with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        ensure!(summary["topic"] == topic.as_str(), "{summary}");
    }
    Ok(())
}
