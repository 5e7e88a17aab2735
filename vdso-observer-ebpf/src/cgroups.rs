//! Cgroup paths as cgroups are made: a container's cgroup may be gone before
//! user space reads the window (a job that lives 50 ms). Only the unified
//! (v2) hierarchy's: the id a process records is a v2 id, and kernfs ids are
//! per hierarchy, so a v1 cgroup's id can equal a v2 one's on a hybrid host.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel_str_bytes, macros::raw_tracepoint,
    programs::RawTracePointContext,
};

use crate::{
    config::config,
    kernel::read_kernel,
    maps::{CGROUP_PATH_SCRATCH, CGROUP_PATHS},
};

/// `cgroup:cgroup_mkdir`: args are (struct cgroup *cgrp, const char *path).
#[raw_tracepoint(tracepoint = "cgroup_mkdir")]
pub fn cgroup_created(ctx: RawTracePointContext) -> i32 {
    let cgroup: *const u8 = ctx.arg(0);
    let path: *const u8 = ctx.arg(1);
    let Ok(root) = read_kernel::<*const u8>(cgroup, config!(offsets.cgroup_root)) else {
        return 0;
    };
    // The unified hierarchy is hierarchy 0; any other is a v1 hierarchy.
    if read_kernel::<i32>(root, config!(offsets.cgroup_root_hierarchy_id)) != Ok(0) {
        return 0;
    }
    let Ok(node) = read_kernel::<*const u8>(cgroup, config!(offsets.cgroup_kn)) else {
        return 0;
    };
    let Ok(id) = read_kernel::<u64>(node, config!(offsets.kernfs_node_id)) else {
        return 0;
    };
    let Some(recorded) = CGROUP_PATH_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch entry, used by nothing else while the program
    // runs (tracepoint programs run with preemption disabled).
    let recorded = unsafe { &mut *recorded };
    // SAFETY: the helper stops at the buffer's end (and NUL-terminates).
    if unsafe { bpf_probe_read_kernel_str_bytes(path, &mut recorded.bytes) }.is_ok() {
        let _ = CGROUP_PATHS.insert(id, recorded, 0);
    }
    0
}
