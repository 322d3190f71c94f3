//! Notifications: a finding as an OCSF Detection Finding, signed and POSTed to a webhook.
//!
//! The signature scheme (the receiver's side is [`verify`]):
//!
//! ```text
//! X-Gatehouse-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//! ```
//!
//! The timestamp is signed with the body, so a receiver that checks it against its clock
//! (within a tolerance) refuses a captured request replayed later.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use gatehouse_store::IncidentId;
use gatehouse_types::{Finding, Severity};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Gatehouse-Signature";
/// The OCSF schema version the body follows.
pub const OCSF_VERSION: &str = "1.3.0";
/// OCSF class `Detection Finding`.
pub const OCSF_CLASS_UID: u32 = 2004;
/// OCSF category `Findings`.
pub const OCSF_CATEGORY_UID: u32 = 2;
/// OCSF activity `Create`: a new finding.
pub const OCSF_ACTIVITY_CREATE: u32 = 1;
/// Largest body [`deliver`] sends.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

type HmacSha256 = Hmac<Sha256>;

/// A shared secret. `Debug` prints `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

// === impl Secret ===

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself: for signing, never for logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Its name, as playbooks refer to it.
    pub name: String,
    /// `http://` or `https://` URL to POST to.
    pub url: String,
    /// The signing secret.
    pub secret: Secret,
    /// How long one attempt may take, connection included.
    pub timeout: Duration,
    /// How many times a failed attempt is retried (so at most `retries + 1` attempts).
    pub retries: u32,
    /// The file the CA certificates below were read from (`ca_file`), if any.
    pub ca_file: Option<PathBuf>,
    /// CA certificates to trust for an `https` URL **instead of** the Web PKI roots (a
    /// receiver behind a private CA); empty: the Web PKI roots.
    pub ca_certs: Vec<CertificateDer<'static>>,
}

impl Webhook {
    /// `timeout` when the file does not say.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Longest `timeout`.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
    /// `retries` when the file does not say.
    pub const DEFAULT_RETRIES: u32 = 3;
    /// Most `retries`.
    pub const MAX_RETRIES: u32 = 10;
    /// Shortest secret accepted, in bytes.
    pub const MIN_SECRET_BYTES: usize = 16;
    /// The wait before the first retry; it doubles for each next one.
    pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
}

/// Checks that a URL is absolute `http` or `https` with a host.
pub(crate) fn check_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{url:?} is not an http:// or https:// URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} names no host"));
    }
    Ok(uri)
}

// === signatures ===

