//! `gatehouse claim add|show`: the owner's allowlist of manufacturer serial numbers. A
//! device with a manufacturer identity enrolls only once its serial is claimed.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{ArgGroup, Subcommand};
use gatehouse_store::{ManufacturerId, ModelId, NewClaim, Registry};
use gatehouse_types::TenantId;
use serde_json::json;

use super::{Ctx, fmt_time};

/// Longest serial accepted (X.520 `ub-serial-number`).
const MAX_SERIAL_LEN: usize = 64;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Claim serial numbers for a tenant: those devices are its to enroll.
    #[command(group(ArgGroup::new("source").required(true).args(["serials", "file"])))]
    Add {
        /// The tenant that owns the devices.
        #[arg(long)]
        tenant: TenantId,
        /// Their manufacturer.
        #[arg(long)]
        manufacturer: ManufacturerId,
        /// A serial number; repeat for several.
        #[arg(long = "serial", value_name = "SERIAL")]
        serials: Vec<String>,
        /// A file with one serial per line, optionally `serial,model` (CSV). Blank lines
        /// and lines starting with `#` are ignored, as is a `serial[,model]` header.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Show who claimed a serial number and the device enrolled with it.
    Show {
        /// The manufacturer.
        #[arg(long)]
        manufacturer: ManufacturerId,
        /// The serial number.
        serial: String,
    },
}

pub(super) fn run(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::Add {
            tenant,
            manufacturer,
            serials,
            file,
        } => {
            let claims = match file {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    parse_claims(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                }
                None => from_flags(&serials)?,
            };
            add(ctx, &tenant, &manufacturer, claims)
        }
        Command::Show {
            manufacturer,
            serial,
        } => show(ctx, &manufacturer, &serial),
    }
}

fn add(
    ctx: &Ctx,
    tenant: &TenantId,
    manufacturer: &ManufacturerId,
    claims: Vec<NewClaim>,
) -> Result<()> {
    anyhow::ensure!(!claims.is_empty(), "no serial numbers to claim");
    ctx.require_tenant(tenant)?;
    if ctx.store.get_manufacturer(manufacturer)?.is_none() {
        anyhow::bail!("manufacturer {manufacturer} not found");
    }
    let models: BTreeSet<&ModelId> = claims
        .iter()
        .filter_map(|c| c.expected_model.as_ref())
        .collect();
    for m in models {
        match ctx.store.get_model(m)? {
            None => anyhow::bail!("model {m} not found (register it with `gatehouse model add`)"),
            Some(model) if model.manufacturer != *manufacturer => anyhow::bail!(
                "model {m} is made by {}, not by {manufacturer}",
                model.manufacturer
            ),
            Some(_) => {}
        }
    }
    let entry = ctx.entry("add_claims", tenant.as_str()).detail(json!({
        "manufacturer": manufacturer,
        "serials": claims.iter().map(|c| json!({
            "serial": c.serial,
            "expected_model": c.expected_model,
        })).collect::<Vec<_>>(),
    }));
    let added = ctx
        .store
        .add_claims(tenant, manufacturer, &claims, &entry)?;
    let already = claims.len() - added;
    ctx.print(
        &json!({
            "tenant": tenant,
            "manufacturer": manufacturer,
            "serials": claims.len(),
            "new": added,
            "already_claimed": already,
        }),
        || {
            format!(
                "claimed {added} new serial(s) of {manufacturer} for tenant {tenant} \
                 ({already} already claimed by {tenant}, {} in all)",
                claims.len()
            )
        },
    )
}

fn show(ctx: &Ctx, manufacturer: &ManufacturerId, serial: &str) -> Result<()> {
    if ctx.store.get_manufacturer(manufacturer)?.is_none() {
        anyhow::bail!("manufacturer {manufacturer} not found");
    }
    let claim = ctx
        .store
        .find_claim(manufacturer, serial)?
        .with_context(|| format!("serial {serial} of {manufacturer} is not claimed"))?;
    let device = ctx
        .store
        .find_device_by_serial(&claim.tenant, manufacturer, serial)?;
    ctx.print(&json!({ "claim": claim, "device": device }), || {
        let mut t = String::new();
        let _ = writeln!(t, "serial          {}", claim.serial);
        let _ = writeln!(t, "manufacturer    {}", claim.manufacturer);
        let _ = writeln!(t, "tenant          {}", claim.tenant);
        let _ = writeln!(
            t,
            "expected model  {}",
            claim
                .expected_model
                .as_ref()
                .map_or("any (read from the IDevID)", ModelId::as_str)
        );
        let _ = writeln!(t, "claimed         {}", fmt_time(claim.claimed_at));
        match &device {
            Some(d) => {
                let _ = writeln!(
                    t,
                    "device          {} ({}, {})",
                    d.device,
                    d.model,
                    super::device::status_name(d.status)
                );
            }
            None => {
                let _ = writeln!(t, "device          not enrolled yet");
            }
        }
        t
    })
}

