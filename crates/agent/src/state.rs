//! The agent's state directory:
//!
//! | file | holds | mode |
//! |---|---|---|
//! | `device.key` | the device's private key, PKCS#8 PEM | 0600 |
//! | `device.crt` | the device certificate, then the issuing CA(s), PEM | 0644 |
//! | `ca.crt` | the CA certificates from EST `cacerts`: trust anchors for the server | 0644 |
//!
//! The directory is created 0700. Every file is written atomically (a temporary file in the
//! same directory, created with its final mode, written, synced, renamed, the directory
//! synced), so a reader sees the old file or the new one, never a part. The key is written
//! before the certificate; a crash between the two leaves a pair that [`StateDir::load`]
//! refuses as mismatched, and the agent enrolls again if it has the means to. An IDevID's
//! files are only ever read ([`read_idevid`]).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

use crate::identity::{CredentialsError, DeviceCredentials, Idevid, certs_to_pem, load_certs};

/// Mode of the private key file.
const KEY_MODE: u32 = 0o600;
/// Mode of certificate files.
const PUBLIC_MODE: u32 = 0o644;
/// Mode of the state directory.
const DIR_MODE: u32 = 0o700;
/// Largest file read from the state directory.
const MAX_FILE: u64 = 1024 * 1024;

/// Why the state directory could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The directory holds no enrolled identity yet.
    #[error("{} holds no device identity (run `gatehouse-agent enroll` first)", dir.display())]
    NotEnrolled {
        /// The state directory.
        dir: PathBuf,
    },
    /// The private key file may be read by group or others.
    #[error("{}: permissions {mode:04o} are too open; a private key must be readable by its owner only (chmod 600)", path.display())]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The files do not hold a usable certificate and key.
    #[error("{}: {source}", path.display())]
    Credentials {
        /// The file (or directory) at fault.
        path: PathBuf,
        /// What is wrong.
        source: CredentialsError,
    },
}

/// The agent's state directory (see the module docs for its files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    dir: PathBuf,
}

// === impl StateDir ===

impl StateDir {
    /// The state directory at `dir` (nothing is touched until a load or save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `device.key`.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join("device.key")
    }

    /// `device.crt`.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("device.crt")
    }

    /// `ca.crt`.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Whether a device key and certificate are present (not whether they are valid).
    pub fn is_enrolled(&self) -> bool {
        self.key_path().is_file() && self.cert_path().is_file()
    }

    /// Reads the device's credentials, checking the key's permissions and that it is the
    /// certificate's key.
    pub fn load(&self) -> Result<DeviceCredentials, StateError> {
        if !self.is_enrolled() {
            return Err(StateError::NotEnrolled {
                dir: self.dir.clone(),
            });
        }
        let key_path = self.key_path();
        let key_pem = read_private(&key_path)?;
        let cert_path = self.cert_path();
        let chain =
            load_certs(&read_text(&cert_path)?).map_err(|source| StateError::Credentials {
                path: cert_path.clone(),
                source,
            })?;
        DeviceCredentials::new(chain, key_pem).map_err(|source| StateError::Credentials {
            path: self.dir.clone(),
            source,
        })
    }

    /// Writes the credentials: `device.key` (0600) then `device.crt`.
    pub fn save(&self, creds: &DeviceCredentials) -> Result<(), StateError> {
        self.create_dir()?;
        let key_path = self.key_path();
        write_atomic(&key_path, creds.key_pem().as_bytes(), KEY_MODE).map_err(|source| {
            StateError::Io {
                path: key_path,
                source,
            }
        })?;
        let cert_path = self.cert_path();
        write_atomic(&cert_path, creds.chain_pem().as_bytes(), PUBLIC_MODE).map_err(|source| {
            StateError::Io {
                path: cert_path,
                source,
            }
        })
    }

    /// The CA certificates of `ca.crt`, or `None` if there is no such file.
    pub fn load_ca(&self) -> Result<Option<Vec<CertificateDer<'static>>>, StateError> {
        let path = self.ca_path();
        if !path.exists() {
            return Ok(None);
        }
        let certs = load_certs(&read_text(&path)?)
            .map_err(|source| StateError::Credentials { path, source })?;
        Ok(Some(certs))
    }

    /// Writes `ca.crt`.
    pub fn save_ca(&self, certs: &[CertificateDer<'_>]) -> Result<(), StateError> {
        self.create_dir()?;
        let path = self.ca_path();
        write_atomic(&path, certs_to_pem(certs).as_bytes(), PUBLIC_MODE)
            .map_err(|source| StateError::Io { path, source })
    }

    fn create_dir(&self) -> Result<(), StateError> {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&self.dir)
            .map_err(|source| StateError::Io {
                path: self.dir.clone(),
                source,
            })
    }
}

