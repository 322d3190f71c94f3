//! The bodies EST answers with: base64 text of a DER CMS SignedData "certs-only" (RFC 7030
//! §4.1.3 and §4.2.3, RFC 5652 §5, RFC 8951 for the base64).
//!
//! This is a parser of bytes from the network, written by hand over a small DER reader: only
//! the fixed shape of a degenerate SignedData is walked, every length is checked against
//! what is left, and each certificate found is parsed as X.509 before it is returned. It
//! never panics and allocates at most a copy of its input.
//!
//! ```text
//! ContentInfo ::= SEQUENCE {
//!   contentType  id-signedData,
//!   content [0] EXPLICIT SignedData ::= SEQUENCE {
//!     version           INTEGER,
//!     digestAlgorithms  SET,
//!     encapContentInfo  SEQUENCE,
//!     certificates  [0] IMPLICIT SET OF CertificateChoices OPTIONAL,
//!     crls          [1] IMPLICIT SET OF RevocationInfoChoice OPTIONAL,
//!     signerInfos       SET } }
//! ```

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use rustls_pki_types::CertificateDer;

/// id-signedData, 1.2.840.113549.1.7.2.
const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;
/// `[0]` constructed: the EXPLICIT content of ContentInfo, and SignedData's certificates.
const CONTEXT_0: u8 = 0xa0;
/// `[1]` constructed: SignedData's crls.
const CONTEXT_1: u8 = 0xa1;

/// Base64 as EST servers send it: the standard alphabet, padding optional (RFC 8951 §3.1).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why an EST certs-only body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Pkcs7Error {
    /// The body is not base64 text (after line breaks and other white space are removed).
    #[error("the body is not valid base64")]
    Base64,
    /// The DER encoding is broken at this byte offset.
    #[error("malformed DER at byte {at}: {reason}")]
    Der {
        /// Offset into the decoded DER.
        at: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// The content is not a CMS SignedData.
    #[error("the content is not a CMS SignedData")]
    NotSignedData,
    /// Bytes follow the structure.
    #[error("unexpected bytes after the SignedData")]
    TrailingData,
    /// A certificate in the bundle is not a valid X.509 certificate.
    #[error("certificate {index} of the bundle is malformed: {reason}")]
    Certificate {
        /// Position of the certificate in the bundle, from 0.
        index: usize,
        /// What the X.509 parser said.
        reason: String,
    },
}

/// Decodes an EST base64 body into DER: ASCII white space (line breaks) is ignored, padding
/// is optional.
pub fn decode_base64_body(body: &[u8]) -> Result<Vec<u8>, Pkcs7Error> {
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    BASE64.decode(compact).map_err(|_| Pkcs7Error::Base64)
}

/// Encodes DER as an EST base64 body (one line, padded).
pub fn encode_base64_body(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}

/// The certificates of a DER certs-only SignedData, in the order they appear. Other
/// certificate choices (attribute certificates) and CRLs are skipped; signatures, if any,
/// are ignored (certs-only carries none). A bundle with no certificates gives an empty list.
pub fn parse_certs_only(der: &[u8]) -> Result<Vec<CertificateDer<'static>>, Pkcs7Error> {
    let mut top = Reader::new(der, 0);
    let content_info = top.expect(SEQUENCE, "ContentInfo is not a SEQUENCE")?;
    if !top.is_empty() {
        return Err(Pkcs7Error::TrailingData);
    }

    let mut ci = content_info.reader();
    let oid = ci.expect(OID, "ContentInfo does not start with an OID")?;
    if oid.value != OID_SIGNED_DATA {
        return Err(Pkcs7Error::NotSignedData);
    }
    let explicit = ci.expect(CONTEXT_0, "ContentInfo has no [0] content")?;
    ci.finish("ContentInfo has extra fields")?;

    let mut ex = explicit.reader();
    let signed_data = ex.expect(SEQUENCE, "SignedData is not a SEQUENCE")?;
    ex.finish("extra bytes after SignedData")?;

    let mut sd = signed_data.reader();
    sd.expect(INTEGER, "SignedData has no version")?;
    sd.expect(SET, "SignedData has no digestAlgorithms")?;
    sd.expect(SEQUENCE, "SignedData has no encapContentInfo")?;
    let mut next = sd.read()?;
    let mut certs = Vec::new();
    if next.tag == CONTEXT_0 {
        let mut set = next.reader();
        while !set.is_empty() {
            let choice = set.read()?;
            // CertificateChoices: a plain Certificate is a SEQUENCE; [0]..[3] are the
            // obsolete and attribute-certificate alternatives, which EST never needs.
            if choice.tag != SEQUENCE {
                continue;
            }
            check_certificate(choice.raw, certs.len())?;
            certs.push(CertificateDer::from(choice.raw.to_vec()));
        }
        next = sd.read()?;
    }
    if next.tag == CONTEXT_1 {
        next = sd.read()?;
    }
    if next.tag != SET {
        return Err(next.error("SignedData has no signerInfos"));
    }
    sd.finish("SignedData has extra fields")?;
    Ok(certs)
}

/// [`decode_base64_body`] then [`parse_certs_only`]: the certificates of an EST
/// `application/pkcs7-mime` body.
pub fn parse_est_certs(body: &[u8]) -> Result<Vec<CertificateDer<'static>>, Pkcs7Error> {
    parse_certs_only(&decode_base64_body(body)?)
}

