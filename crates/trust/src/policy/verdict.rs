//! Verdict compilation (Cedar, once per verdict) and the hot-path checks (no Cedar).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use cedar_policy::{
    Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, Response,
    RestrictedExpression,
};
use gatehouse_types::{DeviceRef, Score, Tier, TopicFilter, matches};
use parking_lot::RwLock;
use serde::Serialize;

use super::topic::{bind, covers, intersects};
use super::{Action, DeviceAttrs, PolicyEngine, ProfileTopics, TokenBucket, TopicKind};
use super::{TopicRule, rate_factor};

/// A platform topic that every device's verdict is evaluated for, besides its profile's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservedTopic {
    /// The pattern, with `{device}`.
    pub pattern: &'static str,
    /// The action it is evaluated for.
    pub action: Action,
}

/// The reserved topics: the device reports posture and health, and receives updates (and
/// reports their progress) under `$gatehouse/{device}/ota/`.
pub const RESERVED: &[ReservedTopic] = &[
    ReservedTopic {
        pattern: "$gatehouse/{device}/posture",
        action: Action::Publish,
    },
    ReservedTopic {
        pattern: "$gatehouse/{device}/health",
        action: Action::Publish,
    },
    ReservedTopic {
        pattern: "$gatehouse/{device}/ota/#",
        action: Action::Publish,
    },
    ReservedTopic {
        pattern: "$gatehouse/{device}/ota/#",
        action: Action::Subscribe,
    },
];

/// Most decisions a verdict caches per action; when full, the cache starts again.
pub const CACHE_ENTRIES: usize = 32;
/// Longest topic or filter, in bytes, whose decision is cached.
pub const CACHE_KEY_MAX: usize = 128;

/// A topic pattern a verdict allows, with its rate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AllowedTopic {
    /// Position in the verdict's [`Verdict::publish`] or [`Verdict::subscribe`] list: a
    /// session can keep one [`TokenBucket`] per position.
    pub index: usize,
    /// The pattern with `{device}` and `{tenant}` bound: a topic filter.
    pub pattern: String,
    /// The pattern as the profile (or the reserved list) wrote it.
    pub template: String,
    /// What the topic carries.
    pub kind: TopicKind,
    /// Messages per second allowed, scaled by the tier; `None` for no per-topic limit.
    pub rate_per_sec: Option<f64>,
    /// Messages allowed at once, scaled by the tier.
    pub burst: Option<u32>,
}

impl AllowedTopic {
    /// A full token bucket for this topic's rate, or `None` when it has no rate.
    pub fn bucket(&self, now: Instant) -> Option<TokenBucket> {
        let rate = self.rate_per_sec?;
        Some(TokenBucket::new(rate, self.burst.unwrap_or(1), now))
    }
}

/// What one device may do, compiled from the policies, its attributes and its profile.
/// Immutable; a change compiles a new verdict with a higher epoch.
#[derive(Debug, Serialize)]
pub struct Verdict {
    device: DeviceRef,
    epoch: u64,
    policy_generation: u64,
    tier: Tier,
    score: Score,
    connect: bool,
    publish: Vec<AllowedTopic>,
    subscribe: Vec<AllowedTopic>,
    denied_publish: Vec<String>,
    denied_subscribe: Vec<String>,
    explanation: Vec<String>,
    #[serde(skip)]
    cache: DecisionCache,
}

impl Clone for Verdict {
    /// A copy with an empty decision cache.
    fn clone(&self) -> Self {
        Self {
            device: self.device.clone(),
            epoch: self.epoch,
            policy_generation: self.policy_generation,
            tier: self.tier,
            score: self.score,
            connect: self.connect,
            publish: self.publish.clone(),
            subscribe: self.subscribe.clone(),
            denied_publish: self.denied_publish.clone(),
            denied_subscribe: self.denied_subscribe.clone(),
            explanation: self.explanation.clone(),
            cache: DecisionCache::default(),
        }
    }
}

// === impl Verdict ===

impl Verdict {
    /// The device this verdict is for.
    pub fn device(&self) -> &DeviceRef {
        &self.device
    }

    /// The device's verdict epoch, as given to [`compile`].
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The [`PolicyEngine::generation`] it was compiled under.
    pub fn policy_generation(&self) -> u64 {
        self.policy_generation
    }

    /// The tier it was compiled for.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// The score it was compiled for.
    pub fn score(&self) -> Score {
        self.score
    }

    /// Whether the device may open a session (and keep the one it has).
    pub fn may_connect(&self) -> bool {
        self.connect
    }

