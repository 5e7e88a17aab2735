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

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    time::Instant,
};

use vdso_observer_common::ProcessKey;

use vdso_observer_common::{Origin, Provenance, TimeCall};

use super::config::SeriesLimits;
use crate::model::{
    CallCount, ClockEventKind, ClocksourceState, Container, FallbackReason, ObserverStats,
    ProbeStatus, ProcessReport, ProgramRuns, Report, RunStats, Runtime, VdsoCapability,
    VdsoFunction, VsyscallMode,
};

/// `comm` label of the processes beyond `max_comms`.
pub const OTHER_COMM: &str = "(other)";
/// `container_id` label of the containers beyond `max_containers`.
pub const OTHER_CONTAINER: &str = "(other)";

/// Labels of the kernel-entry families (besides comm and pid), typed until
/// they are written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct CallLabels {
    call: TimeCall,
    /// Empty for calls without a clock.
    clock: String,
    origin: Origin,
    /// None for getrandom (never judged): `reason="none"`.
    reason: Option<FallbackReason>,
}

impl CallLabels {
    fn of(call: &CallCount) -> CallLabels {
        CallLabels {
            call: call.call,
            clock: call.clock.clone().unwrap_or_default(),
            origin: call.origin,
            reason: call.reason,
        }
    }

    fn pairs(&self) -> [(&'static str, &str); 4] {
        [
            ("call", self.call.name()),
            ("clock", &self.clock),
            ("origin", self.origin.name()),
            ("reason", self.reason.map_or("none", FallbackReason::name)),
        ]
    }
}

/// Labels of the vDSO-answered families (besides comm and pid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct VdsoLabels {
    call: VdsoFunction,
    provenance: Provenance,
}

impl VdsoLabels {
    fn pairs(&self) -> [(&'static str, &'static str); 2] {
        [
            ("call", self.call.name()),
            ("provenance", self.provenance.name()),
        ]
    }
}

/// Monotonic counts of one series owner (a comm, or a process).
#[derive(Debug, Default)]
struct Counts {
    kernel: BTreeMap<CallLabels, u64>,
    /// vDSO-answered calls: exact counts and estimates.
    vdso: BTreeMap<VdsoLabels, f64>,
    /// CPU seconds spent because calls entered the kernel where the vDSO could
    /// have answered.
    excess_seconds: f64,
}

impl Counts {
    /// Adds one window of a process: the one accumulation both families use.
    fn add(&mut self, process: &ProcessReport) {
        for call in &process.calls {
            *self.kernel.entry(CallLabels::of(call)).or_default() += call.count;
        }
        for call in &process.vdso_calls {
            let labels = VdsoLabels {
                call: call.call,
                provenance: call.provenance,
            };
            *self.vdso.entry(labels).or_default() += call.calls;
        }
        self.excess_seconds += process.excess_cpu_seconds.unwrap_or(0.0);
    }
}

#[derive(Debug)]
struct ProcessSeries {
    comm: String,
    counts: Counts,
    exited_at: Option<Instant>,
}

/// Counts of a comm or a container: kept while they grow.
#[derive(Debug)]
struct GroupSeries {
    counts: Counts,
    last_increase: Instant,
}

impl GroupSeries {
    fn new(now: Instant) -> GroupSeries {
        GroupSeries {
            counts: Counts::default(),
            last_increase: now,
        }
    }
}

/// Who a container's series belong to: its labels, typed until printed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ContainerLabels {
    /// The runtime's full id, or `(other)` beyond the cap.
    id: String,
    /// Empty outside kubepods (and for `(other)`).
    pod_uid: String,
    runtime: Option<Runtime>,
}

impl ContainerLabels {
    fn of(container: &Container) -> ContainerLabels {
        ContainerLabels {
            id: container.id.clone(),
            pod_uid: container.pod_uid.clone().unwrap_or_default(),
            runtime: Some(container.runtime),
        }
    }

    fn other() -> ContainerLabels {
        ContainerLabels {
            id: OTHER_CONTAINER.to_owned(),
            pod_uid: String::new(),
            runtime: None,
        }
    }

    fn pairs(&self) -> [(&'static str, &str); 3] {
        [
            ("container_id", &self.id),
            ("pod_uid", &self.pod_uid),
            ("runtime", self.runtime.map_or("", Runtime::name)),
        ]
    }
}

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

/// Text exposition format 0.0.4 builder: HELP and TYPE once per family.
#[derive(Default)]
struct Exposition {
    text: String,
    family: &'static str,
    seen: BTreeSet<&'static str>,
}

impl Exposition {
    fn family(&mut self, name: &'static str, kind: &str, help: &str) {
        debug_assert!(self.seen.insert(name), "family {name} twice");
        self.family = name;
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        self.sample_parts(labels, &[], value);
    }

