//! Plain-text frames of `top` batch mode: a header line, then one row per process.

use std::{collections::BTreeMap, fmt::Write as _};

use crate::model::{
    ContainerNames, ExactStatus, ProcessReport, Report, SystemReport, VdsoCapability,
};

/// Which processes a front end shows: `top`'s -p, --comm, --container, --pod,
/// --namespace, --flagged-only and --show-getrandom-only, in batch mode and in
/// the TUI alike.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    pub pids: Vec<u32>,
    pub comm: Option<String>,
    /// A container id prefix or pod UID prefix; `host` selects processes outside
    /// every container.
    pub container: Option<String>,
    /// A pod's name, or `namespace/name`.
    pub pod: Option<String>,
    /// A Kubernetes namespace.
    pub namespace: Option<String>,
    pub flagged_only: bool,
    /// Also processes whose only kernel entries were getrandom (glibc's start-up
    /// makes one in every process: on a busy host, hundreds of rows that say nothing).
    pub show_getrandom_only: bool,
}

impl Selection {
    pub fn keeps(&self, process: &ProcessReport) -> bool {
        (self.pids.is_empty() || self.pids.contains(&process.pid))
            && self
                .comm
                .as_deref()
                .is_none_or(|needle| process.comm.contains(needle))
            && self
                .container
                .as_deref()
                .is_none_or(|name| container_matches(process, name))
            && self
                .pod
                .as_deref()
                .is_none_or(|pod| pod_matches(process, pod))
            && self.namespace.as_deref().is_none_or(|namespace| {
                names_of(process).and_then(|n| n.namespace.as_deref()) == Some(namespace)
            })
            && (!self.flagged_only || !process.flags.is_empty())
            && (self.show_getrandom_only || !process.only_getrandom)
    }

    /// Whether the process would be kept with getrandom-only rows shown.
    pub fn keeps_if_shown(&self, process: &ProcessReport) -> bool {
        Selection {
            show_getrandom_only: true,
            ..self.clone()
        }
        .keeps(process)
    }
}

fn container_matches(process: &ProcessReport, name: &str) -> bool {
    match &process.container {
        Some(container) => container.is_named_by(name),
        None => name == HOST_CONTAINER,
    }
}

fn names_of(process: &ProcessReport) -> Option<&ContainerNames> {
    process.container.as_ref().map(|c| &c.names)
}

/// `--pod NAME` or `--pod NAMESPACE/NAME`.
fn pod_matches(process: &ProcessReport, pod: &str) -> bool {
    let Some(names) = names_of(process) else {
        return false;
    };
    match pod.split_once('/') {
        Some(_) => names.pod_path().as_deref() == Some(pod),
        None => names.pod.as_deref() == Some(pod),
    }
}

/// What `--container` and the CONTAINER column call "outside every container".
pub const HOST_CONTAINER: &str = "host";

/// The pid, or `×N` for a row of N exited processes merged by name (past the
/// window's limit of rows for exited processes).
pub fn pid_column(process: &ProcessReport) -> String {
    match process.merged_processes {
        Some(count) => format!("×{count}"),
        None => process.pid.to_string(),
    }
}

/// The CONTAINER column: the runtime's name for it or its short id, or `host`.
pub fn container_column(process: &ProcessReport) -> &str {
    process
        .container
        .as_ref()
        .map_or(HOST_CONTAINER, |c| c.display_name())
}

/// The POD column: `namespace/pod`, or `-` outside Kubernetes (or before the
/// runtime's names were found).
pub fn pod_column(process: &ProcessReport) -> String {
    names_of(process)
        .and_then(ContainerNames::pod_path)
        .unwrap_or_else(|| "-".to_owned())
}

