//! Follows the clocksource in sysfs and the clock lines of the kernel log.

use crate::{
    host::clocksource::clocksource,
    model::{ClockEvent, ClockEventKind},
};

/// What a kernel log line says about clocksources, if anything. Only the
/// kernel's own lines of the clock subsystems count: the message must begin
/// with the subsystem's prefix, and a line about a user process (`comm[pid]:
/// …`, e.g. a segfault, whose comm and file name the user picks) never does.
pub fn clock_event_kind(message: &str) -> Option<ClockEventKind> {
    if names_a_process(message) {
        return None;
    }
    if let Some(rest) = message.strip_prefix("clocksource: ") {
        if rest.starts_with("Switched to clocksource ") {
            Some(ClockEventKind::Switched)
        } else if rest.contains("Marking clocksource 'tsc' as unstable") {
            Some(ClockEventKind::TscUnstable)
        } else if rest.starts_with("timekeeping watchdog")
            || rest.starts_with("Long readout interval")
            || rest.contains("clocksource watchdog")
        {
            Some(ClockEventKind::Watchdog)
        } else {
            None
        }
    } else if let Some(rest) = message.strip_prefix("tsc: ") {
        (rest.starts_with("Marking TSC unstable") || rest.starts_with("TSC found unstable"))
            .then_some(ClockEventKind::TscUnstable)
    } else if let Some(rest) = message.strip_prefix("arch_timer: ") {
        // arm64: "arch_timer: Enabling global workaround for ARM erratum 858921".
        (rest.contains("workaround")
            || rest.contains("erratum")
            || rest.contains("Trapping CNTVCT"))
        .then_some(ClockEventKind::TimerErratum)
    } else {
        None
    }
}

