//! What ships beside the binary is checked by the tools that consume it.

mod common;

use std::{path::Path, process::Command};

use common::OBSERVER;
use vdso_observer::metric_families;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn run(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command:?} failed:\n{text}");
    text
}

#[test]
fn alerting_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = repo("contrib/prometheus");
    let out = run(Command::new("promtool")
        .args(["check", "rules", "vdso-observer.rules.yml"])
        .current_dir(&dir));
    assert!(out.contains("SUCCESS: 18 rules found"), "{out}");
    let out = run(Command::new("promtool")
        .args(["test", "rules", "vdso-observer.rules.test.yml"])
        .current_dir(&dir));
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Every vdso_observer_* name used by the rules and the dashboard is exported.
#[test]
fn rules_and_dashboard_name_only_metrics_that_exist() {
    let recorded =
        std::fs::read_to_string(repo("contrib/prometheus/vdso-observer.rules.yml")).unwrap();
    for file in [
        "contrib/prometheus/vdso-observer.rules.yml",
        "contrib/grafana/vdso-observer.json",
        "README.md",
    ] {
        let text = std::fs::read_to_string(repo(file)).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("vdso_observer_") {
            // A recording rule's name (`level:metric:operations`) is whole
            // from the last character that is not part of a name.
            let start = rest[..at]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(0, |i| i + 1);
            let name: String = rest[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            rest = &rest[start + name.len()..];
            if name.contains(':') {
                assert!(
                    recorded.contains(&format!("record: {name}\n")),
                    "{file} names {name}, which no recording rule records"
                );
            } else {
                assert!(
                    metric_families::ALL.iter().any(|f| f.name == name),
                    "{file} names {name}, which is no family of metric_families.rs"
                );
            }
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("contrib/grafana/vdso-observer.json")).unwrap(),
    )
    .expect("the Grafana dashboard is valid JSON");
    let panels = dashboard["panels"].as_array().unwrap();
    let panel = |title: &str| {
        panels
            .iter()
            .find(|p| p["title"].as_str().is_some_and(|t| t.starts_with(title)))
            .unwrap_or_else(|| panic!("no panel {title:?}"))
    };
    // The clocksource's name, not the info metric's value 1.
    assert_eq!(panel("Current clocksource")["options"]["textMode"], "name");
    assert_eq!(
        panel("Observer: textfile write errors")["fieldConfig"]["defaults"]["unit"],
        "short"
    );
    for title in [
        "vDSO-answered time calls",
        "Share of time calls that entered the kernel",
        "Clock events",
        "Kernel log readable",
    ] {
        panel(title);
    }
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo("packaging/vdso-observer.service")).unwrap();
    assert!(unit.contains("CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_SYSLOG\n"));
    assert!(unit.contains("AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_SYSLOG\n"));
    assert!(unit.contains("NoNewPrivileges=yes"));
    assert!(unit.contains("ProtectSystem=strict"));
    // A missing textfile directory must not stop the start.
    assert!(unit.contains("ReadWritePaths=-/var/lib/prometheus/node-exporter"));
    // The kernel log stays readable: no private /dev without it, no ProtectKernelLogs.
    assert!(!unit.contains("PrivateDevices=yes"));
    assert!(!unit.contains("ProtectKernelLogs=yes"));
    assert!(unit.contains("DeviceAllow=/dev/kmsg r"));
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    // systemd-analyze checks the binary exists: point it at the one just built.
    let dir = std::env::temp_dir().join(format!("vdso-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vdso-observer.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/vdso-observer", OBSERVER),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every alerting rule has a case in the promtool unit tests.
#[test]
fn every_alert_has_a_rules_test() {
    let rules =
        std::fs::read_to_string(repo("contrib/prometheus/vdso-observer.rules.yml")).unwrap();
    let tests =
        std::fs::read_to_string(repo("contrib/prometheus/vdso-observer.rules.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 8, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no promtool test case"
        );
    }
}

#[test]
fn the_example_config_is_accepted() {
    let out = Command::new(OBSERVER)
        .args(["daemon", "--config"])
        .arg(repo("packaging/vdso-observer.toml"))
        .arg("--check-config")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("configuration is valid"), "{text}");
    // The effective configuration as TOML, every section filled.
    let effective = String::from_utf8_lossy(&out.stdout);
    for line in [
        "interval = \"15s\"",
        "[series]",
        "[thresholds]",
        "min_rate_per_sec = 0.0",
        "min_kernel_share = 0.0",
        "[observer]",
        "sample_hz = 499",
    ] {
        assert!(effective.contains(line), "{line} missing:\n{effective}");
    }
}

/// The YAML documents of a file, as JSON (PyYAML comes with kubernetes-validate).
fn yaml_documents(path: &Path) -> Vec<serde_json::Value> {
    let out = run(Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path));
    serde_json::from_str(out.trim()).unwrap()
}

fn manifests() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(repo("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn kubernetes_manifests_validate_against_kubernetes_1_37() {
    let files = manifests();
    let out = run(Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.37.0"])
        .args(&files));
    for kind in ["daemonset", "service", "namespace", "serviceaccount"] {
        assert!(
            out.contains(&format!(
                "passed for resource {kind}/vdso-observer against version 1.37"
            )),
            "{kind}:\n{out}"
        );
    }
    // The validator really checks: a wrong type and an unknown field fail.
    let daemonset = std::fs::read_to_string(repo("deploy/kubernetes/daemonset.yaml")).unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    for (what, broken) in [
        (
            "a string for hostPID",
            daemonset.replace("hostPID: true", "hostPID: \"yes\""),
        ),
        (
            "an unknown field",
            daemonset.replace("hostPID: true", "hostPID: true\n      hostPid: true"),
        ),
    ] {
        assert_ne!(broken, daemonset);
        let path = dir.join("broken-daemonset.yaml");
        std::fs::write(&path, broken).unwrap();
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--kubernetes-version", "1.37.0"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{what} passed validation");
    }
}

