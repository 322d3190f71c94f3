//! What devices publish, as the detection engine reads it: arbitrary topics and payload
//! bytes (JSON or not, deeply nested, huge numbers, invalid UTF-8) against a profile with
//! field ranges. The engine never panics, and its features stay finite.

#![no_main]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gatehouse_detect::{DetectConfig, Engine, FieldSpec, ProfileView};
use gatehouse_types::{
    DeviceRef, Identity, IdentitySource, Observation, PublishObservation, TopicPattern,
};
use libfuzzer_sys::fuzz_target;

fn engine() -> Option<Engine> {
    let mut engine = Engine::new(DetectConfig::default());
    let telemetry = TopicPattern::new("devices/{device}/telemetry").ok()?;
    engine.set_profile(ProfileView {
        model: "thermo".into(),
        publish: vec![telemetry.clone()],
        subscribe: vec![TopicPattern::new("devices/{device}/commands/+").ok()?],
        commands: vec![TopicPattern::new("devices/{device}/commands/+").ok()?],
        fields: vec![
            FieldSpec {
                topic: telemetry.clone(),
                name: "temp".into(),
                min: Some(-40.0),
                max: Some(85.0),
                max_step: Some(5.0),
                max_repeats: Some(10),
            },
            FieldSpec {
                topic: telemetry,
                name: "env.humidity".into(),
                min: Some(0.0),
                max: None,
                max_step: None,
                max_repeats: None,
            },
        ],
        max_rate_per_sec: Some(5.0),
    });
    Some(engine)
}

fuzz_target!(|data: &[u8]| {
    let Some(mut engine) = engine() else { return };
    let (Ok(tenant), Ok(device)) = ("default".parse(), "d1".parse()) else {
        return;
    };
    let identity = Arc::new(Identity {
        tenant,
        device,
        source: IdentitySource::CertificateSanUri,
    });
    let d = DeviceRef::from(&*identity);
    engine.set_model(&d, Some("thermo"));
    // The first byte picks the topic; the rest, split in two, are two payloads.
    let (topic, rest) = match data.split_first() {
        Some((b, rest)) if b % 3 == 0 => ("devices/d1/telemetry".to_owned(), rest),
        Some((b, rest)) if b % 3 == 1 => ("devices/other/commands/set".to_owned(), rest),
        Some((_, rest)) => (String::from_utf8_lossy(&rest[..rest.len().min(32)]).into_owned(), rest),
        None => return,
    };
    let mid = rest.len() / 2;
    let mut out = Vec::new();
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for (i, payload) in [&rest[..mid], &rest[mid..], rest].into_iter().enumerate() {
        let obs = Observation::Publish(PublishObservation {
            at: start + Duration::from_millis(i as u64 * 10),
            session: 1,
            identity: identity.clone(),
            topic: Arc::from(topic.as_str()),
            size: payload.len() as u32,
            payload: bytes::Bytes::copy_from_slice(payload),
            qos: (i % 3) as u8,
            retain: i == 2,
            allowed: true,
        });
        engine.observe(&obs, &mut out);
    }
    engine.tick(start + Duration::from_secs(5), &mut out);
    if let Some(f) = engine.features(&d) {
        assert!(format!("{f:?}").find("NaN").is_none(), "features stay finite: {f:?}");
    }
    for finding in &out {
        assert!((0.0..=1.0).contains(&finding.confidence));
    }
});
