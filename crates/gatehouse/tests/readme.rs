//! The README runs: its shell blocks, in order, as a new user would type them on a fresh
//! machine, in a scratch directory, against the binary under test.
//!
//! - ```` ```sh ```` blocks run in one `bash` (`set -euo pipefail`), so that what one block
//!   starts (a server in the background, a variable) is there for the next; a failing
//!   command fails the test, naming the block.
//! - ```` ```toml ```` blocks whose first line is `# FILE` are written to that file, in the
//!   scratch directory, before the next shell block runs, as the README asks the reader.
//! - `gatehouse …` and `cargo run --release -p gatehouse -- …` run the binary under test:
//!   two small scripts of those names come first on the `PATH`. The `cargo` one runs
//!   nothing else, so a block that needs more of cargo fails instead of building.
//! - The server listens on free ports of 127.0.0.1 instead of 8883 and 8443: the test sets
//!   `GATEHOUSE_MQTTS` and `GATEHOUSE_HTTPS` (which `gatehouse serve` honours), and, for
//!   the clients, rewrites `8883` and `8443` in the blocks' text to those ports.
//! - After a line that starts the server in the background (`… serve &`) the test waits
//!   for the server's `listeners.json` (written once it listens, removed when it stops),
//!   with a deadline, before the next line: a reader waits until it is up.
//! - The blocks in [`NOT_RUN`] are not run, each for the reason given there; any other
//!   block that cannot run fails the test.
//! - Everything the script started is killed (its process group) at the end.
//!
//! `README_TEST_KEEP=1` keeps the scratch directory (the script is `readme.sh` there, the
//! blocks ran in `work/`) and prints where it is.
//!
//! When `mosquitto_pub`/`mosquitto_sub`, `openssl` or `curl` is missing, the test is
//! skipped (a failure with `CI` set): later blocks build on what earlier ones made.

mod support;

use std::fmt::Write as _;
use std::io::Read as _;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Blocks the test does not run: (text the block contains, why).
const NOT_RUN: &[(&str, &str)] = &[
    (
        "gatehouse -- demo --once",
        "the demo starts its own server and fleet; `tests/demo.rs` runs it",
    ),
    (
        "cargo test --workspace",
        "the tests themselves: running them from a test would recurse",
    ),
];

/// Tools the blocks use that may be missing on a developer's machine.
const TOOLS: &[(&str, &[&str])] = &[
    ("mosquitto_pub", &["--help"]),
    ("mosquitto_sub", &["--help"]),
    ("openssl", &["version"]),
    ("curl", &["--version"]),
];

/// The longest the whole README may take before the test gives up on it.
const DEADLINE: Duration = Duration::from_secs(300);

/// How long the script waits for a server started in the background to listen.
const READY_WAIT_SECS: u32 = 60;

#[derive(Debug)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    lang: String,
    text: String,
}

fn blocks(readme: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in readme.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(lang)) => {
                open = Some(Block {
                    line: i + 1,
                    lang: lang.trim().to_owned(),
                    text: String::new(),
                });
            }
            (Some(_), Some(_)) => out.extend(open.take()),
            (Some(b), None) => {
                b.text.push_str(line);
                b.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "README.md ends inside a code block");
    out
}

fn free_port() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    let port = l.local_addr().expect("local address").port();
    (l, port)
}

fn write_executable(path: &Path, text: &str) {
    std::fs::write(path, text).expect("writing a script");
    let mut perm = std::fs::metadata(path).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(path, perm).expect("chmod");
}

