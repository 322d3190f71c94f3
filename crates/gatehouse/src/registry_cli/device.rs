//! `gatehouse device list|show|revoke|reinstate|pin|unpin`: registered devices, their
//! certificates and trust, revocation — of one device, or of a manufacturer's batch — and
//! operators' pins of a device's trust tier.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use gatehouse_runtime::ops;
use gatehouse_store::{
    BatchScope, CertStatus, Certificate, Cursor, Device, DeviceFilter, DeviceStatus,
    ManufacturerId, ModelId, Registry, RevocationReason,
};
use gatehouse_trust::policy::{AllowedTopic, Verdict};
use gatehouse_trust::score::Pin;
use gatehouse_types::{DeviceRef, TenantId, Tier};
use serde_json::json;
use time::OffsetDateTime;

use super::{Ctx, fmt_opt_time, fmt_time, table};

/// Most devices one `list` page may hold (the store's cap).
const MAX_PAGE: usize = 1000;

/// Shortest pin.
const MIN_PIN: Duration = Duration::from_secs(60);

/// Longest pin: a year, as `1year` means (365.25 days).
const MAX_PIN: Duration = Duration::from_secs(31_557_600);

/// Longest pin reason, in characters.
const MAX_REASON_CHARS: usize = 500;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List devices, a page at a time.
    List {
        /// Only this tenant's devices.
        #[arg(long)]
        tenant: Option<TenantId>,
        /// Only devices in this status.
        #[arg(long, value_enum)]
        status: Option<Status>,
        /// Only devices of this model.
        #[arg(long)]
        model: Option<ModelId>,
        /// Devices per page (at most 1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
        /// Where to resume: the cursor printed with the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show a device, its certificates and its trust: score, tier, pin, the factors with
    /// their evidence, and what the policies in force allow it and why.
    Show {
        /// `tenant/device`, or `device` in the default tenant.
        device: DeviceRef,
    },
    /// Reinstate a revoked or blocked device (re-claim it): it may enroll again; its
    /// revoked certificates stay revoked.
    Reinstate {
        /// `tenant/device`, or `device` in the default tenant.
        device: DeviceRef,
        /// Why, in words, for the audit log.
        #[arg(long, value_name = "TEXT")]
        why: Option<String>,
    },
    /// Pin a device's trust tier for a while, whatever its score says.
    #[command(
        after_help = "The score is still computed and shown; the pin only sets the tier, \
                      until it expires or `device unpin` removes it. A running server \
                      applies the change within its registry poll interval."
    )]
    Pin {
        /// `tenant/device`, or `device` in the default tenant.
        device: DeviceRef,
        /// The tier to hold it at: trusted, restricted, quarantined or blocked.
        #[arg(long, value_name = "TIER")]
        tier: String,
        /// How long, e.g. 30m, 2h, 7days (at least 1 minute, at most 1 year).
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why, in words (required): kept with the pin and in the audit log.
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Remove a device's pin: its score sets its tier again.
    Unpin {
        /// `tenant/device`, or `device` in the default tenant.
        device: DeviceRef,
        /// Why, in words, for the audit log.
        #[arg(long, value_name = "TEXT")]
        why: Option<String>,
    },
    /// Revoke a device and its certificates, or a manufacturer's batch of devices.
    #[command(
        after_help = "A batch (--manufacturer, optionally with a serial range) revokes the \
                      manufacturer's devices in every tenant; without --yes it only prints \
                      how many devices it would revoke."
    )]
    Revoke {
        /// `tenant/device`, or `device` in the default tenant.
        #[arg(
            required_unless_present = "manufacturer",
            conflicts_with = "manufacturer"
        )]
        device: Option<DeviceRef>,
        /// Revoke this manufacturer's devices (a compromised CA or production batch).
        #[arg(long)]
        manufacturer: Option<ManufacturerId>,
        /// First serial number of the batch, inclusive.
        #[arg(long, requires_all = ["manufacturer", "serial_to"])]
        serial_from: Option<String>,
        /// Last serial number of the batch, inclusive.
        #[arg(long, requires_all = ["manufacturer", "serial_from"])]
        serial_to: Option<String>,
        /// The RFC 5280 reason put in the CRL (required for a batch; default unspecified).
        #[arg(long, value_enum)]
        reason: Option<Reason>,
        /// Why, in words, for the audit log.
        #[arg(long, value_name = "TEXT")]
        why: Option<String>,
        /// Carry out a batch revocation.
        #[arg(long)]
        yes: bool,
    },
}

