//! `vdso-observer daemon` with real clients: promtool, a real node_exporter
//! reading the textfile, HTTP scrapes; signals, failures and privileges.

mod common;

use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A running daemon whose stderr goes to a file the test can read at any time.
struct DaemonRun {
    child: Option<Child>,
    log: PathBuf,
}

impl DaemonRun {
    fn start(dir: &Path, args: &[&str]) -> DaemonRun {
        Self::start_with(Command::new(OBSERVER), dir, args)
    }

    fn start_with(mut command: Command, dir: &Path, args: &[&str]) -> DaemonRun {
        let log = dir.join("daemon.log");
        let child = command
            .arg("daemon")
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start vdso-observer daemon");
        let run = DaemonRun {
            child: Some(child),
            log,
        };
        wait_for("the daemon to start", TIMEOUT, || {
            run.log().contains("started:").then_some(())
        });
        run
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill on our own child.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    fn alive(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.child.take().unwrap().wait().unwrap()
    }
}

impl Drop for DaemonRun {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

const PROCESS_FAMILY: &str = "vdso_observer_process_kernel_time_calls_total";
const COMM_FAMILY: &str = "vdso_observer_kernel_time_calls_total";

/// The direct CLOCK_MONOTONIC count of one process, in any label order.
fn process_count(metrics: &str, pid: u32, comm: &str) -> Option<f64> {
    let pid = pid.to_string();
    sample_with(
        metrics,
        PROCESS_FAMILY,
        &[
            ("pid", &pid),
            ("comm", comm),
            ("call", "clock_gettime"),
            ("clock", "CLOCK_MONOTONIC"),
            ("origin", "direct"),
            ("reason", "direct_syscall"),
        ],
    )
}

fn comm_count(metrics: &str, comm: &str) -> Option<f64> {
    sample_with(
        metrics,
        COMM_FAMILY,
        &[
            ("comm", comm),
            ("call", "clock_gettime"),
            ("clock", "CLOCK_MONOTONIC"),
            ("origin", "direct"),
        ],
    )
}

/// Waits for two more collections (the log counts none, so watch the counter).
fn wait_collections(textfile: &Path, more: f64) {
    let now = sample(&read(textfile), "vdso_observer_collections_total").unwrap_or(0.0);
    wait_for("more collections", TIMEOUT, || {
        (sample(&read(textfile), "vdso_observer_collections_total")? >= now + more).then_some(())
    });
}

#[test]
fn node_exporter_reads_the_textfile_and_promtool_accepts_it() {
    require_root();
    let dir = world_writable_dir("node-exporter");
    let textfile = dir.join("vdso_observer.prom");
    let port = free_port();
    let daemon = DaemonRun::start(
        &dir,
        &[
            "--textfile",
            textfile.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--interval",
            "1s",
        ],
    );
    let workload = build_workload("time_calls", "vt-exporter", &[]);
    let pid = run_workload(&workload, &["direct", "700"]);
    // Hostile names: quotes, backslashes, newlines, invalid UTF-8.
    let rename = build_workload("time_calls", "vt-hostile", &[]);
    for name in [&b"q\"uo\\te"[..], b"new\nline", b"\xff\xfebad"] {
        let status = Command::new(&rename)
            .args([
                OsStr::new("rename"),
                OsStr::new("5"),
                OsStr::from_bytes(name),
            ])
            .status()
            .unwrap();
        assert!(status.success());
    }
    wait_collections(&textfile, 2.0);
    let metrics = read(&textfile);
    assert_eq!(
        process_count(&metrics, pid, "vt-exporter"),
        Some(700.0),
        "{metrics}"
    );
    assert_eq!(comm_count(&metrics, "vt-exporter"), Some(700.0));
    assert!(metrics.contains(r#"comm="q\"uo\\\\te""#), "{metrics}");
    assert!(metrics.contains(r#"comm="new\\x0aline""#), "{metrics}");
    assert!(metrics.contains(r#"comm="\\xff\\xfebad""#), "{metrics}");
    promtool_check(&metrics);

    // The same through /metrics, with the content type Prometheus expects.
    let (status, head, body) = http_get(port, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200);
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    assert_eq!(process_count(&body, pid, "vt-exporter"), Some(700.0));
    promtool_check(&body);
    let (status, _, body) = http_get(port, "/healthz").unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(http_get(port, "/nope").unwrap().0, 404);

    // A real node_exporter with only the textfile collector.
    let exporter_port = free_port();
    let mut node_exporter = Command::new("prometheus-node-exporter")
        .arg(format!("--web.listen-address=127.0.0.1:{exporter_port}"))
        .arg(format!("--collector.textfile.directory={}", dir.display()))
        .args(["--collector.disable-defaults", "--collector.textfile"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-node-exporter (Debian, installed by `cargo xtask setup --for-tests`)");
    let scraped = wait_for("node_exporter to answer", TIMEOUT, || {
        http_get(exporter_port, "/metrics").filter(|(status, _, _)| *status == 200)
    })
    .2;
    let _ = node_exporter.kill();
    let _ = node_exporter.wait();
    assert_eq!(
        sample(&scraped, "node_textfile_scrape_error"),
        Some(0.0),
        "{scraped}"
    );
    assert_eq!(
        process_count(&scraped, pid, "vt-exporter"),
        Some(700.0),
        "{scraped}"
    );
    assert_eq!(daemon.stop().code(), Some(0));
}

#[test]
fn exited_processes_keep_their_final_value_for_the_grace_period() {
    require_root();
    let dir = world_writable_dir("grace");
    let textfile = dir.join("vdso_observer.prom");
    let daemon = DaemonRun::start(
        &dir,
        &[
            "--textfile",
            textfile.to_str().unwrap(),
            "--interval",
            "1s",
            "--exited-grace",
            "8s",
        ],
    );
    let workload = build_workload("time_calls", "vt-grace", &[]);
    let pid = run_workload(&workload, &["direct", "321"]);
    let exited_at = Instant::now();
    wait_for("the exited process's series", TIMEOUT, || {
        (process_count(&read(&textfile), pid, "vt-grace")? == 321.0).then_some(())
    });
    // Still there two collections later: at a 1 s interval well inside the 8 s
    // grace, which starts only when the daemon finds the process gone.
    wait_collections(&textfile, 2.0);
    assert_eq!(
        process_count(&read(&textfile), pid, "vt-grace"),
        Some(321.0)
    );
    // Gone once the grace period is over, never before; the per-comm total stays.
    wait_for("the series to retire", TIMEOUT, || {
        process_count(&read(&textfile), pid, "vt-grace")
            .is_none()
            .then_some(())
    });
    assert!(exited_at.elapsed() >= Duration::from_secs(8));
    assert_eq!(comm_count(&read(&textfile), "vt-grace"), Some(321.0));
    assert_eq!(daemon.stop().code(), Some(0));
}

#[test]
fn an_unwritable_directory_is_logged_and_the_last_good_file_stays() {
    require_root();
    let dir = world_writable_dir("readonly");
    let textfile = dir.join("vdso_observer.prom");
    let mut daemon = DaemonRun::start(
        &dir,
        &["--textfile", textfile.to_str().unwrap(), "--interval", "1s"],
    );
    wait_for("a first textfile", TIMEOUT, || {
        textfile.exists().then_some(())
    });
    // Root ignores permissions: a read-only bind mount refuses even root.
    let mount = |args: &[&str]| {
        let status = Command::new("mount").args(args).status().unwrap();
        assert!(status.success(), "mount {args:?}");
    };
    let path = dir.to_str().unwrap();
    mount(&["--bind", path, path]);
    mount(&["-o", "remount,bind,ro", path]);
    let before = read(&textfile);
    wait_for("a failed write to be logged", TIMEOUT, || {
        daemon
            .log()
            .contains("writing textfile failed")
            .then_some(())
    });
    // A second failed write: the daemon kept running through the first.
    wait_for("a second failed write", TIMEOUT, || {
        (daemon.log().matches("writing textfile failed").count() >= 2).then_some(())
    });
    assert!(daemon.alive(), "{}", daemon.log());
    assert_eq!(
        read(&textfile),
        before,
        "the previous file must stay intact"
    );
    promtool_check(&before);
    let log = daemon.log();
    assert!(
        log.contains("the previous file is kept, retrying next interval"),
        "{log}"
    );
    // The temporary file is named at random (another user cannot plant it).
    assert!(
        log.contains(&format!("{}/.vdso_observer.prom.", dir.display())) && log.contains(".tmp:"),
        "{log}"
    );
    let status = Command::new("umount").arg(path).status().unwrap();
    assert!(status.success());
    wait_for("writes to resume", TIMEOUT, || {
        daemon.log().contains("written again").then_some(())
    });
    let metrics = read(&textfile);
    assert!(sample(&metrics, "vdso_observer_textfile_write_errors_total").unwrap() >= 1.0);
    assert_eq!(daemon.stop().code(), Some(0));
}

#[test]
fn sigterm_writes_a_final_file_and_sigkill_leaves_nothing_attached() {
    require_root();
    let dir = world_writable_dir("signals");
    let textfile = dir.join("vdso_observer.prom");
    // A long interval: only the final write can carry the workload's calls.
    let daemon = DaemonRun::start(
        &dir,
        &["--textfile", textfile.to_str().unwrap(), "--interval", "1h"],
    );
    wait_for("the first textfile", TIMEOUT, || {
        textfile.exists().then_some(())
    });
    let workload = build_workload("time_calls", "vt-final", &[]);
    let pid = run_workload(&workload, &["direct", "222"]);
    assert_eq!(daemon.stop().code(), Some(0));
    assert_eq!(
        process_count(&read(&textfile), pid, "vt-final"),
        Some(222.0)
    );

    // kill -9: the kernel must drop every program and link when the fds close.
    let killed = DaemonRun::start(&dir, &["--textfile", textfile.to_str().unwrap()]);
    let (programs, links) = bpf_objects_of(killed.pid());
    // sys_enter, emulate_vsyscall, cgroup_mkdir, sched_process_exit and _exec,
    // and the vDSO sampler; links for the five raw tracepoints (and the
    // sampler's, per CPU, where the kernel links them).
    assert_eq!(programs.len(), 6, "six programs: {programs:?}");
    assert!(links.len() >= 5, "links: {links:?}");
    killed.signal(libc::SIGKILL);
    drop(killed);
    for (kind, ids) in [("prog", &programs), ("link", &links)] {
        for id in ids {
            wait_for(&format!("{kind} {id} to be released"), TIMEOUT, || {
                let out = Command::new("bpftool")
                    .args([kind, "show", "id", id])
                    .output()
                    .unwrap();
                (!out.status.success()).then_some(())
            });
        }
    }
}

/// BPF program and link ids a process holds, from /proc/PID/fdinfo.
fn bpf_objects_of(pid: u32) -> (Vec<String>, Vec<String>) {
    let mut programs = Vec::new();
    let mut links = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let info = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        match (field("link_id:"), field("prog_id:")) {
            (Some(link), _) => links.push(link),
            (None, Some(program)) => programs.push(program),
            _ => {}
        }
    }
    programs.sort();
    programs.dedup();
    (programs, links)
}

#[test]
fn runs_as_an_unprivileged_user_with_only_cap_bpf_and_cap_perfmon() {
    require_root();
    let dir = world_writable_dir("caps");
    let textfile = dir.join("vdso_observer.prom");
    let observer = world_runnable_observer();
    let mut setpriv = Command::new("setpriv");
    setpriv
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all,+bpf,+perfmon",
            "--ambient-caps=-all,+bpf,+perfmon",
            "--bounding-set=-all,+bpf,+perfmon",
            "--no-new-privs",
        ])
        .arg(&observer);
    let daemon = DaemonRun::start_with(
        setpriv,
        &dir,
        &["--textfile", textfile.to_str().unwrap(), "--interval", "1s"],
    );
    let field = |name: &str| status_field(daemon.pid(), name);
    assert_eq!(field("Uid:").split_whitespace().next(), Some("65534"));
    // Started with CAP_PERFMON (38) and CAP_BPF (39) only, and dropped both
    // once its programs were attached.
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapPrm:"), "0000000000000000");
    let workload = build_workload("time_calls", "vt-unpriv", &[]);
    let pid = run_workload(&workload, &["direct", "99"]);
    wait_for("the workload in the textfile", TIMEOUT, || {
        (process_count(&read(&textfile), pid, "vt-unpriv")? == 99.0).then_some(())
    });
    let metrics = read(&textfile);
    assert_eq!(
        sample(
            &metrics,
            "vdso_observer_probe_attached{probe=\"raw_tracepoint:sys_enter\"}"
        ),
        Some(1.0)
    );
    promtool_check(&metrics);
    assert_eq!(daemon.stop().code(), Some(0), "stopped cleanly");
}

#[test]
fn sighup_reloads_the_config_and_keeps_the_old_one_when_the_new_is_broken() {
    require_root();
    let dir = world_writable_dir("sighup");
    let textfile = dir.join("vdso_observer.prom");
    let config = dir.join("vdso-observer.toml");
    std::fs::write(
        &config,
        format!("interval = \"1s\"\ntextfile = \"{}\"\n", textfile.display()),
    )
    .unwrap();
    let mut daemon = DaemonRun::start(&dir, &["--config", config.to_str().unwrap()]);
    wait_for("the first textfile", TIMEOUT, || {
        textfile.exists().then_some(())
    });
    std::fs::write(
        &config,
        format!(
            "interval = \"1s\"\ntextfile = \"{}\"\n[series]\ntop_processes = 1\n",
            textfile.display()
        ),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    wait_for("the reload", TIMEOUT, || {
        daemon
            .log()
            .contains("SIGHUP: configuration reloaded")
            .then_some(())
    });
    std::fs::write(&config, "interval = \"soon\"\n").unwrap();
    daemon.signal(libc::SIGHUP);
    wait_for("the refused reload", TIMEOUT, || {
        daemon
            .log()
            .contains("keeping the previous configuration")
            .then_some(())
    });
    assert!(
        daemon.log().contains("interval = \"soon\""),
        "{}",
        daemon.log()
    );
    assert!(daemon.alive());
    wait_collections(&textfile, 1.0);
    assert_eq!(daemon.stop().code(), Some(0));
}

/// Under systemd: READY=1 and WATCHDOG=1 on NOTIFY_SOCKET, syslog priorities on
/// a journal stream, and a fork storm of flagged processes logged per comm.
#[test]
fn systemd_hears_readiness_watchdog_and_priorities_and_a_fork_storm_is_one_line() {
    use std::os::unix::{fs::MetadataExt as _, net::UnixDatagram};
    require_root();
    let dir = world_writable_dir("systemd");
    let textfile = dir.join("vdso_observer.prom");
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // journald's stream is the daemon's stderr: here, its log file.
    let log = dir.join("daemon.log");
    std::fs::File::create(&log).unwrap();
    let meta = std::fs::metadata(&log).unwrap();
    let mut command = Command::new(OBSERVER);
    command
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "1000000")
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    let daemon = DaemonRun::start_with(
        command,
        &dir,
        &["--textfile", textfile.to_str().unwrap(), "--interval", "1s"],
    );
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).expect("READY=1 within a minute");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(
        textfile.exists(),
        "ready only once the first metrics are out"
    );
    let n = socket.recv(&mut buf).expect("WATCHDOG=1 every half second");
    assert_eq!(&buf[..n], b"WATCHDOG=1");

    // 60 short-lived children, each flagged direct.
    let workload = build_workload("time_calls", "vt-storm", &[]);
    run_workload(&workload, &["children", "5", "60"]);
    wait_for("the storm in the textfile", TIMEOUT, || {
        (comm_count(&read(&textfile), "vt-storm")? >= 300.0).then_some(())
    });
    wait_collections(&textfile, 1.0);
    let text = daemon.log();
    let storm: Vec<&str> = text.lines().filter(|l| l.contains("vt-storm")).collect();
    assert!(
        !storm.is_empty() && storm.len() <= 3,
        "one line per comm and interval, not one per process: {storm:#?}"
    );
    assert!(
        storm
            .iter()
            .any(|l| l.contains("processes named vt-storm newly flagged direct")),
        "{storm:#?}"
    );
    assert!(
        text.lines().all(|l| l.is_empty()
            || (l.starts_with('<') && l[1..2].parse::<u8>().is_ok() && &l[2..3] == ">")),
        "every line carries a syslog priority:\n{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("<6>started:")), "{text}");
    assert_eq!(daemon.stop().code(), Some(0));
}

/// One field of /proc/PID/status (`name` with its colon), trimmed.
fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// The capability sets of a running process: (effective, permitted, ambient).
fn capabilities_of(pid: u32) -> (String, String, String) {
    let field = |name: &str| status_field(pid, name);
    (field("CapEff:"), field("CapPrm:"), field("CapAmb:"))
}

#[test]
fn after_attaching_the_daemon_keeps_no_capability_and_still_counts() {
    require_root();
    let dir = world_writable_dir("dropped");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let daemon = DaemonRun::start(
        &dir,
        &["--listen", &listen, "--interval", "1s", "--bpf-stats"],
    );
    assert!(
        daemon.log().contains("capabilities dropped: none kept"),
        "{}",
        daemon.log()
    );
    let none = "0000000000000000".to_owned();
    assert_eq!(
        capabilities_of(daemon.pid()),
        (none.clone(), none.clone(), none.clone())
    );
    // Nothing it execs can regain one: an empty bounding set and
    // no_new_privs (and SECBIT_NOROOT, which /proc does not show). Before, a
    // child exec'd by the daemon as uid 0 got every capability back.
    assert_eq!(status_field(daemon.pid(), "CapBnd:"), none);
    assert_eq!(status_field(daemon.pid(), "NoNewPrivs:"), "1");
    let workload = build_workload("time_calls", "vt-dropped", &[]);
    let pid = run_workload(&workload, &["direct", "123"]);
    let metrics = wait_for("the workload's calls", TIMEOUT, || {
        let (_, _, metrics) = http_get(port, "/metrics")?;
        (process_count(&metrics, pid, "vt-dropped")? == 123.0).then_some(metrics)
    });
    // The kernel measured the programs (--bpf-stats: enabled before the drop,
    // on while the daemon holds their descriptor).
    assert_eq!(
        sample(&metrics, "vdso_observer_bpf_run_stats_enabled "),
        Some(1.0)
    );
    let runs = |metrics: &str| {
        sample_with(
            metrics,
            "vdso_observer_bpf_runs_total",
            &[("program", "time_syscall_enter")],
        )
        .unwrap()
    };
    let seconds = sample_with(
        &metrics,
        "vdso_observer_bpf_run_seconds_total",
        &[("program", "time_syscall_enter")],
    )
    .unwrap();
    assert!(runs(&metrics) >= 123.0 && seconds > 0.0, "{metrics}");
    let before = runs(&metrics);
    run_workload(&workload, &["direct", "1000"]);
    wait_for("sys_enter runs to grow", TIMEOUT, || {
        let (_, _, later) = http_get(port, "/metrics")?;
        (runs(&later) >= before + 1000.0).then_some(())
    });
    promtool_check(&metrics);
}

#[test]
fn with_exact_counting_the_daemon_keeps_what_attaching_probes_needs() {
    require_root();
    let dir = world_writable_dir("dropped-exact");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let daemon = DaemonRun::start(
        &dir,
        &[
            "--listen",
            &listen,
            "--interval",
            "1s",
            "--exact",
            "--exact-budget",
            "100",
        ],
    );
    assert!(
        daemon.log().contains(
            "capabilities dropped but CAP_BPF CAP_PERFMON CAP_SYS_ADMIN CAP_SYS_PTRACE CAP_DAC_READ_SEARCH"
        ),
        "{}",
        daemon.log()
    );
    // Bits 2, 19, 21, 38 and 39.
    let (effective, permitted, ambient) = capabilities_of(daemon.pid());
    assert_eq!(effective, "000000c000280004");
    assert_eq!(permitted, effective);
    assert_eq!(ambient, "0000000000000000");
    // A process that starts after the drop is still attached to, exactly.
    let workload = build_workload("time_calls", "vt-dropped-x", &[]);
    let mut held = Command::new(&workload)
        .args(["monotonic", "3000"])
        .env("VT_WAIT_STDIN", "1")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = held.id();
    std::thread::sleep(Duration::from_secs(3)); // new processes are picked up within a second
    {
        use std::io::Write as _;
        held.stdin.take().unwrap().write_all(b"g").unwrap();
    }
    assert!(held.wait().unwrap().success());
    wait_for("the workload's exact vDSO calls", TIMEOUT, || {
        let (_, _, metrics) = http_get(port, "/metrics")?;
        let pid = pid.to_string();
        let calls = sample_with(
            &metrics,
            "vdso_observer_process_vdso_time_calls_total",
            &[
                ("pid", pid.as_str()),
                ("call", "clock_gettime"),
                ("provenance", "uprobe"),
            ],
        )?;
        (calls == 3000.0).then_some(())
    });
}

/// `--exact` reads the executables of other users' processes. A user deletes
/// a running program's file and puts a FIFO where `/proc/PID/exe` now points
/// by name (`PATH (deleted)`), and for another a link to /dev/zero: before,
/// the daemon opened that path, hung on the FIFO (or read /dev/zero without
/// end) and stopped collecting. Now it opens what the process maps, through
/// /proc, non-blocking and regular files only: it keeps collecting, answers
/// /healthz, and counts both processes exactly.
#[test]
fn hostile_executable_paths_cannot_hang_exact_counting() {
    require_root();
    let dir = world_writable_dir("hostile-exe");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let workload = build_workload("time_calls", "vt-hostile", &[]);
    let mut planted = Vec::new();
    let mut children = Vec::new();
    for (name, plant) in [("vt-fifo-exe", "fifo"), ("vt-zero-exe", "zero")] {
        let exe = dir.join(name);
        std::fs::copy(&workload, &exe).unwrap();
        let child = Command::new(&exe)
            .args(["steady", "2000", "30"])
            .spawn()
            .unwrap();
        std::fs::remove_file(&exe).unwrap();
        let deleted = dir.join(format!("{name} (deleted)"));
        match plant {
            "fifo" => {
                let path = std::ffi::CString::new(deleted.to_str().unwrap()).unwrap();
                // SAFETY: a valid path.
                assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o666) }, 0);
            }
            _ => std::os::unix::fs::symlink("/dev/zero", &deleted).unwrap(),
        }
        assert_eq!(
            std::fs::read_link(format!("/proc/{}/exe", child.id())).unwrap(),
            deleted
        );
        planted.push(deleted);
        children.push(child);
    }
    let daemon = DaemonRun::start(&dir, &["--listen", &listen, "--interval", "1s", "--exact"]);
    let collections = |metrics: &str| sample(metrics, "vdso_observer_collections_total ");
    let (_, _, first) = wait_for("a first collection", TIMEOUT, || http_get(port, "/metrics"));
    let start = collections(&first).unwrap_or(0.0);
    let metrics = wait_for("three more collections", TIMEOUT, || {
        let (status, _, _) = http_get(port, "/healthz")?;
        assert_eq!(status, 200, "healthz: {}", daemon.log());
        let (_, _, metrics) = http_get(port, "/metrics")?;
        (collections(&metrics)? >= start + 3.0).then_some(metrics)
    });
    for (child, name) in children.iter().zip(["vt-fifo-exe", "vt-zero-exe"]) {
        assert!(
            metrics.contains(&format!("pid=\"{}\",comm=\"{name}\"", child.id())),
            "{name} not followed: {}",
            daemon.log()
        );
    }
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    for path in planted {
        let _ = std::fs::remove_file(path);
    }
    assert_eq!(daemon.stop().code(), Some(0));
}

/// 2 000 local clients ask for /metrics and never read, with socket buffers
/// far smaller than the body (a network namespace of the test's own with
/// 4 KiB TCP buffers). Before, each held a task and a copy of the body for
/// ever. Now at most 128 connections live (a new one evicts the oldest), each
/// for at most 10 s, all sharing one body: a normal scrape is answered within
/// a second and the daemon's memory stays bounded.
#[test]
fn clients_that_never_read_cannot_hold_the_endpoint() {
    require_root();
    let dir = world_writable_dir("slow-clients");
    let port = free_port();
    let mut unshare = Command::new("unshare");
    unshare.args(["--net", "--", "sh", "-c"]).arg(
        "ip link set lo up && sysctl -qw net.ipv4.tcp_wmem='4096 4096 4096' \
         net.ipv4.tcp_rmem='4096 4096 4096' && exec \"$0\" \"$@\"",
    );
    unshare.arg(OBSERVER);
    let listen = format!("127.0.0.1:{port}");
    let daemon = DaemonRun::start_with(unshare, &dir, &["--listen", &listen, "--interval", "1s"]);
    // unshare and sh exec'd the observer: one pid.
    let observer_pid = daemon.pid();
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{observer_pid}/comm"))
            .unwrap()
            .trim(),
        "vdso-observer"
    );
    // 150 comms with time calls: a body of a busy node's size (~60 KB).
    let workload = build_workload("time_calls", "vt-many", &[]);
    for n in 0..150 {
        run_workload(&workload, &["rename", "20", &format!("vt-many-{n}")]);
    }
    let netns = std::fs::File::open(format!("/proc/{observer_pid}/ns/net")).unwrap();
    // This thread joins the daemon's network namespace (netns is per thread).
    let result = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                use std::os::fd::AsRawFd as _;
                // SAFETY: a namespace descriptor; only this thread moves.
                assert_eq!(
                    unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) },
                    0
                );
                raise_open_file_limit(4096);
                wait_for("a body larger than the buffers", TIMEOUT, || {
                    let (_, _, body) = http_get(port, "/metrics")?;
                    (body.len() > 32 * 1024).then_some(())
                });
                let rss_before = rss_kib(observer_pid);
                let mut clients = Vec::new();
                for _ in 0..2000 {
                    let Ok(client) = std::net::TcpStream::connect_timeout(
                        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                        Duration::from_secs(2),
                    ) else {
                        continue;
                    };
                    set_receive_buffer(&client, 1024);
                    use std::io::Write as _;
                    let _ = (&client).write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
                    clients.push(client);
                }
                assert!(clients.len() >= 1900, "{} clients connected", clients.len());
                std::thread::sleep(Duration::from_millis(500));
                let asked = std::time::Instant::now();
                let (status, _, scraped) = http_get(port, "/metrics").expect("a scrape");
                let took = asked.elapsed();
                let rss_after = rss_kib(observer_pid);
                drop(clients);
                (status, scraped.len(), took, rss_before, rss_after)
            })
            .join()
            .unwrap()
    });
    let (status, scraped, took, rss_before, rss_after) = result;
    eprintln!(
        "a {scraped}-byte scrape beside 2 000 stalled clients took {took:?}; RSS {rss_before} -> {rss_after} KiB"
    );
    assert_eq!(status, 200);
    assert!(scraped > 32 * 1024);
    assert!(took < Duration::from_secs(1), "a scrape took {took:?}");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert_eq!(daemon.stop().code(), Some(0));
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn set_receive_buffer(socket: &std::net::TcpStream, bytes: libc::c_int) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid socket and an int option.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

fn raise_open_file_limit(to: u64) {
    let limit = libc::rlimit {
        rlim_cur: to,
        rlim_max: to.max(4096),
    };
    // SAFETY: a valid rlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
}
