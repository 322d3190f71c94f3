//! The key-encryption key (KEK) that protects the CA's private keys at rest, and the sealed
//! envelope the keys are stored in.
//!
//! A key file holds one PEM-armoured envelope:
//!
//! ```text
//! -----BEGIN GATEHOUSE ENCRYPTED PRIVATE KEY-----
//! base64( version 0x01 | nonce (12 bytes) | AES-256-GCM(PKCS#8 DER) + tag )
//! -----END GATEHOUSE ENCRYPTED PRIVATE KEY-----
//! ```
//!
//! The associated data binds the envelope to the key's role (its file stem, `root` or
//! `issuing-3`), so an envelope moved to another file name does not open: an attacker who can
//! write the directory cannot swap the root key for an issuing key.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::fsutil::{self, Install, ReadPrivateError};

/// Environment variable [`LocalCa::load_or_create`](crate::LocalCa::load_or_create) reads the
/// KEK from when it is set.
pub const KEK_ENV: &str = "GATEHOUSE_CA_KEK";

/// Envelope format version.
const VERSION: u8 = 1;
/// PEM label of a sealed key.
pub(crate) const SEALED_LABEL: &str = "GATEHOUSE ENCRYPTED PRIVATE KEY";
/// PBKDF2-HMAC-SHA256 iterations for a passphrase KEK (OWASP 2023 guidance).
const PBKDF2_ITERATIONS: u32 = 600_000;
/// Shortest passphrase accepted as a KEK.
const MIN_PASSPHRASE: usize = 16;
/// Length of the salt stored beside the keys for a passphrase KEK.
const SALT_LEN: usize = 16;
/// File (inside the CA directory) holding the salt of a passphrase KEK. Not secret.
pub(crate) const SALT_FILE: &str = "kek.salt";

/// Where the key-encryption key comes from.
///
/// The KEK is either 32 random bytes, base64-encoded (what [`KeySource::Generated`] writes),
/// or a passphrase of at least 16 characters, stretched with PBKDF2-HMAC-SHA256 (600,000
/// iterations) and a random salt kept in `kek.salt` in the CA directory.
///
/// For real protection at rest the KEK must live *outside* the data directory (an
/// environment variable set by the service manager, a secrets mount, a TPM-unsealed file):
/// a KEK stored next to the keys only protects copies of the key files that leave without it.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySource {
    /// The KEK is the value of this environment variable.
    Env(String),
    /// The KEK is the content of this file (mode 0600 required); it must exist.
    File(PathBuf),
    /// The KEK is the content of this file, which is created (mode 0600, 32 random bytes,
    /// base64) if it is missing.
    Generated(PathBuf),
}

/// Why the key-encryption key could not be obtained or used. No variant carries the KEK or
/// any key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KekError {
    /// The environment variable is not set (or not valid UTF-8).
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    /// The KEK file could not be read or created.
    #[error("{}: {source}", path.display())]
    Io {
        /// The KEK file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The KEK file can be read by group or others.
    #[error("{}: permissions {mode:04o} are too open for a key-encryption key (chmod 600)", path.display())]
    Permissions {
        /// The KEK file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The KEK is neither 32 bytes of base64 nor a passphrase of at least 16 characters.
    #[error(
        "the key-encryption key is too weak: give 32 random bytes in base64 or a passphrase of at least 16 characters"
    )]
    Weak,
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// A 256-bit key-encryption key. Wiped on drop; `Debug` prints `<redacted>`.
#[derive(Clone)]
pub(crate) struct Kek(Zeroizing<[u8; 32]>);

/// Why a sealed key could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// Not an envelope of a known version.
    Malformed(&'static str),
    /// Authentication failed: wrong KEK, or the envelope belongs to another file.
    WrongKek,
}

// === impl KeySource ===

impl KeySource {
    /// The default: [`KEK_ENV`] if it is set, else a KEK generated into `ca.kek` inside the CA
    /// directory.
    pub fn default_for(dir: &Path) -> Self {
        if std::env::var_os(KEK_ENV).is_some() {
            KeySource::Env(KEK_ENV.to_owned())
        } else {
            KeySource::Generated(dir.join("ca.kek"))
        }
    }

