//! The vDSO side: how a vDSO call was seen, where each exported function of an
//! image lies, what exact counting covers, and recorded cgroup paths.

use crate::{CGROUP_PATH_LEN, TimeCall, wire_enum};

wire_enum! {
    /// How a vDSO call was seen.
    pub enum Provenance: u8 {
        /// A cpu-clock sample found the user instruction pointer inside the function:
        /// the count is of samples, turned into an estimate of calls in user space.
        Sampled = 0 => "sampled",
        /// A uprobe on the caller's entry point (libc `clock_gettime`, Go runtime): exact.
        Uprobe = 1 => "uprobe",
        /// A hardware execute breakpoint on the vDSO function itself: exact.
        Breakpoint = 2 => "breakpoint",
    }
}

/// `call` of a [`VdsoKey`] for vDSO code no time call claims (a table slot
/// never says it; an exact probe with an unknown call would).
pub const VDSO_OTHER_CODE: u8 = 0xff;
/// `call` of a table slot holding exported code that is no time call:
/// `__kernel_vsyscall` (every 32-bit syscall passes it), the signal-return
/// trampolines (on arm64 every signal handler returns through one) and SGX's
/// enclave entry (an enclave's samples land at its exit point there). Samples
/// there count nothing, and are not unattributed either.
pub const VDSO_NOT_TIME_CODE: u8 = 0xfe;

/// What exact counting covers in one thread or process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExactCoverage {
    /// Where the traced image maps its vDSO (`mm->context.vdso`): after an
    /// exec the old coverage no longer applies, until user space attaches again.
    pub vdso_base: u64,
    /// Bit `1 << call` per [`TimeCall`] counted exactly.
    pub calls: u32,
    pub _pad: u32,
}

impl ExactCoverage {
    #[inline(always)]
    pub const fn covers(&self, vdso_base: u64, call: u8) -> bool {
        self.vdso_base == vdso_base && call < 32 && self.calls & (1 << call) != 0
    }
}

/// Most functions the table holds.
pub const VDSO_FUNCTION_SLOTS: usize = 12;

/// Where each exported function of a vDSO image lies, as offsets from the
/// start of its text (`mm->context.vdso`). An image is the same for every
/// process of its ABI in a boot, so user space reads each one once: the 64-bit
/// one from its own vDSO, the 32-bit one from a 32-bit child's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VdsoFunctionTable {
    pub count: u32,
    pub _pad: u32,
    pub start: [u32; VDSO_FUNCTION_SLOTS],
    pub end: [u32; VDSO_FUNCTION_SLOTS],
    /// A [`TimeCall`] per slot.
    pub call: [u8; VDSO_FUNCTION_SLOTS],
}

impl VdsoFunctionTable {
    pub const EMPTY: VdsoFunctionTable = VdsoFunctionTable {
        count: 0,
        _pad: 0,
        start: [0; VDSO_FUNCTION_SLOTS],
        end: [0; VDSO_FUNCTION_SLOTS],
        call: [0; VDSO_FUNCTION_SLOTS],
    };

    /// The call whose function holds `offset`, or [`VDSO_OTHER_CODE`]. Reads
    /// are volatile: in the eBPF object the table is a loader-written global whose
    /// initializer the compiler must not fold in.
    #[inline(always)]
    pub fn call_at(&self, offset: u64) -> u8 {
        use core::ptr::read_volatile;
        // SAFETY: plain reads of fields of a valid reference.
        let count = unsafe { read_volatile(&self.count) } as usize;
        let mut i = 0;
        while i < VDSO_FUNCTION_SLOTS && i < count {
            let (start, end) =
                unsafe { (read_volatile(&self.start[i]), read_volatile(&self.end[i])) };
            if offset >= start as u64 && offset < end as u64 {
                return unsafe { read_volatile(&self.call[i]) };
            }
            i += 1;
        }
        VDSO_OTHER_CODE
    }
}

/// Cookie of a uprobe on an entry point: which call, and where its clock is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UprobeCookie {
    pub call: TimeCall,
    /// `Some(id)`: the entry always reads this clock (Go's nanotime1 and
    /// walltime); `None`: the clock is the first argument.
    pub fixed_clock: Option<i32>,
}

impl UprobeCookie {
    const FIXED: u64 = 1 << 8;

    pub const fn encode(self) -> u64 {
        match self.fixed_clock {
            None => self.call as u64,
            Some(clock) => self.call as u64 | Self::FIXED | ((clock as u32 as u64) << 32),
        }
    }

    #[inline(always)]
    pub const fn decode(cookie: u64) -> Option<UprobeCookie> {
        let Some(call) = TimeCall::from_repr(cookie as u8) else {
            return None;
        };
        let fixed_clock = if cookie & Self::FIXED != 0 {
            Some((cookie >> 32) as u32 as i32)
        } else {
            None
        };
        Some(UprobeCookie { call, fixed_clock })
    }
}

/// A cgroup's path from its hierarchy's root (`/kubepods.slice/…`), NUL-terminated.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupPath {
    pub bytes: [u8; CGROUP_PATH_LEN],
}

impl CgroupPath {
    pub const EMPTY: CgroupPath = CgroupPath {
        bytes: [0; CGROUP_PATH_LEN],
    };

    /// The text up to the first NUL; None when it is not UTF-8 or empty.
    pub fn text(&self) -> Option<&str> {
        let end = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(CGROUP_PATH_LEN);
        core::str::from_utf8(&self.bytes[..end])
            .ok()
            .filter(|t| !t.is_empty())
    }
}
