//! Loading the eBPF object, handing it the kernel offsets, attaching its programs,
//! and reading its maps. Every failure names what failed and what to do.

use std::{collections::HashMap, path::PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap},
    programs::{ProgramError, RawTracePoint},
};
use log::{info, warn};
use serde::Serialize;
use vdso_observer_common::{
    CallKey, DEFAULT_PROCESS_ENTRIES, DEFAULT_TIME_CALL_ENTRIES, OBSERVER_STATS_MAP, ObserverStat,
    PROCESSES_MAP, PROGRAM_CONFIG_GLOBAL, ProcessInfo, ProcessKey, ProgramConfig,
    SYS_ENTER_PROGRAM, TIME_CALLS_MAP, VSYSCALL_PROGRAM,
};

use crate::btf_offsets;

/// The eBPF object built by build.rs (aya-build).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vdso-observer"));

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub btf_path: PathBuf,
    /// Capacity of the per-(process, call, clock, origin) counter map.
    pub time_call_entries: u32,
    /// Capacity of the process-name map.
    pub process_entries: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            btf_path: PathBuf::from(btf_offsets::VMLINUX_BTF),
            time_call_entries: DEFAULT_TIME_CALL_ENTRIES,
            process_entries: DEFAULT_PROCESS_ENTRIES,
        }
    }
}

/// One attach point and whether it is live.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeStatus {
    pub program: &'static str,
    pub attach_point: &'static str,
    pub attached: bool,
    /// Why it is not attached and what is lost, when it is not.
    pub note: Option<String>,
}

/// Counters the programs keep about themselves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ObserverStats {
    /// Calls not counted because the counter map was full.
    pub time_calls_map_full: u64,
    /// Processes left unnamed because the name map was full.
    pub processes_map_full: u64,
    /// Calls not counted because a memory read failed.
    pub read_failed: u64,
}

/// Everything read from the maps at one instant.
#[derive(Debug, Clone, Default)]
pub struct MapSnapshot {
    /// Cumulative count per key since the key was created.
    pub calls: HashMap<CallKey, u64>,
    pub names: HashMap<ProcessKey, ProcessInfo>,
    pub stats: ObserverStats,
}

/// The loaded and attached programs. Dropping it detaches them.
pub struct Observer {
    ebpf: Ebpf,
    pub probes: Vec<ProbeStatus>,
    pub options: LoadOptions,
}

impl Observer {
    pub fn start(options: LoadOptions) -> Result<Observer> {
        check_privileges()?;
        raise_memlock_limit();
        let offsets = btf_offsets::kernel_offsets_from_file(&options.btf_path)?;
        log::debug!(
            "kernel offsets from {}: {offsets:?}",
            options.btf_path.display()
        );
        let config = ProgramConfig {
            offsets,
            observer_tgid: std::process::id(),
        };
        let mut ebpf = EbpfLoader::new()
            .override_global(PROGRAM_CONFIG_GLOBAL, &config, true)
            .map_max_entries(TIME_CALLS_MAP, options.time_call_entries)
            .map_max_entries(PROCESSES_MAP, options.process_entries)
            .load(EBPF_OBJECT)
            .map_err(|err| explain_load_error(anyhow!(err)))
            .context("loading the eBPF object (maps and programs)")?;

        let mut probes = Vec::new();
        attach(&mut ebpf, SYS_ENTER_PROGRAM, "sys_enter").with_context(|| {
            "attaching raw tracepoint sys_enter, which counts every time call that enters \
             the kernel: without it there is nothing to observe"
        })?;
        probes.push(ProbeStatus {
            program: SYS_ENTER_PROGRAM,
            attach_point: "raw_tracepoint:sys_enter",
            attached: true,
            note: None,
        });

        let vsyscall = match attach(&mut ebpf, VSYSCALL_PROGRAM, "emulate_vsyscall") {
            Ok(()) => ProbeStatus {
                program: VSYSCALL_PROGRAM,
                attach_point: "raw_tracepoint:emulate_vsyscall",
                attached: true,
                note: None,
            },
            Err(err) => {
                let note = format!(
                    "legacy vsyscall calls are not counted: {err:#} (a kernel without \
                     CONFIG_X86_VSYSCALL_EMULATION has no such tracepoint, and no legacy \
                     vsyscall page for programs to call)"
                );
                warn!("{note}");
                ProbeStatus {
                    program: VSYSCALL_PROGRAM,
                    attach_point: "raw_tracepoint:emulate_vsyscall",
                    attached: false,
                    note: Some(note),
                }
            }
        };
        probes.push(vsyscall);
        info!(
            "attached {} of {} probes",
            probes.iter().filter(|p| p.attached).count(),
            probes.len()
        );
        Ok(Observer {
            ebpf,
            probes,
            options,
        })
    }

