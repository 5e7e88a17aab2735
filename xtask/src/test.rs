//! `cargo xtask test`: set-up, lint, then every test binary of the workspace
//! and the guest-kernel scenarios, each run to the end whatever failed before
//! it, closing with the names of the failures and one `all: N passed, M failed`
//! line. `--repeat N [FILTER]` runs the selected tests N times and prints a pass
//! rate per test.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    dist,
    exec::{self, step},
    lint, setup, vm,
};

pub struct Options {
    /// Leave out the guest-kernel scenarios.
    pub no_vm: bool,
    /// Runs of every selected test.
    pub repeat: u32,
    /// libtest's --nocapture: passing tests' output stays in the logs.
    pub nocapture: bool,
    /// Only tests whose id (`BINARY::PATH::NAME`, `vm-test::SCENARIO`) contains this.
    pub filter: Option<String>,
}

/// One test executable cargo built.
struct TestBinary {
    /// `tui`, `kernel_counts`, or the crate name for unit tests: `NAME (unit)`
    /// for a binary's, `NAME (lib unit)` for a library's.
    name: String,
    executable: PathBuf,
    /// The package directory: cargo runs tests there.
    dir: PathBuf,
}

/// Runs and passes of each test id, in the order first seen.
#[derive(Default)]
struct Tally {
    order: Vec<String>,
    results: BTreeMap<String, (u32, u32)>,
}

impl Tally {
    fn record(&mut self, id: String, passed: bool) {
        let entry = self.results.entry(id.clone()).or_insert_with(|| {
            self.order.push(id);
            (0, 0)
        });
        entry.1 += 1;
        if passed {
            entry.0 += 1;
        }
    }

    fn passed(&self) -> u32 {
        self.results.values().map(|(p, _)| p).sum()
    }

    fn failed(&self) -> u32 {
        self.results.values().map(|(p, r)| r - p).sum()
    }
}

pub fn run(root: &Path, options: Options) -> Result<()> {
    if options.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    exec::disk_step();
    setup::run(true)?;
    if options.filter.is_none() && options.repeat == 1 {
        lint::run()?;
    }
    // The packaging and container tests check what `cargo xtask dist` ships
    // (the arm64 build is vm-test's guest binary too).
    let (artifacts, _) = dist::build_all()?;
    // SAFETY: xtask is single-threaded here; the test binaries inherit these.
    unsafe {
        std::env::set_var("VDSO_OBSERVER_DIST", root.join("target/dist"));
        std::env::set_var("VDSO_OBSERVER_IMAGE", &artifacts.image);
    }
    let binaries = build()?;
    let mut selected = Vec::new();
    for binary in binaries {
        let tests = list(&binary)?;
        let tests: Vec<String> = tests
            .into_iter()
            .filter(|test| selects(&options.filter, &format!("{}::{test}", binary.name)))
            .collect();
        if !tests.is_empty() {
            selected.push((binary, tests));
        }
    }
    let scenarios: Vec<&'static str> = if options.no_vm {
        Vec::new()
    } else {
        vm::SCENARIO_NAMES
            .iter()
            .copied()
            .filter(|name| selects(&options.filter, &format!("vm-test::{name}")))
            .collect()
    };
    let count: usize = selected.iter().map(|(_, tests)| tests.len()).sum();
    if count + scenarios.len() == 0 {
        bail!("no test matches {:?}", options.filter.unwrap_or_default());
    }
    if !setup::is_root() {
        step("not root: the test binaries run through `sudo -E` (they load eBPF programs)");
    }

    let mut tally = Tally::default();
    for round in 1..=options.repeat {
        if options.repeat > 1 {
            step(&format!("round {round} of {}", options.repeat));
        }
        for (binary, tests) in &selected {
            run_binary(binary, tests, &options, round, &mut tally)?;
        }
        if options.no_vm {
            if round == 1 {
                step("vm-test skipped (--no-vm)");
            }
        } else if !scenarios.is_empty() {
            step("vm-test: the observer in a guest kernel whose clocksource the vDSO cannot use");
            for (name, passed) in vm::run(root, &scenarios)? {
                tally.record(format!("vm-test::{name}"), passed);
            }
        }
    }

    if options.repeat > 1 {
        println!("pass rates over {} runs:", options.repeat);
        for id in &tally.order {
            let (passed, runs) = tally.results[id];
            println!(
                "  {:>5.1}%  {passed:>3}/{runs:<3} {id}",
                100.0 * f64::from(passed) / f64::from(runs)
            );
        }
    }
    let failing: Vec<&String> = tally
        .order
        .iter()
        .filter(|id| {
            let (passed, runs) = tally.results[*id];
            passed < runs
        })
        .collect();
    if !failing.is_empty() {
        println!("failing tests:");
        for id in &failing {
            let (passed, runs) = tally.results[*id];
            println!("  {id} (failed {} of {runs})", runs - passed);
        }
    }
    println!("all: {} passed, {} failed", tally.passed(), tally.failed());
    if !failing.is_empty() {
        bail!("{} tests failed", failing.len());
    }
    Ok(())
}