    /// A sample whose labels come in two parts: the owner's (comm, pid), then
    /// the family's own.
    fn sample_parts(&mut self, owner: &[(&str, &str)], labels: &[(&str, &str)], value: f64) {
        self.text.push_str(self.family);
        if !owner.is_empty() || !labels.is_empty() {
            self.text.push('{');
            for (i, (name, value)) in owner.iter().chain(labels).enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{name}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }

    fn finish(self) -> String {
        self.text
    }
}

/// Label values escape backslash, double quote and newline.
pub fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vdso_observer_common::{NO_CLOCK, Origin, TimeCall};

    use super::*;
    use crate::model::{
        Aggregator,
        aggregate::testing::{self, Row},
    };

    fn facts() -> Facts {
        Facts {
            clocksource: Some(ClocksourceState {
                current: "hpet".into(),
                available: vec!["tsc".into(), "hpet".into()],
                vdso_capability: VdsoCapability::No,
                why: "",
            }),
            vdso_capable: Some(false),
            vsyscall: VsyscallMode::Xonly,
            probes: vec![],
            map_entries: 3,
            map_capacity: 100,
            kernel_release: "6.18.0".into(),
            kernel_log_readable: false,
            boot_settings: vec!["tsc=unstable".into()],
            vdso_costs: BTreeMap::new(),
            run_stats: RunStats::Enabled,
            programs: vec![ProgramRuns {
                program: "time_syscall_enter",
                runs: 2_000_000,
                run_time_ns: 90_000_000,
            }],
        }
    }

    fn report_of(aggregator: &mut Aggregator, rows: &[Row], running: bool) -> Report {
        testing::window(aggregator, rows, Duration::from_secs(1), running)
    }

    fn sample_value(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|line| line.starts_with(prefix))
            .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
    }

    #[test]
    fn counters_accumulate_and_exited_processes_stay_for_the_grace_period() {
        let limits = SeriesLimits {
            exited_grace: Duration::from_secs(10),
            ..Default::default()
        };
        let mut aggregator = Aggregator::new(None);
        let mut exporter = Exporter::new();
        let start = Instant::now();
        let direct = (
            7,
            &b"worker"[..],
            TimeCall::ClockGettime,
            1,
            Origin::Direct,
            100,
        );
        let report = report_of(&mut aggregator, &[direct], true);
        exporter.update(&report, &[], &limits, start);
        let report = report_of(
            &mut aggregator,
            &[(7, b"worker", TimeCall::ClockGettime, 1, Origin::Direct, 250)],
            true,
        );
        exporter.update(&report, &[], &limits, start + Duration::from_secs(1));
        let text = exporter.render(&facts());
        let process = "vdso_observer_process_kernel_time_calls_total{pid=\"7\",comm=\"worker\",call=\"clock_gettime\",clock=\"CLOCK_MONOTONIC\",origin=\"direct\",reason=\"direct_syscall\"}";
        assert_eq!(sample_value(&text, process), Some(250.0), "{text}");
        let comm = "vdso_observer_kernel_time_calls_total{comm=\"worker\",call=\"clock_gettime\"";
        assert_eq!(sample_value(&text, comm), Some(250.0));

        // Exits: stays for the grace period with its final value, then goes.
        exporter.update(
            &report_of(&mut aggregator, &[], false),
            &[ProcessKey {
                tgid: 7,
                exec_id: 0,
                start_boottime_ns: 1_000_000_000,
            }],
            &limits,
            start + Duration::from_secs(2),
        );
        let text = exporter.render(&facts());
        assert_eq!(sample_value(&text, process), Some(250.0));
        exporter.update(
            &report_of(&mut aggregator, &[], false),
            &[],
            &limits,
            start + Duration::from_secs(13),
        );
        let text = exporter.render(&facts());
        assert_eq!(sample_value(&text, process), None);
        // The per-comm total keeps what it counted.
        assert_eq!(sample_value(&text, comm), Some(250.0));
    }

