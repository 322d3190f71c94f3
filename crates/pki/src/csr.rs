//! PKCS#10 certificate signing requests: checked once by [`verify_csr`], which alone can make
//! a [`VerifiedCsr`], and signed by [`LocalCa::issue_from_csr`] only after the identity it asks
//! for has been compared with the device being enrolled.

use std::fmt;
use std::time::Duration;

use gatehouse_types::{DeviceId, TenantId};
use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, PKCS_RSA_SHA256};
use rcgen::{PublicKeyData, SignatureAlgorithm};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, GeneralName};
use zeroize::Zeroizing;

use crate::ca::{CaError, DeviceCertParams, LocalCa};
use crate::issued::IssuedCertPublic;

/// Default validity of a certificate issued from a CSR (an LDevID).
pub const DEFAULT_CSR_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Largest CSR accepted, in bytes.
const MAX_CSR_LEN: usize = 16 * 1024;
/// Largest RSA modulus accepted, in bits (bigger keys only cost us CPU).
const MAX_RSA_BITS: usize = 8192;

/// The type of a public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyKind {
    /// ECDSA on NIST P-256.
    EcdsaP256,
    /// ECDSA on NIST P-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA with a modulus of this many bits.
    Rsa {
        /// Modulus length.
        bits: usize,
    },
}

/// Which keys a CSR may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CsrPolicy {
    /// ECDSA P-256 allowed.
    pub ecdsa_p256: bool,
    /// ECDSA P-384 allowed.
    pub ecdsa_p384: bool,
    /// Ed25519 allowed.
    pub ed25519: bool,
    /// Smallest RSA modulus allowed, in bits; `None` refuses RSA.
    pub min_rsa_bits: Option<usize>,
}

/// Why a CSR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// The bytes are not a DER PKCS#10 request (or are too long, or followed by garbage).
    #[error("not a valid PKCS#10 certificate signing request: {0}")]
    Malformed(String),
    /// The request's signature does not verify with its own public key.
    #[error("the CSR's signature does not verify with its public key")]
    BadSignature,
    /// The key type or size is not allowed by the policy.
    #[error("key type not allowed: {0}")]
    KeyNotAllowed(String),
    /// The CSR names another identity than the device being enrolled.
    #[error("the CSR names {named:?}, not the device being enrolled ({expected:?})")]
    IdentityMismatch {
        /// What the CSR names (shortened if long).
        named: String,
        /// The device being enrolled, as `<tenant>/<device>`.
        expected: String,
    },
}

/// A CSR whose signature, encoding and key have been checked by [`verify_csr`], the only
/// way to make one.
#[derive(Clone)]
pub struct VerifiedCsr {
    spki: Vec<u8>,
    key_bits: Vec<u8>,
    key_kind: KeyKind,
    common_names: Vec<String>,
    san_uris: Vec<String>,
    san_dns: Vec<String>,
    other_sans: usize,
    challenge_password: Option<Zeroizing<String>>,
    attributes: Vec<String>,
}

/// The public key of a verified CSR, for rcgen to sign.
struct CsrPublicKey<'a>(&'a VerifiedCsr);

// === impl CsrPolicy ===

impl Default for CsrPolicy {
    /// ECDSA P-256 and P-384, Ed25519, RSA of 2048 bits or more.
    fn default() -> Self {
        Self {
            ecdsa_p256: true,
            ecdsa_p384: true,
            ed25519: true,
            min_rsa_bits: Some(2048),
        }
    }
}

impl CsrPolicy {
    /// A policy allowing no key at all: switch on what you accept.
    pub fn none() -> Self {
        Self {
            ecdsa_p256: false,
            ecdsa_p384: false,
            ed25519: false,
            min_rsa_bits: None,
        }
    }

    fn allows(&self, kind: KeyKind) -> bool {
        match kind {
            KeyKind::EcdsaP256 => self.ecdsa_p256,
            KeyKind::EcdsaP384 => self.ecdsa_p384,
            KeyKind::Ed25519 => self.ed25519,
            KeyKind::Rsa { bits } => {
                self.min_rsa_bits.is_some_and(|min| bits >= min) && bits <= MAX_RSA_BITS
            }
        }
    }
}

