//! Gatehouse's public-key infrastructure: the local certificate authority that issues device
//! and server certificates, the device identity read back from a client certificate, and the
//! rustls configurations that put both on the wire.
//!
//! Invariant 1 of the design is *identity is a certificate*: a device is who its client
//! certificate says it is, and nothing else. This crate is where that holds.
//!
//! - [`LocalCa`] keeps an ECDSA P-256 root and an issuing intermediate in a directory, their
//!   keys sealed (AES-256-GCM) under a key-encryption key ([`KeySource`]), or works from an
//!   external issuing CA given as PEM. It issues [`IssuedCert`]s (device certificates naming
//!   `gatehouse://<tenant>/device/<id>` in a SAN URI, server certificates), certificates
//!   for a checked CSR ([`verify_csr`], [`LocalCa::issue_from_csr`]), and CRLs; its issuing
//!   CA can be rolled while the old one's certificates stay valid.
//! - [`verify_idevid`] checks a manufacturer identity (802.1AR IDevID) and
//!   [`pkcs7_certs_only`] packs certificates for EST.
//! - [`identity_from_cert`] turns a verified peer certificate into an
//!   [`Identity`](gatehouse_types::Identity); [`tls_facts`] describes the TLS session for the
//!   detection stage.
//! - [`ServerTlsBuilder`] / [`server_config`] and [`client_config`] build rustls configs with
//!   the *ring* provider chosen explicitly, TLS 1.2 and 1.3 only, and client certificates
//!   checked by webpki against the CA.
//!
//! The one design decision that shapes this crate: **the CA's private key never leaves
//! [`LocalCa`]**. No accessor returns it, no error or `Debug` output prints it, and every
//! private key that does travel (a freshly issued device key) is wrapped in a [`SecretPem`]
//! whose `Debug` prints `<redacted>` and whose memory is wiped on drop. Issuance is split into
//! "build the certificate parameters" and "sign a public key", so that enrollment (EST, a CSR
//! carrying the device's own public key) can reuse the signing half later without the key
//! ever being generated here.

mod ca;
mod ca_info;
mod crl;
mod csr;
mod device_key;
mod enroll;
mod fsutil;
mod identity;
mod idevid;
mod issued;
mod kek;
pub mod password;
mod pem;
mod pkcs7;
mod secret;
mod tls;

pub use ca::{CaError, DeviceCertParams, LocalCa, ServerCertParams};
pub use ca_info::{CaCertInfo, inspect_ca_pem};
pub use crl::{Crl, RevocationReason, RevokedCert};
pub use csr::{CsrError, CsrPolicy, DEFAULT_CSR_VALIDITY, KeyKind, VerifiedCsr, verify_csr};
pub use device_key::{DeviceKeyError, certificate_key_kind, verify_with_certificate};
pub use enroll::{Credential, EnrollError, EnrollPolicy, Enrolled, Enroller, PublishedCrl};
pub use identity::{IdentityError, identity_from_cert, tls_facts};
pub use idevid::{
    IdevidError, IdevidInfo, IdevidParams, ManufacturerCa, ModelRule, model_from_cert,
    verify_idevid,
};
pub use issued::{IssuedCert, IssuedCertPublic, WrittenFiles};
pub use kek::{KEK_ENV, KekError, KeySource};
pub use pem::{PemError, load_certs_pem, load_key_pem};
pub use pkcs7::pkcs7_certs_only;
pub use secret::SecretPem;
pub use tls::{ClientAuth, ServerTlsBuilder, TlsError, client_config, server_config};

/// Scheme of the SAN URI that names a device: `gatehouse://<tenant>/device/<id>`.
pub const DEVICE_URI_SCHEME: &str = "gatehouse";

#[cfg(test)]
mod redaction_tests {
    //! Every error variant, formatted with `Display` and `Debug`, next to a real key: none
    //! of them may carry key material. The `match`es list every variant without a wildcard,
    //! so a new variant does not compile until it is covered here.

