//! Helpers for tests that load the real eBPF programs and watch real processes.
//!
//! These tests need root (CAP_BPF, CAP_PERFMON): run them with `sudo cargo xtask test`.
//! They fail, never skip, when they cannot run.
#![allow(dead_code)] // each test binary uses its own subset

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use serde_json::Value;

pub const OBSERVER: &str = env!("CARGO_BIN_EXE_vdso-observer");

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads eBPF programs and needs root: run `sudo cargo xtask test`"
    );
}

/// Compiles tests/workloads/NAME.c with gcc into a binary named `output` (its
/// comm), with extra flags such as -m32.
pub fn build_workload(name: &str, output: &str, flags: &[&str]) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workloads")
        .join(format!("{name}.c"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("workloads");
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join(output);
    let status = Command::new("gcc")
        .args(["-O2", "-pthread", "-Wall", "-o"])
        .arg(&binary)
        .arg(&source)
        .args(flags)
        .status()
        .expect("gcc runs (installed by `cargo xtask setup --for-tests`)");
    assert!(
        status.success(),
        "gcc {} {flags:?} failed",
        source.display()
    );
    binary
}

/// Runs a workload to completion and returns its pid.
pub fn run_workload(binary: &Path, args: &[&str]) -> u32 {
    let mut child = Command::new(binary).args(args).spawn().unwrap();
    let pid = child.id();
    let status = child.wait().unwrap();
    assert!(status.success(), "{} {args:?}: {status}", binary.display());
    pid
}

/// A running `vdso-observer top` whose window stays open until [`finish`].
pub struct ObserverRun {
    child: Child,
    stderr_lines: mpsc::Receiver<String>,
}

impl ObserverRun {
    /// Starts `vdso-observer top --once -d 120 --json EXTRA...` and waits until
    /// its programs are attached.
    pub fn start(extra: &[&str]) -> ObserverRun {
        let mut args = vec!["top", "--once", "-d", "120", "--json"];
        args.extend_from_slice(extra);
        Self::start_with(&args)
    }

    pub fn start_with(args: &[&str]) -> ObserverRun {
        let mut child = Command::new(OBSERVER)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vdso-observer");
        let stderr_lines = forward_lines(child.stderr.take().unwrap());
        loop {
            match stderr_lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.contains("observing every process") => break,
                Ok(_) => continue,
                Err(_) => {
                    let _ = child.kill();
                    let out = child.wait_with_output().unwrap();
                    panic!(
                        "vdso-observer did not attach: {}\n{}",
                        out.status,
                        String::from_utf8_lossy(&out.stdout)
                    );
                }
            }
        }
        ObserverRun {
            child,
            stderr_lines,
        }
    }

    /// Ends the window (SIGINT, as Ctrl-C) and returns what it printed.
    pub fn finish_text(self) -> (String, String) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let out = self.child.wait_with_output().unwrap();
        let stderr: Vec<String> = self.stderr_lines.try_iter().collect();
        let stderr = stderr.join("\n");
        assert!(
            out.status.success(),
            "vdso-observer: {}\n{stderr}",
            out.status
        );
        (String::from_utf8(out.stdout).unwrap(), stderr)
    }

    /// Ends the window and parses the JSON report.
    pub fn finish(self) -> Value {
        let (stdout, stderr) = self.finish_text();
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|err| panic!("report is not JSON ({err}): {stdout}\nstderr: {stderr}"))
    }
}

fn forward_lines(stderr: ChildStderr) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// The report rows of a pid (one per exec image).
pub fn rows_of_pid(report: &Value, pid: u32) -> Vec<Value> {
    processes(report)
        .into_iter()
        .filter(|p| p["pid"] == pid)
        .collect()
}

pub fn rows_of_comm(report: &Value, comm: &str) -> Vec<Value> {
    processes(report)
        .into_iter()
        .filter(|p| p["comm"] == comm)
        .collect()
}

pub fn processes(report: &Value) -> Vec<Value> {
    report["processes"]
        .as_array()
        .expect("processes array")
        .clone()
}

/// (call, clock, origin, abi) -> count of a row, getrandom left out: glibc's own
/// start-up (malloc, threads) may call it, and it is never judged.
pub fn counts(row: &Value) -> Vec<(String, String, String, String, u64)> {
    let mut counts: Vec<_> = row["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["call"] != "getrandom")
        .map(|c| {
            (
                c["call"].as_str().unwrap().to_owned(),
                c["clock"].as_str().unwrap_or("").to_owned(),
                c["origin"].as_str().unwrap().to_owned(),
                c["abi"].as_str().unwrap().to_owned(),
                c["count"].as_u64().unwrap(),
            )
        })
        .collect();
    counts.sort();
    counts
}

pub fn expect(
    call: &str,
    clock: &str,
    origin: &str,
    abi: &str,
    count: u64,
) -> (String, String, String, String, u64) {
    (call.into(), clock.into(), origin.into(), abi.into(), count)
}
