//! Trust scores: factors and their evidence, decay, pins, the explanation, and the
//! properties the trust issue asks for (monotone in penalties, deterministic, in range,
//! tier monotone in score).

use std::time::{Duration, SystemTime};

use gatehouse_trust::profile::{FirmwareStatus, ModelProfile};
use gatehouse_trust::score::{
    BehaviourPenalty, CertificateKey, DefaultCredentials, ExternalFactor, Facts, Family,
    FirmwareFact, IdentityAssurance, Pin, RawScoreConfig, ScoreConfig, ScoreConfigError,
    Thresholds, assess, score,
};
use gatehouse_types::{Score, Tier};
use proptest::prelude::*;

const HOUR: Duration = Duration::from_secs(3600);

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn config() -> ScoreConfig {
    ScoreConfig::default()
}

/// A device in good order: IDevID, current firmware, credentials changed, nothing open.
fn healthy() -> Facts {
    let mut f = Facts::new(IdentityAssurance::Idevid);
    f.posture_reported = true;
    f.firmware = Some(FirmwareFact {
        version: "2.4.1".into(),
        status: FirmwareStatus::Current,
    });
    f.default_credentials = DefaultCredentials::Changed;
    f.certificate_key = Some(CertificateKey::Ecdsa { bits: 256 });
    f.clock_skew_secs = Some(2);
    f
}

fn names(a: &gatehouse_trust::score::Assessment) -> Vec<&str> {
    a.factors.iter().map(|f| f.name.as_str()).collect()
}

#[test]
fn healthy_device_is_trusted_without_penalties() {
    let a = score(&healthy(), &config(), now());
    assert_eq!(a.score, Score::MAX);
    assert_eq!(a.tier, Tier::Trusted);
    assert!(a.factors.is_empty());
    assert_eq!(a.to_string(), "score 100/100, tier trusted\nno penalties\n");
}

#[test]
fn outdated_firmware_starts_restricted() {
    let profile = ModelProfile::parse(
        include_str!("../../../docs/trust.md")
            .split("```toml\n")
            .nth(1)
            .and_then(|s| s.split("```").next())
            .expect("the example profile"),
    )
    .expect("a valid profile");
    let mut f = healthy();
    f.firmware = Some(FirmwareFact {
        version: "2.3.1".into(),
        status: profile.firmware_status("2.3.1"),
    });
    let a = score(&f, &config(), now());
    assert_eq!(a.tier, Tier::Restricted);
    assert_eq!(names(&a), ["firmware behind"]);
    assert!(
        a.factors[0]
            .evidence
            .contains("2.3.1 is 1 supported release behind")
    );
    // Reporting the current firmware brings trust back.
    f.firmware = Some(FirmwareFact {
        version: "2.4.1".into(),
        status: profile.firmware_status("2.4.1"),
    });
    assert_eq!(score(&f, &config(), now()).tier, Tier::Trusted);
}

#[test]
fn device_that_never_reported_posture_is_scored_on_what_is_known() {
    let f = Facts::new(IdentityAssurance::Token);
    let a = score(&f, &config(), now());
    assert_eq!(names(&a), ["enrollment token", "posture never reported"]);
    assert_eq!(a.score.get(), 80);
    assert!(a.to_string().contains("posture never reported"));
    // Once posture is reported without a firmware version, the unknowns are penalised
    // one by one instead.
    let mut g = f.clone();
    g.posture_reported = true;
    let b = score(&g, &config(), now());
    assert_eq!(
        names(&b),
        [
            "enrollment token",
            "firmware unknown",
            "default credentials unknown"
        ]
    );
}

