//! `gatehouse audit verify|export|tail`: the hash-chained audit log.

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use gatehouse_store::audit::verify_jsonl;
use gatehouse_store::{AuditLog, AuditRecord, Tamper, VerifyError, VerifyReport};
use serde_json::json;

use super::{Ctx, fmt_time, table};

/// Records read per call while searching the log.
const PAGE: usize = 1000;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the whole chain; exit non-zero and name the first bad record if it is broken.
    Verify {
        /// Check an export (`audit export`) instead of the registry's log.
        #[arg(value_name = "EXPORT")]
        file: Option<PathBuf>,
        /// A head hash noted earlier: the log must still hold that record (this catches
        /// records removed from the end, which the chain alone cannot show).
        #[arg(long, value_name = "HASH")]
        head: Option<String>,
    },
    /// Write every record as one JSON line, in order.
    Export {
        /// Write to this file instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Show the newest records.
    Tail {
        /// How many.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
    },
}

pub(super) fn run(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::Verify { file, head } => verify(ctx, file.as_deref(), head.as_deref()),
        Command::Export { out } => export(ctx, out.as_deref()),
        Command::Tail { limit } => tail(ctx, usize::from(limit)),
    }
}

fn verify(ctx: &Ctx, file: Option<&Path>, head: Option<&str>) -> Result<()> {
    let (what, result, records) = match file {
        Some(path) => {
            let open = || {
                std::fs::File::open(path)
                    .map(BufReader::new)
                    .with_context(|| format!("opening {}", path.display()))
            };
            let result = verify_jsonl(open()?);
            let records = match (&result, head) {
                (Ok(_), Some(_)) => gatehouse_store::audit::read_jsonl(open()?)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
                _ => Vec::new(),
            };
            (
                format!("audit export {}", path.display()),
                result,
                Some(records),
            )
        }
        None => ("audit log".to_owned(), ctx.store.verify(), None),
    };
    let report = result.map_err(|e| anyhow::anyhow!("{what} is broken: {}", explain(&e)))?;
    if let Some(h) = head {
        let h = h.trim().to_ascii_lowercase();
        let found = match &records {
            Some(rs) => rs.iter().any(|r| r.hash == h),
            None => contains_hash(ctx, &h)?,
        };
        anyhow::ensure!(
            found,
            "{what} no longer holds the record with hash {h}: records were removed from its end"
        );
    }
    print_report(ctx, &what, &report)
}

fn print_report(ctx: &Ctx, what: &str, r: &VerifyReport) -> Result<()> {
    ctx.print(
        &json!({
            "ok": true,
            "records": r.records,
            "head_seq": r.head_seq,
            "head_hash": r.head_hash,
        }),
        || {
            format!(
                "{what} intact: {} record(s); head seq {}, hash {}\n\
                 keep the head hash elsewhere and pass it as --head later to detect \
                 records removed from the end",
                r.records, r.head_seq, r.head_hash
            )
        },
    )
}

/// A verification failure for people, naming the record.
fn explain(e: &VerifyError) -> String {
    match e {
        VerifyError::Tampered { seq, kind } => match kind {
            Tamper::Edited => {
                format!("record {seq} was edited (its content does not match its hash)")
            }
            Tamper::Deleted => format!("records before record {seq} were deleted"),
            Tamper::Inserted => {
                format!("record {seq} was inserted (it does not belong to the chain)")
            }
            Tamper::Reordered => format!("record {seq} is out of order"),
            other => format!("record {seq}: {other}"),
        },
        other => other.to_string(),
    }
}

/// Whether the log holds a record with this hash.
fn contains_hash(ctx: &Ctx, hash: &str) -> Result<bool> {
    let mut from = 1;
    loop {
        let records = ctx.store.audit_records(from, PAGE)?;
        if records.iter().any(|r| r.hash == hash) {
            return Ok(true);
        }
        match records.last() {
            Some(last) if records.len() == PAGE => from = last.seq + 1,
            _ => return Ok(false),
        }
    }
}

fn export(ctx: &Ctx, out: Option<&Path>) -> Result<()> {
    match out {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut w = std::io::BufWriter::new(file);
            let n = ctx.store.export_jsonl(&mut w)?;
            w.flush()
                .and_then(|()| w.get_ref().sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("exported {n} record(s) to {}", path.display());
        }
        None => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            ctx.store.export_jsonl(&mut w)?;
            w.flush()?;
        }
    }
    Ok(())
}

fn tail(ctx: &Ctx, limit: usize) -> Result<()> {
    let records: Vec<AuditRecord> = match ctx.store.audit_head()? {
        None => Vec::new(),
        Some((head, _)) => {
            let from = head.saturating_sub(limit as u64 - 1).max(1);
            ctx.store.audit_records(from, limit)?
        }
    };
    ctx.list(&records, "the audit log is empty", || {
        let rows: Vec<Vec<String>> = records
            .iter()
            .map(|r| {
                vec![
                    r.seq.to_string(),
                    r.at_time().map_or_else(|| r.at.to_string(), fmt_time),
                    r.actor.clone(),
                    r.action.clone(),
                    r.subject.clone(),
                    r.outcome.clone(),
                    r.reason.clone(),
                ]
            })
            .collect();
        table(
            &[
                "SEQ", "AT", "ACTOR", "ACTION", "SUBJECT", "OUTCOME", "REASON",
            ],
            &rows,
        )
    })
}