    /// The patterns the device may publish to, in profile order, then reserved topics.
    pub fn publish(&self) -> &[AllowedTopic] {
        &self.publish
    }

    /// The patterns the device may subscribe within.
    pub fn subscribe(&self) -> &[AllowedTopic] {
        &self.subscribe
    }

    /// The publish patterns the policies refused: they win over allowed patterns.
    pub fn denied_publish(&self) -> &[String] {
        &self.denied_publish
    }

    /// The subscribe patterns the policies refused: a filter overlapping one is refused.
    pub fn denied_subscribe(&self) -> &[String] {
        &self.denied_subscribe
    }

    /// Why: one line for the tier, one per decision, naming the policies that decided.
    pub fn explanation(&self) -> &[String] {
        &self.explanation
    }

    /// May the device publish to `topic` (a valid topic name)? The allowed pattern that
    /// matches it first, unless a refused pattern matches it too. Cached.
    pub fn may_publish(&self, topic: &str) -> Option<&AllowedTopic> {
        let cacheable = topic.len() <= CACHE_KEY_MAX;
        if cacheable && let Some(hit) = self.cache.publish.read().get(topic) {
            return hit.map(|i| &self.publish[i as usize]);
        }
        let decided = self.publish_index(topic);
        if cacheable {
            let value = decided.and_then(|i| u32::try_from(i).ok());
            DecisionCache::insert(&self.cache.publish, topic, value);
        }
        decided.map(|i| &self.publish[i])
    }

    /// [`Self::may_publish`] without the cache: for tests and measurements.
    pub fn may_publish_uncached(&self, topic: &str) -> Option<&AllowedTopic> {
        self.publish_index(topic).map(|i| &self.publish[i])
    }

    /// May the device hold a subscription to `filter`? Only if an allowed pattern covers
    /// every topic the filter matches and no refused pattern overlaps it. Cached.
    pub fn may_subscribe(&self, filter: &TopicFilter) -> bool {
        let f = filter.match_filter();
        let cacheable = f.len() <= CACHE_KEY_MAX;
        if cacheable && let Some(hit) = self.cache.subscribe.read().get(f) {
            return *hit;
        }
        let decided = self.subscribe_allowed(f);
        if cacheable {
            DecisionCache::insert(&self.cache.subscribe, f, decided);
        }
        decided
    }

    /// [`Self::may_subscribe`] without the cache: for tests and measurements.
    pub fn may_subscribe_uncached(&self, filter: &TopicFilter) -> bool {
        self.subscribe_allowed(filter.match_filter())
    }

    fn publish_index(&self, topic: &str) -> Option<usize> {
        if !self.connect || self.denied_publish.iter().any(|p| matches(p, topic)) {
            return None;
        }
        self.publish.iter().position(|a| matches(&a.pattern, topic))
    }

    fn subscribe_allowed(&self, filter: &str) -> bool {
        self.connect
            && self.subscribe.iter().any(|a| covers(&a.pattern, filter))
            && !self.denied_subscribe.iter().any(|p| intersects(p, filter))
    }
}

// === impl DecisionCache ===

/// Decisions already taken by one verdict, per action and topic (or filter). Bounded;
/// reads take a shared lock that is never held across anything but a hash lookup.
#[derive(Debug, Default)]
struct DecisionCache {
    publish: RwLock<HashMap<Box<str>, Option<u32>>>,
    subscribe: RwLock<HashMap<Box<str>, bool>>,
}

impl DecisionCache {
    fn insert<V>(map: &RwLock<HashMap<Box<str>, V>>, key: &str, value: V) {
        let mut map = map.write();
        if map.len() >= CACHE_ENTRIES {
            map.clear();
        }
        map.insert(key.into(), value);
    }
}

// === compile ===

/// A resource to evaluate: one profile rule or reserved topic, bound to the device.
struct Resource<'a> {
    action: Action,
    bound: String,
    template: &'a str,
    kind: TopicKind,
    in_profile: bool,
    rate_per_sec: Option<f64>,
    burst: Option<u32>,
}

fn uid(ty: &str, id: &str) -> Result<EntityUid, String> {
    let ty = EntityTypeName::from_str(ty).map_err(|e| e.to_string())?;
    Ok(EntityUid::from_type_name_and_id(ty, EntityId::new(id)))
}

