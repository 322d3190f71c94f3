//! `gatehouse sim`: the fleet against a running server.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rustls_pki_types::ServerName;

use super::{FleetOptions, FleetReport, Narrator, Scenario, Target, loopback_range, report};
use crate::bench::parse_duration;

/// The default place of the Mirai credential list (the shared data beside a checkout).
pub const SHARED_CREDENTIALS: &str = "../shared/data/credentials/mirai-default-credentials.csv";

/// How long each check of the server's listeners before a run may take.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of `gatehouse sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// The server's HTTPS URL (EST enrollment and the REST API).
    #[arg(long)]
    pub server: String,
    /// The MQTTS listener, host:port (default: the server's host, port 8883).
    #[arg(long)]
    pub mqtt: Option<String>,
    /// The server's plain MQTT listener for legacy devices, host:port: the brute force
    /// guesses passwords there (without it that scenario cannot run).
    #[arg(long)]
    pub legacy: Option<String>,
    /// The CA bundle that anchors the server's certificates (`gatehouse ca path`).
    #[arg(long)]
    pub ca: PathBuf,
    /// An API token of an admin operator (`gha_…`), for the REST API: create one on the
    /// server's host with `gatehouse admin token NAME`.
    #[arg(long, env = "GATEHOUSE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Print the report as JSON on standard output.
    #[arg(long)]
    pub json: bool,
}

