//! What the observer loads and counts (every option `top` takes), and one rule
//! for intervals: shared by the command line, the daemon's file and the session.

use std::{path::PathBuf, time::Duration};

use anyhow::{Result, bail};

pub use crate::model::AttachMode;
use crate::{kernel::btf_offsets::VMLINUX_BTF, model::Thresholds};

/// The shortest window or interval: shorter says nothing the 50 ms governor
/// tick and the counters' read cost would not swamp.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// One rule for every interval, on the command line and in the file.
pub fn check_interval(interval: Duration) -> Result<(), String> {
    if interval < MIN_INTERVAL {
        return Err(format!(
            "{} is too short: at least {}",
            humantime::format_duration(interval),
            humantime::format_duration(MIN_INTERVAL)
        ));
    }
    Ok(())
}

/// `--attach MODE`: one of the names of [`AttachMode`].
pub fn parse_attach_mode(text: &str) -> Result<AttachMode, String> {
    AttachMode::parse(text).ok_or_else(|| {
        format!(
            "one of {}",
            AttachMode::ALL.map(AttachMode::name).join(", ")
        )
    })
}

/// What the observer loads and counts.
#[derive(Debug, Clone, PartialEq)]
pub struct ObserverSettings {
    pub btf: PathBuf,
    /// Capacity of the kernel counter map.
    pub map_entries: u32,
    /// cpu-clock samples a second on each CPU; 0 turns the estimate off.
    pub sample_hz: u64,
    /// Exact counting in every process.
    pub exact: bool,
    /// Exact counting in these processes.
    pub exact_pids: Vec<u32>,
    /// Largest share of a process's CPU time exact counting may cost, percent.
    pub exact_budget_percent: f64,
    /// Whether the governor may detach exact counting over budget.
    pub governor: bool,
    /// Where time syscalls are counted.
    pub attach: AttachMode,
    /// The kernel measures the programs' own run time (BPF_ENABLE_STATS).
    pub bpf_stats: bool,
}

impl Default for ObserverSettings {
    fn default() -> Self {
        ObserverSettings {
            btf: PathBuf::from(VMLINUX_BTF),
            map_entries: vdso_observer_common::DEFAULT_TIME_CALL_ENTRIES,
            sample_hz: crate::kernel::object::DEFAULT_SAMPLE_HZ,
            exact: false,
            exact_pids: Vec::new(),
            exact_budget_percent: 2.0,
            governor: true,
            attach: AttachMode::Auto,
            bpf_stats: false,
        }
    }
}

impl ObserverSettings {
    pub fn validate(&self) -> Result<()> {
        if self.map_entries == 0 {
            bail!("map_entries (--map-entries) must be at least 1");
        }
        if !(self.exact_budget_percent > 0.0 && self.exact_budget_percent <= 100.0) {
            bail!("exact_budget_percent (--exact-budget) must be more than 0 and at most 100");
        }
        Ok(())
    }
}

/// Observer settings someone gave (the command line, the daemon's `[observer]`
/// section); None where they said nothing.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ObserverValues {
    pub btf: Option<PathBuf>,
    pub map_entries: Option<u32>,
    pub sample_hz: Option<u64>,
    pub exact: Option<bool>,
    pub exact_pids: Option<Vec<u32>>,
    pub exact_budget_percent: Option<f64>,
    pub governor: Option<bool>,
    pub attach: Option<AttachMode>,
    pub bpf_stats: Option<bool>,
}

impl ObserverValues {
    /// The values given over `settings`, field by field.
    pub fn apply(&self, settings: &mut ObserverSettings) {
        if let Some(btf) = &self.btf {
            settings.btf = btf.clone();
        }
        if let Some(entries) = self.map_entries {
            settings.map_entries = entries;
        }
        if let Some(hz) = self.sample_hz {
            settings.sample_hz = hz;
        }
        if let Some(exact) = self.exact {
            settings.exact = exact;
        }
        if let Some(pids) = &self.exact_pids {
            settings.exact_pids = pids.clone();
        }
        if let Some(budget) = self.exact_budget_percent {
            settings.exact_budget_percent = budget;
        }
        if let Some(governor) = self.governor {
            settings.governor = governor;
        }
        if let Some(attach) = self.attach {
            settings.attach = attach;
        }
        if let Some(stats) = self.bpf_stats {
            settings.bpf_stats = stats;
        }
    }

    /// Every field given: what `settings` say.
    pub fn of(settings: &ObserverSettings) -> ObserverValues {
        ObserverValues {
            btf: Some(settings.btf.clone()),
            map_entries: Some(settings.map_entries),
            sample_hz: Some(settings.sample_hz),
            exact: Some(settings.exact),
            exact_pids: Some(settings.exact_pids.clone()),
            exact_budget_percent: Some(settings.exact_budget_percent),
            governor: Some(settings.governor),
            attach: Some(settings.attach),
            bpf_stats: Some(settings.bpf_stats),
        }
    }
}

/// Values given on the command line; None where it said nothing.
#[derive(Debug, Clone, Default)]
pub struct ObserverOverrides {
    pub observer: ObserverValues,
    pub min_rate_per_sec: Option<f64>,
    pub min_kernel_share_percent: Option<f64>,
}

impl ObserverOverrides {
    /// The command line over `settings` and `thresholds`, field by field.
    pub fn apply(&self, settings: &mut ObserverSettings, thresholds: &mut Thresholds) {
        self.observer.apply(settings);
        if let Some(rate) = self.min_rate_per_sec {
            thresholds.min_rate_per_sec = rate;
        }
        if let Some(share) = self.min_kernel_share_percent {
            thresholds.min_kernel_share = share / 100.0;
        }
    }
}
