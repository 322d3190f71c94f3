//! The engine: observations in, findings out. Single-threaded; the caller runs one per
//! core or shard, with every observation of a device going to the same engine.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatehouse_types::{
    AuthFailure, ConnectObservation, DeviceRef, DisconnectCause, Finding, Identity, Observation,
    PublishObservation, Severity, SubscribeObservation,
};

use crate::cohort::{Baseline, M_BYTES, M_FIELD, M_RATE, M_SIZE, METRICS, Robust, metric_name};
use crate::config::{ConfigError, DetectConfig};
use crate::features::{Decay, FIELD_SLOTS, Features, Intervals, W1, W10, W60};
use crate::payload;
use crate::profile::{Compiled, Field, Owner, Pattern, ProfileView, Range};
use crate::rules::{RULE_COUNT, RULES, Rule, RuleInfo};
use crate::table::{Seen, Table};

/// No model assigned.
const NO_MODEL: u32 = u32::MAX;
/// Entries of the cache from an observation's `Arc<Identity>` to its device's slot.
const IDENTITY_CACHE: usize = 1 << 16;
/// Topics whose classification against the profile each device remembers.
const TOPIC_CACHE: usize = 4;
/// How often source addresses are checked for slow connections, ms.
const SLOW_CHECK_MS: u64 = 5_000;
/// No field group.
const NO_FIELDS: u8 = u8::MAX;
/// Devices remembered per source address for the per-address flood rule.
pub(crate) const SOURCE_DEVICES: usize = 8;
/// How often a device's usual peak 1 s rate takes in the latest minute's, ms.
const PEAK_MINUTE: u64 = 60_000;
/// The window of the per-address publish rate, seconds (the 10 s of `publish_flood`).
const SOURCE_FLOOD_WINDOW: f64 = 10.0;

/// The last few devices seen doing something from one address, by hash, with when.
#[derive(Debug, Clone, Copy, Default)]
struct RecentDevices {
    hash: [u64; SOURCE_DEVICES],
    at: [u64; SOURCE_DEVICES],
}

impl RecentDevices {
    /// Notes `hash` at `now`; answers how many devices were seen within `window` ms.
    fn note(&mut self, hash: u64, now: u64, window: u64) -> usize {
        let slot = match self.hash.iter().position(|h| *h == hash) {
            Some(i) => i,
            None => {
                let (i, _) = self
                    .at
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, t)| **t)
                    .unwrap_or((0, &0));
                i
            }
        };
        self.hash[slot] = hash;
        self.at[slot] = self.at[slot].max(now);
        self.at
            .iter()
            .filter(|t| **t != 0 && now.saturating_sub(**t) <= window)
            .count()
    }
}

/// Milliseconds since the Unix epoch; times before it count as the epoch.
fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn at_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn dur_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// When each rule last fired for one subject, and how badly.
#[derive(Debug, Clone, Copy, Default)]
struct Cooldowns {
    at: [u64; RULE_COUNT],
    /// OCSF severity id of the last firing; 0 for never.
    severity: [u8; RULE_COUNT],
}

impl Cooldowns {
    /// Whether `rule` may fire at `now` with `severity`; records it if so.
    fn admit(&mut self, rule: Rule, severity: Severity, now: u64, cooldown: u64) -> bool {
        let r = rule as usize;
        let sev = severity.ocsf_id();
        let last = self.severity[r];
        if last == 0 || now >= self.at[r].saturating_add(cooldown) || sev > last {
            self.at[r] = now;
            self.severity[r] = sev;
            true
        } else {
            false
        }
    }
}

/// A topic's classification against the device's profile, remembered by its hash and
/// length (a 64-bit hash with a per-process random seed: a collision is out of an
/// attacker's reach).
#[derive(Debug, Clone, Copy, Default)]
struct TopicClass {
    hash: u64,
    len: u32,
    /// 0: empty entry, 1: within the profile, 2: outside it.
    in_profile: u8,
    /// The field group of the profile carried on the topic, or [`NO_FIELDS`].
    fields: u8,
}

/// Laid out in order (`repr(C)`): what every observation touches first.
#[derive(Debug)]
#[repr(C)]
struct DeviceState {
    /// The identity of the last observation, to recognise the same `Arc` cheaply.
    identity: Option<Arc<Identity>>,
    model: u32,
    /// The current session asked for a suspect keep-alive and has sent nothing yet.
    slow_pending: bool,
    session: u64,
    /// Recent topics classified against the profile (cleared when the profile changes).
    topic_cache: [TopicClass; TOPIC_CACHE],
    features: Features,
    key: DeviceRef,
    cooldowns: Cooldowns,
    /// Per cohort metric, consecutive readings (message sizes, field values) that
    /// deviated from the baseline.
    reading_streak: [u8; METRICS],
    /// Per field slot, the device's previous reading (NaN: none yet), for `reading_jump`.
    last_reading: [f32; FIELD_SLOTS],
    /// Per field slot, when the previous reading came, whole seconds since the Unix epoch.
    last_reading_at: [u32; FIELD_SLOTS],
    /// Per field slot, how many readings in a row repeated the one before them.
    repeats: [u32; FIELD_SLOTS],
    /// Per cohort metric, consecutive baseline refreshes at which the device's summary
    /// deviated.
    summary_streak: [u8; METRICS],
    /// The peak 1 s publish rate the device usually reaches (over past minutes, bursts
    /// left out), decaying with `burst.memory`.
    peak: f32,
    /// When `peak` was last updated, ms since the Unix epoch.
    peak_at: u64,
    /// The highest 1 s rate of the current minute, folded into `peak` when it ends: a
    /// rising rate is judged against the past, not against itself.
    minute_peak: f32,
}

impl Seen for DeviceState {
    fn last_seen(&self) -> u64 {
        self.features.last_seen
    }
}

#[derive(Debug)]
struct PeerState {
    addr: IpAddr,
    last_seen: u64,
    failures: Decay,
    attempts: Decay,
    slow: Decay,
    malformed: Decay,
    /// Publishes, over the flood window, of devices behind the address that publish
    /// above their own allowance.
    fast_publishes: Decay,
    /// Those devices.
    fast_devices: RecentDevices,
    cooldowns: Cooldowns,
}

impl Seen for PeerState {
    fn last_seen(&self) -> u64 {
        self.last_seen
    }
}

#[derive(Debug)]
struct ModelState {
    name: String,
    profile: Option<Compiled>,
    baseline: Baseline,
}

/// Turns observations into findings. Time comes only from the observations' and ticks'
/// `at`, so replaying a recorded trace gives the same findings.
#[derive(Debug)]
pub struct Engine {
    cfg: DetectConfig,
    hasher: hashbrown::DefaultHashBuilder,
    devices: Table<DeviceState>,
    peers: Table<PeerState>,
    models: Vec<ModelState>,
    model_ids: HashMap<String, u32>,
    /// Cohort membership, kept apart from the evictable device state so that a device
    /// whose state was evicted is judged against its model again when it comes back.
    /// Bounded by the fleet the caller registers, not by traffic.
    members: HashMap<DeviceRef, u32>,
    /// The latest time seen, ms since the Unix epoch.
    now: u64,
    next_refresh: u64,
    /// Per model and metric, the values of the last refresh (kept to reuse the memory).
    scratch: Vec<Vec<f64>>,
    /// `Arc<Identity>` address (hashed) to device slot; checked against the slot's own
    /// `Arc` before use.
    identity_cache: Vec<u32>,
    next_slow_check: u64,
    /// Subscriptions the operator's policy grants every device.
    grants_all: Box<[Pattern]>,
    /// Subscriptions it grants particular devices.
    grants: HashMap<DeviceRef, Box<[Pattern]>>,
    /// Whether what the gate allowed a device without a profile is the operator's grant.
    gate_grants: bool,
}

/// What the operator's policy grants beyond the model profiles (the static policy's
/// `policy.subscribe` and `[[policy.device]]` rules). A subscription a grant covers is
/// the operator's decision, not a device probing: it is never `wildcard_harvesting` nor
/// `exfiltration_broad_subscribe`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grants {
    /// Subscribe patterns granted to every device (`{device}` and `{tenant}` bound).
    pub subscribe: Vec<gatehouse_types::TopicPattern>,
    /// Subscribe patterns granted to particular devices.
    pub devices: Vec<(DeviceRef, Vec<gatehouse_types::TopicPattern>)>,
}

/// The subject of a finding.
struct Subject<'a> {
    device: Option<&'a DeviceRef>,
    peer: Option<IpAddr>,
}

fn subject(d: &DeviceState) -> Subject<'_> {
    Subject {
        device: Some(&d.key),
        peer: d.features.peer,
    }
}

