//! Onboarding against the real binary, driven by tools we did not write: curl for HTTP,
//! openssl for keys, CSRs, PKCS#7, certificate and CRL checks, mosquitto_pub and rumqttc
//! for MQTT. Each test is skipped with a message when curl or openssl is missing, except in
//! CI where they are installed.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use gatehouse_pki::{IdevidParams, ManufacturerCa};
use serde_json::{Value, json};
use support::clients::V5;
use support::have_program;
use support::lab::*;

#[tokio::test(flavor = "multi_thread")]
async fn rfc7030_flow_with_curl_and_openssl_then_mosquitto_pub() -> Result<()> {
    if !tools() || !have_program("mosquitto_pub", &["--help"]) {
        return Ok(());
    }
    let lab = Lab::start().await?;
    let acme = ManufacturerCa::new("Acme Devices")?;
    lab.register_acme(acme.cert_pem())?;
    let token = lab.token("default", 1, 3600)?;

    // cacerts: base64 certs-only PKCS#7 with the issuing CA and the root.
    let (s, body) = lab.curl(&[&lab.url("/.well-known/est/cacerts")])?;
    ensure!(s == 200, "cacerts: {s}");
    let cacerts = lab.certs_from_response("cacerts", &body)?;
    let subjects = std::fs::read_to_string(&cacerts)?;
    ensure!(subjects.contains("Gatehouse Issuing CA"), "{subjects}");
    ensure!(subjects.contains("Gatehouse Local CA"), "{subjects}");

    // csrattrs answers with DER the client may use.
    let (s, _) = lab.curl(&[&lab.url("/.well-known/est/csrattrs")])?;
    ensure!(s == 200, "csrattrs: {s}");

    // openssl req → simpleenroll → openssl pkcs7 -print_certs.
    let (key, cert) = lab.enroll_with_token("thermo-1", &token)?;
    let verify = run(Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&cacerts)
        .arg(&cert))?;
    ensure!(verify.contains(": OK"), "{verify}");
    let info = run(Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName,crlDistributionPoints,extendedKeyUsage",
            "-in",
        ])
        .arg(&cert))?;
    ensure!(
        info.contains("gatehouse://default/device/thermo-1"),
        "{info}"
    );
    ensure!(info.contains("TLS Web Client Authentication"), "{info}");
    let port = lab.gh.listeners.https.port();
    ensure!(
        info.contains(&format!(":{port}/pki/crl/issuing-1.crl")),
        "CRL distribution point: {info}"
    );

    // The CRL the certificate points to parses and verifies with openssl.
    let (s, crl) = lab.curl(&[&lab.url("/pki/crl/issuing-1.crl")])?;
    ensure!(s == 200, "crl: {s}");
    let crl_path = lab.path("issuing-1.crl");
    std::fs::write(&crl_path, crl)?;
    let crl_text = run(Command::new("openssl")
        .args(["crl", "-inform", "DER", "-noout", "-text", "-CAfile"])
        .arg(&cacerts)
        .arg("-in")
        .arg(&crl_path))?;
    ensure!(crl_text.contains("Gatehouse Issuing CA 1"), "{crl_text}");

    // pkilint, when installed (CI installs it).
    if let Ok(out) = Command::new("lint_pkix_cert")
        .args(["lint", "-s", "WARNING"])
        .arg(&cert)
        .output()
    {
        let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
        let serious: Vec<&str> = report
            .lines()
            .filter(|l| l.contains("(ERROR)") || l.contains("(FATAL)"))
            .filter(|l| !(l.contains("pkix.invalid_uri_syntax") && l.contains("\"gatehouse://")))
            .collect();
        ensure!(serious.is_empty(), "pkilint:\n{report}");
    } else {
        gatehouse_testkit::skip(
            "pkilint is not installed (pip install pkilint): the lint was not run",
        );
    }

    // mosquitto_pub connects with the issued certificate.
    mosquitto_pub_qos1(&lab, &key, &cert, "thermo-1")?;

    // The enrollment is in the audit log, which verifies.
    let audit = lab.audit()?;
    ensure!(
        audit
            .iter()
            .any(|r| r["action"] == "enroll" && r["subject"] == "default/thermo-1"),
        "no enroll record: {audit:?}"
    );
    let (s, v) = lab.api("GET", "/api/v1/audit/verify", None)?;
    ensure!(s == 200 && v["ok"] == true, "audit verify: {v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn csr_for_another_device_is_refused() -> Result<()> {
    if !tools() {
        return Ok(());
    }
    let lab = Lab::start().await?;
    lab.register_acme(ManufacturerCa::new("Acme")?.cert_pem())?;
    let (key_a, cert_a) = lab.enroll_with_token("dev-a", &lab.token("default", 1, 3600)?)?;

    // A fresh token cannot be used to obtain a certificate for an enrolled device.
    let t2 = lab.token("default", 5, 3600)?;
    let user = format!("{}:{}", t2.0, t2.1);
    let (_, csr) = lab.csr("steal-cn", "/CN=dev-a", None)?;
    let (s, body) = lab.est("simpleenroll", &csr, &["-u", &user])?;
    ensure!(s == 403, "CN of an enrolled device: {s} {}", text(&body));

    // A CSR whose CN and SAN URI disagree is refused.
    let (_, csr) = lab.csr(
        "steal-san",
        "/CN=dev-b",
        Some("subjectAltName=URI:gatehouse://default/device/dev-a"),
    )?;
    let (s, body) = lab.est("simpleenroll", &csr, &["-u", &user])?;
    ensure!(s == 403, "SAN URI of another device: {s} {}", text(&body));
    ensure!(text(&body).contains("dev-a"), "{}", text(&body));

    // A CSR naming another tenant's device is refused.
    let (_, csr) = lab.csr(
        "other-tenant",
        "/CN=dev-c",
        Some("subjectAltName=URI:gatehouse://acme/device/dev-c"),
    )?;
    let (s, _) = lab.est("simpleenroll", &csr, &["-u", &user])?;
    ensure!(s == 403, "other tenant: {s}");

    // Renewal with dev-a's certificate cannot ask for dev-b.
    let (_, csr) = lab.csr("renew-other", "/CN=dev-b", None)?;
    let cert = cert_a.to_str().context("path")?;
    let key = key_a.to_str().context("path")?;
    let (s, body) = lab.est("simplereenroll", &csr, &["--cert", cert, "--key", key])?;
    ensure!(s == 403, "renewal for another device: {s} {}", text(&body));

    // None of those consumed the token: it still enrolls a new device.
    lab.enroll_with_token("dev-d", &t2)?;
    let refusals = lab
        .audit()?
        .iter()
        .filter(|r| r["outcome"] == "refused")
        .count();
    ensure!(refusals >= 4, "refusals audited: {refusals}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reused_single_use_token_is_refused() -> Result<()> {
    if !tools() {
        return Ok(());
    }
    let lab = Lab::start().await?;
    lab.register_acme(ManufacturerCa::new("Acme")?.cert_pem())?;
    let token = lab.token("default", 1, 3600)?;
    lab.enroll_with_token("once-1", &token)?;
    let (_, csr) = lab.csr("once-2", "/CN=once-2", None)?;
    let user = format!("{}:{}", token.0, token.1);
    let (s, body) = lab.est("simpleenroll", &csr, &["-u", &user])?;
    ensure!(s == 403, "reused token: {s} {}", text(&body));
    ensure!(text(&body).contains("used up"), "{}", text(&body));
    let (s, v) = lab.api("GET", "/api/v1/devices/default/once-2", None)?;
    ensure!(s == 404, "the refused device must not exist: {s} {v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_token_is_refused() -> Result<()> {
    if !tools() {
        return Ok(());
    }
    let lab = Lab::start().await?;
    lab.register_acme(ManufacturerCa::new("Acme")?.cert_pem())?;
    let token = lab.token("default", 5, 5)?;
    let user = format!("{}:{}", token.0, token.1);
    // While it lasts, the token enrolls (so what is refused below is its age, nothing
    // else about it).
    let issued = std::time::Instant::now();
    let (_, early) = lab.csr("early", "/CN=early", None)?;
    let (s, body) = lab.est("simpleenroll", &early, &["-u", &user])?;
    // (Only when this machine was quick enough for the answer to say so: expiry is kept
    // to the second.)
    if issued.elapsed() < Duration::from_secs(3) {
        ensure!(s == 200, "the token before it expired: {s} {}", text(&body));
    }
    // Past its lifetime, with a second of margin for the server's clock.
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(issued.elapsed())).await;
    let (_, csr) = lab.csr("late", "/CN=late", None)?;
    let (s, body) = lab.est("simpleenroll", &csr, &["-u", &user])?;
    ensure!(s == 403, "expired token: {s} {}", text(&body));
    ensure!(text(&body).contains("expired"), "{}", text(&body));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_or_missing_credentials_get_401_with_a_challenge() -> Result<()> {
    if !tools() {
        return Ok(());
    }
    let lab = Lab::start().await?;
    lab.register_acme(ManufacturerCa::new("Acme")?.cert_pem())?;
    let token = lab.token("default", 5, 3600)?;
    let (_, csr) = lab.csr("nobody", "/CN=nobody", None)?;
    let bad = format!("{}:not-the-secret", token.0);
    for auth in [vec!["-u", bad.as_str()], vec!["-u", "tk-unknown:x"], vec![]] {
        let (s, body) = lab.est("simpleenroll", &csr, &auth)?;
        ensure!(s == 401, "{auth:?}: {s} {}", text(&body));
    }
    // The challenge header.
    let url = lab.url("/.well-known/est/simpleenroll");
    let data = format!("@{}", csr.display());
    let out = Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "--cacert"])
        .arg(&lab.gh.listeners.ca)
        .args([
            "-X",
            "POST",
            "-H",
            "content-type: application/pkcs10",
            "--data-binary",
            &data,
            &url,
        ])
        .output()?;
    let head = text(&out.stdout).to_ascii_lowercase();
    ensure!(
        head.contains("www-authenticate: basic realm=\"gatehouse-est\""),
        "{head}"
    );

    // Wrong content type, garbage, and an oversized body.
    let user = format!("{}:{}", token.0, token.1);
    let (s, _) = lab.curl(&[
        "-u",
        &user,
        "-X",
        "POST",
        "-H",
        "content-type: text/plain",
        "--data-binary",
        &data,
        &url,
    ])?;
    ensure!(s == 415, "wrong content type: {s}");
    let garbage = lab.path("garbage.b64");
    std::fs::write(&garbage, "bm90IGEgY3Ny")?;
    let (s, body) = lab.est("simpleenroll", &garbage, &["-u", &user])?;
    ensure!(s == 400, "garbage CSR: {s} {}", text(&body));
    let huge = lab.path("huge.b64");
    std::fs::write(&huge, "A".repeat(200 * 1024))?;
    // (With Expect: 100-continue the server answers before the body is sent, as a client
    // uploading something large should ask.)
    let (s, _) = lab.est(
        "simpleenroll",
        &huge,
        &["-u", &user, "-H", "Expect: 100-continue"],
    )?;
    ensure!(s == 413, "oversized body: {s}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn idevid_of_an_unregistered_manufacturer_or_unclaimed_serial_is_refused() -> Result<()> {
    if !tools() {
        return Ok(());
    }
    let lab = Lab::start().await?;
    let acme = ManufacturerCa::new("Acme Devices")?;
    lab.register_acme(acme.cert_pem())?;
    let (s, v) = lab.api("POST", "/api/v1/tenants", Some(json!({ "id": "plant-a" })))?;
    ensure!(s == 201, "tenant: {s} {v}");
    let (s, v) = lab.api(
        "POST",
        "/api/v1/tenants/plant-a/claims",
        Some(json!({ "manufacturer": "acme", "serials": [{ "serial": "SN-0001" }] })),
    )?;
    ensure!(s == 200 && v["added"] == 1, "claims: {s} {v}");

    let write_idevid =
        |name: &str, ca: &ManufacturerCa, serial: &str| -> Result<(String, String)> {
            let id = ca.issue_idevid(
                &IdevidParams::new(serial, "thermostat").with_model_uri("urn:acme:model:thermo"),
            )?;
            let cert = lab.path(&format!("{name}.idevid.crt"));
            let key = lab.path(&format!("{name}.idevid.key"));
            std::fs::write(&cert, &id.cert_pem)?;
            std::fs::write(&key, id.key_pem.expose())?;
            Ok((
                cert.to_str().context("path")?.to_owned(),
                key.to_str().context("path")?.to_owned(),
            ))
        };

    // Claimed, registered: enrolls into the claiming tenant, named by its serial.
    let (cert, key) = write_idevid("good", &acme, "SN-0001")?;
    let (_, csr) = lab.csr("good", "/", None)?;
    let (s, body) = lab.est("simpleenroll", &csr, &["--cert", &cert, "--key", &key])?;
    ensure!(s == 200, "claimed IDevID: {s} {}", text(&body));
    let ldevid = lab.certs_from_response("good", &body)?;
    let info = run(Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&ldevid))?;
    ensure!(
        info.contains("gatehouse://plant-a/device/SN-0001"),
        "{info}"
    );
    let (s, v) = lab.api("GET", "/api/v1/devices/plant-a/SN-0001", None)?;
    ensure!(s == 200, "{v}");
    ensure!(
        v["device"]["assurance"] == "idevid" && v["device"]["model"] == "thermo",
        "{v}"
    );

    // Not claimed by anyone.
    let (cert, key) = write_idevid("unclaimed", &acme, "SN-0002")?;
    let (_, csr) = lab.csr("unclaimed", "/", None)?;
    let (s, body) = lab.est("simpleenroll", &csr, &["--cert", &cert, "--key", &key])?;
    ensure!(s == 403, "unclaimed: {s} {}", text(&body));
    ensure!(text(&body).contains("not claimed"), "{}", text(&body));

    // A look-alike manufacturer CA nobody registered.
    let rogue = ManufacturerCa::new("Acme Devices")?;
    let (cert, key) = write_idevid("rogue", &rogue, "SN-0001")?;
    let (_, csr) = lab.csr("rogue", "/", None)?;
    let (s, body) = lab.est("simpleenroll", &csr, &["--cert", &cert, "--key", &key])?;
    ensure!(s == 403, "unregistered manufacturer: {s} {}", text(&body));
    ensure!(
        text(&body).contains("registered manufacturer"),
        "{}",
        text(&body)
    );

    // A claimed IDevID asking for another name is refused too.
    let (cert, key) = write_idevid("greedy", &acme, "SN-0001")?;
    let (_, csr) = lab.csr("greedy", "/CN=SN-0009", None)?;
    let (s, _) = lab.est("simpleenroll", &csr, &["--cert", &cert, "--key", &key])?;
    ensure!(s == 403, "IDevID CSR for another device: {s}");

    // Every refusal is reported in the audit log with its reason.
    let audit = lab.audit()?;
    let reasons: Vec<String> = audit
        .iter()
        .filter(|r| r["action"] == "refuse_enrollment")
        .map(|r| r["reason"].as_str().unwrap_or("").to_owned())
        .collect();
    ensure!(
        reasons.iter().any(|r| r.contains("not claimed")),
        "{reasons:?}"
    );
    ensure!(
        reasons
            .iter()
            .any(|r| r.contains("registered manufacturer")),
        "{reasons:?}"
    );
    // ... and counted for monitoring.
    let refused = lab
        .gh
        .metric(r#"gatehouse_est_requests_total{operation="enroll_idevid",status="403"}"#)
        .await?;
    ensure!(
        refused >= 3.0,
        "refused IDevID enrollments counted: {refused}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn renewal_issues_a_new_certificate_and_a_revoked_one_cannot_renew() -> Result<()> {
    if !tools() {
        return Ok(());
    }
    let lab = Lab::start().await?;
    lab.register_acme(ManufacturerCa::new("Acme")?.cert_pem())?;
    let (key, cert) = lab.enroll_with_token("renew-1", &lab.token("default", 1, 3600)?)?;
    let (key2, csr) = lab.csr("renew-1b", "/CN=renew-1", None)?;
    let auth = [
        "--cert",
        cert.to_str().context("p")?,
        "--key",
        key.to_str().context("p")?,
    ];
    let (s, body) = lab.est("simplereenroll", &csr, &auth)?;
    ensure!(s == 200, "renewal: {s} {}", text(&body));
    let cert2 = lab.certs_from_response("renew-1b", &body)?;
    let serial = |p: &Path| {
        run(Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(p))
    };
    ensure!(
        serial(&cert)? != serial(&cert2)?,
        "same serial after renewal"
    );
    let _ = key2;

    // Renewal without a client certificate is a 401.
    let (s, _) = lab.est("simplereenroll", &csr, &[])?;
    ensure!(s == 401, "renewal without a certificate: {s}");

    let (s, v) = lab.api(
        "POST",
        "/api/v1/devices/default/renew-1/revoke",
        Some(json!({ "reason": "key_compromise" })),
    )?;
    ensure!(s == 200, "revoke: {s} {v}");
    ensure!(v["certificates"].as_array().map(Vec::len) == Some(2), "{v}");
    let (s, body) = lab.est("simplereenroll", &csr, &auth)?;
    ensure!(
        s == 403,
        "renewal with a revoked certificate: {s} {}",
        text(&body)
    );

    let audit = lab.audit()?;
    ensure!(
        audit.iter().any(|r| r["action"] == "renew"),
        "no renew record"
    );
    ensure!(
        audit.iter().any(|r| r["action"] == "refuse_renewal"),
        "no refuse_renewal record"
    );
    ensure!(
        audit
            .iter()
            .any(|r| r["action"] == "revoke" && r["subject"] == "default/renew-1"),
        "no revoke record"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_device_session_is_gone_at_once_and_it_cannot_reconnect() -> Result<()> {
    if !tools() {
        return Ok(());
    }
    let lab = Lab::start().await?;
    lab.register_acme(ManufacturerCa::new("Acme")?.cert_pem())?;
    let (tls, mut client) = lab.connected_device("doomed").await?;
    client
        .subscribe("devices/doomed/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await?;

    let started = Instant::now();
    let (s, v) = lab.api(
        "POST",
        "/api/v1/devices/default/doomed/revoke",
        Some(json!({ "reason": "key_compromise", "comment": "stolen" })),
    )?;
    let answered = started.elapsed();
    ensure!(s == 200, "revoke: {s} {v}");
    // The session was ended before the revoke call returned.
    ensure!(v["disconnected"] == json!(["default/doomed"]), "{v}");
    let reason = client.server_disconnect().await?;
    let gone = started.elapsed();
    eprintln!("revoke call answered after {answered:?}; client saw the disconnect after {gone:?}");
    ensure!(
        reason == Some(rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::AdministrativeAction),
        "disconnect reason {reason:?}"
    );

    // The CRL now lists it, and a reconnect fails the TLS handshake for that reason.
    lab.reconnect_refused_as_revoked(tls, "doomed").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_keys_never_appear_in_logs_errors_or_api_output() -> Result<()> {
    if !tools() {
        return Ok(());
    }
    let lab = Lab::start_with("").await?;
    let acme = ManufacturerCa::new("Acme")?;
    lab.register_acme(acme.cert_pem())?;
    let mut outputs = String::new();
    // Successes and every kind of failure, with their bodies.
    let token = lab.token("default", 1, 3600)?;
    lab.enroll_with_token("k-1", &token)?;
    let (_, csr) = lab.csr("k-2", "/CN=k-2", None)?;
    for auth in [format!("{}:{}", token.0, token.1), "x:y".to_owned()] {
        let (_, body) = lab.est("simpleenroll", &csr, &["-u", &auth])?;
        outputs.push_str(&text(&body));
    }
    for path in [
        "/api/v1/devices?limit=1000",
        "/api/v1/devices/default/k-1",
        "/api/v1/manufacturers",
        "/api/v1/audit?limit=1000",
        "/api/openapi.json",
        "/api/v1/tokens?tenant=default",
    ] {
        let (_, v) = lab.api("GET", path, None)?;
        outputs.push_str(&v.to_string());
    }
    let (_, v) = lab.api("POST", "/api/v1/devices/default/k-1/revoke", None)?;
    outputs.push_str(&v.to_string());
    outputs.push_str(&lab.gh.log());
    outputs.push_str(&lab.gh.cli(&["config", "check"]).await.unwrap_or_default());

    ensure!(
        !outputs.contains("PRIVATE KEY"),
        "a private key in the output"
    );
    let ca_dir = lab.gh.data_dir().join("ca");
    let mut secrets = Vec::new();
    for entry in std::fs::read_dir(&ca_dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_owned();
        if name.ends_with(".key") || name == "ca.kek" {
            secrets.push((name, std::fs::read_to_string(&path)?));
        }
    }
    ensure!(
        secrets.len() >= 3,
        "expected sealed keys and the KEK, found {secrets:?}"
    );
    for (name, secret) in &secrets {
        for line in secret
            .lines()
            .filter(|l| l.len() >= 16 && !l.starts_with("-----"))
        {
            ensure!(
                !outputs.contains(line),
                "{name} material appears in the output"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_from_the_command_line_reaches_the_running_server() -> Result<()> {
    if !tools() {
        return Ok(());
    }
    let lab = Lab::start().await?;
    lab.register_acme(ManufacturerCa::new("Acme")?.cert_pem())?;
    let (tls, mut client) = lab.connected_device("cli-doomed").await?;

    // Another process writes the revocation to the registry; the server's poll applies it.
    let out = lab
        .gh
        .cli(&[
            "device",
            "revoke",
            "cli-doomed",
            "--reason",
            "key-compromise",
        ])
        .await?;
    ensure!(!out.is_empty(), "revoke printed nothing");
    let reason = client.server_disconnect().await?;
    ensure!(
        reason == Some(rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::AdministrativeAction),
        "disconnect reason {reason:?}"
    );
    lab.reconnect_refused_as_revoked(tls, "cli-doomed").await?;

    // Re-claimed from the command line: active again, its revoked certificates stay revoked.
    let out = lab
        .gh
        .cli(&["device", "reinstate", "cli-doomed", "--why", "key rotated"])
        .await?;
    ensure!(out.contains("reinstated"), "{out}");
    let (s, v) = lab.api("GET", "/api/v1/devices/default/cli-doomed", None)?;
    ensure!(s == 200 && v["device"]["status"] == "active", "{s} {v}");
    ensure!(v["certificates"][0]["status"] == "revoked", "{v}");
    ensure!(
        lab.audit()?.iter().any(|r| r["action"] == "reinstate"),
        "no reinstate record"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_idevid_device_enrolls_again_only_once_reinstated() -> Result<()> {
    if !tools() {
        return Ok(());
    }
    let lab = Lab::start().await?;
    let acme = ManufacturerCa::new("Acme Devices")?;
    lab.register_acme(acme.cert_pem())?;
    let (s, v) = lab.api(
        "POST",
        "/api/v1/tenants/default/claims",
        Some(json!({ "manufacturer": "acme", "serials": [{ "serial": "SN-7", "expected_model": "thermo" }] })),
    )?;
    ensure!(s == 200, "claims: {s} {v}");
    let id = acme.issue_idevid(&IdevidParams::new("SN-7", "thermostat"))?;
    let (cert, key) = (lab.path("sn7.idevid.crt"), lab.path("sn7.idevid.key"));
    std::fs::write(&cert, &id.cert_pem)?;
    std::fs::write(&key, id.key_pem.expose())?;
    let auth = [
        "--cert",
        cert.to_str().context("p")?,
        "--key",
        key.to_str().context("p")?,
    ];
    let (_, csr) = lab.csr("sn7", "/CN=SN-7", None)?;
    let (s, body) = lab.est("simpleenroll", &csr, &auth)?;
    ensure!(s == 200, "first enrollment: {s} {}", text(&body));

    let (s, v) = lab.api("POST", "/api/v1/devices/default/SN-7/revoke", None)?;
    ensure!(s == 200, "revoke: {s} {v}");
    let (s, body) = lab.est("simpleenroll", &csr, &auth)?;
    ensure!(s == 403, "revoked device enrolling: {s} {}", text(&body));
    ensure!(text(&body).contains("reinstate"), "{}", text(&body));

    let (s, v) = lab.api("POST", "/api/v1/devices/default/SN-7/reinstate", None)?;
    ensure!(s == 200 && v["status"] == "active", "reinstate: {s} {v}");
    let (s, body) = lab.est("simpleenroll", &csr, &auth)?;
    ensure!(
        s == 200,
        "re-enrollment after reinstatement: {s} {}",
        text(&body)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rolled_issuing_ca_issues_new_certificates_while_old_ones_keep_working() -> Result<()> {
    if !tools() {
        return Ok(());
    }
    let lab = Lab::start().await?;
    lab.register_acme(ManufacturerCa::new("Acme")?.cert_pem())?;
    let token = lab.token("default", 5, 3600)?;
    let (old_key, old_cert) = lab.enroll_with_token("before-roll", &token)?;

    let out = lab.gh.cli(&["ca", "roll"]).await?;
    ensure!(out.contains("issuing-2"), "{out}");
    let Lab { gh, dir } = lab;
    let lab = Lab {
        gh: gh.restart().await?,
        dir,
    };

    let (_, new_cert) = lab.enroll_with_token("after-roll", &token)?;
    let issuer = |p: &Path| {
        run(Command::new("openssl")
            .args([
                "x509",
                "-noout",
                "-issuer",
                "-ext",
                "crlDistributionPoints",
                "-in",
            ])
            .arg(p))
    };
    let new_info = issuer(&new_cert)?;
    ensure!(new_info.contains("Gatehouse Issuing CA 2"), "{new_info}");
    ensure!(new_info.contains("/pki/crl/issuing-2.crl"), "{new_info}");
    ensure!(issuer(&old_cert)?.contains("Gatehouse Issuing CA 1"));
    for crl in ["issuing-1", "issuing-2"] {
        let (s, _) = lab.curl(&[&lab.url(&format!("/pki/crl/{crl}.crl"))])?;
        ensure!(s == 200, "{crl}.crl: {s}");
    }

    // The certificate from the retired issuer still connects, and can still be revoked.
    let tls = tls_from_files(&lab, &old_key, &old_cert)?;
    let mut client = V5::connect_as(lab.gh.listeners.mqtts, tls.clone(), "before-roll").await?;
    let (s, v) = lab.api("POST", "/api/v1/devices/default/before-roll/revoke", None)?;
    ensure!(s == 200, "revoke: {s} {v}");
    client.server_disconnect().await?;
    lab.reconnect_refused_as_revoked(tls, "before-roll").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn external_ca_issues_the_device_certificates() -> Result<()> {
    if !tools() || !have_program("mosquitto_pub", &["--help"]) {
        return Ok(());
    }
    // An operator's own root and issuing CA, made with openssl.
    let pki = tempfile::tempdir()?;
    let p = |n: &str| pki.path().join(n);
    let ext = p("ext.cnf");
    std::fs::write(
        &ext,
        "[ca]\nbasicConstraints = critical, CA:TRUE, pathlen:0\nkeyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n",
    )?;
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-subj", "/O=Operator/CN=Operator Root", "-days", "30"])
        .args([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])
        .arg("-keyout")
        .arg(p("root.key"))
        .arg("-out")
        .arg(p("root.pem")))?;
    run(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-subj", "/O=Operator/CN=Operator Devices CA"])
        .arg("-keyout")
        .arg(p("int.key"))
        .arg("-out")
        .arg(p("int.csr")))?;
    run(Command::new("openssl")
        .args([
            "x509",
            "-req",
            "-days",
            "20",
            "-set_serial",
            "7",
            "-extensions",
            "ca",
        ])
        .arg("-extfile")
        .arg(&ext)
        .arg("-in")
        .arg(p("int.csr"))
        .arg("-CA")
        .arg(p("root.pem"))
        .arg("-CAkey")
        .arg(p("root.key"))
        .arg("-out")
        .arg(p("int.pem")))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p("int.key"), std::fs::Permissions::from_mode(0o600))?;
    }
    let extra = format!(
        "[ca]\nexternal_cert = {:?}\nexternal_key = {:?}\nexternal_chain = {:?}\n",
        p("int.pem"),
        p("int.key"),
        p("root.pem")
    );
    let lab = Lab::start_with(&extra).await?;
    lab.register_acme(ManufacturerCa::new("Acme")?.cert_pem())?;
    let (key, cert) = lab.enroll_with_token("ext-1", &lab.token("default", 1, 3600)?)?;
    let verify = run(Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(p("root.pem"))
        .arg("-untrusted")
        .arg(p("int.pem"))
        .arg(&cert))?;
    ensure!(verify.contains(": OK"), "{verify}");
    // No embedded CA was created beside it.
    ensure!(!lab.gh.data_dir().join("ca").join("root.key").exists());

    mosquitto_pub_qos1(&lab, &key, &cert, "ext-1")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_document_is_valid_and_errors_share_one_shape() -> Result<()> {
    if !tools() {
        return Ok(());
    }
    let lab = Lab::start().await?;
    let (s, doc) = lab.api("GET", "/api/openapi.json", None)?;
    ensure!(s == 200, "openapi: {s}");
    ensure!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    for path in [
        "/api/v1/devices",
        "/api/v1/devices/{tenant}/{device}/revoke",
        "/api/v1/tokens",
        "/api/v1/revocations/batch",
        "/api/v1/audit/verify",
    ] {
        ensure!(doc["paths"].get(path).is_some(), "{path} missing");
    }
    // Checked by a validator we did not write, when it is installed (CI installs it).
    let file = lab.path("openapi.json");
    std::fs::write(&file, doc.to_string())?;
    let check = Command::new("python3")
        .args([
            "-c",
            "import sys, json; from openapi_spec_validator import validate; \
             validate(json.load(open(sys.argv[1]))); print('valid')",
        ])
        .arg(&file)
        .output()?;
    let out = format!("{}{}", text(&check.stdout), text(&check.stderr));
    if out.contains("No module named") {
        gatehouse_testkit::skip(
            "openapi-spec-validator is not installed (pip install openapi-spec-validator)",
        );
    } else {
        ensure!(check.status.success() && out.contains("valid"), "{out}");
    }

    // Every error has the same body.
    for (method, path, body) in [
        ("GET", "/api/v1/devices/default/nobody", None),
        ("GET", "/api/v1/devices?status=lost", None),
        ("POST", "/api/v1/tenants", Some(json!({ "id": "default" }))),
        (
            "POST",
            "/api/v1/tokens",
            Some(json!({ "tenant": "default", "model": "none" })),
        ),
        ("POST", "/api/v1/devices/default/nobody/revoke", None),
        // The extractors' own refusals: a wrong method, a route that does not exist, a
        // body of the wrong shape.
        ("DELETE", "/api/v1/tenants", None),
        ("GET", "/api/v1/no-such-route", None),
        // Paging values out of range are refused, not quietly changed.
        ("GET", "/api/v1/devices?limit=0", None),
        ("GET", "/api/v1/audit?limit=5000", None),
        ("GET", "/api/v1/incidents?limit=1001", None),
        ("POST", "/api/v1/tenants", Some(json!({ "id": 17 }))),
    ] {
        let (s, v) = lab.api(method, path, body)?;
        ensure!((400..500).contains(&s), "{method} {path}: {s} {v}");
        ensure!(
            v["error"]["status"] == s
                && v["error"]["code"].is_string()
                && v["error"]["message"].is_string(),
            "{method} {path}: {v}"
        );
    }
    // A body that is not JSON at all, and one sent as another content type.
    let url = lab.url("/api/v1/tenants");
    let auth = lab.auth_header();
    for extra in [
        [
            "-H",
            "content-type: application/json",
            "--data-binary",
            "{not json",
        ],
        ["-H", "content-type: text/plain", "--data-binary", "{}"],
    ] {
        let mut args = vec!["-X", "POST", url.as_str(), "-H", auth.as_str()];
        args.extend(extra);
        let (s, body) = lab.curl(&args)?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .with_context(|| format!("{extra:?}: {s} {}", text(&body)))?;
        ensure!(
            matches!(s, 400 | 415) && v["error"]["status"] == s,
            "{extra:?}: {s} {v}"
        );
    }
    // Every operation lists the errors any route can give.
    let op = &doc["paths"]["/api/v1/tenants"]["post"]["responses"];
    for status in ["400", "401", "403", "413", "415", "422"] {
        ensure!(
            op.get(status).is_some(),
            "POST /api/v1/tenants lacks {status}: {op}"
        );
    }
    let login = &doc["paths"]["/api/v1/session/login"]["post"]["responses"];
    ensure!(
        login.get("401").is_some() && login.get("403").is_none(),
        "{login}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn model_profiles_are_validated_before_they_are_stored() -> Result<()> {
    if !tools() {
        return Ok(());
    }
    let lab = Lab::start().await?;
    lab.register_acme(ManufacturerCa::new("Acme")?.cert_pem())?;
    let upload = |body: &str| -> Result<(u16, Value)> {
        let file = lab.path(&format!("profile-{}.toml", rand_suffix()));
        std::fs::write(&file, body)?;
        let data = format!("@{}", file.display());
        let url = lab.url("/api/v1/models/thermo/profiles");
        let auth = lab.auth_header();
        let (s, bytes) = lab.curl(&[
            "-X",
            "POST",
            "-H",
            &auth,
            "-H",
            "content-type: application/toml",
            "--data-binary",
            &data,
            &url,
        ])?;
        Ok((s, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    };
    let good = "manufacturer = \"acme\"\nmodel = \"thermo\"\n[firmware]\ncurrent = \"2.0.0\"\n\
                supported = [\"1.0.0\", \"2.0.0\"]\n";
    let (s, v) = upload(good)?;
    ensure!(s == 201 && v["version"] == 1, "{s} {v}");
    let (s, v) = upload(good)?;
    ensure!(s == 201 && v["version"] == 2, "versions increase: {s} {v}");
    for (bad, needle) in [
        (
            "manufacturer = \"acme\"\nmodel = \"thermo\"\n[firmware]\ncurrent = \"3.0.0\"\nsupported = [\"1.0.0\"]\n",
            "firmware",
        ),
        (
            "manufacturer = \"acme\"\nmodel = \"other\"\n[firmware]\ncurrent = \"1.0.0\"\nsupported = [\"1.0.0\"]\n",
            "other",
        ),
        (
            "manufacturer = \"globex\"\nmodel = \"thermo\"\n[firmware]\ncurrent = \"1.0.0\"\nsupported = [\"1.0.0\"]\n",
            "globex",
        ),
        ("[topics\n", "line 1"),
    ] {
        let (s, v) = upload(bad)?;
        ensure!(s == 422, "{bad:?}: {s} {v}");
        let msg = v["error"]["message"].as_str().unwrap_or("");
        ensure!(msg.contains(needle), "{bad:?}: {msg}");
    }
    Ok(())
}
