//! The machine's time set-up as reports carry it: the clocksource and whether
//! the vDSO can read it, the legacy vsyscall mode, and clock events.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Whether the vDSO can read a clocksource from user space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VdsoCapability {
    /// It has a vDSO clock mode: high-resolution clocks stay in user space.
    Yes,
    /// It has none: every high-resolution clock read enters the kernel.
    No,
    /// It has one only under a condition the kernel decides at run time
    /// (a paravirtual clock with its stable bit).
    Conditional,
    /// Not in the table.
    Unknown,
}

/// What the kernel's clocksource drivers say about vDSO use (x86 and arm64).
pub fn clocksource_vdso_capability(name: &str) -> (VdsoCapability, &'static str) {
    use VdsoCapability::*;
    match name {
        "tsc" => (Yes, "TSC is read with rdtsc in user space"),
        "tsc-early" => (
            Yes,
            "the early-boot TSC is read with rdtsc in user space too",
        ),
        "kvm-clock" => (
            Conditional,
            "pvclock is readable from user space only while the host sets PVCLOCK_TSC_STABLE_BIT",
        ),
        "xen" => (
            Conditional,
            "Xen pvclock is readable from user space only with the stable bit (XENFEAT_vcpu_time_phys_area on a TSC-stable host)",
        ),
        "hyperv_clocksource_tsc_page" => (Yes, "Hyper-V TSC page is mapped into the vDSO"),
        "arch_sys_counter" => (Yes, "arm64 generic timer counter is readable from EL0"),
        "hpet" => (No, "HPET has no vDSO clock mode (removed in Linux 5.6)"),
        "acpi_pm" => (No, "the ACPI PM timer is an I/O port: kernel only"),
        "jiffies" | "refined-jiffies" => (No, "jiffies is a tick counter: kernel only"),
        "pit" => (No, "the PIT is an I/O port: kernel only"),
        _ => (Unknown, "not a clocksource vdso-observer knows"),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClocksourceState {
    pub current: String,
    pub available: Vec<String>,
    pub vdso_capability: VdsoCapability,
    pub why: Cow<'static, str>,
}

/// How the kernel treats calls into the legacy vsyscall page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VsyscallMode {
    /// Execute-only page; calls are emulated (the default since 5.3).
    Xonly,
    /// Readable page; calls are emulated.
    Emulate,
    /// No page: a call kills the process with SIGSEGV.
    None,
    Unknown,
}

impl VsyscallMode {
    pub fn name(self) -> &'static str {
        match self {
            VsyscallMode::Xonly => "xonly",
            VsyscallMode::Emulate => "emulate",
            VsyscallMode::None => "none",
            VsyscallMode::Unknown => "unknown",
        }
    }
}

/// A change in the machine's time set-up, with when it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClockEvent {
    /// Unix seconds (from the kernel log's boot-time stamp, or when seen in sysfs).
    pub at_unix: f64,
    pub kind: ClockEventKind,
    pub message: String,
}

/// What a clock event was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockEventKind {
    /// The kernel log: `clocksource: Switched to clocksource X`.
    Switched,
    /// The kernel log: the TSC was marked unstable.
    TscUnstable,
    /// The kernel log: the clocksource watchdog complained.
    Watchdog,
    /// The kernel log: arm64's arch timer needs an erratum workaround, which
    /// keeps the counter out of the vDSO's reach (VDSO_CLOCKMODE_NONE).
    TimerErratum,
    /// `current_clocksource` in sysfs changed between two looks.
    SysfsChange,
}

impl ClockEventKind {
    pub const ALL: [ClockEventKind; 5] = [
        ClockEventKind::Switched,
        ClockEventKind::TscUnstable,
        ClockEventKind::Watchdog,
        ClockEventKind::TimerErratum,
        ClockEventKind::SysfsChange,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ClockEventKind::Switched => "switched",
            ClockEventKind::TscUnstable => "tsc_unstable",
            ClockEventKind::Watchdog => "watchdog",
            ClockEventKind::TimerErratum => "timer_erratum",
            ClockEventKind::SysfsChange => "sysfs_change",
        }
    }

    /// A change of clocksource, after which the vDSO is measured again: what
    /// sysfs shows, never a log line alone (sysfs is the judge; the kernel
    /// log says why).
    pub fn is_switch(self) -> bool {
        self == ClockEventKind::SysfsChange
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_clocksources() {
        assert_eq!(clocksource_vdso_capability("tsc").0, VdsoCapability::Yes);
        assert_eq!(clocksource_vdso_capability("hpet").0, VdsoCapability::No);
        assert_eq!(clocksource_vdso_capability("acpi_pm").0, VdsoCapability::No);
        assert_eq!(
            clocksource_vdso_capability("kvm-clock").0,
            VdsoCapability::Conditional
        );
        assert_eq!(
            clocksource_vdso_capability("something").0,
            VdsoCapability::Unknown
        );
    }
}
