//! One observation session, shared by every front end: the loaded programs,
//! the calibrated vDSO model, the aggregation from window to window, exact
//! counting and its governor, the machine's time set-up, and the clean-up of
//! the dead. Front ends read what it reports; they never look at /proc, sysfs
//! or the maps themselves.

use std::{collections::HashMap, time::Instant};

use anyhow::{Context as _, Result};
use vdso_observer_common::{Provenance, SyscallAbi, TimeCall, VDSO_SAMPLE_PROGRAM, VdsoKey};

use crate::{
    host::{
        clock_watch::ClockWatch,
        clocksource,
        procfs::{self, LivenessBefore},
        runtime_names::RuntimeNames,
        vdso_image::VdsoImage,
        vdso32,
    },
    kernel::{DrainWakeup, LoadOptions, Observer, VdsoTables},
    measure::{
        calibrate::{self, VdsoModel},
        exact::{ExactOptions, ExactTracer, GOVERNOR_TICK, Images},
    },
    model::{
        Aggregator, GettimeSamples, MapSnapshot, ObserverHealthInput, Report, Retired,
        SystemReport, Thresholds, VdsoCapability, VdsoCheck, VdsoEstimator, is_gettime_sample,
    },
    settings::ObserverSettings,
};

/// How often the maps' fill level is looked at between windows where the
/// programs cannot wake the session (three reads of a per-CPU array): an exec
/// loop makes ~5 000 keys a second on one CPU.
const DRAIN_CHECK: std::time::Duration = std::time::Duration::from_millis(50);
/// Where they can: a look now and then all the same, in case a wake-up was
/// lost. Twenty wake-ups a second cost an idle daemon most of its CPU.
const DRAIN_CHECK_WOKEN: std::time::Duration = std::time::Duration::from_secs(1);
/// Drain exited processes once a map is this full (the rest is headroom for a
/// loaded machine: 5 000 new processes a second fill 16 384 entries in 2 s)...
const DRAIN_AT: f64 = 0.4;
/// ... and has grown by this much since the last drain.
const DRAIN_GROWTH: f64 = 0.1;

/// What a session loads and counts.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub load: LoadOptions,
    pub exact: ExactOptions,
    pub thresholds: Thresholds,
    /// Exited processes a window reports one row each.
    pub exited_rows: usize,
}

impl SessionOptions {
    /// From settings with every default filled in.
    pub fn new(settings: &ObserverSettings, thresholds: Thresholds) -> SessionOptions {
        SessionOptions {
            load: LoadOptions {
                btf_path: settings.btf.clone(),
                // One size for the three maps: a process usually holds one
                // key of each, and the drain keeps all three below half.
                time_call_entries: settings.map_entries,
                process_entries: settings.map_entries,
                vdso_call_entries: settings.map_entries,
                sample_hz: settings.sample_hz,
                attach: settings.attach,
                bpf_stats: settings.bpf_stats,
            },
            exact: ExactOptions {
                all: settings.exact,
                pids: settings.exact_pids.clone(),
                budget: settings
                    .governor
                    .then_some(settings.exact_budget_percent / 100.0),
            },
            thresholds,
            exited_rows: settings.exited_rows,
        }
    }
}

pub struct Session {
    observer: Observer,
    /// Whether a vDSO clock_gettime(CLOCK_MONOTONIC) stays in user space here.
    vdso_check: Option<VdsoCheck>,
    aggregator: Aggregator,
    window_start: Instant,
    health: ObserverHealthInput,
    exact: Option<ExactTracer>,
    clock_watch: ClockWatch,
    kernel: String,
    hostname: String,
    /// How full the maps were after the last drain.
    fill_after_drain: f64,
    /// The 64-bit vDSO image, for calibrating again after a clocksource change.
    image: Option<VdsoImage>,
    /// Retired keys the kernel refused to delete: tried again.
    unforgotten: Retired,
    /// The name map was ever full: some processes may never get the entry
    /// the kernel marks their end in.
    names_overflowed: bool,
    /// Pod, namespace and container names from the runtimes' files.
    runtime_names: RuntimeNames,
    /// The programs wake the session when the maps gained enough keys.
    drain_wakeup: DrainWakeup,
}

