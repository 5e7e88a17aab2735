//! The state of exact vDSO-call counting for one process, as reports show it.

use serde::{Deserialize, Serialize};
use vdso_observer_common::TimeCall;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

impl<'de> Deserialize<'de> for EntryPoint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        EntryPoint::parse(&text).ok_or_else(|| {
            serde::de::Error::invalid_value(
                serde::de::Unexpected::Str(&text),
                &"uprobe:FILE:SYMBOL or breakpoint:CALL",
            )
        })
    }
}

impl EntryPoint {
    /// The entry point a [`Display`](std::fmt::Display) string names (a file
    /// name may hold `:`; a symbol does not).
    pub fn parse(text: &str) -> Option<EntryPoint> {
        if let Some(call) = text.strip_prefix("breakpoint:") {
            return TimeCall::from_name(call).map(EntryPoint::Breakpoint);
        }
        let (file, symbol) = text.strip_prefix("uprobe:")?.rsplit_once(':')?;
        Some(EntryPoint::Uprobe {
            file: file.into(),
            symbol: symbol.into(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExactState {
    pub state: ExactStatus,
    pub entry_points: Vec<EntryPoint>,
    /// Probe cost as a share of the process's CPU time (last measured or predicted).
    pub overhead: Option<f64>,
    pub note: Option<String>,
}
