//! Files that must survive power loss once a client has been told they exist: the signing key
//! and uploaded media. Writing and renaming is not enough: the file's data and the directory
//! entries naming it are only in the page cache until fsynced.

use std::io::Write;
use std::path::Path;

/// fsyncs `dir` itself (its entries: a file renamed into it, a subdirectory created in it).
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Renames `from` (already synced) to `to`, creating `to`'s directories, and syncs every
/// directory from `to`'s parent up to and including `root`, so the new name and any directory
/// created for it are on disk when this returns.
pub(crate) fn rename_into(from: &Path, to: &Path, root: &Path) -> std::io::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::rename(from, to)?;
    let mut dir = to.parent();
    while let Some(d) = dir {
        sync_dir(d)?;
        if d == root || !d.starts_with(root) {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// Writes a new file at `path` with `contents` and `mode` so that, after a crash at any
/// moment, `path` either does not exist or holds all of `contents`: written to a temporary
/// name, synced, linked to `path` (which fails if `path` exists), then the directory synced.
pub(crate) fn create_new_file(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Random: two processes (two containers, both pid 1) may start on one directory at once.
    let tmp = dir.join(format!(".{name}.{}.tmp", crate::server::random_string(12)));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let written = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => {}
        // A filesystem without hard links: the file is made in place (whole once synced, but a
        // crash while writing may leave it short).
        Err(e) if matches!(e.kind(), std::io::ErrorKind::Unsupported | std::io::ErrorKind::PermissionDenied) => {
            let mut file = options.open(path)?;
            file.write_all(contents)?;
            file.sync_all()?;
        }
        Err(e) => return Err(e),
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_is_whole_and_never_replaces_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key");
        create_new_file(&path, b"first", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        let err = create_new_file(&path, b"second", 0o600).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path().join("sub")).unwrap().count(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn a_rename_creates_the_directories_it_needs() {
        let root = tempfile::tempdir().unwrap();
        let from = root.path().join("tmp-file");
        std::fs::write(&from, b"data").unwrap();
        let to = root.path().join("a/b/c/file");
        rename_into(&from, &to, root.path()).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"data");
        assert!(!from.exists());
    }
}