/// A device status, as the command line spells it.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Status {
    Active,
    Revoked,
    Blocked,
}

/// A revocation reason, as the command line spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Reason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl Status {
    /// The name the REST API takes.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
            Self::Blocked => "blocked",
        }
    }
}

// === impl Reason ===

impl Reason {
    /// The name the REST API takes (RFC 5280's, in snake case).
    pub(super) fn api_name(self) -> String {
        serde_json::to_value(self.to_store())
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "unspecified".to_owned())
    }

    fn to_store(self) -> RevocationReason {
        match self {
            Self::Unspecified => RevocationReason::Unspecified,
            Self::KeyCompromise => RevocationReason::KeyCompromise,
            Self::CaCompromise => RevocationReason::CaCompromise,
            Self::AffiliationChanged => RevocationReason::AffiliationChanged,
            Self::Superseded => RevocationReason::Superseded,
            Self::CessationOfOperation => RevocationReason::CessationOfOperation,
            Self::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
        }
    }

    fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_owned())
    }
}

pub(super) fn run(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::List {
            tenant,
            status,
            model,
            limit,
            cursor,
        } => list(ctx, tenant, status, model, usize::from(limit), cursor),
        Command::Show { device } => show(ctx, &device),
        Command::Reinstate { device, why } => reinstate(ctx, &device, why),
        Command::Pin {
            device,
            tier,
            duration,
            reason,
        } => pin(ctx, &device, &tier, &duration, &reason),
        Command::Unpin { device, why } => unpin(ctx, &device, why),
        Command::Revoke {
            device,
            manufacturer,
            serial_from,
            serial_to,
            reason,
            why,
            yes,
        } => match (device, manufacturer) {
            (Some(d), _) => revoke_one(ctx, &d, reason.unwrap_or(Reason::Unspecified), why),
            (None, Some(m)) => {
                let reason = reason
                    .context("a batch revocation needs --reason (e.g. --reason key-compromise)")?;
                let range = serial_from.zip(serial_to);
                revoke_batch(ctx, m, range, reason, why, yes)
            }
            (None, None) => anyhow::bail!("name a device, or --manufacturer for a batch"),
        },
    }
}

fn list(
    ctx: &Ctx,
    tenant: Option<TenantId>,
    status: Option<Status>,
    model: Option<ModelId>,
    limit: usize,
    cursor: Option<String>,
) -> Result<()> {
    if let Some(t) = &tenant {
        ctx.require_tenant(t)?;
    }
    let filter = DeviceFilter {
        tenant,
        status: status.map(|s| match s {
            Status::Active => DeviceStatus::Active,
            Status::Revoked => DeviceStatus::Revoked,
            Status::Blocked => DeviceStatus::Blocked,
        }),
        model,
    };
    let cursor = cursor.map(Cursor::from_client);
    let page = ctx
        .store
        .list_devices(&filter, limit.min(MAX_PAGE), cursor.as_ref())
        .map_err(|e| match e {
            gatehouse_store::ReadError::BadCursor => {
                anyhow::anyhow!("invalid --cursor: pass one printed by a previous page")
            }
            other => other.into(),
        })?;
    ctx.list(&page.items, "no devices", || {
        let rows: Vec<Vec<String>> = page
            .items
            .iter()
            .map(|d| {
                vec![
                    d.device.to_string(),
                    d.model.to_string(),
                    assurance_name(d),
                    status_name(d.status).to_owned(),
                    fmt_opt_time(d.last_enrolled_at),
                ]
            })
            .collect();
        table(
            &["DEVICE", "MODEL", "ASSURANCE", "STATUS", "LAST ENROLLED"],
            &rows,
        )
    })?;
    // Where the next page starts: commentary, so that standard output stays the rows (or
    // the JSON array) alone.
    if let Some(next) = &page.next {
        eprintln!("more: --cursor {}", next.as_str());
    }
    Ok(())
}

