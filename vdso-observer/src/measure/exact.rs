//! Exact counts of vDSO calls, on request, under an overhead budget.
//!
//! `[vdso]` has no file, so no uprobe can sit in it. Exact counts come from
//! uprobes on the callers' entry points (glibc and musl `clock_gettime` and
//! `clock_getres`, Go's `runtime.nanotime1`/`runtime.walltime`, a static
//! binary's own `clock_gettime`) and, for what those cannot see (glibc's
//! `gettimeofday` and `time` are IFUNCs that jump straight into the vDSO; code
//! without symbols), hardware execute breakpoints on the vDSO functions, per
//! thread, inherited by new threads, re-armed after exec.
//!
//! Every hit traps into the kernel (microseconds, against nanoseconds for the
//! call), so each process is admitted only when its sampled vDSO call rate
//! predicts an overhead within budget, and a governor detaches it as soon as the
//! measured hit rate says otherwise; it then falls back to the estimate.
//!
//! What is counted exactly, and where, is told to the sampler (the coverage
//! map): samples of those calls in those threads are not taken, so a window
//! that was exact for part of its time and sampled for the rest adds both up,
//! and a thread not armed yet is sampled meanwhile.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use aya::programs::{perf_event::PerfEventLinkId, uprobe::UProbeLinkId};
use log::{info, warn};
use serde::Serialize;
use vdso_observer_common::{
    COVERAGE_PROCESS, ExactCoverage, Provenance, SyscallAbi, TimeCall, UprobeCookie, VdsoKey,
};

use crate::{
    host::{
        procfs,
        vdso_image::{self, VdsoImage},
    },
    kernel::{
        Observer,
        privileges::{EXACT_KERNEL_FLOOR, check_kernel_floor},
    },
    model::{EntryPoint, ExactState, ExactStatus},
};

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct ExactOptions {
    /// Every process (`--exact`).
    pub all: bool,
    /// These processes (`--exact-pid`).
    pub pids: Vec<u32>,
    /// Largest share of a process's CPU time the probes may cost; None: no governor.
    pub budget: Option<f64>,
}

impl ExactOptions {
    pub fn enabled(&self) -> bool {
        self.all || !self.pids.is_empty()
    }
}

/// Overheads below this share of one CPU are always allowed: a process that
/// barely runs would otherwise be over any budget with its first call.
const OVERHEAD_FLOOR: f64 = 0.001;

/// Measured cost of one probe hit here.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct HitCosts {
    pub uprobe_ns: f64,
    pub breakpoint_ns: f64,
}

struct Traced {
    start_ticks: u64,
    vdso_base: u64,
    uprobes: Vec<UProbeLinkId>,
    /// Calls the uprobes count (bits of `1 << TimeCall`), in every thread.
    uprobe_calls: u32,
    /// vDSO addresses that get a breakpoint in each thread, and their calls.
    breakpoint_addresses: Vec<u64>,
    breakpoint_calls: u32,
    /// Armed threads and their breakpoints: pruned when a thread ends, so its
    /// descriptors are freed and a recycled thread id is armed again.
    threads: HashMap<u32, Vec<PerfEventLinkId>>,
    /// Most threads left unarmed at once for want of file descriptors
    /// (sampled instead).
    unarmed: usize,
    state: ExactState,
    /// Hits and CPU time at the last governor look; None until the first look
    /// after attaching (hits an earlier image made are not this attachment's).
    last_hits: Option<(u64, u64)>,
    last_cpu_ns: u64,
    last_look: Instant,
}

/// The vDSO images exact counting places breakpoints in.
#[derive(Debug, Clone)]
pub struct Images {
    pub x86_64: VdsoImage,
    /// None without IA32 emulation.
    pub i386: Option<VdsoImage>,
}

pub struct ExactTracer {
    options: ExactOptions,
    /// The latest sampled vDSO calls/s per pid, for admitting new processes.
    estimates: HashMap<u32, f64>,
    last_refresh: Instant,
    images: Images,
    pub costs: HitCosts,
    /// Breakpoint descriptors open, and how many may be (the open-file limit
    /// less a reserve for everything else).
    open_breakpoints: usize,
    breakpoint_budget: usize,
    traced: BTreeMap<u32, Traced>,
    /// Processes left alone (over budget, failed), by pid and start.
    refused: BTreeMap<u32, (u64, ExactState)>,
    /// Processes that exited or exec'd since the last report: their state still
    /// describes the counts of that window.
    finished: BTreeMap<u32, ExactState>,
}

