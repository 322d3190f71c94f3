//! The registry's records: what is stored about tenants, manufacturers, models, claims,
//! devices, certificates, enrollment tokens, devices' trust state and policy sets.

use std::fmt;

use gatehouse_types::{DeviceId, DeviceRef, TenantId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Why a store identifier (manufacturer, model, token id, certificate serial) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The identifier is empty.
    #[error("identifier is empty")]
    Empty,
    /// The identifier is longer than allowed.
    #[error("identifier is {len} bytes long; at most {max} are allowed")]
    TooLong {
        /// Length of the refused identifier in bytes.
        len: usize,
        /// The maximum length.
        max: usize,
    },
    /// The identifier holds a character that is not allowed.
    #[error("identifier holds {0:?}, which is not allowed here")]
    BadChar(char),
}

fn validate(s: &str, max: usize, ok: fn(char) -> bool) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > max {
        return Err(IdError::TooLong { len: s.len(), max });
    }
    match s.chars().find(|c| !ok(*c)) {
        Some(c) => Err(IdError::BadChar(c)),
        None => Ok(()),
    }
}

fn slug_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
}

fn id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}

fn hex_char(c: char) -> bool {
    c.is_ascii_digit() || ('a'..='f').contains(&c)
}

macro_rules! store_id {
    ($(#[$m:meta])* $name:ident, $max:expr, $ok:expr) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Longest identifier accepted, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates and wraps an identifier.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate(&s, Self::MAX_LEN, $ok)?;
                Ok(Self(s))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

store_id!(
    /// A manufacturer's slug: lowercase letters, digits, `-`, `_`, `.` (e.g. `acme`).
    ManufacturerId,
    64,
    slug_char
);
store_id!(
    /// A device model's identifier, global across tenants (e.g. `acme-pump-2`).
    ModelId,
    128,
    id_char
);
store_id!(
    /// An enrollment token's public identifier (the part that may be logged).
    TokenId,
    64,
    id_char
);
store_id!(
    /// A certificate serial number as lowercase hexadecimal without separators.
    CertSerial,
    40,
    hex_char
);

// === impl CertSerial ===

impl CertSerial {
    /// A serial from its big-endian bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdError> {
        Self::new(crate::hex::encode(bytes))
    }
}

/// A tenant: the organisation that owns a fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// The tenant's id.
    pub id: TenantId,
    /// A name for people.
    pub display_name: String,
    /// When it was created.
    #[serde(with = "time::serde::timestamp")]
    pub created_at: OffsetDateTime,
}

/// A manufacturer to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewManufacturer {
    /// Its slug.
    pub id: ManufacturerId,
    /// A name for people.
    pub display_name: String,
    /// The PEM certificates of the CAs that issue its devices' IDevIDs (may be empty).
    pub idevid_ca_pems: Vec<String>,
    /// How the device model is read from an IDevID: a small JSON or TOML document whose
    /// format belongs to the PKI crate (e.g. which SAN or OID holds the model). Stored as is.
    pub model_mapping: String,
}

/// A registered manufacturer (global, not per tenant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manufacturer {
    /// Its slug.
    pub id: ManufacturerId,
    /// A name for people.
    pub display_name: String,
    /// The PEM certificates of its IDevID CAs.
    pub idevid_ca_pems: Vec<String>,
    /// The IDevID → model mapping document, as registered.
    pub model_mapping: String,
    /// When it was registered.
    #[serde(with = "time::serde::timestamp")]
    pub created_at: OffsetDateTime,
}

/// A device model to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewModel {
    /// Its id, global.
    pub id: ModelId,
    /// Who makes it.
    pub manufacturer: ManufacturerId,
    /// A name for people.
    pub display_name: String,
}

/// A device model (tenant-independent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    /// Its id.
    pub id: ModelId,
    /// Who makes it.
    pub manufacturer: ManufacturerId,
    /// A name for people.
    pub display_name: String,
    /// When it was registered.
    #[serde(with = "time::serde::timestamp")]
    pub created_at: OffsetDateTime,
}

/// One version of a model's profile (TOML text; validated by the trust crate, stored as is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelProfile {
    /// The model.
    pub model: ModelId,
    /// The version, 1 for the first, one more for each new upload.
    pub version: u32,
    /// The profile document.
    pub toml: String,
    /// When it was uploaded.
    #[serde(with = "time::serde::timestamp")]
    pub created_at: OffsetDateTime,
}

/// One device's assessment to record, with its audit record when its verdict changed.
#[derive(Debug, Clone, PartialEq)]
pub struct AssessmentRecord {
    /// The device.
    pub device: DeviceRef,
    /// The assessment document.
    pub assessment: serde_json::Value,
    /// The audit record to append with it, if any.
    pub audit: Option<crate::AuditEntry>,
}

