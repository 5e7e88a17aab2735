//! `cargo xtask lint`: formatting and clippy with warnings denied, eBPF crate included.

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::exec::{self, quiet};

pub fn run() -> Result<()> {
    quiet(
        "cargo fmt --check",
        "lint-fmt",
        exec::cargo().args(["fmt", "--all", "--", "--check"]),
    )
    .context("formatting differs: run `cargo fmt --all`")?;
    quiet(
        "clippy (user space, common, xtask), warnings denied",
        "lint-clippy",
        exec::cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "vdso-observer-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // The arm64 build: its own register access and tables (cross-compiled).
    quiet(
        "clippy (user space and common for aarch64), warnings denied",
        "lint-clippy-aarch64",
        exec::cargo()
            .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld")
            .args([
                "clippy",
                "--package",
                "vdso-observer",
                "--package",
                "vdso-observer-common",
                "--target",
                crate::setup::AARCH64_TARGET,
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
    )?;
    // The eBPF crate only builds for the BPF target with nightly; clippy it on its
    // own so the panic handler is not compiled twice, once per architecture
    // (aya-build passes it as bpf_target_arch).
    for arch in ["x86_64", "aarch64"] {
        quiet(
            &format!("clippy (eBPF crate, bpfel-unknown-none, {arch}), warnings denied"),
            &format!("lint-clippy-ebpf-{arch}"),
            Command::new("rustup")
                .env(
                    "CARGO_ENCODED_RUSTFLAGS",
                    format!("--cfg=bpf_target_arch=\"{arch}\""),
                )
                .args([
                    "run",
                    "nightly",
                    "cargo",
                    "clippy",
                    "--package",
                    "vdso-observer-ebpf",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--release",
                    "--target-dir",
                    &format!("target/ebpf-clippy-{arch}"),
                    "--",
                    "-D",
                    "warnings",
                ]),
        )?;
    }
    Ok(())
}
