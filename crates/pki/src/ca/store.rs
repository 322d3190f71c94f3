//! The CA directory: its layout, first creation, loading, the upgrade of a directory written
//! by an earlier version, and rolling the issuing CA.
//!
//! ```text
//! <dir>/root.crt        the root (self-signed, pathlen 1)            0644
//! <dir>/root.key        the root's key, sealed with the KEK          0600
//! <dir>/issuing-N.crt   issuing CA number N (pathlen 0)              0644
//! <dir>/issuing-N.key   its key, sealed                              0600
//! <dir>/ca.crt          live issuing CAs, newest first, then root    0644
//! <dir>/crl.number      the last CRL number used                     0644
//! <dir>/ca.kek          the generated KEK, when no other is given    0600
//! <dir>/.lock           serialises creation, upgrade and rolls       0600
//! ```
//!
//! An earlier version kept a single root, `ca.key` (plain PKCS#8) and `ca.crt`. Such a
//! directory is upgraded in place on load: the key is sealed into `root.key`, the certificate
//! copied to `root.crt`, and `ca.key` removed last (so a crash half-way repeats the upgrade).
//! Its root was made with pathlen 0 and so cannot have an issuing CA below it: it keeps
//! issuing directly, and [`LocalCa::roll_issuing_ca`] refuses.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls_pki_types::PrivatePkcs8KeyDer;
use zeroize::Zeroizing;

use super::*;
use crate::kek::{Kek, OpenError, is_sealed};
use crate::secret::SecretPem;

const ROOT_ROLE: &str = "root";
const BUNDLE_FILE: &str = "ca.crt";
const LEGACY_KEY_FILE: &str = "ca.key";
const LOCK_FILE: &str = ".lock";
const CRL_NUMBER_FILE: &str = "crl.number";
const ISSUING_PREFIX: &str = "issuing-";

/// A CA certificate and its key, loaded and checked.
struct LoadedCa {
    key: KeyPair,
    key_der: Zeroizing<Vec<u8>>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    not_after: OffsetDateTime,
}

// === impl LocalCa ===

impl LocalCa {
    /// Loads the CA from `dir`, creating it on first use, with its private keys sealed under
    /// the key-encryption key from `kek` (AES-256-GCM, the file's role bound as associated
    /// data).
    ///
    /// On first call `dir` is created (mode 0700) and a root (ECDSA P-256, 10 years,
    /// pathlen 1) and an issuing CA under it (5 years, pathlen 0) are written, keys 0600 from
    /// creation on (see the module docs for the layout). Later calls load them and check that
    /// each key opens and is its certificate's, that the certificates are CAs, that the
    /// issuing CAs are the root's, and that the root has not expired. Expired issuing CAs are
    /// left out; if none is live any more, a new one is rolled in. A key file that group or
    /// others may access is refused, and so is a CA directory that group or others may
    /// write. A directory of an earlier version (`ca.key` + `ca.crt`) is upgraded in place.
    ///
    /// [`KeySource::Generated`] creates its file only for a new CA: if the CA exists and the
    /// KEK file is gone, loading fails rather than sealing nothing under a new KEK.
    pub fn open(dir: &Path, kek: &KeySource) -> Result<LocalCa, CaError> {
        fsutil::create_private_dir(dir).map_err(|source| io_err(dir, source))?;
        check_dir(dir)?;
        let _lock = lock(dir)?;

        let root_key = dir.join(format!("{ROOT_ROLE}.key"));
        let root_crt = dir.join(format!("{ROOT_ROLE}.crt"));
        let legacy_key = dir.join(LEGACY_KEY_FILE);
        let bundle = dir.join(BUNDLE_FILE);
        let has_root = exists(&root_key)? || exists(&root_crt)?;
        let has_legacy_key = exists(&legacy_key)?;
        let has_bundle = exists(&bundle)?;

        let source = match kek {
            KeySource::Generated(path) if has_root => KeySource::File(path.clone()),
            other => other.clone(),
        };
        if has_legacy_key {
            if !has_bundle {
                return Err(CaError::Incomplete {
                    present: legacy_key,
                    missing: bundle,
                });
            }
            let kek = source.load(dir)?;
            migrate_legacy(dir, &kek)?;
            return load(dir, kek);
        }
        if !has_root {
            if has_bundle {
                return Err(CaError::Incomplete {
                    present: bundle,
                    missing: legacy_key,
                });
            }
            let kek = source.load(dir)?;
            create(dir, &kek)?;
            return load(dir, kek);
        }
        load(dir, source.load(dir)?)
    }

