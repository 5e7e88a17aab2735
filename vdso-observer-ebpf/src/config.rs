//! What the loader writes into the object before it is loaded: kernel
//! offsets from BTF, the observer's own pid, the key cap, and where the time
//! functions lie in each vDSO image. Frozen at load, so the verifier sees the
//! values as constants.

use aya_ebpf::Global;
use vdso_observer_common::{ProgramConfig, SyscallAbi, VdsoFunctionTable};

#[unsafe(no_mangle)]
pub static PROGRAM_CONFIG: Global<ProgramConfig> = Global::new(ProgramConfig::ZERO);

/// One field of the loader-written config, read on its own: `Global::load`
/// copies the whole struct, a byte-wise memcpy on every time call.
macro_rules! config {
    ($($field:tt)+) => {{
        let config = (&raw const $crate::config::PROGRAM_CONFIG)
            .cast::<vdso_observer_common::ProgramConfig>();
        // SAFETY: Global<T> is a transparent wrapper of T, written by the loader
        // before the program is loaded; volatile, so the initializer is not folded in.
        unsafe { core::ptr::read_volatile(&raw const (*config).$($field)+) }
    }};
}
pub(crate) use config;

#[unsafe(no_mangle)]
static VDSO_FUNCTIONS: Global<VdsoFunctionTable> = Global::new(VdsoFunctionTable::EMPTY);

#[unsafe(no_mangle)]
static VDSO32_FUNCTIONS: Global<VdsoFunctionTable> = Global::new(VdsoFunctionTable::EMPTY);

/// The function table of the image a task of `abi` maps.
#[inline(always)]
pub fn function_table(abi: SyscallAbi) -> &'static VdsoFunctionTable {
    let global = match abi {
        SyscallAbi::I386 => &raw const VDSO32_FUNCTIONS,
        SyscallAbi::X86_64 | SyscallAbi::Arm64 => &raw const VDSO_FUNCTIONS,
    };
    // SAFETY: Global<T> is a transparent wrapper of T, never written after
    // load; `call_at` reads it volatile.
    unsafe { &*global.cast::<VdsoFunctionTable>() }
}
