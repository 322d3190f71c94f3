//! Detection and response against the real binary: devices driven by real MQTT clients
//! (rumqttc, mosquitto_pub) start flooding, scanning, brute-forcing or lying about their
//! readings; the default playbooks quarantine them on their open sessions; the incident
//! shows the evidence (curl); an operator releases them and their trust recovers as the
//! penalties decay; a webhook receives the finding signed (checked with openssl). Skipped
//! with a message when curl, openssl or mosquitto_pub is missing, except in CI.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{PubAckReason, SubscribeReasonCode};
use serde_json::{Value, json};
use support::clients::V5;
use support::lab::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn skip() -> bool {
    if tools() && support::have_program("mosquitto_pub", &["--help"]) {
        return false;
    }
    gatehouse_testkit::skip("curl, openssl or mosquitto_pub is missing");
    true
}

/// A lab with manufacturer `acme` and the thermostat model, detection ticking fast and
/// behaviour penalties halving every few seconds (so recovery fits in a test).
async fn lab(extra: &str) -> Result<Lab> {
    let config =
        format!("[detect]\ntick = \"100ms\"\n\n[trust.score]\nhalf_life = \"3s\"\n\n{extra}");
    let lab = Lab::start_with(&config).await?;
    lab.register_acme(gatehouse_pki::ManufacturerCa::new("Acme")?.cert_pem())?;
    let (s, body) = lab.upload_profile("thermo", THERMO_PROFILE)?;
    ensure!(s == 201, "profile: {s} {}", String::from_utf8_lossy(&body));
    Ok(lab)
}

/// A thermostat enrolled with a token and connected over MQTT 5; returns its key and
/// certificate files and its client.
async fn thermostat(lab: &Lab, name: &str) -> Result<(std::path::PathBuf, std::path::PathBuf, V5)> {
    let token = lab.model_token("thermo")?;
    let (key, cert) = lab.enroll_with_token(name, &token)?;
    let tls = tls_from_files(lab, &key, &cert)?;
    let client = V5::connect_as(lab.gh.listeners.mqtts, tls, name).await?;
    Ok((key, cert, client))
}

/// The incidents about a device.
fn incidents(lab: &Lab, name: &str) -> Result<Vec<Value>> {
    let (s, v) = lab.api(
        "GET",
        &format!("/api/v1/incidents?device=default/{name}"),
        None,
    )?;
    ensure!(s == 200, "incidents: {s} {v}");
    Ok(v["incidents"].as_array().cloned().unwrap_or_default())
}

/// Waits for an incident of `kind` about the device; returns its detail.
async fn incident_of(lab: &Lab, name: &str, kind: &str) -> Result<Value> {
    let id = eventually(
        support::WAIT,
        &format!("a {kind} incident on {name}"),
        || {
            Ok(incidents(lab, name)?
                .into_iter()
                .find(|i| i["kind"] == kind)
                .map(|i| id_text(&i["id"])))
        },
    )
    .await?;
    let (s, v) = lab.api("GET", &format!("/api/v1/incidents/{id}"), None)?;
    ensure!(s == 200, "incident {id}: {s} {v}");
    Ok(v)
}

fn id_text(v: &Value) -> String {
    v.as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| v.to_string())
}

/// Whether the session can still publish telemetry: QoS 1, and the PUBACK's reason.
async fn publish_acked(client: &mut V5, name: &str) -> Result<PubAckReason> {
    client
        .client
        .publish(
            format!("devices/{name}/telemetry"),
            QoS::AtLeastOnce,
            false,
            br#"{"temp":21.5}"#.to_vec(),
        )
        .await?;
    let ack = client.puback().await?;
    Ok(ack.reason)
}

/// The device's command topic: a subscription its profile grants while it is trusted.
fn commands(name: &str) -> String {
    format!("devices/{name}/commands/+")
}

/// The SUBACK's reason code for one subscription.
async fn suback_code(client: &mut V5, filter: &str) -> Result<SubscribeReasonCode> {
    client.client.subscribe(filter, QoS::AtLeastOnce).await?;
    let codes = client.suback().await?;
    match codes.as_slice() {
        [code] => Ok(*code),
        _ => anyhow::bail!("one filter, {} reason codes: {codes:?}", codes.len()),
    }
}

/// Before anything happens: the trusted device's session may publish its telemetry and
/// holds a subscription to its commands, so that a quarantine has something to take.
async fn profile_is_open(client: &mut V5, name: &str) -> Result<()> {
    let reason = publish_acked(client, name).await?;
    ensure!(
        reason == PubAckReason::Success,
        "a trusted device's telemetry is refused: {reason:?}"
    );
    let code = suback_code(client, &commands(name)).await?;
    ensure!(
        matches!(code, SubscribeReasonCode::Success(_)),
        "a trusted device's command subscription is refused: {code:?}"
    );
    Ok(())
}

