//! The loaded and attached programs of one observer: started from the load
//! options and the vDSO images' function tables; dropping it detaches them.
//! Reading the maps is in `map_reads`, exact-counting links in `exact_links`.

use std::borrow::Cow;

use anyhow::Result;
use aya::Ebpf;
use vdso_observer_common::{
    CallKey, SYSCALL_ENTRIES, VDSO_BREAKPOINT_PROGRAM, VDSO_UPROBE_PROGRAM, VdsoFunctionTable,
};

use super::{
    attach::{
        KprobeJudge, attach_sampler_probe, attach_time_calls, attach_tracepoint_probes,
        enable_run_stats,
    },
    handed_exits::HandedExits,
    object::{self, LoadOptions, Maps, VdsoTables},
    slot_totals::SlotTotals,
};
use crate::model::{AttachMode, KeysCreated, ProbeStatus, ProgramRuns, RunStats};

pub struct Observer {
    pub(super) ebpf: Ebpf,
    pub(super) maps: Maps,
    /// The programs' rare events (aya-log), read at each window; None when the
    /// object has no log map.
    logs: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    probes: Vec<ProbeStatus>,
    options: LoadOptions,
    /// Time one cpu-clock sample stands for; None when sampling is off or failed.
    sample_period_ns: Option<u64>,
    pub(super) exact_loaded: bool,
    /// Keys and process entries this process deleted, per map: with what the
    /// programs created, how full the maps are.
    pub(super) deleted: KeysCreated,
    /// Each time-call key's slot as the last snapshot read it: what a drain
    /// that follows needs to give the slots back, without reading again.
    pub(super) slots_seen: std::cell::RefCell<crate::model::KeyMap<CallKey, u32>>,
    /// Where each slot's current key starts counting (slots are not zeroed).
    pub(super) slot_totals: std::cell::RefCell<SlotTotals>,
    /// Processes the exit program took out of the maps, until retired.
    pub(super) exits: std::cell::RefCell<HandedExits>,
    /// Slots the programs could not give back, as last said in the log.
    pub(super) stranded_said: std::cell::Cell<u64>,
    /// Where time syscalls are counted (what `auto` chose).
    attach_mode: AttachMode,
    /// Whether the kernel measures the programs' run time.
    run_stats: RunStats,
    /// Held while the observer runs: the kernel measures runs while it is open.
    _run_stats_fd: Option<std::os::fd::OwnedFd>,
}

impl Observer {
    /// Loads the object with the running kernel's offsets and the vDSO images'
    /// function tables (no 64-bit table: no sampler), and attaches what counts;
    /// `judge` decides between kprobes and the raw tracepoint under `auto`.
    pub fn start(
        options: LoadOptions,
        tables: &VdsoTables,
        judge: &mut dyn KprobeJudge,
    ) -> Result<Observer> {
        let (mut ebpf, mut maps, targets) = object::load(&options, tables)?;
        let exits = HandedExits::new(
            maps.process_exits
                .take()
                .ok_or_else(|| anyhow::anyhow!("the exit ring was taken twice"))?,
        );
        let logs = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logs) => Some(logs),
            Err(err) => {
                log::warn!("the programs' own log is not read: {err}");
                None
            }
        };
        // Lifetimes (and cgroups, the legacy page) first: see attach_tracepoint_probes.
        let tracepoints = attach_tracepoint_probes(&mut ebpf);
        let (attach_mode, time_calls) =
            attach_time_calls(&mut ebpf, options.attach, &targets, judge)?;
        drop(targets);
        let mut probes: Vec<ProbeStatus> = [time_calls].into_iter().chain(tracepoints).collect();
        let mut sample_period_ns = None;
        if options.sample_hz > 0 && tables.x86_64 != VdsoFunctionTable::EMPTY {
            let (sampler, period) = attach_sampler_probe(&mut ebpf, options.sample_hz);
            probes.push(sampler);
            sample_period_ns = period;
        }
        log::info!(
            "attached {} of {} probes",
            probes.iter().filter(|p| p.attached).count(),
            probes.len()
        );
        let (run_stats, run_stats_fd) = enable_run_stats(options.bpf_stats);
        if let RunStats::Unavailable(note) = &run_stats {
            log::info!("the programs' own run time is not measured: {note}");
        }
        Ok(Observer {
            attach_mode,
            run_stats,
            _run_stats_fd: run_stats_fd,
            ebpf,
            maps,
            logs,
            probes,
            options,
            sample_period_ns,
            exact_loaded: false,
            deleted: KeysCreated::default(),
            slots_seen: Default::default(),
            exits: exits.into(),
            slot_totals: Default::default(),
            stranded_said: Default::default(),
        })
    }

    /// Forwards what the programs logged since the last call to the log.
    pub fn flush_logs(&mut self) {
        if let Some(logs) = &mut self.logs {
            logs.flush();
        }
    }

    /// Every probe tried, attached or not, with why.
    pub fn probes(&self) -> &[ProbeStatus] {
        &self.probes
    }

    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    /// Time one cpu-clock sample stands for; None when sampling is off or failed.
    pub fn sample_period_ns(&self) -> Option<u64> {
        self.sample_period_ns
    }

    pub fn attach_mode(&self) -> AttachMode {
        self.attach_mode
    }

    pub fn run_stats(&self) -> &RunStats {
        &self.run_stats
    }

    /// Runs and run time of every attached program (and of the exact-counting
    /// ones once loaded), as the kernel measured them; empty when it does not.
    pub fn program_runs(&self) -> Vec<ProgramRuns> {
        if matches!(self.run_stats, RunStats::Unavailable(_) | RunStats::Off) {
            return Vec::new();
        }
        let mut names: Vec<Cow<'static, str>> = self
            .probes
            .iter()
            .filter(|p| p.attached)
            .map(|p| p.program.clone())
            .collect();
        // fentry and kprobe modes: one program per kernel function (those not
        // loaded have no info and are left out below).
        match self.attach_mode {
            AttachMode::Fentry => {
                names.extend(SYSCALL_ENTRIES.iter().map(|e| e.fentry_program.into()))
            }
            AttachMode::Kprobe => {
                names.extend(SYSCALL_ENTRIES.iter().map(|e| e.kprobe_program.into()))
            }
            _ => {}
        }
        if self.exact_loaded {
            names.extend([VDSO_BREAKPOINT_PROGRAM.into(), VDSO_UPROBE_PROGRAM.into()]);
        }
        names
            .into_iter()
            .filter_map(|name| {
                let info = self.ebpf.program(&name)?.info().ok()?;
                Some(ProgramRuns {
                    program: name,
                    runs: info.run_count(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                })
            })
            .collect()
    }
}