    /// Reads every counter, name and self-statistic.
    pub fn snapshot(&self) -> Result<MapSnapshot> {
        let calls: PerCpuHashMap<&MapData, CallKey, u64> = self.map(TIME_CALLS_MAP)?;
        let names: BpfHashMap<&MapData, ProcessKey, ProcessInfo> = self.map(PROCESSES_MAP)?;
        let stats: PerCpuArray<&MapData, u64> = self.map(OBSERVER_STATS_MAP)?;

        let mut snapshot = MapSnapshot::default();
        for entry in calls.iter() {
            // A key deleted between listing and lookup is simply gone.
            let Ok((key, per_cpu)) = entry else { continue };
            snapshot.calls.insert(key, per_cpu.iter().sum());
        }
        for entry in names.iter() {
            let Ok((key, info)) = entry else { continue };
            snapshot.names.insert(key, info);
        }
        let stat = |which: ObserverStat| -> Result<u64> {
            Ok(stats
                .get(&(which as u32), 0)
                .with_context(|| format!("reading {OBSERVER_STATS_MAP}[{which:?}]"))?
                .iter()
                .sum())
        };
        snapshot.stats = ObserverStats {
            time_calls_map_full: stat(ObserverStat::TimeCallsMapFull)?,
            processes_map_full: stat(ObserverStat::ProcessesMapFull)?,
            read_failed: stat(ObserverStat::ReadFailed)?,
        };
        Ok(snapshot)
    }

    /// Deletes the counters and names of processes that are gone, so the maps do
    /// not fill up with the dead. Their last counts must have been read first.
    pub fn forget(&mut self, gone: &[ProcessKey], keys: &[CallKey]) -> Result<()> {
        {
            let mut calls: PerCpuHashMap<&mut MapData, CallKey, u64> =
                self.map_mut(TIME_CALLS_MAP)?;
            for key in keys {
                // Already gone is fine: the goal is that it is not there.
                let _ = calls.remove(key);
            }
        }
        let mut names: BpfHashMap<&mut MapData, ProcessKey, ProcessInfo> =
            self.map_mut(PROCESSES_MAP)?;
        for process in gone {
            let _ = names.remove(process);
        }
        Ok(())
    }

    fn map<'a, T>(&'a self, name: &str) -> Result<T>
    where
        T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
        T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
    }

    fn map_mut<'a, T>(&'a mut self, name: &str) -> Result<T>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
        T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
    }
}

fn attach(ebpf: &mut Ebpf, program: &str, tracepoint: &str) -> Result<()> {
    let prog: &mut RawTracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow!("program {program} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {program} is not a raw tracepoint"))?;
    prog.load()
        .map_err(|err| explain_load_error(anyhow!(verifier_error(err))))
        .with_context(|| format!("loading program {program}"))?;
    prog.attach(tracepoint)
        .with_context(|| format!("attaching {program} to raw tracepoint {tracepoint}"))?;
    Ok(())
}

/// Keeps the verifier log, which is what a developer needs when a load fails.
fn verifier_error(err: ProgramError) -> anyhow::Error {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => anyhow!("BPF_PROG_LOAD failed: {io_error}\nverifier log:\n{verifier_log}"),
        other => anyhow!(other),
    }
}

fn explain_load_error(err: anyhow::Error) -> anyhow::Error {
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

/// Capability bits (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Fails early, with what to do, when the process cannot load tracing BPF.
fn check_privileges() -> Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let effective = effective_capabilities(&status)
        .ok_or_else(|| anyhow!("no CapEff line in /proc/self/status"))?;
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    bail!(
        "vdso-observer needs root or {} to load its eBPF programs: run it with sudo, or grant \
         them (setcap cap_bpf,cap_perfmon+ep, or AmbientCapabilities= in a systemd unit)",
        missing.join(" and ")
    )
}

/// The `CapEff:` mask of a /proc/PID/status text.
pub fn effective_capabilities(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_mask_is_parsed() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000000000\n";
        let caps = effective_capabilities(status).unwrap();
        assert_ne!(caps & (1 << CAP_BPF), 0);
        assert_ne!(caps & (1 << CAP_PERFMON), 0);
        assert_eq!(caps & (1 << CAP_SYS_ADMIN), 0);
        assert_eq!(effective_capabilities("Name:\tx\n"), None);
    }
}
