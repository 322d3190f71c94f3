//! A device's key pair (ECDSA P-256, generated on the device) and the CSRs it signs.

use std::fmt;

use gatehouse_types::{DeviceId, TenantId};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData,
    SanType,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

use super::cert::device_uri;

/// Why a key or CSR could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Key generation failed (no system randomness).
    #[error("key generation failed: {0}")]
    Generate(String),
    /// The CSR could not be built or signed.
    #[error("CSR generation failed: {0}")]
    Csr(String),
}

/// What a CSR names.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CsrSubject {
    /// Subject CN = the device id and, when the tenant is known, the SAN URI
    /// `gatehouse://<tenant>/device/<id>`: token enrollment and re-enrollment.
    Device {
        /// The device.
        device: DeviceId,
        /// Its tenant, if known.
        tenant: Option<TenantId>,
    },
    /// An empty subject: the server names the device from the credential (an IDevID's
    /// serial number, or a token bound to one device).
    Empty,
}

/// A freshly generated ECDSA P-256 key pair. `Debug` prints `<redacted>`.
pub struct DeviceKey {
    pair: KeyPair,
}

// === impl DeviceKey ===

impl DeviceKey {
    /// Generates a new ECDSA P-256 key.
    pub fn generate() -> Result<Self, KeyError> {
        let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        Ok(Self { pair })
    }

    /// The private key, PKCS#8 PEM (what `device.key` holds).
    pub fn to_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.pair.serialize_pem())
    }

    /// The private key, PKCS#8 DER.
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pair.serialize_der()))
    }

    /// The public key, DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.pair.subject_public_key_info()
    }

    /// A DER PKCS#10 request for this key naming `subject`.
    pub fn csr(&self, subject: &CsrSubject) -> Result<Vec<u8>, KeyError> {
        let csr_err = |e: rcgen::Error| KeyError::Csr(e.to_string());
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let CsrSubject::Device { device, tenant } = subject {
            dn.push(DnType::CommonName, device.as_str());
            if let Some(tenant) = tenant {
                let uri = device_uri(tenant, device);
                params.subject_alt_names =
                    vec![SanType::URI(uri.as_str().try_into().map_err(csr_err)?)];
            }
        }
        params.distinguished_name = dn;
        let csr = params.serialize_request(&self.pair).map_err(csr_err)?;
        Ok(csr.der().to_vec())
    }
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use gatehouse_pki::{CsrPolicy, KeyKind, verify_csr};

    use super::*;

    #[test]
    fn device_csr_names_the_device() -> Result<(), Box<dyn std::error::Error>> {
        let key = DeviceKey::generate()?;
        let subject = CsrSubject::Device {
            device: DeviceId::new("thermo-1")?,
            tenant: Some(TenantId::new("acme")?),
        };
        let csr = verify_csr(&key.csr(&subject)?, &CsrPolicy::default())?;
        assert_eq!(csr.key_kind(), KeyKind::EcdsaP256);
        assert_eq!(csr.common_names(), ["thermo-1"]);
        assert_eq!(csr.san_uris(), ["gatehouse://acme/device/thermo-1"]);
        assert_eq!(csr.public_key_spki(), key.public_key_der());
        csr.check_names(&TenantId::new("acme")?, &DeviceId::new("thermo-1")?)?;
        assert!(
            csr.check_names(&TenantId::new("acme")?, &DeviceId::new("other")?)
                .is_err()
        );
        Ok(())
    }

    #[test]
    fn empty_csr_names_nothing() -> Result<(), Box<dyn std::error::Error>> {
        let key = DeviceKey::generate()?;
        let csr = verify_csr(&key.csr(&CsrSubject::Empty)?, &CsrPolicy::default())?;
        assert!(csr.common_names().is_empty());
        assert!(csr.san_uris().is_empty());
        Ok(())
    }

    #[test]
    fn debug_redacts_the_key() -> Result<(), KeyError> {
        let key = DeviceKey::generate()?;
        let pem = key.to_pem();
        let body = pem.lines().nth(1).unwrap_or_default().to_owned();
        assert!(!format!("{key:?}").contains(&body));
        Ok(())
    }
}