    /// An external issuing CA given as PEM: `issuer_cert_pem` (its first certificate is the
    /// issuing CA), its private key, and `chain_pem`, the certificates above it up to and
    /// including the root (empty when the issuer is itself a self-signed root).
    ///
    /// Nothing is written to disk; [`dir`](Self::dir) is empty, CRL numbers count from the
    /// current Unix time so that they still increase across restarts, and
    /// [`roll_issuing_ca`](Self::roll_issuing_ca) is refused (the operator rolls an external
    /// CA by starting with a new one, keeping the old one's certificates in the chain).
    pub fn from_pem(
        issuer_cert_pem: &str,
        issuer_key_pem: &SecretPem,
        chain_pem: &str,
    ) -> Result<LocalCa, CaError> {
        let cert_label = PathBuf::from("<issuer certificate>");
        let key_label = PathBuf::from("<issuer key>");
        let chain_label = PathBuf::from("<CA chain>");
        let key_der = load_key_pem(issuer_key_pem.expose()).map_err(|e| CaError::InvalidKey {
            path: key_label.clone(),
            reason: e.to_string(),
        })?;
        let key = KeyPair::try_from(&key_der).map_err(|e| CaError::InvalidKey {
            path: key_label.clone(),
            reason: e.to_string(),
        })?;
        let issuer_der = load_certs_pem(issuer_cert_pem)
            .map_err(|e| CaError::InvalidCertificate {
                path: cert_label.clone(),
                reason: e.to_string(),
            })?
            .swap_remove(0);
        let not_after = check_ca_cert(&issuer_der, &key, &key_label, &cert_label)?;
        if not_after <= OffsetDateTime::now_utc() {
            return Err(CaError::Expired { not_after });
        }
        let mut above = if chain_pem.trim().is_empty() {
            Vec::new()
        } else {
            load_certs_pem(chain_pem).map_err(|e| CaError::InvalidCertificate {
                path: chain_label.clone(),
                reason: e.to_string(),
            })?
        };
        above.retain(|c| *c != issuer_der);
        let is_root = above.is_empty();
        let root_der = above.last().cloned().unwrap_or_else(|| issuer_der.clone());
        let root_not_after = {
            let (_, root) =
                X509Certificate::from_der(&root_der).map_err(|e| CaError::InvalidCertificate {
                    path: chain_label.clone(),
                    reason: e.to_string(),
                })?;
            if root.subject() != root.issuer() {
                return Err(CaError::InvalidCertificate {
                    path: chain_label,
                    reason: "the chain does not end in a self-signed root".to_owned(),
                });
            }
            root.validity().not_after.to_datetime()
        };
        let issuer_pem = der_to_pem(&issuer_der);
        let chain_pem: String = if is_root {
            issuer_pem.clone()
        } else {
            std::iter::once(issuer_pem.clone())
                .chain(above.iter().map(|c| der_to_pem(c)))
                .collect()
        };
        let issuer = Issuer::from_ca_cert_der(&issuer_der, key).map_err(|e| {
            CaError::InvalidCertificate {
                path: cert_label,
                reason: e.to_string(),
            }
        })?;
        let start = OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
        Ok(LocalCa {
            dir: PathBuf::new(),
            root_pem: der_to_pem(&root_der),
            root_der,
            root_not_after,
            root_issuer: None,
            issuing: vec![IssuingCa {
                role: "external".to_owned(),
                cert_pem: issuer_pem,
                cert_der: issuer_der,
                not_after,
                issuer,
                is_root,
            }],
            chain_pem,
            kek: None,
            crl_url: None,
            crl_counter: AtomicU64::new(start),
        })
    }

