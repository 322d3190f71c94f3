//! Model profiles: the manufacturer's statement, in TOML, of how a device of a model
//! behaves (in the spirit of MUD, RFC 8520, for MQTT): its topics, their rates and payload
//! fields, its firmware, and the default credentials it ships with.
//!
//! A profile is read in two steps: the TOML is deserialised into raw structs that refuse
//! unknown fields, then validated into a [`ModelProfile`], the only form other code sees.
//! Every error names the field, and the line when the TOML gives one.

mod version;

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use base64::Engine as _;
use gatehouse_types::{DeviceRef, Topic};
use serde::{Deserialize, Serialize};
use toml::Spanned;

pub use gatehouse_types::{PatternError, TopicPattern};
pub use version::{FirmwareVersion, VersionError};

/// Why a profile was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// The text is not TOML of the profile's shape (syntax, unknown or missing field, or a
    /// value of the wrong type).
    #[error("{}{message}", at(*line))]
    Syntax {
        /// 1-based line of the error, when known.
        line: Option<usize>,
        /// What the TOML reader said.
        message: String,
    },
    /// A field has a value the profile does not allow.
    #[error("{}{field}: {message}", at(*line))]
    Invalid {
        /// The field, as a path (`topics[2].rate`).
        field: String,
        /// 1-based line of the field, when known.
        line: Option<usize>,
        /// What is wrong with it.
        message: String,
    },
}

fn at(line: Option<usize>) -> String {
    line.map(|l| format!("line {l}: ")).unwrap_or_default()
}

// === raw profile (as written) ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    manufacturer: Spanned<String>,
    model: Spanned<String>,
    firmware: RawFirmware,
    #[serde(default)]
    default_credentials: Option<RawCredentials>,
    #[serde(default)]
    topics: Vec<RawTopic>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFirmware {
    current: Spanned<String>,
    supported: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    signing_key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    username: Spanned<String>,
    documented: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopic {
    pattern: Spanned<String>,
    direction: Direction,
    kind: TopicKind,
    #[serde(default)]
    rate: Option<Spanned<String>>,
    #[serde(default)]
    burst: Option<Spanned<i64>>,
    #[serde(default)]
    payload: Option<PayloadFormat>,
    #[serde(default)]
    fields: Vec<RawField>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    name: Spanned<String>,
    #[serde(default)]
    min: Option<Spanned<f64>>,
    #[serde(default)]
    max: Option<Spanned<f64>>,
    #[serde(default)]
    max_step: Option<Spanned<f64>>,
    #[serde(default)]
    max_repeats: Option<Spanned<i64>>,
}

// === validated profile ===

/// A validated model profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelProfile {
    manufacturer: String,
    model: String,
    firmware: Firmware,
    default_credentials: Option<DefaultCredentials>,
    topics: Vec<TopicRule>,
}

/// Which way a topic carries messages, seen from the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The device publishes to it.
    Publish,
    /// The device subscribes to it.
    Subscribe,
}

/// What a topic is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicKind {
    /// Readings and state the device reports.
    Telemetry,
    /// Instructions that make the device act.
    Command,
}

/// The payload format of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// A JSON document; its fields may have ranges.
    Json,
    /// Opaque bytes.
    Binary,
    /// UTF-8 text.
    Text,
}

/// A message rate: `count` messages per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rate {
    /// Messages allowed in each period.
    pub count: u32,
    /// The period.
    #[serde(with = "duration_secs")]
    pub per: Duration,
    /// How many messages may come at once before the rate applies (token-bucket size).
    pub burst: u32,
}

impl Rate {
    /// Messages per second.
    pub fn per_second(&self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64()
    }
}

mod duration_secs {
    use std::time::Duration;
    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        write!(f, "{}/{unit} (burst {})", self.count, self.burst)
    }
}

/// The allowed range of a numeric JSON field; either bound may be absent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldRange {
    /// The field: a top-level key, or a dotted path into nested objects (`env.temp`).
    pub name: String,
    /// The least allowed value.
    pub min: Option<f64>,
    /// The greatest allowed value.
    pub max: Option<f64>,
    /// The largest change between two consecutive readings of one device, if stated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_step: Option<f64>,
    /// The most consecutive identical readings of one device, if stated (a sensor that
    /// repeats itself longer is stuck, or its readings are being replayed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_repeats: Option<u32>,
}

