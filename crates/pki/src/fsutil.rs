//! Small file-system helpers: private directories, atomic writes with the final mode set at
//! creation, and permission checks on secrets.
//!
//! Unix only, like the rest of Gatehouse's data directory handling: modes are what keep a key
//! private, so they are set when a file is created, never fixed up afterwards.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};

/// Mode of a file holding a private key.
pub(crate) const KEY_MODE: u32 = 0o600;
/// Mode of a file holding public material (certificates).
pub(crate) const PUBLIC_MODE: u32 = 0o644;
/// Mode of a directory Gatehouse creates for key material.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Permission bits that must be clear on a private key file: any access by group or others.
pub(crate) const KEY_FORBIDDEN_BITS: u32 = 0o077;

/// Creates `dir` (and missing parents) with mode 0700. An existing directory is left as is.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// How [`write_atomic`] installs the finished file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Install {
    /// Replace any existing file (rename).
    Replace,
    /// Fail with [`io::ErrorKind::AlreadyExists`] if the target exists (hard link, then
    /// unlink the temporary name), so two processes racing to create the same file cannot
    /// overwrite each other.
    NoClobber,
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory, created
/// with `mode` from the start, written, synced, then moved into place; the directory is synced
/// after. A reader sees the old file, no file, or the whole new file, never a partial one.
pub(crate) fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    install: Install,
) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;

    let (tmp_path, mut file) = create_temp(dir, &name.to_string_lossy(), mode)?;
    let result = (|| {
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        match install {
            Install::Replace => fs::rename(&tmp_path, path),
            Install::NoClobber => link_no_clobber(&tmp_path, path),
        }
    })();
    // After a rename the temporary name is gone; after a link (or on error) remove it.
    if install == Install::NoClobber || result.is_err() {
        let _ = fs::remove_file(&tmp_path);
    }
    result?;
    sync_dir(dir)
}

/// Moves `tmp` to `path` unless `path` exists. A hard link does that atomically; on file
/// systems without hard links, fall back to an existence check and a rename (a small window,
/// acceptable there).
fn link_no_clobber(tmp: &Path, path: &Path) -> io::Result<()> {
    match fs::hard_link(tmp, path) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::Unsupported | io::ErrorKind::PermissionDenied
            ) =>
        {
            if fs::symlink_metadata(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "file already exists",
                ));
            }
            fs::rename(tmp, path)
        }
        other => other,
    }
}

fn create_temp(dir: &Path, name: &str, mode: u32) -> io::Result<(PathBuf, File)> {
    let rng = SystemRandom::new();
    for _ in 0..16 {
        let mut nonce = [0u8; 8];
        rng.fill(&mut nonce)
            .map_err(|_| io::Error::other("system random number generator failed"))?;
        let suffix: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = dir.join(format!(".{name}.{suffix}.tmp"));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            // The umask may narrow the mode further; it can never widen it.
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

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Opens a private key file and reads it, refusing it if group or others have any access.
///
/// The mode is checked on the opened file, so the file checked is the file read.
pub(crate) fn read_private(path: &Path) -> Result<zeroize::Zeroizing<String>, ReadPrivateError> {
    let mut file = File::open(path).map_err(ReadPrivateError::Io)?;
    let meta = file.metadata().map_err(ReadPrivateError::Io)?;
    if !meta.is_file() {
        return Err(ReadPrivateError::NotAFile);
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & KEY_FORBIDDEN_BITS != 0 {
        return Err(ReadPrivateError::TooOpen { mode });
    }
    let mut text = zeroize::Zeroizing::new(String::new());
    io::Read::read_to_string(&mut file, &mut text).map_err(ReadPrivateError::Io)?;
    Ok(text)
}

/// Why [`read_private`] refused a file.
#[derive(Debug)]
pub(crate) enum ReadPrivateError {
    /// Opening or reading failed.
    Io(io::Error),
    /// The path is not a regular file.
    NotAFile,
    /// Group or others have access.
    TooOpen { mode: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_creates_file_with_mode_and_leaves_no_temp() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("k.key");
        write_atomic(&path, b"secret", KEY_MODE, Install::Replace)?;
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read(&path)?, b"secret");
        write_atomic(&path, b"again", KEY_MODE, Install::Replace)?;
        assert_eq!(fs::read(&path)?, b"again");
        assert_eq!(
            fs::read_dir(dir.path())?.count(),
            1,
            "temporary file left behind"
        );
        Ok(())
    }

    #[test]
    fn no_clobber_refuses_existing_file() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("ca.key");
        write_atomic(&path, b"first", KEY_MODE, Install::NoClobber)?;
        let err = write_atomic(&path, b"second", KEY_MODE, Install::NoClobber)
            .expect_err("second write must fail");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path)?, b"first");
        assert_eq!(
            fs::read_dir(dir.path())?.count(),
            1,
            "temporary file left behind"
        );
        Ok(())
    }

    #[test]
    fn read_private_refuses_group_readable() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("k.key");
        write_atomic(&path, b"secret", KEY_MODE, Install::Replace)?;
        assert!(read_private(&path).is_ok());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640))?;
        assert!(matches!(
            read_private(&path),
            Err(ReadPrivateError::TooOpen { mode: 0o640 })
        ));
        Ok(())
    }
}
