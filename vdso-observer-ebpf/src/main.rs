//! Kernel side of vdso-observer: count time calls that enter the kernel (per
//! process, call, clock and origin) and vDSO calls seen by the cpu-clock sampler,
//! uprobes and hardware breakpoints. It only counts; user space names, sums and
//! judges. Every syscall on the machine passes `time_syscall_enter`, so anything
//! that is not a time call must leave after one comparison chain. Rare events (a
//! map found full, a failed read) are said once per CPU through aya-log, off the
//! counting path.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
        bpf_get_current_task_btf, bpf_get_current_uid_gid, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes, bpf_probe_read_user,
    },
    macros::{btf_tracepoint, fentry, kprobe, map, perf_event, raw_tracepoint, uprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, Queue},
    programs::{
        BtfTracePointContext, FEntryContext, PerfEventContext, ProbeContext, RawTracePointContext,
    },
};
use aya_log_ebpf::debug;
use vdso_observer_common::{
    CGROUP_PATH_ENTRIES, CLOCK_OVERFLOW, COVERAGE_PROCESS, CallKey, CgroupPath,
    DEFAULT_PROCESS_ENTRIES, DEFAULT_TIME_CALL_ENTRIES, DEFAULT_VDSO_CALL_ENTRIES,
    EXACT_COVERAGE_ENTRIES, ExactCoverage, KERNEL_VSYSCALL_RETURN_OFFSET, LEGACY_VSYSCALL_PAGE,
    NO_CLOCK, ObserverStat, Origin, ProcessInfo, ProcessKey, ProgramConfig, Provenance,
    RecentTimeCall, SyscallAbi, TimeCall, UprobeCookie, VDSO_OTHER_CODE, VDSO_SYSCALL_ENTRY,
    VdsoFunctionTable, VdsoKey, clock_key, inside_vdso, may_be_time_call, origin_of,
    time_call_vsyscall,
};

mod user_regs;

use user_regs::UserRegs;

const EEXIST: i32 = 17;

#[unsafe(no_mangle)]
static PROGRAM_CONFIG: Global<ProgramConfig> = Global::new(ProgramConfig::ZERO);

/// One field of the loader-written config, read on its own: `Global::load`
/// copies the whole struct, a byte-wise memcpy on every time call.
macro_rules! config {
    ($($field:tt)+) => {{
        let config = (&raw const PROGRAM_CONFIG).cast::<ProgramConfig>();
        // SAFETY: Global<T> is a transparent wrapper of T, written by the loader
        // before the program is loaded; volatile, so the initializer is not folded in.
        unsafe { core::ptr::read_volatile(&raw const (*config).$($field)+) }
    }};
}

#[unsafe(no_mangle)]
static VDSO_FUNCTIONS: Global<VdsoFunctionTable> = Global::new(VdsoFunctionTable::EMPTY);

#[unsafe(no_mangle)]
static VDSO32_FUNCTIONS: Global<VdsoFunctionTable> = Global::new(VdsoFunctionTable::EMPTY);

#[map]
static VDSO_CALLS: PerCpuHashMap<VdsoKey, u64> =
    PerCpuHashMap::with_max_entries(DEFAULT_VDSO_CALL_ENTRIES, 0);

/// The counter slot of each key (see `TIME_CALLS_MAP`).
#[map]
static TIME_CALLS: HashMap<CallKey, u32> = HashMap::with_max_entries(DEFAULT_TIME_CALL_ENTRIES, 0);

#[map]
static TIME_CALL_COUNTS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(DEFAULT_TIME_CALL_ENTRIES, 0);

#[map]
static FREE_TIME_CALL_SLOTS: Queue<u32> = Queue::with_max_entries(DEFAULT_TIME_CALL_ENTRIES, 0);

#[map]
static RECENT_TIME_CALL: PerCpuArray<RecentTimeCall> = PerCpuArray::with_max_entries(1, 0);

#[map]
static SLOT_GENERATION: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static PROCESSES: HashMap<ProcessKey, ProcessInfo> =
    HashMap::with_max_entries(DEFAULT_PROCESS_ENTRIES, 0);

#[map]
static EXACT_COVERAGE: HashMap<u32, ExactCoverage> =
    HashMap::with_max_entries(EXACT_COVERAGE_ENTRIES, 0);