/// Builds a finding. Only called once a cooldown admitted it: the allocation happens
/// when something fires, not on the common path.
#[allow(clippy::too_many_arguments)]
fn finding(
    rule: Rule,
    now: u64,
    subject: Subject<'_>,
    severity: Severity,
    confidence: f64,
    summary: String,
    evidence: &[(&str, String)],
) -> Finding {
    let info = rule.info();
    Finding {
        at: at_time(now),
        device: subject.device.cloned(),
        peer: subject.peer,
        kind: info.name.to_owned(),
        severity,
        confidence: confidence.clamp(0.0, 1.0) as f32,
        technique: Some(info.technique.to_owned()),
        summary,
        evidence: evidence
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// What a refusal's reason says about the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Credentials that did not hold: counts towards `credential_brute_force`.
    Credential,
    /// Bytes that were not MQTT over TLS: counts towards `malformed_packets`.
    Malformed,
    /// The connection went away or was too slow (health checks, scanners, bad links).
    Transport,
    /// Valid credentials, refused by policy (a blocked device retrying).
    Policy,
    /// A live session of the identity would have been taken over too often.
    Takeover,
}

/// Classifies a refusal by its reason (the broker's short machine-readable reasons; an
/// unknown reason counts as a credential failure).
fn refusal(reason: &str) -> Refusal {
    match reason {
        "not_tls" | "invalid_tls_message" | "first_packet_not_connect" => Refusal::Malformed,
        "eof_during_handshake"
        | "handshake_timeout"
        | "connect_timeout"
        | "io_error"
        | "connect_rate_exceeded"
        | "alert_received"
        | "peer_incompatible"
        | "handshake_error" => Refusal::Transport,
        "gate_denied" => Refusal::Policy,
        "takeover_rate_exceeded" => Refusal::Takeover,
        r if ["malformed", "protocol_error", "decode", "packet", "parse"]
            .iter()
            .any(|w| r.contains(w)) =>
        {
            Refusal::Malformed
        }
        _ => Refusal::Credential,
    }
}

/// Whether the topic is one of the platform's reserved topics the device publishes to.
fn reserved_publish(topic: &str, device: &str) -> bool {
    topic
        .strip_prefix("$gatehouse/")
        .and_then(|r| r.strip_prefix(device))
        .is_some_and(|r| r == "/posture" || r == "/health")
}

/// The filter matched against topics: without any `$share/<group>/` prefix.
fn unshared(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|r| r.split_once('/'))
        .map_or(filter, |(_, f)| f)
}

/// Whether a filter has a wildcard in one of its first `levels` levels.
fn broad(filter: &str, levels: usize) -> bool {
    filter.split('/').take(levels).any(|l| l == "+" || l == "#")
}

/// Bias-corrected 60 s message rate: the EWMA starts at zero, so for a young device it
/// is scaled up by what its age has let it reach.
fn rate60(f: &Features, now: u64) -> f64 {
    let age = now.saturating_sub(f.first_seen).max(1000) as f64 / 1000.0;
    let reach = 1.0 - (-age / 60.0).exp();
    f.rates.msgs_at(W60, now) / reach
}

fn bytes60(f: &Features, now: u64) -> f64 {
    let age = now.saturating_sub(f.first_seen).max(1000) as f64 / 1000.0;
    let reach = 1.0 - (-age / 60.0).exp();
    f.rates.bytes_at(W60, now) / reach
}

fn confidence_for(ratio: f64) -> f64 {
    // 0.6 at the threshold, towards 0.99 as the measure grows past it.
    (0.99 - 0.39 / ratio.max(1.0)).clamp(0.5, 0.99)
}

// === impl Engine ===

