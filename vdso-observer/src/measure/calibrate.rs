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

use std::{
    collections::BTreeMap,
    hint::black_box,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use log::warn;
use vdso_observer_common::{ProcessKey, Provenance, SyscallAbi, TimeCall, VdsoKey};

use crate::{
    host::{vdso_image::VdsoImage, vdso32::Vdso32Child},
    kernel::Observer,
    measure::stopwatch,
    model::{
        MapSnapshot, Retired, VdsoCheck,
        costs::{MIN_NS, VdsoCosts},
    },
};

/// Calls of one stopwatch round, and rounds (the fastest counts).
pub(super) const CALLS: u64 = 100_000;
pub(super) const ROUNDS: usize = 5;
/// Most time one round may take: 100 000 reads are 2 ms on a TSC, seconds
/// where each read enters the kernel or traps.
pub(super) const ROUND_BUDGET: Duration = Duration::from_millis(20);

pub(super) type ClockFn = unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> libc::c_int;
type GettimeofdayFn = unsafe extern "C" fn(*mut libc::timeval, *mut libc::c_void) -> libc::c_int;
/// The kernel's `__kernel_old_time_t`: a `long`, whatever the libc's time_t.
type TimeFn = unsafe extern "C" fn(*mut libc::c_long) -> libc::c_long;
type GetcpuFn = unsafe extern "C" fn(*mut u32, *mut u32, *mut libc::c_void) -> libc::c_int;

/// Times every function of the own image with a stopwatch (about 0.1 s in
/// all): ns per call, the call itself included.
pub fn measure(image: &VdsoImage) -> VdsoCosts {
    let mut costs = VdsoCosts::default();
    for function in &image.functions {
        let Some(address) = image.own_address(function.call) else {
            continue;
        };
        let address = address as usize;
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
                    timed(function.call.name(), || f(libc::CLOCK_MONOTONIC, &mut ts))
                }
                TimeCall::Gettimeofday => {
                    let f: GettimeofdayFn = std::mem::transmute(address);
                    let mut tv = libc::timeval {
                        tv_sec: 0,
                        tv_usec: 0,
                    };
                    timed("gettimeofday", || f(&mut tv, std::ptr::null_mut()))
                }
                TimeCall::Time => {
                    let f: TimeFn = std::mem::transmute(address);
                    timed("time", || f(std::ptr::null_mut()) as i32)
                }
                TimeCall::Getcpu => {
                    let f: GetcpuFn = std::mem::transmute(address);
                    let (mut cpu, mut node) = (0u32, 0u32);
                    timed("getcpu", || f(&mut cpu, &mut node, std::ptr::null_mut()))
                }
                // vgetrandom needs per-thread state the observer does not set up.
                TimeCall::Getrandom => continue,
            }
        };
        costs.ns_per_call.insert(function.call, ns.max(MIN_NS));
    }
    costs
}

/// How long the calibration child calls each function: every function is
/// priced by its own samples (time and getcpu where the image has them).
pub const LOOP_MS: [(TimeCall, u64); 4] = [
    (TimeCall::ClockGettime, 800),
    (TimeCall::Gettimeofday, 200),
    (TimeCall::Time, 150),
    (TimeCall::Getcpu, 150),
];
/// How long the coarse child reads CLOCK_MONOTONIC_COARSE.
pub const COARSE_LOOP_MS: u64 = 500;
/// The coarse child's line name.
pub const COARSE_LINE: &str = "clock_gettime_coarse";

/// What the calibration child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopPlan {
    /// Every function of [`LOOP_MS`].
    Full,
    /// 100 ms of clock_gettime(CLOCK_MONOTONIC): does it enter the kernel?
    Quick,
    /// clock_gettime(CLOCK_MONOTONIC_COARSE) for [`COARSE_LOOP_MS`].
    Coarse,
}

