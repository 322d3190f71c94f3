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
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use gatehouse_store::IncidentId;
use gatehouse_types::{Finding, Severity};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
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

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// POSTs `body` (JSON) to the webhook, signed, over http or https (TLS checked against
/// the Web PKI roots). Each attempt has the webhook's timeout; a timeout, a transport
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
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
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
