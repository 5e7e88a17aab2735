//! Loading the eBPF object, handing it the kernel offsets, attaching its programs,
//! and reading its maps. Every failure names what failed and what to do.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array as BpfArray, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap,
        PerCpuValues, Queue,
    },
    programs::{
        BtfTracePoint, FEntry, KProbe, PerfEvent, ProgramError, RawTracePoint, UProbe,
        perf_event::{
            BreakpointConfig, PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy,
            SoftwareEvent,
        },
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
    util::online_cpus,
};
use log::{info, warn};
use vdso_observer_common::{
    CGROUP_MKDIR_PROGRAM, CGROUP_PATHS_MAP, CallKey, CgroupPath, DEFAULT_PROCESS_ENTRIES,
    DEFAULT_TIME_CALL_ENTRIES, DEFAULT_VDSO_CALL_ENTRIES, EMPTY_SYS_ENTER_PROGRAM,
    EXACT_COVERAGE_MAP, ExactCoverage, FREE_TIME_CALL_SLOTS_MAP, OBSERVER_STATS_MAP, ObserverStat,
    PROCESSES_MAP, PROGRAM_CONFIG_GLOBAL, ProcessInfo, ProcessKey, ProgramConfig,
    SLOT_GENERATION_MAP, SYS_ENTER_PROGRAM, SYS_ENTER_RAW_PROGRAM, SYSCALL_ENTRIES, SyscallAbi,
    SyscallEntry, TIME_CALL_COUNTS_MAP, TIME_CALLS_MAP, UprobeCookie, VDSO_BREAKPOINT_PROGRAM,
    VDSO_CALLS_MAP, VDSO_FUNCTIONS_GLOBAL, VDSO_SAMPLE_PROGRAM, VDSO_UPROBE_PROGRAM,
    VDSO32_FUNCTIONS_GLOBAL, VSYSCALL_PROGRAM, VdsoFunctionTable, VdsoKey,
};

use super::{
    attach_choice::{LoopCosts, SyscallMix},
    btf_offsets,
    privileges::{
        KERNEL_FLOOR, check_kernel_floor, check_pid_namespace, check_privileges,
        raise_memlock_limit,
    },
};
use crate::{
    host::{procfs::uname, vdso_image::VdsoImage},
    model::{
        AttachMode, KeysCreated, MapSnapshot, ObserverStats, ProbeStatus, ProgramRuns, RunStats,
    },
};

/// Where the time functions lie in each vDSO image (empty: that image is
/// unknown, and its samples count as no time call).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VdsoTables {
    pub x86_64: VdsoFunctionTable,
    pub i386: VdsoFunctionTable,
}

impl VdsoTables {
    /// The tables of the images this boot maps (None: unknown).
    pub fn of(x86_64: Option<&VdsoImage>, i386: Option<&VdsoImage>) -> VdsoTables {
        VdsoTables {
            x86_64: x86_64.map_or(VdsoFunctionTable::EMPTY, VdsoImage::table),
            i386: i386.map_or(VdsoFunctionTable::EMPTY, VdsoImage::table),
        }
    }
}

/// The eBPF object built by build.rs (aya-build).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vdso-observer"));

/// Default sampling rate per CPU: about ±10% on a process spending 5% of a CPU
/// in the vDSO over 3 s, for well under 1% of a CPU.
pub const DEFAULT_SAMPLE_HZ: u64 = 499;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub btf_path: PathBuf,
    /// Capacity of the per-(process, call, clock, origin) counter map.
    pub time_call_entries: u32,
    /// Capacity of the process-name map.
    pub process_entries: u32,
    /// Capacity of the vDSO call map.
    pub vdso_call_entries: u32,
    /// cpu-clock samples a second on each CPU for the vDSO estimate; 0 turns it off.
    pub sample_hz: u64,
    /// Where time syscalls are counted.
    pub attach: AttachMode,
    /// Have the kernel measure each program's runs and run time (costs every
    /// run two clock reads).
    pub bpf_stats: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            btf_path: PathBuf::from(btf_offsets::VMLINUX_BTF),
            time_call_entries: DEFAULT_TIME_CALL_ENTRIES,
            process_entries: DEFAULT_PROCESS_ENTRIES,
            vdso_call_entries: DEFAULT_VDSO_CALL_ENTRIES,
            sample_hz: DEFAULT_SAMPLE_HZ,
            attach: AttachMode::Auto,
            bpf_stats: false,
        }
    }
}

