//! Shared helpers for the integration tests that drive the real `gatehouse` binary.
//!
//! [`Gatehouse::start`] writes a configuration into a fresh temporary data directory,
//! starts `gatehouse serve` on port 0, waits for `listeners.json` and kills the process
//! when dropped. Device certificates come from the binary's own `ca issue` command (for
//! the external clients, which read files) or from the same CA directory through
//! `gatehouse_pki` (for the Rust clients, and for certificates the CLI will not issue,
//! such as expired ones). Every wait has a generous deadline, so a broken broker fails a
//! test instead of hanging it.

#![allow(dead_code)]

pub mod cli_env;
pub mod clients;
pub mod lab;
pub mod raw;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use gatehouse_pki::{DeviceCertParams, IssuedCert, LocalCa};
use gatehouse_types::{DeviceId, TenantId};
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// How long any single wait may take before the test fails. Generous: the machine is
/// small and shared, and these are correctness tests, not timing tests.
pub const WAIT: Duration = Duration::from_secs(15);

/// The API token of the operator `tester` (admin) in this configuration's data directory:
/// created with the binary's `init`, `admin create` and `admin token` on first use, then
/// read back from `tester.token`.
async fn tester_token(config: &Path) -> Result<String> {
    let file = config.with_file_name("tester.token");
    if let Ok(t) = std::fs::read_to_string(&file) {
        return Ok(t.trim().to_owned());
    }
    let run = |args: &'static [&'static str]| {
        let config = config.to_path_buf();
        async move {
            let out = Command::new(binary())
                .arg("--config")
                .arg(&config)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .await
                .with_context(|| format!("running gatehouse {args:?}"))?;
            ensure!(
                out.status.success(),
                "gatehouse {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .with_context(|| format!("gatehouse {args:?} printed no JSON"))
        }
    };
    // Only `init` and `serve` create a data directory; the other commands refuse.
    let init = Command::new(binary())
        .arg("--config")
        .arg(config)
        .arg("init")
        .stdin(Stdio::null())
        .output()
        .await
        .context("running gatehouse init")?;
    ensure!(
        init.status.success(),
        "gatehouse init failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    run(&["admin", "create", "tester", "--role", "admin", "--json"]).await?;
    let v = run(&["admin", "token", "tester", "--label", "tests", "--json"]).await?;
    let token = v["token"]
        .as_str()
        .context("admin token printed no token")?
        .to_owned();
    std::fs::write(&file, &token).context("saving the tester token")?;
    Ok(token)
}

/// The binary under test: the one cargo built for these tests, or the one
/// `GATEHOUSE_BIN` names (to run a suite against a release build:
/// `cargo build --release -p gatehouse` and `GATEHOUSE_BIN=$PWD/target/release/gatehouse`;
/// a relative path is taken from the package directory, where tests run).
pub fn binary() -> &'static str {
    static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| match std::env::var("GATEHOUSE_BIN") {
        Ok(path) if !path.is_empty() => std::fs::canonicalize(&path)
            .unwrap_or_else(|e| panic!("GATEHOUSE_BIN={path}: {e}"))
            .to_string_lossy()
            .into_owned(),
        _ => env!("CARGO_BIN_EXE_gatehouse").to_owned(),
    })
}

/// A policy that adds a shared `lab/#` namespace every device may publish and subscribe
/// in, beside the default own-namespace patterns. Tests that need two devices to talk use
/// topics under `lab/`.
pub const LAB_POLICY: &str = r#"
[policy]
publish = ["devices/{device}/#", "$gatehouse/{device}/#", "lab/#"]
subscribe = ["devices/{device}/#", "$gatehouse/{device}/#", "lab/#"]
"#;

/// What to put in the configuration beyond the data directory and the port-0 listeners.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Also open the plain (user name and password) listener.
    pub plain: bool,
    /// Extra TOML appended to the file (must not repeat `[listeners]` or `[log]`).
    pub extra: String,
    /// Start with no operator at all (no `tester`), as a new user's first start.
    pub no_operator: bool,
}

