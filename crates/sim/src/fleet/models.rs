//! The simulated fleet's device models: their shipped profiles (`crates/sim/models/`), how
//! each enrolls, how often it reports, and what a reading of each looks like.

use std::time::Duration;

/// The manufacturer every simulated model is filed under (with the run's suffix).
pub const MANUFACTURER: &str = "simworks";

/// How a device proves who it is when it enrolls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollVia {
    /// An IDevID from the simulated manufacturer's CA (its serial is its device id).
    Idevid,
    /// An enrollment token for its model.
    Token,
}

/// A device model of the simulated fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Thermostat,
    Camera,
    Lock,
    PlcGateway,
    InfusionPump,
    /// The operations console that sends commands; one per fleet.
    Console,
}

/// The field devices, in the order the fleet is laid out.
pub const FIELD: [Kind; 5] = [
    Kind::Thermostat,
    Kind::Camera,
    Kind::Lock,
    Kind::PlcGateway,
    Kind::InfusionPump,
];

impl Kind {
    /// The model id, as in its profile.
    pub fn model(self) -> &'static str {
        match self {
            Kind::Thermostat => "thermostat-t2",
            Kind::Camera => "ipcam-c4",
            Kind::Lock => "lock-l1",
            Kind::PlcGateway => "plcgw-g3",
            Kind::InfusionPump => "pump-p7",
            Kind::Console => "console-c1",
        }
    }

    /// A human name for the report.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Thermostat => "thermostat",
            Kind::Camera => "IP camera",
            Kind::Lock => "smart lock",
            Kind::PlcGateway => "PLC gateway",
            Kind::InfusionPump => "infusion pump",
            Kind::Console => "operations console",
        }
    }

    /// The prefix of device ids (and IDevID serials) of the model.
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Thermostat => "thermo",
            Kind::Camera => "CAM",
            Kind::Lock => "LCK",
            Kind::PlcGateway => "PLC",
            Kind::InfusionPump => "PMP",
            Kind::Console => "console",
        }
    }

    /// The shipped profile, as written (manufacturer `simworks`, the plain model id).
    pub fn profile(self) -> &'static str {
        match self {
            Kind::Thermostat => include_str!("../../models/thermostat.toml"),
            Kind::Camera => include_str!("../../models/ipcam.toml"),
            Kind::Lock => include_str!("../../models/lock.toml"),
            Kind::PlcGateway => include_str!("../../models/plcgw.toml"),
            Kind::InfusionPump => include_str!("../../models/pump.toml"),
            Kind::Console => include_str!("../../models/console.toml"),
        }
    }

    /// How devices of the model enroll: thermostats and the console with tokens (no
    /// manufacturer identity), the rest with their IDevIDs.
    pub fn enroll_via(self) -> EnrollVia {
        match self {
            Kind::Thermostat | Kind::Console => EnrollVia::Token,
            _ => EnrollVia::Idevid,
        }
    }

    /// How often a device of the model reports telemetry.
    pub fn cadence(self) -> Duration {
        Duration::from_secs(match self {
            Kind::Thermostat => 10,
            Kind::Camera => 5,
            Kind::Lock => 30,
            Kind::PlcGateway => 2,
            Kind::InfusionPump => 5,
            Kind::Console => 3600,
        })
    }

    /// The firmware a healthy device runs: the profile's current release.
    pub fn current_firmware(self) -> &'static str {
        match self {
            Kind::Thermostat => "2.4.1",
            Kind::Camera => "5.1.2",
            Kind::Lock => "1.8.0",
            Kind::PlcGateway => "3.2.0",
            Kind::InfusionPump => "4.0.3",
            Kind::Console => "1.0.0",
        }
    }

    /// Whether the model ships with default credentials (its posture then says they
    /// were changed).
    pub fn has_default_credentials(self) -> bool {
        self == Kind::Camera
    }

    /// Share of the field fleet, in percent.
    fn share(self) -> usize {
        match self {
            Kind::Thermostat => 30,
            Kind::Camera => 20,
            Kind::Lock => 20,
            Kind::PlcGateway => 10,
            Kind::InfusionPump => 20,
            Kind::Console => 0,
        }
    }

    /// The profile filed under `manufacturer` and `model` (the run's names).
    pub fn profile_for(self, manufacturer: &str, model: &str) -> String {
        self.profile()
            .replacen(
                &format!("manufacturer = \"{MANUFACTURER}\""),
                &format!("manufacturer = \"{manufacturer}\""),
                1,
            )
            .replacen(
                &format!("model = \"{}\"", self.model()),
                &format!("model = \"{model}\""),
                1,
            )
    }
}

