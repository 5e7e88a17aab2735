//! Attaching: what counts time syscalls (`--attach`: fentry, kprobes or the
//! raw tracepoint; `auto` tries them in that order and lets its caller judge
//! kprobes against the raw tracepoint), and the optional probes, from one
//! table: each may fail, and then says what is not seen and why.

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    programs::{
        BtfTracePoint, FEntry, KProbe, PerfEvent, RawTracePoint,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        raw_trace_point::RawTracePointLinkId,
    },
    util::online_cpus,
};
use vdso_observer_common::{
    CGROUP_MKDIR_PROGRAM, EMPTY_SYS_ENTER_PROGRAM, PROCESS_EXEC_PROGRAM, PROCESS_EXIT_PROGRAM,
    SYS_ENTER_PROGRAM, SYS_ENTER_RAW_PROGRAM, SYSCALL_ENTRIES, SyscallAbi, SyscallEntry,
    VDSO_SAMPLE_PROGRAM, VSYSCALL_PROGRAM,
};

use super::object::{
    AttachTargets, SYS_ENTER_TRACEPOINT, attach_raw_tracepoint, explain_load_error, program,
    verifier_error,
};
use super::sample_rate;
use crate::model::{AttachMode, ProbeStatus, RunStats};

/// Set, the untyped sys_enter program is attached even where the typed one
/// would load: what a kernel that refuses tp_btf gets, for tests and for a
/// kernel whose typed tracepoint misbehaves.
pub const UNTYPED_SYS_ENTER_ENV: &str = "VDSO_OBSERVER_UNTYPED_SYS_ENTER";

/// What `auto` does where fentry is refused and kprobes attach: keep them, or
/// go to the raw tracepoint. The measurement lives in `measure::attach_choice`
/// (the kernel layer only attaches).
pub trait KprobeJudge {
    /// Called before the kprobes are attached (nothing of this observer is).
    fn before_kprobes(&mut self);
    /// With the kprobes attached: whether they stay, and the note that says why.
    fn judge(&mut self, trial: &mut KprobeTrial<'_>) -> Result<KprobeVerdict>;
}

pub enum KprobeVerdict {
    Keep(String),
    RawTracepointIsCheaper(String),
}

/// What a judge may do with the object while the kprobes are attached.
pub struct KprobeTrial<'a> {
    ebpf: &'a mut Ebpf,
    /// The empty sys_enter program's link while it is attached.
    floor: Option<RawTracePointLinkId>,
}

impl<'a> KprobeTrial<'a> {
    fn new(ebpf: &'a mut Ebpf) -> Self {
        KprobeTrial { ebpf, floor: None }
    }

    /// Runs and run time (ns) of the time-call kprobes so far, or of the
    /// empty sys_enter program with `floor`.
    pub fn runs(&self, floor: bool) -> (u64, u64) {
        let names: Vec<&str> = if floor {
            vec![EMPTY_SYS_ENTER_PROGRAM]
        } else {
            SYSCALL_ENTRIES.iter().map(|e| e.kprobe_program).collect()
        };
        names
            .iter()
            .filter_map(|name| self.ebpf.program(name)?.info().ok())
            .fold((0, 0), |(runs, ns), info| {
                (
                    runs + info.run_count(),
                    ns + info.run_time().as_nanos() as u64,
                )
            })
    }

    /// Attaches the empty sys_enter program (it counts nothing) for a
    /// measurement; loaded once, attached and detached as often as asked.
    pub fn attach_floor(&mut self) -> Result<()> {
        if self.floor.is_some() {
            return Ok(());
        }
        self.floor = Some(attach_raw_tracepoint(
            self.ebpf,
            EMPTY_SYS_ENTER_PROGRAM,
            SYS_ENTER_TRACEPOINT,
        )?);
        Ok(())
    }

    pub fn detach_floor(&mut self) -> Result<()> {
        let Some(link) = self.floor.take() else {
            return Ok(());
        };
        program::<RawTracePoint>(self.ebpf, EMPTY_SYS_ENTER_PROGRAM)?
            .detach(link)
            .context("detaching the measurement's empty sys_enter program")
    }
}