impl FieldRange {
    /// Whether `value` lies within the range.
    pub fn contains(&self, value: f64) -> bool {
        self.min.is_none_or(|m| value >= m) && self.max.is_none_or(|m| value <= m)
    }
}

/// One topic of the profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopicRule {
    /// The topic pattern.
    pub pattern: TopicPattern,
    /// Publish or subscribe.
    pub direction: Direction,
    /// Telemetry or command.
    pub kind: TopicKind,
    /// The rate limit for what the device publishes here, if any.
    pub rate: Option<Rate>,
    /// The payload format, if stated.
    pub payload: Option<PayloadFormat>,
    /// Ranges of JSON fields (only with the JSON format).
    pub fields: Vec<FieldRange>,
}

/// The model's firmware.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Firmware {
    /// The current release.
    #[serde(serialize_with = "ser_version")]
    pub current: FirmwareVersion,
    /// Every supported release, oldest first; includes `current`, the newest.
    #[serde(serialize_with = "ser_versions")]
    pub supported: Vec<FirmwareVersion>,
    /// The key firmware images are signed with, if the model signs its firmware.
    pub signing_key: Option<SigningKey>,
}

fn ser_version<S: serde::Serializer>(v: &FirmwareVersion, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.as_str())
}

fn ser_versions<S: serde::Serializer>(v: &[FirmwareVersion], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(FirmwareVersion::as_str))
}

/// The algorithm of a firmware signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyAlgorithm {
    /// Ed25519.
    Ed25519,
    /// ECDSA on P-256.
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
}

/// A firmware signing public key, recognised but not otherwise checked here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SigningKey {
    /// Its algorithm.
    pub algorithm: KeyAlgorithm,
    /// The key as given: DER SubjectPublicKeyInfo, or the raw public key.
    #[serde(skip)]
    pub bytes: Vec<u8>,
}

/// What the manufacturer says about the credentials a device ships with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DefaultCredentials {
    /// The default user name.
    pub username: String,
    /// Whether the default credentials are published (in a manual, online).
    pub documented: bool,
}

/// Where a reported firmware version stands against the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum FirmwareStatus {
    /// The current release.
    Current,
    /// A supported release, `releases` supported releases behind the current one.
    Behind {
        /// How many supported releases are newer (and not newer than the current one).
        releases: u32,
    },
    /// A release the manufacturer no longer supports (older than current, not listed).
    Unsupported,
    /// A version the profile does not know: unparseable, or newer than the current release
    /// and not listed.
    Unknown,
}

impl fmt::Display for FirmwareStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Current => f.write_str("current"),
            Self::Behind { releases: 1 } => f.write_str("1 release behind"),
            Self::Behind { releases } => write!(f, "{releases} releases behind"),
            Self::Unsupported => f.write_str("unsupported"),
            Self::Unknown => f.write_str("unknown"),
        }
    }
}

// === impl ModelProfile ===

impl ModelProfile {
    /// Parses and validates a profile written in TOML.
    pub fn parse(text: &str) -> Result<Self, ProfileError> {
        let raw: RawProfile = toml::from_str(text).map_err(|e| ProfileError::Syntax {
            line: e.span().map(|s| line_of(text, s.start)),
            message: e.message().trim_end().to_owned(),
        })?;
        Validator { text }.profile(raw)
    }

    /// The manufacturer's id.
    pub fn manufacturer(&self) -> &str {
        &self.manufacturer
    }

    /// The model's id.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The firmware releases and signing key.
    pub fn firmware(&self) -> &Firmware {
        &self.firmware
    }

    /// The default credentials the model ships with, if it has any.
    pub fn default_credentials(&self) -> Option<&DefaultCredentials> {
        self.default_credentials.as_ref()
    }

    /// Every topic rule, in the order written.
    pub fn topics(&self) -> &[TopicRule] {
        &self.topics
    }

