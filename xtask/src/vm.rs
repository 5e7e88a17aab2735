//! `cargo xtask vm-test`: the observer in a guest kernel whose clocksource the
//! vDSO cannot use.
//!
//! The development machines' clocksources (tsc, kvm-clock) are always
//! vDSO-capable, so the headline case — a process falling back to real
//! syscalls because of its clocksource — only happens in a guest. This boots
//! Debian's stock kernel (downloaded with `apt-get download`, unpacked, never
//! installed on the host) in QEMU with a tiny initramfs (busybox, the observer,
//! a static workload) and checks four scenarios from what the guest prints on
//! its serial console.
//!
//! QEMU runs under TCG: `/dev/kvm` here is backed by kvm_pvm, which needs
//! specially built guest kernels (a stock kernel hangs at boot).
//! VM_TEST_ACCEL=kvm tries KVM instead on hosts where it works.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

use crate::{
    exec::{self, quiet, step},
    observer, setup,
};

const INIT: &str = include_str!("../vm/init.sh");
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// N of the `monotonic` scenario workload.
const CALLS: u64 = 20_000;
/// clock_gettime calls a static glibc 2.36 binary makes from its own text
/// during start-up, before it knows the vDSO (seen under hpet and vdso=0 alike).
const STATIC_STARTUP_CALLS: u64 = 2;

struct Scenario {
    name: &'static str,
    /// Extra kernel command line.
    cmdline: &'static str,
    check: fn(&Guest) -> Result<Vec<String>>,
}

/// The scenarios' names, in the order they run.
pub const SCENARIO_NAMES: [&str; 4] = ["default", "hpet", "switch", "vdso0"];

const SCENARIOS: [Scenario; 4] = [
    Scenario {
        name: "default",
        cmdline: "",
        check: check_default,
    },
    Scenario {
        name: "hpet",
        cmdline: "clocksource=hpet",
        check: check_hpet,
    },
    Scenario {
        name: "switch",
        cmdline: "",
        check: check_switch,
    },
    Scenario {
        name: "vdso0",
        cmdline: "vdso=0",
        check: check_vdso0,
    },
];

/// What a guest printed.
struct Guest {
    log: String,
}

impl Guest {
    fn line(&self, tag: &str) -> Option<&str> {
        let prefix = format!("VMTEST-{tag} ");
        self.log
            .lines()
            .find_map(|l| l.trim_end_matches('\r').strip_prefix(prefix.as_str()))
    }

    fn lines<'a>(&'a self, tag: &str) -> Vec<&'a str> {
        let prefix = format!("VMTEST-{tag} ");
        self.log
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').strip_prefix(prefix.as_str()))
            .collect()
    }

    fn json(&self, tag: &str) -> Result<Value> {
        let text = self
            .line(tag)
            .ok_or_else(|| anyhow!("the guest printed no VMTEST-{tag} line"))?;
        serde_json::from_str(text).with_context(|| format!("VMTEST-{tag} is not JSON: {text}"))
    }

    fn pid(&self) -> Result<u64> {
        self.line("PID")
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| anyhow!("no VMTEST-PID line"))
    }

    /// ns per vDSO clock_gettime of the `hot` workload.
    fn ns_per_call(&self) -> Option<f64> {
        let mut fields = self.line("NS")?.split_whitespace();
        let calls: f64 = fields.next()?.parse().ok()?;
        let seconds: f64 = fields.next()?.parse().ok()?;
        Some(seconds * 1e9 / calls)
    }

    fn workload_row(&self) -> Result<Value> {
        let pid = self.pid()?;
        let top = self.json("TOP")?;
        top["processes"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["pid"] == pid).cloned())
            .ok_or_else(|| anyhow!("no row for the workload (pid {pid}) in {top}"))
    }
}

