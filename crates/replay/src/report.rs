//! One call per recording, one report for them all, as a table or JSON.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::time::Duration;

use gatehouse_detect::{DetectConfig, ProfileView};
use gatehouse_types::Finding;
use serde::Serialize;

use crate::capture::{CaptureError, CaptureOptions, capture_trace};
use crate::run::{replay_end, run_with_profiles};
use crate::score::{Score, ScoreOptions, Scored, score};
use crate::telemetry::{TelemetryError, TelemetryOptions, model_from_file_name, telemetry_trace};
use crate::trace::{Extraction, Trace, Unit};

/// What a recording holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// A pcap or pcapng capture of MQTT traffic.
    Pcap,
    /// A device telemetry CSV.
    Csv,
}

impl Format {
    /// The format a file name's extension names: `.pcap`, `.pcapng`, `.cap` or `.csv`.
    pub fn from_extension(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "pcap" | "pcapng" | "cap" => Some(Self::Pcap),
            "csv" => Some(Self::Csv),
            _ => None,
        }
    }

    /// The format the first bytes show: a pcap or pcapng magic number, else CSV.
    pub fn sniff(head: &[u8]) -> Self {
        const MAGICS: [[u8; 4]; 5] = [
            [0x0A, 0x0D, 0x0D, 0x0A],
            [0xD4, 0xC3, 0xB2, 0xA1],
            [0xA1, 0xB2, 0xC3, 0xD4],
            [0x4D, 0x3C, 0xB2, 0xA1],
            [0xA1, 0xB2, 0x3C, 0x4D],
        ];
        if MAGICS.iter().any(|m| head.starts_with(m)) {
            Self::Pcap
        } else {
            Self::Csv
        }
    }
}

/// How to read one recording.
#[derive(Debug, Clone, Default)]
pub struct RecordingSpec {
    /// Its format; `None`: by extension, else by its first bytes.
    pub format: Option<Format>,
    /// Class of every unit. Captures: by default the file name up to its first `-`, `_`
    /// or `.` (`bruteforce-train.pcapng` → `bruteforce`). Telemetry: by default each
    /// row's `type` column (or `label`: 0 normal, 1 attack).
    pub label: Option<String>,
    /// Telemetry: the device model; by default from the file name
    /// (`Train_Test_IoT_Fridge.csv` → `fridge`).
    pub model: Option<String>,
}

/// Why a recording could not be replayed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The file could not be opened or read.
    #[error("reading {path}")]
    Open {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The capture could not be read.
    #[error("reading the capture {path}")]
    Capture {
        /// The file.
        path: String,
        /// What was wrong.
        source: CaptureError,
    },
    /// The telemetry file could not be read.
    #[error("reading the telemetry file {path}")]
    Telemetry {
        /// The file.
        path: String,
        /// What was wrong.
        source: TelemetryError,
    },
    /// No class for a capture: its file name gives none and none was given.
    #[error("{0}: no class; name it with --label")]
    NoLabel(String),
}

/// One recording, replayed.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// The file name.
    pub name: String,
    /// Its format.
    pub format: Format,
    /// Its units.
    pub units: Vec<Unit>,
    /// What was read.
    pub extraction: Extraction,
    /// Every finding the engine raised.
    pub findings: Vec<Finding>,
}

/// The class a capture's file name gives: its name up to the first `-`, `_` or `.`.
pub fn label_from_file_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let stem = base.split(['-', '_', '.']).next().unwrap_or("");
    let stem = stem.trim().to_ascii_lowercase();
    (!stem.is_empty()).then_some(stem)
}

/// Reads `path` and runs one detection engine, configured by `config`, over it.
pub fn replay_file(
    path: &Path,
    spec: &RecordingSpec,
    config: &DetectConfig,
) -> Result<Replayed, ReplayError> {
    replay_file_with_profiles(path, spec, config, &[])
}

