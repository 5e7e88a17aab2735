//! `cargo xtask`: everything a fresh machine needs, in one place. This file only
//! parses the command line and dispatches; each command has its own module.
//!
//! `setup` installs what is missing (nightly rust-src, Debian llvm-22-dev,
//! bpf-linker, test tools) and skips what is present; `run`, `test`, `dist` and
//! `bench` call it first, so the README's two commands work on a new machine.

mod bench;
mod dist;
mod exec;
mod lint;
mod manifests;
mod observer;
mod report;
mod setup;
mod test;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Set-up, build, run and test vdso-observer")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks to build and test (idempotent).
    Setup {
        /// Also install the tools the tests use (gcc-multilib, ...).
        #[arg(long)]
        for_tests: bool,
    },
    /// Set up, build (release) and run vdso-observer as root with ARGS.
    Run {
        /// Arguments for vdso-observer, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, check formatting and lints, then run every test (needs root),
    /// the guest-kernel scenarios of vm-test included. Every test runs even when
    /// one before it failed; the failures are named at the end.
    Test {
        /// Skip the guest-kernel scenarios (several minutes under TCG).
        #[arg(long)]
        no_vm: bool,
        /// Run the selected tests N times and print a pass rate per test.
        #[arg(long, default_value_t = 1, value_name = "N")]
        repeat: u32,
        /// Keep what passing tests print (their measured figures) in the logs under
        /// target/xtask-logs (libtest's --nocapture).
        #[arg(long)]
        nocapture: bool,
        /// Only tests whose id contains this text: `BINARY::MODULE::NAME` (e.g.
        /// `tui::`, `daemon::`, `vdso-observer (unit)::report`) or `vm-test::SCENARIO`.
        filter: Option<String>,
    },
    /// Boot Debian's kernel in QEMU with hpet, a run-time switch and vdso=0, and
    /// check what the observer reports there; and Debian's arm64 kernel under
    /// qemu-system-aarch64 with the cross-compiled observer.
    VmTest {
        /// Only the guest of this architecture (default: both).
        #[arg(long, value_enum)]
        arch: Option<dist::Arch>,
    },
    /// `cargo fmt --check` and clippy with warnings denied, eBPF crate included.
    Lint,
    /// Build the static binary, its man pages and shell completions, the .deb and
    /// the OCI image into target/dist (arm64: target/dist/aarch64, cross-compiled);
    /// without --target, both and one image index of both architectures.
    Dist {
        /// Only this architecture.
        #[arg(long, value_enum)]
        target: Option<dist::Arch>,
    },
    /// Make the Prometheus Operator layer's PrometheusRule and dashboard
    /// (deploy/kubernetes/prometheus-operator) from contrib/.
    Manifests,
    /// Measure the observer against bare, an empty program, bpftrace and BCC, in one
    /// run, and how exact it is (root; 35 to 60 minutes with every part). Prints a
    /// table, writes target/bench/bench.json.
    Bench {
        /// Only these parts (default: all).
        #[arg(value_enum)]
        parts: Vec<bench::Part>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = workspace_root();
    std::env::set_current_dir(&root).with_context(|| format!("cd {}", root.display()))?;
    setup::put_cargo_bin_on_path();
    match cli.command {
        Task::Setup { for_tests } => setup::run(for_tests),
        Task::Manifests => manifests::run(&root),
        Task::Run { args } => observer::run(&args),
        Task::Test {
            no_vm,
            repeat,
            nocapture,
            filter,
        } => test::run(
            &root,
            test::Options {
                no_vm,
                repeat,
                nocapture,
                filter,
            },
        ),
        Task::VmTest { arch } => {
            setup::run(true)?;
            let scenarios = match arch {
                Some(arch) => vm::scenarios_of(arch),
                None => vm::SCENARIO_NAMES.to_vec(),
            };
            let results = vm::run(&root, &scenarios)?;
            let failed = results.iter().filter(|(_, passed)| !passed).count();
            println!(
                "vm-test: {} passed, {failed} failed",
                results.len() - failed
            );
            if failed > 0 {
                bail!("{failed} vm-test scenarios failed");
            }
            Ok(())
        }
        Task::Lint => {
            setup::run(false)?;
            lint::run()
        }
        Task::Bench { parts } => {
            setup::run(true)?;
            bench::run(&root, &parts)
        }
        Task::Dist { target: None } => dist::run_all(),
        Task::Dist {
            target: Some(target),
        } => dist::run(target),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
