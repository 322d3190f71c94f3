//! `gatehouse demo`: the whole loop on this machine in one command. A server is started in
//! this process on a temporary data directory, with its plain MQTT listener open for
//! legacy devices; the fleet simulator enrolls a fleet against it, lets it run, turns a
//! few devices into attackers, and reports what the server detected and did.
//!
//! The REST API requires an operator's API token: before the server starts, the demo
//! creates the operator `demo` (role admin, no password) in the registry and a token for
//! it, which the fleet uses and which is printed when the server stays up.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use gatehouse_sim::fleet::cli::FleetArgs;
use gatehouse_sim::fleet::{self, Narrator, Target};
use gatehouse_store::{
    AuditEntry, NewApiToken, NewOperator, OperatorName, OperatorStore as _, Role, SqliteStore,
};
use rustls_pki_types::ServerName;
use serde_json::json;
use time::OffsetDateTime;

use crate::config::Settings;

/// The demo's fleet unless `--devices` says otherwise: big enough for every model's
/// cohort and every scenario, small enough to finish in seconds.
const DEMO_DEVICES: usize = 200;

/// The operator the demo creates for its REST calls.
const DEMO_OPERATOR: &str = "demo";

/// How long the demo's API token lives (the default of `gatehouse admin token`).
const DEMO_TOKEN_LIFETIME: time::Duration = time::Duration::days(30);

/// Options of `gatehouse demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Exit after the report (with status 1 if an attack went undetected or a benign
    /// device was quarantined) instead of keeping the server up until Ctrl-C.
    #[arg(long)]
    pub once: bool,
    /// Print the report as JSON on standard output (the narration stays on standard error).
    #[arg(long)]
    pub json: bool,
    /// Keep the server's state in this directory instead of a temporary one.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Without --once: after the report the fleet keeps running, and a new device attacks
    /// this often (the scenarios in turn); 0s for none.
    #[arg(long, default_value = "3m", value_parser = gatehouse_sim::bench::parse_duration)]
    pub attack_every: std::time::Duration,
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// The demo server's configuration: every listener on a free loopback port, a plain MQTT
/// listener with one legacy user (whose password nobody knows) for the brute force to
/// hammer, and bans allowed on every loopback address but 127.0.0.0/24, where the benign
/// devices live (the attackers come from 127.0.1.x).
fn config_toml(data_dir: &Path, devices: usize) -> anyhow::Result<String> {
    let mut secret = [0u8; 24];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let hash = crate::auth::hash_password(&secret)?;
    Ok(format!(
        r#"# Written by gatehouse demo.
data_dir = {data_dir:?}

[listeners]
mqtts = "127.0.0.1:0"
https = "127.0.0.1:0"
mqtt = "127.0.0.1:0"

[limits]
max_connections = {max_connections}

[[legacy.users]]
username = "meter-legacy-1"
password_hash = "{hash}"

[respond]
never_ban = ["127.0.0.0/24", "::1"]

[log]
level = "info"
"#,
        data_dir = data_dir.display().to_string(),
        max_connections = (devices + 1000).max(100_000),
    ))
}

/// Creates the operator [`DEMO_OPERATOR`] (role admin, no password: it uses API tokens
/// only) in the registry of `settings` unless it exists (a kept `--data-dir`), and a new
/// API token for it; returns the token's text. Run before the server starts, so that the
/// server's first start finds an operator and creates no `admin` with a password.
fn demo_api_token(settings: &Settings) -> anyhow::Result<String> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating {}", settings.data_dir.display()))?;
    let path = settings.db_path();
    let store = SqliteStore::open(&path)
        .with_context(|| format!("opening the registry {}", path.display()))?;
    let name = OperatorName::new(DEMO_OPERATOR).context("the demo's operator name")?;
    let entry = |action: &str| {
        AuditEntry::new(OffsetDateTime::now_utc(), "system", action, DEMO_OPERATOR)
            .reason("gatehouse demo")
    };
    let operator = match store.get_operator(&name)? {
        Some(o) if o.disabled => bail!(
            "the operator {DEMO_OPERATOR} in {} is disabled: enable it with `gatehouse \
             admin enable {DEMO_OPERATOR}`, or use another --data-dir",
            path.display()
        ),
        Some(o) => o,
        None => store
            .create_operator(
                &NewOperator {
                    name: name.clone(),
                    role: Role::Admin,
                    tenant: None,
                    password_hash: None,
                },
                &entry("create_operator").detail(json!({ "role": Role::Admin })),
            )
            .with_context(|| format!("creating the operator {DEMO_OPERATOR}"))?,
    };
    let permissions = operator.role.permissions().to_vec();
    let audit = entry("create_api_token");
    let expires_at = audit.at + DEMO_TOKEN_LIFETIME;
    let audit = audit.detail(json!({
        "permissions": permissions,
        "expires_at": expires_at.unix_timestamp(),
    }));
    let (_, text) = store
        .create_api_token(
            &NewApiToken {
                operator: name,
                label: "gatehouse demo".to_owned(),
                permissions,
                expires_at,
            },
            &audit,
        )
        .with_context(|| format!("creating an API token for {DEMO_OPERATOR}"))?;
    Ok(text.expose().to_owned())
}

/// Gives the operator [`DEMO_OPERATOR`] a new generated password for the dashboard;
/// returns it.
fn demo_password(settings: &Settings) -> anyhow::Result<String> {
    let path = settings.db_path();
    let store = SqliteStore::open(&path)
        .with_context(|| format!("opening the registry {}", path.display()))?;
    let password =
        gatehouse_api::auth::random_password().map_err(|p| anyhow::anyhow!(p.message))?;
    let hash =
        gatehouse_api::auth::hash_password(&password).map_err(|p| anyhow::anyhow!(p.message))?;
    let name = OperatorName::new(DEMO_OPERATOR).context("the demo's operator name")?;
    store
        .set_password(
            &name,
            &hash,
            &AuditEntry::new(
                OffsetDateTime::now_utc(),
                "system",
                "set_password",
                DEMO_OPERATOR,
            )
            .reason("gatehouse demo: the dashboard's login"),
        )
        .with_context(|| format!("setting the password of {DEMO_OPERATOR}"))?;
    Ok(password)
}

