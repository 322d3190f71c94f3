//! The CA's life: upgrade of an earlier single-root directory, key-encryption keys, external
//! CAs, rolling the issuing CA, issuance from a CSR, and revocation lists.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_pki::{
    CaError, ClientAuth, CsrError, CsrPolicy, IssuedCert, KeyKind, KeySource, LocalCa,
    RevocationReason, RevokedCert, SecretPem, ServerTlsBuilder, client_config, server_config,
    verify_csr,
};
use gatehouse_types::{DeviceId, TenantId};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

const HOUR: Duration = Duration::from_secs(3600);

fn ids(tenant: &str, device: &str) -> Result<(TenantId, DeviceId), BoxError> {
    Ok((TenantId::new(tenant)?, DeviceId::new(device)?))
}

/// A full TLS handshake between the two configurations, in memory.
fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Result<(), BoxError> {
    let mut c = ClientConnection::new(client, "localhost".try_into()?)?;
    let mut s = ServerConnection::new(server)?;
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf)?;
        }
        let mut r = &buf[..];
        while !r.is_empty() {
            s.read_tls(&mut r)?;
        }
        s.process_new_packets()?;
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf)?;
        }
        let mut r = &buf[..];
        while !r.is_empty() {
            c.read_tls(&mut r)?;
        }
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() {
            return Ok(());
        }
    }
    Err("handshake did not finish".into())
}

fn server_of(ca: &LocalCa) -> Result<IssuedCert, BoxError> {
    Ok(ca.issue_server(&["localhost".to_owned()], &[], HOUR)?)
}

fn openssl_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn openssl_verify(dir: &Path, ca: &str, cert: &str) -> Result<bool, BoxError> {
    let out = Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile", ca, cert])
        .current_dir(dir)
        .output()?;
    Ok(out.status.success())
}

/// Writes a CA directory the way the first version did: a pathlen-0 root, `ca.key` plain.
fn write_legacy_ca(dir: &Path) -> Result<(), BoxError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "Gatehouse Local CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key)?;
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    fs::write(dir.join("ca.key"), key.serialize_pem())?;
    fs::set_permissions(dir.join("ca.key"), fs::Permissions::from_mode(0o600))?;
    fs::write(dir.join("ca.crt"), cert.pem())?;
    Ok(())
}

// === CA directory ===

#[test]
fn earlier_single_root_directory_is_upgraded_in_place() -> TestResult {
    let data = tempfile::tempdir()?;
    let dir = data.path().join("ca");
    write_legacy_ca(&dir)?;
    let root_pem = fs::read_to_string(dir.join("ca.crt"))?;

    let ca = LocalCa::load_or_create(&dir)?;
    assert_eq!(ca.cert_pem(), root_pem, "same root");
    assert_eq!(ca.chain_pem(), root_pem, "the root issues directly");
    assert!(!dir.join("ca.key").exists(), "the plain key is gone");
    let sealed = fs::read_to_string(dir.join("root.key"))?;
    assert!(sealed.starts_with("-----BEGIN GATEHOUSE ENCRYPTED PRIVATE KEY-----"));
    assert_eq!(
        fs::metadata(dir.join("root.key"))?.permissions().mode() & 0o777,
        0o600
    );

    // It loads again, issues, and what it issues verifies against the old ca.crt.
    let mut ca = LocalCa::load_or_create(&dir)?;
    let (tenant, device) = ids("acme", "d-1")?;
    let dev = ca.issue_device(&tenant, &device, HOUR)?;
    let server = server_of(&ca)?;
    let server_cfg = server_config(&server, &ca.client_trust_anchors(), ClientAuth::Required)?;
    handshake(server_cfg, client_config(&[ca.cert_der()], Some(&dev))?)?;
    if openssl_available() {
        dev.write_to(&data.path().join("out"), "device")?;
        assert!(openssl_verify(
            &data.path().join("out"),
            "ca.crt",
            "device.crt"
        )?);
    }
    // A pathlen-0 root cannot have an issuing CA below it.
    assert!(matches!(ca.roll_issuing_ca(), Err(CaError::Unsupported(_))));
    Ok(())
}