fn show(ctx: &Ctx, d: &DeviceRef) -> Result<()> {
    let device = get(ctx, d)?;
    let certs = ctx.store.list_certificates(d)?;
    let now = OffsetDateTime::now_utc();
    // The device is shown even when its trust cannot be computed (a stored policy set
    // this build no longer validates, say): the reason takes the trust's place.
    let (trust, trust_error) = match gatehouse_runtime::view_offline(&ctx.store, &ctx.trust, d) {
        Ok(view) => (Some(view), None),
        Err(e) => (None, Some(one_line(&e.to_string()))),
    };
    let value = json!({
        "device": device,
        "certificates": certs,
        "trust": trust,
        "trust_error": trust_error,
    });
    ctx.print(&value, || {
        let mut t = String::new();
        let _ = writeln!(t, "device         {}", device.device);
        let _ = writeln!(t, "model          {}", device.model);
        let _ = writeln!(
            t,
            "manufacturer   {}",
            device
                .manufacturer
                .as_ref()
                .map_or("-", ManufacturerId::as_str)
        );
        let _ = writeln!(
            t,
            "serial         {}",
            device.serial.as_deref().unwrap_or("-")
        );
        let _ = writeln!(t, "assurance      {}", assurance_name(&device));
        let _ = writeln!(t, "status         {}", status_name(device.status));
        let _ = writeln!(t, "registered     {}", fmt_time(device.created_at));
        let _ = writeln!(
            t,
            "last enrolled  {}",
            fmt_opt_time(device.last_enrolled_at)
        );
        let tags = if device.tags.is_empty() {
            "-".to_owned()
        } else {
            device.tags.join(", ")
        };
        let _ = writeln!(t, "tags           {tags}");
        if certs.is_empty() {
            t.push_str("certificates   none\n");
        } else {
            let _ = writeln!(t, "certificates   {}", certs.len());
            let rows: Vec<Vec<String>> = certs
                .iter()
                .map(|c| {
                    vec![
                        c.serial.to_string(),
                        c.issuer.clone(),
                        fmt_time(c.not_before),
                        fmt_time(c.not_after),
                        cert_status(c, now),
                    ]
                })
                .collect();
            for line in table(
                &["SERIAL", "ISSUER", "NOT BEFORE", "NOT AFTER", "STATUS"],
                &rows,
            )
            .lines()
            {
                let _ = writeln!(t, "  {line}");
            }
        }
        match (&trust, &trust_error) {
            (Some(view), _) => {
                t.push_str("trust\n");
                for line in view.assessment.to_string().lines() {
                    let _ = writeln!(t, "  {line}");
                }
                if let Some(v) = &view.verdict {
                    write_verdict(&mut t, v);
                }
            }
            (None, Some(e)) => {
                let _ = writeln!(t, "trust          unavailable: {e}");
            }
            (None, None) => {}
        }
        t
    })
}

/// The verdict for people: whether the device may connect, the topics it may use with
/// their rates, and the explanation, one decision a line.
fn write_verdict(t: &mut String, v: &Verdict) {
    let _ = writeln!(
        t,
        "verdict        {}; publish {}, subscribe {} topic(s)",
        if v.may_connect() {
            "may connect"
        } else {
            "may not connect"
        },
        v.publish().len(),
        v.subscribe().len()
    );
    let rows: Vec<Vec<String>> = v
        .publish()
        .iter()
        .map(|a| topic_row("publish", a))
        .chain(v.subscribe().iter().map(|a| topic_row("subscribe", a)))
        .collect();
    if !rows.is_empty() {
        for line in table(&["ACTION", "TOPIC", "KIND", "RATE"], &rows).lines() {
            let _ = writeln!(t, "  {line}");
        }
    }
    t.push_str("  why\n");
    for line in v.explanation() {
        let _ = writeln!(t, "    {line}");
    }
}

fn topic_row(action: &str, a: &AllowedTopic) -> Vec<String> {
    let rate = match (a.rate_per_sec, a.burst) {
        (Some(r), Some(b)) => format!("{}, burst {b}", fmt_rate(r)),
        (Some(r), None) => fmt_rate(r),
        (None, _) => "-".to_owned(),
    };
    vec![
        action.to_owned(),
        a.pattern.clone(),
        a.kind.as_str().to_owned(),
        rate,
    ]
}

/// A rate for people, in the largest unit that keeps it at least 1: `10/s`, `0.5/min`.
fn fmt_rate(per_sec: f64) -> String {
    let (v, unit) = if per_sec >= 1.0 {
        (per_sec, "s")
    } else if per_sec * 60.0 >= 1.0 {
        (per_sec * 60.0, "min")
    } else {
        (per_sec * 3600.0, "h")
    };
    let n = format!("{v:.2}");
    let n = n.trim_end_matches('0').trim_end_matches('.');
    format!("{n}/{unit}")
}

