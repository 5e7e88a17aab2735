//! The calibration child, both ends: `vdso-observer vdso-loop` calls the
//! vDSO's functions for a known time and prints how many calls it made; the
//! observer runs it under its sampler, reads what the programs counted of it,
//! and forgets it. `calibrate` and `coarse` run it with their plans.

use std::{
    collections::BTreeMap,
    hint::black_box,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use vdso_observer_common::{ProcessKey, Provenance, SyscallAbi, TimeCall};

use super::plt_stub::{CallSite, call_null_through_plt};
use crate::{
    host::vdso_image::VdsoImage,
    kernel::Observer,
    model::{MapSnapshot, Retired},
};

/// The vDSO's functions as C declares them.
pub type ClockFn = unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> libc::c_int;
pub type GettimeofdayFn =
    unsafe extern "C" fn(*mut libc::timeval, *mut libc::c_void) -> libc::c_int;
/// The kernel's `__kernel_old_time_t`: a `long`, whatever the libc's time_t.
pub type TimeFn = unsafe extern "C" fn(*mut libc::c_long) -> libc::c_long;
pub type GetcpuFn = unsafe extern "C" fn(*mut u32, *mut u32, *mut libc::c_void) -> libc::c_int;

/// How long the calibration child calls each function: every function is
/// priced by its own samples (time and getcpu where the image has them).
pub const LOOP_MS: [(TimeCall, u64); 4] = [
    (TimeCall::ClockGettime, 800),
    (TimeCall::Gettimeofday, 200),
    (TimeCall::Time, 250),
    (TimeCall::Getcpu, 150),
];
/// How long the coarse child reads CLOCK_MONOTONIC_COARSE.
pub const COARSE_LOOP_MS: u64 = 500;
/// How long the second call-site child calls time.
pub const TIME_CALL_SITE_MS: u64 = 250;
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
    /// time for [`TIME_CALL_SITE_MS`], from a loop of the other shape
    /// ([`CallSite::Memory`]; [`LoopPlan::Full`] calls it from registers).
    TimeCallSite,
}

impl LoopPlan {
    /// For the logs.
    pub fn name(self) -> &'static str {
        match self {
            LoopPlan::Full => "fine",
            LoopPlan::Quick => "quick",
            LoopPlan::Coarse => "coarse",
            LoopPlan::TimeCallSite => "time() call site",
        }
    }
}

/// The hidden `vdso-loop` subcommand, run as a child of the observer: calls
/// each function of its plan through the vDSO for its time, and prints
/// `NAME CALLS` lines. Functions the image lacks are left out.
pub fn run_loop(image: &VdsoImage, plan: LoopPlan) -> anyhow::Result<()> {
    let site = match plan {
        LoopPlan::TimeCallSite => CallSite::Memory,
        _ => CallSite::Registers,
    };
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
        LoopPlan::TimeCallSite => vec![(TimeCall::Time, TIME_CALL_SITE_MS, libc::CLOCK_MONOTONIC)],
    };
    // Every Instant::now() below is a clock_gettime(CLOCK_MONOTONIC) through
    // the vDSO, whatever the phase: counted, and added to the fine reads'
    // line, so a check on a clocksource the vDSO cannot read finds as many
    // kernel entries as calls (the time phase alone makes ~300 000).
    let mut clock = ChildClock::default();
    let mut lines = Vec::new();
    for (call, ms, clock_id) in phases {
        let Some(address) = image.own_address(call) else {
            if call == TimeCall::ClockGettime {
                bail!("the vDSO exports no clock_gettime");
            }
            continue;
        };
        let address = address as usize;
        let deadline = clock.now() + std::time::Duration::from_millis(ms);
        // SAFETY: as in `measure`: each entry called with its C signature.
        let batches = unsafe {
            match call {
                TimeCall::Gettimeofday => {
                    let f: GettimeofdayFn = std::mem::transmute(address);
                    let mut tv = libc::timeval {
                        tv_sec: 0,
                        tv_usec: 0,
                    };
                    clock.spin(deadline, || f(&mut tv, std::ptr::null_mut()) as i64)
                }
                TimeCall::Time => {
                    // A call this short is sampled by its call site: called
                    // as C programs call glibc's time(), through a PLT.
                    clock.batches(deadline, || call_null_through_plt(address, BATCH, site))
                }
                TimeCall::Getcpu => {
                    let f: GetcpuFn = std::mem::transmute(address);
                    let (mut cpu, mut node) = (0u32, 0u32);
                    clock.spin(deadline, || {
                        f(&mut cpu, &mut node, std::ptr::null_mut()) as i64
                    })
                }
                _ if clock_id != libc::CLOCK_MONOTONIC => {
                    // Through the libc, as programs call it: a call this short
                    // is sampled differently with what surrounds it.
                    let mut ts = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 0,
                    };
                    clock.spin(deadline, || libc::clock_gettime(clock_id, &mut ts) as i64)
                }
                _ => {
                    let f: ClockFn = std::mem::transmute(address);
                    let mut ts = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 0,
                    };
                    clock.spin(deadline, || f(clock_id, &mut ts) as i64)
                }
            }
        };
        let name = match (call, clock_id) {
            (TimeCall::ClockGettime, libc::CLOCK_MONOTONIC) => call.name(),
            (TimeCall::ClockGettime, _) => COARSE_LINE,
            _ => call.name(),
        };
        lines.push((name, batches * BATCH));
    }
    for (name, mut calls) in lines {
        if name == TimeCall::ClockGettime.name() {
            calls += clock.reads;
        }
        println!("{name} {calls}");
    }
    Ok(())
}