impl Engine {
    /// An engine with `config`, once it is validated.
    pub fn try_new(config: DetectConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self::new(config))
    }

    /// An engine with `config`, which the caller has validated
    /// ([`DetectConfig::validate`]; [`Engine::try_new`] does both).
    pub fn new(config: DetectConfig) -> Self {
        Self {
            devices: Table::new(config.max_devices),
            peers: Table::new(config.max_sources),
            cfg: config,
            hasher: hashbrown::DefaultHashBuilder::default(),
            models: Vec::new(),
            model_ids: HashMap::new(),
            members: HashMap::new(),
            now: 0,
            next_refresh: 0,
            scratch: Vec::new(),
            identity_cache: vec![u32::MAX; IDENTITY_CACHE],
            next_slow_check: 0,
            grants_all: Box::default(),
            grants: HashMap::new(),
            gate_grants: false,
        }
    }

    /// Whether an observation's `allowed`, for a device without a profile, is a grant of
    /// the operator's policy: true behind a live gate, whose only grants for such a device
    /// are the policy's; false (the default) for recorded traffic that passed no gate.
    pub fn set_gate_grants(&mut self, yes: bool) {
        self.gate_grants = yes;
    }

    /// Replaces what the operator's policy grants (see [`Grants`]).
    pub fn set_grants(&mut self, grants: &Grants) {
        self.grants_all = grants.subscribe.iter().map(Pattern::new).collect();
        self.grants = HashMap::new();
        for (d, patterns) in &grants.devices {
            let mut list: Vec<Pattern> = self.grants.remove(d).map(Vec::from).unwrap_or_default();
            list.extend(patterns.iter().map(Pattern::new));
            self.grants.insert(d.clone(), list.into());
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &DetectConfig {
        &self.cfg
    }

    /// Every rule and detector: name, technique, description.
    pub fn rules() -> &'static [RuleInfo] {
        &RULES
    }

    /// Devices with state.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Source addresses with state.
    pub fn source_count(&self) -> usize {
        self.peers.len()
    }

    /// The cohort baseline of a model, once it has one.
    pub fn baseline(&self, model: &str) -> Option<&Baseline> {
        let i = *self.model_ids.get(model)?;
        self.models.get(i as usize).map(|m| &m.baseline)
    }

    /// The models the engine knows (from profiles and cohort membership).
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.models.iter().map(|m| m.name.as_str())
    }

    fn model_index(&mut self, name: &str) -> u32 {
        if let Some(i) = self.model_ids.get(name) {
            return *i;
        }
        let i = u32::try_from(self.models.len()).unwrap_or(NO_MODEL - 1);
        self.models.push(ModelState {
            name: name.to_owned(),
            profile: None,
            baseline: Baseline::default(),
        });
        self.model_ids.insert(name.to_owned(), i);
        i
    }

    /// Replaces the profile of `profile.model`.
    pub fn set_profile(&mut self, profile: ProfileView) {
        let i = self.model_index(&profile.model);
        let compiled = Compiled::new(&profile);
        let Some(m) = self.models.get_mut(i as usize) else {
            return;
        };
        let slots_changed = m
            .profile
            .as_ref()
            .is_some_and(|old| old.slot_names != compiled.slot_names);
        m.profile = Some(compiled);
        if slots_changed {
            // The field slots mean other fields now: their means and baselines restart.
            for k in M_FIELD..METRICS {
                m.baseline.metrics[k] = None;
            }
            for d in self.devices.iter_mut() {
                if d.model == i {
                    d.features.fields = Default::default();
                    d.reading_streak = [0; METRICS];
                    d.summary_streak = [0; METRICS];
                    d.last_reading = [f32::NAN; FIELD_SLOTS];
                    d.last_reading_at = [0; FIELD_SLOTS];
                    d.repeats = [0; FIELD_SLOTS];
                }
            }
        }
        for d in self.devices.iter_mut() {
            if d.model == i {
                d.topic_cache = Default::default();
            }
        }
    }

    /// Puts `device` in the cohort of `model` (or in none).
    pub fn set_model(&mut self, device: &DeviceRef, model: Option<&str>) {
        let m = model.map_or(NO_MODEL, |name| self.model_index(name));
        if m == NO_MODEL {
            self.members.remove(device);
        } else {
            self.members.insert(device.clone(), m);
        }
        let i = self.device_slot(device.tenant.as_str(), device.device.as_str(), None);
        if let Some(d) = self.devices.get_mut(i) {
            if d.model != m {
                d.topic_cache = Default::default();
                // The other model's field slots are other fields.
                d.last_reading = [f32::NAN; FIELD_SLOTS];
                d.last_reading_at = [0; FIELD_SLOTS];
                d.repeats = [0; FIELD_SLOTS];
            }
            d.model = m;
        }
    }

    /// Drops everything known about `device`.
    pub fn forget(&mut self, device: &DeviceRef) {
        if let Some(i) = self.find_device(device.tenant.as_str(), device.device.as_str()) {
            self.devices.remove(i);
        }
        self.members.remove(device);
    }

    /// The features of `device`, if it has state.
    pub fn features(&self, device: &DeviceRef) -> Option<&Features> {
        let i = self.find_device(device.tenant.as_str(), device.device.as_str())?;
        self.devices.get(i).map(|d| &d.features)
    }

    fn device_hash(&self, tenant: &str, device: &str) -> u64 {
        self.hasher.hash_one((tenant, device))
    }

    fn find_device(&self, tenant: &str, device: &str) -> Option<usize> {
        let h = self.device_hash(tenant, device);
        self.devices.find(h, |d| {
            d.key.device.as_str() == device && d.key.tenant.as_str() == tenant
        })
    }

    /// The slot of a device, created if new (from `identity` when given, to avoid
    /// re-validating its ids).
    fn device_slot(&mut self, tenant: &str, device: &str, identity: Option<&Identity>) -> usize {
        let h = self.device_hash(tenant, device);
        if let Some(i) = self.devices.find(h, |d| {
            d.key.device.as_str() == device && d.key.tenant.as_str() == tenant
        }) {
            return i;
        }
        let key = match identity {
            Some(id) => DeviceRef::from(id),
            None => match (tenant.parse(), device.parse()) {
                (Ok(t), Ok(d)) => DeviceRef::new(t, d),
                // Unreachable: the names came from validated ids.
                _ => return usize::MAX,
            },
        };
        let model = self.members.get(&key).copied().unwrap_or(NO_MODEL);
        self.devices.insert(
            h,
            DeviceState {
                key,
                identity: None,
                topic_cache: Default::default(),
                model,
                session: 0,
                slow_pending: false,
                features: Features::default(),
                cooldowns: Cooldowns::default(),
                reading_streak: [0; METRICS],
                last_reading: [f32::NAN; FIELD_SLOTS],
                last_reading_at: [0; FIELD_SLOTS],
                repeats: [0; FIELD_SLOTS],
                summary_streak: [0; METRICS],
                peak: 0.0,
                peak_at: 0,
                minute_peak: 0.0,
            },
        )
    }

    fn identity_slot(&mut self, id: &Arc<Identity>) -> usize {
        let ptr = Arc::as_ptr(id) as usize;
        let c = ((ptr >> 4) ^ (ptr >> 16)) % IDENTITY_CACHE;
        if let Some(&slot) = self.identity_cache.get(c)
            && let Some(d) = self.devices.get(slot as usize)
            && d.identity.as_ref().is_some_and(|a| Arc::ptr_eq(a, id))
        {
            // The slot holds this very `Arc`, so the address cannot have been reused.
            return slot as usize;
        }
        let i = self.device_slot(id.tenant.as_str(), id.device.as_str(), Some(id));
        if let Some(d) = self.devices.get_mut(i) {
            if !d.identity.as_ref().is_some_and(|a| Arc::ptr_eq(a, id)) {
                d.identity = Some(Arc::clone(id));
            }
            if let (Some(e), Ok(slot)) = (self.identity_cache.get_mut(c), u32::try_from(i)) {
                *e = slot;
            }
        }
        i
    }

    fn peer_slot(&mut self, addr: IpAddr, now: u64) -> usize {
        let h = self.hasher.hash_one(addr);
        if let Some(i) = self.peers.find(h, |p| p.addr == addr) {
            return i;
        }
        self.peers.insert(
            h,
            PeerState {
                addr,
                last_seen: now,
                failures: Decay::default(),
                attempts: Decay::default(),
                slow: Decay::default(),
                malformed: Decay::default(),
                fast_publishes: Decay::default(),
                fast_devices: RecentDevices::default(),
                cooldowns: Cooldowns::default(),
            },
        )
    }

    fn find_peer(&self, addr: IpAddr) -> Option<usize> {
        let h = self.hasher.hash_one(addr);
        self.peers.find(h, |p| p.addr == addr)
    }

    /// Takes one observation; appends any findings to `out`.
    pub fn observe(&mut self, obs: &Observation, out: &mut Vec<Finding>) {
        match obs {
            Observation::Publish(p) => self.on_publish(p, out),
            Observation::Subscribe(s) => self.on_subscribe(s, out),
            Observation::Connect(c) => self.on_connect(c, out),
            Observation::AuthFailure(a) => self.on_auth_failure(a, out),
            Observation::Disconnect {
                at,
                identity,
                cause,
                ..
            } => self.on_disconnect(*at, identity, *cause, out),
            _ => {}
        }
    }

    /// The current session sent something: it is not a slow connection after all.
    fn session_spoke(&mut self, i: usize) {
        let Some(d) = self.devices.get_mut(i) else {
            return;
        };
        if !d.slow_pending {
            return;
        }
        d.slow_pending = false;
        let now = d.features.last_seen;
        if let Some(addr) = d.features.peer
            && let Some(p) = self.find_peer(addr)
            && let Some(p) = self.peers.get_mut(p)
        {
            let w = self.cfg.slow_connection_dos.window.as_secs_f64();
            if p.slow.get(now, w) >= 1.0 {
                p.slow.add(now, w, -1.0);
            }
        }
    }

    fn on_publish(&mut self, p: &PublishObservation, out: &mut Vec<Finding>) {
        let now = ms(p.at);
        self.now = self.now.max(now);
        let i = self.identity_slot(&p.identity);
        self.session_spoke(i);
        let topic_hash = self.hasher.hash_one(&*p.topic);
        let peer = self
            .devices
            .get(i)
            .and_then(|d| d.features.peer)
            .and_then(|a| self.find_peer(a));
        let Engine {
            cfg,
            devices,
            models,
            peers,
            hasher,
            ..
        } = self;
        let Some(d) = devices.get_mut(i) else {
            return;
        };
        let model = models.get(d.model as usize);
        let profile = model.and_then(|m| m.profile.as_ref());
        let (tenant, device) = (p.identity.tenant.as_str(), p.identity.device.as_str());
        let topic: &str = &p.topic;
        let cooldown = dur_ms(cfg.cooldown);

        let f = &mut d.features;
        f.touch(now);
        if p.session != 0 {
            d.session = p.session;
        }
        f.add_publish(now, p.size);
        let new_topic = f.topics.insert(topic_hash);
        if new_topic {
            f.distinct_topics = f.distinct_topics.saturating_add(1);
        }
        let len = u32::try_from(topic.len()).unwrap_or(u32::MAX);
        let slot = (topic_hash as usize) % TOPIC_CACHE;
        let class = match d.topic_cache[slot] {
            e if e.in_profile != 0 && e.hash == topic_hash && e.len == len => e,
            _ => {
                let e = TopicClass {
                    hash: topic_hash,
                    len,
                    in_profile: match profile.map(|c| {
                        c.may_publish(topic, tenant, device) || reserved_publish(topic, device)
                    }) {
                        Some(true) => 1,
                        Some(false) => 2,
                        None => 3,
                    },
                    fields: profile
                        .and_then(|c| c.field_group(topic, tenant, device))
                        .and_then(|g| u8::try_from(g).ok())
                        .unwrap_or(NO_FIELDS),
                };
                d.topic_cache[slot] = e;
                e
            }
        };
        let f = &mut d.features;
        let in_profile = match class.in_profile {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        };
        match in_profile {
            Some(true) => f.session_active = true,
            Some(false) => {
                f.out_of_profile = f.out_of_profile.saturating_add(1);
                f.odd_publishes.add(now);
                let series = f.odd_publishes;
                check_beacon(cfg, d, series, "publishes outside the profile", now, out);
            }
            None => {}
        }
        let f = &mut d.features;
        if !p.allowed {
            f.refused = f.refused.saturating_add(1);
        }

        // topic_scanning: new topics outside the profile, or refused by the gate.
        if new_topic && (in_profile == Some(false) || !p.allowed) {
            let w = cfg.topic_scanning.window.as_secs_f64();
            let n = f.scan.add(now, w, 1.0);
            let thr = cfg.topic_scanning.topics;
            if cfg.topic_scanning.enabled && n >= thr {
                let sev = if n >= 5.0 * thr {
                    Severity::High
                } else {
                    Severity::Medium
                };
                if d.cooldowns.admit(Rule::TopicScanning, sev, now, cooldown) {
                    out.push(finding(
                        Rule::TopicScanning,
                        now,
                        subject(d),
                        sev,
                        confidence_for(n / thr),
                        format!(
                            "{} published to {n:.0} new topics outside its profile or refused in {:?}",
                            d.key, cfg.topic_scanning.window
                        ),
                        &[
                            ("new_topics", num(n)),
                            ("threshold", num(thr)),
                            ("window", format!("{:?}", cfg.topic_scanning.window)),
                            ("last_topic", topic.to_owned()),
                        ],
                    ));
                }
            }
        }

        if let Some(c) = profile {
            // command_injection: another device's (or a shared) command topic.
            if cfg.command_injection.enabled
                && in_profile == Some(false)
                && c.command_owner(topic, tenant, device) == Some(Owner::Other)
            {
                let sev = if p.retain {
                    Severity::Critical
                } else {
                    Severity::High
                };
                if d.cooldowns
                    .admit(Rule::CommandInjection, sev, now, cooldown)
                {
                    out.push(finding(
                        Rule::CommandInjection,
                        now,
                        subject(d),
                        sev,
                        if p.allowed { 0.95 } else { 0.85 },
                        format!("{} published to command topic {topic}", d.key),
                        &[
                            ("topic", topic.to_owned()),
                            ("allowed", p.allowed.to_string()),
                            ("retain", p.retain.to_string()),
                        ],
                    ));
                }
            }
            // retained_poisoning: retained outside the profile or on another's topic.
            if cfg.retained_poisoning.enabled && p.retain && in_profile == Some(false) {
                let others = c.others_publish_topic(topic, tenant, device)
                    || c.command_owner(topic, tenant, device).is_some();
                let sev = if others {
                    Severity::High
                } else {
                    Severity::Medium
                };
                if d.cooldowns
                    .admit(Rule::RetainedPoisoning, sev, now, cooldown)
                {
                    out.push(finding(
                        Rule::RetainedPoisoning,
                        now,
                        subject(d),
                        sev,
                        if others { 0.9 } else { 0.7 },
                        format!(
                            "{} published a retained message to {topic}, outside its profile",
                            d.key
                        ),
                        &[
                            ("topic", topic.to_owned()),
                            ("another_devices_topic", others.to_string()),
                            ("allowed", p.allowed.to_string()),
                            ("size", p.size.to_string()),
                        ],
                    ));
                }
            }
        }

        let f = &d.features;
        // publish_flood: sustained rate far above the profile's.
        if cfg.publish_flood.enabled {
            let r10 = f.rates.msgs[W10];
            let pf = &cfg.publish_flood;
            let limit = profile
                .and_then(|c| c.max_rate)
                .map_or(pf.max_rate, |r| r * pf.profile_factor)
                .max(pf.min_rate);
            if r10 > limit {
                let sev = if r10 > 4.0 * limit {
                    Severity::High
                } else {
                    Severity::Medium
                };
                if d.cooldowns.admit(Rule::PublishFlood, sev, now, cooldown) {
                    out.push(finding(
                        Rule::PublishFlood,
                        now,
                        subject(d),
                        sev,
                        confidence_for(r10 / limit),
                        format!(
                            "{} publishes {r10:.1} messages/s (10 s), above {limit:.1}",
                            d.key
                        ),
                        &[
                            ("rate_10s", num(r10)),
                            ("limit", num(limit)),
                            (
                                "profile_rate",
                                profile
                                    .and_then(|c| c.max_rate)
                                    .map_or_else(|| "none".to_owned(), num),
                            ),
                        ],
                    ));
                }
            }
        }
        // publish_flood per source address: devices behind one address each above their
        // own allowance, together far above what one device may send.
        if cfg.publish_flood.enabled
            && let Some(pe) = peer.and_then(|pi| peers.get_mut(pi))
        {
            let pf = &cfg.publish_flood;
            let r10 = f.rates.msgs[W10];
            let allowance = profile
                .and_then(|c| c.max_rate)
                .unwrap_or(0.0)
                .max(pf.min_rate);
            if r10 > allowance {
                pe.last_seen = pe.last_seen.max(now);
                let n = pe.fast_publishes.add(now, SOURCE_FLOOD_WINDOW, 1.0);
                let hash = hasher.hash_one((tenant, device));
                let window = (SOURCE_FLOOD_WINDOW * 1000.0) as u64;
                let senders = pe.fast_devices.note(hash, now, window);
                let rate = n / SOURCE_FLOOD_WINDOW;
                let needed = usize::try_from(pf.per_source_devices).unwrap_or(usize::MAX);
                if rate > pf.per_source_rate && senders >= needed {
                    let sev = if rate > 4.0 * pf.per_source_rate {
                        Severity::High
                    } else {
                        Severity::Medium
                    };
                    if pe.cooldowns.admit(Rule::PublishFlood, sev, now, cooldown) {
                        out.push(finding(
                            Rule::PublishFlood,
                            now,
                            Subject {
                                device: None,
                                peer: Some(pe.addr),
                            },
                            sev,
                            confidence_for(rate / pf.per_source_rate),
                            format!(
                                "{} publishes {rate:.1} messages/s (10 s) from {senders} devices, each above its own rate, above {:.1} together",
                                pe.addr, pf.per_source_rate
                            ),
                            &[
                                ("rate_10s", num(rate)),
                                ("limit", num(pf.per_source_rate)),
                                ("devices", senders.to_string()),
                                ("last_device", d.key.to_string()),
                            ],
                        ));
                    }
                }
            }
        }
        // burst: the 1 s rate far above the device's own cadence: its 60 s rate, the peaks
        // it usually reaches, the profile's rate. A device without a profile has no known
        // cadence until it has been watched for `burst.learn`.
        let r1 = f.rates.msgs[W1];
        let half_life = cfg.burst.memory.as_secs_f64().max(1e-3);
        let decayed = |peak: f32, at: u64| {
            f64::from(peak)
                * (-(now.saturating_sub(at) as f64 / 1000.0) * std::f64::consts::LN_2 / half_life)
                    .exp()
        };
        if now.saturating_sub(d.peak_at) >= PEAK_MINUTE {
            d.peak = decayed(d.peak, d.peak_at).max(f64::from(d.minute_peak)) as f32;
            d.peak_at = now;
            d.minute_peak = 0.0;
        }
        let usual_peak = decayed(d.peak, d.peak_at);
        let mut bursting = false;
        let known = now.saturating_sub(f.first_seen) >= dur_ms(cfg.burst.learn);
        let profile_rate = profile.and_then(|c| c.max_rate);
        if cfg.burst.enabled && r1 >= cfg.burst.min_rate && (known || profile_rate.is_some()) {
            {
                let own = if known { usual_peak } else { 0.0 };
                let base = rate60(f, now)
                    .max(own)
                    .max(profile_rate.unwrap_or(0.0))
                    .max(0.1);
                if r1 > cfg.burst.factor * base {
                    bursting = true;
                    let sev = Severity::Low;
                    if d.cooldowns.admit(Rule::Burst, sev, now, cooldown) {
                        out.push(finding(
                            Rule::Burst,
                            now,
                            subject(d),
                            sev,
                            confidence_for(r1 / (cfg.burst.factor * base)),
                            format!(
                                "{} burst to {r1:.1} messages/s against its usual {base:.2}",
                                d.key
                            ),
                            &[
                                ("rate_1s", num(r1)),
                                ("usual_rate", num(base)),
                                ("rate_60s", num(rate60(f, now))),
                                ("usual_peak", num(own)),
                                ("factor", num(cfg.burst.factor)),
                            ],
                        ));
                    }
                }
            }
        }
        if !bursting {
            d.minute_peak = d.minute_peak.max(r1 as f32);
        }

        let baseline = model.map(|m| &m.baseline);
        // cohort_deviation on message sizes, from the first message: a run of
        // `cohort_deviation.readings` large ones.
        if cfg.cohort_deviation.enabled
            && let Some(b) = baseline.and_then(|b| b.metrics[M_SIZE])
        {
            let size = f64::from(p.size);
            let z = b.z_above(size);
            if streak(
                &mut d.reading_streak[M_SIZE],
                z >= cfg.cohort_deviation.reading_z,
                cfg.cohort_deviation.readings,
            ) {
                let sev = deviation_severity(size, Range::default(), z, deviation_threshold(cfg));
                push_deviation(
                    cfg,
                    d,
                    now,
                    "payload_size",
                    size,
                    &b,
                    z,
                    sev,
                    Range::default(),
                    out,
                );
            }
        }

        // Payload fields: ranges and cohort.
        let Some(c) = profile else {
            return;
        };
        if p.payload.is_empty() {
            return;
        }
        let Some(fields) = c.fields.get(usize::from(class.fields)).map(|g| &*g.fields) else {
            return;
        };
        payload::extract(&p.payload, fields, &mut |k, v| {
            reading(cfg, d, baseline, fields, k, v, now, topic, out);
        });
    }

    fn on_subscribe(&mut self, s: &SubscribeObservation, out: &mut Vec<Finding>) {
        let now = ms(s.at);
        self.now = self.now.max(now);
        let i = self.identity_slot(&s.identity);
        self.session_spoke(i);
        let Engine {
            cfg,
            devices,
            models,
            grants_all,
            grants,
            gate_grants,
            ..
        } = self;
        let Some(d) = devices.get_mut(i) else {
            return;
        };
        let profile = models
            .get(d.model as usize)
            .and_then(|m| m.profile.as_ref());
        let (tenant, device) = (s.identity.tenant.as_str(), s.identity.device.as_str());
        let filter = unshared(&s.filter);
        let granted = grants_all
            .iter()
            .chain(grants.get(&d.key).into_iter().flat_map(|g| g.iter()))
            .any(|p| p.covers(filter, tenant, device));
        let cooldown = dur_ms(cfg.cooldown);
        let f = &mut d.features;
        f.touch(now);
        if s.session != 0 {
            d.session = s.session;
        }
        let in_profile = profile.map(|c| c.may_subscribe(filter, tenant, device));
        // Covered by the profile, or by what the operator's policy grants: or, without a
        // profile, allowed by a live gate, whose only source of grants then is the policy.
        let covered = in_profile == Some(true)
            || granted
            || (*gate_grants && in_profile.is_none() && s.allowed);
        let is_hash = filter == "#";
        let is_sys = filter == "$SYS" || filter.starts_with("$SYS/");
        let is_broad = !is_hash && !is_sys && broad(filter, cfg.wildcard_harvesting.broad_levels);
        if is_hash {
            f.hash_subscriptions = f.hash_subscriptions.saturating_add(1);
        }
        if is_sys {
            f.sys_subscriptions = f.sys_subscriptions.saturating_add(1);
        }
        if is_broad && !covered {
            f.broad_subscriptions = f.broad_subscriptions.saturating_add(1);
        }

        if !s.allowed {
            f.refused = f.refused.saturating_add(1);
            let w = cfg.topic_scanning.window.as_secs_f64();
            let n = f.scan.add(now, w, 1.0);
            let thr = cfg.topic_scanning.topics;
            if cfg.topic_scanning.enabled && n >= thr {
                let sev = Severity::Medium;
                if d.cooldowns.admit(Rule::TopicScanning, sev, now, cooldown) {
                    out.push(finding(
                        Rule::TopicScanning,
                        now,
                        subject(d),
                        sev,
                        confidence_for(n / thr),
                        format!(
                            "{} had {n:.0} publishes or subscriptions refused or outside its profile in {:?}",
                            d.key, cfg.topic_scanning.window
                        ),
                        &[
                            ("new_topics", num(n)),
                            ("threshold", num(thr)),
                            ("last_filter", s.filter.clone()),
                        ],
                    ));
                }
            }
        }

        if cfg.wildcard_harvesting.enabled && (is_hash || is_sys || is_broad) && !covered {
            let sev = match (is_hash || is_sys, s.allowed) {
                // No profile, and no gate to say what the policy grants (a recording):
                // recorded, not held against the device.
                (_, true) if in_profile.is_none() => Severity::Low,
                (true, true) => Severity::High,
                (true, false) | (false, true) => Severity::Medium,
                (false, false) => Severity::Low,
            };
            if d.cooldowns
                .admit(Rule::WildcardHarvesting, sev, now, cooldown)
            {
                out.push(finding(
                    Rule::WildcardHarvesting,
                    now,
                    subject(d),
                    sev,
                    if is_hash || is_sys { 0.9 } else { 0.7 },
                    format!("{} subscribed to {} outside its profile", d.key, s.filter),
                    &[
                        ("filter", s.filter.clone()),
                        ("allowed", s.allowed.to_string()),
                        (
                            "kind",
                            if is_hash {
                                "hash"
                            } else if is_sys {
                                "sys"
                            } else {
                                "broad"
                            }
                            .to_owned(),
                        ),
                    ],
                ));
            }
        }

        if cfg.exfiltration_broad_subscribe.enabled
            && let Some(c) = profile
            && in_profile == Some(false)
            && !granted
            && c.reaches_others(filter, tenant, device)
        {
            let sev = if s.allowed {
                Severity::High
            } else {
                Severity::Medium
            };
            if d.cooldowns
                .admit(Rule::ExfiltrationBroadSubscribe, sev, now, cooldown)
            {
                out.push(finding(
                    Rule::ExfiltrationBroadSubscribe,
                    now,
                    subject(d),
                    sev,
                    if s.allowed { 0.9 } else { 0.75 },
                    format!(
                        "{} subscribed to {}, which reaches other devices' data",
                        d.key, s.filter
                    ),
                    &[
                        ("filter", s.filter.clone()),
                        ("allowed", s.allowed.to_string()),
                    ],
                ));
            }
        }
    }

    fn on_connect(&mut self, c: &ConnectObservation, out: &mut Vec<Finding>) {
        let now = ms(c.at);
        self.now = self.now.max(now);
        let addr = c.peer.ip();
        let pi = self.peer_slot(addr, now);
        let di = self.identity_slot(&c.identity);
        let Engine {
            cfg,
            devices,
            peers,
            ..
        } = self;
        let cooldown = dur_ms(cfg.cooldown);
        let slow_ka = c.keep_alive == 0
            || Duration::from_secs(u64::from(c.keep_alive)) >= cfg.slow_connection_dos.keep_alive;

        // A session counts towards the address's connection rate when its device had
        // another session within the window (churn): a site behind one address whose
        // devices all come back after a restart is not a flood. Refusals always count.
        let churning = devices.get(di).is_some_and(|d| {
            d.features.session_at != 0
                && now.saturating_sub(d.features.session_at) <= dur_ms(cfg.connect_flood.window)
        });
        if let Some(p) = peers.get_mut(pi) {
            p.last_seen = p.last_seen.max(now);
            if churning {
                connect_attempt(cfg, p, now, cooldown, out);
            }
            if slow_ka {
                p.slow
                    .add(now, cfg.slow_connection_dos.window.as_secs_f64(), 1.0);
            }
        }

        let Some(d) = devices.get_mut(di) else {
            return;
        };
        let f = &mut d.features;
        f.touch(now);
        // The session before: did it publish within the profile?
        if f.connects > 0 && f.session_active {
            f.empty_sessions.reset(now);
        } else {
            f.empty_sessions.add(now);
            let series = f.empty_sessions;
            check_beacon(
                cfg,
                d,
                series,
                "sessions that publish nothing within the profile",
                now,
                out,
            );
        }
        let f = &mut d.features;
        f.session_active = false;
        f.connects = f.connects.saturating_add(1);
        f.keep_alive = c.keep_alive;
        if slow_ka {
            f.long_keep_alives = f.long_keep_alives.saturating_add(1);
        }
        d.slow_pending = slow_ka;
        d.session = c.session;

        // cloned_identity: the address keeps changing while sessions are recent.
        let ci = &cfg.cloned_identity;
        let cw = ci.window.as_secs_f64();
        let mut switches = f.address_switches.get(now, cw);
        if let Some(cur) = f.peer
            && cur != addr
        {
            if now.saturating_sub(f.session_at) <= dur_ms(ci.window) {
                switches = f.address_switches.add(now, cw, 1.0);
            }
            f.previous_peer = Some(cur);
        }
        f.peer = Some(addr);
        f.session_at = now;
        let churn_w = cfg.connect_flood.window.as_secs_f64();
        let churn = f.churn.add(now, churn_w, 1.0);

        if let Some(prev) = f.previous_peer {
            cloned_check(cfg, d, addr, prev, switches, now, out);
        }

        let cf = &cfg.connect_flood;
        if cf.enabled && churn >= cf.per_device {
            let sev = if churn >= 4.0 * cf.per_device {
                Severity::High
            } else {
                Severity::Medium
            };
            if d.cooldowns.admit(Rule::ConnectFlood, sev, now, cooldown) {
                out.push(finding(
                    Rule::ConnectFlood,
                    now,
                    Subject {
                        device: Some(&d.key),
                        peer: Some(addr),
                    },
                    sev,
                    confidence_for(churn / cf.per_device),
                    format!("{} opened {churn:.0} sessions in {:?}", d.key, cf.window),
                    &[
                        ("sessions", num(churn)),
                        ("threshold", num(cf.per_device)),
                        ("window", format!("{:?}", cf.window)),
                    ],
                ));
            }
        }
    }

    fn on_auth_failure(&mut self, a: &AuthFailure, out: &mut Vec<Finding>) {
        let now = ms(a.at);
        self.now = self.now.max(now);
        let addr = a.peer.ip();
        let pi = self.peer_slot(addr, now);
        // Only devices already known get state from a refusal: an identity in a refused
        // certificate may be forged, and must not evict real devices.
        let di = a
            .identity
            .as_ref()
            .and_then(|id| self.find_device(id.tenant.as_str(), id.device.as_str()));
        let Engine {
            cfg,
            devices,
            peers,
            ..
        } = self;
        let cooldown = dur_ms(cfg.cooldown);
        let bf = &cfg.credential_brute_force;
        let bw = bf.window.as_secs_f64();
        let kind = refusal(&a.reason);
        let credential = kind == Refusal::Credential;
        if let Some(p) = peers.get_mut(pi) {
            p.last_seen = p.last_seen.max(now);
            connect_attempt(cfg, p, now, cooldown, out);
            let n = if credential {
                p.failures.add(now, bw, 1.0)
            } else {
                p.failures.get(now, bw)
            };
            if credential && bf.enabled && n >= bf.failures {
                let sev = if n >= 10.0 * bf.failures {
                    Severity::Critical
                } else {
                    Severity::High
                };
                if p.cooldowns
                    .admit(Rule::CredentialBruteForce, sev, now, cooldown)
                {
                    out.push(finding(
                        Rule::CredentialBruteForce,
                        now,
                        Subject {
                            device: None,
                            peer: Some(addr),
                        },
                        sev,
                        confidence_for(n / bf.failures),
                        format!(
                            "{addr} failed to authenticate {n:.0} times in {:?}",
                            bf.window
                        ),
                        &[
                            ("failures", num(n)),
                            ("threshold", num(bf.failures)),
                            ("window", format!("{:?}", bf.window)),
                            ("last_reason", a.reason.clone()),
                        ],
                    ));
                }
            }
            if kind == Refusal::Malformed {
                malformed_event(
                    cfg,
                    &mut p.malformed,
                    &mut p.cooldowns,
                    None,
                    Some(addr),
                    now,
                    out,
                );
            }
        }
        let Some(d) = di.and_then(|i| devices.get_mut(i)) else {
            return;
        };
        let f = &mut d.features;
        f.touch(now);
        f.auth_failures = f.auth_failures.saturating_add(1);
        if kind == Refusal::Takeover {
            // Another holder of the identity tried to take the live session over.
            let ci = &cfg.cloned_identity;
            let cw = ci.window.as_secs_f64();
            if let Some(cur) = f.peer
                && cur != addr
                && now.saturating_sub(f.session_at) <= dur_ms(ci.window)
            {
                let switches = f.address_switches.add(now, cw, 1.0);
                cloned_check(cfg, d, addr, cur, switches, now, out);
            }
            return;
        }
        if credential {
            let n = f.recent_auth_failures.add(now, bw, 1.0);
            if bf.enabled && n >= bf.failures {
                let sev = Severity::High;
                if d.cooldowns
                    .admit(Rule::CredentialBruteForce, sev, now, cooldown)
                {
                    out.push(finding(
                        Rule::CredentialBruteForce,
                        now,
                        Subject {
                            device: Some(&d.key),
                            peer: Some(addr),
                        },
                        sev,
                        confidence_for(n / bf.failures),
                        format!(
                            "{n:.0} failed authentications as {} in {:?}",
                            d.key, bf.window
                        ),
                        &[
                            ("failures", num(n)),
                            ("threshold", num(bf.failures)),
                            ("last_reason", a.reason.clone()),
                        ],
                    ));
                }
            }
        }
    }

    fn on_disconnect(
        &mut self,
        at: SystemTime,
        identity: &Arc<Identity>,
        cause: DisconnectCause,
        out: &mut Vec<Finding>,
    ) {
        let now = ms(at);
        self.now = self.now.max(now);
        let i = self.identity_slot(identity);
        let peer = self.devices.get(i).and_then(|d| d.features.peer);
        let pi = match (cause, peer) {
            (DisconnectCause::ProtocolError, Some(addr)) => Some(self.peer_slot(addr, now)),
            _ => None,
        };
        let Engine {
            cfg,
            devices,
            peers,
            ..
        } = self;
        let Some(d) = devices.get_mut(i) else {
            return;
        };
        let f = &mut d.features;
        f.touch(now);
        match cause {
            DisconnectCause::ProtocolError => {
                f.protocol_errors = f.protocol_errors.saturating_add(1);
                malformed_event(
                    cfg,
                    &mut f.recent_protocol_errors,
                    &mut d.cooldowns,
                    Some(&d.key),
                    peer,
                    now,
                    out,
                );
                if let Some(p) = pi.and_then(|pi| peers.get_mut(pi)) {
                    p.last_seen = p.last_seen.max(now);
                    malformed_event(
                        cfg,
                        &mut p.malformed,
                        &mut p.cooldowns,
                        None,
                        peer,
                        now,
                        out,
                    );
                }
            }
            DisconnectCause::KeepAliveTimeout => {
                f.keep_alive_timeouts = f.keep_alive_timeouts.saturating_add(1);
            }
            _ => {}
        }
    }

    /// Runs the time-driven detectors (slow connections, beaconing, cohort deviation)
    /// and refreshes cohort baselines when due. Call about once a second.
    pub fn tick(&mut self, now: SystemTime, out: &mut Vec<Finding>) {
        let now = ms(now);
        self.now = self.now.max(now);
        let now = self.now;
        // Baselines are refreshed, and devices' slow-moving summaries (60 s rates, size and
        // field means) judged against them, every `cohort.refresh`; single readings are
        // judged on arrival.
        let refreshed = now >= self.next_refresh;
        if refreshed {
            self.refresh_cohorts(now);
            self.next_refresh = now.saturating_add(dur_ms(self.cfg.cohort.refresh));
        }
        let Engine {
            cfg,
            devices,
            peers,
            models,
            next_slow_check,
            ..
        } = self;
        let cooldown = dur_ms(cfg.cooldown);

        let sc = &cfg.slow_connection_dos;
        if sc.enabled && now >= *next_slow_check {
            *next_slow_check = now.saturating_add(SLOW_CHECK_MS);
            let w = sc.window.as_secs_f64();
            for p in peers.iter_mut() {
                let n = p.slow.get(now, w);
                if n >= sc.sessions {
                    let sev = if n >= 4.0 * sc.sessions {
                        Severity::High
                    } else {
                        Severity::Medium
                    };
                    if p.cooldowns
                        .admit(Rule::SlowConnectionDos, sev, now, cooldown)
                    {
                        out.push(finding(
                            Rule::SlowConnectionDos,
                            now,
                            Subject {
                                device: None,
                                peer: Some(p.addr),
                            },
                            sev,
                            confidence_for(n / sc.sessions),
                            format!(
                                "{} holds {n:.0} silent sessions with keep-alive 0 or ≥ {:?}",
                                p.addr, sc.keep_alive
                            ),
                            &[
                                ("silent_sessions", num(n)),
                                ("threshold", num(sc.sessions)),
                                ("keep_alive", format!("{:?}", sc.keep_alive)),
                            ],
                        ));
                    }
                }
            }
        }

        if !refreshed {
            return;
        }
        for d in devices.iter_mut() {
            if cfg.cohort_deviation.enabled
                && let Some(m) = models.get(d.model as usize)
            {
                let f = &d.features;
                let active = now.saturating_sub(f.last_seen) <= dur_ms(cfg.cohort.active_window);
                if !active {
                    continue;
                }
                let mut worst: Option<(usize, f64, f64, Severity, Range)> = None;
                let mut judged = [false; METRICS];
                for (k, value) in summary(f, now, cfg.cohort.min_samples) {
                    let Some(b) = m.baseline.metrics[k] else {
                        continue;
                    };
                    judged[k] = true;
                    // Rates and sizes only count above the cohort (a quieter device is not
                    // a threat); field values count both ways.
                    let z = if k < M_FIELD {
                        b.z_above(value)
                    } else {
                        b.z(value)
                    };
                    if !streak(
                        &mut d.summary_streak[k],
                        z >= cfg.cohort_deviation.z,
                        cfg.cohort_deviation.refreshes,
                    ) {
                        continue;
                    }
                    let range = metric_range(m.profile.as_ref(), k);
                    let sev = deviation_severity(value, range, z, deviation_threshold(cfg));
                    if worst.is_none_or(|(_, _, w, ws, _)| (sev, z) > (ws, w)) {
                        worst = Some((k, value, z, sev, range));
                    }
                }
                // A metric without a value or baseline this time breaks its run.
                for (run, judged) in d.summary_streak.iter_mut().zip(judged) {
                    if !judged {
                        *run = 0;
                    }
                }
                if let Some((k, value, z, sev, range)) = worst
                    && let Some(b) = m.baseline.metrics[k]
                {
                    let slots = m.profile.as_ref().map_or(&[][..], |c| &c.slot_names[..]);
                    let name = metric_name(k, slots).to_owned();
                    push_deviation(cfg, d, now, &name, value, &b, z, sev, range, out);
                }
            }
        }
    }

    fn refresh_cohorts(&mut self, now: u64) {
        let Engine {
            cfg,
            devices,
            models,
            scratch,
            ..
        } = self;
        let need = models.len() * METRICS;
        if scratch.len() < need {
            scratch.resize_with(need, Vec::new);
        }
        for v in scratch.iter_mut() {
            v.clear();
        }
        let active = dur_ms(cfg.cohort.active_window);
        for d in devices.iter() {
            if d.model == NO_MODEL || now.saturating_sub(d.features.last_seen) > active {
                continue;
            }
            let base = d.model as usize * METRICS;
            for (k, value) in summary(&d.features, now, cfg.cohort.min_samples) {
                if let Some(v) = scratch.get_mut(base + k) {
                    v.push(value);
                }
            }
        }
        for (mi, m) in models.iter_mut().enumerate() {
            for k in 0..METRICS {
                let Some(values) = scratch.get_mut(mi * METRICS + k) else {
                    continue;
                };
                let floor = if k == M_RATE || k == M_BYTES {
                    cfg.cohort.min_relative_spread_rates
                } else {
                    cfg.cohort.min_relative_spread
                };
                // A field's spread is at least a fraction of the range the profile
                // declares for it.
                // Sizes are at least `min_size_spread` apart, byte rates that times the
                // cohort's message rate (computed just before).
                let min_scale = match k {
                    M_SIZE => cfg.cohort.min_size_spread,
                    M_BYTES => m.baseline.metrics[M_RATE]
                        .map_or(0.0, |r| r.median * cfg.cohort.min_size_spread),
                    M_RATE => 0.0,
                    _ => metric_range(m.profile.as_ref(), k)
                        .width()
                        .map_or(0.0, |w| w * cfg.cohort.min_range_spread),
                };
                m.baseline.metrics[k] =
                    Robust::of(values, cfg.cohort.min_devices, floor, min_scale);
            }
        }
    }
}