    use std::path::PathBuf;

    use super::*;

    fn all_ca_errors() -> Vec<CaError> {
        let path = PathBuf::from("ca/ca.key");
        let v = vec![
            CaError::Io {
                path: path.clone(),
                source: std::io::Error::other("disk full"),
            },
            CaError::KeyPermissions {
                path: path.clone(),
                mode: 0o644,
            },
            CaError::DirectoryPermissions {
                path: path.clone(),
                mode: 0o777,
            },
            CaError::NotAFile { path: path.clone() },
            CaError::Incomplete {
                present: path.clone(),
                missing: path.clone(),
            },
            CaError::InvalidKey {
                path: path.clone(),
                reason: PemError::MalformedKey("x").to_string(),
            },
            CaError::InvalidCertificate {
                path: path.clone(),
                reason: "x".to_owned(),
            },
            CaError::KeyMismatch {
                key: path.clone(),
                cert: path.clone(),
            },
            CaError::Expired {
                not_after: time::OffsetDateTime::UNIX_EPOCH,
            },
            CaError::InvalidValidity("x"),
            CaError::InvalidName {
                name: "x".to_owned(),
                reason: "y".to_owned(),
            },
            CaError::NoServerNames,
            CaError::Random,
            CaError::Generation("x".to_owned()),
            CaError::Kek(KekError::Weak),
            CaError::Kek(KekError::EnvMissing("GATEHOUSE_CA_KEK".to_owned())),
            CaError::Kek(KekError::Permissions {
                path: path.clone(),
                mode: 0o644,
            }),
            CaError::WrongKek { path: path.clone() },
            CaError::Unsupported("x"),
            CaError::Csr(CsrError::BadSignature),
            CaError::Csr(CsrError::IdentityMismatch {
                named: "gatehouse://acme/device/other".to_owned(),
                expected: "acme/d".to_owned(),
            }),
        ];
        for e in &v {
            match e {
                CaError::Io { .. }
                | CaError::KeyPermissions { .. }
                | CaError::DirectoryPermissions { .. }
                | CaError::NotAFile { .. }
                | CaError::Incomplete { .. }
                | CaError::InvalidKey { .. }
                | CaError::InvalidCertificate { .. }
                | CaError::KeyMismatch { .. }
                | CaError::Expired { .. }
                | CaError::InvalidValidity(_)
                | CaError::InvalidName { .. }
                | CaError::NoServerNames
                | CaError::Random
                | CaError::Generation(_)
                | CaError::Kek(_)
                | CaError::WrongKek { .. }
                | CaError::Unsupported(_)
                | CaError::Csr(_) => {}
            }
        }
        v
    }

    fn all_identity_errors() -> Vec<IdentityError> {
        let v = vec![
            IdentityError::Malformed("x".to_owned()),
            IdentityError::NoIdentity,
            IdentityError::BadSanUri {
                uri: "gatehouse://x".to_owned(),
            },
            IdentityError::InvalidTenant(gatehouse_types::IdError::Empty),
            IdentityError::InvalidDevice(gatehouse_types::IdError::BadChar('/')),
            IdentityError::ConflictingSanUris,
            IdentityError::ConflictingCommonNames,
            IdentityError::CommonNameNotText,
        ];
        for e in &v {
            match e {
                IdentityError::Malformed(_)
                | IdentityError::NoIdentity
                | IdentityError::BadSanUri { .. }
                | IdentityError::InvalidTenant(_)
                | IdentityError::InvalidDevice(_)
                | IdentityError::ConflictingSanUris
                | IdentityError::ConflictingCommonNames
                | IdentityError::CommonNameNotText => {}
            }
        }
        v
    }

