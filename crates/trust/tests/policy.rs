//! Default tiers, policy-set management and operator policies, on a sample thermostat.

use std::collections::BTreeSet;

use gatehouse_trust::policy::{
    DEFAULT_POLICIES, DeviceAttrs, PolicyEngine, PolicyError, PolicySchema, ProfileTopics, SCHEMA,
    TopicKind, TopicRule, Verdict, compile,
};
use gatehouse_types::{Score, Tier, TopicFilter};

fn rule(pattern: &str, kind: TopicKind, rate: Option<f64>, burst: Option<u32>) -> TopicRule {
    TopicRule {
        pattern: pattern.to_owned(),
        kind,
        rate_per_sec: rate,
        burst,
    }
}

/// A thermostat: telemetry out, commands in, command answers out, an outdoor feed in.
fn thermostat() -> ProfileTopics {
    ProfileTopics {
        publish: vec![
            rule(
                "devices/{device}/telemetry/#",
                TopicKind::Telemetry,
                Some(2.0),
                Some(10),
            ),
            rule("devices/{device}/state", TopicKind::Other, Some(0.2), None),
            rule(
                "devices/{device}/cmd/response",
                TopicKind::Command,
                Some(1.0),
                Some(4),
            ),
        ],
        subscribe: vec![
            rule("devices/{device}/cmd/#", TopicKind::Command, None, None),
            rule(
                "tenants/{tenant}/weather/+",
                TopicKind::Telemetry,
                None,
                None,
            ),
        ],
    }
}

fn device(tier: Tier, score: u8, tags: &[&str]) -> DeviceAttrs {
    DeviceAttrs {
        device: "acme/thermo-1".parse().expect("device ref"),
        model: "acme-thermo-2".to_owned(),
        tier,
        score: Score::new(score).expect("score"),
        tags: tags
            .iter()
            .map(|t| (*t).to_owned())
            .collect::<BTreeSet<_>>(),
        firmware: "2.4.1".to_owned(),
        assurance: "idevid".to_owned(),
    }
}

fn verdict(engine: &PolicyEngine, tier: Tier, tags: &[&str]) -> Verdict {
    let score = match tier {
        Tier::Trusted => 92,
        Tier::Restricted => 63,
        Tier::Quarantined => 30,
        Tier::Blocked => 5,
    };
    compile(&device(tier, score, tags), &thermostat(), engine, 7)
}

fn sub(v: &Verdict, filter: &str) -> bool {
    v.may_subscribe(&TopicFilter::new(filter).expect("filter"))
}

#[test]
fn embedded_schema_and_default_policies_are_valid() {
    let mut engine = PolicyEngine::new(PolicySchema::from_cedarschema(SCHEMA).expect("schema"));
    engine.load(DEFAULT_POLICIES).expect("default policies");
    assert_eq!(engine.generation(), 1);
    let ids = engine.policy_ids();
    for id in ["connect", "blocked", "trusted-profile", "quarantine"] {
        assert!(ids.iter().any(|i| i == id), "{id} in {ids:?}");
    }
}

#[test]
fn trusted_device_gets_its_profile() {
    let engine = PolicyEngine::with_defaults();
    let v = verdict(&engine, Tier::Trusted, &[]);
    assert!(v.may_connect());
    assert_eq!(v.epoch(), 7);
    let t = v
        .may_publish("devices/thermo-1/telemetry/temperature")
        .expect("telemetry");
    assert_eq!((t.rate_per_sec, t.burst), (Some(2.0), Some(10)));
    assert_eq!(t.kind, TopicKind::Telemetry);
    assert!(v.may_publish("devices/thermo-1/state").is_some());
    assert!(v.may_publish("devices/thermo-1/cmd/response").is_some());
    assert!(
        v.may_publish("devices/thermo-2/telemetry/temperature")
            .is_none()
    );
    assert!(v.may_publish("devices/thermo-1/other").is_none());
    assert!(v.may_publish("$gatehouse/thermo-1/posture").is_some());
    assert!(v.may_publish("$gatehouse/thermo-1/health").is_some());
    assert!(sub(&v, "devices/thermo-1/cmd/#"));
    assert!(sub(&v, "devices/thermo-1/cmd/+/x"));
    assert!(sub(&v, "tenants/acme/weather/+"));
    assert!(sub(&v, "$share/g/tenants/acme/weather/outdoor"));
    assert!(sub(&v, "$gatehouse/thermo-1/ota/#"));
    assert!(!sub(&v, "devices/thermo-1/#"));
    assert!(!sub(&v, "devices/+/cmd/#"));
    assert!(!sub(&v, "tenants/acme/weather/#"));
    assert!(!sub(&v, "#"));
    assert!(
        v.explanation()
            .iter()
            .any(|l| l.contains("subscribe devices/thermo-1/cmd/#")
                && l.contains("allowed by `trusted-profile`")),
        "{:#?}",
        v.explanation()
    );
}

