//! Judging and enforcing: the registry's facts become scores, the scores verdicts, and the
//! verdicts the broker's gate, live.
//!
//! [`TrustService`] owns the [`VerdictTable`] that the [`TrustGate`] reads on every packet.
//! Whenever something a verdict depends on changes — a device enrolls (the scan at join),
//! reports its posture, is pinned, its model's profile or the policy set changes — the
//! service re-reads the facts from the registry, scores them, compiles a new verdict,
//! swaps it into the table and asks the broker to re-apply the gate to the device's open
//! sessions: subscriptions the new verdict refuses are removed at once, a device that may
//! no longer connect is disconnected. A verdict that changes is recorded in the registry
//! with its explanation, in the same transaction as its audit record.
//!
//! Changes made through the API are applied before the API answers. Changes made by
//! another process (the CLI writes the database directly) reach it through the change
//! feed ([`crate::feed`]) as [`TrustService::apply_changes`].

mod gate;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use gatehouse_broker::Broker;
use gatehouse_pki::KeyKind;
use gatehouse_store::{
    AssessmentRecord, Assurance, AuditEntry, Change, ChangeRecord, Device, DeviceFilter,
    DeviceStatus, DeviceTrust, ModelId, Registry,
};
use gatehouse_trust::policy::{
    CompileCache, DeviceAttrs, PolicyEngine, PolicyError, PolicyLimits, ProfileTopics, Verdict,
    VerdictTable, compile_shared,
};
use gatehouse_trust::posture::{PostureError, PostureReport, SignedPosture};
use gatehouse_trust::profile::ModelProfile;
use gatehouse_trust::score::{
    Assessment, BehaviourPenalty, CertificateKey, Facts, IdentityAssurance, Pin, ScoreConfig,
    assess,
};
use gatehouse_types::{DeviceRef, Identity, IdentitySource, Tier};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;
use time::OffsetDateTime;
use tracing::{info, warn};

pub use gate::TrustGate;

/// Why the trust service could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The registry failed.
    #[error("registry: {0}")]
    Store(String),
    /// No such device.
    #[error("no device {0}")]
    NoDevice(DeviceRef),
    /// A policy set was refused; the one in force stays.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A posture report was refused.
    #[error("{0}")]
    Posture(String),
}

fn store<E: std::fmt::Display>(e: E) -> TrustError {
    TrustError::Store(e.to_string())
}

/// The trust service's settings.
#[derive(Debug, Clone)]
pub struct TrustSettings {
    /// Weights, thresholds, half-life.
    pub score: ScoreConfig,
    /// The topics of a device whose model has no profile (from the static policy).
    pub fallback_topics: ProfileTopics,
    /// Topics added to the fallback ones for particular devices (the static policy's
    /// per-device rules).
    pub device_topics: HashMap<DeviceRef, ProfileTopics>,
    /// Devices the static policy blocks: their tier is `blocked` whatever their score.
    pub blocked: HashSet<DeviceRef>,
    /// Shortest time between two posture reports of one device that are processed;
    /// reports in between are dropped.
    pub posture_interval: Duration,
    /// Posture reports waiting to be processed, at most; beyond, they are dropped.
    pub posture_queue: usize,
    /// The size and depth a policy text may have before it is parsed.
    pub policy_limits: PolicyLimits,
}

impl TrustSettings {
    /// The topics of a device without a model profile, and the key its class is cached
    /// under.
    fn fallback_for(&self, d: &DeviceRef) -> (Arc<ProfileTopics>, String) {
        match self.device_topics.get(d) {
            Some(extra) => {
                let mut topics = self.fallback_topics.clone();
                topics.publish.extend(extra.publish.iter().cloned());
                topics.subscribe.extend(extra.subscribe.iter().cloned());
                (Arc::new(topics), format!("static:{d}"))
            }
            None => (Arc::new(self.fallback_topics.clone()), "static".to_owned()),
        }
    }
}

impl Default for TrustSettings {
    fn default() -> Self {
        Self {
            score: ScoreConfig::default(),
            fallback_topics: ProfileTopics::default(),
            device_topics: HashMap::new(),
            blocked: HashSet::new(),
            posture_interval: Duration::from_secs(1),
            posture_queue: 1024,
            policy_limits: PolicyLimits::default(),
        }
    }
}

/// Labels of the posture counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `accepted`, `refused`, `dropped`.
    pub outcome: String,
}

/// Labels of the verdict-change counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    /// The new tier.
    pub tier: String,
}

/// The trust service's metrics.
#[derive(Debug, Clone, Default)]
pub struct TrustMetrics {
    /// Verdicts compiled.
    pub verdicts_compiled: Counter,
    /// Verdicts that changed what a device may do, by new tier.
    pub verdict_changes: Family<TierLabels, Counter>,
    /// Posture reports by outcome.
    pub posture_reports: Family<OutcomeLabels, Counter>,
    /// Devices seen at the gate without a verdict (given the unregistered default).
    pub verdict_misses: Counter,
}

