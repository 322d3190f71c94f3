//! `gatehouse admin …`: operators (the people and programs that log in to the dashboard
//! and the API) and their API tokens. Run on the server's host, against its data
//! directory: whoever can write the registry file is already all-powerful, so this is
//! where the first admin and lost passwords come from.

use std::io::Read as _;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use gatehouse_api::auth::{MIN_PASSWORD_LEN, hash_password, random_password};
use gatehouse_store::{
    ApiToken, NewApiToken, NewOperator, Operator, OperatorName, OperatorStore, Permission, Role,
};
use gatehouse_types::TenantId;
use serde_json::json;
use time::OffsetDateTime;

use super::{Ctx, fmt_opt_time, fmt_time, table};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an operator; prints its password (generated unless --password-stdin).
    Create {
        /// Login name: a-z, 0-9, '.', '_', '-', '@'.
        name: OperatorName,
        /// admin, operator, analyst or auditor.
        #[arg(long, default_value = "admin")]
        role: Role,
        /// Bind the operator to one tenant (default: it sees every tenant).
        #[arg(long)]
        tenant: Option<TenantId>,
        /// Read the password from standard input instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List operators.
    List,
    /// Set an operator's password (generated unless --password-stdin); ends its sessions
    /// and lifts a lockout.
    Passwd {
        /// The operator.
        name: OperatorName,
        /// Read the password from standard input instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable an operator: its sessions end and its tokens stop working.
    Disable {
        /// The operator.
        name: OperatorName,
    },
    /// Enable a disabled operator.
    Enable {
        /// The operator.
        name: OperatorName,
    },
    /// Create an API token for an operator; prints it once.
    Token {
        /// The operator.
        name: OperatorName,
        /// What it is for.
        #[arg(long, default_value = "")]
        label: String,
        /// Its scope, comma-separated: read, read_audit, acknowledge, act, administer
        /// (default: everything the operator's role allows).
        #[arg(long, value_delimiter = ',')]
        scope: Vec<Permission>,
        /// How long it lives, e.g. 1h, 30days.
        #[arg(long, default_value = "30days", value_parser = lifetime)]
        expires: Duration,
    },
    /// List API tokens (never their secrets), an operator's or everyone's.
    Tokens {
        /// Only this operator's.
        name: Option<OperatorName>,
    },
    /// Revoke an API token.
    RevokeToken {
        /// The token id (`at-…`).
        id: String,
    },
}

pub(super) fn run(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::Create {
            name,
            role,
            tenant,
            password_stdin,
        } => create(ctx, name, role, tenant, password_stdin),
        Command::List => list(ctx),
        Command::Passwd {
            name,
            password_stdin,
        } => passwd(ctx, &name, password_stdin),
        Command::Disable { name } => set_disabled(ctx, &name, true),
        Command::Enable { name } => set_disabled(ctx, &name, false),
        Command::Token {
            name,
            label,
            scope,
            expires,
        } => token(ctx, name, label, scope, expires),
        Command::Tokens { name } => tokens(ctx, name.as_ref()),
        Command::RevokeToken { id } => revoke_token(ctx, &id),
    }
}

fn lifetime(s: &str) -> Result<Duration, String> {
    let d = humantime_serde::re::humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(60) {
        return Err("a token must live at least 1 minute".to_owned());
    }
    Ok(d)
}

/// The password from standard input (one line, trailing newline dropped) or a new one;
/// `true` when generated.
fn password(from_stdin: bool) -> Result<(String, bool)> {
    if !from_stdin {
        return Ok((
            random_password().map_err(|p| anyhow::anyhow!(p.message))?,
            true,
        ));
    }
    let mut text = String::new();
    std::io::stdin()
        .take(4096)
        .read_to_string(&mut text)
        .context("reading the password from standard input")?;
    let p = text.trim_end_matches(['\r', '\n']).to_owned();
    if p.chars().count() < MIN_PASSWORD_LEN {
        bail!("the password must have at least {MIN_PASSWORD_LEN} characters");
    }
    Ok((p, false))
}

