//! `top` in batch mode, as scripts use it: frames, filters, exit status.

mod common;

use std::process::Command;

use common::*;
use vdso_observer::model::{VsyscallMode, diagnosis::Decision};

#[test]
fn once_prints_one_table_with_the_workload_row() {
    require_root();
    let workload = build_workload("time_calls", "vt-batch-text", &[]);
    let observer = ObserverRun::start_with(&["top", "--once", "-d", "120"]);
    let pid = run_workload(&workload, &["direct", "1000"]);
    let (stdout, _) = observer.finish_text();
    // First the machine, as the TUI header says it; then the window.
    let state = stdout.lines().next().unwrap();
    assert!(
        state.starts_with("clocksource ")
            && state.contains("(vDSO-capable, measured)")
            && state.contains("vsyscall: "),
        "{stdout}"
    );
    let header = stdout.lines().nth(1).unwrap();
    assert!(header.starts_with("vdso-observer: "), "{stdout}");
    let columns = stdout.lines().nth(2).unwrap();
    for title in [
        "PID",
        "USER",
        "COMM",
        "CONTAINER",
        "EXCESS",
        "VDSO/s",
        "KERN/s",
        "KERN%",
        "FALLBK/s",
        "DIRECT/s",
        "VSYSC/s",
        "NOVDSO/s",
        "CALLS/s",
        "CLOCKS",
        "FLAG",
    ] {
        assert!(columns.contains(title), "{columns}");
    }
    let row = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&pid.to_string()))
        .unwrap_or_else(|| panic!("no row for {pid}:\n{stdout}"));
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(fields[1], "root");
    assert_eq!(fields[2], "vt-batch-text*", "exited during the window");
    assert!(
        row.contains("CLOCK_MONOTONIC") && row.ends_with("direct"),
        "{row}"
    );
    assert!(stdout.contains("* exited during the window"));
}

#[test]
fn batch_frames_and_json_lines() {
    require_root();
    let out = Command::new(OBSERVER)
        .args(["top", "-b", "-n", "3", "-d", "0.3"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("vdso-observer: "))
            .count(),
        3,
        "{text}"
    );

    let out = Command::new(OBSERVER)
        .args(["top", "-b", "-n", "2", "-d", "0.3", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let frames: Vec<Report> = text
        .lines()
        .map(|l| parse_report(l).expect("one JSON report a line"))
        .collect();
    assert_eq!(frames.len(), 2);
    for frame in &frames {
        assert_eq!(frame.schema_version, 1);
        let window = frame.window_seconds;
        assert!((0.25..1.0).contains(&window), "{window}");
    }
}

#[test]
fn filters_keep_only_what_was_asked() {
    require_root();
    let workload = build_workload("time_calls", "vt-filter-a", &[]);
    let other = build_workload("time_calls", "vt-filter-b", &[]);
    let observer = ObserverRun::start(&["--comm", "vt-filter-"]);
    let a = run_workload(&workload, &["direct", "10"]);
    let b = run_workload(&other, &["cputime", "10"]);
    let report = observer.finish();
    let pids: Vec<u32> = report.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids.len(), 2, "{report:#?}");
    assert!(pids.contains(&a) && pids.contains(&b));

    let observer = ObserverRun::start(&["--comm", "vt-filter-", "--flagged-only"]);
    let a = run_workload(&workload, &["direct", "10"]);
    run_workload(&other, &["cputime", "10"]);
    let report = observer.finish();
    let pids: Vec<u32> = report.processes.iter().map(|p| p.pid).collect();
    assert_eq!(pids, [a], "the CPU-time clock is not a fault");

    let observer = ObserverRun::start(&["--pid", "1"]);
    run_workload(&workload, &["direct", "10"]);
    let report = observer.finish();
    assert!(report.processes.iter().all(|p| p.pid == 1));
}

#[test]
fn doctor_measures_this_machine() {
    require_root();
    let out = Command::new(OBSERVER)
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let diagnosis = parse_diagnosis(&out.stdout);
    // The development machines run tsc or kvm-clock, both vDSO-capable.
    assert_eq!(diagnosis.decided_by, Decision::Measured, "{diagnosis:#?}");
    assert_eq!(diagnosis.vdso_capable, Some(true), "{diagnosis:#?}");
    let check = diagnosis.vdso_check.unwrap();
    assert!(check.calls > 100_000, "{check:?}");
    assert_eq!(check.kernel_entries, 0, "{check:?}");
    // A host up for minutes has its random pool ready (the guests show the
    // other state); the check says what it asked.
    assert_eq!(check.random_pool_ready, Some(true), "{check:?}");
    let gettime = &diagnosis.costs[0];
    assert_eq!(gettime.call, TimeCall::ClockGettime);
    assert!(gettime.vdso_ns.unwrap() < gettime.syscall_ns.unwrap());
    assert!(diagnosis.advice[0].starts_with("nothing to do"));

    let text = Command::new(OBSERVER).arg("doctor").output().unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("vDSO-capable     yes"), "{text}");
}