/// Compiles a device's verdict: evaluates the policies in force for `connect`, for each of
/// the profile's rules under the action it is listed for, and for each [`RESERVED`] topic.
///
/// Fails closed: a rule that cannot be bound, or a topic whose evaluation errs, is refused
/// and the explanation says why; if the request itself cannot be built, nothing is allowed.
pub fn compile(
    device: &DeviceAttrs,
    topics: &ProfileTopics,
    engine: &PolicyEngine,
    epoch: u64,
) -> Verdict {
    compile_inner(device, topics, engine, epoch, None)
}

/// [`compile`], sharing Cedar's decisions between devices of one class through `cache`
/// (see [`CompileCache`]). `profile_key` names the profile `topics` came from (say, the
/// model and profile version); it must differ between profiles whose topics differ. The
/// verdict is the one [`compile`] gives.
pub fn compile_shared(
    device: &DeviceAttrs,
    topics: &ProfileTopics,
    profile_key: &str,
    engine: &PolicyEngine,
    epoch: u64,
    cache: &CompileCache,
) -> Verdict {
    compile_inner(device, topics, engine, epoch, Some((cache, profile_key)))
}

fn compile_inner(
    device: &DeviceAttrs,
    topics: &ProfileTopics,
    engine: &PolicyEngine,
    epoch: u64,
    share: Option<(&CompileCache, &str)>,
) -> Verdict {
    let mut verdict = Verdict {
        device: device.device.clone(),
        epoch,
        policy_generation: engine.generation(),
        tier: device.tier,
        score: device.score,
        connect: false,
        publish: Vec::new(),
        subscribe: Vec::new(),
        denied_publish: Vec::new(),
        denied_subscribe: Vec::new(),
        explanation: vec![format!(
            "tier {}, score {}, policy set {}",
            device.tier,
            device.score,
            engine.generation()
        )],
        cache: DecisionCache::default(),
    };
    if let Err(e) = evaluate(device, topics, engine, share, &mut verdict) {
        verdict.connect = false;
        verdict.publish.clear();
        verdict.subscribe.clear();
        verdict.explanation.push(format!(
            "nothing allowed: the policies could not be evaluated: {e}"
        ));
    }
    verdict
}

fn resources<'a>(
    device: &DeviceAttrs,
    topics: &'a ProfileTopics,
    explanation: &mut Vec<String>,
) -> Vec<Resource<'a>> {
    let factor = rate_factor(device.tier);
    let profile = topics
        .publish
        .iter()
        .map(|r| (Action::Publish, r))
        .chain(topics.subscribe.iter().map(|r| (Action::Subscribe, r)));
    let mut out = Vec::new();
    for (action, rule) in profile {
        let TopicRule {
            pattern,
            kind,
            rate_per_sec,
            burst,
        } = rule;
        let refuse = |why: &str| {
            format!(
                "{} {pattern} ({}): refused, {why}",
                action.as_str(),
                kind.as_str()
            )
        };
        if *kind == TopicKind::Reserved || pattern.starts_with('$') {
            explanation.push(refuse("a profile cannot claim `$` or reserved topics"));
            continue;
        }
        let bound = match bind(pattern, &device.device) {
            Ok(b) => b,
            Err(e) => {
                explanation.push(refuse(&e.to_string()));
                continue;
            }
        };
        let rate = rate_per_sec.map(|r| r * factor);
        let burst = rate_per_sec.map(|r| {
            let full = burst.unwrap_or_else(|| (r.ceil() as u32).max(1));
            ((f64::from(full) * factor).ceil() as u32).max(1)
        });
        out.push(Resource {
            action,
            bound,
            template: pattern,
            kind: *kind,
            in_profile: true,
            rate_per_sec: rate,
            burst,
        });
    }
    for reserved in RESERVED {
        match bind(reserved.pattern, &device.device) {
            Ok(bound) => out.push(Resource {
                action: reserved.action,
                bound,
                template: reserved.pattern,
                kind: TopicKind::Reserved,
                in_profile: false,
                rate_per_sec: None,
                burst: None,
            }),
            Err(e) => explanation.push(format!("{}: refused, {e}", reserved.pattern)),
        }
    }
    out
}

