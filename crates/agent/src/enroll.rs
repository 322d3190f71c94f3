//! Enrollment: a new key, a CSR, EST `simpleenroll` (with a token or an IDevID) or
//! `simplereenroll` (with the current certificate), then `cacerts`, and a check that what came
//! back is a certificate for our key, naming the device we expect, chaining to the CA.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gatehouse_types::{DeviceId, TenantId};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use tracing::info;
use zeroize::Zeroizing;

use crate::est::{EstClient, EstError};
use crate::identity::{
    CredentialsError, CsrSubject, DeviceCredentials, DeviceKey, Idevid, KeyError, names,
};

/// Longest chain built from the issued certificate up to the root.
const MAX_CHAIN: usize = 8;

/// An enrollment token as the operator hands it out: id and secret (`gatehouse token
/// create`), and optionally the device it is for. `Debug` prints no secret.
#[derive(Clone)]
pub struct EnrollmentToken {
    id: String,
    secret: Zeroizing<String>,
    device: Option<DeviceId>,
    tenant: Option<TenantId>,
}

/// Why an enrollment token's text form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The text is not `<id>:<secret>` with both parts non-empty.
    #[error("an enrollment token is written <id>:<secret>")]
    Format,
}

/// How a device proves it may enroll.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Enrollment {
    /// An operator-issued enrollment token (HTTP Basic).
    Token(EnrollmentToken),
    /// A manufacturer identity (TLS client certificate).
    Idevid(Idevid),
}

/// What an enrollment gives: the device's new credentials and the CA certificates (to
/// store as `ca.crt` and trust from then on).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Enrolled {
    /// The new certificate, its chain and key.
    pub credentials: DeviceCredentials,
    /// The CA certificates from `cacerts`.
    pub ca_certs: Vec<CertificateDer<'static>>,
}

/// Why an enrollment failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The key or CSR could not be made.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The EST exchange failed or the server refused.
    #[error(transparent)]
    Est(#[from] EstError),
    /// The issued certificate does not verify against the CA certificates.
    #[error("the issued certificate does not chain to the CA certificates: {0}")]
    Untrusted(String),
    /// The issued certificate is not usable with our key (or names no device).
    #[error("the issued certificate is unusable: {0}")]
    Credentials(#[from] CredentialsError),
    /// The server issued a certificate for another device than asked.
    #[error("the server issued a certificate for {issued}, not {expected}")]
    WrongDevice {
        /// The device asked for, `tenant/device` or `device`.
        expected: String,
        /// The device named by the certificate, `tenant/device`.
        issued: String,
    },
}

// === impl EnrollmentToken ===

impl EnrollmentToken {
    /// A token with this id and secret. The id may not contain `:`.
    pub fn new(id: impl Into<String>, secret: impl Into<String>) -> Result<Self, TokenError> {
        let id = id.into();
        let secret = Zeroizing::new(secret.into());
        if id.is_empty() || id.contains(':') || secret.is_empty() {
            return Err(TokenError::Format);
        }
        Ok(Self {
            id,
            secret,
            device: None,
            tenant: None,
        })
    }

    /// Names the device to enroll: the CSR's CN (without it the CSR names nothing and the
    /// server takes the device from the token).
    pub fn for_device(mut self, device: DeviceId) -> Self {
        self.device = Some(device);
        self
    }

    /// Names the device's tenant too: the CSR then also carries the SAN URI
    /// `gatehouse://<tenant>/device/<id>`.
    pub fn in_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// The token id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The device named, if any.
    pub fn device(&self) -> Option<&DeviceId> {
        self.device.as_ref()
    }

    fn subject(&self) -> CsrSubject {
        match &self.device {
            Some(device) => CsrSubject::Device {
                device: device.clone(),
                tenant: self.tenant.clone(),
            },
            None => CsrSubject::Empty,
        }
    }
}

impl FromStr for EnrollmentToken {
    type Err = TokenError;

    /// `<id>:<secret>`, split at the first colon.
    fn from_str(s: &str) -> Result<Self, TokenError> {
        let (id, secret) = s.split_once(':').ok_or(TokenError::Format)?;
        Self::new(id, secret)
    }
}

impl fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollmentToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("device", &self.device)
            .field("tenant", &self.tenant)
            .finish()
    }
}

