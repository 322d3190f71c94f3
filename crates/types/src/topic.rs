use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a topic name or filter was refused (MQTT 5.0 §4.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// Topic names and filters must be at least one byte long.
    #[error("topic is empty")]
    Empty,
    /// Longer than the 65,535 bytes an MQTT string can hold.
    #[error("topic is longer than 65535 bytes")]
    TooLong,
    /// U+0000 is not allowed in any MQTT string.
    #[error("topic contains U+0000")]
    Nul,
    /// A topic name (as opposed to a filter) contains `+` or `#`.
    #[error("topic name contains a wildcard")]
    WildcardInName,
    /// `#` is not alone in the last level, or `+` is not alone in its level.
    #[error("wildcard is not alone in its level or '#' is not last")]
    BadWildcard,
    /// A `$share/<name>/<filter>` has an empty or invalid share name, or no filter.
    #[error("invalid shared subscription")]
    BadShare,
}

const MAX: usize = 65_535;

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// A valid MQTT topic name: what a PUBLISH is sent to. Contains no wildcards.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Topic(String);

impl Topic {
    /// Validates a topic name.
    pub fn new(s: impl Into<String>) -> Result<Self, TopicError> {
        let s = s.into();
        check_common(&s)?;
        if s.contains(['+', '#']) {
            return Err(TopicError::WildcardInName);
        }
        Ok(Self(s))
    }

    /// The topic as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Number of levels (one more than the number of `/`).
    pub fn levels(&self) -> usize {
        self.0.bytes().filter(|b| *b == b'/').count() + 1
    }
}

/// A valid MQTT topic filter: what a SUBSCRIBE asks for. May hold `+` and `#`, and may be
/// a shared subscription `$share/<group>/<filter>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicFilter(String);

fn check_filter_levels(s: &str) -> Result<(), TopicError> {
    let mut levels = s.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::BadWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::BadWildcard);
        }
    }
    Ok(())
}

impl TopicFilter {
    /// Validates a topic filter, shared or not.
    pub fn new(s: impl Into<String>) -> Result<Self, TopicError> {
        let s = s.into();
        check_common(&s)?;
        if let Some(rest) = s.strip_prefix("$share/") {
            let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
            if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
                return Err(TopicError::BadShare);
            }
            check_filter_levels(filter)?;
        } else {
            check_filter_levels(&s)?;
        }
        Ok(Self(s))
    }

    /// The filter as text, including any `$share/<group>/` prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For a shared subscription, its group name and the filter it shares.
    pub fn shared(&self) -> Option<(&str, &str)> {
        self.0.strip_prefix("$share/")?.split_once('/')
    }

    /// The filter that is matched against topics: without any `$share/<group>/` prefix.
    pub fn match_filter(&self) -> &str {
        self.shared().map_or(&self.0, |(_, f)| f)
    }

    /// Whether the filter holds a wildcard.
    pub fn has_wildcard(&self) -> bool {
        self.match_filter().contains(['+', '#'])
    }

    /// Number of levels of the matched filter.
    pub fn levels(&self) -> usize {
        self.match_filter().bytes().filter(|b| *b == b'/').count() + 1
    }

    /// Whether this filter matches `topic` (MQTT 5.0 §4.7, including the rule that a
    /// filter starting with a wildcard does not match topics starting with `$`).
    pub fn matches(&self, topic: &Topic) -> bool {
        matches(self.match_filter(), topic.as_str())
    }
}

/// Whether the (already validated, unshared) filter `filter` matches the topic name `topic`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

macro_rules! common_impls {
    ($name:ident) => {
        impl TryFrom<String> for $name {
            type Error = TopicError;
            fn try_from(s: String) -> Result<Self, TopicError> {
                Self::new(s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl std::str::FromStr for $name {
            type Err = TopicError;
            fn from_str(s: &str) -> Result<Self, TopicError> {
                Self::new(s)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}
common_impls!(Topic);
common_impls!(TopicFilter);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn topic_names() {
        assert!(Topic::new("a/b/c").is_ok());
        assert!(Topic::new("/").is_ok());
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
        assert_eq!(Topic::new("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(Topic::new("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(Topic::new("a\0b"), Err(TopicError::Nul));
    }

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "a/#",
            "a/+/c",
            "+/+",
            "/#",
            "$share/g/a/#",
            "$SYS/#",
        ] {
            assert!(TopicFilter::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "a#",
            "a/#/b",
            "a+",
            "a/b+/c",
            "$share/g",
            "$share//a",
            "$share/g+/a",
        ] {
            assert!(TopicFilter::new(bad).is_err(), "{bad}");
        }
        let f = TopicFilter::new("$share/grp/a/+").unwrap();
        assert_eq!(f.shared(), Some(("grp", "a/+")));
        assert_eq!(f.match_filter(), "a/+");
    }

    #[test]
    fn matching_follows_the_spec() {
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "a/b"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/monitor", "$SYS/monitor"));
        assert!(matches("$SYS/#", "$SYS/x"));
    }

    /// A reference matcher written the long way: level lists compared recursively.
    fn naive(filter: &[&str], topic: &[&str]) -> bool {
        match (filter.first(), topic.first()) {
            (Some(&"#"), _) => true,
            (Some(&"+"), Some(_)) => naive(&filter[1..], &topic[1..]),
            (Some(f), Some(t)) => f == t && naive(&filter[1..], &topic[1..]),
            (None, None) => true,
            _ => false,
        }
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof!["[ab]{0,2}", Just("$x".to_owned())]
    }

    proptest! {
        #[test]
        fn matching_agrees_with_naive_reference(
            t in proptest::collection::vec(level(), 1..5),
            f in proptest::collection::vec(prop_oneof![level(), Just("+".to_owned())], 0..5),
            hash in any::<bool>(),
        ) {
            let topic = t.join("/");
            let mut fl = f.clone();
            if hash || fl.is_empty() { fl.push("#".to_owned()); }
            let filter = fl.join("/");
            let topic_levels: Vec<&str> = topic.split('/').collect();
            let filter_levels: Vec<&str> = filter.split('/').collect();
            let expected = if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
                false
            } else {
                naive(&filter_levels, &topic_levels)
            };
            prop_assert_eq!(matches(&filter, &topic), expected);
        }

        #[test]
        fn any_string_is_validated_without_panic(s in ".{0,40}") {
            let _ = Topic::new(s.clone());
            let _ = TopicFilter::new(s);
        }
    }
}