/// Kills the script's process group when dropped, however the test ends.
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn readme_blocks_run_in_order() {
    let started = Instant::now();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("reading README.md");
    let blocks = blocks(&readme);

    for (needle, _) in NOT_RUN {
        let n = blocks.iter().filter(|b| b.text.contains(needle)).count();
        assert_eq!(
            n, 1,
            "NOT_RUN names `{needle}`, which {n} README blocks contain"
        );
    }
    for &(tool, args) in TOOLS {
        if blocks
            .iter()
            .any(|b| b.lang == "sh" && b.text.contains(tool))
            && !support::have_program(tool, args)
        {
            return;
        }
    }

    let mut scratch = tempfile::tempdir().expect("scratch directory");
    if std::env::var_os("README_TEST_KEEP").is_some() {
        // To look at what the blocks left behind: the directory stays, and is named.
        scratch.disable_cleanup(true);
        eprintln!(
            "README test: scratch directory {}",
            scratch.path().display()
        );
    }
    let work = scratch.path().join("work");
    let bin_dir = scratch.path().join("bin");
    std::fs::create_dir_all(&work).expect("work directory");
    std::fs::create_dir_all(&bin_dir).expect("bin directory");
    write_executable(
        &bin_dir.join("gatehouse"),
        "#!/bin/sh\nexec \"$README_GATEHOUSE_BIN\" \"$@\"\n",
    );
    write_executable(
        &bin_dir.join("cargo"),
        "#!/bin/sh\n\
         if [ \"$1 $2 $3 $4 $5\" = 'run --release -p gatehouse --' ]; then\n\
         \tshift 5\n\
         \texec \"$README_GATEHOUSE_BIN\" \"$@\"\n\
         fi\n\
         echo \"README test: only 'cargo run --release -p gatehouse -- ARGS' runs here, not 'cargo $*'\" >&2\n\
         exit 2\n",
    );

    // Bound together so that the two differ; released just before the script starts.
    let (mqtts, mqtts_port) = free_port();
    let (https, https_port) = free_port();

    let mut script = String::from("set -euo pipefail\n");
    let _ = writeln!(
        script,
        "__readme_wait_ready() {{\n\
         \tlocal i=0\n\
         \twhile [ ! -s gatehouse-data/listeners.json ]; do\n\
         \t\tif ! kill -0 \"$1\" 2>/dev/null; then echo 'README test: the server exited' >&2; return 1; fi\n\
         \t\ti=$((i + 1))\n\
         \t\tif [ \"$i\" -gt {} ]; then echo 'README test: the server is not up after {READY_WAIT_SECS} s' >&2; return 1; fi\n\
         \t\tsleep 0.1\n\
         \tdone\n\
         }}",
        READY_WAIT_SECS * 10
    );
    let mut ran = Vec::new();
    for b in &blocks {
        match b.lang.as_str() {
            "sh" => {
                if let Some((_, why)) = NOT_RUN.iter().find(|(n, _)| b.text.contains(n)) {
                    eprintln!("README line {}: not run: {why}", b.line);
                    continue;
                }
                let _ = writeln!(script, "echo '### README.md block at line {}' >&2", b.line);
                for line in b.text.lines() {
                    let line = line
                        .replace("8883", &mqtts_port.to_string())
                        .replace("8443", &https_port.to_string());
                    script.push_str(&line);
                    script.push('\n');
                    let command = line.split(" #").next().unwrap_or_default().trim_end();
                    if command.ends_with("serve &") {
                        script.push_str("__readme_wait_ready $!\n");
                    }
                }
                ran.push(b.line);
            }
            "toml" => {
                let file = b
                    .text
                    .lines()
                    .next()
                    .and_then(|l| l.strip_prefix("# "))
                    .map(str::trim)
                    .filter(|f| !f.is_empty() && !f.contains(' '))
                    .unwrap_or_else(|| {
                        panic!(
                            "README line {}: a toml block must start with `# FILE`, the file the reader saves it as",
                            b.line
                        )
                    });
                let _ = writeln!(
                    script,
                    "echo '### README.md block at line {}: {file}' >&2\ncat > {file} <<'README_TOML_EOF'\n{}README_TOML_EOF",
                    b.line, b.text
                );
                ran.push(b.line);
            }
            "" | "text" => {}
            other => panic!(
                "README line {}: a ```{other} block; this test knows how to run sh and toml blocks only",
                b.line
            ),
        }
    }
    script.push_str("echo '### README.md: every block ran' >&2\n");
    std::fs::write(scratch.path().join("readme.sh"), &script).expect("writing the script");

    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("bash");
    command
        .arg(scratch.path().join("readme.sh"))
        .current_dir(&work)
        .env("PATH", path)
        .env("README_GATEHOUSE_BIN", support::binary())
        .env("GATEHOUSE_MQTTS", format!("127.0.0.1:{mqtts_port}"))
        .env("GATEHOUSE_HTTPS", format!("127.0.0.1:{https_port}"))
        .env("HOME", scratch.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("GATEHOUSE_") {
            command.env_remove(k);
        }
    }
    drop((mqtts, https));
    let mut child = command.spawn().expect("starting bash");
    let group = Group(child.id());

    // Read both pipes on their own threads so that neither fills up.
    let mut out_pipe = child.stdout.take().expect("stdout");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for bash") {
            break Some(status);
        }
        if started.elapsed() > DEADLINE {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The script is done (or out of time): end whatever it left running, so that the
    // pipes close.
    drop(group);
    let _ = child.wait();
    let out = out.join().expect("stdout reader");
    let err = err.join().expect("stderr reader");
    let last_block = err
        .lines()
        .rev()
        .find(|l| l.starts_with("### README.md"))
        .unwrap_or("### before the first block")
        .to_owned();
    let report = format!(
        "{last_block}\n--- standard output ---\n{out}\n--- standard error ---\n{err}\n--- the script ---\n{script}"
    );
    match status {
        None => panic!(
            "the README did not finish within {DEADLINE:?}; the last block started:\n{report}"
        ),
        Some(s) if !s.success() => panic!("a README block failed ({s}):\n{report}"),
        Some(_) => {}
    }
    assert!(
        last_block.ends_with("every block ran"),
        "the script ended early:\n{report}"
    );
    eprintln!(
        "README blocks at lines {ran:?} ran in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
