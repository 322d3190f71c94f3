//! What a fleet run found: per attack scenario whether the server detected it, what it
//! did and how fast the attacker felt it; whether any benign device was hit; and the load
//! figures. Printed as text, or JSON with `--json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// An attack a compromised device runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Mirai-style credential brute force on the legacy (password) listener.
    BruteForce,
    /// Publishes far above the model's rate.
    PublishFlood,
    /// Subscribes to other devices' topics, one after another.
    TopicScanning,
    /// Subscribes to `#`.
    WildcardHarvesting,
    /// Subscribes to every device's telemetry.
    Exfiltration,
    /// Publishes physically impossible readings.
    SpoofedReadings,
    /// Rolled back to an old firmware release with known flaws, telnet open.
    VulnerableFirmware,
    /// Its certificate and key, copied, used from a second place.
    ClonedCertificate,
}

/// Every scenario, in the order the report lists them.
pub const ALL: [Scenario; 8] = [
    Scenario::BruteForce,
    Scenario::PublishFlood,
    Scenario::TopicScanning,
    Scenario::WildcardHarvesting,
    Scenario::Exfiltration,
    Scenario::SpoofedReadings,
    Scenario::VulnerableFirmware,
    Scenario::ClonedCertificate,
];

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::BruteForce => "brute_force",
            Scenario::PublishFlood => "publish_flood",
            Scenario::TopicScanning => "topic_scanning",
            Scenario::WildcardHarvesting => "wildcard_harvesting",
            Scenario::Exfiltration => "exfiltration",
            Scenario::SpoofedReadings => "spoofed_readings",
            Scenario::VulnerableFirmware => "vulnerable_firmware",
            Scenario::ClonedCertificate => "cloned_certificate",
        }
    }

    /// What the attacker does, for the narration.
    pub fn describe(self) -> &'static str {
        match self {
            Scenario::BruteForce => "Mirai-style password guessing on the legacy MQTT listener",
            Scenario::PublishFlood => "a telemetry flood far above the model's rate",
            Scenario::TopicScanning => "subscribing to other devices' topics, one after another",
            Scenario::WildcardHarvesting => "a subscription to '#'",
            Scenario::Exfiltration => "a subscription to every device's telemetry",
            Scenario::SpoofedReadings => "physically impossible sensor readings",
            Scenario::VulnerableFirmware => {
                "rolled back to an unsupported firmware release, telnet open"
            }
            Scenario::ClonedCertificate => "its certificate and key used from a second address",
        }
    }

    /// The incident kinds that count as detecting the scenario (the vulnerable firmware
    /// is judged by the device's trust assessment instead).
    pub fn expected_kinds(self) -> &'static [&'static str] {
        match self {
            Scenario::BruteForce => &["credential_brute_force"],
            Scenario::PublishFlood => &["publish_flood", "burst"],
            Scenario::TopicScanning => &["topic_scanning"],
            Scenario::WildcardHarvesting => &["wildcard_harvesting"],
            Scenario::Exfiltration => &["exfiltration_broad_subscribe"],
            Scenario::SpoofedReadings => &["out_of_range_reading", "cohort_deviation"],
            Scenario::VulnerableFirmware => &[],
            Scenario::ClonedCertificate => &["cloned_identity"],
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        ALL.into_iter()
            .find(|x| x.name() == s || x.name().replace('_', "-") == s)
    }
}

/// What became of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It ran and the server detected it.
    Detected,
    /// It ran and the server did not detect it: a failure of the run.
    Missed,
    /// It could not run (see `skipped`): neither detected nor missed.
    Skipped,
}

impl Outcome {
    /// The label the text report shows.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Detected => "DETECTED",
            Outcome::Missed => "MISSED",
            Outcome::Skipped => "SKIPPED",
        }
    }
}

/// One attacker's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub scenario: Scenario,
    /// Detected, missed, or skipped (could not run).
    pub outcome: Outcome,
    /// Why the scenario could not run, when it was skipped.
    pub skipped: Option<String>,
    /// The compromised device.
    pub device: String,
    pub model: String,
    /// The source address it attacked from.
    pub source: String,
    /// Whether the server detected it (see [`Scenario::expected_kinds`]).
    pub detected: bool,
    /// Incident kinds recorded about the device or its address, with their severity.
    pub findings: Vec<String>,
    /// Response actions taken (kind and state), and the device's tier at the end.
    pub response: Vec<String>,
    pub tier: Option<String>,
    /// First malicious packet to the first enforcement the attacker saw on the wire: its
    /// subscriptions removed, its session ended, its connection refused.
    pub time_to_block_ms: Option<f64>,
    /// First malicious packet to the incident showing in the API (polled every 100 ms).
    pub time_to_detect_ms: Option<f64>,
    /// What was seen, or why it was not detected.
    pub note: String,
}

