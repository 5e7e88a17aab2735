//! Time calls that enter the kernel: at `sys_enter` (every syscall of the
//! machine passes, so anything else leaves after one comparison chain), or at
//! the time syscalls' own kernel functions (fentry, kprobe: no other syscall
//! pays), and at the emulated legacy vsyscall page.

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{btf_tracepoint, fentry, kprobe, raw_tracepoint},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, RawTracePointContext},
};
use vdso_observer_common::{
    KERNEL_VSYSCALL_RETURN_OFFSET, LEGACY_VSYSCALL_PAGE, NO_CLOCK, ObserverStat, Origin,
    SyscallAbi, TimeCall, inside_vdso, may_be_time_call, origin_of, time_call_vsyscall,
};

use crate::{
    config::config,
    count::{Preemptible, count_time_call},
    kernel::{Regs, current_task, syscall_abi, vdso_text},
    stats::bump,
};

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
    let Some(task) = current_task() else {
        return 0;
    };
    let Some(abi) = syscall_abi(task) else {
        return 0;
    };
    let Some(call) = abi.time_call(nr) else {
        return 0;
    };
    // The syscall tracepoints' BPF programs run with preemption disabled.
    count_entry(task, regs, call, abi, Preemptible::No);
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
    count_time_call(
        task,
        call,
        SyscallAbi::X86_64,
        NO_CLOCK,
        Origin::LegacyVsyscall,
        Preemptible::No,
    );
    0
}

/// One fentry and one kprobe program per syscall entry function
/// (`SYSCALL_ENTRIES`): only time syscalls run them, none of the others.
/// fentry programs may be preempted on their CPU; kprobes may not.
macro_rules! entry_programs {
    ($( $function:tt, $call:ident, $abi:ident, $fentry:ident, $kprobe:ident; )*) => {$(
        #[fentry(function = $function)]
        pub fn $fentry(ctx: FEntryContext) -> i32 {
            count_at_entry(
                Regs::Typed(ctx.arg(0)),
                TimeCall::$call,
                SyscallAbi::$abi,
                Preemptible::Yes,
            )
        }

        #[kprobe]
        pub fn $kprobe(ctx: ProbeContext) -> u32 {
            let regs: *const u8 = ctx.arg(0).unwrap_or(core::ptr::null());
            count_at_entry(Regs::Untyped(regs), TimeCall::$call, SyscallAbi::$abi, Preemptible::No)
                as u32
        }
    )*};
}

vdso_observer_common::for_each_syscall_entry!(entry_programs);

/// A time call at the kernel function of its syscall (fentry, kprobe): the
/// function says which call and ABI; its first argument is the user registers.
#[inline(always)]
fn count_at_entry(regs: Regs, call: TimeCall, abi: SyscallAbi, preemptible: Preemptible) -> i32 {
    let Some(task) = current_task() else {
        return 0;
    };
    // arm64 compat tasks reach some of the same functions: left out. (x86's
    // entry functions are per ABI already: no load spent on every call.)
    #[cfg(bpf_target_arch = "aarch64")]
    if syscall_abi(task).is_none() {
        return 0;
    }
    count_entry(task, regs, call, abi, preemptible);
    0
}

/// Classifies and counts one time call from the user registers at entry; a
/// failed read is counted, not the call.
#[inline(always)]
fn count_entry(
    task: *const u8,
    regs: Regs,
    call: TimeCall,
    abi: SyscallAbi,
    preemptible: Preemptible,
) {
    match classify(task, regs, call, abi) {
        Ok(Some((clock_id, origin))) => {
            count_time_call(task, call, abi, clock_id, origin, preemptible)
        }
        Ok(None) => {}
        Err(_) => bump(ObserverStat::ReadFailed),
    }
}

/// The clock and the origin of a time call; None when it is no user time call
/// to count here (a kernel thread, the kernel emulating a legacy vsyscall).
#[inline(always)]
fn classify(
    task: *const u8,
    regs: Regs,
    call: TimeCall,
    abi: SyscallAbi,
) -> Result<Option<(i32, Origin)>, i32> {
    let clock_id = if !call.takes_clock() {
        NO_CLOCK
    } else if abi == SyscallAbi::I386 {
        regs.read(config!(offsets.regs_bx))? as u32 as i32
    } else {
        regs.read(config!(offsets.regs_di))? as i32
    };
    let Some((vdso_start, vdso_len)) = vdso_text(task) else {
        return Ok(None); // kernel thread: not a user time call
    };
    let ip = regs.read(config!(offsets.regs_ip))?;
    if ip & !0xfff == LEGACY_VSYSCALL_PAGE {
        // The kernel emulating a legacy vsyscall calls __x64_sys_gettimeofday
        // (time, getcpu) itself with the page's address as ip: at fentry and
        // kprobes that call is here too, and legacy_vsyscall already counted it.
        return Ok(None);
    }
    let mut origin = origin_of(ip, vdso_start, vdso_len);
    if origin == Origin::VdsoFallback && abi == SyscallAbi::I386 {
        // Every 32-bit libc syscall enters through __kernel_vsyscall inside the
        // vDSO; its caller's return address tells the vDSO's own fallback apart.
        let sp = regs.read(config!(offsets.regs_sp))?;
        // SAFETY: the helper checks the user address and fails instead of faulting.
        let caller =
            unsafe { bpf_probe_read_user((sp + KERNEL_VSYSCALL_RETURN_OFFSET) as *const u32) }?
                as u64;
        if !inside_vdso(caller, vdso_start, vdso_len) {
            origin = Origin::Direct;
        }
    }
    Ok(Some((clock_id, origin)))
}
