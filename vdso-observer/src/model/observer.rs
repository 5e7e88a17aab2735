//! What the observer reports about itself: its probes, what it lost, what its
//! maps held at one instant, and its measured check of the vDSO.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use vdso_observer_common::{CallKey, ProcessEnd, ProcessInfo, ProcessKey, VdsoKey};

use super::KeyMap;

/// One attach point and whether it is live.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeStatus {
    pub program: Cow<'static, str>,
    pub attach_point: Cow<'static, str>,
    pub attached: bool,
    /// Why it is not attached and what is lost, when it is not.
    pub note: Option<String>,
}

/// Where time syscalls are counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachMode {
    /// fentry where the kernel allows it, else kprobes, else the raw tracepoint.
    #[default]
    Auto,
    /// BPF trampolines on the time syscalls' kernel functions: no other
    /// syscall pays anything (needs BTF and ftrace direct calls).
    Fentry,
    /// kprobes on the same functions: nothing on other syscalls, more per time call.
    Kprobe,
    /// `raw_syscalls:sys_enter`: works everywhere; every syscall on the machine
    /// takes the kernel's traced path.
    RawTracepoint,
}

impl AttachMode {
    pub const ALL: [AttachMode; 4] = [
        AttachMode::Auto,
        AttachMode::Fentry,
        AttachMode::Kprobe,
        AttachMode::RawTracepoint,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Auto => "auto",
            AttachMode::Fentry => "fentry",
            AttachMode::Kprobe => "kprobe",
            AttachMode::RawTracepoint => "raw-tracepoint",
        }
    }

    pub fn parse(text: &str) -> Option<AttachMode> {
        AttachMode::ALL.into_iter().find(|m| m.name() == text)
    }
}

/// What the kernel measured of one of the observer's programs since it was
/// loaded (BPF_ENABLE_STATS): the observer's own cost, per program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramRuns {
    pub program: Cow<'static, str>,
    /// Runs of the program (every syscall for sys_enter, every sample, ...).
    pub runs: u64,
    /// Time spent in it, summed over CPUs.
    pub run_time_ns: u64,
}

impl ProgramRuns {
    /// Mean time of one run; None before the first.
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.run_time_ns as f64 / self.runs as f64)
    }
}

/// Whether the kernel measures the programs' run time, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "note", rename_all = "snake_case")]
pub enum RunStats {
    /// Not asked for (`--bpf-stats` turns them on): measuring costs every run
    /// of every program two clock reads (see the bench).
    Off,
    /// Enabled by the observer for as long as it runs.
    Enabled,
    /// `kernel.bpf_stats_enabled` was already 1.
    AlreadyOn,
    /// Not measured: why (kernel before 5.8, no CAP_SYS_ADMIN).
    Unavailable(String),
}

/// Counters the programs keep about themselves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObserverStats {
    /// Calls not counted because the counter map was full.
    pub time_calls_map_full: u64,
    /// Processes left unnamed because the name map was full.
    pub processes_map_full: u64,
    /// Calls not counted because a memory read failed.
    pub read_failed: u64,
    /// vDSO calls or samples lost because their map was full.
    pub vdso_calls_map_full: u64,
    /// Samples in vDSO code that no time call claims: in no estimate.
    pub vdso_samples_unattributed: u64,
}

/// How exits reached user space: handed by the kernel's exit program (its
/// keys and entry already gone, no syscall each), or left in the maps for the
/// drain because the exit ring was full (nothing lost, more CPU).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitHandoffs {
    pub handed: u64,
    pub ring_full: u64,
}

impl ExitHandoffs {
    /// What happened since `before` (a counter the kernel never lowers).
    pub fn since(self, before: ExitHandoffs) -> ExitHandoffs {
        ExitHandoffs {
            handed: self.handed.saturating_sub(before.handed),
            ring_full: self.ring_full.saturating_sub(before.ring_full),
        }
    }
}

/// Everything read from the maps at one instant.
#[derive(Debug, Clone, Default)]
pub struct MapSnapshot {
    /// Runs and run time of each attached program, cumulative (empty when the
    /// kernel does not measure them).
    pub programs: Vec<ProgramRuns>,
    /// Cumulative count per key since the key was created.
    pub calls: KeyMap<CallKey, u64>,
    pub names: KeyMap<ProcessKey, ProcessInfo>,
    /// Cumulative vDSO samples or exact hits per key.
    pub vdso: KeyMap<VdsoKey, u64>,
    pub stats: ObserverStats,
    /// Exits handed by the kernel, or not for a full ring, since load.
    pub exit_handoffs: ExitHandoffs,
    /// Keys the programs ever created in each counter map (with the deletions
    /// user space made, how full the maps are).
    pub keys_created: KeysCreated,
    /// New keys that went to a process's overflow key (it reached its cap).
    pub overflowed_keys: u64,
}