#[map]
static CGROUP_PATHS: LruHashMap<u64, CgroupPath> =
    LruHashMap::with_max_entries(CGROUP_PATH_ENTRIES, 0);

/// One [`CgroupPath`] per CPU to read a path into: too large for the stack.
#[map]
static CGROUP_PATH_SCRATCH: PerCpuArray<CgroupPath> = PerCpuArray::with_max_entries(1, 0);

#[map]
static OBSERVER_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ObserverStat::COUNT, 0);

/// `raw_syscalls:sys_enter` with BTF types (tp_btf): args are (struct
/// pt_regs *regs, long id), and the registers load directly.
#[btf_tracepoint(function = "sys_enter")]
pub fn time_syscall_enter(ctx: BtfTracePointContext) -> i32 {
    on_sys_enter(Regs::Typed(ctx.arg(0)), ctx.arg(1))
}

/// The same on the untyped raw tracepoint, for a kernel that refuses the
/// BTF-typed one: the registers are read through the helper.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn time_syscall_enter_raw(ctx: RawTracePointContext) -> i32 {
    on_sys_enter(Regs::Untyped(ctx.arg(0)), ctx.arg(1))
}

#[inline(always)]
fn on_sys_enter(regs: Regs, nr: i64) -> i32 {
    if !may_be_time_call(nr) {
        return 0;
    }
    if count_syscall(regs, nr).is_err() {
        bump(ObserverStat::ReadFailed);
    }
    0
}

/// Does nothing: the floor any `sys_enter` observer pays (the kernel's traced
/// syscall path for every thread), measured by `cargo xtask bench`.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn empty_sys_enter(_ctx: RawTracePointContext) -> i32 {
    0
}

/// `vsyscall:emulate_vsyscall`: args are (int nr). Emulated calls do not pass
/// `sys_enter`, so nothing is counted twice.
#[raw_tracepoint(tracepoint = "emulate_vsyscall")]
pub fn legacy_vsyscall(ctx: RawTracePointContext) -> i32 {
    let nr: i64 = ctx.arg::<u64>(0) as i32 as i64;
    let Some(call) = time_call_vsyscall(nr) else {
        return 0;
    };
    let Some(task) = current_task() else {
        return 0;
    };
    if count(
        task,
        call,
        SyscallAbi::X86_64,
        NO_CLOCK,
        Origin::LegacyVsyscall,
    )
    .is_err()
    {
        bump(ObserverStat::ReadFailed);
    }
    0
}

/// One fentry and one kprobe program per syscall entry function
/// (`SYSCALL_ENTRIES`): only time syscalls run them, none of the others.
macro_rules! entry_programs {
    ($( $function:tt, $call:ident, $abi:ident, $fentry:ident, $kprobe:ident; )*) => {$(
        #[fentry(function = $function)]
        pub fn $fentry(ctx: FEntryContext) -> i32 {
            count_at_entry(Regs::Typed(ctx.arg(0)), TimeCall::$call, SyscallAbi::$abi)
        }

        #[kprobe]
        pub fn $kprobe(ctx: ProbeContext) -> u32 {
            let regs: *const u8 = ctx.arg(0).unwrap_or(core::ptr::null());
            count_at_entry(Regs::Untyped(regs), TimeCall::$call, SyscallAbi::$abi) as u32
        }
    )*};
}

vdso_observer_common::for_each_syscall_entry!(entry_programs);

/// `cgroup:cgroup_mkdir`: args are (struct cgroup *cgrp, const char *path).
/// A container's cgroup may be gone before user space reads the window (a job
/// that lives 50 ms): its path is recorded here, when it is made.
#[raw_tracepoint(tracepoint = "cgroup_mkdir")]
pub fn cgroup_created(ctx: RawTracePointContext) -> i32 {
    let cgroup: *const u8 = ctx.arg(0);
    let path: *const u8 = ctx.arg(1);
    let Ok(node) = read_kernel::<*const u8>(cgroup, config!(offsets.cgroup_kn)) else {
        return 0;
    };
    let Ok(id) = read_kernel::<u64>(node, config!(offsets.kernfs_node_id)) else {
        return 0;
    };
    let Some(recorded) = CGROUP_PATH_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch entry, used by nothing else while the program
    // runs; the helper stops at the buffer's end (and NUL-terminates).
    let recorded = unsafe { &mut *recorded };
    if unsafe { bpf_probe_read_kernel_str_bytes(path, &mut recorded.bytes) }.is_ok() {
        let _ = CGROUP_PATHS.insert(id, recorded, 0);
    }
    0
}

