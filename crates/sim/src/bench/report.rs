//! Results: figures per broker, the Gatehouse/Mosquitto ratio (and, when Gatehouse ran
//! with each gate, the trust-gate/static-gate ratio), the targets, and their
//! rendering as a text table and as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use super::machine::Machine;

/// Which broker a row was measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerKind {
    /// Gatehouse (`gatehouse serve`), its data plane gated by trust verdicts (the default,
    /// `trust.gate = "trust"`).
    Gatehouse,
    /// Gatehouse with `trust.gate = "static-policy-only"`: gated by the static `[policy]`
    /// alone, to weigh the trust gate against.
    GatehouseStatic,
    /// Mosquitto.
    Mosquitto,
}

impl BrokerKind {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gatehouse => "gatehouse",
            Self::GatehouseStatic => "gatehouse-static",
            Self::Mosquitto => "mosquitto",
        }
    }

    /// Whether this is a `gatehouse serve` process (either gate).
    pub fn is_gatehouse(self) -> bool {
        matches!(self, Self::Gatehouse | Self::GatehouseStatic)
    }
}

/// Which two brokers a ratio compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// Gatehouse (trust gate) / Mosquitto.
    GatehouseOverMosquitto,
    /// Gatehouse with the trust gate / Gatehouse with the static gate.
    TrustOverStatic,
}

impl Comparison {
    /// Every comparison, in table order.
    pub const ALL: [Self; 2] = [Self::GatehouseOverMosquitto, Self::TrustOverStatic];

    /// The brokers compared: numerator, denominator.
    pub fn brokers(self) -> (BrokerKind, BrokerKind) {
        match self {
            Self::GatehouseOverMosquitto => (BrokerKind::Gatehouse, BrokerKind::Mosquitto),
            Self::TrustOverStatic => (BrokerKind::Gatehouse, BrokerKind::GatehouseStatic),
        }
    }

    /// The label in the table's broker column.
    pub fn label(self) -> &'static str {
        match self {
            Self::GatehouseOverMosquitto => "gh/mq",
            Self::TrustOverStatic => "trust/static",
        }
    }
}

/// Which direction of a figure is good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    /// More is better.
    Higher,
    /// Less is better.
    Lower,
    /// Context, not a score.
    Info,
}

impl Better {
    fn mark(self) -> &'static str {
        match self {
            Self::Higher => " ↑",
            Self::Lower => " ↓",
            Self::Info => "",
        }
    }
}

/// One measured number.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Short name, unit included (`delivered msg/s`).
    pub name: &'static str,
    /// The value; `None` when it could not be measured.
    pub value: Option<f64>,
    /// Which direction is good.
    pub better: Better,
    /// Decimals shown in the table.
    #[serde(skip)]
    pub decimals: usize,
}

impl Figure {
    /// A figure where more is better.
    pub fn higher(name: &'static str, value: impl Into<Option<f64>>, decimals: usize) -> Self {
        Self {
            name,
            value: value.into(),
            better: Better::Higher,
            decimals,
        }
    }

    /// A figure where less is better.
    pub fn lower(name: &'static str, value: impl Into<Option<f64>>, decimals: usize) -> Self {
        Self {
            name,
            value: value.into(),
            better: Better::Lower,
            decimals,
        }
    }

    /// A figure that is context only.
    pub fn info(name: &'static str, value: impl Into<Option<f64>>, decimals: usize) -> Self {
        Self {
            name,
            value: value.into(),
            better: Better::Info,
            decimals,
        }
    }
}

/// The figures of one broker for one variant of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The broker.
    pub broker: BrokerKind,
    /// Variant within the scenario (`qos0`, `qos1`, or `-`).
    pub variant: String,
    /// The figures, in table order.
    pub figures: Vec<Figure>,
    /// Anything worth knowing about the row (errors, limits hit).
    pub notes: Vec<String>,
}

/// Ratio of one broker's figure to another's (see [`Comparison`]).
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// The figure.
    pub name: &'static str,
    /// numerator / denominator.
    pub ratio: Option<f64>,
    /// Which direction is good.
    pub better: Better,
}

/// Ratios for one variant.
#[derive(Debug, Clone, Serialize)]
pub struct RatioRow {
    /// Variant within the scenario.
    pub variant: String,
    /// Which brokers are compared.
    pub of: Comparison,
    /// One per figure.
    pub ratios: Vec<Ratio>,
}

