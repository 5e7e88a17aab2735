//! What a time call costs on this machine, measured at start.
//!
//! A cpu-clock sample that lands inside a vDSO function stands for one sample
//! period; dividing by the sampled time one call stands for gives calls. That
//! time is measured in place: a child process calls the vDSO in a tight loop
//! for a moment while the sampler runs, and its samples over its calls give ns
//! per call as the sampler sees them. Sampling is not fair to every instruction
//! (in a VM, timer interrupts land where the guest exits, such as `rdtsc`), so a
//! calibration by the same sampler cancels the bias a stopwatch would keep.
//! A stopwatch still gives the relative cost of the rarer functions, and the
//! whole answer when sampling is off.

use std::{collections::BTreeMap, hint::black_box, time::Instant};

use serde::Serialize;
use vdso_observer_common::TimeCall;

use crate::vdso_image::VdsoImage;

/// ns spent inside the vDSO per call, per function.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VdsoCosts {
    pub ns_per_call: BTreeMap<&'static str, f64>,
}

impl VdsoCosts {
    /// Cost of a call; unknown code is costed as clock_gettime, the usual caller.
    pub fn ns(&self, call: Option<TimeCall>) -> f64 {
        let name = call.unwrap_or(TimeCall::ClockGettime).name();
        self.ns_per_call
            .get(name)
            .or_else(|| self.ns_per_call.get(TimeCall::ClockGettime.name()))
            .copied()
            .unwrap_or(20.0)
    }
}

const CALLS: u32 = 100_000;
const ROUNDS: usize = 5;
/// No vDSO function returns faster than this: a floor against timer noise.
const MIN_NS: f64 = 1.0;

type ClockFn = unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> libc::c_int;
type GettimeofdayFn = unsafe extern "C" fn(*mut libc::timeval, *mut libc::c_void) -> libc::c_int;
type TimeFn = unsafe extern "C" fn(*mut libc::time_t) -> libc::time_t;
type GetcpuFn = unsafe extern "C" fn(*mut u32, *mut u32, *mut libc::c_void) -> libc::c_int;

/// Times every function of the own image with a stopwatch (about 0.1 s in
/// all): ns per call, the call itself included.
pub fn measure(image: &VdsoImage, base: u64) -> VdsoCosts {
    let mut costs = VdsoCosts::default();
    for function in &image.functions {
        let address = (base + function.offset) as usize;
        // SAFETY: `address` is the entry of an exported vDSO function of this
        // process, called with the C signature its name promises.
        let ns = unsafe {
            match function.call {
                TimeCall::ClockGettime | TimeCall::ClockGetres => {
                    let f: ClockFn = std::mem::transmute(address);
                    let mut ts = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 0,
                    };
                    best_of(|| timed(|| f(libc::CLOCK_MONOTONIC, &mut ts)))
                }
                TimeCall::Gettimeofday => {
                    let f: GettimeofdayFn = std::mem::transmute(address);
                    let mut tv = libc::timeval {
                        tv_sec: 0,
                        tv_usec: 0,
                    };
                    best_of(|| timed(|| f(&mut tv, std::ptr::null_mut())))
                }
                TimeCall::Time => {
                    let f: TimeFn = std::mem::transmute(address);
                    best_of(|| timed(|| f(std::ptr::null_mut()) as i32))
                }
                TimeCall::Getcpu => {
                    let f: GetcpuFn = std::mem::transmute(address);
                    let (mut cpu, mut node) = (0u32, 0u32);
                    best_of(|| timed(|| f(&mut cpu, &mut node, std::ptr::null_mut())))
                }
                // vgetrandom needs per-thread state the observer does not set up.
                TimeCall::Getrandom => continue,
            }
        };
        costs
            .ns_per_call
            .insert(function.call.name(), ns.max(MIN_NS));
    }
    costs
}

impl VdsoCosts {
    /// Scales stopwatch costs so clock_gettime and gettimeofday cost what the
    /// sampler saw in place (`sampled`: ns per call); the others keep their
    /// stopwatch ratio to clock_gettime.
    pub fn calibrated(&self, sampled: &BTreeMap<&'static str, f64>) -> VdsoCosts {
        let reference = TimeCall::ClockGettime.name();
        let scale = match (sampled.get(reference), self.ns_per_call.get(reference)) {
            (Some(in_place), Some(stopwatch)) => in_place / stopwatch,
            _ => 1.0,
        };
        let mut costs = VdsoCosts::default();
        for (&name, &ns) in &self.ns_per_call {
            let ns = sampled.get(name).copied().unwrap_or(ns * scale);
            costs.ns_per_call.insert(name, ns.max(MIN_NS));
        }
        costs
    }
}

