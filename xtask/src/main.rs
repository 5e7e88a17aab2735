//! `cargo xtask`: everything a fresh machine needs, in one place.
//!
//! `setup` installs what is missing (nightly rust-src, Debian llvm-22-dev,
//! bpf-linker, test tools) and skips what is present; `run`, `test` and `bench`
//! call it first, so the README's two commands work on a new machine.

mod bench;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
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
    /// the guest-kernel scenarios of vm-test included.
    Test {
        /// Skip the guest-kernel scenarios (several minutes under TCG).
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Boot Debian's kernel in QEMU with hpet, a run-time switch and vdso=0, and
    /// check what the observer reports there.
    VmTest,
    /// `cargo fmt --check` and clippy with warnings denied, eBPF crate included.
    Lint,
    /// Build the release binary, its man pages and shell completions into target/dist.
    Dist,
    /// Measure the observer against bare, an empty program, bpftrace and BCC, in one
    /// run (root; about 6 minutes). Prints a table, writes target/bench/bench.json.
    Bench,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root).with_context(|| format!("cd {}", root.display()))?;
    setup::put_cargo_bin_on_path();
    match cli.command {
        Task::Setup { for_tests } => setup::run(for_tests),
        Task::Run { args } => {
            setup::run(false)?;
            build_release_observer()?;
            let binary = root.join("target/release/vdso-observer");
            run_as_root(&binary, &args)
        }
        Task::VmTest => {
            setup::run(true)?;
            let (passed, failed) = vm::run(&root)?;
            println!("vm-test: {passed} passed, {failed} failed");
            if failed > 0 {
                bail!("{failed} vm-test scenarios failed");
            }
            Ok(())
        }
        Task::Test { no_vm, args } => {
            setup::run(true)?;
            lint()?;
            step(
                "running every test (unit tests, then the real eBPF programs against real workloads)",
            );
            let mut cargo_args = vec!["test", "--workspace", "--exclude", "vdso-observer-ebpf"];
            cargo_args.extend(args.iter().map(String::as_str));
            if !setup::is_root() {
                // The tests load eBPF programs: run the test binaries through sudo,
                // as aya's own template does, while cargo builds as this user.
                step("not root: the test binaries run through `sudo -E`");
                // SAFETY: single-threaded here.
                unsafe {
                    std::env::set_var("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", "sudo -E")
                };
            }
            let (passed, failed) = cargo_tests(&cargo_args)?;
            let (vm_passed, vm_failed) = if no_vm {
                step("vm-test skipped (--no-vm)");
                (0, 0)
            } else {
                step(
                    "vm-test: the observer in a guest kernel whose clocksource the vDSO cannot use",
                );
                let (p, f) = vm::run(&root)?;
                println!("vm-test: {p} passed, {f} failed");
                (p, f)
            };
            println!(
                "all: {} passed, {} failed",
                passed + vm_passed,
                failed + vm_failed
            );
            if failed + vm_failed > 0 {
                bail!("{} tests failed", failed + vm_failed);
            }
            Ok(())
        }
        Task::Lint => {
            setup::run(false)?;
            lint()
        }
        Task::Bench => {
            setup::run(true)?;
            bench::run(&root)
        }
        Task::Dist => {
            setup::run(false)?;
            build_release_observer()?;
            let binary = root.join("target/release/vdso-observer");
            let dist = root.join("target/dist");
            std::fs::create_dir_all(&dist)?;
            std::fs::copy(&binary, dist.join("vdso-observer"))
                .context("copying the binary into target/dist")?;
            step("man pages into target/dist/man");
            checked_run(
                Command::new(&binary)
                    .args(["generate", "man"])
                    .arg(dist.join("man")),
            )?;
            for shell in ["bash", "zsh", "fish"] {
                step(&format!("{shell} completions into target/dist/completions"));
                checked_run(
                    Command::new(&binary)
                        .args(["generate", "completions", shell])
                        .arg(dist.join("completions")),
                )?;
            }
            eprintln!(
                "target/dist: vdso-observer, man/*.1 (man -l target/dist/man/vdso-observer.1), completions/"
            );
            Ok(())
        }
    }
}

fn lint() -> Result<()> {
    step("cargo fmt --check");
    cargo(&["fmt", "--all", "--", "--check"])
        .context("formatting differs: run `cargo fmt --all`")?;
    step("clippy (user space, common, xtask), warnings denied");
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "vdso-observer-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The eBPF crate only builds for the BPF target with nightly; clippy it on its
    // own so the panic handler is not compiled twice.
    step("clippy (eBPF crate, bpfel-unknown-none), warnings denied");
    let status = Command::new("rustup")
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
            "target/ebpf-clippy",
            "--",
            "-D",
            "warnings",
        ])
        .status()
        .context("running rustup run nightly cargo clippy")?;
    if !status.success() {
        bail!("clippy on the eBPF crate failed");
    }
    Ok(())
}

/// Prints one line per step, so a person sees what is happening and where it stopped.
pub fn step(what: &str) {
    eprintln!("==> {what}");
}

/// target/release/vdso-observer, eBPF object included.
pub fn build_release_observer() -> Result<()> {
    step("building vdso-observer (release)");
    cargo(&["build", "--release", "--package", "vdso-observer"])
}

fn checked_run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .status()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Runs `cargo test`, passing its output through, and prints one line that
/// sums every test binary's result: `tests: N passed, M failed`.
fn cargo_tests(args: &[&str]) -> Result<(u64, u64)> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(&cargo)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cargo} {}", args.join(" ")))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().expect("piped stdout");
    let mut out = std::io::stdout();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        if let Some(result) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                result
                    .split(['.', ';'])
                    .map(str::trim)
                    .find_map(|part| part.strip_suffix(word))
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
        }
        writeln!(out, "{line}")?;
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        println!("all: {passed} passed, {} failed", failed.max(1));
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok((passed, failed))
}

fn run_as_root(binary: &Path, args: &[String]) -> Result<()> {
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

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
