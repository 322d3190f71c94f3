//! Operator access against the real binary, driven with curl: the API refuses requests
//! without a valid token or session; roles bound what an operator may do; an operator of
//! one tenant finds another tenant's devices, incidents, actions, tokens and audit records
//! "not found"; dashboard logins set a hardened cookie, need the CSRF token for changes,
//! lock an account after failed attempts and are rate-limited per address; the first
//! start prints the first admin's password once. Skipped with a message when curl or
//! openssl is missing, except in CI.

mod support;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{Value, json};
use support::clients::V5;
use support::lab::*;
use support::{Gatehouse, Options};

fn skip() -> bool {
    if tools() {
        return false;
    }
    gatehouse_testkit::skip("curl or openssl is missing");
    true
}

fn status(lab: &Lab, token: &str, method: &str, path: &str, body: Option<Value>) -> Result<u16> {
    Ok(lab.api_as(token, method, path, body)?.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_api_call_is_401() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = Lab::start().await?;
    let url = lab.url("/api/v1/devices");
    let (s, body) = lab.curl(&[url.as_str()])?;
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    ensure!(s == 401 && v["error"]["code"] == "unauthorized", "{s} {v}");
    for bad in ["gha_at-0000_00", "nonsense", ""] {
        let (s, _) = lab.api_as(bad, "GET", "/api/v1/devices", None)?;
        ensure!(s == 401, "token {bad:?}: {s}");
    }
    // The public parts stay public: the OpenAPI document (which names both schemes), EST
    // and CRLs.
    let (s, doc) = lab.curl(&[lab.url("/api/openapi.json").as_str()])?;
    let doc: Value = serde_json::from_slice(&doc)?;
    ensure!(s == 200, "openapi: {s}");
    ensure!(
        doc["components"]["securitySchemes"]["bearer"].is_object()
            && doc["components"]["securitySchemes"]["session"].is_object(),
        "{:#}",
        doc["components"]["securitySchemes"]
    );
    let (s, _) = lab.curl(&[lab.url("/.well-known/est/cacerts").as_str()])?;
    ensure!(s == 200, "cacerts: {s}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_or_expired_api_token_is_refused() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = Lab::start().await?;
    let (s, v) = lab.api(
        "POST",
        "/api/v1/api-tokens",
        Some(json!({ "label": "short", "permissions": ["read"], "expires_in": 1 })),
    )?;
    ensure!(s == 201, "{s} {v}");
    let short = v["token"].as_str().context("token")?.to_owned();
    let (s, v) = lab.api(
        "POST",
        "/api/v1/api-tokens",
        Some(json!({ "label": "ci", "permissions": ["read"] })),
    )?;
    ensure!(s == 201, "{s} {v}");
    let ci = v["token"].as_str().context("token")?.to_owned();
    let id = v["id"].as_str().context("id")?.to_owned();
    ensure!(status(&lab, &ci, "GET", "/api/v1/devices", None)? == 200);
    // A read-only scope cannot change anything, whatever the owner's role.
    ensure!(
        status(
            &lab,
            &ci,
            "POST",
            "/api/v1/tenants",
            Some(json!({"id": "x"}))
        )? == 403
    );
    // Nor mint itself a wider token.
    ensure!(
        status(
            &lab,
            &ci,
            "POST",
            "/api/v1/api-tokens",
            Some(json!({ "permissions": ["administer"] }))
        )? == 422
    );
    let (s, v) = lab.api("POST", &format!("/api/v1/api-tokens/{id}/revoke"), None)?;
    ensure!(s == 200 && v["revoked_at"].is_i64(), "{s} {v}");
    ensure!(status(&lab, &ci, "GET", "/api/v1/devices", None)? == 401);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    ensure!(status(&lab, &short, "GET", "/api/v1/devices", None)? == 401);
    Ok(())
}

/// Waits for an incident about `device` (as `tenant/device`), with the admin token.
async fn incident_about(lab: &Lab, device: &str) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + support::WAIT;
    loop {
        let (s, v) = lab.api("GET", &format!("/api/v1/incidents?device={device}"), None)?;
        ensure!(s == 200, "incidents: {s} {v}");
        if let Some(i) = v["incidents"].as_array().and_then(|a| a.first()) {
            return Ok(i.clone());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no incident about {device}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn other_tenant_gets_404() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = Lab::start_with("[detect]\ntick = \"100ms\"\n").await?;
    lab.register_acme(gatehouse_pki::ManufacturerCa::new("Acme")?.cert_pem())?;
    let (s, body) = lab.upload_profile("thermo", THERMO_PROFILE)?;
    ensure!(s == 201, "profile: {s} {}", text(&body));
    for t in ["red", "blue"] {
        let (s, v) = lab.api("POST", "/api/v1/tenants", Some(json!({ "id": t })))?;
        ensure!(s == 201, "tenant {t}: {s} {v}");
    }
    lab.enroll_with_token("red-1", &lab.token("red", 1, 3600)?)?;
    let (key, cert) = lab.enroll_with_token("blue-1", &lab.token("blue", 1, 3600)?)?;
    let blue_token = lab.token("blue", 1, 3600)?;

    // blue-1 scans topics: an incident and a quarantine in tenant blue.
    let tls = tls_from_files(&lab, &key, &cert)?;
    let client = V5::connect_as(lab.gh.listeners.mqtts, tls, "blue-1").await?;
    for i in 0..30 {
        client
            .client
            .subscribe(format!("devices/victim-{i}/commands/set"), QoS::AtMostOnce)
            .await?;
    }
    let incident = incident_about(&lab, "blue/blue-1").await?;
    let incident_id = incident["id"].to_string();
    let (s, v) = lab.api(
        "GET",
        &format!("/api/v1/actions?incident={incident_id}"),
        None,
    )?;
    ensure!(s == 200, "{s} {v}");
    let action_id = v["actions"][0]["id"].to_string();

    let red_op = lab
        .operator_token("red-op", "operator", Some("red"))
        .await?;
    let red_audit = lab
        .operator_token("red-audit", "auditor", Some("red"))
        .await?;
    let red_analyst = lab
        .operator_token("red-analyst", "analyst", Some("red"))
        .await?;

    // Reads of blue's objects by red's operator: not found, as if they did not exist.
    for path in [
        "/api/v1/devices/blue/blue-1".to_owned(),
        "/api/v1/devices/blue/blue-1/trust".to_owned(),
        "/api/v1/devices?tenant=blue".to_owned(),
        "/api/v1/tokens?tenant=blue".to_owned(),
        format!("/api/v1/incidents/{incident_id}"),
        "/api/v1/incidents?tenant=blue".to_owned(),
        "/api/v1/incidents?device=blue/blue-1".to_owned(),
        "/api/v1/actions?device=blue/blue-1".to_owned(),
    ] {
        let (s, v) = lab.api_as(&red_op, "GET", &path, None)?;
        ensure!(
            s == 404 && v["error"]["code"] == "not_found",
            "GET {path}: {s} {v}"
        );
    }
    // Actions on them: not found, and nothing changes.
    let blue_token_id = &blue_token.0;
    for (method, path, body) in [
        (
            "POST",
            "/api/v1/devices/blue/blue-1/revoke".to_owned(),
            None,
        ),
        (
            "POST",
            "/api/v1/devices/blue/blue-1/reinstate".to_owned(),
            None,
        ),
        (
            "PUT",
            "/api/v1/devices/blue/blue-1/pin".to_owned(),
            Some(json!({ "tier": "trusted", "for": "1h", "reason": "x" })),
        ),
        (
            "POST",
            format!("/api/v1/incidents/{incident_id}/acknowledge"),
            None,
        ),
        (
            "POST",
            format!("/api/v1/incidents/{incident_id}/resolve"),
            None,
        ),
        ("POST", format!("/api/v1/actions/{action_id}/reverse"), None),
        (
            "POST",
            format!("/api/v1/tokens/{blue_token_id}/revoke"),
            None,
        ),
        (
            "POST",
            "/api/v1/tokens".to_owned(),
            Some(json!({ "tenant": "blue", "model": "thermo" })),
        ),
        (
            "POST",
            "/api/v1/tenants/blue/claims".to_owned(),
            Some(json!({ "manufacturer": "acme", "serials": [{ "serial": "SN-1" }] })),
        ),
    ] {
        let (s, v) = lab.api_as(&red_op, method, &path, body)?;
        ensure!(s == 404, "{method} {path}: {s} {v}");
    }
    // Lists hold red's objects only.
    let (s, v) = lab.api_as(&red_op, "GET", "/api/v1/devices", None)?;
    ensure!(s == 200, "{s} {v}");
    let ids: Vec<String> = v["items"]
        .as_array()
        .context("items")?
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["tenant"].as_str().unwrap_or(""),
                d["id"].as_str().unwrap_or("")
            )
        })
        .collect();
    ensure!(ids == ["red/red-1"], "{ids:?}");
    for path in ["/api/v1/incidents", "/api/v1/actions"] {
        let (s, v) = lab.api_as(&red_op, "GET", path, None)?;
        ensure!(s == 200, "{s} {v}");
        ensure!(!v.to_string().contains("blue"), "{path}: {v}");
    }
    let (s, v) = lab.api_as(&red_op, "GET", "/api/v1/tenants", None)?;
    ensure!(s == 200 && v.as_array().map(Vec::len) == Some(1), "{s} {v}");

    // blue's device and incident are as they were.
    let (s, v) = lab.api("GET", "/api/v1/devices/blue/blue-1", None)?;
    ensure!(s == 200 && v["device"]["status"] == "active", "{s} {v}");
    let (s, v) = lab.api("GET", &format!("/api/v1/incidents/{incident_id}"), None)?;
    ensure!(s == 200 && v["incident"]["state"] == "open", "{s} {v}");

    // Roles: the operator reads no audit log; the auditor and the analyst change nothing
    // a device goes through; the operator does, and is named in the audit record.
    ensure!(status(&lab, &red_op, "GET", "/api/v1/audit", None)? == 403);
    ensure!(
        status(
            &lab,
            &red_analyst,
            "POST",
            "/api/v1/devices/red/red-1/revoke",
            None
        )? == 403
    );
    ensure!(
        status(
            &lab,
            &red_audit,
            "POST",
            "/api/v1/devices/red/red-1/revoke",
            None
        )? == 403
    );
    ensure!(
        status(
            &lab,
            &red_op,
            "POST",
            "/api/v1/tenants",
            Some(json!({ "id": "green" }))
        )? == 403
    );
    let (s, v) = lab.api_as(&red_op, "POST", "/api/v1/devices/red/red-1/revoke", None)?;
    ensure!(s == 200, "{s} {v}");

    // The auditor of red reads red's audit records, and no record about blue.
    let (s, v) = lab.api_as(&red_audit, "GET", "/api/v1/audit?limit=1000", None)?;
    ensure!(s == 200, "{s} {v}");
    let records = v.as_array().context("records")?;
    ensure!(
        records.iter().any(|r| r["action"] == "revoke"
            && r["subject"] == "red/red-1"
            && r["actor"] == "operator:red-op"),
        "{v:#}"
    );
    ensure!(!v.to_string().contains("blue"), "{v:#}");
    // The admin's view has blue's too.
    let all = lab.audit()?;
    ensure!(
        all.iter().any(|r| r["subject"] == "blue/blue-1"),
        "admin audit"
    );
    Ok(())
}

