//! Playbooks: which findings get which response, written in TOML.
//!
//! Parsed in two steps: the file's text into raw serde structs that refuse unknown fields,
//! then into the validated [`Playbooks`], the only form other code sees. Every error names
//! the playbook (or webhook) and the field. Matching a finding is the pure function
//! [`Playbooks::plan`].
//!
//! ```toml
//! [[playbook]]
//! name = "quarantine-brute-force"
//! mode = "auto"                 # auto | approve | notify
//! [playbook.when]
//! kinds = ["credential_brute_force"]
//! min_severity = "high"
//! [[playbook.action]]
//! type = "quarantine"
//! for = "1h"
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gatehouse_store::{ActionRecord, ActionState, IncidentId};
use gatehouse_types::{Finding, Severity, Tier};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::notify::{Secret, Webhook};

/// Largest playbook file accepted, in bytes.
pub const MAX_TEXT_BYTES: usize = 1024 * 1024;
/// Most playbooks in one file.
pub const MAX_PLAYBOOKS: usize = 256;
/// Most actions in one playbook.
pub const MAX_ACTIONS: usize = 16;
/// Most finding kinds one playbook lists.
pub const MAX_KINDS: usize = 64;
/// Most webhooks in one file.
pub const MAX_WEBHOOKS: usize = 64;
/// Longest playbook or webhook name, and longest finding kind, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest revocation reason, in bytes.
pub const MAX_REASON_BYTES: usize = 512;
/// Longest `throttle`/`quarantine` duration.
pub const MAX_HOLD: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest `ban`.
pub const MAX_BAN: Duration = Duration::from_secs(365 * 24 * 3600);
/// Highest throttle rate, messages per second.
pub const MAX_RATE: f64 = 100_000.0;

/// `min_confidence` when a playbook does not say.
pub const DEFAULT_MIN_CONFIDENCE: f32 = 0.5;
/// `min_severity` when a playbook does not say.
pub const DEFAULT_MIN_SEVERITY: Severity = Severity::Medium;
/// A throttle's rate when it does not say, messages per second.
pub const DEFAULT_THROTTLE_RATE: f64 = 1.0;
/// A throttle's duration when it does not say.
pub const DEFAULT_THROTTLE_FOR: Duration = Duration::from_secs(10 * 60);
/// A ban's duration when it does not say.
pub const DEFAULT_BAN_FOR: Duration = Duration::from_secs(15 * 60);

/// The shipped default playbooks, commented (`playbooks.default.toml`).
pub const DEFAULT_TOML: &str = include_str!("../playbooks.default.toml");

/// Why a playbook file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlaybookError {
    /// The text is not TOML of the expected shape (an unknown field, a wrong type).
    #[error("playbooks: {0}")]
    Syntax(String),
    /// The text is larger than [`MAX_TEXT_BYTES`].
    #[error("playbooks: the file is {len} bytes; at most {max} are allowed")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value is out of range or refers to something undefined.
    #[error("{item}: {field}: {problem}")]
    Invalid {
        /// `playbook "name"`, `webhook "name"`, or `playbooks` for the file as a whole.
        item: String,
        /// The field, e.g. `action[0].for`, `when.min_severity`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

// === raw form ===

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    playbook: Vec<RawPlaybook>,
    #[serde(default)]
    webhook: Vec<RawWebhook>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawPlaybook {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    #[serde(default)]
    when: RawWhen,
    #[serde(default)]
    action: Vec<RawAction>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawWhen {
    #[serde(skip_serializing_if = "Option::is_none")]
    kinds: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_severity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_severity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_confidence: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tiers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_findings: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    has_device: Option<bool>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    #[serde(rename = "type")]
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(rename = "for")]
    for_: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    name: String,
    url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_file: Option<PathBuf>,
}

// === validated form ===

/// How a playbook's actions are carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// At once.
    Auto,
    /// Recorded `pending_approval`; carried out when an operator approves.
    Approve,
    /// Not carried out: reported only (in notifications and the log). `notify` actions
    /// are delivered.
    Notify,
}

impl Mode {
    /// The name used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Approve => "approve",
            Self::Notify => "notify",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One response.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Limits the device's publishes to `rate` messages per second for `for_`.
    Throttle {
        /// Messages per second.
        rate: f64,
        /// How long.
        for_: Duration,
    },
    /// Narrows the device to its update and health topics, for `for_` or until released.
    Quarantine {
        /// How long; `None` until an operator releases it.
        for_: Option<Duration>,
    },
    /// Revokes the device's certificates (it must enroll again once reinstated).
    Revoke {
        /// Why, recorded with the revocation.
        reason: String,
    },
    /// Ends the device's open sessions.
    Disconnect,
    /// Refuses connections from the finding's source address for `for_`.
    Ban {
        /// How long.
        for_: Duration,
    },
    /// Sends the finding to a webhook.
    Notify {
        /// The webhook's name.
        webhook: String,
    },
}

// === impl Action ===

impl Action {
    /// The action's name: `throttle`, `quarantine`, `revoke`, `disconnect`, `ban`,
    /// `notify` (also the `kind` it is recorded under).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Throttle { .. } => "throttle",
            Self::Quarantine { .. } => "quarantine",
            Self::Revoke { .. } => "revoke",
            Self::Disconnect => "disconnect",
            Self::Ban { .. } => "ban",
            Self::Notify { .. } => "notify",
        }
    }

    /// Whether an operator can undo it: quarantine (release), throttle (unthrottle),
    /// ban (unban), revoke (reinstate: the device may enroll again; the revoked
    /// certificates stay revoked). A disconnect and a notification are done once.
    pub fn reversible(&self) -> bool {
        self.reverse_kind().is_some()
    }

    /// The name of the action that undoes it.
    pub fn reverse_kind(&self) -> Option<&'static str> {
        Self::reverse_of(self.kind())
    }

    /// The reversal of a recorded action kind (`StoredAction::kind`): `quarantine` →
    /// `release`, `throttle` → `unthrottle`, `ban` → `unban`, `revoke` → `reinstate`;
    /// `None` for a kind that cannot be undone or is not an action.
    pub fn reverse_of(kind: &str) -> Option<&'static str> {
        match kind {
            "throttle" => Some("unthrottle"),
            "quarantine" => Some("release"),
            "revoke" => Some("reinstate"),
            "ban" => Some("unban"),
            _ => None,
        }
    }

    /// Whether it acts on a device (and so needs a finding with one).
    pub fn needs_device(&self) -> bool {
        matches!(
            self,
            Self::Throttle { .. }
                | Self::Quarantine { .. }
                | Self::Revoke { .. }
                | Self::Disconnect
        )
    }

    /// How long its effect lasts, when it ends by itself.
    pub fn duration(&self) -> Option<Duration> {
        match self {
            Self::Throttle { for_, .. } | Self::Ban { for_ } => Some(*for_),
            Self::Quarantine { for_ } => *for_,
            Self::Revoke { .. } | Self::Disconnect | Self::Notify { .. } => None,
        }
    }

    /// Its parameters as JSON, as recorded with the action: `{"rate": 1.0, "for": "10m"}`,
    /// `{"for": null}`, `{"reason": "..."}`, `{}`, `{"webhook": "soc"}`. Durations are
    /// whole seconds under `for_secs` as well as humane text under `for`.
    pub fn params(&self) -> serde_json::Value {
        fn dur(d: Duration) -> (String, u64) {
            (humantime::format_duration(d).to_string(), d.as_secs())
        }
        match self {
            Self::Throttle { rate, for_ } => {
                let (text, secs) = dur(*for_);
                serde_json::json!({ "rate": rate, "for": text, "for_secs": secs })
            }
            Self::Quarantine { for_: Some(d) } => {
                let (text, secs) = dur(*d);
                serde_json::json!({ "for": text, "for_secs": secs })
            }
            Self::Quarantine { for_: None } => serde_json::json!({ "for": null }),
            Self::Revoke { reason } => serde_json::json!({ "reason": reason }),
            Self::Disconnect => serde_json::json!({}),
            Self::Ban { for_ } => {
                let (text, secs) = dur(*for_);
                serde_json::json!({ "for": text, "for_secs": secs })
            }
            Self::Notify { webhook } => serde_json::json!({ "webhook": webhook }),
        }
    }
}

