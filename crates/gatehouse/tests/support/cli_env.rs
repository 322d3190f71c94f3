//! The command line run as the real binary against a registry in a temporary data
//! directory, with no server: a configuration that points at the directory, and runners
//! that expect success (text or JSON) or a refusal.

use std::path::PathBuf;
use std::process::Output;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use tempfile::TempDir;

/// A data directory and a configuration that points at it.
pub struct Env {
    pub dir: TempDir,
    pub config: PathBuf,
}

impl Env {
    /// A data directory made with `gatehouse init`.
    pub fn new() -> Result<Self> {
        let env = Self::uninitialised()?;
        env.ok(&["init"])?;
        Ok(env)
    }

    /// A configuration whose data directory does not exist yet.
    pub fn uninitialised() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("gatehouse.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\n",
                dir.path().join("data").display().to_string()
            ),
        )?;
        Ok(Self { dir, config })
    }

    /// The data directory the configuration names.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let p = self.path(name);
        std::fs::write(&p, text)?;
        Ok(p)
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("data").join("gatehouse.db")
    }

    pub fn run(&self, args: &[&str]) -> Result<Output> {
        std::process::Command::new(super::binary())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("USER", "tester")
            .env_remove("GATEHOUSE_CONFIG")
            .env_remove("GATEHOUSE_DATA_DIR")
            .env_remove("GATEHOUSE_SERVER")
            .output()
            .context("running gatehouse")
    }

    /// Runs a command that must succeed; returns its standard output.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "gatehouse {args:?} failed: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout)
    }

    /// Runs a command that must succeed; returns its standard output and its standard
    /// error (the commentary: headers, notes, "nothing to list").
    pub fn ok_split(&self, args: &[&str]) -> Result<(String, String)> {
        let out = self.run(args)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(
            out.status.success(),
            "gatehouse {args:?} failed: {stderr}{stdout}"
        );
        Ok((stdout, stderr))
    }

    /// Runs a command with `--json` that must succeed; returns the parsed output.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.push("--json");
        let text = self.ok(&a)?;
        serde_json::from_str(&text).with_context(|| format!("parsing {text}"))
    }

    /// Runs a command that must fail; returns its standard error.
    pub fn refused(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_owned();
        ensure!(
            !out.status.success(),
            "gatehouse {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        ensure!(
            stderr.starts_with("error: "),
            "gatehouse {args:?}: not an error: {stderr:?}"
        );
        Ok(stderr)
    }

    /// Runs a command that must fail with a one-line error; returns that line.
    pub fn fails(&self, args: &[&str]) -> Result<String> {
        let stderr = self.refused(args)?;
        ensure!(
            stderr.lines().count() == 1,
            "gatehouse {args:?}: not a one-line error: {stderr:?}"
        );
        Ok(stderr)
    }
}

pub fn audit_records(env: &Env) -> Result<Vec<Value>> {
    let v = env.json(&["audit", "tail", "--limit", "1000"])?;
    v.as_array()
        .cloned()
        .context("audit tail --json printed no array")
}
