//! Prometheus metrics: monotonic counters kept across windows, bounded in
//! cardinality, rendered in the text exposition format 0.0.4.
//!
//! Two families carry the counts. `vdso_observer_kernel_time_calls_total` is
//! complete: every process's calls, summed per `comm` (distinct names capped, the
//! rest as `(other)`). `vdso_observer_process_kernel_time_calls_total` adds a `pid`
//! label for the few processes worth one: the top K of a window and every flagged
//! one, capped. A process keeps its series until a grace period after it exits,
//! so its final value is scraped; counters never go down while a series lives.
//! `vdso_observer_container_*` sum the same counts per container (`container_id`,
//! `pod_uid`, `runtime`; distinct containers capped, the rest as `(other)`), the
//! series a fleet joins with kube-state-metrics to name pods.

use std::{collections::BTreeMap, time::Instant};

use vdso_observer_common::ProcessKey;

use vdso_observer_common::TimeCall;

pub use self::series::OTHER_CONTAINER;
use self::{
    exposition::Exposition,
    series::{ContainerLabels, Counts, GroupSeries, ProcessSeries},
};
use super::config::SeriesLimits;
use crate::metric_families as families;
use crate::model::{
    ClockEventKind, ClocksourceState, ExitHandoffs, ObserverStats, ProbeStatus, ProcessReport,
    ProgramRuns, Report, RunStats, VdsoCapability, VsyscallMode,
};

mod exposition;
mod series;

/// `comm` label of the processes beyond `max_comms`.
pub const OTHER_COMM: &str = "(other)";

/// State the daemon keeps between windows.
#[derive(Debug, Default)]
pub struct Exporter {
    comms: BTreeMap<String, GroupSeries>,
    containers: BTreeMap<ContainerLabels, GroupSeries>,
    processes: BTreeMap<ProcessKey, ProcessSeries>,
    lost: ObserverStats,
    exit_handoffs: ExitHandoffs,
    processes_not_tracked: u64,
    pub collections: u64,
    pub last_collection_seconds: f64,
    pub textfile_write_errors: u64,
    clocksource_changes: u64,
    clock_events: BTreeMap<ClockEventKind, u64>,
}

/// What the daemon knows about the machine and itself, besides the counts.
#[derive(Debug, Clone)]
pub struct Facts {
    pub clocksource: Option<ClocksourceState>,
    /// Measured (or, failing that, tabled) vDSO capability of the clocksource.
    pub vdso_capable: Option<bool>,
    pub vsyscall: VsyscallMode,
    pub probes: Vec<ProbeStatus>,
    pub map_entries: usize,
    pub map_capacity: u32,
    pub kernel_release: String,
    /// The node's name (NODE_NAME in a DaemonSet, else the host name).
    pub node: String,
    /// Whether /dev/kmsg could be read: without it clock events (TSC marked
    /// unstable, switches) go unseen.
    pub kernel_log_readable: bool,
    /// Boot parameters that decide time calls (`clocksource=hpet`, `tsc=unstable`, ...).
    pub boot_settings: Vec<String>,
    /// ns per call by which samples become calls.
    pub vdso_costs: BTreeMap<TimeCall, f64>,
    /// Whether the kernel measures the programs' run time, and what it measured.
    pub run_stats: RunStats,
    pub programs: Vec<ProgramRuns>,
}

impl Facts {
    /// What the report says about the machine and the observer.
    pub fn of(report: &Report) -> Facts {
        let system = report.system.as_ref();
        Facts {
            clocksource: system.and_then(|s| s.clocksource.clone()),
            vdso_capable: system.and_then(|s| s.vdso_capable),
            vsyscall: system.map_or(VsyscallMode::Unknown, |s| s.vsyscall),
            probes: report.observer.probes.clone(),
            map_entries: report.observer.time_call_keys,
            map_capacity: report.observer.time_call_capacity,
            kernel_release: system.map(|s| s.kernel.clone()).unwrap_or_default(),
            node: system.map(|s| s.hostname.clone()).unwrap_or_default(),
            kernel_log_readable: system.is_some_and(|s| s.kernel_log_error.is_none()),
            boot_settings: system.map(|s| s.boot_settings.clone()).unwrap_or_default(),
            vdso_costs: report.observer.vdso_costs.ns_per_call.clone(),
            run_stats: report.observer.run_stats.clone(),
            programs: report.observer.programs.clone(),
        }
    }
}

impl Exporter {
    pub fn new() -> Exporter {
        Exporter::default()
    }

