//! What a call costs inside the vDSO, per time call: by this the sampler's
//! samples become calls. And what it costs through each path (vDSO, kernel),
//! by which a kernel entry becomes excess CPU.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use vdso_observer_common::{SyscallAbi, TimeCall};

use super::reason::FallbackReason;

/// No vDSO function returns faster than this: a floor against timer noise.
pub const MIN_NS: f64 = 1.0;
/// The floor of a cost as sampled, which can be well under a call's
/// stopwatch time: a call of a few instructions overlaps the loop around it
/// (time() through a PLT samples as ~0.3 ns a call on an Intel host).
pub const MIN_SAMPLED_NS: f64 = 0.05;

/// ns spent inside the vDSO per call, per function.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VdsoCosts {
    /// Of the 64-bit image.
    pub ns_per_call: BTreeMap<TimeCall, f64>,
    /// What a call of the 32-bit image costs over the same call of the 64-bit
    /// one, as sampled (None: not measured, taken as 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub i386_ratio: Option<f64>,
    /// Samples behind the calibrated clock_gettime cost (0: stopwatch only):
    /// its own error, ~1/√samples, is part of every estimate's.
    pub calibration_samples: u64,
    /// The same for `i386_ratio`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub i386_calibration_samples: u64,
    /// Samples behind the other calls priced by their own loop (time,
    /// gettimeofday, getcpu); a call not here keeps its stopwatch ratio to
    /// clock_gettime, priced as uncalibrated.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub call_samples: BTreeMap<TimeCall, u64>,
    /// How far a short call's sampled cost moves with its call site on this
    /// host (relative, one sigma), measured from loops of two shapes; calls
    /// not here are given [`SHORT_CALL_VARIANCE`]'s.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub call_site_spread: BTreeMap<TimeCall, f64>,
    /// What a coarse-clock clock_gettime costs as the sampler sees it, split
    /// by where its samples land (None: not calibrated; coarse reads are then
    /// priced as fine ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coarse: Option<CoarseCosts>,
}

/// A coarse-clock read (CLOCK_*_COARSE) runs code of clock_gettime that fine
/// reads never run (the sampler keys samples there CLOCK_COARSE_SAMPLED) and
/// code both run (its samples mix with the fine reads'). A calibration loop
/// of coarse reads gives both shares: a process's coarse samples give its
/// coarse calls, and those calls' expected share of the rest is taken off
/// before the rest is priced as fine reads.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CoarseCosts {
    /// Sampled ns per coarse call in coarse-only code.
    pub marked_ns: f64,
    /// Sampled ns per coarse call in code fine reads run too.
    pub shared_ns: f64,
    /// Coarse-only samples behind `marked_ns`.
    pub samples: u64,
    /// A fine read's cost in the code both run and in the rest, where the
    /// sampler marks the code both run too (None: it does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_split: Option<FineSplit>,
    /// Where fine reads enter the kernel (a clocksource the vDSO cannot
    /// read): what a fine read's user-space part costs per call, as sampled,
    /// in the code both run. A process's coarse reads are then priced by
    /// their whole call from its coarse-only and shared samples, less its
    /// kernel reads' share of the latter (None: fine reads stay in user space).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_shared_ns: Option<f64>,
}

/// Where a fine read's samples fall in clock_gettime, with the code coarse
/// and fine reads both run marked (CLOCK_SHARED_SAMPLED): a process's fine
/// reads are priced from the rest, its coarse reads from its coarse-only and
/// shared samples less the fine reads' share of the latter. Where a coarse
/// read's samples fall, in its own code or the shared return, moves from
/// run to run; their sum holds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FineSplit {
    /// Sampled ns per fine call outside the marked code.
    pub own_ns: f64,
    /// Sampled ns per fine call in the shared code.
    pub shared_ns: f64,
    /// Samples behind `own_ns`.
    pub own_samples: u64,
}

/// A time call's cost through each path on this machine and clocksource,
/// measured together (stopwatch, nothing attached): the doctor's table and the
/// excess CPU of kernel entries come from this one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PathCost {
    pub call: TimeCall,
    /// The vDSO function, whatever it does here (a fallback costs a syscall).
    pub vdso_ns: Option<f64>,
    /// The real syscall, made directly.
    pub syscall_ns: Option<f64>,
    /// What an answer in user space costs: `vdso_ns` where the vDSO answers;
    /// where it cannot read the clocksource, its coarse clock's cost (no
    /// counter read: a lower bound by the ~10-20 ns a TSC read takes).
    pub answered_ns: Option<f64>,
}

