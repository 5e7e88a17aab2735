//! Types shared by the eBPF programs and user space: map keys and values, the
//! loader-provided configuration, and the tables that decide which syscalls are
//! time calls. Everything here is `#[repr(C)]` and `no_std`, so both sides read
//! the same bytes and the same rules.
#![cfg_attr(not(test), no_std)]

/// Map of the counter slot of each [`CallKey`] (`u32` index into
/// [`TIME_CALL_COUNTS_MAP`]). A time call finds its counter by key once per
/// CPU; after that through [`RECENT_TIME_CALL_MAP`] without hashing: a hash
/// lookup is a function call, which costs more than the rest of the count.
pub const TIME_CALLS_MAP: &str = "TIME_CALLS";
/// Per-CPU array of `u64` counters, one per slot of [`TIME_CALLS_MAP`].
pub const TIME_CALL_COUNTS_MAP: &str = "TIME_CALL_COUNTS";
/// Queue of the free slots of [`TIME_CALL_COUNTS_MAP`]: user space fills it
/// at load and gives a slot back (zeroed) when it forgets its key.
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

/// Address of the legacy vsyscall page (x86_64 ABI): calls into it are emulated.
pub const LEGACY_VSYSCALL_PAGE: u64 = 0xffff_ffff_ff60_0000;

/// A kernel function every time syscall of one ABI passes (x86_64's
/// `__x64_sys_*`, the ia32 wrappers for 32-bit tasks): where fentry and kprobe
/// programs count time calls without touching any other syscall. Each has its
/// own fentry and kprobe program, which knows its call and ABI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallEntry {
    /// The kernel function (its first argument is the user `struct pt_regs *`).
    pub function: &'static str,
    pub call: TimeCall,
    pub abi: SyscallAbi,
    /// Names of its programs in the object.
    pub fentry_program: &'static str,
    pub kprobe_program: &'static str,
}

/// The time syscalls' kernel functions, one row each: (function, call, ABI,
/// fentry program, kprobe program). Calls `$then!` with the rows, so the table
/// here and the eBPF programs are made from this one list.
#[cfg(not(any(target_arch = "aarch64", bpf_target_arch = "aarch64")))]
#[macro_export]
macro_rules! for_each_syscall_entry {
    ($then:ident) => {
        $then! {
            "__x64_sys_clock_gettime", ClockGettime, X86_64, fentry_x64_clock_gettime, kprobe_x64_clock_gettime;
            "__x64_sys_gettimeofday", Gettimeofday, X86_64, fentry_x64_gettimeofday, kprobe_x64_gettimeofday;
            "__x64_sys_time", Time, X86_64, fentry_x64_time, kprobe_x64_time;
            "__x64_sys_clock_getres", ClockGetres, X86_64, fentry_x64_clock_getres, kprobe_x64_clock_getres;
            "__x64_sys_getcpu", Getcpu, X86_64, fentry_x64_getcpu, kprobe_x64_getcpu;
            "__x64_sys_getrandom", Getrandom, X86_64, fentry_x64_getrandom, kprobe_x64_getrandom;
            "__ia32_sys_clock_gettime32", ClockGettime, I386, fentry_ia32_clock_gettime32, kprobe_ia32_clock_gettime32;
            "__ia32_sys_clock_gettime", ClockGettime, I386, fentry_ia32_clock_gettime64, kprobe_ia32_clock_gettime64;
            "__ia32_compat_sys_gettimeofday", Gettimeofday, I386, fentry_ia32_gettimeofday, kprobe_ia32_gettimeofday;
            "__ia32_sys_time32", Time, I386, fentry_ia32_time32, kprobe_ia32_time32;
            "__ia32_sys_clock_getres_time32", ClockGetres, I386, fentry_ia32_clock_getres32, kprobe_ia32_clock_getres32;
            "__ia32_sys_clock_getres", ClockGetres, I386, fentry_ia32_clock_getres64, kprobe_ia32_clock_getres64;
            "__ia32_sys_getcpu", Getcpu, I386, fentry_ia32_getcpu, kprobe_ia32_getcpu;
            "__ia32_sys_getrandom", Getrandom, I386, fentry_ia32_getrandom, kprobe_ia32_getrandom;
        }
    };
}

/// arm64's: `__arm64_sys_*` (no `time` syscall; compat tasks are not counted).
#[cfg(any(target_arch = "aarch64", bpf_target_arch = "aarch64"))]
#[macro_export]
macro_rules! for_each_syscall_entry {
    ($then:ident) => {
        $then! {
            "__arm64_sys_clock_gettime", ClockGettime, Arm64, fentry_arm64_clock_gettime, kprobe_arm64_clock_gettime;
            "__arm64_sys_gettimeofday", Gettimeofday, Arm64, fentry_arm64_gettimeofday, kprobe_arm64_gettimeofday;
            "__arm64_sys_clock_getres", ClockGetres, Arm64, fentry_arm64_clock_getres, kprobe_arm64_clock_getres;
            "__arm64_sys_getcpu", Getcpu, Arm64, fentry_arm64_getcpu, kprobe_arm64_getcpu;
            "__arm64_sys_getrandom", Getrandom, Arm64, fentry_arm64_getrandom, kprobe_arm64_getrandom;
        }
    };
}

