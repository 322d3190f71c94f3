//! End to end: the agent against the real `gatehouse serve`, on port 0 in a temporary data
//! directory. The registry is set up with the `gatehouse` CLI (manufacturer, model, claim,
//! token, device revoke) and the REST API (reinstate), as an operator would; the agent
//! enrolls over EST, connects over MQTTS, renews, and recovers from a revocation.
//!
//! The `gatehouse` binary is built with `cargo build -p gatehouse` on first use (a no-op
//! when it is up to date), taken as `cargo test --workspace` left it in CI, or taken from
//! `GATEHOUSE_BIN`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use gatehouse_agent::agent::QoS;
use gatehouse_agent::posture::Posture;
use gatehouse_agent::state::read_certs;
use gatehouse_agent::{
    Agent, AgentConfig, AgentHandle, AgentStatus, Enrollment, EnrollmentToken, EstClient, Idevid,
    MqttEndpoint, StateDir,
};
use gatehouse_pki::{IdevidParams, ManufacturerCa};
use rustls_pki_types::ServerName;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// Longest wait for anything that should happen promptly.
const WAIT: Duration = Duration::from_secs(30);

/// Every device may also publish and subscribe under `lab/`, so two devices can talk.
const LAB_POLICY: &str = r#"
[policy]
publish = ["devices/{device}/#", "$gatehouse/{device}/#", "lab/#"]
subscribe = ["devices/{device}/#", "$gatehouse/{device}/#", "lab/#"]
"#;

