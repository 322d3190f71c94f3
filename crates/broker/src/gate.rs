//! The gate: what a session may do, from its identity and its device's trust verdict.
//!
//! It is one of two enforcement points. The other is the respond stage's sanctions
//! ([`crate::sanctions`]): bans of source addresses, checked at accept before any TLS
//! work, and throttles of devices to a rate, checked on PUBLISH after the gate allows it.
//! Sanctions are timed reactions to findings, kept apart from the verdict so that lifting
//! one never needs a re-assessment; both are stored as actions and restored at start.
//!
//! The broker consults the gate on CONNECT, on each SUBSCRIBE filter and on each PUBLISH. It is
//! held in an [`arc_swap::ArcSwap`], so a new gate (a new policy, a trust verdict) is swapped
//! in atomically and reaches open sessions: [`crate::Broker::set_gate`] re-checks every
//! session's subscriptions and disconnects sessions the new gate no longer admits.

use std::borrow::Cow;

use gatehouse_mqtt::QoS;
use gatehouse_types::{DeviceRef, Identity, TopicFilter};
pub use gatehouse_types::{PatternError, TopicPattern};

/// What the gate decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refuse this one action; the session stays.
    Deny(Cow<'static, str>),
    /// Refuse and end the session.
    Disconnect(Cow<'static, str>),
}

impl Decision {
    /// Whether the decision allows the action.
    pub fn is_allow(&self) -> bool {
        matches!(self, Self::Allow)
    }
}

/// A PUBLISH as the gate sees it (the payload is there for payload-aware policies).
#[derive(Debug, Clone, Copy)]
pub struct PublishContext<'a> {
    /// Topic name, after topic-alias resolution.
    pub topic: &'a str,
    /// Application payload.
    pub payload: &'a [u8],
    /// QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
}

/// The decision point consulted by every session. Implementations must not block or do
/// I/O: they are called on the hot path, once per packet.
pub trait Gate: Send + Sync + 'static {
    /// May this identity open a session?
    fn connect(&self, identity: &Identity) -> Decision;
    /// May this identity hold a subscription to `filter`?
    fn subscribe(&self, identity: &Identity, filter: &TopicFilter) -> Decision;
    /// May this identity publish this message?
    fn publish(&self, identity: &Identity, publish: &PublishContext<'_>) -> Decision;
}

/// A gate that allows everything. For tests and benchmarks only; never the default.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl Gate for AllowAll {
    fn connect(&self, _: &Identity) -> Decision {
        Decision::Allow
    }
    fn subscribe(&self, _: &Identity, _: &TopicFilter) -> Decision {
        Decision::Allow
    }
    fn publish(&self, _: &Identity, _: &PublishContext<'_>) -> Decision {
        Decision::Allow
    }
}

// === impl StaticPolicy ===

/// Per-device topic permissions from the configuration: the data plane's gate until the
/// trust-driven gate takes over.
#[derive(Debug, Clone, Default)]
pub struct StaticPolicy {
    /// Patterns every device may publish to.
    pub publish: Vec<TopicPattern>,
    /// Patterns every device may subscribe within.
    pub subscribe: Vec<TopicPattern>,
    /// Per-device additions.
    pub devices: Vec<DevicePolicy>,
    /// Devices that may not connect at all.
    pub blocked: Vec<DeviceRef>,
}

/// Extra patterns for one device.
#[derive(Debug, Clone)]
pub struct DevicePolicy {
    /// The device, within its tenant.
    pub device: DeviceRef,
    /// Extra publish patterns.
    pub publish: Vec<TopicPattern>,
    /// Extra subscribe patterns.
    pub subscribe: Vec<TopicPattern>,
}

impl StaticPolicy {
    /// The policy used when the configuration gives none: a device may publish and
    /// subscribe only below `devices/{device}/` and its own reserved `$gatehouse/{device}/`.
    pub fn default_policy() -> Self {
        // Both patterns are valid: `TopicPattern::new` cannot refuse them.
        let own = |list: &[&str]| {
            list.iter()
                .filter_map(|s| TopicPattern::new(*s).ok())
                .collect::<Vec<_>>()
        };
        Self {
            publish: own(&["devices/{device}/#", "$gatehouse/{device}/#"]),
            subscribe: own(&["devices/{device}/#", "$gatehouse/{device}/#"]),
            devices: Vec::new(),
            blocked: Vec::new(),
        }
    }