/// The model of field device `i` in a fleet of `n`: the shares laid out in blocks so that
/// every model has devices in any fleet of five or more.
pub fn kind_of(i: usize, n: usize) -> Kind {
    let mut start = 0;
    for (k, kind) in FIELD.iter().enumerate() {
        let count = if k + 1 == FIELD.len() {
            n - start
        } else {
            (n * kind.share() / 100).max(1).min(n.saturating_sub(start))
        };
        if i < start + count {
            return *kind;
        }
        start += count;
    }
    Kind::InfusionPump
}

/// A small deterministic generator (SplitMix64): each device has its own, seeded from
/// its index, so a run's readings can be told apart and repeated.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Roughly normal noise with standard deviation `sd` (the sum of four uniforms).
    pub fn noise(&mut self, sd: f64) -> f64 {
        let s: f64 = (0..4).map(|_| self.unit()).sum::<f64>() - 2.0;
        s * sd * 3f64.sqrt()
    }
}

/// The state a device's readings evolve from.
#[derive(Debug, Clone)]
pub struct Sensor {
    kind: Kind,
    rng: Rng,
    /// Per-device constants: a setpoint, a battery level, an infusion rate.
    base: f64,
    level: f64,
    readings: u64,
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

impl Sensor {
    pub fn new(kind: Kind, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let base = match kind {
            Kind::Thermostat => (rng.range(19.0, 23.0) * 2.0).round() / 2.0,
            Kind::Lock => rng.range(55.0, 100.0),
            Kind::InfusionPump => rng.range(20.0, 30.0).round(),
            Kind::Camera => rng.range(1800.0, 2300.0),
            Kind::PlcGateway => rng.range(5.8, 6.6),
            Kind::Console => 0.0,
        };
        let level = match kind {
            Kind::InfusionPump => rng.range(40.0, 90.0),
            Kind::Camera => rng.range(20.0, 70.0),
            _ => 0.0,
        };
        Self {
            kind,
            rng,
            base,
            level,
            readings: 0,
        }
    }

    /// The next reading, as the JSON the device publishes on its telemetry topic.
    pub fn reading(&mut self) -> Vec<u8> {
        self.readings += 1;
        let t = self.readings as f64;
        let r = &mut self.rng;
        let v = match self.kind {
            Kind::Thermostat => serde_json::json!({
                "temp": round1(self.base - 0.4 + 0.6 * (t / 40.0).sin() + r.noise(0.15)),
                "humidity": round1(45.0 + 4.0 * (t / 90.0).cos() + r.noise(0.8)),
                "setpoint": self.base,
                "heating": (t / 40.0).sin() < 0.0,
            }),
            Kind::Camera => {
                let motion = r.unit() < 0.1;
                self.level = (self.level + 0.01).min(95.0);
                serde_json::json!({
                    "bitrate_kbps": (self.base + if motion { 400.0 } else { 0.0 } + r.noise(60.0)).round(),
                    "fps": if r.unit() < 0.02 { 24 } else { 25 },
                    "motion": u8::from(motion),
                    "storage_pct": round1(self.level),
                })
            }
            Kind::Lock => {
                self.base = (self.base - 0.002).max(5.0);
                serde_json::json!({
                    "battery_pct": self.base.round(),
                    "locked": u8::from(r.unit() < 0.9),
                    "rssi_dbm": (-62.0 + r.noise(3.0)).round(),
                })
            }
            Kind::PlcGateway => serde_json::json!({
                "pressure_bar": ((self.base + 0.15 * (t / 30.0).sin() + r.noise(0.05)) * 100.0).round() / 100.0,
                "flow_lpm": round1(118.0 + 6.0 * (t / 30.0).sin() + r.noise(2.0)),
                "temp": round1(41.0 + r.noise(0.4)),
            }),
            Kind::InfusionPump => {
                self.level -= 0.002;
                serde_json::json!({
                    "rate_mlh": self.base,
                    "volume_ml": round1(self.base * t * 5.0 / 3600.0),
                    "occlusion_kpa": round1(18.0 + r.noise(1.5)),
                    "battery_pct": self.level.round(),
                })
            }
            Kind::Console => serde_json::json!({}),
        };
        v.to_string().into_bytes()
    }

