//! Posture reports: what the device says about itself on `$gatehouse/{device}/posture`,
//! signed with the key of its certificate.
//!
//! The server scores a device partly on these reports. The wire format is the server's
//! contract (`gatehouse_trust::posture`), re-implemented here so that the agent depends on
//! no server-side code:
//!
//! - the **report**, JSON, every field optional, unknown fields refused:
//!   `{"firmware": "2.4.1", "services": ["ssh"], "default_credentials": "changed", "time":
//!   1764856800}` — `default_credentials` is `changed`, `unchanged` or `not_applicable`,
//!   `time` the device's clock in Unix seconds; names are 1 to 64 bytes without control
//!   characters, at most 64 services;
//! - the **envelope**, JSON, at most 16 KiB, unknown fields refused:
//!   `{"report": "<standard base64 of the report's bytes>", "signature": "<standard
//!   base64>"}`;
//! - the **signature**, over the report's bytes exactly as sent, with the private key of
//!   the device's operational certificate: ECDSA P-256 with SHA-256 or P-384 with SHA-384
//!   (ASN.1 DER signatures), Ed25519, or RSA PKCS#1 v1.5 with SHA-256 — whichever the key
//!   is ([`PostureSigner`]).
//!
//! [`Posture`] is what the device is configured to report (checked against the bounds when
//! it is built); [`Posture::report_now`] stamps it with the clock; [`PostureSigner::sign`]
//! makes the [`SignedPosture`] whose [`to_envelope`](SignedPosture::to_envelope) bytes are
//! published. [`send_once`] does all of it over a connection of its own.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use gatehouse_types::DeviceId;
use rcgen::{KeyPair, SigningKey as _};
use rumqttc::{AsyncClient, Event, Incoming, Outgoing, QoS};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::agent::{AgentError, MqttEndpoint, mqtt_options};
use crate::identity::DeviceCredentials;

/// Largest envelope the server accepts, in bytes.
pub const MAX_ENVELOPE: usize = 16 * 1024;
/// Most services a report may list.
pub const MAX_SERVICES: usize = 64;
/// Longest firmware version or service name, in bytes.
pub const MAX_NAME: usize = 64;

/// Why a posture could not be configured, signed or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PostureError {
    /// A firmware version outside the bounds.
    #[error("firmware version {0:?}: 1 to {MAX_NAME} bytes, no control characters")]
    Firmware(String),
    /// A service name outside the bounds.
    #[error("service {0:?}: names are 1 to {MAX_NAME} bytes, no control characters")]
    Service(String),
    /// More than [`MAX_SERVICES`] services.
    #[error("{0} services, at most {MAX_SERVICES} may be reported")]
    TooManyServices(usize),
    /// Not `changed`, `unchanged` or `not-applicable`.
    #[error("default credentials {0:?}: expected changed, unchanged or not-applicable")]
    CredentialState(String),
    /// The certificate's key cannot sign posture (not a PKCS#8 key of a supported type).
    #[error("the device key cannot sign posture reports: {0}")]
    Key(String),
    /// Signing failed.
    #[error("signing the posture report failed: {0}")]
    Sign(String),
    /// The envelope would be larger than [`MAX_ENVELOPE`].
    #[error("the posture envelope is {0} bytes, more than the {MAX_ENVELOPE} allowed")]
    TooLarge(usize),
    /// Not an envelope or report of the expected shape.
    #[error("not a posture message: {0}")]
    Malformed(String),
}

/// What a device says about its default credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialState {
    /// Changed from the model's defaults.
    Changed,
    /// Still the model's defaults.
    Unchanged,
    /// The device has no default credentials.
    NotApplicable,
}

/// What the device is configured to report: its firmware, its open services, its default
/// credentials. Every part is optional; the setters refuse what the server would refuse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Posture {
    firmware: Option<String>,
    services: BTreeSet<String>,
    default_credentials: Option<CredentialState>,
}

/// One report, as signed and sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostureReport {
    /// The firmware version the device runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// Network services the device has open (`ssh`, `http`, `telnet`, ...). Left out when
    /// empty.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub services: BTreeSet<String>,
    /// Its default credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_credentials: Option<CredentialState>,
    /// The device's clock when the report was made, in Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<i64>,
}

/// A report's bytes and the signature over them: what the envelope carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPosture {
    /// The report's JSON bytes, exactly as signed.
    pub report: Vec<u8>,
    /// The signature over them.
    pub signature: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    report: String,
    signature: String,
}

/// Signs reports with the key of the device's certificate. `Debug` prints no key.
pub struct PostureSigner {
    key: KeyPair,
}

