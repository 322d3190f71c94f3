//! The data representations of MQTT §1.5, on the writing side: big-endian integers,
//! Variable Byte Integers, length-prefixed strings and binary data.
//!
//! Lengths are checked by the encoder's measuring pass before anything is written, so
//! these helpers never fail.

use bytes::{BufMut, BytesMut};

/// Largest value a Variable Byte Integer can hold (§1.5.5), hence the largest
/// Remaining Length (§2.1.4).
pub(crate) const MAX_VARIABLE_BYTE_INTEGER: usize = 268_435_455;

/// Largest length of a UTF-8 Encoded String or of Binary Data (§1.5.4, §1.5.6).
pub(crate) const MAX_STRING_LEN: usize = 65_535;

/// Number of bytes the Variable Byte Integer encoding of `value` takes. Values above
/// the maximum are counted as 4 bytes; the encoder refuses them before writing.
pub(crate) fn vbi_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes `value` as a Variable Byte Integer (§1.5.5). `value` must be at most
/// [`MAX_VARIABLE_BYTE_INTEGER`].
pub(crate) fn put_vbi(out: &mut BytesMut, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if value == 0 {
            return;
        }
    }
}

/// Writes a two-byte length followed by `bytes`: a UTF-8 Encoded String (§1.5.4) or
/// Binary Data (§1.5.6). `bytes` must be at most [`MAX_STRING_LEN`] long.
pub(crate) fn put_prefixed(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u16(bytes.len() as u16);
    out.put_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_byte_integers_match_the_spec_table() {
        // §1.5.5, Table 1-1: the boundaries of each encoded size.
        for (value, bytes) in [
            (0usize, &[0x00][..]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ] {
            let mut out = BytesMut::new();
            put_vbi(&mut out, value);
            assert_eq!(&out[..], bytes, "{value}");
            assert_eq!(vbi_len(value), bytes.len(), "{value}");
        }
    }
}
