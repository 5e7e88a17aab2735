//! Which syscalls are time calls, per ABI: the numbers, the kernel entry
//! functions (one table for the loader and the programs), and the calls.

use crate::wire_enum;

/// Address of the legacy vsyscall page (x86_64 ABI): calls into it are emulated.
pub const LEGACY_VSYSCALL_PAGE: u64 = 0xffff_ffff_ff60_0000;

/// A kernel function every time syscall of one ABI passes (x86_64's
/// `__x64_sys_*`, the ia32 wrappers for 32-bit tasks): where fentry and kprobe
/// programs count time calls without touching any other syscall. Each has its
/// own fentry and kprobe program, which knows its call and ABI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallEntry {
    /// The kernel function (its first argument is the user `struct pt_regs *`).
    pub function: &'static str,
    pub call: TimeCall,
    pub abi: SyscallAbi,
    /// Names of its programs in the object.
    pub fentry_program: &'static str,
    pub kprobe_program: &'static str,
}

/// The time syscalls' kernel functions, one row each: (function, call, ABI,
/// fentry program, kprobe program). Calls `$then!` with the rows, so the table
/// here and the eBPF programs are made from this one list.
#[cfg(not(any(target_arch = "aarch64", bpf_target_arch = "aarch64")))]
#[macro_export]
macro_rules! for_each_syscall_entry {
    ($then:ident) => {
        $then! {
            "__x64_sys_clock_gettime", ClockGettime, X86_64, fentry_x64_clock_gettime, kprobe_x64_clock_gettime;
            "__x64_sys_gettimeofday", Gettimeofday, X86_64, fentry_x64_gettimeofday, kprobe_x64_gettimeofday;
            "__x64_sys_time", Time, X86_64, fentry_x64_time, kprobe_x64_time;
            "__x64_sys_clock_getres", ClockGetres, X86_64, fentry_x64_clock_getres, kprobe_x64_clock_getres;
            "__x64_sys_getcpu", Getcpu, X86_64, fentry_x64_getcpu, kprobe_x64_getcpu;
            "__x64_sys_getrandom", Getrandom, X86_64, fentry_x64_getrandom, kprobe_x64_getrandom;
            "__ia32_sys_clock_gettime32", ClockGettime, I386, fentry_ia32_clock_gettime32, kprobe_ia32_clock_gettime32;
            "__ia32_sys_clock_gettime", ClockGettime, I386, fentry_ia32_clock_gettime64, kprobe_ia32_clock_gettime64;
            "__ia32_compat_sys_gettimeofday", Gettimeofday, I386, fentry_ia32_gettimeofday, kprobe_ia32_gettimeofday;
            "__ia32_sys_time32", Time, I386, fentry_ia32_time32, kprobe_ia32_time32;
            "__ia32_sys_clock_getres_time32", ClockGetres, I386, fentry_ia32_clock_getres32, kprobe_ia32_clock_getres32;
            "__ia32_sys_clock_getres", ClockGetres, I386, fentry_ia32_clock_getres64, kprobe_ia32_clock_getres64;
            "__ia32_sys_getcpu", Getcpu, I386, fentry_ia32_getcpu, kprobe_ia32_getcpu;
            "__ia32_sys_getrandom", Getrandom, I386, fentry_ia32_getrandom, kprobe_ia32_getrandom;
        }
    };
}

/// arm64's: `__arm64_sys_*` (no `time` syscall; compat tasks are not counted).
#[cfg(any(target_arch = "aarch64", bpf_target_arch = "aarch64"))]
#[macro_export]
macro_rules! for_each_syscall_entry {
    ($then:ident) => {
        $then! {
            "__arm64_sys_clock_gettime", ClockGettime, Arm64, fentry_arm64_clock_gettime, kprobe_arm64_clock_gettime;
            "__arm64_sys_gettimeofday", Gettimeofday, Arm64, fentry_arm64_gettimeofday, kprobe_arm64_gettimeofday;
            "__arm64_sys_clock_getres", ClockGetres, Arm64, fentry_arm64_clock_getres, kprobe_arm64_clock_getres;
            "__arm64_sys_getcpu", Getcpu, Arm64, fentry_arm64_getcpu, kprobe_arm64_getcpu;
            "__arm64_sys_getrandom", Getrandom, Arm64, fentry_arm64_getrandom, kprobe_arm64_getrandom;
        }
    };
}

macro_rules! syscall_entries {
    ($( $function:tt, $call:ident, $abi:ident, $fentry:ident, $kprobe:ident; )*) => {
        /// Every entry function, x86_64 first.
        pub const SYSCALL_ENTRIES: &[SyscallEntry] = &[$(
            SyscallEntry {
                function: $function,
                call: TimeCall::$call,
                abi: SyscallAbi::$abi,
                fentry_program: stringify!($fentry),
                kprobe_program: stringify!($kprobe),
            },
        )*];
    };
}

for_each_syscall_entry!(syscall_entries);

/// arm64's `TIF_32BIT` in `thread_info.flags` (bit 22): a compat task.
pub const TIF_32BIT: u64 = 1 << 22;

/// `TS_COMPAT` in x86 `thread_info.status`: set while a task runs a 32-bit syscall
/// (whether the task is a 32-bit one or a 64-bit one using `int $0x80`). It is a
/// `#define`, so BTF does not carry it; it has kept this value since 2.6.
pub const TS_COMPAT: u32 = 0x0002;

