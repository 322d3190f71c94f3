//! Learning a model profile from recorded benign traffic: the topics a model's devices
//! publish on, how often, and the range of each numeric reading.
//!
//! Only units of a benign class (`benign`, `normal`) are read: attack rows and flows of
//! the same recording are left out, whatever they carried. What comes out is a profile
//! in the form `gatehouse profile set` takes (see docs/trust.md), with each learned value
//! explained beside it, for an operator to review before uploading. Ranges are robust:
//! the 0.1% and 99.9% quantiles of the benign readings, widened by a tenth of their span,
//! so that one stray reading in the training data does not set a bound, and a value a
//! little past what was seen is not an alarm. Rates are generous on purpose (a profile's
//! rate is also enforced at the gate): twice the busiest minute seen, at least 6 a
//! minute.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use gatehouse_types::Observation;

use crate::trace::{Trace, observed_at};

/// Classes whose units are learned from.
const BENIGN: [&str; 2] = ["benign", "normal"];

/// Fewest readings of a field before a range is learned for it.
pub const MIN_READINGS: usize = 30;

/// Deepest JSON nesting followed into a payload's objects (`a.b.c`).
const MAX_DEPTH: usize = 4;

/// Most distinct fields kept per topic; past it, new names are counted, not learned.
const MAX_FIELDS: usize = 64;

/// Most distinct values of a text field remembered.
pub const MAX_TEXT_VALUES: usize = 16;

/// What was learned of one topic.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnedTopic {
    /// The topic, with the device's own level written `{device}`.
    pub pattern: String,
    /// Benign publishes seen on it.
    pub publishes: u64,
    /// Most publishes of one device in one minute (of the clock, by its timestamps).
    pub busiest_minute: u64,
    /// Most publishes of one device in one second.
    pub busiest_second: u64,
    /// Numeric fields, by dotted path.
    pub fields: BTreeMap<String, LearnedField>,
    /// Text fields, by dotted path: the distinct values seen, up to [`MAX_TEXT_VALUES`].
    pub text_fields: BTreeMap<String, BTreeSet<String>>,
    /// Payloads that were not a JSON object.
    pub not_json: u64,
    /// Field names past [`MAX_FIELDS`], not learned.
    pub fields_dropped: u64,
}

/// The readings of one numeric field.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LearnedField {
    values: Vec<f64>,
    /// Changes between consecutive benign readings of one device, no more than
    /// [`MAX_GAP`] apart.
    steps: Vec<f64>,
    /// The most times in a row one device repeated its previous reading.
    longest_repeats: u32,
}

/// One device's previous reading of each field on a topic: the value, when it came, and
/// how many times in a row it had repeated the one before.
type Previous = BTreeMap<String, (f64, SystemTime, u32)>;

/// Consecutive readings further apart than this are not a step (the detector's default
/// `reading_jump.max_gap`).
pub const MAX_GAP: std::time::Duration = std::time::Duration::from_secs(300);

/// A numeric field's learned range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    /// Readings it was learned from.
    pub readings: usize,
    /// The 0.1% quantile of the readings.
    pub low: f64,
    /// The 99.9% quantile.
    pub high: f64,
    /// The least reading.
    pub min_seen: f64,
    /// The greatest reading.
    pub max_seen: f64,
    /// The range's lower bound: `low` less a tenth of the span.
    pub min: f64,
    /// The range's upper bound: `high` plus a tenth of the span.
    pub max: f64,
}

/// A numeric field's learned largest step between consecutive readings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Steps it was learned from.
    pub steps: usize,
    /// The 99.9% quantile of the steps.
    pub high: f64,
    /// The largest step seen.
    pub max_seen: f64,
    /// The bound: `high` and half as much again.
    pub max_step: f64,
}

