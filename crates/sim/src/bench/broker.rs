//! Brokers under test: started by the bench as child processes on free loopback ports,
//! each with a fresh temporary directory, and killed when dropped (also on error and
//! Ctrl-C, through `kill_on_drop`). Gatehouse binds port 0 and reports where it listens in
//! `<data_dir>/listeners.json`; Mosquitto is given a port the kernel just handed out.
//!
//! Before Gatehouse serves, the same binary creates an operator (`bench`, role admin) and
//! an API token for it in the fresh data directory (`gatehouse admin create` and
//! `gatehouse admin token`): the scenarios that call the REST API send that token.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tempfile::TempDir;
use tokio::process::{Child, Command};

use super::machine;
use super::pki::BenchPki;
use super::report::BrokerKind;

/// Unacknowledged QoS 1 messages per session, in each direction: Gatehouse's default
/// (`gatehouse_broker::Limits::max_inflight`). The load generator's window is the same.
pub const MAX_INFLIGHT: u16 = 64;

/// Mosquitto's `max_inflight_messages`: 0, no limit, rather than [`MAX_INFLIGHT`].
/// Mosquitto 2.0.11 (Debian 12) with a finite quota strands queued QoS 1 messages for a
/// subscriber that several publishers feed (its inflight-quota fixes came in 2.0.13); with
/// no limit it delivers everything, and the generator's window still bounds what is in
/// flight. This favours Mosquitto, never Gatehouse.
pub const MOSQUITTO_MAX_INFLIGHT: u16 = 0;

/// Messages queued per session beyond the inflight window: Gatehouse's default, and
/// Mosquitto's.
pub const MAX_QUEUED: u32 = 1000;

/// How long a broker may take to accept TCP connections after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one `gatehouse admin` command may take (it hashes a password).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The operator the bench creates in Gatehouse's registry for its REST calls.
pub const BENCH_OPERATOR: &str = "bench";

/// Where the brokers' binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The `gatehouse` binary.
    pub gatehouse: PathBuf,
    /// The `mosquitto` binary.
    pub mosquitto: PathBuf,
}

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    kind: BrokerKind,
    child: Child,
    pid: u32,
    addr: SocketAddr,
    /// Gatehouse's HTTPS listener (EST, REST API), once read from `listeners.json`.
    https: Option<SocketAddr>,
    /// Gatehouse's data directory.
    data_dir: Option<PathBuf>,
    /// The API token of the bench's operator, for Gatehouse's REST API.
    api_token: Option<String>,
    log: PathBuf,
    // Removed when the broker is dropped (after the child, declared above it).
    _dir: TempDir,
}

// === impl Broker ===