impl Options {
    /// Extra TOML, with the TLS listener only.
    pub fn extra(extra: &str) -> Self {
        Self {
            plain: false,
            extra: extra.to_owned(),
            no_operator: false,
        }
    }
}

/// The listeners a running server reported in `listeners.json`.
#[derive(Debug, Clone)]
pub struct Listeners {
    pub mqtts: SocketAddr,
    pub https: SocketAddr,
    pub mqtt: Option<SocketAddr>,
    pub ca: PathBuf,
    /// The whole file, for assertions on its shape.
    pub json: serde_json::Value,
}

/// A running `gatehouse serve`, killed on drop.
#[derive(Debug)]
pub struct Gatehouse {
    dir: Arc<TempDir>,
    child: Option<Child>,
    options: Options,
    pub listeners: Listeners,
    /// An API token of the operator `tester` (role admin, every tenant), created with
    /// `gatehouse admin` before the first start.
    pub token: String,
    generation: u32,
}

/// Certificate files written by `gatehouse ca issue`.
#[derive(Debug, Clone)]
pub struct DeviceFiles {
    pub device: String,
    pub key: PathBuf,
    pub cert: PathBuf,
    pub ca: PathBuf,
}

// === impl Gatehouse ===

impl Gatehouse {
    /// Starts the server with the default configuration, on port 0.
    pub async fn start_default() -> Result<Self> {
        Self::start(Options::default()).await
    }

    /// Starts the server in a fresh temporary data directory.
    pub async fn start(options: Options) -> Result<Self> {
        Self::start_in(Self::scratch_dir()?, options, 0).await
    }

    /// A fresh temporary directory for [`start_in`](Self::start_in).
    pub fn scratch_dir() -> Result<Arc<TempDir>> {
        Ok(Arc::new(
            tempfile::Builder::new()
                .prefix("gatehouse-it-")
                .tempdir()
                .context("creating the data directory")?,
        ))
    }

