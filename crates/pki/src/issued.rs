//! An issued certificate with its private key and CA chain, and how it is written to disk.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use rcgen::{Certificate, CertificateParams, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::fsutil::{self, Install, ReadPrivateError};
use crate::pem::{PemError, load_certs_pem, load_key_pem};
use crate::secret::SecretPem;

/// A certificate issued by the [`LocalCa`](crate::LocalCa), with its new private key and the
/// CA chain that verifies it.
///
/// `Debug` prints the key as `<redacted>`.
#[derive(Clone)]
#[non_exhaustive]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate's private key, PKCS#8 PEM.
    pub key_pem: SecretPem,
    /// The CA certificate(s), PEM: the issuing CA up to and including the root.
    pub chain_pem: String,
    /// The serial number: lowercase hex, no separators, no leading zero bytes (the form
    /// [`tls_facts`](crate::tls_facts) reports).
    pub serial_hex: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// A certificate issued for a public key the CA was given (a CSR): no private key travels.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IssuedCertPublic {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// The CA certificate(s), PEM: the issuing CA up to and including the root.
    pub chain_pem: String,
    /// The serial number, lowercase hex (as in [`IssuedCert::serial_hex`]).
    pub serial_hex: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl IssuedCertPublic {
    pub(crate) fn new(
        cert_pem: String,
        cert_der: CertificateDer<'static>,
        chain_pem: String,
        params: &CertificateParams,
    ) -> Self {
        Self {
            cert_pem,
            cert_der,
            chain_pem,
            serial_hex: params
                .serial_number
                .as_ref()
                .map(|s| serial_to_hex(&s.to_bytes()))
                .unwrap_or_default(),
            not_before: params.not_before,
            not_after: params.not_after,
        }
    }
}

/// The files [`IssuedCert::write_to`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WrittenFiles {
    /// `<stem>.key`, mode 0600.
    pub key: PathBuf,
    /// `<stem>.crt`, the certificate alone.
    pub cert: PathBuf,
    /// `ca.crt`, the CA chain.
    pub ca: PathBuf,
}

// === impl IssuedCert ===

impl IssuedCert {
    pub(crate) fn new(
        cert: Certificate,
        key: &KeyPair,
        chain_pem: String,
        params: &CertificateParams,
    ) -> Self {
        let serial_hex = params
            .serial_number
            .as_ref()
            .map(|s| serial_to_hex(&s.to_bytes()))
            .unwrap_or_default();
        Self {
            cert_pem: cert.pem(),
            key_pem: SecretPem::new(key.serialize_pem()),
            chain_pem,
            serial_hex,
            not_before: params.not_before,
            not_after: params.not_after,
        }
    }

    /// Rebuilds an issued certificate from its PEM parts, e.g. the files a device was given:
    /// the certificate (the first `CERTIFICATE` section is the leaf), its private key and the
    /// CA chain. The certificate is parsed for its serial and validity and the key is checked
    /// to be a private key; whether it is *this certificate's* key is checked by rustls when
    /// a TLS configuration is built from it.
    pub fn from_pem(
        cert_pem: String,
        key_pem: SecretPem,
        chain_pem: String,
    ) -> Result<Self, PemError> {
        let leaf = load_certs_pem(&cert_pem)?.swap_remove(0);
        let (_, x509) = X509Certificate::from_der(&leaf)
            .map_err(|e| PemError::MalformedCertificate(e.to_string()))?;
        load_key_pem(key_pem.expose())?;
        load_certs_pem(&chain_pem)?;
        Ok(Self {
            serial_hex: serial_to_hex(x509.raw_serial()),
            not_before: x509.validity().not_before.to_datetime(),
            not_after: x509.validity().not_after.to_datetime(),
            cert_pem,
            key_pem,
            chain_pem,
        })
    }

