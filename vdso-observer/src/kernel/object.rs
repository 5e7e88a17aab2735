//! The eBPF object: loaded once with the running kernel's offsets, the vDSO
//! images' function tables and the map sizes, and its maps taken out as typed
//! handles, so nothing looks a map up by name again.

use std::path::PathBuf;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf, Stack},
    programs::{ProgramError, RawTracePoint, raw_trace_point::RawTracePointLinkId},
};
use vdso_observer_common::{
    CGROUP_PATHS_MAP, COARSE_CODE_MAP, CallKey, CgroupPath, DRAIN_TRIGGER_MAP, DRAIN_WAKEUP_MAP,
    EMPTY_SYS_ENTER_PROGRAM, EXACT_COVERAGE_MAP, ExactCoverage, FREE_TIME_CALL_SLOTS_MAP,
    OBSERVER_STATS_MAP, OFFSET_SAMPLED_TGID_MAP, PROCESS_EXIT_BYTES_PER_ENTRY, PROCESS_EXITS_MAP,
    PROCESSES_MAP, PROGRAM_CONFIG_GLOBAL, ProcessInfo, ProcessKey, ProgramConfig,
    SAMPLE_OFFSETS_MAP, SHARED_CODE_MAP, SLOT_GENERATION_MAP, SYSCALL_ENTRIES, SlotRun,
    TIME_CALL_COUNTS_MAP, TIME_CALLS_MAP, VDSO_CALLS_MAP, VDSO_FUNCTIONS_GLOBAL,
    VDSO32_FUNCTIONS_GLOBAL, VdsoFunctionTable, VdsoKey,
};

use super::{
    btf::{KernelBtf, Kind},
    btf_offsets, free_slots,
    privileges::{
        KERNEL_FLOOR, check_kernel_floor, check_pid_namespace, check_privileges,
        raise_memlock_limit,
    },
};
use crate::host::{procfs::uname, vdso_image::VdsoImage};

/// The eBPF object built by build.rs (aya-build).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vdso-observer"));

/// The raw tracepoint every time syscall passes.
pub const SYS_ENTER_TRACEPOINT: &str = "sys_enter";

/// Default sampling rate per CPU: about ±10% on a process spending 5% of a CPU
/// in the vDSO over 3 s, for well under 1% of a CPU.
pub const DEFAULT_SAMPLE_HZ: u64 = 499;

/// Where the time functions lie in each vDSO image (empty: that image is
/// unknown, and its samples count as no time call).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VdsoTables {
    pub x86_64: VdsoFunctionTable,
    pub i386: VdsoFunctionTable,
}

impl VdsoTables {
    /// The tables of the images this boot maps (None: unknown).
    pub fn of(x86_64: Option<&VdsoImage>, i386: Option<&VdsoImage>) -> VdsoTables {
        VdsoTables {
            x86_64: x86_64.map_or(VdsoFunctionTable::EMPTY, VdsoImage::table),
            i386: i386.map_or(VdsoFunctionTable::EMPTY, VdsoImage::table),
        }
    }
}

/// What one load takes: made from the settings by the session (defaults
/// live in `settings::defaults`, nowhere else).
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub btf_path: PathBuf,
    /// Capacity of the per-(process, call, clock, origin) counter map.
    pub time_call_entries: u32,
    /// Capacity of the process-name map.
    pub process_entries: u32,
    /// Capacity of the vDSO call map.
    pub vdso_call_entries: u32,
    /// cpu-clock samples a second on each CPU for the vDSO estimate; 0 turns it off.
    pub sample_hz: u64,
    /// Where time syscalls are counted.
    pub attach: crate::model::AttachMode,
    /// Have the kernel measure each program's runs and run time (costs every
    /// run two clock reads).
    pub bpf_stats: bool,
}

/// The object's maps, taken out of it once after load.
pub struct Maps {
    pub time_calls: HashMap<MapData, CallKey, u32>,
    pub time_call_counts: PerCpuArray<MapData, u64>,
    pub free_time_call_slots: Stack<MapData, SlotRun>,
    pub slot_generation: Array<MapData, u32>,
    pub processes: HashMap<MapData, ProcessKey, ProcessInfo>,
    pub vdso_calls: PerCpuHashMap<MapData, VdsoKey, u64>,
    pub exact_coverage: HashMap<MapData, u32, ExactCoverage>,
    pub cgroup_paths: HashMap<MapData, u64, CgroupPath>,
    pub observer_stats: PerCpuArray<MapData, u64>,
    pub coarse_code: Array<MapData, u64>,
    pub shared_code: Array<MapData, u64>,
    pub sample_offsets: Array<MapData, u32>,
    pub offset_sampled_tgid: Array<MapData, u32>,
    pub drain_trigger: Array<MapData, u64>,
    /// Taken by the session, which sleeps on it (None once taken).
    pub drain_wakeup: Option<RingBuf<MapData>>,
    /// Taken by the observer, which reads it at each snapshot (None once taken).
    pub process_exits: Option<RingBuf<MapData>>,
}