macro_rules! syscall_entries {
    ($( $function:tt, $call:ident, $abi:ident, $fentry:ident, $kprobe:ident; )*) => {
        /// Every entry function, x86_64 first.
        pub const SYSCALL_ENTRIES: &[SyscallEntry] = &[$(
            SyscallEntry {
                function: $function,
                call: TimeCall::$call,
                abi: SyscallAbi::$abi,
                fentry_program: stringify!($fentry),
                kprobe_program: stringify!($kprobe),
            },
        )*];
    };
}

for_each_syscall_entry!(syscall_entries);

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

/// A cgroup's path from its hierarchy's root (`/kubepods.slice/…`), NUL-terminated.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupPath {
    pub bytes: [u8; CGROUP_PATH_LEN],
}

impl CgroupPath {
    pub const EMPTY: CgroupPath = CgroupPath {
        bytes: [0; CGROUP_PATH_LEN],
    };

    /// The text up to the first NUL; None when it is not UTF-8 or empty.
    pub fn text(&self) -> Option<&str> {
        let end = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(CGROUP_PATH_LEN);
        core::str::from_utf8(&self.bytes[..end])
            .ok()
            .filter(|t| !t.is_empty())
    }
}

/// Default capacity of [`VDSO_CALLS_MAP`].
pub const DEFAULT_VDSO_CALL_ENTRIES: u32 = 16_384;

/// Default capacity of [`TIME_CALLS_MAP`]; the loader may change it.
pub const DEFAULT_TIME_CALL_ENTRIES: u32 = 16_384;
/// Default capacity of [`PROCESSES_MAP`]; the loader may change it.
pub const DEFAULT_PROCESS_ENTRIES: u32 = 8_192;

/// `clock_id` of a [`CallKey`] whose call takes no clock.
pub const NO_CLOCK: i32 = i32::MIN;

/// Dynamic clock ids encode a thread id, a pid or a file descriptor, so one
/// process could make any number of them. The programs fold them, and ids the
/// kernel does not know, into one key per kind before they reach a map: a key
/// is never chosen by a caller. These stand for the kinds (never real ids:
/// user space only ever sees them as keys).
/// Another thread's CPU clock (`pthread_getcpuclockid`).
pub const CLOCK_THREAD_CPU: i32 = i32::MIN + 1;
/// A process's CPU clock (`clock_getcpuclockid`).
pub const CLOCK_PROCESS_CPU: i32 = i32::MIN + 2;
/// An fd clock (`/dev/ptpN`, `FD_TO_CLOCKID`).
pub const CLOCK_FD: i32 = i32::MIN + 3;
/// An id the kernel rejects with EINVAL.
pub const CLOCK_INVALID: i32 = i32::MIN + 4;
/// The overflow key of a process that reached [`ProgramConfig::process_key_cap`]:
/// its calls still count, without their clock.
pub const CLOCK_OVERFLOW: i32 = i32::MIN + 5;
/// Static clock ids are below this (`MAX_CLOCKS`).
pub const MAX_STATIC_CLOCK: i32 = 16;

/// The map key of a clock id: static ids as they are, the rest by kind (see
/// [`CLOCK_THREAD_CPU`]). Dynamic ids are `((~owner) << 3) | type`, with bit 2
/// for per-thread and type 3 for an fd clock (`include/linux/posix-timers.h`).
#[inline(always)]
pub const fn clock_key(id: i32) -> i32 {
    if id >= 0 {
        if id < MAX_STATIC_CLOCK {
            id
        } else {
            CLOCK_INVALID
        }
    } else if id & 7 == 3 {
        CLOCK_FD
    } else if id & 3 == 3 {
        CLOCK_INVALID
    } else if id & 4 != 0 {
        CLOCK_THREAD_CPU
    } else {
        CLOCK_PROCESS_CPU
    }
}

/// Distinct counters one process may create in each counter map before its
/// new keys go to its overflow key: more than any real program uses (a few
/// calls × clocks × origins), so no process can crowd others out of the map.
pub const DEFAULT_PROCESS_KEY_CAP: u32 = 64;

/// arm64's `TIF_32BIT` in `thread_info.flags` (bit 22): a compat task.
pub const TIF_32BIT: u64 = 1 << 22;

/// `TS_COMPAT` in x86 `thread_info.status`: set while a task runs a 32-bit syscall
/// (whether the task is a 32-bit one or a 64-bit one using `int $0x80`). It is a
/// `#define`, so BTF does not carry it; it has kept this value since 2.6.
pub const TS_COMPAT: u32 = 0x0002;

/// Bytes between the user stack pointer at a 32-bit syscall entry through
/// `__kernel_vsyscall` and the return address of its caller: the vDSO routine
/// pushes ecx, edx and ebp before entering the kernel.
pub const KERNEL_VSYSCALL_RETURN_OFFSET: u64 = 12;

