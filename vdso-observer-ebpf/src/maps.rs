//! Every map of the object, with the sizes the object carries; the loader
//! resizes the counter maps (`--map-entries`) before load. Names are the
//! common crate's `*_MAP` constants.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, Stack},
};
use vdso_observer_common::{
    CGROUP_PATH_ENTRIES, CallKey, CgroupPath, DEFAULT_PROCESS_ENTRIES, DEFAULT_TIME_CALL_ENTRIES,
    DEFAULT_VDSO_CALL_ENTRIES, DrainTrigger, EXACT_COVERAGE_ENTRIES, ExactCoverage, ObserverStat,
    PROCESS_EXIT_BYTES_PER_ENTRY, ProcessInfo, ProcessKey, RecentTimeCall, SlotRun,
    VDSO_CODE_BYTES, VdsoKey,
};

#[map]
pub static VDSO_CALLS: PerCpuHashMap<VdsoKey, u64> =
    PerCpuHashMap::with_max_entries(DEFAULT_VDSO_CALL_ENTRIES, 0);

/// The counter slot of each key (see `TIME_CALLS_MAP`).
#[map]
pub static TIME_CALLS: HashMap<CallKey, u32> =
    HashMap::with_max_entries(DEFAULT_TIME_CALL_ENTRIES, 0);

#[map]
pub static TIME_CALL_COUNTS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(DEFAULT_TIME_CALL_ENTRIES, 0);

// A stack, not a queue: the lowest run is pushed last and taken first, so
// the slots in use stay at the bottom of TIME_CALL_COUNTS and user space
// reads only as far as the highest (under churn a queue cycled through every
// slot). Runs, not slots: one push gives back thousands.
#[map]
pub static FREE_TIME_CALL_SLOTS: Stack<SlotRun> =
    Stack::with_max_entries(DEFAULT_TIME_CALL_ENTRIES, 0);

#[map]
pub static RECENT_TIME_CALL: PerCpuArray<RecentTimeCall> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static SLOT_GENERATION: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub static PROCESSES: HashMap<ProcessKey, ProcessInfo> =
    HashMap::with_max_entries(DEFAULT_PROCESS_ENTRIES, 0);

#[map]
pub static EXACT_COVERAGE: HashMap<u32, ExactCoverage> =
    HashMap::with_max_entries(EXACT_COVERAGE_ENTRIES, 0);

#[map]
pub static CGROUP_PATHS: LruHashMap<u64, CgroupPath> =
    LruHashMap::with_max_entries(CGROUP_PATH_ENTRIES, 0);

/// One [`CgroupPath`] per CPU to read a path into: too large for the stack.
#[map]
pub static CGROUP_PATH_SCRATCH: PerCpuArray<CgroupPath> = PerCpuArray::with_max_entries(1, 0);

/// See `COARSE_CODE_MAP`, `SHARED_CODE_MAP`, `SAMPLE_OFFSETS_MAP` and
/// `OFFSET_SAMPLED_TGID_MAP`.
#[map]
pub static COARSE_CODE: Array<u64> = Array::with_max_entries(VDSO_CODE_BYTES / 64, 0);

#[map]
pub static SHARED_CODE: Array<u64> = Array::with_max_entries(VDSO_CODE_BYTES / 64, 0);

#[map]
pub static SAMPLE_OFFSETS: Array<u32> = Array::with_max_entries(VDSO_CODE_BYTES, 0);

#[map]
pub static OFFSET_SAMPLED_TGID: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub static OBSERVER_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(ObserverStat::COUNT as u32, 0);

/// See `DRAIN_TRIGGER_MAP`: shared by every CPU, so that one count says how
/// many keys the maps gained (per-CPU counts would each need their own bound).
#[map]
pub static DRAIN_TRIGGER: Array<u64> = Array::with_max_entries(DrainTrigger::COUNT as u32, 0);

/// See `PROCESS_EXITS_MAP`: the loader sizes it from the process map.
#[map]
pub static PROCESS_EXITS: RingBuf =
    RingBuf::with_byte_size(DEFAULT_PROCESS_ENTRIES * PROCESS_EXIT_BYTES_PER_ENTRY, 0);

/// See `DRAIN_WAKEUP_MAP`: one record per wake-up, a few a second at most.
#[map]
pub static DRAIN_WAKEUP: RingBuf = RingBuf::with_byte_size(4096, 0);
