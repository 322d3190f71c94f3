//! Model profiles: the example in docs/trust.md, validation errors, firmware status and
//! topic-pattern matching against a naive reference.

use gatehouse_trust::profile::{
    Direction, FirmwareStatus, KeyAlgorithm, ModelProfile, PayloadFormat, ProfileError, TopicKind,
    TopicPattern,
};
use gatehouse_types::{DeviceRef, Topic};
use proptest::prelude::*;

/// The example profile of docs/trust.md: the first TOML block of the document.
fn example() -> &'static str {
    let doc = include_str!("../../../docs/trust.md");
    let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let len = doc[start..].find("```").expect("a closed toml block");
    &doc[start..start + len]
}

fn profile() -> ModelProfile {
    ModelProfile::parse(example()).expect("the documented example is valid")
}

fn dev(s: &str) -> DeviceRef {
    s.parse().expect("a valid device reference")
}

fn topic(s: &str) -> Topic {
    Topic::new(s).expect("a valid topic")
}

#[test]
fn documented_example_parses() {
    let p = profile();
    assert_eq!(p.manufacturer(), "acme");
    assert_eq!(p.model(), "thermo-2");
    assert_eq!(p.firmware().current.as_str(), "2.4.1");
    assert_eq!(p.firmware().supported.len(), 4);
    assert_eq!(
        p.firmware().signing_key.as_ref().map(|k| k.algorithm),
        Some(KeyAlgorithm::Ed25519)
    );
    let creds = p.default_credentials().unwrap();
    assert_eq!(creds.username, "admin");
    assert!(creds.documented);
    assert_eq!(p.topics().len(), 4);
    let t = &p.topics()[0];
    assert_eq!(t.payload, Some(PayloadFormat::Json));
    assert_eq!(t.fields.len(), 2);
    assert!(t.fields[0].contains(-40.0) && t.fields[0].contains(125.0));
    assert!(!t.fields[0].contains(125.5));
}

#[test]
fn patterns_by_direction_and_kind() {
    let p = profile();
    let strs = |it: Box<dyn Iterator<Item = &TopicPattern> + '_>| -> Vec<String> {
        it.map(|p| p.as_str().to_owned()).collect()
    };
    assert_eq!(
        strs(Box::new(p.publish_patterns(Some(TopicKind::Telemetry)))),
        ["devices/{device}/telemetry/#", "devices/{device}/status"]
    );
    assert!(
        p.publish_patterns(Some(TopicKind::Command))
            .next()
            .is_none()
    );
    assert_eq!(
        strs(Box::new(p.subscribe_patterns(Some(TopicKind::Command)))),
        ["devices/{device}/commands/+", "tenants/{tenant}/broadcast"]
    );
    assert_eq!(p.patterns(Direction::Subscribe, None).count(), 2);
}

#[test]
fn rate_for_a_topic_is_the_first_matching_publish_rule() {
    let p = profile();
    let me = dev("acme/t-1");
    let r = p
        .rate_for(&topic("devices/t-1/telemetry/temp"), &me)
        .unwrap();
    assert_eq!((r.count, r.per.as_secs(), r.burst), (10, 1, 20));
    assert!((r.per_second() - 10.0).abs() < 1e-9);
    let s = p.rate_for(&topic("devices/t-1/status"), &me).unwrap();
    assert_eq!((s.count, s.per.as_secs(), s.burst), (1, 60, 1));
    // Another device's topic, a subscribe topic and an unknown topic have no rule.
    assert_eq!(p.rate_for(&topic("devices/t-2/status"), &me), None);
    assert_eq!(p.rate_for(&topic("devices/t-1/commands/set"), &me), None);
    assert_eq!(p.rate_for(&topic("elsewhere"), &me), None);
}

#[test]
fn firmware_status_against_the_profile() {
    let p = profile();
    assert_eq!(p.firmware_status("2.4.1"), FirmwareStatus::Current);
    assert_eq!(p.firmware_status("v2.4.1"), FirmwareStatus::Current);
    assert_eq!(
        p.firmware_status("2.3.1"),
        FirmwareStatus::Behind { releases: 1 }
    );
    assert_eq!(
        p.firmware_status("2.2"),
        FirmwareStatus::Behind { releases: 3 }
    );
    assert_eq!(p.firmware_status("2.3.5"), FirmwareStatus::Unsupported);
    assert_eq!(p.firmware_status("1.0.0"), FirmwareStatus::Unsupported);
    assert_eq!(p.firmware_status("2.5.0"), FirmwareStatus::Unknown);
    assert_eq!(p.firmware_status("2.4.1-rc.1"), FirmwareStatus::Unsupported);
    assert_eq!(p.firmware_status("garbage"), FirmwareStatus::Unknown);
    assert_eq!(p.firmware_status(""), FirmwareStatus::Unknown);
}

