//! `gatehouse`: the binary. Command line, configuration and wiring; no domain logic.

mod auth;
mod config;
mod demo;
mod https;
mod registry_cli;
mod replay;
mod serve;

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gatehouse_types::{DeviceId, TenantId};

use crate::config::{LogFormat, Settings};

/// Gatehouse: enrol, scan, score and gate IoT devices on one MQTT data plane.
#[derive(Debug, Parser)]
#[command(name = "gatehouse", version, about)]
struct Cli {
    /// Configuration file (TOML). Without one, safe defaults apply; see `gatehouse config example`.
    #[arg(long, short, global = true, env = "GATEHOUSE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: MQTTS (mutual TLS) and HTTPS, with a local CA created on first start.
    Serve,
    /// The local certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Check or print the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Hash a legacy-listener password read from standard input, for `legacy.users`.
    Passwd,
    /// The whole loop on this machine: a server in a temporary directory, a simulated
    /// fleet that enrolls, runs and attacks, and a report of what was detected and done.
    Demo(demo::DemoArgs),
    /// Run the fleet simulator against a running server.
    Sim(gatehouse_sim::fleet::cli::SimArgs),
    /// Benchmark Gatehouse against Mosquitto on this machine.
    Bench(gatehouse_sim::BenchArgs),
    /// Score the detectors on recorded, labelled traffic (pcap/pcapng captures, telemetry CSV).
    Replay(replay::ReplayArgs),
    #[command(flatten)]
    Registry(registry_cli::RegistryCommand),
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Issue a device certificate: writes <device>.key (0600), <device>.crt and ca.crt.
    Issue {
        /// Device id (becomes the certificate's identity and the MQTT client id).
        #[arg(long)]
        device: DeviceId,
        /// Tenant.
        #[arg(long, default_value = "default")]
        tenant: TenantId,
        /// Validity, e.g. 30days, 1year.
        #[arg(long, default_value = "365days", value_parser = humantime_duration)]
        validity: Duration,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the path of the CA certificate that clients must trust.
    Path,
    /// Roll in a new issuing CA under the same root; certificates from the old one stay
    /// valid until they expire.
    Roll,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the configuration file and print the effective settings.
    Check,
    /// Print a documented configuration file with every option at its default.
    Example,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(s).map_err(|e| e.to_string())
}

fn init_logging(settings: &Settings) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(settings.log_level.clone()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Example,
        } => {
            print!("{}", config::EXAMPLE);
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            let s = Settings::load(cli.config.as_deref())?;
            println!("configuration is valid\n{s:#?}");
            Ok(())
        }
        Command::Passwd => {
            let mut pw = String::new();
            std::io::stdin()
                .read_to_string(&mut pw)
                .context("reading the password from standard input")?;
            let pw = pw.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!pw.is_empty(), "empty password");
            println!("{}", auth::hash_password(pw.as_bytes())?);
            Ok(())
        }
        Command::Ca { command } => {
            let settings = Settings::load(cli.config.as_deref())?;
            let mut ca = settings.open_ca()?;
            match command {
                CaCommand::Issue {
                    device,
                    tenant,
                    validity,
                    out,
                } => {
                    let cert = ca.issue_device(&tenant, &device, validity)?;
                    std::fs::create_dir_all(&out)
                        .with_context(|| format!("creating {}", out.display()))?;
                    let files = cert
                        .write_to(&out, device.as_str())
                        .with_context(|| format!("writing to {}", out.display()))?;
                    println!(
                        "issued gatehouse://{tenant}/device/{device} (serial {}, valid until {})\n  key:  {}\n  cert: {}\n  ca:   {}",
                        cert.serial_hex,
                        cert.not_after,
                        files.key.display(),
                        files.cert.display(),
                        files.ca.display()
                    );
                }
                CaCommand::Path => println!("{}", settings.ca_dir().join("ca.crt").display()),
                CaCommand::Roll => {
                    let before = ca.active_issuer_name().to_owned();
                    ca.roll_issuing_ca().context("rolling the issuing CA")?;
                    println!(
                        "rolled the issuing CA: {} now issues; {before} and its certificates stay trusted until they expire.\nRestart `gatehouse serve` to issue from it.",
                        ca.active_issuer_name()
                    );
                }
            }
            Ok(())
        }
        Command::Serve => {
            let settings = Settings::load(cli.config.as_deref())?;
            init_logging(&settings);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("gatehouse")
                .build()?;
            rt.block_on(serve::run(settings))
        }
        Command::Demo(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("gatehouse")
                .build()?;
            rt.block_on(demo::run(args))
        }
        Command::Sim(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "warn".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(gatehouse_sim::fleet::cli::run(args))?;
            if !report.passed {
                anyhow::bail!("the simulation failed: {}", report.failures.join("; "));
            }
            Ok(())
        }
        Command::Registry(command) => registry_cli::run(command, cli.config.as_deref()),
        Command::Replay(args) => replay::run(args),
        Command::Bench(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "warn".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(gatehouse_sim::run(args))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand's arguments are consistent: no flag is claimed twice (a global
    /// option shadowing a subcommand's own, say), which clap would otherwise report only
    /// when that subcommand is first run.
    #[test]
    fn command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
