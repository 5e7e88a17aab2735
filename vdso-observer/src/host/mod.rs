//! What the host says, read from /proc, sysfs, the kernel log, NSS and the
//! observer's own vDSO: every such read lives here.

pub mod cgroups;
pub mod clock_watch;
pub mod clocksource;
pub mod hypervisor;
pub mod process_files;
pub mod procfs;
pub mod random_pool;
pub mod runtime_names;
pub mod users;
pub mod vdso32;
pub mod vdso_image;
