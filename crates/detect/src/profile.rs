//! What detection needs of a model profile, and its compiled form: patterns split into
//! levels once, payload fields grouped by topic with their JSON paths, so the hot path
//! matches without allocating.

use gatehouse_types::TopicPattern;

use crate::features::FIELD_SLOTS;

/// What detection needs of a model profile; the caller builds it from the trust stage's
/// `ModelProfile`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileView {
    /// The model's id.
    pub model: String,
    /// Topics the device may publish (`{device}` placeholders).
    pub publish: Vec<TopicPattern>,
    /// Topics the device may subscribe within.
    pub subscribe: Vec<TopicPattern>,
    /// Actuator and command topics: written to the device by the platform or operators.
    /// A device publishing to another device's command topic is injecting commands.
    pub commands: Vec<TopicPattern>,
    /// Payload JSON fields with ranges.
    pub fields: Vec<FieldSpec>,
    /// The profile's total publish rate, messages per second.
    pub max_rate_per_sec: Option<f64>,
}

/// One payload field of a topic, with its allowed range.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    /// The topic the field is carried on.
    pub topic: TopicPattern,
    /// A top-level key, or a dotted path into nested objects (`env.temp`).
    pub name: String,
    /// The least allowed value.
    pub min: Option<f64>,
    /// The greatest allowed value.
    pub max: Option<f64>,
    /// The largest change between two consecutive readings of one device.
    pub max_step: Option<f64>,
    /// The most consecutive identical readings of one device.
    pub max_repeats: Option<u32>,
}

/// Most payload fields compiled for one topic (a bit mask tracks them while parsing).
pub(crate) const MAX_TOPIC_FIELDS: usize = 64;

/// One level of a compiled pattern.
#[derive(Debug, Clone, PartialEq)]
enum Level {
    Lit(Box<str>),
    Device,
    Tenant,
    Plus,
    Hash,
}

/// A topic pattern split into levels.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pattern {
    levels: Box<[Level]>,
    per_device: bool,
}

/// What a pattern's `{device}` level matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// The topic is the device's own (or the pattern has no `{device}`).
    Own,
    /// The topic's `{device}` level names another device.
    Other,
}

// === impl Pattern ===

impl Pattern {
    pub(crate) fn new(p: &TopicPattern) -> Self {
        let levels: Box<[Level]> = p
            .as_str()
            .split('/')
            .map(|l| match l {
                "{device}" => Level::Device,
                "{tenant}" => Level::Tenant,
                "+" => Level::Plus,
                "#" => Level::Hash,
                other => Level::Lit(other.into()),
            })
            .collect();
        let per_device = levels.contains(&Level::Device);
        Self { levels, per_device }
    }

    fn starts_wild(&self) -> bool {
        matches!(self.levels.first(), Some(Level::Plus | Level::Hash))
    }

    /// Matches `topic` with `{tenant}` bound and `{device}` free; tells whose it is.
    pub(crate) fn owner(&self, topic: &str, tenant: &str, device: &str) -> Option<Owner> {
        if topic.starts_with('$') && self.starts_wild() {
            return None;
        }
        let mut own = true;
        let mut t = topic.split('/');
        for level in self.levels.iter() {
            let Some(tl) = t.next() else {
                // `a/#` matches `a` too.
                return (*level == Level::Hash).then_some(owner(own));
            };
            match level {
                Level::Hash => return Some(owner(own)),
                Level::Plus => {}
                Level::Lit(l) if **l == *tl => {}
                Level::Tenant if tl == tenant => {}
                Level::Device => own &= tl == device,
                _ => return None,
            }
        }
        t.next().is_none().then_some(owner(own))
    }

    /// Whether `topic` matches with both placeholders bound to this device.
    pub(crate) fn matches_own(&self, topic: &str, tenant: &str, device: &str) -> bool {
        self.owner(topic, tenant, device) == Some(Owner::Own)
    }

    /// Whether every topic `filter` can match is matched by this pattern bound to the
    /// device: the subscription stays within the pattern.
    pub(crate) fn covers(&self, filter: &str, tenant: &str, device: &str) -> bool {
        if filter.starts_with('$') && self.starts_wild() {
            return false;
        }
        let mut f = filter.split('/');
        for level in self.levels.iter() {
            let Some(fl) = f.next() else {
                return *level == Level::Hash;
            };
            match level {
                Level::Hash => return true,
                Level::Plus if fl != "#" => {}
                _ if fl == "+" || fl == "#" => return false,
                Level::Lit(l) if **l == *fl => {}
                Level::Tenant if fl == tenant => {}
                Level::Device if fl == device => {}
                _ => return false,
            }
        }
        f.next().is_none()
    }

