//! `gatehouse-agent`: enroll a device, run it, report its posture, show its identity.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use gatehouse_agent::posture::{self, CredentialState, Posture};
use gatehouse_agent::state::{read_certs, read_idevid};
use gatehouse_agent::{
    Agent, AgentConfig, Enrollment, EnrollmentToken, EstClient, MqttEndpoint, StateDir,
};
use gatehouse_types::{DeviceId, TenantId};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::info;

/// The Gatehouse device agent: enrolls over EST, keeps the device's key and certificate,
/// connects over MQTTS and renews the certificate on time.
#[derive(Debug, Parser)]
#[command(name = "gatehouse-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll once: generate a key, get a certificate over EST, store both in --dir.
    Enroll {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        how: EnrollArgs,
        /// Replace an identity already in --dir.
        #[arg(long)]
        force: bool,
    },
    /// Run: enroll if needed, connect over MQTTS, publish heartbeats and signed posture
    /// reports, renew on time.
    Run {
        #[command(flatten)]
        server: ServerArgs,
        /// The MQTTS listener, host:port (the host must be a name in the server's
        /// certificate).
        #[arg(long, value_name = "HOST:PORT")]
        mqtt: String,
        #[command(flatten)]
        how: EnrollArgs,
        /// Interval of the heartbeat to $gatehouse/<device>/health ("0s": none).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        heartbeat: Duration,
        /// Longest wait between retries of a failed connection or EST request.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        retry_max: Duration,
        #[command(flatten)]
        posture: PostureArgs,
        /// Interval of the signed posture reports to $gatehouse/<device>/posture, after the
        /// one made on each connection ("0s": only on connecting).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        posture_interval: Duration,
        /// Report no posture at all.
        #[arg(long, conflicts_with_all = ["firmware", "services", "default_credentials"])]
        no_posture: bool,
    },
    /// Report the device's posture once: connect over MQTTS with the stored identity,
    /// publish one signed report, disconnect; print what was sent.
    Posture {
        /// State directory (an enrolled identity).
        #[arg(long)]
        dir: PathBuf,
        /// The MQTTS listener, host:port (the host must be a name in the server's
        /// certificate).
        #[arg(long, value_name = "HOST:PORT")]
        mqtt: String,
        /// Trust anchors for the server, PEM (default: <dir>/ca.crt).
        #[arg(long, value_name = "PEM")]
        ca: Option<PathBuf>,
        #[command(flatten)]
        posture: PostureArgs,
        /// Longest wait for the whole exchange: connect, publish, acknowledgement.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the stored identity: device, serial, validity, when it renews.
    Status {
        /// State directory.
        #[arg(long)]
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// The Gatehouse HTTPS (EST) server, e.g. https://gatehouse.example:8443.
    #[arg(long, value_name = "URL")]
    server: String,
    /// Bootstrap trust anchor for the server: the Gatehouse CA certificate(s), PEM.
    /// After enrollment, <dir>/ca.crt (from EST cacerts) is used instead.
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// State directory: device.key, device.crt, ca.crt.
    #[arg(long)]
    dir: PathBuf,
}

#[derive(Debug, Args)]
struct EnrollArgs {
    /// Enrollment token, <id>:<secret> (from `gatehouse token create`).
    #[arg(long, env = "GATEHOUSE_TOKEN", hide_env_values = true, value_name = "ID:SECRET",
          conflicts_with_all = ["idevid", "idevid_key"])]
    token: Option<String>,
    /// With --token: the device id to ask for (the CSR's common name).
    #[arg(long, requires = "token")]
    device: Option<DeviceId>,
    /// With --device: the tenant, to also put the SAN URI gatehouse://<tenant>/device/<id>
    /// in the CSR.
    #[arg(long, requires = "device")]
    tenant: Option<TenantId>,
    /// The device's manufacturer certificate (IDevID), PEM, then any intermediates.
    #[arg(long, value_name = "PEM", requires = "idevid_key")]
    idevid: Option<PathBuf>,
    /// The IDevID's private key, PEM. Only read.
    #[arg(long, value_name = "PEM", requires = "idevid")]
    idevid_key: Option<PathBuf>,
}