impl ExactTracer {
    pub fn start(
        options: ExactOptions,
        observer: &mut Observer,
        images: Images,
    ) -> Result<ExactTracer> {
        /// Descriptors kept for everything but breakpoints (maps, /proc reads,
        /// sockets of the daemon).
        const RESERVED_FILES: u64 = 512;
        check_kernel_floor(
            &procfs::uname().release,
            EXACT_KERNEL_FLOOR,
            "exact counting (uprobes with BPF cookies)",
        )?;
        let costs = measure_hit_costs(observer, &images.x86_64)?;
        let open_files = procfs::raise_open_file_limit();
        let breakpoint_budget = open_files.saturating_sub(RESERVED_FILES) as usize;
        info!(
            "exact counting: up to {breakpoint_budget} breakpoints (open-file limit {open_files})"
        );
        info!(
            "exact counting: a uprobe hit costs {:.1} µs, a breakpoint hit {:.1} µs here",
            costs.uprobe_ns / 1e3,
            costs.breakpoint_ns / 1e3
        );
        Ok(ExactTracer {
            options,
            estimates: HashMap::new(),
            last_refresh: Instant::now(),
            images,
            costs,
            open_breakpoints: 0,
            breakpoint_budget,
            traced: BTreeMap::new(),
            refused: BTreeMap::new(),
            finished: BTreeMap::new(),
        })
    }

