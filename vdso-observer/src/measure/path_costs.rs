//! What each time call costs through the vDSO and as a real syscall, by
//! stopwatch before anything is attached: the doctor prints it, and the
//! session turns kernel entries into excess CPU with it.

use vdso_observer_common::TimeCall;

use super::{
    calibrate::{CALLS, ROUND_BUDGET, ROUNDS, measure, timed},
    calibration_child::ClockFn,
    stopwatch,
};
use crate::{
    host::vdso_image::VdsoImage,
    model::costs::{MIN_NS, PathCost, PathCosts},
};

/// One real syscall behind a vDSO function, with valid buffers (an invalid
/// pointer would time the kernel's EFAULT path instead: ~800 ns against ~170).
fn syscall_once(call: TimeCall) -> Option<libc::c_long> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    #[cfg(target_arch = "x86_64")]
    let mut t: libc::c_long = 0;
    let (mut cpu, mut node) = (0u32, 0u32);
    // SAFETY: each syscall gets the arguments its man page asks for, pointing
    // at live, writable locals.
    Some(unsafe {
        match call {
            TimeCall::ClockGettime => {
                libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts)
            }
            TimeCall::ClockGetres => {
                libc::syscall(libc::SYS_clock_getres, libc::CLOCK_MONOTONIC, &mut ts)
            }
            TimeCall::Gettimeofday => libc::syscall(
                libc::SYS_gettimeofday,
                &mut tv,
                std::ptr::null_mut::<libc::c_void>(),
            ),
            #[cfg(target_arch = "x86_64")]
            TimeCall::Time => libc::syscall(libc::SYS_time, &mut t),
            // No time syscall on arm64 (nor a vDSO function).
            #[cfg(not(target_arch = "x86_64"))]
            TimeCall::Time => return None,
            TimeCall::Getcpu => libc::syscall(
                libc::SYS_getcpu,
                &mut cpu,
                &mut node,
                std::ptr::null_mut::<libc::c_void>(),
            ),
            TimeCall::Getrandom => return None,
        }
    })
}

/// ns per call of the real syscall behind a vDSO function, for comparison.
pub fn syscall_ns(call: TimeCall) -> Option<f64> {
    // A call that fails would time an error path: say nothing rather than that.
    if syscall_once(call)? < 0 {
        return None;
    }
    let timing = stopwatch::best_of(ROUNDS, CALLS / 10, ROUND_BUDGET, || {
        syscall_once(call).unwrap_or(-1)
    });
    log::debug!(
        "{} syscall: {:.1} ns a call ({} calls timed)",
        call.name(),
        timing.ns_per_call,
        timing.calls
    );
    Some(timing.ns_per_call)
}

/// The calls timed through both paths.
const PATH_CALLS: [TimeCall; 5] = [
    TimeCall::ClockGettime,
    TimeCall::Gettimeofday,
    TimeCall::Time,
    TimeCall::ClockGetres,
    TimeCall::Getcpu,
];

/// Each call through the vDSO and as a syscall, by stopwatch: run it with
/// nothing attached (any sys_enter program slows every syscall). The doctor
/// prints it; the session turns kernel entries into excess CPU with it.
pub fn path_costs(image: Option<&VdsoImage>) -> PathCosts {
    let stopwatch = image.map(measure);
    let coarse = image.and_then(coarse_clock_ns);
    let calls = PATH_CALLS
        .into_iter()
        .map(|call| {
            let vdso_ns = stopwatch
                .as_ref()
                .and_then(|s| s.ns_per_call.get(&call).copied());
            let syscall_ns = syscall_ns(call);
            let falls_back = match (vdso_ns, syscall_ns) {
                (Some(vdso), Some(syscall)) => vdso > syscall / 2.0,
                _ => false,
            };
            // Only the clock reads depend on the clocksource.
            let reads_clock = matches!(call, TimeCall::ClockGettime | TimeCall::Gettimeofday);
            PathCost {
                call,
                vdso_ns,
                syscall_ns,
                answered_ns: if falls_back && reads_clock {
                    coarse
                } else {
                    vdso_ns
                },
            }
        })
        .collect();
    PathCosts { calls }
}

/// The vDSO's clock_gettime(CLOCK_MONOTONIC_COARSE): answered in user space on
/// every clocksource (it reads no counter).
fn coarse_clock_ns(image: &VdsoImage) -> Option<f64> {
    let address = image.own_address(TimeCall::ClockGettime)? as usize;
    // SAFETY: the entry of this process's vDSO clock_gettime, called with its
    // C signature and a live timespec.
    let ns = unsafe {
        let f: ClockFn = std::mem::transmute(address);
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        timed("clock_gettime(CLOCK_MONOTONIC_COARSE)", || {
            f(libc::CLOCK_MONOTONIC_COARSE, &mut ts)
        })
    };
    Some(ns.max(MIN_NS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscalls_are_timed_on_their_success_path() {
        for call in [
            TimeCall::ClockGettime,
            TimeCall::ClockGetres,
            TimeCall::Gettimeofday,
            TimeCall::Time,
            TimeCall::Getcpu,
        ] {
            let result = syscall_once(call).unwrap();
            assert!(
                result >= 0,
                "{}: {}",
                call.name(),
                std::io::Error::last_os_error()
            );
            assert!(syscall_ns(call).is_some(), "{}", call.name());
        }
    }
}