/// The device's values of the cohort metrics it has enough samples for.
fn summary(f: &Features, now: u64, min_samples: u32) -> impl Iterator<Item = (usize, f64)> + use<> {
    let mut v = [(usize::MAX, 0.0); METRICS];
    if f.publishes >= min_samples {
        v[M_RATE] = (M_RATE, rate60(f, now));
        v[M_BYTES] = (M_BYTES, bytes60(f, now));
        v[M_SIZE] = (M_SIZE, f64::from(f.size.mean));
    }
    for s in 0..FIELD_SLOTS {
        let fs = f.fields[s];
        if fs.n >= min_samples.min(5) {
            v[M_FIELD + s] = (M_FIELD + s, f64::from(fs.mean));
        }
    }
    v.into_iter()
        .filter(|(k, x)| *k != usize::MAX && x.is_finite())
}

/// Counts a connection attempt from a source address; fires `connect_flood`.
fn connect_attempt(
    cfg: &DetectConfig,
    p: &mut PeerState,
    now: u64,
    cooldown: u64,
    out: &mut Vec<Finding>,
) {
    let cf = &cfg.connect_flood;
    let n = p.attempts.add(now, cf.window.as_secs_f64(), 1.0);
    if cf.enabled && n >= cf.per_source {
        let sev = if n >= 4.0 * cf.per_source {
            Severity::High
        } else {
            Severity::Medium
        };
        if p.cooldowns.admit(Rule::ConnectFlood, sev, now, cooldown) {
            out.push(finding(
                Rule::ConnectFlood,
                now,
                Subject {
                    device: None,
                    peer: Some(p.addr),
                },
                sev,
                confidence_for(n / cf.per_source),
                format!(
                    "{} made {n:.0} connection attempts in {:?}",
                    p.addr, cf.window
                ),
                &[
                    ("attempts", num(n)),
                    ("threshold", num(cf.per_source)),
                    ("window", format!("{:?}", cf.window)),
                ],
            ));
        }
    }
}

