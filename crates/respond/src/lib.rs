//! Gatehouse's respond stage: what to do about findings.
//!
//! - [`playbook`]: the operator's rules, in TOML: which findings (kind, severity,
//!   confidence, the device's tier, how many in the incident) get which actions (throttle,
//!   quarantine, revoke, disconnect, ban, notify), and whether they run at once, wait for
//!   approval, or are only reported. [`Playbooks::plan`] is a pure function.
//! - [`incident`]: findings grouped by subject and kind, and the lifecycle rules
//!   (`open → acknowledged → resolved`); the records themselves live in `gatehouse-store`.
//! - [`notify`]: a finding as an OCSF Detection Finding, signed with HMAC-SHA256 and
//!   POSTed to a webhook, with retries.
//!
//! The one design decision that shapes this crate: **it decides, it does not act.**
//! Planning is pure and storage goes through the [`gatehouse_store::Registry`]; carrying an
//! action out on the broker, the trust engine or the CA is the server's job, so every
//! decision here is testable without a running system. The format and the lifecycle are
//! described in `docs/respond.md`.

pub mod incident;
pub mod notify;
pub mod playbook;

pub use notify::{
    DeliveryError, DeliveryReceipt, SIGNATURE_HEADER, Secret, SignatureError, Webhook, deliver,
    ocsf_detection_finding, sign, verify,
};
pub use playbook::{Action, Mode, PlannedAction, Playbook, PlaybookError, Playbooks, When};
