//! Names of the maps, programs and globals both sides use, and the maps' default
//! sizes.

/// Map of the counter slot of each [`CallKey`] (`u32` index into
/// [`TIME_CALL_COUNTS_MAP`]). A time call finds its counter by key once per
/// CPU; after that through [`RECENT_TIME_CALL_MAP`] without hashing: a hash
/// lookup is a function call, which costs more than the rest of the count.
pub const TIME_CALLS_MAP: &str = "TIME_CALLS";
/// Per-CPU array of `u64` counters, one per slot of [`TIME_CALLS_MAP`].
pub const TIME_CALL_COUNTS_MAP: &str = "TIME_CALL_COUNTS";
/// Stack of the free slots of [`TIME_CALL_COUNTS_MAP`], in [`SlotRun`]s:
/// user space fills it at load and gives slots back when it forgets their
/// keys (not zeroed: it counts a new key from the slot's last total).
pub const FREE_TIME_CALL_SLOTS_MAP: &str = "FREE_TIME_CALL_SLOTS";
/// Per-CPU [`RecentTimeCall`]: the key this CPU counted last and its slot.
pub const RECENT_TIME_CALL_MAP: &str = "RECENT_TIME_CALL";
/// One-entry array of the slot generation: user space adds one before it
/// hands out slots again, so no CPU's [`RecentTimeCall`] outlives its slot.
pub const SLOT_GENERATION_MAP: &str = "SLOT_GENERATION";
/// Map of [`ProcessInfo`] per [`ProcessKey`].
pub const PROCESSES_MAP: &str = "PROCESSES";
/// Per-CPU array of [`ObserverStat`] counters.
pub const OBSERVER_STATS_MAP: &str = "OBSERVER_STATS";
/// Two-cell array ([`DrainTrigger`]): the keys the programs made in the three
/// counter maps, and the count at which they wake user space to drain.
pub const DRAIN_TRIGGER_MAP: &str = "DRAIN_TRIGGER";
/// Ring buffer of the programs' wake-ups (one `u64`, the keys made): user
/// space sleeps on it instead of polling the maps' fill level.
pub const DRAIN_WAKEUP_MAP: &str = "DRAIN_WAKEUP";
/// Ring buffer of [`ProcessExit`]s: processes the exit program took out of
/// the maps, for user space to count and forget. Read at each drain and
/// window; sized by the loader from the process map's capacity.
pub const PROCESS_EXITS_MAP: &str = "PROCESS_EXITS";
/// Bytes of [`PROCESS_EXITS_MAP`] per entry of [`PROCESSES_MAP`] (a record is
/// 128 with its header; the drain comes before half the entries are made).
pub const PROCESS_EXIT_BYTES_PER_ENTRY: u32 = 64;
/// Name of the global holding [`ProgramConfig`].
pub const PROGRAM_CONFIG_GLOBAL: &str = "PROGRAM_CONFIG";

/// Program counting time syscalls, attached to raw tracepoint `sys_enter`
/// with BTF types (tp_btf).
pub const SYS_ENTER_PROGRAM: &str = "time_syscall_enter";
/// The same program on the untyped raw tracepoint, for kernels that refuse
/// the BTF-typed one.
pub const SYS_ENTER_RAW_PROGRAM: &str = "time_syscall_enter_raw";
/// An empty program on `sys_enter`: the benchmark's floor.
pub const EMPTY_SYS_ENTER_PROGRAM: &str = "empty_sys_enter";
/// Program counting legacy vsyscall calls, attached to raw tracepoint `emulate_vsyscall`.
pub const VSYSCALL_PROGRAM: &str = "legacy_vsyscall";

