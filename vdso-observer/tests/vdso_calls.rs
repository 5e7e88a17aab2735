//! Calls the vDSO answered: sampled estimates by default, exact counts on
//! request (uprobes, hardware breakpoints), and the governor that keeps exact
//! counting within its budget.

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, Command, Stdio},
    time::Duration,
};

use common::*;
use vdso_observer::model::ExactStatus;
use vdso_observer_common::Provenance;

/// These tests measure rates and CPU time: one at a time, so they do not
/// slow each other down on a 2-core machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A workload held at its start (VT_WAIT_STDIN) until [`Held::release`].
struct Held {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Held {
    fn start(binary: &std::path::Path, args: &[&str]) -> Held {
        let mut child = Command::new(binary)
            .args(args)
            .env("VT_WAIT_STDIN", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        Held { child, stdin }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn release(&mut self) {
        let mut stdin = self.stdin.take().unwrap();
        stdin.write_all(b"x").unwrap();
    }

    fn wait(mut self) -> String {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}");
        let mut out = String::new();
        std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut out).unwrap();
        out
    }
}

fn row(report: &Report, pid: u32) -> ProcessReport {
    let rows = rows_of_pid(report, pid);
    assert_eq!(rows.len(), 1, "pid {pid}: {report:#?}");
    rows.into_iter().next().unwrap()
}

/// (call, clock, provenance, count) of the exact vDSO rows.
fn exact_rows(row: &ProcessReport) -> Vec<(String, String, String, u64)> {
    row.vdso_calls
        .iter()
        .filter(|c| c.provenance != Provenance::Sampled)
        .map(|c| {
            (
                c.call.name().to_owned(),
                c.clock.clone().unwrap_or_default(),
                c.provenance.name().to_owned(),
                c.count.expect("an exact row has a count"),
            )
        })
        .collect()
}

/// The exact entry points of a row, as JSON spells them, one line.
fn entry_points(row: &ProcessReport) -> String {
    let exact = row.exact.as_ref().expect("exact counting asked");
    let points: Vec<String> = exact.entry_points.iter().map(|e| e.to_string()).collect();
    points.join(" ")
}

fn exact_row(
    call: &str,
    clock: &str,
    provenance: &str,
    count: u64,
) -> (String, String, String, u64) {
    (call.into(), clock.into(), provenance.into(), count)
}

#[test]
fn exact_pid_counts_glibc_clock_gettime_with_a_uprobe() {
    require_root();
    let _serial = serial();
    const N: u64 = 5000;
    let workload = build_workload("time_calls", "vt-exact-up", &[]);
    let row = exact_run(&workload, &["monotonic", &N.to_string()]);
    assert_eq!(
        exact_rows(&row),
        [exact_row("clock_gettime", "CLOCK_MONOTONIC", "uprobe", N)],
        "{row:#?}"
    );
    assert!(!row.vdso_estimated);
    let exact = row.exact.as_ref().unwrap();
    assert_eq!(exact.state, ExactStatus::Traced);
    assert!(
        exact
            .entry_points
            .iter()
            .any(|e| e.to_string().ends_with("libc.so.6:clock_gettime")),
        "{exact:?}"
    );
    // The workload's one direct marker call entered the kernel: share = 1/(N+1).
    let share = row.kernel_share.unwrap();
    assert!((share - 1.0 / (N as f64 + 1.0)).abs() < 1e-9, "{share}");
}

/// The shipped static binary (stripped, musl: no libc symbol of its own to
/// name) measures a uprobe's cost at its own clock_gettime found by address,
/// and counts exactly.
#[test]
fn the_shipped_static_binary_counts_exactly() {
    require_root();
    let _serial = serial();
    const N: u64 = 2000;
    let dist = std::env::var_os("VDSO_OBSERVER_DIST")
        .map(std::path::PathBuf::from)
        .expect("VDSO_OBSERVER_DIST names target/dist: run the tests with `cargo xtask test`");
    let workload = build_workload("time_calls", "vt-exact-dist", &[]);
    let mut held = Held::start(&workload, &["monotonic", &N.to_string()]);
    let mut command = std::process::Command::new(dist.join("vdso-observer"));
    command
        .args(["top", "--once", "-d", "120", "--json", "--no-governor"])
        .args(["--exact-pid", &held.pid().to_string()])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let observer = ObserverRun::spawn(command);
    held.release();
    let pid = held.pid();
    held.wait();
    let row = row(&observer.finish(), pid);
    assert_eq!(
        exact_rows(&row),
        [exact_row("clock_gettime", "CLOCK_MONOTONIC", "uprobe", N)],
        "{row:#?}"
    );
}

#[test]
fn exact_pid_counts_gettimeofday_with_a_hardware_breakpoint() {
    require_root();
    let _serial = serial();
    const N: u64 = 3000;
    let workload = build_workload("time_calls", "vt-exact-bp", &[]);
    let row = exact_run(&workload, &["gtod", &N.to_string()]);
    assert_eq!(
        exact_rows(&row),
        [exact_row("gettimeofday", "", "breakpoint", N)],
        "{row:#?}"
    );
    assert_eq!(
        row.comm, "vt-exact-bp",
        "named though it never entered the kernel"
    );
}

#[test]
fn exact_counts_a_static_binary_through_its_own_clock_gettime() {
    require_root();
    let _serial = serial();
    const N: u64 = 4000;
    let workload = build_workload("time_calls", "vt-exact-static", &["-static"]);
    let mut observer = ObserverRun::start_logging(
        &[
            "top",
            "--once",
            "-d",
            "120",
            "--json",
            "--exact",
            "--no-governor",
        ],
        "debug",
    );
    let mut held = Held::start(&workload, &["monotonic", &N.to_string()]);
    // --exact picks up new processes within a second: wait until it says so.
    observer.wait_log(&format!("pid {}: exact counting attached", held.pid()));
    held.release();
    let pid = held.pid();
    held.wait();
    let report = observer.finish();
    let row = row(&report, pid);
    assert_eq!(
        exact_rows(&row),
        [exact_row("clock_gettime", "CLOCK_MONOTONIC", "uprobe", N)],
        "{row:#?}"
    );
    let entry_points = entry_points(&row);
    assert!(
        entry_points.contains("vt-exact-static:clock_gettime"),
        "the binary's own clock_gettime, no libc: {entry_points}"
    );
}

#[test]
fn exact_counts_musl_through_its_clock_gettime_gettimeofday_included() {
    require_root();
    let _serial = serial();
    const N: u64 = 3000;
    let workload = build_workload_with("musl-gcc", "time_calls", "vt-exact-musl", &[]);
    let mut monotonic = Held::start(&workload, &["monotonic", &N.to_string()]);
    let mut gtod = Held::start(&workload, &["gtod", &N.to_string()]);
    let (a, b) = (monotonic.pid(), gtod.pid());
    let observer = ObserverRun::start(&[
        "--exact-pid",
        &a.to_string(),
        "--exact-pid",
        &b.to_string(),
        "--no-governor",
    ]);
    monotonic.release();
    gtod.release();
    monotonic.wait();
    gtod.wait();
    let report = observer.finish();
    let row_a = row(&report, a);
    assert_eq!(
        exact_rows(&row_a),
        [exact_row("clock_gettime", "CLOCK_MONOTONIC", "uprobe", N)],
        "{row_a:#?}"
    );
    let entry_points = entry_points(&row_a);
    assert!(
        entry_points.contains("musl"),
        "musl's own clock_gettime: {entry_points}"
    );
    // musl's gettimeofday is clock_gettime(CLOCK_REALTIME) underneath.
    assert_eq!(
        exact_rows(&row(&report, b)),
        [exact_row("clock_gettime", "CLOCK_REALTIME", "uprobe", N)]
    );
}

/// Builds tests/workloads/go/time_now.go with Debian's Go (std only, offline).
fn build_go_workload() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("go");
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("vt-go");
    let source =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/go/time_now.go");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(&source)
        .env("GOCACHE", dir.join("cache"))
        .env("HOME", &dir)
        .env("GO111MODULE", "off")
        .status()
        .expect("go (golang-go, installed by `cargo xtask setup --for-tests`)");
    assert!(status.success(), "go build failed");
    binary
}