/// A notify action as written: one webhook, or every webhook defined.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Do(Action),
    NotifyAll,
}

/// What a playbook matches. Absent conditions match everything.
#[derive(Debug, Clone, PartialEq)]
pub struct When {
    /// Finding kinds; empty matches any kind.
    pub kinds: BTreeSet<String>,
    /// Lowest severity.
    pub min_severity: Severity,
    /// Highest severity (`None`: no ceiling).
    pub max_severity: Option<Severity>,
    /// Lowest confidence, 0.0 to 1.0.
    pub min_confidence: f32,
    /// The device's current tier must be one of these; empty matches any tier, and
    /// findings with no known tier. Non-empty never matches a finding without a tier.
    pub tiers: BTreeSet<Tier>,
    /// Findings the incident must hold (this one included) before the playbook acts.
    pub min_findings: u32,
    /// `Some(true)`: only findings naming a device; `Some(false)`: only findings naming
    /// no device (address only); `None`: both.
    pub has_device: Option<bool>,
}

// === impl When ===

impl When {
    /// Whether a finding, with its device's tier and its incident's count, matches.
    pub fn matches(
        &self,
        finding: &Finding,
        tier: Option<Tier>,
        findings_in_incident: u32,
    ) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&finding.kind))
            && finding.severity >= self.min_severity
            && self.max_severity.is_none_or(|max| finding.severity <= max)
            // A NaN confidence fails every comparison, so it never matches.
            && finding.confidence >= self.min_confidence
            && (self.tiers.is_empty() || tier.is_some_and(|t| self.tiers.contains(&t)))
            && findings_in_incident >= self.min_findings
            && self
                .has_device
                .is_none_or(|want| want == finding.device.is_some())
    }
}

/// One validated playbook.
#[derive(Debug, Clone, PartialEq)]
pub struct Playbook {
    name: String,
    mode: Mode,
    when: When,
    steps: Vec<Step>,
}

// === impl Playbook ===

impl Playbook {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How its actions are carried out.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// What it matches.
    pub fn when(&self) -> &When {
        &self.when
    }

    /// Its actions as written (a `notify` without a webhook is listed with an empty
    /// webhook name: it goes to every webhook).
    pub fn actions(&self) -> Vec<Action> {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Do(a) => a.clone(),
                Step::NotifyAll => Action::Notify {
                    webhook: String::new(),
                },
            })
            .collect()
    }
}

/// An action a playbook planned for a finding.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedAction {
    /// The playbook's name.
    pub playbook: String,
    /// The playbook's mode.
    pub mode: Mode,
    /// What to do.
    pub action: Action,
}

// === impl PlannedAction ===

impl PlannedAction {
    /// Whether to carry it out now: `auto` actions, and `notify` actions in every mode
    /// (a notification tells the operator about an approval or an advisory).
    pub fn runs_now(&self) -> bool {
        self.mode == Mode::Auto || matches!(self.action, Action::Notify { .. })
    }

    /// Whether it waits for an operator (`approve` mode, not a notification).
    pub fn needs_approval(&self) -> bool {
        self.mode == Mode::Approve && !matches!(self.action, Action::Notify { .. })
    }

    /// Whether it is only reported (`notify` mode, not a notification).
    pub fn is_advisory(&self) -> bool {
        self.mode == Mode::Notify && !matches!(self.action, Action::Notify { .. })
    }

    /// The record to store for it (`Registry::record_action`), by `system`: the finding's
    /// device for an action on a device, its address for a ban (and both for the rest, as
    /// known), the action's kind and params, this playbook, and `expires_at` = `now` + the
    /// action's duration for a timed action. `state` is what happened: `pending_approval`
    /// when it [`needs_approval`](Self::needs_approval), else `done` or `failed`.
    pub fn to_record(
        &self,
        finding: &Finding,
        incident: Option<IncidentId>,
        state: ActionState,
        now: OffsetDateTime,
    ) -> ActionRecord {
        let (device, peer) = match &self.action {
            Action::Ban { .. } => (None, finding.peer),
            a if a.needs_device() => (finding.device.clone(), None),
            _ => (finding.device.clone(), finding.peer),
        };
        let expires_at = self.action.duration().and_then(|d| {
            time::Duration::try_from(d)
                .ok()
                .and_then(|d| now.checked_add(d))
        });
        ActionRecord {
            incident,
            device,
            peer,
            kind: self.action.kind().to_owned(),
            params: self.action.params(),
            state,
            playbook: Some(self.playbook.clone()),
            by: "system".to_owned(),
            expires_at,
        }
    }
}

/// A validated set of playbooks and the webhooks they notify.
#[derive(Debug, Clone, PartialEq)]
pub struct Playbooks {
    playbooks: Vec<Playbook>,
    webhooks: Vec<Webhook>,
}

// === impl Playbooks ===

impl Playbooks {
    /// Parses and validates playbooks. A webhook's `secret_file` is read here, relative to
    /// the working directory (use [`Playbooks::load`] for paths relative to the file).
    pub fn parse(text: &str) -> Result<Self, PlaybookError> {
        Self::parse_in(text, None)
    }

    /// Reads, parses and validates a playbook file; relative `secret_file` paths are
    /// taken from the file's folder.
    pub fn load(path: &Path) -> Result<Self, PlaybookError> {
        let text = std::fs::read_to_string(path).map_err(|e| PlaybookError::Invalid {
            item: "playbooks".to_owned(),
            field: "file".to_owned(),
            problem: format!("cannot read {}: {e}", path.display()),
        })?;
        Self::parse_in(&text, path.parent())
    }

    /// The shipped defaults ([`DEFAULT_TOML`]).
    pub fn defaults() -> Self {
        // The shipped file is checked by a unit test; should it ever fail to parse, no
        // playbook is better than a panic at start-up.
        Self::parse(DEFAULT_TOML).unwrap_or_else(|_| Self::empty())
    }

    /// No playbooks, no webhooks: every finding is recorded, nothing is done.
    pub fn empty() -> Self {
        Self {
            playbooks: Vec::new(),
            webhooks: Vec::new(),
        }
    }

    /// The playbooks, in file order.
    pub fn playbooks(&self) -> &[Playbook] {
        &self.playbooks
    }

    /// The webhooks, in file order.
    pub fn webhooks(&self) -> &[Webhook] {
        &self.webhooks
    }

    /// A webhook by name.
    pub fn webhook(&self, name: &str) -> Option<&Webhook> {
        self.webhooks.iter().find(|w| w.name == name)
    }