    /// Once a window: follow new processes, threads and execs; attach where the
    /// predicted cost fits; drop the dead. `estimates` holds sampled vDSO calls/s.
    pub fn refresh(&mut self, observer: &mut Observer, estimates: &HashMap<u32, f64>) {
        self.estimates = estimates.clone();
        self.last_refresh = Instant::now();
        let targets: Vec<u32> = if self.options.all {
            procfs::all_pids()
        } else {
            self.options.pids.clone()
        };
        let own = std::process::id();
        // The dead and the exec'd: detach first.
        let pids: Vec<u32> = self.traced.keys().copied().collect();
        for pid in pids {
            let traced = &self.traced[&pid];
            // Unknown (a failed /proc read) is not gone: out of descriptors, a
            // live process would otherwise be retired as exited.
            let Some(gone) = procfs::has_exited(pid, traced.start_ticks) else {
                continue;
            };
            let execd = !gone && vdso_image::vdso_base_of(pid) != Some(traced.vdso_base);
            if (gone || execd)
                && let Some(traced) = self.traced.remove(&pid)
            {
                self.finished.insert(pid, traced.state.clone());
                self.detach_all(observer, pid, traced);
            }
        }
        self.refused
            .retain(|pid, (start, _)| procfs::has_exited(*pid, *start) != Some(true));
        for pid in targets {
            if pid == own || self.refused.contains_key(&pid) {
                continue;
            }
            if self.traced.contains_key(&pid) {
                continue;
            }
            let Some(start_ticks) = procfs::start_ticks(pid) else {
                continue;
            };
            if let (Some(budget), Some(rate)) = (self.options.budget, estimates.get(&pid)) {
                let predicted = predicted_overhead(pid, *rate, self.costs.breakpoint_ns);
                if predicted > budget {
                    let state = ExactState {
                        state: ExactStatus::OverBudget,
                        entry_points: vec![],
                        overhead: Some(predicted),
                        note: Some(format!(
                            "not attached: ~{rate:.0} vDSO calls/s would cost {:.0}% of its CPU time (budget {:.0}%)",
                            predicted * 100.0,
                            budget * 100.0
                        )),
                    };
                    self.refuse(pid, start_ticks, state);
                    continue;
                }
            }
            match self.attach_process(observer, pid, start_ticks) {
                Ok(Some(traced)) => {
                    log::debug!(
                        "pid {pid}: exact counting attached at {}",
                        traced
                            .state
                            .entry_points
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    self.traced.insert(pid, traced);
                }
                Ok(None) => {} // kernel thread, or gone meanwhile
                Err(err) => {
                    let state = ExactState {
                        state: ExactStatus::Failed,
                        entry_points: vec![],
                        overhead: None,
                        note: Some(format!("{err:#}")),
                    };
                    if self.options.all {
                        log::debug!("pid {pid}: exact counting failed: {err:#}");
                    } else {
                        warn!("pid {pid}: exact counting failed: {err:#}");
                    }
                    self.refused.insert(pid, (start_ticks, state));
                }
            }
        }
    }

    /// The governor: measured hits × cost against the budget, every
    /// GOVERNOR_TICK (50 ms). Over budget: detach, and the process falls back to the estimate.
    pub fn govern(&mut self, observer: &mut Observer, vdso: &HashMap<VdsoKey, u64>) {
        // New processes (`--exact`) are picked up within a second, not a window.
        if self.last_refresh.elapsed() >= REFRESH_EVERY {
            let estimates = self.estimates.clone();
            self.refresh(observer, &estimates);
        }
        let pids: Vec<u32> = self.traced.keys().copied().collect();
        for pid in pids {
            if let Err(err) = self.sync_threads(observer, pid) {
                log::debug!("pid {pid}: arming new threads failed: {err:#}");
            }
        }
        let Some(budget) = self.options.budget else {
            return;
        };
        let mut hits: HashMap<u32, (u64, u64)> = HashMap::new();
        for (key, count) in vdso {
            let entry = hits.entry(key.process.tgid).or_default();
            match Provenance::from_repr(key.provenance) {
                Some(Provenance::Uprobe) => entry.0 += count,
                Some(Provenance::Breakpoint) => entry.1 += count,
                _ => {}
            }
        }
        let mut over = Vec::new();
        for (pid, traced) in &mut self.traced {
            let now = hits.get(pid).copied().unwrap_or_default();
            // Gone: the refresh retires it; its last tick is not judged.
            let Some(cpu) = procfs::cpu_time_ns(*pid) else {
                continue;
            };
            let Some(last_hits) = traced.last_hits else {
                // The first look sets the baseline.
                traced.last_hits = Some(now);
                traced.last_cpu_ns = cpu;
                traced.last_look = Instant::now();
                continue;
            };
            let (uprobes, breakpoints) = (
                now.0.saturating_sub(last_hits.0),
                now.1.saturating_sub(last_hits.1),
            );
            let elapsed = traced.last_look.elapsed().as_secs_f64().max(1e-3);
            let cost_ns = uprobes as f64 * self.costs.uprobe_ns
                + breakpoints as f64 * self.costs.breakpoint_ns;
            let cpu_ns = cpu.saturating_sub(traced.last_cpu_ns) as f64;
            // Below the floor (a share of one CPU) nothing is ever too much.
            let overhead = if cost_ns / (elapsed * 1e9) < OVERHEAD_FLOOR {
                0.0
            } else {
                cost_ns / cpu_ns.max(cost_ns).max(1.0)
            };
            traced.last_hits = Some(now);
            traced.last_cpu_ns = cpu;
            traced.last_look = Instant::now();
            traced.state.overhead = Some(overhead);
            if overhead > budget {
                over.push((*pid, overhead));
            }
        }
        for (pid, overhead) in over {
            let Some(traced) = self.traced.remove(&pid) else {
                continue;
            };
            let start = traced.start_ticks;
            let entry_points = traced.state.entry_points.clone();
            self.detach_all(observer, pid, traced);
            let state = ExactState {
                state: ExactStatus::OverBudget,
                entry_points,
                overhead: Some(overhead),
                note: Some(format!(
                    "detached: probes cost {:.0}% of its CPU time (budget {:.0}%); vDSO calls are estimated from samples",
                    overhead * 100.0,
                    budget * 100.0
                )),
            };
            self.refuse(pid, start, state);
        }
    }

    /// Detaches every probe of a process and tells the sampler to take its
    /// calls again.
    fn detach_all(&mut self, observer: &mut Observer, pid: u32, traced: Traced) {
        for link in traced.uprobes {
            let _ = observer.detach_uprobe(link);
        }
        observer.clear_coverage(COVERAGE_PROCESS | pid);
        for (tid, links) in traced.threads {
            self.detach_thread(observer, tid, links);
        }
    }

    fn detach_thread(&mut self, observer: &mut Observer, tid: u32, links: Vec<PerfEventLinkId>) {
        observer.clear_coverage(tid);
        self.open_breakpoints = self.open_breakpoints.saturating_sub(links.len());
        for link in links {
            let _ = observer.detach_breakpoint(link);
        }
    }

    /// Attaches a process's entry points: uprobes for the process, breakpoints
    /// in every thread (see [`Self::sync_threads`]). Ok(None): gone, a kernel
    /// thread, or no vDSO.
    fn attach_process(
        &mut self,
        observer: &mut Observer,
        pid: u32,
        start_ticks: u64,
    ) -> Result<Option<Traced>> {
        let Some(vdso_base) = vdso_image::vdso_base_of(pid) else {
            return Ok(None);
        };
        let points = match entry_points(pid) {
            Ok(points) => points,
            Err(_) if procfs::has_exited(pid, start_ticks) == Some(true) => return Ok(None),
            Err(err) => return Err(err),
        };
        let image = match points.abi {
            SyscallAbi::X86_64 | SyscallAbi::Arm64 => &self.images.x86_64,
            SyscallAbi::I386 => self.images.i386.as_ref().ok_or_else(|| {
                anyhow!("a 32-bit process, and the 32-bit vDSO image could not be read")
            })?,
        };
        let mut traced = Traced {
            start_ticks,
            vdso_base,
            uprobes: vec![],
            uprobe_calls: 0,
            // Every function of a call: vdso32 has clock_gettime and clock_gettime64.
            breakpoint_addresses: image
                .functions
                .iter()
                .filter(|f| points.breakpoints.contains(&f.call))
                .map(|f| vdso_base + f.offset)
                .collect(),
            breakpoint_calls: points
                .breakpoints
                .iter()
                .fold(0, |bits, call| bits | 1 << *call as u32),
            threads: HashMap::new(),
            unarmed: 0,
            state: ExactState {
                state: ExactStatus::Traced,
                entry_points: vec![],
                overhead: None,
                note: None,
            },
            last_hits: None,
            last_cpu_ns: procfs::cpu_time_ns(pid).unwrap_or(0),
            last_look: Instant::now(),
        };
        for (file, symbol, cookie) in &points.uprobes {
            let attached = symbol_offset(file, symbol)
                .and_then(|offset| observer.attach_uprobe_at_offset(file, offset, pid, *cookie));
            match attached {
                Ok(link) => {
                    traced.uprobes.push(link);
                    traced.uprobe_calls |= 1 << cookie.call as u32;
                    traced.state.entry_points.push(EntryPoint::Uprobe {
                        file: procfs::display_path(file),
                        symbol: symbol.to_string(),
                    });
                }
                Err(err) => {
                    self.detach_all(observer, pid, traced);
                    return Err(err);
                }
            }
        }
        if traced.uprobe_calls != 0 {
            let coverage = ExactCoverage {
                vdso_base,
                calls: traced.uprobe_calls,
                _pad: 0,
            };
            if let Err(err) = observer.set_coverage(COVERAGE_PROCESS | pid, coverage) {
                self.detach_all(observer, pid, traced);
                return Err(err);
            }
        }
        traced.state.entry_points.extend(
            points
                .breakpoints
                .iter()
                .map(|call| EntryPoint::Breakpoint(*call)),
        );
        self.traced.insert(pid, traced);
        if let Err(err) = self.sync_threads(observer, pid) {
            if let Some(traced) = self.traced.remove(&pid) {
                self.detach_all(observer, pid, traced);
            }
            return Err(err.context(
                "hardware breakpoints need free debug registers (at most 4 per thread; a \
                 debugger may hold them)",
            ));
        }
        Ok(self.traced.remove(&pid))
    }

    /// Arms the threads started since the last look (breakpoint events are not
    /// inherited: a child process would carry them beyond the governor's
    /// reach), and frees the breakpoints of threads that ended. Until a thread
    /// is armed the sampler counts it. With too few file descriptors left,
    /// threads stay unarmed (sampled) and the state says how many.
    fn sync_threads(&mut self, observer: &mut Observer, pid: u32) -> Result<()> {
        let Some(traced) = self.traced.get_mut(&pid) else {
            return Ok(());
        };
        if traced.breakpoint_addresses.is_empty() {
            return Ok(());
        }
        let live: HashSet<u32> = procfs::threads_of(pid).into_iter().collect();
        if live.is_empty() {
            return Ok(()); // gone, or /proc unreadable: the refresh decides
        }
        let ended: Vec<u32> = traced
            .threads
            .keys()
            .filter(|tid| !live.contains(tid))
            .copied()
            .collect();
        let mut freed = Vec::new();
        for tid in ended {
            if let Some(links) = traced.threads.remove(&tid) {
                freed.push((tid, links));
            }
        }
        let addresses = traced.breakpoint_addresses.clone();
        let coverage = ExactCoverage {
            vdso_base: traced.vdso_base,
            calls: traced.breakpoint_calls,
            _pad: 0,
        };
        let new: Vec<u32> = live
            .iter()
            .filter(|tid| !traced.threads.contains_key(tid))
            .copied()
            .collect();
        for (tid, links) in freed {
            self.detach_thread(observer, tid, links);
        }
        let mut unarmed = 0;
        for tid in new {
            if self.open_breakpoints + addresses.len() > self.breakpoint_budget {
                unarmed += 1;
                continue;
            }
            let mut links = Vec::new();
            for &address in &addresses {
                match observer.attach_breakpoint(tid, address) {
                    Ok(link) => links.push(link),
                    // The thread ended meanwhile.
                    Err(_) if !procfs::threads_of(pid).contains(&tid) => break,
                    Err(err) => {
                        self.open_breakpoints += links.len();
                        self.detach_thread(observer, tid, links);
                        return Err(err);
                    }
                }
            }
            self.open_breakpoints += links.len();
            if links.len() == addresses.len() {
                observer.set_coverage(tid, coverage)?;
            }
            if let Some(traced) = self.traced.get_mut(&pid) {
                traced.threads.insert(tid, links);
            }
        }
        if let Some(traced) = self.traced.get_mut(&pid)
            && unarmed > traced.unarmed
        {
            warn!(
                "pid {pid}: {unarmed} threads not armed, their vDSO calls are sampled: the \
                 open-file limit allows {} breakpoints (raise LimitNOFILE)",
                self.breakpoint_budget
            );
            traced.unarmed = unarmed;
            traced.state.note = Some(format!(
                "up to {unarmed} threads sampled, not armed: open-file limit reached"
            ));
        }
        Ok(())
    }

    /// Leaves a process to the estimate from now on, and says why once.
    fn refuse(&mut self, pid: u32, start_ticks: u64, state: ExactState) {
        warn!(
            "pid {pid}: exact counting {}",
            state.note.as_deref().unwrap_or("")
        );
        self.refused.insert(pid, (start_ticks, state));
    }

    /// Each process's exact-counting state for the window that just ended (the
    /// session writes them into the report); processes that exited or exec'd
    /// since are said once more, then forgotten.
    pub fn states(&mut self) -> HashMap<u32, ExactState> {
        let mut states: HashMap<u32, ExactState> =
            std::mem::take(&mut self.finished).into_iter().collect();
        states.extend(self.refused.iter().map(|(pid, (_, s))| (*pid, s.clone())));
        states.extend(self.traced.iter().map(|(pid, t)| (*pid, t.state.clone())));
        states
    }
}

/// Overhead the probes would cost a process calling the vDSO `rate` times a
/// second, as a share of its CPU time (using the dearer breakpoint cost).
fn predicted_overhead(pid: u32, rate: f64, hit_ns: f64) -> f64 {
    let cost = rate * hit_ns / 1e9; // CPU seconds per second
    if cost < OVERHEAD_FLOOR {
        return 0.0;
    }
    // Its CPU share now, plus what the probes would add.
    let cpu = procfs::cpu_share(pid).unwrap_or(1.0);
    cost / (cpu + cost)
}

/// Where calls into the vDSO can be counted in one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPoints {
    /// The process's ABI: which vDSO image it maps.
    pub abi: SyscallAbi,
    /// (file as seen from here, symbol, cookie)
    pub uprobes: Vec<(PathBuf, String, UprobeCookie)>,
    /// vDSO functions that need a breakpoint.
    pub breakpoints: Vec<TimeCall>,
}