impl Broker {
    /// Starts a broker of `kind` trusting the run's CA, and waits until it accepts TCP.
    pub async fn start(
        kind: BrokerKind,
        bins: &Binaries,
        pki: &BenchPki,
        detection: Detection,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("gatehouse-bench-{}-", kind.name()))
            .tempdir()
            .context("creating the broker's temporary directory")?;
        let log = dir.path().join("broker.log");
        let (mut command, addr, data_dir, api_token) = match kind {
            BrokerKind::Mosquitto => {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
                let command = mosquitto_command(&bins.mosquitto, dir.path(), addr, pki)?;
                (command, addr, None, None)
            }
            BrokerKind::Gatehouse | BrokerKind::GatehouseStatic => {
                let data_dir = dir.path().join("data");
                let (command, conf) = gatehouse_command(
                    &bins.gatehouse,
                    dir.path(),
                    &data_dir,
                    pki,
                    kind,
                    detection,
                )?;
                let token = gatehouse_api_token(&bins.gatehouse, &conf)
                    .await
                    .context("creating the bench's operator and API token in Gatehouse")?;
                // Known once the broker has written listeners.json.
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
                (command, addr, Some(data_dir), Some(token))
            }
        };
        let log_file = std::fs::File::create(&log)?;
        command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true);
        let child = command.spawn().with_context(|| {
            format!(
                "starting {} ({:?})",
                kind.name(),
                command.as_std().get_program()
            )
        })?;
        let pid = child
            .id()
            .context("the broker exited before its pid was read")?;
        let mut broker = Self {
            kind,
            child,
            pid,
            addr,
            https: None,
            data_dir,
            api_token,
            log,
            _dir: dir,
        };
        broker.wait_ready().await?;
        Ok(broker)
    }

    /// Which broker this is.
    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// Its MQTTS address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Gatehouse's HTTPS address (EST and the REST API); `None` for Mosquitto.
    pub fn https(&self) -> Option<SocketAddr> {
        self.https
    }

    /// Gatehouse's data directory (its CA bundle is `ca/ca.crt` there); `None` for
    /// Mosquitto.
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    /// The API token of the bench's operator (role admin) for Gatehouse's REST API, sent
    /// as `Authorization: Bearer <token>`; `None` for Mosquitto.
    pub fn api_token(&self) -> Option<&str> {
        self.api_token.as_deref()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its resident memory in bytes.
    pub fn rss(&self) -> anyhow::Result<u64> {
        machine::rss_bytes(self.pid)
            .with_context(|| format!("reading {}'s memory", self.kind.name()))
    }

    /// Fails, with the end of its log, if the broker has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log ends with:\n{}",
                self.kind.name(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The last lines of the broker's output.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            self.check_alive()?;
            if let Some(data_dir) = &self.data_dir
                && let Some((mqtts, https)) = read_listeners(&data_dir.join("listeners.json"))
            {
                self.addr = mqtts;
                self.https = Some(https);
            }
            if self.addr.port() != 0 && tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let place = if self.addr.port() == 0 {
                    "wrote no listeners.json".to_owned()
                } else {
                    format!("did not accept connections on {}", self.addr)
                };
                bail!(
                    "{} {place} within {:?}; its log ends with:\n{}",
                    self.kind.name(),
                    READY_TIMEOUT,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the broker and waits for it to exit.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// The MQTTS and HTTPS addresses in Gatehouse's `listeners.json`, once it is written
/// whole.
fn read_listeners(path: &Path) -> Option<(SocketAddr, SocketAddr)> {
    let text = std::fs::read(path).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let addr = |key: &str| json.get(key)?.as_str()?.parse::<SocketAddr>().ok();
    Some((addr("mqtts")?, addr("https")?))
}

/// Asks the kernel for a free loopback port.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Mosquitto's configuration: one mutual-TLS listener, identity from the certificate's CN,
/// nothing persisted, inflight and queue limits equal to Gatehouse's.
pub fn mosquitto_conf(dir: &Path, addr: SocketAddr, running_as_root: bool) -> String {
    let mut conf = String::new();
    conf.push_str("# Written by gatehouse bench.\n");
    if running_as_root {
        // Mosquitto drops root for the `mosquitto` user, which cannot read this directory.
        conf.push_str("user root\n");
    }
    conf.push_str(&format!(
        "per_listener_settings false\n\
         allow_anonymous false\n\
         persistence false\n\
         max_inflight_messages {MOSQUITTO_MAX_INFLIGHT}\n\
         max_queued_messages {MAX_QUEUED}\n\
         set_tcp_nodelay true\n\
         sys_interval 0\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         listener {port} {ip}\n\
         max_connections -1\n\
         cafile {dir}/ca.crt\n\
         certfile {dir}/server.crt\n\
         keyfile {dir}/server.key\n\
         require_certificate true\n\
         use_identity_as_username true\n",
        port = addr.port(),
        ip = addr.ip(),
        dir = dir.display(),
    ));
    conf
}

fn mosquitto_command(
    bin: &Path,
    dir: &Path,
    addr: SocketAddr,
    pki: &BenchPki,
) -> anyhow::Result<Command> {
    pki.server()
        .write_to(dir, "server")
        .context("writing Mosquitto's certificates")?;
    let conf_path = dir.join("mosquitto.conf");
    std::fs::write(&conf_path, mosquitto_conf(dir, addr, running_as_root()))?;
    let mut command = Command::new(bin);
    command.arg("-c").arg(conf_path);
    Ok(command)
}

/// The `trust.gate` setting of a Gatehouse broker kind: `trust` (the default: verdicts gate
/// the data plane) or `static-policy-only` (the static `[policy]` alone).
pub fn trust_gate(kind: BrokerKind) -> &'static str {
    match kind {
        BrokerKind::GatehouseStatic => "static-policy-only",
        BrokerKind::Gatehouse | BrokerKind::Mosquitto => "trust",
    }
}

/// How Gatehouse's detection is configured for a bench run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    /// The shipped rules, thresholds and playbooks (the detect scenario).
    Defaults,
    /// Every rule runs, but the flood and burst thresholds are lifted out of the load
    /// generator's reach: a bench device sends thousands of messages a second, which any
    /// fleet's rules would (rightly) call a flood and quarantine.
    LoadGenerator,
}

/// The `[detect]` part of the configuration for `detection`.
fn detect_toml(detection: Detection) -> &'static str {
    match detection {
        Detection::Defaults => "",
        Detection::LoadGenerator => {
            "[detect.rules.publish_flood]
             max_rate = 1000000000.0
             
             [detect.rules.burst]
             enabled = false
             
             [detect.rules.connect_flood]
             per_source = 1000000000.0
             per_device = 1000000000.0
             
"
        }
    }
}

