//! What `doctor` measures: the vDSO check through the loaded programs, the
//! cost of each call through the vDSO and as a syscall, the kernel's features
//! and its clock log. The verdict and advice come from the model and the ui.

use std::path::Path;

use crate::{
    host::vdso32,
    host::{clock_watch::ClockWatch, clocksource, procfs, vdso_image::VdsoImage},
    kernel::{LoadOptions, Observer, VdsoTables, sample_rate},
    measure::calibrate,
    model::{
        ClockEvent, VdsoCapability,
        diagnosis::{Decision, Diagnosis, Feature, Verdict, verdict},
    },
};

/// Looks at everything `doctor` says, measuring what can be measured.
pub fn diagnose(options: LoadOptions) -> Diagnosis {
    let clocksource = clocksource::clocksource();
    let watch = ClockWatch::new();
    let mut features = Vec::new();
    let btf = Path::new(&options.btf_path).exists();
    features.push(Feature {
        name: "BTF".into(),
        available: btf,
        detail: options.btf_path.display().to_string(),
    });
    let image = VdsoImage::current().ok();
    let image32 = vdso32::image();
    // Only x86 runs i386 tasks that this observer follows.
    if cfg!(target_arch = "x86_64") {
        features.push(Feature {
            name: "vdso32".into(),
            available: image32.is_ok(),
            detail: match &image32 {
                Ok(_) => "32-bit processes' vDSO calls are attributed and estimated".to_owned(),
                Err(err) => format!("{err:#} (no 32-bit process can run without IA32 emulation)"),
            },
        });
    }
    let tables = VdsoTables::of(image.as_ref(), image32.as_ref().ok());
    let namespace = crate::kernel::privileges::check_pid_namespace();
    features.push(Feature {
        name: "host PID namespace".into(),
        available: namespace.is_ok(),
        detail: match &namespace {
            Ok(()) => "pids the kernel reports are this /proc's".to_owned(),
            Err(err) => format!("{err:#}"),
        },
    });
    // What the daemon keeps after its capability drop, and why.
    let release = crate::host::procfs::uname().release;
    let unprivileged_bpf =
        std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled").unwrap_or_default();
    let keeps_bpf = crate::kernel::privileges::map_reads_need_cap_bpf(&release, &unprivileged_bpf);
    features.push(Feature {
        name: "map reads without capabilities".into(),
        available: !keeps_bpf,
        detail: if keeps_bpf {
            format!(
                "kernel {release} (before 5.19) checks CAP_BPF on every map read while \
                 kernel.unprivileged_bpf_disabled is {}: the daemon keeps CAP_BPF after its drop",
                unprivileged_bpf.trim()
            )
        } else {
            "the daemon drops every capability once attached: this kernel checks none on \
             reads of maps already open"
                .to_owned()
        },
    });
    let mut observer = Observer::start(
        options,
        &tables,
        &mut super::attach_choice::MeasuredJudge::default(),
    );
    let vdso_check = match (&mut observer, image.clone()) {
        (Ok(observer), Some(image)) => calibrate::calibrate(observer, image).1,
        _ => None,
    };
    // What the programs cost while the calibration ran (every syscall of the
    // machine passes sys_enter meanwhile).
    let (run_stats, programs) = match &observer {
        Ok(observer) => (Some(observer.run_stats().clone()), observer.program_runs()),
        Err(_) => (None, Vec::new()),
    };
    match &observer {
        Ok(observer) => {
            for probe in observer.probes() {
                features.push(Feature {
                    name: probe.attach_point.clone(),
                    available: probe.attached,
                    detail: probe.note.clone().unwrap_or_else(|| "attached".into()),
                });
            }
        }
        Err(err) => features.push(Feature {
            name: "eBPF programs".into(),
            available: false,
            detail: format!("{err:#}"),
        }),
    }
    // Costs are measured with nothing attached: a sys_enter program slows every syscall.
    drop(observer);
    features.push(Feature {
        name: "sampling rate".into(),
        available: true,
        detail: sample_rate::fastest_rate(
            procfs::perf_max_sample_rate(),
            sample_rate::bounding_guest(),
        ),
    });
    let uprobes = Path::new("/sys/bus/event_source/devices/uprobe/type").exists();
    features.push(Feature {
        name: "uprobes".into(),
        available: uprobes,
        detail: "exact counting at libc and Go entry points (--exact)".into(),
    });
    let breakpoints = Path::new("/sys/bus/event_source/devices/breakpoint/type").exists();
    features.push(Feature {
        name: "hardware breakpoints".into(),
        available: breakpoints,
        detail: "exact counting of calls that bypass libc (--exact)".into(),
    });

    let costs = crate::measure::path_costs::path_costs(image.as_ref()).calls;

    let timing_says = costs
        .first()
        .and_then(|c| Some(c.vdso_ns? < c.syscall_ns? / 2.0));
    let table_says = clocksource.as_ref().and_then(|c| match c.vdso_capability {
        VdsoCapability::Yes => Some(true),
        VdsoCapability::No => Some(false),
        _ => None,
    });
    let (vdso_capable, decided_by) = match (vdso_check, table_says, timing_says) {
        (Some(check), _, _) => (Some(check.vdso_capable()), Decision::Measured),
        (None, Some(table), _) => (Some(table), Decision::Table),
        (None, None, timing) => (timing, Decision::Timing),
    };
    let kernel_log: Vec<ClockEvent> = watch.history.iter().cloned().collect();
    let mut diagnosis = Diagnosis {
        kernel: procfs::uname().release,
        vdso_present: image.is_some(),
        verdict: Verdict::Unknown,
        clocksource,
        vdso_check,
        vdso_capable,
        decided_by,
        costs,
        vsyscall: clocksource::vsyscall_mode(),
        boot_settings: clocksource::boot_settings(),
        features,
        kernel_log,
        kernel_log_error: watch.kmsg_error.clone(),
        run_stats,
        programs,
        advice: Vec::new(),
    };
    diagnosis.verdict = verdict(&diagnosis);
    diagnosis
}
