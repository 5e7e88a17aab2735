//! From cumulative map counters to per-process reports of one window: a pure
//! step. The kernel side keeps counters that only grow; [`Aggregator`] turns two
//! snapshots into the counts of the window between them, groups them per process,
//! names and judges them, and says which processes are gone so their counters can
//! be dropped from the maps once reported. Who a process is (name, uid, user, and
//! whether it still runs) is asked of a lookup the caller passes in.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use smallvec::SmallVec;
use vdso_observer_common::{
    CLOCK_COARSE_SAMPLED, CLOCK_SHARED_SAMPLED, CallKey, NO_CLOCK, ProcessInfo, ProcessKey,
    Provenance, SyscallAbi, TimeCall, VdsoKey,
};

use super::{
    KeyMap,
    comm::display_comm,
    costs::{PathCosts, VdsoCosts},
    observer::{AttachMode, ExitHandoffs, MapSnapshot, ObserverStats, ProbeStatus, RunStats},
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
    pub fn calls(&self, abi: SyscallAbi, call: Option<TimeCall>, samples: f64) -> f64 {
        samples * self.sample_period_ns as f64 / self.costs.ns_in(abi, call)
    }

    /// A process's 64-bit clock_gettime reads, coarse and fine, from its
    /// samples there. Without a coarse calibration, or with no sample in
    /// coarse-only code, every one is a fine read's.
    pub fn gettime_calls(&self, samples: GettimeSamples) -> GettimeCalls {
        let period = self.sample_period_ns as f64;
        let fine_ns = self
            .costs
            .ns_in(SyscallAbi::NATIVE, Some(TimeCall::ClockGettime));
        let all = (samples.coarse + samples.shared + samples.other) as f64;
        let Some(coarse) = self.costs.coarse.filter(|_| samples.coarse > 0) else {
            return GettimeCalls {
                coarse: 0.0,
                fine: all * period / fine_ns,
            };
        };
        // What a coarse read's samples say moves from run to run between its
        // own code and the code it shares (0.4-0.6 or 1.0-1.3 ns of a call
        // in its own code, the same binary, here), while the whole call holds
        // (2.0-2.4 ns).
        let whole = coarse.marked_ns + coarse.shared_ns;
        if let Some(fallback_shared_ns) = coarse.fallback_shared_ns {
            // Fine reads enter the kernel here: coarse reads from their own
            // and the shared code, less the kernel reads' share of the
            // latter; the rest is the kernel reads' user-space part, priced
            // as whole calls as before (a few calls).
            let rest = (samples.coarse + samples.shared) as f64 * period
                - samples.kernel_reads as f64 * fallback_shared_ns;
            return GettimeCalls {
                coarse: (rest / whole).max(0.0),
                fine: samples.other as f64 * period / fine_ns,
            };
        }
        match coarse.fine_split {
            // Fine reads from the code only they run; coarse reads from the
            // rest, less the fine reads' share of it, at the whole call's price.
            Some(split) => {
                let fine = samples.other as f64 * period / split.own_ns;
                let rest = (samples.coarse + samples.shared) as f64 * period;
                GettimeCalls {
                    coarse: ((rest - fine * split.shared_ns) / whole).max(0.0),
                    fine,
                }
            }
            // Coarse reads from their own code, never more than all the
            // samples buy at the whole call's price; fine reads from the
            // rest, less the coarse reads' expected share of it.
            None => {
                let by_own_code = samples.coarse as f64 * period / coarse.marked_ns;
                let calls = by_own_code.min(all * period / whole);
                let fine_samples =
                    (samples.shared + samples.other) as f64 - calls * coarse.shared_ns / period;
                GettimeCalls {
                    coarse: calls,
                    fine: fine_samples.max(0.0) * period / fine_ns,
                }
            }
        }
    }
}

/// A process's samples of the 64-bit clock_gettime, by the code they fell in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GettimeSamples {
    /// In code only coarse reads run (CLOCK_COARSE_SAMPLED).
    pub coarse: u64,
    /// In code coarse and fine reads both run (CLOCK_SHARED_SAMPLED).
    pub shared: u64,
    /// Elsewhere (NO_CLOCK): all of them where nothing is marked.
    pub other: u64,
    /// Not samples: the process's clock_gettime reads the vDSO sent into the
    /// kernel in the same time (vdso_fallback entries), whose user-space part
    /// has samples here too.
    pub kernel_reads: u64,
}

