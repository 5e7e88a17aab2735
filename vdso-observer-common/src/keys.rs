//! Map keys and values of the counters and processes, and the programs'
//! own statistics.

use crate::wire_enum;

/// One process image: a pid is reused and a process changes at exec, so the
/// pid alone does not name it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessKey {
    /// Process id (thread group id) in the initial pid namespace.
    pub tgid: u32,
    /// `task_struct.self_exec_id` (low 32 bits): grows by one at every exec.
    pub exec_id: u32,
    /// Start of the thread group leader, ns since boot (`/proc/PID/stat` field 22
    /// holds the same instant in clock ticks).
    pub start_boottime_ns: u64,
}

/// What one counter of [`TIME_CALLS_MAP`] counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey {
    pub process: ProcessKey,
    /// [`clock_key`] of the clock of clock_gettime / clock_getres; [`NO_CLOCK`]
    /// for the other calls; [`CLOCK_OVERFLOW`] past the process's key cap.
    pub clock_id: i32,
    /// A [`TimeCall`].
    pub call: u8,
    /// An [`Origin`].
    pub origin: u8,
    /// A [`SyscallAbi`].
    pub abi: u8,
    /// Always 0: keys are compared as bytes.
    pub _pad: u8,
}

impl CallKey {
    /// The key as three words (its bytes, read as little-endian words),
    /// compared with no memcmp call. Made from the fields, not by reading the
    /// key's memory back (no wide load over the narrow stores that built it;
    /// on the AMD host the program's run time was the same either way).
    #[inline(always)]
    pub const fn words(&self) -> [u64; 3] {
        [
            self.process.tgid as u64 | (self.process.exec_id as u64) << 32,
            self.process.start_boottime_ns,
            self.clock_id as u32 as u64
                | (self.call as u64) << 32
                | (self.origin as u64) << 40
                | (self.abi as u64) << 48
                | (self._pad as u64) << 56,
        ]
    }
}

/// Free slots of [`TIME_CALL_COUNTS_MAP`] in a row, as
/// [`FREE_TIME_CALL_SLOTS_MAP`] holds them: user space gives thousands of
/// slots back in a few pushes (one syscall each), and a program that takes a
/// slot pushes the rest of its run back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotRun {
    pub first: u32,
    /// At least 1.
    pub len: u32,
}

/// The key a CPU counted last, with its counter's slot: a hot loop of one
/// process counts without a hash lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecentTimeCall {
    /// [`CallKey::words`] of the key as the program built it (before any
    /// overflow to the process's overflow key: the slot may be that key's).
    pub key_words: [u64; 3],
    /// Index into [`TIME_CALL_COUNTS_MAP`].
    pub slot: u32,
    /// [`SLOT_GENERATION_MAP`] when the slot was found: stale once it changed.
    pub generation: u32,
}

/// Length of `task_struct.comm`.
pub const COMM_LEN: usize = 16;

/// What user space needs to name a process that may be gone by the time it
/// reads, and what the programs keep per process: how many counters it made
/// and how many of its calls found no room.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// The thread group leader's `comm`, NUL-padded, any bytes.
    pub comm: [u8; COMM_LEN],
    /// Real uid of the calling task when the entry was made.
    pub uid: u32,
    /// Keys this process created in [`TIME_CALLS_MAP`] (capped, see
    /// [`ProgramConfig::process_key_cap`]).
    pub time_keys: u32,
    /// Keys this process created in [`VDSO_CALLS_MAP`].
    pub vdso_keys: u32,
    /// A [`ProcessEnd`], set by the kernel when the image exits or execs: the
    /// image's lifetime, from where it ends rather than from a look at /proc.
    pub ended: u32,
    /// Calls and samples of this process not counted because a map was full.
    pub lost: u64,
    /// Its cgroup v2 id at first sight (the inode of its cgroup directory): a
    /// process that lives 5 ms keeps its container.
    pub cgroup_id: u64,
    /// The time-call keys it made with their slots, the first [`HANDED_KEYS`]:
    /// what its exit hands to user space (see [`ProcessExit`]).
    pub key_slots: [KeySlot; HANDED_KEYS],
    /// Places of `key_slots` taken (it may grow past them). Not atomic: two
    /// threads making keys at once may write one place, and then the key
    /// left out stays in the map and is drained from it as any other.
    pub key_slots_taken: u32,
    /// Always 0.
    pub _pad: u32,
}

/// How many time-call keys of a process its exit hands to user space (most
/// processes make one or two). A process with more, or with vDSO keys, is
/// marked at its exit and drained from the maps by user space.
pub const HANDED_KEYS: usize = 4;

/// One time-call key of a process without the process (its [`CallKey`] is the
/// process's key with these fields), and the key's counter slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeySlot {
    pub clock_id: i32,
    pub call: u8,
    pub origin: u8,
    pub abi: u8,
    /// Set by the exit program when it could not delete the key: the key
    /// stays in the map (drained as any other) and its slot is not handed.
    pub kept: u8,
    /// Index into [`TIME_CALL_COUNTS_MAP`].
    pub slot: u32,
}

impl KeySlot {
    pub const fn of(key: &CallKey, slot: u32) -> KeySlot {
        KeySlot {
            clock_id: key.clock_id,
            call: key.call,
            origin: key.origin,
            abi: key.abi,
            kept: 0,
            slot,
        }
    }