    /// Reads back what [`write_to`](Self::write_to) wrote: `<stem>.key`, `<stem>.crt` and
    /// `ca.crt` in `dir`. A key file that group or others may access is refused
    /// ([`io::ErrorKind::PermissionDenied`]); unparsable PEM is
    /// [`io::ErrorKind::InvalidData`].
    pub fn read_from(dir: &Path, stem: &str) -> io::Result<Self> {
        check_stem(stem)?;
        let key_path = dir.join(format!("{stem}.key"));
        let mut key = fsutil::read_private(&key_path).map_err(|e| match e {
            ReadPrivateError::Io(e) => e,
            ReadPrivateError::NotAFile => io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a regular file", key_path.display()),
            ),
            ReadPrivateError::TooOpen { mode } => io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{}: permissions {mode:04o} are too open; a private key must be accessible by its owner only (chmod 600)",
                    key_path.display()
                ),
            ),
        })?;
        let cert_pem = std::fs::read_to_string(dir.join(format!("{stem}.crt")))?;
        let chain_pem = std::fs::read_to_string(dir.join("ca.crt"))?;
        let key_pem = SecretPem::new(std::mem::take(&mut *key));
        Self::from_pem(cert_pem, key_pem, chain_pem)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> Result<CertificateDer<'static>, PemError> {
        let mut certs = load_certs_pem(&self.cert_pem)?;
        Ok(certs.swap_remove(0))
    }

    /// The private key, DER.
    pub fn key_der(&self) -> Result<PrivateKeyDer<'static>, PemError> {
        load_key_pem(self.key_pem.expose())
    }

    /// The CA chain, DER, issuing CA first.
    pub fn chain_der(&self) -> Result<Vec<CertificateDer<'static>>, PemError> {
        load_certs_pem(&self.chain_pem)
    }

    /// The chain a TLS endpoint presents: the certificate, then any intermediate CAs. The
    /// root (the last certificate of [`chain_pem`](Self::chain_pem)) is left out: the peer
    /// has it as its trust anchor.
    pub fn presented_chain(&self) -> Result<Vec<CertificateDer<'static>>, PemError> {
        let mut chain = vec![self.cert_der()?];
        let mut cas = self.chain_der()?;
        cas.pop();
        chain.extend(cas);
        Ok(chain)
    }

    /// Writes `<stem>.key` (mode 0600 from creation on), `<stem>.crt` and `ca.crt` (0644) into
    /// `dir`, each atomically, creating `dir` with mode 0700 if it is missing. Existing files
    /// of those names are replaced.
    ///
    /// `stem` must be a plain file name stem (no `/`, not `.` or `..`, not `ca`).
    pub fn write_to(&self, dir: &Path, stem: &str) -> io::Result<WrittenFiles> {
        check_stem(stem)?;
        fsutil::create_private_dir(dir)?;
        let files = WrittenFiles {
            key: dir.join(format!("{stem}.key")),
            cert: dir.join(format!("{stem}.crt")),
            ca: dir.join("ca.crt"),
        };
        fsutil::write_atomic(
            &files.key,
            self.key_pem.expose().as_bytes(),
            fsutil::KEY_MODE,
            Install::Replace,
        )?;
        fsutil::write_atomic(
            &files.cert,
            self.cert_pem.as_bytes(),
            fsutil::PUBLIC_MODE,
            Install::Replace,
        )?;
        fsutil::write_atomic(
            &files.ca,
            self.chain_pem.as_bytes(),
            fsutil::PUBLIC_MODE,
            Install::Replace,
        )?;
        Ok(files)
    }
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial_hex", &self.serial_hex)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &self.key_pem)
            .field(
                "chain_pem",
                &format_args!("<{} bytes>", self.chain_pem.len()),
            )
            .finish()
    }
}

// === helpers ===

/// Lowercase hex of a serial's big-endian bytes with leading zero bytes removed (a DER
/// INTEGER may carry one to stay positive). A zero serial is `"00"`.
pub(crate) fn serial_to_hex(bytes: &[u8]) -> String {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    let trimmed = &bytes[start..];
    if trimmed.is_empty() {
        return "00".to_owned();
    }
    trimmed.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_stem(stem: &str) -> io::Result<()> {
    let bad = stem.is_empty()
        || stem == "."
        || stem == ".."
        || stem == "ca"
        || stem.contains(['/', '\0']);
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{stem:?} is not a usable file name stem"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_hex_trims_leading_zeros() {
        assert_eq!(serial_to_hex(&[0x00, 0x8f, 0x01]), "8f01");
        assert_eq!(serial_to_hex(&[0x40, 0x00]), "4000");
        assert_eq!(serial_to_hex(&[0x00]), "00");
        assert_eq!(serial_to_hex(&[]), "00");
    }

    #[test]
    fn stems_are_checked() {
        for bad in ["", ".", "..", "ca", "a/b", "../x"] {
            assert!(check_stem(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["device", "thermo-1", "server"] {
            assert!(check_stem(good).is_ok(), "{good:?} refused");
        }
    }
}
