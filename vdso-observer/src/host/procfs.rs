//! What /proc says about a process, and how its name is shown.
//!
//! A process may exit between the kernel counting its calls and user space
//! looking: every read here treats "gone" as an answer, not an error.

use std::{fs, io::ErrorKind};

use vdso_observer_common::{ProcessEnd, ProcessKey, proc_stat};

use crate::model::ProcessLookup;

/// Whether the process a key names is still running, as far as /proc can
/// say: false only when the pid is gone or was started at another instant (a
/// reused pid); a read that fails for another reason (out of descriptors, a
/// hidepid mount) is never taken for an exit. /proc cannot see an exec: the
/// kernel's marks ([`LivenessBefore`]) do.
pub fn is_running(key: &ProcessKey) -> bool {
    has_exited(key.tgid, boottime_ns_to_ticks(key.start_boottime_ns)) != Some(true)
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

/// What uname(2) says: the kernel release (as the process's personality
/// shows it: `setarch --uname-2.6` makes a 6.x kernel say 2.6) and the host name.
pub struct Uname {
    pub release: String,
    pub hostname: String,
}

/// `kernel.perf_event_max_sample_rate`: samples a second the kernel lets
/// every perf event make before it throttles it; it lowers the value by
/// itself when its perf interrupts take too long (the kernel log then says
/// `perf: interrupt took too long`). None when unreadable.
pub fn perf_max_sample_rate() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .ok()?
        .trim()
        .parse()
        .ok()
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

/// The comm and real uid of the process a key names, read through one
/// descriptor of its /proc directory after checking its start time there: a
/// pid reused since is another directory, so it cannot lend its name.
pub fn comm_and_uid_of(key: &ProcessKey) -> Option<(Vec<u8>, Option<u32>)> {
    use std::{io::Read as _, os::fd::FromRawFd as _};
    let dir = std::ffi::CString::new(format!("/proc/{}", key.tgid)).ok()?;
    // SAFETY: a valid C string; the descriptor is owned below.
    let fd = unsafe {
        libc::open(
            dir.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a descriptor this function just opened and nothing else owns.
    let dir = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let read_at = |name: &std::ffi::CStr| -> Option<String> {
        // SAFETY: a valid directory descriptor and a relative C string name.
        let fd = unsafe {
            libc::openat(
                std::os::fd::AsRawFd::as_raw_fd(&dir),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: as above.
        let mut file = unsafe { fs::File::from_raw_fd(fd) };
        let mut text = String::new();
        file.read_to_string(&mut text).ok()?;
        Some(text)
    };
    let stat = read_at(c"stat")?;
    if proc_stat::start_ticks(&stat)? != boottime_ns_to_ticks(key.start_boottime_ns) {
        return None;
    }
    // comm sits between the first '(' and the last ')' of stat.
    let comm = stat
        .get(stat.find('(')? + 1..stat.rfind(')')?)?
        .as_bytes()
        .to_vec();
    let uid = read_at(c"status").and_then(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    });
    Some((comm, uid))
}

/// Who processes are, from /proc and NSS: what the aggregation asks of the host.
pub struct HostLookup;

impl ProcessLookup for HostLookup {
    fn is_running(&self, process: &ProcessKey) -> bool {
        is_running(process)
    }

    fn comm_and_uid(&self, process: &ProcessKey) -> Option<(Vec<u8>, Option<u32>)> {
        comm_and_uid_of(process)
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
    gone: std::collections::HashSet<ProcessKey, foldhash::fast::RandomState>,
}

impl LivenessBefore {
    /// From the kernel's marks (`Some(end)`: the process has a name entry the
    /// lifetime programs mark at exit and exec, when `marked` says they are
    /// attached), and from /proc for the rest.
    pub fn check(
        processes: impl IntoIterator<Item = (ProcessKey, Option<ProcessEnd>)>,
        marked: bool,
    ) -> LivenessBefore {
        let gone = processes.into_iter().filter(|(process, end)| match end {
            Some(ProcessEnd::Exited | ProcessEnd::Execed) => true,
            Some(ProcessEnd::Running) if marked => false,
            _ => !is_running(process),
        });
        // Listed first, then hashed at their final size: under churn thousands
        // are gone at each drain, and a set grown one by one rehashes often.
        let gone: Vec<ProcessKey> = gone.map(|(process, _)| process).collect();
        let mut set = std::collections::HashSet::with_capacity_and_hasher(
            gone.len(),
            foldhash::fast::RandomState::default(),
        );
        set.extend(gone);
        LivenessBefore { gone: set }
    }

    pub fn gone(&self) -> usize {
        self.gone.len()
    }
}

impl ProcessLookup for LivenessBefore {
    fn is_running(&self, process: &ProcessKey) -> bool {
        !self.gone.contains(process)
    }

    fn comm_and_uid(&self, process: &ProcessKey) -> Option<(Vec<u8>, Option<u32>)> {
        HostLookup.comm_and_uid(process)
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
        let liveness = LivenessBefore::check([(gone, None)], true);
        assert_eq!(liveness.gone(), 1);
        assert!(!liveness.is_running(&gone));
        // Not checked: appeared after the check, so it runs.
        assert!(liveness.is_running(&me));
    }

    #[test]
    fn the_kernels_marks_decide_where_there_are_marks() {
        let me = own_key();
        let execed = ProcessKey {
            exec_id: me.exec_id + 1,
            ..me
        };
        // An image that exec'd has a live pid and its start time: only the
        // kernel's mark retires it.
        let liveness = LivenessBefore::check(
            [
                (me, Some(ProcessEnd::Execed)),
                (execed, Some(ProcessEnd::Running)),
            ],
            true,
        );
        assert!(!liveness.is_running(&me));
        assert!(liveness.is_running(&execed));
        // A gone pid marked running while the marks are trusted stays (its
        // exit mark comes with the next look); without marks /proc decides.
        let gone = ProcessKey {
            tgid: u32::MAX,
            ..me
        };
        let marked = LivenessBefore::check([(gone, Some(ProcessEnd::Running))], true);
        assert!(marked.is_running(&gone));
        let unmarked = LivenessBefore::check([(gone, Some(ProcessEnd::Running))], false);
        assert!(!unmarked.is_running(&gone));
    }

    /// Out of descriptors, /proc cannot be read: that is no exit. (Before,
    /// any error was taken for "gone": live processes were retired and their
    /// series restarted from 0.)
    #[test]
    fn a_proc_read_that_fails_with_emfile_is_not_an_exit() {
        let me = own_key();
        let child = std::process::Command::new("/bin/sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let ticks = start_ticks(child.id()).expect("the child's stat");
        let child_key = ProcessKey {
            tgid: child.id(),
            exec_id: 0,
            start_boottime_ns: ticks * 1_000_000_000 / clock_ticks_per_second(),
        };
        // Take every free descriptor, then ask.
        let mut held = Vec::new();
        while let Ok(file) = fs::File::open("/dev/null") {
            held.push(file);
        }
        let running = is_running(&child_key);
        let liveness = LivenessBefore::check([(child_key, None), (me, None)], false);
        let named = comm_and_uid_of(&child_key);
        drop(held);
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        assert!(running, "EMFILE was taken for an exit");
        assert_eq!(liveness.gone(), 0);
        assert_eq!(named, None, "nothing read, nothing named");
        assert!(comm_and_uid_of(&me).is_some());
    }

    #[test]
    fn a_reused_pid_lends_no_name() {
        let me = own_key();
        let (comm, uid) = comm_and_uid_of(&me).expect("own comm");
        assert!(!comm.is_empty());
        // SAFETY: getuid has no preconditions.
        assert_eq!(uid, Some(unsafe { libc::getuid() }));
        let reused = ProcessKey {
            start_boottime_ns: me.start_boottime_ns + 1_000_000_000,
            ..me
        };
        assert_eq!(comm_and_uid_of(&reused), None);
    }

    fn own_key() -> ProcessKey {
        ProcessKey {
            tgid: std::process::id(),
            exec_id: 0,
            start_boottime_ns: start_ticks(std::process::id()).unwrap() * 1_000_000_000
                / clock_ticks_per_second(),
        }
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