/// One scenario's results.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// Scenario name.
    pub scenario: &'static str,
    /// What was run, with its parameters.
    pub description: String,
    /// Rows, in the order measured.
    pub rows: Vec<Row>,
    /// Gatehouse / Mosquitto ratios, where both were measured, and trust-gate /
    /// static-gate ratios, where Gatehouse ran with both gates.
    pub ratios: Vec<RatioRow>,
    /// Brokers on which the scenario failed, and why.
    pub failures: Vec<String>,
}

impl ScenarioReport {
    /// A report for `rows`, with ratios computed.
    pub fn new(scenario: &'static str, description: String, rows: Vec<Row>) -> Self {
        let ratios = ratios(&rows);
        Self {
            scenario,
            description,
            rows,
            ratios,
            failures: Vec::new(),
        }
    }

    /// A figure of one broker and variant.
    pub fn figure(&self, broker: BrokerKind, variant: &str, name: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.broker == broker && r.variant == variant)?
            .figures
            .iter()
            .find(|f| f.name == name)?
            .value
    }

    /// The text table.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\n== {}: {}", self.scenario, self.description);
        for failure in &self.failures {
            let _ = writeln!(out, "  FAILED {failure}");
        }
        let Some(first) = self.rows.first() else {
            return out;
        };
        let mut header = vec!["variant".to_owned(), "broker".to_owned()];
        header.extend(
            first
                .figures
                .iter()
                .map(|f| format!("{}{}", f.name, f.better.mark())),
        );
        let mut lines: Vec<Vec<String>> = Vec::new();
        let mut variants: Vec<&str> = Vec::new();
        for row in &self.rows {
            if !variants.contains(&row.variant.as_str()) {
                variants.push(&row.variant);
            }
        }
        for variant in variants {
            for row in self.rows.iter().filter(|r| r.variant == variant) {
                let mut line = vec![row.variant.clone(), row.broker.name().to_owned()];
                line.extend(
                    row.figures
                        .iter()
                        .map(|f| format_value(f.value, f.decimals)),
                );
                lines.push(line);
            }
            for ratio in self.ratios.iter().filter(|r| r.variant == variant) {
                let mut line = vec![variant.to_owned(), ratio.of.label().to_owned()];
                line.extend(ratio.ratios.iter().map(|r| match r.ratio {
                    Some(v) => format!("{v:.2}x"),
                    None => "-".to_owned(),
                }));
                lines.push(line);
            }
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                lines
                    .iter()
                    .map(|l| l.get(i).map_or(0, |s| s.chars().count()))
                    .chain(std::iter::once(header[i].chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let fmt_line = |cells: &[String]| {
            let mut s = String::from("  ");
            for (i, cell) in cells.iter().enumerate() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                if i < 2 {
                    s.push_str(cell);
                    s.push_str(&" ".repeat(pad + 2));
                } else {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(cell);
                    s.push_str("  ");
                }
            }
            s.trim_end().to_owned()
        };
        let _ = writeln!(out, "{}", fmt_line(&header));
        for line in &lines {
            let _ = writeln!(out, "{}", fmt_line(line));
        }
        for row in &self.rows {
            for note in &row.notes {
                let _ = writeln!(
                    out,
                    "  note ({} {}): {note}",
                    row.broker.name(),
                    row.variant
                );
            }
        }
        out
    }
}

fn ratios(rows: &[Row]) -> Vec<RatioRow> {
    let mut out = Vec::new();
    for of in Comparison::ALL {
        let (top, bottom) = of.brokers();
        for a in rows.iter().filter(|r| r.broker == top) {
            if let Some(b) = rows
                .iter()
                .find(|r| r.broker == bottom && r.variant == a.variant)
            {
                out.push(ratio_row(of, a, b));
            }
        }
    }
    // Grouped by variant, in the order the variants were measured (stable sort).
    let order = |variant: &str| rows.iter().position(|r| r.variant == variant);
    out.sort_by_key(|r| order(&r.variant));
    out
}

