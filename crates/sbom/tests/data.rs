//! Every file of the shared data folder's `sbom/` (`../../../shared/data/sbom` from this
//! crate, or `$GATEHOUSE_SHARED_DATA/sbom` when that is set, as in a worktree) through the
//! reader, against a table that names each one: ingested (with its component count for
//! the SBOMs the data README counts), or refused with the reason expected. A file in
//! neither list fails the test, as does a listed file that is missing: the table is the
//! whole folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gatehouse_sbom::{Format, Limits, read_file};

/// Ingested: the path, the format, and the component count when it is asserted
/// (`Some(0)` for the VEX documents, which name their products by BOM-Link and list none).
const INGESTED: &[(&str, Format, Option<usize>)] = &[
    (
        "cyclonedx-examples/SBOM/dropwizard-1.3.15/bom.json",
        Format::CycloneDx,
        Some(167),
    ),
    (
        "cyclonedx-examples/SBOM/juice-shop/via_npm/flat/bom.1.4.json",
        Format::CycloneDx,
        Some(1115),
    ),
    (
        "cyclonedx-examples/SBOM/laravel-7.12.0/bom.1.4.json",
        Format::CycloneDx,
        Some(62),
    ),
    (
        "cyclonedx-examples/SBOM/proton-bridge/proton-bridge-v1.8.0.bom.json",
        Format::CycloneDx,
        Some(201),
    ),
    (
        "cyclonedx-examples/VEX/bom.json",
        Format::CycloneDx,
        Some(3),
    ),
    (
        "cyclonedx-examples/VEX/vex.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-1/vex-affected.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-1/vex-fixed.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-1/vex-not_affected.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-1/vex-under_investigation.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-2/vex.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-3/vex.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-4/vex.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-5/vex.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-6/vex.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-7/bom-1.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-7/bom-2.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-7/vex.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-8/bom-1.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-8/bom-2.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-8/vex.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-1/vex.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-2/vex.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-3/vex.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-4/vex.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-5/vex.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-6/bom-1.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-6/bom-2.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-6/bom-3.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-6/vex.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-7/vex.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-8/vex.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-9/bom-1.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-9/bom-2.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-9/bom-3.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-9/vex.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-10/vex.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-11/vex.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-12/vex.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-13/bom-1.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-13/bom-2.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-13/bom-3.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-13/vex.json",
        Format::CycloneDx,
        Some(0),
    ),
    (
        "in-the-wild/cyclonedx/ascii-boxes-sbom-cdx.json",
        Format::CycloneDx,
        None,
    ),
    (
        "in-the-wild/cyclonedx/ghidra-sbom-cdx.json",
        Format::CycloneDx,
        None,
    ),
    (
        "in-the-wild/cyclonedx/harp-darwin-amd64.sbom.json",
        Format::CycloneDx,
        None,
    ),
    (
        "in-the-wild/cyclonedx/joc-cockpit-sbom-cdx.json",
        Format::CycloneDx,
        None,
    ),
    (
        "in-the-wild/cyclonedx/kawipiko-sbom-cdx.json",
        Format::CycloneDx,
        None,
    ),
    (
        "in-the-wild/cyclonedx/obsidian-sailboat-sbom-cdx.json",
        Format::CycloneDx,
        None,
    ),
    (
        "in-the-wild/cyclonedx/redis-commander-sbom-cdx.json",
        Format::CycloneDx,
        None,
    ),
    (
        "in-the-wild/spdx/chronicle-sbom.spdx.json",
        Format::Spdx,
        None,
    ),
    ("in-the-wild/spdx/julia.spdx.json", Format::Spdx, None),
    (
        "in-the-wild/spdx/microsoft-sbom-tool.spdx.json",
        Format::Spdx,
        None,
    ),
    // spdx-iot: the README's package counts, one per file.
    (
        "spdx-iot/spdx-bom-balenalib_am571x-evm-alpine-node-sha256_8b2c99e327b751d6583d4f34248c5b2a91cc855bdfbd350a8f58cf7db7293169.json",
        Format::Spdx,
        Some(15),
    ),
    (
        "spdx-iot/spdx-bom-balenalib_apalis-imx6q-ubuntu-node-sha256_dd67b0c55c3f7e56b300ed52506db10871f3b8044404606032ff1417b323198b.json",
        Format::Spdx,
        Some(171),
    ),
    (
        "spdx-iot/spdx-bom-balenalib_artik5-alpine-python-sha256_1a281557bf71a8530ea1b8927cb46def195a565e4c24c7078a3877f477b0041b.json",
        Format::Spdx,
        Some(18),
    ),
    (
        "spdx-iot/spdx-bom-balenalib_asus-tinker-board-alpine-node-sha256_5a3936fd4b8f6d3f5cc055c1b2083d3cf851a7556d3aef5c18fdafeaae9268de.json",
        Format::Spdx,
        Some(15),
    ),
    (
        "spdx-iot/spdx-bom-balenalib_beaglebone-black-debian-node-sha256_feb54ebdc2d6d10f44bcff897a8a167f3f15daca75956cf6d6c7982455bd16c0.json",
        Format::Spdx,
        Some(174),
    ),
    (
        "spdx-iot/spdx-syft-balenalib_apalis-imx6q-alpine-python-sha256_72b4e6d24e42e7012033e18f231dae3e9c821453c7d8147f52848485f33a10ef.json",
        Format::Spdx,
        Some(84),
    ),
    (
        "spdx-iot/spdx-syft-balenalib_artik710-alpine-node-sha256_2bab1a96deff60a6325f79002389d63307ba07791e357438bda898753d74b491.json",
        Format::Spdx,
        Some(296),
    ),
    (
        "spdx-iot/spdx-syft-balenalib_bananapi-m1-plus-alpine-node-sha256_5a3936fd4b8f6d3f5cc055c1b2083d3cf851a7556d3aef5c18fdafeaae9268de.json",
        Format::Spdx,
        Some(296),
    ),
    (
        "spdx-iot/spdx-syft-balenalib_beaglebone-black-debian-node-sha256_feb54ebdc2d6d10f44bcff897a8a167f3f15daca75956cf6d6c7982455bd16c0.json",
        Format::Spdx,
        Some(373),
    ),
    (
        "spdx-iot/spdx-trivy-balenalib_am571x-evm-debian-node-sha256_efb692facbbae0cf2cefdeeed581833d6a5f98b8f2b1dd7d2d7bedcd5c4931e0.json",
        Format::Spdx,
        Some(411),
    ),
    (
        "spdx-iot/spdx-trivy-balenalib_artik10-alpine-node-sha256_803ea83c9735cffe133214f7044e3c3bb4782a8b70fdba0b92bb515a7b56666a.json",
        Format::Spdx,
        Some(287),
    ),
    (
        "spdx-iot/spdx-trivy-balenalib_artik710-ubuntu-node-sha256_3be76845ad4f6b35545b88027b44bfa2d9eb42aca01cb16a89a8e8fc1fc9509b.json",
        Format::Spdx,
        Some(375),
    ),
    (
        "spdx-iot/spdx-trivy-balenalib_asus-tinker-board-debian-node-sha256_8d5b3c087e3f10e96a3967f7c1ef650978af5e84071e9bce9113b1643caefb89.json",
        Format::Spdx,
        Some(375),
    ),
    (
        "spdx-iot/spdx-trivy-balenalib_beaglebone-black-debian-node-sha256_feb54ebdc2d6d10f44bcff897a8a167f3f15daca75956cf6d6c7982455bd16c0.json",
        Format::Spdx,
        Some(375),
    ),
    (
        "spdx-iot/spdx-trivy-balenalib_beaglebone-green-ubuntu-node-sha256_a642025da75b7db95996040e46f2cc22cc5bdcf9d9dabc389a32fc1b86b75b15.json",
        Format::Spdx,
        Some(375),
    ),
];

