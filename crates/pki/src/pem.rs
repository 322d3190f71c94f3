//! PEM loading for certificates and private keys (rustls-pki-types' `PemObject`).

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why PEM text could not be loaded.
///
/// Errors about private keys say what kind of problem was found, never any part of the text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// The text holds no `CERTIFICATE` section.
    #[error("no certificate found in the PEM text")]
    NoCertificates,
    /// A certificate section is malformed.
    #[error("malformed certificate PEM: {0}")]
    MalformedCertificate(String),
    /// The text holds no private key section (`PRIVATE KEY`, `EC PRIVATE KEY` or
    /// `RSA PRIVATE KEY`).
    #[error("no private key found in the PEM text")]
    NoKey,
    /// A private key section is malformed. Only the kind of problem is kept.
    #[error("malformed private key PEM ({0})")]
    MalformedKey(&'static str),
}

/// Every `CERTIFICATE` section of `pem`, in order. Other sections are skipped. At least one
/// certificate must be present.
pub fn load_certs_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::MalformedCertificate(e.to_string()))?;
    if certs.is_empty() {
        return Err(PemError::NoCertificates);
    }
    Ok(certs)
}

/// The first private key in `pem` (PKCS#8, SEC1 or PKCS#1).
pub fn load_key_pem(pem: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        pem::Error::NoItemsFound => PemError::NoKey,
        other => PemError::MalformedKey(key_error_kind(&other)),
    })
}

/// A description of a PEM error that carries none of the input.
fn key_error_kind(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "the base64 body does not decode",
        pem::Error::Io(_) => "read error",
        pem::Error::NoItemsFound => "no key",
        pem::Error::SectionTooLarge => "a section is too large",
        _ => "unrecognised PEM error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_has_no_certificates_and_no_key() {
        assert!(matches!(load_certs_pem(""), Err(PemError::NoCertificates)));
        assert!(matches!(load_key_pem(""), Err(PemError::NoKey)));
    }

    #[test]
    fn malformed_key_error_does_not_echo_input() {
        let pem = "-----BEGIN PRIVATE KEY-----\nSECRETSECRET!!!\n-----END PRIVATE KEY-----\n";
        let err = load_key_pem(pem).expect_err("malformed");
        assert!(matches!(err, PemError::MalformedKey(_)));
        assert!(!format!("{err} {err:?}").contains("SECRET"));
    }
}
