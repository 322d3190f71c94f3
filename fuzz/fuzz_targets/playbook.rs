//! Playbook files (`gatehouse_respond::Playbooks::parse`): arbitrary text gives playbooks or
//! an error, never a panic. Accepted playbooks written back out (defaults filled in) parse
//! to an equal value, and planning with them keeps its promises: a notification names a
//! defined webhook, a finding without a device gets no device action, one without an
//! address no ban.

#![no_main]

use std::collections::BTreeMap;
use std::time::SystemTime;

use gatehouse_respond::{Action, Playbooks};
use gatehouse_types::{DeviceRef, Finding, Severity, Tier};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(playbooks) = Playbooks::parse(text) else {
        return;
    };
    let rendered = playbooks
        .to_toml_with_secrets()
        .expect("valid playbooks render");
    assert_eq!(Playbooks::parse(&rendered).as_ref(), Ok(&playbooks), "{rendered}");

    let kinds: Vec<String> = playbooks
        .playbooks()
        .iter()
        .flat_map(|p| p.when().kinds.iter().cloned())
        .chain(["publish_flood".to_owned()])
        .collect();
    let device = DeviceRef::new(
        "acme".parse().expect("tenant"),
        "cam-1".parse().expect("device"),
    );
    for kind in &kinds {
        for severity in Severity::ALL {
            for (has_device, has_peer) in [(true, true), (true, false), (false, true)] {
                let finding = Finding {
                    at: SystemTime::UNIX_EPOCH,
                    device: has_device.then(|| device.clone()),
                    peer: has_peer.then(|| "192.0.2.1".parse().expect("ip")),
                    kind: kind.clone(),
                    severity,
                    confidence: 0.9,
                    technique: None,
                    summary: String::new(),
                    evidence: BTreeMap::new(),
                };
                for tier in [None, Some(Tier::Restricted)] {
                    for planned in playbooks.plan(&finding, tier, 3) {
                        match &planned.action {
                            Action::Notify { webhook } => {
                                assert!(playbooks.webhook(webhook).is_some(), "{webhook}")
                            }
                            Action::Ban { .. } => assert!(has_peer),
                            a => assert!(!a.needs_device() || has_device, "{a:?}"),
                        }
                    }
                }
            }
        }
    }
});
