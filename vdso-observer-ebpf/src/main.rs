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
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_get_current_task_btf,
        bpf_get_current_uid_gid, bpf_probe_read_kernel, bpf_probe_read_user,
    },
    macros::{map, perf_event, raw_tracepoint, uprobe},
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
    programs::{PerfEventContext, ProbeContext, RawTracePointContext},
};
use aya_log_ebpf::debug;
use vdso_observer_common::{
    CallKey, DEFAULT_PROCESS_ENTRIES, DEFAULT_TIME_CALL_ENTRIES, DEFAULT_VDSO_CALL_ENTRIES,
    KERNEL_VSYSCALL_RETURN_OFFSET, NO_CLOCK, ObserverStat, Origin, ProcessInfo, ProcessKey,
    ProgramConfig, Provenance, SyscallAbi, TS_COMPAT, TimeCall, UprobeCookie, VDSO_OTHER_CODE,
    VdsoFunctionTable, VdsoKey, inside_vdso, may_be_time_call, origin_of, time_call_vsyscall,
};

const EEXIST: i32 = 17;
/// x86 user code segment selector of 32-bit code (GDT_ENTRY_DEFAULT_USER32_CS * 8 + 3):
/// part of the ABI, as visible to ptrace.
const USER32_CS: u64 = 0x23;

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

#[map]
static VDSO_CALLS: PerCpuHashMap<VdsoKey, u64> =
    PerCpuHashMap::with_max_entries(DEFAULT_VDSO_CALL_ENTRIES, 0);

#[map]
static TIME_CALLS: PerCpuHashMap<CallKey, u64> =
    PerCpuHashMap::with_max_entries(DEFAULT_TIME_CALL_ENTRIES, 0);

#[map]
static PROCESSES: HashMap<ProcessKey, ProcessInfo> =
    HashMap::with_max_entries(DEFAULT_PROCESS_ENTRIES, 0);

#[map]
static OBSERVER_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ObserverStat::COUNT, 0);

/// `raw_syscalls:sys_enter`: args are (struct pt_regs *regs, long id).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn time_syscall_enter(ctx: RawTracePointContext) -> i32 {
    let nr: i64 = ctx.arg(1);
    if !may_be_time_call(nr) {
        return 0;
    }
    if count_syscall(&ctx, nr).is_err() {
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

#[inline(always)]
fn count_syscall(ctx: &RawTracePointContext, nr: i64) -> Result<(), i32> {
    let Some(task) = current_task() else {
        return Ok(());
    };

    let status: u32 = read_task(task, config!(offsets.task_thread_status));
    let abi = if status & TS_COMPAT != 0 {
        SyscallAbi::I386
    } else {
        SyscallAbi::X86_64
    };
    let Some(call) = abi.time_call(nr) else {
        return Ok(());
    };

    let regs: *const u8 = ctx.arg(0);
    let clock_id = if !call.takes_clock() {
        NO_CLOCK
    } else if abi == SyscallAbi::I386 {
        read_kernel::<u64>(regs, config!(offsets.regs_bx))? as u32 as i32
    } else {
        read_kernel::<u64>(regs, config!(offsets.regs_di))? as i32
    };

    let Some((vdso_start, vdso_len)) = vdso_text(task)? else {
        return Ok(()); // kernel thread: not a user time call
    };
    let ip: u64 = read_kernel(regs, config!(offsets.regs_ip))?;
    let mut origin = origin_of(ip, vdso_start, vdso_len);
    if origin == Origin::VdsoFallback && abi == SyscallAbi::I386 {
        // Every 32-bit libc syscall enters through __kernel_vsyscall inside the
        // vDSO; its caller's return address tells the vDSO's own fallback apart.
        let sp: u64 = read_kernel(regs, config!(offsets.regs_sp))?;
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
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == config!(observer_tgid) {
        return Ok(());
    }
    let (process, leader) = process_key(task, tgid)?;
    let key = CallKey {
        process,
        clock_id,
        call: call as u8,
        origin: origin as u8,
        abi: abi as u8,
        _pad: 0,
    };
    if increment(&TIME_CALLS, &key, ObserverStat::TimeCallsMapFull) {
        remember_process(&process, leader, config!(offsets.task_comm));
    }
    Ok(())
}

/// Adds one to a per-CPU counter, creating it at 1; true when it was created.
/// A full map is counted in `full`, never silent.
#[inline(always)]
fn increment<K>(map: &PerCpuHashMap<K, u64>, key: &K, full: ObserverStat) -> bool {
    if let Some(value) = map.get_ptr_mut(key) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *value += 1 };
        return false;
    }
    match map.insert(key, 1, BPF_NOEXIST.into()) {
        Ok(()) => true,
        // Another CPU created the key between the lookup and the insert.
        Err(err) if err == -EEXIST => {
            if let Some(value) = map.get_ptr_mut(key) {
                unsafe { *value += 1 };
            }
            false
        }
        Err(_) => {
            bump(full);
            false
        }
    }
}

