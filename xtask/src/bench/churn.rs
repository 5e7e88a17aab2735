//! Build servers, CI runners and fork-per-request services start thousands of
//! short processes a second: 5 000 a second for 60 s, 5 direct clock_gettime
//! calls each, under the daemon at its 5 s interval. Every call must be in
//! its metrics (the maps drain before they fill), with the daemon's CPU share
//! and memory beside.

use std::{
    fs,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use serde_json::{Value, json};

use vdso_observer_common::PROCESS_EXIT_PROGRAM;

use super::{Bench, cpu_ticks, status_kb};

const CALLS_EACH: u64 = 5;
const PER_SECOND: u64 = 5_000;
/// What issue 25 asks of the daemon at this rate.
const CPU_GOAL_PERCENT: f64 = 1.0;

pub(super) fn run(bench: &Bench) -> Result<Value> {
    let textfile = bench.dir.join("churn.prom");
    let _ = fs::remove_file(&textfile);
    let mut daemon = Command::new(&bench.observer)
        // --bpf-stats: what the exit program costs the exiting processes
        // (its time falls on them, not on the daemon).
        .args(["daemon", "--interval", "5s", "--bpf-stats", "--textfile"])
        .arg(&textfile)
        .stderr(Stdio::null())
        .spawn()
        .context("starting the daemon")?;
    let pid = daemon.id();
    let started = Instant::now();
    while !textfile.exists() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu0 = cpu_ticks(pid).unwrap_or(0);
    let t0 = Instant::now();
    let out = Command::new(&bench.workload)
        .args([
            "churnrate",
            &CALLS_EACH.to_string(),
            &PER_SECOND.to_string(),
        ])
        .output()
        .context("running the churn workload")?;
    let cpu1 = cpu_ticks(pid).unwrap_or(0);
    let elapsed = t0.elapsed().as_secs_f64();
    let processes: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| anyhow!("the churn workload printed no count"))?;
    let kb = status_kb(pid);
    // Two more collections: the last processes are in the metrics.
    std::thread::sleep(Duration::from_secs(11));
    let metrics = fs::read_to_string(&textfile).unwrap_or_default();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // The children's clock_gettime calls (the parent's getrandom left out).
    let counted = sum(
        &metrics,
        "vdso_observer_kernel_time_calls_total{",
        "comm=\"vt-bench\",call=\"clock_gettime\"",
    );
    let lost = sum(&metrics, "vdso_observer_lost_time_calls_total{", "");
    // How the exits reached the daemon: handed by the kernel, or drained.
    let handed = sum(
        &metrics,
        "vdso_observer_exit_handoffs_total{",
        "result=\"handed\"",
    );
    let ring_full = sum(
        &metrics,
        "vdso_observer_exit_handoffs_total{",
        "result=\"ring_full\"",
    );
    let program = format!("program=\"{PROCESS_EXIT_PROGRAM}\"");
    let exit_runs = sum(&metrics, "vdso_observer_bpf_runs_total{", &program);
    let exit_seconds = sum_f64(&metrics, "vdso_observer_bpf_run_seconds_total{", &program);
    let cpu_percent = (cpu1 - cpu0) as f64 / ticks / elapsed * 100.0;
    Ok(json!({
        "processes": processes,
        "seconds": elapsed,
        "processes_per_sec": processes as f64 / elapsed,
        "true_calls": processes * CALLS_EACH,
        "counted_calls": counted,
        "lost_calls": lost,
        "exits_handed": handed,
        "exits_ring_full": ring_full,
        "exit_program_runs": exit_runs,
        "exit_program_ns_per_run": exit_seconds * 1e9 / exit_runs.max(1) as f64,
        "cpu_percent_of_one_core": cpu_percent,
        "goals_met": cpu_percent <= CPU_GOAL_PERCENT && lost == 0 && counted == processes * CALLS_EACH,
        "rss_mb": kb("VmRSS:") / 1024.0,
        "peak_rss_mb": kb("VmHWM:") / 1024.0,
    }))
}

/// The sum of a metric family's samples whose labels contain `with`.
fn sum(metrics: &str, family: &str, with: &str) -> u64 {
    sum_f64(metrics, family, with) as u64
}

fn sum_f64(metrics: &str, family: &str, with: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(family) && line.contains(with))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

pub(super) fn render(churn: &Value) -> String {
    format!(
        "\nchurn: {} processes in {:.0} s ({:.0}/s), {} of {} calls counted, {} lost, {} exits handed by the kernel ({} found the exit ring full; the exit program {:.0} ns a run, {} runs); daemon {:.2}% of one core (goal <= {CPU_GOAL_PERCENT}% with every call counted: {}), RSS {:.1} MB (peak {:.1} MB)\n",
        churn["processes"],
        churn["seconds"].as_f64().unwrap_or(0.0),
        churn["processes_per_sec"].as_f64().unwrap_or(0.0),
        churn["counted_calls"],
        churn["true_calls"],
        churn["lost_calls"],
        churn["exits_handed"],
        churn["exits_ring_full"],
        churn["exit_program_ns_per_run"].as_f64().unwrap_or(0.0),
        churn["exit_program_runs"],
        churn["cpu_percent_of_one_core"].as_f64().unwrap_or(0.0),
        if churn["goals_met"] == true {
            "met"
        } else {
            "NOT MET"
        },
        churn["rss_mb"].as_f64().unwrap_or(0.0),
        churn["peak_rss_mb"].as_f64().unwrap_or(0.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_samples_of_one_family() {
        let metrics = "# TYPE vdso_observer_kernel_time_calls_total counter\n\
            vdso_observer_kernel_time_calls_total{comm=\"vt-bench\",call=\"clock_gettime\"} 10\n\
            vdso_observer_kernel_time_calls_total{comm=\"vt-bench\",call=\"time\"} 5\n\
            vdso_observer_kernel_time_calls_total{comm=\"other\",call=\"time\"} 7\n";
        assert_eq!(
            sum(
                metrics,
                "vdso_observer_kernel_time_calls_total{",
                "comm=\"vt-bench\""
            ),
            15
        );
        assert_eq!(
            sum(metrics, "vdso_observer_kernel_time_calls_total{", ""),
            22
        );
    }
}
