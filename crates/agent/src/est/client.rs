//! [`EstClient`]: the EST operations over HTTP/1.1 and rustls.
//!
//! Each request opens its own TLS connection: EST is a few requests in a certificate's
//! lifetime, and a fresh connection is what lets each one present its own client
//! certificate (none, an IDevID, the current LDevID). The client itself is an `Arc`, so the
//! fleet simulator clones one per device for nothing.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use super::error::{EstError, server_message};
use super::pkcs7::{decode_base64_body, encode_base64_body, parse_est_certs};
use crate::tls::{TLS_VERSIONS, provider};

/// Where the EST operations live below the server URL (RFC 7030 §3.2.2).
const EST_PATH: &str = "/.well-known/est/";
/// Media type of `cacerts`, `simpleenroll` and `simplereenroll` responses.
const PKCS7_MIME: &str = "application/pkcs7-mime";
/// Media type of `csrattrs` responses.
const CSRATTRS_MIME: &str = "application/csrattrs";
/// Media type of enrollment requests.
const PKCS10_MIME: &str = "application/pkcs10";

/// Limits on one EST exchange. The defaults suit a device on a slow link talking to a
/// server that answers with a few certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EstLimits {
    /// Time allowed to open the TCP connection.
    pub connect_timeout: Duration,
    /// Time allowed for the whole request: connection, TLS handshake, request, response.
    pub request_timeout: Duration,
    /// Largest response body accepted, in bytes.
    pub max_response_bytes: usize,
}

impl Default for EstLimits {
    /// 10 s to connect, 30 s in all, 256 KiB of response.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_response_bytes: 256 * 1024,
        }
    }
}

impl EstLimits {
    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Sets the overall request timeout.
    pub fn with_request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// Sets the largest response accepted.
    pub fn with_max_response_bytes(mut self, n: usize) -> Self {
        self.max_response_bytes = n;
        self
    }
}

/// An EST client (RFC 7030) for one server, trusting a fixed set of anchors for the
/// server's certificate. Cheap to clone; safe to share between tasks.
#[derive(Clone)]
pub struct EstClient {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    authority: String,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    /// The URL's path with [`EST_PATH`] appended, ending in `/`.
    est_base: String,
    trust: Vec<CertificateDer<'static>>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    /// The configuration of requests without a client certificate.
    anonymous: Arc<ClientConfig>,
    limits: EstLimits,
}

/// How a request authenticates.
enum Auth<'a> {
    None,
    Basic { user: &'a str, password: &'a str },
    Certificate(Arc<ClientConfig>),
}

/// A response read in full.
struct Response {
    status: StatusCode,
    content_type: String,
    body: Bytes,
}

// === impl EstClient ===

impl EstClient {
    /// A client for the EST server at `base_url` (`https://host[:port][/prefix]`; the EST
    /// operations are under `<prefix>/.well-known/est/`), trusting `trust` for the server's
    /// certificate: the explicit trust anchor database of RFC 7030 §3.6.1, e.g. the
    /// Gatehouse CA bundle given to the device at bootstrap.
    pub fn new(base_url: &str, trust: Vec<CertificateDer<'static>>) -> Result<Self, EstError> {
        Self::with_limits(base_url, trust, EstLimits::default())
    }

