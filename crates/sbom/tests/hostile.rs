//! Hostile input never panics the reader: arbitrary bytes, mutated valid documents and
//! valid documents with arbitrary JSON in place of each field the reader uses either read
//! or are refused with an error, and what reads holds its invariants (purls canonical,
//! components within the limit, places that are JSON pointers).

use gatehouse_sbom::{Limits, Purl, Sbom, SbomError, parse};
use proptest::prelude::*;
use serde_json::Value;

const CYCLONEDX: &str = r#"{"bomFormat":"CycloneDX","specVersion":"1.4",
 "metadata":{"component":{"name":"fw","version":"1.0"}},
 "components":[{"name":"openssl","version":"1.1.1k","purl":"pkg:deb/debian/openssl@1.1.1k",
   "cpe":"cpe:2.3:a:openssl:openssl:1.1.1k:*:*:*:*:*:*:*","supplier":{"name":"Debian"},
   "components":[{"name":"libcrypto","version":"1.1.1k","purl":"pkg:deb/debian/libcrypto@1.1.1k"}]},
  {"name":"npm-thing","purl":"pkg:npm/%40scope/thing@2.0.0?b=2&a=1#lib/x"}]}"#;

const SPDX: &str = r#"{"spdxVersion":"SPDX-2.3","name":"fw","packages":[
 {"SPDXID":"SPDXRef-a","name":"busybox","versionInfo":"1.36.1","supplier":"Organization: Alpine",
  "externalRefs":[{"referenceCategory":"PACKAGE-MANAGER","referenceType":"purl",
    "referenceLocator":"pkg:apk/alpine/busybox@1.36.1?arch=aarch64"},
   {"referenceCategory":"SECURITY","referenceType":"cpe23Type",
    "referenceLocator":"cpe:2.3:a:busybox:busybox:1.36.1:*:*:*:*:*:*:*"}]},
 {"SPDXID":"SPDXRef-b","name":"musl","versionInfo":"NOASSERTION"}]}"#;

/// The pointers of the values the reader looks at, in each template.
const CDX_PLACES: &[&str] = &[
    "/bomFormat",
    "/specVersion",
    "/metadata",
    "/metadata/component",
    "/metadata/component/name",
    "/components",
    "/components/0",
    "/components/0/name",
    "/components/0/version",
    "/components/0/purl",
    "/components/0/cpe",
    "/components/0/supplier",
    "/components/0/supplier/name",
    "/components/0/components",
    "/components/0/components/0",
];
const SPDX_PLACES: &[&str] = &[
    "/spdxVersion",
    "/name",
    "/packages",
    "/packages/0",
    "/packages/0/SPDXID",
    "/packages/0/name",
    "/packages/0/versionInfo",
    "/packages/0/supplier",
    "/packages/0/externalRefs",
    "/packages/0/externalRefs/0",
    "/packages/0/externalRefs/0/referenceType",
    "/packages/0/externalRefs/0/referenceLocator",
    "/packages/0/externalRefs/1/referenceLocator",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
        "pkg:[a-zA-Z0-9%@/?#=&.+-]{0,30}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// What every reading and every refusal must satisfy.
fn holds(result: &Result<Sbom, SbomError>, limits: &Limits) {
    match result {
        Ok(sbom) => {
            assert!(sbom.components.len() <= limits.max_components);
            for c in &sbom.components {
                assert!(c.at.pointer.starts_with('/'), "{}", c.at);
                if let Some(p) = &c.purl {
                    let again = Purl::parse(p).map(|p| p.to_string());
                    assert_eq!(again.as_deref(), Ok(p.as_str()), "purl not canonical");
                }
            }
            for p in &sbom.problems {
                assert!(p.at.pointer.starts_with('/'), "{p}");
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_read_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let limits = Limits::default();
        holds(&parse(&bytes, &limits), &limits);
    }

    #[test]
    fn mutated_documents_read_or_are_refused(
        spdx in any::<bool>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let mut doc = if spdx { SPDX } else { CYCLONEDX }.as_bytes().to_vec();
        for (at, byte, op) in edits {
            let i = at.index(doc.len().max(1)).min(doc.len());
            match op {
                0 if i < doc.len() => doc[i] = byte,
                1 => doc.insert(i, byte),
                _ => doc.truncate(i),
            }
        }
        let limits = Limits { max_components: 2, ..Limits::default() };
        holds(&parse(&doc, &limits), &limits);
    }

    #[test]
    fn any_json_in_any_field_reads_or_is_refused(
        spdx in any::<bool>(),
        place in any::<prop::sample::Index>(),
        value in json_value(),
    ) {
        let (template, places) = if spdx { (SPDX, SPDX_PLACES) } else { (CYCLONEDX, CDX_PLACES) };
        let mut doc: Value = serde_json::from_str(template).expect("the template is JSON");
        let pointer = places[place.index(places.len())];
        if let Some(slot) = doc.pointer_mut(pointer) {
            *slot = value;
        }
        let bytes = serde_json::to_vec(&doc).expect("serialisable");
        let limits = Limits::default();
        let result = parse(&bytes, &limits);
        holds(&result, &limits);
        if let Err(SbomError::Invalid { at, .. }) = &result {
            prop_assert!(at.starts_with(pointer), "refusal at {at}, the change at {pointer}");
        }
    }

    #[test]
    fn nesting_past_the_limit_is_refused_before_parsing(depth in 1usize..200, limit in 1usize..100) {
        let doc = format!(
            "{{\"bomFormat\":\"CycloneDX\",\"specVersion\":\"1.4\",\"x\":{}{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let limits = Limits { max_depth: limit, ..Limits::default() };
        let deep = matches!(parse(doc.as_bytes(), &limits), Err(SbomError::TooDeep { .. }));
        prop_assert_eq!(deep, depth + 1 > limit);
    }

    #[test]
    fn a_canonical_purl_is_a_fixed_point(s in "(pkg|PKG):[a-zA-Z0-9%@/?#=&.+:_ -]{0,40}") {
        if let Ok(p) = Purl::parse(&s) {
            let once = p.to_string();
            let twice = Purl::parse(&once).map(|p| p.to_string());
            prop_assert_eq!(twice.as_deref(), Ok(once.as_str()));
        }
    }
}

#[test]
fn the_templates_read_as_documented() {
    let limits = Limits::default();
    let cdx = parse(CYCLONEDX.as_bytes(), &limits).expect("valid");
    let purls: Vec<_> = cdx.components.iter().map(|c| c.purl.as_deref()).collect();
    assert_eq!(
        purls,
        [
            Some("pkg:deb/debian/openssl@1.1.1k"),
            Some("pkg:deb/debian/libcrypto@1.1.1k"),
            Some("pkg:npm/%40scope/thing@2.0.0?a=1&b=2#lib/x"),
        ]
    );
    assert_eq!(cdx.components[1].at.pointer, "/components/0/components/0");
    assert_eq!(cdx.components[0].supplier.as_deref(), Some("Debian"));
    assert_eq!(cdx.problems.len(), 1, "{:?}", cdx.problems);
    let spdx = parse(SPDX.as_bytes(), &limits).expect("valid");
    assert_eq!(spdx.spec_version, "2.3");
    assert_eq!(spdx.components[0].supplier.as_deref(), Some("Alpine"));
    assert!(spdx.components[0].cpe.is_some());
    assert_eq!(spdx.components[1].version, None);
    assert_eq!(
        spdx.problems[0].to_string(),
        "SPDXRef-b (/packages/1): package \"musl\" without a version"
    );
}