    /// The patterns of one direction, of one kind or (with `None`) of every kind.
    pub fn patterns(
        &self,
        direction: Direction,
        kind: Option<TopicKind>,
    ) -> impl Iterator<Item = &TopicPattern> + '_ {
        self.topics
            .iter()
            .filter(move |t| t.direction == direction && kind.is_none_or(|k| t.kind == k))
            .map(|t| &t.pattern)
    }

    /// The patterns the device publishes to, of one kind or every kind.
    pub fn publish_patterns(
        &self,
        kind: Option<TopicKind>,
    ) -> impl Iterator<Item = &TopicPattern> + '_ {
        self.patterns(Direction::Publish, kind)
    }

    /// The patterns the device subscribes within, of one kind or every kind.
    pub fn subscribe_patterns(
        &self,
        kind: Option<TopicKind>,
    ) -> impl Iterator<Item = &TopicPattern> + '_ {
        self.patterns(Direction::Subscribe, kind)
    }

    /// The first publish rule whose pattern, bound to `device`, matches `topic`.
    pub fn publish_rule(&self, topic: &Topic, device: &DeviceRef) -> Option<&TopicRule> {
        self.topics.iter().find(|t| {
            t.direction == Direction::Publish && t.pattern.matches_topic(topic.as_str(), device)
        })
    }

    /// The rate limit for `device` publishing to `topic`: that of the first matching
    /// publish rule, if it has one.
    pub fn rate_for(&self, topic: &Topic, device: &DeviceRef) -> Option<Rate> {
        self.publish_rule(topic, device).and_then(|t| t.rate)
    }

    /// Where a reported firmware version stands against the profile.
    pub fn firmware_status(&self, version: &str) -> FirmwareStatus {
        let Ok(v) = FirmwareVersion::parse(version) else {
            return FirmwareStatus::Unknown;
        };
        let fw = &self.firmware;
        if v == fw.current {
            return FirmwareStatus::Current;
        }
        if v > fw.current {
            return FirmwareStatus::Unknown;
        }
        if fw.supported.contains(&v) {
            let newer = fw.supported.iter().filter(|s| **s > v).count();
            FirmwareStatus::Behind {
                releases: u32::try_from(newer).unwrap_or(u32::MAX),
            }
        } else {
            FirmwareStatus::Unsupported
        }
    }
}

// === validation ===

/// Longest manufacturer or model id, in bytes.
const MAX_ID: usize = 64;
/// Most topic rules in one profile.
const MAX_TOPICS: usize = 256;
/// Most field ranges on one topic.
const MAX_FIELDS: usize = 64;
/// Most supported firmware releases.
const MAX_RELEASES: usize = 256;

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |s| s.bytes().filter(|b| *b == b'\n').count())
        + 1
}

struct Validator<'a> {
    text: &'a str,
}

