//! Feeds arbitrary bytes to the MQTT decoder under both protocol versions.
//!
//! Beyond "no panic", every packet the decoder accepts must survive a round trip: it
//! encodes (to exactly `encoded_len` bytes) and decodes back to an equal packet. A
//! refused frame must leave the read buffer as it was, and `peek_frame` must agree with
//! the frame length `decode` consumed. Tighter user property limits either refuse a
//! packet for its user properties or decode it to the same packet.

#![no_main]

use bytes::BytesMut;
use gatehouse_mqtt::{
    DecodeError, DecodeLimits, ProtocolVersion, decode, decode_with, encode, encoded_len,
    peek_frame,
};
use libfuzzer_sys::fuzz_target;

/// Two user properties of 16 bytes in all, at most.
fn tight() -> DecodeLimits {
    let mut l = DecodeLimits::new(u32::MAX);
    l.max_user_properties = 2;
    l.max_user_property_bytes = 16;
    l
}

fuzz_target!(|data: &[u8]| {
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut buf = BytesMut::from(data);
        loop {
            let before = buf.clone();
            match decode(&mut buf, version, u32::MAX) {
                Ok(Some(packet)) => {
                    let consumed = before.len() - buf.len();
                    assert_eq!(peek_frame(&before, u32::MAX), Ok(Some(consumed)));

                    let mut out = BytesMut::new();
                    if let Err(e) = encode(&packet, version, &mut out) {
                        panic!("decoded packet does not encode: {e}: {packet:?}");
                    }
                    assert_eq!(out.len(), encoded_len(&packet, version));
                    match decode(&mut out, version, u32::MAX) {
                        Ok(Some(again)) => assert_eq!(again, packet),
                        other => panic!("re-encoded packet does not decode: {other:?}"),
                    }
                    assert!(out.is_empty(), "re-encoded frame not consumed");

                    let mut again = before.clone();
                    match decode_with(&mut again, version, &tight()) {
                        Ok(Some(p)) => assert_eq!(p, packet),
                        Err(
                            DecodeError::TooManyUserProperties { .. }
                            | DecodeError::UserPropertiesTooLarge { .. },
                        ) => assert_eq!(again, before, "refused frame changed the buffer"),
                        other => panic!("tighter limits changed the outcome: {other:?}"),
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    assert_eq!(buf, before, "refused frame changed the buffer");
                    break;
                }
            }
        }
    }
});
