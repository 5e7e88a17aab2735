//! The rate the cpu-clock sampler runs at: the one asked for, unless the
//! kernel or the machine bounds it, and then the reason, said once.

/// Fastest sampling in a virtual machine. In a guest the sampler's ticks fall
/// into step with a program that runs in short timer-paced bursts (a 2 kHz
/// loop of 23 µs bursts of clock reads): `perf record` misses them the same
/// way, so it is the guest's timer delivery, not this observer. Measured with
/// `cargo xtask bench coverage`: the stated interval holds up to 1 499 Hz on
/// an Intel VM and fails from 1 999 Hz (errors from -78% to +238%); see
/// docs/PERFORMANCE.md.
pub const GUEST_MOST_HZ: u64 = 999;

/// Why a guest samples no faster, as the status note and `doctor` say it.
const WHY_GUEST: &str = "faster cpu-clock ticks fall into step with programs that run in \
     short timer-paced bursts and miss or over-count them (measured in KVM guests: -60% to \
     -78% median at 4 999 Hz; `perf record` misses them too)";

/// Set to `off`, a guest samples at the rate asked (to measure the bound).
pub const GUEST_BOUND_ENV: &str = "VDSO_OBSERVER_SAMPLE_HZ_BOUND";

/// Why the sampler runs slower than asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateBound {
    /// Near `kernel.perf_event_max_sample_rate` the kernel throttles perf
    /// events (counted per tick): at the bound here it dropped 86% of a
    /// loop's samples, and each one left would stand for more time than the
    /// period says. Half of it at most.
    KernelMaximum { max: u64 },
    /// A virtual machine, as `sign` shows (see GUEST_MOST_HZ).
    Guest { sign: String },
}

/// The rate to sample at for `asked`, and what lowered it.
pub fn sampling_rate(
    asked: u64,
    kernel_max: Option<u64>,
    guest: Option<String>,
) -> (u64, Option<RateBound>) {
    let kernel = kernel_max
        .filter(|max| *max > 0)
        .map(|max| ((max / 2).max(1), RateBound::KernelMaximum { max }));
    let guest = guest.map(|sign| (GUEST_MOST_HZ, RateBound::Guest { sign }));
    match kernel.into_iter().chain(guest).min_by_key(|(hz, _)| *hz) {
        Some((hz, bound)) if hz < asked => (hz, Some(bound)),
        _ => (asked, None),
    }
}

/// What the sampler's status says when `bound` lowered `asked` to `rate`.
pub fn bound_note(asked: u64, rate: u64, bound: &RateBound) -> String {
    match bound {
        RateBound::KernelMaximum { max } => format!(
            "sampling at {rate} Hz, not {asked}: kernel.perf_event_max_sample_rate is {max}, and \
             the kernel throttles perf events near it (it lowers it by itself when its perf \
             interrupts take too long)"
        ),
        RateBound::Guest { sign } => format!(
            "sampling at {rate} Hz, not {asked}: this is a virtual machine ({sign}), where \
             {WHY_GUEST}; for more precision on chosen processes use --exact, or set \
             {GUEST_BOUND_ENV}=off to sample at {asked} Hz anyway"
        ),
    }
}

/// What `doctor` says of the fastest rate this machine allows, and why.
pub fn fastest_rate(kernel_max: Option<u64>, guest: Option<String>) -> String {
    match sampling_rate(u64::MAX, kernel_max, guest) {
        (_, None) => {
            "no bound on --sample-hz (kernel.perf_event_max_sample_rate unreadable)".into()
        }
        (hz, Some(RateBound::KernelMaximum { max })) => format!(
            "--sample-hz up to {hz}: half of kernel.perf_event_max_sample_rate ({max}); \
             no hypervisor shows"
        ),
        (hz, Some(RateBound::Guest { sign })) => {
            format!("--sample-hz up to {hz}: a virtual machine ({sign}), where {WHY_GUEST}")
        }
    }
}

/// What shows this machine is a virtual machine, unless GUEST_BOUND_ENV
/// lifts the guest bound (then None, as on bare metal).
pub fn bounding_guest() -> Option<String> {
    let lifted = std::env::var_os(GUEST_BOUND_ENV).is_some_and(|v| v == "off");
    if lifted {
        None
    } else {
        crate::host::hypervisor::guest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_bound_below_the_asked_rate_wins() {
        let guest = || Some("the CPU's hypervisor flag".to_owned());
        assert_eq!(sampling_rate(499, Some(100_000), guest()), (499, None));
        assert_eq!(sampling_rate(499, None, None), (499, None));
        assert_eq!(
            sampling_rate(4999, Some(100_000), guest()),
            (
                GUEST_MOST_HZ,
                Some(RateBound::Guest {
                    sign: "the CPU's hypervisor flag".into()
                })
            )
        );
        // Bare metal: only the kernel's bound.
        assert_eq!(sampling_rate(4999, Some(100_000), None), (4999, None));
        // A kernel that lowered its maximum to 1 000: 500 Hz, whoever asks.
        assert_eq!(
            sampling_rate(4999, Some(1000), guest()),
            (500, Some(RateBound::KernelMaximum { max: 1000 }))
        );
        assert_eq!(
            sampling_rate(999, Some(1000), None),
            (500, Some(RateBound::KernelMaximum { max: 1000 }))
        );
        // An unreadable or zero maximum bounds nothing.
        assert_eq!(sampling_rate(4999, Some(0), None), (4999, None));
        assert!(
            fastest_rate(Some(100_000), guest()).starts_with("--sample-hz up to 999: a virtual")
        );
        assert!(fastest_rate(Some(100_000), None).starts_with("--sample-hz up to 50000: half"));
        let note = bound_note(4999, 999, &RateBound::Guest { sign: "x".into() });
        assert!(note.contains("999 Hz, not 4999") && note.contains(GUEST_BOUND_ENV));
    }
}
