//! A lean HTTPS client for EST (RFC 7030) and Gatehouse's REST API, and the device side of
//! enrollment: keys, CSRs, and reading the certificates EST returns.
//!
//! An [`HttpsConnection`] is one TCP connection and one TLS handshake, driven by hyper's
//! HTTP/1.1 client connection: nothing is pooled or kept alive behind the caller's back, so
//! a caller that opens a connection per request (as a device enrolling does) pays the full
//! handshake every time, and can time the handshake and the request separately.
//!
//! A target may carry a default `Authorization` value (an operator's API token, see
//! [`bearer_auth`]) that every request without one of its own sends: the REST API under
//! `/api/v1` requires it. EST requests leave it out by using a target without one, and
//! carry their own (`Basic`, for an enrollment token) or none.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

/// `Content-Type` of an EST enrollment request.
pub const PKCS10: &str = "application/pkcs10";

/// Where an HTTPS server is and how to reach it.
#[derive(Debug, Clone)]
pub struct HttpsTarget {
    /// Server address.
    pub addr: SocketAddr,
    /// Local address to bind before connecting; `None` lets the kernel choose.
    pub bind: Option<IpAddr>,
    /// Name the server certificate must carry.
    pub server_name: ServerName<'static>,
    /// TLS client configuration: roots, and a client certificate when one is presented.
    pub tls: Arc<rustls::ClientConfig>,
    /// Deadline for TCP and TLS together, and again for each request.
    pub timeout: Duration,
    /// The `Authorization` value sent with every request that does not set one of its own
    /// (`Bearer <API token>` for the REST API); `None` sends none. Leave it `None` on
    /// targets used for EST, which authenticates devices differently.
    pub authorization: Option<String>,
}

/// Why an HTTPS exchange failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpsError {
    /// The TCP connection failed.
    #[error("TCP connect: {0}")]
    Connect(io::Error),
    /// The TLS handshake failed.
    #[error("TLS handshake: {0}")]
    Tls(io::Error),
    /// HTTP failed (the server closed the connection, or sent something that is not HTTP).
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built.
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
    /// A step did not finish in time.
    #[error("timed out during {0}")]
    Timeout(&'static str),
}

impl HttpsError {
    /// A short label for counting failures by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "tcp",
            Self::Tls(_) => "tls",
            Self::Http(_) | Self::Request(_) => "http",
            Self::Timeout(_) => "timeout",
        }
    }
}

/// A response: its status and its whole body.
#[derive(Debug, Clone)]
pub struct HttpsResponse {
    /// HTTP status code.
    pub status: u16,
    /// The body.
    pub body: Bytes,
}

/// One HTTP/1.1 connection over TLS.
#[derive(Debug)]
pub struct HttpsConnection {
    sender: SendRequest<Full<Bytes>>,
    host: String,
    timeout: Duration,
    /// The target's default `Authorization` value.
    authorization: Option<String>,
}

// === impl HttpsConnection ===