impl Maps {
    fn take(ebpf: &mut Ebpf) -> Result<Maps> {
        fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
        where
            T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
        {
            let map = ebpf
                .take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
            T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
        }
        Ok(Maps {
            time_calls: take(ebpf, TIME_CALLS_MAP)?,
            time_call_counts: take(ebpf, TIME_CALL_COUNTS_MAP)?,
            free_time_call_slots: take(ebpf, FREE_TIME_CALL_SLOTS_MAP)?,
            slot_generation: take(ebpf, SLOT_GENERATION_MAP)?,
            processes: take(ebpf, PROCESSES_MAP)?,
            vdso_calls: take(ebpf, VDSO_CALLS_MAP)?,
            exact_coverage: take(ebpf, EXACT_COVERAGE_MAP)?,
            cgroup_paths: take(ebpf, CGROUP_PATHS_MAP)?,
            observer_stats: take(ebpf, OBSERVER_STATS_MAP)?,
            coarse_code: take(ebpf, COARSE_CODE_MAP)?,
            shared_code: take(ebpf, SHARED_CODE_MAP)?,
            sample_offsets: take(ebpf, SAMPLE_OFFSETS_MAP)?,
            offset_sampled_tgid: take(ebpf, OFFSET_SAMPLED_TGID_MAP)?,
            drain_trigger: take(ebpf, DRAIN_TRIGGER_MAP)?,
            drain_wakeup: Some(take(ebpf, DRAIN_WAKEUP_MAP)?),
            process_exits: Some(take(ebpf, PROCESS_EXITS_MAP)?),
        })
    }

    /// Hands the programs every time-call counter slot, before anything runs.
    fn fill_free_slots(&mut self, slots: u32) -> Result<()> {
        let mut all: Vec<u32> = (0..slots).collect();
        free_slots::give_back(&mut self.free_time_call_slots, &mut all).map(drop)
    }
}

/// Everything before attaching, shared by the observer and the bench floor: a
/// kernel new enough, the privileges, the running kernel's offsets handed to
/// the programs with the vDSO table and map sizes, and the load; then the
/// maps taken out, the free slots filled. The kernel's BTF is read once
/// here and dropped: what attaching needs of it comes back as [`AttachTargets`].
pub fn load(options: &LoadOptions, tables: &VdsoTables) -> Result<(Ebpf, Maps, AttachTargets)> {
    check_kernel_floor(
        &uname().release,
        KERNEL_FLOOR,
        "vdso-observer (bpf_get_current_task_btf)",
    )?;
    check_privileges()?;
    check_pid_namespace()?;
    raise_memlock_limit();
    // EbpfLoader::new parses the kernel's whole BTF into aya's types (18 MB
    // here) for CO-RE relocations, which Rust eBPF does not emit: made first,
    // while little else is live, and that parse dropped at once.
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    let btf = btf_offsets::read_btf(&options.btf_path)?;
    let offsets = btf_offsets::kernel_offsets_of(&btf)
        .with_context(|| format!("reading offsets from {}", options.btf_path.display()))?;
    let targets = AttachTargets::of(&btf)
        .with_context(|| format!("reading attach targets from {}", options.btf_path.display()))?;
    drop(btf);
    log::debug!(
        "kernel offsets from {}: {offsets:?}",
        options.btf_path.display()
    );
    let config = ProgramConfig {
        offsets,
        observer_tgid: std::process::id(),
        vdso_len: vdso_len_for_programs(),
        ..ProgramConfig::ZERO
    };
    // The programs log only what this process would print (off below debug).
    let log_level = log::max_level() as u8;
    let mut ebpf = loader
        .override_global(PROGRAM_CONFIG_GLOBAL, &config, true)
        .override_global(VDSO_FUNCTIONS_GLOBAL, &tables.x86_64, true)
        .override_global(VDSO32_FUNCTIONS_GLOBAL, &tables.i386, true)
        .override_global(aya_log::LEVEL, &log_level, false)
        .map_max_entries(TIME_CALLS_MAP, options.time_call_entries)
        .map_max_entries(TIME_CALL_COUNTS_MAP, options.time_call_entries)
        .map_max_entries(FREE_TIME_CALL_SLOTS_MAP, options.time_call_entries)
        .map_max_entries(PROCESSES_MAP, options.process_entries)
        .map_max_entries(VDSO_CALLS_MAP, options.vdso_call_entries)
        .map_max_entries(PROCESS_EXITS_MAP, exit_ring_bytes(options.process_entries))
        .load(EBPF_OBJECT)
        .map_err(|err| explain_load_error(anyhow!(err)))
        .context("loading the eBPF object (maps and programs)")?;
    let mut maps = Maps::take(&mut ebpf)?;
    maps.fill_free_slots(options.time_call_entries)?;
    Ok((ebpf, maps, targets))
}

/// Sets the exit ring's size in bytes (rounded up to a power of two of
/// pages): a ring of one page fills at once, and what exits then goes the
/// drain's way (marked, deleted from user space) — for tests of that way.
pub const EXIT_RING_BYTES_ENV: &str = "VDSO_OBSERVER_EXIT_RING_BYTES";