/// What [`send_once`] published.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SentPosture {
    /// The topic: `$gatehouse/{device}/posture`.
    pub topic: String,
    /// The report.
    pub report: PostureReport,
    /// Its bytes and signature.
    pub signed: SignedPosture,
    /// The signature algorithm ([`PostureSigner::algorithm`]).
    pub algorithm: &'static str,
}

/// The topic a device publishes its posture on.
pub fn posture_topic(device: &DeviceId) -> String {
    format!("$gatehouse/{device}/posture")
}

/// The topic the server tells an MQTT 5 device about changes to its session on (removed
/// subscriptions), which the device receives without subscribing.
pub fn notice_topic(device: &DeviceId) -> String {
    format!("$gatehouse/{device}/notice")
}

// === impl CredentialState ===

impl CredentialState {
    /// The name on the wire: `changed`, `unchanged`, `not_applicable`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Changed => "changed",
            Self::Unchanged => "unchanged",
            Self::NotApplicable => "not_applicable",
        }
    }
}

impl fmt::Display for CredentialState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CredentialState {
    type Err = PostureError;

    /// `changed`, `unchanged`, `not-applicable` (or `not_applicable`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "changed" => Ok(Self::Changed),
            "unchanged" => Ok(Self::Unchanged),
            "not-applicable" | "not_applicable" => Ok(Self::NotApplicable),
            other => Err(PostureError::CredentialState(
                other.chars().take(64).collect(),
            )),
        }
    }
}

// === impl Posture ===

impl Posture {
    /// A posture that says nothing yet (its reports carry only the time).
    pub fn new() -> Self {
        Self::default()
    }

    /// Reports `version` as the firmware.
    pub fn with_firmware(mut self, version: impl Into<String>) -> Result<Self, PostureError> {
        let version = version.into();
        if !valid_name(&version) {
            return Err(PostureError::Firmware(truncated(&version)));
        }
        self.firmware = Some(version);
        Ok(self)
    }

    /// Reports `name` as an open service (a name given twice is listed once).
    pub fn with_service(mut self, name: impl Into<String>) -> Result<Self, PostureError> {
        let name = name.into();
        if !valid_name(&name) {
            return Err(PostureError::Service(truncated(&name)));
        }
        self.services.insert(name);
        if self.services.len() > MAX_SERVICES {
            return Err(PostureError::TooManyServices(self.services.len()));
        }
        Ok(self)
    }

    /// Reports the state of the default credentials.
    pub fn with_default_credentials(mut self, state: CredentialState) -> Self {
        self.default_credentials = Some(state);
        self
    }

    /// The firmware version reported, if any.
    pub fn firmware(&self) -> Option<&str> {
        self.firmware.as_deref()
    }

    /// The services reported open.
    pub fn services(&self) -> &BTreeSet<String> {
        &self.services
    }

    /// The default-credential state reported, if any.
    pub fn default_credentials(&self) -> Option<CredentialState> {
        self.default_credentials
    }

    /// The report made at `time` (Unix seconds, the device's clock).
    pub fn report_at(&self, time: i64) -> PostureReport {
        PostureReport {
            firmware: self.firmware.clone(),
            services: self.services.clone(),
            default_credentials: self.default_credentials,
            time: Some(time),
        }
    }

    /// The report made now, by the device's clock.
    pub fn report_now(&self) -> PostureReport {
        self.report_at(OffsetDateTime::now_utc().unix_timestamp())
    }
}

// === impl PostureReport ===

impl PostureReport {
    /// The report's JSON bytes: what is signed and sent.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings, a set of strings, an enum and an integer always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a report as the server does: the shape, then the bounds.
    pub fn parse(bytes: &[u8]) -> Result<Self, PostureError> {
        let report: Self =
            serde_json::from_slice(bytes).map_err(|e| PostureError::Malformed(e.to_string()))?;
        if let Some(fw) = &report.firmware
            && !valid_name(fw)
        {
            return Err(PostureError::Firmware(truncated(fw)));
        }
        if report.services.len() > MAX_SERVICES {
            return Err(PostureError::TooManyServices(report.services.len()));
        }
        if let Some(bad) = report.services.iter().find(|s| !valid_name(s)) {
            return Err(PostureError::Service(truncated(bad)));
        }
        Ok(report)
    }
}

// === impl SignedPosture ===

