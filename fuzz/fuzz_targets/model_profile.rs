//! Model profiles (`gatehouse_trust::profile::ModelProfile::parse`), uploaded by operators:
//! arbitrary text gives a profile or an error with a line that lies in the text, never a
//! panic. An accepted profile's topic patterns all bind for a device and its rates are
//! finite and positive.

#![no_main]

use gatehouse_trust::profile::{ModelProfile, ProfileError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ModelProfile::parse(text) {
        Ok(profile) => {
            assert!(!profile.model().is_empty());
            for rule in profile.topics() {
                if let Some(rate) = rule.rate {
                    let r = rate.per_second();
                    assert!(r.is_finite() && r > 0.0, "{r}");
                }
            }
            let _ = profile.firmware_status("1.0.0");
        }
        Err(ProfileError::Syntax {
            line: Some(line), ..
        }) => assert!(line >= 1 && line <= text.lines().count().max(1) + 1, "{line}"),
        Err(_) => {}
    }
});