fn hash(p: &str) -> Result<String> {
    hash_password(p).map_err(|e| anyhow::anyhow!(e.message))
}

fn view(o: &Operator) -> serde_json::Value {
    json!({
        "name": o.name,
        "role": o.role,
        "tenant": o.tenant,
        "disabled": o.disabled,
        "locked_until": o.locked_until.map(|t| t.unix_timestamp()),
        "has_password": o.has_password,
        "created_at": o.created_at.unix_timestamp(),
    })
}

fn create(
    ctx: &Ctx,
    name: OperatorName,
    role: Role,
    tenant: Option<TenantId>,
    password_stdin: bool,
) -> Result<()> {
    if let Some(t) = &tenant {
        ctx.require_tenant(t)?;
    }
    let (password, generated) = password(password_stdin)?;
    let entry = ctx
        .entry("create_operator", name.as_str())
        .detail(json!({ "role": role, "tenant": tenant }));
    let op = ctx.store.create_operator(
        &NewOperator {
            name,
            role,
            tenant,
            password_hash: Some(hash(&password)?),
        },
        &entry,
    )?;
    ctx.print(
        &json!({ "operator": view(&op), "password": generated.then_some(&password) }),
        || {
            let mut t = format!(
                "created operator {} ({}{})\n",
                op.name,
                op.role,
                op.tenant
                    .as_ref()
                    .map(|t| format!(", tenant {t}"))
                    .unwrap_or_default()
            );
            if generated {
                t.push_str(&format!(
                    "password: {password}\nThe password is shown only this once.\n"
                ));
            }
            t
        },
    )
}

fn list(ctx: &Ctx) -> Result<()> {
    let ops = ctx.store.list_operators(None)?;
    let now = OffsetDateTime::now_utc();
    ctx.list(
        &ops.iter().map(view).collect::<Vec<_>>(),
        "no operators (create one with `gatehouse admin create NAME`)",
        || {
            let rows: Vec<Vec<String>> = ops
                .iter()
                .map(|o| {
                    vec![
                        o.name.to_string(),
                        o.role.to_string(),
                        o.tenant
                            .as_ref()
                            .map_or_else(|| "*".to_owned(), ToString::to_string),
                        if o.disabled {
                            "disabled".into()
                        } else if o.is_locked(now) {
                            "locked".into()
                        } else {
                            "active".into()
                        },
                        fmt_time(o.created_at),
                    ]
                })
                .collect();
            table(&["NAME", "ROLE", "TENANT", "STATE", "CREATED"], &rows)
        },
    )
}

fn passwd(ctx: &Ctx, name: &OperatorName, from_stdin: bool) -> Result<()> {
    let (password, generated) = password(from_stdin)?;
    let op = ctx.store.set_password(
        name,
        &hash(&password)?,
        &ctx.entry("set_password", name.as_str()),
    )?;
    ctx.print(
        &json!({ "operator": view(&op), "password": generated.then_some(&password) }),
        || {
            if generated {
                format!(
                    "new password for {}: {password}\nThe password is shown only this once.",
                    op.name
                )
            } else {
                format!("password of {} set", op.name)
            }
        },
    )
}

fn set_disabled(ctx: &Ctx, name: &OperatorName, disabled: bool) -> Result<()> {
    let action = if disabled {
        "disable_operator"
    } else {
        "enable_operator"
    };
    let op = ctx
        .store
        .set_operator_disabled(name, disabled, &ctx.entry(action, name.as_str()))?;
    ctx.print(&json!({ "operator": view(&op) }), || {
        format!(
            "operator {} {}",
            op.name,
            if disabled { "disabled" } else { "enabled" }
        )
    })
}