/// A profile learned from benign traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Learned {
    /// The model the traffic is of.
    pub model: String,
    /// Units read, benign and not.
    pub units: usize,
    /// Benign units learned from.
    pub benign_units: usize,
    /// First and last benign publish.
    pub span: Option<(SystemTime, SystemTime)>,
    /// Topics, by pattern.
    pub topics: BTreeMap<String, LearnedTopic>,
}

/// Nearest-rank quantile `p` of sorted `v` (not empty).
fn quantile(v: &[f64], p: f64) -> f64 {
    let i = ((v.len() as f64) * p).ceil() as usize;
    v[i.clamp(1, v.len()) - 1]
}

impl LearnedField {
    /// The most repeats in a row to allow: twice the longest run of one device's benign
    /// readings (at least 3), for a field of at least [`MIN_READINGS`] readings taking
    /// more than 10 distinct values (a measurement: a status or a setting may hold its
    /// value for as long as it likes).
    pub fn max_repeats(&self) -> Option<u32> {
        if self.values.len() < MIN_READINGS {
            return None;
        }
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        v.dedup();
        (v.len() > 10).then(|| self.longest_repeats.saturating_mul(2).max(3))
    }

    /// The largest step to allow between consecutive readings, when there are at least
    /// [`MIN_READINGS`] steps and they are not all zero.
    pub fn step(&self) -> Option<Step> {
        if self.steps.len() < MIN_READINGS {
            return None;
        }
        let mut v = self.steps.clone();
        v.sort_by(f64::total_cmp);
        let high = quantile(&v, 0.999);
        (high > 0.0).then(|| Step {
            steps: v.len(),
            high,
            max_seen: v[v.len() - 1],
            max_step: high * 1.5,
        })
    }

    /// The robust range of the readings, when there are at least [`MIN_READINGS`].
    pub fn range(&self) -> Option<Range> {
        if self.values.len() < MIN_READINGS {
            return None;
        }
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        let (low, high) = (quantile(&v, 0.001), quantile(&v, 0.999));
        let span = high - low;
        let margin = if span > 0.0 {
            span / 10.0
        } else {
            // A constant reading: allow a little either side of it.
            (low.abs() / 20.0).max(1e-6)
        };
        Some(Range {
            readings: v.len(),
            low,
            high,
            min_seen: v[0],
            max_seen: v[v.len() - 1],
            min: low - margin,
            max: high + margin,
        })
    }
}

impl LearnedTopic {
    fn new(pattern: String) -> Self {
        Self {
            pattern,
            publishes: 0,
            busiest_minute: 0,
            busiest_second: 0,
            fields: BTreeMap::new(),
            text_fields: BTreeMap::new(),
            not_json: 0,
            fields_dropped: 0,
        }
    }

    /// The rate to state: twice the busiest minute, at least 6 a minute.
    pub fn rate_per_minute(&self) -> u64 {
        (self.busiest_minute * 2).max(6)
    }

    /// The burst to state: twice the busiest second, at least 5.
    pub fn burst(&self) -> u64 {
        (self.busiest_second * 2).max(5)
    }

    /// Takes one payload's readings; `previous` holds the device's last reading of each
    /// numeric field on this topic and when it came.
    fn add_payload(&mut self, value: &serde_json::Value, at: SystemTime, previous: &mut Previous) {
        let mut numbers = Vec::new();
        self.add_json("", value, 1, &mut numbers);
        for (path, x) in numbers {
            let before = previous.get(&path).copied();
            let repeats = match before {
                // Compared as the detector compares them.
                Some((b, _, n)) if b as f32 == x as f32 => n.saturating_add(1),
                _ => 0,
            };
            previous.insert(path.clone(), (x, at, repeats));
            let Some(field) = self.fields.get_mut(&path) else {
                continue;
            };
            field.longest_repeats = field.longest_repeats.max(repeats);
            if let Some((b, when, _)) = before
                && at.duration_since(when).is_ok_and(|gap| gap <= MAX_GAP)
            {
                field.steps.push((x - b).abs());
            }
        }
    }

