//! Reading the maps (counters, names and lifetimes, self-statistics, recorded
//! cgroups) and forgetting what is gone: keys deleted, time-call slots zeroed
//! and handed back to the programs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{Context as _, Result};
use aya::maps::{MapError, PerCpuValues};
use vdso_observer_common::{
    CallKey, ObserverStat, ProcessEnd, ProcessKey, SLOT_GENERATION_MAP, TIME_CALL_COUNTS_MAP,
    VdsoKey,
};

use super::observer::Observer;
use crate::model::{KeysCreated, MapSnapshot, ObserverStats, Retired};

impl Observer {
    /// Reads every counter, name and self-statistic. Names (with the kernel's
    /// lifetime marks) first: an image marked ended then made its last call
    /// before the counters are read.
    pub fn snapshot(&self) -> Result<MapSnapshot> {
        let mut snapshot = MapSnapshot::default();
        for entry in self.maps.processes.iter() {
            let Ok((key, info)) = entry else { continue };
            snapshot.names.insert(key, info);
        }
        snapshot.calls = self.time_call_counts()?;
        for entry in self.maps.vdso_calls.iter() {
            let Ok((key, per_cpu)) = entry else { continue };
            snapshot.vdso.insert(key, per_cpu.iter().sum());
        }
        // A process that made its first counter between the two reads (a
        // short child, gone before /proc could name it) has one now: read.
        let unnamed: BTreeSet<ProcessKey> = snapshot
            .calls
            .keys()
            .map(|key| key.process)
            .chain(snapshot.vdso.keys().map(|key| key.process))
            .filter(|process| !snapshot.names.contains_key(process))
            .collect();
        for process in unnamed {
            if let Ok(info) = self.maps.processes.get(&process, 0) {
                snapshot.names.insert(process, info);
            }
        }
        let stat = |which| self.stat(which);
        snapshot.stats = ObserverStats {
            time_calls_map_full: stat(ObserverStat::TimeCallsMapFull)?,
            processes_map_full: stat(ObserverStat::ProcessesMapFull)?,
            read_failed: stat(ObserverStat::ReadFailed)?,
            vdso_calls_map_full: stat(ObserverStat::VdsoCallsMapFull)?,
            vdso_samples_unattributed: stat(ObserverStat::VdsoSampleUnattributed)?,
        };
        snapshot.keys_created = self.keys_created()?;
        snapshot.overflowed_keys = stat(ObserverStat::ProcessKeyCap)?;
        snapshot.programs = self.program_runs();
        Ok(snapshot)
    }

    /// Every time-call counter: each key's slot, then the slot's per-CPU counts.
    fn time_call_counts(&self) -> Result<HashMap<CallKey, u64>> {
        let mut calls = HashMap::new();
        for entry in self.maps.time_calls.iter() {
            // A key deleted between listing and lookup is simply gone.
            let Ok((key, slot)) = entry else { continue };
            let per_cpu = self
                .maps
                .time_call_counts
                .get(&slot, 0)
                .with_context(|| format!("reading {TIME_CALL_COUNTS_MAP}[{slot}]"))?;
            calls.insert(key, per_cpu.iter().sum());
        }
        Ok(calls)
    }

    /// Keys created per counter map since load: one cheap read, polled
    /// between windows to drain the maps before they fill.
    pub fn keys_created(&self) -> Result<KeysCreated> {
        Ok(KeysCreated {
            time_calls: self.stat(ObserverStat::TimeKeysCreated)?,
            vdso_calls: self.stat(ObserverStat::VdsoKeysCreated)?,
            processes: self.stat(ObserverStat::ProcessesCreated)?,
        })
    }

    /// One self-statistic, summed over the CPUs.
    fn stat(&self, which: ObserverStat) -> Result<u64> {
        Ok(self
            .maps
            .observer_stats
            .get(&(which as u32), 0)
            .with_context(|| format!("reading the programs' statistic {which:?}"))?
            .iter()
            .sum())
    }

    /// Whether the kernel marks exits and execs (both lifetime probes attached).
    pub fn marks_lifetimes(&self) -> bool {
        use vdso_observer_common::{PROCESS_EXEC_PROGRAM, PROCESS_EXIT_PROGRAM};
        [PROCESS_EXIT_PROGRAM, PROCESS_EXEC_PROGRAM]
            .iter()
            .all(|name| {
                self.probes()
                    .iter()
                    .any(|p| p.program == *name && p.attached)
            })
    }

    /// Every process the maps hold a key or a name of, with the kernel's mark
    /// of how it ended where it has a name entry (None: no entry, the name
    /// map was full). Keys only, no counters: cheaper than a snapshot.
    pub fn process_lifetimes(&self) -> BTreeMap<ProcessKey, Option<ProcessEnd>> {
        let mut processes: BTreeMap<ProcessKey, Option<ProcessEnd>> = BTreeMap::new();
        for key in self.maps.time_calls.keys().filter_map(Result::ok) {
            processes.insert(key.process, None);
        }
        for key in self.maps.vdso_calls.keys().filter_map(Result::ok) {
            processes.insert(key.process, None);
        }
        for (key, info) in self.maps.processes.iter().filter_map(Result::ok) {
            processes.insert(
                key,
                Some(ProcessEnd::from_repr(info.ended).unwrap_or(ProcessEnd::Running)),
            );
        }
        processes
    }

