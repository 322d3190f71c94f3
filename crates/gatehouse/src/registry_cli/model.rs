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
    /// Upload a new version of a model's profile (TOML); it is validated first.
    Profile {
        /// The model.
        id: ModelId,
        /// The profile file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
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
        Command::Profile { id, file } => upload_profile(ctx, id, &file),
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
    let profile = profile
        .map(|p| read_profile(p, &id, &manufacturer))
        .transpose()?;
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
    ctx.list(
        &views,
        "no models (register one with `gatehouse model add`)",
        || {
            table(
                &["MODEL", "MANUFACTURER", "NAME", "PROFILE", "CREATED"],
                &rows,
            )
        },
    )
}

/// Uploads a new profile version of an existing model.
fn upload_profile(ctx: &Ctx, id: ModelId, file: &Path) -> Result<()> {
    let model = ctx.store.get_model(&id)?.with_context(|| {
        format!("model {id} not found (register it with `gatehouse model add`)")
    })?;
    let toml = read_profile(file, &id, &model.manufacturer)?;
    let entry = ctx.entry("add_model_profile", id.as_str());
    let stored = ctx.store.add_model_profile(&id, &toml, &entry)?;
    ctx.print(
        &json!({ "model": id, "profile_version": stored.version }),
        || format!("model {id}: profile version {} stored", stored.version),
    )
}

/// Reads a profile and validates it (`gatehouse_trust::profile`): it must parse, be
/// consistent, and name this model and manufacturer.
fn read_profile(path: &Path, id: &ModelId, manufacturer: &ManufacturerId) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    check_profile(&text, id, manufacturer)
        .map_err(|e| anyhow::anyhow!("profile {}: {e}", path.display()))?;
    Ok(text)
}

/// `Ok` if `text` is a valid profile of `id` by `manufacturer`; otherwise why not, on one
/// line.
pub(crate) fn check_profile(
    text: &str,
    id: &ModelId,
    manufacturer: &ManufacturerId,
) -> Result<(), String> {
    let profile = gatehouse_trust::profile::ModelProfile::parse(text)
        .map_err(|e| e.to_string().replace('\n', " "))?;
    if profile.model() != id.as_str() {
        return Err(format!(
            "it describes model {:?}, not {id}",
            profile.model()
        ));
    }
    if profile.manufacturer() != manufacturer.as_str() {
        return Err(format!(
            "it names manufacturer {:?}, but model {id} is made by {manufacturer}",
            profile.manufacturer()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_validated_and_must_name_their_model() {
        let id = ModelId::new("thermo-2").expect("id");
        let acme = ManufacturerId::new("acme").expect("id");
        let good = "manufacturer = \"acme\"\nmodel = \"thermo-2\"\n[firmware]\ncurrent = \"1.0.0\"\nsupported = [\"1.0.0\"]\n";
        check_profile(good, &id, &acme).expect("valid");
        let other = ModelId::new("other").expect("id");
        assert!(
            check_profile(good, &other, &acme)
                .expect_err("model")
                .contains("thermo-2")
        );
        let err = check_profile("a = 1\nb = = 2\n", &id, &acme).expect_err("bad toml");
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains('\n'));
    }
}