/// Decides the entry points from a process's maps and executable.
pub fn entry_points(pid: u32) -> Result<EntryPoints> {
    let files = procfs::process_files(pid)?;
    let exe = files.exe.clone();
    let exe_symbols = elf_symbols(&exe).unwrap_or_default();
    let abi = if cfg!(target_arch = "x86_64") && procfs::is_32bit_elf(&exe) {
        SyscallAbi::I386
    } else {
        SyscallAbi::NATIVE
    };
    let mut points = choose_entry_points(&files.executable_mappings, &exe, &exe_symbols, |path| {
        files.open_path(path)
    });
    points.abi = abi;
    if abi == SyscallAbi::I386 {
        adapt_to_i386(&mut points);
    }
    // No breakpoint where the image has no function (arm64: time, getcpu).
    points.breakpoints.retain(|&call| abi.vdso_has(call));
    Ok(points)
}

/// 32-bit glibc (2.34+) and musl (1.2+) route both clock_gettime and its
/// 64-bit-time twin through `__clock_gettime64` (and `__clock_getres64`):
/// one probe there counts every call once. Without a libc, vdso32's two
/// clock_gettime functions take two of the four debug registers: getcpu goes.
fn adapt_to_i386(points: &mut EntryPoints) {
    if points.breakpoints.contains(&TimeCall::ClockGettime) {
        points.breakpoints.retain(|call| *call != TimeCall::Getcpu);
    }
    let mut symbols_of: HashMap<PathBuf, HashSet<String>> = HashMap::new();
    for (file, symbol, _) in &mut points.uprobes {
        let time64 = format!("__{symbol}64");
        let symbols = symbols_of
            .entry(file.clone())
            .or_insert_with(|| elf_symbols(file).unwrap_or_default());
        if symbols.contains(&time64) {
            *symbol = time64;
        }
    }
}

