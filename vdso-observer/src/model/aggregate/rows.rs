//! One process's report from its window's deltas: the kernel entries by
//! call, clock, origin and reason, then the vDSO side (exact hits and
//! sampled estimates) and the share.

use std::collections::BTreeSet;

use vdso_observer_common::{
    CLOCK_COARSE_SAMPLED, CLOCK_SHARED_SAMPLED, CallKey, NO_CLOCK, Origin, ProcessKey, Provenance,
    SyscallAbi, TimeCall, VdsoKey,
};

use super::{GettimeSamples, Identity, VdsoEstimator, is_gettime_sample};
use crate::model::{
    clocks::clock_name,
    container::Container,
    costs::{EstimateBasis, SHORT_CALL_NS},
    reason::{self, FallbackReason},
    report::*,
};

pub(super) fn process_report(
    process: ProcessKey,
    identity: Identity,
    user: Option<String>,
    exited: bool,
    calls: &[(CallKey, u64)],
    seconds: f64,
) -> ProcessReport {
    let mut by_origin = OriginCounts::default();
    let mut clocks = BTreeSet::new();
    let mut reasons = BTreeSet::new();
    let mut rows = Vec::new();
    for &(key, count) in calls {
        let (Some(call), Some(origin), Some(abi)) = (
            TimeCall::from_repr(key.call),
            Origin::from_repr(key.origin),
            SyscallAbi::from_repr(key.abi),
        ) else {
            log::warn!("pid {}: unknown counter key {key:?} ignored", process.tgid);
            continue;
        };
        by_origin.add(origin, count);
        let clock = (key.clock_id != NO_CLOCK).then(|| clock_name(key.clock_id));
        if let Some(name) = &clock {
            clocks.insert((key.clock_id, name.clone()));
        }
        let reason = reason::reason(call, key.clock_id, origin, abi);
        reasons.extend(reason);
        rows.push((
            (call, key.clock_id, origin, abi),
            CallCount {
                call,
                abi,
                clock,
                clock_id: (key.clock_id != NO_CLOCK).then_some(key.clock_id),
                origin,
                reason,
                count,
                per_sec: count as f64 / seconds,
            },
        ));
    }
    rows.sort_by_key(|(order, _)| *order);
    let kernel_entries =
        by_origin.vdso_fallback + by_origin.direct + by_origin.no_vdso + by_origin.legacy_vsyscall;
    let getrandom_entries = rows
        .iter()
        .filter(|((call, ..), _)| *call == TimeCall::Getrandom)
        .map(|(_, row)| row.count)
        .sum();
    let reasons: Vec<FallbackReason> = reasons.into_iter().collect();
    ProcessReport {
        pid: process.tgid,
        user,
        uid: identity.uid,
        container: identity
            .cgroup
            .as_deref()
            .and_then(Container::from_cgroup_path),
        cgroup: identity.cgroup,
        comm: identity.comm,
        exec_id: process.exec_id,
        start_boottime_ns: process.start_boottime_ns,
        exited,
        lost_calls: 0,
        kernel_entries,
        kernel_entries_per_sec: kernel_entries as f64 / seconds,
        getrandom_entries,
        only_getrandom: kernel_entries > 0 && getrandom_entries == kernel_entries,
        vdso_calls_per_sec: None,
        vdso_estimated: false,
        kernel_share: None,
        excess_cpu_seconds: None,
        vdso_calls: Vec::new(),
        vdso_uncertainty: None,
        exact: None,
        merged_processes: None,
        by_origin,
        calls: rows.into_iter().map(|(_, row)| row).collect(),
        clocks: clocks.into_iter().map(|(_, name)| name).collect(),
        flags: reasons.iter().copied().filter(|r| r.is_fault()).collect(),
        reasons,
    }
}

