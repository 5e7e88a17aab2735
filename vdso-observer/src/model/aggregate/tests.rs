//! Tests of the aggregation: deltas, retirement, names, estimates, thresholds.

use super::*;
use vdso_observer_common::{NO_CLOCK, Origin, ProcessInfo};

use crate::model::{Container, EntryPoint, ExactState, ExactStatus, FallbackReason, Thresholds};

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

/// What the tests and `cargo xtask` read back is what was written: every
/// field, the by-name enums, FLAG words and entry points included.
#[test]
fn a_report_reads_back_as_it_was_written() {
    let direct = key(10, TimeCall::ClockGettime, 1, Origin::Direct);
    let fallback = key(10, TimeCall::Gettimeofday, NO_CLOCK, Origin::VdsoFallback);
    let (mut report, _) = Aggregator::new(None).window(
        &snapshot(&[(direct, 4), (fallback, 9)]),
        Duration::from_secs(2),
        health(),
        &testing::Fixed { running: false },
    );
    report.system = Some(testing::system(false, true));
    let process = &mut report.processes[0];
    process.container = Container::from_cgroup_path(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12345678_1111_2222_3333_444455556666.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope",
    );
    process.exact = Some(ExactState {
        state: ExactStatus::Traced,
        entry_points: vec![
            EntryPoint::Uprobe {
                file: "/usr/lib/x86_64-linux-gnu/libc.so.6".into(),
                symbol: "clock_gettime".into(),
            },
            EntryPoint::Breakpoint(TimeCall::Getcpu),
        ],
        overhead: Some(0.01),
        note: None,
    });
    Thresholds::default().apply(process);
    assert!(!process.flags.is_empty() && process.container.is_some());
    let written = serde_json::to_value(&report).unwrap();
    let read: Report = serde_json::from_value(written.clone()).unwrap();
    assert_eq!(serde_json::to_value(&read).unwrap(), written);
}

/// A snapshot of `n` processes from `first_pid` on, each with `calls` direct
/// clock_gettime calls, named by `comm_of(pid)`.
fn exited_processes(
    first_pid: u32,
    n: u32,
    calls: u64,
    comm_of: impl Fn(u32) -> String,
) -> MapSnapshot {
    let mut snapshot = MapSnapshot::default();
    for pid in first_pid..first_pid + n {
        let key = key(pid, TimeCall::ClockGettime, 1, Origin::Direct);
        snapshot.calls.insert(key, calls);
        let mut comm = [0u8; 16];
        let name = comm_of(pid);
        comm[..name.len()].copy_from_slice(name.as_bytes());
        snapshot
            .names
            .insert(key.process, ProcessInfo::new(comm, 0, 0));
    }
    snapshot
}

#[test]
fn exited_processes_past_the_row_limit_merge_by_name_with_every_count() {
    let mut aggregator = Aggregator::new(None);
    // 32 rows in all, 2 of each kind.
    aggregator.set_max_exited_rows(32);
    // 10 processes named a, 5 named b; all gone by the window's end.
    let mut snap = exited_processes(100, 10, 5, |_| "a".into());
    let b = exited_processes(200, 5, 5, |_| "b".into());
    snap.calls.extend(b.calls);
    snap.names.extend(b.names);
    let (report, retired) = aggregator.window(
        &snap,
        Duration::from_secs(1),
        health(),
        &testing::Fixed { running: false },
    );
    // Every process is retired (its keys deleted), merged or not.
    assert_eq!(retired.processes.len(), 15);
    let own: Vec<_> = report
        .processes
        .iter()
        .filter(|p| p.merged_processes.is_none())
        .collect();
    let merged: Vec<_> = report
        .processes
        .iter()
        .filter(|p| p.merged_processes.is_some())
        .collect();
    assert_eq!(own.len(), 4);
    assert!(own.iter().all(|p| p.pid != 0 && p.exited));
    // One merged row per name, pid 0, counts whole and flags judged.
    assert_eq!(merged.len(), 2, "{merged:#?}");
    let processes: u32 = merged.iter().map(|p| p.merged_processes.unwrap()).sum();
    assert_eq!(processes as usize + own.len(), 15);
    for row in &merged {
        assert_eq!(row.pid, 0);
        assert!(row.exited);
        assert_eq!(
            row.kernel_entries,
            5 * u64::from(row.merged_processes.unwrap())
        );
        assert_eq!(row.by_origin.direct, row.kernel_entries);
        assert_eq!(row.flag_words(), ["direct"]);
        assert_eq!(row.clocks, ["CLOCK_MONOTONIC"]);
    }
    let total: u64 = report.processes.iter().map(|p| p.kernel_entries).sum();
    assert_eq!(total, 75);
}