    /// Rolls in a new issuing CA under the same root: it issues every certificate from now
    /// on, while the previous issuing CAs stay in [`chain_pem`](Self::chain_pem), `ca.crt`
    /// and [`client_trust_anchors`](Self::client_trust_anchors) until they expire, so the
    /// certificates they issued keep working. Persisted before it returns.
    ///
    /// Refused ([`CaError::Unsupported`]) for an external CA and for a CA whose root issues
    /// directly (a directory from an earlier version, whose root has pathlen 0).
    pub fn roll_issuing_ca(&mut self) -> Result<(), CaError> {
        let (Some(root_issuer), Some(kek)) = (&self.root_issuer, &self.kek) else {
            return Err(CaError::Unsupported(
                "an external CA is rolled by starting with the new one",
            ));
        };
        if root_path_len(&self.root_der) == Some(0) {
            return Err(CaError::Unsupported(
                "this root (from an earlier version) has pathlen 0 and cannot have an issuing CA below it",
            ));
        }
        let _lock = lock(&self.dir)?;
        let n = issuing_indices(&self.dir)?.into_iter().max().unwrap_or(0) + 1;
        write_issuing(&self.dir, kek, n, root_issuer, self.root_not_after)?;
        tracing::info!(dir = %self.dir.display(), issuing = n, "rolled in a new issuing CA");
        let mut fresh = load(&self.dir, kek.clone())?;
        fresh.crl_url = self.crl_url.take();
        *self = fresh;
        Ok(())
    }

    /// The next CRL number: persisted in `crl.number` for a CA with a directory.
    pub(crate) fn next_crl_number(&self) -> Result<u64, CaError> {
        if self.dir.as_os_str().is_empty() {
            return Ok(self.crl_counter.fetch_add(1, Ordering::SeqCst) + 1);
        }
        let _lock = lock(&self.dir)?;
        let path = self.dir.join(CRL_NUMBER_FILE);
        let last = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| CaError::InvalidCertificate {
                    path: path.clone(),
                    reason: "not a CRL number".to_owned(),
                })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&path, e)),
        };
        let next = last + 1;
        fsutil::write_atomic(
            &path,
            format!("{next}\n").as_bytes(),
            fsutil::PUBLIC_MODE,
            Install::Replace,
        )
        .map_err(|e| io_err(&path, e))?;
        Ok(next)
    }

    /// The active issuing CA's name (`issuing-3`, or `root` when the root issues directly):
    /// the stem of its files, and a stable name for its CRL.
    pub fn active_issuer_name(&self) -> &str {
        &self.issuing[0].role
    }

    /// Every live issuing CA's name, newest first (see
    /// [`active_issuer_name`](Self::active_issuer_name)).
    pub fn issuer_names(&self) -> Vec<&str> {
        self.issuing.iter().map(|i| i.role.as_str()).collect()
    }

    /// Every live issuing CA (its certificate and signer), newest first.
    pub(crate) fn issuers(
        &self,
    ) -> impl Iterator<Item = (&CertificateDer<'static>, &Issuer<'static, KeyPair>)> {
        self.issuing.iter().map(|i| (&i.cert_der, &i.issuer))
    }
}

// === directory operations ===

/// Takes the directory's lock (blocking), released when the file is dropped.
fn lock(dir: &Path) -> Result<std::fs::File, CaError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(fsutil::KEY_MODE)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    file.lock().map_err(|e| io_err(&path, e))?;
    Ok(file)
}

fn create(dir: &Path, kek: &Kek) -> Result<(), CaError> {
    let root_key = new_key()?;
    let params = root_params(OffsetDateTime::now_utc())?;
    let cert = params
        .self_signed(&root_key)
        .map_err(|e| CaError::Generation(e.to_string()))?;
    let root_not_after = params.not_after;
    let root_der = Zeroizing::new(root_key.serialize_der());
    let root_issuer = Issuer::new(params, root_key);
    write_issuing(dir, kek, 1, &root_issuer, root_not_after)?;
    write_sealed(dir, ROOT_ROLE, kek, &root_der)?;
    // root.crt last: until it exists the CA does not.
    write_public(&dir.join(format!("{ROOT_ROLE}.crt")), &cert.pem())?;
    tracing::info!(dir = %dir.display(), "created local CA: root and issuing CA");
    Ok(())
}

