//! The registry commands: `tenant`, `manufacturer`, `model`, `claim`, `device`, `token`,
//! `policy` and `audit`. They open the registry file directly (a running server polls the
//! store and picks the changes up), and every change goes in with the audit record that
//! names the operator, in one transaction.
//!
//! Each command prints text for people, or JSON with `--json`. A failure is one line on
//! standard error and exit status 1.

mod admin;
mod audit;
mod claim;
mod device;
mod incident;
mod manufacturer;
mod model;
mod policy;
mod remote;
mod tenant;
mod token;

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use gatehouse_store::{AuditEntry, Registry, SqliteStore};
use gatehouse_types::TenantId;
use serde::Serialize;
use time::OffsetDateTime;

use crate::config::Settings;

/// The registry's command groups, flattened into the top-level command line.
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Tenants: the organisations that own fleets.
    Tenant(Group<tenant::Command>),
    /// Manufacturers and the IDevID CAs that vouch for their devices.
    Manufacturer(Group<manufacturer::Command>),
    /// Device models.
    Model(Group<model::Command>),
    /// Claims: the serial numbers a tenant owns and may enroll.
    Claim(Group<claim::Command>),
    /// Registered devices: list, show (with their trust), revoke, pin.
    Device(Group<device::Command>),
    /// Enrollment tokens for devices without a manufacturer identity.
    Token(Group<token::Command>),
    /// The trust policy set (Cedar): show, validate, set, reset, history.
    Policy(Group<policy::Command>),
    /// The hash-chained audit log.
    Audit(Group<audit::Command>),
    /// Incidents from detection, their timelines, and the operator's side of response:
    /// acknowledge, resolve, approve, reject, release, unban.
    Incident(Group<incident::Command>),
    /// Operators (dashboard and API logins) and their API tokens.
    Admin(Group<admin::Command>),
}

pub use admin::first_admin;

/// One command group with the options every registry command takes.
#[derive(Debug, Args)]
pub struct Group<C: Subcommand> {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: C,
}

/// Options shared by every registry command.
#[derive(Debug, Args)]
struct Common {
    #[command(flatten)]
    data_dir: crate::config::DataDirArg,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Who the audit log names for changes (default: operator:$USER). Local only: a
    /// remote server names the token's operator.
    #[arg(long, global = true, value_name = "WHO")]
    actor: Option<String>,
    /// Talk to this server's REST API (`https://host:8443`) instead of opening the local
    /// data directory.
    #[arg(long, global = true, env = "GATEHOUSE_SERVER", value_name = "URL")]
    server: Option<String>,
    /// The operator's API token for --server (`gatehouse admin token NAME` prints one).
    #[arg(
        long,
        global = true,
        env = "GATEHOUSE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    /// The CA bundle that signs the server's certificate, for --server (default: the local
    /// data directory's ca/ca.crt).
    #[arg(
        long = "server-ca",
        global = true,
        env = "GATEHOUSE_CA",
        value_name = "FILE"
    )]
    ca: Option<std::path::PathBuf>,
}

impl Common {
    /// The remote server to use, if --server was given.
    fn remote(&self, settings: &Settings) -> Result<Option<remote::Remote>> {
        let Some(server) = &self.server else {
            return Ok(None);
        };
        let token = self.token.clone().context(
            "--server needs an API token: --token or GATEHOUSE_TOKEN \
             (create one on the server's host with `gatehouse admin token NAME`)",
        )?;
        anyhow::ensure!(
            self.actor.is_none(),
            "--actor is for local commands; a remote server audits the token's operator"
        );
        Ok(Some(remote::Remote {
            server: server.clone(),
            token: token.trim().to_owned(),
            ca: self
                .ca
                .clone()
                .unwrap_or_else(|| settings.ca_dir().join("ca.crt")),
            json: self.json,
        }))
    }
}

