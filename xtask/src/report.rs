//! The observer's JSON (`top --json`, `doctor --json`) as its own types, read
//! through the library target: a renamed or retyped field fails here, by name.

use anyhow::{Context as _, Result};
pub use vdso_observer::model::{FallbackReason, ProcessReport, Report, diagnosis::Diagnosis};
use vdso_observer_common::{Origin, TimeCall};

pub fn parse_report(json: &str) -> Result<Report> {
    serde_json::from_str(json).with_context(|| format!("not a report: {json}"))
}

pub fn parse_diagnosis(json: &str) -> Result<Diagnosis> {
    serde_json::from_str(json).with_context(|| format!("not a diagnosis: {json}"))
}

/// The first row of `pid` (rows are sorted by kernel entries, most first).
pub fn row_of_pid(report: &Report, pid: u32) -> Option<&ProcessReport> {
    report.processes.iter().find(|r| r.pid == pid)
}

/// Kernel entries of one (call, clock, origin) of a row; any clock when None.
pub fn count(row: &ProcessReport, call: TimeCall, clock: Option<&str>, origin: Origin) -> u64 {
    row.calls
        .iter()
        .filter(|c| {
            c.call == call
                && c.origin == origin
                && clock.is_none_or(|k| c.clock.as_deref() == Some(k))
        })
        .map(|c| c.count)
        .sum()
}

/// Whether a row is flagged for `reason`.
pub fn flagged(row: &ProcessReport, reason: FallbackReason) -> bool {
    row.flags.contains(&reason)
}