    /// Reads (or creates) the KEK. `salt_dir` is where a passphrase KEK keeps its salt.
    pub(crate) fn load(&self, salt_dir: &Path) -> Result<Kek, KekError> {
        let text = match self {
            KeySource::Env(var) => {
                Zeroizing::new(std::env::var(var).map_err(|_| KekError::EnvMissing(var.clone()))?)
            }
            KeySource::File(path) => read_kek_file(path)?,
            KeySource::Generated(path) => match read_kek_file(path) {
                Err(KekError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    generate_kek_file(path)?
                }
                other => other?,
            },
        };
        Kek::from_text(&text, salt_dir)
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env(var) => f.debug_tuple("Env").field(var).finish(),
            KeySource::File(p) => f.debug_tuple("File").field(p).finish(),
            KeySource::Generated(p) => f.debug_tuple("Generated").field(p).finish(),
        }
    }
}

fn read_kek_file(path: &Path) -> Result<Zeroizing<String>, KekError> {
    fsutil::read_private(path).map_err(|e| match e {
        ReadPrivateError::Io(source) => KekError::Io {
            path: path.to_owned(),
            source,
        },
        ReadPrivateError::NotAFile => KekError::Io {
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        },
        ReadPrivateError::TooOpen { mode } => KekError::Permissions {
            path: path.to_owned(),
            mode,
        },
    })
}

fn generate_kek_file(path: &Path) -> Result<Zeroizing<String>, KekError> {
    let mut raw = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(raw.as_mut())
        .map_err(|_| KekError::Random)?;
    let text = Zeroizing::new(format!("{}\n", B64.encode(raw.as_ref())));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fsutil::create_private_dir(parent).map_err(|source| KekError::Io {
            path: parent.to_owned(),
            source,
        })?;
    }
    match fsutil::write_atomic(path, text.as_bytes(), fsutil::KEY_MODE, Install::NoClobber) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "generated a key-encryption key for the CA keys");
            Ok(text)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_kek_file(path),
        Err(source) => Err(KekError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

// === impl Kek ===

impl Kek {
    /// 32 bytes of base64, or else a passphrase stretched with the salt in `salt_dir`.
    pub(crate) fn from_text(text: &str, salt_dir: &Path) -> Result<Kek, KekError> {
        let text = text.trim();
        if let Ok(bytes) = B64.decode(text) {
            let bytes = Zeroizing::new(bytes);
            if let Ok(raw) = <[u8; 32]>::try_from(bytes.as_slice()) {
                return Ok(Kek(Zeroizing::new(raw)));
            }
        }
        if text.chars().count() < MIN_PASSPHRASE {
            return Err(KekError::Weak);
        }
        let salt = load_or_create_salt(salt_dir)?;
        let mut out = Zeroizing::new([0u8; 32]);
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(PBKDF2_ITERATIONS).ok_or(KekError::Weak)?,
            &salt,
            text.as_bytes(),
            out.as_mut(),
        );
        Ok(Kek(out))
    }

    /// A KEK from raw bytes (tests).
    #[cfg(test)]
    pub(crate) fn from_bytes(raw: [u8; 32]) -> Kek {
        Kek(Zeroizing::new(raw))
    }

    fn key(&self) -> Result<LessSafeKey, ()> {
        UnboundKey::new(&AES_256_GCM, self.0.as_ref())
            .map(LessSafeKey::new)
            .map_err(|_| ())
    }

    /// Seals `plaintext` (a PKCS#8 DER key) for the file of role `role`; returns PEM text.
    pub(crate) fn seal(&self, role: &str, plaintext: &[u8]) -> Result<String, KekError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KekError::Random)?;
        let key = self.key().map_err(|()| KekError::Weak)?;
        let mut buf = Zeroizing::new(plaintext.to_vec());
        let aad = aad(role);
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_bytes()),
            &mut *buf,
        )
        .map_err(|_| KekError::Random)?;
        let mut body = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        body.push(VERSION);
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&buf);
        let b64 = B64.encode(&body);
        let mut pem = format!("-----BEGIN {SEALED_LABEL}-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str(&format!("-----END {SEALED_LABEL}-----\n"));
        Ok(pem)
    }

    /// Opens an envelope written by [`seal`](Self::seal) for the same role.
    pub(crate) fn open(&self, role: &str, pem: &str) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let body = pem_body(pem).ok_or(OpenError::Malformed("not a sealed key"))?;
        let raw = B64
            .decode(body.as_bytes())
            .map_err(|_| OpenError::Malformed("the base64 body does not decode"))?;
        let (&version, rest) = raw
            .split_first()
            .ok_or(OpenError::Malformed("empty envelope"))?;
        if version != VERSION {
            return Err(OpenError::Malformed("unknown envelope version"));
        }
        if rest.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(OpenError::Malformed("envelope too short"));
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| OpenError::Malformed("bad nonce"))?;
        let key = self.key().map_err(|()| OpenError::WrongKek)?;
        let mut buf = Zeroizing::new(ct.to_vec());
        let aad = aad(role);
        let plain_len = key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| OpenError::WrongKek)?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