/// Calls a phase makes between two looks at the clock.
const BATCH: u64 = 1000;

/// The child's own clock reads, counted.
#[derive(Default)]
struct ChildClock {
    reads: u64,
}

impl ChildClock {
    fn now(&mut self) -> Instant {
        self.reads += 1;
        Instant::now()
    }

    /// Runs `batch` until `deadline`: how many times.
    fn batches(&mut self, deadline: Instant, mut batch: impl FnMut()) -> u64 {
        let mut batches = 0u64;
        while self.now() < deadline {
            batch();
            batches += 1;
        }
        batches
    }

    /// Calls `f` in batches of [`BATCH`] until `deadline`: how many batches.
    fn spin(&mut self, deadline: Instant, mut f: impl FnMut() -> i64) -> u64 {
        self.batches(deadline, || {
            for _ in 0..BATCH {
                black_box(f());
            }
        })
    }
}

/// Parses the child's `NAME CALLS` lines.
pub fn parse_loop_output(text: &str) -> BTreeMap<TimeCall, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, calls) = line.split_once(' ')?;
            let call = TimeCall::ALL.into_iter().find(|c| c.name() == name)?;
            Some((call, calls.trim().parse().ok()?))
        })
        .collect()
}

/// One run of the calibration child.
pub struct ChildRun {
    pub pid: u32,
    /// What it printed (`NAME CALLS` lines).
    pub out: String,
    /// The CPU time it got: its samples follow this, not the time it ran.
    pub cpu: Duration,
}