impl Validator<'_> {
    fn err(
        &self,
        field: impl Into<String>,
        span: Range<usize>,
        msg: impl fmt::Display,
    ) -> ProfileError {
        ProfileError::Invalid {
            field: field.into(),
            line: Some(line_of(self.text, span.start)),
            message: msg.to_string(),
        }
    }

    fn id(&self, field: &str, v: Spanned<String>) -> Result<String, ProfileError> {
        let span = v.span();
        let s = v.into_inner();
        if s.is_empty() {
            return Err(self.err(field, span, "must not be empty"));
        }
        if s.len() > MAX_ID {
            return Err(self.err(field, span, format!("longer than {MAX_ID} bytes")));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(self.err(
                field,
                span,
                format!("holds {c:?}; only letters, digits and . _ : - are allowed"),
            ));
        }
        Ok(s)
    }

    fn profile(&self, raw: RawProfile) -> Result<ModelProfile, ProfileError> {
        let manufacturer = self.id("manufacturer", raw.manufacturer)?;
        let model = self.id("model", raw.model)?;
        let firmware = self.firmware(raw.firmware)?;
        let default_credentials = raw
            .default_credentials
            .map(|c| {
                let span = c.username.span();
                let username = c.username.into_inner();
                if username.is_empty() {
                    return Err(self.err(
                        "default_credentials.username",
                        span,
                        "must not be empty",
                    ));
                }
                Ok(DefaultCredentials {
                    username,
                    documented: c.documented,
                })
            })
            .transpose()?;
        if raw.topics.len() > MAX_TOPICS {
            return Err(ProfileError::Invalid {
                field: "topics".into(),
                line: None,
                message: format!(
                    "{} topics; at most {MAX_TOPICS} are allowed",
                    raw.topics.len()
                ),
            });
        }
        let mut seen = BTreeSet::new();
        let mut topics = Vec::with_capacity(raw.topics.len());
        for (i, t) in raw.topics.into_iter().enumerate() {
            let span = t.pattern.span();
            let rule = self.topic(i, t)?;
            if !seen.insert((rule.pattern.clone(), rule.direction == Direction::Publish)) {
                return Err(self.err(
                    format!("topics[{i}].pattern"),
                    span,
                    format!("{} is listed twice for the same direction", rule.pattern),
                ));
            }
            topics.push(rule);
        }
        Ok(ModelProfile {
            manufacturer,
            model,
            firmware,
            default_credentials,
            topics,
        })
    }

    fn firmware(&self, raw: RawFirmware) -> Result<Firmware, ProfileError> {
        let version = |field: String, v: Spanned<String>| {
            let span = v.span();
            FirmwareVersion::parse(v.get_ref()).map_err(|e| self.err(field, span, e))
        };
        let current_span = raw.current.span();
        let current = version("firmware.current".into(), raw.current)?;
        let list_span = raw.supported.span();
        let list = raw.supported.into_inner();
        if list.len() > MAX_RELEASES {
            return Err(self.err(
                "firmware.supported",
                list_span,
                format!(
                    "{} releases; at most {MAX_RELEASES} are allowed",
                    list.len()
                ),
            ));
        }
        let mut supported: Vec<(FirmwareVersion, Range<usize>)> = Vec::with_capacity(list.len());
        for (i, s) in list.into_iter().enumerate() {
            let span = s.span();
            let v = version(format!("firmware.supported[{i}]"), s)?;
            if let Some((dup, _)) = supported.iter().find(|(d, _)| *d == v) {
                return Err(self.err(
                    format!("firmware.supported[{i}]"),
                    span,
                    format!("{v} is the same release as {dup}, listed before"),
                ));
            }
            supported.push((v, span));
        }
        if !supported.iter().any(|(v, _)| *v == current) {
            return Err(self.err(
                "firmware.current",
                current_span,
                format!("{current} is not in firmware.supported"),
            ));
        }
        if let Some((i, (v, span))) = supported
            .iter()
            .enumerate()
            .find(|(_, (v, _))| *v > current)
        {
            return Err(self.err(
                format!("firmware.supported[{i}]"),
                span.clone(),
                format!("{v} is newer than the current release {current}"),
            ));
        }
        let mut supported: Vec<FirmwareVersion> = supported.into_iter().map(|(v, _)| v).collect();
        supported.sort();
        let signing_key = raw
            .signing_key
            .map(|k| {
                let span = k.span();
                parse_signing_key(k.get_ref())
                    .map_err(|m| self.err("firmware.signing_key", span, m))
            })
            .transpose()?;
        Ok(Firmware {
            current,
            supported,
            signing_key,
        })
    }

    fn topic(&self, i: usize, t: RawTopic) -> Result<TopicRule, ProfileError> {
        let f = |name: &str| format!("topics[{i}].{name}");
        let span = t.pattern.span();
        let pattern = TopicPattern::new(t.pattern.into_inner())
            .map_err(|e| self.err(f("pattern"), span.clone(), e))?;
        if pattern.as_str().starts_with('$') {
            return Err(self.err(
                f("pattern"),
                span,
                "topics starting with '$' are reserved for the platform",
            ));
        }
        let rate = match (t.rate, t.burst) {
            (None, None) => None,
            (None, Some(b)) => return Err(self.err(f("burst"), b.span(), "a burst needs a rate")),
            (Some(r), burst) => {
                let rspan = r.span();
                if t.direction == Direction::Subscribe {
                    return Err(self.err(
                        f("rate"),
                        rspan,
                        "rates apply to what the device publishes; this topic is subscribed to",
                    ));
                }
                let (count, per) =
                    parse_rate(r.get_ref()).map_err(|m| self.err(f("rate"), rspan, m))?;
                let burst = match burst {
                    None => count,
                    Some(b) => {
                        let bspan = b.span();
                        match u32::try_from(*b.get_ref()) {
                            Ok(n) if n > 0 => n,
                            _ => {
                                return Err(self.err(
                                    f("burst"),
                                    bspan,
                                    format!("must be a positive whole number, not {}", b.get_ref()),
                                ));
                            }
                        }
                    }
                };
                Some(Rate { count, per, burst })
            }
        };
        if !t.fields.is_empty() && t.payload != Some(PayloadFormat::Json) {
            let span = t.fields[0].name.span();
            return Err(self.err(f("fields"), span, "field ranges need payload = \"json\""));
        }
        if t.fields.len() > MAX_FIELDS {
            return Err(self.err(
                f("fields"),
                t.fields[0].name.span(),
                format!(
                    "{} fields; at most {MAX_FIELDS} are allowed",
                    t.fields.len()
                ),
            ));
        }
        let mut fields: Vec<FieldRange> = Vec::with_capacity(t.fields.len());
        for (j, raw) in t.fields.into_iter().enumerate() {
            let ff = |name: &str| format!("topics[{i}].fields[{j}].{name}");
            let nspan = raw.name.span();
            let name = raw.name.into_inner();
            if name.is_empty() || name.split('.').any(str::is_empty) {
                return Err(self.err(ff("name"), nspan, "must be a key or a dotted path of keys"));
            }
            if fields.iter().any(|x| x.name == name) {
                return Err(self.err(ff("name"), nspan, format!("field {name:?} is listed twice")));
            }
            let bound =
                |b: Option<Spanned<f64>>, which: &str| -> Result<Option<f64>, ProfileError> {
                    match b {
                        Some(v) if !v.get_ref().is_finite() => {
                            Err(self.err(ff(which), v.span(), "must be a finite number"))
                        }
                        other => Ok(other.map(|v| *v.get_ref())),
                    }
                };
            let max_span = raw.max.as_ref().map(Spanned::span);
            let min = bound(raw.min, "min")?;
            let max = bound(raw.max, "max")?;
            let max_step = match raw.max_step {
                Some(v) if !(v.get_ref().is_finite() && *v.get_ref() > 0.0) => {
                    return Err(self.err(
                        ff("max_step"),
                        v.span(),
                        "must be a finite number above zero",
                    ));
                }
                other => other.map(|v| *v.get_ref()),
            };
            let max_repeats = match raw.max_repeats {
                Some(v) => match u32::try_from(*v.get_ref()) {
                    Ok(n) if n >= 1 => Some(n),
                    _ => {
                        return Err(self.err(
                            ff("max_repeats"),
                            v.span(),
                            "must be a whole number from 1 to 4294967295",
                        ));
                    }
                },
                None => None,
            };
            match (min, max, max_span) {
                (None, None, _) if max_step.is_none() && max_repeats.is_none() => {
                    return Err(self.err(
                        ff("name"),
                        nspan,
                        "a field needs a min, a max, a max_step, a max_repeats or some of them",
                    ));
                }
                (Some(lo), Some(hi), Some(span)) if lo > hi => {
                    return Err(self.err(
                        ff("max"),
                        span,
                        format!("max {hi} is less than min {lo}"),
                    ));
                }
                _ => {}
            }
            fields.push(FieldRange {
                name,
                min,
                max,
                max_step,
                max_repeats,
            });
        }
        Ok(TopicRule {
            pattern,
            direction: t.direction,
            kind: t.kind,
            rate,
            payload: t.payload,
            fields,
        })
    }
}

