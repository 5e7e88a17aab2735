//! One observation session, shared by every front end: the loaded programs,
//! the aggregation from window to window, exact counting and its governor, and
//! the clean-up of the dead.

use std::{collections::HashMap, time::Instant};

use anyhow::{Context as _, Result};

use crate::{
    exact::{ExactOptions, ExactTracer, GOVERNOR_TICK},
    loader::{LoadOptions, Observer},
    procfs,
    report::{
        Aggregator, ObserverHealthInput, Report, Retired, SystemReport, Thresholds, VdsoEstimator,
    },
    system::{self, ClockWatch, VdsoCapability},
};

/// What a session loads and counts.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    pub load: LoadOptions,
    pub exact: ExactOptions,
    pub thresholds: Thresholds,
}

pub struct Session {
    pub observer: Observer,
    aggregator: Aggregator,
    window_start: Instant,
    health: ObserverHealthInput,
    exact: Option<ExactTracer>,
    clock_watch: ClockWatch,
}

impl Session {
    pub fn start(options: SessionOptions) -> Result<Session> {
        let SessionOptions {
            load,
            exact,
            thresholds,
        } = options;
        let mut observer = Observer::start(load)?;
        let health = ObserverHealthInput {
            probes: observer.probes.clone(),
            time_call_capacity: observer.options.time_call_entries,
        };
        let mut aggregator = Aggregator::new(VdsoEstimator::from_model(observer.vdso.as_ref()));
        aggregator.set_thresholds(thresholds);
        let exact = if exact.enabled() {
            let mut tracer = ExactTracer::start(exact, &mut observer)
                .context("starting exact counting (--exact, --exact-pid)")?;
            // Attach at once, so the first window is already exact; but first
            // sample for a moment, so a hot process is never trapped at all.
            let estimates = probe_rates(&observer);
            tracer.refresh(&mut observer, &estimates);
            Some(tracer)
        } else {
            None
        };
        aggregator.prime(&observer.snapshot()?);
        // Start-up (BTF parsing above all) freed tens of MB; give them back.
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        Ok(Session {
            observer,
            aggregator,
            window_start: Instant::now(),
            health,
            exact,
            clock_watch: ClockWatch::new(),
        })
    }

    /// Waits until `deadline`, letting the governor look at exact counting
    /// every few hundred ms meanwhile.
    pub async fn sleep_until(&mut self, deadline: tokio::time::Instant) {
        let Some(tracer) = &mut self.exact else {
            tokio::time::sleep_until(deadline).await;
            return;
        };
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.min(now + GOVERNOR_TICK)).await;
            match self.observer.vdso_counts() {
                // The governor runs without a budget too: it follows threads and processes.
                Ok(counts) => tracer.govern(&mut self.observer, &counts),
                Err(err) => log::warn!("governor: reading vDSO counts failed: {err:#}"),
            }
        }
    }

    /// Ends the current window: its report, and what was dropped from the maps
    /// because the processes are gone (after this, their last report).
    pub fn next_window(&mut self) -> Result<(Report, Retired)> {
        let snapshot = self.observer.snapshot()?;
        let window = self.window_start.elapsed();
        self.window_start = Instant::now();
        let (mut report, retired) =
            self.aggregator
                .window(&snapshot, window, self.health.clone(), procfs::is_running);
        self.observer
            .forget(&retired.processes, &retired.keys, &retired.vdso_keys)
            .context("dropping the counters of exited processes")?;
        report.system = Some(self.system_report());
        if let Some(tracer) = &mut self.exact {
            let estimates: HashMap<u32, f64> = report
                .processes
                .iter()
                .filter(|p| p.vdso_estimated)
                .filter_map(|p| Some((p.pid, p.vdso_calls_per_sec?)))
                .collect();
            // The state the window's counts were made under, then the changes.
            tracer.annotate(&mut report);
            tracer.refresh(&mut self.observer, &estimates);
        }
        Ok((report, retired))
    }
}

impl Session {
    /// The machine's time set-up now, with the clock events since the last
    /// window; a clocksource change triggers a new measured check.
    fn system_report(&mut self) -> SystemReport {
        let events = self.clock_watch.poll();
        if events
            .iter()
            .any(|e| e.kind == "switched" || e.kind == "sysfs_change")
        {
            for event in &events {
                log::warn!("clock event: {}", event.message);
            }
            if let Err(err) = self.observer.recheck_vdso() {
                log::warn!("re-checking the vDSO after a clocksource change failed: {err:#}");
            }
        }
        let clocksource = system::clocksource();
        let vdso_check = self.observer.vdso_check;
        let vdso_capable = vdso_check.map(|c| c.vdso_capable()).or_else(|| {
            match clocksource.as_ref()?.vdso_capability {
                VdsoCapability::Yes => Some(true),
                VdsoCapability::No => Some(false),
                _ => None,
            }
        });
        SystemReport {
            clocksource,
            vdso_check,
            vdso_capable,
            vsyscall: system::vsyscall_mode(),
            boot_settings: system::boot_settings(),
            events,
            kernel_log_error: self.clock_watch.kmsg_error.clone(),
        }
    }

    /// New thresholds (the daemon's SIGHUP).
    pub fn set_thresholds(&mut self, thresholds: Thresholds) {
        self.aggregator.set_thresholds(thresholds);
    }
}

/// vDSO calls/s per pid from a short burst of sampling (none without sampling).
fn probe_rates(observer: &Observer) -> HashMap<u32, f64> {
    const PROBE: std::time::Duration = std::time::Duration::from_millis(300);
    let Some(estimator) = VdsoEstimator::from_model(observer.vdso.as_ref()) else {
        return HashMap::new();
    };
    let before = observer.vdso_counts().unwrap_or_default();
    std::thread::sleep(PROBE);
    let after = observer.vdso_counts().unwrap_or_default();
    let mut rates: HashMap<u32, f64> = HashMap::new();
    for (key, count) in after {
        if key.provenance != vdso_observer_common::Provenance::Sampled as u8 {
            continue;
        }
        let samples = count.saturating_sub(before.get(&key).copied().unwrap_or(0));
        let call = vdso_observer_common::TimeCall::from_u8(key.call);
        *rates.entry(key.process.tgid).or_default() +=
            estimator.calls(call, samples) / PROBE.as_secs_f64();
    }
    rates
}
