//! The dashboard in a real browser: headless Chromium driven by chromedriver (WebDriver),
//! against the real binary. An operator logs in, sees the fleet overview, opens a device
//! that detection quarantined, reads why, releases it; an auditor then finds the release in
//! the audit log. A screenshot of each page, at desktop and phone widths, is saved under
//! `target/tmp/screenshots/`. Skipped with a message when chromium or chromedriver is
//! missing, except in CI (where `.ci/run` installs them). Each page is also checked for
//! what keyboard and screen-reader users need: labelled controls, no tab-order jumps, named
//! buttons and links, charts with a text alternative.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use fantoccini::{Client, ClientBuilder, Locator};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::json;
use support::clients::V5;
use support::lab::*;
use tokio::process::{Child, Command};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn skip() -> bool {
    let have = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() && tools();
    if have {
        return false;
    }
    gatehouse_testkit::skip("chromium, chromedriver, curl or openssl is missing");
    true
}

/// chromedriver on a free loopback port, killed on drop.
struct Driver {
    _child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting chromedriver")?;
        let deadline = tokio::time::Instant::now() + support::WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            _child: child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    /// A headless Chromium session. The server's certificate comes from the test's own
    /// CA, which this throwaway browser profile does not trust.
    async fn browser(&self) -> Result<Client> {
        let mut caps = serde_json::Map::new();
        caps.insert("acceptInsecureCerts".into(), json!(true));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1280,900"],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .context("opening a Chromium session")
    }
}

fn screenshots() -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn shot(browser: &Client, name: &str) -> Result<()> {
    let png = browser.screenshot().await?;
    ensure!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(screenshots()?.join(format!("{name}.png")), png)?;
    Ok(())
}

/// What a keyboard and screen-reader user needs of the current page: every form control
/// has a label, nothing jumps the tab order, every image-like chart has a text
/// alternative, and the page has one main landmark.
async fn check_accessible(browser: &Client, name: &str) -> Result<()> {
    let problems = browser
        .execute(
            r#"
            const out = [];
            for (const el of document.querySelectorAll("input, select, textarea")) {
              if (el.type === "hidden") continue;
              const labelled = (el.labels && el.labels.length > 0)
                || el.getAttribute("aria-label") || el.getAttribute("aria-labelledby");
              if (!labelled) out.push("unlabelled " + el.outerHTML);
            }
            for (const el of document.querySelectorAll("[tabindex]")) {
              if (Number(el.getAttribute("tabindex")) > 0) out.push("positive tabindex " + el.outerHTML);
            }
            for (const el of document.querySelectorAll("svg")) {
              if (!el.querySelector("title") && el.getAttribute("aria-hidden") !== "true") {
                out.push("svg without a title");
              }
            }
            for (const el of document.querySelectorAll("button, a[href]")) {
              if (!(el.textContent.trim() || el.getAttribute("aria-label"))) out.push("unnamed " + el.outerHTML);
            }
            if (document.querySelectorAll("main").length !== 1) out.push("not one <main>");
            if (!document.documentElement.lang) out.push("no lang on <html>");
            return out;
            "#,
            vec![],
        )
        .await?;
    ensure!(
        problems.as_array().is_some_and(Vec::is_empty),
        "{name}: {problems:#}"
    );
    Ok(())
}

/// Desktop and phone screenshots of the current page, after checking it is accessible.
async fn shots(browser: &Client, name: &str) -> Result<()> {
    check_accessible(browser, name).await?;
    shot(browser, &format!("{name}-1280")).await?;
    browser.set_window_size(375, 812).await?;
    browser.refresh().await?;
    shot(browser, &format!("{name}-phone")).await?;
    browser.set_window_size(1280, 900).await?;
    browser.refresh().await?;
    Ok(())
}

async fn body_text(browser: &Client) -> Result<String> {
    Ok(browser.find(Locator::Css("body")).await?.text().await?)
}

