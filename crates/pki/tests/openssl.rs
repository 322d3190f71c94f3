//! Certificates checked by an independent implementation: the `openssl` command-line tool.
//! Each test is skipped, with a message, when `openssl` is not installed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use gatehouse_pki::{ClientAuth, LocalCa, identity_from_cert, server_config};
use gatehouse_types::{DeviceId, TenantId};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const DAY: Duration = Duration::from_secs(86400);

fn openssl_available() -> bool {
    let found = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        gatehouse_testkit::skip("the openssl binary is not installed");
    }
    found
}

fn openssl(args: &[&str], dir: &Path) -> std::io::Result<Output> {
    Command::new("openssl").args(args).current_dir(dir).output()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `openssl x509 -text` of a file, names in RFC 2253 form, lines trimmed and joined by `\n`.
fn x509_text(file: &str, dir: &Path) -> std::io::Result<String> {
    let out = openssl(
        &[
            "x509", "-in", file, "-noout", "-text", "-nameopt", "RFC2253",
        ],
        dir,
    )?;
    assert!(out.status.success(), "{}", text(&out));
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("\n"))
}

fn assert_has(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "missing {needle:?} in:\n{haystack}"
    );
}

#[test]
fn ca_certificate_is_a_constrained_root() -> TestResult {
    if !openssl_available() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    LocalCa::load_or_create(dir.path())?;
    let t = x509_text("root.crt", dir.path())?;
    assert_has(&t, "Subject: CN=Gatehouse Local CA,O=Gatehouse");
    assert_has(&t, "Issuer: CN=Gatehouse Local CA,O=Gatehouse");
    assert_has(&t, "ASN1 OID: prime256v1");
    assert_has(&t, "Signature Algorithm: ecdsa-with-SHA256");
    assert_has(&t, "X509v3 Basic Constraints: critical\nCA:TRUE, pathlen:1");
    assert_has(&t, "X509v3 Key Usage: critical\nCertificate Sign, CRL Sign");
    assert_has(&t, "X509v3 Subject Key Identifier:");

    let t = x509_text("issuing-1.crt", dir.path())?;
    assert_has(&t, "Subject: CN=Gatehouse Issuing CA 1,O=Gatehouse");
    assert_has(&t, "Issuer: CN=Gatehouse Local CA,O=Gatehouse");
    assert_has(&t, "X509v3 Basic Constraints: critical\nCA:TRUE, pathlen:0");
    assert_has(&t, "X509v3 Key Usage: critical\nCertificate Sign, CRL Sign");
    assert_has(&t, "X509v3 Authority Key Identifier:");

    // The root verifies against itself and the issuing CA against the root, strictly.
    for cert in ["root.crt", "issuing-1.crt"] {
        let v = openssl(
            &["verify", "-x509_strict", "-CAfile", "root.crt", cert],
            dir.path(),
        )?;
        assert!(v.status.success(), "{cert}: {}", text(&v));
    }
    // The private keys are sealed: openssl cannot read them as keys.
    let key = openssl(&["pkey", "-in", "root.key", "-noout"], dir.path())?;
    assert!(!key.status.success(), "root.key reads as a plain key");
    Ok(())
}

