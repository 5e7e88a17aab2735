//! Kernel side of vdso-observer: count time calls that enter the kernel (per
//! process, call, clock and origin) and vDSO calls seen by the cpu-clock sampler,
//! uprobes and hardware breakpoints. It only counts; user space names, sums and
//! judges. Every syscall on the machine passes `time_syscall_enter`, so anything
//! that is not a time call must leave after one comparison chain. Rare events (a
//! map found full, a failed read) are said once per CPU through aya-log, off the
//! counting path.
//!
//! One module per job: `config` (what the loader writes before load), `maps`,
//! `kernel` (reads of kernel objects), `count` (the counting core), and the
//! programs by what they hang off: `syscall_entry`, `vdso_probes`, `cgroups`,
//! `lifetimes`.
#![no_std]
#![no_main]
// The atomic add of preemptible (fentry) programs is written in BPF assembly.
#![feature(asm_experimental_arch)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod atomic;
mod cgroups;
mod config;
mod count;
mod drain_trigger;
mod kernel;
mod lifetimes;
mod maps;
mod stats;
mod syscall_entry;
mod user_regs;
mod vdso_probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
