//! Reads of kernel objects: the current task (BTF-typed: fields load
//! directly), its process image, its vDSO text, the user registers a program
//! was handed, and which syscall table a syscall uses. Offsets come from the
//! loader (`config!`), never from this source.

use aya_ebpf::helpers::{bpf_get_current_task_btf, bpf_probe_read_kernel};
use vdso_observer_common::{ProcessKey, SyscallAbi};

use crate::config::config;

#[inline(always)]
pub fn current_task() -> Option<*const u8> {
    // The BTF-typed task: fields load directly (the verifier knows the offsets,
    // read from the frozen config, as constants) instead of one helper call each.
    // SAFETY: the helper has no preconditions; it returns the running task.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    (!task.is_null()).then_some(task)
}

/// A field of a BTF-typed kernel object (task, mm, vdso_image): a direct load
/// the verifier checks against the type and turns into a faulting-safe read.
#[inline(always)]
pub fn read_task<T>(base: *const u8, offset: u32) -> T {
    // SAFETY: `base` is a BTF-typed pointer and `offset` a field's offset from
    // the same kernel's BTF; the verifier makes a bad read yield zero.
    unsafe { core::ptr::read_volatile(base.wrapping_add(offset as usize) as *const T) }
}

/// A field of an untyped kernel pointer, through the helper.
#[inline(always)]
pub fn read_kernel<T>(base: *const u8, offset: u32) -> Result<T, i32> {
    // SAFETY: the helper checks the address and fails instead of faulting.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T) }
}

/// `value` as plain data. A value computed from a BTF-typed pointer field
/// (the vDSO's address in the mm) stays a pointer to the verifier, which will
/// not let it be stored narrower, as a map key must be: copied through the
/// helper, it is a number. A helper call: for rare paths only.
#[inline(always)]
pub fn as_scalar(value: u64) -> Option<u64> {
    let slot = value;
    read_kernel::<u64>(&slot as *const u64 as *const u8, 0).ok()
}

/// The user registers a program was handed: BTF-typed ones (tp_btf, fentry)
/// load directly; untyped ones (raw tracepoint, kprobe) through
/// `bpf_probe_read_kernel`, a function call each.
#[derive(Clone, Copy)]
pub enum Regs {
    Typed(*const u8),
    Untyped(*const u8),
}

impl Regs {
    #[inline(always)]
    pub fn read(self, offset: u32) -> Result<u64, i32> {
        match self {
            Regs::Typed(regs) => Ok(read_task(regs, offset)),
            Regs::Untyped(regs) => read_kernel(regs, offset),
        }
    }
}

/// The table of the syscall the task is making: a 64-bit x86 task may
/// `int $0x80`, and the kernel marks that syscall `TS_COMPAT`.
#[cfg(not(bpf_target_arch = "aarch64"))]
#[inline(always)]
pub fn syscall_abi(task: *const u8) -> Option<SyscallAbi> {
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
pub fn syscall_abi(task: *const u8) -> Option<SyscallAbi> {
    let flags: u64 = read_task(task, config!(offsets.task_thread_status));
    (flags & vdso_observer_common::TIF_32BIT == 0).then_some(SyscallAbi::Arm64)
}

/// The process image a task belongs to, and its thread group leader.
#[inline(always)]
pub fn process_key(task: *const u8, tgid: u32) -> (ProcessKey, *const u8) {
    let leader: *const u8 = read_task(task, config!(offsets.task_group_leader));
    (
        ProcessKey {
            tgid,
            exec_id: read_task(task, config!(offsets.task_self_exec_id)),
            start_boottime_ns: read_task(leader, config!(offsets.task_start_boottime)),
        },
        leader,
    )
}

/// The task's thread group id, read directly (a helper call costs more).
#[inline(always)]
pub fn tgid_of(task: *const u8) -> u32 {
    read_task(task, config!(offsets.task_tgid))
}

/// Whether no thread of the task's group is left (at `sched_process_exit`,
/// after the kernel counted this one out of `signal->live`).
#[inline(always)]
pub fn thread_group_dead(task: *const u8) -> bool {
    let signal: *const u8 = read_task(task, config!(offsets.task_signal));
    !signal.is_null() && read_task::<i32>(signal, config!(offsets.signal_live)) == 0
}

/// `(start, length)` of the task's vDSO text, `(0, 0)` when it has none, None
/// for kernel threads (no mm).
#[inline(always)]
pub fn vdso_text(task: *const u8) -> Option<(u64, u64)> {
    let mm: *const u8 = read_task(task, config!(offsets.task_mm));
    if mm.is_null() {
        return None;
    }
    let start: u64 = read_task(mm, config!(offsets.mm_vdso));
    if start == 0 {
        return Some((0, 0));
    }
    Some((start, vdso_len(mm)))
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
