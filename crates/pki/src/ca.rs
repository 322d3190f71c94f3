//! The local certificate authority: a self-signed root kept in a directory, issuing device
//! and server certificates.
//!
//! Issuance has two halves: the `*_params` functions turn a request into rcgen
//! [`CertificateParams`] (names, extensions, validity, serial), and [`LocalCa::sign`] signs a
//! public key with them. Today the key pair is generated here; enrollment will feed the public
//! key of a checked CSR to the same signing half.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gatehouse_types::{DeviceId, TenantId};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    PublicKeyData, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::fsutil::{self, Install, ReadPrivateError};
use crate::issued::IssuedCert;
use crate::kek::{KekError, KeySource};
use crate::pem::{PemError, load_certs_pem, load_key_pem};

mod store;
pub(crate) use store::der_to_pem;

/// Common name of the local root.
pub(crate) const CA_COMMON_NAME: &str = "Gatehouse Local CA";
/// Lifetime of the local root.
const CA_VALIDITY: time::Duration = time::Duration::days(3652);
/// Lifetime of an issuing CA: shorter than the root's, so it is rolled while the root lasts.
const ISSUING_VALIDITY: time::Duration = time::Duration::days(1826);
/// How far back `notBefore` is set, so devices with a slightly slow clock accept a new
/// certificate at once.
const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);
/// Length of a certificate serial number in bytes (positive, so 126 random bits).
const SERIAL_LEN: usize = 16;
/// Why the CA could not be loaded, created, or could not issue a certificate.
///
/// No variant carries private key material: key problems are described by kind only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// Reading or writing a file or directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The CA key file can be read or written by its group or by others.
    #[error(
        "{}: permissions {mode:04o} are too open; the CA key must be accessible by its owner only (chmod 600)",
        path.display()
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The CA directory can be written by its group or by others, who could replace the CA.
    #[error(
        "{}: directory permissions {mode:04o} let group or others replace the CA (chmod 700)",
        path.display()
    )]
    DirectoryPermissions {
        /// The CA directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A CA path is not a regular file.
    #[error("{}: not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// Only one of `ca.key` and `ca.crt` exists. Gatehouse does not overwrite the one that is
    /// there: restore the missing file, or move both away to create a new CA (which
    /// invalidates every certificate issued so far).
    #[error(
        "CA directory is incomplete: {} exists but {} is missing; restore it, or move both away to create a new CA",
        present.display(),
        missing.display()
    )]
    Incomplete {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// The CA key file does not hold a usable PKCS#8 private key.
    #[error("{}: not a usable CA private key ({reason})", path.display())]
    InvalidKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong, without any of the key.
        reason: String,
    },
    /// The CA certificate file does not hold a usable certificate.
    #[error("{}: not a usable CA certificate ({reason})", path.display())]
    InvalidCertificate {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The CA key does not belong to the CA certificate.
    #[error("{} does not match the public key of {}", key.display(), cert.display())]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// The CA certificate has expired; nothing it issues would be accepted.
    #[error("the CA certificate expired at {not_after}")]
    Expired {
        /// When it expired.
        not_after: OffsetDateTime,
    },
    /// The requested validity cannot be used (zero, too long, or an empty window).
    #[error("invalid certificate validity: {0}")]
    InvalidValidity(&'static str),
    /// A name to put into a certificate is not valid there.
    #[error("invalid name {name:?} for a certificate: {reason}")]
    InvalidName {
        /// The refused name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A server certificate was requested without any DNS name or IP address.
    #[error("a server certificate needs at least one DNS name or IP address")]
    NoServerNames,
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// Generating a key or signing a certificate failed.
    #[error("certificate generation failed: {0}")]
    Generation(String),
    /// The key-encryption key could not be obtained.
    #[error("key-encryption key: {0}")]
    Kek(#[from] KekError),
    /// A sealed CA key does not open with the key-encryption key given: the KEK is not the
    /// one the key was sealed with, or the file was altered or moved from another name.
    #[error(
        "{}: cannot decrypt the CA key: wrong key-encryption key, or the file was altered or swapped",
        path.display()
    )]
    WrongKek {
        /// The key file.
        path: PathBuf,
    },
    /// The operation needs a CA this one is not (e.g. rolling the issuing CA of an external
    /// CA, or of a CA created by an earlier version whose root issues directly).
    #[error("not supported by this CA: {0}")]
    Unsupported(&'static str),
    /// A certificate signing request was refused.
    #[error(transparent)]
    Csr(#[from] crate::csr::CsrError),
}

/// What a device certificate is issued for. Build one with [`DeviceCertParams::new`] and, where
/// an explicit window is needed (tests, enrollment), [`DeviceCertParams::with_window`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceCertParams {
    /// The tenant, written as the subject's O and into the SAN URI.
    pub tenant: TenantId,
    /// The device, written as the subject's CN and into the SAN URI.
    pub device: DeviceId,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// What a server certificate is issued for. Build one with [`ServerCertParams::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerCertParams {
    /// DNS names, written as SAN dNSName entries in the given order.
    pub dns_names: Vec<String>,
    /// IP addresses, written as SAN iPAddress entries in the given order.
    pub ips: Vec<IpAddr>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// The local certificate authority: a self-signed ECDSA P-256 root and an issuing
/// intermediate under it, kept in a directory with their private keys sealed (see
/// [`LocalCa::open`] for the layout), or an external issuing CA given as PEM
/// ([`LocalCa::from_pem`]).
///
/// Certificates are issued by the *active* issuing CA (the newest live one). After
/// [`roll_issuing_ca`](LocalCa::roll_issuing_ca) the previous issuing CAs stay in
/// [`chain_pem`](LocalCa::chain_pem) and [`client_trust_anchors`](LocalCa::client_trust_anchors)
/// until they expire, so the certificates they issued stay valid.
///
/// The private keys stay inside this value: nothing returns them and `Debug` omits them.
/// File operations are blocking; call the constructors at startup or from `spawn_blocking`.
/// Issuing is CPU-only (one key generation and one signature).
pub struct LocalCa {
    dir: PathBuf,
    root_pem: String,
    root_der: CertificateDer<'static>,
    root_not_after: OffsetDateTime,
    /// The root's signing key; `None` for an external CA (whose root we do not hold).
    root_issuer: Option<Issuer<'static, KeyPair>>,
    /// Live issuing CAs, newest (active) first. Never empty.
    issuing: Vec<IssuingCa>,
    /// Live issuing CAs (that are not the root), newest first, then the root.
    chain_pem: String,
    /// The key-encryption key, kept to seal the key of a new issuing CA; `None` for an
    /// external CA.
    kek: Option<crate::kek::Kek>,
    /// URL written into the CRL distribution point of device certificates.
    crl_url: Option<String>,
    /// CRL numbers of a CA without a directory (external CA).
    crl_counter: std::sync::atomic::AtomicU64,
}

/// One issuing CA: its certificate and signing key.
struct IssuingCa {
    /// The key's role and file stem (`issuing-3`), or `root` when the root issues directly.
    role: String,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    not_after: OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
    /// This is the root itself (a CA created by an earlier version, or an external CA with
    /// no intermediate).
    is_root: bool,
}

// === impl LocalCa ===

impl LocalCa {
    /// Loads the CA from `dir`, creating it on first use, with the default key-encryption
    /// key: the `GATEHOUSE_CA_KEK` environment variable if it is set, else a KEK generated
    /// into `<dir>/ca.kek` (mode 0600). See [`LocalCa::open`].
    ///
    /// The generated KEK sits next to the keys it protects: that keeps a fresh install
    /// working out of the box, but only protects key files that are copied without it. For
    /// real protection at rest set `GATEHOUSE_CA_KEK`, or use [`LocalCa::open`] with a
    /// [`KeySource`] outside the data directory.
    pub fn load_or_create(dir: &Path) -> Result<LocalCa, CaError> {
        Self::open(dir, &KeySource::default_for(dir))
    }

    /// The CA certificate (the root), PEM.
    pub fn cert_pem(&self) -> &str {
        &self.root_pem
    }

    /// The CA certificate (the root), DER: the trust anchor for device certificates.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.root_der.clone()
    }

    /// The CA chain, PEM: every live issuing CA, newest first, then the root. This is what
    /// `ca.crt` holds and what EST `cacerts` should return. (A certificate's own chain, in
    /// [`IssuedCert::chain_pem`], names only its issuer and the root.)
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// Every live CA certificate, DER: the root, then the issuing CAs, newest first.
    ///
    /// Give these to [`ServerTlsBuilder::client_roots`](crate::ServerTlsBuilder::client_roots)
    /// for a listener whose clients may send their leaf certificate alone (mosquitto,
    /// `openssl s_client -cert`): with the issuing CAs as anchors the chain is complete
    /// without the intermediate. Clients built with [`client_config`](crate::client_config)
    /// send the intermediate and verify with [`cert_der`](Self::cert_der) alone.
    pub fn client_trust_anchors(&self) -> Vec<CertificateDer<'static>> {
        let mut out = vec![self.root_der.clone()];
        out.extend(
            self.issuing
                .iter()
                .filter(|i| !i.is_root)
                .map(|i| i.cert_der.clone()),
        );
        out
    }

    /// The active issuing CA's certificate, DER.
    pub fn issuing_cert_der(&self) -> CertificateDer<'static> {
        self.active().cert_der.clone()
    }

    /// Every live issuing CA's certificate, DER, newest (active) first. The root appears here
    /// when it issues directly.
    pub fn issuing_certs_der(&self) -> Vec<CertificateDer<'static>> {
        self.issuing.iter().map(|i| i.cert_der.clone()).collect()
    }

    /// When the active issuing CA expires. Issued certificates never outlive it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.active().not_after
    }

    /// When the root expires.
    pub fn root_not_after(&self) -> OffsetDateTime {
        self.root_not_after
    }

    /// The directory the CA lives in (empty for an external CA given as PEM).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `url` into the CRL distribution point extension of the device certificates
    /// issued from now on (e.g. `https://gatehouse.example:8443/crl/issuing-2.crl`).
    pub fn with_crl_url(mut self, url: impl Into<String>) -> Self {
        self.crl_url = Some(url.into());
        self
    }

    fn active(&self) -> &IssuingCa {
        // `issuing` is never empty: every constructor checks it.
        &self.issuing[0]
    }

    /// Issues a device certificate and a new ECDSA P-256 key, valid from five minutes ago
    /// (clock skew) for `validity`. See [`LocalCa::issue_device_with`].
    pub fn issue_device(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        validity: Duration,
    ) -> Result<IssuedCert, CaError> {
        self.issue_device_with(DeviceCertParams::new(
            tenant.clone(),
            device.clone(),
            validity,
        )?)
    }

    /// Issues a device certificate for `params` with a new ECDSA P-256 key: subject
    /// `O=<tenant>, CN=<device>`, SAN URI `gatehouse://<tenant>/device/<device>`, extended key
    /// usage clientAuth, key usage digitalSignature (critical), no basicConstraints (an end entity),
    /// a random 16-byte serial, authority and subject key identifiers.
    ///
    /// A `not_after` beyond the CA's own expiry is cut to it (with a warning).
    pub fn issue_device_with(&self, params: DeviceCertParams) -> Result<IssuedCert, CaError> {
        let key = new_key()?;
        let cert_params = self.device_params(&params)?;
        let cert = self.sign(&cert_params, &key)?;
        Ok(IssuedCert::new(
            cert,
            &key,
            self.issued_chain(),
            &cert_params,
        ))
    }

    /// Issues a server certificate and a new ECDSA P-256 key for the given names, valid from
    /// five minutes ago for `validity`. See [`LocalCa::issue_server_with`].
    pub fn issue_server(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        validity: Duration,
    ) -> Result<IssuedCert, CaError> {
        self.issue_server_with(ServerCertParams::new(dns_names, ips, validity)?)
    }

    /// Issues a server certificate for `params` with a new ECDSA P-256 key: every DNS name
    /// and IP address given becomes a SAN (exact duplicates dropped), subject
    /// `O=Gatehouse, CN=<first name>`, extended key usage serverAuth, key usage
    /// digitalSignature (critical), no basicConstraints, random serial, authority key identifier.
    pub fn issue_server_with(&self, params: ServerCertParams) -> Result<IssuedCert, CaError> {
        let key = new_key()?;
        let cert_params = self.server_params(&params)?;
        let cert = self.sign(&cert_params, &key)?;
        Ok(IssuedCert::new(
            cert,
            &key,
            self.issued_chain(),
            &cert_params,
        ))
    }

    /// The chain handed out with a certificate the active issuing CA signs: that CA, then
    /// the root.
    pub(crate) fn issued_chain(&self) -> String {
        let active = self.active();
        if active.is_root {
            self.root_pem.clone()
        } else {
            format!("{}{}", active.cert_pem, self.root_pem)
        }
    }

    /// Signs `public_key` with the active issuing CA's key under `params`.
    pub(crate) fn sign(
        &self,
        params: &CertificateParams,
        public_key: &impl PublicKeyData,
    ) -> Result<Certificate, CaError> {
        // The subject key identifier (RFC 5280 §4.2.1.2), written here because rcgen only
        // writes it together with basicConstraints.
        let mut params = params.clone();
        let id = params.key_identifier(public_key);
        let mut value = vec![0x04, u8::try_from(id.len()).map_err(|_| CaError::Random)?];
        value.extend_from_slice(&id);
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[2, 5, 29, 14],
                value,
            ));
        params
            .signed_by(public_key, &self.active().issuer)
            .map_err(|e| CaError::Generation(e.to_string()))
    }

    /// Cuts a validity window to the CA's own and checks that it is not empty.
    fn window(
        &self,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<(OffsetDateTime, OffsetDateTime), CaError> {
        let not_before = whole_seconds(not_before);
        let mut not_after = whole_seconds(not_after);
        let ca_not_after = self.not_after();
        if not_after > ca_not_after {
            tracing::warn!(
                requested = %not_after,
                ca_not_after = %ca_not_after,
                "certificate validity cut to the CA's expiry"
            );
            not_after = ca_not_after;
        }
        if not_after <= not_before {
            return Err(CaError::InvalidValidity(
                "not_after must be later than not_before",
            ));
        }
        Ok((not_before, not_after))
    }

    pub(crate) fn device_params(&self, p: &DeviceCertParams) -> Result<CertificateParams, CaError> {
        let uri = device_uri(&p.tenant, &p.device);
        let mut params = leaf_params(self.window(p.not_before, p.not_after)?)?;
        params
            .distinguished_name
            .push(DnType::OrganizationName, p.tenant.as_str());
        params
            .distinguished_name
            .push(DnType::CommonName, p.device.as_str());
        params.subject_alt_names = vec![SanType::URI(ia5(&uri)?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if let Some(url) = &self.crl_url {
            ia5(url)?;
            params.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
                uris: vec![url.clone()],
            }];
        }
        Ok(params)
    }

    fn server_params(&self, p: &ServerCertParams) -> Result<CertificateParams, CaError> {
        let mut sans: Vec<SanType> = Vec::with_capacity(p.dns_names.len() + p.ips.len());
        for name in &p.dns_names {
            if name.is_empty() {
                return Err(CaError::InvalidName {
                    name: name.clone(),
                    reason: "empty DNS name".to_owned(),
                });
            }
            let san = SanType::DnsName(ia5(name)?);
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        for ip in &p.ips {
            let san = SanType::IpAddress(*ip);
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        let common_name = match (p.dns_names.first(), p.ips.first()) {
            (Some(name), _) => name.clone(),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => return Err(CaError::NoServerNames),
        };
        let mut params = leaf_params(self.window(p.not_before, p.not_after)?)?;
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Gatehouse");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        Ok(params)
    }
}

impl fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa")
            .field("dir", &self.dir)
            .field("root_not_after", &self.root_not_after)
            .field(
                "issuing",
                &self
                    .issuing
                    .iter()
                    .map(|i| i.role.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("not_after", &self.not_after())
            .field("crl_url", &self.crl_url)
            .field("keys", &"<redacted>")
            .finish()
    }
}

// === impl DeviceCertParams ===

impl DeviceCertParams {
    /// A device certificate valid from five minutes ago (clock skew) until `validity` from now.
    pub fn new(tenant: TenantId, device: DeviceId, validity: Duration) -> Result<Self, CaError> {
        let (not_before, not_after) = window_from_now(validity)?;
        Ok(Self {
            tenant,
            device,
            not_before,
            not_after,
        })
    }

    /// Replaces the validity window with an explicit one, e.g. one already in the past for a
    /// test of expiry, or the window an enrollment policy decided.
    pub fn with_window(mut self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }
}

// === impl ServerCertParams ===

impl ServerCertParams {
    /// A server certificate for these names, valid from five minutes ago until `validity`
    /// from now.
    pub fn new(dns_names: &[String], ips: &[IpAddr], validity: Duration) -> Result<Self, CaError> {
        let (not_before, not_after) = window_from_now(validity)?;
        Ok(Self {
            dns_names: dns_names.to_vec(),
            ips: ips.to_vec(),
            not_before,
            not_after,
        })
    }

    /// Replaces the validity window with an explicit one.
    pub fn with_window(mut self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }
}

// === helpers ===

/// The SAN URI naming a device.
pub(crate) fn device_uri(tenant: &TenantId, device: &DeviceId) -> String {
    format!("{}://{tenant}/device/{device}", crate::DEVICE_URI_SCHEME)
}

fn root_params(now: OffsetDateTime) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.not_before = whole_seconds(now - CLOCK_SKEW);
    params.not_after = whole_seconds(now + CA_VALIDITY);
    params.serial_number = Some(random_serial()?);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Gatehouse");
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    // One issuing CA below the root, none below that.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// An issuing CA under the root, number `n`, cut to the root's lifetime.
fn issuing_params(
    n: u32,
    now: OffsetDateTime,
    root_not_after: OffsetDateTime,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.not_before = whole_seconds(now - CLOCK_SKEW);
    params.not_after = whole_seconds(now + ISSUING_VALIDITY).min(root_not_after);
    params.serial_number = Some(random_serial()?);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Gatehouse");
    dn.push(DnType::CommonName, format!("Gatehouse Issuing CA {n}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Parameters shared by every end-entity certificate; the caller adds names and EKU.
fn leaf_params(
    (not_before, not_after): (OffsetDateTime, OffsetDateTime),
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);
    params.distinguished_name = DistinguishedName::new();
    // No basicConstraints: an explicit `cA FALSE` encodes a DEFAULT value, which DER forbids
    // (pkilint reports it as fatal); its absence means an end entity (RFC 5280 §4.2.1.9).
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn window_from_now(validity: Duration) -> Result<(OffsetDateTime, OffsetDateTime), CaError> {
    if validity.is_zero() {
        return Err(CaError::InvalidValidity(
            "validity must be longer than zero",
        ));
    }
    let validity = time::Duration::try_from(validity)
        .map_err(|_| CaError::InvalidValidity("validity is too long"))?;
    let now = OffsetDateTime::now_utc();
    let not_after = now
        .checked_add(validity)
        .ok_or(CaError::InvalidValidity("validity is too long"))?;
    Ok((now - CLOCK_SKEW, not_after))
}

/// X.509 times have whole seconds; keep ours the same so reported times equal the encoded ones.
fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

/// A random positive serial of exactly [`SERIAL_LEN`] bytes: the top bit is cleared (positive)
/// and the next one set (so no leading zero byte shortens it).
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; SERIAL_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn new_key() -> Result<KeyPair, CaError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| CaError::Generation(e.to_string()))
}

fn ia5(name: &str) -> Result<rcgen::string::Ia5String, CaError> {
    rcgen::string::Ia5String::try_from(name).map_err(|e| CaError::InvalidName {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

fn io_err(path: &Path, source: io::Error) -> CaError {
    CaError::Io {
        path: path.to_owned(),
        source,
    }
}

fn exists(path: &Path) -> Result<bool, CaError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path, e)),
    }
}

fn check_dir(dir: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(dir).map_err(|e| io_err(dir, e))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(CaError::DirectoryPermissions {
            path: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_positive_sixteen_bytes_and_distinct() -> Result<(), CaError> {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let s = random_serial()?.to_bytes();
            assert_eq!(s.len(), SERIAL_LEN);
            assert_eq!(s[0] & 0x80, 0, "serial must be positive");
            assert_ne!(s[0], 0, "serial must not have a leading zero byte");
            assert!(seen.insert(s), "duplicate serial");
        }
        Ok(())
    }

    #[test]
    fn zero_and_huge_validity_are_refused() {
        assert!(matches!(
            window_from_now(Duration::ZERO),
            Err(CaError::InvalidValidity(_))
        ));
        assert!(matches!(
            window_from_now(Duration::MAX),
            Err(CaError::InvalidValidity(_))
        ));
    }

    #[test]
    fn device_uri_format() -> Result<(), gatehouse_types::IdError> {
        let uri = device_uri(&TenantId::new("acme")?, &DeviceId::new("thermo-1")?);
        assert_eq!(uri, "gatehouse://acme/device/thermo-1");
        Ok(())
    }
}