/// cpu-clock sample on every CPU: counts one sample for the process and vDSO
/// function the interrupted user instruction pointer lies in. User space turns
/// samples into calls with the per-call cost it measured at start.
#[perf_event]
pub fn vdso_sample(ctx: PerfEventContext) -> u32 {
    // SAFETY: the context of a perf_event program is bpf_perf_event_data.
    let regs = unsafe { &(*ctx.ctx).regs };
    if regs.cs & 3 != 3 {
        return 0; // interrupted in the kernel
    }
    let compat = regs.cs == USER32_CS;
    if count_vdso_hit(regs.rip, compat, NO_CLOCK, None, Provenance::Sampled).is_err() {
        bump(ObserverStat::ReadFailed);
    }
    0
}

/// Hardware execute breakpoint on a vDSO function's first instruction: one
/// exact call. The clock is still in the first argument register.
#[perf_event]
pub fn vdso_breakpoint(ctx: PerfEventContext) -> u32 {
    // SAFETY: as above.
    let regs = unsafe { &(*ctx.ctx).regs };
    if regs.cs & 3 != 3 {
        return 0;
    }
    let compat = regs.cs == USER32_CS;
    if count_vdso_hit(
        regs.rip,
        compat,
        regs.rdi as i32,
        None,
        Provenance::Breakpoint,
    )
    .is_err()
    {
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
    let clock_id = match cookie.fixed_clock {
        Some(clock) => clock,
        None if cookie.call.takes_clock() => ctx.arg::<u64>(0).unwrap_or(0) as i32,
        None => NO_CLOCK,
    };
    if count_vdso_hit(0, false, clock_id, Some(cookie.call), Provenance::Uprobe).is_err() {
        bump(ObserverStat::ReadFailed);
    }
    0
}

/// Counts a vDSO call or sample. `call` is given by uprobes; samples and
/// breakpoints find it from `ip` in the function table, and only count when `ip`
/// is inside the task's own vDSO (a breakpoint left at a stale address after exec,
/// or a sample outside the vDSO, counts nothing).
#[inline(always)]
fn count_vdso_hit(
    ip: u64,
    compat: bool,
    clock_id: i32,
    call: Option<TimeCall>,
    provenance: Provenance,
) -> Result<(), i32> {
    let Some(task) = current_task() else {
        return Ok(());
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == 0 || tgid == config!(observer_tgid) {
        return Ok(()); // idle, or the observer's own calibration
    }
    let call = match call {
        Some(call) => call as u8,
        None => {
            let Some((vdso_start, vdso_len)) = vdso_text(task)? else {
                return Ok(());
            };
            if vdso_start == 0 || ip < vdso_start || ip >= vdso_start + vdso_len {
                return Ok(());
            }
            // The table describes the 64-bit image; 32-bit code runs vdso32.
            if compat {
                VDSO_OTHER_CODE
            } else {
                // SAFETY: Global<T> is a transparent wrapper of T; call_at reads it volatile.
                unsafe { &*(&raw const VDSO_FUNCTIONS).cast::<VdsoFunctionTable>() }
                    .call_at(ip - vdso_start)
            }
        }
    };
    let (process, leader) = process_key(task, tgid)?;
    let clock_id = if call == TimeCall::ClockGettime as u8 || call == TimeCall::ClockGetres as u8 {
        clock_id
    } else {
        NO_CLOCK
    };
    let key = VdsoKey {
        process,
        clock_id,
        call,
        provenance: provenance as u8,
        _pad: [0; 2],
    };
    if increment(&VDSO_CALLS, &key, ObserverStat::VdsoCallsMapFull) {
        remember_process(&process, leader, config!(offsets.task_comm));
    }
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
    let image: *const u8 = read_task(mm, config!(offsets.mm_vdso_image));
    if image.is_null() {
        return Ok(Some((start, 0)));
    }
    Ok(Some((
        start,
        read_task::<u64>(image, config!(offsets.vdso_image_size)),
    )))
}

/// Keeps the leader's name next to the key, so a process that exits before user
/// space reads is still named. Runs only when a new counter is created.
#[inline(always)]
fn remember_process(process: &ProcessKey, leader: *const u8, comm_offset: u32) {
    let Ok(comm) = read_kernel(leader, comm_offset) else {
        bump(ObserverStat::ReadFailed);
        return;
    };
    if PROCESSES
        .insert(
            process,
            ProcessInfo {
                comm,
                uid: bpf_get_current_uid_gid() as u32,
                _pad: 0,
            },
            BPF_ANY.into(),
        )
        .is_err()
    {
        bump(ObserverStat::ProcessesMapFull);
    }
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