fn write_issuing(
    dir: &Path,
    kek: &Kek,
    n: u32,
    root: &Issuer<'static, KeyPair>,
    root_not_after: OffsetDateTime,
) -> Result<(), CaError> {
    let key = new_key()?;
    let params = issuing_params(n, OffsetDateTime::now_utc(), root_not_after)?;
    let cert = params
        .signed_by(&key, root)
        .map_err(|e| CaError::Generation(e.to_string()))?;
    let role = format!("{ISSUING_PREFIX}{n}");
    write_sealed(dir, &role, kek, &Zeroizing::new(key.serialize_der()))?;
    write_public(&dir.join(format!("{role}.crt")), &cert.pem())
}

fn write_sealed(dir: &Path, role: &str, kek: &Kek, pkcs8: &[u8]) -> Result<(), CaError> {
    let path = dir.join(format!("{role}.key"));
    let sealed = kek.seal(role, pkcs8)?;
    fsutil::write_atomic(&path, sealed.as_bytes(), fsutil::KEY_MODE, Install::Replace)
        .map_err(|e| io_err(&path, e))
}

fn write_public(path: &Path, pem: &str) -> Result<(), CaError> {
    fsutil::write_atomic(path, pem.as_bytes(), fsutil::PUBLIC_MODE, Install::Replace)
        .map_err(|e| io_err(path, e))
}

fn read_key_file(path: &Path) -> Result<Zeroizing<String>, CaError> {
    fsutil::read_private(path).map_err(|e| match e {
        ReadPrivateError::Io(source) => io_err(path, source),
        ReadPrivateError::NotAFile => CaError::NotAFile {
            path: path.to_owned(),
        },
        ReadPrivateError::TooOpen { mode } => CaError::KeyPermissions {
            path: path.to_owned(),
            mode,
        },
    })
}

/// Upgrades a directory of an earlier version: seals `ca.key` into `root.key`, copies
/// `ca.crt` to `root.crt`, removes `ca.key`.
fn migrate_legacy(dir: &Path, kek: &Kek) -> Result<(), CaError> {
    let key_path = dir.join(LEGACY_KEY_FILE);
    let cert_path = dir.join(BUNDLE_FILE);
    let key_pem = read_key_file(&key_path)?;
    let invalid_key = |reason: String| CaError::InvalidKey {
        path: key_path.clone(),
        reason,
    };
    if is_sealed(&key_pem) {
        return Err(invalid_key(
            "a sealed key under the unsealed key's name".to_owned(),
        ));
    }
    let key_der = load_key_pem(&key_pem).map_err(|e| invalid_key(e.to_string()))?;
    let key = KeyPair::try_from(&key_der).map_err(|e| invalid_key(e.to_string()))?;
    let cert_pem = std::fs::read_to_string(&cert_path).map_err(|e| io_err(&cert_path, e))?;
    let cert_der = single_cert(&cert_pem, &cert_path)?;
    check_ca_cert(&cert_der, &key, &key_path, &cert_path)?;
    write_sealed(dir, ROOT_ROLE, kek, &Zeroizing::new(key.serialize_der()))?;
    write_public(&dir.join(format!("{ROOT_ROLE}.crt")), &cert_pem)?;
    std::fs::remove_file(&key_path).map_err(|e| io_err(&key_path, e))?;
    tracing::info!(
        dir = %dir.display(),
        "upgraded the CA directory: the CA key is now sealed with the key-encryption key"
    );
    Ok(())
}