    fn add_json(
        &mut self,
        prefix: &str,
        value: &serde_json::Value,
        depth: usize,
        numbers: &mut Vec<(String, f64)>,
    ) {
        let serde_json::Value::Object(map) = value else {
            return;
        };
        for (key, v) in map {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match v {
                serde_json::Value::Number(n) => {
                    if let Some(x) = n.as_f64().filter(|x| x.is_finite()) {
                        if !self.fields.contains_key(&path) && self.field_count() >= MAX_FIELDS {
                            self.fields_dropped += 1;
                            continue;
                        }
                        self.fields.entry(path.clone()).or_default().values.push(x);
                        numbers.push((path, x));
                    }
                }
                serde_json::Value::String(s) => {
                    if !self.text_fields.contains_key(&path) && self.field_count() >= MAX_FIELDS {
                        self.fields_dropped += 1;
                        continue;
                    }
                    let seen = self.text_fields.entry(path).or_default();
                    if seen.len() < MAX_TEXT_VALUES {
                        seen.insert(s.chars().take(40).collect());
                    }
                }
                serde_json::Value::Object(_) if depth < MAX_DEPTH => {
                    self.add_json(&path, v, depth + 1, numbers);
                }
                _ => {}
            }
        }
    }

    fn field_count(&self) -> usize {
        self.fields.len() + self.text_fields.len()
    }
}

/// Whether a class is one profiles are learned from.
pub fn is_benign(class: &str) -> bool {
    BENIGN.iter().any(|b| b.eq_ignore_ascii_case(class))
}

/// Learns `model`'s profile from the benign publishes of `traces`.
pub fn learn(model: &str, traces: &[Trace]) -> Learned {
    let mut learned = Learned {
        model: model.to_owned(),
        units: 0,
        benign_units: 0,
        span: None,
        topics: BTreeMap::new(),
    };
    // (pattern, device) → (minute, count in it), (second, count in it)
    let mut minutes: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    let mut seconds: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    // (pattern, device) → field → the device's previous benign reading and its time.
    let mut previous: BTreeMap<(String, String), Previous> = BTreeMap::new();
    for trace in traces {
        learned.units += trace.units.len();
        learned.benign_units += trace.units.iter().filter(|u| is_benign(&u.label)).count();
        // In time order, so that the per-minute counts are counts of the clock's minutes.
        let mut order: Vec<usize> = (0..trace.events.len()).collect();
        order.sort_by_key(|&i| observed_at(&trace.events[i].obs));
        for i in order {
            let event = &trace.events[i];
            let Observation::Publish(p) = &event.obs else {
                continue;
            };
            let device = p.identity.device.as_str();
            let pattern = generalise(&p.topic, device);
            if !trace
                .units
                .get(event.unit)
                .is_some_and(|u| is_benign(&u.label))
            {
                // A step across an attack's readings is not a benign step.
                previous.remove(&(pattern, device.to_owned()));
                continue;
            }
            let topic = learned
                .topics
                .entry(pattern.clone())
                .or_insert_with(|| LearnedTopic::new(pattern.clone()));
            topic.publishes += 1;
            let secs = p.at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let key = (pattern, device.to_owned());
            for (table, width, busiest) in [
                (&mut minutes, 60, &mut topic.busiest_minute),
                (&mut seconds, 1, &mut topic.busiest_second),
            ] {
                let slot = table.entry(key.clone()).or_insert((secs / width, 0));
                if slot.0 == secs / width {
                    slot.1 += 1;
                } else {
                    *slot = (secs / width, 1);
                }
                *busiest = (*busiest).max(slot.1);
            }
            match serde_json::from_slice::<serde_json::Value>(&p.payload) {
                Ok(v @ serde_json::Value::Object(_)) => {
                    topic.add_payload(&v, p.at, previous.entry(key).or_default());
                }
                _ => topic.not_json += 1,
            }
            learned.span = Some(match learned.span {
                None => (p.at, p.at),
                Some((a, b)) => (a.min(p.at), b.max(p.at)),
            });
        }
    }
    learned
}