fn ratio_row(of: Comparison, a: &Row, b: &Row) -> RatioRow {
    let ratios = a
        .figures
        .iter()
        .map(|f| {
            let other = b.figures.iter().find(|o| o.name == f.name);
            let ratio = match (f.value, other.and_then(|o| o.value)) {
                (Some(a), Some(b)) if b != 0.0 => Some(a / b),
                _ => None,
            };
            Ratio {
                name: f.name,
                ratio,
                better: f.better,
            }
        })
        .collect();
    RatioRow {
        variant: a.variant.clone(),
        of,
        ratios,
    }
}

/// Formats a number with thousands separators and `decimals` decimals.
pub fn format_value(value: Option<f64>, decimals: usize) -> String {
    let Some(v) = value else {
        return "-".to_owned();
    };
    if !v.is_finite() {
        return "-".to_owned();
    }
    let text = format!("{:.*}", decimals, v.abs());
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i.to_owned(), Some(f.to_owned())),
        None => (text, None),
    };
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let sign = if v < 0.0 && v.abs() >= 0.5 * 10f64.powi(-(decimals as i32)) {
        "-"
    } else {
        ""
    };
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

/// One of the targets and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What the target says.
    pub target: &'static str,
    /// Gatehouse's figure (with its trust gate).
    pub gatehouse: Option<f64>,
    /// What it is held against: Mosquitto's figure, Gatehouse's with the static gate (for
    /// the trust gate's targets), or the absolute goal.
    pub mosquitto: Option<f64>,
    /// Met, missed, or `None` when not measured.
    pub met: Option<bool>,
}

/// EST enrollments per second (TLS included) the enrollment scenario should reach on the
/// bench machine.
pub const ENROLL_GOAL: f64 = 1_000.0;

/// Least share of the static gate's throughput the trust gate keeps (a loss of 10% at
/// most).
pub const TRUST_GATE_THROUGHPUT_SHARE: f64 = 0.90;

/// Longest time, in milliseconds, from a policy change's request to its answer, by which
/// every open session has been brought under the new set.
pub const POLICY_CHANGE_GOAL_MS: f64 = 100.0;

/// Longest p99, in milliseconds, from an attacker's first malicious packet to the
/// enforcement it sees on its own session, with [`DETECT_GOAL_DEVICES`] devices connected.
pub const DETECT_BLOCK_GOAL_MS: f64 = 250.0;

/// Connected devices the time-to-block goal is stated for.
pub const DETECT_GOAL_DEVICES: f64 = 10_000.0;

