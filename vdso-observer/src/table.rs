//! Plain-text frames of `top` batch mode: a header line, then one row per process.

use std::{collections::BTreeMap, fmt::Write as _};

use crate::report::{ProcessReport, Report};

/// A rate in a few characters: 12.5, 1.2k, 3.4M.
pub fn rate(per_sec: f64) -> String {
    if per_sec >= 999_500.0 {
        format!("{:.1}M", per_sec / 1e6)
    } else if per_sec >= 999.5 {
        format!("{:.1}k", per_sec / 1e3)
    } else if per_sec == 0.0 {
        "0".to_owned()
    } else {
        format!("{per_sec:.1}")
    }
}

/// vDSO-answered calls/s: `~` marks an estimate from samples.
pub fn vdso_column(process: &ProcessReport) -> String {
    match process.vdso_calls_per_sec {
        Some(v) if process.vdso_estimated => format!("~{}", rate(v)),
        Some(v) => rate(v),
        None => "-".to_owned(),
    }
}

/// A share as a percentage, more digits when small.
pub fn percent(share: f64) -> String {
    if share >= 0.1 {
        format!("{:.0}%", share * 100.0)
    } else {
        format!("{:.2}%", share * 100.0)
    }
}

/// Kernel entries per second of each call, e.g. `clock_gettime 1.0k, time 2.0`.
pub fn calls_summary(process: &ProcessReport) -> String {
    let mut per_call: BTreeMap<&str, f64> = BTreeMap::new();
    for call in &process.calls {
        *per_call.entry(call.call).or_default() += call.per_sec;
    }
    let mut calls: Vec<(&str, f64)> = per_call.into_iter().collect();
    calls.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    calls
        .iter()
        .map(|(call, per_sec)| format!("{call} {}", rate(*per_sec)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The FLAG column: faults by their word, informational reasons in parentheses.
pub fn flag_column(process: &ProcessReport) -> String {
    let mut words: Vec<String> = process.flags.iter().map(|f| f.to_string()).collect();
    if process
        .exact
        .as_ref()
        .is_some_and(|e| e.state == "over_budget")
    {
        words.push("(exact-over-budget)".into());
    }
    words.extend(
        process
            .reasons
            .iter()
            .filter(|r| !r.is_fault())
            .map(|r| format!("({})", r.flag())),
    );
    if words.is_empty() {
        "-".to_owned()
    } else {
        words.join(",")
    }
}

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let lost = &report.observer.lost;
    let (total, vdso) = report.totals();
    let _ = writeln!(
        out,
        "vdso-observer: {:.2} s window, {} processes made time calls, {} kernel entries/s, {} vDSO calls/s",
        report.window_seconds,
        report.processes.len(),
        rate(total),
        vdso.map_or("-".to_owned(), |v| format!("~{}", rate(v)))
    );
    for probe in report.observer.probes.iter().filter(|p| !p.attached) {
        let _ = writeln!(
            out,
            "warning: {} not attached: {}",
            probe.attach_point,
            probe.note.as_deref().unwrap_or("")
        );
    }
    if lost.time_calls_map_full + lost.processes_map_full + lost.read_failed > 0 {
        let _ = writeln!(
            out,
            "warning: counts are incomplete: {} calls lost to a full counter map ({} of {} keys in use; raise --map-entries), {} processes unnamed, {} failed reads",
            lost.time_calls_map_full,
            report.observer.time_call_keys,
            report.observer.time_call_capacity,
            lost.processes_map_full,
            lost.read_failed
        );
    }
    let _ = writeln!(
        out,
        "{:>7} {:<8} {:<16} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}  {:<36} {:<28} FLAG",
        "PID",
        "USER",
        "COMM",
        "VDSO/s",
        "KERN/s",
        "FALLBK/s",
        "DIRECT/s",
        "VSYSC/s",
        "NOVDSO/s",
        "KERN%",
        "CALLS/s",
        "CLOCKS"
    );
    for process in &report.processes {
        let per_sec = |count: u64| rate(count as f64 / report.window_seconds.max(1e-9));
        let comm = if process.exited {
            format!("{}*", process.comm)
        } else {
            process.comm.clone()
        };
        let _ = writeln!(
            out,
            "{:>7} {:<8} {:<16} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}  {:<36} {:<28} {}",
            process.pid,
            process.user.as_deref().unwrap_or("?"),
            comm,
            vdso_column(process),
            rate(process.kernel_entries_per_sec),
            per_sec(process.by_origin.vdso_fallback),
            per_sec(process.by_origin.direct),
            per_sec(process.by_origin.legacy_vsyscall),
            per_sec(process.by_origin.no_vdso),
            process.kernel_share.map_or("-".to_owned(), percent),
            calls_summary(process),
            if process.clocks.is_empty() {
                "-".to_owned()
            } else {
                process.clocks.join(",")
            },
            flag_column(process)
        );
    }
    if report.processes.is_empty() {
        let _ = writeln!(
            out,
            "(no process made a time call in this window: nothing entered the kernel, and the sampler saw no vDSO calls)"
        );
    }
    if report.processes.iter().any(|p| p.exited) {
        let _ = writeln!(out, "* exited during the window");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vdso_observer_common::{NO_CLOCK, Origin, TimeCall};

    use super::*;
    use crate::report::{Aggregator, testing};

    #[test]
    fn rates_are_short() {
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(0.5), "0.5");
        assert_eq!(rate(999.0), "999.0");
        assert_eq!(rate(1000.0), "1.0k");
        assert_eq!(rate(2_500_000.0), "2.5M");
    }

    #[test]
    fn a_frame_has_a_row_per_process_with_flags() {
        let comm = b"bad\nme";
        let report = testing::window(
            &mut Aggregator::new(None),
            &[
                (4321, comm, TimeCall::ClockGettime, 1, Origin::Direct, 2000),
                (
                    4321,
                    comm,
                    TimeCall::ClockGettime,
                    2,
                    Origin::VdsoFallback,
                    10,
                ),
                (
                    4321,
                    comm,
                    TimeCall::Gettimeofday,
                    NO_CLOCK,
                    Origin::LegacyVsyscall,
                    4,
                ),
            ],
            Duration::from_secs(2),
            false,
        );
        let text = render(&report);
        let row = text.lines().find(|l| l.contains("4321")).expect(&text);
        assert!(row.contains("bad\\x0ame*"), "{row}");
        assert!(row.contains("1.0k"), "{row}");
        assert!(
            row.contains("clock_gettime 1.0k, gettimeofday 2.0"),
            "{row}"
        );
        assert!(
            row.contains("CLOCK_MONOTONIC,CLOCK_PROCESS_CPUTIME_ID"),
            "{row}"
        );
        assert!(row.ends_with("direct,vsyscall,(cpu-clock)"), "{row}");
        assert!(text.contains("* exited during the window"));
        assert_eq!(text.lines().count(), 4, "{text}");
    }
}
