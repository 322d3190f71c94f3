//! Property tests for the parsers that read bytes a client sent: CSRs (EST bodies) and
//! client certificates (IDevIDs, device certificates). Whatever the input, they return a
//! value or an error; they never panic.

use std::time::Duration;

use gatehouse_pki::{
    CsrPolicy, IdevidParams, LocalCa, ManufacturerCa, ModelRule, identity_from_cert,
    model_from_cert, verify_csr, verify_idevid,
};
use proptest::prelude::*;
use rustls_pki_types::CertificateDer;

fn valid_csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec!["ignored.example".to_owned()]).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "dev-1");
    params.serialize_request(&key).expect("csr").der().to_vec()
}

fn valid_cert() -> Vec<u8> {
    let m = ManufacturerCa::new("Acme").expect("ca");
    m.issue_idevid(&IdevidParams::new("SN-1", "thermo").with_model_uri("urn:acme:model:x"))
        .expect("idevid")
        .cert_der()
        .expect("der")
        .to_vec()
}

/// Flips, truncates or overwrites bytes of a valid structure.
fn mutate(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len();
    (prop::collection::vec((0..len, any::<u8>()), 0..8), 0..=len).prop_map(move |(edits, keep)| {
        let mut v = base.clone();
        for (i, b) in edits {
            v[i] = b;
        }
        v.truncate(keep.max(1));
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic_the_csr_parser(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = verify_csr(&bytes, &CsrPolicy::default());
    }

    #[test]
    fn damaged_csrs_are_refused_or_still_verify(bytes in mutate(valid_csr())) {
        if let Ok(csr) = verify_csr(&bytes, &CsrPolicy::default()) {
            // Whatever survived verified its own signature: its names are checkable.
            let _ = csr.check_names(
                &gatehouse_types::TenantId::default(),
                &gatehouse_types::DeviceId::new("dev-1").expect("id"),
            );
        }
    }

    #[test]
    fn damaged_client_certificates_never_panic_identity_or_idevid_checks(bytes in mutate(valid_cert())) {
        let der = CertificateDer::from(bytes.clone());
        let _ = identity_from_cert(&bytes);
        let _ = model_from_cert(&bytes, &[ModelRule::SanUriPrefix("urn:acme:model:".into())]);
        let root = ManufacturerCa::new("Acme").expect("ca").cert_der();
        let _ = verify_idevid(&[der], &[root], time::OffsetDateTime::now_utc());
    }
}

#[test]
fn a_valid_csr_verifies_and_names_its_device() {
    let csr = verify_csr(&valid_csr(), &CsrPolicy::default()).expect("valid");
    assert_eq!(csr.common_names(), ["dev-1"]);
    // The DNS SAN it asks for is refused by the name check.
    let dir = tempfile::tempdir().expect("dir");
    let ca = LocalCa::load_or_create(dir.path()).expect("ca");
    let r = ca.issue_from_csr(
        &csr,
        &gatehouse_types::TenantId::default(),
        &gatehouse_types::DeviceId::new("dev-1").expect("id"),
        Duration::from_secs(60),
    );
    assert!(r.is_err(), "a CSR asking for a DNS name must be refused");
}