/// Loads and checks the CA of a directory in the current layout.
fn load(dir: &Path, kek: Kek) -> Result<LocalCa, CaError> {
    let root = load_pair(dir, ROOT_ROLE, &kek, None)?;
    if root.not_after <= OffsetDateTime::now_utc() {
        return Err(CaError::Expired {
            not_after: root.not_after,
        });
    }
    let root_path = dir.join(format!("{ROOT_ROLE}.crt"));
    let root_second_key =
        KeyPair::try_from(&PrivateKeyDerOwned::from(&root.key_der).0).map_err(|e| {
            CaError::InvalidKey {
                path: dir.join(format!("{ROOT_ROLE}.key")),
                reason: e.to_string(),
            }
        })?;
    let root_issuer = Issuer::from_ca_cert_der(&root.cert_der, root.key).map_err(|e| {
        CaError::InvalidCertificate {
            path: root_path.clone(),
            reason: e.to_string(),
        }
    })?;

    let mut indices = issuing_indices(dir)?;
    indices.sort_unstable_by(|a, b| b.cmp(a));
    let now = OffsetDateTime::now_utc();
    let mut issuing = Vec::new();
    for &n in &indices {
        let role = format!("{ISSUING_PREFIX}{n}");
        let ca = load_pair(dir, &role, &kek, Some(&root.cert_der))?;
        if ca.not_after <= now {
            tracing::info!(issuing = n, not_after = %ca.not_after, "issuing CA expired; left out");
            continue;
        }
        let crt_path = dir.join(format!("{role}.crt"));
        let issuer = Issuer::from_ca_cert_der(&ca.cert_der, ca.key).map_err(|e| {
            CaError::InvalidCertificate {
                path: crt_path,
                reason: e.to_string(),
            }
        })?;
        issuing.push(IssuingCa {
            role,
            cert_pem: ca.cert_pem,
            cert_der: ca.cert_der,
            not_after: ca.not_after,
            issuer,
            is_root: false,
        });
    }
    if issuing.is_empty() && !indices.is_empty() {
        // Every issuing CA has expired: roll in a new one rather than stop issuing.
        let n = indices.iter().max().copied().unwrap_or(0) + 1;
        tracing::warn!(
            issuing = n,
            "every issuing CA has expired; rolling in a new one"
        );
        write_issuing(dir, &kek, n, &root_issuer, root.not_after)?;
        return load(dir, kek);
    }
    if issuing.is_empty() {
        // A root from an earlier version issues directly.
        let issuer = Issuer::from_ca_cert_der(&root.cert_der, root_second_key).map_err(|e| {
            CaError::InvalidCertificate {
                path: root_path,
                reason: e.to_string(),
            }
        })?;
        issuing.push(IssuingCa {
            role: ROOT_ROLE.to_owned(),
            cert_pem: root.cert_pem.clone(),
            cert_der: root.cert_der.clone(),
            not_after: root.not_after,
            issuer,
            is_root: true,
        });
    }
    let mut chain_pem: String = issuing
        .iter()
        .filter(|i| !i.is_root)
        .map(|i| i.cert_pem.as_str())
        .collect();
    chain_pem.push_str(&root.cert_pem);
    let bundle = dir.join(BUNDLE_FILE);
    if std::fs::read_to_string(&bundle).ok().as_deref() != Some(chain_pem.as_str()) {
        write_public(&bundle, &chain_pem)?;
    }
    Ok(LocalCa {
        dir: dir.to_owned(),
        root_pem: root.cert_pem,
        root_der: root.cert_der,
        root_not_after: root.not_after,
        root_issuer: Some(root_issuer),
        issuing,
        chain_pem,
        kek: Some(kek),
        crl_url: None,
        crl_counter: AtomicU64::new(0),
    })
}

