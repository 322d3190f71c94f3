//! Firmware versions: dotted numbers with an optional pre-release and build suffix.

use std::cmp::Ordering;
use std::fmt;

/// A firmware version such as `2.4.1`, `v3.0`, `1.2.0-rc.1` or `1.2.0+build.7`.
///
/// Ordering follows semantic versioning, generalised to any number of components:
/// components compare numerically, missing trailing components count as zero
/// (`1.2 == 1.2.0`), a pre-release sorts before its release (`1.2.0-rc.1 < 1.2.0`), and
/// build metadata is ignored.
#[derive(Debug, Clone)]
pub struct FirmwareVersion {
    raw: String,
    numbers: Vec<u64>,
    pre: Vec<PreId>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PreId {
    // Numeric identifiers sort before alphanumeric ones (semver §11.4.3).
    Num(u64),
    Alpha(String),
}

/// Why a firmware version was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VersionError {
    /// The version is empty.
    #[error("version is empty")]
    Empty,
    /// A numeric component is missing or not a number.
    #[error("version {0:?} is not dotted numbers (like 2.4.1) with an optional -suffix")]
    Malformed(String),
}

/// The most numeric components a version may have.
const MAX_COMPONENTS: usize = 8;
/// The longest version accepted, in bytes.
const MAX_LEN: usize = 64;

impl FirmwareVersion {
    /// Parses a version.
    pub fn parse(s: &str) -> Result<Self, VersionError> {
        if s.is_empty() {
            return Err(VersionError::Empty);
        }
        let bad = || VersionError::Malformed(s.to_owned());
        if s.len() > MAX_LEN {
            return Err(bad());
        }
        let body = s.strip_prefix(['v', 'V']).unwrap_or(s);
        let (body, build) = match body.split_once('+') {
            Some((b, build)) => (b, Some(build)),
            None => (body, None),
        };
        if let Some(build) = build
            && !ident_list_ok(build)
        {
            return Err(bad());
        }
        let (core, pre) = match body.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (body, None),
        };
        let mut numbers = Vec::new();
        for part in core.split('.') {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            numbers.push(part.parse::<u64>().map_err(|_| bad())?);
        }
        if numbers.len() > MAX_COMPONENTS {
            return Err(bad());
        }
        while numbers.len() > 1 && numbers.last() == Some(&0) {
            numbers.pop();
        }
        let pre = match pre {
            None => Vec::new(),
            Some(p) if ident_list_ok(p) => p
                .split('.')
                .map(|id| match id.parse::<u64>() {
                    Ok(n) if id.bytes().all(|b| b.is_ascii_digit()) => PreId::Num(n),
                    _ => PreId::Alpha(id.to_owned()),
                })
                .collect(),
            Some(_) => return Err(bad()),
        };
        Ok(Self {
            raw: s.to_owned(),
            numbers,
            pre,
        })
    }

    /// The version as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether this is a pre-release (`1.2.0-rc.1`).
    pub fn is_prerelease(&self) -> bool {
        !self.pre.is_empty()
    }
}

fn ident_list_ok(s: &str) -> bool {
    s.split('.')
        .all(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

impl Ord for FirmwareVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        // Trailing zeros are trimmed at parse time, so the numbers compare directly.
        self.numbers.cmp(&other.numbers).then_with(|| {
            match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => self.pre.cmp(&other.pre),
            }
        })
    }
}

impl PartialOrd for FirmwareVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for FirmwareVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for FirmwareVersion {}

impl fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl std::str::FromStr for FirmwareVersion {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, VersionError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> FirmwareVersion {
        FirmwareVersion::parse(s).unwrap()
    }

    #[test]
    fn versions_order_numerically() {
        assert!(v("1.10.0") > v("1.9.9"));
        assert!(v("2") > v("1.99"));
        assert!(v("1.2.3.4") > v("1.2.3"));
        assert_eq!(v("1.2"), v("1.2.0"));
        assert_eq!(v("v1.2.0"), v("1.2"));
        assert_eq!(v("1.2.0+build.7"), v("1.2.0"));
        assert_eq!(v("0"), v("0.0.0"));
    }

    #[test]
    fn prereleases_sort_before_their_release() {
        assert!(v("1.2.0-rc.1") < v("1.2.0"));
        assert!(v("1.2.0-rc.1") > v("1.1.9"));
        assert!(v("1.2.0-alpha") < v("1.2.0-beta"));
        assert!(v("1.2.0-rc.2") < v("1.2.0-rc.10"));
        assert!(v("1.2.0-1") < v("1.2.0-alpha"));
        assert!(v("1.2.0-rc") < v("1.2.0-rc.1"));
        assert!(v("1.2.0-rc.1").is_prerelease());
    }

    #[test]
    fn malformed_versions_are_refused() {
        assert_eq!(FirmwareVersion::parse(""), Err(VersionError::Empty));
        for bad in [
            "a.b",
            "1..2",
            ".1",
            "1.",
            "1.2-",
            "1.2+",
            "1.2-rc..1",
            "1 2",
            "1.2.3.4.5.6.7.8.9",
            "99999999999999999999",
        ] {
            assert!(FirmwareVersion::parse(bad).is_err(), "{bad}");
        }
    }
}
