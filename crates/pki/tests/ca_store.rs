//! The CA directory: creation, reloading, file modes and the refusals that protect the key.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use gatehouse_pki::{CaError, LocalCa};
use gatehouse_types::{DeviceId, TenantId};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn mode(path: &Path) -> std::io::Result<u32> {
    Ok(fs::metadata(path)?.permissions().mode() & 0o777)
}

#[test]
fn first_start_creates_private_ca_directory() -> TestResult {
    let data = tempfile::tempdir()?;
    let dir = data.path().join("data").join("ca");
    let ca = LocalCa::load_or_create(&dir)?;

    assert_eq!(mode(&dir)?, 0o700);
    for key in ["root.key", "issuing-1.key", "ca.kek"] {
        assert_eq!(mode(&dir.join(key))?, 0o600, "{key}");
    }
    for key in ["root.key", "issuing-1.key"] {
        let text = fs::read_to_string(dir.join(key))?;
        assert!(
            text.starts_with("-----BEGIN GATEHOUSE ENCRYPTED PRIVATE KEY-----"),
            "{key} is not sealed"
        );
    }
    let root = fs::read_to_string(dir.join("root.crt"))?;
    assert_eq!(root, ca.cert_pem());
    let bundle = fs::read_to_string(dir.join("ca.crt"))?;
    assert_eq!(bundle, ca.chain_pem());
    assert_eq!(gatehouse_pki::load_certs_pem(&bundle)?.len(), 2);
    assert!(bundle.ends_with(&root), "the bundle ends with the root");
    // No temporary files left behind.
    let mut names: Vec<_> = fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    assert_eq!(
        names,
        [
            ".lock",
            "ca.crt",
            "ca.kek",
            "issuing-1.crt",
            "issuing-1.key",
            "root.crt",
            "root.key"
        ]
    );

    let years = (ca.root_not_after() - time::OffsetDateTime::now_utc()).whole_days() / 365;
    assert_eq!(years, 10);
    let years = (ca.not_after() - time::OffsetDateTime::now_utc()).whole_days() / 365;
    assert_eq!(years, 5);
    assert_eq!(ca.client_trust_anchors().len(), 2);
    Ok(())
}

#[test]
fn second_start_loads_the_same_ca() -> TestResult {
    let data = tempfile::tempdir()?;
    let first = LocalCa::load_or_create(data.path())?;
    let second = LocalCa::load_or_create(data.path())?;
    assert_eq!(first.cert_der(), second.cert_der());
    assert_eq!(first.cert_pem(), second.cert_pem());

    // A certificate issued by the reloaded CA chains to the original one.
    let tenant = TenantId::new("acme")?;
    let device = DeviceId::new("d-1")?;
    let issued = second.issue_device(&tenant, &device, Duration::from_secs(60))?;
    assert_eq!(issued.chain_pem, first.chain_pem());
    Ok(())
}

#[test]
fn group_readable_ca_key_is_refused() -> TestResult {
    let data = tempfile::tempdir()?;
    LocalCa::load_or_create(data.path())?;
    let key = data.path().join("root.key");
    for open in [0o640, 0o604, 0o660, 0o644] {
        fs::set_permissions(&key, fs::Permissions::from_mode(open))?;
        let err = LocalCa::load_or_create(data.path()).expect_err("open key accepted");
        assert!(
            matches!(err, CaError::KeyPermissions { mode, .. } if mode == open),
            "{err:?}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
    fs::set_permissions(&key, fs::Permissions::from_mode(0o400))?;
    LocalCa::load_or_create(data.path())?;
    Ok(())
}

#[test]
fn group_writable_ca_directory_is_refused() -> TestResult {
    let data = tempfile::tempdir()?;
    LocalCa::load_or_create(data.path())?;
    fs::set_permissions(data.path(), fs::Permissions::from_mode(0o770))?;
    let err = LocalCa::load_or_create(data.path()).expect_err("open directory accepted");
    assert!(
        matches!(err, CaError::DirectoryPermissions { .. }),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn key_of_another_ca_is_refused() -> TestResult {
    let a = tempfile::tempdir()?;
    let b = tempfile::tempdir()?;
    LocalCa::load_or_create(a.path())?;
    LocalCa::load_or_create(b.path())?;
    // Sealed under b's KEK: a's KEK does not open it.
    fs::copy(b.path().join("root.key"), a.path().join("root.key"))?;
    fs::set_permissions(a.path().join("root.key"), fs::Permissions::from_mode(0o600))?;
    let err = LocalCa::load_or_create(a.path()).expect_err("foreign sealed key accepted");
    assert!(matches!(err, CaError::WrongKek { .. }), "{err:?}");
    // With b's KEK too, the key opens but is not a's certificate's.
    fs::copy(b.path().join("ca.kek"), a.path().join("ca.kek"))?;
    fs::copy(a.path().join("issuing-1.key"), a.path().join("keep"))?;
    let err = LocalCa::load_or_create(a.path()).expect_err("mismatched key accepted");
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err:?}");
    Ok(())
}

#[test]
fn garbage_files_are_refused_not_replaced() -> TestResult {
    let data = tempfile::tempdir()?;
    LocalCa::load_or_create(data.path())?;
    let key = data.path().join("root.key");
    let original = fs::read(&key)?;

    fs::write(&key, "not a key")?;
    let err = LocalCa::load_or_create(data.path()).expect_err("garbage key accepted");
    assert!(matches!(err, CaError::InvalidKey { .. }), "{err:?}");
    assert_eq!(
        fs::read_to_string(&key)?,
        "not a key",
        "the key file was replaced"
    );

    fs::write(&key, original)?;
    fs::write(data.path().join("root.crt"), "not a certificate")?;
    let err = LocalCa::load_or_create(data.path()).expect_err("garbage cert accepted");
    assert!(matches!(err, CaError::InvalidCertificate { .. }), "{err:?}");
    Ok(())
}

#[test]
fn half_present_ca_is_refused_not_overwritten() -> TestResult {
    let data = tempfile::tempdir()?;
    LocalCa::load_or_create(data.path())?;
    fs::remove_file(data.path().join("root.crt"))?;
    let err = LocalCa::load_or_create(data.path()).expect_err("key without cert accepted");
    assert!(matches!(err, CaError::Incomplete { .. }), "{err:?}");
    assert!(data.path().join("root.key").exists());
    assert!(!data.path().join("root.crt").exists());
    Ok(())
}

#[test]
fn concurrent_first_starts_agree_on_one_ca() -> TestResult {
    let data = tempfile::tempdir()?;
    let dir = data.path().join("ca");
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                LocalCa::load_or_create(&dir).map(|ca| ca.cert_pem().to_owned())
            })
        })
        .collect();
    let mut pems = Vec::new();
    for h in handles {
        pems.push(h.join().map_err(|_| "thread panicked")??);
    }
    let on_disk = fs::read_to_string(dir.join("root.crt"))?;
    assert!(
        pems.iter().all(|p| *p == on_disk),
        "racing creators disagree"
    );
    LocalCa::load_or_create(&dir)?;
    Ok(())
}

