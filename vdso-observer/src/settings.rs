//! What the observer loads and counts (every option `top` takes), and one rule
//! for intervals: shared by the command line, the daemon's file and the session.

use std::{path::PathBuf, time::Duration};

use anyhow::{Result, bail};

pub use crate::model::AttachMode;
use crate::model::Thresholds;

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

/// `HOST:PORT`, or `:PORT` for every IPv4 address (as Go programs such as
/// node_exporter take it).
pub fn parse_listen(text: &str) -> Result<std::net::SocketAddr, String> {
    let full = match text.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => text.to_owned(),
    };
    full.parse()
        .map_err(|_| format!("{text:?}: HOST:PORT (127.0.0.1:9736, [::1]:9736) or :PORT"))
}

/// `--attach MODE`: the names of [`AttachMode`], each with what it does in
/// `--help` (and in completions).
pub fn attach_mode_parser() -> impl clap::builder::TypedValueParser<Value = AttachMode> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser as _};
    let value = |mode: AttachMode, help: &'static str| PossibleValue::new(mode.name()).help(help);
    PossibleValuesParser::new([
        value(
            AttachMode::Auto,
            "fentry where the kernel allows it; else kprobes or the raw tracepoint, \
             whichever costs less here (measured at start)",
        ),
        value(
            AttachMode::Fentry,
            "BPF trampolines on the time syscalls' kernel functions: no other syscall pays",
        ),
        value(
            AttachMode::Kprobe,
            "kprobes on the same functions: no other syscall pays, a time call more",
        ),
        value(
            AttachMode::RawTracepoint,
            "raw_syscalls:sys_enter: works everywhere; every syscall pays",
        ),
    ])
    .map(|name| AttachMode::parse(&name).expect("one of the possible values"))
}

/// Every default of what the observer loads and counts, in one place: the
/// settings, the command line's help and the shipped config file print these.
pub mod defaults {
    use std::time::Duration;

    pub const BTF: &str = crate::kernel::btf_offsets::VMLINUX_BTF;
    /// Entries of each counter map (time calls, processes, vDSO calls).
    pub const MAP_ENTRIES: u32 = vdso_observer_common::DEFAULT_TIME_CALL_ENTRIES;
    pub const SAMPLE_HZ: u64 = crate::kernel::object::DEFAULT_SAMPLE_HZ;
    pub const EXITED_ROWS: usize = crate::model::MAX_EXITED_ROWS;
    pub const EXACT_BUDGET_PERCENT: f64 = 2.0;
    pub const MIN_RATE_PER_SEC: f64 = 0.0;
    /// A fraction, as JSON's `kernel_share`.
    pub const MIN_KERNEL_SHARE: f64 = 0.0;
    /// The daemon's window.
    pub const INTERVAL: Duration = Duration::from_secs(15);
}

/// What the observer loads and counts, every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ObserverSettings {
    pub btf: PathBuf,
    /// Capacity of each kernel counter map.
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
    /// Exited processes a window reports one row each; the rest merge by name.
    pub exited_rows: usize,
}

impl Default for ObserverSettings {
    fn default() -> Self {
        ObserverSettings {
            btf: PathBuf::from(defaults::BTF),
            map_entries: defaults::MAP_ENTRIES,
            sample_hz: defaults::SAMPLE_HZ,
            exact: false,
            exact_pids: Vec::new(),
            exact_budget_percent: defaults::EXACT_BUDGET_PERCENT,
            governor: true,
            attach: AttachMode::Auto,
            bpf_stats: false,
            exited_rows: defaults::EXITED_ROWS,
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

/// The observer options `top`, `daemon` and the daemon's `[observer]` section
/// share, declared once: the same fields are the command line (clap) and the
/// file (serde). None where nobody said anything; [`ObserverValues::apply`] is
/// the one merge rule (a value given wins, field by field).
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ObserverValues {
    #[arg(long, help = format!("Kernel BTF to read structure offsets from [default: {}]", defaults::BTF))]
    pub btf: Option<PathBuf>,
    #[arg(long, help = format!(
        "Capacity of each kernel counter map (entries per process, call, clock and origin); \
         when one is full, further new entries are counted as lost and reported [default: {}]",
        defaults::MAP_ENTRIES
    ))]
    pub map_entries: Option<u32>,
    #[arg(long, help = format!(
        "cpu-clock samples a second on each CPU for the estimate of vDSO-answered calls; \
         0 turns the estimate off; at most half of kernel.perf_event_max_sample_rate, and {} \
         in a virtual machine (doctor says why) [default: {}]",
        crate::kernel::sample_rate::GUEST_MOST_HZ,
        defaults::SAMPLE_HZ
    ))]
    pub sample_hz: Option<u64>,
    /// Count vDSO-answered calls exactly in every process (uprobes on libc/Go entry
    /// points, hardware breakpoints for the rest); costs microseconds a call.
    #[arg(long, num_args = 0, default_missing_value = "true")]
    pub exact: Option<bool>,
    /// Count exactly only in these processes (repeatable).
    #[arg(long = "exact-pid", value_name = "PID")]
    pub exact_pids: Option<Vec<u32>>,
    #[arg(long = "exact-budget", value_name = "PERCENT", help = format!(
        "Largest share of a process's CPU time exact counting may cost before the \
         governor detaches it, in percent [default: {}]",
        defaults::EXACT_BUDGET_PERCENT
    ))]
    pub exact_budget_percent: Option<f64>,
    /// Never detach exact counting, whatever it costs.
    #[arg(long = "no-governor", num_args = 0, default_missing_value = "false")]
    pub governor: Option<bool>,
    /// Where time syscalls are counted [default: auto].
    #[arg(long, value_name = "MODE", value_parser = attach_mode_parser())]
    pub attach: Option<AttachMode>,
    /// Have the kernel measure the observer's own programs (runs, run time:
    /// vdso_observer_bpf_run_seconds_total); costs every run of every program
    /// two clock reads, on every syscall in raw-tracepoint mode.
    #[arg(long, num_args = 0, default_missing_value = "true")]
    pub bpf_stats: Option<bool>,
    #[arg(long, value_name = "ROWS", help = format!(
        "Exited processes a window reports one row each (a sixteenth of them at most \
         of one name, user and cgroup); past it they merge into one row per name, user \
         and cgroup (pid 0, merged_processes), so a machine ending thousands of \
         processes a second costs bounded memory [default: {}]",
        defaults::EXITED_ROWS
    ))]
    pub exited_rows: Option<usize>,
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
        if let Some(rows) = self.exited_rows {
            settings.exited_rows = rows;
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
            exited_rows: Some(settings.exited_rows),
        }
    }
}

