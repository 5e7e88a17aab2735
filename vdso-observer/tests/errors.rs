//! Bad conditions give one clear line: what failed and what to do.

mod common;

use std::process::Command;

use common::*;

#[test]
fn without_privileges_it_says_what_is_needed() {
    require_root();
    let observer = world_runnable_observer();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&observer)
        .args(["top", "--once", "-d", "1"])
        .output()
        .expect("setpriv (util-linux) runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("needs root or CAP_BPF and CAP_PERFMON"),
        "{stderr}"
    );
    assert!(stderr.contains("sudo"), "{stderr}");
    assert!(out.stdout.is_empty());
    let _ = std::fs::remove_dir_all(observer.parent().unwrap());
}

#[test]
fn missing_btf_is_explained() {
    require_root();
    let out = Command::new(OBSERVER)
        .args(["top", "--once", "-d", "1", "--btf", "/nonexistent/vmlinux"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/vmlinux does not exist"),
        "{stderr}"
    );
    assert!(stderr.contains("CONFIG_DEBUG_INFO_BTF"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

#[test]
fn btf_without_the_needed_structures_is_explained() {
    require_root();
    // A valid file that is not BTF at all.
    let out = Command::new(OBSERVER)
        .args(["top", "--once", "-d", "1", "--btf", "/proc/self/status"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("parsing BTF /proc/self/status"), "{stderr}");
}

#[test]
fn bad_arguments_are_refused_before_loading() {
    for args in [
        &["top", "--once", "-d", "0"][..],
        &["top", "--once", "-d", "soon"],
        &["top", "--once", "--map-entries", "0"],
    ] {
        let out = Command::new(OBSERVER).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr.contains("must be") || stderr.contains("invalid value"),
            "{args:?}: {stderr}"
        );
    }
}

/// An old kernel is refused at start with the version found and the one needed.
/// `setarch --uname-2.6` makes uname(2) report a 2.6 release, as an old kernel would.
#[test]
fn an_old_kernel_is_refused_in_one_line() {
    require_root();
    let out = Command::new("setarch")
        .args(["x86_64", "--uname-2.6"])
        .arg(OBSERVER)
        .args(["top", "--once", "-d", "1"])
        .output()
        .expect("setarch (util-linux) runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = stderr.trim();
    assert!(
        line.starts_with("vdso-observer: error: kernel 2.6.")
            && line.ends_with("Linux 5.11 or newer is needed")
            && !line.contains('\n'),
        "{stderr}"
    );
}

#[test]
fn a_private_pid_namespace_is_refused_in_one_line() {
    require_root();
    // As a new user would try it in a container without hostPID.
    for args in [
        &["top", "--once", "--json"][..],
        &["daemon", "--listen", "127.0.0.1:0"],
    ] {
        let out = Command::new("unshare")
            .args(["-pf", "--mount-proc", OBSERVER])
            .args(args)
            .output()
            .expect("unshare (util-linux) runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("runs in a private PID namespace")
                && stderr.contains("hostPID: true")
                && stderr.contains("--pid=host"),
            "{args:?}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
