//! Coarse clocks (CLOCK_REALTIME_COARSE, CLOCK_MONOTONIC_COARSE) read the last
//! tick, no counter: a call costs a fraction of a fine read, and priced as one
//! a coarse reader's calls were undercounted several times over. They run
//! code of clock_gettime fine reads never run: a child reading a coarse clock
//! under the sampler shows where (its samples by offset, against the fine
//! calibration child's), and what a coarse call costs there and in the code
//! both share. The sampler then keys samples in that code as coarse, and in
//! the code both run as shared, so that a process's samples split between
//! its coarse and fine reads (see `VdsoEstimator::gettime_calls`).

use anyhow::{Result, anyhow};
use std::collections::BTreeMap;
use vdso_observer_common::{SyscallAbi, TimeCall};

use super::{
    calibration_child::{
        COARSE_LINE, ChildRun, ClockFn, LoopPlan, Repeats, forget_pid, gettime_samples,
    },
    code_reach,
};
use crate::{
    host::vdso_image::VdsoImage,
    kernel::Observer,
    model::costs::{CoarseCosts, FineSplit},
};

/// Fewer coarse-only samples than this say too little (±30%).
const MIN_SAMPLES: u64 = 20;
/// The share of its CPU time a coarse child spends in clock_gettime, as
/// sampled, above which it runs once more and the lower is kept: 42-55% in
/// ten quiet starts here. One CI run had 74% (185 samples in 502 ms of CPU,
/// most on two instructions of the read's loop other runs hardly hit, 0xcb9
/// and 0xcc9): it priced a coarse read 60% dear, and a mixed reader's coarse
/// reads read -61%. A machine whose runs all lie above keeps its own.
const MAX_GETTIME_SHARE: f64 = 0.65;
/// Fewer samples of the fine child in code of its own than this cannot price
/// a fine read from that code alone (±30%).
const MIN_FINE_OWN_SAMPLES: u64 = 40;
/// What a quiet run gets at the least (27-55 in 50 runs here): a child the
/// machine starved runs again until its runs have this many.
const QUIET_RUN_SAMPLES: u64 = 30;
/// Code is coarse-only where a coarse read spends this many times the time a
/// fine read spends there, per call. In code both run the fine child's
/// samples can be thin (a fine read's return sampled at 1 in 5 of a coarse
/// read's, per call, here), so the bar is high.
const DOMINANCE: f64 = 20.0;
/// A stretch is judged only where, were the code shared, the fine child would
/// have had this many samples there: fewer cannot tell shared from not.
const MIN_EXPECTED_FINE: f64 = 3.0;
/// Sampled offsets this close (bytes) are one stretch of code. Code both
/// reads run is sampled on other instructions by each (where the pipeline
/// retires: the fine child at 0xb11 and 0xb2f of the entry, the coarse one
/// and a C loop at 0xb16 and 0xb38), so it is judged by stretch, not by
/// instruction. The entry's samples lie up to 23 bytes apart.
const STRETCH_GAP: u32 = 32;

/// The fine calibration child's samples by offset, and the fine reads it made.
pub struct FineOffsets<'a> {
    pub samples: &'a [(u32, u32)],
    pub calls: u64,
}

/// The offsets of clock_gettime the sampler is to mark: those only coarse
/// reads run, and those coarse and fine reads both run (empty when a fine
/// read's cost outside them could not be told).
#[derive(Debug, PartialEq)]
struct GettimeCode {
    coarse: Vec<u32>,
    shared: Vec<u32>,
}

/// A coarse child under the sampler, or several added up: its samples by
/// offset, its samples in clock_gettime and the coarse reads it made.
#[derive(Default)]
struct CoarseRuns {
    offsets: BTreeMap<u32, u32>,
    samples: u64,
    calls: u64,
    /// The CPU time the children got.
    cpu: std::time::Duration,
}

impl CoarseRuns {
    /// Adds what the programs counted of one child, then forgets it.
    fn add(&mut self, observer: &mut Observer, run: &ChildRun) -> Result<()> {
        let pid = run.pid;
        let calls: u64 = run
            .out
            .lines()
            .find_map(|line| line.strip_prefix(COARSE_LINE)?.trim().parse().ok())
            .ok_or_else(|| anyhow!("the coarse calibration child (pid {pid}) printed no count"))?;
        for (offset, count) in observer.take_sample_offsets()? {
            *self.offsets.entry(offset).or_default() += count;
        }
        let snapshot = observer.snapshot()?;
        self.samples += gettime_samples(&snapshot, pid, SyscallAbi::NATIVE);
        self.calls += calls;
        self.cpu += run.cpu;
        forget_pid(observer, &snapshot, pid)
    }