impl Session {
    pub fn start(options: SessionOptions) -> Result<Session> {
        let SessionOptions {
            load,
            exact,
            thresholds,
            exited_rows,
        } = options;
        // Before the vDSO image and the 32-bit child: nothing here is right
        // in a private PID namespace.
        crate::kernel::privileges::check_pid_namespace()?;
        let image = match VdsoImage::current() {
            Ok(image) => Some(image),
            Err(err) => {
                log::warn!("vDSO calls will not be estimated: {err:#}");
                None
            }
        };
        let image32 = vdso32::image_if_any();
        let tables = VdsoTables::of(image.as_ref(), image32.as_ref());
        // Before anything is attached: a sys_enter program slows every syscall.
        let path_costs = crate::measure::path_costs::path_costs(image.as_ref());
        let mut observer = Observer::start(
            load,
            &tables,
            &mut crate::measure::attach_choice::MeasuredJudge::default(),
        )?;
        let (vdso, vdso_check) = match image.clone() {
            Some(image) => {
                let (model, check) = calibrate::calibrate(&mut observer, image);
                (Some(model), check)
            }
            None => (None, None),
        };
        let estimator = estimator_of(vdso.as_ref());
        let health = ObserverHealthInput {
            attach_mode: observer.attach_mode(),
            probes: observer.probes().to_vec(),
            time_call_capacity: observer.options().time_call_entries,
            vdso_costs: vdso.as_ref().map(|m| m.costs.clone()).unwrap_or_default(),
            run_stats: observer.run_stats().clone(),
            path_costs,
        };
        let mut aggregator = Aggregator::new(estimator);
        aggregator.set_thresholds(thresholds);
        aggregator.set_max_exited_rows(exited_rows);
        let exact = match (exact.enabled(), &vdso) {
            (false, _) => None,
            (true, None) => anyhow::bail!(
                "exact counting (--exact, --exact-pid) needs the vDSO image, and this process has none"
            ),
            (true, Some(model)) => {
                let images = Images {
                    x86_64: model.image.clone(),
                    i386: image32,
                };
                let mut tracer = ExactTracer::start(exact, &mut observer, images)
                    .context("starting exact counting (--exact, --exact-pid)")?;
                // Attach at once, so the first window is already exact; but first
                // sample for a moment, so a hot process is never trapped at all.
                let estimates = probe_rates(&observer, vdso.as_ref());
                tracer.refresh(&mut observer, &estimates);
                Some(tracer)
            }
        };
        aggregator.prime(&observer.snapshot()?);
        let procfs::Uname {
            release: kernel,
            hostname,
        } = procfs::uname();
        // In a DaemonSet the pod's host name is the pod's: the node's name
        // comes from the downward API.
        let hostname = std::env::var("NODE_NAME")
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or(hostname);
        // Start-up (BTF parsing above all) freed tens of MB; give them back
        // (glibc keeps them; musl's allocator returns large frees by itself).
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim has no preconditions.
        unsafe {
            libc::malloc_trim(0)
        };
        let drain_wakeup = DrainWakeup::new(observer.take_drain_wakeup());
        let mut session = Session {
            observer,
            drain_wakeup,
            vdso_check,
            aggregator,
            window_start: Instant::now(),
            health,
            exact,
            clock_watch: ClockWatch::new(),
            kernel,
            hostname,
            fill_after_drain: 0.0,
            image,
            unforgotten: Retired::default(),
            names_overflowed: false,
            runtime_names: RuntimeNames::default(),
        };
        // A machine starting thousands of processes a second fills the maps
        // while the observer calibrates (2-3 s): make room before the first
        // window, or its first calls go uncounted.
        session.drain_if_filling(false)?;
        Ok(session)
    }

