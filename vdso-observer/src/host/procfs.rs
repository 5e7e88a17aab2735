//! What /proc says about a process, and how its name is shown.
//!
//! A process may exit between the kernel counting its calls and user space
//! looking: every read here treats "gone" as an answer, not an error.

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use vdso_observer_common::{ProcessKey, proc_stat};

use crate::model::ProcessLookup;

/// Whether the process image a key names is still running: the pid exists and
/// was started at the same instant (a reused pid was not).
pub fn is_running(key: &ProcessKey) -> bool {
    match start_ticks(key.tgid) {
        Some(ticks) => ticks == boottime_ns_to_ticks(key.start_boottime_ns),
        None => false,
    }
}

/// Real uid of a running process (first field of `Uid:` in /proc/PID/status).
pub fn uid_of(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Field 22 of /proc/PID/stat: start time after boot in clock ticks; None when
/// the process is gone or the file is unreadable.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat,
        Err(err) if err.kind() == ErrorKind::NotFound => return None,
        Err(err) => {
            log::debug!("/proc/{pid}/stat: {err}");
            return None;
        }
    };
    proc_stat::start_ticks(&stat)
}

/// utime + stime of a process (fields 14 and 15 of /proc/PID/stat), in clock
/// ticks; None when it is gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    proc_stat::cpu_ticks(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether the process started at `start_ticks` has exited: None when /proc
/// cannot tell (out of file descriptors, say), which is never taken for "gone".
pub fn has_exited(pid: u32, start_ticks: u64) -> Option<bool> {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => Some(proc_stat::start_ticks(&stat) != Some(start_ticks)),
        Err(err) if err.kind() == ErrorKind::NotFound => Some(true),
        // ESRCH: the task went away while the file was read.
        Err(err) if err.raw_os_error() == Some(libc::ESRCH) => Some(true),
        Err(err) => {
            log::debug!("/proc/{pid}/stat: {err}");
            None
        }
    }
}

/// CPU time of a whole process (every thread, user and system) in ns, read
/// from its CPU-time clock: ns resolution, where /proc/PID/stat moves in 10 ms
/// steps. None when it is gone.
pub fn cpu_time_ns(pid: u32) -> Option<u64> {
    let mut clock: libc::clockid_t = 0;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointers; the results are checked.
    unsafe {
        if libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) != 0
            || libc::clock_gettime(clock, &mut ts) != 0
        {
            return None;
        }
    }
    Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Raises the soft limit on open files to the hard limit (exact counting holds
/// one descriptor per breakpoint and thread); returns the soft limit in force.
pub fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer; then the same struct back in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// Whether an executable is a 32-bit ELF (its `EI_CLASS`).
pub fn is_32bit_elf(path: &Path) -> bool {
    use std::io::Read as _;
    let mut header = [0u8; 5];
    fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut header))
        .is_ok()
        && header[..4] == *b"\x7fELF"
        && header[4] == 1
}

/// The kernel reports start times in USER_HZ ticks, truncating.
pub fn boottime_ns_to_ticks(ns: u64) -> u64 {
    ns / (1_000_000_000 / clock_ticks_per_second())
}

/// USER_HZ, the unit of /proc's CPU and start times.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// The thread ids of a process (its /proc/PID/task entries).
pub fn threads_of(pid: u32) -> Vec<u32> {
    numeric_entries(&format!("/proc/{pid}/task"))
}

/// Every pid in /proc.
pub fn all_pids() -> Vec<u32> {
    numeric_entries("/proc")
}