/// Runs a registry command. Errors are printed as one line and end the process with
/// status 1.
pub fn run(command: RegistryCommand, config: Option<&Path>) -> Result<()> {
    if let Err(e) = dispatch(command, config) {
        if crate::output::is_broken_pipe(&e) {
            return Ok(());
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

fn dispatch(command: RegistryCommand, config: Option<&Path>) -> Result<()> {
    let settings = common_of(&command).data_dir.apply(Settings::load(config)?);
    if let Some(remote) = common_of(&command).remote(&settings)? {
        return remote::run(command, &remote);
    }
    macro_rules! go {
        ($group:expr, $run:path) => {{
            let ctx = Ctx::open(&settings, $group.common)?;
            $run(&ctx, $group.command)
        }};
    }
    match command {
        RegistryCommand::Tenant(g) => go!(g, tenant::run),
        RegistryCommand::Manufacturer(g) => go!(g, manufacturer::run),
        RegistryCommand::Model(g) => go!(g, model::run),
        RegistryCommand::Claim(g) => go!(g, claim::run),
        RegistryCommand::Device(g) => go!(g, device::run),
        RegistryCommand::Token(g) => go!(g, token::run),
        RegistryCommand::Policy(g) => go!(g, policy::run),
        RegistryCommand::Audit(g) => go!(g, audit::run),
        RegistryCommand::Incident(g) => go!(g, incident::run),
        RegistryCommand::Admin(g) => go!(g, admin::run),
    }
}

fn common_of(command: &RegistryCommand) -> &Common {
    match command {
        RegistryCommand::Tenant(g) => &g.common,
        RegistryCommand::Manufacturer(g) => &g.common,
        RegistryCommand::Model(g) => &g.common,
        RegistryCommand::Claim(g) => &g.common,
        RegistryCommand::Device(g) => &g.common,
        RegistryCommand::Token(g) => &g.common,
        RegistryCommand::Policy(g) => &g.common,
        RegistryCommand::Audit(g) => &g.common,
        RegistryCommand::Incident(g) => &g.common,
        RegistryCommand::Admin(g) => &g.common,
    }
}

/// What every handler works with: the open registry, the output mode, the actor and the
/// trust settings devices are scored with.
struct Ctx {
    store: SqliteStore,
    json: bool,
    actor: String,
    trust: gatehouse_runtime::TrustSettings,
}

// === impl Ctx ===

impl Ctx {
    fn open(settings: &Settings, common: Common) -> Result<Self> {
        let actor = match common.actor {
            Some(a) => actor_from_flag(&a)?,
            None => default_actor(std::env::var("USER").ok().as_deref()),
        };
        settings.require_data_dir(true)?;
        let path = settings.db_path();
        let store = SqliteStore::open(&path)
            .with_context(|| format!("opening the registry {}", path.display()))?;
        Ok(Self {
            store,
            json: common.json,
            actor,
            trust: settings.trust_service_settings(),
        })
    }

    /// An audit entry by this operator, now.
    fn entry(&self, action: &str, subject: impl Into<String>) -> AuditEntry {
        AuditEntry::new(OffsetDateTime::now_utc(), &self.actor, action, subject)
    }

    /// Prints `value` as JSON in JSON mode, `text()` otherwise.
    fn print<T: Serialize>(&self, value: &T, text: impl FnOnce() -> String) -> Result<()> {
        if self.json {
            crate::output::print_json(value)
        } else {
            Ok(crate::output::println(&text())?)
        }
    }

    /// Prints a listing: a JSON array of `items` in JSON mode; otherwise `text()`, or,
    /// when there is nothing to list, `empty` on standard error (so that standard output
    /// holds rows only).
    fn list<T: Serialize>(
        &self,
        items: &[T],
        empty: &str,
        text: impl FnOnce() -> String,
    ) -> Result<()> {
        if self.json {
            crate::output::print_json(items)
        } else if items.is_empty() {
            eprintln!("{empty}");
            Ok(())
        } else {
            Ok(crate::output::println(&text())?)
        }
    }

    /// Fails with a hint when the tenant does not exist.
    fn require_tenant(&self, tenant: &TenantId) -> Result<()> {
        if self.store.get_tenant(tenant)?.is_none() {
            anyhow::bail!(
                "tenant {tenant} not found (create it with `gatehouse tenant add {tenant}`)"
            );
        }
        Ok(())
    }
}

/// The actor for `--actor WHO`: `WHO` as given when it names a kind (`kind:name`),
/// otherwise `operator:WHO`.
fn actor_from_flag(who: &str) -> Result<String> {
    let who = who.trim();
    anyhow::ensure!(
        !who.is_empty() && who.len() <= 128 && !who.chars().any(char::is_control),
        "--actor must be 1 to 128 printable characters"
    );
    Ok(if who.contains(':') {
        who.to_owned()
    } else {
        format!("operator:{who}")
    })
}

/// `operator:<login>` from `$USER`, or `operator:cli` without one.
fn default_actor(user: Option<&str>) -> String {
    match user.map(str::trim) {
        Some(u) if !u.is_empty() && u.len() <= 64 && !u.chars().any(char::is_control) => {
            format!("operator:{u}")
        }
        _ => "operator:cli".to_owned(),
    }
}

/// A display name: `name` if given (trimmed, printable, at most 200 characters), else `id`.
fn display_name(name: Option<String>, id: &str) -> Result<String> {
    let Some(name) = name else {
        return Ok(id.to_owned());
    };
    let name = name.trim();
    anyhow::ensure!(
        !name.is_empty() && name.chars().count() <= 200 && !name.chars().any(char::is_control),
        "--name must be 1 to 200 printable characters"
    );
    Ok(name.to_owned())
}

/// A timestamp for people: RFC 3339 in UTC, whole seconds.
pub fn fmt_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// An optional timestamp for people, `-` when absent.
fn fmt_opt_time(t: Option<OffsetDateTime>) -> String {
    t.map_or_else(|| "-".to_owned(), fmt_time)
}

/// Columns padded to their widest cell, two spaces apart.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let _ = write!(l, "{cell:<w$}", w = widths.get(i).copied().unwrap_or(0));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_defaults_to_the_login_or_cli() {
        assert_eq!(default_actor(Some("alice")), "operator:alice");
        assert_eq!(default_actor(Some("")), "operator:cli");
        assert_eq!(default_actor(Some("a\nb")), "operator:cli");
        assert_eq!(default_actor(None), "operator:cli");
    }

    #[test]
    fn actor_flag_keeps_a_kind_or_adds_operator() {
        assert_eq!(actor_from_flag("bob").ok().as_deref(), Some("operator:bob"));
        assert_eq!(
            actor_from_flag("system:cron").ok().as_deref(),
            Some("system:cron")
        );
        assert!(actor_from_flag(" ").is_err());
        assert!(actor_from_flag("a\u{7}").is_err());
    }

    #[test]
    fn table_pads_columns() {
        let t = table(
            &["A", "BB"],
            &[
                vec!["xxx".into(), "y".into()],
                vec!["z".into(), String::new()],
            ],
        );
        assert_eq!(t, "A    BB\nxxx  y\nz\n");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
        assert_eq!(fmt_time(t), "2023-11-14T22:13:20Z");
        assert_eq!(fmt_opt_time(None), "-");
    }
}