/// Kernel structure offsets read by the programs, found in the running kernel's
/// BTF at start-up (Rust eBPF cannot emit CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.mm`
    pub task_mm: u32,
    /// `task_struct.group_leader`
    pub task_group_leader: u32,
    /// `task_struct.start_boottime`
    pub task_start_boottime: u32,
    /// `task_struct.self_exec_id`
    pub task_self_exec_id: u32,
    /// `task_struct.comm`
    pub task_comm: u32,
    /// x86: `task_struct.thread_info.status` (`TS_COMPAT`); arm64:
    /// `task_struct.thread_info.flags` (`TIF_32BIT`): whether the syscall
    /// being made is a 32-bit one.
    pub task_thread_status: u32,
    /// `mm_struct.context.vdso`
    pub mm_vdso: u32,
    /// x86: `mm_struct.context.vdso_image` (arm64 has none: every 64-bit
    /// task maps the one image, whose length user space hands over)
    pub mm_vdso_image: u32,
    /// x86: `vdso_image.size`
    pub vdso_image_size: u32,
    /// `pt_regs.ip` (arm64: `pt_regs.pc`)
    pub regs_ip: u32,
    /// `pt_regs.sp`
    pub regs_sp: u32,
    /// `pt_regs.di`, first argument of a 64-bit syscall (arm64: `pt_regs.regs[0]`)
    pub regs_di: u32,
    /// `cgroup.kn`
    pub cgroup_kn: u32,
    /// `kernfs_node.id` (a cgroup's id: its directory's inode)
    pub kernfs_node_id: u32,
    /// x86: `pt_regs.bx` (first argument of a 32-bit syscall)
    pub regs_bx: u32,
    /// `task_struct.tgid` (read directly: a helper call costs more)
    pub task_tgid: u32,
    /// `cgroup.root`: the hierarchy a cgroup belongs to
    pub cgroup_root: u32,
    /// `cgroup_root.hierarchy_id`: 0 for the unified (v2) hierarchy; kernfs
    /// ids are per hierarchy, so only its cgroups are recorded
    pub cgroup_root_hierarchy_id: u32,
    /// `task_struct.signal`
    pub task_signal: u32,
    /// `signal_struct.live`: threads of the group not yet exited (0 at the
    /// last thread's `sched_process_exit`)
    pub signal_live: u32,
}

impl KernelOffsets {
    pub const ZERO: KernelOffsets = KernelOffsets {
        task_mm: 0,
        task_group_leader: 0,
        task_start_boottime: 0,
        task_self_exec_id: 0,
        task_comm: 0,
        task_thread_status: 0,
        mm_vdso: 0,
        mm_vdso_image: 0,
        vdso_image_size: 0,
        regs_ip: 0,
        regs_sp: 0,
        regs_di: 0,
        regs_bx: 0,
        task_tgid: 0,
        cgroup_kn: 0,
        kernfs_node_id: 0,
        cgroup_root: 0,
        cgroup_root_hierarchy_id: 0,
        task_signal: 0,
        signal_live: 0,
    };
}

/// Everything the loader hands the programs before they run.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramConfig {
    pub offsets: KernelOffsets,
    /// The observer's own process, whose time calls are not counted.
    pub observer_tgid: u32,
    /// See [`DEFAULT_PROCESS_KEY_CAP`].
    pub process_key_cap: u32,
    /// Length of the 64-bit vDSO text, for kernels whose mm does not say
    /// (arm64); 0 where the programs read it per task (x86).
    pub vdso_len: u32,
    /// Always 0.
    pub _pad: u32,
}

impl ProgramConfig {
    /// What the object file holds until the loader overrides it.
    pub const ZERO: ProgramConfig = ProgramConfig {
        offsets: KernelOffsets::ZERO,
        observer_tgid: 0,
        process_key_cap: DEFAULT_PROCESS_KEY_CAP,
        vdso_len: 0,
        _pad: 0,
    };
}

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
    /// The key as three words: compared in three loads, with no memcmp call.
    #[inline(always)]
    pub const fn words(&self) -> [u64; 3] {
        // SAFETY: 24 bytes of plain integers without padding, 8-aligned.
        unsafe { core::mem::transmute::<CallKey, [u64; 3]>(*self) }
    }
}

/// The key a CPU counted last, with its counter's slot: a hot loop of one
/// process counts without a hash lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecentTimeCall {
    /// The key as the program built it (before any overflow to the process's
    /// overflow key: the slot may be that key's).
    pub key: CallKey,
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
        }
    }
}

/// How a process image ended, as the kernel marked it in [`ProcessInfo::ended`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessEnd {
    Running = 0,
    /// Its last thread exited (`sched_process_exit` with no thread left).
    Exited = 1,
    /// It called execve: the pid lives on as a new image (a new key).
    Execed = 2,
}

impl ProcessEnd {
    pub const fn from_u32(value: u32) -> ProcessEnd {
        match value {
            1 => ProcessEnd::Exited,
            2 => ProcessEnd::Execed,
            _ => ProcessEnd::Running,
        }
    }
}

/// Program that marks a process image ended when its last thread exits.
pub const PROCESS_EXIT_PROGRAM: &str = "process_exited";
/// Program that marks a process image ended when it execs.
pub const PROCESS_EXEC_PROGRAM: &str = "process_execed";