/// Runs `vdso-observer vdso-loop` with `plan`, its samples counted by vDSO
/// offset meanwhile (the histogram is left for the caller to take).
pub fn run_loop_child(observer: &mut Observer, plan: LoopPlan) -> Result<ChildRun> {
    let exe = std::env::current_exe().context("finding the observer's own binary")?;
    let cpu_before = children_cpu();
    let started = Instant::now();
    let child = Command::new(&exe)
        .arg("vdso-loop")
        .args(match plan {
            LoopPlan::Full => None,
            LoopPlan::Quick => Some("--quick"),
            LoopPlan::Coarse => Some("--coarse"),
            LoopPlan::TimeCallSite => Some("--time-call-site"),
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
    // The observer's children reaped meanwhile: this one (nothing else runs
    // children while it calibrates).
    let cpu = children_cpu().saturating_sub(cpu_before);
    log::debug!(
        "calibration child {pid} ({plan:?}): {} ms of CPU in {} ms",
        cpu.as_millis(),
        started.elapsed().as_millis()
    );
    watching?;
    observer.stop_watching_sample_offsets()?;
    if !out.status.success() {
        bail!(
            "the calibration child (pid {pid}) failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ChildRun {
        pid,
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        cpu,
    })
}

/// User and system time of the reaped children of the observer.
fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let time = |tv: libc::timeval| {
        Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Runs of one plan, added up while the machine starves them. A child's
/// samples follow the CPU time it gets: with a tenth of a CPU (a busy
/// machine, a CPU quota on the observer's cgroup or unit) one run of the
/// fine plan got 37 samples of clock_gettime here, under the 40 a price
/// needs, and the coarse plan a third of what it needs.
pub struct Repeats {
    /// The CPU time one run gets on a quiet machine (its loops' length).
    quiet_cpu: Duration,
    /// Runs stop once this much time has gone by since the first began.
    wall_limit: Duration,
    started: Instant,
    cpu: Duration,
    pub runs: u32,
}

impl Repeats {
    /// The fine plan's 1.4 s of loops, repeated for 8 s at most; the coarse
    /// plan's 0.5 s for 4 s; the time() call site's 0.25 s for 2 s. The
    /// quick check is never repeated: it counts kernel entries, which a
    /// starved CPU does not thin out.
    fn of(plan: LoopPlan) -> Repeats {
        let (plan_ms, limit_ms) = match plan {
            LoopPlan::Full => (LOOP_MS.iter().map(|(_, ms)| ms).sum(), 8_000),
            LoopPlan::Quick => (100, 0),
            LoopPlan::Coarse => (COARSE_LOOP_MS, 4_000),
            LoopPlan::TimeCallSite => (TIME_CALL_SITE_MS, 2_000),
        };
        Repeats {
            quiet_cpu: Duration::from_millis(plan_ms),
            wall_limit: Duration::from_millis(limit_ms),
            started: Instant::now(),
            cpu: Duration::ZERO,
            runs: 0,
        }
    }

    /// Runs the child of `plan`, hands each run to `add` (which adds it up
    /// and says whether the runs so far say enough), and runs it again while
    /// they do not and [`Repeats::again`] allows. Returns the runs' account.
    pub fn run_until(
        observer: &mut Observer,
        plan: LoopPlan,
        add: impl FnMut(&mut Observer, &ChildRun) -> Result<bool>,
    ) -> Result<Repeats> {
        Repeats::run(observer, plan, add, Repeats::again)
    }

    /// As [`Repeats::run_until`], but a run that said too little runs again
    /// within the time limit however much CPU it got: for a calibration
    /// whose samples add up to what it needs on a quiet machine too.
    pub fn run_until_enough(
        observer: &mut Observer,
        plan: LoopPlan,
        add: impl FnMut(&mut Observer, &ChildRun) -> Result<bool>,
    ) -> Result<Repeats> {
        Repeats::run(observer, plan, add, |repeats| {
            repeats.started.elapsed() < repeats.wall_limit
        })
    }

    fn run(
        observer: &mut Observer,
        plan: LoopPlan,
        mut add: impl FnMut(&mut Observer, &ChildRun) -> Result<bool>,
        again: impl Fn(&Repeats) -> bool,
    ) -> Result<Repeats> {
        let mut repeats = Repeats::of(plan);
        loop {
            let run = run_loop_child(observer, plan)?;
            repeats.record(&run);
            if add(observer, &run)? || !again(&repeats) {
                break;
            }
            log::debug!(
                "the {} calibration child got {:.0}% of a CPU in {} runs, too few samples: \
                 running it again",
                plan.name(),
                repeats.cpu_share() * 100.0,
                repeats.runs
            );
        }
        if repeats.runs > 1 {
            let why = if repeats.cpu_share() < 0.75 {
                "a busy machine or a CPU quota"
            } else {
                "too few samples in a run"
            };
            log::info!(
                "the {} calibration ran its child {} times, {:.0}% of a CPU ({why}): start-up \
                 took that much longer",
                plan.name(),
                repeats.runs,
                repeats.cpu_share() * 100.0
            );
        }
        Ok(repeats)
    }

    fn record(&mut self, run: &ChildRun) {
        self.cpu += run.cpu;
        self.runs += 1;
    }

    /// Whether a run that said too little is worth another: only while the
    /// runs so far got under three quarters of the CPU time one run gets on
    /// a quiet machine (there more runs would say no more), and within the
    /// time limit.
    fn again(&self) -> bool {
        self.starved() && self.started.elapsed() < self.wall_limit
    }

    /// The runs got under three quarters of one quiet run's CPU time.
    pub fn starved(&self) -> bool {
        self.cpu.as_secs_f64() < self.quiet_cpu.as_secs_f64() * 0.75
    }

    /// The share of a CPU the runs got, for the logs.
    pub fn cpu_share(&self) -> f64 {
        let wall = self.started.elapsed().as_secs_f64();
        if wall > 0.0 {
            self.cpu.as_secs_f64() / wall
        } else {
            0.0
        }
    }
}

/// The samples of `pid`'s clock_gettime calls in the image of `abi`.
pub fn gettime_samples(snapshot: &MapSnapshot, pid: u32, abi: SyscallAbi) -> u64 {
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
pub fn forget_pid(observer: &mut Observer, snapshot: &MapSnapshot, pid: u32) -> Result<()> {
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

    /// A run that got its CPU is not run again, whatever it said; one that
    /// got a tenth of it is, until the runs add up to most of one quiet run.
    #[test]
    fn only_runs_starved_of_cpu_run_again() {
        let run = |ms: u64| ChildRun {
            pid: 1,
            out: String::new(),
            cpu: Duration::from_millis(ms),
        };
        let mut quiet = Repeats::of(LoopPlan::Full);
        quiet.record(&run(1_390));
        assert!(!quiet.again());
        let mut starved = Repeats::of(LoopPlan::Full);
        starved.record(&run(140));
        assert!(starved.again());
        for _ in 0..6 {
            starved.record(&run(140));
        }
        assert!(
            starved.starved(),
            "7 runs of a tenth: 0.98 s, under 3/4 of 1.4"
        );
        starved.record(&run(140));
        assert!(!starved.starved(), "8 runs: 1.12 s");
        let mut coarse = Repeats::of(LoopPlan::Coarse);
        coarse.record(&run(50));
        assert!(coarse.again());
    }
}