/// The user registers a program was handed: BTF-typed ones (tp_btf, fentry)
/// load directly; untyped ones (raw tracepoint, kprobe) through
/// `bpf_probe_read_kernel`, a function call each.
#[derive(Clone, Copy)]
enum Regs {
    Typed(*const u8),
    Untyped(*const u8),
}

impl Regs {
    #[inline(always)]
    fn read(self, offset: u32) -> Result<u64, i32> {
        match self {
            Regs::Typed(regs) => Ok(read_task(regs, offset)),
            Regs::Untyped(regs) => read_kernel(regs, offset),
        }
    }
}

#[inline(always)]
fn count_syscall(regs: Regs, nr: i64) -> Result<(), i32> {
    let Some(task) = current_task() else {
        return Ok(());
    };

    let Some(abi) = syscall_abi(task) else {
        return Ok(());
    };
    let Some(call) = abi.time_call(nr) else {
        return Ok(());
    };
    count_entry(task, regs, call, abi)
}

/// The table of the syscall the task is making: a 64-bit x86 task may
/// `int $0x80`, and the kernel marks that syscall `TS_COMPAT`.
#[cfg(not(bpf_target_arch = "aarch64"))]
#[inline(always)]
fn syscall_abi(task: *const u8) -> Option<SyscallAbi> {
    let status: u32 = read_task(task, config!(offsets.task_thread_status));
    Some(if status & vdso_observer_common::TS_COMPAT != 0 {
        SyscallAbi::I386
    } else {
        SyscallAbi::X86_64
    })
}

/// arm64: None for a compat (AArch32) task, which is not observed (its
/// syscall table, registers and vDSO differ).
#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
fn syscall_abi(task: *const u8) -> Option<SyscallAbi> {
    let flags: u64 = read_task(task, config!(offsets.task_thread_status));
    (flags & vdso_observer_common::TIF_32BIT == 0).then_some(SyscallAbi::Arm64)
}

/// A time call at the kernel function of its syscall (fentry, kprobe): the
/// function says which call and ABI; its first argument is the user registers.
#[inline(always)]
fn count_at_entry(regs: Regs, call: TimeCall, abi: SyscallAbi) -> i32 {
    let Some(task) = current_task() else {
        return 0;
    };
    // arm64 compat tasks reach some of the same functions: left out. (x86's
    // entry functions are per ABI already: no load spent on every call.)
    #[cfg(bpf_target_arch = "aarch64")]
    if syscall_abi(task).is_none() {
        return 0;
    }
    if count_entry(task, regs, call, abi).is_err() {
        bump(ObserverStat::ReadFailed);
    }
    0
}

/// Classifies and counts one time call from the user registers at entry.
#[inline(always)]
fn count_entry(task: *const u8, regs: Regs, call: TimeCall, abi: SyscallAbi) -> Result<(), i32> {
    let clock_id = if !call.takes_clock() {
        NO_CLOCK
    } else if abi == SyscallAbi::I386 {
        regs.read(config!(offsets.regs_bx))? as u32 as i32
    } else {
        regs.read(config!(offsets.regs_di))? as i32
    };

    let Some((vdso_start, vdso_len)) = vdso_text(task)? else {
        return Ok(()); // kernel thread: not a user time call
    };
    let ip = regs.read(config!(offsets.regs_ip))?;
    if ip & !0xfff == LEGACY_VSYSCALL_PAGE {
        // The kernel emulating a legacy vsyscall calls __x64_sys_gettimeofday
        // (time, getcpu) itself with the page's address as ip: at fentry and
        // kprobes that call is here too, and legacy_vsyscall already counted it.
        return Ok(());
    }
    let mut origin = origin_of(ip, vdso_start, vdso_len);
    if origin == Origin::VdsoFallback && abi == SyscallAbi::I386 {
        // Every 32-bit libc syscall enters through __kernel_vsyscall inside the
        // vDSO; its caller's return address tells the vDSO's own fallback apart.
        let sp = regs.read(config!(offsets.regs_sp))?;
        let caller =
            unsafe { bpf_probe_read_user((sp + KERNEL_VSYSCALL_RETURN_OFFSET) as *const u32) }?
                as u64;
        if !inside_vdso(caller, vdso_start, vdso_len) {
            origin = Origin::Direct;
        }
    }
    count(task, call, abi, clock_id, origin)
}

