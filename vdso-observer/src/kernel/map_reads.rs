//! Reading the maps (counters, names and lifetimes, self-statistics, recorded
//! cgroups) and forgetting what is gone: keys deleted, time-call slots
//! handed back to the programs.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result};
use aya::{
    Pod,
    maps::{HashMap as BpfHashMap, IterableMap as _, MapData, MapError, PerCpuHashMap, RingBuf},
};
use vdso_observer_common::{
    CallKey, DRAIN_TRIGGER_MAP, DrainTrigger, FREE_TIME_CALL_SLOTS_MAP, OBSERVER_STATS_MAP,
    ObserverStat, ProcessEnd, ProcessKey, SLOT_GENERATION_MAP, TIME_CALL_COUNTS_MAP, VdsoKey,
};

use super::{
    free_slots,
    map_batch::{self, Values},
    observer::Observer,
};
use crate::model::{ExitHandoffs, KeyMap, KeysCreated, MapSnapshot, ObserverStats, Retired};

impl Observer {
    /// Reads every counter, name and self-statistic. Names (with the kernel's
    /// lifetime marks) first: an image marked ended then made its last call
    /// before the counters are read.
    pub fn snapshot(&self) -> Result<MapSnapshot> {
        let mut snapshot = MapSnapshot::default();
        // Exits handed before the names are read: their keys are out of the
        // maps already, their counts final.
        let mut exits = self.exits.borrow_mut();
        let handed = exits.read_ring();
        // Sized for what the maps hold: grown entry by entry, a drain of
        // thousands of processes spent more rehashing than reading.
        let [_, vdso_calls, processes] = self.map_levels()?;
        snapshot.names.reserve(processes.live as usize);
        snapshot.vdso.reserve(vdso_calls.live as usize);
        snapshot
            .names
            .extend(handed.names.iter().map(|(key, info)| (*key, *info)));
        each_entry(&self.maps.processes, |key, info| {
            if !handed.entry_again(&key) {
                snapshot.names.insert(key, info);
            }
        });
        snapshot.calls = self.time_call_counts(&handed.keys)?;
        each_per_cpu_sum(&self.maps.vdso_calls, |key, sum| {
            snapshot.vdso.insert(key, sum);
        });
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
            let info = match self.maps.processes.get(&process, 0) {
                Ok(info) => Some(info),
                // Exited since: its entry is in the ring now (without this a
                // few of 40 000 churning children went unnamed, "?", under
                // 0.2 s frames).
                Err(_) => exits.read_ring().names.get(&process).copied(),
            };
            if let Some(mut info) = info {
                // Its name only: an end marked now came after the counters
                // were read (its last calls may not be in them; the next
                // snapshot has them, and the end).
                info.ended = ProcessEnd::Running as u32;
                snapshot.names.insert(process, info);
            }
        }
        drop(exits);
        let stats = self.stats()?;
        snapshot.stats = ObserverStats {
            time_calls_map_full: stats.get(ObserverStat::TimeCallsMapFull),
            processes_map_full: stats.get(ObserverStat::ProcessesMapFull),
            read_failed: stats.get(ObserverStat::ReadFailed),
            vdso_calls_map_full: stats.get(ObserverStat::VdsoCallsMapFull),
            vdso_samples_unattributed: stats.get(ObserverStat::VdsoSampleUnattributed),
        };
        snapshot.exit_handoffs = ExitHandoffs {
            handed: stats.get(ObserverStat::ExitsHanded),
            ring_full: stats.get(ObserverStat::ExitRingFull),
        };
        snapshot.keys_created = stats.keys_created();
        snapshot.overflowed_keys = stats.get(ObserverStat::ProcessKeyCap);
        snapshot.programs = self.program_runs();
        Ok(snapshot)
    }

    /// Every time-call counter: each key's slot (the map's, remembered for
    /// the deletion, and those of the keys handed at exit, read where they
    /// are kept), then the slot's per-CPU counts (the whole slot array in
    /// batches when many keys are live).
    fn time_call_counts(&self, handed: &KeyMap<CallKey, u32>) -> Result<KeyMap<CallKey, u64>> {
        let mut slots = self.slots_seen.borrow_mut();
        slots.clear();
        each_entry(&self.maps.time_calls, |key, slot| {
            slots.insert(key, slot);
        });
        let every_key = || slots.iter().chain(handed.iter());
        let keys = slots.len() + handed.len();
        let mut calls = KeyMap::with_capacity_and_hasher(keys, Default::default());
        if keys > FEW_KEYS {
            // Slots are taken from the bottom up (the free stack): read as
            // far as the highest in use, not the whole array.
            let used = every_key()
                .map(|(_, slot)| *slot)
                .max()
                .map_or(0, |highest| highest as usize + 1);
            let mut totals = vec![0u64; used];
            let batched = map_batch::lookup_first::<u32, u64>(
                self.maps.time_call_counts.map(),
                Values::PerCpu,
                used,
                |slot, per_cpu| {
                    if let Some(total) = totals.get_mut(slot as usize) {
                        *total = per_cpu.iter().sum();
                    }
                },
            );
            match batched {
                Ok(()) => {
                    let mut starts = self.slot_totals.borrow_mut();
                    calls.extend(every_key().map(|(key, &slot)| {
                        let total = totals.get(slot as usize).copied().unwrap_or(0);
                        (*key, starts.count(slot, total))
                    }));
                    return Ok(calls);
                }
                Err(err) => log::debug!("{TIME_CALL_COUNTS_MAP} in batches: {err}; slot by slot"),
            }
        }
        let mut starts = self.slot_totals.borrow_mut();
        for (&key, &slot) in every_key() {
            calls.insert(key, starts.count(slot, self.slot_total(slot)?));
        }
        Ok(calls)
    }

    /// One slot's per-CPU counts, summed.
    fn slot_total(&self, slot: u32) -> Result<u64> {
        Ok(self
            .maps
            .time_call_counts
            .get(&slot, 0)
            .with_context(|| format!("reading {TIME_CALL_COUNTS_MAP}[{slot}]"))?
            .iter()
            .sum())
    }

    /// Every self-statistic, summed over the CPUs: one batch read (a drain
    /// under churn made ten single reads), else one read each.
    fn stats(&self) -> Result<StatValues> {
        let mut values = [0u64; ObserverStat::COUNT];
        let batched = map_batch::lookup_first::<u32, u64>(
            self.maps.observer_stats.map(),
            Values::PerCpu,
            ObserverStat::COUNT,
            |index, per_cpu| {
                if let Some(value) = values.get_mut(index as usize) {
                    *value = per_cpu.iter().sum();
                }
            },
        );
        if let Err(err) = batched {
            log::debug!("{OBSERVER_STATS_MAP} in a batch: {err}; one by one");
            for which in ObserverStat::ALL {
                values[which as usize] = self.stat(which)?;
            }
        }
        Ok(StatValues(values))
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
        each_entry(&self.maps.time_calls, |key, _| {
            processes.entry(key.process).or_insert(None);
        });
        each_per_cpu_sum(&self.maps.vdso_calls, |key, _| {
            processes.entry(key.process).or_insert(None);
        });
        each_entry(&self.maps.processes, |key, info| {
            processes.insert(
                key,
                Some(ProcessEnd::from_repr(info.ended).unwrap_or(ProcessEnd::Running)),
            );
        });
        // Handed at exit: ended, whatever the map holds of them.
        let mut exits = self.exits.borrow_mut();
        for process in exits.read_ring().names.keys() {
            processes.insert(*process, Some(ProcessEnd::Exited));
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
    pub fn vdso_counts(&self) -> Result<KeyMap<VdsoKey, u64>> {
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
        // What the exit program took out of the maps only needs its slots back.
        let exits = &mut self.exits.get_mut().handed;
        let (handed_slots, keys) = exits.take_keys(&retired.keys);
        let (handed_processes, processes) = exits.take_processes(&retired.processes);
        let (freed, failed) = self.free_time_call_slots(&keys, handed_slots);
        left.keys = failed;
        let mut deleted = KeysCreated {
            time_calls: freed,
            processes: handed_processes,
            ..KeysCreated::default()
        };
        let (batched, rest) = delete_batch(self.maps.vdso_calls.map(), &retired.vdso_keys);
        deleted.vdso_calls += batched.count as u64;
        for key in rest {
            match deleted_or_absent(self.maps.vdso_calls.remove(key)) {
                Ok(true) => deleted.vdso_calls += 1,
                Ok(false) => {}
                Err(err) => {
                    log::debug!("deleting a vDSO key of pid {}: {err}", key.process.tgid);
                    left.vdso_keys.push(*key);
                }
            }
        }
        let (batched, rest) = delete_batch(self.maps.processes.map(), &processes);
        deleted.processes += batched.count as u64;
        for process in rest {
            match deleted_or_absent(self.maps.processes.remove(process)) {
                Ok(true) => deleted.processes += 1,
                Ok(false) => {}
                Err(err) => {
                    log::debug!("deleting the entry of pid {}: {err}", process.tgid);
                    left.processes.push(*process);
                }
            }
        }
        if handed_processes > 0 {
            log::debug!(
                "forgot {handed_processes} processes the kernel handed at exit ({} slots given back in all)",
                deleted.time_calls
            );
        }
        self.deleted.time_calls += deleted.time_calls;
        self.deleted.vdso_calls += deleted.vdso_calls;
        self.deleted.processes += deleted.processes;
        left
    }

    /// Deletes time-call keys and gives their slots back, with the
    /// slots of keys the exit program deleted (`freed`): after the generation
    /// moved on, so no CPU's recent key still points at one. The keys belong
    /// to processes that are gone: no call races the recycling. Returns how
    /// many were freed and the keys that could not be deleted.
    fn free_time_call_slots(
        &mut self,
        keys: &[CallKey],
        mut freed: Vec<u32>,
    ) -> (u64, Vec<CallKey>) {
        let mut failed = Vec::new();
        let keys = if keys.len() > FEW_KEYS {
            // Their slots as the snapshot before read them (a key's slot does
            // not change while the key lives), the keys in one deletion.
            let seen = self.slots_seen.borrow();
            let mut found = Vec::with_capacity(keys.len());
            let mut slots = Vec::with_capacity(keys.len());
            // Keys the snapshot did not see go key by key.
            let mut rest = Vec::new();
            for key in keys {
                match seen.get(key) {
                    Some(&slot) => {
                        found.push(*key);
                        slots.push(slot);
                    }
                    None => rest.push(*key),
                }
            }
            drop(seen);
            let (deleted, left) = delete_batch(self.maps.time_calls.map(), &found);
            if !deleted.absent.is_empty() {
                log::debug!(
                    "{} retired time-call keys were already gone: their slots are not freed again",
                    deleted.absent.len()
                );
            }
            let done = found.len() - left.len();
            // Only the slots of keys this deletion removed: a key already
            // gone had its slot freed then, and it may be another key's now
            // (given back twice, it would restart that key's count and
            // be handed to two keys).
            freed.extend(
                slots[..done]
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| deleted.absent.binary_search(i).is_err())
                    .map(|(_, slot)| *slot),
            );
            // What the batch left goes key by key too.
            rest.extend_from_slice(left);
            rest
        } else {
            keys.to_vec()
        };
        for key in &keys {
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
                // Its final total, read now: where the slot's next key starts.
                Ok(true) => match self.slot_total(slot) {
                    Ok(total) => {
                        self.slot_totals.get_mut().count(slot, total);
                        freed.push(slot);
                    }
                    // Not given back rather than a next key counted high.
                    Err(err) => log::warn!("{err:#}: time-call counter slot {slot} not reused"),
                },
                Ok(false) => {}
                Err(_) => failed.push(*key),
            }
        }
        if freed.is_empty() {
            return (0, failed);
        }
        if let Err(err) = self.recycle_slots(&mut freed) {
            // The keys are gone; their slots are lost to the programs until
            // restart, which the fill level shows. Say it once per failure.
            log::warn!(
                "{err:#}: {} time-call counter slots not reused",
                freed.len()
            );
        }
        (freed.len() as u64, failed)
    }

    fn recycle_slots(&mut self, freed: &mut [u32]) -> Result<()> {
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
        // Not zeroed: the next key counts from the slot's last total.
        let starts = self.slot_totals.get_mut();
        for &slot in freed.iter() {
            starts.given_back(slot);
        }
        let pushes = free_slots::give_back(&mut self.maps.free_time_call_slots, freed)?;
        log::debug!(
            "gave {} time-call slots back in {pushes} pushes",
            freed.len()
        );
        Ok(())
    }

    /// The ring the programs wake user space through when the maps gained
    /// the keys [`Observer::arm_drain_trigger`] asked for; taken once.
    pub fn take_drain_wakeup(&mut self) -> Option<RingBuf<MapData>> {
        self.maps.drain_wakeup.take()
    }

    /// Has the programs wake user space once the counter maps gained `keys`
    /// more keys (at least one).
    pub fn arm_drain_trigger(&mut self, keys: u64) -> Result<()> {
        let trigger = &mut self.maps.drain_trigger;
        let made = trigger
            .get(&(DrainTrigger::KeysMade as u32), 0)
            .with_context(|| format!("reading {DRAIN_TRIGGER_MAP}"))?;
        trigger
            .set(
                DrainTrigger::WakeAt as u32,
                made.saturating_add(keys.max(1)),
                0,
            )
            .with_context(|| format!("arming {DRAIN_TRIGGER_MAP}"))
    }

    /// How many keys the map closest to it may gain before it is `share`
    /// full (0 when one is already).
    pub fn keys_until_fill(&self, share: f64) -> Result<u64> {
        Ok(self
            .map_levels()?
            .iter()
            .map(|map| (share * f64::from(map.capacity) - map.live as f64).max(0.0) as u64)
            .min()
            .unwrap_or(0))
    }

    /// How full the fullest of the three maps is (0.0 to 1.0), from one read
    /// of the programs' creation counters: cheap enough to ask often.
    pub fn fill(&self) -> Result<f64> {
        Ok(self
            .map_levels()?
            .iter()
            .map(|map| map.live as f64 / f64::from(map.capacity.max(1)))
            .fold(0.0, f64::max))
    }

    /// The keys each counter map holds (created by the programs less deleted
    /// here) and its capacity: time calls, vDSO calls, processes.
    fn map_levels(&self) -> Result<[MapLevel; 3]> {
        let stats = self.stats()?;
        let created = stats.keys_created();
        // Slots the programs could not give back fill the map as keys do.
        let stranded = stats.get(ObserverStat::SlotsStranded);
        self.say_stranded_slots(stranded);
        let options = self.options();
        let level = |created: u64, deleted: u64, capacity: u32| MapLevel {
            live: created.saturating_sub(deleted),
            capacity,
        };
        Ok([
            level(
                created.time_calls + stranded,
                self.deleted.time_calls,
                options.time_call_entries,
            ),
            level(
                created.vdso_calls,
                self.deleted.vdso_calls,
                options.vdso_call_entries,
            ),
            level(
                created.processes,
                self.deleted.processes,
                options.process_entries,
            ),
        ])
    }

    /// Says once each time it grows how many time-call slots are out of use:
    /// the map drains earlier for them, and a restart gives them back.
    fn say_stranded_slots(&self, stranded: u64) {
        if stranded > self.stranded_said.get() {
            log::warn!(
                "{stranded} time-call counter slots are out of use: the kernel's lock on \
                 {FREE_TIME_CALL_SLOTS_MAP} refused them back. The map drains that much \
                 earlier; restart the observer to use them again"
            );
            self.stranded_said.set(stranded);
        }
    }
}