fn selects(filter: &Option<String>, id: &str) -> bool {
    filter.as_deref().is_none_or(|f| id.contains(f))
}

/// Builds every test target (quietly) and returns the executables.
fn build() -> Result<Vec<TestBinary>> {
    step("building the tests (unit and integration, eBPF programs included)");
    let log = exec::log_dir().join("build-tests.log");
    let out = exec::cargo()
        .args([
            "test",
            "--workspace",
            "--exclude",
            "vdso-observer-ebpf",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .stdin(Stdio::null())
        .stderr(fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?)
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        exec::print_tail(&log);
        bail!(
            "building the tests failed ({}); full output in {}",
            out.status,
            log.display()
        );
    }
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
            continue;
        }
        let Some(executable) = message["executable"].as_str() else {
            continue;
        };
        let target = &message["target"];
        let kind = target["kind"][0].as_str().unwrap_or("");
        let target_name = target["name"].as_str().unwrap_or("?");
        let name = match kind {
            "test" => target_name.to_owned(),
            "lib" => format!("{target_name} (lib unit)"),
            _ => format!("{target_name} (unit)"),
        };
        let manifest = PathBuf::from(message["manifest_path"].as_str().unwrap_or("."));
        binaries.push(TestBinary {
            name,
            executable: PathBuf::from(executable),
            dir: manifest
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        });
    }
    // Unit tests first: they are quick and say most about a broken build.
    binaries.sort_by_key(|b| !b.name.ends_with("unit)"));
    Ok(binaries)
}

/// The tests of a binary, as libtest lists them.
fn list(binary: &TestBinary) -> Result<Vec<String>> {
    let listing = exec::output(
        Command::new(&binary.executable)
            .args(["--list", "--format", "terse"])
            .current_dir(&binary.dir),
    )?;
    Ok(listing
        .lines()
        .filter_map(|line| line.strip_suffix(": test"))
        .map(str::to_owned)
        .collect())
}

/// Runs `tests` of one binary (all of them when not filtered) to the end,
/// records each result, and prints one line, or the failures.
fn run_binary(
    binary: &TestBinary,
    tests: &[String],
    options: &Options,
    round: u32,
    tally: &mut Tally,
) -> Result<()> {
    let slug: String = binary
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    // Repeated runs keep every round's log.
    let log = if options.repeat > 1 {
        exec::log_dir().join(format!("test-{slug}.round{round}.log"))
    } else {
        exec::log_dir().join(format!("test-{slug}.log"))
    };
    let file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut command = if setup::is_root() {
        Command::new(&binary.executable)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(&binary.executable);
        sudo
    };
    if options.nocapture {
        command.arg("--nocapture");
    }
    if options.filter.is_some() {
        command.arg("--exact").args(tests);
    }
    let started = Instant::now();
    let status = command
        .current_dir(&binary.dir)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("running {}", binary.executable.display()))?;
    let output = String::from_utf8_lossy(&fs::read(&log)?).into_owned();
    let outcome = parse_outcome(&output);
    let selected: BTreeSet<&String> = tests.iter().collect();
    let mut failed = 0;
    for test in &selected {
        let passed = if status.success() {
            !outcome.failed.contains(test.as_str())
        } else {
            outcome.passed.contains(test.as_str())
        };
        if !passed {
            failed += 1;
        }
        tally.record(format!("{}::{test}", binary.name), passed);
    }
    println!(
        "{}: {} passed, {failed} failed ({:.1} s)",
        binary.name,
        selected.len() - failed,
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        print_failures(&output, &log);
    }
    Ok(())
}

