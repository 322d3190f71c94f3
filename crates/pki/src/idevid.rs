//! Manufacturer identities (IEEE 802.1AR IDevIDs): checking a device's chain against the
//! registered manufacturer CAs, reading its serial number and model, and — for tests and the
//! simulator — a manufacturer CA that issues them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use x509_parser::der_parser::oid::Oid;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::issued::{IssuedCert, serial_to_hex};

/// The subject `serialNumber` attribute (2.5.4.5), where 802.1AR puts the device's serial.
const OID_SERIAL_NUMBER: &[u64] = &[2, 5, 4, 5];

/// Why an IDevID chain was refused or could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdevidError {
    /// No certificate was presented.
    #[error("no certificate was presented")]
    Empty,
    /// No manufacturer root is registered.
    #[error("no manufacturer CA is registered")]
    NoRoots,
    /// A manufacturer root cannot be used as a trust anchor.
    #[error("unusable manufacturer CA certificate: {0}")]
    BadRoot(String),
    /// The chain does not verify against any registered manufacturer CA (unknown issuer,
    /// expired, wrong key usage, bad signature, ...).
    #[error("the IDevID chain does not verify against a registered manufacturer CA: {0}")]
    Untrusted(String),
    /// The certificate cannot be parsed.
    #[error("malformed IDevID certificate: {0}")]
    Malformed(String),
}

/// What a verified IDevID says about the device.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IdevidInfo {
    /// Index into `manufacturer_roots` of the CA the chain verified against.
    pub manufacturer_root: usize,
    /// The IDevID's issuer, RFC 4514 text.
    pub issuer: String,
    /// The IDevID's subject, RFC 4514 text.
    pub subject: String,
    /// The device's serial number: the subject `serialNumber` attribute (802.1AR).
    pub device_serial: Option<String>,
    /// The subject common name.
    pub common_name: Option<String>,
    /// SAN URIs.
    pub san_uris: Vec<String>,
    /// The certificate's own serial number, hex.
    pub cert_serial_hex: String,
    /// End of the certificate's validity (802.1AR IDevIDs often use 9999-12-31).
    pub not_after: OffsetDateTime,
}

/// Where a device's model is read from its IDevID.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModelRule {
    /// The first SAN URI starting with this prefix; the model is the rest of the URI
    /// (e.g. prefix `urn:acme:model:` and URI `urn:acme:model:thermo-x2` give `thermo-x2`).
    SanUriPrefix(String),
    /// A certificate extension with this dotted OID whose value is a DER string
    /// (UTF8String, PrintableString or IA5String): the model is the string.
    ExtensionOid(String),
    /// A subject attribute with this dotted OID (e.g. 2.5.4.46 or a private one): the model is
    /// its text value.
    SubjectAttributeOid(String),
}

// === impl ModelRule ===

impl ModelRule {
    /// Reads rules from their text form, one per line (blank lines and `#` comments
    /// ignored): `san-uri-prefix:<prefix>`, `extension:<dotted oid>` or
    /// `subject:<dotted oid>`. This is how a manufacturer's model mapping is stored.
    pub fn parse_list(text: &str) -> Result<Vec<ModelRule>, String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::parse)
            .collect()
    }

    /// The text form of `rules`, one per line; [`parse_list`](Self::parse_list) reads it back.
    pub fn format_list(rules: &[ModelRule]) -> String {
        rules
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl std::str::FromStr for ModelRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, value) = s.split_once(':').ok_or_else(|| {
            format!(
                "model rule {s:?}: expected san-uri-prefix:<prefix>, extension:<oid> or subject:<oid>"
            )
        })?;
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("model rule {s:?}: nothing after the colon"));
        }
        let oid = |v: &str| {
            let ok = v.split('.').count() >= 2
                && v.split('.')
                    .all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()));
            if ok {
                Ok(v.to_owned())
            } else {
                Err(format!("model rule {s:?}: {v:?} is not a dotted OID"))
            }
        };
        match kind.trim() {
            "san-uri-prefix" => Ok(ModelRule::SanUriPrefix(value.to_owned())),
            "extension" => Ok(ModelRule::ExtensionOid(oid(value)?)),
            "subject" => Ok(ModelRule::SubjectAttributeOid(oid(value)?)),
            other => Err(format!(
                "model rule {s:?}: unknown kind {other:?} (san-uri-prefix, extension or subject)"
            )),
        }
    }
}

impl std::fmt::Display for ModelRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelRule::SanUriPrefix(p) => write!(f, "san-uri-prefix:{p}"),
            ModelRule::ExtensionOid(o) => write!(f, "extension:{o}"),
            ModelRule::SubjectAttributeOid(o) => write!(f, "subject:{o}"),
        }
    }
}