    /// The share of the children's CPU time their samples put in
    /// clock_gettime (see [`MAX_GETTIME_SHARE`]).
    fn gettime_share(&self, period_ns: u64) -> f64 {
        let cpu_ns = self.cpu.as_nanos() as f64;
        if cpu_ns > 0.0 {
            self.samples as f64 * period_ns as f64 / cpu_ns
        } else {
            0.0
        }
    }

    fn judge(
        &self,
        image: &VdsoImage,
        fine: &FineOffsets,
        period_ns: u64,
    ) -> Option<(CoarseCosts, GettimeCode)> {
        let offsets: Vec<(u32, u32)> = self.offsets.iter().map(|(o, c)| (*o, *c)).collect();
        coarse_costs(image, fine, &offsets, self.calls, self.samples, period_ns)
    }
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
    let mut measured = measure_coarse_reads(observer, image, fine, period_ns)?;
    let share = measured.runs.gettime_share(period_ns);
    if share > MAX_GETTIME_SHARE {
        let again = measure_coarse_reads(observer, image, fine, period_ns)?;
        let share_again = again.runs.gettime_share(period_ns);
        log::debug!(
            "coarse clocks: the child spent {:.0}% of its CPU in clock_gettime, as sampled \
             (42-55% when quiet): ran it once more, {:.0}%; kept the lower",
            share * 100.0,
            share_again * 100.0
        );
        if share_again < share {
            measured = again;
        }
    }
    let CoarseMeasure {
        runs,
        judged,
        repeats,
    } = measured;
    let Some((costs, code)) = judged else {
        if repeats.starved() {
            // A coarse reader is then undercounted several times over.
            log::warn!(
                "coarse clocks are priced as fine reads, so their calls read several times too \
                 few: the calibration child got {:.0}% of a CPU in {} runs ({} samples); give \
                 the observer a CPU at start (no CPU quota under one CPU) or restart it when the \
                 machine is quieter",
                repeats.cpu_share() * 100.0,
                repeats.runs,
                runs.samples
            );
            return Ok(None);
        }
        log::info!(
            "coarse clocks are priced as fine reads: their calibration saw too few samples in \
             code of their own ({} offsets sampled, {} samples, {} calls)",
            runs.offsets.len(),
            runs.samples,
            runs.calls
        );
        return Ok(None);
    };
    observer.set_gettime_code(&code.coarse, &code.shared)?;
    log::debug!(
        "coarse clock_gettime: {:.1} ns per call sampled in its own code ({} bytes, {} samples), \
         {:.1} in code fine reads share ({} bytes marked); a fine read {:?}",
        costs.marked_ns,
        code.coarse.len(),
        costs.samples,
        costs.shared_ns,
        code.shared.len(),
        costs.fine_split
    );
    Ok(Some(costs))
}

/// The coarse child's runs, what they were judged to say, and how often it ran.
struct CoarseMeasure {
    runs: CoarseRuns,
    judged: Option<(CoarseCosts, GettimeCode)>,
    repeats: Repeats,
}

/// Runs the coarse child under the sampler. A child the machine starved of
/// CPU (27-55 samples in its own code on a quiet machine here, a third of
/// that with a tenth of a CPU) runs again, added up, until its own code has
/// a quiet run's samples: at 20-25 the price alone is within 20%.
fn measure_coarse_reads(
    observer: &mut Observer,
    image: &VdsoImage,
    fine: &FineOffsets,
    period_ns: u64,
) -> Result<CoarseMeasure> {
    let mut runs = CoarseRuns::default();
    let mut judged = None;
    let repeats = Repeats::run_until(observer, LoopPlan::Coarse, |observer, run| {
        runs.add(observer, run)?;
        judged = runs.judge(image, fine, period_ns);
        Ok(judged
            .as_ref()
            .is_some_and(|(costs, _)| costs.samples >= QUIET_RUN_SAMPLES))
    })?;
    Ok(CoarseMeasure {
        runs,
        judged,
        repeats,
    })
}