impl TrustMetrics {
    /// Registers every metric under `gatehouse_trust_` names.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "gatehouse_trust_verdicts_compiled",
            "Per-device verdicts compiled",
            self.verdicts_compiled.clone(),
        );
        registry.register(
            "gatehouse_trust_verdict_changes",
            "Verdicts that changed what a device may do, by new tier",
            self.verdict_changes.clone(),
        );
        registry.register(
            "gatehouse_trust_posture_reports",
            "Posture reports by outcome (accepted, refused, dropped)",
            self.posture_reports.clone(),
        );
        registry.register(
            "gatehouse_trust_verdict_misses",
            "Sessions of devices without a verdict, given the unregistered default",
            self.verdict_misses.clone(),
        );
    }

    fn posture(&self, outcome: &str) {
        self.posture_reports
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

/// A device's trust as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TrustView {
    /// The assessment: score, tier, factors with evidence, pin.
    pub assessment: Assessment,
    /// The facts it was computed from.
    pub facts: Facts,
    /// What the verdict in force allows, and why.
    pub verdict: Option<Verdict>,
}

/// A device's facts, pin and last recorded (tier, score), as loaded from the registry.
type Loaded = (Facts, Option<Pin>, Option<(Tier, gatehouse_types::Score)>);

/// What the service keeps per profile version.
type ProfileEntry = Option<(u32, Arc<ModelProfile>, Arc<ProfileTopics>)>;

/// See the module docs.
pub struct TrustService {
    registry: Arc<dyn Registry>,
    broker: Broker,
    table: Arc<VerdictTable>,
    engine: ArcSwap<PolicyEngine>,
    cache: CompileCache,
    settings: TrustSettings,
    profiles: Mutex<HashMap<ModelId, ProfileEntry>>,
    next_epoch: AtomicU64,
    /// When active pins expire, so the device is re-assessed then.
    pin_expiries: Mutex<BTreeMap<SystemTime, Vec<DeviceRef>>>,
    /// When devices with decaying behaviour penalties are next re-assessed, so the gate
    /// follows the score back up as the penalties fade.
    /// One check a device at most: its time in `decay_checks`, keyed by device.
    decay_checks: Mutex<DecayChecks>,
    /// Devices outside the registry that have connected (a certificate the operator
    /// issued by hand, a legacy password user): how they proved who they are, and the
    /// pin a response put on them, if any. Held in memory: they have no registry row.
    unregistered: Mutex<HashMap<DeviceRef, Unregistered>>,
    /// When each device's last posture report was processed.
    posture_seen: Mutex<HashMap<DeviceRef, std::time::Instant>>,
    metrics: TrustMetrics,
}

impl std::fmt::Debug for TrustService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustService")
            .field("devices", &self.table.len())
            .finish_non_exhaustive()
    }
}

fn now_utc() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn assurance_of(device: &Device) -> IdentityAssurance {
    match device.assurance {
        Assurance::Idevid => IdentityAssurance::Idevid,
        _ => IdentityAssurance::Token,
    }
}

fn assurance_name(a: IdentityAssurance) -> &'static str {
    match a {
        IdentityAssurance::Idevid => "idevid",
        IdentityAssurance::Token => "token",
        IdentityAssurance::LegacyPassword => "password",
    }
}

/// When devices are next re-assessed for their decaying behaviour penalties: one check
/// a device at most, whatever how often it is assessed meanwhile.
#[derive(Debug, Default)]
struct DecayChecks {
    by_time: BTreeMap<SystemTime, Vec<DeviceRef>>,
    by_device: HashMap<DeviceRef, SystemTime>,
}

impl DecayChecks {
    fn schedule(&mut self, d: &DeviceRef, at: SystemTime) {
        if self.by_device.get(d).is_some_and(|t| *t <= at) {
            return;
        }
        if let Some(old) = self.by_device.insert(d.clone(), at)
            && let Some(v) = self.by_time.get_mut(&old)
        {
            v.retain(|x| x != d);
        }
        self.by_time.entry(at).or_default().push(d.clone());
    }

    fn take_due(&mut self, now: SystemTime) -> Vec<DeviceRef> {
        let later = self.by_time.split_off(&now);
        let due = std::mem::replace(&mut self.by_time, later);
        let due: Vec<DeviceRef> = due.into_values().flatten().collect();
        for d in &due {
            self.by_device.remove(d);
        }
        due
    }
}

/// A device outside the registry that has connected.
#[derive(Debug, Clone)]
struct Unregistered {
    identity: IdentityAssurance,
    pin: Option<Pin>,
}

/// Devices outside the registry remembered at most (those with a pin are kept first).
const MAX_UNREGISTERED: usize = 100_000;

/// Most behaviour penalties kept in a device's facts.
pub const MAX_BEHAVIOUR_PENALTIES: usize = 64;

/// Drops penalties decayed below a tenth of a point and keeps the
/// [`MAX_BEHAVIOUR_PENALTIES`] heaviest now.
fn prune_behaviour(list: &mut Vec<BehaviourPenalty>, half_life: Duration, now: SystemTime) {
    let weight = |b: &BehaviourPenalty| b.penalty * b.remaining(half_life, now);
    list.retain(|b| weight(b) >= 0.1);
    if list.len() > MAX_BEHAVIOUR_PENALTIES {
        list.sort_by(|a, b| weight(b).total_cmp(&weight(a)));
        list.truncate(MAX_BEHAVIOUR_PENALTIES);
    }
}

fn certificate_key(kind: KeyKind) -> CertificateKey {
    match kind {
        KeyKind::EcdsaP256 => CertificateKey::Ecdsa { bits: 256 },
        KeyKind::EcdsaP384 => CertificateKey::Ecdsa { bits: 384 },
        KeyKind::Ed25519 => CertificateKey::Ed25519,
        KeyKind::Rsa { bits } => CertificateKey::Rsa {
            bits: u32::try_from(bits).unwrap_or(u32::MAX),
        },
        // A kind this build does not know is scored as the weakest.
        _ => CertificateKey::Rsa { bits: 0 },
    }
}

