//! Where a kernel entry came from, and what "inside the vDSO" means: one
//! definition for the programs and user space.

use crate::wire_enum;

wire_enum! {
    /// Where a kernel entry for a time call came from.
    pub enum Origin: u8 {
        /// The syscall instruction lies inside the task's vDSO: the vDSO itself gave up.
        VdsoFallback = 0 => "vdso_fallback",
        /// Issued outside the vDSO (syscall(2), a static or vDSO-less runtime path).
        Direct = 1 => "direct",
        /// The task has no vDSO mapped at all.
        NoVdso = 2 => "no_vdso",
        /// A call into the legacy vsyscall page, emulated by the kernel.
        LegacyVsyscall = 3 => "legacy_vsyscall",
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