#[test]
fn device_certificate_verifies_and_names_the_device() -> TestResult {
    if !openssl_available() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let ca = LocalCa::load_or_create(&dir.path().join("ca"))?;
    let issued = ca.issue_device(&TenantId::new("acme")?, &DeviceId::new("thermo-0001")?, DAY)?;
    let out = dir.path().join("out");
    issued.write_to(&out, "device")?;

    let v = openssl(
        &[
            "verify",
            "-x509_strict",
            "-purpose",
            "sslclient",
            "-CAfile",
            "ca.crt",
            "device.crt",
        ],
        &out,
    )?;
    assert!(v.status.success(), "{}", text(&v));
    assert_has(&text(&v), "device.crt: OK");

    // Not usable as a TLS server certificate.
    let v = openssl(
        &[
            "verify",
            "-purpose",
            "sslserver",
            "-CAfile",
            "ca.crt",
            "device.crt",
        ],
        &out,
    )?;
    assert!(
        !v.status.success(),
        "device cert passed as server: {}",
        text(&v)
    );

    let t = x509_text("device.crt", &out)?;
    assert_has(&t, "Subject: CN=thermo-0001,O=acme");
    assert_has(&t, "Issuer: CN=Gatehouse Issuing CA 1,O=Gatehouse");
    assert_has(
        &t,
        "X509v3 Subject Alternative Name:\nURI:gatehouse://acme/device/thermo-0001",
    );
    assert_has(
        &t,
        "X509v3 Extended Key Usage:\nTLS Web Client Authentication",
    );
    assert_has(&t, "X509v3 Key Usage: critical\nDigital Signature");
    assert!(!t.contains("CA:TRUE"), "an end entity is no CA");
    assert_has(&t, "X509v3 Authority Key Identifier:");
    assert_has(&t, "X509v3 Subject Key Identifier:");
    assert_has(&t, "ASN1 OID: prime256v1");

    // The serial openssl reads is the one reported.
    let s = openssl(&["x509", "-in", "device.crt", "-noout", "-serial"], &out)?;
    assert_eq!(
        String::from_utf8_lossy(&s.stdout).trim().to_lowercase(),
        format!("serial={}", issued.serial_hex)
    );
    assert_eq!(issued.serial_hex.len(), 32);

    // The key file is PKCS#8 and matches the certificate.
    let key = openssl(&["pkey", "-in", "device.key", "-pubout"], &out)?;
    let cert = openssl(&["x509", "-in", "device.crt", "-noout", "-pubkey"], &out)?;
    assert!(key.status.success(), "{}", text(&key));
    assert_eq!(key.stdout, cert.stdout);
    Ok(())
}

#[test]
fn server_certificate_verifies_with_all_given_names() -> TestResult {
    if !openssl_available() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let ca = LocalCa::load_or_create(&dir.path().join("ca"))?;
    let issued = ca.issue_server(
        &["localhost".to_owned(), "gw-01.example".to_owned()],
        &[
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ],
        DAY,
    )?;
    let out = dir.path().join("out");
    issued.write_to(&out, "server")?;

    for name in [
        vec!["-verify_hostname", "localhost"],
        vec!["-verify_hostname", "gw-01.example"],
        vec!["-verify_ip", "127.0.0.1"],
        vec!["-verify_ip", "::1"],
    ] {
        let mut args = vec![
            "verify",
            "-x509_strict",
            "-purpose",
            "sslserver",
            "-CAfile",
            "ca.crt",
        ];
        args.extend(name.iter().copied());
        args.push("server.crt");
        let v = openssl(&args, &out)?;
        assert!(v.status.success(), "{name:?}: {}", text(&v));
    }
    let v = openssl(
        &[
            "verify",
            "-verify_hostname",
            "elsewhere.example",
            "-CAfile",
            "ca.crt",
            "server.crt",
        ],
        &out,
    )?;
    assert!(!v.status.success(), "unlisted host name verified");

    let t = x509_text("server.crt", &out)?;
    assert_has(
        &t,
        "DNS:localhost, DNS:gw-01.example, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1",
    );
    assert_has(
        &t,
        "X509v3 Extended Key Usage:\nTLS Web Server Authentication",
    );
    assert_has(&t, "X509v3 Key Usage: critical\nDigital Signature");
    assert!(!t.contains("CA:TRUE"), "an end entity is no CA");
    Ok(())
}

#[test]
fn certificate_of_another_ca_fails_openssl_verify() -> TestResult {
    if !openssl_available() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let ca = LocalCa::load_or_create(&dir.path().join("ca"))?;
    let other = LocalCa::load_or_create(&dir.path().join("other"))?;
    let issued = other.issue_device(&TenantId::new("acme")?, &DeviceId::new("x")?, DAY)?;
    issued.write_to(&dir.path().join("out"), "device")?;
    std::fs::write(dir.path().join("trusted.crt"), ca.cert_pem())?;
    let v = openssl(
        &["verify", "-CAfile", "trusted.crt", "out/device.crt"],
        dir.path(),
    )?;
    assert!(!v.status.success(), "{}", text(&v));
    Ok(())
}