/// The quarantine reached the device's own open MQTT 5 session: it is told on its notice
/// topic that its command subscription was taken, its telemetry is refused with PUBACK
/// 0x87 and subscribing to its commands again with SUBACK 0x87. (The same packets were
/// accepted before, in [`profile_is_open`]: with no quarantine this fails.)
async fn quarantine_is_enforced_on_its_session(client: &mut V5, name: &str) -> Result<()> {
    let notice = client
        .publish()
        .await
        .context("no notice of the removed subscription")?;
    ensure!(
        notice.topic.as_ref() == format!("$gatehouse/{name}/notice").as_bytes(),
        "unexpected message {notice:?}"
    );
    ensure!(
        notice.properties.as_ref().is_some_and(|p| p
            .user_properties
            .contains(&("gatehouse-notice".into(), "subscriptions-removed".into()))),
        "the notice is not marked as one: {notice:?}"
    );
    let body: Value = serde_json::from_slice(&notice.payload)?;
    ensure!(
        body["event"] == "subscriptions_removed" && body["filters"] == json!([commands(name)]),
        "{body}"
    );
    let reason = publish_acked(client, name).await?;
    ensure!(
        reason == PubAckReason::NotAuthorized,
        "a quarantined device's telemetry is refused, got PUBACK {reason:?}"
    );
    let code = suback_code(client, &commands(name)).await?;
    ensure!(
        code == SubscribeReasonCode::NotAuthorized,
        "a quarantined device may not subscribe to its commands, got SUBACK {code:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn flooding_device_is_quarantined_then_released_and_its_trust_recovers() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = lab("").await?;
    let (_key, _cert, mut client) = thermostat(&lab, "flooder").await?;
    ensure!(
        publish_acked(&mut client, "flooder").await? == PubAckReason::Success,
        "a normal publish is allowed"
    );
    lab.wait_for_tier("flooder", "trusted", support::WAIT)
        .await?;

    // A profile of 5 messages a second; the device sends thousands.
    let started = Instant::now();
    for i in 0..3000 {
        client
            .client
            .publish(
                "devices/flooder/telemetry",
                QoS::AtMostOnce,
                false,
                format!("{{\"temp\":{}}}", 20 + i % 3).into_bytes(),
            )
            .await?;
    }
    lab.wait_for_tier("flooder", "quarantined", support::WAIT)
        .await?;
    eprintln!("quarantined {:?} after the flood began", started.elapsed());
    // The flood's penalties alone may score it into quarantine a moment before the
    // playbook's pin lands; the pin is what holds it there, so wait for that too.
    eventually(support::WAIT, "the playbook's quarantine pin", || {
        let v = lab.trust("flooder")?;
        Ok((v["assessment"]["pin"]["tier"] == "quarantined").then_some(()))
    })
    .await?;

    // The open session is narrowed: its telemetry is refused now.
    let reason = publish_acked(&mut client, "flooder").await?;
    ensure!(
        reason == PubAckReason::NotAuthorized,
        "a quarantined device's telemetry is refused, got {reason:?}"
    );

    // The incident shows what was seen and what was done.
    let detail = incident_of(&lab, "flooder", "publish_flood").await?;
    let incident = &detail["incident"];
    ensure!(
        incident["technique"]
            .as_str()
            .is_some_and(|t| t.starts_with('T')),
        "{detail:#}"
    );
    let evidence = &detail["findings"][0]["finding"]["evidence"];
    ensure!(
        evidence.as_object().is_some_and(|e| !e.is_empty()),
        "the finding carries its evidence: {detail:#}"
    );
    let timeline = detail["timeline"].as_array().context("timeline")?;
    ensure!(
        timeline
            .iter()
            .any(|e| e["event"]["type"] == "action" && e["event"]["kind"] == "quarantine"),
        "the quarantine is on the timeline: {detail:#}"
    );

    // An operator releases it; its trust comes back as the penalty decays.
    let incident_id = id_text(&incident["id"]);
    let (s, v) = lab.api(
        "GET",
        &format!("/api/v1/actions?incident={incident_id}&state=done"),
        None,
    )?;
    ensure!(s == 200, "actions: {s} {v}");
    let quarantine = v["actions"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["kind"] == "quarantine"))
        .with_context(|| format!("no quarantine action: {v:#}"))?;
    let (s, v) = lab.api(
        "POST",
        &format!("/api/v1/actions/{}/reverse", id_text(&quarantine["id"])),
        Some(json!({ "note": "flood explained: firmware bug, fixed" })),
    )?;
    ensure!(s == 200, "release: {s} {v}");
    ensure!(v["state"] == "reversed", "{v}");
    let (s, v) = lab.api(
        "POST",
        &format!("/api/v1/incidents/{incident_id}/resolve"),
        Some(json!({ "note": "released" })),
    )?;
    ensure!(s == 200 && v["state"] == "resolved", "resolve: {s} {v}");

    lab.wait_for_tier("flooder", "trusted", Duration::from_secs(40))
        .await?;
    let reason = publish_acked(&mut client, "flooder").await?;
    ensure!(
        reason == PubAckReason::Success,
        "released and recovered, telemetry flows again: {reason:?}"
    );

    // Every step is in the audit log.
    let audit = lab.audit()?;
    for action in [
        "respond_quarantine",
        "reverse_action",
        "resolve_incident",
        "unpin",
    ] {
        ensure!(
            audit.iter().any(|r| r["action"] == action),
            "no {action} record in the audit log"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn scanning_device_is_quarantined() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = lab("").await?;
    let (_key, _cert, mut client) = thermostat(&lab, "scanner").await?;
    lab.wait_for_tier("scanner", "trusted", support::WAIT)
        .await?;
    profile_is_open(&mut client, "scanner").await?;
    // Probing other devices' topics and the broker's.
    const PROBES: usize = 30;
    for i in 0..PROBES {
        client
            .client
            .subscribe(format!("devices/victim-{i}/commands/set"), QoS::AtMostOnce)
            .await?;
    }
    // Its subscriptions outside the profile are refused all along.
    for i in 0..PROBES {
        let codes = client.suback().await?;
        ensure!(
            codes == [SubscribeReasonCode::NotAuthorized],
            "probe {i} was answered {codes:?}"
        );
    }
    lab.wait_for_tier("scanner", "quarantined", support::WAIT)
        .await?;
    quarantine_is_enforced_on_its_session(&mut client, "scanner").await?;
    let detail = incident_of(&lab, "scanner", "topic_scanning").await?;
    ensure!(
        detail["incident"]["technique"].as_str().is_some(),
        "{detail:#}"
    );
    ensure!(
        detail["findings"][0]["finding"]["evidence"]
            .as_object()
            .is_some_and(|e| !e.is_empty()),
        "{detail:#}"
    );
    // The quarantine is the incident's action, done.
    let (s, v) = lab.api(
        "GET",
        &format!(
            "/api/v1/actions?incident={}",
            id_text(&detail["incident"]["id"])
        ),
        None,
    )?;
    ensure!(
        s == 200
            && v["actions"].as_array().is_some_and(|a| a
                .iter()
                .any(|a| a["kind"] == "quarantine" && a["state"] == "done")),
        "{v:#}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn brute_forcing_device_is_quarantined() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = lab("").await?;
    let (key, cert, mut client) = thermostat(&lab, "guesser").await?;
    lab.wait_for_tier("guesser", "trusted", support::WAIT)
        .await?;
    profile_is_open(&mut client, "guesser").await?;
    // The device tries to log in as others: its certificate, other client ids. Every
    // attempt is refused (client id differs from the certificate's device).
    for i in 0..15 {
        let out = mosquitto_pub(&lab, &key, &cert, &format!("admin-{i}"), "127.0.0.1")?;
        ensure!(!out.status.success(), "a wrong client id must be refused");
    }
    let v = lab
        .wait_for_tier("guesser", "quarantined", support::WAIT)
        .await?;
    ensure!(
        v["assessment"]["factors"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["name"] == "credential_brute_force")),
        "the finding is a behaviour factor of the score: {v:#}"
    );
    // The session it kept open all along is narrowed too.
    quarantine_is_enforced_on_its_session(&mut client, "guesser").await?;
    let detail = incident_of(&lab, "guesser", "credential_brute_force").await?;
    ensure!(
        detail["findings"][0]["finding"]["evidence"]["failures"].is_string(),
        "{detail:#}"
    );
    // Loopback is never banned (respond.never_ban): the address-level finding's ban is
    // recorded as failed, and the operator's own tools still get in.
    let (s, v) = lab.api("GET", "/api/v1/bans", None)?;
    ensure!(
        s == 200 && v["bans"].as_array().is_some_and(Vec::is_empty),
        "{v}"
    );
    Ok(())
}

/// `mosquitto_pub` with the device's key and certificate, as `client_id`, from `source`.
fn mosquitto_pub(
    lab: &Lab,
    key: &std::path::Path,
    cert: &std::path::Path,
    client_id: &str,
    source: &str,
) -> Result<std::process::Output> {
    Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p"])
        .arg(lab.gh.listeners.mqtts.port().to_string())
        .args(["-A", source, "--cafile"])
        .arg(&lab.gh.listeners.ca)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .args([
            "-i",
            client_id,
            "-t",
            &format!("devices/{client_id}/telemetry"),
        ])
        .args(["-m", r#"{"temp":20}"#, "-q", "1", "-V", "mqttv5"])
        .stdin(Stdio::null())
        .output()
        .context("running mosquitto_pub")
}

/// A lab where 127.0.0.2 tried to connect without a client certificate until it was
/// banned (only the real loopback address stays exempt), and the thermostat `honest`:
/// returns the lab and the device's key and certificate files.
async fn banned_intruder() -> Result<(Lab, std::path::PathBuf, std::path::PathBuf)> {
    let lab = lab("[respond]\nnever_ban = [\"127.0.0.1\"]\n").await?;
    let (key, cert, _client) = thermostat(&lab, "honest").await?;
    // No client certificate at all, many times, from one address.
    for _ in 0..15 {
        let out = Command::new("mosquitto_pub")
            .args(["-h", "localhost", "-p"])
            .arg(lab.gh.listeners.mqtts.port().to_string())
            .args(["-A", "127.0.0.2", "--cafile"])
            .arg(&lab.gh.listeners.ca)
            .args(["-i", "intruder", "-t", "x", "-m", "x"])
            .stdin(Stdio::null())
            .output()?;
        ensure!(!out.status.success());
    }
    let bans = eventually(support::WAIT, "a ban of 127.0.0.2", || {
        let (s, v) = lab.api("GET", "/api/v1/bans", None)?;
        ensure!(s == 200, "bans: {s} {v}");
        Ok(v["bans"]
            .as_array()
            .filter(|b| b.iter().any(|b| b["addr"] == "127.0.0.2"))
            .cloned())
    })
    .await?;
    eprintln!("bans: {bans:?}");
    Ok((lab, key, cert))
}

#[tokio::test(flavor = "multi_thread")]
async fn brute_forcing_address_is_banned_and_an_operator_lifts_it() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let (lab, key, cert) = banned_intruder().await?;
    // A valid device from the banned address is refused; from another it gets in.
    let out = mosquitto_pub(&lab, &key, &cert, "honest", "127.0.0.2")?;
    ensure!(
        !out.status.success(),
        "the banned address is refused at accept"
    );
    let out = mosquitto_pub(&lab, &key, &cert, "honest", "127.0.0.1")?;
    ensure!(
        out.status.success(),
        "another address gets in: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The operator lifts the ban; the address gets in again.
    let (s, v) = lab.api("DELETE", "/api/v1/bans/127.0.0.2", None)?;
    ensure!(s == 200, "unban: {s} {v}");
    let out = mosquitto_pub(&lab, &key, &cert, "honest", "127.0.0.2")?;
    ensure!(
        out.status.success(),
        "unbanned: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit = lab.audit()?;
    ensure!(audit.iter().any(|r| r["action"] == "ban"), "ban audited");
    ensure!(
        audit.iter().any(|r| r["action"] == "unban"),
        "unban audited"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_range_reading_is_a_finding() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = lab("").await?;
    let (_key, _cert, mut client) = thermostat(&lab, "liar").await?;
    ensure!(publish_acked(&mut client, "liar").await? == PubAckReason::Success);
    // 900 °C from a thermostat rated to 85.
    client
        .client
        .publish(
            "devices/liar/telemetry",
            QoS::AtLeastOnce,
            false,
            br#"{"temp":900.0}"#.to_vec(),
        )
        .await?;
    let detail = incident_of(&lab, "liar", "out_of_range_reading").await?;
    let f = &detail["findings"][0]["finding"];
    ensure!(f["technique"].as_str().is_some(), "{detail:#}");
    ensure!(
        f["evidence"].to_string().contains("900"),
        "the evidence names the reading: {detail:#}"
    );
    Ok(())
}

/// One HTTP request received by the test's webhook receiver.
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A one-shot HTTP receiver on 127.0.0.1: reads one request, answers 204.
async fn receive_one(listener: tokio::net::TcpListener) -> Result<Received> {
    let (mut sock, _) = listener.accept().await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut chunk).await?;
        ensure!(n > 0, "connection closed before the headers ended");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        ensure!(buf.len() < 64 * 1024, "headers too long");
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .context("content-length")?;
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut chunk).await?;
        ensure!(n > 0, "connection closed before the body ended");
        body.extend_from_slice(&chunk[..n]);
    }
    sock.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await?;
    Ok(Received { headers, body })
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_receives_the_finding_signed() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let secret = "correct-horse-battery-staple";
    let playbooks = format!(
        r#"
[[webhook]]
name = "soc"
url = "{url}"
secret = "{secret}"

[[playbook]]
name = "tell-the-soc"
mode = "notify"
[playbook.when]
kinds = ["out_of_range_reading"]
[[playbook.action]]
type = "notify"
webhook = "soc"
"#
    );
    let receiver = tokio::spawn(receive_one(listener));
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("playbooks.toml");
    std::fs::write(&file, playbooks)?;
    let lab = lab(&format!(
        "[respond]\nplaybooks = {:?}\n",
        file.display().to_string()
    ))
    .await?;
    let (_key, _cert, client) = thermostat(&lab, "probe").await?;
    client
        .client
        .publish(
            "devices/probe/telemetry",
            QoS::AtLeastOnce,
            false,
            br#"{"temp":-120.0}"#.to_vec(),
        )
        .await?;
    let got = tokio::time::timeout(support::WAIT, receiver)
        .await
        .context("no webhook call")???;

    // The signature, checked with openssl: HMAC-SHA256 over "<t>.<body>".
    let sig = got
        .headers
        .iter()
        .find(|(k, _)| k == "x-gatehouse-signature")
        .map(|(_, v)| v.clone())
        .context("no signature header")?;
    let mut t = None;
    let mut v1 = None;
    for part in sig.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = Some(x.to_owned()),
            Some(("v1", x)) => v1 = Some(x.to_owned()),
            _ => {}
        }
    }
    let (t, v1) = (t.context("t=")?, v1.context("v1=")?);
    let signed = lab.path("signed.bin");
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(&got.body);
    std::fs::write(&signed, &message)?;
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret, "-r"])
        .arg(&signed)
        .output()?;
    let expected = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    ensure!(
        expected == v1,
        "signature {v1} but openssl computes {expected}"
    );

    // The body is an OCSF Detection Finding about the device.
    let body: Value = serde_json::from_slice(&got.body)?;
    ensure!(body["class_uid"] == 2004, "{body:#}");
    ensure!(body["finding_info"]["title"].as_str().is_some(), "{body:#}");
    ensure!(
        body.to_string().contains("probe"),
        "names the device: {body:#}"
    );
    ensure!(
        body.to_string().contains("out_of_range_reading"),
        "{body:#}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_works_an_incident_from_the_command_line() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = lab("").await?;
    let (_key, _cert, client) = thermostat(&lab, "prober").await?;
    lab.wait_for_tier("prober", "trusted", support::WAIT)
        .await?;
    client.client.subscribe("$SYS/#", QoS::AtMostOnce).await?;
    for i in 0..20 {
        client
            .client
            .subscribe(format!("devices/other-{i}/telemetry"), QoS::AtMostOnce)
            .await?;
    }
    lab.wait_for_tier("prober", "quarantined", support::WAIT)
        .await?;

    // The incidents, as the command line shows them.
    let list: Value = serde_json::from_str(
        &lab.gh
            .cli(&["incident", "list", "--device", "default/prober", "--json"])
            .await?,
    )?;
    let incidents = list.as_array().context("incidents")?;
    ensure!(!incidents.is_empty(), "{list:#}");
    let text = lab.gh.cli(&["incident", "list"]).await?;
    ensure!(text.contains("default/prober"), "{text}");
    ensure!(
        incidents
            .iter()
            .any(|i| i["kind"] == "topic_scanning" || i["kind"] == "wildcard_harvesting"),
        "no probing incident: {list:#}"
    );
    // One quarantine, whichever probing incident came first: the device is not
    // sanctioned twice for one bout of probing.
    let actions: Value = serde_json::from_str(
        &lab.gh
            .cli(&["incident", "actions", "--state", "done", "--json"])
            .await?,
    )?;
    let quarantines: Vec<&Value> = actions
        .as_array()
        .map(|a| a.iter().filter(|a| a["kind"] == "quarantine").collect())
        .unwrap_or_default();
    ensure!(quarantines.len() == 1, "{actions:#}");
    let quarantine = quarantines[0];
    let id = id_text(&quarantine["incident"]);
    let shown = lab.gh.cli(&["incident", "show", &id]).await?;
    ensure!(
        shown.contains("timeline:") && shown.contains("quarantine") && shown.contains("evidence"),
        "{shown}"
    );
    lab.gh
        .cli(&["incident", "ack", &id, "--note", "looking at it"])
        .await?;

    // Release the quarantine from the command line: the running server applies it.
    let action = id_text(&quarantine["id"]);
    lab.gh
        .cli(&[
            "incident",
            "release",
            &action,
            "--note",
            "test rig, not an attack",
        ])
        .await?;
    // A second release is refused: it is already reversed.
    let again = Command::new(support::binary())
        .arg("--config")
        .arg(lab.gh.config_path())
        .args(["incident", "release", &action])
        .output()?;
    ensure!(!again.status.success(), "releasing twice must fail");
    ensure!(
        String::from_utf8_lossy(&again.stderr).contains("reversed"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    lab.wait_for_tier("prober", "trusted", Duration::from_secs(40))
        .await?;
    lab.gh
        .cli(&["incident", "resolve", &id, "--note", "released"])
        .await?;
    let shown: Value =
        serde_json::from_str(&lab.gh.cli(&["incident", "show", &id, "--json"]).await?)?;
    ensure!(shown["incident"]["state"] == "resolved", "{shown:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cloned_certificate_is_detected() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = lab("").await?;
    let (key, cert, client) = thermostat(&lab, "twin").await?;
    drop(client);
    // The same certificate from two places, one after the other.
    for source in [
        "127.0.0.1",
        "127.0.0.2",
        "127.0.0.1",
        "127.0.0.2",
        "127.0.0.1",
    ] {
        let out = mosquitto_pub(&lab, &key, &cert, "twin", source)?;
        ensure!(
            out.status.success(),
            "{source}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let detail = incident_of(&lab, "twin", "cloned_identity").await?;
    ensure!(
        detail["findings"][0]["finding"]["evidence"]
            .to_string()
            .contains("127.0.0.2"),
        "the evidence names both addresses: {detail:#}"
    );

    // Revoking takes the real device off the air too: the default playbook proposes it
    // and waits for an operator.
    let id = id_text(&detail["incident"]["id"]);
    let pending = eventually(support::WAIT, "a revoke waiting for approval", || {
        let (s, v) = lab.api(
            "GET",
            &format!("/api/v1/actions?incident={id}&state=pending_approval"),
            None,
        )?;
        ensure!(s == 200, "actions: {s} {v}");
        Ok(v["actions"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["kind"] == "revoke").cloned()))
    })
    .await?;
    let status: Value = lab.trust("twin")?;
    ensure!(
        status["verdict"]["tier"] != "blocked",
        "nothing is revoked before the approval: {status:#}"
    );
    let (s, v) = lab.api(
        "POST",
        &format!("/api/v1/actions/{}/approve", id_text(&pending["id"])),
        None,
    )?;
    ensure!(s == 200 && v["state"] == "done", "approve: {s} {v}");
    // Revoked: the device's certificate no longer gets in.
    let out = mosquitto_pub(&lab, &key, &cert, "twin", "127.0.0.1")?;
    ensure!(!out.status.success(), "a revoked certificate is refused");
    let audit = lab.audit()?;
    for action in ["propose_action", "approve_action", "revoke"] {
        ensure!(
            audit.iter().any(|r| r["action"] == action),
            "no {action} record in the audit log"
        );
    }
    Ok(())
}

/// A lab whose one playbook answers a publish flood with `action` (a TOML action table's
/// body) in `mode`, and the thermostat `chatty` that flooded until the action reached
/// `state`: returns the playbook's folder (keep it: a restarted server reads it again),
/// the lab, the device's key and certificate files, its client and the action.
async fn flooder_under_playbook(
    mode: &str,
    action: &str,
    state: &str,
) -> Result<(
    tempfile::TempDir,
    Lab,
    std::path::PathBuf,
    std::path::PathBuf,
    V5,
    Value,
)> {
    let kind = action
        .split('"')
        .nth(1)
        .context("the action names its type first")?
        .to_owned();
    let playbooks = format!(
        "[[playbook]]\nname = \"answer-floods\"\nmode = \"{mode}\"\n\
         [playbook.when]\nkinds = [\"publish_flood\"]\nmin_severity = \"medium\"\n\
         [[playbook.action]]\n{action}\n"
    );
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("playbooks.toml");
    std::fs::write(&file, playbooks)?;
    let lab = lab(&format!(
        "[respond]\nplaybooks = {:?}\n",
        file.display().to_string()
    ))
    .await?;
    let (key, cert, client) = thermostat(&lab, "chatty").await?;
    for _ in 0..3000 {
        client
            .client
            .publish(
                "devices/chatty/telemetry",
                QoS::AtMostOnce,
                false,
                br#"{"temp":20}"#.to_vec(),
            )
            .await?;
    }
    let found = eventually(support::WAIT, &format!("a {kind} action {state}"), || {
        let (s, v) = lab.api("GET", &format!("/api/v1/actions?state={state}"), None)?;
        ensure!(s == 200, "actions: {s} {v}");
        Ok(v["actions"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["kind"] == kind.as_str()).cloned()))
    })
    .await?;
    Ok((dir, lab, key, cert, client, found))
}

/// [`flooder_under_playbook`] with a throttle to `rate` messages a second, carried out.
async fn throttled_flooder(
    rate: f64,
) -> Result<(
    tempfile::TempDir,
    Lab,
    std::path::PathBuf,
    std::path::PathBuf,
    V5,
    Value,
)> {
    flooder_under_playbook(
        "auto",
        &format!("type = \"throttle\"\nrate = {rate:?}\nfor = \"10m\""),
        "done",
    )
    .await
}

/// Kills the lab's server with SIGKILL and starts it again on the same data directory.
async fn crash_and_restart(lab: Lab) -> Result<Lab> {
    let Lab {
        mut gh,
        dir: lab_dir,
    } = lab;
    gh.crash().await?;
    let gh = gh.restart().await?;
    Ok(Lab { gh, dir: lab_dir })
}

#[tokio::test(flavor = "multi_thread")]
async fn throttled_device_is_held_to_its_rate_until_released() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let (_dir, lab, _key, _cert, mut client, action) = throttled_flooder(1.0).await?;
    // At one message a second, a quick run of QoS 1 publishes meets 0x97 quota exceeded.
    let mut refused = 0;
    for _ in 0..5 {
        if publish_acked(&mut client, "chatty").await? == PubAckReason::QuotaExceeded {
            refused += 1;
        }
    }
    ensure!(refused >= 3, "only {refused} of 5 refused while throttled");
    let (s, v) = lab.api(
        "POST",
        &format!("/api/v1/actions/{}/reverse", id_text(&action["id"])),
        None,
    )?;
    ensure!(s == 200 && v["state"] == "reversed", "unthrottle: {s} {v}");
    // The flood's penalty also lowered its score; once that fades, nothing holds it back
    // but its profile's own rate (5/s, burst 10).
    lab.wait_for_tier("chatty", "trusted", Duration::from_secs(40))
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut passed = 0;
    for _ in 0..3 {
        if publish_acked(&mut client, "chatty").await? == PubAckReason::Success {
            passed += 1;
        }
    }
    ensure!(passed == 3, "only {passed} of 3 passed once released");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn hand_issued_device_is_quarantined_and_released_too() -> Result<()> {
    if skip() {
        return Ok(());
    }
    // A certificate from `gatehouse ca issue`: the device is not in the registry.
    let lab = lab("").await?;
    let files = lab.gh.issue_files("manual").await?;
    let tls = tls_from_files(&lab, &files.key, &files.cert)?;
    let mut client = V5::connect_as(lab.gh.listeners.mqtts, tls, "manual").await?;
    let own = |c: &mut V5| -> Result<()> {
        c.client.try_publish(
            "devices/manual/telemetry",
            QoS::AtLeastOnce,
            false,
            b"21.5".to_vec(),
        )?;
        Ok(())
    };
    own(&mut client)?;
    ensure!(client.puback().await?.reason == PubAckReason::Success);
    for i in 0..20 {
        client
            .client
            .subscribe(format!("devices/other-{i}/telemetry"), QoS::AtMostOnce)
            .await?;
    }
    let quarantine = eventually(support::WAIT, "a quarantine done", || {
        let (s, v) = lab.api("GET", "/api/v1/actions?state=done", None)?;
        ensure!(s == 200, "actions: {s} {v}");
        Ok(v["actions"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["kind"] == "quarantine").cloned()))
    })
    .await?;
    own(&mut client)?;
    ensure!(
        client.puback().await?.reason == PubAckReason::NotAuthorized,
        "quarantined: its own telemetry is refused"
    );
    let (s, v) = lab.api(
        "POST",
        &format!("/api/v1/actions/{}/reverse", id_text(&quarantine["id"])),
        None,
    )?;
    ensure!(s == 200 && v["state"] == "reversed", "release: {s} {v}");
    own(&mut client)?;
    ensure!(
        client.puback().await?.reason == PubAckReason::Success,
        "released: its telemetry flows again"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_the_operators_policy_grants_opens_no_incident() -> Result<()> {
    if skip() {
        return Ok(());
    }
    // The README's example: an application whose identity the operator granted every
    // device's telemetry.
    let lab =
        lab("[[policy.device]]\nid = \"dashboard\"\nsubscribe = [\"devices/+/telemetry/#\"]\n")
            .await?;
    let files = lab.gh.issue_files("dashboard").await?;
    let tls = tls_from_files(&lab, &files.key, &files.cert)?;
    let mut client = V5::connect_as(lab.gh.listeners.mqtts, tls, "dashboard").await?;
    // Granted (the SUBACK says so): the operator's decision, not harvesting.
    client
        .subscribe("devices/+/telemetry/#", QoS::AtMostOnce)
        .await?;
    // Beyond its grant the same identity is probing. Its incident, once it shows, also
    // shows that the engine has seen the granted subscription before it.
    client.client.subscribe("#", QoS::AtMostOnce).await?;
    let detail = incident_of(&lab, "dashboard", "wildcard_harvesting").await?;
    let filters: Vec<&str> = detail["findings"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|x| x["finding"]["evidence"]["filter"].as_str())
                .collect()
        })
        .unwrap_or_default();
    ensure!(
        filters.contains(&"#") && !filters.contains(&"devices/+/telemetry/#"),
        "the granted subscription was held against the device: {detail:#}"
    );
    for i in incidents(&lab, "dashboard")? {
        ensure!(
            i["kind"] != "exfiltration_broad_subscribe",
            "the granted subscription was called exfiltration: {i:#}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn throttle_survives_a_crash_of_the_server() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let (_dir, lab, key, cert, client, _action) = throttled_flooder(0.2).await?;
    drop(client);

    let lab = crash_and_restart(lab).await?;
    let tls = tls_from_files(&lab, &key, &cert)?;
    let mut client = V5::connect_as(lab.gh.listeners.mqtts, tls, "chatty").await?;
    // At one message every five seconds, a quick run of QoS 1 publishes meets 0x97 quota
    // exceeded; the profile's own rate (5/s, burst 10, halved when restricted) would let
    // most of them through.
    let mut refused = 0;
    for _ in 0..8 {
        if publish_acked(&mut client, "chatty").await? == PubAckReason::QuotaExceeded {
            refused += 1;
        }
    }
    ensure!(
        refused >= 6,
        "only {refused} of 8 refused after the restart: the throttle was lifted"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_approval_survives_a_crash_and_is_carried_out_when_approved_from_the_command_line()
-> Result<()> {
    if skip() {
        return Ok(());
    }
    let (_dir, lab, key, cert, client, action) = flooder_under_playbook(
        "approve",
        "type = \"quarantine\"\nfor = \"10m\"",
        "pending_approval",
    )
    .await?;
    drop(client);
    let lab = crash_and_restart(lab).await?;
    let id = id_text(&action["id"]);
    let (s, v) = lab.api("GET", "/api/v1/actions?state=pending_approval", None)?;
    ensure!(
        s == 200
            && v["actions"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| id_text(&a["id"]) == id)),
        "the pending action is gone after the restart: {s} {v}"
    );
    // Approved from the command line, which writes only the database: the running
    // server finds the approval on its change feed and carries the quarantine out.
    lab.gh.cli(&["incident", "approve", &id]).await?;
    eventually(support::WAIT, "the approved quarantine carried out", || {
        let (s, v) = lab.api("GET", "/api/v1/actions?state=done", None)?;
        ensure!(s == 200, "actions: {s} {v}");
        Ok(v["actions"]
            .as_array()
            .and_then(|a| a.iter().find(|a| id_text(&a["id"]) == id).cloned()))
    })
    .await?;
    held_in_quarantine(&lab, &key, &cert, "chatty").await
}

/// The device `name` is quarantined and, connecting again with its certificate, has its
/// telemetry refused with PUBACK 0x87.
async fn held_in_quarantine(
    lab: &Lab,
    key: &std::path::Path,
    cert: &std::path::Path,
    name: &str,
) -> Result<()> {
    lab.wait_for_tier(name, "quarantined", support::WAIT)
        .await?;
    let tls = tls_from_files(lab, key, cert)?;
    let mut client = V5::connect_as(lab.gh.listeners.mqtts, tls, name).await?;
    let reason = publish_acked(&mut client, name).await?;
    ensure!(
        reason == PubAckReason::NotAuthorized,
        "the quarantined device {name}'s publish was answered {reason:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pin_survives_a_crash_of_the_server() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = lab("").await?;
    let (key, cert, client) = thermostat(&lab, "pinned").await?;
    drop(client);
    lab.gh
        .cli(&[
            "device",
            "pin",
            "default/pinned",
            "--tier",
            "quarantined",
            "--for",
            "1h",
            "--reason",
            "held for inspection",
        ])
        .await?;
    lab.wait_for_tier("pinned", "quarantined", support::WAIT)
        .await?;
    let lab = crash_and_restart(lab).await?;
    held_in_quarantine(&lab, &key, &cert, "pinned").await
}

#[tokio::test(flavor = "multi_thread")]
async fn ban_survives_a_crash_and_is_lifted_from_the_command_line() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let (lab, key, cert) = banned_intruder().await?;
    let lab = crash_and_restart(lab).await?;
    let out = mosquitto_pub(&lab, &key, &cert, "honest", "127.0.0.2")?;
    ensure!(
        !out.status.success(),
        "the banned address got in after the restart"
    );
    // The command line writes only the database; the running server lifts the broker's
    // ban when it reads the change from its feed.
    lab.gh.cli(&["incident", "unban", "127.0.0.2"]).await?;
    eventually(support::WAIT, "the ban lifted on the live broker", || {
        let out = mosquitto_pub(&lab, &key, &cert, "honest", "127.0.0.2")?;
        Ok(out.status.success().then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_action_is_never_carried_out() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let (_dir, lab, _key, _cert, _client, action) = flooder_under_playbook(
        "approve",
        "type = \"quarantine\"\nfor = \"10m\"",
        "pending_approval",
    )
    .await?;
    let id = id_text(&action["id"]);
    lab.gh
        .cli(&[
            "incident",
            "reject",
            &id,
            "--note",
            "a load test, not an attack",
        ])
        .await?;
    let (s, v) = lab.api("GET", "/api/v1/actions?state=rejected", None)?;
    let rejected = v["actions"]
        .as_array()
        .and_then(|a| a.iter().find(|a| id_text(&a["id"]) == id).cloned());
    ensure!(s == 200 && rejected.is_some(), "not rejected: {s} {v}");
    // Neither approving nor rejecting it again is possible, from anywhere.
    let (s, v) = lab.api("POST", &format!("/api/v1/actions/{id}/approve"), None)?;
    ensure!(s == 409, "approving a rejected action: {s} {v}");
    let (s, v) = lab.api("POST", &format!("/api/v1/actions/{id}/reject"), None)?;
    ensure!(s == 409, "rejecting twice: {s} {v}");
    let again = Command::new(support::binary())
        .arg("--config")
        .arg(lab.gh.config_path())
        .args(["incident", "approve", &id])
        .output()?;
    ensure!(
        !again.status.success(),
        "approving a rejected action from the command line"
    );
    // The quarantine was never pinned on the device.
    let v = lab.trust("chatty")?;
    ensure!(
        v["assessment"]["pin"].is_null(),
        "a rejected quarantine was pinned: {v:#}"
    );
    // The flood wrote many records before it: read the log to its end.
    let mut from = 1u64;
    let mut found = false;
    loop {
        let (s, v) = lab.api(
            "GET",
            &format!("/api/v1/audit?from={from}&limit=1000"),
            None,
        )?;
        ensure!(s == 200, "audit: {s} {v}");
        let page = v.as_array().cloned().unwrap_or_default();
        found |= page.iter().any(|r| {
            r["action"] == "reject_action"
                && r["subject"].as_str().is_some_and(|s| {
                    s.trim_start_matches("action:").trim_start_matches("act-") == id
                })
                && r["reason"] == "a load test, not an attack"
        });
        match page.last().and_then(|r| r["seq"].as_u64()) {
            Some(last) if page.len() == 1000 => from = last + 1,
            _ => break,
        }
    }
    ensure!(found, "the rejection is audited with its note");
    Ok(())
}