/// Calibrates coarse reads where fine ones enter the kernel (a clocksource
/// the vDSO cannot read): the fine reads' few samples in user space cannot
/// tell the code a coarse read runs alone, so each offset either child was
/// sampled on in clock_gettime is asked of a hardware breakpoint: does a
/// fine read run it, does a coarse one? The sampler marks the code only
/// coarse reads run and the code both run; a process's coarse reads are
/// priced by their whole call, less what its kernel reads put in the shared
/// code (see `VdsoEstimator::gettime_calls`).
pub fn calibrate_beside_fallbacks(
    observer: &mut Observer,
    image: &VdsoImage,
    fine: &FineOffsets,
    period_ns: u64,
) -> Result<Option<CoarseCosts>> {
    let mut runs = CoarseRuns::default();
    let mut kinds: BTreeMap<u32, Option<CodeKind>> = BTreeMap::new();
    let mut judged = None;
    let table = image.table();
    let in_gettime =
        |offset: &u32| table.call_at(u64::from(*offset)) == TimeCall::ClockGettime as u8;
    let fine_offsets: Vec<u32> = fine
        .samples
        .iter()
        .map(|(o, _)| *o)
        .filter(in_gettime)
        .collect();
    // Under TCG a coarse read's own code got 15-40 samples a run: runs add
    // up until it has a quiet run's, within the coarse plan's time limit.
    let repeats = Repeats::run_until_enough(observer, LoopPlan::Coarse, |observer, run| {
        runs.add(observer, run)?;
        for &offset in runs
            .offsets
            .keys()
            .filter(|o| in_gettime(o))
            .chain(&fine_offsets)
        {
            if let std::collections::btree_map::Entry::Vacant(unasked) = kinds.entry(offset) {
                unasked.insert(kind_by_breakpoint(image, offset)?);
            }
        }
        let labelled: BTreeMap<u32, CodeKind> = kinds
            .iter()
            .filter_map(|(o, k)| Some((*o, (*k)?)))
            .collect();
        let offsets: Vec<(u32, u32)> = runs.offsets.iter().map(|(o, c)| (*o, *c)).collect();
        judged = costs_by_reach(
            image,
            &offsets,
            &labelled,
            fine,
            (runs.calls, runs.samples),
            period_ns,
        );
        Ok(judged
            .as_ref()
            .is_some_and(|(costs, _)| costs.samples >= QUIET_RUN_SAMPLES))
    })?;
    let Some((costs, code)) = judged else {
        log::info!(
            "coarse clocks are priced as fine reads: their calibration saw too few samples in \
             code of their own ({} samples, {} calls in {} runs; breakpoints found {} of {} \
             offsets coarse-only)",
            runs.samples,
            runs.calls,
            repeats.runs,
            kinds
                .values()
                .filter(|k| **k == Some(CodeKind::Coarse))
                .count(),
            kinds.len()
        );
        return Ok(None);
    };
    observer.set_gettime_code(&code.coarse, &code.shared)?;
    log::debug!(
        "coarse clock_gettime beside fine reads in the kernel: {:.1} ns per call sampled in its \
         own code ({} bytes, {} samples), {:.1} elsewhere ({} bytes shared; a fine read's user \
         space part {:.2} there); offsets by breakpoint {kinds:x?}",
        costs.marked_ns,
        code.coarse.len(),
        costs.samples,
        costs.shared_ns,
        code.shared.len(),
        costs.fallback_shared_ns.unwrap_or(0.0),
    );
    Ok(Some(costs))
}

/// Fine and coarse reads made under each breakpoint: enough that code a read
/// runs is hit, few enough that reads entering the kernel take milliseconds.
const REACH_CALLS: u32 = 32;

/// Whether fine reads, coarse reads or both run the instruction at `offset`
/// of this process's vDSO (None: neither did).
fn kind_by_breakpoint(image: &VdsoImage, offset: u32) -> Result<Option<CodeKind>> {
    let entry = image
        .own_address(TimeCall::ClockGettime)
        .ok_or_else(|| anyhow!("the vDSO exports no clock_gettime"))?;
    // SAFETY: the vDSO's clock_gettime, called with its C signature.
    let gettime: ClockFn = unsafe { std::mem::transmute(entry as usize) };
    let reads = |clock: libc::clockid_t| {
        move || {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            for _ in 0..REACH_CALLS {
                // SAFETY: as above.
                std::hint::black_box(unsafe { gettime(clock, &mut ts) });
            }
        }
    };
    let address = image.own_base + u64::from(offset);
    let fine = code_reach::executions(address, reads(libc::CLOCK_MONOTONIC))?;
    let coarse = code_reach::executions(address, reads(libc::CLOCK_MONOTONIC_COARSE))?;
    Ok(match (fine > 0, coarse > 0) {
        (true, true) => Some(CodeKind::Shared),
        (true, false) => Some(CodeKind::Fine),
        (false, true) => Some(CodeKind::Coarse),
        (false, false) => None,
    })
}

