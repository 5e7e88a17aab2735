//! Building the release observer and running it (`cargo xtask run`).

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::{
    exec::{self, quiet, step},
    setup,
};

/// Where [`build_release`] puts the binary, relative to the workspace root.
pub const RELEASE_BINARY: &str = "target/release/vdso-observer";

/// target/release/vdso-observer, eBPF object included.
pub fn build_release() -> Result<()> {
    quiet(
        "building vdso-observer (release, eBPF programs included)",
        "build-release",
        exec::cargo().args(["build", "--release", "--package", "vdso-observer"]),
    )
}

/// Set up, build, then run the observer with `args` as root; exits with its code.
pub fn run(args: &[String]) -> Result<()> {
    setup::run(false)?;
    build_release()?;
    let binary = Path::new(RELEASE_BINARY);
    let mut command = if setup::is_root() {
        Command::new(binary)
    } else {
        step("vdso-observer needs root (CAP_BPF, CAP_PERFMON): running it through sudo");
        let mut sudo = Command::new("sudo");
        sudo.arg(binary);
        sudo
    };
    let status = command
        .args(args)
        .status()
        .with_context(|| format!("running {}", binary.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}