/// Whether the vDSO reads the clocksource, in words, and how that was decided.
pub fn capability_words(system: &SystemReport) -> (&'static str, Option<bool>) {
    let table = system.clocksource.as_ref().map(|c| c.vdso_capability);
    let words = match (system.vdso_capable, system.vdso_check.is_some(), table) {
        (Some(true), true, _) => "vDSO-capable, measured",
        (Some(false), true, _) => "NOT vDSO-capable, measured: clock reads enter the kernel",
        (Some(true), false, _) => "vDSO-capable",
        (Some(false), false, _) => "NOT vDSO-capable: clock reads enter the kernel",
        (None, _, Some(VdsoCapability::Conditional)) => "vDSO-capable if stable",
        (None, ..) => "vDSO capability unknown",
    };
    (words, system.vdso_capable)
}

/// The machine's time set-up in one line, as the TUI header says it:
/// `clocksource tsc (vDSO-capable, measured)  available: tsc kvm-clock  vsyscall: xonly`.
pub fn system_line(system: &SystemReport) -> String {
    let (capable, _) = capability_words(system);
    let mut line = match &system.clocksource {
        Some(cs) => format!(
            "clocksource {} ({capable})  available: {}",
            cs.current,
            cs.available.join(" ")
        ),
        None => "clocksource unknown".to_owned(),
    };
    let _ = write!(line, "  vsyscall: {}", system.vsyscall.name());
    if !system.boot_settings.is_empty() {
        let _ = write!(line, "  boot: {}", system.boot_settings.join(" "));
    }
    line
}

/// What an empty window means on this machine.
pub fn empty_window_line(system: Option<&SystemReport>) -> String {
    let clocksource = system
        .and_then(|s| s.clocksource.as_ref())
        .map_or("?", |c| c.current.as_str());
    match system.and_then(|s| s.vdso_capable) {
        Some(true) => format!(
            "no process entered the kernel for time in this window; the vDSO answers on {clocksource}"
        ),
        Some(false) => format!(
            "no process entered the kernel for time in this window, though the vDSO cannot read {clocksource}: the first clock read will"
        ),
        None => "no process entered the kernel for time in this window".to_owned(),
    }
}

/// A rate in a few characters: 12.5, 1.2k, 3.4M.
pub fn rate(per_sec: f64) -> String {
    if per_sec >= 999_500.0 {
        format!("{:.1}M", per_sec / 1e6)
    } else if per_sec >= 999.5 {
        format!("{:.1}k", per_sec / 1e3)
    } else if per_sec == 0.0 {
        "0".to_owned()
    } else {
        format!("{per_sec:.1}")
    }
}

/// vDSO-answered calls/s: `~` marks an estimate from samples.
pub fn vdso_column(process: &ProcessReport) -> String {
    match process.vdso_calls_per_sec {
        Some(v) if process.vdso_estimated => format!("~{}", rate(v)),
        Some(v) => rate(v),
        None => "-".to_owned(),
    }
}

/// Excess CPU as a share of one core over the window: `0.12%`, `-` unmeasured.
pub fn excess_column(process: &ProcessReport, window_seconds: f64) -> String {
    match process.excess_cpu_seconds {
        Some(seconds) if seconds > 0.0 => percent(seconds / window_seconds.max(1e-9)),
        Some(_) => "0".to_owned(),
        None => "-".to_owned(),
    }
}

/// A share as a percentage, more digits when small.
pub fn percent(share: f64) -> String {
    if share >= 0.1 {
        format!("{:.0}%", share * 100.0)
    } else {
        format!("{:.2}%", share * 100.0)
    }
}

