//! A labelled trace: the observations a recording yields, and the units they are scored by.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use gatehouse_types::{DeviceRef, Observation};
use serde::Serialize;

use crate::capture::tcp::ReassemblyStats;

/// One thing that is scored: a TCP flow of a capture, or a row of a telemetry file.
///
/// A unit is flagged when a finding names its subject (its client address, or one of its
/// devices) at a time between `first - hold` and `last` (see [`mod@crate::score`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unit {
    /// Its class: `benign`/`normal` or an attack name.
    pub label: String,
    /// Who it belongs to, for time-to-detect: `ip:<client address>` or `device:<ref>`.
    pub subject: String,
    /// The client address, for a flow.
    pub peer: Option<IpAddr>,
    /// The devices the unit's traffic carried.
    pub devices: Vec<DeviceRef>,
    /// Its first packet or its row's time.
    #[serde(with = "crate::unix_secs")]
    pub first: SystemTime,
    /// Its last packet or its row's time; for a flow still open when the capture ended,
    /// the end of the replay (see [`Unit::open`]).
    #[serde(with = "crate::unix_secs")]
    pub last: SystemTime,
    /// A flow neither side had closed (FIN or RST) when the capture ended: the connection
    /// outlives the recording, so the replay counts it open until the engine's last tick.
    pub open: bool,
}

/// An observation and the unit it came from.
#[derive(Debug, Clone)]
pub struct Event {
    /// What the broker would have seen.
    pub obs: Observation,
    /// Index into [`Trace::units`].
    pub unit: usize,
}

/// What a recording yielded, ready for the detectors.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// Scored units, in order of first appearance.
    pub units: Vec<Unit>,
    /// Observations in trace order (capture order, or row time order).
    pub events: Vec<Event>,
    /// Device models to tell the engine (telemetry: the file's model).
    pub models: Vec<(DeviceRef, String)>,
    /// What was read, for the report and the extraction tests.
    pub extraction: Extraction,
}

/// Counts of what the reader took out of a recording.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Extraction {
    /// `pcap`, `pcapng` or `csv`.
    pub format: String,
    /// Frames in the capture.
    pub frames: u64,
    /// Frames that were TCP over IPv4/IPv6.
    pub tcp_segments: u64,
    /// Frames skipped: not IP, not TCP, IP fragments or an unknown link type.
    pub skipped_frames: u64,
    /// Frames whose headers were short or inconsistent.
    pub bad_frames: u64,
    /// The first bad frame's error, for the report.
    pub first_bad_frame: Option<String>,
    /// TCP flows (connections: a 4-tuple, or a new SYN on a finished one).
    pub flows: u64,
    /// Flows whose client SYN was captured.
    pub flows_with_syn: u64,
    /// MQTT control packets decoded from clients.
    pub mqtt_packets: u64,
    /// `Connect` observations.
    pub connects: u64,
    /// `AuthFailure` observations.
    pub auth_failures: u64,
    /// `Subscribe` observations (one per filter).
    pub subscribes: u64,
    /// `Publish` observations.
    pub publishes: u64,
    /// `Disconnect` observations by cause.
    pub disconnects: BTreeMap<String, u64>,
    /// Client byte-stream reassembly, summed over flows.
    pub reassembly: ReassemblyStats,
    /// Telemetry rows read.
    pub rows: u64,
    /// Rows by label.
    pub rows_by_label: BTreeMap<String, u64>,
}

impl Extraction {
    /// Counts one observation.
    pub(crate) fn count(&mut self, obs: &Observation) {
        match obs {
            Observation::Connect(_) => self.connects += 1,
            Observation::AuthFailure(_) => self.auth_failures += 1,
            Observation::Subscribe(_) => self.subscribes += 1,
            Observation::Publish(_) => self.publishes += 1,
            Observation::Disconnect { cause, .. } => {
                let name = serde_json::to_value(cause)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("{cause:?}"));
                *self.disconnects.entry(name).or_default() += 1;
            }
            _ => {}
        }
    }
}

/// The time of an observation.
pub fn observed_at(obs: &Observation) -> SystemTime {
    match obs {
        Observation::Connect(c) => c.at,
        Observation::AuthFailure(a) => a.at,
        Observation::Subscribe(s) => s.at,
        Observation::Publish(p) => p.at,
        Observation::Disconnect { at, .. } => *at,
        _ => SystemTime::UNIX_EPOCH,
    }
}