impl Drop for KprobeTrial<'_> {
    /// Nothing of the measurement stays in the kernel, whatever the judge did.
    fn drop(&mut self) {
        let unloaded = program::<RawTracePoint>(self.ebpf, EMPTY_SYS_ENTER_PROGRAM)
            .and_then(|p| Ok(p.unload()?));
        if let Err(err) = unloaded {
            log::debug!("unloading {EMPTY_SYS_ENTER_PROGRAM}: {err:#}");
        }
    }
}

/// Attaches what counts time syscalls, as `mode` says: the mode in use and its
/// status. `auto` takes fentry, else kprobes (when `judge` keeps them), else
/// the raw tracepoint, which works everywhere; a mode asked for by name fails
/// with why.
pub fn attach_time_calls(
    ebpf: &mut Ebpf,
    mode: AttachMode,
    targets: &AttachTargets,
    judge: &mut dyn KprobeJudge,
) -> Result<(AttachMode, ProbeStatus)> {
    let raw = |ebpf: &mut Ebpf, note: Option<String>| -> Result<(AttachMode, ProbeStatus)> {
        let (program, note) = attach_sys_enter(ebpf, targets, note).with_context(|| {
            "attaching raw tracepoint sys_enter, which counts every time call that enters \
             the kernel: without it there is nothing to observe"
        })?;
        Ok((
            AttachMode::RawTracepoint,
            ProbeStatus {
                program: program.into(),
                attach_point: "raw_tracepoint:sys_enter".into(),
                attached: true,
                note,
            },
        ))
    };
    match mode {
        AttachMode::RawTracepoint => raw(ebpf, None),
        AttachMode::Fentry | AttachMode::Kprobe => {
            let status = attach_entries(ebpf, mode, targets).with_context(|| {
                format!(
                    "attaching {} programs to the time syscalls' kernel functions \
                     (--attach raw-tracepoint works on every kernel)",
                    mode.name()
                )
            })?;
            Ok((mode, status))
        }
        AttachMode::Auto => {
            // The first line says why; an empty verifier log adds nothing.
            let why = |mode: AttachMode, err: anyhow::Error| {
                format!(
                    "{} refused: {}",
                    mode.name(),
                    format!("{err:#}").lines().next().unwrap_or_default()
                )
            };
            let mut refused = Vec::new();
            match attach_entries(ebpf, AttachMode::Fentry, targets) {
                Ok(status) => return Ok((AttachMode::Fentry, status)),
                Err(err) => refused.push(why(AttachMode::Fentry, err)),
            }
            judge.before_kprobes();
            match attach_entries(ebpf, AttachMode::Kprobe, targets) {
                Ok(mut status) => match judge_kprobes(judge, ebpf) {
                    Ok(KprobeVerdict::RawTracepointIsCheaper(note)) => {
                        for entry in SYSCALL_ENTRIES {
                            unload_entry(ebpf, AttachMode::Kprobe, entry);
                        }
                        refused.push(format!("kprobes attached but cost more here ({note})"));
                    }
                    Ok(KprobeVerdict::Keep(note)) => {
                        status.note = Some(format!(
                            "{}; {}; kept over the raw tracepoint ({note})",
                            status.note.unwrap_or_default(),
                            refused.join("; "),
                        ));
                        log::info!("time syscalls are counted at kprobes: {note}");
                        return Ok((AttachMode::Kprobe, status));
                    }
                    Err(err) => {
                        status.note = Some(format!(
                            "{}; {}; not measured against the raw tracepoint ({err:#})",
                            status.note.unwrap_or_default(),
                            refused.join("; ")
                        ));
                        return Ok((AttachMode::Kprobe, status));
                    }
                },
                Err(err) => refused.push(why(AttachMode::Kprobe, err)),
            }
            let note = format!(
                "every syscall on the machine takes the traced path while attached ({})",
                refused.join("; ")
            );
            log::info!("time syscalls are counted at sys_enter: {note}");
            raw(ebpf, Some(note))
        }
    }
}

