//! Where the simulated fleet's server is, and the REST calls the simulator makes to it:
//! registering the simulated manufacturer, models and claims, and reading back what the
//! server made of the fleet (incidents, actions, trust). The REST API requires an
//! operator's API token (`Authorization: Bearer gha_…`), which the [`Target`] carries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rustls::client::Resumption;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

use crate::est::{HttpsConnection, HttpsResponse, HttpsTarget, bearer_auth};

/// How long one REST exchange may take.
const REST_TIMEOUT: Duration = Duration::from_secs(30);

/// The server under simulation.
#[derive(Debug, Clone)]
pub struct Target {
    /// The HTTPS listener (EST and REST).
    pub https: SocketAddr,
    /// The MQTTS listener.
    pub mqtts: SocketAddr,
    /// The plain MQTT listener for legacy devices, if it has one.
    pub legacy: Option<SocketAddr>,
    /// The name the server's certificates carry.
    pub server_name: ServerName<'static>,
    /// The CA certificates that anchor the server's certificates.
    pub anchors: Vec<CertificateDer<'static>>,
    /// The operator's API token (`gha_<id>_<secret>`, from `gatehouse admin token`) the
    /// REST calls authenticate with; without one the server answers them 401.
    pub api_token: Option<String>,
}

impl Target {
    /// The base URL devices enroll against.
    pub fn https_url(&self) -> String {
        let host = match &self.server_name {
            ServerName::DnsName(d) => d.as_ref().to_owned(),
            ServerName::IpAddress(ip) => match std::net::IpAddr::from(*ip) {
                std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                v4 => v4.to_string(),
            },
            _ => self.https.ip().to_string(),
        };
        format!("https://{host}:{}", self.https.port())
    }

    fn roots(&self) -> anyhow::Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        for a in &self.anchors {
            roots
                .add(a.clone())
                .context("a CA certificate is not usable")?;
        }
        Ok(roots)
    }

    /// A TLS client configuration trusting the server's CA, presenting `identity` (a chain
    /// and its key) if given.
    pub fn client_tls(
        &self,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
        alpn_http: bool,
    ) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(rustls::ALL_VERSIONS)?
        .with_root_certificates(self.roots()?);
        let mut config = match identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
            None => builder.with_no_client_auth(),
        };
        config.resumption = Resumption::disabled();
        if alpn_http {
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        Ok(Arc::new(config))
    }
}

/// Checks, before a run, that the server answers where `target` says it is: its HTTPS
/// listener (TCP, TLS against the target's anchors, and a REST call with the API token),
/// its MQTTS listener and its legacy listener if one is given (TCP), each within
/// `timeout`. Fails naming the address tried, what it was given as, and the cause.
pub async fn preflight(target: &Target, timeout: Duration) -> anyhow::Result<()> {
    let api = Api::with_timeout(target, timeout)?;
    api.get("/api/v1/tenants").await.with_context(|| {
        format!(
            "the server's HTTPS listener at {} (--server {}) did not answer the simulator",
            target.https,
            target.https_url()
        )
    })?;
    let mut listeners = vec![("MQTTS", "--mqtt", target.mqtts)];
    if let Some(legacy) = target.legacy {
        listeners.push(("plain MQTT", "--legacy", legacy));
    }
    for (what, option, addr) in listeners {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                bail!("the server's {what} listener at {addr} ({option}) is not reachable: {e}")
            }
            Err(_) => bail!(
                "the server's {what} listener at {addr} ({option}) did not answer within {} s",
                timeout.as_secs()
            ),
        }
    }
    Ok(())
}

/// The server's REST API, without a client certificate, authenticated with the target's
/// API token.
#[derive(Debug, Clone)]
pub struct Api {
    target: HttpsTarget,
}

impl Api {
    /// The REST API of `target`, with its API token if it has one.
    pub fn new(target: &Target) -> anyhow::Result<Self> {
        Self::with_timeout(target, REST_TIMEOUT)
    }

    /// The REST API of `target`, each exchange (connection, then request) within
    /// `timeout`.
    pub fn with_timeout(target: &Target, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            target: HttpsTarget {
                addr: target.https,
                bind: None,
                server_name: target.server_name.clone(),
                tls: target.client_tls(None, true)?,
                timeout,
                authorization: target.api_token.as_deref().map(bearer_auth),
            },
        })
    }

    /// Fails with what to do about it when the server refused the call's credentials
    /// (401) or their scope (403).
    fn check_auth(&self, call: &str, r: &HttpsResponse) -> anyhow::Result<()> {
        let answer = String::from_utf8_lossy(&r.body);
        let answer = answer.trim();
        match (r.status, self.target.authorization.is_some()) {
            (401, false) => bail!(
                "{call}: 401 {answer}\nThe server's REST API requires an operator's API \
                 token: pass --token (or set GATEHOUSE_TOKEN); create one on the server's \
                 host with `gatehouse admin token NAME` (and the operator first with \
                 `gatehouse admin create NAME --role admin`)"
            ),
            (401, true) => bail!(
                "{call}: 401 {answer}\nThe server refused the API token (unknown, expired or \
                 revoked, or its operator is disabled): create a new one with \
                 `gatehouse admin token NAME` and pass it with --token"
            ),
            (403, true) => bail!(
                "{call}: 403 {answer}\nThe API token lacks a permission the simulator needs: \
                 it registers tenants, manufacturers and models, so it needs an admin's \
                 token with every permission (`gatehouse admin token NAME` for an operator \
                 of role admin, without --scope)"
            ),
            _ => Ok(()),
        }
    }

    /// GET `path`, JSON; fails unless 200.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let mut conn = HttpsConnection::connect(&self.target)
            .await
            .with_context(|| format!("GET {path}"))?;
        let r = conn
            .get(path)
            .await
            .with_context(|| format!("GET {path}"))?;
        self.check_auth(&format!("GET {path}"), &r)?;
        if r.status != 200 {
            bail!(
                "GET {path}: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body).trim()
            );
        }
        serde_json::from_slice(&r.body).with_context(|| format!("GET {path}: not JSON"))
    }

    /// POST `body` to `path`; fails unless the status is one of `ok`. Returns the status
    /// and the JSON answer (`null` when the answer is empty or not JSON).
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        ok: &[u16],
    ) -> anyhow::Result<(u16, Value)> {
        let mut conn = HttpsConnection::connect(&self.target)
            .await
            .with_context(|| format!("POST {path}"))?;
        let r = conn
            .post(path, content_type, None, body)
            .await
            .with_context(|| format!("POST {path}"))?;
        self.check_auth(&format!("POST {path}"), &r)?;
        if !ok.contains(&r.status) {
            bail!(
                "POST {path}: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body).trim()
            );
        }
        Ok((
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        ))
    }

    /// POST JSON.
    pub async fn post_json(&self, path: &str, body: &Value, ok: &[u16]) -> anyhow::Result<Value> {
        Ok(self
            .post(path, "application/json", serde_json::to_vec(body)?, ok)
            .await?
            .1)
    }
}
