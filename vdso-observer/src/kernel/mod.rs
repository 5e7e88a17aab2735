//! The kernel side seen from user space: the kernel's BTF (`btf`) and the
//! offsets read from it, privileges and kernel
//! floors; the object and its maps (`object`), attaching (`attach`), the
//! observer that holds them (`observer`), reading and forgetting
//! (`map_reads`, `free_slots`, `slot_totals`, and the exits the kernel handed:
//! `handed_exits`), the programs' wake-up to drain (`drain_wakeup`), and exact
//! counting's links (`exact_links`).

pub mod attach;
mod btf;
pub mod btf_offsets;
mod drain_wakeup;
mod exact_links;
mod free_slots;
mod handed_exits;
mod map_batch;
mod map_reads;
pub mod object;
pub mod observer;
pub mod privileges;
mod sample_offsets;
pub mod sample_rate;
mod slot_totals;

pub use attach::{KprobeJudge, KprobeTrial, KprobeVerdict};
pub use drain_wakeup::DrainWakeup;
pub use object::{LoadOptions, VdsoTables};
pub use observer::Observer;
