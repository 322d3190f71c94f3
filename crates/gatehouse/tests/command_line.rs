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

/// Registers the manufacturer `acme` and its model `thermo`, and enrolls
/// `default/<device>` with one certificate through the store, as the enrollment service
/// does, so that listings have something to list.
fn enroll(env: &Env, device: &str) -> Result<()> {
    use gatehouse_store::{
        Assurance, AuditEntry, CertSerial, ModelId, NewCertificate, NewDevice, Registry,
        SqliteStore,
    };
    let ca = gatehouse_pki::ManufacturerCa::new("Acme")?;
    let pem = env.write("acme-ca.pem", ca.cert_pem())?;
    let pem = pem.to_str().expect("utf-8 path");
    env.ok(&["manufacturer", "add", "acme", "--ca", pem])?;
    env.ok(&["model", "add", "thermo", "--manufacturer", "acme"])?;
    let store = SqliteStore::open(env.db())?;
    let d: gatehouse_types::DeviceRef = device.parse()?;
    let now = time::OffsetDateTime::now_utc();
    let cert = NewCertificate {
        serial: CertSerial::new(format!("{:032x}", device.len() + 10))?,
        device: d.clone(),
        issuer: "gatehouse-issuing-1".to_owned(),
        not_before: now - time::Duration::minutes(1),
        not_after: now + time::Duration::days(30),
        pem: "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".to_owned(),
    };
    let new = NewDevice {
        device: d.clone(),
        model: ModelId::new("thermo")?,
        manufacturer: None,
        serial: None,
        assurance: Assurance::Token,
        tags: Vec::new(),
    };
    store.enroll(
        &new,
        &cert,
        &AuditEntry::new(now, format!("device:{d}"), "enroll", d.to_string()),
    )?;
    Ok(())
}

/// Runs `args` with standard output on a pipe whose reader is already gone, as with
/// `gatehouse … | head -1` once head has its line: the first write fails.
fn run_into_closed_pipe(env: &Env, args: &[&str]) -> Result<std::process::Output> {
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let out = std::process::Command::new(support::binary())
        .arg("--config")
        .arg(&env.config)
        .args(args)
        .env_remove("GATEHOUSE_CONFIG")
        .env_remove("GATEHOUSE_DATA_DIR")
        .env_remove("GATEHOUSE_SERVER")
        .env("RUST_BACKTRACE", "1")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()?;
    Ok(out)
}

#[test]
fn a_reader_that_stops_early_ends_the_command_quietly() -> Result<()> {
    let env = Env::new()?;
    enroll(&env, "thermo-1")?;
    for args in [
        &["device", "list"][..],
        &["device", "list", "--json"],
        &["policy", "show"],
        &["audit", "tail"],
        &["audit", "export"],
        &["tenant", "list"],
        &["config", "example"],
    ] {
        let out = run_into_closed_pipe(&env, args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(0) || out.status.code() == Some(141),
            "gatehouse {args:?} into a closed pipe exited with {}: {stderr}",
            out.status
        );
        // Commentary (policy show's header) may be there; a complaint may not.
        for complaint in [
            "panicked",
            "failed printing",
            "Broken pipe",
            "error",
            "backtrace",
        ] {
            ensure!(
                !stderr.contains(complaint),
                "gatehouse {args:?} into a closed pipe complained: {stderr}"
            );
        }
    }
    Ok(())
}

/// Every listing command.
const LISTINGS: &[&[&str]] = &[
    &["device", "list"],
    &["tenant", "list"],
    &["manufacturer", "list"],
    &["model", "list"],
    &["token", "list", "--tenant", "default"],
    &["policy", "history"],
    &["audit", "tail"],
    &["incident", "list"],
    &["incident", "actions"],
    &["incident", "bans"],
    &["admin", "list"],
    &["admin", "tokens"],
];

