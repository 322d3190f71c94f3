//! Topic patterns with `{device}` and `{tenant}` placeholders, shared by the broker's
//! static gate and the trust engine's model profiles.
//!
//! A placeholder is a whole topic level, bound to the device's id or tenant when matched;
//! the pattern with placeholders replaced is a valid MQTT topic filter; a pattern starting
//! with a wildcard matches no topic starting with `$`.

use std::fmt;

use serde::Serialize;

use crate::{DeviceRef, Identity, TopicFilter};

/// What a pattern's placeholders are bound to: a device's tenant and id.
pub trait PatternBinding {
    /// The value of `{tenant}`.
    fn tenant_name(&self) -> &str;
    /// The value of `{device}`.
    fn device_name(&self) -> &str;
}

impl PatternBinding for DeviceRef {
    fn tenant_name(&self) -> &str {
        self.tenant.as_str()
    }
    fn device_name(&self) -> &str {
        self.device.as_str()
    }
}

impl PatternBinding for Identity {
    fn tenant_name(&self) -> &str {
        self.tenant.as_str()
    }
    fn device_name(&self) -> &str {
        self.device.as_str()
    }
}

/// A validated topic pattern (`devices/{device}/telemetry/#`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct TopicPattern(String);

/// Why a topic pattern was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// A pattern cannot be a `$share/…` subscription.
    #[error("a pattern cannot be a shared subscription")]
    Shared,
    /// A `{` or `}` appears outside a whole-level `{device}` or `{tenant}`.
    #[error("placeholders are {{device}} and {{tenant}}, each a whole level")]
    Placeholder,
    /// With placeholders replaced, the pattern is not a valid MQTT topic filter.
    #[error("not a valid MQTT topic filter ('+' and '#' must be whole levels, '#' last)")]
    Filter,
}

impl TopicPattern {
    /// Validates a pattern.
    pub fn new(pattern: impl Into<String>) -> Result<Self, PatternError> {
        let pattern = pattern.into();
        if pattern.starts_with("$share/") {
            return Err(PatternError::Shared);
        }
        for level in pattern.split('/') {
            if level.contains(['{', '}']) && level != "{device}" && level != "{tenant}" {
                return Err(PatternError::Placeholder);
            }
        }
        let probe = pattern.replace("{device}", "d").replace("{tenant}", "t");
        TopicFilter::new(probe).map_err(|_| PatternError::Filter)?;
        Ok(Self(pattern))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the pattern holds a `{device}` placeholder.
    pub fn is_per_device(&self) -> bool {
        self.0.split('/').any(|l| l == "{device}")
    }

    /// The pattern with its placeholders bound to `device`: a topic filter.
    pub fn bind(&self, device: &impl PatternBinding) -> String {
        self.0
            .split('/')
            .map(|l| match l {
                "{device}" => device.device_name(),
                "{tenant}" => device.tenant_name(),
                other => other,
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    fn level_matches(level: &str, value: &str, device: &impl PatternBinding) -> bool {
        match level {
            "{device}" => value == device.device_name(),
            "{tenant}" => value == device.tenant_name(),
            _ => level == value,
        }
    }

    /// Whether the pattern, bound to `device` (a [`DeviceRef`] or an [`Identity`]), matches the topic name `topic`.
    pub fn matches_topic(&self, topic: &str, device: &impl PatternBinding) -> bool {
        if topic.starts_with('$') && (self.0.starts_with('+') || self.0.starts_with('#')) {
            return false;
        }
        let mut p = self.0.split('/');
        let mut t = topic.split('/');
        loop {
            match (p.next(), t.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(pl), Some(tl)) if Self::level_matches(pl, tl, device) => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    /// Whether every topic the (unshared) filter can match is matched by the pattern bound
    /// to `device`: whether a subscription stays within what the pattern allows.
    pub fn covers_filter(&self, filter: &str, device: &impl PatternBinding) -> bool {
        if (self.0.starts_with('+') || self.0.starts_with('#')) && filter.starts_with('$') {
            return false;
        }
        let mut p = self.0.split('/');
        let mut f = filter.split('/');
        loop {
            match (p.next(), f.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(fl)) if fl != "#" => {}
                (Some(pl), Some(fl))
                    if fl != "+" && fl != "#" && Self::level_matches(pl, fl, device) => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

impl From<TopicPattern> for String {
    fn from(p: TopicPattern) -> String {
        p.0
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(d: &str) -> DeviceRef {
        format!("acme/{d}").parse().unwrap()
    }

    #[test]
    fn placeholders_bind_to_the_device() {
        let p = TopicPattern::new("t/{tenant}/devices/{device}/#").unwrap();
        assert!(p.matches_topic("t/acme/devices/d1/temp", &dev("d1")));
        assert!(!p.matches_topic("t/acme/devices/d2/temp", &dev("d1")));
        assert!(!p.matches_topic("t/other/devices/d1/temp", &dev("d1")));
        assert_eq!(p.bind(&dev("d1")), "t/acme/devices/d1/#");
        assert!(p.is_per_device());
    }

    #[test]
    fn coverage_of_filters() {
        let p = TopicPattern::new("devices/{device}/#").unwrap();
        let me = dev("d1");
        assert!(p.covers_filter("devices/d1/#", &me));
        assert!(p.covers_filter("devices/d1/+/x", &me));
        assert!(!p.covers_filter("devices/+/x", &me));
        assert!(!p.covers_filter("devices/#", &me));
        let all = TopicPattern::new("#").unwrap();
        assert!(!all.covers_filter("$SYS/#", &me));
        assert!(!all.matches_topic("$SYS/x", &me));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert_eq!(
            TopicPattern::new("a/{dev}/b"),
            Err(PatternError::Placeholder)
        );
        assert_eq!(
            TopicPattern::new("a/x{device}"),
            Err(PatternError::Placeholder)
        );
        assert_eq!(TopicPattern::new("a/#/b"), Err(PatternError::Filter));
        assert_eq!(TopicPattern::new("a/b+"), Err(PatternError::Filter));
        assert_eq!(TopicPattern::new(""), Err(PatternError::Filter));
        assert_eq!(TopicPattern::new("$share/g/a"), Err(PatternError::Shared));
    }
}