#[test]
fn processes_drained_past_the_row_limit_merge_too_and_names_are_not_kept() {
    let mut aggregator = Aggregator::new(None);
    // 2 rows of each kind.
    aggregator.set_max_exited_rows(32);
    let snap = exited_processes(100, 6, 5, |_| "storm".into());
    let retired = aggregator.drain(&snap, &testing::Fixed { running: false });
    assert_eq!(retired.processes.len(), 6);
    // Only the processes with own rows keep a name until the window ends.
    assert_eq!(aggregator.names.len(), 2);
    // The maps no longer hold them: the window sees none of their keys.
    let (report, _) = aggregator.window(
        &MapSnapshot::default(),
        Duration::from_secs(1),
        health(),
        &testing::Fixed { running: false },
    );
    assert_eq!(report.processes.len(), 3, "{:#?}", report.processes);
    let merged = report
        .processes
        .iter()
        .find(|p| p.merged_processes.is_some())
        .unwrap();
    assert_eq!(
        (merged.comm.as_str(), merged.merged_processes),
        ("storm", Some(4))
    );
    assert_eq!(merged.kernel_entries, 20);
    assert!(aggregator.names.is_empty());
    // The next window starts empty.
    let (report, _) = aggregator.window(
        &MapSnapshot::default(),
        Duration::from_secs(1),
        health(),
        &testing::Fixed { running: false },
    );
    assert!(report.processes.is_empty());
}

/// A [`testing::Fixed`] that counts how often a cgroup is looked up.
struct CountingLookup {
    cgroup_lookups: std::cell::Cell<u32>,
}

impl ProcessLookup for CountingLookup {
    fn is_running(&self, _: &ProcessKey) -> bool {
        false
    }
    fn comm_and_uid(&self, _: &ProcessKey) -> Option<(Vec<u8>, Option<u32>)> {
        None
    }
    fn user_name(&self, uid: u32) -> String {
        uid.to_string()
    }
    fn cgroup_path(&self, id: u64) -> Option<String> {
        self.cgroup_lookups.set(self.cgroup_lookups.get() + 1);
        testing::Fixed { running: false }.cgroup_path(id)
    }
}

#[test]
fn a_drained_storm_is_named_once_per_kind_and_kinds_stay_apart() {
    let mut aggregator = Aggregator::new(None);
    aggregator.set_max_exited_rows(0);
    // One name, three kinds: by uid, and in a container (cgroup 7).
    let kind = |first_pid: u32, n: u32, uid: u32, cgroup_id: u64| {
        let mut snap = exited_processes(first_pid, n, 3, |_| "storm".into());
        for info in snap.names.values_mut() {
            *info = ProcessInfo::new(info.comm, uid, cgroup_id);
        }
        snap
    };
    let mut snap = kind(100, 100, 0, 0);
    for other in [kind(1000, 50, 1000, 0), kind(2000, 30, 0, 7)] {
        snap.calls.extend(other.calls);
        snap.names.extend(other.names);
    }
    let lookup = CountingLookup {
        cgroup_lookups: Default::default(),
    };
    assert_eq!(aggregator.drain(&snap, &lookup).processes.len(), 180);
    assert_eq!(lookup.cgroup_lookups.get(), 3);
    // A second drain in the window: the same kinds, named already.
    let more = kind(3000, 20, 0, 0);
    assert_eq!(aggregator.drain(&more, &lookup).processes.len(), 20);
    assert_eq!(lookup.cgroup_lookups.get(), 3);
    let (report, _) = aggregator.window(
        &MapSnapshot::default(),
        Duration::from_secs(1),
        health(),
        &lookup,
    );
    let mut rows: Vec<_> = report
        .processes
        .iter()
        .map(|p| {
            (
                p.uid,
                p.container.is_some(),
                p.merged_processes,
                p.kernel_entries,
            )
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            (Some(0), false, Some(120), 360),
            (Some(0), true, Some(30), 90),
            (Some(1000), false, Some(50), 150),
        ]
    );
    // Named anew each window: the next may see other cgroups under the ids.
    aggregator.drain(&kind(4000, 5, 0, 0), &lookup);
    assert_eq!(lookup.cgroup_lookups.get(), 4);
}

