//! A real Kubernetes pod, made as a kubelet makes it: Debian's containerd
//! with its CRI plugin as a test-owned daemon (its own root, state and
//! socket), a CRI client over that socket, the sandbox under
//! `/kubepods/besteffort/pod<uid>`. The observer names the pod, its namespace
//! and its containers in JSON, in `top` and in the daemon's metrics, with
//! exact counts.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use common::*;

/// The test's own containerd: stopped (and its pods removed) when dropped.
struct Containerd {
    dir: PathBuf,
    daemon: Child,
    sandboxes: Vec<String>,
}

impl Containerd {
    fn start() -> Containerd {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ctrd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cni")).unwrap();
        let config = dir.join("config.toml");
        // The sandbox's oom_score_adj (-998) needs CAP_SYS_RESOURCE, which
        // root lacks on these machines: restrict_oom_score_adj keeps it at
        // the daemon's own.
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{dir}/root"
state = "{dir}/state"
[grpc]
  address = "{dir}/containerd.sock"
[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{dir}/cni"
    conf_dir = "{dir}/cni"
"#,
                dir = dir.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd (installed by `cargo xtask setup --for-tests`)");
        let containerd = Containerd {
            dir,
            daemon,
            sandboxes: Vec::new(),
        };
        let socket = containerd.socket();
        wait_for("containerd's socket", Duration::from_secs(30), || {
            socket.exists().then_some(())
        });
        for image in [PAUSE_IMAGE, WORKLOAD_IMAGE] {
            containerd.import(image);
        }
        containerd
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// A podman image into containerd's `k8s.io` namespace (where the CRI
    /// plugin looks).
    fn import(&self, image: &str) {
        let archive = self.dir.join("image.tar");
        let _ = std::fs::remove_file(&archive);
        run_ok(
            Command::new("podman")
                .args(["save", "--quiet", "--format", "docker-archive", "-o"])
                .arg(&archive)
                .arg(image),
        );
        run_ok(
            Command::new("ctr")
                .arg("--address")
                .arg(self.socket())
                .args(["--namespace", "k8s.io", "images", "import"])
                .arg(&archive),
        );
    }

    /// Runs a pod with `containers` (name, arguments of the workload);
    /// returns the ids of the containers.
    fn run_pod(
        &mut self,
        pod: &str,
        namespace: &str,
        uid: &str,
        containers: &[(&str, &[&str])],
    ) -> Vec<String> {
        let mut command = Command::new(cri_client());
        command
            .arg(self.socket())
            .args(["run", pod, namespace, uid, WORKLOAD_IMAGE]);
        for (name, args) in containers {
            command.arg(format!("{name}={}", args.join(",")));
        }
        let out = run_ok(&mut command);
        let mut ids: Vec<String> = out.lines().map(str::to_owned).collect();
        self.sandboxes.push(ids.remove(0));
        assert_eq!(ids.len(), containers.len(), "{out}");
        ids
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for sandbox in &self.sandboxes {
            let _ = Command::new(cri_client())
                .arg(self.socket())
                .args(["remove", sandbox])
                .status();
        }
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.daemon.id() as i32, libc::SIGTERM) };
        let _ = self.daemon.wait();
        let _ = Command::new("umount")
            .arg("--recursive")
            .arg(self.dir.join("state"))
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const PAUSE_IMAGE: &str = "localhost/vdso-observer-test-pause:latest";
const WORKLOAD_IMAGE: &str = "localhost/vdso-observer-test-pod-workload:latest";

/// The pause and workload images, both the static workload (`hold` sleeps
/// until SIGTERM, as a sandbox's pause process must).
fn images() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let binary = build_workload("time_calls", "vt-pod", &["-static"]);
        scratch_image(PAUSE_IMAGE, &binary, &["/pause", "hold", "0", "100000"]);
        scratch_image(WORKLOAD_IMAGE, &binary, &["/vt-pod"]);
    });
}