/// The judge's verdict; its trial (and the empty program) is gone after.
fn judge_kprobes(judge: &mut dyn KprobeJudge, ebpf: &mut Ebpf) -> Result<KprobeVerdict> {
    judge.judge(&mut KprobeTrial::new(ebpf))
}

/// The sys_enter program, BTF-typed (tp_btf: the user registers load
/// directly) where the kernel takes it, else untyped (each register read a
/// helper call): which one is attached, and the note to show.
fn attach_sys_enter(
    ebpf: &mut Ebpf,
    targets: &AttachTargets,
    note: Option<String>,
) -> Result<(&'static str, Option<String>)> {
    let typed = (|| -> Result<()> {
        if std::env::var_os(UNTYPED_SYS_ENTER_ENV).is_some() {
            anyhow::bail!("{UNTYPED_SYS_ENTER_ENV} is set");
        }
        let prog: &mut BtfTracePoint = program(ebpf, SYS_ENTER_PROGRAM)?;
        prog.load(SYS_ENTER_TRACEPOINT, &targets.0)
            .map_err(verifier_error)?;
        prog.attach()?;
        Ok(())
    })();
    let refused = match typed {
        Ok(()) => return Ok((SYS_ENTER_PROGRAM, note)),
        Err(err) => format!("{err:#}")
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    };
    log::debug!("tp_btf sys_enter refused ({refused}); attaching the untyped raw tracepoint");
    if let Ok(prog) = program::<BtfTracePoint>(ebpf, SYS_ENTER_PROGRAM) {
        let _ = prog.unload();
    }
    attach_raw_tracepoint(ebpf, SYS_ENTER_RAW_PROGRAM, SYS_ENTER_TRACEPOINT)?;
    let untyped = format!("untyped (tp_btf refused: {refused}): each time call costs more");
    Ok((
        SYS_ENTER_RAW_PROGRAM,
        Some(match note {
            Some(note) => format!("{note}; {untyped}"),
            None => untyped,
        }),
    ))
}

/// One fentry or kprobe program on each time syscall's kernel function. Every
/// x86_64 function must attach (else nothing of this mode stays attached); an
/// ia32 one may be missing (a kernel without IA32 emulation has none).
fn attach_entries(
    ebpf: &mut Ebpf,
    mode: AttachMode,
    targets: &AttachTargets,
) -> Result<ProbeStatus> {
    let btf = (mode == AttachMode::Fentry).then_some(&targets.0);
    let mut attached = Vec::new();
    let mut missing = Vec::new();
    for entry in SYSCALL_ENTRIES {
        let result = match &btf {
            Some(btf) => attach_fentry(ebpf, entry, btf),
            None => attach_kprobe(ebpf, entry),
        };
        match result {
            Ok(()) => attached.push(entry),
            Err(err) if entry.abi == SyscallAbi::I386 => {
                log::debug!("{} {}: {err:#}", mode.name(), entry.function);
                // Loaded but not attached (a kprobe loads without kprobes): not kept.
                unload_entry(ebpf, mode, entry);
                missing.push(entry.function);
            }
            Err(err) => {
                for done in attached.iter().copied().chain([entry]) {
                    unload_entry(ebpf, mode, done);
                }
                return Err(err.context(format!("{} on {}", mode.name(), entry.function)));
            }
        }
    }
    let (program, attach_point) = match mode {
        AttachMode::Fentry => ("fentry_*", "fentry:time_syscalls"),
        _ => ("kprobe_*", "kprobe:time_syscalls"),
    };
    let mut note = format!(
        "{} kernel functions: {}",
        attached.len(),
        attached
            .iter()
            .map(|e| e.function)
            .collect::<Vec<_>>()
            .join(" ")
    );
    if !missing.is_empty() {
        note.push_str(&format!(
            "; not attached (32-bit calls through them go uncounted): {}",
            missing.join(" ")
        ));
    }
    Ok(ProbeStatus {
        program: program.into(),
        attach_point: attach_point.into(),
        attached: true,
        note: Some(note),
    })
}

