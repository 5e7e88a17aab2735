//! `vdso-observer doctor`: one screen about this machine's time calls — the
//! clocksource and whether the vDSO can read it (measured), what each call costs
//! here through the vDSO and as a syscall, what the kernel offers the observer,
//! what the kernel log says, and what to do.

use std::fmt::Write as _;

use anyhow::Result;

use crate::model::{ClockEventKind, RunStats, VsyscallMode, diagnosis::Diagnosis};

/// Prints the diagnosis with its advice; returns the exit code of its verdict.
pub fn print(diagnosis: &Diagnosis, json: bool) -> Result<u8> {
    let mut diagnosis = diagnosis.clone();
    diagnosis.advice = advice(&diagnosis);
    if json {
        println!("{}", serde_json::to_string(&diagnosis)?);
    } else {
        print!("{}", render(&diagnosis));
    }
    Ok(diagnosis.verdict.exit_code())
}

/// What a person can do about what was found.
pub fn advice(d: &Diagnosis) -> Vec<String> {
    let mut advice = Vec::new();
    let current = d
        .clocksource
        .as_ref()
        .map(|c| c.current.as_str())
        .unwrap_or("?");
    let available: Vec<&str> = d
        .clocksource
        .as_ref()
        .map(|c| c.available.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let erratum = d
        .kernel_log
        .iter()
        .find(|e| e.kind == ClockEventKind::TimerErratum);
    if d.vdso_capable == Some(false) && current == "arch_sys_counter" {
        // arm64 has no other clocksource to switch to: say why the counter is
        // out of reach, from the kernel's own words when it left them.
        advice.push(match erratum {
            Some(event) => format!(
                "every clock_gettime/gettimeofday enters the kernel: the arch timer needs an erratum \
                 workaround (kernel log: \"{}\"), so the kernel reads the counter itself \
                 (VDSO_CLOCKMODE_NONE). Only the CPU or firmware (or a kernel that does not apply the \
                 workaround) changes that; the EXCESS column shows what it costs each process",
                event.message
            ),
            None => "every clock_gettime/gettimeofday enters the kernel although the clocksource is \
                 arch_sys_counter: the kernel keeps the counter out of the vDSO (an erratum workaround \
                 whose log line has scrolled out of the ring buffer, or a trapped CNTVCT); \
                 `dmesg | grep -i arch_timer` may still say which"
                .into(),
        });
    } else if d.vdso_capable == Some(false) {
        let better = [
            "tsc",
            "kvm-clock",
            "hyperv_clocksource_tsc_page",
            "arch_sys_counter",
        ]
        .into_iter()
        .find(|c| available.contains(c));
        advice.push(match better {
            Some(better) => format!(
                "every clock_gettime/gettimeofday enters the kernel: the clocksource {current} has no vDSO mode. \
                 Try `echo {better} > /sys/devices/system/clocksource/clocksource0/current_clocksource` \
                 (and clocksource={better} on the kernel command line to keep it)"
            ),
            None => format!(
                "every clock_gettime/gettimeofday enters the kernel: the clocksource {current} has no vDSO mode, \
                 and no vDSO-capable clocksource is offered ({})",
                available.join(" ")
            ),
        });
        if d.kernel_log
            .iter()
            .any(|e| e.kind == ClockEventKind::TscUnstable)
        {
            advice.push(
                "the kernel marked the TSC unstable (see the kernel log lines above): on a VM check the \
                 hypervisor's invariant-TSC setting; on bare metal check BIOS power settings; \
                 tsc=reliable forces it (only if you know the TSC is good)"
                    .into(),
            );
        }
    }
    if d.boot_settings.iter().any(|s| s == "vdso=0") {
        advice.push("the kernel runs with vdso=0: no process has a vDSO; remove vdso=0 from the command line".into());
    }
    if d.vsyscall == VsyscallMode::Emulate {
        advice.push(
            "vsyscall=emulate keeps the legacy page readable; vsyscall=xonly (the default) is enough for old binaries"
                .into(),
        );
    }
    if let Some(error) = &d.kernel_log_error {
        advice.push(if error.contains("a container needs") {
            "give the container the host's /dev/kmsg (and CAP_SYSLOG) to see the kernel log's clocksource lines".into()
        } else {
            "run as root (or with CAP_SYSLOG) to see the kernel log's clocksource lines".into()
        });
    }
    let missing = |name: &str| d.features.iter().any(|f| f.name == name && !f.available);
    if missing("host PID namespace") {
        advice.push(
            "run in the host's PID namespace (Kubernetes: hostPID: true; docker/podman: --pid=host)"
                .into(),
        );
    } else if missing("eBPF programs") {
        advice.push("run as root (or with CAP_BPF and CAP_PERFMON) for the measured vDSO check and per-process counts".into());
    }
    if advice.is_empty() {
        advice.push(format!(
            "nothing to do: the vDSO answers time calls in user space on {current}; \
             `vdso-observer top` shows processes that bypass it anyway"
        ));
    }
    advice
}

pub fn render(d: &Diagnosis) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "vdso-observer doctor — kernel {}", d.kernel);
    let _ = writeln!(out);
    if !d.vdso_present {
        let _ = writeln!(
            out,
            "vDSO             NONE: this process has no vDSO (AT_SYSINFO_EHDR is 0); every time call enters the kernel"
        );
    }
    match &d.clocksource {
        Some(cs) => {
            let _ = writeln!(
                out,
                "clocksource      {} (available: {})",
                cs.current,
                cs.available.join(" ")
            );
            let verdict = match d.vdso_capable {
                Some(true) => "yes: time calls stay in user space",
                Some(false) => "NO: every high-resolution clock read enters the kernel",
                None => "unknown",
            };
            let _ = writeln!(out, "vDSO-capable     {verdict} ({})", d.decided_by.name());
            if let Some(check) = d.vdso_check {
                let _ = writeln!(out, "                 measured: {check}");
            }
            let _ = writeln!(out, "                 {}: {}", cs.current, cs.why);
        }
        None => {
            let _ = writeln!(
                out,
                "clocksource      unknown (no /sys/devices/system/clocksource)"
            );
        }
    }
    if cfg!(target_arch = "x86_64") {
        let _ = writeln!(out, "vsyscall         {}", d.vsyscall.name());
    } else {
        let _ = writeln!(out, "vsyscall         (x86 only: no legacy page here)");
    }
    let _ = writeln!(
        out,
        "boot settings    {}",
        if d.boot_settings.is_empty() {
            "(none that matter)".to_owned()
        } else {
            d.boot_settings.join(" ")
        }
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<16} {:>12} {:>12} {:>8} {:>14}",
        "call", "vDSO ns", "syscall ns", "ratio", "excess/entry"
    );
    // A call that is neither in the vDSO nor a syscall here (arm64's time) has no row.
    for cost in d
        .costs
        .iter()
        .filter(|c| c.vdso_ns.is_some() || c.syscall_ns.is_some())
    {
        let ns = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        let ratio = match (cost.vdso_ns, cost.syscall_ns) {
            (Some(v), Some(s)) if v > 0.0 => format!("{:.1}x", s / v),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<16} {:>12} {:>12} {:>8} {:>11} ns",
            cost.call.name(),
            ns(cost.vdso_ns),
            ns(cost.syscall_ns),
            ratio,
            ns(cost.excess_ns())
        );
    }
    let _ = writeln!(out, "(a ratio near 1x is the fingerprint of a fallback)");
    let _ = writeln!(
        out,
        "(excess/entry: CPU a kernel entry costs over a vDSO answer; the EXCESS column and\n vdso_observer_excess_cpu_seconds_total are priced with these same figures)"
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "kernel features");
    for feature in &d.features {
        let _ = writeln!(
            out,
            "  {} {:<32} {}",
            if feature.available { "yes" } else { "NO " },
            feature.name,
            feature.detail
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "observer's own cost (kernel-measured, while the doctor measured)"
    );
    match &d.run_stats {
        Some(RunStats::Unavailable(note)) => {
            let _ = writeln!(out, "  not measured: {note}");
        }
        Some(RunStats::Off) => {
            let _ = writeln!(out, "  not measured (kernel.bpf_stats_enabled is 0)");
        }
        None => {
            let _ = writeln!(out, "  not measured: the programs did not load");
        }
        Some(_) => {
            for program in &d.programs {
                let _ = writeln!(
                    out,
                    "  {:<28} {:>12} runs  {}",
                    program.program,
                    program.runs,
                    program
                        .ns_per_run()
                        .map_or("-".to_owned(), |ns| format!("{ns:.0} ns/run"))
                );
            }
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "kernel log (clocksource)");
    if let Some(err) = &d.kernel_log_error {
        let _ = writeln!(out, "  {err}");
    }
    for event in d.kernel_log.iter().rev().take(8).rev() {
        let _ = writeln!(out, "  [{}] {}", event.kind.name(), event.message);
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "advice");
    for line in &d.advice {
        let _ = writeln!(out, "  - {line}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        ClockEvent, ClocksourceState, clocksource_vdso_capability,
        diagnosis::{Decision, Verdict, verdict},
    };

    fn diagnosis(current: &str, capable: Option<bool>, events: Vec<ClockEvent>) -> Diagnosis {
        Diagnosis {
            kernel: "6.1".into(),
            vdso_present: true,
            verdict: Verdict::Unknown,
            clocksource: Some(ClocksourceState {
                current: current.into(),
                available: vec!["tsc".into(), "hpet".into(), "acpi_pm".into()],
                vdso_capability: clocksource_vdso_capability(current).0,
                why: "".into(),
            }),
            vdso_check: None,
            vdso_capable: capable,
            decided_by: Decision::Measured,
            costs: vec![],
            vsyscall: VsyscallMode::Xonly,
            boot_settings: vec![],
            features: vec![],
            kernel_log: events,
            kernel_log_error: None,
            run_stats: Some(RunStats::Enabled),
            programs: vec![],
            advice: vec![],
        }
    }

    #[test]
    fn hpet_gets_told_to_switch_to_tsc() {
        let unstable = ClockEvent {
            at_unix: 0.0,
            kind: ClockEventKind::TscUnstable,
            message: "tsc: Marking TSC unstable due to TSCs unsynchronized".into(),
        };
        let advice = advice(&diagnosis("hpet", Some(false), vec![unstable]));
        assert!(
            advice[0].contains(
                "echo tsc > /sys/devices/system/clocksource/clocksource0/current_clocksource"
            ),
            "{advice:?}"
        );
        assert!(advice[1].contains("marked the TSC unstable"), "{advice:?}");
    }

    #[test]
    fn an_arm64_timer_erratum_is_named_from_the_kernel_log() {
        let erratum = ClockEvent {
            at_unix: 0.0,
            kind: ClockEventKind::TimerErratum,
            message: "arch_timer: Enabling global workaround for ARM erratum 858921".into(),
        };
        let told = advice(&diagnosis("arch_sys_counter", Some(false), vec![erratum]));
        assert_eq!(told.len(), 1, "{told:?}");
        assert!(told[0].contains("ARM erratum 858921"), "{told:?}");
        assert!(!told[0].contains("echo "), "{told:?}");
        let told = advice(&diagnosis("arch_sys_counter", Some(false), vec![]));
        assert!(told[0].contains("dmesg | grep -i arch_timer"), "{told:?}");
        let told = advice(&diagnosis("arch_sys_counter", Some(true), vec![]));
        assert!(told[0].starts_with("nothing to do"), "{told:?}");
    }

    #[test]
    fn the_verdict_is_the_exit_code() {
        let mut d = diagnosis("tsc", Some(true), vec![]);
        assert_eq!(verdict(&d).exit_code(), 0);
        d.vdso_capable = Some(false);
        assert_eq!(verdict(&d), Verdict::ClocksourceFallback);
        assert_eq!(verdict(&d).exit_code(), 3);
        d.boot_settings = vec!["vdso=0".into()];
        assert_eq!(verdict(&d).exit_code(), 4);
        d.boot_settings.clear();
        d.vdso_present = false;
        assert_eq!(verdict(&d), Verdict::NoVdso);
        d.vdso_present = true;
        d.vdso_capable = None;
        assert_eq!(verdict(&d).exit_code(), 5);
    }

    #[test]
    fn a_healthy_machine_needs_nothing() {
        let advice = advice(&diagnosis("tsc", Some(true), vec![]));
        assert_eq!(advice.len(), 1);
        assert!(advice[0].starts_with("nothing to do"));
        let text = render(&diagnosis("tsc", Some(true), vec![]));
        assert!(text.contains("vDSO-capable     yes"), "{text}");
    }
}