fn token_view(t: &ApiToken) -> serde_json::Value {
    json!({
        "id": t.id,
        "operator": t.operator,
        "label": t.label,
        "permissions": t.permissions,
        "created_at": t.created_at.unix_timestamp(),
        "expires_at": t.expires_at.unix_timestamp(),
        "revoked_at": t.revoked_at.map(|t| t.unix_timestamp()),
    })
}

fn token(
    ctx: &Ctx,
    name: OperatorName,
    label: String,
    scope: Vec<Permission>,
    expires: Duration,
) -> Result<()> {
    let Some(op) = ctx.store.get_operator(&name)? else {
        bail!("operator {name} not found (create it with `gatehouse admin create {name}`)");
    };
    let permissions = if scope.is_empty() {
        op.role.permissions().to_vec()
    } else {
        scope
    };
    let entry = ctx.entry("create_api_token", name.as_str());
    let expires_at =
        entry.at + time::Duration::try_from(expires).context("token lifetime out of range")?;
    let entry = entry.detail(json!({
        "permissions": permissions,
        "expires_at": expires_at.unix_timestamp(),
    }));
    let (rec, text) = ctx.store.create_api_token(
        &NewApiToken {
            operator: name,
            label,
            permissions,
            expires_at,
        },
        &entry,
    )?;
    const ONCE: &str = "The token is shown only this once: store it now. Send it as \
                        `Authorization: Bearer <token>`.";
    ctx.print(
        &json!({ "token": text.expose(), "record": token_view(&rec), "note": ONCE }),
        || {
            format!(
                "created API token {} for {} ({}), expires {}\ntoken: {}\n{ONCE}\n",
                rec.id,
                rec.operator,
                rec.permissions
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                fmt_time(rec.expires_at),
                text.expose()
            )
        },
    )
}

fn tokens(ctx: &Ctx, name: Option<&OperatorName>) -> Result<()> {
    let list = ctx.store.list_api_tokens(name)?;
    ctx.list(
        &list.iter().map(token_view).collect::<Vec<_>>(),
        "no API tokens",
        || {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.operator.to_string(),
                        t.permissions
                            .iter()
                            .map(|p| p.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        fmt_time(t.expires_at),
                        fmt_opt_time(t.revoked_at),
                        t.label.clone(),
                    ]
                })
                .collect();
            table(
                &["ID", "OPERATOR", "SCOPE", "EXPIRES", "REVOKED", "LABEL"],
                &rows,
            )
        },
    )
}

fn revoke_token(ctx: &Ctx, id: &str) -> Result<()> {
    let rec = ctx
        .store
        .revoke_api_token(id, &ctx.entry("revoke_api_token", id))?;
    ctx.print(&json!({ "token": token_view(&rec) }), || {
        format!("API token {} revoked", rec.id)
    })
}

/// At a start with no operator at all: creates `admin` (role admin, every tenant) with a
/// generated password and prints the password once, on standard error.
pub fn first_admin(store: &gatehouse_store::SqliteStore) -> Result<()> {
    if store.count_operators()? > 0 {
        return Ok(());
    }
    let name = OperatorName::new("admin").context("operator name")?;
    let (password, _) = password(false)?;
    let entry = gatehouse_store::AuditEntry::new(
        OffsetDateTime::now_utc(),
        "system",
        "create_operator",
        name.as_str(),
    )
    .reason("first start: no operator existed")
    .detail(json!({ "role": Role::Admin }));
    store.create_operator(
        &NewOperator {
            name,
            role: Role::Admin,
            tenant: None,
            password_hash: Some(hash(&password)?),
        },
        &entry,
    )?;
    eprintln!(
        "\nFirst start: created the operator `admin` (role admin).\n\
         \n    password: {password}\n\n\
         It is shown only this once. Log in with it, then create named operators with\n\
         `gatehouse admin create NAME --role ROLE`; `gatehouse admin passwd admin` sets a new one.\n"
    );
    Ok(())
}
