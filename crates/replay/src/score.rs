//! The score: findings against labels, per unit.
//!
//! **Unit.** A TCP flow of a capture (one connection), or a row of a telemetry file.
//! Every unit has a class (its label) and a subject: the client address of a flow, the
//! device of a row.
//!
//! **Flagged.** A finding is about the units whose client address is its `peer` or whose
//! devices include its `device`. It flags those of them that were open at some moment of
//! `[at, at + hold]`: a unit with first time `first` and last time `last` is flagged when
//! `first - hold <= at <= last` (a flow the capture did not see close is open until the
//! replay's last tick, see [`Unit::open`]). `hold` defaults to the engine's cooldown, the time during
//! which the engine stays quiet about the same subject and rule because the finding
//! stands. Findings are matched only to units of the recording they came from.
//!
//! **Per class.** Classes named in [`ScoreOptions::negative`] (`benign`, `normal`) are
//! negative; every other class is an attack. For an attack class C:
//! recall = flagged C units / C units; precision = flagged C units / (flagged C units +
//! flagged negative units of the same run), the precision of a test set holding C and
//! all the negatives; F1 their harmonic mean. The false-positive rate is flagged negative
//! units / negative units. Overall figures pool every attack class against the
//! negatives.
//!
//! **Time to detect.** An episode is a maximal run of one subject's units of one class,
//! in time order. Its time to detect is the time from its first unit's start to the first
//! finding about its subject raised between that start and its last unit's end; an
//! episode with no such finding is undetected. Median and p95 are nearest-rank over the
//! detected episodes of a class.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use gatehouse_types::{DeviceRef, Finding};
use serde::Serialize;

use crate::trace::Unit;

/// How findings are matched to units.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    /// How long a finding stands after it is raised.
    pub hold: Duration,
    /// The classes that are not attacks.
    pub negative: Vec<String>,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        Self {
            hold: Duration::from_secs(300),
            negative: vec!["benign".into(), "normal".into()],
        }
    }
}

/// One recording's units and the findings its replay raised.
#[derive(Debug, Clone, Copy)]
pub struct Scored<'a> {
    /// The units, as the reader made them.
    pub units: &'a [Unit],
    /// Every finding of the replay.
    pub findings: &'a [Finding],
}

/// Counts and rates of a binary decision.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Confusion {
    /// Attack units flagged.
    pub tp: u64,
    /// Negative units flagged.
    pub fp: u64,
    /// Negative units not flagged.
    pub tn: u64,
    /// Attack units not flagged.
    #[serde(rename = "fn")]
    pub fn_: u64,
    /// tp / (tp + fp).
    pub precision: Option<f64>,
    /// tp / (tp + fn).
    pub recall: Option<f64>,
    /// Harmonic mean of precision and recall.
    pub f1: Option<f64>,
    /// fp / (fp + tn).
    pub fpr: Option<f64>,
}

impl Confusion {
    fn new(tp: u64, fp: u64, tn: u64, fn_: u64) -> Self {
        let precision = ratio(tp, tp + fp);
        let recall = ratio(tp, tp + fn_);
        Self {
            tp,
            fp,
            tn,
            fn_,
            precision,
            recall,
            f1: f1(precision, recall),
            fpr: ratio(fp, fp + tn),
        }
    }
}

/// The score of one class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassScore {
    /// The label.
    pub class: String,
    /// Whether it is an attack class.
    pub attack: bool,
    /// Its units.
    pub units: u64,
    /// Its units that some finding flagged.
    pub flagged: u64,
    /// Attack class: flagged / units.
    pub recall: Option<f64>,
    /// Attack class: flagged / (flagged + flagged negatives).
    pub precision: Option<f64>,
    /// Attack class: harmonic mean of precision and recall.
    pub f1: Option<f64>,
    /// Negative class: flagged / units.
    pub fpr: Option<f64>,
    /// Episodes (runs of one subject's units of this class).
    pub episodes: u64,
    /// Episodes with a finding about their subject while they ran (for a negative
    /// class: episodes with a false alarm).
    pub episodes_detected: u64,
    /// Attack class: median time to detect, seconds.
    pub ttd_median_secs: Option<f64>,
    /// Attack class: 95th percentile time to detect, seconds.
    pub ttd_p95_secs: Option<f64>,
    /// Units of this class flagged by each finding kind.
    pub kinds: BTreeMap<String, u64>,
}

