//! `gatehouse replay`: score the detectors on recorded, labelled traffic (wiring only; the
//! readers, the engine run and the score are `gatehouse-replay`'s).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use gatehouse_replay::{
    DetectConfig, Format, ProfileView, RecordingSpec, read_recording, replay_file_with_profiles,
    report,
};

const LONG_ABOUT: &str = "\
Replay recorded, labelled traffic through the detection engine, offline, and score its findings.

Each FILE is replayed on its own engine, on the recording's clock (the engine is ticked every
second of trace time), through the same MQTT decoder and detection code as `gatehouse serve`.

INPUTS
  Packet captures (--format pcap; .pcap, .pcapng, .cap): classic libpcap (2.4, micro- or
  nanosecond) or pcapng, whatever the extension says. Link types: Ethernet (1, with 802.1Q
  tags), Linux cooked capture v1 (113) and v2 (276), raw IP (101), BSD loopback (0); IPv4 or
  IPv6, TCP. Each TCP direction is reassembled in sequence order; the client's bytes (the
  side that sent the SYN, else the side not on port 1883/8883) are decoded as MQTT 3.1.1/5.0.
  CONNECT + accepting CONNACK -> Connect; refused CONNACK, malformed CONNECT, or a connection
  closed before the CONNACK -> AuthFailure; SUBSCRIBE -> Subscribe (per filter); PUBLISH ->
  Publish; DISCONNECT, undecodable bytes, FIN/RST -> Disconnect. Identities: tenant `replay`,
  device = client id, else user name, else anon-<address> (made a valid id when it is not).
  Class: --label, else the file name up to its first '-', '_' or '.' (benign-train.pcap ->
  benign). Every flow of a capture has its class.

  Telemetry (--format csv; .csv): one device per file. Header row (a UTF-8 BOM is ignored),
  a `ts` column (Unix seconds), optional `date`, `time`, and `type` (class per row) or `label`
  (0 normal, 1 attack); every other column is a reading. Rows are replayed in `ts` order as
  Publish of a JSON object of the readings ({\"fridge_temperature\":9,\"temp_condition\":\"high\"})
  to devices/<model>-1/telemetry; <model> is --model, else the file name after `IoT_`
  (Train_Test_IoT_Fridge.csv -> fridge). --label overrides the per-row class.

SCORE
  Unit: a TCP flow (captures), a row (telemetry). A finding flags the units whose client
  address is its peer or that carry its device, when raised between --hold before the unit's
  first packet (or row time) and its last (a flow the capture did not see close counts as open
  until the replay's last tick, 60 s of trace time after the last observation). Classes `benign` and `normal` are negative, all
  others attacks. Per attack class: recall = flagged/units, precision = flagged / (flagged +
  flagged negatives of the run), F1. FPR = flagged negatives / negatives. Time to detect: per
  episode (a run of one subject's units of one class), from its first packet to the first
  finding about its subject while it runs; median and p95 (nearest rank). See docs/replay.md.";

/// Arguments of `gatehouse replay`.
#[derive(Debug, Args)]
#[command(after_long_help = LONG_ABOUT)]
pub struct ReplayArgs {
    /// Recordings: packet captures (pcap, pcapng) or telemetry CSV files.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Format of every FILE; by default from its extension, else from its first bytes.
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// Class of every unit (e.g. benign, bruteforce); by default from the file name
    /// (captures) or the `type`/`label` column (telemetry).
    #[arg(long, value_name = "CLASS")]
    label: Option<String>,
    /// Telemetry: the device model; by default from the file name.
    #[arg(long)]
    model: Option<String>,
    /// Detection thresholds: a gatehouse configuration file (its `[detect.rules]`), or a TOML
    /// file of those keys at top level. Default: the built-in defaults.
    #[arg(long, value_name = "FILE")]
    detect_config: Option<PathBuf>,
    /// How long a finding flags its subject's units after it is raised, e.g. 5m; default:
    /// the detection cooldown.
    #[arg(long, value_parser = crate::humantime_duration)]
    hold: Option<Duration>,
    /// A model profile (TOML, as `gatehouse model profile` takes, e.g. one written by
    /// `gatehouse profile learn`) for the engine to know: its topics, rates and payload
    /// field ranges apply to the recordings' devices of its model. Repeat for several.
    #[arg(long, value_name = "FILE")]
    profile: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `gatehouse profile learn`.
#[derive(Debug, Args)]
pub struct LearnArgs {
    /// Recordings of the model's devices: telemetry CSV files or packet captures, read as
    /// `gatehouse replay` reads them. Only units of class `benign` or `normal` are learned
    /// from.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Format of every FILE; by default from its extension, else from its first bytes.
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// The model; by default from the first file's name (telemetry) .
    #[arg(long)]
    model: Option<String>,
    /// The model's manufacturer, as registered.
    #[arg(long)]
    manufacturer: String,
    /// The model's current firmware version, for the profile's `[firmware]`.
    #[arg(long, value_name = "VERSION")]
    firmware: String,
    /// Write the profile here instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// `gatehouse profile …`
#[derive(Debug, clap::Subcommand)]
pub enum ProfileCommand {
    /// Learn a model profile from recorded benign traffic: the topics its devices publish
    /// on, generous rates, and robust ranges of each numeric reading (0.1%..99.9% of the
    /// benign readings, widened by a tenth). Prints TOML to review, then upload with
    /// `gatehouse model profile MODEL FILE`, or try with `gatehouse replay --profile FILE`.
    Learn(LearnArgs),
}

/// Runs `gatehouse profile …`.
pub fn profile(command: ProfileCommand) -> anyhow::Result<()> {
    match command {
        ProfileCommand::Learn(args) => learn(args),
    }
}

fn learn(args: LearnArgs) -> anyhow::Result<()> {
    let spec = RecordingSpec {
        format: args.format.map(FormatArg::format),
        label: None,
        model: args.model.clone(),
    };
    let mut traces = Vec::with_capacity(args.files.len());
    let mut names = Vec::with_capacity(args.files.len());
    let mut model = args.model.clone();
    for path in &args.files {
        let (name, _, trace) = read_recording(path, &spec)?;
        if model.is_none() {
            model = trace.models.first().map(|(_, m)| m.clone());
        }
        names.push(name);
        traces.push(trace);
    }
    let model = model
        .context("no model: the recordings do not name one (captures do not); give --model")?;
    let learned = gatehouse_replay::learn::learn(&model, &traces);
    anyhow::ensure!(
        learned.benign_units > 0,
        "no benign units in {} units read: profiles are learned from units of class benign \
         or normal only (telemetry: the type/label column; captures: the file name)",
        learned.units
    );
    let text = learned.to_toml(&args.manufacturer, &args.firmware, &names);
    // What is written must be a profile the server takes.
    gatehouse_trust::profile::ModelProfile::parse(&text).map_err(|e| {
        anyhow::anyhow!("the learned profile does not validate ({e}); it was:\n{text}")
    })?;
    eprintln!(
        "learned {model}: {} benign units of {} ({} topic(s))",
        learned.benign_units,
        learned.units,
        learned.topics.len()
    );
    match &args.out {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))
        }
        None => Ok(crate::output::print(&text)?),
    }
}

/// Reads a model profile file into what the detection engine needs.
fn profile_view(path: &std::path::Path) -> anyhow::Result<ProfileView> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let profile = gatehouse_trust::profile::ModelProfile::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let model = gatehouse_store::ModelId::new(profile.model())
        .map_err(|e| anyhow::anyhow!("{}: model {:?}: {e}", path.display(), profile.model()))?;
    Ok(gatehouse_runtime::detection::profile_view(&model, &profile))
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    /// pcap or pcapng packet capture.
    Pcap,
    /// Device telemetry CSV.
    Csv,
}

impl FormatArg {
    fn format(self) -> Format {
        match self {
            FormatArg::Pcap => Format::Pcap,
            FormatArg::Csv => Format::Csv,
        }
    }
}

/// Runs `gatehouse replay`.
pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let config = match &args.detect_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let table: toml::Table =
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            // A gatehouse configuration file (it has a `[detect]` table): its
            // `[detect.rules]`, defaults when absent; else the keys themselves.
            let rules = match table.get("detect") {
                Some(detect) => detect
                    .get("rules")
                    .cloned()
                    .unwrap_or_else(|| toml::Value::Table(toml::Table::new())),
                None => toml::Value::Table(table),
            };
            let config: DetectConfig = rules
                .try_into()
                .with_context(|| format!("reading the detection settings in {}", path.display()))?;
            config
                .validate()
                .with_context(|| format!("checking {}", path.display()))?;
            config
        }
        None => DetectConfig::default(),
    };
    let spec = RecordingSpec {
        format: args.format.map(FormatArg::format),
        label: args.label.clone(),
        model: args.model.clone(),
    };
    let profiles = args
        .profile
        .iter()
        .map(|p| profile_view(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut replayed = Vec::with_capacity(args.files.len());
    for path in &args.files {
        let started = Instant::now();
        let r = replay_file_with_profiles(path, &spec, &config, &profiles)?;
        eprintln!(
            "replayed {}: {} units, {} findings in {:.2?}",
            r.name,
            r.units.len(),
            r.findings.len(),
            started.elapsed()
        );
        replayed.push(r);
    }
    let report = report(&replayed, args.hold.unwrap_or(config.cooldown));
    if args.json {
        crate::output::print_json(&report)
    } else {
        Ok(crate::output::print(&report.to_table())?)
    }
}