/// Checks an IDevID chain (`chain[0]` the device certificate, then intermediates) against the
/// manufacturer CAs: signatures, validity at `now`, CA constraints and, if the certificate
/// has an extended key usage, clientAuth — the checks rustls' webpki verifier makes for a TLS
/// client certificate. On success returns the device's identity fields.
pub fn verify_idevid(
    chain: &[CertificateDer<'_>],
    manufacturer_roots: &[CertificateDer<'_>],
    now: OffsetDateTime,
) -> Result<IdevidInfo, IdevidError> {
    let (leaf, intermediates) = chain.split_first().ok_or(IdevidError::Empty)?;
    if manufacturer_roots.is_empty() {
        return Err(IdevidError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let unix = UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(now.unix_timestamp()).unwrap_or(0),
    ));
    let leaf = leaf.clone().into_owned();
    let intermediates: Vec<CertificateDer<'static>> = intermediates
        .iter()
        .map(|c| c.clone().into_owned())
        .collect();
    let mut last_error = String::new();
    for (index, root) in manufacturer_roots.iter().enumerate() {
        let mut store = RootCertStore::empty();
        store
            .add(root.clone().into_owned())
            .map_err(|e| IdevidError::BadRoot(e.to_string()))?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider.clone())
                .build()
                .map_err(|e| IdevidError::BadRoot(e.to_string()))?;
        match verifier.verify_client_cert(&leaf, &intermediates, unix) {
            Ok(_) => return read_info(&leaf, index),
            Err(e) => last_error = e.to_string(),
        }
    }
    Err(IdevidError::Untrusted(last_error))
}

fn read_info(der: &[u8], index: usize) -> Result<IdevidInfo, IdevidError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdevidError::Malformed(e.to_string()))?;
    let serial_oid =
        Oid::from(OID_SERIAL_NUMBER).map_err(|_| IdevidError::Malformed("oid".to_owned()))?;
    let device_serial = cert
        .subject()
        .iter_by_oid(&serial_oid)
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_owned);
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_owned);
    let mut san_uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(u) = name {
                san_uris.push((*u).to_owned());
            }
        }
    }
    Ok(IdevidInfo {
        manufacturer_root: index,
        issuer: cert.issuer().to_string(),
        subject: cert.subject().to_string(),
        device_serial,
        common_name,
        san_uris,
        cert_serial_hex: serial_to_hex(cert.raw_serial()),
        not_after: cert.validity().not_after.to_datetime(),
    })
}

/// The device model an IDevID names under the first rule in `rules` that matches, or `None`.
pub fn model_from_cert(der: &[u8], rules: &[ModelRule]) -> Result<Option<String>, IdevidError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdevidError::Malformed(e.to_string()))?;
    for rule in rules {
        let found = match rule {
            ModelRule::SanUriPrefix(prefix) => cert
                .subject_alternative_name()
                .ok()
                .flatten()
                .and_then(|san| {
                    san.value.general_names.iter().find_map(|n| match n {
                        GeneralName::URI(u) => u.strip_prefix(prefix.as_str()).map(str::to_owned),
                        _ => None,
                    })
                }),
            ModelRule::ExtensionOid(oid) => cert
                .iter_extensions()
                .find(|e| e.oid.to_id_string() == *oid)
                .and_then(|e| der_string(e.value)),
            ModelRule::SubjectAttributeOid(oid) => cert
                .subject()
                .iter_attributes()
                .find(|a| a.attr_type().to_id_string() == *oid)
                .and_then(|a| a.as_str().ok())
                .map(str::to_owned),
        };
        if let Some(model) = found.filter(|m| !m.is_empty()) {
            return Ok(Some(model));
        }
    }
    Ok(None)
}

/// The text of a DER UTF8String, PrintableString or IA5String.
fn der_string(der: &[u8]) -> Option<String> {
    let (&tag, rest) = der.split_first()?;
    if !matches!(tag, 0x0c | 0x13 | 0x16) {
        return None;
    }
    let (&len, body) = rest.split_first()?;
    let (len, body) = if len < 0x80 {
        (len as usize, body)
    } else if len == 0x81 {
        let (&l, b) = body.split_first()?;
        (l as usize, b)
    } else {
        return None;
    };
    std::str::from_utf8(body.get(..len)?)
        .ok()
        .map(str::to_owned)
}

/// A manufacturer CA that issues IDevIDs, for tests and the fleet simulator. Kept in memory.
pub struct ManufacturerCa {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// What an IDevID is issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IdevidParams {
    /// The device serial number (subject `serialNumber`).
    pub serial: String,
    /// The subject common name.
    pub common_name: String,
    /// A SAN URI naming the model, e.g. `urn:acme:model:thermo-x2`.
    pub model_uri: Option<String>,
    /// A model extension: dotted OID and the model, written as a UTF8String.
    pub model_extension: Option<(String, String)>,
    /// Validity from now.
    pub validity: Duration,
}

