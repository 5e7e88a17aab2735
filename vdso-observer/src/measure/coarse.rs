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
/// Code is coarse-only where a coarse read spends this many times the time a
/// fine read spends there, per call.
const DOMINANCE: f64 = 8.0;
/// An offset is judged only where, were the code shared, the fine child would
/// have had this many samples there: fewer cannot tell shared from not.
const MIN_EXPECTED_FINE: f64 = 3.0;

/// The fine calibration child's samples by offset, and the fine reads it made.
pub struct FineOffsets<'a> {
    pub samples: &'a [(u32, u32)],
    pub calls: u64,
}

/// Calibrates coarse reads against the fine child's offsets and hands the
/// sampler their code; None when too few samples landed in code of their own
/// (then coarse reads stay priced as fine ones).
pub fn calibrate(
    observer: &mut Observer,
    image: &VdsoImage,
    fine: &FineOffsets,
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
///
/// Per call, not per share of samples: the code both reads run (the entry,
/// the return) takes each about as long, but a coarse read is so short that
/// it is a large share of its samples and a small share of a fine read's.
/// Judged by shares, the shared entry and return were marked coarse (seen on
/// kvm-clock), and every fine sample there was priced as a coarse call, ~9
/// times the calls a fine sample stands for: fine loops read +15% to +25%.
fn coarse_costs(
    image: &VdsoImage,
    fine: &FineOffsets,
    coarse: &[(u32, u32)],
    calls: u64,
    samples: u64,
    period_ns: u64,
) -> Option<(CoarseCosts, Vec<u32>)> {
    if calls == 0 || fine.calls == 0 {
        return None;
    }
    let table = image.table();
    let fine_samples: BTreeMap<u32, u32> = fine.samples.iter().copied().collect();
    // Fine calls per coarse call: scales a coarse sample count to the fine
    // samples the same time per call would have given.
    let scale = fine.calls as f64 / calls as f64;
    let own: Vec<(u32, u32)> = coarse
        .iter()
        .copied()
        .filter(|(offset, count)| {
            let expected_if_shared = f64::from(*count) * scale;
            let seen = f64::from(fine_samples.get(offset).copied().unwrap_or(0));
            expected_if_shared >= MIN_EXPECTED_FINE
                && seen * DOMINANCE <= expected_if_shared
                && table.call_at(u64::from(*offset)) == TimeCall::ClockGettime as u8
        })
        .collect();
    let marked: u64 = own.iter().map(|(_, count)| u64::from(*count)).sum();
    if marked < MIN_SAMPLES {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::vdso_image::ExportedFunction;

    /// An image whose clock_gettime spans 0x100..0x200.
    fn clock_gettime_at_0x100() -> VdsoImage {
        VdsoImage {
            functions: vec![ExportedFunction {
                call: TimeCall::ClockGettime,
                offset: 0x100,
                size: 0x100,
            }],
            ..VdsoImage::default()
        }
    }

    /// Figures shaped like kvm-clock's here: 36 M fine reads (400 samples),
    /// 200 M coarse reads; both run the entry (0x100) and the return (0x1c0).
    #[test]
    fn shared_entry_and_return_stay_fine_code() {
        let image = clock_gettime_at_0x100();
        let fine = FineOffsets {
            samples: &[(0x100, 5), (0x140, 389), (0x1c0, 6)],
            calls: 36_000_000,
        };
        // The coarse child: entry and return, its own code, a stray fine read
        // of its clock, and an offset too thin to judge.
        let coarse = [
            (0x100, 30),
            (0x140, 2),
            (0x1a0, 60),
            (0x1a4, 40),
            (0x1a8, 1),
            (0x1c0, 35),
        ];
        let (costs, code) =
            coarse_costs(&image, &fine, &coarse, 200_000_000, 168, 2_000_000).unwrap();
        assert_eq!(code, [0x1a0, 0x1a4]);
        assert_eq!(costs.samples, 100);
        // 100 samples of 2 ms over 200 M calls; the other 68 are shared.
        assert!((costs.marked_ns - 1.0).abs() < 1e-9, "{costs:?}");
        assert!((costs.shared_ns - 0.68).abs() < 1e-9, "{costs:?}");
    }

    #[test]
    fn too_few_coarse_only_samples_price_nothing() {
        let image = clock_gettime_at_0x100();
        let fine = FineOffsets {
            samples: &[(0x140, 400)],
            calls: 36_000_000,
        };
        let coarse = [(0x1a0, 19)];
        assert!(coarse_costs(&image, &fine, &coarse, 200_000_000, 19, 2_000_000).is_none());
        assert!(
            coarse_costs(
                &image,
                &FineOffsets {
                    samples: &[],
                    calls: 0
                },
                &coarse,
                1,
                19,
                1
            )
            .is_none()
        );
    }
}
