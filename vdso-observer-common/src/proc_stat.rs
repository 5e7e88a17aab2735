//! Fields of a `/proc/PID/stat` line, shared by the observer and its benchmark
//! (host code, no eBPF use). `comm` (field 2) may hold spaces and parentheses,
//! so fields are counted from the last `)`.

fn after_comm(stat: &str) -> Option<core::str::SplitWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace())
}

/// utime + stime (fields 14 and 15), in clock ticks.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let mut fields = after_comm(stat)?;
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Start time after boot (field 22), in clock ticks.
pub fn start_ticks(stat: &str) -> Option<u64> {
    after_comm(stat)?.nth(19)?.parse().ok()
}
