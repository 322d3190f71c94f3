//! Every seed of the `decode` fuzz target, replayed as an ordinary test with the target's
//! own checks: an accepted packet round-trips, a refused frame leaves the buffer as it
//! was, and tighter user property limits refuse for that reason or change nothing.

use std::path::Path;

use bytes::BytesMut;
use gatehouse_mqtt::{
    DecodeError, DecodeLimits, ProtocolVersion, decode, decode_with, encode, encoded_len,
    peek_frame,
};

fn check(data: &[u8]) -> Result<usize, String> {
    let mut tight = DecodeLimits::new(u32::MAX);
    tight.max_user_properties = 2;
    tight.max_user_property_bytes = 16;
    let mut accepted = 0;
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut buf = BytesMut::from(data);
        loop {
            let before = buf.clone();
            match decode(&mut buf, version, u32::MAX) {
                Ok(Some(packet)) => {
                    accepted += 1;
                    let consumed = before.len() - buf.len();
                    if peek_frame(&before, u32::MAX) != Ok(Some(consumed)) {
                        return Err("peek_frame disagrees".into());
                    }
                    let mut out = BytesMut::new();
                    encode(&packet, version, &mut out).map_err(|e| e.to_string())?;
                    if out.len() != encoded_len(&packet, version) {
                        return Err("encoded_len disagrees".into());
                    }
                    if decode(&mut out, version, u32::MAX) != Ok(Some(packet.clone())) {
                        return Err(format!("{packet:?} does not round-trip"));
                    }
                    let mut again = before.clone();
                    match decode_with(&mut again, version, &tight) {
                        Ok(Some(p)) if p == packet => {}
                        Err(
                            DecodeError::TooManyUserProperties { .. }
                            | DecodeError::UserPropertiesTooLarge { .. },
                        ) if again == before => {}
                        other => return Err(format!("tight limits gave {other:?}")),
                    }
                }
                Ok(None) => break,
                Err(_) if buf == before => break,
                Err(e) => return Err(format!("{e} changed the buffer")),
            }
        }
    }
    Ok(accepted)
}

#[test]
fn every_decode_seed_passes_the_fuzz_targets_checks() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/decode");
    let mut seeds = 0;
    let mut accepted = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/seeds/decode is there") {
        let path = entry.expect("a directory entry").path();
        let data = std::fs::read(&path).expect("a readable seed");
        match check(&data) {
            Ok(n) => accepted += n,
            Err(e) => panic!("{}: {e}", path.display()),
        }
        seeds += 1;
    }
    assert!(seeds >= 10, "only {seeds} seeds");
    assert!(
        accepted >= seeds,
        "most seeds should decode: {accepted} of {seeds}"
    );
}