/// What the device reports about itself.
#[derive(Debug, Args)]
struct PostureArgs {
    /// The firmware version the device runs (1 to 64 bytes).
    #[arg(long, value_name = "VERSION")]
    firmware: Option<String>,
    /// A network service the device has open (ssh, http, telnet, ...); repeat for each.
    #[arg(long = "service", value_name = "NAME")]
    services: Vec<String>,
    /// Whether the device's default credentials were changed.
    #[arg(long, value_enum, value_name = "STATE")]
    default_credentials: Option<DefaultCredentials>,
}

/// `--default-credentials`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DefaultCredentials {
    /// Changed from the model's defaults.
    Changed,
    /// Still the model's defaults.
    Unchanged,
    /// The device has no default credentials.
    NotApplicable,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Enroll { server, how, force } => enroll(server, how, force).await,
        Command::Run {
            server,
            mqtt,
            how,
            heartbeat,
            retry_max,
            posture,
            posture_interval,
            no_posture,
        } => {
            let posture = (!no_posture).then(|| posture.posture()).transpose()?;
            let run = RunOptions {
                heartbeat,
                retry_max,
                posture,
                posture_interval,
            };
            run_agent(server, mqtt, how, run).await
        }
        Command::Posture {
            dir,
            mqtt,
            ca,
            posture,
            timeout,
            json,
        } => report_posture(dir, mqtt, ca, posture.posture()?, timeout, json).await,
        Command::Status { dir, json } => status(dir, json),
    }
}

async fn enroll(server: ServerArgs, how: EnrollArgs, force: bool) -> Result<()> {
    let state = StateDir::new(&server.dir);
    if state.is_enrolled() && !force {
        bail!(
            "{} already holds a device identity (use --force to replace it)",
            state.path().display()
        );
    }
    if how.token.is_some() && how.device.is_none() {
        bail!("--device is needed with --token: the certificate request names the device");
    }
    let Some(how) = how.enrollment()? else {
        bail!("give --token <id>:<secret> (or GATEHOUSE_TOKEN) or --idevid and --idevid-key");
    };
    let est = est_client(&server, &state)?;
    let enrolled = gatehouse_agent::enroll(&est, &how).await?;
    state.save(&enrolled.credentials)?;
    state.save_ca(&enrolled.ca_certs)?;
    let info = enrolled.credentials.info();
    println!("enrolled {}/{}", info.tenant, info.device);
    println!("serial:    {}", info.serial_hex);
    println!("not_after: {}", rfc3339(info.not_after));
    println!("renew_at:  {}", rfc3339(enrolled.credentials.renew_at()));
    println!("key:       {}", state.key_path().display());
    println!("cert:      {}", state.cert_path().display());
    println!("ca:        {}", state.ca_path().display());
    Ok(())
}

/// What `run` does besides connecting.
struct RunOptions {
    heartbeat: Duration,
    retry_max: Duration,
    posture: Option<Posture>,
    posture_interval: Duration,
}

async fn run_agent(
    server: ServerArgs,
    mqtt: String,
    how: EnrollArgs,
    run: RunOptions,
) -> Result<()> {
    let state = StateDir::new(&server.dir);
    if !state.is_enrolled() && how.token.is_some() && how.device.is_none() {
        bail!(
            "--device is needed with --token while {} holds no identity",
            state.path().display()
        );
    }
    let est = est_client(&server, &state)?;
    let mqtt = parse_endpoint(&mqtt)?;
    let heartbeat = (!run.heartbeat.is_zero()).then_some(run.heartbeat);
    let mut config = AgentConfig::new(state, est, mqtt)
        .with_heartbeat(heartbeat)
        .with_posture(run.posture)
        .with_posture_interval(Some(run.posture_interval))
        .with_retry(Duration::from_secs(1), run.retry_max);
    if let Some(how) = how.enrollment()? {
        config = config.with_enrollment(how);
    }
    let (agent, handle) = Agent::new(config);
    let mut task = tokio::spawn(agent.run());
    tokio::select! {
        result = &mut task => return result.context("the agent task failed")?.map_err(Into::into),
        () = shutdown_signal() => info!("stopping"),
    }
    handle.shutdown().await;
    task.await.context("the agent task failed")??;
    Ok(())
}