/// The costs, and the code to mark, of a coarse child's offsets and
/// (calls, samples), where each offset's kind is known (`kinds`, from
/// breakpoints): its own code is the offsets only coarse reads run, the code
/// both run is shared, and the fine child's samples there (the user-space
/// part of reads that enter the kernel) give a fine read's share of it.
/// None with fewer than [`MIN_SAMPLES`] in its own code.
fn costs_by_reach(
    image: &VdsoImage,
    coarse: &[(u32, u32)],
    kinds: &BTreeMap<u32, CodeKind>,
    fine: &FineOffsets,
    (calls, samples): (u64, u64),
    period_ns: u64,
) -> Option<(CoarseCosts, GettimeCode)> {
    if calls == 0 {
        return None;
    }
    let fine_shared: u64 = fine
        .samples
        .iter()
        .filter(|(offset, _)| kinds.get(offset) == Some(&CodeKind::Shared))
        .map(|(_, count)| u64::from(*count))
        .sum();
    let fallback_shared_ns = fine_shared as f64 * period_ns as f64 / fine.calls.max(1) as f64;
    let marked: u64 = coarse
        .iter()
        .filter(|(offset, _)| kinds.get(offset) == Some(&CodeKind::Coarse))
        .map(|(_, count)| u64::from(*count))
        .sum();
    if marked < MIN_SAMPLES {
        return None;
    }
    let ns = |samples: u64| samples as f64 * period_ns as f64 / calls as f64;
    Some((
        CoarseCosts {
            marked_ns: ns(marked),
            shared_ns: ns(samples.saturating_sub(marked)),
            samples: marked,
            fine_split: None,
            fallback_shared_ns: Some(fallback_shared_ns),
        },
        gettime_code(image, kinds, true),
    ))
}

