//! Files written atomically (temporary file in the same directory, fsync,
//! rename, fsync of the directory): the agent's `subnet.env`, the CNI
//! plugin's saved configurations and installed files.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Replaces `path` with `content` so that readers see the old or the new file, never half of one.
pub fn write_atomic(path: &Path, content: &str, mode: u32) -> std::io::Result<()> {
    write_atomic_bytes(path, content.as_bytes(), mode)
}

/// [`write_atomic`] for bytes (an executable, a saved configuration).
pub fn write_atomic_bytes(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        // Created with `mode` (less the umask), so the content is never
        // readable by others, not even between create and chmod; then the
        // exact mode, whatever the umask or a stale temporary file had.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(content)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_file_with_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/subnet.env");
        write_atomic(&path, "A=1\n", 0o644).unwrap();
        write_atomic(&path, "A=2\n", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "A=2\n");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn a_stale_temporary_file_neither_leaks_content_nor_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c1");
        let stale = dir.path().join(format!(".c1.{}.tmp", std::process::id()));
        std::fs::write(&stale, "a longer old content").unwrap();
        std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o666)).unwrap();
        write_atomic_bytes(&path, b"{}", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!stale.exists());
    }
}
