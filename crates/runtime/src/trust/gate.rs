//! The broker's gate over the trust service's verdicts.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use gatehouse_broker::{Decision, Gate, PublishContext};
use gatehouse_trust::policy::{DeviceVerdict, PublishCheck};
use gatehouse_types::{DeviceRef, Identity, TopicFilter};
use tokio::sync::mpsc;
use tracing::warn;

use super::TrustService;

/// Reads the verdict in force for each packet's device; see [`super`]. Posture reports
/// the verdict allows are handed to the service on a bounded queue, never processed on the
/// packet's path.
#[derive(Clone)]
pub struct TrustGate {
    service: Arc<TrustService>,
    posture: Option<mpsc::Sender<(DeviceRef, Vec<u8>)>>,
}

impl std::fmt::Debug for TrustGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustGate").finish_non_exhaustive()
    }
}

/// The reserved posture topic's prefix and suffix: `$gatehouse/{device}/posture`.
const POSTURE_PREFIX: &str = "$gatehouse/";
const POSTURE_SUFFIX: &str = "/posture";

impl TrustGate {
    pub(super) fn new(service: Arc<TrustService>) -> Self {
        Self {
            service,
            posture: None,
        }
    }

    /// Starts the task that processes posture reports (inside a Tokio runtime) and returns
    /// the gate that feeds it.
    pub fn with_posture_worker(mut self) -> Self {
        let (tx, mut rx) =
            mpsc::channel::<(DeviceRef, Vec<u8>)>(self.service.settings.posture_queue.max(1));
        let service = Arc::clone(&self.service);
        tokio::spawn(async move {
            while let Some((device, payload)) = rx.recv().await {
                let s = Arc::clone(&service);
                let done = tokio::task::spawn_blocking(move || s.posture(&device, &payload)).await;
                if let Err(e) = done {
                    warn!(error = %e, "posture task failed");
                }
            }
        });
        self.posture = Some(tx);
        self
    }

    fn verdict(&self, id: &Identity) -> Arc<DeviceVerdict> {
        let table = self.service.table();
        if let Some(v) = table.get(id.tenant.as_str(), id.device.as_str()) {
            return v;
        }
        let verdict = self.service.unregistered_verdict(id);
        table
            .get(id.tenant.as_str(), id.device.as_str())
            .unwrap_or_else(|| Arc::new(DeviceVerdict::new(verdict)))
    }

    fn is_own_posture(id: &Identity, topic: &str) -> bool {
        topic
            .strip_prefix(POSTURE_PREFIX)
            .and_then(|rest| rest.strip_suffix(POSTURE_SUFFIX))
            .is_some_and(|device| device == id.device.as_str())
    }

    fn take_posture(&self, id: &Identity, payload: &[u8]) {
        let Some(tx) = &self.posture else { return };
        let d = DeviceRef {
            tenant: id.tenant.clone(),
            device: id.device.clone(),
        };
        if !self.service.posture_due(&d) {
            self.service.metrics().posture("dropped");
            return;
        }
        if tx.try_send((d, payload.to_vec())).is_err() {
            self.service.metrics().posture("dropped");
        }
    }
}

impl Gate for TrustGate {
    fn connect(&self, id: &Identity) -> Decision {
        let v = self.verdict(id);
        if v.verdict().may_connect() {
            Decision::Allow
        } else {
            Decision::Deny(Cow::Owned(format!(
                "refused by the trust verdict (tier {})",
                v.verdict().tier()
            )))
        }
    }

    fn subscribe(&self, id: &Identity, filter: &TopicFilter) -> Decision {
        let v = self.verdict(id);
        if !v.verdict().may_connect() {
            return Decision::Disconnect(Cow::Borrowed("refused by the trust verdict"));
        }
        if v.verdict().may_subscribe(filter) {
            Decision::Allow
        } else {
            Decision::Deny(Cow::Borrowed("subscription outside the device's verdict"))
        }
    }

    fn publish(&self, id: &Identity, p: &PublishContext<'_>) -> Decision {
        let v = self.verdict(id);
        match v.check_publish(p.topic, Instant::now()) {
            PublishCheck::Allowed(_) => {
                if Self::is_own_posture(id, p.topic) {
                    self.take_posture(id, p.payload);
                }
                Decision::Allow
            }
            PublishCheck::Refused if !v.verdict().may_connect() => {
                Decision::Disconnect(Cow::Borrowed("refused by the trust verdict"))
            }
            PublishCheck::Refused => {
                Decision::Deny(Cow::Borrowed("topic outside the device's verdict"))
            }
            PublishCheck::RateExceeded(_) => Decision::Deny(Cow::Borrowed(
                "over the topic's rate in the device's verdict",
            )),
        }
    }
}