/// Count of one (call, clock, origin) of a report row.
fn count(row: &Value, call: &str, clock: Option<&str>, origin: &str) -> u64 {
    row["calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .filter(|c| {
                    c["call"] == call
                        && c["origin"] == origin
                        && clock.is_none_or(|clock| c["clock"] == clock)
                })
                .filter_map(|c| c["count"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

fn flags(row: &Value) -> Vec<String> {
    row["flags"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn ensure(condition: bool, what: String) -> Result<()> {
    if condition { Ok(()) } else { bail!(what) }
}

/// The doctor's exit code must say what scripts gate on (README: 0 healthy,
/// 2 the clocksource falls back, 3 no vDSO).
fn ensure_doctor_exit(guest: &Guest, expected: &str) -> Result<()> {
    let code = guest.line("DOCTOR-EXIT").unwrap_or("none").trim();
    ensure(
        code == expected,
        format!("doctor exited {code}, expected {expected}"),
    )
}

fn check_default(guest: &Guest) -> Result<Vec<String>> {
    ensure_doctor_exit(guest, "0")?;
    let doctor = guest.json("DOCTOR")?;
    ensure(
        doctor["vdso_capable"] == true,
        format!(
            "doctor says the vDSO cannot read {}: {doctor}",
            doctor["clocksource"]["current"]
        ),
    )?;
    let row = guest.workload_row()?;
    let fallback = count(
        &row,
        "clock_gettime",
        Some("CLOCK_MONOTONIC"),
        "vdso_fallback",
    );
    ensure(
        fallback == 0,
        format!("{fallback} fallbacks on a vDSO-capable clocksource: {row}"),
    )?;
    ensure(
        !flags(&row).contains(&"fallback".to_owned()),
        format!("flagged fallback: {row}"),
    )?;
    Ok(vec![
        format!(
            "clocksource {}, doctor: vDSO-capable ({})",
            guest.line("CLOCKSOURCE").unwrap_or("?"),
            doctor["decided_by"]
        ),
        format!(
            "{CALLS} clock_gettime(CLOCK_MONOTONIC): 0 entered the kernel; flags {:?}",
            flags(&row)
        ),
    ])
}

fn check_hpet(guest: &Guest) -> Result<Vec<String>> {
    ensure(
        guest.line("CLOCKSOURCE") == Some("hpet"),
        format!("the guest runs {:?}, not hpet", guest.line("CLOCKSOURCE")),
    )?;
    ensure_doctor_exit(guest, "2")?;
    let doctor = guest.json("DOCTOR")?;
    ensure(
        doctor["vdso_capable"] == false && doctor["decided_by"] == "measured",
        format!("doctor should measure hpet as not vDSO-capable: {doctor}"),
    )?;
    let row = guest.workload_row()?;
    let fallback = count(
        &row,
        "clock_gettime",
        Some("CLOCK_MONOTONIC"),
        "vdso_fallback",
    );
    ensure(
        fallback == CALLS,
        format!(
            "expected {CALLS} vdso_fallback clock_gettime(CLOCK_MONOTONIC), got {fallback}: {row}"
        ),
    )?;
    ensure(
        flags(&row).contains(&"fallback".to_owned())
            && row["reasons"].to_string().contains("clocksource"),
        format!("not flagged fallback/clocksource: {row}"),
    )?;
    // Start-up calls and the workload's direct marker come from its own text.
    let direct = count(&row, "clock_gettime", Some("CLOCK_MONOTONIC"), "direct");
    ensure(
        direct == STATIC_STARTUP_CALLS + 1,
        format!(
            "expected {} direct entries, got {direct}: {row}",
            STATIC_STARTUP_CALLS + 1
        ),
    )?;
    Ok(vec![
        format!(
            "doctor: vDSO-capable false (measured: {} of {} calls entered the kernel); advice: {}",
            doctor["vdso_check"]["kernel_entries"],
            doctor["vdso_check"]["calls"],
            doctor["advice"][0]
        ),
        format!(
            "{CALLS} clock_gettime(CLOCK_MONOTONIC): {fallback} vdso_fallback, {direct} direct (start-up + marker), flags {:?}, reasons {}",
            flags(&row),
            row["reasons"]
        ),
    ])
}

fn check_switch(guest: &Guest) -> Result<Vec<String>> {
    ensure(
        guest.line("SWITCHED") == Some("hpet"),
        format!(
            "the switch to hpet did not happen: {:?}",
            guest.line("SWITCHED")
        ),
    )?;
    let pid = guest.pid()?;
    let frames: Vec<Value> = guest
        .lines("FRAME")
        .into_iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    ensure(frames.len() >= 4, format!("only {} frames", frames.len()))?;
    let event_at = frames
        .iter()
        .position(|f| {
            f["system"]["events"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["message"].to_string().contains("hpet")))
        })
        .ok_or_else(|| anyhow!("no frame reports the switch to hpet"))?;
    let fallback_in = |frame: &Value| -> u64 {
        frame["processes"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["pid"] == pid))
            .map(|row| {
                count(
                    row,
                    "clock_gettime",
                    Some("CLOCK_MONOTONIC"),
                    "vdso_fallback",
                )
            })
            .unwrap_or(0)
    };
    let before: u64 = frames[..event_at].iter().map(fallback_in).sum();
    let after: u64 = frames[event_at..].iter().map(fallback_in).sum();
    ensure(before == 0, format!("{before} fallbacks before the switch"))?;
    ensure(
        after > 1000,
        format!("only {after} fallbacks after the switch"),
    )?;
    let flagged_after = frames[event_at..].iter().any(|f| {
        f["processes"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["pid"] == pid))
            .is_some_and(|row| flags(row).contains(&"fallback".to_owned()))
    });
    ensure(
        flagged_after,
        "no frame after the switch flags the workload".into(),
    )?;
    let events: Vec<String> = frames[event_at]["system"]["events"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|e| {
                    format!(
                        "[{}] {}",
                        e["kind"].as_str().unwrap_or(""),
                        e["message"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(vec![
        format!(
            "frame {event_at} of {} reports: {}",
            frames.len(),
            events.join("; ")
        ),
        format!("fallbacks: {before} before the switch, {after} after; flagged fallback after it"),
    ])
}

fn check_vdso0(guest: &Guest) -> Result<Vec<String>> {
    ensure_doctor_exit(guest, "3")?;
    let row = guest.workload_row()?;
    let no_vdso = count(&row, "clock_gettime", Some("CLOCK_MONOTONIC"), "no_vdso");
    // N libc calls, static glibc's start-up calls and the direct marker call.
    let expected = CALLS + STATIC_STARTUP_CALLS + 1;
    ensure(
        no_vdso == expected,
        format!("expected {expected} no_vdso entries, got {no_vdso}: {row}"),
    )?;
    ensure(
        flags(&row).contains(&"no-vdso".to_owned()),
        format!("not flagged no-vdso: {row}"),
    )?;
    Ok(vec![format!(
        "{CALLS} libc + {STATIC_STARTUP_CALLS} start-up + 1 direct clock_gettime(CLOCK_MONOTONIC): {no_vdso} no_vdso, flags {:?}",
        flags(&row)
    )])
}

/// Runs every scenario; returns (passed, failed).
/// Boots one guest per selected scenario; each scenario's name and whether it passed.
pub fn run(root: &Path, selected: &[&str]) -> Result<Vec<(String, bool)>> {
    setup::debian_packages(&["qemu-system-x86", "busybox-static", "cpio"])?;
    let dir = root.join("target/vm");
    fs::create_dir_all(&dir)?;
    let kernel = guest_kernel(&dir)?;
    let initramfs = build_initramfs(root, &dir)?;
    let mut results = Vec::new();
    for scenario in SCENARIOS.into_iter().filter(|s| selected.contains(&s.name)) {
        step(&format!(
            "vm-test {}: booting {} {}",
            scenario.name,
            kernel.display(),
            scenario.cmdline
        ));
        let started = Instant::now();
        let result = boot(&kernel, &initramfs, &dir, &scenario)
            .and_then(|guest| (scenario.check)(&guest).map(|lines| (lines, guest.ns_per_call())));
        match result {
            Ok((lines, ns)) => {
                results.push((scenario.name.to_owned(), true));
                println!(
                    "vm-test {}: ok ({:.0} s)",
                    scenario.name,
                    started.elapsed().as_secs_f64()
                );
                for line in lines {
                    println!("    {line}");
                }
                if let Some(ns) = ns {
                    println!("    vDSO clock_gettime loop in the guest: {ns:.0} ns/call");
                }
            }
            Err(err) => {
                results.push((scenario.name.to_owned(), false));
                println!(
                    "vm-test {}: FAILED: {err:#} (serial log: target/vm/{}.log)",
                    scenario.name, scenario.name
                );
            }
        }
    }
    Ok(results)
}

/// Debian's current kernel image, unpacked under target/vm/kernel.
fn guest_kernel(dir: &Path) -> Result<PathBuf> {
    let unpacked = dir.join("kernel");
    if let Some(found) = find_vmlinuz(&unpacked) {
        step(&format!("guest kernel: present ({})", found.display()));
        return Ok(found);
    }
    let depends = exec::output(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    let package = depends
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-image-"))
        .ok_or_else(|| anyhow!("apt-cache depends linux-image-amd64 names no kernel package"))?
        .to_owned();
    quiet(
        &format!("guest kernel: apt-get download {package} (not installed on this host)"),
        "vm-kernel-download",
        Command::new("apt-get")
            .args(["download", &package])
            .current_dir(dir),
    )
    .context("try `apt-get update`")?;
    let deb = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy().starts_with(&package) && n.to_string_lossy().ends_with(".deb")
            })
        })
        .ok_or_else(|| anyhow!("the downloaded {package} .deb is not in {}", dir.display()))?;
    quiet(
        "guest kernel: unpacking it with dpkg-deb -x",
        "vm-kernel-unpack",
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked),
    )?;
    let _ = fs::remove_file(&deb);
    find_vmlinuz(&unpacked).ok_or_else(|| anyhow!("no boot/vmlinuz-* in {}", package))
}

fn find_vmlinuz(unpacked: &Path) -> Option<PathBuf> {
    fs::read_dir(unpacked.join("boot"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}

/// busybox, the release observer and its libraries, a static workload, /init.
fn build_initramfs(root: &Path, dir: &Path) -> Result<PathBuf> {
    observer::build_release()?;
    let tree = dir.join("initramfs");
    let _ = fs::remove_dir_all(&tree);
    for sub in ["bin", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(tree.join(sub))?;
    }
    let observer = root.join(observer::RELEASE_BINARY);
    fs::copy(&observer, tree.join("vdso-observer"))?;
    fs::copy("/bin/busybox", tree.join("bin/busybox"))
        .context("copying /bin/busybox (busybox-static)")?;
    quiet(
        "vm-test: a static workload and the guest's initramfs",
        "vm-workload",
        Command::new("gcc")
            .args(["-O2", "-static", "-pthread", "-o"])
            .arg(tree.join("workload"))
            .arg(root.join("vdso-observer/tests/workloads/time_calls.c")),
    )?;
    // The observer is dynamically linked: bring its libraries along.
    let ldd = exec::output(Command::new("ldd").arg(&observer))?;
    for library in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let target = tree.join(library.trim_start_matches('/'));
        fs::create_dir_all(target.parent().unwrap())?;
        fs::copy(library, &target).with_context(|| format!("copying {library}"))?;
    }
    let init = tree.join("init");
    fs::write(&init, INIT)?;
    fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    for binary in ["vdso-observer", "workload", "bin/busybox"] {
        fs::set_permissions(
            tree.join(binary),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
    }
    // Uncompressed: TCG boots it faster than a gzip one.
    let cpio = dir.join("initramfs.cpio");
    exec::output(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "find . | cpio -o -H newc --quiet > {}",
                cpio.display()
            ))
            .current_dir(&tree),
    )?;
    Ok(cpio)
}

fn boot(kernel: &Path, initramfs: &Path, dir: &Path, scenario: &Scenario) -> Result<Guest> {
    let log_path = dir.join(format!("{}.log", scenario.name));
    let log = fs::File::create(&log_path)?;
    let accel = std::env::var("VM_TEST_ACCEL").unwrap_or_else(|_| "tcg".into());
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", &accel, "-m", "1024", "-smp", "1"])
        .args([
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 quiet panic=-1 vt.scenario={} {}",
            scenario.name, scenario.cmdline
        ))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the guest did not power off within {BOOT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = String::from_utf8_lossy(&fs::read(&log_path)?).into_owned();
    let guest = Guest { log };
    if !guest.log.contains("VMTEST-END") {
        bail!("the guest stopped before the end of its script");
    }
    if let Some(error) = guest.line("ERROR") {
        bail!("guest: {error}");
    }
    Ok(guest)
}
