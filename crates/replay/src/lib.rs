//! `gatehouse replay`: scores Gatehouse's detectors on recorded, labelled traffic, offline.
//!
//! A recording (an MQTT packet capture, or a device's telemetry CSV) is turned into the
//! same [`Observation`](gatehouse_types::Observation)s the broker's tap emits, fed to the
//! same detection engine the server runs, and the findings are scored against the labels.
//!
//! The one design decision that shapes it: nothing here detects anything. Captured bytes
//! go through the broker's own MQTT decoder and the observations through the detection
//! stage's own `Engine`, driven by the recording's clock, so a figure printed here is the
//! figure of the code that runs in production, not of a re-implementation of it. What
//! this crate owns is reading untrusted recordings (pcap, pcapng, TCP reassembly, CSV)
//! without panicking, and the arithmetic of the score, defined per unit in [`mod@score`].

pub mod capture;
pub mod learn;
pub mod report;
pub mod run;
pub mod score;
pub mod telemetry;
pub mod trace;

mod unix_secs;

pub use capture::{CaptureError, CaptureOptions, capture_trace};
pub use gatehouse_detect::{DetectConfig, ProfileView};
pub use report::{
    Format, RecordingSpec, ReplayError, Replayed, Report, read_recording, replay_file,
    replay_file_with_profiles, report,
};
pub use score::{Score, ScoreOptions, Scored, score};
pub use telemetry::{TelemetryError, TelemetryOptions, telemetry_trace};
pub use trace::{Event, Extraction, Trace, Unit};
