//! Before anything loads: a kernel new enough for the programs, the
//! capabilities to load them, and the locked-memory limit old kernels charge.

use anyhow::{Result, bail};

use crate::host::procfs;
use log::warn;

/// The oldest kernel the programs load on: every program reads the task through
/// `bpf_get_current_task_btf` (Linux 5.11).
pub const KERNEL_FLOOR: (u32, u32) = (5, 11);
/// Exact counting attaches uprobes with BPF cookies (Linux 5.15).
pub const EXACT_KERNEL_FLOOR: (u32, u32) = (5, 15);

/// `6.1.0-57-amd64` -> (6, 1).
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Refuses, in one line, a kernel older than `floor` for `what`.
pub fn check_kernel_floor(release: &str, floor: (u32, u32), what: &str) -> Result<()> {
    match parse_release(release) {
        Some(found) if found < floor => bail!(
            "kernel {release} is too old for {what}: Linux {}.{} or newer is needed",
            floor.0,
            floor.1
        ),
        Some(_) => Ok(()),
        None => {
            warn!("cannot read the kernel version from {release:?}; trying anyway");
            Ok(())
        }
    }
}

/// Inode of the initial PID namespace (`PROC_PID_INIT_INO`, include/linux/proc_ns.h),
/// the same on every kernel since 3.8: the host's, whatever the container.
const INIT_PID_NAMESPACE_INODE: u64 = 0xEFFF_FFFC;

/// Refuses a private PID namespace: the kernel reports host pids, which such a
/// namespace cannot see, so every row would be matched against the wrong
/// `/proc` (and the observer's own calibration calls would not be recognised).
pub fn check_pid_namespace() -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    match std::fs::metadata("/proc/self/ns/pid") {
        Ok(namespace) => pid_namespace_verdict(namespace.ino()),
        Err(err) => {
            warn!("cannot read /proc/self/ns/pid ({err}); assuming the host's PID namespace");
            Ok(())
        }
    }
}

fn pid_namespace_verdict(inode: u64) -> Result<()> {
    if inode == INIT_PID_NAMESPACE_INODE {
        return Ok(());
    }
    bail!(
        "vdso-observer runs in a private PID namespace (pid:[{inode}]) and the kernel reports \
         host pids: run it in the host's (Kubernetes: hostPID: true; docker/podman: --pid=host; \
         no unshare -p)"
    )
}

/// Capability bits (linux/capability.h).
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What a running observer may still need a capability for, once its
/// programs are attached and its maps, perf events, /dev/kmsg and listening
/// socket are open (file descriptors keep working without them).
#[derive(Debug, Clone, Copy, Default)]
pub struct LaterNeeds {
    /// Exact counting loads and attaches uprobes and breakpoints as processes
    /// come and go, and reads other users' /proc/PID/maps and exe.
    pub exact: bool,
    /// A textfile is written (a directory another user owns needs DAC override).
    pub textfile: bool,
}

/// Drops every capability the observer no longer needs, from the effective,
/// permitted, inheritable and ambient sets (as ebpf_exporter does): a bug in
/// its later code cannot load programs or read kernel memory. Returns the names
/// of those kept. Capabilities are per thread: call it before threads start.
pub fn drop_capabilities(needs: LaterNeeds) -> Result<Vec<&'static str>> {
    let held = procfs::own_effective_capabilities()?;
    let mut wanted: Vec<(u32, &'static str)> = Vec::new();
    let release = procfs::uname().release;
    let unprivileged_bpf =
        std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled").unwrap_or_default();
    let reads_need_bpf = map_reads_need_cap_bpf(&release, &unprivileged_bpf);
    if needs.exact {
        // CAP_SYS_ADMIN too: a uprobe perf event for another process was refused
        // (EACCES) with CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE alone (6.18).
        wanted.extend([
            (CAP_BPF, "CAP_BPF"),
            (CAP_PERFMON, "CAP_PERFMON"),
            (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
            (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
            (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
        ]);
    }
    if needs.textfile {
        wanted.push((CAP_DAC_OVERRIDE, "CAP_DAC_OVERRIDE"));
    }
    if reads_need_bpf {
        log::info!(
            "keeping CAP_BPF: kernel {release} (before 5.19) checks it on every bpf() command, \
             reads of maps already open included, while kernel.unprivileged_bpf_disabled is {}",
            unprivileged_bpf.trim()
        );
        if !wanted.iter().any(|(bit, _)| *bit == CAP_BPF) {
            wanted.push((CAP_BPF, "CAP_BPF"));
        }
    }
    wanted.retain(|(bit, _)| held & (1u64 << bit) != 0);
    let keep = wanted.iter().fold(0u64, |mask, (bit, _)| mask | (1 << bit));
    // SAFETY: prctl with integer arguments only.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    } != 0
    {
        log::debug!(
            "clearing ambient capabilities: {}",
            std::io::Error::last_os_error()
        );
    }
    lock_privileges(keep);
    set_capabilities(keep)?;
    // Nothing it execs (the calibration children) can gain a privilege back:
    // not through setuid or file capabilities, not by being uid 0.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        bail!("setting no_new_privs: {}", std::io::Error::last_os_error());
    }
    Ok(wanted.into_iter().map(|(_, name)| name).collect())
}

/// Before the capset: empties the bounding set of what is not kept and sets
/// the securebits that stop uid 0 from meaning every capability in a child
/// (`SECBIT_NOROOT`, `SECBIT_NO_SETUID_FIXUP`, each locked, and keep-caps
/// locked off). Both need CAP_SETPCAP; without it (a container granted only
/// CAP_BPF and CAP_PERFMON) there is nothing to regain anyway, and
/// no_new_privs still holds.
fn lock_privileges(keep: u64) {
    const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
    const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
    const SECBIT_KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .unwrap_or(40);
    let mut refused = 0;
    for cap in (0..=last).filter(|cap| keep & (1u64 << cap) == 0) {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            refused += 1;
        }
    }
    let bits = SECBIT_NOROOT
        | SECBIT_NOROOT_LOCKED
        | SECBIT_NO_SETUID_FIXUP
        | SECBIT_NO_SETUID_FIXUP_LOCKED
        | SECBIT_KEEP_CAPS_LOCKED;
    // SAFETY: prctl with integer arguments only.
    let secured = unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) } == 0;
    if refused > 0 || !secured {
        log::debug!(
            "bounding set and securebits left as they were ({refused} capabilities not \
             dropped from the bounding set; securebits {}): CAP_SETPCAP not held",
            if secured { "set" } else { "not set" }
        );
    }
}

