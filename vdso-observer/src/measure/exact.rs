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

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use aya::programs::{perf_event::PerfEventLinkId, uprobe::UProbeLinkId};
use log::{info, warn};
use object::{Object as _, ObjectSymbol as _};
use serde::Serialize;
use vdso_observer_common::{Provenance, TimeCall, UprobeCookie, VdsoKey};

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
    breakpoints: Vec<PerfEventLinkId>,
    threads: HashSet<u32>,
    state: ExactState,
    /// Hits and CPU ticks at the last governor look.
    last_hits: (u64, u64),
    last_cpu_ticks: u64,
    last_look: Instant,
}

pub struct ExactTracer {
    options: ExactOptions,
    /// The latest sampled vDSO calls/s per pid, for admitting new processes.
    estimates: HashMap<u32, f64>,
    last_refresh: Instant,
    image: VdsoImage,
    pub costs: HitCosts,
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
        image: VdsoImage,
    ) -> Result<ExactTracer> {
        check_kernel_floor(
            &procfs::uname().release,
            EXACT_KERNEL_FLOOR,
            "exact counting (uprobes with BPF cookies)",
        )?;
        let costs = measure_hit_costs(observer, &image)?;
        info!(
            "exact counting: a uprobe hit costs {:.1} µs, a breakpoint hit {:.1} µs here",
            costs.uprobe_ns / 1e3,
            costs.breakpoint_ns / 1e3
        );
        Ok(ExactTracer {
            options,
            estimates: HashMap::new(),
            last_refresh: Instant::now(),
            image,
            costs,
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
            let gone = procfs::start_ticks(pid) != Some(traced.start_ticks);
            let execd = vdso_image::vdso_base_of(pid) != Some(traced.vdso_base);
            if (gone || execd)
                && let Some(traced) = self.traced.remove(&pid)
            {
                self.finished.insert(pid, traced.state.clone());
                detach_all(observer, traced);
            }
        }
        self.refused
            .retain(|pid, (start, _)| procfs::start_ticks(*pid) == Some(*start));
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
            match attach_process(observer, &self.image, pid, start_ticks) {
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
                    if !self.options.all {
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
        for (pid, traced) in &mut self.traced {
            if !traced.breakpoints.is_empty() {
                add_new_threads(observer, &self.image, *pid, traced);
            }
        }
        let Some(budget) = self.options.budget else {
            return;
        };
        let mut hits: HashMap<u32, (u64, u64)> = HashMap::new();
        for (key, count) in vdso {
            let entry = hits.entry(key.process.tgid).or_default();
            match Provenance::from_u8(key.provenance) {
                Some(Provenance::Uprobe) => entry.0 += count,
                Some(Provenance::Breakpoint) => entry.1 += count,
                _ => {}
            }
        }
        let mut over = Vec::new();
        for (pid, traced) in &mut self.traced {
            let now = hits.get(pid).copied().unwrap_or_default();
            let (uprobes, breakpoints) = (
                now.0.saturating_sub(traced.last_hits.0),
                now.1.saturating_sub(traced.last_hits.1),
            );
            let cpu = procfs::cpu_ticks(*pid).unwrap_or(traced.last_cpu_ticks);
            let elapsed = traced.last_look.elapsed().as_secs_f64().max(1e-3);
            let cost_ns = uprobes as f64 * self.costs.uprobe_ns
                + breakpoints as f64 * self.costs.breakpoint_ns;
            let cpu_ns = cpu.saturating_sub(traced.last_cpu_ticks) as f64 * procfs::ns_per_tick();
            // Below the floor (a share of one CPU) nothing is ever too much.
            let overhead = if cost_ns / (elapsed * 1e9) < OVERHEAD_FLOOR {
                0.0
            } else {
                cost_ns / cpu_ns.max(cost_ns).max(1.0)
            };
            traced.last_hits = now;
            traced.last_cpu_ticks = cpu;
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
            detach_all(observer, traced);
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

fn detach_all(observer: &mut Observer, traced: Traced) {
    for link in traced.uprobes {
        let _ = observer.detach_uprobe(link);
    }
    for link in traced.breakpoints {
        let _ = observer.detach_breakpoint(link);
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
    /// (file as seen from here, symbol, cookie)
    pub uprobes: Vec<(PathBuf, String, UprobeCookie)>,
    /// vDSO functions that need a breakpoint.
    pub breakpoints: Vec<TimeCall>,
}

/// Decides the entry points from a process's maps and executable.
pub fn entry_points(pid: u32) -> Result<EntryPoints> {
    let files = procfs::process_files(pid)?;
    let exe = files.in_root(&files.exe);
    let exe_symbols = elf_symbols(&exe).unwrap_or_default();
    Ok(choose_entry_points(
        &files.executable_mappings,
        &exe,
        &exe_symbols,
        |path| files.in_root(path),
    ))
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
        // IFUNCs resolved straight to the vDSO: no libc code runs.
        points.breakpoints = vec![TimeCall::Gettimeofday, TimeCall::Time];
    } else if let Some(musl) = musl {
        // musl's gettimeofday and time call its clock_gettime.
        points.uprobes.push((
            in_root(musl),
            "clock_gettime".into(),
            from_arg(TimeCall::ClockGettime),
        ));
    } else if exe_symbols.contains("clock_gettime") {
        // A static binary: its own libc inside.
        points.uprobes.push((
            exe.to_path_buf(),
            "clock_gettime".into(),
            from_arg(TimeCall::ClockGettime),
        ));
        points.breakpoints = vec![TimeCall::Gettimeofday, TimeCall::Time];
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

/// Files mapped executable, from a maps text.
/// Names defined in .symtab and .dynsym of an ELF file (not the imports: a
/// dynamic binary "has" clock_gettime only as an undefined symbol).
fn elf_symbols(path: &Path) -> Result<HashSet<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file =
        object::File::parse(&*bytes).with_context(|| format!("parsing {}", path.display()))?;
    Ok(file
        .symbols()
        .chain(file.dynamic_symbols())
        .filter(|s| s.is_definition())
        .filter_map(|s| s.name().ok().map(str::to_owned))
        .collect())
}

fn attach_process(
    observer: &mut Observer,
    image: &VdsoImage,
    pid: u32,
    start_ticks: u64,
) -> Result<Option<Traced>> {
    let Some(vdso_base) = vdso_image::vdso_base_of(pid) else {
        return Ok(None); // gone, kernel thread, or no vDSO
    };
    let points = match entry_points(pid) {
        Ok(points) => points,
        Err(_) if procfs::start_ticks(pid) != Some(start_ticks) => return Ok(None),
        Err(err) => return Err(err),
    };
    let mut traced = Traced {
        start_ticks,
        vdso_base,
        uprobes: vec![],
        breakpoints: vec![],
        threads: HashSet::new(),
        state: ExactState {
            state: ExactStatus::Traced,
            entry_points: vec![],
            overhead: None,
            note: None,
        },
        last_hits: (0, 0),
        last_cpu_ticks: procfs::cpu_ticks(pid).unwrap_or(0),
        last_look: Instant::now(),
    };
    for (file, symbol, cookie) in &points.uprobes {
        match observer.attach_uprobe(file, symbol, pid, *cookie) {
            Ok(link) => {
                traced.uprobes.push(link);
                traced.state.entry_points.push(EntryPoint::Uprobe {
                    file: procfs::display_path(file),
                    symbol: symbol.to_string(),
                });
            }
            Err(err) => {
                detach_all(observer, traced);
                return Err(err);
            }
        }
    }
    traced.state.entry_points.extend(
        points
            .breakpoints
            .iter()
            .map(|call| EntryPoint::Breakpoint(*call)),
    );
    let calls = points.breakpoints.clone();
    if !calls.is_empty() {
        let addresses: Vec<u64> = calls
            .iter()
            .filter_map(|call| image.function(*call).map(|f| vdso_base + f.offset))
            .collect();
        for tid in procfs::threads_of(pid) {
            for &address in &addresses {
                match observer.attach_breakpoint(tid, address) {
                    Ok(link) => traced.breakpoints.push(link),
                    Err(err) => {
                        detach_all(observer, traced);
                        return Err(err.context(
                            "hardware breakpoints need free debug registers (at most 4 per thread; a debugger may hold them)",
                        ));
                    }
                }
            }
            traced.threads.insert(tid);
        }
    }
    Ok(Some(traced))
}

/// Threads started since the last look get their own breakpoints (events are
/// not inherited: a child process would carry them beyond the governor's reach).
fn add_new_threads(observer: &mut Observer, image: &VdsoImage, pid: u32, traced: &mut Traced) {
    let calls: Vec<TimeCall> = traced
        .state
        .entry_points
        .iter()
        .filter_map(|e| match e {
            EntryPoint::Breakpoint(call) => Some(*call),
            EntryPoint::Uprobe { .. } => None,
        })
        .collect();
    for tid in procfs::threads_of(pid) {
        if !traced.threads.insert(tid) {
            continue;
        }
        for call in &calls {
            if let Some(function) = image.function(*call)
                && let Ok(link) =
                    observer.attach_breakpoint(tid, traced.vdso_base + function.offset)
            {
                traced.breakpoints.push(link);
            }
        }
    }
}

/// What one uprobe hit and one breakpoint hit cost on this machine: the
/// observer traps its own calls for a moment and times them.
fn measure_hit_costs(observer: &mut Observer, image: &VdsoImage) -> Result<HitCosts> {
    const CALLS: u32 = 2_000;
    let own = std::process::id();
    let points = entry_points(own)?;
    let (libc, symbol, cookie) = points
        .uprobes
        .iter()
        .find(|(_, symbol, _)| symbol == "clock_gettime")
        .cloned()
        .ok_or_else(|| anyhow!("no libc clock_gettime in the observer to measure a uprobe on"))?;
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
    let link = observer.attach_uprobe(&libc, &symbol, own, cookie)?;
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
        assert_eq!(points.breakpoints, [TimeCall::Gettimeofday, TimeCall::Time]);
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
        assert_eq!(points.breakpoints, [TimeCall::Gettimeofday, TimeCall::Time]);

        for musl in [
            "/lib/ld-musl-x86_64.so.1",
            "/usr/lib/x86_64-linux-musl/libc.so",
        ] {
            let points = choose_entry_points(&[PathBuf::from(musl)], exe, &symbols(&[]), root);
            assert_eq!(points.uprobes.len(), 1, "{musl}");
            assert!(points.uprobes[0].0.ends_with(musl.trim_start_matches('/')));
            assert!(points.breakpoints.is_empty());
        }

        let points = choose_entry_points(&[], exe, &symbols(&[]), root);
        assert!(points.uprobes.is_empty());
        assert_eq!(points.breakpoints.len(), 4, "at most 4 debug registers");
    }

    #[test]
    fn maps_give_executable_files_once() {
        let maps = "55-56 r--p 0 fe:00 1 /usr/bin/app\n\
                    56-57 r-xp 0 fe:00 1 /usr/bin/app\n\
                    7f-80 r-xp 0 fe:00 2 /usr/lib/libc.so.6\n\
                    81-82 r-xp 0 00:00 0 [vdso]\n";
        assert_eq!(
            procfs::mapped_files(maps),
            [
                PathBuf::from("/usr/bin/app"),
                PathBuf::from("/usr/lib/libc.so.6")
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
