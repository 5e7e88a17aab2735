//! `cargo xtask manifests`: the Prometheus Operator layer's files made from
//! their sources in contrib/, so both say the same (tests/packaging.rs checks).

use std::{fs, path::Path};

use anyhow::{Context as _, Result};

use crate::exec::step;

const RULES: &str = "contrib/prometheus/vdso-observer.rules.yml";
const DASHBOARD: &str = "contrib/grafana/vdso-observer.json";
const LAYER: &str = "deploy/kubernetes/prometheus-operator";

/// The PrometheusRule wrapping the rules file's groups (its text indented
/// under `spec:`), and the dashboard copied beside the kustomization (which
/// may only read files below it).
pub fn run(root: &Path) -> Result<()> {
    let rules = fs::read_to_string(root.join(RULES)).with_context(|| format!("reading {RULES}"))?;
    let mut resource = String::from(
        "# Made from contrib/prometheus/vdso-observer.rules.yml by `cargo xtask manifests`:\n\
         # edit that file, not this one.\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n  \
           name: vdso-observer\n  \
           namespace: vdso-observer\n  \
           labels:\n    \
             app.kubernetes.io/name: vdso-observer\n\
         spec:\n",
    );
    for line in rules.lines() {
        if !line.is_empty() {
            resource.push_str("  ");
            resource.push_str(line);
        }
        resource.push('\n');
    }
    let target = root.join(LAYER).join("prometheusrule.yaml");
    fs::write(&target, resource).with_context(|| format!("writing {}", target.display()))?;
    step(&format!("{}: from {RULES}", target.display()));
    let target = root.join(LAYER).join("dashboard.json");
    fs::copy(root.join(DASHBOARD), &target)
        .with_context(|| format!("copying {DASHBOARD} to {}", target.display()))?;
    step(&format!("{}: from {DASHBOARD}", target.display()));
    Ok(())
}
