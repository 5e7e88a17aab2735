//! `vm-test systemd`: the daemon as shipped — its `.deb` installed with dpkg in
//! a Debian 12 root filesystem built by mmdebstrap from Debian's packages —
//! under systemd as PID 1, in Debian's 6.1 kernel under QEMU. The root
//! filesystem is an initramfs (a gzip'd cpio of the tree): no disk image, no
//! modules, nothing installed on the host but mmdebstrap itself. A oneshot
//! unit runs `xtask/vm/systemd-test.sh` through systemctl and journalctl and
//! prints VMTEST lines on the serial console; this checks them.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Result, anyhow};

use super::{Guest, boot_machine, ensure, guest_kernel, report};
use crate::{
    exec::{quiet, step},
    setup,
};

pub const SCENARIO: &str = "systemd";

const SCRIPT: &str = include_str!("../../vm/systemd-test.sh");

/// The unit that runs the script once the guest is up.
const TEST_UNIT: &str = "[Unit]
Description=vm-test: the vdso-observer package under systemd
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/vmtest-systemd
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
[Install]
WantedBy=multi-user.target
";

/// Packages of the guest besides minbase: systemd as init, what the script
/// uses (bpftool: nothing left in the kernel after stop).
const GUEST_PACKAGES: &str = "systemd,systemd-sysv,dbus,procps,bpftool";

pub fn run(root: &Path) -> Result<Vec<(String, bool)>> {
    setup::debian_packages(&["qemu-system-x86", "mmdebstrap", "cpio"])?;
    let dir = root.join("target/vm");
    fs::create_dir_all(&dir)?;
    let kernel = guest_kernel(&dir)?;
    let deb = crate::dist::build()?.deb;
    let initramfs = build_root(root, &dir, &deb)?;
    step(&format!(
        "vm-test {SCENARIO}: booting {} with systemd as PID 1 (the .deb installed)",
        kernel.display()
    ));
    let started = Instant::now();
    let scenario = super::Scenario {
        name: SCENARIO,
        // One CPU keeps tsc (the script switches to hpet itself); systemd as init.
        cmdline: "rdinit=/lib/systemd/systemd systemd.unit=multi-user.target",
        cpu: None,
        check,
        modes: &["auto"],
    };
    let result = boot_machine(&GUEST, &kernel, &initramfs, &dir, &scenario, "auto")
        .and_then(|guest| check(&guest));
    let log = format!("target/vm/{SCENARIO}-auto.log");
    Ok(vec![report(SCENARIO, started, result, &log)])
}

/// The x86_64 machine with room for a root filesystem in RAM.
const GUEST: super::Machine = super::Machine {
    qemu: "qemu-system-x86_64",
    args: &[],
    console: "ttyS0",
    memory: "2048",
};

/// Debian 12 (minbase, systemd) from Debian's packages, cached as a tarball;
/// then, each run, the tree with the .deb installed, the workload and the test
/// unit, packed as a gzip'd cpio.
fn build_root(root: &Path, dir: &Path, deb: &Path) -> Result<PathBuf> {
    let base = dir.join("systemd-base.tar");
    if base.exists() {
        step(&format!("systemd guest root: present ({})", base.display()));
    } else {
        let partial = dir.join("systemd-base.tar.partial");
        quiet(
            "systemd guest root: mmdebstrap bookworm (minbase, systemd; about 30 s)",
            "vm-systemd-mmdebstrap",
            Command::new("mmdebstrap")
                .args(["--variant=minbase", "--mode=root", "--format=tar"])
                .arg(format!("--include={GUEST_PACKAGES}"))
                // Docs and manuals: nothing the guest reads, a third of its size.
                .args([
                    "--dpkgopt=path-exclude=/usr/share/doc/*",
                    "--dpkgopt=path-exclude=/usr/share/man/*",
                    "--dpkgopt=path-exclude=/usr/share/locale/*",
                ])
                .args(["bookworm"])
                .arg(&partial),
        )?;
        fs::rename(&partial, &base)?;
    }
    let tree = dir.join("systemd-root");
    let _ = fs::remove_dir_all(&tree);
    fs::create_dir_all(&tree)?;
    quiet(
        "systemd guest root: unpacking",
        "vm-systemd-unpack",
        Command::new("tar")
            .arg("-xf")
            .arg(&base)
            .arg("-C")
            .arg(&tree),
    )?;
    fs::copy(deb, tree.join("tmp/vdso-observer.deb"))?;
    quiet(
        "systemd guest root: dpkg -i the package (chroot)",
        "vm-systemd-dpkg",
        Command::new("chroot")
            .arg(&tree)
            .args(["dpkg", "-i", "/tmp/vdso-observer.deb"]),
    )?;
    fs::remove_file(tree.join("tmp/vdso-observer.deb"))?;
    quiet(
        "systemd guest root: the static workload",
        "vm-systemd-workload",
        Command::new("gcc")
            .args(["-O2", "-static", "-pthread", "-o"])
            .arg(tree.join("usr/local/bin/workload"))
            .arg(root.join("vdso-observer/tests/workloads/time_calls.c")),
    )?;
    let script = tree.join("usr/local/sbin/vmtest-systemd");
    fs::write(&script, SCRIPT)?;
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    fs::write(tree.join("etc/systemd/system/vmtest.service"), TEST_UNIT)?;
    let wants = tree.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    let _ = fs::remove_file(wants.join("vmtest.service"));
    std::os::unix::fs::symlink(
        "/etc/systemd/system/vmtest.service",
        wants.join("vmtest.service"),
    )?;
    // No getty or login prompts on the console the script prints to.
    for unit in ["serial-getty@ttyS0.service", "getty@tty1.service"] {
        let _ = fs::remove_file(
            tree.join("etc/systemd/system/getty.target.wants")
                .join(unit),
        );
    }
    fs::write(tree.join("etc/hostname"), "vmtest\n")?;
    let cpio = dir.join("systemd-initramfs.cpio.gz");
    quiet(
        "systemd guest root: packing the initramfs (gzip'd cpio)",
        "vm-systemd-pack",
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "find . | cpio -o -H newc --quiet | gzip -1 > {}",
                cpio.display()
            ))
            .current_dir(&tree),
    )?;
    let _ = fs::remove_dir_all(&tree);
    Ok(cpio)
}

