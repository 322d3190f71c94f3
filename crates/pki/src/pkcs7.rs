//! PKCS#7 / CMS "certs-only": a degenerate SignedData carrying certificates and no signature
//! (RFC 5652 §5, RFC 7030 §4.1.3), which EST returns from `cacerts` and `simpleenroll`.
//!
//! The structure is fixed and small, so it is written by hand:
//!
//! ```text
//! ContentInfo ::= SEQUENCE {
//!   contentType  id-signedData,
//!   content [0] EXPLICIT SignedData ::= SEQUENCE {
//!     version           INTEGER 1,
//!     digestAlgorithms  SET {},
//!     encapContentInfo  SEQUENCE { id-data },
//!     certificates  [0] IMPLICIT SET OF Certificate,
//!     signerInfos       SET {} } }
//! ```

use rustls_pki_types::CertificateDer;

/// id-signedData, 1.2.840.113549.1.7.2.
const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
/// id-data, 1.2.840.113549.1.7.1.
const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];

/// A DER certs-only SignedData holding `certs` in the order given (EST puts the issued
/// certificate alone in a `simpleenroll` response, and the CA certificates in `cacerts`).
/// Base64 it for an `application/pkcs7-mime; smime-type=certs-only` body.
pub fn pkcs7_certs_only(certs: &[CertificateDer<'_>]) -> Vec<u8> {
    let mut cert_bytes = Vec::new();
    for c in certs {
        cert_bytes.extend_from_slice(c.as_ref());
    }
    let mut signed_data = Vec::new();
    signed_data.extend(tlv(0x02, &[0x01])); // version 1
    signed_data.extend(tlv(0x31, &[])); // digestAlgorithms
    signed_data.extend(tlv(0x30, &tlv(0x06, OID_DATA))); // encapContentInfo
    signed_data.extend(tlv(0xa0, &cert_bytes)); // certificates [0] IMPLICIT
    signed_data.extend(tlv(0x31, &[])); // signerInfos
    let mut content_info = tlv(0x06, OID_SIGNED_DATA);
    content_info.extend(tlv(0xa0, &tlv(0x30, &signed_data)));
    tlv(0x30, &content_info)
}

/// A DER tag-length-value with a definite length.
fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    out.push(tag);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_minimal() {
        assert_eq!(tlv(0x04, &[]), [0x04, 0x00]);
        assert_eq!(tlv(0x04, &[0; 0x7f])[..2], [0x04, 0x7f]);
        assert_eq!(tlv(0x04, &[0; 0x80])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(tlv(0x04, &[0; 0x1234])[..4], [0x04, 0x82, 0x12, 0x34]);
    }

    #[test]
    fn empty_bundle_is_well_formed() {
        let der = pkcs7_certs_only(&[]);
        assert_eq!(der[0], 0x30);
        assert_eq!(der[1] as usize, der.len() - 2);
    }
}
