//! The configuration file: a raw serde layer that refuses unknown keys, then a validated
//! [`Settings`] that is the only thing the rest of the binary sees.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bytesize::ByteSize;
use gatehouse_broker::{
    BrokerConfig, ClientIdPolicy, DevicePolicy, Limits, StaticPolicy, TopicPattern,
};
use gatehouse_types::{DeviceId, DeviceRef, TenantId};
use serde::Deserialize;

/// The documented example, with every option at its default.
pub const EXAMPLE: &str = include_str!("../gatehouse.example.toml");

/// `--data-dir`: the data directory, instead of the configuration's `data_dir`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DataDirArg {
    /// The data directory (default: the configuration's `data_dir`, `./gatehouse-data`).
    #[arg(long, global = true, env = "GATEHOUSE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

// === impl DataDirArg ===

impl DataDirArg {
    /// `settings` with this data directory, if one was given.
    pub fn apply(&self, settings: Settings) -> Settings {
        match &self.data_dir {
            Some(d) => settings.with_data_dir(d.clone()),
            None => settings,
        }
    }
}

/// Creates a directory (and its parents) if missing; new directories are 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// A path for people: absolute, so that it says where even when it was given relative.
pub fn shown_path(p: &Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_owned())
        .display()
        .to_string()
}

pub mod raw {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct File {
        pub data_dir: PathBuf,
        pub listeners: Listeners,
        pub mqtt: Mqtt,
        pub limits: RawLimits,
        pub policy: Policy,
        pub legacy: Legacy,
        pub persistence: Persistence,
        pub enrollment: Enrollment,
        pub ca: Ca,
        pub trust: Trust,
        pub detect: Detect,
        pub respond: Respond,
        pub api: Api,
        pub passwords: Passwords,
        pub log: Log,
    }