fn check_certificate(der: &[u8], index: usize) -> Result<(), Pkcs7Error> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], _)) => Ok(()),
        Ok(_) => Err(Pkcs7Error::Certificate {
            index,
            reason: "bytes after the certificate".to_owned(),
        }),
        Err(e) => Err(Pkcs7Error::Certificate {
            index,
            reason: e.to_string(),
        }),
    }
}

/// One tag-length-value read by [`Reader`].
#[derive(Debug, Clone, Copy)]
struct Tlv<'a> {
    tag: u8,
    /// The contents.
    value: &'a [u8],
    /// Tag, length and contents.
    raw: &'a [u8],
    /// Offset of the contents in the whole input.
    value_at: usize,
    /// Offset of the tag in the whole input.
    at: usize,
}

/// A cursor over DER, with the absolute offset kept for error messages.
#[derive(Debug)]
struct Reader<'a> {
    buf: &'a [u8],
    /// Absolute offset of `buf[0]`.
    base: usize,
    pos: usize,
}

// === impl Tlv ===

impl<'a> Tlv<'a> {
    fn reader(&self) -> Reader<'a> {
        Reader::new(self.value, self.value_at)
    }

    fn error(&self, reason: &'static str) -> Pkcs7Error {
        Pkcs7Error::Der {
            at: self.at,
            reason,
        }
    }
}

// === impl Reader ===

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Self { buf, base, pos: 0 }
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn error(&self, reason: &'static str) -> Pkcs7Error {
        Pkcs7Error::Der {
            at: self.base + self.pos,
            reason,
        }
    }

    fn finish(&self, reason: &'static str) -> Result<(), Pkcs7Error> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.error(reason))
        }
    }

    /// Reads the next TLV, which must have tag `tag`.
    fn expect(&mut self, tag: u8, reason: &'static str) -> Result<Tlv<'a>, Pkcs7Error> {
        if self.is_empty() {
            return Err(self.error(reason));
        }
        let tlv = self.read()?;
        if tlv.tag != tag {
            return Err(tlv.error(reason));
        }
        Ok(tlv)
    }

    /// Reads the next TLV. Only single-byte tags and definite lengths (of up to four length
    /// bytes) are accepted; that is all a certs-only bundle uses.
    fn read(&mut self) -> Result<Tlv<'a>, Pkcs7Error> {
        let start = self.pos;
        let rest = self.buf.get(start..).unwrap_or_default();
        let (&tag, rest) = rest
            .split_first()
            .ok_or_else(|| self.error("unexpected end of data"))?;
        if tag & 0x1f == 0x1f {
            return Err(self.error("multi-byte tags are not supported"));
        }
        let (&first, mut rest) = rest
            .split_first()
            .ok_or_else(|| self.error("missing length"))?;
        let mut header = 2;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 {
                return Err(self.error("indefinite lengths are not DER"));
            }
            if count > 4 {
                return Err(self.error("length too large"));
            }
            let bytes = rest
                .get(..count)
                .ok_or_else(|| self.error("truncated length"))?;
            rest = &rest[count..];
            header += count;
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        };
        if len > rest.len() {
            return Err(self.error("length runs past the end of the data"));
        }
        let end = start + header + len;
        let tlv = Tlv {
            tag,
            value: &rest[..len],
            raw: &self.buf[start..end],
            value_at: self.base + start + header,
            at: self.base + start,
        };
        self.pos = end;
        Ok(tlv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_tiny_inputs_are_errors() {
        assert!(matches!(parse_certs_only(&[]), Err(Pkcs7Error::Der { .. })));
        assert!(matches!(
            parse_certs_only(&[0x30]),
            Err(Pkcs7Error::Der { .. })
        ));
        assert!(matches!(
            parse_certs_only(&[0x30, 0x00]),
            Err(Pkcs7Error::Der { .. })
        ));
        assert!(matches!(
            parse_certs_only(&[0x30, 0x80, 0x00, 0x00]),
            Err(Pkcs7Error::Der {
                reason: "indefinite lengths are not DER",
                ..
            })
        ));
    }

    #[test]
    fn huge_lengths_do_not_overflow() {
        assert!(parse_certs_only(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(
            parse_certs_only(&[0x30, 0x88, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
                .is_err()
        );
    }

    #[test]
    fn other_content_types_are_refused() {
        // ContentInfo { id-data, [0] {} }
        let der = [
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01, 0xa0,
            0x00,
        ];
        assert_eq!(parse_certs_only(&der), Err(Pkcs7Error::NotSignedData));
    }

    #[test]
    fn base64_ignores_line_breaks_and_padding() -> Result<(), Pkcs7Error> {
        assert_eq!(decode_base64_body(b"AQID\r\nBA==\n")?, [1, 2, 3, 4]);
        assert_eq!(decode_base64_body(b"AQIDBA")?, [1, 2, 3, 4]);
        assert_eq!(decode_base64_body(b"AQ ID\tBA")?, [1, 2, 3, 4]);
        assert_eq!(decode_base64_body(b"AQ*D"), Err(Pkcs7Error::Base64));
        Ok(())
    }
}