async fn report_posture(
    dir: PathBuf,
    mqtt: String,
    ca: Option<PathBuf>,
    posture: Posture,
    timeout: Duration,
    json: bool,
) -> Result<()> {
    let state = StateDir::new(dir);
    let creds = state.load()?;
    let trust = match (ca, state.load_ca()?) {
        (Some(path), _) => read_certs(&path).context("reading --ca")?,
        (None, Some(certs)) => certs,
        (None, None) => bail!("--ca is needed: {} holds no ca.crt", state.path().display()),
    };
    let endpoint = parse_endpoint(&mqtt)?;
    let sent = posture::send_once(&creds, &trust, &endpoint, &posture, timeout)
        .await
        .with_context(|| format!("reporting the posture to {mqtt}"))?;
    let info = creds.info();
    let report = String::from_utf8_lossy(&sent.signed.report);
    let signature = base64::engine::general_purpose::STANDARD.encode(&sent.signed.signature);
    if json {
        let report: serde_json::Value =
            serde_json::from_slice(&sent.signed.report).context("the report sent")?;
        let value = serde_json::json!({
            "tenant": info.tenant.as_str(),
            "device": info.device.as_str(),
            "serial": info.serial_hex,
            "topic": sent.topic,
            "report": report,
            "algorithm": sent.algorithm,
            "signature": signature,
            "envelope_bytes": sent.signed.to_envelope().len(),
        });
        println!("{value:#}");
    } else {
        println!("reported the posture of {}/{}", info.tenant, info.device);
        println!("topic:     {}", sent.topic);
        println!("report:    {report}");
        println!(
            "signed:    {} (certificate {})",
            sent.algorithm, info.serial_hex
        );
        println!("signature: {signature}");
    }
    Ok(())
}

fn status(dir: PathBuf, json: bool) -> Result<()> {
    let state = StateDir::new(dir);
    let creds = state.load()?;
    let info = creds.info();
    let now = OffsetDateTime::now_utc();
    let condition = if now >= info.not_after {
        "expired"
    } else if now >= creds.renew_at() {
        "renewal due"
    } else {
        "valid"
    };
    if json {
        let value = serde_json::json!({
            "tenant": info.tenant.as_str(),
            "device": info.device.as_str(),
            "serial": info.serial_hex,
            "not_before": rfc3339(info.not_before),
            "not_after": rfc3339(info.not_after),
            "renew_at": rfc3339(creds.renew_at()),
            "state": condition,
        });
        println!("{value:#}");
    } else {
        println!("device:     {}", info.device);
        println!("tenant:     {}", info.tenant);
        println!("serial:     {}", info.serial_hex);
        println!("not_before: {}", rfc3339(info.not_before));
        println!("not_after:  {}", rfc3339(info.not_after));
        println!("renew_at:   {}", rfc3339(creds.renew_at()));
        println!("state:      {condition}");
    }
    Ok(())
}

// === impl PostureArgs ===

impl PostureArgs {
    /// The posture these options describe, checked against the server's bounds.
    fn posture(&self) -> Result<Posture> {
        let mut posture = Posture::new();
        if let Some(version) = &self.firmware {
            posture = posture
                .with_firmware(version.as_str())
                .context("--firmware")?;
        }
        for name in &self.services {
            posture = posture.with_service(name.as_str()).context("--service")?;
        }
        if let Some(state) = self.default_credentials {
            posture = posture.with_default_credentials(match state {
                DefaultCredentials::Changed => CredentialState::Changed,
                DefaultCredentials::Unchanged => CredentialState::Unchanged,
                DefaultCredentials::NotApplicable => CredentialState::NotApplicable,
            });
        }
        Ok(posture)
    }
}

// === impl EnrollArgs ===

