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
///
/// The directory may be writable by others (a shared textfile directory): the
/// temporary name is random and made with `O_EXCL | O_NOFOLLOW`, so a file or
/// symlink planted there is never opened or written through; the rename
/// replaces a link at `path` itself, never its target.
pub fn write_atomic(path: &Path, content: &str) -> Result<()> {
    let mut last_err = None;
    // A name already taken (planted, or left by a crash) is skipped, not opened.
    for _ in 0..8 {
        let temporary = temporary_path(path);
        match create_new(&temporary) {
            Ok(file) => {
                let result = write_and_rename(file, &temporary, path, content);
                if result.is_err() {
                    let _ = fs::remove_file(&temporary);
                }
                return result;
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => last_err = Some(err),
            Err(err) => {
                return Err(err).with_context(|| format!("creating {}", temporary.display()));
            }
        }
    }
    Err(last_err.expect("eight tries"))
        .with_context(|| format!("creating a temporary file beside {}", path.display()))
}

/// `.NAME.RANDOM.tmp` beside `path`: not guessable by another user.
fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut random = [0u8; 8];
    // SAFETY: a valid buffer of its length; a short read leaves zeros, which
    // O_EXCL still makes safe.
    unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
    path.with_file_name(format!(".{name}.{:016x}.tmp", u64::from_ne_bytes(random)))
}

/// A file made here and now, never one that was there (no symlink followed).
fn create_new(temporary: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(temporary)
}

fn write_and_rename(mut file: File, temporary: &Path, path: &Path, content: &str) -> Result<()> {
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

    /// Another user plants a symlink where the old, predictable temporary
    /// name (`.NAME.PID.tmp`) was and links the target to a file of theirs:
    /// neither is written through. (Before, the daemon wrote its metrics into
    /// the planted link's target and made it 0644.)
    #[test]
    fn planted_links_are_never_written_through() {
        use std::os::unix::fs::symlink;
        let dir = std::env::temp_dir().join(format!("vdso-textfile-link-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        fs::write(&victim, "precious\n").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
        let path = dir.join("vo.prom");
        symlink(
            &victim,
            dir.join(format!(".vo.prom.{}.tmp", std::process::id())),
        )
        .unwrap();
        for _ in 0..20 {
            write_atomic(&path, "a 1\n").unwrap();
        }
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
        assert_eq!(
            fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "a 1\n");
        // A link at the target itself is replaced, not followed.
        fs::remove_file(&path).unwrap();
        symlink(&victim, &path).unwrap();
        write_atomic(&path, "a 2\n").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
        assert!(
            !fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // And a planted file at a taken name is skipped, not opened.
        let taken = dir.join(".vo.prom.taken.tmp");
        assert!(create_new(&taken).is_ok());
        assert_eq!(
            create_new(&taken).unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