impl SignedPosture {
    /// The envelope: `{"report": "<base64>", "signature": "<base64>"}`.
    pub fn to_envelope(&self) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let envelope = Envelope {
            report: b64.encode(&self.report),
            signature: b64.encode(&self.signature),
        };
        serde_json::to_vec(&envelope).unwrap_or_default()
    }

    /// Reads an envelope (at most [`MAX_ENVELOPE`] bytes, no other fields, standard
    /// base64). The signature is not checked.
    pub fn parse(bytes: &[u8]) -> Result<Self, PostureError> {
        if bytes.len() > MAX_ENVELOPE {
            return Err(PostureError::TooLarge(bytes.len()));
        }
        let envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|e| PostureError::Malformed(e.to_string()))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let report = b64
            .decode(envelope.report)
            .map_err(|e| PostureError::Malformed(format!("`report` is not base64: {e}")))?;
        let signature = b64
            .decode(envelope.signature)
            .map_err(|e| PostureError::Malformed(format!("`signature` is not base64: {e}")))?;
        Ok(Self { report, signature })
    }
}

// === impl PostureSigner ===

impl PostureSigner {
    /// A signer with the key of `creds` (which [`DeviceCredentials::new`] checked is the
    /// certificate's). The key must be PKCS#8 — what the agent generates and stores — and
    /// ECDSA P-256 or P-384, Ed25519 or RSA.
    pub fn new(creds: &DeviceCredentials) -> Result<Self, PostureError> {
        let key = KeyPair::try_from(creds.key()).map_err(|e| PostureError::Key(e.to_string()))?;
        Ok(Self { key })
    }

    /// The signature algorithm: `ecdsa-p256-sha256`, `ecdsa-p384-sha384`, `ed25519` or
    /// `rsa-pkcs1-sha256`.
    pub fn algorithm(&self) -> &'static str {
        let alg = self.key.algorithm();
        if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
            "ecdsa-p256-sha256"
        } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
            "ecdsa-p384-sha384"
        } else if alg == &rcgen::PKCS_ED25519 {
            "ed25519"
        } else {
            // rcgen reads every PKCS#8 RSA key as RSA PKCS#1 v1.5 with SHA-256.
            "rsa-pkcs1-sha256"
        }
    }

    /// Signs `report`: its bytes, the signature over them, checked to fit an envelope.
    pub fn sign(&self, report: &PostureReport) -> Result<SignedPosture, PostureError> {
        let bytes = report.to_bytes();
        let signature = self
            .key
            .sign(&bytes)
            .map_err(|e| PostureError::Sign(e.to_string()))?;
        let signed = SignedPosture {
            report: bytes,
            signature,
        };
        let size = signed.to_envelope().len();
        if size > MAX_ENVELOPE {
            return Err(PostureError::TooLarge(size));
        }
        Ok(signed)
    }
}

