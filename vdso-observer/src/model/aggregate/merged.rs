//! Exited processes past the window's row limit, merged by who they were
//! (comm, uid, cgroup). A build server or a fork-per-request service ends
//! thousands of processes a second: one row each would hold tens of MB per
//! window. Past the limit each kind of process gets one row (pid 0,
//! `merged_processes` = how many), with every count kept whole.

use std::collections::BTreeMap;

use vdso_observer_common::{COMM_LEN, CallKey, ProcessInfo, ProcessKey, VdsoKey};

use super::{Deltas, Identity, KeyMap};

/// Distinct merged rows a window may hold: past it (a tenant naming every
/// process anew) the rest merge into one unnamed row.
pub(super) const MAX_GROUPS: usize = 256;

#[derive(Debug, Default)]
pub(super) struct MergedExits {
    groups: BTreeMap<Identity, Group>,
    /// The group of each raw name seen this window: past the row limit a
    /// churn of thousands a second is named once per kind, not per process.
    by_name: KeyMap<RawName, Identity>,
}

/// A process as the kernel's name map holds it, before it is made text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RawName {
    comm: [u8; COMM_LEN],
    uid: u32,
    cgroup_id: u64,
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
        let identity = self.group_of(identity);
        self.groups.entry(identity).or_default().add(deltas);
    }

    /// Adds the counts of an exited process known by its entry in the name
    /// map only; `identity` names it, called once per raw name a window.
    pub(super) fn add_named(
        &mut self,
        info: &ProcessInfo,
        identity: impl FnOnce() -> Identity,
        deltas: &Deltas,
    ) {
        let raw = RawName {
            comm: info.comm,
            uid: info.uid,
            cgroup_id: info.cgroup_id,
        };
        if let Some(identity) = self.by_name.get(&raw)
            && let Some(group) = self.groups.get_mut(identity)
        {
            group.add(deltas);
            return;
        }
        let identity = self.group_of(identity());
        self.by_name.insert(raw, identity.clone());
        self.groups.entry(identity).or_default().add(deltas);
    }

    /// The group `identity` merges into: its own, or past MAX_GROUPS kinds
    /// the unnamed one.
    fn group_of(&self, identity: Identity) -> Identity {
        if self.groups.len() >= MAX_GROUPS && !self.groups.contains_key(&identity) {
            Identity::unknown()
        } else {
            identity
        }
    }

    /// The window's merged rows (who, how many processes, their counts); empties this.
    pub(super) fn take(&mut self) -> impl Iterator<Item = (Identity, u32, Deltas)> {
        self.by_name.clear();
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

impl Group {
    fn add(&mut self, deltas: &Deltas) {
        self.processes += 1;
        let anonymous = ProcessKey::default();
        for &(key, count) in &deltas.calls {
            *self
                .calls
                .entry(CallKey {
                    process: anonymous,
                    ..key
                })
                .or_default() += count;
        }
        for &(key, count) in &deltas.vdso {
            *self
                .vdso
                .entry(VdsoKey {
                    process: anonymous,
                    ..key
                })
                .or_default() += count;
        }
        self.lost += deltas.lost;
    }
}
