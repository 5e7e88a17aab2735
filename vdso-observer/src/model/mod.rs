//! The domain, as data: what a window says about processes and the machine,
//! and the pure steps that make it (aggregation, classification). It imports
//! nothing of this crate outside `model` and only the common crate besides std,
//! serde and foldhash: every other layer builds on it.

pub mod aggregate;
pub mod clocks;
pub mod comm;
pub mod container;
pub mod costs;
pub mod diagnosis;
pub mod exact;
pub mod observer;
pub mod reason;
pub mod report;
pub mod system;

/// A hash map keyed by what the kernel counts (processes, call keys, cgroup
/// ids): tens of thousands of inserts and lookups a second under churn, where
/// std's SipHash was a tenth of the daemon's CPU. foldhash is seeded per
/// process, so a tenant cannot aim its keys at one bucket.
pub type KeyMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub use aggregate::{
    Aggregator, GettimeCalls, GettimeSamples, MAX_EXITED_ROWS, ObserverHealthInput, ProcessLookup,
    Retired, VdsoEstimator, is_gettime_sample,
};
pub use container::{Container, ContainerNames, Runtime};
pub use exact::{EntryPoint, ExactState, ExactStatus};
pub use observer::{
    AttachMode, ExitHandoffs, KeysCreated, MapSnapshot, ObserverStats, ProbeStatus, ProgramRuns,
    RunStats, VdsoCheck,
};
pub use reason::FallbackReason;
pub use report::{CallCount, ProcessReport, Report, SystemReport, Thresholds, VdsoFunction};
pub use system::{
    ClockEvent, ClockEventKind, ClocksourceState, VdsoCapability, VsyscallMode,
    clocksource_vdso_capability,
};