/// The rule, apart from reading files (tested without a process).
pub fn choose_entry_points(
    mapped: &[PathBuf],
    exe: &Path,
    exe_symbols: &HashSet<String>,
    in_root: impl Fn(&Path) -> PathBuf,
) -> EntryPoints {
    let from_arg = |call| UprobeCookie {
        call,
        fixed_clock: None,
    };
    let name = |p: &PathBuf| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let glibc = mapped.iter().find(|p| {
        let n = name(p);
        n == "libc.so.6" || (n.starts_with("libc-2.") && n.ends_with(".so"))
    });
    // /lib/ld-musl-x86_64.so.1 is often a link to .../x86_64-linux-musl/libc.so.
    let musl = mapped.iter().find(|p| {
        let n = name(p);
        let path = p.to_string_lossy();
        n.starts_with("ld-musl-")
            || n.starts_with("libc.musl-")
            || path.contains("-linux-musl/")
            || path.contains("/musl/")
    });
    let mut points = EntryPoints {
        abi: SyscallAbi::X86_64,
        uprobes: vec![],
        breakpoints: vec![],
    };
    let go_nanotime = ["runtime.nanotime1", "runtime.nanotime1.abi0"]
        .into_iter()
        .find(|s| exe_symbols.contains(*s));
    if let Some(nanotime) = go_nanotime {
        // Go calls the vDSO from its runtime, with or without libc.
        let fixed = |clock| UprobeCookie {
            call: TimeCall::ClockGettime,
            fixed_clock: Some(clock),
        };
        points.uprobes.push((
            exe.to_path_buf(),
            nanotime.into(),
            fixed(libc::CLOCK_MONOTONIC),
        ));
        let walltime = [
            "runtime.walltime",
            "runtime.walltime1",
            "runtime.walltime.abi0",
        ]
        .into_iter()
        .find(|s| exe_symbols.contains(*s));
        match walltime {
            Some(walltime) => points.uprobes.push((
                exe.to_path_buf(),
                walltime.into(),
                fixed(libc::CLOCK_REALTIME),
            )),
            // Go >= 1.17 on amd64: time.now reads both clocks itself, one vDSO
            // call each; two probes at one place count both.
            None if exe_symbols.contains("time.now") => {
                for clock in [libc::CLOCK_REALTIME, libc::CLOCK_MONOTONIC] {
                    points
                        .uprobes
                        .push((exe.to_path_buf(), "time.now".into(), fixed(clock)));
                }
            }
            None => {}
        }
    } else if let Some(glibc) = glibc {
        let libc = in_root(glibc);
        points.uprobes.push((
            libc.clone(),
            "clock_gettime".into(),
            from_arg(TimeCall::ClockGettime),
        ));
        points
            .uprobes
            .push((libc, "clock_getres".into(), from_arg(TimeCall::ClockGetres)));
        // IFUNCs resolved straight to the vDSO: no libc code runs; getcpu()
        // calls the vDSO itself (sched_getcpu reads rseq, no call at all).
        points.breakpoints = vec![TimeCall::Gettimeofday, TimeCall::Time, TimeCall::Getcpu];
    } else if let Some(musl) = musl {
        // musl's gettimeofday and time call its clock_gettime; its
        // sched_getcpu calls the vDSO's getcpu.
        points.uprobes.push((
            in_root(musl),
            "clock_gettime".into(),
            from_arg(TimeCall::ClockGettime),
        ));
        points.breakpoints = vec![TimeCall::Getcpu];
    } else if exe_symbols.contains("clock_gettime") {
        // A static binary: its own libc inside.
        points.uprobes.push((
            exe.to_path_buf(),
            "clock_gettime".into(),
            from_arg(TimeCall::ClockGettime),
        ));
        points.breakpoints = vec![TimeCall::Gettimeofday, TimeCall::Time, TimeCall::Getcpu];
    } else {
        points.breakpoints = vec![
            TimeCall::ClockGettime,
            TimeCall::Gettimeofday,
            TimeCall::Time,
            TimeCall::Getcpu,
        ];
    }
    points
}