/// What libtest said of each test.
#[derive(Default)]
struct Outcome {
    passed: BTreeSet<String>,
    failed: BTreeSet<String>,
}

/// Reads `test NAME ... ok|FAILED` lines (a child process that shares the
/// output may have written into the same line, so they are searched, not
/// matched) and the closing `failures:` list.
fn parse_outcome(output: &str) -> Outcome {
    let mut outcome = Outcome::default();
    let mut in_failure_list = false;
    for line in output.lines() {
        if let Some(at) = line.find("test ") {
            let rest = &line[at + 5..];
            if let Some((name, result)) = rest.split_once(" ... ") {
                let name = name.trim();
                if result.starts_with("ok") {
                    outcome.passed.insert(name.to_owned());
                } else if result.starts_with("FAILED") {
                    outcome.failed.insert(name.to_owned());
                }
            }
        }
        // The second `failures:` section lists the names, indented.
        if line == "failures:" {
            in_failure_list = true;
            continue;
        }
        if in_failure_list {
            match line.strip_prefix("    ") {
                Some(name) if !name.contains(' ') => {
                    outcome.failed.insert(name.to_owned());
                }
                _ if line.is_empty() => {}
                _ => in_failure_list = false,
            }
        }
    }
    outcome.passed.retain(|name| !outcome.failed.contains(name));
    outcome
}

/// The failures section of a binary's output (panic messages, captured output).
fn print_failures(output: &str, log: &Path) {
    const MAX_LINES: usize = 200;
    let start = output.find("\nfailures:\n").map_or(0, |at| at + 1);
    let lines: Vec<&str> = output[start..].lines().collect();
    for line in lines.iter().take(MAX_LINES) {
        println!("    {line}");
    }
    if lines.len() > MAX_LINES {
        println!("    ... ({} more lines)", lines.len() - MAX_LINES);
    }
    println!("    (full output: {})", log.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_read_even_when_a_child_wrote_into_the_line() {
        let output = "running 3 tests\n\
            test a::one ... ok\n\
            child noise test b::two ... FAILED\n\
            test c::three ... ok\n\
            \n\
            failures:\n\
            \n\
            ---- b::two stdout ----\n\
            thread panicked at x\n\
            \n\
            failures:\n    b::two\n    d::four\n\n\
            test result: FAILED. 2 passed; 2 failed; 0 ignored\n";
        let outcome = parse_outcome(output);
        assert_eq!(
            outcome.passed.iter().collect::<Vec<_>>(),
            ["a::one", "c::three"]
        );
        assert_eq!(
            outcome.failed.iter().collect::<Vec<_>>(),
            ["b::two", "d::four"]
        );
    }

    #[test]
    fn pass_rates_add_up() {
        let mut tally = Tally::default();
        tally.record("x".into(), true);
        tally.record("y".into(), false);
        tally.record("x".into(), false);
        assert_eq!(tally.results["x"], (1, 2));
        assert_eq!((tally.passed(), tally.failed()), (1, 2));
        assert_eq!(tally.order, ["x", "y"]);
        assert!(selects(&None, "anything"));
        assert!(selects(&Some("tui::".into()), "tui::top_shows"));
        assert!(!selects(&Some("tui::".into()), "daemon::x"));
    }
}
