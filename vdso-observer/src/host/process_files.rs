//! The files a process runs and maps, opened as the kernel sees them
//! (`/proc/PID/exe`, `/proc/PID/map_files/…`), never by a name the process
//! could swap, and read bounded: what exact counting reads of other users'
//! programs.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// Whether an executable is a 32-bit ELF (its `EI_CLASS`).
pub fn is_32bit_elf(path: &Path) -> bool {
    use std::io::Read as _;
    let mut header = [0u8; 5];
    open_regular(path)
        .map_err(std::io::Error::other)
        .and_then(|(mut file, _)| file.read_exact(&mut header))
        .is_ok()
        && header[..4] == *b"\x7fELF"
        && header[4] == 1
}

/// What exact counting needs to know of a process's files. Each is opened
/// through the kernel's own handle on what the process maps
/// (`/proc/PID/map_files/…`, `/proc/PID/exe`), never by a path the process
/// could swap for a FIFO, a device or a link (its own view of the
/// filesystem, a deleted file's name).
pub struct ProcessFiles {
    /// Files mapped executable, as the process's maps name them.
    pub executable_mappings: Vec<PathBuf>,
    /// `/proc/PID/map_files/START-END` of each, by its name.
    mapped_at: std::collections::HashMap<PathBuf, PathBuf>,
    /// `/proc/PID/exe`: the executable the process runs.
    pub exe: PathBuf,
}

impl ProcessFiles {
    /// Where a mapped file is opened from here (a path no file has when the
    /// name is not mapped: opening it fails, and says so).
    pub fn open_path(&self, mapped: &Path) -> PathBuf {
        self.mapped_at
            .get(mapped)
            .cloned()
            .unwrap_or_else(|| Path::new("/nonexistent-mapping").join(mapped))
    }
}

/// Files a process's executable memory maps are read in whole by nobody: at
/// most this large, and read lazily (what ELF parsing touches).
pub const LARGEST_BINARY: u64 = 1 << 30;

/// Opens a file of another process for reading: non-blocking (a FIFO or a
/// device never hangs the open), no controlling terminal, and only if it is a
/// regular file of at most [`LARGEST_BINARY`] bytes. Returns it with its size.
pub fn open_regular(path: &Path) -> anyhow::Result<(fs::File, u64)> {
    use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};

    use anyhow::{Context as _, bail};
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("fstat {}", path.display()))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        bail!("{} is {what}: not read", path.display());
    }
    if meta.len() > LARGEST_BINARY {
        bail!(
            "{} is {} bytes, more than the {LARGEST_BINARY} read for symbols",
            path.display(),
            meta.len()
        );
    }
    Ok((file, meta.len()))
}

/// The executable mappings and the executable of a process.
/// The file and file offset of an address of this process's own code (for a
/// uprobe where no symbol names it: a stripped static binary).
pub fn own_code_location(address: u64) -> anyhow::Result<(PathBuf, u64)> {
    use anyhow::Context as _;
    let maps = fs::read_to_string("/proc/self/maps").context("reading /proc/self/maps")?;
    code_location_in_maps(&maps, address)
        .ok_or_else(|| anyhow::anyhow!("{address:#x} is in no file mapping of /proc/self/maps"))
}

/// [`own_code_location`] on a maps text.
fn code_location_in_maps(maps: &str, address: u64) -> Option<(PathBuf, u64)> {
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let (start, end) = (
            u64::from_str_radix(start, 16).ok()?,
            u64::from_str_radix(end, 16).ok()?,
        );
        let _perms = fields.next()?;
        let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
        let path = fields.nth(2)?;
        (start <= address && address < end && path.starts_with('/'))
            .then(|| (PathBuf::from(path), address - start + offset))
    })
}

pub fn process_files(pid: u32) -> anyhow::Result<ProcessFiles> {
    use anyhow::Context as _;
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("reading /proc/{pid}/maps"))?;
    let mapped = mapped_files(&maps);
    Ok(ProcessFiles {
        executable_mappings: mapped.iter().map(|(path, _)| path.clone()).collect(),
        mapped_at: mapped
            .into_iter()
            .map(|(path, range)| {
                (
                    path,
                    PathBuf::from(format!("/proc/{pid}/map_files/{range}")),
                )
            })
            .collect(),
        exe: PathBuf::from(format!("/proc/{pid}/exe")),
    })
}

/// Executable file mappings of a /proc/PID/maps text, each once, with the
/// address range (`START-END`, as map_files names it) of its first one.
pub fn mapped_files(maps: &str) -> Vec<(PathBuf, String)> {
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let range = fields.next().unwrap_or("");
        let perms = fields.next().unwrap_or("");
        // A name with spaces (" (deleted)" too) is the rest of the line.
        let path = line
            .splitn(6, char::is_whitespace)
            .nth(5)
            .map(str::trim_start)
            .unwrap_or("");
        if perms.contains('x') && path.starts_with('/') {
            let path = PathBuf::from(path);
            if !files.iter().any(|(known, _)| *known == path) {
                files.push((path, range.to_owned()));
            }
        }
    }
    files
}

/// A file as its process names it: `/proc/7/root/usr/lib/x` -> `/usr/lib/x`;
/// `/proc/7/map_files/…` and `/proc/7/exe` -> where they lead.
pub fn display_path(path: &Path) -> String {
    let text = path.display().to_string();
    if (text.contains("/map_files/") || text.ends_with("/exe"))
        && let Ok(target) = fs::read_link(path)
    {
        return target.display().to_string();
    }
    // /proc/PID/root/usr/lib/... -> /usr/lib/...
    match text.strip_prefix("/proc/") {
        Some(rest) => rest
            .split_once("/root")
            .map_or(text.clone(), |(_, p)| p.to_owned()),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_address_is_found_in_its_file() {
        let maps = "5555aa000000-5555aa010000 r--p 00000000 08:01 42 /usr/bin/vdso-observer\n\
                    5555aa010000-5555aa200000 r-xp 00010000 08:01 42 /usr/bin/vdso-observer\n\
                    7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]\n";
        assert_eq!(
            code_location_in_maps(maps, 0x5555_aa01_2345),
            Some((PathBuf::from("/usr/bin/vdso-observer"), 0x12345))
        );
        assert_eq!(code_location_in_maps(maps, 0x7ffd_0000_0010), None);
        assert_eq!(code_location_in_maps(maps, 0x1000), None);
    }

    #[test]
    fn own_executable_is_a_64bit_regular_file() {
        assert!(!is_32bit_elf(Path::new("/proc/self/exe")));
        let (_, size) = open_regular(Path::new("/proc/self/exe")).unwrap();
        assert!(size > 0);
        let err = open_regular(Path::new("/dev/zero")).unwrap_err();
        assert!(format!("{err:#}").contains("a device"), "{err:#}");
    }
}
