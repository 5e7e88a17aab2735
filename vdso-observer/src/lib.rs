//! The parts of vdso-observer other programs read: the report a window makes
//! (`model`, serialized as the JSON of `top --json`, `doctor --json` and the
//! daemon's `/report`, and read back by the tests and `cargo xtask`), and the
//! metric families the daemon exports. The binary (`main.rs`) builds on these.

pub mod metric_families;
pub mod model;
