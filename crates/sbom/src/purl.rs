//! Package URLs (`pkg:type/namespace/name@version?qualifiers#subpath`), parsed and written
//! back in one canonical form, so that two documents naming one package give one string.
//!
//! Normalisation, after the purl specification:
//! - the scheme is `pkg:` (any case, slashes after it ignored); the type is lower-cased and
//!   must be letters, digits, `.`, `+` or `-`, not starting with a digit;
//! - every namespace segment, the name, the version, qualifier values and subpath segments
//!   are percent-decoded (a malformed escape or bytes that are not UTF-8 refuse the purl),
//!   then written back percent-encoded: everything but ASCII letters, digits, `-._~` and
//!   `:` is encoded, so `%40angular` and `@angular` give one namespace;
//! - for the types whose names the specification declares case-insensitive (`bitbucket`,
//!   `composer`, `github`, `hex`, `pypi`) the namespace and name are lower-cased; `pypi`
//!   names also turn `_` into `-`;
//! - qualifier keys are lower-cased, qualifiers with empty values dropped, the rest sorted
//!   by key; a key given twice refuses the purl;
//! - empty, `.` and `..` subpath segments are dropped.

use std::fmt::{self, Write as _};

/// A parsed package URL; its [`Display`](fmt::Display) is the canonical string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purl {
    ty: String,
    namespace: Vec<String>,
    name: String,
    version: Option<String>,
    qualifiers: Vec<(String, String)>,
    subpath: Vec<String>,
}

/// Why a string is not a package URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PurlError {
    /// It does not start with `pkg:`.
    #[error("does not start with \"pkg:\"")]
    Scheme,
    /// The type is missing or has characters the specification does not allow.
    #[error("invalid type {0:?}")]
    Type(String),
    /// There is no name after the type.
    #[error("no name")]
    NoName,
    /// A `%` escape is malformed, or the decoded bytes are not UTF-8.
    #[error("invalid percent-encoding in {0:?}")]
    Encoding(String),
    /// A qualifier key is empty, has characters the specification does not allow, or
    /// appears twice.
    #[error("invalid qualifier key {0:?}")]
    QualifierKey(String),
}

// === impl Purl ===

impl Purl {
    /// Parses `s` and normalises it.
    pub fn parse(s: &str) -> Result<Self, PurlError> {
        let s = s.trim();
        let rest = match s.get(..4) {
            Some(scheme) if scheme.eq_ignore_ascii_case("pkg:") => &s[4..],
            _ => return Err(PurlError::Scheme),
        };
        let rest = rest.trim_start_matches('/');
        let (rest, subpath) = match rest.split_once('#') {
            Some((r, sp)) => (r, Some(sp)),
            None => (rest, None),
        };
        let (rest, qualifiers) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (ty, rest) = rest.split_once('/').ok_or(PurlError::NoName)?;
        let ty = ty.to_ascii_lowercase();
        let valid_type = !ty.is_empty()
            && !ty.starts_with(|c: char| c.is_ascii_digit())
            && ty
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'));
        if !valid_type {
            return Err(PurlError::Type(ty));
        }
        // The version follows the last `@`: an npm scope (`@angular`) keeps its own.
        let last_slash = rest.rfind('/');
        let (path, version) = match rest.rfind('@') {
            Some(i) if last_slash.is_none_or(|s| i > s) => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        let mut segments = path
            .trim_matches('/')
            .split('/')
            .filter(|seg| !seg.is_empty())
            .map(decode)
            .collect::<Result<Vec<_>, _>>()?;
        let mut name = segments.pop().ok_or(PurlError::NoName)?;
        if name.is_empty() {
            return Err(PurlError::NoName);
        }
        let mut namespace = segments;
        if matches!(
            ty.as_str(),
            "bitbucket" | "composer" | "github" | "hex" | "pypi"
        ) {
            name = name.to_lowercase();
            for seg in &mut namespace {
                *seg = seg.to_lowercase();
            }
        }
        if ty == "pypi" {
            name = name.replace('_', "-");
        }
        let version = match version {
            Some(v) if !v.is_empty() => Some(decode(v)?),
            _ => None,
        };
        let mut quals = Vec::new();
        for pair in qualifiers
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = key.to_ascii_lowercase();
            let valid_key = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            if !valid_key {
                return Err(PurlError::QualifierKey(key));
            }
            let value = decode(value)?;
            if quals.iter().any(|(k, _)| *k == key) {
                return Err(PurlError::QualifierKey(key));
            }
            if !value.is_empty() {
                quals.push((key, value));
            }
        }
        quals.sort();
        let subpath = subpath
            .unwrap_or("")
            .split('/')
            .filter(|seg| !matches!(*seg, "" | "." | ".."))
            .map(decode)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|seg| !matches!(seg.as_str(), "" | "." | ".."))
            .collect();
        Ok(Self {
            ty,
            namespace,
            name,
            version,
            qualifiers: quals,
            subpath,
        })
    }

    /// The package type, lower-case (`npm`, `deb`, `golang`, …).
    pub fn ty(&self) -> &str {
        &self.ty
    }

    /// The namespace segments, decoded.
    pub fn namespace(&self) -> &[String] {
        &self.namespace
    }

    /// The name, decoded.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version, decoded.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The qualifiers, decoded, sorted by key.
    pub fn qualifiers(&self) -> &[(String, String)] {
        &self.qualifiers
    }
}