    /// A spoofed reading: the infusion rate far beyond what the pump can deliver, the
    /// temperature of a thermostat on fire, the pressure of a burst line.
    pub fn spoofed(&mut self) -> Vec<u8> {
        let mut v: serde_json::Value =
            serde_json::from_slice(&self.reading()).unwrap_or_else(|_| serde_json::json!({}));
        match self.kind {
            Kind::InfusionPump => v["rate_mlh"] = serde_json::json!(4800),
            Kind::Thermostat => v["temp"] = serde_json::json!(412.0),
            Kind::PlcGateway => v["pressure_bar"] = serde_json::json!(95.0),
            Kind::Camera => v["fps"] = serde_json::json!(900),
            Kind::Lock => v["battery_pct"] = serde_json::json!(870),
            Kind::Console => {}
        }
        v.to_string().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_is_in_any_fleet_of_five_or_more() {
        for n in [5, 6, 10, 37, 200, 1000, 100_000] {
            let mut seen = std::collections::BTreeMap::new();
            for i in 0..n {
                *seen.entry(kind_of(i, n)).or_insert(0usize) += 1;
            }
            assert_eq!(seen.len(), FIELD.len(), "fleet of {n}: {seen:?}");
            assert_eq!(seen.values().sum::<usize>(), n);
        }
    }

    #[test]
    fn readings_stay_within_the_profile_ranges_and_spoofed_ones_do_not() {
        for kind in FIELD {
            let profile: toml::Value = toml::from_str(kind.profile()).expect("profile parses");
            let fields: Vec<(String, f64, f64)> = profile["topics"]
                .as_array()
                .expect("topics")
                .iter()
                .filter(|t| t["pattern"].as_str() == Some("devices/{device}/telemetry"))
                .flat_map(|t| t.get("fields").and_then(|f| f.as_array()).cloned())
                .flatten()
                .map(|f| {
                    let num = |v: &toml::Value| {
                        v.as_float()
                            .or_else(|| v.as_integer().map(|i| i as f64))
                            .expect("bound")
                    };
                    (
                        f["name"].as_str().expect("name").to_owned(),
                        num(&f["min"]),
                        num(&f["max"]),
                    )
                })
                .collect();
            assert!(!fields.is_empty(), "{kind:?} has ranged fields");
            for seed in 0..50 {
                let mut sensor = Sensor::new(kind, seed);
                for _ in 0..2000 {
                    let v: serde_json::Value =
                        serde_json::from_slice(&sensor.reading()).expect("json");
                    for (name, lo, hi) in &fields {
                        let x = v[name].as_f64().expect("field present");
                        assert!((*lo..=*hi).contains(&x), "{kind:?} {name} = {x}");
                    }
                }
                let v: serde_json::Value = serde_json::from_slice(&sensor.spoofed()).expect("json");
                assert!(
                    fields.iter().any(|(name, lo, hi)| {
                        let x = v[name].as_f64().unwrap_or(f64::NAN);
                        x > hi + (hi - lo) || x < lo - (hi - lo)
                    }),
                    "{kind:?}: the spoofed reading is out of range by more than the range"
                );
            }
        }
    }

    #[test]
    fn profiles_are_renamed_for_a_run() {
        let p = Kind::Lock.profile_for("simworks.r1", "lock-l1.r1");
        assert!(p.contains("manufacturer = \"simworks.r1\""));
        assert!(p.contains("model = \"lock-l1.r1\""));
    }
}
