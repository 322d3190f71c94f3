//! EST, RFC 7030, under `/.well-known/est/`.
//!
//! | operation | method | authentication |
//! |---|---|---|
//! | `cacerts` | GET | none |
//! | `csrattrs` | GET | none |
//! | `simpleenroll` | POST | HTTP Basic (token id, token secret) or a TLS client IDevID |
//! | `simplereenroll` | POST | TLS client certificate: the device's current certificate |
//!
//! Requests carry a base64 DER PKCS#10 (`application/pkcs10`); DER sent as is is accepted
//! too. Responses are `application/pkcs7-mime` certs-only, base64 with
//! `Content-Transfer-Encoding: base64` (§4.1.3, §4.2.3). Errors are plain text with the
//! status RFC 7030 and RFC 9110 call for: 400 bad CSR, 401 no or bad credential (with
//! `WWW-Authenticate`), 403 refused, 413 too large, 415 wrong content type, 500.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use gatehouse_pki::{Credential, EnrollError, Enrolled, pkcs7_certs_only};

use crate::{ApiState, ConnInfo};

/// The realm of the `WWW-Authenticate` challenge.
pub const REALM: &str = "gatehouse-est";

/// CSR attributes we ask for: ecdsa-with-SHA256, and an EC public key on P-256
/// (RFC 7030 §4.5.2, the example in its text).
const CSR_ATTRS: &[u8] = &[
    0x30, 0x21, // CsrAttrs SEQUENCE
    0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02, // ecdsa-with-SHA256
    0x30, 0x15, // Attribute
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, // id-ecPublicKey
    0x31, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, // { prime256v1 }
];

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/.well-known/est/cacerts", get(cacerts))
        .route("/.well-known/est/csrattrs", get(csrattrs))
        .route("/.well-known/est/simpleenroll", post(simpleenroll))
        .route("/.well-known/est/simplereenroll", post(simplereenroll))
}

async fn cacerts(State(s): State<ApiState>) -> Response {
    let der = pkcs7_certs_only(&s.enroller.ca_certs());
    base64_response("application/pkcs7-mime; smime-type=certs-only", &der)
}

async fn csrattrs() -> Response {
    base64_response("application/csrattrs", CSR_ATTRS)
}

async fn simpleenroll(
    State(s): State<ApiState>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let csr = match read_csr(&headers, &body) {
        Ok(csr) => csr,
        Err(r) => return r,
    };
    let basic = match basic_credentials(&headers) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if basic.is_none() && conn.client_chain.is_empty() {
        return text(
            StatusCode::UNAUTHORIZED,
            "simpleenroll needs an enrollment token (HTTP Basic: token id and secret) \
             or a manufacturer certificate (IDevID) as the TLS client certificate",
        );
    }
    let peer = conn.peer.to_string();
    let enroller = s.enroller.clone();
    let operation = if basic.is_some() {
        "enroll_token"
    } else {
        "enroll_idevid"
    };
    let started = std::time::Instant::now();
    let trust = s.trust.clone();
    let result = tokio::task::spawn_blocking(move || {
        let result = match &basic {
            Some((id, secret)) => enroller.enroll(
                Credential::Token {
                    id,
                    secret: secret.as_str(),
                },
                &csr,
                &peer,
            ),
            None => enroller.enroll(
                Credential::Idevid {
                    chain: &conn.client_chain,
                },
                &csr,
                &peer,
            ),
        };
        scan(trust.as_deref(), &result);
        result
    })
    .await;
    observe(&s, operation, started, &result);
    enrolled_response(result)
}

async fn simplereenroll(
    State(s): State<ApiState>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let csr = match read_csr(&headers, &body) {
        Ok(csr) => csr,
        Err(r) => return r,
    };
    if conn.client_chain.is_empty() {
        return text(
            StatusCode::UNAUTHORIZED,
            "simplereenroll needs the device's current certificate as the TLS client certificate",
        );
    }
    let peer = conn.peer.to_string();
    let enroller = s.enroller.clone();
    let started = std::time::Instant::now();
    let trust = s.trust.clone();
    let result = tokio::task::spawn_blocking(move || {
        let result = enroller.reenroll(&conn.client_chain, &csr, &peer);
        scan(trust.as_deref(), &result);
        result
    })
    .await;
    observe(&s, "renew", started, &result);
    enrolled_response(result)
}

/// The scan at join: the new device's (or renewed certificate's) facts recorded and its
/// verdict compiled before the certificate is returned, so that its first connection finds
/// its verdict in force. A failure is logged; the certificate stands (the device is scored
/// on what is known at its first connection).
fn scan(trust: Option<&crate::TrustService>, result: &Result<Enrolled, EnrollError>) {
    if let (Some(trust), Ok(enrolled)) = (trust, result)
        && let Err(e) = trust.scan_at_join(&enrolled.device.device, "system")
    {
        tracing::warn!(device = %enrolled.device.device, error = %e, "scan at enrollment failed");
    }
}

fn observe(
    s: &ApiState,
    operation: &'static str,
    started: std::time::Instant,
    result: &Result<Result<Enrolled, EnrollError>, tokio::task::JoinError>,
) {
    let status = match result {
        Ok(Ok(_)) => 200,
        Ok(Err(e)) => e.status(),
        Err(_) => 500,
    };
    s.metrics
        .est_requests
        .get_or_create(&crate::EstLabels { operation, status })
        .inc();
    s.metrics
        .est_seconds
        .observe(started.elapsed().as_secs_f64());
}