impl fmt::Debug for PostureSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostureSigner")
            .field("algorithm", &self.algorithm())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Reports `posture` once: connects to `mqtt` with `creds` (trusting `trust` for the
/// server), publishes one signed report at QoS 1, waits for the broker's PUBACK, and
/// disconnects with DISCONNECT. The whole exchange must finish within `timeout`.
///
/// A PUBACK means the broker took the message. The server may still drop it: it processes
/// one report per device per second, and only from devices its policies let publish
/// posture (an MQTT 3.1.1 PUBACK cannot say that a publish was refused).
pub async fn send_once(
    creds: &DeviceCredentials,
    trust: &[CertificateDer<'static>],
    mqtt: &MqttEndpoint,
    posture: &Posture,
    timeout: Duration,
) -> Result<SentPosture, AgentError> {
    let signer = PostureSigner::new(creds)?;
    let options = mqtt_options(creds, trust, mqtt, Duration::from_secs(30))?;
    let (client, mut eventloop) = AsyncClient::new(options, 8);
    let info = creds.info();
    let topic = posture_topic(&info.device);
    let exchange = async {
        // CONNACK (a refusal is an error of the first poll).
        loop {
            if let Event::Incoming(Incoming::ConnAck(_)) = eventloop.poll().await? {
                break;
            }
        }
        let report = posture.report_now();
        let signed = signer.sign(&report)?;
        client
            .try_publish(topic.clone(), QoS::AtLeastOnce, false, signed.to_envelope())
            .map_err(|e| AgentError::Request(e.to_string()))?;
        loop {
            if let Event::Incoming(Incoming::PubAck(_)) = eventloop.poll().await? {
                break;
            }
        }
        client
            .try_disconnect()
            .map_err(|e| AgentError::Request(e.to_string()))?;
        loop {
            if let Event::Outgoing(Outgoing::Disconnect) = eventloop.poll().await? {
                break;
            }
        }
        Ok::<_, AgentError>(SentPosture {
            topic: topic.clone(),
            report,
            signed,
            algorithm: signer.algorithm(),
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| AgentError::Timeout(timeout))?
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME && s.chars().all(|c| !c.is_control())
}

/// At most 80 characters of `s`, for an error message.
fn truncated(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_is_the_contract() -> Result<(), PostureError> {
        // The example of the server's documentation, byte for byte.
        let wire = r#"{"firmware":"2.4.1","services":["ssh"],"default_credentials":"changed","time":1764856800}"#;
        let posture = Posture::new()
            .with_firmware("2.4.1")?
            .with_service("ssh")?
            .with_default_credentials(CredentialState::Changed);
        let report = posture.report_at(1_764_856_800);
        assert_eq!(String::from_utf8_lossy(&report.to_bytes()), wire);
        assert_eq!(PostureReport::parse(wire.as_bytes())?, report);

        // Every credential state by its wire name; what is not configured is left out.
        for (state, name) in [
            (CredentialState::Changed, "changed"),
            (CredentialState::Unchanged, "unchanged"),
            (CredentialState::NotApplicable, "not_applicable"),
        ] {
            let bytes = Posture::new()
                .with_default_credentials(state)
                .report_at(7)
                .to_bytes();
            assert_eq!(
                String::from_utf8_lossy(&bytes),
                format!(r#"{{"default_credentials":"{name}","time":7}}"#)
            );
            assert_eq!(name.parse::<CredentialState>()?, state);
        }
        assert_eq!(
            "not-applicable".parse::<CredentialState>()?,
            CredentialState::NotApplicable
        );
        assert!("maybe".parse::<CredentialState>().is_err());
        assert_eq!(Posture::new().report_at(0).to_bytes(), br#"{"time":0}"#);
        Ok(())
    }

    #[test]
    fn the_bounds_are_the_servers() {
        assert!(Posture::new().with_firmware("").is_err());
        assert!(Posture::new().with_firmware("x".repeat(MAX_NAME)).is_ok());
        assert!(
            Posture::new()
                .with_firmware("x".repeat(MAX_NAME + 1))
                .is_err()
        );
        // Bytes, not characters: 33 two-byte characters are 66 bytes.
        assert!(Posture::new().with_firmware("é".repeat(33)).is_err());
        assert!(Posture::new().with_firmware("2.4\n").is_err());
        assert!(Posture::new().with_service("ssh\u{0}").is_err());
        assert!(Posture::new().with_service("http alt").is_ok());

        let mut posture = Posture::new();
        for i in 0..MAX_SERVICES {
            posture = posture
                .with_service(format!("svc-{i}"))
                .expect("within bounds");
        }
        // The same name again is no new service.
        let posture = posture.with_service("svc-0").expect("a duplicate");
        assert_eq!(posture.services().len(), MAX_SERVICES);
        assert_eq!(
            posture.with_service("one-more"),
            Err(PostureError::TooManyServices(MAX_SERVICES + 1))
        );

        assert!(PostureReport::parse(br#"{"firmware":""}"#).is_err());
        assert!(PostureReport::parse(br#"{"extra":1}"#).is_err());
        assert!(PostureReport::parse(br#"{"default_credentials":"sometimes"}"#).is_err());
        assert!(PostureReport::parse(br#"{"services":["a\u0000"]}"#).is_err());
        assert_eq!(PostureReport::parse(b"{}"), Ok(PostureReport::default()));
    }

    #[test]
    fn envelopes_round_trip_and_refuse_what_the_server_refuses() -> Result<(), PostureError> {
        let signed = SignedPosture {
            report: br#"{"time":1}"#.to_vec(),
            signature: vec![0, 1, 2, 250, 251, 252],
        };
        let envelope = signed.to_envelope();
        let json: serde_json::Value = serde_json::from_slice(&envelope)
            .map_err(|e| PostureError::Malformed(e.to_string()))?;
        let object = json.as_object().expect("an object");
        assert_eq!(
            object.keys().map(String::as_str).collect::<Vec<_>>(),
            ["report", "signature"]
        );
        // Standard base64, with padding.
        assert_eq!(json["report"], "eyJ0aW1lIjoxfQ==");
        assert_eq!(json["signature"], "AAEC+vv8");
        assert_eq!(SignedPosture::parse(&envelope)?, signed);

        assert!(SignedPosture::parse(br#"{"report":"e30=","signature":"AA==","x":1}"#).is_err());
        assert!(SignedPosture::parse(br#"{"report":"!!","signature":"AA=="}"#).is_err());
        assert!(matches!(
            SignedPosture::parse(&vec![b' '; MAX_ENVELOPE + 1]),
            Err(PostureError::TooLarge(_))
        ));
        Ok(())
    }
}
