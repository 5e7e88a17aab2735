//! Real podman containers (runc: crun refuses this host's hybrid cgroup layout):
//! each row carries its container, and the observer's own image, run as the
//! README says, counts a workload container exactly.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use common::*;
use serde_json::Value;
use vdso_observer::model::Runtime;

/// podman with runc and ulimits this host's runtime may set.
fn podman_run() -> Command {
    let mut command = Command::new("podman");
    command.args([
        "--runtime",
        "runc",
        "run",
        "--rm",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ]);
    command
}

/// A `FROM scratch` image with the static workload as /vt-ctr (its comm).
fn workload_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let binary = build_workload("time_calls", "vt-ctr", &["-static"]);
        scratch_image(
            "localhost/vdso-observer-test-workload:latest",
            &binary,
            &["/vt-ctr"],
        )
    })
}

/// Runs the workload image to completion with `args`; its full container id.
fn run_container(args: &[&str]) -> String {
    let cidfile = tempfile_path("cid");
    let out = podman_run()
        .arg("--cidfile")
        .arg(&cidfile)
        .args(["--network", "none", workload_image()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podman run {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = std::fs::read_to_string(&cidfile).unwrap().trim().to_owned();
    let _ = std::fs::remove_file(&cidfile);
    assert_eq!(id.len(), 64, "{id}");
    id
}

fn tempfile_path(what: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("containers");
    std::fs::create_dir_all(&dir).unwrap();
    let unique = format!(
        "{what}-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    );
    dir.join(unique.replace([' ', '{', '}', ':', ','], ""))
}

/// The rows of the workload inside container `id` (runc's init ran in that
/// container before exec'ing it, under the same pid: another row).
fn rows_in(report: &Report, id: &str) -> Vec<ProcessReport> {
    report
        .processes
        .iter()
        .filter(|p| p.container.as_ref().is_some_and(|c| c.id == id) && p.comm == "vt-ctr")
        .cloned()
        .collect()
}

/// Outside Kubernetes a podman container shows the name it was given
/// (containers/storage's own record), in JSON and in `--container`.
#[test]
fn a_podman_container_shows_its_own_name() {
    require_root();
    workload_image();
    let name = format!("vt-named-{}", std::process::id());
    // A container left by an earlier run under this pid would hold the name.
    let _ = Command::new("podman")
        .args(["rm", "--force", "--time", "0", &name])
        .output();
    let observer = ObserverRun::start(&[]);
    let out = podman_run()
        .args(["-d", "--name", &name, "--network", "none", workload_image()])
        .args(["hold", "250", "60"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podman run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // Its calls made (the process is asleep), while it still runs.
    wait_for("the container's process", Duration::from_secs(30), || {
        let out = Command::new("podman")
            .args(["inspect", "--format", "{{.State.Pid}}", &id])
            .output()
            .ok()?;
        let pid = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        state.contains(") S ").then_some(())
    });
    let report = observer.finish();
    let _ = Command::new("podman")
        .args(["rm", "--force", "--time", "0", &name])
        .output();
    let rows = rows_in(&report, &id);
    assert_eq!(rows.len(), 1, "{report:#?}");
    assert_eq!(counts(&rows[0]), direct_monotonic(250));
    let container = rows[0].container.as_ref().unwrap();
    assert_eq!(
        container.names.name.as_deref(),
        Some(name.as_str()),
        "{container:?}"
    );
    assert_eq!(
        (&container.names.pod, &container.names.namespace),
        (&None, &None)
    );
    assert!(container.is_named_by(&name));
}

#[test]
fn rows_carry_their_podman_container_and_count_exactly() {
    require_root();
    workload_image();
    let host_workload = build_workload("time_calls", "vt-ctr", &["-static"]);
    let observer = ObserverRun::start(&[]);
    let direct = run_container(&["direct", "300"]);
    let cputime = run_container(&["cputime", "200"]);
    let host = run_workload(&host_workload, &["direct", "100"]);
    let report = observer.finish();

    let in_direct = rows_in(&report, &direct);
    assert_eq!(in_direct.len(), 1, "{report:#?}");
    assert_eq!(counts(&in_direct[0]), direct_monotonic(300));
    let container = in_direct[0].container.as_ref().unwrap();
    assert_eq!(container.runtime, Runtime::Podman, "{container:#?}");
    assert_eq!(container.pod_uid, None);
    assert!(
        in_direct[0]
            .cgroup
            .as_ref()
            .unwrap()
            .contains(&format!("libpod-{direct}")),
        "{:#?}",
        in_direct[0]
    );

    let in_cputime = rows_in(&report, &cputime);
    assert_eq!(in_cputime.len(), 1, "{report:#?}");
    assert_eq!(
        counts(&in_cputime[0]),
        [expect(
            "clock_gettime",
            "CLOCK_PROCESS_CPUTIME_ID",
            "vdso_fallback",
            "x86_64",
            200
        )]
    );

    let on_host = rows_of_pid(&report, host);
    assert_eq!(on_host.len(), 1, "{report:#?}");
    assert_eq!(on_host[0].container, None);
    assert_eq!(counts(&on_host[0]), direct_monotonic(100));
}

/// The image `cargo xtask dist` built (`cargo xtask test` builds it first).
fn observer_image() -> String {
    std::env::var("VDSO_OBSERVER_IMAGE").expect(
        "VDSO_OBSERVER_IMAGE names the image `cargo xtask dist` built: run the tests with `cargo xtask test`",
    )
}

/// The observer's own image as the README runs it: host PID and cgroup
/// namespaces, CAP_BPF and CAP_PERFMON only, the shipped seccomp profile, a
/// read-only root filesystem.
fn observer_container(args: &[&str]) -> Command {
    let profile =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/seccomp/vdso-observer.json");
    let mut command = podman_run();
    command
        .args([
            "--pid=host",
            "--cgroupns=host",
            "--read-only",
            "--cap-drop=all",
            "--cap-add=BPF,PERFMON",
            "--volume",
            "/sys/fs/cgroup:/sys/fs/cgroup:ro",
            "--env",
            "RUST_LOG=warn",
        ])
        .arg(format!("--security-opt=seccomp={}", profile.display()))
        .arg(observer_image())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

#[test]
fn the_observer_image_with_host_pid_counts_a_workload_container_exactly() {
    require_root();
    workload_image();
    let observer = ObserverRun::spawn(observer_container(&[
        "top", "--once", "-d", "120", "--json",
    ]));
    let direct = run_container(&["direct", "250"]);
    let report = observer.finish();
    let rows = rows_in(&report, &direct);
    assert_eq!(rows.len(), 1, "{report:#?}");
    assert_eq!(counts(&rows[0]), direct_monotonic(250));
    assert_eq!(
        rows[0].container.as_ref().map(|c| c.runtime),
        Some(Runtime::Podman)
    );
}

#[test]
fn the_observer_image_without_host_pid_refuses_in_one_line() {
    require_root();
    let command = observer_container(&["top", "--once", "--json"]);
    // The same, in podman's private PID namespace.
    let args: Vec<String> = command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .filter(|a| a != "--pid=host")
        .collect();
    let out = Command::new("podman").args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("runs in a private PID namespace") && stderr.contains("--pid=host"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

/// A child killed (SIGTERM, then waited for) when dropped.
struct Background(std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// An instant PromQL query through the HTTP API: the result vector.
fn prometheus_query(port: u16, query: &str) -> Vec<Value> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--get", "--data-urlencode"])
        .arg(format!("query={query}"))
        .arg(format!("http://127.0.0.1:{port}/api/v1/query"))
        .output()
        .unwrap();
    let body: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{query}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(body["status"], "success", "{query}: {body}");
    body["data"]["result"].as_array().unwrap().clone()
}

/// Two daemons stand in for two nodes (two --listen ports, `node` set by the
/// scrape config as the ServiceMonitor sets it); a real Prometheus scrapes both
/// and evaluates the shipped recording rules; the fleet queries return the
/// container's series from both, and every fleet query of the dashboard runs.
#[test]
fn prometheus_scrapes_two_nodes_and_the_fleet_rules_return_container_series() {
    require_root();
    workload_image();
    let dir = tempfile_path("fleet");
    std::fs::create_dir_all(&dir).unwrap();
    let nodes = [("node-a", free_port()), ("node-b", free_port())];
    let _daemons: Vec<Background> = nodes
        .iter()
        .map(|(_, port)| {
            let daemon = Command::new(OBSERVER)
                .args(["daemon", "--interval", "1s", "--listen"])
                .arg(format!("127.0.0.1:{port}"))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            let daemon = Background(daemon);
            wait_for("the daemon's first window", Duration::from_secs(60), || {
                http_get(*port, "/healthz").filter(|(status, ..)| *status == 200)
            });
            daemon
        })
        .collect();

    // The shipped rules, evaluated every second instead of every minute.
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/prometheus/vdso-observer.rules.yml"),
    )
    .unwrap();
    assert!(rules.contains("    interval: 1m\n"));
    std::fs::write(
        dir.join("rules.yml"),
        rules.replace("    interval: 1m\n", "    interval: 1s\n"),
    )
    .unwrap();
    let targets: String = nodes
        .iter()
        .map(|(node, port)| {
            format!("      - targets: ['127.0.0.1:{port}']\n        labels: {{node: {node}}}\n")
        })
        .collect();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [rules.yml]\n\
             scrape_configs:\n  - job_name: vdso-observer\n    static_configs:\n{targets}"
        ),
    )
    .unwrap();
    let web = free_port();
    let _prometheus = Background(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian prometheus, installed by `cargo xtask setup --for-tests`)"),
    );
    wait_for("Prometheus ready", Duration::from_secs(30), || {
        http_get(web, "/-/ready").filter(|(status, ..)| *status == 200)
    });

    // 200 direct clock_gettime calls a second for 40 s, in a container.
    let out = podman_run()
        .args([
            "--detach",
            "--network",
            "none",
            workload_image(),
            "steady",
            "200",
            "40",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    struct Stop(String);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("podman")
                .args(["rm", "--force", "--time", "0", &self.0])
                .output();
        }
    }
    let _stop = Stop(id.clone());

    let query =
        format!("container:vdso_observer_kernel_time_calls:rate5m{{container_id=\"{id}\"}}");
    let series = wait_for(
        "the container's rate from both nodes",
        Duration::from_secs(60),
        || {
            let series = prometheus_query(web, &query);
            let positive = series
                .iter()
                .filter(|s| s["value"][1].as_str().unwrap().parse::<f64>().unwrap() > 0.0)
                .count();
            (positive == 2).then_some(series)
        },
    );
    let mut seen: Vec<&str> = series
        .iter()
        .map(|s| s["metric"]["node"].as_str().unwrap())
        .collect();
    seen.sort();
    assert_eq!(seen, ["node-a", "node-b"], "{series:?}");
    for s in &series {
        assert_eq!(s["metric"]["runtime"], "podman", "{s}");
        let rate: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
        assert!(rate < 400.0, "about 200 calls/s: {s}");
    }
    // The container's calls are direct: the fault ranking holds them too.
    let faults = prometheus_query(
        web,
        "topk(10, sum by (node) (node_reason:vdso_observer_kernel_time_calls:rate5m{reason=\"direct_syscall\"}))",
    );
    assert_eq!(faults.len(), 2, "{faults:?}");

    // Both nodes counted under this machine's clocksource.
    let clocksource =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .unwrap();
    let counted = prometheus_query(
        web,
        &format!(
            "clocksource:vdso_observer_nodes:count{{clocksource=\"{}\"}}",
            clocksource.trim()
        ),
    );
    assert_eq!(counted.len(), 1, "{counted:?}");
    assert_eq!(counted[0]["value"][1], "2", "{counted:?}");

    // Every fleet query of the dashboard is valid PromQL for this Prometheus.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/grafana/vdso-observer.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut fleet_queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            if expr.contains(":vdso_observer_") {
                fleet_queries += 1;
            }
            // Every panel's query parses and runs, with its variables as
            // Grafana fills them for "All".
            let expr = expr
                .replace("$instance", ".*")
                .replace("$node", ".*")
                .replace("$__rate_interval", "1m");
            prometheus_query(web, &expr);
        }
    }
    assert!(fleet_queries >= 6, "{fleet_queries}");

    // And the README's joins with kube-state-metrics parse and run (empty here:
    // no kube-state-metrics).
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let block = readme
        .split("```promql\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a promql block in the README");
    let mut joins = 0;
    for query in block.split('#').skip(1) {
        // Each query follows its comment line.
        let query: String = query.lines().skip(1).collect::<Vec<_>>().join("\n");
        prometheus_query(web, &query);
        joins += 1;
    }
    assert_eq!(joins, 3, "{block}");
}