/// The hidden `vdso-loop` subcommand, run as a child of the observer: calls
/// each function of its plan through the vDSO for its time, and prints
/// `NAME CALLS` lines. Functions the image lacks are left out.
pub fn run_loop(image: &VdsoImage, plan: LoopPlan) -> anyhow::Result<()> {
    let phases: Vec<(TimeCall, u64, libc::clockid_t)> = match plan {
        LoopPlan::Full => LOOP_MS
            .iter()
            .map(|&(call, ms)| (call, ms, libc::CLOCK_MONOTONIC))
            .collect(),
        LoopPlan::Quick => vec![(TimeCall::ClockGettime, 100, libc::CLOCK_MONOTONIC)],
        LoopPlan::Coarse => vec![(
            TimeCall::ClockGettime,
            COARSE_LOOP_MS,
            libc::CLOCK_MONOTONIC_COARSE,
        )],
    };
    for (call, ms, clock) in phases {
        let Some(address) = image.own_address(call) else {
            if call == TimeCall::ClockGettime {
                bail!("the vDSO exports no clock_gettime");
            }
            continue;
        };
        let address = address as usize;
        let deadline = Instant::now() + std::time::Duration::from_millis(ms);
        // SAFETY: as in `measure`: each entry called with its C signature.
        let calls = unsafe {
            match call {
                TimeCall::Gettimeofday => {
                    let f: GettimeofdayFn = std::mem::transmute(address);
                    let mut tv = libc::timeval {
                        tv_sec: 0,
                        tv_usec: 0,
                    };
                    spin(deadline, || f(&mut tv, std::ptr::null_mut()) as i64)
                }
                TimeCall::Time => {
                    let f: TimeFn = std::mem::transmute(address);
                    spin(deadline, || f(std::ptr::null_mut()))
                }
                TimeCall::Getcpu => {
                    let f: GetcpuFn = std::mem::transmute(address);
                    let (mut cpu, mut node) = (0u32, 0u32);
                    spin(deadline, || {
                        f(&mut cpu, &mut node, std::ptr::null_mut()) as i64
                    })
                }
                _ if clock != libc::CLOCK_MONOTONIC => {
                    // Through the libc, as programs call it: a call this short
                    // is sampled differently with what surrounds it.
                    let mut ts = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 0,
                    };
                    spin(deadline, || libc::clock_gettime(clock, &mut ts) as i64)
                }
                _ => {
                    let f: ClockFn = std::mem::transmute(address);
                    let mut ts = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 0,
                    };
                    spin(deadline, || f(clock, &mut ts) as i64)
                }
            }
        };
        // Instant::now() itself calls clock_gettime(CLOCK_MONOTONIC) through
        // the vDSO once per batch: a fine read, whatever the phase.
        let (name, calls) = match (call, clock) {
            (TimeCall::ClockGettime, libc::CLOCK_MONOTONIC) => (call.name(), calls + calls / 1000),
            (TimeCall::ClockGettime, _) => (COARSE_LINE, calls),
            _ => (call.name(), calls),
        };
        println!("{name} {calls}");
    }
    Ok(())
}

/// Calls `f` in batches of 1000 until `deadline`: how many calls.
fn spin(deadline: Instant, mut f: impl FnMut() -> i64) -> u64 {
    let mut calls = 0u64;
    while Instant::now() < deadline {
        for _ in 0..1000 {
            black_box(f());
        }
        calls += 1000;
    }
    calls
}

/// Parses the child's `NAME CALLS` lines.
fn parse_loop_output(text: &str) -> BTreeMap<TimeCall, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, calls) = line.split_once(' ')?;
            let call = TimeCall::ALL.into_iter().find(|c| c.name() == name)?;
            Some((call, calls.trim().parse().ok()?))
        })
        .collect()
}

/// ns per call of `call`: the fastest of ROUNDS rounds of CALLS calls, each
/// bounded by ROUND_BUDGET.
pub(super) fn timed(what: &str, mut call: impl FnMut() -> libc::c_int) -> f64 {
    let timing = stopwatch::best_of(ROUNDS, CALLS, ROUND_BUDGET, || i64::from(call()));
    log::debug!(
        "{what}: {:.1} ns a call ({} calls timed)",
        timing.ns_per_call,
        timing.calls
    );
    timing.ns_per_call
}

