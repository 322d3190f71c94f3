//! `gatehouse-agent`: enroll a device, run it, show its identity.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
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
    /// Run: enroll if needed, connect over MQTTS, publish heartbeats, renew on time.
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
        } => run_agent(server, mqtt, how, heartbeat, retry_max).await,
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

async fn run_agent(
    server: ServerArgs,
    mqtt: String,
    how: EnrollArgs,
    heartbeat: Duration,
    retry_max: Duration,
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
    let heartbeat = (!heartbeat.is_zero()).then_some(heartbeat);
    let mut config = AgentConfig::new(state, est, mqtt)
        .with_heartbeat(heartbeat)
        .with_retry(Duration::from_secs(1), retry_max);
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
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
