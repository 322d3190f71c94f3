//! Enrollment, renewal and revocation against the registry: the decisions behind EST.
//!
//! [`Enroller`] joins the local CA and the registry. Every path is checked in the same
//! order: the CSR (signature, key), the credential (token, IDevID, current certificate),
//! the registry (claim, model, device status), the names the CSR asks for; only then is a
//! certificate signed, and it is recorded with its audit record in one transaction before
//! it is returned. Every refusal is written to the audit log with who asked and why.
//!
//! All methods block (SQLite, signing): async callers use `spawn_blocking`.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_store::{
    Assurance, AuditEntry, CertSerial, Device, DeviceStatus, ManufacturerId, ModelId,
    NewCertificate, NewDevice, Registry, RevokedCertificate, TokenEnrollError, TokenError, TokenId,
    TokenSecret, WriteError,
};
use gatehouse_types::{DeviceId, DeviceRef, TenantId};
use rustls_pki_types::CertificateDer;
use serde_json::json;
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::{
    CaError, CsrError, CsrPolicy, IdevidError, IssuedCertPublic, LocalCa, ModelRule, RevokedCert,
    identity_from_cert, model_from_cert, verify_csr, verify_idevid,
};

/// How certificates are issued.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EnrollPolicy {
    /// Lifetime of an issued device certificate (LDevID).
    pub validity: Duration,
    /// Keys a CSR may carry.
    pub csr: CsrPolicy,
    /// `nextUpdate` of a CRL is this long after its `thisUpdate`.
    pub crl_validity: Duration,
}

impl Default for EnrollPolicy {
    /// 30-day certificates, the default key allowlist, CRLs valid for 7 days.
    fn default() -> Self {
        Self {
            validity: crate::DEFAULT_CSR_VALIDITY,
            csr: CsrPolicy::default(),
            crl_validity: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl EnrollPolicy {
    /// A policy with this certificate lifetime and key allowlist.
    pub fn new(validity: Duration, csr: CsrPolicy, crl_validity: Duration) -> Self {
        Self {
            validity,
            csr,
            crl_validity,
        }
    }
}

/// How an enrolling device proves who it is.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// An enrollment token: its id and secret (HTTP Basic user and password).
    Token {
        /// The token id.
        id: &'a str,
        /// The token secret.
        secret: &'a str,
    },
    /// A manufacturer certificate (IDevID) presented as the TLS client certificate, with
    /// its chain: leaf first.
    Idevid {
        /// The chain the client sent.
        chain: &'a [CertificateDer<'a>],
    },
}

/// Why an enrollment or renewal was refused. [`status`](Self::status) gives the HTTP status
/// RFC 7030 calls for; the text is safe to return to the client (no key material, no
/// secrets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The request itself is wrong (malformed CSR, CSR naming no device).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No usable credential, or a credential that does not authenticate.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// Authenticated, but not allowed (identity mismatch, unclaimed serial, revoked device,
    /// used or expired token, unknown manufacturer).
    #[error("refused: {0}")]
    Refused(String),
    /// Something failed on our side; nothing was issued.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EnrollError {
    /// The HTTP status for this error: 400, 401, 403 or 500.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Unauthenticated(_) => 401,
            Self::Refused(_) => 403,
            Self::Internal(_) => 500,
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            Self::Internal(_) => "failed",
            _ => "refused",
        }
    }
}

/// A certificate issued by [`Enroller::enroll`] or [`Enroller::reenroll`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Enrolled {
    /// The device as the registry now has it.
    pub device: Device,
    /// The new certificate.
    pub certificate: IssuedCertPublic,
    /// Whether this was a renewal of a current certificate.
    pub renewal: bool,
}

/// A CRL ready to serve: the issuing CA's name (its URL stem) and the DER.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PublishedCrl {
    /// The issuing CA's name, as in `/pki/crl/<name>.crl`.
    pub issuer_name: String,
    /// The signed CRL.
    pub crl: crate::Crl,
}

/// Enrollment, renewal and revocation for one CA and one registry.
pub struct Enroller {
    registry: Arc<dyn Registry>,
    ca: Arc<LocalCa>,
    policy: EnrollPolicy,
}

impl std::fmt::Debug for Enroller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enroller")
            .field("ca", &self.ca)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// What the IDevID path learned about the device before signing.
