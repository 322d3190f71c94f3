//! Feeds arbitrary bytes to the agent's reader of EST certs-only responses
//! (`gatehouse_agent::est::pkcs7`), as DER and as the base64 text EST sends.
//!
//! Beyond "no panic": every certificate an accepted bundle yields is a slice of the input
//! (nothing invented), a bundle rebuilt from them (the way the server builds one) parses
//! back to the same certificates, and the base64 layer is transparent: the input's base64,
//! on one line or wrapped, gives the same result as the DER.

#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use gatehouse_agent::est::pkcs7::{parse_certs_only, parse_est_certs};
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;

fuzz_target!(|data: &[u8]| {
    let direct = parse_certs_only(data);

    if let Ok(certs) = &direct {
        for cert in certs {
            assert!(
                data.windows(cert.len()).any(|w| w == cert.as_ref()),
                "a certificate that is not in the input"
            );
        }
        let rebuilt = certs_only(certs);
        assert_eq!(parse_certs_only(&rebuilt).as_ref(), Ok(certs));
    }

    let one_line = STANDARD.encode(data);
    assert_eq!(parse_est_certs(one_line.as_bytes()), direct);
    let wrapped: Vec<u8> = one_line
        .as_bytes()
        .chunks(64)
        .flat_map(|line| line.iter().copied().chain(*b"\r\n"))
        .collect();
    assert_eq!(parse_est_certs(&wrapped), direct);

    // The input itself as a response body.
    let _ = parse_est_certs(data);
});

/// A DER certs-only SignedData holding `certs` (RFC 5652 §5, as the server writes it).
fn certs_only(certs: &[CertificateDer<'_>]) -> Vec<u8> {
    const SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
    const DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
    let all: Vec<u8> = certs.iter().flat_map(|c| c.iter().copied()).collect();
    let mut sd = tlv(0x02, &[0x01]);
    sd.extend(tlv(0x31, &[]));
    sd.extend(tlv(0x30, &tlv(0x06, DATA)));
    sd.extend(tlv(0xa0, &all));
    sd.extend(tlv(0x31, &[]));
    let mut ci = tlv(0x06, SIGNED_DATA);
    ci.extend(tlv(0xa0, &tlv(0x30, &sd)));
    tlv(0x30, &ci)
}

fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
    out
}
