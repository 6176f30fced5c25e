//! Permission checks and atomic writes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::VaultError;

/// Checks that `path` is a directory (or a regular file) with exactly the
/// permission bits `wanted` (0700 or 0600).
pub(crate) fn check_mode(path: &Path, wanted: u32, dir: bool) -> Result<(), VaultError> {
    let meta = fs::metadata(path).map_err(|e| VaultError::io("inspect", path, e))?;
    let (ok_type, name) = if dir {
        (meta.is_dir(), "directory")
    } else {
        (meta.is_file(), "regular file")
    };
    if !ok_type {
        return Err(VaultError::WrongFileType {
            path: path.to_path_buf(),
            wanted: name,
        });
    }
    let found = meta.permissions().mode() & 0o7777;
    if found != wanted {
        return Err(VaultError::Permissions {
            path: path.to_path_buf(),
            found,
            wanted,
        });
    }
    Ok(())
}

/// The directory a file lives in (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `contents` to `target` through a temporary file in the same
/// directory (mode 0600), synced before it takes the target's name, then
/// syncs the directory. With `replace == false` an existing target is never
/// touched: the temporary file is hard-linked to the target name, which fails
/// if the name exists, even if another process created it meanwhile.
pub(crate) fn write_atomically(
    target: &Path,
    contents: &[u8],
    replace: bool,
) -> Result<(), VaultError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = parent_dir(target);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "vault".to_string());
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = write_tmp(&tmp, contents).and_then(|()| {
        if replace {
            fs::rename(&tmp, target).map_err(|e| VaultError::io("replace", target, e))
        } else {
            let linked = fs::hard_link(&tmp, target);
            let _ = fs::remove_file(&tmp);
            linked.map_err(|e| VaultError::io("create", target, e))
        }
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // Make the new name durable. Some file systems cannot sync a directory;
    // the data itself is already synced, so that is not an error.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn write_tmp(tmp: &Path, contents: &[u8]) -> Result<(), VaultError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| VaultError::io("create", tmp, e))?;
    // The umask can only remove bits; make sure it is exactly 0600.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .and_then(|()| f.write_all(contents))
        .and_then(|()| f.sync_all())
        .map_err(|e| VaultError::io("write", tmp, e))
}

/// Reads a whole file; a missing file gives `missing()`.
pub(crate) fn read_to_string(
    path: &Path,
    missing: impl FnOnce() -> VaultError,
) -> Result<String, VaultError> {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|e| {
            VaultError::io(
                "read",
                path,
                io::Error::new(io::ErrorKind::InvalidData, format!("not UTF-8 text ({e})")),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(missing()),
        Err(e) => Err(VaultError::io("read", path, e)),
    }
}
