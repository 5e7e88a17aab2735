//! What /proc says about a process, and how its name is shown.
//!
//! A process may exit between the kernel counting its calls and user space
//! looking: every read here treats "gone" as an answer, not an error.

use std::{fs, io::ErrorKind};

use vdso_observer_common::{COMM_LEN, ProcessKey};

/// Whether the process image a key names is still running: the pid exists and
/// was started at the same instant (a reused pid was not).
pub fn is_running(key: &ProcessKey) -> bool {
    match start_ticks(key.tgid) {
        Some(ticks) => ticks == boottime_ns_to_ticks(key.start_boottime_ns),
        None => false,
    }
}

/// Real uid of a running process (first field of `Uid:` in /proc/PID/status).
pub fn uid_of(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Field 22 of /proc/PID/stat: start time after boot in clock ticks; None when
/// the process is gone or the file is unreadable.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat,
        Err(err) if err.kind() == ErrorKind::NotFound => return None,
        Err(err) => {
            log::debug!("/proc/{pid}/stat: {err}");
            return None;
        }
    };
    parse_start_ticks(&stat)
}

/// Parses field 22 of a /proc/PID/stat line. `comm` (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // after_comm starts with field 3 (state); field 22 is the 20th after it.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// utime + stime of a process (fields 14 and 15 of /proc/PID/stat), in clock
/// ticks; None when it is gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The kernel reports start times in USER_HZ ticks, truncating.
pub fn boottime_ns_to_ticks(ns: u64) -> u64 {
    ns / (1_000_000_000 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// A process name as shown everywhere (table, JSON, metrics): the bytes up to the
/// first NUL, printable UTF-8 kept, backslash doubled, and anything else
/// (control characters, invalid UTF-8) written as `\xNN`, so that no name can
/// break a line, a column or a label, and two different names never look alike.
pub fn display_comm(raw: &[u8]) -> String {
    let raw = &raw[..raw
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(raw.len())
        .min(COMM_LEN)];
    let mut shown = String::with_capacity(raw.len());
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => shown.push_str("\\\\"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        shown.push_str(&format!("\\x{b:02x}"));
                    }
                }
                c => shown.push(c),
            }
        }
        for b in chunk.invalid() {
            shown.push_str(&format!("\\x{b:02x}"));
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_survive_odd_comms() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1234 56 18446744073709551615";
        assert_eq!(parse_start_ticks(stat), Some(987654));
        assert_eq!(parse_start_ticks("garbage"), None);
        assert_eq!(parse_start_ticks("1 (x) S 1"), None);
    }

    #[test]
    fn own_process_is_running_and_a_wrong_start_is_not() {
        let pid = std::process::id();
        let ticks = start_ticks(pid).expect("own /proc/self/stat");
        let ns_per_tick = 1_000_000_000 / clock_ticks_per_second();
        let key = ProcessKey {
            tgid: pid,
            exec_id: 0,
            start_boottime_ns: ticks * ns_per_tick + ns_per_tick / 2,
        };
        assert!(is_running(&key));
        let reused = ProcessKey {
            start_boottime_ns: key.start_boottime_ns + 10 * ns_per_tick,
            ..key
        };
        assert!(!is_running(&reused));
        let gone = ProcessKey {
            tgid: u32::MAX - 1,
            ..key
        };
        assert!(!is_running(&gone));
    }

    #[test]
    fn comm_is_escaped() {
        assert_eq!(display_comm(b"nginx\0\0\0\0\0\0\0\0\0\0\0"), "nginx");
        assert_eq!(display_comm(b"a\"b\\c\nd"), "a\"b\\\\c\\x0ad");
        assert_eq!(display_comm(b"\xff\xfeok"), "\\xff\\xfeok");
        assert_eq!(display_comm("zeitmesser-ü".as_bytes()), "zeitmesser-ü");
        assert_eq!(display_comm(b""), "");
        // Longer input is cut at TASK_COMM_LEN.
        assert_eq!(display_comm(&[b'x'; 20]), "x".repeat(16));
    }
}
