//! SBOM ingestion: a CycloneDX (1.2–1.6) or SPDX (2.2, 2.3) JSON document, from bytes
//! nobody vouches for, to the list of components a firmware version is made of, each with
//! a normalised package URL ([`purl`]) and its CPE when the document gives one.
//!
//! The design decision: a **focused model read from a bounded JSON tree**, not the
//! `cyclonedx-bom` and `spdx-rs` crates. `cyclonedx-bom` 0.8 reads CycloneDX 1.3–1.5 only
//! (no 1.2, which three of our real-world examples are, and no 1.6), and both crates
//! deserialise the whole specification strictly, so a document with one odd field far from
//! the components is refused as a whole; neither bounds nesting depth, which CycloneDX
//! (components inside components) leaves open. Here the input is refused early and
//! cheaply by size ([`Limits::max_bytes`], checked before any parsing, and while reading a
//! file) and by nesting depth ([`Limits::max_depth`], a linear scan before the JSON parser
//! runs), then parsed into a `serde_json::Value`, from which only the fields Gatehouse uses
//! are read, each by its JSON pointer. A field of the wrong type where structure is
//! expected refuses the document naming that pointer ([`SbomError`]); missing or odd data
//! inside a component (no version, an invalid purl) is kept as a [`Problem`] that names
//! its place, and the component is kept.
//!
//! Not read yet: CycloneDX XML and SPDX tag-value (recognised and refused as
//! "unsupported format"), dependencies and relationships, licences, hashes, and VEX
//! statements.

mod cyclonedx;
pub mod purl;
mod spdx;

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

pub use purl::{Purl, PurlError};

/// Bounds on what one document may cost to read. The defaults are safe for a gateway and
/// generous for real SBOMs (the largest of our real-world examples is 3.6 MB with 5,184
/// files and 373 packages). Once SBOMs are stored, these become the `[sbom.limits]` table
/// of the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest document, in bytes (default 32 MiB).
    pub max_bytes: u64,
    /// The deepest nesting of JSON arrays and objects (default 64). The JSON parser has a
    /// recursion limit of its own at 128, so values above that are refused by it instead.
    pub max_depth: usize,
    /// The most components (CycloneDX components, nested ones included, or SPDX
    /// packages) in one document (default 100,000).
    pub max_components: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 32 << 20,
            max_depth: 64,
            max_components: 100_000,
        }
    }
}

/// The document's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// CycloneDX, JSON encoding.
    CycloneDx,
    /// SPDX, JSON encoding.
    Spdx,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::CycloneDx => "CycloneDX",
            Format::Spdx => "SPDX",
        })
    }
}

/// What an SBOM says a piece of software is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sbom {
    /// CycloneDX or SPDX.
    pub format: Format,
    /// The specification version the document declares (`1.4`, `2.3`).
    pub spec_version: String,
    /// The document's name: SPDX `name`, or CycloneDX `metadata.component` name and
    /// version.
    pub name: Option<String>,
    /// The components, in document order (nested CycloneDX components after their parent).
    pub components: Vec<Component>,
    /// What was odd but not fatal, each with its place.
    pub problems: Vec<Problem>,
}

/// One component (CycloneDX) or package (SPDX).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Component {
    /// Where it is in the document: a JSON pointer (`/components/3`), and for SPDX the
    /// package's SPDXID too.
    pub at: Place,
    /// The component's name.
    pub name: String,
    /// Its version, when the document gives one.
    pub version: Option<String>,
    /// Its package URL in canonical form, when the document gives a valid one.
    pub purl: Option<String>,
    /// Its CPE (2.2 URI or 2.3 formatted string), when the document gives one.
    pub cpe: Option<String>,
    /// Its supplier, when the document names one.
    pub supplier: Option<String>,
}

/// A place in a document: a JSON pointer, and the SPDXID of the SPDX element it lies in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Place {
    /// The JSON pointer (RFC 6901) of the value.
    pub pointer: String,
    /// The SPDXID of the package the value belongs to, for SPDX.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spdx_id: Option<String>,
}

impl Place {
    fn new(pointer: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            spdx_id: None,
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pointer = if self.pointer.is_empty() {
            "/"
        } else {
            &self.pointer
        };
        match &self.spdx_id {
            Some(id) => write!(f, "{id} ({pointer})"),
            None => f.write_str(pointer),
        }
    }
}

