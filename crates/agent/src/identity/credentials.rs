//! A certificate chain with its private key, checked to belong together: the device's
//! current identity (LDevID) or its manufacturer identity (IDevID).

use std::fmt;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::cert::{CertError, CertInfo, subject_serial_number};
use crate::renew::renew_at;

/// Why a certificate and key cannot be used together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// The PEM text holds no certificate.
    #[error("no certificate found")]
    NoCertificate,
    /// A certificate section of the PEM text is malformed.
    #[error("malformed certificate PEM")]
    MalformedCertificatePem,
    /// The PEM text holds no private key, or it is malformed (nothing of it is quoted).
    #[error("no usable private key found")]
    NoKey,
    /// The key type is not supported.
    #[error("unsupported private key: {0}")]
    UnsupportedKey(String),
    /// The private key is not the key of the certificate.
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    /// The certificate cannot be read.
    #[error(transparent)]
    Certificate(#[from] CertError),
}

/// The device's own certificate (LDevID) with its chain and key, and what the
/// certificate says. Made only by [`DeviceCredentials::new`], which checks that the key is
/// the certificate's and that the certificate names a device. `Debug` prints no key.
pub struct DeviceCredentials {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    key_pem: Zeroizing<String>,
    info: CertInfo,
}

/// A manufacturer-installed identity (IEEE 802.1AR IDevID): certificate chain and key,
/// checked to match. The agent only ever reads it. `Debug` prints no key.
pub struct Idevid {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    serial: Option<String>,
}

// === impl DeviceCredentials ===

impl DeviceCredentials {
    /// Credentials from a chain (the device certificate first, then intermediates) and the
    /// PEM private key. Refused unless the key is the certificate's key and the certificate
    /// names a device.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key_pem: Zeroizing<String>,
    ) -> Result<Self, CredentialsError> {
        let key = load_key(&key_pem)?;
        check_pair(&chain, &key)?;
        let leaf = chain.first().ok_or(CredentialsError::NoCertificate)?;
        let info = CertInfo::from_der(leaf)?;
        Ok(Self {
            chain,
            key,
            key_pem,
            info,
        })
    }

    /// The chain presented in TLS: the device certificate, then intermediates.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The device certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// The private key.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The private key, PEM (what `device.key` holds).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// What the device certificate says: device, tenant, serial, validity.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// When to renew: two thirds into the certificate's lifetime.
    pub fn renew_at(&self) -> OffsetDateTime {
        renew_at(self.info.not_before, self.info.not_after)
    }

    /// The chain as PEM text (what `device.crt` holds).
    pub fn chain_pem(&self) -> String {
        certs_to_pem(&self.chain)
    }
}

impl Clone for DeviceCredentials {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            key_pem: self.key_pem.clone(),
            info: self.info.clone(),
        }
    }
}

impl fmt::Debug for DeviceCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCredentials")
            .field("info", &self.info)
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

// === impl Idevid ===

impl Idevid {
    /// An IDevID from its PEM certificate (then any intermediates) and PEM private key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CredentialsError> {
        let chain = load_certs(cert_pem)?;
        let key = load_key(key_pem)?;
        check_pair(&chain, &key)?;
        let serial = subject_serial_number(&chain[0])?;
        Ok(Self { chain, key, serial })
    }

    /// The chain presented in TLS.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The device serial number in the certificate's subject (802.1AR), if present.
    pub fn serial(&self) -> Option<&str> {
        self.serial.as_deref()
    }
}

impl Clone for Idevid {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            serial: self.serial.clone(),
        }
    }
}

impl fmt::Debug for Idevid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idevid")
            .field("serial", &self.serial)
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Every certificate of PEM text, in order; at least one.
pub fn load_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, CredentialsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| CredentialsError::MalformedCertificatePem)?;
    if certs.is_empty() {
        return Err(CredentialsError::NoCertificate);
    }
    Ok(certs)
}

/// Certificates as PEM text.
pub fn certs_to_pem(certs: &[CertificateDer<'_>]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for cert in certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

fn load_key(pem: &str) -> Result<PrivateKeyDer<'static>, CredentialsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| CredentialsError::NoKey)
}

/// Checks that `key` is the private key of `chain[0]`.
fn check_pair(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<(), CredentialsError> {
    if chain.is_empty() {
        return Err(CredentialsError::NoCertificate);
    }
    let provider = crate::tls::provider();
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| CredentialsError::UnsupportedKey(e.to_string()))?;
    // A certificate rustls cannot parse is reported as such, not as a mismatch.
    super::cert::spki(&chain[0])?;
    CertifiedKey::new(chain.to_vec(), signing)
        .keys_match()
        .map_err(|_| CredentialsError::KeyMismatch)
}

#[cfg(test)]
mod tests {
    use gatehouse_pki::{IdevidParams, LocalCa, ManufacturerCa};

    use super::*;

    #[test]
    fn matching_key_is_accepted_and_other_key_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let ca = LocalCa::load_or_create(dir.path())?;
        let a = ca.issue_device(
            &"acme".parse()?,
            &"thermo-1".parse()?,
            std::time::Duration::from_secs(3600),
        )?;
        let b = ca.issue_device(
            &"acme".parse()?,
            &"thermo-2".parse()?,
            std::time::Duration::from_secs(3600),
        )?;
        let chain = a.presented_chain()?;
        let creds =
            DeviceCredentials::new(chain.clone(), Zeroizing::new(a.key_pem.expose().to_owned()))?;
        assert_eq!(creds.info().device.as_str(), "thermo-1");
        assert_eq!(creds.info().tenant.as_str(), "acme");
        assert_eq!(creds.info().serial_hex, a.serial_hex);
        assert_eq!(load_certs(&creds.chain_pem())?, chain);
        assert!(!format!("{creds:?}").contains(a.key_pem.expose()));
        assert_eq!(
            DeviceCredentials::new(chain, Zeroizing::new(b.key_pem.expose().to_owned()))
                .map(|_| ()),
            Err(CredentialsError::KeyMismatch)
        );
        Ok(())
    }

    #[test]
    fn idevid_reads_the_serial() -> Result<(), Box<dyn std::error::Error>> {
        let m = ManufacturerCa::new("Acme")?;
        let id = m.issue_idevid(&IdevidParams::new("SN-0042", "Acme thermo"))?;
        let idevid = Idevid::from_pem(&id.cert_pem, id.key_pem.expose())?;
        assert_eq!(idevid.serial(), Some("SN-0042"));
        assert_eq!(
            Idevid::from_pem(&id.cert_pem, "nope").map(|_| ()),
            Err(CredentialsError::NoKey)
        );
        Ok(())
    }
}