/// Counts a malformed stream for a subject; fires `malformed_packets`.
fn malformed_event(
    cfg: &DetectConfig,
    counter: &mut Decay,
    cooldowns: &mut Cooldowns,
    device: Option<&DeviceRef>,
    peer: Option<IpAddr>,
    now: u64,
    out: &mut Vec<Finding>,
) {
    let mc = &cfg.malformed_packets;
    let n = counter.add(now, mc.window.as_secs_f64(), 1.0);
    if mc.enabled && n >= mc.count {
        let sev = if n >= 4.0 * mc.count {
            Severity::High
        } else {
            Severity::Medium
        };
        if cooldowns.admit(Rule::MalformedPackets, sev, now, dur_ms(cfg.cooldown)) {
            let who = device.map_or_else(
                || peer.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                ToString::to_string,
            );
            out.push(finding(
                Rule::MalformedPackets,
                now,
                Subject { device, peer },
                sev,
                confidence_for(n / mc.count),
                format!(
                    "{who} sent {n:.0} malformed or protocol-violating streams in {:?}",
                    mc.window
                ),
                &[
                    ("malformed", num(n)),
                    ("threshold", num(mc.count)),
                    ("window", format!("{:?}", mc.window)),
                ],
            ));
        }
    }
}

/// One payload reading: the device's field mean, the profile's range, the cohort.
#[allow(clippy::too_many_arguments)]
fn reading(
    cfg: &DetectConfig,
    d: &mut DeviceState,
    baseline: Option<&Baseline>,
    fields: &[Field],
    k: usize,
    v: f64,
    now: u64,
    topic: &str,
    out: &mut Vec<Finding>,
) {
    let cooldown = dur_ms(cfg.cooldown);
    let Some(field) = fields.get(k) else {
        return;
    };
    if let Some(slot) = field.slot
        && let Some(s) = d.features.fields.get_mut(usize::from(slot))
    {
        s.add(v);
    }
    if let Some(slot) = field.slot
        && (field.max_step.is_some() || field.max_repeats.is_some())
    {
        sequence_check(cfg, d, field, usize::from(slot), v, now, topic, out);
    }
    if !field.contains(v) {
        d.features.out_of_range = d.features.out_of_range.saturating_add(1);
        if cfg.out_of_range_reading.enabled {
            // Far outside (beyond the range's own width) is worse.
            let width = match (field.min, field.max) {
                (Some(lo), Some(hi)) => (hi - lo).abs(),
                _ => f64::INFINITY,
            };
            let beyond = field
                .min
                .map_or(0.0, |lo| lo - v)
                .max(field.max.map_or(0.0, |hi| v - hi));
            let sev = if beyond > width {
                Severity::High
            } else {
                Severity::Medium
            };
            if d.cooldowns
                .admit(Rule::OutOfRangeReading, sev, now, cooldown)
            {
                out.push(finding(
                    Rule::OutOfRangeReading,
                    now,
                    subject(d),
                    sev,
                    0.9,
                    format!(
                        "{} reported {}={} outside [{}, {}]",
                        d.key,
                        field.name,
                        num(v),
                        field.min.map_or_else(|| "-inf".to_owned(), num),
                        field.max.map_or_else(|| "inf".to_owned(), num)
                    ),
                    &[
                        ("field", field.name.to_string()),
                        ("value", num(v)),
                        ("min", field.min.map_or_else(|| "none".to_owned(), num)),
                        ("max", field.max.map_or_else(|| "none".to_owned(), num)),
                        ("topic", topic.to_owned()),
                    ],
                ));
            }
        }
    }
    if cfg.cohort_deviation.enabled
        && let Some(slot) = field.slot
        && let Some(b) = baseline.and_then(|b| b.metrics[M_FIELD + usize::from(slot)])
    {
        let z = b.z(v);
        let k = M_FIELD + usize::from(slot);
        if let Some(run) = d.reading_streak.get_mut(k)
            && streak(
                run,
                z >= cfg.cohort_deviation.reading_z,
                cfg.cohort_deviation.readings,
            )
        {
            let sev = deviation_severity(v, field.range(), z, deviation_threshold(cfg));
            push_deviation(cfg, d, now, &field.name, v, &b, z, sev, field.range(), out);
        }
    }
}