    /// Waits until `deadline`, letting the governor look at exact counting
    /// every tick (GOVERNOR_TICK, 50 ms) and draining the maps of exited
    /// processes when they fill meanwhile: when the programs wake the session
    /// (else checked every DRAIN_CHECK).
    pub async fn sleep_until(&mut self, deadline: tokio::time::Instant) {
        let mut next_drain_check = tokio::time::Instant::now() + self.drain_check_every();
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return;
            }
            let tick = if self.exact.is_some() {
                GOVERNOR_TICK
            } else {
                self.drain_check_every()
            };
            // A failed wait (the ring is off from then on) looks at once, as
            // the polling that follows does every DRAIN_CHECK.
            let (woken, wait_failed) = tokio::select! {
                _ = tokio::time::sleep_until(deadline.min(now + tick)) => (None, false),
                records = self.drain_wakeup.woken() => (records, records.is_none()),
            };
            if let Some(records) = woken {
                log::trace!("woken by the programs ({records} records): the maps gained keys");
            } else if let Some(tracer) = &mut self.exact {
                match self.observer.vdso_counts() {
                    // The governor runs without a budget too: it follows threads and processes.
                    Ok(counts) => tracer.govern(&mut self.observer, &counts),
                    Err(err) => log::warn!("governor: reading vDSO counts failed: {err:#}"),
                }
            }
            let now = tokio::time::Instant::now();
            if woken.is_some() || wait_failed || now >= next_drain_check {
                next_drain_check = now + self.drain_check_every();
                if let Err(err) = self.drain_if_filling(woken.is_some()) {
                    log::warn!("draining exited processes from the maps failed: {err:#}");
                }
            }
        }
    }

    /// How often the fill level is looked at without a wake-up; asked each
    /// time, so a ring that fails mid-sleep falls back to polling at once.
    fn drain_check_every(&self) -> std::time::Duration {
        if self.drain_wakeup.works() {
            DRAIN_CHECK_WOKEN
        } else {
            DRAIN_CHECK
        }
    }

    /// When a map is DRAIN_AT full, takes the counts of the processes that
    /// exited out of the maps (kept for the window's report) and deletes their
    /// keys, so fork-heavy machines lose nothing between windows. Then has the
    /// programs wake the session when another check is due.
    fn drain_if_filling(&mut self, woken: bool) -> Result<()> {
        let drained = self.drain_now_if_filling(woken);
        // Due when a map could reach the fill the next drain waits for.
        let due_at = DRAIN_AT.max(self.fill_after_drain + DRAIN_GROWTH);
        let armed = self
            .observer
            .keys_until_fill(due_at)
            .and_then(|keys| self.observer.arm_drain_trigger(keys));
        if let Err(err) = armed {
            log::debug!("arming the programs' drain wake-up: {err:#}");
        }
        drained
    }

    fn drain_now_if_filling(&mut self, woken: bool) -> Result<()> {
        let fill = self.observer.fill()?;
        // Live processes may hold the keys: drain again only after real growth.
        if fill < DRAIN_AT || fill < self.fill_after_drain + DRAIN_GROWTH {
            return Ok(());
        }
        let (liveness, snapshot) = self.liveness_and_snapshot()?;
        if liveness.gone() == 0 {
            self.fill_after_drain = fill;
            return Ok(());
        }
        self.record_cgroups();
        let retired = self.aggregator.drain(&snapshot, &liveness);
        let drained = retired.processes.len();
        self.forget(retired);
        self.fill_after_drain = self.observer.fill()?;
        log::debug!(
            "maps {:.0}% full{}: drained {} exited processes, now {:.0}%",
            fill * 100.0,
            if woken { " (the programs woke us)" } else { "" },
            drained,
            self.fill_after_drain * 100.0
        );
        if self.fill_after_drain >= 0.9 {
            log::warn!(
                "the counter maps are {:.0}% full with live processes: new ones may go uncounted \
                 (raise --map-entries)",
                self.fill_after_drain * 100.0
            );
        }
        Ok(())
    }

    /// Drops the capabilities the session no longer needs once attached: all of
    /// them, or with exact counting what attaching new probes takes (and DAC
    /// override when `writes_files` and held). Returns the names kept.
    pub fn drop_capabilities(&self, writes_files: bool) -> Result<Vec<&'static str>> {
        crate::kernel::privileges::drop_capabilities(crate::kernel::privileges::LaterNeeds {
            exact: self.exact.is_some(),
            textfile: writes_files,
        })
    }

    /// Hands the cgroup paths the kernel recorded to the lookup, before the
    /// processes of a snapshot are named (their cgroup may be gone by now).
    fn record_cgroups(&mut self) {
        match self.observer.take_recorded_cgroups() {
            Ok(recorded) => crate::host::cgroups::remember(recorded),
            Err(err) => log::debug!("reading the recorded cgroup paths: {err:#}"),
        }
    }

    /// Which processes are gone, decided before the counters are read: by the
    /// kernel's exit and exec marks, and by /proc only for processes the kernel
    /// could not mark (no name entry, or the lifetime probes not attached).
    fn liveness(&self) -> LivenessBefore {
        LivenessBefore::check(
            self.observer.process_lifetimes(),
            self.observer.marks_lifetimes(),
        )
    }

    /// Which processes are gone, and the counters. Where the kernel marks
    /// every process's end (the lifetime probes attached, the name map never
    /// full), the snapshot's own names say it: they are read before its
    /// counters, so a process marked ended made its last call before them,
    /// and one not yet named is new, and judged at the next read. Otherwise
    /// the lifetimes are read first, /proc asked for the unnamed: one more
    /// read of every map.
    fn liveness_and_snapshot(&mut self) -> Result<(LivenessBefore, MapSnapshot)> {
        if !self.observer.marks_lifetimes() || self.names_overflowed {
            let liveness = self.liveness();
            let snapshot = self.observer.snapshot()?;
            self.names_overflowed |= snapshot.stats.processes_map_full > 0;
            return Ok((liveness, snapshot));
        }
        let snapshot = self.observer.snapshot()?;
        self.names_overflowed |= snapshot.stats.processes_map_full > 0;
        let liveness = LivenessBefore::check(snapshot.ends_named_first(), true);
        Ok((liveness, snapshot))
    }

    /// Deletes what is retired from the maps, with what earlier tries left; what
    /// cannot be deleted now is tried again after the next window, and held out
    /// of the counts meanwhile (its counters would come back counted twice).
    fn forget(&mut self, retired: Retired) {
        let mut all = std::mem::take(&mut self.unforgotten);
        all.extend(retired);
        if all.is_empty() {
            return;
        }
        let left = self.observer.forget(&all);
        if !left.is_empty() {
            log::warn!(
                "{} keys of {} exited processes could not be deleted from the maps: \
                 trying again after the next window",
                left.keys.len() + left.vdso_keys.len(),
                left.processes.len()
            );
        }
        self.aggregator.hold_back(&left);
        self.unforgotten = left;
    }

    /// Ends the current window: its report, and what was dropped from the maps
    /// because the processes are gone (after this, their last report). A
    /// failed deletion does not lose the window: it is tried again.
    pub fn next_window(&mut self) -> Result<(Report, Retired)> {
        self.observer.flush_logs();
        self.watch_sample_rate();
        let (liveness, snapshot) = self.liveness_and_snapshot()?;
        self.record_cgroups();
        let window = self.window_start.elapsed();
        self.window_start = Instant::now();
        let (mut report, retired) =
            self.aggregator
                .window(&snapshot, window, self.health.clone(), &liveness);
        let retired_processes = retired.processes.clone();
        self.forget(retired);
        let retired = Retired {
            processes: retired_processes,
            ..Retired::default()
        };
        report.system = Some(self.system_report());
        self.runtime_names.name_containers(&mut report);
        if let Some(tracer) = &mut self.exact {
            // The state the window's counts were made under, then the changes.
            let states = tracer.states();
            for process in &mut report.processes {
                process.exact = states.get(&process.pid).cloned();
            }
            let estimates: HashMap<u32, f64> = report
                .processes
                .iter()
                .filter(|p| p.vdso_estimated && p.merged_processes.is_none())
                .filter_map(|p| Some((p.pid, p.vdso_calls_per_sec?)))
                .collect();
            tracer.refresh(&mut self.observer, &estimates);
        }
        Ok((report, retired))
    }

    /// The kernel lowers kernel.perf_event_max_sample_rate by itself when its
    /// perf interrupts take too long (the sampler's program runs in them):
    /// below the sampling rate it throttles the sampler, and estimates read
    /// low. Said once, and kept on the sampler's status in every report.
    fn watch_sample_rate(&mut self) {
        let Some(period_ns) = self.observer.sample_period_ns() else {
            return;
        };
        let hz = 1_000_000_000 / period_ns.max(1);
        // The rate attach chose keeps to half the bound (see attach_sampler_probe).
        let Some(max) = procfs::perf_max_sample_rate().filter(|max| *max / 2 < hz) else {
            return;
        };
        let Some(sampler) = self
            .health
            .probes
            .iter_mut()
            .find(|p| p.program == VDSO_SAMPLE_PROGRAM && p.attached)
        else {
            return;
        };
        if sampler
            .note
            .as_deref()
            .is_some_and(|n| n.starts_with("throttled"))
        {
            return;
        }
        let note = format!(
            "throttled: the kernel lowered kernel.perf_event_max_sample_rate to {max}, near \
             the {hz} Hz sampled (its perf interrupts took too long: see `perf: interrupt took \
             too long` in the kernel log); vDSO estimates read low: restart with \
             --sample-hz {} or less",
            max / 2
        );
        log::warn!("{note}");
        sampler.note = Some(note);
    }

    /// New thresholds (the daemon's SIGHUP).
    pub fn set_thresholds(&mut self, thresholds: Thresholds) {
        self.aggregator.set_thresholds(thresholds);
    }

    /// The machine's time set-up as the session knows it now, without new
    /// events (what a front end shows before its first window ends).
    pub fn system(&self) -> SystemReport {
        self.system_with(Vec::new())
    }

    /// The machine's time set-up now, with the clock events since the last
    /// window. A clocksource change calibrates again: what a vDSO call costs,
    /// and whether it stays in user space, belong to the clocksource (the
    /// next window is estimated with the new figures).
    fn system_report(&mut self) -> SystemReport {
        let events = self.clock_watch.poll();
        if events.iter().any(|e| e.kind.is_switch()) {
            for event in &events {
                log::warn!("clock event: {}", event.message);
            }
            self.recalibrate();
        }
        self.system_with(events)
    }

    fn recalibrate(&mut self) {
        let Some(image) = self.image.clone() else {
            match calibrate::recheck(&mut self.observer) {
                Ok(check) => self.vdso_check = Some(check),
                Err(err) => {
                    log::warn!("re-checking the vDSO after a clocksource change failed: {err:#}")
                }
            }
            return;
        };
        let (model, check) = calibrate::calibrate(&mut self.observer, image);
        log::info!(
            "calibrated again for the new clocksource: clock_gettime {:.1} ns per call",
            model.costs.ns(Some(TimeCall::ClockGettime))
        );
        if check.is_some() {
            self.vdso_check = check;
        }
        self.aggregator.set_estimator(estimator_of(Some(&model)));
        self.health.vdso_costs = model.costs;
        // With the observer attached now: its own tax on these syscalls is in
        // the price, as the processes pay it while it runs.
        self.health.path_costs = crate::measure::path_costs::path_costs(Some(&model.image));
    }

    fn system_with(&self, events: Vec<crate::model::ClockEvent>) -> SystemReport {
        let clocksource = clocksource::clocksource();
        let vdso_check = self.vdso_check;
        let vdso_capable = vdso_check.map(|c| c.vdso_capable()).or_else(|| {
            match clocksource.as_ref()?.vdso_capability {
                VdsoCapability::Yes => Some(true),
                VdsoCapability::No => Some(false),
                _ => None,
            }
        });
        SystemReport {
            hostname: self.hostname.clone(),
            kernel: self.kernel.clone(),
            clocksource,
            vdso_check,
            vdso_capable,
            vsyscall: clocksource::vsyscall_mode(),
            boot_settings: clocksource::boot_settings(),
            events,
            kernel_log_error: self.clock_watch.kmsg_error.clone(),
        }
    }
}

