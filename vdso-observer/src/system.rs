//! The machine's time set-up: clocksource, whether the vDSO can read it, legacy
//! vsyscall mode, and the boot settings that decide them.

use std::{fs, path::Path};

use serde::Serialize;

const CLOCKSOURCE_DIR: &str = "/sys/devices/system/clocksource/clocksource0";

/// Whether the vDSO can read a clocksource from user space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VdsoCapability {
    /// It has a vDSO clock mode: high-resolution clocks stay in user space.
    Yes,
    /// It has none: every high-resolution clock read enters the kernel.
    No,
    /// It has one only under a condition the kernel decides at run time
    /// (a paravirtual clock with its stable bit).
    Conditional,
    /// Not in the table.
    Unknown,
}

/// What the kernel's clocksource drivers say about vDSO use (x86 and arm64).
pub fn clocksource_vdso_capability(name: &str) -> (VdsoCapability, &'static str) {
    use VdsoCapability::*;
    match name {
        "tsc" => (Yes, "TSC is read with rdtsc in user space"),
        "tsc-early" => (
            Yes,
            "the early-boot TSC is read with rdtsc in user space too",
        ),
        "kvm-clock" => (
            Conditional,
            "pvclock is readable from user space only while the host sets PVCLOCK_TSC_STABLE_BIT",
        ),
        "xen" => (
            Conditional,
            "Xen pvclock is readable from user space only with the stable bit (XENFEAT_vcpu_time_phys_area on a TSC-stable host)",
        ),
        "hyperv_clocksource_tsc_page" => (Yes, "Hyper-V TSC page is mapped into the vDSO"),
        "arch_sys_counter" => (Yes, "arm64 generic timer counter is readable from EL0"),
        "hpet" => (No, "HPET has no vDSO clock mode (removed in Linux 5.6)"),
        "acpi_pm" => (No, "the ACPI PM timer is an I/O port: kernel only"),
        "jiffies" | "refined-jiffies" => (No, "jiffies is a tick counter: kernel only"),
        "pit" => (No, "the PIT is an I/O port: kernel only"),
        _ => (Unknown, "not a clocksource vdso-observer knows"),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClocksourceState {
    pub current: String,
    pub available: Vec<String>,
    pub vdso_capability: VdsoCapability,
    pub why: &'static str,
}

pub fn clocksource() -> Option<ClocksourceState> {
    clocksource_at(Path::new(CLOCKSOURCE_DIR))
}

pub fn clocksource_at(dir: &Path) -> Option<ClocksourceState> {
    let current = fs::read_to_string(dir.join("current_clocksource"))
        .ok()?
        .trim()
        .to_owned();
    let available = fs::read_to_string(dir.join("available_clocksource"))
        .map(|text| text.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let (vdso_capability, why) = clocksource_vdso_capability(&current);
    Some(ClocksourceState {
        current,
        available,
        vdso_capability,
        why,
    })
}

/// How the kernel treats calls into the legacy vsyscall page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VsyscallMode {
    /// Execute-only page; calls are emulated (the default since 5.3).
    Xonly,
    /// Readable page; calls are emulated.
    Emulate,
    /// No page: a call kills the process with SIGSEGV.
    None,
    Unknown,
}

impl VsyscallMode {
    pub fn name(self) -> &'static str {
        match self {
            VsyscallMode::Xonly => "xonly",
            VsyscallMode::Emulate => "emulate",
            VsyscallMode::None => "none",
            VsyscallMode::Unknown => "unknown",
        }
    }
}

/// The mode as this process sees its own `[vsyscall]` mapping.
pub fn vsyscall_mode() -> VsyscallMode {
    match fs::read_to_string("/proc/self/maps") {
        Ok(maps) => vsyscall_mode_from_maps(&maps),
        Err(_) => VsyscallMode::Unknown,
    }
}

pub fn vsyscall_mode_from_maps(maps: &str) -> VsyscallMode {
    match maps.lines().find(|line| line.ends_with("[vsyscall]")) {
        None => VsyscallMode::None,
        Some(line) => match line.split_whitespace().nth(1) {
            Some(perms) if perms.starts_with('r') => VsyscallMode::Emulate,
            Some(_) => VsyscallMode::Xonly,
            None => VsyscallMode::Unknown,
        },
    }
}

/// Boot parameters that decide time calls: `clocksource=`, `tsc=`, `vdso=`,
/// `vsyscall=`, `notsc`, `no-kvmclock`.
pub fn boot_settings() -> Vec<String> {
    fs::read_to_string("/proc/cmdline")
        .map(|cmdline| boot_settings_from(&cmdline))
        .unwrap_or_default()
}

pub fn boot_settings_from(cmdline: &str) -> Vec<String> {
    cmdline
        .split_whitespace()
        .take_while(|word| *word != "--")
        .filter(|word| {
            ["clocksource=", "tsc=", "vdso=", "vdso32=", "vsyscall="]
                .iter()
                .any(|prefix| word.starts_with(prefix))
                || matches!(*word, "notsc" | "no-kvmclock" | "no-kvmclock-vsyscall")
        })
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_clocksources() {
        assert_eq!(clocksource_vdso_capability("tsc").0, VdsoCapability::Yes);
        assert_eq!(clocksource_vdso_capability("hpet").0, VdsoCapability::No);
        assert_eq!(clocksource_vdso_capability("acpi_pm").0, VdsoCapability::No);
        assert_eq!(
            clocksource_vdso_capability("kvm-clock").0,
            VdsoCapability::Conditional
        );
        assert_eq!(
            clocksource_vdso_capability("something").0,
            VdsoCapability::Unknown
        );
    }

    #[test]
    fn clocksource_from_sysfs_files() {
        let dir = std::env::temp_dir().join(format!("vdso-cs-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("current_clocksource"), "hpet\n").unwrap();
        fs::write(dir.join("available_clocksource"), "tsc hpet acpi_pm \n").unwrap();
        let state = clocksource_at(&dir).unwrap();
        assert_eq!(state.current, "hpet");
        assert_eq!(state.available, ["tsc", "hpet", "acpi_pm"]);
        assert_eq!(state.vdso_capability, VdsoCapability::No);
        fs::remove_dir_all(&dir).unwrap();
        assert!(clocksource_at(&dir).is_none());
    }

    #[test]
    fn this_machine_has_a_clocksource() {
        let state = clocksource().expect("sysfs clocksource");
        assert!(!state.current.is_empty());
        assert!(state.available.contains(&state.current) || state.available.is_empty());
    }

    #[test]
    fn vsyscall_modes() {
        let xonly =
            "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\n";
        let emulate =
            "ffffffffff600000-ffffffffff601000 r-xp 00000000 00:00 0                  [vsyscall]\n";
        assert_eq!(vsyscall_mode_from_maps(xonly), VsyscallMode::Xonly);
        assert_eq!(vsyscall_mode_from_maps(emulate), VsyscallMode::Emulate);
        assert_eq!(
            vsyscall_mode_from_maps("7f00-7f01 r-xp 0 0:0 0 [vdso]\n"),
            VsyscallMode::None
        );
    }

    #[test]
    fn boot_settings_are_picked_out() {
        let cmdline = "BOOT_IMAGE=/vmlinuz root=/dev/vda clocksource=hpet tsc=unstable quiet vdso=0 notsc -- init=tsc=x";
        assert_eq!(
            boot_settings_from(cmdline),
            ["clocksource=hpet", "tsc=unstable", "vdso=0", "notsc"]
        );
    }
}

/// A change in the machine's time set-up, with when it happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClockEvent {
    /// Unix seconds (from the kernel log's boot-time stamp, or when seen in sysfs).
    pub at_unix: f64,
    /// `switched`, `tsc_unstable`, `watchdog`, `sysfs_change`.
    pub kind: &'static str,
    pub message: String,
}

/// What a kernel log line says about clocksources, if anything.
pub fn clock_event_kind(message: &str) -> Option<&'static str> {
    if message.contains("Switched to clocksource") {
        Some("switched")
    } else if message.contains("Marking clocksource 'tsc' as unstable")
        || message.contains("Marking TSC unstable")
        || message.contains("TSC found unstable")
    {
        Some("tsc_unstable")
    } else if message.contains("clocksource watchdog")
        || message.contains("timekeeping watchdog")
        || message.contains("clocksource: Long readout interval")
    {
        Some("watchdog")
    } else {
        None
    }
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
            Err(err) => (
                None,
                Some(format!(
                    "/dev/kmsg: {err} (kernel.dmesg_restrict=1 needs CAP_SYSLOG): clocksource \
                     switches are still seen in sysfs, but not the kernel's reasons"
                )),
            ),
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
                kind: "sysfs_change",
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

/// `PRI,SEQ,USEC,FLAGS;message` -> an event when the message is about clocks.
pub fn parse_kmsg_record(record: &str, boot_unix: f64) -> Option<ClockEvent> {
    let (head, message) = record.split_once(';')?;
    let message = message.lines().next()?.trim().to_owned();
    let kind = clock_event_kind(&message)?;
    let usec: f64 = head.split(',').nth(2)?.parse().ok()?;
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
        assert_eq!(event.kind, "switched");
        assert!((event.at_unix - 1000.472316).abs() < 1e-6);
        assert_eq!(event.message, "clocksource: Switched to clocksource tsc");
        assert_eq!(
            clock_event_kind(
                "clocksource: Marking clocksource 'tsc' as unstable because the skew is too large:"
            ),
            Some("tsc_unstable")
        );
        assert_eq!(
            clock_event_kind("tsc: Marking TSC unstable due to TSCs unsynchronized"),
            Some("tsc_unstable")
        );
        assert_eq!(
            clock_event_kind("clocksource: jiffies: mask: 0xffffffff"),
            None
        );
        assert!(parse_kmsg_record("garbage", 0.0).is_none());
    }

    #[test]
    fn the_watch_reads_history_without_blocking() {
        let watch = ClockWatch::new();
        // As root the kernel log is readable and this boot switched at least once.
        if watch.kmsg_error.is_none() {
            assert!(
                watch.history.iter().any(|e| e.kind == "switched"),
                "{:?}",
                watch.history
            );
        } else {
            assert!(watch.kmsg_error.as_deref().unwrap().contains("CAP_SYSLOG"));
        }
    }
}
