//! Exact counting's links: uprobes on entry points into the vDSO and hardware
//! breakpoints on its functions, per process or thread, and the coverage map
//! that keeps the sampler from counting their calls twice.

use std::path::Path;

use anyhow::{Context as _, Result, anyhow};
use aya::programs::{
    PerfEvent, UProbe,
    perf_event::{
        BreakpointConfig, PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy,
    },
    uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
};
use vdso_observer_common::{
    ExactCoverage, UprobeCookie, VDSO_BREAKPOINT_PROGRAM, VDSO_UPROBE_PROGRAM,
};

use super::{
    object::{explain_load_error, program, verifier_error},
    observer::Observer,
};

impl Observer {
    /// Loads the exact-counting programs (uprobe, breakpoint) once.
    fn load_exact(&mut self) -> Result<()> {
        if self.exact_loaded {
            return Ok(());
        }
        let uprobe: &mut UProbe = program(&mut self.ebpf, VDSO_UPROBE_PROGRAM)?;
        uprobe
            .load()
            .map_err(|err| explain_load_error(verifier_error(err)))
            .with_context(|| format!("loading program {VDSO_UPROBE_PROGRAM}"))?;
        let breakpoint: &mut PerfEvent = program(&mut self.ebpf, VDSO_BREAKPOINT_PROGRAM)?;
        breakpoint
            .load()
            .map_err(|err| explain_load_error(verifier_error(err)))
            .with_context(|| format!("loading program {VDSO_BREAKPOINT_PROGRAM}"))?;
        self.exact_loaded = true;
        Ok(())
    }

    /// A uprobe at a file offset of `target`, for one process. The offset is
    /// found by the caller's own bounded ELF read (aya, given a symbol, reads
    /// the whole file; a stripped binary has no symbol to name anyway).
    pub fn attach_uprobe_at_offset(
        &mut self,
        target: &Path,
        offset: u64,
        pid: u32,
        cookie: UprobeCookie,
    ) -> Result<UProbeLinkId> {
        let what = || {
            format!(
                "uprobe at offset {offset:#x} of {} for pid {pid}",
                target.display()
            )
        };
        self.load_exact()?;
        let uprobe: &mut UProbe = program(&mut self.ebpf, VDSO_UPROBE_PROGRAM)?;
        let pid = std::num::NonZeroU32::new(pid).ok_or_else(|| anyhow!("pid 0"))?;
        uprobe
            .attach(
                UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(offset),
                    cookie: Some(cookie.encode()),
                },
                target,
                UProbeScope::OneProcess(pid),
            )
            .with_context(what)
    }

    pub fn detach_uprobe(&mut self, link: UProbeLinkId) -> Result<()> {
        let uprobe: &mut UProbe = program(&mut self.ebpf, VDSO_UPROBE_PROGRAM)?;
        uprobe.detach(link).context("detaching a uprobe")
    }

    /// A hardware execute breakpoint at `address` in thread `tid` only.
    pub fn attach_breakpoint(&mut self, tid: u32, address: u64) -> Result<PerfEventLinkId> {
        self.load_exact()?;
        let breakpoint: &mut PerfEvent = program(&mut self.ebpf, VDSO_BREAKPOINT_PROGRAM)?;
        breakpoint
            .attach(
                PerfEventConfig::Breakpoint(BreakpointConfig::Instruction { address }),
                PerfEventScope::OneProcess {
                    pid: tid,
                    cpu: None,
                },
                SamplePolicy::Period(1),
                false,
            )
            .with_context(|| format!("hardware breakpoint at {address:#x} in thread {tid}"))
    }

    pub fn detach_breakpoint(&mut self, link: PerfEventLinkId) -> Result<()> {
        let breakpoint: &mut PerfEvent = program(&mut self.ebpf, VDSO_BREAKPOINT_PROGRAM)?;
        breakpoint.detach(link).context("detaching a breakpoint")
    }

    /// Tells the sampler which calls exact counting covers in a thread (`key`
    /// a tid) or a whole process (`COVERAGE_PROCESS | tgid`), so they are not
    /// also sampled.
    pub fn set_coverage(&mut self, key: u32, coverage: ExactCoverage) -> Result<()> {
        self.maps
            .exact_coverage
            .insert(key, coverage, 0)
            .with_context(|| format!("marking {key:#x} as counted exactly"))
    }

    pub fn clear_coverage(&mut self, key: u32) {
        let _ = self.maps.exact_coverage.remove(&key);
    }
}