/// An error's text on one line.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The tier `--tier` names.
fn parse_tier(s: &str) -> Result<Tier> {
    s.trim()
        .to_ascii_lowercase()
        .parse::<Tier>()
        .map_err(|e| anyhow::anyhow!("--tier: {e}"))
}

/// How long `--for` says, 1 minute to 1 year.
fn parse_pin_duration(s: &str) -> Result<Duration> {
    let d = humantime_serde::re::humantime::parse_duration(s.trim()).map_err(|e| {
        anyhow::anyhow!("--for {s:?}: {e} (write a duration such as 30m, 2h, 7days)")
    })?;
    anyhow::ensure!(d >= MIN_PIN, "--for {s:?}: a pin lasts at least 1 minute");
    anyhow::ensure!(d <= MAX_PIN, "--for {s:?}: a pin lasts at most 1 year");
    Ok(d)
}

/// The pin's reason: trimmed, non-empty, printable, at most 500 characters.
fn pin_reason(s: &str) -> Result<String> {
    let r = s.trim();
    anyhow::ensure!(
        !r.is_empty(),
        "--reason must say why the device is pinned; it may not be empty"
    );
    anyhow::ensure!(
        r.chars().count() <= MAX_REASON_CHARS && !r.chars().any(char::is_control),
        "--reason must be at most {MAX_REASON_CHARS} printable characters"
    );
    Ok(r.to_owned())
}

fn pin(ctx: &Ctx, d: &DeviceRef, tier: &str, duration: &str, reason: &str) -> Result<()> {
    // Everything is checked before the write.
    let tier = parse_tier(tier)?;
    let duration = parse_pin_duration(duration)?;
    let reason = pin_reason(reason)?;
    let device = get(ctx, d)?;
    let pin = ops::new_pin(tier, duration, reason, &ctx.actor);
    ops::write_pin(&ctx.store, d, Some(&pin), &ctx.actor, None)?;
    let scored = gatehouse_runtime::view_offline(&ctx.store, &ctx.trust, d)
        .ok()
        .map(|v| v.assessment.scored_tier);
    let until = fmt_time(OffsetDateTime::from(pin.expires_at));
    ctx.print(
        &json!({ "device": d, "pin": pin, "scored_tier": scored }),
        || {
            let mut t = format!(
                "pinned {d} to {tier} until {until}: {}
",
                pin.reason
            );
            if let Some(s) = scored {
                let _ = writeln!(t, "the score alone gives {s}");
            }
            if device.status != DeviceStatus::Active {
                let _ = writeln!(
                    t,
                    "note: the device is {}, so it stays blocked whatever its pin",
                    status_name(device.status)
                );
            }
            t
        },
    )
}

fn unpin(ctx: &Ctx, d: &DeviceRef, why: Option<String>) -> Result<()> {
    get(ctx, d)?;
    let stored = ctx
        .store
        .get_device_trust(d)?
        .and_then(|t| t.pin)
        .with_context(|| format!("device {d} is not pinned"))?;
    let expired =
        serde_json::from_value::<Pin>(stored).is_ok_and(|p| !p.is_active(SystemTime::now()));
    let why = why.unwrap_or_else(|| "unpinned from the command line".to_owned());
    ops::write_pin(&ctx.store, d, None, &ctx.actor, Some(&why))?;
    let view = gatehouse_runtime::view_offline(&ctx.store, &ctx.trust, d).ok();
    let tier = view.as_ref().map(|v| v.assessment.tier);
    ctx.print(&json!({ "device": d, "pin": null, "tier": tier }), || {
        let mut t = format!("unpinned {d}");
        if expired {
            t.push_str(" (its pin had already expired)");
        }
        if let Some(v) = &view {
            let _ = write!(
                t,
                ": tier {} from its score {}",
                v.assessment.tier, v.assessment.score
            );
        }
        t
    })
}

fn revoke_one(ctx: &Ctx, d: &DeviceRef, reason: Reason, why: Option<String>) -> Result<()> {
    let device = get(ctx, d)?;
    let valid = ctx
        .store
        .list_certificates(d)?
        .iter()
        .filter(|c| c.status == CertStatus::Valid)
        .count();
    if device.status == DeviceStatus::Revoked && valid == 0 {
        anyhow::bail!("device {d} is already revoked and has no valid certificate");
    }
    let why = why.unwrap_or_else(|| "revoked from the command line".to_owned());
    let certs = ops::write_revoke(&ctx.store, d, reason.to_store(), &ctx.actor, &why)?;
    ctx.print(
        &json!({
            "device": d,
            "reason": reason.name(),
            "revoked_certificates": serials(&certs),
        }),
        || {
            let mut t = format!(
                "revoked {d} ({}): {} certificate(s) revoked\n",
                reason.name(),
                certs.len()
            );
            for c in &certs {
                let _ = writeln!(t, "  {}", c.serial);
            }
            t
        },
    )
}

