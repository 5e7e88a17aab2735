//! The machine's time set-up: clocksource, whether the vDSO can read it, legacy
//! vsyscall mode, and the boot settings that decide them.

use std::{fs, path::Path};

use crate::model::{ClocksourceState, VsyscallMode, clocksource_vdso_capability};

const CLOCKSOURCE_DIR: &str = "/sys/devices/system/clocksource/clocksource0";

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
        why: why.into(),
    })
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
    use crate::model::VdsoCapability;

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
