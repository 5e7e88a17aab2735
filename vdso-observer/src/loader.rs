//! Loading the eBPF object, handing it the kernel offsets, attaching its programs,
//! and reading its maps. Every failure names what failed and what to do.

use std::{collections::HashMap, path::PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap},
    programs::{
        PerfEvent, ProgramError, RawTracePoint, UProbe,
        perf_event::{
            BreakpointConfig, PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy,
            SoftwareEvent,
        },
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
    util::online_cpus,
};
use log::{info, warn};
use serde::Serialize;
use vdso_observer_common::{
    CallKey, DEFAULT_PROCESS_ENTRIES, DEFAULT_TIME_CALL_ENTRIES, DEFAULT_VDSO_CALL_ENTRIES,
    OBSERVER_STATS_MAP, ObserverStat, PROCESSES_MAP, PROGRAM_CONFIG_GLOBAL, ProcessInfo,
    ProcessKey, ProgramConfig, SYS_ENTER_PROGRAM, TIME_CALLS_MAP, UprobeCookie,
    VDSO_BREAKPOINT_PROGRAM, VDSO_CALLS_MAP, VDSO_FUNCTIONS_GLOBAL, VDSO_SAMPLE_PROGRAM,
    VDSO_UPROBE_PROGRAM, VSYSCALL_PROGRAM, VdsoFunctionTable, VdsoKey,
};

use crate::{btf_offsets, calibrate, calibrate::VdsoCosts, vdso_image::VdsoImage};

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
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            btf_path: PathBuf::from(btf_offsets::VMLINUX_BTF),
            time_call_entries: DEFAULT_TIME_CALL_ENTRIES,
            process_entries: DEFAULT_PROCESS_ENTRIES,
            vdso_call_entries: DEFAULT_VDSO_CALL_ENTRIES,
            sample_hz: DEFAULT_SAMPLE_HZ,
        }
    }
}

/// One attach point and whether it is live.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeStatus {
    pub program: &'static str,
    pub attach_point: &'static str,
    pub attached: bool,
    /// Why it is not attached and what is lost, when it is not.
    pub note: Option<String>,
}

/// Counters the programs keep about themselves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ObserverStats {
    /// Calls not counted because the counter map was full.
    pub time_calls_map_full: u64,
    /// Processes left unnamed because the name map was full.
    pub processes_map_full: u64,
    /// Calls not counted because a memory read failed.
    pub read_failed: u64,
    /// vDSO calls or samples lost because their map was full.
    pub vdso_calls_map_full: u64,
}

/// Everything read from the maps at one instant.
#[derive(Debug, Clone, Default)]
pub struct MapSnapshot {
    /// Cumulative count per key since the key was created.
    pub calls: HashMap<CallKey, u64>,
    pub names: HashMap<ProcessKey, ProcessInfo>,
    /// Cumulative vDSO samples or exact hits per key.
    pub vdso: HashMap<VdsoKey, u64>,
    pub stats: ObserverStats,
}

/// What turns vDSO samples into calls: the image, what each function costs
/// here, and how much time one sample stands for.
#[derive(Debug, Clone)]
pub struct VdsoModel {
    pub image: VdsoImage,
    pub costs: VdsoCosts,
    /// None when sampling is off.
    pub sample_period_ns: Option<u64>,
}

/// The loaded and attached programs. Dropping it detaches them.
pub struct Observer {
    ebpf: Ebpf,
    pub probes: Vec<ProbeStatus>,
    pub options: LoadOptions,
    /// None when this process has no vDSO to learn from.
    pub vdso: Option<VdsoModel>,
    /// Whether a process's vDSO clock_gettime(CLOCK_MONOTONIC) stays in user space here.
    pub vdso_check: Option<VdsoCheck>,
    exact_loaded: bool,
}

/// The calibration child's clock_gettime(CLOCK_MONOTONIC) calls through the
/// vDSO, and how many of them entered the kernel: the measured answer to "can
/// the vDSO read this clocksource".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VdsoCheck {
    pub calls: u64,
    pub kernel_entries: u64,
}

impl VdsoCheck {
    /// More than half the calls entering the kernel means the vDSO falls back.
    pub fn vdso_capable(&self) -> bool {
        self.kernel_entries <= self.calls / 2
    }
}

/// The oldest kernel the programs load on: every program reads the task through
/// `bpf_get_current_task_btf` (Linux 5.11).
pub const KERNEL_FLOOR: (u32, u32) = (5, 11);
/// Exact counting attaches uprobes with BPF cookies (Linux 5.15).
pub const EXACT_KERNEL_FLOOR: (u32, u32) = (5, 15);

