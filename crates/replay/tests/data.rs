//! The readers and the replay over the real recordings of the shared data folder
//! (`../../../shared/data` from this crate). Each test prints why it is skipped when the
//! folder is absent.
//!
//! The expected counts come from the data folder's README (packets, TCP flows, rows and
//! `type` counts per file) and from what each capture is: every brute-force attempt is
//! refused, every SlowITe connection is accepted and then sends nothing, and so on. No
//! test here asserts how well the detectors do.

use std::path::PathBuf;

use gatehouse_replay::{
    CaptureOptions, DetectConfig, RecordingSpec, TelemetryOptions, capture_trace, replay_file,
    report, telemetry_trace,
};

fn data(path: &str) -> Option<PathBuf> {
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/"
    ))
    .join(path);
    if p.exists() {
        Some(p)
    } else {
        gatehouse_testkit::skip(format!(
            "{} is absent (the shared data folder is not on this machine)",
            p.display()
        ));
        None
    }
}

struct Expect {
    file: &'static str,
    format: &'static str,
    packets: u64,
    flows: u64,
}

/// Packets and TCP flows per file, as the data README lists them.
const CAPTURES: [Expect; 6] = [
    Expect {
        file: "benign-train.pcap",
        format: "pcapng",
        packets: 6_375,
        flows: 7,
    },
    Expect {
        file: "bruteforce-train.pcapng",
        format: "pcapng",
        packets: 8_918,
        flows: 889,
    },
    Expect {
        file: "flood-train.pcap",
        format: "pcap",
        packets: 58,
        flows: 1,
    },
    Expect {
        file: "malariados-train.pcap",
        format: "pcapng",
        packets: 1_866,
        flows: 10,
    },
    Expect {
        file: "malformed-train.pcap",
        format: "pcapng",
        packets: 7_315,
        flows: 606,
    },
    Expect {
        file: "slowite-train.pcap",
        format: "pcapng",
        packets: 6_447,
        flows: 716,
    },
];

fn capture(file: &str) -> Option<gatehouse_replay::Trace> {
    let p = data(&format!("mqttset/train/{file}"))?;
    let label = file.split('-').next().unwrap_or(file);
    let f = std::fs::File::open(&p).expect("open capture");
    Some(capture_trace(f, &CaptureOptions::new(label)).expect("capture reads"))
}

#[test]
fn every_capture_yields_its_packets_and_flows() {
    for e in &CAPTURES {
        let Some(t) = capture(e.file) else { return };
        let x = &t.extraction;
        assert_eq!(x.format, e.format, "{}", e.file);
        assert_eq!(x.frames, e.packets, "{}: packets", e.file);
        // "All packets are IPv4 TCP to or from port 1883 ... No packet is truncated."
        assert_eq!(x.tcp_segments, e.packets, "{}: TCP segments", e.file);
        assert_eq!((x.bad_frames, x.skipped_frames), (0, 0), "{}", e.file);
        assert_eq!(x.flows, e.flows, "{}: flows", e.file);
        assert_eq!(
            t.units.len() as u64,
            e.flows,
            "{}: one unit per flow",
            e.file
        );
        assert_eq!(x.reassembly.gaps, 0, "{}: nothing missing", e.file);
        let label = e.file.split('-').next().unwrap_or_default();
        assert!(t.units.iter().all(|u| u.label == label), "{}", e.file);
        // Every flow comes from the capture's one attacker, or one of the 7 benign clients.
        let clients: std::collections::BTreeSet<_> = t.units.iter().map(|u| u.peer).collect();
        assert_eq!(
            clients.len(),
            if label == "benign" { 7 } else { 1 },
            "{}",
            e.file
        );
    }
}

#[test]
fn benign_clients_each_hold_one_accepted_session() {
    let Some(t) = capture("benign-train.pcap") else {
        return;
    };
    let x = &t.extraction;
    assert_eq!((x.connects, x.auth_failures), (7, 0));
    assert!(x.publishes > 1_000, "{x:?}");
    assert!(x.subscribes > 0, "{x:?}");
    // The capture stops while the sessions are open.
    assert!(x.disconnects.is_empty(), "{x:?}");
    let devices: std::collections::BTreeSet<_> =
        t.units.iter().flat_map(|u| u.devices.iter()).collect();
    assert_eq!(devices.len(), 7);
}

