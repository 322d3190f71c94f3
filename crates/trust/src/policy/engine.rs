//! The policy set: parsed, named by `@id`, validated against the schema, swapped whole.

use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::mpsc::{self, SyncSender, TrySendError};

use cedar_policy::{Authorizer, PolicyId, PolicySet, Schema, ValidationMode, Validator};

use super::limits::{self, PolicyLimits};

/// Why a schema or a policy set was refused. The problems are listed one per entry, each
/// naming the policy it is about where there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The schema text is not a valid Cedar schema.
    #[error("invalid policy schema: {}", .0.join("; "))]
    Schema(Vec<String>),
    /// The policy text does not parse.
    #[error("policy set refused, it does not parse:\n{}", list(.0))]
    Parse(Vec<String>),
    /// The policies parse but do not validate against the schema (an unknown attribute,
    /// a type error, an action applied to the wrong resource...).
    #[error("policy set refused, it does not match the schema:\n{}", list(.0))]
    Invalid(Vec<String>),
    /// Two policies carry the same `@id`, or an `@id` is not usable as a policy id.
    #[error("policy set refused, policy ids clash:\n{}", list(.0))]
    Ids(Vec<String>),
    /// The text holds templates: verdicts evaluate static policies only, and a template
    /// that is never linked would silently do nothing.
    #[error("policy set refused, templates are not supported: {}", .0.join(", "))]
    Templates(Vec<String>),
    /// The text is larger or nests deeper than [`PolicyLimits`] allow; it was not parsed.
    #[error("policy set refused before parsing: {0}")]
    Limit(String),
    /// Too many policy sets are waiting to be checked; try again.
    #[error("policy set not checked: the policy checker is busy, try again")]
    Busy,
}

fn list(problems: &[String]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The Cedar schema of Gatehouse's requests (principal `Device`, resources `Topic` and
/// `Broker`, actions `connect`, `publish`, `subscribe`), in Cedar's schema syntax.
pub const SCHEMA: &str = include_str!("gatehouse.cedarschema");

/// Gatehouse's default policy set: trusted devices get their profile; restricted devices
/// its telemetry topics only; quarantined devices only the update and health topics;
/// blocked devices nothing.
pub const DEFAULT_POLICIES: &str = include_str!("default.cedar");

// === impl PolicySchema ===

/// A parsed Cedar schema that policy sets are validated against.
#[derive(Debug, Clone)]
pub struct PolicySchema(pub(crate) Schema);

impl PolicySchema {
    /// Parses a schema in Cedar's schema syntax. It must declare what [`SCHEMA`] declares:
    /// verdict compilation builds entities of those types.
    pub fn from_cedarschema(text: &str) -> Result<Self, PolicyError> {
        Schema::from_cedarschema_str(text)
            .map(|(schema, _warnings)| Self(schema))
            .map_err(|e| PolicyError::Schema(vec![e.to_string()]))
    }

    /// Gatehouse's schema, [`SCHEMA`].
    pub fn gatehouse() -> Self {
        // The embedded schema is checked by the tests; it always parses.
        #[allow(clippy::expect_used)]
        Self::from_cedarschema(SCHEMA).expect("the embedded schema parses")
    }
}

impl Default for PolicySchema {
    fn default() -> Self {
        Self::gatehouse()
    }
}

// === impl PolicyEngine ===

/// The policy set in force and the schema it was validated against. A new set replaces the
/// old one only once it has parsed and validated; a refused set leaves the old one in force.
#[derive(Debug, Clone)]
pub struct PolicyEngine {
    pub(crate) schema: Schema,
    pub(crate) policies: PolicySet,
    pub(crate) authorizer: Authorizer,
    source: String,
    generation: u64,
    device_independent: bool,
    limits: PolicyLimits,
}

impl PolicyEngine {
    /// An engine with no policies: it denies everything until a set is loaded.
    pub fn new(schema: PolicySchema) -> Self {
        Self {
            schema: schema.0,
            policies: PolicySet::new(),
            authorizer: Authorizer::new(),
            source: String::new(),
            generation: 0,
            device_independent: true,
            limits: PolicyLimits::default(),
        }
    }

    /// The same engine, refusing texts beyond `limits` from now on.
    pub fn with_limits(mut self, limits: PolicyLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The size and depth limits policy texts are checked against.
    pub fn limits(&self) -> PolicyLimits {
        self.limits
    }

    /// Gatehouse's schema with the default policy set loaded.
    pub fn with_defaults() -> Self {
        let mut engine = Self::new(PolicySchema::gatehouse());
        // The default set is validated by the tests; loading it cannot fail.
        #[allow(clippy::expect_used)]
        engine
            .load(DEFAULT_POLICIES)
            .expect("the default policy set validates");
        engine
    }

    /// Replaces the policy set with `text`, once it parses and validates against the
    /// schema. On error the set in force stays.
    pub fn load(&mut self, text: &str) -> Result<(), PolicyError> {
        let policies = self.check(text)?;
        self.device_independent = policies.policies().all(is_device_independent);
        self.policies = policies;
        self.source = text.to_owned();
        self.generation += 1;
        Ok(())
    }

    /// Adds the policies in `text` to the set in force (the defaults, say), once the
    /// combined set parses and validates. On error the set in force stays.
    pub fn add(&mut self, text: &str) -> Result<(), PolicyError> {
        let combined = format!("{}\n{text}", self.source);
        self.load(&combined)
    }

    /// The text of the set in force.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// How many sets have been loaded: bumps on every change, so verdicts can say which
    /// policy set they were compiled under.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether no policy in force can tell two devices of the same class apart: none names
    /// a device or topic entity, nor reads `principal.device` or `resource.name`. Then the
    /// decisions taken for one device hold for every device with the same attributes
    /// (tenant, model, tier, score, tags, firmware, assurance) and profile, and verdict
    /// compilation shares them (see [`super::CompileCache`]).
    pub fn is_device_independent(&self) -> bool {
        self.device_independent
    }

    /// The ids of the policies in force, in no particular order.
    pub fn policy_ids(&self) -> Vec<String> {
        self.policies
            .policies()
            .map(|p| p.id().to_string())
            .collect()
    }

    /// Checks `text` against the limits, then parses and validates it on the policy
    /// checker's thread (see [`on_checker_thread`]).
    fn check(&self, text: &str) -> Result<PolicySet, PolicyError> {
        limits::check(text, &self.limits).map_err(|e| PolicyError::Limit(e.to_string()))?;
        let schema = self.schema.clone();
        let text = text.to_owned();
        on_checker_thread(move || parse_and_validate(&schema, &text))?
    }
}

/// How many policy sets may wait for the checker thread before more are refused as busy.
const CHECKER_QUEUE: usize = 16;

/// The checker thread's stack: far more than a text within the limits needs, so that even
/// a gap in the depth estimate cannot overflow it.
const CHECKER_STACK: usize = 64 * 1024 * 1024;

type CheckJob = Box<dyn FnOnce() + Send>;

/// Runs `job` on the one thread that parses policy text, with a large stack of its own,
/// and waits for its answer. The queue in front of it is bounded: past it, `Busy`.
fn on_checker_thread<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PolicyError> {
    static CHECKER: OnceLock<Option<SyncSender<CheckJob>>> = OnceLock::new();
    let sender = CHECKER.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel::<CheckJob>(CHECKER_QUEUE);
        std::thread::Builder::new()
            .name("gatehouse-policy-check".into())
            .stack_size(CHECKER_STACK)
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    // A panic in the parser fails that one check (its answer channel
                    // closes), not the thread.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .ok()
            .map(|_| tx)
    });
    let Some(sender) = sender else {
        // No thread could be started: check on the caller's, within the depth limit.
        return Ok(job());
    };
    let (answer_tx, answer_rx) = mpsc::sync_channel(1);
    let boxed: CheckJob = Box::new(move || {
        let _ = answer_tx.send(job());
    });
    match sender.try_send(boxed) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => return Err(PolicyError::Busy),
        Err(TrySendError::Disconnected(_)) => {
            return Err(PolicyError::Parse(vec![
                "the policy checker thread is gone".to_owned(),
            ]));
        }
    }
    answer_rx
        .recv()
        .map_err(|_| PolicyError::Parse(vec!["the policy checker failed on this text".to_owned()]))
}