fn reinstate(ctx: &Ctx, d: &DeviceRef, why: Option<String>) -> Result<()> {
    let device = get(ctx, d)?;
    if device.status == DeviceStatus::Active {
        anyhow::bail!("device {d} is already active");
    }
    let why = why.unwrap_or_else(|| "reinstated from the command line".to_owned());
    let device = ops::write_reinstate(&ctx.store, d, &ctx.actor, &why)?;
    ctx.print(
        &json!({ "device": d, "status": status_name(device.status) }),
        || format!("reinstated {d}: it may enroll again\n"),
    )
}

fn revoke_batch(
    ctx: &Ctx,
    manufacturer: ManufacturerId,
    range: Option<(String, String)>,
    reason: Reason,
    why: Option<String>,
    yes: bool,
) -> Result<()> {
    if ctx.store.get_manufacturer(&manufacturer)?.is_none() {
        anyhow::bail!("manufacturer {manufacturer} not found");
    }
    let range = range.map(|(a, b)| (a.trim().to_owned(), b.trim().to_owned()));
    if let Some((first, last)) = &range {
        check_range(first, last)?;
    }
    let scope_text = match &range {
        Some((a, b)) => format!("manufacturer {manufacturer}, serials {a} to {b}"),
        None => format!("manufacturer {manufacturer}, every serial"),
    };
    let targets = batch_targets(ctx, &manufacturer, range.as_ref())?;
    if !yes {
        let text = format!(
            "{} device(s) would be revoked ({scope_text}, reason {})",
            targets.len(),
            reason.name()
        );
        ctx.print(
            &json!({ "would_revoke": targets.len(), "devices": targets }),
            || text.clone(),
        )?;
        anyhow::bail!("nothing revoked: pass --yes to revoke them");
    }
    let scope = match range.clone() {
        Some((first, last)) => BatchScope::SerialRange {
            manufacturer: manufacturer.clone(),
            first,
            last,
        },
        None => BatchScope::Manufacturer(manufacturer.clone()),
    };
    let entry = ctx
        .entry("revoke_batch", manufacturer.as_str())
        .reason(why.unwrap_or_else(|| "batch revoked from the command line".to_owned()))
        .detail(json!({
            "reason": reason.to_store(),
            "code": reason.to_store().code(),
            "serial_from": range.as_ref().map(|r| &r.0),
            "serial_to": range.as_ref().map(|r| &r.1),
        }));
    let at = entry.at;
    let done = ctx
        .store
        .revoke_batch(&scope, reason.to_store(), at, &entry)?;
    ctx.print(
        &json!({
            "devices": done.devices,
            "reason": reason.name(),
            "revoked_certificates": serials(&done.certificates),
        }),
        || {
            let mut t = format!(
                "revoked {} device(s) ({scope_text}, reason {}): {} certificate(s) revoked\n",
                done.devices.len(),
                reason.name(),
                done.certificates.len()
            );
            for c in &done.certificates {
                let _ = writeln!(t, "  {}  {}", c.serial, c.device);
            }
            t
        },
    )
}

/// The devices a batch revocation would revoke: the manufacturer's devices not yet
/// revoked, in every tenant, with a serial in the range (compared as the store does).
fn batch_targets(
    ctx: &Ctx,
    manufacturer: &ManufacturerId,
    range: Option<&(String, String)>,
) -> Result<Vec<DeviceRef>> {
    let mut out = Vec::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let page = ctx
            .store
            .list_devices(&DeviceFilter::default(), MAX_PAGE, cursor.as_ref())?;
        for d in &page.items {
            if in_batch(d, manufacturer, range) {
                out.push(d.device.clone());
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(out),
        }
    }
}

fn in_batch(d: &Device, manufacturer: &ManufacturerId, range: Option<&(String, String)>) -> bool {
    if d.manufacturer.as_ref() != Some(manufacturer) || d.status == DeviceStatus::Revoked {
        return false;
    }
    match (range, d.serial.as_deref()) {
        (None, _) => true,
        (Some((a, b)), Some(s)) => a.as_bytes() <= s.as_bytes() && s.as_bytes() <= b.as_bytes(),
        (Some(_), None) => false,
    }
}