/// `topic` with the level that is the device's id written `{device}`.
fn generalise(topic: &str, device: &str) -> String {
    topic
        .split('/')
        .map(|level| if level == device { "{device}" } else { level })
        .collect::<Vec<_>>()
        .join("/")
}

/// A TOML string, quoted and escaped as TOML writes it.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A float as TOML writes it, rounded to what a reading needs.
fn number(x: f64) -> String {
    let rounded = (x * 1e6).round() / 1e6;
    let text = format!("{rounded}");
    if text.contains(['.', 'e', 'E']) {
        text
    } else {
        format!("{text}.0")
    }
}

/// The UTC calendar date of `t`.
fn date(t: SystemTime) -> String {
    let d = time::OffsetDateTime::from(t).date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

impl Learned {
    /// The profile as TOML, for `manufacturer`'s model at firmware `firmware`, each
    /// learned value explained in a comment.
    pub fn to_toml(&self, manufacturer: &str, firmware: &str, sources: &[String]) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "# Learned by `gatehouse profile learn` from {} benign units of {} read ({}).",
            self.benign_units,
            self.units,
            sources.join(", ")
        );
        if let Some((a, b)) = self.span {
            let _ = writeln!(t, "# Benign traffic from {} to {}.", date(a), date(b));
        }
        let _ = writeln!(
            t,
            "# Review it before uploading: a range is what the training data showed, not what\n\
             # the device can do, and the rate is also enforced at the gate."
        );
        let _ = writeln!(t, "manufacturer = {}", quoted(manufacturer));
        let _ = writeln!(t, "model = {}", quoted(&self.model));
        let _ = writeln!(t);
        let _ = writeln!(t, "[firmware]");
        let _ = writeln!(t, "current = {}", quoted(firmware));
        let _ = writeln!(t, "supported = [{}]", quoted(firmware));
        for topic in self.topics.values() {
            let _ = writeln!(t);
            let _ = writeln!(
                t,
                "# {} benign publishes; busiest minute {}, busiest second {} (one device).",
                topic.publishes, topic.busiest_minute, topic.busiest_second
            );
            let _ = writeln!(t, "[[topics]]");
            let _ = writeln!(t, "pattern = {}", quoted(&topic.pattern));
            let _ = writeln!(t, "direction = \"publish\"");
            let _ = writeln!(t, "kind = \"telemetry\"");
            let _ = writeln!(t, "rate = \"{}/min\"", topic.rate_per_minute());
            let _ = writeln!(t, "burst = {}", topic.burst());
            if topic.not_json > 0 {
                let _ = writeln!(
                    t,
                    "# {} payloads were not JSON objects: no format stated.",
                    topic.not_json
                );
                continue;
            }
            let _ = writeln!(t, "payload = \"json\"");
            for (name, seen) in &topic.text_fields {
                let values: Vec<&str> = seen.iter().map(String::as_str).collect();
                let more = if seen.len() >= MAX_TEXT_VALUES {
                    ", and more"
                } else {
                    ""
                };
                let _ = writeln!(
                    t,
                    "# {name}: text ({}{more}); profiles bound numbers only.",
                    values.join(", ")
                );
            }
            if topic.fields_dropped > 0 {
                let _ = writeln!(
                    t,
                    "# {} readings of fields past the first {MAX_FIELDS} were not learned.",
                    topic.fields_dropped
                );
            }
            for (name, field) in &topic.fields {
                match field.range() {
                    Some(r) => {
                        let _ = writeln!(
                            t,
                            "# {name}: {} readings, seen {}..{}; 0.1%..99.9% {}..{}, widened by a tenth.",
                            r.readings,
                            number(r.min_seen),
                            number(r.max_seen),
                            number(r.low),
                            number(r.high)
                        );
                        let step = field.step();
                        if let Some(s) = step {
                            let _ = writeln!(
                                t,
                                "# {name}: {} steps between consecutive readings within {}s, largest {}; 99.9% {}, and half as much again.",
                                s.steps,
                                MAX_GAP.as_secs(),
                                number(s.max_seen),
                                number(s.high)
                            );
                        }
                        let _ = writeln!(t, "[[topics.fields]]");
                        let _ = writeln!(t, "name = {}", quoted(name));
                        let _ = writeln!(t, "min = {}", number(r.min));
                        let _ = writeln!(t, "max = {}", number(r.max));
                        if let Some(s) = step {
                            let _ = writeln!(t, "max_step = {}", number(s.max_step));
                        }
                        if let Some(n) = field.max_repeats() {
                            let _ = writeln!(
                                t,
                                "# longest run of one device repeating its reading: {}; twice that.",
                                field.longest_repeats
                            );
                            let _ = writeln!(t, "max_repeats = {n}");
                        }
                    }
                    None => {
                        let _ = writeln!(
                            t,
                            "# {name}: only {} readings (fewer than {MIN_READINGS}): no range learned.",
                            field.values.len()
                        );
                    }
                }
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_ignores_the_stray_reading_and_keeps_a_margin() {
        let mut f = LearnedField::default();
        f.values.extend((0..10_000).map(|i| f64::from(i % 100)));
        f.values.push(1e9);
        let r = f.range().unwrap();
        assert_eq!((r.low, r.high), (0.0, 99.0));
        assert!(
            (r.min - -9.9).abs() < 1e-9 && (r.max - 108.9).abs() < 1e-9,
            "{r:?}"
        );
        assert_eq!(r.max_seen, 1e9);
    }

    #[test]
    fn steps_are_learned_between_close_readings_only() {
        let mut topic = LearnedTopic::new("devices/{device}/telemetry".into());
        let mut previous = BTreeMap::new();
        let t0 = UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        for i in 0..100u32 {
            // Up and down by 1, a reading a second.
            let v = serde_json::json!({ "temp": 20 + (i % 2), "env": { "hum": 40 } });
            topic.add_payload(
                &v,
                t0 + std::time::Duration::from_secs(u64::from(i)),
                &mut previous,
            );
        }
        // After an hour away, somewhere else: not a step.
        let v = serde_json::json!({ "temp": 90 });
        topic.add_payload(
            &v,
            t0 + std::time::Duration::from_secs(3_700),
            &mut previous,
        );
        let temp = &topic.fields["temp"];
        let s = temp.step().unwrap();
        assert_eq!((s.steps, s.high, s.max_seen), (99, 1.0, 1.0));
        assert_eq!(s.max_step, 1.5);
        // A constant reading has no step to learn, and no repeats to bound: it may be a
        // setting.
        assert!(topic.fields["env.hum"].step().is_none());
        assert!(topic.fields["env.hum"].max_repeats().is_none());
        // temp alternates: never repeated, but only two values, so no bound either.
        assert_eq!(topic.fields["temp"].longest_repeats, 0);
        assert!(topic.fields["temp"].max_repeats().is_none());
    }

    #[test]
    fn too_few_readings_learn_no_range() {
        let mut f = LearnedField::default();
        f.values.extend([1.0; MIN_READINGS - 1]);
        assert!(f.range().is_none());
        f.values.push(1.0);
        let r = f.range().unwrap();
        assert!(r.min < 1.0 && r.max > 1.0, "{r:?}");
    }

    #[test]
    fn the_device_level_of_a_topic_becomes_a_placeholder() {
        assert_eq!(
            generalise("devices/fridge-1/telemetry", "fridge-1"),
            "devices/{device}/telemetry"
        );
        assert_eq!(
            generalise("plant/line-2/temp", "meter-9"),
            "plant/line-2/temp"
        );
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(date(UNIX_EPOCH), "1970-01-01");
        assert_eq!(
            date(UNIX_EPOCH + std::time::Duration::from_secs(1_556_245_180)),
            "2019-04-26"
        );
    }
}