#[test]
fn every_factor_has_its_evidence() {
    let mut f = Facts::new(IdentityAssurance::LegacyPassword);
    f.posture_reported = true;
    f.firmware = Some(FirmwareFact {
        version: "1.0".into(),
        status: FirmwareStatus::Unsupported,
    });
    f.default_credentials = DefaultCredentials::Unchanged;
    f.open_services = ["telnet".to_owned(), "mqtt-debug".to_owned()].into();
    f.certificate_key = Some(CertificateKey::Rsa { bits: 1024 });
    f.clock_skew_secs = Some(-900);
    let a = score(&f, &config(), now());
    assert_eq!(a.score, Score::MIN);
    assert_eq!(a.tier, Tier::Blocked);
    let text = a.to_string();
    for needle in [
        "identity: legacy password",
        "software: firmware unsupported: firmware 1.0",
        "configuration: default credentials",
        "reports telnet open",
        "reports mqtt-debug open",
        "certificate key is RSA 1024-bit",
        "clock is 900s behind",
    ] {
        assert!(text.contains(needle), "{needle} in\n{text}");
    }
    // Families come in a fixed order.
    let families: Vec<Family> = a.factors.iter().map(|f| f.family).collect();
    let mut sorted = families.clone();
    sorted.sort();
    assert_eq!(families, sorted);
}

#[test]
fn clock_skew_within_tolerance_and_strong_keys_cost_nothing() {
    let mut f = healthy();
    f.clock_skew_secs = Some(-300);
    f.certificate_key = Some(CertificateKey::Rsa { bits: 2048 });
    assert_eq!(score(&f, &config(), now()).score, Score::MAX);
    f.certificate_key = Some(CertificateKey::Ed25519);
    f.clock_skew_secs = Some(301);
    assert_eq!(names(&score(&f, &config(), now())), ["clock skew"]);
}

#[test]
fn behaviour_penalties_halve_every_half_life() {
    let finding = |age: Duration| BehaviourPenalty {
        name: "topic scan".into(),
        penalty: 40.0,
        at: now() - age,
        evidence: "subscribed to 12 topics outside the profile".into(),
    };
    let penalty_at = |age| {
        let mut f = healthy();
        f.behaviour.push(finding(age));
        score(&f, &config(), now()).factors[0].penalty
    };
    assert!((penalty_at(Duration::ZERO) - 40.0).abs() < 1e-9);
    assert!((penalty_at(24 * HOUR) - 20.0).abs() < 1e-9);
    assert!((penalty_at(48 * HOUR) - 10.0).abs() < 1e-9);
    // A finding dated in the future does not weigh more than a new one.
    let mut f = healthy();
    f.behaviour.push(BehaviourPenalty {
        at: now() + HOUR,
        ..finding(Duration::ZERO)
    });
    assert!((score(&f, &config(), now()).factors[0].penalty - 40.0).abs() < 1e-9);
    let mut f = healthy();
    f.behaviour.push(finding(24 * HOUR));
    let text = score(&f, &config(), now()).to_string();
    assert!(text.contains("24h ago; 40.0 decayed to 20.0"), "{text}");
    assert!(
        text.contains("\n   -20.0  behaviour: topic scan: "),
        "{text}"
    );
}

#[test]
fn external_factors_count_without_changing_callers() {
    let mut f = healthy();
    f.external.push(ExternalFactor {
        family: Family::Vulnerabilities,
        name: "CVE-2024-0001".into(),
        penalty: 35.0,
        evidence: "openssl 1.1.1k in firmware 2.4.1; CVSS 9.8, known exploited".into(),
    });
    let a = score(&f, &config(), now());
    assert_eq!(a.score.get(), 65);
    assert_eq!(a.tier, Tier::Restricted);
    assert_eq!(a.factors[0].family, Family::Vulnerabilities);
    // Nonsense penalties are made harmless: NaN counts nothing, negatives nothing.
    let mut g = healthy();
    for p in [f64::NAN, -50.0] {
        g.external.push(ExternalFactor {
            family: Family::Provenance,
            name: "bad".into(),
            penalty: p,
            evidence: String::new(),
        });
    }
    assert_eq!(score(&g, &config(), now()).score, Score::MAX);
}

