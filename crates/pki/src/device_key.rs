//! A device's certificate key, used after enrollment: its kind (for the trust scan's key
//! strength) and signatures made with it (signed posture reports).

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::KeyKind;

/// Why a device key could not be read or a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceKeyError {
    /// The certificate does not parse.
    #[error("certificate does not parse: {0}")]
    Certificate(String),
    /// The certificate's key is of a kind Gatehouse does not verify with.
    #[error("unsupported certificate key: {0}")]
    Unsupported(String),
    /// The signature is not a valid signature of the message under the key.
    #[error("signature does not verify with the device's certificate key")]
    BadSignature,
}

fn key_kind(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyKind, DeviceKeyError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => Ok(KeyKind::EcdsaP256),
            Some(c) if c == OID_NIST_EC_P384 => Ok(KeyKind::EcdsaP384),
            _ => Err(DeviceKeyError::Unsupported("ECDSA on another curve".into())),
        }
    } else if *alg == OID_SIG_ED25519 {
        Ok(KeyKind::Ed25519)
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => Ok(KeyKind::Rsa {
                bits: rsa.key_size(),
            }),
            _ => Err(DeviceKeyError::Unsupported("unreadable RSA key".into())),
        }
    } else {
        Err(DeviceKeyError::Unsupported(format!("key algorithm {alg}")))
    }
}

fn parse(cert_der: &[u8]) -> Result<X509Certificate<'_>, DeviceKeyError> {
    X509Certificate::from_der(cert_der)
        .map(|(_, c)| c)
        .map_err(|e| DeviceKeyError::Certificate(e.to_string()))
}

/// The kind of key a certificate (DER) carries.
pub fn certificate_key_kind(cert_der: &[u8]) -> Result<KeyKind, DeviceKeyError> {
    key_kind(parse(cert_der)?.public_key())
}

/// Checks that `sig` is a signature of `msg` made with the key of the certificate
/// `cert_der`: ECDSA P-256 with SHA-256 or P-384 with SHA-384 (ASN.1 DER signatures),
/// Ed25519, or RSA PKCS#1 v1.5 with SHA-256.
pub fn verify_with_certificate(
    cert_der: &[u8],
    msg: &[u8],
    sig: &[u8],
) -> Result<(), DeviceKeyError> {
    let cert = parse(cert_der)?;
    let spki = cert.public_key();
    let alg: &'static dyn VerificationAlgorithm = match key_kind(spki)? {
        KeyKind::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1,
        KeyKind::EcdsaP384 => &signature::ECDSA_P384_SHA384_ASN1,
        KeyKind::Ed25519 => &signature::ED25519,
        KeyKind::Rsa { .. } => &signature::RSA_PKCS1_2048_8192_SHA256,
    };
    UnparsedPublicKey::new(alg, &spki.subject_public_key.data)
        .verify(msg, sig)
        .map_err(|_| DeviceKeyError::BadSignature)
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SigningKey};

    use super::*;

    #[test]
    fn signatures_verify_with_the_certificate_key_only() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let key = KeyPair::generate_for(alg).unwrap();
            let cert = CertificateParams::new(vec!["d1".into()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let sig = key.sign(b"report").unwrap();
            verify_with_certificate(cert.der(), b"report", &sig).unwrap();
            assert_eq!(
                verify_with_certificate(cert.der(), b"other", &sig),
                Err(DeviceKeyError::BadSignature)
            );
            let other = KeyPair::generate_for(alg).unwrap();
            let forged = other.sign(b"report").unwrap();
            assert_eq!(
                verify_with_certificate(cert.der(), b"report", &forged),
                Err(DeviceKeyError::BadSignature)
            );
        }
        assert!(verify_with_certificate(b"junk", b"m", b"s").is_err());
    }

    #[test]
    fn key_kinds_are_read() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cert = CertificateParams::new(vec!["d1".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(certificate_key_kind(cert.der()), Ok(KeyKind::EcdsaP384));
    }
}