    /// The actions every matching playbook plans for `finding`, in file order.
    /// `tier` is the device's current tier (if known), `findings_in_incident` the count of
    /// its incident, this finding included. Actions on a device are left out when the
    /// finding names none, a ban when it names no address; a `notify` without a webhook
    /// becomes one notification per webhook defined.
    pub fn plan(
        &self,
        finding: &Finding,
        tier: Option<Tier>,
        findings_in_incident: u32,
    ) -> Vec<PlannedAction> {
        let mut out = Vec::new();
        for p in &self.playbooks {
            if !p.when.matches(finding, tier, findings_in_incident) {
                continue;
            }
            let planned = |action: Action| PlannedAction {
                playbook: p.name.clone(),
                mode: p.mode,
                action,
            };
            for step in &p.steps {
                match step {
                    Step::Do(a) => {
                        let applies = if a.needs_device() {
                            finding.device.is_some()
                        } else if matches!(a, Action::Ban { .. }) {
                            finding.peer.is_some()
                        } else {
                            true
                        };
                        if applies {
                            out.push(planned(a.clone()));
                        }
                    }
                    Step::NotifyAll => {
                        for w in &self.webhooks {
                            out.push(planned(Action::Notify {
                                webhook: w.name.clone(),
                            }));
                        }
                    }
                }
            }
        }
        out
    }

    /// The playbooks as TOML with every default written out, which
    /// [`Playbooks::parse`] reads back to an equal value. **It holds the webhooks'
    /// secrets** (a `secret_file` is written inline): for a resolved copy kept as safely as
    /// the original, never for a log or an API answer.
    pub fn to_toml_with_secrets(&self) -> Result<String, PlaybookError> {
        let dur = |d: Duration| humantime::format_duration(d).to_string();
        let raw = RawFile {
            playbook: self
                .playbooks
                .iter()
                .map(|p| RawPlaybook {
                    name: p.name.clone(),
                    mode: Some(p.mode.as_str().to_owned()),
                    when: RawWhen {
                        kinds: (!p.when.kinds.is_empty())
                            .then(|| p.when.kinds.iter().cloned().collect()),
                        min_severity: Some(p.when.min_severity.as_str().to_owned()),
                        max_severity: p.when.max_severity.map(|s| s.as_str().to_owned()),
                        min_confidence: Some(f64::from(p.when.min_confidence)),
                        tiers: (!p.when.tiers.is_empty())
                            .then(|| p.when.tiers.iter().map(|t| t.as_str().to_owned()).collect()),
                        min_findings: Some(p.when.min_findings),
                        has_device: p.when.has_device,
                    },
                    action: p
                        .steps
                        .iter()
                        .map(|step| {
                            let mut a = RawAction {
                                kind: "notify".to_owned(),
                                rate: None,
                                for_: None,
                                reason: None,
                                webhook: None,
                            };
                            if let Step::Do(action) = step {
                                a.kind = action.kind().to_owned();
                                match action {
                                    Action::Throttle { rate, for_ } => {
                                        a.rate = Some(*rate);
                                        a.for_ = Some(dur(*for_));
                                    }
                                    Action::Quarantine { for_ } => a.for_ = for_.map(dur),
                                    Action::Revoke { reason } => a.reason = Some(reason.clone()),
                                    Action::Disconnect => {}
                                    Action::Ban { for_ } => a.for_ = Some(dur(*for_)),
                                    Action::Notify { webhook } => a.webhook = Some(webhook.clone()),
                                }
                            }
                            a
                        })
                        .collect(),
                })
                .collect(),
            webhook: self
                .webhooks
                .iter()
                .map(|w| RawWebhook {
                    name: w.name.clone(),
                    url: w.url.clone(),
                    secret: Some(w.secret.expose().to_owned()),
                    secret_file: None,
                    timeout: Some(dur(w.timeout)),
                    retries: Some(w.retries),
                    ca_file: w.ca_file.clone(),
                })
                .collect(),
        };
        toml::to_string(&raw).map_err(|e| PlaybookError::Syntax(e.to_string()))
    }

    fn parse_in(text: &str, base: Option<&Path>) -> Result<Self, PlaybookError> {
        if text.len() > MAX_TEXT_BYTES {
            return Err(PlaybookError::TooLarge {
                len: text.len(),
                max: MAX_TEXT_BYTES,
            });
        }
        let raw: RawFile =
            toml::from_str(text).map_err(|e| PlaybookError::Syntax(e.message().to_owned()))?;
        let file = |field: &str, problem: String| PlaybookError::Invalid {
            item: "playbooks".to_owned(),
            field: field.to_owned(),
            problem,
        };
        if raw.playbook.len() > MAX_PLAYBOOKS {
            return Err(file(
                "playbook",
                format!(
                    "{} playbooks; at most {MAX_PLAYBOOKS} are allowed",
                    raw.playbook.len()
                ),
            ));
        }
        if raw.webhook.len() > MAX_WEBHOOKS {
            return Err(file(
                "webhook",
                format!(
                    "{} webhooks; at most {MAX_WEBHOOKS} are allowed",
                    raw.webhook.len()
                ),
            ));
        }
        let mut webhooks: Vec<Webhook> = Vec::with_capacity(raw.webhook.len());
        for (i, w) in raw.webhook.into_iter().enumerate() {
            let w = webhook(w, i, base)?;
            if webhooks.iter().any(|o| o.name == w.name) {
                return Err(PlaybookError::Invalid {
                    item: format!("webhook {:?}", w.name),
                    field: "name".to_owned(),
                    problem: "defined twice".to_owned(),
                });
            }
            webhooks.push(w);
        }
        let mut playbooks: Vec<Playbook> = Vec::with_capacity(raw.playbook.len());
        for (i, p) in raw.playbook.into_iter().enumerate() {
            let p = playbook(p, i, &webhooks)?;
            if playbooks.iter().any(|o| o.name == p.name) {
                return Err(PlaybookError::Invalid {
                    item: format!("playbook {:?}", p.name),
                    field: "name".to_owned(),
                    problem: "defined twice".to_owned(),
                });
            }
            playbooks.push(p);
        }
        Ok(Self {
            playbooks,
            webhooks,
        })
    }
}

fn check_name(item: &dyn Fn() -> String, field: &str, name: &str) -> Result<(), PlaybookError> {
    let problem = if name.is_empty() {
        Some("is empty".to_owned())
    } else if name.len() > MAX_NAME_BYTES {
        Some(format!("is longer than {MAX_NAME_BYTES} bytes"))
    } else {
        name.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .map(|c| format!("holds {c:?}; use letters, digits, '-', '_' and '.'"))
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(PlaybookError::Invalid {
            item: item(),
            field: field.to_owned(),
            problem,
        }),
    }
}

fn duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like \"15m\" or \"1h\" ({e})"))?;
    if d.is_zero() {
        return Err("must be longer than zero".to_owned());
    }
    Ok(d)
}