fn evaluate(
    device: &DeviceAttrs,
    topics: &ProfileTopics,
    engine: &PolicyEngine,
    share: Option<(&CompileCache, &str)>,
    verdict: &mut Verdict,
) -> Result<(), String> {
    let before = verdict.explanation.len();
    let resources = resources(device, topics, &mut verdict.explanation);
    // One Topic entity per bound pattern; a pattern listed again with other attributes is
    // ambiguous, and refused.
    let mut seen: HashMap<&str, (TopicKind, bool)> = HashMap::new();
    let mut evaluable: Vec<&Resource<'_>> = Vec::with_capacity(resources.len());
    let mut entity_of: Vec<bool> = Vec::with_capacity(resources.len());
    for r in &resources {
        match seen.get(r.bound.as_str()) {
            Some(&(kind, in_profile)) if kind != r.kind || in_profile != r.in_profile => {
                verdict.explanation.push(format!(
                    "{} {} ({}): refused, the same pattern is listed as {}",
                    r.action.as_str(),
                    r.bound,
                    r.kind.as_str(),
                    kind.as_str()
                ));
                continue;
            }
            Some(_) => entity_of.push(false),
            None => {
                seen.insert(&r.bound, (r.kind, r.in_profile));
                entity_of.push(true);
            }
        }
        evaluable.push(r);
    }

    // Decisions already taken for this device's class, when the policies allow sharing
    // them and binding refused nothing (a refusal can depend on the device id).
    let clean = verdict.explanation.len() == before;
    let share = share
        .filter(|_| clean && engine.is_device_independent())
        .map(|(cache, profile_key)| (cache, CompileCache::key(device, profile_key, engine)));
    if let Some((cache, key)) = &share
        && let Some(decisions) = cache.get(key)
        && (!decisions.connect.allow || decisions.topics.len() == evaluable.len())
    {
        assemble(&decisions, &evaluable, verdict);
        return Ok(());
    }

    let schema = Some(&engine.schema);
    let tenant = uid("Tenant", device.device.tenant.as_str())?;
    let principal = uid("Device", &device.device.to_string())?;
    let broker = uid("Broker", "gatehouse")?;
    let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
    let attrs = HashMap::from([
        ("tenant".to_owned(), s(device.device.tenant.as_str())),
        ("device".to_owned(), s(device.device.device.as_str())),
        ("model".to_owned(), s(&device.model)),
        ("tier".to_owned(), s(device.tier.as_str())),
        (
            "score".to_owned(),
            RestrictedExpression::new_long(i64::from(device.score.get())),
        ),
        (
            "tags".to_owned(),
            RestrictedExpression::new_set(device.tags.iter().map(|t| s(t))),
        ),
        ("firmware".to_owned(), s(&device.firmware)),
        ("assurance".to_owned(), s(&device.assurance)),
    ]);
    let mut entities = vec![
        Entity::new_no_attrs(tenant.clone(), HashSet::new()),
        Entity::new(principal.clone(), attrs, HashSet::from([tenant]))
            .map_err(|e| e.to_string())?,
        Entity::new_no_attrs(broker.clone(), HashSet::new()),
    ];
    for (r, _) in evaluable.iter().zip(&entity_of).filter(|(_, new)| **new) {
        let topic_attrs = HashMap::from([
            ("name".to_owned(), s(&r.bound)),
            ("pattern".to_owned(), s(r.template)),
            ("kind".to_owned(), s(r.kind.as_str())),
            (
                "in_profile".to_owned(),
                RestrictedExpression::new_bool(r.in_profile),
            ),
        ]);
        entities.push(
            Entity::new(uid("Topic", &r.bound)?, topic_attrs, HashSet::new())
                .map_err(|e| e.to_string())?,
        );
    }
    let entities = Entities::from_entities(entities, schema).map_err(|e| e.to_string())?;

    let decide = |action: Action, resource: &EntityUid| -> Result<Decided, String> {
        let request = Request::new(
            principal.clone(),
            uid("Action", action.as_str())?,
            resource.clone(),
            Context::empty(),
            schema,
        )
        .map_err(|e| e.to_string())?;
        Ok(Decided::from(&engine.authorizer.is_authorized(
            &request,
            &engine.policies,
            &entities,
        )))
    };

    let connect = decide(Action::Connect, &broker)?;
    let mut topics = Vec::with_capacity(evaluable.len());
    if connect.allow {
        for r in &evaluable {
            topics.push(decide(r.action, &uid("Topic", &r.bound)?)?);
        }
    }
    let decisions = ClassDecisions { connect, topics };
    assemble(&decisions, &evaluable, verdict);
    if let Some((cache, key)) = share {
        cache.insert(key, decisions);
    }
    Ok(())
}

