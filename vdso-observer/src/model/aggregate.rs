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

/// Reports made from plain rows, for the front ends' unit tests.
#[doc(hidden)]
pub mod testing;

#[cfg(test)]
mod tests;
