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
    assert!(out.contains("SUCCESS: 20 rules found"), "{out}");
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

/// Every alert links a runbook that exists: a section of docs/runbooks.md
/// named after it, saying what it means, how to confirm it, what to do.
#[test]
fn every_alert_has_a_runbook() {
    let rules = &yaml_documents(&repo("contrib/prometheus/vdso-observer.rules.yml"))[0];
    let runbooks = std::fs::read_to_string(repo("docs/runbooks.md")).unwrap();
    let mut alerts = 0;
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let Some(alert) = rule["alert"].as_str() else {
                continue;
            };
            alerts += 1;
            let url = rule["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_default();
            assert_eq!(
                url,
                format!("docs/runbooks.md#{}", alert.to_lowercase()),
                "{alert}"
            );
            let section = runbooks
                .split(&format!("## {alert}\n"))
                .nth(1)
                .unwrap_or_else(|| panic!("no section ## {alert} in docs/runbooks.md"));
            let section = section.split("\n## ").next().unwrap();
            for part in ["**Means.**", "**Confirm.**", "**Do.**"] {
                assert!(section.contains(part), "{alert}: no {part}");
            }
        }
    }
    assert_eq!(alerts, 8);
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

/// `kubectl kustomize deploy/kubernetes/LAYER` (kubectl's own kustomize, as
/// an operator runs it), saved as a file; and its objects.
fn rendered(layer: &str) -> (std::path::PathBuf, Vec<serde_json::Value>) {
    let out = run(Command::new("kubectl")
        .arg("kustomize")
        .arg(repo(&format!("deploy/kubernetes/{layer}"))));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{layer}.yaml"));
    std::fs::write(&path, out).unwrap();
    let objects = yaml_documents(&path);
    (path, objects)
}

fn kinds(objects: &[serde_json::Value]) -> Vec<&str> {
    let mut kinds: Vec<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    kinds.sort();
    kinds
}

/// kubernetes-validate (strict: unknown fields fail) on the objects Kubernetes
/// itself defines; returns its output.
fn validate_core(objects: &[serde_json::Value], name: &str) -> String {
    let core: Vec<&serde_json::Value> = objects
        .iter()
        .filter(|o| {
            !o["apiVersion"]
                .as_str()
                .unwrap()
                .starts_with("monitoring.coreos.com/")
        })
        .collect();
    // One YAML document per object (JSON is YAML).
    let documents: Vec<String> = core.iter().map(|o| o.to_string()).collect();
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("manifests/{name}-core.yaml"));
    std::fs::write(&path, documents.join("\n---\n")).unwrap();
    let out = run(Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.37.0"])
        .arg(&path));
    for object in core {
        let kind = object["kind"].as_str().unwrap().to_lowercase();
        let name = object["metadata"]["name"].as_str().unwrap();
        assert!(
            out.contains(&format!(
                "passed for resource {kind}/{name} against version 1.37"
            )),
            "{kind}/{name}:\n{out}"
        );
    }
    out
}

/// The Prometheus Operator's objects against its schemas (npm's
/// @kubernetes-models/prometheus-operator, installed by `cargo xtask setup`).
fn validate_operator(objects: &[serde_json::Value]) -> std::process::Output {
    use std::io::Write as _;
    let models = repo("target/npm/node_modules/@kubernetes-models/prometheus-operator");
    assert!(
        models.exists(),
        "{} missing: run the tests with `cargo xtask test` (its set-up installs it)",
        models.display()
    );
    let mut node = Command::new("node")
        .arg(repo("vdso-observer/tests/validate-prometheus-operator.mjs"))
        .arg(&models)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node (the machine's Node.js)");
    node.stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(objects).unwrap().as_bytes())
        .unwrap();
    node.wait_with_output().unwrap()
}