/// Whether `pem` is a sealed key (rather than a plain PKCS#8 key from an earlier version).
pub(crate) fn is_sealed(pem: &str) -> bool {
    pem.contains(&format!("-----BEGIN {SEALED_LABEL}-----"))
}

fn aad(role: &str) -> String {
    format!("gatehouse-ca-key/v{VERSION}/{role}")
}

fn pem_body(pem: &str) -> Option<String> {
    let begin = format!("-----BEGIN {SEALED_LABEL}-----");
    let end = format!("-----END {SEALED_LABEL}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = pem[start..].find(&end)? + start;
    Some(pem[start..stop].split_whitespace().collect())
}

fn load_or_create_salt(dir: &Path) -> Result<Vec<u8>, KekError> {
    let path = dir.join(SALT_FILE);
    let io_err = |source| KekError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => return B64.decode(text.trim()).map_err(|_| KekError::Weak),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let mut salt = [0u8; SALT_LEN];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| KekError::Random)?;
    fsutil::create_private_dir(dir).map_err(io_err)?;
    match fsutil::write_atomic(
        &path,
        format!("{}\n", B64.encode(salt)).as_bytes(),
        fsutil::PUBLIC_MODE,
        Install::NoClobber,
    ) {
        Ok(()) => Ok(salt.to_vec()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(&path).map_err(io_err)?;
            B64.decode(text.trim()).map_err(|_| KekError::Weak)
        }
        Err(e) => Err(io_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_role_binding() {
        let kek = Kek::from_bytes([7; 32]);
        let sealed = kek.seal("root", b"secret key bytes").expect("seal");
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("secret"));
        assert_eq!(
            &*kek.open("root", &sealed).expect("open"),
            b"secret key bytes"
        );
        assert_eq!(kek.open("issuing-1", &sealed), Err(OpenError::WrongKek));
        let other = Kek::from_bytes([8; 32]);
        assert_eq!(other.open("root", &sealed), Err(OpenError::WrongKek));
        let tampered = sealed.replacen('A', "B", 1);
        assert!(kek.open("root", &tampered).is_err());
    }

    #[test]
    fn kek_text_forms() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b64 = B64.encode([1u8; 32]);
        assert!(Kek::from_text(&b64, dir.path()).is_ok());
        assert!(matches!(
            Kek::from_text("short", dir.path()),
            Err(KekError::Weak)
        ));
        assert!(!dir.path().join(SALT_FILE).exists());
        let a = Kek::from_text("correct horse battery staple", dir.path()).expect("passphrase");
        let b = Kek::from_text("correct horse battery staple", dir.path()).expect("passphrase");
        assert_eq!(*a.0, *b.0, "same passphrase and salt give the same KEK");
        assert!(dir.path().join(SALT_FILE).exists());
        assert_eq!(format!("{a:?}"), "Kek(<redacted>)");
    }
}