impl ScenarioResult {
    /// A scenario that could not run, and why.
    pub fn skipped(scenario: Scenario, why: impl Into<String>) -> Self {
        let why = why.into();
        Self {
            scenario,
            outcome: Outcome::Skipped,
            skipped: Some(why.clone()),
            device: String::new(),
            model: String::new(),
            source: String::new(),
            detected: false,
            findings: Vec::new(),
            response: Vec::new(),
            tier: None,
            time_to_block_ms: None,
            time_to_detect_ms: None,
            note: why,
        }
    }

    /// Marks a scenario that was staged but could not run, and why.
    pub fn skip(&mut self, why: impl Into<String>) {
        let why = why.into();
        self.outcome = Outcome::Skipped;
        self.detected = false;
        self.note = why.clone();
        self.skipped = Some(why);
    }

    /// Whether it ran (detected or missed).
    pub fn ran(&self) -> bool {
        self.skipped.is_none()
    }
}

/// Latency percentiles of one operation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub failed: u64,
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The fleet's load figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Load {
    pub enrollment: Latency,
    pub connect: Latency,
    /// Console command to the device's reply, back at the console.
    pub command_round_trip: Latency,
    pub telemetry_sent: u64,
    pub telemetry_per_sec: f64,
    /// Seconds of steady traffic the rate was taken over.
    pub traffic_secs: f64,
    pub sessions_at_peak: u64,
    /// Resident memory of the simulator process (which holds the server too in `demo`).
    pub process_rss_mib: Option<f64>,
}

/// The benign device that fared worst: its trust and what took it down.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorstBenign {
    pub device: String,
    pub tier: String,
    pub score: f64,
    /// Its largest score penalties (`name −points: evidence`), then its incidents.
    pub why: Vec<String>,
}

/// The whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetReport {
    pub devices: usize,
    pub benign: usize,
    pub compromised: usize,
    pub models: BTreeMap<String, usize>,
    /// Trust tiers of the benign devices at the end (all of them, or a sample of 2,000).
    pub benign_tiers: BTreeMap<String, usize>,
    /// Trust score histogram of the benign devices, by tens (`"90-100"`).
    pub benign_scores: BTreeMap<String, usize>,
    pub scenarios: Vec<ScenarioResult>,
    /// Benign devices restricted or worse: a tier below trusted (restricted, quarantined,
    /// blocked), or quarantined, revoked or banned by an action. Any fails the run: for an
    /// inline gate a false positive is a working device cut off.
    pub benign_restricted: Vec<String>,
    /// Benign devices quarantined, blocked or revoked (by tier or by an action).
    pub benign_quarantined: Vec<String>,
    /// Benign devices with an incident above `low` (`device (kind severity)`).
    pub benign_above_low: Vec<String>,
    /// Benign devices with any incident.
    pub benign_with_findings: Vec<String>,
    /// The benign device with the lowest trust score, and why.
    pub worst_benign: Option<WorstBenign>,
    /// Benign devices that saw enforcement on the wire (subscriptions removed, session
    /// ended by the server).
    pub benign_enforced: Vec<String>,
    pub load: Load,
    pub elapsed_secs: f64,
    pub passed: bool,
    pub failures: Vec<String>,
}

