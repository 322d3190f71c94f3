//! Detection and response, wired into the loop: the broker's tap feeds the detection
//! engine, its findings are recorded and grouped into incidents, lower the device's trust
//! (so the gate follows at once) and are matched against the playbooks, whose actions
//! act on the data plane — quarantine, throttle, ban, disconnect, revoke, notify — each
//! audited and reversible by an operator.
//!
//! The one design decision: the engine runs on a thread of its own, fed by the tap's
//! bounded channel. The broker never waits for detection (a detector that falls behind
//! loses observations, counted), and detection never waits for the registry: findings go
//! to a responder task that does the writes and the actions.

mod actions;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use gatehouse_broker::Broker;
use gatehouse_detect::{DetectConfig, Engine, FieldSpec, Grants, ProfileView};
use gatehouse_respond::Playbooks;
use gatehouse_store::{ActionFilter, ActionState, IncidentFilter, ModelId, Registry};
use gatehouse_trust::profile::{Direction, ModelProfile, TopicKind};
use gatehouse_trust::score::BehaviourPenalty;
use gatehouse_types::{DeviceRef, Finding, Observation, Severity};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

pub use actions::ActionError;

use crate::revocation::RevocationSync;
use crate::trust::TrustService;

/// Points a finding takes off the device's score when new, by severity (before the
/// finding's confidence scales them and the half-life decays them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeverityPenalties {
    /// `info` findings.
    pub info: f64,
    /// `low` findings.
    pub low: f64,
    /// `medium` findings.
    pub medium: f64,
    /// `high` findings.
    pub high: f64,
    /// `critical` findings.
    pub critical: f64,
}

impl Default for SeverityPenalties {
    fn default() -> Self {
        Self {
            info: 0.0,
            low: 5.0,
            medium: 15.0,
            high: 40.0,
            critical: 70.0,
        }
    }
}

impl SeverityPenalties {
    /// The penalty of a finding of this severity.
    pub fn of(&self, s: Severity) -> f64 {
        match s {
            Severity::Info => self.info,
            Severity::Low => self.low,
            Severity::Medium => self.medium,
            Severity::High => self.high,
            Severity::Critical => self.critical,
        }
    }
}

/// How detection and response run.
#[derive(Debug, Clone)]
pub struct DetectionSettings {
    /// The detectors, their thresholds and which are on.
    pub detect: DetectConfig,
    /// The response playbooks and webhooks.
    pub playbooks: Playbooks,
    /// Observations queued between the broker and the engine; beyond it they are dropped
    /// (counted), never waited for.
    pub queue: usize,
    /// Score penalties of findings.
    pub penalties: SeverityPenalties,
    /// Findings stored per incident (the rest are counted).
    pub max_findings_per_incident: u32,
    /// How often the time-driven detectors run.
    pub tick: Duration,
    /// Addresses a playbook never bans (the platform's own host, the operators' network):
    /// a ban of one is recorded as failed, with the reason.
    pub never_ban: Vec<AddrRange>,
    /// What the operator's static policy grants (`policy.subscribe`, `[[policy.device]]`):
    /// a subscription it covers is the operator's decision, never probing.
    pub grants: Grants,
}

/// An address range, `addr/prefix` (a bare address is the whole length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrRange {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl std::str::FromStr for AddrRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or addr/prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix must be 0 to {max}"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

impl std::fmt::Display for AddrRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl AddrRange {
    /// Whether `ip` lies in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (net, host, bits): (u128, u128, u32) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(h)) => (u32::from(n).into(), u32::from(h).into(), 32),
            (IpAddr::V6(n), IpAddr::V6(h)) => (u128::from(n), u128::from(h), 128),
            _ => return false,
        };
        let keep = u32::from(self.prefix);
        if keep == 0 {
            return true;
        }
        let shift = bits - keep;
        (net >> shift) == (host >> shift)
    }

    /// Loopback, never banned by default: a gateway's own host tools and health checks.
    pub fn loopback() -> Vec<Self> {
        vec![
            Self {
                addr: std::net::Ipv4Addr::LOCALHOST.into(),
                prefix: 8,
            },
            Self {
                addr: std::net::Ipv6Addr::LOCALHOST.into(),
                prefix: 128,
            },
        ]
    }
}

