//! `gatehouse sbom check` as a user runs it, in an empty directory with no configuration
//! and no data directory: a document is reported (text and JSON), a refused one exits
//! non-zero with the reason and its place, and nothing is written.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

fn check(dir: &Path, file: &str, args: &[&str]) -> Result<Output> {
    Command::new(support::binary())
        .current_dir(dir)
        .env_remove("GATEHOUSE_CONFIG")
        .args(["sbom", "check", file])
        .args(args)
        .output()
        .context("running gatehouse sbom check")
}

const CYCLONEDX: &str = r#"{"bomFormat":"CycloneDX","specVersion":"1.6",
  "metadata":{"component":{"name":"thermostat-fw","version":"2.1.0"}},
  "components":[
    {"name":"busybox","version":"1.36.1","purl":"pkg:APK/alpine/busybox@1.36.1?arch=armv7",
     "cpe":"cpe:2.3:a:busybox:busybox:1.36.1:*:*:*:*:*:*:*","supplier":{"name":"Alpine"}},
    {"name":"mosquitto","purl":"pkg:deb/debian/mosquitto@2.0.11-1%2Bdeb11u1",
     "components":[{"name":"libwebsockets","version":"4.0.20","purl":"not a purl"}]}]}"#;

#[test]
fn check_reports_format_components_purls_and_placed_problems() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("fw.cdx.json"), CYCLONEDX)?;
    let out = check(dir.path(), "fw.cdx.json", &[])?;
    let text = String::from_utf8(out.stdout)?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "format: CycloneDX 1.6\n",
        "name: thermostat-fw 2.1.0\n",
        "components: 3 (2 with a purl, 1 with a CPE)\n",
        "  pkg:apk/alpine/busybox@1.36.1?arch=armv7\n",
        "  pkg:deb/debian/mosquitto@2.0.11-1%2Bdeb11u1\n",
        "problems: 2\n",
        "  /components/1: component \"mosquitto\" without a version\n",
        "  /components/1/components/0/purl: invalid purl \"not a purl\"",
    ] {
        ensure!(text.contains(want), "{want:?} not in:\n{text}");
    }

    let out = check(dir.path(), "fw.cdx.json", &["--json"])?;
    ensure!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        v["format"] == "cyclonedx" && v["spec_version"] == "1.6",
        "{v}"
    );
    let c = &v["components"][0];
    ensure!(
        c["supplier"] == "Alpine" && c["at"]["pointer"] == "/components/0",
        "{c}"
    );
    ensure!(v["components"].as_array().map(Vec::len) == Some(3), "{v}");
    // Nothing written beside the file: no data directory, no state.
    ensure!(std::fs::read_dir(dir.path())?.count() == 1);
    Ok(())
}

#[test]
fn hostile_or_unsupported_documents_exit_non_zero_with_the_reason() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let deep = format!(
        "{{\"bomFormat\":\"CycloneDX\",\"specVersion\":\"1.4\",\"components\":{}{}}}",
        "[{\"name\":\"x\",\"components\":".repeat(100),
        "[]}]".repeat(100)
    );
    let cases = [
        (
            "deep.json",
            deep.as_str(),
            "nested deeper than 64 levels at line 1 column",
        ),
        (
            "tv.spdx",
            "SPDXVersion: SPDX-2.2\nDataLicense: CC0-1.0\n",
            "unsupported format: SPDX tag-value",
        ),
        (
            "wrong.json",
            r#"{"spdxVersion":"SPDX-2.3","packages":[{"SPDXID":"SPDXRef-a","name":"a","externalRefs":7}]}"#,
            "/packages/0/externalRefs: expected an array",
        ),
        (
            "old.json",
            r#"{"bomFormat":"CycloneDX","specVersion":"1.1"}"#,
            "unsupported CycloneDX version \"1.1\" at /specVersion",
        ),
    ];
    for (name, body, reason) in cases {
        std::fs::write(dir.path().join(name), body)?;
        let out = check(dir.path(), name, &[])?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{name} accepted");
        ensure!(out.status.code() == Some(1), "{name}: {:?}", out.status);
        ensure!(
            err.contains(&format!("{name} refused")) && err.contains(reason),
            "{name}: {err}"
        );
        ensure!(!err.contains("panicked"), "{err}");
    }
    let out = check(dir.path(), "absent.json", &[])?;
    ensure!(!out.status.success());
    ensure!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
    Ok(())
}