/// Map of vDSO calls per [`VdsoKey`] (per-CPU `u64`: samples or exact hits).
pub const VDSO_CALLS_MAP: &str = "VDSO_CALLS";
/// Name of the global holding the 64-bit image's [`VdsoFunctionTable`].
pub const VDSO_FUNCTIONS_GLOBAL: &str = "VDSO_FUNCTIONS";
/// Name of the global holding the 32-bit (vdso32) image's [`VdsoFunctionTable`].
pub const VDSO32_FUNCTIONS_GLOBAL: &str = "VDSO32_FUNCTIONS";
/// perf_event program sampling user instruction pointers (cpu-clock, every CPU).
pub const VDSO_SAMPLE_PROGRAM: &str = "vdso_sample";
/// perf_event program on hardware execute breakpoints at vDSO entry points.
pub const VDSO_BREAKPOINT_PROGRAM: &str = "vdso_breakpoint";
/// uprobe program on user-space entry points into the vDSO (libc, Go runtime).
pub const VDSO_UPROBE_PROGRAM: &str = "vdso_entry_uprobe";
/// Map of [`ExactCoverage`] per thread id or per process ([`COVERAGE_PROCESS`]
/// | tgid): which vDSO functions are counted exactly there, so the sampler
/// leaves them out and exact hits and samples of one window add up.
pub const EXACT_COVERAGE_MAP: &str = "EXACT_COVERAGE";
/// Capacity of [`EXACT_COVERAGE_MAP`]: traced threads and processes.
pub const EXACT_COVERAGE_ENTRIES: u32 = 65_536;
/// Marks a key of [`EXACT_COVERAGE_MAP`] as a whole process (uprobes cover
/// every thread); without it the key is one thread (breakpoints are per thread).
/// Thread ids stay below 2^22 (`PID_MAX_LIMIT`).
pub const COVERAGE_PROCESS: u32 = 1 << 31;

/// Bytes of the 64-bit vDSO that [`COARSE_CODE_MAP`], [`SHARED_CODE_MAP`] and
/// [`SAMPLE_OFFSETS_MAP`] cover (the x86_64 and arm64 images are 8 KB).
pub const VDSO_CODE_BYTES: u32 = 16_384;
/// Bitmap (`u64` words) of the 64-bit vDSO's bytes that only coarse-clock
/// reads run, set by the calibration: a sample there is keyed
/// [`CLOCK_COARSE_SAMPLED`](crate::CLOCK_COARSE_SAMPLED), and priced as one.
pub const COARSE_CODE_MAP: &str = "COARSE_CODE";
/// Bitmap, as [`COARSE_CODE_MAP`], of the bytes coarse and fine reads both
/// run: a sample there is keyed
/// [`CLOCK_SHARED_SAMPLED`](crate::CLOCK_SHARED_SAMPLED).
pub const SHARED_CODE_MAP: &str = "SHARED_CODE";
/// Samples per byte offset of the 64-bit vDSO, of the one process
/// [`OFFSET_SAMPLED_TGID_MAP`] names (the calibration's children).
pub const SAMPLE_OFFSETS_MAP: &str = "SAMPLE_OFFSETS";
/// The process whose samples [`SAMPLE_OFFSETS_MAP`] counts (0: none).
pub const OFFSET_SAMPLED_TGID_MAP: &str = "OFFSET_SAMPLED_TGID";

/// `cgroup:cgroup_mkdir` program: records each new cgroup's path, so the
/// container of a process that ends with its cgroup stays known.
pub const CGROUP_MKDIR_PROGRAM: &str = "cgroup_created";
/// LRU map of [`CgroupPath`] by cgroup id, filled by [`CGROUP_MKDIR_PROGRAM`]
/// and emptied by user space each window.
pub const CGROUP_PATHS_MAP: &str = "CGROUP_PATHS";
/// Capacity of [`CGROUP_PATHS_MAP`]: cgroups created within one window
/// (a container makes one per hierarchy: a dozen on hybrid hosts).
pub const CGROUP_PATH_ENTRIES: u32 = 4_096;
/// Bytes of a recorded path: a kubepods systemd-driver path is about 190.
pub const CGROUP_PATH_LEN: usize = 256;

/// Default capacity of [`VDSO_CALLS_MAP`] (the loader sizes all three
/// counter maps alike, from `--map-entries`).
pub const DEFAULT_VDSO_CALL_ENTRIES: u32 = DEFAULT_TIME_CALL_ENTRIES;

/// Default capacity of [`TIME_CALLS_MAP`]; the loader may change it.
pub const DEFAULT_TIME_CALL_ENTRIES: u32 = 16_384;
/// Default capacity of [`PROCESSES_MAP`]; the loader may change it.
pub const DEFAULT_PROCESS_ENTRIES: u32 = DEFAULT_TIME_CALL_ENTRIES;

/// Program that marks a process image ended when its last thread exits.
pub const PROCESS_EXIT_PROGRAM: &str = "process_exited";
/// Program that marks a process image ended when it execs.
pub const PROCESS_EXEC_PROGRAM: &str = "process_execed";