/// [`replay_file`], with these model profiles known to the engine.
pub fn replay_file_with_profiles(
    path: &Path,
    spec: &RecordingSpec,
    config: &DetectConfig,
    profiles: &[ProfileView],
) -> Result<Replayed, ReplayError> {
    let (name, format, trace) = read_recording(path, spec)?;
    let findings = run_with_profiles(&trace, config.clone(), profiles)
        .into_iter()
        .map(|e| e.finding)
        .collect();
    let end = replay_end(&trace);
    let mut units = trace.units;
    // A connection the capture did not see end is open for the whole replay.
    if let Some(end) = end {
        for u in units.iter_mut().filter(|u| u.open) {
            u.last = u.last.max(end);
        }
    }
    Ok(Replayed {
        name,
        format,
        units,
        extraction: trace.extraction,
        findings,
    })
}

/// Reads `path` into a trace: its file name, its format and what it yielded.
pub fn read_recording(
    path: &Path,
    spec: &RecordingSpec,
) -> Result<(String, Format, Trace), ReplayError> {
    let shown = path.display().to_string();
    let name = path
        .file_name()
        .map_or_else(|| shown.clone(), |n| n.to_string_lossy().into_owned());
    let open_err = |source| ReplayError::Open {
        path: shown.clone(),
        source,
    };
    let mut file = BufReader::new(File::open(path).map_err(open_err)?);
    let format = match spec.format.or_else(|| Format::from_extension(path)) {
        Some(f) => f,
        None => {
            let mut head = [0u8; 4];
            let n = file.read(&mut head).map_err(open_err)?;
            let f = Format::sniff(&head[..n]);
            file = BufReader::new(File::open(path).map_err(open_err)?);
            f
        }
    };
    let trace = match format {
        Format::Pcap => {
            let label = spec
                .label
                .clone()
                .or_else(|| label_from_file_name(&name))
                .ok_or_else(|| ReplayError::NoLabel(shown.clone()))?;
            capture_trace(file, &CaptureOptions::new(label)).map_err(|source| {
                ReplayError::Capture {
                    path: shown.clone(),
                    source,
                }
            })?
        }
        Format::Csv => {
            let mut opts = TelemetryOptions::new(
                spec.model
                    .clone()
                    .unwrap_or_else(|| model_from_file_name(&name)),
            );
            opts.label.clone_from(&spec.label);
            telemetry_trace(file, &opts).map_err(|source| ReplayError::Telemetry {
                path: shown.clone(),
                source,
            })?
        }
    };
    Ok((name, format, trace))
}

/// One recording's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct RecordingSummary {
    /// The file name.
    pub name: String,
    /// Its format.
    pub format: Format,
    /// `flow` or `row`.
    pub unit: &'static str,
    /// Units, by class.
    pub units: u64,
    /// Findings raised.
    pub findings: u64,
    /// What was read.
    pub extraction: Extraction,
}

/// The report of a replay.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// One entry per recording.
    pub recordings: Vec<RecordingSummary>,
    /// The score over all of them.
    pub score: Score,
}

/// Scores replayed recordings; `hold` is how long a finding stands (the engine's
/// cooldown, by default).
pub fn report(replayed: &[Replayed], hold: Duration) -> Report {
    let runs: Vec<Scored<'_>> = replayed
        .iter()
        .map(|r| Scored {
            units: &r.units,
            findings: &r.findings,
        })
        .collect();
    let score = score(
        &runs,
        &ScoreOptions {
            hold,
            ..Default::default()
        },
    );
    Report {
        recordings: replayed
            .iter()
            .map(|r| RecordingSummary {
                name: r.name.clone(),
                format: r.format,
                unit: match r.format {
                    Format::Pcap => "flow",
                    Format::Csv => "row",
                },
                units: r.units.len() as u64,
                findings: r.findings.len() as u64,
                extraction: r.extraction.clone(),
            })
            .collect(),
        score,
    }
}

fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}s"))
}