/// Samples become calls by the calibrated costs, when the sampler runs.
fn estimator_of(model: Option<&VdsoModel>) -> Option<VdsoEstimator> {
    let model = model?;
    Some(VdsoEstimator {
        costs: model.costs.clone(),
        sample_period_ns: model.sample_period_ns?,
    })
}

/// vDSO calls/s per pid from a short burst of sampling (none without sampling).
fn probe_rates(observer: &Observer, model: Option<&VdsoModel>) -> HashMap<u32, f64> {
    const PROBE: std::time::Duration = std::time::Duration::from_millis(300);
    let Some(estimator) = estimator_of(model) else {
        return HashMap::new();
    };
    let before = observer.vdso_counts().unwrap_or_default();
    std::thread::sleep(PROBE);
    let after = observer.vdso_counts().unwrap_or_default();
    let sampled: Vec<(VdsoKey, u64)> = after
        .into_iter()
        .filter(|(key, _)| key.provenance == Provenance::Sampled as u8)
        .map(|(key, count)| {
            let samples = count.saturating_sub(before.get(&key).copied().unwrap_or(0));
            (key, samples)
        })
        .collect();
    // Each process's 64-bit clock_gettime samples are split between its
    // coarse and fine reads together (see `gettime_calls`).
    let mut gettime: HashMap<u32, Vec<(&VdsoKey, u64)>> = HashMap::new();
    let mut rates: HashMap<u32, f64> = HashMap::new();
    for (key, samples) in &sampled {
        if is_gettime_sample(key) {
            gettime
                .entry(key.process.tgid)
                .or_default()
                .push((key, *samples));
            continue;
        }
        let calls = estimator.calls(
            SyscallAbi::from_repr(key.abi).unwrap_or(SyscallAbi::NATIVE),
            TimeCall::from_repr(key.call),
            *samples as f64,
        );
        *rates.entry(key.process.tgid).or_default() += calls / PROBE.as_secs_f64();
    }
    for (tgid, samples) in gettime {
        let calls = estimator.gettime_calls(GettimeSamples::of(samples));
        *rates.entry(tgid).or_default() += (calls.coarse + calls.fine) / PROBE.as_secs_f64();
    }
    rates
}