fn attach_fentry(ebpf: &mut Ebpf, entry: &SyscallEntry, btf: &aya::Btf) -> Result<()> {
    let prog: &mut FEntry = program(ebpf, entry.fentry_program)?;
    // Root or not, a kernel without BPF trampolines (or that forbids them)
    // refuses the load with EPERM: no advice about privileges here.
    prog.load(entry.function, btf).map_err(verifier_error)?;
    prog.attach()?;
    Ok(())
}

fn attach_kprobe(ebpf: &mut Ebpf, entry: &SyscallEntry) -> Result<()> {
    let prog: &mut KProbe = program(ebpf, entry.kprobe_program)?;
    prog.load().map_err(verifier_error)?;
    prog.attach(entry.function, 0)?;
    Ok(())
}

/// Detaches and unloads an entry's program (a mode that failed half-way).
fn unload_entry(ebpf: &mut Ebpf, mode: AttachMode, entry: &SyscallEntry) {
    let result = match mode {
        AttachMode::Fentry => {
            program::<FEntry>(ebpf, entry.fentry_program).and_then(|p| Ok(p.unload()?))
        }
        _ => program::<KProbe>(ebpf, entry.kprobe_program).and_then(|p| Ok(p.unload()?)),
    };
    if let Err(err) = result {
        // Never loaded is fine: the goal is that nothing of it stays.
        log::debug!("unloading {} on {}: {err:#}", mode.name(), entry.function);
    }
}

/// A probe the observer works without, and what is missing when it fails.
struct OptionalProbe {
    program: &'static str,
    attach_point: &'static str,
    /// Its raw tracepoint (empty: the sampler, attached to perf events).
    tracepoint: &'static str,
    /// What the operator loses without it, and the likely reason.
    without: &'static str,
}

const LEGACY_VSYSCALL: OptionalProbe = OptionalProbe {
    program: VSYSCALL_PROGRAM,
    attach_point: "raw_tracepoint:emulate_vsyscall",
    tracepoint: "emulate_vsyscall",
    without: "legacy vsyscall calls are not counted (a kernel without \
              CONFIG_X86_VSYSCALL_EMULATION has no such tracepoint, and no legacy vsyscall page \
              for programs to call)",
};

/// The raw-tracepoint probes every observer tries after the time-call one.
const TRACEPOINT_PROBES: [OptionalProbe; 3] = [
    OptionalProbe {
        program: CGROUP_MKDIR_PROGRAM,
        attach_point: "raw_tracepoint:cgroup_mkdir",
        tracepoint: "cgroup_mkdir",
        without: "cgroups are found by walking the hierarchy only (a container that ends \
                  within a second of starting may show no container)",
    },
    OptionalProbe {
        program: PROCESS_EXIT_PROGRAM,
        attach_point: "raw_tracepoint:sched_process_exit",
        tracepoint: "sched_process_exit",
        without: "exits are looked up in /proc instead of marked by the kernel",
    },
    OptionalProbe {
        program: PROCESS_EXEC_PROGRAM,
        attach_point: "raw_tracepoint:sched_process_exec",
        tracepoint: "sched_process_exec",
        without: "execs are not marked by the kernel: an image that exec'd is kept until its \
                  pid ends, and an exec loop can fill the maps",
    },
];

const SAMPLER: OptionalProbe = OptionalProbe {
    program: VDSO_SAMPLE_PROGRAM,
    attach_point: "perf_event:cpu-clock",
    tracepoint: "",
    without: "vDSO calls are not estimated (perf events disabled? check \
              kernel.perf_event_paranoid and CAP_PERFMON)",
};

/// An optional probe's status, with what is lost when it failed.
fn status_of(probe: &OptionalProbe, attached: Result<()>) -> ProbeStatus {
    let note = attached.err().map(|err| {
        let note = format!("{}: {err:#}", probe.without);
        log::warn!("{note}");
        note
    });
    ProbeStatus {
        program: probe.program.into(),
        attach_point: probe.attach_point.into(),
        attached: note.is_none(),
        note,
    }
}

