//! Whether a call runs one instruction of the vDSO, counted exactly: a
//! hardware execute breakpoint on this thread at that instruction, counting
//! (no program, no samples), while the call is made a few dozen times.
//!
//! Sampling tells code only coarse reads run from code fine reads run too by
//! comparing where each kind's samples land. On a clocksource the vDSO cannot
//! read, a fine read spends its time in the kernel and leaves user space
//! almost no samples to compare (a few in a second of calls); the
//! breakpoints answer in milliseconds instead.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::{Context as _, Result};

/// `struct perf_event_attr` up to `bp_len` (PERF_ATTR_SIZE_VER1): all a
/// counting breakpoint needs.
#[repr(C)]
#[derive(Default)]
struct BreakpointAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    bp_addr: u64,
    bp_len: u64,
}

const PERF_TYPE_BREAKPOINT: u32 = 5;
const HW_BREAKPOINT_X: u32 = 4;
/// `exclude_kernel` and `exclude_hv` of the attr's flags.
const USER_ONLY: u64 = (1 << 5) | (1 << 6);
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
/// An execute breakpoint's length: an instruction on arm64, a long on x86.
#[cfg(target_arch = "aarch64")]
const EXECUTE_LEN: u64 = 4;
#[cfg(not(target_arch = "aarch64"))]
const EXECUTE_LEN: u64 = std::mem::size_of::<libc::c_long>() as u64;

/// How many times this thread runs the instruction at `address` while
/// `calls` runs.
pub fn executions(address: u64, calls: impl FnOnce()) -> Result<u64> {
    let attr = BreakpointAttr {
        kind: PERF_TYPE_BREAKPOINT,
        size: std::mem::size_of::<BreakpointAttr>() as u32,
        flags: USER_ONLY,
        bp_type: HW_BREAKPOINT_X,
        bp_addr: address,
        bp_len: EXECUTE_LEN,
        ..BreakpointAttr::default()
    };
    let what = || format!("a hardware breakpoint at {address:#x} in the observer's own thread");
    // SAFETY: `attr` outlives the call; pid 0 and cpu -1 are this thread on
    // any CPU, and no group.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const BreakpointAttr,
            0,
            -1,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).with_context(what);
    }
    // SAFETY: a descriptor perf_event_open just returned, owned here alone.
    let counter = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    calls();
    let mut count = [0u8; 8];
    // SAFETY: reads at most 8 bytes into `count`.
    let read = unsafe { libc::read(counter.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
    if read != 8 {
        return Err(std::io::Error::last_os_error())
            .with_context(what)
            .context("reading its count");
    }
    Ok(u64::from_ne_bytes(count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attr_is_the_kernels_first_published_size() {
        // PERF_ATTR_SIZE_VER1 in linux/perf_event.h.
        assert_eq!(std::mem::size_of::<BreakpointAttr>(), 72);
    }
}