/// A VMTEST line's fields.
fn fields<'a>(guest: &'a Guest, tag: &str) -> Result<Vec<&'a str>> {
    Ok(guest
        .line(tag)
        .ok_or_else(|| anyhow!("the guest printed no VMTEST-{tag} line"))?
        .split_whitespace()
        .collect())
}

fn number(guest: &Guest, tag: &str) -> Result<f64> {
    fields(guest, tag)?
        .first()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("VMTEST-{tag} is not a number: {:?}", guest.line(tag)))
}

fn check(guest: &Guest) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let start = fields(guest, "START")?;
    ensure(
        start.first() == Some(&"0") && start.get(2) == Some(&"textfile-written"),
        format!("systemctl start: {start:?} (READY=1 comes after the first textfile)"),
    )?;
    // systemctl show prints the properties in its own order.
    let state = guest.line("STATE").unwrap_or("");
    let words: Vec<&str> = state.split_whitespace().collect();
    ensure(
        ["notify", "active", "running"]
            .iter()
            .all(|word| words.contains(word)),
        format!("unit state (Type, NRestarts, ActiveState, SubState): {state}"),
    )?;
    lines.push(format!(
        "systemctl start returned in {} ms, after READY=1 (textfile already written); {state}",
        start.get(1).unwrap_or(&"?")
    ));
    let watchdog = fields(guest, "WATCHDOG")?;
    let (w1, w2): (u64, u64) = (
        watchdog.first().and_then(|v| v.parse().ok()).unwrap_or(0),
        watchdog.get(1).and_then(|v| v.parse().ok()).unwrap_or(0),
    );
    ensure(
        w1 > 0 && w2 > w1,
        format!("the watchdog timestamp did not advance: {watchdog:?}"),
    )?;
    lines.push(format!(
        "watchdog pinged: timestamp +{:.1} s over 7 s (WatchdogSec {})",
        (w2 - w1) as f64 / 1e6,
        watchdog.get(2).unwrap_or(&"?")
    ));
    let caps = guest.line("CAPS").unwrap_or("");
    ensure(
        caps.contains("CapEff: 0000000000000000")
            && caps.contains("CapPrm: 0000000000000000")
            && caps.contains("NoNewPrivs: 1"),
        format!("after the drop: {caps}"),
    )?;
    lines.push(format!("after the capability drop: {caps}"));
    let unprivileged = guest.line("UNPRIVILEGED-BPF").unwrap_or("?");
    let direct = number(guest, "DIRECT")?;
    ensure(
        direct == 3000.0,
        format!("3000 direct clock_gettime: {direct} in the textfile"),
    )?;
    lines.push(format!(
        "3000 direct clock_gettime counted exactly after the drop, kernel.unprivileged_bpf_disabled={unprivileged}"
    ));
    ensure(
        guest.line("SWITCHED") == Some("hpet"),
        format!("switching to hpet: {:?}", guest.line("SWITCHED")),
    )?;
    let fallback = number(guest, "FALLBACK")?;
    ensure(
        fallback == 2000.0,
        format!("2000 vDSO clock_gettime on hpet: {fallback} vdso_fallback/clocksource"),
    )?;
    let readable = guest.line("KERNEL-LOG-READABLE").unwrap_or("?");
    ensure(
        readable == "1",
        format!("vdso_observer_kernel_log_readable {readable} (CAP_SYSLOG, DeviceAllow=/dev/kmsg)"),
    )?;
    let journal = guest.lines("JOURNAL");
    let kernel_line = journal
        .iter()
        .find(|l| l.contains("clock event: clocksource: Switched to clocksource hpet"))
        .ok_or_else(|| {
            anyhow!("no clock event with the kernel's line in the journal: {journal:?}")
        })?;
    lines.push(format!(
        "hpet at run time: 2000 of 2000 vDSO calls vdso_fallback/clocksource; kernel log readable; {kernel_line}"
    ));
    let warnings = number(guest, "JOURNAL-WARNING-LINES")?;
    let info_in_warning = number(guest, "JOURNAL-INFO-IN-WARNING")?;
    let info = number(guest, "JOURNAL-INFO")?;
    ensure(
        warnings >= 1.0 && info_in_warning == 0.0 && info >= 2.0,
        format!(
            "journalctl -p warning: {warnings} lines, {info_in_warning} of them info; -p info: {info}: {:?}",
            guest.lines("JOURNAL-WARNING")
        ),
    )?;
    lines.push(format!(
        "journalctl -u vdso-observer -p warning: {warnings} lines, no info line (e.g. {:?})",
        guest.lines("JOURNAL-WARNING").first().unwrap_or(&"")
    ));
    // The 32-bit image under the unit's SystemCallArchitectures=native x86,
    // system-call filter and MemoryDenyWriteExecute (read at every start;
    // calibrated where the sampler runs: the paranoid=2 start below).
    let read32 = journal
        .iter()
        .find(|l| l.contains("32-bit vDSO read"))
        .ok_or_else(|| {
            anyhow!(
                "the 32-bit vDSO was not read under the unit (plain root's doctor: {}): {journal:?}",
                guest.lines("DOCTOR").join(" ")
            )
        })?;
    let calibrated32 = guest.line("VDSO32-CALIBRATED").ok_or_else(|| {
        anyhow!("the 32-bit vDSO was not calibrated under the unit with the sampler on")
    })?;
    lines.push(format!(
        "under SystemCallArchitectures=native x86, the filter and MemoryDenyWriteExecute: {read32}; {calibrated32}"
    ));
    // Debian's perf_event_paranoid=3 wants CAP_SYS_ADMIN for perf events: the
    // daemon says so, and with 2 the sampler attaches under the unit.
    let paranoid = guest.line("PERF-PARANOID").unwrap_or("?");
    let sampler_warning = guest
        .lines("JOURNAL-WARNING")
        .into_iter()
        .find(|l| l.contains("not estimated"));
    if paranoid == "3" {
        ensure(
            sampler_warning.is_some_and(|w| w.contains("perf_event_paranoid=2")),
            format!("perf_event_paranoid 3 and the sampler's warning: {sampler_warning:?}"),
        )?;
    }
    let sampler = guest.line("SAMPLER-PARANOID-2").unwrap_or("?");
    ensure(
        sampler == "1",
        format!("with kernel.perf_event_paranoid=2 the sampler under the unit: {sampler}"),
    )?;
    lines.push(format!(
        "sampler: kernel.perf_event_paranoid {paranoid} refused it under the unit (CAP_PERFMON only), \
         said in the journal; with 2 it attaches"
    ));
    let reload = guest.line("RELOAD").unwrap_or("");
    ensure(
        reload == "0 active" && number(guest, "RELOADED")? >= 1.0,
        format!(
            "systemctl reload: {reload}, reloaded {:?}",
            guest.line("RELOADED")
        ),
    )?;
    let stop = fields(guest, "STOP")?;
    let stop_ms: f64 = stop.get(1).and_then(|v| v.parse().ok()).unwrap_or(f64::MAX);
    ensure(
        stop.first() == Some(&"0") && stop_ms < 20_000.0,
        format!("systemctl stop: {stop:?} (TimeoutStopSec 20 s)"),
    )?;
    let left = number(guest, "BPF-LEFT")?;
    ensure(left == 0.0, format!("{left} BPF programs left after stop"))?;
    let restart = guest.line("RESTART").unwrap_or("");
    ensure(
        restart == "0 active",
        format!("systemctl restart: {restart}"),
    )?;
    lines.push(format!(
        "reload applied the changed file; stop in {stop_ms:.0} ms, 0 BPF programs left (bpftool); restart active"
    ));
    let purge_left = number(guest, "PURGE-LEFT")?;
    ensure(
        purge_left == 0.0 && guest.line("PURGE").is_some_and(|p| p.starts_with('0')),
        format!(
            "apt purge: {:?}, left behind: {:?}",
            guest.line("PURGE"),
            guest.lines("LEFT")
        ),
    )?;
    lines.push(format!(
        "apt purge: none of the package's {} files left",
        guest.line("PACKAGE-FILES").unwrap_or("?")
    ));
    let security = guest.line("SECURITY").unwrap_or("?");
    lines.push(format!("systemd-analyze security: {security}"));
    Ok(lines)
}