/// The costs, and the code of clock_gettime to mark: from the coarse child's
/// offsets and samples over its `calls`, judged by stretch of code (see
/// [`STRETCH_GAP`]); one coarse-only stretch at most, and the stretches both
/// reads run.
///
/// Per call, not per share of samples: the code both reads run (the entry,
/// the return) takes each about as long, but a coarse read is so short that
/// it is a large share of its samples and a small share of a fine read's.
/// Judged by shares, the shared entry and return were marked coarse (seen on
/// kvm-clock), and every fine sample there was priced as a coarse call, ~9
/// times the calls a fine sample stands for: fine loops read +15% to +25%.
/// Judged by instruction, an entry or return instruction the fine child
/// happened not to sample was marked in 18 of 25 calibrations here, and 3 of
/// 40 runs of a C loop of fine reads had a sample or two there: +15% to +31%.
fn coarse_costs(
    image: &VdsoImage,
    fine: &FineOffsets,
    coarse: &[(u32, u32)],
    calls: u64,
    samples: u64,
    period_ns: u64,
) -> Option<(CoarseCosts, GettimeCode)> {
    if calls == 0 || fine.calls == 0 {
        return None;
    }
    let table = image.table();
    let fine_samples: BTreeMap<u32, u32> = fine.samples.iter().copied().collect();
    // Fine calls per coarse call: scales a coarse sample count to the fine
    // samples the same time per call would have given.
    let scale = fine.calls as f64 / calls as f64;
    let mut sampled: Vec<(u32, u32)> = coarse
        .iter()
        .copied()
        .filter(|(offset, _)| table.call_at(u64::from(*offset)) == TimeCall::ClockGettime as u8)
        .collect();
    sampled.sort_unstable();
    // The coarse child's own fine reads (its deadline checks) leave a few
    // samples in the fine reads' code, and one there can join the entry's
    // stretch to that code's (0xb4c to 0xb66: the entry was then judged fine
    // code, and a mixed reader's coarse samples there were priced as fine
    // reads, +22%). An instruction where the fine child spent far longer per
    // call is fine code: it takes no part in the stretches.
    sampled.retain(|&(offset, count)| {
        let fine_there = fine_samples.get(&offset).copied().unwrap_or(0);
        f64::from(fine_there) < DOMINANCE * f64::from(count) * scale
    });
    let total = |stretch: &[(u32, u32)]| {
        stretch
            .iter()
            .map(|(_, count)| u64::from(*count))
            .sum::<u64>()
    };
    let seen_fine = |stretch: &[(u32, u32)]| -> u32 {
        let (first, last) = (stretch[0].0, stretch[stretch.len() - 1].0);
        fine_samples
            .range(first..=last)
            .map(|(_, count)| count)
            .sum()
    };
    let stretches: Vec<&[(u32, u32)]> = sampled.chunk_by(|a, b| b.0 - a.0 <= STRETCH_GAP).collect();
    // A coarse read's own code is one loop (read the sequence, copy the
    // tick's time, check the sequence): the stretch with the most coarse
    // samples. A second candidate is shared code the fine child's samples
    // happened to miss, and marking it prices a C loop's fine samples there
    // as coarse calls (each stands for 10-25 times the calls of a fine one).
    let own: &[(u32, u32)] = stretches
        .iter()
        .copied()
        .filter(|stretch| {
            let expected_if_shared = total(stretch) as f64 * scale;
            expected_if_shared >= MIN_EXPECTED_FINE
                && f64::from(seen_fine(stretch)) * DOMINANCE <= expected_if_shared
        })
        .max_by_key(|stretch| total(stretch))
        .unwrap_or_default();
    // Where the samples fell moves from run to run (see `gettime_calls`): the
    // debug log keeps both children's, from the first to the last coarse one.
    let (first, last) = (
        sampled.first().map_or(0, |s| s.0),
        sampled.last().map_or(0, |s| s.0),
    );
    log::debug!(
        "coarse clocks: the coarse child's samples in clock_gettime by offset {sampled:x?}, the \
         fine child's {:x?}",
        fine_samples.range(first..=last).collect::<Vec<_>>()
    );
    let marked = total(own);
    if marked < MIN_SAMPLES {
        return None;
    }
    let own_code = own[0].0..=own[own.len() - 1].0;
    // The code both run (the entry, the return): the coarse child's other
    // stretches, but those where a fine read spends far longer per call than
    // a coarse one (a stray sample of the coarse child in the fine reads'
    // own code, which would price the fine samples there as coarse calls).
    let shared: Vec<std::ops::RangeInclusive<u32>> = stretches
        .iter()
        .filter(|stretch| stretch[0].0 != own[0].0)
        .filter(|stretch| f64::from(seen_fine(stretch)) < DOMINANCE * total(stretch) as f64 * scale)
        .map(|stretch| stretch[0].0..=stretch[stretch.len() - 1].0)
        .collect();
    let kind_at = |offset: u32| {
        if own_code.contains(&offset) {
            CodeKind::Coarse
        } else if shared.iter().any(|range| range.contains(&offset)) {
            CodeKind::Shared
        } else {
            CodeKind::Fine
        }
    };
    let ns = |samples: u64, calls: u64| samples as f64 * period_ns as f64 / calls as f64;
    // The fine child's samples in clock_gettime, in the shared code and in
    // the rest (code of its own, as the coarse reads' is to them).
    let (mut fine_shared, mut fine_own) = (0u64, 0u64);
    let mut labelled: BTreeMap<u32, CodeKind> = BTreeMap::new();
    for (&offset, &count) in &fine_samples {
        if table.call_at(u64::from(offset)) != TimeCall::ClockGettime as u8 {
            continue;
        }
        let kind = kind_at(offset);
        labelled.insert(offset, kind);
        match kind {
            CodeKind::Coarse => {}
            CodeKind::Shared => fine_shared += u64::from(count),
            CodeKind::Fine => fine_own += u64::from(count),
        }
    }
    for &(offset, _) in &sampled {
        labelled.insert(offset, kind_at(offset));
    }
    let fine_split = (!shared.is_empty() && fine_own >= MIN_FINE_OWN_SAMPLES).then(|| FineSplit {
        own_ns: ns(fine_own, fine.calls),
        shared_ns: ns(fine_shared, fine.calls),
        own_samples: fine_own,
    });
    Some((
        CoarseCosts {
            marked_ns: ns(marked, calls),
            shared_ns: ns(samples.saturating_sub(marked), calls),
            samples: marked,
            fine_split,
            fallback_shared_ns: None,
        },
        gettime_code(image, &labelled, fine_split.is_some()),
    ))
}