// === impl EnrollError ===

impl EnrollError {
    /// Whether the server refused the credentials presented (see
    /// [`EstError::is_credential_refusal`]).
    pub fn is_credential_refusal(&self) -> bool {
        matches!(self, EnrollError::Est(e) if e.is_credential_refusal())
    }

    /// Whether the same attempt may succeed later (see [`EstError::is_transient`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, EnrollError::Est(e) if e.is_transient())
    }
}

/// Enrolls from scratch with a token or an IDevID: `simpleenroll`, then `cacerts`.
pub async fn enroll(est: &EstClient, how: &Enrollment) -> Result<Enrolled, EnrollError> {
    let key = DeviceKey::generate()?;
    let (certs, expected) = match how {
        Enrollment::Token(token) => {
            let csr = key.csr(&token.subject())?;
            info!(token = %token.id, device = ?token.device, "enrolling with a token");
            let certs = est
                .simpleenroll_token(&csr, &token.id, &token.secret)
                .await?;
            let expected = token.device.clone().map(|d| (token.tenant.clone(), d));
            (certs, expected)
        }
        Enrollment::Idevid(idevid) => {
            let csr = key.csr(&CsrSubject::Empty)?;
            info!(serial = ?idevid.serial(), "enrolling with the IDevID");
            let certs = est
                .simpleenroll_cert(&csr, idevid.chain(), idevid.key())
                .await?;
            (certs, None)
        }
    };
    let enrolled = finish(est, certs, &key).await?;
    if let Some((tenant, device)) = expected {
        check_device(&enrolled.credentials, tenant.as_ref(), &device)?;
    }
    Ok(enrolled)
}

/// Renews with the current certificate: a new key, `simplereenroll` authenticated by
/// `current`, then `cacerts`. The new certificate must name the same device.
pub async fn reenroll(
    est: &EstClient,
    current: &DeviceCredentials,
) -> Result<Enrolled, EnrollError> {
    let info = current.info();
    let key = DeviceKey::generate()?;
    let csr = key.csr(&CsrSubject::Device {
        device: info.device.clone(),
        tenant: Some(info.tenant.clone()),
    })?;
    info!(device = %info.device, serial = %info.serial_hex, "re-enrolling");
    let certs = est
        .simplereenroll(&csr, current.chain(), current.key())
        .await?;
    let enrolled = finish(est, certs, &key).await?;
    check_device(&enrolled.credentials, Some(&info.tenant), &info.device)?;
    Ok(enrolled)
}

/// Fetches the CA certificates, builds and verifies the chain of the issued certificate and
/// pairs it with `key`.
async fn finish(
    est: &EstClient,
    issued: Vec<CertificateDer<'static>>,
    key: &DeviceKey,
) -> Result<Enrolled, EnrollError> {
    let ca_certs = est.cacerts().await?;
    let chain = build_chain(&issued, &ca_certs)?;
    verify_chain(&chain, &ca_certs, SystemTime::now())?;
    let credentials = DeviceCredentials::new(chain, key.to_pem())?;
    let info = credentials.info();
    info!(
        tenant = %info.tenant,
        device = %info.device,
        serial = %info.serial_hex,
        not_after = %info.not_after,
        "certificate issued"
    );
    Ok(Enrolled {
        credentials,
        ca_certs,
    })
}

fn check_device(
    creds: &DeviceCredentials,
    tenant: Option<&TenantId>,
    device: &DeviceId,
) -> Result<(), EnrollError> {
    let info = creds.info();
    if info.device != *device || tenant.is_some_and(|t| *t != info.tenant) {
        return Err(EnrollError::WrongDevice {
            expected: match tenant {
                Some(t) => format!("{t}/{device}"),
                None => device.to_string(),
            },
            issued: format!("{}/{}", info.tenant, info.device),
        });
    }
    Ok(())
}

