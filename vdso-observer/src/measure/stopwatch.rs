//! Timing loops bounded by time as well as by calls. A loop of a fixed 100 000
//! clock reads takes 2 ms where the vDSO reads the TSC, ~0.3 s where every
//! read enters the kernel for acpi_pm (~3 µs), and ~7 s where each traps into
//! an emulator (~70 µs): start-up took 374 s in such a guest. These stop at
//! their budget as well, so a machine whose clock reads are slow is observed
//! as quickly as a healthy one, and they say how many calls they managed.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

/// Calls between two looks at the clock: the look itself is a clock read.
const BATCH: u64 = 256;

/// What one timing loop measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub ns_per_call: f64,
    /// Calls made: fewer than asked where the budget ran out first.
    pub calls: u64,
}

/// Calls `call` `max_calls` times or until `budget` has passed, whichever
/// comes first (at least one batch).
pub fn time_calls<T>(max_calls: u64, budget: Duration, mut call: impl FnMut() -> T) -> Timing {
    let start = Instant::now();
    let mut calls = 0;
    while calls < max_calls {
        for _ in 0..BATCH.min(max_calls - calls) {
            black_box(call());
        }
        calls += BATCH.min(max_calls - calls);
        if start.elapsed() >= budget {
            break;
        }
    }
    Timing {
        ns_per_call: start.elapsed().as_nanos() as f64 / calls as f64,
        calls,
    }
}

/// The fastest of `rounds` timing loops (noise only ever adds time), and the
/// calls made in all.
pub fn best_of(
    rounds: usize,
    max_calls: u64,
    budget: Duration,
    mut call: impl FnMut() -> i64,
) -> Timing {
    let mut best = Timing {
        ns_per_call: f64::INFINITY,
        calls: 0,
    };
    let mut calls = 0;
    for _ in 0..rounds {
        let timing = time_calls(max_calls, budget, &mut call);
        calls += timing.calls;
        best.ns_per_call = best.ns_per_call.min(timing.ns_per_call);
    }
    best.calls = calls;
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_stops_at_its_calls_or_its_budget() {
        let fast = time_calls(1000, Duration::from_secs(10), || 1);
        assert_eq!(fast.calls, 1000);
        // 50 µs a call: 100 000 would take 5 s; the budget stops it.
        let started = Instant::now();
        let slow = time_calls(100_000, Duration::from_millis(30), || {
            std::thread::sleep(Duration::from_micros(50))
        });
        assert!(started.elapsed() < Duration::from_millis(500), "{slow:?}");
        assert!(slow.calls >= BATCH && slow.calls < 100_000, "{slow:?}");
        assert!(slow.ns_per_call >= 50_000.0, "{slow:?}");
        let best = best_of(3, 512, Duration::from_secs(1), || 0);
        assert_eq!(best.calls, 3 * 512);
    }
}
