//! `gatehouse replay` as a user runs it: a recorded capture and a telemetry file from the
//! shared data, scored through the same detection code the server runs. Checks what was
//! read and that the scores are consistent with their own counts — never how good the
//! detectors are. Skipped with a message when the shared data is absent.

mod support;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

fn data(rel: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(rel);
    if p.exists() {
        Some(p)
    } else {
        gatehouse_testkit::skip(format!(
            "{} is absent (the shared data folder)",
            p.display()
        ));
        None
    }
}

fn replay(args: &[&str], files: &[PathBuf]) -> Result<Value> {
    let out = Command::new(support::binary())
        .arg("replay")
        .args(args)
        .arg("--json")
        .args(files)
        .output()
        .context("running gatehouse replay")?;
    ensure!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("replay --json output")
}

/// Each class's flagged units are at most its units, and the overall counts add up.
fn consistent(report: &Value) -> Result<()> {
    let classes = report["score"]["classes"].as_array().context("classes")?;
    let mut units = 0;
    for c in classes {
        let n = c["units"].as_u64().context("units")?;
        ensure!(c["flagged"].as_u64().context("flagged")? <= n, "{c}");
        units += n;
    }
    let o = &report["score"]["overall"];
    let total: u64 = ["tp", "fp", "tn", "fn"]
        .iter()
        .map(|k| o[k].as_u64().unwrap_or(0))
        .sum();
    ensure!(total == units, "overall {o} against {units} units");
    Ok(())
}

#[test]
fn replay_scores_a_capture_and_a_telemetry_file() -> Result<()> {
    let (Some(flood), Some(benign), Some(fridge)) = (
        data("mqttset/train/flood-train.pcap"),
        data("mqttset/train/benign-train.pcap"),
        data("ton_iot/Train_Test_IoT_Fridge.csv"),
    ) else {
        return Ok(());
    };
    let r = replay(&[], &[flood.clone(), benign])?;
    let recordings = r["recordings"].as_array().context("recordings")?;
    ensure!(recordings.len() == 2, "{r:#}");
    // The data README: the flood capture is one TCP flow, the benign one seven.
    ensure!(
        recordings[0]["units"] == 1 && recordings[1]["units"] == 7,
        "{r:#}"
    );
    ensure!(recordings[0]["extraction"]["connects"] == 1, "{r:#}");
    consistent(&r)?;

    let t = replay(&[], &[fridge])?;
    // 59,944 rows, as the data README counts them.
    ensure!(
        t["recordings"][0]["units"] == 59_944,
        "{:#}",
        t["recordings"]
    );
    consistent(&t)?;

    // A label given on the command line names every unit's class.
    let l = replay(&["--label", "benign"], &[flood])?;
    let classes = l["score"]["classes"].as_array().context("classes")?;
    ensure!(
        classes.len() == 1 && classes[0]["class"] == "benign",
        "{classes:?}"
    );
    Ok(())
}

/// `gatehouse profile learn FILE --out PROFILE`, for a made-up manufacturer and firmware.
fn learn(file: &std::path::Path, profile: &std::path::Path) -> Result<()> {
    let out = Command::new(support::binary())
        .args(["profile", "learn", "--manufacturer", "acme"])
        .args(["--firmware", "1.0.0", "--out"])
        .arg(profile)
        .arg(file)
        .output()
        .context("running gatehouse profile learn")?;
    ensure!(
        out.status.success(),
        "profile learn failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A profile learned from a telemetry file's benign rows is one the server takes, and
/// scoring the same file with it flags no benign row, while readings that leave the
/// benign range (the GPS tracker's DDoS rows reach twice its benign latitude) or jump
/// further than benign fixes ever do (its injection rows) are flagged.
#[test]
fn a_profile_learned_from_benign_rows_flags_no_benign_row() -> Result<()> {
    let Some(gps) = data("ton_iot/Train_Test_IoT_GPS_Tracker.csv") else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let profile = dir.path().join("gps.toml");
    learn(&gps, &profile)?;
    let text = std::fs::read_to_string(&profile)?;
    // What the server would be given: it parses as a model profile, with both readings
    // bounded on the file's topic.
    let parsed = gatehouse_trust::profile::ModelProfile::parse(&text)
        .map_err(|e| anyhow::anyhow!("{e}\n{text}"))?;
    ensure!(parsed.model() == "gps_tracker", "{text}");
    let topic = &parsed.topics()[0];
    ensure!(
        topic.pattern.as_str() == "devices/{device}/telemetry"
            && topic.fields.len() == 2
            && topic.fields.iter().all(|f| f.max_step.is_some()),
        "{text}"
    );

    let profile_arg = profile.to_string_lossy().into_owned();
    let with = replay(&["--profile", &profile_arg], std::slice::from_ref(&gps))?;
    consistent(&with)?;
    let class = |r: &Value, name: &str| -> Result<Value> {
        r["score"]["classes"]
            .as_array()
            .context("classes")?
            .iter()
            .find(|c| c["class"] == name)
            .cloned()
            .with_context(|| format!("no class {name}: {r:#}"))
    };
    ensure!(class(&with, "normal")?["flagged"] == 0, "{with:#}");
    for attack in ["ddos", "injection"] {
        ensure!(
            class(&with, attack)?["flagged"].as_u64().unwrap_or(0) > 0,
            "{attack}: {with:#}"
        );
    }
    // Without the profile the engine knows no range, and flags none of them.
    let without = replay(&[], &[gps])?;
    ensure!(class(&without, "ddos")?["flagged"] == 0, "{without:#}");
    Ok(())
}

/// The bar for learned profiles on TON_IoT: normal rows flagged at most 1 % with
/// the 300 s hold and 0.1 % strict, each file scored with the profile learned from its
/// own benign rows.
#[test]
fn learned_profiles_keep_the_normal_rows_false_positive_rate_under_the_bar() -> Result<()> {
    let mut files = Vec::new();
    for name in ["Fridge", "Thermostat", "GPS_Tracker"] {
        let Some(f) = data(&format!("ton_iot/Train_Test_IoT_{name}.csv")) else {
            return Ok(());
        };
        files.push(f);
    }
    let dir = tempfile::tempdir()?;
    let mut args = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let profile = dir.path().join(format!("{i}.toml"));
        learn(file, &profile)?;
        args.push("--profile".to_owned());
        args.push(profile.to_string_lossy().into_owned());
    }
    for (hold, bar) in [(None, 0.01), (Some("0s"), 0.001)] {
        let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
        if let Some(h) = hold {
            a.extend(["--hold", h]);
        }
        let r = replay(&a, &files)?;
        consistent(&r)?;
        let normal = r["score"]["classes"]
            .as_array()
            .context("classes")?
            .iter()
            .find(|c| c["class"] == "normal")
            .cloned()
            .context("no normal class")?;
        let fpr = normal["flagged"].as_f64().unwrap_or(f64::MAX)
            / normal["units"].as_f64().context("units")?;
        ensure!(fpr <= bar, "hold {hold:?}: FPR {fpr} above {bar}: {normal}");
    }
    Ok(())
}
