//! `gatehouse manufacturer add|list|show|set-ca`: manufacturers, their IDevID CAs and the
//! rules that read a device's model from its IDevID.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use gatehouse_pki::{CaCertInfo as CaInfo, ModelRule, inspect_ca_pem};
use gatehouse_store::{Manufacturer, ManufacturerId, NewManufacturer, Registry};
use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;

use super::{Ctx, display_name, fmt_time, table};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register a manufacturer and the CA certificates that issue its devices' IDevIDs.
    Add {
        /// Manufacturer slug (lowercase letters, digits, `-`, `_`, `.`).
        id: ManufacturerId,
        /// A PEM file of IDevID CA certificates; repeat for several files.
        #[arg(long = "ca", value_name = "PEM", required = true)]
        cas: Vec<PathBuf>,
        /// A name for people (default: the id).
        #[arg(long)]
        name: Option<String>,
        /// Where the device model is read from an IDevID, tried in order:
        /// `san-uri-prefix:<prefix>`, `extension:<oid>` or `subject:<oid>`.
        #[arg(long = "model-from", value_name = "RULE")]
        model_from: Vec<String>,
    },
    /// List manufacturers.
    List,
    /// Show a manufacturer: its CA certificates and model rules.
    Show {
        /// Manufacturer slug.
        id: ManufacturerId,
    },
    /// Replace a manufacturer's IDevID CA certificates (a CA roll-over, or a distrust).
    SetCa {
        /// Manufacturer slug.
        id: ManufacturerId,
        /// A PEM file of IDevID CA certificates; repeat for several files. The new set
        /// replaces the old one entirely.
        #[arg(long = "ca", value_name = "PEM", required = true)]
        cas: Vec<PathBuf>,
    },
}

pub(super) fn run(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::Add {
            id,
            cas,
            name,
            model_from,
        } => add(ctx, id, &cas, name, &model_from),
        Command::List => list(ctx),
        Command::Show { id } => show(ctx, &id),
        Command::SetCa { id, cas } => set_ca(ctx, &id, &cas),
    }
}

fn add(
    ctx: &Ctx,
    id: ManufacturerId,
    files: &[PathBuf],
    name: Option<String>,
    model_from: &[String],
) -> Result<()> {
    let rules = parse_rules(model_from)?;
    let cas = read_ca_files(files)?;
    let display_name = display_name(name, id.as_str())?;
    if ctx.store.get_manufacturer(&id)?.is_some() {
        anyhow::bail!(
            "manufacturer {id} already exists (use `gatehouse manufacturer set-ca {id}` to replace its CAs)"
        );
    }
    let new = NewManufacturer {
        id: id.clone(),
        display_name,
        idevid_ca_pems: cas.iter().map(|c| c.pem.clone()).collect(),
        model_mapping: ModelRule::format_list(&rules),
    };
    let entry = ctx.entry("add_manufacturer", id.as_str()).detail(json!({
        "ca_sha256": cas.iter().map(|c| &c.sha256).collect::<Vec<_>>(),
        "model_rules": rules.iter().map(ToString::to_string).collect::<Vec<_>>(),
    }));
    let m = ctx.store.add_manufacturer(&new, &entry)?;
    let view = View::of(&m)?;
    ctx.print(&view, || {
        let mut t = format!(
            "registered manufacturer {} with {} CA certificate(s)\n",
            m.id,
            view.cas.len()
        );
        t.push_str(&describe(&view));
        t
    })
}

fn list(ctx: &Ctx) -> Result<()> {
    let all = ctx.store.list_manufacturers()?;
    let views = all.iter().map(View::of).collect::<Result<Vec<_>>>()?;
    ctx.list(
        &views,
        "no manufacturers (register one with `gatehouse manufacturer add`)",
        || {
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|v| {
                    let next_expiry = v.cas.iter().map(|c| c.not_after).min();
                    vec![
                        v.id.to_string(),
                        v.display_name.clone(),
                        v.cas.len().to_string(),
                        next_expiry.map_or_else(|| "-".to_owned(), fmt_time),
                        if v.model_rules.is_empty() {
                            "-".to_owned()
                        } else {
                            v.model_rules.join(", ")
                        },
                    ]
                })
                .collect();
            table(
                &[
                    "MANUFACTURER",
                    "NAME",
                    "CAS",
                    "FIRST CA EXPIRY",
                    "MODEL RULES",
                ],
                &rows,
            )
        },
    )
}

