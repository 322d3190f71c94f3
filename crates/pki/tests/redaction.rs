//! Private keys never show up in errors, `Debug` output or logs (threat 15: theft of secrets
//! through logs).
//!
//! One test in this binary on purpose: it installs a scoped tracing subscriber, and tracing
//! caches per-callsite interest globally, so a parallel test hitting the same callsites
//! without a subscriber could make it miss log lines.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_pki::{ClientAuth, LocalCa, ServerTlsBuilder, load_key_pem, server_config};
use gatehouse_types::{DeviceId, TenantId};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Distinctive fragments of a PEM private key: its base64 body lines.
fn key_fragments(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_owned)
        .collect()
}

fn assert_no_key(what: &str, text: &str, fragments: &[String]) {
    assert!(!fragments.is_empty());
    for f in fragments {
        assert!(
            !text.contains(f.as_str()),
            "{what} contains key material: {text}"
        );
    }
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn ca_key_never_appears_in_logs_errors_or_debug() -> TestResult {
    let logs = Capture::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();

    let data = tempfile::tempdir()?;
    let dir = data.path().join("ca");
    let mut outputs: Vec<(String, String)> = Vec::new();
    let mut device_key = String::new();
    let mut record = |what: &str, text: String| outputs.push((what.to_owned(), text));

    tracing::subscriber::with_default(subscriber, || -> TestResult {
        let ca = LocalCa::load_or_create(&dir)?;
        record("LocalCa Debug", format!("{ca:?} {ca:#?}"));

        let tenant = TenantId::new("acme")?;
        let device = DeviceId::new("d-1")?;
        // A validity past the CA's expiry makes the CA log a warning.
        let issued = ca.issue_device(&tenant, &device, Duration::from_secs(u32::MAX as u64 * 4))?;
        let debug = format!("{issued:?}");
        assert!(debug.contains("key_pem: <redacted>"), "{debug}");
        record("IssuedCert Debug", format!("{debug} {issued:#?}"));
        device_key = issued.key_pem.expose().to_owned();
        record("SecretPem Debug", format!("{:?}", issued.key_pem));
        let server = ca.issue_server(&["localhost".to_owned()], &[], Duration::from_secs(60))?;
        let builder = ServerTlsBuilder::from_issued(&server)?;
        record("ServerTlsBuilder Debug", format!("{builder:?}"));

        let key_path = dir.join("root.key");
        let key_pem = fs::read_to_string(&key_path)?;

        // Group-readable key.
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o640))?;
        let err = LocalCa::load_or_create(&dir).expect_err("open key");
        record("KeyPermissions", format!("{err} {err:?}"));
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600))?;

        // A damaged key: a body line removed, and a character corrupted.
        let mut lines: Vec<&str> = key_pem.lines().collect();
        lines.remove(2);
        fs::write(&key_path, lines.join("\n"))?;
        let err = LocalCa::load_or_create(&dir).expect_err("truncated key");
        record("InvalidKey (truncated)", format!("{err} {err:?}"));
        let corrupted = key_pem.replacen('A', "!", 1).replacen('M', "*", 1);
        fs::write(&key_path, &corrupted)?;
        let err = LocalCa::load_or_create(&dir).expect_err("corrupted key");
        record("InvalidKey (corrupted)", format!("{err} {err:?}"));
        let err = load_key_pem(&corrupted).expect_err("corrupted key");
        record("PemError", format!("{err} {err:?}"));
        let no_end = key_pem.replace("-----END PRIVATE KEY-----", "");
        let err = load_key_pem(&no_end).expect_err("key without END");
        record("PemError (no END)", format!("{err} {err:?}"));

        // Another CA's key, sealed under another KEK, then with that KEK.
        let other = tempfile::tempdir()?;
        LocalCa::load_or_create(other.path())?;
        fs::copy(other.path().join("root.key"), &key_path)?;
        let err = LocalCa::load_or_create(&dir).expect_err("foreign key");
        record("WrongKek", format!("{err} {err:?}"));
        let kek_path = dir.join("ca.kek");
        let kek = fs::read(&kek_path)?;
        fs::copy(other.path().join("ca.kek"), &kek_path)?;
        let err = LocalCa::load_or_create(&dir).expect_err("foreign key");
        record("KeyMismatch", format!("{err} {err:?}"));
        fs::write(&kek_path, &kek)?;
        fs::set_permissions(&kek_path, fs::Permissions::from_mode(0o600))?;

        // rustls refusing a key that is not the certificate's.
        let err = ServerTlsBuilder::new(vec![server.cert_der()?], issued.key_der()?)
            .client_roots(&[ca.cert_der()])
            .build()
            .expect_err("mismatched server key");
        record("TlsError", format!("{err} {err:?}"));
        let err = server_config(&server, &[], ClientAuth::Required).expect_err("no roots");
        record("TlsError (no roots)", format!("{err} {err:?}"));

        // Put the original key back for the final check below.
        fs::write(&key_path, &key_pem)?;
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600))?;
        Ok(())
    })?;

    let mut fragments = Vec::new();
    for secret in ["root.key", "issuing-1.key", "ca.kek"] {
        let text = fs::read_to_string(dir.join(secret))?;
        if secret == "ca.kek" {
            fragments.push(text.trim().to_owned());
        } else {
            fragments.extend(key_fragments(&text));
        }
    }
    fragments.extend(key_fragments(&device_key));
    for (what, text) in &outputs {
        assert_no_key(what, text, &fragments);
    }
    let logged = String::from_utf8(logs.0.lock().map_err(|_| "poisoned")?.clone())?;
    assert!(
        logged.contains("created local CA"),
        "nothing was logged: {logged}"
    );
    assert!(logged.contains("cut to the CA's expiry"), "{logged}");
    assert_no_key("logs", &logged, &fragments);
    Ok(())
}