#[inline(always)]
fn count(
    task: *const u8,
    call: TimeCall,
    abi: SyscallAbi,
    clock_id: i32,
    origin: Origin,
) -> Result<(), i32> {
    let tgid: u32 = read_task(task, config!(offsets.task_tgid));
    if tgid == config!(observer_tgid) {
        return Ok(());
    }
    let (process, leader) = process_key(task, tgid)?;
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
    count_time_call(&mut key, leader);
    Ok(())
}

/// Adds one to the counter of `key`. The fast path is this CPU's recent key
/// (two array loads, no call); else the key's slot is looked up, or made
/// within the process's key cap (past it, the process's overflow key's), and
/// becomes the recent key. A full map is counted for the process and the
/// observer, never silent.
#[inline(always)]
fn count_time_call(key: &mut CallKey, leader: *const u8) {
    let generation = SLOT_GENERATION.get(0).copied().unwrap_or(0);
    let Some(recent) = RECENT_TIME_CALL.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's entry; programs on one CPU do not interleave.
    let recent = unsafe { &mut *recent };
    let built = key.words();
    let cached = recent.key.words();
    let slot = if recent.generation == generation
        && built[0] == cached[0]
        && built[1] == cached[1]
        && built[2] == cached[2]
    {
        recent.slot
    } else {
        let built = *key;
        let Some(slot) = time_call_slot(key, leader) else {
            return;
        };
        *recent = RecentTimeCall {
            key: built,
            slot,
            generation,
        };
        slot
    };
    if let Some(count) = TIME_CALL_COUNTS.get_ptr_mut(slot) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *count += 1 };
    }
}

/// The counter slot of `key`: looked up, else taken from the free queue.
#[inline(never)]
fn time_call_slot(key: &mut CallKey, leader: *const u8) -> Option<u32> {
    // SAFETY: a plain read of a map value.
    if let Some(slot) = unsafe { TIME_CALLS.get(*key) } {
        return Some(*slot);
    }
    let info = process_info(&key.process, leader);
    if let Some(info) = info
        && unsafe { (*info).time_keys } >= config!(process_key_cap)
    {
        key.clock_id = CLOCK_OVERFLOW;
        if let Some(slot) = unsafe { TIME_CALLS.get(*key) } {
            return Some(*slot);
        }
        bump(ObserverStat::ProcessKeyCap);
    }
    let lost = |info: Option<*mut ProcessInfo>| {
        if let Some(info) = info {
            // Not atomic: two CPUs of one process failing at once may count one
            // loss, while the observer-wide counter counts both.
            unsafe { (*info).lost += 1 };
        }
        bump(ObserverStat::TimeCallsMapFull);
        None
    };
    let Ok(Some(slot)) = FREE_TIME_CALL_SLOTS.pop() else {
        return lost(info);
    };
    match TIME_CALLS.insert(*key, slot, BPF_NOEXIST.into()) {
        Ok(()) => {
            if let Some(info) = info {
                // Racy between CPUs of one process: the cap is a bound, not a count.
                unsafe { (*info).time_keys += 1 };
            }
            add_stat(ObserverStat::TimeKeysCreated);
            Some(slot)
        }
        // Another CPU made the key between the lookup and the insert.
        Err(err) if err == -EEXIST => {
            let _ = FREE_TIME_CALL_SLOTS.push(slot, 0);
            unsafe { TIME_CALLS.get(*key) }.copied()
        }
        Err(_) => {
            let _ = FREE_TIME_CALL_SLOTS.push(slot, 0);
            lost(info)
        }
    }
}

