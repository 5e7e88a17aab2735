//! From cumulative map counters to per-process reports of one window.
//!
//! The kernel side keeps counters that only grow; [`Aggregator`] turns two
//! snapshots into the counts of the window between them, groups them per process,
//! names and judges them, and says which processes are gone so their counters can
//! be dropped from the maps once reported.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use serde::Serialize;
use vdso_observer_common::{
    CallKey, NO_CLOCK, Origin, ProcessKey, Provenance, SyscallAbi, TimeCall, VdsoKey,
};

use crate::{
    calibrate::VdsoCosts,
    classify::{self, FallbackReason},
    clocks::clock_name,
    exact::ExactState,
    loader::{MapSnapshot, ObserverStats, ProbeStatus, VdsoCheck, VdsoModel},
    procfs,
    system::{ClockEvent, ClocksourceState, VsyscallMode},
    users,
};

/// Version of the JSON documents; bumped when a field changes meaning or goes away.
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// One window, every process that entered the kernel for time during it.
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
pub struct SystemReport {
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

#[derive(Debug, Clone, Serialize)]
pub struct ObserverHealth {
    pub probes: Vec<ProbeStatus>,
    /// Counted in this window by the programs about themselves.
    pub lost: ObserverStats,
    /// Counters in use in the kernel map, and its capacity.
    pub time_call_keys: usize,
    pub time_call_capacity: u32,
    /// Time one vDSO sample stands for; null when sampling is off.
    pub vdso_sample_period_ns: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
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
    /// vDSO-answered calls by call, clock and provenance.
    pub vdso_calls: Vec<VdsoCallCount>,
    /// Relative uncertainty of a sampled estimate (1/√samples); null when exact.
    pub vdso_uncertainty: Option<f64>,
    /// Exact counting of this process (`--exact`, `--exact-pid`); null when not asked.
    pub exact: Option<ExactState>,
    pub by_origin: OriginCounts,
    pub calls: Vec<CallCount>,
    /// Names of the clocks passed to clock_gettime / clock_getres.
    pub clocks: Vec<String>,
    /// Every cause seen, faults and informational ones.
    pub reasons: Vec<FallbackReason>,
    /// Short words for the faults among `reasons`.
    pub flags: Vec<&'static str>,
}

impl ProcessReport {
    /// Kernel entries for time calls proper (getrandom left out).
    pub fn time_kernel_entries(&self) -> u64 {
        self.kernel_entries - self.getrandom_entries
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OriginCounts {
    pub vdso_fallback: u64,
    pub direct: u64,
    pub no_vdso: u64,
    pub legacy_vsyscall: u64,
}

impl OriginCounts {
    fn add(&mut self, origin: Origin, count: u64) {
        *match origin {
            Origin::VdsoFallback => &mut self.vdso_fallback,
            Origin::Direct => &mut self.direct,
            Origin::NoVdso => &mut self.no_vdso,
            Origin::LegacyVsyscall => &mut self.legacy_vsyscall,
        } += count;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CallCount {
    pub call: &'static str,
    pub abi: &'static str,
    /// Clock name, null for calls without a clock argument.
    pub clock: Option<String>,
    pub clock_id: Option<i32>,
    pub origin: &'static str,
    pub reason: Option<FallbackReason>,
    pub count: u64,
    pub per_sec: f64,
}

/// One row of vDSO-answered calls of a process.
#[derive(Debug, Clone, Serialize)]
pub struct VdsoCallCount {
    pub call: &'static str,
    /// Clock name when the probe could read it.
    pub clock: Option<String>,
    /// `sampled` (estimate), `uprobe` or `breakpoint` (exact).
    pub provenance: &'static str,
    /// Exact calls the vDSO answered (hits less the vDSO's own kernel entries); null
    /// when estimated.
    pub count: Option<u64>,
    /// cpu-clock samples inside the function; null when exact.
    pub samples: Option<u64>,
    /// Calls in the window: the count, or the estimate from samples.
    pub calls: f64,
    pub per_sec: f64,
}

/// Turns samples into calls: the time one sample stands for over the time one
/// call spends inside the vDSO function.
#[derive(Debug, Clone)]
pub struct VdsoEstimator {
    pub costs: VdsoCosts,
    pub sample_period_ns: u64,
}

impl VdsoEstimator {
    pub fn from_model(model: Option<&VdsoModel>) -> Option<VdsoEstimator> {
        let model = model?;
        Some(VdsoEstimator {
            costs: model.costs.clone(),
            sample_period_ns: model.sample_period_ns?,
        })
    }

    pub fn calls(&self, call: Option<TimeCall>, samples: u64) -> f64 {
        samples as f64 * self.sample_period_ns as f64 / self.costs.ns(call)
    }
}

/// Turns successive [`MapSnapshot`]s into [`Report`]s of the windows between them.
#[derive(Debug, Default)]
pub struct Aggregator {
    /// Counter values at the end of the previous window.
    previous: HashMap<CallKey, u64>,
    previous_vdso: HashMap<VdsoKey, u64>,
    previous_stats: ObserverStats,
    /// Names already resolved, for processes whose name entry was lost.
    names: HashMap<ProcessKey, Identity>,
    estimator: Option<VdsoEstimator>,
    thresholds: Thresholds,
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
            .filter(|r| r.is_fault() && share_ok && rate_of(**r) >= self.min_rate_per_sec)
            .map(|r| r.flag())
            .collect();
    }
}

/// What to delete from the maps after a report: processes gone and their keys.
#[derive(Debug, Default)]
pub struct Retired {
    pub processes: Vec<ProcessKey>,
    pub keys: Vec<CallKey>,
    pub vdso_keys: Vec<VdsoKey>,
}

/// One process's deltas in a window, before they become a [`ProcessReport`].
#[derive(Default)]
struct Deltas {
    calls: Vec<(CallKey, u64)>,
    vdso: Vec<(VdsoKey, u64)>,
}

impl Aggregator {
    pub fn new(estimator: Option<VdsoEstimator>) -> Aggregator {
        Aggregator {
            estimator,
            ..Aggregator::default()
        }
    }

    /// Starts the first window now: what the maps hold already (counted while
    /// the observer was starting) belongs to no window.
    pub fn prime(&mut self, snapshot: &MapSnapshot) {
        self.previous = snapshot.calls.clone();
        self.previous_vdso = snapshot.vdso.clone();
        self.previous_stats = snapshot.stats;
    }

    pub fn set_thresholds(&mut self, thresholds: Thresholds) {
        self.thresholds = thresholds;
    }

    /// The report of the window that ends with `snapshot`, and what can now be
    /// forgotten. `is_running` tells whether a process image still runs.
    pub fn window(
        &mut self,
        snapshot: &MapSnapshot,
        window: Duration,
        health: ObserverHealthInput,
        is_running: impl Fn(&ProcessKey) -> bool,
    ) -> (Report, Retired) {
        let seconds = window.as_secs_f64().max(1e-9);
        let mut per_process: BTreeMap<ProcessKey, Deltas> = BTreeMap::new();
        for (key, &total) in &snapshot.calls {
            let delta = total.saturating_sub(self.previous.get(key).copied().unwrap_or(0));
            per_process
                .entry(key.process)
                .or_default()
                .calls
                .push((*key, delta));
        }
        for (key, &total) in &snapshot.vdso {
            let delta = total.saturating_sub(self.previous_vdso.get(key).copied().unwrap_or(0));
            per_process
                .entry(key.process)
                .or_default()
                .vdso
                .push((*key, delta));
        }

        let mut retired = Retired::default();
        let mut processes = Vec::new();
        for (process, mut deltas) in per_process {
            let running = is_running(&process);
            if !running {
                retired.processes.push(process);
                retired
                    .keys
                    .extend(deltas.calls.iter().map(|(key, _)| *key));
                retired
                    .vdso_keys
                    .extend(deltas.vdso.iter().map(|(key, _)| *key));
            }
            deltas.calls.retain(|&(_, delta)| delta > 0);
            deltas.vdso.retain(|&(_, delta)| delta > 0);
            if deltas.calls.is_empty() && deltas.vdso.is_empty() {
                continue;
            }
            let identity = self.identity(&process, snapshot, running);
            let mut report = process_report(process, identity, !running, &deltas.calls, seconds);
            add_vdso_calls(&mut report, &deltas.vdso, self.estimator.as_ref(), seconds);
            self.thresholds.apply(&mut report);
            processes.push(report);
        }
        processes.sort_by(|a, b| {
            b.kernel_entries
                .cmp(&a.kernel_entries)
                .then(
                    b.vdso_calls_per_sec
                        .unwrap_or(0.0)
                        .total_cmp(&a.vdso_calls_per_sec.unwrap_or(0.0)),
                )
                .then(a.pid.cmp(&b.pid))
                .then(a.exec_id.cmp(&b.exec_id))
        });

        let since = |now: u64, before: u64| now - before.min(now);
        let (now, before) = (snapshot.stats, self.previous_stats);
        let lost = ObserverStats {
            time_calls_map_full: since(now.time_calls_map_full, before.time_calls_map_full),
            processes_map_full: since(now.processes_map_full, before.processes_map_full),
            read_failed: since(now.read_failed, before.read_failed),
            vdso_calls_map_full: since(now.vdso_calls_map_full, before.vdso_calls_map_full),
        };
        self.previous_stats = snapshot.stats;
        self.previous = snapshot.calls.clone();
        self.previous_vdso = snapshot.vdso.clone();
        for key in &retired.keys {
            self.previous.remove(key);
        }
        for key in &retired.vdso_keys {
            self.previous_vdso.remove(key);
        }
        for process in &retired.processes {
            self.names.remove(process);
        }

        let report = Report {
            schema_version: JSON_SCHEMA_VERSION,
            window_seconds: window.as_secs_f64(),
            timestamp_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default(),
            observer: ObserverHealth {
                probes: health.probes,
                lost,
                time_call_keys: snapshot.calls.len(),
                time_call_capacity: health.time_call_capacity,
                vdso_sample_period_ns: self.estimator.as_ref().map(|e| e.sample_period_ns),
            },
            system: None,
            processes,
        };
        (report, retired)
    }

    fn identity(
        &mut self,
        process: &ProcessKey,
        snapshot: &MapSnapshot,
        running: bool,
    ) -> Identity {
        if let Some(info) = snapshot.names.get(process) {
            let identity = Identity {
                comm: procfs::display_comm(&info.comm),
                uid: Some(info.uid),
            };
            self.names.insert(*process, identity.clone());
            return identity;
        }
        if let Some(identity) = self.names.get(process) {
            return identity.clone();
        }
        // The name map was full when the process first appeared: ask /proc while
        // it still runs.
        if running && let Ok(comm) = std::fs::read(format!("/proc/{}/comm", process.tgid)) {
            let comm: Vec<u8> = comm.strip_suffix(b"\n").unwrap_or(&comm).to_vec();
            let identity = Identity {
                comm: procfs::display_comm(&comm),
                uid: procfs::uid_of(process.tgid),
            };
            self.names.insert(*process, identity.clone());
            return identity;
        }
        Identity {
            comm: "?".to_owned(),
            uid: None,
        }
    }
}

/// Who a process is, as far as the report says.
#[derive(Debug, Clone)]
struct Identity {
    comm: String,
    uid: Option<u32>,
}

/// What the report says about the observer, besides what the maps hold.
#[derive(Debug, Clone)]
pub struct ObserverHealthInput {
    pub probes: Vec<ProbeStatus>,
    pub time_call_capacity: u32,
}

fn process_report(
    process: ProcessKey,
    identity: Identity,
    exited: bool,
    calls: &[(CallKey, u64)],
    seconds: f64,
) -> ProcessReport {
    let mut by_origin = OriginCounts::default();
    let mut clocks = BTreeSet::new();
    let mut reasons = BTreeSet::new();
    let mut rows = Vec::new();
    for &(key, count) in calls {
        let (Some(call), Some(origin), Some(abi)) = (
            TimeCall::from_u8(key.call),
            Origin::from_u8(key.origin),
            SyscallAbi::from_u8(key.abi),
        ) else {
            log::warn!("pid {}: unknown counter key {key:?} ignored", process.tgid);
            continue;
        };
        by_origin.add(origin, count);
        let clock = (key.clock_id != NO_CLOCK).then(|| clock_name(key.clock_id));
        if let Some(name) = &clock {
            clocks.insert((key.clock_id, name.clone()));
        }
        let reason = classify::reason(call, key.clock_id, origin);
        reasons.extend(reason);
        rows.push((
            (call, key.clock_id, origin, abi),
            CallCount {
                call: call.name(),
                abi: abi.name(),
                clock,
                clock_id: (key.clock_id != NO_CLOCK).then_some(key.clock_id),
                origin: origin.name(),
                reason,
                count,
                per_sec: count as f64 / seconds,
            },
        ));
    }
    rows.sort_by_key(|(order, _)| *order);
    let kernel_entries =
        by_origin.vdso_fallback + by_origin.direct + by_origin.no_vdso + by_origin.legacy_vsyscall;
    let getrandom_entries = rows
        .iter()
        .filter(|((call, ..), _)| *call == TimeCall::Getrandom)
        .map(|(_, row)| row.count)
        .sum();
    let reasons: Vec<FallbackReason> = reasons.into_iter().collect();
    ProcessReport {
        pid: process.tgid,
        user: identity.uid.map(users::name_of),
        uid: identity.uid,
        comm: identity.comm,
        exec_id: process.exec_id,
        start_boottime_ns: process.start_boottime_ns,
        exited,
        kernel_entries,
        kernel_entries_per_sec: kernel_entries as f64 / seconds,
        getrandom_entries,
        only_getrandom: kernel_entries > 0 && getrandom_entries == kernel_entries,
        vdso_calls_per_sec: None,
        vdso_estimated: false,
        kernel_share: None,
        vdso_calls: Vec::new(),
        vdso_uncertainty: None,
        exact: None,
        by_origin,
        calls: rows.into_iter().map(|(_, row)| row).collect(),
        clocks: clocks.into_iter().map(|(_, name)| name).collect(),
        flags: reasons
            .iter()
            .filter(|r| r.is_fault())
            .map(|r| r.flag())
            .collect(),
        reasons,
    }
}

/// Fills the vDSO side of a process report: exact hits where a uprobe or
/// breakpoint counted a call, estimates from samples for the rest.
fn add_vdso_calls(
    report: &mut ProcessReport,
    deltas: &[(VdsoKey, u64)],
    estimator: Option<&VdsoEstimator>,
    seconds: f64,
) {
    // Kernel entries the vDSO itself made (or a vDSO-less libc), per call and
    // clock: an exact hit that ended in the kernel was not answered in user space.
    let entered = |call: &str, clock: &Option<String>| -> u64 {
        report
            .calls
            .iter()
            .filter(|c| {
                c.call == call
                    && (c.origin == Origin::VdsoFallback.name()
                        || c.origin == Origin::NoVdso.name())
                    && (clock.is_none() || &c.clock == clock)
            })
            .map(|c| c.count)
            .sum()
    };
    let exact_calls: BTreeSet<u8> = deltas
        .iter()
        .filter(|(k, _)| k.provenance != Provenance::Sampled as u8)
        .map(|(k, _)| k.call)
        .collect();
    let mut rows = Vec::new();
    let mut samples_used = 0u64;
    for &(key, count) in deltas {
        let Some(provenance) = Provenance::from_u8(key.provenance) else {
            continue;
        };
        let call = TimeCall::from_u8(key.call);
        let call_name = call.map_or("other", TimeCall::name);
        let clock = (key.clock_id != NO_CLOCK).then(|| clock_name(key.clock_id));
        if provenance == Provenance::Sampled {
            // Exact counts of the same call win over samples.
            if exact_calls.contains(&key.call) {
                continue;
            }
            let Some(estimator) = estimator else { continue };
            let calls = estimator.calls(call, count);
            samples_used += count;
            rows.push(VdsoCallCount {
                call: call_name,
                clock,
                provenance: provenance.name(),
                count: None,
                samples: Some(count),
                calls,
                per_sec: calls / seconds,
            });
        } else {
            let answered = count.saturating_sub(entered(call_name, &clock));
            rows.push(VdsoCallCount {
                call: call_name,
                clock,
                provenance: provenance.name(),
                count: Some(answered),
                samples: None,
                calls: answered as f64,
                per_sec: answered as f64 / seconds,
            });
        }
    }
    if rows.is_empty() {
        if estimator.is_some() {
            // Sampling is on and saw nothing: an estimate of zero.
            report.vdso_calls_per_sec = Some(0.0);
            report.vdso_estimated = true;
            report.kernel_share = (report.time_kernel_entries() > 0).then_some(1.0);
        }
        return;
    }
    report.only_getrandom = false;
    rows.sort_by(|a, b| b.calls.total_cmp(&a.calls).then(a.call.cmp(b.call)));
    let total: f64 = rows.iter().map(|r| r.calls).sum();
    report.vdso_calls_per_sec = Some(total / seconds);
    report.vdso_estimated = samples_used > 0;
    report.vdso_uncertainty = (samples_used > 0).then(|| 1.0 / (samples_used as f64).sqrt());
    let kernel = report.time_kernel_entries() as f64;
    report.kernel_share = (kernel + total > 0.0).then(|| kernel / (kernel + total));
    report.vdso_calls = rows;
}

/// Snapshots and reports built from plain rows, for the front ends' tests.
#[cfg(test)]
pub mod testing {
    use std::time::Duration;

    use vdso_observer_common::{CallKey, Origin, ProcessInfo, ProcessKey, SyscallAbi, TimeCall};

    use super::{Aggregator, ObserverHealthInput, Report};
    use crate::loader::MapSnapshot;

    /// pid, comm, call, clock id, origin, cumulative count.
    pub type Row<'a> = (u32, &'a [u8], TimeCall, i32, Origin, u64);

    pub fn health() -> ObserverHealthInput {
        ObserverHealthInput {
            probes: vec![],
            time_call_capacity: 100,
        }
    }

    /// One process image per pid (exec 0, started at 1 s), named `comm`, uid 0.
    pub fn snapshot(rows: &[Row]) -> MapSnapshot {
        let mut snapshot = MapSnapshot::default();
        for &(pid, comm, call, clock_id, origin, count) in rows {
            let process = ProcessKey {
                tgid: pid,
                exec_id: 0,
                start_boottime_ns: 1_000_000_000,
            };
            let key = CallKey {
                process,
                clock_id,
                call: call as u8,
                origin: origin as u8,
                abi: SyscallAbi::X86_64 as u8,
                _pad: 0,
            };
            snapshot.calls.insert(key, count);
            let mut name = [0u8; 16];
            name[..comm.len()].copy_from_slice(comm);
            snapshot.names.insert(
                process,
                ProcessInfo {
                    comm: name,
                    uid: 0,
                    _pad: 0,
                },
            );
        }
        snapshot
    }

    /// The next window of `aggregator` over `rows`, every process running or not.
    pub fn window(
        aggregator: &mut Aggregator,
        rows: &[Row],
        window: Duration,
        running: bool,
    ) -> Report {
        aggregator
            .window(&snapshot(rows), window, health(), |_| running)
            .0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdso_observer_common::ProcessInfo;

    fn key(tgid: u32, call: TimeCall, clock_id: i32, origin: Origin) -> CallKey {
        CallKey {
            process: ProcessKey {
                tgid,
                exec_id: 1,
                start_boottime_ns: 5_000_000_000,
            },
            clock_id,
            call: call as u8,
            origin: origin as u8,
            abi: SyscallAbi::X86_64 as u8,
            _pad: 0,
        }
    }

    fn health() -> ObserverHealthInput {
        ObserverHealthInput {
            probes: Vec::new(),
            time_call_capacity: 100,
        }
    }

    fn snapshot(counts: &[(CallKey, u64)]) -> MapSnapshot {
        let mut snapshot = MapSnapshot::default();
        for &(key, count) in counts {
            snapshot.calls.insert(key, count);
            let mut comm = [0u8; 16];
            comm[..4].copy_from_slice(b"work");
            snapshot.names.insert(
                key.process,
                ProcessInfo {
                    comm,
                    uid: 0,
                    _pad: 0,
                },
            );
        }
        snapshot
    }

    #[test]
    fn windows_report_deltas_grouped_per_process_and_sorted() {
        let direct = key(10, TimeCall::ClockGettime, 1, Origin::Direct);
        let cpu = key(10, TimeCall::ClockGettime, 2, Origin::VdsoFallback);
        let other = key(20, TimeCall::Time, NO_CLOCK, Origin::Direct);
        let mut aggregator = Aggregator::new(None);
        let first = snapshot(&[(direct, 100), (cpu, 50), (other, 1)]);
        let (report, retired) =
            aggregator.window(&first, Duration::from_secs(2), health(), |_| true);
        assert!(retired.processes.is_empty());
        assert_eq!(report.processes.len(), 2);
        let top = &report.processes[0];
        assert_eq!((top.pid, top.kernel_entries), (10, 150));
        assert_eq!(top.kernel_entries_per_sec, 75.0);
        assert_eq!(top.by_origin.direct, 100);
        assert_eq!(top.by_origin.vdso_fallback, 50);
        assert_eq!(top.clocks, ["CLOCK_MONOTONIC", "CLOCK_PROCESS_CPUTIME_ID"]);
        assert_eq!(
            top.reasons,
            [
                FallbackReason::DirectSyscall,
                FallbackReason::UnsupportedClock
            ]
        );
        assert_eq!(top.flags, ["direct"]);
        assert_eq!(top.comm, "work");

        // Second window: only what grew is reported; pid 20 made no new calls.
        let second = snapshot(&[(direct, 130), (cpu, 50), (other, 1)]);
        let (report, _) = aggregator.window(&second, Duration::from_secs(1), health(), |_| true);
        assert_eq!(report.processes.len(), 1);
        assert_eq!(report.processes[0].kernel_entries, 30);
        assert_eq!(report.processes[0].calls.len(), 1);
    }

    #[test]
    fn exited_processes_report_their_last_counts_once_then_retire() {
        let direct = key(30, TimeCall::Gettimeofday, NO_CLOCK, Origin::Direct);
        let mut aggregator = Aggregator::new(None);
        let snap = snapshot(&[(direct, 7)]);
        let (report, retired) =
            aggregator.window(&snap, Duration::from_secs(1), health(), |_| false);
        assert_eq!(report.processes[0].kernel_entries, 7);
        assert!(report.processes[0].exited);
        assert_eq!(retired.processes, [direct.process]);
        assert_eq!(retired.keys, [direct]);
        // Once forgotten, a key that shows again (pid and start reused can't
        // collide: start differs) counts from zero.
        let (report, _) = aggregator.window(&snap, Duration::from_secs(1), health(), |_| false);
        assert_eq!(report.processes[0].kernel_entries, 7);
    }

    #[test]
    fn thresholds_decide_which_faults_are_flags() {
        let direct = key(10, TimeCall::ClockGettime, 1, Origin::Direct);
        let mut aggregator = Aggregator::new(None);
        aggregator.set_thresholds(Thresholds {
            min_rate_per_sec: 10.0,
            min_kernel_share: 0.0,
        });
        let (report, _) = aggregator.window(
            &snapshot(&[(direct, 5)]),
            Duration::from_secs(1),
            health(),
            |_| true,
        );
        let process = &report.processes[0];
        assert_eq!(
            process.reasons,
            [FallbackReason::DirectSyscall],
            "the cause is still said"
        );
        assert!(process.flags.is_empty(), "5/s is under the 10/s threshold");
        let (report, _) = aggregator.window(
            &snapshot(&[(direct, 25)]),
            Duration::from_secs(1),
            health(),
            |_| true,
        );
        assert_eq!(report.processes[0].flags, ["direct"]);
    }

    #[test]
    fn getrandom_counts_in_no_share_and_marks_rows_that_only_made_it() {
        let seed = key(40, TimeCall::Getrandom, NO_CLOCK, Origin::Direct);
        let direct = key(41, TimeCall::ClockGettime, 1, Origin::Direct);
        let seed_of_41 = key(41, TimeCall::Getrandom, NO_CLOCK, Origin::Direct);
        let estimator = VdsoEstimator {
            costs: VdsoCosts::default(),
            sample_period_ns: 1_000_000,
        };
        let (report, _) = Aggregator::new(Some(estimator)).window(
            &snapshot(&[(seed, 1), (direct, 3), (seed_of_41, 1)]),
            Duration::from_secs(1),
            health(),
            |_| true,
        );
        let only = report.processes.iter().find(|p| p.pid == 40).unwrap();
        assert!(only.only_getrandom);
        assert_eq!(only.kernel_entries, 1, "JSON keeps every count");
        assert_eq!(only.kernel_share, None, "getrandom is no time call");
        let mixed = report.processes.iter().find(|p| p.pid == 41).unwrap();
        assert!(!mixed.only_getrandom);
        assert_eq!((mixed.kernel_entries, mixed.time_kernel_entries()), (4, 3));
        assert_eq!(mixed.kernel_share, Some(1.0));
        let totals = report.totals();
        assert_eq!(totals.kernel_per_sec, 5.0);
        assert_eq!(totals.time_kernel_per_sec, 3.0);
        assert_eq!(totals.kernel_share(), Some(1.0));
    }

    #[test]
    fn json_field_names_are_stable() {
        let direct = key(10, TimeCall::ClockGettime, 1, Origin::Direct);
        let (report, _) = Aggregator::new(None).window(
            &snapshot(&[(direct, 4)]),
            Duration::from_secs(2),
            health(),
            |_| true,
        );
        let json = serde_json::to_value(&report).unwrap();
        for field in [
            "schema_version",
            "window_seconds",
            "timestamp_unix",
            "observer",
            "processes",
        ] {
            assert!(json.get(field).is_some(), "{field} missing: {json}");
        }
        let process = &json["processes"][0];
        for field in [
            "pid",
            "comm",
            "exec_id",
            "start_boottime_ns",
            "exited",
            "kernel_entries",
            "kernel_entries_per_sec",
            "by_origin",
            "calls",
            "clocks",
            "reasons",
            "flags",
        ] {
            assert!(process.get(field).is_some(), "{field} missing: {process}");
        }
        assert_eq!(process["by_origin"]["direct"], 4);
        assert_eq!(process["by_origin"]["vdso_fallback"], 0);
        let call = &process["calls"][0];
        assert_eq!(call["call"], "clock_gettime");
        assert_eq!(call["clock"], "CLOCK_MONOTONIC");
        assert_eq!(call["clock_id"], 1);
        assert_eq!(call["origin"], "direct");
        assert_eq!(call["reason"], "direct_syscall");
        assert_eq!(call["abi"], "x86_64");
        assert_eq!(call["count"], 4);
        assert_eq!(call["per_sec"], 2.0);
        assert_eq!(process["reasons"][0], "direct_syscall");
        assert_eq!(process["flags"][0], "direct");
        let lost = &json["observer"]["lost"];
        assert_eq!(lost["time_calls_map_full"], 0);
    }
}
