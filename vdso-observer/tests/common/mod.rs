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

#[allow(unused_imports)] // each test binary uses its own subset
pub use vdso_observer::model::{
    CallCount, ProcessReport, Report, diagnosis::Diagnosis, report::VdsoCallCount,
};
pub use vdso_observer_common::TimeCall;

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
    build_workload_with("gcc", name, output, flags)
}

/// Like [`build_workload`] with another compiler driver (musl-gcc).
pub fn build_workload_with(compiler: &str, name: &str, output: &str, flags: &[&str]) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workloads")
        .join(format!("{name}.c"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("workloads");
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join(output);
    let status = Command::new(compiler)
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

/// Runs a workload to its end: its pid and what it printed (it must succeed).
pub fn run_workload_output(binary: &Path, args: &[&str]) -> (u32, String) {
    let child = Command::new(binary)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        binary.display(),
        out.status
    );
    (pid, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A running `vdso-observer top` whose window stays open until [`finish`].
pub struct ObserverRun {
    child: Child,
    stderr_lines: mpsc::Receiver<String>,
    /// Lines read from stderr while waiting for one.
    stderr_seen: Vec<String>,
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
        Self::start_logging(args, "warn")
    }

    /// Like [`ObserverRun::start_with`], logging at `level` (RUST_LOG).
    pub fn start_logging(args: &[&str], level: &str) -> ObserverRun {
        let mut command = Command::new(OBSERVER);
        command
            .args(args)
            .env("RUST_LOG", level)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Self::spawn(command)
    }

    /// Starts a prepared `vdso-observer top` command (stdout and stderr piped)
    /// and waits until its programs are attached.
    pub fn spawn(mut command: Command) -> ObserverRun {
        let mut child = command.spawn().expect("start vdso-observer");
        let stderr_lines = forward_lines(child.stderr.take().unwrap());
        // What it logs while it starts (calibration above all) is kept.
        let mut stderr_seen = Vec::new();
        loop {
            match stderr_lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.contains("observing every process") => break,
                Ok(line) => stderr_seen.push(line),
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
            stderr_seen,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the observer logs a line containing `text`.
    pub fn wait_log(&mut self, text: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    self.stderr_seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => panic!(
                    "the observer never logged {text:?}; it logged:\n{}",
                    self.stderr_seen.join("\n")
                ),
            }
        }
    }

    /// Ends the window (SIGINT, as Ctrl-C) and returns what it printed.
    pub fn finish_text(self) -> (String, String) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let out = self.child.wait_with_output().unwrap();
        let mut stderr = self.stderr_seen;
        // Every line up to the end of the pipe: the forwarding thread may still
        // be behind the exit (taking only what it had sent lost lines).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while let Ok(line) = self
            .stderr_lines
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            stderr.push(line);
        }
        let stderr = stderr.join("\n");
        assert!(
            out.status.success(),
            "vdso-observer: {}\n{stderr}",
            out.status
        );
        (String::from_utf8(out.stdout).unwrap(), stderr)
    }

    /// Ends the window and reads the JSON report.
    pub fn finish(self) -> Report {
        let (stdout, stderr) = self.finish_text();
        parse_report(stdout.trim()).unwrap_or_else(|err| panic!("{err}\nstderr: {stderr}"))
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

/// The one place a JSON report (`top --json`, one line of `--batch`, the
/// daemon's `/report`) becomes data: the crate's own `Report`, so a renamed or
/// retyped field fails here, by name, rather than reading as null.
pub fn parse_report(json: &str) -> Result<Report, String> {
    serde_json::from_str(json).map_err(|err| format!("not a report ({err}): {json}"))
}

/// The same for `doctor --json`.
pub fn parse_diagnosis(json: &[u8]) -> Diagnosis {
    serde_json::from_slice(json)
        .unwrap_or_else(|err| panic!("not a diagnosis ({err}): {}", String::from_utf8_lossy(json)))
}

/// The report rows of a pid (one per exec image).
pub fn rows_of_pid(report: &Report, pid: u32) -> Vec<ProcessReport> {
    report
        .processes
        .iter()
        .filter(|p| p.pid == pid)
        .cloned()
        .collect()
}

pub fn rows_of_comm(report: &Report, comm: &str) -> Vec<ProcessReport> {
    report
        .processes
        .iter()
        .filter(|p| p.comm == comm)
        .cloned()
        .collect()
}

/// (call, clock, origin, abi) -> count of a row, getrandom left out: glibc's own
/// start-up (malloc, threads) may call it, and it is never judged.
pub fn counts(row: &ProcessReport) -> Vec<(String, String, String, String, u64)> {
    let mut counts: Vec<_> = row
        .calls
        .iter()
        .filter(|c| c.call != TimeCall::Getrandom)
        .map(|c| {
            (
                c.call.name().to_owned(),
                c.clock.clone().unwrap_or_default(),
                c.origin.name().to_owned(),
                c.abi.name().to_owned(),
                c.count,
            )
        })
        .collect();
    counts.sort();
    counts
}

/// The FLAG words of a row, as JSON spells them.
pub fn flags(row: &ProcessReport) -> Vec<&'static str> {
    row.flag_words()
}

/// The reasons of a row, as JSON spells them.
pub fn reasons(row: &ProcessReport) -> Vec<&'static str> {
    row.reasons.iter().map(|r| r.name()).collect()
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

/// What `counts` gives for N direct clock_gettime(CLOCK_MONOTONIC) of a
/// 64-bit process and nothing else.
pub fn direct_monotonic(count: u64) -> [(String, String, String, String, u64); 1] {
    [expect(
        "clock_gettime",
        "CLOCK_MONOTONIC",
        "direct",
        "x86_64",
        count,
    )]
}

/// A copy of the binary any user can run, wherever the checkout lives (it may sit
/// under a home directory other users cannot enter).
pub fn world_runnable_observer() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = world_writable_dir("bin");
    let copy = dir.join("vdso-observer");
    std::fs::copy(OBSERVER, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// A fresh directory under /tmp, mode 0777, for files another user writes.
pub fn world_writable_dir(what: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!(
        "vdso-observer-test-{what}-{}-{:?}",
        std::process::id(),
        thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP GET: (status code, head, body); None when nothing listens.
/// HTTP/1.0, so no server may answer in chunks: Go's (node_exporter) chunks a
/// large HTTP/1.1 body, and chunk sizes then split lines at random places.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, head.to_owned(), body.to_owned()))
}

/// Polls `probe` every 100 ms until it returns Some, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// `promtool check metrics` on a text; panics with its complaints.
pub fn promtool_check(metrics: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian prometheus, installed by `cargo xtask setup --for-tests`)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the one sample whose line starts with `prefix`.
pub fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    let mut values = metrics
        .lines()
        .filter(|line| line.starts_with(prefix))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap());
    let value = values.next()?;
    assert!(
        values.next().is_none(),
        "more than one sample starts with {prefix}"
    );
    Some(value)
}

/// The value of the one sample of `family` whose labels include all of `labels`
/// (label order does not matter: node_exporter sorts them). Label values are
/// compared as written in the exposition (escaped).
pub fn sample_with(metrics: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(family) else {
            continue;
        };
        let Some((parsed, value)) = parse_labels(rest) else {
            continue;
        };
        if labels
            .iter()
            .all(|(name, value)| parsed.iter().any(|(n, v)| n == name && v == value))
        {
            assert!(found.is_none(), "two samples of {family} match {labels:?}");
            found = Some(value.trim().parse::<f64>().unwrap());
        }
    }
    found
}