#[test]
fn active_pin_overrides_tier_but_not_score() {
    let mut f = healthy();
    f.default_credentials = DefaultCredentials::Unchanged;
    let pin = Pin {
        tier: Tier::Quarantined,
        expires_at: now() + HOUR,
        reason: "investigating incident 17".into(),
        by: "alice".into(),
    };
    let a = assess(&f, &config(), Some(&pin), now());
    assert_eq!(a.score.get(), 70);
    assert_eq!(a.scored_tier, Tier::Restricted);
    assert_eq!(a.tier, Tier::Quarantined);
    assert_eq!(a.pin.as_ref(), Some(&pin));
    let text = a.to_string();
    assert!(
        text.contains("pinned to quarantined by alice until 2027-01-15T09:00:00Z: investigating incident 17 (the score alone gives restricted)"),
        "{text}"
    );
}

#[test]
fn expired_pin_is_ignored() {
    let pin = Pin {
        tier: Tier::Blocked,
        expires_at: now(),
        reason: "maintenance".into(),
        by: "bob".into(),
    };
    let a = assess(&healthy(), &config(), Some(&pin), now());
    assert_eq!(a.tier, Tier::Trusted);
    assert_eq!(a.pin, None);
    let earlier = now() - Duration::from_secs(1);
    assert_eq!(
        assess(&healthy(), &config(), Some(&pin), earlier).tier,
        Tier::Blocked
    );
}

#[test]
fn assessment_serialises_for_the_api() {
    let mut f = healthy();
    f.open_services.insert("telnet".into());
    let pin = Pin {
        tier: Tier::Restricted,
        expires_at: now() + HOUR,
        reason: "r".into(),
        by: "ops".into(),
    };
    let a = assess(&f, &config(), Some(&pin), now());
    let json = serde_json::to_value(&a).expect("serialisable");
    assert_eq!(json["score"], 75);
    assert_eq!(json["tier"], "restricted");
    assert_eq!(json["factors"][0]["family"], "configuration");
    assert_eq!(json["factors"][0]["evidence"], "reports telnet open");
    assert_eq!(json["pin"]["expires_at"], "2027-01-15T09:00:00Z");
    let back: gatehouse_trust::score::Assessment =
        serde_json::from_value(json).expect("deserialisable");
    assert_eq!(back, a);
}

#[test]
fn config_reads_from_toml_with_defaults_and_refuses_unknown_fields() {
    let raw: RawScoreConfig = toml::from_str(
        r#"
half_life = "6h"
[thresholds]
trusted = 90
[weights]
services = { telnet = 50 }
"#,
    )
    .expect("valid config");
    let c = ScoreConfig::new(raw).expect("valid");
    assert_eq!(c.half_life(), 6 * HOUR);
    assert_eq!(c.thresholds().trusted, 90);
    assert_eq!(c.thresholds().restricted, 50);
    assert_eq!(c.weights().services.get("telnet"), Some(&50.0));
    assert_eq!(c.weights().services.get("ssh"), None);
    assert!(toml::from_str::<RawScoreConfig>("half_lif = \"6h\"").is_err());
    let raw: RawScoreConfig = toml::from_str("[thresholds]\nrestricted = 85").expect("well-formed");
    assert!(matches!(
        ScoreConfig::new(raw),
        Err(ScoreConfigError::Thresholds {
            trusted: 80,
            restricted: 85,
            quarantined: 20
        })
    ));
}

// === properties ===

fn arb_identity() -> impl Strategy<Value = IdentityAssurance> {
    prop_oneof![
        Just(IdentityAssurance::Idevid),
        Just(IdentityAssurance::Token),
        Just(IdentityAssurance::LegacyPassword),
    ]
}

fn arb_firmware() -> impl Strategy<Value = Option<FirmwareFact>> {
    let status = prop_oneof![
        Just(FirmwareStatus::Current),
        (0u32..10).prop_map(|releases| FirmwareStatus::Behind { releases }),
        Just(FirmwareStatus::Unsupported),
        Just(FirmwareStatus::Unknown),
    ];
    proptest::option::of(
        ("[0-9]\\.[0-9]", status).prop_map(|(version, status)| FirmwareFact { version, status }),
    )
}

