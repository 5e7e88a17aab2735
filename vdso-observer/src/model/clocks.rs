//! Clock ids: their names, and which ones the vDSO can answer in user space.

use vdso_observer_common::NO_CLOCK;

/// What a clock id is, as far as the vDSO is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockKind {
    /// Answered by the vDSO from the clocksource: enters the kernel only when the
    /// clocksource cannot be read from user space.
    HighResolution,
    /// Answered by the vDSO from the last tick: never needs the clocksource.
    Coarse,
    /// CPU-time and fd clocks: the vDSO always passes them to the kernel.
    KernelOnly,
    /// An id the kernel does not know (the call fails with EINVAL).
    Invalid,
}

/// The name used in tables, JSON and metrics (`CLOCK_MONOTONIC`, ...).
pub fn clock_name(id: i32) -> String {
    if id == NO_CLOCK {
        return String::new();
    }
    if let Some(name) = static_clock_name(id) {
        return name.to_owned();
    }
    if id < 0 {
        return dynamic_clock_name(id);
    }
    format!("CLOCK_{id}")
}

fn static_clock_name(id: i32) -> Option<&'static str> {
    Some(match id {
        0 => "CLOCK_REALTIME",
        1 => "CLOCK_MONOTONIC",
        2 => "CLOCK_PROCESS_CPUTIME_ID",
        3 => "CLOCK_THREAD_CPUTIME_ID",
        4 => "CLOCK_MONOTONIC_RAW",
        5 => "CLOCK_REALTIME_COARSE",
        6 => "CLOCK_MONOTONIC_COARSE",
        7 => "CLOCK_BOOTTIME",
        8 => "CLOCK_REALTIME_ALARM",
        9 => "CLOCK_BOOTTIME_ALARM",
        11 => "CLOCK_TAI",
        _ => return None,
    })
}

/// Negative ids: `((~pid) << 3) | type` for another process's or thread's CPU
/// clock (clock_getcpuclockid, pthread_getcpuclockid), `((~fd) << 3) | 3` for a
/// dynamic (PTP, /dev/ptpN) clock.
fn dynamic_clock_name(id: i32) -> String {
    const CLOCKFD: i32 = 3;
    const PERTHREAD: i32 = 4;
    let owner = !(id >> 3);
    if id & 7 == CLOCKFD {
        return format!("FD_CLOCK(fd={owner})");
    }
    let which = match id & 3 {
        0 => "PROF",
        1 => "VIRT",
        2 => "SCHED",
        _ => "?",
    };
    let scope = if id & PERTHREAD != 0 { "tid" } else { "pid" };
    format!("CPUCLOCK_{which}({scope}={owner})")
}

pub fn clock_kind(id: i32) -> ClockKind {
    match id {
        0 | 1 | 4 | 7 | 11 => ClockKind::HighResolution,
        5 | 6 => ClockKind::Coarse,
        2 | 3 => ClockKind::KernelOnly,
        id if id < 0 && id != NO_CLOCK => ClockKind::KernelOnly,
        8 | 9 => ClockKind::KernelOnly,
        _ => ClockKind::Invalid,
    }
}

/// Whether the vDSO could have answered this clock without the kernel on a
/// machine whose clocksource it can read.
pub fn vdso_can_serve(id: i32) -> bool {
    matches!(
        clock_kind(id),
        ClockKind::HighResolution | ClockKind::Coarse
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_names() {
        assert_eq!(clock_name(0), "CLOCK_REALTIME");
        assert_eq!(clock_name(1), "CLOCK_MONOTONIC");
        assert_eq!(clock_name(2), "CLOCK_PROCESS_CPUTIME_ID");
        assert_eq!(clock_name(4), "CLOCK_MONOTONIC_RAW");
        assert_eq!(clock_name(7), "CLOCK_BOOTTIME");
        assert_eq!(clock_name(11), "CLOCK_TAI");
        assert_eq!(clock_name(10), "CLOCK_10");
        assert_eq!(clock_name(NO_CLOCK), "");
    }

    #[test]
    fn dynamic_names_decode_owner_and_type() {
        // clock_getcpuclockid(1234): MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
        let pid_clock = ((!1234i32) << 3) | 2;
        assert_eq!(clock_name(pid_clock), "CPUCLOCK_SCHED(pid=1234)");
        // pthread_getcpuclockid: MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)
        let thread_clock = ((!77i32) << 3) | 2 | 4;
        assert_eq!(clock_name(thread_clock), "CPUCLOCK_SCHED(tid=77)");
        // FD_TO_CLOCKID(5)
        let fd_clock = ((!5i32) << 3) | 3;
        assert_eq!(clock_name(fd_clock), "FD_CLOCK(fd=5)");
    }

    #[test]
    fn kinds() {
        assert_eq!(clock_kind(1), ClockKind::HighResolution);
        assert_eq!(clock_kind(6), ClockKind::Coarse);
        assert_eq!(clock_kind(2), ClockKind::KernelOnly);
        assert_eq!(clock_kind(((!5i32) << 3) | 3), ClockKind::KernelOnly);
        assert_eq!(clock_kind(42), ClockKind::Invalid);
        assert!(vdso_can_serve(0) && vdso_can_serve(5) && !vdso_can_serve(3));
    }
}
