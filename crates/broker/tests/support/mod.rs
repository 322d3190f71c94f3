//! Shared helpers for the broker's in-process integration tests: a broker on
//! `127.0.0.1:0` with mutual TLS from a throwaway local CA, an authenticator built on the
//! PKI's certificate parsing, and waits on tap observations.

#![allow(dead_code)]

// The rumqttc client helpers are shared with the binary's integration tests.
#[path = "../../../gatehouse/tests/support/clients.rs"]
pub mod clients;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use arc_swap::ArcSwap;
use gatehouse_broker::{AuthError, Authenticator, Broker, BrokerConfig, Gate};
use gatehouse_pki::{ClientAuth, IssuedCert, LocalCa, ServerTlsBuilder};
use gatehouse_types::{DeviceId, DeviceRef, Identity, Observation, TenantId, TlsFacts};
use rustls::ClientConfig;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// Identifies TLS clients by their certificate, as the binary does; refuses passwords.
#[derive(Debug)]
pub struct CertAuth;

impl Authenticator for CertAuth {
    fn identify_tls(
        &self,
        conn: &rustls::ServerConnection,
    ) -> Result<(Identity, TlsFacts), AuthError> {
        let cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or(AuthError(Cow::Borrowed("no_client_certificate")))?;
        let identity = gatehouse_pki::identity_from_cert(cert.as_ref())
            .map_err(|_| AuthError(Cow::Borrowed("no_usable_identity_in_certificate")))?;
        Ok((identity, gatehouse_pki::tls_facts(conn)))
    }

    fn password_check(
        &self,
        _username: Option<&str>,
        _password: Option<&[u8]>,
    ) -> Result<gatehouse_broker::PasswordCheck, AuthError> {
        Err(AuthError(Cow::Borrowed("passwords_not_accepted")))
    }
}

/// A running in-process broker serving mutual TLS on an ephemeral port.
pub struct TestBroker {
    pub broker: Broker,
    pub addr: SocketAddr,
    ca: LocalCa,
    _dir: TempDir,
}

impl TestBroker {
    /// Starts a broker with this configuration and gate.
    pub async fn start(config: BrokerConfig, gate: Arc<dyn Gate>) -> Result<Self> {
        Self::start_with_auth(config, gate, Arc::new(CertAuth)).await
    }

    /// Starts a broker with this configuration, gate and authenticator.
    pub async fn start_with_auth(
        config: BrokerConfig,
        gate: Arc<dyn Gate>,
        auth: Arc<dyn Authenticator>,
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = LocalCa::load_or_create(&dir.path().join("ca"))?;
        let server = ca.issue_server(
            &["localhost".to_owned()],
            &[[127, 0, 0, 1].into()],
            Duration::from_secs(3600),
        )?;
        let tls = ServerTlsBuilder::from_issued(&server)?
            .client_roots(&[ca.cert_der()])
            .client_auth(ClientAuth::Required)
            .build()?;
        let broker = Broker::new(config, gate, auth)?;
        broker.start();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        broker.serve_tls(listener, Arc::new(ArcSwap::new(tls)));
        Ok(Self {
            broker,
            addr,
            ca,
            _dir: dir,
        })
    }

    /// Issues a device certificate (tenant `default`).
    pub fn issue(&self, device: &str) -> Result<IssuedCert> {
        Ok(self.ca.issue_device(
            &TenantId::default(),
            &DeviceId::new(device)?,
            Duration::from_secs(3600),
        )?)
    }

    /// Issues a device certificate in `tenant`.
    pub fn issue_in(&self, tenant: &str, device: &str) -> Result<IssuedCert> {
        Ok(self.ca.issue_device(
            &TenantId::new(tenant)?,
            &DeviceId::new(device)?,
            Duration::from_secs(3600),
        )?)
    }

    /// A client configuration presenting a fresh certificate for `device`.
    pub fn client_tls(&self, device: &str) -> Result<Arc<ClientConfig>> {
        self.tls_for(&self.issue(device)?)
    }

    /// A client configuration presenting `cert`.
    pub fn tls_for(&self, cert: &IssuedCert) -> Result<Arc<ClientConfig>> {
        Ok(gatehouse_pki::client_config(
            &[self.ca.cert_der()],
            Some(cert),
        )?)
    }

    /// A client configuration that presents no certificate.
    pub fn anonymous_tls(&self) -> Result<Arc<ClientConfig>> {
        Ok(gatehouse_pki::client_config(&[self.ca.cert_der()], None)?)
    }
}

/// Waits for an observation that `pick` accepts, skipping the others.
pub async fn observe<T>(
    rx: &mut mpsc::Receiver<Observation>,
    what: &str,
    mut pick: impl FnMut(&Observation) -> Option<T>,
) -> Result<T> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(o)) => {
                if let Some(t) = pick(&o) {
                    return Ok(t);
                }
                seen.push(o);
            }
            Ok(None) => bail!("the tap closed while waiting for {what}"),
            Err(_) => bail!("no {what} observation; saw {seen:#?}"),
        }
    }
}

/// A device id, for the broker API.
/// A device of the `default` tenant, as the broker's device-level calls name it.
pub fn device(id: &str) -> Result<DeviceRef> {
    device_in("default", id)
}

/// A device of `tenant`.
pub fn device_in(tenant: &str, id: &str) -> Result<DeviceRef> {
    Ok(DeviceRef::new(
        TenantId::new(tenant).context("tenant id")?,
        DeviceId::new(id).context("device id")?,
    ))
}
