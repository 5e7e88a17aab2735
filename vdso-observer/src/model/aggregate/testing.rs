//! Snapshots and reports built from plain rows, for the front ends' tests.

use std::time::Duration;

use vdso_observer_common::{CallKey, Origin, ProcessInfo, ProcessKey, SyscallAbi, TimeCall};

use super::{Aggregator, AttachMode, ObserverHealthInput, ProcessLookup, Report, RunStats};
use crate::model::{
    ClocksourceState, MapSnapshot, SystemReport, VdsoCheck, VsyscallMode,
    clocksource_vdso_capability,
};

/// The machine of a front-end test, host db1: tsc (vDSO-capable) or hpet
/// (not), `available: tsc hpet`, vsyscall xonly; `measured` adds the
/// observer's own check.
pub fn system(capable: bool, measured: bool) -> SystemReport {
    let current = if capable { "tsc" } else { "hpet" };
    SystemReport {
        hostname: "db1".into(),
        kernel: "6.18.0".into(),
        clocksource: Some(ClocksourceState {
            current: current.into(),
            available: vec!["tsc".into(), "hpet".into()],
            vdso_capability: clocksource_vdso_capability(current).0,
            why: "".into(),
        }),
        vdso_check: measured.then_some(VdsoCheck {
            calls: 100,
            kernel_entries: if capable { 0 } else { 100 },
            random_pool_ready: Some(true),
        }),
        vdso_capable: Some(capable),
        vsyscall: VsyscallMode::Xonly,
        boot_settings: vec![],
        events: vec![],
        kernel_log_error: None,
    }
}

/// Every process running (or none), named as the kernel map said, uid 0 = root.
pub struct Fixed {
    pub running: bool,
}

impl ProcessLookup for Fixed {
    fn is_running(&self, _: &ProcessKey) -> bool {
        self.running
    }

    fn comm_and_uid(&self, _: &ProcessKey) -> Option<(Vec<u8>, Option<u32>)> {
        None
    }

    fn user_name(&self, uid: u32) -> String {
        if uid == 0 {
            "root".into()
        } else {
            uid.to_string()
        }
    }

    /// Cgroup id 7 is a podman container; the rest are outside containers.
    fn cgroup_path(&self, id: u64) -> Option<String> {
        (id == 7).then(|| format!("/libpod_parent/libpod-{}", "ab".repeat(32)))
    }
}

/// pid, comm, call, clock id, origin, cumulative count.
pub type Row<'a> = (u32, &'a [u8], TimeCall, i32, Origin, u64);

pub fn health() -> ObserverHealthInput {
    ObserverHealthInput {
        probes: vec![],
        time_call_capacity: 100,
        vdso_costs: Default::default(),
        run_stats: RunStats::AlreadyOn,
        path_costs: Default::default(),
        attach_mode: AttachMode::RawTracepoint,
    }
}

/// One process image per pid (exec 0, started at 1 s), named `comm`, uid 0.
pub fn snapshot(rows: &[Row]) -> MapSnapshot {
    let mut snapshot = MapSnapshot::default();
    for &(pid, comm, call, clock_id, origin, count) in rows {
        let process = ProcessKey {
            tgid: pid,
            exec_id: 0,
            start_boottime_ns: 1_000_000_000,
        };
        let key = CallKey {
            process,
            clock_id,
            call: call as u8,
            origin: origin as u8,
            abi: SyscallAbi::X86_64 as u8,
            _pad: 0,
        };
        snapshot.calls.insert(key, count);
        let mut name = [0u8; 16];
        name[..comm.len()].copy_from_slice(comm);
        snapshot.names.insert(process, ProcessInfo::new(name, 0, 0));
    }
    snapshot
}

/// The next window of `aggregator` over `rows`, every process running or not.
pub fn window(
    aggregator: &mut Aggregator,
    rows: &[Row],
    window: Duration,
    running: bool,
) -> Report {
    aggregator
        .window(&snapshot(rows), window, health(), &Fixed { running })
        .0
}