fn show(ctx: &Ctx, id: &ManufacturerId) -> Result<()> {
    let m = get(ctx, id)?;
    let view = View::of(&m)?;
    ctx.print(&view, || describe(&view))
}

fn set_ca(ctx: &Ctx, id: &ManufacturerId, files: &[PathBuf]) -> Result<()> {
    let old = View::of(&get(ctx, id)?)?;
    let cas = read_ca_files(files)?;
    let pems: Vec<String> = cas.iter().map(|c| c.pem.clone()).collect();
    let entry = ctx
        .entry("set_manufacturer_cas", id.as_str())
        .detail(json!({
            "old_ca_sha256": old.cas.iter().map(|c| &c.sha256).collect::<Vec<_>>(),
            "new_ca_sha256": cas.iter().map(|c| &c.sha256).collect::<Vec<_>>(),
        }));
    let m = ctx.store.set_manufacturer_cas(id, &pems, &entry)?;
    let view = View::of(&m)?;
    ctx.print(&view, || {
        let mut t = format!(
            "manufacturer {}: {} CA certificate(s), was {}\n",
            m.id,
            view.cas.len(),
            old.cas.len()
        );
        for c in &old.cas {
            if !view.cas.iter().any(|n| n.sha256 == c.sha256) {
                let _ = writeln!(t, "  removed  {}  {}", c.sha256, c.subject);
            }
        }
        for c in &view.cas {
            if !old.cas.iter().any(|o| o.sha256 == c.sha256) {
                let _ = writeln!(t, "  added    {}  {}", c.sha256, c.subject);
            }
        }
        if t.lines().count() == 1 {
            t.push_str("  the set is unchanged\n");
        }
        t
    })
}

fn get(ctx: &Ctx, id: &ManufacturerId) -> Result<Manufacturer> {
    ctx.store
        .get_manufacturer(id)?
        .with_context(|| format!("manufacturer {id} not found"))
}

/// Parses `--model-from` rules.
fn parse_rules(rules: &[String]) -> Result<Vec<ModelRule>> {
    rules
        .iter()
        .map(|r| r.trim().parse::<ModelRule>().map_err(anyhow::Error::msg))
        .collect()
}

/// A manufacturer as the commands show it.
#[derive(Debug, Serialize)]
struct View {
    id: ManufacturerId,
    display_name: String,
    #[serde(with = "time::serde::timestamp")]
    created_at: OffsetDateTime,
    model_rules: Vec<String>,
    cas: Vec<CaInfo>,
}

// === impl View ===

impl View {
    fn of(m: &Manufacturer) -> Result<Self> {
        let model_rules = match ModelRule::parse_list(&m.model_mapping) {
            Ok(rules) => rules.iter().map(ToString::to_string).collect(),
            // Stored by something else: show it as it is.
            Err(_) => m.model_mapping.lines().map(str::to_owned).collect(),
        };
        let mut cas = Vec::new();
        for pem in &m.idevid_ca_pems {
            cas.extend(inspect_ca_pem(pem.as_bytes()).map_err(|e| {
                anyhow::anyhow!("stored CA certificate of manufacturer {}: {e}", m.id)
            })?);
        }
        Ok(Self {
            id: m.id.clone(),
            display_name: m.display_name.clone(),
            created_at: m.created_at,
            model_rules,
            cas,
        })
    }
}