/// Gatehouse's configuration file for `gatehouse serve --config`. Every bench device may
/// publish and subscribe under `bench/`, as every client may on the Mosquitto side (which
/// has no ACL); the gate still checks each publish and subscription: against the verdict
/// of the device (`gate = "trust"`; the bench's own certificates name devices that are not
/// registered, whose provisional verdicts come from the static policy), or against the
/// static policy alone (`gate = "static-policy-only"`).
pub fn gatehouse_toml(
    data_dir: &Path,
    mqtts: SocketAddr,
    https: SocketAddr,
    gate: &str,
    detection: Detection,
) -> String {
    format!(
        "# Written by gatehouse bench.\n\
         data_dir = {data_dir:?}\n\
         \n\
         [listeners]\n\
         mqtts = \"{mqtts}\"\n\
         https = \"{https}\"\n\
         \n\
         [limits]\n\
         connect_rate_per_source = 0\n\
         max_connections = 0\n\
         \n\
         [policy]\n\
         publish = [\"bench/#\"]\n\
         subscribe = [\"bench/#\"]\n\
         \n\
         [trust]\n\
         gate = {gate:?}\n\
         \n\
         {detect}\
         [log]\n\
         level = \"warn\"\n",
        data_dir = data_dir.display().to_string(),
        detect = detect_toml(detection),
    )
}

/// Writes Gatehouse's configuration and CA; returns the `serve` command and the
/// configuration file's path.
fn gatehouse_command(
    bin: &Path,
    dir: &Path,
    data_dir: &Path,
    pki: &BenchPki,
    kind: BrokerKind,
    detection: Detection,
) -> anyhow::Result<(Command, PathBuf)> {
    pki.copy_ca_to(&data_dir.join("ca"))?;
    let any_port = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let conf_path = dir.join("gatehouse.toml");
    std::fs::write(
        &conf_path,
        gatehouse_toml(data_dir, any_port, any_port, trust_gate(kind), detection),
    )?;
    let mut command = Command::new(bin);
    command.arg("serve").arg("--config").arg(&conf_path);
    Ok((command, conf_path))
}

/// Creates the operator [`BENCH_OPERATOR`] (role admin) and an API token for it in the
/// registry of the Gatehouse configured by `conf`, with the binary's own CLI, before the
/// server starts; returns the token.
async fn gatehouse_api_token(bin: &Path, conf: &Path) -> anyhow::Result<String> {
    // The data directory is made by `init` (or the first `serve`), not by the commands
    // that use it.
    gatehouse_cli(bin, conf, &["init"]).await?;
    gatehouse_cli(
        bin,
        conf,
        &[
            "admin",
            "create",
            BENCH_OPERATOR,
            "--role",
            "admin",
            "--json",
        ],
    )
    .await?;
    let answer = gatehouse_cli(
        bin,
        conf,
        &[
            "admin",
            "token",
            BENCH_OPERATOR,
            "--label",
            "gatehouse bench",
            "--json",
        ],
    )
    .await?;
    token_from_json(&answer)
}