/// Both kustomizations render with a real kustomize, and every object
/// validates: Kubernetes' own against Kubernetes 1.37's schemas, the
/// Prometheus Operator's against the operator's.
#[test]
fn both_kustomizations_render_and_every_object_validates() {
    let (_, base) = rendered("base");
    assert_eq!(
        kinds(&base),
        [
            "DaemonSet",
            "Namespace",
            "NetworkPolicy",
            "Service",
            "ServiceAccount"
        ]
    );
    validate_core(&base, "base");
    let (_, operator) = rendered("prometheus-operator");
    assert_eq!(
        kinds(&operator),
        [
            "ConfigMap",
            "DaemonSet",
            "Namespace",
            "NetworkPolicy",
            "PrometheusRule",
            "Service",
            "ServiceAccount",
            "ServiceMonitor"
        ]
    );
    validate_core(&operator, "prometheus-operator");
    let mut checked = operator.clone();
    // The PodMonitor alternative, not listed by default, validates too.
    checked.extend(yaml_documents(&repo(
        "deploy/kubernetes/prometheus-operator/podmonitor.yaml",
    )));
    let out = validate_operator(&checked);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for object in ["ServiceMonitor", "PrometheusRule", "PodMonitor"] {
        assert!(
            text.contains(&format!("valid {object}/vdso-observer")),
            "{text}"
        );
    }
    // Every object lands in one namespace; the dashboard is where Grafana's
    // sidecar looks.
    assert!(
        operator
            .iter()
            .all(|o| o["kind"] == "Namespace" || o["metadata"]["namespace"] == "vdso-observer")
    );
    let dashboard = operator.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: serde_json::Value =
        serde_json::from_str(dashboard["data"]["vdso-observer.json"].as_str().unwrap()).unwrap();
    assert_eq!(json["uid"], "vdso-observer");

    // The validators really check: a wrong type and an unknown field fail
    // Kubernetes' schemas; a wrong type and a missing field the operator's.
    let daemonset = std::fs::read_to_string(repo("deploy/kubernetes/base/daemonset.yaml")).unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("manifests");
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
    let monitor = operator
        .iter()
        .find(|o| o["kind"] == "ServiceMonitor")
        .unwrap();
    let mut number_interval = monitor.clone();
    number_interval["spec"]["endpoints"][0]["interval"] = serde_json::json!(30);
    let mut no_selector = monitor.clone();
    no_selector["spec"]
        .as_object_mut()
        .unwrap()
        .remove("selector");
    for broken in [number_interval, no_selector] {
        let out = validate_operator(&[broken]);
        assert!(
            !out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// The operator layer's PrometheusRule and dashboard are the ones in
/// contrib/ (`cargo xtask manifests` makes them).
#[test]
fn the_operator_layer_carries_the_rules_and_dashboard_of_contrib() {
    let rule = &yaml_documents(&repo(
        "deploy/kubernetes/prometheus-operator/prometheusrule.yaml",
    ))[0];
    let rules = &yaml_documents(&repo("contrib/prometheus/vdso-observer.rules.yml"))[0];
    assert_eq!(
        rule["spec"]["groups"], rules["groups"],
        "prometheusrule.yaml differs from contrib/prometheus: run `cargo xtask manifests`"
    );
    let read = |path: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(repo(path)).unwrap()).unwrap()
    };
    assert_eq!(
        read("deploy/kubernetes/prometheus-operator/dashboard.json"),
        read("contrib/grafana/vdso-observer.json"),
        "dashboard.json differs from contrib/grafana: run `cargo xtask manifests`"
    );
}

#[test]
fn the_daemonset_asks_for_what_the_observer_needs_and_no_more() {
    let daemonset = &yaml_documents(&repo("deploy/kubernetes/base/daemonset.yaml"))[0];
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
    for monitor in ["servicemonitor.yaml", "podmonitor.yaml"] {
        let text = std::fs::read_to_string(repo(&format!(
            "deploy/kubernetes/prometheus-operator/{monitor}"
        )))
        .unwrap();
        assert!(
            text.contains("__meta_kubernetes_pod_node_name") && text.contains("targetLabel: node"),
            "{monitor} labels series with the node"
        );
    }
}

/// `cargo xtask dist` makes one image for both architectures: an OCI image
/// index whose manifests are linux/amd64 and linux/arm64, which the
/// DaemonSet (no architecture pinned) runs on every node.
#[test]
fn the_image_index_holds_both_architectures() {
    let archive = dist().join(format!(
        "vdso-observer-{}.oci-index.tar",
        env!("CARGO_PKG_VERSION")
    ));
    let blob = |name: &str| -> serde_json::Value {
        let out = Command::new("tar")
            .arg("-xOf")
            .arg(&archive)
            .arg(name)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name} in {}", archive.display());
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let top = blob("index.json");
    // The archive's index names the image's own index.
    let index_digest = top["manifests"][0]["digest"].as_str().unwrap();
    assert_eq!(
        top["manifests"][0]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let index = blob(&format!("blobs/{}", index_digest.replace(':', "/")));
    let mut platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    platforms.sort();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    let daemonset = &yaml_documents(&repo("deploy/kubernetes/base/daemonset.yaml"))[0];
    let selector = &daemonset["spec"]["template"]["spec"]["nodeSelector"];
    assert!(selector.get("kubernetes.io/arch").is_none(), "{selector}");
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