/// Names defined in .symtab and .dynsym of an ELF file (not the imports: a
/// dynamic binary "has" clock_gettime only as an undefined symbol).
fn elf_symbols(path: &Path) -> Result<HashSet<String>> {
    Ok(elf_symbol_offsets(path)?.into_keys().collect())
}

/// Each defined symbol of an ELF file with its file offset (where a uprobe
/// goes). The file is opened as [`procfs::open_regular`] allows and read
/// lazily: only the headers and symbol tables parsing touches.
fn elf_symbol_offsets(path: &Path) -> Result<HashMap<String, u64>> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

    let (file, _) = procfs::open_regular(path)?;
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache).with_context(|| format!("parsing {}", path.display()))?;
    let mut offsets = HashMap::new();
    for symbol in elf.symbols().chain(elf.dynamic_symbols()) {
        if !symbol.is_definition() {
            continue;
        }
        let (Ok(name), Some(index)) = (symbol.name(), symbol.section_index()) else {
            continue;
        };
        let Ok(section) = elf.section_by_index(index) else {
            continue;
        };
        let Some((section_offset, _)) = section.file_range() else {
            continue;
        };
        if let Some(offset) = symbol
            .address()
            .checked_sub(section.address())
            .and_then(|within| within.checked_add(section_offset))
        {
            offsets.entry(name.to_owned()).or_insert(offset);
        }
    }
    Ok(offsets)
}

