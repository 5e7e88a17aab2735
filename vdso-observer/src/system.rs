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
            No,
            "the early boot TSC has no vDSO clock mode until it is refined to tsc",
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
