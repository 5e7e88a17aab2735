//! The vDSO image: its exported time functions and where they lie.
//!
//! Every 64-bit process of one boot maps the same image, so reading the
//! observer's own (`getauxval(AT_SYSINFO_EHDR)`) tells the offsets for all of
//! them; a process's own base comes from its `/proc/PID/maps`. 32-bit
//! processes map another image (vdso32), read from a 32-bit child
//! (host::vdso32).

use anyhow::{Context as _, Result, anyhow, bail};
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};
use vdso_observer_common::{TimeCall, VDSO_FUNCTION_SLOTS, VDSO_NOT_TIME_CODE, VdsoFunctionTable};

/// One exported function of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportedFunction {
    pub call: TimeCall,
    /// Offset of its first instruction from the image start.
    pub offset: u64,
    pub size: u64,
}

/// The functions of an image, found by their `__vdso_` names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VdsoImage {
    pub functions: Vec<ExportedFunction>,
    /// Exported code that is no time call ([`NOT_TIME_EXPORTS`]), by name,
    /// offset and size: samples there are neither calls nor unattributed.
    pub other_exports: Vec<(&'static str, u64, u64)>,
    /// Where this process maps it (0 for an image parsed from bytes).
    pub own_base: u64,
    pub len: u64,
}

/// Exported code that is no time call, yet where a process spends time:
/// vdso32's syscall entry, which every 32-bit syscall passes; the
/// signal-return trampolines (arm64's, which every signal handler returns
/// through, and vdso32's, used without `SA_RESTORER`); SGX's enclave entry,
/// where an enclave's samples land (its asynchronous exit point).
pub const NOT_TIME_EXPORTS: [&str; 4] = [
    "__kernel_vsyscall",
    "__kernel_sigreturn",
    "__kernel_rt_sigreturn",
    "__vdso_sgx_enter_enclave",
];

/// The time functions of both x86 images (vdso32 has a 64-bit-time variant
/// of two of them), and arm64's `__kernel_` names.
const EXPORTS: [(&str, TimeCall); 12] = [
    ("__kernel_clock_gettime", TimeCall::ClockGettime),
    ("__kernel_gettimeofday", TimeCall::Gettimeofday),
    ("__kernel_clock_getres", TimeCall::ClockGetres),
    ("__kernel_getrandom", TimeCall::Getrandom),
    ("__vdso_clock_gettime", TimeCall::ClockGettime),
    ("__vdso_clock_gettime64", TimeCall::ClockGettime),
    ("__vdso_clock_getres_time64", TimeCall::ClockGetres),
    ("__vdso_gettimeofday", TimeCall::Gettimeofday),
    ("__vdso_time", TimeCall::Time),
    ("__vdso_clock_getres", TimeCall::ClockGetres),
    ("__vdso_getcpu", TimeCall::Getcpu),
    ("__vdso_getrandom", TimeCall::Getrandom),
];

impl VdsoImage {
    /// Parses an image's bytes (an ELF shared object).
    pub fn parse(bytes: &[u8]) -> Result<VdsoImage> {
        let file = object::File::parse(bytes).context("the vDSO image is not ELF")?;
        let bias = file
            .segments()
            .map(|segment| segment.address())
            .min()
            .unwrap_or(0);
        let mut functions = Vec::new();
        let mut other_exports = Vec::new();
        for symbol in file.dynamic_symbols() {
            let Ok(name) = symbol.name() else { continue };
            if let Some(export) = NOT_TIME_EXPORTS.iter().find(|export| **export == name) {
                other_exports.push((*export, symbol.address() - bias, symbol.size()));
            }
            if let Some((_, call)) = EXPORTS.iter().find(|(export, _)| *export == name) {
                functions.push(ExportedFunction {
                    call: *call,
                    offset: symbol.address() - bias,
                    size: symbol.size(),
                });
            }
        }
        if functions.is_empty() {
            bail!(
                "the vDSO image exports none of {:?}",
                EXPORTS.map(|(n, _)| n)
            );
        }
        functions.sort_by_key(|f| f.offset);
        Ok(VdsoImage {
            functions,
            other_exports,
            len: bytes.len() as u64,
            own_base: 0,
        })
    }

    /// This process's own image.
    pub fn current() -> Result<VdsoImage> {
        let (base, len) = own_mapping()?;
        // SAFETY: [vdso] is mapped readable for the whole life of the process.
        let bytes = unsafe { std::slice::from_raw_parts(base as *const u8, len as usize) };
        let mut image = VdsoImage::parse(bytes)?;
        image.own_base = base;
        Ok(image)
    }

    /// Where `call` lies in this process (for calling it, or timing it).
    pub fn own_address(&self, call: TimeCall) -> Option<u64> {
        (self.own_base != 0).then_some(self.own_base + self.function(call)?.offset)
    }

