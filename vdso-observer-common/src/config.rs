//! What the loader writes into the programs before load: kernel offsets from
//! BTF and the observer's own settings.

use crate::DEFAULT_PROCESS_KEY_CAP;

/// Kernel structure offsets read by the programs, found in the running kernel's
/// BTF at start-up (Rust eBPF cannot emit CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.mm`
    pub task_mm: u32,
    /// `task_struct.group_leader`
    pub task_group_leader: u32,
    /// `task_struct.start_boottime`
    pub task_start_boottime: u32,
    /// `task_struct.self_exec_id`
    pub task_self_exec_id: u32,
    /// `task_struct.comm`
    pub task_comm: u32,
    /// x86: `task_struct.thread_info.status` (`TS_COMPAT`); arm64:
    /// `task_struct.thread_info.flags` (`TIF_32BIT`): whether the syscall
    /// being made is a 32-bit one.
    pub task_thread_status: u32,
    /// `mm_struct.context.vdso`
    pub mm_vdso: u32,
    /// x86: `mm_struct.context.vdso_image` (arm64 has none: every 64-bit
    /// task maps the one image, whose length user space hands over)
    pub mm_vdso_image: u32,
    /// x86: `vdso_image.size`
    pub vdso_image_size: u32,
    /// `pt_regs.ip` (arm64: `pt_regs.pc`)
    pub regs_ip: u32,
    /// `pt_regs.sp`
    pub regs_sp: u32,
    /// `pt_regs.di`, first argument of a 64-bit syscall (arm64: `pt_regs.regs[0]`)
    pub regs_di: u32,
    /// `cgroup.kn`
    pub cgroup_kn: u32,
    /// `kernfs_node.id` (a cgroup's id: its directory's inode)
    pub kernfs_node_id: u32,
    /// x86: `pt_regs.bx` (first argument of a 32-bit syscall)
    pub regs_bx: u32,
    /// `task_struct.tgid` (read directly: a helper call costs more)
    pub task_tgid: u32,
    /// `cgroup.root`: the hierarchy a cgroup belongs to
    pub cgroup_root: u32,
    /// `cgroup_root.hierarchy_id`: 0 for the unified (v2) hierarchy; kernfs
    /// ids are per hierarchy, so only its cgroups are recorded
    pub cgroup_root_hierarchy_id: u32,
    /// `task_struct.signal`
    pub task_signal: u32,
    /// `signal_struct.live`: threads of the group not yet exited (0 at the
    /// last thread's `sched_process_exit`)
    pub signal_live: u32,
}

impl KernelOffsets {
    pub const ZERO: KernelOffsets = KernelOffsets {
        task_mm: 0,
        task_group_leader: 0,
        task_start_boottime: 0,
        task_self_exec_id: 0,
        task_comm: 0,
        task_thread_status: 0,
        mm_vdso: 0,
        mm_vdso_image: 0,
        vdso_image_size: 0,
        regs_ip: 0,
        regs_sp: 0,
        regs_di: 0,
        regs_bx: 0,
        task_tgid: 0,
        cgroup_kn: 0,
        kernfs_node_id: 0,
        cgroup_root: 0,
        cgroup_root_hierarchy_id: 0,
        task_signal: 0,
        signal_live: 0,
    };
}

/// Everything the loader hands the programs before they run.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramConfig {
    pub offsets: KernelOffsets,
    /// The observer's own process, whose time calls are not counted.
    pub observer_tgid: u32,
    /// See [`DEFAULT_PROCESS_KEY_CAP`].
    pub process_key_cap: u32,
    /// Length of the 64-bit vDSO text, for kernels whose mm does not say
    /// (arm64); 0 where the programs read it per task (x86).
    pub vdso_len: u32,
    /// Always 0.
    pub _pad: u32,
}

impl ProgramConfig {
    /// What the object file holds until the loader overrides it.
    pub const ZERO: ProgramConfig = ProgramConfig {
        offsets: KernelOffsets::ZERO,
        observer_tgid: 0,
        process_key_cap: DEFAULT_PROCESS_KEY_CAP,
        vdso_len: 0,
        _pad: 0,
    };
}