/// What the trust engine keeps about one device. The store does not read the documents:
/// their shape belongs to the trust engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTrust {
    /// The tenant and device id.
    pub device: DeviceRef,
    /// The scan's facts (posture, firmware, services, key strength, ...), as the trust
    /// engine wrote them; `{}` until facts are first written.
    pub facts: serde_json::Value,
    /// When the facts were last written (when the row was created, for `{}`).
    #[serde(with = "time::serde::timestamp")]
    pub facts_updated_at: OffsetDateTime,
    /// An operator's pin of the tier (tier, expiry, reason, who), if one is set.
    pub pin: Option<serde_json::Value>,
    /// The latest assessment (score, tier, factors), if one was recorded.
    pub assessment: Option<serde_json::Value>,
    /// When the latest assessment was recorded.
    #[serde(with = "time::serde::timestamp::option")]
    pub assessed_at: Option<OffsetDateTime>,
}

impl DeviceTrust {
    /// Largest facts, pin or assessment document stored, in bytes of compact JSON.
    pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
}

/// A Cedar policy set as it was put in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySetRecord {
    /// 1, 2, 3, ...: the newest is the one in force.
    pub version: u32,
    /// The policy text (the whole set in force, not a diff).
    pub text: String,
    /// When it was put in force.
    #[serde(with = "time::serde::timestamp")]
    pub created_at: OffsetDateTime,
    /// Who put it in force: `operator:alice`, `system`.
    pub created_by: String,
}

impl PolicySetRecord {
    /// Longest policy text stored, in bytes.
    pub const MAX_TEXT_BYTES: usize = 1024 * 1024;
}

/// One serial number of a bulk claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewClaim {
    /// The manufacturer's serial number, as it appears in the IDevID.
    pub serial: String,
    /// The model the device should present, when the owner knows it.
    pub expected_model: Option<ModelId>,
}

/// A tenant's claim on a manufacturer serial number: the device is theirs to enroll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The owner.
    pub tenant: TenantId,
    /// The manufacturer.
    pub manufacturer: ManufacturerId,
    /// The serial number.
    pub serial: String,
    /// The model the device should present, if known.
    pub expected_model: Option<ModelId>,
    /// When it was claimed.
    #[serde(with = "time::serde::timestamp")]
    pub claimed_at: OffsetDateTime,
}

/// How strongly a device proved who it is when it enrolled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Assurance {
    /// A manufacturer IDevID certificate (hardware-backed identity).
    Idevid,
    /// An enrollment token (weaker identity).
    Token,
}

/// A device's registry status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeviceStatus {
    /// May enroll, renew and connect (subject to its verdict).
    Active,
    /// Its certificates are revoked; it must be re-claimed to come back.
    Revoked,
    /// Refused by an operator.
    Blocked,
}

/// A device to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    /// The tenant and device id.
    pub device: DeviceRef,
    /// Its model.
    pub model: ModelId,
    /// Its manufacturer, for devices that enrolled with an IDevID.
    pub manufacturer: Option<ManufacturerId>,
    /// Its manufacturer serial number, when known.
    pub serial: Option<String>,
    /// How it proved its identity.
    pub assurance: Assurance,
    /// Operator tags.
    pub tags: Vec<String>,
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The tenant and device id.
    pub device: DeviceRef,
    /// Its model.
    pub model: ModelId,
    /// Its manufacturer, if it enrolled with an IDevID.
    pub manufacturer: Option<ManufacturerId>,
    /// Its manufacturer serial number, if known.
    pub serial: Option<String>,
    /// How it proved its identity.
    pub assurance: Assurance,
    /// Its status.
    pub status: DeviceStatus,
    /// When it was registered.
    #[serde(with = "time::serde::timestamp")]
    pub created_at: OffsetDateTime,
    /// When a certificate was last issued to it.
    #[serde(with = "time::serde::timestamp::option")]
    pub last_enrolled_at: Option<OffsetDateTime>,
    /// Operator tags.
    pub tags: Vec<String>,
}

/// Which devices `list_devices` returns. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFilter {
    /// Only this tenant's devices (API callers must always set it).
    pub tenant: Option<TenantId>,
    /// Only devices in this status.
    pub status: Option<DeviceStatus>,
    /// Only devices of this model.
    pub model: Option<ModelId>,
}

/// Where a listing resumes: opaque, returned by the previous page.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(pub(crate) String);

impl Cursor {
    /// The cursor as text, for an API response.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A cursor received from a client. It is checked when used.
    pub fn from_client(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub(crate) fn after(tenant: &TenantId, device: &DeviceId) -> Self {
        let raw = format!("{}/{}", tenant, device);
        Self(crate::hex::encode(raw.as_bytes()))
    }

    pub(crate) fn decode(&self) -> Option<(TenantId, DeviceId)> {
        let bytes = crate::hex::decode(&self.0)?;
        let text = String::from_utf8(bytes).ok()?;
        let (t, d) = text.split_once('/')?;
        Some((TenantId::new(t).ok()?, DeviceId::new(d).ok()?))
    }
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in a stable order.
    pub items: Vec<T>,
    /// Where the next page starts, or `None` when this is the last.
    pub next: Option<Cursor>,
}

/// An operational certificate to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCertificate {
    /// Its serial number.
    pub serial: CertSerial,
    /// The device it was issued to.
    pub device: DeviceRef,
    /// The issuing CA's id or name (CRLs are built per issuer).
    pub issuer: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The certificate, PEM.
    pub pem: String,
}