impl fmt::Display for Purl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pkg:{}/", self.ty)?;
        for seg in &self.namespace {
            encode(f, seg)?;
            f.write_char('/')?;
        }
        encode(f, &self.name)?;
        if let Some(v) = &self.version {
            f.write_char('@')?;
            encode(f, v)?;
        }
        for (i, (k, v)) in self.qualifiers.iter().enumerate() {
            f.write_char(if i == 0 { '?' } else { '&' })?;
            f.write_str(k)?;
            f.write_char('=')?;
            encode(f, v)?;
        }
        for (i, seg) in self.subpath.iter().enumerate() {
            f.write_char(if i == 0 { '#' } else { '/' })?;
            encode(f, seg)?;
        }
        Ok(())
    }
}

fn decode(s: &str) -> Result<String, PurlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| PurlError::Encoding(s.to_owned()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PurlError::Encoding(s.to_owned()))
}

fn encode(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            f.write_char(char::from(b))?;
        } else {
            write!(f, "%{b:02X}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        match Purl::parse(s) {
            Ok(p) => p.to_string(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(
            canon("PKG:NPM/%40angular/core@12.0.0"),
            "pkg:npm/%40angular/core@12.0.0"
        );
        assert_eq!(
            canon("pkg:npm/@angular/core@12.0.0"),
            "pkg:npm/%40angular/core@12.0.0"
        );
        assert_eq!(
            canon("pkg:pypi/Django_Rest@1.0"),
            "pkg:pypi/django-rest@1.0"
        );
        assert_eq!(
            canon("pkg:GitHub/Package-URL/purl-spec@244fd47e07d1004"),
            "pkg:github/package-url/purl-spec@244fd47e07d1004"
        );
        assert_eq!(
            canon("pkg:deb/debian/curl@7.50.3-1?distro=jessie&ARCH=i386&empty="),
            "pkg:deb/debian/curl@7.50.3-1?arch=i386&distro=jessie"
        );
        assert_eq!(
            canon("pkg:golang/google.golang.org/genproto#googleapis/./api/../annotations"),
            "pkg:golang/google.golang.org/genproto#googleapis/api/annotations"
        );
        assert_eq!(
            canon("pkg:deb/debian/libc6@2.31-13+deb11u5"),
            "pkg:deb/debian/libc6@2.31-13%2Bdeb11u5"
        );
        assert_eq!(canon("pkg://maven/org.x/y@1"), "pkg:maven/org.x/y@1");
    }

    #[test]
    fn canonical_form_is_a_fixed_point() {
        for s in [
            "pkg:npm/%40angular/core@12.0.0?a=b%20c#x/y",
            "pkg:apk/alpine/busybox@1.35.0-r17?arch=aarch64&distro=3.16",
            "pkg:maven/org.apache/commons@1.0",
        ] {
            let once = canon(s);
            assert_eq!(canon(&once), once);
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(Purl::parse("npm/x@1"), Err(PurlError::Scheme));
        assert_eq!(Purl::parse("pkg:npm"), Err(PurlError::NoName));
        assert_eq!(Purl::parse("pkg:npm/@1"), Err(PurlError::NoName));
        assert!(matches!(Purl::parse("pkg:1x/y"), Err(PurlError::Type(_))));
        assert!(matches!(Purl::parse("pkg:n p/y"), Err(PurlError::Type(_))));
        assert!(matches!(
            Purl::parse("pkg:npm/a%zz"),
            Err(PurlError::Encoding(_))
        ));
        assert!(matches!(
            Purl::parse("pkg:npm/a%ff"),
            Err(PurlError::Encoding(_))
        ));
        assert!(matches!(
            Purl::parse("pkg:npm/a?x=1&X=2"),
            Err(PurlError::QualifierKey(_))
        ));
    }
}