/// The programs' self-statistics, each summed over the CPUs.
struct StatValues([u64; ObserverStat::COUNT]);

impl StatValues {
    fn get(&self, which: ObserverStat) -> u64 {
        self.0[which as usize]
    }

    /// Keys created per counter map since load.
    fn keys_created(&self) -> KeysCreated {
        KeysCreated {
            time_calls: self.get(ObserverStat::TimeKeysCreated),
            vdso_calls: self.get(ObserverStat::VdsoKeysCreated),
            processes: self.get(ObserverStat::ProcessesCreated),
        }
    }
}

/// How many keys a counter map holds, of how many it may.
struct MapLevel {
    live: u64,
    capacity: u32,
}

/// Below this many keys, key by key costs no more than a batch.
const FEW_KEYS: usize = 64;

/// Every entry of a hash map, in batches (else key by key, where the kernel
/// refuses: then entries a failed batch gave may come twice).
fn each_entry<K: Pod, V: Pod>(map: &BpfHashMap<MapData, K, V>, mut each: impl FnMut(K, V)) {
    let batched =
        map_batch::lookup_all::<K, V>(map.map(), Values::Single, |key, value| each(key, value[0]));
    if let Err(err) = batched {
        log::debug!("reading a map in batches: {err}; key by key");
        for (key, value) in map.iter().filter_map(Result::ok) {
            each(key, value);
        }
    }
}

/// Every entry of a per-CPU hash map with its values summed, as [`each_entry`].
fn each_per_cpu_sum<K: Pod>(map: &PerCpuHashMap<MapData, K, u64>, mut each: impl FnMut(K, u64)) {
    let batched = map_batch::lookup_all::<K, u64>(map.map(), Values::PerCpu, |key, per_cpu| {
        each(key, per_cpu.iter().sum())
    });
    if let Err(err) = batched {
        log::debug!("reading a per-CPU map in batches: {err}; key by key");
        for (key, per_cpu) in map.iter().filter_map(Result::ok) {
            each(key, per_cpu.iter().sum());
        }
    }
}

/// Deletes `keys` in batches: what it deleted, and the keys left to go key
/// by key (all of them where the kernel refuses batches).
fn delete_batch<'a, K: Pod>(map: &MapData, keys: &'a [K]) -> (map_batch::Deleted, &'a [K]) {
    if keys.len() <= FEW_KEYS {
        return (map_batch::Deleted::default(), keys);
    }
    match map_batch::delete(map, keys) {
        Ok(deleted) => (deleted, &[]),
        Err((err, deleted, done)) => {
            log::debug!("deleting in batches: {err}; key by key from the {done}th");
            (deleted, &keys[done..])
        }
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