/// The exit ring's size: a power of two of pages (the kernel's rule), room
/// for a record per two entries of the process map, so the drain, which
/// comes before the maps are half full, finds it half empty.
fn exit_ring_bytes(process_entries: u32) -> u32 {
    // SAFETY: sysconf only reads.
    let page = u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .unwrap_or(4096)
        .max(4096);
    let asked = std::env::var(EXIT_RING_BYTES_ENV)
        .ok()
        .and_then(|bytes| bytes.trim().parse::<u32>().ok());
    ring_bytes(asked, process_entries, page)
}

fn ring_bytes(asked: Option<u32>, process_entries: u32, page: u32) -> u32 {
    asked
        .unwrap_or_else(|| process_entries.saturating_mul(PROCESS_EXIT_BYTES_PER_ENTRY))
        .max(page)
        .checked_next_power_of_two()
        .unwrap_or(1 << 31)
}

/// The kernel types tp_btf and fentry programs attach to, by id, in a table
/// aya takes: the typed sys_enter tracepoint and each time syscall's function.
pub struct AttachTargets(pub aya::Btf);

impl AttachTargets {
    fn of(btf: &KernelBtf) -> Result<AttachTargets> {
        let typedef = format!("btf_trace_{SYS_ENTER_TRACEPOINT}");
        let keep: Vec<(Kind, &str)> = std::iter::once((Kind::Typedef, typedef.as_str()))
            .chain(SYSCALL_ENTRIES.iter().map(|e| (Kind::Func, e.function)))
            .collect();
        Ok(AttachTargets(btf.names_only(&keep)?))
    }
}

/// arm64's mm does not point at its vDSO image: every 64-bit task maps the
/// one this process maps, so its length is handed over (0: x86 reads each
/// task's own, or no vDSO here, and the programs then see none anywhere).
fn vdso_len_for_programs() -> u32 {
    if cfg!(target_arch = "x86_64") {
        return 0;
    }
    match VdsoImage::current() {
        Ok(image) => image.len as u32,
        Err(err) => {
            log::warn!("{err:#}: every kernel entry is taken for a direct one");
            0
        }
    }
}

/// Attaches only the empty `sys_enter` program (the benchmark's floor) and
/// returns what keeps it attached.
pub fn attach_floor(options: &LoadOptions) -> Result<Ebpf> {
    let (mut ebpf, _maps, _targets) = load(options, &VdsoTables::default())?;
    attach_raw_tracepoint(&mut ebpf, EMPTY_SYS_ENTER_PROGRAM, SYS_ENTER_TRACEPOINT)?;
    Ok(ebpf)
}

/// A program of the object by name and type.
pub fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

/// Loads a raw tracepoint program (once: a measurement attaches one many
/// times) and attaches it: the link, to detach it by.
pub fn attach_raw_tracepoint(
    ebpf: &mut Ebpf,
    program_name: &str,
    tracepoint: &str,
) -> Result<RawTracePointLinkId> {
    let prog: &mut RawTracePoint = program(ebpf, program_name)?;
    if prog.fd().is_err() {
        prog.load()
            .map_err(|err| explain_load_error(verifier_error(err)))
            .with_context(|| format!("loading program {program_name}"))?;
    }
    prog.attach(tracepoint)
        .with_context(|| format!("attaching {program_name} to raw tracepoint {tracepoint}"))
}

/// Keeps the verifier log, which is what a developer needs when a load fails.
pub fn verifier_error(err: ProgramError) -> anyhow::Error {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => anyhow!("BPF_PROG_LOAD failed: {io_error}\nverifier log:\n{verifier_log}"),
        other => anyhow!(other),
    }
}

pub fn explain_load_error(err: anyhow::Error) -> anyhow::Error {
    let text = format!("{err:#}");
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        err.context(
            "the kernel refused to load BPF: run as root, or with CAP_BPF and CAP_PERFMON; on \
             kernels before 5.11 also raise the locked-memory limit (ulimit -l unlimited, or \
             LimitMEMLOCK=infinity in a systemd unit)",
        )
    } else {
        err
    }
}

#[cfg(test)]
mod tests {
    use super::ring_bytes;

    #[test]
    fn the_exit_ring_is_a_power_of_two_of_pages() {
        // The default map: 16 384 entries, 1 MiB (8 192 records of 128 bytes).
        assert_eq!(ring_bytes(None, 16_384, 4096), 1 << 20);
        assert_eq!(ring_bytes(None, 1_000, 4096), 1 << 16);
        assert_eq!(ring_bytes(None, 1, 4096), 4096);
        assert_eq!(ring_bytes(None, 1, 65_536), 65_536);
        assert_eq!(ring_bytes(Some(5_000), 16_384, 4096), 8192);
        assert_eq!(ring_bytes(Some(0), 16_384, 4096), 4096);
        assert_eq!(ring_bytes(None, u32::MAX, 4096), 1 << 31);
    }
}