/// `openssl s_client` as an independent device: it connects to our server config with the
/// device files `write_to` produced, and our side reads the right identity.
#[tokio::test]
async fn openssl_s_client_completes_mutual_tls() -> TestResult {
    if !openssl_available() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let ca = LocalCa::load_or_create(&dir.path().join("ca"))?;
    let server = ca.issue_server(
        &["localhost".to_owned()],
        &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        DAY,
    )?;
    let device = ca.issue_device(&TenantId::new("acme")?, &DeviceId::new("s-client-1")?, DAY)?;
    let out = dir.path().join("out");
    device.write_to(&out, "device")?;

    let config = server_config(&server, &[ca.cert_der()], ClientAuth::Required)?;
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let port = listener.local_addr()?.port();
    let acceptor = TlsAcceptor::from(config);
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned();
        tls.write_all(b"hello from gatehouse\n").await?;
        tls.shutdown().await?;
        Ok::<_, std::io::Error>(peer)
    });

    let connect = format!("127.0.0.1:{port}");
    let client = tokio::task::spawn_blocking(move || {
        Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &connect,
                "-servername",
                "localhost",
                "-verify_hostname",
                "localhost",
                "-CAfile",
                "ca.crt",
                "-cert",
                "device.crt",
                "-key",
                "device.key",
                "-verify_return_error",
            ])
            .current_dir(&out)
            .stdin(Stdio::null())
            .output()
    });
    let output = tokio::time::timeout(Duration::from_secs(30), client).await???;
    let peer = tokio::time::timeout(Duration::from_secs(30), server_task).await???;

    let t = text(&output);
    assert_has(&t, "Verify return code: 0 (ok)");
    let identity = identity_from_cert(&peer.ok_or("no client certificate")?)?;
    assert_eq!(identity.to_string(), "acme/s-client-1");
    Ok(())
}

/// A CSR that openssl makes with a key of the given `-newkey` options, DER.
fn openssl_csr(
    dir: &Path,
    newkey: &[&str],
) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
    let mut args = vec!["req", "-new"];
    args.extend_from_slice(newkey);
    args.extend_from_slice(&[
        "-nodes",
        "-keyout",
        "k.pem",
        "-subj",
        "/CN=weak-1",
        "-outform",
        "DER",
        "-out",
        "csr.der",
    ]);
    let out = openssl(&args, dir)?;
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(std::fs::read(dir.join("csr.der"))?)
}

#[test]
fn csr_with_a_weak_or_unsupported_key_is_refused_for_its_key_type() -> TestResult {
    use gatehouse_pki::{CsrError, CsrPolicy, verify_csr};
    if !openssl_available() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let cases: [(&[&str], &str); 2] = [
        (
            &["-newkey", "rsa:1024"],
            "RSA-1024, shorter than the 2048 bits required",
        ),
        (
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"],
            "1.3.132.0.10",
        ),
    ];
    for (newkey, why) in cases {
        let der = openssl_csr(dir.path(), newkey)?;
        match verify_csr(&der, &CsrPolicy::default()) {
            Err(e @ CsrError::KeyNotAllowed(_)) => {
                let text = e.to_string();
                assert!(text.starts_with("key type not allowed"), "{text}");
                assert!(text.contains(why), "{newkey:?}: {text}");
            }
            Err(other) => panic!("{newkey:?} refused for another reason: {other}"),
            Ok(_) => panic!("{newkey:?} accepted"),
        }
    }
    // A P-256 key from the same tool still passes.
    let der = openssl_csr(
        dir.path(),
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    )?;
    verify_csr(&der, &CsrPolicy::default())?;
    Ok(())
}