#[test]
fn restricted_device_gets_telemetry_only_at_half_rate() {
    let engine = PolicyEngine::with_defaults();
    let v = verdict(&engine, Tier::Restricted, &[]);
    assert!(v.may_connect());
    let t = v
        .may_publish("devices/thermo-1/telemetry/temperature")
        .expect("telemetry");
    assert_eq!((t.rate_per_sec, t.burst), (Some(1.0), Some(5)));
    assert!(v.may_publish("devices/thermo-1/state").is_none());
    assert!(v.may_publish("devices/thermo-1/cmd/response").is_none());
    assert!(!sub(&v, "devices/thermo-1/cmd/#"));
    assert!(!sub(&v, "devices/thermo-1/cmd/set"));
    assert!(sub(&v, "tenants/acme/weather/outdoor"));
    assert!(v.may_publish("$gatehouse/thermo-1/posture").is_some());
    assert!(sub(&v, "$gatehouse/thermo-1/ota/#"));
    assert!(
        v.explanation()
            .iter()
            .any(|l| l.contains("subscribe devices/thermo-1/cmd/#")
                && l.contains("refused by `restricted-no-commands`")),
        "{:#?}",
        v.explanation()
    );
}

#[test]
fn refused_command_topics_are_carved_out_of_broader_telemetry_rules() {
    // A profile whose telemetry rule is broad enough to include its command topics.
    let topics = ProfileTopics {
        publish: vec![
            rule("devices/{device}/#", TopicKind::Telemetry, None, None),
            rule("devices/{device}/cmd/#", TopicKind::Command, None, None),
        ],
        subscribe: vec![
            rule("devices/{device}/#", TopicKind::Telemetry, None, None),
            rule("devices/{device}/cmd/#", TopicKind::Command, None, None),
        ],
    };
    let engine = PolicyEngine::with_defaults();
    let v = compile(&device(Tier::Restricted, 60, &[]), &topics, &engine, 1);
    assert!(v.may_publish("devices/thermo-1/temp").is_some());
    assert!(v.may_publish("devices/thermo-1/cmd/ack").is_none());
    assert!(sub(&v, "devices/thermo-1/temp/#"));
    assert!(!sub(&v, "devices/thermo-1/#"));
    assert!(!sub(&v, "devices/thermo-1/+/set"));
    let trusted = compile(&device(Tier::Trusted, 90, &[]), &topics, &engine, 1);
    assert!(sub(&trusted, "devices/thermo-1/#"));
}

#[test]
fn quarantined_device_gets_only_update_and_health_topics() {
    let engine = PolicyEngine::with_defaults();
    let v = verdict(&engine, Tier::Quarantined, &[]);
    assert!(v.may_connect());
    assert!(
        v.may_publish("devices/thermo-1/telemetry/temperature")
            .is_none()
    );
    assert!(v.may_publish("$gatehouse/thermo-1/posture").is_none());
    assert!(v.may_publish("$gatehouse/thermo-1/health").is_some());
    assert!(v.may_publish("$gatehouse/thermo-1/ota/status").is_some());
    assert!(v.may_publish("$gatehouse/thermo-2/health").is_none());
    assert!(sub(&v, "$gatehouse/thermo-1/ota/#"));
    assert!(!sub(&v, "$gatehouse/thermo-1/#"));
    assert!(!sub(&v, "tenants/acme/weather/outdoor"));
    assert!(!sub(&v, "devices/thermo-1/cmd/#"));
    let patterns: Vec<&str> = v.publish().iter().map(|a| a.pattern.as_str()).collect();
    assert_eq!(
        patterns,
        ["$gatehouse/thermo-1/health", "$gatehouse/thermo-1/ota/#"]
    );
}

