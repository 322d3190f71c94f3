//! The certs-only parser against the server's builder (`gatehouse_pki::pkcs7_certs_only`),
//! and against arbitrary and damaged input: it must round-trip what the server writes and
//! never panic on anything else.

use std::sync::OnceLock;

use base64::Engine;
use gatehouse_agent::est::pkcs7::{
    Pkcs7Error, decode_base64_body, encode_base64_body, parse_certs_only, parse_est_certs,
};
use gatehouse_pki::pkcs7_certs_only;
use proptest::prelude::*;
use rustls_pki_types::CertificateDer;

/// A few real certificates of different sizes (generating keys inside a proptest case
/// would be slow).
fn certs() -> &'static [CertificateDer<'static>] {
    static CERTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    CERTS.get_or_init(|| {
        (0..4)
            .map(|i| {
                let key = rcgen::KeyPair::generate().expect("key");
                let names: Vec<String> = (0..i * 20).map(|n| format!("host-{n}.example")).collect();
                rcgen::CertificateParams::new(names)
                    .expect("params")
                    .self_signed(&key)
                    .expect("certificate")
                    .der()
                    .clone()
            })
            .collect()
    })
}

/// Base64 with line breaks every `width` characters, as some servers send it.
fn wrap(text: &str, width: usize, crlf: bool) -> String {
    let eol = if crlf { "\r\n" } else { "\n" };
    text.as_bytes()
        .chunks(width)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(eol)
        + eol
}

#[test]
fn empty_bundle_has_no_certificates() -> Result<(), Pkcs7Error> {
    assert!(parse_certs_only(&pkcs7_certs_only(&[]))?.is_empty());
    Ok(())
}

#[test]
fn bundle_with_a_broken_certificate_is_refused() {
    let bogus = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
    assert!(matches!(
        parse_certs_only(&pkcs7_certs_only(&[certs()[0].clone(), bogus])),
        Err(Pkcs7Error::Certificate { index: 1, .. })
    ));
}

#[test]
fn trailing_bytes_are_refused() {
    let mut der = pkcs7_certs_only(&certs()[..1]);
    der.push(0);
    assert_eq!(parse_certs_only(&der), Err(Pkcs7Error::TrailingData));
}

/// A DER tag-length-value (test helper).
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

#[test]
fn bundle_with_crls_and_attribute_certificates_parses() -> Result<(), Pkcs7Error> {
    // What other CAs send: version 3, a [2] attribute-certificate choice among the
    // certificates, and a crls [1] field.
    let signed_data_oid = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
    let data_oid = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
    let mut cert_set = certs()[0].to_vec();
    cert_set.extend(tlv(0xa2, &[0x05, 0x00]));
    cert_set.extend_from_slice(&certs()[1]);
    let mut sd = tlv(0x02, &[0x03]);
    sd.extend(tlv(0x31, &[]));
    sd.extend(tlv(0x30, &tlv(0x06, &data_oid)));
    sd.extend(tlv(0xa0, &cert_set));
    sd.extend(tlv(0xa1, &[]));
    sd.extend(tlv(0x31, &[]));
    let mut ci = tlv(0x06, &signed_data_oid);
    ci.extend(tlv(0xa0, &tlv(0x30, &sd)));
    let der = tlv(0x30, &ci);
    assert_eq!(parse_certs_only(&der)?, certs()[..2].to_vec());
    Ok(())
}

#[test]
fn enveloped_data_is_not_a_certificate_bundle() {
    let enveloped_oid = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03];
    let mut ci = tlv(0x06, &enveloped_oid);
    ci.extend(tlv(0xa0, &tlv(0x30, &[])));
    assert_eq!(
        parse_certs_only(&tlv(0x30, &ci)),
        Err(Pkcs7Error::NotSignedData)
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_with_the_server_builder(
        picks in proptest::collection::vec(0usize..4, 0..6),
        width in 1usize..120,
        crlf in any::<bool>(),
        padded in any::<bool>(),
    ) {
        let chosen: Vec<CertificateDer<'static>> = picks.iter().map(|i| certs()[*i].clone()).collect();
        let der = pkcs7_certs_only(&chosen);
        prop_assert_eq!(parse_certs_only(&der)?, chosen.clone());
        let mut text = base64::engine::general_purpose::STANDARD.encode(&der);
        if !padded {
            text = text.trim_end_matches('=').to_owned();
        }
        let body = wrap(&text, width, crlf);
        prop_assert_eq!(decode_base64_body(body.as_bytes())?, der);
        prop_assert_eq!(parse_est_certs(body.as_bytes())?, chosen);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_certs_only(&bytes);
        let _ = parse_est_certs(&bytes);
    }

    #[test]
    fn damaged_bundles_never_panic_and_never_invent_certificates(
        picks in proptest::collection::vec(0usize..4, 1..4),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let chosen: Vec<CertificateDer<'static>> = picks.iter().map(|i| certs()[*i].clone()).collect();
        let mut der = pkcs7_certs_only(&chosen);
        for (at, byte) in &edits {
            let i = at.index(der.len());
            der[i] = *byte;
        }
        if truncate {
            der.truncate(cut.index(der.len()));
        }
        if let Ok(found) = parse_certs_only(&der) {
            // Whatever parses is made of well-formed certificates no longer than the input.
            prop_assert!(found.len() <= chosen.len());
            for cert in &found {
                prop_assert!(x509_parser::parse_x509_certificate(cert).is_ok());
            }
        }
        let _ = parse_est_certs(encode_base64_body(&der).as_bytes());
    }

    #[test]
    fn base64_of_arbitrary_text_never_panics(text in "[A-Za-z0-9+/=\\s]{0,400}") {
        let _ = decode_base64_body(text.as_bytes());
    }
}

/// Whether a program runs; outside CI a missing one skips the test that needs it.
#[track_caller]
fn have(program: &str) -> bool {
    gatehouse_testkit::have_program(program, &["version"])
}

#[test]
fn openssl_certs_only_bundles_parse() -> Result<(), Box<dyn std::error::Error>> {
    if !have("openssl") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let pem: String = certs()[..3]
        .iter()
        .map(|c| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(c);
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                wrap(&b64, 64, false).trim_end()
            )
        })
        .collect();
    let input = dir.path().join("certs.pem");
    std::fs::write(&input, pem)?;
    for (form, base64_body) in [("DER", false), ("PEM", true)] {
        let out = std::process::Command::new("openssl")
            .args(["crl2pkcs7", "-nocrl", "-outform", form, "-certfile"])
            .arg(&input)
            .output()?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let found = if base64_body {
            // The PEM body is what an EST server sends: base64 in 64-character lines.
            let text = String::from_utf8(out.stdout)?;
            let body: String = text
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .map(|l| format!("{l}\r\n"))
                .collect();
            parse_est_certs(body.as_bytes())?
        } else {
            parse_certs_only(&out.stdout)?
        };
        assert_eq!(found, certs()[..3].to_vec(), "openssl {form}");
    }
    Ok(())
}