/// Logs in with curl into a cookie jar; returns (status, response headers, body).
fn login(
    lab: &Lab,
    jar: &std::path::Path,
    name: &str,
    password: &str,
) -> Result<(u16, String, Value)> {
    let headers = lab.path(&format!("login-headers-{}", rand_suffix()));
    let body = json!({ "name": name, "password": password }).to_string();
    let (s, out) = lab.curl(&[
        "-c",
        jar.to_str().context("path")?,
        "-D",
        headers.to_str().context("path")?,
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data-binary",
        &body,
        &lab.url("/api/v1/session/login"),
    ])?;
    let head = std::fs::read_to_string(&headers).unwrap_or_default();
    Ok((s, head, serde_json::from_slice(&out).unwrap_or(Value::Null)))
}

/// A request with the session cookie from `jar`, and `csrf` when given.
fn with_session(
    lab: &Lab,
    jar: &std::path::Path,
    csrf: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let url = lab.url(path);
    let jar = jar.to_str().context("path")?;
    let header = csrf.map(|c| format!("x-csrf-token: {c}"));
    let data = body.map(|b| b.to_string());
    let mut args = vec!["-b", jar, "-X", method, url.as_str()];
    if let Some(h) = &header {
        args.extend(["-H", h.as_str()]);
    }
    if let Some(d) = &data {
        args.extend([
            "-H",
            "content-type: application/json",
            "--data-binary",
            d.as_str(),
        ]);
    }
    let (s, out) = lab.curl(&args)?;
    Ok((s, serde_json::from_slice(&out).unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread")]
async fn session_cookie_is_hardened_and_changes_need_the_csrf_token() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = Lab::start().await?;
    let password = lab.create_operator("alice", "operator", None).await?;
    let jar = lab.path("alice.jar");
    let (s, head, v) = login(&lab, &jar, "alice", &password)?;
    ensure!(s == 200, "login: {s} {v}");
    let cookie = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .context("no Set-Cookie")?;
    for attr in [
        "__Host-gh_session=",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
    ] {
        ensure!(cookie.contains(attr), "{attr} missing: {cookie}");
    }
    let csrf = v["csrf"].as_str().context("csrf")?.to_owned();
    let (s, me) = with_session(&lab, &jar, None, "GET", "/api/v1/session", None)?;
    ensure!(
        s == 200 && me["operator"] == "alice" && me["via"] == "session",
        "{s} {me}"
    );
    // A change with the cookie alone (what a cross-site form would send) is refused.
    let body = json!({ "label": "from the dashboard" });
    let (s, _) = with_session(
        &lab,
        &jar,
        None,
        "POST",
        "/api/v1/api-tokens",
        Some(body.clone()),
    )?;
    ensure!(s == 403, "no CSRF token: {s}");
    let (s, _) = with_session(
        &lab,
        &jar,
        Some("0000"),
        "POST",
        "/api/v1/api-tokens",
        Some(body.clone()),
    )?;
    ensure!(s == 403, "wrong CSRF token: {s}");
    let (s, v) = with_session(
        &lab,
        &jar,
        Some(&csrf),
        "POST",
        "/api/v1/api-tokens",
        Some(body),
    )?;
    ensure!(s == 201, "with the CSRF token: {s} {v}");
    // The operator role does not administer.
    let (s, _) = with_session(&lab, &jar, Some(&csrf), "GET", "/api/v1/operators", None)?;
    ensure!(s == 403, "operators list: {s}");
    // Log out: the cookie no longer opens anything.
    let (s, _) = with_session(&lab, &jar, Some(&csrf), "DELETE", "/api/v1/session", None)?;
    ensure!(s == 204, "logout: {s}");
    let (s, _) = with_session(&lab, &jar, None, "GET", "/api/v1/session", None)?;
    ensure!(s == 401, "after logout: {s}");
    let records = lab.audit()?;
    for action in ["login", "create_api_token", "logout"] {
        ensure!(
            records
                .iter()
                .any(|r| r["action"] == action && r["actor"] == "operator:alice"),
            "no {action} record by operator:alice"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_failed_logins_lock_the_account() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = Lab::start_with(
        "[api]\nmax_failed_logins = 3\nlockout = \"1h\"\nlogins_per_minute = 100\n",
    )
    .await?;
    let password = lab.create_operator("bob", "analyst", None).await?;
    let jar = lab.path("bob.jar");
    for _ in 0..3 {
        let (s, _, v) = login(&lab, &jar, "bob", "wrong-password-123")?;
        ensure!(s == 401 && v["error"]["code"] == "unauthorized", "{s} {v}");
    }
    // The right password no longer opens the account, and the answer does not say why.
    let (s, _, v) = login(&lab, &jar, "bob", &password)?;
    ensure!(s == 401, "locked account logged in: {s} {v}");
    // An unknown name gets the same answer as a wrong password.
    let (s, _, unknown) = login(&lab, &jar, "nobody", "whatever-password")?;
    ensure!(s == 401 && unknown == v, "{s} {unknown} vs {v}");
    let records = lab.audit()?;
    ensure!(
        records.iter().any(|r| r["action"] == "login"
            && r["outcome"] == "refused"
            && r["reason"].as_str().is_some_and(|s| s.contains("locked"))),
        "no lockout record"
    );
    // The admin on the host sets a new password, which lifts the lock.
    let out = lab.gh.cli(&["admin", "passwd", "bob", "--json"]).await?;
    let new: Value = serde_json::from_str(&out)?;
    let (s, _, v) = login(
        &lab,
        &jar,
        "bob",
        new["password"].as_str().context("password")?,
    )?;
    ensure!(s == 200, "after passwd: {s} {v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn login_attempts_are_rate_limited_per_address() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = Lab::start_with("[api]\nlogins_per_minute = 3\n").await?;
    let jar = lab.path("x.jar");
    for _ in 0..3 {
        let (s, _, _) = login(&lab, &jar, "mallory", "guess-guess-guess")?;
        ensure!(s == 401, "{s}");
    }
    let (s, _, v) = login(&lab, &jar, "mallory", "guess-guess-guess")?;
    ensure!(
        s == 429 && v["error"]["code"] == "too_many_requests",
        "{s} {v}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn first_start_prints_the_first_admin_password_once() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let gh = Gatehouse::start(Options {
        no_operator: true,
        ..Options::default()
    })
    .await?;
    let log = gh.log();
    let password = log
        .lines()
        .find_map(|l| l.trim().strip_prefix("password: "))
        .with_context(|| format!("no password in the log:\n{log}"))?
        .to_owned();
    let dir = gh.data_dir().join("lab");
    std::fs::create_dir_all(&dir)?;
    let lab = Lab { gh, dir };
    let jar = lab.path("admin.jar");
    let (s, _, v) = login(&lab, &jar, "admin", &password)?;
    ensure!(s == 200 && v["role"] == "admin", "{s} {v}");
    let Lab { mut gh, .. } = lab;
    gh = gh.restart().await?;
    let log = gh.log();
    let second = log
        .split("[server run 1]")
        .nth(1)
        .context("no second run")?;
    ensure!(!second.contains("password:"), "printed again:\n{log}");
    Ok(())
}

/// A first start that fails (its HTTPS port is taken) prints no password: the first admin
/// is created once the server is up, so the start that works prints it, and it logs in.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_first_start_keeps_the_first_admin_for_the_start_that_works() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let dir = Gatehouse::scratch_dir()?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let config = dir.path().join("taken.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[listeners]\nmqtts = \"127.0.0.1:0\"\nhttps = \"{}\"\n",
            dir.path().display().to_string(),
            taken.local_addr()?
        ),
    )?;
    let mut serve = tokio::process::Command::new(support::binary());
    serve
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    // A deadline only so that a server that wrongly starts fails the test instead of
    // hanging it.
    let out = tokio::time::timeout(support::WAIT, serve.output())
        .await
        .context("serve with its HTTPS port taken did not exit")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "serve with its HTTPS port taken succeeded:\n{stderr}"
    );
    ensure!(
        stderr.contains("binding HTTPS") && !stderr.contains("password"),
        "the failed start printed a password, or not why it failed:\n{stderr}"
    );
    drop(taken);

    let gh = Gatehouse::start_in(
        dir,
        Options {
            no_operator: true,
            ..Options::default()
        },
        0,
    )
    .await?;
    let log = gh.log();
    let password = log
        .lines()
        .find_map(|l| l.trim().strip_prefix("password: "))
        .with_context(|| format!("the start that works printed no password:\n{log}"))?
        .to_owned();
    let dir = gh.data_dir().join("lab");
    std::fs::create_dir_all(&dir)?;
    let lab = Lab { gh, dir };
    let (s, _, v) = login(&lab, &lab.path("admin.jar"), "admin", &password)?;
    ensure!(s == 200 && v["role"] == "admin", "{s} {v}");
    Ok(())
}