/// How a vDSO call was seen.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provenance {
    /// A cpu-clock sample found the user instruction pointer inside the function:
    /// the count is of samples, turned into an estimate of calls in user space.
    Sampled = 0,
    /// A uprobe on the caller's entry point (libc `clock_gettime`, Go runtime): exact.
    Uprobe = 1,
    /// A hardware execute breakpoint on the vDSO function itself: exact.
    Breakpoint = 2,
}

impl Provenance {
    pub const fn from_u8(value: u8) -> Option<Provenance> {
        match value {
            0 => Some(Provenance::Sampled),
            1 => Some(Provenance::Uprobe),
            2 => Some(Provenance::Breakpoint),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Provenance::Sampled => "sampled",
            Provenance::Uprobe => "uprobe",
            Provenance::Breakpoint => "breakpoint",
        }
    }
}

/// `call` of a [`VdsoKey`] for vDSO code no time call claims (a table slot
/// never says it; an exact probe with an unknown call would).
pub const VDSO_OTHER_CODE: u8 = 0xff;
/// `call` of a table slot holding syscall-entry code (`__kernel_vsyscall`,
/// through which every 32-bit syscall passes): samples there are not time calls.
pub const VDSO_SYSCALL_ENTRY: u8 = 0xfe;

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

/// What exact counting covers in one thread or process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExactCoverage {
    /// Where the traced image maps its vDSO (`mm->context.vdso`): after an
    /// exec the old coverage no longer applies, until user space attaches again.
    pub vdso_base: u64,
    /// Bit `1 << call` per [`TimeCall`] counted exactly.
    pub calls: u32,
    pub _pad: u32,
}

impl ExactCoverage {
    #[inline(always)]
    pub const fn covers(&self, vdso_base: u64, call: u8) -> bool {
        self.vdso_base == vdso_base && call < 32 && self.calls & (1 << call) != 0
    }
}

/// Most functions the table holds.
pub const VDSO_FUNCTION_SLOTS: usize = 12;

/// Where each exported function of a vDSO image lies, as offsets from the
/// start of its text (`mm->context.vdso`). An image is the same for every
/// process of its ABI in a boot, so user space reads each one once: the 64-bit
/// one from its own vDSO, the 32-bit one from a 32-bit child's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VdsoFunctionTable {
    pub count: u32,
    pub _pad: u32,
    pub start: [u32; VDSO_FUNCTION_SLOTS],
    pub end: [u32; VDSO_FUNCTION_SLOTS],
    /// A [`TimeCall`] per slot.
    pub call: [u8; VDSO_FUNCTION_SLOTS],
}

impl VdsoFunctionTable {
    pub const EMPTY: VdsoFunctionTable = VdsoFunctionTable {
        count: 0,
        _pad: 0,
        start: [0; VDSO_FUNCTION_SLOTS],
        end: [0; VDSO_FUNCTION_SLOTS],
        call: [0; VDSO_FUNCTION_SLOTS],
    };

    /// The call whose function holds `offset`, or [`VDSO_OTHER_CODE`]. Reads
    /// are volatile: in the eBPF object the table is a loader-written global whose
    /// initializer the compiler must not fold in.
    #[inline(always)]
    pub fn call_at(&self, offset: u64) -> u8 {
        use core::ptr::read_volatile;
        // SAFETY: plain reads of fields of a valid reference.
        let count = unsafe { read_volatile(&self.count) } as usize;
        let mut i = 0;
        while i < VDSO_FUNCTION_SLOTS && i < count {
            let (start, end) =
                unsafe { (read_volatile(&self.start[i]), read_volatile(&self.end[i])) };
            if offset >= start as u64 && offset < end as u64 {
                return unsafe { read_volatile(&self.call[i]) };
            }
            i += 1;
        }
        VDSO_OTHER_CODE
    }
}

/// Cookie of a uprobe on an entry point: which call, and where its clock is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UprobeCookie {
    pub call: TimeCall,
    /// `Some(id)`: the entry always reads this clock (Go's nanotime1 and
    /// walltime); `None`: the clock is the first argument.
    pub fixed_clock: Option<i32>,
}

impl UprobeCookie {
    const FIXED: u64 = 1 << 8;

    pub const fn encode(self) -> u64 {
        match self.fixed_clock {
            None => self.call as u64,
            Some(clock) => self.call as u64 | Self::FIXED | ((clock as u32 as u64) << 32),
        }
    }

    #[inline(always)]
    pub const fn decode(cookie: u64) -> Option<UprobeCookie> {
        let Some(call) = TimeCall::from_u8(cookie as u8) else {
            return None;
        };
        let fixed_clock = if cookie & Self::FIXED != 0 {
            Some((cookie >> 32) as u32 as i32)
        } else {
            None
        };
        Some(UprobeCookie { call, fixed_clock })
    }
}

