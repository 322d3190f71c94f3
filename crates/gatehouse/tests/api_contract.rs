//! The REST API keeps to the OpenAPI document it serves, checked by a tool we did not
//! write: schemathesis reads `/api/openapi.json` from the real binary (fresh data
//! directory, ports 0), generates requests for every operation from it — valid ones, and
//! invalid ones built by breaking the documented constraints — sends them with an admin's
//! API token over TLS verified against the server's CA, and checks every answer: no 5xx,
//! a documented status code, a documented content type and headers, a body matching the
//! documented schema, every valid request accepted and every invalid one refused. Any
//! failure fails the test, with schemathesis's report. Skipped with a message when
//! schemathesis is not installed, except in CI.

mod support;

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use support::{Gatehouse, Options};
use tokio::process::Command;

fn skip() -> bool {
    if support::have_program("schemathesis", &["--version"]) {
        return false;
    }
    gatehouse_testkit::skip("schemathesis is not installed (pip install 'schemathesis>=4,<5')");
    true
}

/// Test cases per operation and phase: enough to cover every documented constraint and
/// its negation (the coverage phase enumerates those whatever this number), small enough
/// for the whole run to take a few minutes on a small machine.
const MAX_EXAMPLES: &str = "25";

/// The longest the run may take before the test gives up on it (a hung server, say).
const RUN_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// What schemathesis checks on every answer.
const CHECKS: &[&str] = &[
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "ignored_auth",
];

/// Operations left out of the run, each with why. Every other operation in the document
/// is exercised.
const EXCLUDED: &[(&str, &str)] = &[(
    "revoke_api_token",
    // The stateful phase takes token ids from the token list, which holds the run's own
    // token, and revokes it: every later request is a 401 and the rest of the run checks
    // nothing. Revocation is checked against the real binary in operators.rs
    // (revoked_or_expired_api_token_is_refused).
    "would revoke the API token the run authenticates with",
)];

/// Operations whose body the handler checks beyond what JSON Schema can say, each with
/// why: for these alone a schema-valid body may also be refused with 422 (the body's
/// values are invalid, in the one error shape). Every other check still applies to them,
/// and every operation not listed must accept every request its document allows. No check
/// is left out of the run.
const SEMANTIC_422: &[(&str, &str)] = &[
    (
        "put_policies",
        "the text must be a Cedar policy set that validates",
    ),
    (
        "validate_policies",
        "the text must be a Cedar policy set that validates",
    ),
    (
        "create_manufacturer",
        "each idevid_ca_pems entry must be a PEM CA certificate, each model rule parse",
    ),
    (
        "add_profile",
        "the body must be a TOML model profile naming this model and its manufacturer",
    ),
    (
        "revoke_batch",
        "serial_from must not come after serial_to (a comparison of two fields)",
    ),
];

/// `schemathesis.toml` for the run: the 422 allowances above (with the default accepted
/// statuses beside 422), and the hooks file.
fn config(hooks: &std::path::Path) -> String {
    let mut toml = format!("hooks = {:?}\n", hooks.display().to_string());
    for (operation, why) in SEMANTIC_422 {
        toml.push_str(&format!(
            "\n# {why}\n[[operations]]\ninclude-operation-id = {operation:?}\n\
             checks.positive_data_acceptance.expected-statuses = \
             [\"2xx\", \"3xx\", \"401\", \"403\", \"404\", \"409\", \"422\", \"429\", \"5xx\"]\n"
        ));
    }
    toml
}

/// Schemathesis has no serializer for `application/toml` (a profile upload): the body is
/// text, sent as it is.
const HOOKS: &str = "import schemathesis\n\
                     schemathesis.serializer.alias(\"application/toml\", \"text/plain\")\n";

#[tokio::test(flavor = "multi_thread")]
async fn every_api_route_keeps_to_its_openapi_document() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let gh = Gatehouse::start(Options::default()).await?;
    let url = format!("https://{}/api/openapi.json", gh.listeners.https);
    let work = gh.data_dir().join("schemathesis");
    std::fs::create_dir_all(&work)?;
    let hooks = work.join("hooks.py");
    std::fs::write(&hooks, HOOKS)?;
    let config_file = work.join("schemathesis.toml");
    std::fs::write(&config_file, config(&hooks))?;

    let mut args: Vec<String> = vec![
        "--config-file".into(),
        config_file.display().to_string(),
        "run".into(),
        url,
        "--header".into(),
        format!("Authorization: Bearer {}", gh.token),
        "--tls-verify".into(),
        gh.listeners.ca.display().to_string(),
        "--checks".into(),
        CHECKS.join(","),
        "--max-examples".into(),
        MAX_EXAMPLES.into(),
        "--phases".into(),
        "examples,coverage,fuzzing,stateful".into(),
        "--workers".into(),
        "2".into(),
        "--generation-database".into(),
        "none".into(),
        "--no-color".into(),
    ];
    for (operation, _why) in EXCLUDED {
        args.push("--exclude-operation-id".into());
        args.push((*operation).into());
    }
    eprintln!("schemathesis {}", redact(&args.join(" "), &gh.token));

    let started = std::time::Instant::now();
    let child = Command::new("schemathesis")
        .args(&args)
        .current_dir(&work)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting schemathesis")?;
    let out = tokio::time::timeout(RUN_DEADLINE, child.wait_with_output())
        .await
        .with_context(|| format!("schemathesis did not finish within {RUN_DEADLINE:?}"))??;
    let report = redact(
        &format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        &gh.token,
    );
    eprintln!(
        "{report}\nschemathesis ran for {:.0?} and exited with {}",
        started.elapsed(),
        out.status
    );
    ensure!(
        out.status.success(),
        "schemathesis found the API and its document disagree (exit {}); its report is above",
        out.status
    );
    Ok(())
}

/// `text` with the admin token blanked out.
fn redact(text: &str, token: &str) -> String {
    if token.is_empty() {
        text.to_owned()
    } else {
        text.replace(token, "[admin token]")
    }
}