    /// [`new`](Self::new) with other limits.
    pub fn with_limits(
        base_url: &str,
        trust: Vec<CertificateDer<'static>>,
        limits: EstLimits,
    ) -> Result<Self, EstError> {
        let bad = |reason| EstError::InvalidUrl {
            url: base_url.to_owned(),
            reason,
        };
        let uri: Uri = base_url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("the scheme must be https"));
        }
        if uri.query().is_some() {
            return Err(bad("a query is not allowed"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user information is not allowed"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = authority.port_u16().unwrap_or(443);
        let server_name =
            ServerName::try_from(host.clone()).map_err(|_| bad("the host is not a valid name"))?;
        let prefix = uri.path().trim_end_matches('/');
        let est_base = format!("{prefix}{EST_PATH}");

        if trust.is_empty() {
            return Err(EstError::NoTrustAnchors);
        }
        let mut roots = RootCertStore::empty();
        for anchor in &trust {
            roots
                .add(anchor.clone())
                .map_err(EstError::BadTrustAnchor)?;
        }
        let roots = Arc::new(roots);
        let provider = provider();
        let anonymous = base_config(&provider, &roots)
            .map_err(EstError::BadTrustAnchor)?
            .with_no_client_auth();
        Ok(Self {
            inner: Arc::new(Inner {
                url: base_url.to_owned(),
                authority: format!("{}:{port}", authority.host()),
                host,
                port,
                server_name,
                est_base,
                trust,
                roots,
                provider,
                anonymous: Arc::new(with_alpn(anonymous)),
                limits,
            }),
        })
    }

    /// The same server with other trust anchors, e.g. after `cacerts` refreshed them.
    pub fn with_trust(&self, trust: Vec<CertificateDer<'static>>) -> Result<Self, EstError> {
        Self::with_limits(&self.inner.url, trust, self.inner.limits)
    }

    /// The server URL this client was made with.
    pub fn base_url(&self) -> &str {
        &self.inner.url
    }

    /// The server's host (name or IP address).
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// The trust anchors for the server's certificate.
    pub fn trust(&self) -> &[CertificateDer<'static>] {
        &self.inner.trust
    }

    /// The limits applied to each request.
    pub fn limits(&self) -> EstLimits {
        self.inner.limits
    }

    /// `GET cacerts`: the CA certificates (issuing CAs and root), in the server's order.
    pub async fn cacerts(&self) -> Result<Vec<CertificateDer<'static>>, EstError> {
        let resp = self
            .request(Method::GET, "cacerts", None, Auth::None)
            .await?;
        let certs = certs_response(resp)?;
        if certs.is_empty() {
            return Err(EstError::NoCertificate);
        }
        Ok(certs)
    }

    /// `GET csrattrs`: the DER CSR attributes the server would like (a SEQUENCE), or an
    /// empty vector if it has none (204 or 404, RFC 7030 §4.5.2).
    pub async fn csrattrs(&self) -> Result<Vec<u8>, EstError> {
        let resp = self
            .request(Method::GET, "csrattrs", None, Auth::None)
            .await?;
        match resp.status {
            StatusCode::NO_CONTENT | StatusCode::NOT_FOUND => Ok(Vec::new()),
            StatusCode::OK => {
                check_content_type(&resp.content_type, CSRATTRS_MIME)?;
                Ok(decode_base64_body(&resp.body)?)
            }
            _ => Err(refused(&resp)),
        }
    }

    /// `POST simpleenroll` authenticated by an enrollment token (HTTP Basic: the token id
    /// and its secret). `csr_der` is a DER PKCS#10 request naming the device. Returns the
    /// certificates of the response, the issued certificate first.
    pub async fn simpleenroll_token(
        &self,
        csr_der: &[u8],
        token_id: &str,
        secret: &str,
    ) -> Result<Vec<CertificateDer<'static>>, EstError> {
        if token_id.contains(':') {
            return Err(EstError::InvalidRequest(
                "an enrollment token id cannot contain ':'",
            ));
        }
        let auth = Auth::Basic {
            user: token_id,
            password: secret,
        };
        self.enroll("simpleenroll", csr_der, auth).await
    }

    /// `POST simpleenroll` authenticated by a TLS client certificate: the device's IDevID
    /// (`client_chain` is the certificate then any intermediates, `key` its private key).
    pub async fn simpleenroll_cert(
        &self,
        csr_der: &[u8],
        client_chain: &[CertificateDer<'static>],
        key: &PrivateKeyDer<'_>,
    ) -> Result<Vec<CertificateDer<'static>>, EstError> {
        let auth = Auth::Certificate(self.client_auth_config(client_chain, key)?);
        self.enroll("simpleenroll", csr_der, auth).await
    }

    /// `POST simplereenroll` authenticated by the device's current certificate (LDevID).
    pub async fn simplereenroll(
        &self,
        csr_der: &[u8],
        client_chain: &[CertificateDer<'static>],
        key: &PrivateKeyDer<'_>,
    ) -> Result<Vec<CertificateDer<'static>>, EstError> {
        let auth = Auth::Certificate(self.client_auth_config(client_chain, key)?);
        self.enroll("simplereenroll", csr_der, auth).await
    }

    async fn enroll(
        &self,
        op: &'static str,
        csr_der: &[u8],
        auth: Auth<'_>,
    ) -> Result<Vec<CertificateDer<'static>>, EstError> {
        let body = Bytes::from(encode_base64_body(csr_der));
        let resp = self.request(Method::POST, op, Some(body), auth).await?;
        let certs = certs_response(resp)?;
        if certs.is_empty() {
            return Err(EstError::NoCertificate);
        }
        Ok(certs)
    }

    fn client_auth_config(
        &self,
        chain: &[CertificateDer<'static>],
        key: &PrivateKeyDer<'_>,
    ) -> Result<Arc<ClientConfig>, EstError> {
        let config = base_config(&self.inner.provider, &self.inner.roots)
            .map_err(EstError::BadTrustAnchor)?
            .with_client_auth_cert(chain.to_vec(), key.clone_key())
            .map_err(EstError::ClientCertificate)?;
        Ok(Arc::new(with_alpn(config)))
    }

    /// One request on a new connection, under the request timeout.
    async fn request(
        &self,
        method: Method,
        op: &'static str,
        body: Option<Bytes>,
        auth: Auth<'_>,
    ) -> Result<Response, EstError> {
        let timeout = self.inner.limits.request_timeout;
        tokio::time::timeout(timeout, self.exchange(method, op, body, auth))
            .await
            .map_err(|_| EstError::Timeout(timeout))?
    }

    async fn exchange(
        &self,
        method: Method,
        op: &'static str,
        body: Option<Bytes>,
        auth: Auth<'_>,
    ) -> Result<Response, EstError> {
        let inner = &self.inner;
        let (tls, basic) = match auth {
            Auth::None => (inner.anonymous.clone(), None),
            Auth::Basic { user, password } => (inner.anonymous.clone(), Some((user, password))),
            Auth::Certificate(config) => (config, None),
        };

        let connect = TcpStream::connect((inner.host.as_str(), inner.port));
        let tcp = tokio::time::timeout(inner.limits.connect_timeout, connect)
            .await
            .map_err(|_| EstError::Timeout(inner.limits.connect_timeout))?
            .map_err(|source| EstError::Connect {
                authority: inner.authority.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let stream = TlsConnector::from(tls)
            .connect(inner.server_name.clone(), tcp)
            .await
            .map_err(|source| EstError::Tls {
                authority: inner.authority.clone(),
                source,
            })?;

        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(EstError::Http)?;
        // The connection task ends when the sender is dropped, or is aborted with this
        // guard if the exchange is cut short (a timeout).
        let _conn = AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "EST connection ended with an error");
            }
        }));

        let path = format!("{}{op}", inner.est_base);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, inner.authority.as_str())
            .header(
                header::USER_AGENT,
                concat!("gatehouse-agent/", env!("CARGO_PKG_VERSION")),
            );
        if let Some((user, password)) = basic {
            let token = encode_base64_body(format!("{user}:{password}").as_bytes());
            let mut value = HeaderValue::try_from(format!("Basic {token}"))
                .map_err(|_| EstError::InvalidRequest("the credentials cannot be sent"))?;
            value.set_sensitive(true);
            req = req.header(header::AUTHORIZATION, value);
        }
        let body = match body {
            Some(body) => {
                req = req
                    .header(header::CONTENT_TYPE, PKCS10_MIME)
                    .header("content-transfer-encoding", "base64");
                body
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|_| EstError::InvalidRequest("the request cannot be built"))?;

        let resp = sender.send_request(req).await.map_err(EstError::Http)?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let limit = inner.limits.max_response_bytes;
        let declared = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(EstError::ResponseTooLarge { limit });
        }
        let body = Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(e) => EstError::Http(*e),
                Err(e) if e.is::<LengthLimitError>() => EstError::ResponseTooLarge { limit },
                Err(_) => EstError::ResponseTooLarge { limit },
            })?
            .to_bytes();
        debug!(
            op,
            status = status.as_u16(),
            bytes = body.len(),
            "EST response"
        );
        Ok(Response {
            status,
            content_type,
            body,
        })
    }
}