/// Adds one to a vDSO counter. The fast path is one lookup; a new key is
/// created within its process's key cap (past it, in the process's overflow
/// key), and a full map is counted for the process and the observer, never
/// silent. (vDSO events are samples and probe hits, far rarer than kernel
/// entries: a hash lookup each is cheap enough.)
#[inline(always)]
fn count_vdso_key(key: &mut VdsoKey, leader: *const u8) {
    if let Some(value) = VDSO_CALLS.get_ptr_mut(*key) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *value += 1 };
        return;
    }
    let info = process_info(&key.process, leader);
    if let Some(info) = info
        && unsafe { (*info).vdso_keys } >= config!(process_key_cap)
    {
        key.clock_id = CLOCK_OVERFLOW;
        if let Some(value) = VDSO_CALLS.get_ptr_mut(*key) {
            unsafe { *value += 1 };
            return;
        }
        bump(ObserverStat::ProcessKeyCap);
    }
    match VDSO_CALLS.insert(*key, 1, BPF_NOEXIST.into()) {
        Ok(()) => {
            if let Some(info) = info {
                // Racy between CPUs of one process: the cap is a bound, not a count.
                unsafe { (*info).vdso_keys += 1 };
            }
            add_stat(ObserverStat::VdsoKeysCreated);
        }
        // Another CPU created the key between the lookup and the insert.
        Err(err) if err == -EEXIST => {
            if let Some(value) = VDSO_CALLS.get_ptr_mut(*key) {
                unsafe { *value += 1 };
            }
        }
        Err(_) => {
            if let Some(info) = info {
                // Not atomic: see time_call_slot.
                unsafe { (*info).lost += 1 };
            }
            bump(ObserverStat::VdsoCallsMapFull);
        }
    }
}