#[test]
fn every_brute_force_attempt_is_refused() {
    let Some(t) = capture("bruteforce-train.pcapng") else {
        return;
    };
    let x = &t.extraction;
    assert_eq!((x.connects, x.auth_failures), (0, 889));
    assert_eq!(x.mqtt_packets, 889, "one CONNECT per flow");
    assert_eq!(x.publishes, 0);
}

#[test]
fn the_flood_connection_is_reassembled_into_its_publishes() {
    let Some(t) = capture("flood-train.pcap") else {
        return;
    };
    let x = &t.extraction;
    assert_eq!(x.connects, 1);
    // Everything the client sent after its CONNECT decodes as PUBLISH, across segments
    // of up to 32 KB; the file ends inside the connection, so there is no disconnect.
    assert_eq!(x.mqtt_packets, x.publishes + 1);
    assert!(x.publishes > 10_000, "{x:?}");
    assert!(x.disconnects.is_empty());
    assert_eq!(x.reassembly.duplicate, 0);
}

#[test]
fn malariados_and_slowite_connections_are_accepted() {
    let Some(t) = capture("malariados-train.pcap") else {
        return;
    };
    assert_eq!((t.extraction.connects, t.extraction.auth_failures), (10, 0));
    assert!(t.extraction.publishes > 0);
    let Some(t) = capture("slowite-train.pcap") else {
        return;
    };
    let x = &t.extraction;
    // SlowITe opens connections that CONNECT and then send nothing.
    assert_eq!((x.connects, x.auth_failures, x.publishes), (716, 0, 0));
    assert_eq!(x.mqtt_packets, 716);
}

#[test]
fn malformed_flows_all_start_with_a_handshake() {
    let Some(t) = capture("malformed-train.pcap") else {
        return;
    };
    let x = &t.extraction;
    assert_eq!(x.flows_with_syn, 606);
    // Each session that began also ended (the client closes every connection).
    let ended: u64 = x.disconnects.values().sum();
    assert_eq!(ended, x.connects, "{x:?}");
    assert!(x.connects + x.auth_failures <= 606);
}

/// A file, its model, its rows and its rows per `type`.
type TelemetryExpect = (
    &'static str,
    &'static str,
    u64,
    &'static [(&'static str, u64)],
);

/// Rows per `type`, as the data README lists them.
const TELEMETRY: [TelemetryExpect; 3] = [
    (
        "Train_Test_IoT_Fridge.csv",
        "fridge",
        59_944,
        &[
            ("normal", 35_000),
            ("ddos", 5_000),
            ("backdoor", 5_000),
            ("injection", 5_000),
            ("password", 5_000),
            ("ransomware", 2_902),
            ("xss", 2_042),
        ],
    ),
    (
        "Train_Test_IoT_Thermostat.csv",
        "thermostat",
        52_774,
        &[
            ("normal", 35_000),
            ("injection", 5_000),
            ("backdoor", 5_000),
            ("password", 5_000),
            ("ransomware", 2_264),
            ("xss", 449),
            ("scanning", 61),
        ],
    ),
    (
        "Train_Test_IoT_GPS_Tracker.csv",
        "gps_tracker",
        58_960,
        &[
            ("normal", 35_000),
            ("ddos", 5_000),
            ("backdoor", 5_000),
            ("injection", 5_000),
            ("password", 5_000),
            ("ransomware", 2_833),
            ("xss", 577),
            ("scanning", 550),
        ],
    ),
];