/// Runs `gatehouse --config <conf> <args>`; returns its standard output, or fails with
/// its standard error.
async fn gatehouse_cli(bin: &Path, conf: &Path, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let what = format!("gatehouse {}", args.join(" "));
    let output = tokio::time::timeout(
        ADMIN_TIMEOUT,
        Command::new(bin)
            .arg("--config")
            .arg(conf)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("`{what}` did not finish within {ADMIN_TIMEOUT:?}"))?
    .with_context(|| format!("running `{what}` ({})", bin.display()))?;
    if !output.status.success() {
        bail!(
            "`{what}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

/// The token in the JSON `gatehouse admin token --json` prints.
fn token_from_json(stdout: &[u8]) -> anyhow::Result<String> {
    let answer: serde_json::Value = serde_json::from_slice(stdout).with_context(|| {
        format!(
            "`gatehouse admin token --json` printed no JSON: {}",
            String::from_utf8_lossy(stdout).trim()
        )
    })?;
    answer["token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .context("`gatehouse admin token --json` printed no token")
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// The version a broker binary reports, for the report header.
pub async fn version_of(kind: BrokerKind, bin: &Path) -> String {
    let arg = match kind {
        BrokerKind::Mosquitto => "-h",
        BrokerKind::Gatehouse | BrokerKind::GatehouseStatic => "--version",
    };
    let output = tokio::time::timeout(
        Duration::from_secs(5),
        Command::new(bin)
            .arg(arg)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await;
    match output {
        Ok(Ok(out)) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            text.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("unknown")
                .trim()
                .to_owned()
        }
        _ => "unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gatehouse_config_is_toml_with_the_expected_keys() {
        let text = gatehouse_toml(
            Path::new("/tmp/x \"y\"/data"),
            "127.0.0.1:1".parse().expect("addr"),
            "127.0.0.1:2".parse().expect("addr"),
            trust_gate(BrokerKind::Gatehouse),
            Detection::LoadGenerator,
        );
        assert!(
            text.contains("data_dir = \"/tmp/x \\\"y\\\"/data\""),
            "{text}"
        );
        assert!(text.contains("mqtts = \"127.0.0.1:1\""));
        assert!(text.contains("connect_rate_per_source = 0"));
        assert!(text.contains("subscribe = [\"bench/#\"]"));
        assert!(text.contains("[trust]\ngate = \"trust\"\n"), "{text}");
    }

    #[test]
    fn each_gatehouse_kind_runs_its_own_gate() {
        let at = |kind| {
            gatehouse_toml(
                Path::new("/d"),
                "127.0.0.1:0".parse().expect("addr"),
                "127.0.0.1:0".parse().expect("addr"),
                trust_gate(kind),
                Detection::LoadGenerator,
            )
        };
        let trust = at(BrokerKind::Gatehouse);
        let fixed = at(BrokerKind::GatehouseStatic);
        assert!(
            fixed.contains("[trust]\ngate = \"static-policy-only\"\n"),
            "{fixed}"
        );
        // Nothing else differs: the two runs compare the gates and nothing more.
        let strip = |t: &str| t.replace("\"static-policy-only\"", "\"trust\"");
        assert_eq!(strip(&fixed), trust);
        assert_eq!(fixed.matches("[trust]").count(), 1);
    }

    #[test]
    fn listeners_are_read_once_written_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("listeners.json");
        assert_eq!(read_listeners(&path), None);
        std::fs::write(&path, r#"{"mqtts": "127.0.0.1:40001", "ht"#).expect("write");
        assert_eq!(read_listeners(&path), None);
        std::fs::write(
            &path,
            r#"{"mqtts": "127.0.0.1:40001", "https": "127.0.0.1:40002", "mqtt": null}"#,
        )
        .expect("write");
        assert_eq!(
            read_listeners(&path),
            Some((
                "127.0.0.1:40001".parse().expect("addr"),
                "127.0.0.1:40002".parse().expect("addr")
            ))
        );
    }

    #[test]
    fn api_tokens_are_read_from_the_admin_json() {
        let printed = br#"{
  "token": "gha_at-0a1b_s3cret",
  "record": { "id": "at-0a1b", "operator": "bench" },
  "note": "The token is shown only this once."
}"#;
        assert_eq!(
            token_from_json(printed).expect("a token"),
            "gha_at-0a1b_s3cret"
        );
        assert!(token_from_json(b"created API token").is_err());
        assert!(token_from_json(br#"{"token": ""}"#).is_err());
        assert!(token_from_json(br#"{"record": {}}"#).is_err());
    }

    #[test]
    fn mosquitto_config_requires_client_certificates() {
        let conf = mosquitto_conf(
            Path::new("/d"),
            "127.0.0.1:8883".parse().expect("addr"),
            false,
        );
        assert!(conf.contains("listener 8883 127.0.0.1\n"));
        assert!(conf.contains("require_certificate true\n"));
        assert!(conf.contains("use_identity_as_username true\n"));
        assert!(conf.contains("allow_anonymous false\n"));
        assert!(conf.contains("max_inflight_messages 0\n"));
        assert!(!conf.contains("user root"));
    }
}