fn mac(secret: &Secret, timestamp: u64, body: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length.
    let mut m = match HmacSha256::new_from_slice(secret.expose().as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The `X-Gatehouse-Signature` value for `body` sent at `timestamp` (unix seconds):
/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn sign(secret: &Secret, timestamp: u64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    let mut out = format!("t={timestamp},v1=");
    for b in tag {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The header is not `t=<digits>,v1=<64 hex>[,v1=...]`.
    #[error("malformed signature header")]
    Malformed,
    /// The timestamp is further from `now` than the tolerance (a replay, or a bad clock).
    #[error(
        "signature timestamp {timestamp} is {skew} s away from now; at most {tolerance} s are accepted"
    )]
    Stale {
        /// The signed timestamp.
        timestamp: u64,
        /// How far it is from now, in seconds.
        skew: u64,
        /// The tolerance, in seconds.
        tolerance: u64,
    },
    /// No `v1` signature matches the body and timestamp with this secret.
    #[error("signature does not match")]
    Mismatch,
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Checks a `X-Gatehouse-Signature` header against `body`: the timestamp must be within
/// `tolerance` of `now` (unix seconds), and one of the `v1` signatures must be the HMAC of
/// `"<t>.<body>"` under `secret`, compared in constant time. Unknown keys in the header are
/// ignored (room for later schemes).
pub fn verify(
    secret: &Secret,
    header: &str,
    body: &[u8],
    now: u64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match k {
            "t" => {
                if timestamp.is_some() || v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(SignatureError::Malformed);
                }
                timestamp = Some(v.parse::<u64>().map_err(|_| SignatureError::Malformed)?);
            }
            "v1" => {
                let bytes = unhex(v)
                    .filter(|b| b.len() == 32)
                    .ok_or(SignatureError::Malformed)?;
                sigs.push(bytes);
            }
            _ => {}
        }
    }
    let (Some(timestamp), false) = (timestamp, sigs.is_empty()) else {
        return Err(SignatureError::Malformed);
    };
    let skew = now.abs_diff(timestamp);
    if skew > tolerance.as_secs() {
        return Err(SignatureError::Stale {
            timestamp,
            skew,
            tolerance: tolerance.as_secs(),
        });
    }
    let expected = mac(secret, timestamp, body);
    // Every candidate is checked, so the time taken does not tell which one matched.
    let mut ok = false;
    for sig in &sigs {
        ok |= expected.clone().verify_slice(sig).is_ok();
    }
    if ok {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

// === the body ===

fn unix_millis(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// OCSF's caption for a severity.
fn ocsf_severity(s: Severity) -> &'static str {
    match s {
        Severity::Info => "Informational",
        Severity::Low => "Low",
        Severity::Medium => "Medium",
        Severity::High => "High",
        Severity::Critical => "Critical",
    }
}

/// The names of the MITRE ATT&CK for ICS techniques the detection rules map to.
fn technique_name(id: &str) -> Option<&'static str> {
    Some(match id {
        "T0814" => "Denial of Service",
        "T0846" => "Remote System Discovery",
        "T0855" => "Unauthorized Command Message",
        "T0856" => "Spoof Reporting Message",
        "T0859" => "Valid Accounts",
        "T0861" => "Point & Tag Identification",
        "T0866" => "Exploitation of Remote Services",
        "T0869" => "Standard Application Layer Protocol",
        "T0882" => "Theft of Operational Information",
        _ => return None,
    })
}

/// A finding as an OCSF (1.3) Detection Finding (`class_uid` 2004, activity `Create`):
/// the body of a webhook notification. The device is the finding's resource (and
/// `device`), the source address its `src_endpoint`, the evidence goes to `evidences`
/// and, with the Gatehouse-specific fields, to `unmapped`.
pub fn ocsf_detection_finding(
    finding: &Finding,
    incident: Option<IncidentId>,
    product_version: &str,
) -> serde_json::Value {
    use serde_json::{Map, Value, json};

    let time = unix_millis(finding.at);
    let confidence = if finding.confidence.is_finite() {
        // Clamped to 0–100, so the cast cannot overflow.
        (f64::from(finding.confidence).clamp(0.0, 1.0) * 100.0).round() as u8
    } else {
        0
    };
    let uid = match incident {
        Some(i) => format!("{i}:{}:{time}", finding.group_key()),
        None => format!("{}:{time}", finding.group_key()),
    };
    let mut info = Map::new();
    info.insert("uid".into(), json!(uid));
    info.insert("title".into(), json!(finding.kind.replace('_', " ")));
    info.insert("desc".into(), json!(finding.summary));
    info.insert("types".into(), json!([finding.kind]));
    info.insert("first_seen_time".into(), json!(time));
    info.insert("last_seen_time".into(), json!(time));
    info.insert(
        "analytic".into(),
        json!({ "name": finding.kind, "type_id": 1, "type": "Rule" }),
    );
    if let Some(t) = &finding.technique {
        let mut technique = Map::new();
        technique.insert("uid".into(), json!(t));
        if let Some(name) = technique_name(t) {
            technique.insert("name".into(), json!(name));
        }
        info.insert(
            "attacks".into(),
            json!([{ "technique": Value::Object(technique), "version": "ICS" }]),
        );
    }

    let mut body = Map::new();
    body.insert("class_uid".into(), json!(OCSF_CLASS_UID));
    body.insert("class_name".into(), json!("Detection Finding"));
    body.insert("category_uid".into(), json!(OCSF_CATEGORY_UID));
    body.insert("category_name".into(), json!("Findings"));
    body.insert("activity_id".into(), json!(OCSF_ACTIVITY_CREATE));
    body.insert("activity_name".into(), json!("Create"));
    body.insert(
        "type_uid".into(),
        json!(OCSF_CLASS_UID * 100 + OCSF_ACTIVITY_CREATE),
    );
    body.insert("type_name".into(), json!("Detection Finding: Create"));
    body.insert("severity_id".into(), json!(finding.severity.ocsf_id()));
    body.insert("severity".into(), json!(ocsf_severity(finding.severity)));
    body.insert("status_id".into(), json!(1));
    body.insert("status".into(), json!("New"));
    body.insert("time".into(), json!(time));
    body.insert("message".into(), json!(finding.summary));
    body.insert("confidence_score".into(), json!(confidence));
    body.insert(
        "metadata".into(),
        json!({
            "version": OCSF_VERSION,
            "product": {
                "name": "Gatehouse",
                "vendor_name": "Gatehouse",
                "version": product_version,
            },
            "log_name": "findings",
        }),
    );
    body.insert("finding_info".into(), Value::Object(info));
    if let Some(d) = &finding.device {
        body.insert(
            "device".into(),
            json!({
                "uid": d.to_string(),
                "name": d.device.as_str(),
                "type_id": 7,
                "type": "IOT",
                "org": { "uid": d.tenant.as_str() },
            }),
        );
        body.insert(
            "resources".into(),
            json!([{ "uid": d.to_string(), "name": d.device.as_str(), "type": "device" }]),
        );
    } else if let Some(p) = finding.peer {
        body.insert(
            "resources".into(),
            json!([{ "uid": p.to_string(), "type": "ip_address" }]),
        );
    }
    if let Some(p) = finding.peer {
        body.insert("src_endpoint".into(), json!({ "ip": p.to_string() }));
    }
    if !finding.evidence.is_empty() {
        body.insert("evidences".into(), json!([{ "data": finding.evidence }]));
    }
    body.insert(
        "unmapped".into(),
        json!({
            "gatehouse": {
                "kind": finding.kind,
                "group_key": finding.group_key(),
                "incident": incident.map(|i| i.to_string()),
                "confidence": finding.confidence,
                "evidence": finding.evidence,
            }
        }),
    );
    Value::Object(body)
}

// === delivery ===

/// A delivered notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReceipt {
    /// The receiver's (2xx) status.
    pub status: u16,
    /// How many attempts it took (1 when the first one worked).
    pub attempts: u32,
    /// The `t` the last attempt was signed with.
    pub timestamp: u64,
}

