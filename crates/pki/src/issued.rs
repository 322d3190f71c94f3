//! An issued certificate with its private key and CA chain, and how it is written to disk.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use rcgen::{Certificate, CertificateParams, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use crate::fsutil::{self, Install};
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