#[test]
fn issued_files_are_written_with_private_key_mode() -> TestResult {
    let data = tempfile::tempdir()?;
    let ca = LocalCa::load_or_create(&data.path().join("ca"))?;
    let issued = ca.issue_device(
        &TenantId::new("acme")?,
        &DeviceId::new("thermo-7")?,
        Duration::from_secs(86400),
    )?;
    let out = data.path().join("out").join("thermo-7");
    let files = issued.write_to(&out, "device")?;
    assert_eq!(files.key, out.join("device.key"));
    assert_eq!(files.cert, out.join("device.crt"));
    assert_eq!(files.ca, out.join("ca.crt"));
    assert_eq!(mode(&out)?, 0o700);
    assert_eq!(mode(&files.key)?, 0o600);
    assert_eq!(mode(&files.cert)?, 0o644);
    assert_eq!(fs::read_to_string(&files.key)?, issued.key_pem.expose());
    assert_eq!(fs::read_to_string(&files.cert)?, issued.cert_pem);
    assert_eq!(fs::read_to_string(&files.ca)?, ca.chain_pem());

    // Writing again replaces the files and keeps the key private.
    let again = ca.issue_device(
        &TenantId::new("acme")?,
        &DeviceId::new("thermo-7")?,
        Duration::from_secs(86400),
    )?;
    again.write_to(&out, "device")?;
    assert_eq!(fs::read_to_string(&files.cert)?, again.cert_pem);
    assert_eq!(mode(&files.key)?, 0o600);

    // What was written reads back as the same certificate.
    let read = gatehouse_pki::IssuedCert::read_from(&out, "device")?;
    assert_eq!(read.cert_pem, again.cert_pem);
    assert_eq!(read.key_pem, again.key_pem);
    assert_eq!(read.chain_pem, again.chain_pem);
    assert_eq!(read.serial_hex, again.serial_hex);
    assert_eq!(read.not_before, again.not_before);
    assert_eq!(read.not_after, again.not_after);
    fs::set_permissions(&files.key, fs::Permissions::from_mode(0o644))?;
    let err = gatehouse_pki::IssuedCert::read_from(&out, "device").expect_err("open key");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);

    assert!(issued.write_to(&out, "../escape").is_err());
    assert!(issued.write_to(&out, "ca").is_err());
    Ok(())
}

#[test]
fn validity_is_cut_to_the_ca_and_clock_skew_is_allowed() -> TestResult {
    let data = tempfile::tempdir()?;
    let ca = LocalCa::load_or_create(data.path())?;
    let now = time::OffsetDateTime::now_utc();
    let issued = ca.issue_device(
        &TenantId::new("acme")?,
        &DeviceId::new("d")?,
        Duration::from_secs(60 * 60 * 24 * 365 * 50),
    )?;
    assert_eq!(issued.not_after, ca.not_after());
    let skew = now - issued.not_before;
    assert!(skew >= time::Duration::minutes(4) && skew <= time::Duration::minutes(6));

    assert!(matches!(
        ca.issue_device(
            &TenantId::new("acme")?,
            &DeviceId::new("d")?,
            Duration::ZERO
        ),
        Err(CaError::InvalidValidity(_))
    ));
    assert!(matches!(
        ca.issue_server(&[], &[], Duration::from_secs(60)),
        Err(CaError::NoServerNames)
    ));
    assert!(matches!(
        ca.issue_server(
            &["bad\u{e9}.example".to_owned()],
            &[],
            Duration::from_secs(60)
        ),
        Err(CaError::InvalidName { .. })
    ));
    Ok(())
}
