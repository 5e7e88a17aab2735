//! Where a process image ends, marked as it happens: its last thread's exit,
//! or an exec (the pid lives on as a new image, a new key). User space retires
//! an image by this mark, not by guessing from /proc, so an exec loop cannot
//! keep dead keys alive and a failed /proc read never ends a live process.
//! Only images that counted something have an entry to mark.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use vdso_observer_common::ProcessEnd;

use crate::{
    kernel::{current_task, process_key, tgid_of, thread_group_dead},
    maps::PROCESSES,
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
    mark(&process, ProcessEnd::Exited);
    0
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