#[test]
fn wrong_key_encryption_key_is_a_clear_error() -> TestResult {
    let data = tempfile::tempdir()?;
    let dir = data.path().join("ca");
    let kek_a = data.path().join("a.kek");
    let kek_b = data.path().join("b.kek");
    let ca = LocalCa::open(&dir, &KeySource::Generated(kek_a.clone()))?;
    assert!(
        !dir.join("ca.kek").exists(),
        "the KEK lives where it was told"
    );
    assert_eq!(fs::metadata(&kek_a)?.permissions().mode() & 0o777, 0o600);
    let again = LocalCa::open(&dir, &KeySource::File(kek_a.clone()))?;
    assert_eq!(ca.cert_der(), again.cert_der());

    fs::write(&kek_b, "dGhpcyBpcyBub3QgdGhlIHJpZ2h0IGtleSBhdCBhbGwh\n")?;
    fs::set_permissions(&kek_b, fs::Permissions::from_mode(0o600))?;
    let err = LocalCa::open(&dir, &KeySource::File(kek_b.clone())).expect_err("wrong KEK");
    assert!(matches!(err, CaError::WrongKek { .. }), "{err:?}");
    assert!(
        err.to_string().contains("wrong key-encryption key"),
        "{err}"
    );

    // A Generated source does not make up a new KEK for an existing CA.
    fs::remove_file(&kek_a)?;
    let err = LocalCa::open(&dir, &KeySource::Generated(kek_a)).expect_err("lost KEK");
    assert!(matches!(err, CaError::Kek(_)), "{err:?}");

    // A KEK file others can read is refused.
    fs::set_permissions(&kek_b, fs::Permissions::from_mode(0o644))?;
    let err = LocalCa::open(&dir, &KeySource::File(kek_b)).expect_err("open KEK");
    assert!(matches!(err, CaError::Kek(_)), "{err:?}");
    let err = LocalCa::open(
        &dir,
        &KeySource::Env("GATEHOUSE_TEST_KEK_THAT_IS_NOT_SET".to_owned()),
    )
    .expect_err("unset variable");
    assert!(matches!(err, CaError::Kek(_)), "{err:?}");
    Ok(())
}

#[test]
fn swapped_key_files_do_not_open() -> TestResult {
    let data = tempfile::tempdir()?;
    let mut ca = LocalCa::load_or_create(data.path())?;
    ca.roll_issuing_ca()?;
    // Same KEK, but issuing-1's envelope under issuing-2's name.
    fs::copy(
        data.path().join("issuing-1.key"),
        data.path().join("issuing-2.key"),
    )?;
    let err = LocalCa::load_or_create(data.path()).expect_err("swapped key");
    assert!(matches!(err, CaError::WrongKek { .. }), "{err:?}");
    Ok(())
}

// === external CA ===

#[test]
fn external_issuing_ca_from_pem_issues_verifiable_certificates() -> TestResult {
    let root_key = KeyPair::generate()?;
    let mut root_params = CertificateParams::default();
    root_params
        .distinguished_name
        .push(DnType::CommonName, "Operator Root");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = root_params.self_signed(&root_key)?;
    let root_issuer = Issuer::new(root_params, root_key);
    let int_key = KeyPair::generate()?;
    let mut int_params = CertificateParams::default();
    int_params
        .distinguished_name
        .push(DnType::CommonName, "Operator Issuing");
    int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let int = int_params.signed_by(&int_key, &root_issuer)?;

    let mut ca = LocalCa::from_pem(
        &int.pem(),
        &SecretPem::new(int_key.serialize_pem()),
        &root.pem(),
    )?;
    assert_eq!(ca.cert_der(), *root.der());
    assert_eq!(ca.chain_pem(), format!("{}{}", int.pem(), root.pem()));
    let (tenant, device) = ids("acme", "ext-1")?;
    let dev = ca.issue_device(&tenant, &device, HOUR)?;
    let server = server_of(&ca)?;
    handshake(
        server_config(&server, &[ca.cert_der()], ClientAuth::Required)?,
        client_config(&[ca.cert_der()], Some(&dev))?,
    )?;
    assert!(matches!(ca.roll_issuing_ca(), Err(CaError::Unsupported(_))));
    let crl = ca.crl(
        &[],
        time::OffsetDateTime::now_utc(),
        time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    )?;
    assert_eq!(crl.issuer, *int.der());

    // The wrong key for the certificate is refused.
    let err = LocalCa::from_pem(
        &int.pem(),
        &SecretPem::new(KeyPair::generate()?.serialize_pem()),
        &root.pem(),
    )
    .expect_err("mismatched key");
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err:?}");
    Ok(())
}

