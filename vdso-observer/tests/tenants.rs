//! A hostile or unlucky tenant cannot blind the observer or make it lie: an
//! exec loop, a v1 cgroup whose id equals a container's, a program named like
//! the kernel's clocksource line. Each test builds the bad case on purpose
//! (the machine's history would not), with real processes and the real kernel.

mod common;

use std::{
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::*;
use vdso_observer::model::{ClockEventKind, Runtime};

/// A copy of a workload that user 65534 can run (the checkout may not be
/// reachable for it).
fn runnable_by_anyone(binary: &Path, what: &str) -> PathBuf {
    let dir = world_writable_dir(what);
    let copy = dir.join(binary.file_name().unwrap());
    std::fs::copy(binary, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

fn direct_total(rows: &[ProcessReport]) -> u64 {
    rows.iter()
        .flat_map(counts)
        .filter(|(call, _, origin, _, _)| call == "clock_gettime" && origin == "direct")
        .map(|(.., count)| count)
        .sum()
}

/// An unprivileged process that makes one direct call and re-execs itself,
/// thousands of times: every image is a new key. Before, images were retired
/// only when their pid was gone, so the loop filled the maps and a direct
/// workload started beside it was counted 0 of 3000. Now the kernel marks
/// each exec and the drain retires the image: every call of both is counted,
/// and the loop's images merge into one row early, leaving the victim its own.
#[test]
fn an_exec_loop_cannot_blind_the_observer() {
    require_root();
    const IMAGES: u64 = 12_000;
    let looper = runnable_by_anyone(
        &build_workload("time_calls", "vt-execloop", &["-static"]),
        "execloop",
    );
    let victim = build_workload("time_calls", "vt-victim", &[]);
    // Maps of 4 096 entries: without retirement the loop (a clock_gettime
    // and a getrandom key per image) fills them within 2 000 images.
    let observer = ObserverRun::start(&["--map-entries", "4096"]);
    let mut looping = Command::new(&looper)
        .args(["execloop", &IMAGES.to_string()])
        .uid(65534)
        .gid(65534)
        .spawn()
        .unwrap();
    let looper_pid = looping.id();
    // Images left, from the loop's own command line (`execloop N`).
    let left = || -> Option<u64> {
        let cmdline = std::fs::read(format!("/proc/{looper_pid}/cmdline")).ok()?;
        let text = String::from_utf8_lossy(&cmdline).into_owned();
        text.split('\0').nth(2)?.parse().ok()
    };
    // Twice what the maps hold without retirement, then the victim.
    wait_for("4 000 images of the loop", Duration::from_secs(60), || {
        (left()? <= IMAGES - 4_000).then_some(())
    });
    let victim_pid = run_workload(&victim, &["direct", "3000"]);
    assert!(
        looping.try_wait().unwrap().is_none(),
        "the loop ended before the victim did: make IMAGES larger"
    );
    assert!(looping.wait().unwrap().success());
    let report = observer.finish();
    let victim_rows = rows_of_pid(&report, victim_pid);
    assert_eq!(direct_total(&victim_rows), 3000, "{victim_rows:#?}");
    // The loop's images past a window's rows for one kind of process merge
    // (pid 0, merged_processes) under their name (`exe`: it execs
    // /proc/self/exe): its calls are all there.
    let own = rows_of_pid(&report, looper_pid);
    let names: Vec<&str> = own.iter().map(|row| row.comm.as_str()).collect();
    let loop_rows: Vec<ProcessReport> = report
        .processes
        .iter()
        .filter(|row| row.merged_processes.is_some() && names.contains(&row.comm.as_str()))
        .cloned()
        .chain(own.iter().cloned())
        .collect();
    assert_eq!(
        direct_total(&loop_rows),
        IMAGES,
        "every image's call, {} rows",
        loop_rows.len()
    );
    let lost = &report.observer.lost;
    assert_eq!(lost.time_calls_map_full, 0, "{lost:#?}");
    assert_eq!(lost.processes_map_full, 0, "{lost:#?}");
}

/// The inode number the next directory made in `dir`'s hierarchy gets, and
/// how many a directory takes (itself and its control files): from two made
/// and removed (kernfs ids grow, even past removed ones).
fn next_id(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    let made = |name: &str| {
        let path = dir.join(name);
        std::fs::create_dir(&path).unwrap();
        let ino = std::fs::metadata(&path).unwrap().ino();
        std::fs::remove_dir(&path).unwrap();
        ino
    };
    let first = made("probe-a");
    let second = made("probe-b");
    let step = second - first;
    (second + step, step)
}

/// Removes the directories made, deepest last, on drop.
struct Made(Vec<PathBuf>);

impl Drop for Made {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// On a hybrid host kernfs ids are per hierarchy, so a v1 cgroup can have the
/// id of a container's unified cgroup. Made on purpose: a container's cgroup
/// in the unified hierarchy, then v1 cgroups until one gets its id. Before,
/// the v1 mkdir's record replaced the container's, and the container's calls
/// were reported under the v1 path with no container; now only unified
/// cgroups are recorded.
#[test]
fn a_v1_cgroup_with_a_containers_id_does_not_rename_it() {
    use std::os::unix::fs::MetadataExt as _;
    require_root();
    let unified = Path::new("/sys/fs/cgroup/unified");
    assert!(
        unified.join("cgroup.controllers").exists(),
        "this test needs a hybrid host (v1 controllers and the unified hierarchy at \
         /sys/fs/cgroup/unified), as the development machines and CI are"
    );
    // The v1 hierarchy whose counter is furthest behind the unified one.
    let v1 = ["freezer", "pids", "devices"]
        .into_iter()
        .map(|name| Path::new("/sys/fs/cgroup").join(name))
        .filter(|dir| dir.join("cgroup.procs").exists())
        .min_by_key(|dir| next_id(dir).0)
        .expect("a v1 controller hierarchy");
    let workload = build_workload("time_calls", "vt-collide", &[]);
    let observer = ObserverRun::start(&[]);
    let tag = format!("{:08x}", std::process::id());
    let parent = unified.join("libpod_parent");
    let made_parent = (!parent.exists()).then(|| {
        std::fs::create_dir(&parent).unwrap();
        parent.clone()
    });
    let mut made = Made(made_parent.into_iter().collect());
    let spacer = unified.join(format!("vo-collide-{tag}"));
    std::fs::create_dir(&spacer).unwrap();
    made.0.push(spacer.clone());
    let v1_parent = v1.join(format!("vo-collide-{tag}"));
    std::fs::create_dir(&v1_parent).unwrap();
    made.0.push(v1_parent.clone());

    // A container cgroup whose id the v1 counter will reach in whole steps:
    // the unified counter is moved on one directory at a time (its step and
    // the v1 one share no factor here: 19 and 8 or 9) until it is.
    let (v1_next, v1_step) = next_id(&v1_parent);
    let (_, unified_step) = next_id(&spacer);
    let mut container = None;
    for attempt in 0..20_000u32 {
        let probe = spacer.join("probe");
        std::fs::create_dir(&probe).unwrap();
        let unified_next = std::fs::metadata(&probe).unwrap().ino() + unified_step;
        std::fs::remove_dir(&probe).unwrap();
        if unified_next <= v1_next || !(unified_next - v1_next).is_multiple_of(v1_step) {
            continue;
        }
        let id = format!("{tag}{attempt:056x}");
        let dir = parent.join(format!("libpod-{id}"));
        std::fs::create_dir(&dir).unwrap();
        let ino = std::fs::metadata(&dir).unwrap().ino();
        if ino == unified_next {
            container = Some((id, dir, ino));
            break;
        }
        std::fs::remove_dir(&dir).unwrap(); // something else took an id: again
    }
    let (id, dir, ino) = container.expect("a container id the v1 counter can reach");
    made.0.push(dir.clone());
    // v1 cgroups until one has the container's id.
    let mut collided = None;
    for n in 0..100_000u32 {
        let v1_dir = v1_parent.join(format!("c{n}"));
        std::fs::create_dir(&v1_dir).unwrap();
        made.0.push(v1_dir.clone());
        let v1_ino = std::fs::metadata(&v1_dir).unwrap().ino();
        if v1_ino >= ino {
            collided = (v1_ino == ino).then_some(v1_dir);
            break;
        }
    }
    let v1_dir = collided.expect("a v1 cgroup with the container's id");

    let pid = run_in_cgroup(&dir, &workload, &["direct", "3000"]);
    let report = observer.finish();
    drop(made);
    let row = &rows_of_pid(&report, pid)[0];
    assert_eq!(counts(row), direct_monotonic(3000));
    assert_eq!(
        row.cgroup,
        Some(format!("/libpod_parent/libpod-{id}")),
        "v1 {} has id {ino} too: {row:#?}",
        v1_dir.display()
    );
    let container = row.container.as_ref().expect("a container");
    assert_eq!(container.id, id, "{row:#?}");
    assert_eq!(container.runtime, Runtime::Podman, "{row:#?}");
}

/// Any user can put words in the kernel log: a program that crashes is
/// quoted with its comm and its file name. Named `Switched to clocksource
/// hpet`, it made a `switched` clock event (and a recalibration, and an
/// alert). Now only the kernel's own clock lines count.
#[test]
fn a_program_named_like_the_kernels_clock_line_makes_no_clock_event() {
    require_root();
    let crasher = build_workload("time_calls", "vt-crasher", &[]);
    let dir = world_writable_dir("forged");
    let forged = dir.join("Switched to clocksource hpet");
    std::fs::copy(&crasher, &forged).unwrap();
    std::fs::set_permissions(&forged, std::fs::Permissions::from_mode(0o755)).unwrap();
    let observer = ObserverRun::start(&[]);
    let status = Command::new(&forged)
        .args(["crash", "10"])
        .uid(65534)
        .gid(65534)
        .status()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGSEGV)
    );
    // The kernel did quote it (else this test proves nothing).
    let quoted = wait_for_kernel_log("in Switched to clocksource hpet");
    std::thread::sleep(Duration::from_millis(300));
    let report = observer.finish();
    let events = report.system.expect("the system state").events;
    assert!(
        events.iter().all(|e| e.kind != ClockEventKind::Switched),
        "kernel log: {quoted}\nevents: {events:#?}"
    );
}

/// The kernel log's line containing `text`, waiting for it to be written.
fn wait_for_kernel_log(text: &str) -> String {
    wait_for(
        "the kernel to log the crash",
        Duration::from_secs(10),
        || {
            let dmesg = Command::new("dmesg").output().ok()?;
            String::from_utf8_lossy(&dmesg.stdout)
                .lines()
                .rev()
                .find(|line| line.contains(text))
                .map(str::to_owned)
        },
    )
}