impl PathCost {
    /// CPU time one kernel entry of this call costs over a vDSO answer.
    pub fn excess_ns(&self) -> Option<f64> {
        Some((self.syscall_ns? - self.answered_ns?).max(0.0))
    }
}

/// [`PathCost`] of every call measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PathCosts {
    pub calls: Vec<PathCost>,
}

impl PathCosts {
    pub fn excess_ns(&self, call: TimeCall) -> Option<f64> {
        self.calls.iter().find(|c| c.call == call)?.excess_ns()
    }

    /// CPU seconds a process spent because its calls entered the kernel where
    /// the vDSO could have answered (the fault reasons: a clocksource the vDSO
    /// cannot read, direct syscalls, no vDSO, the legacy page); None when
    /// nothing was measured. CPU-time clocks and getrandom cost nothing extra:
    /// the vDSO never answers them. i386 entries are priced as 64-bit ones.
    /// `entries`: (call, reason, count) of a process's kernel entries.
    pub fn excess_cpu_seconds(
        &self,
        entries: impl IntoIterator<Item = (TimeCall, Option<FallbackReason>, u64)>,
    ) -> Option<f64> {
        if self.calls.is_empty() {
            return None;
        }
        Some(
            entries
                .into_iter()
                .filter(|(_, reason, _)| reason.is_some_and(FallbackReason::is_fault))
                .filter_map(|(call, _, count)| Some(count as f64 * self.excess_ns(call)?))
                .fold(0.0, |sum, ns| sum + ns)
                / 1e9,
        )
    }
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// z of a two-sided 95% interval.
const Z95: f64 = 1.96;
/// Relative variance assumed for a cost never calibrated against the sampler
/// (stopwatch only): ±25% at one sigma.
const UNCALIBRATED_VARIANCE: f64 = 0.25 * 0.25;
/// A call that takes a few ns (a coarse clock, time, getcpu) is sampled
/// differently with the code around it: the calibration loop and a C loop
/// through glibc differed by -8% to -30% for coarse reads and -11% to -32%
/// for getcpu here. The calibration calls such functions as C programs do
/// (coarse clocks through the libc, time through a PLT-shaped stub from a
/// gcc-shaped loop); ±15% at one sigma stands for call sites of other shapes.
/// Other shapes can differ far more: on an Intel VM a loop calling `time`
/// through a function pointer read from the stack had 5.6 times the ns per
/// call a PLT loop had.
const SHORT_CALL_VARIANCE: f64 = 0.15 * 0.15;
/// What a coarse read costs in its own code moves from run to run of one
/// program: the same C loop, sampled system-wide at 499 Hz, spent 0.88-1.0 ns a
/// call there in some runs and 1.5-1.8 ns in others (the whole call 2.0-2.1
/// against 2.5-2.7 ns, and fewer calls a second: the time is real), with or
/// without address randomisation, on either CPU. The calibration child is
/// one such run, the process priced another: their ratio was -63% to +82%
/// in 22 runs (AMD EPYC VM, tsc). ±35% at one sigma.
const COARSE_RUN_VARIANCE: f64 = 0.35 * 0.35;
/// With the shared code marked ([`FineSplit`]) a coarse read is priced by its
/// whole call, which moves far less between those runs (2.0-2.1 against
/// 2.5-2.7 ns above): 60 C loops against 20 calibrations on another AMD EPYC
/// VM read -31% to +36%, 14.7% at one sigma with their own samples' error
/// (-39% to +42%, 22% priced by the coarse-only code). ±15% at one sigma.
/// The call-site term ([`SHORT_CALL_VARIANCE`]) is added to it: 20 C loops
/// through glibc under release builds (`cargo xtask bench coverage`, e5d13da
/// and 3015703, AMD EPYC VM) read -9.9% on average, sd 16.1%; judged around
/// the estimate, as a user reads the interval, their errors were ±24% at one
/// sigma, which ±15% alone (±39% at 95%) covered in 18 of 20 and both terms
/// (±49%) in 20 of 20.
const COARSE_SPLIT_VARIANCE: f64 = 0.15 * 0.15;
/// Sampled cost under which a call counts as short.
pub const SHORT_CALL_NS: f64 = 5.0;

/// A call's cost as the sampler saw it in the calibration loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    pub ns_per_call: f64,
    /// Samples behind it: its Poisson error is ~1/√samples.
    pub samples: u64,
}