/// Fills the vDSO side of a process report: exact hits where a uprobe or
/// breakpoint counted a call, estimates from samples for the rest (other
/// calls, threads not armed, the time before attaching or after detaching).
pub(super) fn add_vdso_calls(
    report: &mut ProcessReport,
    deltas: &[(VdsoKey, u64)],
    estimator: Option<&VdsoEstimator>,
    seconds: f64,
) {
    // Kernel entries the vDSO itself made (or a vDSO-less libc), per call and
    // clock: an exact hit that ended in the kernel was not answered in user space.
    let entered = |call: VdsoFunction, clock: &Option<String>| -> u64 {
        report
            .calls
            .iter()
            .filter(|c| {
                VdsoFunction::Call(c.call) == call
                    && matches!(c.origin, Origin::VdsoFallback | Origin::NoVdso)
                    && (clock.is_none() || &c.clock == clock)
            })
            .map(|c| c.count)
            .sum()
    };
    // The 64-bit clock_gettime's samples split between coarse and fine reads
    // (see `gettime_calls`): one row each, the shared code's samples shown
    // with the fine reads'.
    let gettime = GettimeSamples {
        kernel_reads: report
            .calls
            .iter()
            .filter(|c| {
                c.call == TimeCall::ClockGettime
                    && c.abi == SyscallAbi::NATIVE
                    && c.origin == Origin::VdsoFallback
            })
            .map(|c| c.count)
            .sum(),
        ..GettimeSamples::of(deltas.iter().map(|(key, count)| (key, *count)))
    };
    let gettime_calls = estimator.map(|e| e.gettime_calls(gettime));
    let deltas = shared_samples_merged(deltas);
    let mut rows = Vec::new();
    let mut samples_used = 0u64;
    let mut i386_sampled = false;
    let mut short_sampled = gettime.coarse > 0;
    let mut other_calls = BTreeSet::new();
    for (key, count) in deltas {
        let Some(provenance) = Provenance::from_repr(key.provenance) else {
            continue;
        };
        let call = TimeCall::from_repr(key.call);
        let function = call.map_or(VdsoFunction::Other, VdsoFunction::Call);
        let clock = (key.clock_id != NO_CLOCK).then(|| clock_name(key.clock_id));
        if provenance == Provenance::Sampled {
            // The sampler leaves out what exact counting covered (thread,
            // call, image): samples and exact hits of one call add up.
            let Some(estimator) = estimator else { continue };
            let abi = SyscallAbi::from_repr(key.abi).unwrap_or(SyscallAbi::NATIVE);
            let calls = match gettime_calls {
                Some(split) if is_gettime_sample(&key) => {
                    if key.clock_id == CLOCK_COARSE_SAMPLED {
                        split.coarse
                    } else {
                        split.fine
                    }
                }
                _ => estimator.calls(abi, call, count as f64),
            };
            samples_used += count;
            i386_sampled |= abi == SyscallAbi::I386;
            short_sampled |= estimator.costs.ns_in(abi, call) < SHORT_CALL_NS;
            if let Some(call) = call.filter(|c| *c != TimeCall::ClockGettime) {
                other_calls.insert(call);
            }
            rows.push(VdsoCallCount {
                call: function,
                clock,
                provenance,
                count: None,
                samples: Some(count),
                calls,
                per_sec: calls / seconds,
            });
        } else {
            let answered = count.saturating_sub(entered(function, &clock));
            rows.push(VdsoCallCount {
                call: function,
                clock,
                provenance,
                count: Some(answered),
                samples: None,
                calls: answered as f64,
                per_sec: answered as f64 / seconds,
            });
        }
    }
    if rows.is_empty() {
        if estimator.is_some() {
            // Sampling is on and saw nothing: an estimate of zero.
            report.vdso_calls_per_sec = Some(0.0);
            report.vdso_estimated = true;
            report.kernel_share = (report.time_kernel_entries() > 0).then_some(1.0);
        }
        return;
    }
    report.only_getrandom = false;
    rows.sort_by(|a, b| b.calls.total_cmp(&a.calls).then(a.call.cmp(&b.call)));
    let total: f64 = rows.iter().map(|r| r.calls).sum();
    report.vdso_calls_per_sec = Some(total / seconds);
    report.vdso_estimated = samples_used > 0;
    report.vdso_uncertainty = estimator.filter(|_| samples_used > 0).map(|e| {
        e.costs.uncertainty_of(&EstimateBasis {
            samples: samples_used,
            i386: i386_sampled,
            coarse: gettime.coarse > 0,
            short: short_sampled,
            other_calls,
        })
    });
    let kernel = report.time_kernel_entries() as f64;
    report.kernel_share = (kernel + total > 0.0).then(|| kernel / (kernel + total));
    report.vdso_calls = rows;
}

/// `deltas` with the samples in shared code of clock_gettime added to the
/// process's other samples there (one fine-read row, as without the mark).
fn shared_samples_merged(deltas: &[(VdsoKey, u64)]) -> Vec<(VdsoKey, u64)> {
    let mut merged: Vec<(VdsoKey, u64)> = Vec::with_capacity(deltas.len());
    for &(mut key, count) in deltas {
        if is_gettime_sample(&key) && key.clock_id == CLOCK_SHARED_SAMPLED {
            key.clock_id = NO_CLOCK;
        }
        match merged.iter_mut().find(|(other, _)| *other == key) {
            Some((_, total)) => *total += count,
            None => merged.push((key, count)),
        }
    }
    merged
}
