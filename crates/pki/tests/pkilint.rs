//! RFC 5280 conformance of every kind of certificate the CA issues, checked by pkilint
//! (`python3 -m pip install pkilint`), when `lint_pkix_cert` is on the PATH.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gatehouse_pki::{CsrPolicy, LocalCa, verify_csr};
use gatehouse_types::{DeviceId, TenantId};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn lint(
    dir: &Path,
    file: &str,
) -> Result<Option<String>, Box<dyn std::error::Error + Send + Sync>> {
    let out = match Command::new("lint_pkix_cert")
        .args(["lint", "-s", "WARNING", file])
        .current_dir(dir)
        .output()
    {
        Ok(out) => out,
        Err(_) => {
            gatehouse_testkit::skip(
                "pkilint (lint_pkix_cert) is not installed (pip install pkilint)",
            );
            return Ok(None);
        }
    };
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // pkilint exits non-zero when it finds something (the one finding let through below
    // among them); an exit with no finding in its report is pkilint failing, not passing.
    if !out.status.success() {
        assert!(
            report.contains("(ERROR)")
                || report.contains("(FATAL)")
                || report.contains("(WARNING)"),
            "lint_pkix_cert {file} exited with {} and no finding:\n{report}",
            out.status
        );
    }
    Ok(Some(report))
}

#[test]
fn issued_certificates_pass_pkilint() -> TestResult {
    let data = tempfile::tempdir()?;
    let dir = data.path().join("ca");
    let ca =
        LocalCa::load_or_create(&dir)?.with_crl_url("http://gatehouse.example/crl/issuing.crl");
    let out = data.path().join("out");
    std::fs::create_dir_all(&out)?;
    let tenant = TenantId::new("acme")?;
    let dev = ca.issue_device(&tenant, &DeviceId::new("d-1")?, Duration::from_secs(86400))?;
    std::fs::write(out.join("device.crt"), &dev.cert_pem)?;
    let server = ca.issue_server(
        &["gatehouse.example".to_owned()],
        &["127.0.0.1".parse()?],
        Duration::from_secs(86400),
    )?;
    std::fs::write(out.join("server.crt"), &server.cert_pem)?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = verify_csr(params.serialize_request(&key)?.der(), &CsrPolicy::default())?;
    let ldevid = ca.issue_from_csr(
        &csr,
        &tenant,
        &DeviceId::new("d-2")?,
        Duration::from_secs(86400),
    )?;
    std::fs::write(out.join("ldevid.crt"), &ldevid.cert_pem)?;
    std::fs::copy(dir.join("root.crt"), out.join("root.crt"))?;
    std::fs::copy(dir.join("issuing-1.crt"), out.join("issuing.crt"))?;

    for file in [
        "root.crt",
        "issuing.crt",
        "device.crt",
        "server.crt",
        "ldevid.crt",
    ] {
        let Some(report) = lint(&out, file)? else {
            return Ok(());
        };
        if !report.trim().is_empty() {
            eprintln!("pkilint {file}:\n{report}");
        }
        // pkilint's URI check wants a host with a public suffix; `gatehouse://<tenant>/...`
        // is a valid RFC 3986 URI that it cannot know, so that one finding is let through.
        let serious: Vec<&str> = report
            .lines()
            .filter(|l| l.contains("(ERROR)") || l.contains("(FATAL)"))
            .filter(|l| !(l.contains("pkix.invalid_uri_syntax") && l.contains("\"gatehouse://")))
            .collect();
        assert!(serious.is_empty(), "pkilint {file}:\n{report}");
    }
    Ok(())
}
