//! A Kubernetes node's worth of containers: 200 pod cgroups (kubepods, systemd
//! driver) with 5 processes each, 195 pods nearly idle (10 direct
//! clock_gettime calls a second per process) and 5 busy (1 000 a second), under the daemon at its
//! default 15 s interval for 90 s. What it costs (CPU share of one core, RSS)
//! and how many series it exports, against the goals: ≤ 0.5% of a core,
//! ≤ 30 MB, every pod's container with its series (200, within
//! `series.max_containers`).

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{Bench, cpu_ticks, status_kb};

const PODS: usize = 200;
const PROCESSES_PER_POD: usize = 5;
const BUSY_PODS: usize = 5;
const MEASURED: Duration = Duration::from_secs(90);
/// The daemon's default `series.max_containers`.
const MAX_CONTAINERS: usize = 500;

/// The pod cgroups and their processes; all gone on drop.
struct Pods {
    root: PathBuf,
    children: Vec<Child>,
}

impl Drop for Pods {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deepest first: a cgroup with children cannot be removed.
        let mut dirs = Vec::new();
        collect_dirs(&self.root, &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            let _ = fs::remove_dir(dir);
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&entry.path(), out);
        }
    }
}

fn unified_root() -> Result<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|root| root.join("cgroup.controllers").exists())
        .context("no cgroup v2 hierarchy mounted")
}

fn start_pods(bench: &Bench) -> Result<Pods> {
    // At the top, where a kubelet puts it: the observer names containers
    // only under a top-level kubepods (elsewhere any delegated subtree could
    // make such names).
    let root = unified_root()?.join("kubepods.slice");
    if root.exists() {
        bail!(
            "{} exists: a kubelet's (or a killed bench's) pods are there; the fleet bench \
             makes its own and would mix with them (remove it, or run elsewhere)",
            root.display()
        );
    }
    let mut pods = Pods {
        root: root.clone(),
        children: Vec::new(),
    };
    let qos = root.join("kubepods-burstable.slice");
    fs::create_dir_all(&qos).with_context(|| format!("creating {}", qos.display()))?;
    for pod in 0..PODS {
        let uid = format!("0000{pod:04x}-1111-2222-3333-444455556666");
        let id = format!("{pod:08x}{}", "c".repeat(56));
        let dir = qos
            .join(format!(
                "kubepods-burstable-pod{}.slice",
                uid.replace('-', "_")
            ))
            .join(format!("cri-containerd-{id}.scope"));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let procs = std::ffi::CString::new(dir.join("cgroup.procs").to_string_lossy().as_bytes())?;
        // `steady` makes N/10 calls every 100 ms: 10 is its slowest.
        let rate = if pod < BUSY_PODS { "1000" } else { "10" };
        for _ in 0..PROCESSES_PER_POD {
            let procs = procs.clone();
            let mut command = Command::new(&bench.workload);
            command
                .args(["steady", rate, "100000"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                    if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                    Ok(())
                });
            }
            pods.children
                .push(command.spawn().context("starting a pod's process")?);
        }
    }
    Ok(pods)
}

pub(super) fn run(bench: &Bench) -> Result<Value> {
    let pods = start_pods(bench)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut daemon = Command::new(&bench.observer)
        .args(["daemon", "--listen", &format!("127.0.0.1:{port}")])
        .stderr(Stdio::null())
        .spawn()
        .context("starting the daemon")?;
    let pid = daemon.id();
    let metrics = |path: &str| -> Option<String> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let started = Instant::now();
    while metrics("/healthz").is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the daemon did not become healthy within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Start-up (BTF, calibration) is not the steady cost.
    let cpu0 = cpu_ticks(pid).unwrap_or(0);
    let t0 = Instant::now();
    std::thread::sleep(MEASURED);
    let cpu1 = cpu_ticks(pid).unwrap_or(0);
    let elapsed = t0.elapsed().as_secs_f64();
    let kb = status_kb(pid);
    let text = metrics("/metrics").unwrap_or_default();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    drop(pods);

    let samples = text.lines().filter(|l| !l.starts_with('#')).count();
    let containers: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("vdso_observer_container_kernel_time_calls_total{"))
        .filter_map(|l| l.split("container_id=\"").nth(1)?.split('"').next())
        .collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu_percent = (cpu1 - cpu0) as f64 / ticks / elapsed * 100.0;
    let rss_mb = kb("VmRSS:") / 1024.0;
    Ok(json!({
        "pods": PODS,
        "processes": PODS * PROCESSES_PER_POD,
        "busy_pods": BUSY_PODS,
        "seconds": elapsed,
        "cpu_percent_of_one_core": cpu_percent,
        "rss_mb": rss_mb,
        "peak_rss_mb": kb("VmHWM:") / 1024.0,
        "samples": samples,
        "container_series_containers": containers.len(),
        "max_containers": MAX_CONTAINERS,
        // Every pod's container has its series: the cap is above the pods.
        "goals_met": cpu_percent <= 0.5 && rss_mb <= 30.0 && containers.len() == PODS.min(MAX_CONTAINERS),
    }))
}

pub(super) fn render(fleet: &Value) -> String {
    let number = |key: &str| fleet[key].as_f64().unwrap_or(0.0);
    format!(
        "\nfleet: {} pods x {} processes ({} pods busy) for {:.0} s: daemon {:.2}% of one core (goal <= 0.5%), RSS {:.1} MB (goal <= 30; peak {:.1} MB at start), {} samples, {} containers with series (cap {}){}\n",
        fleet["pods"],
        number("processes") as u64 / number("pods").max(1.0) as u64,
        fleet["busy_pods"],
        number("seconds"),
        number("cpu_percent_of_one_core"),
        number("rss_mb"),
        number("peak_rss_mb"),
        fleet["samples"],
        fleet["container_series_containers"],
        fleet["max_containers"],
        if fleet["goals_met"] == true {
            ": goals met"
        } else {
            ": GOALS NOT MET"
        }
    )
}