fn playbook(p: RawPlaybook, index: usize, webhooks: &[Webhook]) -> Result<Playbook, PlaybookError> {
    let label = if p.name.is_empty() || p.name.len() > MAX_NAME_BYTES {
        format!("playbook #{}", index + 1)
    } else {
        format!("playbook {:?}", p.name)
    };
    let item = || label.clone();
    let bad = |field: &str, problem: String| PlaybookError::Invalid {
        item: label.clone(),
        field: field.to_owned(),
        problem,
    };
    check_name(&item, "name", &p.name)?;
    let mode = match p.mode.as_deref() {
        None | Some("auto") => Mode::Auto,
        Some("approve") => Mode::Approve,
        Some("notify") => Mode::Notify,
        Some(other) => {
            return Err(bad(
                "mode",
                format!("unknown mode {other:?}: expected auto, approve or notify"),
            ));
        }
    };

    let w = p.when;
    let kinds = w.kinds.unwrap_or_default();
    if kinds.len() > MAX_KINDS {
        return Err(bad(
            "when.kinds",
            format!("{} kinds; at most {MAX_KINDS} are allowed", kinds.len()),
        ));
    }
    for k in &kinds {
        let ok = !k.is_empty()
            && k.len() <= MAX_NAME_BYTES
            && k.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            return Err(bad(
                "when.kinds",
                format!("{k:?} is not a finding kind (snake_case, 1 to {MAX_NAME_BYTES} bytes)"),
            ));
        }
    }
    let severity = |field: &str, v: Option<String>| -> Result<Option<Severity>, PlaybookError> {
        v.map(|s| s.parse::<Severity>().map_err(|e| bad(field, e.to_string())))
            .transpose()
    };
    let min_severity =
        severity("when.min_severity", w.min_severity)?.unwrap_or(DEFAULT_MIN_SEVERITY);
    let max_severity = severity("when.max_severity", w.max_severity)?;
    if max_severity.is_some_and(|max| max < min_severity) {
        return Err(bad(
            "when.max_severity",
            format!("is below min_severity ({min_severity}): nothing would match"),
        ));
    }
    let min_confidence = match w.min_confidence {
        None => DEFAULT_MIN_CONFIDENCE,
        Some(c) if (0.0..=1.0).contains(&c) => c as f32,
        Some(c) => {
            return Err(bad(
                "when.min_confidence",
                format!("{c} is outside 0.0 to 1.0"),
            ));
        }
    };
    let mut tiers = BTreeSet::new();
    for t in w.tiers.unwrap_or_default() {
        tiers.insert(
            t.parse::<Tier>()
                .map_err(|e| bad("when.tiers", e.to_string()))?,
        );
    }
    let min_findings = match w.min_findings {
        None => 1,
        Some(0) => return Err(bad("when.min_findings", "must be at least 1".to_owned())),
        Some(n) => n,
    };
    let when = When {
        kinds: kinds.into_iter().collect(),
        min_severity,
        max_severity,
        min_confidence,
        tiers,
        min_findings,
        has_device: w.has_device,
    };

    if p.action.is_empty() {
        return Err(bad(
            "action",
            "a playbook needs at least one [[playbook.action]]".to_owned(),
        ));
    }
    if p.action.len() > MAX_ACTIONS {
        return Err(bad(
            "action",
            format!(
                "{} actions; at most {MAX_ACTIONS} are allowed",
                p.action.len()
            ),
        ));
    }
    let mut steps = Vec::with_capacity(p.action.len());
    for (i, a) in p.action.into_iter().enumerate() {
        let field = |f: &str| format!("action[{i}].{f}");
        let step = action(a, &|f, problem| bad(&field(f), problem), webhooks)?;
        if when.has_device == Some(false)
            && let Step::Do(a) = &step
            && a.needs_device()
        {
            return Err(bad(
                &field("type"),
                format!(
                    "{} acts on a device, but has_device = false matches only findings without one",
                    a.kind()
                ),
            ));
        }
        steps.push(step);
    }
    Ok(Playbook {
        name: p.name,
        mode,
        when,
        steps,
    })
}

fn action(
    a: RawAction,
    bad: &dyn Fn(&str, String) -> PlaybookError,
    webhooks: &[Webhook],
) -> Result<Step, PlaybookError> {
    let kind = a.kind.as_str();
    let unused = |name: &str, present: bool| -> Result<(), PlaybookError> {
        if present {
            Err(bad(name, format!("does not apply to a {kind} action")))
        } else {
            Ok(())
        }
    };
    let for_ = |max: Duration| -> Result<Option<Duration>, PlaybookError> {
        a.for_
            .as_deref()
            .map(|t| {
                let d = duration(t).map_err(|p| bad("for", p))?;
                if d > max {
                    return Err(bad(
                        "for",
                        format!(
                            "{t:?} is longer than the limit of {}",
                            humantime::format_duration(max)
                        ),
                    ));
                }
                Ok(d)
            })
            .transpose()
    };
    let step = match kind {
        "throttle" => {
            unused("reason", a.reason.is_some())?;
            unused("webhook", a.webhook.is_some())?;
            let rate = a.rate.unwrap_or(DEFAULT_THROTTLE_RATE);
            if !(rate.is_finite() && rate > 0.0 && rate <= MAX_RATE) {
                return Err(bad(
                    "rate",
                    format!("{rate} is not a rate above 0 and at most {MAX_RATE} messages/s"),
                ));
            }
            Step::Do(Action::Throttle {
                rate,
                for_: for_(MAX_HOLD)?.unwrap_or(DEFAULT_THROTTLE_FOR),
            })
        }
        "quarantine" => {
            unused("rate", a.rate.is_some())?;
            unused("reason", a.reason.is_some())?;
            unused("webhook", a.webhook.is_some())?;
            Step::Do(Action::Quarantine {
                for_: for_(MAX_HOLD)?,
            })
        }
        "revoke" => {
            unused("rate", a.rate.is_some())?;
            unused("for", a.for_.is_some())?;
            unused("webhook", a.webhook.is_some())?;
            let reason = a.reason.unwrap_or_else(|| "automated response".to_owned());
            if reason.trim().is_empty() || reason.len() > MAX_REASON_BYTES {
                return Err(bad(
                    "reason",
                    format!("must be 1 to {MAX_REASON_BYTES} bytes of text"),
                ));
            }
            Step::Do(Action::Revoke { reason })
        }
        "disconnect" => {
            unused("rate", a.rate.is_some())?;
            unused("for", a.for_.is_some())?;
            unused("reason", a.reason.is_some())?;
            unused("webhook", a.webhook.is_some())?;
            Step::Do(Action::Disconnect)
        }
        "ban" => {
            unused("rate", a.rate.is_some())?;
            unused("reason", a.reason.is_some())?;
            unused("webhook", a.webhook.is_some())?;
            Step::Do(Action::Ban {
                for_: for_(MAX_BAN)?.unwrap_or(DEFAULT_BAN_FOR),
            })
        }
        "notify" => {
            unused("rate", a.rate.is_some())?;
            unused("for", a.for_.is_some())?;
            unused("reason", a.reason.is_some())?;
            match a.webhook {
                None => Step::NotifyAll,
                Some(name) => {
                    if !webhooks.iter().any(|w| w.name == name) {
                        return Err(bad("webhook", format!("no [[webhook]] is named {name:?}")));
                    }
                    Step::Do(Action::Notify { webhook: name })
                }
            }
        }
        other => {
            return Err(bad(
                "type",
                format!(
                    "unknown action {other:?}: expected throttle, quarantine, revoke, \
                     disconnect, ban or notify"
                ),
            ));
        }
    };
    Ok(step)
}

/// A path from the file, relative to the file's folder when it is known.
fn resolve(base: Option<&Path>, path: PathBuf) -> PathBuf {
    match base {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path,
    }
}

