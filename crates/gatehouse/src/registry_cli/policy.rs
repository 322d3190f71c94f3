//! `gatehouse policy show|validate|set|reset|history`: the Cedar policy set that turns
//! trust tiers into what devices may do. Every set is validated against Gatehouse's schema
//! before it is stored; the newest stored set is the one in force, and with none stored the
//! shipped defaults are (shown as version 0).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use gatehouse_store::{PolicySetRecord, Registry};
use gatehouse_trust::policy::{DEFAULT_POLICIES, PolicyEngine, PolicyError};
use serde_json::json;

use super::{Ctx, fmt_time, table};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the policy set in force: the newest stored set, or the shipped defaults
    /// (version 0) when none was stored.
    Show,
    /// Check a policy file against the schema without storing it: print its policy ids,
    /// or every problem (and exit non-zero).
    Validate {
        /// The policy file (Cedar).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Replace the policy set in force with a file's, once it validates; a refused set
    /// stores nothing.
    #[command(
        after_help = "The file is the whole set, not an addition: to add a rule to the \
                      defaults, start from `gatehouse policy show`. A running server applies \
                      the new set within its registry poll interval."
    )]
    Set {
        /// The policy file (Cedar).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Put the shipped default policy set back in force, as a new version.
    Reset,
    /// List the stored versions, newest first: who stored each, and when.
    History,
}

pub(super) fn run(ctx: &Ctx, command: Command) -> Result<()> {
    match command {
        Command::Show => show(ctx),
        Command::Validate { file } => validate(ctx, &file),
        Command::Set { file } => set(ctx, &file),
        Command::Reset => reset(ctx),
        Command::History => history(ctx),
    }
}

/// The ids of the policies in `text` once it validates, sorted; otherwise why not. A set
/// without a single policy is refused: it would refuse every device everything.
fn check(text: &str) -> Result<Vec<String>, PolicyError> {
    let mut engine = PolicyEngine::with_defaults();
    engine.load(text)?;
    let mut ids = engine.policy_ids();
    ids.sort();
    Ok(ids)
}

/// Every problem a refused set has, one entry each.
fn problems(e: &PolicyError) -> Vec<String> {
    match e {
        PolicyError::Parse(p) | PolicyError::Invalid(p) | PolicyError::Ids(p) => p.clone(),
        PolicyError::Schema(p) => p.iter().map(|x| format!("schema: {x}")).collect(),
        PolicyError::Templates(ids) => ids
            .iter()
            .map(|id| format!("{id}: templates are not supported"))
            .collect(),
        other => vec![other.to_string()],
    }
}

/// Reads a policy file and validates it; the error lists every problem, one a line.
fn read_valid(path: &Path) -> Result<(String, Vec<String>), Refused> {
    let text = read_policy_file(path).map_err(Refused::Other)?;
    match check(&text) {
        Ok(ids) if ids.is_empty() => Err(Refused::Policy(
            path.to_owned(),
            vec![
                "the set holds no policy: every device would be refused everything \
                 (to mean that, write a `forbid (principal, action, resource);`)"
                    .to_owned(),
            ],
        )),
        Ok(ids) => Ok((text, ids)),
        Err(e) => Err(Refused::Policy(path.to_owned(), problems(&e))),
    }
}

/// Why a policy file was not accepted.
enum Refused {
    /// It could not be read.
    Other(anyhow::Error),
    /// It was read and refused: the file and every problem.
    Policy(PathBuf, Vec<String>),
}

// === impl Refused ===

impl Refused {
    /// Prints the problems as JSON in JSON mode, then returns the error: every problem
    /// on its own line.
    fn report(self, ctx: &Ctx) -> anyhow::Error {
        match self {
            Self::Other(e) => e,
            Self::Policy(path, problems) => {
                if ctx.json {
                    let value = json!({ "ok": false, "problems": problems });
                    let _ = crate::output::print_json(&value);
                }
                let mut msg = format!(
                    "policy set {} refused, {} problem(s):",
                    path.display(),
                    problems.len()
                );
                for p in &problems {
                    let _ = write!(msg, "\n  - {}", p.replace('\n', "\n    "));
                }
                anyhow::anyhow!(msg)
            }
        }
    }
}

