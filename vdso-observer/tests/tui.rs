//! The interactive top in a real terminal (tmux), watching real workloads.

mod common;

use std::{
    process::{Child, Command},
    time::Duration,
};

use common::*;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A tmux session running one command, with its own server socket.
struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    fn start(name: &str, width: u16, height: u16, command: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("vdso-test-{name}-{}", std::process::id()),
            session: name.to_owned(),
        };
        // The shell prints a marker after top exits, so the test can see it returned.
        let shell = format!("{command}; echo TOP-EXITED $?; sleep 60");
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            &shell,
        ]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux (installed by `cargo xtask setup --for-tests`)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", &self.session])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.session];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    fn wait_screen(&self, what: &str, mut ok: impl FnMut(&str) -> bool) -> String {
        wait_for(what, TIMEOUT, || {
            let screen = self.screen();
            ok(&screen).then_some(screen)
        })
    }

    fn display(&self, format: &str) -> String {
        self.run(&["display-message", "-p", "-t", &self.session, format])
            .trim()
            .to_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

struct Workload(Child);

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn steady(name: &str, mode: &str, per_second: u32) -> (Workload, u32) {
    let binary = build_workload("time_calls", name, &[]);
    let child = Command::new(binary)
        .args([mode, &per_second.to_string(), "60"])
        .spawn()
        .unwrap();
    let pid = child.id();
    (Workload(child), pid)
}

fn row(screen: &str, pid: u32) -> Option<&str> {
    screen
        .lines()
        .find(|line| line.split_whitespace().next() == Some(&pid.to_string()))
}

/// The header: the screen's first three lines.
fn header(screen: &str) -> String {
    screen.lines().take(3).collect::<Vec<_>>().join("\n")
}

/// The KERN/s column of a row, as a number (PID USER COMM CONTAINER VDSO/s KERN/s ...).
fn kernel_rate(row: &str) -> f64 {
    let field = row.split_whitespace().nth(5).unwrap();
    match field.strip_suffix('k') {
        Some(k) => k.parse::<f64>().unwrap() * 1000.0,
        None => field.parse().unwrap(),
    }
}

#[test]
fn top_shows_workloads_sorts_filters_and_restores_the_terminal() {
    require_root();
    let (_direct, direct) = steady("vt-tui-direct", "steady", 2000);
    let (_cpu, cpu) = steady("vt-tui-cpu", "steadycpu", 3000);
    let tmux = Tmux::start("top", 170, 30, &format!("{OBSERVER} top -d 1"));

    let screen = tmux.wait_screen("both workloads on screen", |s| {
        row(s, direct).is_some_and(|r| kernel_rate(r) > 1000.0) && row(s, cpu).is_some()
    });
    assert!(screen.contains("clocksource"), "{screen}");
    let line = row(&screen, direct).unwrap();
    assert!(
        line.contains("vt-tui-direct")
            && line.contains("CLOCK_MONOTONIC")
            && line.ends_with("direct"),
        "{line}"
    );
    let rate = kernel_rate(line);
    // 200 calls every 100 ms: a 1 s window holds 10 or 11 bursts.
    assert!((1600.0..=2400.0).contains(&rate), "about 2000/s: {line}");
    let line = row(&screen, cpu).unwrap();
    assert!(
        line.contains("CLOCK_PROCESS_CPUTIME_ID") && line.ends_with("(cpu-clock)"),
        "{line}"
    );
    assert_eq!(
        tmux.display("#{alternate_on}"),
        "1",
        "full screen while running"
    );

    // Filter by name (both workloads share the prefix); Esc clears.
    tmux.keys(&["/", "vt-tui-", "Enter"]);
    let screen = tmux.wait_screen("the filter applied", |s| {
        header(s).contains("filter: vt-tui-")
    });
    assert_eq!(
        screen
            .lines()
            .filter(|l| l
                .split_whitespace()
                .next()
                .is_some_and(|w| w.parse::<u32>().is_ok()))
            .count(),
        2,
        "only the two workloads: {screen}"
    );
    // Sort by pid, then reverse: the two rows swap.
    let position = |screen: &str, pid: u32| screen.lines().position(|l| row(l, pid).is_some());
    tmux.keys(&["P"]);
    let screen = tmux.wait_screen("sorted by pid", |s| s.contains("PID▲"));
    assert_eq!(
        position(&screen, direct) < position(&screen, cpu),
        direct < cpu,
        "{screen}"
    );
    tmux.keys(&["R"]);
    let screen = tmux.wait_screen("pid descending", |s| s.contains("PID▼"));
    assert_eq!(
        position(&screen, direct) > position(&screen, cpu),
        direct < cpu,
        "{screen}"
    );
    // Escape alone: followed at once by a key, terminals read it as Alt+key.
    tmux.keys(&["Escape"]);
    tmux.wait_screen("the filter cleared", |s| !header(s).contains("filter:"));
    tmux.keys(&["K"]);
    tmux.wait_screen("sorted by kernel entries", |s| s.contains("KERN/s▼"));
    tmux.keys(&["/", "vt-tui-cpu", "Enter"]);
    let screen = tmux.wait_screen("a narrower filter", |s| {
        header(s).contains("filter: vt-tui-cpu")
    });
    assert!(
        row(&screen, cpu).is_some() && row(&screen, direct).is_none(),
        "{screen}"
    );
    tmux.keys(&["Escape"]);
    tmux.wait_screen("the filter cleared", |s| {
        row(s, direct).is_some() && row(s, cpu).is_some()
    });

    // Flagged only hides the expected CPU-time fallback. Wait for the header's
    // mark (the footer names the key on every frame, so its words prove nothing).
    tmux.keys(&["f"]);
    let screen = tmux.wait_screen("flagged only", |s| header(s).contains("[flagged only]"));
    assert!(
        row(&screen, cpu).is_none() && row(&screen, direct).is_some(),
        "{screen}"
    );
    tmux.keys(&["f"]);
    tmux.wait_screen("flagged only off", |s| {
        !header(s).contains("[flagged only]") && row(s, cpu).is_some()
    });

    tmux.keys(&["h"]);
    tmux.wait_screen("help", |s| s.contains("vdso-observer top: keys"));
    tmux.keys(&["Escape"]);
    tmux.wait_screen("help closed", |s| !s.contains("vdso-observer top: keys"));

    // A narrow window keeps the important columns.
    tmux.run(&["resize-window", "-t", "top", "-x", "64", "-y", "20"]);
    let screen = tmux.wait_screen("narrow layout", |s| {
        s.lines()
            .any(|l| l.trim_start().starts_with("PID") && !l.contains("CLOCK"))
    });
    assert!(row(&screen, direct).is_some(), "{screen}");

    tmux.keys(&["q"]);
    let screen = tmux.wait_screen("top to exit", |s| s.contains("TOP-EXITED"));
    assert!(screen.contains("TOP-EXITED 0"), "{screen}");
    assert_eq!(
        tmux.display("#{alternate_on}"),
        "0",
        "alternate screen left"
    );
    assert_eq!(tmux.display("#{cursor_flag}"), "1", "cursor visible again");
}

#[test]
fn ctrl_c_and_sigterm_restore_the_terminal() {
    require_root();
    let tmux = Tmux::start("ctrlc", 120, 20, &format!("{OBSERVER} top -d 1"));
    tmux.wait_screen("top running", |s| s.contains("KERN/s"));
    tmux.keys(&["C-c"]);
    let screen = tmux.wait_screen("exit on Ctrl-C", |s| s.contains("TOP-EXITED"));
    assert!(screen.contains("TOP-EXITED 0"), "{screen}");
    assert_eq!(tmux.display("#{alternate_on}"), "0");

    let tmux = Tmux::start("sigterm", 120, 20, &format!("{OBSERVER} top -d 1"));
    tmux.wait_screen("top running", |s| s.contains("KERN/s"));
    let shell = tmux.display("#{pane_pid}");
    let out = Command::new("pgrep").args(["-P", &shell]).output().unwrap();
    let top: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("top's pid");
    // SAFETY: signalling our own test's process.
    unsafe { libc::kill(top, libc::SIGTERM) };
    let screen = tmux.wait_screen("exit on SIGTERM", |s| s.contains("TOP-EXITED"));
    assert!(screen.contains("TOP-EXITED 0"), "{screen}");
    assert_eq!(tmux.display("#{alternate_on}"), "0");
}
