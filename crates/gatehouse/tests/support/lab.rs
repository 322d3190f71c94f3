//! A running server and the tools a new user would drive it with: curl for HTTP, openssl
//! for keys and CSRs and PKCS#7, mosquitto_pub and rumqttc for MQTT.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};
use gatehouse_pki::{IssuedCert, SecretPem};
use serde_json::{Value, json};

use super::clients::V5;
use super::{Gatehouse, have_program};

/// A thermostat's profile: JSON telemetry at a few messages a second with a temperature
/// field and its range, commands in.
pub const THERMO_PROFILE: &str = r#"
manufacturer = "acme"
model = "thermo"

[firmware]
current = "2.4.1"
supported = ["2.4.1"]

[[topics]]
pattern = "devices/{device}/telemetry"
direction = "publish"
kind = "telemetry"
rate = "5/s"
burst = 10
payload = "json"

[[topics.fields]]
name = "temp"
min = -40.0
max = 85.0

[[topics]]
pattern = "devices/{device}/commands/+"
direction = "subscribe"
kind = "command"
"#;

pub fn tools() -> bool {
    have_program("curl", &["--version"]) && have_program("openssl", &["version"])
}

/// A running server plus a scratch directory for files the tools read and write.
pub struct Lab {
    pub gh: Gatehouse,
    pub dir: PathBuf,
}

impl Lab {
    pub async fn start() -> Result<Self> {
        Self::start_with("").await
    }

