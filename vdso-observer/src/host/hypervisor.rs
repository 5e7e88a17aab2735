//! Whether this kernel runs as a guest of a hypervisor: there, timer
//! interrupts (the sampler's ticks among them) are the hypervisor's to deliver.

use std::fs;

/// What the kernel shows about a hypervisor (each field as read, or empty).
#[derive(Debug, Default)]
pub struct GuestSigns {
    /// /proc/cpuinfo (x86: the `hypervisor` CPU flag).
    pub cpuinfo: String,
    /// /sys/hypervisor/type (Xen).
    pub hypervisor_type: String,
    /// /sys/class/dmi/id/sys_vendor and product_name, joined.
    pub dmi: String,
    /// /proc/device-tree/compatible (arm64 boards and QEMU's `virt`).
    pub device_tree: String,
}

impl GuestSigns {
    pub fn read() -> GuestSigns {
        let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
        GuestSigns {
            cpuinfo: read("/proc/cpuinfo"),
            hypervisor_type: read("/sys/hypervisor/type"),
            dmi: format!(
                "{} {}",
                read("/sys/class/dmi/id/sys_vendor").trim(),
                read("/sys/class/dmi/id/product_name").trim()
            ),
            device_tree: read("/proc/device-tree/compatible"),
        }
    }
}

/// DMI vendors and products of virtual machines (bare-metal cloud instances
/// name their vendor too, so only product names that say "virtual").
const VIRTUAL_DMI: [&str; 6] = [
    "QEMU",
    "KVM",
    "VirtualBox",
    "VMware",
    "Virtual Machine",
    "Google Compute Engine",
];

/// How the kernel shows it runs in a virtual machine, or None where it shows
/// nothing (bare metal, as far as can be told).
pub fn guest_of(signs: &GuestSigns) -> Option<String> {
    let x86_flag = signs
        .cpuinfo
        .lines()
        .find(|line| line.starts_with("flags"))
        .is_some_and(|line| line.split_whitespace().any(|flag| flag == "hypervisor"));
    if x86_flag {
        return Some("the CPU's hypervisor flag (/proc/cpuinfo)".into());
    }
    let hypervisor = signs.hypervisor_type.trim();
    if !hypervisor.is_empty() {
        return Some(format!("/sys/hypervisor/type is {hypervisor}"));
    }
    if let Some(name) = VIRTUAL_DMI.iter().find(|name| signs.dmi.contains(*name)) {
        return Some(format!("DMI names {name} ({})", signs.dmi.trim()));
    }
    // EC2 names every instance so; only `.metal` ones have no hypervisor.
    if signs.dmi.starts_with("Amazon EC2") && !signs.dmi.trim().ends_with(".metal") {
        return Some(format!("DMI names an EC2 instance ({})", signs.dmi.trim()));
    }
    // Device-tree strings are NUL-separated.
    if signs
        .device_tree
        .split('\0')
        .any(|compatible| compatible == "linux,dummy-virt")
    {
        return Some("QEMU's virt machine (/proc/device-tree/compatible)".into());
    }
    None
}

/// This machine's answer.
pub fn guest() -> Option<String> {
    guest_of(&GuestSigns::read())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_is_told_by_what_its_kernel_shows() {
        let signs = |cpuinfo: &str, dmi: &str, device_tree: &str| GuestSigns {
            cpuinfo: cpuinfo.into(),
            dmi: dmi.into(),
            device_tree: device_tree.into(),
            ..GuestSigns::default()
        };
        assert!(
            guest_of(&signs("flags\t\t: fpu vme hypervisor lahf_lm\n", "", ""))
                .unwrap()
                .contains("hypervisor flag")
        );
        // A flag name that only contains the word is not the flag.
        assert_eq!(
            guest_of(&signs(
                "flags\t\t: fpu hypervisor_x\nmodel name: hypervisor\n",
                "",
                ""
            )),
            None
        );
        assert!(
            guest_of(&signs("", "QEMU Standard PC (Q35 + ICH9, 2009)", ""))
                .unwrap()
                .contains("QEMU")
        );
        assert!(guest_of(&signs("", "", "linux,dummy-virt\0")).is_some());
        assert!(guest_of(&signs("", "Amazon EC2 m7g.large", "")).is_some());
        // A bare-metal cloud instance and an arm64 board.
        assert_eq!(
            guest_of(&signs(
                "",
                "Amazon EC2 m7g.metal",
                "raspberrypi,4-model-b\0brcm,bcm2711\0"
            )),
            None
        );
        let xen = GuestSigns {
            hypervisor_type: "xen\n".into(),
            ..GuestSigns::default()
        };
        assert_eq!(guest_of(&xen).unwrap(), "/sys/hypervisor/type is xen");
    }
}
