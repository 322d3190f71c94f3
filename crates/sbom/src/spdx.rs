//! SPDX JSON, 2.2 and 2.3: `spdxVersion`, `name` and `packages` (files and snippets are
//! not components). A package's purl and CPE come from its `externalRefs`
//! (`PACKAGE-MANAGER`/`purl`, `SECURITY`/`cpe23Type` or `cpe22Type`); its supplier from
//! `supplier` (`Organization: …` or `Person: …`).

use serde_json::{Map, Value};

use crate::{
    Component, Format, Limits, Place, Problem, Sbom, SbomError, normalise_purl, object, opt_array,
    opt_str, valid_cpe,
};

const VERSIONS: [&str; 2] = ["SPDX-2.2", "SPDX-2.3"];

pub(crate) fn read(doc: &Map<String, Value>, limits: &Limits) -> Result<Sbom, SbomError> {
    let spec_version = match doc.get("spdxVersion") {
        Some(Value::String(v)) if VERSIONS.contains(&v.as_str()) => {
            v.trim_start_matches("SPDX-").to_owned()
        }
        Some(Value::String(v)) => {
            return Err(SbomError::UnsupportedVersion {
                format: Format::Spdx,
                found: v.clone(),
                at: "/spdxVersion".into(),
            });
        }
        _ => {
            return Err(SbomError::Invalid {
                at: "/spdxVersion".into(),
                expected: "a string, the specification version",
            });
        }
    };
    let mut sbom = Sbom {
        format: Format::Spdx,
        spec_version,
        name: opt_str(doc, "name", "")?.map(str::to_owned),
        components: Vec::new(),
        problems: Vec::new(),
    };
    let packages = opt_array(doc, "packages", "")?;
    if packages.len() > limits.max_components {
        return Err(SbomError::TooManyComponents {
            limit: limits.max_components,
            at: format!("/packages/{}", limits.max_components),
        });
    }
    for (i, p) in packages.iter().enumerate() {
        let at = format!("/packages/{i}");
        package(object(p, &at)?, at, &mut sbom)?;
    }
    if sbom.components.is_empty() {
        sbom.problems.push(Problem {
            at: Place::new("/packages"),
            message: "no packages".into(),
        });
    }
    Ok(sbom)
}

fn package(p: &Map<String, Value>, at: String, sbom: &mut Sbom) -> Result<(), SbomError> {
    let spdx_id = opt_str(p, "SPDXID", &at)?.map(str::to_owned);
    let place = |pointer: String| Place {
        pointer,
        spdx_id: spdx_id.clone(),
    };
    let problems = &mut sbom.problems;
    if spdx_id.is_none() {
        problems.push(Problem {
            at: place(format!("{at}/SPDXID")),
            message: "package without an SPDXID".into(),
        });
    }
    let Some(name) = opt_str(p, "name", &at)? else {
        problems.push(Problem {
            at: place(format!("{at}/name")),
            message: "package without a name; left out".into(),
        });
        return Ok(());
    };
    let version = opt_str(p, "versionInfo", &at)?.filter(|v| *v != "NOASSERTION");
    if version.is_none() {
        problems.push(Problem {
            at: place(at.clone()),
            message: format!("package {name:?} without a version"),
        });
    }
    let mut purl = None;
    let mut cpe = None;
    for (i, r) in opt_array(p, "externalRefs", &at)?.iter().enumerate() {
        let ref_at = format!("{at}/externalRefs/{i}");
        let r = object(r, &ref_at)?;
        let category = opt_str(r, "referenceCategory", &ref_at)?.unwrap_or("");
        let kind = opt_str(r, "referenceType", &ref_at)?.unwrap_or("");
        let Some(locator) = opt_str(r, "referenceLocator", &ref_at)? else {
            continue;
        };
        let locator_at = place(format!("{ref_at}/referenceLocator"));
        match (category.replace('_', "-").as_str(), kind) {
            ("PACKAGE-MANAGER", "purl") if purl.is_none() => {
                purl = normalise_purl(locator, &locator_at, problems);
            }
            ("SECURITY", "cpe23Type" | "cpe22Type") if cpe.is_none() => {
                if valid_cpe(locator) {
                    cpe = Some(locator.to_owned());
                } else {
                    problems.push(Problem {
                        at: locator_at,
                        message: format!("invalid CPE {locator:?}; left out"),
                    });
                }
            }
            _ => {}
        }
    }
    let supplier = opt_str(p, "supplier", &at)?.and_then(|s| {
        let s = s
            .strip_prefix("Organization:")
            .or_else(|| s.strip_prefix("Person:"))
            .unwrap_or(s)
            .trim();
        (!s.is_empty() && s != "NOASSERTION").then(|| s.to_owned())
    });
    sbom.components.push(Component {
        at: place(at),
        name: name.to_owned(),
        version: version.map(str::to_owned),
        purl,
        cpe,
        supplier,
    });
    Ok(())
}