    /// Adds one window's report; `exited` lists processes found gone this window
    /// (with or without calls in it).
    pub fn update(
        &mut self,
        report: &Report,
        exited: &[ProcessKey],
        limits: &SeriesLimits,
        now: Instant,
    ) {
        let mut ranked: Vec<&ProcessReport> = report.processes.iter().collect();
        ranked.sort_by_key(|p| std::cmp::Reverse(p.kernel_entries));
        // Rank among the processes that may get pid series: getrandom-only ones
        // (every process's start-up) do not push real ones out of the top K.
        let mut rank = 0;
        for process in ranked {
            self.add_to_comm(process, limits, now);
            self.add_to_container(process, limits, now);
            let id = ProcessKey {
                tgid: process.pid,
                start_boottime_ns: process.start_boottime_ns,
                exec_id: process.exec_id,
            };
            // A merged row of exited processes (pid 0) is no process to follow.
            let eligible = (limits.getrandom_only_processes || !process.only_getrandom)
                && process.merged_processes.is_none();
            let deserves = eligible && (rank < limits.top_processes || !process.flags.is_empty());
            if eligible {
                rank += 1;
            }
            let tracked = self.processes.contains_key(&id);
            if !tracked && deserves {
                if self.processes.len() < limits.max_processes {
                    self.processes.insert(
                        id,
                        ProcessSeries {
                            comm: process.comm.clone(),
                            counts: Counts::default(),
                            exited_at: None,
                        },
                    );
                } else {
                    self.processes_not_tracked += 1;
                }
            }
            if let Some(series) = self.processes.get_mut(&id) {
                series.counts.add(process);
            }
        }
        for id in exited {
            if let Some(series) = self.processes.get_mut(id) {
                series.exited_at.get_or_insert(now);
            }
        }
        self.processes.retain(|_, series| {
            series
                .exited_at
                .is_none_or(|at| now.duration_since(at) < limits.exited_grace)
        });
        self.comms
            .retain(|_, series| now.duration_since(series.last_increase) < limits.idle_comm_retire);
        self.containers.retain(|_, series| {
            now.duration_since(series.last_increase) < limits.idle_container_retire
        });

        let lost = report.observer.lost;
        self.lost.time_calls_map_full += lost.time_calls_map_full;
        self.lost.processes_map_full += lost.processes_map_full;
        self.lost.read_failed += lost.read_failed;
        self.lost.vdso_calls_map_full += lost.vdso_calls_map_full;
        self.lost.vdso_samples_unattributed += lost.vdso_samples_unattributed;
        let exits = report.observer.exit_handoffs;
        self.exit_handoffs.handed += exits.handed;
        self.exit_handoffs.ring_full += exits.ring_full;
    }

    fn add_to_comm(&mut self, process: &ProcessReport, limits: &SeriesLimits, now: Instant) {
        let comm = if self.comms.contains_key(&process.comm) || self.comms.len() < limits.max_comms
        {
            process.comm.clone()
        } else {
            OTHER_COMM.to_owned()
        };
        let series = self
            .comms
            .entry(comm)
            .or_insert_with(|| GroupSeries::new(now));
        series.last_increase = now;
        series.counts.add(process);
    }

    /// Processes outside containers have no container series: the per-comm
    /// families hold them.
    fn add_to_container(&mut self, process: &ProcessReport, limits: &SeriesLimits, now: Instant) {
        let Some(container) = &process.container else {
            return;
        };
        let labels = ContainerLabels::of(container);
        // Names found after the first window: the series carries on under
        // them (same counts, one label set at a time).
        if !labels.names.is_empty() && !self.containers.contains_key(&labels) {
            let unnamed = self
                .containers
                .keys()
                .find(|known| known.same_container(&labels) && known.names.is_empty())
                .cloned();
            if let Some(unnamed) = unnamed
                && let Some(series) = self.containers.remove(&unnamed)
            {
                self.containers.insert(labels.clone(), series);
            }
        }
        let labels = if self.containers.contains_key(&labels)
            || self.containers.len() < limits.max_containers
        {
            labels
        } else {
            ContainerLabels::other()
        };
        let series = self
            .containers
            .entry(labels)
            .or_insert_with(|| GroupSeries::new(now));
        series.last_increase = now;
        series.counts.add(process);
    }

    /// One clock event of the kind `ClockWatch` reports.
    pub fn count_clock_event(&mut self, kind: ClockEventKind) {
        *self.clock_events.entry(kind).or_default() += 1;
        if kind == ClockEventKind::SysfsChange {
            self.clocksource_changes += 1;
        }
    }

    /// Processes with their own series right now.
    #[cfg(test)]
    pub fn tracked_processes(&self) -> usize {
        self.processes.len()
    }

