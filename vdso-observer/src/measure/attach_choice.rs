//! `--attach auto` where fentry is refused and kprobes attach (Debian's arm64
//! kernels): a kprobe costs more per time call and nothing on other syscalls;
//! the raw tracepoint costs less per time call but puts every syscall of the
//! machine on the traced path. Which costs the machine less depends on its
//! syscall mix, so it is measured at start: this process times its own loops
//! bare and under each (its own calls are not counted), and the kernel's run
//! counts give the machine's syscall and time-call rates over half a second.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    kernel::{KprobeJudge, KprobeTrial, KprobeVerdict},
    measure::stopwatch,
};

/// Calls per timed loop, and loops per figure (the best is kept).
const LOOP_CALLS: u64 = 20_000;
const LOOP_BUDGET: Duration = Duration::from_millis(50);
const LOOPS: usize = 3;

/// Loops bare and under the empty program in turn, for the floor.
const FLOOR_PAIRS: usize = 7;

/// Below this difference (ns of CPU a second: 0.1% of a core) the two ways
/// cost the same: what separates them is the measurement's noise, and a tie
/// keeps every other syscall untouched.
const NEGLIGIBLE_NS_PER_SEC: f64 = 1e6;

/// What the choice rests on, all measured on this machine just now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyscallMix {
    /// What a kprobe adds to one time call (its program included), ns.
    pub kprobe_ns_per_time_call: f64,
    /// What the traced path adds to every syscall while a sys_enter program
    /// is attached (the empty program's tax on getppid), ns.
    pub floor_ns_per_syscall: f64,
    /// What the counting program itself takes per time call, ns (the kernel's
    /// run-time statistics of the kprobe programs: the same code).
    pub program_ns_per_time_call: f64,
    /// Syscalls and time syscalls per second on the whole machine.
    pub syscalls_per_sec: f64,
    pub time_calls_per_sec: f64,
}

impl SyscallMix {
    /// ns of CPU per second the kprobes cost the machine.
    pub fn kprobe_cost(&self) -> f64 {
        self.time_calls_per_sec * self.kprobe_ns_per_time_call
    }

    /// ns of CPU per second the raw tracepoint would cost: the floor on every
    /// syscall, the program on time calls.
    pub fn raw_cost(&self) -> f64 {
        self.syscalls_per_sec * self.floor_ns_per_syscall
            + self.time_calls_per_sec * self.program_ns_per_time_call
    }

    /// The raw tracepoint only when it is clearly cheaper, by a fifth and by
    /// more than a negligible share of a core: a tie keeps every other
    /// syscall untouched.
    pub fn prefers_raw_tracepoint(&self) -> bool {
        let (raw, kprobes) = (self.raw_cost(), self.kprobe_cost());
        raw < 0.8 * kprobes && kprobes - raw > NEGLIGIBLE_NS_PER_SEC
    }

    pub fn note(&self) -> String {
        format!(
            "measured: {:.0} syscalls/s of which {:.0} time calls; kprobes cost {:.0} ns a time call \
             ({:.2} ms of CPU a second), the raw tracepoint {:.0} ns every syscall + {:.0} ns a time \
             call ({:.2} ms a second)",
            self.syscalls_per_sec,
            self.time_calls_per_sec,
            self.kprobe_ns_per_time_call,
            self.kprobe_cost() / 1e6,
            self.floor_ns_per_syscall,
            self.program_ns_per_time_call,
            self.raw_cost() / 1e6,
        )
    }
}

/// `auto`'s judge: this process's own loops bare (before the kprobes), under
/// the kprobes and under the empty sys_enter program, and the machine's rates.
#[derive(Default)]
pub struct MeasuredJudge {
    bare: Option<LoopCosts>,
}

impl KprobeJudge for MeasuredJudge {
    fn before_kprobes(&mut self) {
        self.bare = Some(LoopCosts::measure());
    }

    fn judge(&mut self, trial: &mut KprobeTrial<'_>) -> Result<KprobeVerdict> {
        let bare = self.bare.unwrap_or_else(LoopCosts::measure);
        let mix = measure_mix(trial, bare)?;
        Ok(if mix.prefers_raw_tracepoint() {
            KprobeVerdict::RawTracepointIsCheaper(mix.note())
        } else {
            KprobeVerdict::Keep(mix.note())
        })
    }
}

/// With the kprobes attached: what they add to a time call, what a
/// sys_enter program's traced path adds to every syscall (the empty program,
/// attached for the measurement only: it counts nothing), what the counting
/// program takes, and the machine's syscall and time-call rates over half a
/// second (the empty program's and the kprobes' run counts).
fn measure_mix(trial: &mut KprobeTrial<'_>, bare: LoopCosts) -> Result<SyscallMix> {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("BPF_ENABLE_STATS (run counts)")?;
    let (runs0, ns0) = trial.runs(false);
    let under_kprobes = LoopCosts::measure();
    let (runs1, ns1) = trial.runs(false);
    let program_ns = if runs1 > runs0 {
        (ns1 - ns0) as f64 / (runs1 - runs0) as f64
    } else {
        0.0
    };
    let floor_ns = paired_floor_ns(trial)?;
    trial.attach_floor()?;
    let (time0, _) = trial.runs(false);
    let (all0, _) = trial.runs(true);
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let (time1, _) = trial.runs(false);
    let (all1, _) = trial.runs(true);
    let seconds = started.elapsed().as_secs_f64();
    trial.detach_floor()?;
    Ok(SyscallMix {
        kprobe_ns_per_time_call: (under_kprobes.direct_clock_gettime_ns
            - bare.direct_clock_gettime_ns)
            .max(0.0),
        floor_ns_per_syscall: floor_ns,
        program_ns_per_time_call: program_ns,
        syscalls_per_sec: all1.saturating_sub(all0) as f64 / seconds,
        time_calls_per_sec: time1.saturating_sub(time0) as f64 / seconds,
    })
}

