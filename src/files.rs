//! Files Cadre keeps: its data directory and everything in it are the
//! owner's only (directories 0700, files 0600). The database holds password
//! and token hashes, the audit log and every message and tool-call argument,
//! so no other local user may read any of it.
//!
//! `cadre` sets its umask to 077 at start (`main.rs`), so whatever a library
//! writes for it (SQLite's WAL and SHM, the search index) is private too;
//! the functions here say so explicitly where Cadre creates the file itself,
//! and tighten what an older version left readable.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every directory Cadre creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file Cadre creates.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) readable by the owner only, and
/// takes group and other access away from it when it already exists.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    tighten(dir, DIR_MODE)
}

/// Takes group and other access away from `path` if it exists (the files
/// and directories of an older version, created 0644/0755).
pub fn tighten(path: &Path, mode: u32) -> std::io::Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens `path` for appending, creating it 0600.
pub fn append_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Creates (or truncates) `path` for writing, 0600.
pub fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Writes a file readable by its owner only, atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = create_private(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The data directory made private, with the files of an older version in
/// it tightened: the SQLite database (created here 0600 before SQLite opens
/// it, so its WAL and SHM files, which SQLite gives the database's mode,
/// are 0600 too) and the generated keys.
pub fn secure_data_dir(data_dir: &Path, sqlite_file: Option<&Path>) -> std::io::Result<()> {
    private_dir(data_dir)?;
    if let Some(db) = sqlite_file {
        if let Some(parent) = db.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(parent)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(FILE_MODE)
            .open(db)?;
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            tighten(Path::new(&name), FILE_MODE)?;
        }
    }
    for name in ["jwt_secret", "secrets.key"] {
        tighten(&data_dir.join(name), FILE_MODE)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn an_old_world_readable_data_dir_is_tightened() {
        let root = tempfile::tempdir().expect("tempdir");
        let data = root.path().join("data");
        std::fs::create_dir(&data).expect("mkdir");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let db = data.join("cadre.db");
        for f in [&db, &data.join("cadre.db-wal"), &data.join("jwt_secret")] {
            std::fs::write(f, b"x").expect("write");
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        secure_data_dir(&data, Some(&db)).expect("secure");
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&data.join("cadre.db-wal")), 0o600);
        assert_eq!(mode(&data.join("jwt_secret")), 0o600);
        // A new one is created private, whatever the umask.
        let fresh = root.path().join("fresh/nested");
        secure_data_dir(&fresh, Some(&fresh.join("cadre.db"))).expect("secure");
        assert_eq!(mode(&fresh), 0o700);
        assert_eq!(mode(&fresh.join("cadre.db")), 0o600);
    }
}