/// The file offset of `symbol` in `path`, for a uprobe (aya would read the
/// whole file to find it).
fn symbol_offset(path: &Path, symbol: &str) -> Result<u64> {
    elf_symbol_offsets(path)?
        .remove(symbol)
        .ok_or_else(|| anyhow!("no symbol {symbol} defined in {}", path.display()))
}

/// What one uprobe hit and one breakpoint hit cost on this machine: the
/// observer traps its own calls for a moment and times them.
fn measure_hit_costs(observer: &mut Observer, image: &VdsoImage) -> Result<HitCosts> {
    const CALLS: u32 = 2_000;
    let own = std::process::id();
    let points = entry_points(own)?;
    let cookie = UprobeCookie {
        call: TimeCall::ClockGettime,
        fixed_clock: None,
    };
    let time_calls = |n: u32| {
        let start = Instant::now();
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        for _ in 0..n {
            // SAFETY: a valid timespec.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
            std::hint::black_box(&ts);
        }
        start.elapsed().as_nanos() as f64 / f64::from(n)
    };
    let bare = time_calls(CALLS * 10);
    let link = match points
        .uprobes
        .iter()
        .find(|(_, symbol, _)| symbol == "clock_gettime")
    {
        Some((libc, symbol, cookie)) => {
            observer.attach_uprobe_at_offset(libc, symbol_offset(libc, symbol)?, own, *cookie)?
        }
        // The static release binary is stripped: its own clock_gettime, by address.
        None => {
            let (file, offset) = procfs::own_code_location(libc::clock_gettime as *const () as u64)
                .context("finding this process's clock_gettime to measure a uprobe on")?;
            observer.attach_uprobe_at_offset(&file, offset, own, cookie)?
        }
    };
    let uprobed = time_calls(CALLS);
    observer.detach_uprobe(link)?;

    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    let gettime = image
        .own_address(TimeCall::ClockGettime)
        .ok_or_else(|| anyhow!("the vDSO exports no clock_gettime"))?;
    let link = observer.attach_breakpoint(tid, gettime)?;
    let breakpointed = time_calls(CALLS);
    observer.detach_breakpoint(link)?;
    Ok(HitCosts {
        uprobe_ns: (uprobed - bare).max(100.0),
        breakpoint_ns: (breakpointed - bare).max(100.0),
    })
}