/// Claims from `--serial` flags.
pub(super) fn from_flags(serials: &[String]) -> Result<Vec<NewClaim>> {
    let mut out: Vec<NewClaim> = Vec::new();
    for s in serials {
        let serial = s.trim();
        check_serial(serial).map_err(|e| anyhow::anyhow!("--serial {s:?}: {e}"))?;
        if !out.iter().any(|c| c.serial == serial) {
            out.push(NewClaim {
                serial: serial.to_owned(),
                expected_model: None,
            });
        }
    }
    Ok(out)
}

/// Reads a claims file: one serial per line, or `serial,model`. Blank lines, `#` comments
/// and a header line (`serial` or `serial,model`) are skipped; fields may be quoted. A
/// serial listed twice is kept once, unless the two lines name different models.
pub(super) fn parse_claims(text: &str) -> Result<Vec<NewClaim>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out: Vec<(usize, NewClaim)> = Vec::new();
    let mut first = true;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(unquote).collect();
        let is_first = std::mem::replace(&mut first, false);
        if is_first && is_header(&fields) {
            continue;
        }
        let (serial, model) = match fields.as_slice() {
            [s] => (*s, None),
            [s, ""] => (*s, None),
            [s, m] => (*s, Some(*m)),
            _ => {
                return Err(format!(
                    "line {n}: expected `serial` or `serial,model`, found {} columns",
                    fields.len()
                ));
            }
        };
        check_serial(serial).map_err(|e| format!("line {n}: {e}"))?;
        let expected_model = model
            .map(ModelId::new)
            .transpose()
            .map_err(|e| format!("line {n}: model {:?}: {e}", model.unwrap_or_default()))?;
        if let Some((prev, c)) = out.iter().find(|(_, c)| c.serial == serial) {
            if c.expected_model != expected_model {
                return Err(format!(
                    "line {n}: serial {serial} is also on line {prev} with another model"
                ));
            }
            continue;
        }
        out.push((
            n,
            NewClaim {
                serial: serial.to_owned(),
                expected_model,
            },
        ));
    }
    if out.is_empty() {
        return Err("no serial numbers in the file".to_owned());
    }
    Ok(out.into_iter().map(|(_, c)| c).collect())
}

fn unquote(field: &str) -> &str {
    let f = field.trim();
    f.strip_prefix('"')
        .and_then(|f| f.strip_suffix('"'))
        .map_or(f, str::trim)
}

fn is_header(fields: &[&str]) -> bool {
    let first = fields.first().map(|f| f.to_ascii_lowercase());
    matches!(
        first.as_deref(),
        Some("serial" | "serial_number" | "serialnumber" | "serial number")
    ) && fields.len() <= 2
}

fn check_serial(serial: &str) -> Result<(), String> {
    if serial.is_empty() {
        return Err("empty serial number".to_owned());
    }
    if serial.chars().count() > MAX_SERIAL_LEN {
        return Err(format!(
            "serial number longer than {MAX_SERIAL_LEN} characters"
        ));
    }
    if serial.chars().any(char::is_control) {
        return Err(format!(
            "serial number {serial:?} holds a control character"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serials(c: &[NewClaim]) -> Vec<(&str, Option<&str>)> {
        c.iter()
            .map(|c| {
                (
                    c.serial.as_str(),
                    c.expected_model.as_ref().map(ModelId::as_str),
                )
            })
            .collect()
    }

    #[test]
    fn claims_file_skips_blanks_comments_and_header() {
        let text = "\u{feff}serial,model\n# batch 7\n\nSN001\nSN002, acme-pump-2\r\n\"SN003\",\"\"\nSN001\n";
        let c = parse_claims(text).expect("parses");
        assert_eq!(
            serials(&c),
            vec![
                ("SN001", None),
                ("SN002", Some("acme-pump-2")),
                ("SN003", None)
            ]
        );
    }

    #[test]
    fn claims_file_errors_name_the_line() {
        let err = parse_claims("SN1\nSN2,m,x\n").expect_err("three columns");
        assert!(err.starts_with("line 2:"), "{err}");
        let err = parse_claims("SN1\n,m\n").expect_err("empty serial");
        assert!(err.starts_with("line 2: empty serial"), "{err}");
        let err = parse_claims("SN1,bad model\n").expect_err("bad model id");
        assert!(err.starts_with("line 1: model"), "{err}");
        let err = parse_claims("SN1,a\nSN1,b\n").expect_err("conflict");
        assert!(err.contains("also on line 1"), "{err}");
        assert!(parse_claims("# nothing\n\n").is_err());
    }

    #[test]
    fn serial_flags_are_checked_and_deduplicated() {
        let c = from_flags(&["A1".into(), " A1 ".into(), "B2".into()]).expect("ok");
        assert_eq!(serials(&c), vec![("A1", None), ("B2", None)]);
        assert!(from_flags(&["".into()]).is_err());
        assert!(from_flags(&["x".repeat(65)]).is_err());
    }
}