    /// Whether `filter` could receive messages published on this pattern bound to a
    /// device other than `device`: a wildcard (or another id) at the `{device}` level.
    pub(crate) fn reaches_others(&self, filter: &str, tenant: &str, device: &str) -> bool {
        if !self.per_device {
            return false;
        }
        let mut f = filter.split('/');
        let mut other = false;
        for (i, level) in self.levels.iter().enumerate() {
            let Some(fl) = f.next() else {
                return false;
            };
            if fl == "#" {
                // Everything below: reaches other devices if the `{device}` level is here
                // or further down.
                return other || self.levels[i..].contains(&Level::Device);
            }
            let ok = match level {
                Level::Hash => return other,
                Level::Plus => true,
                Level::Lit(l) => fl == "+" || **l == *fl,
                Level::Tenant => fl == "+" || fl == tenant,
                Level::Device => {
                    other |= fl == "+" || fl != device;
                    true
                }
            };
            if !ok {
                return false;
            }
        }
        f.next().is_none() && other
    }
}

fn owner(own: bool) -> Owner {
    if own { Owner::Own } else { Owner::Other }
}

/// A payload field compiled for parsing.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Field {
    pub(crate) path: Box<[Box<str>]>,
    pub(crate) name: Box<str>,
    pub(crate) min: Option<f64>,
    pub(crate) max: Option<f64>,
    /// The largest change between two consecutive readings of one device.
    pub(crate) max_step: Option<f64>,
    /// The most consecutive identical readings of one device.
    pub(crate) max_repeats: Option<u32>,
    /// The model-wide slot whose per-device mean and cohort baseline this field feeds.
    pub(crate) slot: Option<u8>,
}

impl Field {
    pub(crate) fn contains(&self, v: f64) -> bool {
        self.range().contains(v)
    }

    pub(crate) fn range(&self) -> Range {
        Range {
            min: self.min,
            max: self.max,
        }
    }
}

/// The fields carried on one topic pattern.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TopicFields {
    pub(crate) pattern: Pattern,
    pub(crate) fields: Box<[Field]>,
}

/// A profile compiled for matching.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Compiled {
    pub(crate) publish: Box<[Pattern]>,
    pub(crate) subscribe: Box<[Pattern]>,
    pub(crate) commands: Box<[Pattern]>,
    pub(crate) fields: Box<[TopicFields]>,
    pub(crate) slot_names: Box<[Box<str>]>,
    /// Per slot, the range the profile declares for the field (the first declaration of
    /// the name with a bound).
    pub(crate) slot_ranges: Box<[Range]>,
    pub(crate) max_rate: Option<f64>,
}

/// A declared range; either end may be open.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Range {
    pub(crate) min: Option<f64>,
    pub(crate) max: Option<f64>,
}

impl Range {
    /// Whether the range says anything at all.
    pub(crate) fn declared(&self) -> bool {
        self.min.is_some() || self.max.is_some()
    }

    /// Whether `v` lies inside it.
    pub(crate) fn contains(&self, v: f64) -> bool {
        self.min.is_none_or(|m| v >= m) && self.max.is_none_or(|m| v <= m)
    }

    /// Its width, when both ends are declared.
    pub(crate) fn width(&self) -> Option<f64> {
        match (self.min, self.max) {
            (Some(lo), Some(hi)) => Some((hi - lo).abs()),
            _ => None,
        }
    }

    /// How far outside it `v` lies (0 inside).
    pub(crate) fn beyond(&self, v: f64) -> f64 {
        self.min
            .map_or(0.0, |lo| lo - v)
            .max(self.max.map_or(0.0, |hi| v - hi))
            .max(0.0)
    }
}

// === impl Compiled ===

impl Compiled {
    pub(crate) fn new(view: &ProfileView) -> Self {
        let mut groups: Vec<(TopicPattern, Vec<Field>)> = Vec::new();
        let mut slot_names: Vec<Box<str>> = Vec::new();
        let mut slot_ranges: Vec<Range> = Vec::new();
        for spec in &view.fields {
            let slot = match slot_names.iter().position(|n| **n == *spec.name) {
                Some(i) => Some(i),
                None if slot_names.len() < FIELD_SLOTS => {
                    slot_names.push(spec.name.as_str().into());
                    slot_ranges.push(Range::default());
                    Some(slot_names.len() - 1)
                }
                None => None,
            };
            let field = Field {
                path: spec.name.split('.').map(Into::into).collect(),
                name: spec.name.as_str().into(),
                min: spec.min.filter(|v| v.is_finite()),
                max: spec.max.filter(|v| v.is_finite()),
                max_step: spec.max_step.filter(|v| v.is_finite() && *v > 0.0),
                max_repeats: spec.max_repeats.filter(|n| *n >= 1),
                slot: slot.and_then(|s| u8::try_from(s).ok()),
            };
            if let Some(r) = slot.and_then(|s| slot_ranges.get_mut(s))
                && !r.declared()
            {
                *r = field.range();
            }
            match groups.iter_mut().find(|(p, _)| *p == spec.topic) {
                Some((_, fields)) if fields.len() < MAX_TOPIC_FIELDS => fields.push(field),
                Some(_) => {}
                None => groups.push((spec.topic.clone(), vec![field])),
            }
        }
        Self {
            publish: view.publish.iter().map(Pattern::new).collect(),
            subscribe: view.subscribe.iter().map(Pattern::new).collect(),
            commands: view.commands.iter().map(Pattern::new).collect(),
            fields: groups
                .into_iter()
                .map(|(p, fields)| TopicFields {
                    pattern: Pattern::new(&p),
                    fields: fields.into(),
                })
                .collect(),
            slot_names: slot_names.into(),
            slot_ranges: slot_ranges.into(),
            max_rate: view.max_rate_per_sec.filter(|r| r.is_finite() && *r > 0.0),
        }
    }