impl GettimeSamples {
    /// The samples of this kind among `samples` (keys of one process).
    pub fn of<'a>(samples: impl IntoIterator<Item = (&'a VdsoKey, u64)>) -> GettimeSamples {
        let mut found = GettimeSamples::default();
        for (key, count) in samples {
            if !is_gettime_sample(key) {
                continue;
            }
            match key.clock_id {
                CLOCK_COARSE_SAMPLED => found.coarse += count,
                CLOCK_SHARED_SAMPLED => found.shared += count,
                _ => found.other += count,
            }
        }
        found
    }
}

/// A process's 64-bit clock_gettime reads as estimated from its samples.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct GettimeCalls {
    pub coarse: f64,
    pub fine: f64,
}

/// A sample of the 64-bit clock_gettime, split between coarse and fine reads
/// by [`VdsoEstimator::gettime_calls`] rather than priced on its own. Not the
/// overflow key of a process past its key cap: its samples, of whatever
/// code, are priced as fine reads on their own, as before the split.
pub fn is_gettime_sample(key: &VdsoKey) -> bool {
    key.provenance == Provenance::Sampled as u8
        && key.call == TimeCall::ClockGettime as u8
        && key.abi == SyscallAbi::NATIVE as u8
        && matches!(
            key.clock_id,
            CLOCK_COARSE_SAMPLED | CLOCK_SHARED_SAMPLED | NO_CLOCK
        )
}

/// Exited processes a window reports one row each; past this, they are
/// merged by who they were (see [`merged`]).
pub const MAX_EXITED_ROWS: usize = 2048;
/// Of those, the share one kind of process (name, user, cgroup) may take: an
/// exec loop or a fork storm merges early, and leaves the rest their rows.
const KIND_SHARE: usize = 16;

/// Turns successive [`MapSnapshot`]s into [`Report`]s of the windows between them.
#[derive(Debug, Default)]
pub struct Aggregator {
    /// Counter values at the end of the previous window.
    previous: KeyMap<CallKey, u64>,
    previous_vdso: KeyMap<VdsoKey, u64>,
    previous_stats: ObserverStats,
    previous_exit_handoffs: ExitHandoffs,
    /// Names already resolved, for processes whose name entry was lost.
    names: KeyMap<ProcessKey, Identity>,
    /// Per-process calls lost (`ProcessInfo::lost`) at the end of the previous window.
    previous_lost: KeyMap<ProcessKey, u64>,
    /// Processes that exited during the window and were drained from the maps
    /// before it ended (see [`Aggregator::drain`]): reported with the window.
    drained: BTreeMap<ProcessKey, Deltas>,
    /// Exited processes of the window past `max_exited_rows`, by kind.
    merged: MergedExits,
    max_exited_rows: usize,
    /// Own rows given to exited processes this window, in all and by kind.
    exited_rows: usize,
    exited_rows_by_kind: KeyMap<Identity, usize>,
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

/// One process's deltas in a window, before they become a [`ProcessReport`]
/// (most processes have a key or two: no allocation for those).
#[derive(Debug, Default)]
struct Deltas {
    calls: SmallVec<[(CallKey, u64); 2]>,
    vdso: SmallVec<[(VdsoKey, u64); 2]>,
    /// Calls of the process the programs found no room for.
    lost: u64,
}

impl Aggregator {
    pub fn new(estimator: Option<VdsoEstimator>) -> Aggregator {
        Aggregator {
            estimator,
            max_exited_rows: MAX_EXITED_ROWS,
            ..Aggregator::default()
        }
    }

    /// How many exited processes a window reports one row each (the rest merged).
    pub fn set_max_exited_rows(&mut self, rows: usize) {
        self.max_exited_rows = rows;
    }

    /// Starts the first window now: what the maps hold already (counted while
    /// the observer was starting) belongs to no window.
    pub fn prime(&mut self, snapshot: &MapSnapshot) {
        self.previous = snapshot.calls.clone();
        self.previous_vdso = snapshot.vdso.clone();
        self.previous_stats = snapshot.stats;
        self.previous_exit_handoffs = snapshot.exit_handoffs;
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
            let deltas = per_process.of(process);
            deltas.calls.append(&mut early.calls);
            deltas.vdso.append(&mut early.vdso);
            deltas.lost += early.lost;
        }

