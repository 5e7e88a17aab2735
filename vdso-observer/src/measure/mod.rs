//! Measurements that need the loaded programs: the calibration of vDSO costs
//! and capability (both ends of its child process), and exact counting with its
//! governor, and `auto`'s choice between kprobes and the raw tracepoint.

pub mod attach_choice;
pub mod calibrate;
pub mod calibration_child;
pub mod coarse;
pub mod code_reach;
pub mod diagnose;
pub mod entry_points;
pub mod exact;
pub mod hit_costs;
pub mod path_costs;
pub mod plt_stub;
pub mod stopwatch;