    impl Default for File {
        fn default() -> Self {
            Self {
                data_dir: PathBuf::from("./gatehouse-data"),
                listeners: Listeners::default(),
                mqtt: Mqtt::default(),
                limits: RawLimits::default(),
                policy: Policy::default(),
                legacy: Legacy::default(),
                persistence: Persistence::default(),
                enrollment: Enrollment::default(),
                ca: Ca::default(),
                trust: Trust::default(),
                detect: Detect::default(),
                respond: Respond::default(),
                api: Api::default(),
                passwords: Passwords::default(),
                log: Log::default(),
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Listeners {
        pub mqtts: SocketAddr,
        pub https: SocketAddr,
        pub mqtt: Option<SocketAddr>,
        pub server_names: Vec<String>,
        pub backlog: u32,
    }

    impl Default for Listeners {
        fn default() -> Self {
            Self {
                mqtts: SocketAddr::from(([0, 0, 0, 0], 8883)),
                https: SocketAddr::from(([0, 0, 0, 0], 8443)),
                mqtt: None,
                server_names: Vec::new(),
                backlog: 1024,
            }
        }
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    pub struct Mqtt {
        pub client_id: ClientIdMode,
    }

    #[derive(Debug, Deserialize, Default, Clone, Copy)]
    #[serde(rename_all = "snake_case")]
    pub enum ClientIdMode {
        #[default]
        RequireDeviceId,
        AssignDeviceId,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct RawLimits {
        pub max_packet_size: ByteSize,
        pub max_topic_length: usize,
        pub max_topic_levels: usize,
        pub max_subscriptions_per_session: usize,
        pub max_inflight: u16,
        pub max_queued_messages: usize,
        pub max_queued_bytes: ByteSize,
        pub message_memory_budget: ByteSize,
        pub max_user_properties: usize,
        pub max_user_property_bytes: ByteSize,
        pub max_connections: usize,
        pub connect_rate_per_source: u32,
        pub takeovers_per_device_per_minute: u32,
        #[serde(with = "humantime_serde")]
        pub tls_handshake_timeout: Duration,
        #[serde(with = "humantime_serde")]
        pub connect_timeout: Duration,
        #[serde(with = "humantime_serde")]
        pub max_keep_alive: Duration,
        #[serde(with = "humantime_serde")]
        pub max_session_expiry: Duration,
        pub max_retained_messages: usize,
        pub max_retained_bytes: ByteSize,
        pub topic_alias_maximum: u16,
        pub tap_payload_bytes: ByteSize,
    }

    impl Default for RawLimits {
        fn default() -> Self {
            let d = Limits::default();
            Self {
                max_packet_size: ByteSize::b(u64::from(d.max_packet_size)),
                max_topic_length: d.max_topic_length,
                max_topic_levels: d.max_topic_levels,
                max_subscriptions_per_session: d.max_subscriptions_per_session,
                max_inflight: d.max_inflight,
                max_queued_messages: d.max_queued_messages,
                max_queued_bytes: ByteSize::b(d.max_queued_bytes as u64),
                message_memory_budget: ByteSize::b(d.message_memory_budget as u64),
                max_user_properties: d.max_user_properties,
                max_user_property_bytes: ByteSize::b(d.max_user_property_bytes as u64),
                max_connections: d.max_connections,
                connect_rate_per_source: d.connect_rate_per_source,
                takeovers_per_device_per_minute: d.takeovers_per_device_per_minute,
                tls_handshake_timeout: d.tls_handshake_timeout,
                connect_timeout: d.connect_timeout,
                max_keep_alive: Duration::from_secs(u64::from(d.max_keep_alive)),
                max_session_expiry: d.max_session_expiry,
                max_retained_messages: d.max_retained_messages,
                max_retained_bytes: ByteSize::b(d.max_retained_bytes as u64),
                topic_alias_maximum: d.topic_alias_maximum,
                tap_payload_bytes: ByteSize::b(d.tap_payload_bytes as u64),
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Policy {
        pub publish: Vec<String>,
        pub subscribe: Vec<String>,
        pub blocked: Vec<String>,
        pub device: Vec<DeviceRule>,
    }

    impl Default for Policy {
        fn default() -> Self {
            let d = StaticPolicy::default_policy();
            Self {
                publish: d.publish.iter().map(|p| p.as_str().to_owned()).collect(),
                subscribe: d.subscribe.iter().map(|p| p.as_str().to_owned()).collect(),
                blocked: Vec::new(),
                device: Vec::new(),
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct DeviceRule {
        pub id: String,
        #[serde(default)]
        pub publish: Vec<String>,
        #[serde(default)]
        pub subscribe: Vec<String>,
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    pub struct Legacy {
        pub users: Vec<LegacyUser>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct LegacyUser {
        pub username: String,
        #[serde(default)]
        pub tenant: Option<String>,
        pub password_hash: String,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Persistence {
        #[serde(with = "humantime_serde")]
        pub save_interval: Duration,
    }

    impl Default for Persistence {
        fn default() -> Self {
            Self {
                save_interval: Duration::from_secs(30),
            }
        }
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    pub struct Ca {
        pub kek_file: Option<PathBuf>,
        pub external_cert: Option<PathBuf>,
        pub external_key: Option<PathBuf>,
        pub external_chain: Option<PathBuf>,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    pub enum GateMode {
        Trust,
        StaticPolicyOnly,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Trust {
        pub gate: GateMode,
        #[serde(with = "humantime_serde")]
        pub posture_interval: Duration,
        pub posture_queue: usize,
        pub max_policy_size: ByteSize,
        pub max_policy_depth: usize,
        pub score: gatehouse_trust::score::RawScoreConfig,
    }

    impl Default for Trust {
        fn default() -> Self {
            let limits = gatehouse_trust::policy::PolicyLimits::default();
            Self {
                gate: GateMode::Trust,
                posture_interval: Duration::from_secs(1),
                posture_queue: 1024,
                max_policy_size: ByteSize::b(limits.max_bytes as u64),
                max_policy_depth: limits.max_depth,
                score: gatehouse_trust::score::RawScoreConfig::default(),
            }
        }
    }

    /// `[passwords]`: the one budget of Argon2 password checks (operators' logins and the
    /// legacy listener's devices).
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Passwords {
        pub concurrent_checks: usize,
        pub queued_checks: usize,
        pub checks_per_second: u32,
    }

    impl Default for Passwords {
        fn default() -> Self {
            let d = gatehouse_pki::password::PasswordBudget::default();
            Self {
                concurrent_checks: d.concurrent,
                queued_checks: d.queue,
                checks_per_second: d.per_second,
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Detect {
        pub enabled: bool,
        pub queue: usize,
        #[serde(with = "humantime_serde")]
        pub tick: Duration,
        /// The detectors' thresholds and switches (`[detect.rules]`).
        pub rules: gatehouse_detect::DetectConfig,
        /// Score points a new finding takes off, by severity.
        pub penalties: Penalties,
    }

    impl Default for Detect {
        fn default() -> Self {
            Self {
                enabled: true,
                queue: 65_536,
                tick: Duration::from_secs(1),
                rules: gatehouse_detect::DetectConfig::default(),
                penalties: Penalties::default(),
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Penalties {
        pub info: f64,
        pub low: f64,
        pub medium: f64,
        pub high: f64,
        pub critical: f64,
    }

    impl Default for Penalties {
        fn default() -> Self {
            let d = gatehouse_runtime::SeverityPenalties::default();
            Self {
                info: d.info,
                low: d.low,
                medium: d.medium,
                high: d.high,
                critical: d.critical,
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Respond {
        /// A playbooks file (TOML); none: the shipped defaults.
        pub playbooks: Option<PathBuf>,
        pub max_findings_per_incident: u32,
        /// Addresses or `addr/prefix` ranges a playbook never bans.
        pub never_ban: Vec<String>,
    }

    impl Default for Respond {
        fn default() -> Self {
            Self {
                playbooks: None,
                max_findings_per_incident: 100,
                never_ban: vec!["127.0.0.0/8".into(), "::1".into()],
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Enrollment {
        #[serde(with = "humantime_serde")]
        pub certificate_validity: Duration,
        pub key_types: Vec<String>,
        pub min_rsa_bits: usize,
        #[serde(with = "humantime_serde")]
        pub crl_validity: Duration,
        pub public_url: Option<String>,
        #[serde(with = "humantime_serde")]
        pub registry_poll: Duration,
        pub max_request_body: ByteSize,
    }

    impl Default for Enrollment {
        fn default() -> Self {
            Self {
                certificate_validity: Duration::from_secs(30 * 24 * 3600),
                key_types: vec![
                    "ecdsa-p256".into(),
                    "ecdsa-p384".into(),
                    "ed25519".into(),
                    "rsa".into(),
                ],
                min_rsa_bits: 2048,
                crl_validity: Duration::from_secs(7 * 24 * 3600),
                public_url: None,
                registry_poll: Duration::from_millis(50),
                max_request_body: ByteSize::kib(64),
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Api {
        #[serde(with = "humantime_serde")]
        pub session_ttl: Duration,
        pub max_failed_logins: u32,
        #[serde(with = "humantime_serde")]
        pub lockout: Duration,
        pub logins_per_minute: u32,
        #[serde(with = "humantime_serde")]
        pub max_token_ttl: Duration,
        /// HTTPS connections open at once.
        pub max_connections: usize,
        /// HTTPS TLS handshakes worked on at once.
        pub concurrent_handshakes: usize,
    }

    impl Default for Api {
        fn default() -> Self {
            let d = gatehouse_api::AuthSettings::default();
            let http = gatehouse_api::HttpLimits::default();
            Self {
                session_ttl: d.session_ttl,
                max_failed_logins: d.max_failed_logins,
                lockout: d.lockout,
                logins_per_minute: d.logins_per_minute,
                max_token_ttl: d.max_token_ttl,
                max_connections: http.max_connections,
                concurrent_handshakes: http.concurrent_handshakes,
            }
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    pub struct Log {
        pub level: String,
        pub format: LogFormat,
    }

    impl Default for Log {
        fn default() -> Self {
            Self {
                level: "info".into(),
                format: LogFormat::Text,
            }
        }
    }

    #[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
    #[serde(rename_all = "snake_case")]
    pub enum LogFormat {
        #[default]
        Text,
        Json,
    }
}

pub use raw::LogFormat;

/// A legacy (plain listener) credential.
#[derive(Debug, Clone)]
pub struct LegacyUser {
    pub device: DeviceId,
    pub tenant: TenantId,
    /// Argon2 PHC string.
    pub password_hash: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub mqtts: SocketAddr,
    pub https: SocketAddr,
    pub mqtt: Option<SocketAddr>,
    pub server_names: Vec<String>,
    /// Pending-connection queue of each listening socket.
    pub backlog: u32,
    pub broker: BrokerConfig,
    pub policy: StaticPolicy,
    pub legacy_users: Vec<LegacyUser>,
    pub log_level: String,
    pub log_format: LogFormat,
    pub enrollment: EnrollmentSettings,
    pub ca: CaSettings,
    pub trust: TrustSettings,
    /// `[detect]` and `[respond]`; `None` when detection is off.
    pub detection: Option<gatehouse_runtime::DetectionSettings>,
    /// `[api]`: operator sessions, logins and API tokens.
    pub api: gatehouse_api::AuthSettings,
    /// The HTTPS listener's limits: request bodies (`enrollment.max_request_body`),
    /// handshake and header deadlines (`[limits]`), connections and handshakes at once
    /// (`[api]`).
    pub http_limits: gatehouse_api::HttpLimits,
    /// `[passwords]`: the budget of password checks.
    pub passwords: gatehouse_pki::password::PasswordBudget,
}

/// The topics of a device whose model has no profile: the static `[policy]` patterns, as
/// telemetry (nothing is known to be a command). `$` patterns are left out: the platform's
/// reserved topics are granted by the policies, not by a profile.
fn fallback_topics(
    publish: &[gatehouse_broker::TopicPattern],
    subscribe: &[gatehouse_broker::TopicPattern],
) -> gatehouse_trust::policy::ProfileTopics {
    use gatehouse_trust::policy::{ProfileTopics, TopicKind, TopicRule};
    let rules = |patterns: &[gatehouse_broker::TopicPattern]| {
        patterns
            .iter()
            .map(ToString::to_string)
            .filter(|p| !p.starts_with('$'))
            .map(|pattern| TopicRule {
                pattern,
                kind: TopicKind::Telemetry,
                rate_per_sec: None,
                burst: None,
            })
            .collect()
    };
    ProfileTopics {
        publish: rules(publish),
        subscribe: rules(subscribe),
    }
}

/// Validated `[detect]` and `[respond]` (`None`: detection off).
fn detection_settings(
    d: raw::Detect,
    r: raw::Respond,
) -> anyhow::Result<Option<gatehouse_runtime::DetectionSettings>> {
    if !d.enabled {
        return Ok(None);
    }
    if d.queue == 0 || d.queue > 16 * 1024 * 1024 {
        bail!("detect.queue must be between 1 and 16777216");
    }
    if d.tick < Duration::from_millis(10) || d.tick > Duration::from_secs(60) {
        bail!("detect.tick must be between 10ms and 60s");
    }
    d.rules
        .validate()
        .map_err(|e| anyhow::anyhow!("detect.rules: {e}"))?;
    let p = d.penalties;
    for (name, v) in [
        ("info", p.info),
        ("low", p.low),
        ("medium", p.medium),
        ("high", p.high),
        ("critical", p.critical),
    ] {
        if !(0.0..=100.0).contains(&v) {
            bail!("detect.penalties.{name} must be between 0 and 100");
        }
    }
    let playbooks = match &r.playbooks {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading respond.playbooks {}", path.display()))?;
            gatehouse_respond::Playbooks::parse(&text)
                .with_context(|| format!("respond.playbooks {}", path.display()))?
        }
        None => gatehouse_respond::Playbooks::defaults(),
    };
    if r.max_findings_per_incident == 0 {
        bail!("respond.max_findings_per_incident must be at least 1");
    }
    Ok(Some(gatehouse_runtime::DetectionSettings {
        detect: d.rules,
        playbooks,
        queue: d.queue,
        penalties: gatehouse_runtime::SeverityPenalties {
            info: p.info,
            low: p.low,
            medium: p.medium,
            high: p.high,
            critical: p.critical,
        },
        max_findings_per_incident: r.max_findings_per_incident,
        tick: d.tick,
        never_ban: r
            .never_ban
            .iter()
            .map(|t| {
                t.parse()
                    .map_err(|e| anyhow::anyhow!("respond.never_ban: {e}"))
            })
            .collect::<anyhow::Result<_>>()?,
        // Filled from `[policy]` once it is read.
        grants: gatehouse_detect::Grants::default(),
    }))
}

/// Validated `[trust]`.
#[derive(Debug, Clone)]
pub struct TrustSettings {
    /// Whether the data plane is gated by trust verdicts (the default) or by the static
    /// `[policy]` alone (weaker: scores and pins change nothing on the wire).
    pub gate: raw::GateMode,
    pub posture_interval: Duration,
    pub posture_queue: usize,
    /// Size and depth a policy text may have before it is parsed.
    pub policy_limits: gatehouse_trust::policy::PolicyLimits,
    pub score: gatehouse_trust::score::ScoreConfig,
}

/// Validated `[ca]`: where the CA's keys come from.
#[derive(Debug, Clone, Default)]
pub struct CaSettings {
    /// The key-encryption key's file (mode 0600); `None`: `GATEHOUSE_CA_KEK`, else a
    /// generated `ca.kek` in the CA directory.
    pub kek_file: Option<PathBuf>,
    /// An external issuing CA: certificate, key and the chain above it, PEM files.
    pub external: Option<ExternalCa>,
}

/// An external issuing CA given as PEM files.
#[derive(Debug, Clone)]
pub struct ExternalCa {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub chain: PathBuf,
}

/// Validated `[enrollment]`.
#[derive(Debug, Clone)]
pub struct EnrollmentSettings {
    pub policy: gatehouse_pki::EnrollPolicy,
    /// Base URL devices and verifiers reach the HTTPS listener at (for CRL URLs); `None`:
    /// `https://<first server name>:<https port>`.
    pub public_url: Option<String>,
    pub registry_poll: Duration,
    pub max_request_body: usize,
}

fn patterns(list: &[String], what: &str) -> anyhow::Result<Vec<TopicPattern>> {
    list.iter()
        .map(|p| TopicPattern::new(p.clone()).with_context(|| format!("{what}: pattern {p:?}")))
        .collect()
}

impl Settings {
    /// Reads and validates a file; `None` gives the defaults.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let raw: raw::File = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config file {}", p.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("invalid config file {}", p.display()))?
            }
            None => raw::File::default(),
        };
        Self::validate(raw)
    }

    /// Parses and validates configuration text.
    #[cfg(test)]
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Self::validate(toml::from_str(text)?)
    }

    fn validate(raw: raw::File) -> anyhow::Result<Self> {
        let l = raw.limits;
        let max_packet_size = u32::try_from(l.max_packet_size.as_u64())
            .ok()
            .filter(|s| (64..=268_435_455).contains(s))
            .context("limits.max_packet_size must be between 64 B and 256 MiB")?;
        if l.max_inflight == 0 {
            bail!("limits.max_inflight must be at least 1");
        }
        if l.max_topic_length == 0 || l.max_topic_length > 65_535 {
            bail!("limits.max_topic_length must be between 1 and 65535");
        }
        if l.max_topic_levels == 0 {
            bail!("limits.max_topic_levels must be at least 1");
        }
        let max_keep_alive = u16::try_from(l.max_keep_alive.as_secs())
            .ok()
            .filter(|s| *s > 0)
            .context("limits.max_keep_alive must be between 1 s and 65535 s")?;
        if l.tls_handshake_timeout.is_zero() || l.connect_timeout.is_zero() {
            bail!("limits.tls_handshake_timeout and limits.connect_timeout must not be zero");
        }
        let tap_payload_bytes = usize::try_from(l.tap_payload_bytes.as_u64())
            .ok()
            .filter(|s| *s <= 65_536)
            .context("limits.tap_payload_bytes must be at most 64 KiB")?;
        let bytes = |b: ByteSize| usize::try_from(b.as_u64()).unwrap_or(usize::MAX);
        let max_queued_bytes = bytes(l.max_queued_bytes);
        if max_queued_bytes < max_packet_size as usize {
            bail!("limits.max_queued_bytes must be at least limits.max_packet_size");
        }
        let message_memory_budget = bytes(l.message_memory_budget);
        if message_memory_budget < max_queued_bytes {
            bail!("limits.message_memory_budget must be at least limits.max_queued_bytes");
        }
        if l.max_user_properties > 65_535 {
            bail!("limits.max_user_properties must be at most 65535");
        }
        let max_user_property_bytes = bytes(l.max_user_property_bytes);
        if max_user_property_bytes > max_packet_size as usize {
            bail!("limits.max_user_property_bytes must be at most limits.max_packet_size");
        }
        let limits = Limits {
            max_packet_size,
            max_topic_length: l.max_topic_length,
            max_topic_levels: l.max_topic_levels,
            max_subscriptions_per_session: l.max_subscriptions_per_session,
            max_inflight: l.max_inflight,
            max_queued_messages: l.max_queued_messages,
            max_queued_bytes,
            message_memory_budget,
            max_user_properties: l.max_user_properties,
            max_user_property_bytes,
            max_connections: l.max_connections,
            connect_rate_per_source: l.connect_rate_per_source,
            takeovers_per_device_per_minute: l.takeovers_per_device_per_minute,
            tls_handshake_timeout: l.tls_handshake_timeout,
            connect_timeout: l.connect_timeout,
            max_keep_alive,
            max_session_expiry: l.max_session_expiry,
            max_retained_messages: l.max_retained_messages,
            max_retained_bytes: bytes(l.max_retained_bytes),
            topic_alias_maximum: l.topic_alias_maximum,
            tap_payload_bytes,
        };

        let p = raw.policy;
        let mut devices = Vec::new();
        for d in p.device {
            devices.push(DevicePolicy {
                publish: patterns(&d.publish, "policy.device.publish")?,
                subscribe: patterns(&d.subscribe, "policy.device.subscribe")?,
                device: d
                    .id
                    .parse()
                    .with_context(|| format!("policy.device id {:?}", d.id))?,
            });
        }
        let blocked = p
            .blocked
            .iter()
            .map(|b| {
                b.parse::<DeviceRef>()
                    .with_context(|| format!("policy.blocked entry {b:?}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let policy = StaticPolicy {
            publish: patterns(&p.publish, "policy.publish")?,
            subscribe: patterns(&p.subscribe, "policy.subscribe")?,
            devices,
            blocked,
        };

        let mut legacy_users = Vec::new();
        for u in raw.legacy.users {
            let device = DeviceId::new(u.username.clone())
                .with_context(|| format!("legacy.users username {:?}", u.username))?;
            let tenant = match u.tenant {
                Some(t) => TenantId::new(t).context("legacy.users tenant")?,
                None => TenantId::default(),
            };
            gatehouse_pki::password::check_hash(&u.password_hash)
                .map_err(|e| anyhow::anyhow!("legacy.users {}: password_hash: {e}", device))?;
            legacy_users.push(LegacyUser {
                device,
                tenant,
                password_hash: u.password_hash,
            });
        }
        if raw.listeners.mqtt.is_some() && legacy_users.is_empty() {
            tracing::warn!(
                "the plain MQTT listener is enabled but legacy.users is empty: nobody can connect to it"
            );
        }

        if !(16..=65_535).contains(&raw.listeners.backlog) {
            bail!("listeners.backlog must be between 16 and 65535");
        }
        let e = raw.enrollment;
        if e.certificate_validity < Duration::from_secs(60)
            || e.certificate_validity > Duration::from_secs(825 * 24 * 3600)
        {
            bail!("enrollment.certificate_validity must be between 1 minute and 825 days");
        }
        if e.crl_validity < Duration::from_secs(60) {
            bail!("enrollment.crl_validity must be at least 1 minute");
        }
        if e.registry_poll < Duration::from_millis(10) || e.registry_poll > Duration::from_secs(60)
        {
            bail!("enrollment.registry_poll must be between 10ms and 60s");
        }
        let max_request_body = usize::try_from(e.max_request_body.as_u64())
            .ok()
            .filter(|b| (1024..=16 * 1024 * 1024).contains(b))
            .context("enrollment.max_request_body must be between 1 KiB and 16 MiB")?;
        let mut csr = gatehouse_pki::CsrPolicy::none();
        for k in &e.key_types {
            match k.as_str() {
                "ecdsa-p256" => csr.ecdsa_p256 = true,
                "ecdsa-p384" => csr.ecdsa_p384 = true,
                "ed25519" => csr.ed25519 = true,
                "rsa" => csr.min_rsa_bits = Some(e.min_rsa_bits),
                other => bail!(
                    "enrollment.key_types: unknown key type {other:?} (ecdsa-p256, ecdsa-p384, ed25519, rsa)"
                ),
            }
        }
        if e.key_types.is_empty() {
            bail!("enrollment.key_types must allow at least one key type");
        }
        if e.min_rsa_bits < 2048 {
            bail!("enrollment.min_rsa_bits must be at least 2048");
        }
        if let Some(url) = &e.public_url
            && !url.starts_with("https://")
        {
            bail!("enrollment.public_url must start with https://");
        }
        let enrollment = EnrollmentSettings {
            policy: gatehouse_pki::EnrollPolicy::new(e.certificate_validity, csr, e.crl_validity),
            public_url: e.public_url.map(|u| u.trim_end_matches('/').to_owned()),
            registry_poll: e.registry_poll,
            max_request_body,
        };

        let c = raw.ca;
        let external = match (c.external_cert, c.external_key, c.external_chain) {
            (None, None, None) => None,
            (Some(cert), Some(key), chain) => Some(ExternalCa {
                cert,
                key,
                chain: chain.unwrap_or_default(),
            }),
            _ => bail!("ca.external_cert and ca.external_key must be given together"),
        };
        if external.is_some() && c.kek_file.is_some() {
            bail!(
                "ca.kek_file seals the embedded CA's keys; an external CA's key is read as given"
            );
        }
        let ca = CaSettings {
            kek_file: c.kek_file,
            external,
        };

        let t = raw.trust;
        if t.posture_queue == 0 {
            anyhow::bail!("trust.posture_queue must be at least 1");
        }
        if !(1..=4096).contains(&t.max_policy_depth) {
            bail!("trust.max_policy_depth must be between 1 and 4096");
        }
        if t.max_policy_size.as_u64() < 1024 || t.max_policy_size.as_u64() > 16 * 1024 * 1024 {
            bail!("trust.max_policy_size must be between 1KiB and 16MiB");
        }
        let trust = TrustSettings {
            gate: t.gate,
            posture_interval: t.posture_interval,
            posture_queue: t.posture_queue,
            policy_limits: gatehouse_trust::policy::PolicyLimits {
                max_bytes: usize::try_from(t.max_policy_size.as_u64()).unwrap_or(usize::MAX),
                max_depth: t.max_policy_depth,
            },
            score: gatehouse_trust::score::ScoreConfig::new(t.score).context("trust.score")?,
        };

        let mut detection = detection_settings(raw.detect, raw.respond)?;
        if let Some(d) = &mut detection {
            // What the static policy grants is the operator's decision, never probing.
            d.grants = gatehouse_detect::Grants {
                subscribe: policy.subscribe.clone(),
                devices: policy
                    .devices
                    .iter()
                    .map(|p| (p.device.clone(), p.subscribe.clone()))
                    .collect(),
            };
        }
        let api = &raw.api;
        if api.session_ttl.is_zero() || api.session_ttl > Duration::from_secs(30 * 24 * 3600) {
            bail!("api.session_ttl must be between 1s and 30days");
        }
        if api.logins_per_minute == 0 {
            bail!("api.logins_per_minute must be at least 1");
        }
        if api.max_token_ttl.is_zero() {
            bail!("api.max_token_ttl must be above zero");
        }
        if !(1..=1_000_000).contains(&api.max_connections) {
            bail!("api.max_connections must be between 1 and 1000000");
        }
        if !(1..=4096).contains(&api.concurrent_handshakes) {
            bail!("api.concurrent_handshakes must be between 1 and 4096");
        }
        let https_connections = (api.max_connections, api.concurrent_handshakes);
        let api = gatehouse_api::AuthSettings::new(
            api.session_ttl,
            api.max_failed_logins,
            api.lockout,
            api.logins_per_minute,
            api.max_token_ttl,
        );

        let p = &raw.passwords;
        if !(1..=64).contains(&p.concurrent_checks) {
            bail!("passwords.concurrent_checks must be between 1 and 64");
        }
        if p.queued_checks > 4096 {
            bail!("passwords.queued_checks must be at most 4096");
        }
        if p.checks_per_second == 0 {
            bail!("passwords.checks_per_second must be at least 1");
        }
        let passwords = gatehouse_pki::password::PasswordBudget {
            concurrent: p.concurrent_checks,
            queue: p.queued_checks,
            per_second: p.checks_per_second,
        };

        let data_dir = raw.data_dir;
        let save_interval = raw.persistence.save_interval;
        let http_limits = gatehouse_api::HttpLimits::new(
            enrollment.max_request_body,
            limits.tls_handshake_timeout,
            limits.connect_timeout,
        )
        .with_connections(https_connections.0, https_connections.1);
        Ok(Self {
            broker: BrokerConfig {
                limits,
                client_id: match raw.mqtt.client_id {
                    raw::ClientIdMode::RequireDeviceId => ClientIdPolicy::RequireDeviceId,
                    raw::ClientIdMode::AssignDeviceId => ClientIdPolicy::AssignDeviceId,
                },
                state_file: Some(data_dir.join("broker").join("state.bin")),
                save_interval: (!save_interval.is_zero()).then_some(save_interval),
            },
            data_dir,
            mqtts: raw.listeners.mqtts,
            https: raw.listeners.https,
            mqtt: raw.listeners.mqtt,
            server_names: raw.listeners.server_names,
            backlog: raw.listeners.backlog,
            policy,
            legacy_users,
            log_level: raw.log.level,
            log_format: raw.log.format,
            enrollment,
            ca,
            trust,
            detection,
            api,
            http_limits,
            passwords,
        })
    }

    /// The trust service's settings: `[trust]`, with the static `[policy]` patterns as the
    /// topics of devices whose model has no profile.
    pub fn trust_service_settings(&self) -> gatehouse_runtime::TrustSettings {
        gatehouse_runtime::TrustSettings {
            score: self.trust.score.clone(),
            fallback_topics: fallback_topics(&self.policy.publish, &self.policy.subscribe),
            device_topics: self
                .policy
                .devices
                .iter()
                .map(|d| (d.device.clone(), fallback_topics(&d.publish, &d.subscribe)))
                .collect(),
            blocked: self.policy.blocked.iter().cloned().collect(),
            posture_interval: self.trust.posture_interval,
            posture_queue: self.trust.posture_queue,
            policy_limits: self.trust.policy_limits,
        }
    }

    /// These settings with another data directory (and the broker's state file in it).
    pub fn with_data_dir(mut self, dir: PathBuf) -> Self {
        self.broker.state_file = Some(dir.join("broker").join("state.bin"));
        self.data_dir = dir;
        self
    }

    /// Fails unless the data directory exists and holds a registry: only `init` and
    /// `serve` create one, so that a command run in the wrong place or with the wrong
    /// configuration says so instead of starting an empty registry (or a new CA) there.
    /// `remote`: whether the command can talk to a server instead.
    pub fn require_data_dir(&self, remote: bool) -> anyhow::Result<()> {
        if self.db_path().is_file() {
            return Ok(());
        }
        let dir = shown_path(&self.data_dir);
        let what = if self.data_dir.is_dir() {
            format!("{dir} is not a Gatehouse data directory (it holds no gatehouse.db)")
        } else {
            format!("no Gatehouse data directory at {dir}")
        };
        let remote = if remote {
            "; or, for a remote server, --server URL (GATEHOUSE_SERVER)"
        } else {
            ""
        };
        bail!(
            "{what}: point at the server's with --data-dir DIR (GATEHOUSE_DATA_DIR) or \
             --config FILE (GATEHOUSE_CONFIG){remote}; `gatehouse init` creates a new one"
        )
    }

    /// The CA directory.
    pub fn ca_dir(&self) -> PathBuf {
        self.data_dir.join("ca")
    }

    /// Opens the CA: the embedded one in [`ca_dir`](Self::ca_dir) (created on first use,
    /// keys sealed with the configured key-encryption key), or the external one. For an
    /// external CA the chain is written to `<ca dir>/ca.crt` for clients to trust.
    pub fn open_ca(&self) -> anyhow::Result<gatehouse_pki::LocalCa> {
        use gatehouse_pki::{KeySource, LocalCa, SecretPem};
        let dir = self.ca_dir();
        let Some(ext) = &self.ca.external else {
            let source = match &self.ca.kek_file {
                Some(f) => KeySource::File(f.clone()),
                None => KeySource::default_for(&dir),
            };
            return LocalCa::open(&dir, &source).context("loading the local CA");
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(&ext.key)
                .with_context(|| format!("reading {}", ext.key.display()))?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                bail!(
                    "{}: permissions {mode:04o} are too open for a CA key (chmod 600)",
                    ext.key.display()
                );
            }
        }
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        let chain = if ext.chain.as_os_str().is_empty() {
            String::new()
        } else {
            read(&ext.chain)?
        };
        let ca = LocalCa::from_pem(&read(&ext.cert)?, &SecretPem::new(read(&ext.key)?), &chain)
            .context("loading the external CA")?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("ca.crt"), ca.chain_pem())
            .with_context(|| format!("writing {}", dir.join("ca.crt").display()))?;
        Ok(ca)
    }

    /// The registry database (SQLite): tenants, manufacturers, models, devices,
    /// certificates, tokens and the audit log.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("gatehouse.db")
    }
}

/// `config check`: the files the configuration names must be there, and the data
/// directory must be one or creatable; then a short summary for people: the listeners,
/// the data directory, the CA, what differs from the defaults, and what was checked.
pub fn check(s: &Settings, file: Option<&Path>) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let mut checked = Vec::new();
    let need_file = |checked: &mut Vec<String>, what: &str, p: &Path| -> anyhow::Result<()> {
        std::fs::File::open(p)
            .with_context(|| format!("{what} {}: cannot be read", shown_path(p)))?;
        checked.push(format!("{what} {}", shown_path(p)));
        Ok(())
    };
    if let Some(k) = &s.ca.kek_file {
        need_file(&mut checked, "ca.kek_file", k)?;
    }
    if let Some(ext) = &s.ca.external {
        need_file(&mut checked, "ca.external_cert", &ext.cert)?;
        need_file(&mut checked, "ca.external_key", &ext.key)?;
        if !ext.chain.as_os_str().is_empty() {
            need_file(&mut checked, "ca.external_chain", &ext.chain)?;
        }
    }
    let data = shown_path(&s.data_dir);
    let data_state = if s.data_dir.is_dir() {
        if s.db_path().is_file() {
            "exists, with its registry".to_owned()
        } else {
            "exists, without a registry yet (`gatehouse init` or `serve` creates it)".to_owned()
        }
    } else if s.data_dir.exists() {
        bail!("data_dir {data} is not a directory");
    } else {
        let parent = std::path::absolute(&s.data_dir)
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned))
            .unwrap_or_default();
        if !parent.is_dir() {
            bail!(
                "data_dir {data}: its parent {} does not exist",
                parent.display()
            );
        }
        "does not exist yet (`gatehouse init` or `serve` creates it)".to_owned()
    };
    checked.push(format!("data_dir {data}"));
    if s.ca.external.is_none() && s.ca_dir().join("ca.crt").is_file() {
        need_file(
            &mut checked,
            "the CA certificate",
            &s.ca_dir().join("ca.crt"),
        )?;
    }

    let mut out = String::new();
    match file {
        Some(f) => {
            let _ = writeln!(out, "configuration {} is valid", shown_path(f));
        }
        None => out.push_str("no configuration file: the built-in defaults\n"),
    }
    let _ = writeln!(
        out,
        "listeners:  MQTTS {} (client certificates required), HTTPS {}, plain MQTT {}",
        s.mqtts,
        s.https,
        s.mqtt.map_or_else(
            || "off".to_owned(),
            |a| format!("{a} ({} legacy users)", s.legacy_users.len())
        )
    );
    let _ = writeln!(out, "data dir:   {data} ({data_state})");
    let ca = match (&s.ca.external, &s.ca.kek_file) {
        (Some(ext), _) => format!("external, {}", shown_path(&ext.cert)),
        (None, Some(k)) => format!("embedded, keys sealed with {}", shown_path(k)),
        (None, None) if std::env::var_os("GATEHOUSE_CA_KEK").is_some() => {
            "embedded, keys sealed with GATEHOUSE_CA_KEK".to_owned()
        }
        (None, None) => "embedded, keys sealed with a generated ca.kek beside them \
                         (set GATEHOUSE_CA_KEK or ca.kek_file to protect them at rest)"
            .to_owned(),
    };
    let _ = writeln!(out, "CA:         {ca}");
    let _ = writeln!(
        out,
        "detection:  {}",
        if s.detection.is_some() { "on" } else { "off" }
    );
    let changed = match file {
        Some(f) => differences(&std::fs::read_to_string(f)?)?,
        None => Vec::new(),
    };
    if changed.is_empty() {
        out.push_str("every other setting at its default\n");
    } else {
        out.push_str("set differently from the defaults:\n");
        for c in changed {
            let _ = writeln!(out, "  {c}");
        }
    }
    let _ = writeln!(out, "checked: {}", checked.join("; "));
    Ok(out)
}

/// The settings of a configuration text that differ from the documented defaults, as
/// `key = value`, in key order.
fn differences(text: &str) -> anyhow::Result<Vec<String>> {
    fn flatten(
        prefix: &str,
        v: &toml::Value,
        out: &mut std::collections::BTreeMap<String, String>,
    ) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_owned(), other.to_string());
            }
        }
    }
    let mut defaults = std::collections::BTreeMap::new();
    flatten("", &toml::from_str(EXAMPLE)?, &mut defaults);
    let mut file = std::collections::BTreeMap::new();
    flatten("", &toml::from_str(text)?, &mut file);
    Ok(file
        .into_iter()
        .filter(|(k, v)| defaults.get(k) != Some(v))
        .map(|(k, v)| {
            // A password hash is the operator's secret-ish detail, not a summary's.
            if k.ends_with("password_hash") {
                format!("{k} = (set)")
            } else {
                format!("{k} = {v}")
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_is_valid_and_equals_the_defaults() {
        let example = Settings::parse(EXAMPLE).expect("example parses");
        let defaults = Settings::load(None).expect("defaults");
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
        assert_eq!(example.mqtts.port(), 8883);
        assert_eq!(example.https.port(), 8443);
        assert!(
            example.mqtt.is_none(),
            "plaintext listener is off by default"
        );
    }

    #[test]
    fn unknown_keys_are_an_error() {
        let err = Settings::parse("[limits]\nmax_packet_sise = \"1MiB\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("max_packet_sise"), "{err:#}");
        assert!(Settings::parse("colour = 1").is_err());
    }

    #[test]
    fn bad_values_are_explained() {
        for (text, needle) in [
            ("[limits]\nmax_inflight = 0", "max_inflight"),
            ("[limits]\nmax_queued_bytes = \"64KiB\"", "max_queued_bytes"),
            (
                "[limits]\nmax_queued_bytes = \"64MiB\"\nmessage_memory_budget = \"32MiB\"",
                "message_memory_budget",
            ),
            (
                "[limits]\nmax_user_property_bytes = \"2MiB\"",
                "max_user_property_bytes",
            ),
            ("[limits]\nmax_packet_size = \"1GiB\"", "max_packet_size"),
            ("[policy]\npublish = [\"a/{dev}\"]", "policy.publish"),
            (
                "[limits]\ntls_handshake_timeout = \"0s\"",
                "tls_handshake_timeout",
            ),
        ] {
            let err = format!("{:#}", Settings::parse(text).unwrap_err());
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn durations_and_sizes_take_units() {
        let s = Settings::parse(
            "[limits]\nmax_packet_size = \"64KiB\"\nconnect_timeout = \"2s\"\nmax_keep_alive = \"1m\"",
        )
        .unwrap();
        assert_eq!(s.broker.limits.max_packet_size, 65536);
        assert_eq!(s.broker.limits.connect_timeout, Duration::from_secs(2));
        assert_eq!(s.broker.limits.max_keep_alive, 60);
    }

    #[test]
    fn ca_and_enrollment_settings_are_validated() {
        for (text, needle) in [
            ("[ca]\nexternal_cert = \"a.pem\"\n", "together"),
            (
                "[ca]\nexternal_cert = \"a.pem\"\nexternal_key = \"a.key\"\nkek_file = \"k\"\n",
                "kek_file",
            ),
            (
                "[enrollment]\ncertificate_validity = \"10s\"\n",
                "certificate_validity",
            ),
            ("[enrollment]\nkey_types = [\"dsa\"]\n", "dsa"),
            ("[enrollment]\nkey_types = []\n", "at least one"),
            ("[enrollment]\nmin_rsa_bits = 1024\n", "2048"),
            ("[enrollment]\npublic_url = \"http://x\"\n", "https://"),
            (
                "[enrollment]\nmax_request_body = \"1B\"\n",
                "max_request_body",
            ),
        ] {
            let err = Settings::parse(text).expect_err(text);
            assert!(format!("{err:#}").contains(needle), "{text}: {err:#}");
        }
        let s = Settings::parse("[enrollment]\nkey_types = [\"ecdsa-p256\"]\n").expect("valid");
        assert!(s.enrollment.policy.csr.ecdsa_p256 && !s.enrollment.policy.csr.ed25519);
        assert_eq!(s.enrollment.policy.csr.min_rsa_bits, None);
    }
}