    /// Starts the server with `dir` as its data directory (which may hold state from an
    /// earlier run); `generation` numbers its log.
    pub async fn start_in(dir: Arc<TempDir>, options: Options, generation: u32) -> Result<Self> {
        let data = dir.path().to_path_buf();
        let config = config_text(&data, &options);
        let config_path = data.join("gatehouse.toml");
        std::fs::write(&config_path, &config).context("writing the configuration")?;
        let token = if options.no_operator {
            String::new()
        } else {
            tester_token(&config_path).await?
        };
        let listeners_file = data.join("listeners.json");
        let _ = std::fs::remove_file(&listeners_file);
        let log = std::fs::File::create(data.join(format!("server-{generation}.log")))
            .context("creating the server log")?;
        let mut child = Command::new(binary())
            .arg("--config")
            .arg(&config_path)
            .arg("serve")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting gatehouse serve")?;
        let deadline = tokio::time::Instant::now() + WAIT;
        let listeners = loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "gatehouse serve exited early with {status}:\n{}",
                    read_log(&data, generation)
                );
            }
            if let Ok(text) = std::fs::read_to_string(&listeners_file)
                && let Ok(json) = serde_json::from_str::<serde_json::Value>(&text)
            {
                break parse_listeners(json)?;
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "no listeners.json after {WAIT:?}:\n{}",
                    read_log(&data, generation)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok(Self {
            dir,
            child: Some(child),
            options,
            listeners,
            token,
            generation,
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The configuration file the server was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gatehouse.toml")
    }

    /// The process id of the server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        read_log(self.dir.path(), self.generation)
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("the server is not running");
        };
        let pid = child.id().context("the server has already been reaped")?;
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .context("running kill -TERM")?;
        ensure!(status.success(), "kill -TERM {pid} failed");
        match tokio::time::timeout(WAIT, child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                let _ = child.start_kill();
                bail!(
                    "the server did not exit within {WAIT:?} of SIGTERM:\n{}",
                    self.log()
                )
            }
        }
    }

    /// Kills the server with SIGKILL (a crash: no shutdown work happens) and reaps it.
    pub async fn crash(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("the server is not running");
        };
        child.start_kill()?;
        tokio::time::timeout(WAIT, child.wait())
            .await
            .context("the killed server did not exit")??;
        Ok(())
    }

    /// Stops the server gracefully (unless it is already stopped) and starts it again on the same data directory (new
    /// ports).
    pub async fn restart(mut self) -> Result<Self> {
        if self.child.is_some() {
            let status = self.terminate().await?;
            ensure!(
                status.success(),
                "gatehouse exited with {status} on SIGTERM"
            );
        }
        let dir = self.dir.clone();
        let options = self.options.clone();
        let generation = self.generation + 1;
        Self::start_in(dir, options, generation).await
    }

    /// Runs the binary with this server's configuration and `args`, returning stdout.
    pub async fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(binary())
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running gatehouse {args:?}"))?;
        ensure!(
            out.status.success(),
            "gatehouse {args:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Issues a device certificate with `gatehouse ca issue` into its own directory.
    pub async fn issue_files(&self, device: &str) -> Result<DeviceFiles> {
        let out = self.dir.path().join("issued").join(device);
        self.cli(&[
            "ca",
            "issue",
            "--device",
            device,
            "--out",
            out.to_str().context("non-UTF-8 temporary path")?,
        ])
        .await?;
        let files = DeviceFiles {
            device: device.to_owned(),
            key: out.join(format!("{device}.key")),
            cert: out.join(format!("{device}.crt")),
            ca: out.join("ca.crt"),
        };
        for f in [&files.key, &files.cert, &files.ca] {
            ensure!(
                f.is_file(),
                "gatehouse ca issue did not write {}",
                f.display()
            );
        }
        Ok(files)
    }

    /// The server's CA, loaded from its data directory.
    pub fn ca(&self) -> Result<LocalCa> {
        LocalCa::load_or_create(&self.dir.path().join("ca")).context("loading the server's CA")
    }

    /// The CA certificate clients trust.
    pub fn ca_der(&self) -> Result<CertificateDer<'static>> {
        Ok(self.ca()?.cert_der())
    }

    /// Issues a device certificate (tenant `default`) from the server's CA.
    pub fn issue(&self, device: &str) -> Result<IssuedCert> {
        let params = DeviceCertParams::new(
            TenantId::default(),
            DeviceId::new(device)?,
            Duration::from_secs(24 * 3600),
        )?;
        Ok(self.ca()?.issue_device_with(params)?)
    }

    /// A client TLS configuration presenting a fresh certificate for `device`.
    pub fn client_tls(&self, device: &str) -> Result<Arc<ClientConfig>> {
        let cert = self.issue(device)?;
        Ok(gatehouse_pki::client_config(
            &[self.ca_der()?],
            Some(&cert),
        )?)
    }

    /// A client TLS configuration that trusts the server but presents no certificate.
    pub fn anonymous_tls(&self) -> Result<Arc<ClientConfig>> {
        Ok(gatehouse_pki::client_config(&[self.ca_der()?], None)?)
    }

    /// `GET path` over HTTPS on the server's HTTPS listener; returns (status, body).
    pub async fn https_get(&self, path: &str) -> Result<(u16, String)> {
        let config = self.anonymous_tls()?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let work = async {
            let tcp = tokio::net::TcpStream::connect(self.listeners.https).await?;
            let name = ServerName::IpAddress(self.listeners.https.ip().into());
            let mut tls = connector.connect(name, tcp).await?;
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            tls.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            // The server may end without close_notify once it has answered.
            if let Err(e) = tls.read_to_end(&mut response).await
                && response.is_empty()
            {
                return Err(e);
            }
            Ok::<_, std::io::Error>(response)
        };
        let response = tokio::time::timeout(WAIT, work)
            .await
            .context("HTTPS request timed out")??;
        http_status_and_body(&response)
    }

    /// The Prometheus metrics text.
    pub async fn metrics(&self) -> Result<String> {
        let (status, body) = self.https_get("/metrics").await?;
        ensure!(status == 200, "/metrics answered {status}: {body}");
        Ok(body)
    }

    /// The value of one sample, e.g. `gatehouse_tls_failures_total{reason="unknown_ca"}`;
    /// zero when absent.
    pub async fn metric(&self, sample: &str) -> Result<f64> {
        Ok(metric_value(&self.metrics().await?, sample))
    }

    /// Waits until a metric sample falls to `at_most` (a connection the server has seen
    /// close, say), instead of sleeping and hoping it has.
    pub async fn wait_metric_at_most(&self, sample: &str, at_most: f64) -> Result<f64> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.metric(sample).await?;
            if v <= at_most {
                return Ok(v);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{sample} stayed at {v}, expected at most {at_most}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until a metric sample reaches `at_least` (metrics are updated a little after
    /// the client has seen the effect).
    pub async fn wait_metric(&self, sample: &str, at_least: f64) -> Result<f64> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = self.metrics().await?;
            let v = metric_value(&text, sample);
            if v >= at_least {
                return Ok(v);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{sample} stayed at {v}, expected at least {at_least}; metrics:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Gatehouse {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        // The test harness shows a test's output only when it fails.
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(300)..];
        eprintln!(
            "---- gatehouse log, last {} lines ({}) ----\n{}",
            tail.len(),
            self.dir.path().display(),
            tail.join("\n")
        );
    }
}

fn config_text(data: &Path, options: &Options) -> String {
    let plain = if options.plain {
        "mqtt = \"127.0.0.1:0\"\n"
    } else {
        ""
    };
    format!(
        "data_dir = {data:?}\n\
         [listeners]\n\
         mqtts = \"127.0.0.1:0\"\n\
         https = \"127.0.0.1:0\"\n\
         {plain}\
         [log]\n\
         level = \"info,gatehouse_broker=debug\"\n\
         {}\n",
        options.extra,
        data = data.display().to_string(),
    )
}

fn parse_listeners(json: serde_json::Value) -> Result<Listeners> {
    let addr = |key: &str| -> Result<Option<SocketAddr>> {
        match &json[key] {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::String(s) => Ok(Some(
                s.parse()
                    .with_context(|| format!("listeners.json {key}: {s}"))?,
            )),
            other => bail!("listeners.json {key} is {other}"),
        }
    };
    Ok(Listeners {
        mqtts: addr("mqtts")?.context("listeners.json has no mqtts")?,
        https: addr("https")?.context("listeners.json has no https")?,
        mqtt: addr("mqtt")?,
        ca: json["ca"]
            .as_str()
            .context("listeners.json has no ca")?
            .into(),
        json,
    })
}

fn read_log(data: &Path, generation: u32) -> String {
    let mut out = String::new();
    for g in 0..=generation {
        if let Ok(text) = std::fs::read_to_string(data.join(format!("server-{g}.log"))) {
            out.push_str(&format!("[server run {g}]\n{text}"));
        }
    }
    out
}

/// The status and body of a whole HTTP/1.1 response (read to the end, `Connection: close`).
pub fn http_status_and_body(response: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of one sample in Prometheus/OpenMetrics text; zero when absent.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(sample))
        .filter_map(|rest| rest.strip_prefix(' '))
        .filter_map(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .sum()
}

/// Whether an external program can be run. In CI (`CI` set) a missing program is an
/// error, because CI installs them; elsewhere the test is skipped with a message.
#[track_caller]
pub fn have_program(program: &str, probe: &[&str]) -> bool {
    gatehouse_testkit::have_program(program, probe)
}