/// The `gatehouse` binary, built once per test run.
fn gatehouse_bin() -> Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("GATEHOUSE_BIN") {
            return Ok(PathBuf::from(bin));
        }
        // This test runs as target/<profile>/deps/e2e-<hash>.
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .ok_or("no target directory")?
            .to_path_buf();
        let bin = profile_dir.join("gatehouse");
        // In CI, `cargo test --workspace` has just built it; building it again for one
        // package could resolve features differently and rebuild half the tree.
        if std::env::var_os("CI").is_some() && bin.exists() {
            return Ok(bin);
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build
            .args(["build", "--quiet", "-p", "gatehouse", "--manifest-path"])
            .arg(&manifest);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().map_err(|e| format!("running cargo: {e}"))?;
        if !status.success() && !bin.exists() {
            return Err(format!("cargo build -p gatehouse failed: {status}"));
        }
        Ok(bin)
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// A running `gatehouse serve`, killed on drop.
struct Server {
    dir: TempDir,
    config: PathBuf,
    https: String,
    mqtts: std::net::SocketAddr,
    ca: PathBuf,
    /// An API token of the admin operator `e2e`.
    token: String,
    _child: Child,
}

impl Server {
    async fn start(extra: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("gatehouse-agent-e2e-")
            .tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let config = dir.path().join("gatehouse.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\n[listeners]\nmqtts = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\n{extra}\n",
                data.display().to_string()
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let mut child = Command::new(gatehouse_bin()?)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env("NO_COLOR", "1")
            .env_remove("GATEHOUSE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting gatehouse serve")?;
        let listeners = data.join("listeners.json");
        let deadline = tokio::time::Instant::now() + WAIT;
        let json: serde_json::Value = loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "gatehouse serve exited with {status}: {}",
                    std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
                );
            }
            if let Ok(text) = std::fs::read_to_string(&listeners)
                && let Ok(json) = serde_json::from_str(&text)
            {
                break json;
            }
            ensure!(tokio::time::Instant::now() < deadline, "no listeners.json");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let field = |k: &str| {
            json[k]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("listeners.json has no {k}: {json}"))
        };
        let mut server = Self {
            https: format!("https://{}", field("https")?),
            mqtts: field("mqtts")?.parse()?,
            ca: PathBuf::from(field("ca")?),
            config,
            dir,
            token: String::new(),
            _child: child,
        };
        server
            .cli(&["admin", "create", "e2e", "--role", "admin", "--json"])
            .await?;
        let out = server
            .cli(&["admin", "token", "e2e", "--label", "e2e", "--json"])
            .await?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        server.token = v["token"]
            .as_str()
            .context("admin token printed no token")?
            .to_owned();
        Ok(server)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("server.log")).unwrap_or_default()
    }

    /// Runs `gatehouse --config … <args>`, which must succeed; returns stdout.
    async fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(gatehouse_bin()?)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("USER", "e2e")
            .env_remove("GATEHOUSE_CONFIG")
            .stdin(Stdio::null())
            .output()
            .await?;
        ensure!(
            out.status.success(),
            "gatehouse {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A REST call (HTTP/1.1, `Connection: close`); returns status and JSON body.
    async fn api(&self, method: &str, path: &str) -> Result<(u16, serde_json::Value)> {
        self.api_with(method, path, "application/json", "").await
    }

    /// A REST call with a body of `content_type`; returns status and JSON body.
    async fn api_with(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> Result<(u16, serde_json::Value)> {
        let roots = read_certs(&self.ca)?;
        let config = gatehouse_pki::client_config(&roots, None)?;
        let addr = self.https.trim_start_matches("https://");
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("127.0.0.1")?, tcp)
            .await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.token,
            body.len()
        );
        tls.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        let _ = tls.read_to_end(&mut response).await;
        let text = String::from_utf8_lossy(&response);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no HTTP status")?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        Ok((status, serde_json::from_str(body).unwrap_or_default()))
    }

    /// Registers manufacturer `acme` with `ca` (models read from `urn:acme:model:` SAN
    /// URIs) and its model `thermo`.
    async fn register_acme(&self, ca: &ManufacturerCa) -> Result<()> {
        let pem = self.path("acme-ca.pem");
        std::fs::write(&pem, ca.cert_pem())?;
        let pem = pem.to_str().context("path")?;
        self.cli(&[
            "manufacturer",
            "add",
            "acme",
            "--ca",
            pem,
            "--model-from",
            "san-uri-prefix:urn:acme:model:",
        ])
        .await?;
        self.cli(&["model", "add", "thermo", "--manufacturer", "acme"])
            .await?;
        Ok(())
    }

    /// A token for model `thermo` in tenant `default`: `<id>:<secret>`.
    async fn token(&self, uses: u32) -> Result<String> {
        let out = self
            .cli(&[
                "token",
                "create",
                "--tenant",
                "default",
                "--model",
                "thermo",
                "--uses",
                &uses.to_string(),
                "--json",
            ])
            .await?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v["agent_token"]
            .as_str()
            .context("no agent_token")?
            .to_owned())
    }

    fn est(&self) -> Result<EstClient> {
        Ok(EstClient::new(&self.https, read_certs(&self.ca)?)?)
    }

    fn mqtt(&self) -> MqttEndpoint {
        MqttEndpoint {
            host: "127.0.0.1".to_owned(),
            port: self.mqtts.port(),
        }
    }
}

/// Starts an agent in its own task; the task ends with the test.
fn spawn(config: AgentConfig) -> AgentHandle {
    let (agent, handle) = Agent::new(config);
    tokio::spawn(async move {
        if let Err(e) = agent.run().await {
            eprintln!("agent stopped with an error: {e}");
        }
    });
    handle
}

async fn wait_for(
    handle: &AgentHandle,
    what: &str,
    server: &Server,
    f: impl FnMut(&AgentStatus) -> bool,
) -> Result<AgentStatus> {
    match tokio::time::timeout(WAIT * 2, handle.wait_for(f)).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => bail!("{what}: {e}"),
        Err(_) => bail!(
            "{what}: timed out; agent status {:?}\nserver log:\n{}",
            handle.status(),
            server.log()
        ),
    }
}