/// What turns vDSO samples into calls: the image, what each function costs
/// here, and how much time one sample stands for.
#[derive(Debug, Clone)]
pub struct VdsoModel {
    pub image: VdsoImage,
    pub costs: VdsoCosts,
    /// None when sampling is off.
    pub sample_period_ns: Option<u64>,
}

/// Measures the image's costs by stopwatch, then runs the calibration child
/// under the observer's sampler: its kernel entries tell whether this machine's
/// vDSO really answers clock_gettime(CLOCK_MONOTONIC) in user space, and its
/// samples replace the stopwatch costs with what the sampler sees.
pub fn calibrate(observer: &mut Observer, image: VdsoImage) -> (VdsoModel, Option<VdsoCheck>) {
    let costs = measure(&image);
    log::debug!(
        "vDSO costs (stopwatch, ns per call): {:?}",
        costs.ns_per_call
    );
    let mut model = VdsoModel {
        image,
        costs,
        sample_period_ns: observer.sample_period_ns(),
    };
    match run_child(observer, false) {
        Ok((check, sampled, gettime_samples)) => {
            let fine_offsets = observer.take_sample_offsets().unwrap_or_default();
            if !check.vdso_capable() {
                warn!(
                    "this machine's vDSO does not answer clock_gettime(CLOCK_MONOTONIC): {} of {} \
                     calls entered the kernel (clocksource not vDSO-capable; see `vdso-observer doctor`)",
                    check.kernel_entries, check.calls
                );
            }
            if !sampled.is_empty() {
                model.costs = model.costs.calibrated(&sampled);
                model.costs.calibration_samples = gettime_samples;
                log::debug!(
                    "vDSO costs as sampled (ns per call): {:?}",
                    model.costs.ns_per_call
                );
                if let Some(period_ns) = model.sample_period_ns {
                    let ns64 = model.costs.ns(Some(TimeCall::ClockGettime));
                    match calibrate_i386(observer, ns64, period_ns) {
                        Ok(Some((ratio, samples))) => {
                            model.costs.i386_ratio = Some(ratio);
                            model.costs.i386_calibration_samples = samples;
                        }
                        Ok(None) => {}
                        Err(err) => warn!(
                            "calibrating the 32-bit vDSO failed, 32-bit processes' vDSO calls \
                             are priced as 64-bit ones: {err:#}"
                        ),
                    }
                    match super::coarse::calibrate(observer, &model.image, &fine_offsets, period_ns)
                    {
                        Ok(coarse) => model.costs.coarse = coarse,
                        Err(err) => warn!(
                            "calibrating coarse clocks failed, their vDSO calls are priced as \
                             fine reads: {err:#}"
                        ),
                    }
                }
            } else if model.sample_period_ns.is_some() && check.vdso_capable() {
                warn!(
                    "the sampler saw too few samples of the calibration loop; using stopwatch \
                     costs, which may misjudge vDSO call counts"
                );
            }
            (model, Some(check))
        }
        Err(err) => {
            warn!("calibrating against a child process failed: {err:#}");
            (model, None)
        }
    }
}

/// Measures again whether the vDSO answers clock_gettime here (after a
/// clocksource change), with a short run of the child.
pub fn recheck(observer: &mut Observer) -> Result<VdsoCheck> {
    Ok(run_child(observer, true)?.0)
}