/// Compares a reading with the device's previous one of the same field and remembers
/// it: `stuck_reading` when it repeated the one before more than the profile's
/// `max_repeats` times in a row, `reading_jump` when it moved by more than `max_step`
/// since one that came within `reading_jump.max_gap`.
#[allow(clippy::too_many_arguments)]
fn sequence_check(
    cfg: &DetectConfig,
    d: &mut DeviceState,
    field: &Field,
    slot: usize,
    v: f64,
    now: u64,
    topic: &str,
    out: &mut Vec<Finding>,
) {
    let (Some(&prev), Some(&prev_at), Some(&repeats)) = (
        d.last_reading.get(slot),
        d.last_reading_at.get(slot),
        d.repeats.get(slot),
    ) else {
        return;
    };
    let secs = u32::try_from(now / 1000).unwrap_or(u32::MAX).max(1);
    let repeats = if prev.is_finite() && prev == v as f32 {
        repeats.saturating_add(1)
    } else {
        0
    };
    if let Some(s) = d.last_reading.get_mut(slot) {
        *s = v as f32;
    }
    if let Some(s) = d.last_reading_at.get_mut(slot) {
        *s = secs;
    }
    if let Some(s) = d.repeats.get_mut(slot) {
        *s = repeats;
    }
    if let Some(max_repeats) = field.max_repeats
        && cfg.stuck_reading.enabled
        && repeats > max_repeats
        && d.cooldowns.admit(
            Rule::StuckReading,
            Severity::Medium,
            now,
            dur_ms(cfg.cooldown),
        )
    {
        out.push(finding(
            Rule::StuckReading,
            now,
            subject(d),
            Severity::Medium,
            confidence_for(f64::from(repeats) / f64::from(max_repeats)),
            format!(
                "{} reported {}={} {} times in a row after the first; its profile allows {}",
                d.key,
                field.name,
                num(v),
                repeats,
                max_repeats
            ),
            &[
                ("field", field.name.to_string()),
                ("value", num(v)),
                ("repeats", repeats.to_string()),
                ("max_repeats", max_repeats.to_string()),
                ("topic", topic.to_owned()),
            ],
        ));
    }
    let Some(max_step) = field.max_step else {
        return;
    };
    let recent = prev_at > 0
        && u64::from(secs.saturating_sub(prev_at)) <= cfg.reading_jump.max_gap.as_secs();
    if !cfg.reading_jump.enabled || !prev.is_finite() || !recent {
        return;
    }
    let prev = f64::from(prev);
    let jump = (v - prev).abs();
    if jump <= max_step {
        return;
    }
    let sev = if jump > 4.0 * max_step {
        Severity::High
    } else {
        Severity::Medium
    };
    if d.cooldowns
        .admit(Rule::ReadingJump, sev, now, dur_ms(cfg.cooldown))
    {
        out.push(finding(
            Rule::ReadingJump,
            now,
            subject(d),
            sev,
            confidence_for(jump / max_step),
            format!(
                "{} reported {}={} right after {}: a change of {} where its profile allows {}",
                d.key,
                field.name,
                num(v),
                num(prev),
                num(jump),
                num(max_step)
            ),
            &[
                ("field", field.name.to_string()),
                ("value", num(v)),
                ("previous", num(prev)),
                ("change", num(jump)),
                ("max_step", num(max_step)),
                ("topic", topic.to_owned()),
            ],
        ));
    }
}

