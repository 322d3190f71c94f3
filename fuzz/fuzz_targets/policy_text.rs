//! Cedar policy text (`gatehouse_trust::policy::PolicyEngine::load`), as any operator who may
//! validate a set can send it: arbitrary text gives a loaded set or an error, never a panic
//! nor a stack overflow. The depth scan never recurses and is bounded by the text; a text it
//! passes is parsed on the checker thread; an accepted set compiles a verdict for a device.

#![no_main]

use std::collections::BTreeSet;

use gatehouse_trust::policy::limits::{PolicyLimits, nesting};
use gatehouse_trust::policy::{
    DeviceAttrs, PolicyEngine, ProfileTopics, TopicKind, TopicRule, compile,
};
use gatehouse_types::{Score, Tier};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The estimate counts at least one level, and no more than one a character plus one.
    let (depth, _) = nesting(text);
    assert!(depth >= 1 && depth <= text.chars().count() + 1, "{depth}");
    let mut engine = PolicyEngine::with_defaults().with_limits(PolicyLimits::default());
    let before = engine.generation();
    match engine.load(text) {
        Ok(()) => {
            assert_eq!(engine.generation(), before + 1);
            assert_eq!(engine.source(), text);
            let device = DeviceAttrs {
                device: "acme/thermo-1".parse().expect("device ref"),
                model: "thermo".to_owned(),
                tier: Tier::Trusted,
                score: Score::new(90).expect("score"),
                tags: BTreeSet::new(),
                firmware: "1.0.0".to_owned(),
                assurance: "idevid".to_owned(),
            };
            let topics = ProfileTopics {
                publish: vec![TopicRule {
                    pattern: "devices/{device}/telemetry/#".to_owned(),
                    kind: TopicKind::Telemetry,
                    rate_per_sec: None,
                    burst: None,
                }],
                subscribe: vec![],
            };
            let _ = compile(&device, &topics, &engine, 1);
        }
        // A refused text leaves the set in force.
        Err(_) => assert_eq!(engine.generation(), before),
    }
});