/// Parses a DER PKCS#10 request, verifies its self-signature, checks its key against
/// `policy`, and returns what it asks for.
///
/// This proves possession of the private key and nothing else: whether the names it asks
/// for may be given is [`LocalCa::issue_from_csr`]'s check.
pub fn verify_csr(der: &[u8], policy: &CsrPolicy) -> Result<VerifiedCsr, CsrError> {
    if der.len() > MAX_CSR_LEN {
        return Err(CsrError::Malformed(format!(
            "{} bytes, more than {MAX_CSR_LEN}",
            der.len()
        )));
    }
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(
            "trailing bytes after the request".to_owned(),
        ));
    }
    // The key is judged before the signature: a key of a type we refuse (RSA-1024,
    // secp256k1) is refused as such, not as a signature we cannot check.
    let info = &csr.certification_request_info;
    let spki = &info.subject_pki;
    let alg = &spki.algorithm.algorithm;
    let key_kind = if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => KeyKind::EcdsaP256,
            Some(c) if c == OID_NIST_EC_P384 => KeyKind::EcdsaP384,
            Some(c) => {
                return Err(CsrError::KeyNotAllowed(format!(
                    "ECDSA on the curve {c}, not P-256 or P-384"
                )));
            }
            None => {
                return Err(CsrError::KeyNotAllowed(
                    "ECDSA without a named curve".to_owned(),
                ));
            }
        }
    } else if *alg == OID_SIG_ED25519 {
        KeyKind::Ed25519
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => KeyKind::Rsa {
                bits: rsa.key_size(),
            },
            _ => return Err(CsrError::Malformed("unreadable RSA key".to_owned())),
        }
    } else {
        return Err(CsrError::KeyNotAllowed(format!("key algorithm {alg}")));
    };
    if !policy.allows(key_kind) {
        return Err(CsrError::KeyNotAllowed(
            match (key_kind, policy.min_rsa_bits) {
                (KeyKind::Rsa { bits }, Some(min)) => {
                    format!("RSA-{bits}, shorter than the {min} bits required")
                }
                (KeyKind::Rsa { .. }, None) => "RSA keys are not accepted".to_owned(),
                (other, _) => format!("{other:?} keys are not accepted"),
            },
        ));
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;

    let mut common_names = Vec::new();
    for cn in info.subject.iter_common_name() {
        let text = cn
            .as_str()
            .map_err(|_| CsrError::Malformed("subject CN is not text".to_owned()))?;
        common_names.push(text.to_owned());
    }
    let (mut san_uris, mut san_dns, mut other_sans) = (Vec::new(), Vec::new(), 0);
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                match name {
                    GeneralName::URI(u) => san_uris.push((*u).to_owned()),
                    GeneralName::DNSName(d) => san_dns.push((*d).to_owned()),
                    _ => other_sans += 1,
                }
            }
        }
    }
    let mut challenge_password = None;
    let mut attributes = Vec::new();
    for attr in info.iter_attributes() {
        match attr.parsed_attribute() {
            ParsedCriAttribute::ChallengePassword(p) => {
                challenge_password = Some(Zeroizing::new(p.0.clone()));
            }
            ParsedCriAttribute::ExtensionRequest(_) => {}
            _ => attributes.push(attr.oid.to_id_string()),
        }
    }
    Ok(VerifiedCsr {
        spki: spki.raw.to_vec(),
        key_bits: spki.subject_public_key.data.to_vec(),
        key_kind,
        common_names,
        san_uris,
        san_dns,
        other_sans,
        challenge_password,
        attributes,
    })
}

// === impl VerifiedCsr ===

impl VerifiedCsr {
    /// The requested public key, DER SubjectPublicKeyInfo.
    pub fn public_key_spki(&self) -> &[u8] {
        &self.spki
    }

    /// The key's type.
    pub fn key_kind(&self) -> KeyKind {
        self.key_kind
    }

    /// Subject common names, in order.
    pub fn common_names(&self) -> &[String] {
        &self.common_names
    }