#[test]
fn every_telemetry_row_is_one_publish_with_its_type() {
    for (file, model, rows, types) in TELEMETRY {
        let Some(p) = data(&format!("ton_iot/{file}")) else {
            return;
        };
        let f = std::fs::File::open(&p).expect("open csv");
        let t = telemetry_trace(f, &TelemetryOptions::new(model)).expect("csv reads");
        let x = &t.extraction;
        assert_eq!(x.rows, rows, "{file}");
        assert_eq!((x.publishes, x.connects), (rows, 1), "{file}");
        assert_eq!(t.units.len() as u64, rows);
        assert_eq!(
            x.rows_by_label.len(),
            types.len(),
            "{file}: {:?}",
            x.rows_by_label
        );
        for (ty, n) in types {
            assert_eq!(x.rows_by_label.get(*ty), Some(n), "{file}: {ty}");
        }
        // Replayed in time order, as JSON objects of the two reading columns.
        assert!(t.units.windows(2).all(|w| w[0].first <= w[1].first));
        let Some(gatehouse_types::Observation::Publish(p)) = t.events.get(1).map(|e| &e.obs) else {
            panic!("{file}: no publish");
        };
        assert_eq!(&*p.topic, format!("devices/{model}-1/telemetry"));
        let v: serde_json::Value = serde_json::from_slice(&p.payload).expect("JSON payload");
        assert_eq!(
            v.as_object().map(serde_json::Map::len),
            Some(2),
            "{file}: {v}"
        );
    }
}

#[test]
fn replaying_every_file_scores_every_unit_once() {
    let mut files = Vec::new();
    for e in &CAPTURES {
        let Some(p) = data(&format!("mqttset/train/{}", e.file)) else {
            return;
        };
        files.push((p, e.flows));
    }
    let config = DetectConfig::default();
    let mut replayed = Vec::new();
    for (p, flows) in &files {
        let r = replay_file(p, &RecordingSpec::default(), &config).expect("replays");
        assert_eq!(r.units.len() as u64, *flows);
        replayed.push(r);
    }
    let rep = report(&replayed, config.cooldown);
    let s = &rep.score;
    let total: u64 = s.classes.iter().map(|c| c.units).sum();
    assert_eq!(total, CAPTURES.iter().map(|e| e.flows).sum::<u64>());
    assert_eq!(s.classes.len(), 6);
    let o = &s.overall;
    assert_eq!(o.tp + o.fn_ + o.fp + o.tn, total);
    assert_eq!(o.fp + o.tn, 7, "the benign flows are the negatives");
    for c in &s.classes {
        assert!(c.flagged <= c.units);
        assert!(c.episodes_detected <= c.episodes);
        assert_eq!(
            c.episodes,
            1 + 6 * u64::from(c.class == "benign"),
            "{}",
            c.class
        );
    }
    let findings: u64 = replayed.iter().map(|r| r.findings.len() as u64).sum();
    assert_eq!(s.findings_by_kind.values().sum::<u64>(), findings);
    let json = serde_json::to_value(&rep).expect("report serializes");
    assert!(json["score"]["classes"].is_array());
}

#[test]
fn replaying_the_telemetry_files_scores_every_row_once() {
    let mut replayed = Vec::new();
    for (file, _, rows, _) in TELEMETRY {
        let Some(p) = data(&format!("ton_iot/{file}")) else {
            return;
        };
        let r =
            replay_file(&p, &RecordingSpec::default(), &DetectConfig::default()).expect("replays");
        assert_eq!(r.units.len() as u64, rows, "{file}");
        assert!(r.units.iter().all(|u| !u.open && u.first == u.last));
        replayed.push(r);
    }
    let rep = report(&replayed, std::time::Duration::from_secs(300));
    let s = &rep.score;
    let total: u64 = TELEMETRY.iter().map(|t| t.2).sum();
    assert_eq!(s.classes.iter().map(|c| c.units).sum::<u64>(), total);
    // normal, backdoor, ddos, injection, password, ransomware, scanning, xss
    assert_eq!(s.classes.len(), 8);
    let o = &s.overall;
    assert_eq!(o.tp + o.fn_ + o.fp + o.tn, total);
    assert_eq!(o.fp + o.tn, 3 * 35_000, "the normal rows are the negatives");
    let normal = s
        .classes
        .iter()
        .find(|c| c.class == "normal")
        .expect("normal rows");
    // One device per file, its normal rows first in time: one episode per file.
    assert_eq!(normal.episodes, 3);
    assert_eq!(
        normal.ttd_median_secs, None,
        "no time to detect for a negative class"
    );
}
