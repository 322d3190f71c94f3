//! `gatehouse sbom`: SBOM documents read and reported, nothing stored.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use gatehouse_sbom::{Limits, Sbom};

use crate::output;

#[derive(Debug, Subcommand)]
pub enum SbomCommand {
    /// Read an SBOM (CycloneDX or SPDX JSON) and report its format, components, purls and
    /// problems, without storing it. A refused document exits non-zero with the reason.
    Check {
        /// The SBOM file.
        file: PathBuf,
        /// Print the whole reading as JSON (every component and purl).
        #[arg(long)]
        json: bool,
        /// How many purls to list in text mode.
        #[arg(long, default_value_t = 20)]
        purls: usize,
    },
}

pub fn run(command: SbomCommand) -> anyhow::Result<()> {
    match command {
        SbomCommand::Check { file, json, purls } => {
            let sbom = gatehouse_sbom::read_file(&file, &Limits::default())
                .with_context(|| format!("{} refused", file.display()))?;
            if json {
                output::print_json(&sbom)
            } else {
                Ok(output::print(&report(&sbom, purls))?)
            }
        }
    }
}

/// The text report: a summary, the first `max_purls` purls, every problem.
fn report(sbom: &Sbom, max_purls: usize) -> String {
    let mut out = String::new();
    let purls: Vec<&str> = sbom
        .components
        .iter()
        .filter_map(|c| c.purl.as_deref())
        .collect();
    let _ = writeln!(out, "format: {} {}", sbom.format, sbom.spec_version);
    if let Some(name) = &sbom.name {
        let _ = writeln!(out, "name: {name}");
    }
    let _ = writeln!(
        out,
        "components: {} ({} with a purl, {} with a CPE)",
        sbom.components.len(),
        purls.len(),
        sbom.components.iter().filter(|c| c.cpe.is_some()).count()
    );
    if !purls.is_empty() {
        let shown = purls.len().min(max_purls);
        let _ = writeln!(out, "purls ({shown} of {}):", purls.len());
        for p in &purls[..shown] {
            let _ = writeln!(out, "  {p}");
        }
    }
    let _ = writeln!(out, "problems: {}", sbom.problems.len());
    for p in &sbom.problems {
        let _ = writeln!(out, "  {p}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_lists_the_first_purls_and_every_problem() {
        let doc = br#"{"bomFormat":"CycloneDX","specVersion":"1.5","components":[
            {"name":"a","version":"1","purl":"pkg:npm/a@1"},
            {"name":"b","version":"2","purl":"pkg:npm/b@2"},
            {"name":"c","purl":"npm/c"}]}"#;
        let sbom = gatehouse_sbom::parse(doc, &Limits::default()).expect("a valid document");
        let text = report(&sbom, 1);
        assert!(text.contains("format: CycloneDX 1.5\n"), "{text}");
        assert!(
            text.contains("components: 3 (2 with a purl, 0 with a CPE)"),
            "{text}"
        );
        assert!(
            text.contains("purls (1 of 2):\n  pkg:npm/a@1\nproblems: 2\n"),
            "{text}"
        );
        assert!(text.contains("/components/2/purl: invalid purl"), "{text}");
    }
}