impl HttpsConnection {
    /// Opens TCP, makes the TLS handshake and the HTTP/1.1 connection, within
    /// `target.timeout`. The connection is driven by a task of its own and closes when this
    /// value is dropped.
    pub async fn connect(target: &HttpsTarget) -> Result<Self, HttpsError> {
        let deadline = tokio::time::Instant::now() + target.timeout;
        let tcp = tokio::time::timeout_at(deadline, tcp_connect(target.addr, target.bind))
            .await
            .map_err(|_| HttpsError::Timeout("TCP connect"))?
            .map_err(HttpsError::Connect)?;
        tcp.set_nodelay(true).map_err(HttpsError::Connect)?;
        let connector = TlsConnector::from(target.tls.clone());
        let tls =
            tokio::time::timeout_at(deadline, connector.connect(target.server_name.clone(), tcp))
                .await
                .map_err(|_| HttpsError::Timeout("TLS handshake"))?
                .map_err(HttpsError::Tls)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(HttpsError::Http)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            host: host_header(&target.server_name, target.addr.port()),
            timeout: target.timeout,
            authorization: target.authorization.clone(),
        })
    }

    /// Sends `POST path` with this body and reads the whole response. `authorization`, when
    /// given, is sent instead of the target's default.
    pub async fn post(
        &mut self,
        path: &str,
        content_type: &str,
        authorization: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Result<HttpsResponse, HttpsError> {
        self.request(
            Method::POST,
            path,
            Some(content_type),
            authorization,
            body.into(),
        )
        .await
    }

    /// Sends `PUT path` with this body (and the target's default `Authorization`) and reads
    /// the whole response.
    pub async fn put(
        &mut self,
        path: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> Result<HttpsResponse, HttpsError> {
        self.request(Method::PUT, path, Some(content_type), None, body.into())
            .await
    }

    /// Sends `GET path` (with the target's default `Authorization`) and reads the whole
    /// response.
    pub async fn get(&mut self, path: &str) -> Result<HttpsResponse, HttpsError> {
        self.request(Method::GET, path, None, None, Bytes::new())
            .await
    }

    /// Sends `DELETE path` (with the target's default `Authorization`) and reads the whole
    /// response.
    pub async fn delete(&mut self, path: &str) -> Result<HttpsResponse, HttpsError> {
        self.request(Method::DELETE, path, None, None, Bytes::new())
            .await
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        authorization: Option<&str>,
        body: Bytes,
    ) -> Result<HttpsResponse, HttpsError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.host);
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        if let Some(auth) = authorization.or(self.authorization.as_deref()) {
            request = request.header(AUTHORIZATION, auth);
        }
        self.send(request.body(Full::new(body))?).await
    }

    async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<HttpsResponse, HttpsError> {
        tokio::time::timeout(self.timeout, async {
            let response = self.sender.send_request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok(HttpsResponse { status, body })
        })
        .await
        .map_err(|_| HttpsError::Timeout("the response"))?
    }
}

fn host_header(name: &ServerName<'_>, port: u16) -> String {
    match name {
        ServerName::DnsName(dns) => format!("{}:{port}", dns.as_ref()),
        ServerName::IpAddress(ip) => match IpAddr::from(*ip) {
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
            v4 => format!("{v4}:{port}"),
        },
        _ => format!("localhost:{port}"),
    }
}

async fn tcp_connect(addr: SocketAddr, bind: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = bind {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}

/// An `Authorization: Basic` value: base64 of `user:password` (EST's token credential).
pub fn basic_auth(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// An `Authorization: Bearer` value for an operator's API token (`gha_<id>_<secret>`, from
/// `gatehouse admin token`): what the REST API under `/api/v1` requires.
pub fn bearer_auth(token: &str) -> String {
    format!("Bearer {token}")
}

/// A device's key and its certificate signing request.
#[derive(Clone)]
pub struct DeviceCsr {
    /// The device id the CSR names (its subject CN).
    pub device: String,
    /// The private key, PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
    /// The CSR, DER.
    pub csr_der: Vec<u8>,
}

impl std::fmt::Debug for DeviceCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCsr")
            .field("device", &self.device)
            .field("key_pkcs8", &"<redacted>")
            .field("csr_der_len", &self.csr_der.len())
            .finish()
    }
}

// === impl DeviceCsr ===

impl DeviceCsr {
    /// A new ECDSA P-256 key and a CSR with subject `CN=<device>`, as a device makes before
    /// it enrolls.
    pub fn generate(device: &str) -> Result<Self, rcgen::Error> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, device);
        params.distinguished_name = dn;
        let csr = params.serialize_request(&key)?;
        Ok(Self {
            device: device.to_owned(),
            key_pkcs8: key.serialize_der(),
            csr_der: csr.der().to_vec(),
        })
    }

    /// The CSR as an EST request body: base64 DER.
    pub fn est_body(&self) -> String {
        STANDARD.encode(&self.csr_der)
    }
}