impl fmt::Debug for EstClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EstClient")
            .field("url", &self.inner.url)
            .field("trust_anchors", &self.inner.trust.len())
            .field("limits", &self.inner.limits)
            .finish()
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn base_config(
    provider: &Arc<CryptoProvider>,
    roots: &Arc<RootCertStore>,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, rustls::Error> {
    Ok(ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(TLS_VERSIONS)?
        .with_root_certificates(roots.clone()))
}

fn with_alpn(mut config: ClientConfig) -> ClientConfig {
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

fn refused(resp: &Response) -> EstError {
    EstError::Refused {
        status: resp.status.as_u16(),
        message: server_message(&resp.body),
    }
}

fn check_content_type(got: &str, expected: &'static str) -> Result<(), EstError> {
    let media_type = got.split(';').next().unwrap_or_default().trim();
    if media_type.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(EstError::UnexpectedContentType {
            got: server_message(got.as_bytes()),
            expected,
        })
    }
}

/// The certificates of a successful `application/pkcs7-mime` response.
fn certs_response(resp: Response) -> Result<Vec<CertificateDer<'static>>, EstError> {
    if resp.status != StatusCode::OK {
        return Err(refused(&resp));
    }
    check_content_type(&resp.content_type, PKCS7_MIME)?;
    Ok(parse_est_certs(&resp.body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchor() -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn urls_are_checked() {
        let trust = vec![anchor()];
        for (url, ok) in [
            ("https://gatehouse.example:8443", true),
            ("https://127.0.0.1:8443/", true),
            ("https://[::1]:8443/tenant-a", true),
            ("https://gatehouse.example", true),
            ("http://gatehouse.example:8443", false),
            ("https://user:pw@gatehouse.example", false),
            ("https://gatehouse.example/?x=1", false),
            ("gatehouse.example:8443", false),
            ("", false),
        ] {
            assert_eq!(
                EstClient::new(url, trust.clone()).is_ok(),
                ok,
                "{url}: {:?}",
                EstClient::new(url, trust.clone())
            );
        }
    }

    #[test]
    fn paths_and_authority_are_derived_from_the_url() -> Result<(), EstError> {
        let trust = vec![anchor()];
        let c = EstClient::new("https://[::1]:8443/tenant-a/", trust.clone())?;
        assert_eq!(c.inner.est_base, "/tenant-a/.well-known/est/");
        assert_eq!(c.inner.host, "::1");
        assert_eq!(c.inner.authority, "[::1]:8443");
        let c = EstClient::new("https://gatehouse.example", trust)?;
        assert_eq!(c.inner.est_base, "/.well-known/est/");
        assert_eq!(c.inner.port, 443);
        Ok(())
    }

    #[test]
    fn a_client_needs_trust_anchors() {
        assert!(matches!(
            EstClient::new("https://h:1", vec![]),
            Err(EstError::NoTrustAnchors)
        ));
    }

    #[test]
    fn content_types_compare_media_type_only() {
        assert!(
            check_content_type("application/pkcs7-mime; smime-type=certs-only", PKCS7_MIME).is_ok()
        );
        assert!(check_content_type("Application/PKCS7-MIME", PKCS7_MIME).is_ok());
        assert!(check_content_type("text/html", PKCS7_MIME).is_err());
        assert!(check_content_type("", PKCS7_MIME).is_err());
    }
}
