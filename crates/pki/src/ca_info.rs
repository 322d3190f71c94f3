//! Checking certificates offered as trust anchors (a manufacturer's IDevID CAs) and
//! describing them.

use serde::Serialize;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::load_certs_pem;

/// What the commands show of a CA certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CaCertInfo {
    pub subject: String,
    pub issuer: String,
    /// SHA-256 of the DER, colon-separated uppercase hex (as `openssl x509 -fingerprint`).
    pub sha256: String,
    #[serde(with = "time::serde::timestamp")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::timestamp")]
    pub not_after: OffsetDateTime,
    /// The certificate alone, PEM.
    pub pem: String,
}

/// The CA certificates in PEM text, each checked by [`inspect`].
pub fn inspect_ca_pem(bytes: &[u8]) -> Result<Vec<CaCertInfo>, String> {
    if bytes.first() == Some(&0x30) {
        return Err("this looks like DER; give the certificate in PEM \
                    (`openssl x509 -inform der -in FILE -out FILE.pem`)"
            .to_owned());
    }
    let text = String::from_utf8_lossy(bytes);
    let ders = load_certs_pem(&text).map_err(|e| e.to_string())?;
    ders.iter()
        .enumerate()
        .map(|(i, der)| {
            inspect(der).map_err(|e| {
                if ders.len() > 1 {
                    format!("certificate {} of {}: {e}", i + 1, ders.len())
                } else {
                    e
                }
            })
        })
        .collect()
}

/// Checks that `der` is an X.509 CA certificate usable as a trust anchor, and describes it.
fn inspect(der: &[u8]) -> Result<CaCertInfo, String> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate ({e})"))?;
    if !rest.is_empty() {
        return Err("not an X.509 certificate (trailing data after it)".to_owned());
    }
    let subject = cert.subject().to_string();
    let bc = cert
        .basic_constraints()
        .map_err(|e| format!("{subject}: unreadable basicConstraints ({e})"))?;
    match bc {
        None => {
            return Err(format!(
                "{subject} is not a CA certificate: it has no basicConstraints extension"
            ));
        }
        Some(bc) if !bc.value.ca => {
            return Err(format!(
                "{subject} is not a CA certificate: its basicConstraints say CA:FALSE"
            ));
        }
        Some(_) => {}
    }
    if let Some(ku) = cert
        .key_usage()
        .map_err(|e| format!("{subject}: unreadable keyUsage ({e})"))?
        && !ku.value.key_cert_sign()
    {
        return Err(format!(
            "{subject} may not sign certificates: its keyUsage lacks keyCertSign"
        ));
    }
    let anchor = rustls::pki_types::CertificateDer::from(der.to_vec());
    rustls::RootCertStore::empty()
        .add(anchor)
        .map_err(|e| format!("{subject} cannot be used as a trust anchor ({e})"))?;
    Ok(CaCertInfo {
        issuer: cert.issuer().to_string(),
        sha256: fingerprint(der),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        pem: crate::ca::der_to_pem(der),
        subject,
    })
}

/// SHA-256 of `der` as colon-separated uppercase hex.
fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}