    /// The paths of the cgroups made since the last call (id, path), taken out
    /// of the kernel's map so it holds only what is new.
    pub fn take_recorded_cgroups(&mut self) -> Result<Vec<(u64, String)>> {
        let paths = &mut self.maps.cgroup_paths;
        let ids: Vec<u64> = paths.keys().filter_map(Result::ok).collect();
        let mut recorded = Vec::with_capacity(ids.len());
        for id in ids {
            if let Ok(path) = paths.get(&id, 0)
                && let Some(text) = path.text()
            {
                recorded.push((id, text.to_owned()));
            }
            let _ = paths.remove(&id);
        }
        Ok(recorded)
    }

    /// Only the vDSO counters (the governor looks often).
    pub fn vdso_counts(&self) -> Result<HashMap<VdsoKey, u64>> {
        Ok(self
            .maps
            .vdso_calls
            .iter()
            .filter_map(|entry| entry.ok())
            .map(|(key, per_cpu)| (key, per_cpu.iter().sum()))
            .collect())
    }

    /// Deletes the counters and names of processes that are gone, so the maps
    /// do not fill up with the dead. Their last counts must have been read
    /// first. What could not be deleted (a failed syscall, not an absent key)
    /// is returned, to be tried again; the rest is gone for good.
    pub fn forget(&mut self, retired: &Retired) -> Retired {
        let mut left = Retired::default();
        let (freed, failed) = self.free_time_call_slots(&retired.keys);
        left.keys = failed;
        let mut deleted = KeysCreated {
            time_calls: freed,
            ..KeysCreated::default()
        };
        for key in &retired.vdso_keys {
            match deleted_or_absent(self.maps.vdso_calls.remove(key)) {
                Ok(true) => deleted.vdso_calls += 1,
                Ok(false) => {}
                Err(err) => {
                    log::debug!("deleting a vDSO key of pid {}: {err}", key.process.tgid);
                    left.vdso_keys.push(*key);
                }
            }
        }
        for process in &retired.processes {
            match deleted_or_absent(self.maps.processes.remove(process)) {
                Ok(true) => deleted.processes += 1,
                Ok(false) => {}
                Err(err) => {
                    log::debug!("deleting the entry of pid {}: {err}", process.tgid);
                    left.processes.push(*process);
                }
            }
        }
        self.deleted.time_calls += deleted.time_calls;
        self.deleted.vdso_calls += deleted.vdso_calls;
        self.deleted.processes += deleted.processes;
        left
    }

    /// Deletes time-call keys and gives their slots back, zeroed: after the
    /// generation moved on, so no CPU's recent key still points at one. The
    /// keys belong to processes that are gone: no call races the recycling.
    /// Returns how many were freed and the keys that could not be deleted.
    fn free_time_call_slots(&mut self, keys: &[CallKey]) -> (u64, Vec<CallKey>) {
        let mut freed = Vec::new();
        let mut failed = Vec::new();
        for key in keys {
            let slot = match self.maps.time_calls.get(key, 0) {
                Ok(slot) => slot,
                Err(err) => {
                    // Already gone is fine: the goal is that it is not there.
                    if deleted_or_absent::<()>(Err(err)).is_err() {
                        failed.push(*key);
                    }
                    continue;
                }
            };
            match deleted_or_absent(self.maps.time_calls.remove(key)) {
                Ok(true) => freed.push(slot),
                Ok(false) => {}
                Err(_) => failed.push(*key),
            }
        }
        if freed.is_empty() {
            return (0, failed);
        }
        if let Err(err) = self.recycle_slots(&freed) {
            // The keys are gone; their slots are lost to the programs until
            // restart, which the fill level shows. Say it once per failure.
            log::warn!(
                "{err:#}: {} time-call counter slots not reused",
                freed.len()
            );
        }
        (freed.len() as u64, failed)
    }

    fn recycle_slots(&mut self, freed: &[u32]) -> Result<()> {
        let next = self
            .maps
            .slot_generation
            .get(&0, 0)
            .unwrap_or(0)
            .wrapping_add(1);
        self.maps
            .slot_generation
            .set(0, next, 0)
            .with_context(|| format!("advancing {SLOT_GENERATION_MAP}"))?;
        let cpus = aya::util::nr_cpus().map_err(|(_, err)| err)?;
        for &slot in freed {
            self.maps
                .time_call_counts
                .set(slot, PerCpuValues::try_from(vec![0u64; cpus])?, 0)
                .with_context(|| format!("zeroing {TIME_CALL_COUNTS_MAP}[{slot}]"))?;
            self.maps
                .free_time_call_slots
                .push(slot, 0)
                .with_context(|| format!("returning slot {slot} to the free queue"))?;
        }
        Ok(())
    }

    /// How full the fullest of the three maps is (0.0 to 1.0), from one read
    /// of the programs' creation counters: cheap enough to ask often.
    pub fn fill(&self) -> Result<f64> {
        let created = self.keys_created()?;
        let options = self.options();
        let share = |created: u64, deleted: u64, capacity: u32| {
            created.saturating_sub(deleted) as f64 / f64::from(capacity.max(1))
        };
        Ok(share(
            created.time_calls,
            self.deleted.time_calls,
            options.time_call_entries,
        )
        .max(share(
            created.vdso_calls,
            self.deleted.vdso_calls,
            options.vdso_call_entries,
        ))
        .max(share(
            created.processes,
            self.deleted.processes,
            options.process_entries,
        )))
    }
}

/// Ok(true) deleted, Ok(false) it was not there, Err the kernel refused.
fn deleted_or_absent<T>(result: Result<T, MapError>) -> Result<bool, MapError> {
    match result {
        Ok(_) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(MapError::SyscallError(err)) if err.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(false)
        }
        Err(err) => Err(err),
    }
}