#[test]
fn the_daemonset_asks_for_what_the_observer_needs_and_no_more() {
    let daemonset = &yaml_documents(&repo("deploy/kubernetes/daemonset.yaml"))[0];
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["tolerations"][0]["operator"], "Exists", "every taint");
    let observer = &pod["containers"][0];
    let image = format!("localhost/vdso-observer:{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(observer["image"], image.as_str());
    let security = &observer["securityContext"];
    assert_eq!(
        security["capabilities"],
        serde_json::json!({"drop": ["ALL"], "add": ["BPF", "PERFMON"]})
    );
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["seccompProfile"]["type"], "Localhost");
    // The init container writes the profile where the kubelet looks for it.
    let init = &pod["initContainers"][0];
    assert_eq!(init["image"], image.as_str());
    let args: Vec<&str> = init["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[..2], ["generate", "seccomp-profile"]);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("seccomp");
    run(Command::new(OBSERVER)
        .args(["generate", "seccomp-profile"])
        .arg(&dir));
    let profile = dir.join(
        security["seccompProfile"]["localhostProfile"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(
        std::fs::read_to_string(&profile).unwrap(),
        std::fs::read_to_string(repo("deploy/seccomp/vdso-observer.json")).unwrap()
    );
    assert_eq!(
        init["volumeMounts"][0]["mountPath"].as_str().unwrap(),
        args[2],
        "{init:#}"
    );
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(observer[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(observer[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    assert_eq!(observer["ports"][0]["containerPort"], 9736);
    // The runtimes' state, read only, where the host's mount table puts it.
    for path in ["/run/containerd", "/run/containers/storage"] {
        let mount = observer["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("{path} not mounted: {observer:#}"));
        assert_eq!(mount["readOnly"], true, "{mount:#}");
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert_eq!(volume["hostPath"]["path"], path, "{volume:#}");
    }
    // Every manifest but the PodMonitor alternative is in the kustomization.
    let kustomization = &yaml_documents(&repo("deploy/kubernetes/kustomization.yaml"))[0];
    let mut listed: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    listed.sort();
    let mut present: Vec<String> = manifests()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|name| name != "kustomization.yaml" && name != "podmonitor.yaml")
        .collect();
    present.sort();
    assert_eq!(listed, present);
    for monitor in ["servicemonitor.yaml", "podmonitor.yaml"] {
        let text = std::fs::read_to_string(repo(&format!("deploy/kubernetes/{monitor}"))).unwrap();
        assert!(
            text.contains("__meta_kubernetes_pod_node_name") && text.contains("targetLabel: node"),
            "{monitor} labels series with the node"
        );
    }
}

/// target/dist, which `cargo xtask test` builds with `cargo xtask dist` first.
fn dist() -> std::path::PathBuf {
    std::env::var_os("VDSO_OBSERVER_DIST")
        .map(std::path::PathBuf::from)
        .expect("VDSO_OBSERVER_DIST names target/dist: run the tests with `cargo xtask test`")
}

#[test]
fn the_static_binary_runs_without_a_libc() {
    let binary = dist().join("vdso-observer");
    let headers = run(Command::new("readelf")
        .args(["--program-headers", "--dynamic"])
        .arg(&binary));
    assert!(
        !headers.contains("INTERP"),
        "no program interpreter:\n{headers}"
    );
    assert!(
        !headers.contains("NEEDED"),
        "no shared libraries:\n{headers}"
    );
    let version = run(Command::new(&binary).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("vdso-observer {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn the_deb_installs_binary_unit_config_man_pages_and_completions() {
    let deb = dist().join(format!(
        "vdso-observer_{}_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    let contents = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for path in [
        "./usr/bin/vdso-observer",
        "./lib/systemd/system/vdso-observer.service",
        "./etc/vdso-observer.toml",
        "./usr/share/man/man1/vdso-observer.1.gz",
        "./usr/share/man/man1/vdso-observer-daemon.1.gz",
        "./usr/share/bash-completion/completions/vdso-observer",
        "./usr/share/zsh/vendor-completions/_vdso-observer",
        "./usr/share/fish/vendor_completions.d/vdso-observer.fish",
        "./usr/share/doc/vdso-observer/copyright",
    ] {
        let line = contents
            .lines()
            .find(|l| l.ends_with(path))
            .unwrap_or_else(|| panic!("{path} not in the package:\n{contents}"));
        assert!(line.contains("root/root"), "{line}");
    }
    let fields = run(Command::new("dpkg-deb").arg("--field").arg(&deb));
    assert!(
        fields.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION"))),
        "{fields}"
    );
    assert!(fields.contains("Architecture: amd64"), "{fields}");
    // Unpacked: the unit starts the packaged binary, which runs, and the unit verifies.
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deb-root");
    let _ = std::fs::remove_dir_all(&root);
    run(Command::new("dpkg-deb")
        .arg("--extract")
        .arg(&deb)
        .arg(&root));
    let unit =
        std::fs::read_to_string(root.join("lib/systemd/system/vdso-observer.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/vdso-observer daemon"),
        "{unit}"
    );
    let version = run(Command::new(root.join("usr/bin/vdso-observer")).arg("--version"));
    assert!(version.contains(env!("CARGO_PKG_VERSION")));
    let control = run(Command::new("dpkg-deb").args(["--info"]).arg(&deb));
    assert!(control.contains("conffiles"), "{control}");
}