#[test]
fn a_tenant_naming_every_process_anew_gets_bounded_merged_rows() {
    let mut aggregator = Aggregator::new(None);
    aggregator.set_max_exited_rows(0);
    let n = merged::MAX_GROUPS as u32 + 500;
    let snap = exited_processes(1000, n, 1, |pid| format!("x{pid}"));
    let (report, _) = aggregator.window(
        &snap,
        Duration::from_secs(1),
        health(),
        &testing::Fixed { running: false },
    );
    assert_eq!(report.processes.len(), merged::MAX_GROUPS + 1);
    let rest = report.processes.iter().find(|p| p.comm == "?").unwrap();
    assert_eq!(rest.merged_processes, Some(500));
    let total: u64 = report.processes.iter().map(|p| p.kernel_entries).sum();
    assert_eq!(total, u64::from(n));
}

#[test]
fn past_the_row_limit_every_kind_merges_and_a_storm_leaves_others_their_rows() {
    let mut aggregator = Aggregator::new(None);
    // 32 rows in all, 2 of each kind.
    aggregator.set_max_exited_rows(32);
    // A storm of one name first (pids 100..), then 40 processes of 40 names.
    let mut snap = exited_processes(100, 500, 1, |_| "storm".into());
    let others = exited_processes(1000, 40, 1, |pid| format!("p{pid}"));
    snap.calls.extend(others.calls);
    snap.names.extend(others.names);
    let (report, _) = aggregator.window(
        &snap,
        Duration::from_secs(1),
        health(),
        &testing::Fixed { running: false },
    );
    let own = |comm: &str| {
        report
            .processes
            .iter()
            .filter(|p| p.comm == comm && p.merged_processes.is_none())
            .count()
    };
    // The storm keeps 2 rows; 30 of the others get theirs, 10 merge.
    assert_eq!(own("storm"), 2);
    let others_own = (1000..1040)
        .filter(|pid| own(&format!("p{pid}")) == 1)
        .count();
    assert_eq!(others_own, 30);
    let merged: u32 = report
        .processes
        .iter()
        .filter_map(|p| p.merged_processes)
        .sum();
    assert_eq!(merged, 498 + 10);
    let total: u64 = report.processes.iter().map(|p| p.kernel_entries).sum();
    assert_eq!(total, 540);
}