    fn all_pem_errors(key_pem: &str) -> Vec<PemError> {
        // Real errors from damaged copies of the key, plus every variant.
        let mut v = vec![
            PemError::NoCertificates,
            PemError::MalformedCertificate("x".to_owned()),
            PemError::NoKey,
            PemError::MalformedKey("x"),
        ];
        let damaged = [
            key_pem.replacen('A', "!", 1),
            key_pem.replace("-----END PRIVATE KEY-----", ""),
            key_pem.replace("-----BEGIN PRIVATE KEY-----", "-----BEGIN PRIVATE KEY"),
        ];
        for d in &damaged {
            if let Err(e) = load_key_pem(d) {
                v.push(e);
            }
            if let Err(e) = load_certs_pem(d) {
                v.push(e);
            }
        }
        for e in &v {
            match e {
                PemError::NoCertificates
                | PemError::MalformedCertificate(_)
                | PemError::NoKey
                | PemError::MalformedKey(_) => {}
            }
        }
        v
    }

    fn all_tls_errors(key_pem: &str) -> Vec<TlsError> {
        let v = vec![
            TlsError::NoClientRoots,
            TlsError::NoRoots,
            TlsError::InvalidRoot(rustls::Error::General("bad root".to_owned())),
            TlsError::Verifier(rustls::server::VerifierBuilderError::NoRootAnchors),
            TlsError::Rustls(rustls::Error::InconsistentKeys(
                rustls::InconsistentKeys::KeyMismatch,
            )),
            TlsError::Pem(PemError::MalformedKey("x")),
            TlsError::Pem(
                load_key_pem(&key_pem.replacen('A', "!", 1))
                    .err()
                    .unwrap_or(PemError::NoKey),
            ),
        ];
        for e in &v {
            match e {
                TlsError::NoClientRoots
                | TlsError::NoRoots
                | TlsError::InvalidRoot(_)
                | TlsError::Verifier(_)
                | TlsError::Rustls(_)
                | TlsError::Pem(_) => {}
            }
        }
        v
    }

    #[test]
    fn no_error_or_debug_output_carries_key_material() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let ca = LocalCa::load_or_create(dir.path())?;
        // The sealed key files and the KEK: none of their text may show.
        let ca_key = [
            std::fs::read_to_string(dir.path().join("root.key"))?,
            std::fs::read_to_string(dir.path().join("issuing-1.key"))?,
            std::fs::read_to_string(dir.path().join("ca.kek"))?,
        ]
        .concat();
        let device = ca.issue_device(
            &gatehouse_types::TenantId::new("acme")?,
            &gatehouse_types::DeviceId::new("d")?,
            std::time::Duration::from_secs(60),
        )?;

        let mut texts = Vec::new();
        for e in all_ca_errors() {
            texts.push(format!("{e} {e:?}"));
        }
        for e in all_identity_errors() {
            texts.push(format!("{e} {e:?}"));
        }
        for key in [ca_key.as_str(), device.key_pem.expose()] {
            for e in all_pem_errors(key) {
                texts.push(format!("{e} {e:?}"));
            }
            for e in all_tls_errors(key) {
                texts.push(format!("{e} {e:?}"));
            }
        }
        texts.push(format!("{ca:?} {ca:#?}"));
        texts.push(format!("{device:?} {device:#?}"));

        for key in [ca_key.as_str(), device.key_pem.expose()] {
            let body: Vec<&str> = key
                .lines()
                .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                .collect();
            assert!(!body.is_empty());
            for text in &texts {
                for line in &body {
                    assert!(!text.contains(line), "key material in: {text}");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod thread_safety {
    /// The CA is shared across tasks (`Arc<LocalCa>`, `spawn_blocking`) and issued
    /// certificates cross threads.
    #[test]
    fn shared_types_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::LocalCa>();
        assert_send_sync::<super::IssuedCert>();
        assert_send_sync::<super::ServerTlsBuilder>();
        assert_send_sync::<super::CaError>();
        assert_send_sync::<super::TlsError>();
    }
}
