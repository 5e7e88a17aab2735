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

/// Capability bits (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

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
}
