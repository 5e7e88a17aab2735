//! The one atomic operation the programs need: adding one to a u64 that other
//! CPUs (or a preempted program on this one) add to as well.

/// Adds one with a BPF atomic add: a program preempted between the load and
/// the store of a plain `+= 1` would lose another's count. (The BPF target
/// has no compare-and-swap, so `core`'s atomics offer no `fetch_add`.)
#[inline(always)]
pub fn add_one(count: *mut u64) {
    // SAFETY: `count` is a valid, aligned u64 of a map value; the instruction
    // touches only it.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({0} + 0) += {1}",
            in(reg) count,
            in(reg) 1u64,
            options(nostack)
        )
    };
}