    /// Requested SAN URIs.
    pub fn san_uris(&self) -> &[String] {
        &self.san_uris
    }

    /// Requested SAN DNS names.
    pub fn san_dns_names(&self) -> &[String] {
        &self.san_dns
    }

    /// The challengePassword attribute, if any. Treat it as a secret.
    pub fn challenge_password(&self) -> Option<&str> {
        self.challenge_password.as_ref().map(|p| p.as_str())
    }

    /// Dotted OIDs of the other attributes present (besides challengePassword and
    /// extensionRequest).
    pub fn other_attributes(&self) -> &[String] {
        &self.attributes
    }

    /// Refuses the CSR unless every name it asks for is the device being enrolled: each CN
    /// must be the device id, each SAN URI must be `gatehouse://<tenant>/device/<id>`, and no
    /// other kind of SAN (DNS, IP, e-mail, ...) may be present. A CSR naming nothing is
    /// accepted: the certificate names the device anyway.
    pub fn check_names(&self, tenant: &TenantId, device: &DeviceId) -> Result<(), CsrError> {
        let expected_uri = crate::ca::device_uri(tenant, device);
        let mismatch = |named: &str| CsrError::IdentityMismatch {
            named: named.chars().take(160).collect(),
            expected: format!("{tenant}/{device}"),
        };
        for cn in &self.common_names {
            if cn != device.as_str() {
                return Err(mismatch(cn));
            }
        }
        for uri in &self.san_uris {
            if *uri != expected_uri {
                return Err(mismatch(uri));
            }
        }
        if let Some(dns) = self.san_dns.first() {
            return Err(mismatch(dns));
        }
        if self.other_sans > 0 {
            return Err(mismatch("a non-URI subject alternative name"));
        }
        Ok(())
    }
}

impl fmt::Debug for VerifiedCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedCsr")
            .field("key_kind", &self.key_kind)
            .field("common_names", &self.common_names)
            .field("san_uris", &self.san_uris)
            .field("san_dns", &self.san_dns)
            .field(
                "challenge_password",
                &self.challenge_password.as_ref().map(|_| "<redacted>"),
            )
            .field("other_attributes", &self.attributes)
            .finish()
    }
}

impl PublicKeyData for CsrPublicKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.0.key_bits
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self.0.key_kind {
            KeyKind::EcdsaP256 => &PKCS_ECDSA_P256_SHA256,
            KeyKind::EcdsaP384 => &PKCS_ECDSA_P384_SHA384,
            KeyKind::Ed25519 => &PKCS_ED25519,
            KeyKind::Rsa { .. } => &PKCS_RSA_SHA256,
        }
    }
}

// === impl LocalCa ===

impl LocalCa {
    /// Issues a device certificate (LDevID) for the public key of a verified CSR: no private
    /// key is generated here. Refused with [`CsrError::IdentityMismatch`] (inside
    /// [`CaError::Csr`]) if the CSR names anyone but `device` of `tenant` (see
    /// [`VerifiedCsr::check_names`]).
    ///
    /// The certificate is what [`issue_device_with`](Self::issue_device_with) issues: subject
    /// `O=<tenant>, CN=<device>`, SAN URI `gatehouse://<tenant>/device/<device>`, clientAuth,
    /// the CRL distribution point set with [`with_crl_url`](Self::with_crl_url); valid from
    /// five minutes ago for `validity` ([`DEFAULT_CSR_VALIDITY`], 30 days, is the usual).
    pub fn issue_from_csr(
        &self,
        csr: &VerifiedCsr,
        tenant: &TenantId,
        device: &DeviceId,
        validity: Duration,
    ) -> Result<IssuedCertPublic, CaError> {
        csr.check_names(tenant, device)?;
        let params = DeviceCertParams::new(tenant.clone(), device.clone(), validity)?;
        let cert_params = self.device_params(&params)?;
        let cert = self.sign(&cert_params, &CsrPublicKey(csr))?;
        Ok(IssuedCertPublic::new(
            cert.pem(),
            cert.der().clone(),
            self.issued_chain(),
            &cert_params,
        ))
    }
}