/// What the empty sys_enter program adds to a getppid: loops bare and under
/// it in turn (the order alternating, so a drift cancels), the median of the
/// pairs' differences. A bare figure taken once, before the host slowed an
/// emulated guest's only vCPU, made the floor look nearly free there (89 ns
/// against 724 to 1 048 ns in the same guest) and chose the raw tracepoint.
fn paired_floor_ns(trial: &mut KprobeTrial<'_>) -> Result<f64> {
    let mut extra = Vec::with_capacity(FLOOR_PAIRS);
    for pair in 0..FLOOR_PAIRS {
        let (bare, under) = if pair % 2 == 0 {
            let bare = getppid_loop_ns();
            trial.attach_floor()?;
            let under = getppid_loop_ns();
            trial.detach_floor()?;
            (bare, under)
        } else {
            trial.attach_floor()?;
            let under = getppid_loop_ns();
            trial.detach_floor()?;
            (getppid_loop_ns(), under)
        };
        extra.push(under - bare);
    }
    Ok(median(&mut extra).max(0.0))
}

fn getppid_loop_ns() -> f64 {
    stopwatch::time_calls(LOOP_CALLS, LOOP_BUDGET, || {
        // SAFETY: getppid takes no arguments.
        unsafe { libc::syscall(libc::SYS_getppid) }
    })
    .ns_per_call
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// ns per getppid and per direct `syscall(SYS_clock_gettime)` in this
/// process, as things are attached now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoopCosts {
    pub getppid_ns: f64,
    pub direct_clock_gettime_ns: f64,
}

impl LoopCosts {
    pub fn measure() -> LoopCosts {
        LoopCosts {
            getppid_ns: best_loop_ns(|| {
                // SAFETY: getppid takes no arguments.
                black_box(unsafe { libc::syscall(libc::SYS_getppid) });
            }),
            direct_clock_gettime_ns: best_loop_ns(|| {
                let mut ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: a valid clock id and a live timespec.
                black_box(unsafe {
                    libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts)
                });
            }),
        }
    }
}

/// The fastest of a few loops (noise only ever adds time), each bounded by
/// LOOP_BUDGET too: a syscall that traps must not hold the start-up.
fn best_loop_ns(call: impl Fn()) -> f64 {
    stopwatch::best_of(LOOPS, LOOP_CALLS, LOOP_BUDGET, || {
        call();
        0
    })
    .ns_per_call
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix(syscalls_per_sec: f64, time_calls_per_sec: f64) -> SyscallMix {
        SyscallMix {
            kprobe_ns_per_time_call: 300.0,
            floor_ns_per_syscall: 80.0,
            program_ns_per_time_call: 40.0,
            syscalls_per_sec,
            time_calls_per_sec,
        }
    }

    #[test]
    fn a_syscall_heavy_machine_keeps_kprobes() {
        // A proxy: 1 M syscalls a second, few of them time calls.
        let m = mix(1_000_000.0, 1_000.0);
        assert!(!m.prefers_raw_tracepoint(), "{}", m.note());
        assert_eq!(m.kprobe_cost(), 300_000.0);
        assert_eq!(m.raw_cost(), 80_000_000.0 + 40_000.0);
    }

    #[test]
    fn a_machine_of_time_calls_takes_the_raw_tracepoint() {
        // Most syscalls are time calls (a process falling back on hpet).
        let m = mix(500_000.0, 450_000.0);
        assert!(m.prefers_raw_tracepoint(), "{}", m.note());
    }

    #[test]
    fn an_idle_machine_keeps_kprobes() {
        assert!(!mix(0.0, 0.0).prefers_raw_tracepoint());
        assert!(!mix(100.0, 0.0).prefers_raw_tracepoint());
    }

    #[test]
    fn a_difference_within_noise_keeps_kprobes() {
        // An idle guest whose own few calls are mostly time calls: the raw
        // tracepoint is cheaper by more than a fifth, but by 0.002% of a core.
        let m = mix(120.0, 60.0);
        assert!(m.raw_cost() < 0.8 * m.kprobe_cost(), "{}", m.note());
        assert!(!m.prefers_raw_tracepoint(), "{}", m.note());
        // The same mix at 200 times the rate is a real difference.
        assert!(mix(24_000.0, 12_000.0).prefers_raw_tracepoint());
    }

    #[test]
    fn the_median_ignores_one_wild_pair() {
        assert_eq!(median(&mut [900.0, 1_000.0, 89.0, 950.0, 1_040.0]), 950.0);
    }

    #[test]
    fn loops_are_timed() {
        let costs = LoopCosts::measure();
        assert!(
            costs.getppid_ns > 0.0 && costs.getppid_ns < 100_000.0,
            "{costs:?}"
        );
        assert!(costs.direct_clock_gettime_ns > 0.0, "{costs:?}");
    }
}
