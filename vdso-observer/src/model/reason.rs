//! Why a time call entered the kernel, and which of those reasons are faults.

use serde::{Deserialize, Serialize};
use vdso_observer_common::{Origin, SyscallAbi, TimeCall};

use crate::model::clocks::vdso_can_serve;

/// The cause of a kernel entry for a time call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackReason {
    /// The vDSO itself entered the kernel for a clock it normally serves: the
    /// clocksource cannot be read from user space (hpet, acpi_pm, unstable TSC, ...).
    Clocksource,
    /// Issued outside the vDSO (syscall(2), a runtime or static binary that
    /// bypasses it) for a call the vDSO would have answered.
    DirectSyscall,
    /// The process has no vDSO mapped (vdso=0, some sandboxes and emulators).
    NoVdso,
    /// A jump into the legacy vsyscall page, emulated by the kernel (~700 ns).
    LegacyVsyscall,
    /// A clock the vDSO never serves (CPU-time, fd and alarm clocks): expected,
    /// informational only.
    UnsupportedClock,
    /// The vDSO of this architecture has no function for the call (arm64:
    /// getcpu): every call enters the kernel; expected, informational only.
    NoVdsoFunction,
}

impl FallbackReason {
    pub const ALL: [FallbackReason; 6] = [
        FallbackReason::Clocksource,
        FallbackReason::DirectSyscall,
        FallbackReason::NoVdso,
        FallbackReason::LegacyVsyscall,
        FallbackReason::UnsupportedClock,
        FallbackReason::NoVdsoFunction,
    ];

    /// The reason a FLAG word stands for.
    pub fn from_flag(word: &str) -> Option<FallbackReason> {
        FallbackReason::ALL.into_iter().find(|r| r.flag() == word)
    }

    /// Whether the reason is a fault worth flagging (costs time the vDSO would save).
    pub fn is_fault(self) -> bool {
        !matches!(
            self,
            FallbackReason::UnsupportedClock | FallbackReason::NoVdsoFunction
        )
    }

    /// The short word of the FLAG column.
    pub fn flag(self) -> &'static str {
        match self {
            FallbackReason::Clocksource => "fallback",
            FallbackReason::DirectSyscall => "direct",
            FallbackReason::NoVdso => "no-vdso",
            FallbackReason::LegacyVsyscall => "vsyscall",
            FallbackReason::UnsupportedClock => "cpu-clock",
            FallbackReason::NoVdsoFunction => "no-vdso-fn",
        }
    }

    /// The name used in JSON and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            FallbackReason::Clocksource => "clocksource",
            FallbackReason::DirectSyscall => "direct_syscall",
            FallbackReason::NoVdso => "no_vdso",
            FallbackReason::LegacyVsyscall => "legacy_vsyscall",
            FallbackReason::UnsupportedClock => "unsupported_clock",
            FallbackReason::NoVdsoFunction => "no_vdso_function",
        }
    }
}

/// The reason behind kernel entries of one (call, clock, origin); None for calls
/// never judged by themselves (getrandom: glibc before 2.41 always makes the
/// syscall).
pub fn reason(
    call: TimeCall,
    clock_id: i32,
    origin: Origin,
    abi: SyscallAbi,
) -> Option<FallbackReason> {
    if call == TimeCall::Getrandom {
        return None;
    }
    if origin == Origin::LegacyVsyscall {
        return Some(FallbackReason::LegacyVsyscall);
    }
    if !abi.vdso_has(call) {
        return Some(FallbackReason::NoVdsoFunction);
    }
    if call.takes_clock() && !vdso_can_serve(clock_id) {
        // Any path ends in the kernel for these: no time is wasted.
        return Some(FallbackReason::UnsupportedClock);
    }
    Some(match origin {
        Origin::NoVdso => FallbackReason::NoVdso,
        Origin::VdsoFallback => FallbackReason::Clocksource,
        Origin::Direct | Origin::LegacyVsyscall => FallbackReason::DirectSyscall,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdso_observer_common::NO_CLOCK;

    const MONOTONIC: i32 = 1;
    const PROCESS_CPUTIME: i32 = 2;

    #[test]
    fn origins_map_to_reasons() {
        use FallbackReason::*;
        let gettime = TimeCall::ClockGettime;
        assert_eq!(
            reason(gettime, MONOTONIC, Origin::VdsoFallback, SyscallAbi::X86_64),
            Some(Clocksource)
        );
        assert_eq!(
            reason(gettime, MONOTONIC, Origin::Direct, SyscallAbi::X86_64),
            Some(DirectSyscall)
        );
        assert_eq!(
            reason(gettime, MONOTONIC, Origin::NoVdso, SyscallAbi::X86_64),
            Some(NoVdso)
        );
        assert_eq!(
            reason(
                TimeCall::Gettimeofday,
                NO_CLOCK,
                Origin::LegacyVsyscall,
                SyscallAbi::X86_64
            ),
            Some(LegacyVsyscall)
        );
        assert_eq!(
            reason(
                TimeCall::Gettimeofday,
                NO_CLOCK,
                Origin::VdsoFallback,
                SyscallAbi::X86_64
            ),
            Some(Clocksource)
        );
    }

    #[test]
    fn cpu_clocks_are_informational_whatever_the_origin() {
        for origin in [Origin::VdsoFallback, Origin::Direct, Origin::NoVdso] {
            let why = reason(
                TimeCall::ClockGettime,
                PROCESS_CPUTIME,
                origin,
                SyscallAbi::X86_64,
            )
            .unwrap();
            assert_eq!(why, FallbackReason::UnsupportedClock);
            assert!(!why.is_fault());
        }
    }

    #[test]
    fn arm64_getcpu_has_no_vdso_function_and_is_no_fault() {
        for origin in [Origin::Direct, Origin::VdsoFallback] {
            let why = reason(TimeCall::Getcpu, NO_CLOCK, origin, SyscallAbi::Arm64).unwrap();
            assert_eq!(why, FallbackReason::NoVdsoFunction);
            assert!(!why.is_fault());
        }
        assert_eq!(
            reason(
                TimeCall::Getcpu,
                NO_CLOCK,
                Origin::Direct,
                SyscallAbi::X86_64
            ),
            Some(FallbackReason::DirectSyscall)
        );
        assert_eq!(
            reason(
                TimeCall::ClockGettime,
                MONOTONIC,
                Origin::Direct,
                SyscallAbi::Arm64
            ),
            Some(FallbackReason::DirectSyscall)
        );
    }

    #[test]
    fn getrandom_is_never_judged() {
        for origin in Origin::ALL {
            assert_eq!(
                reason(TimeCall::Getrandom, NO_CLOCK, origin, SyscallAbi::X86_64),
                None
            );
        }
    }
}
