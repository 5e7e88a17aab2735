//! The counting core: a time call or a vDSO call of the current process
//! becomes one more in its key's counter. Keys are made within the process's
//! key cap (past it, in its overflow key); a map found full is counted for the
//! process and the observer, never silent. The process's entry in PROCESSES
//! (name, uid, cgroup) is made with its first key.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_uid_gid},
};
use vdso_observer_common::{
    CLOCK_COARSE_SAMPLED, CLOCK_OVERFLOW, CLOCK_SHARED_SAMPLED, CallKey, KeySlot, NO_CLOCK,
    ObserverStat, Origin, ProcessInfo, ProcessKey, Provenance, RecentTimeCall, SlotRun, SyscallAbi,
    TimeCall, VdsoKey, clock_key,
};

use crate::{
    atomic::add_one,
    config::config,
    drain_trigger::key_made,
    kernel::{process_key, read_kernel, tgid_of},
    maps::{
        FREE_TIME_CALL_SLOTS, PROCESSES, RECENT_TIME_CALL, SLOT_GENERATION, TIME_CALL_COUNTS,
        TIME_CALLS, VDSO_CALLS,
    },
    stats::{add_stat, bump, bump_by},
};

const EEXIST: i32 = 17;

/// Whether the program may be preempted on its CPU between its loads and its
/// increment (fentry runs with migration disabled, not preemption): then the
/// per-CPU recent-key cache is skipped and counters are added atomically.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Preemptible {
    No,
    Yes,
}

/// Counts one time call of the current task (skipping the observer's own).
#[inline(always)]
pub fn count_time_call(
    task: *const u8,
    call: TimeCall,
    abi: SyscallAbi,
    clock_id: i32,
    origin: Origin,
    preemptible: Preemptible,
) {
    let tgid = tgid_of(task);
    if tgid == config!(observer_tgid) {
        return;
    }
    let (process, leader) = process_key(task, tgid);
    let mut key = CallKey {
        process,
        clock_id: if call.takes_clock() {
            clock_key(clock_id)
        } else {
            NO_CLOCK
        },
        call: call as u8,
        origin: origin as u8,
        abi: abi as u8,
        _pad: 0,
    };
    let slot = match preemptible {
        Preemptible::No => recent_or_new_slot(&mut key, leader),
        Preemptible::Yes => find_or_make(&TimeCallSlots, &mut key, leader),
    };
    let Some(slot) = slot else { return };
    if let Some(count) = TIME_CALL_COUNTS.get_ptr_mut(slot) {
        match preemptible {
            // SAFETY: this CPU's slot; programs on one CPU do not interleave here.
            Preemptible::No => unsafe { *count += 1 },
            Preemptible::Yes => add_one(count),
        }
    }
}

/// The slot of `key`: this CPU's recent key's when it is the same (two array
/// loads the verifier inlines, no call), else found or made, and then
/// remembered as the recent key.
#[inline(always)]
fn recent_or_new_slot(key: &mut CallKey, leader: *const u8) -> Option<u32> {
    let generation = SLOT_GENERATION.get(0).copied().unwrap_or(0);
    let recent = RECENT_TIME_CALL.get_ptr_mut(0)?;
    // SAFETY: this CPU's entry; the programs that use it run with preemption
    // disabled, so none interleaves with another on this CPU.
    let recent = unsafe { &mut *recent };
    let built = key.words();
    let cached = &recent.key_words;
    if recent.generation == generation
        && built[0] == cached[0]
        && built[1] == cached[1]
        && built[2] == cached[2]
    {
        return Some(recent.slot);
    }
    let slot = find_or_make(&TimeCallSlots, key, leader)?;
    *recent = RecentTimeCall {
        key_words: built,
        slot,
        generation,
    };
    Some(slot)
}

