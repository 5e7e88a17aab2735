//! The programs' free time-call slots (`FREE_TIME_CALL_SLOTS`): a stack of
//! [`SlotRun`]s. A stack takes one value a syscall, so slots go back in runs:
//! under churn the slots a drain frees lie side by side, and thousands go back
//! in a few pushes where each took its own syscall.

use anyhow::{Context as _, Result};
use aya::maps::{MapData, Stack};
use vdso_observer_common::{FREE_TIME_CALL_SLOTS_MAP, SlotRun};

/// Gives `slots` (distinct, in any order) back to the programs; how many
/// pushes it took.
pub fn give_back(stack: &mut Stack<MapData, SlotRun>, slots: &mut [u32]) -> Result<usize> {
    let runs = runs_lowest_last(slots);
    for &run in &runs {
        stack.push(run, 0).with_context(|| {
            format!(
                "returning slots {}..{} to {FREE_TIME_CALL_SLOTS_MAP}",
                run.first,
                u64::from(run.first) + u64::from(run.len)
            )
        })?;
    }
    Ok(runs.len())
}

/// The runs of consecutive slots in `slots`, highest first: pushed in this
/// order the lowest run ends on top, so slots are taken from the bottom of
/// the counter array up and the slots in use stay low.
fn runs_lowest_last(slots: &mut [u32]) -> Vec<SlotRun> {
    slots.sort_unstable_by(|a, b| b.cmp(a));
    let mut runs: Vec<SlotRun> = Vec::new();
    for &slot in slots.iter() {
        match runs.last_mut() {
            // Descending: the run grows downwards.
            Some(run) if run.first.checked_sub(1) == Some(slot) => {
                run.first = slot;
                run.len += 1;
            }
            Some(run) if run.first == slot => {} // given twice: once is enough
            _ => runs.push(SlotRun {
                first: slot,
                len: 1,
            }),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(first: u32, len: u32) -> SlotRun {
        SlotRun { first, len }
    }

    #[test]
    fn consecutive_slots_become_one_run() {
        let mut slots: Vec<u32> = (0..16_384).rev().collect();
        assert_eq!(runs_lowest_last(&mut slots), vec![run(0, 16_384)]);
    }

    #[test]
    fn gaps_split_runs_and_the_lowest_run_comes_last() {
        let mut slots = vec![7, 3, 4, 0, 9, 8, 5];
        assert_eq!(
            runs_lowest_last(&mut slots),
            vec![run(7, 3), run(3, 3), run(0, 1)]
        );
    }

    #[test]
    fn edges() {
        assert_eq!(runs_lowest_last(&mut []), vec![]);
        assert_eq!(
            runs_lowest_last(&mut [u32::MAX, 0]),
            vec![run(u32::MAX, 1), run(0, 1)]
        );
        // A slot given twice is one slot: pushed twice it would go to two keys.
        assert_eq!(runs_lowest_last(&mut [5, 5, 6]), vec![run(5, 2)]);
    }
}