    pub fn render(&self, facts: &Facts) -> String {
        let mut out = Exposition::default();
        self.render_counts(&mut out);
        self.render_excess(&mut out);
        self.render_machine(&mut out, facts);
        self.render_observer(&mut out, facts);
        out.finish()
    }

    /// The machine's time set-up: clocksource, vDSO capability, clock events,
    /// vsyscall mode, boot parameters, kernel log.
    fn render_machine(&self, out: &mut Exposition, facts: &Facts) {
        out.family(&families::VDSO_CALL_COST_SECONDS);
        for (call, ns) in &facts.vdso_costs {
            out.sample(&[("call", call.name())], ns / 1e9);
        }

        if let Some(clocksource) = &facts.clocksource {
            out.family(&families::CLOCKSOURCE_INFO);
            let capability = match clocksource.vdso_capability {
                VdsoCapability::Yes => "yes",
                VdsoCapability::No => "no",
                VdsoCapability::Conditional => "conditional",
                VdsoCapability::Unknown => "unknown",
            };
            out.sample(
                &[
                    ("clocksource", &clocksource.current),
                    ("vdso_capability", capability),
                ],
                1.0,
            );
            out.family(&families::CLOCKSOURCE_VDSO_CAPABLE);
            if let Some(capable) = facts.vdso_capable {
                out.sample(&[], if capable { 1.0 } else { 0.0 });
            }
            // Available clocksources: node_exporter's
            // node_time_clocksource_available_info says it already.
        }
        out.family(&families::CLOCKSOURCE_CHANGES_TOTAL);
        out.sample(&[], self.clocksource_changes as f64);
        out.family(&families::CLOCK_EVENTS_TOTAL);
        for kind in ClockEventKind::ALL {
            out.sample(
                &[("kind", kind.name())],
                self.clock_events.get(&kind).copied().unwrap_or(0) as f64,
            );
        }
        out.family(&families::KERNEL_LOG_READABLE);
        out.sample(&[], if facts.kernel_log_readable { 1.0 } else { 0.0 });
        out.family(&families::VSYSCALL_MODE_INFO);
        out.sample(&[("mode", facts.vsyscall.name())], 1.0);

        out.family(&families::BOOT_PARAMETER_INFO);
        for parameter in &facts.boot_settings {
            out.sample(&[("parameter", parameter)], 1.0);
        }
        out.family(&families::BUILD_INFO);
        out.sample(
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("kernel", &facts.kernel_release),
                ("node", &facts.node),
            ],
            1.0,
        );
    }

    /// The observer's own health: probes, losses, map use, series, collections.
    fn render_observer(&self, out: &mut Exposition, facts: &Facts) {
        out.family(&families::PROBE_ATTACHED);
        for probe in &facts.probes {
            out.sample(
                &[("probe", &probe.attach_point)],
                if probe.attached { 1.0 } else { 0.0 },
            );
        }
        out.family(&families::BPF_RUN_STATS_ENABLED);
        out.sample(
            &[],
            if matches!(facts.run_stats, RunStats::Unavailable(_) | RunStats::Off) {
                0.0
            } else {
                1.0
            },
        );
        out.family(&families::BPF_RUN_SECONDS_TOTAL);
        for program in &facts.programs {
            out.sample(
                &[("program", &program.program)],
                program.run_time_ns as f64 / 1e9,
            );
        }
        out.family(&families::BPF_RUNS_TOTAL);
        for program in &facts.programs {
            out.sample(&[("program", &program.program)], program.runs as f64);
        }
        out.family(&families::LOST_TIME_CALLS_TOTAL);
        out.sample(
            &[("cause", "map_full")],
            self.lost.time_calls_map_full as f64,
        );
        out.sample(&[("cause", "read_failed")], self.lost.read_failed as f64);
        out.sample(
            &[("cause", "vdso_map_full")],
            self.lost.vdso_calls_map_full as f64,
        );
        out.family(&families::UNATTRIBUTED_VDSO_SAMPLES_TOTAL);
        out.sample(&[], self.lost.vdso_samples_unattributed as f64);
        out.family(&families::UNNAMED_PROCESSES_TOTAL);
        out.sample(&[], self.lost.processes_map_full as f64);
        out.family(&families::EXIT_HANDOFFS_TOTAL);
        out.sample(&[("result", "handed")], self.exit_handoffs.handed as f64);
        out.sample(
            &[("result", "ring_full")],
            self.exit_handoffs.ring_full as f64,
        );
        out.family(&families::MAP_ENTRIES);
        out.sample(&[("map", "time_calls")], facts.map_entries as f64);
        out.family(&families::MAP_CAPACITY);
        out.sample(&[("map", "time_calls")], f64::from(facts.map_capacity));
        out.family(&families::TRACKED_PROCESSES);
        out.sample(&[], self.processes.len() as f64);
        out.family(&families::UNTRACKED_PROCESSES_TOTAL);
        out.sample(&[], self.processes_not_tracked as f64);
        out.family(&families::TRACKED_CONTAINERS);
        out.sample(
            &[],
            self.containers
                .keys()
                .filter(|c| c.id != OTHER_CONTAINER)
                .count() as f64,
        );
        out.family(&families::COLLECTIONS_TOTAL);
        out.sample(&[], self.collections as f64);
        out.family(&families::COLLECTION_DURATION_SECONDS);
        out.sample(&[], self.last_collection_seconds);
        out.family(&families::TEXTFILE_WRITE_ERRORS_TOTAL);
        out.sample(&[], self.textfile_write_errors as f64);
    }
    /// The excess CPU families, per comm, container and pid.
    fn render_excess(&self, out: &mut Exposition) {
        out.family(&families::EXCESS_CPU_SECONDS_TOTAL);
        for (comm, series) in &self.comms {
            out.sample(&[("comm", comm)], series.counts.excess_seconds);
        }
        out.family(&families::CONTAINER_EXCESS_CPU_SECONDS_TOTAL);
        for (container, series) in &self.containers {
            out.sample(&container.pairs(), series.counts.excess_seconds);
        }
        out.family(&families::PROCESS_EXCESS_CPU_SECONDS_TOTAL);
        for (id, series) in self.labelled_processes() {
            let pid = id.tgid.to_string();
            out.sample(
                &[("pid", &pid), ("comm", &series.comm)],
                series.counts.excess_seconds,
            );
        }
    }

    /// The pid series to show: of two images of one pid with one comm (an
    /// exec of itself, a reused pid within the grace period) only the newest,
    /// so no two series of a family share a label set.
    fn labelled_processes(&self) -> impl Iterator<Item = (&ProcessKey, &ProcessSeries)> {
        let mut newest: BTreeMap<(u32, &str), (&ProcessKey, &ProcessSeries)> = BTreeMap::new();
        for (id, series) in &self.processes {
            let slot = newest
                .entry((id.tgid, series.comm.as_str()))
                .or_insert((id, series));
            if (id.start_boottime_ns, id.exec_id) > (slot.0.start_boottime_ns, slot.0.exec_id) {
                *slot = (id, series);
            }
        }
        newest.into_values()
    }

    /// The six count families: kernel entries and vDSO-answered calls, per comm
    /// (complete), per container (every containerised process) and per pid (the
    /// few that earned a series).
    fn render_counts(&self, out: &mut Exposition) {
        out.family(&families::KERNEL_TIME_CALLS_TOTAL);
        for (comm, series) in &self.comms {
            for (labels, count) in &series.counts.kernel {
                out.sample_parts(&[("comm", comm)], &labels.pairs(), *count as f64);
            }
        }
        out.family(&families::PROCESS_KERNEL_TIME_CALLS_TOTAL);
        for (id, series) in self.labelled_processes() {
            let pid = id.tgid.to_string();
            for (labels, count) in &series.counts.kernel {
                out.sample_parts(
                    &[("pid", &pid), ("comm", &series.comm)],
                    &labels.pairs(),
                    *count as f64,
                );
            }
        }
        out.family(&families::CONTAINER_KERNEL_TIME_CALLS_TOTAL);
        for (container, series) in &self.containers {
            for (labels, count) in &series.counts.kernel {
                out.sample_parts(&container.pairs(), &labels.pairs(), *count as f64);
            }
        }
        out.family(&families::VDSO_TIME_CALLS_TOTAL);
        for (comm, series) in &self.comms {
            for (labels, calls) in &series.counts.vdso {
                out.sample_parts(&[("comm", comm)], &labels.pairs(), *calls);
            }
        }
        out.family(&families::CONTAINER_VDSO_TIME_CALLS_TOTAL);
        for (container, series) in &self.containers {
            for (labels, calls) in &series.counts.vdso {
                out.sample_parts(&container.pairs(), &labels.pairs(), *calls);
            }
        }
        out.family(&families::PROCESS_VDSO_TIME_CALLS_TOTAL);
        for (id, series) in self.labelled_processes() {
            let pid = id.tgid.to_string();
            for (labels, calls) in &series.counts.vdso {
                out.sample_parts(
                    &[("pid", &pid), ("comm", &series.comm)],
                    &labels.pairs(),
                    *calls,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
