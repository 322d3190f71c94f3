//! The runtime is the loop, not a web server: nothing it links may serve HTTP, so that the
//! CLI, a change-feed follower or a test can drive it without pulling in the HTTP surface.

use std::process::Command;

/// Packages (and package features) that would make the runtime an HTTP server.
const SERVER_PARTS: &[&str] = &[
    "axum ",
    "axum-core ",
    "tower-http ",
    "utoipa ",
    "maud ",
    "hyper feature \"server\"",
    "hyper-util feature \"server\"",
];

#[test]
fn runtime_links_no_http_server() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "gatehouse-runtime",
            "-e",
            "normal,features",
            "--prefix",
            "none",
            "--frozen",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        tree.lines().any(|l| l.starts_with("gatehouse-broker ")),
        "cargo tree printed no dependency graph:\n{tree}"
    );
    let found: Vec<&str> = tree
        .lines()
        .filter(|l| SERVER_PARTS.iter().any(|p| l.starts_with(p)))
        .collect();
    assert!(
        found.is_empty(),
        "the runtime links HTTP server parts: {found:?}"
    );
}