/// When a fault becomes a flag, as given on the command line or in the
/// daemon's `[thresholds]` section: one declaration for both, like
/// [`ObserverValues`].
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdValues {
    #[arg(long = "min-rate", value_name = "PER_SEC", help = format!(
        "Flag a fault only from this many kernel entries a second for it [default: {}]",
        defaults::MIN_RATE_PER_SEC
    ))]
    pub min_rate_per_sec: Option<f64>,
    #[arg(long = "min-kernel-share", value_name = "SHARE", help = format!(
        "Flag a fault only when at least this share of the process's time calls \
         entered the kernel (when vDSO calls are known): a fraction as JSON's \
         kernel_share (0.25) or a percent (25%) [default: {}]",
        defaults::MIN_KERNEL_SHARE
    ))]
    pub min_kernel_share: Option<Share>,
    /// The same in percent, as files before 0.2 gave it (the file only).
    #[arg(skip)]
    #[serde(
        default,
        skip_serializing,
        deserialize_with = "percent_of_the_old_files"
    )]
    pub min_kernel_share_percent: Option<f64>,
}

/// A share of a whole, 0 to 1, as JSON's `kernel_share` is one: written as a
/// fraction (`0.25`) or a percent (`"25%"`); anything outside is refused with
/// both spellings named.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(transparent)]
pub struct Share(pub f64);

impl std::str::FromStr for Share {
    type Err = String;

    fn from_str(text: &str) -> Result<Share, String> {
        let text = text.trim();
        let (number, scale) = match text.strip_suffix('%') {
            Some(percent) => (percent.trim(), 100.0),
            None => (text, 1.0),
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?}: a fraction (0.25) or a percent (25%)"))?;
        Share::of(value / scale).ok_or_else(|| {
            format!("{text} is outside 0 to 1 (0% to 100%): a fraction (0.25) or a percent (25%)")
        })
    }
}

impl Share {
    fn of(value: f64) -> Option<Share> {
        (0.0..=1.0).contains(&value).then_some(Share(value))
    }
}

impl<'de> serde::Deserialize<'de> for Share {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Share, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(f64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Number(value) => Share::of(value).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{value} is outside 0 to 1: a fraction (0.25) or a percent (\"25%\")"
                ))
            }),
            Written::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

fn percent_of_the_old_files<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<f64>, D::Error> {
    let percent = <f64 as serde::Deserialize>::deserialize(deserializer)?;
    if !(0.0..=100.0).contains(&percent) {
        return Err(serde::de::Error::custom(format!(
            "min_kernel_share_percent = {percent} is outside 0 to 100 \
             (min_kernel_share = 0.25 or \"25%\" says it the current way)"
        )));
    }
    Ok(Some(percent))
}

impl ThresholdValues {
    /// Each threshold given over `thresholds`, on its own.
    pub fn apply(&self, thresholds: &mut Thresholds) {
        if let Some(rate) = self.min_rate_per_sec {
            thresholds.min_rate_per_sec = rate;
        }
        match (self.min_kernel_share, self.min_kernel_share_percent) {
            (Some(Share(share)), _) => thresholds.min_kernel_share = share,
            (None, Some(percent)) => thresholds.min_kernel_share = percent / 100.0,
            (None, None) => {}
        }
    }

    pub fn of(thresholds: &Thresholds) -> ThresholdValues {
        ThresholdValues {
            min_rate_per_sec: Some(thresholds.min_rate_per_sec),
            min_kernel_share: Some(Share(thresholds.min_kernel_share)),
            min_kernel_share_percent: None,
        }
    }
}

/// What `top` and `daemon` take on the command line for the observer and its
/// thresholds; None where it said nothing.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ObserverOverrides {
    #[command(flatten)]
    pub observer: ObserverValues,
    #[command(flatten)]
    pub thresholds: ThresholdValues,
}

impl ObserverOverrides {
    /// The command line over `settings` and `thresholds`, field by field.
    pub fn apply(&self, settings: &mut ObserverSettings, thresholds: &mut Thresholds) {
        self.observer.apply(settings);
        self.thresholds.apply(thresholds);
    }
}