    fn device(&self, id: &Identity) -> Option<&DevicePolicy> {
        self.devices.iter().find(|d| d.device.is(id))
    }
}

impl Gate for StaticPolicy {
    fn connect(&self, id: &Identity) -> Decision {
        if self.blocked.iter().any(|b| b.is(id)) {
            Decision::Deny(Cow::Borrowed("device is blocked by policy"))
        } else {
            Decision::Allow
        }
    }

    fn subscribe(&self, id: &Identity, filter: &TopicFilter) -> Decision {
        let f = filter.match_filter();
        let extra = self
            .device(id)
            .map(|d| d.subscribe.as_slice())
            .unwrap_or(&[]);
        if self
            .subscribe
            .iter()
            .chain(extra)
            .any(|p| p.covers_filter(f, id))
        {
            Decision::Allow
        } else {
            Decision::Deny(Cow::Borrowed("subscription outside the device's policy"))
        }
    }

    fn publish(&self, id: &Identity, p: &PublishContext<'_>) -> Decision {
        let extra = self.device(id).map(|d| d.publish.as_slice()).unwrap_or(&[]);
        if self
            .publish
            .iter()
            .chain(extra)
            .any(|pat| pat.matches_topic(p.topic, id))
        {
            Decision::Allow
        } else {
            Decision::Deny(Cow::Borrowed("topic outside the device's policy"))
        }
    }
}

#[cfg(test)]
mod tests {
    use gatehouse_types::{DeviceId, IdentitySource, TenantId};

    use super::*;

    fn id(d: &str) -> Identity {
        Identity {
            tenant: TenantId::new("acme").unwrap(),
            device: DeviceId::new(d).unwrap(),
            source: IdentitySource::CertificateSanUri,
        }
    }

    #[test]
    fn placeholders_bind_to_the_identity() {
        let p = TopicPattern::new("t/{tenant}/devices/{device}/#").unwrap();
        assert!(p.matches_topic("t/acme/devices/d1/temp", &id("d1")));
        assert!(!p.matches_topic("t/acme/devices/d2/temp", &id("d1")));
        assert!(!p.matches_topic("t/other/devices/d1/temp", &id("d1")));
    }

    #[test]
    fn coverage_of_filters() {
        let p = TopicPattern::new("devices/{device}/#").unwrap();
        let me = id("d1");
        assert!(p.covers_filter("devices/d1/#", &me));
        assert!(p.covers_filter("devices/d1/+/x", &me));
        assert!(p.covers_filter("devices/d1", &me));
        assert!(!p.covers_filter("devices/+/x", &me));
        assert!(!p.covers_filter("devices/#", &me));
        assert!(!p.covers_filter("#", &me));
        let plus = TopicPattern::new("a/+/c").unwrap();
        assert!(plus.covers_filter("a/b/c", &me));
        assert!(plus.covers_filter("a/+/c", &me));
        assert!(!plus.covers_filter("a/#", &me));
        let all = TopicPattern::new("#").unwrap();
        assert!(!all.covers_filter("$SYS/#", &me));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(TopicPattern::new("a/{dev}/b").is_err());
        assert!(TopicPattern::new("a/x{device}").is_err());
        assert!(TopicPattern::new("a/#/b").is_err());
        assert!(TopicPattern::new("$share/g/a").is_err());
    }

    #[test]
    fn default_policy_confines_devices_to_their_namespace() {
        let p = StaticPolicy::default_policy();
        let me = id("d1");
        let ctx = |topic| PublishContext {
            topic,
            payload: b"",
            qos: QoS::AtMostOnce,
            retain: false,
        };
        assert!(p.publish(&me, &ctx("devices/d1/telemetry")).is_allow());
        assert!(!p.publish(&me, &ctx("devices/d2/telemetry")).is_allow());
        let f = |s: &str| TopicFilter::new(s).unwrap();
        assert!(p.subscribe(&me, &f("devices/d1/cmd/#")).is_allow());
        assert!(!p.subscribe(&me, &f("#")).is_allow());
        assert!(!p.subscribe(&me, &f("$SYS/#")).is_allow());
        assert!(p.subscribe(&me, &f("$share/g/devices/d1/x")).is_allow());
    }
}
