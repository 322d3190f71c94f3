//! Identity from certificates: which name wins, and which certificates name no device.

use gatehouse_pki::{IdentityError, identity_from_cert};
use gatehouse_types::{IdError, IdentitySource};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A self-signed certificate with these subject attributes and SAN URIs (identity reading
/// does not verify, so self-signed is enough).
fn cert(subject: &[(DnType, &str)], uris: &[&str]) -> Result<Vec<u8>, rcgen::Error> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for (ty, value) in subject {
        dn.push(ty.clone(), *value);
    }
    params.distinguished_name = dn;
    params.subject_alt_names = uris
        .iter()
        .map(|u| Ok(SanType::URI((*u).try_into()?)))
        .collect::<Result<_, rcgen::Error>>()?;
    let key = KeyPair::generate()?;
    Ok(params.self_signed(&key)?.der().to_vec())
}

#[test]
fn san_uri_wins_over_common_name() -> TestResult {
    let der = cert(
        &[
            (DnType::OrganizationName, "other"),
            (DnType::CommonName, "cn-name"),
        ],
        &["gatehouse://acme/device/uri-name"],
    )?;
    let id = identity_from_cert(&der)?;
    assert_eq!(id.tenant.as_str(), "acme");
    assert_eq!(id.device.as_str(), "uri-name");
    assert_eq!(id.source, IdentitySource::CertificateSanUri);
    Ok(())
}

#[test]
fn common_name_is_the_device_in_the_default_tenant() -> TestResult {
    let der = cert(
        &[(DnType::CommonName, "legacy-7")],
        &["https://vendor.example/x"],
    )?;
    let id = identity_from_cert(&der)?;
    assert_eq!(id.tenant.as_str(), "default");
    assert_eq!(id.device.as_str(), "legacy-7");
    assert_eq!(id.source, IdentitySource::CertificateCommonName);
    Ok(())
}

#[test]
fn repeated_identical_san_uris_are_one_identity() -> TestResult {
    let der = cert(
        &[],
        &["gatehouse://acme/device/d1", "GATEHOUSE://acme/device/d1"],
    )?;
    assert_eq!(identity_from_cert(&der)?.device.as_str(), "d1");
    Ok(())
}

#[test]
fn conflicting_san_uris_are_refused() -> TestResult {
    let der = cert(
        &[(DnType::CommonName, "d1")],
        &["gatehouse://acme/device/d1", "gatehouse://acme/device/d2"],
    )?;
    assert_eq!(
        identity_from_cert(&der),
        Err(IdentityError::ConflictingSanUris)
    );
    let der = cert(
        &[],
        &["gatehouse://acme/device/d1", "gatehouse://other/device/d1"],
    )?;
    assert_eq!(
        identity_from_cert(&der),
        Err(IdentityError::ConflictingSanUris)
    );
    Ok(())
}

#[test]
fn malformed_gatehouse_uri_does_not_fall_back_to_common_name() -> TestResult {
    let der = cert(
        &[(DnType::CommonName, "d1")],
        &["gatehouse://acme/devices/d1"],
    )?;
    assert!(matches!(
        identity_from_cert(&der),
        Err(IdentityError::BadSanUri { .. })
    ));
    let der = cert(&[], &["gatehouse://ac%6De/device/d1"])?;
    assert_eq!(
        identity_from_cert(&der),
        Err(IdentityError::InvalidTenant(IdError::BadChar('%')))
    );
    let der = cert(&[], &["gatehouse://acme/device/d1/../d2"])?;
    assert_eq!(
        identity_from_cert(&der),
        Err(IdentityError::InvalidDevice(IdError::BadChar('/')))
    );
    Ok(())
}

#[test]
fn common_name_with_invalid_characters_is_refused() -> TestResult {
    for bad in ["a/b", "dev#1", "sensor+", "two words"] {
        let der = cert(&[(DnType::CommonName, bad)], &[])?;
        assert!(
            matches!(
                identity_from_cert(&der),
                Err(IdentityError::InvalidDevice(_))
            ),
            "{bad:?} accepted"
        );
    }
    let der = cert(&[(DnType::CommonName, &"x".repeat(129))], &[])?;
    assert!(matches!(
        identity_from_cert(&der),
        Err(IdentityError::InvalidDevice(IdError::TooLong { .. }))
    ));
    Ok(())
}

#[test]
fn certificate_without_any_name_is_refused() -> TestResult {
    let der = cert(&[(DnType::OrganizationName, "acme")], &[])?;
    assert_eq!(identity_from_cert(&der), Err(IdentityError::NoIdentity));
    Ok(())
}

#[test]
fn trailing_bytes_are_refused() -> TestResult {
    let mut der = cert(&[(DnType::CommonName, "d1")], &[])?;
    der.push(0);
    assert!(matches!(
        identity_from_cert(&der),
        Err(IdentityError::Malformed(_))
    ));
    Ok(())
}
