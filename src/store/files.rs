//! The data directory on disk: its exclusive lock, and directories created so that a power
//! loss cannot take back the entries acknowledged data depends on.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::StoreError;

/// The lock file at the data directory's root.
const LOCK_FILE: &str = "lock";

/// An exclusive lock on a data directory, held until dropped (the process's life, for a
/// server). Taken before anything in the directory is read, created or removed, so a
/// second server on the same directory cannot touch the first one's files.
pub(super) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Locks `dir` (which must exist) and records this process's id in the lock file, so a
    /// refused second server can say who holds it.
    ///
    /// # Errors
    /// [`StoreError::InUse`] when another process (or another open log in this one) holds
    /// the lock; I/O failures otherwise.
    pub(super) fn acquire(dir: &Path) -> Result<DirLock, StoreError> {
        let path = dir.join(LOCK_FILE);
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|source| {
                StoreError::File { path: path.display().to_string(), what: "cannot open the lock file", source }
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                // The holder writes its pid right after locking; if it has not yet, say so.
                let _ = file.read_to_string(&mut holder);
                return Err(StoreError::InUse {
                    dir: dir.display().to_string(),
                    pid: holder.trim().parse().ok().map_or_else(|| "unknown".to_owned(), |pid: u32| pid.to_string()),
                });
            }
            Err(TryLockError::Error(source)) => {
                return Err(StoreError::File { path: path.display().to_string(), what: "cannot lock", source });
            }
        }
        let pid = std::process::id().to_string();
        let mut record = || -> std::io::Result<()> {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(pid.as_bytes())
        };
        record().map_err(|source| StoreError::File {
            path: path.display().to_string(),
            what: "cannot write the lock file",
            source,
        })?;
        Ok(DirLock { _file: file })
    }
}

/// Creates `dir` and any missing parents, fsyncing each new directory's parent, so the new
/// entries survive a power loss once this returns (a directory entry is durable only when
/// the directory holding it is synced).
///
/// # Errors
/// [`StoreError::File`] naming the directory that could not be created or synced.
pub(super) fn create_dir_durably(dir: &Path) -> Result<(), StoreError> {
    let missing: Vec<PathBuf> = dir.ancestors().take_while(|path| !path.exists()).map(Path::to_owned).collect();
    for path in missing.iter().rev() {
        match std::fs::create_dir(path) {
            Ok(()) => {}
            // Another process may create it at the same moment; it syncs its own entry.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(source) => {
                return Err(StoreError::File {
                    path: path.display().to_string(),
                    what: "cannot create the directory",
                    source,
                });
            }
        }
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
    }
    if !dir.is_dir() {
        return Err(StoreError::File {
            path: dir.display().to_string(),
            what: "is not a directory",
            source: std::io::ErrorKind::NotADirectory.into(),
        });
    }
    Ok(())
}

/// fsyncs a directory, making the entries created or renamed in it durable.
///
/// # Errors
/// [`StoreError::File`] naming the directory.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    // `parent()` of a relative one-component path is "", meaning the current directory.
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    File::open(dir).and_then(|file| file.sync_all()).map_err(|source| StoreError::File {
        path: dir.display().to_string(),
        what: "cannot sync the directory",
        source,
    })
}

/// fsyncs `dir`'s parent, `dir` and every directory below it: fjall creates its directory
/// tree without syncing the entries, and the mark created next says the tree exists.
pub(super) fn sync_tree(dir: &Path) -> Result<(), StoreError> {
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        sync_dir(&dir)?;
        let entries = std::fs::read_dir(&dir).map_err(|source| StoreError::File {
            path: dir.display().to_string(),
            what: "cannot list the directory",
            source,
        })?;
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_names_the_holder() {
        let dir = tempfile::tempdir().expect("temp dir");
        let held = DirLock::acquire(dir.path()).expect("first lock");
        match DirLock::acquire(dir.path()) {
            Err(StoreError::InUse { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected InUse, got {:?}", other.map(|_| ())),
        }
        drop(held);
        DirLock::acquire(dir.path()).expect("the lock is free again once dropped");
    }

    #[test]
    fn nested_directories_are_created_and_a_file_in_the_way_is_named() {
        let root = tempfile::tempdir().expect("temp dir");
        let nested = root.path().join("a/b/c");
        create_dir_durably(&nested).expect("create");
        assert!(nested.is_dir());
        create_dir_durably(&nested).expect("an existing directory is fine");
        let file = root.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        let error = create_dir_durably(&file).expect_err("a regular file is not a data directory");
        assert!(error.to_string().contains(&file.display().to_string()), "{error}");
        assert!(error.to_string().contains("is not a directory"), "{error}");
    }
}