/// Indexes of [`OBSERVER_STATS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObserverStat {
    /// A new [`CallKey`] could not be stored: its calls were not counted.
    TimeCallsMapFull = 0,
    /// A new [`ProcessKey`] could not be stored: the process shows without a name.
    ProcessesMapFull = 1,
    /// A kernel or user memory read failed: that call was not counted.
    ReadFailed = 2,
    /// A new [`VdsoKey`] could not be stored: vDSO calls or samples were lost.
    VdsoCallsMapFull = 3,
    /// Keys created in [`TIME_CALLS_MAP`]: with user space's deletions, how
    /// full it is (a per-CPU hash map cannot say).
    TimeKeysCreated = 4,
    /// Keys created in [`VDSO_CALLS_MAP`].
    VdsoKeysCreated = 5,
    /// A process reached its key cap: further new keys went to its overflow key.
    ProcessKeyCap = 6,
    /// A sample in vDSO code that no time call claims (not even through the
    /// return address of a helper): counted nowhere else.
    VdsoSampleUnattributed = 7,
    /// Entries created in [`PROCESSES_MAP`].
    ProcessesCreated = 8,
}

impl ObserverStat {
    pub const COUNT: u32 = 9;
    pub const ALL: [ObserverStat; 9] = [
        ObserverStat::TimeCallsMapFull,
        ObserverStat::ProcessesMapFull,
        ObserverStat::ReadFailed,
        ObserverStat::VdsoCallsMapFull,
        ObserverStat::TimeKeysCreated,
        ObserverStat::VdsoKeysCreated,
        ObserverStat::ProcessKeyCap,
        ObserverStat::VdsoSampleUnattributed,
        ObserverStat::ProcessesCreated,
    ];
}

/// The time calls followed, whatever ABI number they arrive under.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimeCall {
    ClockGettime = 0,
    Gettimeofday = 1,
    Time = 2,
    ClockGetres = 3,
    Getcpu = 4,
    Getrandom = 5,
}

impl TimeCall {
    pub const ALL: [TimeCall; 6] = [
        TimeCall::ClockGettime,
        TimeCall::Gettimeofday,
        TimeCall::Time,
        TimeCall::ClockGetres,
        TimeCall::Getcpu,
        TimeCall::Getrandom,
    ];

    pub const fn from_u8(value: u8) -> Option<TimeCall> {
        match value {
            0 => Some(TimeCall::ClockGettime),
            1 => Some(TimeCall::Gettimeofday),
            2 => Some(TimeCall::Time),
            3 => Some(TimeCall::ClockGetres),
            4 => Some(TimeCall::Getcpu),
            5 => Some(TimeCall::Getrandom),
            _ => None,
        }
    }

    /// Whether the first argument is a clock id.
    pub const fn takes_clock(self) -> bool {
        matches!(self, TimeCall::ClockGettime | TimeCall::ClockGetres)
    }

    pub const fn name(self) -> &'static str {
        match self {
            TimeCall::ClockGettime => "clock_gettime",
            TimeCall::Gettimeofday => "gettimeofday",
            TimeCall::Time => "time",
            TimeCall::ClockGetres => "clock_getres",
            TimeCall::Getcpu => "getcpu",
            TimeCall::Getrandom => "getrandom",
        }
    }
}

/// Where a kernel entry for a time call came from.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// The syscall instruction lies inside the task's vDSO: the vDSO itself gave up.
    VdsoFallback = 0,
    /// Issued outside the vDSO (syscall(2), a static or vDSO-less runtime path).
    Direct = 1,
    /// The task has no vDSO mapped at all.
    NoVdso = 2,
    /// A call into the legacy vsyscall page, emulated by the kernel.
    LegacyVsyscall = 3,
}

impl Origin {
    pub const ALL: [Origin; 4] = [
        Origin::VdsoFallback,
        Origin::Direct,
        Origin::NoVdso,
        Origin::LegacyVsyscall,
    ];

    pub const fn from_u8(value: u8) -> Option<Origin> {
        match value {
            0 => Some(Origin::VdsoFallback),
            1 => Some(Origin::Direct),
            2 => Some(Origin::NoVdso),
            3 => Some(Origin::LegacyVsyscall),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Origin::VdsoFallback => "vdso_fallback",
            Origin::Direct => "direct",
            Origin::NoVdso => "no_vdso",
            Origin::LegacyVsyscall => "legacy_vsyscall",
        }
    }
}

/// Which syscall table a number belongs to: decided per syscall, since a 64-bit
/// task may still issue `int $0x80`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SyscallAbi {
    X86_64 = 0,
    I386 = 1,
    /// aarch64's own (the generic syscall table).
    Arm64 = 2,
}

impl SyscallAbi {
    /// The ABI of this build's own processes (64-bit user space).
    #[cfg(any(target_arch = "aarch64", bpf_target_arch = "aarch64"))]
    pub const NATIVE: SyscallAbi = SyscallAbi::Arm64;
    #[cfg(not(any(target_arch = "aarch64", bpf_target_arch = "aarch64")))]
    pub const NATIVE: SyscallAbi = SyscallAbi::X86_64;

    pub const fn from_u8(value: u8) -> Option<SyscallAbi> {
        match value {
            0 => Some(SyscallAbi::X86_64),
            1 => Some(SyscallAbi::I386),
            2 => Some(SyscallAbi::Arm64),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            SyscallAbi::X86_64 => "x86_64",
            SyscallAbi::I386 => "i386",
            SyscallAbi::Arm64 => "arm64",
        }
    }