/// `{a="x",b="y"} 1` -> ([(a, x), (b, y)], "1"), values still escaped.
fn parse_labels(text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let body = text.strip_prefix('{')?;
    let mut labels = Vec::new();
    let mut chars = body.char_indices().peekable();
    loop {
        let mut name = String::new();
        for (_, c) in chars.by_ref() {
            if c == '=' {
                break;
            }
            name.push(c);
        }
        if chars.next().map(|(_, c)| c) != Some('"') {
            return None;
        }
        let mut value = String::new();
        let mut escaped = false;
        for (_, c) in chars.by_ref() {
            if escaped {
                value.push(c);
                escaped = false;
            } else if c == '\\' {
                value.push(c);
                escaped = true;
            } else if c == '"' {
                break;
            } else {
                value.push(c);
            }
        }
        labels.push((name, value));
        match chars.next() {
            Some((_, ',')) => continue,
            Some((i, '}')) => return Some((labels, &body[i + 1..])),
            _ => return None,
        }
    }
}

/// A cgroup made in the real unified hierarchy for a test, removed on drop.
pub struct TestCgroup {
    root: std::path::PathBuf,
    /// The directories made, deepest last.
    made: Vec<std::path::PathBuf>,
}

impl TestCgroup {
    pub fn create(relative: &str) -> TestCgroup {
        let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(std::path::PathBuf::from)
            .find(|root| root.join("cgroup.controllers").exists())
            .expect("a cgroup v2 hierarchy (the development machines have one)");
        let mut made = Vec::new();
        let mut dir = root.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            dir.push(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
                made.push(dir.clone());
            }
        }
        TestCgroup { root, made }
    }

    pub fn procs(&self) -> std::path::PathBuf {
        self.made.last().unwrap().join("cgroup.procs")
    }

    /// Runs the workload from inside the cgroup (it moves itself there before
    /// exec, so even its first call is made inside) and returns its pid.
    pub fn run(&self, workload: &std::path::Path, args: &[&str]) -> u32 {
        run_in_cgroup(self.made.last().unwrap(), workload, args)
    }
}

