//! Tests of the exporter: monotonic, bounded, escaped, one label set per series.

use std::{collections::BTreeSet, time::Duration};

use vdso_observer_common::{NO_CLOCK, Origin, TimeCall};

use super::{
    exposition::{escape_label, format_value},
    *,
};
use crate::model::{
    Aggregator, Container, ContainerNames, Runtime,
    aggregate::testing::{self, Row},
};

fn facts() -> Facts {
    Facts {
        clocksource: Some(ClocksourceState {
            current: "hpet".into(),
            available: vec!["tsc".into(), "hpet".into()],
            vdso_capability: VdsoCapability::No,
            why: "".into(),
        }),
        vdso_capable: Some(false),
        vsyscall: VsyscallMode::Xonly,
        probes: vec![],
        map_entries: 3,
        map_capacity: 100,
        kernel_release: "6.18.0".into(),
        node: "db1".into(),
        kernel_log_readable: false,
        boot_settings: vec!["tsc=unstable".into()],
        vdso_costs: BTreeMap::new(),
        run_stats: RunStats::Enabled,
        programs: vec![ProgramRuns {
            program: "time_syscall_enter".into(),
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
            names: Default::default(),
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
        "{family}container_id=\"{}\",pod_uid=\"\",runtime=\"containerd\",namespace=\"\",pod=\"\",container=\"\",call=\"clock_gettime\",clock=\"CLOCK_MONOTONIC\",origin=\"direct\",reason=\"direct_syscall\"}} 40",
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
        names: Default::default(),
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
            "vdso_observer_container_excess_cpu_seconds_total{{container_id=\"{}\",pod_uid=\"\",runtime=\"docker\",namespace=\"\",pod=\"\",container=\"\"}} 0.5\n",
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
    assert!(text.contains("vdso_observer_kernel_time_calls_total{comm=\"ls\",call=\"getrandom\""));
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
    assert!(
        text.contains("vdso_observer_bpf_run_seconds_total{program=\"time_syscall_enter\"} 0.09\n")
    );
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

/// Names found after a container's first window (its runtime wrote them
/// late): its series carries on under them, one label set at a time, its
/// count whole.
#[test]
fn a_container_named_late_keeps_one_series_and_its_count() {
    let mut aggregator = Aggregator::new(None);
    let mut exporter = Exporter::new();
    let limits = SeriesLimits::default();
    let row: Row = (
        9,
        &b"app"[..],
        TimeCall::ClockGettime,
        1,
        Origin::Direct,
        40,
    );
    let mut container = Container {
        id: "e".repeat(64),
        runtime: Runtime::Unknown,
        pod_uid: Some("5f1b0c2e-8f7a-4c55-9d1e-0a1b2c3d4e5f".into()),
        qos: None,
        names: Default::default(),
    };
    let start = Instant::now();
    let mut report = report_of(&mut aggregator, &[row], true);
    report.processes[0].container = Some(container.clone());
    exporter.update(&report, &[], &limits, start);
    container.runtime = Runtime::Containerd;
    container.names = ContainerNames {
        name: Some("app".into()),
        pod: Some("web-7d4".into()),
        namespace: Some("shop".into()),
    };
    let row: Row = (
        9,
        &b"app"[..],
        TimeCall::ClockGettime,
        1,
        Origin::Direct,
        100,
    );
    let mut report = report_of(&mut aggregator, &[row], true);
    report.processes[0].container = Some(container);
    exporter.update(&report, &[], &limits, start);
    let text = exporter.render(&facts());
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("vdso_observer_container_kernel_time_calls_total{"))
        .collect();
    assert_eq!(series.len(), 1, "{text}");
    assert!(
        series[0].contains(
            "runtime=\"containerd\",namespace=\"shop\",pod=\"web-7d4\",container=\"app\","
        ) && series[0].ends_with(" 100"),
        "{text}"
    );
}

#[test]
fn exit_handoffs_add_up_across_windows() {
    let limits = SeriesLimits::default();
    let mut aggregator = Aggregator::new(None);
    let mut exporter = Exporter::new();
    let now = Instant::now();
    for (handed, ring_full) in [(30, 0), (12, 5)] {
        let mut report = report_of(&mut aggregator, &[], true);
        report.observer.exit_handoffs = ExitHandoffs { handed, ring_full };
        exporter.update(&report, &[], &limits, now);
    }
    let text = exporter.render(&facts());
    let family = "vdso_observer_exit_handoffs_total";
    assert_eq!(
        sample_value(&text, &format!("{family}{{result=\"handed\"}}")),
        Some(42.0),
        "{text}"
    );
    assert_eq!(
        sample_value(&text, &format!("{family}{{result=\"ring_full\"}}")),
        Some(5.0)
    );
}
