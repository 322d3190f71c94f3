//! Command-line arguments of `gatehouse bench`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use gatehouse_mqtt::{ProtocolVersion, QoS};

/// Arguments of `gatehouse bench`: which brokers, which scenarios, and their sizes.
#[derive(Debug, Clone, Args)]
#[command(
    about = "Measure Gatehouse's MQTT broker against Mosquitto on this machine, and its EST \
             enrollment"
)]
pub struct BenchArgs {
    /// Brokers to measure; both run one after the other, never at the same time.
    #[arg(long, value_enum, default_value_t = TargetArg::Both)]
    pub target: TargetArg,

    /// Scenarios to run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub scenario: Vec<ScenarioArg>,

    /// The gatehouse binary to start as `gatehouse serve` [default: this executable].
    #[arg(long, env = "GATEHOUSE_BIN")]
    pub gatehouse_bin: Option<PathBuf>,

    /// The mosquitto binary (Debian's package installs it here).
    #[arg(long, env = "MOSQUITTO_BIN", default_value = "/usr/sbin/mosquitto")]
    pub mosquitto_bin: PathBuf,

    /// MQTT protocol version of the load generator's clients.
    #[arg(long, value_enum, default_value_t = MqttVersion::V5)]
    pub mqtt_version: MqttVersion,

    /// QoS levels for the message scenarios (comma-separated); each is its own row.
    #[arg(long, value_delimiter = ',', default_value = "0,1", value_parser = parse_qos)]
    pub qos: Vec<QoS>,

    /// Payload size in bytes (at least 16: a send timestamp, a stream and a sequence number).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(16..=262_144))]
    pub payload: u32,

    /// Publisher/subscriber pairs in the throughput and latency scenarios.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub pairs: u32,

    /// Measured time of each message scenario row (e.g. 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Time each message scenario runs before measuring starts.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Messages per publisher instead of a fixed duration (throughput, fan-in, fan-out).
    #[arg(long)]
    pub messages: Option<u64>,

    /// Messages per publisher that may be published and not yet delivered (and, at QoS 1,
    /// not yet acknowledged): keeps the load generator measuring the broker, not queues.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub window: u32,

    /// Total publish rate of the latency scenario, in messages per second.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,

    /// Publishers in the fan-in scenario (all to one wildcard subscriber).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub fanin_publishers: u32,

    /// Subscribers in the fan-out scenario (all of one publisher's topic).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub fanout_subscribers: u32,

    /// New connections in the connection-storm scenario.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub storm_connections: u32,

    /// Devices enrolled over EST in the enroll scenario, each with its own key, CSR and
    /// TLS connection.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub devices: u32,

    /// Enrolled devices that renew (EST simplereenroll with their new certificate) in the
    /// enroll scenario.
    #[arg(long, default_value_t = 500)]
    pub renewals: u32,

    /// Enrolled devices connected over MQTTS and then revoked, one at a time, in the enroll
    /// scenario: the time from the revoke request to the device's disconnection.
    #[arg(long, default_value_t = 20)]
    pub revocations: u32,

    /// Connections set up at the same time (storm, opening the idle connections), and
    /// enrollments and renewals in flight at once (enroll).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// Devices enrolled over EST (one multi-use token), connected over MQTTS and
    /// subscribed each to `bench/<device>/cmd` in the trust scenario.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(3..))]
    pub trust_devices: u32,

    /// Trust scenario: devices pinned to `quarantined` and unpinned through the REST API,
    /// one at a time, each a different device, with all sessions open.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub trust_rounds: u32,

    /// Trust scenario: policy sets that forbid every subscription put in force (and the
    /// original set back, and every device subscribed again), one after the other.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub trust_policy_rounds: u32,

    /// Devices enrolled over EST (one multi-use token, a model profile with publish rates),
    /// connected over MQTTS and publishing telemetry in the detect scenario.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(2..))]
    pub detect_devices: u32,

    /// Detect scenario: attacks, one after the other, each by a different device; even
    /// rounds flood publishes, odd rounds scan foreign topics with SUBSCRIBE.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub detect_rounds: u32,

    /// Detect scenario: messages per second an attacker floods (QoS 0, its own telemetry
    /// topic).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub detect_flood_rate: u32,