    /// Whether the device may publish `topic`.
    pub(crate) fn may_publish(&self, topic: &str, tenant: &str, device: &str) -> bool {
        self.publish
            .iter()
            .any(|p| p.matches_own(topic, tenant, device))
    }

    /// Whether `topic` belongs to another device under one of the publish patterns.
    pub(crate) fn others_publish_topic(&self, topic: &str, tenant: &str, device: &str) -> bool {
        self.publish
            .iter()
            .any(|p| p.owner(topic, tenant, device) == Some(Owner::Other))
    }

    /// Whose command topic `topic` is, if it is one.
    pub(crate) fn command_owner(&self, topic: &str, tenant: &str, device: &str) -> Option<Owner> {
        let mut found = None;
        for p in self.commands.iter() {
            match p.owner(topic, tenant, device) {
                Some(Owner::Other) => return Some(Owner::Other),
                Some(Owner::Own) => found = Some(Owner::Own),
                None => {}
            }
        }
        found
    }

    /// Whether the subscription stays within the profile.
    pub(crate) fn may_subscribe(&self, filter: &str, tenant: &str, device: &str) -> bool {
        self.subscribe
            .iter()
            .any(|p| p.covers(filter, tenant, device))
    }

    /// Whether the subscription reaches other devices' publications.
    pub(crate) fn reaches_others(&self, filter: &str, tenant: &str, device: &str) -> bool {
        self.publish
            .iter()
            .any(|p| p.reaches_others(filter, tenant, device))
    }

    /// The index in `fields` of the group carried on `topic`, if any.
    pub(crate) fn field_group(&self, topic: &str, tenant: &str, device: &str) -> Option<usize> {
        self.fields
            .iter()
            .position(|g| g.pattern.matches_own(topic, tenant, device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> Pattern {
        Pattern::new(&TopicPattern::new(s).expect("pattern"))
    }

    #[test]
    fn owner_binds_the_tenant_and_frees_the_device() {
        let p = pat("t/{tenant}/devices/{device}/cmd");
        assert_eq!(
            p.owner("t/acme/devices/d1/cmd", "acme", "d1"),
            Some(Owner::Own)
        );
        assert_eq!(
            p.owner("t/acme/devices/d2/cmd", "acme", "d1"),
            Some(Owner::Other)
        );
        assert_eq!(p.owner("t/other/devices/d2/cmd", "acme", "d1"), None);
        assert_eq!(p.owner("t/acme/devices/d2/cmd/x", "acme", "d1"), None);
        let all = pat("#");
        assert_eq!(all.owner("$SYS/x", "acme", "d1"), None);
        assert_eq!(all.owner("a/b", "acme", "d1"), Some(Owner::Own));
        assert_eq!(pat("a/#").owner("a", "acme", "d1"), Some(Owner::Own));
    }

    #[test]
    fn coverage_agrees_with_the_shared_pattern_type() {
        let tp = TopicPattern::new("devices/{device}/#").expect("pattern");
        let me: gatehouse_types::DeviceRef = "acme/d1".parse().expect("device");
        let p = Pattern::new(&tp);
        for f in [
            "devices/d1/#",
            "devices/d1/+/x",
            "devices/+/x",
            "devices/#",
            "#",
            "$SYS/#",
            "devices/d1",
            "devices/d2/a",
        ] {
            assert_eq!(
                p.covers(f, "acme", "d1"),
                tp.covers_filter(f, &me),
                "filter {f}"
            );
        }
    }

    #[test]
    fn broad_filters_reach_other_devices() {
        let p = pat("devices/{device}/telemetry");
        assert!(p.reaches_others("devices/+/telemetry", "acme", "d1"));
        assert!(p.reaches_others("devices/#", "acme", "d1"));
        assert!(p.reaches_others("#", "acme", "d1"));
        assert!(p.reaches_others("devices/d2/telemetry", "acme", "d1"));
        assert!(!p.reaches_others("devices/d1/telemetry", "acme", "d1"));
        assert!(!p.reaches_others("devices/d1/#", "acme", "d1"));
        assert!(!p.reaches_others("other/#", "acme", "d1"));
        assert!(!p.reaches_others("$SYS/#", "acme", "d1"));
    }
}
