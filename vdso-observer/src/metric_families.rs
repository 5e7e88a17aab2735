//! Every metric family the daemon exports, declared once: the exposition
//! writes HELP and TYPE from here, and the packaging test checks that the
//! rules, the dashboard and the README name only these.

/// A Prometheus metric type, as the exposition format spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

impl MetricKind {
    pub fn name(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
        }
    }
}

/// One family: its name, type and help text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricFamily {
    pub name: &'static str,
    pub kind: MetricKind,
    pub help: &'static str,
}

macro_rules! families {
    ($($(#[$meta:meta])* $const:ident = $name:literal, $kind:ident, $help:literal;)*) => {
        $(
            $(#[$meta])*
            pub const $const: MetricFamily = MetricFamily {
                name: $name,
                kind: MetricKind::$kind,
                help: $help,
            };
        )*
        /// Every family, in the order the exposition writes them.
        pub const ALL: &[MetricFamily] = &[$($const),*];
    };
}

families! {
    VDSO_CALL_COST_SECONDS = "vdso_observer_vdso_call_cost_seconds", Gauge,
        "Time one call stands for when samples are turned into calls, calibrated at start.";
    CLOCKSOURCE_INFO = "vdso_observer_clocksource_info", Gauge,
        "Current clocksource and whether the vDSO can read it (yes, no, conditional, unknown).";
    CLOCKSOURCE_VDSO_CAPABLE = "vdso_observer_clocksource_vdso_capable", Gauge,
        "1 when the vDSO answers clock_gettime in user space (measured by the observer's own calls), 0 when every high-resolution clock read enters the kernel.";
    CLOCKSOURCE_CHANGES_TOTAL = "vdso_observer_clocksource_changes_total", Counter,
        "Changes of the current clocksource seen since the observer started.";
    CLOCK_EVENTS_TOTAL = "vdso_observer_clock_events_total", Counter,
        "Clock events seen since start: kernel log lines (switched, tsc_unstable, watchdog) and sysfs changes.";
    KERNEL_LOG_READABLE = "vdso_observer_kernel_log_readable", Gauge,
        "1 when the kernel log (/dev/kmsg) is readable; 0 means clock events such as TSC marked unstable go unseen (give CAP_SYSLOG and /dev/kmsg).";
    VSYSCALL_MODE_INFO = "vdso_observer_vsyscall_mode_info", Gauge,
        "Legacy vsyscall page mode: xonly, emulate or none.";
    BOOT_PARAMETER_INFO = "vdso_observer_boot_parameter_info", Gauge,
        "Kernel command-line parameters that decide time calls (clocksource=, tsc=, vdso=, vsyscall=, notsc, ...).";
    BUILD_INFO = "vdso_observer_build_info", Gauge,
        "Version of vdso-observer, the kernel it runs on, and the node (NODE_NAME in a DaemonSet, else the host name).";
    PROBE_ATTACHED = "vdso_observer_probe_attached", Gauge,
        "1 when the probe is attached; 0 when attaching it failed (its calls are not counted).";
    BPF_RUN_STATS_ENABLED = "vdso_observer_bpf_run_stats_enabled", Gauge,
        "1 when the kernel measures the observer's programs (--bpf-stats, or kernel.bpf_stats_enabled=1); 0 when off or refused (no CAP_SYS_ADMIN).";
    BPF_RUN_SECONDS_TOTAL = "vdso_observer_bpf_run_seconds_total", Counter,
        "Time the kernel spent running each of the observer's programs since load, summed over CPUs: the observer's own cost.";
    BPF_RUNS_TOTAL = "vdso_observer_bpf_runs_total", Counter,
        "Runs of each of the observer's programs since load (sys_enter: every syscall on the machine).";
    LOST_TIME_CALLS_TOTAL = "vdso_observer_lost_time_calls_total", Counter,
        "Kernel-entering time calls the observer could not count, by cause.";
    UNATTRIBUTED_VDSO_SAMPLES_TOTAL = "vdso_observer_unattributed_vdso_samples_total", Counter,
        "Samples in vDSO code no time call claims (not even through a helper's return address): in no estimate.";
    UNNAMED_PROCESSES_TOTAL = "vdso_observer_unnamed_processes_total", Counter,
        "Processes whose name could not be stored because the name map was full.";
    EXIT_HANDOFFS_TOTAL = "vdso_observer_exit_handoffs_total", Counter,
        "Process exits by how their counts reached the observer: handed (the kernel's exit program took them out of the maps) or ring_full (no room in the exit ring: left for the drain, which costs more CPU; nothing is lost).";
    MAP_ENTRIES = "vdso_observer_map_entries", Gauge,
        "Entries in use in the kernel counter map.";
    MAP_CAPACITY = "vdso_observer_map_capacity", Gauge,
        "Capacity of the kernel counter map.";
    TRACKED_PROCESSES = "vdso_observer_tracked_processes", Gauge,
        "Processes with their own pid-labelled series.";
    UNTRACKED_PROCESSES_TOTAL = "vdso_observer_untracked_processes_total", Counter,
        "Times a process deserved a pid-labelled series but the cap (series.max_processes) was reached.";
    TRACKED_CONTAINERS = "vdso_observer_tracked_containers", Gauge,
        "Containers with their own container_id series (at most series.max_containers; the rest as (other)).";
    COLLECTIONS_TOTAL = "vdso_observer_collections_total", Counter,
        "Windows collected since start.";
    COLLECTION_DURATION_SECONDS = "vdso_observer_collection_duration_seconds", Gauge,
        "Time the last collection took (reading maps, /proc, rendering).";
    TEXTFILE_WRITE_ERRORS_TOTAL = "vdso_observer_textfile_write_errors_total", Counter,
        "Failed writes of the node_exporter textfile (the previous file stays).";
    EXCESS_CPU_SECONDS_TOTAL = "vdso_observer_excess_cpu_seconds_total", Counter,
        "CPU time spent because time calls entered the kernel where the vDSO could have answered (kernel entries x (syscall cost - vDSO cost), both measured here at start), per comm.";
    CONTAINER_EXCESS_CPU_SECONDS_TOTAL = "vdso_observer_container_excess_cpu_seconds_total", Counter,
        "The same, per container.";
    PROCESS_EXCESS_CPU_SECONDS_TOTAL = "vdso_observer_process_excess_cpu_seconds_total", Counter,
        "The same, for the processes with pid series.";
    KERNEL_TIME_CALLS_TOTAL = "vdso_observer_kernel_time_calls_total", Counter,
        "Time calls that entered the kernel, all processes, summed per comm (names beyond the cap as (other)).";
    PROCESS_KERNEL_TIME_CALLS_TOTAL = "vdso_observer_process_kernel_time_calls_total", Counter,
        "Time calls that entered the kernel, for the top processes of a window and every flagged one (kept until a grace period after exit).";
    CONTAINER_KERNEL_TIME_CALLS_TOTAL = "vdso_observer_container_kernel_time_calls_total", Counter,
        "Time calls that entered the kernel, processes in containers, summed per container (runtime id; pod UID under kubepods; containers beyond the cap as (other)).";
    VDSO_TIME_CALLS_TOTAL = "vdso_observer_vdso_time_calls_total", Counter,
        "Time calls the vDSO answered in user space, per comm; provenance sampled is an estimate from cpu-clock samples, uprobe and breakpoint are exact.";
    CONTAINER_VDSO_TIME_CALLS_TOTAL = "vdso_observer_container_vdso_time_calls_total", Counter,
        "Time calls the vDSO answered in user space, per container (provenance as in vdso_observer_vdso_time_calls_total).";
    PROCESS_VDSO_TIME_CALLS_TOTAL = "vdso_observer_process_vdso_time_calls_total", Counter,
        "Time calls the vDSO answered, for the processes with pid series.";
}
