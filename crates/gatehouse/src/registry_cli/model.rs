//! `gatehouse model add|list`: device models and their profiles.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use gatehouse_store::{ManufacturerId, ModelId, NewModel, Registry};
use serde_json::json;

use super::{Ctx, display_name, fmt_time, table};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register a device model.
    Add {
        /// Model id, global (letters, digits, `-`, `_`, `.`, `:`).
        id: ModelId,
        /// The manufacturer that makes it.
        #[arg(long)]
        manufacturer: ManufacturerId,
        /// A name for people (default: the id).
        #[arg(long)]
        name: Option<String>,
        /// The model's profile (TOML), stored as its version 1.
        #[arg(long, value_name = "FILE")]
        profile: Option<PathBuf>,
    },
    /// List models.
    List,
}

pub(super) fn run(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::Add {
            id,
            manufacturer,
            name,
            profile,
        } => add(ctx, id, manufacturer, name, profile.as_deref()),
        Command::List => list(ctx),
    }
}

fn add(
    ctx: &Ctx,
    id: ModelId,
    manufacturer: ManufacturerId,
    name: Option<String>,
    profile: Option<&Path>,
) -> Result<()> {
    let display_name = display_name(name, id.as_str())?;
    // Everything is checked before the first write.
    let profile = profile.map(read_profile).transpose()?;
    if ctx.store.get_manufacturer(&manufacturer)?.is_none() {
        anyhow::bail!(
            "manufacturer {manufacturer} not found (register it with `gatehouse manufacturer add`)"
        );
    }
    if ctx.store.get_model(&id)?.is_some() {
        anyhow::bail!("model {id} already exists");
    }
    let new = NewModel {
        id: id.clone(),
        manufacturer,
        display_name,
    };
    let entry = ctx.entry("add_model", id.as_str()).detail(json!({
        "manufacturer": new.manufacturer,
        "display_name": new.display_name,
    }));
    let model = ctx.store.add_model(&new, &entry)?;
    let stored = match profile {
        Some(toml) => {
            let entry = ctx.entry("add_model_profile", id.as_str());
            Some(
                ctx.store
                    .add_model_profile(&id, &toml, &entry)
                    .with_context(|| {
                        format!("model {id} was registered, but its profile was not")
                    })?,
            )
        }
        None => None,
    };
    let version = stored.as_ref().map(|p| p.version);
    ctx.print(
        &json!({ "model": model, "profile_version": version }),
        || {
            let mut t = format!(
                "registered model {} ({}) of manufacturer {}",
                model.id, model.display_name, model.manufacturer
            );
            if let Some(v) = version {
                t.push_str(&format!(", profile version {v}"));
            }
            t
        },
    )
}

fn list(ctx: &Ctx) -> Result<()> {
    let models = ctx.store.list_models()?;
    let mut rows = Vec::with_capacity(models.len());
    let mut views = Vec::with_capacity(models.len());
    for m in &models {
        let version = ctx.store.latest_model_profile(&m.id)?.map(|p| p.version);
        rows.push(vec![
            m.id.to_string(),
            m.manufacturer.to_string(),
            m.display_name.clone(),
            version.map_or_else(|| "-".to_owned(), |v| v.to_string()),
            fmt_time(m.created_at),
        ]);
        views.push(json!({ "model": m, "profile_version": version }));
    }
    ctx.print(&json!({ "models": views }), || {
        if rows.is_empty() {
            return "no models (register one with `gatehouse model add`)".to_owned();
        }
        table(
            &["MODEL", "MANUFACTURER", "NAME", "PROFILE", "CREATED"],
            &rows,
        )
    })
}

/// Reads a profile and checks that it is a TOML document. What it says is checked when
/// profiles are put to use.
fn read_profile(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    check_toml(&text).map_err(|e| anyhow::anyhow!("profile {}: {e}", path.display()))?;
    Ok(text)
}

/// `Ok` if `text` is a TOML document; otherwise the first error, on one line.
fn check_toml(text: &str) -> Result<(), String> {
    match toml::from_str::<toml::Table>(text) {
        Ok(_) => Ok(()),
        Err(e) => {
            let line = e
                .span()
                .map(|s| text.get(..s.start).unwrap_or(text).matches('\n').count() + 1);
            let msg = e.message().trim().replace('\n', " ");
            Err(match line {
                Some(l) => format!("not valid TOML (line {l}): {msg}"),
                None => format!("not valid TOML: {msg}"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_must_be_toml_and_errors_name_the_line() {
        assert!(check_toml("[topics]\npublish = [\"devices/{device}/t\"]\n").is_ok());
        let err = check_toml("a = 1\nb = = 2\n").expect_err("bad toml");
        assert!(err.starts_with("not valid TOML (line 2)"), "{err}");
        assert!(!err.contains('\n'));
    }
}