#[test]
fn coarse_samples_are_priced_as_coarse_reads_and_their_share_leaves_the_fine_ones() {
    use crate::model::clocks::clock_name;
    use crate::model::costs::CoarseCosts;
    use vdso_observer_common::{CLOCK_COARSE_SAMPLED, CLOCK_OVERFLOW, Provenance};
    let vdso_key = |clock_id: i32| VdsoKey {
        process: key(50, TimeCall::ClockGettime, 1, Origin::Direct).process,
        clock_id,
        call: TimeCall::ClockGettime as u8,
        provenance: Provenance::Sampled as u8,
        abi: SyscallAbi::NATIVE as u8,
        _pad: 0,
    };
    let mut costs = VdsoCosts::default();
    costs.ns_per_call.insert(TimeCall::ClockGettime, 20.0);
    costs.calibration_samples = 400;
    costs.coarse = Some(CoarseCosts {
        marked_ns: 2.0,
        shared_ns: 1.0,
        samples: 100,
        fine_split: None,
        fallback_shared_ns: None,
    });
    let estimator = VdsoEstimator {
        costs,
        sample_period_ns: 1000,
    };
    let mut snap = snapshot(&[]);
    snap.vdso.insert(vdso_key(CLOCK_COARSE_SAMPLED), 100);
    snap.vdso.insert(vdso_key(NO_CLOCK), 250);
    // Past its key cap (other clocks made keys first): priced on its own,
    // not given the split's fine reads a second time.
    snap.vdso.insert(vdso_key(CLOCK_OVERFLOW), 40);
    let mut comm = [0u8; 16];
    comm[..4].copy_from_slice(b"work");
    snap.names
        .insert(vdso_key(NO_CLOCK).process, ProcessInfo::new(comm, 0, 0));
    let (report, _) = Aggregator::new(Some(estimator)).window(
        &snap,
        Duration::from_secs(1),
        health(),
        &testing::Fixed { running: true },
    );
    let row = &report.processes[0];
    let calls = |clock: Option<&str>| {
        row.vdso_calls
            .iter()
            .find(|c| c.clock.as_deref() == clock)
            .unwrap()
            .calls
    };
    // 100 samples x 1000 ns / 2 ns: 50 000 coarse reads, whose 1 ns each in
    // shared code is 50 of the 250 other samples; 200 x 1000 / 20 fine reads.
    assert_eq!(calls(Some("CLOCK_*_COARSE")), 50_000.0);
    assert_eq!(calls(None), 10_000.0);
    assert_eq!(calls(Some(&clock_name(CLOCK_OVERFLOW))), 2_000.0);
    assert_eq!(row.vdso_calls_per_sec, Some(62_000.0));
    // Wider than the samples' own error: the coarse calibration and the
    // caller's part in a short call's samples.
    let plain = row.vdso_uncertainty.unwrap();
    assert!(plain > 1.96 * 0.15, "{plain}");
}

/// Where a coarse read's samples fall moves from run to run: a calibration
/// that saw 0.5 ns a call in coarse-only code and 1.6 in shared code, and a
/// program whose reads spent 1.1 and 1.1 there, read +120% priced by the
/// coarse-only code alone. The whole call (2.1 and 2.2 ns) bounds them.
#[test]
fn coarse_reads_are_never_more_than_the_whole_call_buys() {
    use crate::model::costs::CoarseCosts;
    let mut costs = VdsoCosts::default();
    costs.ns_per_call.insert(TimeCall::ClockGettime, 20.0);
    costs.coarse = Some(CoarseCosts {
        marked_ns: 0.5,
        shared_ns: 1.6,
        samples: 45,
        fine_split: None,
        fallback_shared_ns: None,
    });
    let estimator = VdsoEstimator {
        costs,
        sample_period_ns: 2_000_000,
    };
    let samples = |coarse, other| GettimeSamples {
        coarse,
        shared: 0,
        other,
        kernel_reads: 0,
    };
    // 100 M reads at 1.1 + 1.1 ns: 55 samples in each code.
    let calls = estimator.gettime_calls(samples(55, 55));
    let truth = 100e6;
    assert!(
        ((calls.coarse - truth) / truth).abs() < 0.06,
        "{calls:?}: the whole call's price"
    );
    assert!(calls.fine < 1.0, "no fine reads left: {calls:?}");
    // A program that reads as the calibration did is priced by its own code.
    let calls = estimator.gettime_calls(samples(25, 80));
    assert!((calls.coarse - 100e6).abs() < 1.0, "{calls:?}");
    // And one with fine reads besides: the bound does not bind, and the
    // coarse reads' share of the other samples leaves the fine ones.
    let calls = estimator.gettime_calls(samples(25, 80 + 400));
    assert!((calls.coarse - 100e6).abs() < 1.0, "{calls:?}");
    assert!((calls.fine - 40e6).abs() < 1.0, "{calls:?}");
}