/// Bytes between the user stack pointer at a 32-bit syscall entry through
/// `__kernel_vsyscall` and the return address of its caller: the vDSO routine
/// pushes ecx, edx and ebp before entering the kernel.
pub const KERNEL_VSYSCALL_RETURN_OFFSET: u64 = 12;

wire_enum! {
    /// The time calls followed, whatever ABI number they arrive under.
    pub enum TimeCall: u8 {
        ClockGettime = 0 => "clock_gettime",
        Gettimeofday = 1 => "gettimeofday",
        Time = 2 => "time",
        ClockGetres = 3 => "clock_getres",
        Getcpu = 4 => "getcpu",
        Getrandom = 5 => "getrandom",
    }
}

impl TimeCall {
    /// Whether the first argument is a clock id.
    pub const fn takes_clock(self) -> bool {
        matches!(self, TimeCall::ClockGettime | TimeCall::ClockGetres)
    }
}

wire_enum! {
    /// Which syscall table a number belongs to: decided per syscall, since a 64-bit
    /// task may still issue `int $0x80`.
    pub enum SyscallAbi: u8 {
        X86_64 = 0 => "x86_64",
        I386 = 1 => "i386",
        /// aarch64's own (the generic syscall table).
        Arm64 = 2 => "arm64",
    }
}

impl SyscallAbi {
    /// The ABI of this build's own processes (64-bit user space).
    #[cfg(any(target_arch = "aarch64", bpf_target_arch = "aarch64"))]
    pub const NATIVE: SyscallAbi = SyscallAbi::Arm64;
    #[cfg(not(any(target_arch = "aarch64", bpf_target_arch = "aarch64")))]
    pub const NATIVE: SyscallAbi = SyscallAbi::X86_64;

    /// The time call a syscall number of this ABI stands for.
    #[inline(always)]
    pub const fn time_call(self, nr: i64) -> Option<TimeCall> {
        match self {
            SyscallAbi::X86_64 => time_call_x86_64(nr),
            SyscallAbi::I386 => time_call_i386(nr),
            SyscallAbi::Arm64 => time_call_arm64(nr),
        }
    }

    /// Whether the vDSO of this ABI has a function for `call`: arm64's has no
    /// `time` (no such syscall either) and no `getcpu`, so a getcpu there
    /// always enters the kernel, and that is no fault.
    pub const fn vdso_has(self, call: TimeCall) -> bool {
        !matches!(
            (self, call),
            (SyscallAbi::Arm64, TimeCall::Getcpu | TimeCall::Time)
        )
    }
}

/// arm64 syscall numbers of the time calls (the generic table; there is no
/// `time` syscall).
#[inline(always)]
pub const fn time_call_arm64(nr: i64) -> Option<TimeCall> {
    match nr {
        113 => Some(TimeCall::ClockGettime),
        169 => Some(TimeCall::Gettimeofday),
        114 => Some(TimeCall::ClockGetres),
        168 => Some(TimeCall::Getcpu),
        278 => Some(TimeCall::Getrandom),
        _ => None,
    }
}

/// x86_64 syscall numbers of the time calls.
#[inline(always)]
pub const fn time_call_x86_64(nr: i64) -> Option<TimeCall> {
    match nr {
        228 => Some(TimeCall::ClockGettime),
        96 => Some(TimeCall::Gettimeofday),
        201 => Some(TimeCall::Time),
        229 => Some(TimeCall::ClockGetres),
        309 => Some(TimeCall::Getcpu),
        318 => Some(TimeCall::Getrandom),
        _ => None,
    }
}

/// i386 (compat) syscall numbers of the time calls, `*_time64` variants included.
#[inline(always)]
pub const fn time_call_i386(nr: i64) -> Option<TimeCall> {
    match nr {
        265 | 403 => Some(TimeCall::ClockGettime),
        78 => Some(TimeCall::Gettimeofday),
        13 => Some(TimeCall::Time),
        266 | 406 => Some(TimeCall::ClockGetres),
        318 => Some(TimeCall::Getcpu),
        355 => Some(TimeCall::Getrandom),
        _ => None,
    }
}

/// Whether a syscall number is a time call in either table: the one test every
/// syscall of the machine pays before the program returns.
#[cfg(not(any(target_arch = "aarch64", bpf_target_arch = "aarch64")))]
#[inline(always)]
pub const fn may_be_time_call(nr: i64) -> bool {
    time_call_x86_64(nr).is_some() || time_call_i386(nr).is_some()
}

/// The same on arm64 (64-bit tasks only: compat tasks are not counted).
#[cfg(any(target_arch = "aarch64", bpf_target_arch = "aarch64"))]
#[inline(always)]
pub const fn may_be_time_call(nr: i64) -> bool {
    time_call_arm64(nr).is_some()
}

/// The call behind `nr` of tracepoint `vsyscall:emulate_vsyscall`.
#[inline(always)]
pub const fn time_call_vsyscall(nr: i64) -> Option<TimeCall> {
    match nr {
        0 => Some(TimeCall::Gettimeofday),
        1 => Some(TimeCall::Time),
        2 => Some(TimeCall::Getcpu),
        _ => None,
    }
}