impl Sampled {
    /// One cost of a call sampled from two call sites: their geometric mean,
    /// with the samples that give it the same Poisson error (each loop's
    /// error counts a quarter in the mean's logarithm); and the spread, one
    /// sigma, that puts each site one sigma from it once the part of their
    /// difference their own Poisson error explains is taken off, never under
    /// the assumed [`SHORT_CALL_VARIANCE`]'s.
    pub fn across_call_sites(self, other: Sampled) -> (Sampled, f64) {
        let ns = (self.ns_per_call * other.ns_per_call).sqrt();
        let variance = (1.0 / self.samples.max(1) as f64 + 1.0 / other.samples.max(1) as f64) / 4.0;
        let half_difference = (self.ns_per_call / other.ns_per_call).ln() / 2.0;
        let spread = (half_difference * half_difference - variance)
            .max(0.0)
            .sqrt();
        (
            Sampled {
                ns_per_call: ns,
                samples: (1.0 / variance).round() as u64,
            },
            spread.max(SHORT_CALL_VARIANCE.sqrt()),
        )
    }
}

/// What a sampled estimate was made of, for its interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EstimateBasis {
    /// The samples the estimate counts.
    pub samples: u64,
    /// Some were in the 32-bit image.
    pub i386: bool,
    /// Coarse-clock reads were priced.
    pub coarse: bool,
    /// A call shorter than [`SHORT_CALL_NS`] was priced.
    pub short: bool,
    /// Calls other than clock_gettime that were priced.
    pub other_calls: BTreeSet<TimeCall>,
}

impl VdsoCosts {
    /// Cost of a call; unknown code is costed as clock_gettime, the usual caller.
    pub fn ns(&self, call: Option<TimeCall>) -> f64 {
        let call = call.unwrap_or(TimeCall::ClockGettime);
        self.ns_per_call
            .get(&call)
            .or_else(|| self.ns_per_call.get(&TimeCall::ClockGettime))
            .copied()
            .unwrap_or(20.0)
    }

    /// The relative 95% interval of an estimate made of `samples` samples:
    /// Poisson error of the samples and of the calibration behind the cost
    /// (of the i386 calibration too when `i386` samples are in it).
    pub fn uncertainty(&self, samples: u64, i386: bool) -> f64 {
        self.uncertainty_of(&EstimateBasis {
            samples,
            i386,
            ..EstimateBasis::default()
        })
    }

    /// The relative 95% interval of an estimate made as `basis` says: the
    /// Poisson error of its samples and of every calibration its calls were
    /// priced by, and the caller's part in what a short call's samples say.
    pub fn uncertainty_of(&self, basis: &EstimateBasis) -> f64 {
        let variance = |samples: u64| {
            if samples == 0 {
                UNCALIBRATED_VARIANCE
            } else {
                1.0 / samples as f64
            }
        };
        let mut total = 1.0 / basis.samples.max(1) as f64 + variance(self.calibration_samples);
        if basis.i386 {
            total += variance(self.i386_calibration_samples);
        }
        let mut call_site = if basis.short {
            SHORT_CALL_VARIANCE
        } else {
            0.0
        };
        if basis.coarse {
            total += variance(self.coarse.map_or(0, |c| c.samples));
            let by_whole_call = self
                .coarse
                .is_some_and(|c| c.fine_split.is_some() || c.fallback_shared_ns.is_some());
            // Where one program's coarse reads land moves from run to run,
            // whatever the shape of its call site: added to the call-site
            // term, not the wider of the two (see COARSE_SPLIT_VARIANCE).
            total += if by_whole_call {
                COARSE_SPLIT_VARIANCE
            } else {
                COARSE_RUN_VARIANCE
            };
        }
        for call in &basis.other_calls {
            total += variance(self.call_samples.get(call).copied().unwrap_or(0));
            if let Some(spread) = self.call_site_spread.get(call) {
                call_site = call_site.max(spread * spread);
            }
        }
        Z95 * (total + call_site).sqrt()
    }

    /// Cost of a call in the image of `abi`.
    pub fn ns_in(&self, abi: SyscallAbi, call: Option<TimeCall>) -> f64 {
        match abi {
            SyscallAbi::X86_64 | SyscallAbi::Arm64 => self.ns(call),
            SyscallAbi::I386 => self.ns(call) * self.i386_ratio.unwrap_or(1.0),
        }
    }