    pub async fn start_with(extra: &str) -> Result<Self> {
        let gh = Gatehouse::start(super::Options::extra(extra)).await?;
        let dir = gh.data_dir().join("lab");
        std::fs::create_dir_all(&dir)?;
        Ok(Self { gh, dir })
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.gh.listeners.https)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Runs curl against the server (trusting its CA); returns (status, body).
    pub fn curl(&self, args: &[&str]) -> Result<(u16, Vec<u8>)> {
        let body = self.path(&format!("curl-{}.out", rand_suffix()));
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "15", "--cacert"])
            .arg(&self.gh.listeners.ca)
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_code}"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running curl")?;
        let code = String::from_utf8_lossy(&out.stdout);
        let status: u16 = code.trim().parse().with_context(|| {
            format!(
                "curl {args:?} printed {code:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        ensure!(
            status != 0,
            "curl {args:?} got no HTTP response: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = std::fs::read(&body).unwrap_or_default();
        let _ = std::fs::remove_file(&body);
        Ok((status, bytes))
    }

    /// A JSON API call as the admin `tester`.
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let token = self.gh.token.clone();
        self.api_as(&token, method, path, body)
    }

    /// The `Authorization` header of the admin `tester`, for curl's `-H`.
    pub fn auth_header(&self) -> String {
        format!("authorization: Bearer {}", self.gh.token)
    }

    /// A JSON API call with this API token.
    pub fn api_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let url = self.url(path);
        let auth = format!("authorization: Bearer {token}");
        let data;
        let mut args = vec!["-X", method, url.as_str(), "-H", auth.as_str()];
        if let Some(b) = body {
            data = b.to_string();
            args.extend([
                "-H",
                "content-type: application/json",
                "--data-binary",
                &data,
            ]);
        }
        let (status, bytes) = self.curl(&args)?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// Registers manufacturer `acme` (with `ca_pem`) and model `thermo`.
    pub fn register_acme(&self, ca_pem: &str) -> Result<()> {
        let (s, v) = self.api(
            "POST",
            "/api/v1/manufacturers",
            Some(json!({
                "id": "acme",
                "idevid_ca_pems": [ca_pem],
                "model_rules": ["san-uri-prefix:urn:acme:model:"],
            })),
        )?;
        ensure!(s == 201, "manufacturer: {s} {v}");
        let (s, v) = self.api(
            "POST",
            "/api/v1/models",
            Some(json!({ "id": "thermo", "manufacturer": "acme" })),
        )?;
        ensure!(s == 201, "model: {s} {v}");
        Ok(())
    }

    /// Creates a token; returns (id, secret).
    pub fn token(&self, tenant: &str, uses: u32, expires_in: u64) -> Result<(String, String)> {
        let (s, v) = self.api(
            "POST",
            "/api/v1/tokens",
            Some(json!({
                "tenant": tenant, "model": "thermo", "max_uses": uses, "expires_in": expires_in,
            })),
        )?;
        ensure!(s == 201, "token: {s} {v}");
        let id = v["token"]["id"].as_str().context("token id")?.to_owned();
        let secret = v["secret"].as_str().context("token secret")?.to_owned();
        Ok((id, secret))
    }

    /// `openssl req`: a P-256 key and a base64 DER CSR with `subject` (e.g. `/CN=dev-1`,
    /// or `/` for none) and optional extra `-addext`. Returns (key path, csr.b64 path).
    pub fn csr(
        &self,
        name: &str,
        subject: &str,
        addext: Option<&str>,
    ) -> Result<(PathBuf, PathBuf)> {
        let key = self.path(&format!("{name}.key"));
        let der = self.path(&format!("{name}.csr.der"));
        let mut cmd = Command::new("openssl");
        cmd.args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            subject,
            "-outform",
            "DER",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&der);
        if let Some(ext) = addext {
            cmd.args(["-addext", ext]);
        }
        run(&mut cmd)?;
        let b64 = self.path(&format!("{name}.csr.b64"));
        std::fs::write(&b64, base64(&std::fs::read(&der)?))?;
        Ok((key, b64))
    }

    /// POSTs a CSR to an EST operation with extra curl arguments (credentials).
    pub fn est(&self, op: &str, csr_b64: &Path, auth: &[&str]) -> Result<(u16, Vec<u8>)> {
        let url = self.url(&format!("/.well-known/est/{op}"));
        let data = format!("@{}", csr_b64.display());
        let mut args = vec![
            "-X",
            "POST",
            "-H",
            "content-type: application/pkcs10",
            "--data-binary",
            &data,
        ];
        args.extend_from_slice(auth);
        args.push(&url);
        self.curl(&args)
    }

    /// Decodes an EST certs-only response with openssl; writes the certificates as PEM.
    pub fn certs_from_response(&self, name: &str, body: &[u8]) -> Result<PathBuf> {
        let b64 = self.path(&format!("{name}.p7.b64"));
        std::fs::write(&b64, body)?;
        let der = self.path(&format!("{name}.p7"));
        run(Command::new("openssl")
            .args(["base64", "-d", "-in"])
            .arg(&b64)
            .arg("-out")
            .arg(&der))?;
        let pem = self.path(&format!("{name}.crt"));
        run(Command::new("openssl")
            .args(["pkcs7", "-inform", "DER", "-print_certs", "-in"])
            .arg(&der)
            .arg("-out")
            .arg(&pem))?;
        Ok(pem)
    }

    /// Token enrollment of `device`; returns (key, cert) paths.
    pub fn enroll_with_token(
        &self,
        device: &str,
        token: &(String, String),
    ) -> Result<(PathBuf, PathBuf)> {
        let (key, csr) = self.csr(device, &format!("/CN={device}"), None)?;
        let user = format!("{}:{}", token.0, token.1);
        let (s, body) = self.est("simpleenroll", &csr, &["-u", &user])?;
        ensure!(
            s == 200,
            "simpleenroll {device}: {s} {}",
            String::from_utf8_lossy(&body)
        );
        Ok((key, self.certs_from_response(device, &body)?))
    }

    /// Enrolls `device` with a fresh single-use token and connects it over MQTT 5 with the
    /// issued certificate; returns its TLS configuration (for reconnects) and the client.
    pub async fn connected_device(
        &self,
        device: &str,
    ) -> Result<(std::sync::Arc<rustls::ClientConfig>, V5)> {
        let (key, cert) = self.enroll_with_token(device, &self.token("default", 1, 3600)?)?;
        let tls = tls_from_files(self, &key, &cert)?;
        let client = V5::connect_as(self.gh.listeners.mqtts, tls.clone(), device).await?;
        Ok((tls, client))
    }

    /// Whether a reconnect as `device` with `tls` is refused.
    pub async fn reconnect_refused(
        &self,
        tls: std::sync::Arc<rustls::ClientConfig>,
        device: &str,
    ) -> Result<String> {
        let mut again = V5::spawn(super::clients::v5_options(
            self.gh.listeners.mqtts,
            tls,
            device,
        ));
        Ok(format!("{:?}", again.refused().await?))
    }

    /// A reconnect with `tls` is refused *because the certificate is revoked*: the client
    /// fails, the server counts one more `certificate_revoked` handshake failure, and it
    /// still answers (a crashed server also refuses every reconnect).
    pub async fn reconnect_refused_as_revoked(
        &self,
        tls: std::sync::Arc<rustls::ClientConfig>,
        device: &str,
    ) -> Result<String> {
        const SAMPLE: &str = "gatehouse_tls_failures_total{reason=\"certificate_revoked\"}";
        let before = self.gh.metric(SAMPLE).await?;
        let refused = self.reconnect_refused(tls, device).await?;
        self.gh.wait_metric(SAMPLE, before + 1.0).await?;
        let (status, body) = self.gh.https_get("/healthz").await?;
        anyhow::ensure!(status == 200, "/healthz after the refusal: {status} {body}");
        Ok(refused)
    }

    /// Uploads a model profile (TOML) with curl; returns the status and the body.
    pub fn upload_profile(&self, model: &str, toml: &str) -> Result<(u16, Vec<u8>)> {
        let file = self.path(&format!("profile-{model}-{}.toml", rand_suffix()));
        std::fs::write(&file, toml)?;
        let data = format!("@{}", file.display());
        let url = self.url(&format!("/api/v1/models/{model}/profiles"));
        let auth = self.auth_header();
        self.curl(&[
            "-X",
            "POST",
            "-H",
            &auth,
            "-H",
            "content-type: application/toml",
            "--data-binary",
            &data,
            &url,
        ])
    }

    /// A single-use enrollment token for a device of `model` in the default tenant;
    /// returns (id, secret).
    pub fn model_token(&self, model: &str) -> Result<(String, String)> {
        let (s, v) = self.api(
            "POST",
            "/api/v1/tokens",
            Some(json!({ "tenant": "default", "model": model, "max_uses": 1, "expires_in": 3600 })),
        )?;
        ensure!(s == 201, "token: {s} {v}");
        Ok((
            v["token"]["id"].as_str().context("token id")?.to_owned(),
            v["secret"].as_str().context("token secret")?.to_owned(),
        ))
    }

    pub fn audit(&self) -> Result<Vec<Value>> {
        let (s, v) = self.api("GET", "/api/v1/audit?limit=1000", None)?;
        ensure!(s == 200, "audit: {s} {v}");
        Ok(v.as_array().cloned().unwrap_or_default())
    }
}