/// What code of clock_gettime a sampled offset lies in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CodeKind {
    Coarse,
    Shared,
    Fine,
}

/// Each byte of clock_gettime takes the kind of the nearest offset either
/// child was sampled on, within [`STRETCH_GAP`] / 2 bytes: a program is
/// sampled on instructions the children were not (C loops reading coarse
/// and fine clocks in turn at 0xcc5-0xcd2 past the coarse child's last
/// offset, 0xcc2, and in the return at 0xbdc-0xbf0), and a sample priced as
/// the wrong kind is a coarse read lost or ten found. The shared code is
/// marked only with `shared` (a fine price outside it).
fn gettime_code(
    image: &VdsoImage,
    labelled: &BTreeMap<u32, CodeKind>,
    shared: bool,
) -> GettimeCode {
    let mut code = GettimeCode {
        coarse: Vec::new(),
        shared: Vec::new(),
    };
    let Some(function) = image.function(TimeCall::ClockGettime) else {
        return code;
    };
    let reach = STRETCH_GAP / 2;
    let start = function.offset as u32;
    for byte in start..start + function.size as u32 {
        let before = labelled.range(..=byte).next_back();
        let after = labelled.range(byte..).next();
        // The nearer; on a tie the one before (a sample names the
        // instruction after the one it caught).
        let nearest = match (before, after) {
            (Some(b), Some(a)) if a.0 - byte < byte - b.0 => Some(a),
            (Some(b), _) => Some(b),
            (None, a) => a,
        };
        match nearest {
            Some((&offset, &kind)) if offset.abs_diff(byte) <= reach => match kind {
                CodeKind::Coarse => code.coarse.push(byte),
                CodeKind::Shared if shared => code.shared.push(byte),
                _ => {}
            },
            _ => {}
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::vdso_image::ExportedFunction;

    /// The x86_64 image of this kernel (6.18): clock_gettime at 0xb10..0xe96,
    /// gettimeofday before it.
    fn image() -> VdsoImage {
        VdsoImage {
            functions: vec![
                ExportedFunction {
                    call: TimeCall::Gettimeofday,
                    offset: 0x830,
                    size: 0x2ab,
                },
                ExportedFunction {
                    call: TimeCall::ClockGettime,
                    offset: 0xb10,
                    size: 0x386,
                },
            ],
            ..VdsoImage::default()
        }
    }

    /// A tsc calibration of this host, as sampled: the fine child's reads
    /// (a third of the coarse child's calls) and the coarse child's.
    const FINE: [(u32, u32); 14] = [
        (0x86c, 74),
        (0xaea, 31),
        (0xb11, 3),
        (0xb2f, 6),
        (0xb49, 1),
        (0xb66, 318),
        (0xb68, 13),
        (0xb74, 11),
        (0xb7f, 3),
        (0xb8e, 8),
        (0xb9c, 13),
        (0xba2, 3),
        (0xbb4, 10),
        (0xbde, 5),
    ];
    const COARSE: [(u32, u32); 12] = [
        (0xb10, 10),
        (0xb16, 7),
        (0xb1f, 7),
        (0xb36, 1),
        (0xb38, 10),
        (0xb66, 2),
        (0xbd9, 4),
        (0xbdb, 6),
        (0xbea, 12),
        (0xcaf, 7),
        (0xcb3, 2),
        (0xcc2, 33),
    ];
    const FINE_CALLS: u64 = 33_300_000;
    const COARSE_CALLS: u64 = 100_000_000;
    const PERIOD_NS: u64 = 2_000_000;

    /// The costs and code calibration makes of these samples.
    fn judge(fine: &[(u32, u32)], coarse: &[(u32, u32)]) -> Option<(CoarseCosts, GettimeCode)> {
        let fine = FineOffsets {
            samples: fine,
            calls: FINE_CALLS,
        };
        let samples = coarse.iter().map(|(_, count)| u64::from(*count)).sum();
        coarse_costs(&image(), &fine, coarse, COARSE_CALLS, samples, PERIOD_NS)
    }

    /// Judged by instruction, this calibration marked 0xb10 and 0xb38 of the
    /// entry and 0xbea of the return as coarse-only: the fine child was
    /// sampled on other instructions there (0xb11, 0xb2f, 0xbde), and a C loop
    /// of fine reads is sampled at 0xb16 and 0xb38. By stretch only the
    /// coarse read's own loop is.
    #[test]
    fn code_both_reads_run_stays_fine_code() {
        let (costs, code) = judge(&FINE, &COARSE).unwrap();
        // The coarse read's loop, and 16 bytes either side (see below).
        assert_eq!(code.coarse, (0xc9f..=0xcd2).collect::<Vec<u32>>());
        assert_eq!(costs.samples, 42);
        // 42 samples of 2 ms over 100 M calls; the other 59 are shared.
        assert!((costs.marked_ns - 0.84).abs() < 1e-9, "{costs:?}");
        assert!((costs.shared_ns - 1.18).abs() < 1e-9, "{costs:?}");
    }

    /// The code both run is the coarse child's other stretches (the entry,
    /// the return), each whole; not its two samples among the fine reads' own
    /// code (0xb66), which would price a fine sample there as a coarse call.
    /// Each byte takes the kind of the nearest sampled offset within 16
    /// bytes: the entry up to 0xb40 (0xb49 is a fine read's), the return
    /// from 0xbc9 (16 before 0xbd9; 0xbb4, a fine read's, is 21 before) to
    /// 0xbfa. A fine read's cost splits by the same code: in clock_gettime,
    /// 14 of its samples fell in the shared code and 380 elsewhere.
    #[test]
    fn the_shared_code_is_the_coarse_childs_other_stretches() {
        let (costs, code) = judge(&FINE, &COARSE).unwrap();
        let expected: Vec<u32> = (0xb10..=0xb40).chain(0xbc9..=0xbfa).collect();
        assert_eq!(code.shared, expected);
        assert!(!code.shared.contains(&0xb66) && !code.coarse.contains(&0xb66));
        let split = costs.fine_split.unwrap();
        assert_eq!(split.own_samples, 380);
        let per_call = |samples: f64| samples * PERIOD_NS as f64 / FINE_CALLS as f64;
        assert!((split.own_ns - per_call(380.0)).abs() < 1e-9, "{split:?}");
        assert!((split.shared_ns - per_call(14.0)).abs() < 1e-9, "{split:?}");
    }

    /// A stray sample of the coarse child between the entry and the fine
    /// reads' own code (0xb4c, 26 bytes before 0xb66, where the fine child
    /// had 318) does not make the entry fine code: the instruction the fine
    /// child dominates is left out of the stretches (seen in CI: the entry
    /// judged fine code, a mixed reader's fine reads +22%, its coarse -44%).
    #[test]
    fn a_stray_sample_does_not_join_the_entry_to_fine_code() {
        let mut coarse = COARSE.to_vec();
        coarse.push((0xb4c, 1));
        let (costs, code) = judge(&FINE, &coarse).unwrap();
        assert!(code.shared.contains(&0xb10) && code.shared.contains(&0xb4c));
        assert!(!code.shared.contains(&0xb66) && !code.coarse.contains(&0xb66));
        // The fine child's 0xb49 is the entry's now: 15 shared, 379 its own.
        assert_eq!(costs.fine_split.unwrap().own_samples, 379);
    }

    /// The share of its CPU a coarse child spent in clock_gettime: a quiet
    /// start's (118 samples of 2 ms in 455 ms) keeps its run, the CI run's
    /// that priced a coarse read 60% dear (185 in 502 ms) runs once more.
    #[test]
    fn a_child_that_spent_far_longer_in_the_call_runs_again() {
        let share = |samples, cpu_ms| {
            CoarseRuns {
                samples,
                cpu: std::time::Duration::from_millis(cpu_ms),
                ..CoarseRuns::default()
            }
            .gettime_share(2_004_008)
        };
        assert!((share(118, 455) - 0.52).abs() < 0.01);
        assert!(share(118, 455) <= MAX_GETTIME_SHARE);
        assert!((share(185, 502) - 0.74).abs() < 0.01);
        assert!(share(185, 502) > MAX_GETTIME_SHARE);
        assert_eq!(share(0, 0), 0.0);
    }

    /// Too few fine samples outside the shared code to price a fine read
    /// there: nothing shared is marked, and coarse reads are priced by their
    /// own code (bounded by their whole call).
    #[test]
    fn without_a_fine_price_outside_it_the_shared_code_is_not_marked() {
        let fine: Vec<(u32, u32)> = FINE
            .into_iter()
            .map(|(offset, count)| (offset, count.min(3)))
            .collect();
        let (costs, code) = judge(&fine, &COARSE).unwrap();
        assert_eq!(costs.fine_split, None);
        assert!(code.shared.is_empty());
        assert_eq!(code.coarse, (0xc9f..=0xcd2).collect::<Vec<u32>>());
    }

    /// The fine child's few samples of the return can all miss it (here 1 in
    /// 5 of a coarse read's per call): the return then looks coarse-only, but
    /// a coarse read's own code is one stretch, the one it spends most in.
    #[test]
    fn one_stretch_is_marked_the_one_coarse_reads_spend_most_in() {
        let fine: Vec<(u32, u32)> = FINE.into_iter().filter(|(o, _)| *o != 0xbde).collect();
        let (costs, code) = judge(&fine, &COARSE).unwrap();
        assert_eq!(code.coarse.first(), Some(&0xc9f));
        assert_eq!(code.coarse.last(), Some(&0xcd2));
        assert_eq!(costs.samples, 42);
    }

    /// A stretch of the fine child's code the coarse child ran a few times
    /// (its own fine reads, a stray sample) is not coarse-only, however few
    /// fine samples it would need to be.
    #[test]
    fn fine_code_the_coarse_child_ran_stays_fine_code() {
        let (_, code) = judge(&FINE, &[(0xb66, 200), (0xcc2, 30)]).unwrap();
        assert_eq!(code.coarse, (0xcb2..=0xcd2).collect::<Vec<u32>>());
    }

    #[test]
    fn too_few_coarse_only_samples_price_nothing() {
        assert!(judge(&FINE, &[(0xcc2, 19)]).is_none());
        // Outside clock_gettime nothing is judged.
        let coarse = [(0xaea, 300)];
        assert!(judge(&FINE, &coarse).is_none());
        let nothing = FineOffsets {
            samples: &[],
            calls: 0,
        };
        assert!(coarse_costs(&image(), &nothing, &coarse, 1, 19, 1).is_none());
    }

    /// Where fine reads enter the kernel, breakpoints say what each offset
    /// either child was sampled on is: the coarse child's samples at offsets
    /// only coarse reads ran price a coarse read in its own code; the
    /// offsets both ran are marked shared (each byte as its nearest labelled
    /// offset, within 16 bytes), and the fine child's few samples there give
    /// what a kernel read's user-space part costs in them.
    #[test]
    fn offsets_only_coarse_reads_run_by_breakpoint_are_its_own_code() {
        // The user-space part of 400 000 reads that entered the kernel.
        let fallbacks = [(0xb11, 2), (0xb2f, 1), (0xb66, 5), (0xbde, 1)];
        let kinds: BTreeMap<u32, CodeKind> = COARSE
            .iter()
            .chain(&fallbacks)
            .map(|&(offset, _)| {
                let kind = match offset {
                    0xcaf..=0xcc2 => CodeKind::Coarse,
                    0xb66 => CodeKind::Fine,
                    _ => CodeKind::Shared,
                };
                (offset, kind)
            })
            .collect();
        let fine = FineOffsets {
            samples: &fallbacks,
            calls: 400_000,
        };
        let samples = COARSE.iter().map(|(_, count)| u64::from(*count)).sum();
        let judge = |kinds: &BTreeMap<u32, CodeKind>| {
            costs_by_reach(
                &image(),
                &COARSE,
                kinds,
                &fine,
                (COARSE_CALLS, samples),
                PERIOD_NS,
            )
        };
        let (costs, code) = judge(&kinds).unwrap();
        assert_eq!(costs.samples, 42);
        assert!((costs.marked_ns - 0.84).abs() < 1e-9, "{costs:?}");
        assert!((costs.shared_ns - 1.18).abs() < 1e-9, "{costs:?}");
        assert_eq!(costs.fine_split, None);
        // 4 samples of 2 ms over 400 000 reads in the entry and return.
        assert_eq!(costs.fallback_shared_ns, Some(20.0));
        assert_eq!(code.coarse, (0xc9f..=0xcd2).collect::<Vec<u32>>());
        let shared: Vec<u32> = (0xb10..=0xb48).chain(0xbc9..=0xbfa).collect();
        assert_eq!(code.shared, shared);
        // Offsets no breakpoint saw run count as neither; under 20 samples
        // in code of its own, a coarse read is not priced.
        let unseen: BTreeMap<u32, CodeKind> =
            kinds.into_iter().filter(|(o, _)| *o != 0xcc2).collect();
        assert!(judge(&unseen).is_none());
    }
}
