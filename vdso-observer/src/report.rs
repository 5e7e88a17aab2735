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
use vdso_observer_common::{CallKey, NO_CLOCK, Origin, ProcessKey, SyscallAbi, TimeCall};

use crate::{
    classify::{self, FallbackReason},
    clocks::clock_name,
    loader::{MapSnapshot, ObserverStats, ProbeStatus},
    procfs, users,
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
    /// Sorted by kernel entries, most first.
    pub processes: Vec<ProcessReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ObserverHealth {
    pub probes: Vec<ProbeStatus>,
    /// Counted in this window by the programs about themselves.
    pub lost: ObserverStats,
    /// Counters in use in the kernel map, and its capacity.
    pub time_call_keys: usize,
    pub time_call_capacity: u32,
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
    pub kernel_entries: u64,
    pub kernel_entries_per_sec: f64,
    /// Time calls the vDSO answered in user space, per second; null when not measured.
    pub vdso_calls_per_sec: Option<f64>,
    /// Whether `vdso_calls_per_sec` is an estimate (sampling) rather than a count.
    pub vdso_estimated: bool,
    /// kernel / (kernel + vDSO) time calls; null without a vDSO figure.
    pub kernel_share: Option<f64>,
    pub by_origin: OriginCounts,
    pub calls: Vec<CallCount>,
    /// Names of the clocks passed to clock_gettime / clock_getres.
    pub clocks: Vec<String>,
    /// Every cause seen, faults and informational ones.
    pub reasons: Vec<FallbackReason>,
    /// Short words for the faults among `reasons`.
    pub flags: Vec<&'static str>,
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

/// Turns successive [`MapSnapshot`]s into [`Report`]s of the windows between them.
#[derive(Debug, Default)]
pub struct Aggregator {
    /// Counter values at the end of the previous window.
    previous: HashMap<CallKey, u64>,
    previous_stats: ObserverStats,
    /// Names already resolved, for processes whose name entry was lost.
    names: HashMap<ProcessKey, Identity>,
}

/// What to delete from the maps after a report: processes gone and their keys.
#[derive(Debug, Default)]
pub struct Retired {
    pub processes: Vec<ProcessKey>,
    pub keys: Vec<CallKey>,
}

impl Aggregator {
    pub fn new() -> Aggregator {
        Aggregator::default()
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
        let mut per_process: BTreeMap<ProcessKey, Vec<(CallKey, u64)>> = BTreeMap::new();
        for (key, &total) in &snapshot.calls {
            let delta = total.saturating_sub(self.previous.get(key).copied().unwrap_or(0));
            per_process
                .entry(key.process)
                .or_default()
                .push((*key, delta));
        }

        let mut retired = Retired::default();
        let mut processes = Vec::new();
        for (process, mut calls) in per_process {
            let running = is_running(&process);
            if !running {
                retired.processes.push(process);
                retired.keys.extend(calls.iter().map(|(key, _)| *key));
            }
            calls.retain(|&(_, delta)| delta > 0);
            if calls.is_empty() {
                continue;
            }
            let identity = self.identity(&process, snapshot, running);
            processes.push(process_report(process, identity, !running, &calls, seconds));
        }
        processes.sort_by(|a, b| {
            b.kernel_entries
                .cmp(&a.kernel_entries)
                .then(a.pid.cmp(&b.pid))
                .then(a.exec_id.cmp(&b.exec_id))
        });

        let lost = ObserverStats {
            time_calls_map_full: snapshot.stats.time_calls_map_full
                - self
                    .previous_stats
                    .time_calls_map_full
                    .min(snapshot.stats.time_calls_map_full),
            processes_map_full: snapshot.stats.processes_map_full
                - self
                    .previous_stats
                    .processes_map_full
                    .min(snapshot.stats.processes_map_full),
            read_failed: snapshot.stats.read_failed
                - self
                    .previous_stats
                    .read_failed
                    .min(snapshot.stats.read_failed),
        };
        self.previous_stats = snapshot.stats;
        self.previous = snapshot.calls.clone();
        for key in &retired.keys {
            self.previous.remove(key);
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
            },
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
        vdso_calls_per_sec: None,
        vdso_estimated: false,
        kernel_share: None,
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
        let mut aggregator = Aggregator::new();
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
        let mut aggregator = Aggregator::new();
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
    fn json_field_names_are_stable() {
        let direct = key(10, TimeCall::ClockGettime, 1, Origin::Direct);
        let (report, _) = Aggregator::new().window(
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
