//! Waking user space when the counter maps have gained enough keys that it
//! should look at them (and drain the processes that ended): an event from
//! the programs instead of user space polling the fill level many times a
//! second, idle or not.

use vdso_observer_common::DrainTrigger;

use crate::{
    atomic::add_one,
    maps::{DRAIN_TRIGGER, DRAIN_WAKEUP},
};

/// One more key in a counter map (or entry in PROCESSES); at the count user
/// space asked for, one wake-up. Runs only when a key is made.
#[inline(always)]
pub fn key_made() {
    let Some(made) = DRAIN_TRIGGER.get_ptr_mut(DrainTrigger::KeysMade as u32) else {
        return;
    };
    let Some(wake_at) = DRAIN_TRIGGER.get_ptr_mut(DrainTrigger::WakeAt as u32) else {
        return;
    };
    add_one(made);
    // SAFETY: valid, aligned u64s of an array map. Racy between CPUs by
    // design: two may both wake user space, which then looks twice.
    unsafe {
        let made = core::ptr::read_volatile(made);
        if made >= core::ptr::read_volatile(wake_at) {
            core::ptr::write_volatile(wake_at, u64::MAX);
            // A full ring already holds a wake-up that user space has not read.
            let _ = DRAIN_WAKEUP.output::<u64>(&made, 0);
        }
    }
}