const CDX_XML: &str = "unsupported format: CycloneDX XML";
const TAG_VALUE: &str = "unsupported format: SPDX tag-value";
const MARKDOWN: &str = "not an SBOM: neither JSON, XML nor SPDX tag-value";

/// Refused: the path and a substring of the refusal.
const REFUSED: &[(&str, &str)] = &[
    ("in-the-wild/cyclonedx/archivist-shell-cdx.xml", CDX_XML),
    ("in-the-wild/cyclonedx/traefix-cdx.xml", CDX_XML),
    // A JSON array of SCANOSS records, despite its name.
    (
        "in-the-wild/cyclonedx/scanoss-sbom-cdx.json",
        "not an SBOM: the document is a JSON array",
    ),
    // A whole document, then a web page's footer.
    (
        "in-the-wild/spdx/powershell-2.2.6.spdx.json",
        "invalid JSON at line 2765 column 1: trailing characters",
    ),
    ("in-the-wild/spdx/cbor-sbom.spdx", TAG_VALUE),
    ("in-the-wild/spdx/fatbom-sbom.spdx", TAG_VALUE),
    ("in-the-wild/spdx/k8s-release-sbom.spdx", TAG_VALUE),
    ("in-the-wild/spdx/mqtt-client-sbom.spdx", TAG_VALUE),
    ("in-the-wild/spdx/usbutils.spdx", TAG_VALUE),
    ("in-the-wild/spdx/vast-sbom.spdx", TAG_VALUE),
    // The upstream descriptions of the VEX cases.
    ("cyclonedx-examples/VEX/README.md", MARKDOWN),
    ("cyclonedx-examples/VEX/CISA-Use-Cases/README.md", MARKDOWN),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-1/README.md",
        MARKDOWN,
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-2/README.md",
        MARKDOWN,
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-3/README.md",
        MARKDOWN,
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-4/README.md",
        MARKDOWN,
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-5/README.md",
        MARKDOWN,
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-6/README.md",
        MARKDOWN,
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-7/README.md",
        MARKDOWN,
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-8/README.md",
        MARKDOWN,
    ),
    (
        "cyclonedx-examples/VEX/CISA-Use-Cases/Case-9/README.md",
        MARKDOWN,
    ),
    ("cyclonedx-examples/VEX/Use-Cases/README.md", MARKDOWN),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-1/README.md",
        MARKDOWN,
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-2/README.md",
        MARKDOWN,
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-3/README.md",
        MARKDOWN,
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-4/README.md",
        MARKDOWN,
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-5/README.md",
        MARKDOWN,
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-6/README.md",
        MARKDOWN,
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-7/README.md",
        MARKDOWN,
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-8/README.md",
        MARKDOWN,
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-9/README.md",
        MARKDOWN,
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-10/README.md",
        MARKDOWN,
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-11/README.md",
        MARKDOWN,
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-12/README.md",
        MARKDOWN,
    ),
    (
        "cyclonedx-examples/VEX/Use-Cases/Case-13/README.md",
        MARKDOWN,
    ),
];