/// The DER of every certificate of the device that is not revoked and not expired, newest
/// first.
fn valid_certificates(registry: &dyn Registry, d: &DeviceRef) -> Result<Vec<Vec<u8>>, TrustError> {
    let now = now_utc();
    let mut certs = registry.list_certificates(d).map_err(store)?;
    certs.retain(|c| c.revoked_at.is_none() && c.not_before <= now && now < c.not_after);
    certs.reverse();
    Ok(certs
        .iter()
        .filter_map(|c| gatehouse_pki::load_certs_pem(&c.pem).ok())
        .filter_map(|mut v| (!v.is_empty()).then(|| v.swap_remove(0).as_ref().to_vec()))
        .collect())
}

/// The facts the scan at join establishes: how the device proved its identity and how
/// strong its certificate key is.
fn join_facts(registry: &dyn Registry, device: &Device) -> Result<Facts, TrustError> {
    let mut facts = Facts::new(assurance_of(device));
    if let Some(der) = valid_certificates(registry, &device.device)?.first()
        && let Ok(kind) = gatehouse_pki::certificate_key_kind(der)
    {
        facts.certificate_key = Some(certificate_key(kind));
    }
    Ok(facts)
}

/// The device's facts, pin and last recorded (tier, score).
fn load_facts(registry: &dyn Registry, device: &Device) -> Result<Loaded, TrustError> {
    let stored = registry.get_device_trust(&device.device).map_err(store)?;
    loaded_from(registry, device, stored)
}

/// [`load_facts`] from a trust row already read (`None`: the device has none yet).
fn loaded_from(
    registry: &dyn Registry,
    device: &Device,
    stored: Option<DeviceTrust>,
) -> Result<Loaded, TrustError> {
    match stored {
        Some(t) => {
            let facts = if t.facts.as_object().is_some_and(|o| o.is_empty()) {
                join_facts(registry, device)?
            } else {
                serde_json::from_value(t.facts).map_err(store)?
            };
            let pin = t
                .pin
                .map(serde_json::from_value)
                .transpose()
                .map_err(store)?;
            let recorded = t.assessment.and_then(|a| {
                let tier = serde_json::from_value(a.get("tier")?.clone()).ok()?;
                let score = serde_json::from_value(a.get("score")?.clone()).ok()?;
                Some((tier, score))
            });
            Ok((facts, pin, recorded))
        }
        None => Ok((join_facts(registry, device)?, None, None)),
    }
}

/// A device's trust computed from the registry alone, without a running server (the
/// command line's `device show`): the assessment now, the facts, and the verdict the
/// stored policy set gives (the defaults when none was stored).
pub fn view_offline(
    registry: &dyn Registry,
    settings: &TrustSettings,
    d: &DeviceRef,
) -> Result<TrustView, TrustError> {
    let device = registry
        .get_device(d)
        .map_err(store)?
        .ok_or_else(|| TrustError::NoDevice(d.clone()))?;
    let (facts, pin, _) = load_facts(registry, &device)?;
    let mut assessment = assess(&facts, &settings.score, pin.as_ref(), SystemTime::now());
    if device.status != DeviceStatus::Active {
        assessment.tier = Tier::Blocked;
    }
    let mut engine = PolicyEngine::with_defaults();
    if let Some(set) = registry.current_policy_set().map_err(store)? {
        engine.load(&set.text)?;
    }
    if settings.blocked.contains(d) {
        assessment.tier = Tier::Blocked;
    }
    let topics = match registry
        .latest_model_profile(&device.model)
        .map_err(store)?
        .and_then(|stored| ModelProfile::parse(&stored.toml).ok())
    {
        Some(p) => ProfileTopics::from(&p),
        None => (*settings.fallback_for(d).0).clone(),
    };
    let attrs = device_attrs(&device, &facts, &assessment);
    let verdict = gatehouse_trust::policy::compile(&attrs, &topics, &engine, 0);
    Ok(TrustView {
        assessment,
        facts,
        verdict: Some(verdict),
    })
}

fn device_attrs(device: &Device, facts: &Facts, assessment: &Assessment) -> DeviceAttrs {
    DeviceAttrs {
        device: device.device.clone(),
        model: device.model.to_string(),
        tier: assessment.tier,
        score: assessment.score,
        tags: device.tags.iter().cloned().collect(),
        firmware: facts
            .firmware
            .as_ref()
            .map(|f| f.version.clone())
            .unwrap_or_default(),
        assurance: assurance_name(facts.identity).to_owned(),
    }
}

// === impl TrustService ===

impl TrustService {
    /// Starts the service: loads the policy set in force (the defaults when none was ever
    /// stored) and compiles every registered device's verdict. Call before the broker
    /// accepts connections, so that no device is seen without its verdict.
    pub fn start(
        registry: Arc<dyn Registry>,
        broker: Broker,
        settings: TrustSettings,
        metrics: TrustMetrics,
    ) -> Result<Arc<Self>, TrustError> {
        let mut engine = PolicyEngine::with_defaults().with_limits(settings.policy_limits);
        if let Some(set) = registry.current_policy_set().map_err(store)? {
            // A stored set validated when it was stored; one that no longer does (the
            // schema changed) is an operator's problem to see, not a reason not to start.
            if let Err(e) = engine.load(&set.text) {
                warn!(version = set.version, error = %e, "the stored policy set does not validate; the default set is in force");
            }
        }
        let this = Arc::new(Self {
            registry,
            broker,
            table: Arc::new(VerdictTable::new()),
            engine: ArcSwap::from_pointee(engine),
            cache: CompileCache::new(),
            settings,
            profiles: Mutex::new(HashMap::new()),
            next_epoch: AtomicU64::new(1),
            pin_expiries: Mutex::new(BTreeMap::new()),
            decay_checks: Mutex::new(DecayChecks::default()),
            unregistered: Mutex::new(HashMap::new()),
            posture_seen: Mutex::new(HashMap::new()),
            metrics,
        });
        let n = this.assess_all("start")?;
        info!(devices = n, "trust verdicts compiled");
        Ok(this)
    }

