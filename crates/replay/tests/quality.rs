//! How well the detectors do on the MQTTset training captures of the shared data folder
//! (`../../../shared/data` from this crate): every attack class detected, malariados (a
//! flood spread over ten connections from one address) included, and no benign flow
//! flagged. Skipped, saying so, when the folder is absent; a failure when the environment
//! variable `CI` is set, where the data must be present.

use std::path::PathBuf;

use gatehouse_replay::{DetectConfig, RecordingSpec, replay_file, report};

const FILES: [&str; 6] = [
    "benign-train.pcap",
    "bruteforce-train.pcapng",
    "flood-train.pcap",
    "malariados-train.pcap",
    "malformed-train.pcap",
    "slowite-train.pcap",
];

fn data(path: &str) -> Option<PathBuf> {
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/"
    ))
    .join(path);
    if p.exists() {
        return Some(p);
    }
    gatehouse_testkit::skip(format!(
        "{} is absent (the shared data folder is not on this machine)",
        p.display()
    ));
    None
}

#[test]
fn mqttset_every_attack_class_is_detected_and_no_benign_flow_flagged() {
    let mut paths = Vec::new();
    for f in FILES {
        let Some(p) = data(&format!("mqttset/train/{f}")) else {
            return;
        };
        paths.push(p);
    }
    let config = DetectConfig::default();
    let replayed: Vec<_> = paths
        .iter()
        .map(|p| replay_file(p, &RecordingSpec::default(), &config).expect("replays"))
        .collect();
    let rep = report(&replayed, config.cooldown);
    let s = &rep.score;
    let summary = s
        .classes
        .iter()
        .map(|c| {
            format!(
                "{}: {}/{} flagged, precision {:?}, recall {:?}, kinds {:?}",
                c.class, c.flagged, c.units, c.precision, c.recall, c.kinds
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(s.overall.fp, 0, "benign flows flagged:\n{summary}");
    for c in s.classes.iter().filter(|c| c.attack) {
        assert_eq!(
            c.episodes_detected, c.episodes,
            "{} not detected:\n{summary}",
            c.class
        );
        assert!(
            c.precision.is_some_and(|p| p >= 0.99),
            "{} precision:\n{summary}",
            c.class
        );
    }
    assert!(
        s.classes
            .iter()
            .find(|c| c.class == "malariados")
            .is_some_and(|c| c.kinds.contains_key("publish_flood") && c.flagged == c.units),
        "malariados is one flood over its ten connections:\n{summary}"
    );
    assert!(
        s.overall.precision.is_some_and(|p| p >= 0.99),
        "overall precision:\n{summary}"
    );
    eprintln!("{summary}");
}

const TELEMETRY: [&str; 3] = [
    "Train_Test_IoT_Fridge.csv",
    "Train_Test_IoT_Thermostat.csv",
    "Train_Test_IoT_GPS_Tracker.csv",
];

#[test]
fn ton_iot_normal_rows_are_left_alone() {
    let mut paths = Vec::new();
    for f in TELEMETRY {
        let Some(p) = data(&format!("ton_iot/{f}")) else {
            return;
        };
        paths.push(p);
    }
    let config = DetectConfig::default();
    let replayed: Vec<_> = paths
        .iter()
        .map(|p| replay_file(p, &RecordingSpec::default(), &config).expect("replays"))
        .collect();
    for (hold, most) in [(config.cooldown, 0.01), (std::time::Duration::ZERO, 0.001)] {
        let rep = report(&replayed, hold);
        let normal = rep
            .score
            .classes
            .iter()
            .find(|c| c.class == "normal")
            .expect("normal rows");
        let summary = format!(
            "hold {hold:?}: {} of {} normal rows flagged, kinds {:?}; findings {:?}",
            normal.flagged, normal.units, normal.kinds, rep.score.findings_by_kind
        );
        eprintln!("{summary}");
        assert!(
            normal.fpr.is_some_and(|f| f <= most),
            "false-positive rate above {most}: {summary}"
        );
    }
}