fn enrolled_response(
    result: Result<Result<Enrolled, EnrollError>, tokio::task::JoinError>,
) -> Response {
    match result {
        Ok(Ok(enrolled)) => base64_response(
            "application/pkcs7-mime; smime-type=certs-only",
            &pkcs7_certs_only(&[enrolled.certificate.cert_der]),
        ),
        Ok(Err(e)) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::FORBIDDEN);
            text(status, &e.to_string())
        }
        Err(e) => {
            tracing::error!(error = %e, "enrollment task failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// The DER CSR of a request: base64 (whitespace allowed) or raw DER.
#[allow(clippy::result_large_err)]
fn read_csr(headers: &HeaderMap, body: &[u8]) -> Result<Vec<u8>, Response> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/pkcs10" {
        return Err(text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the request must be a PKCS#10 CSR with Content-Type: application/pkcs10",
        ));
    }
    decode_body(body).ok_or_else(|| {
        text(
            StatusCode::BAD_REQUEST,
            "the body is neither base64 nor DER: send the CSR as base64 DER",
        )
    })
}

/// Base64 (any whitespace ignored) or, if the body starts like a DER SEQUENCE, DER.
pub fn decode_body(body: &[u8]) -> Option<Vec<u8>> {
    if body.first() == Some(&0x30) {
        return Some(body.to_vec());
    }
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.is_empty() {
        return None;
    }
    STANDARD.decode(&compact).ok()
}

/// `Authorization: Basic` user and password, if sent. A malformed header is a 401.
#[allow(clippy::result_large_err)]
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, Response> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        text(
            StatusCode::UNAUTHORIZED,
            "malformed Authorization header: expected Basic with the token id and secret",
        )
    };
    let value = value.to_str().map_err(|_| bad())?;
    let (scheme, rest) = value.trim().split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    let decoded = STANDARD.decode(rest.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (user, password) = decoded.split_once(':').ok_or_else(bad)?;
    Ok(Some((user.to_owned(), password.to_owned())))
}

fn base64_response(content_type: &'static str, der: &[u8]) -> Response {
    let mut body = String::with_capacity(der.len() * 4 / 3 + der.len() / 48 + 4);
    let encoded = STANDARD.encode(der);
    for chunk in encoded.as_bytes().chunks(64) {
        body.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        body.push('\n');
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::HeaderName::from_static("content-transfer-encoding"),
                HeaderValue::from_static("base64"),
            ),
        ],
        body,
    )
        .into_response()
}

fn text(status: StatusCode, message: &str) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"gatehouse-est\", charset=\"UTF-8\""),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_attributes_are_one_well_formed_der_sequence() {
        assert_eq!(CSR_ATTRS[0], 0x30);
        assert_eq!(usize::from(CSR_ATTRS[1]) + 2, CSR_ATTRS.len());
        assert_eq!(usize::from(CSR_ATTRS[13]) + 14, CSR_ATTRS.len());
    }

    #[test]
    fn bodies_decode_from_base64_with_line_breaks_or_from_der() {
        assert_eq!(decode_body(b"MAMCAQE=\r\n"), Some(vec![0x30, 3, 2, 1, 1]));
        assert_eq!(decode_body(b"MAMC\nAQE="), Some(vec![0x30, 3, 2, 1, 1]));
        assert_eq!(decode_body(&[0x30, 0]), Some(vec![0x30, 0]));
        assert_eq!(decode_body(b"not base64!"), None);
        assert_eq!(decode_body(b"  \n"), None);
    }

    #[test]
    fn basic_credentials_parse_and_malformed_ones_are_401() {
        let mut h = HeaderMap::new();
        assert!(matches!(basic_credentials(&h), Ok(None)));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dG9rLTE6czNjcjN0OndpdGg6Y29sb25z"),
        );
        assert_eq!(
            basic_credentials(&h).ok().flatten(),
            Some(("tok-1".to_owned(), "s3cr3t:with:colons".to_owned()))
        );
        for bad in ["Bearer x", "Basic !!!", "Basic", "Basic bm9jb2xvbg=="] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(bad));
            let r = basic_credentials(&h).expect_err(bad);
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{bad}");
            assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bodies_and_authorization_headers_never_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            auth in "\\PC{0,80}",
        ) {
            let _ = decode_body(&body);
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&auth) {
                h.insert(header::AUTHORIZATION, v);
                let _ = basic_credentials(&h);
            }
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/pkcs10"));
            let _ = read_csr(&h, &body);
        }

        #[test]
        fn base64_bodies_round_trip(der in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..512)) {
            let r = base64_response("application/pkcs7-mime", &der);
            proptest::prop_assert_eq!(r.status(), StatusCode::OK);
            let mut der = der;
            der[0] = 0x31; // not a DER SEQUENCE, so it must go through base64
            let b64 = STANDARD.encode(&der);
            let wrapped: String = b64
                .as_bytes()
                .chunks(64)
                .map(|c| format!("{}\n", String::from_utf8_lossy(c)))
                .collect();
            proptest::prop_assert_eq!(decode_body(wrapped.as_bytes()), Some(der));
        }
    }
}