    /// The gate to give the broker: reads this service's verdicts.
    pub fn gate(self: &Arc<Self>) -> TrustGate {
        TrustGate::new(Arc::clone(self))
    }

    /// The verdicts in force.
    pub fn table(&self) -> &Arc<VerdictTable> {
        &self.table
    }

    /// The policy engine in force.
    pub fn engine(&self) -> Arc<PolicyEngine> {
        self.engine.load_full()
    }

    /// The service's metrics.
    pub fn metrics(&self) -> &TrustMetrics {
        &self.metrics
    }

    fn epoch(&self) -> u64 {
        self.next_epoch.fetch_add(1, Ordering::Relaxed)
    }

    /// The profile of a model, parsed, cached by version.
    fn profile(&self, model: &ModelId) -> Result<ProfileEntry, TrustError> {
        if let Some(hit) = self.profiles.lock().get(model) {
            return Ok(hit.clone());
        }
        let entry = match self.registry.latest_model_profile(model).map_err(store)? {
            Some(stored) => match ModelProfile::parse(&stored.toml) {
                Ok(p) => {
                    let topics = ProfileTopics::from(&p);
                    Some((stored.version, Arc::new(p), Arc::new(topics)))
                }
                Err(e) => {
                    // Stored profiles validated when stored; fall back to no profile.
                    warn!(model = %model, error = %e, "stored model profile does not parse");
                    None
                }
            },
            None => None,
        };
        self.profiles.lock().insert(model.clone(), entry.clone());
        Ok(entry)
    }

    /// The scan at join: records the device's first facts (identity assurance, key
    /// strength), audited, then compiles its verdict. Called by enrollment and renewal.
    pub fn scan_at_join(&self, d: &DeviceRef, actor: &str) -> Result<Arc<Verdict>, TrustError> {
        let device = self.registered(d)?;
        let mut facts = join_facts(&*self.registry, &device)?;
        if let Some(existing) = self.registry.get_device_trust(d).map_err(store)?
            && let Ok(old) = serde_json::from_value::<Facts>(existing.facts)
        {
            // A renewal keeps what posture reported; only the key is new.
            let key = facts.certificate_key;
            facts = old;
            facts.certificate_key = key;
        }
        let value = serde_json::to_value(&facts).map_err(store)?;
        let audit = AuditEntry::new(now_utc(), actor, "scan", d.to_string())
            .reason("scan at enrollment")
            .detail(serde_json::json!({ "facts": value }));
        self.registry
            .put_device_facts(d, &value, now_utc(), Some(&audit))
            .map_err(store)?;
        // The facts just written are read again by the assessment; the device is not.
        self.assess_device(&device, "enrollment", true)
    }

    /// The registered device `d`.
    fn registered(&self, d: &DeviceRef) -> Result<Device, TrustError> {
        self.registry
            .get_device(d)
            .map_err(store)?
            .ok_or_else(|| TrustError::NoDevice(d.clone()))
    }

    /// Scores the device from the registry, compiles its verdict, puts it in force and
    /// applies it to its open sessions. A verdict that changes what the device may do is
    /// recorded and audited.
    pub fn assess(&self, d: &DeviceRef, cause: &str) -> Result<Arc<Verdict>, TrustError> {
        let device = self.registered(d)?;
        self.assess_device(&device, cause, true)
    }

    fn assess_device(
        &self,
        device: &Device,
        cause: &str,
        apply: bool,
    ) -> Result<Arc<Verdict>, TrustError> {
        let loaded = load_facts(&*self.registry, device)?;
        let outcome = self.evaluate(device, loaded)?;
        if let Some(record) = outcome.record(cause) {
            self.registry
                .record_assessment(
                    &record.device,
                    &record.assessment,
                    now_utc(),
                    record.audit.as_ref(),
                )
                .map_err(store)?;
            self.count_change(&outcome);
        }
        if apply && outcome.changed && outcome.previous.is_some() {
            self.broker.reevaluate(Some(&device.device));
        }
        Ok(outcome.verdict)
    }

