//! What `doctor` finds about this machine, and the verdict scripts gate on.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::{
    costs::PathCost,
    observer::{ProgramRuns, RunStats, VdsoCheck},
    system::{ClockEvent, ClocksourceState, VsyscallMode},
};

/// How the capability was decided: the observer's own calls counted in the
/// kernel, the clocksource table, or the cost of a vDSO call against a syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Measured,
    Table,
    Timing,
}

impl Decision {
    pub fn name(self) -> &'static str {
        match self {
            Decision::Measured => "measured",
            Decision::Table => "table",
            Decision::Timing => "timing",
        }
    }
}

/// What `doctor` exits with, so scripts and Ansible can gate on it: numbers
/// of their own, above 1 (the doctor failed) and 2 (a usage error, as clap
/// reports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// 0: the vDSO answers time calls in user space here.
    Healthy,
    /// 3: the clocksource is not vDSO-capable: clock reads enter the kernel.
    ClocksourceFallback,
    /// 4: processes get no vDSO (vdso=0, or none mapped).
    NoVdso,
    /// 5: capability could not be decided (no measurement, no table entry, no timing).
    Unknown,
}

impl Verdict {
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Healthy => 0,
            Verdict::ClocksourceFallback => 3,
            Verdict::NoVdso => 4,
            Verdict::Unknown => 5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Diagnosis {
    pub kernel: String,
    /// Whether this process has a vDSO (AT_SYSINFO_EHDR), as every process here would.
    pub vdso_present: bool,
    /// The answer, also the exit code.
    pub verdict: Verdict,
    pub clocksource: Option<ClocksourceState>,
    /// The observer's own vDSO clock_gettime(CLOCK_MONOTONIC) calls and how many
    /// entered the kernel (needs root).
    pub vdso_check: Option<VdsoCheck>,
    /// Measured when possible, else by the clocksource table, else by cost.
    pub vdso_capable: Option<bool>,
    /// How `vdso_capable` was decided.
    pub decided_by: Decision,
    /// Each call through the vDSO and as a syscall: the same measurement the
    /// session's excess CPU uses.
    pub costs: Vec<PathCost>,
    pub vsyscall: VsyscallMode,
    pub boot_settings: Vec<String>,
    pub features: Vec<Feature>,
    pub kernel_log: Vec<ClockEvent>,
    pub kernel_log_error: Option<String>,
    /// Whether the kernel measured the programs' run time (None: not loaded).
    pub run_stats: Option<RunStats>,
    /// The programs' runs and run time during the doctor's own measurement.
    pub programs: Vec<ProgramRuns>,
    pub advice: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Feature {
    pub name: Cow<'static, str>,
    pub available: bool,
    pub detail: String,
}

/// No vDSO first (nothing else matters then), then the capability.
pub fn verdict(d: &Diagnosis) -> Verdict {
    if !d.vdso_present || d.boot_settings.iter().any(|s| s == "vdso=0") {
        return Verdict::NoVdso;
    }
    match d.vdso_capable {
        Some(true) => Verdict::Healthy,
        Some(false) => Verdict::ClocksourceFallback,
        None => Verdict::Unknown,
    }
}