/// Both ends of the child protocol: runs `vdso-observer vdso-loop` (see
/// [`run_loop`]), reads its `NAME CALLS` lines, and judges them against what the
/// programs counted of it; then forgets the child, which nobody asked about.
/// Returns the check, the sampled ns per call, and the samples behind
/// clock_gettime's figure.
fn run_child(
    observer: &mut Observer,
    quick: bool,
) -> Result<(VdsoCheck, BTreeMap<TimeCall, f64>, u64)> {
    /// Fewer samples than this say too little (±15%).
    const MIN_SAMPLES: u64 = 40;
    let plan = if quick {
        LoopPlan::Quick
    } else {
        LoopPlan::Full
    };
    let (pid, out) = run_loop_child(observer, plan)?;
    let calls = parse_loop_output(&out);
    let snapshot = observer.snapshot()?;
    let check = VdsoCheck {
        calls: calls.get(&TimeCall::ClockGettime).copied().unwrap_or(0),
        kernel_entries: snapshot
            .calls
            .iter()
            .filter(|(key, _)| {
                key.process.tgid == pid
                    && key.call == TimeCall::ClockGettime as u8
                    && key.clock_id == libc::CLOCK_MONOTONIC
            })
            .map(|(_, count)| count)
            .sum(),
    };
    let mine: Vec<(VdsoKey, u64)> = snapshot
        .vdso
        .iter()
        .filter(|(key, _)| key.process.tgid == pid)
        .map(|(key, count)| (*key, *count))
        .collect();
    let mut sampled = BTreeMap::new();
    let mut gettime_samples = 0;
    if let Some(period_ns) = observer.sample_period_ns()
        && !quick
    {
        for (call, calls) in calls {
            let samples: u64 = mine
                .iter()
                .filter(|(key, _)| key.call == call as u8)
                .map(|(_, count)| count)
                .sum();
            if samples >= MIN_SAMPLES && calls > 0 {
                sampled.insert(call, samples as f64 * period_ns as f64 / calls as f64);
                if call == TimeCall::ClockGettime {
                    gettime_samples = samples;
                }
            }
        }
    }
    forget_pid(observer, &snapshot, pid)?;
    Ok((check, sampled, gettime_samples))
}