#[test]
fn reports_carry_the_system_state() {
    require_root();
    let observer = ObserverRun::start(&[]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let report = observer.finish();
    let system = report.system.expect("the session adds the system state");
    assert_eq!(system.vdso_capable, Some(true), "{system:#?}");
    let clocksource = system.clocksource.expect("a clocksource");
    assert!(clocksource.available.contains(&clocksource.current));
    assert_ne!(system.vsyscall, VsyscallMode::Unknown);
}

#[test]
fn processes_that_only_seed_malloc_are_hidden_but_counted_in_json() {
    require_root();
    // getrandom as glibc's malloc start-up makes it, and no time call at all.
    let workload = build_workload("time_calls", "vt-seed-only", &[]);
    let observer = ObserverRun::start_with(&["top", "--once", "-d", "120", "--comm", "vt-seed"]);
    run_workload(&workload, &["seed", "1"]);
    let (text, _) = observer.finish_text();
    assert!(!text.contains("vt-seed-only"), "{text}");
    assert!(
        text.contains("1 processes whose only kernel entries were getrandom not shown"),
        "{text}"
    );

    let observer = ObserverRun::start(&["--comm", "vt-seed"]);
    let pid = run_workload(&workload, &["seed", "1"]);
    let report = observer.finish();
    let row = rows_of_pid(&report, pid).pop().expect("JSON keeps the row");
    assert!(row.only_getrandom, "{row:#?}");
    assert!(row.getrandom_entries >= 1, "{row:#?}");
    assert_eq!(row.kernel_share, None, "{row:#?}");

    let observer = ObserverRun::start_with(&[
        "top",
        "--once",
        "-d",
        "120",
        "--comm",
        "vt-seed",
        "--show-getrandom-only",
    ]);
    run_workload(&workload, &["seed", "1"]);
    let (text, _) = observer.finish_text();
    assert!(text.contains("vt-seed-only"), "{text}");
}

/// Users come from NSS: nss_wrapper stands in for LDAP or SSSD, whose users
/// /etc/passwd does not list.
#[test]
fn user_names_come_from_nss() {
    require_root();
    let dir = world_writable_dir("nss");
    let passwd = dir.join("passwd");
    let group = dir.join("group");
    std::fs::write(
        &passwd,
        "root:x:0:0:root:/root:/bin/sh\nldap-alice:x:4242:4242::/:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(&group, "root:x:0:\nldap-alice:x:4242:\n").unwrap();
    let workload = build_workload("time_calls", "vt-nss", &[]);
    let copy = dir.join("vt-nss");
    std::fs::copy(&workload, &copy).unwrap();
    let mut observer = Command::new(OBSERVER);
    observer
        .args(["top", "--once", "-d", "120", "--json", "--comm", "vt-nss"])
        .env("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libnss_wrapper.so")
        .env("NSS_WRAPPER_PASSWD", &passwd)
        .env("NSS_WRAPPER_GROUP", &group)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let observer = ObserverRun::spawn(observer);
    let out = Command::new("setpriv")
        .args(["--reuid=4242", "--regid=4242", "--clear-groups"])
        .arg(&copy)
        .args(["direct", "5"])
        .status()
        .unwrap();
    assert!(out.success());
    let report = observer.finish();
    let row = rows_of_comm(&report, "vt-nss")
        .pop()
        .expect("the workload's row");
    assert_eq!(row.uid, Some(4242), "{row:#?}");
    assert_eq!(row.user.as_deref(), Some("ldap-alice"), "{row:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}
