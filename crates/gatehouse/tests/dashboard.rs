//! The operator dashboard against the real binary, driven with curl like a browser with a
//! cookie jar: pages need a session (303 to the login form without one); the login form
//! accepts the right password only; every response carries the security headers; the
//! overview counts devices by tier; a quarantined device's page says why and its Release
//! form reverses the quarantine (audited as the operator), but only with the session's
//! CSRF token and for a role that may act; an operator of one tenant finds another
//! tenant's device page "not found". Skipped with a message when curl, openssl or
//! mosquitto_pub is missing, except in CI.

mod support;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{Value, json};
use support::clients::V5;
use support::lab::*;

const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
                   script-src 'self'; frame-ancestors 'none'; form-action 'self'";

fn skip() -> bool {
    if tools() && support::have_program("mosquitto_pub", &["--help"]) {
        return false;
    }
    gatehouse_testkit::skip("curl, openssl or mosquitto_pub is missing");
    true
}

/// An HTTP answer: status, response headers (raw), body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim().to_owned())
    }

    /// The CSRF token of the page's forms.
    fn csrf(&self) -> Result<String> {
        let marker = "name=\"csrf\" value=\"";
        let start = self
            .body
            .find(marker)
            .with_context(|| format!("no CSRF field in the page:\n{}", self.body))?
            + marker.len();
        let len = self.body[start..].find('"').context("unterminated value")?;
        Ok(self.body[start..start + len].to_owned())
    }
}

/// curl with the cookie jar (read, and written when `save`), capturing the headers.
fn request(
    lab: &Lab,
    jar: Option<&Path>,
    save: bool,
    extra: &[&str],
    path: &str,
) -> Result<Answer> {
    let headers = lab.path(&format!("dash-headers-{}", rand_suffix()));
    let url = lab.url(path);
    let mut args: Vec<&str> = vec!["-D", headers.to_str().context("path")?];
    let jar_text = jar.map(|j| j.to_str().context("path")).transpose()?;
    if let Some(j) = jar_text {
        if j_exists(j) {
            args.extend(["-b", j]);
        }
        if save {
            args.extend(["-c", j]);
        }
    }
    args.extend_from_slice(extra);
    args.push(&url);
    let (status, body) = lab.curl(&args)?;
    let head = std::fs::read_to_string(&headers).unwrap_or_default();
    let _ = std::fs::remove_file(&headers);
    Ok(Answer {
        status,
        head,
        body: text(&body),
    })
}

fn j_exists(path: &str) -> bool {
    Path::new(path).exists()
}

fn get(lab: &Lab, jar: Option<&Path>, path: &str) -> Result<Answer> {
    request(lab, jar, false, &[], path)
}

/// POSTs a form (application/x-www-form-urlencoded).
fn post_form(lab: &Lab, jar: Option<&Path>, path: &str, fields: &[(&str, &str)]) -> Result<Answer> {
    let encoded: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut extra = vec!["-X", "POST"];
    for e in &encoded {
        extra.extend(["--data-urlencode", e.as_str()]);
    }
    if fields.is_empty() {
        extra.extend([
            "-H",
            "content-type: application/x-www-form-urlencoded",
            "--data-binary",
            "",
        ]);
    }
    request(lab, jar, true, &extra, path)
}

/// Logs in with the form into a fresh jar; returns the jar.
fn login(lab: &Lab, name: &str, password: &str) -> Result<std::path::PathBuf> {
    let jar = lab.path(&format!("{name}-{}.jar", rand_suffix()));
    let a = post_form(
        lab,
        Some(&jar),
        "/ui/login",
        &[("name", name), ("password", password)],
    )?;
    ensure!(
        a.status == 303 && a.header("location").as_deref() == Some("/ui/"),
        "login of {name}: {} {}\n{}",
        a.status,
        a.head,
        a.body
    );
    Ok(jar)
}

fn check_security_headers(a: &Answer, what: &str) -> Result<()> {
    ensure!(
        a.header("content-security-policy").as_deref() == Some(CSP),
        "{what}: CSP {:?}",
        a.header("content-security-policy")
    );
    for (h, v) in [
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
    ] {
        ensure!(
            a.header(h).as_deref() == Some(v),
            "{what}: {h} is {:?}",
            a.header(h)
        );
    }
    Ok(())
}