/// Runs `workload` to its end from inside the cgroup directory `dir` (it moves
/// itself there before exec) and returns its pid.
pub fn run_in_cgroup(dir: &std::path::Path, workload: &std::path::Path, args: &[&str]) -> u32 {
    let mut command = std::process::Command::new(workload);
    command.args(args);
    enter_cgroup_on_exec(&mut command, dir);
    let mut child = command.spawn().unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    pid
}

/// Has `command` move itself into the cgroup directory `dir` before it
/// execs, so even its first instruction runs inside.
pub fn enter_cgroup_on_exec(command: &mut Command, dir: &Path) {
    use std::os::unix::process::CommandExt as _;
    let procs = std::ffi::CString::new(dir.join("cgroup.procs").to_str().unwrap()).unwrap();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            // "0" moves the writer itself.
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            Ok(())
        });
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            if let Ok(pids) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in pids.lines() {
                    let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A cgroup whose processes get at most a share of one CPU: the cpu
/// controller's quota, where the machine has it (cgroup v1's `cpu`
/// hierarchy on a hybrid host, else v2's `cpu.max`). Removed on drop, its
/// processes moved out first.
pub struct CpuQuota {
    dir: PathBuf,
    /// Where its processes go back to.
    parent_procs: PathBuf,
}

impl CpuQuota {
    pub fn create(name: &str, percent: u32) -> CpuQuota {
        let period = 100_000;
        let quota = period * percent / 100;
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let v2 = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(PathBuf::from)
            .find(|root| {
                std::fs::read_to_string(root.join("cgroup.controllers"))
                    .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"))
            });
        let (parent, files): (PathBuf, Vec<(&str, String)>) =
            if v1.join("cpu.cfs_quota_us").exists() {
                (
                    v1.to_path_buf(),
                    vec![
                        ("cpu.cfs_period_us", period.to_string()),
                        ("cpu.cfs_quota_us", quota.to_string()),
                    ],
                )
            } else {
                let root =
                    v2.expect("a cpu controller, in cgroup v1 or v2 (these machines have one)");
                std::fs::write(root.join("cgroup.subtree_control"), "+cpu")
                    .expect("enabling the cpu controller for the root's children");
                (root, vec![("cpu.max", format!("{quota} {period}"))])
            };
        let dir = parent.join(name);
        if !dir.exists() {
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        for (file, value) in files {
            std::fs::write(dir.join(file), &value)
                .unwrap_or_else(|e| panic!("{}: {value}: {e}", dir.join(file).display()));
        }
        CpuQuota {
            parent_procs: parent.join("cgroup.procs"),
            dir,
        }
    }

    /// Has `command` move itself into the cgroup before it execs.
    pub fn enter_on_exec(&self, command: &mut Command) {
        enter_cgroup_on_exec(command, &self.dir);
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        if let Ok(pids) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in pids.lines() {
                let _ = std::fs::write(&self.parent_procs, pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Builds a `FROM scratch` image holding `binary` as `entrypoint[0]` (its
/// comm), with that entrypoint; returns the tag.
pub fn scratch_image(tag: &str, binary: &Path, entrypoint: &[&str]) -> String {
    let name = entrypoint[0].trim_start_matches('/');
    let context = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("images")
        .join(tag.replace(['/', ':'], "-"));
    std::fs::create_dir_all(&context).unwrap();
    std::fs::copy(binary, context.join(name)).unwrap();
    let entrypoint: Vec<String> = entrypoint.iter().map(|a| format!("\"{a}\"")).collect();
    std::fs::write(
        context.join("Containerfile"),
        format!(
            "FROM scratch\nCOPY {name} /{name}\nENTRYPOINT [{}]\n",
            entrypoint.join(", ")
        ),
    )
    .unwrap();
    let out = Command::new("podman")
        .args(["build", "--quiet", "--tag", tag])
        .arg(&context)
        .output()
        .expect("podman runs (installed by `cargo xtask setup --for-tests`)");
    assert!(
        out.status.success(),
        "podman build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tag.to_owned()
}
