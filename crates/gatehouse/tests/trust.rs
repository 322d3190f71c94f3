//! The trust loop against the real binary: a device's posture, signed with openssl, moves
//! its score and tier; the tier moves what its open MQTT session may do (rumqttc); pins and
//! policy sets go through the REST API (curl) and reach live sessions before the API
//! answers. Skipped with a message when curl or openssl is missing, except in CI.

mod support;

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use gatehouse_pki::ManufacturerCa;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode;
use serde_json::{Value, json};
use support::clients::V5;
use support::lab::*;

/// The thermostat's profile: telemetry out, commands in; firmware 2.4.1 is current and
/// 2.3.0 one release behind.
const THERMO_PROFILE: &str = r#"
manufacturer = "acme"
model = "thermo"

[firmware]
current = "2.4.1"
supported = ["2.3.0", "2.4.1"]

[default_credentials]
username = "admin"
documented = true

[[topics]]
pattern = "devices/{device}/telemetry/#"
direction = "publish"
kind = "telemetry"
rate = "50/s"
burst = 50

[[topics]]
pattern = "devices/{device}/status"
direction = "publish"
kind = "telemetry"
rate = "2/min"
burst = 2

[[topics]]
pattern = "devices/{device}/commands/+"
direction = "subscribe"
kind = "command"
"#;

/// A controller that sends commands to every thermostat.
const CONTROLLER_PROFILE: &str = r#"
manufacturer = "acme"
model = "controller"

[firmware]
current = "1.0.0"
supported = ["1.0.0"]

[[topics]]
pattern = "devices/+/commands/+"
direction = "publish"
kind = "command"
"#;

fn skip() -> bool {
    if tools() {
        return false;
    }
    gatehouse_testkit::skip("curl or openssl is missing");
    true
}