/// Attaches the optional raw-tracepoint probes: their statuses. Called before
/// anything counts, so that every process entry the counting makes has its
/// exit and exec marked (an image that ended between the two would otherwise
/// look alive for ever).
pub fn attach_tracepoint_probes(ebpf: &mut Ebpf) -> Vec<ProbeStatus> {
    // The legacy vsyscall page is x86's alone: elsewhere nothing to watch.
    let vsyscall = cfg!(target_arch = "x86_64").then_some(&LEGACY_VSYSCALL);
    vsyscall
        .into_iter()
        .chain(&TRACEPOINT_PROBES)
        .map(|probe| {
            let attached = attach_raw_tracepoint(ebpf, probe.program, probe.tracepoint).map(drop);
            status_of(probe, attached)
        })
        .collect()
}

/// Attaches the cpu-clock sampler at `hz`, or slower where the kernel or a
/// virtual machine bounds the rate (see `sample_rate`): its status, and the
/// sample period in ns when it attached.
pub fn attach_sampler_probe(ebpf: &mut Ebpf, hz: u64) -> (ProbeStatus, Option<u64>) {
    let (rate, bound) = sample_rate::sampling_rate(
        hz,
        crate::host::procfs::perf_max_sample_rate(),
        sample_rate::bounding_guest(),
    );
    let mut sample_period_ns = None;
    let attached = attach_sampler(ebpf, rate).map(|period| sample_period_ns = Some(period));
    let mut status = status_of(&SAMPLER, attached);
    if let (Some(bound), true) = (bound, status.attached) {
        let note = sample_rate::bound_note(hz, rate, &bound);
        log::warn!("{note}");
        status.note = Some(note);
    }
    (status, sample_period_ns)
}

/// A cpu-clock sampler on every online CPU; returns the sample period in ns.
fn attach_sampler(ebpf: &mut Ebpf, hz: u64) -> Result<u64> {
    let period_ns = 1_000_000_000 / hz.clamp(1, 100_000);
    let sampler: &mut PerfEvent = program(ebpf, VDSO_SAMPLE_PROGRAM)?;
    sampler
        .load()
        .map_err(|err| explain_load_error(verifier_error(err)))
        .with_context(|| format!("loading program {VDSO_SAMPLE_PROGRAM}"))?;
    let cpus = online_cpus().map_err(|(what, err)| anyhow!("{what}: {err}"))?;
    for cpu in cpus {
        sampler
            .attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Period(period_ns),
                false,
            )
            .map_err(|err| explain_perf_error(anyhow!(err)))
            .with_context(|| format!("cpu-clock sampler on CPU {cpu}"))?;
    }
    Ok(period_ns)
}

/// Debian's kernels add `kernel.perf_event_paranoid=3` (their default), under
/// which perf_event_open needs CAP_SYS_ADMIN, not CAP_PERFMON: the shipped
/// unit grants only the latter. Said with what to do.
fn explain_perf_error(err: anyhow::Error) -> anyhow::Error {
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .unwrap_or_default()
        .trim()
        .parse::<i32>()
        .unwrap_or(0);
    if paranoid >= 3 && format!("{err:#}").contains("Permission denied") {
        err.context(format!(
            "kernel.perf_event_paranoid is {paranoid} (Debian's default): perf events then need \
             CAP_SYS_ADMIN, not CAP_PERFMON; `sysctl kernel.perf_event_paranoid=2` lets \
             CAP_PERFMON do"
        ))
    } else {
        err
    }
}

/// Turns on the kernel's per-program run statistics (BPF_ENABLE_STATS) for as
/// long as the returned descriptor is open; already on when the sysctl says so.
pub fn enable_run_stats(wanted: bool) -> (RunStats, Option<std::os::fd::OwnedFd>) {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    if sysctl.trim() == "1" {
        return (RunStats::AlreadyOn, None);
    }
    if !wanted {
        return (RunStats::Off, None);
    }
    match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(fd) => (RunStats::Enabled, Some(fd)),
        Err(err) => (
            RunStats::Unavailable(format!(
                "BPF_ENABLE_STATS: {err} (needs CAP_SYS_ADMIN and Linux 5.8; or set \
                 kernel.bpf_stats_enabled=1)"
            )),
            None,
        ),
    }
}