/// How long the calibration child calls each function.
pub const LOOP_MS: [(TimeCall, u64); 2] =
    [(TimeCall::ClockGettime, 800), (TimeCall::Gettimeofday, 200)];

/// The hidden `vdso-loop` subcommand, run as a child of the observer: calls
/// clock_gettime, then gettimeofday, through the vDSO for LOOP_MS each, and
/// prints `NAME CALLS` lines.
pub fn run_loop(image: &VdsoImage, quick: bool) -> anyhow::Result<()> {
    // SAFETY: getauxval has no preconditions.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    // --quick: only a short clock_gettime run, to check for fallback.
    let plan: &[(TimeCall, u64)] = if quick {
        &[(TimeCall::ClockGettime, 100)]
    } else {
        &LOOP_MS
    };
    for &(call, ms) in plan {
        let function = image
            .function(call)
            .ok_or_else(|| anyhow::anyhow!("the vDSO exports no {}", call.name()))?;
        let address = (base + function.offset) as usize;
        let deadline = Instant::now() + std::time::Duration::from_millis(ms);
        let mut calls = 0u64;
        // SAFETY: as in `measure`.
        unsafe {
            match call {
                TimeCall::Gettimeofday => {
                    let f: GettimeofdayFn = std::mem::transmute(address);
                    let mut tv = libc::timeval {
                        tv_sec: 0,
                        tv_usec: 0,
                    };
                    while Instant::now() < deadline {
                        for _ in 0..1000 {
                            black_box(f(&mut tv, std::ptr::null_mut()));
                        }
                        calls += 1000;
                    }
                }
                _ => {
                    let f: ClockFn = std::mem::transmute(address);
                    let mut ts = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 0,
                    };
                    while Instant::now() < deadline {
                        for _ in 0..1000 {
                            black_box(f(libc::CLOCK_MONOTONIC, &mut ts));
                        }
                        calls += 1000;
                    }
                }
            }
        }
        // Instant::now() itself calls clock_gettime through the vDSO once per batch.
        let calls = if call == TimeCall::ClockGettime {
            calls + calls / 1000
        } else {
            calls
        };
        println!("{} {calls}", call.name());
    }
    Ok(())
}

/// Parses the child's `NAME CALLS` lines.
pub fn parse_loop_output(text: &str) -> BTreeMap<&'static str, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, calls) = line.split_once(' ')?;
            let call = TimeCall::ALL.into_iter().find(|c| c.name() == name)?;
            Some((call.name(), calls.trim().parse().ok()?))
        })
        .collect()
}

fn best_of(mut run: impl FnMut() -> f64) -> f64 {
    (0..ROUNDS).map(|_| run()).fold(f64::INFINITY, f64::min)
}

/// ns per call of `call`, over CALLS calls.
fn timed(mut call: impl FnMut() -> libc::c_int) -> f64 {
    let start = Instant::now();
    for _ in 0..CALLS {
        black_box(call());
    }
    start.elapsed().as_nanos() as f64 / f64::from(CALLS)
}

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
    let mut t: libc::time_t = 0;
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
            TimeCall::Time => libc::syscall(libc::SYS_time, &mut t),
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
    Some(best_of(|| {
        let start = Instant::now();
        for _ in 0..CALLS / 10 {
            black_box(syscall_once(call));
        }
        start.elapsed().as_nanos() as f64 / f64::from(CALLS / 10)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_measured_for_the_exported_functions() {
        let image = VdsoImage::current().unwrap();
        // SAFETY: getauxval has no preconditions.
        let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
        let costs = measure(&image, base);
        let gettime = costs.ns(Some(TimeCall::ClockGettime));
        assert!((MIN_NS..5_000.0).contains(&gettime), "{costs:?}");
        assert!(costs.ns_per_call.contains_key("gettimeofday"));
        assert_eq!(
            costs.ns(None),
            gettime,
            "unknown code costs as clock_gettime"
        );

        // In-place figures replace the stopwatch, and scale the rest.
        let mut sampled = BTreeMap::new();
        sampled.insert("clock_gettime", gettime * 2.0);
        let calibrated = costs.calibrated(&sampled);
        assert_eq!(calibrated.ns(Some(TimeCall::ClockGettime)), gettime * 2.0);
        let time = costs.ns(Some(TimeCall::Time));
        assert!((calibrated.ns(Some(TimeCall::Time)) - (time * 2.0).max(MIN_NS)).abs() < 1e-9);
        assert_eq!(
            parse_loop_output("clock_gettime 1200\ngettimeofday 30\nnoise\n").get("gettimeofday"),
            Some(&30)
        );
        let syscall = syscall_ns(TimeCall::ClockGettime).unwrap();
        assert!(syscall > 0.0);
    }

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
