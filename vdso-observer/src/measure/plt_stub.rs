//! How a C program reaches a vDSO function: `call time@plt`, whose stub jumps
//! on through a pointer (glibc's `time` and `gettimeofday` resolve to the
//! vDSO's own). A function of a few instructions is sampled in proportions
//! that depend on the code around it. On an Intel VM, per call of `time`:
//! a Rust loop calling it straight sampled 2.6 times what a C loop through
//! its PLT did; a C loop reading its bound from memory and keeping each
//! result 1.3 times what a loop in registers did. The calibration calls such
//! functions through a stub of a PLT's shape, from loops of both shapes, so
//! its samples fall as a program's do and their disagreement says how much
//! the call site weighs on this host.
//!
//! The stub is a lazy-binding PLT entry (`jmp *GOT; push; jmp PLT0`, what gcc
//! and ld lay out without IBT, as on Debian). On an AMD EPYC (Zen 4) VM a
//! loop in registers through an entry padded after its jump (int3, or the
//! nop and next entry of an IBT `.plt.sec`) sampled `time` at 0.23-0.29 ns a
//! call, a quarter of what the same loop through a lazy entry (0.93-1.06),
//! and every loop that touches memory through any of the three (0.87-1.14),
//! sampled: a program that does anything between two calls is priced by
//! the latter.
/// The loop around the call: what a caller does between two calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallSite {
    /// gcc -O2's `for (i = 0; i < n; i++) time(NULL);` with `n` in a
    /// register: nothing but the call.
    Registers,
    /// The same loop reading its bound from memory and storing each result,
    /// as code that uses the time does.
    Memory,
}

#[cfg(target_arch = "x86_64")]
mod stub {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::CallSite;

    /// Where the stub jumps: its GOT slot.
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    /// Where the resolver entry would jump: never taken, see below.
    static RESOLVER: AtomicUsize = AtomicUsize::new(0);

    // A lazy-binding PLT entry as gcc and ld lay it out without IBT (an
    // indirect jump through the slot, then the push and jump to the resolver
    // entry that only an unbound slot takes), the resolver entry (never run:
    // the slot is bound before the first call, so it ends in ud2), and the
    // two loops (rdi: how many calls, at least one; each with a null
    // argument).
    core::arch::global_asm!(
        ".pushsection .text.vdso_observer_plt_stub, \"ax\", @progbits",
        ".balign 16",
        ".globl vdso_observer_plt_stub",
        ".hidden vdso_observer_plt_stub",
        ".type vdso_observer_plt_stub, @function",
        "vdso_observer_plt_stub:",
        "jmp qword ptr [rip + {slot}]",
        "push 0",
        "jmp 4f",
        ".balign 16, 0xcc",
        ".size vdso_observer_plt_stub, . - vdso_observer_plt_stub",
        ".balign 16",
        "4:",
        "push qword ptr [rip + {slot}]",
        "jmp qword ptr [rip + {resolver}]",
        "ud2",
        ".balign 16, 0xcc",
        //
        ".balign 16",
        ".globl vdso_observer_plt_loop_registers",
        ".hidden vdso_observer_plt_loop_registers",
        ".type vdso_observer_plt_loop_registers, @function",
        "vdso_observer_plt_loop_registers:",
        "push rbp",
        "push rbx",
        "sub rsp, 8",
        "mov rbp, rdi",
        "xor ebx, ebx",
        ".balign 16",
        "2:",
        "xor edi, edi",
        "add rbx, 1",
        "call vdso_observer_plt_stub",
        "cmp rbx, rbp",
        "jne 2b",
        "add rsp, 8",
        "pop rbx",
        "pop rbp",
        "ret",
        ".size vdso_observer_plt_loop_registers, . - vdso_observer_plt_loop_registers",
        //
        ".balign 16",
        ".globl vdso_observer_plt_loop_memory",
        ".hidden vdso_observer_plt_loop_memory",
        ".type vdso_observer_plt_loop_memory, @function",
        "vdso_observer_plt_loop_memory:",
        "push rbp",
        "push rbx",
        "sub rsp, 24",
        "mov qword ptr [rsp + 8], rdi",
        "xor ebx, ebx",
        ".balign 16",
        "3:",
        "xor edi, edi",
        "add rbx, 1",
        "call vdso_observer_plt_stub",
        "mov qword ptr [rsp], rax",
        "cmp rbx, qword ptr [rsp + 8]",
        "jl 3b",
        "add rsp, 24",
        "pop rbx",
        "pop rbp",
        "ret",
        ".size vdso_observer_plt_loop_memory, . - vdso_observer_plt_loop_memory",
        ".popsection",
        slot = sym SLOT,
        resolver = sym RESOLVER,
    );

    unsafe extern "C" {
        fn vdso_observer_plt_loop_registers(calls: u64);
        fn vdso_observer_plt_loop_memory(calls: u64);
    }

    /// # Safety
    /// `target` takes one pointer argument, null allowed; one caller at a
    /// time per process (the stub has one slot).
    pub unsafe fn call_null(target: usize, calls: u64, site: CallSite) {
        SLOT.store(target, Ordering::SeqCst);
        // SAFETY: the caller's promise; the loops make at least one call.
        unsafe {
            match site {
                CallSite::Registers => vdso_observer_plt_loop_registers(calls.max(1)),
                CallSite::Memory => vdso_observer_plt_loop_memory(calls.max(1)),
            }
        }
    }
}

// Other architectures' vDSOs have no `time`: a plain loop does.
#[cfg(not(target_arch = "x86_64"))]
mod stub {
    use super::CallSite;

    /// # Safety
    /// `target` takes one pointer argument, null allowed.
    pub unsafe fn call_null(target: usize, calls: u64, _site: CallSite) {
        // SAFETY: the caller's promise.
        let f: unsafe extern "C" fn(*mut libc::c_void) -> libc::c_long =
            unsafe { std::mem::transmute(target) };
        for _ in 0..calls.max(1) {
            std::hint::black_box(unsafe { f(std::ptr::null_mut()) });
        }
    }
}

/// Calls `target(NULL)` `calls` times (at least once) as a C loop of the
/// shape of `site` calls a libc function: through a PLT-shaped stub.
///
/// # Safety
/// `target` is a C function taking one pointer argument that may be null,
/// such as the vDSO's `time`; one caller at a time per process.
pub unsafe fn call_null_through_plt(target: usize, calls: u64, site: CallSite) {
    // SAFETY: the caller's promise.
    unsafe { stub::call_null(target, calls, site) }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    static CALLED: AtomicU64 = AtomicU64::new(0);

    extern "C" fn count(argument: *mut libc::c_long) -> libc::c_long {
        assert!(argument.is_null());
        CALLED.fetch_add(1, Ordering::Relaxed) as libc::c_long
    }

    // One test: the stub's one slot is shared by every caller in the process.
    #[test]
    fn both_loops_call_as_often_as_asked_and_at_least_once() {
        let count = count as *const () as usize;
        // SAFETY: `count` takes one pointer, and checks it is null.
        unsafe { call_null_through_plt(count, 1000, CallSite::Registers) };
        assert_eq!(CALLED.load(Ordering::Relaxed), 1000);
        unsafe { call_null_through_plt(count, 0, CallSite::Registers) };
        assert_eq!(CALLED.load(Ordering::Relaxed), 1001);
        unsafe { call_null_through_plt(count, 999, CallSite::Memory) };
        assert_eq!(CALLED.load(Ordering::Relaxed), 2000);
        unsafe { call_null_through_plt(count, 0, CallSite::Memory) };
        assert_eq!(CALLED.load(Ordering::Relaxed), 2001);
    }
}