// === roll ===

#[test]
fn device_of_the_old_issuing_ca_stays_valid_after_a_roll() -> TestResult {
    let data = tempfile::tempdir()?;
    let dir = data.path().join("ca");
    let mut ca = LocalCa::load_or_create(&dir)?;
    let (tenant, old_id) = ids("acme", "old")?;
    let old = ca.issue_device(&tenant, &old_id, HOUR)?;
    let first_issuer = ca.issuing_cert_der();

    ca.roll_issuing_ca()?;
    assert_ne!(ca.issuing_cert_der(), first_issuer);
    assert_eq!(ca.issuing_certs_der().len(), 2);
    assert_eq!(ca.client_trust_anchors().len(), 3);
    // Persisted: a fresh load sees both, the new one active.
    let reloaded = LocalCa::load_or_create(&dir)?;
    assert_eq!(reloaded.issuing_cert_der(), ca.issuing_cert_der());
    assert_eq!(reloaded.chain_pem(), ca.chain_pem());
    assert_eq!(fs::read_to_string(dir.join("ca.crt"))?, ca.chain_pem());

    let (_, new_id) = ids("acme", "new")?;
    let new = ca.issue_device(&tenant, &new_id, HOUR)?;
    assert!(
        new.chain_pem
            .starts_with(&gatehouse_pki_pem(&ca.issuing_cert_der()))
    );
    let server = server_of(&ca)?;
    for dev in [&old, &new] {
        // Clients sending their chain, verified against the root alone...
        handshake(
            server_config(&server, &[ca.cert_der()], ClientAuth::Required)?,
            client_config(&[ca.cert_der()], Some(dev))?,
        )?;
        // ...and clients sending their leaf alone, against the trust anchors.
        let leaf_only =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates({
                    let mut r = rustls::RootCertStore::empty();
                    r.add(ca.cert_der())?;
                    r
                })
                .with_client_auth_cert(vec![dev.cert_der()?], dev.key_der()?)?;
        handshake(
            server_config(&server, &ca.client_trust_anchors(), ClientAuth::Required)?,
            Arc::new(leaf_only),
        )?;
    }
    if openssl_available() {
        let out = data.path().join("out");
        old.write_to(&out, "old")?;
        new.write_to(&out, "new")?;
        fs::copy(dir.join("ca.crt"), out.join("bundle.crt"))?;
        assert!(openssl_verify(&out, "bundle.crt", "old.crt")?);
        assert!(openssl_verify(&out, "bundle.crt", "new.crt")?);
    }
    Ok(())
}

fn gatehouse_pki_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out
}

// === CSR ===

fn csr(key: &KeyPair, cn: Option<&str>, uris: &[&str]) -> Result<Vec<u8>, BoxError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(cn) = cn {
        params.distinguished_name.push(DnType::CommonName, cn);
    }
    for uri in uris {
        params
            .subject_alt_names
            .push(SanType::URI((*uri).try_into()?));
    }
    Ok(params.serialize_request(key)?.der().to_vec())
}