    /// The time call a syscall number of this ABI stands for.
    #[inline(always)]
    pub const fn time_call(self, nr: i64) -> Option<TimeCall> {
        match self {
            SyscallAbi::X86_64 => time_call_x86_64(nr),
            SyscallAbi::I386 => time_call_i386(nr),
            SyscallAbi::Arm64 => time_call_arm64(nr),
        }
    }

    /// Whether the vDSO of this ABI has a function for `call`: arm64's has no
    /// `time` (no such syscall either) and no `getcpu`, so a getcpu there
    /// always enters the kernel, and that is no fault.
    pub const fn vdso_has(self, call: TimeCall) -> bool {
        !matches!(
            (self, call),
            (SyscallAbi::Arm64, TimeCall::Getcpu | TimeCall::Time)
        )
    }
}

/// arm64 syscall numbers of the time calls (the generic table; there is no
/// `time` syscall).
#[inline(always)]
pub const fn time_call_arm64(nr: i64) -> Option<TimeCall> {
    match nr {
        113 => Some(TimeCall::ClockGettime),
        169 => Some(TimeCall::Gettimeofday),
        114 => Some(TimeCall::ClockGetres),
        168 => Some(TimeCall::Getcpu),
        278 => Some(TimeCall::Getrandom),
        _ => None,
    }
}

/// x86_64 syscall numbers of the time calls.
#[inline(always)]
pub const fn time_call_x86_64(nr: i64) -> Option<TimeCall> {
    match nr {
        228 => Some(TimeCall::ClockGettime),
        96 => Some(TimeCall::Gettimeofday),
        201 => Some(TimeCall::Time),
        229 => Some(TimeCall::ClockGetres),
        309 => Some(TimeCall::Getcpu),
        318 => Some(TimeCall::Getrandom),
        _ => None,
    }
}

/// i386 (compat) syscall numbers of the time calls, `*_time64` variants included.
#[inline(always)]
pub const fn time_call_i386(nr: i64) -> Option<TimeCall> {
    match nr {
        265 | 403 => Some(TimeCall::ClockGettime),
        78 => Some(TimeCall::Gettimeofday),
        13 => Some(TimeCall::Time),
        266 | 406 => Some(TimeCall::ClockGetres),
        318 => Some(TimeCall::Getcpu),
        355 => Some(TimeCall::Getrandom),
        _ => None,
    }
}

/// Whether a syscall number is a time call in either table: the one test every
/// syscall of the machine pays before the program returns.
#[cfg(not(any(target_arch = "aarch64", bpf_target_arch = "aarch64")))]
#[inline(always)]
pub const fn may_be_time_call(nr: i64) -> bool {
    time_call_x86_64(nr).is_some() || time_call_i386(nr).is_some()
}

/// The same on arm64 (64-bit tasks only: compat tasks are not counted).
#[cfg(any(target_arch = "aarch64", bpf_target_arch = "aarch64"))]
#[inline(always)]
pub const fn may_be_time_call(nr: i64) -> bool {
    time_call_arm64(nr).is_some()
}

/// The call behind `nr` of tracepoint `vsyscall:emulate_vsyscall`.
#[inline(always)]
pub const fn time_call_vsyscall(nr: i64) -> Option<TimeCall> {
    match nr {
        0 => Some(TimeCall::Gettimeofday),
        1 => Some(TimeCall::Time),
        2 => Some(TimeCall::Getcpu),
        _ => None,
    }
}

/// Classifies a kernel entry by the user address that issued it, given the task's
/// vDSO text `[vdso_start, vdso_start + vdso_len)`. `ip` is the address after the
/// syscall instruction, so the test is `start < ip <= start + len`.
#[inline(always)]
pub const fn origin_of(ip: u64, vdso_start: u64, vdso_len: u64) -> Origin {
    if vdso_start == 0 {
        Origin::NoVdso
    } else if inside_vdso(ip, vdso_start, vdso_len) {
        Origin::VdsoFallback
    } else {
        Origin::Direct
    }
}

/// `start < addr <= start + len`: an address just after an instruction of the
/// vDSO (a syscall's `ip`, a return address).
#[inline(always)]
pub const fn inside_vdso(addr: u64, vdso_start: u64, vdso_len: u64) -> bool {
    addr > vdso_start && addr <= vdso_start.wrapping_add(vdso_len)
}