    #[test]
    fn cardinality_is_bounded() {
        let limits = SeriesLimits {
            top_processes: 1,
            max_processes: 2,
            max_comms: 2,
            ..Default::default()
        };
        let mut aggregator = Aggregator::new(None);
        let mut exporter = Exporter::new();
        // CPU-time clocks (never flagged) so only the top 1 earns a pid series.
        let rows: Vec<Row> = (1..=5u32)
            .map(|pid| {
                let names: [&[u8]; 5] = [b"a", b"b", b"c", b"d", b"e"];
                (
                    pid,
                    names[pid as usize - 1],
                    TimeCall::ClockGettime,
                    2,
                    Origin::VdsoFallback,
                    u64::from(pid),
                )
            })
            .collect();
        let report = report_of(&mut aggregator, &rows, true);
        exporter.update(&report, &[], &limits, Instant::now());
        assert_eq!(exporter.tracked_processes(), 1);
        let text = exporter.render(&facts());
        let comms: BTreeSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("vdso_observer_kernel_time_calls_total{"))
            .map(|l| l.split('"').nth(1).unwrap())
            .collect();
        assert_eq!(comms.len(), 3, "{comms:?}");
        assert!(comms.contains(OTHER_COMM));
        // Sum over comm series is the true total: 1+2+3+4+5.
        let total: f64 = text
            .lines()
            .filter(|l| l.starts_with("vdso_observer_kernel_time_calls_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        assert_eq!(total, 15.0);
    }

    #[test]
    fn container_series_sum_per_container_capped_and_retire_when_idle() {
        let limits = SeriesLimits {
            max_containers: 2,
            idle_container_retire: Duration::from_secs(60),
            ..Default::default()
        };
        let mut aggregator = Aggregator::new(None);
        let mut exporter = Exporter::new();
        let rows: Vec<Row> = (1..=5u32)
            .map(|pid| {
                (
                    pid,
                    &b"app"[..],
                    TimeCall::ClockGettime,
                    1,
                    Origin::Direct,
                    u64::from(pid) * 10,
                )
            })
            .collect();
        let mut report = report_of(&mut aggregator, &rows, true);
        // pids 1 and 2 in one pod's container, 3 and 4 in two more, 5 on the host.
        for process in &mut report.processes {
            let id = match process.pid {
                1 | 2 => "a",
                3 => "b",
                4 => "c",
                _ => continue,
            };
            process.container = Some(Container {
                id: id.repeat(64),
                runtime: Runtime::Containerd,
                pod_uid: (id == "a").then(|| "5f1b0c2e-8f7a-4c55-9d1e-0a1b2c3d4e5f".into()),
                qos: None,
            });
        }
        let start = Instant::now();
        exporter.update(&report, &[], &limits, start);
        let text = exporter.render(&facts());
        let family = "vdso_observer_container_kernel_time_calls_total{";
        let series: BTreeMap<&str, f64> = text
            .lines()
            .filter(|l| l.starts_with(family))
            .map(|l| {
                (
                    l.split('"').nth(1).unwrap(),
                    l.rsplit(' ').next().unwrap().parse().unwrap(),
                )
            })
            .collect();
        // Ranked by kernel entries: c (40) and b (30) take the two places,
        // a (10 + 20) arrives third and is summed as (other); the host process has none.
        assert_eq!(
            series,
            BTreeMap::from([
                (&*"c".repeat(64), 40.0),
                (&*"b".repeat(64), 30.0),
                (OTHER_CONTAINER, 30.0)
            ]),
            "{text}"
        );
        let with_labels = format!(
            "{family}container_id=\"{}\",pod_uid=\"\",runtime=\"containerd\",call=\"clock_gettime\",clock=\"CLOCK_MONOTONIC\",origin=\"direct\",reason=\"direct_syscall\"}} 40",
            "c".repeat(64)
        );
        assert!(text.contains(&with_labels), "{text}");
        assert_eq!(
            sample_value(&text, "vdso_observer_tracked_containers "),
            Some(2.0)
        );

        // A minute later with no calls, every container series is gone.
        let idle = report_of(&mut aggregator, &rows, true);
        exporter.update(&idle, &[], &limits, start + Duration::from_secs(61));
        let text = exporter.render(&facts());
        assert!(!text.lines().any(|l| l.starts_with(family)), "{text}");
    }

    #[test]
    fn excess_cpu_accumulates_per_comm_container_and_pid() {
        let limits = SeriesLimits::default();
        let mut aggregator = Aggregator::new(None);
        let mut exporter = Exporter::new();
        let rows: Vec<Row> = vec![(7, &b"db"[..], TimeCall::ClockGettime, 1, Origin::Direct, 10)];
        let mut report = report_of(&mut aggregator, &rows, true);
        report.processes[0].excess_cpu_seconds = Some(0.25);
        report.processes[0].container = Some(Container {
            id: "d".repeat(64),
            runtime: Runtime::Docker,
            pod_uid: None,
            qos: None,
        });
        let now = Instant::now();
        exporter.update(&report, &[], &limits, now);
        exporter.update(&report, &[], &limits, now);
        let text = exporter.render(&facts());
        assert_eq!(
            sample_value(&text, "vdso_observer_excess_cpu_seconds_total{comm=\"db\"}"),
            Some(0.5)
        );
        assert_eq!(
            sample_value(
                &text,
                "vdso_observer_process_excess_cpu_seconds_total{pid=\"7\",comm=\"db\"}"
            ),
            Some(0.5)
        );
        assert!(
            text.contains(&format!(
                "vdso_observer_container_excess_cpu_seconds_total{{container_id=\"{}\",pod_uid=\"\",runtime=\"docker\"}} 0.5\n",
                "d".repeat(64)
            )),
            "{text}"
        );
    }

    /// A process that execs itself is two images of one pid and comm: one
    /// series (the newest), never two with one label set.
    #[test]
    fn two_images_of_one_pid_never_share_a_label_set() {
        let mut aggregator = Aggregator::new(None);
        let mut exporter = Exporter::new();
        let mut report = report_of(
            &mut aggregator,
            &[(7, b"loop", TimeCall::ClockGettime, 1, Origin::Direct, 5)],
            true,
        );
        let mut next = report.processes[0].clone();
        next.exec_id += 1;
        report.processes.push(next);
        exporter.update(&report, &[], &SeriesLimits::default(), Instant::now());
        assert_eq!(exporter.tracked_processes(), 2);
        let text = exporter.render(&facts());
        let samples: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.rsplit_once(' ').unwrap().0)
            .collect();
        let unique: BTreeSet<&str> = samples.iter().copied().collect();
        assert_eq!(unique.len(), samples.len(), "{text}");
        assert_eq!(
            samples
                .iter()
                .filter(|l| l.starts_with("vdso_observer_process_kernel_time_calls_total{"))
                .count(),
            1
        );
    }

