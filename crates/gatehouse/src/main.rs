//! `gatehouse`: the binary. Command line, configuration and wiring; no domain logic.

mod auth;
mod config;
mod demo;
mod https;
mod output;
mod registry_cli;
mod replay;
mod sbom;
mod serve;

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gatehouse_types::{DeviceId, TenantId};

use crate::config::{DataDirArg, LogFormat, Settings};

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

/// `gatehouse serve`: the data directory and the listening addresses, over the
/// configuration's.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    dir: DataDirArg,
    /// Listen for MQTTS here instead of the configuration's `listeners.mqtts`
    /// (`0.0.0.0:8883`); port 0 picks a free port.
    #[arg(long, env = "GATEHOUSE_MQTTS", value_name = "ADDR")]
    mqtts: Option<std::net::SocketAddr>,
    /// Listen for HTTPS here instead of the configuration's `listeners.https`
    /// (`0.0.0.0:8443`); port 0 picks a free port.
    #[arg(long, env = "GATEHOUSE_HTTPS", value_name = "ADDR")]
    https: Option<std::net::SocketAddr>,
}

// === impl ServeArgs ===

impl ServeArgs {
    /// `settings` with this data directory and these listeners, where given.
    fn apply(&self, settings: Settings) -> Settings {
        let mut settings = self.dir.apply(settings);
        if let Some(a) = self.mqtts {
            settings.mqtts = a;
        }
        if let Some(a) = self.https {
            settings.https = a;
        }
        settings
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a data directory: the local CA and the registry (with the `default` tenant).
    /// Every other command but `serve` expects one to exist.
    Init(DataDirArg),
    /// Run the server: MQTTS (mutual TLS) and HTTPS. The data directory, its CA and its
    /// registry are created on first start.
    Serve(ServeArgs),
    /// The local certificate authority.
    Ca {
        #[command(flatten)]
        dir: DataDirArg,
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Check or print the configuration.
    Config {
        #[command(flatten)]
        dir: DataDirArg,
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
    /// Model profiles from recorded traffic.
    Profile {
        #[command(subcommand)]
        command: replay::ProfileCommand,
    },
    /// Software bills of materials (CycloneDX and SPDX JSON).
    Sbom {
        #[command(subcommand)]
        command: sbom::SbomCommand,
    },
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
    /// Validate the configuration file and the files it names, and summarise it.
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
    // Colour only for a terminal: a log redirected to a file or a journal stays plain.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader of our output has gone (`gatehouse … | head`): nothing to say.
        Err(e) if output::is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config.as_deref();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Example,
            ..
        } => Ok(output::print(config::EXAMPLE)?),
        Command::Config {
            dir,
            command: ConfigCommand::Check,
        } => {
            let s = dir.apply(Settings::load(config)?);
            output::print(&config::check(&s, config)?)?;
            Ok(())
        }
        Command::Passwd => {
            let mut pw = String::new();
            std::io::stdin()
                .read_to_string(&mut pw)
                .context("reading the password from standard input")?;
            let pw = pw.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!pw.is_empty(), "empty password");
            output::println(&auth::hash_password(pw.as_bytes())?)?;
            Ok(())
        }
        Command::Init(dir) => init(&dir.apply(Settings::load(config)?)),
        Command::Ca { dir, command } => {
            let settings = dir.apply(Settings::load(config)?);
            settings.require_data_dir(false)?;
            if let CaCommand::Path = command {
                output::println(&settings.ca_dir().join("ca.crt").display().to_string())?;
                return Ok(());
            }
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
                    output::println(&format!(
                        "issued gatehouse://{tenant}/device/{device} (serial {}, valid until {})\n  key:  {}\n  cert: {}\n  ca:   {}",
                        cert.serial_hex,
                        registry_cli::fmt_time(cert.not_after),
                        files.key.display(),
                        files.cert.display(),
                        files.ca.display()
                    ))?;
                }
                CaCommand::Path => {}
                CaCommand::Roll => {
                    let before = ca.active_issuer_name().to_owned();
                    ca.roll_issuing_ca().context("rolling the issuing CA")?;
                    output::println(&format!(
                        "rolled the issuing CA: {} now issues; {before} and its certificates stay trusted until they expire.",
                        ca.active_issuer_name()
                    ))?;
                    eprintln!("Restart `gatehouse serve` to issue from it.");
                }
            }
            Ok(())
        }
        Command::Serve(args) => {
            let settings = args.apply(Settings::load(config)?);
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
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        Command::Registry(command) => registry_cli::run(command, config),
        Command::Replay(args) => replay::run(args),
        Command::Profile { command } => replay::profile(command),
        Command::Sbom { command } => sbom::run(command),
        Command::Bench(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "warn".into()),
                )
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr)
                .init();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(gatehouse_sim::run(args))
        }
    }
}

/// `gatehouse init`: creates the data directory (0700), its CA and its registry, and says
/// where they are. Run again, it changes nothing and says so.
fn init(settings: &Settings) -> anyhow::Result<()> {
    let existed = settings.db_path().is_file();
    config::create_private_dir(&settings.data_dir)
        .with_context(|| format!("creating {}", settings.data_dir.display()))?;
    settings.open_ca()?;
    serve::open_registry(settings)?;
    let dir = config::shown_path(&settings.data_dir);
    let head = if existed {
        format!("{dir} is already a data directory; nothing changed")
    } else {
        format!("created the data directory {dir}")
    };
    output::println(&format!(
        "{head}\n  registry: {}\n  ca:       {} (the certificate clients trust)",
        config::shown_path(&settings.db_path()),
        config::shown_path(&settings.ca_dir().join("ca.crt")),
    ))?;
    if !existed {
        eprintln!(
            "Next: `gatehouse serve`; its first start creates the operator `admin` and prints its password once."
        );
    }
    Ok(())
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
