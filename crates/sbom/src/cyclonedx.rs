//! CycloneDX JSON, specification 1.2 to 1.6: `specVersion`, `metadata.component` (the
//! document's name) and `components`, nested ones included.

use serde_json::{Map, Value};

use crate::{
    Component, Format, Limits, Place, Problem, Sbom, SbomError, normalise_purl, object, opt_array,
    opt_str, valid_cpe,
};

const VERSIONS: [&str; 5] = ["1.2", "1.3", "1.4", "1.5", "1.6"];

pub(crate) fn read(doc: &Map<String, Value>, limits: &Limits) -> Result<Sbom, SbomError> {
    match opt_str(doc, "bomFormat", "")? {
        Some("CycloneDX") => {}
        other => {
            return Err(SbomError::NotAnSbom(format!(
                "\"bomFormat\" is {:?}, not \"CycloneDX\"",
                other.unwrap_or("")
            )));
        }
    }
    let spec_version = match doc.get("specVersion") {
        Some(Value::String(v)) if VERSIONS.contains(&v.as_str()) => v.clone(),
        Some(Value::String(v)) => {
            return Err(SbomError::UnsupportedVersion {
                format: Format::CycloneDx,
                found: v.clone(),
                at: "/specVersion".into(),
            });
        }
        _ => {
            return Err(SbomError::Invalid {
                at: "/specVersion".into(),
                expected: "a string, the specification version",
            });
        }
    };
    let name = match doc.get("metadata") {
        None | Some(Value::Null) => None,
        Some(m) => {
            let metadata = object(m, "/metadata")?;
            match metadata.get("component") {
                None | Some(Value::Null) => None,
                Some(c) => {
                    let c = object(c, "/metadata/component")?;
                    let name = opt_str(c, "name", "/metadata/component")?;
                    let version = opt_str(c, "version", "/metadata/component")?;
                    match (name, version) {
                        (Some(n), Some(v)) => Some(format!("{n} {v}")),
                        (Some(n), None) => Some(n.to_owned()),
                        _ => None,
                    }
                }
            }
        }
    };
    let mut sbom = Sbom {
        format: Format::CycloneDx,
        spec_version,
        name,
        components: Vec::new(),
        problems: Vec::new(),
    };
    // Depth-first, in document order, with an explicit stack: nesting is bounded by the
    // depth limit already, and this keeps the stack of the caller flat regardless.
    let mut stack: Vec<(&Value, String)> = opt_array(doc, "components", "")?
        .iter()
        .enumerate()
        .rev()
        .map(|(i, c)| (c, format!("/components/{i}")))
        .collect();
    let mut seen = 0usize;
    while let Some((value, at)) = stack.pop() {
        seen += 1;
        if seen > limits.max_components {
            return Err(SbomError::TooManyComponents {
                limit: limits.max_components,
                at,
            });
        }
        let c = object(value, &at)?;
        for (i, child) in opt_array(c, "components", &at)?.iter().enumerate().rev() {
            stack.push((child, format!("{at}/components/{i}")));
        }
        component(c, at, &mut sbom)?;
    }
    if sbom.components.is_empty() {
        sbom.problems.push(Problem {
            at: Place::new("/components"),
            message: "no components".into(),
        });
    }
    Ok(sbom)
}

fn component(c: &Map<String, Value>, at: String, sbom: &mut Sbom) -> Result<(), SbomError> {
    let place = Place::new(at.clone());
    let problems = &mut sbom.problems;
    let Some(name) = opt_str(c, "name", &at)? else {
        problems.push(Problem {
            at: Place::new(format!("{at}/name")),
            message: "component without a name; left out".into(),
        });
        return Ok(());
    };
    let version = opt_str(c, "version", &at)?;
    if version.is_none() {
        problems.push(Problem {
            at: place.clone(),
            message: format!("component {name:?} without a version"),
        });
    }
    let purl = opt_str(c, "purl", &at)?
        .and_then(|p| normalise_purl(p, &Place::new(format!("{at}/purl")), problems));
    let cpe = match opt_str(c, "cpe", &at)? {
        Some(cpe) if valid_cpe(cpe) => Some(cpe.to_owned()),
        Some(cpe) => {
            problems.push(Problem {
                at: Place::new(format!("{at}/cpe")),
                message: format!("invalid CPE {cpe:?}; left out"),
            });
            None
        }
        None => None,
    };
    let supplier = match c.get("supplier") {
        None | Some(Value::Null) => None,
        Some(s) => opt_str(
            object(s, &format!("{at}/supplier"))?,
            "name",
            &format!("{at}/supplier"),
        )?
        .map(str::to_owned),
    };
    sbom.components.push(Component {
        at: place,
        name: name.to_owned(),
        version: version.map(str::to_owned),
        purl,
        cpe,
        supplier,
    });
    Ok(())
}