/// The whole score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    /// The `hold` used, seconds.
    pub hold_secs: f64,
    /// Every attack class pooled against the negatives.
    pub overall: Confusion,
    /// One entry per class, negatives first, then by name.
    pub classes: Vec<ClassScore>,
    /// Findings raised, by kind (whether or not they flagged any unit).
    pub findings_by_kind: BTreeMap<String, u64>,
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

fn f1(p: Option<f64>, r: Option<f64>) -> Option<f64> {
    match (p, r) {
        (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
        (Some(_), Some(_)) => Some(0.0),
        _ => None,
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Units of one subject key, sorted by first time, with the longest unit's span.
#[derive(Default)]
struct Posting {
    units: Vec<usize>,
    max_span: Duration,
    subjects: BTreeSet<String>,
}

fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    b.duration_since(a).map_or(0.0, |d| d.as_secs_f64())
}

#[derive(Default)]
struct ClassAcc {
    units: u64,
    flagged: u64,
    episodes: u64,
    detected: u64,
    ttd: Vec<f64>,
    kinds: BTreeMap<String, u64>,
}

/// Scores findings against the labels of their recordings.
pub fn score(runs: &[Scored<'_>], opts: &ScoreOptions) -> Score {
    let hold = opts.hold;
    let mut classes: BTreeMap<String, ClassAcc> = BTreeMap::new();
    let mut findings_by_kind: BTreeMap<String, u64> = BTreeMap::new();
    for run in runs {
        let units = run.units;
        let mut by_peer: HashMap<IpAddr, Posting> = HashMap::new();
        let mut by_device: HashMap<&DeviceRef, Posting> = HashMap::new();
        for (i, u) in units.iter().enumerate() {
            let span = u.last.duration_since(u.first).unwrap_or_default();
            let add = |p: &mut Posting| {
                p.units.push(i);
                p.max_span = p.max_span.max(span);
                if !p.subjects.contains(&u.subject) {
                    p.subjects.insert(u.subject.clone());
                }
            };
            if let Some(ip) = u.peer {
                add(by_peer.entry(ip).or_default());
            }
            for d in &u.devices {
                add(by_device.entry(d).or_default());
            }
        }
        for p in by_peer.values_mut().chain(by_device.values_mut()) {
            p.units.sort_by_key(|&i| (units[i].first, i));
        }

        let mut kinds_of: Vec<BTreeSet<&str>> = vec![BTreeSet::new(); units.len()];
        let mut subject_times: HashMap<&str, Vec<SystemTime>> = HashMap::new();
        for f in run.findings {
            *findings_by_kind.entry(f.kind.clone()).or_default() += 1;
            let postings = [
                f.peer.and_then(|ip| by_peer.get(&ip)),
                f.device.as_ref().and_then(|d| by_device.get(d)),
            ];
            let mut subjects: BTreeSet<&str> = BTreeSet::new();
            for p in postings.into_iter().flatten() {
                subjects.extend(p.subjects.iter().map(String::as_str));
                // Units with first <= at + hold, and first >= at - max_span (else they
                // ended before `at`).
                let lo =
                    f.at.checked_sub(p.max_span)
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                let hi = f.at + hold;
                let start = p.units.partition_point(|&i| units[i].first < lo);
                for &i in &p.units[start..] {
                    let u = &units[i];
                    if u.first > hi {
                        break;
                    }
                    if f.at <= u.last {
                        kinds_of[i].insert(f.kind.as_str());
                    }
                }
            }
            for s in subjects {
                subject_times.entry(s).or_default().push(f.at);
            }
        }
        for times in subject_times.values_mut() {
            times.sort_unstable();
        }

        for (i, u) in units.iter().enumerate() {
            let acc = classes.entry(u.label.clone()).or_default();
            acc.units += 1;
            if !kinds_of[i].is_empty() {
                acc.flagged += 1;
            }
            for k in &kinds_of[i] {
                *acc.kinds.entry((*k).to_owned()).or_default() += 1;
            }
        }

        // Episodes: runs of one subject's units of one class, in time order.
        let mut by_subject: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, u) in units.iter().enumerate() {
            by_subject.entry(u.subject.as_str()).or_default().push(i);
        }
        for (subject, mut list) in by_subject {
            list.sort_by_key(|&i| (units[i].first, i));
            let times = subject_times.get(subject).map_or(&[][..], Vec::as_slice);
            let mut k = 0;
            while k < list.len() {
                let label = &units[list[k]].label;
                let start = units[list[k]].first;
                let mut end = units[list[k]].last;
                let mut j = k;
                while j < list.len() && &units[list[j]].label == label {
                    end = end.max(units[list[j]].last);
                    j += 1;
                }
                let acc = classes.entry(label.clone()).or_default();
                acc.episodes += 1;
                let first = times.partition_point(|t| *t < start);
                if let Some(t) = times.get(first).filter(|t| **t <= end) {
                    acc.detected += 1;
                    acc.ttd.push(secs_between(start, *t));
                }
                k = j;
            }
        }
    }

    let is_negative = |c: &str| opts.negative.iter().any(|n| n == c);
    let neg_units: u64 = classes
        .iter()
        .filter(|(c, _)| is_negative(c))
        .map(|(_, a)| a.units)
        .sum();
    let neg_flagged: u64 = classes
        .iter()
        .filter(|(c, _)| is_negative(c))
        .map(|(_, a)| a.flagged)
        .sum();
    let (mut tp, mut pos) = (0, 0);
    let mut out = Vec::new();
    for (class, mut acc) in classes {
        let attack = !is_negative(&class);
        acc.ttd.sort_by(f64::total_cmp);
        let (recall, precision, fpr) = if attack {
            tp += acc.flagged;
            pos += acc.units;
            (
                ratio(acc.flagged, acc.units),
                ratio(acc.flagged, acc.flagged + neg_flagged),
                None,
            )
        } else {
            (None, None, ratio(acc.flagged, acc.units))
        };
        out.push(ClassScore {
            attack,
            units: acc.units,
            flagged: acc.flagged,
            recall,
            precision,
            f1: if attack { f1(precision, recall) } else { None },
            fpr,
            episodes: acc.episodes,
            episodes_detected: acc.detected,
            ttd_median_secs: percentile(&acc.ttd, 0.5).filter(|_| attack),
            ttd_p95_secs: percentile(&acc.ttd, 0.95).filter(|_| attack),
            kinds: acc.kinds,
            class,
        });
    }
    out.sort_by(|a, b| (a.attack, &a.class).cmp(&(b.attack, &b.class)));
    Score {
        hold_secs: hold.as_secs_f64(),
        overall: Confusion::new(tp, neg_flagged, neg_units - neg_flagged, pos - tp),
        classes: out,
        findings_by_kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_types::Severity;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    fn flow(label: &str, ip: &str, first: u64, last: u64) -> Unit {
        let peer: IpAddr = ip.parse().unwrap();
        Unit {
            label: label.into(),
            subject: format!("ip:{peer}"),
            peer: Some(peer),
            devices: Vec::new(),
            first: t(first),
            last: t(last),
            open: false,
        }
    }

    fn finding(kind: &str, ip: Option<&str>, device: Option<&str>, at: u64) -> Finding {
        Finding {
            at: t(at),
            device: device.map(|d| d.parse().unwrap()),
            peer: ip.map(|i| i.parse().unwrap()),
            kind: kind.into(),
            severity: Severity::High,
            confidence: 1.0,
            technique: None,
            summary: String::new(),
            evidence: BTreeMap::new(),
        }
    }

    #[test]
    fn hand_made_trace_scores_as_computed_by_hand() {
        // Attacker 10.0.0.9: 4 brute-force flows at 100, 110, 120, 1000. Benign 10.0.0.1:
        // 2 flows; benign 10.0.0.2: 1 flow carrying device acme/cam.
        let mut units = vec![
            flow("bruteforce", "10.0.0.9", 100, 101),
            flow("bruteforce", "10.0.0.9", 110, 111),
            flow("bruteforce", "10.0.0.9", 120, 121),
            flow("bruteforce", "10.0.0.9", 1000, 1001),
            flow("benign", "10.0.0.1", 0, 2000),
            flow("benign", "10.0.0.1", 3000, 3001),
            flow("benign", "10.0.0.2", 0, 50),
        ];
        units[6].devices.push("acme/cam".parse().unwrap());
        let findings = vec![
            // Raised during the second flow: flags it and the third (within hold 60 s),
            // not the first (over) nor the fourth (too late).
            finding("credential_brute_force", Some("10.0.0.9"), None, 110),
            // A false positive on the long benign flow.
            finding("burst", Some("10.0.0.1"), None, 500),
            // About a device: flags the unit carrying it.
            finding("cohort_deviation", None, Some("acme/cam"), 10),
            // About nobody in this trace.
            finding("burst", Some("192.0.2.1"), None, 10),
        ];
        let opts = ScoreOptions {
            hold: Duration::from_secs(60),
            ..Default::default()
        };
        let s = score(
            &[Scored {
                units: &units,
                findings: &findings,
            }],
            &opts,
        );
        assert_eq!(s.overall.tp, 2);
        assert_eq!(s.overall.fn_, 2);
        assert_eq!(s.overall.fp, 2);
        assert_eq!(s.overall.tn, 1);
        assert_eq!(s.overall.precision, Some(0.5));
        assert_eq!(s.overall.recall, Some(0.5));
        assert_eq!(s.overall.f1, Some(0.5));
        assert_eq!(s.overall.fpr, Some(2.0 / 3.0));

        let benign = &s.classes[0];
        assert_eq!(benign.class, "benign");
        assert!(!benign.attack);
        assert_eq!(benign.fpr, Some(2.0 / 3.0));
        assert_eq!(benign.kinds.get("burst"), Some(&1));
        assert_eq!(benign.kinds.get("cohort_deviation"), Some(&1));

        let bf = &s.classes[1];
        assert_eq!(bf.class, "bruteforce");
        assert_eq!((bf.units, bf.flagged), (4, 2));
        assert_eq!(bf.recall, Some(0.5));
        assert_eq!(bf.precision, Some(0.5));
        // One episode (all four flows of 10.0.0.9), detected 10 s after its start.
        assert_eq!((bf.episodes, bf.episodes_detected), (1, 1));
        assert_eq!(bf.ttd_median_secs, Some(10.0));
        assert_eq!(bf.ttd_p95_secs, Some(10.0));
        assert_eq!(bf.kinds.get("credential_brute_force"), Some(&2));
        assert_eq!(s.findings_by_kind.get("burst"), Some(&2));
    }

    #[test]
    fn rows_of_one_device_form_episodes_per_class() {
        let dev: DeviceRef = "replay/fridge-1".parse().unwrap();
        let row = |label: &str, at: u64| Unit {
            label: label.into(),
            subject: "device:replay/fridge-1".into(),
            peer: None,
            devices: vec![dev.clone()],
            first: t(at),
            last: t(at),
            open: false,
        };
        let units = vec![
            row("normal", 0),
            row("normal", 10),
            row("ddos", 20),
            row("ddos", 30),
            row("ddos", 40),
            row("xss", 50),
            row("normal", 60),
        ];
        // One finding at 35: with hold 10 it flags rows at 40 only (35 <= last and
        // first - 10 <= 35), and detects the ddos episode 15 s after it began.
        let findings = vec![finding(
            "out_of_range_reading",
            None,
            Some("replay/fridge-1"),
            35,
        )];
        let s = score(
            &[Scored {
                units: &units,
                findings: &findings,
            }],
            &ScoreOptions {
                hold: Duration::from_secs(10),
                ..Default::default()
            },
        );
        let ddos = s.classes.iter().find(|c| c.class == "ddos").unwrap();
        assert_eq!((ddos.units, ddos.flagged), (3, 1));
        assert_eq!((ddos.episodes, ddos.episodes_detected), (1, 1));
        assert_eq!(ddos.ttd_median_secs, Some(15.0));
        let normal = s.classes.iter().find(|c| c.class == "normal").unwrap();
        assert_eq!((normal.units, normal.flagged, normal.episodes), (3, 0, 2));
        assert_eq!(normal.fpr, Some(0.0));
        let xss = s.classes.iter().find(|c| c.class == "xss").unwrap();
        assert_eq!((xss.episodes_detected, xss.recall), (0, Some(0.0)));
        // Nothing flagged at all: precision is undefined, not zero.
        assert_eq!(xss.precision, None);
        assert_eq!(xss.f1, None);
        assert_eq!(xss.ttd_median_secs, None);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(10.0));
        assert_eq!(percentile(&v, 0.95), Some(19.0));
        assert_eq!(percentile(&v[..1], 0.95), Some(1.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