    /// Detect scenario: how often each device publishes its normal telemetry.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub detect_interval: Duration,

    /// Idle connections to open and hold in the idle scenario.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub idle_connections: u32,

    /// How long the idle connections are held once open (they are counted at the end).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub idle_hold: Duration,

    /// Keep-alive of the idle connections, in seconds.
    #[arg(long, default_value_t = 300)]
    pub keep_alive: u16,

    /// Loopback source addresses to spread client sockets over (127.0.0.2 upwards), so
    /// that many connections do not run out of ephemeral ports.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=250))]
    pub source_addrs: u32,

    /// Name the brokers' server certificates are checked against.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,

    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Which brokers to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetArg {
    /// Gatehouse, then Mosquitto, with ratios.
    Both,
    /// Gatehouse with its trust gate, Gatehouse with `trust.gate = "static-policy-only"`,
    /// then Mosquitto: the trust gate's cost (trust/static) beside the Gatehouse/Mosquitto
    /// ratio.
    Gates,
    /// Gatehouse only.
    Gatehouse,
    /// Mosquitto only.
    Mosquitto,
}

/// A benchmark scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum ScenarioArg {
    /// Every scenario below, in this order.
    All,
    /// Publisher/subscriber pairs, each on its own topic: delivered messages per second.
    Throughput,
    /// Publish-to-deliver latency at a fixed moderate rate: p50, p99, p99.9.
    Latency,
    /// Many publishers, one wildcard subscriber.
    Fanin,
    /// One publisher, many subscribers of its topic.
    Fanout,
    /// New mutual-TLS connections as fast as they are accepted.
    Storm,
    /// Many idle mutual-TLS connections: broker memory per connection.
    Idle,
    /// EST enrollments over new TLS connections, renewals, and revocation to disconnect
    /// (Gatehouse only: Mosquitto has no EST server).
    Enroll,
    /// Enrolled devices under the trust gate: a pin to `quarantined`, and a policy change
    /// across every session, timed from the REST request to its answer (which comes after
    /// enforcement) and checked on the wire (Gatehouse with its trust gate only).
    Trust,
    /// Detection and response on enrolled, publishing devices: an attacker floods or scans
    /// on its open session, timed from its first malicious packet to the enforcement it
    /// sees on that session (Gatehouse with its trust gate only).
    Detect,
}

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MqttVersion {
    /// MQTT 5.0.
    #[value(name = "5")]
    V5,
    /// MQTT 3.1.1.
    #[value(name = "3.1.1")]
    V311,
}

impl From<MqttVersion> for ProtocolVersion {
    fn from(v: MqttVersion) -> Self {
        match v {
            MqttVersion::V5 => ProtocolVersion::V5,
            MqttVersion::V311 => ProtocolVersion::V311,
        }
    }
}

impl BenchArgs {
    /// The scenarios to run, in their canonical order, without repeats.
    pub fn scenarios(&self) -> Vec<ScenarioArg> {
        let mut list: Vec<ScenarioArg> = if self.scenario.contains(&ScenarioArg::All) {
            vec![
                ScenarioArg::Throughput,
                ScenarioArg::Latency,
                ScenarioArg::Fanin,
                ScenarioArg::Fanout,
                ScenarioArg::Storm,
                ScenarioArg::Idle,
                ScenarioArg::Enroll,
                ScenarioArg::Trust,
                ScenarioArg::Detect,
            ]
        } else {
            self.scenario.clone()
        };
        list.sort();
        list.dedup();
        list
    }

    /// QoS levels without repeats, in order.
    pub fn qos_levels(&self) -> Vec<QoS> {
        let mut list = self.qos.clone();
        list.sort();
        list.dedup();
        list
    }
}

fn parse_qos(s: &str) -> Result<QoS, String> {
    match s.trim() {
        "0" => Ok(QoS::AtMostOnce),
        "1" => Ok(QoS::AtLeastOnce),
        other => Err(format!("QoS {other:?} is not measured; use 0 or 1")),
    }
}