async fn next_message(
    rx: &mut tokio::sync::broadcast::Receiver<gatehouse_agent::Message>,
    topic: &str,
) -> Result<gatehouse_agent::Message> {
    tokio::time::timeout(WAIT, async {
        loop {
            let m = rx.recv().await?;
            if m.topic == topic {
                return Ok(m);
            }
        }
    })
    .await
    .with_context(|| format!("no message on {topic}"))?
}

/// Whether a program runs; outside CI a missing one skips the part that needs it.
#[track_caller]
fn have(program: &str) -> bool {
    gatehouse_testkit::have_program(program, &["--help"])
}

fn mode(path: &Path) -> Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_enrollment_then_mqtts_publish_subscribe_round_trip() -> Result<()> {
    // Gated by the static [policy] alone: under the trust gate no device may subscribe to
    // its reserved `$gatehouse/<device>/health` topic, which this test reads the heartbeat
    // from. (The posture test below runs under the trust gate.)
    let server = Server::start(&format!(
        "{LAB_POLICY}\n[trust]\ngate = \"static-policy-only\"\n"
    ))
    .await?;
    server.register_acme(&ManufacturerCa::new("Acme")?).await?;
    let token = server.token(3).await?;

    // Device 1: the real agent binary, as an installer would run it.
    let dir1 = server.path("thermo-1");
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse-agent"))
        .args(["enroll", "--server", &server.https, "--ca"])
        .arg(&server.ca)
        .arg("--dir")
        .arg(&dir1)
        .args(["--device", "thermo-1"])
        .env("GATEHOUSE_TOKEN", &token)
        .stdin(Stdio::null())
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "gatehouse-agent enroll: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(stdout.contains("enrolled default/thermo-1"), "{stdout}");
    ensure!(
        !stdout.contains(token.split(':').nth(1).unwrap_or("?")),
        "secret printed"
    );
    let state1 = StateDir::new(&dir1);
    assert_eq!(mode(&state1.key_path())?, 0o600);
    assert_eq!(mode(&dir1)?, 0o700);
    let creds1 = state1.load()?;
    assert_eq!(creds1.info().device.as_str(), "thermo-1");
    assert_eq!(creds1.chain().len(), 2, "leaf and issuing CA");

    let status = Command::new(env!("CARGO_BIN_EXE_gatehouse-agent"))
        .args(["status", "--json", "--dir"])
        .arg(&dir1)
        .output()
        .await?;
    ensure!(status.status.success(), "status failed");
    let v: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    assert_eq!(v["device"], "thermo-1");
    assert_eq!(v["serial"], creds1.info().serial_hex.as_str());
    assert_eq!(v["state"], "valid");

    // A second enrollment into the same directory is refused without --force.
    let again = Command::new(env!("CARGO_BIN_EXE_gatehouse-agent"))
        .args(["enroll", "--server", &server.https, "--dir"])
        .arg(&dir1)
        .args(["--device", "thermo-1", "--token", &token])
        .output()
        .await?;
    ensure!(!again.status.success(), "second enroll succeeded");

    // Device 2: the library, enrolling on its own when started with no state.
    let dir2 = server.path("thermo-2");
    let how = Enrollment::Token(
        token
            .parse::<EnrollmentToken>()?
            .for_device("thermo-2".parse()?),
    );
    let agent2 = spawn(
        AgentConfig::new(StateDir::new(&dir2), server.est()?, server.mqtt())
            .with_enrollment(how)
            .with_heartbeat(None),
    );
    let agent1 = spawn(
        AgentConfig::new(state1.clone(), server.est()?, server.mqtt())
            .with_heartbeat(Some(Duration::from_millis(300))),
    );
    let s2 = wait_for(&agent2, "thermo-2 connected", &server, |s| s.connected).await?;
    assert_eq!(s2.enrollments, 1);
    assert_eq!(
        s2.identity.as_ref().map(|i| i.device.as_str()),
        Some("thermo-2")
    );
    wait_for(&agent1, "thermo-1 connected", &server, |s| s.connected).await?;

    // Device to device through the broker.
    let mut inbox2 = agent2.messages();
    agent2.subscribe("lab/#", QoS::AtLeastOnce).await?;
    agent1
        .publish("lab/greeting", QoS::AtLeastOnce, "hello from thermo-1")
        .await?;
    let m = next_message(&mut inbox2, "lab/greeting").await?;
    assert_eq!(&m.payload[..], b"hello from thermo-1");

    // The files the agent stored are what a standard client needs: mosquitto_pub with
    // a third device's state directory reaches the agents.
    if have("mosquitto_pub") {
        let dir3 = server.path("thermo-3");
        let out = Command::new(env!("CARGO_BIN_EXE_gatehouse-agent"))
            .args(["enroll", "--server", &server.https, "--ca"])
            .arg(&server.ca)
            .arg("--dir")
            .arg(&dir3)
            .args(["--device", "thermo-3", "--token", &token])
            .output()
            .await?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let state3 = StateDir::new(&dir3);
        let out = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &server.mqtts.port().to_string()])
            .arg("--cafile")
            .arg(state3.ca_path())
            .arg("--cert")
            .arg(state3.cert_path())
            .arg("--key")
            .arg(state3.key_path())
            .args([
                "-i",
                "thermo-3",
                "-q",
                "1",
                "-t",
                "lab/mosquitto",
                "-m",
                "from thermo-3",
            ])
            .stdin(Stdio::null())
            .output()
            .await?;
        ensure!(
            out.status.success(),
            "mosquitto_pub: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = next_message(&mut inbox2, "lab/mosquitto").await?;
        assert_eq!(&m.payload[..], b"from thermo-3");
    }

    // The heartbeat reaches the device's own health topic.
    let mut inbox1 = agent1.messages();
    agent1
        .subscribe("$gatehouse/thermo-1/#", QoS::AtMostOnce)
        .await?;
    let beat = next_message(&mut inbox1, "$gatehouse/thermo-1/health").await?;
    let beat: serde_json::Value = serde_json::from_slice(&beat.payload)?;
    assert_eq!(beat["device"], "thermo-1");
    assert_eq!(beat["serial"], creds1.info().serial_hex.as_str());

    // The broker's policy still applies: another device's namespace is refused.
    let refused = agent1
        .subscribe("devices/thermo-2/#", QoS::AtMostOnce)
        .await;
    assert!(
        matches!(
            refused,
            Err(gatehouse_agent::AgentError::SubscriptionRefused(_))
        ),
        "{refused:?}"
    );

    agent1.shutdown().await;
    agent2.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_replaces_the_certificate_and_the_connection_continues() -> Result<()> {
    // The server backdates not_before by five minutes, so a three-minute certificate is
    // due for renewal about twenty seconds after it is issued.
    let server = Server::start("[enrollment]\ncertificate_validity = \"3m\"\n").await?;
    server.register_acme(&ManufacturerCa::new("Acme")?).await?;
    let token = server.token(1).await?;
    let dir = server.path("renew-1");
    let state = StateDir::new(&dir);
    let handle = spawn(
        AgentConfig::new(state.clone(), server.est()?, server.mqtt())
            .with_enrollment(Enrollment::Token(
                token
                    .parse::<EnrollmentToken>()?
                    .for_device("renew-1".parse()?),
            ))
            .with_heartbeat(None)
            .with_posture(Some(Posture::new().with_firmware("1.0")?))
            .with_retry(Duration::from_millis(200), Duration::from_secs(2)),
    );
    let first = wait_for(&handle, "connected", &server, |s| s.connected).await?;
    let first_serial = first
        .identity
        .as_ref()
        .context("no identity")?
        .serial_hex
        .clone();
    let mut inbox = handle.messages();
    handle
        .subscribe("devices/renew-1/#", QoS::AtLeastOnce)
        .await?;

    let renewed = wait_for(&handle, "renewed and reconnected", &server, |s| {
        s.renewals >= 1 && s.connected
    })
    .await?;
    let new_serial = renewed.identity.clone().context("no identity")?.serial_hex;
    assert_ne!(new_serial, first_serial, "renewal kept the old certificate");
    assert_eq!(
        renewed.enrollments, 1,
        "renewal must not enroll from scratch"
    );
    assert!(renewed.connections >= 2);
    // A posture report right after each connection, the first and the renewed one (the
    // interval, an hour, has not come round).
    assert_eq!(renewed.posture_reports, renewed.connections, "{renewed:?}");
    // The model has no profile: the firmware is recorded, its status unknown.
    let trust = wait_for_trust(&server, "renew-1", "posture applied", |t| {
        t["facts"]["posture_reported"] == true
    })
    .await?;
    assert_eq!(trust["facts"]["firmware"]["version"], "1.0", "{trust:#}");
    assert_eq!(
        trust["facts"]["firmware"]["status"]["status"], "unknown",
        "{trust:#}"
    );

    // The new certificate and key are what is stored, the key still private.
    let stored = state.load()?;
    assert_eq!(stored.info().serial_hex, new_serial);
    assert_eq!(mode(&state.key_path())?, 0o600);

    // The subscription made before the renewal still delivers.
    handle
        .publish("devices/renew-1/telemetry", QoS::AtLeastOnce, "21.5")
        .await?;
    let m = next_message(&mut inbox, "devices/renew-1/telemetry").await?;
    assert_eq!(&m.payload[..], b"21.5");
    handle.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_device_enrolls_again_with_its_idevid_once_reinstated() -> Result<()> {
    let server = Server::start("").await?;
    let acme = ManufacturerCa::new("Acme")?;
    server.register_acme(&acme).await?;
    server
        .cli(&[
            "claim",
            "add",
            "--tenant",
            "default",
            "--manufacturer",
            "acme",
            "--serial",
            "SN-9",
        ])
        .await?;
    let issued = acme.issue_idevid(
        &IdevidParams::new("SN-9", "thermostat").with_model_uri("urn:acme:model:thermo"),
    )?;
    let idevid = Idevid::from_pem(&issued.cert_pem, issued.key_pem.expose())?;
    let dir = server.path("sn-9");
    let handle = spawn(
        AgentConfig::new(StateDir::new(&dir), server.est()?, server.mqtt())
            .with_enrollment(Enrollment::Idevid(idevid))
            .with_heartbeat(None)
            .with_retry(Duration::from_millis(200), Duration::from_secs(1)),
    );
    let first = wait_for(&handle, "enrolled with the IDevID", &server, |s| {
        s.connected
    })
    .await?;
    let first = Arc::new(first.identity.context("no identity")?);
    assert_eq!(first.device.as_str(), "SN-9");

    server.cli(&["device", "revoke", "SN-9"]).await?;
    wait_for(&handle, "disconnected by the revocation", &server, |s| {
        !s.connected
    })
    .await?;
    // Refused while revoked: the agent keeps trying, and is not connected.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = handle.status();
    assert!(!status.connected, "{status:?}");
    assert_eq!(status.enrollments, 1, "{status:?}");

    let (code, body) = server
        .api("POST", "/api/v1/devices/default/SN-9/reinstate")
        .await?;
    ensure!(code == 200, "reinstate: {code} {body}");
    let back = wait_for(&handle, "enrolled again and connected", &server, |s| {
        s.connected && s.enrollments >= 2
    })
    .await?;
    let now = back.identity.context("no identity")?;
    assert_eq!(now.device.as_str(), "SN-9");
    assert_ne!(now.serial_hex, first.serial_hex);
    handle.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn est_refusals_surface_the_status_and_the_server_reason() -> Result<()> {
    use gatehouse_agent::{EnrollError, EstError};

    let server = Server::start("").await?;
    server.register_acme(&ManufacturerCa::new("Acme")?).await?;
    let est = server.est()?;

    let cas = est.cacerts().await?;
    assert_eq!(cas.len(), 2, "issuing CA and root");
    let attrs = est.csrattrs().await?;
    assert_eq!(attrs.first(), Some(&0x30), "csrattrs is a DER SEQUENCE");

    let token = server.token(1).await?;
    let (id, _) = token.split_once(':').context("token form")?;
    let enroll = |t: EnrollmentToken, device: &str| {
        let est = est.clone();
        let how = Enrollment::Token(t.for_device(device.parse().expect("device id")));
        async move { gatehouse_agent::enroll(&est, &how).await }
    };

    let wrong = EnrollmentToken::new(id, "not-the-secret")?;
    match enroll(wrong, "dev-a").await {
        Err(EnrollError::Est(e @ EstError::Refused { status: 401, .. })) => {
            assert!(e.is_credential_refusal() && !e.is_transient());
        }
        other => bail!("wrong secret: {other:?}"),
    }

    let enrolled = enroll(token.parse()?, "dev-a").await?;
    assert_eq!(enrolled.credentials.info().device.as_str(), "dev-a");
    match enroll(token.parse()?, "dev-b").await {
        Err(EnrollError::Est(EstError::Refused {
            status: 403,
            message,
        })) => assert!(!message.is_empty(), "no reason given"),
        other => bail!("used-up token: {other:?}"),
    }

    // Renewal with the certificate just issued works, and names the same device.
    let renewed = gatehouse_agent::reenroll(&est, &enrolled.credentials).await?;
    assert_eq!(renewed.credentials.info().device.as_str(), "dev-a");
    assert_ne!(
        renewed.credentials.info().serial_hex,
        enrolled.credentials.info().serial_hex
    );

    // A server the client does not trust is a TLS error, not a refusal.
    let stranger = tempfile::tempdir()?;
    let other_ca = gatehouse_pki::LocalCa::load_or_create(stranger.path())?;
    let untrusting = EstClient::new(&server.https, vec![other_ca.cert_der()])?;
    match untrusting.cacerts().await {
        Err(EstError::Tls { .. }) => {}
        other => bail!("untrusted server: {other:?}"),
    }
    Ok(())
}

/// The thermostat's profile: firmware 2.4.1 is current, 2.3.0 one release behind.
const THERMO_PROFILE: &str = r#"
manufacturer = "acme"
model = "thermo"

[firmware]
current = "2.4.1"
supported = ["2.3.0", "2.4.1"]

[[topics]]
pattern = "devices/{device}/telemetry/#"
direction = "publish"
kind = "telemetry"
"#;

/// Waits until the device's trust view (`GET …/trust`) satisfies `f`; returns it.
async fn wait_for_trust(
    server: &Server,
    device: &str,
    what: &str,
    mut f: impl FnMut(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, trust) = server
            .api("GET", &format!("/api/v1/devices/default/{device}/trust"))
            .await?;
        ensure!(code == 200, "trust of {device}: {code} {trust}");
        if f(&trust) {
            return Ok(trust);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{what}: the trust of {device} is still {trust:#}\nserver log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn factor_names(trust: &serde_json::Value) -> Vec<String> {
    trust["assessment"]["factors"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|x| x["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posture_reported_by_the_agent_reaches_the_devices_trust() -> Result<()> {
    let server = Server::start("").await?;
    server.register_acme(&ManufacturerCa::new("Acme")?).await?;
    let (code, body) = server
        .api_with(
            "POST",
            "/api/v1/models/thermo/profiles",
            "application/toml",
            THERMO_PROFILE,
        )
        .await?;
    ensure!(code == 201, "profile: {code} {body}");
    let token = server.token(1).await?;
    let dir = server.path("posture-1");
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse-agent"))
        .args(["enroll", "--server", &server.https, "--ca"])
        .arg(&server.ca)
        .arg("--dir")
        .arg(&dir)
        .args(["--device", "posture-1", "--token", &token])
        .stdin(Stdio::null())
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "gatehouse-agent enroll: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = wait_for_trust(&server, "posture-1", "enrolled", |_| true).await?;
    assert_eq!(before["facts"]["posture_reported"], false, "{before:#}");
    assert!(
        factor_names(&before)
            .iter()
            .any(|n| n == "posture never reported"),
        "{before:#}"
    );

    // One report with `gatehouse-agent posture`: firmware one release behind.
    let mqtt = format!("127.0.0.1:{}", server.mqtts.port());
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse-agent"))
        .args(["posture", "--json", "--mqtt", &mqtt, "--dir"])
        .arg(&dir)
        .args(["--firmware", "2.3.0", "--service", "ssh"])
        .args(["--default-credentials", "changed"])
        .stdin(Stdio::null())
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "gatehouse-agent posture: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(sent["device"], "posture-1");
    assert_eq!(sent["topic"], "$gatehouse/posture-1/posture");
    assert_eq!(sent["report"]["firmware"], "2.3.0");
    assert_eq!(sent["report"]["services"], serde_json::json!(["ssh"]));
    assert_eq!(sent["report"]["default_credentials"], "changed");
    assert_eq!(sent["algorithm"], "ecdsa-p256-sha256");
    let reported = wait_for_trust(&server, "posture-1", "first report applied", |t| {
        t["facts"]["posture_reported"] == true
    })
    .await?;
    let facts = &reported["facts"];
    assert_eq!(facts["firmware"]["version"], "2.3.0", "{reported:#}");
    assert_eq!(
        facts["firmware"]["status"]["status"], "behind",
        "{reported:#}"
    );
    assert_eq!(facts["default_credentials"], "changed", "{reported:#}");
    assert_eq!(
        facts["open_services"],
        serde_json::json!(["ssh"]),
        "{reported:#}"
    );
    ensure!(
        facts["clock_skew_secs"]
            .as_i64()
            .is_some_and(|s| s.abs() <= 5),
        "the device's clock is the server's: {reported:#}"
    );
    let names = factor_names(&reported);
    assert!(names.iter().any(|n| n == "firmware behind"), "{names:?}");
    assert!(
        !names.iter().any(|n| n == "posture never reported"),
        "{names:?}"
    );

    // `gatehouse-agent run` reports when it connects: the current firmware now. The server
    // processes one report per device per second, so wait that out first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = std::fs::File::create(server.path("agent-run.log"))?;
    let mut run = Command::new(env!("CARGO_BIN_EXE_gatehouse-agent"))
        .args(["run", "--server", &server.https, "--mqtt", &mqtt, "--dir"])
        .arg(&dir)
        .args(["--heartbeat", "0s", "--posture-interval", "0s"])
        .args(["--firmware", "2.4.1", "--default-credentials", "changed"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let current = wait_for_trust(&server, "posture-1", "report of `run` applied", |t| {
        t["facts"]["firmware"]["version"] == "2.4.1"
    })
    .await
    .with_context(|| std::fs::read_to_string(server.path("agent-run.log")).unwrap_or_default())?;
    assert_eq!(
        current["facts"]["firmware"]["status"]["status"], "current",
        "{current:#}"
    );
    let names = factor_names(&current);
    assert!(
        !names.iter().any(|n| n.starts_with("firmware")),
        "{names:?}"
    );

    // SIGTERM: the agent disconnects and exits cleanly.
    let pid = run.id().context("no pid")?;
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    ensure!(killed.success(), "kill -TERM {pid}");
    let status = tokio::time::timeout(WAIT, run.wait()).await??;
    let log = std::fs::read_to_string(server.path("agent-run.log"))?;
    ensure!(
        status.success(),
        "gatehouse-agent run exited with {status}:\n{log}"
    );
    ensure!(log.contains("posture reported"), "{log}");
    Ok(())
}