/// The chain a TLS client presents: the issued certificate (`issued[0]`), then each issuer
/// found by name among the other certificates of the response and the CA certificates, up
/// to but not including a self-signed root.
pub fn build_chain(
    issued: &[CertificateDer<'static>],
    ca_certs: &[CertificateDer<'static>],
) -> Result<Vec<CertificateDer<'static>>, EnrollError> {
    let leaf = issued.first().ok_or(EstError::NoCertificate)?;
    let malformed = |e: crate::identity::CertError| EnrollError::Credentials(e.into());
    let mut pool = Vec::new();
    for cert in issued.iter().skip(1).chain(ca_certs) {
        let (subject, issuer) = names(cert).map_err(malformed)?;
        pool.push((cert, subject, issuer));
    }
    let mut chain = vec![leaf.clone()];
    let (_, mut wanted) = names(leaf).map_err(malformed)?;
    while chain.len() < MAX_CHAIN {
        let Some((cert, subject, issuer)) = pool
            .iter()
            .find(|(cert, subject, _)| *subject == wanted && !chain.contains(cert))
        else {
            break;
        };
        if subject == issuer {
            break; // the root: the server has it.
        }
        chain.push((*cert).clone());
        wanted = issuer.clone();
    }
    Ok(chain)
}

/// Verifies `chain` as a TLS client certificate chain against the self-signed certificates
/// of `ca_certs` (or all of them, if none is self-signed): what the MQTTS listener will do.
fn verify_chain(
    chain: &[CertificateDer<'static>],
    ca_certs: &[CertificateDer<'static>],
    now: SystemTime,
) -> Result<(), EnrollError> {
    let (leaf, intermediates) = chain.split_first().ok_or(EstError::NoCertificate)?;
    let mut anchors: Vec<&CertificateDer<'static>> = ca_certs
        .iter()
        .filter(|c| names(c).is_ok_and(|(s, i)| s == i))
        .collect();
    if anchors.is_empty() {
        anchors = ca_certs.iter().collect();
    }
    let mut roots = RootCertStore::empty();
    for anchor in anchors {
        roots
            .add(anchor.clone())
            .map_err(|e| EnrollError::Untrusted(format!("unusable CA certificate: {e}")))?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
            .build()
            .map_err(|e| EnrollError::Untrusted(e.to_string()))?;
    let unix = UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO),
    );
    verifier
        .verify_client_cert(leaf, intermediates, unix)
        .map_err(|e| EnrollError::Untrusted(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use gatehouse_pki::LocalCa;

    use super::*;

    #[test]
    fn tokens_parse_and_hide_their_secret() {
        let t: EnrollmentToken = "tok-1:s3cr3t:with-colon".parse().expect("valid");
        assert_eq!(t.id(), "tok-1");
        assert_eq!(t.secret.as_str(), "s3cr3t:with-colon");
        assert!(!format!("{t:?}").contains("s3cr3t"));
        for bad in ["", "tok", ":secret", "tok:"] {
            assert!(bad.parse::<EnrollmentToken>().is_err(), "{bad}");
        }
    }

    #[test]
    fn chain_is_built_by_name_and_verified() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let ca = LocalCa::load_or_create(tmp.path())?;
        let issued = ca.issue_device(
            &"acme".parse()?,
            &"thermo-1".parse()?,
            Duration::from_secs(3600),
        )?;
        let leaf = issued.cert_der()?;
        // cacerts as the server sends it: issuing CA(s) and the root, in any order.
        let mut cas = ca.client_trust_anchors();
        cas.reverse();
        let chain = build_chain(std::slice::from_ref(&leaf), &cas)?;
        assert_eq!(chain, issued.presented_chain()?);
        verify_chain(&chain, &cas, SystemTime::now())?;

        let other = tempfile::tempdir()?;
        let other_ca = LocalCa::load_or_create(other.path())?;
        assert!(matches!(
            verify_chain(&chain, &other_ca.client_trust_anchors(), SystemTime::now()),
            Err(EnrollError::Untrusted(_))
        ));
        Ok(())
    }
}
