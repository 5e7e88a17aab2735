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
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};
use aya::programs::{perf_event::PerfEventLinkId, uprobe::UProbeLinkId};
use log::{info, warn};
use vdso_observer_common::{COVERAGE_PROCESS, ExactCoverage, Provenance, SyscallAbi, VdsoKey};

use super::{
    entry_points::{entry_points, symbol_offset},
    hit_costs::{HitCosts, OVERHEAD_FLOOR, measure_hit_costs, predicted_overhead},
};
use crate::{
    host::{
        process_files, procfs,
        vdso_image::{self, VdsoImage},
    },
    kernel::{
        Observer,
        privileges::{EXACT_KERNEL_FLOOR, check_kernel_floor},
    },
    model::{EntryPoint, ExactState, ExactStatus, KeyMap},
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
        // A process left to the estimate (over budget, detached) that ended is
        // said once more too: its last window must still say why it was not
        // exact (dropping it here lost that whenever a refresh came between
        // its exit and the window's end).
        let ended: Vec<u32> = self
            .refused
            .iter()
            .filter(|(pid, (start, _))| procfs::has_exited(**pid, *start) == Some(true))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in ended {
            if let Some((_, state)) = self.refused.remove(&pid) {
                self.finished.insert(pid, state);
            }
        }
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
    pub fn govern(&mut self, observer: &mut Observer, vdso: &KeyMap<VdsoKey, u64>) {
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
                        file: process_files::display_path(file),
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

/// How long the governor waits between looks.
/// Its reaction time bounds what a process that turns hot loses: one tick
/// under probes (50 ms is ~1.7% of a 3 s run).
pub const GOVERNOR_TICK: Duration = Duration::from_millis(50);
/// How often new processes and execs are looked for between windows.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

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