        let mut retired = Retired::default();
        let mut processes = Vec::with_capacity(per_process.len());
        for (process, at) in per_process.in_process_order() {
            let deltas = &mut per_process.deltas[at];
            let running = !drained_keys.contains(&process) && lookup.is_running(&process);
            if !running {
                retired.add(process, deltas);
            }
            deltas.calls.retain(|(_, delta)| *delta > 0);
            deltas.vdso.retain(|(_, delta)| *delta > 0);
            if deltas.calls.is_empty() && deltas.vdso.is_empty() && deltas.lost == 0 {
                continue;
            }
            if !running
                && !drained_keys.contains(&process)
                && self.merged_by_raw_name(&process, snapshot, deltas, lookup)
            {
                continue;
            }
            let identity = self.identity(&process, snapshot, running, lookup);
            // Drained processes were given their rows when drained.
            if !running && !drained_keys.contains(&process) && !self.own_exited_row(&identity) {
                self.merged.add(identity, deltas);
                continue;
            }
            processes.push(self.row(
                process, identity, !running, deltas, seconds, &health, lookup,
            ));
        }
        self.exited_rows = 0;
        self.exited_rows_by_kind.clear();
        let merged: Vec<_> = self.merged.take().collect();
        for (identity, count, deltas) in merged {
            let mut row = self.row(
                ProcessKey::default(),
                identity,
                true,
                &deltas,
                seconds,
                &health,
                lookup,
            );
            row.merged_processes = Some(count);
            processes.push(row);
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
        let exit_handoffs = snapshot.exit_handoffs.since(self.previous_exit_handoffs);
        self.previous_exit_handoffs = snapshot.exit_handoffs;
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
                exit_handoffs,
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
        let mut per_process = self.deltas(snapshot);
        // Under churn nearly all of them are gone: room for them at once.
        let mut retired = Retired {
            processes: Vec::with_capacity(per_process.len()),
            keys: Vec::with_capacity(per_process.len()),
            vdso_keys: Vec::new(),
        };
        for (process, at) in per_process.in_process_order() {
            if self.drained.contains_key(&process) || lookup.is_running(&process) {
                continue;
            }
            let deltas = &mut per_process.deltas[at];
            retired.add(process, deltas);
            deltas.calls.retain(|(_, delta)| *delta > 0);
            deltas.vdso.retain(|(_, delta)| *delta > 0);
            if deltas.calls.is_empty() && deltas.vdso.is_empty() && deltas.lost == 0 {
                // Nothing of it in this window (it ended before the first): gone.
                self.names.remove(&process);
                continue;
            }
            if self.merged_by_raw_name(&process, snapshot, deltas, lookup) {
                continue;
            }
            // Named now: the name entry goes with the keys.
            let identity = self.exited_identity(&process, snapshot, lookup);
            if self.own_exited_row(&identity) {
                self.names.insert(process, identity);
                self.drained.insert(process, std::mem::take(deltas));
            } else {
                self.merged.add(identity, deltas);
            }
        }
        self.forget_retired(&retired);
        retired
    }

    /// Merges an exited process past the window's row limit (a churn) by the
    /// raw name the kernel recorded, made text once per kind; false when it
    /// may still get a row, or is known by another name.
    fn merged_by_raw_name(
        &mut self,
        process: &ProcessKey,
        snapshot: &MapSnapshot,
        deltas: &Deltas,
        lookup: &impl ProcessLookup,
    ) -> bool {
        if self.exited_rows < self.max_exited_rows || self.names.contains_key(process) {
            return false;
        }
        let Some(info) = snapshot.names.get(process) else {
            return false;
        };
        self.merged
            .add_named(info, || Identity::named(info, None, lookup), deltas);
        true
    }

    /// Whether an exited process of this kind gets a row of its own this
    /// window (then counted), or merges with its kind.
    fn own_exited_row(&mut self, identity: &Identity) -> bool {
        // Past the limit (thousands of exits a second) without hashing the identity.
        if self.exited_rows >= self.max_exited_rows {
            return false;
        }
        let per_kind = (self.max_exited_rows / KIND_SHARE).max(1);
        let of_kind = self.exited_rows_by_kind.get(identity).copied().unwrap_or(0);
        if of_kind >= per_kind {
            return false;
        }
        self.exited_rows += 1;
        // Bounded: at most max_exited_rows kinds get here in a window.
        *self
            .exited_rows_by_kind
            .entry(identity.clone())
            .or_default() += 1;
        true
    }