#[test]
fn every_listing_prints_a_json_array_and_nothing_to_list_is_commentary() -> Result<()> {
    let env = Env::new()?;
    // Empty: an empty array, and in text nothing on standard output.
    for args in [
        &["device", "list"][..],
        &["incident", "list"],
        &["admin", "list"],
    ] {
        let (rows, note) = env.ok_split(args)?;
        ensure!(
            rows.is_empty() && !note.trim().is_empty(),
            "gatehouse {args:?} with nothing to list: stdout {rows:?}, stderr {note:?}"
        );
    }
    enroll(&env, "thermo-1")?;
    env.ok(&["admin", "create", "ops", "--role", "operator"])?;
    env.ok(&["admin", "token", "ops"])?;
    env.ok(&[
        "token", "create", "--tenant", "default", "--model", "thermo",
    ])?;
    for args in LISTINGS {
        let v = env.json(args)?;
        ensure!(
            v.is_array(),
            "gatehouse {args:?} --json is not an array: {v}"
        );
    }
    for args in [
        &["device", "list"][..],
        &["tenant", "list"],
        &["model", "list"],
        &["manufacturer", "list"],
        &["token", "list", "--tenant", "default"],
        &["audit", "tail"],
        &["admin", "list"],
        &["admin", "tokens"],
    ] {
        let v = env.json(args)?;
        ensure!(
            v.as_array().is_some_and(|a| !a.is_empty()),
            "gatehouse {args:?} --json lists nothing: {v}"
        );
    }
    Ok(())
}

#[test]
fn policy_show_prints_a_set_that_validates_and_sets() -> Result<()> {
    let env = Env::new()?;
    let (text, about) = env.ok_split(&["policy", "show"])?;
    ensure!(about.contains("version 0"), "{about}");
    let file = env.write("p.cedar", &text)?;
    let file = file.to_str().expect("utf-8 path");
    let ok = env.ok(&["policy", "validate", file])?;
    ensure!(ok.starts_with("OK"), "{ok}");
    env.ok(&["policy", "set", file])?;
    let (again, about) = env.ok_split(&["policy", "show"])?;
    ensure!(about.contains("version 1"), "{about}");
    ensure!(again == text, "the stored set is not the one shown");
    Ok(())
}

#[test]
fn config_check_checks_the_files_it_names_and_summarises() -> Result<()> {
    let env = Env::new()?;
    // A file that names a CA certificate that is not there: refused, naming it.
    let missing = env.path("no-such-ca.pem");
    let key = env.write("ca.key", "not read: the certificate is missing first")?;
    let bad = env.write(
        "bad.toml",
        &format!(
            "[ca]\nexternal_cert = {:?}\nexternal_key = {:?}\n",
            missing.display().to_string(),
            key.display().to_string()
        ),
    )?;
    let out = std::process::Command::new(support::binary())
        .arg("--config")
        .arg(&bad)
        .args(["config", "check"])
        .env_remove("GATEHOUSE_DATA_DIR")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "a missing CA file passed the check");
    ensure!(
        stderr.contains(&missing.display().to_string()),
        "the refusal does not name the missing file: {stderr}"
    );

    // A data directory whose parent is missing: refused.
    let orphan = env.write(
        "orphan.toml",
        "data_dir = \"/no-such-parent/gatehouse-data\"\n",
    )?;
    let out = std::process::Command::new(support::binary())
        .arg("--config")
        .arg(&orphan)
        .args(["config", "check"])
        .env_remove("GATEHOUSE_DATA_DIR")
        .output()?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("/no-such-parent"),
        "a data directory without a parent passed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A good file: a short summary for people, with what differs from the defaults.
    std::fs::write(
        &env.config,
        format!(
            "data_dir = {:?}\n[limits]\nmax_connections = 5000\n",
            env.data_dir().display().to_string()
        ),
    )?;
    let summary = env.ok(&["config", "check"])?;
    for needle in [
        "is valid",
        "listeners:",
        "plain MQTT off",
        "data dir:",
        "limits.max_connections = 5000",
        "checked:",
        "ca.crt",
    ] {
        ensure!(summary.contains(needle), "no {needle:?} in:\n{summary}");
    }
    ensure!(
        !summary.contains("Settings {") && summary.lines().count() < 20,
        "not a summary:\n{summary}"
    );
    Ok(())
}

#[test]
fn a_log_that_is_not_a_terminal_has_no_colour_codes() -> Result<()> {
    let env = Env::new()?;
    // The HTTPS port is taken, so the server logs its first lines and exits.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    std::fs::write(
        &env.config,
        format!(
            "data_dir = {:?}\n[listeners]\nmqtts = \"127.0.0.1:0\"\nhttps = \"{}\"\n",
            env.data_dir().display().to_string(),
            taken.local_addr()?
        ),
    )?;
    let out = std::process::Command::new(support::binary())
        .arg("--config")
        .arg(&env.config)
        .arg("serve")
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()?;
    let log = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && log.contains("registry ready"),
        "{log}"
    );
    ensure!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log:?}"
    );
    Ok(())
}