/// A serial range must be ordered, and its ends the same length: serials are compared as
/// text, so `9` would come after `10`.
fn check_range(first: &str, last: &str) -> Result<()> {
    anyhow::ensure!(
        !first.is_empty() && !last.is_empty(),
        "--serial-from and --serial-to must not be empty"
    );
    anyhow::ensure!(
        first.len() == last.len(),
        "--serial-from and --serial-to must have the same length: serials are compared as \
         text (zero-pad them, e.g. SN0009 to SN0120)"
    );
    anyhow::ensure!(
        first <= last,
        "--serial-from {first} comes after --serial-to {last}"
    );
    Ok(())
}

fn get(ctx: &Ctx, d: &DeviceRef) -> Result<Device> {
    ctx.store
        .get_device(d)?
        .with_context(|| format!("device {d} not found"))
}

fn serials(certs: &[Certificate]) -> Vec<String> {
    certs.iter().map(|c| c.serial.to_string()).collect()
}

/// A device status for people.
pub(super) fn status_name(s: DeviceStatus) -> &'static str {
    match s {
        DeviceStatus::Active => "active",
        DeviceStatus::Revoked => "revoked",
        DeviceStatus::Blocked => "blocked",
        _ => "unknown",
    }
}

fn assurance_name(d: &Device) -> String {
    serde_json::to_value(d.assurance)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{:?}", d.assurance))
}

fn cert_status(c: &Certificate, now: OffsetDateTime) -> String {
    match c.status {
        CertStatus::Revoked => {
            let why = c
                .revocation_reason
                .and_then(|r| serde_json::to_value(r).ok())
                .and_then(|v| v.as_str().map(|s| s.replace('_', "-")))
                .unwrap_or_else(|| "unspecified".to_owned());
            format!("revoked {} ({why})", fmt_opt_time(c.revoked_at))
        }
        _ if c.not_after < now => "expired".to_owned(),
        _ => "valid".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_maps_to_its_rfc5280_code() {
        let codes: Vec<(String, u8)> = Reason::value_variants()
            .iter()
            .map(|r| (r.name(), r.to_store().code()))
            .collect();
        assert!(codes.contains(&("key-compromise".to_owned(), 1)));
        assert!(codes.contains(&("superseded".to_owned(), 4)));
        assert!(codes.contains(&("cessation-of-operation".to_owned(), 5)));
        assert!(codes.contains(&("unspecified".to_owned(), 0)));
    }

    #[test]
    fn pin_inputs_are_checked() {
        assert_eq!(parse_tier(" Quarantined ").ok(), Some(Tier::Quarantined));
        let err = parse_tier("superb").expect_err("not a tier").to_string();
        assert!(
            err.contains("unknown tier") && err.contains("quarantined"),
            "{err}"
        );
        assert_eq!(
            parse_pin_duration("2h").ok(),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(parse_pin_duration("1year").ok(), Some(MAX_PIN));
        assert!(parse_pin_duration("1year 1s").is_err());
        assert!(parse_pin_duration("59s").is_err());
        assert!(parse_pin_duration("forever").is_err());
        assert_eq!(
            pin_reason("  probing ports ").ok().as_deref(),
            Some("probing ports")
        );
        assert!(pin_reason(" ").is_err());
        assert!(pin_reason("a\nb").is_err());
        assert!(pin_reason(&"x".repeat(501)).is_err());
    }

    #[test]
    fn rates_read_in_the_largest_whole_unit() {
        assert_eq!(fmt_rate(10.0), "10/s");
        assert_eq!(fmt_rate(2.5), "2.5/s");
        assert_eq!(fmt_rate(0.5), "30/min");
        assert_eq!(fmt_rate(1.0 / 120.0), "30/h");
        assert_eq!(fmt_rate(1.0 / 60.0), "1/min");
    }

    #[test]
    fn errors_are_put_on_one_line() {
        assert_eq!(
            one_line("policy set refused:\n  - a\n\n  - b\n"),
            "policy set refused: - a - b"
        );
    }

    #[test]
    fn serial_ranges_must_be_ordered_and_padded() {
        assert!(check_range("SN0001", "SN0100").is_ok());
        assert!(check_range("SN0100", "SN0001").is_err());
        assert!(check_range("9", "10").is_err());
        assert!(check_range("", "").is_err());
    }
}