/// An owned PKCS#8 key DER wrapped for rcgen.
struct PrivateKeyDerOwned(rustls_pki_types::PrivateKeyDer<'static>);

impl From<&Zeroizing<Vec<u8>>> for PrivateKeyDerOwned {
    fn from(der: &Zeroizing<Vec<u8>>) -> Self {
        Self(PrivatePkcs8KeyDer::from(der.to_vec()).into())
    }
}

/// Loads `<role>.key` and `<role>.crt`, opens the key, and checks the pair; `parent` is the
/// certificate that must have signed this one (none for the root).
fn load_pair(
    dir: &Path,
    role: &str,
    kek: &Kek,
    parent: Option<&CertificateDer<'static>>,
) -> Result<LoadedCa, CaError> {
    let key_path = dir.join(format!("{role}.key"));
    let cert_path = dir.join(format!("{role}.crt"));
    match (exists(&key_path)?, exists(&cert_path)?) {
        (true, true) => {}
        (true, false) => {
            return Err(CaError::Incomplete {
                present: key_path,
                missing: cert_path,
            });
        }
        (false, _) => {
            return Err(CaError::Incomplete {
                present: cert_path,
                missing: key_path,
            });
        }
    }
    let text = read_key_file(&key_path)?;
    let key_der: Zeroizing<Vec<u8>> = if is_sealed(&text) {
        kek.open(role, &text).map_err(|e| match e {
            OpenError::WrongKek => CaError::WrongKek {
                path: key_path.clone(),
            },
            OpenError::Malformed(reason) => CaError::InvalidKey {
                path: key_path.clone(),
                reason: reason.to_owned(),
            },
        })?
    } else {
        // A plain key (written by hand, or restored from an old backup): seal it now.
        let der = load_key_pem(&text).map_err(|e| CaError::InvalidKey {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        let pkcs8 = Zeroizing::new(der.secret_der().to_vec());
        write_sealed(dir, role, kek, &pkcs8)?;
        tracing::info!(path = %key_path.display(), "sealed a plain CA key with the key-encryption key");
        pkcs8
    };
    let key = KeyPair::try_from(&PrivateKeyDerOwned::from(&key_der).0).map_err(|e| {
        CaError::InvalidKey {
            path: key_path.clone(),
            reason: e.to_string(),
        }
    })?;
    let cert_pem = std::fs::read_to_string(&cert_path).map_err(|e| io_err(&cert_path, e))?;
    let cert_der = single_cert(&cert_pem, &cert_path)?;
    let not_after = check_ca_cert(&cert_der, &key, &key_path, &cert_path)?;
    if let Some(parent) = parent {
        check_signed_by(&cert_der, parent, &cert_path)?;
    }
    Ok(LoadedCa {
        key,
        key_der,
        cert_pem,
        cert_der,
        not_after,
    })
}

/// Numbers N of the `issuing-N.crt` files in `dir`.
fn issuing_indices(dir: &Path) -> Result<Vec<u32>, CaError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(n) = name
            .strip_prefix(ISSUING_PREFIX)
            .and_then(|r| r.strip_suffix(".crt"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        out.push(n);
    }
    Ok(out)
}

fn single_cert(pem: &str, path: &Path) -> Result<CertificateDer<'static>, CaError> {
    let mut certs = load_certs_pem(pem).map_err(|e: PemError| CaError::InvalidCertificate {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if certs.len() != 1 {
        return Err(CaError::InvalidCertificate {
            path: path.to_owned(),
            reason: format!("holds {} certificates; expected one", certs.len()),
        });
    }
    Ok(certs.remove(0))
}

/// Checks that `cert` is a CA certificate for `key` that has not expired; returns its
/// `notAfter`.
fn check_ca_cert(
    cert: &CertificateDer<'static>,
    key: &KeyPair,
    key_path: &Path,
    cert_path: &Path,
) -> Result<OffsetDateTime, CaError> {
    let invalid = |reason: String| CaError::InvalidCertificate {
        path: cert_path.to_owned(),
        reason,
    };
    let (_, x509) = X509Certificate::from_der(cert).map_err(|e| invalid(e.to_string()))?;
    let is_ca = x509
        .basic_constraints()
        .map_err(|e| invalid(e.to_string()))?
        .is_some_and(|bc| bc.value.ca);
    let can_sign = x509
        .key_usage()
        .map_err(|e| invalid(e.to_string()))?
        .is_some_and(|ku| ku.value.key_cert_sign());
    if !is_ca || !can_sign {
        return Err(invalid(
            "not a CA certificate (needs basicConstraints CA:TRUE and keyUsage keyCertSign)"
                .to_owned(),
        ));
    }
    if x509.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(CaError::KeyMismatch {
            key: key_path.to_owned(),
            cert: cert_path.to_owned(),
        });
    }
    Ok(x509.validity().not_after.to_datetime())
}

fn check_signed_by(
    cert: &CertificateDer<'static>,
    parent: &CertificateDer<'static>,
    cert_path: &Path,
) -> Result<(), CaError> {
    let invalid = |reason: String| CaError::InvalidCertificate {
        path: cert_path.to_owned(),
        reason,
    };
    let (_, child) = X509Certificate::from_der(cert).map_err(|e| invalid(e.to_string()))?;
    let (_, parent) = X509Certificate::from_der(parent).map_err(|e| invalid(e.to_string()))?;
    child
        .verify_signature(Some(parent.public_key()))
        .map_err(|_| invalid("not signed by the root in this directory".to_owned()))
}

/// The pathLenConstraint of a CA certificate, if it has one.
fn root_path_len(cert: &CertificateDer<'static>) -> Option<u32> {
    let (_, x509) = X509Certificate::from_der(cert).ok()?;
    x509.basic_constraints()
        .ok()
        .flatten()
        .and_then(|bc| bc.value.path_len_constraint)
}

/// PEM text of a DER certificate.
pub(crate) fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}
