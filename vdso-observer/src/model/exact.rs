//! The state of exact vDSO-call counting for one process, as reports show it.

use serde::Serialize;
use vdso_observer_common::TimeCall;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExactStatus {
    /// Probes are attached and count every call.
    Traced,
    /// Left to the estimate: the probes would cost (or cost) more than the budget.
    OverBudget,
    /// Attaching failed (see the note).
    Failed,
}

/// Where exact counting hears a process's calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryPoint {
    /// A uprobe on a caller's entry point: a library or executable, and its symbol.
    Uprobe { file: String, symbol: String },
    /// A hardware execute breakpoint on the vDSO function of a call.
    Breakpoint(TimeCall),
}

impl std::fmt::Display for EntryPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntryPoint::Uprobe { file, symbol } => write!(f, "uprobe:{file}:{symbol}"),
            EntryPoint::Breakpoint(call) => write!(f, "breakpoint:{}", call.name()),
        }
    }
}

/// JSON keeps the one-string form: `uprobe:/usr/lib/x86_64-linux-gnu/libc.so.6:clock_gettime`,
/// `breakpoint:gettimeofday`.
impl Serialize for EntryPoint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExactState {
    pub state: ExactStatus,
    pub entry_points: Vec<EntryPoint>,
    /// Probe cost as a share of the process's CPU time (last measured or predicted).
    pub overhead: Option<f64>,
    pub note: Option<String>,
}
