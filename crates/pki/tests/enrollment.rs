//! Pieces of enrollment: manufacturer identities (IDevIDs) and PKCS#7 certs-only bundles.

use std::fs;
use std::process::Command;
use std::time::Duration;

use gatehouse_pki::{
    IdevidError, IdevidParams, LocalCa, ManufacturerCa, ModelRule, model_from_cert,
    pkcs7_certs_only, verify_idevid,
};
use gatehouse_types::{DeviceId, TenantId};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const MODEL_OID: &str = "1.3.6.1.4.1.55555.1.1";

#[test]
fn idevid_of_a_registered_manufacturer_gives_serial_and_model() -> TestResult {
    let acme = ManufacturerCa::new("Acme Devices")?;
    let other = ManufacturerCa::new("Other")?;
    let idevid = acme.issue_idevid(
        &IdevidParams::new("SN-000123", "thermo")
            .with_model_uri("urn:acme:model:thermo-x2")
            .with_model_extension(MODEL_OID, "thermo-x2-ext"),
    )?;
    let chain = vec![idevid.cert_der()?];
    let now = time::OffsetDateTime::now_utc();

    let info = verify_idevid(&chain, &[other.cert_der(), acme.cert_der()], now)?;
    assert_eq!(info.manufacturer_root, 1);
    assert_eq!(info.device_serial.as_deref(), Some("SN-000123"));
    assert_eq!(info.common_name.as_deref(), Some("thermo"));
    assert!(
        info.issuer.contains("Acme Devices IDevID CA"),
        "{}",
        info.issuer
    );
    assert_eq!(info.cert_serial_hex, idevid.serial_hex);

    let der = chain[0].as_ref();
    let by_uri = [ModelRule::SanUriPrefix("urn:acme:model:".to_owned())];
    assert_eq!(model_from_cert(der, &by_uri)?.as_deref(), Some("thermo-x2"));
    let by_oid = [ModelRule::ExtensionOid(MODEL_OID.to_owned())];
    assert_eq!(
        model_from_cert(der, &by_oid)?.as_deref(),
        Some("thermo-x2-ext")
    );
    let by_attr = [ModelRule::SubjectAttributeOid("2.5.4.3".to_owned())];
    assert_eq!(model_from_cert(der, &by_attr)?.as_deref(), Some("thermo"));
    let none = [ModelRule::SanUriPrefix("urn:other:".to_owned())];
    assert_eq!(model_from_cert(der, &none)?, None);
    Ok(())
}

#[test]
fn idevid_from_an_unregistered_manufacturer_is_refused() -> TestResult {
    let acme = ManufacturerCa::new("Acme Devices")?;
    let rogue = ManufacturerCa::new("Acme Devices")?;
    let idevid = rogue.issue_idevid(&IdevidParams::new("SN-1", "thermo"))?;
    let now = time::OffsetDateTime::now_utc();
    let err = verify_idevid(&[idevid.cert_der()?], &[acme.cert_der()], now)
        .expect_err("rogue manufacturer accepted");
    assert!(matches!(err, IdevidError::Untrusted(_)), "{err:?}");
    assert!(matches!(
        verify_idevid(&[], &[acme.cert_der()], now),
        Err(IdevidError::Empty)
    ));
    assert!(matches!(
        verify_idevid(&[idevid.cert_der()?], &[], now),
        Err(IdevidError::NoRoots)
    ));
    // An expired IDevID is refused.
    let mut short = IdevidParams::new("SN-2", "thermo");
    short.validity = Duration::from_secs(60);
    let expired = acme.issue_idevid(&short)?;
    let later = now + time::Duration::hours(1);
    assert!(matches!(
        verify_idevid(&[expired.cert_der()?], &[acme.cert_der()], later),
        Err(IdevidError::Untrusted(_))
    ));
    Ok(())
}

#[test]
fn pkcs7_certs_only_is_read_by_openssl() -> TestResult {
    let available = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    let data = tempfile::tempdir()?;
    let ca = LocalCa::load_or_create(&data.path().join("ca"))?;
    let dev = ca.issue_device(
        &TenantId::new("acme")?,
        &DeviceId::new("d-1")?,
        Duration::from_secs(3600),
    )?;
    let mut certs = vec![dev.cert_der()?];
    certs.extend(gatehouse_pki::load_certs_pem(ca.chain_pem())?);
    let p7 = pkcs7_certs_only(&certs);
    if !available {
        return Ok(());
    }
    fs::write(data.path().join("p7.der"), &p7)?;
    let out = Command::new("openssl")
        .args(["pkcs7", "-inform", "DER", "-in", "p7.der", "-print_certs"])
        .current_dir(data.path())
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = gatehouse_pki::load_certs_pem(&String::from_utf8(out.stdout)?)?;
    assert_eq!(printed, certs);
    Ok(())
}
