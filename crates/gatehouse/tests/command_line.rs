//! The command line's manners, run as the real binary: only `init` and `serve` create a
//! data directory, data goes to standard output and commentary to standard error, every
//! listing has a JSON form that is an array, and a reader that stops early ends the
//! command quietly.

use anyhow::{Result, ensure};

mod support;

use support::cli_env::Env;

/// Commands of every group that needs a data directory.
const NEEDS_DATA: &[&[&str]] = &[
    &["device", "list"],
    &["tenant", "list"],
    &["tenant", "add", "acme"],
    &["manufacturer", "list"],
    &["model", "list"],
    &["token", "list", "--tenant", "default"],
    &["policy", "show"],
    &["policy", "history"],
    &["audit", "tail"],
    &["audit", "verify"],
    &["incident", "list"],
    &["admin", "list"],
    &["admin", "create", "ops"],
    &["ca", "path"],
    &["ca", "roll"],
];

#[test]
fn commands_refuse_a_missing_data_directory_and_create_none() -> Result<()> {
    let env = Env::uninitialised()?;
    let data = env.data_dir();
    let out = env.path("certs");
    let issue = [
        "ca",
        "issue",
        "--device",
        "thermo-1",
        "--out",
        out.to_str().expect("utf-8 path"),
    ];
    for args in NEEDS_DATA.iter().copied().chain([&issue[..]]) {
        let err = env.refused(args)?;
        ensure!(
            err.contains(&data.display().to_string()),
            "gatehouse {args:?} does not name the directory it looked for: {err}"
        );
        for hint in ["--data-dir", "--config", "gatehouse init"] {
            ensure!(
                err.contains(hint),
                "gatehouse {args:?} does not mention {hint}: {err}"
            );
        }
        if args[0] != "ca" {
            ensure!(
                err.contains("GATEHOUSE_SERVER"),
                "gatehouse {args:?} does not mention a remote server: {err}"
            );
        }
        ensure!(
            !data.exists(),
            "gatehouse {args:?} created the data directory"
        );
    }
    ensure!(!out.exists(), "ca issue wrote certificates without a CA");

    // --data-dir names another directory: refused the same way, naming that one.
    let other = env.path("elsewhere");
    let err = env.refused(&[
        "device",
        "list",
        "--data-dir",
        other.to_str().expect("utf-8 path"),
    ])?;
    ensure!(err.contains(&other.display().to_string()), "{err}");
    ensure!(!other.exists(), "device list --data-dir created it");

    // `init` creates it and says where; then the commands work.
    let said = env.ok(&["init"])?;
    ensure!(
        said.contains(&data.display().to_string()) && said.contains("ca.crt"),
        "init does not say where: {said}"
    );
    ensure!(data.join("gatehouse.db").is_file() && data.join("ca").join("ca.crt").is_file());
    let tenants = env.json(&["tenant", "list"])?;
    ensure!(
        tenants.to_string().contains("\"default\""),
        "init made no default tenant: {tenants}"
    );
    env.ok(&issue)?;
    ensure!(out.join("thermo-1.crt").is_file());
    // A second `init` changes nothing and says so.
    let again = env.ok(&["init"])?;
    ensure!(again.contains("already"), "{again}");
    Ok(())
}
