//! From cumulative map counters to per-process reports of one window: a pure
//! step. The kernel side keeps counters that only grow; [`Aggregator`] turns two
//! snapshots into the counts of the window between them, groups them per process,
//! names and judges them, and says which processes are gone so their counters can
//! be dropped from the maps once reported. Who a process is (name, uid, user, and
//! whether it still runs) is asked of a lookup the caller passes in.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use vdso_observer_common::{
    CallKey, NO_CLOCK, Origin, ProcessKey, Provenance, SyscallAbi, TimeCall, VdsoKey,
};

use super::{
    clocks::clock_name,
    comm::display_comm,
    container::Container,
    costs::{PathCosts, VdsoCosts},
    observer::{AttachMode, MapSnapshot, ObserverStats, ProbeStatus, RunStats},
    reason::{self, FallbackReason},
    report::*,
};

/// Turns samples into calls: the time one sample stands for over the time one
/// call spends inside the vDSO function.
#[derive(Debug, Clone)]
pub struct VdsoEstimator {
    pub costs: VdsoCosts,
    pub sample_period_ns: u64,
}

impl VdsoEstimator {
    pub fn calls(&self, abi: SyscallAbi, call: Option<TimeCall>, samples: u64) -> f64 {
        samples as f64 * self.sample_period_ns as f64 / self.costs.ns_in(abi, call)
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
    /// Per-process calls lost (`ProcessInfo::lost`) at the end of the previous window.
    previous_lost: HashMap<ProcessKey, u64>,
    /// Processes that exited during the window and were drained from the maps
    /// before it ended (see [`Aggregator::drain`]): reported with the window.
    drained: BTreeMap<ProcessKey, Deltas>,
    estimator: Option<VdsoEstimator>,
    thresholds: Thresholds,
    /// Processes retired and reported whose keys the kernel did not let user
    /// space delete yet: what the maps still hold of them was counted already.
    held_back: BTreeSet<ProcessKey>,
}

/// What the aggregation asks the host about processes (the host module reads
/// /proc; tests answer from a table).
pub trait ProcessLookup {
    /// Whether the process image a key names still runs.
    fn is_running(&self, process: &ProcessKey) -> bool;
    /// The raw comm and real uid of a running process (for processes the
    /// kernel's name map had no room for); None when the pid now names
    /// another process.
    fn comm_and_uid(&self, process: &ProcessKey) -> Option<(Vec<u8>, Option<u32>)>;
    /// The user name of a uid (the uid as text when there is none).
    fn user_name(&self, uid: u32) -> String;
    /// The cgroup v2 path of a cgroup id (None: unknown, or removed since).
    fn cgroup_path(&self, id: u64) -> Option<String>;
}

/// What to delete from the maps after a report: processes gone and their keys.
#[derive(Debug, Default)]
pub struct Retired {
    pub processes: Vec<ProcessKey>,
    pub keys: Vec<CallKey>,
    pub vdso_keys: Vec<VdsoKey>,
}

impl Retired {
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty() && self.keys.is_empty() && self.vdso_keys.is_empty()
    }

    /// Adds what `other` retires.
    pub fn extend(&mut self, other: Retired) {
        self.processes.extend(other.processes);
        self.keys.extend(other.keys);
        self.vdso_keys.extend(other.vdso_keys);
    }

    /// A gone process and every key it had.
    fn add(&mut self, process: ProcessKey, deltas: &Deltas) {
        self.processes.push(process);
        self.keys.extend(deltas.calls.iter().map(|(key, _)| *key));
        self.vdso_keys
            .extend(deltas.vdso.iter().map(|(key, _)| *key));
    }
}

/// One process's deltas in a window, before they become a [`ProcessReport`].
#[derive(Debug, Default)]
struct Deltas {
    calls: Vec<(CallKey, u64)>,
    vdso: Vec<(VdsoKey, u64)>,
    /// Calls of the process the programs found no room for.
    lost: u64,
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

    /// New costs (after a clocksource change), from the next window on.
    pub fn set_estimator(&mut self, estimator: Option<VdsoEstimator>) {
        self.estimator = estimator;
    }

    pub fn set_thresholds(&mut self, thresholds: Thresholds) {
        self.thresholds = thresholds;
    }

    /// The retired processes whose keys are still in the maps (their deletion
    /// failed and is tried again): left out of every count until they are gone.
    pub fn hold_back(&mut self, left: &Retired) {
        self.held_back = left
            .processes
            .iter()
            .copied()
            .chain(left.keys.iter().map(|key| key.process))
            .chain(left.vdso_keys.iter().map(|key| key.process))
            .collect();
    }

