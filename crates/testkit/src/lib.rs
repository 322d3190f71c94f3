//! What Gatehouse's tests share across crates.
//!
//! A test that needs a tool (openssl, mosquitto, a Python package) or the shared data
//! sets, and finds it missing, calls [`skip`]. Outside CI that returns, so the test can
//! return early, and leaves a line in `<target>/skipped-tests.log`: a passing run hides
//! captured output, so the log is where a skip stays visible (`.ci/run` prints it). With
//! `CI` set it panics instead: in CI a skip is a failure.

use std::fmt::Display;
use std::io::Write;
use std::panic::Location;
use std::path::PathBuf;

/// Where skips are recorded: `skipped-tests.log` in the target directory of the running
/// test binary (`<target>/<profile>/deps/<binary>`), if that can be told.
pub fn skip_log() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let target = exe.parent()?.parent()?.parent()?;
    Some(target.join("skipped-tests.log"))
}

/// Skips the calling test for `reason` (what is missing, and how to get it): returns
/// after recording it, or panics when `CI` is set.
#[track_caller]
pub fn skip(reason: impl Display) {
    let at = Location::caller();
    let test = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{}:{}", at.file(), at.line()));
    let ci = std::env::var_os("CI").is_some();
    record(&format!(
        "{} {test}: {reason}",
        if ci { "FAILED" } else { "SKIPPED" }
    ));
    assert!(
        !ci,
        "{test} needs what is missing here ({reason}); CI is set, and in CI a skip is a failure"
    );
    eprintln!("SKIPPED {test}: {reason}");
}

/// Whether `program args…` runs (its exit status aside); skips the calling test when it
/// does not.
#[track_caller]
pub fn have_program(program: &str, args: &[&str]) -> bool {
    let runs = std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !runs {
        skip(format!("{program} is not installed"));
    }
    runs
}

fn record(line: &str) {
    let Some(path) = skip_log() else { return };
    // One write per line, in append mode: lines from tests running at once stay whole.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}