/// Something odd in a document that does not stop it from being read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Where.
    pub at: Place,
    /// What, in words.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Why a document was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SbomError {
    /// The file could not be read.
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    /// The document is larger than [`Limits::max_bytes`].
    #[error("too large: {size} bytes or more, the limit is {limit}")]
    TooLarge {
        /// The size seen (at least).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A format Gatehouse recognises but does not read yet (CycloneDX XML, SPDX tag-value).
    #[error("unsupported format: {0}")]
    UnsupportedFormat(&'static str),
    /// Neither CycloneDX nor SPDX.
    #[error("not an SBOM: {0}")]
    NotAnSbom(String),
    /// Nested deeper than [`Limits::max_depth`].
    #[error("nested deeper than {limit} levels at line {line} column {column}")]
    TooDeep {
        /// The limit.
        limit: usize,
        /// Where the nesting went past it (1-based).
        line: usize,
        /// Where the nesting went past it (1-based, in bytes).
        column: usize,
    },
    /// Not well-formed JSON.
    #[error("invalid JSON at line {line} column {column}: {message}")]
    Json {
        /// The parser's message.
        message: String,
        /// Where (1-based).
        line: usize,
        /// Where (1-based).
        column: usize,
    },
    /// A specification version this reader does not know.
    #[error("unsupported {format} version {found:?} at {at}")]
    UnsupportedVersion {
        /// The format.
        format: Format,
        /// What the document declares.
        found: String,
        /// The field's pointer.
        at: String,
    },
    /// A value of the wrong type where the structure needs one.
    #[error("{at}: expected {expected}")]
    Invalid {
        /// The value's pointer.
        at: String,
        /// What was expected there.
        expected: &'static str,
    },
    /// More components than [`Limits::max_components`].
    #[error("more than {limit} components (at {at})")]
    TooManyComponents {
        /// The limit.
        limit: usize,
        /// The pointer of the first component past the limit.
        at: String,
    },
}

/// Reads the file at `path`, at most `limits.max_bytes` of it, and parses it.
pub fn read_file(path: &Path, limits: &Limits) -> Result<Sbom, SbomError> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > limits.max_bytes {
        return Err(SbomError::TooLarge {
            size: len,
            limit: limits.max_bytes,
        });
    }
    let mut bytes = Vec::new();
    // The file may grow between the size check and the read: read one byte past the limit
    // at most, to tell.
    file.take(limits.max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    parse(&bytes, limits)
}

/// Parses one SBOM document.
pub fn parse(bytes: &[u8], limits: &Limits) -> Result<Sbom, SbomError> {
    let size = bytes.len() as u64;
    if size > limits.max_bytes {
        return Err(SbomError::TooLarge {
            size,
            limit: limits.max_bytes,
        });
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{' | b'[') => {}
        Some(b'<') => {
            let head = &bytes[..bytes.len().min(4096)];
            return Err(SbomError::UnsupportedFormat(
                if contains_ignore_case(head, b"cyclonedx") {
                    "CycloneDX XML"
                } else {
                    "XML"
                },
            ));
        }
        Some(_) if is_spdx_tag_value(bytes) => {
            return Err(SbomError::UnsupportedFormat("SPDX tag-value"));
        }
        Some(_) => {
            return Err(SbomError::NotAnSbom(
                "neither JSON, XML nor SPDX tag-value".into(),
            ));
        }
        None => return Err(SbomError::NotAnSbom("empty".into())),
    }
    check_depth(bytes, limits.max_depth)?;
    let value: Value = serde_json::from_slice(bytes).map_err(|e| SbomError::Json {
        message: json_message(&e),
        line: e.line(),
        column: e.column(),
    })?;
    let Value::Object(doc) = &value else {
        return Err(SbomError::NotAnSbom(format!(
            "the document is a JSON {}, not an object",
            kind(&value)
        )));
    };
    if doc.contains_key("bomFormat") {
        cyclonedx::read(doc, limits)
    } else if doc.contains_key("spdxVersion") {
        spdx::read(doc, limits)
    } else {
        Err(SbomError::NotAnSbom(
            "a JSON object with neither \"bomFormat\" (CycloneDX) nor \"spdxVersion\" (SPDX)"
                .into(),
        ))
    }
}

/// serde_json's message without its own " at line L column C" suffix (ours says where).
fn json_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    match full.rfind(" at line ") {
        Some(i) => full[..i].to_owned(),
        None => full,
    }
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

fn is_spdx_tag_value(bytes: &[u8]) -> bool {
    bytes
        .split(|b| *b == b'\n')
        .any(|line| line.trim_ascii_start().starts_with(b"SPDXVersion:"))
}

/// Refuses JSON nested deeper than `limit`, before it is parsed: one pass over the bytes,
/// counting brackets outside strings. Malformed JSON passes here and is refused by the
/// parser.
fn check_depth(bytes: &[u8], limit: usize) -> Result<(), SbomError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    let (line, column) = line_column(bytes, i);
                    return Err(SbomError::TooDeep {
                        limit,
                        line,
                        column,
                    });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn line_column(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = offset
        - before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |p| p + 1)
        + 1;
    (line, column)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Escapes a key for a JSON pointer (RFC 6901).
fn pointer_key(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// A string field of an object: absent or null is `None`, a string is `Some` (trimmed,
/// `None` when empty), anything else refuses the document.
fn opt_str<'a>(
    obj: &'a serde_json::Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<Option<&'a str>, SbomError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim()).filter(|s| !s.is_empty())),
        Some(_) => Err(SbomError::Invalid {
            at: format!("{at}/{}", pointer_key(key)),
            expected: "a string",
        }),
    }
}

