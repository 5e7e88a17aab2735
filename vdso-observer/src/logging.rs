//! Log lines on stderr. Under systemd (stderr connected to the journal, as
//! JOURNAL_STREAM says) each line starts with its syslog priority, `<3>` to
//! `<7>`, so `journalctl -p warning` selects what it should, and carries no
//! timestamp of its own (journald adds one).

use std::io::Write as _;

/// Sets up `log` for the process: info and up for the daemon, warnings and up
/// for the commands a person runs (RUST_LOG overrides both).
pub fn init(daemon: bool) {
    let default = if daemon { "info" } else { "warn" };
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    builder.format_target(false);
    if to_journal() {
        builder
            .format(|out, record| writeln!(out, "<{}>{}", priority(record.level()), record.args()));
    }
    builder.init();
}

/// syslog priority of a log level (sd-daemon(3)).
pub fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Whether stderr is the journal stream systemd connected (JOURNAL_STREAM holds
/// its `device:inode`; a child whose stderr was redirected elsewhere keeps the
/// variable, so it is compared).
pub fn to_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((device, inode)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a stat of fd 2 into valid memory.
    if unsafe { libc::fstat(2, stat.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstat succeeded, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    device.parse() == Ok(stat.st_dev) && inode.parse() == Ok(stat.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(log::Level::Error), 3);
        assert_eq!(priority(log::Level::Warn), 4);
        assert_eq!(priority(log::Level::Info), 6);
        assert_eq!(priority(log::Level::Debug), 7);
    }
}
