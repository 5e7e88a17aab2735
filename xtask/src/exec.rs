//! Running other programs: one line per step on the terminal, the full output
//! in a log under target/xtask-logs, and its tail only when a step fails.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Lines of a failed step's log shown on the terminal.
const TAIL_LINES: usize = 40;

/// Prints one line per step, so a person sees what is happening and where it stopped.
pub fn step(what: &str) {
    eprintln!("==> {what}");
}

/// target/xtask-logs, created on first use.
pub fn log_dir() -> PathBuf {
    let dir = Path::new("target/xtask-logs");
    let _ = fs::create_dir_all(dir);
    dir.to_path_buf()
}

/// Runs `command` as one quiet step: `==> what` on the terminal, its stdout and
/// stderr into target/xtask-logs/LOG.log; on failure, the log's tail and path.
pub fn quiet(what: &str, log: &str, command: &mut Command) -> Result<()> {
    step(what);
    let path = log_dir().join(format!("{log}.log"));
    let file = fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let status = command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("starting {}", describe(command)))?;
    if !status.success() {
        print_tail(&path);
        bail!(
            "{} failed ({status}); full output in {}{}",
            describe(command),
            path.display(),
            low_disk_hint()
        );
    }
    Ok(())
}

/// Free space below which a failed step is probably a full disk.
const LOW_DISK_BYTES: u64 = 1 << 30;

/// Bytes an unprivileged writer may still use on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a NUL-terminated path and a statvfs the call fills in.
    if unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    Some(stat.f_bavail * stat.f_frsize)
}

/// What a whole `cargo xtask test` writes under target/ from nothing (3.7 GB
/// measured: builds for three targets, guest kernels, images), with room to spare.
const FULL_RUN_BYTES: u64 = 5 << 30;

/// One line on the disk before a long run: a warning where a run from
/// nothing would not fit (CI once ran out of disk half-way, in a step whose
/// error could not be written either).
pub fn disk_step() {
    let Some(free) = free_bytes(Path::new(".")) else {
        return;
    };
    let gb = free as f64 / f64::from(1 << 30);
    if free < FULL_RUN_BYTES {
        step(&format!(
            "disk: only {gb:.1} GB free here; a run from nothing writes ~4 GB under target/ \
             (free some space, or point CARGO_TARGET_DIR elsewhere)"
        ));
    } else {
        step(&format!("disk: {gb:.1} GB free"));
    }
}

/// A failed step with an empty log is often a full disk (its error could not
/// be written either): say so where the disk is nearly full.
fn low_disk_hint() -> String {
    match free_bytes(Path::new("target")) {
        Some(free) if free < LOW_DISK_BYTES => format!(
            "; the file system holding target/ has only {} MB free: free some space \
             (or point CARGO_TARGET_DIR elsewhere) and run it again",
            free >> 20
        ),
        _ => String::new(),
    }
}

/// The last lines of a log, on stderr.
pub fn print_tail(path: &Path) {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(TAIL_LINES);
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "--- last {} lines of {} ---",
        lines.len() - from,
        path.display()
    );
    for line in &lines[from..] {
        let _ = writeln!(err, "{line}");
    }
    let _ = writeln!(err, "---");
}

/// stdout of a command that must succeed; its stderr in the error otherwise.
pub fn output(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("starting {}", describe(command)))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            describe(command),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// stdout of a command that succeeded; None when it is missing or failed.
pub fn probe(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cargo that runs xtask (CARGO), else the one on PATH.
pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// `program arg arg` for messages.
pub fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_step_keeps_its_output_in_the_log_and_names_it_on_failure() {
        let dir = std::env::temp_dir().join(format!("xtask-quiet-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let _ = std::env::set_current_dir(&dir);
        quiet(
            "a step that talks",
            "talker",
            Command::new("sh").args(["-c", "echo out; echo err >&2"]),
        )
        .unwrap();
        let log = fs::read_to_string(dir.join("target/xtask-logs/talker.log")).unwrap();
        assert!(log.contains("out") && log.contains("err"), "{log}");
        let err = quiet("a step that fails", "failer", &mut Command::new("false")).unwrap_err();
        assert!(
            err.to_string().contains("target/xtask-logs/failer.log"),
            "{err}"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