/// Reads an IDevID (certificate chain PEM and key PEM) without modifying either file, and
/// checks that the key is the certificate's.
pub fn read_idevid(cert: &Path, key: &Path) -> Result<Idevid, StateError> {
    let cert_pem = read_text(cert)?;
    let key_pem = read_limited(key)?;
    Idevid::from_pem(&cert_pem, &key_pem).map_err(|source| StateError::Credentials {
        path: key.to_path_buf(),
        source,
    })
}

/// Reads PEM certificates from a file (e.g. the bootstrap trust anchor `--ca`).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, StateError> {
    load_certs(&read_text(path)?).map_err(|source| StateError::Credentials {
        path: path.to_path_buf(),
        source,
    })
}

fn read_text(path: &Path) -> Result<String, StateError> {
    let text = read_limited(path)?;
    Ok(text.as_str().to_owned())
}

fn read_limited(path: &Path) -> Result<Zeroizing<String>, StateError> {
    let io_err = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    read_file(file).map_err(io_err)
}

/// Reads the key file, refusing it if group or others have any access. The mode is checked
/// on the opened file, so the file checked is the file read.
fn read_private(path: &Path) -> Result<Zeroizing<String>, StateError> {
    let io_err = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let mode = file.metadata().map_err(io_err)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(StateError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    read_file(file).map_err(io_err)
}

fn read_file(file: File) -> io::Result<Zeroizing<String>> {
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_FILE + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "file is larger than 1 MiB",
        ));
    }
    Ok(text)
}

/// Writes `contents` to `path` atomically, the temporary file created with `mode`.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?
        .to_string_lossy();
    let (tmp, mut file) = create_temp(dir, &name, mode)?;
    let result = (|| {
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    File::open(dir)?.sync_all()
}

fn create_temp(dir: &Path, name: &str, mode: u32) -> io::Result<(PathBuf, File)> {
    let pid = std::process::id();
    for attempt in 0u32..64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tmp = dir.join(format!(".{name}.{pid}.{nanos:08x}{attempt}.tmp"));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            // The umask may narrow the mode; it never widens it.
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "could not find a free temporary file name",
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gatehouse_pki::LocalCa;

    use super::*;

    fn credentials(
        ca: &LocalCa,
        device: &str,
    ) -> Result<DeviceCredentials, Box<dyn std::error::Error>> {
        let issued = ca.issue_device(
            &"acme".parse()?,
            &device.parse()?,
            Duration::from_secs(3600),
        )?;
        Ok(DeviceCredentials::new(
            issued.presented_chain()?,
            Zeroizing::new(issued.key_pem.expose().to_owned()),
        )?)
    }

    #[test]
    fn saved_credentials_load_back_with_private_modes() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let ca = LocalCa::load_or_create(&tmp.path().join("ca"))?;
        let state = StateDir::new(tmp.path().join("agent"));
        assert!(matches!(state.load(), Err(StateError::NotEnrolled { .. })));
        assert!(state.load_ca()?.is_none());

        let creds = credentials(&ca, "thermo-1")?;
        state.save(&creds)?;
        state.save_ca(&ca.client_trust_anchors())?;
        let meta = |p: PathBuf| fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(meta(state.key_path())?, 0o600);
        assert_eq!(meta(state.cert_path())?, 0o644);
        assert_eq!(meta(state.path().to_path_buf())?, 0o700);

        let loaded = state.load()?;
        assert_eq!(loaded.info(), creds.info());
        assert_eq!(loaded.chain(), creds.chain());
        assert_eq!(state.load_ca()?, Some(ca.client_trust_anchors()));
        assert_eq!(
            fs::read_dir(state.path())?.count(),
            3,
            "temporary files left behind"
        );
        Ok(())
    }

    #[test]
    fn key_readable_by_others_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let ca = LocalCa::load_or_create(&tmp.path().join("ca"))?;
        let state = StateDir::new(tmp.path().join("agent"));
        state.save(&credentials(&ca, "thermo-1")?)?;
        fs::set_permissions(state.key_path(), fs::Permissions::from_mode(0o644))?;
        assert!(matches!(
            state.load(),
            Err(StateError::KeyPermissions { mode: 0o644, .. })
        ));
        Ok(())
    }

    #[test]
    fn mismatched_key_and_certificate_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let ca = LocalCa::load_or_create(&tmp.path().join("ca"))?;
        let state = StateDir::new(tmp.path().join("agent"));
        state.save(&credentials(&ca, "thermo-1")?)?;
        let other = credentials(&ca, "thermo-2")?;
        fs::write(state.cert_path(), other.chain_pem())?;
        assert!(matches!(
            state.load(),
            Err(StateError::Credentials {
                source: CredentialsError::KeyMismatch,
                ..
            })
        ));
        Ok(())
    }

    #[test]
    fn replacing_the_key_keeps_its_mode() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let path = tmp.path().join("k");
        write_atomic(&path, b"one", KEY_MODE)?;
        write_atomic(&path, b"two", KEY_MODE)?;
        assert_eq!(fs::read(&path)?, b"two");
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(tmp.path())?.count(), 1);
        Ok(())
    }
}