/// The targets, judged from the scenario reports that were run.
pub fn targets(reports: &[ScenarioReport], idle_goal: u32) -> Vec<Target> {
    use BrokerKind::{Gatehouse, GatehouseStatic, Mosquitto};
    let find = |scenario: &str| reports.iter().find(|r| r.scenario == scenario);
    let pair = |scenario: &str, variant: &str, name: &str| {
        find(scenario).map_or((None, None), |r| {
            (
                r.figure(Gatehouse, variant, name),
                r.figure(Mosquitto, variant, name),
            )
        })
    };
    let judge =
        |target, (gh, mq): (Option<f64>, Option<f64>), ok: &dyn Fn(f64, f64) -> bool| Target {
            target,
            gatehouse: gh,
            mosquitto: mq,
            met: gh.zip(mq).map(|(g, m)| ok(g, m)),
        };
    let gates = |variant: &str| {
        find("throughput").map_or((None, None), |r| {
            (
                r.figure(Gatehouse, variant, "delivered msg/s"),
                r.figure(GatehouseStatic, variant, "delivered msg/s"),
            )
        })
    };
    let idle_held = find("idle").and_then(|r| r.figure(Gatehouse, "-", "held"));
    let enrollments = find("enroll").and_then(|r| r.figure(Gatehouse, "enroll", "ops/s"));
    let policy_ms = find("trust").and_then(|r| r.figure(Gatehouse, "policy", "max ms"));
    let detect = |name: &str| find("detect").and_then(|r| r.figure(Gatehouse, "all", name));
    let block_p99 = detect("p99 ms");
    // Judged at the goal's size only, and missed when any round went unenforced.
    let block_met = match (detect("devices"), detect("rounds"), detect("enforced")) {
        (Some(devices), Some(rounds), Some(enforced)) if devices >= DETECT_GOAL_DEVICES => {
            Some(enforced >= rounds && block_p99.is_some_and(|p| p < DETECT_BLOCK_GOAL_MS))
        }
        _ => None,
    };
    vec![
        judge(
            "QoS 1 throughput >= Mosquitto's",
            pair("throughput", "qos1", "delivered msg/s"),
            &|g, m| g >= m,
        ),
        judge(
            "p99 latency (QoS 1) <= Mosquitto's",
            pair("latency", "qos1", "p99 µs"),
            &|g, m| g <= m,
        ),
        judge(
            "mTLS connection setup rate >= 2x Mosquitto's",
            pair("storm", "-", "conn/s"),
            &|g, m| g >= 2.0 * m,
        ),
        judge(
            "memory per idle mTLS connection <= Mosquitto's",
            pair("idle", "-", "broker B/conn"),
            &|g, m| g <= m,
        ),
        Target {
            target: "50,000 concurrent idle mTLS connections held",
            gatehouse: idle_held,
            mosquitto: Some(50_000.0),
            met: if idle_goal >= 50_000 {
                idle_held.map(|h| h >= 50_000.0)
            } else {
                None
            },
        },
        Target {
            target: "EST enrollments/s, TLS included, >= 1,000",
            gatehouse: enrollments,
            mosquitto: Some(ENROLL_GOAL),
            met: enrollments.map(|e| e >= ENROLL_GOAL),
        },
        judge(
            "QoS 0 throughput, trust gate >= 90% of static",
            gates("qos0"),
            &|t, s| t >= TRUST_GATE_THROUGHPUT_SHARE * s,
        ),
        judge(
            "QoS 1 throughput, trust gate >= 90% of static",
            gates("qos1"),
            &|t, s| t >= TRUST_GATE_THROUGHPUT_SHARE * s,
        ),
        Target {
            target: "policy change on all sessions, max ms < 100",
            gatehouse: policy_ms,
            mosquitto: Some(POLICY_CHANGE_GOAL_MS),
            met: policy_ms.map(|ms| ms < POLICY_CHANGE_GOAL_MS),
        },
        Target {
            target: "time to block p99 ms < 250, 10,000 devices",
            gatehouse: block_p99,
            mosquitto: Some(DETECT_BLOCK_GOAL_MS),
            met: block_met,
        },
    ]
}

/// Renders the targets as text.
pub fn render_targets(targets: &[Target]) -> String {
    let mut out = String::from(
        "\n== targets (gatehouse vs mosquitto, vs gatehouse-static for the trust gate, or vs \
         the goal)\n",
    );
    for t in targets {
        let verdict = match t.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        let _ = writeln!(
            out,
            "  {:<48} {:>14} vs {:>14}  {verdict}",
            t.target,
            format_value(t.gatehouse, 1),
            format_value(t.mosquitto, 1)
        );
    }
    out
}