/// `3m`, `90s`, `1h` for a duration.
fn humantime(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{} h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

/// Server logs go to a file in the demo's directory, not over the narration.
fn init_file_logging(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("creating the log file {}", path.display()))?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .init();
    Ok(())
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let temp;
    let dir = match &args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("gatehouse-demo-")
                .tempdir()
                .context("creating a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    // The server and the fleet share this process: two open files per device.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let (nofile, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((0, 0));
    let needed = 2 * args.fleet.devices_or(DEMO_DEVICES) as u64 + 512;
    if !args.fleet.enroll_only && nofile > 0 && nofile < needed {
        bail!(
            "a demo of {} devices needs about {needed} open files in this process (the server's \
             side and the device's side of each connection) but may open {nofile}: run fewer \
             devices, or `gatehouse serve` and `gatehouse sim` as two processes",
            args.fleet.devices_or(DEMO_DEVICES)
        );
    }
    let narrator = Narrator::stderr();
    let log = dir.join("gatehouse.log");
    init_file_logging(&log)?;
    let config = dir.join("gatehouse.toml");
    std::fs::write(
        &config,
        config_toml(&dir.join("data"), args.fleet.devices_or(DEMO_DEVICES))?,
    )
    .with_context(|| format!("writing {}", config.display()))?;
    let settings = Settings::load(Some(&config))?;
    let api_token = demo_api_token(&settings)?;
    // Kept running, the server is there to be looked at: the dashboard needs a password.
    let password = if args.once {
        None
    } else {
        Some(demo_password(&settings)?)
    };
    narrator.say(format!(
        "gatehouse demo: starting a server in {} (logs: {})",
        dir.display(),
        log.display()
    ));
    let server = crate::serve::start(settings).await?;
    narrator.say(format!(
        "server up: MQTTS {}, HTTPS {}, legacy MQTT {}",
        server.mqtts,
        server.https,
        server
            .mqtt
            .map_or_else(|| "off".to_owned(), |a| a.to_string())
    ));
    let pem = std::fs::read_to_string(&server.ca_file)
        .with_context(|| format!("reading {}", server.ca_file.display()))?;
    let target = Target {
        https: server.https,
        mqtts: server.mqtts,
        legacy: server.mqtt,
        server_name: ServerName::try_from("localhost")
            .context("server name")?
            .to_owned(),
        anchors: gatehouse_pki::load_certs_pem(&pem)?,
        api_token: Some(api_token.clone()),
    };
    let opts = args.fleet.options(true, String::new(), DEMO_DEVICES)?;
    let outcome = tokio::select! {
        r = async {
            if args.once {
                fleet::run(target, opts, &narrator).await.map(|r| (r, None))
            } else {
                fleet::run_and_keep(target, opts, &narrator).await
            }
        } => r,
        () = crate::serve::wait_for_signal() => Err(anyhow::anyhow!("interrupted")),
    };
    let (report, running) = match outcome {
        Ok(r) => r,
        Err(e) => {
            let _ = server.shutdown().await;
            return Err(e);
        }
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(out, "\n{}", report.to_text())?;
    }
    drop(out);
    if !args.once {
        let fleet_line = match &running {
            Some(r) if args.attack_every.is_zero() => format!(
                "The simulated fleet keeps running ({} sessions): benign telemetry and the \
                 console's commands, no further attacks.",
                r.sessions()
            ),
            Some(r) => format!(
                "The simulated fleet keeps running ({} sessions): benign telemetry and the \
                 console's commands, and every {} a new device attacks (reported here).",
                r.sessions(),
                humantime(args.attack_every)
            ),
            None => "The fleet was only enrolled: no sessions.".to_owned(),
        };
        narrator.say(format!(
            "\n{fleet_line}\nThe server keeps running with the fleet's state: REST API https://localhost:{port}/api/v1/incidents \
             (trust {ca}), MQTTS localhost:{mqtts}. Ctrl-C stops it.\n\
             The API takes the operator {DEMO_OPERATOR}'s token:\n\
             \n    curl --cacert {ca} -H \"Authorization: Bearer {api_token}\" \\\n        https://localhost:{port}/api/v1/incidents\n\n\
             Dashboard: https://localhost:{port}/ui/ (the certificate is from the demo's own CA, {ca}) \
             — log in as {DEMO_OPERATOR} with the password {password}\n",
            password = password.as_deref().unwrap_or("-"),
            port = server.https.port(),
            ca = server.ca_file.display(),
            mqtts = server.mqtts.port(),
        ));
        match running {
            Some(r) => {
                let every = if args.attack_every.is_zero() {
                    // No attacks: sleep for as long as anyone will watch.
                    std::time::Duration::from_secs(u64::from(u32::MAX))
                } else {
                    args.attack_every
                };
                r.keep_on(crate::serve::wait_for_signal(), every, &narrator)
                    .await;
            }
            None => crate::serve::wait_for_signal().await,
        }
        narrator.say("stopping: the fleet disconnects, then the server shuts down");
        server.shutdown().await?;
        // Stopped by the operator: the report above was the run's verdict.
        return Ok(());
    }
    server.shutdown().await?;
    if !report.passed {
        bail!("the demo failed: {}", report.failures.join("; "));
    }
    Ok(())
}