/// How long the governor waits between looks.
/// Its reaction time bounds what a process that turns hot loses: one tick
/// under probes (50 ms is ~1.7% of a 3 s run).
pub const GOVERNOR_TICK: Duration = Duration::from_millis(50);
/// How often new processes and execs are looked for between windows.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn symbols(names: &[&str]) -> HashSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn root(path: &Path) -> PathBuf {
        Path::new("/proc/7/root").join(path.strip_prefix("/").unwrap())
    }

    #[test]
    fn glibc_gets_uprobes_and_breakpoints_for_its_ifuncs() {
        let mapped = vec![
            PathBuf::from("/usr/bin/app"),
            PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6"),
        ];
        let points = choose_entry_points(
            &mapped,
            Path::new("/usr/bin/app"),
            &symbols(&["main"]),
            root,
        );
        assert_eq!(points.uprobes.len(), 2);
        assert_eq!(
            points.uprobes[0].0,
            Path::new("/proc/7/root/usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert_eq!(points.uprobes[0].1, "clock_gettime");
        assert_eq!(points.uprobes[0].2.fixed_clock, None);
        assert_eq!(points.uprobes[1].1, "clock_getres");
        assert_eq!(
            points.breakpoints,
            [TimeCall::Gettimeofday, TimeCall::Time, TimeCall::Getcpu]
        );
    }

    #[test]
    fn go_uses_its_runtime_with_fixed_clocks() {
        let mapped = vec![PathBuf::from("/srv/goapp")];
        let points = choose_entry_points(
            &mapped,
            Path::new("/srv/goapp"),
            &symbols(&["runtime.nanotime1", "runtime.walltime"]),
            root,
        );
        assert_eq!(points.uprobes.len(), 2);
        assert_eq!(points.uprobes[0].2.fixed_clock, Some(libc::CLOCK_MONOTONIC));
        assert_eq!(points.uprobes[1].1, "runtime.walltime");
        assert_eq!(points.uprobes[1].2.fixed_clock, Some(libc::CLOCK_REALTIME));
        assert!(points.breakpoints.is_empty());
    }

    #[test]
    fn go_1_17_and_later_read_both_clocks_in_time_now() {
        let exe = Path::new("/srv/go119");
        let points = choose_entry_points(
            &[exe.to_path_buf()],
            exe,
            &symbols(&["runtime.nanotime1.abi0", "time.now"]),
            root,
        );
        let probes: Vec<(&str, Option<i32>)> = points
            .uprobes
            .iter()
            .map(|(_, s, c)| (s.as_str(), c.fixed_clock))
            .collect();
        assert_eq!(
            probes,
            [
                ("runtime.nanotime1.abi0", Some(libc::CLOCK_MONOTONIC)),
                ("time.now", Some(libc::CLOCK_REALTIME)),
                ("time.now", Some(libc::CLOCK_MONOTONIC)),
            ]
        );
    }

    #[test]
    fn static_musl_and_unknown_binaries() {
        let exe = Path::new("/bin/static");
        let points = choose_entry_points(
            &[exe.to_path_buf()],
            exe,
            &symbols(&["clock_gettime"]),
            root,
        );
        assert_eq!(points.uprobes[0].0, exe);
        assert_eq!(
            points.breakpoints,
            [TimeCall::Gettimeofday, TimeCall::Time, TimeCall::Getcpu]
        );

        for musl in [
            "/lib/ld-musl-x86_64.so.1",
            "/usr/lib/x86_64-linux-musl/libc.so",
        ] {
            let points = choose_entry_points(&[PathBuf::from(musl)], exe, &symbols(&[]), root);
            assert_eq!(points.uprobes.len(), 1, "{musl}");
            assert!(points.uprobes[0].0.ends_with(musl.trim_start_matches('/')));
            assert_eq!(points.breakpoints, [TimeCall::Getcpu], "sched_getcpu");
        }

        let mut points = choose_entry_points(&[], exe, &symbols(&[]), root);
        assert!(points.uprobes.is_empty());
        assert_eq!(points.breakpoints.len(), 4, "at most 4 debug registers");
        // vdso32 has two clock_gettime functions: getcpu makes room.
        adapt_to_i386(&mut points);
        assert_eq!(
            points.breakpoints,
            [
                TimeCall::ClockGettime,
                TimeCall::Gettimeofday,
                TimeCall::Time
            ]
        );
    }

    #[test]
    fn i386_glibc_is_probed_at_its_time64_functions() {
        let libc32 = PathBuf::from("/lib32/libc.so.6");
        let mut points = choose_entry_points(
            std::slice::from_ref(&libc32),
            Path::new("/bin/app32"),
            &symbols(&[]),
            |p| p.to_path_buf(),
        );
        adapt_to_i386(&mut points);
        // The real i386 glibc of the test machines (gcc-multilib).
        let probed: Vec<&str> = points.uprobes.iter().map(|(_, s, _)| s.as_str()).collect();
        assert_eq!(probed, ["__clock_gettime64", "__clock_getres64"]);
    }

    #[test]
    fn maps_give_executable_files_once() {
        let maps = "55-56 r--p 0 fe:00 1 /usr/bin/app\n\
                    56-57 r-xp 0 fe:00 1 /usr/bin/app\n\
                    7f-80 r-xp 0 fe:00 2 /usr/lib/libc.so.6\n\
                    81-82 r-xp 0 00:00 0 [vdso]\n\
                    90-91 r-xp 0 fe:00 3                          /tmp/my app (deleted)\n";
        assert_eq!(
            procfs::mapped_files(maps),
            [
                (PathBuf::from("/usr/bin/app"), "56-57".to_owned()),
                (PathBuf::from("/usr/lib/libc.so.6"), "7f-80".to_owned()),
                (PathBuf::from("/tmp/my app (deleted)"), "90-91".to_owned()),
            ]
        );
        assert_eq!(
            procfs::display_path(Path::new("/proc/12/root/usr/lib/libc.so.6")),
            "/usr/lib/libc.so.6"
        );
    }

    #[test]
    fn own_process_has_glibc_entry_points_and_cpu_figures() {
        let points = entry_points(std::process::id()).unwrap();
        assert!(points.uprobes.iter().any(|(_, s, _)| s == "clock_gettime"));
        assert!(procfs::cpu_ticks(std::process::id()).is_some());
        let share = procfs::cpu_share(std::process::id()).unwrap();
        assert!((0.0..=64.0).contains(&share));
        assert_eq!(
            predicted_overhead(std::process::id(), 1.0, 10_000.0),
            0.0,
            "under the floor"
        );
        assert!(predicted_overhead(std::process::id(), 1e6, 10_000.0) > 0.5);
    }
}
