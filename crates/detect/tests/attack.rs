//! Every rule's technique is a live MITRE ATT&CK for ICS technique, with the name we give it.
//! The STIX bundle is read from the shared data folder beside the repository; it is not
//! copied into the repository.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use gatehouse_detect::Engine;

const BUNDLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/data/attack/ics-attack.json"
);

#[test]
fn every_rule_maps_to_a_live_ics_technique() {
    let Ok(text) = std::fs::read_to_string(BUNDLE) else {
        gatehouse_testkit::skip(format!("{BUNDLE} is absent (the shared data folder)"));
        return;
    };
    let bundle: serde_json::Value = serde_json::from_str(&text).unwrap();
    // technique id -> (name, revoked or deprecated)
    let mut techniques: HashMap<String, (String, bool)> = HashMap::new();
    for o in bundle["objects"].as_array().unwrap() {
        if o["type"] != "attack-pattern" {
            continue;
        }
        let dead = o["revoked"].as_bool().unwrap_or(false)
            || o["x_mitre_deprecated"].as_bool().unwrap_or(false);
        let name = o["name"].as_str().unwrap_or_default().to_owned();
        for r in o["external_references"].as_array().into_iter().flatten() {
            if r["source_name"] == "mitre-attack"
                && let Some(id) = r["external_id"].as_str()
            {
                techniques.insert(id.to_owned(), (name.clone(), dead));
            }
        }
    }
    assert!(techniques.len() > 50, "the bundle holds too few techniques");
    for rule in Engine::rules() {
        let Some((name, dead)) = techniques.get(rule.technique) else {
            panic!("{}: {} is not an ICS technique", rule.name, rule.technique);
        };
        assert!(
            !dead,
            "{}: {} is revoked or deprecated",
            rule.name, rule.technique
        );
        assert_eq!(
            name, rule.technique_name,
            "{}: {} is named {name:?}",
            rule.name, rule.technique
        );
    }
}
