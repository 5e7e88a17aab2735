//! `vdso-observer doctor`: one screen about this machine's time calls — the
//! clocksource and whether the vDSO can read it (measured), what each call costs
//! here through the vDSO and as a syscall, what the kernel offers the observer,
//! what the kernel log says, and what to do.

use std::{fmt::Write as _, path::Path};

use anyhow::Result;
use serde::Serialize;
use vdso_observer_common::TimeCall;

use crate::{
    calibrate,
    loader::{LoadOptions, Observer, VdsoCheck},
    system::{self, ClockEvent, ClockWatch, ClocksourceState, VdsoCapability, VsyscallMode},
    vdso_image::VdsoImage,
};

/// What `doctor` exits with, so scripts and Ansible can gate on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// 0: the vDSO answers time calls in user space here.
    Healthy,
    /// 2: the clocksource is not vDSO-capable: clock reads enter the kernel.
    ClocksourceFallback,
    /// 3: processes get no vDSO (vdso=0, or none mapped).
    NoVdso,
    /// 4: capability could not be decided (no measurement, no table entry, no timing).
    Unknown,
}

impl Verdict {
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Healthy => 0,
            Verdict::ClocksourceFallback => 2,
            Verdict::NoVdso => 3,
            Verdict::Unknown => 4,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Diagnosis {
    pub kernel: String,
    /// Whether this process has a vDSO (AT_SYSINFO_EHDR), as every process here would.
    pub vdso_present: bool,
    /// The answer, also the exit code.
    pub verdict: Verdict,
    pub clocksource: Option<ClocksourceState>,
    /// The observer's own vDSO clock_gettime(CLOCK_MONOTONIC) calls and how many
    /// entered the kernel (needs root).
    pub vdso_check: Option<VdsoCheck>,
    /// Measured when possible, else by the clocksource table, else by cost.
    pub vdso_capable: Option<bool>,
    /// How `vdso_capable` was decided: `measured`, `table` or `timing`.
    pub decided_by: &'static str,
    pub costs: Vec<CallCost>,
    pub vsyscall: VsyscallMode,
    pub boot_settings: Vec<String>,
    pub features: Vec<Feature>,
    pub kernel_log: Vec<ClockEvent>,
    pub kernel_log_error: Option<String>,
    pub advice: Vec<String>,
}

/// ns per call through the vDSO and through the syscall.
#[derive(Debug, Serialize)]
pub struct CallCost {
    pub call: &'static str,
    pub vdso_ns: Option<f64>,
    pub syscall_ns: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub available: bool,
    pub detail: String,
}

pub fn diagnose(options: LoadOptions) -> Diagnosis {
    let clocksource = system::clocksource();
    let watch = ClockWatch::new();
    let mut features = Vec::new();
    let btf = Path::new(&options.btf_path).exists();
    features.push(Feature {
        name: "BTF",
        available: btf,
        detail: options.btf_path.display().to_string(),
    });
    let observer = Observer::start(options);
    let vdso_check = observer.as_ref().ok().and_then(|o| o.vdso_check);
    match &observer {
        Ok(observer) => {
            for probe in &observer.probes {
                features.push(Feature {
                    name: probe.attach_point,
                    available: probe.attached,
                    detail: probe.note.clone().unwrap_or_else(|| "attached".into()),
                });
            }
        }
        Err(err) => features.push(Feature {
            name: "eBPF programs",
            available: false,
            detail: format!("{err:#}"),
        }),
    }
    // Costs are measured with nothing attached: a sys_enter program slows every syscall.
    drop(observer);
    let uprobes = Path::new("/sys/bus/event_source/devices/uprobe/type").exists();
    features.push(Feature {
        name: "uprobes",
        available: uprobes,
        detail: "exact counting at libc and Go entry points (--exact)".into(),
    });
    let breakpoints = Path::new("/sys/bus/event_source/devices/breakpoint/type").exists();
    features.push(Feature {
        name: "hardware breakpoints",
        available: breakpoints,
        detail: "exact counting of calls that bypass libc (--exact)".into(),
    });

    let image = VdsoImage::current().ok();
    // SAFETY: getauxval has no preconditions.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    let stopwatch = image.as_ref().map(|image| calibrate::measure(image, base));
    let costs: Vec<CallCost> = [
        TimeCall::ClockGettime,
        TimeCall::Gettimeofday,
        TimeCall::Time,
        TimeCall::ClockGetres,
        TimeCall::Getcpu,
    ]
    .into_iter()
    .map(|call| CallCost {
        call: call.name(),
        vdso_ns: stopwatch
            .as_ref()
            .and_then(|s| s.ns_per_call.get(call.name()).copied()),
        syscall_ns: calibrate::syscall_ns(call),
    })
    .collect();

    let timing_says = costs
        .first()
        .and_then(|c| Some(c.vdso_ns? < c.syscall_ns? / 2.0));
    let table_says = clocksource.as_ref().and_then(|c| match c.vdso_capability {
        VdsoCapability::Yes => Some(true),
        VdsoCapability::No => Some(false),
        _ => None,
    });
    let (vdso_capable, decided_by) = match (vdso_check, table_says, timing_says) {
        (Some(check), _, _) => (Some(check.vdso_capable()), "measured"),
        (None, Some(table), _) => (Some(table), "table"),
        (None, None, timing) => (timing, "timing"),
    };
    let kernel_log: Vec<ClockEvent> = watch.history.iter().cloned().collect();
    let mut diagnosis = Diagnosis {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        vdso_present: base != 0,
        verdict: Verdict::Unknown,
        clocksource,
        vdso_check,
        vdso_capable,
        decided_by,
        costs,
        vsyscall: system::vsyscall_mode(),
        boot_settings: system::boot_settings(),
        features,
        kernel_log,
        kernel_log_error: watch.kmsg_error.clone(),
        advice: Vec::new(),
    };
    diagnosis.verdict = verdict(&diagnosis);
    diagnosis.advice = advice(&diagnosis);
    diagnosis
}

/// No vDSO first (nothing else matters then), then the capability.
pub fn verdict(d: &Diagnosis) -> Verdict {
    if !d.vdso_present || d.boot_settings.iter().any(|s| s == "vdso=0") {
        return Verdict::NoVdso;
    }
    match d.vdso_capable {
        Some(true) => Verdict::Healthy,
        Some(false) => Verdict::ClocksourceFallback,
        None => Verdict::Unknown,
    }
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
    if d.vdso_capable == Some(false) {
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
        if d.kernel_log.iter().any(|e| e.kind == "tsc_unstable") {
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
    if d.kernel_log_error.is_some() {
        advice.push(
            "run as root (or with CAP_SYSLOG) to see the kernel log's clocksource lines".into(),
        );
    }
    if d.features
        .iter()
        .any(|f| f.name == "eBPF programs" && !f.available)
    {
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
            let _ = writeln!(out, "vDSO-capable     {verdict} ({})", d.decided_by);
            if let Some(check) = d.vdso_check {
                let _ = writeln!(
                    out,
                    "                 measured: {} of {} vDSO clock_gettime(CLOCK_MONOTONIC) calls entered the kernel",
                    check.kernel_entries, check.calls
                );
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
    let _ = writeln!(out, "vsyscall         {}", d.vsyscall.name());
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
        "{:<16} {:>12} {:>12} {:>8}",
        "call", "vDSO ns", "syscall ns", "ratio"
    );
    for cost in &d.costs {
        let ns = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        let ratio = match (cost.vdso_ns, cost.syscall_ns) {
            (Some(v), Some(s)) if v > 0.0 => format!("{:.1}x", s / v),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<16} {:>12} {:>12} {:>8}",
            cost.call,
            ns(cost.vdso_ns),
            ns(cost.syscall_ns),
            ratio
        );
    }
    let _ = writeln!(out, "(a ratio near 1x is the fingerprint of a fallback)");
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
    let _ = writeln!(out, "kernel log (clocksource)");
    if let Some(err) = &d.kernel_log_error {
        let _ = writeln!(out, "  {err}");
    }
    for event in d.kernel_log.iter().rev().take(8).rev() {
        let _ = writeln!(out, "  [{}] {}", event.kind, event.message);
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "advice");
    for line in &d.advice {
        let _ = writeln!(out, "  - {line}");
    }
    out
}

/// Prints the diagnosis; returns the exit code of its verdict.
pub fn run(options: LoadOptions, json: bool) -> Result<u8> {
    let diagnosis = diagnose(options);
    if json {
        println!("{}", serde_json::to_string(&diagnosis)?);
    } else {
        print!("{}", render(&diagnosis));
    }
    Ok(diagnosis.verdict.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagnosis(current: &str, capable: Option<bool>, events: Vec<ClockEvent>) -> Diagnosis {
        Diagnosis {
            kernel: "6.1".into(),
            vdso_present: true,
            verdict: Verdict::Unknown,
            clocksource: Some(ClocksourceState {
                current: current.into(),
                available: vec!["tsc".into(), "hpet".into(), "acpi_pm".into()],
                vdso_capability: system::clocksource_vdso_capability(current).0,
                why: "",
            }),
            vdso_check: None,
            vdso_capable: capable,
            decided_by: "measured",
            costs: vec![],
            vsyscall: VsyscallMode::Xonly,
            boot_settings: vec![],
            features: vec![],
            kernel_log: events,
            kernel_log_error: None,
            advice: vec![],
        }
    }

    #[test]
    fn hpet_gets_told_to_switch_to_tsc() {
        let unstable = ClockEvent {
            at_unix: 0.0,
            kind: "tsc_unstable",
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
    fn the_verdict_is_the_exit_code() {
        let mut d = diagnosis("tsc", Some(true), vec![]);
        assert_eq!(verdict(&d).exit_code(), 0);
        d.vdso_capable = Some(false);
        assert_eq!(verdict(&d), Verdict::ClocksourceFallback);
        assert_eq!(verdict(&d).exit_code(), 2);
        d.boot_settings = vec!["vdso=0".into()];
        assert_eq!(verdict(&d).exit_code(), 3);
        d.boot_settings.clear();
        d.vdso_present = false;
        assert_eq!(verdict(&d), Verdict::NoVdso);
        d.vdso_present = true;
        d.vdso_capable = None;
        assert_eq!(verdict(&d).exit_code(), 4);
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
