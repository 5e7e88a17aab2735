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
use crate::model::{
    ClockEventKind, ClocksourceState, ObserverStats, ProbeStatus, ProcessReport, ProgramRuns,
    Report, RunStats, VdsoCapability, VsyscallMode,
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
            let eligible = limits.getrandom_only_processes || !process.only_getrandom;
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
        out.family(
            "vdso_observer_vdso_call_cost_seconds",
            "gauge",
            "Time one call stands for when samples are turned into calls, calibrated at start.",
        );
        for (call, ns) in &facts.vdso_costs {
            out.sample(&[("call", call.name())], ns / 1e9);
        }

        if let Some(clocksource) = &facts.clocksource {
            out.family(
                "vdso_observer_clocksource_info",
                "gauge",
                "Current clocksource and whether the vDSO can read it (yes, no, conditional, unknown).",
            );
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
            out.family(
                "vdso_observer_clocksource_vdso_capable",
                "gauge",
                "1 when the vDSO answers clock_gettime in user space (measured by the observer's own calls), 0 when every high-resolution clock read enters the kernel.",
            );
            if let Some(capable) = facts.vdso_capable {
                out.sample(&[], if capable { 1.0 } else { 0.0 });
            }
            // Available clocksources: node_exporter's
            // node_time_clocksource_available_info says it already.
        }
        out.family(
            "vdso_observer_clocksource_changes_total",
            "counter",
            "Changes of the current clocksource seen since the observer started.",
        );
        out.sample(&[], self.clocksource_changes as f64);
        out.family(
            "vdso_observer_clock_events_total",
            "counter",
            "Clock events seen since start: kernel log lines (switched, tsc_unstable, watchdog) and sysfs changes.",
        );
        for kind in ClockEventKind::ALL {
            out.sample(
                &[("kind", kind.name())],
                self.clock_events.get(&kind).copied().unwrap_or(0) as f64,
            );
        }
        out.family(
            "vdso_observer_kernel_log_readable",
            "gauge",
            "1 when the kernel log (/dev/kmsg) is readable; 0 means clock events such as TSC marked unstable go unseen (give CAP_SYSLOG and /dev/kmsg).",
        );
        out.sample(&[], if facts.kernel_log_readable { 1.0 } else { 0.0 });
        out.family(
            "vdso_observer_vsyscall_mode_info",
            "gauge",
            "Legacy vsyscall page mode: xonly, emulate or none.",
        );
        out.sample(&[("mode", facts.vsyscall.name())], 1.0);

        out.family(
            "vdso_observer_boot_parameter_info",
            "gauge",
            "Kernel command-line parameters that decide time calls (clocksource=, tsc=, vdso=, vsyscall=, notsc, ...).",
        );
        for parameter in &facts.boot_settings {
            out.sample(&[("parameter", parameter)], 1.0);
        }
        out.family(
            "vdso_observer_build_info",
            "gauge",
            "Version of vdso-observer and the kernel it runs on.",
        );
        out.sample(
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("kernel", &facts.kernel_release),
            ],
            1.0,
        );
    }

    /// The observer's own health: probes, losses, map use, series, collections.
    fn render_observer(&self, out: &mut Exposition, facts: &Facts) {
        out.family(
            "vdso_observer_probe_attached",
            "gauge",
            "1 when the probe is attached; 0 when attaching it failed (its calls are not counted).",
        );
        for probe in &facts.probes {
            out.sample(
                &[("probe", probe.attach_point)],
                if probe.attached { 1.0 } else { 0.0 },
            );
        }
        out.family(
            "vdso_observer_bpf_run_stats_enabled",
            "gauge",
            "1 when the kernel measures the observer's programs (--bpf-stats, or kernel.bpf_stats_enabled=1); 0 when off or refused (no CAP_SYS_ADMIN).",
        );
        out.sample(
            &[],
            if matches!(facts.run_stats, RunStats::Unavailable(_) | RunStats::Off) {
                0.0
            } else {
                1.0
            },
        );
        out.family(
            "vdso_observer_bpf_run_seconds_total",
            "counter",
            "Time the kernel spent running each of the observer's programs since load, summed over CPUs: the observer's own cost.",
        );
        for program in &facts.programs {
            out.sample(
                &[("program", program.program)],
                program.run_time_ns as f64 / 1e9,
            );
        }
        out.family(
            "vdso_observer_bpf_runs_total",
            "counter",
            "Runs of each of the observer's programs since load (sys_enter: every syscall on the machine).",
        );
        for program in &facts.programs {
            out.sample(&[("program", program.program)], program.runs as f64);
        }
        out.family(
            "vdso_observer_lost_time_calls_total",
            "counter",
            "Kernel-entering time calls the observer could not count, by cause.",
        );
        out.sample(
            &[("cause", "map_full")],
            self.lost.time_calls_map_full as f64,
        );
        out.sample(&[("cause", "read_failed")], self.lost.read_failed as f64);
        out.sample(
            &[("cause", "vdso_map_full")],
            self.lost.vdso_calls_map_full as f64,
        );
        out.family(
            "vdso_observer_unattributed_vdso_samples_total",
            "counter",
            "Samples in vDSO code no time call claims (not even through a helper's return address): in no estimate.",
        );
        out.sample(&[], self.lost.vdso_samples_unattributed as f64);
        out.family(
            "vdso_observer_unnamed_processes_total",
            "counter",
            "Processes whose name could not be stored because the name map was full.",
        );
        out.sample(&[], self.lost.processes_map_full as f64);
        out.family(
            "vdso_observer_map_entries",
            "gauge",
            "Entries in use in the kernel counter map.",
        );
        out.sample(&[("map", "time_calls")], facts.map_entries as f64);
        out.family(
            "vdso_observer_map_capacity",
            "gauge",
            "Capacity of the kernel counter map.",
        );
        out.sample(&[("map", "time_calls")], f64::from(facts.map_capacity));
        out.family(
            "vdso_observer_tracked_processes",
            "gauge",
            "Processes with their own pid-labelled series.",
        );
        out.sample(&[], self.processes.len() as f64);
        out.family(
            "vdso_observer_untracked_processes_total",
            "counter",
            "Times a process deserved a pid-labelled series but the cap (series.max_processes) was reached.",
        );
        out.sample(&[], self.processes_not_tracked as f64);
        out.family(
            "vdso_observer_tracked_containers",
            "gauge",
            "Containers with their own container_id series (at most series.max_containers; the rest as (other)).",
        );
        out.sample(
            &[],
            self.containers
                .keys()
                .filter(|c| c.id != OTHER_CONTAINER)
                .count() as f64,
        );
        out.family(
            "vdso_observer_collections_total",
            "counter",
            "Windows collected since start.",
        );
        out.sample(&[], self.collections as f64);
        out.family(
            "vdso_observer_collection_duration_seconds",
            "gauge",
            "Time the last collection took (reading maps, /proc, rendering).",
        );
        out.sample(&[], self.last_collection_seconds);
        out.family(
            "vdso_observer_textfile_write_errors_total",
            "counter",
            "Failed writes of the node_exporter textfile (the previous file stays).",
        );
        out.sample(&[], self.textfile_write_errors as f64);
    }
    /// The excess CPU families, per comm, container and pid.
    fn render_excess(&self, out: &mut Exposition) {
        out.family(
            "vdso_observer_excess_cpu_seconds_total",
            "counter",
            "CPU time spent because time calls entered the kernel where the vDSO could have answered (kernel entries x (syscall cost - vDSO cost), both measured here at start), per comm.",
        );
        for (comm, series) in &self.comms {
            out.sample(&[("comm", comm)], series.counts.excess_seconds);
        }
        out.family(
            "vdso_observer_container_excess_cpu_seconds_total",
            "counter",
            "The same, per container.",
        );
        for (container, series) in &self.containers {
            out.sample(&container.pairs(), series.counts.excess_seconds);
        }
        out.family(
            "vdso_observer_process_excess_cpu_seconds_total",
            "counter",
            "The same, for the processes with pid series.",
        );
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
        out.family(
            "vdso_observer_kernel_time_calls_total",
            "counter",
            "Time calls that entered the kernel, all processes, summed per comm (names beyond the cap as (other)).",
        );
        for (comm, series) in &self.comms {
            for (labels, count) in &series.counts.kernel {
                out.sample_parts(&[("comm", comm)], &labels.pairs(), *count as f64);
            }
        }
        out.family(
            "vdso_observer_process_kernel_time_calls_total",
            "counter",
            "Time calls that entered the kernel, for the top processes of a window and every flagged one (kept until a grace period after exit).",
        );
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
        out.family(
            "vdso_observer_container_kernel_time_calls_total",
            "counter",
            "Time calls that entered the kernel, processes in containers, summed per container (runtime id; pod UID under kubepods; containers beyond the cap as (other)).",
        );
        for (container, series) in &self.containers {
            for (labels, count) in &series.counts.kernel {
                out.sample_parts(&container.pairs(), &labels.pairs(), *count as f64);
            }
        }
        out.family(
            "vdso_observer_vdso_time_calls_total",
            "counter",
            "Time calls the vDSO answered in user space, per comm; provenance sampled is an estimate from cpu-clock samples, uprobe and breakpoint are exact.",
        );
        for (comm, series) in &self.comms {
            for (labels, calls) in &series.counts.vdso {
                out.sample_parts(&[("comm", comm)], &labels.pairs(), *calls);
            }
        }
        out.family(
            "vdso_observer_container_vdso_time_calls_total",
            "counter",
            "Time calls the vDSO answered in user space, per container (provenance as in vdso_observer_vdso_time_calls_total).",
        );
        for (container, series) in &self.containers {
            for (labels, calls) in &series.counts.vdso {
                out.sample_parts(&container.pairs(), &labels.pairs(), *calls);
            }
        }
        out.family(
            "vdso_observer_process_vdso_time_calls_total",
            "counter",
            "Time calls the vDSO answered, for the processes with pid series.",
        );
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
