//! The programs' free time-call slots (`FREE_TIME_CALL_SLOTS`): a stack of
//! [`SlotRun`]s. A stack takes one value a syscall, so slots go back in runs:
//! under churn the slots a drain frees lie side by side, and thousands go back
//! in a hundred pushes where each took its own syscall.

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

/// Slots a run holds at most. A program that takes a slot holds its run
/// until it pushes the rest back; another CPU that pops meanwhile must find
/// another run, or it is refused as if the map were full. In runs of 64 the
/// stack holds a run per 64 free slots: that race needs fewer free slots than
/// 64 for each CPU making a key at that instant, and the maps drain at 40%.
const MOST_PER_RUN: u64 = 64;

/// The runs of consecutive slots in `slots` (split at [`MOST_PER_RUN`]),
/// highest first: pushed in this order the lowest run ends on top, so slots
/// are taken from the bottom of the counter array up and the slots in use
/// stay low.
fn runs_lowest_last(slots: &mut [u32]) -> Vec<SlotRun> {
    slots.sort_unstable_by(|a, b| b.cmp(a));
    let mut runs: Vec<SlotRun> = Vec::new();
    // Stretches of consecutive slots as (first, end), end exclusive.
    let mut stretch: Option<(u64, u64)> = None;
    for &slot in slots.iter() {
        let slot = u64::from(slot);
        stretch = match stretch {
            // Descending: the stretch grows downwards.
            Some((first, end)) if first == slot + 1 => Some((slot, end)),
            Some((first, end)) if first == slot => Some((first, end)), // given twice: once is enough
            Some((first, end)) => {
                split(first, end, &mut runs);
                Some((slot, slot + 1))
            }
            None => Some((slot, slot + 1)),
        };
    }
    if let Some((first, end)) = stretch {
        split(first, end, &mut runs);
    }
    runs
}

/// The slots first..end as runs of at most [`MOST_PER_RUN`], highest first.
fn split(first: u64, mut end: u64, runs: &mut Vec<SlotRun>) {
    while end > first {
        let start = end.saturating_sub(MOST_PER_RUN).max(first);
        runs.push(SlotRun {
            // Slots are u32: so are both.
            first: start as u32,
            len: (end - start) as u32,
        });
        end = start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(first: u32, len: u32) -> SlotRun {
        SlotRun { first, len }
    }

    #[test]
    fn consecutive_slots_become_runs_of_64_lowest_last() {
        let mut slots: Vec<u32> = (0..200).rev().collect();
        assert_eq!(
            runs_lowest_last(&mut slots),
            vec![run(136, 64), run(72, 64), run(8, 64), run(0, 8)]
        );
        let mut all: Vec<u32> = (0..16_384).collect();
        let runs = runs_lowest_last(&mut all);
        assert_eq!(runs.len(), 256);
        assert!(runs.iter().all(|r| r.len == 64));
        assert_eq!(runs.last(), Some(&run(0, 64)));
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
        assert_eq!(
            runs_lowest_last(&mut [u32::MAX, u32::MAX - 1]),
            vec![run(u32::MAX - 1, 2)]
        );
        // A slot given twice is one slot: pushed twice it would go to two keys.
        assert_eq!(runs_lowest_last(&mut [5, 5, 6]), vec![run(5, 2)]);
    }
}
