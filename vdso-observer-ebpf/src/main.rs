//! Kernel side of vdso-observer: count time calls that enter the kernel, per
//! process, call, clock and origin. It only counts; user space names, sums and
//! judges. Every syscall on the machine passes `time_syscall_enter`, so anything
//! that is not a time call must leave after one comparison chain.
#![no_std]
#![no_main]

use aya_ebpf::{
    Global,
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_uid_gid,
        bpf_probe_read_kernel, bpf_probe_read_user,
    },
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
    programs::RawTracePointContext,
};
use vdso_observer_common::{
    CallKey, DEFAULT_PROCESS_ENTRIES, DEFAULT_TIME_CALL_ENTRIES, KERNEL_VSYSCALL_RETURN_OFFSET,
    NO_CLOCK, ObserverStat, Origin, ProcessInfo, ProcessKey, ProgramConfig, SyscallAbi, TS_COMPAT,
    TimeCall, inside_vdso, may_be_time_call, origin_of, time_call_vsyscall,
};

const EEXIST: i32 = 17;

#[unsafe(no_mangle)]
static PROGRAM_CONFIG: Global<ProgramConfig> = Global::new(ProgramConfig::ZERO);

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
    let off = PROGRAM_CONFIG.load().offsets;

    let status: u32 = read_kernel(task, off.task_thread_status)?;
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
        read_kernel::<u64>(regs, off.regs_bx)? as u32 as i32
    } else {
        read_kernel::<u64>(regs, off.regs_di)? as i32
    };

    let mm: *const u8 = read_kernel(task, off.task_mm)?;
    if mm.is_null() {
        return Ok(()); // kernel thread: not a user time call
    }
    let vdso_start: u64 = read_kernel(mm, off.mm_vdso)?;
    let vdso_len = if vdso_start == 0 {
        0
    } else {
        let image: *const u8 = read_kernel(mm, off.mm_vdso_image)?;
        if image.is_null() {
            0
        } else {
            read_kernel::<u64>(image, off.vdso_image_size)?
        }
    };
    let ip: u64 = read_kernel(regs, off.regs_ip)?;
    let mut origin = origin_of(ip, vdso_start, vdso_len);
    if origin == Origin::VdsoFallback && abi == SyscallAbi::I386 {
        // Every 32-bit libc syscall enters through __kernel_vsyscall inside the
        // vDSO; its caller's return address tells the vDSO's own fallback apart.
        let sp: u64 = read_kernel(regs, off.regs_sp)?;
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
    let config = PROGRAM_CONFIG.load();
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == config.observer_tgid {
        return Ok(());
    }
    let off = config.offsets;
    let leader: *const u8 = read_kernel(task, off.task_group_leader)?;
    let process = ProcessKey {
        tgid,
        exec_id: read_kernel(task, off.task_self_exec_id)?,
        start_boottime_ns: read_kernel(leader, off.task_start_boottime)?,
    };
    let key = CallKey {
        process,
        clock_id,
        call: call as u8,
        origin: origin as u8,
        abi: abi as u8,
        _pad: 0,
    };
    if let Some(value) = TIME_CALLS.get_ptr_mut(key) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *value += 1 };
        return Ok(());
    }
    match TIME_CALLS.insert(key, 1, BPF_NOEXIST.into()) {
        Ok(()) => remember_process(&process, leader, off.task_comm),
        // Another CPU created the key between the lookup and the insert.
        Err(err) if err == -EEXIST => {
            if let Some(value) = TIME_CALLS.get_ptr_mut(key) {
                unsafe { *value += 1 };
            }
        }
        Err(_) => bump(ObserverStat::TimeCallsMapFull),
    }
    Ok(())
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
    let task = unsafe { bpf_get_current_task() } as *const u8;
    (!task.is_null()).then_some(task)
}

#[inline(always)]
fn read_kernel<T>(base: *const u8, offset: u32) -> Result<T, i32> {
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T) }
}

#[inline(always)]
fn bump(stat: ObserverStat) {
    if let Some(value) = OBSERVER_STATS.get_ptr_mut(stat as u32) {
        unsafe { *value += 1 };
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
