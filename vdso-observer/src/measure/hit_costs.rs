//! What one probe hit costs on this machine (the observer traps its own calls
//! for a moment and times them), and what probes would cost a process.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use serde::Serialize;
use vdso_observer_common::{TimeCall, UprobeCookie};

use super::{
    entry_points::{entry_points, symbol_offset},
    stopwatch,
};
use crate::{
    host::{process_files, procfs, vdso_image::VdsoImage},
    kernel::Observer,
};

/// Overheads below this share of one CPU are always allowed: a process that
/// barely runs would otherwise be over any budget with its first call.
pub const OVERHEAD_FLOOR: f64 = 0.001;

/// Measured cost of one probe hit here.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct HitCosts {
    pub uprobe_ns: f64,
    pub breakpoint_ns: f64,
}

/// Overhead the probes would cost a process calling the vDSO `rate` times a
/// second, as a share of its CPU time (using the dearer breakpoint cost).
pub fn predicted_overhead(pid: u32, rate: f64, hit_ns: f64) -> f64 {
    let cost = rate * hit_ns / 1e9; // CPU seconds per second
    if cost < OVERHEAD_FLOOR {
        return 0.0;
    }
    // Its CPU share now, plus what the probes would add.
    let cpu = procfs::cpu_share(pid).unwrap_or(1.0);
    cost / (cpu + cost)
}

/// What one uprobe hit and one breakpoint hit cost on this machine: the
/// observer traps its own calls for a moment and times them.
pub fn measure_hit_costs(observer: &mut Observer, image: &VdsoImage) -> Result<HitCosts> {
    const CALLS: u32 = 2_000;
    let own = std::process::id();
    let points = entry_points(own)?;
    let cookie = UprobeCookie {
        call: TimeCall::ClockGettime,
        fixed_clock: None,
    };
    // Bounded by time too: where clock reads trap, 20 000 take seconds.
    let time_calls = |n: u32| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        stopwatch::time_calls(u64::from(n), Duration::from_millis(200), || {
            // SAFETY: a valid timespec.
            unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) }
        })
        .ns_per_call
    };
    let bare = time_calls(CALLS * 10);
    let link = match points
        .uprobes
        .iter()
        .find(|(_, symbol, _)| symbol == "clock_gettime")
    {
        Some((libc, symbol, cookie)) => {
            observer.attach_uprobe_at_offset(libc, symbol_offset(libc, symbol)?, own, *cookie)?
        }
        // The static release binary is stripped: its own clock_gettime, by address.
        None => {
            let (file, offset) =
                process_files::own_code_location(libc::clock_gettime as *const () as u64)
                    .context("finding this process's clock_gettime to measure a uprobe on")?;
            observer.attach_uprobe_at_offset(&file, offset, own, cookie)?
        }
    };
    let uprobed = time_calls(CALLS);
    observer.detach_uprobe(link)?;

    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    let gettime = image
        .own_address(TimeCall::ClockGettime)
        .ok_or_else(|| anyhow!("the vDSO exports no clock_gettime"))?;
    let link = observer.attach_breakpoint(tid, gettime)?;
    let breakpointed = time_calls(CALLS);
    observer.detach_breakpoint(link)?;
    Ok(HitCosts {
        uprobe_ns: (uprobed - bare).max(100.0),
        breakpoint_ns: (breakpointed - bare).max(100.0),
    })
}
