//! What one window says: per process, the time calls that entered the kernel
//! (by call, clock, origin and reason) and the ones the vDSO answered, with the
//! machine's time set-up and the observer's own health. Plain data: everything
//! turns into text only at the edges (tables, JSON, metric labels).

use serde::{Deserialize, Serialize};

use super::container::Container;
use vdso_observer_common::{Origin, Provenance, SyscallAbi, TimeCall};

use super::{
    costs::PathCosts,
    costs::VdsoCosts,
    exact::ExactState,
    observer::{
        AttachMode, ExitHandoffs, ObserverStats, ProbeStatus, ProgramRuns, RunStats, VdsoCheck,
    },
    reason::FallbackReason,
    system::{ClockEvent, ClocksourceState, VsyscallMode},
};

/// Version of the JSON documents; bumped when a field changes meaning or goes away.
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// One window, every process that entered the kernel for time during it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    /// Length of the window the counts cover.
    pub window_seconds: f64,
    /// Wall-clock end of the window, Unix seconds.
    pub timestamp_unix: f64,
    pub observer: ObserverHealth,
    /// The machine's time set-up during the window; null until a session adds it.
    pub system: Option<SystemReport>,
    /// Sorted by kernel entries, most first.
    pub processes: Vec<ProcessReport>,
}

/// Rates over every process of a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Totals {
    /// Kernel entries/s, getrandom included.
    pub kernel_per_sec: f64,
    /// Kernel entries/s of time calls only (getrandom left out), for shares.
    pub time_kernel_per_sec: f64,
    /// vDSO calls/s, when every process has a figure.
    pub vdso_per_sec: Option<f64>,
}

impl Totals {
    /// Share of time calls that entered the kernel, when vDSO calls are known.
    pub fn kernel_share(&self) -> Option<f64> {
        let vdso = self.vdso_per_sec?;
        let all = self.time_kernel_per_sec + vdso;
        Some(if all > 0.0 {
            self.time_kernel_per_sec / all
        } else {
            0.0
        })
    }
}

impl Report {
    pub fn totals(&self) -> Totals {
        let seconds = self.window_seconds.max(1e-9);
        Totals {
            kernel_per_sec: self
                .processes
                .iter()
                .map(|p| p.kernel_entries_per_sec)
                .sum(),
            time_kernel_per_sec: self
                .processes
                .iter()
                .map(|p| p.time_kernel_entries() as f64 / seconds)
                .sum(),
            vdso_per_sec: self
                .processes
                .iter()
                .map(|p| p.vdso_calls_per_sec)
                .try_fold(0.0, |sum, v| v.map(|v| sum + v)),
        }
    }
}

