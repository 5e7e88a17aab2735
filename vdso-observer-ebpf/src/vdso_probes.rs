//! vDSO calls, which never enter the kernel: estimated by a cpu-clock sampler
//! on every CPU, or counted exactly (`--exact`) by hardware breakpoints on the
//! vDSO functions and uprobes on the entry points that call them.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid},
    macros::{perf_event, uprobe},
    maps::Array,
    programs::{PerfEventContext, ProbeContext},
};
use vdso_observer_common::{
    CLOCK_COARSE_SAMPLED, CLOCK_SHARED_SAMPLED, COVERAGE_PROCESS, NO_CLOCK, ObserverStat,
    Provenance, SyscallAbi, TimeCall, UprobeCookie, VDSO_CODE_BYTES, VDSO_NOT_TIME_CODE,
    VDSO_OTHER_CODE, inside_vdso, vdso_instruction_offset,
};

use crate::{
    config::{config, function_table},
    count::count_vdso_call,
    kernel::{as_scalar, current_task, vdso_text},
    maps::{COARSE_CODE, EXACT_COVERAGE, OFFSET_SAMPLED_TGID, SAMPLE_OFFSETS, SHARED_CODE},
    stats::{bump, bump_unattributed},
    user_regs::UserRegs,
};

/// The process a vDSO program runs for: None for the idle task (a sample
/// there), a kernel thread, or the observer itself (its own calibration).
struct Caller {
    task: *const u8,
    tgid: u32,
    tid: u32,
}

#[inline(always)]
fn caller() -> Option<Caller> {
    let task = current_task()?;
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == 0 || tgid == config!(observer_tgid) {
        return None;
    }
    Some(Caller {
        task,
        tgid,
        tid: pid_tgid as u32,
    })
}

/// cpu-clock sample on every CPU: counts one sample for the process and vDSO
/// function the interrupted user instruction pointer lies in. User space turns
/// samples into calls with the per-call cost it measured at start.
#[perf_event]
pub fn vdso_sample(ctx: PerfEventContext) -> u32 {
    let Some(regs) = UserRegs::of_perf_event(&ctx) else {
        return 0; // interrupted in the kernel
    };
    let Some(caller) = caller() else {
        return 0;
    };
    if let Some((call, vdso_base)) = sampled_call(caller.task, &regs)
        && !counted_exactly(&caller, vdso_base, call)
    {
        let clock = sampled_clock(&caller, &regs, call, vdso_base);
        count_vdso_call(
            caller.task,
            caller.tgid,
            call,
            clock,
            Provenance::Sampled,
            regs.abi,
        );
    }
    0
}

/// A sample's clock: coarse where it lies in code only coarse-clock reads of
/// clock_gettime run, shared where in code coarse and fine reads both run
/// (64-bit image; the bitmaps calibration set), else none.
/// Counts the calibration child's samples by offset meanwhile.
#[inline(always)]
fn sampled_clock(caller: &Caller, regs: &UserRegs, call: u8, vdso_base: u64) -> i32 {
    if regs.abi != SyscallAbi::NATIVE {
        return NO_CLOCK;
    }
    let Some(offset) = as_scalar(regs.ip.wrapping_sub(vdso_base)) else {
        return NO_CLOCK;
    };
    if offset >= u64::from(VDSO_CODE_BYTES) {
        return NO_CLOCK;
    }
    let offset = offset as u32;
    if OFFSET_SAMPLED_TGID
        .get(0)
        .is_some_and(|tgid| *tgid == caller.tgid)
        && let Some(count) = SAMPLE_OFFSETS.get_ptr_mut(offset)
    {
        // SAFETY: a valid value of the array. Racy across CPUs: a lost
        // increment only blurs the histogram.
        unsafe { *count += 1 };
    }
    if call != TimeCall::ClockGettime as u8 {
        return NO_CLOCK;
    }
    let marked = |bitmap: &Array<u64>| {
        bitmap
            .get(offset / 64)
            .is_some_and(|word| word & (1 << (offset % 64)) != 0)
    };
    if marked(&COARSE_CODE) {
        CLOCK_COARSE_SAMPLED
    } else if marked(&SHARED_CODE) {
        CLOCK_SHARED_SAMPLED
    } else {
        NO_CLOCK
    }
}

/// Whether exact counting covers `call` in this thread (a breakpoint) or
/// process (a uprobe) right now: then its samples would count it twice.
#[inline(always)]
fn counted_exactly(caller: &Caller, vdso_base: u64, call: u8) -> bool {
    let covers = |key: u32| {
        // SAFETY: a plain read of a map value.
        unsafe { EXACT_COVERAGE.get(key) }.is_some_and(|c| c.covers(vdso_base, call))
    };
    covers(caller.tid) || covers(caller.tgid | COVERAGE_PROCESS)
}

/// The time call a sample belongs to, and the task's vDSO base; None when it
/// is not inside the task's vDSO or belongs to no time call. Code between the
/// exported functions (a pvclock or Hyper-V reader, the ChaCha block, a PC
/// thunk) is a leaf helper called from one of them: it is charged to the
/// function its return address lies in.
#[inline(always)]
fn sampled_call(task: *const u8, regs: &UserRegs) -> Option<(u8, u64)> {
    let (start, len) = vdso_text(task)?;
    let offset = vdso_instruction_offset(regs.ip, start, len)?;
    let table = function_table(regs.abi);
    let mut call = table.call_at(offset);
    if call == VDSO_OTHER_CODE {
        for ret in regs.return_addresses() {
            // A return address points after the call: its byte before is the caller's.
            if inside_vdso(ret, start, len) {
                call = table.call_at(ret - 1 - start);
                if call != VDSO_OTHER_CODE {
                    break;
                }
            }
        }
    }
    match call {
        VDSO_NOT_TIME_CODE => None, // a syscall on its way in or out, a signal return
        VDSO_OTHER_CODE => {
            bump_unattributed(offset, regs.abi == SyscallAbi::I386);
            None
        }
        call => Some((call, start)),
    }
}

/// Hardware execute breakpoint on a vDSO function's first instruction: one
/// exact call. The clock is still where the caller put it.
#[perf_event]
pub fn vdso_breakpoint(ctx: PerfEventContext) -> u32 {
    let Some(regs) = UserRegs::of_perf_event(&ctx) else {
        return 0;
    };
    let Some(caller) = caller() else {
        return 0;
    };
    // A breakpoint left at a stale address after exec counts nothing.
    let Some((start, len)) = vdso_text(caller.task) else {
        return 0;
    };
    let Some(offset) = vdso_instruction_offset(regs.ip, start, len) else {
        return 0;
    };
    let call = function_table(regs.abi).call_at(offset);
    if call == VDSO_OTHER_CODE || call == VDSO_NOT_TIME_CODE {
        return 0;
    }
    match regs.first_argument() {
        Ok(clock) => count_vdso_call(
            caller.task,
            caller.tgid,
            call,
            clock,
            Provenance::Breakpoint,
            regs.abi,
        ),
        Err(_) => bump(ObserverStat::ReadFailed),
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
    let Some(caller) = caller() else {
        return 0;
    };
    let clock_id = match cookie.fixed_clock {
        Some(clock) => Ok(clock),
        None if cookie.call.takes_clock() => regs.first_argument(),
        None => Ok(NO_CLOCK),
    };
    match clock_id {
        Ok(clock_id) => count_vdso_call(
            caller.task,
            caller.tgid,
            cookie.call as u8,
            clock_id,
            Provenance::Uprobe,
            regs.abi,
        ),
        Err(_) => bump(ObserverStat::ReadFailed),
    }
    0
}