#[test]
fn csr_for_another_device_is_refused() -> TestResult {
    let data = tempfile::tempdir()?;
    let ca = LocalCa::load_or_create(data.path())?;
    let (tenant, device) = ids("acme", "thermo-1")?;
    let key = KeyPair::generate()?;
    let policy = CsrPolicy::default();

    for (cn, uris) in [
        (Some("thermo-2"), vec![]),
        (Some("thermo-1"), vec!["gatehouse://acme/device/thermo-2"]),
        (None, vec!["gatehouse://other/device/thermo-1"]),
        (
            Some("thermo-1"),
            vec!["gatehouse://acme/device/thermo-1", "https://evil"],
        ),
    ] {
        let verified = verify_csr(&csr(&key, cn, &uris)?, &policy)?;
        let err = ca
            .issue_from_csr(
                &verified,
                &tenant,
                &device,
                gatehouse_pki::DEFAULT_CSR_VALIDITY,
            )
            .expect_err("CSR for another identity accepted");
        assert!(
            matches!(err, CaError::Csr(CsrError::IdentityMismatch { .. })),
            "{cn:?} {uris:?}: {err:?}"
        );
    }
    Ok(())
}

#[test]
fn csr_of_the_enrolling_device_is_issued_with_its_own_key() -> TestResult {
    let data = tempfile::tempdir()?;
    let ca =
        LocalCa::load_or_create(data.path())?.with_crl_url("http://localhost:8080/crl/issuing.crl");
    let (tenant, device) = ids("acme", "thermo-1")?;
    let key = KeyPair::generate()?;
    let der = csr(
        &key,
        Some("thermo-1"),
        &["gatehouse://acme/device/thermo-1"],
    )?;
    let verified = verify_csr(&der, &CsrPolicy::default())?;
    assert_eq!(verified.key_kind(), KeyKind::EcdsaP256);
    assert_eq!(verified.common_names(), ["thermo-1"]);
    let issued = ca.issue_from_csr(
        &verified,
        &tenant,
        &device,
        gatehouse_pki::DEFAULT_CSR_VALIDITY,
    )?;
    let days = (issued.not_after - issued.not_before).whole_days();
    assert_eq!(days, 30);

    let (_, cert) = x509_parser::parse_x509_certificate(&issued.cert_der)?;
    assert_eq!(cert.public_key().raw, verified.public_key_spki());
    let identity = gatehouse_pki::identity_from_cert(&issued.cert_der)?;
    assert_eq!(identity.device, device);
    let text = format!("{:?}", cert.extensions());
    assert!(text.contains("localhost:8080/crl/issuing.crl"), "no CRL DP");

    // The device completes mTLS with its own key and the issued certificate.
    let dev = IssuedCert::from_pem(
        issued.cert_pem.clone(),
        SecretPem::new(key.serialize_pem()),
        issued.chain_pem.clone(),
    )?;
    let server = server_of(&ca)?;
    handshake(
        server_config(&server, &[ca.cert_der()], ClientAuth::Required)?,
        client_config(&[ca.cert_der()], Some(&dev))?,
    )?;

    // A CSR naming nothing gets the device's name anyway.
    let bare = verify_csr(&csr(&key, None, &[])?, &CsrPolicy::default())?;
    let issued = ca.issue_from_csr(&bare, &tenant, &device, HOUR)?;
    assert_eq!(
        gatehouse_pki::identity_from_cert(&issued.cert_der)?.device,
        device
    );
    Ok(())
}