/// A lab with manufacturer `acme`, the thermostat model and its profile, detection
/// ticking fast and behaviour penalties fading fast.
async fn lab() -> Result<Lab> {
    let lab = Lab::start_with("[detect]\ntick = \"100ms\"\n\n[trust.score]\nhalf_life = \"3s\"\n")
        .await?;
    lab.register_acme(gatehouse_pki::ManufacturerCa::new("Acme")?.cert_pem())?;
    let (s, body) = lab.upload_profile("thermo", THERMO_PROFILE)?;
    ensure!(s == 201, "profile: {s} {}", text(&body));
    Ok(lab)
}

async fn thermostat(lab: &Lab, name: &str) -> Result<V5> {
    let (key, cert) = lab.enroll_with_token(name, &lab.model_token("thermo")?)?;
    let tls = tls_from_files(lab, &key, &cert)?;
    V5::connect_as(lab.gh.listeners.mqtts, tls, name).await
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_need_a_session_and_the_login_form_checks_the_password() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = Lab::start().await?;

    // No session: every page sends the browser to the login form.
    for path in [
        "/ui/",
        "/ui/devices",
        "/ui/incidents",
        "/ui/audit",
        "/ui/devices/default/x",
    ] {
        let a = get(&lab, None, path)?;
        ensure!(
            a.status == 303 && a.header("location").as_deref() == Some("/ui/login"),
            "{path}: {} {}",
            a.status,
            a.head
        );
        check_security_headers(&a, path)?;
    }
    let a = get(&lab, None, "/")?;
    ensure!(
        a.status == 303 && a.header("location").as_deref() == Some("/ui/"),
        "/: {}",
        a.head
    );
    let a = get(&lab, None, "/ui/live.json")?;
    ensure!(a.status == 401, "live.json without a session: {}", a.status);
    // An API token opens no dashboard page.
    let auth = lab.auth_header();
    let a = request(&lab, None, false, &["-H", &auth], "/ui/")?;
    ensure!(a.status == 303, "token on a page: {}", a.status);

    // The login form: labelled fields, the headers, not cached.
    let a = get(&lab, None, "/ui/login")?;
    ensure!(a.status == 200, "login form: {}", a.status);
    check_security_headers(&a, "login form")?;
    ensure!(
        a.header("cache-control").as_deref() == Some("no-store"),
        "{}",
        a.head
    );
    for needle in [
        "<label for=\"name\">",
        "<label for=\"password\">",
        "type=\"password\"",
    ] {
        ensure!(a.body.contains(needle), "{needle} missing:\n{}", a.body);
    }
    ensure!(
        !a.body.contains("<script>") && !a.body.contains("style="),
        "inline script or style"
    );
    let css = get(&lab, None, "/ui/static/style.css")?;
    ensure!(
        css.status == 200
            && css
                .header("content-type")
                .is_some_and(|c| c.starts_with("text/css")),
        "style.css: {} {}",
        css.status,
        css.head
    );
    let js = get(&lab, None, "/ui/static/app.js")?;
    ensure!(
        js.status == 200 && js.body.contains("/ui/live.json"),
        "app.js: {}",
        js.status
    );

    let password = lab.create_operator("alice", "operator", None).await?;

    // A wrong password: the form again, a generic error, no cookie.
    let jar = lab.path("wrong.jar");
    let a = post_form(
        &lab,
        Some(&jar),
        "/ui/login",
        &[("name", "alice"), ("password", "not-her-password")],
    )?;
    ensure!(a.status == 401, "wrong password: {}", a.status);
    ensure!(a.body.contains("Wrong name or password"), "{}", a.body);
    ensure!(
        a.header("set-cookie").is_none(),
        "cookie on failure: {}",
        a.head
    );
    check_security_headers(&a, "failed login")?;
    let a = get(&lab, Some(&jar), "/ui/")?;
    ensure!(a.status == 303, "after a failed login: {}", a.status);

    // The right one: a hardened session cookie, then the overview.
    let jar = lab.path("alice.jar");
    let a = post_form(
        &lab,
        Some(&jar),
        "/ui/login",
        &[("name", "alice"), ("password", &password)],
    )?;
    ensure!(
        a.status == 303 && a.header("location").as_deref() == Some("/ui/"),
        "{}",
        a.head
    );
    let cookie = a.header("set-cookie").context("no Set-Cookie")?;
    for attr in [
        "__Host-gh_session=",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
    ] {
        ensure!(cookie.contains(attr), "{attr} missing: {cookie}");
    }
    let overview = get(&lab, Some(&jar), "/ui/")?;
    let a = &overview;
    ensure!(
        a.status == 200 && a.body.contains("Fleet overview"),
        "{} {}",
        a.status,
        a.body
    );
    check_security_headers(a, "overview")?;
    ensure!(
        a.header("cache-control").as_deref() == Some("no-store"),
        "{}",
        a.head
    );
    ensure!(a.body.contains("alice"), "the operator is named");
    // The operator role reads no audit log: no link, and the page is refused.
    ensure!(
        !a.body.contains("href=\"/ui/audit\""),
        "audit link shown to an operator"
    );
    let audit = get(&lab, Some(&jar), "/ui/audit")?;
    ensure!(
        audit.status == 403,
        "audit page for an operator: {}",
        audit.status
    );
    let live = get(&lab, Some(&jar), "/ui/live.json")?;
    let v: Value = serde_json::from_str(&live.body)?;
    ensure!(
        live.status == 200 && v["open_incidents"].is_u64() && v["trusted"].is_u64(),
        "{v}"
    );
    for path in [
        "/ui/devices",
        "/ui/incidents",
        "/ui/models",
        "/ui/policies",
        "/ui/nothing-here",
    ] {
        let a = get(&lab, Some(&jar), path)?;
        let want = if path == "/ui/nothing-here" { 404 } else { 200 };
        ensure!(a.status == want, "{path}: {} {}", a.status, a.body);
        check_security_headers(&a, path)?;
    }

    // Log out: without the CSRF token it is refused; with it the session ends.
    let csrf = overview.csrf()?;
    let out = post_form(&lab, Some(&jar), "/ui/logout", &[])?;
    ensure!(out.status == 403, "logout without CSRF: {}", out.status);
    let out = post_form(&lab, Some(&jar), "/ui/logout", &[("csrf", &csrf)])?;
    ensure!(out.status == 303, "logout: {} {}", out.status, out.body);
    let a = get(&lab, Some(&jar), "/ui/")?;
    ensure!(a.status == 303, "after logout: {}", a.status);
    let records = lab.audit()?;
    for action in ["login", "logout"] {
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
async fn quarantined_device_page_says_why_and_release_reverses_the_quarantine() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = lab().await?;
    let _calm = thermostat(&lab, "calm").await?;
    let scanner = thermostat(&lab, "scanner").await?;
    lab.wait_for_tier("calm", "trusted", support::WAIT).await?;
    lab.wait_for_tier("scanner", "trusted", support::WAIT)
        .await?;
    // Probing other devices' command topics: a topic_scanning incident, quarantined.
    for i in 0..30 {
        scanner
            .client
            .subscribe(format!("devices/victim-{i}/commands/set"), QoS::AtMostOnce)
            .await?;
    }
    lab.wait_for_tier("scanner", "quarantined", support::WAIT)
        .await?;

    let ops = lab.create_operator("ops", "operator", None).await?;
    let analyst = lab.create_operator("ann", "analyst", None).await?;
    let jar = login(&lab, "ops", &ops)?;

    // The overview counts the fleet by tier.
    eventually(support::WAIT, "the overview's tier counts", || {
        let a = get(&lab, Some(&jar), "/ui/")?;
        ensure!(a.status == 200, "overview: {}", a.status);
        Ok((a.body.contains("id=\"count-trusted\">1<")
            && a.body.contains("id=\"count-quarantined\">1<")
            && a.body.contains("<svg"))
        .then_some(()))
    })
    .await?;
    let live = get(&lab, Some(&jar), "/ui/live.json")?;
    let v: Value = serde_json::from_str(&live.body)?;
    ensure!(
        v["quarantined"] == 1 && v["trusted"] == 1 && v["devices"] == 2,
        "{v}"
    );

    // The device's page says why: the quarantine action, its incident and finding.
    let page = get(&lab, Some(&jar), "/ui/devices/default/scanner")?;
    ensure!(
        page.status == 200,
        "device page: {} {}",
        page.status,
        page.body
    );
    check_security_headers(&page, "device page")?;
    for needle in [
        "Quarantined by action",
        "topic_scanning",
        "action=\"/ui/devices/default/scanner/release\"",
        ">Release<",
        "Factors",
    ] {
        ensure!(
            page.body.contains(needle),
            "{needle:?} missing:\n{}",
            page.body
        );
    }
    let csrf = page.csrf()?;

    // The incident's page shows the finding's evidence and the quarantine.
    let (s, v) = lab.api("GET", "/api/v1/incidents?device=default/scanner", None)?;
    ensure!(s == 200, "{s} {v}");
    let incident = v["incidents"][0]["id"].as_u64().context("incident id")?;
    let inc = get(&lab, Some(&jar), &format!("/ui/incidents/{incident}"))?;
    ensure!(
        inc.status == 200
            && inc.body.contains("Evidence")
            && inc.body.contains("quarantine")
            && inc.body.contains(">Resolve<"),
        "incident page: {} {}",
        inc.status,
        inc.body
    );

    // An analyst sees no Release button, and a posted release is refused.
    let ann_jar = login(&lab, "ann", &analyst)?;
    let ann_page = get(&lab, Some(&ann_jar), "/ui/devices/default/scanner")?;
    ensure!(
        ann_page.status == 200 && !ann_page.body.contains(">Release<"),
        "analyst's page: {}",
        ann_page.body
    );
    let ann_csrf = ann_page.csrf()?;
    let a = post_form(
        &lab,
        Some(&ann_jar),
        "/ui/devices/default/scanner/release",
        &[("csrf", &ann_csrf)],
    )?;
    ensure!(a.status == 403, "analyst release: {} {}", a.status, a.body);

    // Without the CSRF field, or with another session's, the release is refused.
    let a = post_form(
        &lab,
        Some(&jar),
        "/ui/devices/default/scanner/release",
        &[("note", "x")],
    )?;
    ensure!(
        a.status == 403,
        "release without CSRF: {} {}",
        a.status,
        a.body
    );
    check_security_headers(&a, "refused release")?;
    let a = post_form(
        &lab,
        Some(&jar),
        "/ui/devices/default/scanner/release",
        &[("csrf", &ann_csrf)],
    )?;
    ensure!(
        a.status == 403,
        "release with another session's CSRF: {}",
        a.status
    );
    ensure!(
        lab.trust("scanner")?["assessment"]["tier"] == "quarantined",
        "still quarantined after refused releases"
    );

    // The Release form reverses the quarantine.
    let a = post_form(
        &lab,
        Some(&jar),
        "/ui/devices/default/scanner/release",
        &[("csrf", &csrf), ("note", "probing explained")],
    )?;
    ensure!(
        a.status == 303
            && a.header("location").as_deref() == Some("/ui/devices/default/scanner?done=released"),
        "release: {} {} {}",
        a.status,
        a.head,
        a.body
    );
    let after = eventually(Duration::from_secs(40), "scanner out of quarantine", || {
        let v = lab.trust("scanner")?;
        let out = v["assessment"]["pin"].is_null()
            && v["assessment"]["tier"] != "quarantined"
            && v["verdict"]["tier"] != "quarantined";
        Ok(out.then_some(v))
    })
    .await?;
    eprintln!("released: tier {}", after["assessment"]["tier"]);
    let (s, v) = lab.api("GET", &format!("/api/v1/actions?incident={incident}"), None)?;
    ensure!(
        s == 200
            && v["actions"].as_array().is_some_and(|a| a
                .iter()
                .any(|a| a["kind"] == "quarantine" && a["state"] == "reversed")),
        "{s} {v:#}"
    );
    let records = lab.audit()?;
    ensure!(
        records.iter().any(|r| r["action"] == "reverse_action"
            && r["actor"] == "operator:ops"
            && r["reason"] == "probing explained"),
        "no reverse_action record by operator:ops"
    );
    let page = get(
        &lab,
        Some(&jar),
        "/ui/devices/default/scanner?done=released",
    )?;
    ensure!(
        page.status == 200 && page.body.contains("Released") && !page.body.contains(">Release<"),
        "{}",
        page.body
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_operator_gets_404_for_another_tenants_device_page() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = Lab::start().await?;
    lab.register_acme(gatehouse_pki::ManufacturerCa::new("Acme")?.cert_pem())?;
    let (s, body) = lab.upload_profile("thermo", THERMO_PROFILE)?;
    ensure!(s == 201, "profile: {s} {}", text(&body));
    for t in ["red", "blue"] {
        let (s, v) = lab.api("POST", "/api/v1/tenants", Some(json!({ "id": t })))?;
        ensure!(s == 201, "tenant {t}: {s} {v}");
    }
    lab.enroll_with_token("red-1", &lab.token("red", 1, 3600)?)?;
    lab.enroll_with_token("blue-1", &lab.token("blue", 1, 3600)?)?;

    let password = lab
        .create_operator("red-op", "operator", Some("red"))
        .await?;
    let jar = login(&lab, "red-op", &password)?;
    let own = get(&lab, Some(&jar), "/ui/devices/red/red-1")?;
    ensure!(
        own.status == 200 && own.body.contains("red-1"),
        "own device: {}",
        own.status
    );
    let other = get(&lab, Some(&jar), "/ui/devices/blue/blue-1")?;
    ensure!(
        other.status == 404,
        "another tenant's device: {} {}",
        other.status,
        other.body
    );
    ensure!(
        !other.body.contains("blue-1\"") && other.body.contains("not found"),
        "{}",
        other.body
    );
    check_security_headers(&other, "404 page")?;
    // The list holds the operator's tenant only, and asking for another is not found.
    let list = get(&lab, Some(&jar), "/ui/devices")?;
    ensure!(
        list.status == 200 && list.body.contains("red-1") && !list.body.contains("blue-1"),
        "{}",
        list.body
    );
    let a = get(&lab, Some(&jar), "/ui/devices?tenant=blue")?;
    ensure!(a.status == 404, "list of another tenant: {}", a.status);
    // A release posted for another tenant's device is not found either.
    let csrf = own.csrf()?;
    let a = post_form(
        &lab,
        Some(&jar),
        "/ui/devices/blue/blue-1/release",
        &[("csrf", &csrf)],
    )?;
    ensure!(
        a.status == 404,
        "release of another tenant's device: {}",
        a.status
    );
    // The admin sees both.
    let out = lab
        .gh
        .cli(&["admin", "create", "root2", "--role", "admin", "--json"])
        .await?;
    let v: Value = serde_json::from_str(&out)?;
    let admin = login(&lab, "root2", v["password"].as_str().context("password")?)?;
    let a = get(&lab, Some(&admin), "/ui/devices/blue/blue-1")?;
    ensure!(a.status == 200, "admin: {}", a.status);
    // Profiles: the tenant-bound operator gets no upload form and is refused; the admin's
    // invalid upload is shown with the reason, a valid one is stored.
    let models = get(&lab, Some(&jar), "/ui/models")?;
    ensure!(
        models.status == 200
            && models.body.contains("thermo")
            && !models.body.contains("Upload a profile"),
        "{}",
        models.body
    );
    let a = post_form(
        &lab,
        Some(&jar),
        "/ui/models",
        &[
            ("csrf", &csrf),
            ("model", "thermo"),
            ("toml", THERMO_PROFILE),
        ],
    )?;
    ensure!(a.status == 403, "upload by a tenant operator: {}", a.status);
    let models = get(&lab, Some(&admin), "/ui/models")?;
    ensure!(models.body.contains("Upload a profile"), "{}", models.body);
    let admin_csrf = models.csrf()?;
    let a = post_form(
        &lab,
        Some(&admin),
        "/ui/models",
        &[
            ("csrf", &admin_csrf),
            ("model", "thermo"),
            ("toml", "model = ["),
        ],
    )?;
    ensure!(
        a.status == 422 && a.body.contains("invalid profile") && a.body.contains("model = ["),
        "invalid upload: {} {}",
        a.status,
        a.body
    );
    let a = post_form(
        &lab,
        Some(&admin),
        "/ui/models",
        &[
            ("csrf", &admin_csrf),
            ("model", "thermo"),
            ("toml", THERMO_PROFILE),
        ],
    )?;
    ensure!(
        a.status == 303 && a.header("location").as_deref() == Some("/ui/models?done=uploaded"),
        "upload: {} {}",
        a.status,
        a.body
    );
    ensure!(
        lab.audit()?
            .iter()
            .filter(|r| r["action"] == "add_model_profile" && r["actor"] == "operator:root2")
            .count()
            == 1,
        "no add_model_profile record by operator:root2"
    );
    // Policies: a set that does not validate is shown with its problems.
    let a = post_form(
        &lab,
        Some(&admin),
        "/ui/policies",
        &[
            ("csrf", &admin_csrf),
            ("op", "validate"),
            ("text", "permit("),
        ],
    )?;
    ensure!(
        a.status == 422 && a.body.contains("Not valid"),
        "{} {}",
        a.status,
        a.body
    );
    let a = get(&lab, Some(&admin), "/ui/audit")?;
    ensure!(
        a.status == 200 && a.body.contains("Verified"),
        "audit page: {} {}",
        a.status,
        a.body
    );
    Ok(())
}
