//! SBOM documents (`gatehouse_sbom::parse`), uploaded by operators or attached to firmware
//! releases: arbitrary bytes give a reading or a refusal, never a panic. A reading stays
//! within the limits, its purls are canonical (they parse back to themselves), and its
//! components written out as a plain CycloneDX 1.6 document read back to the same
//! components.

#![no_main]

use gatehouse_sbom::{Limits, Purl, SbomError, parse};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_bytes: 8192,
        max_depth: 24,
        max_components: 64,
    };
    let sbom = match parse(data, &limits) {
        Ok(sbom) => sbom,
        Err(SbomError::TooLarge { size, limit }) => {
            assert!(size > limit && size == data.len() as u64);
            return;
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert!(sbom.components.len() <= limits.max_components);
    for c in &sbom.components {
        if let Some(p) = &c.purl {
            let again = Purl::parse(p).map(|p| p.to_string());
            assert_eq!(again.as_deref(), Ok(p.as_str()));
        }
    }
    let components: Vec<Value> = sbom
        .components
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "version": c.version,
                "purl": c.purl,
                "cpe": c.cpe,
                "supplier": c.supplier.as_ref().map(|s| json!({ "name": s })),
            })
        })
        .collect();
    let doc = json!({ "bomFormat": "CycloneDX", "specVersion": "1.6", "components": components });
    let bytes = serde_json::to_vec(&doc).expect("serialisable");
    let again = parse(&bytes, &Limits::default()).expect("our own document reads");
    assert_eq!(again.components.len(), sbom.components.len());
    for (a, b) in sbom.components.iter().zip(&again.components) {
        assert_eq!(
            (&a.name, &a.version, &a.purl, &a.cpe, &a.supplier),
            (&b.name, &b.version, &b.purl, &b.cpe, &b.supplier)
        );
    }
});
