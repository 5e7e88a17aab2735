//! Coarse clocks (CLOCK_REALTIME_COARSE, CLOCK_MONOTONIC_COARSE) read the last
//! tick, no counter: a call costs a fraction of a fine read, and priced as one
//! a coarse reader's calls were undercounted several times over. They run
//! code of clock_gettime fine reads never run: a child reading a coarse clock
//! under the sampler shows where (its samples by offset, against the fine
//! calibration child's), and what a coarse call costs there and in the code
//! both share. The sampler then keys samples in that code as coarse.

use anyhow::{Result, anyhow};
use std::collections::BTreeMap;
use vdso_observer_common::{SyscallAbi, TimeCall};

use super::calibration_child::{
    COARSE_LINE, LoopPlan, forget_pid, gettime_samples, run_loop_child,
};
use crate::{host::vdso_image::VdsoImage, kernel::Observer, model::costs::CoarseCosts};

/// Fewer coarse-only samples than this say too little (±30%).
const MIN_SAMPLES: u64 = 20;
/// Code is coarse-only where coarse reads' share of samples is this many
/// times fine reads'.
const DOMINANCE: f64 = 8.0;

/// Calibrates coarse reads against the fine child's offsets (`fine`: offset,
/// samples) and hands the sampler their code; None when too few samples
/// landed in code of their own (then coarse reads stay priced as fine ones).
pub fn calibrate(
    observer: &mut Observer,
    image: &VdsoImage,
    fine: &[(u32, u32)],
    period_ns: u64,
) -> Result<Option<CoarseCosts>> {
    let (pid, out) = run_loop_child(observer, LoopPlan::Coarse)?;
    let offsets = observer.take_sample_offsets()?;
    let calls: u64 = out
        .lines()
        .find_map(|line| line.strip_prefix(COARSE_LINE)?.trim().parse().ok())
        .ok_or_else(|| anyhow!("the coarse calibration child (pid {pid}) printed no count"))?;
    let snapshot = observer.snapshot()?;
    let samples = gettime_samples(&snapshot, pid, SyscallAbi::NATIVE);
    forget_pid(observer, &snapshot, pid)?;
    let Some((costs, code)) = coarse_costs(image, fine, &offsets, calls, samples, period_ns) else {
        log::info!(
            "coarse clocks are priced as fine reads: their calibration saw too few samples in \
             code of their own ({} offsets sampled, {samples} samples, {calls} calls)",
            offsets.len()
        );
        return Ok(None);
    };
    observer.set_coarse_code(&code)?;
    log::debug!(
        "coarse clock_gettime: {:.1} ns per call sampled in its own code ({} bytes, {} samples), \
         {:.1} in code fine reads share",
        costs.marked_ns,
        code.len(),
        costs.samples,
        costs.shared_ns
    );
    Ok(Some(costs))
}

/// The costs, and the offsets of clock_gettime only coarse reads ran: from
/// the coarse child's offsets and samples over its `calls`.
fn coarse_costs(
    image: &VdsoImage,
    fine: &[(u32, u32)],
    coarse: &[(u32, u32)],
    calls: u64,
    samples: u64,
    period_ns: u64,
) -> Option<(CoarseCosts, Vec<u32>)> {
    let table = image.table();
    // Where coarse reads spend many times the share of their samples that
    // fine reads do: a sample of a fine read now and then lands in coarse
    // code too (sampling skid), so "never" would leave code out at random.
    let share = |of: &[(u32, u32)]| -> (BTreeMap<u32, f64>, f64) {
        let total = of.iter().map(|(_, n)| f64::from(*n)).sum::<f64>().max(1.0);
        (
            of.iter()
                .map(|(o, n)| (*o, f64::from(*n) / total))
                .collect(),
            total,
        )
    };
    let (fine, _) = share(fine);
    let (coarse_share, _) = share(coarse);
    let own: Vec<(u32, u32)> = coarse
        .iter()
        .copied()
        .filter(|(offset, count)| {
            let fine_share = fine.get(offset).copied().unwrap_or(0.0);
            *count >= 2
                && coarse_share[offset] >= DOMINANCE * fine_share
                && table.call_at(u64::from(*offset)) == TimeCall::ClockGettime as u8
        })
        .collect();
    let marked: u64 = own.iter().map(|(_, count)| u64::from(*count)).sum();
    if marked < MIN_SAMPLES || calls == 0 {
        return None;
    }
    let ns = |samples: u64| samples as f64 * period_ns as f64 / calls as f64;
    Some((
        CoarseCosts {
            marked_ns: ns(marked),
            shared_ns: ns(samples.saturating_sub(marked)),
            samples: marked,
        },
        own.into_iter().map(|(offset, _)| offset).collect(),
    ))
}