pub fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("running a tool")?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// Publishes one QoS 1 message as `device` with mosquitto_pub and the given files, and
/// checks the broker acknowledged it.
pub fn mosquitto_pub_qos1(lab: &Lab, key: &Path, cert: &Path, device: &str) -> Result<()> {
    let topic = format!("devices/{device}/temp");
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p"])
        .arg(lab.gh.listeners.mqtts.port().to_string())
        .arg("--cafile")
        .arg(&lab.gh.listeners.ca)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .args(["-i", device, "-t", &topic, "-m", "21.5", "-q", "1", "-d"])
        .output()
        .context("running mosquitto_pub")?;
    let log = format!("{}{}", text(&out.stdout), text(&out.stderr));
    ensure!(
        out.status.success() && log.contains("received PUBACK"),
        "mosquitto_pub: {log}"
    );
    Ok(())
}

/// The MQTT client TLS config for files written by openssl and the EST response.
pub fn tls_from_files(
    lab: &Lab,
    key: &Path,
    cert: &Path,
) -> Result<std::sync::Arc<rustls::ClientConfig>> {
    let issued = IssuedCert::from_pem(
        std::fs::read_to_string(cert)?,
        SecretPem::new(std::fs::read_to_string(key)?),
        std::fs::read_to_string(&lab.gh.listeners.ca)?,
    )?;
    Ok(gatehouse_pki::client_config(
        &[lab.gh.ca_der()?],
        Some(&issued),
    )?)
}

/// Operators, made with the binary's `admin` commands as an admin on the host would.
impl Lab {
    /// Creates an operator (bound to `tenant` when given); returns its generated password.
    pub async fn create_operator(
        &self,
        name: &str,
        role: &str,
        tenant: Option<&str>,
    ) -> Result<String> {
        let mut args = vec!["admin", "create", name, "--role", role, "--json"];
        if let Some(t) = tenant {
            args.extend(["--tenant", t]);
        }
        let v: Value = serde_json::from_str(&self.gh.cli(&args).await?)?;
        Ok(v["password"].as_str().context("no password")?.to_owned())
    }

    /// Creates an operator and an API token for it; returns the token.
    pub async fn operator_token(
        &self,
        name: &str,
        role: &str,
        tenant: Option<&str>,
    ) -> Result<String> {
        self.create_operator(name, role, tenant).await?;
        let v: Value =
            serde_json::from_str(&self.gh.cli(&["admin", "token", name, "--json"]).await?)?;
        Ok(v["token"].as_str().context("no token")?.to_owned())
    }
}

/// Waits until `check` returns a value, polling; fails naming `what` after `within`.
pub async fn eventually<T>(
    within: std::time::Duration,
    what: &str,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        anyhow::ensure!(
            std::time::Instant::now() <= deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Devices' trust, through the REST API as the admin `tester`.
impl Lab {
    /// The trust view of device `name` of the default tenant.
    pub fn trust(&self, name: &str) -> Result<Value> {
        let (s, v) = self.api(
            "GET",
            &format!("/api/v1/devices/default/{name}/trust"),
            None,
        )?;
        ensure!(s == 200, "trust of {name}: {s} {v}");
        Ok(v)
    }

    /// Waits until the device's assessed tier and its verdict in force are both `tier`;
    /// returns its trust view, or fails with the last one after `within`.
    pub async fn wait_for_tier(
        &self,
        name: &str,
        tier: &str,
        within: std::time::Duration,
    ) -> Result<Value> {
        let mut last = Value::Null;
        let r = eventually(within, &format!("{name} becoming {tier}"), || {
            let v = self.trust(name)?;
            let done = v["assessment"]["tier"] == tier && v["verdict"]["tier"] == tier;
            last = v.clone();
            Ok(done.then_some(v))
        })
        .await;
        r.with_context(|| format!("last trust view: {last:#}"))
    }
}
