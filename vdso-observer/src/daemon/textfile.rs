//! Writing the node_exporter textfile so that a scrape never sees half a file.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// Writes `content` to `path` atomically: a temporary file in the same directory
/// (no `.prom` suffix, so the collector never reads it), fsync, mode 0644,
/// rename over the target, fsync of the directory. On failure the previous file
/// is untouched and the temporary file removed.
pub fn write_atomic(path: &Path, content: &str) -> Result<()> {
    let temporary = temporary_path(path);
    let result = write_and_rename(&temporary, path, content);
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

fn write_and_rename(temporary: &Path, path: &Path, content: &str) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(temporary)
        .with_context(|| format!("creating {}", temporary.display()))?;
    // The umask may have taken bits away; node_exporter often runs as another user.
    file.set_permissions(fs::Permissions::from_mode(0o644))
        .with_context(|| format!("chmod 0644 {}", temporary.display()))?;
    file.write_all(content.as_bytes())
        .with_context(|| format!("writing {}", temporary.display()))?;
    file.sync_all()
        .with_context(|| format!("fsync {}", temporary.display()))?;
    drop(file);
    fs::rename(temporary, path)
        .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        // Makes the rename itself durable; failure here loses nothing already visible.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_whole_with_mode_0644() {
        let dir = std::env::temp_dir().join(format!("vdso-textfile-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vdso_observer.prom");
        write_atomic(&path, "a 1\n").unwrap();
        write_atomic(&path, "a 2\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "a 2\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_names_the_file_and_keeps_nothing() {
        let path = Path::new("/nonexistent-dir/vdso_observer.prom");
        let err = write_atomic(path, "a 1\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent-dir/.vdso_observer.prom"),
            "{err:#}"
        );
    }
}
