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
    // The eBPF crate only builds for the BPF target with nightly; clippy it on its
    // own so the panic handler is not compiled twice.
    quiet(
        "clippy (eBPF crate, bpfel-unknown-none), warnings denied",
        "lint-clippy-ebpf",
        Command::new("rustup").args([
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
            "target/ebpf-clippy",
            "--",
            "-D",
            "warnings",
        ]),
    )
}