/// tests/cri-client, built once (release) into the test's target directory.
fn cri_client() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let manifest =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cri-client/Cargo.toml");
            let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cri-client");
            run_ok(
                Command::new(env!("CARGO"))
                    .args([
                        "build",
                        "--quiet",
                        "--release",
                        "--locked",
                        "--manifest-path",
                    ])
                    .arg(&manifest)
                    .arg("--target-dir")
                    .arg(&target),
            );
            target.join("release/cri-client")
        })
        .clone()
}

fn run_ok(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_cri_pod_is_named_by_namespace_pod_and_container_with_exact_counts() {
    require_root();
    images();
    let mut containerd = Containerd::start();
    let unique = std::process::id();
    let pod = format!("web-{unique}");
    let namespace = "vt-shop";
    let uid = format!("{unique:08x}-1111-2222-3333-444455556666");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // Both front ends watch from before the pod exists.
    let observer = ObserverRun::start(&[]);
    let mut daemon = Command::new(OBSERVER)
        .args(["daemon", "--interval", "1s", "--listen", &listen])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the daemon's endpoint", Duration::from_secs(60), || {
        http_get(port, "/healthz").filter(|(status, ..)| *status == 200)
    });
    // `app` makes 300 direct calls and stays up; `ticker` makes 100 a second.
    let ids = containerd.run_pod(
        &pod,
        namespace,
        &uid,
        &[
            ("app", &["hold", "300", "120"]),
            ("ticker", &["steady", "100", "120"]),
        ],
    );
    let app_id = ids[0].clone();
    let series = format!(
        "vdso_observer_container_kernel_time_calls_total{{container_id=\"{app_id}\",pod_uid=\"{uid}\",runtime=\"containerd\",namespace=\"{namespace}\",pod=\"{pod}\",container=\"app\",call=\"clock_gettime\",clock=\"CLOCK_MONOTONIC\",origin=\"direct\",reason=\"direct_syscall\"}}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let body = http_get(port, "/metrics")
            .map(|(_, _, body)| body)
            .unwrap_or_default();
        if sample(&body, &series) == Some(300.0) {
            break body;
        }
        let seen: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with("vdso_observer_container_kernel_time_calls_total{"))
            .collect();
        assert!(
            std::time::Instant::now() < deadline,
            "no {series} 300 in 30 s; the container series: {seen:#?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    promtool_check(&metrics);

    // top, filtered by the pod's name: the POD column and the container's name.
    let out = run_ok(Command::new(OBSERVER).args([
        "top",
        "-b",
        "-n",
        "1",
        "-d",
        "2",
        "--pod",
        &format!("{namespace}/{pod}"),
    ]));
    let header = out.lines().find(|l| l.contains("PID")).expect("a header");
    assert!(
        header.contains("CONTAINER") && header.contains("POD"),
        "{out}"
    );
    let ticker = out
        .lines()
        .find(|l| l.contains("vt-pod") && l.contains(" ticker "))
        .unwrap_or_else(|| panic!("no ticker row: {out}"));
    assert!(ticker.contains(&format!("{namespace}/{pod}")), "{out}");

    let report = observer.finish();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    let app: Vec<ProcessReport> = report
        .processes
        .iter()
        // runc's init ran in the container before exec'ing the workload,
        // under the same pid: another row.
        .filter(|p| p.comm == "vt-pod" && p.container.as_ref().is_some_and(|c| c.id == app_id))
        .cloned()
        .collect();
    assert_eq!(app.len(), 1, "{report:#?}");
    assert_eq!(counts(&app[0]), direct_monotonic(300));
    let container = app[0].container.as_ref().unwrap();
    assert_eq!(
        container.names.name.as_deref(),
        Some("app"),
        "{container:?}"
    );
    assert_eq!(container.names.pod.as_deref(), Some(pod.as_str()));
    assert_eq!(container.names.namespace.as_deref(), Some(namespace));
    assert_eq!(container.pod_uid.as_deref(), Some(uid.as_str()));
}
