//! The kernel side seen from user space: BTF offsets, privileges and kernel
//! floors, and the loader that loads, attaches, reads the maps and forgets.

pub mod attach_choice;
pub mod btf_offsets;
pub mod loader;
pub mod privileges;

pub use loader::{LoadOptions, Observer, VdsoTables};