    /// The key of `process` this names.
    pub const fn key(&self, process: ProcessKey) -> CallKey {
        CallKey {
            process,
            clock_id: self.clock_id,
            call: self.call,
            origin: self.origin,
            abi: self.abi,
            _pad: 0,
        }
    }
}

/// What the exit program hands to user space through [`PROCESS_EXITS_MAP`]
/// for a process whose last thread exited: its name entry (ended, with its
/// keys and their slots), after it deleted the entry and the keys. User space
/// reads the slots' counts, then gives the slots back: a process that lived
/// 1 ms costs no syscall per key to forget.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessExit {
    pub process: ProcessKey,
    pub info: ProcessInfo,
}

impl ProcessExit {
    /// The keys handed with their slots (the kept ones left out).
    pub fn handed_keys(&self) -> impl Iterator<Item = (CallKey, u32)> + '_ {
        let taken = (self.info.key_slots_taken as usize).min(HANDED_KEYS);
        self.info.key_slots[..taken]
            .iter()
            .filter(|k| k.kept == 0)
            .map(|k| (k.key(self.process), k.slot))
    }
}

impl ProcessInfo {
    pub const fn new(comm: [u8; COMM_LEN], uid: u32, cgroup_id: u64) -> ProcessInfo {
        ProcessInfo {
            comm,
            uid,
            time_keys: 0,
            vdso_keys: 0,
            ended: ProcessEnd::Running as u32,
            lost: 0,
            cgroup_id,
            key_slots: [KeySlot {
                clock_id: 0,
                call: 0,
                origin: 0,
                abi: 0,
                kept: 0,
                slot: 0,
            }; HANDED_KEYS],
            key_slots_taken: 0,
            _pad: 0,
        }
    }
}

wire_enum! {
    /// How a process image ended, as the kernel marked it in [`ProcessInfo::ended`].
    pub enum ProcessEnd: u32 {
        Running = 0 => "running",
        /// Its last thread exited (`sched_process_exit` with no thread left).
        Exited = 1 => "exited",
        /// It called execve: the pid lives on as a new image (a new key).
        Execed = 2 => "execed",
    }
}

/// What one counter of [`VDSO_CALLS_MAP`] counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VdsoKey {
    pub process: ProcessKey,
    /// Clock id when the probe could read it; [`NO_CLOCK`] otherwise.
    pub clock_id: i32,
    /// A [`TimeCall`], or [`VDSO_OTHER_CODE`].
    pub call: u8,
    /// A [`Provenance`].
    pub provenance: u8,
    /// The [`SyscallAbi`] of the code that ran: which image.
    pub abi: u8,
    pub _pad: u8,
}

wire_enum! {
    /// Indexes of [`OBSERVER_STATS_MAP`](crate::OBSERVER_STATS_MAP).
    pub enum ObserverStat: u32 {
        /// A new [`CallKey`] could not be stored: its calls were not counted.
        TimeCallsMapFull = 0 => "time_calls_map_full",
        /// A new [`ProcessKey`] could not be stored: the process shows without a name.
        ProcessesMapFull = 1 => "processes_map_full",
        /// A kernel or user memory read failed: that call was not counted.
        ReadFailed = 2 => "read_failed",
        /// A new [`VdsoKey`] could not be stored: vDSO calls or samples were lost.
        VdsoCallsMapFull = 3 => "vdso_calls_map_full",
        /// Keys created in the time-call map: with user space's deletions, how
        /// full it is (a per-CPU hash map cannot say).
        TimeKeysCreated = 4 => "time_keys_created",
        /// Keys created in the vDSO-call map.
        VdsoKeysCreated = 5 => "vdso_keys_created",
        /// A process reached its key cap: further new keys went to its overflow key.
        ProcessKeyCap = 6 => "process_key_cap",
        /// A sample in vDSO code that no time call claims (not even through the
        /// return address of a helper): counted nowhere else.
        VdsoSampleUnattributed = 7 => "vdso_sample_unattributed",
        /// Entries created in the process map.
        ProcessesCreated = 8 => "processes_created",
        /// Free time-call slots a program could not push back onto the free
        /// stack (its lock refused): out of use until the observer restarts.
        SlotsStranded = 9 => "slots_stranded",
        /// Exits whose process the exit program took out of the maps and
        /// handed to user space through [`PROCESS_EXITS_MAP`](crate::PROCESS_EXITS_MAP).
        ExitsHanded = 10 => "exits_handed",
        /// Exits it could not hand (the ring was full): marked instead, and
        /// drained from the maps.
        ExitRingFull = 11 => "exit_ring_full",
    }
}

wire_enum! {
    /// Cells of [`DRAIN_TRIGGER_MAP`](crate::DRAIN_TRIGGER_MAP).
    pub enum DrainTrigger: u32 {
        /// Keys made in the three counter maps since load (added atomically:
        /// one count for every CPU).
        KeysMade = 0 => "keys_made",
        /// At this many keys made the program that makes it wakes user space
        /// (through [`DRAIN_WAKEUP_MAP`](crate::DRAIN_WAKEUP_MAP)) and sets
        /// this to `u64::MAX`; user space sets it again after its check.
        WakeAt = 1 => "wake_at",
    }
}
