//! Clock ids: their names, and which ones the vDSO can answer in user space.

use vdso_observer_common::{
    CLOCK_COARSE_SAMPLED, CLOCK_FD, CLOCK_INVALID, CLOCK_OVERFLOW, CLOCK_PROCESS_CPU,
    CLOCK_THREAD_CPU, NO_CLOCK,
};

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
    /// The overflow key of a process past its key cap: any clock.
    Unknown,
}

/// The name used in tables, JSON and metrics (`CLOCK_MONOTONIC`, ...). The
/// programs fold dynamic ids by kind (`clock_key`), so a name never carries a
/// tid, pid or fd: labels stay bounded whatever a process does.
pub fn clock_name(id: i32) -> String {
    match id {
        NO_CLOCK => String::new(),
        CLOCK_THREAD_CPU => "CPUCLOCK_THREAD".to_owned(),
        CLOCK_PROCESS_CPU => "CPUCLOCK_PROCESS".to_owned(),
        CLOCK_FD => "FD_CLOCK".to_owned(),
        CLOCK_INVALID => "INVALID_CLOCK".to_owned(),
        CLOCK_OVERFLOW => "OVERFLOW".to_owned(),
        // The sampler cannot tell CLOCK_REALTIME_COARSE from CLOCK_MONOTONIC_COARSE.
        CLOCK_COARSE_SAMPLED => "CLOCK_*_COARSE".to_owned(),
        id => static_clock_name(id).map_or_else(|| format!("CLOCK_{id}"), str::to_owned),
    }
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

pub fn clock_kind(id: i32) -> ClockKind {
    match id {
        0 | 1 | 4 | 7 | 11 => ClockKind::HighResolution,
        5 | 6 => ClockKind::Coarse,
        2 | 3 | 8 | 9 => ClockKind::KernelOnly,
        CLOCK_THREAD_CPU | CLOCK_PROCESS_CPU | CLOCK_FD => ClockKind::KernelOnly,
        CLOCK_OVERFLOW => ClockKind::Unknown,
        _ => ClockKind::Invalid,
    }
}

/// Whether the vDSO could have answered this clock without the kernel on a
/// machine whose clocksource it can read (for an unknown clock, the origin
/// decides: it may have).
pub fn vdso_can_serve(id: i32) -> bool {
    matches!(
        clock_kind(id),
        ClockKind::HighResolution | ClockKind::Coarse | ClockKind::Unknown
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
    fn dynamic_clocks_are_named_by_kind_never_by_owner() {
        use vdso_observer_common::clock_key;
        // clock_getcpuclockid(1234): MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
        assert_eq!(
            clock_name(clock_key(((!1234i32) << 3) | 2)),
            "CPUCLOCK_PROCESS"
        );
        // pthread_getcpuclockid: MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)
        assert_eq!(
            clock_name(clock_key(((!77i32) << 3) | 2 | 4)),
            "CPUCLOCK_THREAD"
        );
        // FD_TO_CLOCKID(5)
        assert_eq!(clock_name(clock_key(((!5i32) << 3) | 3)), "FD_CLOCK");
        assert_eq!(clock_name(clock_key(99)), "INVALID_CLOCK");
        assert_eq!(clock_name(CLOCK_OVERFLOW), "OVERFLOW");
    }

    #[test]
    fn kinds() {
        assert_eq!(clock_kind(1), ClockKind::HighResolution);
        assert_eq!(clock_kind(6), ClockKind::Coarse);
        assert_eq!(clock_kind(2), ClockKind::KernelOnly);
        assert_eq!(clock_kind(CLOCK_FD), ClockKind::KernelOnly);
        assert_eq!(clock_kind(CLOCK_THREAD_CPU), ClockKind::KernelOnly);
        assert_eq!(clock_kind(CLOCK_INVALID), ClockKind::Invalid);
        assert_eq!(clock_kind(42), ClockKind::Invalid);
        assert!(vdso_can_serve(0) && vdso_can_serve(5) && !vdso_can_serve(3));
        assert!(vdso_can_serve(CLOCK_OVERFLOW), "the origin decides");
    }
}
