//! The user registers a perf event (sample, breakpoint) or a uprobe stopped
//! at, as the programs need them on each architecture: the instruction and
//! stack pointers, the first argument of a function starting there, where
//! its return address may be, and which vDSO image the code runs.

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    programs::{PerfEventContext, ProbeContext},
};
use vdso_observer_common::SyscallAbi;

pub struct UserRegs {
    pub ip: u64,
    sp: u64,
    /// Frame pointer (rbp, x29).
    frame: u64,
    /// The link register (x30) on arm64; 0 on x86, where calls push the return address.
    link: u64,
    /// First integer argument register (rdi, x0).
    arg0: u64,
    pub abi: SyscallAbi,
}

#[cfg(not(bpf_target_arch = "aarch64"))]
mod arch {
    use aya_ebpf::bindings::pt_regs;
    use vdso_observer_common::SyscallAbi;

    use super::UserRegs;

    /// x86 user code segment selector of 32-bit code
    /// (GDT_ENTRY_DEFAULT_USER32_CS * 8 + 3): part of the ABI, as ptrace shows it.
    const USER32_CS: u64 = 0x23;

    /// None when the CPU was in the kernel.
    #[inline(always)]
    pub fn user_regs(regs: &pt_regs) -> Option<UserRegs> {
        if regs.cs & 3 != 3 {
            return None;
        }
        Some(UserRegs {
            ip: regs.rip,
            sp: regs.rsp,
            frame: regs.rbp,
            link: 0,
            arg0: regs.rdi,
            // 32-bit code runs vdso32.
            abi: if regs.cs == USER32_CS {
                SyscallAbi::I386
            } else {
                SyscallAbi::X86_64
            },
        })
    }

    pub type PerfRegs = pt_regs;
}

#[cfg(bpf_target_arch = "aarch64")]
mod arch {
    use aya_ebpf::bindings::user_pt_regs;
    use vdso_observer_common::SyscallAbi;

    use super::UserRegs;

    /// `PSR_MODE_MASK` and `PSR_MODE32_BIT` of pstate: EL0 is mode 0; a
    /// compat (AArch32) task has bit 4 set and is not observed.
    const PSR_MODE_MASK: u64 = 0x0f;
    const PSR_MODE32_BIT: u64 = 0x10;

    /// None when the CPU was in the kernel, or in a compat task.
    #[inline(always)]
    pub fn user_regs(regs: &user_pt_regs) -> Option<UserRegs> {
        if regs.pstate & PSR_MODE_MASK != 0 || regs.pstate & PSR_MODE32_BIT != 0 {
            return None;
        }
        Some(UserRegs {
            ip: regs.pc,
            sp: regs.sp,
            frame: regs.regs[29],
            link: regs.regs[30],
            arg0: regs.regs[0],
            abi: SyscallAbi::Arm64,
        })
    }

    pub type PerfRegs = user_pt_regs;
}

impl UserRegs {
    /// Where a perf event (sample, breakpoint) stopped; None in the kernel.
    #[inline(always)]
    pub fn of_perf_event(ctx: &PerfEventContext) -> Option<UserRegs> {
        // SAFETY: the context of a perf_event program is bpf_perf_event_data.
        let regs: &arch::PerfRegs = unsafe { &(*ctx.ctx).regs };
        arch::user_regs(regs)
    }

    /// Where a uprobe stopped (always user code).
    #[inline(always)]
    pub fn of_uprobe(ctx: &ProbeContext) -> Option<UserRegs> {
        // SAFETY: a uprobe's context is the user registers at the probed
        // instruction (arm64's pt_regs begins with its user_pt_regs).
        let regs = unsafe { &*ctx.regs.cast::<arch::PerfRegs>() };
        arch::user_regs(regs)
    }

    /// The first argument at a function's first instruction: the register on
    /// 64-bit ABIs, the stack slot above the return address on i386.
    #[inline(always)]
    pub fn first_argument(&self) -> Result<i32, i32> {
        match self.abi {
            SyscallAbi::I386 => Ok(read_user::<u32>(self.sp + 4).ok_or(-14)? as i32),
            SyscallAbi::X86_64 | SyscallAbi::Arm64 => Ok(self.arg0 as i32),
        }
    }

    /// Where the return address of a leaf function stopped in may be: on x86
    /// at the top of the stack or above the frame pointer; on arm64 in the
    /// link register or above the frame pointer. Unreadable ones are 0 (no
    /// vDSO lies there): plain words, since the verifier refuses to copy the
    /// undefined payload of a `None`.
    #[inline(always)]
    pub fn return_addresses(&self) -> [u64; 2] {
        match self.abi {
            SyscallAbi::X86_64 => [
                read_user::<u64>(self.sp).unwrap_or(0),
                read_user::<u64>(self.frame.wrapping_add(8)).unwrap_or(0),
            ],
            SyscallAbi::I386 => [
                read_user::<u32>(self.sp).map_or(0, u64::from),
                read_user::<u32>(self.frame.wrapping_add(4)).map_or(0, u64::from),
            ],
            SyscallAbi::Arm64 => [
                self.link,
                read_user::<u64>(self.frame.wrapping_add(8)).unwrap_or(0),
            ],
        }
    }
}

#[inline(always)]
fn read_user<T>(address: u64) -> Option<T> {
    // SAFETY: the helper checks the user address and fails instead of faulting.
    unsafe { bpf_probe_read_user(address as *const T) }.ok()
}
