//! The programs' counts of themselves (`OBSERVER_STATS`): keys made, maps
//! found full, reads that failed. The first event of a kind on a CPU is also
//! said once through aya-log.

use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use aya_log_ebpf::debug;
use vdso_observer_common::ObserverStat;

use crate::maps::OBSERVER_STATS;

/// Counts a self-statistic that is not an event to log.
#[inline(always)]
pub fn add_stat(stat: ObserverStat) {
    if let Some(value) = OBSERVER_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: this CPU's entry of a per-CPU array; a lost increment under
        // preemption (fentry) costs a statistic, never a count.
        unsafe { *value += 1 };
    }
}

/// Counts a self-statistic; the first time on this CPU, says so in the log
/// (aya-log, forwarded by user space at debug level).
#[inline(always)]
pub fn bump(stat: ObserverStat) {
    bump_by(stat, 1);
}

/// Adds `n` to a self-statistic, said like [`bump`].
#[inline(always)]
pub fn bump_by(stat: ObserverStat, n: u64) {
    if first_on_this_cpu(stat, n) {
        say_first(stat);
    }
}

/// Counts a vDSO sample no function claims; the first on this CPU is said
/// with its offset in the image, so that whoever sees the count can find the
/// code (`objdump` of the image) without a debugger.
#[inline(always)]
pub fn bump_unattributed(offset: u64, i386: bool) {
    if first_on_this_cpu(ObserverStat::VdsoSampleUnattributed, 1) {
        say_unattributed(offset, i386);
    }
}

/// Adds `n` to `stat`; whether it was this CPU's first.
#[inline(always)]
fn first_on_this_cpu(stat: ObserverStat, n: u64) -> bool {
    let Some(value) = OBSERVER_STATS.get_ptr_mut(stat as u32) else {
        return false;
    };
    // SAFETY: as in add_stat.
    let first = unsafe { *value } == 0;
    // SAFETY: as in add_stat.
    unsafe { *value += n };
    first
}

#[inline(never)]
fn say_unattributed(offset: u64, i386: bool) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let image = if i386 { 32 } else { 64 };
    debug!(
        &(),
        "a vDSO sample of pid {} at offset {:x} of the {}-bit image lies in no exported function",
        tgid,
        offset,
        image
    );
}

/// The one line of a rare event, out of line so the counting path stays short.
#[inline(never)]
fn say_first(stat: ObserverStat) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    match stat {
        ObserverStat::TimeCallsMapFull => debug!(
            &(),
            "time-call counter map full: a new key of pid {} was not counted", tgid
        ),
        ObserverStat::ProcessesMapFull => {
            debug!(&(), "process-name map full: pid {} stays unnamed", tgid)
        }
        ObserverStat::ReadFailed => {
            debug!(
                &(),
                "a memory read failed: a call of pid {} was not counted", tgid
            )
        }
        ObserverStat::VdsoCallsMapFull => debug!(
            &(),
            "vDSO-call map full: a new key of pid {} was not counted", tgid
        ),
        ObserverStat::ProcessKeyCap => debug!(
            &(),
            "pid {} reached its key cap: its new clocks are counted in its overflow key", tgid
        ),
        ObserverStat::SlotsStranded => debug!(
            &(),
            "the free-slot stack refused slots back (pid {}): they stay out of use", tgid
        ),
        ObserverStat::ExitRingFull => debug!(
            &(),
            "the exit ring was full at the exit of pid {}: left for the drain", tgid
        ),
        // Counted, not events.
        ObserverStat::ExitsHanded
        | ObserverStat::TimeKeysCreated
        | ObserverStat::VdsoKeysCreated
        | ObserverStat::ProcessesCreated
        | ObserverStat::VdsoSampleUnattributed => {}
    }
}
