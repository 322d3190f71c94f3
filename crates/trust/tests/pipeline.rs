//! The three parts together, as the server will chain them: the documented profile, the
//! facts of a device, its score and tier, and the verdict the default policies give it.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use gatehouse_trust::policy::{DeviceAttrs, PolicyEngine, ProfileTopics, compile};
use gatehouse_trust::profile::ModelProfile;
use gatehouse_trust::score::{
    CertificateKey, DefaultCredentials, Facts, FirmwareFact, IdentityAssurance, ScoreConfig, score,
};
use gatehouse_types::{DeviceId, DeviceRef, TenantId, Tier, TopicFilter};

fn profile() -> ModelProfile {
    let doc = include_str!("../../../docs/trust.md");
    let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let len = doc[start..].find("```").expect("a closed toml block");
    ModelProfile::parse(&doc[start..start + len]).expect("the documented example is valid")
}

fn device() -> DeviceRef {
    DeviceRef::new(
        TenantId::new("acme").expect("tenant"),
        DeviceId::new("thermo-7").expect("device"),
    )
}

fn verdict_for(firmware: &str) -> (Tier, gatehouse_trust::policy::Verdict) {
    let profile = profile();
    let mut facts = Facts::new(IdentityAssurance::Idevid);
    facts.posture_reported = true;
    facts.firmware = Some(FirmwareFact {
        version: firmware.into(),
        status: profile.firmware_status(firmware),
    });
    facts.default_credentials = DefaultCredentials::Changed;
    facts.certificate_key = Some(CertificateKey::Ecdsa { bits: 256 });
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let assessment = score(&facts, &ScoreConfig::default(), now);
    let attrs = DeviceAttrs {
        device: device(),
        model: profile.model().to_owned(),
        tier: assessment.tier,
        score: assessment.score,
        tags: BTreeSet::new(),
        firmware: firmware.to_owned(),
        assurance: "idevid".into(),
    };
    let topics = ProfileTopics::from(&profile);
    let verdict = compile(&attrs, &topics, &PolicyEngine::with_defaults(), 1);
    (assessment.tier, verdict)
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::new(s).expect("filter")
}

#[test]
fn outdated_firmware_restricts_commands_until_the_current_release_is_reported() {
    let command = filter("devices/thermo-7/commands/+");
    let telemetry = "devices/thermo-7/telemetry/temp";

    let (tier, restricted) = verdict_for("2.3.1");
    assert_eq!(tier, Tier::Restricted);
    assert!(restricted.may_connect());
    assert!(
        restricted.may_publish(telemetry).is_some(),
        "telemetry stays allowed"
    );
    assert!(
        !restricted.may_subscribe(&command),
        "a restricted device may not take commands: {:?}",
        restricted.explanation()
    );

    let (tier, trusted) = verdict_for("2.4.1");
    assert_eq!(tier, Tier::Trusted);
    assert!(
        trusted.may_subscribe(&command),
        "{:?}",
        trusted.explanation()
    );
    // Restricted rates are half the trusted ones.
    let rate = |v: &gatehouse_trust::policy::Verdict| {
        v.may_publish(telemetry)
            .and_then(|a| a.rate_per_sec)
            .expect("a rated topic")
    };
    assert!((rate(&restricted) * 2.0 - rate(&trusted)).abs() < 1e-9);
}