/// The running kernel's release as uname(2) gives it (what a personality such
/// as `setarch --uname-2.6` changes, too).
pub fn kernel_release() -> String {
    let mut name = std::mem::MaybeUninit::<libc::utsname>::uninit();
    // SAFETY: uname fills a valid utsname.
    if unsafe { libc::uname(name.as_mut_ptr()) } != 0 {
        return String::new();
    }
    // SAFETY: uname succeeded; release is NUL-terminated.
    let name = unsafe { name.assume_init() };
    unsafe { std::ffi::CStr::from_ptr(name.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// `6.1.0-57-amd64` -> (6, 1).
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Refuses, in one line, a kernel older than `floor` for `what`.
pub fn check_kernel_floor(release: &str, floor: (u32, u32), what: &str) -> Result<()> {
    match parse_release(release) {
        Some(found) if found < floor => bail!(
            "kernel {release} is too old for {what}: Linux {}.{} or newer is needed",
            floor.0,
            floor.1
        ),
        Some(_) => Ok(()),
        None => {
            warn!("cannot read the kernel version from {release:?}; trying anyway");
            Ok(())
        }
    }
}

impl Observer {
    pub fn start(options: LoadOptions) -> Result<Observer> {
        check_kernel_floor(
            &kernel_release(),
            KERNEL_FLOOR,
            "vdso-observer (bpf_get_current_task_btf)",
        )?;
        check_privileges()?;
        raise_memlock_limit();
        let offsets = btf_offsets::kernel_offsets_from_file(&options.btf_path)?;
        log::debug!(
            "kernel offsets from {}: {offsets:?}",
            options.btf_path.display()
        );
        let config = ProgramConfig {
            offsets,
            observer_tgid: std::process::id(),
        };
        let image = match VdsoImage::current() {
            Ok(image) => Some(image),
            Err(err) => {
                warn!("vDSO calls will not be estimated: {err:#}");
                None
            }
        };
        let table = image
            .as_ref()
            .map_or(VdsoFunctionTable::EMPTY, VdsoImage::table);
        let mut ebpf = EbpfLoader::new()
            .override_global(PROGRAM_CONFIG_GLOBAL, &config, true)
            .override_global(VDSO_FUNCTIONS_GLOBAL, &table, true)
            .map_max_entries(TIME_CALLS_MAP, options.time_call_entries)
            .map_max_entries(PROCESSES_MAP, options.process_entries)
            .map_max_entries(VDSO_CALLS_MAP, options.vdso_call_entries)
            .load(EBPF_OBJECT)
            .map_err(|err| explain_load_error(anyhow!(err)))
            .context("loading the eBPF object (maps and programs)")?;

        let mut probes = Vec::new();
        attach(&mut ebpf, SYS_ENTER_PROGRAM, "sys_enter").with_context(|| {
            "attaching raw tracepoint sys_enter, which counts every time call that enters \
             the kernel: without it there is nothing to observe"
        })?;
        probes.push(ProbeStatus {
            program: SYS_ENTER_PROGRAM,
            attach_point: "raw_tracepoint:sys_enter",
            attached: true,
            note: None,
        });

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

        let vdso = image.map(|image| {
            // SAFETY: getauxval has no preconditions; the image came from this base.
            let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
            let costs = calibrate::measure(&image, base);
            log::debug!(
                "vDSO costs (ns in the vDSO per call): {:?}",
                costs.ns_per_call
            );
            let mut sample_period_ns = None;
            if options.sample_hz > 0 {
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
            VdsoModel {
                image,
                costs,
                sample_period_ns,
            }
        });
        info!(
            "attached {} of {} probes",
            probes.iter().filter(|p| p.attached).count(),
            probes.len()
        );
        let mut observer = Observer {
            ebpf,
            probes,
            options,
            vdso,
            vdso_check: None,
            exact_loaded: false,
        };
        observer.calibrate_in_place();
        Ok(observer)
    }

    /// Runs the calibration child (see `calibrate`): its kernel entries tell
    /// whether this machine's vDSO really answers clock_gettime(CLOCK_MONOTONIC)
    /// in user space, and, under the sampler, its samples replace the
    /// stopwatch costs with what the sampler sees.
    fn calibrate_in_place(&mut self) {
        if self.vdso.is_none() {
            return;
        }
        match self.run_calibration_child(false) {
            Ok((check, sampled)) => {
                if check.kernel_entries > check.calls / 2 {
                    warn!(
                        "this machine's vDSO does not answer clock_gettime(CLOCK_MONOTONIC): {} of {} \
                         calls entered the kernel (clocksource not vDSO-capable; see `vdso-observer doctor`)",
                        check.kernel_entries, check.calls
                    );
                }
                self.vdso_check = Some(check);
                let model = self.vdso.as_mut().expect("checked above");
                if !sampled.is_empty() {
                    model.costs = model.costs.calibrated(&sampled);
                    log::debug!(
                        "vDSO costs as sampled (ns per call): {:?}",
                        model.costs.ns_per_call
                    );
                } else if model.sample_period_ns.is_some() && check.vdso_capable() {
                    warn!(
                        "the sampler saw too few samples of the calibration loop; using stopwatch \
                         costs, which may misjudge vDSO call counts"
                    );
                }
            }
            Err(err) => warn!("calibrating against a child process failed: {err:#}"),
        }
    }

    /// Measures again whether the vDSO answers clock_gettime here (after a
    /// clocksource change), with a short run of the child.
    pub fn recheck_vdso(&mut self) -> Result<VdsoCheck> {
        let (check, _) = self.run_calibration_child(true)?;
        self.vdso_check = Some(check);
        Ok(check)
    }

    /// The child's own check, and sampled ns per call when sampling is on.
    fn run_calibration_child(
        &mut self,
        quick: bool,
    ) -> Result<(VdsoCheck, std::collections::BTreeMap<&'static str, f64>)> {
        /// Fewer samples than this say too little (±15%).
        const MIN_SAMPLES: u64 = 40;
        let exe = std::env::current_exe().context("finding the observer's own binary")?;
        let child = std::process::Command::new(&exe)
            .arg("vdso-loop")
            .args(quick.then_some("--quick"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("running {} vdso-loop", exe.display()))?;
        let pid = child.id();
        let out = child
            .wait_with_output()
            .context("waiting for the calibration child")?;
        if !out.status.success() {
            bail!(
                "the calibration child failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let calls = calibrate::parse_loop_output(&String::from_utf8_lossy(&out.stdout));
        let snapshot = self.snapshot()?;
        let check = VdsoCheck {
            calls: calls.get("clock_gettime").copied().unwrap_or(0),
            kernel_entries: snapshot
                .calls
                .iter()
                .filter(|(key, _)| {
                    key.process.tgid == pid
                        && key.call == vdso_observer_common::TimeCall::ClockGettime as u8
                        && key.clock_id == libc::CLOCK_MONOTONIC
                })
                .map(|(_, count)| count)
                .sum(),
        };
        let mine: Vec<(VdsoKey, u64)> = snapshot
            .vdso
            .into_iter()
            .filter(|(key, _)| key.process.tgid == pid)
            .collect();
        let mut sampled = std::collections::BTreeMap::new();
        if let Some(period_ns) = self.vdso.as_ref().and_then(|m| m.sample_period_ns)
            && !quick
        {
            for (name, calls) in calls {
                let samples: u64 = mine
                    .iter()
                    .filter(|(key, _)| {
                        vdso_observer_common::TimeCall::from_u8(key.call).map(|c| c.name())
                            == Some(name)
                    })
                    .map(|(_, count)| count)
                    .sum();
                if samples >= MIN_SAMPLES && calls > 0 {
                    sampled.insert(name, samples as f64 * period_ns as f64 / calls as f64);
                }
            }
        }
        // The child is not a process anyone asked about.
        let vdso_keys: Vec<VdsoKey> = mine.iter().map(|(key, _)| *key).collect();
        let keys: Vec<CallKey> = snapshot
            .calls
            .keys()
            .filter(|key| key.process.tgid == pid)
            .copied()
            .collect();
        let processes: Vec<ProcessKey> = snapshot
            .names
            .keys()
            .filter(|key| key.tgid == pid)
            .copied()
            .collect();
        self.forget(&processes, &keys, &vdso_keys)?;
        Ok((check, sampled))
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
        self.load_exact()?;
        let uprobe: &mut UProbe = program(&mut self.ebpf, VDSO_UPROBE_PROGRAM)?;
        let pid = std::num::NonZeroU32::new(pid).ok_or_else(|| anyhow!("pid 0"))?;
        uprobe
            .attach(
                UProbeAttachPoint {
                    location: UProbeAttachLocation::Symbol(symbol),
                    cookie: Some(cookie.encode()),
                },
                target,
                UProbeScope::OneProcess(pid),
            )
            .with_context(|| format!("uprobe on {symbol} in {} for pid {pid}", target.display()))
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

    /// Reads every counter, name and self-statistic.
    pub fn snapshot(&self) -> Result<MapSnapshot> {
        let calls: PerCpuHashMap<&MapData, CallKey, u64> = self.map(TIME_CALLS_MAP)?;
        let names: BpfHashMap<&MapData, ProcessKey, ProcessInfo> = self.map(PROCESSES_MAP)?;
        let stats: PerCpuArray<&MapData, u64> = self.map(OBSERVER_STATS_MAP)?;

        let mut snapshot = MapSnapshot::default();
        for entry in calls.iter() {
            // A key deleted between listing and lookup is simply gone.
            let Ok((key, per_cpu)) = entry else { continue };
            snapshot.calls.insert(key, per_cpu.iter().sum());
        }
        for entry in names.iter() {
            let Ok((key, info)) = entry else { continue };
            snapshot.names.insert(key, info);
        }
        let vdso: PerCpuHashMap<&MapData, VdsoKey, u64> = self.map(VDSO_CALLS_MAP)?;
        for entry in vdso.iter() {
            let Ok((key, per_cpu)) = entry else { continue };
            snapshot.vdso.insert(key, per_cpu.iter().sum());
        }
        let stat = |which: ObserverStat| -> Result<u64> {
            Ok(stats
                .get(&(which as u32), 0)
                .with_context(|| format!("reading {OBSERVER_STATS_MAP}[{which:?}]"))?
                .iter()
                .sum())
        };
        snapshot.stats = ObserverStats {
            time_calls_map_full: stat(ObserverStat::TimeCallsMapFull)?,
            processes_map_full: stat(ObserverStat::ProcessesMapFull)?,
            read_failed: stat(ObserverStat::ReadFailed)?,
            vdso_calls_map_full: stat(ObserverStat::VdsoCallsMapFull)?,
        };
        Ok(snapshot)
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
        {
            let mut calls: PerCpuHashMap<&mut MapData, CallKey, u64> =
                self.map_mut(TIME_CALLS_MAP)?;
            for key in keys {
                // Already gone is fine: the goal is that it is not there.
                let _ = calls.remove(key);
            }
        }
        {
            let mut vdso: PerCpuHashMap<&mut MapData, VdsoKey, u64> =
                self.map_mut(VDSO_CALLS_MAP)?;
            for key in vdso_keys {
                let _ = vdso.remove(key);
            }
        }
        let mut names: BpfHashMap<&mut MapData, ProcessKey, ProcessInfo> =
            self.map_mut(PROCESSES_MAP)?;
        for process in gone {
            let _ = names.remove(process);
        }
        Ok(())
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
    check_kernel_floor(&kernel_release(), KERNEL_FLOOR, "vdso-observer")?;
    check_privileges()?;
    raise_memlock_limit();
    let offsets = btf_offsets::kernel_offsets_from_file(&options.btf_path)?;
    let config = ProgramConfig {
        offsets,
        observer_tgid: std::process::id(),
    };
    let mut ebpf = EbpfLoader::new()
        .override_global(PROGRAM_CONFIG_GLOBAL, &config, true)
        .override_global(VDSO_FUNCTIONS_GLOBAL, &VdsoFunctionTable::EMPTY, true)
        .load(EBPF_OBJECT)
        .map_err(|err| explain_load_error(anyhow!(err)))
        .context("loading the eBPF object")?;
    attach(
        &mut ebpf,
        vdso_observer_common::EMPTY_SYS_ENTER_PROGRAM,
        "sys_enter",
    )?;
    Ok(ebpf)
}

/// Capability bits (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Fails early, with what to do, when the process cannot load tracing BPF.
fn check_privileges() -> Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let effective = effective_capabilities(&status)
        .ok_or_else(|| anyhow!("no CapEff line in /proc/self/status"))?;
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    bail!(
        "vdso-observer needs root or {} to load its eBPF programs: run it with sudo, or grant \
         them (setcap cap_bpf,cap_perfmon+ep, or AmbientCapabilities= in a systemd unit)",
        missing.join(" and ")
    )
}

/// The `CapEff:` mask of a /proc/PID/status text.
pub fn effective_capabilities(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_floors_are_checked_by_version() {
        assert_eq!(parse_release("6.1.0-57-amd64"), Some((6, 1)));
        assert_eq!(parse_release("5.15.0"), Some((5, 15)));
        assert_eq!(parse_release("2.6.58"), Some((2, 6)));
        assert!(check_kernel_floor("5.11.0", KERNEL_FLOOR, "x").is_ok());
        assert!(check_kernel_floor("6.18.44-fc", KERNEL_FLOOR, "x").is_ok());
        let err = check_kernel_floor("5.10.200-lts", KERNEL_FLOOR, "vdso-observer").unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel 5.10.200-lts is too old for vdso-observer: Linux 5.11 or newer is needed"
        );
        assert!(check_kernel_floor("5.14.21", EXACT_KERNEL_FLOOR, "exact counting").is_err());
        assert!(check_kernel_floor("weird", KERNEL_FLOOR, "x").is_ok());
    }

    #[test]
    fn capability_mask_is_parsed() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000000000\n";
        let caps = effective_capabilities(status).unwrap();
        assert_ne!(caps & (1 << CAP_BPF), 0);
        assert_ne!(caps & (1 << CAP_PERFMON), 0);
        assert_eq!(caps & (1 << CAP_SYS_ADMIN), 0);
        assert_eq!(effective_capabilities("Name:\tx\n"), None);
    }
}