/// Counts a vDSO call or sample of `call` for the current process.
#[inline(always)]
pub fn count_vdso_call(
    task: *const u8,
    tgid: u32,
    call: u8,
    clock_id: i32,
    provenance: Provenance,
    abi: SyscallAbi,
) {
    let (process, leader) = process_key(task, tgid);
    let takes_clock = call == TimeCall::ClockGettime as u8 || call == TimeCall::ClockGetres as u8;
    let mut key = VdsoKey {
        process,
        clock_id: if !takes_clock || clock_id == NO_CLOCK {
            NO_CLOCK
        } else if (clock_id == CLOCK_COARSE_SAMPLED || clock_id == CLOCK_SHARED_SAMPLED)
            && provenance == Provenance::Sampled
        {
            // The sampler's own marks, not a clock id a caller passed.
            clock_id
        } else {
            clock_key(clock_id)
        },
        call,
        provenance: provenance as u8,
        abi: abi as u8,
        _pad: 0,
    };
    // vDSO events are samples and probe hits, far rarer than kernel entries:
    // a hash lookup each is cheap enough.
    if let Some(value) = find_or_make(&VdsoCounters, &mut key, leader) {
        // SAFETY: a valid u64 of the map; per-CPU, and the programs that count
        // here (perf events, uprobes) run with preemption disabled.
        unsafe { *value += 1 };
    }
}

/// A counter map whose keys processes make, each within its key cap.
trait CounterMap {
    type Key: CounterKey;
    /// Where the key's count is (a slot, a value pointer).
    type Found;
    fn find(&self, key: &Self::Key) -> Option<Self::Found>;
    /// Makes the key; `Err(-EEXIST)` when another CPU made it first.
    fn make(&self, key: &Self::Key) -> Result<Self::Found, i32>;
    /// The process's count of keys made in this map.
    fn keys_made(info: *mut ProcessInfo) -> *mut u32;
    /// Keeps what the process's exit needs of a key it made.
    fn record(_info: *mut ProcessInfo, _key: &Self::Key, _found: &Self::Found) {}
    const FULL: ObserverStat;
    const MADE: ObserverStat;
}

trait CounterKey {
    fn process(&self) -> &ProcessKey;
    /// Turns the key into its process's overflow key.
    fn overflow(&mut self);
}

impl CounterKey for CallKey {
    fn process(&self) -> &ProcessKey {
        &self.process
    }
    fn overflow(&mut self) {
        self.clock_id = CLOCK_OVERFLOW;
    }
}

impl CounterKey for VdsoKey {
    fn process(&self) -> &ProcessKey {
        &self.process
    }
    fn overflow(&mut self) {
        self.clock_id = CLOCK_OVERFLOW;
    }
}

/// The counter of `key`: found, else made within the process's key cap (past
/// it, the process's overflow key's), else None with the loss counted for the
/// process and the observer. Out of line: only a new key comes here.
#[inline(never)]
fn find_or_make<M: CounterMap>(map: &M, key: &mut M::Key, leader: *const u8) -> Option<M::Found> {
    if let Some(found) = map.find(key) {
        return Some(found);
    }
    let info = process_info(key.process(), leader);
    if let Some(info) = info
        // SAFETY: a valid entry of PROCESSES (a hash map value stays valid
        // while the program runs).
        && unsafe { *M::keys_made(info) } >= config!(process_key_cap)
    {
        key.overflow();
        if let Some(found) = map.find(key) {
            return Some(found);
        }
        bump(ObserverStat::ProcessKeyCap);
    }
    match map.make(key) {
        Ok(found) => {
            if let Some(info) = info {
                // SAFETY: as above. Racy between CPUs of one process: the cap
                // is a bound, not a count.
                unsafe { *M::keys_made(info) += 1 };
                M::record(info, key, &found);
            }
            add_stat(M::MADE);
            key_made();
            Some(found)
        }
        Err(err) if err == -EEXIST => map.find(key),
        Err(_) => {
            if let Some(info) = info {
                // SAFETY: as above. Not atomic: two CPUs of one process failing
                // at once may count one loss, the observer-wide counter both.
                unsafe { (*info).lost += 1 };
            }
            bump(M::FULL);
            None
        }
    }
}

/// TIME_CALLS: a key's counter is a slot of TIME_CALL_COUNTS, taken from
/// the free stack of slot runs user space fills.
struct TimeCallSlots;

impl CounterMap for TimeCallSlots {
    type Key = CallKey;
    type Found = u32;

    fn find(&self, key: &CallKey) -> Option<u32> {
        // SAFETY: a plain read of a map value.
        unsafe { TIME_CALLS.get(key) }.copied()
    }

    fn make(&self, key: &CallKey) -> Result<u32, i32> {
        let Some(slot) = take_free_slot() else {
            return Err(0); // no free slot: as full as a failed insert
        };
        match TIME_CALLS.insert(key, slot, BPF_NOEXIST.into()) {
            Ok(()) => Ok(slot),
            Err(err) => {
                give_back(SlotRun {
                    first: slot,
                    len: 1,
                });
                Err(err)
            }
        }
    }