    #[test]
    fn getrandom_only_processes_get_no_pid_series_by_default() {
        let mut aggregator = Aggregator::new(None);
        let mut exporter = Exporter::new();
        let rows: Vec<Row> = vec![
            (1, b"ls", TimeCall::Getrandom, NO_CLOCK, Origin::Direct, 1),
            (
                2,
                b"sleep",
                TimeCall::Getrandom,
                NO_CLOCK,
                Origin::Direct,
                1,
            ),
            (
                3,
                b"app",
                TimeCall::ClockGettime,
                2,
                Origin::VdsoFallback,
                1,
            ),
        ];
        let report = report_of(&mut aggregator, &rows, true);
        exporter.update(&report, &[], &SeriesLimits::default(), Instant::now());
        assert_eq!(exporter.tracked_processes(), 1, "only the app");
        let text = exporter.render(&facts());
        assert!(
            text.contains("vdso_observer_kernel_time_calls_total{comm=\"ls\",call=\"getrandom\"")
        );
        let shown = SeriesLimits {
            getrandom_only_processes: true,
            ..Default::default()
        };
        let mut exporter = Exporter::new();
        exporter.update(&report, &[], &shown, Instant::now());
        assert_eq!(exporter.tracked_processes(), 3);
    }

    #[test]
    fn families_are_declared_once_and_labels_escaped() {
        let mut aggregator = Aggregator::new(None);
        let mut exporter = Exporter::new();
        let report = report_of(
            &mut aggregator,
            &[(
                9,
                b"q\"b\\s\nx\xff",
                TimeCall::Time,
                NO_CLOCK,
                Origin::Direct,
                3,
            )],
            true,
        );
        exporter.update(&report, &[], &SeriesLimits::default(), Instant::now());
        let text = exporter.render(&facts());
        let mut types = BTreeSet::new();
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            assert!(
                types.insert(line.split(' ').nth(2).unwrap().to_owned()),
                "{line}"
            );
        }
        // display_comm escapes first (\ doubled, newline and 0xff as \xNN), then
        // the exposition escapes backslashes and quotes again.
        assert!(text.contains(r#"comm="q\"b\\\\s\\x0ax\\xff""#), "{text}");
        assert!(text.contains("vdso_observer_clocksource_vdso_capable 0\n"));
        assert!(text.contains(
            "vdso_observer_bpf_run_seconds_total{program=\"time_syscall_enter\"} 0.09\n"
        ));
        assert!(
            text.contains("vdso_observer_bpf_runs_total{program=\"time_syscall_enter\"} 2000000\n")
        );
        assert!(text.contains("vdso_observer_bpf_run_stats_enabled 1\n"));
        assert!(text.contains("vdso_observer_kernel_log_readable 0\n"));
        assert!(
            !text.contains("vdso_observer_clocksource_available"),
            "node_exporter's node_time_clocksource_available_info has it"
        );
        assert!(text.contains(
            "vdso_observer_clocksource_info{clocksource=\"hpet\",vdso_capability=\"no\"} 1\n"
        ));
        assert!(text.lines().all(|l| !l.is_empty()));
    }

    #[test]
    fn escaping() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.25), "0.25");
    }
}