fn arb_family() -> impl Strategy<Value = Family> {
    prop_oneof![
        Just(Family::Identity),
        Just(Family::Software),
        Just(Family::Vulnerabilities),
        Just(Family::Configuration),
        Just(Family::Behaviour),
        Just(Family::Provenance),
    ]
}

fn arb_behaviour() -> impl Strategy<Value = BehaviourPenalty> {
    (
        "[a-c]{1,3}",
        0.0f64..150.0,
        0u64..(30 * 86_400),
        "[a-c ]{0,6}",
    )
        .prop_map(|(name, penalty, age, evidence)| BehaviourPenalty {
            name,
            penalty,
            at: now() - Duration::from_secs(age),
            evidence,
        })
}

fn arb_external() -> impl Strategy<Value = ExternalFactor> {
    (arb_family(), "[a-c]{1,3}", 0.0f64..150.0, "[a-c ]{0,6}").prop_map(
        |(family, name, penalty, evidence)| ExternalFactor {
            family,
            name,
            penalty,
            evidence,
        },
    )
}

fn arb_service() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("telnet".to_owned()),
        Just("ssh".to_owned()),
        Just("http".to_owned()),
        "[a-z]{1,6}",
    ]
}

fn arb_facts() -> impl Strategy<Value = Facts> {
    (
        arb_identity(),
        any::<bool>(),
        arb_firmware(),
        proptest::collection::btree_set(arb_service(), 0..4),
        prop_oneof![
            Just(DefaultCredentials::Unchanged),
            Just(DefaultCredentials::Changed),
            Just(DefaultCredentials::Unknown),
            Just(DefaultCredentials::NotApplicable),
        ],
        proptest::option::of(prop_oneof![
            Just(CertificateKey::Ed25519),
            (128u32..521).prop_map(|bits| CertificateKey::Ecdsa { bits }),
            (512u32..4096).prop_map(|bits| CertificateKey::Rsa { bits }),
        ]),
        proptest::option::of(-3600i64..3600),
        proptest::collection::vec(arb_behaviour(), 0..4),
        proptest::collection::vec(arb_external(), 0..4),
    )
        .prop_map(
            |(identity, posture, firmware, services, creds, key, skew, behaviour, external)| {
                let mut f = Facts::new(identity);
                f.posture_reported = posture;
                f.firmware = firmware;
                f.open_services = services;
                f.default_credentials = creds;
                f.certificate_key = key;
                f.clock_skew_secs = skew;
                f.behaviour = behaviour;
                f.external = external;
                f
            },
        )
}

/// One more penalty of any kind.
#[derive(Debug, Clone)]
enum Extra {
    Behaviour(BehaviourPenalty),
    Service(String),
    External(ExternalFactor),
}

fn arb_extra() -> impl Strategy<Value = Extra> {
    prop_oneof![
        arb_behaviour().prop_map(Extra::Behaviour),
        arb_service().prop_map(Extra::Service),
        arb_external().prop_map(Extra::External),
    ]
}

fn arb_config() -> impl Strategy<Value = ScoreConfig> {
    (
        1u8..=100,
        1u8..=100,
        1u8..=100,
        1u64..(7 * 86_400),
        0.0f64..3.0,
    )
        .prop_filter_map("ordered thresholds", |(a, b, c, half_life, mult)| {
            let mut t = [a, b, c];
            t.sort_unstable();
            let mut raw = RawScoreConfig {
                thresholds: Thresholds {
                    trusted: t[2],
                    restricted: t[1],
                    quarantined: t[0],
                },
                half_life: Duration::from_secs(half_life),
                ..RawScoreConfig::default()
            };
            raw.weights.behaviour = mult;
            raw.weights.external = mult;
            ScoreConfig::new(raw).ok()
        })
}