impl EnrollArgs {
    fn enrollment(&self) -> Result<Option<Enrollment>> {
        if let Some(token) = &self.token {
            let mut token: EnrollmentToken = token.parse()?;
            if let Some(device) = &self.device {
                token = token.for_device(device.clone());
                if let Some(tenant) = &self.tenant {
                    token = token.in_tenant(tenant.clone());
                }
            }
            return Ok(Some(Enrollment::Token(token)));
        }
        if let (Some(cert), Some(key)) = (&self.idevid, &self.idevid_key) {
            let idevid = read_idevid(cert, key).context("reading the IDevID")?;
            return Ok(Some(Enrollment::Idevid(idevid)));
        }
        Ok(None)
    }
}

/// The EST client: trusting `ca.crt` of the state directory if enrolled, else `--ca`.
fn est_client(server: &ServerArgs, state: &StateDir) -> Result<EstClient> {
    let trust = match (state.load_ca()?, &server.ca) {
        (Some(certs), _) => certs,
        (None, Some(path)) => read_certs(path).context("reading --ca")?,
        (None, None) => bail!(
            "--ca is needed: {} holds no ca.crt yet",
            state.path().display()
        ),
    };
    Ok(EstClient::new(&server.server, trust)?)
}

fn parse_endpoint(s: &str) -> Result<MqttEndpoint> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("--mqtt {s:?}: expected host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("--mqtt {s:?}: no host");
    }
    let port = port
        .parse()
        .with_context(|| format!("--mqtt {s:?}: bad port"))?;
    Ok(MqttEndpoint {
        host: host.to_owned(),
        port,
    })
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() -> Result<()> {
        assert_eq!(
            parse_endpoint("localhost:8883")?,
            MqttEndpoint {
                host: "localhost".to_owned(),
                port: 8883
            }
        );
        assert_eq!(parse_endpoint("[::1]:8883")?.host, "::1");
        assert!(parse_endpoint("localhost").is_err());
        assert!(parse_endpoint(":8883").is_err());
        assert!(parse_endpoint("h:x").is_err());
        Ok(())
    }

    #[test]
    fn posture_options_become_the_posture() -> Result<()> {
        let cli = Cli::try_parse_from([
            "gatehouse-agent",
            "posture",
            "--dir",
            "d",
            "--mqtt",
            "h:1",
            "--firmware",
            "2.4.1",
            "--service",
            "ssh",
            "--service",
            "http",
            "--default-credentials",
            "not-applicable",
        ])?;
        let Command::Posture { posture, .. } = cli.command else {
            bail!("not the posture command");
        };
        let posture = posture.posture()?;
        assert_eq!(posture.firmware(), Some("2.4.1"));
        assert_eq!(
            posture
                .services()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["http", "ssh"]
        );
        assert_eq!(
            posture.default_credentials(),
            Some(CredentialState::NotApplicable)
        );

        // `run` reports every hour by default, and its options are checked.
        let cli = Cli::try_parse_from([
            "gatehouse-agent",
            "run",
            "--server",
            "https://h",
            "--dir",
            "d",
            "--mqtt",
            "h:1",
        ])?;
        let Command::Run {
            posture,
            posture_interval,
            no_posture,
            ..
        } = cli.command
        else {
            bail!("not the run command");
        };
        assert_eq!(posture_interval, Duration::from_secs(3600));
        assert!(!no_posture);
        assert_eq!(posture.posture()?, Posture::new());
        let too_long = Cli::try_parse_from([
            "gatehouse-agent",
            "posture",
            "--dir",
            "d",
            "--mqtt",
            "h:1",
            "--firmware",
            &"9".repeat(65),
        ])?;
        let Command::Posture { posture, .. } = too_long.command else {
            bail!("not the posture command");
        };
        assert!(posture.posture().is_err());
        assert!(
            Cli::try_parse_from([
                "gatehouse-agent",
                "posture",
                "--dir",
                "d",
                "--mqtt",
                "h:1",
                "--default-credentials",
                "maybe",
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "gatehouse-agent",
                "run",
                "--server",
                "https://h",
                "--dir",
                "d",
                "--mqtt",
                "h:1",
                "--no-posture",
                "--firmware",
                "1.0",
            ])
            .is_err(),
            "--no-posture with a posture option"
        );
        Ok(())
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