/// An array field of an object: absent or null is empty, anything else but an array
/// refuses the document.
fn opt_array<'a>(
    obj: &'a serde_json::Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<&'a [Value], SbomError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(SbomError::Invalid {
            at: format!("{at}/{}", pointer_key(key)),
            expected: "an array",
        }),
    }
}

fn object<'a>(v: &'a Value, at: &str) -> Result<&'a serde_json::Map<String, Value>, SbomError> {
    v.as_object().ok_or_else(|| SbomError::Invalid {
        at: at.to_owned(),
        expected: "an object",
    })
}

/// Checks a CPE's shape (2.3 formatted string or 2.2 URI); the CPE itself is kept as given.
fn valid_cpe(cpe: &str) -> bool {
    if let Some(rest) = cpe.strip_prefix("cpe:2.3:") {
        // part, vendor, product, version, update, edition, language, sw_edition,
        // target_sw, target_hw, other: 11 components, escaped colons aside.
        let parts = rest.replace("\\:", "").split(':').count();
        parts == 11 && rest.starts_with(['a', 'o', 'h', '*', '-'])
    } else if let Some(rest) = cpe.strip_prefix("cpe:/") {
        rest.starts_with(['a', 'o', 'h']) && !rest.contains(char::is_whitespace)
    } else {
        false
    }
}

/// Normalises a purl found at `at`, or records why it is not one.
fn normalise_purl(raw: &str, at: &Place, problems: &mut Vec<Problem>) -> Option<String> {
    match Purl::parse(raw) {
        Ok(p) => Some(p.to_string()),
        Err(e) => {
            problems.push(Problem {
                at: at.clone(),
                message: format!("invalid purl {raw:?}: {e}"),
            });
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_counted_outside_strings_only() {
        assert!(check_depth(br#"{"a":"[[[[[[[[[["}"#, 2).is_ok());
        assert!(check_depth(br#"{"a":"\"[[[[[["}"#, 2).is_ok());
        match check_depth(b"{\n [[1]]}", 2) {
            Err(SbomError::TooDeep { line, column, .. }) => assert_eq!((line, column), (2, 3)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sniffing_names_the_formats_not_read() {
        let l = Limits::default();
        let e = parse(
            b"<?xml version=\"1.0\"?><bom xmlns=\"http://cyclonedx.org/schema/bom/1.4\"/>",
            &l,
        );
        assert!(matches!(
            e,
            Err(SbomError::UnsupportedFormat("CycloneDX XML"))
        ));
        let e = parse(b"\nSPDXVersion: SPDX-2.2\nDataLicense: CC0-1.0\n", &l);
        assert!(matches!(
            e,
            Err(SbomError::UnsupportedFormat("SPDX tag-value"))
        ));
        assert!(matches!(parse(b"  ", &l), Err(SbomError::NotAnSbom(_))));
        assert!(matches!(parse(b"[1,2]", &l), Err(SbomError::NotAnSbom(_))));
    }

    #[test]
    fn size_is_checked_first() {
        let l = Limits {
            max_bytes: 4,
            ..Limits::default()
        };
        assert!(matches!(
            parse(b"{\"x\":1}", &l),
            Err(SbomError::TooLarge { size: 7, limit: 4 })
        ));
    }

    #[test]
    fn trailing_text_is_refused_with_its_place() {
        let e = parse(
            b"{\"spdxVersion\":\"SPDX-2.2\"}\nContact Us",
            &Limits::default(),
        );
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("line 2 column 1: trailing characters"),
            "{msg}"
        );
    }

    #[test]
    fn cpe_shapes() {
        assert!(valid_cpe("cpe:2.3:a:openssl:openssl:1.1.1k:*:*:*:*:*:*:*"));
        assert!(valid_cpe("cpe:/a:busybox:busybox:1.35.0"));
        assert!(!valid_cpe("cpe:2.3:a:x"));
        assert!(!valid_cpe("openssl"));
    }
}
