//! The domain, as data: what a window says about processes and the machine,
//! and the pure steps that make it (aggregation, classification). It imports
//! nothing of this crate outside `model` and only the common crate besides std
//! and serde: every other layer builds on it.

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

pub use aggregate::{
    Aggregator, MAX_EXITED_ROWS, ObserverHealthInput, ProcessLookup, Retired, VdsoEstimator,
};
pub use container::{Container, ContainerNames, Runtime};
pub use exact::{EntryPoint, ExactState, ExactStatus};
pub use observer::{
    AttachMode, KeysCreated, MapSnapshot, ObserverStats, ProbeStatus, ProgramRuns, RunStats,
    VdsoCheck,
};
pub use reason::FallbackReason;
pub use report::{CallCount, ProcessReport, Report, SystemReport, Thresholds, VdsoFunction};
pub use system::{
    ClockEvent, ClockEventKind, ClocksourceState, VdsoCapability, VsyscallMode,
    clocksource_vdso_capability,
};
