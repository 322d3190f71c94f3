//! Topic patterns: binding `{device}` and `{tenant}`, and the filter relations a verdict is
//! matched with. Every function here works on validated, unshared topic filters.

use gatehouse_types::{DeviceRef, TopicFilter};

/// Why a topic pattern cannot be bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic pattern {pattern:?}: {why}")]
pub struct PatternError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Binds a pattern's `{device}` and `{tenant}` placeholders (each a whole level) to a
/// device, and checks that the result is a valid, unshared topic filter.
pub fn bind(pattern: &str, device: &DeviceRef) -> Result<String, PatternError> {
    let err = |why| PatternError {
        pattern: pattern.to_owned(),
        why,
    };
    if pattern.starts_with("$share/") {
        return Err(err("a pattern cannot be a shared subscription"));
    }
    let mut bound = String::with_capacity(pattern.len() + device.device.as_str().len());
    for (i, level) in pattern.split('/').enumerate() {
        if i > 0 {
            bound.push('/');
        }
        match level {
            "{device}" => bound.push_str(device.device.as_str()),
            "{tenant}" => bound.push_str(device.tenant.as_str()),
            _ if level.contains(['{', '}']) => {
                return Err(err(
                    "placeholders are {device} and {tenant}, each a whole level",
                ));
            }
            _ => bound.push_str(level),
        }
    }
    TopicFilter::new(bound.as_str()).map_err(|_| err("not a valid topic filter"))?;
    Ok(bound)
}

/// Whether a filter starts with a wildcard, so that it matches no topic starting with `$`.
fn wild_first(filter: &str) -> bool {
    filter.starts_with('+') || filter.starts_with('#')
}

/// Whether every topic `filter` matches is matched by `pattern`: the test for whether a
/// subscription stays within what is allowed. `a/+/c` is covered by `a/#`; `a/#` is not
/// covered by `a/+` (nor by `a/+/#`, which does not match `a`).
pub fn covers(pattern: &str, filter: &str) -> bool {
    // A pattern that starts with a wildcard matches no `$` topic; a filter that starts with
    // `$` matches only `$` topics (and one that starts with a wildcard matches none).
    if wild_first(pattern) && filter.starts_with('$') {
        return false;
    }
    let p: Vec<&str> = pattern.split('/').collect();
    let f: Vec<&str> = filter.split('/').collect();
    let mut i = 0;
    loop {
        match (p.get(i).copied(), f.get(i).copied()) {
            (Some("#"), _) => return true,
            (_, Some("#")) => {
                // The filter matches its first `i` levels as a topic of their own (`#`
                // matches the parent level) and every topic below them. Below them, the
                // pattern must match any one or more levels: its rest is `#` or `+/#`.
                // The parent itself is a topic unless it is nothing (`#` alone) or one
                // empty level (`/#`); when it is one, only `#` matches it too.
                let rest = &p[i.min(p.len())..];
                let parent_is_a_topic = !(i == 0 || (i == 1 && f[0].is_empty()));
                return rest == ["#"] || (!parent_is_a_topic && rest == ["+", "#"]);
            }
            (Some("+"), Some(_)) => {}
            (Some(pl), Some(fl)) if fl != "+" && pl == fl => {}
            (None, None) => return true,
            _ => return false,
        }
        i += 1;
    }
}

/// Whether some topic is matched by both filters: the test for whether a subscription
/// would receive anything from a refused pattern.
pub fn intersects(a: &str, b: &str) -> bool {
    // A `$` topic is matched only by filters whose first level is that literal.
    if (wild_first(a) && b.starts_with('$')) || (wild_first(b) && a.starts_with('$')) {
        return false;
    }
    let mut x = a.split('/');
    let mut y = b.split('/');
    // A one-level witness whose level must be empty is the empty string: not a topic.
    let mut depth = 0;
    let mut empty_first = false;
    loop {
        let level = match (x.next(), y.next()) {
            (Some("#"), None) | (None, Some("#")) | (None, None) => {
                return !(depth == 1 && empty_first);
            }
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(l)) | (Some(l), Some("+")) => l,
            (Some(l), Some(r)) if l == r => l,
            _ => return false,
        };
        if depth == 0 {
            empty_first = level.is_empty();
        }
        depth += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> DeviceRef {
        "acme/d1".parse().expect("device ref")
    }

    #[test]
    fn binding_fills_whole_levels() {
        assert_eq!(
            bind("t/{tenant}/devices/{device}/#", &me()).as_deref(),
            Ok("t/acme/devices/d1/#")
        );
        assert!(bind("a/x{device}", &me()).is_err());
        assert!(bind("a/{dev}", &me()).is_err());
        assert!(bind("a/#/b", &me()).is_err());
        assert!(bind("$share/g/a", &me()).is_err());
        assert!(bind("", &me()).is_err());
    }

    #[test]
    fn coverage() {
        assert!(covers("a/#", "a/+/c"));
        assert!(covers("a/#", "a"));
        assert!(covers("a/#", "a/#"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/+/#", "a/#"));
        assert!(covers("a/+/#", "a/b"));
        assert!(!covers("a/+/#", "a"));
        assert!(covers("a/+/c", "a/+/c"));
        assert!(!covers("a/b/c", "a/+/c"));
        assert!(!covers("#", "$SYS/#"));
        assert!(covers("$SYS/#", "$SYS/x"));
        assert!(covers("#", "+/x"));
        assert!(covers("+/#", "#"));
        assert!(covers("+/#", "+/#"));
        assert!(!covers("a/+/#", "a/#"));
        // `/#` matches `/`, `/a`, `/a/b`...: its parent, one empty level, is no topic, so
        // a pattern that needs one more level covers it (found by the property test).
        assert!(covers("+/+/#", "/#"));
        assert!(covers("/+/#", "/#"));
        assert!(!covers("+/+/#", "a/#"));
        assert!(!covers("+/+/+/#", "/#"));
    }

    #[test]
    fn intersection() {
        assert!(intersects("a/#", "a/b/c"));
        assert!(intersects("a/+", "+/b"));
        assert!(intersects("a/b/#", "a/b"));
        assert!(intersects("a/+/#", "a/#"));
        assert!(!intersects("a/+", "a"));
        assert!(!intersects("a/b", "a/c"));
        assert!(!intersects("#", "$x/#"));
        assert!(intersects("$x/#", "$x/+"));
        assert!(!intersects("+", "/#"));
        assert!(intersects("+", "a/#"));
    }
}
