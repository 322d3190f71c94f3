//! Signed posture reports: the envelope the agent makes verifies with the public key of the
//! device's certificate — checked with *ring* directly, choosing the algorithm from the
//! certificate as the server does, and with the verifier the server uses — for every key
//! type the server accepts; a changed report, another device's certificate or a forged
//! signature do not verify; and the report inside is the contract's JSON.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use gatehouse_agent::posture::{
    CredentialState, MAX_ENVELOPE, Posture, PostureReport, PostureSigner, SignedPosture,
};
use gatehouse_agent::{DeviceCredentials, DeviceKey};
use gatehouse_pki::LocalCa;
use rcgen::{CertificateParams, DnType, KeyPair};
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use rustls_pki_types::CertificateDer;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

/// Whether `sig` is a signature of `msg` by the key in `cert_der`, with the algorithm the
/// certificate's key calls for.
fn verifies(cert_der: &[u8], msg: &[u8], sig: &[u8]) -> Result<bool> {
    let (_, cert) = X509Certificate::from_der(cert_der).context("certificate")?;
    let spki = cert.public_key();
    let oid = &spki.algorithm.algorithm;
    let alg: &'static dyn VerificationAlgorithm = if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .context("EC key without a named curve")?;
        if curve == OID_EC_P256 {
            &signature::ECDSA_P256_SHA256_ASN1
        } else if curve == OID_NIST_EC_P384 {
            &signature::ECDSA_P384_SHA384_ASN1
        } else {
            bail!("curve {curve}")
        }
    } else if *oid == OID_SIG_ED25519 {
        &signature::ED25519
    } else if *oid == OID_PKCS1_RSAENCRYPTION {
        &signature::RSA_PKCS1_2048_8192_SHA256
    } else {
        bail!("key algorithm {oid}")
    };
    Ok(UnparsedPublicKey::new(alg, &spki.subject_public_key.data)
        .verify(msg, sig)
        .is_ok())
}

/// Credentials for a self-signed certificate naming `device`, with `key`.
fn self_signed(device: &str, key: &KeyPair) -> Result<DeviceCredentials> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, device);
    let cert = params.self_signed(key)?;
    Ok(DeviceCredentials::new(
        vec![cert.der().clone()],
        Zeroizing::new(key.serialize_pem()),
    )?)
}

/// A certificate issued by a Gatehouse CA, as enrollment gives one (ECDSA P-256).
fn issued(ca: &LocalCa, device: &str) -> Result<DeviceCredentials> {
    let issued = ca.issue_device(
        &"acme".parse()?,
        &device.parse()?,
        Duration::from_secs(3600),
    )?;
    Ok(DeviceCredentials::new(
        issued.presented_chain()?,
        Zeroizing::new(issued.key_pem.expose().to_owned()),
    )?)
}

/// An RSA key made by openssl (ring cannot generate one), or `None` when openssl is
/// missing outside CI.
fn openssl_rsa_key() -> Result<Option<KeyPair>> {
    let out = match Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            gatehouse_testkit::skip(format!("openssl is not installed ({e}): no RSA key"));
            return Ok(None);
        }
    };
    ensure!(
        out.status.success(),
        "openssl genpkey: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Some(KeyPair::from_pem(&String::from_utf8(out.stdout)?)?))
}

fn full_posture() -> Result<Posture> {
    Ok(Posture::new()
        .with_firmware("2.4.1")?
        .with_service("ssh")?
        .with_service("http")?
        .with_default_credentials(CredentialState::Changed))
}

/// Signs a report with `creds` and checks everything the server checks.
fn check(creds: &DeviceCredentials, expected_algorithm: &str) -> Result<()> {
    let signer = PostureSigner::new(creds)?;
    assert_eq!(signer.algorithm(), expected_algorithm);
    let report = full_posture()?.report_now();
    let envelope = signer.sign(&report)?.to_envelope();
    ensure!(envelope.len() <= MAX_ENVELOPE, "{} bytes", envelope.len());

    // What the server reads: the envelope, then the report bytes as sent.
    let parsed = SignedPosture::parse(&envelope)?;
    let leaf: &CertificateDer<'_> = creds.leaf();
    ensure!(
        verifies(leaf, &parsed.report, &parsed.signature)?,
        "{expected_algorithm}: the signature does not verify with the certificate's key"
    );
    gatehouse_pki::verify_with_certificate(leaf, &parsed.report, &parsed.signature)
        .with_context(|| format!("{expected_algorithm}: the server's verifier"))?;
    assert_eq!(PostureReport::parse(&parsed.report)?, report);

    // Not over other bytes: one character of the report changed.
    let mut changed = parsed.report.clone();
    let at = changed
        .iter()
        .position(|b| *b == b'4')
        .context("the version is in the report")?;
    changed[at] = b'5';
    ensure!(
        !verifies(leaf, &changed, &parsed.signature)?,
        "{expected_algorithm}: a changed report verifies"
    );
    Ok(())
}

