//! What a device publishes on `$gatehouse/{device}/posture`: the signed envelope, the
//! report inside it, and the signature check against a certificate. Arbitrary bytes give
//! a value or an error, never a panic; a report that parses round-trips through its own
//! encoding.

#![no_main]

use gatehouse_trust::posture::{PostureReport, SignedPosture};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(signed) = SignedPosture::parse(data) {
        let again = SignedPosture::parse(&SignedPosture::encode(&signed.report, &signed.signature));
        assert_eq!(again.as_ref(), Ok(&signed));
        let _ = gatehouse_pki::verify_with_certificate(data, &signed.report, &signed.signature);
    }
    if let Ok(report) = PostureReport::parse(data) {
        assert_eq!(PostureReport::parse(&report.to_bytes()), Ok(report));
    }
});