/// The offset in the vDSO text of an instruction at `ip` (a sample's or a
/// breakpoint's: the instruction itself, `start <= ip < start + len`); None
/// outside it, or when the task has no vDSO.
#[inline(always)]
pub const fn vdso_instruction_offset(ip: u64, vdso_start: u64, vdso_len: u64) -> Option<u64> {
    if vdso_start != 0 && ip >= vdso_start && ip - vdso_start < vdso_len {
        Some(ip - vdso_start)
    } else {
        None
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] plain integers and arrays without padding.
    unsafe impl aya::Pod for super::CallKey {}
    unsafe impl aya::Pod for super::ProcessKey {}
    unsafe impl aya::Pod for super::ProcessInfo {}
    unsafe impl aya::Pod for super::ProgramConfig {}
    unsafe impl aya::Pod for super::VdsoKey {}
    unsafe impl aya::Pod for super::VdsoFunctionTable {}
    unsafe impl aya::Pod for super::ExactCoverage {}
    unsafe impl aya::Pod for super::CgroupPath {}
    unsafe impl aya::Pod for super::RecentTimeCall {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_64_numbers() {
        assert_eq!(time_call_x86_64(228), Some(TimeCall::ClockGettime));
        assert_eq!(time_call_x86_64(96), Some(TimeCall::Gettimeofday));
        assert_eq!(time_call_x86_64(201), Some(TimeCall::Time));
        assert_eq!(time_call_x86_64(229), Some(TimeCall::ClockGetres));
        assert_eq!(time_call_x86_64(309), Some(TimeCall::Getcpu));
        assert_eq!(time_call_x86_64(318), Some(TimeCall::Getrandom));
        // getppid, read, the i386 clock_gettime64 number: not time calls in this table.
        for nr in [110, 0, 403, 265, -1, i64::MAX] {
            assert_eq!(time_call_x86_64(nr), None, "{nr}");
        }
    }

    #[test]
    fn i386_numbers_including_time64() {
        assert_eq!(time_call_i386(265), Some(TimeCall::ClockGettime));
        assert_eq!(time_call_i386(403), Some(TimeCall::ClockGettime));
        assert_eq!(time_call_i386(78), Some(TimeCall::Gettimeofday));
        assert_eq!(time_call_i386(13), Some(TimeCall::Time));
        assert_eq!(time_call_i386(266), Some(TimeCall::ClockGetres));
        assert_eq!(time_call_i386(406), Some(TimeCall::ClockGetres));
        assert_eq!(time_call_i386(318), Some(TimeCall::Getcpu));
        assert_eq!(time_call_i386(355), Some(TimeCall::Getrandom));
        // 228 is x86_64 clock_gettime, but i386 228 is fsetxattr.
        assert_eq!(time_call_i386(228), None);
    }

    #[test]
    fn the_same_number_means_different_calls_per_abi() {
        // 318: getrandom on x86_64, getcpu on i386.
        assert_eq!(SyscallAbi::X86_64.time_call(318), Some(TimeCall::Getrandom));
        assert_eq!(SyscallAbi::I386.time_call(318), Some(TimeCall::Getcpu));
    }

    #[test]
    fn prefilter_accepts_exactly_the_union() {
        for nr in -5..1000 {
            let expected = time_call_x86_64(nr).is_some() || time_call_i386(nr).is_some();
            assert_eq!(may_be_time_call(nr), expected, "{nr}");
        }
        assert_eq!((0..1000).filter(|&nr| may_be_time_call(nr)).count(), 13);
    }

    #[test]
    fn vsyscall_numbers() {
        assert_eq!(time_call_vsyscall(0), Some(TimeCall::Gettimeofday));
        assert_eq!(time_call_vsyscall(1), Some(TimeCall::Time));
        assert_eq!(time_call_vsyscall(2), Some(TimeCall::Getcpu));
        assert_eq!(time_call_vsyscall(3), None);
    }

    #[test]
    fn origin_is_decided_by_the_address_after_the_syscall_instruction() {
        let start = 0x7fff_0000_0000;
        let len = 0x2000;
        assert_eq!(origin_of(0x5555_0000_1234, start, len), Origin::Direct);
        assert_eq!(origin_of(start + 0x800, start, len), Origin::VdsoFallback);
        // A `syscall` in the last bytes of the vDSO leaves ip at its very end.
        assert_eq!(origin_of(start + len, start, len), Origin::VdsoFallback);
        assert_eq!(origin_of(start + len + 1, start, len), Origin::Direct);
        // ip can never equal start (it points after an instruction).
        assert_eq!(origin_of(start, start, len), Origin::Direct);
        assert_eq!(origin_of(start + 8, 0, 0), Origin::NoVdso);
    }

    #[test]
    fn an_instruction_is_in_the_vdso_from_its_first_byte_to_before_its_end() {
        let (start, len) = (0x7fff_0000, 0x2000);
        assert_eq!(vdso_instruction_offset(start, start, len), Some(0));
        assert_eq!(
            vdso_instruction_offset(start + len - 1, start, len),
            Some(len - 1)
        );
        assert_eq!(vdso_instruction_offset(start + len, start, len), None);
        assert_eq!(vdso_instruction_offset(start - 1, start, len), None);
        assert_eq!(vdso_instruction_offset(8, 0, 0), None);
        // A return address just past the end is still the vDSO's (the other rule).
        assert!(inside_vdso(start + len, start, len));
    }

    #[test]
    fn enums_round_trip_through_their_map_bytes() {
        for call in TimeCall::ALL {
            assert_eq!(TimeCall::from_u8(call as u8), Some(call));
        }
        for origin in Origin::ALL {
            assert_eq!(Origin::from_u8(origin as u8), Some(origin));
        }
        assert_eq!(SyscallAbi::from_u8(1), Some(SyscallAbi::I386));
        assert_eq!(TimeCall::from_u8(6), None);
        assert_eq!(Origin::from_u8(4), None);
    }

    #[test]
    fn vdso_functions_are_found_by_offset() {
        let mut table = VdsoFunctionTable::EMPTY;
        table.count = 2;
        table.start[0] = 0x100;
        table.end[0] = 0x180;
        table.call[0] = TimeCall::ClockGettime as u8;
        table.start[1] = 0x200;
        table.end[1] = 0x210;
        table.call[1] = TimeCall::Time as u8;
        // A stale slot beyond count is ignored.
        table.start[2] = 0;
        table.end[2] = 0x1000;
        assert_eq!(table.call_at(0x100), TimeCall::ClockGettime as u8);
        assert_eq!(table.call_at(0x17f), TimeCall::ClockGettime as u8);
        assert_eq!(table.call_at(0x180), VDSO_OTHER_CODE);
        assert_eq!(table.call_at(0x20f), TimeCall::Time as u8);
        assert_eq!(table.call_at(0x50), VDSO_OTHER_CODE);
    }

    #[test]
    fn uprobe_cookies_round_trip() {
        for cookie in [
            UprobeCookie {
                call: TimeCall::ClockGettime,
                fixed_clock: None,
            },
            UprobeCookie {
                call: TimeCall::ClockGettime,
                fixed_clock: Some(1),
            },
            UprobeCookie {
                call: TimeCall::ClockGetres,
                fixed_clock: Some(0),
            },
            UprobeCookie {
                call: TimeCall::Gettimeofday,
                fixed_clock: Some(-7),
            },
        ] {
            assert_eq!(UprobeCookie::decode(cookie.encode()), Some(cookie));
        }
        assert_eq!(UprobeCookie::decode(0xfe), None);
    }

    #[test]
    fn keys_have_no_padding() {
        assert_eq!(core::mem::size_of::<VdsoKey>(), 24);
        // Keys are hashed as bytes by the kernel: hidden padding would split counters.
        assert_eq!(core::mem::size_of::<ProcessKey>(), 16);
        assert_eq!(core::mem::size_of::<CallKey>(), 24);
        assert_eq!(core::mem::size_of::<ProcessInfo>(), COMM_LEN + 32);
    }

    #[test]
    fn clock_keys_fold_dynamic_and_invalid_ids_by_kind() {
        for id in 0..MAX_STATIC_CLOCK {
            assert_eq!(clock_key(id), id);
        }
        assert_eq!(clock_key(16), CLOCK_INVALID);
        assert_eq!(clock_key(i32::MAX), CLOCK_INVALID);
        // MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED) for many tids: one key.
        for tid in [1, 77, 4_000_000] {
            assert_eq!(clock_key(((!tid) << 3) | 2 | 4), CLOCK_THREAD_CPU);
            assert_eq!(clock_key(((!tid) << 3) | 2), CLOCK_PROCESS_CPU);
            assert_eq!(clock_key((!tid) << 3), CLOCK_PROCESS_CPU); // CPUCLOCK_PROF
            assert_eq!(clock_key(((!tid) << 3) | 3), CLOCK_FD);
            assert_eq!(clock_key(((!tid) << 3) | 7), CLOCK_INVALID);
        }
        // The kinds never collide with NO_CLOCK or with each other.
        let kinds = [
            NO_CLOCK,
            CLOCK_THREAD_CPU,
            CLOCK_PROCESS_CPU,
            CLOCK_FD,
            CLOCK_INVALID,
            CLOCK_OVERFLOW,
        ];
        for (i, a) in kinds.iter().enumerate() {
            assert!(kinds[i + 1..].iter().all(|b| a != b));
        }
    }
}

/// Fields of a `/proc/PID/stat` line, shared by the observer and its benchmark.
/// `comm` (field 2) may hold spaces and parentheses, so fields are counted from
/// the last `)`.
pub mod proc_stat {
    fn after_comm(stat: &str) -> Option<core::str::SplitWhitespace<'_>> {
        Some(stat[stat.rfind(')')? + 1..].split_whitespace())
    }

    /// utime + stime (fields 14 and 15), in clock ticks.
    pub fn cpu_ticks(stat: &str) -> Option<u64> {
        let mut fields = after_comm(stat)?;
        let utime: u64 = fields.nth(11)?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        Some(utime + stime)
    }

    /// Start time after boot (field 22), in clock ticks.
    pub fn start_ticks(stat: &str) -> Option<u64> {
        after_comm(stat)?.nth(19)?.parse().ok()
    }
}

/// The domain enums serialize as their `name()`: the one spelling JSON, metric
/// labels and tables share.
#[cfg(feature = "user")]
mod serialize_by_name {
    use super::{Origin, Provenance, SyscallAbi, TimeCall};

    macro_rules! by_name {
        ($($type:ty),*) => {$(
            impl serde::Serialize for $type {
                fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                    serializer.serialize_str(self.name())
                }
            }
        )*};
    }

    by_name!(Origin, Provenance, SyscallAbi, TimeCall);
}