proptest! {
    #[test]
    fn score_never_rises_when_a_penalty_is_added(
        facts in arb_facts(),
        extra in arb_extra(),
        config in arb_config(),
    ) {
        let before = score(&facts, &config, now());
        let mut more = facts.clone();
        match extra {
            Extra::Behaviour(b) => more.behaviour.push(b),
            Extra::Service(s) => { more.open_services.insert(s); }
            Extra::External(x) => more.external.push(x),
        }
        let after = score(&more, &config, now());
        prop_assert!(after.score <= before.score, "{} then {}", before, after);
        prop_assert!(after.scored_tier <= before.scored_tier);
    }

    #[test]
    fn same_facts_give_the_same_score(facts in arb_facts(), config in arb_config(), seed in any::<u64>()) {
        let a = score(&facts, &config, now());
        prop_assert_eq!(&a, &score(&facts.clone(), &config, now()));
        // The order in which facts were gathered does not matter either.
        let mut shuffled = facts.clone();
        let n = shuffled.behaviour.len().max(1);
        shuffled.behaviour.rotate_left(usize::try_from(seed).unwrap_or(0) % n);
        shuffled.external.reverse();
        prop_assert_eq!(&a, &score(&shuffled, &config, now()));
        prop_assert_eq!(a.to_string(), score(&shuffled, &config, now()).to_string());
    }

    #[test]
    fn score_is_within_0_to_100(facts in arb_facts(), config in arb_config()) {
        let a = score(&facts, &config, now());
        prop_assert!(a.score <= Score::MAX);
        prop_assert!(Score::new(a.score.get()).is_ok());
        let total: f64 = a.factors.iter().map(|f| f.penalty).sum();
        prop_assert_eq!(a.score, Score::saturating_from_f64(100.0 - total));
        prop_assert!(a.factors.iter().all(|f| f.penalty > 0.0 && f.penalty <= 100.0));
    }

    #[test]
    fn tier_is_monotone_in_score(config in arb_config(), a in 0u8..=100, b in 0u8..=100) {
        let (lo, hi) = (a.min(b), a.max(b));
        let t = config.thresholds();
        let tier = |s| t.tier(Score::new(s).expect("in range"));
        prop_assert!(tier(lo) <= tier(hi));
        prop_assert_eq!(tier(100), Tier::Trusted);
        prop_assert_eq!(tier(0), if t.quarantined == 0 { Tier::Quarantined } else { Tier::Blocked });
    }
}

#[test]
fn documented_config_example_is_valid() {
    let doc = include_str!("../../../docs/trust.md");
    let start = doc
        .find("```toml\nhalf_life")
        .expect("the score configuration example")
        + "```toml\n".len();
    let len = doc[start..].find("```").expect("a closed block");
    let raw: RawScoreConfig = toml::from_str(&doc[start..start + len]).expect("valid TOML");
    let c = ScoreConfig::new(raw).expect("a valid configuration");
    assert_eq!(c.half_life(), 12 * HOUR);
    assert_eq!(c.thresholds().trusted, 85);
    assert_eq!(c.weights().services.len(), 3);
}

#[test]
fn a_behaviour_penalty_halves_every_half_life_and_never_grows() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let hour = Duration::from_secs(3600);
    let at = |ago: Duration| BehaviourPenalty {
        name: "publish_flood".into(),
        penalty: 20.0,
        at: now - ago,
        evidence: String::new(),
    };
    let left = |ago: Duration| at(ago).remaining(hour, now);
    assert!((left(Duration::ZERO) - 1.0).abs() < 1e-12);
    assert!((left(hour) - 0.5).abs() < 1e-12);
    assert!((left(hour * 3) - 0.125).abs() < 1e-12);
    let future = BehaviourPenalty {
        at: now + hour,
        ..at(Duration::ZERO)
    };
    assert!(
        (future.remaining(hour, now) - 1.0).abs() < 1e-12,
        "a clock step back adds nothing"
    );
}