#[test]
fn tampered_or_disallowed_csr_is_refused() -> TestResult {
    let key = KeyPair::generate()?;
    let mut der = csr(&key, Some("thermo-1"), &[])?;
    let mut strict = CsrPolicy::default();
    strict.ecdsa_p256 = false;
    assert!(matches!(
        verify_csr(&der, &strict),
        Err(CsrError::KeyNotAllowed(_))
    ));
    // Flip a bit of the CN ("thermo-1" → "thermo-0"): the signature no longer verifies.
    let pos = der
        .windows(8)
        .position(|w| w == b"thermo-1")
        .ok_or("CN not found")?;
    der[pos + 7] = b'0';
    assert!(matches!(
        verify_csr(&der, &CsrPolicy::default()),
        Err(CsrError::BadSignature)
    ));
    assert!(matches!(
        verify_csr(b"garbage", &CsrPolicy::default()),
        Err(CsrError::Malformed(_))
    ));
    // Ed25519 and P-384 are allowed by default.
    for alg in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P384_SHA384] {
        let k = KeyPair::generate_for(alg)?;
        verify_csr(&csr(&k, Some("x"), &[])?, &CsrPolicy::default())?;
    }
    Ok(())
}

// === CRL ===

#[test]
fn revoked_device_is_refused_and_others_pass() -> TestResult {
    let data = tempfile::tempdir()?;
    let dir = data.path().join("ca");
    let mut ca = LocalCa::load_or_create(&dir)?;
    let (tenant, a) = ids("acme", "a")?;
    let (_, b) = ids("acme", "b")?;
    let old = ca.issue_device(&tenant, &a, HOUR)?;
    ca.roll_issuing_ca()?;
    let revoked = ca.issue_device(&tenant, &a, HOUR)?;
    let good = ca.issue_device(&tenant, &b, HOUR)?;

    let now = time::OffsetDateTime::now_utc();
    let list = [RevokedCert::new(
        revoked.serial_hex.clone(),
        now,
        Some(RevocationReason::KeyCompromise),
    )];
    let crls = ca.crls(&list, now, now + time::Duration::hours(1))?;
    assert_eq!(crls.len(), 2, "one per live issuing CA");
    let again = ca.crls(&list, now, now + time::Duration::hours(1))?;
    assert!(again[0].number > crls[0].number, "CRL numbers increase");
    assert!(
        LocalCa::load_or_create(&dir)?
            .crl(&list, now, now + time::Duration::hours(1))?
            .number
            > again[0].number
    );

    let server = server_of(&ca)?;
    let ders: Vec<_> = crls.iter().map(|c| c.der.clone()).collect();
    for anchors in [vec![ca.cert_der()], ca.client_trust_anchors()] {
        let cfg = || -> Result<_, BoxError> {
            Ok(ServerTlsBuilder::from_issued(&server)?
                .client_roots(&anchors)
                .crls(ders.clone())
                .build()?)
        };
        handshake(cfg()?, client_config(&[ca.cert_der()], Some(&good))?)?;
        handshake(cfg()?, client_config(&[ca.cert_der()], Some(&old))?)?;
        let err = handshake(cfg()?, client_config(&[ca.cert_der()], Some(&revoked))?)
            .expect_err("revoked certificate accepted");
        assert!(err.to_string().contains("Revoked"), "{err}");
    }

    if openssl_available() {
        let out = data.path().join("crl");
        fs::create_dir_all(&out)?;
        fs::write(out.join("c.der"), &crls[0].der)?;
        fs::write(out.join("c.pem"), &crls[0].pem)?;
        let o = Command::new("openssl")
            .args(["crl", "-inform", "DER", "-in", "c.der", "-noout", "-text"])
            .current_dir(&out)
            .output()?;
        let text = String::from_utf8_lossy(&o.stdout).to_uppercase();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(text.contains(&revoked.serial_hex.to_uppercase()), "{text}");
        assert!(text.contains("KEY COMPROMISE"), "{text}");
        assert!(text.contains("X509V3 CRL NUMBER"), "{text}");
        // The CRL's signature verifies with the issuing CA.
        fs::write(out.join("ca.crt"), ca.chain_pem())?;
        let o = Command::new("openssl")
            .args(["crl", "-in", "c.pem", "-CAfile", "ca.crt", "-noout"])
            .current_dir(&out)
            .output()?;
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("verify OK")
                || String::from_utf8_lossy(&o.stdout).contains("verify OK"),
            "{o:?}"
        );
    }
    Ok(())
}