/// Runs the binary with a configuration of its own (an empty data directory elsewhere) and
/// `args`; returns (success, stdout, stderr).
fn remote_cli(lab: &Lab, token: Option<&str>, args: &[&str]) -> Result<(bool, String, String)> {
    let elsewhere = lab.path(&format!("elsewhere-{}", rand_suffix()));
    std::fs::create_dir_all(&elsewhere)?;
    let config = elsewhere.join("gatehouse.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n",
            elsewhere.join("data").display().to_string()
        ),
    )?;
    let server = format!("https://{}", lab.gh.listeners.https);
    let mut cmd = std::process::Command::new(support::binary());
    cmd.arg("--config")
        .arg(&config)
        .args(args)
        .arg("--server")
        .arg(&server)
        .arg("--server-ca")
        .arg(&lab.gh.listeners.ca)
        .env_remove("GATEHOUSE_TOKEN")
        .stdin(std::process::Stdio::null());
    if let Some(t) = token {
        cmd.arg("--token").arg(t);
    }
    let out = cmd.output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_works_a_remote_server_with_an_operators_token() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = Lab::start().await?;
    lab.register_acme(gatehouse_pki::ManufacturerCa::new("Acme")?.cert_pem())?;
    for t in ["red", "blue"] {
        let (s, v) = lab.api("POST", "/api/v1/tenants", Some(json!({ "id": t })))?;
        ensure!(s == 201, "tenant {t}: {s} {v}");
    }
    lab.enroll_with_token("red-1", &lab.token("red", 1, 3600)?)?;
    lab.enroll_with_token("blue-1", &lab.token("blue", 1, 3600)?)?;
    let red_op = lab
        .operator_token("red-op", "operator", Some("red"))
        .await?;

    let (ok, out, err) = remote_cli(&lab, Some(&red_op), &["device", "list", "--json"])?;
    ensure!(ok, "device list: {err}");
    let v: Value = serde_json::from_str(&out)?;
    let items = v.as_array().context("an array")?;
    ensure!(items.len() == 1 && items[0]["id"] == "red-1", "{out}");
    let (ok, out, err) = remote_cli(&lab, Some(&red_op), &["device", "revoke", "red/red-1"])?;
    ensure!(ok && out.contains("revoked"), "revoke: {out} {err}");
    // Another tenant's device does not exist for this operator; shared things are not its
    // to change.
    let (ok, _, err) = remote_cli(&lab, Some(&red_op), &["device", "show", "blue/blue-1"])?;
    ensure!(!ok && err.contains("404"), "{err}");
    let (ok, _, err) = remote_cli(&lab, Some(&red_op), &["tenant", "add", "green"])?;
    ensure!(!ok && err.contains("403"), "{err}");
    // No token, a bad token: a clear refusal.
    let (ok, _, err) = remote_cli(&lab, None, &["device", "list"])?;
    ensure!(!ok && err.contains("--token"), "{err}");
    let (ok, _, err) = remote_cli(&lab, Some("gha_x_y"), &["device", "list"])?;
    ensure!(!ok && err.contains("refused the token"), "{err}");
    // An admin's token registers a model with its profile and reads the policy set; the
    // tenant's operator may not replace the policies.
    let admin = lab.gh.token.clone();
    let profile = lab.path("remote-profile.toml");
    std::fs::write(
        &profile,
        THERMO_PROFILE.replace("\"thermo\"", "\"thermo2\""),
    )?;
    let profile = profile.to_str().context("path")?;
    let (ok, out, err) = remote_cli(
        &lab,
        Some(&admin),
        &[
            "model",
            "add",
            "thermo2",
            "--manufacturer",
            "acme",
            "--profile",
            profile,
        ],
    )?;
    ensure!(ok, "model add: {out} {err}");
    let (ok, out, err) = remote_cli(&lab, Some(&admin), &["model", "list", "--json"])?;
    ensure!(ok && out.contains("thermo2"), "model list: {out} {err}");
    let (ok, out, err) = remote_cli(&lab, Some(&admin), &["policy", "show"])?;
    ensure!(
        ok && out.contains("policy set version"),
        "policy show: {out} {err}"
    );
    let policies = lab.path("remote-policies.cedar");
    std::fs::write(&policies, "")?;
    let (ok, _, err) = remote_cli(
        &lab,
        Some(&red_op),
        &["policy", "set", policies.to_str().context("path")?],
    )?;
    ensure!(!ok && err.contains("403"), "{err}");
    // The server audited the revoke under the token's operator.
    ensure!(
        lab.audit()?.iter().any(|r| r["action"] == "revoke"
            && r["subject"] == "red/red-1"
            && r["actor"] == "operator:red-op"),
        "no audit record of the remote revoke"
    );
    Ok(())
}
