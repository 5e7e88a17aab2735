//! What ships beside the binary is checked by the tools that consume it.

mod common;

use std::{path::Path, process::Command};

use common::OBSERVER;

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
    assert!(out.contains("SUCCESS: 8 rules found"), "{out}");
    let out = run(Command::new("promtool")
        .args(["test", "rules", "vdso-observer.rules.test.yml"])
        .current_dir(&dir));
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Every vdso_observer_* name used by the rules and the dashboard is exported.
#[test]
fn rules_and_dashboard_name_only_metrics_that_exist() {
    let exported = std::fs::read_to_string(repo("vdso-observer/src/daemon/metrics.rs")).unwrap();
    for file in [
        "contrib/prometheus/vdso-observer.rules.yml",
        "contrib/grafana/vdso-observer.json",
        "README.md",
    ] {
        let text = std::fs::read_to_string(repo(file)).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("vdso_observer_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            assert!(
                exported.contains(&format!("\"{name}\"")),
                "{file} names {name}, which metrics.rs does not export"
            );
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
        "min_rate_per_sec = 10.0",
        "[observer]",
        "sample_hz = 499",
    ] {
        assert!(effective.contains(line), "{line} missing:\n{effective}");
    }
}
