//! Front ends a person reads: the batch table and JSON lines of `top`, the
//! full-screen `top`, and `doctor`. They read the session and the model only.

pub mod batch;
pub mod doctor;
pub mod format;
pub mod tui;