fn webhook(w: RawWebhook, index: usize, base: Option<&Path>) -> Result<Webhook, PlaybookError> {
    let label = if w.name.is_empty() || w.name.len() > MAX_NAME_BYTES {
        format!("webhook #{}", index + 1)
    } else {
        format!("webhook {:?}", w.name)
    };
    let item = || label.clone();
    let bad = |field: &str, problem: String| PlaybookError::Invalid {
        item: label.clone(),
        field: field.to_owned(),
        problem,
    };
    check_name(&item, "name", &w.name)?;
    crate::notify::check_url(&w.url).map_err(|p| bad("url", p))?;
    let secret = match (w.secret, w.secret_file) {
        (Some(s), None) => s,
        (None, Some(path)) => {
            let path = resolve(base, path);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                bad(
                    "secret_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            text.trim_end_matches(['\r', '\n']).to_owned()
        }
        (Some(_), Some(_)) => {
            return Err(bad(
                "secret",
                "give secret or secret_file, not both".to_owned(),
            ));
        }
        (None, None) => {
            return Err(bad(
                "secret",
                "a webhook needs a secret (or secret_file) to sign its requests".to_owned(),
            ));
        }
    };
    if secret.len() < Webhook::MIN_SECRET_BYTES {
        return Err(bad(
            "secret",
            format!(
                "is {} bytes; at least {} are needed",
                secret.len(),
                Webhook::MIN_SECRET_BYTES
            ),
        ));
    }
    let timeout = match w.timeout.as_deref() {
        None => Webhook::DEFAULT_TIMEOUT,
        Some(t) => {
            let d = duration(t).map_err(|p| bad("timeout", p))?;
            if d > Webhook::MAX_TIMEOUT {
                return Err(bad(
                    "timeout",
                    format!(
                        "{t:?} is longer than the limit of {}",
                        humantime::format_duration(Webhook::MAX_TIMEOUT)
                    ),
                ));
            }
            d
        }
    };
    let retries = match w.retries {
        None => Webhook::DEFAULT_RETRIES,
        Some(n) if n <= Webhook::MAX_RETRIES => n,
        Some(n) => {
            return Err(bad(
                "retries",
                format!("{n}; at most {} are allowed", Webhook::MAX_RETRIES),
            ));
        }
    };
    let (ca_file, ca_certs) = match w.ca_file {
        None => (None, Vec::new()),
        Some(path) => {
            let path = resolve(base, path);
            let pem = std::fs::read(&path)
                .map_err(|e| bad("ca_file", format!("cannot read {}: {e}", path.display())))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("ca_file", format!("{} is not PEM: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(bad(
                    "ca_file",
                    format!("{} holds no certificate", path.display()),
                ));
            }
            (Some(path), certs)
        }
    };
    Ok(Webhook {
        name: w.name,
        url: w.url,
        secret: Secret::new(secret),
        timeout,
        retries,
        ca_file,
        ca_certs,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use gatehouse_types::DeviceRef;
    use proptest::prelude::*;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123";

    fn finding(kind: &str, severity: Severity, confidence: f32, device: bool) -> Finding {
        Finding {
            at: SystemTime::UNIX_EPOCH,
            device: device
                .then(|| DeviceRef::new("acme".parse().unwrap(), "cam-1".parse().unwrap())),
            peer: Some("10.0.0.7".parse().unwrap()),
            kind: kind.to_owned(),
            severity,
            confidence,
            technique: None,
            summary: String::new(),
            evidence: BTreeMap::new(),
        }
    }

    fn kinds(plan: &[PlannedAction]) -> Vec<(&str, &str)> {
        plan.iter()
            .map(|p| (p.playbook.as_str(), p.action.kind()))
            .collect()
    }

    /// The error for a file made of one playbook with `body` after its name.
    fn refused(body: &str) -> PlaybookError {
        let text = format!(
            "[[webhook]]\nname = \"soc\"\nurl = \"https://soc.example/x\"\nsecret = \"{SECRET}\"\n\
             [[playbook]]\nname = \"p\"\n{body}"
        );
        match Playbooks::parse(&text) {
            Ok(p) => panic!("must be refused: {body}\n{p:?}"),
            Err(e) => e,
        }
    }

    fn invalid_field(e: &PlaybookError) -> (&str, &str) {
        match e {
            PlaybookError::Invalid { item, field, .. } => (item.as_str(), field.as_str()),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn shipped_defaults_parse() {
        let d = Playbooks::parse(DEFAULT_TOML).unwrap();
        assert_eq!(d, Playbooks::defaults());
        let names: Vec<_> = d.playbooks().iter().map(Playbook::name).collect();
        assert_eq!(
            names,
            [
                "quarantine-attacking-devices",
                "quarantine-probing-devices",
                "ban-attacking-addresses",
                "revoke-cloned-identity",
                "notify-medium-findings"
            ]
        );
        assert!(d.webhooks().is_empty());
    }

    #[test]
    fn defaults_quarantine_attacking_devices_and_ban_bare_addresses() {
        let d = Playbooks::defaults();
        for kind in [
            "credential_brute_force",
            "publish_flood",
            "connect_flood",
            "command_injection",
            "malformed_packets",
        ] {
            let plan = d.plan(&finding(kind, Severity::High, 0.9, true), None, 1);
            assert_eq!(
                kinds(&plan),
                [("quarantine-attacking-devices", "quarantine")],
                "{kind}"
            );
            assert_eq!(plan[0].mode, Mode::Auto);
            assert_eq!(
                plan[0].action,
                Action::Quarantine {
                    for_: Some(Duration::from_secs(3600))
                }
            );
            assert!(plan[0].runs_now());
        }
        // Probing topics outside the profile is quarantined even at medium severity.
        for kind in [
            "topic_scanning",
            "wildcard_harvesting",
            "exfiltration_broad_subscribe",
            "retained_poisoning",
        ] {
            for sev in [Severity::Medium, Severity::High] {
                let plan = d.plan(&finding(kind, sev, 0.6, true), None, 1);
                assert_eq!(
                    kinds(&plan),
                    [("quarantine-probing-devices", "quarantine")],
                    "{kind} {sev}"
                );
            }
            assert!(
                d.plan(&finding(kind, Severity::Medium, 0.55, true), None, 1)
                    .is_empty(),
                "below the confidence floor"
            );
        }
        // Below high: nothing but the notify-only playbook, which has no webhook to use.
        assert!(
            d.plan(
                &finding("publish_flood", Severity::Medium, 0.9, true),
                None,
                1
            )
            .is_empty()
        );
        for kind in [
            "credential_brute_force",
            "connect_flood",
            "slow_connection_dos",
        ] {
            let plan = d.plan(&finding(kind, Severity::Critical, 0.9, false), None, 1);
            assert_eq!(kinds(&plan), [("ban-attacking-addresses", "ban")], "{kind}");
            assert_eq!(
                plan[0].action,
                Action::Ban {
                    for_: Duration::from_secs(900)
                }
            );
        }
        // A device's brute force is not a ban.
        let plan = d.plan(
            &finding("slow_connection_dos", Severity::High, 0.9, true),
            None,
            1,
        );
        assert!(plan.is_empty(), "{plan:?}");
        let plan = d.plan(
            &finding("cloned_identity", Severity::High, 0.8, true),
            None,
            1,
        );
        assert_eq!(kinds(&plan), [("revoke-cloned-identity", "revoke")]);
        assert!(plan[0].needs_approval());
        assert!(!plan[0].runs_now());
    }

    #[test]
    fn defaults_notify_medium_findings_through_every_webhook_added() {
        let text = format!(
            "{DEFAULT_TOML}\n[[webhook]]\nname = \"soc\"\nurl = \"https://soc.example/hook\"\n\
             secret = \"{SECRET}\"\n[[webhook]]\nname = \"pager\"\nurl = \"http://10.0.0.1:8080/\"\n\
             secret = \"{SECRET}\"\n"
        );
        let d = Playbooks::parse(&text).unwrap();
        let plan = d.plan(&finding("beaconing", Severity::Medium, 0.6, true), None, 1);
        assert_eq!(
            plan.iter()
                .map(|p| (p.mode, p.action.clone()))
                .collect::<Vec<_>>(),
            [
                (
                    Mode::Notify,
                    Action::Notify {
                        webhook: "soc".into()
                    }
                ),
                (
                    Mode::Notify,
                    Action::Notify {
                        webhook: "pager".into()
                    }
                ),
            ]
        );
        assert!(plan.iter().all(PlannedAction::runs_now));
        // A high flood: quarantine plus both notifications, no medium notification.
        let plan = d.plan(
            &finding("publish_flood", Severity::High, 0.9, true),
            None,
            1,
        );
        assert_eq!(
            kinds(&plan),
            [
                ("quarantine-attacking-devices", "quarantine"),
                ("quarantine-attacking-devices", "notify"),
                ("quarantine-attacking-devices", "notify"),
            ]
        );
    }

    const FULL: &str = r#"
[[webhook]]
name = "soc"
url = "https://soc.example.com/gatehouse"
secret = "0123456789abcdef0123"
timeout = "2s"
retries = 1

[[playbook]]
name = "quarantine-brute-force"
mode = "auto"
[playbook.when]
kinds = ["credential_brute_force", "publish_flood", "topic_scanning"]
min_severity = "high"
min_confidence = 0.7
tiers = ["restricted", "quarantined"]
min_findings = 3
[[playbook.action]]
type = "quarantine"
for = "1h"
[[playbook.action]]
type = "throttle"
rate = 2.5
for = "10m"
[[playbook.action]]
type = "disconnect"
[[playbook.action]]
type = "notify"
webhook = "soc"

[[playbook]]
name = "revoke"
mode = "approve"
[[playbook.action]]
type = "revoke"
reason = "operator's call"
[[playbook.action]]
type = "ban"
[[playbook.action]]
type = "quarantine"
"#;

    #[test]
    fn full_example_parses_with_every_field() {
        let p = Playbooks::parse(FULL).unwrap();
        let w = p.webhook("soc").unwrap();
        assert_eq!(w.url, "https://soc.example.com/gatehouse");
        assert_eq!(w.timeout, Duration::from_secs(2));
        assert_eq!(w.retries, 1);
        assert_eq!(w.secret.expose(), SECRET);
        assert!(p.webhook("other").is_none());
        let q = &p.playbooks()[0];
        assert_eq!(q.mode(), Mode::Auto);
        assert_eq!(q.when().min_severity, Severity::High);
        assert_eq!(q.when().min_findings, 3);
        assert_eq!(
            q.when().tiers,
            [Tier::Restricted, Tier::Quarantined].into_iter().collect()
        );
        assert_eq!(
            q.actions(),
            [
                Action::Quarantine {
                    for_: Some(Duration::from_secs(3600))
                },
                Action::Throttle {
                    rate: 2.5,
                    for_: Duration::from_secs(600)
                },
                Action::Disconnect,
                Action::Notify {
                    webhook: "soc".into()
                },
            ]
        );
        // Defaults: mode auto, min_severity medium, confidence 0.5, one finding, throttle
        // and ban durations, revoke reason, quarantine until released.
        let r = &p.playbooks()[1];
        assert_eq!(r.mode(), Mode::Approve);
        assert_eq!(r.when().min_severity, DEFAULT_MIN_SEVERITY);
        assert_eq!(r.when().min_confidence, DEFAULT_MIN_CONFIDENCE);
        assert_eq!(r.when().min_findings, 1);
        assert!(r.when().kinds.is_empty() && r.when().tiers.is_empty());
        assert_eq!(
            r.actions(),
            [
                Action::Revoke {
                    reason: "operator's call".into()
                },
                Action::Ban {
                    for_: DEFAULT_BAN_FOR
                },
                Action::Quarantine { for_: None },
            ]
        );
        let t = Playbooks::parse(
            "[[playbook]]\nname = \"t\"\n[[playbook.action]]\ntype = \"throttle\"\n\
             [[playbook.action]]\ntype = \"revoke\"",
        )
        .unwrap();
        assert_eq!(
            t.playbooks()[0].actions(),
            [
                Action::Throttle {
                    rate: DEFAULT_THROTTLE_RATE,
                    for_: DEFAULT_THROTTLE_FOR
                },
                Action::Revoke {
                    reason: "automated response".into()
                },
            ]
        );
        assert_eq!(Playbooks::parse("").unwrap(), Playbooks::empty());
    }

    #[test]
    fn a_rendering_with_defaults_written_out_parses_back_equal() {
        let with_hook = format!(
            "{DEFAULT_TOML}\n[[webhook]]\nname = \"soc\"\nurl = \"https://soc.example/h\"\n\
             secret = \"{SECRET}\"\ntimeout = \"1500ms\"\n"
        );
        for text in [FULL, DEFAULT_TOML, with_hook.as_str(), ""] {
            let p = Playbooks::parse(text).unwrap();
            let rendered = p.to_toml_with_secrets().unwrap();
            assert_eq!(Playbooks::parse(&rendered).unwrap(), p, "{rendered}");
        }
        let rendered = Playbooks::parse(FULL)
            .unwrap()
            .to_toml_with_secrets()
            .unwrap();
        assert!(
            rendered.contains("min_confidence = 0.5"),
            "defaults are written out: {rendered}"
        );
    }

    #[test]
    fn planning_matches_kind_severity_confidence_tier_and_count() {
        let p = Playbooks::parse(FULL).unwrap();
        let q = |f: &Finding, tier, n| {
            p.plan(f, tier, n)
                .into_iter()
                .filter(|a| a.playbook == "quarantine-brute-force")
                .count()
        };
        let good = finding("publish_flood", Severity::High, 0.7, true);
        let r = Some(Tier::Restricted);
        assert_eq!(q(&good, r, 3), 4, "every action of the playbook");
        assert_eq!(q(&good, Some(Tier::Quarantined), 10), 4);
        // Kind.
        assert_eq!(q(&finding("beaconing", Severity::High, 0.7, true), r, 3), 0);
        // Severity: high and above.
        assert_eq!(
            q(&finding("publish_flood", Severity::Medium, 0.9, true), r, 3),
            0
        );
        assert_eq!(
            q(
                &finding("publish_flood", Severity::Critical, 0.9, true),
                r,
                3
            ),
            4
        );
        // Confidence: at least 0.7.
        assert_eq!(
            q(&finding("publish_flood", Severity::High, 0.69, true), r, 3),
            0
        );
        assert_eq!(
            q(
                &finding("publish_flood", Severity::High, f32::NAN, true),
                r,
                3
            ),
            0
        );
        // Tier: must be known and listed.
        assert_eq!(q(&good, Some(Tier::Trusted), 3), 0);
        assert_eq!(q(&good, None, 3), 0);
        // Findings in the incident.
        assert_eq!(q(&good, r, 2), 0);
        // Without a device the device actions drop out; the notification stays.
        let plan: Vec<_> = p
            .plan(&finding("publish_flood", Severity::High, 0.9, false), r, 3)
            .into_iter()
            .filter(|a| a.playbook == "quarantine-brute-force")
            .map(|a| a.action.kind())
            .collect();
        assert_eq!(plan, ["notify"]);
        // The catch-all approve playbook: medium and up, any kind; a ban needs an address.
        let mut no_peer = finding("x", Severity::Medium, 0.5, true);
        no_peer.peer = None;
        let plan = p.plan(&no_peer, None, 1);
        assert_eq!(
            kinds(&plan),
            [("revoke", "revoke"), ("revoke", "quarantine")]
        );
        assert!(plan.iter().all(PlannedAction::needs_approval));
        assert!(
            p.plan(&finding("x", Severity::Low, 1.0, true), None, 1)
                .is_empty()
        );
    }

    #[test]
    fn has_device_and_max_severity_narrow_a_playbook() {
        let p = Playbooks::parse(
            "[[playbook]]\nname = \"addr\"\n[playbook.when]\nhas_device = false\n\
             max_severity = \"high\"\n[[playbook.action]]\ntype = \"ban\"\nfor = \"1m\"\n\
             [[playbook]]\nname = \"dev\"\n[playbook.when]\nhas_device = true\n\
             [[playbook.action]]\ntype = \"disconnect\"",
        )
        .unwrap();
        let plan = p.plan(&finding("k", Severity::High, 0.9, false), None, 1);
        assert_eq!(kinds(&plan), [("addr", "ban")]);
        let plan = p.plan(&finding("k", Severity::Critical, 0.9, false), None, 1);
        assert!(plan.is_empty(), "above max_severity");
        let plan = p.plan(&finding("k", Severity::High, 0.9, true), None, 1);
        assert_eq!(kinds(&plan), [("dev", "disconnect")]);
    }

    #[test]
    fn planned_actions_become_records_with_their_subject_and_expiry() {
        let d = Playbooks::defaults();
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let f = finding("publish_flood", Severity::High, 0.9, true);
        let plan = d.plan(&f, None, 1);
        let r = plan[0].to_record(&f, Some(IncidentId(3)), ActionState::Done, now);
        assert_eq!(r.incident, Some(IncidentId(3)));
        assert_eq!((r.device.as_ref(), r.peer), (f.device.as_ref(), None));
        assert_eq!(
            (r.kind.as_str(), r.state, r.by.as_str()),
            ("quarantine", ActionState::Done, "system")
        );
        assert_eq!(r.playbook.as_deref(), Some("quarantine-attacking-devices"));
        assert_eq!(r.params["for_secs"], 3600);
        assert_eq!(r.expires_at, Some(now + time::Duration::hours(1)));

        let f = finding("connect_flood", Severity::High, 0.9, false);
        let plan = d.plan(&f, None, 1);
        let r = plan[0].to_record(&f, None, ActionState::Failed, now);
        assert_eq!((r.kind.as_str(), r.device, r.peer), ("ban", None, f.peer));
        assert_eq!(r.expires_at, Some(now + time::Duration::minutes(15)));

        let f = finding("cloned_identity", Severity::High, 0.9, true);
        let plan = d.plan(&f, None, 1);
        let r = plan[0].to_record(&f, None, ActionState::PendingApproval, now);
        assert_eq!((r.kind.as_str(), r.expires_at), ("revoke", None));
        assert_eq!(
            r.params["reason"],
            "cloned identity: one certificate in use from several addresses"
        );
    }

    #[test]
    fn actions_know_their_reversal() {
        let cases = [
            (
                Action::Throttle {
                    rate: 1.0,
                    for_: Duration::from_secs(1),
                },
                "throttle",
                Some("unthrottle"),
            ),
            (
                Action::Quarantine { for_: None },
                "quarantine",
                Some("release"),
            ),
            (
                Action::Revoke { reason: "r".into() },
                "revoke",
                Some("reinstate"),
            ),
            (Action::Disconnect, "disconnect", None),
            (
                Action::Ban {
                    for_: Duration::from_secs(1),
                },
                "ban",
                Some("unban"),
            ),
            (
                Action::Notify {
                    webhook: "w".into(),
                },
                "notify",
                None,
            ),
        ];
        for (a, kind, reverse) in cases {
            assert_eq!(a.kind(), kind);
            assert_eq!(a.reverse_kind(), reverse);
            assert_eq!(a.reversible(), reverse.is_some());
            assert_eq!(Action::reverse_of(kind), reverse);
        }
        assert_eq!(
            Action::reverse_of("release"),
            None,
            "a reversal is not reversed"
        );
        assert_eq!(
            Action::Throttle {
                rate: 2.0,
                for_: Duration::from_secs(600)
            }
            .params(),
            serde_json::json!({"rate": 2.0, "for": "10m", "for_secs": 600})
        );
        assert_eq!(
            Action::Quarantine { for_: None }.params(),
            serde_json::json!({"for": null})
        );
        assert_eq!(
            Action::Ban {
                for_: Duration::from_secs(900)
            }
            .duration(),
            Some(Duration::from_secs(900))
        );
        assert_eq!(Action::Disconnect.duration(), None);
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_syntax_errors() {
        for text in [
            "[[playbook]]\nname = \"p\"\nmood = \"auto\"",
            "[[playbook]]\nname = \"p\"\n[playbook.when]\nkind = [\"x\"]",
            "[[playbook]]\nname = \"p\"\n[[playbook.action]]\ntype = \"ban\"\nduration = \"1m\"",
            "[[playbook]]\nname = 3",
            "[[playbook]]\nname = \"p\"\n[playbook.when]\nmin_findings = -1",
            "[[webhook]]\nname = \"w\"\nurl = \"https://x\"\nsecret = \"0123456789abcdef\"\nheaders = {}",
            "[oops",
            "playbooks = []",
        ] {
            assert!(
                matches!(Playbooks::parse(text), Err(PlaybookError::Syntax(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn each_bad_value_is_refused_naming_its_playbook_and_field() {
        let action = |body: &str| refused(&format!("[[playbook.action]]\n{body}"));
        let when = |body: &str| {
            refused(&format!(
                "[playbook.when]\n{body}\n[[playbook.action]]\ntype = \"disconnect\""
            ))
        };
        let cases: Vec<(PlaybookError, &str)> = vec![
            (action("type = \"explode\""), "action[0].type"),
            (action("type = \"ban\"\nfor = \"0s\""), "action[0].for"),
            (action("type = \"ban\"\nfor = \"-5m\""), "action[0].for"),
            (action("type = \"ban\"\nfor = \"soon\""), "action[0].for"),
            (action("type = \"ban\"\nfor = \"400days\""), "action[0].for"),
            (
                action("type = \"quarantine\"\nfor = \"31days\""),
                "action[0].for",
            ),
            (action("type = \"throttle\"\nrate = 0.0"), "action[0].rate"),
            (action("type = \"throttle\"\nrate = -1.0"), "action[0].rate"),
            (action("type = \"throttle\"\nrate = nan"), "action[0].rate"),
            (action("type = \"throttle\"\nrate = inf"), "action[0].rate"),
            (
                action("type = \"throttle\"\nfor = \"0ms\""),
                "action[0].for",
            ),
            (
                action("type = \"notify\"\nwebhook = \"nobody\""),
                "action[0].webhook",
            ),
            (
                action("type = \"quarantine\"\nrate = 1.0"),
                "action[0].rate",
            ),
            (
                action("type = \"disconnect\"\nfor = \"1m\""),
                "action[0].for",
            ),
            (
                action("type = \"revoke\"\nreason = \"  \""),
                "action[0].reason",
            ),
            (action("type = \"notify\"\nfor = \"1m\""), "action[0].for"),
            (
                refused("mode = \"maybe\"\n[[playbook.action]]\ntype = \"disconnect\""),
                "mode",
            ),
            (refused("mode = \"auto\""), "action"),
            (when("min_severity = \"severe\""), "when.min_severity"),
            (
                when("max_severity = \"low\"\nmin_severity = \"high\""),
                "when.max_severity",
            ),
            (when("min_confidence = 1.5"), "when.min_confidence"),
            (when("min_confidence = -0.1"), "when.min_confidence"),
            (when("tiers = [\"vip\"]"), "when.tiers"),
            (when("min_findings = 0"), "when.min_findings"),
            (when("kinds = [\"Publish Flood\"]"), "when.kinds"),
            (when("kinds = [\"\"]"), "when.kinds"),
            (when("has_device = false"), "action[0].type"),
        ];
        for (e, field) in cases {
            assert_eq!(invalid_field(&e), ("playbook \"p\"", field), "{e}");
            let text = e.to_string();
            assert!(text.starts_with("playbook \"p\": "), "{text}");
        }
        let too_many = format!(
            "[[playbook]]\nname = \"p\"\n{}",
            "[[playbook.action]]\ntype = \"disconnect\"\n".repeat(MAX_ACTIONS + 1)
        );
        assert_eq!(
            invalid_field(&Playbooks::parse(&too_many).unwrap_err()).1,
            "action"
        );
    }

    #[test]
    fn duplicate_and_bad_names_are_refused() {
        let one = "[[playbook]]\nname = \"same\"\n[[playbook.action]]\ntype = \"disconnect\"\n";
        let e = Playbooks::parse(&one.repeat(2)).unwrap_err();
        assert_eq!(invalid_field(&e), ("playbook \"same\"", "name"));
        assert!(e.to_string().contains("defined twice"), "{e}");
        for name in ["", "has space", "ünï"] {
            let e = Playbooks::parse(&format!(
                "[[playbook]]\nname = \"{name}\"\n[[playbook.action]]\ntype = \"disconnect\""
            ))
            .unwrap_err();
            assert_eq!(invalid_field(&e).1, "name", "{name:?}");
        }
        let hook = format!(
            "[[webhook]]\nname = \"w\"\nurl = \"https://a.example\"\nsecret = \"{SECRET}\"\n"
        );
        let e = Playbooks::parse(&hook.repeat(2)).unwrap_err();
        assert_eq!(invalid_field(&e), ("webhook \"w\"", "name"));
    }

    #[test]
    fn webhooks_are_validated() {
        let hook = |body: &str| Playbooks::parse(&format!("[[webhook]]\nname = \"w\"\n{body}"));
        let ok = hook(&format!(
            "url = \"http://127.0.0.1:9/x\"\nsecret = \"{SECRET}\""
        ))
        .unwrap();
        let w = ok.webhook("w").unwrap();
        assert_eq!(
            (w.timeout, w.retries),
            (Webhook::DEFAULT_TIMEOUT, Webhook::DEFAULT_RETRIES)
        );
        for (body, field) in [
            (
                format!("url = \"ftp://a.example/\"\nsecret = \"{SECRET}\""),
                "url",
            ),
            (
                format!("url = \"file:///etc/passwd\"\nsecret = \"{SECRET}\""),
                "url",
            ),
            (format!("url = \"not a url\"\nsecret = \"{SECRET}\""), "url"),
            (format!("url = \"/relative\"\nsecret = \"{SECRET}\""), "url"),
            ("url = \"https://a.example\"".to_owned(), "secret"),
            (
                "url = \"https://a.example\"\nsecret = \"short\"".to_owned(),
                "secret",
            ),
            (
                format!("url = \"https://a.example\"\nsecret = \"{SECRET}\"\nsecret_file = \"x\""),
                "secret",
            ),
            (
                "url = \"https://a.example\"\nsecret_file = \"/nonexistent/gatehouse/secret\""
                    .to_owned(),
                "secret_file",
            ),
            (
                format!("url = \"https://a.example\"\nsecret = \"{SECRET}\"\ntimeout = \"0s\""),
                "timeout",
            ),
            (
                format!("url = \"https://a.example\"\nsecret = \"{SECRET}\"\ntimeout = \"2m\""),
                "timeout",
            ),
            (
                format!("url = \"https://a.example\"\nsecret = \"{SECRET}\"\nretries = 11"),
                "retries",
            ),
        ] {
            let e = hook(&body).unwrap_err();
            assert_eq!(invalid_field(&e), ("webhook \"w\"", field), "{body}");
        }
    }

    #[test]
    fn a_secret_file_is_read_relative_to_the_playbook_file() {
        let dir = std::env::temp_dir().join(format!("gatehouse-respond-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hook.secret"), format!("{SECRET}\n")).unwrap();
        let file = dir.join("playbooks.toml");
        std::fs::write(
            &file,
            "[[webhook]]\nname = \"w\"\nurl = \"https://a.example\"\nsecret_file = \"hook.secret\"\n",
        )
        .unwrap();
        let p = Playbooks::load(&file).unwrap();
        assert_eq!(
            p.webhook("w").unwrap().secret.expose(),
            SECRET,
            "the newline is trimmed"
        );
        assert!(
            !format!("{p:?}").contains(SECRET),
            "Debug never shows the secret"
        );
        assert!(p.webhook("w").unwrap().ca_certs.is_empty());

        // A private CA for the receiver, also relative to the file.
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["soc.internal".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("soc-ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("empty.pem"), "no certificate here\n").unwrap();
        let with_ca = |ca_file: &str| {
            std::fs::write(
                &file,
                format!(
                    "[[webhook]]\nname = \"w\"\nurl = \"https://soc.internal\"\n\
                     secret_file = \"hook.secret\"\nca_file = \"{ca_file}\"\n"
                ),
            )
            .unwrap();
            Playbooks::load(&file)
        };
        let p = with_ca("soc-ca.pem").unwrap();
        let w = p.webhook("w").unwrap();
        assert_eq!(w.ca_certs, vec![ca.der().clone()]);
        assert_eq!(w.ca_file.as_deref(), Some(dir.join("soc-ca.pem").as_path()));
        let rendered = p.to_toml_with_secrets().unwrap();
        assert_eq!(Playbooks::parse(&rendered).unwrap(), p, "{rendered}");
        for bad in ["empty.pem", "missing.pem"] {
            let e = with_ca(bad).unwrap_err();
            assert_eq!(invalid_field(&e), ("webhook \"w\"", "ca_file"), "{bad}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn oversize_files_are_refused() {
        let text = "#".repeat(MAX_TEXT_BYTES + 1);
        assert!(matches!(
            Playbooks::parse(&text),
            Err(PlaybookError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in ".{0,400}") {
            if let Ok(p) = Playbooks::parse(&text) {
                prop_assert_eq!(Playbooks::parse(&p.to_toml_with_secrets().unwrap()), Ok(p));
            }
        }

        #[test]
        fn parse_never_panics_on_playbook_like_text(
            lines in proptest::collection::vec(
                prop_oneof![
                    Just("[[playbook]]".to_owned()),
                    Just("[[playbook.action]]".to_owned()),
                    Just("[playbook.when]".to_owned()),
                    Just("[[webhook]]".to_owned()),
                    "(name|type|mode|for|rate|reason|webhook|url|secret|timeout) = \"[a-z0-9:/.-]{0,12}\"",
                    "(rate|min_confidence|min_findings|retries) = -?[0-9]{1,4}(\\.[0-9])?",
                    "(kinds|tiers) = \\[\"[a-z_]{0,10}\"\\]",
                ],
                0..24,
            )
        ) {
            if let Ok(p) = Playbooks::parse(&lines.join("\n")) {
                let rendered = p.to_toml_with_secrets().unwrap();
                prop_assert_eq!(Playbooks::parse(&rendered), Ok(p));
            }
        }
    }
}
