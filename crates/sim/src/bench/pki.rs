//! Certificates for one bench run: one local CA that both brokers trust, Mosquitto's
//! server certificate, and a distinct device certificate for every client connection.
//!
//! Every connection has its own device identity, as a real fleet would: a broker that
//! binds sessions to the certificate's device (Gatehouse does) would otherwise take one
//! connection's session over with the next.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use gatehouse_pki::{IssuedCert, LocalCa};
use gatehouse_types::{DeviceId, TenantId};
use rustls::client::Resumption;
use rustls_pki_types::CertificateDer;

/// Validity of every certificate the bench issues.
const VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Identities issued per blocking task.
const ISSUE_CHUNK: usize = 500;

/// A client identity: its device id (also its MQTT client id) and a TLS configuration
/// presenting its certificate.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// Device id, used as the MQTT client id.
    pub device: String,
    /// TLS configuration presenting the device's certificate; session resumption is off so
    /// that every connection makes a full handshake.
    pub tls: Arc<rustls::ClientConfig>,
}

/// The run's CA and the identities issued so far.
#[derive(Debug)]
pub struct BenchPki {
    ca: Arc<LocalCa>,
    roots: Vec<CertificateDer<'static>>,
    server: IssuedCert,
    tenant: TenantId,
    identities: Vec<ClientIdentity>,
}

impl BenchPki {
    /// Creates the run's CA in `dir` and issues the server certificate Mosquitto presents
    /// (`server_name`, `localhost`, `127.0.0.1`).
    pub fn create(dir: &Path, server_name: &str) -> anyhow::Result<Self> {
        let ca = LocalCa::load_or_create(dir).context("creating the bench CA")?;
        let mut names = vec![server_name.to_owned()];
        if server_name != "localhost" {
            names.push("localhost".to_owned());
        }
        let ips = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
        let server = ca
            .issue_server(&names, &ips, VALIDITY)
            .context("issuing the broker's server certificate")?;
        Ok(Self {
            roots: vec![ca.cert_der()],
            ca: Arc::new(ca),
            server,
            tenant: TenantId::default(),
            identities: Vec::new(),
        })
    }

    /// The server certificate for brokers whose own certificate the bench provides.
    pub fn server(&self) -> &IssuedCert {
        &self.server
    }

    /// Copies the CA's files into `dest` (created mode 0700), so that a broker loading
    /// its CA from there issues and trusts the same certificates as the bench.
    pub fn copy_ca_to(&self, dest: &Path) -> anyhow::Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dest)
            .with_context(|| format!("creating {}", dest.display()))?;
        for entry in std::fs::read_dir(self.ca.dir())? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                let to = dest.join(entry.file_name());
                // std::fs::copy keeps the mode: the key stays 0600.
                std::fs::copy(entry.path(), &to)
                    .with_context(|| format!("copying {}", entry.path().display()))?;
            }
        }
        Ok(dest.to_owned())
    }

    /// Makes sure at least `n` client identities exist, issuing the missing ones on the
    /// blocking pool, one chunk per task.
    pub async fn ensure_identities(&mut self, n: usize) -> anyhow::Result<()> {
        let have = self.identities.len();
        if have >= n {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        let mut from = have;
        while from < n {
            let to = (from + ISSUE_CHUNK).min(n);
            let ca = self.ca.clone();
            let roots = self.roots.clone();
            let tenant = self.tenant.clone();
            tasks.push(tokio::task::spawn_blocking(move || {
                (from..to)
                    .map(|i| issue(&ca, &roots, &tenant, i))
                    .collect::<anyhow::Result<Vec<_>>>()
            }));
            from = to;
        }
        for task in tasks {
            let chunk = task.await.context("issuing task panicked")??;
            self.identities.extend(chunk);
        }
        tracing::info!(
            issued = n - have,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "client certificates issued"
        );
        Ok(())
    }

    /// Identity number `i`; [`BenchPki::ensure_identities`] must have covered it.
    pub fn identity(&self, i: usize) -> &ClientIdentity {
        &self.identities[i]
    }
}

/// The device id of identity `i`.
pub fn device_name(i: usize) -> String {
    format!("bench-{i:06}")
}

fn issue(
    ca: &LocalCa,
    roots: &[CertificateDer<'static>],
    tenant: &TenantId,
    i: usize,
) -> anyhow::Result<ClientIdentity> {
    let device = device_name(i);
    let id = DeviceId::new(device.clone())?;
    let cert = ca.issue_device(tenant, &id, VALIDITY)?;
    let shared = gatehouse_pki::client_config(roots, Some(&cert))?;
    let mut config = (*shared).clone();
    config.resumption = Resumption::disabled();
    Ok(ClientIdentity {
        device,
        tls: Arc::new(config),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn issues_distinct_identities_from_one_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut pki = BenchPki::create(&dir.path().join("ca"), "localhost").expect("pki");
        pki.ensure_identities(3).await.expect("issue");
        pki.ensure_identities(2).await.expect("no-op");
        assert_eq!(pki.identities.len(), 3);
        assert_eq!(pki.identity(2).device, "bench-000002");
        let copy = pki.copy_ca_to(&dir.path().join("copy/ca")).expect("copy");
        let loaded = LocalCa::load_or_create(&copy).expect("copied CA loads");
        assert_eq!(loaded.cert_pem(), pki.ca.cert_pem());
    }
}