/// Why a notification was not delivered (after every retry).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The webhook's URL is not a usable http(s) URL.
    #[error("webhook {webhook}: {problem}")]
    BadUrl {
        /// The webhook.
        webhook: String,
        /// What is wrong.
        problem: String,
    },
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("webhook {webhook}: the body is {len} bytes; at most {MAX_BODY_BYTES} are sent")]
    TooLarge {
        /// The webhook.
        webhook: String,
        /// The body's size.
        len: usize,
    },
    /// The receiver answered with a status that is not 2xx.
    #[error("webhook {webhook}: the receiver answered {status} after {attempts} attempt(s)")]
    Status {
        /// The webhook.
        webhook: String,
        /// The last status.
        status: u16,
        /// Attempts made.
        attempts: u32,
    },
    /// No answer within the timeout.
    #[error("webhook {webhook}: no answer within {timeout:?} after {attempts} attempt(s)")]
    Timeout {
        /// The webhook.
        webhook: String,
        /// The per-attempt timeout.
        timeout: Duration,
        /// Attempts made.
        attempts: u32,
    },
    /// The connection or the exchange failed.
    #[error("webhook {webhook}: sending failed after {attempts} attempt(s)")]
    Transport {
        /// The webhook.
        webhook: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

enum Attempt {
    Status(StatusCode),
    Timeout,
    Failed(Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// The TLS client configuration for a webhook: ring, safe protocol versions, and the
/// webhook's own CAs or else the Web PKI roots (built once).
fn tls_config(webhook: &Webhook) -> Result<rustls::ClientConfig, String> {
    fn build(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
    static WEB_PKI: OnceLock<Result<rustls::ClientConfig, String>> = OnceLock::new();
    if webhook.ca_certs.is_empty() {
        return WEB_PKI
            .get_or_init(|| {
                let mut roots = rustls::RootCertStore::empty();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                build(roots)
            })
            .clone();
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in &webhook.ca_certs {
        roots
            .add(cert.clone())
            .map_err(|e| format!("a CA certificate is not usable: {e}"))?;
    }
    build(roots)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// POSTs `body` (JSON) to the webhook, signed, over http or https (the server's
/// certificate checked against the webhook's CAs, else the Web PKI roots). Each attempt has the webhook's timeout; a timeout, a transport
/// failure or a 5xx/429 answer is retried up to `retries` times, waiting
/// [`Webhook::FIRST_BACKOFF`], doubling. Any other non-2xx answer is final. Each attempt
/// is signed afresh with the current time.
pub async fn deliver(webhook: &Webhook, body: &[u8]) -> Result<DeliveryReceipt, DeliveryError> {
    let uri = check_url(&webhook.url).map_err(|problem| DeliveryError::BadUrl {
        webhook: webhook.name.clone(),
        problem,
    })?;
    if body.len() > MAX_BODY_BYTES {
        return Err(DeliveryError::TooLarge {
            webhook: webhook.name.clone(),
            len: body.len(),
        });
    }
    let tls = tls_config(webhook).map_err(|problem| DeliveryError::BadUrl {
        webhook: webhook.name.clone(),
        problem,
    })?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let body = Bytes::copy_from_slice(body);
    let mut backoff = Webhook::FIRST_BACKOFF;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let timestamp = now_secs();
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "gatehouse-webhook")
            .header(SIGNATURE_HEADER, sign(&webhook.secret, timestamp, &body))
            .body(Full::new(body.clone()));
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                return Err(DeliveryError::BadUrl {
                    webhook: webhook.name.clone(),
                    problem: e.to_string(),
                });
            }
        };
        let exchange = async {
            let response = client.request(request).await?;
            let status = response.status();
            // Read (and drop) the answer so the connection ends cleanly; bounded by the
            // same timeout.
            response.into_body().collect().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(status)
        };
        let outcome = match tokio::time::timeout(webhook.timeout, exchange).await {
            Err(_) => Attempt::Timeout,
            Ok(Err(e)) => Attempt::Failed(e),
            Ok(Ok(status)) => Attempt::Status(status),
        };
        let retryable = match &outcome {
            Attempt::Status(s) if s.is_success() => {
                return Ok(DeliveryReceipt {
                    status: s.as_u16(),
                    attempts,
                    timestamp,
                });
            }
            Attempt::Status(s) => s.is_server_error() || *s == StatusCode::TOO_MANY_REQUESTS,
            Attempt::Timeout | Attempt::Failed(_) => true,
        };
        if !retryable || attempts > webhook.retries {
            return Err(match outcome {
                Attempt::Status(s) => DeliveryError::Status {
                    webhook: webhook.name.clone(),
                    status: s.as_u16(),
                    attempts,
                },
                Attempt::Timeout => DeliveryError::Timeout {
                    webhook: webhook.name.clone(),
                    timeout: webhook.timeout,
                    attempts,
                },
                Attempt::Failed(source) => DeliveryError::Transport {
                    webhook: webhook.name.clone(),
                    attempts,
                    source,
                },
            });
        }
        tracing::debug!(webhook = %webhook.name, attempts, "webhook delivery failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff = backoff.saturating_mul(2);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use gatehouse_types::DeviceRef;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper::{Response, server::conn::http1};
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;

    const TOLERANCE: Duration = Duration::from_secs(300);

    fn secret() -> Secret {
        Secret::new("whsec-0123456789abcdef")
    }

    fn finding() -> Finding {
        Finding {
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            device: Some(DeviceRef::new(
                "acme".parse().unwrap(),
                "cam-1".parse().unwrap(),
            )),
            peer: Some("192.0.2.7".parse().unwrap()),
            kind: "credential_brute_force".into(),
            severity: Severity::High,
            confidence: 0.874,
            technique: Some("T0859".into()),
            summary: "42 failed logins in 10s".into(),
            evidence: BTreeMap::from([
                ("failures".to_owned(), "42".to_owned()),
                ("window".to_owned(), "10s".to_owned()),
            ]),
        }
    }

    #[test]
    fn ocsf_body_has_the_detection_finding_required_fields() {
        let v = ocsf_detection_finding(&finding(), Some(IncidentId(42)), "0.1.0");
        // Required by the OCSF 1.x Detection Finding class and its base event.
        for key in [
            "activity_id",
            "category_uid",
            "class_uid",
            "finding_info",
            "metadata",
            "severity_id",
            "time",
            "type_uid",
        ] {
            assert!(v.get(key).is_some(), "missing {key}: {v}");
        }
        assert_eq!(v["class_uid"], 2004);
        assert_eq!(v["category_uid"], 2);
        assert_eq!(v["activity_id"], 1);
        assert_eq!(v["type_uid"], 200_401);
        assert_eq!(v["severity_id"], Severity::High.ocsf_id());
        assert_eq!(v["severity"], "High");
        assert_eq!(v["time"], 1_700_000_000_123_i64);
        assert_eq!(v["confidence_score"], 87);
        assert_eq!(v["metadata"]["version"], OCSF_VERSION);
        assert_eq!(
            v["metadata"]["product"],
            serde_json::json!({"name": "Gatehouse", "vendor_name": "Gatehouse", "version": "0.1.0"})
        );
        let info = &v["finding_info"];
        assert_eq!(
            info["uid"],
            "inc-42:acme/cam-1|credential_brute_force:1700000000123"
        );
        assert_eq!(info["title"], "credential brute force");
        assert_eq!(info["desc"], "42 failed logins in 10s");
        assert_eq!(info["types"], serde_json::json!(["credential_brute_force"]));
        assert_eq!(info["first_seen_time"], 1_700_000_000_123_i64);
        assert_eq!(info["attacks"][0]["technique"]["uid"], "T0859");
        assert_eq!(info["attacks"][0]["technique"]["name"], "Valid Accounts");
        assert_eq!(v["device"]["uid"], "acme/cam-1");
        assert_eq!(v["device"]["type_id"], 7);
        assert_eq!(v["resources"][0]["uid"], "acme/cam-1");
        assert_eq!(v["src_endpoint"]["ip"], "192.0.2.7");
        assert_eq!(v["evidences"][0]["data"]["failures"], "42");
        assert_eq!(v["unmapped"]["gatehouse"]["evidence"]["window"], "10s");
        assert_eq!(v["unmapped"]["gatehouse"]["incident"], "inc-42");
    }

    #[test]
    fn ocsf_body_of_an_address_only_finding() {
        let f = Finding {
            device: None,
            technique: Some("T9999".into()),
            evidence: BTreeMap::new(),
            confidence: f32::NAN,
            ..finding()
        };
        let v = ocsf_detection_finding(&f, None, "1.2.3");
        assert!(v.get("device").is_none());
        assert_eq!(v["resources"][0]["uid"], "192.0.2.7");
        assert_eq!(v["resources"][0]["type"], "ip_address");
        assert_eq!(
            v["finding_info"]["uid"],
            "addr:192.0.2.7|credential_brute_force:1700000000123"
        );
        let technique = &v["finding_info"]["attacks"][0]["technique"];
        assert_eq!(technique["uid"], "T9999");
        assert!(
            technique.get("name").is_none(),
            "unknown techniques carry no name"
        );
        assert!(v.get("evidences").is_none());
        assert_eq!(v["confidence_score"], 0);
        assert_eq!(
            v["unmapped"]["gatehouse"]["incident"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn signatures_round_trip() {
        let body = br#"{"class_uid":2004}"#;
        let header = sign(&secret(), 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="), "{header}");
        assert_eq!(header.len(), "t=1700000000,v1=".len() + 64);
        assert_eq!(
            verify(&secret(), &header, body, 1_700_000_000, TOLERANCE),
            Ok(())
        );
        assert_eq!(
            verify(&secret(), &header, body, 1_700_000_299, TOLERANCE),
            Ok(())
        );
        assert_eq!(
            verify(&secret(), &header, body, 1_699_999_701, TOLERANCE),
            Ok(())
        );
        // A second v1 (a rotated secret) and unknown keys are accepted.
        let other = sign(
            &Secret::new("another-secret-of-length"),
            1_700_000_000,
            body,
        );
        let rotated = format!("{},{},v0=zz", header, &other["t=1700000000,".len()..]);
        assert_eq!(
            verify(&secret(), &rotated, body, 1_700_000_000, TOLERANCE),
            Ok(())
        );
    }

    #[test]
    fn signatures_match_an_independent_hmac() {
        // Computed with Python's hmac module: hmac.new(key, b"<t>.<body>", sha256).
        assert_eq!(
            sign(&Secret::new("key"), 1, b"x"),
            "t=1,v1=fc4913c41a7bf793267e2a384f3261c9436ec2cd097bd745e7b0d99113f510ec"
        );
        assert_eq!(
            sign(&secret(), 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=d77c78ac4da074c56908b55eac30358b2a7bfc573be4c76819af5102e8dcf939"
        );
    }

    #[test]
    fn tampering_is_detected() {
        let body = br#"{"severity_id":4}"#;
        let t = 1_700_000_000;
        let header = sign(&secret(), t, body);
        assert_eq!(
            verify(&secret(), &header, br#"{"severity_id":1}"#, t, TOLERANCE),
            Err(SignatureError::Mismatch),
            "another body"
        );
        assert_eq!(
            verify(
                &Secret::new("not-the-secret-at-all"),
                &header,
                body,
                t,
                TOLERANCE
            ),
            Err(SignatureError::Mismatch),
            "another secret"
        );
        let moved = header.replacen("t=1700000000", "t=1700000001", 1);
        assert_eq!(
            verify(&secret(), &moved, body, t, TOLERANCE),
            Err(SignatureError::Mismatch),
            "another timestamp"
        );
        assert!(
            matches!(
                verify(&secret(), &header, body, t + 301, TOLERANCE),
                Err(SignatureError::Stale { skew: 301, .. })
            ),
            "a replay after the tolerance"
        );
        assert!(matches!(
            verify(&secret(), &header, body, t - 301, TOLERANCE),
            Err(SignatureError::Stale { .. })
        ));
        for bad in [
            "",
            "t=1700000000",
            "v1=00",
            "t=abc,v1=00",
            "t=-1,v1=00",
            "t=1,t=1,v1=00",
            "garbage",
            &header[..header.len() - 1],
            &format!("{}g", &header[..header.len() - 1]),
        ] {
            assert_eq!(
                verify(&secret(), bad, body, t, TOLERANCE),
                Err(SignatureError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let w = Webhook {
            name: "soc".into(),
            url: "https://a.example".into(),
            secret: secret(),
            timeout: Webhook::DEFAULT_TIMEOUT,
            retries: 0,
            ca_file: None,
            ca_certs: Vec::new(),
        };
        let text = format!("{w:?}");
        assert!(text.contains("<redacted>"), "{text}");
        assert!(!text.contains(secret().expose()), "{text}");
    }

    /// What the receiver answers: a status per request, in order (the last repeats), and
    /// an optional delay before answering.
    struct Receiver {
        addr: SocketAddr,
        hits: Arc<AtomicU32>,
        seen: Arc<Seen>,
    }

    /// Bodies that passed the receiver's signature check, and the refusals.
    #[derive(Debug, Default)]
    struct Seen {
        verified: std::sync::Mutex<Vec<Vec<u8>>>,
        refused: std::sync::Mutex<Vec<String>>,
    }

    async fn receiver(statuses: Vec<u16>, delay: Duration) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU32::new(0));
        let seen = Arc::new(Seen::default());
        let (h, s) = (hits.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (h, s, statuses) = (h.clone(), s.clone(), statuses.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<Incoming>| {
                        let (h, s, statuses) = (h.clone(), s.clone(), statuses.clone());
                        async move {
                            let n = h.fetch_add(1, Ordering::SeqCst) as usize;
                            let header = req
                                .headers()
                                .get(SIGNATURE_HEADER)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let json = req
                                .headers()
                                .get("content-type")
                                .map(|v| v.as_bytes().to_vec());
                            let body = req.into_body().collect().await?.to_bytes();
                            let now = now_secs();
                            match header.map(|hv| verify(&secret(), &hv, &body, now, TOLERANCE)) {
                                Some(Ok(())) if json.as_deref() == Some(b"application/json") => {
                                    s.verified.lock().unwrap().push(body.to_vec());
                                }
                                other => s.refused.lock().unwrap().push(format!("{other:?}")),
                            }
                            tokio::time::sleep(delay).await;
                            let status =
                                statuses.get(n).or(statuses.last()).copied().unwrap_or(200);
                            Ok::<_, hyper::Error>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(b"ok")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, hits, seen }
    }

    fn hook(r: &Receiver, retries: u32, timeout: Duration) -> Webhook {
        Webhook {
            name: "test".into(),
            url: format!("http://{}/gatehouse/hook", r.addr),
            secret: secret(),
            timeout,
            retries,
            ca_file: None,
            ca_certs: Vec::new(),
        }
    }

    #[tokio::test]
    async fn delivery_is_signed_and_verified_by_the_receiver() {
        let r = receiver(vec![204], Duration::ZERO).await;
        let body = serde_json::to_vec(&ocsf_detection_finding(
            &finding(),
            Some(IncidentId(7)),
            "0.1.0",
        ))
        .unwrap();
        let receipt = deliver(&hook(&r, 3, Duration::from_secs(5)), &body)
            .await
            .unwrap();
        assert_eq!((receipt.status, receipt.attempts), (204, 1));
        assert_eq!(*r.seen.verified.lock().unwrap(), vec![body.clone()]);
        assert!(r.seen.refused.lock().unwrap().is_empty());
        let got: serde_json::Value =
            serde_json::from_slice(&r.seen.verified.lock().unwrap()[0]).unwrap();
        assert_eq!(got["class_uid"], 2004);
        assert_eq!(got["unmapped"]["gatehouse"]["incident"], "inc-7");
    }

    #[tokio::test]
    async fn server_errors_are_retried_with_backoff() {
        let r = receiver(vec![503, 500, 200], Duration::ZERO).await;
        let receipt = deliver(&hook(&r, 3, Duration::from_secs(5)), b"{}")
            .await
            .unwrap();
        assert_eq!((receipt.status, receipt.attempts), (200, 3));
        assert_eq!(r.hits.load(Ordering::SeqCst), 3);
        assert_eq!(
            r.seen.verified.lock().unwrap().len(),
            3,
            "each attempt is signed"
        );
    }

    #[tokio::test]
    async fn retries_are_bounded() {
        let r = receiver(vec![500], Duration::ZERO).await;
        let e = deliver(&hook(&r, 2, Duration::from_secs(5)), b"{}")
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                DeliveryError::Status {
                    status: 500,
                    attempts: 3,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(r.hits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_client_error_is_final() {
        let r = receiver(vec![400, 200], Duration::ZERO).await;
        let e = deliver(&hook(&r, 3, Duration::from_secs(5)), b"{}")
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                DeliveryError::Status {
                    status: 400,
                    attempts: 1,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(r.hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_slow_receiver_times_out() {
        let r = receiver(vec![200], Duration::from_secs(3)).await;
        let e = deliver(&hook(&r, 1, Duration::from_millis(200)), b"{}")
            .await
            .unwrap_err();
        assert!(
            matches!(e, DeliveryError::Timeout { attempts: 2, .. }),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn nobody_listening_is_a_transport_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let w = Webhook {
            name: "gone".into(),
            url: format!("http://{addr}/"),
            secret: secret(),
            timeout: Duration::from_secs(2),
            retries: 1,
            ca_file: None,
            ca_certs: Vec::new(),
        };
        let e = deliver(&w, b"{}").await.unwrap_err();
        assert!(
            matches!(e, DeliveryError::Transport { attempts: 2, .. }),
            "{e:?}"
        );
        let bad = Webhook {
            url: "ftp://x/".into(),
            ..w
        };
        assert!(matches!(
            deliver(&bad, b"{}").await,
            Err(DeliveryError::BadUrl { .. })
        ));
    }

    /// A CA and a server certificate for 127.0.0.1 it issued.
    fn test_pki() -> (CertificateDer<'static>, CertificateDer<'static>, Vec<u8>) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Webhook Test CA");
        let ca_der = ca.self_signed(&ca_key).unwrap().der().clone();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap().der().clone();
        (ca_der, cert, key.serialize_der())
    }

    /// An https receiver on 127.0.0.1 that answers 200 to requests whose signature verifies.
    async fn tls_receiver(cert: CertificateDer<'static>, key: Vec<u8>) -> (SocketAddr, Arc<Seen>) {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, s) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        s.refused.lock().unwrap().push("handshake".to_owned());
                        return;
                    };
                    let service = service_fn(move |req: hyper::Request<Incoming>| {
                        let s = s.clone();
                        async move {
                            let header = req
                                .headers()
                                .get(SIGNATURE_HEADER)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned)
                                .unwrap_or_default();
                            let body = req.into_body().collect().await?.to_bytes();
                            let status =
                                match verify(&secret(), &header, &body, now_secs(), TOLERANCE) {
                                    Ok(()) => {
                                        s.verified.lock().unwrap().push(body.to_vec());
                                        200
                                    }
                                    Err(e) => {
                                        s.refused.lock().unwrap().push(e.to_string());
                                        401
                                    }
                                };
                            Ok::<_, hyper::Error>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn https_delivery_to_a_receiver_behind_the_webhooks_own_ca() {
        let (ca, cert, key) = test_pki();
        let (addr, seen) = tls_receiver(cert, key).await;
        let w = Webhook {
            name: "private".into(),
            url: format!("https://{addr}/hook"),
            secret: secret(),
            timeout: Duration::from_secs(5),
            retries: 0,
            ca_file: None,
            ca_certs: vec![ca],
        };
        let receipt = deliver(&w, br#"{"class_uid":2004}"#).await.unwrap();
        assert_eq!((receipt.status, receipt.attempts), (200, 1));
        assert_eq!(
            *seen.verified.lock().unwrap(),
            vec![br#"{"class_uid":2004}"#.to_vec()]
        );
    }

    #[tokio::test]
    async fn https_to_a_certificate_outside_the_web_pki_is_refused() {
        let (_ca, cert, key) = test_pki();
        let (addr, seen) = tls_receiver(cert, key).await;
        let w = Webhook {
            name: "untrusted".into(),
            url: format!("https://{addr}/hook"),
            secret: secret(),
            timeout: Duration::from_secs(5),
            retries: 0,
            ca_file: None,
            ca_certs: Vec::new(),
        };
        let e = deliver(&w, b"{}").await.unwrap_err();
        assert!(
            matches!(e, DeliveryError::Transport { attempts: 1, .. }),
            "{e:?}"
        );
        assert!(
            seen.verified.lock().unwrap().is_empty(),
            "nothing was sent in the clear"
        );
    }
}