#[test]
fn blocked_device_may_not_connect() {
    let engine = PolicyEngine::with_defaults();
    let v = verdict(&engine, Tier::Blocked, &[]);
    assert!(!v.may_connect());
    assert!(v.publish().is_empty() && v.subscribe().is_empty());
    assert!(v.may_publish("$gatehouse/thermo-1/health").is_none());
    assert!(!sub(&v, "$gatehouse/thermo-1/ota/#"));
    assert!(
        v.explanation()
            .iter()
            .any(|l| l.starts_with("connect: refused by `blocked`")),
        "{:#?}",
        v.explanation()
    );
}

#[test]
fn invalid_policy_set_is_refused_and_the_old_one_stays() {
    let mut engine = PolicyEngine::with_defaults();
    let before = verdict(&engine, Tier::Trusted, &[]);

    let unknown_attribute = r#"
        @id("by-colour")
        permit (principal, action == Action::"publish", resource)
        when { principal.colour == "red" };
    "#;
    let err = engine.load(unknown_attribute).expect_err("refused");
    assert!(matches!(err, PolicyError::Invalid(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("by-colour"), "{message}");
    assert!(message.contains("colour"), "{message}");

    let syntax = "permit (principal, action, resource) when { principal.tier == };";
    assert!(matches!(engine.load(syntax), Err(PolicyError::Parse(_))));

    let wrong_resource = r#"
        permit (principal, action == Action::"connect", resource)
        when { resource.kind == "telemetry" };
    "#;
    assert!(matches!(
        engine.add(wrong_resource),
        Err(PolicyError::Invalid(_))
    ));

    let clash = r#"
        @id("connect") permit (principal, action == Action::"connect", resource);
    "#;
    assert!(matches!(engine.add(clash), Err(PolicyError::Ids(_))));

    let template = "permit (principal == ?principal, action, resource);";
    assert!(matches!(
        engine.load(template),
        Err(PolicyError::Templates(_))
    ));

    assert_eq!(engine.generation(), 1);
    assert_eq!(engine.source(), DEFAULT_POLICIES);
    let after = verdict(&engine, Tier::Trusted, &[]);
    assert_eq!(before.publish(), after.publish());
    assert_eq!(before.subscribe(), after.subscribe());
}

#[test]
fn operator_policy_added_to_defaults_takes_effect() {
    let mut engine = PolicyEngine::with_defaults();
    engine
        .add(
            r#"
            // Lab devices never publish on command topics.
            @id("lab-no-command-publish")
            forbid (principal, action == Action::"publish", resource)
            when {
              principal.tags.contains("lab") &&
              resource.name like "devices/*/cmd/*"
            };
            "#,
        )
        .expect("valid policy");
    assert_eq!(engine.generation(), 2);

    let lab = verdict(&engine, Tier::Trusted, &["lab"]);
    assert!(lab.may_publish("devices/thermo-1/cmd/response").is_none());
    assert!(lab.may_publish("devices/thermo-1/telemetry/t").is_some());
    assert!(sub(&lab, "devices/thermo-1/cmd/#"));
    assert!(
        lab.explanation()
            .iter()
            .any(|l| l.contains("refused by `lab-no-command-publish`")),
        "{:#?}",
        lab.explanation()
    );
    let other = verdict(&engine, Tier::Trusted, &["field"]);
    assert!(other.may_publish("devices/thermo-1/cmd/response").is_some());
}

#[test]
fn operator_policy_can_replace_the_defaults() {
    let mut engine = PolicyEngine::with_defaults();
    engine
        .load(
            r#"
            @id("connect-idevid-only")
            permit (principal, action == Action::"connect", resource)
            when { principal.assurance == "idevid" && principal in Tenant::"acme" };

            @id("profile-above-70")
            permit (principal, action in [Action::"publish", Action::"subscribe"], resource)
            when { resource.in_profile && principal.score >= 70 };
            "#,
        )
        .expect("valid set");
    let v = verdict(&engine, Tier::Trusted, &[]);
    assert!(v.may_connect());
    assert!(v.may_publish("devices/thermo-1/state").is_some());
    assert!(v.may_publish("$gatehouse/thermo-1/health").is_none());
    let low = verdict(&engine, Tier::Restricted, &[]);
    assert!(low.may_connect());
    assert!(low.publish().is_empty());
    let mut token = device(Tier::Trusted, 95, &[]);
    token.assurance = "token".to_owned();
    assert!(!compile(&token, &thermostat(), &engine, 1).may_connect());
}

#[test]
fn empty_engine_denies_everything() {
    let engine = PolicyEngine::new(PolicySchema::gatehouse());
    let v = verdict(&engine, Tier::Trusted, &[]);
    assert!(!v.may_connect());
    assert!(v.may_publish("devices/thermo-1/state").is_none());
}

#[test]
fn bad_profile_rules_are_refused_with_a_reason() {
    let topics = ProfileTopics {
        publish: vec![
            rule("devices/{dev}/x", TopicKind::Telemetry, None, None),
            rule(
                "$gatehouse/{device}/ota/#",
                TopicKind::Telemetry,
                None,
                None,
            ),
            rule("devices/{device}/ok", TopicKind::Telemetry, None, None),
        ],
        subscribe: vec![rule("devices/{device}/ok", TopicKind::Command, None, None)],
    };
    let engine = PolicyEngine::with_defaults();
    let v = compile(&device(Tier::Trusted, 90, &[]), &topics, &engine, 1);
    let profile: Vec<&str> = v
        .publish()
        .iter()
        .filter(|a| a.kind != TopicKind::Reserved)
        .map(|a| a.pattern.as_str())
        .collect();
    assert_eq!(profile, ["devices/thermo-1/ok"]);
    assert!(v.subscribe().iter().all(|a| a.kind == TopicKind::Reserved));
    let refused = v
        .explanation()
        .iter()
        .filter(|l| l.contains("refused,"))
        .count();
    assert_eq!(refused, 3, "{:#?}", v.explanation());
}

#[test]
fn cached_decisions_agree_with_uncached_ones() {
    let engine = PolicyEngine::with_defaults();
    for tier in [Tier::Trusted, Tier::Restricted, Tier::Quarantined] {
        let v = verdict(&engine, tier, &[]);
        for _ in 0..3 {
            for t in [
                "devices/thermo-1/telemetry/temperature",
                "devices/thermo-1/cmd/response",
                "devices/thermo-1/state",
                "$gatehouse/thermo-1/health",
                "elsewhere",
            ] {
                assert_eq!(v.may_publish(t), v.may_publish_uncached(t), "{tier} {t}");
            }
            for f in ["devices/thermo-1/cmd/#", "tenants/acme/weather/+", "#"] {
                let f = TopicFilter::new(f).expect("filter");
                assert_eq!(v.may_subscribe(&f), v.may_subscribe_uncached(&f));
            }
        }
        // Many distinct topics overflow the bounded cache without changing decisions.
        for i in 0..200 {
            let t = format!("devices/thermo-1/telemetry/{i}");
            assert!(v.may_publish(&t).is_some() == (tier != Tier::Quarantined));
        }
    }
}

#[test]
fn verdicts_serialize_for_the_audit_log() {
    let engine = PolicyEngine::with_defaults();
    let v = verdict(&engine, Tier::Restricted, &[]);
    let json = serde_json::to_value(&v).expect("json");
    assert_eq!(json["tier"], "restricted");
    assert_eq!(json["epoch"], 7);
    assert!(json["explanation"].as_array().is_some_and(|a| a.len() > 3));
}