fn read_policy_file(path: &Path) -> Result<String> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    anyhow::ensure!(
        len <= PolicySetRecord::MAX_TEXT_BYTES as u64,
        "{} is {len} bytes; a policy set may be at most {} bytes",
        path.display(),
        PolicySetRecord::MAX_TEXT_BYTES
    );
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn show(ctx: &Ctx) -> Result<()> {
    let current = ctx.store.current_policy_set()?;
    let (version, text, created_at, created_by) = match &current {
        Some(r) => (
            r.version,
            r.text.as_str(),
            Some(r.created_at),
            Some(r.created_by.as_str()),
        ),
        None => (0, DEFAULT_POLICIES, None, None),
    };
    // A stored set validated when it was stored; say so if this build no longer accepts it.
    let (ids, refused) = match check(text) {
        Ok(ids) => (Some(ids), None),
        Err(e) => (None, Some(problems(&e))),
    };
    if ctx.json {
        return crate::output::print_json(&json!({
            "version": version,
            "defaults": text == DEFAULT_POLICIES,
            "created_at": created_at.map(|t| t.unix_timestamp()),
            "created_by": created_by,
            "policies": ids,
            "problems": refused,
            "text": text,
        }));
    }
    // Which set this is goes to standard error, the text alone to standard output: it can
    // be saved, edited and given back to `policy validate` and `policy set`.
    let mut about = match (created_at, created_by) {
        (Some(at), Some(by)) => format!(
            "policy set version {version}, stored {} by {by}{}\n",
            fmt_time(at),
            if text == DEFAULT_POLICIES {
                " (the shipped defaults)"
            } else {
                ""
            }
        ),
        _ => format!("policy set version {version}: the shipped defaults (none stored)\n"),
    };
    match (&ids, &refused) {
        (Some(ids), _) => {
            let _ = writeln!(about, "policies: {}", ids.join(", "));
        }
        (None, Some(problems)) => {
            about.push_str(
                "warning: this set no longer validates against the schema; a server \
                 starting now puts the shipped defaults in force instead:\n",
            );
            for p in problems {
                let _ = writeln!(about, "  - {p}");
            }
        }
        (None, None) => {}
    }
    eprint!("{about}");
    Ok(crate::output::print(text)?)
}

fn validate(ctx: &Ctx, file: &Path) -> Result<()> {
    let (_, ids) = read_valid(file).map_err(|r| r.report(ctx))?;
    ctx.print(&json!({ "ok": true, "policies": ids }), || {
        format!(
            "OK: {} is a valid policy set of {} policies: {}",
            file.display(),
            ids.len(),
            ids.join(", ")
        )
    })
}

fn set(ctx: &Ctx, file: &Path) -> Result<()> {
    let (text, ids) = read_valid(file).map_err(|r| r.report(ctx))?;
    store(ctx, &text, ids, "policy set replaced from the command line")
}

fn reset(ctx: &Ctx) -> Result<()> {
    let ids = check(DEFAULT_POLICIES).context("the shipped default policy set")?;
    store(
        ctx,
        DEFAULT_POLICIES,
        ids,
        "policy set reset to the shipped defaults",
    )
}

/// Stores `text` as the next version, audited as `set_policy`.
fn store(ctx: &Ctx, text: &str, ids: Vec<String>, reason: &str) -> Result<()> {
    let record =
        gatehouse_runtime::ops::write_policy_set(&ctx.store, text, &ids, &ctx.actor, reason)?;
    ctx.print(
        &json!({ "version": record.version, "policies": ids }),
        || {
            format!(
                "policy set version {} stored and in force: {} policies ({})\n\
                 a running server applies it within its registry poll interval",
                record.version,
                ids.len(),
                ids.join(", ")
            )
        },
    )
}

fn history(ctx: &Ctx) -> Result<()> {
    let sets = ctx.store.list_policy_sets()?;
    let newest = sets.first().map(|r| r.version);
    let views: Vec<_> = sets
        .iter()
        .map(|r| {
            json!({
                "version": r.version,
                "created_at": r.created_at.unix_timestamp(),
                "created_by": r.created_by,
                "in_force": Some(r.version) == newest,
                "defaults": r.text == DEFAULT_POLICIES,
                "policies": check(&r.text).ok(),
            })
        })
        .collect();
    ctx.list(
        &views,
        "no policy set stored: the shipped defaults (version 0) are in force",
        || {
            let rows: Vec<Vec<String>> = sets
                .iter()
                .map(|r| {
                    let mut notes = Vec::new();
                    if Some(r.version) == newest {
                        notes.push("in force");
                    }
                    if r.text == DEFAULT_POLICIES {
                        notes.push("shipped defaults");
                    }
                    vec![
                        r.version.to_string(),
                        fmt_time(r.created_at),
                        r.created_by.clone(),
                        check(&r.text)
                            .map_or_else(|_| "invalid".to_owned(), |ids| ids.len().to_string()),
                        notes.join(", "),
                    ]
                })
                .collect();
            table(&["VERSION", "STORED", "BY", "POLICIES", "NOTE"], &rows)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_validate_and_an_empty_set_does_not_count() {
        let ids = check(DEFAULT_POLICIES).expect("defaults");
        assert!(ids.contains(&"connect".to_owned()), "{ids:?}");
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert_eq!(check("").ok(), Some(Vec::new()));
    }

    #[test]
    fn every_problem_is_listed() {
        let bad = "@id(\"a\") permit (principal, action, resource) when { principal.colour == \"red\" };\n\
                   @id(\"b\") permit (principal, action, resource) when { resource.size > 1 };\n";
        let e = check(bad).expect_err("refused");
        let p = problems(&e);
        assert!(
            p.iter().any(|x| x.contains("`a`") && x.contains("colour")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|x| x.contains("`b`") && x.contains("size")),
            "{p:?}"
        );
        let parse = check("permit (principal, action resource);").expect_err("refused");
        assert!(!problems(&parse).is_empty());
    }
}