/// Whether a kernel line is about a user process: `comm[pid]: …` with a comm
/// of at most 15 bytes (`TASK_COMM_LEN`). The kernel's clock lines never are.
fn names_a_process(message: &str) -> bool {
    let head = &message.as_bytes()[..message.len().min(40)];
    head.iter().enumerate().any(|(at, &byte)| {
        byte == b'[' && at <= 15 && {
            let digits = head[at + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            digits > 0 && head[at + 1 + digits..].starts_with(b"]:")
        }
    })
}

/// Follows the clocksource in sysfs and clock lines of the kernel log
/// (`/dev/kmsg`, read without blocking; the ring buffer's history first).
pub struct ClockWatch {
    current: Option<String>,
    kmsg: Option<std::fs::File>,
    /// Why the kernel log cannot be read, when it cannot.
    pub kmsg_error: Option<String>,
    boot_unix: f64,
    /// Every event seen, the newest last (bounded).
    pub history: std::collections::VecDeque<ClockEvent>,
}

const HISTORY: usize = 64;

impl ClockWatch {
    pub fn new() -> ClockWatch {
        use std::os::unix::fs::OpenOptionsExt as _;
        let (kmsg, kmsg_error) = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
        {
            Ok(file) => (Some(file), None),
            Err(err) => {
                let what_to_do = if err.kind() == std::io::ErrorKind::NotFound {
                    // A container's /dev: the host's device is not there.
                    "a container needs the host's /dev/kmsg: --device /dev/kmsg, or a hostPath \
                     volume in Kubernetes"
                } else {
                    "kernel.dmesg_restrict=1 needs CAP_SYSLOG"
                };
                (
                    None,
                    Some(format!(
                        "/dev/kmsg: {err} ({what_to_do}): clocksource switches are still seen \
                         in sysfs, but not the kernel's reasons"
                    )),
                )
            }
        };
        let mut watch = ClockWatch {
            current: clocksource().map(|c| c.current),
            kmsg,
            kmsg_error,
            boot_unix: boot_time_unix(),
            history: Default::default(),
        };
        watch.poll(); // the log's history
        watch
    }

    /// New events since the last call.
    pub fn poll(&mut self) -> Vec<ClockEvent> {
        let mut events = self.read_kmsg();
        let current = clocksource().map(|c| c.current);
        if current != self.current {
            events.push(ClockEvent {
                at_unix: now_unix(),
                kind: ClockEventKind::SysfsChange,
                message: format!(
                    "current_clocksource changed from {} to {}",
                    self.current.as_deref().unwrap_or("?"),
                    current.as_deref().unwrap_or("?")
                ),
            });
            self.current = current;
        }
        for event in &events {
            if self.history.len() == HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(event.clone());
        }
        events
    }

    fn read_kmsg(&mut self) -> Vec<ClockEvent> {
        use std::io::Read as _;
        let mut events = Vec::new();
        let Some(kmsg) = &mut self.kmsg else {
            return events;
        };
        // One record per read; EAGAIN at the end, EPIPE when records were overwritten.
        let mut buf = vec![0u8; 8192];
        for _ in 0..100_000 {
            match kmsg.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let record = String::from_utf8_lossy(&buf[..n]);
                    if let Some(event) = parse_kmsg_record(&record, self.boot_unix) {
                        events.push(event);
                    }
                }
                Err(err) if err.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        events
    }
}

/// `PRI,SEQ,USEC,FLAGS;message` -> an event when the kernel itself says
/// something about clocks. Lines written to /dev/kmsg from user space carry
/// a facility other than the kernel's (0), whatever they say.
pub fn parse_kmsg_record(record: &str, boot_unix: f64) -> Option<ClockEvent> {
    let (head, message) = record.split_once(';')?;
    let mut fields = head.split(',');
    let priority: u32 = fields.next()?.parse().ok()?;
    if priority >> 3 != 0 {
        return None;
    }
    let message = message.lines().next()?.trim().to_owned();
    let kind = clock_event_kind(&message)?;
    let usec: f64 = fields.nth(1)?.parse().ok()?;
    Some(ClockEvent {
        at_unix: boot_unix + usec / 1e6,
        kind,
        message,
    })
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// When the machine booted, Unix seconds (now minus CLOCK_BOOTTIME).
fn boot_time_unix() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    now_unix() - (ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

#[cfg(test)]
mod watch_tests {
    use super::*;

    #[test]
    fn kernel_log_lines_are_recognised() {
        let event = parse_kmsg_record(
            "6,321,472316,-;clocksource: Switched to clocksource tsc\n SUBSYSTEM=x\n",
            1000.0,
        )
        .unwrap();
        assert_eq!(event.kind, ClockEventKind::Switched);
        assert!((event.at_unix - 1000.472316).abs() < 1e-6);
        assert_eq!(event.message, "clocksource: Switched to clocksource tsc");
        assert_eq!(
            clock_event_kind(
                "clocksource: Marking clocksource 'tsc' as unstable because the skew is too large:"
            ),
            Some(ClockEventKind::TscUnstable)
        );
        assert_eq!(
            clock_event_kind("tsc: Marking TSC unstable due to TSCs unsynchronized"),
            Some(ClockEventKind::TscUnstable)
        );
        assert_eq!(
            clock_event_kind("arch_timer: Enabling global workaround for ARM erratum 858921"),
            Some(ClockEventKind::TimerErratum)
        );
        assert_eq!(
            clock_event_kind("arch_timer: CPU0: Trapping CNTVCT access"),
            Some(ClockEventKind::TimerErratum)
        );
        assert_eq!(
            clock_event_kind("arch_timer: cp15 timer(s) running at 62.50MHz (virt)."),
            None
        );
        assert_eq!(
            clock_event_kind("clocksource: jiffies: mask: 0xffffffff"),
            None
        );
        assert!(parse_kmsg_record("garbage", 0.0).is_none());
    }

    /// What an unprivileged user can put in the kernel log: a crashing
    /// program named like the kernel's clocksource line (the kernel quotes its
    /// comm and file name), or a line written to /dev/kmsg (user facility).
    /// Before, the first made a `switched` event, a recalibration and an alert.
    #[test]
    fn a_user_cannot_forge_a_clock_line() {
        for forged in [
            "6,900,5000,-;Switched to clo[4242]: segfault at 0 ip 0000000000401000 sp \
             00007ffd0 error 4 in Switched to clocksource hpet[401000+1000]",
            "6,901,5000,-;clocksource: Sw[4242]: segfault at 0 ip 0 sp 0 error 4 in \
             Switched to clocksource hpet[401000+1000]",
            "6,902,5000,-;clocksource: xx[77]: segfault at 0 in timekeeping watchdog[1+2]",
            "6,903,5000,-;tsc: Marking[9]: trap invalid opcode in tsc: Marking TSC unstable",
            // user space writing to /dev/kmsg gets facility LOG_USER (1): 14 = 1 << 3 | 6
            "14,904,5000,-;clocksource: Switched to clocksource hpet",
            "12,905,5000,-;tsc: Marking TSC unstable due to clocksource watchdog",
        ] {
            assert!(parse_kmsg_record(forged, 0.0).is_none(), "{forged}");
        }
        assert_eq!(
            clock_event_kind("Switched to clocksource hpet"),
            None,
            "not at the start of a kernel line"
        );
        // The kernel's own lines still count.
        for (line, kind) in [
            (
                "4,1,2,-;clocksource: timekeeping watchdog on CPU1: Marking clocksource 'tsc' \
                 as unstable because the skew is too large:",
                ClockEventKind::TscUnstable,
            ),
            (
                "4,1,2,-;clocksource: Long readout interval, skipping watchdog check",
                ClockEventKind::Watchdog,
            ),
            (
                "6,1,2,-;tsc: Marking TSC unstable due to clocksource watchdog",
                ClockEventKind::TscUnstable,
            ),
            (
                "6,1,2,-;clocksource: Switched to clocksource hpet",
                ClockEventKind::Switched,
            ),
        ] {
            assert_eq!(
                parse_kmsg_record(line, 0.0).map(|e| e.kind),
                Some(kind),
                "{line}"
            );
        }
    }

    #[test]
    fn the_watch_reads_history_without_blocking() {
        let watch = ClockWatch::new();
        // As root the kernel log is readable and this boot switched at least once.
        if watch.kmsg_error.is_none() {
            assert!(
                watch
                    .history
                    .iter()
                    .any(|e| e.kind == ClockEventKind::Switched),
                "{:?}",
                watch.history
            );
        } else {
            assert!(watch.kmsg_error.as_deref().unwrap().contains("CAP_SYSLOG"));
        }
    }
}