/// With the shared code marked too, coarse reads are priced by their whole
/// call whichever way their samples fell between their own code and the
/// shared code, and fine reads by the code only they run.
#[test]
fn with_the_shared_code_marked_coarse_reads_are_priced_by_their_whole_call() {
    use crate::model::costs::{CoarseCosts, FineSplit};
    let mut costs = VdsoCosts::default();
    costs.ns_per_call.insert(TimeCall::ClockGettime, 20.0);
    // The calibration's coarse child in its heavy mode: 1.4 ns a call in
    // its own code, 1.0 in the shared; a fine read 19 ns in code of its own
    // and 1 in the shared.
    costs.coarse = Some(CoarseCosts {
        marked_ns: 1.4,
        shared_ns: 1.0,
        samples: 75,
        fine_split: Some(FineSplit {
            own_ns: 19.0,
            shared_ns: 1.0,
            own_samples: 380,
        }),
        fallback_shared_ns: None,
    });
    let estimator = VdsoEstimator {
        costs,
        sample_period_ns: 2_000_000,
    };
    let within = |calls: f64, truth: f64, what: &str| {
        assert!(
            ((calls - truth) / truth).abs() < 0.01,
            "{what}: {calls} for {truth}"
        );
    };
    // 100 M coarse reads in the light mode (0.5 ns own, 1.9 shared): priced
    // by their own code alone they read -64%.
    let light = estimator.gettime_calls(GettimeSamples {
        coarse: 25,
        shared: 95,
        other: 0,
        kernel_reads: 0,
    });
    within(light.coarse, 100e6, "light");
    assert_eq!(light.fine, 0.0);
    // The same in the heavy mode.
    let heavy = estimator.gettime_calls(GettimeSamples {
        coarse: 70,
        shared: 50,
        other: 0,
        kernel_reads: 0,
    });
    within(heavy.coarse, 100e6, "heavy");
    // Mixed with 10 M fine reads (95 samples in their own code, 5 shared).
    let mixed = estimator.gettime_calls(GettimeSamples {
        coarse: 25,
        shared: 95 + 5,
        other: 95,
        kernel_reads: 0,
    });
    within(mixed.coarse, 100e6, "mixed, coarse");
    within(mixed.fine, 10e6, "mixed, fine");
    // Fine reads alone: no coarse-only sample, so no coarse read, however
    // many samples their entry and return had.
    let fine = estimator.gettime_calls(GettimeSamples {
        coarse: 0,
        shared: 5,
        other: 95,
        kernel_reads: 0,
    });
    assert_eq!(fine.coarse, 0.0);
    within(fine.fine, 10e6, "fine alone");
    // A stray coarse-only sample of a fine reader: its shared samples are
    // what its fine reads account for, so next to no coarse read.
    let stray = estimator.gettime_calls(GettimeSamples {
        coarse: 1,
        shared: 5,
        other: 95,
        kernel_reads: 0,
    });
    assert!(stray.coarse < 1e6, "{stray:?}");
}

/// Where fine reads enter the kernel (hpet): a process's coarse reads are
/// priced by their whole call from its coarse-only and shared samples, less
/// what its kernel reads' user-space part put in the shared code; a process
/// with no sample in coarse-only code made no coarse read, and one whose
/// kernel reads explain its shared samples made none either.
#[test]
fn beside_kernel_reads_coarse_reads_are_priced_by_their_whole_call() {
    use crate::model::costs::CoarseCosts;
    let mut costs = VdsoCosts::default();
    // The stopwatch's fine read: a kernel entry.
    costs.ns_per_call.insert(TimeCall::ClockGettime, 1500.0);
    costs.coarse = Some(CoarseCosts {
        marked_ns: 1.0,
        shared_ns: 1.5,
        samples: 40,
        fine_split: None,
        fallback_shared_ns: Some(20.0),
    });
    let estimator = VdsoEstimator {
        costs,
        sample_period_ns: 2_000_000,
    };
    let calls = |coarse, shared, other, kernel_reads| {
        estimator.gettime_calls(GettimeSamples {
            coarse,
            shared,
            other,
            kernel_reads,
        })
    };
    // 200 M coarse reads and one kernel read in a thousand (a loop keeping
    // time): 100 + 150 samples of 2 ms at 2.5 ns a call, less 200 000
    // kernel reads at 20 ns.
    let coarse = calls(100, 150, 3, 200_000);
    assert!((coarse.coarse - 198_400_000.0).abs() < 1.0, "{coarse:?}");
    assert!(
        (coarse.fine - 3.0 * 2_000_000.0 / 1500.0).abs() < 1e-6,
        "{coarse:?}"
    );
    // A million kernel reads and no coarse-only sample.
    let kernel = calls(0, 5, 20, 1_000_000);
    assert_eq!(kernel.coarse, 0.0);
    // A stray coarse-only sample the kernel reads' share outweighs.
    assert_eq!(calls(1, 5, 20, 1_000_000).coarse, 0.0);
}
