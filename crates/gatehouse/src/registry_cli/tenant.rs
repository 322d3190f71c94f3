//! `gatehouse tenant add|list`.

use anyhow::Result;
use clap::Subcommand;
use gatehouse_store::{Registry, WriteError};
use gatehouse_types::TenantId;
use serde_json::json;

use super::{Ctx, display_name, fmt_time, table};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a tenant.
    Add {
        /// Tenant id (letters, digits, `-`, `_`, `.`, `:`).
        id: TenantId,
        /// A name for people (default: the id).
        #[arg(long)]
        name: Option<String>,
        /// Succeed without change when the tenant exists already (for scripts).
        #[arg(long)]
        exists_ok: bool,
    },
    /// List tenants.
    List,
}

pub(super) fn run(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::Add {
            id,
            name,
            exists_ok,
        } => add(ctx, &id, name, exists_ok),
        Command::List => list(ctx),
    }
}

fn add(ctx: &Ctx, id: &TenantId, name: Option<String>, exists_ok: bool) -> Result<()> {
    let name = display_name(name, id.as_str())?;
    let entry = ctx
        .entry("create_tenant", id.as_str())
        .detail(json!({ "display_name": name }));
    match ctx.store.create_tenant(id, &name, &entry) {
        Ok(t) => ctx.print(&t, || {
            format!("created tenant {} ({})", t.id, t.display_name)
        }),
        Err(WriteError::AlreadyExists { .. }) if exists_ok => {
            let existing = ctx.store.get_tenant(id)?;
            ctx.print(&existing, || {
                format!("tenant {id} already exists; nothing changed")
            })
        }
        Err(WriteError::AlreadyExists { .. }) => anyhow::bail!(
            "tenant {id} already exists (pass --exists-ok to accept an existing tenant)"
        ),
        Err(e) => Err(e.into()),
    }
}

fn list(ctx: &Ctx) -> Result<()> {
    let tenants = ctx.store.list_tenants()?;
    ctx.list(
        &tenants,
        "no tenants (create one with `gatehouse tenant add <id>`)",
        || {
            let rows: Vec<Vec<String>> = tenants
                .iter()
                .map(|t| {
                    vec![
                        t.id.to_string(),
                        t.display_name.clone(),
                        fmt_time(t.created_at),
                    ]
                })
                .collect();
            table(&["TENANT", "NAME", "CREATED"], &rows)
        },
    )
}