/// Parses `10s`, `250ms`, `2m`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s, 500ms or 2m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1_000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3_600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?}; use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5parsecs").is_err());
    }

    #[test]
    fn defaults_run_everything_against_both() {
        let cli = Cli::try_parse_from(["bench"]).expect("defaults parse");
        assert_eq!(cli.bench.target, TargetArg::Both);
        assert_eq!(cli.bench.scenarios().len(), 9);
        assert_eq!(
            cli.bench.qos_levels(),
            vec![QoS::AtMostOnce, QoS::AtLeastOnce]
        );
        assert_eq!(cli.bench.duration, Duration::from_secs(10));
    }

    #[test]
    fn enroll_sizes_parse() {
        let cli = Cli::try_parse_from([
            "bench",
            "--scenario",
            "enroll",
            "--devices",
            "20000",
            "--concurrency",
            "128",
            "--renewals",
            "0",
        ])
        .expect("parses");
        assert_eq!(cli.bench.scenarios(), vec![ScenarioArg::Enroll]);
        assert_eq!(cli.bench.devices, 20_000);
        assert_eq!(cli.bench.concurrency, 128);
        assert_eq!(cli.bench.renewals, 0);
        assert_eq!(cli.bench.revocations, 20);
        assert!(Cli::try_parse_from(["bench", "--devices", "0"]).is_err());
    }

    #[test]
    fn gates_and_trust_sizes_parse() {
        let cli = Cli::try_parse_from([
            "bench",
            "--target",
            "gates",
            "--scenario",
            "trust,throughput",
            "--trust-devices",
            "500",
            "--trust-rounds",
            "5",
        ])
        .expect("parses");
        assert_eq!(cli.bench.target, TargetArg::Gates);
        assert_eq!(
            cli.bench.scenarios(),
            vec![ScenarioArg::Throughput, ScenarioArg::Trust]
        );
        assert_eq!(cli.bench.trust_devices, 500);
        assert_eq!(cli.bench.trust_rounds, 5);
        assert_eq!(cli.bench.trust_policy_rounds, 3);
        let defaults = Cli::try_parse_from(["bench"]).expect("defaults parse");
        assert_eq!(defaults.bench.trust_devices, 10_000);
        assert_eq!(defaults.bench.trust_rounds, 20);
        // A prober, a pinned device and an unpinned one at the least.
        assert!(Cli::try_parse_from(["bench", "--trust-devices", "2"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--trust-rounds", "0"]).is_err());
    }

    #[test]
    fn detect_sizes_parse() {
        let cli = Cli::try_parse_from([
            "bench",
            "--scenario",
            "detect",
            "--detect-devices",
            "500",
            "--detect-rounds",
            "4",
            "--detect-interval",
            "2s",
        ])
        .expect("parses");
        assert_eq!(cli.bench.scenarios(), vec![ScenarioArg::Detect]);
        assert_eq!(cli.bench.detect_devices, 500);
        assert_eq!(cli.bench.detect_rounds, 4);
        assert_eq!(cli.bench.detect_interval, Duration::from_secs(2));
        assert_eq!(cli.bench.detect_flood_rate, 10_000);
        let defaults = Cli::try_parse_from(["bench"]).expect("defaults parse");
        assert_eq!(defaults.bench.detect_devices, 10_000);
        assert_eq!(defaults.bench.detect_rounds, 20);
        assert!(defaults.bench.scenarios().contains(&ScenarioArg::Detect));
        // An attacker and a bystander at the least.
        assert!(Cli::try_parse_from(["bench", "--detect-devices", "1"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--detect-rounds", "0"]).is_err());
    }

    #[test]
    fn scenario_lists_and_limits_parse() {
        let cli = Cli::try_parse_from([
            "bench",
            "--scenario",
            "idle,storm",
            "--idle-connections",
            "50000",
            "--qos",
            "1",
            "--mqtt-version",
            "3.1.1",
        ])
        .expect("parses");
        assert_eq!(
            cli.bench.scenarios(),
            vec![ScenarioArg::Storm, ScenarioArg::Idle]
        );
        assert_eq!(cli.bench.idle_connections, 50_000);
        assert_eq!(cli.bench.mqtt_version, MqttVersion::V311);
        assert!(Cli::try_parse_from(["bench", "--qos", "2"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--payload", "8"]).is_err());
    }
}