/// Fires `cloned_identity` when the device's address switches reach the threshold.
fn cloned_check(
    cfg: &DetectConfig,
    d: &mut DeviceState,
    addr: IpAddr,
    other: IpAddr,
    switches: f64,
    now: u64,
    out: &mut Vec<Finding>,
) {
    let ci = &cfg.cloned_identity;
    if !ci.enabled || switches < ci.switches {
        return;
    }
    let sev = Severity::High;
    if d.cooldowns
        .admit(Rule::ClonedIdentity, sev, now, dur_ms(cfg.cooldown))
    {
        out.push(finding(
            Rule::ClonedIdentity,
            now,
            Subject {
                device: Some(&d.key),
                peer: Some(addr),
            },
            sev,
            confidence_for(switches / ci.switches),
            format!(
                "{} connected alternately from {other} and {addr}: {switches:.0} switches in {:?}",
                d.key, ci.window
            ),
            &[
                ("address", addr.to_string()),
                ("previous_address", other.to_string()),
                ("switches", num(switches)),
                ("window", format!("{:?}", ci.window)),
            ],
        ));
    }
}

/// Judges a series of intervals just extended; fires `beaconing` when it is regular.
fn check_beacon(
    cfg: &DetectConfig,
    d: &mut DeviceState,
    series: Intervals,
    what: &str,
    now: u64,
    out: &mut Vec<Finding>,
) {
    let bc = &cfg.beaconing;
    if !bc.enabled || series.gaps.n < bc.min_intervals {
        return;
    }
    let mean = f64::from(series.gaps.mean);
    let cv = series.variation();
    if mean < bc.min_period.as_secs_f64() || cv > bc.max_variation {
        return;
    }
    let sev = Severity::Medium;
    if d.cooldowns
        .admit(Rule::Beaconing, sev, now, dur_ms(cfg.cooldown))
    {
        out.push(finding(
            Rule::Beaconing,
            now,
            subject(d),
            sev,
            confidence_for(bc.max_variation / cv.max(1e-3)),
            format!(
                "{} shows {what} every {mean:.1} s (variation {cv:.3})",
                d.key
            ),
            &[
                ("period_s", num(mean)),
                ("variation", num(cv)),
                ("intervals", series.gaps.n.to_string()),
                ("series", what.to_owned()),
            ],
        ));
    }
}

