//! `gatehouse token create|list|revoke`: enrollment tokens for devices that have no
//! manufacturer identity. The secret is shown once, at creation; only its hash is stored.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use gatehouse_store::{ModelId, NewToken, Registry, TokenId, TokenRecord};
use gatehouse_types::TenantId;
use serde_json::json;
use time::OffsetDateTime;

use super::{Ctx, fmt_time, table};

/// Longest a token may live: a token is a weaker identity than a manufacturer's, and a
/// forgotten one should not stay usable for long.
const MAX_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a token; its secret is printed once.
    Create {
        /// The tenant the devices enrolled with it join.
        #[arg(long)]
        tenant: TenantId,
        /// The model they must be.
        #[arg(long)]
        model: ModelId,
        /// How many enrollments it allows.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        uses: u32,
        /// How long it stays valid, e.g. 30m, 24h, 7days (at most 90days).
        #[arg(long, default_value = "24h", value_parser = lifetime)]
        expires: Duration,
    },
    /// List a tenant's tokens (never their secrets).
    List {
        /// The tenant.
        #[arg(long)]
        tenant: TenantId,
    },
    /// Revoke a token: it enrolls nothing more.
    Revoke {
        /// The token id (`tk-…`).
        id: TokenId,
    },
}

pub(super) fn run(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::Create {
            tenant,
            model,
            uses,
            expires,
        } => create(ctx, tenant, model, uses, expires),
        Command::List { tenant } => list(ctx, &tenant),
        Command::Revoke { id } => revoke(ctx, &id),
    }
}

fn lifetime(s: &str) -> Result<Duration, String> {
    let d = humantime_serde::re::humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(60) {
        return Err("a token must live at least 1 minute".to_owned());
    }
    if d > MAX_LIFETIME {
        return Err("a token may live at most 90 days".to_owned());
    }
    Ok(d)
}

fn create(ctx: &Ctx, tenant: TenantId, model: ModelId, uses: u32, expires: Duration) -> Result<()> {
    ctx.require_tenant(&tenant)?;
    if ctx.store.get_model(&model)?.is_none() {
        anyhow::bail!("model {model} not found (register it with `gatehouse model add`)");
    }
    let entry = ctx.entry("create_token", tenant.as_str());
    let expires_at =
        entry.at + time::Duration::try_from(expires).context("token lifetime out of range")?;
    let entry = entry.detail(json!({
        "model": model,
        "max_uses": uses,
        "expires_at": expires_at.unix_timestamp(),
    }));
    let new = NewToken {
        tenant,
        model,
        max_uses: uses,
        expires_at,
        created_by: ctx.actor.clone(),
    };
    let (rec, secret) = ctx.store.create_token(&new, &entry)?;
    let agent = format!("{}:{}", rec.id, secret.expose());
    const ONCE: &str = "The secret is shown only this once and cannot be recovered: store it now.";
    ctx.print(
        &json!({
            "token": rec,
            "secret": secret.expose(),
            "agent_token": agent,
            "note": ONCE,
        }),
        || {
            let mut t = format!(
                "created token {} for tenant {}, model {}: {} use(s), expires {}\n",
                rec.id,
                rec.tenant,
                rec.model,
                rec.max_uses,
                fmt_time(rec.expires_at)
            );
            let _ = writeln!(t, "id:      {}", rec.id);
            let _ = writeln!(t, "secret:  {}", secret.expose());
            let _ = writeln!(t, "agent:   {agent}");
            let _ = writeln!(t, "{ONCE}");
            t
        },
    )
}

fn list(ctx: &Ctx, tenant: &TenantId) -> Result<()> {
    ctx.require_tenant(tenant)?;
    let tokens = ctx.store.list_tokens(tenant)?;
    let now = OffsetDateTime::now_utc();
    let views: Vec<_> = tokens
        .iter()
        .map(|t| json!({ "token": t, "state": state(t, now) }))
        .collect();
    ctx.list(&views, &format!("no tokens in tenant {tenant}"), || {
        let rows: Vec<Vec<String>> = tokens
            .iter()
            .map(|t| {
                vec![
                    t.id.to_string(),
                    t.model.to_string(),
                    format!("{}/{}", t.uses, t.max_uses),
                    fmt_time(t.expires_at),
                    state(t, now).to_owned(),
                    t.created_by.clone(),
                    fmt_time(t.created_at),
                ]
            })
            .collect();
        table(
            &[
                "TOKEN",
                "MODEL",
                "USES",
                "EXPIRES",
                "STATE",
                "CREATED BY",
                "CREATED",
            ],
            &rows,
        )
    })
}

fn revoke(ctx: &Ctx, id: &TokenId) -> Result<()> {
    let t = ctx
        .store
        .get_token(id)?
        .with_context(|| format!("token {id} not found"))?;
    if t.revoked {
        anyhow::bail!("token {id} is already revoked");
    }
    let entry = ctx
        .entry("revoke_token", id.as_str())
        .detail(json!({ "tenant": t.tenant, "model": t.model }));
    let rec = ctx.store.revoke_token(id, &entry)?;
    ctx.print(&rec, || {
        format!(
            "revoked token {} (tenant {}, model {}; used {} of {})",
            rec.id, rec.tenant, rec.model, rec.uses, rec.max_uses
        )
    })
}

/// Whether a token can still enroll, and if not, why.
fn state(t: &TokenRecord, now: OffsetDateTime) -> &'static str {
    if t.revoked {
        "revoked"
    } else if t.uses >= t.max_uses {
        "used up"
    } else if t.expires_at <= now {
        "expired"
    } else {
        "active"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_are_bounded() {
        assert_eq!(lifetime("24h"), Ok(Duration::from_secs(86_400)));
        assert!(lifetime("30s").is_err());
        assert!(lifetime("91days").is_err());
        assert!(lifetime("soon").is_err());
    }
}