struct IdevidDevice {
    manufacturer: ManufacturerId,
    serial: String,
    model: ModelId,
    tenant: TenantId,
    device: DeviceId,
    idevid_serial: String,
}

impl Enroller {
    /// An enroller issuing from `ca` and recording in `registry`.
    pub fn new(registry: Arc<dyn Registry>, ca: Arc<LocalCa>, policy: EnrollPolicy) -> Self {
        Self {
            registry,
            ca,
            policy,
        }
    }

    /// The CA certificates EST `cacerts` returns: every live issuing CA, then the root.
    pub fn ca_certs(&self) -> Vec<CertificateDer<'static>> {
        let mut certs = self.ca.issuing_certs_der();
        let root = self.ca.cert_der();
        if !certs.contains(&root) {
            certs.push(root);
        }
        certs
    }

    /// The CA.
    pub fn ca(&self) -> &LocalCa {
        &self.ca
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// Enrolls a device (EST `simpleenroll`): checks the CSR and the credential, issues a
    /// certificate and records it. `peer` (the client's address) goes into the audit record.
    pub fn enroll(
        &self,
        credential: Credential<'_>,
        csr_der: &[u8],
        peer: &str,
    ) -> Result<Enrolled, EnrollError> {
        let now = OffsetDateTime::now_utc();
        let (actor, result) = match credential {
            Credential::Token { id, secret } => (
                format!("token:{id}"),
                self.enroll_token(id, secret, csr_der, now, peer),
            ),
            Credential::Idevid { chain } => {
                let actor = chain
                    .first()
                    .and_then(|c| idevid_label(c))
                    .unwrap_or_else(|| "idevid:unknown".to_owned());
                (actor, self.enroll_idevid(chain, csr_der, now, peer))
            }
        };
        self.audit_refusal(&result, &actor, "refuse_enrollment", now, peer);
        result
    }

    /// Renews a certificate (EST `simplereenroll`): `current` is the chain the client
    /// authenticated the TLS session with; it must be a valid, unrevoked certificate of an
    /// active device, and the CSR must name that device.
    pub fn reenroll(
        &self,
        current: &[CertificateDer<'_>],
        csr_der: &[u8],
        peer: &str,
    ) -> Result<Enrolled, EnrollError> {
        let now = OffsetDateTime::now_utc();
        let actor = current
            .first()
            .and_then(|c| identity_from_cert(c).ok())
            .map(|i| format!("device:{}/{}", i.tenant, i.device))
            .unwrap_or_else(|| "device:unknown".to_owned());
        let result = self.reenroll_inner(current, csr_der, now, peer);
        self.audit_refusal(&result, &actor, "refuse_renewal", now, peer);
        result
    }

    /// Signs one CRL per live issuing CA listing every revoked certificate in the registry.
    pub fn crls(&self) -> Result<Vec<PublishedCrl>, EnrollError> {
        let revoked = self
            .registry
            .list_revoked(None)
            .map_err(|e| EnrollError::Internal(format!("reading revocations: {e}")))?;
        let revoked: Vec<RevokedCert> = revoked.iter().map(to_revoked_cert).collect();
        let now = OffsetDateTime::now_utc();
        let next = now
            + time::Duration::try_from(self.policy.crl_validity).unwrap_or(time::Duration::days(7));
        let crls = self
            .ca
            .crls(&revoked, now, next)
            .map_err(|e| EnrollError::Internal(format!("signing CRLs: {e}")))?;
        Ok(self
            .ca
            .issuer_names()
            .into_iter()
            .zip(crls)
            .map(|(name, crl)| PublishedCrl {
                issuer_name: name.to_owned(),
                crl,
            })
            .collect())
    }

    fn audit_refusal(
        &self,
        result: &Result<Enrolled, EnrollError>,
        actor: &str,
        action: &str,
        now: OffsetDateTime,
        peer: &str,
    ) {
        let Err(e) = result else { return };
        warn!(%actor, %peer, error = %e, "{action}");
        let entry = AuditEntry::new(now, actor, action, actor)
            .outcome(e.outcome())
            .reason(e.to_string())
            .detail(json!({ "peer": peer, "status": e.status() }));
        if let Err(err) = self.registry.append(&entry) {
            warn!(error = %err, "could not write the audit record of a refused enrollment");
        }
    }

    fn enroll_token(
        &self,
        id: &str,
        secret: &str,
        csr_der: &[u8],
        now: OffsetDateTime,
        peer: &str,
    ) -> Result<Enrolled, EnrollError> {
        let csr = verify_csr(csr_der, &self.policy.csr).map_err(csr_error)?;
        let token_id = TokenId::new(id)
            .map_err(|_| EnrollError::Unauthenticated("unknown enrollment token".into()))?;
        let token = self
            .registry
            .get_token(&token_id)
            .map_err(internal("reading the token"))?
            .ok_or_else(|| EnrollError::Unauthenticated("unknown enrollment token".into()))?;
        // The device the CSR names: its CN, or the device part of its SAN URI.
        let device = named_device(&csr, &token.tenant)?;
        csr.check_names(&token.tenant, &device)
            .map_err(|e| EnrollError::Refused(e.to_string()))?;
        let device_ref = DeviceRef::new(token.tenant.clone(), device.clone());
        if let Some(existing) = self
            .registry
            .get_device(&device_ref)
            .map_err(internal("reading the device"))?
        {
            return Err(EnrollError::Refused(format!(
                "device {device_ref} is already enrolled ({}); it renews with simplereenroll, \
                 or an operator revokes it first",
                status_text(existing.status)
            )));
        }
        // Sign first, then use the token and record the device and its certificate in one
        // transaction: a refusal there leaves the token unused and the certificate unknown
        // (it is never returned).
        let cert = self.sign(&csr, &token.tenant, &device)?;
        let new_device = NewDevice {
            device: device_ref.clone(),
            model: token.model.clone(),
            manufacturer: None,
            serial: None,
            assurance: Assurance::Token,
            tags: Vec::new(),
        };
        let use_entry = AuditEntry::new(now, format!("token:{id}"), "use_token", id)
            .detail(json!({ "device": device_ref.to_string(), "peer": peer }));
        let audit = AuditEntry::new(now, format!("token:{id}"), "enroll", device_ref.to_string())
            .reason("enrolled with a token")
            .detail(json!({
                "serial": cert.serial_hex,
                "not_after": cert.not_after.unix_timestamp(),
                "assurance": "token",
                "model": token.model.as_str(),
                "peer": peer,
            }));
        let (device, _, _) = self
            .registry
            .enroll_with_token(
                &token_id,
                &TokenSecret::from_client(secret),
                now,
                &new_device,
                &self.new_certificate(&cert, &device_ref)?,
                &use_entry,
                &audit,
            )
            .map_err(|e| match e {
                TokenEnrollError::Token(t) => token_error(t),
                TokenEnrollError::Write(w) => write_error(w),
                other => EnrollError::Internal(format!("recording the enrollment: {other}")),
            })?;
        info!(device = %device_ref, serial = %cert.serial_hex, "enrolled with a token");
        Ok(Enrolled {
            device,
            certificate: cert,
            renewal: false,
        })
    }

    fn enroll_idevid(
        &self,
        chain: &[CertificateDer<'_>],
        csr_der: &[u8],
        now: OffsetDateTime,
        peer: &str,
    ) -> Result<Enrolled, EnrollError> {
        let csr = verify_csr(csr_der, &self.policy.csr).map_err(csr_error)?;
        let d = self.identify_idevid(chain, now)?;
        csr.check_names(&d.tenant, &d.device)
            .map_err(|e| EnrollError::Refused(e.to_string()))?;
        let device_ref = DeviceRef::new(d.tenant.clone(), d.device.clone());
        let existing = self
            .registry
            .get_device(&device_ref)
            .map_err(internal("reading the device"))?;
        if let Some(existing) = &existing {
            let same = existing.manufacturer.as_ref() == Some(&d.manufacturer)
                && existing.serial.as_deref() == Some(d.serial.as_str());
            if !same {
                return Err(EnrollError::Refused(format!(
                    "device id {device_ref} belongs to another device"
                )));
            }
            if existing.status != DeviceStatus::Active {
                return Err(EnrollError::Refused(format!(
                    "device {device_ref} is {}; an operator must reinstate it before it enrolls again",
                    status_text(existing.status)
                )));
            }
        }
        let cert = self.sign(&csr, &d.tenant, &d.device)?;
        let actor = format!("idevid:{}/{}", d.manufacturer, d.serial);
        let audit = AuditEntry::new(now, &actor, "enroll", device_ref.to_string())
            .reason("enrolled with a manufacturer certificate (IDevID)")
            .detail(json!({
                "serial": cert.serial_hex,
                "not_after": cert.not_after.unix_timestamp(),
                "assurance": "idevid",
                "manufacturer": d.manufacturer.as_str(),
                "device_serial": d.serial,
                "idevid_serial": d.idevid_serial,
                "model": d.model.as_str(),
                "peer": peer,
            }));
        let new_cert = self.new_certificate(&cert, &device_ref)?;
        let device = if let Some(existing) = existing {
            self.registry
                .record_certificate(&new_cert, &audit)
                .map_err(write_error)?;
            existing
        } else {
            let new_device = NewDevice {
                device: device_ref.clone(),
                model: d.model.clone(),
                manufacturer: Some(d.manufacturer.clone()),
                serial: Some(d.serial.clone()),
                assurance: Assurance::Idevid,
                tags: Vec::new(),
            };
            self.registry
                .enroll(&new_device, &new_cert, &audit)
                .map_err(write_error)?
                .0
        };
        info!(device = %device_ref, serial = %cert.serial_hex, "enrolled with an IDevID");
        Ok(Enrolled {
            device,
            certificate: cert,
            renewal: false,
        })
    }

    /// Verifies an IDevID against the registered manufacturers and finds its claim.
    fn identify_idevid(
        &self,
        chain: &[CertificateDer<'_>],
        now: OffsetDateTime,
    ) -> Result<IdevidDevice, EnrollError> {
        let leaf = chain.first().ok_or_else(|| {
            EnrollError::Unauthenticated(
                "no credential: send an enrollment token (HTTP Basic) or a manufacturer certificate"
                    .into(),
            )
        })?;
        let manufacturers = self
            .registry
            .list_manufacturers()
            .map_err(internal("reading manufacturers"))?;
        let mut roots = Vec::new();
        let mut owner = Vec::new();
        for (i, m) in manufacturers.iter().enumerate() {
            for pem in &m.idevid_ca_pems {
                // A stored CA that no longer parses is skipped, not fatal for the others.
                if let Ok(certs) = crate::load_certs_pem(pem) {
                    for c in certs {
                        roots.push(c);
                        owner.push(i);
                    }
                }
            }
        }
        let info = verify_idevid(chain, &roots, now).map_err(|e| match e {
            IdevidError::Malformed(m) => EnrollError::BadRequest(format!("IDevID: {m}")),
            IdevidError::NoRoots | IdevidError::Untrusted(_) | IdevidError::Empty => {
                EnrollError::Refused(
                    "the client certificate is not an IDevID of a registered manufacturer".into(),
                )
            }
            other => EnrollError::Refused(other.to_string()),
        })?;
        let manufacturer = owner
            .get(info.manufacturer_root)
            .and_then(|i| manufacturers.get(*i))
            .ok_or_else(|| EnrollError::Internal("manufacturer index".into()))?;
        let serial = info
            .device_serial
            .clone()
            .ok_or_else(|| EnrollError::Refused("the IDevID has no subject serialNumber".into()))?;
        let claim = self
            .registry
            .find_claim(&manufacturer.id, &serial)
            .map_err(internal("reading claims"))?
            .ok_or_else(|| {
                EnrollError::Refused(format!(
                    "device {}/{serial} is not claimed by any tenant",
                    manufacturer.id
                ))
            })?;
        let rules = ModelRule::parse_list(&manufacturer.model_mapping)
            .map_err(|e| EnrollError::Internal(format!("manufacturer {}: {e}", manufacturer.id)))?;
        let from_cert = model_from_cert(leaf, &rules)
            .map_err(|e| EnrollError::BadRequest(format!("IDevID: {e}")))?;
        let model = match (from_cert, &claim.expected_model) {
            (Some(m), Some(expected)) if m != expected.as_str() => {
                return Err(EnrollError::Refused(format!(
                    "the IDevID names model {m:?} but the claim expects {expected}"
                )));
            }
            (Some(m), _) => ModelId::new(m.clone()).map_err(|_| {
                EnrollError::Refused(format!("the IDevID names an invalid model id {m:?}"))
            })?,
            (None, Some(expected)) => expected.clone(),
            (None, None) => {
                return Err(EnrollError::Refused(format!(
                    "the model of device {}/{serial} is unknown: no model rule of the \
                     manufacturer matches its IDevID and the claim names none",
                    manufacturer.id
                )));
            }
        };
        match self
            .registry
            .get_model(&model)
            .map_err(internal("reading the model"))?
        {
            Some(m) if m.manufacturer == manufacturer.id => {}
            Some(_) => {
                return Err(EnrollError::Refused(format!(
                    "model {model} is not a model of manufacturer {}",
                    manufacturer.id
                )));
            }
            None => {
                return Err(EnrollError::Refused(format!(
                    "model {model} is not registered"
                )));
            }
        }
        let device = DeviceId::new(serial.clone()).map_err(|e| {
            EnrollError::Refused(format!("serial {serial:?} cannot be a device id: {e}"))
        })?;
        Ok(IdevidDevice {
            manufacturer: manufacturer.id.clone(),
            serial,
            model,
            tenant: claim.tenant,
            device,
            idevid_serial: info.cert_serial_hex,
        })
    }

    fn reenroll_inner(
        &self,
        current: &[CertificateDer<'_>],
        csr_der: &[u8],
        now: OffsetDateTime,
        peer: &str,
    ) -> Result<Enrolled, EnrollError> {
        let leaf = current.first().ok_or_else(|| {
            EnrollError::Unauthenticated(
                "simplereenroll needs the current device certificate as the TLS client certificate"
                    .into(),
            )
        })?;
        verify_idevid(current, &self.ca.client_trust_anchors(), now).map_err(|_| {
            EnrollError::Unauthenticated(
                "the client certificate is not a valid certificate of this CA".into(),
            )
        })?;
        let identity = identity_from_cert(leaf)
            .map_err(|e| EnrollError::Unauthenticated(format!("client certificate: {e}")))?;
        let serial = cert_serial(leaf)?;
        let record = self
            .registry
            .get_certificate(&serial)
            .map_err(internal("reading the certificate"))?
            .ok_or_else(|| {
                EnrollError::Refused("the client certificate is not in the registry".into())
            })?;
        let device_ref = DeviceRef::new(identity.tenant.clone(), identity.device.clone());
        if record.device != device_ref {
            return Err(EnrollError::Refused(
                "the client certificate is recorded for another device".into(),
            ));
        }
        if record.status != gatehouse_store::CertStatus::Valid {
            return Err(EnrollError::Refused(format!(
                "certificate {serial} is revoked"
            )));
        }
        let device = self
            .registry
            .get_device(&device_ref)
            .map_err(internal("reading the device"))?
            .ok_or_else(|| EnrollError::Refused(format!("device {device_ref} is unknown")))?;
        if device.status != DeviceStatus::Active {
            return Err(EnrollError::Refused(format!(
                "device {device_ref} is {}",
                status_text(device.status)
            )));
        }
        let csr = verify_csr(csr_der, &self.policy.csr).map_err(csr_error)?;
        csr.check_names(&identity.tenant, &identity.device)
            .map_err(|e| EnrollError::Refused(e.to_string()))?;
        let cert = self.sign(&csr, &identity.tenant, &identity.device)?;
        let audit = AuditEntry::new(
            now,
            format!("device:{device_ref}"),
            "renew",
            device_ref.to_string(),
        )
        .reason("renewed with its current certificate")
        .detail(json!({
            "serial": cert.serial_hex,
            "previous": serial.as_str(),
            "not_after": cert.not_after.unix_timestamp(),
            "peer": peer,
        }));
        self.registry
            .record_certificate(&self.new_certificate(&cert, &device_ref)?, &audit)
            .map_err(write_error)?;
        info!(device = %device_ref, serial = %cert.serial_hex, "renewed");
        Ok(Enrolled {
            device,
            certificate: cert,
            renewal: true,
        })
    }

    fn sign(
        &self,
        csr: &crate::VerifiedCsr,
        tenant: &TenantId,
        device: &DeviceId,
    ) -> Result<IssuedCertPublic, EnrollError> {
        self.ca
            .issue_from_csr(csr, tenant, device, self.policy.validity)
            .map_err(|e| match e {
                CaError::Csr(c) => EnrollError::Refused(c.to_string()),
                other => EnrollError::Internal(format!("issuing the certificate: {other}")),
            })
    }

    fn new_certificate(
        &self,
        cert: &IssuedCertPublic,
        device: &DeviceRef,
    ) -> Result<NewCertificate, EnrollError> {
        Ok(NewCertificate {
            serial: CertSerial::new(cert.serial_hex.clone())
                .map_err(|e| EnrollError::Internal(format!("certificate serial: {e}")))?,
            device: device.clone(),
            issuer: self.ca.active_issuer_name().to_owned(),
            not_before: cert.not_before,
            not_after: cert.not_after,
            pem: cert.cert_pem.clone(),
        })
    }
}

/// The device a token-authenticated CSR names: its common name, else the device part of a
/// `gatehouse://<tenant>/device/<id>` SAN URI.
fn named_device(csr: &crate::VerifiedCsr, tenant: &TenantId) -> Result<DeviceId, EnrollError> {
    let from_uri = csr.san_uris().iter().find_map(|u| {
        u.strip_prefix(&format!("{}://{tenant}/device/", crate::DEVICE_URI_SCHEME))
            .map(str::to_owned)
    });
    let name = csr
        .common_names()
        .first()
        .cloned()
        .or(from_uri)
        .ok_or_else(|| {
            EnrollError::BadRequest(
                "the CSR names no device: put the device id in the subject common name".into(),
            )
        })?;
    DeviceId::new(name.clone())
        .map_err(|e| EnrollError::BadRequest(format!("the CSR's device id {name:?}: {e}")))
}

fn idevid_label(der: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let serial = cert
        .subject()
        .iter_by_oid(&x509_parser::oid_registry::OID_X509_SERIALNUMBER)
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("?");
    let issuer: String = cert.issuer().to_string().chars().take(120).collect();
    Some(format!("idevid:{issuer}/{serial}"))
}

fn cert_serial(der: &CertificateDer<'_>) -> Result<CertSerial, EnrollError> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| EnrollError::BadRequest(format!("client certificate: {e}")))?;
    CertSerial::from_bytes(cert.raw_serial())
        .map_err(|e| EnrollError::BadRequest(format!("client certificate serial: {e}")))
}

fn status_text(s: DeviceStatus) -> &'static str {
    match s {
        DeviceStatus::Active => "active",
        DeviceStatus::Revoked => "revoked",
        DeviceStatus::Blocked => "blocked",
        _ => "not active",
    }
}

fn csr_error(e: CsrError) -> EnrollError {
    match e {
        CsrError::IdentityMismatch { .. } => EnrollError::Refused(e.to_string()),
        CsrError::KeyNotAllowed(_) => EnrollError::Refused(e.to_string()),
        _ => EnrollError::BadRequest(e.to_string()),
    }
}

fn token_error(e: TokenError) -> EnrollError {
    match e {
        TokenError::Unknown | TokenError::BadSecret => {
            EnrollError::Unauthenticated("unknown enrollment token or wrong secret".into())
        }
        TokenError::Revoked => EnrollError::Refused("the enrollment token was revoked".into()),
        TokenError::Expired => EnrollError::Refused("the enrollment token has expired".into()),
        TokenError::Exhausted => {
            EnrollError::Refused("the enrollment token has been used up".into())
        }
        other => EnrollError::Internal(format!("checking the token: {other}")),
    }
}

fn write_error(e: WriteError) -> EnrollError {
    match e {
        WriteError::AlreadyExists { what } => {
            EnrollError::Refused(format!("{what} already exists"))
        }
        WriteError::DeviceNotActive { device } => {
            EnrollError::Refused(format!("device {device} is not active"))
        }
        WriteError::NotFound { what } => EnrollError::Refused(format!("{what} not found")),
        other => EnrollError::Internal(format!("recording the enrollment: {other}")),
    }
}

fn internal<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> EnrollError {
    move |e| EnrollError::Internal(format!("{what}: {e}"))
}

fn to_revoked_cert(r: &RevokedCertificate) -> RevokedCert {
    use crate::RevocationReason as R;
    use gatehouse_store::RevocationReason as S;
    let reason = match r.reason {
        S::Unspecified => None,
        S::KeyCompromise => Some(R::KeyCompromise),
        S::CaCompromise => Some(R::CaCompromise),
        S::AffiliationChanged => Some(R::AffiliationChanged),
        S::Superseded => Some(R::Superseded),
        S::CessationOfOperation => Some(R::CessationOfOperation),
        S::CertificateHold => Some(R::CertificateHold),
        S::RemoveFromCrl => Some(R::RemoveFromCrl),
        S::PrivilegeWithdrawn => Some(R::PrivilegeWithdrawn),
        S::AaCompromise => Some(R::AaCompromise),
        _ => Some(R::Unspecified),
    };
    RevokedCert::new(r.serial.as_str(), r.revoked_at, reason)
}