/// Turns the decisions taken for `resources` (in order) into the verdict's lists and
/// explanation.
fn assemble(decisions: &ClassDecisions, resources: &[&Resource<'_>], verdict: &mut Verdict) {
    verdict.connect = decisions.connect.allow;
    verdict
        .explanation
        .push(describe("connect", None, &decisions.connect));
    if !verdict.connect {
        return;
    }
    for (r, decided) in resources.iter().zip(&decisions.topics) {
        let mut line = describe(
            &format!("{} {}", r.action.as_str(), r.bound),
            Some(r.kind),
            decided,
        );
        let (allowed, denied) = match r.action {
            Action::Publish => (&mut verdict.publish, &mut verdict.denied_publish),
            Action::Subscribe => (&mut verdict.subscribe, &mut verdict.denied_subscribe),
            Action::Connect => continue,
        };
        if decided.allow {
            if let Some(rate) = r.rate_per_sec {
                let _ = write!(line, "; rate {rate}/s, burst {}", r.burst.unwrap_or(1));
            }
            allowed.push(AllowedTopic {
                index: allowed.len(),
                pattern: r.bound.clone(),
                template: r.template.to_owned(),
                kind: r.kind,
                rate_per_sec: r.rate_per_sec,
                burst: r.burst,
            });
        } else {
            denied.push(r.bound.clone());
        }
        verdict.explanation.push(line);
    }
}

// === impl CompileCache ===

/// One Cedar decision, as much of it as a verdict keeps.
#[derive(Debug, Clone)]
struct Decided {
    allow: bool,
    /// The ids of the policies that decided, sorted.
    reasons: Vec<String>,
    errors: Vec<String>,
}

impl From<&Response> for Decided {
    fn from(response: &Response) -> Self {
        let mut reasons: Vec<String> = response
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect();
        reasons.sort();
        Self {
            allow: response.decision() == Decision::Allow,
            reasons,
            errors: response
                .diagnostics()
                .errors()
                .map(ToString::to_string)
                .collect(),
        }
    }
}

/// The decisions for one class of devices: `connect`, then one per resource in order.
#[derive(Debug)]
struct ClassDecisions {
    connect: Decided,
    topics: Vec<Decided>,
}

/// Most device classes a [`CompileCache`] keeps; when full, it starts again.
pub const CLASS_CACHE_ENTRIES: usize = 4096;

/// Cedar decisions shared between devices of one class, so that compiling the verdicts of
/// a fleet evaluates the policies once per class instead of once per device.
///
/// A class is everything the policies can see of a device but its id: tenant, model,
/// tier, score, tags, firmware and assurance, the profile (named by the caller's
/// `profile_key`, which must change whenever the profile's topics do) and the policy
/// generation. It is used only when the policies in force cannot tell two devices of one
/// class apart ([`PolicyEngine::is_device_independent`]); otherwise every device is
/// evaluated on its own. The verdicts are the same either way.
#[derive(Debug, Default)]
pub struct CompileCache {
    classes: RwLock<HashMap<String, Arc<ClassDecisions>>>,
}

impl CompileCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many classes it holds.
    pub fn len(&self) -> usize {
        self.classes.read().len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.classes.read().is_empty()
    }

    fn get(&self, key: &str) -> Option<Arc<ClassDecisions>> {
        self.classes.read().get(key).cloned()
    }

    fn insert(&self, key: String, decisions: ClassDecisions) {
        let mut classes = self.classes.write();
        if classes.len() >= CLASS_CACHE_ENTRIES {
            classes.clear();
        }
        classes.insert(key, Arc::new(decisions));
    }

    fn key(device: &DeviceAttrs, profile_key: &str, engine: &PolicyEngine) -> String {
        // Fields are separated by a byte no id, tag or version can hold.
        let mut key = String::with_capacity(128);
        let _ = write!(
            key,
            "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
            engine.generation(),
            device.device.tenant,
            device.model,
            device.tier.as_str(),
            device.score.get(),
            device.firmware,
            device.assurance,
            profile_key,
        );
        for tag in &device.tags {
            key.push('\u{1e}');
            key.push_str(tag);
        }
        key
    }
}

/// One explanation line: what was asked, the decision and the policies that made it.
fn describe(what: &str, kind: Option<TopicKind>, decided: &Decided) -> String {
    let mut line = what.to_owned();
    if let Some(kind) = kind {
        let _ = write!(line, " ({})", kind.as_str());
    }
    let ids: Vec<String> = decided.reasons.iter().map(|id| format!("`{id}`")).collect();
    match (decided.allow, ids.is_empty()) {
        (true, _) => {
            let _ = write!(line, ": allowed by {}", ids.join(", "));
        }
        (false, false) => {
            let _ = write!(line, ": refused by {}", ids.join(", "));
        }
        (false, true) => line.push_str(": refused, no policy allows it"),
    }
    if !decided.errors.is_empty() {
        let _ = write!(line, " (policy errors: {})", decided.errors.join("; "));
    }
    line
}