impl Default for DetectionSettings {
    fn default() -> Self {
        Self {
            detect: DetectConfig::default(),
            playbooks: Playbooks::defaults(),
            queue: 65_536,
            penalties: SeverityPenalties::default(),
            max_findings_per_incident: 100,
            tick: Duration::from_secs(1),
            never_ban: AddrRange::loopback(),
            grants: Grants::default(),
        }
    }
}

/// Labels of the findings counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    /// The finding's kind.
    pub kind: String,
    /// Its severity.
    pub severity: String,
}

/// Labels of the actions counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// The action's kind.
    pub action: String,
    /// done, failed, pending_approval, skipped.
    pub outcome: String,
}

/// Detection and response metrics.
#[derive(Debug, Clone, Default)]
pub struct DetectionMetrics {
    /// Observations the engine processed.
    pub observations: Counter,
    /// Findings, by kind and severity.
    pub findings: Family<FindingLabels, Counter>,
    /// Findings dropped because the responder was behind.
    pub findings_dropped: Counter,
    /// Actions, by kind and outcome.
    pub actions: Family<ActionLabels, Counter>,
    /// Webhook deliveries that failed after their retries.
    pub webhook_failures: Counter,
}

impl DetectionMetrics {
    /// Registers the metrics under `gatehouse_detect_*` and `gatehouse_respond_*`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "gatehouse_detect_observations",
            "Observations processed by the detection engine",
            self.observations.clone(),
        );
        registry.register(
            "gatehouse_detect_findings",
            "Findings, by kind and severity",
            self.findings.clone(),
        );
        registry.register(
            "gatehouse_detect_findings_dropped",
            "Findings dropped because the responder was behind",
            self.findings_dropped.clone(),
        );
        registry.register(
            "gatehouse_respond_actions",
            "Response actions, by kind and outcome",
            self.actions.clone(),
        );
        registry.register(
            "gatehouse_respond_webhook_failures",
            "Webhook notifications that failed after their retries",
            self.webhook_failures.clone(),
        );
    }

    pub fn action(&self, action: &str, outcome: &str) {
        self.actions
            .get_or_create(&ActionLabels {
                action: action.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

/// See the module docs.
pub struct DetectionService {
    registry: Arc<dyn Registry>,
    broker: Broker,
    trust: Option<Arc<TrustService>>,
    revocations: Arc<RevocationSync>,
    settings: DetectionSettings,
    metrics: DetectionMetrics,
    /// A model profile changed: the engine reloads the profiles it has.
    profiles_stale: AtomicBool,
    /// When timed actions were last checked for expiry.
    expiry_checked: Mutex<std::time::Instant>,
    http: actions::Notifier,
}

impl std::fmt::Debug for DetectionService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DetectionService").finish_non_exhaustive()
    }
}

/// Findings handed from the engine's thread to the responder.
type Batch = Vec<Finding>;

// === impl DetectionService ===

impl DetectionService {
    /// Subscribes to the broker's tap, starts the engine's thread and the responder task,
    /// and puts the bans recorded in the registry in force. Call inside a Tokio runtime.
    pub fn start(
        registry: Arc<dyn Registry>,
        broker: Broker,
        trust: Option<Arc<TrustService>>,
        revocations: Arc<RevocationSync>,
        settings: DetectionSettings,
        metrics: DetectionMetrics,
    ) -> std::io::Result<Arc<Self>> {
        let this = Arc::new(Self {
            registry,
            broker,
            trust,
            revocations,
            settings,
            metrics,
            expiry_checked: Mutex::new(std::time::Instant::now()),
            profiles_stale: AtomicBool::new(false),
            http: actions::Notifier,
        });
        this.restore_bans();
        this.restore_throttles();
        let observations = this.broker.tap().subscribe(this.settings.queue);
        let (feed_tx, feed_rx) = std::sync::mpsc::sync_channel(64);
        let (tx, rx) = mpsc::channel::<Batch>(1024);
        let engine_side = Arc::clone(&this);
        std::thread::Builder::new()
            .name("gatehouse-detect".into())
            .spawn(move || engine_side.run_engine(feed_rx, tx))?;
        tokio::spawn(Self::forward(observations, feed_tx));
        let responder = Arc::clone(&this);
        tokio::spawn(async move { responder.run_responder(rx).await });
        Ok(this)
    }

    /// The settings in force.
    pub fn settings(&self) -> &DetectionSettings {
        &self.settings
    }

    /// The metrics.
    pub fn metrics(&self) -> &DetectionMetrics {
        &self.metrics
    }

    /// The throttles in force go back into the broker after a restart, for what is left of
    /// each: like bans, they are a sanction the broker enforces beside the verdict, and a
    /// restart must not lift them. (Quarantines and pins are the trust service's, and come
    /// back with the facts.)
    fn restore_throttles(&self) {
        let now = time::OffsetDateTime::now_utc();
        let filter = ActionFilter {
            state: Some(ActionState::Done),
            kind: Some("throttle".to_owned()),
            expires_after: Some(now),
            limit: IncidentFilter::MAX_LIMIT,
            ..ActionFilter::default()
        };
        match self.registry.list_actions(&filter) {
            Ok(actions) => {
                if actions.len() >= IncidentFilter::MAX_LIMIT {
                    warn!(
                        restored = actions.len(),
                        "more throttles are in force than are restored at once; the newest may be missing"
                    );
                }
                for a in actions {
                    let (Some(device), Some(until)) = (&a.device, a.expires_at) else {
                        continue;
                    };
                    let Some(rate) = a.params.get("rate").and_then(serde_json::Value::as_f64)
                    else {
                        warn!(action = %a.id, "a stored throttle has no rate: not restored");
                        continue;
                    };
                    let left = (until - now).max(time::Duration::ZERO);
                    self.broker.throttle(
                        device,
                        rate,
                        Duration::from_secs_f64(left.as_seconds_f64()),
                    );
                }
            }
            Err(e) => warn!(error = %e, "reading the throttles in force failed: none restored"),
        }
    }

    /// The bans recorded in the registry go back into the broker (after a restart).
    fn restore_bans(&self) {
        match self.registry.list_bans(time::OffsetDateTime::now_utc()) {
            Ok(bans) => {
                let now = time::OffsetDateTime::now_utc();
                for b in bans {
                    let left = (b.until - now).max(time::Duration::ZERO);
                    let left = Duration::from_secs_f64(left.as_seconds_f64());
                    self.broker.ban(b.addr, left, &b.reason);
                }
            }
            Err(e) => warn!(error = %e, "reading the bans failed: none restored"),
        }
    }

    /// Moves observations from the tap's channel to the engine's thread in batches, so
    /// the engine can wait for either an observation or its next tick. When the engine is
    /// behind, this waits, the tap's channel fills, and the broker drops (and counts)
    /// observations: it never waits itself.
    async fn forward(
        mut rx: mpsc::Receiver<Observation>,
        feed: std::sync::mpsc::SyncSender<Vec<Observation>>,
    ) {
        loop {
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut batch = Vec::with_capacity(64);
            batch.push(first);
            while batch.len() < 1024 {
                match rx.try_recv() {
                    Ok(o) => batch.push(o),
                    Err(_) => break,
                }
            }
            let mut pending = Some(batch);
            while let Some(b) = pending.take() {
                match feed.try_send(b) {
                    Ok(()) => {}
                    Err(std::sync::mpsc::TrySendError::Full(b)) => {
                        pending = Some(b);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return,
                }
            }
        }
    }

    /// The engine's loop, on its own thread: observations in, findings out. Time-driven
    /// detectors run every `tick` of wall time, with or without traffic.
    fn run_engine(
        &self,
        feed: std::sync::mpsc::Receiver<Vec<Observation>>,
        tx: mpsc::Sender<Batch>,
    ) {
        let mut engine = Engine::new(self.settings.detect.clone());
        engine.set_grants(&self.settings.grants);
        // Behind the live gate, what it allowed a device without a profile is the policy's.
        engine.set_gate_grants(true);
        let mut models = ModelBook::default();
        let mut out: Vec<Finding> = Vec::new();
        let mut next_tick = std::time::Instant::now() + self.settings.tick;
        loop {
            let wait = next_tick.saturating_duration_since(std::time::Instant::now());
            match feed.recv_timeout(wait) {
                Ok(batch) => {
                    if self.profiles_stale.swap(false, Ordering::AcqRel) {
                        models.reload_profiles(&*self.registry, &mut engine);
                    }
                    for o in &batch {
                        if let Some(id) = identity_of(o) {
                            models.learn(&*self.registry, &mut engine, &id);
                        }
                        engine.observe(o, &mut out);
                    }
                    self.metrics.observations.inc_by(batch.len() as u64);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if std::time::Instant::now() >= next_tick {
                next_tick = std::time::Instant::now() + self.settings.tick;
                engine.tick(SystemTime::now(), &mut out);
            }
            if !out.is_empty() {
                for f in &out {
                    self.metrics
                        .findings
                        .get_or_create(&FindingLabels {
                            kind: f.kind.clone(),
                            severity: f.severity.as_str().to_owned(),
                        })
                        .inc();
                }
                let batch = std::mem::take(&mut out);
                match tx.try_send(batch) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(b)) => {
                        self.metrics.findings_dropped.inc_by(b.len() as u64);
                        warn!(dropped = b.len(), "responder behind: findings dropped");
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        }
    }

    async fn run_responder(self: Arc<Self>, mut rx: mpsc::Receiver<Batch>) {
        while let Some(mut batch) = rx.recv().await {
            // Take whatever else is waiting: one registry transaction for all of it.
            while let Ok(more) = rx.try_recv() {
                batch.extend(more);
                if batch.len() >= 1024 {
                    break;
                }
            }
            let this = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || this.respond(&batch)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "responding to findings failed"),
                Err(e) => warn!(error = %e, "responder task failed"),
            }
        }
    }

    /// Records a batch of findings, lowers the trust of the devices they name, and runs
    /// the playbooks they match. Blocking.
    pub fn respond(self: &Arc<Self>, batch: &[Finding]) -> Result<(), ActionError> {
        if batch.is_empty() {
            return Ok(());
        }
        let recorded = self
            .registry
            .record_findings(
                batch,
                time::OffsetDateTime::now_utc(),
                self.settings.max_findings_per_incident,
            )
            .map_err(|e| ActionError::Store(e.to_string()))?;
        // Behaviour penalties, one re-assessment per device.
        let mut per_device: HashMap<DeviceRef, Vec<BehaviourPenalty>> = HashMap::new();
        for f in batch {
            let Some(d) = &f.device else { continue };
            let penalty = self.settings.penalties.of(f.severity) * f64::from(f.confidence);
            if penalty <= 0.0 {
                continue;
            }
            per_device
                .entry(d.clone())
                .or_default()
                .push(BehaviourPenalty {
                    name: f.kind.clone(),
                    penalty,
                    at: f.at,
                    evidence: f.summary.clone(),
                });
        }
        if let Some(trust) = &self.trust {
            for (d, penalties) in per_device {
                match trust.record_behaviour(&d, penalties, "detection") {
                    Ok(v) => debug!(device = %d, tier = %v.tier(), "trust lowered by findings"),
                    // Not registered (a hand-issued certificate): nothing to lower.
                    Err(crate::trust::TrustError::NoDevice(_)) => {}
                    Err(e) => warn!(device = %d, error = %e, "recording behaviour failed"),
                }
            }
        }
        // Playbooks.
        for (f, r) in batch.iter().zip(&recorded) {
            let tier = f
                .device
                .as_ref()
                .and_then(|d| self.trust.as_ref()?.verdict_of(d))
                .map(|v| v.tier());
            let plans = self
                .settings
                .playbooks
                .plan(f, tier, r.findings_in_incident);
            for plan in plans {
                self.carry_out(f, r.incident_id, &plan);
            }
            if r.new_incident {
                info!(
                    incident = %r.incident_id,
                    kind = %f.kind,
                    severity = %f.severity,
                    device = ?f.device.as_ref().map(ToString::to_string),
                    peer = ?f.peer,
                    "incident opened"
                );
            }
        }
        Ok(())
    }
}

/// The identity an observation carries, if any.
fn identity_of(o: &Observation) -> Option<DeviceRef> {
    match o {
        Observation::Connect(c) => Some(DeviceRef::from(&*c.identity)),
        Observation::Subscribe(s) => Some(DeviceRef::from(&*s.identity)),
        Observation::Publish(p) => Some(DeviceRef::from(&*p.identity)),
        Observation::Disconnect { identity, .. } => Some(DeviceRef::from(&**identity)),
        Observation::AuthFailure(a) => a.identity.as_deref().map(DeviceRef::from),
        _ => None,
    }
}

/// Which model each device is, and which models' profiles the engine has: looked up in
/// the registry once per device and once per model, on the engine's thread.
#[derive(Default)]
struct ModelBook {
    known: HashSet<DeviceRef>,
    profiles: HashSet<ModelId>,
}

/// Devices remembered before the book starts over (a bound on memory, not a cache size
/// that matters: forgetting only costs a registry read).
const MODEL_BOOK_MAX: usize = 1_000_000;

impl ModelBook {
    /// Reads again the profile of every model the engine has (one changed).
    fn reload_profiles(&mut self, registry: &dyn Registry, engine: &mut Engine) {
        for model in &self.profiles {
            load_profile(registry, engine, model);
        }
    }

    fn learn(&mut self, registry: &dyn Registry, engine: &mut Engine, d: &DeviceRef) {
        if self.known.contains(d) {
            return;
        }
        if self.known.len() >= MODEL_BOOK_MAX {
            self.known.clear();
        }
        self.known.insert(d.clone());
        let device = match registry.get_device(d) {
            Ok(Some(device)) => device,
            Ok(None) => return,
            Err(e) => {
                warn!(device = %d, error = %e, "reading the device's model failed");
                return;
            }
        };
        let model = device.model.clone();
        if !self.profiles.contains(&model) {
            self.profiles.insert(model.clone());
            load_profile(registry, engine, &model);
        }
        engine.set_model(d, Some(model.as_str()));
    }
}

/// Gives the engine the model's newest stored profile, if it has one that parses.
fn load_profile(registry: &dyn Registry, engine: &mut Engine, model: &ModelId) {
    match registry.latest_model_profile(model) {
        Ok(Some(stored)) => match ModelProfile::parse(&stored.toml) {
            Ok(p) => engine.set_profile(profile_view(model, &p)),
            Err(e) => warn!(model = %model, error = %e, "stored profile does not parse"),
        },
        Ok(None) => {}
        Err(e) => warn!(model = %model, error = %e, "reading the model profile failed"),
    }
}

/// What detection needs of a model profile.
pub fn profile_view(model: &ModelId, p: &ModelProfile) -> ProfileView {
    let mut view = ProfileView {
        model: model.to_string(),
        publish: Vec::new(),
        subscribe: Vec::new(),
        commands: Vec::new(),
        fields: Vec::new(),
        max_rate_per_sec: None,
    };
    let mut rate = 0.0;
    let mut all_rated = true;
    for rule in p.topics() {
        if rule.kind == TopicKind::Command {
            view.commands.push(rule.pattern.clone());
        }
        match rule.direction {
            Direction::Publish => {
                view.publish.push(rule.pattern.clone());
                match &rule.rate {
                    Some(r) => rate += r.per_second() + f64::from(r.burst) / 60.0,
                    None => all_rated = false,
                }
                for f in &rule.fields {
                    view.fields.push(FieldSpec {
                        topic: rule.pattern.clone(),
                        name: f.name.clone(),
                        min: f.min,
                        max: f.max,
                        max_step: f.max_step,
                        max_repeats: f.max_repeats,
                    });
                }
            }
            Direction::Subscribe => view.subscribe.push(rule.pattern.clone()),
        }
    }
    if all_rated && !view.publish.is_empty() {
        view.max_rate_per_sec = Some(rate);
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_ranges_contain_what_they_should() {
        let r: AddrRange = "127.0.0.0/8".parse().unwrap();
        assert!(r.contains("127.0.0.2".parse().unwrap()));
        assert!(r.contains("::ffff:127.1.2.3".parse().unwrap()));
        assert!(!r.contains("128.0.0.1".parse().unwrap()));
        assert!(!r.contains("::1".parse().unwrap()));
        let one: AddrRange = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let v6: AddrRange = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        let all: AddrRange = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<AddrRange>().is_err());
        assert!("ten".parse::<AddrRange>().is_err());
        assert_eq!(r.to_string(), "127.0.0.0/8");
    }

    #[test]
    fn penalties_follow_severity() {
        let p = SeverityPenalties::default();
        assert!(p.of(Severity::Critical) > p.of(Severity::High));
        assert!(p.of(Severity::High) > p.of(Severity::Medium));
        assert_eq!(p.of(Severity::Info), 0.0);
    }
}
