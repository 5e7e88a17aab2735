//! Where a process image ends, marked as it happens: its last thread's exit,
//! or an exec (the pid lives on as a new image, a new key). User space retires
//! an image by this mark, not by guessing from /proc, so an exec loop cannot
//! keep dead keys alive and a failed /proc read never ends a live process.
//! Only images that counted something have an entry to mark.
//!
//! Most exits do more: a process whose every key the exit program knows (its
//! entry keeps the first few with their slots) is taken out of the maps here,
//! and its entry handed to user space through a ring, which is read without
//! a syscall. Under 5 000 exits a second, deleting each dead key from user
//! space (a syscall, a copy and the kernel's copy checks per key) was most of
//! the observer's CPU.

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP, macros::raw_tracepoint, programs::RawTracePointContext,
};
use vdso_observer_common::{HANDED_KEYS, ObserverStat, ProcessEnd, ProcessExit, ProcessKey};

use crate::{
    kernel::{current_task, process_key, tgid_of, thread_group_dead},
    maps::{PROCESS_EXITS, PROCESSES, TIME_CALLS},
    stats::{add_stat, bump},
};

/// `sched:sched_process_exit` (current is the exiting thread): marks the
/// image exited when no thread of it is left.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn process_exited(_ctx: RawTracePointContext) -> i32 {
    let Some(task) = current_task() else {
        return 0;
    };
    if !thread_group_dead(task) {
        return 0;
    }
    let (process, _) = process_key(task, tgid_of(task));
    if !hand_over(&process) {
        mark(&process, ProcessEnd::Exited);
    }
    0
}

/// Deletes the exited process's keys and entry and hands the entry (its keys'
/// slots, still counted in) to user space. False when it is left in the maps
/// for user space to drain: no entry, vDSO keys (per-CPU values a program
/// cannot read out), more keys than its entry holds, or a full ring.
#[inline(always)]
fn hand_over(process: &ProcessKey) -> bool {
    let Some(info) = PROCESSES.get_ptr_mut(process) else {
        return false;
    };
    // SAFETY: a valid entry of the map; no thread of the process is left to
    // change it.
    let info = unsafe { &mut *info };
    let taken = info.key_slots_taken;
    if info.vdso_keys != 0 || taken != info.time_keys || taken as usize > HANDED_KEYS {
        return false;
    }
    let Some(mut record) = PROCESS_EXITS.reserve::<ProcessExit>(0) else {
        bump(ObserverStat::ExitRingFull);
        return false;
    };
    for place in 0..HANDED_KEYS {
        if place < taken as usize
            && let Some(key_slot) = info.key_slots.get_mut(place)
            && TIME_CALLS.remove(key_slot.key(*process)).is_err()
        {
            // Still in the map: user space drains it from there.
            key_slot.kept = 1;
        }
    }
    let exit = record.write(ProcessExit {
        process: *process,
        info: *info,
    });
    // Ended in the record only: a snapshot never reads the map's entry as
    // ended while the keys it reads next may still be there.
    exit.info.ended = ProcessEnd::Exited as u32;
    if PROCESSES.remove(process).is_err() {
        // Left in the map: ended there too, so user space deletes it.
        info.ended = ProcessEnd::Exited as u32;
    }
    // User space reads the ring at its drains: no wake-up per exit.
    record.submit(BPF_RB_NO_WAKEUP.into());
    add_stat(ObserverStat::ExitsHanded);
    true
}

/// `sched:sched_process_exec` (current has exec'd: its exec id has grown by
/// one): marks the image before the exec ended.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn process_execed(_ctx: RawTracePointContext) -> i32 {
    let Some(task) = current_task() else {
        return 0;
    };
    let (mut process, _) = process_key(task, tgid_of(task));
    process.exec_id = process.exec_id.wrapping_sub(1);
    mark(&process, ProcessEnd::Execed);
    0
}

#[inline(always)]
fn mark(process: &vdso_observer_common::ProcessKey, end: ProcessEnd) {
    if let Some(info) = PROCESSES.get_ptr_mut(process) {
        // SAFETY: a valid entry of the map; a plain store of a u32.
        unsafe { (*info).ended = end as u32 };
    }
}