    fn keys_made(info: *mut ProcessInfo) -> *mut u32 {
        // SAFETY: a field address of a valid pointer; nothing is read.
        unsafe { &raw mut (*info).time_keys }
    }

    /// The key and its slot, for the exit program to delete the key and hand
    /// the slot over (the first HANDED_KEYS keys; past them the exit leaves
    /// the process to user space's drain).
    fn record(info: *mut ProcessInfo, key: &CallKey, slot: &u32) {
        // SAFETY: a valid entry of PROCESSES. Not atomic (see key_slots_taken).
        let info = unsafe { &mut *info };
        let at = info.key_slots_taken;
        info.key_slots_taken = at.wrapping_add(1);
        if let Some(place) = info.key_slots.get_mut(at as usize) {
            *place = KeySlot::of(key, *slot);
        }
    }

    const FULL: ObserverStat = ObserverStat::TimeCallsMapFull;
    const MADE: ObserverStat = ObserverStat::TimeKeysCreated;
}

/// The first slot of the run on top of the free stack (the lowest free one:
/// user space pushes the lowest run last); the rest of the run goes back.
/// Another CPU that pops meanwhile takes the next run: user space gives runs
/// of at most 64 slots, so the stack holds many while the map has room.
#[inline(always)]
fn take_free_slot() -> Option<u32> {
    let Ok(Some(run)) = FREE_TIME_CALL_SLOTS.pop() else {
        return None;
    };
    if run.len > 1 {
        give_back(SlotRun {
            first: run.first + 1,
            len: run.len - 1,
        });
    }
    Some(run.first)
}

/// Pushes free slots back. It cannot be full (each run holds a free slot of
/// its own), but its lock may refuse (an NMI, or 6.15's deadlock-checked
/// locks): then the slots are out of use, counted for user space's fill level.
#[inline(always)]
fn give_back(run: SlotRun) {
    if FREE_TIME_CALL_SLOTS.push(run, 0).is_err() {
        bump_by(ObserverStat::SlotsStranded, run.len.into());
    }
}

/// VDSO_CALLS: a key's counter is its per-CPU value.
struct VdsoCounters;

impl CounterMap for VdsoCounters {
    type Key = VdsoKey;
    type Found = *mut u64;

    fn find(&self, key: &VdsoKey) -> Option<*mut u64> {
        VDSO_CALLS.get_ptr_mut(key)
    }

    fn make(&self, key: &VdsoKey) -> Result<*mut u64, i32> {
        VDSO_CALLS.insert(key, 0, BPF_NOEXIST.into())?;
        VDSO_CALLS.get_ptr_mut(key).ok_or(-EEXIST)
    }

    fn keys_made(info: *mut ProcessInfo) -> *mut u32 {
        // SAFETY: a field address of a valid pointer; nothing is read.
        unsafe { &raw mut (*info).vdso_keys }
    }

    const FULL: ObserverStat = ObserverStat::VdsoCallsMapFull;
    const MADE: ObserverStat = ObserverStat::VdsoKeysCreated;
}

/// The process's entry in PROCESSES, made at its first counter: its leader's
/// name is kept next to the key, so a process that exits before user space
/// reads is still named (refreshed at each new counter, for a later rename).
/// Runs only when a new counter is made. None when the map is full.
#[inline(always)]
fn process_info(process: &ProcessKey, leader: *const u8) -> Option<*mut ProcessInfo> {
    let Ok(comm) = read_kernel(leader, config!(offsets.task_comm)) else {
        bump(ObserverStat::ReadFailed);
        return None;
    };
    if let Some(info) = PROCESSES.get_ptr_mut(process) {
        // SAFETY: a valid entry of the map.
        unsafe { (*info).comm = comm };
        return Some(info);
    }
    // SAFETY: the helper reads only the current task's cgroup.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let fresh = ProcessInfo::new(comm, bpf_get_current_uid_gid() as u32, cgroup_id);
    match PROCESSES.insert(process, fresh, BPF_NOEXIST.into()) {
        Ok(()) => {
            add_stat(ObserverStat::ProcessesCreated);
            key_made();
        }
        Err(err) if err == -EEXIST => {}
        Err(_) => {
            bump(ObserverStat::ProcessesMapFull);
            return None;
        }
    }
    PROCESSES.get_ptr_mut(process)
}