    /// Scales stopwatch costs so the calls measured in place cost what the
    /// sampler saw (`sampled`: ns per call and the samples behind it); the
    /// others keep their stopwatch ratio to clock_gettime.
    pub fn calibrated(&self, sampled: &BTreeMap<TimeCall, Sampled>) -> VdsoCosts {
        let reference = TimeCall::ClockGettime;
        let scale = match (sampled.get(&reference), self.ns_per_call.get(&reference)) {
            (Some(in_place), Some(stopwatch)) => in_place.ns_per_call / stopwatch,
            _ => 1.0,
        };
        let mut costs = VdsoCosts {
            i386_ratio: self.i386_ratio,
            calibration_samples: sampled
                .get(&reference)
                .map_or(self.calibration_samples, |s| s.samples),
            i386_calibration_samples: self.i386_calibration_samples,
            call_site_spread: self.call_site_spread.clone(),
            coarse: self.coarse,
            ..VdsoCosts::default()
        };
        for (&call, &ns) in &self.ns_per_call {
            let ns = match sampled.get(&call) {
                Some(in_place) => {
                    if call != reference {
                        costs.call_samples.insert(call, in_place.samples);
                    }
                    in_place.ns_per_call.max(MIN_SAMPLED_NS)
                }
                None => (ns * scale).max(MIN_NS),
            };
            costs.ns_per_call.insert(call, ns);
        }
        costs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_place_figures_replace_the_stopwatch_and_scale_the_rest() {
        let mut costs = VdsoCosts::default();
        costs.ns_per_call.insert(TimeCall::ClockGettime, 10.0);
        costs.ns_per_call.insert(TimeCall::Time, 3.0);
        assert_eq!(costs.ns(None), 10.0, "unknown code costs as clock_gettime");
        let sampled = BTreeMap::from([(
            TimeCall::ClockGettime,
            Sampled {
                ns_per_call: 20.0,
                samples: 300,
            },
        )]);
        let calibrated = costs.calibrated(&sampled);
        assert_eq!(calibrated.ns(Some(TimeCall::ClockGettime)), 20.0);
        assert_eq!(calibrated.calibration_samples, 300);
        assert_eq!(calibrated.ns(Some(TimeCall::Time)), 6.0);
        assert!(calibrated.call_samples.is_empty(), "time was not sampled");

        // A call sampled in its own loop keeps its figure and its samples.
        let mut sampled = sampled;
        sampled.insert(
            TimeCall::Time,
            Sampled {
                ns_per_call: 0.3,
                samples: 25,
            },
        );
        let calibrated = costs.calibrated(&sampled);
        assert_eq!(
            calibrated.ns(Some(TimeCall::Time)),
            0.3,
            "a sampled cost goes under a stopwatch's floor"
        );
        assert_eq!(calibrated.call_samples.get(&TimeCall::Time), Some(&25));
    }

    #[test]
    fn an_estimate_priced_by_another_calls_loop_carries_that_loops_error() {
        let costs = VdsoCosts {
            calibration_samples: 400,
            call_samples: BTreeMap::from([(TimeCall::Time, 25)]),
            ..VdsoCosts::default()
        };
        let basis = |calls: &[TimeCall], short: bool| EstimateBasis {
            samples: 100,
            short,
            other_calls: calls.iter().copied().collect(),
            ..EstimateBasis::default()
        };
        let fine = costs.uncertainty_of(&basis(&[], false));
        assert!((fine - costs.uncertainty(100, false)).abs() < 1e-12);
        // 1.96 * sqrt(1/100 + 1/400 + 1/25 + 0.15²)
        let time = costs.uncertainty_of(&basis(&[TimeCall::Time], true));
        let expected = 1.96 * (0.01f64 + 0.0025 + 0.04 + 0.0225).sqrt();
        assert!((time - expected).abs() < 1e-12, "{time} {expected}");
        // Priced by its stopwatch ratio only: ±25% at 1σ for that part.
        let getcpu = costs.uncertainty_of(&basis(&[TimeCall::Getcpu], false));
        let expected = 1.96 * (0.01f64 + 0.0025 + 0.0625).sqrt();
        assert!((getcpu - expected).abs() < 1e-12);

        // A call-site spread measured here replaces the assumed one when wider.
        let mut costs = costs;
        costs.call_site_spread.insert(TimeCall::Time, 0.3);
        let time = costs.uncertainty_of(&basis(&[TimeCall::Time], true));
        let expected = 1.96 * (0.01f64 + 0.0025 + 0.04 + 0.09).sqrt();
        assert!((time - expected).abs() < 1e-12, "{time} {expected}");
    }

    #[test]
    fn coarse_reads_carry_their_run_to_run_spread() {
        let costs = VdsoCosts {
            calibration_samples: 400,
            coarse: Some(CoarseCosts {
                marked_ns: 1.2,
                shared_ns: 1.1,
                samples: 64,
                fine_split: None,
                fallback_shared_ns: None,
            }),
            ..VdsoCosts::default()
        };
        let coarse = costs.uncertainty_of(&EstimateBasis {
            samples: 100,
            coarse: true,
            short: true,
            ..EstimateBasis::default()
        });
        // 1.96 * sqrt(1/100 + 1/400 + 1/64 + 0.15² + 0.35²): the short-call
        // (call-site) and the run-to-run terms both.
        let expected = 1.96 * (0.01f64 + 0.0025 + 1.0 / 64.0 + 0.0225 + 0.1225).sqrt();
        assert!((coarse - expected).abs() < 1e-12, "{coarse} {expected}");
        // Priced by the whole call (the shared code marked): ±15% at 1σ for
        // that part, beside the short-call term.
        let mut costs = costs;
        costs.coarse.as_mut().unwrap().fine_split = Some(FineSplit {
            own_ns: 20.0,
            shared_ns: 1.0,
            own_samples: 400,
        });
        let split = costs.uncertainty_of(&EstimateBasis {
            samples: 100,
            coarse: true,
            short: true,
            ..EstimateBasis::default()
        });
        let expected = 1.96 * (0.01f64 + 0.0025 + 1.0 / 64.0 + 0.0225 + 0.0225).sqrt();
        assert!((split - expected).abs() < 1e-12, "{split} {expected}");
    }

    #[test]
    fn two_call_sites_give_their_geometric_mean_and_spread() {
        let registers = Sampled {
            ns_per_call: 0.30,
            samples: 40,
        };
        let memory = Sampled {
            ns_per_call: 0.48,
            samples: 60,
        };
        let (cost, spread) = registers.across_call_sites(memory);
        assert!((cost.ns_per_call - 0.144f64.sqrt()).abs() < 1e-12);
        // ln(1.6) / 2 puts each site one sigma from the mean; of its square,
        // 1/96 is the loops' own Poisson error.
        let expected = ((1.6f64.ln() / 2.0).powi(2) - 1.0 / 96.0).sqrt();
        assert!((spread - expected).abs() < 1e-12, "{spread}");
        // (1/40 + 1/60) / 4 = 1/96.
        assert_eq!(cost.samples, 96);
        // Sites that agree keep the assumed spread for shapes not measured.
        let (_, spread) = registers.across_call_sites(registers);
        assert!((spread - 0.15).abs() < 1e-12);
    }

    #[test]
    fn the_interval_holds_the_calibration_error_too() {
        let mut costs = VdsoCosts {
            calibration_samples: 400,
            i386_calibration_samples: 200,
            ..VdsoCosts::default()
        };
        // 100 samples and 400 behind the cost: 1.96 * sqrt(1/100 + 1/400).
        let expected = 1.96 * (0.01f64 + 0.0025).sqrt();
        assert!((costs.uncertainty(100, false) - expected).abs() < 1e-12);
        assert!(costs.uncertainty(100, true) > expected);
        // More samples never widen it; never below the calibration's own.
        assert!(costs.uncertainty(10_000, false) < costs.uncertainty(100, false));
        assert!(costs.uncertainty(u64::MAX, false) >= 1.96 * 0.05 - 1e-9);
        costs.calibration_samples = 0;
        assert!(
            costs.uncertainty(10_000, false) > 0.45,
            "stopwatch only: ±25% at 1σ"
        );
    }

    #[test]
    fn excess_cpu_prices_only_fault_entries_over_a_vdso_answer() {
        use crate::model::reason::FallbackReason;
        let costs = PathCosts {
            calls: vec![
                PathCost {
                    call: TimeCall::ClockGettime,
                    vdso_ns: Some(900.0),
                    syscall_ns: Some(1000.0),
                    // hpet: the vDSO falls back; its coarse clock answers in 20 ns.
                    answered_ns: Some(20.0),
                },
                PathCost {
                    call: TimeCall::Time,
                    vdso_ns: Some(5.0),
                    syscall_ns: Some(150.0),
                    answered_ns: Some(5.0),
                },
            ],
        };
        let calls = [
            (
                TimeCall::ClockGettime,
                Some(FallbackReason::Clocksource),
                1_000_000,
            ),
            (TimeCall::Time, Some(FallbackReason::DirectSyscall), 2_000),
            // Never answered by the vDSO: no excess.
            (
                TimeCall::ClockGettime,
                Some(FallbackReason::UnsupportedClock),
                5_000,
            ),
            (TimeCall::Getrandom, None, 7),
        ];
        let seconds = costs.excess_cpu_seconds(calls).unwrap();
        // 1e6 x 980 ns + 2e3 x 145 ns
        assert!((seconds - 0.98029).abs() < 1e-9, "{seconds}");
        assert_eq!(costs.excess_cpu_seconds(calls[2..].to_vec()), Some(0.0));
        assert_eq!(PathCosts::default().excess_cpu_seconds(calls), None);
    }
}