    /// Scores a device from its loaded facts, compiles its verdict and puts it in force;
    /// says what changed. Writes nothing.
    fn evaluate(&self, device: &Device, loaded: Loaded) -> Result<Outcome, TrustError> {
        let d = &device.device;
        let (facts, pin, recorded) = loaded;
        let mut assessment = assess(
            &facts,
            &self.settings.score,
            pin.as_ref(),
            SystemTime::now(),
        );
        if device.status != DeviceStatus::Active || self.settings.blocked.contains(d) {
            assessment.tier = Tier::Blocked;
        }
        if !facts.behaviour.is_empty() {
            // Often enough that the tier follows the decay within a small part of a
            // half-life; seldom enough to cost nothing (at most once a second a device).
            let every = (self.settings.score.half_life() / 16)
                .clamp(Duration::from_secs(1), Duration::from_secs(15 * 60));
            self.decay_checks
                .lock()
                .schedule(d, SystemTime::now() + every);
        }
        if let Some(pin) = assessment.pin.as_ref() {
            self.pin_expiries
                .lock()
                .entry(pin.expires_at)
                .or_default()
                .push(d.clone());
        }
        let profile = self.profile(&device.model)?;
        let (topics, profile_key) = match &profile {
            Some((version, _, topics)) => {
                (Arc::clone(topics), format!("{}@{version}", device.model))
            }
            None => self.settings.fallback_for(d),
        };
        let attrs = device_attrs(device, &facts, &assessment);
        let engine = self.engine.load_full();
        let verdict = Arc::new(compile_shared(
            &attrs,
            &topics,
            &profile_key,
            &engine,
            self.epoch(),
            &self.cache,
        ));
        self.metrics.verdicts_compiled.inc();
        let previous = match self.table.install(Arc::clone(&verdict)) {
            Ok(previous) => previous.map(|p| Arc::clone(p.verdict())),
            // A newer verdict is already in force.
            Err(newer) => {
                return Ok(Outcome {
                    device: d.clone(),
                    verdict: Arc::clone(newer.verdict()),
                    assessment,
                    previous: None,
                    changed: false,
                    record: false,
                });
            }
        };
        let changed = previous.as_ref().is_none_or(|p| !same_grants(p, &verdict));
        // A device seen for the first time since start is recorded only if its tier or
        // score moved since the last record (a restart alone changes nothing).
        let record = match &previous {
            Some(_) => changed,
            None => recorded != Some((assessment.tier, assessment.score)),
        };
        Ok(Outcome {
            device: d.clone(),
            verdict,
            assessment,
            previous,
            changed,
            record,
        })
    }

    fn count_change(&self, outcome: &Outcome) {
        self.metrics
            .verdict_changes
            .get_or_create(&TierLabels {
                tier: outcome.assessment.tier.as_str().to_owned(),
            })
            .inc();
    }