/// What the fleet is and does (shared by `gatehouse sim` and `gatehouse demo`).
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// Field devices (the operations console comes on top) [default: 1000; demo: 200].
    #[arg(long)]
    pub devices: Option<usize>,
    /// Share of the devices that is compromised (at least one per scenario, at most half).
    #[arg(long, default_value_t = 0.02)]
    pub compromised: f64,
    /// Attack scenarios to run (repeatable; default: all of them): brute-force,
    /// publish-flood, topic-scanning, wildcard-harvesting, exfiltration, spoofed-readings,
    /// vulnerable-firmware, cloned-certificate.
    #[arg(long = "scenario", value_parser = parse_scenario)]
    pub scenarios: Vec<Scenario>,
    /// Normal traffic before the attacks.
    #[arg(long, default_value = "6s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Longest an attack goes on without enforcement.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub attack_for: Duration,
    /// Mixed traffic after the attacks, for a load run.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Enrollments and connections in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Loopback source addresses for benign devices (127.0.0.1 up), when the server is on
    /// this machine: spreads the ephemeral ports and the per-address connect limit.
    /// Default: one per 2,000 devices, at least 8.
    #[arg(long)]
    pub source_addrs: Option<usize>,
    /// Commands the operations console sends a second.
    #[arg(long, default_value_t = 5.0)]
    pub commands_per_sec: f64,
    /// Credentials the brute force tries, `username,password` CSV (default: the Mirai
    /// list in the shared data when present, a built-in list otherwise).
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// Enroll the fleet over EST and stop there: the enrollment storm of a load run
    /// (no sessions, so no open-file limit on the fleet's size).
    #[arg(long)]
    pub enroll_only: bool,
    /// Tenant that claims the fleet.
    #[arg(long, default_value = "sim")]
    pub tenant: String,
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    Scenario::parse(s).ok_or_else(|| {
        format!(
            "unknown scenario {s:?}; one of {}",
            report::ALL
                .iter()
                .map(|s| s.name().replace('_', "-"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

impl FleetArgs {
    /// Field devices asked for, or `default`.
    pub fn devices_or(&self, default: usize) -> usize {
        self.devices.unwrap_or(default)
    }

    /// The fleet options for a server reached over loopback (`loopback`) or not, with
    /// `default_devices` unless `--devices` was given.
    pub fn options(
        &self,
        loopback: bool,
        run_id: String,
        default_devices: usize,
    ) -> anyhow::Result<FleetOptions> {
        let devices = self.devices_or(default_devices);
        if !(0.0..=0.5).contains(&self.compromised) {
            bail!("--compromised is a share between 0 and 0.5");
        }
        if devices == 0 || devices > 1_000_000 {
            bail!("--devices must be between 1 and 1,000,000");
        }
        let credentials = self.credentials.clone().or_else(|| {
            let p = PathBuf::from(SHARED_CREDENTIALS);
            p.exists().then_some(p)
        });
        let sources = self
            .source_addrs
            .unwrap_or_else(|| (devices / 2000 + 1).max(8));
        Ok(FleetOptions {
            devices,
            compromised: self.compromised,
            scenarios: if self.scenarios.is_empty() {
                report::ALL.to_vec()
            } else {
                self.scenarios.clone()
            },
            tenant: self.tenant.clone(),
            run_id,
            warmup: self.warmup,
            attack_for: self.attack_for,
            duration: self.duration,
            concurrency: self.concurrency.max(1),
            source_addrs: if loopback {
                loopback_range(0, sources)
            } else {
                Vec::new()
            },
            // Attackers from 127.0.1.x, so that a ban of one never reaches a benign device.
            attacker_addrs: if loopback {
                loopback_range(1, 254)
            } else {
                Vec::new()
            },
            commands_per_sec: self.commands_per_sec,
            credentials,
            enroll_only: self.enroll_only,
            ..FleetOptions::default()
        })
    }
}

async fn resolve(host_port: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(host_port)
        .await
        .with_context(|| format!("resolving {host_port}"))?
        .min_by_key(|a| u8::from(!a.is_ipv4()))
        .with_context(|| format!("{host_port} resolves to no address"))
}

/// Splits `https://host:port[/…]` into host and port.
fn host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url
        .strip_prefix("https://")
        .context("--server must be an https:// URL")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, port) = v6.split_once(']').context("bad IPv6 address in --server")?;
        let port = port.strip_prefix(':').unwrap_or("8443");
        return Ok((
            host.to_owned(),
            port.parse().context("bad port in --server")?,
        ));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Ok((h.to_owned(), p.parse().context("bad port in --server")?)),
        None => Ok((authority.to_owned(), 443)),
    }
}

/// The API token as given: surrounding whitespace and a copied `Bearer ` prefix dropped;
/// `None` when empty.
fn api_token(given: Option<&str>) -> anyhow::Result<Option<String>> {
    let Some(token) = given.map(str::trim) else {
        return Ok(None);
    };
    let token = token.strip_prefix("Bearer ").map_or(token, str::trim_start);
    if token.is_empty() {
        return Ok(None);
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!(
            "--token (or GATEHOUSE_TOKEN) is not an API token: it has spaces or characters \
             outside printable ASCII (expected gha_<id>_<secret> from `gatehouse admin token`)"
        );
    }
    Ok(Some(token.to_owned()))
}

/// A short random run id.
fn run_id() -> String {
    let mut b = [0u8; 3];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs `gatehouse sim`.
pub async fn run(args: SimArgs) -> anyhow::Result<FleetReport> {
    let (host, port) = host_port(&args.server)?;
    let api_token = api_token(args.token.as_deref())?;
    let https = resolve(&format!("{host}:{port}")).await?;
    let mqtts = resolve(args.mqtt.as_deref().unwrap_or(&format!("{host}:8883"))).await?;
    let legacy = match &args.legacy {
        Some(l) => Some(resolve(l).await?),
        None => None,
    };
    let pem = std::fs::read_to_string(&args.ca)
        .with_context(|| format!("reading {}", args.ca.display()))?;
    let anchors = gatehouse_pki::load_certs_pem(&pem)?;
    let server_name = match host.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host.clone()).context("the server's host name")?,
    };
    let target = Target {
        https,
        mqtts,
        legacy,
        server_name,
        anchors,
        api_token,
    };
    let loopback = mqtts.ip().is_loopback();
    let opts = args.fleet.options(loopback, run_id(), 1000)?;
    let narrator = Narrator::stderr();
    if target.api_token.is_none() {
        narrator.say(
            "no --token (or GATEHOUSE_TOKEN): the server's REST API will refuse the \
             simulator; create a token with `gatehouse admin token NAME`",
        );
    }
    if !loopback {
        narrator.say(
            "the server is not on this machine: attackers connect from this host's address, \
             so a ban of one reaches every simulated device",
        );
    }
    super::server::preflight(&target, PREFLIGHT_TIMEOUT).await?;
    let report = super::run(target, opts, &narrator).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_split_into_host_and_port() {
        assert_eq!(
            host_port("https://localhost:8443").expect("ok"),
            ("localhost".into(), 8443)
        );
        assert_eq!(
            host_port("https://gw.example/api").expect("ok"),
            ("gw.example".into(), 443)
        );
        assert_eq!(
            host_port("https://[::1]:9443").expect("ok"),
            ("::1".into(), 9443)
        );
        assert!(host_port("http://x:1").is_err());
    }

    #[test]
    fn api_tokens_are_trimmed_and_checked() {
        assert_eq!(api_token(None).expect("ok"), None);
        assert_eq!(api_token(Some("  ")).expect("ok"), None);
        assert_eq!(
            api_token(Some(" gha_at-1_s3cret\n"))
                .expect("ok")
                .as_deref(),
            Some("gha_at-1_s3cret")
        );
        assert_eq!(
            api_token(Some("Bearer gha_at-1_s3cret"))
                .expect("ok")
                .as_deref(),
            Some("gha_at-1_s3cret")
        );
        assert!(api_token(Some("gha_at 1_s3cret")).is_err());
        assert!(api_token(Some("gha_at-1_s3crét")).is_err());
    }

    #[test]
    fn the_token_comes_from_the_option_or_the_environment() {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(flatten)]
            sim: SimArgs,
        }
        let cli = Cli::try_parse_from([
            "sim",
            "--server",
            "https://localhost:8443",
            "--ca",
            "ca.crt",
            "--token",
            "gha_at-1_s3cret",
        ])
        .expect("parses");
        assert_eq!(cli.sim.token.as_deref(), Some("gha_at-1_s3cret"));
        let arg = <Cli as clap::CommandFactory>::command()
            .get_arguments()
            .find(|a| a.get_id() == "token")
            .map(|a| a.get_env().map(|e| e.to_os_string()));
        assert_eq!(arg, Some(Some("GATEHOUSE_TOKEN".into())));
    }
}