/// Parses `text`, names each policy by its `@id` (or `policyN` by position when it has
/// none) and validates the set in strict mode against `schema`.
fn parse_and_validate(schema: &Schema, text: &str) -> Result<PolicySet, PolicyError> {
    let parsed = PolicySet::from_str(text)
        .map_err(|errs| PolicyError::Parse(errs.iter().map(|e| e.to_string()).collect()))?;
    let templates: Vec<String> = parsed.templates().map(|t| t.id().to_string()).collect();
    if !templates.is_empty() {
        return Err(PolicyError::Templates(templates));
    }
    // `from_str` numbers policies in text order as `policy0`, `policy1`...; keep that
    // order so that unnamed policies keep their position as their name.
    let mut policies: Vec<_> = parsed.policies().cloned().collect();
    policies.sort_by_key(|p| {
        p.id()
            .to_string()
            .strip_prefix("policy")
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(usize::MAX)
    });
    let mut named = PolicySet::new();
    let mut clashes = Vec::new();
    for policy in policies {
        let policy = match policy.annotation("id") {
            Some(id) => policy.new_id(PolicyId::new(id)),
            None => policy,
        };
        let id = policy.id().to_string();
        if let Err(e) = named.add(policy) {
            clashes.push(format!("policy `{id}`: {e}"));
        }
    }
    if !clashes.is_empty() {
        return Err(PolicyError::Ids(clashes));
    }
    let validation = Validator::new(schema.clone()).validate(&named, ValidationMode::Strict);
    if !validation.validation_passed() {
        return Err(PolicyError::Invalid(
            validation
                .validation_errors()
                .map(|e| e.to_string())
                .collect(),
        ));
    }
    Ok(named)
}

/// Whether a policy's decisions can only depend on a device's class, not on which device
/// it is. Conservative: any mention of a `Device` or `Topic` entity id, or of the
/// per-device attributes `device` and `name`, counts as device-specific.
fn is_device_independent(policy: &cedar_policy::Policy) -> bool {
    let text = policy.to_string();
    ![
        "Device::",
        "Topic::",
        ".device",
        ".name",
        "\"device\"",
        "\"name\"",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}