impl MapSnapshot {
    /// Every process the snapshot holds, with how it ended as its name entry
    /// said when read (before the counters); a process with counters but no
    /// name yet is new, and running.
    pub fn ends_named_first(&self) -> impl Iterator<Item = (ProcessKey, Option<ProcessEnd>)> + '_ {
        let unnamed = self
            .calls
            .keys()
            .map(|key| key.process)
            .chain(self.vdso.keys().map(|key| key.process))
            .filter(|process| !self.names.contains_key(process))
            .map(|process| (process, Some(ProcessEnd::Running)));
        self.names
            .iter()
            .map(|(process, info)| {
                (
                    *process,
                    Some(ProcessEnd::from_repr(info.ended).unwrap_or(ProcessEnd::Running)),
                )
            })
            .chain(unnamed)
    }
}

/// Keys created per counter map since load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeysCreated {
    pub time_calls: u64,
    pub vdso_calls: u64,
    pub processes: u64,
}

/// The calibration child's clock_gettime(CLOCK_MONOTONIC) calls through the
/// vDSO, and how many of them entered the kernel: the measured answer to "can
/// the vDSO read this clocksource".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VdsoCheck {
    pub calls: u64,
    pub kernel_entries: u64,
    /// Whether the kernel's random pool was ready after the child ran
    /// (getrandom without blocking); None where it could not be asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_pool_ready: Option<bool>,
}

impl VdsoCheck {
    /// More than half the calls entering the kernel means the vDSO falls back.
    pub fn vdso_capable(&self) -> bool {
        self.kernel_entries <= self.calls / 2
    }
}

/// What the check measured, in words. Entries beyond the calls are the
/// child's own start-up reads where the pool was not ready: glibc seeds
/// malloc's tcache key from CLOCK_MONOTONIC when getrandom says so (2 reads
/// in a 64-bit process; seen in guests seconds after boot). With the pool
/// ready that cause is ruled out, and the words say so.
impl std::fmt::Display for VdsoCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let calls = "vDSO clock_gettime(CLOCK_MONOTONIC) calls entered the kernel";
        let Some(more) = self.kernel_entries.checked_sub(self.calls) else {
            return write!(f, "{} of {} {calls}", self.kernel_entries, self.calls);
        };
        write!(f, "all {} {calls}", self.calls)?;
        match (more, self.random_pool_ready) {
            (0, _) => Ok(()),
            (_, Some(false)) => write!(
                f,
                ", and {more} clock reads of the calibration child's own start-up (glibc seeds \
                 malloc from the clock while the kernel's random pool is not ready)"
            ),
            (_, Some(true)) => write!(
                f,
                ", and {more} more kernel entries than the child counted, from outside its loop \
                 (not glibc's malloc seeding: the kernel's random pool was ready)"
            ),
            (_, None) => write!(
                f,
                ", and {more} more kernel entries than the child counted, from outside its loop \
                 (glibc seeds malloc from the clock while the kernel's random pool is not ready)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::VdsoCheck;

    #[test]
    fn the_check_says_entries_beyond_the_calls_are_the_childs_own() {
        let check = |calls, kernel_entries, random_pool_ready| {
            VdsoCheck {
                calls,
                kernel_entries,
                random_pool_ready,
            }
            .to_string()
        };
        assert_eq!(
            check(600_000, 12, Some(true)),
            "12 of 600000 vDSO clock_gettime(CLOCK_MONOTONIC) calls entered the kernel"
        );
        assert_eq!(
            check(572_440, 572_440, Some(false)),
            "all 572440 vDSO clock_gettime(CLOCK_MONOTONIC) calls entered the kernel"
        );
        // Measured in the hpet guests: 572 442 entries of 572 440 calls, the
        // pool not ready (qemu64, no RDRAND).
        let more = check(572_440, 572_442, Some(false));
        assert!(
            more.starts_with(
                "all 572440 vDSO clock_gettime(CLOCK_MONOTONIC) calls entered the kernel, \
                 and 2 clock reads of the calibration child's own start-up"
            ),
            "{more}"
        );
        // With the pool ready that is not the cause, and the words say so.
        let unexplained = check(572_440, 572_442, Some(true));
        assert!(
            unexplained.contains("2 more kernel entries than the child counted")
                && unexplained.contains("not glibc's malloc seeding"),
            "{unexplained}"
        );
        assert!(check(10, 11, None).contains("1 more kernel entries"));
    }
}