    /// The report of the window that ends with `snapshot`, and what can now be
    /// forgotten. `lookup` says whether a process image still runs and who it is.
    pub fn window(
        &mut self,
        snapshot: &MapSnapshot,
        window: Duration,
        health: ObserverHealthInput,
        lookup: &impl ProcessLookup,
    ) -> (Report, Retired) {
        let seconds = window.as_secs_f64().max(1e-9);
        let mut per_process = self.deltas(snapshot);
        let drained = std::mem::take(&mut self.drained);
        let drained_keys: BTreeSet<ProcessKey> = drained.keys().copied().collect();
        for (process, mut early) in drained {
            // Anything the maps still hold of a drained process (a sample that
            // raced the deletion) joins what was taken early.
            let deltas = per_process.entry(process).or_default();
            deltas.calls.append(&mut early.calls);
            deltas.vdso.append(&mut early.vdso);
            deltas.lost += early.lost;
        }

        let mut retired = Retired::default();
        let mut processes = Vec::new();
        for (process, mut deltas) in per_process {
            let running = !drained_keys.contains(&process) && lookup.is_running(&process);
            if !running {
                retired.add(process, &deltas);
            }
            deltas.calls.retain(|&(_, delta)| delta > 0);
            deltas.vdso.retain(|&(_, delta)| delta > 0);
            if deltas.calls.is_empty() && deltas.vdso.is_empty() && deltas.lost == 0 {
                continue;
            }
            let identity = self.identity(&process, snapshot, running, lookup);
            let user = identity.uid.map(|uid| lookup.user_name(uid));
            let mut report =
                process_report(process, identity, user, !running, &deltas.calls, seconds);
            report.lost_calls = deltas.lost;
            report.excess_cpu_seconds = health
                .path_costs
                .excess_cpu_seconds(report.calls.iter().map(|c| (c.call, c.reason, c.count)));
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
            vdso_samples_unattributed: since(
                now.vdso_samples_unattributed,
                before.vdso_samples_unattributed,
            ),
        };
        self.previous_stats = snapshot.stats;
        self.previous = snapshot.calls.clone();
        self.previous_vdso = snapshot.vdso.clone();
        self.previous_lost = snapshot
            .names
            .iter()
            .map(|(process, info)| (*process, info.lost))
            .collect();
        self.forget_retired(&retired);
        for process in retired.processes.iter().chain(&drained_keys) {
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
                attach_mode: health.attach_mode,
                probes: health.probes,
                lost,
                time_call_keys: snapshot.calls.len(),
                time_call_capacity: health.time_call_capacity,
                vdso_sample_period_ns: self.estimator.as_ref().map(|e| e.sample_period_ns),
                vdso_costs: health.vdso_costs,
                run_stats: health.run_stats,
                programs: snapshot.programs.clone(),
                path_costs: health.path_costs,
            },
            system: None,
            processes,
        };
        (report, retired)
    }

    /// Takes the counts of processes that exited since the window began out
    /// of the maps now, so their keys can be deleted before the window ends:
    /// a machine that forks thousands of short processes a second would
    /// otherwise fill the maps within one window. The counts are reported with
    /// the window, as if read at its end.
    pub fn drain(&mut self, snapshot: &MapSnapshot, lookup: &impl ProcessLookup) -> Retired {
        let mut retired = Retired::default();
        for (process, deltas) in self.deltas(snapshot) {
            if self.drained.contains_key(&process) || lookup.is_running(&process) {
                continue;
            }
            // Named now: the name entry goes with the keys.
            self.identity(&process, snapshot, false, lookup);
            retired.add(process, &deltas);
            self.drained.insert(process, deltas);
        }
        self.forget_retired(&retired);
        retired
    }

    /// Each process's counts since the previous window (zero deltas included:
    /// their keys may need deleting).
    fn deltas(&self, snapshot: &MapSnapshot) -> BTreeMap<ProcessKey, Deltas> {
        let mut per_process: BTreeMap<ProcessKey, Deltas> = BTreeMap::new();
        let held = |process: &ProcessKey| self.held_back.contains(process);
        for (key, &total) in snapshot.calls.iter().filter(|(key, _)| !held(&key.process)) {
            let delta = total.saturating_sub(self.previous.get(key).copied().unwrap_or(0));
            per_process
                .entry(key.process)
                .or_default()
                .calls
                .push((*key, delta));
        }
        for (key, &total) in snapshot.vdso.iter().filter(|(key, _)| !held(&key.process)) {
            let delta = total.saturating_sub(self.previous_vdso.get(key).copied().unwrap_or(0));
            per_process
                .entry(key.process)
                .or_default()
                .vdso
                .push((*key, delta));
        }
        for (process, info) in snapshot.names.iter().filter(|(process, _)| !held(process)) {
            let before = self.previous_lost.get(process).copied().unwrap_or(0);
            if info.lost > before {
                per_process.entry(*process).or_default().lost = info.lost - before;
            }
        }
        per_process
    }

    /// Forgets the last counts of deleted keys: a key made again starts at 0.
    fn forget_retired(&mut self, retired: &Retired) {
        for key in &retired.keys {
            self.previous.remove(key);
        }
        for key in &retired.vdso_keys {
            self.previous_vdso.remove(key);
        }
        for process in &retired.processes {
            self.previous_lost.remove(process);
        }
    }

    fn identity(
        &mut self,
        process: &ProcessKey,
        snapshot: &MapSnapshot,
        running: bool,
        lookup: &impl ProcessLookup,
    ) -> Identity {
        if let Some(info) = snapshot.names.get(process) {
            // The cgroup is resolved once per process: it was recorded at first sight.
            let cgroup = match self.names.get(process) {
                Some(known) => known.cgroup.clone(),
                None => lookup.cgroup_path(info.cgroup_id),
            };
            let identity = Identity {
                comm: display_comm(&info.comm),
                uid: Some(info.uid),
                cgroup,
            };
            self.names.insert(*process, identity.clone());
            return identity;
        }
        if let Some(identity) = self.names.get(process) {
            return identity.clone();
        }
        // The name map was full when the process first appeared: ask the host
        // while it still runs.
        if running && let Some((comm, uid)) = lookup.comm_and_uid(process) {
            let identity = Identity {
                comm: display_comm(&comm),
                uid,
                cgroup: None,
            };
            self.names.insert(*process, identity.clone());
            return identity;
        }
        Identity {
            comm: "?".to_owned(),
            uid: None,
            cgroup: None,
        }
    }
}

