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

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Result, bail};
use log::warn;
use vdso_observer_common::{SyscallAbi, TimeCall};

use super::calibration_child::{
    ChildRun, ClockFn, GetcpuFn, GettimeofdayFn, LoopPlan, Repeats, TimeFn, forget_pid,
    gettime_samples, parse_loop_output,
};
use crate::{
    host::{random_pool, vdso_image::VdsoImage, vdso32::Vdso32Child},
    kernel::Observer,
    measure::stopwatch,
    model::{
        VdsoCheck,
        costs::{MIN_NS, Sampled, VdsoCosts},
    },
};

/// Calls of one stopwatch round, and rounds (the fastest counts).
pub(super) const CALLS: u64 = 100_000;
pub(super) const ROUNDS: usize = 5;
/// Most time one round may take: 100 000 reads are 2 ms on a TSC, seconds
/// where each read enters the kernel or traps.
pub(super) const ROUND_BUDGET: Duration = Duration::from_millis(20);

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

/// Fewest samples of a call other than clock_gettime that price it. Its
/// loop is short, and a call of a few ns gets few samples (time: ~40 at
/// 499 Hz). Even 10 (±62% at 95%, stated in every estimate they price) beat
/// a stopwatch, which times the loop around a short call too: 5 times the
/// sampled cost of `time` on an Intel host.
const MIN_OTHER_SAMPLES: u64 = 10;

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
        Ok(runs) => {
            let check = runs.check();
            let sampled = model
                .sample_period_ns
                .map(|period_ns| runs.priced(period_ns, check.vdso_capable()))
                .unwrap_or_default();
            let fine_offsets: Vec<(u32, u32)> = runs.offsets.into_iter().collect();
            if !check.vdso_capable() {
                warn!(
                    "this machine's vDSO does not answer clock_gettime(CLOCK_MONOTONIC): {check} \
                     (clocksource not vDSO-capable; see `vdso-observer doctor`)"
                );
            }
            let priced_in_place = !sampled.is_empty();
            if priced_in_place {
                let mut sampled = sampled;
                if let Some(&registers) = sampled.get(&TimeCall::Time) {
                    match time_call_site(observer) {
                        Ok(Some(memory)) => {
                            let (time, spread) = registers.across_call_sites(memory);
                            log::debug!(
                                "time(): {:.2} ns a call sampled from a loop in registers ({} \
                                 samples), {:.2} from one in memory ({}): {:.2}, ±{:.0}% by call \
                                 site",
                                registers.ns_per_call,
                                registers.samples,
                                memory.ns_per_call,
                                memory.samples,
                                time.ns_per_call,
                                spread * 100.0
                            );
                            sampled.insert(TimeCall::Time, time);
                            model.costs.call_site_spread.insert(TimeCall::Time, spread);
                        }
                        Ok(None) => {}
                        Err(err) => warn!(
                            "calibrating time() from a second call site failed, its estimates \
                             assume a call site weighs ±15%: {err:#}"
                        ),
                    }
                }
                model.costs = model.costs.calibrated(&sampled);
                log::debug!(
                    "vDSO costs as sampled (ns per call): {:?}, samples behind clock_gettime's \
                     {}, behind the others' {:?}",
                    model.costs.ns_per_call,
                    model.costs.calibration_samples,
                    model.costs.call_samples
                );
                // The 32-bit image is priced against clock_gettime's price in
                // place, which reads entering the kernel do not give.
                if let Some(period_ns) = model.sample_period_ns.filter(|_| check.vdso_capable()) {
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
                }
            } else if model.sample_period_ns.is_some() && check.vdso_capable() {
                warn!(
                    "the sampler saw too few samples of the calibration loop; using stopwatch \
                     costs, which may misjudge vDSO call counts"
                );
            }
            // Coarse reads stay in user space whatever the clocksource: where
            // fine reads enter the kernel, they are what is left to price.
            let fine = super::coarse::FineOffsets {
                samples: &fine_offsets,
                calls: check.calls,
            };
            let coarse = match model.sample_period_ns {
                Some(period_ns) if !check.vdso_capable() => {
                    super::coarse::calibrate_beside_fallbacks(
                        observer,
                        &model.image,
                        &fine,
                        period_ns,
                    )
                }
                Some(period_ns) if priced_in_place => {
                    super::coarse::calibrate(observer, &model.image, &fine, period_ns)
                }
                _ => Ok(None),
            };
            match coarse {
                Ok(coarse) => model.costs.coarse = coarse,
                Err(err) => warn!(
                    "calibrating coarse clocks failed, their vDSO calls are priced as fine \
                     reads: {err:#}"
                ),
            }
            if model.costs.coarse.is_none() {
                // Marks an earlier calibration left (before a clocksource
                // change) would key samples the new costs cannot price.
                if let Err(err) = observer.set_gettime_code(&[], &[]) {
                    warn!("clearing the coarse-clock code marks failed: {err:#}");
                }
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
    Ok(run_child(observer, true)?.check())
}

/// Fewer samples of clock_gettime than this say too little (±30% at 95%):
/// the stopwatch then prices every call.
const MIN_SAMPLES: u64 = 40;

/// Samples of clock_gettime a starved fine child runs on for, where the vDSO
/// answers it: the coarse calibration finds a coarse read's own code by the
/// fine reads' samples missing there, and judges that only where they would
/// have had 3 or more were the code shared, about 1 in 14 of these. With a
/// tenth of a CPU one fine run gave 41 (priced), the coarse loop's code
/// could not be told (about 2 expected there), and coarse reads were priced
/// as fine ones (1 observer start in 20 here, and once in CI).
const SAMPLES_FOR_COARSE: u64 = 80;

/// Both ends of the child protocol: runs `vdso-observer vdso-loop` (see
/// [`run_loop`]), reads its `NAME CALLS` lines, and judges them against what the
/// programs counted of it; then forgets the child, which nobody asked about.
/// A child the machine starved of CPU runs again, added up (see [`Repeats`]).
/// Returns the runs added up.
fn run_child(observer: &mut Observer, quick: bool) -> Result<FineRuns> {
    let plan = if quick {
        LoopPlan::Quick
    } else {
        LoopPlan::Full
    };
    let period_ns = observer.sample_period_ns().filter(|_| !quick);
    let mut runs = FineRuns::default();
    Repeats::run_until(observer, plan, |observer, run| {
        runs.add(observer, run)?;
        // Without a sampler the runs count calls and kernel entries only,
        // which a starved CPU does not thin out.
        let Some(period_ns) = period_ns else {
            return Ok(true);
        };
        let short = runs.shortfalls(period_ns);
        if let Some((call, samples, calls)) = short.first() {
            log::debug!(
                "{}: {samples} samples of {calls} calls so far, too few to price it",
                call.name()
            );
        }
        Ok(short.is_empty() && runs.enough_for_coarse())
    })?;
    if let Some(period_ns) = period_ns {
        for (call, samples, calls) in runs.shortfalls(period_ns) {
            log::debug!(
                "{}: {samples} samples of {calls} calls, too few: priced by its stopwatch ratio \
                 to clock_gettime",
                call.name()
            );
        }
    }
    Ok(runs)
}

/// The fine plan's runs added up: each function's calls and samples, the
/// kernel entries of clock_gettime(CLOCK_MONOTONIC), and where the samples
/// landed.
#[derive(Default)]
pub(super) struct FineRuns {
    calls: BTreeMap<TimeCall, u64>,
    samples: BTreeMap<TimeCall, u64>,
    kernel_entries: u64,
    pub offsets: BTreeMap<u32, u32>,
    /// Asked after the first child ran: not ready then means it was not
    /// ready at the child's start (the pool only ever becomes ready).
    random_pool_ready: Option<bool>,
}

impl FineRuns {
    /// Adds what the programs counted of one child, then forgets it.
    fn add(&mut self, observer: &mut Observer, run: &ChildRun) -> Result<()> {
        let pid = run.pid;
        if self.calls.is_empty() {
            self.random_pool_ready = random_pool::random_pool_ready();
        }
        // Only the coarse calibration needs them: without, it finds no code
        // of coarse reads' own, and the rest still prices.
        match observer.take_sample_offsets() {
            Ok(offsets) => {
                for (offset, count) in offsets {
                    *self.offsets.entry(offset).or_default() += count;
                }
            }
            Err(err) => log::debug!("reading the calibration child's samples by offset: {err:#}"),
        }
        let snapshot = observer.snapshot()?;
        self.kernel_entries += snapshot
            .calls
            .iter()
            .filter(|(key, _)| {
                key.process.tgid == pid
                    && key.call == TimeCall::ClockGettime as u8
                    && key.clock_id == libc::CLOCK_MONOTONIC
            })
            .map(|(_, count)| count)
            .sum::<u64>();
        for (call, calls) in parse_loop_output(&run.out) {
            *self.calls.entry(call).or_default() += calls;
            *self.samples.entry(call).or_default() += snapshot
                .vdso
                .iter()
                .filter(|(key, _)| key.process.tgid == pid && key.call == call as u8)
                .map(|(_, count)| count)
                .sum::<u64>();
        }
        forget_pid(observer, &snapshot, pid)
    }

    fn check(&self) -> VdsoCheck {
        VdsoCheck {
            calls: self
                .calls
                .get(&TimeCall::ClockGettime)
                .copied()
                .unwrap_or(0),
            kernel_entries: self.kernel_entries,
            random_pool_ready: self.random_pool_ready,
        }
    }

    /// Whether the coarse calibration can tell code of a coarse read's own
    /// by these runs' samples (see [`SAMPLES_FOR_COARSE`]); where fine reads
    /// enter the kernel it asks breakpoints instead.
    fn enough_for_coarse(&self) -> bool {
        !self.check().vdso_capable()
            || self
                .samples
                .get(&TimeCall::ClockGettime)
                .copied()
                .unwrap_or(0)
                >= SAMPLES_FOR_COARSE
    }

    /// Calls made but sampled too little to be priced: (call, samples, calls).
    /// Not the calls that read the clocksource where its reads enter the
    /// kernel: more runs would not price them.
    fn shortfalls(&self, period_ns: u64) -> Vec<(TimeCall, u64, u64)> {
        let answered = self.check().vdso_capable();
        let priced = self.priced(period_ns, answered);
        self.calls
            .iter()
            .filter(|(call, calls)| **calls > 0 && !priced.contains_key(call))
            .filter(|(call, _)| answered || !reads_the_clocksource(**call))
            .map(|(call, calls)| (*call, self.samples.get(call).copied().unwrap_or(0), *calls))
            .collect()
    }

    /// Each call's cost as sampled, where its samples say enough; none
    /// without clock_gettime's, the reference the others are checked by.
    /// Where its reads enter the kernel (`answered` false), time() and getcpu
    /// still stay in user space and are priced alone; the calls that read
    /// the clocksource are not (their samples are the user-space part of a
    /// kernel entry, and priced by it each would stand for a vDSO call).
    fn priced(&self, period_ns: u64, answered: bool) -> BTreeMap<TimeCall, Sampled> {
        let mut sampled = BTreeMap::new();
        let calls = self
            .calls
            .iter()
            .filter(|(call, _)| answered || !reads_the_clocksource(**call));
        for (&call, &calls) in calls {
            let samples = self.samples.get(&call).copied().unwrap_or(0);
            let enough = if call == TimeCall::ClockGettime {
                MIN_SAMPLES
            } else {
                MIN_OTHER_SAMPLES
            };
            if samples >= enough && calls > 0 {
                let ns_per_call = samples as f64 * period_ns as f64 / calls as f64;
                sampled.insert(
                    call,
                    Sampled {
                        ns_per_call,
                        samples,
                    },
                );
            }
        }
        if answered && !sampled.contains_key(&TimeCall::ClockGettime) {
            sampled.clear();
        }
        sampled
    }
}

/// The calls a clocksource the vDSO cannot read sends into the kernel.
fn reads_the_clocksource(call: TimeCall) -> bool {
    matches!(call, TimeCall::ClockGettime | TimeCall::Gettimeofday)
}

/// time()'s cost sampled from a loop of the second shape (see
/// [`crate::measure::plt_stub::CallSite`]); None when too few samples landed.
fn time_call_site(observer: &mut Observer) -> Result<Option<Sampled>> {
    let Some(period_ns) = observer.sample_period_ns() else {
        return Ok(None);
    };
    let mut runs = FineRuns::default();
    Repeats::run_until(observer, LoopPlan::TimeCallSite, |observer, run| {
        runs.add(observer, run)?;
        if !runs.calls.contains_key(&TimeCall::Time) {
            bail!("the time() child (pid {}) printed no count", run.pid);
        }
        Ok(runs.samples.get(&TimeCall::Time).copied().unwrap_or(0) >= MIN_OTHER_SAMPLES)
    })?;
    let calls = runs.calls.get(&TimeCall::Time).copied().unwrap_or(0);
    let samples = runs.samples.get(&TimeCall::Time).copied().unwrap_or(0);
    if samples < MIN_OTHER_SAMPLES || calls == 0 {
        log::debug!("time() from memory: {samples} samples of {calls} calls, too few");
        return Ok(None);
    }
    Ok(Some(Sampled {
        ns_per_call: samples as f64 * period_ns as f64 / calls as f64,
        samples,
    }))
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
        sampled.insert(
            TimeCall::ClockGettime,
            Sampled {
                ns_per_call: gettime * 2.0,
                samples: 100,
            },
        );
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

    /// Runs added up price what one starved run could not: a tenth of a CPU
    /// gave 37 samples of clock_gettime a run here.
    #[test]
    fn starved_runs_price_once_added_up() {
        const PERIOD_NS: u64 = 2_004_008; // 499 Hz
        let starved = |calls: u64, samples: u64, time: (u64, u64)| FineRuns {
            calls: [(TimeCall::ClockGettime, calls), (TimeCall::Time, time.0)].into(),
            samples: [(TimeCall::ClockGettime, samples), (TimeCall::Time, time.1)].into(),
            ..FineRuns::default()
        };
        let one = starved(3_300_000, 37, (7_000_000, 6));
        assert!(
            one.priced(PERIOD_NS, true).is_empty(),
            "under 40: the stopwatch"
        );
        assert_eq!(
            one.shortfalls(PERIOD_NS),
            vec![
                (TimeCall::ClockGettime, 37, 3_300_000),
                (TimeCall::Time, 6, 7_000_000)
            ]
        );
        let mut two = starved(3_300_000, 37, (7_000_000, 6));
        for (call, calls) in one.calls {
            *two.calls.entry(call).or_default() += calls;
        }
        for (call, samples) in one.samples {
            *two.samples.entry(call).or_default() += samples;
        }
        let priced = two.priced(PERIOD_NS, true);
        let ns = priced[&TimeCall::ClockGettime].ns_per_call;
        assert!((ns - 74.0 * 2_004_008.0 / 6_600_000.0).abs() < 1e-9, "{ns}");
        assert_eq!(priced[&TimeCall::Time].samples, 12);
        assert!(two.shortfalls(PERIOD_NS).is_empty());
        // Priced, but too few for the coarse calibration to judge by: a
        // third run, whose samples bring it to 80 or more.
        assert!(!two.enough_for_coarse());
        *two.samples.entry(TimeCall::ClockGettime).or_default() += 6;
        assert!(two.enough_for_coarse());
    }

    /// A clocksource the vDSO cannot read (hpet): every clock_gettime enters
    /// the kernel and leaves a few samples of its user-space part. time()
    /// still prices alone, and the runs stop once it has: no more runs
    /// would price clock_gettime or gettimeofday.
    #[test]
    fn where_fine_reads_enter_the_kernel_time_prices_alone() {
        const PERIOD_NS: u64 = 1_001_001; // 999 Hz
        let runs = FineRuns {
            calls: [
                (TimeCall::ClockGettime, 400_000),
                (TimeCall::Gettimeofday, 90_000),
                (TimeCall::Time, 9_000_000),
            ]
            .into(),
            samples: [
                (TimeCall::ClockGettime, 45),
                (TimeCall::Gettimeofday, 11),
                (TimeCall::Time, 25),
            ]
            .into(),
            kernel_entries: 400_000,
            ..FineRuns::default()
        };
        assert!(!runs.check().vdso_capable());
        let priced = runs.priced(PERIOD_NS, false);
        assert_eq!(priced.keys().collect::<Vec<_>>(), [&TimeCall::Time]);
        assert!(runs.shortfalls(PERIOD_NS).is_empty());
        // Breakpoints tell the coarse reads' code here: no more runs for it.
        assert!(runs.enough_for_coarse());
        // Read by the vDSO, the same samples price every call.
        assert_eq!(runs.priced(PERIOD_NS, true).len(), 3);
    }
}