/// Kernel entries per second of each call, e.g. `clock_gettime 1.0k, time 2.0`.
pub fn calls_summary(process: &ProcessReport) -> String {
    let mut per_call: BTreeMap<&str, f64> = BTreeMap::new();
    for call in &process.calls {
        *per_call.entry(call.call.name()).or_default() += call.per_sec;
    }
    let mut calls: Vec<(&str, f64)> = per_call.into_iter().collect();
    calls.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    calls
        .iter()
        .map(|(call, per_sec)| format!("{call} {}", rate(*per_sec)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The FLAG column: faults by their word, informational reasons in parentheses.
pub fn flag_column(process: &ProcessReport) -> String {
    let mut words: Vec<String> = process.flags.iter().map(|f| f.flag().to_owned()).collect();
    if process
        .exact
        .as_ref()
        .is_some_and(|e| e.state == ExactStatus::OverBudget)
    {
        words.push("(exact-over-budget)".into());
    }
    words.extend(
        process
            .reasons
            .iter()
            .filter(|r| !r.is_fault())
            .map(|r| format!("({})", r.flag())),
    );
    if words.is_empty() {
        "-".to_owned()
    } else {
        words.join(",")
    }
}

/// One batch frame. `hidden` counts the rows left out because their only
/// kernel entries were getrandom.
pub fn render(report: &Report, hidden: usize) -> String {
    let mut out = String::new();
    let lost = &report.observer.lost;
    let totals = report.totals();
    if let Some(system) = &report.system {
        let _ = writeln!(out, "{}", system_line(system));
    }
    let _ = writeln!(
        out,
        "vdso-observer: {:.2} s window, {} processes made time calls, {} kernel entries/s, {} vDSO calls/s, in kernel {}",
        report.window_seconds,
        report.processes.len(),
        rate(totals.kernel_per_sec),
        totals
            .vdso_per_sec
            .map_or("-".to_owned(), |v| format!("~{}", rate(v))),
        totals.kernel_share().map_or("-".to_owned(), percent)
    );
    for probe in report.observer.probes.iter().filter(|p| !p.attached) {
        let _ = writeln!(
            out,
            "warning: {} not attached: {}",
            probe.attach_point,
            probe.note.as_deref().unwrap_or("")
        );
    }
    if lost.time_calls_map_full + lost.processes_map_full + lost.read_failed > 0 {
        let _ = writeln!(
            out,
            "warning: counts are incomplete: {} calls lost to a full counter map ({} of {} keys in use; raise --map-entries), {} processes unnamed, {} failed reads",
            lost.time_calls_map_full,
            report.observer.time_call_keys,
            report.observer.time_call_capacity,
            lost.processes_map_full,
            lost.read_failed
        );
    }
    let _ = writeln!(
        out,
        "{:>7} {:<8} {:<16} {:<16} {:<24} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7}  {:<36} {:<28} FLAG",
        "PID",
        "USER",
        "COMM",
        "CONTAINER",
        "POD",
        "VDSO/s",
        "KERN/s",
        "FALLBK/s",
        "DIRECT/s",
        "VSYSC/s",
        "NOVDSO/s",
        "KERN%",
        "EXCESS",
        "CALLS/s",
        "CLOCKS"
    );
    for process in &report.processes {
        let per_sec = |count: u64| rate(count as f64 / report.window_seconds.max(1e-9));
        let comm = if process.exited {
            format!("{}*", process.comm)
        } else {
            process.comm.clone()
        };
        let _ = writeln!(
            out,
            "{:>7} {:<8} {:<16} {:<16} {:<24} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7}  {:<36} {:<28} {}",
            pid_column(process),
            process.user.as_deref().unwrap_or("?"),
            comm,
            container_column(process),
            pod_column(process),
            vdso_column(process),
            rate(process.kernel_entries_per_sec),
            per_sec(process.by_origin.vdso_fallback),
            per_sec(process.by_origin.direct),
            per_sec(process.by_origin.legacy_vsyscall),
            per_sec(process.by_origin.no_vdso),
            process.kernel_share.map_or("-".to_owned(), percent),
            excess_column(process, report.window_seconds),
            calls_summary(process),
            if process.clocks.is_empty() {
                "-".to_owned()
            } else {
                process.clocks.join(",")
            },
            flag_column(process)
        );
    }
    if report.processes.is_empty() {
        let _ = writeln!(out, "({})", empty_window_line(report.system.as_ref()));
    }
    if hidden > 0 {
        let _ = writeln!(
            out,
            "({hidden} processes whose only kernel entries were getrandom not shown; --show-getrandom-only shows them)"
        );
    }
    if report.processes.iter().any(|p| p.exited) {
        let _ = writeln!(out, "* exited during the window");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vdso_observer_common::{NO_CLOCK, Origin, TimeCall};

    use super::*;
    use crate::model::{Aggregator, aggregate::testing};

    #[test]
    fn rates_are_short() {
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(0.5), "0.5");
        assert_eq!(rate(999.0), "999.0");
        assert_eq!(rate(1000.0), "1.0k");
        assert_eq!(rate(2_500_000.0), "2.5M");
    }

    #[test]
    fn a_frame_has_a_row_per_process_with_flags() {
        let comm = b"bad\nme";
        let report = testing::window(
            &mut Aggregator::new(None),
            &[
                (4321, comm, TimeCall::ClockGettime, 1, Origin::Direct, 2000),
                (
                    4321,
                    comm,
                    TimeCall::ClockGettime,
                    2,
                    Origin::VdsoFallback,
                    10,
                ),
                (
                    4321,
                    comm,
                    TimeCall::Gettimeofday,
                    NO_CLOCK,
                    Origin::LegacyVsyscall,
                    4,
                ),
            ],
            Duration::from_secs(2),
            false,
        );
        let text = render(&report, 0);
        let row = text.lines().find(|l| l.contains("4321")).expect(&text);
        assert!(row.contains("bad\\x0ame*"), "{row}");
        assert!(row.contains("1.0k"), "{row}");
        assert!(
            row.contains("clock_gettime 1.0k, gettimeofday 2.0"),
            "{row}"
        );
        assert!(
            row.contains("CLOCK_MONOTONIC,CLOCK_PROCESS_CPUTIME_ID"),
            "{row}"
        );
        assert!(row.ends_with("direct,vsyscall,(cpu-clock)"), "{row}");
        assert!(text.contains("* exited during the window"));
        assert_eq!(text.lines().count(), 4, "{text}");
    }

    #[test]
    fn a_frame_starts_with_the_machine_and_explains_an_empty_window() {
        let mut report = testing::window(
            &mut Aggregator::new(None),
            &[],
            Duration::from_secs(3),
            true,
        );
        report.system = Some(testing::system(true, true));
        let text = render(&report, 2);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "clocksource tsc (vDSO-capable, measured)  available: tsc hpet  vsyscall: xonly",
            "{text}"
        );
        assert!(
            text.contains(
                "(no process entered the kernel for time in this window; the vDSO answers on tsc)"
            ),
            "{text}"
        );
        assert!(text.contains("(2 processes whose only kernel entries were getrandom not shown"));
        report.system = Some(testing::system(false, true));
        let text = render(&report, 0);
        assert!(
            text.starts_with("clocksource hpet (NOT vDSO-capable, measured"),
            "{text}"
        );
        assert!(text.contains("the vDSO cannot read hpet"), "{text}");
    }

    #[test]
    fn getrandom_only_rows_are_selected_out_unless_asked() {
        let report = testing::window(
            &mut Aggregator::new(None),
            &[
                (
                    1,
                    &b"ls"[..],
                    TimeCall::Getrandom,
                    NO_CLOCK,
                    Origin::Direct,
                    1,
                ),
                (2, b"app", TimeCall::ClockGettime, 1, Origin::Direct, 5),
            ],
            Duration::from_secs(1),
            true,
        );
        let default = Selection::default();
        let kept: Vec<u32> = report
            .processes
            .iter()
            .filter(|p| default.keeps(p))
            .map(|p| p.pid)
            .collect();
        assert_eq!(kept, [2]);
        let all = Selection {
            show_getrandom_only: true,
            ..Selection::default()
        };
        assert!(report.processes.iter().all(|p| all.keeps(p)));
    }

    /// The README's sample frames are real output of this code: their
    /// column headers are the ones `render` prints today.
    #[test]
    fn the_readmes_sample_frames_have_todays_columns() {
        let report = testing::window(
            &mut Aggregator::new(None),
            &[(2, &b"app"[..], TimeCall::ClockGettime, 1, Origin::Direct, 5)],
            Duration::from_secs(1),
            true,
        );
        let text = render(&report, 0);
        let columns =
            |line: &str| -> Vec<String> { line.split_whitespace().map(str::to_owned).collect() };
        let header = columns(text.lines().find(|l| l.contains(" PID ")).unwrap());
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let samples: Vec<&str> = readme
            .lines()
            .filter(|l| l.trim_start().starts_with("PID USER"))
            .collect();
        assert!(!samples.is_empty(), "no sample frame in the README");
        for sample in samples {
            assert_eq!(
                columns(sample),
                header,
                "the README's sample is stale: {sample}"
            );
        }
    }

    fn kept_pids(report: &Report, selection: Selection) -> Vec<u32> {
        report
            .processes
            .iter()
            .filter(|p| selection.keeps(p))
            .map(|p| p.pid)
            .collect()
    }

    #[test]
    fn the_container_column_and_filter_name_containers_by_id_prefix_or_pod() {
        use crate::model::{Container, Runtime, container::QosClass};
        let mut report = testing::window(
            &mut Aggregator::new(None),
            &[
                (
                    10,
                    &b"app"[..],
                    TimeCall::ClockGettime,
                    1,
                    Origin::Direct,
                    5,
                ),
                (11, b"sshd", TimeCall::ClockGettime, 1, Origin::Direct, 5),
            ],
            Duration::from_secs(1),
            true,
        );
        let app = report.processes.iter_mut().find(|p| p.pid == 10).unwrap();
        app.container = Some(Container {
            id: "0123456789abcdef".repeat(4),
            runtime: Runtime::Containerd,
            pod_uid: Some("5f1b0c2e-8f7a-4c55-9d1e-0a1b2c3d4e5f".into()),
            qos: Some(QosClass::Burstable),
            names: Default::default(),
        });
        let text = render(&report, 0);
        let header = text.lines().find(|l| l.contains("PID")).unwrap();
        assert!(header.contains(" CONTAINER "), "{header}");
        let fields = |pid: &str| -> Vec<String> {
            let row = text
                .lines()
                .find(|l| l.split_whitespace().next() == Some(pid))
                .unwrap();
            row.split_whitespace().map(str::to_owned).collect()
        };
        assert_eq!(fields("10")[3], "0123456789ab", "{text}");
        assert_eq!(fields("11")[3], "host", "{text}");
        let kept = |name: &str| {
            kept_pids(
                &report,
                Selection {
                    container: Some(name.into()),
                    ..Selection::default()
                },
            )
        };
        assert_eq!(kept("0123456789ab"), [10]);
        assert_eq!(kept(&"0123456789abcdef".repeat(4)), [10]);
        assert_eq!(kept("5f1b0c2e"), [10], "a pod UID prefix");
        assert_eq!(kept("host"), [11]);
        assert!(kept("fff").is_empty());
        assert_eq!(fields("10")[4], "-", "no names yet: {text}");

        // With the runtime's names: CONTAINER shows the name, POD the
        // pod, and --container, --pod, --namespace select by them.
        let app = report.processes.iter_mut().find(|p| p.pid == 10).unwrap();
        app.container.as_mut().unwrap().names = ContainerNames {
            name: Some("app".into()),
            pod: Some("web-7d4".into()),
            namespace: Some("shop".into()),
        };
        let text = render(&report, 0);
        let header = text.lines().find(|l| l.contains("PID")).unwrap();
        assert!(
            header.contains(" CONTAINER ") && header.contains(" POD "),
            "{header}"
        );
        let row = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some("10"))
            .unwrap();
        let fields: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(fields[3..5], ["app", "shop/web-7d4"], "{text}");
        let kept = |selection: Selection| kept_pids(&report, selection);
        let by = |container: Option<&str>, pod: Option<&str>, namespace: Option<&str>| Selection {
            container: container.map(Into::into),
            pod: pod.map(Into::into),
            namespace: namespace.map(Into::into),
            ..Selection::default()
        };
        assert_eq!(kept(by(Some("app"), None, None)), [10]);
        assert_eq!(kept(by(None, Some("web-7d4"), None)), [10]);
        assert_eq!(kept(by(None, Some("shop/web-7d4"), None)), [10]);
        assert!(kept(by(None, Some("other/web-7d4"), None)).is_empty());
        assert_eq!(kept(by(None, None, Some("shop"))), [10]);
        assert!(kept(by(None, None, Some("kube-system"))).is_empty());
    }
}
