//! Shared compilation and the verdict table: the pieces the gate reads on every packet.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_trust::policy::{
    CompileCache, DeviceAttrs, PolicyEngine, ProfileTopics, PublishCheck, TopicKind, TopicRule,
    Verdict, VerdictTable, compile, compile_shared,
};
use gatehouse_types::{Score, Tier};
use proptest::prelude::*;

fn rule(pattern: &str, kind: TopicKind, rate: Option<f64>, burst: Option<u32>) -> TopicRule {
    TopicRule {
        pattern: pattern.to_owned(),
        kind,
        rate_per_sec: rate,
        burst,
    }
}

fn topics() -> ProfileTopics {
    ProfileTopics {
        publish: vec![
            rule(
                "devices/{device}/telemetry/#",
                TopicKind::Telemetry,
                Some(2.0),
                Some(3),
            ),
            rule(
                "devices/{device}/cmd/response",
                TopicKind::Command,
                None,
                None,
            ),
        ],
        subscribe: vec![rule(
            "devices/{device}/cmd/#",
            TopicKind::Command,
            None,
            None,
        )],
    }
}

fn attrs(device: &str, tier: Tier, score: u8, tags: &[&str]) -> DeviceAttrs {
    DeviceAttrs {
        device: format!("acme/{device}").parse().expect("device ref"),
        model: "thermo".into(),
        tier,
        score: Score::new(score).expect("score"),
        tags: tags
            .iter()
            .map(|t| (*t).to_owned())
            .collect::<BTreeSet<_>>(),
        firmware: "1.0".into(),
        assurance: "token".into(),
    }
}

/// What a verdict grants, without its epoch: the things sharing must not change.
fn grants(v: &Verdict) -> String {
    format!(
        "{} {:?} {:?} {:?} {:?} {:?}",
        v.may_connect(),
        v.publish(),
        v.subscribe(),
        v.denied_publish(),
        v.denied_subscribe(),
        v.explanation()
    )
}

fn tier_strategy() -> impl Strategy<Value = Tier> {
    prop_oneof![
        Just(Tier::Trusted),
        Just(Tier::Restricted),
        Just(Tier::Quarantined),
        Just(Tier::Blocked)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Sharing decisions between devices of a class changes no verdict: the verdict of a
    /// device compiled after another of its class is the one compiled on its own.
    #[test]
    fn shared_compilation_gives_the_verdict_compiled_alone(
        classes in proptest::collection::vec((tier_strategy(), 0u8..=100, proptest::bool::ANY), 1..6),
        devices in proptest::collection::vec("[a-z][a-z0-9]{0,6}", 1..6),
    ) {
        let engine = PolicyEngine::with_defaults();
        prop_assert!(engine.is_device_independent());
        let cache = CompileCache::new();
        for (tier, score, tagged) in &classes {
            let tags: &[&str] = if *tagged { &["lab"] } else { &[] };
            for d in &devices {
                let a = attrs(d, *tier, *score, tags);
                let shared = compile_shared(&a, &topics(), "thermo@1", &engine, 1, &cache);
                let alone = compile(&a, &topics(), &engine, 1);
                prop_assert_eq!(grants(&shared), grants(&alone));
            }
        }
    }
}

#[test]
fn policies_that_name_a_device_are_not_shared() {
    let mut engine = PolicyEngine::with_defaults();
    engine
        .add(
            r#"@id("no-d2")
forbid (principal, action, resource) when { principal.device == "d2" };"#,
        )
        .expect("valid policy");
    assert!(!engine.is_device_independent());
    let cache = CompileCache::new();
    let d1 = compile_shared(
        &attrs("d1", Tier::Trusted, 90, &[]),
        &topics(),
        "t",
        &engine,
        1,
        &cache,
    );
    let d2 = compile_shared(
        &attrs("d2", Tier::Trusted, 90, &[]),
        &topics(),
        "t",
        &engine,
        1,
        &cache,
    );
    assert!(d1.may_connect());
    assert!(
        !d2.may_connect(),
        "d2's own forbid must apply: {:?}",
        d2.explanation()
    );
    assert!(cache.is_empty());
}

#[test]
fn table_installs_newer_verdicts_only_and_enforces_rates() {
    let engine = PolicyEngine::with_defaults();
    let table = VerdictTable::new();
    let a = attrs("d1", Tier::Trusted, 90, &[]);
    let v2 = Arc::new(compile(&a, &topics(), &engine, 2));
    assert!(table.install(Arc::clone(&v2)).expect("first").is_none());
    let v1 = Arc::new(compile(
        &attrs("d1", Tier::Blocked, 5, &[]),
        &topics(),
        &engine,
        1,
    ));
    assert!(
        table.install(v1).is_err(),
        "an older epoch must not replace a newer one"
    );
    let entry = table.get("acme", "d1").expect("installed");
    assert_eq!(entry.verdict().epoch(), 2);
    assert!(table.get("other", "d1").is_none());
    assert!(table.get("acme", "d2").is_none());

    let now = Instant::now();
    let topic = "devices/d1/telemetry/t";
    // Burst 3, then the bucket is empty until it refills at 2/s.
    for _ in 0..3 {
        assert!(matches!(
            entry.check_publish(topic, now),
            PublishCheck::Allowed(0)
        ));
    }
    assert_eq!(
        entry.check_publish(topic, now),
        PublishCheck::RateExceeded(0)
    );
    let later = now + Duration::from_millis(600);
    assert!(matches!(
        entry.check_publish(topic, later),
        PublishCheck::Allowed(0)
    ));
    // No rate on this topic; another device's topic is refused.
    for _ in 0..100 {
        assert!(matches!(
            entry.check_publish("devices/d1/cmd/response", now),
            PublishCheck::Allowed(1)
        ));
    }
    assert_eq!(
        entry.check_publish("devices/d2/telemetry/t", now),
        PublishCheck::Refused
    );

    // A new verdict comes with fresh buckets.
    let v3 = Arc::new(compile(&a, &topics(), &engine, 3));
    table.install(v3).expect("newer");
    let fresh = table.get("acme", "d1").expect("installed");
    assert!(matches!(
        fresh.check_publish(topic, now),
        PublishCheck::Allowed(0)
    ));
    assert_eq!(table.len(), 1);
    assert!(table.remove(&"acme/d1".parse().expect("ref")).is_some());
    assert!(table.is_empty());
}