#[test]
fn exact_counts_go_through_its_runtime() {
    require_root();
    let _serial = serial();
    const N: u64 = 5000;
    let workload = build_go_workload();
    let mut child = Command::new(&workload)
        .arg(N.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let observer = ObserverRun::start(&["--exact-pid", &pid.to_string(), "--no-governor"]);
    child.stdin.take().unwrap().write_all(b"x").unwrap();
    assert!(child.wait().unwrap().success());
    let report = observer.finish();
    let row = row(&report, pid);
    let rows = exact_rows(&row);
    // time.Now() reads CLOCK_REALTIME and CLOCK_MONOTONIC through the vDSO
    // itself (Go >= 1.17 on amd64); the runtime adds its own monotonic reads.
    let realtime = rows
        .iter()
        .find(|r| r.1 == "CLOCK_REALTIME")
        .expect("REALTIME row");
    assert_eq!((realtime.2.as_str(), realtime.3), ("uprobe", N), "{row:#?}");
    let monotonic = rows
        .iter()
        .find(|r| r.1 == "CLOCK_MONOTONIC")
        .expect("MONOTONIC row");
    assert!(monotonic.3 >= N, "{row:#?}");
    let entry_points = entry_points(&row);
    assert!(
        entry_points.contains("nanotime1") && entry_points.contains("time.now"),
        "{entry_points}"
    );
}

#[test]
fn default_sampling_estimates_a_hot_loop_within_half() {
    require_root();
    let _serial = serial();
    let hot = build_workload("time_calls", "vt-est-hot", &[]);
    let idle = build_workload("time_calls", "vt-est-none", &[]);
    let observer = ObserverRun::start(&[]);
    // 5 M calls/s for 3 s, and beside it a process making only direct syscalls.
    let quiet = Command::new(&idle)
        .args(["steady", "1000", "3"])
        .spawn()
        .unwrap();
    let truth = run_hot_loop(&hot);
    let mut quiet = quiet;
    assert!(quiet.wait().unwrap().success());
    let report = observer.finish();
    let hot_row = rows_of_comm(&report, "vt-est-hot")
        .pop()
        .expect("hot loop row");
    assert!(hot_row.vdso_estimated);
    let error = estimate_error(truth, &hot_row, &report);
    let estimate = truth * (1.0 + error);
    eprintln!(
        "hot loop: {truth} calls, estimated {estimate:.0} ({:+.1}%), {} samples",
        error * 100.0,
        hot_row.vdso_calls[0].samples.unwrap_or_default()
    );
    // A gross-error check, not an accuracy claim: calibrated once at start, the
    // sampled cost of a call moves with what else runs (a build beside the test
    // put 1 of 10 runs at -28.6%; two test suites and a build beside, 4 of 20
    // between -58% and +27%; a quiet machine within ±5%). Accuracy is measured by
    // `cargo xtask bench`; calibration that follows the load is issue 12's.
    assert!(
        error.abs() <= 0.6,
        "estimate {estimate:.0} vs {truth}: {hot_row:#?}"
    );
    // A 95% interval (the samples' and the calibration's Poisson error).
    let uncertainty = hot_row.vdso_uncertainty.unwrap();
    assert!((0.05..0.5).contains(&uncertainty), "{uncertainty}");

    let quiet_row = rows_of_comm(&report, "vt-est-none")
        .pop()
        .expect("direct row");
    assert_eq!(quiet_row.vdso_calls_per_sec, Some(0.0), "{quiet_row:#?}");
    assert_eq!(quiet_row.kernel_share, Some(1.0));
}

/// Coarse reads cost 2-3 ns; priced as CLOCK_MONOTONIC reads they were
/// -88%. What one costs in its own code moves from run to run of the same
/// loop (0.9 or 1.6 ns here; see costs.rs), so three runs are priced and
/// their mean error is checked.
#[test]
fn coarse_clock_reads_are_priced_as_coarse_reads() {
    require_root();
    let _serial = serial();
    let hot = build_workload("time_calls", "vt-est-coarse", &[]);
    let observer = observer_logging_calibration();
    let truths = coarse_loops(&hot);
    let (report, log) = report_and_calibration_log(observer);
    let coarse = report
        .observer
        .vdso_costs
        .coarse
        .unwrap_or_else(|| panic!("coarse reads not calibrated:\n{}", log));
    assert!(
        coarse.marked_ns > 0.0 && coarse.samples >= 20,
        "{coarse:?}\n{}",
        log
    );
    let mean = coarse_mean_error(&report, "vt-est-coarse", &truths);
    eprintln!(
        "coarse hot loops: mean error {:+.1}%, costs {coarse:?}\n{}",
        mean * 100.0,
        log
    );
    // A gross check (priced as fine reads they were -88%): the calibration
    // child is a Rust loop, and a test build (opt-level 2) shapes it unlike
    // the release: -28% and -35% means here, where the release reads +2%.
    assert!(mean.abs() <= 0.6, "{mean}: {report:#?}\n{}", log);
}

/// A program reading coarse and fine clocks in turn (10 or 30 coarse reads
/// a fine one) has its clock_gettime samples split between the two. Its
/// samples fall on instructions the calibration children's did not (past
/// the coarse read's last sampled offset, in the return), and priced as the
/// wrong kind one took the other's: fine reads read +115% and coarse -81%
/// in one of four calibrations when only the children's sampled stretches
/// were marked, +3% to +25% in the others (-6% to +6% since). 200-400
/// samples of fine reads: ±20% is over 2.8 sigma of their own error. Coarse
/// reads among fine ones cost less than alone (-17% to -35% here), so their
/// bound is loose.
#[test]
fn coarse_and_fine_reads_of_one_process_are_told_apart() {
    require_root();
    let _serial = serial();
    let mixed = build_workload("time_calls", "vt-est-mixed", &[]);
    let observer = observer_logging_calibration();
    let truths: Vec<(&str, u32, f64, f64)> = [("10", "2"), ("30", "3")]
        .into_iter()
        .map(|(per_fine, seconds)| {
            let (pid, out) = run_workload_output(&mixed, &["mixcoarse", per_fine, seconds]);
            let counts: Vec<f64> = out.split_whitespace().map(|n| n.parse().unwrap()).collect();
            (per_fine, pid, counts[0], counts[1])
        })
        .collect();
    let (report, calibration) = report_and_calibration_log(observer);
    for (per_fine, pid, coarse, fine) in truths {
        let rows = rows_of_pid(&report, pid);
        let calls = |clock: Option<&str>| -> f64 {
            rows.iter()
                .flat_map(|row| &row.vdso_calls)
                .filter(|c| c.call.name() == "clock_gettime" && c.clock.as_deref() == clock)
                .map(|c| c.calls)
                .sum()
        };
        let fine_error = (calls(None) - fine) / fine;
        let coarse_error = (calls(Some("CLOCK_*_COARSE")) - coarse) / coarse;
        eprintln!(
            "{per_fine} coarse reads a fine one, pid {pid}: fine {fine} estimated {:+.1}%, \
             coarse {coarse} estimated {:+.1}%",
            fine_error * 100.0,
            coarse_error * 100.0
        );
        assert!(
            fine_error.abs() <= 0.2 && (-0.6..=0.5).contains(&coarse_error),
            "{per_fine} coarse a fine: fine {fine_error:+.2}, coarse {coarse_error:+.2}\n{rows:#?}\n{}",
            calibration
        );
    }
}

/// An observer logging its calibration at debug (which offsets each child's
/// samples hit, the costs): the coarse tests put it into every failure, as a
/// run that calibrates no coarse price is rare and says why only there.
fn observer_logging_calibration() -> ObserverRun {
    ObserverRun::start_logging(
        &["top", "--once", "-d", "120", "--json"],
        "vdso_observer=debug,warn",
    )
}

/// Ends the window: the report, and the log's lines about the calibration.
fn report_and_calibration_log(observer: ObserverRun) -> (Report, String) {
    let (stdout, log) = observer.finish_text();
    let report = parse_report(stdout.trim()).unwrap_or_else(|err| panic!("{err}\n{log}"));
    let calibration = log
        .lines()
        .filter(|line| line.contains("coarse") || line.contains("calibration"))
        .collect::<Vec<_>>()
        .join("\n");
    (report, calibration)
}

/// Three 1 s loops of coarse reads: (pid, calls) of each.
fn coarse_loops(hot: &std::path::Path) -> Vec<(u32, f64)> {
    (0..3)
        .map(|_| {
            let (pid, out) = run_workload_output(hot, &["hotcoarse", "0", "1"]);
            (pid, out.split_whitespace().next().unwrap().parse().unwrap())
        })
        .collect()
}

/// The mean error of the coarse loops' estimates (rows of `comm`), each
/// with a coarse row; many of their samples must be in coarse-only code.
fn coarse_mean_error(report: &Report, comm: &str, truths: &[(u32, f64)]) -> f64 {
    let rows = rows_of_comm(report, comm);
    assert_eq!(rows.len(), truths.len(), "{rows:#?}");
    let mut errors = Vec::new();
    let (mut in_coarse_code, mut samples) = (0, 0);
    for row in &rows {
        let coarse_row = row
            .vdso_calls
            .iter()
            .find(|c| c.clock.as_deref() == Some("CLOCK_*_COARSE"))
            .unwrap_or_else(|| panic!("no coarse row: {row:#?}"));
        in_coarse_code += coarse_row.samples.unwrap();
        samples += row.vdso_calls.iter().filter_map(|c| c.samples).sum::<u64>();
        let truth = truths
            .iter()
            .find(|(pid, _)| *pid == row.pid)
            .map(|(_, truth)| *truth)
            .unwrap_or_else(|| panic!("pid {} is none of the runs {truths:?}", row.pid));
        let error = estimate_error(truth, row, report);
        eprintln!(
            "coarse hot loop, pid {}: {truth} calls, estimated {:+.1}% (±{:.1}%)",
            row.pid,
            error * 100.0,
            row.vdso_uncertainty.unwrap() * 100.0
        );
        errors.push(error);
    }
    // Many of their samples land in coarse-only code: 42-66% of a C loop's
    // samples in clock_gettime here (perf, system-wide at 499 Hz). Without
    // the marking none would. The rest are priced as fine reads; the mean
    // estimate is the check.
    assert!(
        in_coarse_code * 4 > samples,
        "{in_coarse_code} of {samples} samples in coarse-only code: {rows:#?}"
    );
    errors.iter().sum::<f64>() / errors.len() as f64
}

/// An observer with a tenth of a CPU (a CPU quota on its unit or pod, a
/// busy machine) still calibrates by samples: its calibration children run
/// in its cgroup, and one run of the fine plan got 37 samples of
/// clock_gettime there, under the 40 a price needs (it fell back to the
/// stopwatch), the coarse plan a third of what it needs (coarse reads were
/// priced as fine ones, -88%). Starved runs run again, added up.
#[test]
fn an_observer_with_a_tenth_of_a_cpu_still_calibrates_by_samples() {
    require_root();
    let _serial = serial();
    let hot = build_workload("time_calls", "vt-quota-coarse", &[]);
    let quota = CpuQuota::create("vt-observer-quota", 10);
    let mut command = Command::new(env!("CARGO_BIN_EXE_vdso-observer"));
    command
        .args(["top", "--once", "-d", "120", "--json"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    quota.enter_on_exec(&mut command);
    let observer = ObserverRun::spawn(command);
    let truths = coarse_loops(&hot);
    let (stdout, stderr) = observer.finish_text();
    drop(quota);
    let report = parse_report(stdout.trim()).unwrap_or_else(|err| panic!("{err}\n{stderr}"));
    // The starved case was built: the first fine run said too little.
    assert!(
        stderr.contains("calibration ran its child") && stderr.contains("% of a CPU"),
        "the quota did not starve the calibration child: {stderr}"
    );
    let costs = &report.observer.vdso_costs;
    assert!(
        costs.calibration_samples >= 40,
        "clock_gettime priced by the stopwatch: {costs:?}\n{stderr}"
    );
    let coarse = costs
        .coarse
        .unwrap_or_else(|| panic!("coarse reads not calibrated: {stderr}"));
    assert!(coarse.samples >= 20, "{coarse:?}");
    let mean = coarse_mean_error(&report, "vt-quota-coarse", &truths);
    eprintln!(
        "a tenth of a CPU: {} samples behind clock_gettime, coarse {coarse:?}; coarse loops \
         estimated {:+.1}% on the mean",
        costs.calibration_samples,
        mean * 100.0
    );
    // Priced as fine reads they read -88%. One calibration prices all three
    // loops, from fewer samples than on a free CPU (its stated interval is
    // ±82-85% here): -41.5% to +1.3% in 5 runs.
    assert!((-0.75..=1.0).contains(&mean), "{mean}: {report:#?}");
}

/// A fine read never runs a coarse read's own code: none of its samples may
/// be priced as coarse reads, each of which stands for 10-25 times the calls
/// of a fine sample. Judged instruction by instruction, the calibration of
/// a release build marked an entry or return instruction fine reads run in
/// 18 of 25 starts, and 3 of 40 runs of a C loop read +15% to +31% by
/// samples there (the unit tests of measure::coarse hold such a
/// calibration). This test build's calibration did not show it in 4 runs.
#[test]
fn fine_reads_are_never_priced_as_coarse_reads() {
    require_root();
    let _serial = serial();
    let hot = build_workload("time_calls", "vt-est-fine", &[]);
    let observer = ObserverRun::start(&[]);
    for _ in 0..3 {
        run_workload(&hot, &["hot", "0", "1"]);
    }
    let report = observer.finish();
    assert!(
        report.observer.vdso_costs.coarse.is_some(),
        "coarse reads calibrated"
    );
    let rows = rows_of_comm(&report, "vt-est-fine");
    assert_eq!(rows.len(), 3, "{rows:#?}");
    for row in &rows {
        let samples: u64 = row.vdso_calls.iter().filter_map(|c| c.samples).sum();
        assert!(samples >= 100, "too few samples to tell: {row:#?}");
        assert!(
            row.vdso_calls
                .iter()
                .all(|c| c.clock.as_deref() != Some("CLOCK_*_COARSE")),
            "fine reads priced as coarse ones: {row:#?}"
        );
    }
}

/// time() takes a fraction of a ns as sampled: priced by the stopwatch
/// (1 ns floor, the loop around the call included) or by a loop that calls
/// the vDSO straight, a C loop through glibc was estimated at a third of its
/// calls on an Intel VM (-67% in every bench run). The calibration calls it
/// through a PLT from two loop shapes and states their disagreement.
#[test]
fn time_calls_are_priced_as_c_programs_call_time() {
    require_root();
    let _serial = serial();
    let hot = build_workload("time_calls", "vt-est-time", &[]);
    let observer = ObserverRun::start(&[]);
    const CALLS: f64 = 2e9;
    let status = Command::new(&hot)
        .args(["time", &format!("{CALLS}")])
        .status()
        .unwrap();
    assert!(status.success());
    let report = observer.finish();
    let costs = &report.observer.vdso_costs;
    let time_samples = costs.call_samples.get(&TimeCall::Time).copied();
    let spread = costs.call_site_spread.get(&TimeCall::Time).copied();
    assert!(
        time_samples.is_some_and(|s| s >= 10) && spread.is_some_and(|s| s >= 0.15),
        "time() calibrated by its own samples from two call sites: {costs:?}"
    );
    let row = rows_of_comm(&report, "vt-est-time").pop().expect("row");
    assert_eq!(vdso_functions(&row), ["time"], "{row:#?}");
    let error = estimate_error(CALLS, &row, &report);
    let uncertainty = row.vdso_uncertainty.unwrap();
    eprintln!(
        "time() loop: {CALLS} calls, estimated {:+.1}% (±{:.1}%), {:?} ns a call, {time_samples:?} \
         samples behind it, call-site spread {spread:?}",
        error * 100.0,
        uncertainty * 100.0,
        costs.ns_per_call.get(&TimeCall::Time)
    );
    // The interval holds the call-site term: ±15% at one sigma at least.
    assert!(uncertainty >= 1.96 * 0.15, "{uncertainty}");
    // A gross check (the bench measures coverage): -67% was the fault.
    assert!((-0.5..=1.0).contains(&error), "{error}: {row:#?}");
}

/// Sets kernel.perf_event_max_sample_rate, and puts the old value back on drop.
struct MaxSampleRate(String);

const MAX_SAMPLE_RATE: &str = "/proc/sys/kernel/perf_event_max_sample_rate";

impl MaxSampleRate {
    fn set(rate: u64) -> MaxSampleRate {
        let old = std::fs::read_to_string(MAX_SAMPLE_RATE).unwrap();
        std::fs::write(MAX_SAMPLE_RATE, rate.to_string()).unwrap();
        MaxSampleRate(old.trim().to_owned())
    }
}

impl Drop for MaxSampleRate {
    fn drop(&mut self) {
        let _ = std::fs::write(MAX_SAMPLE_RATE, &self.0);
    }
}

/// The kernel throttles perf events above kernel.perf_event_max_sample_rate
/// (and lowers it by itself when its perf interrupts take too long, as on a
/// VM whose sampler lost up to 99.7% of its samples): the observer samples at
/// the bound, estimates stay right, and a bound lowered while it runs is said.
#[test]
fn the_sampler_keeps_below_the_kernels_sample_rate_and_says_when_it_drops() {
    require_root();
    let _serial = serial();
    let hot = build_workload("time_calls", "vt-est-bound", &[]);
    let bound = MaxSampleRate::set(3000);
    // The kernel's bound alone (a virtual machine would also hold 4 999 Hz
    // to 999; see the next test).
    let observer = ObserverRun::spawn(observer_command(
        &["--sample-hz", "4999"],
        &[(SAMPLE_HZ_BOUND, "off")],
    ));
    // At full speed: a loop that sleeps between batches wakes on the
    // sampler's own timer (timer slack), which biases any rate.
    let truth = run_hot(&hot, "0", "3");
    // Lowered while it runs: seen at the window's end.
    std::fs::write(MAX_SAMPLE_RATE, "1400").unwrap();
    let report = observer.finish();
    drop(bound);
    let sampler = report
        .observer
        .probes
        .iter()
        .find(|p| p.attach_point == "perf_event:cpu-clock")
        .unwrap();
    let note = sampler.note.as_deref().unwrap_or_default();
    assert!(note.starts_with("throttled"), "{sampler:?}");
    assert!(note.contains("--sample-hz 700"), "{note}");
    // Half the bound, 1500 Hz, not 4999: one sample stands for 1/1500 s.
    assert_eq!(
        report.observer.vdso_sample_period_ns,
        Some(1_000_000_000 / 1500)
    );
    let row = rows_of_comm(&report, "vt-est-bound").pop().expect("row");
    let error = estimate_error(truth, &row, &report);
    eprintln!("bounded sampler: estimate {:+.1}%", error * 100.0);
    assert!(error.abs() <= 0.6, "{error}: {row:#?}");
}

/// What lifts the observer's sampling bound in a virtual machine.
const SAMPLE_HZ_BOUND: &str = "VDSO_OBSERVER_SAMPLE_HZ_BOUND";

/// `top --once -d 120 --json EXTRA...` with `env`, output piped.
fn observer_command(extra: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(OBSERVER);
    command
        .args(["top", "--once", "-d", "120", "--json"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Whether this machine shows a hypervisor the way x86 CPUs say so (the
/// CPUID bit Linux lists as the `hypervisor` flag).
fn cpu_says_guest() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .filter(|line| line.starts_with("flags"))
        .any(|line| line.split_whitespace().any(|flag| flag == "hypervisor"))
}

/// In a virtual machine the sampler's ticks fall into step with programs
/// that run in short timer-paced bursts above ~1 kHz (`cargo xtask bench
/// coverage`): a guest samples at 999 Hz at most, says why in the sampler's
/// status and in `doctor`, and samples as asked when the bound is lifted.
/// On bare metal nothing is lowered.
#[test]
fn a_virtual_machine_samples_at_most_999_hz_and_says_why() {
    require_root();
    let _serial = serial();
    // The kernel lowers its own maximum when perf interrupts take long (VMs
    // do), and keeps it lowered: pinned above 2 × 4 999 so only the guest
    // bound can act, whatever this machine's history.
    let _kernel_max = MaxSampleRate::set(100_000);
    let guest = cpu_says_guest();
    let sampler_of = |report: &vdso_observer::model::Report| {
        report
            .observer
            .probes
            .iter()
            .find(|p| p.attach_point == "perf_event:cpu-clock")
            .cloned()
            .unwrap()
    };

    let report = ObserverRun::spawn(observer_command(&["--sample-hz", "4999"], &[])).finish();
    let sampler = sampler_of(&report);
    let note = sampler.note.clone().unwrap_or_default();
    if guest {
        assert_eq!(
            report.observer.vdso_sample_period_ns,
            Some(1_000_000_000 / 999)
        );
        assert!(
            note.starts_with("sampling at 999 Hz, not 4999: this is a virtual machine"),
            "{sampler:?}"
        );
        assert!(note.contains(SAMPLE_HZ_BOUND), "{note}");
    } else {
        assert_eq!(
            report.observer.vdso_sample_period_ns,
            Some(1_000_000_000 / 4999),
            "{sampler:?}"
        );
    }

    // Lifted: as asked, and nothing said.
    let report = ObserverRun::spawn(observer_command(
        &["--sample-hz", "4999"],
        &[(SAMPLE_HZ_BOUND, "off")],
    ))
    .finish();
    assert_eq!(
        report.observer.vdso_sample_period_ns,
        Some(1_000_000_000 / 4999)
    );
    assert_eq!(sampler_of(&report).note, None);

    // The default rate is below the bound: not lowered.
    let report = ObserverRun::start(&[]).finish();
    assert_eq!(
        report.observer.vdso_sample_period_ns,
        Some(1_000_000_000 / 499)
    );

    // doctor says how fast this machine may sample, and why.
    let doctor = Command::new(OBSERVER)
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let diagnosis: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
    let rate = diagnosis["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "sampling rate")
        .unwrap_or_else(|| panic!("no sampling rate in {diagnosis}"))["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    if guest {
        assert!(
            rate.starts_with("--sample-hz up to 999: a virtual machine (the CPU's hypervisor flag"),
            "{rate}"
        );
    } else {
        assert!(
            rate.contains("half of kernel.perf_event_max_sample_rate"),
            "{rate}"
        );
    }
}

/// Median calls per CPU-second of a `hotlog` workload over its 0.25 s log
/// intervals: a median, so one interval disturbed by the machine does not decide.
fn rate(lines: &[(u64, u64)]) -> f64 {
    let mut rates: Vec<f64> = lines
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) as f64 / ((w[1].1 - w[0].1) as f64 / 1e9))
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

#[test]
fn the_governor_keeps_a_hot_process_within_budget() {
    require_root();
    let _serial = serial();
    let hot = build_workload("time_calls", "vt-gov-hot", &[]);
    // Longer than the test needs: it is killed once enough intervals are in.
    let mut child = Command::new(&hot)
        .args(["hotlog", "0", "120"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (sender, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut fields = line.split_whitespace().map(|f| f.parse::<u64>().unwrap());
            let entry = (fields.next().unwrap(), fields.next().unwrap());
            if sender.send(entry).is_err() {
                break;
            }
        }
    });
    // Counted in intervals the loop reports (every 0.25 s), not in time the test
    // sleeps: on a loaded machine start-up and the loop both run slower.
    let take = |count: usize| -> Vec<(u64, u64)> {
        (0..count)
            .map(|_| {
                lines
                    .recv_timeout(Duration::from_secs(60))
                    .expect("the hot loop reports every 0.25 s")
            })
            .collect()
    };
    // Before: 8 intervals of the loop alone.
    let before = take(8);
    let observer = ObserverRun::start(&["--exact", "--exact-budget", "2"]);
    // Whatever the loop reported while the observer started is neither.
    let _starting: Vec<(u64, u64)> = lines.try_iter().collect();
    let during = take(12);
    let report = observer.finish();
    let _ = child.kill();
    let _ = child.wait();
    let base = rate(&before[1..]);
    let observed = rate(&during);
    let slowdown = 1.0 - observed / base;
    let row = row(&report, pid);
    eprintln!(
        "governor: {base:.0} calls/CPU-s before, {observed:.0} during ({:+.2}% slowdown); state {:?}",
        slowdown * 100.0,
        row.exact
    );
    let exact = row.exact.as_ref().unwrap();
    assert_eq!(exact.state, ExactStatus::OverBudget, "{row:#?}");
    assert!(exact.note.as_ref().unwrap().contains("budget 2%"));
    assert!(row.vdso_estimated, "falls back to the estimate");
    // What the probes cost, from the observer's own count of trapped calls: even
    // at 50 µs a hit (5–20 µs measured here) within the 2% budget of the CPU time
    // the loop used meanwhile. (Its wall-clock slowdown, printed above, is noise
    // of the machine as much as of the observer: `cargo xtask bench` measures it.)
    let trapped: u64 = exact_rows(&row).iter().map(|r| r.3).sum();
    let cpu_seconds = (during.last().unwrap().1 - during[0].1) as f64 / 1e9;
    assert!(
        trapped as f64 * 50e-6 <= 0.02 * cpu_seconds,
        "{trapped} trapped calls in {cpu_seconds:.2} CPU-s: {row:#?}"
    );
}

#[test]
fn the_governor_detaches_a_process_that_turns_hot() {
    require_root();
    let _serial = serial();
    let hot = build_workload("time_calls", "vt-gov-turn", &[]);
    let mut held = Held::start(&hot, &["hot", "0", "2"]);
    let pid = held.pid();
    let observer = ObserverRun::start(&["--exact-pid", &pid.to_string(), "--exact-budget", "2"]);
    held.release();
    let out = held.wait();
    let truth: f64 = out.split_whitespace().next().unwrap().parse().unwrap();
    // A refresh (every second) between its exit and the window's end: it
    // used to forget the detached process, and its row said nothing of why.
    std::thread::sleep(Duration::from_millis(1500));
    let report = observer.finish();
    let row = row(&report, pid);
    let exact = row
        .exact
        .as_ref()
        .expect("the detached state, said once more");
    assert_eq!(exact.state, ExactStatus::OverBudget, "{row:#?}");
    assert!(
        exact.note.as_ref().unwrap().starts_with("detached"),
        "{exact:?}"
    );
    assert!(exact.overhead.unwrap() > 0.02);
    // The window was exact until the governor detached, sampled after: both
    // parts, each with its provenance, add up to the calls made.
    let parts: Vec<(String, f64)> = row
        .vdso_calls
        .iter()
        .map(|c| (c.provenance.name().to_owned(), c.calls))
        .collect();
    assert!(
        parts.iter().any(|(p, calls)| p == "uprobe" && *calls > 0.0),
        "{parts:?}"
    );
    assert!(
        parts
            .iter()
            .any(|(p, calls)| p == "sampled" && *calls > 0.0),
        "{parts:?}"
    );
    let total: f64 = parts.iter().map(|(_, calls)| calls).sum();
    eprintln!("exact then sampled: {parts:?}, {total:.0} of {truth}");
    assert!(
        (total - truth).abs() <= 0.6 * truth,
        "{total} vs {truth}: {parts:?}"
    );
}

const CLOCKSOURCE: &str = "/sys/devices/system/clocksource/clocksource0/current_clocksource";

/// The machine's clocksource switched for a test, put back on drop (a failing
/// test included).
struct ClocksourceSwitch {
    previous: String,
}

impl ClocksourceSwitch {
    fn to(name: &str) -> ClocksourceSwitch {
        let previous = std::fs::read_to_string(CLOCKSOURCE)
            .unwrap()
            .trim()
            .to_owned();
        let available =
            std::fs::read_to_string(CLOCKSOURCE.replace("current", "available")).unwrap();
        assert!(
            available.split_whitespace().any(|c| c == name),
            "{name} is not among this machine's clocksources ({available}); the development \
             machines (KVM guests) all offer it"
        );
        std::fs::write(CLOCKSOURCE, name).unwrap();
        ClocksourceSwitch { previous }
    }
}

impl Drop for ClocksourceSwitch {
    fn drop(&mut self) {
        let _ = std::fs::write(CLOCKSOURCE, &self.previous);
    }
}

/// Runs `workload hot 5000000 3` (5 M vDSO calls/s for 3 s) and returns how
/// many calls it made.
fn run_hot_loop(workload: &std::path::Path) -> f64 {
    run_hot(workload, "5000000", "3")
}

/// `workload hot RATE SECONDS` (RATE 0: as fast as it can): the calls made.
fn run_hot(workload: &std::path::Path, rate: &str, seconds: &str) -> f64 {
    let out = Command::new(workload)
        .args(["hot", rate, seconds])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The hot loop under a fresh observer: (truth, the workload's row, the report).
fn estimate_hot_loop(workload: &std::path::Path, comm: &str) -> (f64, ProcessReport, Report) {
    let observer = ObserverRun::start(&[]);
    let truth = run_hot_loop(workload);
    let report = observer.finish();
    let row = rows_of_comm(&report, comm).pop().expect("hot loop row");
    (truth, row, report)
}

fn estimate_error(truth: f64, row: &ProcessReport, report: &Report) -> f64 {
    let estimate = row.vdso_calls_per_sec.unwrap() * report.window_seconds;
    (estimate - truth) / truth
}

/// The functions of a process's vDSO rows, each once: every row a time
/// call, no "other" code priced.
fn vdso_functions(row: &ProcessReport) -> Vec<&'static str> {
    let mut functions: Vec<&'static str> = row.vdso_calls.iter().map(|c| c.call.name()).collect();
    functions.sort();
    functions.dedup();
    functions
}

#[test]
fn kvm_clock_pvclock_samples_are_charged_to_clock_gettime() {
    require_root();
    let _serial = serial();
    let hot = build_workload("time_calls", "vt-kvmclock", &[]);
    let _switch = ClocksourceSwitch::to("kvm-clock");
    // Calibrated on kvm-clock: its vDSO reads the clock in an unexported
    // pvclock helper, outside every exported symbol. Flat out for 2 s: many
    // samples, so noise does not decide.
    let observer = ObserverRun::start(&[]);
    let truth = run_hot(&hot, "0", "2");
    let report = observer.finish();
    let row = rows_of_comm(&report, "vt-kvmclock")
        .pop()
        .expect("hot loop row");
    let error = estimate_error(truth, &row, &report);
    eprintln!(
        "kvm-clock hot loop: {truth} calls, error {:+.1}%, {row:?}",
        error * 100.0
    );
    assert_eq!(vdso_functions(&row), ["clock_gettime"], "{row:#?}");
    // Before, helper samples were priced as extra calls: +415% and more.
    assert!(error.abs() <= 0.6, "{error}: {row:#?}");
    let unattributed = report.observer.lost.vdso_samples_unattributed;
    let samples: u64 = row.vdso_calls.iter().filter_map(|c| c.samples).sum();
    assert!(unattributed * 100 <= samples, "{unattributed} of {samples}");
}

#[test]
fn i386_syscalls_through_kernel_vsyscall_are_not_vdso_calls() {
    require_root();
    let _serial = serial();
    let workload = build_workload("time_calls", "vt-getppid32", &["-m32"]);
    let observer = ObserverRun::start(&[]);
    // Every i386 libc syscall passes __kernel_vsyscall in vdso32: 3 s of getppid.
    let pid = run_workload(&workload, &["bench", "6000000", "getppid"]);
    let report = observer.finish();
    for row in rows_of_pid(&report, pid) {
        assert!(row.vdso_calls.is_empty(), "{row:#?}");
        assert_eq!(row.vdso_calls_per_sec, Some(0.0), "{row:#?}");
    }
}

#[test]
fn i386_hot_loop_is_estimated_from_the_32_bit_image() {
    require_root();
    let _serial = serial();
    let hot = build_workload("time_calls", "vt-hot32", &["-m32"]);
    let (truth, row, report) = estimate_hot_loop(&hot, "vt-hot32");
    let error = estimate_error(truth, &row, &report);
    eprintln!(
        "i386 hot loop: {truth} calls, error {:+.1}%, i386 cost ratio {:?}",
        error * 100.0,
        report.observer.vdso_costs.i386_ratio
    );
    assert_eq!(vdso_functions(&row), ["clock_gettime"], "{row:#?}");
    assert!(error.abs() <= 0.6, "{error}: {row:#?}");
    assert!(report.observer.vdso_costs.i386_ratio.is_some());
}

/// Runs a held workload under `--exact-pid` (no governor) and returns its row.
fn exact_run(workload: &std::path::Path, args: &[&str]) -> ProcessReport {
    let mut held = Held::start(workload, args);
    let observer = ObserverRun::start(&["--exact-pid", &held.pid().to_string(), "--no-governor"]);
    held.release();
    let pid = held.pid();
    held.wait();
    row(&observer.finish(), pid)
}

#[test]
fn exact_counts_i386_processes_from_their_own_image() {
    require_root();
    let _serial = serial();
    let workload = build_workload("time_calls", "vt-exact32", &["-m32"]);
    // i386 glibc routes clock_gettime, gettimeofday and time through
    // __clock_gettime64 (vdso32's __vdso_clock_gettime64); the clock is read
    // from the stack, not from rdi.
    let row = exact_run(&workload, &["monotonic", "5000"]);
    assert_eq!(
        exact_rows(&row),
        [exact_row(
            "clock_gettime",
            "CLOCK_MONOTONIC",
            "uprobe",
            5000
        )],
        "{row:#?}"
    );
    assert!(
        entry_points(&row)
            .split(' ')
            .any(|e| e.ends_with("libc.so.6:__clock_gettime64")),
        "{row:#?}"
    );
    // CPU time: the vDSO passes it to the kernel; none answered in user space.
    let row = exact_run(&workload, &["cputime", "3000"]);
    assert_eq!(
        exact_rows(&row),
        [exact_row(
            "clock_gettime",
            "CLOCK_PROCESS_CPUTIME_ID",
            "uprobe",
            0
        )],
        "{row:#?}"
    );
    assert_eq!(
        counts(&row),
        [expect(
            "clock_gettime",
            "CLOCK_PROCESS_CPUTIME_ID",
            "vdso_fallback",
            "i386",
            3000
        )]
    );
    let row = exact_run(&workload, &["time", "1000"]);
    assert_eq!(
        exact_rows(&row),
        [exact_row(
            "clock_gettime",
            "CLOCK_REALTIME_COARSE",
            "uprobe",
            1000
        )],
        "{row:#?}"
    );
}

#[test]
fn exact_counts_getcpu_with_glibc_and_musl() {
    require_root();
    let _serial = serial();
    let glibc = build_workload("time_calls", "vt-getcpu", &[]);
    let musl = build_workload_with("musl-gcc", "time_calls", "vt-getcpu-musl", &[]);
    for workload in [glibc, musl] {
        let row = exact_run(&workload, &["getcpu", "1500"]);
        assert_eq!(
            exact_rows(&row),
            [exact_row("getcpu", "", "breakpoint", 1500)],
            "{row:#?}"
        );
        assert_eq!(row.kernel_entries, 0, "{row:#?}");
    }
}

#[test]
fn the_governor_judges_a_new_image_by_its_own_hits_after_exec() {
    require_root();
    let _serial = serial();
    let workload = build_workload("time_calls", "vt-exact-exec", &[]);
    // Each vDSO call followed by 50 µs of work: probes (2-10 µs a hit here)
    // cost well under half of its CPU time, before and after the exec.
    let mut held = Held::start(&workload, &["execpaced", "40000", "50"]);
    let mut observer = ObserverRun::start_logging(
        &[
            "top",
            "--once",
            "-d",
            "120",
            "--json",
            "--exact-pid",
            &held.pid().to_string(),
            "--exact-budget",
            "50",
        ],
        "debug",
    );
    held.release();
    let pid = held.pid();
    // Attached to the new image (the first attach was logged before the
    // observer said it observes): the first image's 40 000 hits are not its.
    observer.wait_log(&format!("pid {pid}: exact counting attached"));
    held.wait();
    let report = observer.finish();
    let rows = rows_of_pid(&report, pid);
    assert_eq!(rows.len(), 2, "two images: {rows:#?}");
    for row in &rows {
        let exact = row.exact.as_ref().unwrap();
        assert_eq!(exact.state, ExactStatus::Traced, "{row:#?}");
        assert!(exact.overhead.unwrap() < 0.5, "{row:#?}");
    }
    // The first image was exact from its first call.
    let first = rows.iter().min_by_key(|r| r.exec_id).unwrap();
    assert_eq!(
        exact_rows(first),
        [exact_row(
            "clock_gettime",
            "CLOCK_MONOTONIC",
            "uprobe",
            40_000
        )]
    );
}

#[test]
fn exact_counting_stays_within_its_open_file_limit() {
    require_root();
    let _serial = serial();
    let workload = build_workload("time_calls", "vt-exact-threads", &[]);
    // 400 threads alive at once, 3 breakpoints each, and 1024 descriptors.
    let mut held = Held::start(&workload, &["threadsgtod", "400", "100"]);
    let mut command = std::process::Command::new("prlimit");
    command
        .args(["--nofile=1024:1024", OBSERVER, "top", "--once", "-d", "120"])
        .args([
            "--json",
            "--exact-pid",
            &held.pid().to_string(),
            "--no-governor",
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut observer = ObserverRun::spawn(command);
    held.release();
    let pid = held.pid();
    observer.wait_log(&format!("pid {pid}: "));
    held.wait();
    let (stdout, stderr) = observer.finish_text();
    let report = parse_report(stdout.trim()).unwrap();
    let row = row(&report, pid);
    let exact = row.exact.as_ref().unwrap();
    assert_eq!(exact.state, ExactStatus::Traced, "{row:#?}");
    let note = exact.note.as_deref().unwrap_or_default();
    assert!(note.contains("open-file limit"), "{note}: {stderr}");
    assert!(stderr.contains("threads not armed"), "{stderr}");
    // The armed threads are exact (a thread armed when others ended and freed
    // their descriptors may be armed in the middle of its 100 calls); never all
    // 400 threads' 40 000.
    let exact: u64 = exact_rows(&row).iter().map(|r| r.3).sum();
    assert!(exact > 0 && exact < 400 * 100, "{exact}: {row:#?}");
}

#[test]
fn a_clocksource_change_is_calibrated_again() {
    require_root();
    let _serial = serial();
    let hot = build_workload("time_calls", "vt-recalibrate", &[]);
    let mut observer = ObserverRun::start_logging(&["top", "-d", "1", "--json"], "info");
    let _switch = ClocksourceSwitch::to("kvm-clock");
    observer.wait_log("calibrated again for the new clocksource");
    let truth = run_hot_loop(&hot);
    let (stdout, _) = observer.finish_text();
    let reports: Vec<Report> = stdout
        .lines()
        .map(|line| parse_report(line).unwrap())
        .collect();
    // The costs in force: tsc's in the first window, kvm-clock's in the last.
    let cost = |report: &Report| report.observer.vdso_costs.ns_per_call[&TimeCall::ClockGettime];
    let (before, after) = (cost(&reports[0]), cost(reports.last().unwrap()));
    eprintln!("clock_gettime: {before:.2} ns on tsc, {after:.2} ns on kvm-clock");
    assert_ne!(before, after, "the costs were not measured again");
    let estimate: f64 = reports
        .iter()
        .flat_map(|report| {
            let seconds = report.window_seconds;
            rows_of_comm(report, "vt-recalibrate")
                .into_iter()
                .map(move |row| row.vdso_calls_per_sec.unwrap_or(0.0) * seconds)
        })
        .sum();
    let error = (estimate - truth) / truth;
    eprintln!(
        "after the switch: {truth} calls, estimated {estimate:.0} ({:+.1}%)",
        error * 100.0
    );
    assert!(error.abs() <= 0.6, "{estimate} vs {truth}");
}

#[test]
fn breakpoints_of_ended_threads_are_released() {
    require_root();
    let _serial = serial();
    let workload = build_workload("time_calls", "vt-threadchurn", &[]);
    // 25 rounds of 20 threads living ~300 ms: 500 threads, each armed with 3
    // breakpoints (1 500 descriptors if none were ever released).
    let mut held = Held::start(&workload, &["threadchurn", "25", "300"]);
    let observer = ObserverRun::start(&["--exact-pid", &held.pid().to_string(), "--no-governor"]);
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", observer.pid()))
            .unwrap()
            .count()
    };
    let before = fds();
    held.release();
    let pid = held.pid();
    let mut most = 0;
    while std::fs::metadata(format!("/proc/{pid}/task")).is_ok()
        && held.child.try_wait().unwrap().is_none()
    {
        most = most.max(fds());
        std::thread::sleep(Duration::from_millis(20));
    }
    held.wait();
    let row = row(&observer.finish(), pid);
    eprintln!(
        "observer descriptors: {before} at start, at most {most} while 500 threads came and went"
    );
    // At most two rounds of 20 threads armed at once (3 each), plus slack.
    assert!(most < before + 200, "{most} descriptors, {before} at start");
    let exact: u64 = exact_rows(&row).iter().map(|r| r.3).sum();
    assert!(exact > 0, "{row:#?}");
}