async fn log_in(browser: &Client, base: &str, name: &str, password: &str) -> Result<()> {
    browser.goto(&format!("{base}/ui/login")).await?;
    check_accessible(browser, "login").await?;
    shot(browser, &format!("login-{name}")).await?;
    browser
        .find(Locator::Css("input[name=name]"))
        .await?
        .send_keys(name)
        .await?;
    browser
        .find(Locator::Css("input[name=password]"))
        .await?
        .send_keys(password)
        .await?;
    browser
        .find(Locator::Css("form[action='/ui/login'] button[type=submit]"))
        .await?
        .click()
        .await?;
    let deadline = tokio::time::Instant::now() + support::WAIT;
    loop {
        let url = browser.current_url().await?;
        if url.path() == "/ui/" {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "login as {name} ended at {url}: {}",
                body_text(browser).await?
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tier(lab: &Lab, device: &str) -> Result<String> {
    let (s, v) = lab.api(
        "GET",
        &format!("/api/v1/devices/default/{device}/trust"),
        None,
    )?;
    ensure!(s == 200, "trust: {s} {v}");
    Ok(v["verdict"]["tier"].as_str().unwrap_or("").to_owned())
}

async fn wait_tier(lab: &Lab, device: &str, want: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = tokio::time::Instant::now() + support::WAIT;
    loop {
        let t = tier(lab, device)?;
        if want(&t) {
            return Ok(t);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{device} stayed {t}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_releases_a_quarantined_device_from_the_dashboard() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let lab = Lab::start_with("[detect]\ntick = \"100ms\"\n").await?;
    lab.register_acme(gatehouse_pki::ManufacturerCa::new("Acme")?.cert_pem())?;
    let (s, body) = lab.upload_profile("thermo", THERMO_PROFILE)?;
    ensure!(s == 201, "profile: {s} {}", text(&body));
    let (key, cert) = lab.enroll_with_token("cam-1", &lab.model_token("thermo")?)?;
    lab.enroll_with_token("thermo-ok", &lab.model_token("thermo")?)?;
    let tls = tls_from_files(&lab, &key, &cert)?;
    let client = V5::connect_as(lab.gh.listeners.mqtts, tls, "cam-1").await?;
    for i in 0..30 {
        client
            .client
            .subscribe(format!("devices/victim-{i}/commands/set"), QoS::AtMostOnce)
            .await?;
    }
    wait_tier(&lab, "cam-1", |t| t == "quarantined").await?;

    let ops = lab.create_operator("ops", "operator", None).await?;
    let auditor = lab.create_operator("audit", "auditor", None).await?;
    let base = lab.url("");
    let driver = Driver::start().await?;
    let browser = driver.browser().await?;
    let result = async {
        log_in(&browser, &base, "ops", &ops).await?;
        let overview = body_text(&browser).await?;
        ensure!(
            overview.to_lowercase().contains("quarantined"),
            "overview: {overview}"
        );
        shots(&browser, "overview").await?;

        browser
            .goto(&format!("{base}/ui/devices/default/cam-1"))
            .await?;
        let page = body_text(&browser).await?;
        ensure!(
            page.contains("topic_scanning") || page.contains("exfiltration"),
            "the device page does not say why: {page}"
        );
        shots(&browser, "device-quarantined").await?;
        browser
            .find(Locator::Css("form[action$='/release'] button[type=submit]"))
            .await?
            .click()
            .await?;
        wait_tier(&lab, "cam-1", |t| t != "quarantined").await?;
        shot(&browser, "device-released-1280").await?;

        browser.goto(&format!("{base}/ui/incidents")).await?;
        shots(&browser, "incidents").await?;
        let incident = browser
            .find(Locator::Css("a[href^='/ui/incidents/']"))
            .await?
            .attr("href")
            .await?
            .context("an incident link without href")?;
        browser.goto(&format!("{base}{incident}")).await?;
        shots(&browser, "incident").await?;
        for page in ["devices", "models", "policies"] {
            browser.goto(&format!("{base}/ui/{page}")).await?;
            shots(&browser, page).await?;
        }

        // The auditor reads the release in the audit log, with who did it.
        browser.delete_all_cookies().await?;
        log_in(&browser, &base, "audit", &auditor).await?;
        browser.goto(&format!("{base}/ui/audit")).await?;
        let audit = body_text(&browser).await?;
        ensure!(
            audit.contains("reverse_action") && audit.contains("operator:ops"),
            "audit page: {audit}"
        );
        shots(&browser, "audit").await?;
        Ok(())
    }
    .await;
    let _ = browser.close().await;
    result
}