    /// One row: the process's counts named, priced and judged.
    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        process: ProcessKey,
        identity: Identity,
        exited: bool,
        deltas: &Deltas,
        seconds: f64,
        health: &ObserverHealthInput,
        lookup: &impl ProcessLookup,
    ) -> ProcessReport {
        let user = identity.uid.map(|uid| lookup.user_name(uid));
        let mut report = process_report(process, identity, user, exited, &deltas.calls, seconds);
        report.lost_calls = deltas.lost;
        report.excess_cpu_seconds = health
            .path_costs
            .excess_cpu_seconds(report.calls.iter().map(|c| (c.call, c.reason, c.count)));
        add_vdso_calls(&mut report, &deltas.vdso, self.estimator.as_ref(), seconds);
        self.thresholds.apply(&mut report);
        report
    }

    /// Each process's counts since the previous window (zero deltas included:
    /// their keys may need deleting), by process.
    fn deltas(&self, snapshot: &MapSnapshot) -> PerProcess {
        let mut per_process = PerProcess::with_capacity(snapshot.names.len());
        let held = |process: &ProcessKey| self.held_back.contains(process);
        for (key, &total) in snapshot.calls.iter().filter(|(key, _)| !held(&key.process)) {
            let delta = total.saturating_sub(self.previous.get(key).copied().unwrap_or(0));
            per_process.of(key.process).calls.push((*key, delta));
        }
        for (key, &total) in snapshot.vdso.iter().filter(|(key, _)| !held(&key.process)) {
            let delta = total.saturating_sub(self.previous_vdso.get(key).copied().unwrap_or(0));
            per_process.of(key.process).vdso.push((*key, delta));
        }
        for (process, info) in snapshot.names.iter().filter(|(process, _)| !held(process)) {
            let before = self.previous_lost.get(process).copied().unwrap_or(0);
            if info.lost > before {
                per_process.of(*process).lost = info.lost - before;
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

    /// Who an exited process was, taken out of the names it was known by (a
    /// drain does this for thousands of processes a second: no copy kept).
    fn exited_identity(
        &mut self,
        process: &ProcessKey,
        snapshot: &MapSnapshot,
        lookup: &impl ProcessLookup,
    ) -> Identity {
        let known = self.names.remove(process);
        match snapshot.names.get(process) {
            Some(info) => Identity::named(info, known.map(|k| k.cgroup), lookup),
            None => known.unwrap_or_else(Identity::unknown),
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
            let known = self.names.get(process).map(|k| k.cgroup.clone());
            let identity = Identity::named(info, known, lookup);
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
        Identity::unknown()
    }
}

/// Deltas gathered per process, visited in process order: which exited
/// processes get rows of their own does not depend on a hash. Indexed, not
/// moved about: each is a few hundred bytes, and a drain has thousands.
struct PerProcess {
    index: KeyMap<ProcessKey, usize>,
    deltas: Vec<Deltas>,
}

impl PerProcess {
    fn with_capacity(processes: usize) -> PerProcess {
        PerProcess {
            index: KeyMap::with_capacity_and_hasher(processes, Default::default()),
            deltas: Vec::with_capacity(processes),
        }
    }

    fn len(&self) -> usize {
        self.deltas.len()
    }

    fn of(&mut self, process: ProcessKey) -> &mut Deltas {
        let at = *self.index.entry(process).or_insert_with(|| {
            self.deltas.push(Deltas::default());
            self.deltas.len() - 1
        });
        &mut self.deltas[at]
    }

    /// Each process with where its deltas are, by process.
    fn in_process_order(&self) -> Vec<(ProcessKey, usize)> {
        let mut order: Vec<(ProcessKey, usize)> = self
            .index
            .iter()
            .map(|(process, at)| (*process, *at))
            .collect();
        order.sort_unstable();
        order
    }
}

/// Who a process is, as far as the report says.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Identity {
    comm: String,
    uid: Option<u32>,
    /// Its cgroup v2 path when first seen.
    cgroup: Option<String>,
}

impl Identity {
    /// Who the name map says a process is. The cgroup is resolved once per
    /// process: `known` is what was recorded at first sight.
    fn named(
        info: &ProcessInfo,
        known: Option<Option<String>>,
        lookup: &impl ProcessLookup,
    ) -> Identity {
        Identity {
            comm: display_comm(&info.comm),
            uid: Some(info.uid),
            cgroup: known.unwrap_or_else(|| lookup.cgroup_path(info.cgroup_id)),
        }
    }

    /// A process whose name was never recorded.
    fn unknown() -> Identity {
        Identity {
            comm: "?".to_owned(),
            uid: None,
            cgroup: None,
        }
    }
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

mod merged;
mod rows;
use merged::MergedExits;
use rows::{add_vdso_calls, process_report};

/// Reports made from plain rows, for the front ends' unit tests.
#[doc(hidden)]
pub mod testing;

#[cfg(test)]
mod tests;