fn numeric_entries(dir: &str) -> Vec<u32> {
    fs::read_dir(dir)
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A process's CPU use over its life so far, in CPUs.
pub fn cpu_share(pid: u32) -> Option<f64> {
    let ticks = cpu_ticks(pid)? as f64;
    let start = start_ticks(pid)? as f64;
    let uptime: f64 = fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let ticks_per_second = clock_ticks_per_second() as f64;
    let age = (uptime - start / ticks_per_second).max(0.1);
    Some(ticks / ticks_per_second / age)
}

/// The raw comm of a running process (/proc/PID/comm without its newline).
pub fn comm_of(pid: u32) -> Option<Vec<u8>> {
    let comm = fs::read(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.strip_suffix(b"\n").unwrap_or(&comm).to_vec())
}

/// What uname(2) says: the kernel release (as the process's personality
/// shows it: `setarch --uname-2.6` makes a 6.x kernel say 2.6) and the host name.
pub struct Uname {
    pub release: String,
    pub hostname: String,
}

pub fn uname() -> Uname {
    let mut name = std::mem::MaybeUninit::<libc::utsname>::uninit();
    // SAFETY: uname fills a valid utsname.
    if unsafe { libc::uname(name.as_mut_ptr()) } != 0 {
        return Uname {
            release: "?".into(),
            hostname: "?".into(),
        };
    }
    // SAFETY: uname succeeded; its strings are NUL-terminated.
    let name = unsafe { name.assume_init() };
    let text = |field: &[libc::c_char]| {
        // SAFETY: a NUL-terminated field of the utsname.
        unsafe { std::ffi::CStr::from_ptr(field.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    Uname {
        release: text(&name.release),
        hostname: text(&name.nodename),
    }
}

/// This process's effective capability mask (`CapEff:` of /proc/self/status).
pub fn own_effective_capabilities() -> anyhow::Result<u64> {
    use anyhow::Context as _;
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    effective_capabilities(&status)
        .ok_or_else(|| anyhow::anyhow!("no CapEff line in /proc/self/status"))
}

/// The `CapEff:` mask of a /proc/PID/status text.
pub fn effective_capabilities(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// What exact counting needs to know of a process's files.
pub struct ProcessFiles {
    /// Files mapped executable, in the process's own view of the filesystem.
    pub executable_mappings: Vec<PathBuf>,
    /// /proc/PID/exe, in the process's view.
    pub exe: PathBuf,
    /// /proc/PID/root: where the process's view starts from here (containers).
    pub root: PathBuf,
}

impl ProcessFiles {
    /// A path of the process's view, as seen from here.
    pub fn in_root(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }
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
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .with_context(|| format!("reading /proc/{pid}/exe"))?;
    Ok(ProcessFiles {
        executable_mappings: mapped_files(&maps),
        exe,
        root: PathBuf::from(format!("/proc/{pid}/root")),
    })
}

/// Executable file mappings of a /proc/PID/maps text, each once.
pub fn mapped_files(maps: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let perms = fields.nth(1).unwrap_or("");
        let path = fields.nth(3).unwrap_or("");
        if perms.contains('x') && path.starts_with('/') {
            let path = PathBuf::from(path);
            if !files.contains(&path) {
                files.push(path);
            }
        }
    }
    files
}

/// A path without its /proc/PID/root prefix: `/proc/7/root/usr/lib/x` -> `/usr/lib/x`.
pub fn display_path(path: &Path) -> String {
    // /proc/PID/root/usr/lib/... -> /usr/lib/...
    let text = path.display().to_string();
    match text.strip_prefix("/proc/") {
        Some(rest) => rest
            .split_once("/root")
            .map_or(text.clone(), |(_, p)| p.to_owned()),
        None => text,
    }
}

/// Who processes are, from /proc and NSS: what the aggregation asks of the host.
pub struct HostLookup;

impl ProcessLookup for HostLookup {
    fn is_running(&self, process: &ProcessKey) -> bool {
        is_running(process)
    }

    fn comm_and_uid(&self, pid: u32) -> Option<(Vec<u8>, Option<u32>)> {
        Some((comm_of(pid)?, uid_of(pid)))
    }

    fn user_name(&self, uid: u32) -> String {
        super::users::name_of(uid)
    }

    fn cgroup_path(&self, id: u64) -> Option<String> {
        super::cgroups::path_of(id)
    }
}

/// Liveness frozen at one instant: the processes found gone then are gone,
/// any other (one that appeared since) runs. Checked *before* the maps are
/// read, so a process that makes its last calls and exits between the read and
/// the check is never retired with calls the read missed.
pub struct LivenessBefore {
    gone: std::collections::HashSet<ProcessKey>,
}

impl LivenessBefore {
    pub fn check(processes: impl IntoIterator<Item = ProcessKey>) -> LivenessBefore {
        LivenessBefore {
            gone: processes.into_iter().filter(|p| !is_running(p)).collect(),
        }
    }

    pub fn gone(&self) -> usize {
        self.gone.len()
    }
}

impl ProcessLookup for LivenessBefore {
    fn is_running(&self, process: &ProcessKey) -> bool {
        !self.gone.contains(process)
    }

    fn comm_and_uid(&self, pid: u32) -> Option<(Vec<u8>, Option<u32>)> {
        HostLookup.comm_and_uid(pid)
    }

    fn user_name(&self, uid: u32) -> String {
        HostLookup.user_name(uid)
    }

    fn cgroup_path(&self, id: u64) -> Option<String> {
        HostLookup.cgroup_path(id)
    }
}

#[cfg(test)]
mod tests {
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

    use super::*;

    #[test]
    fn own_process_figures() {
        let pid = std::process::id();
        let start = start_ticks(pid).unwrap();
        assert_eq!(has_exited(pid, start), Some(false));
        assert_eq!(has_exited(pid, start + 1), Some(true));
        assert_eq!(has_exited(u32::MAX >> 2, start), Some(true));
        let cpu = cpu_time_ns(pid).unwrap();
        assert!(cpu > 0 && cpu_time_ns(pid).unwrap() >= cpu);
        assert!(raise_open_file_limit() >= 1024);
        assert!(!is_32bit_elf(Path::new("/proc/self/exe")));
    }

    #[test]
    fn liveness_is_frozen_at_the_check() {
        let me = ProcessKey {
            tgid: std::process::id(),
            exec_id: 0,
            start_boottime_ns: start_ticks(std::process::id()).unwrap() * 1_000_000_000
                / clock_ticks_per_second(),
        };
        let gone = ProcessKey {
            tgid: u32::MAX,
            ..me
        };
        let liveness = LivenessBefore::check([gone]);
        assert_eq!(liveness.gone(), 1);
        assert!(!liveness.is_running(&gone));
        // Not checked: appeared after the check, so it runs.
        assert!(liveness.is_running(&me));
    }

    #[test]
    fn start_ticks_survive_odd_comms() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1234 56 18446744073709551615";
        assert_eq!(proc_stat::start_ticks(stat), Some(987654));
        assert_eq!(proc_stat::start_ticks("garbage"), None);
        assert_eq!(proc_stat::start_ticks("1 (x) S 1"), None);
    }

    #[test]
    fn own_process_is_running_and_a_wrong_start_is_not() {
        let pid = std::process::id();
        let ticks = start_ticks(pid).expect("own /proc/self/stat");
        let ns_per_tick = 1_000_000_000 / clock_ticks_per_second();
        let key = ProcessKey {
            tgid: pid,
            exec_id: 0,
            start_boottime_ns: ticks * ns_per_tick + ns_per_tick / 2,
        };
        assert!(is_running(&key));
        let reused = ProcessKey {
            start_boottime_ns: key.start_boottime_ns + 10 * ns_per_tick,
            ..key
        };
        assert!(!is_running(&reused));
        let gone = ProcessKey {
            tgid: u32::MAX - 1,
            ..key
        };
        assert!(!is_running(&gone));
    }
}