/// The loaded and attached programs. Dropping it detaches them.
pub struct Observer {
    ebpf: Ebpf,
    /// The programs' rare events (aya-log), read at each window; None when the
    /// object has no log map.
    logs: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pub probes: Vec<ProbeStatus>,
    pub options: LoadOptions,
    /// Time one cpu-clock sample stands for; None when sampling is off or failed.
    pub sample_period_ns: Option<u64>,
    exact_loaded: bool,
    /// Keys and process entries this process deleted, per map: with what the
    /// programs created, how full the maps are.
    deleted: KeysCreated,
    /// Where time syscalls are counted (what `auto` chose).
    pub attach_mode: AttachMode,
    /// Whether the kernel measures the programs' run time.
    pub run_stats: RunStats,
    /// Held while the observer runs: the kernel measures runs while it is open.
    _run_stats_fd: Option<std::os::fd::OwnedFd>,
}

/// Attaches what counts time syscalls, as `options.attach` says: the mode in
/// use and its status. `auto` takes fentry, else kprobes, else the raw
/// tracepoint, which works everywhere; a mode asked for by name fails with why.
fn attach_time_calls(ebpf: &mut Ebpf, options: &LoadOptions) -> Result<(AttachMode, ProbeStatus)> {
    let raw = |ebpf: &mut Ebpf, note: Option<String>| -> Result<(AttachMode, ProbeStatus)> {
        let (program, note) = attach_sys_enter(ebpf, note).with_context(|| {
            "attaching raw tracepoint sys_enter, which counts every time call that enters \
             the kernel: without it there is nothing to observe"
        })?;
        Ok((
            AttachMode::RawTracepoint,
            ProbeStatus {
                program,
                attach_point: "raw_tracepoint:sys_enter",
                attached: true,
                note,
            },
        ))
    };
    match options.attach {
        AttachMode::RawTracepoint => raw(ebpf, None),
        mode @ (AttachMode::Fentry | AttachMode::Kprobe) => {
            let status = attach_entries(ebpf, mode, &options.btf_path).with_context(|| {
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
            match attach_entries(ebpf, AttachMode::Fentry, &options.btf_path) {
                Ok(status) => return Ok((AttachMode::Fentry, status)),
                Err(err) => refused.push(why(AttachMode::Fentry, err)),
            }
            // Nothing is attached yet: this process's own loops, bare.
            let bare = LoopCosts::measure();
            match attach_entries(ebpf, AttachMode::Kprobe, &options.btf_path) {
                Ok(mut status) => match measure_mix(ebpf, bare) {
                    Ok(mix) if mix.prefers_raw_tracepoint() => {
                        for entry in SYSCALL_ENTRIES {
                            unload_entry(ebpf, AttachMode::Kprobe, entry);
                        }
                        refused.push(format!(
                            "kprobes attached but cost more here ({})",
                            mix.note()
                        ));
                    }
                    Ok(mix) => {
                        status.note = Some(format!(
                            "{}; {}; kept over the raw tracepoint ({})",
                            status.note.unwrap_or_default(),
                            refused.join("; "),
                            mix.note()
                        ));
                        info!("time syscalls are counted at kprobes: {}", mix.note());
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
            info!("time syscalls are counted at sys_enter: {note}");
            raw(ebpf, Some(note))
        }
    }
}

/// Set, the untyped sys_enter program is attached even where the typed one
/// would load: what a kernel that refuses tp_btf gets, for tests and for a
/// kernel whose typed tracepoint misbehaves.
pub const UNTYPED_SYS_ENTER_ENV: &str = "VDSO_OBSERVER_UNTYPED_SYS_ENTER";

/// With the kprobes attached: what they add to a time call, what a
/// sys_enter program's traced path adds to every syscall (the empty program,
/// attached for the measurement only: it counts nothing), what the counting
/// program takes, and the machine's syscall and time-call rates over half a
/// second (the empty program's and the kprobes' run counts).
fn measure_mix(ebpf: &mut Ebpf, bare: LoopCosts) -> Result<SyscallMix> {
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("BPF_ENABLE_STATS (run counts)")?;
    let kprobes: Vec<&str> = SYSCALL_ENTRIES.iter().map(|e| e.kprobe_program).collect();
    let runs = |ebpf: &Ebpf, names: &[&str]| -> (u64, u64) {
        names
            .iter()
            .filter_map(|name| ebpf.program(name)?.info().ok())
            .fold((0, 0), |(runs, ns), info| {
                (
                    runs + info.run_count(),
                    ns + info.run_time().as_nanos() as u64,
                )
            })
    };
    let (runs0, ns0) = runs(ebpf, &kprobes);
    let under_kprobes = LoopCosts::measure();
    let (runs1, ns1) = runs(ebpf, &kprobes);
    let program_ns = if runs1 > runs0 {
        (ns1 - ns0) as f64 / (runs1 - runs0) as f64
    } else {
        0.0
    };
    attach(ebpf, EMPTY_SYS_ENTER_PROGRAM, "sys_enter")?;
    let measured = {
        let under_floor = LoopCosts::measure();
        let (time0, _) = runs(ebpf, &kprobes);
        let (all0, _) = runs(ebpf, &[EMPTY_SYS_ENTER_PROGRAM]);
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(500));
        let (time1, _) = runs(ebpf, &kprobes);
        let (all1, _) = runs(ebpf, &[EMPTY_SYS_ENTER_PROGRAM]);
        let seconds = started.elapsed().as_secs_f64();
        SyscallMix {
            kprobe_ns_per_time_call: (under_kprobes.direct_clock_gettime_ns
                - bare.direct_clock_gettime_ns)
                .max(0.0),
            floor_ns_per_syscall: (under_floor.getppid_ns - bare.getppid_ns).max(0.0),
            program_ns_per_time_call: program_ns,
            syscalls_per_sec: all1.saturating_sub(all0) as f64 / seconds,
            time_calls_per_sec: time1.saturating_sub(time0) as f64 / seconds,
        }
    };
    program::<RawTracePoint>(ebpf, EMPTY_SYS_ENTER_PROGRAM)?
        .unload()
        .context("detaching the measurement's empty sys_enter program")?;
    Ok(measured)
}

/// The sys_enter program, BTF-typed (tp_btf: the user registers load
/// directly) where the kernel takes it, else untyped (each register read a
/// helper call): which one is attached, and the note to show.
fn attach_sys_enter(
    ebpf: &mut Ebpf,
    note: Option<String>,
) -> Result<(&'static str, Option<String>)> {
    let typed = (|| -> Result<()> {
        if std::env::var_os(UNTYPED_SYS_ENTER_ENV).is_some() {
            anyhow::bail!("{UNTYPED_SYS_ENTER_ENV} is set");
        }
        let btf = aya::Btf::from_sys_fs().context("reading /sys/kernel/btf/vmlinux")?;
        let prog: &mut BtfTracePoint = program(ebpf, SYS_ENTER_PROGRAM)?;
        prog.load("sys_enter", &btf).map_err(verifier_error)?;
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
    attach(ebpf, SYS_ENTER_RAW_PROGRAM, "sys_enter")?;
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
fn attach_entries(ebpf: &mut Ebpf, mode: AttachMode, btf_path: &Path) -> Result<ProbeStatus> {
    let btf = match mode {
        AttachMode::Fentry => Some(
            aya::Btf::parse_file(btf_path, aya::Endianness::default())
                .with_context(|| format!("parsing BTF {}", btf_path.display()))?,
        ),
        _ => None,
    };
    let mut attached = Vec::new();
    let mut missing = Vec::new();
    for entry in SYSCALL_ENTRIES {
        let result = match mode {
            AttachMode::Fentry => attach_fentry(ebpf, entry, btf.as_ref().expect("parsed above")),
            _ => attach_kprobe(ebpf, entry),
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
        program,
        attach_point,
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

/// Turns on the kernel's per-program run statistics (BPF_ENABLE_STATS) for as
/// long as the returned descriptor is open; already on when the sysctl says so.
fn enable_run_stats(wanted: bool) -> (RunStats, Option<std::os::fd::OwnedFd>) {
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

impl Observer {
    /// Loads the object with the running kernel's offsets and the vDSO images'
    /// function tables (no 64-bit table: no sampler), and attaches what counts.
    pub fn start(options: LoadOptions, tables: &VdsoTables) -> Result<Observer> {
        let mut ebpf = load_object(&options, tables)?;
        let logs = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logs) => Some(logs),
            Err(err) => {
                warn!("the programs' own log is not read: {err}");
                None
            }
        };
        let (attach_mode, time_calls) = attach_time_calls(&mut ebpf, &options)?;
        let mut probes = vec![time_calls];

        // The legacy vsyscall page is x86's alone: elsewhere nothing to watch.
        if cfg!(target_arch = "x86_64") {
            let vsyscall = match attach(&mut ebpf, VSYSCALL_PROGRAM, "emulate_vsyscall") {
                Ok(()) => ProbeStatus {
                    program: VSYSCALL_PROGRAM,
                    attach_point: "raw_tracepoint:emulate_vsyscall",
                    attached: true,
                    note: None,
                },
                Err(err) => {
                    let note = format!(
                        "legacy vsyscall calls are not counted: {err:#} (a kernel without \
                     CONFIG_X86_VSYSCALL_EMULATION has no such tracepoint, and no legacy \
                     vsyscall page for programs to call)"
                    );
                    warn!("{note}");
                    ProbeStatus {
                        program: VSYSCALL_PROGRAM,
                        attach_point: "raw_tracepoint:emulate_vsyscall",
                        attached: false,
                        note: Some(note),
                    }
                }
            };
            probes.push(vsyscall);
        }

        let cgroups = match attach(&mut ebpf, CGROUP_MKDIR_PROGRAM, "cgroup_mkdir") {
            Ok(()) => ProbeStatus {
                program: CGROUP_MKDIR_PROGRAM,
                attach_point: "raw_tracepoint:cgroup_mkdir",
                attached: true,
                note: None,
            },
            Err(err) => {
                let note = format!(
                    "cgroups are found by walking the hierarchy only: {err:#} (a container \
                     that ends within a second of starting may show no container)"
                );
                warn!("{note}");
                ProbeStatus {
                    program: CGROUP_MKDIR_PROGRAM,
                    attach_point: "raw_tracepoint:cgroup_mkdir",
                    attached: false,
                    note: Some(note),
                }
            }
        };
        probes.push(cgroups);

        let mut sample_period_ns = None;
        if options.sample_hz > 0 && tables.x86_64 != VdsoFunctionTable::EMPTY {
            let status = match attach_sampler(&mut ebpf, options.sample_hz) {
                Ok(period) => {
                    sample_period_ns = Some(period);
                    ProbeStatus {
                        program: VDSO_SAMPLE_PROGRAM,
                        attach_point: "perf_event:cpu-clock",
                        attached: true,
                        note: None,
                    }
                }
                Err(err) => {
                    let note = format!(
                        "vDSO calls are not estimated: {err:#} (perf events disabled? \
                         check kernel.perf_event_paranoid and CAP_PERFMON)"
                    );
                    warn!("{note}");
                    ProbeStatus {
                        program: VDSO_SAMPLE_PROGRAM,
                        attach_point: "perf_event:cpu-clock",
                        attached: false,
                        note: Some(note),
                    }
                }
            };
            probes.push(status);
        }
        info!(
            "attached {} of {} probes",
            probes.iter().filter(|p| p.attached).count(),
            probes.len()
        );
        let (run_stats, run_stats_fd) = enable_run_stats(options.bpf_stats);
        if let RunStats::Unavailable(note) = &run_stats {
            info!("the programs' own run time is not measured: {note}");
        }
        Ok(Observer {
            attach_mode,
            run_stats,
            _run_stats_fd: run_stats_fd,
            ebpf,
            logs,
            probes,
            options,
            sample_period_ns,
            exact_loaded: false,
            deleted: KeysCreated::default(),
        })
    }

    /// Forwards what the programs logged since the last call to the log.
    pub fn flush_logs(&mut self) {
        if let Some(logs) = &mut self.logs {
            logs.flush();
        }
    }

    /// Loads the exact-counting programs (uprobe, breakpoint) once.
    fn load_exact(&mut self) -> Result<()> {
        if self.exact_loaded {
            return Ok(());
        }
        let uprobe: &mut UProbe = program(&mut self.ebpf, VDSO_UPROBE_PROGRAM)?;
        uprobe
            .load()
            .map_err(|err| explain_load_error(verifier_error(err)))
            .with_context(|| format!("loading program {VDSO_UPROBE_PROGRAM}"))?;
        let breakpoint: &mut PerfEvent = program(&mut self.ebpf, VDSO_BREAKPOINT_PROGRAM)?;
        breakpoint
            .load()
            .map_err(|err| explain_load_error(verifier_error(err)))
            .with_context(|| format!("loading program {VDSO_BREAKPOINT_PROGRAM}"))?;
        self.exact_loaded = true;
        Ok(())
    }

    /// A uprobe on `symbol` of `target` (a library or executable), for one process.
    pub fn attach_uprobe(
        &mut self,
        target: &std::path::Path,
        symbol: &str,
        pid: u32,
        cookie: UprobeCookie,
    ) -> Result<UProbeLinkId> {
        self.attach_uprobe_at(target, UProbeAttachLocation::Symbol(symbol), pid, cookie)
            .with_context(|| format!("uprobe on {symbol} in {} for pid {pid}", target.display()))
    }

    /// A uprobe at a file offset (a stripped binary has no symbol to name).
    pub fn attach_uprobe_at_offset(
        &mut self,
        target: &std::path::Path,
        offset: u64,
        pid: u32,
        cookie: UprobeCookie,
    ) -> Result<UProbeLinkId> {
        self.attach_uprobe_at(
            target,
            UProbeAttachLocation::AbsoluteOffset(offset),
            pid,
            cookie,
        )
        .with_context(|| {
            format!(
                "uprobe at offset {offset:#x} of {} for pid {pid}",
                target.display()
            )
        })
    }

    fn attach_uprobe_at(
        &mut self,
        target: &std::path::Path,
        location: UProbeAttachLocation,
        pid: u32,
        cookie: UprobeCookie,
    ) -> Result<UProbeLinkId> {
        self.load_exact()?;
        let uprobe: &mut UProbe = program(&mut self.ebpf, VDSO_UPROBE_PROGRAM)?;
        let pid = std::num::NonZeroU32::new(pid).ok_or_else(|| anyhow!("pid 0"))?;
        Ok(uprobe.attach(
            UProbeAttachPoint {
                location,
                cookie: Some(cookie.encode()),
            },
            target,
            UProbeScope::OneProcess(pid),
        )?)
    }

    pub fn detach_uprobe(&mut self, link: UProbeLinkId) -> Result<()> {
        let uprobe: &mut UProbe = program(&mut self.ebpf, VDSO_UPROBE_PROGRAM)?;
        uprobe.detach(link).context("detaching a uprobe")
    }

    /// A hardware execute breakpoint at `address` in thread `tid` only.
    pub fn attach_breakpoint(&mut self, tid: u32, address: u64) -> Result<PerfEventLinkId> {
        self.load_exact()?;
        let breakpoint: &mut PerfEvent = program(&mut self.ebpf, VDSO_BREAKPOINT_PROGRAM)?;
        breakpoint
            .attach(
                PerfEventConfig::Breakpoint(BreakpointConfig::Instruction { address }),
                PerfEventScope::OneProcess {
                    pid: tid,
                    cpu: None,
                },
                SamplePolicy::Period(1),
                false,
            )
            .with_context(|| format!("hardware breakpoint at {address:#x} in thread {tid}"))
    }

    pub fn detach_breakpoint(&mut self, link: PerfEventLinkId) -> Result<()> {
        let breakpoint: &mut PerfEvent = program(&mut self.ebpf, VDSO_BREAKPOINT_PROGRAM)?;
        breakpoint.detach(link).context("detaching a breakpoint")
    }

    /// Tells the sampler which calls exact counting covers in a thread (`key`
    /// a tid) or a whole process (`COVERAGE_PROCESS | tgid`), so they are not
    /// also sampled.
    pub fn set_coverage(&mut self, key: u32, coverage: ExactCoverage) -> Result<()> {
        let mut map: BpfHashMap<&mut MapData, u32, ExactCoverage> =
            self.map_mut(EXACT_COVERAGE_MAP)?;
        map.insert(key, coverage, 0)
            .with_context(|| format!("marking {key:#x} as counted exactly"))
    }

    pub fn clear_coverage(&mut self, key: u32) {
        if let Ok(mut map) =
            self.map_mut::<BpfHashMap<&mut MapData, u32, ExactCoverage>>(EXACT_COVERAGE_MAP)
        {
            let _ = map.remove(&key);
        }
    }

    /// Reads every counter, name and self-statistic.
    pub fn snapshot(&self) -> Result<MapSnapshot> {
        let names: BpfHashMap<&MapData, ProcessKey, ProcessInfo> = self.map(PROCESSES_MAP)?;
        let mut snapshot = MapSnapshot {
            calls: self.time_call_counts()?,
            ..MapSnapshot::default()
        };
        for entry in names.iter() {
            let Ok((key, info)) = entry else { continue };
            snapshot.names.insert(key, info);
        }
        let vdso: PerCpuHashMap<&MapData, VdsoKey, u64> = self.map(VDSO_CALLS_MAP)?;
        for entry in vdso.iter() {
            let Ok((key, per_cpu)) = entry else { continue };
            snapshot.vdso.insert(key, per_cpu.iter().sum());
        }
        let stat = |which| self.stat(which);
        snapshot.stats = ObserverStats {
            time_calls_map_full: stat(ObserverStat::TimeCallsMapFull)?,
            processes_map_full: stat(ObserverStat::ProcessesMapFull)?,
            read_failed: stat(ObserverStat::ReadFailed)?,
            vdso_calls_map_full: stat(ObserverStat::VdsoCallsMapFull)?,
            vdso_samples_unattributed: stat(ObserverStat::VdsoSampleUnattributed)?,
        };
        snapshot.keys_created = self.keys_created()?;
        snapshot.overflowed_keys = stat(ObserverStat::ProcessKeyCap)?;
        snapshot.programs = self.program_runs();
        Ok(snapshot)
    }

    /// Every time-call counter: each key's slot, then the slot's per-CPU counts.
    fn time_call_counts(&self) -> Result<HashMap<CallKey, u64>> {
        let slots: BpfHashMap<&MapData, CallKey, u32> = self.map(TIME_CALLS_MAP)?;
        let counts: PerCpuArray<&MapData, u64> = self.map(TIME_CALL_COUNTS_MAP)?;
        let mut calls = HashMap::new();
        for entry in slots.iter() {
            // A key deleted between listing and lookup is simply gone.
            let Ok((key, slot)) = entry else { continue };
            let per_cpu = counts
                .get(&slot, 0)
                .with_context(|| format!("reading {TIME_CALL_COUNTS_MAP}[{slot}]"))?;
            calls.insert(key, per_cpu.iter().sum());
        }
        Ok(calls)
    }

    /// Runs and run time of every attached program (and of the exact-counting
    /// ones once loaded), as the kernel measured them; empty when it does not.
    pub fn program_runs(&self) -> Vec<ProgramRuns> {
        if matches!(self.run_stats, RunStats::Unavailable(_) | RunStats::Off) {
            return Vec::new();
        }
        let mut names: Vec<&'static str> = self
            .probes
            .iter()
            .filter(|p| p.attached)
            .map(|p| p.program)
            .collect();
        // fentry and kprobe modes: one program per kernel function (those not
        // loaded have no info and are left out below).
        match self.attach_mode {
            AttachMode::Fentry => names.extend(SYSCALL_ENTRIES.iter().map(|e| e.fentry_program)),
            AttachMode::Kprobe => names.extend(SYSCALL_ENTRIES.iter().map(|e| e.kprobe_program)),
            _ => {}
        }
        if self.exact_loaded {
            names.extend([VDSO_BREAKPOINT_PROGRAM, VDSO_UPROBE_PROGRAM]);
        }
        names
            .into_iter()
            .filter_map(|name| {
                let info = self.ebpf.program(name)?.info().ok()?;
                Some(ProgramRuns {
                    program: name,
                    runs: info.run_count(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                })
            })
            .collect()
    }

    /// Keys created per counter map since load: one cheap read, polled
    /// between windows to drain the maps before they fill.
    pub fn keys_created(&self) -> Result<KeysCreated> {
        Ok(KeysCreated {
            time_calls: self.stat(ObserverStat::TimeKeysCreated)?,
            vdso_calls: self.stat(ObserverStat::VdsoKeysCreated)?,
            processes: self.stat(ObserverStat::ProcessesCreated)?,
        })
    }

    /// One self-statistic, summed over the CPUs.
    fn stat(&self, which: ObserverStat) -> Result<u64> {
        let stats: PerCpuArray<&MapData, u64> = self.map(OBSERVER_STATS_MAP)?;
        Ok(stats
            .get(&(which as u32), 0)
            .with_context(|| format!("reading {OBSERVER_STATS_MAP}[{which:?}]"))?
            .iter()
            .sum())
    }

    /// Every process the maps hold a key or a name of: keys only, no values
    /// (cheaper than a snapshot).
    pub fn process_keys(&self) -> Result<std::collections::BTreeSet<ProcessKey>> {
        let calls: BpfHashMap<&MapData, CallKey, u32> = self.map(TIME_CALLS_MAP)?;
        let vdso: PerCpuHashMap<&MapData, VdsoKey, u64> = self.map(VDSO_CALLS_MAP)?;
        let names: BpfHashMap<&MapData, ProcessKey, ProcessInfo> = self.map(PROCESSES_MAP)?;
        let mut processes: std::collections::BTreeSet<ProcessKey> = calls
            .keys()
            .filter_map(|key| Some(key.ok()?.process))
            .collect();
        processes.extend(vdso.keys().filter_map(|key| Some(key.ok()?.process)));
        processes.extend(names.keys().filter_map(Result::ok));
        Ok(processes)
    }

    /// The paths of the cgroups made since the last call (id, path), taken out
    /// of the kernel's map so it holds only what is new.
    pub fn take_recorded_cgroups(&mut self) -> Result<Vec<(u64, String)>> {
        let mut paths: BpfHashMap<&mut MapData, u64, CgroupPath> =
            self.map_mut(CGROUP_PATHS_MAP)?;
        let ids: Vec<u64> = paths.keys().filter_map(Result::ok).collect();
        let mut recorded = Vec::with_capacity(ids.len());
        for id in ids {
            if let Ok(path) = paths.get(&id, 0)
                && let Some(text) = path.text()
            {
                recorded.push((id, text.to_owned()));
            }
            let _ = paths.remove(&id);
        }
        Ok(recorded)
    }

    /// Only the vDSO counters (the governor looks often).
    pub fn vdso_counts(&self) -> Result<HashMap<VdsoKey, u64>> {
        let vdso: PerCpuHashMap<&MapData, VdsoKey, u64> = self.map(VDSO_CALLS_MAP)?;
        Ok(vdso
            .iter()
            .filter_map(|entry| entry.ok())
            .map(|(key, per_cpu)| (key, per_cpu.iter().sum()))
            .collect())
    }

    /// Deletes the counters and names of processes that are gone, so the maps do
    /// not fill up with the dead. Their last counts must have been read first.
    pub fn forget(
        &mut self,
        gone: &[ProcessKey],
        keys: &[CallKey],
        vdso_keys: &[VdsoKey],
    ) -> Result<()> {
        let mut deleted = KeysCreated {
            time_calls: self.free_time_call_slots(keys)?,
            ..KeysCreated::default()
        };
        {
            let mut vdso: PerCpuHashMap<&mut MapData, VdsoKey, u64> =
                self.map_mut(VDSO_CALLS_MAP)?;
            for key in vdso_keys {
                if vdso.remove(key).is_ok() {
                    deleted.vdso_calls += 1;
                }
            }
        }
        {
            let mut names: BpfHashMap<&mut MapData, ProcessKey, ProcessInfo> =
                self.map_mut(PROCESSES_MAP)?;
            for process in gone {
                if names.remove(process).is_ok() {
                    deleted.processes += 1;
                }
            }
        }
        self.deleted.time_calls += deleted.time_calls;
        self.deleted.vdso_calls += deleted.vdso_calls;
        self.deleted.processes += deleted.processes;
        Ok(())
    }

    /// Deletes time-call keys and gives their slots back, zeroed: after the
    /// generation moved on, so no CPU's recent key still points at one. The
    /// keys belong to processes that are gone: no call races the recycling.
    fn free_time_call_slots(&mut self, keys: &[CallKey]) -> Result<u64> {
        let mut freed = Vec::new();
        {
            let mut slots: BpfHashMap<&mut MapData, CallKey, u32> = self.map_mut(TIME_CALLS_MAP)?;
            for key in keys {
                // Already gone is fine: the goal is that it is not there.
                if let Ok(slot) = slots.get(key, 0)
                    && slots.remove(key).is_ok()
                {
                    freed.push(slot);
                }
            }
        }
        if freed.is_empty() {
            return Ok(0);
        }
        {
            let mut generation: BpfArray<&mut MapData, u32> = self.map_mut(SLOT_GENERATION_MAP)?;
            let next = generation.get(&0, 0).unwrap_or(0).wrapping_add(1);
            generation
                .set(0, next, 0)
                .with_context(|| format!("advancing {SLOT_GENERATION_MAP}"))?;
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, err)| err)?;
        {
            let mut counts: PerCpuArray<&mut MapData, u64> = self.map_mut(TIME_CALL_COUNTS_MAP)?;
            for &slot in &freed {
                counts
                    .set(slot, PerCpuValues::try_from(vec![0u64; cpus])?, 0)
                    .with_context(|| format!("zeroing {TIME_CALL_COUNTS_MAP}[{slot}]"))?;
            }
        }
        let mut free: Queue<&mut MapData, u32> = self.map_mut(FREE_TIME_CALL_SLOTS_MAP)?;
        for &slot in &freed {
            free.push(slot, 0)
                .with_context(|| format!("returning slot {slot} to {FREE_TIME_CALL_SLOTS_MAP}"))?;
        }
        Ok(freed.len() as u64)
    }

    /// How full the fullest of the three maps is (0.0 to 1.0), from one read
    /// of the programs' creation counters: cheap enough to ask often.
    pub fn fill(&self) -> Result<f64> {
        let created = self.keys_created()?;
        let share = |created: u64, deleted: u64, capacity: u32| {
            created.saturating_sub(deleted) as f64 / f64::from(capacity.max(1))
        };
        Ok(share(
            created.time_calls,
            self.deleted.time_calls,
            self.options.time_call_entries,
        )
        .max(share(
            created.vdso_calls,
            self.deleted.vdso_calls,
            self.options.vdso_call_entries,
        ))
        .max(share(
            created.processes,
            self.deleted.processes,
            self.options.process_entries,
        )))
    }

    fn map<'a, T>(&'a self, name: &str) -> Result<T>
    where
        T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
        T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
    }

    fn map_mut<'a, T>(&'a mut self, name: &str) -> Result<T>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
        T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
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
            .with_context(|| format!("cpu-clock sampler on CPU {cpu}"))?;
    }
    Ok(period_ns)
}

fn attach(ebpf: &mut Ebpf, program_name: &str, tracepoint: &str) -> Result<()> {
    let prog: &mut RawTracePoint = program(ebpf, program_name)?;
    let program = program_name;
    prog.load()
        .map_err(|err| explain_load_error(verifier_error(err)))
        .with_context(|| format!("loading program {program}"))?;
    prog.attach(tracepoint)
        .with_context(|| format!("attaching {program} to raw tracepoint {tracepoint}"))?;
    Ok(())
}

/// Keeps the verifier log, which is what a developer needs when a load fails.
fn verifier_error(err: ProgramError) -> anyhow::Error {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => anyhow!("BPF_PROG_LOAD failed: {io_error}\nverifier log:\n{verifier_log}"),
        other => anyhow!(other),
    }
}

fn explain_load_error(err: anyhow::Error) -> anyhow::Error {
    let text = format!("{err:#}");
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        err.context(
            "the kernel refused to load BPF: run as root, or with CAP_BPF and CAP_PERFMON; on \
             kernels before 5.11 also raise the locked-memory limit (ulimit -l unlimited, or \
             LimitMEMLOCK=infinity in a systemd unit)",
        )
    } else {
        err
    }
}

/// Attaches only the empty `sys_enter` program (the benchmark's floor) and
/// returns what keeps it attached.
pub fn attach_floor(options: &LoadOptions) -> Result<Ebpf> {
    let mut ebpf = load_object(options, &VdsoTables::default())?;
    attach(&mut ebpf, EMPTY_SYS_ENTER_PROGRAM, "sys_enter")?;
    Ok(ebpf)
}

/// Everything before attaching, shared by the observer and the bench floor: a
/// kernel new enough, the privileges, the running kernel's offsets handed to
/// the programs with the vDSO table and map sizes, and the load.
fn load_object(options: &LoadOptions, tables: &VdsoTables) -> Result<Ebpf> {
    check_kernel_floor(
        &uname().release,
        KERNEL_FLOOR,
        "vdso-observer (bpf_get_current_task_btf)",
    )?;
    check_privileges()?;
    check_pid_namespace()?;
    raise_memlock_limit();
    let offsets = btf_offsets::kernel_offsets_from_file(&options.btf_path)?;
    log::debug!(
        "kernel offsets from {}: {offsets:?}",
        options.btf_path.display()
    );
    let config = ProgramConfig {
        offsets,
        observer_tgid: std::process::id(),
        vdso_len: vdso_len_for_programs(),
        ..ProgramConfig::ZERO
    };
    // The programs log only what this process would print (off below debug).
    let log_level = log::max_level() as u8;
    EbpfLoader::new()
        .override_global(PROGRAM_CONFIG_GLOBAL, &config, true)
        .override_global(VDSO_FUNCTIONS_GLOBAL, &tables.x86_64, true)
        .override_global(VDSO32_FUNCTIONS_GLOBAL, &tables.i386, true)
        .override_global(aya_log::LEVEL, &log_level, false)
        .map_max_entries(TIME_CALLS_MAP, options.time_call_entries)
        .map_max_entries(TIME_CALL_COUNTS_MAP, options.time_call_entries)
        .map_max_entries(FREE_TIME_CALL_SLOTS_MAP, options.time_call_entries)
        .map_max_entries(PROCESSES_MAP, options.process_entries)
        .map_max_entries(VDSO_CALLS_MAP, options.vdso_call_entries)
        .load(EBPF_OBJECT)
        .map_err(|err| explain_load_error(anyhow!(err)))
        .context("loading the eBPF object (maps and programs)")
        .and_then(|mut ebpf| {
            fill_free_slots(&mut ebpf, options.time_call_entries)?;
            Ok(ebpf)
        })
}

/// arm64's mm does not point at its vDSO image: every 64-bit task maps the
/// one this process maps, so its length is handed over (0: x86 reads each
/// task's own, or no vDSO here, and the programs then see none anywhere).
fn vdso_len_for_programs() -> u32 {
    if cfg!(target_arch = "x86_64") {
        return 0;
    }
    match VdsoImage::current() {
        Ok(image) => image.len as u32,
        Err(err) => {
            warn!("{err:#}: every kernel entry is taken for a direct one");
            0
        }
    }
}

/// Hands the programs every time-call counter slot, before anything runs.
fn fill_free_slots(ebpf: &mut Ebpf, slots: u32) -> Result<()> {
    let map = ebpf
        .map_mut(FREE_TIME_CALL_SLOTS_MAP)
        .with_context(|| format!("map {FREE_TIME_CALL_SLOTS_MAP} is not in the object"))?;
    let mut free: Queue<&mut MapData, u32> = Queue::try_from(map)?;
    for slot in 0..slots {
        free.push(slot, 0)
            .with_context(|| format!("filling {FREE_TIME_CALL_SLOTS_MAP} (slot {slot})"))?;
    }
    Ok(())
}