/// Runs `vdso-observer vdso-loop` with `plan`, its samples counted by vDSO
/// offset meanwhile (the histogram is left for the caller to take): its pid
/// and what it printed.
pub(super) fn run_loop_child(observer: &mut Observer, plan: LoopPlan) -> Result<(u32, String)> {
    let exe = std::env::current_exe().context("finding the observer's own binary")?;
    let child = Command::new(&exe)
        .arg("vdso-loop")
        .args(match plan {
            LoopPlan::Full => None,
            LoopPlan::Quick => Some("--quick"),
            LoopPlan::Coarse => Some("--coarse"),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} vdso-loop", exe.display()))?;
    let pid = child.id();
    // From its first calls on (a few ms of them may go unwatched).
    let watching = observer.watch_sample_offsets(pid);
    let out = child
        .wait_with_output()
        .context("waiting for the calibration child")?;
    watching?;
    observer.stop_watching_sample_offsets()?;
    if !out.status.success() {
        bail!(
            "the calibration child (pid {pid}) failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((pid, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// What a call of the 32-bit image's clock_gettime costs over the 64-bit
/// one's (`ns64`), both as the sampler sees them: a 32-bit child calls it for
/// about 0.4 s; and the samples behind it. None when this kernel runs no
/// 32-bit processes.
fn calibrate_i386(
    observer: &mut Observer,
    ns64: f64,
    period_ns: u64,
) -> Result<Option<(f64, u64)>> {
    const MIN_SAMPLES: u64 = 40;
    let child = match Vdso32Child::start() {
        Ok(child) => child,
        Err(err) => {
            log::info!("32-bit vDSO calls are priced as 64-bit ones: {err:#}");
            return Ok(None);
        }
    };
    let pid = child.pid();
    let gettime = child
        .image()?
        .function(TimeCall::ClockGettime)
        .ok_or_else(|| anyhow::anyhow!("the 32-bit vDSO exports no clock_gettime"))?;
    let calls = (0.4e9 / ns64.max(MIN_NS)).clamp(10_000.0, 1e9) as u32;
    let elapsed = child.call(gettime.offset, calls)?;
    let snapshot = observer.snapshot()?;
    let samples = gettime_samples(&snapshot, pid, SyscallAbi::I386);
    forget_pid(observer, &snapshot, pid)?;
    if samples < MIN_SAMPLES {
        bail!("{samples} samples of the 32-bit calibration loop ({calls} calls in {elapsed:?})");
    }
    let ns32 = samples as f64 * period_ns as f64 / f64::from(calls);
    // Said once at start: that the 32-bit vDSO was read and calibrated.
    log::info!(
        "32-bit vDSO clock_gettime: {ns32:.1} ns per call as sampled ({samples} samples), \
         64-bit {ns64:.1}"
    );
    Ok(Some((ns32 / ns64, samples)))
}

/// The samples of `pid`'s clock_gettime calls in the image of `abi`.
pub(super) fn gettime_samples(snapshot: &MapSnapshot, pid: u32, abi: SyscallAbi) -> u64 {
    snapshot
        .vdso
        .iter()
        .filter(|(key, _)| {
            key.process.tgid == pid
                && key.abi == abi as u8
                && key.call == TimeCall::ClockGettime as u8
                && key.provenance == Provenance::Sampled as u8
        })
        .map(|(_, count)| count)
        .sum()
}

/// Deletes what the maps hold of a calibration child, which nobody asked
/// about: the images of `pid` that started first (the child, reaped by now:
/// a process that reused its pid since started later and keeps its counts).
pub(super) fn forget_pid(observer: &mut Observer, snapshot: &MapSnapshot, pid: u32) -> Result<()> {
    let child_start = snapshot
        .calls
        .keys()
        .map(|key| key.process)
        .chain(snapshot.vdso.keys().map(|key| key.process))
        .chain(snapshot.names.keys().copied())
        .filter(|process| process.tgid == pid)
        .map(|process| process.start_boottime_ns)
        .min();
    let Some(child_start) = child_start else {
        return Ok(());
    };
    let child =
        |process: &ProcessKey| process.tgid == pid && process.start_boottime_ns == child_start;
    let retired = Retired {
        processes: snapshot
            .names
            .keys()
            .filter(|p| child(p))
            .copied()
            .collect(),
        keys: snapshot
            .calls
            .keys()
            .filter(|key| child(&key.process))
            .copied()
            .collect(),
        vdso_keys: snapshot
            .vdso
            .keys()
            .filter(|key| child(&key.process))
            .copied()
            .collect(),
    };
    let left = observer.forget(&retired);
    if !left.is_empty() {
        bail!(
            "{} keys of the calibration child (pid {pid}) could not be deleted",
            left.keys.len() + left.vdso_keys.len() + left.processes.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_measured_for_the_exported_functions() {
        let image = VdsoImage::current().unwrap();
        let costs = measure(&image);
        let gettime = costs.ns(Some(TimeCall::ClockGettime));
        assert!((MIN_NS..5_000.0).contains(&gettime), "{costs:?}");
        assert!(costs.ns_per_call.contains_key(&TimeCall::Gettimeofday));
        assert_eq!(
            costs.ns(None),
            gettime,
            "unknown code costs as clock_gettime"
        );

        // In-place figures replace the stopwatch, and scale the rest.
        let mut sampled = BTreeMap::new();
        sampled.insert(TimeCall::ClockGettime, gettime * 2.0);
        let calibrated = costs.calibrated(&sampled);
        assert_eq!(calibrated.ns(Some(TimeCall::ClockGettime)), gettime * 2.0);
        let time = costs.ns(Some(TimeCall::Time));
        assert!((calibrated.ns(Some(TimeCall::Time)) - (time * 2.0).max(MIN_NS)).abs() < 1e-9);
        assert_eq!(
            parse_loop_output("clock_gettime 1200\ngettimeofday 30\nnoise\n")
                .get(&TimeCall::Gettimeofday),
            Some(&30)
        );
    }
}