/// cpu-clock sample on every CPU: counts one sample for the process and vDSO
/// function the interrupted user instruction pointer lies in. User space turns
/// samples into calls with the per-call cost it measured at start.
#[perf_event]
pub fn vdso_sample(ctx: PerfEventContext) -> u32 {
    let Some(regs) = UserRegs::of_perf_event(&ctx) else {
        return 0; // interrupted in the kernel
    };
    let Some(task) = current_task() else {
        return 0;
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == 0 || tgid == config!(observer_tgid) {
        return 0; // idle, or the observer's own calibration
    }
    let result = match sampled_call(task, &regs) {
        Ok(Some((call, vdso_base))) if !counted_exactly(vdso_base, tgid, call) => {
            count_vdso(task, tgid, call, NO_CLOCK, Provenance::Sampled, regs.abi)
        }
        Ok(_) => Ok(()),
        Err(err) => Err(err),
    };
    if result.is_err() {
        bump(ObserverStat::ReadFailed);
    }
    0
}

/// Whether exact counting covers `call` in this thread (a breakpoint) or
/// process (a uprobe) right now: then its samples would count it twice.
#[inline(always)]
fn counted_exactly(vdso_base: u64, tgid: u32, call: u8) -> bool {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: plain reads of map values.
    let covers =
        |key: u32| unsafe { EXACT_COVERAGE.get(key) }.is_some_and(|c| c.covers(vdso_base, call));
    covers(tid) || covers(tgid | COVERAGE_PROCESS)
}

/// The time call a sample belongs to, and the task's vDSO base; None when it
/// is not inside the task's vDSO or belongs to no time call. Code between the
/// exported functions (a pvclock or Hyper-V reader, the ChaCha block, a PC
/// thunk) is a leaf helper called from one of them: it is charged to the
/// function its return address lies in.
#[inline(always)]
fn sampled_call(task: *const u8, regs: &UserRegs) -> Result<Option<(u8, u64)>, i32> {
    let Some((start, len)) = vdso_text(task)? else {
        return Ok(None);
    };
    let ip = regs.ip;
    if start == 0 || ip < start || ip >= start + len {
        return Ok(None);
    }
    let table = function_table(regs.abi);
    let mut call = table.call_at(ip - start);
    if call == VDSO_OTHER_CODE {
        for ret in regs.return_addresses().into_iter().flatten() {
            // A return address points after the call: its byte before is the caller's.
            if inside_vdso(ret, start, len) {
                call = table.call_at(ret - 1 - start);
                if call != VDSO_OTHER_CODE {
                    break;
                }
            }
        }
    }
    Ok(match call {
        VDSO_SYSCALL_ENTRY => None, // __kernel_vsyscall: a syscall on its way in or out
        VDSO_OTHER_CODE => {
            add_stat(ObserverStat::VdsoSampleUnattributed);
            None
        }
        call => Some((call, start)),
    })
}

/// Hardware execute breakpoint on a vDSO function's first instruction: one
/// exact call. The clock is still where the caller put it.
#[perf_event]
pub fn vdso_breakpoint(ctx: PerfEventContext) -> u32 {
    let Some(regs) = UserRegs::of_perf_event(&ctx) else {
        return 0;
    };
    let Some(task) = current_task() else {
        return 0;
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == 0 || tgid == config!(observer_tgid) {
        return 0;
    }
    let result = (|| {
        // A breakpoint left at a stale address after exec counts nothing.
        let Some((start, len)) = vdso_text(task)? else {
            return Ok(());
        };
        if start == 0 || regs.ip < start || regs.ip >= start + len {
            return Ok(());
        }
        let call = function_table(regs.abi).call_at(regs.ip - start);
        if call == VDSO_OTHER_CODE || call == VDSO_SYSCALL_ENTRY {
            return Ok(());
        }
        let clock = regs.first_argument()?;
        count_vdso(task, tgid, call, clock, Provenance::Breakpoint, regs.abi)
    })();
    if result.is_err() {
        bump(ObserverStat::ReadFailed);
    }
    0
}

/// uprobe on a user-space entry point into the vDSO (glibc or musl
/// `clock_gettime`, Go's `runtime.nanotime1`): one exact call; the cookie says
/// which call and where its clock is.
#[uprobe]
pub fn vdso_entry_uprobe(ctx: ProbeContext) -> u32 {
    // SAFETY: the helper only reads the program's own attach cookie.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let Some(cookie) = UprobeCookie::decode(cookie) else {
        return 0;
    };
    let Some(regs) = UserRegs::of_uprobe(&ctx) else {
        return 0;
    };
    let Some(task) = current_task() else {
        return 0;
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == config!(observer_tgid) {
        return 0;
    }
    let result = (|| {
        let clock_id = match cookie.fixed_clock {
            Some(clock) => clock,
            None if cookie.call.takes_clock() => regs.first_argument()?,
            None => NO_CLOCK,
        };
        count_vdso(
            task,
            tgid,
            cookie.call as u8,
            clock_id,
            Provenance::Uprobe,
            regs.abi,
        )
    })();
    if result.is_err() {
        bump(ObserverStat::ReadFailed);
    }
    0
}

#[inline(always)]
fn function_table(abi: SyscallAbi) -> &'static VdsoFunctionTable {
    // SAFETY: Global<T> is a transparent wrapper of T; call_at reads it volatile.
    match abi {
        SyscallAbi::I386 => unsafe { &*(&raw const VDSO32_FUNCTIONS).cast::<VdsoFunctionTable>() },
        SyscallAbi::X86_64 | SyscallAbi::Arm64 => unsafe {
            &*(&raw const VDSO_FUNCTIONS).cast::<VdsoFunctionTable>()
        },
    }
}

/// Counts a vDSO call or sample of `call` for the current process.
#[inline(always)]
fn count_vdso(
    task: *const u8,
    tgid: u32,
    call: u8,
    clock_id: i32,
    provenance: Provenance,
    abi: SyscallAbi,
) -> Result<(), i32> {
    let (process, leader) = process_key(task, tgid)?;
    let takes_clock = call == TimeCall::ClockGettime as u8 || call == TimeCall::ClockGetres as u8;
    let mut key = VdsoKey {
        process,
        clock_id: if takes_clock && clock_id != NO_CLOCK {
            clock_key(clock_id)
        } else {
            NO_CLOCK
        },
        call,
        provenance: provenance as u8,
        abi: abi as u8,
        _pad: 0,
    };
    count_vdso_key(&mut key, leader);
    Ok(())
}

/// The process image a task belongs to, and its thread group leader.
#[inline(always)]
fn process_key(task: *const u8, tgid: u32) -> Result<(ProcessKey, *const u8), i32> {
    let leader: *const u8 = read_task(task, config!(offsets.task_group_leader));
    Ok((
        ProcessKey {
            tgid,
            exec_id: read_task(task, config!(offsets.task_self_exec_id)),
            start_boottime_ns: read_task(leader, config!(offsets.task_start_boottime)),
        },
        leader,
    ))
}

/// `(start, length)` of the task's vDSO text, `(0, 0)` when it has none, None
/// for kernel threads (no mm).
#[inline(always)]
fn vdso_text(task: *const u8) -> Result<Option<(u64, u64)>, i32> {
    let mm: *const u8 = read_task(task, config!(offsets.task_mm));
    if mm.is_null() {
        return Ok(None);
    }
    let start: u64 = read_task(mm, config!(offsets.mm_vdso));
    if start == 0 {
        return Ok(Some((0, 0)));
    }
    Ok(Some((start, vdso_len(mm))))
}

/// x86: each mm names its image (64-bit or vdso32), which knows its size.
#[cfg(not(bpf_target_arch = "aarch64"))]
#[inline(always)]
fn vdso_len(mm: *const u8) -> u64 {
    let image: *const u8 = read_task(mm, config!(offsets.mm_vdso_image));
    if image.is_null() {
        return 0;
    }
    read_task::<u64>(image, config!(offsets.vdso_image_size))
}

/// arm64: every observed (64-bit) task maps the one image user space measured.
#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
fn vdso_len(_mm: *const u8) -> u64 {
    u64::from(config!(vdso_len))
}

/// The process's entry in PROCESSES, made at its first counter: its leader's
/// name is kept next to the key, so a process that exits before user space
/// reads is still named (refreshed at each new counter, for a later rename).
/// Runs only when a new counter is created. None when the map is full.
#[inline(always)]
fn process_info(process: &ProcessKey, leader: *const u8) -> Option<*mut ProcessInfo> {
    let Ok(comm) = read_kernel(leader, config!(offsets.task_comm)) else {
        bump(ObserverStat::ReadFailed);
        return None;
    };
    if let Some(info) = PROCESSES.get_ptr_mut(process) {
        unsafe { (*info).comm = comm };
        return Some(info);
    }
    // SAFETY: the helper reads only the current task's cgroup.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let fresh = ProcessInfo::new(comm, bpf_get_current_uid_gid() as u32, cgroup_id);
    match PROCESSES.insert(process, fresh, BPF_NOEXIST.into()) {
        Ok(()) => add_stat(ObserverStat::ProcessesCreated),
        Err(err) if err == -EEXIST => {}
        Err(_) => {
            bump(ObserverStat::ProcessesMapFull);
            return None;
        }
    }
    PROCESSES.get_ptr_mut(process)
}

#[inline(always)]
fn current_task() -> Option<*const u8> {
    // The BTF-typed task: fields load directly (the verifier knows the offsets,
    // read from the frozen config, as constants) instead of one helper call each.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    (!task.is_null()).then_some(task)
}

/// A field of a BTF-typed kernel object (task, mm, vdso_image): a direct load
/// the verifier checks against the type and turns into a faulting-safe read.
#[inline(always)]
fn read_task<T>(base: *const u8, offset: u32) -> T {
    unsafe { core::ptr::read_volatile(base.wrapping_add(offset as usize) as *const T) }
}

#[inline(always)]
fn read_kernel<T>(base: *const u8, offset: u32) -> Result<T, i32> {
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T) }
}