/// Decodes a base64 body, ignoring line breaks and other whitespace.
pub fn decode_base64(body: &[u8]) -> Option<Vec<u8>> {
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    STANDARD.decode(compact).ok()
}

/// The certificates of a DER PKCS#7 certs-only SignedData (what EST returns), in order;
/// `None` if it is not one.
pub fn pkcs7_certificates(der: &[u8]) -> Option<Vec<CertificateDer<'static>>> {
    /// id-signedData, 1.2.840.113549.1.7.2.
    const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
    let (content_info, rest) = expect(der, 0x30)?;
    if !rest.is_empty() {
        return None;
    }
    let (oid, rest) = expect(content_info, 0x06)?;
    if oid != OID_SIGNED_DATA {
        return None;
    }
    let (explicit, _) = expect(rest, 0xa0)?;
    let (signed_data, _) = expect(explicit, 0x30)?;
    let (_version, rest) = expect(signed_data, 0x02)?;
    let (_digests, rest) = expect(rest, 0x31)?;
    let (_encap, rest) = expect(rest, 0x30)?;
    let Some((mut certs, _)) = expect(rest, 0xa0) else {
        return Some(Vec::new());
    };
    let mut out = Vec::new();
    while !certs.is_empty() {
        let element = Tlv::read(certs)?;
        if element.tag == 0x30 {
            out.push(CertificateDer::from(element.whole.to_vec()));
        }
        certs = element.rest;
    }
    Some(out)
}

/// Whether a certificate mentions `device` (its CN, or its SAN URI
/// `gatehouse://<tenant>/device/<device>`): a cheap check that the certificate is the one
/// asked for, not a parse.
pub fn names_device(cert_der: &[u8], device: &str) -> bool {
    let needle = device.as_bytes();
    !needle.is_empty() && cert_der.windows(needle.len()).any(|w| w == needle)
}

/// The value of a DER element with tag `tag` at the front of `input`, and what follows it.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let element = Tlv::read(input)?;
    (element.tag == tag).then_some((element.value, element.rest))
}

/// One DER element with a single-byte tag and a definite length.
struct Tlv<'a> {
    tag: u8,
    value: &'a [u8],
    /// Tag, length and value.
    whole: &'a [u8],
    /// What follows the element.
    rest: &'a [u8],
}