    /// Compiles the verdict of every registered device (at start, after a policy change),
    /// on every core, puts them in force, applies them to every open session, and only
    /// then records the changed ones, in one transaction. Returns how many devices.
    pub fn assess_all(&self, cause: &str) -> Result<usize, TrustError> {
        let mut devices = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .registry
                .list_devices(&DeviceFilter::default(), 1000, cursor.as_ref())
                .map_err(store)?;
            devices.extend(page.items);
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let mut rows: HashMap<DeviceRef, DeviceTrust> = self
            .registry
            .list_device_trust(None)
            .map_err(store)?
            .into_iter()
            .map(|t| (t.device.clone(), t))
            .collect();
        let work: Vec<(Device, Option<DeviceTrust>)> = devices
            .into_iter()
            .map(|d| {
                let row = rows.remove(&d.device);
                (d, row)
            })
            .collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = work.len().div_ceil(threads).max(1);
        let results: Vec<Result<Vec<Outcome>, TrustError>> = std::thread::scope(|s| {
            let handles: Vec<_> = work
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        let mut out = Vec::with_capacity(part.len());
                        for (device, row) in part {
                            let loaded = loaded_from(&*self.registry, device, row.clone())?;
                            out.push(self.evaluate(device, loaded)?);
                        }
                        Ok(out)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(TrustError::Store("assessment thread panicked".into()))
                    })
                })
                .collect()
        });
        let mut outcomes = Vec::with_capacity(work.len());
        for r in results {
            outcomes.extend(r?);
        }
        // Unregistered devices hold provisional verdicts (epoch 0) compiled under the old
        // policies: drop them, and re-applying the gate compiles them again.
        self.table.remove_where(|v| v.epoch() == 0);
        self.broker.reevaluate(None);
        let batch: Vec<AssessmentRecord> =
            outcomes.iter().filter_map(|o| o.record(cause)).collect();
        if !batch.is_empty() {
            self.registry
                .record_assessments(&batch, now_utc())
                .map_err(store)?;
            for o in outcomes.iter().filter(|o| o.record) {
                self.count_change(o);
            }
        }
        Ok(work.len())
    }

    /// Validates `text` as the whole policy set and, if it validates, stores it and puts it
    /// in force for every device. A refused set changes nothing.
    pub fn set_policies(&self, text: &str, actor: &str) -> Result<u32, TrustError> {
        let mut engine = (*self.engine.load_full()).clone();
        engine.load(text)?;
        let ids = engine.policy_ids();
        let record =
            crate::ops::write_policy_set(&*self.registry, text, &ids, actor, "policy set replaced")
                .map_err(store)?;
        self.engine.store(Arc::new(engine));
        self.assess_all("policy change")?;
        Ok(record.version)
    }

    /// Handles a posture message a device published (already allowed by its verdict): the
    /// signature is checked with the device's certificate, the report applied to its facts
    /// (audited) and the device re-assessed. Refusals are audited too.
    pub fn posture(&self, d: &DeviceRef, payload: &[u8]) -> Result<Arc<Verdict>, TrustError> {
        let result = self.posture_inner(d, payload);
        match &result {
            Ok(_) => self.metrics.posture("accepted"),
            Err(e) => {
                self.metrics.posture("refused");
                let audit = AuditEntry::new(
                    now_utc(),
                    format!("device:{d}"),
                    "refuse_posture",
                    d.to_string(),
                )
                .outcome("refused")
                .reason(e.to_string());
                if let Err(err) = self.registry.append(&audit) {
                    warn!(device = %d, error = %err, "auditing a refused posture report failed");
                }
                warn!(device = %d, error = %e, "posture report refused");
            }
        }
        result
    }

    fn posture_inner(&self, d: &DeviceRef, payload: &[u8]) -> Result<Arc<Verdict>, TrustError> {
        let perr = |e: PostureError| TrustError::Posture(e.to_string());
        let signed = SignedPosture::parse(payload).map_err(perr)?;
        let certs = valid_certificates(&*self.registry, d)?;
        if !certs.iter().any(|der| {
            gatehouse_pki::verify_with_certificate(der, &signed.report, &signed.signature).is_ok()
        }) {
            return Err(TrustError::Posture(
                "posture signature does not verify with any valid certificate of the device".into(),
            ));
        }
        let report = PostureReport::parse(&signed.report).map_err(perr)?;
        let device = self.registered(d)?;
        let (mut facts, _, _) = load_facts(&*self.registry, &device)?;
        let profile = self.profile(&device.model)?;
        report.apply(
            &mut facts,
            profile.as_ref().map(|(_, p, _)| &**p),
            SystemTime::now(),
        );
        let value = serde_json::to_value(&facts).map_err(store)?;
        let audit = AuditEntry::new(now_utc(), format!("device:{d}"), "posture", d.to_string())
            .reason("posture report")
            .detail(serde_json::json!({ "report": report }));
        self.registry
            .put_device_facts(d, &value, now_utc(), Some(&audit))
            .map_err(store)?;
        self.assess_device(&device, "posture report", true)
    }

    /// Adds behaviour penalties (from detection findings) to the device's facts, audited,
    /// and re-assesses it at once, so the gate follows the finding. Penalties decayed
    /// below a tenth of a point are dropped, and at most [`MAX_BEHAVIOUR_PENALTIES`] are
    /// kept (the heaviest now), so the facts stay bounded whatever a device does.
    pub fn record_behaviour(
        &self,
        d: &DeviceRef,
        penalties: Vec<BehaviourPenalty>,
        actor: &str,
    ) -> Result<Arc<Verdict>, TrustError> {
        let device = self.registered(d)?;
        let (mut facts, _, _) = load_facts(&*self.registry, &device)?;
        let now = SystemTime::now();
        let detail = serde_json::json!({ "behaviour": penalties });
        facts.behaviour.extend(penalties);
        prune_behaviour(&mut facts.behaviour, self.settings.score.half_life(), now);
        let value = serde_json::to_value(&facts).map_err(store)?;
        let audit = AuditEntry::new(now_utc(), actor, "behaviour", d.to_string())
            .reason("detection findings")
            .detail(detail);
        self.registry
            .put_device_facts(d, &value, now_utc(), Some(&audit))
            .map_err(store)?;
        self.assess_device(&device, "detection finding", true)
    }

    /// The verdict in force for a device, if any.
    pub fn verdict_of(&self, d: &DeviceRef) -> Option<Arc<Verdict>> {
        self.table
            .get(d.tenant.as_str(), d.device.as_str())
            .map(|v| Arc::clone(v.verdict()))
    }

    /// Whether a posture report of `d` arriving now should be processed (at most one per
    /// `posture_interval`).
    pub fn posture_due(&self, d: &DeviceRef) -> bool {
        let now = std::time::Instant::now();
        let mut seen = self.posture_seen.lock();
        match seen.get(d) {
            Some(last) if now.duration_since(*last) < self.settings.posture_interval => false,
            _ => {
                if seen.len() >= 1_000_000 {
                    seen.clear();
                }
                seen.insert(d.clone(), now);
                true
            }
        }
    }

    /// Pins (or, with `None`, unpins) a device's tier, audited, and applies it at once.
    pub fn pin(
        &self,
        d: &DeviceRef,
        pin: Option<&Pin>,
        actor: &str,
    ) -> Result<Arc<Verdict>, TrustError> {
        self.pin_because(d, pin, actor, None)
    }

    /// [`pin`](Self::pin) with the reason recorded (an unpin's; a pin's own reason by
    /// default).
    pub fn pin_because(
        &self,
        d: &DeviceRef,
        pin: Option<&Pin>,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<Arc<Verdict>, TrustError> {
        let audit = crate::ops::pin_record(d, pin, actor, reason).map_err(store)?;
        match crate::ops::write_pin_record(&*self.registry, d, pin, &audit) {
            Ok(_) => self.assess(d, if pin.is_some() { "pin" } else { "unpin" }),
            Err(gatehouse_store::WriteError::NotFound { .. }) => {
                self.pin_unregistered(d, pin, &audit)
            }
            Err(e) => Err(store(e)),
        }
    }

    /// Pins (or unpins) a device that has connected but is not in the registry: the pin
    /// is held in memory, audited, and its provisional verdict recompiled at once.
    fn pin_unregistered(
        &self,
        d: &DeviceRef,
        pin: Option<&Pin>,
        audit: &AuditEntry,
    ) -> Result<Arc<Verdict>, TrustError> {
        let identity = {
            let mut seen = self.unregistered.lock();
            let Some(entry) = seen.get_mut(d) else {
                return Err(TrustError::NoDevice(d.clone()));
            };
            entry.pin = pin.cloned();
            entry.identity
        };
        self.registry.append(audit).map_err(store)?;
        let verdict = self.compile_unregistered(d, identity, self.epoch());
        self.broker.reevaluate(Some(d));
        Ok(verdict)
    }

    /// The device's trust: its assessment now, its facts and its verdict in force.
    pub fn view(&self, d: &DeviceRef) -> Result<TrustView, TrustError> {
        let device = self.registered(d)?;
        let (facts, pin, _) = load_facts(&*self.registry, &device)?;
        let mut assessment = assess(
            &facts,
            &self.settings.score,
            pin.as_ref(),
            SystemTime::now(),
        );
        if device.status != DeviceStatus::Active {
            assessment.tier = Tier::Blocked;
        }
        let verdict = self
            .table
            .get(d.tenant.as_str(), d.device.as_str())
            .map(|v| (**v.verdict()).clone());
        Ok(TrustView {
            assessment,
            facts,
            verdict,
        })
    }

    /// The verdict for a device that has none (not registered: a certificate the operator
    /// issued by hand, a legacy password user): scored on its identity alone, with the
    /// fallback topics. Put in force with epoch 0, so that any verdict compiled from the
    /// registry replaces it.
    pub fn unregistered_verdict(&self, id: &Identity) -> Arc<Verdict> {
        self.metrics.verdict_misses.inc();
        let d = DeviceRef {
            tenant: id.tenant.clone(),
            device: id.device.clone(),
        };
        let identity = match id.source {
            IdentitySource::Password => IdentityAssurance::LegacyPassword,
            _ => IdentityAssurance::Token,
        };
        {
            let mut seen = self.unregistered.lock();
            if seen.len() >= MAX_UNREGISTERED && !seen.contains_key(&d) {
                // Forget those without a pin first: only a pin is state worth keeping.
                seen.retain(|_, u| u.pin.is_some());
            }
            seen.entry(d.clone()).or_insert(Unregistered {
                identity,
                pin: None,
            });
        }
        self.compile_unregistered(&d, identity, 0)
    }

    /// Compiles and installs the provisional verdict of a device outside the registry:
    /// scored on its identity alone, with the fallback topics, under its pin if it has
    /// one. Any verdict compiled from the registry (a later epoch) replaces it.
    fn compile_unregistered(
        &self,
        d: &DeviceRef,
        identity: IdentityAssurance,
        epoch: u64,
    ) -> Arc<Verdict> {
        let pin = self.unregistered.lock().get(d).and_then(|u| u.pin.clone());
        let facts = Facts::new(identity);
        let mut assessment = assess(
            &facts,
            &self.settings.score,
            pin.as_ref(),
            SystemTime::now(),
        );
        if let Some(p) = assessment.pin.as_ref() {
            self.pin_expiries
                .lock()
                .entry(p.expires_at)
                .or_default()
                .push(d.clone());
        }
        if self.settings.blocked.contains(d) {
            assessment.tier = Tier::Blocked;
        }
        let (topics, profile_key) = self.settings.fallback_for(d);
        let attrs = DeviceAttrs {
            device: d.clone(),
            model: String::new(),
            tier: assessment.tier,
            score: assessment.score,
            tags: Default::default(),
            firmware: String::new(),
            assurance: assurance_name(identity).to_owned(),
        };
        let engine = self.engine.load_full();
        let verdict = Arc::new(compile_shared(
            &attrs,
            &topics,
            &profile_key,
            &engine,
            epoch,
            &self.cache,
        ));
        match self.table.install(Arc::clone(&verdict)) {
            Err(newer) => Arc::clone(newer.verdict()),
            Ok(_) => verdict,
        }
    }

    /// Applies changes from the feed: re-assesses the devices each one names (a new policy
    /// set or model profile re-assesses every device). Changes this service made itself
    /// are applied again, which re-reads the same facts and changes nothing.
    pub fn apply_changes(&self, changes: &[ChangeRecord]) -> Result<(), TrustError> {
        let mut devices: Vec<DeviceRef> = Vec::new();
        let mut everything = None;
        for c in changes {
            match &c.change {
                Change::PolicySet => {
                    // A set the API put in force is already the engine's; one written by
                    // another process (the command line) is loaded and applied here.
                    if let Some(set) = self.registry.current_policy_set().map_err(store)? {
                        let mut engine = (*self.engine.load_full()).clone();
                        if engine.source() != set.text {
                            match engine.load(&set.text) {
                                Ok(()) => {
                                    self.engine.store(Arc::new(engine));
                                    everything = Some("policy change");
                                }
                                Err(err) => warn!(error = %err, "stored policy set refused"),
                            }
                        }
                    }
                }
                Change::ModelProfile { .. } => {
                    self.profiles.lock().clear();
                    everything = Some("model profile change");
                }
                Change::DevicePin { device, pinned } => {
                    if !pinned && let Some(u) = self.unregistered.lock().get_mut(device) {
                        // A device outside the registry, released by another process.
                        u.pin = None;
                    }
                    devices.push(device.clone());
                }
                Change::DeviceStatus { device, .. } => devices.push(device.clone()),
                Change::CertificatesRevoked { devices: revoked } => {
                    devices.extend(revoked.iter().cloned());
                }
                // Enrollments and renewals come through this server's EST handler, which
                // runs the scan at join itself; the rest is not trust's business.
                _ => {}
            }
        }
        if let Some(cause) = everything {
            self.assess_all(cause).map(|_| ())
        } else {
            devices.sort();
            devices.dedup();
            self.reassess(devices, "registry change")
        }
    }

    /// What time alone changes: pins that expired, behaviour penalties that decayed.
    pub fn tick(&self) -> Result<(), TrustError> {
        self.expire_pins()?;
        self.follow_decay()
    }

    /// Re-assesses the devices whose behaviour penalties have decayed since they were
    /// last assessed (each re-assessment schedules the next while penalties remain).
    fn follow_decay(&self) -> Result<(), TrustError> {
        let now = SystemTime::now();
        let due = self.decay_checks.lock().take_due(now);
        self.reassess(due, "behaviour penalties decayed")
    }

    /// Re-assesses each device (those no longer registered are skipped).
    fn reassess(&self, devices: Vec<DeviceRef>, cause: &str) -> Result<(), TrustError> {
        for d in devices {
            match self.assess(&d, cause) {
                Ok(_) => {}
                Err(TrustError::NoDevice(_)) => {
                    // Outside the registry: its provisional verdict, without an expired pin.
                    let identity = {
                        let mut seen = self.unregistered.lock();
                        seen.get_mut(&d).map(|u| {
                            if u.pin
                                .as_ref()
                                .is_some_and(|p| !p.is_active(SystemTime::now()))
                            {
                                u.pin = None;
                            }
                            u.identity
                        })
                    };
                    if let Some(identity) = identity {
                        self.compile_unregistered(&d, identity, self.epoch());
                        self.broker.reevaluate(Some(&d));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Re-assesses the devices whose pin has expired.
    fn expire_pins(&self) -> Result<(), TrustError> {
        let now = SystemTime::now();
        let due: Vec<DeviceRef> = {
            let mut expiries = self.pin_expiries.lock();
            let later = expiries.split_off(&now);
            let due = std::mem::replace(&mut *expiries, later);
            let mut due: Vec<DeviceRef> = due.into_values().flatten().collect();
            due.sort();
            due.dedup();
            due
        };
        self.reassess(due, "pin expired")
    }
}

/// What compiling one device's verdict changed.
struct Outcome {
    device: DeviceRef,
    verdict: Arc<Verdict>,
    assessment: Assessment,
    previous: Option<Arc<Verdict>>,
    /// The verdict grants something else than the one it replaced (or replaced none).
    changed: bool,
    /// It should be recorded (and audited).
    record: bool,
}

impl Outcome {
    /// The registry record of this outcome, audited, if it is to be recorded.
    fn record(&self, cause: &str) -> Option<AssessmentRecord> {
        if !self.record {
            return None;
        }
        let a = &self.assessment;
        let assessment = serde_json::to_value(a).ok()?;
        let previous = self.previous.as_deref();
        let audit = AuditEntry::new(now_utc(), "system", "verdict", self.device.to_string())
            .reason(format!("{cause}: tier {} (score {})", a.tier, a.score))
            .detail(serde_json::json!({
                "epoch": self.verdict.epoch(),
                "tier": a.tier,
                "score": a.score,
                "previous": previous.map(|p| serde_json::json!({
                    "tier": p.tier(), "score": p.score(), "epoch": p.epoch()
                })),
                "pin": a.pin,
                "factors": a.factors,
                "explanation": self.verdict.explanation(),
                "cause": cause,
            }));
        Some(AssessmentRecord {
            device: self.device.clone(),
            assessment,
            audit: Some(audit),
        })
    }
}

/// Whether two verdicts grant the same things (tier, connection, topics and rates).
fn same_grants(a: &Verdict, b: &Verdict) -> bool {
    a.tier() == b.tier()
        && a.score() == b.score()
        && a.may_connect() == b.may_connect()
        && a.publish() == b.publish()
        && a.subscribe() == b.subscribe()
        && a.denied_publish() == b.denied_publish()
        && a.denied_subscribe() == b.denied_subscribe()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn penalty(name: &str, points: f64, ago: Duration, now: SystemTime) -> BehaviourPenalty {
        BehaviourPenalty {
            name: name.into(),
            penalty: points,
            at: now - ago,
            evidence: String::new(),
        }
    }

    #[test]
    fn behaviour_is_pruned_of_faded_penalties_and_bounded() {
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let mut list = vec![
            penalty("fresh", 40.0, Duration::ZERO, now),
            // 40 points after 20 half-lives: far below a tenth of a point.
            penalty("faded", 40.0, hour * 20, now),
        ];
        prune_behaviour(&mut list, hour, now);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].name, "fresh");

        let mut many: Vec<BehaviourPenalty> = (0..200)
            .map(|i| penalty(&format!("p{i}"), f64::from(i) + 1.0, Duration::ZERO, now))
            .collect();
        prune_behaviour(&mut many, hour, now);
        assert_eq!(many.len(), MAX_BEHAVIOUR_PENALTIES);
        // The heaviest are kept.
        assert!(many.iter().all(|p| p.penalty > 200.0 - 64.0 - 0.5));
    }

    #[test]
    fn a_device_has_one_decay_check_at_most() {
        let d: DeviceRef = "t/d".parse().unwrap();
        let e: DeviceRef = "t/e".parse().unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut c = DecayChecks::default();
        c.schedule(&d, t0 + Duration::from_secs(10));
        // Later ones are dropped, an earlier one replaces it.
        c.schedule(&d, t0 + Duration::from_secs(20));
        c.schedule(&d, t0 + Duration::from_secs(5));
        c.schedule(&e, t0 + Duration::from_secs(30));
        assert!(c.take_due(t0).is_empty());
        assert_eq!(c.take_due(t0 + Duration::from_secs(6)), vec![d.clone()]);
        assert!(c.take_due(t0 + Duration::from_secs(15)).is_empty());
        assert_eq!(c.take_due(t0 + Duration::from_secs(31)), vec![e]);
        // Once taken, it can be scheduled again.
        c.schedule(&d, t0 + Duration::from_secs(40));
        assert_eq!(c.take_due(t0 + Duration::from_secs(41)), vec![d]);
    }
}