impl Report {
    /// The report as tables for people.
    pub fn to_table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "recordings");
        let _ = writeln!(
            o,
            "  {:<34} {:>6} {:>5} {:>7} {:>8} {:>7} {:>9} {:>9} {:>8}",
            "file",
            "format",
            "unit",
            "units",
            "connects",
            "authfail",
            "publishes",
            "findings",
            "gaps"
        );
        for r in &self.recordings {
            let x = &r.extraction;
            let _ = writeln!(
                o,
                "  {:<34} {:>6} {:>5} {:>7} {:>8} {:>7} {:>9} {:>9} {:>8}",
                r.name,
                x.format,
                r.unit,
                r.units,
                x.connects,
                x.auth_failures,
                x.publishes,
                r.findings,
                x.reassembly.gaps
            );
            if let Some(e) = &x.first_bad_frame {
                let _ = writeln!(o, "    {} bad frames; first: {e}", x.bad_frames);
            }
        }
        let s = &self.score;
        let _ = writeln!(
            o,
            "\nper class (a unit is flagged by a finding about its client address or device raised \
             between {:.0}s before its start and its end)",
            s.hold_secs
        );
        let _ = writeln!(
            o,
            "  {:<12} {:>7} {:>7} {:>9} {:>9} {:>6} {:>6} {:>8} {:>8} {:>9} {:>9}",
            "class",
            "units",
            "flagged",
            "precision",
            "recall",
            "F1",
            "FPR",
            "episodes",
            "detected",
            "TTD p50",
            "TTD p95"
        );
        for c in &s.classes {
            let _ = writeln!(
                o,
                "  {:<12} {:>7} {:>7} {:>9} {:>9} {:>6} {:>6} {:>8} {:>8} {:>9} {:>9}",
                c.class,
                c.units,
                c.flagged,
                num(c.precision),
                num(c.recall),
                num(c.f1),
                num(c.fpr),
                c.episodes,
                c.episodes_detected,
                secs(c.ttd_median_secs),
                secs(c.ttd_p95_secs)
            );
        }
        let v = &s.overall;
        let _ = writeln!(
            o,
            "  {:<12} tp {} fp {} tn {} fn {}: precision {} recall {} F1 {} FPR {}",
            "overall",
            v.tp,
            v.fp,
            v.tn,
            v.fn_,
            num(v.precision),
            num(v.recall),
            num(v.f1),
            num(v.fpr)
        );
        let kinds: BTreeSet<&String> = s.classes.iter().flat_map(|c| c.kinds.keys()).collect();
        let _ = writeln!(
            o,
            "\nunits flagged, by finding kind (rows) and class (columns)"
        );
        let _ = write!(o, "  {:<30}", "kind");
        for c in &s.classes {
            let _ = write!(o, " {:>11}", c.class);
        }
        let _ = writeln!(o, " {:>9}", "findings");
        for k in kinds
            .iter()
            .copied()
            .chain(s.findings_by_kind.keys().filter(|k| !kinds.contains(k)))
        {
            let _ = write!(o, "  {k:<30}");
            for c in &s.classes {
                let _ = write!(o, " {:>11}", c.kinds.get(k).copied().unwrap_or(0));
            }
            let _ = writeln!(o, " {:>9}", s.findings_by_kind.get(k).copied().unwrap_or(0));
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_formats_from_names() {
        assert_eq!(
            label_from_file_name("data/bruteforce-train.pcapng").as_deref(),
            Some("bruteforce")
        );
        assert_eq!(
            label_from_file_name("Benign.pcap").as_deref(),
            Some("benign")
        );
        assert_eq!(label_from_file_name("-x.pcap"), None);
        assert_eq!(
            Format::from_extension(Path::new("a.PCAPNG")),
            Some(Format::Pcap)
        );
        assert_eq!(
            Format::from_extension(Path::new("a.csv")),
            Some(Format::Csv)
        );
        assert_eq!(Format::from_extension(Path::new("a.bin")), None);
        assert_eq!(Format::sniff(&[0x0A, 0x0D, 0x0D, 0x0A]), Format::Pcap);
        assert_eq!(Format::sniff(&[0xD4, 0xC3, 0xB2, 0xA1]), Format::Pcap);
        assert_eq!(Format::sniff(b"ts,a"), Format::Csv);
    }
}