/// A lab with manufacturer `acme`, models `thermo` and `controller` and their profiles.
async fn fleet_lab() -> Result<Lab> {
    let lab = Lab::start().await?;
    lab.register_acme(ManufacturerCa::new("Acme")?.cert_pem())?;
    let (s, v) = lab.api(
        "POST",
        "/api/v1/models",
        Some(json!({ "id": "controller", "manufacturer": "acme" })),
    )?;
    ensure!(s == 201, "model: {s} {v}");
    for (model, profile) in [
        ("thermo", THERMO_PROFILE),
        ("controller", CONTROLLER_PROFILE),
    ] {
        let (s, body) = lab.upload_profile(model, profile)?;
        ensure!(
            s == 201,
            "profile of {model}: {s} {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(lab)
}

/// A device of `model`, enrolled with a token and connected over MQTT 5. Returns its key
/// file (to sign posture with) and its client.
async fn device(lab: &Lab, name: &str, model: &str) -> Result<(std::path::PathBuf, V5)> {
    let (key, cert) = lab.enroll_with_token(name, &lab.model_token(model)?)?;
    let tls = tls_from_files(lab, &key, &cert)?;
    let client = V5::connect_as(lab.gh.listeners.mqtts, tls, name).await?;
    Ok((key, client))
}

/// A posture report signed by openssl with the device's key, in Gatehouse's envelope.
fn signed_posture(lab: &Lab, key: &std::path::Path, report: &Value) -> Result<Vec<u8>> {
    let report_path = lab.path(&format!("posture-{}.json", rand_suffix()));
    let sig_path = lab.path(&format!("posture-{}.sig", rand_suffix()));
    let bytes = report.to_string().into_bytes();
    std::fs::write(&report_path, &bytes)?;
    run(Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg("-out")
        .arg(&sig_path)
        .arg(&report_path))?;
    let sig = std::fs::read(&sig_path)?;
    Ok(
        json!({ "report": base64(&bytes), "signature": base64(&sig) })
            .to_string()
            .into_bytes(),
    )
}

async fn report_posture(
    lab: &Lab,
    client: &V5,
    name: &str,
    key: &std::path::Path,
    report: Value,
) -> Result<()> {
    let envelope = signed_posture(lab, key, &report)?;
    client
        .client
        .publish(
            format!("$gatehouse/{name}/posture"),
            QoS::AtMostOnce,
            false,
            envelope,
        )
        .await?;
    Ok(())
}

async fn suback_code(client: &mut V5, filter: &str) -> Result<SubscribeReasonCode> {
    client.client.subscribe(filter, QoS::AtLeastOnce).await?;
    let codes = client.suback().await?;
    codes.first().copied().context("SUBACK without a code")
}

fn factor_names(v: &Value) -> Vec<String> {
    v["assessment"]["factors"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|x| x["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn outdated_firmware_starts_restricted_and_current_firmware_makes_it_trusted() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = fleet_lab().await?;
    let (key, mut thermo) = device(&lab, "thermo-1", "thermo").await?;

    // Before any posture: scored on what is known, and that is visible.
    let first = lab.trust("thermo-1")?;
    ensure!(
        factor_names(&first)
            .iter()
            .any(|n| n == "posture never reported"),
        "{first:#}"
    );

    // Posture: firmware one release behind, default credentials still in place.
    report_posture(
        &lab,
        &thermo,
        "thermo-1",
        &key,
        json!({ "firmware": "2.3.0", "services": ["ssh"], "default_credentials": "changed" }),
    )
    .await?;
    let restricted = lab
        .wait_for_tier("thermo-1", "restricted", support::WAIT)
        .await?;
    ensure!(
        factor_names(&restricted)
            .iter()
            .any(|n| n == "firmware behind"),
        "{restricted:#}"
    );
    // Restricted: telemetry goes through, the command subscription is refused.
    thermo
        .client
        .publish(
            "devices/thermo-1/telemetry/temp",
            QoS::AtLeastOnce,
            false,
            "21.5",
        )
        .await?;
    let ack = thermo.puback().await?;
    ensure!(
        ack.reason == rumqttc::v5::mqttbytes::v5::PubAckReason::Success,
        "telemetry refused: {ack:?}"
    );
    let code = suback_code(&mut thermo, "devices/thermo-1/commands/+").await?;
    ensure!(
        code == SubscribeReasonCode::NotAuthorized,
        "restricted device may subscribe to its commands: {code:?}"
    );

    // Current firmware: trusted, and the same subscription succeeds.
    report_posture(
        &lab,
        &thermo,
        "thermo-1",
        &key,
        json!({ "firmware": "2.4.1", "default_credentials": "changed" }),
    )
    .await?;
    // One report per second is processed; the first one may still hold the slot.
    let deadline = std::time::Instant::now() + support::WAIT;
    while lab.trust("thermo-1")?["assessment"]["tier"] != "trusted" {
        ensure!(std::time::Instant::now() < deadline, "never trusted");
        tokio::time::sleep(Duration::from_millis(300)).await;
        report_posture(
            &lab,
            &thermo,
            "thermo-1",
            &key,
            json!({ "firmware": "2.4.1", "default_credentials": "changed" }),
        )
        .await?;
    }
    lab.wait_for_tier("thermo-1", "trusted", support::WAIT)
        .await?;
    let code = suback_code(&mut thermo, "devices/thermo-1/commands/+").await?;
    ensure!(
        matches!(code, SubscribeReasonCode::Success(_)),
        "trusted device refused its commands: {code:?}"
    );

    // Every verdict change is audited with its explanation.
    let audit = lab.audit()?;
    let verdicts: Vec<&Value> = audit
        .iter()
        .filter(|r| r["action"] == "verdict" && r["subject"] == "default/thermo-1")
        .collect();
    ensure!(verdicts.len() >= 3, "verdict records: {verdicts:#?}");
    let details: Vec<Value> = verdicts
        .iter()
        .filter_map(|r| serde_json::from_str(r["detail"].as_str()?).ok())
        .collect();
    ensure!(
        details.iter().any(|d| d["tier"] == "restricted"
            && d["previous"]["tier"] == "trusted"
            && d["explanation"]
                .to_string()
                .contains("refused by `restricted-no-commands`")),
        "{details:#?}"
    );
    ensure!(
        audit.iter().any(|r| r["action"] == "posture"),
        "posture not audited"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_posture_is_refused_and_audited() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = fleet_lab().await?;
    let (_key, thermo) = device(&lab, "thermo-1", "thermo").await?;
    // Signed with another key: a forgery that claims current firmware.
    let (other_key, _) = lab.csr("other", "/CN=other", None)?;
    report_posture(
        &lab,
        &thermo,
        "thermo-1",
        &other_key,
        json!({ "firmware": "2.4.1", "default_credentials": "changed" }),
    )
    .await?;
    let deadline = std::time::Instant::now() + support::WAIT;
    loop {
        let audit = lab.audit()?;
        if let Some(r) = audit.iter().find(|r| r["action"] == "refuse_posture") {
            ensure!(r["subject"] == "default/thermo-1", "{r}");
            // Refused for its signature, not for its shape or anything else.
            ensure!(
                r["reason"]
                    .as_str()
                    .is_some_and(|why| why.contains("signature does not verify")),
                "refused for another reason: {r}"
            );
            break;
        }
        ensure!(std::time::Instant::now() < deadline, "forgery not refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v = lab.trust("thermo-1")?;
    ensure!(
        factor_names(&v)
            .iter()
            .any(|n| n == "posture never reported"),
        "a forged report changed the facts: {v:#}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn quarantining_a_trusted_device_stops_delivery_on_its_open_subscription() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = fleet_lab().await?;
    let (_key, mut thermo) = device(&lab, "thermo-1", "thermo").await?;
    let (_ckey, mut controller) = device(&lab, "ctl-1", "controller").await?;
    lab.wait_for_tier("thermo-1", "trusted", support::WAIT)
        .await?;
    let code = suback_code(&mut thermo, "devices/thermo-1/commands/+").await?;
    ensure!(matches!(code, SubscribeReasonCode::Success(_)), "{code:?}");

    controller
        .client
        .publish(
            "devices/thermo-1/commands/set",
            QoS::AtLeastOnce,
            false,
            "before",
        )
        .await?;
    controller.puback().await?;
    // Delivered while trusted (this waits for it).
    thermo.publishes_until(b"before").await?;

    // Quarantine through the API: enforced on the open session before the API answers.
    let (s, v) = lab.api(
        "PUT",
        "/api/v1/devices/default/thermo-1/pin",
        Some(json!({ "tier": "quarantined", "for": "1h", "reason": "suspected tampering" })),
    )?;
    ensure!(s == 200, "pin: {s} {v}");
    ensure!(v["assessment"]["tier"] == "quarantined", "{v:#}");
    ensure!(v["verdict"]["tier"] == "quarantined", "{v:#}");
    // MQTT 5 has no server-initiated UNSUBACK: the client is told on its notice topic.
    let notice = thermo.publish().await?;
    ensure!(
        notice.topic.as_ref() == b"$gatehouse/thermo-1/notice",
        "unexpected message {notice:?}"
    );
    let body: Value = serde_json::from_slice(&notice.payload)?;
    ensure!(
        body["event"] == "subscriptions_removed"
            && body["filters"] == json!(["devices/thermo-1/commands/+"]),
        "{body}"
    );

    controller
        .client
        .publish(
            "devices/thermo-1/commands/set",
            QoS::AtLeastOnce,
            false,
            "after",
        )
        .await?;
    controller.puback().await?;
    thermo.no_publish_for(Duration::from_millis(500)).await?;

    // The pin and the verdict change are audited with the operator and the reason.
    let audit = lab.audit()?;
    ensure!(
        audit.iter().any(|r| r["action"] == "pin"
            && r["subject"] == "default/thermo-1"
            && r["reason"] == "suspected tampering"),
        "pin not audited"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pin_overrides_the_score_and_expires() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = fleet_lab().await?;
    let (_key, mut thermo) = device(&lab, "thermo-1", "thermo").await?;
    lab.wait_for_tier("thermo-1", "trusted", support::WAIT)
        .await?;

    let (s, v) = lab.api(
        "PUT",
        "/api/v1/devices/default/thermo-1/pin",
        // Long enough that the SUBACK below comes back before it expires even on a
        // loaded machine; short enough to see it expire within the wait.
        Some(json!({ "tier": "restricted", "for": "6s", "reason": "maintenance window" })),
    )?;
    ensure!(s == 200, "pin: {s} {v}");
    ensure!(v["assessment"]["tier"] == "restricted", "{v:#}");
    ensure!(v["assessment"]["scored_tier"] == "trusted", "{v:#}");
    let code = suback_code(&mut thermo, "devices/thermo-1/commands/+").await?;
    ensure!(code == SubscribeReasonCode::NotAuthorized, "{code:?}");

    // The pin expires on its own: the tier follows the score again.
    let v = lab
        .wait_for_tier("thermo-1", "trusted", support::WAIT)
        .await?;
    ensure!(v["assessment"]["pin"].is_null(), "{v:#}");
    let code = suback_code(&mut thermo, "devices/thermo-1/commands/+").await?;
    ensure!(matches!(code, SubscribeReasonCode::Success(_)), "{code:?}");

    // Bad pins are refused with one error shape.
    for bad in [
        json!({ "tier": "golden", "for": "1h", "reason": "x" }),
        json!({ "tier": "blocked", "for": "forever", "reason": "x" }),
        json!({ "tier": "blocked", "for": "1h", "reason": " " }),
    ] {
        let (s, v) = lab.api("PUT", "/api/v1/devices/default/thermo-1/pin", Some(bad))?;
        ensure!(s == 422 && v["error"]["code"] == "invalid", "{s} {v}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_policy_set_is_refused_and_a_valid_one_reaches_open_sessions() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = fleet_lab().await?;
    let (_key, mut thermo) = device(&lab, "thermo-1", "thermo").await?;
    lab.wait_for_tier("thermo-1", "trusted", support::WAIT)
        .await?;
    let (s, before) = lab.api("GET", "/api/v1/policies", None)?;
    ensure!(s == 200 && before["version"] == 0, "{s} {before}");

    // An attribute the schema does not have: refused, every problem named, nothing changes.
    let (s, v) = lab.api(
        "PUT",
        "/api/v1/policies",
        Some(json!({ "text": "@id(\"x\") permit (principal, action, resource) when { principal.colour == \"red\" };" })),
    )?;
    ensure!(s == 422, "{s} {v}");
    ensure!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("schema"),
        "{v}"
    );
    let (_, after) = lab.api("GET", "/api/v1/policies", None)?;
    ensure!(after == before, "a refused set changed the set in force");

    // A valid set that refuses thermostats any connection: the open session ends.
    let text = format!(
        "{}\n@id(\"no-thermostats\")\nforbid (principal, action == Action::\"connect\", resource)\nwhen {{ principal.model == \"thermo\" }};\n",
        before["text"].as_str().context("policy text")?
    );
    let (s, v) = lab.api("PUT", "/api/v1/policies", Some(json!({ "text": text })))?;
    ensure!(s == 200 && v["version"] == 1, "{s} {v}");
    let reason = thermo.server_disconnect().await?;
    ensure!(
        reason == Some(rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::NotAuthorized),
        "{reason:?}"
    );
    let v = lab.trust("thermo-1")?;
    let explanation = v["verdict"]["explanation"].to_string();
    ensure!(explanation.contains("no-thermostats"), "{explanation}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn publishes_over_the_topic_rate_or_outside_the_verdict_are_dropped_with_0x87() -> Result<()>
{
    if skip() {
        return Ok(());
    }
    let lab = fleet_lab().await?;
    let (_key, mut thermo) = device(&lab, "thermo-1", "thermo").await?;
    lab.wait_for_tier("thermo-1", "trusted", support::WAIT)
        .await?;
    // `status` allows 2 a minute, in a burst of 2: the third and later are dropped.
    let mut reasons = Vec::new();
    for i in 0..6 {
        thermo
            .client
            .publish(
                "devices/thermo-1/status",
                QoS::AtLeastOnce,
                false,
                format!("s{i}"),
            )
            .await?;
        reasons.push(thermo.puback().await?.reason);
    }
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    ensure!(
        reasons[..2].iter().all(|r| *r == PubAckReason::Success)
            && reasons[2..]
                .iter()
                .all(|r| *r == PubAckReason::NotAuthorized),
        "{reasons:?}"
    );
    // Another device's topic, and a topic the profile does not list.
    for topic in [
        "devices/thermo-2/telemetry/temp",
        "devices/thermo-1/secrets",
    ] {
        thermo
            .client
            .publish(topic, QoS::AtLeastOnce, false, "x")
            .await?;
        let ack = thermo.puback().await?;
        ensure!(
            ack.reason == PubAckReason::NotAuthorized,
            "{topic}: {ack:?}"
        );
    }
    Ok(())
}
