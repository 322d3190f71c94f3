//! Certificate revocation lists signed by the issuing CAs.

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::OffsetDateTime;

pub use rcgen::RevocationReason;

use crate::ca::{CaError, LocalCa};

/// One revoked certificate, as a CRL lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RevokedCert {
    /// Its serial number, hex (as in [`IssuedCert::serial_hex`](crate::IssuedCert::serial_hex)).
    pub serial_hex: String,
    /// When the revocation was recorded.
    pub revoked_at: OffsetDateTime,
    /// Why, if a reason is given.
    pub reason: Option<RevocationReason>,
}

/// A signed CRL.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Crl {
    /// The CRL, DER (what the CRL distribution point URL serves, `application/pkix-crl`).
    pub der: CertificateRevocationListDer<'static>,
    /// The CRL, PEM (`X509 CRL`).
    pub pem: String,
    /// Its CRL number.
    pub number: u64,
    /// The issuing CA that signed it.
    pub issuer: CertificateDer<'static>,
}

// === impl RevokedCert ===

impl RevokedCert {
    /// A revoked certificate.
    pub fn new(
        serial_hex: impl Into<String>,
        revoked_at: OffsetDateTime,
        reason: Option<RevocationReason>,
    ) -> Self {
        Self {
            serial_hex: serial_hex.into(),
            revoked_at,
            reason,
        }
    }
}

// === impl LocalCa ===

impl LocalCa {
    /// The CRL of the active issuing CA. See [`crls`](Self::crls).
    pub fn crl(
        &self,
        revoked: &[RevokedCert],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<Crl, CaError> {
        let number = self.next_crl_number()?;
        let (cert, issuer) = self
            .issuers()
            .next()
            .ok_or(CaError::Unsupported("no issuing CA"))?;
        sign_crl(cert, issuer, revoked, this_update, next_update, number)
    }

    /// One CRL per live issuing CA, the active one first, all with the same new CRL number
    /// (persisted in `crl.number`, so numbers keep increasing across restarts). Each lists
    /// every serial in `revoked`: serials are 126 random bits, so a serial another CA issued
    /// names nothing here, and the caller need not know which CA issued what.
    ///
    /// A verifier needs the CRL of every issuing CA whose certificates it checks; give them
    /// all to [`ServerTlsBuilder::crls`](crate::ServerTlsBuilder::crls).
    pub fn crls(
        &self,
        revoked: &[RevokedCert],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<Vec<Crl>, CaError> {
        let number = self.next_crl_number()?;
        self.issuers()
            .map(|(cert, issuer)| sign_crl(cert, issuer, revoked, this_update, next_update, number))
            .collect()
    }
}

fn sign_crl(
    cert: &CertificateDer<'static>,
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    revoked: &[RevokedCert],
    this_update: OffsetDateTime,
    next_update: OffsetDateTime,
    number: u64,
) -> Result<Crl, CaError> {
    let revoked_certs = revoked
        .iter()
        .map(|r| {
            Ok(RevokedCertParams {
                serial_number: parse_serial(&r.serial_hex)?,
                revocation_time: whole_seconds(r.revoked_at),
                reason_code: r.reason,
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, CaError>>()?;
    let params = CertificateRevocationListParams {
        this_update: whole_seconds(this_update),
        next_update: whole_seconds(next_update),
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: subject_key_id(cert),
    };
    let crl = params
        .signed_by(issuer)
        .map_err(|e| CaError::Generation(e.to_string()))?;
    let pem = crl.pem().map_err(|e| CaError::Generation(e.to_string()))?;
    Ok(Crl {
        der: crl.der().clone(),
        pem,
        number,
        issuer: cert.clone(),
    })
}

/// Big-endian bytes of a hex serial, with a zero byte in front if the top bit is set (a DER
/// INTEGER serial is positive).
fn parse_serial(hex: &str) -> Result<SerialNumber, CaError> {
    let bad = || CaError::InvalidName {
        name: hex.chars().take(80).collect(),
        reason: "not a hexadecimal serial number".to_owned(),
    };
    let hex = hex.trim();
    if hex.is_empty() || hex.len() > 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let padded = if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex.to_owned()
    };
    let mut bytes = Vec::with_capacity(padded.len() / 2 + 1);
    for pair in padded.as_bytes().chunks(2) {
        let s = std::str::from_utf8(pair).map_err(|_| bad())?;
        bytes.push(u8::from_str_radix(s, 16).map_err(|_| bad())?);
    }
    if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        bytes.insert(0, 0);
    }
    Ok(SerialNumber::from_slice(&bytes))
}

/// The issuer's subject key identifier, so the CRL's authority key identifier matches it
/// whatever method made it (an external CA's may not be rcgen's).
fn subject_key_id(cert: &CertificateDer<'static>) -> KeyIdMethod {
    use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};
    X509Certificate::from_der(cert)
        .ok()
        .and_then(|(_, x)| {
            x.iter_extensions()
                .find_map(|ext| match ext.parsed_extension() {
                    ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                    _ => None,
                })
        })
        .map_or(KeyIdMethod::Sha256, KeyIdMethod::PreSpecified)
}

fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_parse() -> Result<(), CaError> {
        assert_eq!(parse_serial("4a01")?.to_bytes(), vec![0x4a, 0x01]);
        assert_eq!(parse_serial("8f")?.to_bytes(), vec![0x00, 0x8f]);
        assert_eq!(parse_serial("abc")?.to_bytes(), vec![0x0a, 0xbc]);
        assert!(parse_serial("xyz").is_err());
        assert!(parse_serial("").is_err());
        Ok(())
    }
}