impl<'a> Tlv<'a> {
    fn read(input: &'a [u8]) -> Option<Self> {
        let tag = *input.first()?;
        let first = *input.get(1)?;
        let (len, header) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let bytes = input.get(2..2 + n)?;
            let len = bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, 2 + n)
        };
        let end = header.checked_add(len)?;
        let whole = input.get(..end)?;
        Some(Self {
            tag,
            value: &whole[header..],
            whole,
            rest: &input[end..],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrs_name_the_device_and_verify() {
        let csr = DeviceCsr::generate("bench-000001").expect("csr");
        assert!(names_device(&csr.csr_der, "bench-000001"));
        assert!(!names_device(&csr.csr_der, "bench-000002"));
        let verified =
            gatehouse_pki::verify_csr(&csr.csr_der, &gatehouse_pki::CsrPolicy::default())
                .expect("a CSR the server accepts");
        assert_eq!(verified.common_names(), ["bench-000001"]);
        assert_eq!(verified.key_kind(), gatehouse_pki::KeyKind::EcdsaP256);
        assert!(format!("{csr:?}").contains("<redacted>"));
        assert_eq!(decode_base64(csr.est_body().as_bytes()), Some(csr.csr_der));
    }

    #[test]
    fn pkcs7_bundles_give_their_certificates_back_in_order() {
        let a = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        let long: Vec<u8> = [vec![0x30, 0x82, 0x01, 0x00], vec![0x04; 0x100]].concat();
        let b = CertificateDer::from(long);
        let bundle = gatehouse_pki::pkcs7_certs_only(&[a.clone(), b.clone()]);
        assert_eq!(pkcs7_certificates(&bundle), Some(vec![a, b]));
        assert_eq!(
            pkcs7_certificates(&gatehouse_pki::pkcs7_certs_only(&[])),
            Some(vec![])
        );
        assert_eq!(pkcs7_certificates(&bundle[..bundle.len() - 1]), None);
        assert_eq!(pkcs7_certificates(&[0x30, 0x00]), None);
        assert_eq!(pkcs7_certificates(b"not der"), None);
    }

    /// A one-connection HTTPS server on loopback that answers each request with its
    /// `Authorization` header as the body (`-` when there is none); returns the target that
    /// reaches it, with `authorization` as its default.
    async fn echo_authorization(authorization: Option<&str>) -> HttpsTarget {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("a certificate");
        let der = cert.cert.der().clone();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).expect("root");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor.accept(tcp).await.expect("handshake");
            let mut seen = Vec::new();
            loop {
                let mut buf = [0u8; 4096];
                let n = tls.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                // Answers each complete request (its head and Content-Length body) in turn.
                while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&seen[..end]).into_owned();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if seen.len() < end + 4 + length {
                        break;
                    }
                    seen.drain(..end + 4 + length);
                    let auth = head
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("authorization")
                                .then(|| value.trim().to_owned())
                        })
                        .unwrap_or_else(|| "-".to_owned());
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{auth}",
                        auth.len()
                    );
                    if tls.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        });
        HttpsTarget {
            addr,
            bind: None,
            server_name: ServerName::try_from("localhost").expect("name"),
            tls: Arc::new(client),
            timeout: Duration::from_secs(10),
            authorization: authorization.map(str::to_owned),
        }
    }

    #[tokio::test]
    async fn the_targets_authorization_goes_with_requests_that_set_none() {
        let bearer = bearer_auth("gha_at-1_s3cret");
        assert_eq!(bearer, "Bearer gha_at-1_s3cret");
        let target = echo_authorization(Some(&bearer)).await;
        let mut conn = HttpsConnection::connect(&target).await.expect("connect");
        let body = |r: HttpsResponse| String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(body(conn.get("/api/v1/x").await.expect("get")), bearer);
        assert_eq!(
            body(conn.delete("/api/v1/x").await.expect("delete")),
            bearer
        );
        assert_eq!(
            body(
                conn.put("/api/v1/x", "application/json", "{}")
                    .await
                    .expect("put")
            ),
            bearer
        );
        assert_eq!(
            body(
                conn.post("/api/v1/x", "application/json", None, "{}")
                    .await
                    .expect("post")
            ),
            bearer
        );
        // A request's own value (EST's Basic) goes instead of the default.
        let basic = basic_auth("tok-1", "s3cret");
        assert_eq!(
            body(
                conn.post(ENROLL, PKCS10, Some(&basic), "MAMCAQE=")
                    .await
                    .expect("post")
            ),
            basic
        );
    }

    #[tokio::test]
    async fn a_target_without_authorization_sends_none() {
        let target = echo_authorization(None).await;
        let mut conn = HttpsConnection::connect(&target).await.expect("connect");
        let r = conn.get("/.well-known/est/cacerts").await.expect("get");
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], b"-");
        let r = conn
            .post(ENROLL, PKCS10, None, "MAMCAQE=")
            .await
            .expect("post");
        assert_eq!(&r.body[..], b"-");
    }

    const ENROLL: &str = "/.well-known/est/simpleenroll";

    #[test]
    fn base64_bodies_with_line_breaks_decode() {
        assert_eq!(
            decode_base64(b"MAMC\r\nAQE=\n"),
            Some(vec![0x30, 3, 2, 1, 1])
        );
        assert_eq!(decode_base64(b"!!"), None);
        assert_eq!(
            basic_auth("tok-1", "s3cret"),
            format!("Basic {}", STANDARD.encode("tok-1:s3cret"))
        );
    }
}