/// Parses `10/s`, `600/min`, `5/h` (also `second`, `sec`, `m`, `minute`, `hour`).
fn parse_rate(s: &str) -> Result<(u32, Duration), String> {
    let bad = || format!("{s:?} is not a rate like \"10/s\", \"600/min\" or \"5/h\"");
    let (n, unit) = s.split_once('/').ok_or_else(bad)?;
    let n = n.trim();
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let count: u32 = n.parse().map_err(|_| bad())?;
    if count == 0 {
        return Err(format!("{s:?}: a rate must be positive"));
    }
    let per = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    Ok((count, per))
}

const ED25519_SPKI: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const P256_SPKI: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const P384_SPKI: &[u8] = &[
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
];

/// Recognises a PEM `PUBLIC KEY` block or bare base64 holding an Ed25519 or ECDSA
/// (P-256, P-384) public key, as SubjectPublicKeyInfo DER or as the raw key.
fn parse_signing_key(text: &str) -> Result<SigningKey, String> {
    let text = text.trim();
    let b64: String = if let Some(rest) = text.strip_prefix("-----BEGIN PUBLIC KEY-----") {
        let body = rest
            .strip_suffix("-----END PUBLIC KEY-----")
            .ok_or("a PEM key must end with -----END PUBLIC KEY-----")?;
        body.split_whitespace().collect()
    } else if text.starts_with("-----BEGIN") {
        return Err("a PEM key must be a PUBLIC KEY block".into());
    } else {
        text.split_whitespace().collect()
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| format!("not valid base64: {e}"))?;
    let spki = |prefix: &[u8], key_len: usize| {
        bytes.len() == prefix.len() + key_len && bytes.starts_with(prefix)
    };
    let algorithm = if spki(ED25519_SPKI, 32) || bytes.len() == 32 {
        KeyAlgorithm::Ed25519
    } else if spki(P256_SPKI, 65) || (bytes.len() == 65 && bytes[0] == 4) {
        KeyAlgorithm::EcdsaP256
    } else if spki(P384_SPKI, 97) || (bytes.len() == 97 && bytes[0] == 4) {
        KeyAlgorithm::EcdsaP384
    } else {
        return Err(format!(
            "{} bytes that are not an Ed25519 or ECDSA P-256/P-384 public key",
            bytes.len()
        ));
    };
    Ok(SigningKey { algorithm, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("10/s"), Ok((10, Duration::from_secs(1))));
        assert_eq!(parse_rate("600/min"), Ok((600, Duration::from_secs(60))));
        assert_eq!(parse_rate("5 / hour"), Ok((5, Duration::from_secs(3600))));
        for bad in ["0/s", "-1/s", "1.5/s", "10", "10/day", "/s", "x/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn raw_keys_are_recognised_by_length() {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        assert_eq!(
            parse_signing_key(&b64(&[7; 32])).map(|k| k.algorithm),
            Ok(KeyAlgorithm::Ed25519)
        );
        let mut p256 = vec![4];
        p256.extend([1; 64]);
        assert_eq!(
            parse_signing_key(&b64(&p256)).map(|k| k.algorithm),
            Ok(KeyAlgorithm::EcdsaP256)
        );
        assert!(parse_signing_key(&b64(&[1; 40])).is_err());
        assert!(parse_signing_key("not base64!").is_err());
        assert!(
            parse_signing_key("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----")
                .is_err()
        );
    }

    fn with_field(field: &str) -> String {
        format!(
            "manufacturer = \"acme\"\nmodel = \"t\"\n[firmware]\ncurrent = \"1.0\"\n\
             supported = [\"1.0\"]\n[[topics]]\npattern = \"devices/{{device}}/t\"\n\
             direction = \"publish\"\nkind = \"telemetry\"\npayload = \"json\"\n\
             [[topics.fields]]\nname = \"temp\"\n{field}\n"
        )
    }

    #[test]
    fn a_field_may_bound_its_step_alone_but_only_above_zero() {
        let p = ModelProfile::parse(&with_field("max_step = 2.5")).unwrap();
        assert_eq!(p.topics()[0].fields[0].max_step, Some(2.5));
        assert_eq!(p.topics()[0].fields[0].min, None);
        for bad in [
            "max_step = 0",
            "max_step = -1",
            "max_step = nan",
            "max_step = inf",
        ] {
            let e = ModelProfile::parse(&with_field(bad))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("max_step") && e.contains("above zero"),
                "{bad}: {e}"
            );
        }
        let e = ModelProfile::parse(&with_field(""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs a min, a max, a max_step"), "{e}");
        let p = ModelProfile::parse(&with_field("max_repeats = 12")).unwrap();
        assert_eq!(p.topics()[0].fields[0].max_repeats, Some(12));
        for bad in [
            "max_repeats = 0",
            "max_repeats = -3",
            "max_repeats = 5000000000",
        ] {
            let e = ModelProfile::parse(&with_field(bad))
                .unwrap_err()
                .to_string();
            assert!(e.contains("max_repeats"), "{bad}: {e}");
        }
    }

    #[test]
    fn lines_are_counted_from_one() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 4), 3);
    }
}