/// Replaces `from` (which must occur once) in the example and parses the result.
fn parse_edited(from: &str, to: &str) -> Result<ModelProfile, ProfileError> {
    let text = example();
    assert_eq!(text.matches(from).count(), 1, "{from}");
    ModelProfile::parse(&text.replacen(from, to, 1))
}

fn invalid(from: &str, to: &str) -> (String, usize, String) {
    match parse_edited(from, to) {
        Err(ProfileError::Invalid {
            field,
            line,
            message,
        }) => (field, line.expect("a line"), message),
        other => panic!("{from} -> {to}: expected an invalid field, got {other:?}"),
    }
}

fn line_in_example(needle: &str) -> usize {
    let text = example();
    text[..text.find(needle).expect("the needle is in the example")]
        .matches('\n')
        .count()
        + 1
}

#[test]
fn invalid_fields_are_named_with_their_line() {
    let (field, line, msg) = invalid(r#"rate = "10/s""#, r#"rate = "0/s""#);
    assert_eq!(field, "topics[0].rate");
    assert_eq!(line, line_in_example(r#"rate = "10/s""#));
    assert!(msg.contains("positive"), "{msg}");

    let (field, _, msg) = invalid("max = 125", "max = -50");
    assert_eq!(field, "topics[0].fields[0].max");
    assert!(msg.contains("less than min"), "{msg}");

    let (field, line, _) = invalid(r#"current = "2.4.1""#, r#"current = "2.4.0""#);
    assert_eq!(field, "firmware.current");
    assert_eq!(line, line_in_example("current ="));

    let (field, _, msg) = invalid(
        r#"pattern = "devices/{device}/status""#,
        r#"pattern = "devices/{device}/telemetry/#""#,
    );
    assert_eq!(field, "topics[1].pattern");
    assert!(msg.contains("twice"), "{msg}");

    let (field, _, _) = invalid(
        r#"pattern = "devices/{device}/status""#,
        r#"pattern = "devices/x{device}/status""#,
    );
    assert_eq!(field, "topics[1].pattern");
    let (field, _, _) = invalid(
        r#"pattern = "devices/{device}/status""#,
        r#"pattern = "devices/#/status""#,
    );
    assert_eq!(field, "topics[1].pattern");
    let (_, _, msg) = invalid(
        r#"pattern = "devices/{device}/status""#,
        r#"pattern = "$SYS/#""#,
    );
    assert!(msg.contains("reserved"), "{msg}");

    let (field, _, _) = invalid("burst = 20", "burst = 0");
    assert_eq!(field, "topics[0].burst");
    let (field, _, _) = invalid(
        r#"payload = "text""#,
        r#"payload = "text"
[[topics.fields]]
name = "x"
max = 1"#,
    );
    assert_eq!(field, "topics[1].fields");
    let (field, _, _) = invalid(r#"model = "thermo-2""#, r#"model = "thermo 2""#);
    assert_eq!(field, "model");
    let (field, _, _) = invalid(r#""2.2.0", "2.3.0""#, r#""2.2.0", "2.2""#);
    assert_eq!(field, "firmware.supported[1]");
    let (field, _, _) = invalid(r#""2.2.0", "2.3.0""#, r#""2.2.0", "3.0""#);
    assert_eq!(field, "firmware.supported[1]");
    let (field, _, _) = invalid("MCowBQYDK2VwAyEA", "MCowBQYDK2VwAyE");
    assert_eq!(field, "firmware.signing_key");
    let (field, _, _) = invalid(
        r#"pattern = "devices/{device}/commands/+"
direction = "subscribe""#,
        r#"pattern = "devices/{device}/commands/+"
direction = "subscribe"
rate = "1/s""#,
    );
    assert_eq!(field, "topics[2].rate");
}

#[test]
fn ecdsa_signing_keys_are_recognised() {
    let p256 = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEwNOaZCsdB7fIeYS8w+aFcn5gLZLn
dauezfnhA39eXzoGANQGdz9xnERqUCMc5IzTMJ3Lj0mAj02mpYQOQOV7hg==
-----END PUBLIC KEY-----";
    let p384 = "MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAE9g1SnuJPN+MYZzQdygXsLNyo2Czx5raH
VoN6Yt/uWy1R01kPNRXUsozj4qbMXzpxNwNkyUeP2VOYnJ0tLXhLlfWpT2B2vp56
mntG+I1mhoX/hAwbhJJszxKlLrmHbDox";
    let ed = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEArLzuft5RobgWGCAXp+LCDYRcelyjKLugzXyfVoD6Vag=
-----END PUBLIC KEY-----";
    for (key, alg) in [
        (p256, KeyAlgorithm::EcdsaP256),
        (p384, KeyAlgorithm::EcdsaP384),
    ] {
        let p = parse_edited(ed, key).unwrap();
        assert_eq!(p.firmware().signing_key.as_ref().unwrap().algorithm, alg);
    }
}

#[test]
fn syntax_errors_and_unknown_fields_give_a_line() {
    match parse_edited("documented = true", "documented = true\ncolour = \"red\"") {
        Err(ProfileError::Syntax { line, message }) => {
            assert_eq!(line, Some(line_in_example("documented = true") + 1));
            assert!(message.contains("colour"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    match parse_edited(
        "broadcast\"\ndirection = \"subscribe\"\nkind = \"command\"",
        "broadcast\"\ndirection = \"subscribe\"\nkind = \"order\"",
    ) {
        Err(e @ ProfileError::Syntax { line: Some(_), .. }) => {
            assert!(e.to_string().starts_with("line "), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        ModelProfile::parse("manufacturer = \"acme\""),
        Err(ProfileError::Syntax { .. })
    ));
    assert!(matches!(
        ModelProfile::parse("= broken"),
        Err(ProfileError::Syntax { line: Some(1), .. })
    ));
}

#[test]
fn error_messages_name_field_and_line() {
    let e = parse_edited(r#"rate = "10/s""#, r#"rate = "ten/s""#).unwrap_err();
    let line = line_in_example(r#"rate = "10/s""#);
    assert!(
        e.to_string()
            .starts_with(&format!("line {line}: topics[0].rate: ")),
        "{e}"
    );
}

// === topic patterns against a naive reference ===

/// The reference: bind the placeholders by text substitution, then compare level lists
/// recursively as MQTT 5.0 §4.7 describes.
fn naive_matches(pattern: &str, topic: &str, device: &DeviceRef) -> bool {
    fn rec(f: &[&str], t: &[&str]) -> bool {
        match (f.first(), t.first()) {
            (Some(&"#"), _) => true,
            (Some(&"+"), Some(_)) => rec(&f[1..], &t[1..]),
            (Some(a), Some(b)) => a == b && rec(&f[1..], &t[1..]),
            (None, None) => true,
            _ => false,
        }
    }
    if topic.starts_with('$') && (pattern.starts_with('+') || pattern.starts_with('#')) {
        return false;
    }
    let bound: Vec<String> = pattern
        .split('/')
        .map(|l| match l {
            "{device}" => device.device.to_string(),
            "{tenant}" => device.tenant.to_string(),
            l => l.to_owned(),
        })
        .collect();
    let f: Vec<&str> = bound.iter().map(String::as_str).collect();
    let t: Vec<&str> = topic.split('/').collect();
    rec(&f, &t)
}

fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ab]{0,2}",
        Just("d1".to_owned()),
        Just("d2".to_owned()),
        Just("acme".to_owned()),
        Just("$x".to_owned()),
    ]
}

fn pattern_level() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => level(),
        1 => Just("+".to_owned()),
        1 => Just("{device}".to_owned()),
        1 => Just("{tenant}".to_owned()),
    ]
}

proptest! {
    #[test]
    fn pattern_matching_agrees_with_naive_reference(
        t in proptest::collection::vec(level(), 1..5),
        p in proptest::collection::vec(pattern_level(), 0..5),
        hash in any::<bool>(),
        device in prop_oneof![Just("d1"), Just("d2")],
    ) {
        let mut levels = p;
        if hash || levels.is_empty() {
            levels.push("#".to_owned());
        }
        let pattern = levels.join("/");
        prop_assume!(!pattern.is_empty());
        let topic = t.join("/");
        let device = dev(&format!("acme/{device}"));
        let compiled = TopicPattern::new(pattern.clone()).expect("generated patterns are valid");
        prop_assert_eq!(
            compiled.matches_topic(&topic, &device),
            naive_matches(&pattern, &topic, &device),
            "pattern {} topic {}", pattern, topic
        );
        // Binding the pattern gives a filter that matches exactly the same topics.
        prop_assert_eq!(
            gatehouse_types::matches(&compiled.bind(&device), &topic),
            compiled.matches_topic(&topic, &device)
        );
    }

    #[test]
    fn any_text_is_refused_or_parsed_without_panic(s in "(?s).{0,300}") {
        let _ = ModelProfile::parse(&s);
    }
}