/// The whole run, as written with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The machine.
    pub machine: Machine,
    /// The command line.
    pub command: String,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix: u64,
    /// Broker versions, as the brokers report them.
    pub versions: Vec<(BrokerKind, String)>,
    /// Scenario results.
    pub scenarios: Vec<ScenarioReport>,
    /// The targets.
    pub targets: Vec<Target>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(broker: BrokerKind, value: f64) -> Row {
        Row {
            broker,
            variant: "qos1".to_owned(),
            figures: vec![
                Figure::higher("delivered msg/s", value, 0),
                Figure::lower("p99 µs", None, 1),
            ],
            notes: vec![],
        }
    }

    #[test]
    fn ratios_are_gatehouse_over_mosquitto() {
        let report = ScenarioReport::new(
            "throughput",
            "test".to_owned(),
            vec![
                row(BrokerKind::Gatehouse, 300.0),
                row(BrokerKind::Mosquitto, 200.0),
            ],
        );
        assert_eq!(report.ratios.len(), 1);
        assert_eq!(report.ratios[0].ratios[0].ratio, Some(1.5));
        assert_eq!(report.ratios[0].ratios[1].ratio, None);
        let text = report.render();
        assert!(text.contains("1.50x"), "{text}");
        assert!(text.contains("delivered msg/s ↑"), "{text}");
        let targets = targets(&[report], 10);
        assert_eq!(targets[0].met, Some(true));
        assert_eq!(targets[1].met, None);
        assert_eq!(targets[4].met, None);
        assert_eq!(targets[5].met, None);
        assert!(targets[6..].iter().all(|t| t.met.is_none()));
    }

    #[test]
    fn gates_compare_trust_to_static_beside_gatehouse_to_mosquitto() {
        let report = ScenarioReport::new(
            "throughput",
            "test".to_owned(),
            vec![
                row(BrokerKind::Gatehouse, 270.0),
                row(BrokerKind::GatehouseStatic, 300.0),
                row(BrokerKind::Mosquitto, 200.0),
            ],
        );
        assert_eq!(report.ratios.len(), 2);
        assert_eq!(report.ratios[0].of, Comparison::GatehouseOverMosquitto);
        assert_eq!(report.ratios[0].ratios[0].ratio, Some(1.35));
        assert_eq!(report.ratios[1].of, Comparison::TrustOverStatic);
        assert_eq!(report.ratios[1].ratios[0].ratio, Some(0.9));
        let text = report.render();
        let lines: Vec<&str> = text.lines().collect();
        let at = |needle: &str| {
            lines
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in {text}"))
        };
        assert!(at("gatehouse-static") < at("gh/mq"), "{text}");
        assert!(at("gh/mq") < at("trust/static"), "{text}");
        assert!(text.contains("1.35x") && text.contains("0.90x"), "{text}");
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["ratios"][1]["of"], "trust_over_static");
        assert_eq!(json["rows"][1]["broker"], "gatehouse_static");

        // 90% of the static gate's throughput is the least that meets the target.
        let met = |trust: f64| {
            let r = ScenarioReport::new(
                "throughput",
                "test".to_owned(),
                vec![
                    row(BrokerKind::Gatehouse, trust),
                    row(BrokerKind::GatehouseStatic, 300.0),
                ],
            );
            targets(&[r], 10)
                .into_iter()
                .find(|t| t.target.starts_with("QoS 1 throughput, trust gate"))
                .and_then(|t| t.met)
        };
        assert_eq!(met(270.0), Some(true));
        assert_eq!(met(269.0), Some(false));
    }

    #[test]
    fn ratio_rows_follow_the_order_of_the_variants() {
        let mut rows = Vec::new();
        for variant in ["qos0", "qos1"] {
            for broker in [
                BrokerKind::Gatehouse,
                BrokerKind::GatehouseStatic,
                BrokerKind::Mosquitto,
            ] {
                let mut r = row(broker, 100.0);
                r.variant = variant.to_owned();
                rows.push(r);
            }
        }
        let report = ScenarioReport::new("latency", "test".to_owned(), rows);
        let order: Vec<(&str, Comparison)> = report
            .ratios
            .iter()
            .map(|r| (r.variant.as_str(), r.of))
            .collect();
        assert_eq!(
            order,
            vec![
                ("qos0", Comparison::GatehouseOverMosquitto),
                ("qos0", Comparison::TrustOverStatic),
                ("qos1", Comparison::GatehouseOverMosquitto),
                ("qos1", Comparison::TrustOverStatic),
            ]
        );
    }

    #[test]
    fn the_policy_change_target_is_judged_on_the_slowest_change() {
        let trust_row = |max_ms: f64| Row {
            broker: BrokerKind::Gatehouse,
            variant: "policy".to_owned(),
            figures: vec![
                Figure::lower("p50 ms", 10.0, 2),
                Figure::lower("max ms", max_ms, 2),
            ],
            notes: vec![],
        };
        let judge = |max_ms: f64| {
            let r = ScenarioReport::new("trust", "test".to_owned(), vec![trust_row(max_ms)]);
            targets(&[r], 10)
                .into_iter()
                .find(|t| t.target.starts_with("policy change"))
                .and_then(|t| t.met)
        };
        assert_eq!(judge(99.9), Some(true));
        assert_eq!(judge(100.0), Some(false));
    }

    #[test]
    fn values_are_grouped() {
        assert_eq!(format_value(Some(1234567.891), 1), "1,234,567.9");
        assert_eq!(format_value(Some(999.0), 0), "999");
        assert_eq!(format_value(Some(-1500.0), 0), "-1,500");
        assert_eq!(format_value(None, 0), "-");
        assert_eq!(format_value(Some(0.25), 2), "0.25");
    }
}