/// Counts a self-statistic that is not an event to log.
#[inline(always)]
fn add_stat(stat: ObserverStat) {
    if let Some(value) = OBSERVER_STATS.get_ptr_mut(stat as u32) {
        unsafe { *value += 1 };
    }
}

/// Counts a self-statistic; the first time on this CPU, says so in the log
/// (aya-log, forwarded by user space at debug level).
#[inline(always)]
fn bump(stat: ObserverStat) {
    if let Some(value) = OBSERVER_STATS.get_ptr_mut(stat as u32) {
        let first = unsafe { *value } == 0;
        unsafe { *value += 1 };
        if first {
            say_first(stat);
        }
    }
}

/// The one line of a rare event, out of line so the counting path stays short.
#[inline(never)]
fn say_first(stat: ObserverStat) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    match stat {
        ObserverStat::TimeCallsMapFull => debug!(
            &(),
            "time-call counter map full: a new key of pid {} was not counted", tgid
        ),
        ObserverStat::ProcessesMapFull => {
            debug!(&(), "process-name map full: pid {} stays unnamed", tgid)
        }
        ObserverStat::ReadFailed => {
            debug!(
                &(),
                "a memory read failed: a call of pid {} was not counted", tgid
            )
        }
        ObserverStat::VdsoCallsMapFull => debug!(
            &(),
            "vDSO-call map full: a new key of pid {} was not counted", tgid
        ),
        ObserverStat::ProcessKeyCap => debug!(
            &(),
            "pid {} reached its key cap: its new clocks are counted in its overflow key", tgid
        ),
        // Counted, not events.
        ObserverStat::TimeKeysCreated
        | ObserverStat::VdsoKeysCreated
        | ObserverStat::ProcessesCreated
        | ObserverStat::VdsoSampleUnattributed => {}
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