    pub fn function(&self, call: TimeCall) -> Option<ExportedFunction> {
        self.functions.iter().copied().find(|f| f.call == call)
    }

    /// The table handed to the eBPF programs: the time functions, then the
    /// other exports (marked [`VDSO_NOT_TIME_CODE`]).
    pub fn table(&self) -> VdsoFunctionTable {
        let slots = self
            .functions
            .iter()
            .map(|f| (f.offset, f.size, f.call as u8))
            .chain(
                self.other_exports
                    .iter()
                    .map(|&(_, offset, size)| (offset, size, VDSO_NOT_TIME_CODE)),
            );
        let mut table = VdsoFunctionTable::EMPTY;
        for (slot, (offset, size, call)) in slots.take(VDSO_FUNCTION_SLOTS).enumerate() {
            table.start[slot] = offset as u32;
            table.end[slot] = (offset + size.max(1)) as u32;
            table.call[slot] = call;
            table.count = slot as u32 + 1;
        }
        table
    }
}

/// Base and length of this process's `[vdso]` mapping.
fn own_mapping() -> Result<(u64, u64)> {
    // SAFETY: getauxval has no preconditions.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    if base == 0 {
        bail!("this process has no vDSO (booted with vdso=0?): vDSO calls cannot be estimated");
    }
    let maps = std::fs::read_to_string("/proc/self/maps").context("reading /proc/self/maps")?;
    let (start, end) =
        vdso_range_in_maps(&maps).ok_or_else(|| anyhow!("no [vdso] line in /proc/self/maps"))?;
    if start != base {
        bail!("AT_SYSINFO_EHDR {base:#x} is not the [vdso] mapping at {start:#x}");
    }
    Ok((start, end - start))
}

/// `[start, end)` of the `[vdso]` line of a maps text.
pub fn vdso_range_in_maps(maps: &str) -> Option<(u64, u64)> {
    let line = maps.lines().find(|line| line.ends_with("[vdso]"))?;
    let range = line.split_whitespace().next()?;
    let (start, end) = range.split_once('-')?;
    Some((
        u64::from_str_radix(start, 16).ok()?,
        u64::from_str_radix(end, 16).ok()?,
    ))
}

/// A running process's vDSO base, None when it has none or is gone.
pub fn vdso_base_of(pid: u32) -> Option<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    vdso_range_in_maps(&maps).map(|(start, _)| start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_image_exports_the_time_functions() {
        let image = VdsoImage::current().unwrap();
        for call in [
            TimeCall::ClockGettime,
            TimeCall::Gettimeofday,
            TimeCall::Time,
            TimeCall::ClockGetres,
            TimeCall::Getcpu,
        ] {
            let function = image.function(call).unwrap_or_else(|| panic!("{call:?}"));
            assert!(function.size > 0 && function.offset + function.size <= image.len);
        }
        let table = image.table();
        assert_eq!(
            table.count as usize,
            (image.functions.len() + image.other_exports.len()).min(VDSO_FUNCTION_SLOTS)
        );
        // No syscall entry and no signal trampoline on x86_64 (libc brings
        // its own restorer); arm64's handlers all return through the vDSO's.
        let names: Vec<&str> = image.other_exports.iter().map(|e| e.0).collect();
        #[cfg(target_arch = "x86_64")]
        assert!(
            names.iter().all(|n| *n == "__vdso_sgx_enter_enclave"),
            "{names:?}"
        );
        #[cfg(target_arch = "aarch64")]
        assert_eq!(names, ["__kernel_rt_sigreturn"]);
        for &(name, offset, size) in &image.other_exports {
            assert_eq!(table.call_at(offset), VDSO_NOT_TIME_CODE, "{name}");
            assert_eq!(
                table.call_at(offset + size.max(1) - 1),
                VDSO_NOT_TIME_CODE,
                "{name}"
            );
        }
        let gettime = image.function(TimeCall::ClockGettime).unwrap();
        assert_eq!(table.call_at(gettime.offset), TimeCall::ClockGettime as u8);
        assert_eq!(
            table.call_at(gettime.offset + gettime.size - 1),
            TimeCall::ClockGettime as u8
        );
    }

    #[test]
    fn maps_lines() {
        let maps = "7ffd1000-7ffd3000 r--p 00000000 00:00 0                          [vvar]\n\
                    7ffd3000-7ffd5000 r-xp 00000000 00:00 0                          [vdso]\n";
        assert_eq!(vdso_range_in_maps(maps), Some((0x7ffd3000, 0x7ffd5000)));
        assert_eq!(vdso_range_in_maps("55-66 r-xp 0 0:0 0 /bin/true\n"), None);
        assert_eq!(
            vdso_base_of(std::process::id()),
            Some(own_mapping().unwrap().0)
        );
    }

    #[test]
    fn garbage_is_not_an_image() {
        assert!(VdsoImage::parse(b"not an elf").is_err());
    }
}