/// capset(2) of this thread: `mask` effective and permitted, nothing inheritable.
fn set_capabilities(mask: u64) -> Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let half = |shift: u32| Data {
        effective: (mask >> shift) as u32,
        permitted: (mask >> shift) as u32,
        inheritable: 0,
    };
    let data = [half(0), half(32)];
    // SAFETY: a version-3 header and the two data words it asks for.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        bail!(
            "dropping capabilities (capset): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Whether reading the maps after the capability drop needs CAP_BPF: kernels
/// before 5.19 check it (or CAP_SYS_ADMIN) on every `bpf()` command while
/// `kernel.unprivileged_bpf_disabled` is set (Ubuntu 22.04's 5.15 defaults
/// it to 2), lookups on descriptors already held included; 5.19 kept the
/// check for creating maps and loading programs only.
pub fn map_reads_need_cap_bpf(release: &str, unprivileged_bpf_disabled: &str) -> bool {
    let before_5_19 = parse_release(release).is_none_or(|version| version < (5, 19));
    before_5_19 && unprivileged_bpf_disabled.trim() != "0"
}

/// Fails early, with what to do, when the process cannot load tracing BPF.
pub fn check_privileges() -> Result<()> {
    let effective = procfs::own_effective_capabilities()?;
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    bail!(
        "vdso-observer needs root or {} to load its eBPF programs: run it with sudo, or grant \
         them (setcap cap_bpf,cap_perfmon+ep, or AmbientCapabilities= in a systemd unit)",
        missing.join(" and ")
    )
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
pub fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_reads_keep_cap_bpf_only_where_the_kernel_checks_it() {
        // Ubuntu 22.04: 5.15 with the sysctl at 2.
        assert!(map_reads_need_cap_bpf("5.15.0-91-generic", "2\n"));
        assert!(map_reads_need_cap_bpf("5.18.19", "1"));
        assert!(!map_reads_need_cap_bpf("5.15.0-91-generic", "0\n"));
        // 5.19 and later check only creation and loading.
        assert!(!map_reads_need_cap_bpf("5.19.0", "2"));
        assert!(!map_reads_need_cap_bpf("6.1.0-27-amd64", "2"));
        assert!(!map_reads_need_cap_bpf("6.18.44-fc-v1272", "1"));
        // A release that cannot be read is taken for an old one.
        assert!(map_reads_need_cap_bpf("weird", "2"));
        // The sysctl unreadable (empty) on an old kernel: kept, to be safe.
        assert!(map_reads_need_cap_bpf("5.15.0", ""));
    }

    #[test]
    fn kernel_floors_are_checked_by_version() {
        assert_eq!(parse_release("6.1.0-57-amd64"), Some((6, 1)));
        assert_eq!(parse_release("5.15.0"), Some((5, 15)));
        assert_eq!(parse_release("2.6.58"), Some((2, 6)));
        assert!(check_kernel_floor("5.11.0", KERNEL_FLOOR, "x").is_ok());
        assert!(check_kernel_floor("6.18.44-fc", KERNEL_FLOOR, "x").is_ok());
        let err = check_kernel_floor("5.10.200-lts", KERNEL_FLOOR, "vdso-observer").unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel 5.10.200-lts is too old for vdso-observer: Linux 5.11 or newer is needed"
        );
        assert!(check_kernel_floor("5.14.21", EXACT_KERNEL_FLOOR, "exact counting").is_err());
        assert!(check_kernel_floor("weird", KERNEL_FLOOR, "x").is_ok());
    }

    #[test]
    fn capability_mask_is_parsed() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000000000\n";
        let caps = procfs::effective_capabilities(status).unwrap();
        assert_ne!(caps & (1 << CAP_BPF), 0);
        assert_ne!(caps & (1 << CAP_PERFMON), 0);
        assert_eq!(caps & (1 << CAP_SYS_ADMIN), 0);
        assert_eq!(procfs::effective_capabilities("Name:\tx\n"), None);
    }

    #[test]
    fn only_the_host_pid_namespace_is_accepted() {
        assert!(pid_namespace_verdict(4_026_531_836).is_ok());
        let err = pid_namespace_verdict(4_026_532_301)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("vdso-observer runs in a private PID namespace (pid:[4026532301])"),
            "{err}"
        );
        assert!(
            err.contains("hostPID: true") && err.contains("--pid=host"),
            "{err}"
        );
    }
}
