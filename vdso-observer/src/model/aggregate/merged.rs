//! Exited processes past the window's row limit, merged by who they were
//! (comm, uid, cgroup). A build server or a fork-per-request service ends
//! thousands of processes a second: one row each would hold tens of MB per
//! window. Past the limit each kind of process gets one row (pid 0,
//! `merged_processes` = how many), with every count kept whole.

use std::collections::BTreeMap;

use vdso_observer_common::{CallKey, ProcessKey, VdsoKey};

use super::{Deltas, Identity};

/// Distinct merged rows a window may hold: past it (a tenant naming every
/// process anew) the rest merge into one unnamed row.
pub(super) const MAX_GROUPS: usize = 256;

#[derive(Debug, Default)]
pub(super) struct MergedExits {
    groups: BTreeMap<Identity, Group>,
}

#[derive(Debug, Default)]
struct Group {
    processes: u32,
    /// Counts by key with the process left out (every key's `process` is zero).
    calls: BTreeMap<CallKey, u64>,
    vdso: BTreeMap<VdsoKey, u64>,
    lost: u64,
}

impl MergedExits {
    /// Adds an exited process's counts to its kind's row.
    pub(super) fn add(&mut self, identity: Identity, deltas: &Deltas) {
        let identity = if self.groups.len() >= MAX_GROUPS && !self.groups.contains_key(&identity) {
            Identity::unknown()
        } else {
            identity
        };
        let group = self.groups.entry(identity).or_default();
        group.processes += 1;
        let anonymous = ProcessKey::default();
        for &(key, count) in &deltas.calls {
            *group
                .calls
                .entry(CallKey {
                    process: anonymous,
                    ..key
                })
                .or_default() += count;
        }
        for &(key, count) in &deltas.vdso {
            *group
                .vdso
                .entry(VdsoKey {
                    process: anonymous,
                    ..key
                })
                .or_default() += count;
        }
        group.lost += deltas.lost;
    }

    /// The window's merged rows (who, how many processes, their counts); empties this.
    pub(super) fn take(&mut self) -> impl Iterator<Item = (Identity, u32, Deltas)> {
        std::mem::take(&mut self.groups)
            .into_iter()
            .map(|(identity, group)| {
                let deltas = Deltas {
                    calls: group.calls.into_iter().collect(),
                    vdso: group.vdso.into_iter().collect(),
                    lost: group.lost,
                };
                (identity, group.processes, deltas)
            })
    }
}
