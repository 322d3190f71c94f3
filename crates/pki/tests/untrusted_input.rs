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

/// The manufacturer whose root the IDevIDs below are checked against.
fn acme() -> &'static ManufacturerCa {
    static ACME: std::sync::OnceLock<ManufacturerCa> = std::sync::OnceLock::new();
    ACME.get_or_init(|| ManufacturerCa::new("Acme").expect("ca"))
}

fn valid_cert() -> Vec<u8> {
    acme()
        .issue_idevid(&IdevidParams::new("SN-1", "thermo").with_model_uri("urn:acme:model:x"))
        .expect("idevid")
        .cert_der()
        .expect("der")
        .to_vec()
}

/// Changes one to eight bytes of a valid structure, keeping its length: a tampered copy,
/// never the original.
fn tamper(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len();
    prop::collection::vec((0..len, 1..=255u8), 1..8).prop_map(move |edits| {
        let mut v = base.clone();
        for (i, x) in edits {
            v[i] ^= x;
        }
        v
    })
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

/// 256 cases each; failures are kept in `proptest-regressions/untrusted_input.txt`
/// (relative to the crate) and replayed first on every run.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "proptest-regressions/untrusted_input.txt",
            ),
        )),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_the_csr_parser(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = verify_csr(&bytes, &CsrPolicy::default());
    }

    #[test]
    fn damaged_csrs_never_panic_the_parser(bytes in mutate(valid_csr())) {
        let _ = verify_csr(&bytes, &CsrPolicy::default());
    }

    /// A tampered CSR is refused, or — where the change fell outside what is signed and
    /// left valid DER (a byte of the signature's encoding that does not matter) — it still
    /// asks for exactly the key and names its holder signed.
    #[test]
    fn tampered_csrs_are_refused_or_say_what_was_signed(
        (original, bytes) in Just(valid_csr()).prop_flat_map(|o| (Just(o.clone()), tamper(o)))
    ) {
        let signed = verify_csr(&original, &CsrPolicy::default()).expect("the original verifies");
        if let Ok(csr) = verify_csr(&bytes, &CsrPolicy::default()) {
            prop_assert_eq!(csr.public_key_spki(), signed.public_key_spki());
            prop_assert_eq!(csr.common_names(), signed.common_names());
            prop_assert_eq!(csr.san_uris(), signed.san_uris());
        }
    }

    #[test]
    fn damaged_client_certificates_never_panic_identity_or_idevid_checks(bytes in mutate(valid_cert())) {
        let der = CertificateDer::from(bytes.clone());
        let _ = identity_from_cert(&bytes);
        let _ = model_from_cert(&bytes, &[ModelRule::SanUriPrefix("urn:acme:model:".into())]);
        let _ = verify_idevid(&[der], &[acme().cert_der()], time::OffsetDateTime::now_utc());
    }

    /// An IDevID with any byte changed is refused by the very root that issued it.
    #[test]
    fn tampered_idevids_are_refused_by_their_own_root(bytes in tamper(valid_cert())) {
        let der = CertificateDer::from(bytes);
        prop_assert!(
            verify_idevid(&[der], &[acme().cert_der()], time::OffsetDateTime::now_utc()).is_err()
        );
    }
}

#[test]
fn an_untampered_idevid_verifies_against_its_root() {
    let der = CertificateDer::from(valid_cert());
    verify_idevid(
        &[der],
        &[acme().cert_der()],
        time::OffsetDateTime::now_utc(),
    )
    .expect("the original IDevID verifies");
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