fn describe(v: &View) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "manufacturer  {}", v.id);
    let _ = writeln!(t, "name          {}", v.display_name);
    let _ = writeln!(t, "registered    {}", fmt_time(v.created_at));
    if v.model_rules.is_empty() {
        let _ = writeln!(t, "model rules   none");
    } else {
        for (i, r) in v.model_rules.iter().enumerate() {
            let label = if i == 0 { "model rules" } else { "" };
            let _ = writeln!(t, "{label:<12}  {}. {r}", i + 1);
        }
    }
    let _ = writeln!(t, "IDevID CAs    {}", v.cas.len());
    let now = OffsetDateTime::now_utc();
    for c in &v.cas {
        let _ = writeln!(t, "  subject     {}", c.subject);
        let _ = writeln!(t, "  sha256      {}", c.sha256);
        let expired = if c.not_after < now { "  (expired)" } else { "" };
        let _ = writeln!(
            t,
            "  valid       {} to {}{expired}",
            fmt_time(c.not_before),
            fmt_time(c.not_after)
        );
    }
    t
}

/// Reads every certificate of every file; each must be a CA certificate. Duplicates are
/// kept once. Expired CAs are accepted with a warning.
fn read_ca_files(files: &[PathBuf]) -> Result<Vec<CaInfo>> {
    let mut out: Vec<CaInfo> = Vec::new();
    let now = OffsetDateTime::now_utc();
    for path in files {
        for ca in read_ca_file(path)? {
            if ca.not_after < now {
                eprintln!(
                    "warning: {}: CA {} expired on {}",
                    path.display(),
                    ca.subject,
                    fmt_time(ca.not_after)
                );
            }
            if !out.iter().any(|c| c.sha256 == ca.sha256) {
                out.push(ca);
            }
        }
    }
    Ok(out)
}

fn read_ca_file(path: &Path) -> Result<Vec<CaInfo>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    inspect_ca_pem(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_pki::{inspect_ca_pem as parse_ca_pem, load_certs_pem};

    #[test]
    fn manufacturer_ca_is_accepted_and_round_trips_as_pem() {
        let ca = gatehouse_pki::ManufacturerCa::new("Acme").expect("ca");
        let infos = parse_ca_pem(ca.cert_pem().as_bytes()).expect("a CA");
        assert_eq!(infos.len(), 1);
        assert!(infos[0].subject.contains("Acme IDevID CA"));
        assert_eq!(infos[0].sha256.len(), 32 * 3 - 1);
        let again = load_certs_pem(&infos[0].pem).expect("pem");
        assert_eq!(again[0].as_ref(), ca.cert_der().as_ref());
    }

    #[test]
    fn leaf_certificate_is_not_a_ca() {
        let ca = gatehouse_pki::ManufacturerCa::new("Acme").expect("ca");
        let leaf = ca
            .issue_idevid(&gatehouse_pki::IdevidParams::new("SN1", "dev"))
            .expect("idevid");
        let err = parse_ca_pem(leaf.cert_pem.as_bytes()).expect_err("a leaf");
        assert!(err.contains("is not a CA certificate"), "{err}");
    }

    #[test]
    fn garbage_and_der_are_refused_clearly() {
        let err = parse_ca_pem(b"hello").expect_err("garbage");
        assert!(err.contains("no certificate"), "{err}");
        let err = parse_ca_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .expect_err("not x509");
        assert!(err.contains("not an X.509 certificate"), "{err}");
        let ca = gatehouse_pki::ManufacturerCa::new("Acme").expect("ca");
        let err = parse_ca_pem(ca.cert_der().as_ref()).expect_err("der");
        assert!(err.contains("DER"), "{err}");
    }

    #[test]
    fn model_rules_parse_or_name_the_bad_one() {
        let ok = parse_rules(&[
            "san-uri-prefix:urn:acme:model:".into(),
            "subject:2.5.4.46".into(),
        ])
        .expect("rules");
        assert_eq!(ok.len(), 2);
        let err = parse_rules(&["serial:1.2".into()]).expect_err("unknown kind");
        assert!(err.to_string().contains("unknown kind"), "{err}");
    }
}