/// What decides whether time calls stay in user space on this machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SystemReport {
    pub hostname: String,
    /// The kernel release.
    pub kernel: String,
    pub clocksource: Option<ClocksourceState>,
    /// Measured: the observer's own child made vDSO clock_gettime(CLOCK_MONOTONIC)
    /// calls and counted how many entered the kernel.
    pub vdso_check: Option<VdsoCheck>,
    /// The measured answer when there is one, else the clocksource table's.
    pub vdso_capable: Option<bool>,
    pub vsyscall: VsyscallMode,
    pub boot_settings: Vec<String>,
    /// Clocksource events seen during the window (kernel log, sysfs).
    pub events: Vec<ClockEvent>,
    /// Why the kernel log could not be read, when it could not.
    pub kernel_log_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObserverHealth {
    /// Where time syscalls are counted (what `--attach auto` chose).
    pub attach_mode: AttachMode,
    pub probes: Vec<ProbeStatus>,
    /// Counted in this window by the programs about themselves.
    pub lost: ObserverStats,
    /// Exits in this window the kernel handed over, or could not (ring full).
    #[serde(default)]
    pub exit_handoffs: ExitHandoffs,
    /// Counters in use in the kernel map, and its capacity.
    pub time_call_keys: usize,
    pub time_call_capacity: u32,
    /// Time one vDSO sample stands for; null when sampling is off.
    pub vdso_sample_period_ns: Option<u64>,
    /// ns inside the vDSO per call, by which samples become calls (calibrated at start).
    pub vdso_costs: VdsoCosts,
    /// Whether the kernel measures the programs' own run time.
    pub run_stats: RunStats,
    /// Each program's runs and run time since load (cumulative).
    pub programs: Vec<ProgramRuns>,
    /// Each call through the vDSO and as a syscall (ns), measured at start
    /// with nothing attached: what excess CPU is priced with.
    pub path_costs: PathCosts,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessReport {
    pub pid: u32,
    /// Escaped as by [`procfs::display_comm`]; "?" when the name was never recorded.
    pub comm: String,
    /// Real uid of the process, and its user name (the uid as text when unnamed).
    pub uid: Option<u32>,
    pub user: Option<String>,
    /// Grows by one at every exec of this pid.
    pub exec_id: u32,
    pub start_boottime_ns: u64,
    /// The process (this image of it) was gone at the end of the window.
    pub exited: bool,
    /// Its cgroup v2 path when first seen (null when unknown).
    pub cgroup: Option<String>,
    /// The container that cgroup names (null outside containers).
    pub container: Option<Container>,
    /// Calls of this process not counted because a map was full (0 unless the
    /// machine outgrew the configured map sizes).
    pub lost_calls: u64,
    /// Every kernel entry for a time call or getrandom.
    pub kernel_entries: u64,
    pub kernel_entries_per_sec: f64,
    /// Of `kernel_entries`, the getrandom ones: glibc before 2.41 always makes the
    /// syscall (every process seeds malloc with one), so they say nothing about
    /// the vDSO and count in no share.
    pub getrandom_entries: u64,
    /// Every kernel entry was getrandom and the vDSO answered nothing: a row that
    /// the table, the TUI and the per-pid metrics hide unless asked.
    pub only_getrandom: bool,
    /// Time calls the vDSO answered in user space, per second; null when not measured.
    pub vdso_calls_per_sec: Option<f64>,
    /// Whether `vdso_calls_per_sec` is an estimate (sampling) rather than a count.
    pub vdso_estimated: bool,
    /// kernel / (kernel + vDSO) time calls, getrandom left out; null without a
    /// vDSO figure or without time calls.
    pub kernel_share: Option<f64>,
    /// CPU seconds this window spent because calls entered the kernel where the
    /// vDSO could have answered (null when the costs were not measured).
    pub excess_cpu_seconds: Option<f64>,
    /// vDSO-answered calls by call, clock and provenance.
    pub vdso_calls: Vec<VdsoCallCount>,
    /// Relative half-width of the 95% interval of a sampled estimate (the
    /// samples' Poisson error and the calibration's); null when exact.
    pub vdso_uncertainty: Option<f64>,
    /// Exact counting of this process (`--exact`, `--exact-pid`); null when not asked.
    pub exact: Option<ExactState>,
    /// A row of exited processes merged by comm, uid and cgroup (pid 0): how
    /// many. A window gives own rows to at most `exited_rows` exited
    /// processes (2048 unless set), a sixteenth of them to one kind; null
    /// for a row of one process.
    pub merged_processes: Option<u32>,
    pub by_origin: OriginCounts,
    pub calls: Vec<CallCount>,
    /// Names of the clocks passed to clock_gettime / clock_getres.
    pub clocks: Vec<String>,
    /// Every cause seen, faults and informational ones.
    pub reasons: Vec<FallbackReason>,
    /// The faults among `reasons`, over the thresholds; JSON has their short
    /// words (`fallback`, `direct`, `vsyscall`, `no-vdso`).
    #[serde(serialize_with = "flag_words", deserialize_with = "from_flag_words")]
    pub flags: Vec<FallbackReason>,
}

impl ProcessReport {
    /// Kernel entries for time calls proper (getrandom left out).
    pub fn time_kernel_entries(&self) -> u64 {
        self.kernel_entries - self.getrandom_entries
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginCounts {
    pub vdso_fallback: u64,
    pub direct: u64,
    pub no_vdso: u64,
    pub legacy_vsyscall: u64,
}

impl OriginCounts {
    pub fn add(&mut self, origin: Origin, count: u64) {
        *match origin {
            Origin::VdsoFallback => &mut self.vdso_fallback,
            Origin::Direct => &mut self.direct,
            Origin::NoVdso => &mut self.no_vdso,
            Origin::LegacyVsyscall => &mut self.legacy_vsyscall,
        } += count;
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallCount {
    pub call: TimeCall,
    pub abi: SyscallAbi,
    /// Clock name, null for calls without a clock argument.
    pub clock: Option<String>,
    pub clock_id: Option<i32>,
    pub origin: Origin,
    pub reason: Option<FallbackReason>,
    pub count: u64,
    pub per_sec: f64,
}

/// One row of vDSO-answered calls of a process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VdsoCallCount {
    pub call: VdsoFunction,
    /// Clock name when the probe could read it.
    pub clock: Option<String>,
    /// `sampled` (estimate), `uprobe` or `breakpoint` (exact).
    pub provenance: Provenance,
    /// Exact calls the vDSO answered (hits less the vDSO's own kernel entries); null
    /// when estimated.
    pub count: Option<u64>,
    /// cpu-clock samples inside the function; null when exact.
    pub samples: Option<u64>,
    /// Calls in the window: the count, or the estimate from samples.
    pub calls: f64,
    pub per_sec: f64,
}

/// When a fault reason becomes a flag: at least this many kernel entries a
/// second for it, and at least this share of the process's time calls in the
/// kernel (when the share is known). Defaults flag anything.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Thresholds {
    pub min_rate_per_sec: f64,
    pub min_kernel_share: f64,
}

impl Thresholds {
    /// Keeps in `flags` only the fault reasons over the thresholds; `reasons`
    /// keeps every cause seen.
    pub fn apply(&self, report: &mut ProcessReport) {
        let share_ok = report
            .kernel_share
            .is_none_or(|share| share >= self.min_kernel_share);
        let rate_of = |reason: FallbackReason| -> f64 {
            report
                .calls
                .iter()
                .filter(|c| c.reason == Some(reason))
                .map(|c| c.per_sec)
                .sum()
        };
        report.flags = report
            .reasons
            .iter()
            .copied()
            .filter(|r| r.is_fault() && share_ok && rate_of(*r) >= self.min_rate_per_sec)
            .collect();
    }
}

/// The vDSO function a sample or an exact hit belongs to: one of the time calls,
/// or vDSO code that is none of them (`other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VdsoFunction {
    Call(TimeCall),
    Other,
}

impl VdsoFunction {
    pub fn name(self) -> &'static str {
        match self {
            VdsoFunction::Call(call) => call.name(),
            VdsoFunction::Other => "other",
        }
    }
}

impl Serialize for VdsoFunction {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for VdsoFunction {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        match name.as_str() {
            "other" => Ok(VdsoFunction::Other),
            _ => TimeCall::from_name(&name)
                .map(VdsoFunction::Call)
                .ok_or_else(|| {
                    serde::de::Error::invalid_value(
                        serde::de::Unexpected::Str(&name),
                        &"a time call or other",
                    )
                }),
        }
    }
}

impl ProcessReport {
    /// The FLAG words of the faults, in order.
    pub fn flag_words(&self) -> Vec<&'static str> {
        self.flags.iter().map(|r| r.flag()).collect()
    }
}

fn flag_words<S: serde::Serializer>(
    flags: &[FallbackReason],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(flags.iter().map(|r| r.flag()))
}

fn from_flag_words<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<FallbackReason>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|word| {
            FallbackReason::from_flag(word).ok_or_else(|| {
                serde::de::Error::invalid_value(serde::de::Unexpected::Str(word), &"a FLAG word")
            })
        })
        .collect()
}