/// Who a process is, as far as the report says.
#[derive(Debug, Clone)]
struct Identity {
    comm: String,
    uid: Option<u32>,
    /// Its cgroup v2 path when first seen.
    cgroup: Option<String>,
}

/// What the report says about the observer, besides what the maps hold.
#[derive(Debug, Clone)]
pub struct ObserverHealthInput {
    pub attach_mode: AttachMode,
    pub probes: Vec<ProbeStatus>,
    pub time_call_capacity: u32,
    pub vdso_costs: VdsoCosts,
    pub run_stats: RunStats,
    /// Each call's cost through the vDSO and the kernel: excess CPU.
    pub path_costs: PathCosts,
}

fn process_report(
    process: ProcessKey,
    identity: Identity,
    user: Option<String>,
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
            TimeCall::from_repr(key.call),
            Origin::from_repr(key.origin),
            SyscallAbi::from_repr(key.abi),
        ) else {
            log::warn!("pid {}: unknown counter key {key:?} ignored", process.tgid);
            continue;
        };
        by_origin.add(origin, count);
        let clock = (key.clock_id != NO_CLOCK).then(|| clock_name(key.clock_id));
        if let Some(name) = &clock {
            clocks.insert((key.clock_id, name.clone()));
        }
        let reason = reason::reason(call, key.clock_id, origin, abi);
        reasons.extend(reason);
        rows.push((
            (call, key.clock_id, origin, abi),
            CallCount {
                call,
                abi,
                clock,
                clock_id: (key.clock_id != NO_CLOCK).then_some(key.clock_id),
                origin,
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
        user,
        uid: identity.uid,
        container: identity
            .cgroup
            .as_deref()
            .and_then(Container::from_cgroup_path),
        cgroup: identity.cgroup,
        comm: identity.comm,
        exec_id: process.exec_id,
        start_boottime_ns: process.start_boottime_ns,
        exited,
        lost_calls: 0,
        kernel_entries,
        kernel_entries_per_sec: kernel_entries as f64 / seconds,
        getrandom_entries,
        only_getrandom: kernel_entries > 0 && getrandom_entries == kernel_entries,
        vdso_calls_per_sec: None,
        vdso_estimated: false,
        kernel_share: None,
        excess_cpu_seconds: None,
        vdso_calls: Vec::new(),
        vdso_uncertainty: None,
        exact: None,
        by_origin,
        calls: rows.into_iter().map(|(_, row)| row).collect(),
        clocks: clocks.into_iter().map(|(_, name)| name).collect(),
        flags: reasons.iter().copied().filter(|r| r.is_fault()).collect(),
        reasons,
    }
}

/// Fills the vDSO side of a process report: exact hits where a uprobe or
/// breakpoint counted a call, estimates from samples for the rest (other
/// calls, threads not armed, the time before attaching or after detaching).
fn add_vdso_calls(
    report: &mut ProcessReport,
    deltas: &[(VdsoKey, u64)],
    estimator: Option<&VdsoEstimator>,
    seconds: f64,
) {
    // Kernel entries the vDSO itself made (or a vDSO-less libc), per call and
    // clock: an exact hit that ended in the kernel was not answered in user space.
    let entered = |call: VdsoFunction, clock: &Option<String>| -> u64 {
        report
            .calls
            .iter()
            .filter(|c| {
                VdsoFunction::Call(c.call) == call
                    && matches!(c.origin, Origin::VdsoFallback | Origin::NoVdso)
                    && (clock.is_none() || &c.clock == clock)
            })
            .map(|c| c.count)
            .sum()
    };
    let mut rows = Vec::new();
    let mut samples_used = 0u64;
    let mut i386_sampled = false;
    for &(key, count) in deltas {
        let Some(provenance) = Provenance::from_repr(key.provenance) else {
            continue;
        };
        let call = TimeCall::from_repr(key.call);
        let function = call.map_or(VdsoFunction::Other, VdsoFunction::Call);
        let clock = (key.clock_id != NO_CLOCK).then(|| clock_name(key.clock_id));
        if provenance == Provenance::Sampled {
            // The sampler leaves out what exact counting covered (thread,
            // call, image): samples and exact hits of one call add up.
            let Some(estimator) = estimator else { continue };
            let abi = SyscallAbi::from_repr(key.abi).unwrap_or(SyscallAbi::NATIVE);
            let calls = estimator.calls(abi, call, count);
            samples_used += count;
            i386_sampled |= abi == SyscallAbi::I386;
            rows.push(VdsoCallCount {
                call: function,
                clock,
                provenance,
                count: None,
                samples: Some(count),
                calls,
                per_sec: calls / seconds,
            });
        } else {
            let answered = count.saturating_sub(entered(function, &clock));
            rows.push(VdsoCallCount {
                call: function,
                clock,
                provenance,
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
    rows.sort_by(|a, b| b.calls.total_cmp(&a.calls).then(a.call.cmp(&b.call)));
    let total: f64 = rows.iter().map(|r| r.calls).sum();
    report.vdso_calls_per_sec = Some(total / seconds);
    report.vdso_estimated = samples_used > 0;
    report.vdso_uncertainty = estimator
        .filter(|_| samples_used > 0)
        .map(|e| e.costs.uncertainty(samples_used, i386_sampled));
    let kernel = report.time_kernel_entries() as f64;
    report.kernel_share = (kernel + total > 0.0).then(|| kernel / (kernel + total));
    report.vdso_calls = rows;
}

/// Snapshots and reports built from plain rows, for the front ends' tests.
#[cfg(test)]
pub mod testing {
    use std::time::Duration;

    use vdso_observer_common::{CallKey, Origin, ProcessInfo, ProcessKey, SyscallAbi, TimeCall};

    use super::{Aggregator, AttachMode, ObserverHealthInput, ProcessLookup, Report, RunStats};
    use crate::model::{
        ClocksourceState, MapSnapshot, SystemReport, VdsoCheck, VsyscallMode,
        clocksource_vdso_capability,
    };

    /// The machine of a front-end test, host db1: tsc (vDSO-capable) or hpet
    /// (not), `available: tsc hpet`, vsyscall xonly; `measured` adds the
    /// observer's own check.
    pub fn system(capable: bool, measured: bool) -> SystemReport {
        let current = if capable { "tsc" } else { "hpet" };
        SystemReport {
            hostname: "db1".into(),
            kernel: "6.18.0".into(),
            clocksource: Some(ClocksourceState {
                current: current.into(),
                available: vec!["tsc".into(), "hpet".into()],
                vdso_capability: clocksource_vdso_capability(current).0,
                why: "",
            }),
            vdso_check: measured.then_some(VdsoCheck {
                calls: 100,
                kernel_entries: if capable { 0 } else { 100 },
            }),
            vdso_capable: Some(capable),
            vsyscall: VsyscallMode::Xonly,
            boot_settings: vec![],
            events: vec![],
            kernel_log_error: None,
        }
    }

    /// Every process running (or none), named as the kernel map said, uid 0 = root.
    pub struct Fixed {
        pub running: bool,
    }

    impl ProcessLookup for Fixed {
        fn is_running(&self, _: &ProcessKey) -> bool {
            self.running
        }

        fn comm_and_uid(&self, _: &ProcessKey) -> Option<(Vec<u8>, Option<u32>)> {
            None
        }

        fn user_name(&self, uid: u32) -> String {
            if uid == 0 {
                "root".into()
            } else {
                uid.to_string()
            }
        }

        /// Cgroup id 7 is a podman container; the rest are outside containers.
        fn cgroup_path(&self, id: u64) -> Option<String> {
            (id == 7).then(|| format!("/libpod_parent/libpod-{}", "ab".repeat(32)))
        }
    }

    /// pid, comm, call, clock id, origin, cumulative count.
    pub type Row<'a> = (u32, &'a [u8], TimeCall, i32, Origin, u64);

    pub fn health() -> ObserverHealthInput {
        ObserverHealthInput {
            probes: vec![],
            time_call_capacity: 100,
            vdso_costs: Default::default(),
            run_stats: RunStats::AlreadyOn,
            path_costs: Default::default(),
            attach_mode: AttachMode::RawTracepoint,
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
            snapshot.names.insert(process, ProcessInfo::new(name, 0, 0));
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
            .window(&snapshot(rows), window, health(), &Fixed { running })
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
            vdso_costs: Default::default(),
            run_stats: RunStats::AlreadyOn,
            path_costs: Default::default(),
            attach_mode: AttachMode::RawTracepoint,
        }
    }

    fn snapshot(counts: &[(CallKey, u64)]) -> MapSnapshot {
        let mut snapshot = MapSnapshot::default();
        for &(key, count) in counts {
            snapshot.calls.insert(key, count);
            let mut comm = [0u8; 16];
            comm[..4].copy_from_slice(b"work");
            snapshot
                .names
                .insert(key.process, ProcessInfo::new(comm, 0, 0));
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
        let (report, retired) = aggregator.window(
            &first,
            Duration::from_secs(2),
            health(),
            &testing::Fixed { running: true },
        );
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
        assert_eq!(top.flag_words(), ["direct"]);
        assert_eq!(top.comm, "work");

        // Second window: only what grew is reported; pid 20 made no new calls.
        let second = snapshot(&[(direct, 130), (cpu, 50), (other, 1)]);
        let (report, _) = aggregator.window(
            &second,
            Duration::from_secs(1),
            health(),
            &testing::Fixed { running: true },
        );
        assert_eq!(report.processes.len(), 1);
        assert_eq!(report.processes[0].kernel_entries, 30);
        assert_eq!(report.processes[0].calls.len(), 1);
    }

    #[test]
    fn a_process_carries_the_container_of_its_first_cgroup() {
        let inside = key(40, TimeCall::ClockGettime, 1, Origin::Direct);
        let outside = key(41, TimeCall::ClockGettime, 1, Origin::Direct);
        let mut snap = snapshot(&[(inside, 3), (outside, 4)]);
        snap.names.get_mut(&inside.process).unwrap().cgroup_id = 7;
        let mut aggregator = Aggregator::new(None);
        let (report, _) = aggregator.window(
            &snap,
            Duration::from_secs(1),
            health(),
            &testing::Fixed { running: true },
        );
        let row = |pid| report.processes.iter().find(|p| p.pid == pid).unwrap();
        let container = row(40).container.as_ref().expect("podman container");
        assert_eq!(container.id, "ab".repeat(32));
        assert_eq!(container.runtime, super::super::container::Runtime::Podman);
        assert!(
            row(40)
                .cgroup
                .as_deref()
                .unwrap()
                .starts_with("/libpod_parent/")
        );
        assert_eq!((&row(41).container, &row(41).cgroup), (&None, &None));
    }

    #[test]
    fn exited_processes_report_their_last_counts_once_then_retire() {
        let direct = key(30, TimeCall::Gettimeofday, NO_CLOCK, Origin::Direct);
        let mut aggregator = Aggregator::new(None);
        let snap = snapshot(&[(direct, 7)]);
        let (report, retired) = aggregator.window(
            &snap,
            Duration::from_secs(1),
            health(),
            &testing::Fixed { running: false },
        );
        assert_eq!(report.processes[0].kernel_entries, 7);
        assert!(report.processes[0].exited);
        assert_eq!(retired.processes, [direct.process]);
        assert_eq!(retired.keys, [direct]);
        // Once forgotten, a key that shows again (pid and start reused can't
        // collide: start differs) counts from zero.
        let (report, _) = aggregator.window(
            &snap,
            Duration::from_secs(1),
            health(),
            &testing::Fixed { running: false },
        );
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
            &testing::Fixed { running: true },
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
            &testing::Fixed { running: true },
        );
        assert_eq!(report.processes[0].flag_words(), ["direct"]);
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
            &testing::Fixed { running: true },
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
            &testing::Fixed { running: true },
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