// === impl IdevidParams ===

impl IdevidParams {
    /// An IDevID for `serial` with common name `common_name`, valid ten years.
    pub fn new(serial: impl Into<String>, common_name: impl Into<String>) -> Self {
        Self {
            serial: serial.into(),
            common_name: common_name.into(),
            model_uri: None,
            model_extension: None,
            validity: Duration::from_secs(3650 * 24 * 3600),
        }
    }

    /// Adds a SAN URI naming the model.
    pub fn with_model_uri(mut self, uri: impl Into<String>) -> Self {
        self.model_uri = Some(uri.into());
        self
    }

    /// Adds a model extension (non-critical, UTF8String value).
    pub fn with_model_extension(
        mut self,
        oid: impl Into<String>,
        model: impl Into<String>,
    ) -> Self {
        self.model_extension = Some((oid.into(), model.into()));
        self
    }
}

// === impl ManufacturerCa ===

impl ManufacturerCa {
    /// A new self-signed manufacturer root (ECDSA P-256) named `O=<name>, CN=<name> IDevID CA`.
    pub fn new(name: &str) -> Result<Self, crate::CaError> {
        let gen_err = |e: rcgen::Error| crate::CaError::Generation(e.to_string());
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = CertificateParams::default();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(3650 * 2);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, name);
        dn.push(DnType::CommonName, format!("{name} IDevID CA"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The manufacturer root, DER (what the manufacturer registers).
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// The manufacturer root, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues an IDevID with a new ECDSA P-256 key: subject `serialNumber=<serial>,
    /// CN=<common name>`, clientAuth, the model SAN URI and extension if given.
    pub fn issue_idevid(&self, p: &IdevidParams) -> Result<IssuedCert, crate::CaError> {
        let gen_err = |e: rcgen::Error| crate::CaError::Generation(e.to_string());
        let invalid = |name: &str, reason: String| crate::CaError::InvalidName {
            name: name.to_owned(),
            reason,
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = CertificateParams::default();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        let validity = time::Duration::try_from(p.validity)
            .map_err(|_| crate::CaError::InvalidValidity("validity is too long"))?;
        params.not_after = now + validity;
        let mut serial = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial)
            .map_err(|_| crate::CaError::Random)?;
        serial[0] = (serial[0] & 0x7f) | 0x40;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CustomDnType(OID_SERIAL_NUMBER.to_vec()),
            DnValue::PrintableString(
                p.serial
                    .as_str()
                    .try_into()
                    .map_err(|e: rcgen::Error| invalid(&p.serial, e.to_string()))?,
            ),
        );
        dn.push(DnType::CommonName, p.common_name.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        if let Some(uri) = &p.model_uri {
            params.subject_alt_names = vec![SanType::URI(
                uri.as_str()
                    .try_into()
                    .map_err(|e: rcgen::Error| invalid(uri, e.to_string()))?,
            )];
        }
        if let Some((oid, model)) = &p.model_extension {
            let arcs = oid
                .split('.')
                .map(str::parse::<u64>)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(oid, e.to_string()))?;
            let mut value = vec![0x0c];
            if model.len() > 0xff {
                return Err(invalid(model, "model name too long".to_owned()));
            }
            if model.len() >= 0x80 {
                value.push(0x81);
            }
            value.push(model.len() as u8);
            value.extend_from_slice(model.as_bytes());
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(&arcs, value));
        }
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        Ok(IssuedCert::new(cert, &key, self.cert_pem.clone(), &params))
    }
}

impl fmt::Debug for ManufacturerCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManufacturerCa")
            .field("cert_der_len", &self.cert_der.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod model_rule_tests {
    use super::ModelRule;

    #[test]
    fn model_rules_round_trip_through_text() {
        let rules = vec![
            ModelRule::SanUriPrefix("urn:acme:model:".to_owned()),
            ModelRule::ExtensionOid("1.3.6.1.4.1.55555.1.1".to_owned()),
            ModelRule::SubjectAttributeOid("2.5.4.46".to_owned()),
        ];
        let text = ModelRule::format_list(&rules);
        assert_eq!(ModelRule::parse_list(&text), Ok(rules));
        assert_eq!(ModelRule::parse_list("\n# none\n"), Ok(vec![]));
    }

    #[test]
    fn bad_model_rules_are_refused_with_the_reason() {
        for bad in ["extension:1.x", "subject:", "serial:1.2", "san-uri-prefix"] {
            let err = ModelRule::parse_list(bad).expect_err(bad);
            assert!(err.contains(bad.split(':').next().unwrap_or(bad)), "{err}");
        }
    }
}