#[test]
fn signatures_verify_with_the_certificates_key_for_every_key_type() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = LocalCa::load_or_create(dir.path())?;
    check(&issued(&ca, "thermo-1")?, "ecdsa-p256-sha256")?;

    // The key the agent itself generates, in a certificate of its own.
    let generated = DeviceKey::generate()?;
    let key = KeyPair::from_pem(&generated.to_pem())?;
    check(&self_signed("thermo-2", &key)?, "ecdsa-p256-sha256")?;

    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)?;
    check(&self_signed("thermo-3", &p384)?, "ecdsa-p384-sha384")?;
    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    check(&self_signed("thermo-4", &ed)?, "ed25519")?;
    if let Some(rsa) = openssl_rsa_key()? {
        check(&self_signed("thermo-5", &rsa)?, "rsa-pkcs1-sha256")?;
    }
    Ok(())
}

#[test]
fn another_devices_certificate_or_key_does_not_verify() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = LocalCa::load_or_create(dir.path())?;
    let a = issued(&ca, "thermo-1")?;
    let b = issued(&ca, "thermo-2")?;
    let signed = PostureSigner::new(&a)?.sign(&full_posture()?.report_at(1_764_856_800))?;
    ensure!(verifies(a.leaf(), &signed.report, &signed.signature)?);
    // Thermo-2's certificate does not vouch for thermo-1's report...
    ensure!(!verifies(b.leaf(), &signed.report, &signed.signature)?);
    assert!(
        gatehouse_pki::verify_with_certificate(b.leaf(), &signed.report, &signed.signature)
            .is_err()
    );
    // ...and thermo-2's key cannot sign for thermo-1.
    let forged = PostureSigner::new(&b)?.sign(&full_posture()?.report_at(1_764_856_800))?;
    ensure!(!verifies(a.leaf(), &forged.report, &forged.signature)?);
    Ok(())
}

#[test]
fn the_envelope_carries_the_contracts_json() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = LocalCa::load_or_create(dir.path())?;
    let creds = issued(&ca, "thermo-1")?;
    let before = time::OffsetDateTime::now_utc().unix_timestamp();
    let envelope = PostureSigner::new(&creds)?
        .sign(&full_posture()?.report_now())?
        .to_envelope();
    let after = time::OffsetDateTime::now_utc().unix_timestamp();

    // The envelope: exactly `report` and `signature`, standard base64.
    let json: serde_json::Value = serde_json::from_slice(&envelope)?;
    let keys: Vec<&str> = json
        .as_object()
        .context("an object")?
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["report", "signature"]);
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let report = b64.decode(json["report"].as_str().context("report")?)?;
    let signature = b64.decode(json["signature"].as_str().context("signature")?)?;
    ensure!(verifies(creds.leaf(), &report, &signature)?);

    // The report: the contract's field names and values, the device's clock.
    let report: serde_json::Value = serde_json::from_slice(&report)?;
    assert_eq!(report["firmware"], "2.4.1");
    assert_eq!(report["services"], serde_json::json!(["http", "ssh"]));
    assert_eq!(report["default_credentials"], "changed");
    let time = report["time"].as_i64().context("time")?;
    ensure!((before..=after).contains(&time), "time {time}");
    assert_eq!(report.as_object().map(|o| o.len()), Some(4), "{report}");
    Ok(())
}

#[test]
fn a_key_that_is_not_pkcs8_is_refused_with_a_reason() -> Result<()> {
    // A SEC1 ("EC PRIVATE KEY") key works for TLS but not for rcgen's signing with ring.
    let out = match Command::new("openssl")
        .args(["ecparam", "-name", "prime256v1", "-genkey", "-noout"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            gatehouse_testkit::skip(format!("openssl is not installed ({e})"));
            return Ok(());
        }
    };
    ensure!(out.status.success(), "openssl ecparam");
    let sec1 = String::from_utf8(out.stdout)?;
    ensure!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
    // The same key as PKCS#8, to make the certificate with.
    let mut pkcs8 = Command::new("openssl")
        .args(["pkcs8", "-topk8", "-nocrypt"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    use std::io::Write as _;
    pkcs8
        .stdin
        .take()
        .context("stdin")?
        .write_all(sec1.as_bytes())?;
    let pkcs8 = pkcs8.wait_with_output()?;
    ensure!(pkcs8.status.success(), "openssl pkcs8");
    let key = KeyPair::from_pem(&String::from_utf8(pkcs8.stdout)?)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "thermo-9");
    let cert = params.self_signed(&key)?;
    let creds = DeviceCredentials::new(vec![cert.der().clone()], Zeroizing::new(sec1))?;
    let err = PostureSigner::new(&creds).map(|_| ());
    assert!(
        matches!(err, Err(gatehouse_agent::PostureError::Key(_))),
        "{err:?}"
    );
    Ok(())
}