fn data_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("GATEHOUSE_SHARED_DATA") {
        Some(d) => PathBuf::from(d).join("sbom"),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/data/sbom"
        )),
    };
    if dir.is_dir() {
        Some(dir)
    } else {
        gatehouse_testkit::skip(format!(
            "{} is absent (the shared data folder is not on this machine)",
            dir.display()
        ));
        None
    }
}

fn walk(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable data folder") {
            let path = entry.expect("readable entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path.strip_prefix(root).expect("under the root");
                files.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_shared_sbom_is_ingested_or_refused_for_its_reason() {
    let Some(root) = data_dir() else { return };
    let limits = Limits::default();
    let mut expected: BTreeMap<&str, Result<(Format, Option<usize>), &str>> = BTreeMap::new();
    for (path, format, count) in INGESTED {
        assert!(
            expected.insert(path, Ok((*format, *count))).is_none(),
            "{path} twice"
        );
    }
    for (path, reason) in REFUSED {
        assert!(expected.insert(path, Err(reason)).is_none(), "{path} twice");
    }
    let files = walk(&root);
    let mut failures = Vec::new();
    let mut refused_by_reason: BTreeMap<String, usize> = BTreeMap::new();
    let mut ingested = 0;
    for file in &files {
        let Some(want) = expected.remove(file.as_str()) else {
            failures.push(format!("{file}: in neither table"));
            continue;
        };
        let got = read_file(&root.join(file), &limits);
        match (want, got) {
            (Ok((format, count)), Ok(sbom)) => {
                ingested += 1;
                if sbom.format != format {
                    failures.push(format!(
                        "{file}: read as {}, expected {format}",
                        sbom.format
                    ));
                }
                let n = sbom.components.len();
                match count {
                    Some(c) if c != n => {
                        failures.push(format!("{file}: {n} components, expected {c}"))
                    }
                    None if n == 0 => failures.push(format!("{file}: no components")),
                    _ => {}
                }
                for c in &sbom.components {
                    if let Some(p) = &c.purl {
                        let again = gatehouse_sbom::Purl::parse(p).map(|p| p.to_string());
                        if again.as_deref() != Ok(p.as_str()) {
                            failures.push(format!("{file} {}: purl {p} is not canonical", c.at));
                        }
                    }
                }
            }
            (Err(reason), Err(e)) => {
                let msg = e.to_string();
                *refused_by_reason.entry(reason.to_owned()).or_default() += 1;
                if !msg.contains(reason) {
                    failures.push(format!("{file}: refused with {msg:?}, expected {reason:?}"));
                }
            }
            (Ok(_), Err(e)) => failures.push(format!("{file}: refused ({e}), expected ingested")),
            (Err(reason), Ok(_)) => {
                failures.push(format!("{file}: ingested, expected refused ({reason})"))
            }
        }
    }
    for missing in expected.keys() {
        failures.push(format!("{missing}: listed but not in the folder"));
    }
    eprintln!(
        "{} files: {ingested} ingested; refused: {refused_by_reason:?}",
        files.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_small_limit_refuses_the_largest_real_sbom_before_parsing() {
    let Some(root) = data_dir() else { return };
    let limits = Limits {
        max_bytes: 1 << 20,
        ..Limits::default()
    };
    let (largest, _, _) = INGESTED
        .iter()
        .find(|(p, _, _)| p.starts_with("spdx-iot/spdx-syft-balenalib_beaglebone-black"))
        .expect("listed");
    let file = root.join(largest);
    let e = refusal(read_file(&file, &limits), "3.5 MB is over 1 MiB");
    assert!(e.starts_with("too large"), "{e}");
    let limits = Limits {
        max_components: 100,
        ..Limits::default()
    };
    let e = refusal(read_file(&file, &limits), "373 packages");
    assert!(
        e.contains("more than 100 components (at /packages/100)"),
        "{e}"
    );
}

fn refusal(r: Result<gatehouse_sbom::Sbom, gatehouse_sbom::SbomError>, why: &str) -> String {
    match r {
        Ok(sbom) => panic!("accepted with {} components: {why}", sbom.components.len()),
        Err(e) => e.to_string(),
    }
}
