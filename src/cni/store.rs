//! The delegate configurations rendered at ADD, one file per container in
//! `dataDir` (flannel's scratch netconf): directory 0700, file 0600, written
//! atomically and fsynced, so DEL tears down exactly what ADD set up even
//! after `subnet.env` changed or vanished.

use super::spec::{CniError, code, validate_container_id};
use crate::files::write_atomic_bytes;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The data directory.
#[derive(Debug, Clone)]
pub struct DelegateStore {
    dir: PathBuf,
}

fn io_error(what: String, e: std::io::Error) -> CniError {
    CniError::new(code::IO_FAILURE, format!("{what}: {e}"))
}

impl DelegateStore {
    /// The saved configurations in `dir` (flannel's `dataDir`).
    pub fn new(dir: impl Into<PathBuf>) -> DelegateStore {
        DelegateStore { dir: dir.into() }
    }

    /// The file of a container (the ID was validated: it cannot leave the directory).
    pub fn path(&self, container_id: &str) -> PathBuf {
        self.dir.join(container_id)
    }

    /// Saves the delegate configuration of a container, durably.
    pub fn save(&self, container_id: &str, config: &[u8]) -> Result<(), CniError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| {
                io_error(
                    format!("cannot create the data directory {}", self.dir.display()),
                    e,
                )
            })?;
        let path = self.path(container_id);
        write_atomic_bytes(&path, config, 0o600)
            .map_err(|e| io_error(format!("cannot save {}", path.display()), e))
    }

    /// The saved configuration, or `None` if there is none.
    pub fn load(&self, container_id: &str) -> Result<Option<Vec<u8>>, CniError> {
        let path = self.path(container_id);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(format!("cannot read {}", path.display()), e)),
        }
    }

    /// The containers with a saved configuration, sorted: the file names that
    /// are container IDs (not the temporary file of a save in progress).
    pub fn containers(&self) -> Result<Vec<String>, CniError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(io_error(
                    format!("cannot list the data directory {}", self.dir.display()),
                    e,
                ));
            }
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| {
                io_error(
                    format!("cannot list the data directory {}", self.dir.display()),
                    e,
                )
            })?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if validate_container_id(&name).is_ok() && entry.file_type().is_ok_and(|t| t.is_file())
            {
                ids.push(name);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Forgets a container (absent is fine).
    pub fn remove(&self, container_id: &str) -> Result<(), CniError> {
        remove_file(&self.path(container_id))
    }
}

fn remove_file(path: &Path) -> Result<(), CniError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(format!("cannot remove {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn save_load_remove_with_owner_only_permissions() {
        let tmp = tempfile::tempdir().unwrap();
        let store = DelegateStore::new(tmp.path().join("a/flannel"));
        assert_eq!(store.load("c1").unwrap(), None);
        store.save("c1", b"{\"type\":\"bridge\"}").unwrap();
        assert_eq!(store.load("c1").unwrap().unwrap(), b"{\"type\":\"bridge\"}");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&tmp.path().join("a/flannel")), 0o700);
        assert_eq!(mode(&store.path("c1")), 0o600);
        assert_eq!(
            std::fs::read_dir(tmp.path().join("a/flannel"))
                .unwrap()
                .count(),
            1,
            "no temporary file left"
        );
        // Listing: container IDs only, not a save in progress or a directory.
        store.save("c0", b"{}").unwrap();
        std::fs::write(tmp.path().join("a/flannel/.c2.1.tmp"), b"").unwrap();
        std::fs::create_dir(tmp.path().join("a/flannel/sub")).unwrap();
        assert_eq!(store.containers().unwrap(), ["c0", "c1"]);
        std::fs::remove_file(tmp.path().join("a/flannel/.c2.1.tmp")).unwrap();
        std::fs::remove_dir(tmp.path().join("a/flannel/sub")).unwrap();
        store.remove("c0").unwrap();
        store.remove("c1").unwrap();
        store.remove("c1").unwrap();
        assert_eq!(store.load("c1").unwrap(), None);
        assert_eq!(store.containers().unwrap(), Vec::<String>::new());
        assert_eq!(
            DelegateStore::new(tmp.path().join("none"))
                .containers()
                .unwrap(),
            Vec::<String>::new()
        );
    }
}