/// Whether a certificate has been revoked (expiry is read from `not_after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CertStatus {
    /// Not revoked.
    Valid,
    /// Revoked.
    Revoked,
}

/// Why a certificate was revoked: RFC 5280 section 5.3.1 `CRLReason`, with its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RevocationReason {
    /// 0
    Unspecified,
    /// 1
    KeyCompromise,
    /// 2
    CaCompromise,
    /// 3
    AffiliationChanged,
    /// 4
    Superseded,
    /// 5
    CessationOfOperation,
    /// 6
    CertificateHold,
    /// 8
    RemoveFromCrl,
    /// 9
    PrivilegeWithdrawn,
    /// 10
    AaCompromise,
}

// === impl RevocationReason ===

impl RevocationReason {
    /// The RFC 5280 code.
    pub fn code(self) -> u8 {
        match self {
            Self::Unspecified => 0,
            Self::KeyCompromise => 1,
            Self::CaCompromise => 2,
            Self::AffiliationChanged => 3,
            Self::Superseded => 4,
            Self::CessationOfOperation => 5,
            Self::CertificateHold => 6,
            Self::RemoveFromCrl => 8,
            Self::PrivilegeWithdrawn => 9,
            Self::AaCompromise => 10,
        }
    }

    /// The reason with this RFC 5280 code (7 is unused by the RFC).
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Unspecified,
            1 => Self::KeyCompromise,
            2 => Self::CaCompromise,
            3 => Self::AffiliationChanged,
            4 => Self::Superseded,
            5 => Self::CessationOfOperation,
            6 => Self::CertificateHold,
            8 => Self::RemoveFromCrl,
            9 => Self::PrivilegeWithdrawn,
            10 => Self::AaCompromise,
            _ => return None,
        })
    }
}

/// A recorded operational certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// Its serial number.
    pub serial: CertSerial,
    /// The device it was issued to.
    pub device: DeviceRef,
    /// The issuing CA's id or name.
    pub issuer: String,
    /// Start of validity.
    #[serde(with = "time::serde::timestamp")]
    pub not_before: OffsetDateTime,
    /// End of validity.
    #[serde(with = "time::serde::timestamp")]
    pub not_after: OffsetDateTime,
    /// The certificate, PEM.
    pub pem: String,
    /// Revoked or not.
    pub status: CertStatus,
    /// When it was revoked.
    #[serde(with = "time::serde::timestamp::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Why it was revoked.
    pub revocation_reason: Option<RevocationReason>,
}

/// A revoked certificate as a CRL lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedCertificate {
    /// Its serial number.
    pub serial: CertSerial,
    /// Its issuer.
    pub issuer: String,
    /// When it was revoked.
    #[serde(with = "time::serde::timestamp")]
    pub revoked_at: OffsetDateTime,
    /// Why.
    pub reason: RevocationReason,
}

/// Which of a manufacturer's devices a batch revocation covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchScope {
    /// Every device whose IDevID came from this manufacturer.
    Manufacturer(ManufacturerId),
    /// The manufacturer's devices whose serial lies in `first..=last`. Serials are compared
    /// as byte strings, so a batch's serials must have the same length (zero-padded).
    SerialRange {
        /// The manufacturer.
        manufacturer: ManufacturerId,
        /// First serial of the batch, inclusive.
        first: String,
        /// Last serial of the batch, inclusive.
        last: String,
    },
}

/// What a batch revocation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchRevocation {
    /// The devices now `Revoked`.
    pub devices: Vec<DeviceRef>,
    /// The certificates revoked (they were valid before).
    pub certificates: Vec<Certificate>,
}

/// An enrollment token to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// The tenant devices enrolled with it join.
    pub tenant: TenantId,
    /// The model they must be.
    pub model: ModelId,
    /// How many enrollments it allows (1 for single use); at least 1.
    pub max_uses: u32,
    /// When it stops working.
    pub expires_at: OffsetDateTime,
    /// Who created it (an audit actor, e.g. `operator:alice`).
    pub created_by: String,
}

/// A stored enrollment token. The secret is not here: only its hash is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id.
    pub id: TokenId,
    /// Tenant.
    pub tenant: TenantId,
    /// Model.
    pub model: ModelId,
    /// Allowed uses.
    pub max_uses: u32,
    /// Uses so far.
    pub uses: u32,
    /// Expiry.
    #[serde(with = "time::serde::timestamp")]
    pub expires_at: OffsetDateTime,
    /// Creator.
    pub created_by: String,
    /// Creation time.
    #[serde(with = "time::serde::timestamp")]
    pub created_at: OffsetDateTime,
    /// Revoked by an operator.
    pub revoked: bool,
}

/// A token's plaintext secret, returned once by `create_token`. `Debug` prints `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(String);

impl TokenSecret {
    pub(crate) fn new(s: String) -> Self {
        Self(s)
    }

    /// A secret presented by a client.
    pub fn from_client(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself: show it to the operator once, never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}