/// Extends or breaks a run of deviations; whether it is now long enough for a finding.
fn streak(run: &mut u8, deviates: bool, needed: u32) -> bool {
    if deviates {
        *run = run.saturating_add(1);
        u32::from(*run) >= needed
    } else {
        *run = 0;
        false
    }
}

/// The z-score that makes a deviation `medium` when the profile gives no range (twice
/// it, `high`).
fn deviation_threshold(cfg: &DetectConfig) -> f64 {
    cfg.cohort_deviation.z.min(cfg.cohort_deviation.reading_z)
}

/// The range the profile declares for a cohort metric: a field's `min`/`max`, the
/// profile's total rate for the message rate; none for byte rates and sizes.
fn metric_range(profile: Option<&Compiled>, k: usize) -> Range {
    let Some(c) = profile else {
        return Range::default();
    };
    match k {
        M_RATE => Range {
            min: c.max_rate.map(|_| 0.0),
            max: c.max_rate,
        },
        M_BYTES | M_SIZE => Range::default(),
        _ => c.slot_ranges.get(k - M_FIELD).copied().unwrap_or_default(),
    }
}

/// How bad a deviation from the cohort is. Inside the range the profile declares, the
/// value is what the manufacturer calls normal: `info`, whatever the cohort looks like
/// (a cohort's spread can collapse; the manufacturer's statement does not). Outside it,
/// by how far: `medium`, `high` beyond the range's own width. Without a declared range,
/// by the z-score: `medium`, `high` at twice the threshold.
fn deviation_severity(value: f64, range: Range, z: f64, thr: f64) -> Severity {
    if range.declared() {
        if range.contains(value) {
            return Severity::Info;
        }
        let beyond = range.beyond(value);
        return if range.width().is_some_and(|w| beyond > w) {
            Severity::High
        } else {
            Severity::Medium
        };
    }
    if z >= 2.0 * thr {
        Severity::High
    } else {
        Severity::Medium
    }
}

#[allow(clippy::too_many_arguments)]
fn push_deviation(
    cfg: &DetectConfig,
    d: &mut DeviceState,
    now: u64,
    metric: &str,
    value: f64,
    b: &Robust,
    z: f64,
    sev: Severity,
    range: Range,
    out: &mut Vec<Finding>,
) {
    let thr = deviation_threshold(cfg);
    let inside = range.declared() && range.contains(value);
    if d.cooldowns
        .admit(Rule::CohortDeviation, sev, now, dur_ms(cfg.cooldown))
    {
        out.push(finding(
            Rule::CohortDeviation,
            now,
            Subject {
                device: Some(&d.key),
                peer: d.features.peer,
            },
            sev,
            confidence_for(z / thr),
            format!(
                "{}'s {metric} {} is {z:.1} spreads from its cohort's median {}{}",
                d.key,
                num(value),
                num(b.median),
                if inside {
                    ", inside the profile's range"
                } else if range.declared() {
                    ", outside the profile's range"
                } else {
                    ""
                }
            ),
            &[
                ("metric", metric.to_owned()),
                ("value", num(value)),
                ("median", num(b.median)),
                ("scale", num(b.scale)),
                ("z", num(z)),
                ("cohort_devices", b.devices.to_string()),
                ("min", range.min.map_or_else(|| "none".to_owned(), num)),
                ("max", range.max.map_or_else(|| "none".to_owned(), num)),
                ("inside_profile_range", inside.to_string()),
            ],
        ));
    }
}