impl FleetReport {
    /// Decides `passed` and `failures`: every scenario detected, no benign device
    /// restricted or worse.
    pub fn judge(&mut self) {
        self.failures.clear();
        for s in &mut self.scenarios {
            s.outcome = match (s.ran(), s.detected) {
                (false, _) => Outcome::Skipped,
                (true, true) => Outcome::Detected,
                (true, false) => Outcome::Missed,
            };
        }
        let skipped: Vec<&ScenarioResult> = self.scenarios.iter().filter(|s| !s.ran()).collect();
        if !self.scenarios.is_empty() && skipped.len() == self.scenarios.len() {
            self.failures.push(format!(
                "no attack scenario ran, so nothing was shown about detection: {}",
                skipped
                    .iter()
                    .map(|s| format!("{} skipped ({})", s.scenario.name(), s.note))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        for s in &self.scenarios {
            if s.ran() && !s.detected {
                self.failures.push(format!(
                    "scenario {} on {} was not detected: {}",
                    s.scenario.name(),
                    s.device,
                    s.note
                ));
            }
        }
        let mut cut_off = self.benign_restricted.clone();
        for q in &self.benign_quarantined {
            if !cut_off.contains(q) {
                cut_off.push(q.clone());
            }
        }
        if !cut_off.is_empty() {
            let worst = self.worst_benign.as_ref().map_or(String::new(), |w| {
                format!(
                    "; worst {} ({}, score {:.0}): {}",
                    w.device,
                    w.tier,
                    w.score,
                    w.why.first().map_or("no reason recorded", String::as_str)
                )
            });
            self.failures.push(format!(
                "{} benign device(s) restricted or worse: {}{worst}",
                cut_off.len(),
                shorten(&cut_off, 10)
            ));
        }
        if self.load.enrollment.count == 0 {
            self.failures.push("no device enrolled".into());
        }
        self.passed = self.failures.is_empty();
    }

    /// The report for a terminal.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "Fleet report");
        let _ = writeln!(
            o,
            "  devices: {} ({} benign, {} compromised) — {}",
            self.devices,
            self.benign,
            self.compromised,
            self.models
                .iter()
                .map(|(m, n)| format!("{n} {m}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let l = &self.load;
        let _ = writeln!(
            o,
            "  enrolled over EST: {} ({} failed), {:.0}/s, p50 {:.1} ms, p99 {:.1} ms",
            l.enrollment.count,
            l.enrollment.failed,
            l.enrollment.per_sec,
            l.enrollment.p50_ms,
            l.enrollment.p99_ms
        );
        let _ = writeln!(
            o,
            "  connected over MQTTS: {} ({} failed), p50 {:.1} ms, p99 {:.1} ms",
            l.connect.count, l.connect.failed, l.connect.p50_ms, l.connect.p99_ms
        );
        let _ = writeln!(
            o,
            "  traffic: {} telemetry messages ({:.0}/s over {:.0} s); {} commands answered, round trip p50 {:.1} ms, p99 {:.1} ms",
            l.telemetry_sent,
            l.telemetry_per_sec,
            l.traffic_secs,
            l.command_round_trip.count,
            l.command_round_trip.p50_ms,
            l.command_round_trip.p99_ms
        );
        let _ = writeln!(
            o,
            "  benign trust: {}",
            self.benign_tiers
                .iter()
                .map(|(t, n)| format!("{n} {t}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            o,
            "  benign scores: {}",
            self.benign_scores
                .iter()
                .rev()
                .map(|(b, n)| format!("{b}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if self.scenarios.is_empty() {
            let _ = writeln!(o, "\nelapsed {:.1} s (enrollment only)", self.elapsed_secs);
            return o;
        }
        let _ = writeln!(o, "\nAttacks");
        for s in &self.scenarios {
            // What the enforcement was is in the note below: a quarantine may remove
            // subscriptions and leave the session, which is not a disconnection.
            let ttb = s
                .time_to_block_ms
                .map_or("no enforcement on the wire".to_owned(), |ms| {
                    format!("enforced on the wire after {ms:.0} ms")
                });
            let ttd = s
                .time_to_detect_ms
                .map_or(String::new(), |ms| format!(", in the API after {ms:.0} ms"));
            if let Some(why) = &s.skipped {
                let _ = writeln!(o, "  {:<8} {:<20} {why}", "SKIPPED", s.scenario.name());
                continue;
            }
            let _ = writeln!(
                o,
                "  {:<8} {:<20} {} ({}, from {}): {}{ttd}",
                s.outcome.label(),
                s.scenario.name(),
                s.device,
                s.model,
                s.source,
                ttb
            );
            if !s.findings.is_empty() {
                let _ = writeln!(o, "      findings: {}", s.findings.join(", "));
            }
            let mut response = s.response.clone();
            if let Some(t) = &s.tier {
                response.push(format!("tier {t}"));
            }
            if !response.is_empty() {
                let _ = writeln!(o, "      response: {}", response.join(", "));
            }
            if !s.note.is_empty() {
                let _ = writeln!(o, "      {}", s.note);
            }
        }
        let _ = writeln!(o, "\nBenign devices");
        let _ = writeln!(
            o,
            "  restricted or worse: {}{}",
            self.benign_restricted.len(),
            if self.benign_restricted.is_empty() {
                String::new()
            } else {
                format!(" ({})", shorten(&self.benign_restricted, 10))
            }
        );
        let _ = writeln!(
            o,
            "  quarantined or blocked: {}{}",
            self.benign_quarantined.len(),
            if self.benign_quarantined.is_empty() {
                String::new()
            } else {
                format!(" ({})", shorten(&self.benign_quarantined, 10))
            }
        );
        let _ = writeln!(
            o,
            "  with a finding above low: {}{}",
            self.benign_above_low.len(),
            if self.benign_above_low.is_empty() {
                String::new()
            } else {
                format!(" ({})", shorten(&self.benign_above_low, 10))
            }
        );
        let _ = writeln!(
            o,
            "  with any finding: {}{}",
            self.benign_with_findings.len(),
            if self.benign_with_findings.is_empty() {
                String::new()
            } else {
                format!(" ({})", shorten(&self.benign_with_findings, 10))
            }
        );
        let _ = writeln!(
            o,
            "  enforcement seen on the wire: {}",
            self.benign_enforced.len()
        );
        if let Some(w) = &self.worst_benign {
            let _ = writeln!(
                o,
                "  worst: {} ({}, score {:.0}){}",
                w.device,
                w.tier,
                w.score,
                if w.why.is_empty() { "" } else { ":" }
            );
            for why in w.why.iter().take(4) {
                let _ = writeln!(o, "      {why}");
            }
        }
        let _ = writeln!(o, "\nelapsed {:.1} s", self.elapsed_secs);
        if self.passed {
            let skipped: Vec<&str> = self
                .scenarios
                .iter()
                .filter(|s| !s.ran())
                .map(|s| s.scenario.name())
                .collect();
            if skipped.is_empty() {
                let _ = writeln!(
                    o,
                    "PASS: every attack scenario was detected and no benign device was restricted"
                );
            } else {
                let _ = writeln!(
                    o,
                    "PASS: the {} attack scenario(s) that ran were all detected, {} could not \
                     run ({}), and no benign device was restricted",
                    self.scenarios.len() - skipped.len(),
                    skipped.len(),
                    skipped.join(", ")
                );
            }
        } else {
            for f in &self.failures {
                let _ = writeln!(o, "FAIL: {f}");
            }
        }
        o
    }
}

fn shorten(list: &[String], n: usize) -> String {
    let mut s = list.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if list.len() > n {
        let _ = write!(s, ", and {} more", list.len() - n);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(scenario: Scenario, detected: bool) -> ScenarioResult {
        ScenarioResult {
            scenario,
            outcome: if detected {
                Outcome::Detected
            } else {
                Outcome::Missed
            },
            skipped: None,
            device: "PMP-000001".into(),
            model: "pump-p7".into(),
            source: "127.0.1.1".into(),
            detected,
            findings: vec![],
            response: vec![],
            tier: None,
            time_to_block_ms: None,
            time_to_detect_ms: None,
            note: "no incident".into(),
        }
    }

    #[test]
    fn a_missed_scenario_or_a_quarantined_benign_device_fails_the_run_and_is_named() {
        let mut r = FleetReport {
            scenarios: vec![
                result(Scenario::PublishFlood, true),
                result(Scenario::SpoofedReadings, false),
            ],
            load: Load {
                enrollment: Latency {
                    count: 10,
                    ..Latency::default()
                },
                ..Load::default()
            },
            ..FleetReport::default()
        };
        r.judge();
        assert!(!r.passed);
        assert_eq!(r.failures.len(), 1);
        assert!(
            r.failures[0].contains("spoofed_readings"),
            "{:?}",
            r.failures
        );
        assert!(r.to_text().contains("FAIL: scenario spoofed_readings"));

        r.scenarios[1].detected = true;
        r.benign_quarantined = vec!["LCK-000004".into()];
        r.judge();
        assert!(!r.passed);
        assert!(r.failures[0].contains("LCK-000004"));

        r.benign_quarantined.clear();
        r.judge();
        assert!(r.passed, "{:?}", r.failures);
        assert!(r.to_text().contains("PASS"));
    }

    #[test]
    fn a_restricted_benign_device_fails_the_run_named_with_the_worst_and_why() {
        let mut r = FleetReport {
            scenarios: vec![result(Scenario::PublishFlood, true)],
            load: Load {
                enrollment: Latency {
                    count: 10,
                    ..Latency::default()
                },
                ..Load::default()
            },
            benign_above_low: vec!["PMP-000007 (cohort_deviation high)".into()],
            ..FleetReport::default()
        };
        r.judge();
        // A finding above low is counted and shown, but only restriction fails the run.
        assert!(r.passed, "{:?}", r.failures);
        assert!(
            r.to_text()
                .contains("with a finding above low: 1 (PMP-000007")
        );

        r.benign_restricted = vec!["PMP-000007".into()];
        r.worst_benign = Some(WorstBenign {
            device: "PMP-000007".into(),
            tier: "restricted".into(),
            score: 60.0,
            why: vec!["cohort_deviation −40: volume_ml 0.400 is 16.3 spreads".into()],
        });
        r.judge();
        assert!(!r.passed);
        assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
        assert!(r.failures[0].contains("1 benign device(s) restricted or worse: PMP-000007"));
        assert!(
            r.failures[0].contains("cohort_deviation"),
            "{:?}",
            r.failures
        );
        let text = r.to_text();
        assert!(
            text.contains("restricted or worse: 1 (PMP-000007)"),
            "{text}"
        );
        assert!(
            text.contains("worst: PMP-000007 (restricted, score 60)"),
            "{text}"
        );
        assert!(
            text.contains("FAIL: 1 benign device(s) restricted"),
            "{text}"
        );
    }

    #[test]
    fn a_skipped_scenario_is_neither_detected_nor_missed_and_all_skipped_does_not_pass() {
        let enrolled = Load {
            enrollment: Latency {
                count: 10,
                ..Latency::default()
            },
            ..Load::default()
        };
        let no_legacy = "the server has no plain MQTT listener (pass --legacy)";
        let mut r = FleetReport {
            scenarios: vec![
                ScenarioResult::skipped(Scenario::BruteForce, no_legacy),
                result(Scenario::PublishFlood, true),
            ],
            load: enrolled.clone(),
            ..FleetReport::default()
        };
        r.judge();
        assert!(r.passed, "{:?}", r.failures);
        assert_eq!(r.scenarios[0].outcome, Outcome::Skipped);
        assert_eq!(r.scenarios[1].outcome, Outcome::Detected);
        let text = r.to_text();
        assert!(
            text.contains(&format!("SKIPPED  brute_force          {no_legacy}")),
            "{text}"
        );
        assert!(!text.contains("MISSED"), "{text}");
        assert!(
            text.contains("PASS: the 1 attack scenario(s) that ran were all detected, 1 could not run (brute_force)"),
            "{text}"
        );
        let json = serde_json::to_value(&r).expect("JSON");
        assert_eq!(json["scenarios"][0]["outcome"], "skipped");
        assert_eq!(json["scenarios"][0]["skipped"], no_legacy);
        assert_eq!(json["scenarios"][0]["detected"], false);
        assert_eq!(json["scenarios"][1]["outcome"], "detected");
        assert!(json["scenarios"][1]["skipped"].is_null());

        // A missed scenario beside a skipped one still fails, and only it is named.
        r.scenarios[1].detected = false;
        r.judge();
        assert!(!r.passed);
        assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
        assert!(r.failures[0].contains("publish_flood"), "{:?}", r.failures);
        assert!(r.to_text().contains("MISSED   publish_flood"));

        // Every scenario skipped: nothing was shown about detection, so no PASS.
        r.scenarios[1].skip("the device PLC-000009 did not connect");
        r.judge();
        assert!(!r.passed);
        assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
        assert!(r.failures[0].starts_with("no attack scenario ran"));
        assert!(r.failures[0].contains("brute_force skipped"));
        assert!(r.failures[0].contains("publish_flood skipped"));
        let text = r.to_text();
        assert!(!text.contains("PASS"), "{text}");
        assert!(text.contains("FAIL: no attack scenario ran"), "{text}");
        assert_eq!(r.scenarios[1].outcome, Outcome::Skipped);
    }

    #[test]
    fn scenario_names_parse_both_ways() {
        for s in ALL {
            assert_eq!(Scenario::parse(s.name()), Some(s));
            assert_eq!(Scenario::parse(&s.name().replace('_', "-")), Some(s));
        }
        assert_eq!(Scenario::parse("nonsense"), None);
    }
}
