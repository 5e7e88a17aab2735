//! Clock ids as map keys: static ids as they are, dynamic ones folded by
//! kind, so no caller chooses a key.

/// `clock_id` of a [`CallKey`] whose call takes no clock.
pub const NO_CLOCK: i32 = i32::MIN;

/// Dynamic clock ids encode a thread id, a pid or a file descriptor, so one
/// process could make any number of them. The programs fold them, and ids the
/// kernel does not know, into one key per kind before they reach a map: a key
/// is never chosen by a caller. These stand for the kinds (never real ids:
/// user space only ever sees them as keys).
/// Another thread's CPU clock (`pthread_getcpuclockid`).
pub const CLOCK_THREAD_CPU: i32 = i32::MIN + 1;
/// A process's CPU clock (`clock_getcpuclockid`).
pub const CLOCK_PROCESS_CPU: i32 = i32::MIN + 2;
/// An fd clock (`/dev/ptpN`, `FD_TO_CLOCKID`).
pub const CLOCK_FD: i32 = i32::MIN + 3;
/// An id the kernel rejects with EINVAL.
pub const CLOCK_INVALID: i32 = i32::MIN + 4;
/// The overflow key of a process that reached [`ProgramConfig::process_key_cap`]:
/// its calls still count, without their clock.
pub const CLOCK_OVERFLOW: i32 = i32::MIN + 5;
/// A sample in the code of clock_gettime that only coarse clocks run
/// (CLOCK_REALTIME_COARSE or CLOCK_MONOTONIC_COARSE: the sampler cannot tell
/// which), as calibration found it ([`COARSE_CODE_MAP`]).
///
/// [`COARSE_CODE_MAP`]: crate::COARSE_CODE_MAP
pub const CLOCK_COARSE_SAMPLED: i32 = i32::MIN + 6;
/// A sample in the code of clock_gettime that coarse and fine reads both run
/// (its entry and return), as calibration found it ([`SHARED_CODE_MAP`]):
/// user space splits these between a process's coarse and fine reads.
///
/// [`SHARED_CODE_MAP`]: crate::SHARED_CODE_MAP
pub const CLOCK_SHARED_SAMPLED: i32 = i32::MIN + 7;
/// Static clock ids are below this (`MAX_CLOCKS`).
pub const MAX_STATIC_CLOCK: i32 = 16;

/// The map key of a clock id: static ids as they are, the rest by kind (see
/// [`CLOCK_THREAD_CPU`]). Dynamic ids are `((~owner) << 3) | type`, with bit 2
/// for per-thread and type 3 for an fd clock (`include/linux/posix-timers.h`).
#[inline(always)]
pub const fn clock_key(id: i32) -> i32 {
    if id >= 0 {
        if id < MAX_STATIC_CLOCK {
            id
        } else {
            CLOCK_INVALID
        }
    } else if id & 7 == 3 {
        CLOCK_FD
    } else if id & 3 == 3 {
        CLOCK_INVALID
    } else if id & 4 != 0 {
        CLOCK_THREAD_CPU
    } else {
        CLOCK_PROCESS_CPU
    }
}

/// Distinct counters one process may create in each counter map before its
/// new keys go to its overflow key: more than any real program uses (a few
/// calls × clocks × origins), so no process can crowd others out of the map.
pub const DEFAULT_PROCESS_KEY_CAP: u32 = 64;
