//! Feeds arbitrary bytes to the MQTT decoder under both protocol versions.
//!
//! Beyond "no panic", every packet the decoder accepts must survive a round trip: it
//! encodes (to exactly `encoded_len` bytes) and decodes back to an equal packet. A
//! refused frame must leave the read buffer as it was, and `peek_frame` must agree with
//! the frame length `decode` consumed.

#![no_main]

use bytes::BytesMut;
use gatehouse_mqtt::{ProtocolVersion, decode, encode, encoded_len, peek_frame};
use libfuzzer_sys::fuzz_target;

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
